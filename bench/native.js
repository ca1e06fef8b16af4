// @ts-check
/**
 * What a native peer costs: two `bluecam join` processes in one room of a `bluecam serve` started
 * here; A sends N messages to B through the relay (stdin lines as fast as A takes them), or
 * with --webrtc over their data channel once it is open, and each process's CPU time (user +
 * system, from /proc; the server's too) and peak RSS (VmHWM) are read once every message is
 * delivered and acknowledged.
 *
 *   node bench/native.js [--messages 20000] [--bytes 100] [--transport auto|websocket|http] [--webrtc]
 *
 * The binary is $BLUECAM_BIN (default $CARGO_TARGET_DIR/release/bluecam, then
 * target/release/bluecam): build it with `cargo build --release -p bluecam`.
 */
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    messages: { type: "string", default: "20000" },
    bytes: { type: "string", default: "100" },
    // Both peers' transport (`bluecam join --transport`).
    transport: { type: "string", default: "auto" },
    // Over the peers' WebRTC data channel (the relay otherwise: `--no-webrtc`).
    webrtc: { type: "boolean", default: false },
  },
});
const N = Number(args.messages);
const BYTES = Number(args.bytes);
const BIN = process.env.BLUECAM_BIN ?? join(process.env.CARGO_TARGET_DIR ?? "target", "release", "bluecam");
const TICK_MS = 10; // clock ticks of /proc/PID/stat (USER_HZ 100)

/** @param {number} pid */
function usage(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  const cpuMs = (Number(stat[11]) + Number(stat[12])) * TICK_MS;
  const hwm = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return { cpuMs, peakRssKb: hwm ? Number(hwm[1]) : 0 };
}

const dir = mkdtempSync(join(tmpdir(), "bluecam-native-bench-"));
const server = spawn(BIN, ["serve", "--no-stun", "--bind", "127.0.0.1:0", "--data-dir", dir], { stdio: ["ignore", "pipe", "inherit"] });
try {
  const url = await new Promise((resolve, reject) => {
    createInterface({ input: /** @type {import("node:stream").Readable} */ (server.stdout) }).once("line", (line) => {
      const m = /listening on (\S+)/.exec(line);
      m ? resolve(m[1]) : reject(new Error(line));
    });
  });
  const cli = (/** @type {string[]} */ a) => execFileSync(BIN, [...a, "--data-dir", dir], { encoding: "utf8" }).trim();
  const room = JSON.parse(cli(["room", "create", "--server", url])).id;
  const peer = (/** @type {string} */ who) => {
    const child = spawn(BIN, ["join", "--server", url, "--token", cli(["token", "--room", room, "--identity", who, "--ttl", "3600"]), ...(args.webrtc ? [] : ["--no-webrtc"]), "--transport", String(args.transport)], { stdio: ["pipe", "pipe", "inherit"] });
    /** @type {any[]} */
    const events = [];
    /** Events seen, by kind (counted as they come: the checks must not walk every line). */
    /** @type {Record<string, number>} */
    const counts = {};
    /** @type {(() => void)[]} */
    const waiters = [];
    createInterface({ input: /** @type {import("node:stream").Readable} */ (child.stdout) }).on("line", (line) => {
      const e = JSON.parse(line);
      // (Messages are checked as they come, not kept.)
      if (e.event === "message") {
        if (e.data.i !== (counts.message ?? 0)) counts.outOfOrder = (counts.outOfOrder ?? 0) + 1;
        if (e.path === "p2p") counts.p2p = (counts.p2p ?? 0) + 1;
      } else if (e.event !== "delivered") {
        events.push(e);
      }
      counts[e.event] = (counts[e.event] ?? 0) + 1;
      for (const w of waiters.splice(0)) w();
    });
    const until = (/** @type {() => boolean} */ check) => new Promise((resolve) => {
      const test = () => (check() ? resolve(undefined) : waiters.push(test));
      test();
    });
    const count = (/** @type {string} */ kind) => counts[kind] ?? 0;
    return { child, events, until, count };
  };
  const a = peer("a");
  const b = peer("b");
  await a.until(() => a.count("joined") > 0);
  await b.until(() => b.count("joined") > 0);
  await a.until(() => a.count("peer_joined") > 0);
  const bId = b.events.find((e) => e.event === "joined").self.id;
  if (args.webrtc) {
    await a.until(() => a.events.some((e) => e.event === "path" && e.path === "p2p"));
    await b.until(() => b.events.some((e) => e.event === "path" && e.path === "p2p"));
  }
  const before = { a: usage(/** @type {number} */ (a.child.pid)), b: usage(/** @type {number} */ (b.child.pid)), server: usage(/** @type {number} */ (server.pid)) };
  const pad = "x".repeat(Math.max(0, BYTES - 20));
  const started = performance.now();
  const stdin = /** @type {import("node:stream").Writable} */ (a.child.stdin);
  for (let i = 0; i < N; i++) {
    if (!stdin.write(JSON.stringify({ type: "m", data: { i, pad }, to: bId }) + "\n")) await new Promise((r) => stdin.once("drain", r));
  }
  const done = Promise.all([b.until(() => b.count("message") >= N), a.until(() => a.count("delivered") >= N)]);
  const stuck = new Promise((_, reject) => setTimeout(() => reject(new Error(
    `stuck after 120 s: ${b.count("message")} of ${N} received, ${a.count("delivered")} delivered, ` +
    `${a.count("undeliverable")} undeliverable; events: ${JSON.stringify([...a.events, ...b.events].slice(-10))}`,
  )), 120_000).unref());
  await Promise.race([done, stuck]);
  const received = b.count("message");
  const delivered = a.count("delivered");
  const secs = (performance.now() - started) / 1000;
  const after = { a: usage(/** @type {number} */ (a.child.pid)), b: usage(/** @type {number} */ (b.child.pid)), server: usage(/** @type {number} */ (server.pid)) };
  const inOrder = b.count("outOfOrder") === 0;
  const result = {
    bench: "native-peer",
    transport: args.transport,
    webrtc: args.webrtc,
    messages: N,
    bytes: BYTES,
    seconds: Math.round(secs * 100) / 100,
    messagesPerSec: Math.round(N / secs),
    exactlyOnceInOrder: inOrder && received === N,
    delivered,
    overDataChannel: b.count("p2p"),
    server: { cpuUsPerMessage: Math.round(((after.server.cpuMs - before.server.cpuMs) * 1000) / N * 10) / 10 },
    sender: { cpuUsPerMessage: Math.round(((after.a.cpuMs - before.a.cpuMs) * 1000) / N * 10) / 10, peakRssKb: after.a.peakRssKb },
    receiver: { cpuUsPerMessage: Math.round(((after.b.cpuMs - before.b.cpuMs) * 1000) / N * 10) / 10, peakRssKb: after.b.peakRssKb },
    atJoin: before,
  };
  console.log(JSON.stringify(result, null, 2));
  a.child.kill();
  b.child.kill();
} finally {
  server.kill();
  rmSync(dir, { recursive: true, force: true });
}
