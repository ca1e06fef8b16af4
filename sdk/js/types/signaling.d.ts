/**
 * A token's claims (the JWT's middle part; no secret is needed to read them), or null when
 * they cannot be read (the server decides about the token anyway).
 * @param {string} token
 * @returns {{exp?: number, room?: string, permissions?: {sendData?: boolean, publishMedia?: boolean, subscribeMedia?: boolean}} | null}
 */
export function tokenClaims(token: string): {
    exp?: number;
    room?: string;
    permissions?: {
        sendData?: boolean;
        publishMedia?: boolean;
        subscribeMedia?: boolean;
    };
} | null;
/**
 * Whether a token has expired, or will within TOKEN_MARGIN_MS (also when its expiry cannot be
 * read: a fresh one is asked for then, to be safe).
 * @param {string} token
 * @param {number} [now]
 */
export function tokenExpiring(token: string, now?: number): boolean;
/**
 * What a close of the connection means: `final`, the session is over (the server said so);
 * `nextNode`, the next attempt goes to the next node (this one is going away or unresponsive).
 * An unknown code (1006, an abrupt loss) is resumable on the same node.
 * @param {number} code
 * @param {{joined: boolean, canRefreshToken: boolean}} state `joined`: this connection had
 *   joined; `canRefreshToken`: a fresh token can be had (getToken)
 * @returns {{final: boolean, nextNode: boolean}}
 */
export function closeDecision(code: number, { joined, canRefreshToken }: {
    joined: boolean;
    canRefreshToken: boolean;
}): {
    final: boolean;
    nextNode: boolean;
};
/**
 * @typedef {import("./frames.js").ServerFrame} ServerFrame
 * @typedef {import("./frames.js").ClientFrame} ClientFrame
 * @typedef {import("./frames.js").JoinedFrame} JoinedFrame
 * @typedef {"websocket" | "http"} SignalMethod
 * @typedef {object} SignalingHandlers
 * @property {(frame: ServerFrame) => void} onFrame every frame after `joined`
 * @property {(joined: JoinedFrame) => void} onResumed a resume succeeded (same peer id)
 * @property {(connected: boolean) => void} onConnectionChange
 * @property {() => void} onWritable the rate limit has room again after a refused send
 * @property {(error: Error, closeCode: number) => void} onFatal the session is over
 */
export class Signaling {
    /**
     * @param {string[]} urls ws(s)://host/v1/ws of each node (one on a single server)
     * @param {string} token
     * @param {SignalingHandlers} handlers
     * @param {(() => Promise<string>) | undefined} getToken a fresh token for resumes (the first
     *   one may have expired by the time the network drops)
     * @param {SignalMethod | undefined} method only this transport; by default a WebSocket, and
     *   HTTP when the browser has none or one cannot be opened
     */
    constructor(urls: string[], token: string, handlers: SignalingHandlers, getToken: (() => Promise<string>) | undefined, method: SignalMethod | undefined);
    urls: string[];
    /** The node in use: the first one given, then the next whenever one fails or drains. */
    urlIndex: number;
    /** Nodes tried in a row without getting joined (the first join tries each once). */
    misses: number;
    token: string;
    handlers: SignalingHandlers;
    getToken: (() => Promise<string>) | undefined;
    /** The server refused the token on a resume: the next attempt needs a fresh one. */
    tokenRefused: boolean;
    /** @type {ClientFrame[]} frames to send once the socket is back (bounded) */
    queued: ClientFrame[];
    /** What each queued sealed signal holds (sendOrQueue). @type {WeakMap<ClientFrame, {gen?: unknown, media?: unknown}>} */
    about: WeakMap<ClientFrame, {
        gen?: unknown;
        media?: unknown;
    }>;
    ratePerMs: number;
    burst: number;
    tokens: number;
    refilledAt: number;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    writableTimer: ReturnType<typeof setTimeout> | undefined;
    /** @type {WebSocket | HttpSocket | null} */
    ws: WebSocket | HttpSocket | null;
    method: SignalMethod | undefined;
    /** A WebSocket could not be opened and HTTP could: this room stays on HTTP. */
    wsBlocked: boolean;
    /** @type {SignalMethod | null} the transport of the last connection that joined */
    transport: SignalMethod | null;
    /** @type {{session: string, secret: string} | null} */
    resume: {
        session: string;
        secret: string;
    } | null;
    connected: boolean;
    closedForGood: boolean;
    attempt: number;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    retryTimer: ReturnType<typeof setTimeout> | undefined;
    /** No reconnection before this time (tests simulate a network cut with it). */
    blockedUntil: number;
    /**
     * Opens the socket and joins; resolves with the `joined` frame, rejects with a typed error.
     * @returns {Promise<JoinedFrame>}
     */
    join(): Promise<JoinedFrame>;
    /** The node in use. */
    get url(): string;
    /** Moves to the next node (a no-op with one). */
    nextUrl(): void;
    /** Whether the next connection goes over HTTP. */
    httpFirst(): boolean;
    /**
     * @param {(joined: JoinedFrame) => void} onJoined
     * @param {(error: Error) => void} onFailed
     * @param {boolean} [viaHttp] this attempt's transport
     * @param {boolean} [fellBack] a WebSocket failed to open just before
     */
    open(onJoined: (joined: JoinedFrame) => void, onFailed: (error: Error) => void, viaHttp?: boolean, fellBack?: boolean): void;
    /**
     * The session is over.
     * @param {Error} error
     * @param {number} code
     */
    fail(error: Error, code: number): void;
    scheduleReconnect(): void;
    /**
     * @param {boolean} up
     */
    setConnected(up: boolean): void;
    /**
     * Sends a frame if the socket is joined; false otherwise (the caller retries later).
     * @param {ClientFrame} frame
     */
    send(frame: ClientFrame): boolean;
    /**
     * Sends a frame whose share of the rate limit `takeToken` took already (a sealed one, made
     * meanwhile); a signal goes behind signals queued for the resume (sealed signals count up:
     * they must arrive in the order they were sealed). False when the socket is down.
     * @param {ClientFrame} frame
     */
    sendTaken(frame: ClientFrame): boolean;
    /** Takes one frame's worth of the rate limit, or schedules `onWritable` for when it refills. */
    takeToken(): boolean;
    /**
     * Sends now, or once the socket is back (for frames that must not be lost, like signaling).
     * Nothing is dropped for want of room. What waits is bounded by what is still current: a
     * signal of a newer peer connection (`data.gen`) to a peer supersedes the waiting ones of an
     * older connection to it (the peer would ignore those: it starts over on the newer offer),
     * and a media state supersedes the one before it. A sealed signal (end-to-end encryption)
     * says what it carries in `about` (its `gen` and whether it is a media state), which the
     * server never sees.
     * @param {ClientFrame} frame
     * @param {{gen?: unknown, media?: unknown}} [about] what a sealed signal's data holds
     */
    sendOrQueue(frame: ClientFrame, about?: {
        gen?: unknown;
        media?: unknown;
    }): void;
    /** Sends what waited for the socket; call after a resume. */
    flushQueued(): void;
    /** Stops the rate-limit timer (leave). */
    stopTimers(): void;
    /** Drops the socket without leaving (tests use it to simulate a network cut). */
    drop(): void;
    /**
     * Drops the socket and keeps it down for `ms` (a simulated network cut).
     * @param {number} ms
     */
    cut(ms: number): void;
    /** Leaves the room for good. */
    leave(): void;
}
export type ServerFrame = import("./frames.js").ServerFrame;
export type ClientFrame = import("./frames.js").ClientFrame;
export type JoinedFrame = import("./frames.js").JoinedFrame;
export type SignalMethod = "websocket" | "http";
export type SignalingHandlers = {
    /**
     * every frame after `joined`
     */
    onFrame: (frame: ServerFrame) => void;
    /**
     * a resume succeeded (same peer id)
     */
    onResumed: (joined: JoinedFrame) => void;
    onConnectionChange: (connected: boolean) => void;
    /**
     * the rate limit has room again after a refused send
     */
    onWritable: () => void;
    /**
     * the session is over
     */
    onFatal: (error: Error, closeCode: number) => void;
};
import { HttpSocket } from "./http.js";
