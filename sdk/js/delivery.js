// @ts-check
/**
 * The delivery layer of BlueCam (DESIGN.md 2.4), pure: no sockets, no timers, no DOM.
 *
 * Every app message to one peer gets a sequence number in the (sender, recipient) space. The
 * same envelopes travel over the data channel and, inside `send.msg`, over the relay; the
 * recipient delivers in order, drops duplicates and acknowledges cumulatively over whichever
 * path works; the sender keeps a message until it is acknowledged and resends it when a path
 * fails. Envelopes (documented in docs/protocol.md, "App envelopes"):
 *   {v:1, k:"m", s, t, d}          a whole message: sequence s, type t, data d
 *   {v:1, k:"c", s, t, i, n, p}    chunk i of n of message s; p is a slice of the JSON text of d
 *   {v:1, k:"a", a}                cumulative ack: every message up to a has been delivered
 */

/** Largest message accepted by sendMessage: UTF-8 bytes of JSON.stringify(data). */
export const MAX_MESSAGE_BYTES = 1 << 20;
/** Messages whose JSON is longer than this travel as chunks (below every SCTP limit). */
export const CHUNK_CHARS = 16 * 1024;
/** Envelope format version. */
export const VERSION = 1;
/** Most chunks a message can have (1 MiB of JSON in CHUNK_CHARS pieces, rounded up). */
export const MAX_CHUNKS = Math.ceil(MAX_MESSAGE_BYTES / CHUNK_CHARS) + 1;
/** Sequence numbers further ahead than this are refused (the sender's outbox is smaller). */
export const MAX_AHEAD = 4096;

/**
 * @typedef {{v: number, k: "m", s: number, t: string, d: unknown}} WholeEnvelope
 * @typedef {{v: number, k: "c", s: number, t: string, i: number, n: number, p: string}} ChunkEnvelope
 * @typedef {{v: number, k: "a", a: number}} AckEnvelope
 * @typedef {WholeEnvelope | ChunkEnvelope | AckEnvelope} Envelope
 */

/**
 * Checks and encodes a message's data; throws a RangeError above MAX_MESSAGE_BYTES.
 * @param {unknown} data
 * @returns {{json: string, bytes: number}}
 */
export function encodeData(data) {
  const json = JSON.stringify(data === undefined ? null : data);
  const bytes = new TextEncoder().encode(json).length;
  if (bytes > MAX_MESSAGE_BYTES) {
    throw new RangeError(`message of ${bytes} bytes exceeds the limit of ${MAX_MESSAGE_BYTES} bytes`);
  }
  return { json, bytes };
}

/**
 * The envelopes of one message.
 * @param {number} seq
 * @param {string} type
 * @param {string} json the JSON text of the data
 * @returns {Envelope[]}
 */
export function envelopesOf(seq, type, json) {
  if (json.length <= CHUNK_CHARS) {
    return [{ v: VERSION, k: "m", s: seq, t: type, d: JSON.parse(json) }];
  }
  const n = Math.ceil(json.length / CHUNK_CHARS);
  /** @type {Envelope[]} */
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push({ v: VERSION, k: "c", s: seq, t: type, i, n, p: json.slice(i * CHUNK_CHARS, (i + 1) * CHUNK_CHARS) });
  }
  return out;
}

/**
 * Whether a value is a well-formed envelope.
 * @param {unknown} x
 * @returns {x is Envelope}
 */
export function isEnvelope(x) {
  if (typeof x !== "object" || x === null) return false;
  const e = /** @type {Record<string, unknown>} */ (x);
  if (e.v !== VERSION) return false;
  const seq = (/** @type {unknown} */ v) => Number.isSafeInteger(v) && /** @type {number} */ (v) >= 1;
  switch (e.k) {
    case "m":
      return seq(e.s) && typeof e.t === "string" && "d" in e;
    case "c":
      return (
        seq(e.s) && typeof e.t === "string" && typeof e.p === "string" &&
        Number.isSafeInteger(e.n) && /** @type {number} */ (e.n) >= 1 && /** @type {number} */ (e.n) <= MAX_CHUNKS &&
        Number.isSafeInteger(e.i) && /** @type {number} */ (e.i) >= 0 && /** @type {number} */ (e.i) < /** @type {number} */ (e.n)
      );
    case "a":
      return Number.isSafeInteger(e.a) && /** @type {number} */ (e.a) >= 0;
    default:
      return false;
  }
}

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
 * @property {(value: void) => void} resolve
 * @property {(reason: Error) => void} reject
 */

/** Unacknowledged messages to one peer, in sequence order. */
export class Outbox {
  constructor() {
    this.nextSeq = 1;
    /** @type {Pending[]} */
    this.pending = [];
    this.bytes = 0;
  }

  /**
   * Adds a message; the promise settles when it is acknowledged or the peer is gone.
   * @param {string} type
   * @param {string} json
   * @param {number} bytes
   * @returns {{entry: Pending, done: Promise<void>}}
   */
  add(type, json, bytes) {
    /** @type {(value: void) => void} */
    let resolve = () => {};
    /** @type {(reason: Error) => void} */
    let reject = () => {};
    const done = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    /** @type {Pending} */
    const entry = { seq: this.nextSeq++, type, json, bytes, via: "none", sentAt: 0, tries: 0, resolve, reject };
    this.pending.push(entry);
    this.bytes += bytes;
    return { entry, done };
  }

  /**
   * A cumulative ack: settles every message up to `upTo`. Returns how many.
   * @param {number} upTo
   */
  ack(upTo) {
    let n = 0;
    while (this.pending.length > 0 && this.pending[0].seq <= upTo) {
      const e = /** @type {Pending} */ (this.pending.shift());
      this.bytes -= e.bytes;
      e.resolve();
      n++;
    }
    return n;
  }

  /**
   * The peer cannot be reached any more: reject everything.
   * @param {Error} error
   */
  fail(error) {
    for (const e of this.pending) e.reject(error);
    this.pending = [];
    this.bytes = 0;
  }
}

/** What one sender has delivered to us, and what waits for a gap to fill. */
export class Inbox {
  constructor() {
    /** Every message below this has been delivered. */
    this.expected = 1;
    /** @type {Map<number, {type: string, data: unknown}>} */
    this.held = new Map();
    /** @type {Map<number, {type: string, parts: (string | undefined)[], have: number}>} */
    this.chunks = new Map();
  }

  /** The cumulative ack to send back. */
  get ackValue() {
    return this.expected - 1;
  }

  /**
   * Takes one message or chunk envelope; returns the messages now deliverable, in order.
   * Duplicates and chunks of delivered messages are dropped.
   * @param {WholeEnvelope | ChunkEnvelope} env
   * @returns {{type: string, data: unknown, seq: number}[]}
   */
  receive(env) {
    if (env.s < this.expected || this.held.has(env.s) || env.s >= this.expected + MAX_AHEAD) return [];
    if (env.k === "m") {
      this.held.set(env.s, { type: env.t, data: env.d });
    } else {
      let c = this.chunks.get(env.s);
      if (!c) {
        c = { type: env.t, parts: new Array(env.n).fill(undefined), have: 0 };
        this.chunks.set(env.s, c);
      }
      if (c.parts.length !== env.n || c.parts[env.i] !== undefined) return [];
      c.parts[env.i] = env.p;
      c.have++;
      if (c.have < env.n) return [];
      this.chunks.delete(env.s);
      let data;
      try {
        data = JSON.parse(c.parts.join(""));
      } catch {
        return []; // a broken sender; its message can never complete
      }
      this.held.set(env.s, { type: c.type, data });
    }
    /** @type {{type: string, data: unknown, seq: number}[]} */
    const out = [];
    for (let m = this.held.get(this.expected); m !== undefined; m = this.held.get(this.expected)) {
      this.held.delete(this.expected);
      // Chunks of a message that also came whole (a hostile sender) would be kept forever.
      this.chunks.delete(this.expected);
      out.push({ ...m, seq: this.expected });
      this.expected++;
    }
    return out;
  }
}
