// @ts-check
/**
 * End-to-end encryption of a room (docs/security.md, "End-to-end encryption"): what the server
 * relays, it cannot read, alter, replay into another place or forge, and the signaling it
 * carries no longer lets it sit in the middle of the peer-to-peer connections.
 *
 * The app gives every participant the same room key (`joinRoom({ e2ee: { key } })`), out of band:
 * BlueCam never sees it. From it, with HKDF-SHA256 and the room's id as salt, come a MAC key
 * for the key exchange and a salt for the pair keys. Each join makes a fresh ECDH P-256 key
 * pair (a resume keeps it). Each pair of peers exchanges a `hello` signal carrying its public
 * key, MACed with the room's key over both peer ids (and the public key of the other side it
 * holds, if any); from the ECDH secret, HKDF derives one AES-256-GCM key per direction. A peer
 * whose key differs fails the MAC: that is the mismatch, reported on both sides. Every MAC,
 * associated data and derivation input is a JSON array of its fields (no field can be read as
 * another).
 *
 * After the exchange everything between the two is a sealed record `{x: base64(iv ‖ ciphertext
 * ‖ tag)}` with a random 96-bit IV and, as associated data, the version, the room, the kind of
 * record (`relay`, `signal`, `channel`) and the sender's and recipient's ids: relayed messages
 * (envelopes, acknowledgements and chunk headers included), signals (SDP, ICE, media state:
 * sealed SDP authenticates the DTLS fingerprints) and data channel messages. Signals carry a
 * counter inside the seal (the server passes them in order, so one that does not count up was
 * replayed or reordered: refused; the last counter of each public key of a peer is kept for the
 * session's life, and a hello of an earlier key is refused). Relayed messages need none: their
 * sequence numbers are inside the seal, and the delivery layer drops what it has already
 * delivered.
 *
 * Pure WebCrypto, no DOM: the unit tests run it in Node.
 */

import { fromBase64, toBase64 } from "./delivery.js";

/** When the last session of this page began (sessions of one page never share a millisecond). */
let lastSince = 0;

/** Shortest room key accepted: 22 characters carry 128 bits when they are random base64url. */
export const MIN_KEY_CHARS = 22;
/** Version of the exchange and of the records (in every MAC and associated data). */
export const E2EE_VERSION = 1;
/** Bytes of a record beyond its plaintext: the IV and the GCM tag (before base64). */
export const RECORD_OVERHEAD_BYTES = 12 + 16;

const enc = new TextEncoder();
const dec = new TextDecoder("utf-8", { fatal: true });

/**
 * Bytes as WebCrypto's types want them (what this module makes is never shared memory).
 * @param {Uint8Array} u
 */
function buf(u) {
  return /** @type {Uint8Array<ArrayBuffer>} */ (u);
}

/**
 * What a MAC, a record's associated data or a derivation covers: the version, a label and the
 * fields, as a JSON array (no field can be read as another's, whatever characters ids hold).
 * @param {string} label
 * @param {...string} parts
 */
function fields(label, ...parts) {
  return enc.encode(JSON.stringify([`bluecam e2ee v${E2EE_VERSION}`, label, ...parts]));
}

/**
 * Whether `text` is a P-256 public key as a hello carries it: base64 of 65 bytes, uncompressed.
 * @param {string} text
 */
function isPublicKey(text) {
  try {
    const raw = fromBase64(text);
    return raw.length === 65 && raw[0] === 4;
  } catch {
    return false;
  }
}

/** @returns {SubtleCrypto | undefined} */
function subtle() {
  return globalThis.crypto?.subtle;
}

/** Whether this page can encrypt (WebCrypto exists only in secure contexts: https, localhost). */
export function e2eeSupported() {
  return subtle() !== undefined;
}

/** A key that fails the pair's MAC, or a peer that does not encrypt when this side does (or the
 * other way round). */
export class MismatchError extends Error {}

/**
 * @typedef {"relay" | "signal" | "channel"} RecordKind
 * @typedef {{v: number, pub: string, r: string, t: number, mac: string}} Hello
 */

/**
 * A sealed record's shape, `{x: "<base64>"}`.
 * @param {unknown} value
 * @returns {value is {x: string}}
 */
export function isSealed(value) {
  return typeof value === "object" && value !== null && typeof (/** @type {any} */ (value).x) === "string";
}

/**
 * A hello's shape (its MAC is checked by the pair).
 * @param {unknown} value
 * @returns {value is Hello}
 */
export function isHello(value) {
  const h = /** @type {any} */ (value);
  return typeof h === "object" && h !== null && typeof h.pub === "string" && typeof h.r === "string" &&
    Number.isSafeInteger(h.t) && typeof h.mac === "string" && h.v === E2EE_VERSION;
}

/** The room's side of the encryption: its keys and one {@link Pair} per peer. */
export class RoomCrypto {
  /**
   * @param {unknown} key the room key the app gave
   * @throws {TypeError} a key that is not a string of at least MIN_KEY_CHARS characters
   */
  constructor(key) {
    if (typeof key !== "string" || key.length < MIN_KEY_CHARS) {
      throw new TypeError(`e2ee.key must be a string of at least ${MIN_KEY_CHARS} characters (128 random bits or more, for example 32 random bytes in base64url)`);
    }
    this.key = key;
    /** @type {Map<string, Pair>} */
    this.pairs = new Map();
    /** Records dropped: failed authentication, came unsealed, or a replayed signal or hello. */
    this.rejected = 0;
    /** The counter of the signals this session seals, for all peers (each sees it count up). */
    this.signalsOut = 0;
    /** The last counter opened from each public key of a peer (kept for this session's life:
     * a signal of a key seen before, replayed after a new exchange, still does not count up).
     * @type {Map<string, number>} */
    this.signalsIn = new Map();
    /** Records sealed and opened. */
    this.sealed = 0;
    this.opened = 0;
    this.room = "";
    this.self = "";
    this.pub = "";
    /** @type {CryptoKeyPair | null} */
    this.ecdh = null;
    /** @type {CryptoKey | null} */
    this.macKey = null;
    /** @type {Uint8Array} */
    this.pairSalt = new Uint8Array(0);
    /** This session's key pair, made at once (the join need not wait for it). */
    this.keyPair = this.makeKeyPair();
    /** When this session began (ms): its hellos say so, and a peer takes a new key of a peer
     * id only from a hello of a later session than the key it holds (an earlier session's
     * hello, held back and replayed, cannot take over). */
    this.since = lastSince = Math.max(Date.now(), lastSince + 1);
    /** @type {() => void} */
    this.resolveBound = () => {};
    /** Resolves once `bind` has the room's keys (the key exchange waits for it). */
    this.bound = new Promise((resolve) => {
      this.resolveBound = () => resolve(undefined);
    });
  }

  async makeKeyPair() {
    const s = /** @type {SubtleCrypto} */ (subtle());
    this.ecdh = /** @type {CryptoKeyPair} */ (await s.generateKey({ name: "ECDH", namedCurve: "P-256" }, false, ["deriveBits"]));
    this.pub = toBase64(new Uint8Array(await s.exportKey("raw", this.ecdh.publicKey)));
  }

  /**
   * Binds the keys to the room and this peer's id (once joined).
   * @param {string} room
   * @param {string} self
   */
  async bind(room, self) {
    const s = /** @type {SubtleCrypto} */ (subtle());
    await this.keyPair;
    if (this.room === room && this.self === self && this.macKey) return;
    const base = await s.importKey("raw", enc.encode(this.key), "HKDF", false, ["deriveKey", "deriveBits"]);
    const salt = enc.encode(`bluecam e2ee v${E2EE_VERSION} room ${room}`);
    this.macKey = await s.deriveKey(
      { name: "HKDF", hash: "SHA-256", salt, info: enc.encode("hello") },
      base, { name: "HMAC", hash: "SHA-256", length: 256 }, false, ["sign", "verify"],
    );
    this.pairSalt = new Uint8Array(await s.deriveBits({ name: "HKDF", hash: "SHA-256", salt, info: enc.encode("pair") }, base, 256));
    this.room = room;
    this.self = self;
    this.resolveBound();
  }

  /**
   * The pair with peer `id` (kept while this room lives: a peer reported gone and back with
   * the same session keeps its keys).
   * @param {string} id
   */
  pair(id) {
    let p = this.pairs.get(id);
    if (!p) {
      p = new Pair(this, id);
      this.pairs.set(id, p);
    }
    return p;
  }

  /**
   * Starts the pair with peer `id` over (it is back: perhaps with the right key, perhaps as a
   * new session). Its earlier sessions' keys stay refused.
   * @param {string} id
   */
  renew(id) {
    const old = this.pairs.get(id);
    const p = new Pair(this, id);
    if (old) p.pastPubs = old.pastPubs;
    this.pairs.set(id, p);
    return p;
  }

  /**
   * The pair with a peer that has just come into the room, or back: a fresh exchange (the same
   * session re-derives the same keys and goes on counting; a new session with the same id gets
   * new ones), its earlier sessions' keys still refused.
   * @param {string} id
   */
  fresh(id) {
    return this.pairs.has(id) ? this.renew(id) : this.pair(id);
  }

  /**
   * The text a hello's MAC covers.
   * @param {string} from
   * @param {string} to
   * @param {string} pub the sender's public key
   * @param {string} r the recipient's public key as the sender holds it ("" if none)
   * @param {number} since when the sender's session began (ms)
   */
  helloText(from, to, pub, r, since) {
    return fields("hello", from, to, pub, r, String(since));
  }

  /**
   * The associated data of a record.
   * @param {RecordKind} kind
   * @param {string} from
   * @param {string} to
   */
  aad(kind, from, to) {
    return fields("record", this.room, kind, from, to);
  }
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
  constructor(room, id) {
    this.room = room;
    this.id = id;
    /** @type {"waiting" | "ready" | "mismatch"} */
    this.state = "waiting";
    /** The peer's public key, once its hello came. */
    this.theirPub = "";
    /** Its earlier public keys (a hello of one of them is a replay). @type {Set<string>} */
    this.pastPubs = new Set();
    /** When the session of `theirPub` began, as its hello said. */
    this.theirSince = -1;
    /** @type {{send: CryptoKey, recv: CryptoKey} | null} */
    this.keys = null;
    /** @type {() => void} */
    this.resolveReady = () => {};
    /** @type {(e: Error) => void} */
    this.rejectReady = () => {};
    /** Settles once the keys exist (or the pair mismatched). @type {Promise<void>} */
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.ready.catch(() => {});
    /** The tails of the sealing, opening and hello queues. */
    this.out = Promise.resolve();
    this.in = Promise.resolve();
    this.hellos = Promise.resolve();
  }

  /** This side's hello to the peer. @returns {Promise<{e2ee: Hello}>} */
  async hello() {
    const { room } = this;
    await room.bound;
    const s = /** @type {SubtleCrypto} */ (subtle());
    const text = room.helloText(room.self, this.id, room.pub, this.theirPub, room.since);
    const mac = toBase64(new Uint8Array(await s.sign("HMAC", /** @type {CryptoKey} */ (room.macKey), text)));
    return { e2ee: { v: E2EE_VERSION, pub: room.pub, r: this.theirPub, t: room.since, mac } };
  }

  /**
   * Takes the peer's hello: checks its MAC (a wrong one is a mismatch), derives the pair's keys
   * when its public key is new (a new session of the peer).
   * @param {unknown} hello
   * @returns {Promise<boolean>} whether to answer with a hello of ours (the peer does not hold
   *   our current public key)
   * @throws {MismatchError} another key, or none; {@link Error} a replayed hello (dropped)
   */
  async onHello(hello) {
    const { room } = this;
    await room.bound;
    const s = /** @type {SubtleCrypto} */ (subtle());
    if (hello === false) throw new MismatchError("it has no room key");
    if (!isHello(hello) || !isPublicKey(hello.pub) || (hello.r !== "" && !isPublicKey(hello.r))) {
      throw new MismatchError("its key exchange is not one this SDK speaks");
    }
    let mac;
    try {
      mac = fromBase64(hello.mac);
    } catch {
      throw new MismatchError("its key exchange is malformed");
    }
    const ok = await s.verify("HMAC", /** @type {CryptoKey} */ (room.macKey), buf(mac), room.helloText(this.id, room.self, hello.pub, hello.r, hello.t));
    if (!ok) throw new MismatchError("it uses another room key");
    if (this.state === "mismatch") return false;
    if (hello.pub !== this.theirPub) {
      // An earlier session's hello, replayed: refused (a new session always has a new key, and
      // began later than the one whose key this pair holds).
      if (this.pastPubs.has(hello.pub) || (this.theirPub !== "" && hello.t <= this.theirSince)) {
        throw new Error("a hello of an earlier session of the peer");
      }
      let theirs;
      try {
        theirs = await s.importKey("raw", buf(fromBase64(hello.pub)), { name: "ECDH", namedCurve: "P-256" }, false, []);
      } catch {
        throw new MismatchError("its public key is not a P-256 point");
      }
      const ecdh = /** @type {CryptoKeyPair} */ (room.ecdh);
      const shared = await s.deriveBits({ name: "ECDH", public: theirs }, ecdh.privateKey, 256);
      const ikm = await s.importKey("raw", shared, "HKDF", false, ["deriveBits"]);
      const low = room.self < this.id;
      const [a, b] = low ? [[room.self, room.pub], [this.id, hello.pub]] : [[this.id, hello.pub], [room.self, room.pub]];
      const info = fields("pair", a[0], b[0], a[1], b[1]);
      const bits = new Uint8Array(await s.deriveBits({ name: "HKDF", hash: "SHA-256", salt: buf(room.pairSalt), info }, ikm, 512));
      const aes = (/** @type {Uint8Array} */ raw) => s.importKey("raw", buf(raw), "AES-GCM", false, ["encrypt", "decrypt"]);
      const [lowToHigh, highToLow] = await Promise.all([aes(bits.slice(0, 32)), aes(bits.slice(32))]);
      // (The pair may have mismatched while this was derived.)
      if (this.mismatched()) return false;
      this.keys = low ? { send: lowToHigh, recv: highToLow } : { send: highToLow, recv: lowToHigh };
      if (this.theirPub) this.pastPubs.add(this.theirPub);
      this.theirPub = hello.pub;
      this.theirSince = hello.t;
    }
    if (this.state !== "ready") {
      this.state = "ready";
      this.resolveReady();
    }
    return hello.r !== room.pub;
  }

  /** Whether the pair mismatched (read anew after every `await`). */
  mismatched() {
    return this.state === "mismatch";
  }

  /** The pair cannot talk: what waits for its keys fails, and nothing more goes or comes. */
  mismatch() {
    this.state = "mismatch";
    this.rejectReady(new MismatchError("mismatch"));
  }

  /**
   * Runs `step` after every step queued before it on `queue`; a failing step counts as a
   * rejected record and does not stop the queue.
   * @param {"out" | "in" | "hellos"} queue
   * @param {() => Promise<void>} step
   */
  enqueue(queue, step) {
    const next = this[queue].then(step).catch((err) => {
      if (!(err instanceof MismatchError)) this.room.rejected++;
    });
    this[queue] = next;
    return next;
  }

  /**
   * Seals `text` once the keys exist, then hands the record to `send`, in call order (not once
   * the pair mismatched).
   * @param {RecordKind} kind
   * @param {string} text
   * @param {(record: {x: string}) => void} send
   */
  seal(kind, text, send) {
    return this.enqueue("out", async () => {
      await this.ready;
      const rec = await this.sealNow(kind, text);
      if (this.state === "ready") send(rec);
    });
  }

  /**
   * Seals signaling data (with the session's next signal counter) for the peer.
   * @param {unknown} data
   * @param {(record: {x: string}) => void} send
   */
  sealSignal(data, send) {
    return this.enqueue("out", async () => {
      await this.ready;
      const rec = await this.sealNow("signal", JSON.stringify({ n: ++this.room.signalsOut, d: data }));
      if (this.state === "ready") send(rec);
    });
  }

  /**
   * @param {RecordKind} kind
   * @param {string} text
   */
  async sealNow(kind, text) {
    const { room } = this;
    const s = /** @type {SubtleCrypto} */ (subtle());
    const iv = globalThis.crypto.getRandomValues(new Uint8Array(12));
    const keys = /** @type {{send: CryptoKey}} */ (this.keys);
    const ct = new Uint8Array(await s.encrypt({ name: "AES-GCM", iv, additionalData: room.aad(kind, room.self, this.id) }, keys.send, enc.encode(text)));
    const out = new Uint8Array(12 + ct.length);
    out.set(iv);
    out.set(ct, 12);
    room.sealed++;
    return { x: toBase64(out) };
  }

  /**
   * Opens a record from the peer, in arrival order, and hands its text to `deliver`; one that
   * fails authentication is dropped and counted. Nothing is delivered once the pair mismatched.
   * @param {RecordKind} kind
   * @param {string} x the record's base64
   * @param {(text: string) => void} deliver
   */
  open(kind, x, deliver) {
    return this.enqueue("in", async () => {
      await this.ready;
      const text = await this.openNow(kind, x);
      if (this.state === "ready") deliver(text);
    });
  }

  /**
   * @param {RecordKind} kind
   * @param {string} x
   * @returns {Promise<string>}
   */
  async openNow(kind, x) {
    const { room } = this;
    const s = /** @type {SubtleCrypto} */ (subtle());
    const bytes = fromBase64(x);
    if (bytes.length < RECORD_OVERHEAD_BYTES) throw new Error("a record too short");
    const keys = /** @type {{recv: CryptoKey}} */ (this.keys);
    const plain = await s.decrypt(
      { name: "AES-GCM", iv: buf(bytes.subarray(0, 12)), additionalData: room.aad(kind, this.id, room.self) },
      keys.recv, buf(bytes.subarray(12)),
    );
    room.opened++;
    return dec.decode(plain);
  }

  /**
   * Opens a sealed signal: its data, or nothing (counted) when it fails, or does not count up
   * for the key it was sealed under (replayed or reordered).
   * @param {string} x
   * @param {(data: unknown) => void} deliver
   */
  openSignal(x, deliver) {
    return this.enqueue("in", async () => {
      await this.ready;
      const pub = this.theirPub;
      const { n, d } = JSON.parse(await this.openNow("signal", x));
      const last = this.room.signalsIn.get(pub) ?? 0;
      if (typeof n !== "number" || n <= last) throw new Error("a signal replayed or out of order");
      this.room.signalsIn.set(pub, n);
      if (this.state === "ready") deliver(d);
    });
  }

  /**
   * Takes a hello in its own queue (a record that came before it waits for the keys it brings).
   * @param {unknown} hello
   * @param {(reply: boolean) => void} done
   * @param {(err: MismatchError) => void} failed
   */
  takeHello(hello, done, failed) {
    const taken = this.enqueue("hellos", async () => {
      try {
        done(await this.onHello(hello));
      } catch (err) {
        if (err instanceof MismatchError) failed(err);
        else throw err;
      }
    });
    // A pair that has keys may get new ones from this hello: records that came after it wait
    // for it (they may be sealed with the new keys). One without keys must not wait here: a
    // record that came before its hello waits for the keys instead, and would hold the hello
    // up.
    if (this.state === "ready") this.in = this.in.then(() => taken);
    return taken;
  }
}
