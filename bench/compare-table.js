// @ts-check
/**
 * The table of bench/compare.sh: reads the JSON results in DIR (NAME-TARGET.json, written by
 * `bluecam-bench --json`) and prints one Markdown table: each server's figure and BlueCam's
 * advantage over each peer server (× > 1: BlueCam is ahead, whichever way the figure goes).
 * When DIR holds runs (subdirectories run1, run2, …, from `compare.sh --runs N`), each figure
 * is the median of the runs, and each advantage the median of the runs' own advantages (every
 * run measured all servers in one stretch of time), with their range.
 *
 *   node bench/compare-table.js DIR "peerjs-server 1.0.2" "matchbox_server 0.15.0"
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";

const [dir, peerjsName = "peerjs-server", matchboxName = "matchbox_server"] = process.argv.slice(2);
if (!dir) {
  console.error("usage: node bench/compare-table.js DIR [PEERJS_NAME] [MATCHBOX_NAME]");
  process.exit(2);
}

/** The runs' directories: DIR's run1, run2, … in order, or DIR itself. */
const runs = readdirSync(dir, { withFileTypes: true })
  .filter((e) => e.isDirectory() && /^run\d+$/.test(e.name))
  .map((e) => e.name)
  .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)))
  .map((name) => join(dir, name));
if (runs.length === 0) runs.push(dir);

/**
 * @param {string} run
 * @param {string} name
 * @param {string} target
 * @returns {any}
 */
function load(run, name, target) {
  // The baseline's relay, signal and storm figures come inside BlueCam's results.
  if (target === "baseline" && name !== "idle") return load(run, name, "bluecam")?.baseline ?? null;
  const file = join(run, `${name}-${target}.json`);
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
 * @param {string} run
 * @param {Row} row
 * @param {string} target
 */
function value(run, row, target) {
  const r = load(run, row.file, target);
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
 * BlueCam's advantage: > 1 when BlueCam is ahead (Infinity when the other's figure is the
 * worst there is, NaN when both are nothing), or null when a figure is missing.
 * @param {Row} row
 * @param {number | null} ours
 * @param {number | null} theirs
 */
function advantage(row, ours, theirs) {
  if (ours === null || theirs === null) return null;
  if (ours === 0 && theirs === 0) return NaN;
  if (row.higherIsBetter ? theirs === 0 : ours === 0) return Infinity;
  return row.higherIsBetter ? ours / theirs : theirs / ours;
}

/**
 * The median of the numbers among `xs` (null when there is none).
 * @param {(number | null)[]} xs
 */
function median(xs) {
  const v = /** @type {number[]} */ (xs.filter((x) => x !== null)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = Math.floor(v.length / 2);
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** @param {number} x */
const times = (x) => (Number.isNaN(x) ? "=" : x === Infinity ? "∞" : `${x.toFixed(2)}×`);

/**
 * The advantages of the runs: their median, and their range when there are several.
 * @param {(number | null)[]} xs
 */
function fmtAdvantage(xs) {
  const v = /** @type {number[]} */ (xs.filter((x) => x !== null));
  if (v.length === 0) return "–";
  if (v.every((x) => Number.isNaN(x))) return "=";
  const known = v.filter((x) => !Number.isNaN(x));
  const m = median(known);
  if (m === null) return "–";
  if (known.length < 2) return times(m);
  return `${times(m)} (${times(Math.min(...known))}–${times(Math.max(...known))})`;
}

const first = runs[0];
const machine = load(first, "relay", "bluecam")?.machine ?? load(first, "idle", "bluecam")?.machine;
console.log(
  `Machine: ${machine?.cpus ?? "?"} cores, ${machine?.pinned ? "server pinned to core 0, generator to core 1" : "not pinned"}.`,
);
if (runs.length > 1) {
  console.log(`Medians of ${runs.length} runs; each advantage is the median of the runs' own, with their range.`);
}
console.log("BlueCam's advantage: its figure against the other server's, > 1× = BlueCam ahead.");
console.log("");
console.log(`| scenario | unit | BlueCam | baseline relay | ${peerjsName} | ${matchboxName} | BlueCam vs peerjs | BlueCam vs matchbox |`);
console.log("|---|---|---|---|---|---|---|---|");
for (const row of rows) {
  const per = runs.map((run) => ["bluecam", "baseline", "peerjs", "matchbox"].map((t) => value(run, row, t)));
  const [b, base, p, m] = [0, 1, 2, 3].map((i) => median(per.map((r) => r[i])));
  const vsPeerjs = fmtAdvantage(per.map((r) => advantage(row, r[0], r[2])));
  const vsMatchbox = fmtAdvantage(per.map((r) => advantage(row, r[0], r[3])));
  console.log(
    `| ${row.label} | ${row.unit} | ${fmt(b, row.digits)} | ${fmt(base, row.digits)} | ${fmt(p, row.digits)} | ${fmt(m, row.digits)} | ${vsPeerjs} | ${vsMatchbox} |`,
  );
}
