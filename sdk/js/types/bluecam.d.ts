/**
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError, ConnectionError, a BlueCamError with code
 * `server_required` or `bad_options`, or (`signal` aborted) a DOMException `AbortError`.
 * @param {JoinOptions} options
 * @returns {Promise<Room>}
 */
export function joinRoom(options: JoinOptions): Promise<Room>;
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
export function sendMessage(type: string, data: unknown, opts?: {
    to?: string | string[];
}): Promise<boolean>;
export { MAX_MESSAGE_BYTES } from "./delivery.js";
/**
 * The `from` of a message the app's backend sent (`POST /v1/rooms/{id}/messages`):
 * `from.server === true`.
 * @type {Readonly<import("./frames.js").Peer>}
 */
export const SERVER_PEER: Readonly<import("./frames.js").Peer>;
/**
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError, ConnectionError, a BlueCamError with code
 * `server_required` or `bad_options`, or (`signal` aborted) a DOMException `AbortError`.
 * @param {JoinOptions} options
 * @returns {Promise<Room>}
 */
export function JoinRoom(options: JoinOptions): Promise<Room>;
/**
 * @typedef {import("./scheduler.js").Remote} Remote
 */
export class Room {
    private constructor();
    /** This peer: its id in the room and its identity (and name), once joined.
     * @type {Peer} */
    self: Peer;
    /**
     * Calls `handler` on each `event` from now on; returns a function that removes it.
     * `room.on("message", (type, data, from, { path }) => …)`.
     * @template {RoomEventName} K
     * @param {K} event
     * @param {(...args: RoomEvents[K]) => void} handler
     * @returns {() => void}
     */
    on<K extends RoomEventName>(event: K, handler: (...args: RoomEvents[K]) => void): () => void;
    /**
     * Removes a handler added with `on`.
     * @template {RoomEventName} K
     * @param {K} event
     * @param {(...args: RoomEvents[K]) => void} handler
     */
    off<K extends RoomEventName>(event: K, handler: (...args: RoomEvents[K]) => void): void;
    /** How this peer reaches the server now: "websocket" or "http" (null before the join). */
    get transport(): import("./signaling.js").SignalMethod | null;
    /** Whether this room is end-to-end encrypted (`joinRoom` was given `e2ee`). */
    get e2ee(): boolean;
    /**
     * What the end-to-end encryption did so far: records sealed, opened, and rejected (failed
     * authentication, came unsealed, or a replayed signal or hello: dropped, never delivered; a
     * replayed relayed message opens and the delivery layer drops it as a duplicate); null when
     * it is off.
     * @returns {{sealed: number, opened: number, rejected: number} | null}
     */
    get e2eeStats(): {
        sealed: number;
        opened: number;
        rejected: number;
    } | null;
    /** The link to the server now. */
    get connectionState(): import("./events.js").ConnectionState;
    /** The peers in the room now (without yourself). */
    get peers(): import("./frames.js").Peer[];
    /**
     * The path messages to this peer take now.
     * @param {string} peerId
     * @returns {Path}
     */
    path(peerId: string): Path;
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
    sendMessage(type: string, data: unknown, opts?: {
        to?: string | string[];
    }): Promise<void>;
    /** @param {boolean} on */
    setAudioEnabled(on: boolean): void;
    /**
     * Turns the camera off (its track is stopped: the camera's light goes off) or on again (a
     * new track, sent without renegotiation). The others get `mediaChange`. Resolves once the
     * camera is on (or rejects with the browser's error).
     * @param {boolean} on
     * @returns {Promise<void>}
     */
    setVideoEnabled(on: boolean): Promise<void>;
    /**
     * Sends another camera's video (no renegotiation); with the camera off, it is the one
     * turned on next.
     * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
     * @returns {Promise<void>}
     */
    setCamera(deviceId: string): Promise<void>;
    /**
     * Sends another microphone's sound (no renegotiation).
     * @param {string} deviceId from `navigator.mediaDevices.enumerateDevices()`
     * @returns {Promise<void>}
     */
    setMicrophone(deviceId: string): Promise<void>;
    /** Replaces the camera with the screen for every peer (no renegotiation). */
    shareScreen(): Promise<void>;
    /** Goes back to the camera (or to no video, without one). */
    stopScreenShare(): Promise<void>;
    /**
     * Classic `callBtn`: starts the call's media (camera and microphone) for every peer, now and
     * later. Messages flow with or without it.
     */
    startCall(): Promise<void>;
    /** Classic `callBtn`: hangs up: local media stops, and the other side's video of us ends. */
    hangUp(): void;
    /** Leaves the room: tells the server, closes every connection, stops the camera. */
    leave(): void;
    /** Whether the microphone is on (`setAudioEnabled` changes it). */
    get audioEnabled(): boolean;
    /** Whether the camera is on (`setVideoEnabled` changes it). */
    get videoEnabled(): boolean;
}
export type Peer = import("./frames.js").Peer;
export type Path = import("./events.js").Path;
/**
 * the link to the server: `reconnecting` while it is away (a network cut, a restart; the call
 * and the peer-to-peer links go on, messages that need the relay wait), `disconnected` once
 * the room has ended or was left
 */
export type ConnectionState = import("./events.js").ConnectionState;
export type RoomEvents = import("./events.js").RoomEvents;
export type RoomEventName = import("./events.js").RoomEventName;
export type ErrorCode = import("./errors.js").ErrorCode;
/**
 * The token: from the app's backend (`token`), or, classic, fetched by `getToken` for
 * `roomName` and `userId`. `getToken` is also what the SDK calls for a fresh token when the
 * one it holds has expired (or is about to) by the time the connection must resume.
 */
export type TokenOptions = {
    token: string;
    getToken?: () => Promise<string>;
} | {
    token?: undefined;
    roomName: string;
    userId: string;
    getToken: (classic: {
        roomName: string;
        userId: string;
    }) => Promise<string>;
};
/**
 * How to reach the server.
 */
export type ConnectionOptions = {
    /**
     * the BlueCam server's URL (a path prefix is kept:
     * `https://app.example.com/rooms`), or nodes of one cluster in order of preference (the SDK
     * uses the first and moves to the next when one cannot be reached or drains; shuffle the list
     * per user to spread them). Required unless the SDK was loaded from the BlueCam server
     * itself (`/sdk/bluecam.js`), whose address is then the default
     */
    server?: string | string[] | undefined;
    /**
     * only this transport to the server; by default
     * a WebSocket, and plain HTTP (long-polling) when the browser has none or a WebSocket cannot
     * be opened (a proxy that blocks it)
     */
    signalMethod?: "websocket" | "http" | undefined;
    /**
     * "relay" sends media and the data channel only
     * through the TURN servers the server hands out (hides the users' addresses from each other;
     * needs TURN); default "all"
     */
    iceTransportPolicy?: "relay" | "all" | undefined;
    /**
     * cancels the join while it is under way: `joinRoom` rejects
     * with an `AbortError` and nothing is left on the server (no effect once it has resolved:
     * `room.leave()` then)
     */
    signal?: AbortSignal | undefined;
    /**
     * a message a peer has not acknowledged this long after
     * `sendMessage` rejects with PeerUnreachableError (with every later one still unacknowledged
     * to that peer, which stays in the room); default 60000
     */
    deliveryTimeoutMs?: number | undefined;
    /**
     * end-to-end encryption with a room key the app gives every
     * participant (never through BlueCam): relayed messages, signaling and the data channel are
     * sealed per pair of peers; a peer with another key (or none) is reported (`e2ee_mismatch`)
     * and nothing passes between the two. See docs/security.md
     */
    e2ee?: E2eeOptions | undefined;
};
export type E2eeOptions = {
    /**
     * the room key, the same for every participant: at least 22
     * characters, and at least 128 random bits (for example 32 random bytes in base64url). The
     * demo puts it in the invite link's fragment (`#k=…`), which browsers never send to a server
     */
    key: string;
};
/**
 * This peer's media. A token whose `permissions.publishMedia` is false opens no camera or
 * microphone whatever these say; one whose `subscribeMedia` is false receives no media.
 */
export type MediaOptions = {
    /**
     * default true
     */
    video?: boolean | MediaTrackConstraints | undefined;
    /**
     * default true
     */
    audio?: boolean | MediaTrackConstraints | undefined;
    /**
     * the app's own stream to send instead of opening the
     * camera and microphone (the app keeps it: leaving does not stop its tracks)
     */
    localStream?: MediaStream | undefined;
};
/**
 * Page elements the SDK fills in (optional: `onStream` hands over the streams instead).
 */
export type ElementOptions = {
    /**
     * element, selector, or element id
     */
    localVideo?: string | HTMLVideoElement | undefined;
    /**
     * container: one <video data-peer=ID> per peer
     */
    remoteVideos?: string | HTMLElement | undefined;
    /**
     * classic one-to-one: the first remote peer
     */
    remoteVideo?: string | HTMLVideoElement | undefined;
    /**
     * classic: toggles the microphone
     */
    muteAudioBtn?: string | HTMLElement | undefined;
    /**
     * classic: toggles the camera
     */
    muteVideoBtn?: string | HTMLElement | undefined;
    /**
     * classic: the first click starts the call's media
     * (camera and microphone), the next hangs up; messages flow throughout. `aria-pressed` shows it
     */
    callBtn?: string | HTMLElement | undefined;
};
/**
 * Handlers of the room's events, registered at the join (the same as `room.on(…)`; none runs
 * before `joinRoom` has resolved). `roomNotFoundCallback` is called when the room does not
 * exist at the join or is deleted during the call.
 */
export type CallbackOptions = {
    onMessage?: ((type: string, data: any, from: Peer, meta: {
        path: Path;
    }) => void) | undefined;
    roomNotFoundCallback?: (() => void) | undefined;
    onPeerJoined?: ((peer: Peer) => void) | undefined;
    onPeerLeft?: ((peer: Peer, reason: import("./events.js").LeaveReason) => void) | undefined;
    onStream?: ((peer: Peer, stream: MediaStream) => void) | undefined;
    onPathChange?: ((peer: Peer, path: Path) => void) | undefined;
    onMediaChange?: ((peer: Peer, state: {
        audio: boolean;
        video: boolean;
    }) => void) | undefined;
    onError?: ((error: import("./errors.js").BlueCamError | Error) => void) | undefined;
    onConnectionChange?: ((state: ConnectionState) => void) | undefined;
    /**
     * a peer left while
     * some of its messages to us were incomplete: message `expected` never arrived, and `held`
     * later messages and `partial` chunked ones are dropped with it
     */
    onGap?: ((peer: Peer, gap: import("./events.js").Gap) => void) | undefined;
};
/**
 * Options of the classic script that mean nothing now (one console warning).
 */
export type ClassicOptions = {
    /**
     * ignored
     */
    pubnubSubscribeKey?: string | undefined;
    /**
     * ignored
     */
    pubnubPublishKey?: string | undefined;
};
export type JoinOptions = TokenOptions & ConnectionOptions & MediaOptions & ElementOptions & CallbackOptions & ClassicOptions;
/**
 * The options as the SDK's parts read them (every key optional).
 */
export type AnyOptions = Partial<{
    token: string;
    roomName: string;
    userId: string;
    getToken: (classic: any) => Promise<string>;
}> & ConnectionOptions & MediaOptions & ElementOptions & CallbackOptions & ClassicOptions;
export type Remote = import("./scheduler.js").Remote;
import { BlueCamError } from "./errors.js";
import { ConnectionError } from "./errors.js";
import { E2eeMismatchError } from "./errors.js";
import { ForbiddenError } from "./errors.js";
import { MessageTooLargeError } from "./errors.js";
import { PeerUnreachableError } from "./errors.js";
import { RoomFullError } from "./errors.js";
import { RoomNotFoundError } from "./errors.js";
import { UnauthorizedError } from "./errors.js";
import { UnserializableError } from "./errors.js";
import { Emitter } from "./events.js";
import { LocalMedia } from "./media.js";
import { RoomCrypto } from "./e2ee.js";
import { Signaling } from "./signaling.js";
import { Scheduler } from "./scheduler.js";
import { Peers } from "./peers.js";
export { BlueCamError, ConnectionError, E2eeMismatchError, ForbiddenError, MessageTooLargeError, PeerUnreachableError, RoomFullError, RoomNotFoundError, UnauthorizedError, UnserializableError };
export { CLOSE, CLOSE_CODES } from "./close-codes.js";
