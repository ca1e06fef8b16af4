// @ts-check
// The example backends (examples/backend-node, examples/backend-python), each run as a user
// would run it, against a real `bluecam serve` and real headless Chromium peers: it creates a
// meeting, mints tokens offline with a standard JWT library, removes a participant (who is then
// kept out), and receives BlueCam's webhooks, each verified with the Standard Webhooks library.
// The Python one runs in the virtual environment scripts/test makes from its requirements.txt
// (BLUECAM_PYTHON names its interpreter).
import { test, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:net";
import { join as joinPath } from "node:path";
import {
  TestServer, SECRET, launchPeer, join, waitFor, waitPeers, expectEvents, endTestAndServers, stopAll,
} from "./harness.js";

const BIN = process.env.BLUECAM_BIN ?? joinPath(process.env.CARGO_TARGET_DIR ?? "target", "debug", "bluecam");
const WEBHOOK_SECRET = "whsec_" + Buffer.from("bluecam-example-backend-key-012345").toString("base64");

/** @type {TestServer} */
let server;
/** @type {import("node:child_process").ChildProcess | undefined} */
let backend;
let backendUrl = "";

/** A port free at this moment on 127.0.0.1. @returns {Promise<number>} */
const freePort = () => new Promise((resolve, reject) => {
  const s = createServer().listen(0, "127.0.0.1", () => {
    const port = /** @type {import("node:net").AddressInfo} */ (s.address()).port;
    s.close(() => resolve(port));
  }).on("error", reject);
});

const BACKENDS = {
  node: [process.execPath, new URL("../../examples/backend-node/server.js", import.meta.url).pathname],
  python: [process.env.BLUECAM_PYTHON ?? "python3", new URL("../../examples/backend-python/app.py", import.meta.url).pathname],
};

/** Starts a server whose webhooks go to the backend `kind`, then the backend. @param {keyof BACKENDS} kind */
async function start(kind) {
  const port = await freePort();
  backendUrl = `http://127.0.0.1:${port}`;
  server = await TestServer.start([], {
    BLUECAM_WEBHOOK_URL: `${backendUrl}/webhooks`,
    BLUECAM_WEBHOOK_SECRET: WEBHOOK_SECRET,
  });
  const tokenKey = execFileSync(BIN, ["token", "--print-key", "--secret", SECRET], { encoding: "utf8" }).trim();
  const [bin, script] = BACKENDS[kind];
  backend = spawn(bin, [script], {
    env: {
      ...process.env, PORT: String(port), BLUECAM_URL: server.url, BLUECAM_API_SECRET: SECRET,
      BLUECAM_TOKEN_KEY: tokenKey, BLUECAM_WEBHOOK_SECRET: WEBHOOK_SECRET,
    },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    backend?.stdout?.on("data", (d) => { if (String(d).includes("backend listening")) resolve(undefined); });
    backend?.once("exit", (code) => reject(new Error(`the ${kind} example backend exited (${code})`)));
    backend?.once("error", reject);
  });
}

afterEach(async () => {
  backend?.kill("SIGTERM");
  backend = undefined;
  await endTestAndServers();
});
after(stopAll);

/** @param {string} method @param {string} path @param {unknown} [body] */
const call = async (method, path, body) => {
  const res = await fetch(backendUrl + path, {
    method, headers: { "content-type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
};

for (const kind of /** @type {(keyof BACKENDS)[]} */ (Object.keys(BACKENDS))) {
  test(`the ${kind} example backend: a meeting, offline tokens, removing a participant who stays out, verified webhooks`, async () => {
    await start(kind);
    const meeting = await call("POST", "/meetings", { name: "standup" });
    assert.equal(meeting.status, 201, JSON.stringify(meeting.body));
    const room = meeting.body.room;
    const [a, b] = [await launchPeer(server, { label: "alice" }), await launchPeer(server, { label: "bob" })];
    for (const [p, user] of [[a, "alice"], [b, "bob"]]) {
      const t = await call("POST", `/meetings/${room}/join`, { user });
      assert.equal(t.status, 200, JSON.stringify(t.body));
      assert.equal(t.body.server, server.url);
      await join(/** @type {any} */ (p).page, t.body.token, { video: false, audio: false });
    }
    await waitPeers(a.page, 1);
    const peers = await server.api("GET", `/v1/rooms/${room}/peers`);
    const bob = peers.body.peers.find((/** @type {{identity: string}} */ p) => p.identity === "bob");
    const removed = await call("POST", `/meetings/${room}/remove`, { peerId: bob.id });
    assert.deepEqual(removed, { status: 200, body: { removed: "bob" } });
    await waitFor(async () => (await b.events()).errors.length > 0, "bob told");
    await expectEvents([b], { errors: [{ name: "ConnectionError", code: "kicked" }] });
    // The app keeps bob out: no new token.
    assert.equal((await call("POST", `/meetings/${room}/join`, { user: "bob" })).status, 403);

    // The webhooks arrived at the backend, each verified there: the room, both joins, bob's
    // removal.
    /** @returns {Promise<any[]>} */
    const events = async () => (await call("GET", "/events")).body;
    await waitFor(async () => (await events()).some((e) => e.type === "peer.left"), "peer.left at the backend");
    const got = await events();
    assert.ok(got.some((e) => e.type === "room.created" && e.data.id === room), JSON.stringify(got));
    assert.deepEqual(got.filter((e) => e.type === "peer.joined").map((e) => e.data.identity).sort(), ["alice", "bob"]);
    const left = got.find((e) => e.type === "peer.left");
    assert.equal(left.data.identity, "bob");
    assert.equal(left.data.reason, "kicked");
    // A forged event is refused.
    const forged = await fetch(`${backendUrl}/webhooks`, {
      method: "POST",
      headers: { "webhook-id": "msg_x", "webhook-timestamp": String(Math.floor(Date.now() / 1000)), "webhook-signature": "v1,AAAA" },
      body: JSON.stringify({ type: "room.deleted", timestamp: new Date().toISOString(), data: {} }),
    });
    assert.equal(forged.status, 400);
    await expectEvents([a]);
  });
}
