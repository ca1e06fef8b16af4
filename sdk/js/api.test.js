// @ts-check
// The SDK's public API, without a browser: the events' order and timing, binary data in and
// out of the JSON of a message, the server URLs, and when a fresh token is asked for.
import { test } from "node:test";
import assert from "node:assert/strict";
import { Emitter } from "./events.js";
import { encodeData, reviveBytes, BYTES_KEY, MAX_MESSAGE_BYTES } from "./delivery.js";
import { tokenExpiring } from "./signaling.js";
import { Room, joinRoom } from "./bluecam.js";

const peer = { id: "p", identity: "x" };

test("events wait for the join: held in order, delivered a task after release, then as they happen", async () => {
  const events = new Emitter();
  /** @type {string[]} */
  const log = [];
  events.on("peerJoined", (p) => log.push(`joined ${p.id}`));
  events.on("connectionChange", (s) => log.push(`state ${s}`));
  events.emit("connectionChange", "connected");
  events.emit("peerJoined", peer);
  events.release();
  log.push("released");
  await Promise.resolve();
  log.push("after a microtask");
  await new Promise((resolve) => setTimeout(resolve, 0));
  events.emit("connectionChange", "reconnecting");
  assert.deepEqual(log, ["released", "after a microtask", "state connected", "joined p", "state reconnecting"]);
});

test("on returns its removal; off removes one registration; a throwing handler does not stop the others", () => {
  const events = new Emitter();
  events.flush();
  /** @type {string[]} */
  const log = [];
  const h = (/** @type {any} */ p) => log.push(`h ${p.id}`);
  const off1 = events.on("peerLeft", h);
  events.on("peerLeft", h);
  events.on("peerLeft", () => {
    throw new Error("app bug");
  });
  events.on("peerLeft", () => log.push("last"));
  const error = console.error;
  /** @type {unknown[]} */
  const reported = [];
  console.error = (...args) => reported.push(args[0]);
  try {
    events.emit("peerLeft", peer);
    off1();
    events.emit("peerLeft", peer);
    events.off("peerLeft", h);
    events.emit("peerLeft", peer);
  } finally {
    console.error = error;
  }
  assert.deepEqual(log, ["h p", "h p", "last", "h p", "last", "last"]);
  assert.equal(reported.length, 3);
  assert.throws(() => events.on(/** @type {any} */ ("mesage"), () => {}), TypeError);
});

test("binary data: any buffer or view, at any depth, comes back as a Uint8Array of the same bytes", () => {
  const u8 = new Uint8Array([0, 127, 128, 255]);
  const data = {
    a: u8, b: u8.buffer, c: new DataView(u8.buffer, 1, 2), d: [new Int16Array([-1]), "text", 3],
    e: { [BYTES_KEY]: 5 }, f: { [BYTES_KEY]: "AA==", other: 1 },
  };
  const { json } = encodeData(data);
  const back = /** @type {any} */ (reviveBytes(JSON.parse(json)));
  assert.deepEqual([...back.a], [0, 127, 128, 255]);
  assert.deepEqual([...back.b], [0, 127, 128, 255]);
  assert.deepEqual([...back.c], [127, 128]);
  assert.deepEqual([...back.d[0]], [255, 255]);
  assert.ok(back.a instanceof Uint8Array && back.d[0] instanceof Uint8Array);
  assert.deepEqual(back.d.slice(1), ["text", 3]);
  // Objects that only look like it stay objects.
  assert.deepEqual(back.e, { [BYTES_KEY]: 5 });
  assert.deepEqual(back.f, { [BYTES_KEY]: "AA==", other: 1 });
  // Top level, empty, and a broken one from a hostile sender (handed over as it came).
  assert.deepEqual([.../** @type {Uint8Array} */ (reviveBytes(JSON.parse(encodeData(new Uint8Array(0)).json)))], []);
  assert.deepEqual(reviveBytes({ [BYTES_KEY]: "not base64!" }), { [BYTES_KEY]: "not base64!" });
  // Deeper than the stack: handed over as it came, no throw.
  /** @type {any} */
  let deep = { [BYTES_KEY]: "AA==" };
  for (let i = 0; i < 200000; i++) deep = [deep];
  assert.equal(reviveBytes(deep), deep);
});

test("binary data counts at its base64 size; cycles and BigInt are TypeErrors, too large a RangeError", () => {
  const fits = Math.floor(((MAX_MESSAGE_BYTES - 16) * 3) / 4);
  assert.ok(encodeData(new Uint8Array(fits)).bytes <= MAX_MESSAGE_BYTES);
  assert.throws(() => encodeData(new Uint8Array(fits + 64)), RangeError);
  const cycle = /** @type {any} */ ({});
  cycle.cycle = cycle;
  assert.throws(() => encodeData(cycle), TypeError);
  assert.throws(() => encodeData({ n: 1n }), TypeError);
  assert.throws(() => encodeData({ file: new Blob(["x"]) }), TypeError);
});

test("server URLs: a path prefix is kept for both transports; without `server` outside a BlueCam server, a clear error", async () => {
  const urls = (/** @type {string | string[]} */ server) => new Room({ token: "t", server, video: false, audio: false }).signaling.urls;
  assert.deepEqual(urls("https://app.example.com/rooms/"), ["wss://app.example.com/rooms/v1/ws"]);
  assert.deepEqual(urls(["http://a:8080", "https://b/x?y=1#z"]), ["ws://a:8080/v1/ws", "wss://b/x/v1/ws"]);
  // The HTTP transport's URL, as the signaling opens it (to nothing that answers here).
  const room2 = new Room({ token: "t", server: "http://127.0.0.1:9/rooms", video: false, audio: false, signalMethod: "http" });
  room2.signaling.open(() => {}, () => {});
  const httpUrl = /** @type {any} */ (room2.signaling.ws).url;
  room2.signaling.leave();
  assert.equal(httpUrl, "http://127.0.0.1:9/rooms/v1/http");
  for (const bad of ["not a url", "ftp://x/"]) {
    assert.throws(() => urls(bad), (e) => /** @type {any} */ (e).code === "bad_options");
  }
  // Here the module is a file: no server of its own.
  await assert.rejects(joinRoom({ token: "t", video: false, audio: false }), (e) => /** @type {any} */ (e).code === "server_required" && /`server`/.test(/** @type {Error} */ (e).message));
  await assert.rejects(joinRoom(/** @type {any} */ ({ server: "http://127.0.0.1:9" })), (e) => /** @type {any} */ (e).code === "bad_options");
  const aborted = new AbortController();
  aborted.abort();
  await assert.rejects(joinRoom({ token: "t", server: "http://127.0.0.1:9", signal: aborted.signal }), (e) => /** @type {Error} */ (e).name === "AbortError");
});

test("a fresh token is asked for only when this one has expired, is about to, or cannot be read", () => {
  const token = (/** @type {unknown} */ claims) => `h.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.s`;
  const now = 1_800_000_000_000;
  assert.equal(tokenExpiring(token({ exp: now / 1000 + 3600 }), now), false);
  assert.equal(tokenExpiring(token({ exp: now / 1000 + 10 }), now), true);
  assert.equal(tokenExpiring(token({ exp: now / 1000 - 1 }), now), true);
  assert.equal(tokenExpiring(token({}), now), true);
  assert.equal(tokenExpiring("garbage", now), true);
});

test("binary data as the shared vectors spell it: read back as bytes, and written exactly so", async () => {
  const { readFileSync } = await import("node:fs");
  const vectors = JSON.parse(readFileSync(new URL("../../tests/vectors/envelopes.json", import.meta.url), "utf8")).binary;
  assert.ok(vectors.length >= 8);
  for (const v of vectors) {
    const revived = /** @type {any} */ (reviveBytes(structuredClone(v.data)));
    const at = (v.at ?? []).reduce((/** @type {any} */ x, /** @type {string | number} */ k) => x[k], revived);
    if (v.bytes === null) {
      assert.deepEqual(revived, v.data, v.name);
      continue;
    }
    assert.ok(at instanceof Uint8Array, v.name);
    assert.deepEqual([...at], v.bytes, v.name);
    // The sender writes the same JSON for those bytes.
    assert.equal(encodeData(revived).json, JSON.stringify(v.data), v.name);
  }
});
