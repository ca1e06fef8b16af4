// @ts-check
// The SDK in real headless Chromium against a real server: P2P video, messages over the data
// channel and over the relay, failures of either path, errors, limits.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, stopAll, videoStats,
  received, leftSeen, pathTo, sdkState, burst,
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

/**
 * Both sides' state, for failure messages.
 * @param {{page: import("playwright-core").Page}} a
 * @param {{page: import("playwright-core").Page}} b
 */
const bothStates = (a, b) => async () => `A: ${await sdkState(a.page)} B: ${await sdkState(b.page)}`;


test("two peers: P2P video over a direct candidate pair and messages over the data channel", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  const aId = await join(a.page, await server.token(room, "alice"));
  const bId = await join(b.page, await server.token(room, "bob"));
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
  for (const [page, other] of [[a.page, bId], [b.page, aId]]) {
    const s = await waitFor(async () => {
      const v = await videoStats(/** @type {any} */ (page), /** @type {string} */ (other));
      return v.frames > 0 ? v : null;
    }, "decoded video frames");
    // Direct: no TURN relay on either side. (On one machine the pair is host to host, or a
    // peer-reflexive candidate when a connectivity check arrives before the candidate's signal.)
    assert.ok(s.local !== "" && s.local !== "relay" && s.remote !== "" && s.remote !== "relay",
      `a direct candidate pair, got ${s.local} to ${s.remote}`);
  }
  await evaluate(a.page, async () => {
    const room = /** @type {any} */ (window).room;
    await room.sendMessage("shareLink", "https://example.com/x");
    await room.sendMessage("changedDrawing", { circles: [{ x: 1 }], rectangles: [], triangles: [], bgColor: "blue" });
  }, undefined, "two sendMessage calls");
  const got = await waitFor(async () => {
    const r = await received(b.page);
    return r.length >= 2 ? r : null;
  }, "two messages");
  assert.deepEqual(got, [
    { type: "shareLink", data: "https://example.com/x", from: aId, path: "p2p" },
    { type: "changedDrawing", data: { circles: [{ x: 1 }], rectangles: [], triangles: [], bgColor: "blue" }, from: aId, path: "p2p" },
  ]);
  await expectEvents([a, b]);
});

test("a missing room calls roomNotFoundCallback and rejects with RoomNotFoundError; a bad token with UnauthorizedError", async () => {
  const p = await peer("joiner");
  const room = await server.room();
  const token = await server.token(room, "x");
  assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
  const r = await evaluate(p.page, async ({ token }) => {
    const sdk = await import("/sdk/bluecam.js");
    let called = 0;
    /** @type {{name: string, code: unknown}[]} */
    const rejections = [];
    for (const t of [token, "not-a-token"]) {
      try {
        await sdk.joinRoom({ token: t, video: false, audio: false, roomNotFoundCallback: () => called++ });
        rejections.push({ name: "resolved", code: null });
      } catch (e) {
        rejections.push({ name: /** @type {Error} */ (e).name, code: /** @type {any} */ (e).code });
      }
    }
    return { called, rejections };
  }, { token }, "two joinRoom calls to fail");
  assert.deepEqual(r, {
    called: 1,
    rejections: [{ name: "RoomNotFoundError", code: "room_not_found" }, { name: "UnauthorizedError", code: "unauthorized" }],
  });
  // A failed join rejects: it does not also call onError (nor onGap: no room, no peers).
  await expectEvents([p]);
});

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
  }, `${n} messages of ${type}`).catch(async (e) => {
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
  const [a, b] = [await peer("alice"), await peer("bob", { noWebrtc: true })];
  const aId = await join(a.page, await server.token(room, "alice"));
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await Promise.all([waitPeers(a.page, 1), waitPeers(b.page, 1)]);
  const [sentAB, sentBA] = await Promise.all([burst(a.page, 200, bothStates(a, b)), burst(b.page, 200, bothStates(a, b))]);
  assert.equal(sentAB, 200);
  assert.equal(sentBA, 200);
  const atB = await expectSequence(b.page, 200);
  const atA = await expectSequence(a.page, 200);
  assert.ok(atB.every((/** @type {any} */ m) => m.path === "relay" && m.from === aId));
  assert.ok(atA.every((/** @type {any} */ m) => m.path === "relay" && m.from === bId));
  assert.equal(await pathTo(a.page, bId), "relay");
  await expectEvents([a, b]);
});

test("1,000 messages in a burst survive the data channel closing and coming back", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  // The sender is gated, so that the channel closes at the same point of the burst every time:
  // 0-299 go over the data channel and are acknowledged; 300-599 are handed to the data
  // channel and the channel is closed before any ack can come back (acks arrive in tasks, this
  // runs in microtasks); 600-999 are sent as soon as the SDK has switched to the relay (in the
  // same task as the switch, so before the new connection can be tried a second later).
  const r = await evaluate(a.page, async (bId) => {
    const room = /** @type {any} */ (window).room;
    const outbox = room.remotes.get(bId).outbox;
    const send = (/** @type {number} */ from, /** @type {number} */ to) => {
      const sent = [];
      for (let i = from; i < to; i++) sent.push(room.sendMessage("n", i));
      return sent;
    };
    const acked = send(0, 300);
    await Promise.all(acked);
    const inChannel = send(300, 600);
    for (let spins = 0; outbox.pending.length < 300 || outbox.pending.some((/** @type {any} */ e) => e.via === "none"); spins++) {
      if (spins > 100000) throw new Error("messages 300-599 were never handed to a path");
      await Promise.resolve();
    }
    const inFlight = outbox.pending.filter((/** @type {any} */ e) => e.via === "p2p").length;
    const switched = new Promise((resolve) => {
      window.addEventListener("bluecam-path", (e) => {
        const { id, path } = /** @type {CustomEvent} */ (e).detail;
        if (id === bId && path === "relay") resolve(undefined);
      });
    });
    room._test.closeChannel(bId);
    await switched;
    const pathAfterClose = room.path(bId);
    const overRelay = send(600, 1000);
    const ok = (await Promise.allSettled([...acked, ...inChannel, ...overRelay])).filter((s) => s.status === "fulfilled").length;
    return { inFlight, pathAfterClose, ok };
  }, bId, "1,000 sends to settle", undefined, bothStates(a, b));
  assert.deepEqual(r, { inFlight: 300, pathAfterClose: "relay", ok: 1000 }, "300 unacknowledged on the data channel when it closed; every promise resolved");
  const got = await expectSequence(b.page, 1000);
  // What was sent after the close went over the relay (by then everything before it had
  // arrived, on one path or the other: the relay carries the retransmissions first).
  assert.deepEqual(got.slice(600).filter((/** @type {any} */ m) => m.path !== "relay"), [], "600-999 over the relay");
  // The channel is re-established and carries messages again.
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel to come back");
  await evaluate(a.page, () => /** @type {any} */ (window).room.sendMessage("after", 1), undefined, "a send after the channel came back");
  const later = await waitFor(async () => (await received(b.page)).find((/** @type {any} */ m) => m.type === "after"), "a message after");
  assert.equal(later.path, "p2p");
  // Nothing arrived twice meanwhile.
  await expectSequence(b.page, 1000);
  await expectEvents([a, b]);
});

test("cutting a WebSocket for a few seconds loses nothing and nobody sees a leave", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice", { noWebrtc: true }), await peer("bob", { noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await Promise.all([waitPeers(a.page, 1), waitPeers(b.page, 1)]);
  const sent = await evaluate(a.page, async () => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < 300; i++) {
      all.push(room.sendMessage("n", i));
      if (i === 100) room._test.cutSocket(3000);
      await new Promise((r) => setTimeout(r, 10));
    }
    return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
  }, undefined, "300 sends to settle", undefined, bothStates(a, b));
  assert.equal(sent, 300);
  await expectSequence(b.page, 300).catch(async (e) => {
    throw new Error(`${e.message}; ${await bothStates(a, b)()}`);
  });
  assert.deepEqual(await leftSeen(b.page), []);
  assert.deepEqual(await leftSeen(a.page), []);
  // The cut was resumed: no error, and nothing lost on the way (no gap).
  await expectEvents([a, b]);
});

test("while the WebSocket is down, the data channel keeps delivering", async () => {
  const room = await server.room();
  const [a, b] = [await peer("alice"), await peer("bob")];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  // The WebSocket stays down until the test lets it back (HOLD_MS is only a deadline, kept
  // under the server's 60 s resume window): every send settles while it is down.
  const HOLD_MS = 45000;
  const sent = await evaluate(a.page, async ({ bId, HOLD_MS }) => {
    const room = /** @type {any} */ (window).room;
    room._test.cutSocket(HOLD_MS);
    // The close completes asynchronously: send only once the WebSocket is really down.
    while (room.signaling.connected) await new Promise((r) => setTimeout(r, 5));
    const all = [];
    for (let i = 0; i < 100; i++) all.push(room.sendMessage("n", i, { to: bId }));
    const ok = (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
    return { ok, connected: room.signaling.connected };
  }, { bId, HOLD_MS }, "100 sends over the data channel while the WebSocket is down", HOLD_MS - 5000, bothStates(a, b));
  // Every message was acknowledged while the WebSocket was still down.
  assert.deepEqual(sent, { ok: 100, connected: false });
  const got = await expectSequence(b.page, 100);
  assert.ok(got.every((/** @type {any} */ m) => m.path === "p2p"));
  // Now let it back: lift the cut (the SDK's _test hooks have no "end the cut", so reset what
  // cut() set) and reconnect after the SDK's own back-off.
  await evaluate(a.page, () => {
    const signaling = /** @type {any} */ (window).room.signaling;
    signaling.blockedUntil = 0;
    signaling.scheduleReconnect();
  }, undefined, "lifting the cut");
  await waitFor(() => a.page.evaluate(() => /** @type {any} */ (window).room.signaling.connected), "the WebSocket to come back");
  assert.deepEqual(await leftSeen(b.page), []);
  await expectEvents([a, b]);
});

test("three peers: full mesh video, broadcast and targeted messages reach exactly the right peers", async () => {
  const room = await server.room();
  const peers = [await peer("p0"), await peer("p1"), await peer("p2")];
  const ids = [];
  for (const [i, p] of peers.entries()) ids.push(await join(p.page, await server.token(room, `p${i}`)));
  await Promise.all(peers.map((p) => waitPeers(p.page, 2)));
  for (const [i, p] of peers.entries()) {
    for (const [j, other] of ids.entries()) {
      if (i === j) continue;
      await waitFor(async () => (await videoStats(p.page, other)).frames > 0, `video ${i}←${j}`);
    }
  }
  await evaluate(peers[0].page, async (to) => {
    const room = /** @type {any} */ (window).room;
    await room.sendMessage("all", "everyone");
    await room.sendMessage("one", "only you", { to });
  }, ids[2], "a broadcast and a targeted send");
  await waitFor(async () => (await received(peers[2].page)).length >= 2, "p2's messages");
  await waitFor(async () => (await received(peers[1].page)).length >= 1, "p1's message");
  // Give a misrouted message every chance to show up before checking p1 got only one.
  await evaluate(peers[0].page, (to) => /** @type {any} */ (window).room.sendMessage("marker", 1, { to }), ids[1], "a marker send");
  await waitFor(async () => (await received(peers[1].page)).some((/** @type {any} */ m) => m.type === "marker"), "marker");
  const at1 = (await received(peers[1].page)).map((/** @type {any} */ m) => m.type);
  const at2 = (await received(peers[2].page)).map((/** @type {any} */ m) => m.type);
  assert.deepEqual(at1, ["all", "marker"]);
  assert.deepEqual(at2, ["all", "one"]);
  await expectEvents(peers);
});

test("data first: the first offer and answer carry only the data channel; the media offer and answer go over it; video follows both ways, to and from a peer without a camera", async () => {
  const room = await server.room();
  const peers = [await peer("cam0"), await peer("cam1"), await peer("nocam")];
  // Every local description each page sets, in order, per peer connection.
  for (const p of peers) {
    await evaluate(p.page, () => {
      /** @type {any} */
      const w = window;
      w.sdps = [];
      const set = RTCPeerConnection.prototype.setLocalDescription;
      RTCPeerConnection.prototype.setLocalDescription = async function (/** @type {any} */ ...args) {
        await set.apply(this, /** @type {any} */ (args));
        const pc = /** @type {any} */ (this);
        pc.n ??= w.sdps.length;
        w.sdps.push({ pc: pc.n, type: this.localDescription?.type, sdp: this.localDescription?.sdp ?? "" });
      };
      // Descriptions sent through the server.
      w.viaServer = 0;
      const send = WebSocket.prototype.send;
      WebSocket.prototype.send = function (/** @type {any} */ data) {
        if (typeof data === "string" && data.includes('"description"')) w.viaServer++;
        return send.call(this, data);
      };
    }, undefined, "record local descriptions");
  }
  const ids = [];
  for (const [i, p] of peers.entries()) {
    ids.push(await join(p.page, await server.token(room, `p${i}`), i === 2 ? { video: false, audio: false } : { video: true, audio: true }));
  }
  await Promise.all(peers.map((p) => waitPeers(p.page, 2)));
  // Video: between the cameras, and from each camera to the peer without one.
  for (const [to, from] of [[0, 1], [1, 0], [2, 0], [2, 1]]) {
    await waitFor(async () => (await videoStats(peers[to].page, ids[from])).frames > 0, `video ${to}←${from}`);
  }
  for (const [i, p] of peers.entries()) {
    for (const [j, other] of ids.entries()) {
      if (i !== j) await waitFor(async () => (await pathTo(p.page, other)) === "p2p", `the data channel ${i}→${j}`);
    }
    const sdps = /** @type {{pc: number, type: string, sdp: string}[]} */ (await evaluate(p.page, () => /** @type {any} */ (window).sdps, undefined, "the descriptions"));
    const firsts = [...new Map(sdps.toReversed().map((d) => [d.pc, d])).values()];
    assert.equal(firsts.length, 2, `two peer connections at ${i}`);
    for (const d of firsts) {
      assert.match(d.sdp, /^m=application /m, `the first ${d.type} at ${i} has the data channel`);
      assert.doesNotMatch(d.sdp, /^m=(audio|video) /m, `the first ${d.type} at ${i} has no media`);
    }
    // Through the server: only the first offer or answer of each of its two connections.
    assert.equal(await evaluate(p.page, () => /** @type {any} */ (window).viaServer, undefined, "count"), 2, `descriptions through the server at ${i}`);
    assert.ok(sdps.length > 2, `the media's offer or answer at ${i} too`);
  }
  // The peer without a camera sends none (its connections only receive).
  for (const cam of [0, 1]) assert.equal((await videoStats(peers[cam].page, ids[2])).frames, 0, `no video ${cam}←2`);
  await expectEvents(peers);
});

test("a 1 MiB message arrives intact over both paths; a larger one is refused", async () => {
  const room = await server.room();
  const [a, b, c] = [await peer("alice"), await peer("bob"), await peer("carol", { noWebrtc: true })];
  await join(a.page, await server.token(room, "alice"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "bob"), { video: false, audio: false });
  const cId = await join(c.page, await server.token(room, "carol"), { video: false, audio: false });
  await waitPeers(a.page, 2);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel");
  const r = await evaluate(a.page, async ({ bId, cId }) => {
    const room = /** @type {any} */ (window).room;
    // JSON of exactly 1 MiB: {"s":"…"} is 8 bytes around the string.
    const big = { s: "z".repeat((1 << 20) - 8) };
    await room.sendMessage("big", big, { to: bId });
    await room.sendMessage("big", big, { to: cId });
    try {
      await room.sendMessage("big", { s: "z".repeat(1 << 20) });
      return { name: "sent", code: null };
    } catch (e) {
      return { name: /** @type {Error} */ (e).name, code: /** @type {any} */ (e).code };
    }
  }, { bId, cId }, "two 1 MiB sends and a refused one", undefined, async () => `A: ${await sdkState(a.page)}`);
  // Refused by sendMessage (it rejects; onError is not called for it, see below).
  assert.deepEqual(r, { name: "MessageTooLargeError", code: "too_large" });
  for (const [page, path] of /** @type {const} */ ([[b.page, "p2p"], [c.page, "relay"]])) {
    const m = await waitFor(async () => page.evaluate(() => {
      const got = /** @type {any} */ (window).t.received.find((/** @type {any} */ m) => m.type === "big");
      return got ? { len: got.data.s.length, ok: /^z+$/.test(got.data.s), path: got.path } : null;
    }), "the big message");
    assert.deepEqual(m, { len: (1 << 20) - 8, ok: true, path });
  }
  // Nothing of the refused message arrived.
  assert.equal((await received(b.page)).length, 1);
  // No error reported anywhere (the refusal is sendMessage's rejection alone), no gap.
  await expectEvents([a, b, c]);
});
