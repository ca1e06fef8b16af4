export class HttpSocket {
    /** @param {string} url the transport's base, http(s)://host/v1/http */
    constructor(url: string);
    url: string;
    readyState: number;
    /** @type {((ev: unknown) => void) | null} */
    onopen: ((ev: unknown) => void) | null;
    /** @type {((ev: {data: unknown}) => void) | null} */
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    /** @type {((ev: {code: number, reason: string, wasClean: boolean}) => void) | null} */
    onclose: ((ev: {
        code: number;
        reason: string;
        wasClean: boolean;
    }) => void) | null;
    /** @type {string | null} the session, once open */
    sid: string | null;
    /** The number of the last frame received. */
    ack: number;
    /** @type {{n: number, text: string}[]} frames not yet taken by the server */
    outbox: {
        n: number;
        text: string;
    }[];
    nextSeq: number;
    /** Bytes of frames per send request (see SEND_BATCH_BYTES). */
    batchBytes: number;
    /** The server ended the connection: its close comes with the next poll; nothing more to send. */
    serverEnded: boolean;
    sending: boolean;
    /** The client closed (the server is told by `sendClose`). */
    closing: boolean;
    ended: boolean;
    abort: AbortController;
    /**
     * Queues a frame (in order, exactly once, whatever the network does meanwhile).
     * @param {string} text one frame's JSON (no raw line breaks: JSON.stringify writes none)
     */
    send(text: string): void;
    /**
     * Closes: the server learns it after the frames sent before (a `leave` arrives first).
     * @param {number} [code]
     * @param {string} [reason]
     */
    close(code?: number, reason?: string): void;
    /**
     * Tells the server the client closed, after every frame not yet taken (a `leave` first):
     * one request of its own, beside any under way (frames are numbered: the server takes each
     * once), with `keepalive` so that it still goes out when the page is unloading.
     */
    sendClose(): void;
    /**
     * The transport is over: once.
     * @param {number} code
     * @param {string} reason
     * @param {boolean} clean
     */
    end(code: number, reason: string, clean: boolean): void;
    /**
     * One POST; its JSON answer. Throws `Final` for answers retrying cannot change.
     * @param {string} path
     * @param {string} body
     * @param {number} timeoutMs
     * @param {AbortSignal | null} signal
     */
    post(path: string, body: string, timeoutMs: number, signal: AbortSignal | null): Promise<any>;
    /**
     * `post`, retried with back-off until it succeeds, fails for good, or has failed for
     * LOST_AFTER_MS in a row.
     * @param {string} path
     * @param {() => string} body built again for each try
     * @param {number} timeoutMs
     * @param {AbortSignal | null} signal
     */
    postRetrying(path: string, body: () => string, timeoutMs: number, signal: AbortSignal | null): Promise<any>;
    /** Sends what is queued, one request at a time. */
    pump(): Promise<void>;
    /** Polls until the transport ends. */
    pollLoop(): Promise<void>;
    /**
     * Delivers the frames of an answer that are new, in order, then its close.
     * @param {{first: number, frames: unknown[], close?: {code: number, reason: string}}} v
     */
    receive(v: {
        first: number;
        frames: unknown[];
        close?: {
            code: number;
            reason: string;
        };
    }): void;
}
