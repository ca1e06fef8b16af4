// @ts-check
// Property-based tests of the app-envelope decoder (docs/protocol.md, "App envelopes"), fed
// hostile input (node --test). The decoder is not one function: a data channel message goes
// through the send loop's onChannelData (scheduler.js, JSON.parse), a relay frame's `msg` through Room.onFrame (one
// envelope or an array of them), both then through isEnvelope, Inbox.receive and the app's
// onMessage. The properties drive that whole path on a Room that never connects (its
// Signaling opens no socket before join()), and the pure layer (isEnvelope, Inbox) directly.
//
// Every property runs RUNS cases; a failure prints fast-check's seed and path. Set FC_SEED to
// replay one.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CHUNK_CHARS, MAX_AHEAD, MAX_CHUNKS, Inbox, Outbox, VERSION, encodeData, envelopesOf, isEnvelope,
} from "./delivery.js";
import { Room } from "./bluecam.js";

const RUNS = 2000;
const TIMEOUT = { timeout: 30_000 };
/** @type {import("fast-check").Parameters<any>} */
const PARAMS = { numRuns: RUNS, ...(process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {}) };
const MAX_SAFE = Number.MAX_SAFE_INTEGER;
const FROM = "peer-remote";

// ---- the reference: an envelope as docs/protocol.md describes it, written independently ----

/**
 * @param {unknown} x
 * @param {number} min
 * @param {number} max
 */
const intIn = (x, min, max) => typeof x === "number" && Number.isInteger(x) && x >= min && x <= max;

/**
 * Whether a value (own properties only) is a valid envelope per docs/protocol.md section 15,
 * with the SDK's documented limits: sequence numbers and acks are safe integers, a message has
 * at most MAX_CHUNKS chunks. Extra fields are allowed. A stray `e` or `b` that is JSON `undefined`
 * cannot occur: the inputs are parsed JSON.
 * @param {unknown} x
 */
function specValid(x) {
  if (typeof x !== "object" || x === null || Array.isArray(x)) return false;
  const o = /** @type {Record<string, unknown>} */ (x);
  const has = (/** @type {string} */ k) => Object.prototype.hasOwnProperty.call(o, k);
  const get = (/** @type {string} */ k) => (has(k) ? o[k] : undefined);
  if (get("v") !== 1) return false;
  // Optional: the sender's epoch (an integer ≥ 0) and base (a sequence number ≥ 1).
  const epochOk = !has("e") || intIn(get("e"), 0, MAX_SAFE);
  const stampOk = epochOk && (!has("b") || intIn(get("b"), 1, MAX_SAFE));
  switch (get("k")) {
    case "m":
      return stampOk && intIn(get("s"), 1, MAX_SAFE) && typeof get("t") === "string" && has("d");
    case "c": {
      const n = get("n");
      return stampOk && intIn(get("s"), 1, MAX_SAFE) && typeof get("t") === "string" && typeof get("p") === "string" &&
        intIn(n, 1, MAX_CHUNKS) && intIn(get("i"), 0, /** @type {number} */ (n) - 1);
    }
    case "a":
      return epochOk && intIn(get("a"), 0, MAX_SAFE);
    default:
      return false;
  }
}

/** Relay `msg`: one envelope or an array of them. Whether any of it is a valid envelope. */
const anySpecValid = (/** @type {unknown} */ msg) => (Array.isArray(msg) ? msg : [msg]).some(specValid);

/** JSON text → value, or `undefined` when it is not JSON (what the wire would drop). */
function parseOrUndefined(/** @type {string} */ text) {
  try {
    return { value: JSON.parse(text) };
  } catch {
    return undefined;
  }
}

// ---- no prototype pollution ----------------------------------------------------------------

const PROTOS = [
  Object.prototype, Array.prototype, Function.prototype, String.prototype, Number.prototype,
  Boolean.prototype, Map.prototype, Set.prototype, Promise.prototype, Error.prototype,
];
const PROTO_SNAPSHOT = PROTOS.map((p) => Object.getOwnPropertyDescriptors(p));

function assertNotPolluted() {
  /** @type {any} */
  const plain = {};
  for (const name of ["polluted", "isAdmin", "v", "k", "s", "t", "d", "i", "n", "p", "a", "x"]) {
    assert.equal(plain[name], undefined, `({}).${name} must stay undefined`);
    assert.equal(/** @type {any} */ ([])[name], undefined, `[].${name} must stay undefined`);
  }
  assert.equal(Object.getPrototypeOf(plain), Object.prototype);
  PROTOS.forEach((proto, j) => {
    const now = Object.getOwnPropertyDescriptors(proto);
    const before = PROTO_SNAPSHOT[j];
    assert.deepEqual(Reflect.ownKeys(now), Reflect.ownKeys(before), "prototype keys changed");
    for (const key of Reflect.ownKeys(before)) {
      const a = /** @type {any} */ (before)[key];
      const b = /** @type {any} */ (now)[key];
      assert.ok(Object.is(a.value, b.value) && a.get === b.get && a.set === b.set, `prototype member ${String(key)} changed`);
    }
  });
}

// ---- the seam: a Room with one remote peer, fed as the data channel and the relay would ----

/**
 * @param {number} [expected] the next sequence number the inbox waits for
 */
function harness(expected = 1) {
  /** @type {{type: string, data: unknown, from: string, path: string}[]} */
  const calls = [];
  const room = new Room({
    token: "t", server: "http://127.0.0.1:9", video: false, audio: false,
    onMessage: (type, data, from, meta) => { calls.push({ type, data, from: from.id, path: meta.path }); },
  });
  // (A room made here, not by joinRoom: its events go out as they happen.)
  room.events.flush();
  room.roster.add({ id: FROM, identity: "remote" }, false);
  const remote = /** @type {any} */ (room.remotes.get(FROM));
  remote.inbox.expected = expected;
  return {
    room, remote, calls,
    /** A data channel message. @param {string} text */
    channel: (text) => room.scheduler.onChannelData(remote, text),
    /** A relay frame (already parsed, as Signaling hands it over). @param {unknown} msg */
    relay: (msg) => room.onFrame({ op: "message", from: FROM, msg }),
    /**
     * A relay frame whose `msg` is this JSON text; the server only forwards valid JSON.
     * @param {string} text
     */
    relayText: (text) => {
      const parsed = parseOrUndefined(text);
      if (parsed) room.onFrame({ op: "message", from: FROM, msg: parsed.value });
    },
    done: () => room.shutdown(new Error("end of run")),
  };
}

/**
 * Nothing happened: no onMessage, no state, no ack due.
 * @param {ReturnType<typeof harness>} h
 * @param {number} [expected]
 */
function assertUntouched(h, expected = 1) {
  assert.equal(h.calls.length, 0, "onMessage was called for an invalid envelope");
  assert.equal(h.remote.inbox.expected, expected);
  assert.equal(h.remote.inbox.held.size, 0);
  assert.equal(h.remote.inbox.chunks.size, 0);
  assert.equal(h.remote.ackDue, false, "an invalid envelope was acknowledged");
  assert.equal(h.remote.outbox.pending.length, 0);
}

/**
 * Feeds JSON text through both paths (fresh rooms); when it is not a valid envelope (or,
 * for the relay, a batch holding none), nothing at all must happen. Never throws.
 * @param {string} text
 */
function feedText(text) {
  const parsed = parseOrUndefined(text);
  const valid = parsed !== undefined && specValid(parsed.value);
  const relayValid = parsed !== undefined && anySpecValid(parsed.value);
  if (parsed) assert.equal(isEnvelope(parsed.value), valid, "isEnvelope disagrees with the protocol");
  const p2p = harness();
  p2p.channel(text);
  if (!valid) assertUntouched(p2p);
  p2p.done();
  const relay = harness();
  relay.relayText(text);
  if (!relayValid) assertUntouched(relay);
  relay.done();
  assertNotPolluted();
}

/**
 * Feeds a value through both paths: serialised on the data channel, as is on the relay.
 * @param {unknown} value
 */
function feedValue(value) {
  const valid = specValid(value);
  assert.equal(isEnvelope(value), valid, "isEnvelope disagrees with the protocol");
  const relay = harness();
  relay.relay(value);
  if (!anySpecValid(value)) assertUntouched(relay);
  relay.done();
  feedText(JSON.stringify(value));
}

// ---- generators --------------------------------------------------------------------------

/** Any UTF-16 code unit (lone surrogates included), plus a few characters JSON escapes. */
const unitArb = fc.oneof(
  fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c)),
  fc.constantFrom("😀", '"', "\\", "\n", "\u2028", "\u0000", "\ud800", "\udfff", "é"),
);
const textArb = fc.string({ unit: unitArb, maxLength: 40 });
const hostileKeyArb = fc.constantFrom(
  "__proto__", "constructor", "prototype", "polluted", "toString", "valueOf", "hasOwnProperty",
  "__defineGetter__", "isAdmin", "v", "k", "s", "t", "d", "i", "n", "p", "a", "e", "b",
);
const typeArb = fc.oneof(textArb, hostileKeyArb);
const seqArb = fc.oneof(fc.integer({ min: 1, max: 20 }), fc.integer({ min: 1, max: MAX_SAFE }), fc.constant(MAX_SAFE));

/** The optional epoch and base, each present or not. */
const stampArb = fc.record(
  { e: fc.oneof(fc.integer({ min: 0, max: 3 }), fc.integer({ min: 0, max: MAX_SAFE })), b: seqArb },
  { requiredKeys: [] },
);
/** @type {fc.Arbitrary<import("./delivery.js").WholeEnvelope>} */
const wholeArb = fc.tuple(fc.record({
  v: fc.constant(VERSION), k: fc.constant(/** @type {const} */ ("m")), s: seqArb, t: typeArb, d: fc.jsonValue(),
}), stampArb).map(([env, stamp]) => ({ ...env, ...stamp }));
/** @type {fc.Arbitrary<import("./delivery.js").ChunkEnvelope>} */
const chunkArb = fc.oneof(fc.integer({ min: 1, max: 4 }), fc.integer({ min: 1, max: MAX_CHUNKS })).chain((n) =>
  fc.record({
    v: fc.constant(VERSION), k: fc.constant(/** @type {const} */ ("c")), s: seqArb, t: typeArb,
    i: fc.integer({ min: 0, max: n - 1 }), n: fc.constant(n), p: textArb,
  }));
/** @type {fc.Arbitrary<import("./delivery.js").AckEnvelope>} */
const ackArb = fc.record({
  v: fc.constant(VERSION), k: fc.constant(/** @type {const} */ ("a")),
  a: fc.oneof(fc.integer({ min: 0, max: 20 }), fc.integer({ min: 0, max: MAX_SAFE })),
});
/** @type {fc.Arbitrary<import("./delivery.js").Envelope>} */
const envelopeArb = fc.oneof(wholeArb, chunkArb, ackArb);

/** @type {Record<string, string[]>} */
const FIELDS = { m: ["v", "k", "s", "t", "d"], c: ["v", "k", "s", "t", "i", "n", "p"], a: ["v", "k", "a"] };
const DELETE = Symbol("delete");

const smallJsonArb = fc.jsonValue({ maxDepth: 2 });
const notNumberArb = fc.oneof(
  fc.string({ maxLength: 6 }), fc.boolean(), fc.constant(null),
  fc.array(smallJsonArb, { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 3 }), smallJsonArb, { maxKeys: 3 }),
  fc.constantFrom("1", "0", "NaN", "Infinity", "-1", "", " 1", "1e3", "0x1"), fc.constant([1]), fc.constant({ v: 1 }),
);
const notStringArb = fc.oneof(
  fc.double(), fc.integer(), fc.boolean(), fc.constant(null),
  fc.array(smallJsonArb, { maxLength: 3 }), fc.dictionary(fc.string({ maxLength: 3 }), smallJsonArb, { maxKeys: 3 }),
  fc.constant(["m"]), fc.constant({ toString: "m" }),
);
/** Numbers that are not safe integers (after JSON: NaN and ±Infinity become null). */
const unsafeNumberArb = fc.oneof(
  fc.double().filter((x) => !Number.isSafeInteger(x)),
  fc.constantFrom(0.5, 1.5, -1.5, 2 ** 53, 2 ** 53 + 2, -(2 ** 53), 1e21, 1e308, -1e308, Number.MAX_VALUE, Number.MIN_VALUE, Number.EPSILON),
);
/** Integers outside [min, max] (safe ones). */
const intOutsideArb = (/** @type {number} */ min, /** @type {number} */ max) => {
  /** @type {fc.Arbitrary<number>[]} */
  const arbs = [];
  if (min > -MAX_SAFE) arbs.push(fc.integer({ min: -MAX_SAFE, max: min - 1 }), fc.constant(min - 1));
  if (max < MAX_SAFE) arbs.push(fc.integer({ min: max + 1, max: MAX_SAFE }), fc.constant(max + 1));
  return fc.oneof(...arbs);
};

/**
 * A value of the wrong type or range for one field of a valid envelope: never valid there.
 * @param {string} field
 * @param {import("./delivery.js").Envelope} env
 * @returns {fc.Arbitrary<unknown>}
 */
function wrongFor(field, env) {
  switch (field) {
    case "v":
      return fc.oneof(notNumberArb, fc.double().filter((x) => x !== 1), fc.constantFrom(0, 2, 1.0000000000000002, -1));
    case "k":
      return fc.oneof(
        notStringArb,
        fc.string({ maxLength: 3 }).filter((k) => !["m", "c", "a"].includes(k)),
        fc.constantFrom("M", "mm", " m", "m\u0000", "", "ack", "__proto__"),
        // Another kind lacks that kind's fields.
        fc.constantFrom("m", "c", "a").filter((k) => k !== env.k),
      );
    case "s":
      return fc.oneof(notNumberArb, unsafeNumberArb, intOutsideArb(1, MAX_SAFE));
    case "a":
      return fc.oneof(notNumberArb, unsafeNumberArb, intOutsideArb(0, MAX_SAFE));
    case "t":
    case "p":
      return notStringArb;
    case "i": {
      const n = /** @type {import("./delivery.js").ChunkEnvelope} */ (env).n;
      return fc.oneof(notNumberArb, unsafeNumberArb, intOutsideArb(0, n - 1));
    }
    case "n": {
      const i = /** @type {import("./delivery.js").ChunkEnvelope} */ (env).i;
      /** @type {fc.Arbitrary<unknown>[]} */
      const arbs = [notNumberArb, unsafeNumberArb, intOutsideArb(1, MAX_CHUNKS)];
      if (i >= 1) arbs.push(fc.integer({ min: 1, max: i })); // n <= i
      return fc.oneof(...arbs);
    }
    default: // d: any JSON is fine, only its absence is not
      return fc.constant(DELETE);
  }
}

/**
 * @param {Record<string, unknown>} env
 * @param {string} field
 * @param {unknown} value the new value, or DELETE
 */
function withField(env, field, value) {
  /** @type {Record<string, unknown>} */
  const out = {};
  for (const [k, v] of Object.entries(env)) {
    if (k !== field) out[k] = v;
    else if (value !== DELETE) out[k] = value;
  }
  return out;
}

/** A valid envelope with one field deleted or of the wrong type: never valid. */
const corruptArb = envelopeArb.chain((env) =>
  fc.constantFrom(...FIELDS[env.k]).chain((field) =>
    fc.oneof(fc.constant(DELETE), wrongFor(field, env)).map((bad) =>
      // Through JSON, as on the wire (NaN becomes null, and so on).
      JSON.parse(JSON.stringify(withField(/** @type {any} */ (env), field, bad))))));

/** Data for app messages: small JSON, and strings and objects long enough to be chunked, with
 * surrogate pairs, escapes and lone surrogates around the chunk boundaries. */
const bigDataArb = fc.tuple(
  fc.oneof(
    fc.integer({ min: CHUNK_CHARS - 10, max: CHUNK_CHARS + 2 }),
    fc.integer({ min: 2 * CHUNK_CHARS - 10, max: 2 * CHUNK_CHARS + 2 }),
    fc.integer({ min: 1, max: 3 * CHUNK_CHARS }),
  ),
  fc.string({ unit: unitArb, minLength: 1, maxLength: 12 }),
  fc.constantFrom("string", "object", "array"),
  smallJsonArb,
).map(([pad, tail, shape, extra]) => {
  const s = "x".repeat(pad) + tail;
  if (shape === "string") return s;
  if (shape === "object") return { __proto__x: extra, blob: s, constructor: extra };
  return [extra, s, tail];
});
const dataArb = fc.oneof({ weight: 5, arbitrary: fc.jsonValue() }, { weight: 1, arbitrary: bigDataArb });
const messagesArb = fc.array(fc.record({ type: typeArb, data: dataArb }), { minLength: 1, maxLength: 6 });

/**
 * The sender's side: sequence numbers from an Outbox starting at `start`, the envelopes of
 * each message, and what the recipient must deliver (data as its JSON says).
 * @param {{type: string, data: unknown}[]} msgs
 * @param {number} start
 */
function encodeAll(msgs, start) {
  const outbox = new Outbox();
  outbox.nextSeq = start;
  /** @type {import("./delivery.js").Envelope[]} */
  const envs = [];
  const expected = msgs.map(({ type, data }) => {
    const { json, bytes } = encodeData(data);
    const { entry } = outbox.add(type, json, bytes);
    envs.push(...envelopesOf(entry.seq, entry.type, entry.json));
    return { type, data: JSON.parse(json), seq: entry.seq };
  });
  return { envs, expected };
}

/** Messages, their envelopes in a random order with duplicates, and a path for each. */
const deliveryArb = fc.record({ msgs: messagesArb, start: fc.oneof(fc.constant(1), fc.integer({ min: 1, max: MAX_SAFE - 100 })) })
  .chain(({ msgs, start }) => {
    const { envs, expected } = encodeAll(msgs, start);
    const idx = envs.map((_, i) => i);
    return fc.record({
      envs: fc.constant(envs),
      expected: fc.constant(expected),
      start: fc.constant(start),
      order: fc.shuffledSubarray(idx, { minLength: idx.length, maxLength: idx.length }),
      dups: fc.array(fc.tuple(fc.nat({ max: idx.length - 1 }), fc.nat({ max: idx.length })), { maxLength: 4 }),
      paths: fc.array(fc.constantFrom("p2p", "relay"), { minLength: idx.length + 4, maxLength: idx.length + 4 }),
    });
  })
  .map(({ envs, expected, start, order, dups, paths }) => {
    const sequence = [...order];
    for (const [which, at] of dups) sequence.splice(Math.min(at, sequence.length), 0, which);
    return { expected, start, arrivals: sequence.map((i, j) => ({ env: envs[i], path: paths[j] })) };
  });

/**
 * Sends arrivals through a harness: data channel ones one by one as text, consecutive relay
 * ones batched into one frame (through JSON, as the server forwards them).
 * @param {ReturnType<typeof harness>} h
 * @param {{env: unknown, path: string}[]} arrivals
 */
function deliver(h, arrivals) {
  /** @type {unknown[]} */
  let batch = [];
  const flush = () => {
    if (batch.length === 0) return;
    h.relay(JSON.parse(JSON.stringify(batch.length === 1 ? batch[0] : batch)));
    batch = [];
  };
  for (const { env, path } of arrivals) {
    if (path === "relay") {
      batch.push(env);
    } else {
      flush();
      h.channel(JSON.stringify(env));
    }
  }
  flush();
}

// ---- 1. hostile input -------------------------------------------------------------------

test("arbitrary text and JSON on either path: no throw, no pollution, no onMessage", TIMEOUT, () => {
  fc.assert(fc.property(
    fc.oneof(
      fc.string({ unit: unitArb, maxLength: 200 }),
      fc.string({ unit: "binary", maxLength: 200 }),
      fc.json(),
      fc.anything().map((v) => String(JSON.stringify(v))),
      // Near misses: envelope-looking text.
      fc.tuple(envelopeArb, fc.string({ unit: unitArb, maxLength: 4 })).map(([e, junk]) => JSON.stringify(e) + junk),
      fc.tuple(fc.string({ unit: unitArb, maxLength: 4 }), envelopeArb).map(([junk, e]) => junk + JSON.stringify(e)),
    ),
    (text) => feedText(text),
  ), PARAMS);
});

test("arbitrary values as relay messages: no throw, no pollution, no onMessage", TIMEOUT, () => {
  // A valid envelope in the wrong place: msg is one envelope or an array of them, nothing else.
  const misplaced = fc.tuple(envelopeArb, fc.nat({ max: 5 })).map(([e, how]) => [
    [[e]], [[[e]]], [[e], []], { msg: e }, { 0: e, length: 1 }, JSON.stringify(e),
  ][how]);
  fc.assert(fc.property(
    fc.oneof(
      fc.anything({
        key: fc.oneof(fc.string({ maxLength: 4 }), hostileKeyArb),
        withBoxedValues: true, withMap: true, withSet: true, withObjectString: true, withNullPrototype: true,
        withBigInt: true, withDate: true, withTypedArray: true, withSparseArray: true,
      }),
      misplaced,
    ),
    (value) => {
      assert.equal(isEnvelope(value), specValid(value), "isEnvelope disagrees with the protocol");
      const h = harness();
      h.relay(value);
      if (!anySpecValid(value)) assertUntouched(h);
      h.done();
      assertNotPolluted();
    },
  ), PARAMS);
});

test("deeply nested input: no throw, nothing delivered unless it sits in d", TIMEOUT, () => {
  const shapes = /** @type {const} */ ([["[", "]"], ['{"a":', "}"], ['{"__proto__":', "}"], ['{"v":1,"k":"m","s":1,"t":"x","d":', "}"]]);
  fc.assert(fc.property(
    fc.oneof({ weight: 9, arbitrary: fc.integer({ min: 1, max: 1000 }) }, { weight: 1, arbitrary: fc.integer({ min: 1000, max: 20_000 }) }),
    fc.constantFrom(...shapes),
    fc.constantFrom("whole", "batch", "v", "k", "s", "t", "i", "n", "p", "a", "d"),
    (depth, [open, close], where) => {
      const nested = open.repeat(depth) + "1" + close.repeat(depth);
      /** @type {Record<string, string>} */
      const text = {
        whole: nested,
        batch: `[${nested},${nested}]`,
        v: `{"v":${nested},"k":"m","s":1,"t":"x","d":1}`,
        k: `{"v":1,"k":${nested},"s":1,"t":"x","d":1}`,
        s: `{"v":1,"k":"m","s":${nested},"t":"x","d":1}`,
        t: `{"v":1,"k":"m","s":1,"t":${nested},"d":1}`,
        i: `{"v":1,"k":"c","s":1,"t":"x","i":${nested},"n":1,"p":"1"}`,
        n: `{"v":1,"k":"c","s":1,"t":"x","i":0,"n":${nested},"p":"1"}`,
        p: `{"v":1,"k":"c","s":1,"t":"x","i":0,"n":1,"p":${nested}}`,
        a: `{"v":1,"k":"a","a":${nested}}`,
        d: `{"v":1,"k":"m","s":1,"t":"deep","d":${nested}}`,
      };
      if (where !== "d") {
        feedText(text[where]);
        return;
      }
      // A valid message whatever its data: delivered once, on either path.
      for (const send of ["channel", "relayText"]) {
        const h = harness();
        /** @type {any} */ (h)[send](text.d);
        assert.equal(h.calls.length, 1);
        assert.equal(h.calls[0].type, "deep");
        h.done();
      }
      assertNotPolluted();
    },
  ), PARAMS);
});

test("huge numbers and NaN-like text in numeric fields: no throw, valid only if the protocol says so", TIMEOUT, () => {
  const token = fc.oneof(
    fc.constantFrom(
      "NaN", "-NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1e308", "1e-400", "-0", "0", "0.0",
      "9007199254740991", "9007199254740992", "9007199254740993", "-9007199254740993", "1.0", "1e0", "10e-1",
      "1.0000000000000001", "0.9999999999999999", "0.99999999999999999", "0x1", "01", "1_0", "+1", ".5", "5.",
      '"NaN"', '"1"', '"Infinity"', "true", "null", "[]", "{}", "undefined", "[1]", '{"valueOf":1}', "1 ", " 1",
    ),
    fc.double().map(String),
    fc.bigInt({ min: -(10n ** 400n), max: 10n ** 400n }).map(String),
    fc.tuple(fc.integer(), fc.integer({ min: -400, max: 400 })).map(([m, e]) => `${m}e${e}`),
    fc.integer({ min: -3, max: 70 }).map(String),
  );
  const templates = [
    (/** @type {string} */ x) => `{"v":${x},"k":"m","s":1,"t":"x","d":1}`,
    (/** @type {string} */ x) => `{"v":1,"k":"m","s":${x},"t":"x","d":1}`,
    (/** @type {string} */ x) => `{"v":1,"k":"m","s":1,"t":${x},"d":1}`,
    (/** @type {string} */ x) => `{"v":1,"k":"m","s":1,"t":"x","d":${x}}`,
    (/** @type {string} */ x) => `{"v":1,"k":"c","s":${x},"t":"x","i":0,"n":1,"p":"1"}`,
    (/** @type {string} */ x) => `{"v":1,"k":"c","s":1,"t":"x","i":${x},"n":2,"p":"1"}`,
    (/** @type {string} */ x) => `{"v":1,"k":"c","s":1,"t":"x","i":0,"n":${x},"p":"1"}`,
    (/** @type {string} */ x) => `{"v":1,"k":"a","a":${x}}`,
    (/** @type {string} */ x) => `[${x},{"v":1,"k":"a","a":${x}}]`,
  ];
  fc.assert(fc.property(token, fc.nat({ max: templates.length - 1 }), (x, which) => {
    feedText(templates[which](x));
  }), PARAMS);
});

test("prototype-pollution keys anywhere: no pollution, data delivered exactly as its JSON says", TIMEOUT, () => {
  // JSON text built by hand, so that "__proto__" is a key of the text (JSON.parse makes it an
  // own property) and duplicate keys occur.
  const hostileJson = fc.letrec((tie) => ({
    node: fc.oneof(
      { depthSize: "small", withCrossShrink: true },
      smallJsonArb.map((v) => JSON.stringify(v)),
      fc.constantFrom('{"polluted":true}', '{"prototype":{"polluted":1}}', '{"__proto__":{"polluted":1,"isAdmin":true}}'),
      fc.array(tie("node"), { maxLength: 3 }).map((xs) => `[${xs.join(",")}]`),
      fc.array(fc.tuple(hostileKeyArb, tie("node")), { maxLength: 4 })
        .map((kvs) => `{${kvs.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(",")}}`),
    ),
  })).node;
  fc.assert(fc.property(
    fc.oneof(wholeArb, chunkArb, ackArb),
    fc.array(fc.tuple(hostileKeyArb, hostileJson), { maxLength: 4 }),
    fc.boolean(),
    hostileJson,
    fc.array(fc.nat({ max: 40 }), { maxLength: 4 }),
    (env, extras, extrasFirst, data, cuts) => {
      // 1. The envelope with hostile members before or after its own, d replaced by hostile JSON.
      const own = Object.entries(env).map(([k, v]) => `${JSON.stringify(k)}:${k === "d" ? data : JSON.stringify(v)}`);
      const more = extras.map(([k, v]) => `${JSON.stringify(k)}:${v}`);
      const text = `{${(extrasFirst ? [...more, ...own] : [...own, ...more]).join(",")}}`;
      const parsed = /** @type {{value: any}} */ (parseOrUndefined(text)).value;
      feedText(text);
      if (specValid(parsed) && parsed.k === "m") {
        const h = harness(parsed.s);
        h.channel(text);
        if ((parsed.b ?? 1) > parsed.s) {
          // Below its sender's base: delivered already, by the protocol's word; dropped.
          assert.equal(h.calls.length, 0);
        } else {
          assert.equal(h.calls.length, 1);
          assert.deepEqual(h.calls[0].data, parsed.d);
          assert.equal(h.calls[0].type, parsed.t);
        }
        h.done();
      }
      // 2. The hostile JSON as the data of a message in chunks of arbitrary sizes.
      const pieces = [];
      let rest = data;
      for (const c of cuts) {
        pieces.push(rest.slice(0, c));
        rest = rest.slice(c);
      }
      pieces.push(rest);
      const h = harness();
      pieces.forEach((p, i) => h.channel(JSON.stringify({ v: 1, k: "c", s: 1, t: "__proto__", i, n: pieces.length, p })));
      assert.equal(h.calls.length, 1);
      assert.equal(h.calls[0].type, "__proto__");
      assert.deepEqual(h.calls[0].data, JSON.parse(data));
      h.done();
      assertNotPolluted();
    },
  ), PARAMS);
});

test("a valid envelope with one field of the wrong type, or missing, is ignored", TIMEOUT, () => {
  fc.assert(fc.property(corruptArb, (bad) => {
    assert.equal(specValid(bad), false, "generator produced a valid envelope");
    assert.equal(isEnvelope(bad), false, "isEnvelope accepted a corrupt envelope");
    const at = typeof bad.s === "number" && Number.isSafeInteger(bad.s) && bad.s >= 1 ? bad.s : 1;
    for (const send of ["channel", "relay"]) {
      // The inbox waits for exactly this sequence number: an accepted envelope would deliver.
      const h = harness(at);
      if (send === "channel") h.channel(JSON.stringify(bad));
      else h.relay(bad);
      assertUntouched(h, at);
      h.done();
    }
    assertNotPolluted();
  }), PARAMS);
});

test("truncated valid envelopes and batches are ignored", TIMEOUT, () => {
  fc.assert(fc.property(
    fc.array(envelopeArb, { minLength: 1, maxLength: 3 }),
    fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
    fc.nat(),
    (envs, cutAt, keep) => {
      const env = envs[0];
      // The text cut short: never JSON, dropped on the data channel (the server would refuse it).
      const text = JSON.stringify(envs.length === 1 ? env : envs);
      const cut = text.slice(0, Math.floor(cutAt * text.length));
      const h = harness();
      h.channel(cut);
      assertUntouched(h);
      h.done();
      feedText(cut);
      // Its fields cut short (a prefix of its required ones): valid only with every required
      // field of its kind (the epoch and base are optional).
      const required = Object.entries(env).filter(([k]) => k !== "e" && k !== "b");
      const fewer = Object.fromEntries(required.slice(0, keep % required.length));
      assert.equal(specValid(fewer), false);
      feedValue(fewer);
    },
  ), PARAMS);
});

test("a valid envelope with one field mutated: isEnvelope follows the protocol, onMessage only when valid", TIMEOUT, () => {
  const mutation = fc.oneof(
    fc.record({ op: fc.constant("set"), value: fc.oneof(fc.jsonValue(), notNumberArb, unsafeNumberArb, fc.integer({ min: -3, max: MAX_CHUNKS + 3 })) }),
    fc.record({ op: fc.constant("delete") }),
    fc.record({ op: fc.constant("add"), key: fc.oneof(hostileKeyArb, fc.string({ maxLength: 3 })), value: fc.jsonValue() }),
    fc.record({ op: fc.constant("rename"), key: fc.oneof(hostileKeyArb, fc.string({ maxLength: 3 }), fc.constantFrom("V", "s ", "d\u0000")) }),
  );
  fc.assert(fc.property(envelopeArb, fc.nat(), mutation, (env, pick, m) => {
    const keys = Object.keys(env);
    const field = keys[pick % keys.length];
    /** @type {Record<string, unknown>} */
    let out;
    if (m.op === "set") out = withField(/** @type {any} */ (env), field, m.value);
    else if (m.op === "delete") out = withField(/** @type {any} */ (env), field, DELETE);
    else if (m.op === "add") out = { ...env, [/** @type {string} */ (m.key)]: m.value };
    else out = Object.fromEntries(Object.entries(env).map(([k, v]) => [k === field ? /** @type {string} */ (m.key) : k, v]));
    const wire = JSON.parse(JSON.stringify(out));
    feedValue(wire);
  }), PARAMS);
});

test("a hostile sender's well-formed envelopes: the inbox delivers in order, once, and holds nothing it has passed", TIMEOUT, () => {
  const s = fc.integer({ min: 1, max: 8 });
  const hostileEnv = fc.oneof(
    fc.record({ v: fc.constant(1), k: fc.constant("m"), s, t: fc.constantFrom("x", "y"), d: smallJsonArb }),
    fc.integer({ min: 1, max: 3 }).chain((n) => fc.record({
      v: fc.constant(1), k: fc.constant("c"), s, t: fc.constantFrom("x", "y"),
      i: fc.integer({ min: 0, max: n - 1 }), n: fc.constant(n),
      p: fc.oneof(fc.constantFrom("", "1", "[", "]", '"', "{}", "{", "}", "null", "2"), textArb),
    })),
  );
  fc.assert(fc.property(fc.array(hostileEnv, { minLength: 1, maxLength: 40 }), (envs) => {
    const inbox = new Inbox();
    /** @type {number[]} */
    const seqs = [];
    for (const raw of envs) {
      const env = JSON.parse(JSON.stringify(raw));
      assert.ok(isEnvelope(env) && env.k !== "a");
      const before = inbox.expected;
      const out = inbox.receive(env);
      seqs.push(...out.map((m) => m.seq));
      assert.deepEqual(out.map((m) => m.seq), Array.from({ length: inbox.expected - before }, (_, j) => before + j));
      for (const key of [...inbox.held.keys(), ...inbox.chunks.keys()]) {
        assert.ok(key >= inbox.expected && key < inbox.expected + MAX_AHEAD,
          `the inbox holds state for message ${key} while expecting ${inbox.expected}`);
      }
    }
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, j) => j + 1), "delivered out of order or twice");
    assert.equal(inbox.ackValue, seqs.length);
    assertNotPolluted();
  }), PARAMS);
});

test("real messages mixed with corrupt envelopes on both paths: exactly the real ones arrive", TIMEOUT, () => {
  fc.assert(fc.property(
    deliveryArb,
    fc.array(fc.tuple(corruptArb, fc.nat(), fc.constantFrom("p2p", "relay")), { maxLength: 8 }),
    ({ expected, start, arrivals }, junk) => {
      const mixed = [...arrivals];
      for (const [env, at, path] of junk) mixed.splice(at % (mixed.length + 1), 0, { env, path });
      const h = harness(start);
      deliver(h, mixed);
      assert.deepEqual(h.calls.map((c) => ({ type: c.type, data: c.data })), expected.map(({ type, data }) => ({ type, data })));
      assert.equal(h.remote.inbox.ackValue, start + expected.length - 1);
      assert.equal(h.remote.inbox.held.size, 0);
      assert.equal(h.remote.inbox.chunks.size, 0);
      h.done();
      assertNotPolluted();
    },
  ), PARAMS);
});

// ---- 2. round trips ----------------------------------------------------------------------

test("every valid envelope survives the wire: same kind, sequence, type and data", TIMEOUT, () => {
  fc.assert(fc.property(envelopeArb, (env) => {
    const back = JSON.parse(JSON.stringify(env));
    assert.ok(specValid(back));
    assert.ok(isEnvelope(back), "isEnvelope refused a valid envelope");
    assert.equal(back.k, env.k);
    if (env.k === "a") {
      assert.equal(back.a, env.a);
      return;
    }
    assert.equal(back.s, env.s);
    assert.equal(back.t, env.t);
    if (env.k === "m") {
      // JSON has no -0: the data arrives as its JSON text says.
      assert.deepEqual(back.d, JSON.parse(JSON.stringify(env.d)));
    } else {
      assert.deepEqual([back.i, back.n, back.p], [env.i, env.n, env.p]);
    }
  }), PARAMS);
});

test("messages round-trip: encode, any arrival order with duplicates, decode gives type, data and sequence", TIMEOUT, () => {
  fc.assert(fc.property(deliveryArb, ({ expected, start, arrivals }) => {
    // The pure decoder: JSON text, isEnvelope, Inbox.receive (which reports sequence numbers).
    const inbox = new Inbox();
    inbox.expected = start;
    const got = arrivals.flatMap(({ env }) => {
      const decoded = JSON.parse(JSON.stringify(env));
      assert.ok(isEnvelope(decoded) && decoded.k !== "a");
      return inbox.receive(decoded);
    });
    assert.deepEqual(got, expected);
    assert.equal(inbox.chunks.size, 0);
    // The whole path, both transports mixed: onMessage in order, exactly once each.
    const h = harness(start);
    deliver(h, arrivals);
    assert.deepEqual(h.calls.map((c) => ({ type: c.type, data: c.data })), expected.map(({ type, data }) => ({ type, data })));
    for (const c of h.calls) {
      assert.equal(c.from, FROM);
      assert.ok(c.path === "p2p" || c.path === "relay");
    }
    h.done();
  }), PARAMS);
});
