// @ts-check
// The SDK's API as an app uses it, in real headless Chromium against a real server: events
// (`room.on`/`off`, nothing before `joinRoom` resolves), cancelling a join, binary data on both
// paths, the codes of final disconnects, and a server published under a path prefix.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, stopAll,
  received, pathTo, startHttpProxy,
} from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
afterEach(endTest);
after(stopAll);

/**
 * @param {string} label
 * @param {{noWebrtc?: boolean}} [opts]
 */
const peer = (label, opts) => launchPeer(server, { ...opts, label });

/** The peers the server has in a room, by identity. @param {string} room */
const seated = async (room) => {
  const r = await server.api("GET", `/v1/rooms/${room}/peers`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return /** @type {{identity: string}[]} */ (r.body.peers ?? r.body).map((p) => p.identity).sort();
};

test("events: no handler runs before joinRoom resolves, what happened during the join follows in order; room.on returns its removal, room.off removes", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  const aId = await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const r = await evaluate(b.page, async (token) => {
    const sdk = await import("/sdk/bluecam.js");
    /** @type {any} */
    const w = window;
    /** @type {string[]} */
    const log = [];
    let resolved = false;
    // The pattern of the issue: the handlers use `room`, assigned by the await.
    const room = await sdk.joinRoom({
      token, video: false, audio: false,
      onConnectionChange(/** @type {string} */ state) {
        log.push(`connection ${state} resolved=${resolved} room=${room.self.identity}`);
      },
      onPathChange(/** @type {{identity: string}} */ p, /** @type {string} */ path) {
        log.push(`path ${p.identity} ${path} resolved=${resolved}`);
      },
    });
    resolved = true;
    log.push("resolved");
    w.room = room;
    w.log = log;
    w.got = [];
    w.sdk = sdk;
    /** @param {string} type @param {unknown} data @param {{identity: string}} from */
    w.handler = (type, data, from) => w.got.push(`on ${type} ${JSON.stringify(data)} ${from.identity}`);
    w.unsubscribe = room.on("message", w.handler);
    room.on("message", (/** @type {string} */ type) => w.got.push(`second ${type}`));
    // An unknown event is a programming error, said at once.
    try {
      room.on("mesage", () => {});
      log.push("no error for an unknown event");
    } catch (e) {
      log.push(`${/** @type {Error} */ (e).name} for an unknown event`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
    return log;
  }, await server.token(room, "bob"), "joinRoom with handlers that use the room");
  assert.equal(r[0], "resolved", JSON.stringify(r));
  assert.ok(r.includes("connection connected resolved=true room=bob"), JSON.stringify(r));
  assert.ok(r.includes("TypeError for an unknown event"), JSON.stringify(r));
  await waitPeers(a.page, 1);
  const send = (/** @type {string} */ type) => evaluate(a.page, (type) => /** @type {any} */ (window).room.sendMessage(type, { n: 1 }), type, "sendMessage");
  await send("one");
  await waitFor(async () => (await evaluate(b.page, () => /** @type {any} */ (window).got.length, undefined, "got")) >= 2, "the first message");
  // Removed by the function `on` returned: the other handler stays.
  await evaluate(b.page, () => /** @type {any} */ (window).unsubscribe(), undefined, "unsubscribe");
  await send("two");
  await waitFor(async () => (await evaluate(b.page, () => /** @type {any} */ (window).got.length, undefined, "got")) >= 3, "the second message");
  // Added again, removed with off.
  await evaluate(b.page, () => {
    const w = /** @type {any} */ (window);
    w.room.on("message", w.handler);
    w.room.off("message", w.handler);
  }, undefined, "on, then off");
  await send("three");
  await waitFor(async () => (await evaluate(b.page, () => /** @type {any} */ (window).got.length, undefined, "got")) >= 4, "the third message");
  await new Promise((resolve) => setTimeout(resolve, 300));
  const got = await evaluate(b.page, () => /** @type {any} */ (window).got, undefined, "got");
  assert.deepEqual(got, ['on one {"n":1} alice', "second one", "second two", "second three"]);
  assert.ok(aId);
  await expectEvents([a, b]);
});

test("joinRoom({signal}): aborted before or during the join it rejects with AbortError and leaves no seat; once resolved, the signal does nothing", async () => {
  const room = await server.room();
  const [a, b] = [await peer("watcher"), await peer("canceller")];
  await join(a.page, await server.token(room, "watcher"), { video: false, audio: false });
  const tokens = [];
  for (let i = 0; i < 8; i++) tokens.push(await server.token(room, `c${i}`));
  const outcomes = await evaluate(b.page, async (tokens) => {
    const sdk = await import("/sdk/bluecam.js");
    /** @type {string[]} */
    const out = [];
    // Already aborted; aborted at once; aborted after 0..25 ms (during the socket's opening,
    // the join frame's round trip, or after the join).
    const delays = [-1, 0, 1, 3, 6, 10, 15, 25];
    await Promise.all(tokens.map(async (/** @type {string} */ token, /** @type {number} */ i) => {
      const ctl = new AbortController();
      if (delays[i] < 0) ctl.abort();
      const joining = sdk.joinRoom({ token, video: false, audio: false, signal: ctl.signal });
      if (delays[i] === 0) ctl.abort();
      else if (delays[i] > 0) setTimeout(() => ctl.abort(), delays[i]);
      try {
        const room = await joining;
        out[i] = "joined";
        // A resolved join is the app's to leave; the signal no longer matters.
        await new Promise((resolve) => setTimeout(resolve, 100));
        out[i] += room.connectionState === "connected" ? " connected" : ` ${room.connectionState}`;
        room.leave();
      } catch (e) {
        out[i] = /** @type {Error} */ (e).name;
      }
    }));
    return out;
  }, tokens, "eight joins cancelled at different moments");
  assert.ok(outcomes.every((o) => o === "AbortError" || o === "joined connected"), JSON.stringify(outcomes));
  assert.equal(outcomes[0], "AbortError");
  assert.equal(outcomes[1], "AbortError");
  // Nothing left on the server: only the watcher, and it sees no one.
  // (Within seconds: a seat left behind would stay for the resume window, a minute.)
  await waitFor(async () => JSON.stringify(await seated(room)) === JSON.stringify(["watcher"]), "only the watcher seated", 5000);
  await waitPeers(a.page, 0);
  await expectEvents([a, b]);
});

test("binary data arrives as Uint8Array with the same bytes over the data channel and through the relay, chunked when large; unserializable data is refused with its code", async () => {
  const room = await server.room();
  const [a, b, c] = [await peer("alice"), await peer("bob"), await peer("carol", { noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  const cId = await join(c.page, await server.token(room, "carol"), { video: false, audio: false });
  await waitPeers(a.page, 2);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel to bob");
  const r = await evaluate(a.page, async ({ bId, cId }) => {
    const room = /** @type {any} */ (window).room;
    const big = new Uint8Array(300 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 7919) % 251;
    for (const to of [bId, cId]) {
      await room.sendMessage("u8", new Uint8Array([0, 1, 2, 253, 254, 255]), { to });
      await room.sendMessage("buffer", new Uint16Array([1, 65535]).buffer, { to });
      await room.sendMessage("view", new DataView(new Uint8Array([9, 8, 7, 6]).buffer, 1, 2), { to });
      await room.sendMessage("blob", new Blob([new Uint8Array([1, 2, 3])]), { to });
      await room.sendMessage("nested", { name: "x", bytes: new Uint8Array([4, 5]), list: [new Uint8Array([])] }, { to });
      await room.sendMessage("big", big, { to });
    }
    /** @type {string[]} */
    const refused = [];
    const cycle = /** @type {any} */ ({});
    cycle.self = cycle;
    for (const data of [cycle, { n: 10n }, { file: new Blob(["x"]) }]) {
      try {
        await room.sendMessage("bad", data);
        refused.push("sent");
      } catch (e) {
        refused.push(`${/** @type {Error} */ (e).name} ${/** @type {any} */ (e).code}`);
      }
    }
    return refused;
  }, { bId, cId }, "binary messages to bob (data channel) and carol (relay)");
  assert.deepEqual(r, Array(3).fill("UnserializableError unserializable"));
  for (const [p, path] of /** @type {const} */ ([[b, "p2p"], [c, "relay"]])) {
    await waitFor(async () => (await received(p.page)).length >= 6, `six messages at ${p.label}`);
    const got = await evaluate(p.page, () => /** @type {any} */ (window).t.received.map((/** @type {any} */ m) => {
      /** @param {unknown} v @returns {unknown} */
      const show = (v) => v instanceof Uint8Array
        ? (v.length > 16 ? `u8 ${v.length} ok=${v.every((x, i) => x === (i * 7919) % 251)}` : `u8 [${[...v]}]`)
        : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, Array.isArray(x) ? x.map(show) : show(x)])) : v;
      return [m.type, show(m.data), m.path];
    }), undefined, "what arrived");
    const buffer = [...new Uint8Array(new Uint16Array([1, 65535]).buffer)];
    assert.deepEqual(got, [
      ["u8", "u8 [0,1,2,253,254,255]", path],
      ["buffer", `u8 [${buffer}]`, path],
      ["view", "u8 [8,7]", path],
      ["blob", "u8 [1,2,3]", path],
      ["nested", { name: "x", bytes: "u8 [4,5]", list: ["u8 []"] }, path],
      ["big", "u8 307200 ok=true", path],
    ], p.label);
  }
  await expectEvents([a, b, c]);
});

test("final disconnects carry their code: a deleted room is room_closed, the same identity joining elsewhere is superseded", async () => {
  const room = await server.room();
  const [a, b, a2] = [await peer("alice"), await peer("bob"), await peer("alice again")];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await waitPeers(b.page, 1);
  // alice joins again from another tab: the first tab's session is over.
  await join(a2.page, await server.token(room, "alice"), { video: false, audio: false });
  await waitFor(async () => (await a.events()).errors.length > 0, "alice's first tab told");
  await expectEvents([a], { errors: [{ name: "ConnectionError", code: "superseded" }] });
  const notFound = await evaluate(b.page, () => {
    const w = /** @type {any} */ (window);
    w.closedState = [];
    w.room.on("connectionChange", (/** @type {string} */ s) => w.closedState.push(s));
    return 0;
  }, undefined, "watch bob's connection");
  assert.equal(notFound, 0);
  assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
  for (const p of [b, a2]) {
    await waitFor(async () => (await p.events()).errors.length > 0, `${p.label} told of the deletion`);
    await expectEvents([p], { errors: [{ name: "ConnectionError", code: "room_closed" }] });
  }
  assert.deepEqual(await evaluate(b.page, () => /** @type {any} */ (window).closedState, undefined, "states"), ["disconnected"]);
});

test("a peer removed by the backend: its page gets ConnectionError kicked, the others see it leave with reason kicked, and its old token joins no more", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bobToken = await server.token(room, "bob");
  await join(b.page, bobToken, { video: false, audio: false });
  await waitPeers(a.page, 1);
  await evaluate(a.page, () => {
    const w = /** @type {any} */ (window);
    w.leaves = [];
    w.room.on("peerLeft", (/** @type {{identity: string}} */ p, /** @type {string} */ reason) => w.leaves.push([p.identity, reason]));
    return 0;
  }, undefined, "watch alice's peers leaving");
  const peers = await server.api("GET", `/v1/rooms/${room}/peers`);
  const bobId = peers.body.peers.find((/** @type {{identity: string}} */ p) => p.identity === "bob").id;
  const removed = await server.api("DELETE", `/v1/rooms/${room}/peers/${bobId}`);
  assert.equal(removed.status, 200, JSON.stringify(removed.body));
  await waitFor(async () => (await b.events()).errors.length > 0, "bob told");
  await expectEvents([b], { errors: [{ name: "ConnectionError", code: "kicked" }] });
  await waitFor(async () => (await evaluate(a.page, () => /** @type {any} */ (window).leaves.length, undefined, "leaves")) > 0, "alice sees bob leave");
  assert.deepEqual(await evaluate(a.page, () => /** @type {any} */ (window).leaves, undefined, "leaves"), [["bob", "kicked"]]);
  // The token bob joined with is refused now (it was issued before the removal).
  const again = await peer("bob again");
  const refused = await evaluate(again.page, async (/** @type {string} */ token) => {
    const { joinRoom } = await import("/sdk/bluecam.js");
    try {
      await joinRoom({ token, video: false, audio: false });
      return "joined";
    } catch (e) {
      return `${/** @type {any} */ (e).name} ${/** @type {any} */ (e).code}`;
    }
  }, bobToken, "bob's old token");
  assert.equal(refused, "UnauthorizedError unauthorized");
  await expectEvents([a]);
});

test("messages from the backend reach onMessage with from.server, each once and in order, through a cut WebSocket and over HTTP", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice", { noWebrtc: true }), await peer("bob on HTTP", { noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  await join(b.page, await server.token(room, "bob"), { video: false, audio: false, signalMethod: "http" });
  await waitPeers(a.page, 1);
  for (const p of [a, b]) {
    await evaluate(p.page, () => {
      const w = /** @type {any} */ (window);
      w.fromServer = [];
      w.room.on("message", (/** @type {string} */ type, /** @type {any} */ data, /** @type {any} */ from) => {
        if (from.server === true) w.fromServer.push([type, data, from.id]);
      });
      return 0;
    }, undefined, "watch the backend's messages");
  }
  const N = 60;
  for (let i = 0; i < N; i++) {
    // Alice's WebSocket is cut for two seconds in the middle: what her old connection may have
    // taken with it comes again after the resume, and she drops what she has.
    if (i === N / 2) await evaluate(a.page, () => { /** @type {any} */ (window).room._test.cutSocket(2000); return 0; }, undefined, "cut");
    const r = await server.api("POST", `/v1/rooms/${room}/messages`, { type: "tick", data: { i } });
    assert.equal(r.status, 202, JSON.stringify(r.body));
  }
  const want = Array.from({ length: N }, (_, i) => ["tick", { i }, "server"]);
  for (const p of [a, b]) {
    await waitFor(async () => (await evaluate(p.page, () => /** @type {any} */ (window).fromServer.length, undefined, "count")) >= N, `${p.label} got ${N}`);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await evaluate(p.page, () => /** @type {any} */ (window).fromServer, undefined, "messages"), want, p.label);
  }
  await expectEvents([a, b]);
});

test("a server published under a path prefix: the SDK loaded from it finds it, over a WebSocket and over HTTP", async () => {
  const proxy = await startHttpProxy([server.url], { webSocket: "pass", prefix: "/rooms" });
  try {
    const room = await server.room();
    const behind = /** @type {any} */ ({ url: `${proxy.url}/rooms` });
    const [a, b] = [
      await launchPeer(behind, { label: "alice", noWebrtc: true }),
      await launchPeer(behind, { label: "bob", noWebrtc: true }),
    ];
    const aId = await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
    await join(b.page, await server.token(room, "bob"), { video: false, audio: false, signalMethod: "http" });
    assert.deepEqual(await evaluate(a.page, () => /** @type {any} */ (window).room.transport, undefined, "transport"), "websocket");
    assert.deepEqual(await evaluate(b.page, () => /** @type {any} */ (window).room.transport, undefined, "transport"), "http");
    await waitPeers(a.page, 1);
    await waitPeers(b.page, 1);
    await evaluate(a.page, () => /** @type {any} */ (window).room.sendMessage("hello", "through /rooms"), undefined, "send");
    await waitFor(async () => (await received(b.page)).length >= 1, "the message at bob");
    assert.deepEqual(await received(b.page), [{ type: "hello", data: "through /rooms", from: aId, path: "relay" }]);
    assert.ok(proxy.upgrades() >= 1);
    await expectEvents([a, b]);
  } finally {
    await proxy.close();
  }
});
