// @ts-check
// The SDK in real headless Chromium against a cluster: several `bluecam serve --redis` nodes
// sharing rooms through a real redis-server, one node killed with SIGKILL mid-stream.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import {
  Redis, startCluster, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, endTestAndServers, stopServers, stopAll,
  videoStats, received, leftSeen, pathTo, paced, expectAll, expectEverythingDelivered,
} from "./harness.js";

/** @type {Redis} */
let redis;

before(async () => {
  redis = await Redis.start();
});
// Each test's pages, then its nodes (every node started, whatever failed and when), go.
afterEach(endTestAndServers);
after(stopAll);

/**
 * @param {import("./harness.js").TestServer} node
 * @param {string} label
 * @param {{noWebrtc?: boolean, noWebSocket?: boolean}} [opts]
 */
const peer = (node, label, opts) => launchPeer(node, { ...opts, label });

test("two browsers on two nodes: P2P video and messages over the data channel and the relay", async () => {
  const [n1, n2] = await startCluster(redis, 2, 15);
  const room = await n1.room();
  const [a, b] = [await peer(n1, "alice"), await peer(n2, "bob")];
  const aId = await join(a.page, await n1.token(room, "alice"), undefined, [n1.url]);
  const bId = await join(b.page, await n2.token(room, "bob"), undefined, [n2.url]);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
  await waitFor(async () => (await videoStats(b.page, aId)).frames > 0, "decoded video frames across nodes");
  // Over the data channel...
  await evaluate(a.page, () => /** @type {any} */ (window).room.sendMessage("hello", { over: "p2p" }), undefined, "a send over the data channel");
  // ...and over the relay, which now crosses the two nodes through Redis: sent as soon as the
  // SDK switched to it (in the same task), so before a new connection is tried a second later.
  await evaluate(b.page, async (id) => {
    const room = /** @type {any} */ (window).room;
    const switched = new Promise((resolve) => {
      window.addEventListener("bluecam-path", (e) => {
        const { id: peer, path } = /** @type {CustomEvent} */ (e).detail;
        if (peer === id && path === "relay") resolve(undefined);
      });
    });
    room._test.closeChannel(id);
    await switched;
    await room.sendMessage("hello", { over: "relay" });
  }, aId, "a send over the relay once the data channel closed");
  const atB = await waitFor(async () => (await received(b.page)).find((/** @type {any} */ m) => m.type === "hello"), "a message at B");
  assert.deepEqual([atB.data, atB.from, atB.path], [{ over: "p2p" }, aId, "p2p"]);
  const atA = await waitFor(async () => (await received(a.page)).find((/** @type {any} */ m) => m.type === "hello"), "a message at A");
  assert.deepEqual([atA.data, atA.from, atA.path], [{ over: "relay" }, bId, "relay"]);
  // A closed data channel is no error, and nobody left: no gap.
  await expectEvents([a, b]);
});

test("a node killed mid-stream: its peers resume elsewhere, or leave within the expiry; no message lost or doubled", async () => {
  const TTL = 3;
  // A short resume window: the peers of a dead node stay in their rooms, resumable anywhere,
  // for that long; the stranded peer below leaves when it ends.
  const [n1, n2, n3] = await startCluster(redis, 3, TTL, "[limits]\nresume_window_secs = 8\n");
  const room = await n1.room();
  // Relay only (no WebRTC), so every message crosses the nodes.
  const peers = [
    await peer(n1, "peer0", { noWebrtc: true }), await peer(n2, "peer1", { noWebrtc: true }), await peer(n3, "peer2", { noWebrtc: true }),
  ];
  const lists = [[n1.url, n2.url, n3.url], [n2.url, n3.url, n1.url], [n3.url, n1.url, n2.url]];
  const ids = [];
  for (const [i, p] of peers.entries()) {
    ids.push(await join(p.page, await n1.token(room, `peer${i}`), { video: false, audio: false }, lists[i]));
  }
  // A fourth peer on the node to be killed, which knows no other node: it cannot come back.
  const stranded = await peer(n3, "stranded", { noWebrtc: true });
  const strandedId = await join(stranded.page, await n1.token(room, "stranded"), { video: false, audio: false }, [n3.url]);
  await Promise.all(peers.map((p) => waitPeers(p.page, 3)));

  const N = 300;
  const sending = Promise.all(peers.map((p) => paced(p.page, N, "n", 10)));
  sending.catch(() => {}); // (awaited below; a failure before that must not go unhandled)
  await new Promise((r) => setTimeout(r, 1000));
  await n3.kill();

  // The stranded peer leaves the room for the others once the dead node's liveness has expired
  // and its resume window has passed (the figures are a benchmark's business: here a generous
  // deadline).
  for (const p of peers.slice(0, 2)) {
    await waitFor(async () => (await leftSeen(p.page)).includes(strandedId), "the stranded peer to leave");
  }

  // Every sendMessage settled; the only peer any of them did not reach is the stranded one.
  for (const r of await sending) assert.deepEqual(r, { other: 0, unreachable: [strandedId] });
  for (const [i, p] of peers.entries()) {
    for (const [j, from] of ids.entries()) {
      if (i !== j) await expectAll(p.page, from, N, "n");
    }
  }
  // The peer of the killed node kept its id and never left anyone's room.
  assert.equal(await evaluate(peers[2].page, () => /** @type {any} */ (window).room.self.id, undefined, "room.self.id"), ids[2]);
  for (const p of peers.slice(0, 2)) assert.ok(!(await leftSeen(p.page)).includes(ids[2]));

  // Nothing reported: the server answers a `send` to peers on a node it cannot reach with
  // `unavailable`, which is the delivery layer's business (it retransmits until acknowledged;
  // a peer that is really gone leaves), not the app's. No gap: nobody who sent anything left.
  await expectEvents(peers);
  // The stranded peer keeps retrying its dead node (only a server may end a session: a node
  // that comes back says whether it still holds it). Its app sees "reconnecting", no error.
  assert.equal(await evaluate(stranded.page, () => /** @type {any} */ (window).room.connectionState, undefined, "connectionState"), "reconnecting");
  await expectEvents([stranded]);
});

test("a node frozen (SIGSTOP) past its expiry, then thawed: its peers resume elsewhere, nobody leaves, nothing lost or doubled", async () => {
  const [n1, n2, n3] = await startCluster(redis, 3, 3);
  const room = await n1.room();
  const nodes = [n1, n2, n3, n3];
  const urls = [n1.url, n2.url, n3.url];
  const peers = [];
  const ids = [];
  for (let i = 0; i < 4; i++) {
    const p = await peer(nodes[i], `peer${i}`, { noWebrtc: true });
    peers.push(p);
    const first = urls.indexOf(nodes[i].url);
    const order = [...urls.slice(first), ...urls.slice(0, first)];
    ids.push(await join(p.page, await n1.token(room, `peer${i}`), { video: false, audio: false }, order));
  }
  await Promise.all(peers.map((p) => waitPeers(p.page, 3)));
  const N = 150;
  const sending = Promise.all(peers.map((p) => paced(p.page, N, "n", 40)));
  sending.catch(() => {});
  await new Promise((r) => setTimeout(r, 1000));
  // Frozen for 16 s: reaped after 3 s, its clients notice the silence after 12 s and resume on
  // another node; then it thaws, finds its peers gone elsewhere and lets them go.
  await n3.freeze(16000);
  await expectEverythingDelivered(peers, ids, N, sending);
  await expectEvents(peers);
});

test("chaos: a node killed, a node frozen past its expiry, Redis killed and restarted from its file, then restarted empty, half the clients without WebSocket: nothing lost, doubled or reordered, every send settles, nobody leaves", async () => {
  const own = await Redis.start();
  try {
    const nodes = await startCluster(own, 3, 3);
    const room = await nodes[0].room();
    const urls = nodes.map((n) => n.url);
    const homes = [0, 1, 2, 2];
    const peers = [];
    const ids = [];
    for (const [i, home] of homes.entries()) {
      // (Every other client has no WebSocket: it speaks HTTP, its requests handed between the
      // nodes as their sessions move.)
      const noWebSocket = i % 2 === 1;
      const p = await peer(nodes[home], `peer${i}${noWebSocket ? " (HTTP)" : ""}`, { noWebrtc: true, noWebSocket });
      peers.push(p);
      const order = [...urls.slice(home), ...urls.slice(0, home)];
      ids.push(await join(p.page, await nodes[0].token(room, `peer${i}`), { video: false, audio: false }, order));
    }
    await Promise.all(peers.map((p) => waitPeers(p.page, 3)));
    const transports = await Promise.all(peers.map((p) => evaluate(p.page, () => /** @type {any} */ (window).room.transport, undefined, "transport")));
    assert.deepEqual(transports, ["websocket", "http", "websocket", "http"]);
    const N = 400;
    const sending = Promise.all(peers.map((p) => paced(p.page, N, "n", 50)));
    sending.catch(() => {});
    const pause = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));
    await pause(1000);
    await nodes[2].restart("SIGKILL"); // its two clients resume elsewhere; it comes back as a new node
    await pause(2000);
    await nodes[0].freeze(8000); // reaped after 3 s; thawed before its clients give it up
    await pause(2000);
    await own.restart({ signal: "SIGKILL" }); // from its append-only file
    await pause(2000);
    await own.restart({ empty: true }); // without its data
    await expectEverythingDelivered(peers, ids, N, sending);
    await expectEvents(peers);
  } finally {
    await stopServers();
    await own.stop();
  }
});
