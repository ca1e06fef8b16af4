// @ts-check
// Unit tests of the pure delivery layer (node --test), including the shared envelope vectors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  CHUNK_CHARS, Inbox, MAX_MESSAGE_BYTES, Outbox, encodeData, envelopesOf, isEnvelope,
} from "./delivery.js";

const vectors = JSON.parse(readFileSync(new URL("../../tests/vectors/envelopes.json", import.meta.url), "utf8"));

test("shared envelope vectors", () => {
  for (const v of vectors.valid) assert.ok(isEnvelope(v.envelope), v.name);
  for (const v of vectors.invalid) assert.ok(!isEnvelope(v.envelope), v.name);
});

test("shared client frame vectors carry envelopes the server accepts as send.msg", () => {
  const frames = JSON.parse(readFileSync(new URL("../../tests/vectors/client-frames.json", import.meta.url), "utf8"));
  assert.ok(frames.valid.some((/** @type {{text: string}} */ f) => JSON.parse(f.text).op === "send"));
  for (const v of vectors.valid) {
    // The envelope travels as the raw `msg` of a send frame: valid JSON, an object.
    const frame = JSON.parse(JSON.stringify({ op: "send", msg: v.envelope }));
    assert.deepEqual(frame.msg, v.envelope);
  }
});

test("messages up to 1 MiB are accepted, larger refused before anything is sent", () => {
  const fits = "x".repeat(MAX_MESSAGE_BYTES - 2); // JSON adds the two quotes
  assert.equal(encodeData(fits).bytes, MAX_MESSAGE_BYTES);
  assert.throws(() => encodeData(fits + "x"), RangeError);
  // Bytes, not characters: é is two bytes in UTF-8.
  assert.throws(() => encodeData("é".repeat(MAX_MESSAGE_BYTES / 2)), RangeError);
});

test("large messages are chunked and reassembled", () => {
  const data = { blob: "y".repeat(3 * CHUNK_CHARS), n: [1, 2, 3] };
  const { json } = encodeData(data);
  const envs = envelopesOf(7, "big", json);
  assert.equal(envs.length, 4);
  for (const e of envs) {
    assert.ok(isEnvelope(e));
    assert.ok(JSON.stringify(e).length < CHUNK_CHARS + 200);
  }
  const inbox = new Inbox();
  inbox.expected = 7;
  // Out of order and duplicated chunks still give exactly one message.
  const order = [envs[2], envs[0], envs[2], envs[3], envs[1], envs[1]];
  const out = order.flatMap((e) => inbox.receive(/** @type {any} */ (e)));
  assert.equal(out.length, 1);
  assert.deepEqual(out[0].data, data);
  assert.equal(inbox.ackValue, 7);
});

test("the inbox delivers in order exactly once whatever the arrival order", () => {
  const inbox = new Inbox();
  const env = (/** @type {number} */ s) => /** @type {const} */ ({ v: 1, k: "m", s, t: "t", d: s });
  const arrivals = [3, 1, 1, 5, 2, 4, 3, 6, 2];
  const got = arrivals.flatMap((s) => inbox.receive(env(s)).map((m) => m.data));
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6]);
  assert.equal(inbox.ackValue, 6);
});

test("the outbox settles on cumulative acks and fails the rest when the peer is gone", async () => {
  const out = new Outbox();
  const a = out.add("t", "1", 1);
  const b = out.add("t", "2", 1);
  const c = out.add("t", "3", 1);
  assert.deepEqual([a.entry.seq, b.entry.seq, c.entry.seq], [1, 2, 3]);
  assert.equal(out.ack(2), 2);
  assert.equal(out.ack(2), 0, "acks are idempotent");
  await a.done;
  await b.done;
  out.fail(new Error("gone"));
  await assert.rejects(c.done, /gone/);
  assert.equal(out.pending.length, 0);
  assert.equal(out.bytes, 0);
});

test("a hostile sender cannot make the inbox allocate or hold without bound", () => {
  const inbox = new Inbox();
  // A chunk claiming a billion parts is not an envelope at all.
  assert.ok(!isEnvelope({ v: 1, k: "c", s: 1, t: "x", i: 0, n: 1e9, p: "" }));
  // Messages far ahead of the next expected one are dropped, not held.
  assert.deepEqual(inbox.receive({ v: 1, k: "m", s: 1e6, t: "x", d: 1 }), []);
  assert.equal(inbox.held.size, 0);
  // Chunks that do not join into JSON are dropped without throwing.
  assert.deepEqual(inbox.receive({ v: 1, k: "c", s: 1, t: "x", i: 0, n: 1, p: "{not json" }), []);
});
