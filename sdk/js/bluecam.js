// @ts-check
/**
 * BlueCam browser SDK: `joinRoom` starts peer-to-peer video and audio in a private room, and
 * `sendMessage` delivers app data to the others over a WebRTC data channel when one is open,
 * falling back to the server's relay otherwise, exactly once and in order (DESIGN.md 2.3, 2.4).
 *
 * Files: signaling.js (the connection to the server and its resume state machine), http.js
 * (the HTTP transport, a WebSocket look-alike), mesh.js (one RTCPeerConnection per peer),
 * delivery.js (sequence numbers, acks, chunks; pure), sender.js (when to retransmit or give
 * up; pure), media.js (camera, screen and the page's elements), close-codes.js (generated from
 * the shared vectors), errors.js; bluecam.global.js loads this module for classic pages.
 */

import { Signaling } from "./signaling.js";
import { PeerLink, webrtcAvailable } from "./mesh.js";
import { Outbox, Inbox, encodeData, envelopesOf, isEnvelope } from "./delivery.js";
import { relayFrames, tickPeer } from "./sender.js";
import { CLOSE } from "./close-codes.js";
import { VideoWall, cameraAvailable, openCamera, openScreen, wireButtons } from "./media.js";
import {
  BlueCamError, ConnectionError, ForbiddenError, MessageTooLargeError, PeerUnreachableError,
  RoomFullError, RoomNotFoundError, UnauthorizedError,
} from "./errors.js";

export {
  BlueCamError, ConnectionError, ForbiddenError, MessageTooLargeError, PeerUnreachableError,
  RoomFullError, RoomNotFoundError, UnauthorizedError,
};
export { MAX_MESSAGE_BYTES } from "./delivery.js";

/** How often the retransmission check runs (sender.js decides what it does). */
const TICK_MS = 250;
/** Acks wait this long so that several messages share one. */
const ACK_DELAY_MS = 10;
/** Outbox bounds per peer: above either, sendMessage waits (back-pressure, never a drop). */
const OUTBOX_MAX_MESSAGES = 1024;
const OUTBOX_MAX_BYTES = 16 << 20;
/** After the data channel of a peer closes, a new connection is tried after this long. */
const RELINK_MS = 1000;
/** The default delivery bound: a message not acknowledged this long after sendMessage rejects
 * with PeerUnreachableError, so no promise stays pending forever. */
const DELIVERY_TIMEOUT_MS = 60000;

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

/**
 * @typedef {object} Remote
 * @property {Peer} info
 * @property {PeerLink | null} link
 * @property {Outbox} outbox
 * @property {Inbox} inbox
 * @property {boolean} ackDue
 * @property {Path} path
 * @property {boolean} noWebrtc the peer said it cannot do WebRTC
 * @property {ReturnType<typeof setTimeout> | undefined} relinkTimer
 * @property {number} lastProgressAt when acks or the data channel's draining last showed progress
 * @property {number} lastBuffered the data channel's bufferedAmount at the last tick
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

export class Room {
  /** @param {JoinOptions} options */
  constructor(options) {
    this.options = options;
    /** @type {Map<string, Remote>} */
    this.remotes = new Map();
    /** Per sender id, what was delivered from it (see inboxFor). */
    /** @type {Map<string, Inbox>} */
    this.inboxes = new Map();
    /** @type {Peer} */
    this.self = { id: "", identity: "" };
    /** @type {RTCIceServer[]} */
    this.iceServers = [];
    /** @type {MediaStream | null} */
    this.local = null;
    /** @type {MediaStreamTrack | null} */
    this.screenTrack = null;
    /** @type {MediaStream | null} */
    this.screenStream = null;
    /** What the page shows: the preview and the peers' videos (media.js). */
    this.videos = new VideoWall(options);
    this.audioEnabled = options.audio !== false;
    this.videoEnabled = options.video !== false;
    this.left = false;
    /** Whether this peer's token allows sending data (`permissions.sendData`, default true). */
    this.canSendData = true;
    this.relayPausedUntil = 0;
    /** @type {(() => void)[]} */
    this.spaceWaiters = [];
    /** @type {ReturnType<typeof setInterval> | undefined} */
    this.ticker = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.ackTimer = undefined;
    this.flushScheduled = false;
    /** @type {ConnectionState} */
    this.state = "connecting";
    /** Leaves when the page goes away (a closed tab, a navigation): the others see it at once,
     * rather than after the resume window. Not on `visibilitychange`: a hidden tab stays. */
    this.onPageHide = () => this.leave();
    /** The browser is online again (often on another network): every peer connection
     * restarts ICE, so the call finds its new path at once. */
    this.onOnline = () => {
      for (const remote of this.remotes.values()) remote.link?.restartIce("online");
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
      onWritable: () => this.sendUnsent(),
      onFatal: (error, code) => this.onFatal(error, code),
    }, freshToken, options.signalMethod);
    /** Admission of sends, in call order (see sendMessage). */
    this.admission = Promise.resolve();
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
        this.local = await openCamera(this.options);
        this.videos.showLocal(this.local);
      } catch (err) {
        this.emitError(err instanceof Error ? err : new Error(String(err)));
      }
    }
    let joined;
    try {
      joined = await this.signaling.join();
    } catch (err) {
      this.stopMedia();
      this.setState("disconnected");
      if (err instanceof RoomNotFoundError) this.options.roomNotFoundCallback?.();
      throw err;
    }
    this.self = joined.self;
    this.canSendData = tokenAllowsSendData(this.signaling.token);
    this.iceServers = joined.iceServers ?? [];
    for (const peer of joined.peers) this.addPeer(peer, false);
    this.wireClassicButtons();
    this.ticker = setInterval(() => this.tick(), TICK_MS);
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
    const ids = opts.to === undefined ? [...this.remotes.keys()] : [...new Set([opts.to].flat())];
    const missing = ids.filter((id) => !this.remotes.has(id));
    if (missing.length > 0) throw new PeerUnreachableError("not in the room: " + missing.join(", "), missing);
    // Sends are admitted in call order: a send waiting for room in one peer's outbox must not
    // be overtaken by a later send to another peer set (that would reorder for a shared peer).
    const admitted = this.admission.then(() => this.waitForSpace(ids));
    this.admission = admitted;
    await admitted;
    const results = await Promise.all(
      ids.map((id) => {
        const remote = this.remotes.get(id);
        if (!remote) return Promise.resolve(id);
        const { done } = remote.outbox.add(String(type), encoded.json, encoded.bytes);
        this.scheduleFlush();
        return done.then(() => null, () => id);
      }),
    );
    const failed = /** @type {string[]} */ (results.filter((r) => r !== null));
    if (failed.length > 0) throw new PeerUnreachableError("could not reach: " + failed.join(", "), failed);
  }

  /** @param {boolean} on */
  setAudioEnabled(on) {
    this.audioEnabled = on;
    for (const t of this.local?.getAudioTracks() ?? []) t.enabled = on;
    this.announceMedia();
  }

  /** @param {boolean} on */
  setVideoEnabled(on) {
    this.videoEnabled = on;
    for (const t of this.local?.getVideoTracks() ?? []) t.enabled = on;
    this.announceMedia();
  }

  /** Replaces the camera with the screen for every peer (no renegotiation). */
  async shareScreen() {
    const screen = await openScreen();
    const track = screen.getVideoTracks()[0];
    this.screenStream = screen;
    this.screenTrack = track;
    track.onended = () => this.stopScreenShare();
    // In place of the camera, or (no camera) as a new track; peers that connect or reconnect
    // during the share get it too (see `link`).
    await Promise.all([...this.remotes.values()].map((r) => r.link?.setTrack(track, screen)));
  }

  /** Goes back to the camera (or to no video, without one). */
  async stopScreenShare() {
    if (!this.screenTrack) return;
    this.screenTrack.stop();
    this.screenTrack = null;
    this.screenStream = null;
    const camera = this.local?.getVideoTracks()[0] ?? null;
    await Promise.all([...this.remotes.values()].map((r) => {
      if (camera && this.local) return r.link?.setTrack(camera, this.local);
      r.link?.removeTrack("video");
      return undefined;
    }));
  }

  /**
   * Classic `callBtn`: starts the call's media (camera and microphone) for every peer, now and
   * later. Messages flow with or without it.
   */
  async startCall() {
    if (this.local || this.left) return;
    const local = await openCamera(this.options);
    if (this.left) {
      for (const t of local.getTracks()) t.stop();
      return;
    }
    this.local = local;
    this.videos.showLocal(local);
    for (const remote of this.remotes.values()) {
      for (const track of local.getTracks()) {
        if (track.kind === "video" && this.screenTrack) continue;
        void remote.link?.setTrack(track, local);
      }
    }
    this.announceMedia();
  }

  /** Classic `callBtn`: hangs up: local media stops, and the other side's video of us ends. */
  hangUp() {
    const local = this.local;
    if (!local) return;
    this.local = null;
    for (const remote of this.remotes.values()) {
      remote.link?.removeTrack("audio");
      if (!this.screenTrack) remote.link?.removeTrack("video");
    }
    for (const t of local.getTracks()) t.stop();
    this.videos.showLocal(null);
  }

  /** Leaves the room: tells the server, closes every connection, stops the camera. */
  leave() {
    if (this.left) return;
    this.left = true;
    this.signaling.leave();
    this.shutdown(new ConnectionError("the room was left"));
  }

  // ---- internals ----------------------------------------------------------------------

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
        this.addPeer(f.peer, true);
        break;
      case "peer_left":
        this.removePeer(f.peer.id);
        break;
      case "signal":
        this.onSignal(f.from, f.data);
        break;
      case "message": {
        const remote = this.remotes.get(f.from);
        if (!remote) break;
        for (const env of [f.msg].flat()) this.onEnvelope(remote, env, "relay");
        break;
      }
      case "room_closed":
        this.onFatal(new RoomNotFoundError(`the room was ${f.reason}`, "room_not_found"), CLOSE.room_closed);
        break;
      case "error":
        if (f.code === "rate_limited") {
          this.relayPausedUntil = Date.now() + (f.retryAfterMs ?? 100);
        } else if (f.code === "unavailable" && Array.isArray(f.peers)) {
          // Not delivered to these peers (their node is away, or being replaced): retry soon
          // rather than after a back-off grown while the path was down.
          for (const id of f.peers) for (const e of this.remotes.get(id)?.outbox.pending ?? []) e.tries = 0;
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
    for (const id of [...this.remotes.keys()]) if (!ids.has(id)) this.removePeer(id);
    for (const p of present) if (!this.remotes.has(p.id)) this.addPeer(p, true);
    this.signaling.flushQueued();
    this.retransmitAll();
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
    clearInterval(this.ticker);
    clearTimeout(this.ackTimer);
    for (const id of [...this.remotes.keys()]) this.removePeer(id, error);
    this.stopMedia();
    if (lastRoom === this) lastRoom = null;
  }

  stopMedia() {
    for (const t of this.local?.getTracks() ?? []) t.stop();
    this.screenTrack?.stop();
  }

  /**
   * @param {Peer} info
   * @param {boolean} announce call onPeerJoined
   */
  addPeer(info, announce) {
    if (this.remotes.has(info.id) || info.id === this.self.id) return;
    /** @type {Remote} */
    const remote = {
      info, link: null, outbox: new Outbox(), inbox: this.inboxFor(info.id), ackDue: false,
      lastProgressAt: 0, lastBuffered: 0,
      path: "relay", noWebrtc: false, relinkTimer: undefined,
    };
    this.remotes.set(info.id, remote);
    if (webrtcAvailable()) {
      this.link(remote);
    } else {
      this.signal(info.id, { nortc: true });
    }
    if (this.local) this.signal(info.id, { media: { audio: this.audioEnabled, video: this.videoEnabled } });
    if (announce) this.options.onPeerJoined?.(info);
  }

  /**
   * What this Room has delivered from `id`, kept across that peer leaving and coming back with
   * the same id (a cluster may report a live peer gone and back): its sender may go on with
   * the same sequence space, and a fresh Inbox would deliver again what this app already got.
   * A sender that starts anew says so with a new epoch, and the Inbox follows.
   * @param {string} id
   */
  inboxFor(id) {
    let inbox = this.inboxes.get(id);
    if (!inbox) {
      inbox = new Inbox();
      this.inboxes.set(id, inbox);
    }
    return inbox;
  }

  /** @param {Remote} remote */
  link(remote) {
    const id = remote.info.id;
    clearTimeout(remote.relinkTimer);
    remote.link?.close();
    /** @type {RTCConfiguration} */
    const rtcConfig = { iceServers: this.iceServers, iceTransportPolicy: this.options.iceTransportPolicy ?? "all" };
    remote.link = new PeerLink(this.self.id > id, rtcConfig, this.local, {
      signal: (data) => this.signal(id, data),
      onData: (text) => this.onChannelData(remote, text),
      onChannel: (open) => this.onChannel(remote, open),
      onStream: (stream) => this.onStream(remote, stream),
    });
    // A peer that connects (or reconnects) during a screen share gets the screen.
    if (this.screenTrack && this.screenStream) void remote.link.setTrack(this.screenTrack, this.screenStream);
  }

  /**
   * @param {string} id
   * @param {Error} [error]
   */
  removePeer(id, error) {
    const remote = this.remotes.get(id);
    if (!remote) return;
    this.remotes.delete(id);
    clearTimeout(remote.relinkTimer);
    remote.link?.close();
    remote.outbox.fail(error ?? new PeerUnreachableError(`peer ${id} left`, [id]));
    const { held, chunks, expected } = remote.inbox;
    if (held.size > 0 || chunks.size > 0) {
      // Delivery from this peer became impossible with messages outstanding: say so.
      this.options.onGap?.(remote.info, { expected, held: held.size, partial: chunks.size });
      held.clear();
      chunks.clear();
    }
    this.videos.remove(id);
    this.wakeSpaceWaiters();
    if (!this.left) this.options.onPeerLeft?.(remote.info);
  }

  /**
   * @param {string} to
   * @param {unknown} data
   */
  signal(to, data) {
    // Signaling must survive a WebSocket outage: queue it for the resume.
    this.signaling.sendOrQueue({ op: "signal", to, data });
  }

  /**
   * @param {string} from
   * @param {any} data
   */
  onSignal(from, data) {
    const remote = this.remotes.get(from);
    if (!remote || typeof data !== "object" || data === null) return;
    if (data.ack !== undefined) {
      // An acknowledgement from a peer that may not send data: acks only, never messages.
      if (isEnvelope(data.ack) && data.ack.k === "a") this.onEnvelope(remote, data.ack, "relay");
    } else if (data.nortc) {
      remote.noWebrtc = true;
      clearTimeout(remote.relinkTimer);
      remote.link?.close();
      remote.link = null;
    } else if (data.media) {
      this.options.onMediaChange?.(remote.info, { audio: !!data.media.audio, video: !!data.media.video });
    } else if (webrtcAvailable() && !this.left) {
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

  announceMedia() {
    for (const id of this.remotes.keys()) {
      this.signal(id, { media: { audio: this.audioEnabled, video: this.videoEnabled } });
    }
  }

  /**
   * @param {Remote} remote
   * @param {boolean} open
   */
  onChannel(remote, open) {
    const path = open ? "p2p" : "relay";
    if (remote.path !== path) {
      remote.path = path;
      this.options.onPathChange?.(remote.info, path);
    }
    if (open) {
      this.transmit(remote, remote.outbox.pending.filter((e) => e.via === "none"), false);
      return;
    }
    // The channel is gone: everything unacknowledged goes over the relay now, and a new
    // peer connection is tried shortly (the other side does the same).
    this.transmit(remote, remote.outbox.pending, true);
    if (!this.left && !remote.noWebrtc && this.remotes.get(remote.info.id) === remote) {
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
    this.videos.show(remote.info.id, stream);
    this.options.onStream?.(remote.info, stream);
  }

  /**
   * @param {Remote} remote
   * @param {string} text
   */
  onChannelData(remote, text) {
    let env;
    try {
      env = JSON.parse(text);
    } catch {
      return;
    }
    this.onEnvelope(remote, env, "p2p");
  }

  /**
   * @param {Remote} remote
   * @param {unknown} env
   * @param {Path} path
   */
  onEnvelope(remote, env, path) {
    if (!isEnvelope(env)) return;
    if (env.k === "a") {
      if (remote.outbox.ack(env.a, env.e) > 0) {
        remote.lastProgressAt = Date.now();
        this.wakeSpaceWaiters();
      }
      return;
    }
    const delivered = remote.inbox.receive(env);
    remote.ackDue = true;
    this.scheduleAcks();
    for (const m of delivered) {
      try {
        this.options.onMessage?.(m.type, m.data, remote.info, { path });
      } catch (err) {
        console.error("bluecam: onMessage threw", err);
      }
    }
  }

  /** Sends what could not go out (rate limit, socket down), and acks that are due. */
  sendUnsent() {
    for (const remote of this.remotes.values()) {
      const unsent = remote.outbox.pending.filter((e) => e.sentAt === 0);
      if (unsent.length > 0) this.transmit(remote, unsent, false);
    }
    this.scheduleAcks();
  }

  /** Sends new messages once the current task is done, so a burst shares relay frames. */
  scheduleFlush() {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    queueMicrotask(() => {
      this.flushScheduled = false;
      for (const remote of this.remotes.values()) {
        const fresh = remote.outbox.pending.filter((e) => e.via === "none");
        if (fresh.length > 0) this.transmit(remote, fresh, false);
      }
    });
  }

  scheduleAcks() {
    if (this.ackTimer !== undefined) return;
    this.ackTimer = setTimeout(() => {
      this.ackTimer = undefined;
      for (const remote of this.remotes.values()) {
        if (!remote.ackDue) continue;
        const env = remote.inbox.ack();
        const ack = JSON.stringify(env);
        // A peer without `sendData` has its relayed `send`s refused: its acks go as signals
        // (which carry only acks: the receiver takes nothing else from a signal's `ack`).
        const sent =
          remote.link?.send(ack) ||
          (this.canSendData
            ? this.signaling.send({ op: "send", to: [remote.info.id], msg: env })
            : this.signaling.send({ op: "signal", to: remote.info.id, data: { ack: env } }));
        remote.ackDue = !sent;
      }
    }, ACK_DELAY_MS);
  }

  /**
   * Sends entries to one peer: over the data channel when it is open (and `relayOnly` is
   * false), otherwise batched over the relay. Entries that cannot go anywhere now keep
   * `sentAt` 0 and are picked up by the next tick.
   * @param {Remote} remote
   * @param {import("./delivery.js").Pending[]} entries
   * @param {boolean} relayOnly
   */
  transmit(remote, entries, relayOnly) {
    const now = Date.now();
    /** @type {{entry: import("./delivery.js").Pending, json: string, envs: import("./delivery.js").Envelope[]}[]} */
    const relay = [];
    for (const entry of entries) {
      const envs = envelopesOf(entry.seq, entry.type, entry.json, remote.outbox);
      if (!relayOnly && remote.link?.open && envs.every((e) => remote.link?.send(JSON.stringify(e)))) {
        entry.via = "p2p";
        entry.sentAt = now;
        remote.lastProgressAt = now;
        continue;
      }
      entry.via = "relay";
      entry.sentAt = now;
      relay.push({ entry, json: entry.json, envs });
    }
    // In frames, in order (sender.js). A frame that cannot go now (the rate limit's pause, the
    // socket down) leaves its messages and every later one unsent (sentAt 0): they go with the
    // next chance (the rate limit's onWritable, a tick, a resume).
    for (const frame of relayFrames(relay)) {
      const ok = Date.now() >= this.relayPausedUntil &&
        this.signaling.send({ op: "send", to: [remote.info.id], msg: frame.envs });
      if (!ok) {
        for (const rest of relay.slice(frame.first)) rest.entry.sentAt = 0;
        return;
      }
    }
  }

  /** Resends everything unacknowledged (after a reconnection). */
  retransmitAll() {
    for (const remote of this.remotes.values()) {
      this.transmit(remote, remote.outbox.pending, !remote.link?.open);
      if (remote.ackDue) this.scheduleAcks();
    }
  }

  /** Retransmits what has waited too long for its ack, over the relay. */
  tick() {
    const now = Date.now();
    const bound = this.options.deliveryTimeoutMs ?? DELIVERY_TIMEOUT_MS;
    for (const remote of this.remotes.values()) {
      const linkOpen = !!remote.link?.open;
      const decision = tickPeer(remote.outbox.pending, {
        linkOpen,
        buffered: linkOpen ? remote.link?.dc.bufferedAmount ?? 0 : 0,
        lastBuffered: remote.lastBuffered,
        lastProgressAt: remote.lastProgressAt,
      }, now, bound);
      if (decision.expire) {
        // Past the delivery bound: the sender is told, for this message and every later one
        // still unacknowledged (delivering those alone would break the order). A rejected
        // message may have arrived (its ack lost) or still arrive until the peer hears of the
        // new sequence space (a new epoch) this starts; after that, the old one is stale to it.
        const stuck = remote.outbox;
        remote.outbox = new Outbox();
        const id = remote.info.id;
        stuck.fail(new PeerUnreachableError(`peer ${id} did not acknowledge within ${bound / 1000} s`, [id]));
        this.wakeSpaceWaiters();
        continue;
      }
      remote.lastProgressAt = decision.lastProgressAt;
      remote.lastBuffered = decision.lastBuffered;
      if (decision.due.length > 0) this.transmit(remote, decision.due, this.signaling.connected);
      if (remote.ackDue) this.scheduleAcks();
    }
  }

  /** @param {string[]} ids */
  async waitForSpace(ids) {
    const full = () => ids.some((id) => {
      const o = this.remotes.get(id)?.outbox;
      return o !== undefined && (o.pending.length >= OUTBOX_MAX_MESSAGES || o.bytes >= OUTBOX_MAX_BYTES);
    });
    while (full()) await new Promise((resolve) => this.spaceWaiters.push(() => resolve(undefined)));
  }

  wakeSpaceWaiters() {
    const waiters = this.spaceWaiters;
    this.spaceWaiters = [];
    for (const w of waiters) w();
  }

  wireClassicButtons() {
    wireButtons(this.options, {
      inCall: () => this.local !== null,
      startCall: () => this.startCall(),
      hangUp: () => this.hangUp(),
      audioOn: () => this.audioEnabled,
      videoOn: () => this.videoEnabled,
      setAudio: (on) => this.setAudioEnabled(on),
      setVideo: (on) => this.setVideoEnabled(on),
      onError: (err) => this.emitError(err),
    });
  }
}
