// @ts-check
// The SDK in real headless Chromium against a cluster: several `bluecam serve --redis` nodes
// sharing rooms through a real redis-server, one node killed with SIGKILL mid-stream.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Redis, startCluster, launchPeer, join, waitFor, waitPeers } from "./harness.js";

/** @type {Redis} */
let redis;
/** @type {{close: () => Promise<void>}[]} */
let open = [];
/** @type {import("./harness.js").TestServer[]} */
let nodes = [];

before(async () => {
  redis = await Redis.start();
});
after(async () => {
  await Promise.all(open.map((p) => p.close()));
  await Promise.all(nodes.map((n) => n.stop()));
  await redis.stop();
});

/**
 * @param {import("./harness.js").TestServer} node
 * @param {{noWebrtc?: boolean}} [opts]
 */
async function peer(node, opts) {
  const p = await launchPeer(node, opts);
  open.push(p);
  return p;
}

/** @param {import("playwright-core").Page} page */
const received = (page) => page.evaluate(() => /** @type {any} */ (window).t.received);
/** @param {import("playwright-core").Page} page */
const leftSeen = (page) => page.evaluate(() => /** @type {any} */ (window).t.left);
/**
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
const pathTo = (page, peerId) => page.evaluate((id) => /** @type {any} */ (window).room.path(id), peerId);

/**
 * Sends `n` numbered messages of `type` to everyone, one every `everyMs`; resolves with how
 * many promises resolved and the peers named by those rejected (PeerUnreachableError).
 * @param {import("playwright-core").Page} page
 * @param {number} n
 * @param {string} type
 * @param {number} everyMs
 */
function paced(page, n, type, everyMs) {
  return page.evaluate(async ({ n, type, everyMs }) => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < n; i++) {
      all.push(room.sendMessage(type, i));
      await new Promise((r) => setTimeout(r, everyMs));
    }
    const settled = await Promise.allSettled(all);
    const unreachable = new Set();
    let other = 0;
    for (const s of settled) {
      if (s.status === "fulfilled") continue;
      if (s.reason?.name === "PeerUnreachableError") for (const p of s.reason.peers) unreachable.add(p);
      else other++;
    }
    return { other, unreachable: [...unreachable] };
  }, { n, type, everyMs });
}

/**
 * Waits until `page` has `n` messages of `type` from `from`, then checks they are 0..n-1.
 * @param {import("playwright-core").Page} page
 * @param {string} from
 * @param {number} n
 * @param {string} type
 */
async function expectAll(page, from, n, type) {
  const of = async () => (await received(page))
    .filter((/** @type {any} */ m) => m.type === type && m.from === from)
    .map((/** @type {any} */ m) => m.data);
  const got = await waitFor(async () => {
    const r = await of();
    return r.length >= n ? r : null;
  }, `${n} messages of ${type}`, 60000).catch(async (e) => {
    const r = await of();
    const missing = [...Array(n).keys()].filter((i) => !r.includes(i));
    throw new Error(`${e.message}: got ${r.length}, first missing ${missing.slice(0, 10)}`);
  });
  // Let duplicates, if any, arrive before judging.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await of(), [...Array(n).keys()], `from ${from}: every message once, in order`);
  assert.equal(got.length, n);
}

test("two browsers on two nodes: P2P video and messages over the data channel and the relay", async () => {
  nodes = await startCluster(redis, 2, 15);
  const [n1, n2] = nodes;
  const room = await n1.room();
  const [a, b] = [await peer(n1), await peer(n2)];
  const aId = await join(a.page, await n1.token(room, "alice"), undefined, [n1.url]);
  const bId = await join(b.page, await n2.token(room, "bob"), undefined, [n2.url]);
  await waitFor(async () => (await pathTo(a.page, bId)) === "p2p" && (await pathTo(b.page, aId)) === "p2p", "the data channel");
  await waitFor(() => b.page.evaluate(async (id) => {
    const pc = /** @type {any} */ (window).room.remotes.get(id)?.link?.pc;
    let frames = 0;
    (await pc.getStats()).forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
    });
    return frames > 0;
  }, aId), "decoded video frames across nodes");
  // Over the data channel...
  await a.page.evaluate(() => /** @type {any} */ (window).room.sendMessage("hello", { over: "p2p" }));
  // ...and over the relay, which now crosses the two nodes through Redis.
  await b.page.evaluate((id) => /** @type {any} */ (window).room._test.closeChannel(id), aId);
  await waitFor(async () => (await pathTo(b.page, aId)) === "relay", "the relay path");
  await b.page.evaluate(() => /** @type {any} */ (window).room.sendMessage("hello", { over: "relay" }));
  const atB = await waitFor(async () => (await received(b.page)).find((/** @type {any} */ m) => m.type === "hello"), "a message at B");
  assert.deepEqual([atB.data, atB.from, atB.path], [{ over: "p2p" }, aId, "p2p"]);
  const atA = await waitFor(async () => (await received(a.page)).find((/** @type {any} */ m) => m.type === "hello"), "a message at A");
  assert.deepEqual([atA.data, atA.from, atA.path], [{ over: "relay" }, bId, "relay"]);
  await Promise.all(open.map((p) => p.close()));
  open = [];
  await Promise.all(nodes.map((n) => n.stop()));
  nodes = [];
});

test("a node killed mid-stream: its peers resume elsewhere, or leave within the expiry; no message lost or doubled", async () => {
  const TTL = 3;
  nodes = await startCluster(redis, 3, TTL);
  const [n1, n2, n3] = nodes;
  const room = await n1.room();
  // Relay only (no WebRTC), so every message crosses the nodes.
  const peers = [await peer(n1, { noWebrtc: true }), await peer(n2, { noWebrtc: true }), await peer(n3, { noWebrtc: true })];
  const lists = [[n1.url, n2.url, n3.url], [n2.url, n3.url, n1.url], [n3.url, n1.url, n2.url]];
  const ids = [];
  for (const [i, p] of peers.entries()) {
    ids.push(await join(p.page, await n1.token(room, `peer${i}`), { video: false, audio: false }, lists[i]));
  }
  // A fourth peer on the node to be killed, which knows no other node: it cannot come back.
  const stranded = await peer(n3, { noWebrtc: true });
  const strandedId = await join(stranded.page, await n1.token(room, "stranded"), { video: false, audio: false }, [n3.url]);
  await Promise.all(peers.map((p) => waitPeers(p.page, 3)));

  const N = 300;
  const sending = Promise.all(peers.map((p) => paced(p.page, N, "n", 10)));
  await new Promise((r) => setTimeout(r, 1000));
  const killedAt = Date.now();
  await n3.kill();

  // The stranded peer leaves the room for the others within the expiry (plus the reaper's
  // two rounds of a third of it).
  for (const p of peers.slice(0, 2)) {
    await waitFor(async () => (await leftSeen(p.page)).includes(strandedId), "the stranded peer to leave", 20000);
  }
  const leftAfter = (Date.now() - killedAt) / 1000;
  assert.ok(leftAfter < TTL * 2 + 2, `left after ${leftAfter} s`);

  // Every sendMessage settled; the only peer any of them did not reach is the stranded one.
  for (const r of await sending) assert.deepEqual(r, { other: 0, unreachable: [strandedId] });
  for (const [i, p] of peers.entries()) {
    for (const [j, from] of ids.entries()) {
      if (i !== j) await expectAll(p.page, from, N, "n");
    }
  }
  // The peer of the killed node kept its id and never left anyone's room.
  assert.equal(await peers[2].page.evaluate(() => /** @type {any} */ (window).room.self.id), ids[2]);
  for (const p of peers.slice(0, 2)) assert.ok(!(await leftSeen(p.page)).includes(ids[2]));
});
