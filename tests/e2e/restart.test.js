// @ts-check
// Calls survive the server and the user: a reload in a two-seat room, a closed tab, a server
// restarted (SIGTERM) or killed (SIGKILL) mid-call, and a rolling restart of a cluster, with
// real `bluecam serve` processes and real headless Chromium.
import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  TestServer, Redis, startCluster, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, endTestAndServers,
  stopServers, stopAll, videoStats, received, leftSeen, pathTo, paced, expectAll, expectEverythingDelivered,
} from "./harness.js";

afterEach(endTestAndServers);
after(stopAll);

/** @param {import("playwright-core").Page} page */
const states = (page) => evaluate(page, () => /** @type {any} */ (window).t.states, undefined, "the connection states");
/** @param {import("playwright-core").Page} page */
const connectionState = (page) => evaluate(page, () => /** @type {any} */ (window).room.connectionState, undefined, "room.connectionState");

/**
 * Joins a two-seat room the classic way (one `remoteVideo` element) as well as with a
 * `remoteVideos` container; records when each remote stream arrives.
 * @param {import("playwright-core").Page} page
 * @param {string} token
 */
function joinOneToOne(page, token) {
  return evaluate(page, async (token) => {
    const sdk = await import("/sdk/bluecam.js");
    /** @type {any} */
    const w = window;
    w.t = { left: [], joined: [], streams: [] };
    document.body.innerHTML = '<video id="remoteVideo"></video><div id="remotes"></div>';
    const started = performance.now();
    w.room = await sdk.joinRoom({
      token,
      remoteVideo: "remoteVideo",
      remoteVideos: "remotes",
      onPeerJoined: (/** @type {{id: string}} */ p) => w.t.joined.push(p.id),
      onPeerLeft: (/** @type {{id: string}} */ p) => w.t.left.push(p.id),
      onStream: (/** @type {{id: string}} */ p, /** @type {MediaStream} */ s) => w.t.streams.push([p.id, s.id]),
    });
    return { id: w.room.self.id, joinMs: performance.now() - started };
  }, token, "joinRoom (one-to-one)");
}

/**
 * Whether the page shows a playing stream of `peerId` in both the classic `remoteVideo`
 * element and its tile of the `remoteVideos` container.
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
function showsStreamOf(page, peerId) {
  return page.evaluate((id) => {
    /** @type {any} */
    const w = window;
    const streamOf = w.t.streams.filter((/** @type {string[]} */ s) => s[0] === id).map((/** @type {string[]} */ s) => s[1]).pop();
    const single = /** @type {HTMLVideoElement} */ (document.getElementById("remoteVideo"));
    const tile = /** @type {HTMLVideoElement | null} */ (document.querySelector(`#remotes video[data-peer="${CSS.escape(id)}"]`));
    const playing = (/** @type {HTMLVideoElement | null} */ v) => !!v && v.srcObject instanceof MediaStream &&
      v.srcObject.id === streamOf && v.videoWidth > 0 && v.currentTime > 0;
    return streamOf !== undefined && playing(single) && playing(tile);
  }, peerId);
}

test("two-seat room: the visitor reloads and is back at once, the owner's remoteVideo shows the new stream", async () => {
  const server = await TestServer.start();
  const r = await server.api("POST", "/v1/rooms", { maxPeers: 2, owner: "owner" });
  assert.equal(r.status, 201);
  const room = r.body.id;
  const owner = await launchPeer(server, { label: "owner" });
  const visitor = await launchPeer(server, { label: "visitor" });
  await joinOneToOne(owner.page, await server.token(room, "owner"));
  const first = await joinOneToOne(visitor.page, await server.token(room, "visitor"));
  await waitFor(() => showsStreamOf(owner.page, first.id), "the visitor's video at the owner");

  // A reload (the SDK leaves on pagehide), then the same again with a tab whose pagehide never
  // ran (a crashed renderer, a killed mobile browser): its seat is taken over by identity.
  let previous = first.id;
  for (const leaveOnPageHide of [true, false]) {
    if (!leaveOnPageHide) {
      await evaluate(visitor.page, () => {
        const room = /** @type {any} */ (window).room;
        removeEventListener("pagehide", room.onPageHide);
      }, undefined, "disabling the pagehide leave");
    }
    await visitor.page.reload();
    const again = await joinOneToOne(visitor.page, await server.token(room, "visitor"));
    assert.ok(again.joinMs < 2000, `back in within 2 s (took ${again.joinMs.toFixed(0)} ms)`);
    assert.notEqual(again.id, previous);
    await waitFor(async () => (await leftSeen(owner.page)).includes(previous), "the old visitor to leave");
    await waitFor(() => showsStreamOf(owner.page, again.id), "the new visitor's video in remoteVideo and remoteVideos").catch(async (e) => {
      const seen = await owner.page.evaluate(() => {
        const v = /** @type {HTMLVideoElement} */ (document.getElementById("remoteVideo"));
        return JSON.stringify({ streams: /** @type {any} */ (window).t.streams, single: v.srcObject && /** @type {MediaStream} */ (v.srcObject).id, w: v.videoWidth, t: v.currentTime, tiles: [...document.querySelectorAll("#remotes video")].map((x) => [/** @type {HTMLElement} */ (x).dataset.peer, /** @type {any} */ (x).srcObject?.id, /** @type {HTMLVideoElement} */ (x).currentTime]) });
      });
      throw new Error(`${e.message}: ${seen}`);
    });
    // The old tile is gone: one remote video, the new one.
    const tiles = await owner.page.evaluate(() => [...document.querySelectorAll("#remotes video")].map((v) => /** @type {HTMLElement} */ (v).dataset.peer));
    assert.deepEqual(tiles, [again.id]);
    previous = again.id;
  }
  const peers = await server.api("GET", `/v1/rooms/${room}/peers`);
  assert.equal(peers.body.peers.length, 2, JSON.stringify(peers.body));
  await expectEvents([owner, visitor]);
});

test("a closed tab: the others see it leave within 2 s", async () => {
  const server = await TestServer.start();
  const room = await server.room();
  const a = await launchPeer(server, { label: "stays" });
  const b = await launchPeer(server, { label: "closes" });
  await join(a.page, await server.token(room, "stays"), { video: false, audio: false });
  const bId = await join(b.page, await server.token(room, "closes"), { video: false, audio: false });
  await waitPeers(a.page, 1);
  const closed = Date.now();
  await b.page.close();
  await waitFor(async () => (await leftSeen(a.page)).includes(bId), "the closed tab's peer to leave", 10000);
  const ms = Date.now() - closed;
  assert.ok(ms < 2000, `peer_left within 2 s (took ${ms} ms)`);
  const peers = await server.api("GET", `/v1/rooms/${room}/peers`);
  assert.equal(peers.body.peers.length, 1);
  await expectEvents([a]);
});

for (const signal of /** @type {NodeJS.Signals[]} */ (["SIGTERM", "SIGKILL"])) {
  test(`the server restarted mid-call (${signal}): nobody leaves, P2P keeps flowing, relayed messages arrive once and in order`, async () => {
    const server = await TestServer.start();
    const room = await server.room();
    const a = await launchPeer(server, { label: "alice" });
    const b = await launchPeer(server, { label: "bob" });
    const c = await launchPeer(server, { label: "carol (no WebRTC)", noWebrtc: true });
    const aId = await join(a.page, await server.token(room, "alice"));
    const bId = await join(b.page, await server.token(room, "bob"));
    const cId = await join(c.page, await server.token(room, "carol"), { video: false, audio: false });
    await Promise.all([a, b, c].map((p) => waitPeers(p.page, 2)));
    await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");

    // Alice sends to everyone across the outage: bob over the data channel, carol over the
    // relay (her messages wait while the server is away).
    const N = 80;
    const sending = paced(a.page, N, "n", 50);
    sending.catch(() => {});
    await new Promise((r) => setTimeout(r, 1000));
    await server.restart(signal, 1000);
    const results = await sending;
    assert.deepEqual(results, { other: 0, unreachable: [] }, "every send resolved as delivered");
    await expectAll(b.page, aId, N, "n");
    await expectAll(c.page, aId, N, "n");
    // Bob got the ones sent while the server was down over the data channel.
    const atB = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "n");
    assert.ok(atB.every((/** @type {any} */ m) => m.path === "p2p"), "all of them peer to peer");
    // And carol answers over the relay, after the restart.
    await evaluate(c.page, () => /** @type {any} */ (window).room.sendMessage("back", "hi"), undefined, "carol's send");
    await waitFor(async () => (await received(a.page)).some((/** @type {any} */ m) => m.type === "back"), "carol's message at alice");

    // Nobody left, the room is joined, everyone is listed, video still flows.
    for (const p of [a, b, c]) {
      assert.deepEqual(await leftSeen(p.page), []);
      await waitFor(async () => (await connectionState(p.page)) === "connected", "connected again");
      const seen = await states(p.page);
      assert.deepEqual(seen.slice(-2), ["reconnecting", "connected"], `${p.label}: ${seen}`);
    }
    const peers = await server.api("GET", `/v1/rooms/${room}/peers`);
    assert.deepEqual(peers.body.peers.map((/** @type {any} */ p) => p.id).sort(), [aId, bId, cId].sort());
    const before = (await videoStats(b.page, aId)).frames;
    await waitFor(async () => (await videoStats(b.page, aId)).frames > before + 10, "video frames after the restart");
    await expectEvents([a, b, c]);
  });
}

test("the server frozen (SIGSTOP) for 20 s: the SDK notices, nobody leaves, relayed messages wait and arrive once, in order", async () => {
  const server = await TestServer.start();
  const room = await server.room();
  const a = await launchPeer(server, { label: "alice (no WebRTC)", noWebrtc: true });
  const b = await launchPeer(server, { label: "bob (no WebRTC)", noWebrtc: true });
  const media = { video: false, audio: false };
  const aId = await join(a.page, await server.token(room, "alice"), media);
  const bId = await join(b.page, await server.token(room, "bob"), media);
  await Promise.all([a, b].map((p) => waitPeers(p.page, 1)));
  const N = 60;
  const sending = paced(a.page, N, "n", 100);
  sending.catch(() => {});
  await new Promise((r) => setTimeout(r, 1000));
  const frozenAt = Date.now();
  const freezing = server.freeze(20000);
  // The socket stays open and silent: the SDK's own watchdog has to notice (12 s of silence).
  for (const p of [a, b]) {
    await waitFor(async () => (await connectionState(p.page)) === "reconnecting", "the SDK to notice the frozen server", 19000);
  }
  assert.ok(Date.now() - frozenAt < 20000, "noticed while still frozen");
  await freezing;
  assert.deepEqual(await sending, { other: 0, unreachable: [] }, "every send resolved as delivered");
  await expectAll(b.page, aId, N, "n");
  for (const p of [a, b]) {
    assert.deepEqual(await leftSeen(p.page), [], `${p.label}: nobody left`);
    await waitFor(async () => (await connectionState(p.page)) === "connected", "connected again");
  }
  await evaluate(b.page, () => /** @type {any} */ (window).room.sendMessage("back", 1), undefined, "bob's send after the thaw");
  await waitFor(async () => (await received(a.page)).some((/** @type {any} */ m) => m.type === "back" && m.from === bId), "bob's message at alice");
  await expectEvents([a, b]);
});

test("a rolling restart of a three-node cluster during a call: no call ends, nothing lost or doubled", async () => {
  const redis = await Redis.start();
  try {
    const nodes = await startCluster(redis, 3, 3);
    const urls = nodes.map((n) => n.url);
    const room = await nodes[0].room();
    // Relay only, so every message crosses the cluster; each browser prefers another node.
    const peers = [];
    const ids = [];
    for (let i = 0; i < 4; i++) {
      const p = await launchPeer(nodes[i % 3], { label: `peer${i}`, noWebrtc: true });
      peers.push(p);
      const order = [...urls.slice(i % 3), ...urls.slice(0, i % 3)];
      ids.push(await join(p.page, await nodes[0].token(room, `peer${i}`), { video: false, audio: false }, order));
    }
    await Promise.all(peers.map((p) => waitPeers(p.page, 3)));
    const N = 150;
    const sending = Promise.all(peers.map((p) => paced(p.page, N, "n", 40)));
    sending.catch(() => {});
    // Each node in turn: SIGTERM, start again on its address (what a deploy does).
    for (const node of nodes) {
      await new Promise((r) => setTimeout(r, 700));
      await node.restart("SIGTERM");
    }
    await expectEverythingDelivered(peers, ids, N, sending);
    await expectEvents(peers);
  } finally {
    await stopServers();
    await redis.stop();
  }
});
