// @ts-check
// End-to-end encryption (docs/security.md) in real Chromium, with a hostile proxy of our own
// between the browsers and the server (wstap.js): what it sees, and what it can do by
// altering, replaying, reordering and re-addressing what passes through it.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  TestServer, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, stopAll, videoStats,
  received, pathTo, sdkState,
} from "./harness.js";
import { startWsTap } from "./wstap.js";

/** @type {TestServer} */
let server;
/** @type {Awaited<ReturnType<typeof startWsTap>>} */
let tap;

before(async () => {
  server = await TestServer.start();
  tap = await startWsTap(server.url);
});
afterEach(async () => {
  tap.setTamper((_dir, text) => [text]);
  await endTest();
});
after(async () => {
  await tap.close();
  await stopAll();
});

const newKey = () => randomBytes(32).toString("base64url");
/** A string no frame through the proxy may carry: it is only ever inside the messages' data. */
const MARKER = "MARKER-e2ee-7f3a9c";

/**
 * A browser whose page (and so its SDK and its server) is reached through the tap.
 * @param {string} label
 * @param {{noWebrtc?: boolean}} [opts]
 */
const peer = (label, opts) => launchPeer(/** @type {any} */ ({ url: tap.url }), { ...opts, label });

/**
 * Joins with the room key (no media unless asked).
 * @param {import("playwright-core").Page} page
 * @param {string} token
 * @param {string} key
 * @param {boolean} [media]
 */
const joinE2ee = (page, token, key, media = false) =>
  join(page, token, /** @type {any} */ ({ video: media, audio: media, e2ee: { key } }));

/**
 * Sends `n` messages of `type` to `to`, one every `everyMs`, each carrying the marker;
 * resolves with the error codes of those that rejected (none: every one was acknowledged).
 * @param {import("playwright-core").Page} page
 * @param {string} to
 * @param {number} n
 * @param {string} type
 * @param {number} [everyMs]
 */
function send(page, to, n, type, everyMs = 5) {
  return evaluate(page, async ({ to, n, type, everyMs, marker }) => {
    const room = /** @type {any} */ (window).room;
    /** @type {Promise<string | null>[]} */
    const all = [];
    for (let i = 0; i < n; i++) {
      all.push(room.sendMessage(type, { i, marker, text: `é ${i} ✓` }, { to }).then(() => null, (/** @type {any} */ e) => String(e?.code)));
      await new Promise((r) => setTimeout(r, everyMs));
    }
    return (await Promise.all(all)).filter((c) => c !== null);
  }, { to, n, type, everyMs, marker: MARKER }, `${n} sends of ${type}`, undefined, () => sdkState(page));
}

/**
 * Waits for `n` messages of `type` from `from`, then checks each came once, in order, intact.
 * @param {import("playwright-core").Page} page
 * @param {string} from
 * @param {number} n
 * @param {string} type
 */
async function expectIntact(page, from, n, type) {
  const of = async () => (await received(page)).filter((/** @type {any} */ m) => m.type === type);
  await waitFor(async () => (await of()).length >= n, `${n} messages of ${type}`);
  await new Promise((r) => setTimeout(r, 300));
  const got = await of();
  assert.deepEqual(got.map((/** @type {any} */ m) => m.from), Array(n).fill(from), "every message from its sender");
  assert.deepEqual(got.map((/** @type {any} */ m) => m.data), [...Array(n).keys()].map((i) => ({ i, marker: MARKER, text: `é ${i} ✓` })), "once each, in order, intact");
}

/** @param {import("playwright-core").Page} page */
const stats = (page) => evaluate(page, () => /** @type {any} */ (window).room.e2eeStats, undefined, "e2eeStats");

/** SDP or ICE in the clear: what a frame must never carry once the room is encrypted. */
const CLEAR_SIGNALING = /a=fingerprint|candidate:|v=0\\r\\n|"sdp"|"candidate"/;

test("relayed both ways: 50 messages each arrive once and in order, and the proxy sees no data, SDP or ICE", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob (no WebRTC)", { noWebrtc: true })];
  const seenFrom = tap.seen.length;
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  const bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  await waitPeers(a.page, 1);
  await waitPeers(b.page, 1);
  assert.equal(await evaluate(a.page, () => /** @type {any} */ (window).room.e2ee, undefined, "room.e2ee"), true);
  const [fromA, fromB] = await Promise.all([send(a.page, bId, 50, "ab"), send(b.page, aId, 50, "ba")]);
  assert.deepEqual([fromA, fromB], [[], []], "every send acknowledged");
  await expectIntact(b.page, aId, 50, "ab");
  await expectIntact(a.page, bId, 50, "ba");
  assert.ok((await received(b.page)).every((/** @type {any} */ m) => m.path === "relay"));
  const frames = tap.seen.slice(seenFrom);
  const relayed = frames.filter((f) => f.text.includes('"op":"send"') || f.text.includes('"op":"message"'));
  assert.ok(relayed.length >= 50, `${relayed.length} relay frames seen`);
  assert.deepEqual(frames.filter((f) => f.text.includes(MARKER)).map((f) => f.text.slice(0, 200)), [], "no frame carries the data");
  assert.deepEqual(frames.filter((f) => CLEAR_SIGNALING.test(f.text)).map((f) => f.text.slice(0, 200)), [], "no frame carries SDP or ICE in the clear");
  assert.ok(frames.some((f) => f.text.includes('"e2ee":{"v":1')), "the key exchange went through the server");
  assert.equal((await stats(a.page)).rejected + (await stats(b.page)).rejected, 0);
  await expectEvents([a, b]);
});

test("with WebRTC the peers still connect directly: media and data channel, every signal sealed", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  const seenFrom = tap.seen.length;
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key, true);
  const bId = await joinE2ee(b.page, await server.token(room, "bob"), key, true);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
  for (const [page, other] of /** @type {const} */ ([[a.page, bId], [b.page, aId]])) {
    await waitFor(async () => (await videoStats(page, other)).frames > 0, "decoded video frames");
  }
  assert.deepEqual(await send(a.page, bId, 20, "p2p"), []);
  await expectIntact(b.page, aId, 20, "p2p");
  assert.ok((await received(b.page)).every((/** @type {any} */ m) => m.path === "p2p"), "over the data channel");
  const frames = tap.seen.slice(seenFrom);
  assert.deepEqual(frames.filter((f) => CLEAR_SIGNALING.test(f.text) || f.text.includes(MARKER)).map((f) => f.text.slice(0, 200)), []);
  assert.ok((await stats(b.page)).opened >= 20, "the data channel's messages were sealed too");
  await expectEvents([a, b]);
});

test("records the proxy alters are never delivered; the real ones arrive, all of them, once", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b] = [await peer("alice", { noWebrtc: true }), await peer("bob", { noWebrtc: true })];
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  const bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  await waitPeers(a.page, 1);
  await waitPeers(b.page, 1);
  let altered = 0;
  let relayed = 0;
  tap.setTamper((dir, text, conn) => {
    // Every third relayed record on its way to bob gets one character of its base64 changed
    // (the JSON stays valid).
    if (dir !== "down" || conn.peer !== bId || !text.startsWith('{"op":"message"')) return [text];
    if (++relayed % 3 !== 0) return [text];
    const f = JSON.parse(text);
    const x = f.msg.x;
    const i = 16 + (relayed % (x.length - 20));
    f.msg.x = x.slice(0, i) + (x[i] === "A" ? "B" : "A") + x.slice(i + 1);
    altered++;
    return [JSON.stringify(f)];
  });
  assert.deepEqual(await send(a.page, bId, 30, "t", 20), []);
  await expectIntact(b.page, aId, 30, "t");
  assert.ok(altered >= 10, `${altered} records altered`);
  assert.ok((await stats(b.page)).rejected >= altered, "each altered record was rejected");
  await expectEvents([a, b]);
});

test("records the proxy replays, reorders or says come from another peer are not delivered twice or as another's", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b, c] = [await peer("alice", { noWebrtc: true }), await peer("bob", { noWebrtc: true }), await peer("carol", { noWebrtc: true })];
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  const bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  const cId = await joinE2ee(c.page, await server.token(room, "carol"), key);
  for (const p of [a, b, c]) await waitPeers(p.page, 2);
  let n = 0;
  /** @type {string | null} */
  let held = null;
  let replayed = 0;
  let swapped = 0;
  let reordered = 0;
  tap.setTamper((dir, text, conn) => {
    if (dir !== "down" || conn.peer !== bId || !text.startsWith('{"op":"message"')) return [text];
    const f = JSON.parse(text);
    if (f.from !== aId) return [text];
    n++;
    if (held !== null) {
      // The one held back goes after this one.
      const out = [text, held];
      held = null;
      reordered++;
      return out;
    }
    if (n % 5 === 0) {
      replayed++;
      return [text, text, text];
    }
    if (n % 7 === 0) {
      held = text;
      return [];
    }
    if (n % 4 === 0) {
      // Said to come from carol: a copy, and the original.
      swapped++;
      return [JSON.stringify({ ...f, from: cId }), text];
    }
    return [text];
  });
  assert.deepEqual(await send(a.page, bId, 40, "t", 10), []);
  await expectIntact(b.page, aId, 40, "t");
  assert.ok(replayed >= 3 && swapped >= 3 && reordered >= 2, `replayed ${replayed}, swapped ${swapped}, reordered ${reordered}`);
  assert.deepEqual((await received(b.page)).filter((/** @type {any} */ m) => m.from === cId), [], "nothing as carol's");
  assert.ok((await stats(b.page)).rejected >= swapped, "the re-addressed copies failed authentication");
  await expectEvents([a, b, c]);
});

test("a browser with another key reads nothing and is read by no one; both sides report e2ee_mismatch", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b, m] = [await peer("alice"), await peer("bob"), await peer("mallory")];
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  const bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "alice and bob connected");
  const mId = await joinE2ee(m.page, await server.token(room, "mallory"), newKey());
  const mismatch = { errors: [{ name: "E2eeMismatchError", code: "e2ee_mismatch" }] };
  const bothWays = { errors: [{ name: "E2eeMismatchError", code: "e2ee_mismatch" }, { name: "E2eeMismatchError", code: "e2ee_mismatch" }] };
  await waitFor(async () => (await a.events()).errors.length === 1 && (await b.events()).errors.length === 1 &&
    (await m.events()).errors.length === 2, "the mismatch reported on every side");
  await expectEvents([a, b], mismatch);
  await expectEvents([m], bothWays);
  const named = await evaluate(m.page, () => /** @type {any} */ (window).__bluecamEvents.errors.map((/** @type {any} */ e) => e.message), undefined, "errors");
  assert.ok(named.some((/** @type {string} */ s) => s.includes(aId)) && named.some((/** @type {string} */ s) => s.includes(bId)), named.join("; "));
  // Mallory's sends reject with the code; nothing reaches alice or bob.
  const fromM = await evaluate(m.page, async (to) => {
    const room = /** @type {any} */ (window).room;
    return Promise.all([room.sendMessage("x", "hi", { to }), room.sendMessage("x", "all")].map((p) => p.then(() => "sent", (/** @type {any} */ e) => `${e.code} ${e.peers.length}`)));
  }, aId, "mallory's sends");
  assert.deepEqual(fromM, ["e2ee_mismatch 1", "e2ee_mismatch 2"]);
  // Alice's broadcast reaches bob and rejects for mallory alone.
  const fromA = await evaluate(a.page, async () => {
    const room = /** @type {any} */ (window).room;
    return room.sendMessage("y", "to all").then(() => "sent", (/** @type {any} */ e) => `${e.code} ${e.peers.join(",")}`);
  }, undefined, "alice's broadcast");
  assert.equal(fromA, `e2ee_mismatch ${mId}`);
  await waitFor(async () => (await received(b.page)).some((/** @type {any} */ m) => m.type === "y"), "bob has alice's broadcast");
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual(await received(m.page), [], "mallory read nothing");
  assert.deepEqual((await received(a.page)).filter((/** @type {any} */ x) => x.from === mId), []);
  assert.equal(await pathTo(m.page, aId), "relay", "no peer-to-peer connection with mallory");
});

test("a DTLS fingerprint the proxy rewrites is refused: sealed (the record fails) or in the clear before the exchange", async () => {
  const key = newKey();
  const room = await server.room();
  const FORGED = "a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF";
  // 1. Sealed: every sealed signal to bob has its record altered (where the SDP's
  // fingerprint would be, for all the proxy can tell). Bob refuses each; messages still flow.
  {
    const [a, b] = [await peer("alice"), await peer("bob")];
    const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
    let altered = 0;
    // (Bob's connection by its identity: alice's first sealed signals to him can come before
    // his join returns here.)
    tap.setTamper((dir, text, conn) => {
      if (dir !== "down" || conn.identity !== "bob" || !text.startsWith('{"op":"signal"')) return [text];
      const f = JSON.parse(text);
      if (typeof f.data?.x !== "string") return [text];
      const x = f.data.x;
      f.data.x = x.slice(0, 40) + (x[40] === "A" ? "B" : "A") + x.slice(41);
      altered++;
      return [JSON.stringify(f)];
    });
    const bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
    await waitPeers(a.page, 1);
    assert.deepEqual(await send(a.page, bId, 5, "t"), []);
    await expectIntact(b.page, aId, 5, "t");
    await waitFor(async () => altered >= 2, "sealed signals to bob altered");
    assert.ok((await stats(b.page)).rejected >= 2);
    const remoteSdp = await evaluate(b.page, (id) => /** @type {any} */ (window).room.remotes.get(id)?.link?.pc.remoteDescription?.sdp ?? "", aId, "bob's remote description");
    assert.equal(remoteSdp, "", "bob applied no description from alice");
    await expectEvents([a, b]);
    tap.setTamper((_d, text) => [text]);
    await a.close();
    await b.close();
  }
  // 2. In the clear, before the key exchange: the proxy replaces alice's hello to bob with an
  // offer of its own (its fingerprint). Bob refuses it and says so.
  {
    const [a, b] = [await peer("alice 2"), await peer("bob 2")];
    let bId = "";
    let forged = 0;
    tap.setTamper((dir, text, conn) => {
      if (dir !== "up" || bId === "" || !text.startsWith('{"op":"signal"')) return [text];
      const f = JSON.parse(text);
      if (f.to !== bId || f.data?.e2ee === undefined) return [text];
      forged++;
      const sdp = `v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n${FORGED}\r\n`;
      return [JSON.stringify({ op: "signal", to: bId, data: { description: { type: "offer", sdp }, gen: "forged" } })];
    });
    bId = await joinE2ee(b.page, await server.token(room, "bob 2"), key);
    const aId = await joinE2ee(a.page, await server.token(room, "alice 2"), key);
    await waitFor(async () => forged >= 1 && (await b.events()).errors.length >= 1, "bob refused the forged offer");
    await expectEvents([b], { errors: [{ name: "E2eeMismatchError", code: "e2ee_mismatch", message: new RegExp(`${aId}: it sent signaling unencrypted`) }] });
    const remoteSdp = await evaluate(b.page, (id) => /** @type {any} */ (window).room.remotes.get(id)?.link?.pc.remoteDescription?.sdp ?? "", aId, "bob's remote description");
    assert.equal(remoteSdp, "", "the forged offer was never applied");
    assert.equal(await pathTo(b.page, aId), "relay");
    // Alice, whose hello never reached bob, is not told by the proxy's act; her sends to bob
    // wait for his acknowledgement and would reject at the delivery bound.
    a.expected = {};
  }
});

test("a resume keeps the pair's keys and a reload makes new ones; a 1 MiB message arrives sealed over both paths", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, b, c] = [await peer("alice"), await peer("bob (no WebRTC)", { noWebrtc: true }), await peer("carol")];
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  let bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  const cId = await joinE2ee(c.page, await server.token(room, "carol"), key);
  await waitFor(async () => (await pathTo(a.page, cId)) === "p2p", "alice and carol connected");
  await waitPeers(b.page, 2);
  const hellos = () => tap.seen.filter((f) => f.dir === "up" && f.text.includes('"e2ee":{"v":1')).length;
  // The WebSocket cut for two seconds while messages flow: the session resumes with its keys.
  const before = hellos();
  const sending = send(a.page, bId, 20, "cut", 100);
  await evaluate(b.page, () => /** @type {any} */ (window).room._test.cutSocket(2000), undefined, "cutSocket");
  assert.deepEqual(await sending, []);
  await expectIntact(b.page, aId, 20, "cut");
  assert.equal(hellos(), before, "no new key exchange after a resume");
  // A reload: a new session with new keys, exchanged again with both others.
  await b.page.reload();
  bId = await joinE2ee(b.page, await server.token(room, "bob"), key);
  await waitPeers(b.page, 2);
  assert.ok(hellos() >= before + 2, "the new session exchanged keys");
  assert.deepEqual(await send(b.page, aId, 5, "after reload"), []);
  await expectIntact(a.page, bId, 5, "after reload");
  // 1 MiB of non-ASCII data (each character two bytes of UTF-8), relayed and peer to peer.
  const big = await evaluate(a.page, async (ids) => {
    const room = /** @type {any} */ (window).room;
    const data = "é".repeat(520_000);
    await Promise.all(ids.map((/** @type {string} */ to) => room.sendMessage("big", data, { to })));
    return data.length;
  }, [bId, cId], "two 1 MiB sends");
  for (const [p, path] of /** @type {const} */ ([[b, "relay"], [c, "p2p"]])) {
    const got = await waitFor(() => evaluate(p.page, () => {
      const m = /** @type {any} */ (window).t.received.find((/** @type {any} */ x) => x.type === "big");
      return m ? { length: m.data.length, ok: /^é+$/.test(m.data), path: m.path } : null;
    }, undefined, "the big message"), `the big message at ${p.label}`);
    assert.deepEqual(got, { length: big, ok: true, path });
  }
  assert.equal(tap.seen.filter((f) => f.text.includes("éééé")).length, 0, "the big message never in the clear");
  await expectEvents([a, b, c]);
});

test("a peer that may not send data acknowledges with sealed signals: the sender's promises resolve", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, v] = [await peer("alice", { noWebrtc: true }), await peer("viewer", { noWebrtc: true })];
  const aId = await joinE2ee(a.page, await server.token(room, "alice"), key);
  const r = await server.api("POST", `/v1/rooms/${room}/tokens`, { identity: "viewer", permissions: { sendData: false } });
  const vId = await joinE2ee(v.page, r.body.token, key);
  await waitPeers(a.page, 1);
  const seenFrom = tap.seen.length;
  assert.deepEqual(await send(a.page, vId, 10, "t"), [], "every send acknowledged");
  await expectIntact(v.page, aId, 10, "t");
  // (Its key exchange's hellos may still be under way.)
  const up = tap.seen.slice(seenFrom).filter((f) => f.dir === "up" && f.text.includes(`"to":"${aId}"`) && !f.text.includes('"e2ee":{'));
  assert.ok(up.length >= 1 && up.every((f) => f.text.startsWith('{"op":"signal"') && f.text.includes('"data":{"x":')), `the viewer's acks: sealed signals only: ${up.map((f) => f.text.slice(0, 80)).join(" | ")}`);
  await expectEvents([a, v]);
});

test("a page without a key and a page with one: both report e2ee_mismatch, and the one without says so to the other", async () => {
  const key = newKey();
  const room = await server.room();
  const [a, n] = [await peer("alice"), await peer("nokey")];
  const seenFrom = tap.seen.length;
  await joinE2ee(a.page, await server.token(room, "alice"), key);
  await join(n.page, await server.token(room, "nokey"), { video: false, audio: false });
  await waitFor(async () => (await a.events()).errors.length === 1 && (await n.events()).errors.length === 1, "the mismatch on both sides");
  const mismatch = { errors: [{ name: "E2eeMismatchError", code: "e2ee_mismatch" }] };
  await expectEvents([a, n], mismatch);
  assert.ok(tap.seen.slice(seenFrom).some((f) => f.dir === "up" && f.text.includes('"data":{"e2ee":false}')), "the page without a key answered the hello");
  assert.match((await evaluate(a.page, () => /** @type {any} */ (window).__bluecamEvents.errors[0].message, undefined, "error")), /no room key|unencrypted/);
});
