/** Whether this page can encrypt (WebCrypto exists only in secure contexts: https, localhost). */
export function e2eeSupported(): boolean;
/**
 * @typedef {"relay" | "signal" | "channel"} RecordKind
 * @typedef {{v: number, pub: string, r: string, t: number, mac: string}} Hello
 */
/**
 * A sealed record's shape, `{x: "<base64>"}`.
 * @param {unknown} value
 * @returns {value is {x: string}}
 */
export function isSealed(value: unknown): value is {
    x: string;
};
/**
 * A hello's shape (its MAC is checked by the pair).
 * @param {unknown} value
 * @returns {value is Hello}
 */
export function isHello(value: unknown): value is Hello;
/** Shortest room key accepted: 22 characters carry 128 bits when they are random base64url. */
export const MIN_KEY_CHARS: 22;
/** Version of the exchange and of the records (in every MAC and associated data). */
export const E2EE_VERSION: 1;
/** Bytes of a record beyond its plaintext: the IV and the GCM tag (before base64). */
export const RECORD_OVERHEAD_BYTES: number;
/** A key that fails the pair's MAC, or a peer that does not encrypt when this side does (or the
 * other way round). */
export class MismatchError extends Error {
}
/** The room's side of the encryption: its keys and one {@link Pair} per peer. */
export class RoomCrypto {
    /**
     * @param {unknown} key the room key the app gave
     * @throws {TypeError} a key that is not a string of at least MIN_KEY_CHARS characters
     */
    constructor(key: unknown);
    key: string;
    /** @type {Map<string, Pair>} */
    pairs: Map<string, Pair>;
    /** Records dropped: failed authentication, came unsealed, or a replayed signal or hello. */
    rejected: number;
    /** The counter of the signals this session seals, for all peers (each sees it count up). */
    signalsOut: number;
    /** The last counter opened from each public key of a peer (kept for this session's life:
     * a signal of a key seen before, replayed after a new exchange, still does not count up).
     * @type {Map<string, number>} */
    signalsIn: Map<string, number>;
    /** Records sealed and opened. */
    sealed: number;
    opened: number;
    room: string;
    self: string;
    pub: string;
    /** @type {CryptoKeyPair | null} */
    ecdh: CryptoKeyPair | null;
    /** @type {CryptoKey | null} */
    macKey: CryptoKey | null;
    /** @type {Uint8Array} */
    pairSalt: Uint8Array;
    /** This session's key pair, made at once (the join need not wait for it). */
    keyPair: Promise<void>;
    /** When this session began (ms): its hellos say so, and a peer takes a new key of a peer
     * id only from a hello of a later session than the key it holds (an earlier session's
     * hello, held back and replayed, cannot take over). */
    since: number;
    /** @type {() => void} */
    resolveBound: () => void;
    /** Resolves once `bind` has the room's keys (the key exchange waits for it). */
    bound: Promise<any>;
    makeKeyPair(): Promise<void>;
    /**
     * Binds the keys to the room and this peer's id (once joined).
     * @param {string} room
     * @param {string} self
     */
    bind(room: string, self: string): Promise<void>;
    /**
     * The pair with peer `id` (kept while this room lives: a peer reported gone and back with
     * the same session keeps its keys).
     * @param {string} id
     */
    pair(id: string): Pair;
    /**
     * Starts the pair with peer `id` over (it is back: perhaps with the right key, perhaps as a
     * new session). Its earlier sessions' keys stay refused.
     * @param {string} id
     */
    renew(id: string): Pair;
    /**
     * The pair with a peer that has just come into the room, or back: a fresh exchange (the same
     * session re-derives the same keys and goes on counting; a new session with the same id gets
     * new ones), its earlier sessions' keys still refused.
     * @param {string} id
     */
    fresh(id: string): Pair;
    /**
     * The text a hello's MAC covers.
     * @param {string} from
     * @param {string} to
     * @param {string} pub the sender's public key
     * @param {string} r the recipient's public key as the sender holds it ("" if none)
     * @param {number} since when the sender's session began (ms)
     */
    helloText(from: string, to: string, pub: string, r: string, since: number): Uint8Array<ArrayBuffer>;
    /**
     * The associated data of a record.
     * @param {RecordKind} kind
     * @param {string} from
     * @param {string} to
     */
    aad(kind: RecordKind, from: string, to: string): Uint8Array<ArrayBuffer>;
}
/**
 * One peer's keys and the order of what is sealed for it and opened from it: both run one
 * after the other (WebCrypto is asynchronous; a record must not overtake the one before it).
 * Hellos have a queue of their own: a record that came before the hello it needs waits for the
 * keys without holding the hello up.
 */
export class Pair {
    /**
     * @param {RoomCrypto} room
     * @param {string} id the peer's id
     */
    constructor(room: RoomCrypto, id: string);
    room: RoomCrypto;
    id: string;
    /** @type {"waiting" | "ready" | "mismatch"} */
    state: "waiting" | "ready" | "mismatch";
    /** The peer's public key, once its hello came. */
    theirPub: string;
    /** Its earlier public keys (a hello of one of them is a replay). @type {Set<string>} */
    pastPubs: Set<string>;
    /** When the session of `theirPub` began, as its hello said. */
    theirSince: number;
    /** @type {{send: CryptoKey, recv: CryptoKey} | null} */
    keys: {
        send: CryptoKey;
        recv: CryptoKey;
    } | null;
    /** @type {() => void} */
    resolveReady: () => void;
    /** @type {(e: Error) => void} */
    rejectReady: (e: Error) => void;
    /** Settles once the keys exist (or the pair mismatched). @type {Promise<void>} */
    ready: Promise<void>;
    /** The tails of the sealing, opening and hello queues. */
    out: Promise<void>;
    in: Promise<void>;
    hellos: Promise<void>;
    /** This side's hello to the peer. @returns {Promise<{e2ee: Hello}>} */
    hello(): Promise<{
        e2ee: Hello;
    }>;
    /**
     * Takes the peer's hello: checks its MAC (a wrong one is a mismatch), derives the pair's keys
     * when its public key is new (a new session of the peer).
     * @param {unknown} hello
     * @returns {Promise<boolean>} whether to answer with a hello of ours (the peer does not hold
     *   our current public key)
     * @throws {MismatchError} another key, or none; {@link Error} a replayed hello (dropped)
     */
    onHello(hello: unknown): Promise<boolean>;
    /** Whether the pair mismatched (read anew after every `await`). */
    mismatched(): boolean;
    /** The pair cannot talk: what waits for its keys fails, and nothing more goes or comes. */
    mismatch(): void;
    /**
     * Runs `step` after every step queued before it on `queue`; a failing step counts as a
     * rejected record and does not stop the queue.
     * @param {"out" | "in" | "hellos"} queue
     * @param {() => Promise<void>} step
     */
    enqueue(queue: "out" | "in" | "hellos", step: () => Promise<void>): Promise<void>;
    /**
     * Seals `text` once the keys exist, then hands the record to `send`, in call order (not once
     * the pair mismatched).
     * @param {RecordKind} kind
     * @param {string} text
     * @param {(record: {x: string}) => void} send
     */
    seal(kind: RecordKind, text: string, send: (record: {
        x: string;
    }) => void): Promise<void>;
    /**
     * Seals signaling data (with the session's next signal counter) for the peer.
     * @param {unknown} data
     * @param {(record: {x: string}) => void} send
     */
    sealSignal(data: unknown, send: (record: {
        x: string;
    }) => void): Promise<void>;
    /**
     * @param {RecordKind} kind
     * @param {string} text
     */
    sealNow(kind: RecordKind, text: string): Promise<{
        x: string;
    }>;
    /**
     * Opens a record from the peer, in arrival order, and hands its text to `deliver`; one that
     * fails authentication is dropped and counted. Nothing is delivered once the pair mismatched.
     * @param {RecordKind} kind
     * @param {string} x the record's base64
     * @param {(text: string) => void} deliver
     */
    open(kind: RecordKind, x: string, deliver: (text: string) => void): Promise<void>;
    /**
     * @param {RecordKind} kind
     * @param {string} x
     * @returns {Promise<string>}
     */
    openNow(kind: RecordKind, x: string): Promise<string>;
    /**
     * Opens a sealed signal: its data, or nothing (counted) when it fails, or does not count up
     * for the key it was sealed under (replayed or reordered).
     * @param {string} x
     * @param {(data: unknown) => void} deliver
     */
    openSignal(x: string, deliver: (data: unknown) => void): Promise<void>;
    /**
     * Takes a hello in its own queue (a record that came before it waits for the keys it brings).
     * @param {unknown} hello
     * @param {(reply: boolean) => void} done
     * @param {(err: MismatchError) => void} failed
     */
    takeHello(hello: unknown, done: (reply: boolean) => void, failed: (err: MismatchError) => void): Promise<void>;
}
export type RecordKind = "relay" | "signal" | "channel";
export type Hello = {
    v: number;
    pub: string;
    r: string;
    t: number;
    mac: string;
};
