// @ts-check
// Webhooks and call history end to end: a real `bluecam serve`, a real HTTP receiver that
// verifies every request with the Standard Webhooks specification's own library, and real
// headless Chromium peers in a call. Retries, a restart with events pending, and a SIGKILL in
// the middle of a call, whose durations must still be the real ones.
import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { Webhook } from "standardwebhooks";
import {
  TestServer, Redis, Postgres, startCluster, launchPeer, join, waitFor, waitPeers, endTestAndServers, stopAll,
  stopServers,
} from "./harness.js";

afterEach(endTestAndServers);
after(stopAll);

const SECRET = "whsec_" + Buffer.from("bluecam-e2e-webhook-key-0123456789").toString("base64");

/**
 * @typedef {{id: string, type: string, timestamp: number, data: any, at: number}} Received
 */

/** An HTTP endpoint that verifies each request and answers what `answer` says. */
class Receiver {
  /**
   * @param {(id: string, attempt: number) => number} [answer] the status for the `attempt`th
   *   request of event `id` (1-based)
   */
  static async start(answer = () => 204) {
    const r = new Receiver(answer);
    await new Promise((resolve) => r.http.listen(0, "127.0.0.1", () => resolve(undefined)));
    const addr = /** @type {import("node:net").AddressInfo} */ (r.http.address());
    r.url = `http://127.0.0.1:${addr.port}/hooks`;
    return r;
  }

  /** @param {(id: string, attempt: number) => number} answer */
  constructor(answer) {
    this.answer = answer;
    this.url = "";
    const wh = new Webhook(SECRET);
    /** Events accepted (2xx), verified, in arrival order. @type {Received[]} */
    this.events = [];
    /** Every request: its event id and what it was answered. @type {{id: string, status: number, at: number}[]} */
    this.requests = [];
    /** Requests whose signature did not verify. @type {string[]} */
    this.unverified = [];
    /** @type {Map<string, number>} */
    this.attempts = new Map();
    this.http = createServer((req, res) => {
      const chunks = /** @type {Buffer[]} */ ([]);
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        const body = Buffer.concat(chunks).toString("utf8");
        const headers = /** @type {Record<string, string>} */ (req.headers);
        const id = headers["webhook-id"] ?? "";
        /** @type {any} */
        let event;
        try {
          event = wh.verify(body, headers);
        } catch (e) {
          this.unverified.push(`${id}: ${/** @type {Error} */ (e).message}`);
          res.writeHead(400).end();
          return;
        }
        const attempt = (this.attempts.get(id) ?? 0) + 1;
        this.attempts.set(id, attempt);
        const status = this.answer(id, attempt);
        this.requests.push({ id, status, at: Date.now() });
        if (status < 300) this.events.push({ id, type: event.type, timestamp: event.timestamp, data: event.data, at: Date.now() });
        res.writeHead(status).end();
      });
    });
  }

  /** @param {string} type */
  ofType(type) {
    return this.events.filter((e) => e.type === type);
  }

  /**
   * Waits for an event of `type` (the `n`th, 1-based) and returns it.
   * @param {string} type
   * @param {number} [n]
   */
  async next(type, n = 1) {
    await waitFor(() => this.ofType(type).length >= n, `webhook ${type} #${n}`);
    return this.ofType(type)[n - 1];
  }

  close() {
    return new Promise((resolve) => {
      this.http.closeAllConnections();
      this.http.close(() => resolve(undefined));
    });
  }
}

/** @param {Receiver} receiver @param {Record<string, string>} [env] */
function serverFor(receiver, env = {}) {
  return TestServer.start([], { BLUECAM_WEBHOOK_URL: receiver.url, BLUECAM_WEBHOOK_SECRET: SECRET, ...env });
}

/** Asserts `got` seconds within `tolerance` of the milliseconds `wantMs`. */
function about(/** @type {number} */ got, /** @type {number} */ wantMs, /** @type {string} */ what, tolerance = 1) {
  assert.ok(Math.abs(got - wantMs / 1000) <= tolerance, `${what}: ${got} s, expected ${(wantMs / 1000).toFixed(2)} s ± ${tolerance}`);
}

/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test("a room's life as webhooks: every event, in order, each signature verified, durations real", async () => {
  const receiver = await Receiver.start();
  try {
    const server = await serverFor(receiver);
    const r = await server.api("POST", "/v1/rooms", { owner: "olga" });
    assert.equal(r.status, 201);
    const room = r.body.id;
    const olga = await launchPeer(server, { label: "olga" });
    const bob = await launchPeer(server, { label: "bob" });
    const olgaId = await join(olga.page, await server.token(room, "olga"));
    const bobId = await join(bob.page, await server.token(room, "bob"));
    const callStart = Date.now();
    await waitPeers(olga.page, 1);
    const started = await receiver.next("call.started");
    assert.equal(started.data.roomId, room);
    assert.equal(started.data.endedAt, null);
    await sleep(3000);
    // Bob closes his tab (the SDK leaves on pagehide).
    await bob.page.close({ runBeforeUnload: true });
    const bobLeftAt = Date.now();
    const ended = (await receiver.next("call.ended")).data;
    const left = (await receiver.next("peer.left")).data;
    assert.deepEqual([left.peerId, left.reason, left.identity], [bobId, "left", "bob"]);
    about(ended.durationSecs, bobLeftAt - callStart, "call duration");
    assert.equal(ended.id, started.data.id);
    const byId = Object.fromEntries(ended.participants.map((/** @type {any} */ p) => [p.peerId, p]));
    about(byId[olgaId].durationSecs, bobLeftAt - callStart, "olga in the call");
    about(byId[bobId].durationSecs, bobLeftAt - callStart, "bob in the call");
    // The API says the same.
    const calls = await server.api("GET", `/v1/rooms/${room}/calls`);
    assert.deepEqual(calls.body.calls[0], ended);
    await olga.page.close({ runBeforeUnload: true });
    await receiver.next("peer.left", 2);
    assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
    await receiver.next("room.deleted");
    assert.deepEqual(receiver.events.map((e) => e.type), [
      "room.created", "peer.joined", "peer.joined", "call.started", "peer.left", "call.ended", "peer.left", "room.deleted",
    ]);
    assert.deepEqual(receiver.unverified, []);
    assert.equal(new Set(receiver.events.map((e) => e.id)).size, receiver.events.length, "each event once");
    for (const e of receiver.events) assert.ok(Math.abs(e.timestamp - e.at / 1000) < 5, `${e.type}: timestamp ${e.timestamp}`);
  } finally {
    await receiver.close();
  }
});

test("an endpoint that answers 500 three times gets the event on the fourth attempt, and the room's next event waits for it", async () => {
  let failing = "";
  const receiver = await Receiver.start((id, attempt) => {
    failing ||= id; // the first event seen fails three times
    return id === failing && attempt <= 3 ? 500 : 204;
  });
  try {
    const server = await serverFor(receiver);
    const room = await server.room();
    assert.equal((await server.api("DELETE", `/v1/rooms/${room}`)).status, 204);
    await receiver.next("room.deleted");
    const created = receiver.requests.filter((q) => q.id === failing);
    assert.deepEqual(created.map((q) => q.status), [500, 500, 500, 204]);
    // 1 s, then 2 s, then 4 s (each ±20 %).
    const gaps = created.slice(1).map((q, i) => q.at - created[i].at);
    for (const [i, want] of [1000, 2000, 4000].entries()) {
      assert.ok(gaps[i] >= want * 0.75 && gaps[i] < want * 1.25 + 1000, `wait ${i + 1}: ${gaps[i]} ms, expected about ${want}`);
    }
    assert.deepEqual(receiver.events.map((e) => e.type), ["room.created", "room.deleted"]);
    assert.ok(receiver.events[1].at >= created[3].at, "room.deleted only after room.created got through");
    assert.deepEqual(receiver.unverified, []);
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    assert.match(metrics, /bluecam_webhooks_total\{outcome="delivered"\} 2\b/);
    assert.match(metrics, /bluecam_webhook_attempts_failed_total 3\b/);
  } finally {
    await receiver.close();
  }
});

test("an event pending when the server is killed (SIGKILL) is delivered after the restart, once", async () => {
  let up = false;
  const receiver = await Receiver.start(() => (up ? 204 : 503));
  try {
    const server = await serverFor(receiver);
    await server.room();
    await waitFor(() => receiver.requests.length >= 1, "a first (refused) attempt");
    await server.restart("SIGKILL", 500);
    up = true;
    const created = await receiver.next("room.created");
    await sleep(1500);
    assert.equal(receiver.ofType("room.created").length, 1);
    assert.ok(receiver.requests.every((q) => q.id === created.id), "the same event id on every attempt");
    assert.deepEqual(receiver.unverified, []);
  } finally {
    await receiver.close();
  }
});

test("a SIGKILL mid-call: the peer that comes back stays in the same call; the one that does not left when the node died", async () => {
  const receiver = await Receiver.start();
  try {
    const server = await serverFor(receiver, { BLUECAM_LIMITS_RESUME_WINDOW_SECS: "4" });
    const room = await server.room();
    const olga = await launchPeer(server, { label: "olga" });
    const bob = await launchPeer(server, { label: "bob" });
    const olgaId = await join(olga.page, await server.token(room, "olga"));
    const bobId = await join(bob.page, await server.token(room, "bob"));
    const callStart = Date.now();
    await waitPeers(olga.page, 1);
    await receiver.next("call.started");
    await sleep(2500);
    // The node dies; while it is down, bob's tab goes away (no leave reaches anyone).
    const killedAt = Date.now();
    const restarting = server.restart("SIGKILL", 1500);
    await sleep(300);
    await bob.page.close({ runBeforeUnload: true });
    await restarting;
    // Olga resumes on the restarted node (the same peer id: not a new session)...
    await waitFor(async () => (await olga.page.evaluate(() => /** @type {any} */ (window).room.connectionState)) === "connected", "olga back");
    // ...and bob, who never comes back, times out: he left when the node died.
    const left = (await receiver.next("peer.left")).data;
    assert.deepEqual([left.peerId, left.reason], [bobId, "timeout"]);
    about(left.durationSecs, killedAt - callStart, "bob's session", 1.5);
    const ended = (await receiver.next("call.ended")).data;
    about(ended.durationSecs, killedAt - callStart, "the call", 1.5);
    assert.equal(receiver.ofType("peer.joined").length, 2, "the resume was not a new session");
    assert.equal(receiver.ofType("call.started").length, 1);
    const p = ended.participants.find((/** @type {any} */ x) => x.peerId === olgaId);
    about(p.durationSecs, killedAt - callStart, "olga in the call", 1.5);
    assert.deepEqual(receiver.unverified, []);
  } finally {
    await receiver.close();
  }
});

test("a cluster on PostgreSQL: a node killed (SIGKILL) mid-call, its peer resumes on the other node: one call, real durations, each webhook once", async () => {
  const receiver = await Receiver.start();
  const redis = await Redis.start();
  const pg = await Postgres.start();
  try {
    const env = { BLUECAM_WEBHOOK_URL: receiver.url, BLUECAM_WEBHOOK_SECRET: SECRET };
    const [n1, n2] = await startCluster(redis, 2, 3, "", ["--database", pg.url], env);
    const room = await n1.room();
    const olga = await launchPeer(n1, { label: "olga" });
    const bob = await launchPeer(n2, { label: "bob" });
    const olgaId = await join(olga.page, await n1.token(room, "olga"), undefined, [n1.url, n2.url]);
    const bobId = await join(bob.page, await n2.token(room, "bob"), undefined, [n2.url, n1.url]);
    const callStart = Date.now();
    await waitPeers(olga.page, 1);
    await receiver.next("call.started");
    await sleep(2000);
    // Bob's node dies; his SDK resumes on the other node (the same session, the same call).
    await n2.kill();
    await waitFor(async () => (await bob.page.evaluate(() => /** @type {any} */ (window).room.connectionState)) === "connected"
      && (await bob.page.evaluate(() => /** @type {any} */ (window).room.transport)) !== null, "bob back, on the other node");
    await sleep(2000);
    await bob.page.close({ runBeforeUnload: true });
    const bobLeft = Date.now();
    const left = (await receiver.next("peer.left")).data;
    assert.deepEqual([left.peerId, left.reason], [bobId, "left"]);
    const ended = (await receiver.next("call.ended")).data;
    about(ended.durationSecs, bobLeft - callStart, "the call");
    for (const p of ended.participants) about(p.durationSecs, bobLeft - callStart, `${p.identity} in the call`);
    assert.deepEqual(ended.participants.map((/** @type {any} */ p) => p.peerId).sort(), [olgaId, bobId].sort());
    assert.equal(receiver.ofType("call.started").length, 1, "one call");
    assert.equal(receiver.ofType("peer.joined").length, 2, "the resume was not a new session");
    // Each event once, although two nodes deliver from the shared outbox.
    await sleep(1500);
    assert.equal(new Set(receiver.events.map((e) => e.id)).size, receiver.events.length, "each event once");
    assert.deepEqual(receiver.unverified, []);
    // The surviving node answers with the same call.
    const calls = await n1.api("GET", `/v1/rooms/${room}/calls`);
    assert.deepEqual(calls.body.calls[0], ended);
  } finally {
    // The nodes before what they use.
    await stopServers();
    await receiver.close();
    await pg.stop();
    await redis.stop();
  }
});
