// @ts-check
/**
 * The table of bench/compare.sh: reads the JSON results in DIR (NAME-TARGET.json, written by
 * `bluecam-bench --json`) and prints one Markdown table: each server's figure and BlueCam's
 * advantage over each peer server (× > 1: BlueCam is ahead, whichever way the figure goes).
 *
 *   node bench/compare-table.js DIR "peerjs-server 1.0.2" "matchbox_server 0.15.0"
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [dir, peerjsName = "peerjs-server", matchboxName = "matchbox_server"] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node bench/compare-table.js DIR [PEERJS_NAME] [MATCHBOX_NAME]");
  process.exit(2);
}

/**
 * @param {string} name
 * @param {string} target
 * @returns {any}
 */
function load(name, target) {
  // The baseline's relay, signal and storm figures come inside BlueCam's results.
  if (target === "baseline" && name !== "idle") return load(name, "bluecam")?.baseline ?? null;
  const file = join(dir, `${name}-${target}.json`);
  return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")) : null;
}

/**
 * @typedef {{label: string, file: string, get: (r: any) => number | null | undefined, unit: string, higherIsBetter: boolean, digits: number}} Row
 * @type {Row[]}
 */
const rows = [
  { label: "idle: server RSS per connection", file: "idle", get: (r) => r.server_rss_per_connection_bytes / 1000, unit: "KB", higherIsBetter: false, digits: 2 },
  { label: "idle: server CPU", file: "idle", get: (r) => r.server_idle_cpu_percent, unit: "% of a core", higherIsBetter: false, digits: 2 },
  { label: "signal, 1 pair: hop p50", file: "signal1", get: (r) => r.hop.p50_ms, unit: "ms", higherIsBetter: false, digits: 3 },
  { label: "signal, 1 pair: hop p99", file: "signal1", get: (r) => r.hop.p99_ms, unit: "ms", higherIsBetter: false, digits: 3 },
  { label: "signal, 1 pair: exchange p99", file: "signal1", get: (r) => r.exchange.p99_ms, unit: "ms", higherIsBetter: false, digits: 2 },
  { label: "signal, 100 pairs: throughput", file: "signal100", get: (r) => r.signals_per_sec, unit: "signals/s", higherIsBetter: true, digits: 0 },
  { label: "signal, 100 pairs: hop p99", file: "signal100", get: (r) => r.hop.p99_ms, unit: "ms", higherIsBetter: false, digits: 2 },
  { label: "relay 1,000 × 2, flat out: forwarded", file: "relay", get: (r) => r.deliveries_per_sec, unit: "msg/s", higherIsBetter: true, digits: 0 },
  { label: "relay 1,000 × 2, flat out: p99", file: "relay", get: (r) => r.latency.p99_ms, unit: "ms", higherIsBetter: false, digits: 1 },
  { label: "relay 1,000 × 2: server CPU per million", file: "relay", get: (r) => r.server_cpu_secs_per_million_deliveries, unit: "s", higherIsBetter: false, digits: 2 },
  { label: "join storm: joins/s", file: "storm", get: (r) => r.joins_per_sec, unit: "joins/s", higherIsBetter: true, digits: 0 },
  { label: "join storm: connect + join p99", file: "storm", get: (r) => r.connect_and_join.p99_ms, unit: "ms", higherIsBetter: false, digits: 1 },
];

/**
 * @param {Row} row
 * @param {string} target
 */
function value(row, target) {
  const r = load(row.file, target);
  if (!r) return null;
  try {
    const v = row.get(r);
    return typeof v === "number" && Number.isFinite(v) ? v : null;
  } catch {
    return null;
  }
}

/** @param {number | null} v @param {number} digits */
const fmt = (v, digits) => (v === null ? "–" : v.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits }));

/**
 * BlueCam's advantage: > 1 when BlueCam is ahead.
 * @param {Row} row
 * @param {number | null} ours
 * @param {number | null} theirs
 */
function advantage(row, ours, theirs) {
  if (ours === null || theirs === null) return "–";
  if (ours === 0 && theirs === 0) return "=";
  if (row.higherIsBetter ? theirs === 0 : ours === 0) return "∞";
  const x = row.higherIsBetter ? ours / theirs : theirs / ours;
  return `${x.toFixed(2)}×`;
}

const machine = load("relay", "bluecam")?.machine ?? load("idle", "bluecam")?.machine;
console.log(
  `Machine: ${machine?.cpus ?? "?"} cores, ${machine?.pinned ? "server pinned to core 0, generator to core 1" : "not pinned"}.`,
);
console.log("BlueCam's advantage: its figure against the other server's, > 1× = BlueCam ahead.");
console.log("");
console.log(`| scenario | unit | BlueCam | baseline relay | ${peerjsName} | ${matchboxName} | BlueCam vs peerjs | BlueCam vs matchbox |`);
console.log("|---|---|---|---|---|---|---|---|");
for (const row of rows) {
  const [b, base, p, m] = ["bluecam", "baseline", "peerjs", "matchbox"].map((t) => value(row, t));
  console.log(
    `| ${row.label} | ${row.unit} | ${fmt(b, row.digits)} | ${fmt(base, row.digits)} | ${fmt(p, row.digits)} | ${fmt(m, row.digits)} | ${advantage(row, b, p)} | ${advantage(row, b, m)} |`,
  );
}
