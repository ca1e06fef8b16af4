// @ts-check
/**
 * Browser benchmark: two real headless Chromium processes on this machine, talking through the
 * public SDK to a real `bluecam serve` (the end-to-end harness of tests/e2e/harness.js).
 *
 *   node bench/browser.js [--runs 20] [--messages 1000] [--delay-ms 50] [--modes near,far] [--e2ee] [--json FILE]
 *
 * Every measurement runs in two modes: "near", the pages and their WebSocket straight to the
 * server, and "far", through a delaying TCP proxy (bench/delay-proxy.js) that adds --delay-ms to
 * every chunk in each direction: a server far from both users. In "far" mode the pages are
 * loaded from the proxy's URL, so the SDK (which connects to the origin it was loaded from)
 * reaches the server only through it; the app backend's calls (rooms, tokens) go direct. The
 * browsers' data channel is between them, on this machine, as it is between two users near each
 * other.
 *
 * The server binary is $BLUECAM_BIN (default, as in the harness, $CARGO_TARGET_DIR/debug/bluecam
 * or target/debug/bluecam). The server runs with its default limits.
 *
 * 1. join → first P2P message: per run a fresh room and two fresh browser processes. A joins
 *    (video + audio, fake devices). In B's page, t0 = performance.timeOrigin + performance.now()
 *    right before joinRoom (video + audio); as soon as room.path(A) is "p2p" (onPathChange, with
 *    a 5 ms poll as a fallback) B sends one message to A; A stamps its arrival in onMessage when
 *    meta.path is "p2p". Every callback is installed before joinRoom is called. B also stamps
 *    A's first video frame shown (requestVideoFrameCallback on A's stream): the SDK opens the
 *    data channel first and negotiates media right after, and this is what the video pays.
 * 2. Message latency, data channel vs relay: data-only peers (video and audio off); "p2p" waits
 *    for the data channel, "relay" launches both browsers without WebRTC, "http" without WebRTC
 *    and without WebSocket (the relay over the HTTP transport, long-polling). A sends M messages to
 *    B paced at one every 2 ms (a schedule: every timer wake-up sends the messages that are due),
 *    each carrying its send time; B computes arrival − sent. Checks that every message arrived
 *    exactly once and in order.
 *
 * With --e2ee every page joins with the same room key (end-to-end encryption, docs/security.md),
 * so every figure is the encrypted one; and a third measurement runs first, in one page: what
 * sealing and opening a record costs in Chromium's WebCrypto (records of 100 bytes and of 16 KiB,
 * a chunk's size, sealed and opened one after the other as the SDK does per peer), and how much
 * larger a sealed record is than its text.
 *
 * Clocks: both browsers run on this machine, so performance.timeOrigin + performance.now() in
 * either is the same wall clock (timeOrigin is the wall-clock time of the page's navigation,
 * now() a monotonic offset from it), and times taken in two processes can be subtracted. The
 * residual error is the wall-clock reading at each navigation and Chromium's coarsening of
 * performance.now() (100 µs without cross-origin isolation), far below the figures measured.
 */
import { writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { TestServer, launchPeer, waitFor, stopAll } from "../tests/e2e/harness.js";
import { startDelayProxy } from "./delay-proxy.js";

const { values: args } = parseArgs({
  options: {
    runs: { type: "string", default: "20" },
    messages: { type: "string", default: "1000" },
    "delay-ms": { type: "string", default: "50" },
    modes: { type: "string", default: "near,far" },
    e2ee: { type: "boolean", default: false },
    json: { type: "string" },
  },
});
const RUNS = Number(args.runs);
const MESSAGES = Number(args.messages);
const DELAY_MS = Number(args["delay-ms"]);
const MODES = String(args.modes).split(",").filter((m) => m === "near" || m === "far");
/** The room key every page joins with under --e2ee. */
const E2EE_KEY = args.e2ee ? randomBytes(32).toString("base64url") : null;
/** Pacing of the latency runs. */
const INTERVAL_MS = 2;
if (!Number.isInteger(RUNS) || RUNS < 1 || !Number.isInteger(MESSAGES) || MESSAGES < 1 || !(DELAY_MS >= 0) || MODES.length === 0) {
  console.error("usage: node bench/browser.js [--runs N] [--messages M] [--delay-ms D] [--modes near,far] [--json FILE]");
  process.exit(2);
}

/**
 * @typedef {{n: number, min: number, mean: number, p50: number, p95: number, p99: number, max: number}} Summary
 */

/**
 * Nearest-rank percentiles, in ms rounded to 0.01.
 * @param {number[]} xs
 * @returns {Summary | null}
 */
function summarize(xs) {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const q = (/** @type {number} */ p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
  const r = (/** @type {number} */ x) => Math.round(x * 100) / 100;
  return {
    n: s.length,
    min: r(s[0]),
    mean: r(s.reduce((a, b) => a + b, 0) / s.length),
    p50: r(q(50)),
    p95: r(q(95)),
    p99: r(q(99)),
    max: r(s[s.length - 1]),
  };
}

/**
 * Joins in the page through the SDK with recording callbacks installed before joinRoom:
 * every message lands on `window.t.received` with its arrival time (timeOrigin + now()), and
 * `rate_limited` errors from the server are counted on `window.t.rateLimited`.
 * @param {import("playwright-core").Page} page
 * @param {string} token
 * @param {{video: boolean, audio: boolean}} media
 * @returns {Promise<string>} the peer id
 */
function joinRecording(page, token, media) {
  return page.evaluate(async ({ token, media, key }) => {
    const sdk = await import("/sdk/bluecam.js");
    /** @type {any} */
    const w = window;
    w.t = { received: [], paths: [], rateLimited: 0 };
    const remotes = document.createElement("div");
    document.body.appendChild(remotes);
    w.room = await sdk.joinRoom({
      token,
      ...media,
      ...(key ? { e2ee: { key } } : {}),
      remoteVideos: remotes,
      onMessage: (/** @type {string} */ type, /** @type {any} */ data, /** @type {{id: string}} */ from, /** @type {{path: string}} */ meta) =>
        w.t.received.push({ type, data, from: from.id, path: meta.path, at: performance.timeOrigin + performance.now() }),
      onPathChange: (/** @type {{id: string}} */ p, /** @type {string} */ path) =>
        w.t.paths.push([p.id, path, performance.timeOrigin + performance.now()]),
    });
    // Count the server's rate_limited errors (the SDK handles them silently).
    const onFrame = w.room.onFrame.bind(w.room);
    w.room.onFrame = (/** @type {any} */ f) => {
      if (f.op === "error" && f.code === "rate_limited") w.t.rateLimited++;
      onFrame(f);
    };
    return w.room.self.id;
  }, { token, media, key: E2EE_KEY });
}

/**
 * What one record costs in this Chromium: two RoomCrypto of one room exchange keys, then
 * `count` records of `bytes` bytes of text are sealed by one and opened by the other, each
 * after the one before (as the SDK does for one peer). Microseconds per record, and the sealed
 * record's size over its text's.
 * @param {TestServer} server
 */
async function recordCost(server) {
  const p = await launchPeer(server);
  try {
    return await p.page.evaluate(async () => {
      const { RoomCrypto } = await import("/sdk/e2ee.js");
      const key = "bench-key-0123456789abcdefghij";
      const [a, b] = [new RoomCrypto(key), new RoomCrypto(key)];
      await Promise.all([a.bind("room", "a"), b.bind("room", "b")]);
      const [pa, pb] = [a.pair("b"), b.pair("a")];
      await pb.onHello((await pa.hello()).e2ee);
      await pa.onHello((await pb.hello()).e2ee);
      const out = [];
      for (const [bytes, count] of [[100, 4000], [16384, 400]]) {
        const text = JSON.stringify({ v: 1, k: "m", s: 1, t: "x", d: "é".repeat(Math.max(1, (bytes - 40) / 2)) }).slice(0, bytes);
        /** @type {{x: string}[]} */
        const recs = [];
        let t = performance.now();
        for (let i = 0; i < count; i++) recs.push(await pa.sealNow("relay", text));
        const sealUs = ((performance.now() - t) * 1000) / count;
        t = performance.now();
        for (const r of recs) await pb.openNow("relay", r.x);
        const openUs = ((performance.now() - t) * 1000) / count;
        const textBytes = new TextEncoder().encode(text).length;
        const sealedBytes = JSON.stringify(recs[0]).length;
        out.push({ textBytes, count, sealUs: Math.round(sealUs * 10) / 10, openUs: Math.round(openUs * 10) / 10, sealedBytes, growth: Math.round((sealedBytes / textBytes) * 1000) / 1000 });
      }
      return out;
    });
  } finally {
    await p.close();
  }
}

/**
 * @param {import("playwright-core").Page} page
 * @param {string} peerId
 */
const pathTo = (page, peerId) => page.evaluate((id) => /** @type {any} */ (window).room.path(id), peerId);

/**
 * One run of scenario 1. Returns the timings, or the error that ended the run.
 * @param {TestServer} server the app backend's way to the server (rooms, tokens)
 * @param {TestServer} via where the pages load from and connect to (the server, or the proxy)
 * @param {number} run
 */
async function joinRun(server, via, run) {
  const room = await server.room();
  const a = await launchPeer(via);
  /** @type {Awaited<ReturnType<typeof launchPeer>> | null} */
  let b = null;
  try {
    const aId = await joinRecording(a.page, await server.token(room, "alice"), { video: true, audio: true });
    b = await launchPeer(via);
    const bToken = await server.token(room, "bob");
    const atB = await b.page.evaluate(async ({ token, aId, key }) => {
      const sdk = await import("/sdk/bluecam.js");
      /** @type {any} */
      const w = window;
      const now = () => performance.timeOrigin + performance.now();
      const remotes = document.createElement("div");
      document.body.appendChild(remotes);
      /** @type {{t0: number, joined?: number, p2p?: number, sent?: number, frame?: number, trigger?: string, error?: string}} */
      const r = { t0: 0 };
      /** @type {(v: unknown) => void} */
      let framed = () => {};
      const framePromise = new Promise((resolve) => (framed = resolve));
      /** @type {any} */
      let room = null;
      /** @type {(v: unknown) => void} */
      let done = () => {};
      const sentPromise = new Promise((resolve) => (done = resolve));
      /** @param {string} trigger */
      const trySend = (trigger) => {
        if (r.sent !== undefined || !room || room.path(aId) !== "p2p") return;
        r.p2p ??= now();
        r.trigger = trigger;
        r.sent = now();
        room.sendMessage("first", { sent: r.sent }, { to: aId }).catch((/** @type {Error} */ e) => (r.error = String(e)));
        clearInterval(poll);
        done(undefined);
      };
      const poll = setInterval(() => trySend("poll"), 5);
      r.t0 = now();
      room = await sdk.joinRoom({
        token,
        video: true,
        audio: true,
        ...(key ? { e2ee: { key } } : {}),
        remoteVideos: remotes,
        // A's first video frame shown at B: the media that follows the data channel.
        onStream: (/** @type {{id: string}} */ p, /** @type {MediaStream} */ stream) => {
          if (p.id !== aId || r.frame !== undefined) return;
          const v = document.createElement("video");
          v.muted = true;
          v.srcObject = stream;
          v.requestVideoFrameCallback(() => {
            r.frame ??= now();
            framed(undefined);
          });
          void v.play().catch(() => {});
        },
        onPathChange: (/** @type {{id: string}} */ p, /** @type {string} */ path) => {
          if (p.id === aId && path === "p2p") {
            r.p2p ??= now();
            trySend("onPathChange");
          }
        },
      });
      r.joined = now();
      w.room = room;
      trySend("joined");
      await Promise.race([Promise.all([sentPromise, framePromise]), new Promise((resolve) => setTimeout(resolve, 20000))]);
      clearInterval(poll);
      return r;
    }, { token: bToken, aId, key: E2EE_KEY });
    if (atB.sent === undefined) throw new Error("B never saw the path to A become p2p within 20 s");
    const got = await waitFor(async () => {
      const rec = await a.page.evaluate(() => /** @type {any} */ (window).t.received);
      return rec.find((/** @type {any} */ m) => m.type === "first") ?? null;
    }, "A to receive B's first message", 20000);
    if (got.path !== "p2p") throw new Error(`A received the first message with meta.path "${got.path}", not "p2p"`);
    if (atB.error) throw new Error(`B's sendMessage rejected: ${atB.error}`);
    const res = {
      run,
      joinToFirstP2pMessageMs: got.at - atB.t0,
      joinRoomResolvedMs: /** @type {number} */ (atB.joined) - atB.t0,
      pathP2pMs: /** @type {number} */ (atB.p2p) - atB.t0,
      sendToArrivalMs: got.at - /** @type {number} */ (atB.sent),
      firstVideoFrameMs: atB.frame === undefined ? null : atB.frame - atB.t0,
      trigger: atB.trigger,
    };
    return res;
  } catch (err) {
    return { run, error: err instanceof Error ? err.message : String(err) };
  } finally {
    await Promise.all([a.close(), b?.close()]);
  }
}

/**
 * Scenario 2 over one path.
 * @param {TestServer} server the app backend's way to the server (rooms, tokens)
 * @param {TestServer} via where the pages load from and connect to (the server, or the proxy)
 * @param {"p2p" | "relay" | "http"} path
 */
async function latencyRun(server, via, path) {
  const room = await server.room();
  // "relay": through the server over WebSockets; "http": through the server over the HTTP
  // transport (browsers without WebSocket).
  const noWebrtc = path !== "p2p";
  const noWebSocket = path === "http";
  const a = await launchPeer(via, { noWebrtc, noWebSocket });
  const b = await launchPeer(via, { noWebrtc, noWebSocket });
  try {
    const media = { video: false, audio: false };
    await joinRecording(a.page, await server.token(room, "alice"), media);
    const bId = await joinRecording(b.page, await server.token(room, "bob"), media);
    await waitFor(async () => a.page.evaluate((id) => /** @type {any} */ (window).room.remotes.has(id), bId), "A to see B");
    if (path === "p2p") {
      await waitFor(async () => (await pathTo(a.page, bId)) === "p2p", "the data channel A→B");
    }
    const pathAtStart = await pathTo(a.page, bId);
    const sender = await a.page.evaluate(async ({ n, interval, to }) => {
      const room = /** @type {any} */ (window).room;
      /** @type {Promise<unknown>[]} */
      const all = [];
      const start = performance.now();
      let i = 0;
      let wakeups = 0;
      let maxPerWakeup = 0;
      while (i < n) {
        wakeups++;
        const now = performance.now();
        let k = 0;
        while (i < n && start + i * interval <= now) {
          all.push(room.sendMessage("lat", { i, t: performance.timeOrigin + performance.now() }, { to }));
          i++;
          k++;
        }
        maxPerWakeup = Math.max(maxPerWakeup, k);
        if (i < n) await new Promise((r) => setTimeout(r, Math.max(0, start + i * interval - performance.now())));
      }
      const sendSpanMs = performance.now() - start;
      const settled = await Promise.allSettled(all);
      const acked = performance.now() - start;
      return {
        sendSpanMs,
        wakeups,
        maxPerWakeup,
        resolved: settled.filter((s) => s.status === "fulfilled").length,
        rejected: settled.filter((s) => s.status === "rejected").map((s) => String(/** @type {PromiseRejectedResult} */ (s).reason)).slice(0, 5),
        allAckedMs: acked,
      };
    }, { n: MESSAGES, interval: INTERVAL_MS, to: bId });
    // Everything should be there now (every promise resolves on the receiver's ack); wait for
    // stragglers anyway, then a little longer so that a duplicate would show.
    const countAt = () => b.page.evaluate(() => /** @type {any} */ (window).t.received.filter((/** @type {any} */ m) => m.type === "lat").length);
    try {
      await waitFor(async () => (await countAt()) >= MESSAGES, `${MESSAGES} messages at B`, 30000);
    } catch {
      /* reported below as missing messages */
    }
    await new Promise((r) => setTimeout(r, 500));
    /** @type {{data: {i: number, t: number}, path: string, at: number}[]} */
    const got = await b.page.evaluate(() => /** @type {any} */ (window).t.received.filter((/** @type {any} */ m) => m.type === "lat"));
    const rateLimited = {
      a: await a.page.evaluate(() => /** @type {any} */ (window).t.rateLimited),
      b: await b.page.evaluate(() => /** @type {any} */ (window).t.rateLimited),
    };
    const indices = got.map((m) => m.data.i);
    const seen = new Set(indices);
    const missing = [...Array(MESSAGES).keys()].filter((i) => !seen.has(i));
    const duplicates = indices.length - seen.size;
    let outOfOrder = 0;
    for (let k = 1; k < indices.length; k++) if (indices[k] <= indices[k - 1]) outOfOrder++;
    const exactlyOnceInOrder = indices.length === MESSAGES && indices.every((v, k) => v === k);
    /** @type {Record<string, number>} */
    const byPath = {};
    for (const m of got) byPath[m.path] = (byPath[m.path] ?? 0) + 1;
    const lat = got.map((m) => m.at - m.data.t);
    return {
      path,
      pathAtStart,
      sent: MESSAGES,
      arrived: got.length,
      exactlyOnceInOrder,
      missing: missing.length,
      missingFirst: missing.slice(0, 10),
      duplicates,
      outOfOrder,
      arrivedByPath: byPath,
      latencyMs: summarize(lat),
      sender: {
        ...sender,
        sendSpanMs: Math.round(sender.sendSpanMs),
        allAckedMs: Math.round(sender.allAckedMs),
        achievedIntervalMs: Math.round((sender.sendSpanMs / Math.max(1, MESSAGES - 1)) * 1000) / 1000,
      },
      rateLimitedErrors: rateLimited,
    };
  } finally {
    await Promise.all([a.close(), b.close()]);
  }
}

/**
 * Both scenarios in one mode.
 * @param {TestServer} server
 * @param {TestServer} via
 * @param {string} mode
 */
async function measure(server, via, mode) {
  console.error(`[${mode}] join → first P2P message: ${RUNS} runs`);
  /** @type {any[]} */
  const runs = [];
  for (let i = 1; i <= RUNS; i++) {
    const r = await joinRun(server, via, i);
    runs.push(r);
    console.error(
      "error" in r
        ? `  run ${i}: FAILED: ${r.error}`
        : `  run ${i}: ${r.joinToFirstP2pMessageMs.toFixed(1)} ms (joinRoom resolved ${r.joinRoomResolvedMs.toFixed(1)}, p2p ${r.pathP2pMs.toFixed(1)}, send→arrival ${r.sendToArrivalMs.toFixed(2)}, A's first video frame ${r.firstVideoFrameMs === null ? "none" : r.firstVideoFrameMs.toFixed(1)}; via ${r.trigger})`,
    );
  }
  const ok = runs.filter((r) => !("error" in r));
  const join = {
    runs: RUNS,
    succeeded: ok.length,
    failures: runs.filter((r) => "error" in r).map((r) => ({ run: r.run, error: r.error })),
    joinToFirstP2pMessageMs: summarize(ok.map((r) => r.joinToFirstP2pMessageMs)),
    joinRoomResolvedMs: summarize(ok.map((r) => r.joinRoomResolvedMs)),
    pathP2pMs: summarize(ok.map((r) => r.pathP2pMs)),
    sendToArrivalMs: summarize(ok.map((r) => r.sendToArrivalMs)),
    firstVideoFrameMs: summarize(ok.flatMap((r) => (r.firstVideoFrameMs === null ? [] : [r.firstVideoFrameMs]))),
    withoutVideoFrame: ok.filter((r) => r.firstVideoFrameMs === null).length,
    perRunMs: ok.map((r) => Math.round(r.joinToFirstP2pMessageMs * 10) / 10),
  };

  console.error(`[${mode}] message latency: ${MESSAGES} messages, one every ${INTERVAL_MS} ms, over p2p, the relay, the relay over HTTP`);
  /** @type {Record<string, any>} */
  const latency = {};
  for (const path of /** @type {const} */ (["p2p", "relay", "http"])) {
    try {
      console.error(`  ${path}`);
      latency[path] = await latencyRun(server, via, path);
    } catch (err) {
      latency[path] = { path, error: err instanceof Error ? err.message : String(err) };
    }
  }
  return { join, latency };
}

async function main() {
  const server = await TestServer.start();
  let chromium = "";
  try {
    {
      const p = await launchPeer(server);
      chromium = p.context.browser()?.version() ?? "";
      await p.close();
    }
    const e2eeCost = E2EE_KEY ? await recordCost(server) : null;
    /** @type {Record<string, {proxy: string | null, join: any, latency: Record<string, any>}>} */
    const modes = {};
    for (const mode of MODES) {
      const proxy = mode === "far" ? await startDelayProxy({ port: Number(new URL(server.url).port) }, DELAY_MS) : null;
      const via = proxy ? /** @type {TestServer} */ (/** @type {unknown} */ ({ url: proxy.url })) : server;
      try {
        modes[mode] = { proxy: proxy ? `${DELAY_MS} ms each way` : null, ...(await measure(server, via, mode)) };
      } finally {
        await proxy?.close();
      }
    }

    const result = {
      bench: "browser",
      date: new Date().toISOString(),
      machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, node: process.version, chromium },
      clock: "performance.timeOrigin + performance.now() in each page; both Chromium processes run on this machine, so these are the same wall clock and differences across the two processes are meaningful",
      settings: { runs: RUNS, messages: MESSAGES, intervalMs: INTERVAL_MS, delayMsEachWay: DELAY_MS, serverLimits: "defaults", e2ee: E2EE_KEY !== null },
      e2eeCost,
      modes,
    };

    const f = (/** @type {Summary | null} */ s, /** @type {("p50"|"p95"|"p99"|"max")[]} */ keys) =>
      s ? keys.map((k) => `${k} ${s[k].toFixed(2)}`).join(" / ") + " ms" : "n/a";
    console.log("");
    console.log(`BlueCam browser bench — ${cpus().length} cores, Chromium ${chromium}, node ${process.version}`);
    console.log("(times are performance.timeOrigin + now() in two Chromium processes on one machine: same wall clock)");
    if (e2eeCost) {
      console.log("end-to-end encrypted (--e2ee); one record in this Chromium, sealed then opened one after the other:");
      for (const c of e2eeCost) {
        console.log(`   ${c.textBytes} bytes of text: seal ${c.sealUs} µs, open ${c.openUs} µs; sealed ${c.sealedBytes} bytes (× ${c.growth})`);
      }
    }
    let failed = false;
    for (const [mode, { join, latency }] of Object.entries(modes)) {
      console.log("");
      console.log(mode === "far" ? `== far: the server behind a proxy adding ${DELAY_MS} ms each way` : "== near: the server on this machine");
      console.log(`1. joinRoom call → first message delivered over the data channel (${join.succeeded}/${RUNS} runs ok)`);
      console.log(`   join → first p2p message: ${f(join.joinToFirstP2pMessageMs, ["p50", "p95", "max"])}`);
      console.log(`     joinRoom resolved:      ${f(join.joinRoomResolvedMs, ["p50", "p95", "max"])}`);
      console.log(`     path p2p at B:          ${f(join.pathP2pMs, ["p50", "p95", "max"])}`);
      console.log(`     send → arrival at A:    ${f(join.sendToArrivalMs, ["p50", "p95", "max"])}`);
      console.log(`   join → A's first video frame shown at B: ${f(join.firstVideoFrameMs, ["p50", "p95", "max"])}${join.withoutVideoFrame ? ` (${join.withoutVideoFrame} runs without one in 20 s)` : ""}`);
      for (const e of join.failures) console.log(`   run ${e.run} FAILED: ${e.error}`);
      console.log(`2. message latency A → B, ${MESSAGES} messages paced at one every ${INTERVAL_MS} ms, data-only peers`);
      for (const path of ["p2p", "relay", "http"]) {
        const l = latency[path];
        if (l.error) {
          console.log(`   ${path.padEnd(5)}: FAILED: ${l.error}`);
          continue;
        }
        console.log(
          `   ${path.padEnd(5)}: ${f(l.latencyMs, ["p50", "p99", "max"])}; arrived ${l.arrived}/${l.sent} ` +
            `(by path ${JSON.stringify(l.arrivedByPath)}), exactly once in order: ${l.exactlyOnceInOrder ? "yes" : "NO"}` +
            (l.exactlyOnceInOrder ? "" : ` (missing ${l.missing}, first ${JSON.stringify(l.missingFirst)}; duplicates ${l.duplicates}; out of order ${l.outOfOrder})`),
        );
        console.log(
          `          sent over ${l.sender.sendSpanMs} ms (mean interval ${l.sender.achievedIntervalMs} ms, ${l.sender.wakeups} timer wake-ups, up to ${l.sender.maxPerWakeup} per wake-up), ` +
            `${l.sender.resolved} promises resolved, all acked after ${l.sender.allAckedMs} ms; rate_limited errors A ${l.rateLimitedErrors.a}, B ${l.rateLimitedErrors.b}`,
        );
      }
      failed ||= join.failures.length > 0 || ["p2p", "relay", "http"].some((p) => latency[p].error || !latency[p].exactlyOnceInOrder);
    }
    console.log("");
    console.log(JSON.stringify(result, null, 2));
    if (args.json) writeFileSync(args.json, JSON.stringify(result, null, 2) + "\n");
    if (failed) {
      console.error("FAILED: see above");
      process.exitCode = 1;
    }
  } finally {
    await server.stop();
    // The browser too: it would keep node running.
    await stopAll();
  }
}

await main();
