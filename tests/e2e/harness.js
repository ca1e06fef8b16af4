// @ts-check
/**
 * End-to-end harness: a real `bluecam serve` on a free port, real headless Chromium (Debian's
 * /usr/bin/chromium driven by playwright-core, one browser process per peer, fake camera and
 * microphone), and helpers that join rooms through the public SDK inside the pages.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";
import { createServer, createConnection } from "node:net";
import { chromium } from "playwright-core";

export const ARTIFACTS = new URL("../../artifacts/", import.meta.url).pathname;
const BIN = process.env.BLUECAM_BIN ?? joinPath(process.env.CARGO_TARGET_DIR ?? "target", "debug", "bluecam");
export const SECRET = "e2e-secret-0123456789abcdef";

/** @returns {Promise<number>} */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/**
 * Polls `check` until it returns a truthy value or the timeout passes.
 * @template T
 * @param {() => Promise<T> | T} check
 * @param {string} what
 * @param {number} [timeoutMs]
 * @returns {Promise<T>}
 */
export async function waitFor(check, what, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export class TestServer {
  /** @param {string[]} [extraArgs] */
  static async start(extraArgs = []) {
    const port = await freePort();
    const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-e2e-"));
    const child = spawn(BIN, ["serve", "--bind", `127.0.0.1:${port}`, "--data-dir", dir, ...extraArgs], {
      env: { ...process.env, BLUECAM_API_SECRET: SECRET, RUST_LOG: "warn" },
      stdio: ["ignore", "ignore", "inherit"],
    });
    const server = new TestServer(`http://127.0.0.1:${port}`, child, dir);
    await waitFor(async () => {
      try {
        return (await fetch(`${server.url}/healthz`)).ok;
      } catch {
        return false;
      }
    }, "the server to start");
    return server;
  }

  /**
   * @param {string} url
   * @param {import("node:child_process").ChildProcess} child
   * @param {string} dir
   */
  constructor(url, child, dir) {
    this.url = url;
    this.child = child;
    this.dir = dir;
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   */
  async api(method, path, body) {
    const res = await fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text ? JSON.parse(text) : null };
  }

  /** @returns {Promise<string>} a new room's id */
  async room() {
    const r = await this.api("POST", "/v1/rooms", {});
    if (r.status !== 201) throw new Error(`room creation failed: ${r.status}`);
    return r.body.id;
  }

  /**
   * @param {string} room
   * @param {string} identity
   * @returns {Promise<string>}
   */
  async token(room, identity) {
    const r = await this.api("POST", `/v1/rooms/${room}/tokens`, { identity, name: identity });
    if (r.status !== 201) throw new Error(`token failed: ${r.status}`);
    return r.body.token;
  }

  async stop() {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill("SIGTERM");
      await new Promise((r) => this.child.once("exit", r));
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** Kills the process outright (SIGKILL): no goodbye to anyone. */
  async kill() {
    this.child.kill("SIGKILL");
    await new Promise((r) => this.child.once("exit", r));
  }
}

/** A `redis-server` of this test run on a free port (Debian's package must be installed). */
export class Redis {
  static async start() {
    const port = await freePort();
    const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-redis-"));
    const child = spawn("redis-server", [
      "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
      "--dir", dir, "--loglevel", "warning",
    ], { stdio: ["ignore", "ignore", "inherit"] });
    const redis = new Redis(`redis://127.0.0.1:${port}`, child, dir);
    await waitFor(() => new Promise((resolve) => {
      const s = createConnection(port, "127.0.0.1");
      s.once("connect", () => s.write("PING\r\n"));
      s.once("data", (d) => { s.destroy(); resolve(String(d).startsWith("+PONG")); });
      s.once("error", () => resolve(false));
    }), "redis-server to start");
    return redis;
  }

  /**
   * @param {string} url
   * @param {import("node:child_process").ChildProcess} child
   * @param {string} dir
   */
  constructor(url, child, dir) {
    this.url = url;
    this.child = child;
    this.dir = dir;
  }

  async stop() {
    this.child.kill("SIGKILL");
    await new Promise((r) => this.child.once("exit", r));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/**
 * Starts `n` nodes of one cluster on `redis`, whose liveness expires after `ttlSecs`.
 * @param {Redis} redis
 * @param {number} n
 * @param {number} ttlSecs
 */
export async function startCluster(redis, n, ttlSecs) {
  const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-cluster-"));
  const config = joinPath(dir, "cluster.toml");
  writeFileSync(config, `[cluster]\nnode_ttl_secs = ${ttlSecs}\n`);
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await TestServer.start(["--redis", redis.url, "--config", config]));
  return nodes;
}

/**
 * One peer: its own Chromium process and one page on the server's origin.
 * @param {TestServer} server
 * @param {{noWebrtc?: boolean, path?: string}} [opts]
 */
export async function launchPeer(server, opts = {}) {
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
  });
  const page = await browser.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  page.on("console", (m) => {
    // (The page at /sdk/bluecam.js has no favicon: that 404 is noise.)
    if ((m.type() === "warning" || m.type() === "error") && !m.text().startsWith("Failed to load resource")) {
      console.error(`page ${m.type()}:`, m.text());
    }
  });
  if (opts.noWebrtc) {
    await page.addInitScript(() => {
      // Simulates a browser (or network) where WebRTC is unavailable.
      // @ts-ignore
      delete window.RTCPeerConnection;
      // @ts-ignore
      window.RTCPeerConnection = undefined;
    });
  }
  await page.goto(server.url + (opts.path ?? "/sdk/bluecam.js"));
  return { browser, page, close: () => browser.close() };
}

/**
 * Joins through the SDK inside the page; messages and events are recorded on `window.t`.
 * @param {import("playwright-core").Page} page
 * @param {string} token
 * @param {{video?: boolean, audio?: boolean}} [media]
 * @param {string | string[]} [server] the node(s) to use; default the page's own origin
 * @returns {Promise<string>} the peer id
 */
export async function join(page, token, media = { video: true, audio: true }, server = undefined) {
  return page.evaluate(async ({ token, media, server }) => {
    const sdk = await import("/sdk/bluecam.js");
    /** @type {any} */
    const w = window;
    w.sdk = sdk;
    w.t = { received: [], left: [], joined: [], paths: [], streams: 0 };
    const remotes = document.createElement("div");
    document.body.appendChild(remotes);
    w.room = await sdk.joinRoom({
      token,
      ...media,
      ...(server ? { server } : {}),
      remoteVideos: remotes,
      onMessage: (/** @type {string} */ type, /** @type {unknown} */ data, /** @type {{id: string}} */ from, /** @type {{path: string}} */ meta) =>
        w.t.received.push({ type, data, from: from.id, path: meta.path }),
      onPeerJoined: (/** @type {{id: string}} */ p) => w.t.joined.push(p.id),
      onPeerLeft: (/** @type {{id: string}} */ p) => w.t.left.push(p.id),
      onPathChange: (/** @type {{id: string}} */ p, /** @type {string} */ path) => w.t.paths.push([p.id, path]),
      onStream: () => w.t.streams++,
    });
    return w.room.self.id;
  }, { token, media, server });
}

/**
 * Waits until the page's room lists `n` other peers: a message sent before a peer is known
 * goes to the peers present then, so tests must not race the `peer_joined` frame.
 * @param {import("playwright-core").Page} page
 * @param {number} n
 */
export function waitPeers(page, n) {
  return waitFor(
    () => page.evaluate((n) => /** @type {any} */ (window).room.peers.length >= n, n),
    `${n} peers in the room`,
  );
}

export function ensureArtifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
}
