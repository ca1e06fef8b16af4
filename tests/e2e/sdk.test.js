// @ts-check
// The SDK in real headless Chromium against a real server: P2P video, messages over the data
// channel and over the relay, failures of either path, errors, limits.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { TestServer, launchPeer, join, waitFor, waitPeers } from "./harness.js";

/** @type {TestServer} */
let server;
/** @type {{close: () => Promise<void>}[]} */
let open = [];

before(async () => {
  server = await TestServer.start();
});
after(async () => {
  await Promise.all(open.map((p) => p.close()));
  await server.stop();
});

/**
 * @param {{noWebrtc?: boolean}} [opts]
 */
async function peer(opts) {
  const p = await launchPeer(server, opts);
  open.push(p);
  return p;
}

/**
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
const pathTo = (page, peerId) => page.evaluate((id) => /** @type {any} */ (window).room.path(id), peerId);
/**
 * What an SDK instance holds for each remote peer, for failure messages.
 * @param {import("playwright-core").Page} page
 */
const sdkState = (page) => page.evaluate(() => {
  const room = /** @type {any} */ (window).room;
  return JSON.stringify({
    connected: room.signaling.connected,
    remotes: [...room.remotes.values()].map((r) => ({
      id: r.info.id, path: room.path(r.info.id), pending: r.outbox.pending.length,
      firstPending: r.outbox.pending[0] && { seq: r.outbox.pending[0].seq, via: r.outbox.pending[0].via, age: Date.now() - r.outbox.pending[0].sentAt },
      expected: r.inbox.expected, held: r.inbox.held.size,
    })),
  });
});
/**
 * `promise`, or an error described by `why()` if it takes longer than a minute.
 * @template T
 * @param {Promise<T>} promise
 * @param {() => Promise<string>} why
 * @returns {Promise<T>}
 */
async function within(promise, why) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const LATE = Symbol("late");
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(LATE), 60000);
  });
  try {
    const r = await Promise.race([promise, late]);
    if (r === LATE) throw new Error(await why());
    return /** @type {T} */ (r);
  } finally {
    clearTimeout(timer);
  }
}

/** @param {import("playwright-core").Page} page */
const received = (page) => page.evaluate(() => /** @type {any} */ (window).t.received);

/**
 * Inbound video frames decoded from a peer, and whether the selected candidate pair is host.
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
function videoStats(page, peerId) {
  return page.evaluate(async (id) => {
    const pc = /** @type {any} */ (window).room.remotes.get(id)?.link?.pc;
    if (!pc) return { frames: 0, host: false };
    const stats = await pc.getStats();
    let frames = 0;
    let host = false;
    /** @type {Map<string, any>} */
    const byId = new Map();
    stats.forEach((/** @type {any} */ s) => byId.set(s.id, s));
    stats.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
        host = byId.get(s.localCandidateId)?.candidateType === "host" && byId.get(s.remoteCandidateId)?.candidateType === "host";
      }
    });
    return { frames, host };
  }, peerId);
}

test("two peers: P2P video over host candidates and messages over the data channel", async () => {
  const room = await server.room();
  const [a, b] = [await peer(), await peer()];
  const aId = await join(a.page, await server.token(room, "alice"));
  const bId = await join(b.page, await server.token(room, "bob"));
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
  for (const [page, other] of [[a.page, bId], [b.page, aId]]) {
    const s = await waitFor(async () => {
      const v = await videoStats(/** @type {any} */ (page), /** @type {string} */ (other));
      return v.frames > 0 ? v : null;
    }, "decoded video frames");
    assert.ok(s.host, "the selected candidate pair is host to host");
  }
  await a.page.evaluate(async () => {
    const room = /** @type {any} */ (window).room;
    await room.sendMessage("shareLink", "https://example.com/x");
    await room.sendMessage("changedDrawing", { circles: [{ x: 1 }], rectangles: [], triangles: [], bgColor: "blue" });
  });
  const got = await waitFor(async () => {
    const r = await received(b.page);
    return r.length >= 2 ? r : null;
  }, "two messages");
  assert.deepEqual(got, [
    { type: "shareLink", data: "https://example.com/x", from: aId, path: "p2p" },
    { type: "changedDrawing", data: { circles: [{ x: 1 }], rectangles: [], triangles: [], bgColor: "blue" }, from: aId, path: "p2p" },
  ]);
});

test("a missing room calls roomNotFoundCallback and rejects with RoomNotFoundError; a bad token with UnauthorizedError", async () => {
  const p = await peer();
  const room = await server.room();
  const token = await server.token(room, "x");
  assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
  const r = await p.page.evaluate(async ({ token }) => {
    const sdk = await import("/sdk/bluecam.js");
    let called = 0;
    /** @type {string[]} */
    const names = [];
    for (const t of [token, "not-a-token"]) {
      try {
        await sdk.joinRoom({ token: t, video: false, audio: false, roomNotFoundCallback: () => called++ });
        names.push("resolved");
      } catch (e) {
        names.push(/** @type {Error} */ (e).name);
      }
    }
    return { called, names };
  }, { token });
  assert.deepEqual(r, { called: 1, names: ["RoomNotFoundError", "UnauthorizedError"] });
});

/**
 * Sends `n` numbered messages from a page without waiting between them; resolves when all
 * promises settled, with how many resolved.
 * @param {import("playwright-core").Page} page
 * @param {number} n
 * @param {string} [type]
 * @param {string} [to]
 */
function burst(page, n, type = "n", to) {
  return page.evaluate(async ({ n, type, to }) => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < n; i++) all.push(room.sendMessage(type, i, to ? { to } : {}));
    const settled = await Promise.allSettled(all);
    return settled.filter((s) => s.status === "fulfilled").length;
  }, { n, type, to });
}

/**
 * Waits until `page` has received `n` messages of `type`, and checks they are 0..n-1 in order.
 * @param {import("playwright-core").Page} page
 * @param {number} n
 * @param {string} [type]
 */
async function expectSequence(page, n, type = "n") {
  const of = async () => (await received(page)).filter((/** @type {any} */ m) => m.type === type);
  const got = await waitFor(async () => {
    const r = await of();
    return r.length >= n ? r : null;
  }, `${n} messages of ${type}`, 60000).catch(async (e) => {
    // Say what did arrive, to tell loss from reordering from slowness.
    const r = (await of()).map((/** @type {any} */ m) => m.data);
    const missing = [...Array(n).keys()].filter((i) => !r.includes(i));
    throw new Error(`${e.message}: got ${r.length}, first missing ${missing.slice(0, 10)}, last ${r.slice(-5)}`);
  });
  assert.deepEqual(got.map((/** @type {any} */ m) => m.data), [...Array(n).keys()], "in order, exactly once");
  return got;
}

test("a peer without WebRTC gets every message over the relay, exactly once, in order", async () => {
  const room = await server.room();
  const [a, b] = [await peer(), await peer({ noWebrtc: true })];
  const aId = await join(a.page, await server.token(room, "alice"));
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await Promise.all([waitPeers(a.page, 1), waitPeers(b.page, 1)]);
  const [sentAB, sentBA] = await within(
    Promise.all([burst(a.page, 200), burst(b.page, 200)]),
    async () => `sends never settled; A: ${await sdkState(a.page)} B: ${await sdkState(b.page)}`,
  );
  assert.equal(sentAB, 200);
  assert.equal(sentBA, 200);
  const atB = await expectSequence(b.page, 200);
  const atA = await expectSequence(a.page, 200);
  assert.ok(atB.every((/** @type {any} */ m) => m.path === "relay" && m.from === aId));
  assert.ok(atA.every((/** @type {any} */ m) => m.path === "relay" && m.from === bId));
  assert.equal(await pathTo(a.page, bId), "relay");
});

test("1,000 messages in a burst survive the data channel closing and coming back", async () => {
  const room = await server.room();
  const [a, b] = [await peer(), await peer()];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  // The burst yields now and then, so the channel closes while messages are still being sent.
  const sending = a.page.evaluate(async () => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < 1000; i++) {
      all.push(room.sendMessage("n", i));
      if (i % 20 === 19) await new Promise((r) => setTimeout(r, 20));
    }
    return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
  });
  // Tear the channel down in the middle of the burst.
  await waitFor(async () => (await received(b.page)).length >= 100, "the first messages");
  await a.page.evaluate((id) => /** @type {any} */ (window).room._test.closeChannel(id), bId);
  assert.equal(await sending, 1000, "every promise resolves");
  const got = await expectSequence(b.page, 1000);
  assert.ok(got.some((/** @type {any} */ m) => m.path === "relay"), "some went over the relay");
  // The channel is re-established and carries messages again.
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel to come back");
  await a.page.evaluate(() => /** @type {any} */ (window).room.sendMessage("after", 1));
  const after = await waitFor(async () => (await received(b.page)).find((/** @type {any} */ m) => m.type === "after"), "a message after");
  assert.equal(after.path, "p2p");
});

test("cutting a WebSocket for a few seconds loses nothing and nobody sees a leave", async () => {
  const room = await server.room();
  const [a, b] = [await peer({ noWebrtc: true }), await peer({ noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await Promise.all([waitPeers(a.page, 1), waitPeers(b.page, 1)]);
  const sending = a.page.evaluate(async () => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < 300; i++) {
      all.push(room.sendMessage("n", i));
      if (i === 100) room._test.cutSocket(3000);
      await new Promise((r) => setTimeout(r, 10));
    }
    return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
  });
  const sent = await within(sending, async () => `sends never settled; A: ${await sdkState(a.page)} B: ${await sdkState(b.page)}`);
  assert.equal(sent, 300);
  await expectSequence(b.page, 300).catch(async (e) => {
    throw new Error(`${e.message}; A: ${await sdkState(a.page)} B: ${await sdkState(b.page)}`);
  });
  assert.deepEqual(await b.page.evaluate(() => /** @type {any} */ (window).t.left), []);
  assert.deepEqual(await a.page.evaluate(() => /** @type {any} */ (window).t.left), []);
});

test("while the WebSocket is down, the data channel keeps delivering", async () => {
  const room = await server.room();
  const [a, b] = [await peer(), await peer()];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  const sent = await a.page.evaluate(async (bId) => {
    const room = /** @type {any} */ (window).room;
    room._test.cutSocket(4000);
    // The close completes asynchronously: send only once the WebSocket is really down.
    while (room.signaling.connected) await new Promise((r) => setTimeout(r, 5));
    const all = [];
    for (let i = 0; i < 100; i++) all.push(room.sendMessage("n", i, { to: bId }));
    const ok = (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
    return { ok, connected: room.signaling.connected };
  }, bId);
  // Every message was acknowledged while the WebSocket was still down.
  assert.deepEqual(sent, { ok: 100, connected: false });
  const got = await expectSequence(b.page, 100);
  assert.ok(got.every((/** @type {any} */ m) => m.path === "p2p"));
  await waitFor(() => a.page.evaluate(() => /** @type {any} */ (window).room.signaling.connected), "the WebSocket to come back");
  assert.deepEqual(await b.page.evaluate(() => /** @type {any} */ (window).t.left), []);
});

test("three peers: full mesh video, broadcast and targeted messages reach exactly the right peers", async () => {
  const room = await server.room();
  const peers = [await peer(), await peer(), await peer()];
  const ids = [];
  for (const [i, p] of peers.entries()) ids.push(await join(p.page, await server.token(room, `p${i}`)));
  await Promise.all(peers.map((p) => waitPeers(p.page, 2)));
  for (const [i, p] of peers.entries()) {
    for (const [j, other] of ids.entries()) {
      if (i === j) continue;
      await waitFor(async () => (await videoStats(p.page, other)).frames > 0, `video ${i}←${j}`);
    }
  }
  await peers[0].page.evaluate(async (to) => {
    const room = /** @type {any} */ (window).room;
    await room.sendMessage("all", "everyone");
    await room.sendMessage("one", "only you", { to });
  }, ids[2]);
  await waitFor(async () => (await received(peers[2].page)).length >= 2, "p2's messages");
  await waitFor(async () => (await received(peers[1].page)).length >= 1, "p1's message");
  // Give a misrouted message every chance to show up before checking p1 got only one.
  await peers[0].page.evaluate((to) => /** @type {any} */ (window).room.sendMessage("marker", 1, { to }), ids[1]);
  await waitFor(async () => (await received(peers[1].page)).some((/** @type {any} */ m) => m.type === "marker"), "marker");
  const at1 = (await received(peers[1].page)).map((/** @type {any} */ m) => m.type);
  const at2 = (await received(peers[2].page)).map((/** @type {any} */ m) => m.type);
  assert.deepEqual(at1, ["all", "marker"]);
  assert.deepEqual(at2, ["all", "one"]);
});

test("a 1 MiB message arrives intact over both paths; a larger one is refused", async () => {
  const room = await server.room();
  const [a, b, c] = [await peer(), await peer(), await peer({ noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  const cId = await join(c.page, await server.token(room, "carol"), { video: false, audio: false });
  await waitPeers(a.page, 2);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  const r = await a.page.evaluate(async ({ bId, cId }) => {
    const room = /** @type {any} */ (window).room;
    // JSON of exactly 1 MiB: {"s":"…"} is 8 bytes around the string.
    const big = { s: "z".repeat((1 << 20) - 8) };
    await room.sendMessage("big", big, { to: bId });
    await room.sendMessage("big", big, { to: cId });
    try {
      await room.sendMessage("big", { s: "z".repeat(1 << 20) });
      return "sent";
    } catch (e) {
      return /** @type {Error} */ (e).name;
    }
  }, { bId, cId });
  assert.equal(r, "MessageTooLargeError");
  for (const [page, path] of /** @type {const} */ ([[b.page, "p2p"], [c.page, "relay"]])) {
    const m = await waitFor(async () => page.evaluate(() => {
      const got = /** @type {any} */ (window).t.received.find((/** @type {any} */ m) => m.type === "big");
      return got ? { len: got.data.s.length, ok: /^z+$/.test(got.data.s), path: got.path } : null;
    }), "the big message");
    assert.deepEqual(m, { len: (1 << 20) - 8, ok: true, path });
  }
  // Nothing of the refused message arrived.
  const count = await b.page.evaluate(() => /** @type {any} */ (window).t.received.length);
  assert.equal(count, 1);
});
