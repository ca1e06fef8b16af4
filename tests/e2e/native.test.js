// @ts-check
// The native client's CLI (`bluecam join`, docs/native-client.md) in a room with real Chromium:
// app messages both ways through the relay, exactly once and in order; stdin's end leaves.
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createInterface } from "node:readline";
import {
  BIN, TestServer, Redis, Coturn, startCluster, launchPeer, join, waitFor, waitPeers, evaluate, expectEvents, endTest, stopAll,
  received, leftSeen, pathTo, videoStats,
} from "./harness.js";

/** @type {TestServer} */
let server;

before(async () => {
  server = await TestServer.start();
});
afterEach(endTest);
after(stopAll);

/**
 * `bluecam join` as a child process: its stdout's JSON lines, and a way to write lines in.
 * @param {string} token
 * @param {string[]} [servers] the nodes, in order (this file's server by default)
 * @param {string[]} [extra] more flags
 * @param {boolean} [webrtc] with WebRTC data channels (relay only, `--no-webrtc`, by default)
 */
function nativePeer(token, servers = [server.url], extra = [], webrtc = false) {
  const flags = webrtc ? extra : ["--no-webrtc", ...extra];
  const child = spawn(BIN, ["join", "--server", servers.join(","), "--token", token, ...flags], { stdio: ["pipe", "pipe", "inherit"] });
  /** @type {any[]} */
  const events = [];
  createInterface({ input: /** @type {import("node:stream").Readable} */ (child.stdout) }).on("line", (line) => events.push(JSON.parse(line)));
  const exited = new Promise((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    events,
    exited,
    /** @param {unknown} obj */
    write: (obj) => /** @type {import("node:stream").Writable} */ (child.stdin).write(JSON.stringify(obj) + "\n"),
    end: () => /** @type {import("node:stream").Writable} */ (child.stdin).end(),
    kill: () => child.kill("SIGKILL"),
  };
}

/**
 * The end of stdin: the native peer leaves and exits 0, the browser sees it leave, and the
 * browser's app saw no error or gap.
 * @param {ReturnType<typeof nativePeer>} native
 * @param {Awaited<ReturnType<typeof launchPeer>>} b
 * @param {string} nativeId
 */
async function endsAndLeaves(native, b, nativeId) {
  native.end();
  assert.equal(await native.exited, 0);
  await waitFor(async () => (await leftSeen(b.page)).includes(nativeId), "the browser saw the native peer leave");
  await expectEvents([b]);
}

/**
 * Large messages both ways, by `path`: a chunk boundary inside a surrogate pair, and 100 KB of
 * non-ASCII text (the native client cuts and joins chunks at the SDK's UTF-16 offsets).
 * @param {ReturnType<typeof nativePeer>} native
 * @param {import("playwright-core").Page} page
 * @param {string} nativeId
 * @param {string} bId
 * @param {string} path
 */
async function largeBothWays(native, page, nativeId, bId, path) {
  const straddle = "a".repeat(16 * 1024 - 2) + "😀" + "b".repeat(10);
  const big = "é€😀中".repeat(25_000);
  const bigSent = evaluate(page, async ({ to, straddle, big }) => {
    const room = /** @type {any} */ (window).room;
    await room.sendMessage("straddle", straddle, { to });
    await room.sendMessage("big", big, { to });
    return true;
  }, { to: nativeId, straddle, big }, "two large sends to the native peer");
  native.write({ type: "big back", data: big, to: bId });
  assert.equal(await bigSent, true);
  const large = await waitFor(() => {
    const m = native.events.filter((e) => e.event === "message" && (e.type === "straddle" || e.type === "big"));
    return m.length >= 2 ? m : null;
  }, "the large messages at the native peer");
  assert.deepEqual(large.map((m) => [m.type, m.data === (m.type === "big" ? big : straddle), m.path]), [["straddle", true, path], ["big", true, path]]);
  await waitFor(async () => (await received(page)).some((/** @type {any} */ m) => m.type === "big back"), "the large message at the browser");
  assert.ok((await evaluate(page, (big) => /** @type {any} */ (window).t.received.find((/** @type {any} */ m) => m.type === "big back").data === big, big, "the large message intact")));
  assert.equal((await received(page)).find((/** @type {any} */ m) => m.type === "big back").path, path);
}

test("bluecam join and a browser: 1,000 messages each way through the relay, once and in order; the end of stdin leaves", async () => {
  const room = await server.room();
  const native = nativePeer(await server.token(room, "bot"));
  try {
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    const nativeId = joined.self.id;
    assert.equal(joined.self.identity, "bot");
    const b = await launchPeer(server, { label: "browser" });
    const bId = await join(b.page, await server.token(room, "alice"), { video: false, audio: false });
    await waitPeers(b.page, 1);
    await waitFor(async () => native.events.some((e) => e.event === "peer_joined" && e.peer.id === bId), "the native peer saw the browser");
    // The browser to the native peer.
    const sent = evaluate(b.page, async (to) => {
      const room = /** @type {any} */ (window).room;
      const all = [];
      for (let i = 0; i < 1000; i++) all.push(room.sendMessage("b2n", { i, text: `é ${i} ✓` }, { to }));
      return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
    }, nativeId, "1,000 sends to the native peer");
    // The native peer to the browser.
    for (let i = 0; i < 1000; i++) native.write({ type: "n2b", data: { i, text: `ü ${i}` }, to: bId });
    assert.equal(await sent, 1000, "every browser send acknowledged by the native peer");
    const got = await waitFor(() => {
      const m = native.events.filter((e) => e.event === "message" && e.type === "b2n");
      return m.length >= 1000 ? m : null;
    }, "1,000 messages at the native peer");
    assert.deepEqual(got.map((m) => m.data.i), [...Array(1000).keys()], "once each, in order");
    assert.ok(got.every((m) => m.from.id === bId && m.from.identity === "alice" && m.path === "relay" && m.data.text === `é ${m.data.i} ✓`));
    await waitFor(async () => (await received(b.page)).filter((/** @type {any} */ m) => m.type === "n2b").length >= 1000, "1,000 messages at the browser");
    await new Promise((r) => setTimeout(r, 300));
    const atBrowser = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "n2b");
    assert.deepEqual(atBrowser.map((/** @type {any} */ m) => m.data.i), [...Array(1000).keys()]);
    assert.ok(atBrowser.every((/** @type {any} */ m) => m.from === nativeId && m.path === "relay"));
    const delivered = await waitFor(() => {
      const d = native.events.filter((e) => e.event === "delivered");
      return d.length >= 1000 ? d : null;
    }, "1,000 delivered at the native peer");
    // Reported in the order they settled: to one peer, the order they were sent.
    assert.deepEqual(delivered.slice(0, 1000).map((d) => d.line), [...Array(1000).keys()].map((i) => i + 1));
    assert.equal(native.events.filter((e) => e.event === "undeliverable" || e.event === "error").length, 0, JSON.stringify(native.events.filter((e) => e.event === "undeliverable" || e.event === "error")));
    await largeBothWays(native, b.page, nativeId, bId, "relay");
    await waitFor(() => native.events.filter((e) => e.event === "delivered").length >= 1001, "the large message delivered");
    await endsAndLeaves(native, b, nativeId);
  } finally {
    native.kill();
  }
});

test("bluecam join: a bad line gets an error naming it; a message to a peer not in the room is undeliverable", async () => {
  const room = await server.room();
  const native = nativePeer(await server.token(room, "bot"));
  try {
    await waitFor(async () => native.events.find((e) => e.event === "joined"), "joined");
    native.write({ data: "no type" });
    native.write({ type: "x", data: 1, to: "nobody" });
    const bad = await waitFor(async () => native.events.find((e) => e.event === "error" && e.code === "bad_input"), "the bad line reported");
    assert.equal(bad.line, 1);
    const und = await waitFor(async () => native.events.find((e) => e.event === "undeliverable"), "undeliverable");
    assert.deepEqual([und.line, und.peers], [2, ["nobody"]]);
    native.end();
    assert.equal(await native.exited, 0);
  } finally {
    native.kill();
  }
});

/**
 * A stream from `bluecam join` to a browser that reloads in the middle of it.
 * @param {boolean} webrtc over the data channel (the relay alone otherwise)
 */
async function reloadMidStream(webrtc) {
  const room = await server.room();
  const native = nativePeer(await server.token(room, "bot"), [server.url], [], webrtc);
  const path = webrtc ? "p2p" : "relay";
  try {
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    const nativeId = joined.self.id;
    const b = await launchPeer(server, { label: "browser" });
    const token = await server.token(room, "alice");
    const oldId = await join(b.page, token, { video: false, audio: false });
    await waitFor(async () => native.events.some((e) => e.event === "peer_joined" && e.peer.id === oldId), "the native peer saw the browser");
    if (webrtc) await channelUp(native, nativeId, b.page, oldId, "the first page");
    // A stream to the browser, and a reload in the middle of it.
    for (let i = 0; i < 200; i++) native.write({ type: "before", data: i, to: oldId });
    await waitFor(async () => (await received(b.page)).length >= 50, "some messages at the browser");
    await b.page.reload();
    const newId = await join(b.page, token, { video: false, audio: false });
    await waitFor(async () => native.events.some((e) => e.event === "peer_joined" && e.peer.id === newId), "the native peer saw the new page");
    // Every line to the old page settled: delivered, or undeliverable naming it.
    await waitFor(() => native.events.filter((e) => e.event === "delivered" || e.event === "undeliverable").length >= 200, "every line to the old page settled");
    const outcomes = native.events.filter((e) => e.event === "delivered" || e.event === "undeliverable");
    assert.ok(outcomes.every((e) => e.event === "delivered" || JSON.stringify(e.peers) === JSON.stringify([oldId])), JSON.stringify(outcomes.filter((e) => e.event !== "delivered").slice(0, 3)));
    // Written in the order they settled: to one peer, the order they were sent (the
    // undeliverable ones too, all settled at once when the old page left).
    assert.deepEqual(outcomes.map((e) => e.line), [...Array(200).keys()].map((i) => i + 1));
    assert.ok(native.events.some((e) => e.event === "peer_left" && e.peer.id === oldId), "the old page left");
    if (webrtc) await channelUp(native, nativeId, b.page, newId, "the new page");
    for (let i = 0; i < 50; i++) native.write({ type: "after", data: i, to: newId });
    await waitFor(async () => (await received(b.page)).filter((/** @type {any} */ m) => m.type === "after").length >= 50, "the new page got what followed");
    const after = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "after");
    assert.deepEqual(after.map((/** @type {any} */ m) => [m.data, m.path]), [...Array(50).keys()].map((i) => [i, path]));
    assert.ok((await received(b.page)).every((/** @type {any} */ m) => m.from === nativeId));
    native.end();
    assert.equal(await native.exited, 0);
    assert.equal(native.events.filter((e) => e.event === "error").length, 0);
    await expectEvents([b]);
  } finally {
    native.kill();
  }
}

test("bluecam join while the browser reloads: lines to the old page are undeliverable, the new page gets what follows, nothing hangs", async () => {
  await reloadMidStream(false);
});

test("bluecam join over the data channel while the browser reloads: the same, and a new channel to the new page carries what follows", async () => {
  await reloadMidStream(true);
});

test("bluecam join over HTTP long-polling and a browser without WebSocket: 300 each way and a large message, once and in order", async () => {
  const room = await server.room();
  const native = nativePeer(await server.token(room, "bot"), [server.url], ["--transport", "http"]);
  try {
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    assert.equal(joined.transport, "http");
    const nativeId = joined.self.id;
    const b = await launchPeer(server, { label: "browser", noWebSocket: true });
    const bId = await join(b.page, await server.token(room, "alice"), { video: false, audio: false });
    assert.equal(await evaluate(b.page, () => /** @type {any} */ (window).room.transport, undefined, "room.transport"), "http");
    await waitFor(async () => native.events.some((e) => e.event === "peer_joined" && e.peer.id === bId), "the native peer saw the browser");
    const sent = evaluate(b.page, async (to) => {
      const room = /** @type {any} */ (window).room;
      const all = [];
      for (let i = 0; i < 300; i++) all.push(room.sendMessage("b2n", { i, text: `é ${i}\n✓` }, { to }));
      return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
    }, nativeId, "300 sends to the native peer");
    for (let i = 0; i < 300; i++) native.write({ type: "n2b", data: { i, text: `ü ${i}` }, to: bId });
    // A large one (chunked: a boundary inside a surrogate pair), over HTTP both ways.
    const straddle = "a".repeat(16 * 1024 - 2) + "😀" + "b".repeat(10);
    native.write({ type: "straddle", data: straddle, to: bId });
    assert.equal(await sent, 300, "every browser send acknowledged by the native peer");
    const got = await waitFor(() => {
      const m = native.events.filter((e) => e.event === "message" && e.type === "b2n");
      return m.length >= 300 ? m : null;
    }, "300 messages at the native peer");
    assert.deepEqual(got.map((m) => m.data.i), [...Array(300).keys()], "once each, in order");
    assert.ok(got.every((m) => m.data.text === `é ${m.data.i}\n✓` && m.path === "relay"));
    await waitFor(async () => (await received(b.page)).some((/** @type {any} */ m) => m.type === "straddle"), "the large message at the browser");
    const atBrowser = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "n2b");
    assert.deepEqual(atBrowser.map((/** @type {any} */ m) => m.data.i), [...Array(300).keys()]);
    assert.ok(await evaluate(b.page, (s) => /** @type {any} */ (window).t.received.find((/** @type {any} */ m) => m.type === "straddle").data === s, straddle, "the large message intact"));
    const delivered = await waitFor(() => {
      const d = native.events.filter((e) => e.event === "delivered");
      return d.length >= 301 ? d : null;
    }, "301 delivered at the native peer");
    assert.deepEqual(delivered.map((d) => d.line), [...Array(301).keys()].map((i) => i + 1));
    await endsAndLeaves(native, b, nativeId);
  } finally {
    native.kill();
  }
});

test("bluecam join on a cluster: a node SIGKILLed mid-stream, its native peer resumes on the next node of its list; every line delivered, every message once and in order", async () => {
  const redis = await Redis.start();
  /** @type {TestServer[]} */
  let nodes = [];
  try {
    // A short liveness TTL and resume window, so that the dead node's peer is taken over soon.
    nodes = await startCluster(redis, 3, 3, "[limits]\nresume_window_secs = 8\n");
    const [n1, n2, n3] = nodes;
    const room = await n1.room();
    const lists = [[n1.url, n2.url, n3.url], [n2.url, n3.url, n1.url], [n3.url, n1.url, n2.url]];
    const peers = [];
    for (const [i, list] of lists.entries()) {
      const p = nativePeer(await n1.token(room, `peer${i}`), list);
      const joined = await waitFor(async () => p.events.find((e) => e.event === "joined"), `peer${i} joined`);
      peers.push({ ...p, id: joined.self.id });
    }
    for (const p of peers) {
      await waitFor(async () => {
        const known = new Set(p.events.filter((e) => e.event === "peer_joined").map((e) => e.peer.id));
        for (const e of p.events) if (e.event === "joined") for (const q of e.peers) known.add(q.id);
        return known.size >= 2;
      }, "every native peer knows the two others");
    }
    const N = 300;
    // Paced (a line every 10 ms each, 3 s in all), so that the kill lands mid-stream.
    const writing = Promise.all(peers.map(async (p) => {
      for (let i = 0; i < N; i++) {
        p.write({ type: "n", data: { i } });
        await new Promise((r) => setTimeout(r, 10));
      }
    }));
    await waitFor(async () => peers[2].events.filter((e) => e.event === "message").length >= 50, "the stream under way");
    await n3.kill();
    await writing;
    for (const [i, p] of peers.entries()) {
      const delivered = await waitFor(async () => {
        const d = p.events.filter((e) => e.event === "delivered" || e.event === "undeliverable");
        return d.length >= N ? d : null;
      }, `peer${i}'s ${N} lines settled`, 60000);
      assert.deepEqual(delivered.filter((d) => d.event !== "delivered"), [], `peer${i}: every line delivered`);
      for (const [j, from] of peers.entries()) {
        if (i === j) continue;
        const got = await waitFor(async () => {
          const m = p.events.filter((e) => e.event === "message" && e.from.id === from.id);
          return m.length >= N ? m : null;
        }, `peer${i} has peer${j}'s ${N}`, 30000);
        assert.deepEqual(got.map((m) => m.data.i), [...Array(N).keys()], `peer${i} from peer${j}: once each, in order`);
      }
      // Nobody left anyone's room (the killed node's peer kept its id and its seat).
      assert.deepEqual(p.events.filter((e) => e.event === "peer_left"), [], `peer${i} saw nobody leave`);
    }
    const states = peers[2].events.filter((e) => e.event === "connection").map((e) => e.state);
    assert.deepEqual(states, ["connected", "reconnecting", "connected"], "the killed node's peer resumed, once");
    for (const p of peers) p.end();
    for (const p of peers) assert.equal(await p.exited, 0);
  } finally {
    // (This file's server stays for the other tests.)
    await Promise.allSettled(nodes.map((n) => n.stop()));
    await redis.stop();
  }
});

/**
 * Native peers with WebRTC (`bluecam join` without `--no-webrtc`) and the browser `page` in
 * `room`, so that one native peer plays each negotiation role with the browser: the smaller peer
 * id is the impolite side and makes the first offer (the native peer offers), the larger waits
 * for it (the browser offers, with its media, and then offers its tracks again over the data
 * channel). Ids are random: six native peers join, and the browser joins (again, after a
 * reload, while its id is not between theirs) with camera and microphone; the two native peers
 * kept are the smallest and the largest id, the others leave.
 * @param {TestServer} srv
 * @param {string} room
 * @param {import("playwright-core").Page} page
 */
async function nativesInBothRoles(srv, room, page) {
  /** @type {{native: ReturnType<typeof nativePeer>, id: string}[]} */
  const natives = [];
  for (let n = 0; n < 6; n++) {
    const native = nativePeer(await srv.token(room, `bot${n}`), [srv.url], [], true);
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    natives.push({ native, id: joined.self.id });
  }
  natives.sort((x, y) => (x.id < y.id ? -1 : 1));
  const [low, high] = [natives[0], natives[natives.length - 1]];
  const token = await srv.token(room, "alice");
  let bId = "";
  for (let attempt = 0; attempt < 12; attempt++) {
    if (attempt > 0) await page.reload();
    bId = await join(page, token);
    if (low.id < bId && bId < high.id) break;
  }
  assert.ok(low.id < bId && bId < high.id, `the browser's id between the native peers': ${low.id} < ${bId} < ${high.id}`);
  for (const { native } of natives.slice(1, -1)) {
    native.end();
    assert.equal(await native.exited, 0);
  }
  return { bId, roles: [["native offers", low], ["browser offers", high]], all: natives.map((n) => n.native) };
}

/**
 * The data channel is up between a native peer and the browser, as both say.
 * @param {ReturnType<typeof nativePeer>} native
 * @param {string} nativeId
 * @param {import("playwright-core").Page} page
 * @param {string} bId
 * @param {string} role
 */
async function channelUp(native, nativeId, page, bId, role) {
  await waitFor(async () => native.events.some((e) => e.event === "path" && e.peer.id === bId && e.path === "p2p"), `the native peer's data channel (${role})`, 30_000);
  await waitFor(async () => (await pathTo(page, nativeId)) === "p2p", `the browser's data channel to the native peer (${role})`, 30_000);
}

test("bluecam join over the data channel with a browser, whichever side offers: 1,000 messages each way and large ones, path p2p, once and in order; the browser restarts ICE", async () => {
  const room = await server.room();
  const b = await launchPeer(server, { label: "browser" });
  // (With camera and microphone: the browser's media offer comes over the channel, refused.)
  const { bId, roles, all } = await nativesInBothRoles(server, room, b.page);
  try {
    for (const [role, { native, id }] of roles) await channelUp(native, id, b.page, bId, role);
    for (const [role, { native, id }] of roles) {
      const sent = evaluate(b.page, async ({ to, role }) => {
        const room = /** @type {any} */ (window).room;
        const all = [];
        for (let i = 0; i < 1000; i++) all.push(room.sendMessage(`b2n ${role}`, { i, text: `é ${i} ✓` }, { to }));
        return (await Promise.allSettled(all)).filter((s) => s.status === "fulfilled").length;
      }, { to: id, role }, "1,000 sends to the native peer");
      for (let i = 0; i < 1000; i++) native.write({ type: `n2b ${role}`, data: { i, text: `ü ${i}` }, to: bId });
      assert.equal(await sent, 1000, `every browser send acknowledged (${role})`);
      const got = await waitFor(() => {
        const m = native.events.filter((e) => e.event === "message" && e.type === `b2n ${role}`);
        return m.length >= 1000 ? m : null;
      }, `1,000 messages at the native peer (${role})`);
      assert.deepEqual(got.map((m) => m.data.i), [...Array(1000).keys()], `once each, in order (${role})`);
      assert.ok(got.every((m) => m.from.id === bId && m.path === "p2p" && m.data.text === `é ${m.data.i} ✓`), `over the data channel (${role})`);
      await waitFor(async () => (await received(b.page)).filter((/** @type {any} */ m) => m.type === `n2b ${role}`).length >= 1000, `1,000 messages at the browser (${role})`);
      const atBrowser = (await received(b.page)).filter((/** @type {any} */ m) => m.type === `n2b ${role}`);
      assert.deepEqual(atBrowser.map((/** @type {any} */ m) => m.data.i), [...Array(1000).keys()]);
      assert.ok(atBrowser.every((/** @type {any} */ m) => m.from === id && m.path === "p2p"), `over the data channel at the browser (${role})`);
      const delivered = await waitFor(() => {
        const d = native.events.filter((e) => e.event === "delivered");
        return d.length >= 1000 ? d : null;
      }, `1,000 delivered (${role})`);
      assert.deepEqual(delivered.map((d) => d.line), [...Array(1000).keys()].map((i) => i + 1));
    }
    // The browser restarts ICE (as it does when its network changes): the native peer answers
    // with new credentials, and the channel carries on without closing.
    {
      const [, { native, id }] = roles[1];
      const ufrag = () => evaluate(b.page, (id) => /a=ice-ufrag:(\S+)/.exec(/** @type {any} */ (window).room.remotes.get(id).link.pc.remoteDescription.sdp)?.[1], id, "the native side's ICE ufrag");
      const before = await ufrag();
      await evaluate(b.page, (id) => /** @type {any} */ (window).room.remotes.get(id).link.restartIce("test"), id, "an ICE restart");
      await waitFor(async () => (await ufrag()) !== before, "the native peer answered the ICE restart with new credentials");
      for (let i = 0; i < 100; i++) native.write({ type: "after restart", data: { i }, to: bId });
      await waitFor(async () => (await received(b.page)).filter((/** @type {any} */ m) => m.type === "after restart").length >= 100, "100 messages after the restart");
      const got = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "after restart");
      const toBrowser = native.events.filter((e) => e.event === "path" && e.peer.id === bId).map((e) => e.path);
      assert.deepEqual(toBrowser, ["p2p"], "the channel to the browser never closed");
      assert.deepEqual(got.map((/** @type {any} */ m) => [m.data.i, m.path]), [...Array(100).keys()].map((i) => [i, "p2p"]));
    }
    // Large messages both ways over the channel.
    const [, { native, id }] = roles[0];
    await largeBothWays(native, b.page, id, bId, "p2p");
    for (const [, { native: n }] of roles) {
      assert.equal(n.events.filter((e) => e.event === "undeliverable" || e.event === "error").length, 0, JSON.stringify(n.events.filter((e) => e.event === "undeliverable" || e.event === "error")));
    }
    for (const [, { native: n, id: nId }] of roles) await endsAndLeaves(n, b, nId);
  } finally {
    for (const n of all) n.kill();
  }
});

test("bluecam join --relay-only-ice and a relay-only browser: the data channel through coturn", async () => {
  const secret = "turn-secret-" + Math.random().toString(36).slice(2);
  const turn = await Coturn.start(secret);
  const natives = [];
  try {
    const srv = await TestServer.start([], {
      BLUECAM_TURN_URLS: `turn:127.0.0.1:${turn.port}?transport=udp`,
      BLUECAM_TURN_SECRET: secret,
    });
    const room = await srv.room();
    const b = await launchPeer(srv, { label: "browser" });
    const bId = await join(b.page, await srv.token(room, "alice"), { video: false, audio: false, iceTransportPolicy: "relay" });
    const native = nativePeer(await srv.token(room, "bot"), [srv.url], ["--relay-only-ice"], true);
    natives.push(native);
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    await channelUp(native, joined.self.id, b.page, bId, "through TURN");
    // The pair the browser's channel uses is a TURN relay's, at both ends.
    const pair = await waitFor(async () => {
      const v = await videoStats(b.page, joined.self.id);
      return v.local ? v : null;
    }, "the selected candidate pair");
    assert.deepEqual([pair.local, pair.remote], ["relay", "relay"]);
    for (let i = 0; i < 100; i++) native.write({ type: "turn", data: { i }, to: bId });
    await waitFor(async () => (await received(b.page)).filter((/** @type {any} */ m) => m.type === "turn").length >= 100, "100 messages through TURN");
    const got = (await received(b.page)).filter((/** @type {any} */ m) => m.type === "turn");
    assert.deepEqual(got.map((/** @type {any} */ m) => [m.data.i, m.path]), [...Array(100).keys()].map((i) => [i, "p2p"]));
    await endsAndLeaves(native, b, joined.self.id);
  } finally {
    for (const n of natives) n.kill();
    await turn.stop();
  }
});

test("bluecam join in a room a browser encrypts end to end: both report e2ee_mismatch at once, nothing goes either way, no channel", async () => {
  const room = await server.room();
  const b = await launchPeer(server, { label: "browser" });
  const key = randomBytes(32).toString("base64url");
  const bId = await join(b.page, await server.token(room, "alice"), /** @type {any} */ ({ video: false, audio: false, e2ee: { key } }));
  const native = nativePeer(await server.token(room, "bot"), [server.url], [], true);
  try {
    const joined = await waitFor(async () => native.events.find((e) => e.event === "joined"), "the native peer joined");
    const error = await waitFor(async () => native.events.find((e) => e.event === "error"), "the native peer's error");
    assert.equal(error.code, "e2ee_mismatch");
    assert.match(error.message, new RegExp(bId));
    await waitFor(async () => (await b.events()).errors.length === 1, "the browser's error");
    await expectEvents([b], { errors: [{ name: "E2eeMismatchError", code: "e2ee_mismatch" }] });
    // A line to the browser fails at once, naming it; nothing reaches the page.
    native.write({ type: "hello", data: 1, to: bId });
    const outcome = await waitFor(async () => native.events.find((e) => e.event === "undeliverable" || e.event === "delivered"), "the line's outcome", 5000);
    assert.deepEqual([outcome.event, outcome.peers], ["undeliverable", [bId]]);
    assert.deepEqual(await received(b.page), []);
    assert.ok(!native.events.some((e) => e.event === "path"), "no data channel");
    assert.equal(await pathTo(b.page, joined.self.id), "relay");
    native.end();
    assert.equal(await native.exited, 0);
  } finally {
    native.kill();
  }
});
