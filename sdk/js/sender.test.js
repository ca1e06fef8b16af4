// @ts-check
// The sender's timing decisions (sender.js), with a clock of the test's own.
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  tickPeer, retransmitTimeout, relayFrames, RETRANSMIT_MS, RETRANSMIT_MAX_MS, RETRANSMIT_BYTES_PER_TICK,
} from "./sender.js";
import { envelopesOf } from "./delivery.js";

/**
 * A pending message as the outbox keeps it.
 * @param {Partial<import("./delivery.js").Pending>} fields
 * @returns {import("./delivery.js").Pending}
 */
const entry = (fields) => /** @type {any} */ ({
  seq: 0, type: "t", json: "1", bytes: 100, via: "relay", sentAt: 0, tries: 0, addedAt: 0,
  resolve() {}, reject() {}, ...fields,
});
const closedPath = { linkOpen: false, buffered: 0, lastBuffered: 0, lastProgressAt: 0 };
const BOUND = 60000;

/** @param {ReturnType<typeof tickPeer>} d */
const dueSeqs = (d) => (d.expire ? null : d.due.map((e) => e.seq));

test("never-sent messages go at once; a relayed one is sent again after 1.5 s, then twice as late each time, up to the cap", () => {
  const e = entry({ seq: 1, sentAt: 0 });
  assert.deepEqual(dueSeqs(tickPeer([e], closedPath, 10, BOUND)), [1]);
  e.sentAt = 10;
  assert.deepEqual(dueSeqs(tickPeer([e], closedPath, 10 + RETRANSMIT_MS - 1, BOUND)), []);
  assert.deepEqual(dueSeqs(tickPeer([e], closedPath, 10 + retransmitTimeout(e), BOUND)), [1]);
  assert.equal(e.tries, 1, "a retransmission counts a try");
  e.sentAt = 5000;
  assert.deepEqual(dueSeqs(tickPeer([e], closedPath, 5000 + 2 * RETRANSMIT_MS - 1, BOUND)), [], "the second wait doubles");
  e.tries = 20;
  assert.equal(retransmitTimeout(e), RETRANSMIT_MAX_MS + e.bytes / 1000, "capped");
});

test("a message on an open data channel that makes progress is not sent again; one on a stalled channel is", () => {
  const e = entry({ seq: 1, via: "p2p", sentAt: 1000 });
  const later = 1000 + retransmitTimeout(e) + 1;
  // The channel drains (bufferedAmount falling): progress now, so not stalled.
  const draining = { linkOpen: true, buffered: 10, lastBuffered: 500, lastProgressAt: 0 };
  const d = tickPeer([e], draining, later, BOUND);
  assert.deepEqual(dueSeqs(d), []);
  assert.ok(!d.expire && d.lastProgressAt === later && d.lastBuffered === 10);
  // No progress for a whole timeout: retransmitted (over the relay, by the room).
  const stuck = { linkOpen: true, buffered: 10, lastBuffered: 10, lastProgressAt: 1000 };
  assert.deepEqual(dueSeqs(tickPeer([e], stuck, later, BOUND)), [1]);
});

test("a large message gets the time the slowest path needs to carry it", () => {
  const big = entry({ seq: 1, bytes: 1_000_000, sentAt: 1 });
  assert.equal(retransmitTimeout(big), RETRANSMIT_MS + 1000);
  assert.deepEqual(dueSeqs(tickPeer([big], closedPath, 1 + RETRANSMIT_MS + 500, BOUND)), []);
});

test("retransmissions per tick are bounded by bytes, and at least one goes", () => {
  const size = RETRANSMIT_BYTES_PER_TICK / 4;
  const many = Array.from({ length: 10 }, (_, i) => entry({ seq: i, bytes: size, sentAt: 1 }));
  assert.deepEqual(dueSeqs(tickPeer(many, closedPath, 50000, BOUND)), [0, 1, 2, 3]);
  const huge = [entry({ seq: 9, bytes: RETRANSMIT_BYTES_PER_TICK * 8, sentAt: 1 })];
  assert.deepEqual(dueSeqs(tickPeer(huge, closedPath, 50000, BOUND)), [9]);
});

test("past the delivery bound the oldest message (and so every later one) expires", () => {
  const pending = [entry({ seq: 1, addedAt: 0, sentAt: 5 }), entry({ seq: 2, addedAt: 59000, sentAt: 59000 })];
  assert.equal(tickPeer(pending, closedPath, BOUND - 1, BOUND).expire, false);
  assert.equal(tickPeer(pending, closedPath, BOUND, BOUND).expire, true);
  assert.equal(tickPeer([], closedPath, 10 * BOUND, BOUND).expire, false, "nothing pending, nothing expires");
});

/** A message of `chars` characters of JSON, as its envelopes. @param {number} seq @param {number} chars */
const message = (seq, chars) => {
  const json = JSON.stringify("x".repeat(Math.max(0, chars - 2)));
  return { json, envs: envelopesOf(seq, "t", json) };
};

test("relay frames: messages in order, several to a frame under the cap, never an empty frame", () => {
  const small = [1, 2, 3].map((s) => message(s, 100));
  const frames = relayFrames(small, 1000);
  assert.equal(frames.length, 1);
  assert.deepEqual(frames[0].envs.map((e) => e.s), [1, 2, 3]);
  assert.equal(frames[0].first, 0);
  // A cap that fits two: the third starts a new frame, which names it as its first message.
  const two = relayFrames(small, 2 * 200 + 50);
  assert.deepEqual(two.map((f) => f.envs.map((e) => e.s)), [[1, 2], [3]]);
  assert.deepEqual(two.map((f) => f.first), [0, 2]);
  // A message larger than the cap still goes, alone.
  const big = relayFrames([message(1, 5000), message(2, 10)], 1000);
  assert.deepEqual(big.map((f) => f.envs.length), [1, 1]);
  assert.deepEqual(relayFrames([], 1000), []);
});

test("relay frames: a chunked message spans frames in chunk order; a frame names the message it starts in", () => {
  const chunked = message(7, 200_000); // several chunks
  assert.ok(chunked.envs.length > 1);
  const frames = relayFrames([message(6, 10), chunked, message(8, 10)], 70_000);
  const flat = frames.flatMap((f) => f.envs.map((e) => [e.s, e.k === "c" ? e.i : -1]));
  assert.deepEqual(flat, [[6, -1], ...chunked.envs.map((e) => [7, /** @type {any} */ (e).i]), [8, -1]]);
  for (const f of frames) {
    assert.ok(f.envs.length > 0);
    const firstSeq = f.envs[0].s;
    assert.equal([6, 7, 8][f.first], firstSeq, "first names the message of the frame's first envelope");
  }
});
