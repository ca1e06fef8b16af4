// @ts-check
// Unit tests of the pure delivery layer (node --test), including the shared envelope vectors,
// and of the relay frames a Room (bluecam.js) writes around them.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  CHUNK_CHARS, Inbox, MAX_MESSAGE_BYTES, Outbox, encodeData, envelopesOf, isEnvelope,
} from "./delivery.js";
import { Room } from "./bluecam.js";

const vectors = JSON.parse(readFileSync(new URL("../../tests/vectors/envelopes.json", import.meta.url), "utf8"));

test("shared envelope vectors", () => {
  for (const v of vectors.valid) assert.ok(isEnvelope(v.envelope), v.name);
  for (const v of vectors.invalid) assert.ok(!isEnvelope(v.envelope), v.name);
});

test("the shared chunk vectors are what this SDK writes and delivers (the native client checks the same file)", () => {
  // node scripts/gen-chunk-vectors.mjs writes them from this very module.
  const chunks = JSON.parse(readFileSync(new URL("../../tests/vectors/chunks.json", import.meta.url), "utf8"));
  assert.equal(chunks.chunkChars, CHUNK_CHARS);
  for (const c of chunks.chunking) {
    const got = envelopesOf(c.seq, c.type, c.json, { epoch: c.epoch, base: c.base }).map((e) => JSON.stringify(e));
    assert.deepEqual(got, c.envelopes, c.name);
  }
  for (const c of chunks.inboxes) {
    const box = new Inbox();
    for (const step of c.steps) {
      const got = box.receive(JSON.parse(step.envelope)).map((m) => ({ seq: m.seq, type: m.type, data: m.data }));
      assert.deepEqual(got, step.delivered, c.name);
      assert.equal(JSON.stringify(box.ack()), step.ack, c.name);
    }
  }
});

/**
 * The server's rules for a `send` frame (docs/protocol.md §4.3 and §6), written from the
 * document: a JSON object, `op` "send", `to` absent, null or an array of strings, `msg` present
 * and not null, `ref` absent, null or a non-negative integer, `token` absent, null or a string.
 * @param {string} text
 */
function serverAcceptsSend(text) {
  let f;
  try {
    f = JSON.parse(text);
  } catch {
    return false;
  }
  if (typeof f !== "object" || f === null || Array.isArray(f) || f.op !== "send") return false;
  const absent = (/** @type {unknown} */ x) => x === undefined || x === null;
  if (!absent(f.to) && !(Array.isArray(f.to) && f.to.every((/** @type {unknown} */ id) => typeof id === "string"))) return false;
  if (absent(f.msg)) return false;
  if (!absent(f.ref) && !(Number.isSafeInteger(f.ref) && f.ref >= 0)) return false;
  return absent(f.token) || typeof f.token === "string";
}

/** @param {string} name */
const vector = (name) => {
  const v = vectors.valid.find((/** @type {{name: string}} */ x) => x.name === name);
  assert.ok(v, `no envelope vector named ${name}`);
  return v.envelope;
};

test("the relay frames a Room writes carry the envelopes as send.msg, exactly as the protocol spells them", async (t) => {
  // The rule above agrees with the server's own vectors for every send frame in them.
  const frames = JSON.parse(readFileSync(new URL("../../tests/vectors/client-frames.json", import.meta.url), "utf8"));
  /** @param {{text: string}} f */
  const isSend = (f) => { try { return JSON.parse(f.text)?.op === "send"; } catch { return false; } };
  const validSends = frames.valid.filter(isSend);
  const invalidSends = frames.invalid.filter(isSend);
  assert.ok(validSends.length >= 10 && invalidSends.length >= 5);
  for (const f of validSends) assert.ok(serverAcceptsSend(f.text), `the server accepts: ${f.name}`);
  for (const f of invalidSends) assert.ok(!serverAcceptsSend(f.text), `the server refuses: ${f.name}`);

  // A Room with one peer and a WebSocket that records what it would write.
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const BOB = "hN4sJ8dF1gKq0ZbY";
  /** @type {{type: string, data: unknown}[]} */
  const got = [];
  const room = new Room({
    token: "t", server: "http://127.0.0.1:9", video: false, audio: false,
    onMessage: (type, data) => { got.push({ type, data }); },
  });
  // (A room made here, not by joinRoom: its events go out as they happen.)
  room.events.flush();
  /** @type {string[]} */
  const written = [];
  room.signaling.connected = true;
  room.signaling.send = (frame) => { written.push(JSON.stringify(frame)); return true; };
  room.roster.add({ id: BOB, identity: "bob" }, false);
  const sends = () => written.filter((text) => JSON.parse(text).op === "send");

  // A message: one relay frame, its envelope as written by hand here and as the shared vector.
  let settled = "pending";
  room.sendMessage("shareLink", "https://example.com", { to: BOB }).then(() => { settled = "resolved"; }, () => { settled = "rejected"; });
  await new Promise((resolve) => setImmediate(resolve));
  // It names the epoch of the Room's sequence space for Bob, and its base (nothing acked yet).
  const epoch = /** @type {any} */ (room.remotes.get(BOB)).outbox.epoch;
  assert.ok(Number.isSafeInteger(epoch) && epoch > 0);
  assert.deepEqual(sends(), [
    `{"op":"send","to":["hN4sJ8dF1gKq0ZbY"],"msg":[{"v":1,"k":"m","s":1,"t":"shareLink","d":"https://example.com","e":${epoch},"b":1}]}`,
  ]);
  assert.deepEqual(JSON.parse(sends()[0]).msg, [{ ...vector("whole message, with epoch and base"), s: 1, e: epoch, b: 1 }]);

  // Every valid message and chunk vector, as the relay hands them over: delivered in order, then
  // one ack frame, as written by hand here and as the shared "ack" vector.
  // (The vectors without an epoch: one sender of the first protocol, sequence 1 to 5.)
  for (const v of vectors.valid) if (v.envelope.k !== "a" && !("e" in v.envelope)) room.onFrame({ op: "message", from: BOB, msg: v.envelope });
  assert.deepEqual(got, [
    { type: "shareLink", data: "https://example.com" },
    { type: "changedDrawing", data: { circles: [], rectangles: [], triangles: [], bgColor: "blue" } },
    { type: "shareLink", data: "" },
    { type: "t", data: null },
    { type: "big", data: { a: 1 } },
  ]);
  t.mock.timers.tick(10);
  assert.deepEqual(sends().slice(1), ['{"op":"send","to":["hN4sJ8dF1gKq0ZbY"],"msg":{"v":1,"k":"a","a":5}}']);
  assert.deepEqual(JSON.parse(sends()[1]).msg, vector("ack"));
  for (const text of sends()) assert.ok(serverAcceptsSend(text), text);

  // Bob's ack settles the message; an ack of nothing does not, nor one of another epoch (an
  // earlier sequence space of ours).
  room.onFrame({ op: "message", from: BOB, msg: vector("ack of nothing yet") });
  room.onFrame({ op: "message", from: BOB, msg: { v: 1, k: "a", a: 1, e: epoch - 1 } });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, "pending");
  room.onFrame({ op: "message", from: BOB, msg: { ...vector("ack with epoch"), a: 1, e: epoch } });
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(settled, "resolved");
  room.shutdown(new Error("end of test"));
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
