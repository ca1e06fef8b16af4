// @ts-check
/**
 * The room's peers: who is in the room, and one RTCPeerConnection (mesh.js) per peer, made,
 * signalled through the server, and made again when its data channel dies. What a peer's path
 * does goes to the send loop (scheduler.js) and to the app's callbacks.
 */

import { PeerLink, webrtcAvailable } from "./mesh.js";
import { isEnvelope } from "./delivery.js";
import { E2eeMismatchError, PeerUnreachableError } from "./errors.js";
import { isSealed } from "./e2ee.js";

/** After the data channel of a peer closes, a new connection is tried after this long. */
const RELINK_MS = 1000;

/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {import("./scheduler.js").Remote} Remote
 * @typedef {import("./scheduler.js").Path} Path
 */

/**
 * What the peers need of their room.
 * @typedef {object} PeersHost
 * @property {Map<string, Remote>} remotes the room's peers (shared with the send loop)
 * @property {import("./bluecam.js").AnyOptions} options the ICE policy
 * @property {import("./signaling.js").Signaling} signaling
 * @property {import("./scheduler.js").Scheduler} scheduler
 * @property {import("./media.js").LocalMedia} media
 * @property {() => Peer} self
 * @property {() => RTCIceServer[]} iceServers
 * @property {import("./e2ee.js").RoomCrypto | null} crypto the room's end-to-end encryption, if on
 * @property {() => boolean} left whether the room was left or ended
 * @property {() => boolean} receiveMedia whether the token lets this peer receive media
 *   (`permissions.subscribeMedia`)
 * @property {<K extends import("./events.js").RoomEventName>(event: K, ...args: import("./events.js").RoomEvents[K]) => void} emit
 *   hands an event to the app's handlers
 */

export class Peers {
  /** @param {PeersHost} host */
  constructor(host) {
    this.host = host;
    this.remotes = host.remotes;
  }

  /** The peers in the room now (without yourself). */
  list() {
    return [...this.remotes.values()].map((r) => r.info);
  }

  /**
   * The path messages to this peer take now.
   * @param {string} peerId
   * @returns {Path}
   */
  path(peerId) {
    return this.remotes.get(peerId)?.link?.open ? "p2p" : "relay";
  }

  /** Every peer connection now. */
  links() {
    return [...this.remotes.values()].flatMap((r) => (r.link ? [r.link] : []));
  }

  /**
   * @param {Peer} info
   * @param {boolean} announce call onPeerJoined
   */
  add(info, announce) {
    if (this.remotes.has(info.id) || info.id === this.host.self().id) return;
    const remote = this.host.scheduler.newRemote(info);
    this.remotes.set(info.id, remote);
    // (The key exchange first: every signal after it is sealed, and waits for its keys. A peer
    // that mismatched and comes back with the same id gets a fresh exchange: it may have
    // rejoined with the right key.)
    const { crypto } = this.host;
    if (crypto) {
      crypto.fresh(info.id);
      this.sendHello(info.id);
    }
    if (webrtcAvailable()) {
      this.link(remote);
    } else {
      this.signal(info.id, { nortc: true });
    }
    const { media } = this.host;
    if (media.local) this.signal(info.id, { media: { audio: media.audioEnabled, video: media.videoEnabled } });
    if (announce) this.host.emit("peerJoined", info);
  }

  /** @param {Remote} remote */
  link(remote) {
    const id = remote.info.id;
    clearTimeout(remote.relinkTimer);
    remote.link?.close();
    const { options, media } = this.host;
    /** @type {RTCConfiguration} */
    const rtcConfig = { iceServers: this.host.iceServers(), iceTransportPolicy: options.iceTransportPolicy ?? "all" };
    remote.link = new PeerLink(this.host.self().id > id, rtcConfig, media.local, {
      signal: (data) => this.signal(id, data),
      onData: (text) => this.host.scheduler.onChannelData(remote, text),
      onChannel: (open) => this.onChannel(remote, open),
      onStream: (stream) => this.onStream(remote, stream),
    }, this.host.receiveMedia(), this.host.crypto?.pair(id) ?? null);
    // A peer that connects (or reconnects) during a screen share gets the screen.
    if (media.screenTrack && media.screenStream) void remote.link.setTrack(media.screenTrack, media.screenStream);
  }

  /**
   * @param {string} id
   * @param {Error} [error]
   * @param {import("./events.js").LeaveReason} [reason] why the server says it left
   */
  remove(id, error, reason = "left") {
    const remote = this.remotes.get(id);
    if (!remote) return;
    this.remotes.delete(id);
    clearTimeout(remote.relinkTimer);
    remote.link?.close();
    this.host.scheduler.dropPeer(remote, error ?? new PeerUnreachableError(`peer ${id} left`, [id]));
    this.host.media.videos.remove(id);
    if (!this.host.left()) this.host.emit("peerLeft", remote.info, reason);
  }

  /**
   * @param {string} to
   * @param {unknown} data
   */
  signal(to, data) {
    // Signaling must survive a WebSocket outage: queue it for the resume.
    const { crypto, signaling } = this.host;
    if (!crypto) {
      signaling.sendOrQueue({ op: "signal", to, data });
      return;
    }
    // Sealed once the pair's keys exist (e2ee.js): never in the clear.
    const pair = crypto.pair(to);
    const d = /** @type {any} */ (data);
    const about = { gen: d?.gen, media: d?.media };
    if (pair.state !== "mismatch") void pair.sealSignal(data, (rec) => signaling.sendOrQueue({ op: "signal", to, data: rec }, about));
  }

  /**
   * Sends our key exchange's hello to a peer (not sealed: it is what the seals come from).
   * @param {string} to
   */
  sendHello(to) {
    const pair = this.host.crypto?.pair(to);
    if (!pair || pair.state === "mismatch") return;
    pair.hello().then(
      (data) => this.host.signaling.sendOrQueue({ op: "signal", to, data }),
      () => {},
    );
  }

  /**
   * End-to-end encryption does not match with this peer (another room key, or one side has
   * none, or it sent in the clear what must be sealed): nothing goes to it or comes from it,
   * and no peer-to-peer connection is made (its signaling cannot be trusted). Both sides say so.
   * @param {Remote} remote
   * @param {string} why
   */
  mismatch(remote, why) {
    if (remote.mismatch) return;
    remote.mismatch = true;
    const id = remote.info.id;
    this.host.crypto?.pair(id).mismatch();
    remote.noWebrtc = true;
    clearTimeout(remote.relinkTimer);
    remote.link?.close();
    remote.link = null;
    const error = new E2eeMismatchError(`end-to-end encryption does not match with peer ${id}: ${why}`, [id], remote.info);
    remote.outbox.fail(error);
    this.host.scheduler.wakeSpaceWaiters();
    if (!this.host.left()) this.host.emit("error", error);
  }

  /**
   * A relayed message from a peer: its envelopes, opened first when the room is encrypted.
   * @param {Remote} remote
   * @param {unknown} msg
   */
  onRelayed(remote, msg) {
    const { crypto, scheduler } = this.host;
    if (remote.mismatch) return;
    if (!crypto) {
      if (isSealed(msg)) this.mismatch(remote, "it encrypts end to end, and this page has no room key");
      else for (const env of [msg].flat()) scheduler.onEnvelope(remote, env, "relay");
      return;
    }
    if (!isSealed(msg)) {
      // In the clear: from a peer without the key (before any exchange with it), or forged
      // (after one: dropped).
      crypto.rejected++;
      if (crypto.pair(remote.info.id).state !== "ready") this.mismatch(remote, "it sent a message unencrypted");
      return;
    }
    void crypto.pair(remote.info.id).open("relay", msg.x, (text) => {
      if (this.remotes.get(remote.info.id) !== remote) return;
      let envs;
      try {
        envs = JSON.parse(text);
      } catch {
        crypto.rejected++;
        return;
      }
      for (const env of [envs].flat()) scheduler.onEnvelope(remote, env, "relay");
    });
  }

  /**
   * @param {string} from
   * @param {any} data
   */
  onSignal(from, data) {
    const remote = this.remotes.get(from);
    if (!remote || typeof data !== "object" || data === null || remote.mismatch) return;
    const { crypto } = this.host;
    if (!crypto) {
      if (data.e2ee === false) return;
      if (data.e2ee !== undefined || isSealed(data)) {
        // Say so: a peer that encrypts hears of the mismatch at once, even from a page that
        // would send it nothing else.
        if (data.e2ee !== undefined) this.host.signaling.sendOrQueue({ op: "signal", to: from, data: { e2ee: false } });
        this.mismatch(remote, "it encrypts end to end, and this page has no room key");
      } else {
        this.onOpenSignal(remote, data);
      }
      return;
    }
    const pair = crypto.pair(from);
    if (data.e2ee !== undefined) {
      void pair.takeHello(
        data.e2ee,
        (reply) => {
          if (this.remotes.get(from) !== remote) return;
          if (reply) this.sendHello(from);
          // What waited for the pair's keys goes now.
          this.host.scheduler.sendUnsent();
        },
        (err) => {
          // After a verified exchange, a hello that fails (or a forged "no key") can only come
          // from the server: dropped, not a mismatch (a new session of the peer has a new id,
          // or comes back through peer_joined, which starts the pair over).
          if (pair.state === "ready") crypto.rejected++;
          else this.mismatch(remote, err.message);
        },
      );
    } else if (isSealed(data)) {
      void pair.openSignal(data.x, (d) => {
        if (this.remotes.get(from) === remote && !remote.mismatch && typeof d === "object" && d !== null) this.onOpenSignal(remote, d);
      });
    } else {
      // In the clear: never applied. From a peer without the key (before any exchange with
      // it: a mismatch, and no connection), or forged (after one: dropped).
      crypto.rejected++;
      if (pair.state !== "ready") this.mismatch(remote, "it sent signaling unencrypted");
    }
  }

  /**
   * Signaling data from a peer, in the clear (or opened).
   * @param {Remote} remote
   * @param {any} data
   */
  onOpenSignal(remote, data) {
    if (data.ack !== undefined) {
      // An acknowledgement from a peer that may not send data: acks only, never messages.
      if (isEnvelope(data.ack) && data.ack.k === "a") this.host.scheduler.onEnvelope(remote, data.ack, "relay");
    } else if (data.nortc) {
      remote.noWebrtc = true;
      clearTimeout(remote.relinkTimer);
      remote.link?.close();
      remote.link = null;
    } else if (data.media) {
      this.host.emit("mediaChange", remote.info, { audio: !!data.media.audio, video: !!data.media.video });
    } else if (webrtcAvailable() && !this.host.left()) {
      // Signals name the generation (one RTCPeerConnection) of both sides. An offer from a
      // newer remote connection means the peer started over: so do we, before answering.
      // Anything else addressed to an older connection of ours is stale: drop it.
      if (data.to !== undefined && remote.link && data.to !== remote.link.gen) return;
      const fresh = data.description?.type === "offer" && remote.link?.remoteGen !== undefined &&
        data.gen !== remote.link.remoteGen;
      if (!remote.link || fresh) this.link(remote);
      const link = /** @type {PeerLink} */ (remote.link);
      if (link.remoteGen === undefined && data.gen !== undefined) link.remoteGen = data.gen;
      if (data.gen !== undefined && data.gen !== link.remoteGen) return;
      link.enqueueSignal(data);
    }
  }

  /** Tells every peer whether our microphone and camera are on. */
  announceMedia() {
    const { audioEnabled: audio, videoEnabled: video } = this.host.media;
    for (const id of this.remotes.keys()) this.signal(id, { media: { audio, video } });
  }

  /**
   * @param {Remote} remote
   * @param {boolean} open
   */
  onChannel(remote, open) {
    const path = open ? "p2p" : "relay";
    if (remote.path !== path) {
      remote.path = path;
      this.host.emit("pathChange", remote.info, path);
    }
    this.host.scheduler.onChannel(remote, open);
    if (open) return;
    // The channel is gone: a new peer connection is tried shortly (the other side does the
    // same).
    if (!this.host.left() && !remote.noWebrtc && this.remotes.get(remote.info.id) === remote) {
      const dead = remote.link;
      clearTimeout(remote.relinkTimer);
      remote.relinkTimer = setTimeout(() => {
        // Not if the peer left, or if its newer connection already replaced this one.
        if (this.remotes.get(remote.info.id) !== remote || remote.link !== dead) return;
        this.link(remote);
      }, RELINK_MS);
    }
  }

  /**
   * @param {Remote} remote
   * @param {MediaStream} stream
   */
  onStream(remote, stream) {
    this.host.media.videos.show(remote.info.id, stream);
    this.host.emit("stream", remote.info, stream);
  }
}
