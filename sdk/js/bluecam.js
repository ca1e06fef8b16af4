// @ts-check
/**
 * BlueCam browser SDK: `joinRoom` starts peer-to-peer video and audio in a private room, and
 * `sendMessage` delivers app data to the others over a WebRTC data channel when one is open,
 * falling back to the server's relay otherwise, exactly once and in order (docs/sdk.md, docs/protocol.md §15).
 *
 * This file is the public API (`joinRoom`, `sendMessage`, `Room`); the parts it ties together:
 * signaling.js (the connection to the server and its resume state machine), http.js (the HTTP
 * transport, a WebSocket look-alike), peers.js (the room's peers and their connections), mesh.js
 * (one RTCPeerConnection per peer), scheduler.js (the send loop: outboxes, inboxes, acks,
 * retransmissions), delivery.js (sequence numbers, acks, chunks; pure), sender.js (when to
 * retransmit or give up; pure), media.js (this peer's media, the camera and screen, the page's
 * elements), e2ee.js (end-to-end encryption with the app's room key), close-codes.js
 * (generated from the shared vectors), errors.js; bluecam.global.js
 * loads this module for classic pages.
 */

import { Signaling, tokenClaims } from "./signaling.js";
import { encodeData, reviveBytes } from "./delivery.js";
import { Emitter, OPTION_OF } from "./events.js";
import { Scheduler } from "./scheduler.js";
import { Peers } from "./peers.js";
import { CLOSE } from "./close-codes.js";
import { LocalMedia, cameraAvailable, wireButtons } from "./media.js";
import { RoomCrypto, e2eeSupported } from "./e2ee.js";
import {
  BlueCamError, ConnectionError, E2eeMismatchError, ForbiddenError, MessageTooLargeError,
  PeerUnreachableError, RoomFullError, RoomNotFoundError, UnauthorizedError, UnserializableError,
} from "./errors.js";

export {
  BlueCamError, ConnectionError, E2eeMismatchError, ForbiddenError, MessageTooLargeError,
  PeerUnreachableError, RoomFullError, RoomNotFoundError, UnauthorizedError, UnserializableError,
};
export { MAX_MESSAGE_BYTES } from "./delivery.js";
export { CLOSE, CLOSE_CODES } from "./close-codes.js";

/**
 * The `from` of a message the app's backend sent (`POST /v1/rooms/{id}/messages`):
 * `from.server === true`.
 * @type {Readonly<import("./frames.js").Peer>}
 */
export const SERVER_PEER = Object.freeze({ id: "server", identity: "server", server: /** @type {true} */ (true) });

/**
 * @typedef {import("./frames.js").Peer} Peer
 * @typedef {import("./events.js").Path} Path
 * @typedef {import("./events.js").ConnectionState} ConnectionState
 *   the link to the server: `reconnecting` while it is away (a network cut, a restart; the call
 *   and the peer-to-peer links go on, messages that need the relay wait), `disconnected` once
 *   the room has ended or was left
 * @typedef {import("./events.js").RoomEvents} RoomEvents
 * @typedef {import("./events.js").RoomEventName} RoomEventName
 * @typedef {import("./errors.js").ErrorCode} ErrorCode
 */

/**
 * The token: from the app's backend (`token`), or, classic, fetched by `getToken` for
 * `roomName` and `userId`. `getToken` is also what the SDK calls for a fresh token when the
 * one it holds has expired (or is about to) by the time the connection must resume.
 * @typedef {{token: string, getToken?: () => Promise<string>}
 *   | {token?: undefined, roomName: string, userId: string, getToken: (classic: {roomName: string, userId: string}) => Promise<string>}} TokenOptions
 */

/**
 * How to reach the server.
 * @typedef {object} ConnectionOptions
 * @property {string | string[]} [server] the BlueCam server's URL (a path prefix is kept:
 *   `https://app.example.com/rooms`), or nodes of one cluster in order of preference (the SDK
 *   uses the first and moves to the next when one cannot be reached or drains; shuffle the list
 *   per user to spread them). Required unless the SDK was loaded from the BlueCam server
 *   itself (`/sdk/bluecam.js`), whose address is then the default
 * @property {"websocket" | "http"} [signalMethod] only this transport to the server; by default
 *   a WebSocket, and plain HTTP (long-polling) when the browser has none or a WebSocket cannot
 *   be opened (a proxy that blocks it)
 * @property {"all" | "relay"} [iceTransportPolicy] "relay" sends media and the data channel only
 *   through the TURN servers the server hands out (hides the users' addresses from each other;
 *   needs TURN); default "all"
 * @property {AbortSignal} [signal] cancels the join while it is under way: `joinRoom` rejects
 *   with an `AbortError` and nothing is left on the server (no effect once it has resolved:
 *   `room.leave()` then)
 * @property {number} [deliveryTimeoutMs] a message a peer has not acknowledged this long after
 *   `sendMessage` rejects with PeerUnreachableError (with every later one still unacknowledged
 *   to that peer, which stays in the room); default 60000
 * @property {E2eeOptions} [e2ee] end-to-end encryption with a room key the app gives every
 *   participant (never through BlueCam): relayed messages, signaling and the data channel are
 *   sealed per pair of peers; a peer with another key (or none) is reported (`e2ee_mismatch`)
 *   and nothing passes between the two. See docs/security.md
 */

/**
 * @typedef {object} E2eeOptions
 * @property {string} key the room key, the same for every participant: at least 22
 *   characters, and at least 128 random bits (for example 32 random bytes in base64url). The
 *   demo puts it in the invite link's fragment (`#k=…`), which browsers never send to a server
 */

/**
 * This peer's media. A token whose `permissions.publishMedia` is false opens no camera or
 * microphone whatever these say; one whose `subscribeMedia` is false receives no media.
 * @typedef {object} MediaOptions
 * @property {boolean | MediaTrackConstraints} [video] default true
 * @property {boolean | MediaTrackConstraints} [audio] default true
 * @property {MediaStream} [localStream] the app's own stream to send instead of opening the
 *   camera and microphone (the app keeps it: leaving does not stop its tracks)
 */

/**
 * Page elements the SDK fills in (optional: `onStream` hands over the streams instead).
 * @typedef {object} ElementOptions
 * @property {HTMLVideoElement | string} [localVideo] element, selector, or element id
 * @property {HTMLElement | string} [remoteVideos] container: one <video data-peer=ID> per peer
 * @property {HTMLVideoElement | string} [remoteVideo] classic one-to-one: the first remote peer
 * @property {HTMLElement | string} [muteAudioBtn] classic: toggles the microphone
 * @property {HTMLElement | string} [muteVideoBtn] classic: toggles the camera
 * @property {HTMLElement | string} [callBtn] classic: the first click starts the call's media
 *   (camera and microphone), the next hangs up; messages flow throughout. `aria-pressed` shows it
 */

/**
 * Handlers of the room's events, registered at the join (the same as `room.on(…)`; none runs
 * before `joinRoom` has resolved). `roomNotFoundCallback` is called when the room does not
 * exist at the join or is deleted during the call.
 * @typedef {object} CallbackOptions
 * @property {(type: string, data: any, from: Peer, meta: {path: Path}) => void} [onMessage]
 * @property {() => void} [roomNotFoundCallback]
 * @property {(peer: Peer) => void} [onPeerJoined]
 * @property {(peer: Peer, reason: import("./events.js").LeaveReason) => void} [onPeerLeft]
 * @property {(peer: Peer, stream: MediaStream) => void} [onStream]
 * @property {(peer: Peer, path: Path) => void} [onPathChange]
 * @property {(peer: Peer, state: {audio: boolean, video: boolean}) => void} [onMediaChange]
 * @property {(error: import("./errors.js").BlueCamError | Error) => void} [onError]
 * @property {(state: ConnectionState) => void} [onConnectionChange]
 * @property {(peer: Peer, gap: import("./events.js").Gap) => void} [onGap] a peer left while
 *   some of its messages to us were incomplete: message `expected` never arrived, and `held`
 *   later messages and `partial` chunked ones are dropped with it
 */

/**
 * Options of the classic script that mean nothing now (one console warning).
 * @typedef {object} ClassicOptions
 * @property {string} [pubnubSubscribeKey] ignored
 * @property {string} [pubnubPublishKey] ignored
 */

/**
 * @typedef {TokenOptions & ConnectionOptions & MediaOptions & ElementOptions & CallbackOptions & ClassicOptions} JoinOptions
 */

/**
 * The options as the SDK's parts read them (every key optional).
 * @internal
 * @typedef {Partial<{token: string, roomName: string, userId: string, getToken: (classic: any) => Promise<string>}>
 *   & ConnectionOptions & MediaOptions & ElementOptions & CallbackOptions & ClassicOptions} AnyOptions
 */

/** @type {Room | null} */
let lastRoom = null;
/** The join under way or done last (the module-level `sendMessage` waits for it).
 * @type {Promise<Room> | null} */
let lastJoin = null;

/**
 * The server this module was loaded from, when it was: a BlueCam server serves the SDK at
 * `/sdk/bluecam.js` (under any path prefix a proxy adds). Bundled, or from a CDN, there is none.
 * @returns {string | null}
 */
function ownServer() {
  try {
    const here = new URL(import.meta.url);
    if (here.protocol !== "http:" && here.protocol !== "https:") return null;
    const prefix = here.pathname.match(/^(.*)\/sdk\/bluecam\.js$/);
    return prefix ? here.origin + prefix[1] : null;
  } catch {
    return null;
  }
}

/**
 * The WebSocket URL of each server given (a path prefix kept).
 * @param {string | string[] | undefined} server
 */
function wsUrls(server) {
  const own = server === undefined ? ownServer() : null;
  if (server === undefined && own === null) {
    throw new BlueCamError("joinRoom needs `server` (the BlueCam server's URL): this SDK was not loaded from a BlueCam server, so it cannot tell which one", "server_required");
  }
  const list = Array.isArray(server) ? server : [server ?? /** @type {string} */ (own)];
  if (list.length === 0) throw new BlueCamError("server: give at least one URL", "bad_options");
  return list.map((s) => {
    let base;
    try {
      base = new URL(s);
    } catch {
      throw new BlueCamError(`server: not a URL: ${JSON.stringify(s)}`, "bad_options");
    }
    if (!["http:", "https:", "ws:", "wss:"].includes(base.protocol)) {
      throw new BlueCamError(`server: not an http(s) URL: ${JSON.stringify(s)}`, "bad_options");
    }
    base.protocol = base.protocol === "https:" || base.protocol === "wss:" ? "wss:" : "ws:";
    base.pathname = base.pathname.replace(/\/+$/, "") + "/v1/ws";
    base.search = "";
    base.hash = "";
    return base.toString();
  });
}

/**
 * @param {AbortSignal} signal
 * @returns {Error}
 */
function abortError(signal) {
  const reason = signal.reason;
  if (reason instanceof Error && reason.name === "AbortError") return reason;
  return new DOMException("the join was cancelled", "AbortError");
}

/**
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError, ConnectionError, a BlueCamError with code
 * `server_required` or `bad_options`, or (`signal` aborted) a DOMException `AbortError`.
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
 * @param {AnyOptions} options
 * @returns {Promise<Room>}
 */
async function startRoom(options) {
  if (options.pubnubSubscribeKey !== undefined || options.pubnubPublishKey !== undefined) {
    console.warn("BlueCam: pubnubSubscribeKey and pubnubPublishKey are ignored: the BlueCam server carries every message now (see docs/migrating-from-classic.md)");
  }
  const { signal } = options;
  if (signal?.aborted) throw abortError(signal);
  let token = options.token;
  if (!token) {
    const { roomName, userId, getToken } = options;
    if (!getToken || roomName === undefined || userId === undefined) {
      throw new BlueCamError("joinRoom needs a token, or roomName, userId and getToken({roomName, userId}) to fetch one from your backend", "bad_options");
    }
    token = await getToken({ roomName, userId });
    if (signal?.aborted) throw abortError(signal);
  }
  const room = new Room({ ...options, token });
  await room.start();
  room.events.release();
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
  /**
   * Made by `joinRoom`; not to be constructed by apps.
   * @internal
   * @param {AnyOptions} options
   */
  constructor(options) {
    /** @internal */
    this.options = options;
    /** The room's events (`on`, `off`); the option callbacks are handlers of them.
     * @internal */
    this.events = new Emitter();
    for (const [event, option] of Object.entries(OPTION_OF)) {
      const handler = options[/** @type {keyof CallbackOptions} */ (option)];
      if (typeof handler === "function") this.events.on(/** @type {RoomEventName} */ (event), /** @type {any} */ (handler));
    }
    /** This peer: its id in the room and its identity (and name), once joined.
     * @type {Peer} */
    this.self = { id: "", identity: "" };
    /** @internal @type {RTCIceServer[]} */
    this.iceServers = [];
    /** This peer's camera, microphone and screen, and the page's videos (media.js).
     * @internal */
    this.media = new LocalMedia(options);
    /** @internal */
    this.left = false;
    /** Whether this peer's token allows sending data (`permissions.sendData`, default true).
     * @internal */
    this.canSendData = true;
    /** @internal @type {ConnectionState} */
    this.state = "connecting";
    /** Leaves when the page goes away (a closed tab, a navigation): the others see it at once,
     * rather than after the resume window. Not on `visibilitychange`: a hidden tab stays.
     * @internal */
    this.onPageHide = () => this.leave();
    /** The browser is online again (often on another network): every peer connection
     * restarts ICE, so the call finds its new path at once.
     * @internal */
    this.onOnline = () => {
      for (const link of this.roster.links()) link.restartIce("online");
    };
    const { getToken, roomName, userId } = options;
    // A classic getToken wants the room and user again for every fresh token.
    const freshToken = getToken && roomName !== undefined && userId !== undefined
      ? () => getToken({ roomName, userId })
      : getToken && (() => getToken(undefined));
    /**
     * The last message of the app's backend delivered, per sequence space.
     * @internal @type {Map<number, number>}
     */
    this.serverSeen = new Map();
    /**
     * The `server_ack` to send, per sequence space.
     * @internal @type {Map<number, number>}
     */
    this.serverAcks = new Map();
    /** @internal @type {ReturnType<typeof setTimeout> | undefined} */
    this.serverAckTimer = undefined;
    /** End-to-end encryption (e2ee.js), when the app gave a room key.
     * @internal @type {RoomCrypto | null} */
    this.crypto = null;
    if (options.e2ee !== undefined) {
      if (!e2eeSupported()) {
        throw new BlueCamError("e2ee needs WebCrypto, which browsers give only to secure pages (https, or http://localhost)", "unsupported");
      }
      try {
        this.crypto = new RoomCrypto(options.e2ee?.key);
      } catch (err) {
        throw new BlueCamError(err instanceof Error ? err.message : String(err), "bad_options");
      }
    }
    /** @internal */
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
    /** The send loop (scheduler.js).
     * @internal */
    this.scheduler = new Scheduler({
      remotes,
      signaling: this.signaling,
      crypto: this.crypto,
      canSendData: () => this.canSendData,
      deliveryTimeoutMs: options.deliveryTimeoutMs,
      deliver: (remote, type, data, path) => {
        this.events.emit("message", type, reviveBytes(data), remote.info, { path });
      },
      gap: (peer, gap) => this.events.emit("gap", peer, gap),
    });
    /** The room's peers and their connections (peers.js).
     * @internal */
    this.roster = new Peers({
      remotes,
      options,
      signaling: this.signaling,
      scheduler: this.scheduler,
      crypto: this.crypto,
      media: this.media,
      self: () => this.self,
      iceServers: () => this.iceServers,
      left: () => this.left,
      receiveMedia: () => this.permitted("subscribeMedia"),
      emit: (event, ...args) => this.events.emit(event, ...args),
    });
  }

  /**
   * Calls `handler` on each `event` from now on; returns a function that removes it.
   * `room.on("message", (type, data, from, { path }) => …)`.
   * @template {RoomEventName} K
   * @param {K} event
   * @param {(...args: RoomEvents[K]) => void} handler
   * @returns {() => void}
   */
  on(event, handler) {
    return this.events.on(event, handler);
  }

  /**
   * Removes a handler added with `on`.
   * @template {RoomEventName} K
   * @param {K} event
   * @param {(...args: RoomEvents[K]) => void} handler
   */
  off(event, handler) {
    this.events.off(event, handler);
  }

  /** How this peer reaches the server now: "websocket" or "http" (null before the join). */
  get transport() {
    return this.signaling.transport;
  }

  /** @internal */
  async start() {
    const { signal } = this.options;
    /** @type {(error: Error) => void} */
    let cancel = () => {};
    const cancelled = new Promise((_, reject) => {
      cancel = reject;
    });
    const onAbort = () => {
      // Nothing stays behind: a join sent is followed by a leave (the server takes them in
      // order), a socket still opening is closed, media opened meanwhile is stopped.
      this.left = true;
      this.signaling.leave();
      this.media.stop();
      cancel(abortError(/** @type {AbortSignal} */ (signal)));
    };
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await Promise.race([this.join(), cancelled]);
    } catch (err) {
      if (!this.left) {
        this.left = true;
        this.media.stop();
      }
      this.state = "disconnected";
      if (err instanceof RoomNotFoundError) this.options.roomNotFoundCallback?.();
      throw err;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /**
   * Whether the token allows this (a media permission; true when it does not say).
   * @internal
   * @param {"publishMedia" | "subscribeMedia"} what
   */
  permitted(what) {
    return tokenClaims(this.signaling.token)?.permissions?.[what] !== false;
  }

  /**
   * Refuses what the token does not allow.
   * @internal
   * @param {"publishMedia"} what
   */
  require(what) {
    if (!this.permitted(what)) {
      throw new ForbiddenError(`this peer's token does not allow it (permissions.${what} is false)`, "permission_denied");
    }
  }

  /** @internal */
  async join() {
    // With a classic `callBtn`, media waits for its first click; a token that does not allow
    // publishing opens nothing.
    const wantMedia = (this.options.video !== false || this.options.audio !== false || this.options.localStream)
      && !this.options.callBtn && this.permitted("publishMedia");
    if (wantMedia && (cameraAvailable() || this.options.localStream)) {
      try {
        await this.media.open();
      } catch (err) {
        this.emitError(err instanceof Error ? err : new Error(String(err)));
      }
      // (Cancelled while the camera opened: it is stopped again.)
      if (this.left) this.media.stop();
    }
    // (A microtask first: a join cancelled at once, as React's StrictMode does with the
    // effect of its first mount, opens no socket at all.)
    await Promise.resolve();
    if (this.left) return;
    const joined = await this.signaling.join();
    if (this.left) return;
    this.self = joined.self;
    // (The room is the token's: the app's backend named it, not the server.)
    void this.crypto?.bind(String(tokenClaims(this.signaling.token)?.room ?? joined.room?.id ?? ""), joined.self.id);
    this.canSendData = tokenClaims(this.signaling.token)?.permissions?.sendData !== false;
    this.iceServers = joined.iceServers ?? [];
    for (const peer of joined.peers) this.roster.add(peer, false);
    this.wireClassicButtons();
    this.scheduler.start();
    globalThis.addEventListener?.("pagehide", this.onPageHide);
    globalThis.addEventListener?.("online", this.onOnline);
    this.setState(this.signaling.connected ? "connected" : "reconnecting");
  }

  /** Whether this room is end-to-end encrypted (`joinRoom` was given `e2ee`). */
  get e2ee() {
    return this.crypto !== null;
  }

  /**
   * What the end-to-end encryption did so far: records sealed, opened, and rejected (failed
   * authentication, came unsealed, or a replayed signal or hello: dropped, never delivered; a
   * replayed relayed message opens and the delivery layer drops it as a duplicate); null when
   * it is off.
   * @returns {{sealed: number, opened: number, rejected: number} | null}
   */
  get e2eeStats() {
    const c = this.crypto;
    return c && { sealed: c.sealed, opened: c.opened, rejected: c.rejected };
  }

  /** The link to the server now. */
  get connectionState() {
    return this.state;
  }

  /**
   * @internal
   * @param {ConnectionState} state
   */
  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.events.emit("connectionChange", state);
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
   * Sends `data` (a string, any JSON value, or binary data: an `ArrayBuffer`, a typed array, a
   * `DataView` or a `Blob`, which arrive as a `Uint8Array`, also inside objects) to everyone,
   * or to `opts.to`. Resolves when every addressed peer has acknowledged it; rejects with
   * PeerUnreachableError naming those that could not be reached, or, before anything is sent,
   * MessageTooLargeError or UnserializableError (a cycle, a `BigInt`, a `Blob` inside an object).
   * @param {string} type
   * @param {unknown} data
   * @param {{to?: string | string[]}} [opts]
   * @returns {Promise<void>}
   */
  async sendMessage(type, data, opts = {}) {
    if (this.left) throw new ConnectionError("the room was left", "left");
    if (!this.canSendData) {
      // The server refuses this peer's relayed messages; the data channel must not carry them
      // either. Nothing goes out.
      throw new ForbiddenError("this peer's token does not allow sending data (permissions.sendData is false)", "permission_denied");
    }
    if (typeof Blob === "function" && data instanceof Blob) data = new Uint8Array(await data.arrayBuffer());
    let encoded;
    try {
      encoded = encodeData(data);
    } catch (err) {
      const message = err instanceof Error ? err.message : String(err);
      if (err instanceof RangeError) throw new MessageTooLargeError(message, "too_large");
      throw new UnserializableError(`the data cannot be sent: ${message}`, "unserializable");
    }
    const { remotes } = this.roster;
    const ids = opts.to === undefined ? [...remotes.keys()] : [...new Set([opts.to].flat())];
    const missing = ids.filter((id) => !remotes.has(id));
    if (missing.length > 0) throw new PeerUnreachableError("not in the room: " + missing.join(", "), missing);
    // Nothing goes to a peer whose end-to-end encryption does not match (peers.js).
    const mismatched = (/** @type {string[]} */ list) => list.filter((id) => remotes.get(id)?.mismatch);
    const refused = mismatched(ids);
    const live = ids.filter((id) => !refused.includes(id));
    const failed = live.length > 0 ? await this.scheduler.send(live, String(type), encoded) : [];
    const bad = [...refused, ...mismatched(failed)];
    if (bad.length > 0) {
      throw new E2eeMismatchError("end-to-end encryption does not match with: " + bad.join(", "), [...refused, ...failed]);
    }
    if (failed.length > 0) throw new PeerUnreachableError("could not reach: " + failed.join(", "), failed);
  }

  /** @param {boolean} on */
  setAudioEnabled(on) {
    this.media.setAudio(on);
    this.roster.announceMedia();
  }

  /**
   * Turns the camera off (its track is stopped: the camera's light goes off) or on again (a
   * new track, sent without renegotiation). The others get `mediaChange`. Resolves once the
   * camera is on (or rejects with the browser's error).
   * @param {boolean} on
   * @returns {Promise<void>}
   */
  async setVideoEnabled(on) {
    if (on) this.require("publishMedia");
    const turning = this.media.setVideo(on, this.roster.links());
    this.roster.announceMedia();
    await turning;
  }

  /**
   * Sends another camera's video (no renegotiation); with the camera off, it is the one
   * turned on next.
   * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
   * @returns {Promise<void>}
   */
  async setCamera(deviceId) {
    this.require("publishMedia");
    await this.media.setDevice("video", deviceId, this.roster.links());
  }

  /**
   * Sends another microphone's sound (no renegotiation).
   * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
   * @returns {Promise<void>}
   */
  async setMicrophone(deviceId) {
    this.require("publishMedia");
    await this.media.setDevice("audio", deviceId, this.roster.links());
  }

  /** Replaces the camera with the screen for every peer (no renegotiation). */
  async shareScreen() {
    this.require("publishMedia");
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
    this.require("publishMedia");
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
    this.shutdown(new ConnectionError("the room was left", "left"));
  }

  // ---- internals ----------------------------------------------------------------------

  /** The peers' state (for the end-to-end tests' diagnostics).
   * @internal */
  get remotes() {
    return this.roster.remotes;
  }

  /** The camera and microphone stream, if open.
   * @internal */
  get local() {
    return this.media.local;
  }

  /** Whether the microphone is on (`setAudioEnabled` changes it). */
  get audioEnabled() {
    return this.media.audioEnabled;
  }

  /** Whether the camera is on (`setVideoEnabled` changes it). */
  get videoEnabled() {
    return this.media.videoEnabled;
  }

  /** The screen's track while it is shared.
   * @internal */
  get screenTrack() {
    return this.media.screenTrack;
  }

  /** Hooks for the end-to-end tests: simulate network faults.
   * @internal */
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

  /**
   * @internal
   * @param {Error} error
   */
  emitError(error) {
    this.events.emit("error", error);
  }

  /**
   * A message from the app's backend (docs/protocol.md, 5.9): delivered once (the server
   * sends again, after a resume, what it has not seen acknowledged), acknowledged shortly
   * after.
   * @internal
   * @param {import("./frames.js").ServerMessageFrame} f
   */
  onServerMessage(f) {
    const last = this.serverSeen.get(f.e) ?? 0;
    if (f.s > last) {
      this.serverSeen.set(f.e, f.s);
      // A few spaces are enough: a space ends when the peer moves to another node, whose
      // forwarded messages of the old one may still come.
      if (this.serverSeen.size > 8) this.serverSeen.delete(this.serverSeen.keys().next().value ?? 0);
      this.events.emit("message", f.type, reviveBytes(f.data), SERVER_PEER, { path: "relay" });
    }
    // (Each space is acknowledged on its own: after a move, the old node's come forwarded
    // while the new node's own may be arriving.)
    this.serverAcks.set(f.e, Math.max(this.serverAcks.get(f.e) ?? 0, f.s, last));
    this.flushServerAck(10);
  }

  /**
   * Sends the pending `server_ack`s (the latest number of each space) after `ms`, and again
   * until the connection takes them.
   * @internal
   * @param {number} ms
   */
  flushServerAck(ms) {
    if (this.serverAckTimer !== undefined) return;
    this.serverAckTimer = setTimeout(() => {
      this.serverAckTimer = undefined;
      if (this.left) return;
      for (const [e, s] of [...this.serverAcks]) {
        if (!this.signaling.send({ op: "server_ack", e, s })) {
          this.flushServerAck(100);
          return;
        }
        if (this.serverAcks.get(e) === s) this.serverAcks.delete(e);
      }
    }, ms);
  }

  /**
   * @internal
   * @param {import("./frames.js").ServerFrame} f
   */
  onFrame(f) {
    switch (f.op) {
      case "peer_joined":
        this.roster.add(f.peer, true);
        break;
      case "peer_left":
        this.roster.remove(f.peer.id, undefined, f.reason);
        break;
      case "signal":
        this.roster.onSignal(f.from, f.data);
        break;
      case "message": {
        const remote = this.remotes.get(f.from);
        if (remote) this.roster.onRelayed(remote, f.msg);
        break;
      }
      case "server_message":
        this.onServerMessage(f);
        break;
      case "room_closed":
        this.onFatal(new ConnectionError(`the room was ${f.reason}`, "room_closed"), CLOSE.room_closed);
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
   * @internal
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
   * @internal
   * @param {Error} error
   * @param {number} code
   */
  onFatal(error, code) {
    if (this.left) return;
    this.left = true;
    if (code === CLOSE.room_closed || code === CLOSE.room_not_found) this.options.roomNotFoundCallback?.();
    this.emitError(error);
    this.shutdown(error);
  }

  /**
   * @internal
   * @param {Error} error
   */
  shutdown(error) {
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    globalThis.removeEventListener?.("online", this.onOnline);
    this.setState("disconnected");
    this.scheduler.stop();
    for (const id of [...this.remotes.keys()]) this.roster.remove(id, error);
    this.media.stop();
    if (lastRoom === this) lastRoom = null;
  }

  /** @internal */
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
