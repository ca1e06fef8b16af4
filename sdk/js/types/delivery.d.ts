/**
 * A new epoch: larger than every earlier one of this page, and (being milliseconds × 1000)
 * than those of a page loaded before it.
 * @returns {number}
 */
export function newEpoch(): number;
/**
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function toBase64(bytes: Uint8Array): string;
/**
 * @param {string} text base64
 * @returns {Uint8Array}
 */
export function fromBase64(text: string): Uint8Array;
/**
 * A message's data as received, with the binary values (`{"\u0000b": base64}`) back as
 * `Uint8Array`s. Changes `data` in place. Data it cannot walk (nested deeper than the stack, a
 * hostile sender) is handed over as it came.
 * @param {unknown} data
 * @returns {unknown}
 */
export function reviveBytes(data: unknown): unknown;
/**
 * Checks and encodes a message's data; throws a RangeError above MAX_MESSAGE_BYTES (binary
 * data counts as its base64), a TypeError for data JSON cannot hold (a cycle, a `BigInt`).
 * @param {unknown} data
 * @returns {{json: string, bytes: number}}
 */
export function encodeData(data: unknown): {
    json: string;
    bytes: number;
};
/**
 * The envelopes of one message.
 * @param {number} seq
 * @param {string} type
 * @param {string} json the JSON text of the data
 * @param {{epoch: number, base: number}} [from] the sending Outbox's epoch and lowest
 *   unacknowledged sequence (absent: an envelope of the first protocol, without them)
 * @returns {Envelope[]}
 */
export function envelopesOf(seq: number, type: string, json: string, from?: {
    epoch: number;
    base: number;
}): Envelope[];
/**
 * Whether a value is a well-formed envelope.
 * @param {unknown} x
 * @returns {x is Envelope}
 */
export function isEnvelope(x: unknown): x is Envelope;
/**
 * The delivery layer of BlueCam (docs/protocol.md §15), pure: no sockets, no timers, no DOM.
 *
 * Every app message to one peer gets a sequence number in the (sender, recipient) space. The
 * same envelopes travel over the data channel and, inside `send.msg`, over the relay; the
 * recipient delivers in order, drops duplicates and acknowledges cumulatively over whichever
 * path works; the sender keeps a message until it is acknowledged and resends it when a path
 * fails. Envelopes (documented in docs/protocol.md, "App envelopes"):
 *   {v:1, k:"m", s, t, d, e, b}        a whole message: sequence s, type t, data d
 *   {v:1, k:"c", s, t, i, n, p, e, b}  chunk i of n of message s; p is a slice of the JSON of d
 *   {v:1, k:"a", a, e}                 cumulative ack: every message up to a has been delivered
 * `e` is the epoch of the sender's sequence space: a new one whenever the sender starts a new
 * Outbox for that recipient (it saw the recipient leave and come back with the same peer id, or
 * reloaded), so that new sequence numbers never collide with old ones; acks name the epoch they
 * acknowledge. `b` is the sender's lowest unacknowledged sequence: everything below it was
 * delivered to the recipient (perhaps to an earlier Inbox of its own), so a fresh Inbox starts
 * there instead of waiting forever for messages that will never be sent again.
 */
/** Largest message accepted by sendMessage: UTF-8 bytes of JSON.stringify(data). */
export const MAX_MESSAGE_BYTES: number;
/** Messages whose JSON is longer than this travel as chunks (below every SCTP limit). */
export const CHUNK_CHARS: number;
/** Envelope format version. */
export const VERSION: 1;
/** Most chunks a message can have (1 MiB of JSON in CHUNK_CHARS pieces, rounded up). */
export const MAX_CHUNKS: number;
/** Sequence numbers further ahead than this are refused (the sender's outbox is smaller). */
export const MAX_AHEAD: 4096;
/**
 * @typedef {{v: number, k: "m", s: number, t: string, d: unknown, e?: number, b?: number}} WholeEnvelope
 * @typedef {{v: number, k: "c", s: number, t: string, i: number, n: number, p: string, e?: number, b?: number}} ChunkEnvelope
 * @typedef {{v: number, k: "a", a: number, e?: number}} AckEnvelope
 * @typedef {WholeEnvelope | ChunkEnvelope | AckEnvelope} Envelope
 */
/**
 * The key of binary data in a message's JSON: `{"\u0000b": "<base64>"}` stands for the bytes
 * (the receiver hands over a `Uint8Array`). No app key starts with a NUL character.
 */
export const BYTES_KEY: "\0b";
/**
 * @typedef {object} Pending
 * @property {number} seq
 * @property {string} type
 * @property {string} json
 * @property {number} bytes
 * @property {"none" | "p2p" | "relay"} via  the path of the last transmission
 * @property {number} sentAt time of the last transmission (ms), 0 before the first (or when
 *   the last attempt could not go out)
 * @property {number} tries retransmissions so far (for the back-off)
 * @property {number} addedAt when sendMessage handed it over (ms), for the delivery bound
 * @property {(value: void) => void} resolve
 * @property {(reason: Error) => void} reject
 */
/** Unacknowledged messages to one peer, in sequence order. */
export class Outbox {
    /** This sequence space's epoch (see the module doc). */
    epoch: number;
    nextSeq: number;
    /** @type {Pending[]} */
    pending: Pending[];
    bytes: number;
    /**
     * Adds a message; the promise settles when it is acknowledged or the peer is gone.
     * @param {string} type
     * @param {string} json
     * @param {number} bytes
     * @param {number} [now] the time (ms), for the delivery bound
     * @returns {{entry: Pending, done: Promise<void>}}
     */
    add(type: string, json: string, bytes: number, now?: number): {
        entry: Pending;
        done: Promise<void>;
    };
    /** The lowest unacknowledged sequence: every message below it was acknowledged. */
    get base(): number;
    /**
     * A cumulative ack: settles every message up to `upTo`. Returns how many. An ack of another
     * epoch (an earlier Outbox of ours for this peer) acknowledges nothing here.
     * @param {number} upTo
     * @param {number} [epoch] absent: a peer of the first protocol
     */
    ack(upTo: number, epoch?: number): number;
    /**
     * The peer cannot be reached any more: reject everything.
     * @param {Error} error
     */
    fail(error: Error): void;
}
/** What one sender has delivered to us, and what waits for a gap to fill. */
export class Inbox {
    /** The sender's epoch being received (null until the first envelope). */
    /** @type {number | null} */
    epoch: number | null;
    /** Every message below this has been delivered. */
    expected: number;
    /** @type {Map<number, {type: string, data: unknown}>} */
    held: Map<number, {
        type: string;
        data: unknown;
    }>;
    /** @type {Map<number, {type: string, parts: (string | undefined)[], have: number}>} */
    chunks: Map<number, {
        type: string;
        parts: (string | undefined)[];
        have: number;
    }>;
    /** The cumulative ack to send back. */
    get ackValue(): number;
    /**
     * The ack envelope to send back: the cumulative ack, naming the epoch it acknowledges.
     * @returns {AckEnvelope}
     */
    ack(): AckEnvelope;
    /**
     * Takes one message or chunk envelope; returns the messages now deliverable, in order (an
     * envelope that moves the sender's base on may free held ones even if it is a duplicate).
     * Duplicates and chunks of delivered messages are dropped.
     * @param {WholeEnvelope | ChunkEnvelope} env
     * @returns {{type: string, data: unknown, seq: number}[]}
     */
    receive(env: WholeEnvelope | ChunkEnvelope): {
        type: string;
        data: unknown;
        seq: number;
    }[];
    /**
     * Keeps a message or chunk envelope for delivery (a whole message once its chunks are all
     * in); drops duplicates, chunks of delivered messages and what is too far ahead.
     * @param {WholeEnvelope | ChunkEnvelope} env
     */
    store(env: WholeEnvelope | ChunkEnvelope): void;
}
export type WholeEnvelope = {
    v: number;
    k: "m";
    s: number;
    t: string;
    d: unknown;
    e?: number;
    b?: number;
};
export type ChunkEnvelope = {
    v: number;
    k: "c";
    s: number;
    t: string;
    i: number;
    n: number;
    p: string;
    e?: number;
    b?: number;
};
export type AckEnvelope = {
    v: number;
    k: "a";
    a: number;
    e?: number;
};
export type Envelope = WholeEnvelope | ChunkEnvelope | AckEnvelope;
export type Pending = {
    seq: number;
    type: string;
    json: string;
    bytes: number;
    /**
     * the path of the last transmission
     */
    via: "none" | "p2p" | "relay";
    /**
     * time of the last transmission (ms), 0 before the first (or when
     * the last attempt could not go out)
     */
    sentAt: number;
    /**
     * retransmissions so far (for the back-off)
     */
    tries: number;
    /**
     * when sendMessage handed it over (ms), for the delivery bound
     */
    addedAt: number;
    resolve: (value: void) => void;
    reject: (reason: Error) => void;
};
