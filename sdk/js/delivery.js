// @ts-check
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
export const MAX_MESSAGE_BYTES = 1 << 20;
/** Messages whose JSON is longer than this travel as chunks (below every SCTP limit). */
export const CHUNK_CHARS = 16 * 1024;
/** Envelope format version. */
export const VERSION = 1;
/** Most chunks a message can have (1 MiB of JSON in CHUNK_CHARS pieces, rounded up). */
export const MAX_CHUNKS = Math.ceil(MAX_MESSAGE_BYTES / CHUNK_CHARS) + 1;
/** Sequence numbers further ahead than this are refused (the sender's outbox is smaller). */
export const MAX_AHEAD = 4096;

let lastEpoch = 0;
/**
 * A new epoch: larger than every earlier one of this page, and (being milliseconds × 1000)
 * than those of a page loaded before it.
 * @returns {number}
 */
export function newEpoch() {
  lastEpoch = Math.max(lastEpoch + 1, Date.now() * 1000);
  return lastEpoch;
}

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
export const BYTES_KEY = "\u0000b";

/**
 * @param {Uint8Array} bytes
 * @returns {string}
 */
export function toBase64(bytes) {
  // (Native where the browser has it: several times faster than the loop.)
  const native = /** @type {any} */ (bytes).toBase64;
  if (typeof native === "function") return native.call(bytes);
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, /** @type {any} */ (bytes.subarray(i, i + 0x8000)));
  }
  return btoa(binary);
}

/**
 * @param {string} text base64
 * @returns {Uint8Array}
 */
export function fromBase64(text) {
  const native = /** @type {any} */ (Uint8Array).fromBase64;
  if (typeof native === "function") return native(text);
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/**
 * JSON.stringify's replacer: binary data (an ArrayBuffer or any view of one) as its bytes.
 * @param {string} _key
 * @param {unknown} value
 */
function bytesReplacer(_key, value) {
  // (Most values are primitives, plain objects and arrays: let them through first.)
  if (typeof value !== "object" || value === null || value.constructor === Object || Array.isArray(value)) return value;
  if (value instanceof ArrayBuffer) return { [BYTES_KEY]: toBase64(new Uint8Array(value)) };
  if (ArrayBuffer.isView(value)) {
    return { [BYTES_KEY]: toBase64(new Uint8Array(value.buffer, value.byteOffset, value.byteLength)) };
  }
  if (typeof Blob === "function" && value instanceof Blob) {
    throw new TypeError("a Blob inside an object cannot be sent (send it alone, or its bytes)");
  }
  return value;
}

/**
 * A message's data as received, with the binary values (`{"\u0000b": base64}`) back as
 * `Uint8Array`s. Changes `data` in place. Data it cannot walk (nested deeper than the stack, a
 * hostile sender) is handed over as it came.
 * @param {unknown} data
 * @returns {unknown}
 */
export function reviveBytes(data) {
  if (typeof data !== "object" || data === null) return data;
  try {
    return revive(data);
  } catch {
    return data;
  }
}

/**
 * @param {unknown} v
 * @returns {unknown}
 */
function revive(v) {
  if (typeof v !== "object" || v === null) return v;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) v[i] = revive(v[i]);
    return v;
  }
  const o = /** @type {Record<string, unknown>} */ (v);
  const keys = Object.keys(o);
  if (keys.length === 1 && keys[0] === BYTES_KEY && typeof o[BYTES_KEY] === "string") {
    try {
      return fromBase64(/** @type {string} */ (o[BYTES_KEY]));
    } catch {
      return o;
    }
  }
  for (const k of keys) o[k] = revive(o[k]);
  return o;
}

/**
 * Checks and encodes a message's data; throws a RangeError above MAX_MESSAGE_BYTES (binary
 * data counts as its base64), a TypeError for data JSON cannot hold (a cycle, a `BigInt`).
 * @param {unknown} data
 * @returns {{json: string, bytes: number}}
 */
export function encodeData(data) {
  const json = JSON.stringify(data === undefined ? null : data, bytesReplacer);
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
 * @param {{epoch: number, base: number}} [from] the sending Outbox's epoch and lowest
 *   unacknowledged sequence (absent: an envelope of the first protocol, without them)
 * @returns {Envelope[]}
 */
export function envelopesOf(seq, type, json, from) {
  const stamp = from ? { e: from.epoch, b: from.base } : {};
  if (json.length <= CHUNK_CHARS) {
    return [{ v: VERSION, k: "m", s: seq, t: type, d: JSON.parse(json), ...stamp }];
  }
  const n = Math.ceil(json.length / CHUNK_CHARS);
  /** @type {Envelope[]} */
  const out = [];
  for (let i = 0; i < n; i++) {
    out.push({ v: VERSION, k: "c", s: seq, t: type, i, n, p: json.slice(i * CHUNK_CHARS, (i + 1) * CHUNK_CHARS), ...stamp });
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
  // The epoch and base are optional (a sender of the first protocol has none), well-formed if there.
  const epochOk = e.e === undefined || (Number.isSafeInteger(e.e) && /** @type {number} */ (e.e) >= 0);
  const stampOk = epochOk && (e.b === undefined || seq(e.b));
  switch (e.k) {
    case "m":
      return stampOk && seq(e.s) && typeof e.t === "string" && "d" in e;
    case "c":
      return (
        stampOk && seq(e.s) && typeof e.t === "string" && typeof e.p === "string" &&
        Number.isSafeInteger(e.n) && /** @type {number} */ (e.n) >= 1 && /** @type {number} */ (e.n) <= MAX_CHUNKS &&
        Number.isSafeInteger(e.i) && /** @type {number} */ (e.i) >= 0 && /** @type {number} */ (e.i) < /** @type {number} */ (e.n)
      );
    case "a":
      return epochOk && Number.isSafeInteger(e.a) && /** @type {number} */ (e.a) >= 0;
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
 * @property {number} addedAt when sendMessage handed it over (ms), for the delivery bound
 * @property {(value: void) => void} resolve
 * @property {(reason: Error) => void} reject
 */

/** Unacknowledged messages to one peer, in sequence order. */
export class Outbox {
  constructor() {
    /** This sequence space's epoch (see the module doc). */
    this.epoch = newEpoch();
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
   * @param {number} [now] the time (ms), for the delivery bound
   * @returns {{entry: Pending, done: Promise<void>}}
   */
  add(type, json, bytes, now = Date.now()) {
    /** @type {(value: void) => void} */
    let resolve = () => {};
    /** @type {(reason: Error) => void} */
    let reject = () => {};
    const done = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    /** @type {Pending} */
    const entry = { seq: this.nextSeq++, type, json, bytes, via: "none", sentAt: 0, tries: 0, addedAt: now, resolve, reject };
    this.pending.push(entry);
    this.bytes += bytes;
    return { entry, done };
  }

  /** The lowest unacknowledged sequence: every message below it was acknowledged. */
  get base() {
    return this.pending.length > 0 ? this.pending[0].seq : this.nextSeq;
  }

  /**
   * A cumulative ack: settles every message up to `upTo`. Returns how many. An ack of another
   * epoch (an earlier Outbox of ours for this peer) acknowledges nothing here.
   * @param {number} upTo
   * @param {number} [epoch] absent: a peer of the first protocol
   */
  ack(upTo, epoch) {
    if (epoch !== undefined && epoch !== this.epoch) return 0;
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
    /** The sender's epoch being received (null until the first envelope). */
    /** @type {number | null} */
    this.epoch = null;
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
   * The ack envelope to send back: the cumulative ack, naming the epoch it acknowledges.
   * @returns {AckEnvelope}
   */
  ack() {
    return this.epoch === null || this.epoch === 0
      ? { v: VERSION, k: "a", a: this.ackValue }
      : { v: VERSION, k: "a", a: this.ackValue, e: this.epoch };
  }

  /**
   * Takes one message or chunk envelope; returns the messages now deliverable, in order (an
   * envelope that moves the sender's base on may free held ones even if it is a duplicate).
   * Duplicates and chunks of delivered messages are dropped.
   * @param {WholeEnvelope | ChunkEnvelope} env
   * @returns {{type: string, data: unknown, seq: number}[]}
   */
  receive(env) {
    const epoch = env.e ?? 0;
    if (this.epoch === null) {
      this.epoch = epoch; // the sender's first envelope
    } else if (epoch > this.epoch) {
      // A new sequence space: what was held of the old one will never complete (its sender
      // rejected those messages when it started anew).
      this.epoch = epoch;
      this.expected = 1;
      this.held.clear();
      this.chunks.clear();
    } else if (epoch < this.epoch) {
      return []; // an old sequence space: stale
    }
    if (env.b !== undefined && env.b > this.expected) {
      // Everything below the sender's base was acknowledged, so delivered to us (perhaps to an
      // earlier Inbox of ours): never sent again, it must not be waited for.
      for (const s of [...this.held.keys(), ...this.chunks.keys()]) {
        if (s < env.b) {
          this.held.delete(s);
          this.chunks.delete(s);
        }
      }
      this.expected = env.b;
    }
    this.store(env);
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

  /**
   * Keeps a message or chunk envelope for delivery (a whole message once its chunks are all
   * in); drops duplicates, chunks of delivered messages and what is too far ahead.
   * @param {WholeEnvelope | ChunkEnvelope} env
   */
  store(env) {
    if (env.s < this.expected || this.held.has(env.s) || env.s >= this.expected + MAX_AHEAD) return;
    if (env.k === "m") {
      this.held.set(env.s, { type: env.t, data: env.d });
      return;
    }
    let c = this.chunks.get(env.s);
    if (!c) {
      c = { type: env.t, parts: new Array(env.n).fill(undefined), have: 0 };
      this.chunks.set(env.s, c);
    }
    if (c.parts.length !== env.n || c.parts[env.i] !== undefined) return;
    c.parts[env.i] = env.p;
    c.have++;
    if (c.have < env.n) return;
    this.chunks.delete(env.s);
    try {
      this.held.set(env.s, { type: c.type, data: JSON.parse(c.parts.join("")) });
    } catch {
      // a broken sender; its message can never complete
    }
  }
}
