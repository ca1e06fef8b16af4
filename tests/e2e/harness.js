// @ts-check
/**
 * End-to-end harness: a real `bluecam serve` (bound to port 0, its address read from what it
 * prints), real headless Chromium (Debian's /usr/bin/chromium driven by playwright-core: one
 * browser per test file, one browser context per peer, fake camera and microphone), and helpers
 * that join rooms through the public SDK inside the pages.
 *
 * Every page records what the SDK reports through `onError` and `onGap` (and the page's uncaught
 * errors): tests state what they expect with `expectEvents`, and `endTest` (run it in
 * `afterEach`) checks every peer of the test once more, then closes the test's contexts.
 * Every child process is tracked and ended by `stopAll` (run it in `after`), whatever happened.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, writeFileSync, readdirSync, existsSync, chownSync } from "node:fs";
import { tmpdir } from "node:os";
import { join as joinPath } from "node:path";
import { createServer, createConnection } from "node:net";
import { createServer as createHttpServer, request as httpRequest } from "node:http";
import { createSocket } from "node:dgram";
import { randomFillSync } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

export const ARTIFACTS = new URL("../../artifacts/", import.meta.url).pathname;
export const BIN = process.env.BLUECAM_BIN ?? joinPath(process.env.CARGO_TARGET_DIR ?? "target", "debug", "bluecam");
export const SECRET = "e2e-secret-0123456789abcdefghijklmn";

/** Deadlines: generous, so that a loaded machine is slow rather than failing. */
export const DEADLINE_MS = 60000;
const START_DEADLINE_MS = 60000;
const STOP_GRACE_MS = 10000;

// ---- bounded waiting ---------------------------------------------------------------------

/**
 * `promise`, or an error saying what did not happen if it takes longer than `ms`. For anything
 * that could hang, above all promises awaited inside page code (sendMessage, joinRoom) through
 * `page.evaluate`. `details`, if given, describes the state for the error message.
 * @template T
 * @param {Promise<T>} promise
 * @param {string} what
 * @param {number} [ms]
 * @param {() => Promise<string>} [details]
 * @returns {Promise<T>}
 */
export async function bounded(promise, what, ms = DEADLINE_MS, details) {
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const LATE = Symbol("late");
  const late = new Promise((resolve) => {
    timer = setTimeout(() => resolve(LATE), ms);
  });
  try {
    const r = await Promise.race([promise, late]);
    if (r === LATE) {
      // The abandoned promise may still reject (a page closed under it): that is no news.
      promise.catch(() => {});
      let more = "";
      if (details) {
        more = await bounded(details(), "the details", 5000).then((d) => `; ${d}`, (e) => ` (no details: ${e.message})`);
      }
      throw new Error(`timed out after ${ms / 1000} s: ${what}${more}`);
    }
    return /** @type {T} */ (r);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs `fn` in the page and bounds the wait for its result (see `bounded`).
 * @template A, R
 * @param {import("playwright-core").Page} page
 * @param {(arg: A) => R | Promise<R>} fn
 * @param {A} arg
 * @param {string} what
 * @param {number} [ms]
 * @param {() => Promise<string>} [details]
 * @returns {Promise<R>}
 */
export function evaluate(page, fn, arg, what, ms = DEADLINE_MS, details) {
  return bounded(/** @type {Promise<R>} */ (page.evaluate(/** @type {any} */ (fn), arg)), what, ms, details);
}

/**
 * Polls `check` until it returns a truthy value or the deadline passes (each check is bounded
 * by the deadline too, so a hung page cannot hold it up).
 * @template T
 * @param {() => Promise<T> | T} check
 * @param {string} what
 * @param {number} [timeoutMs]
 * @returns {Promise<T>}
 */
export async function waitFor(check, what, timeoutMs = DEADLINE_MS) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = Math.max(deadline - Date.now(), 1000);
    const v = await bounded(Promise.resolve().then(check), `waiting for ${what}`, left);
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---- child processes ---------------------------------------------------------------------

/** @typedef {{child: import("node:child_process").ChildProcess, exited: Promise<void>, dir: string, name: string}} Proc */

/** Every child process started in this file and not yet stopped. */
/** @type {Set<Proc>} */
const procs = new Set();

process.on("exit", () => {
  // Last resort (an uncaught error, a cancelled run): no process outlives the test file.
  for (const p of procs) p.child.kill("SIGKILL");
});

/**
 * Starts a child process, tracked until it is stopped. Its stderr goes to ours, the last few
 * KiB of it kept for error messages (and of its stdout too, with `stdoutIsLog`: Redis logs
 * there).
 * @param {string} name
 * @param {string} bin
 * @param {string[]} args
 * @param {string} dir its temporary directory, removed when it stops
 * @param {NodeJS.ProcessEnv} [env]
 * @param {boolean} [stdoutIsLog]
 */
function startProc(name, bin, args, dir, env, stdoutIsLog = false) {
  const child = spawn(bin, args, { env, stdio: ["ignore", "pipe", "pipe"] });
  let tail = "";
  // A failed spawn (no such binary) emits `error`, and maybe no `exit`.
  const exited = new Promise((resolve) => {
    child.once("exit", () => resolve(undefined));
    child.on("error", (e) => {
      tail += `\n(${name}: ${e.message})`;
      if (child.pid === undefined) resolve(undefined);
    });
  }).then(() => {});
  child.stderr?.on("data", (d) => {
    process.stderr.write(d);
    tail = (tail + String(d)).slice(-4096);
  });
  if (stdoutIsLog) {
    child.stdout?.on("data", (d) => {
      tail = (tail + String(d)).slice(-4096);
    });
  }
  /** @type {Proc & {stderr: () => string}} */
  const proc = { child, exited, dir, name, stderr: () => tail };
  procs.add(proc);
  return proc;
}

/**
 * Stops a process: SIGTERM (or SIGKILL), SIGKILL if it lingers, then its directory goes.
 * @param {Proc} proc
 * @param {NodeJS.Signals} signal
 */
async function stopProc(proc, signal, keepDir = false) {
  if (proc.child.exitCode === null && proc.child.signalCode === null) {
    proc.child.kill(signal);
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    const lingering = await Promise.race([
      proc.exited.then(() => false),
      new Promise((r) => {
        timer = setTimeout(() => r(true), STOP_GRACE_MS);
      }),
    ]);
    clearTimeout(timer);
    if (lingering) {
      console.error(`${proc.name} did not exit ${STOP_GRACE_MS / 1000} s after ${signal}: killing it`);
      proc.child.kill("SIGKILL");
      await proc.exited;
    }
  }
  procs.delete(proc);
  if (!keepDir) rmSync(proc.dir, { recursive: true, force: true });
}

/**
 * Ends every process and closes the browser: run it in `after`, so nothing outlives the file
 * whatever failed.
 */
export async function stopAll() {
  await endTest().catch(() => {});
  await Promise.allSettled([...servers].map((s) => s.stop()));
  await Promise.allSettled([...procs].map((p) => stopProc(p, "SIGKILL")));
  for (const dir of tempDirs.splice(0)) rmSync(dir, { recursive: true, force: true });
  await closeBrowser();
}

/** Directories to remove in `stopAll` (a cluster's configuration, read again on restarts). */
/** @type {string[]} */
const tempDirs = [];

/**
 * Resolves with the first stdout line of `proc` that matches `re` (its first group), rejects
 * if the process exits first.
 * @param {Proc & {stderr: () => string}} proc
 * @param {RegExp} re
 */
function stdoutLine(proc, re) {
  return new Promise((resolve, reject) => {
    let buf = "";
    let found = false;
    const stdout = /** @type {import("node:stream").Readable} */ (proc.child.stdout);
    /** The start lines after the match (the demo's link, say), kept for `startLine`. */
    const after = /** @type {string[]} */ ([]);
    /** @type {any} */ (proc).startLines = after;
    const onData = (/** @type {Buffer} */ d) => {
      buf += String(d);
      for (let nl = buf.indexOf("\n"); nl >= 0; nl = buf.indexOf("\n")) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (found) {
          // The few start lines are kept; the rest is read and dropped (it must not fill
          // the pipe).
          if (after.length < 50) after.push(line);
          continue;
        }
        const m = re.exec(line);
        if (m) {
          found = true;
          resolve(m[1]);
        }
      }
    };
    stdout.on("data", onData);
    void proc.exited.then(() => reject(new Error(`${proc.name} exited (${proc.child.exitCode ?? proc.child.signalCode}) before printing its address: ${proc.stderr()}`)));
  });
}

/** @returns {Promise<number>} a port free a moment ago (only for Redis, which cannot bind 0) */
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

// ---- bluecam serve -----------------------------------------------------------------------

/** Every server started and not yet stopped. */
/** @type {Set<TestServer>} */
const servers = new Set();

export class TestServer {
  /**
   * Starts `bluecam serve` on port 0 of 127.0.0.1 and reads its address from its first line
   * ("BlueCam is listening on http://127.0.0.1:PORT"): no port is picked and handed over.
   * @param {string[]} [extraArgs]
   * @param {Record<string, string>} [env] more environment variables (settings)
   */
  static async start(extraArgs = [], env = {}) {
    const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-e2e-"));
    const server = new TestServer(TestServer.spawn(dir, "127.0.0.1:0", extraArgs, env), extraArgs, env);
    servers.add(server);
    try {
      await server.started();
    } catch (e) {
      await server.stop();
      throw e;
    }
    return server;
  }

  /**
   * @param {string} dir
   * @param {string} bind
   * @param {string[]} extraArgs
   * @param {Record<string, string>} [env]
   */
  static spawn(dir, bind, extraArgs, env = {}) {
    return startProc("bluecam serve", BIN, ["serve", "--bind", bind, "--data-dir", dir, ...extraArgs], dir, {
      // BLUECAM_E2E_LOG=info (or a RUST_LOG filter) shows the servers' logs when debugging.
      ...process.env, BLUECAM_API_SECRET: SECRET, RUST_LOG: process.env.BLUECAM_E2E_LOG ?? "warn", ...env,
    });
  }

  /**
   * The first start line after the address line that matches `re` (its first group), once
   * printed.
   * @param {RegExp} re
   * @returns {Promise<string>}
   */
  async startLine(re) {
    return waitFor(() => {
      const lines = /** @type {string[]} */ (/** @type {any} */ (this.proc).startLines ?? []);
      for (const line of lines) {
        const m = re.exec(line);
        if (m) return m[1];
      }
      return undefined;
    }, `a start line matching ${re}`, START_DEADLINE_MS);
  }

  /** The default demo's link (printed at start: `/?demo=KEY`), as a path. */
  async demoPath() {
    const link = await this.startLine(/^Demo: open (\S+)/);
    const url = new URL(link);
    return url.pathname + url.search;
  }

  /** Waits for the address line and a healthy /healthz. */
  async started() {
    const proc = /** @type {Proc & {stderr: () => string}} */ (this.proc);
    this.url = await bounded(stdoutLine(proc, /^BlueCam is listening on (http:\/\/127\.0\.0\.1:\d+)$/), "bluecam serve to print its address", START_DEADLINE_MS);
    await waitFor(async () => {
      try {
        return (await fetch(`${this.url}/healthz`)).ok;
      } catch {
        return false;
      }
    }, "the server to answer /healthz", START_DEADLINE_MS);
  }

  /**
   * @param {Proc} proc
   * @param {string[]} extraArgs
   * @param {Record<string, string>} [env]
   */
  constructor(proc, extraArgs, env = {}) {
    this.proc = proc;
    this.child = proc.child;
    this.dir = proc.dir;
    this.url = "";
    this.extraArgs = extraArgs;
    this.env = env;
  }

  /**
   * Stops the process (SIGTERM: a graceful restart; SIGKILL: a crash), waits `downMs`, and
   * starts it again on the same address and data dir: what an operator's restart or an upgrade
   * does. Resolves once it answers /healthz.
   * @param {NodeJS.Signals} signal
   * @param {number} [downMs]
   */
  async restart(signal, downMs = 0) {
    await stopProc(this.proc, signal, true);
    await new Promise((r) => setTimeout(r, downMs));
    this.proc = TestServer.spawn(this.dir, new URL(this.url).host, this.extraArgs, this.env);
    this.child = this.proc.child;
    await this.started();
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   */
  async api(method, path, body) {
    const res = await bounded(fetch(this.url + path, {
      method,
      headers: { authorization: `Bearer ${SECRET}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    }), `${method} ${path}`);
    const text = await bounded(res.text(), `the body of ${method} ${path}`);
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

  /** Stops the server (SIGTERM, SIGKILL if it lingers); a no-op once stopped. */
  async stop() {
    servers.delete(this);
    await stopProc(this.proc, "SIGTERM");
  }

  /**
   * Freezes the process (SIGSTOP) for `ms`, then thaws it (SIGCONT): its sockets stay open and
   * silent meanwhile, as for a stalled or partitioned machine.
   * @param {number} ms
   */
  async freeze(ms) {
    this.child.kill("SIGSTOP");
    try {
      await new Promise((r) => setTimeout(r, ms));
    } finally {
      this.child.kill("SIGCONT");
    }
  }

  /** Kills the process outright (SIGKILL): no goodbye to anyone. */
  async kill() {
    this.child.kill("SIGKILL");
    await this.proc.exited;
  }
}

/** Stops every server still running (a test's cluster nodes, in `afterEach`). */
export async function stopServers() {
  await Promise.allSettled([...servers].map((s) => s.stop()));
}

/** `afterEach` for files whose tests start their own servers: `endTest`, then every server. */
export async function endTestAndServers() {
  try {
    await endTest();
  } finally {
    await stopServers();
  }
}

// ---- redis-server ------------------------------------------------------------------------

/**
 * The `process_id` in `INFO server` of whatever answers on `port`, or null.
 * @param {number} port
 * @returns {Promise<number | null>}
 */
function redisPid(port) {
  return new Promise((resolve) => {
    const s = createConnection(port, "127.0.0.1");
    let buf = "";
    const done = (/** @type {number | null} */ v) => {
      s.destroy();
      resolve(v);
    };
    s.setTimeout(5000, () => done(null));
    s.once("connect", () => s.write("INFO server\r\n"));
    s.on("data", (d) => {
      buf += String(d);
      const m = /process_id:(\d+)/.exec(buf);
      if (m) done(Number(m[1]));
      else if (buf.startsWith("-")) done(null);
    });
    s.once("error", () => done(null));
    s.once("close", () => done(null));
  });
}

/** A `redis-server` of this test run (Debian's package must be installed). */
export class Redis {
  /**
   * Redis cannot listen on port 0 and say which port it got, so: a free port, and if another
   * process took it meanwhile (our redis-server exits, "Address already in use"), another
   * port. Ready means that the redis-server answering is ours (its pid), not a squatter.
   */
  static async start() {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-redis-"));
      const proc = Redis.spawn(port, dir);
      /** @type {"ready" | "exited"} */
      let state;
      try {
        state = await Redis.ready(proc, port);
      } catch (e) {
        await stopProc(proc, "SIGKILL");
        throw e;
      }
      if (state === "ready") return new Redis(port, proc);
      const why = proc.stderr();
      await stopProc(proc, "SIGKILL");
      if (!/in use|bind/i.test(why) || attempt >= 5) throw new Error(`redis-server exited: ${why}`);
      console.error(`port ${port} was taken before redis-server bound it: trying another`);
    }
  }

  /**
   * A redis-server with append-only persistence (as the README asks of production).
   * @param {number} port
   * @param {string} dir
   */
  static spawn(port, dir) {
    return startProc("redis-server", "redis-server", [
      "--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
      "--dir", dir, "--loglevel", "warning",
    ], dir, undefined, true);
  }

  /**
   * Waits until the redis-server answering on `port` is `proc` (or it exited).
   * @param {Proc & {stderr: () => string}} proc
   * @param {number} port
   * @returns {Promise<"ready" | "exited">}
   */
  static async ready(proc, port) {
    return /** @type {"ready" | "exited"} */ (await waitFor(async () => {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) return "exited";
      return (await redisPid(port)) === proc.child.pid ? "ready" : null;
    }, "redis-server to start", START_DEADLINE_MS));
  }

  /**
   * @param {number} port
   * @param {Proc} proc
   */
  constructor(port, proc) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.proc = proc;
  }

  /**
   * Stops it (SIGKILL: a crash, the last second of writes may be lost; SIGTERM: flushed) and
   * starts it again on its port, from its append-only file, or `empty` (a failover to an empty
   * replica, a Redis without persistence).
   * @param {{signal?: NodeJS.Signals, empty?: boolean}} [opts]
   */
  async restart({ signal = "SIGKILL", empty = false } = {}) {
    const dir = this.proc.dir;
    await stopProc(this.proc, signal, true);
    if (empty) {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
    }
    this.proc = Redis.spawn(this.port, dir);
    if ((await Redis.ready(/** @type {any} */ (this.proc), this.port)) !== "ready") {
      throw new Error(`redis-server did not come back on its port: ${/** @type {any} */ (this.proc).stderr()}`);
    }
  }

  async stop() {
    await stopProc(this.proc, "SIGKILL");
  }
}

// ---- postgres -------------------------------------------------------------------------------

/** Debian keeps `initdb` and `postgres` under /usr/lib/postgresql/VERSION/bin, off PATH. */
function pgBin(/** @type {string} */ name) {
  const versions = existsSync("/usr/lib/postgresql") ? readdirSync("/usr/lib/postgresql").sort().reverse() : [];
  for (const v of versions) {
    const bin = `/usr/lib/postgresql/${v}/bin/${name}`;
    if (existsSync(bin)) return bin;
  }
  return name;
}

/**
 * A command line that runs `bin` as `nobody` when we are root (`initdb` and `postgres` refuse
 * root), through `setpriv`, which execs it: the child's pid is the program's.
 * @param {string} bin
 * @param {string[]} args
 * @returns {[string, string[]]}
 */
function asPostgresUser(bin, args) {
  return process.getuid?.() === 0
    ? ["setpriv", ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", bin, ...args]]
    : [bin, args];
}

/** A PostgreSQL of this test run (Debian's `postgresql` must be installed): its own cluster. */
export class Postgres {
  static async start() {
    const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-pg-"));
    const data = joinPath(dir, "data");
    mkdirSync(data);
    if (process.getuid?.() === 0) {
      chownSync(dir, 65534, 65534);
      chownSync(data, 65534, 65534);
    }
    const [bin, args] = asPostgresUser(pgBin("initdb"), ["-A", "trust", "-U", "bluecam", "--no-sync", "-D", data]);
    const init = startProc("initdb", bin, args, dir, process.env, true);
    await bounded(init.exited, "initdb", START_DEADLINE_MS);
    if (init.child.exitCode !== 0) throw new Error(`initdb failed: ${init.stderr()}`);
    procs.delete(init);
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const [pbin, pargs] = asPostgresUser(pgBin("postgres"), [
        "-D", data, "-p", String(port), "-h", "127.0.0.1", "-k", dir, "-c", "fsync=off", "-c", "max_connections=200",
      ]);
      const proc = startProc("postgres", pbin, pargs, dir, process.env, true);
      const ready = await waitFor(() => {
        if (proc.child.exitCode !== null || proc.child.signalCode !== null) return "exited";
        return /ready to accept connections/.test(proc.stderr()) ? "ready" : null;
      }, "postgres to start", START_DEADLINE_MS);
      if (ready === "ready") return new Postgres(port, proc);
      await stopProc(proc, "SIGKILL", true);
      if (attempt >= 5) throw new Error(`postgres did not start: ${proc.stderr()}`);
    }
  }

  /**
   * @param {number} port
   * @param {Proc} proc
   */
  constructor(port, proc) {
    this.url = `postgres://bluecam@127.0.0.1:${port}/postgres`;
    this.proc = proc;
  }

  async stop() {
    // SIGINT: PostgreSQL's fast shutdown.
    await stopProc(this.proc, "SIGINT");
  }
}

// ---- an HTTP proxy or load balancer --------------------------------------------------------

/**
 * Passes one HTTP request on to `up` (at `path`) and its answer back; 502 when `up` cannot be
 * reached. (The proxies of the tests: this one, and the hostile one of wstap.js.)
 * @param {import("node:http").IncomingMessage} req
 * @param {import("node:http").ServerResponse} res
 * @param {URL} up
 * @param {string} path
 */
export function passHttp(req, res, up, path) {
  const fwd = httpRequest({
    host: up.hostname, port: up.port, method: req.method, path,
    headers: { ...req.headers, host: up.host },
  }, (upRes) => {
    res.writeHead(upRes.statusCode ?? 502, upRes.headers);
    upRes.pipe(res);
  });
  fwd.on("error", () => {
    if (!res.headersSent) res.writeHead(502);
    res.end();
  });
  req.pipe(fwd);
}

/**
 * An HTTP proxy in front of one or more servers, as corporate proxies and load balancers are:
 * every request goes to the next upstream in turn (no sticky sessions), and a WebSocket
 * upgrade is refused with 403 (`webSocket: "refuse"`), held unanswered (`"hang"`), passed
 * through to the next upstream (`"pass"`), or passed through for the handshake only, every
 * frame after it dropped both ways (`"mute"`: a proxy that lets the upgrade through and then
 * passes nothing). With `prefix`, BlueCam is published under that path (`/rooms`): the proxy
 * strips it, and answers 404 to anything outside it. The HTTP transport's `open` requests (its
 * joins) take turns among themselves, so that two joins land on two upstreams whatever else
 * the pages requested in between (the SDK's modules, other pages' polls): a test of sessions
 * on different nodes does not depend on how many files the SDK has.
 * @param {string[]} upstreams base URLs (http://127.0.0.1:PORT)
 * @param {{webSocket?: "refuse" | "hang" | "pass" | "mute", prefix?: string}} [opts]
 * @returns {Promise<{url: string, requests: () => number[], upgrades: () => number, close: () => Promise<void>}>}
 */
export function startHttpProxy(upstreams, opts = {}) {
  const mode = opts.webSocket ?? "refuse";
  const counts = upstreams.map(() => 0);
  let next = 0;
  let nextOpen = 0;
  let upgrades = 0;
  /** @type {Set<import("node:net").Socket>} */
  const sockets = new Set();
  const pick = (/** @type {string} */ path = "") => {
    const i = path.startsWith("/v1/http/open") ? nextOpen++ % upstreams.length : next++ % upstreams.length;
    counts[i]++;
    return new URL(upstreams[i]);
  };
  const prefix = opts.prefix ?? "";
  /** The upstream's path of a request's, or null outside the prefix. @param {string | undefined} url */
  const inner = (url = "/") => (url.startsWith(prefix + "/") ? url.slice(prefix.length) : null);
  const server = createHttpServer((req, res) => {
    const path = inner(req.url);
    if (path === null) {
      res.writeHead(404).end();
      return;
    }
    passHttp(req, res, pick(path), path);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  server.on("upgrade", (req, socket, head) => {
    upgrades++;
    if (mode === "refuse") {
      socket.end("HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    if (mode === "hang") return; // held open, never answered
    const path = inner(req.url);
    if (path === null) {
      socket.end("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const up = pick();
    const conn = createConnection(Number(up.port), up.hostname, () => {
      let head0 = `${req.method} ${path} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head0 += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      conn.write(head0 + "\r\n");
      if (mode === "mute") {
        // The handshake's answer goes back; nothing else, either way.
        /** @type {Buffer | null} */
        let answer = Buffer.alloc(0);
        conn.on("data", (d) => {
          if (answer === null) return;
          answer = Buffer.concat([answer, d]);
          const end = answer.indexOf("\r\n\r\n");
          if (end >= 0) {
            socket.write(answer.subarray(0, end + 4));
            answer = null;
          }
        });
        socket.on("data", () => {});
        return;
      }
      if (head.length > 0) conn.write(head);
      socket.pipe(conn).pipe(socket);
    });
    conn.on("error", () => socket.destroy());
    socket.on("error", () => conn.destroy());
    sockets.add(conn);
    conn.on("close", () => sockets.delete(conn));
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const addr = server.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      resolve({
        url: `http://127.0.0.1:${port}`,
        requests: () => [...counts],
        upgrades: () => upgrades,
        close: () => new Promise((done) => {
          for (const s of sockets) s.destroy();
          server.close(() => done(undefined));
        }),
      });
    });
  });
}

// ---- coturn -------------------------------------------------------------------------------

/**
 * Whether a STUN server answers a Binding request on UDP `port` of 127.0.0.1 within 500 ms.
 * @param {number} port
 * @returns {Promise<boolean>}
 */
function stunAnswers(port) {
  return new Promise((resolve) => {
    const sock = createSocket("udp4");
    // Binding request: type 0x0001, length 0, the magic cookie, a 12-byte transaction id.
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0);
    req.writeUInt32BE(0x2112a442, 4);
    randomFillSync(req, 8, 12);
    const done = (/** @type {boolean} */ v) => {
      clearTimeout(timer);
      sock.close();
      resolve(v);
    };
    const timer = setTimeout(() => done(false), 500);
    sock.on("message", (m) => done(m.length >= 20 && m.readUInt16BE(0) === 0x0101 && m.subarray(8, 20).equals(req.subarray(8, 20))));
    sock.on("error", () => done(false));
    sock.send(req, port, "127.0.0.1");
  });
}

/** A real TURN server (Debian's coturn) on loopback, with `use-auth-secret` as in production. */
export class Coturn {
  /** @param {string} secret coturn's static-auth-secret, shared with BlueCam */
  static async start(secret) {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-coturn-"));
      const proc = startProc("turnserver", "turnserver", [
        "-n", "--listening-ip=127.0.0.1", `--listening-port=${port}`, "--relay-ip=127.0.0.1",
        // Relay ports of its own range, away from the ephemeral ports servers and browsers get.
        `--min-port=${20000 + (port % 20) * 500}`, `--max-port=${20000 + (port % 20) * 500 + 499}`,
        "--use-auth-secret", `--static-auth-secret=${secret}`, "--realm=bluecam.test",
        "--no-tls", "--no-dtls", "--no-cli", "--no-multicast-peers",
        // Test only: the "other side" of every relay is on this machine.
        "--allow-loopback-peers",
        `--pidfile=${joinPath(dir, "turnserver.pid")}`, `--userdb=${joinPath(dir, "turndb")}`,
        "--log-file=stdout", "--simple-log",
      ], dir, undefined, true);
      const state = await waitFor(async () => {
        if (proc.child.exitCode !== null || proc.child.signalCode !== null) return "exited";
        return (await stunAnswers(port)) ? "ready" : null;
      }, "turnserver to answer STUN", START_DEADLINE_MS).catch(async (e) => {
        await stopProc(proc, "SIGKILL");
        throw e;
      });
      if (state === "ready") return new Coturn(port, proc);
      const why = proc.stderr();
      await stopProc(proc, "SIGKILL");
      if (attempt >= 5) throw new Error(`turnserver exited: ${why}`);
    }
  }

  /**
   * @param {number} port
   * @param {Proc & {stderr: () => string}} proc
   */
  constructor(port, proc) {
    this.port = port;
    this.proc = proc;
    /** What it logged last (to tell allocations from their absence). */
    this.log = () => proc.stderr();
  }

  async stop() {
    await stopProc(this.proc, "SIGKILL");
  }
}

/**
 * Starts `n` nodes of one cluster on `redis`, whose liveness expires after `ttlSecs`. Each node
 * is tracked as soon as it starts (`stopServers`, `stopAll`), even if a later one fails.
 * @param {Redis} redis
 * @param {number} n
 * @param {number} ttlSecs
 * @param {string} [extraToml] more configuration (a `[limits]` table, say)
 * @param {string[]} [extraArgs] more `bluecam serve` arguments (`--database URL`, say)
 * @param {Record<string, string>} [env] more environment variables (settings)
 */
export async function startCluster(redis, n, ttlSecs, extraToml = "", extraArgs = [], env = {}) {
  const dir = mkdtempSync(joinPath(tmpdir(), "bluecam-cluster-"));
  // Kept until `stopAll`: a node restarted by a test reads it again.
  tempDirs.push(dir);
  const config = joinPath(dir, "cluster.toml");
  writeFileSync(config, `[cluster]\nnode_ttl_secs = ${ttlSecs}\n${extraToml}`);
  const nodes = [];
  for (let i = 0; i < n; i++) nodes.push(await TestServer.start(["--redis", redis.url, "--config", config, ...extraArgs], env));
  return nodes;
}

// ---- the browser, and one context per peer -----------------------------------------------

/** @type {Promise<import("playwright-core").Browser> | null} */
let browserStarting = null;

/** The browser of this test file, started on first use. */
function browser() {
  browserStarting ??= chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [
      "--headless", "--no-sandbox", "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
  });
  return browserStarting;
}

export async function closeBrowser() {
  const starting = browserStarting;
  browserStarting = null;
  const running = await starting?.catch(() => null);
  if (running) await bounded(running.close(), "closing the browser", 30000).catch((e) => console.error(e.message));
}

/**
 * What the pages import as /sdk/bluecam.js: the real SDK (under another URL), with `joinRoom`
 * recording every `onError` and `onGap` call in `window.__bluecamEvents` before passing it on
 * to the app's own callbacks. So every join in every page is recorded: the harness's `join`,
 * a test's own `joinRoom` calls and the demo app's.
 */
const RECORDING_SDK = `
import * as sdk from "./bluecam.js?e2e-real";
export * from "./bluecam.js?e2e-real";
const events = (globalThis.__bluecamEvents ??= { errors: [], gaps: [] });
export function joinRoom(options) {
  return sdk.joinRoom({
    ...options,
    onError(error) {
      events.errors.push({ name: String(error?.name), code: error?.code ?? null, message: String(error?.message ?? error) });
      options.onError?.(error);
    },
    onGap(peer, gap) {
      events.gaps.push({ peer: peer.id, expected: gap.expected, held: gap.held, partial: gap.partial });
      options.onGap?.(peer, gap);
    },
  });
}
export const JoinRoom = joinRoom;
`;

/**
 * @typedef {{name: string, code?: string | null, message?: string | RegExp}} ErrorSpec
 * @typedef {{peer: string, expected: number, held: number, partial: number}} GapSpec
 * @typedef {{errors?: ErrorSpec[] | {every: ErrorSpec, atLeast?: number}, gaps?: GapSpec[]}} Expected
 * @typedef {{errors: {name: string, code: string | null, message: string}[], gaps: GapSpec[]}} Events
 */

/**
 * One peer: a browser context of its own (storage, cookies, permissions: like a separate
 * browser) with one page, and what the SDK reported in it.
 * @typedef {object} Peer
 * @property {string} label
 * @property {import("playwright-core").BrowserContext} context
 * @property {import("playwright-core").Page} page
 * @property {string[]} pageErrors uncaught errors and unhandled rejections in the page
 * @property {Expected} expected what the test last said it expects (none by default)
 * @property {() => Promise<Events>} events
 * @property {() => Promise<void>} close
 */

/** The peers of the running test. */
/** @type {Set<Peer>} */
const peers = new Set();
let peerCount = 0;

/**
 * A peer on `server`: a new context of the file's browser, with one page on the server's origin.
 * @param {TestServer} server
 * @param {{noWebrtc?: boolean, noWebSocket?: boolean, path?: string, label?: string}} [opts]
 * @returns {Promise<Peer>}
 */
export async function launchPeer(server, opts = {}) {
  const label = opts.label ?? `peer ${++peerCount}`;
  const context = await bounded((await browser()).newContext(), `a browser context for ${label}`);
  /** @type {Peer} */
  const peer = {
    label,
    context,
    page: /** @type {any} */ (null),
    pageErrors: [],
    expected: {},
    events: () => evaluate(peer.page, () => {
      const e = /** @type {any} */ (window).__bluecamEvents;
      return { errors: e?.errors ?? [], gaps: e?.gaps ?? [] };
    }, undefined, `the SDK events of ${label}`, 10000),
    close: () => bounded(context.close(), `closing ${label}'s context`, 30000).catch((e) => console.error(e.message)),
  };
  peers.add(peer);
  await context.route(
    (url) => url.pathname.endsWith("/sdk/bluecam.js") && url.search === "",
    (route) => route.request().resourceType() === "script"
      // (CORS-open like the real one: a page of another origin may import it.)
      ? route.fulfill({ contentType: "text/javascript", body: RECORDING_SDK, headers: { "access-control-allow-origin": "*" } })
      : route.continue(),
  );
  const page = await bounded(context.newPage(), `a page for ${label}`);
  peer.page = page;
  page.on("pageerror", (e) => {
    console.error(`${label}: uncaught in the page:`, e.message);
    peer.pageErrors.push(e.message);
  });
  page.on("console", (m) => {
    // (The page at /sdk/bluecam.js has no favicon: that 404 is noise.)
    if ((m.type() === "warning" || m.type() === "error") && !m.text().startsWith("Failed to load resource")) {
      console.error(`${label}: page ${m.type()}:`, m.text());
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
  if (opts.noWebSocket) {
    await page.addInitScript(() => {
      // A browser (or a locked-down page) without WebSocket.
      // @ts-ignore
      delete window.WebSocket;
    });
  }
  await page.goto(server.url + (opts.path ?? "/sdk/bluecam.js"), { timeout: DEADLINE_MS });
  return peer;
}

/**
 * Whether `events` are what `expected` says (exactly: no more, no fewer).
 * @param {Events} events
 * @param {Expected} expected
 */
function eventsMatch(events, expected) {
  const errorIs = (/** @type {Events["errors"][number]} */ got, /** @type {ErrorSpec} */ spec) =>
    got.name === spec.name &&
    (!("code" in spec) || got.code === (spec.code ?? null)) &&
    (spec.message === undefined || (spec.message instanceof RegExp ? spec.message.test(got.message) : got.message === spec.message));
  const want = expected.errors ?? [];
  const errorsOk = Array.isArray(want)
    ? events.errors.length === want.length && events.errors.every((e, i) => errorIs(e, want[i]))
    : events.errors.length >= (want.atLeast ?? 0) && events.errors.every((e) => errorIs(e, want.every));
  return errorsOk && isDeepStrictEqual(events.gaps, expected.gaps ?? []);
}

/** @param {Expected} expected */
function describe(expected) {
  return JSON.stringify(expected, (_, v) => (v instanceof RegExp ? String(v) : v));
}

/**
 * Asserts what the SDK reported through `onError` and `onGap` in each of `peersToCheck`: by
 * default nothing at all ("no spurious error, no gap"). Remembered for `endTest`, which checks
 * again (nothing may come later either).
 * @param {Peer[]} peersToCheck
 * @param {Expected} [expected]
 */
export async function expectEvents(peersToCheck, expected = {}) {
  for (const peer of peersToCheck) {
    peer.expected = expected;
    const events = await peer.events();
    if (!eventsMatch(events, expected)) {
      throw new Error(`${peer.label}: the SDK reported ${JSON.stringify(events)}, expected ${describe(expected)}`);
    }
  }
}

/**
 * Ends the running test (run it in `afterEach`): checks that every peer's SDK events are still
 * what the test expected (none unless it said otherwise) and that no page had an uncaught
 * error, then closes every context of the test, whatever the checks found.
 */
export async function endTest() {
  const ending = [...peers];
  peers.clear();
  const problems = [];
  try {
    for (const peer of ending) {
      if (peer.pageErrors.length > 0) problems.push(`${peer.label}: uncaught in the page: ${peer.pageErrors.join(" | ")}`);
      // (A page the test closed, as a user closes a tab, has nothing more to say.)
      if (!peer.page || peer.page.isClosed()) continue;
      const events = await peer.events().catch((e) => e);
      // `page.close({ runBeforeUnload: true })` does not wait for the page to go: one still
      // closing when the test ends was closed by the test too.
      if (events instanceof Error && /has been closed/.test(events.message)) continue;
      if (events instanceof Error) problems.push(`${peer.label}: ${events.message}`);
      else if (!eventsMatch(events, peer.expected)) {
        problems.push(`${peer.label}: the SDK reported ${JSON.stringify(events)}, expected ${describe(peer.expected)}`);
      }
    }
  } finally {
    await Promise.allSettled(ending.map((p) => p.close()));
  }
  if (problems.length > 0) throw new Error(problems.join("\n"));
}

// ---- joining -----------------------------------------------------------------------------

/**
 * Joins through the SDK inside the page; messages and events are recorded on `window.t` (and
 * `onError`/`onGap` in `window.__bluecamEvents`, see RECORDING_SDK).
 * @param {import("playwright-core").Page} page
 * @param {string} token
 * @param {{video?: boolean, audio?: boolean, iceTransportPolicy?: "all" | "relay", signalMethod?: "websocket" | "http"}} [media]
 *   media, and more join options
 * @param {string | string[]} [server] the node(s) to use; default the page's own origin
 * @returns {Promise<string>} the peer id
 */
export function join(page, token, media = { video: true, audio: true }, server = undefined) {
  return evaluate(page, async ({ token, media, server }) => {
    // (From the page's own server, under its path prefix if it has one.)
    const sdk = await import(location.pathname.endsWith("/sdk/bluecam.js") ? location.pathname : "/sdk/bluecam.js");
    /** @type {any} */
    const w = window;
    w.sdk = sdk;
    w.t = { received: [], left: [], joined: [], paths: [], streams: 0, states: [] };
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
      onPathChange: (/** @type {{id: string}} */ p, /** @type {string} */ path) => {
        w.t.paths.push([p.id, path]);
        // Synchronous, inside the SDK's callback: a test can act at the very moment of a switch.
        window.dispatchEvent(new CustomEvent("bluecam-path", { detail: { id: p.id, path } }));
      },
      onStream: () => w.t.streams++,
      onConnectionChange: (/** @type {string} */ state) => w.t.states.push(state),
    });
    return w.room.self.id;
  }, { token, media, server }, "joinRoom");
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

/**
 * Inbound video frames decoded from a peer, the candidate types of the selected pair, and
 * whether both are host candidates.
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
export function videoStats(page, peerId) {
  return evaluate(page, async (id) => {
    const pc = /** @type {any} */ (window).room.remotes.get(id)?.link?.pc;
    if (!pc) return { frames: 0, host: false, local: "", remote: "" };
    const stats = await pc.getStats();
    let frames = 0;
    let host = false;
    let local = "";
    let remote = "";
    /** @type {Map<string, any>} */
    const byId = new Map();
    stats.forEach((/** @type {any} */ s) => byId.set(s.id, s));
    stats.forEach((/** @type {any} */ s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
      if (s.type === "candidate-pair" && s.state === "succeeded" && s.nominated) {
        local = byId.get(s.localCandidateId)?.candidateType ?? "";
        remote = byId.get(s.remoteCandidateId)?.candidateType ?? "";
        host = local === "host" && remote === "host";
      }
    });
    return { frames, host, local, remote };
  }, peerId, "getStats");
}

// ---- what the pages saw --------------------------------------------------------------------

/**
 * What an SDK instance holds for each remote peer, for failure messages.
 * @param {import("playwright-core").Page} page
 */
export const sdkState = (page) => page.evaluate(() => {
  const room = /** @type {any} */ (window).room;
  return JSON.stringify({
    self: room.self.id,
    state: room.connectionState,
    connected: room.signaling.connected,
    remotes: [...room.remotes.values()].map((r) => ({
      id: r.info.id, path: room.path(r.info.id), pending: r.outbox.pending.length,
      firstPending: r.outbox.pending[0] && { seq: r.outbox.pending[0].seq, via: r.outbox.pending[0].via, age: Date.now() - r.outbox.pending[0].sentAt },
      expected: r.inbox.expected, held: r.inbox.held.size,
    })),
  });
});

/** @param {import("playwright-core").Page} page */
export const received = (page) => evaluate(page, () => /** @type {any} */ (window).t.received, undefined, "the messages received");
/** @param {import("playwright-core").Page} page */
export const leftSeen = (page) => evaluate(page, () => /** @type {any} */ (window).t.left, undefined, "the peers seen leaving");
/**
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
export const pathTo = (page, peerId) => evaluate(page, (id) => /** @type {any} */ (window).room.path(id), peerId, "room.path");

/**
 * Sends `n` numbered messages of type "n" to everyone without waiting between them; resolves
 * when all promises settled, with how many resolved (bounded: `details` says what was stuck).
 * @param {import("playwright-core").Page} page
 * @param {number} n
 * @param {() => Promise<string>} [details] default: the page's SDK state
 */
export function burst(page, n, details = () => sdkState(page)) {
  return evaluate(page, async (n) => {
    const room = /** @type {any} */ (window).room;
    const all = [];
    for (let i = 0; i < n; i++) all.push(room.sendMessage("n", i));
    const settled = await Promise.allSettled(all);
    return settled.filter((s) => s.status === "fulfilled").length;
  }, n, `${n} sends to settle`, undefined, details);
}

/**
 * Sends `n` numbered messages of `type` to everyone, one every `everyMs`; resolves with how
 * many promises resolved and the peers named by those rejected (PeerUnreachableError).
 * @param {import("playwright-core").Page} page
 * @param {number} n
 * @param {string} type
 * @param {number} everyMs
 */
export function paced(page, n, type, everyMs) {
  return evaluate(page, async ({ n, type, everyMs }) => {
    const room = /** @type {any} */ (window).room;
    const unreachable = new Set();
    let other = 0;
    const all = [];
    for (let i = 0; i < n; i++) {
      // Each outcome is taken as it comes (no rejection is left unhandled meanwhile).
      all.push(room.sendMessage(type, i).catch((/** @type {any} */ e) => {
        if (e?.name === "PeerUnreachableError") for (const p of e.peers) unreachable.add(p);
        else other++;
      }));
      await new Promise((r) => setTimeout(r, everyMs));
    }
    await Promise.all(all);
    return { other, unreachable: [...unreachable] };
  }, { n, type, everyMs }, `${n} paced sends to settle`, undefined, () => sdkState(page));
}

/**
 * Waits until `page` has `n` messages of `type` from `from`, then checks they are 0..n-1.
 * @param {import("playwright-core").Page} page
 * @param {string} from
 * @param {number} n
 * @param {string} type
 */
export async function expectAll(page, from, n, type) {
  const of = async () => (await received(page))
    .filter((/** @type {any} */ m) => m.type === type && m.from === from)
    .map((/** @type {any} */ m) => m.data);
  const got = await waitFor(async () => {
    const r = await of();
    return r.length >= n ? r : null;
  }, `${n} messages of ${type}`).catch(async (e) => {
    const r = await of();
    const missing = [...Array(n).keys()].filter((i) => !r.includes(i));
    throw new Error(`${e.message}: got ${r.length}, first missing ${missing.slice(0, 10)}`);
  });
  // Let duplicates, if any, arrive before judging.
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(await of(), [...Array(n).keys()], `from ${from}: every message once, in order`);
  assert.equal(got.length, n);
}

/**
 * The end of a fault test where every peer sent `n` paced messages of type "n" to all others
 * (`sending`: their `paced` results): every send resolved as delivered, every message from
 * every other peer arrived once and in order, nobody left, and every page is connected. A
 * timeout shows every page's SDK state.
 * @param {Peer[]} peers
 * @param {string[]} ids their peer ids, in the same order
 * @param {number} n
 * @param {Promise<{other: number, unreachable: string[]}[]>} sending
 */
export async function expectEverythingDelivered(peers, ids, n, sending) {
  const results = await sending.catch(async (e) => {
    const states = await Promise.all(peers.map((p) => sdkState(p.page).catch((x) => x.message)));
    throw new Error(`${e.message}\nall pages: ${states.join("\n")}`);
  });
  for (const r of results) assert.deepEqual(r, { other: 0, unreachable: [] });
  for (const [i, p] of peers.entries()) {
    for (const [j, from] of ids.entries()) {
      if (i !== j) await expectAll(p.page, from, n, "n");
    }
  }
  for (const p of peers) {
    assert.deepEqual(await leftSeen(p.page), [], `${p.label}: nobody left`);
    await waitFor(async () => (await evaluate(p.page, () => /** @type {any} */ (window).room.connectionState, undefined, "connectionState")) === "connected", `${p.label} connected`);
  }
}

export function ensureArtifacts() {
  mkdirSync(ARTIFACTS, { recursive: true });
}
