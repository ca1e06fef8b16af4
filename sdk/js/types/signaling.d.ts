/**
 * @typedef {{op: string, [key: string]: any}} Frame
 * @typedef {object} SignalingHandlers
 * @property {(frame: Frame) => void} onFrame every frame after `joined`
 * @property {(joined: Frame) => void} onResumed a resume succeeded (same peer id)
 * @property {(connected: boolean) => void} onConnectionChange
 * @property {(error: Error, closeCode: number) => void} onFatal the session is over
 */
export class Signaling {
    /**
     * @param {string} url ws(s)://host/v1/ws
     * @param {string} token
     * @param {SignalingHandlers} handlers
     */
    constructor(url: string, token: string, handlers: SignalingHandlers);
    url: string;
    token: string;
    handlers: SignalingHandlers;
    /** @type {WebSocket | null} */
    ws: WebSocket | null;
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
     * @returns {Promise<Frame>}
     */
    join(): Promise<Frame>;
    /**
     * @param {(joined: Frame) => void} onJoined
     * @param {(error: Error) => void} onFailed
     */
    open(onJoined: (joined: Frame) => void, onFailed: (error: Error) => void): void;
    scheduleReconnect(): void;
    /**
     * @param {boolean} up
     */
    setConnected(up: boolean): void;
    /**
     * Sends a frame if the socket is joined; false otherwise (the caller retries later).
     * @param {Frame} frame
     */
    send(frame: Frame): boolean;
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
export type Frame = {
    op: string;
    [key: string]: any;
};
export type SignalingHandlers = {
    /**
     * every frame after `joined`
     */
    onFrame: (frame: Frame) => void;
    /**
     * a resume succeeded (same peer id)
     */
    onResumed: (joined: Frame) => void;
    onConnectionChange: (connected: boolean) => void;
    /**
     * the session is over
     */
    onFatal: (error: Error, closeCode: number) => void;
};
