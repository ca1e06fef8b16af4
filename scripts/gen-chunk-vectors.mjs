// @ts-check
// Writes tests/vectors/chunks.json from the browser SDK's own delivery layer (sdk/js/delivery.js):
// how messages are cut into envelopes (at UTF-16 offsets, a surrogate pair split between two
// chunks included) and what an Inbox delivers from a sequence of envelopes (a sender that
// rejoins with the same id and a new epoch). The native client's tests check that it writes the
// same bytes and delivers the same (crates/bluecam-client/tests/vectors.rs); the SDK's unit tests
// check that this file is what the SDK does now (sdk/js/delivery.test.js).
//
// Usage: node scripts/gen-chunk-vectors.mjs [--check]
import { readFileSync, writeFileSync } from "node:fs";
import { CHUNK_CHARS, Inbox, envelopesOf } from "../sdk/js/delivery.js";

const out = new URL("../tests/vectors/chunks.json", import.meta.url);
const EPOCH = 1764550000000000;

/** @param {string} name @param {string} type @param {unknown} data @param {number} seq @param {number} base */
function cut(name, type, data, seq, base) {
  const json = JSON.stringify(data);
  const envelopes = envelopesOf(seq, type, json, { epoch: EPOCH, base }).map((e) => JSON.stringify(e));
  return { name, seq, type, epoch: EPOCH, base, json, jsonUtf16Length: json.length, envelopes };
}

const straddle = "a".repeat(CHUNK_CHARS - 2) + "😀" + "b".repeat(8);
const nonAscii = "é€😀中".repeat(10_000).slice(0, 40_000);
// (Each message's base is its own sequence number: everything before it was acknowledged, so a
// fresh Inbox delivers it at once.)
const chunking = [
  cut("short string", "chat", "hi", 1, 1),
  cut("object with escapes", "t", { q: "a\"b\\c\n\u0001", e: "é" }, 2, 2),
  cut("exactly one chunk's length: whole", "big", "x".repeat(CHUNK_CHARS - 2), 3, 3),
  cut("one more than a chunk's length: two chunks", "big", "x".repeat(CHUNK_CHARS - 1), 4, 4),
  cut("a chunk boundary inside a UTF-16 surrogate pair", "big", straddle, 5, 5),
  cut("about 100 KB of non-ASCII text (UTF-8)", "big", nonAscii, 6, 6),
];

/** @param {string} name @param {object[]} envelopes */
function inbox(name, envelopes) {
  const box = new Inbox();
  const steps = envelopes.map((env) => {
    const delivered = box.receive(/** @type {any} */ (env)).map((m) => ({ seq: m.seq, type: m.type, data: m.data }));
    return { envelope: JSON.stringify(env), delivered, ack: JSON.stringify(box.ack()) };
  });
  return { name, steps };
}
const m = (/** @type {number} */ s, /** @type {number} */ e, /** @type {number} */ b, /** @type {unknown} */ d) => ({ v: 1, k: "m", s, t: "t", d, e, b });
const inboxes = [
  inbox("in order, a duplicate, a gap filled", [m(1, EPOCH, 1, "a"), m(1, EPOCH, 1, "a"), m(3, EPOCH, 1, "c"), m(2, EPOCH, 1, "b")]),
  inbox("a rejoin with the same id: a new epoch starts over, the old one is stale", [
    m(1, EPOCH, 1, "a"), m(2, EPOCH, 1, "b"), m(4, EPOCH, 1, "held, never delivered"),
    m(1, EPOCH + 1000, 1, "after the rejoin"), m(3, EPOCH, 1, "stale"), m(2, EPOCH + 1000, 1, "then"),
  ]),
  inbox("a sender's base skips what was delivered to an earlier inbox", [m(5, EPOCH, 5, "five"), m(6, EPOCH, 5, "six")]),
  inbox("a chunked message whose chunks come out of order", [
    { v: 1, k: "c", s: 1, t: "big", i: 1, n: 2, p: "\ude00\"", e: EPOCH, b: 1 },
    { v: 1, k: "c", s: 1, t: "big", i: 0, n: 2, p: "\"x\ud83d", e: EPOCH, b: 1 },
  ]),
];

const text = JSON.stringify({ chunkChars: CHUNK_CHARS, chunking, inboxes }, null, 1) + "\n";
if (process.argv.includes("--check")) {
  if (readFileSync(out, "utf8") !== text) {
    console.error("tests/vectors/chunks.json is not what the SDK does: run node scripts/gen-chunk-vectors.mjs");
    process.exit(1);
  }
} else {
  writeFileSync(out, text);
}
