// @ts-check
/**
 * BlueCam browser SDK: `joinRoom` starts peer-to-peer video and audio in a private room, and
 * `sendMessage` delivers app data to the others over a WebRTC data channel when one is open,
 * falling back to the server's relay otherwise, exactly once and in order (DESIGN.md 2.3, 2.4).
 *
 * This file is the public API (`joinRoom`, `sendMessage`, `Room`); the parts it ties together:
 * signaling.js (the connection to the server and its resume state machine), http.js (the HTTP
 * transport, a WebSocket look-alike), peers.js (the room's peers and their connections), mesh.js
 * (one RTCPeerConnection per peer), scheduler.js (the send loop: outboxes, inboxes, acks,
 * retransmissions), delivery.js (sequence numbers, acks, chunks; pure), sender.js (when to
 * retransmit or give up; pure), media.js (this peer's media, the camera and screen, the page's
 * elements), close-codes.js (generated from the shared vectors), errors.js; bluecam.global.js
 * loads this module for classic pages.
 */

import { Signaling } from "./signaling.js";
import { encodeData } from "./delivery.js";
import { Scheduler } from "./scheduler.js";
import { Peers } from "./peers.js";
import { CLOSE } from "./close-codes.js";
import { LocalMedia, cameraAvailable, wireButtons } from "./media.js";
import {
  BlueCamError, ConnectionError, ForbiddenError, MessageTooLargeError, PeerUnreachableError,
  RoomFullError, RoomNotFoundError, UnauthorizedError,
} from "./errors.js";

export {
  BlueCamError, ConnectionError, ForbiddenError, MessageTooLargeError, PeerUnreachableError,
  RoomFullError, RoomNotFoundError, UnauthorizedError,
};
export { MAX_MESSAGE_BYTES } from "./delivery.js";

/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {"p2p" | "relay"} Path
 * @typedef {"connecting" | "connected" | "reconnecting" | "disconnected"} ConnectionState
 *   the link to the server: `reconnecting` while it is away (a network cut, a restart; the call
 *   and the peer-to-peer links go on, messages that need the relay wait), `disconnected` once
 *   the room has ended or was left
 * @typedef {object} JoinOptions
 * @property {string} [token] from the app's backend (or, classic, `roomName` + `userId` and a
 *   `getToken` that fetches it)
 * @property {(classic?: {roomName: string, userId: string}) => Promise<string>} [getToken] a
 *   token for the same room and identity: used when the connection resumes (the first token may
 *   have expired by then), and, with `roomName` + `userId` and no `token`, for the first join
 * @property {string} [roomName] classic: the room, for `getToken`
 * @property {string} [userId] classic: the user, for `getToken`
 * @property {string} [pubnubSubscribeKey] classic, ignored (one console warning)
 * @property {string} [pubnubPublishKey] classic, ignored
 * @property {string | string[]} [server] the BlueCam server, or nodes of one cluster in order
 *   of preference (the SDK uses the first and moves to the next when one cannot be reached or
 *   drains; shuffle the list per user to spread them); defaults to the SDK's own origin
 * @property {"websocket" | "http"} [signalMethod] only this transport to the server; by default
 *   a WebSocket, and plain HTTP (long-polling) when the browser has none or a WebSocket cannot
 *   be opened (a proxy that blocks it)
 * @property {"all" | "relay"} [iceTransportPolicy] "relay" sends media and the data channel only
 *   through the TURN servers the server hands out (hides the users' addresses from each other;
 *   needs TURN); default "all"
 * @property {boolean | MediaTrackConstraints} [video] default true
 * @property {boolean | MediaTrackConstraints} [audio] default true
 * @property {HTMLVideoElement | string} [localVideo] element, selector, or element id
 * @property {HTMLElement | string} [remoteVideos] container: one <video data-peer=ID> per peer
 * @property {HTMLVideoElement | string} [remoteVideo] classic one-to-one: the first remote peer
 * @property {HTMLElement | string} [muteAudioBtn] classic: toggles the microphone
 * @property {HTMLElement | string} [muteVideoBtn] classic: toggles the camera
 * @property {HTMLElement | string} [callBtn] classic: the first click starts the call's media
 *   (camera and microphone), the next hangs up; messages flow throughout. `aria-pressed` shows it
 * @property {(type: string, data: any, from: Peer, meta: {path: Path}) => void} [onMessage]
 * @property {() => void} [roomNotFoundCallback]
 * @property {(peer: Peer) => void} [onPeerJoined]
 * @property {(peer: Peer) => void} [onPeerLeft]
 * @property {(peer: Peer, stream: MediaStream) => void} [onStream]
 * @property {(peer: Peer, path: Path) => void} [onPathChange]
 * @property {(peer: Peer, state: {audio: boolean, video: boolean}) => void} [onMediaChange]
 * @property {(error: Error) => void} [onError]
 * @property {(state: ConnectionState) => void} [onConnectionChange]
 * @property {number} [deliveryTimeoutMs] a message a peer has not acknowledged this long after
 *   `sendMessage` rejects with PeerUnreachableError (with every later one still unacknowledged
 *   to that peer, which stays in the room); default 60000
 * @property {(peer: Peer, gap: {expected: number, held: number, partial: number}) => void} [onGap]
 *   a peer left while some of its messages to us were incomplete: message `expected` never
 *   arrived, and `held` later messages and `partial` chunked ones are dropped with it
 */

/** @type {Room | null} */
let lastRoom = null;
/** The join under way or done last (the module-level `sendMessage` waits for it).
 * @type {Promise<Room> | null} */
let lastJoin = null;

/**
 * Whether a token's `permissions.sendData` allows sending (true when absent or unreadable: the
 * server enforces it anyway). The claims are the JWT's middle part; no secret is needed to
 * read them.
 * @param {string} token
 */
function tokenAllowsSendData(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return claims?.permissions?.sendData !== false;
  } catch {
    return true;
  }
}

/** @param {string | string[] | undefined} server */
function wsUrls(server) {
  const list = Array.isArray(server) ? server : [server ?? new URL(import.meta.url).origin];
  if (list.length === 0) throw new TypeError("server: give at least one URL");
  return list.map((s) => {
    const base = new URL(s);
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    base.pathname = "/v1/ws";
    return base.toString();
  });
}

/**
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError or ConnectionError.
 * @param {JoinOptions} options
 * @returns {Promise<Room>}
 */
export async function joinRoom(options) {
  const joining = startRoom(options);
  lastJoin = joining;
  const room = await joining;
  lastRoom = room;
  return room;
}

/**
 * The classic options on top of the modern ones: a token from `getToken({roomName, userId})`
 * when none is given, and the PubNub keys of the classic script, which mean nothing now.
 * @param {JoinOptions} options
 * @returns {Promise<Room>}
 */
async function startRoom(options) {
  if (options.pubnubSubscribeKey !== undefined || options.pubnubPublishKey !== undefined) {
    console.warn("BlueCam: pubnubSubscribeKey and pubnubPublishKey are ignored: the BlueCam server carries every message now (see docs/migrating-from-classic.md)");
  }
  let token = options.token;
  if (!token) {
    const { roomName, userId, getToken } = options;
    if (!getToken || roomName === undefined || userId === undefined) {
      throw new BlueCamError("joinRoom needs a token, or roomName, userId and getToken({roomName, userId}) to fetch one from your backend");
    }
    token = await getToken({ roomName, userId });
  }
  const room = new Room({ ...options, token });
  await room.start();
  return room;
}

/** The classic script's name. */
export const JoinRoom = joinRoom;

/**
 * Sends to everyone in the room joined last: the classic fire-and-forget send (inline handlers
 * never await it). It waits for a join under way, and never rejects: it resolves true once
 * every addressed peer has the message, false otherwise, and the failure goes to the room's
 * `onError` (or, with no room at all, to the console). `room.sendMessage` is the one that
 * rejects.
 * @param {string} type
 * @param {unknown} data
 * @param {{to?: string | string[]}} [opts]
 * @returns {Promise<boolean>}
 */
export async function sendMessage(type, data, opts) {
  /** @type {Room | null} */
  let room = null;
  try {
    room = lastRoom ?? (lastJoin ? await lastJoin : null);
  } catch {
    // The join failed: its caller was told.
  }
  if (!room) {
    console.warn(`BlueCam: sendMessage(${JSON.stringify(type)}) with no room joined: not sent`);
    return false;
  }
  try {
    await room.sendMessage(type, data, opts);
    return true;
  } catch (err) {
    room.emitError(err instanceof Error ? err : new Error(String(err)));
    return false;
  }
}

/**
 * @typedef {import("./scheduler.js").Remote} Remote
 */

export class Room {
  /** @param {JoinOptions} options */
  constructor(options) {
    this.options = options;
    /** @type {Peer} */
    this.self = { id: "", identity: "" };
    /** @type {RTCIceServer[]} */
    this.iceServers = [];
    /** This peer's camera, microphone and screen, and the page's videos (media.js). */
    this.media = new LocalMedia(options);
    this.left = false;
    /** Whether this peer's token allows sending data (`permissions.sendData`, default true). */
    this.canSendData = true;
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** Leaves when the page goes away (a closed tab, a navigation): the others see it at once,
     * rather than after the resume window. Not on `visibilitychange`: a hidden tab stays. */
    this.onPageHide = () => this.leave();
    /** The browser is online again (often on another network): every peer connection
     * restarts ICE, so the call finds its new path at once. */
    this.onOnline = () => {
      for (const link of this.roster.links()) link.restartIce("online");
    };
    const { getToken, roomName, userId } = options;
    // A classic getToken wants the room and user again for every fresh token.
    const freshToken = getToken && roomName !== undefined && userId !== undefined
      ? () => getToken({ roomName, userId })
      : getToken;
    this.signaling = new Signaling(wsUrls(options.server), options.token ?? "", {
      onFrame: (f) => this.onFrame(f),
      onResumed: (joined) => this.onResumed(joined),
      onConnectionChange: (up) => {
        if (this.state !== "connecting" && !this.left) this.setState(up ? "connected" : "reconnecting");
      },
      onWritable: () => this.scheduler.sendUnsent(),
      onFatal: (error, code) => this.onFatal(error, code),
    }, freshToken, options.signalMethod);
    /** @type {Map<string, Remote>} */
    const remotes = new Map();
    /** The send loop (scheduler.js). */
    this.scheduler = new Scheduler({
      remotes,
      signaling: this.signaling,
      canSendData: () => this.canSendData,
      deliveryTimeoutMs: options.deliveryTimeoutMs,
      deliver: (remote, type, data, path) => {
        try {
          this.options.onMessage?.(type, data, remote.info, { path });
        } catch (err) {
          console.error("bluecam: onMessage threw", err);
        }
      },
      gap: (peer, gap) => this.options.onGap?.(peer, gap),
    });
    /** The room's peers and their connections (peers.js). */
    this.roster = new Peers({
      remotes,
      options,
      signaling: this.signaling,
      scheduler: this.scheduler,
      media: this.media,
      self: () => this.self,
      iceServers: () => this.iceServers,
      left: () => this.left,
    });
  }

  /** How this peer reaches the server now: "websocket" or "http" (null before the join). */
  get transport() {
    return this.signaling.transport;
  }

  async start() {
    // With a classic `callBtn`, media waits for its first click.
    const wantMedia = (this.options.video !== false || this.options.audio !== false) && !this.options.callBtn;
    if (wantMedia && cameraAvailable()) {
      try {
        await this.media.open();
      } catch (err) {
        this.emitError(err instanceof Error ? err : new Error(String(err)));
      }
    }
    let joined;
    try {
      joined = await this.signaling.join();
    } catch (err) {
      this.media.stop();
      this.setState("disconnected");
      if (err instanceof RoomNotFoundError) this.options.roomNotFoundCallback?.();
      throw err;
    }
    this.self = joined.self;
    this.canSendData = tokenAllowsSendData(this.signaling.token);
    this.iceServers = joined.iceServers ?? [];
    for (const peer of joined.peers) this.roster.add(peer, false);
    this.wireClassicButtons();
    this.scheduler.start();
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    globalThis.addEventListener?.("online", this.onOnline);
    this.setState(this.signaling.connected ? "connected" : "reconnecting");
  }

  /** The link to the server now. */
  get connectionState() {
    return this.state;
  }

  /** @param {ConnectionState} state */
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    try {
      this.options.onConnectionChange?.(state);
    } catch (err) {
      console.error("bluecam: onConnectionChange threw", err);
    }
  }

  /** The peers in the room now (without yourself). */
  get peers() {
    return this.roster.list();
  }

  /**
   * The path messages to this peer take now.
   * @param {string} peerId
   * @returns {Path}
   */
  path(peerId) {
    return this.roster.path(peerId);
  }

  /**
   * Sends `data` (a string or any JSON value) to everyone, or to `opts.to`. Resolves when
   * every addressed peer has acknowledged it; rejects with PeerUnreachableError naming those
   * that could not be reached, or MessageTooLargeError (before anything is sent).
   * @param {string} type
   * @param {unknown} data
   * @param {{to?: string | string[]}} [opts]
   * @returns {Promise<void>}
   */
  async sendMessage(type, data, opts = {}) {
    if (this.left) throw new ConnectionError("the room was left");
    if (!this.canSendData) {
      // The server refuses this peer's relayed messages; the data channel must not carry them
      // either. Nothing goes out.
      throw new ForbiddenError("this peer's token does not allow sending data (permissions.sendData is false)", "permission_denied");
    }
    let encoded;
    try {
      encoded = encodeData(data);
    } catch (err) {
      throw new MessageTooLargeError(err instanceof Error ? err.message : String(err), "too_large");
    }
    const { remotes } = this.roster;
    const ids = opts.to === undefined ? [...remotes.keys()] : [...new Set([opts.to].flat())];
    const missing = ids.filter((id) => !remotes.has(id));
    if (missing.length > 0) throw new PeerUnreachableError("not in the room: " + missing.join(", "), missing);
    const failed = await this.scheduler.send(ids, String(type), encoded);
    if (failed.length > 0) throw new PeerUnreachableError("could not reach: " + failed.join(", "), failed);
  }

  /** @param {boolean} on */
  setAudioEnabled(on) {
    this.media.setAudio(on);
    this.roster.announceMedia();
  }

  /** @param {boolean} on */
  setVideoEnabled(on) {
    this.media.setVideo(on);
    this.roster.announceMedia();
  }

  /** Replaces the camera with the screen for every peer (no renegotiation). */
  async shareScreen() {
    await this.media.shareScreen(this.roster.links(), () => void this.stopScreenShare());
  }

  /** Goes back to the camera (or to no video, without one). */
  async stopScreenShare() {
    await this.media.stopScreenShare(this.roster.links());
  }

  /**
   * Classic `callBtn`: starts the call's media (camera and microphone) for every peer, now and
   * later. Messages flow with or without it.
   */
  async startCall() {
    if (this.media.local || this.left) return;
    if (await this.media.startCall(() => this.roster.links(), () => this.left)) this.roster.announceMedia();
  }

  /** Classic `callBtn`: hangs up: local media stops, and the other side's video of us ends. */
  hangUp() {
    this.media.hangUp(this.roster.links());
  }

  /** Leaves the room: tells the server, closes every connection, stops the camera. */
  leave() {
    if (this.left) return;
    this.left = true;
    this.signaling.leave();
    this.shutdown(new ConnectionError("the room was left"));
  }

  // ---- internals ----------------------------------------------------------------------

  /** The peers' state (internal: for the end-to-end tests' diagnostics). */
  get remotes() {
    return this.roster.remotes;
  }

  /** The camera and microphone stream, if open (internal). */
  get local() {
    return this.media.local;
  }

  /** Whether the microphone is on (internal; `setAudioEnabled` changes it). */
  get audioEnabled() {
    return this.media.audioEnabled;
  }

  /** Whether the camera is on (internal; `setVideoEnabled` changes it). */
  get videoEnabled() {
    return this.media.videoEnabled;
  }

  /** The screen's track while it is shared (internal). */
  get screenTrack() {
    return this.media.screenTrack;
  }

  /** Hooks for the end-to-end tests: simulate network faults. */
  get _test() {
    return {
      dropSocket: () => this.signaling.drop(),
      /** @param {number} ms keep the WebSocket down this long */
      cutSocket: (ms) => this.signaling.cut(ms),
      /** @param {string} peerId */
      closeChannel: (peerId) => this.remotes.get(peerId)?.link?.dc.close(),
      /** @param {string} peerId */
      outboxSize: (peerId) => this.remotes.get(peerId)?.outbox.pending.length ?? 0,
    };
  }

  /** @param {Error} error */
  emitError(error) {
    if (this.options.onError) this.options.onError(error);
    else console.warn("bluecam:", error);
  }

  /**
   * @param {import("./frames.js").ServerFrame} f
   */
  onFrame(f) {
    switch (f.op) {
      case "peer_joined":
        this.roster.add(f.peer, true);
        break;
      case "peer_left":
        this.roster.remove(f.peer.id);
        break;
      case "signal":
        this.roster.onSignal(f.from, f.data);
        break;
      case "message": {
        const remote = this.remotes.get(f.from);
        if (!remote) break;
        for (const env of [f.msg].flat()) this.scheduler.onEnvelope(remote, env, "relay");
        break;
      }
      case "room_closed":
        this.onFatal(new RoomNotFoundError(`the room was ${f.reason}`, "room_not_found"), CLOSE.room_closed);
        break;
      case "error":
        if (f.code === "rate_limited") {
          this.scheduler.pauseRelay(f.retryAfterMs ?? 100);
        } else if (f.code === "unavailable" && Array.isArray(f.peers)) {
          // Not delivered to these peers (their node is away, or being replaced).
          this.scheduler.retrySoon(f.peers);
        } else if (f.code !== "unknown_peer") {
          // (A relay frame the server could not pass on, `unknown_peer` or `unavailable` with
          // the peers named, is the delivery layer's business: every message is retransmitted
          // until acknowledged, and a peer that is really gone leaves. Not an app error.)
          this.emitError(new BlueCamError(f.message, f.code));
        }
        break;
      default:
        break;
    }
  }

  /**
   * The WebSocket came back with the same peer id: reconcile the peer list.
   * @param {import("./frames.js").JoinedFrame} joined
   */
  onResumed(joined) {
    /** @type {Peer[]} */
    const present = joined.peers;
    const ids = new Set(present.map((p) => p.id));
    for (const id of [...this.remotes.keys()]) if (!ids.has(id)) this.roster.remove(id);
    for (const p of present) if (!this.remotes.has(p.id)) this.roster.add(p, true);
    this.signaling.flushQueued();
    this.scheduler.retransmitAll();
  }

  /**
   * @param {Error} error
   * @param {number} code
   */
  onFatal(error, code) {
    if (this.left) return;
    this.left = true;
    if (code === CLOSE.room_closed || error instanceof RoomNotFoundError) this.options.roomNotFoundCallback?.();
    this.emitError(error);
    this.shutdown(error);
  }

  /** @param {Error} error */
  shutdown(error) {
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    globalThis.removeEventListener?.("online", this.onOnline);
    this.setState("disconnected");
    this.scheduler.stop();
    for (const id of [...this.remotes.keys()]) this.roster.remove(id, error);
    this.media.stop();
    if (lastRoom === this) lastRoom = null;
  }

  wireClassicButtons() {
    wireButtons(this.options, {
      inCall: () => this.media.local !== null,
      startCall: () => this.startCall(),
      hangUp: () => this.hangUp(),
      audioOn: () => this.media.audioEnabled,
      videoOn: () => this.media.videoEnabled,
      setAudio: (on) => this.setAudioEnabled(on),
      setVideo: (on) => this.setVideoEnabled(on),
      onError: (err) => this.emitError(err),
    });
  }
}
