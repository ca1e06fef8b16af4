/**
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError or ConnectionError.
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
 * Joins a room. Rejects with RoomNotFoundError (after calling roomNotFoundCallback),
 * UnauthorizedError, ForbiddenError, RoomFullError or ConnectionError.
 * @param {JoinOptions} options
 * @returns {Promise<Room>}
 */
export function JoinRoom(options: JoinOptions): Promise<Room>;
/**
 * @typedef {import("./scheduler.js").Remote} Remote
 */
export class Room {
    /** @param {JoinOptions} options */
    constructor(options: JoinOptions);
    options: JoinOptions;
    /** @type {Peer} */
    self: Peer;
    /** @type {RTCIceServer[]} */
    iceServers: RTCIceServer[];
    /** This peer's camera, microphone and screen, and the page's videos (media.js). */
    media: LocalMedia;
    left: boolean;
    /** Whether this peer's token allows sending data (`permissions.sendData`, default true). */
    canSendData: boolean;
    /** @type {ConnectionState} */
    state: ConnectionState;
    /** Leaves when the page goes away (a closed tab, a navigation): the others see it at once,
     * rather than after the resume window. Not on `visibilitychange`: a hidden tab stays. */
    onPageHide: () => void;
    /** The browser is online again (often on another network): every peer connection
     * restarts ICE, so the call finds its new path at once. */
    onOnline: () => void;
    signaling: Signaling;
    /** The send loop (scheduler.js). */
    scheduler: Scheduler;
    /** The room's peers and their connections (peers.js). */
    roster: Peers;
    /** How this peer reaches the server now: "websocket" or "http" (null before the join). */
    get transport(): import("./signaling.js").SignalMethod | null;
    start(): Promise<void>;
    /** The link to the server now. */
    get connectionState(): ConnectionState;
    /** @param {ConnectionState} state */
    setState(state: ConnectionState): void;
    /** The peers in the room now (without yourself). */
    get peers(): import("./frames.js").Peer[];
    /**
     * The path messages to this peer take now.
     * @param {string} peerId
     * @returns {Path}
     */
    path(peerId: string): Path;
    /**
     * Sends `data` (a string or any JSON value) to everyone, or to `opts.to`. Resolves when
     * every addressed peer has acknowledged it; rejects with PeerUnreachableError naming those
     * that could not be reached, or MessageTooLargeError (before anything is sent).
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
    /** @param {boolean} on */
    setVideoEnabled(on: boolean): void;
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
    /** The peers' state (internal: for the end-to-end tests' diagnostics). */
    get remotes(): Map<string, import("./scheduler.js").Remote>;
    /** The camera and microphone stream, if open (internal). */
    get local(): MediaStream | null;
    /** Whether the microphone is on (internal; `setAudioEnabled` changes it). */
    get audioEnabled(): boolean;
    /** Whether the camera is on (internal; `setVideoEnabled` changes it). */
    get videoEnabled(): boolean;
    /** The screen's track while it is shared (internal). */
    get screenTrack(): MediaStreamTrack | null;
    /** Hooks for the end-to-end tests: simulate network faults. */
    get _test(): {
        dropSocket: () => void;
        /** @param {number} ms keep the WebSocket down this long */
        cutSocket: (ms: number) => void;
        /** @param {string} peerId */
        closeChannel: (peerId: string) => void | undefined;
        /** @param {string} peerId */
        outboxSize: (peerId: string) => number;
    };
    /** @param {Error} error */
    emitError(error: Error): void;
    /**
     * @param {import("./frames.js").ServerFrame} f
     */
    onFrame(f: import("./frames.js").ServerFrame): void;
    /**
     * The WebSocket came back with the same peer id: reconcile the peer list.
     * @param {import("./frames.js").JoinedFrame} joined
     */
    onResumed(joined: import("./frames.js").JoinedFrame): void;
    /**
     * @param {Error} error
     * @param {number} code
     */
    onFatal(error: Error, code: number): void;
    /** @param {Error} error */
    shutdown(error: Error): void;
    wireClassicButtons(): void;
}
export type Peer = import("./frames.js").Peer;
export type Path = "p2p" | "relay";
/**
 * the link to the server: `reconnecting` while it is away (a network cut, a restart; the call
 * and the peer-to-peer links go on, messages that need the relay wait), `disconnected` once
 * the room has ended or was left
 */
export type ConnectionState = "connecting" | "connected" | "reconnecting" | "disconnected";
export type JoinOptions = {
    /**
     * from the app's backend (or, classic, `roomName` + `userId` and a
     * `getToken` that fetches it)
     */
    token?: string | undefined;
    /**
     * a
     * token for the same room and identity: used when the connection resumes (the first token may
     * have expired by then), and, with `roomName` + `userId` and no `token`, for the first join
     */
    getToken?: ((classic?: {
        roomName: string;
        userId: string;
    }) => Promise<string>) | undefined;
    /**
     * classic: the room, for `getToken`
     */
    roomName?: string | undefined;
    /**
     * classic: the user, for `getToken`
     */
    userId?: string | undefined;
    /**
     * classic, ignored (one console warning)
     */
    pubnubSubscribeKey?: string | undefined;
    /**
     * classic, ignored
     */
    pubnubPublishKey?: string | undefined;
    /**
     * the BlueCam server, or nodes of one cluster in order
     * of preference (the SDK uses the first and moves to the next when one cannot be reached or
     * drains; shuffle the list per user to spread them); defaults to the SDK's own origin
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
     * default true
     */
    video?: boolean | MediaTrackConstraints | undefined;
    /**
     * default true
     */
    audio?: boolean | MediaTrackConstraints | undefined;
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
    onMessage?: ((type: string, data: any, from: Peer, meta: {
        path: Path;
    }) => void) | undefined;
    roomNotFoundCallback?: (() => void) | undefined;
    onPeerJoined?: ((peer: Peer) => void) | undefined;
    onPeerLeft?: ((peer: Peer) => void) | undefined;
    onStream?: ((peer: Peer, stream: MediaStream) => void) | undefined;
    onPathChange?: ((peer: Peer, path: Path) => void) | undefined;
    onMediaChange?: ((peer: Peer, state: {
        audio: boolean;
        video: boolean;
    }) => void) | undefined;
    onError?: ((error: Error) => void) | undefined;
    onConnectionChange?: ((state: ConnectionState) => void) | undefined;
    /**
     * a message a peer has not acknowledged this long after
     * `sendMessage` rejects with PeerUnreachableError (with every later one still unacknowledged
     * to that peer, which stays in the room); default 60000
     */
    deliveryTimeoutMs?: number | undefined;
    /**
     * a peer left while some of its messages to us were incomplete: message `expected` never
     * arrived, and `held` later messages and `partial` chunked ones are dropped with it
     */
    onGap?: ((peer: Peer, gap: {
        expected: number;
        held: number;
        partial: number;
    }) => void) | undefined;
};
export type Remote = import("./scheduler.js").Remote;
import { BlueCamError } from "./errors.js";
import { ConnectionError } from "./errors.js";
import { ForbiddenError } from "./errors.js";
import { MessageTooLargeError } from "./errors.js";
import { PeerUnreachableError } from "./errors.js";
import { RoomFullError } from "./errors.js";
import { RoomNotFoundError } from "./errors.js";
import { UnauthorizedError } from "./errors.js";
import { LocalMedia } from "./media.js";
import { Signaling } from "./signaling.js";
import { Scheduler } from "./scheduler.js";
import { Peers } from "./peers.js";
export { BlueCamError, ConnectionError, ForbiddenError, MessageTooLargeError, PeerUnreachableError, RoomFullError, RoomNotFoundError, UnauthorizedError };
