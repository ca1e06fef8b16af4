//! `bluecam-bench` end to end: a smoke run of every scenario at tiny size, so they cannot rot.
//! Each starts real `bluecam serve` processes (and `redis-server`, PostgreSQL where the
//! scenario needs them) and checks the figures it reports.
//!
//! The servers come from the `bluecam` binary beside the bench's (its default): another
//! package's binary, so Cargo gives no `CARGO_BIN_EXE_bluecam` here. `cargo nextest run
//! --workspace` (`./scripts/test`) and `cargo nextest run -p bluecam -p bluecam-bench` build it
//! into the same directory; with `-p bluecam-bench` alone, build it first (`cargo build -p
//! bluecam`), or these tests run an old one or none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

const BENCH: &str = env!("CARGO_BIN_EXE_bluecam-bench");

/// The bench starts its servers from the `bluecam` beside it (its default): there must be one.
fn require_server_bin() {
    let bin = Path::new(BENCH).with_file_name("bluecam");
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build -p bluecam` (`cargo nextest run --workspace` \
         does)",
        bin.display()
    );
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bluecam-bench-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How long one bench run may take (below the test runner's bound of 300 s per test).
const RUN_BOUND: std::time::Duration = std::time::Duration::from_secs(240);

fn bench(args: &[&str]) -> Value {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = temp_dir(&format!("bench-{}-{run}", args[0]));
    let json = dir.join("result.json");
    require_server_bin();
    // The bench's progress goes to a file, so that a run that does not end is stopped here,
    // before the test runner's bound, and fails with what it had done (a run killed by the
    // runner shows nothing).
    let log = dir.join("stderr.log");
    let mut child = Command::new(BENCH)
        .args(args)
        .arg("--json")
        .arg(&json)
        .env_remove("BLUECAM_API_SECRET")
        .env_remove("BLUECAM_BIN")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        // (Its own process group: one that does not end is killed with what it started.)
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + RUN_BOUND;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    match status {
        None => {
            panic!("`bluecam-bench {args:?}` did not end in {RUN_BOUND:?}; it wrote:\n{stderr}")
        }
        Some(status) => assert!(status.success(), "{stderr}"),
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(dir).unwrap();
    v
}

#[test]
fn bench_idle_smoke() {
    let v = bench(&[
        "idle",
        "--connections",
        "40",
        "--room-size",
        "4",
        "--procs",
        "2",
        "--hold-secs",
        "1",
        "--pings",
        "5",
        "--heartbeat-secs",
        "1",
    ]);
    assert_eq!(v["connections_held"], 40, "{v}");
    assert_eq!(v["heartbeat_secs"], 1, "{v}");
    assert_eq!(v["connections_failed"], 0, "{v}");
    assert!(v["server_rss_per_connection_bytes"].is_number(), "{v}");
    assert!(v["server_rss_per_used_connection_bytes"].is_number(), "{v}");
    assert_eq!(v["ping_connections_lost"], 0, "{v}");
}

#[test]
fn bench_join_storm_smoke() {
    let v = bench(&[
        "join-storm",
        "--joins",
        "50",
        "--concurrency",
        "10",
        "--room-size",
        "5",
    ]);
    assert_eq!(v["joins"], 50, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert!(v["connect_and_join"]["p99_ms"].as_f64().unwrap() > 0.0);
    // The same storm against the baseline relay, and the ratio.
    assert_eq!(v["baseline"]["joins"], 50, "{v}");
    assert!(
        v["vs_baseline"]["joins_per_sec"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}

#[test]
fn bench_relay_smoke() {
    for size in ["2", "4"] {
        let v = bench(&[
            "relay",
            "--rooms",
            "3",
            "--room-size",
            size,
            "--duration-secs",
            "1",
        ]);
        assert!(v["deliveries"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(v["failed_peers"], 0, "{v}");
        assert_eq!(v["baseline"]["failed_peers"], 0, "{v}");
        assert!(v["baseline"]["deliveries"].as_u64().unwrap() > 0, "{v}");
        assert!(
            v["vs_baseline"]["deliveries_per_sec"].as_f64().unwrap() > 0.0,
            "{v}"
        );
        assert!(v["server_cpu_secs"].is_number(), "{v}");
        assert!(v["baseline"]["server_cpu_secs"].is_number(), "{v}");
        assert_eq!(v["machine"]["pinned"], false, "{v}");
    }
}

#[test]
fn bench_relay_fixed_rate_smoke() {
    // 3 rooms of 3 at 300 messages/s: 600 deliveries/s offered, open loop.
    let v = bench(&[
        "relay",
        "--rooms",
        "3",
        "--room-size",
        "3",
        "--duration-secs",
        "1",
        "--rate",
        "300",
        "--no-baseline",
    ]);
    assert_eq!(v["mode"], "rate", "{v}");
    assert_eq!(v["offered_deliveries_per_sec"], 600.0, "{v}");
    // Every offered message was delivered once the load drained (how fast: BENCHMARKS.md).
    assert!(v["deliveries"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["undelivered_after_drain"], 0, "{v}");
    assert!(v["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v.get("baseline").is_none(), "{v}");
}

#[test]
fn bench_relay_sweep_plot_smoke() {
    let dir = temp_dir("sweep-plot");
    let plot = dir.join("plot.svg");
    let v = bench(&[
        "relay",
        "--rooms",
        "2",
        "--room-size",
        "2",
        "--duration-secs",
        "1",
        "--sweep",
        "50,200",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    for side in [&v, &v["baseline"]] {
        let points = side["points"].as_array().unwrap();
        assert_eq!(points.len(), 2, "{v}");
        assert_eq!(points[1]["offered_messages_per_sec"], 200.0, "{v}");
        assert!(points[1]["deliveries"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(v["vs_baseline"].as_array().unwrap().len(), 2, "{v}");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.contains("bluecam p99") && svg.contains("baseline p50"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bench_pinned_smoke() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let taskset = Command::new("taskset").arg("--version").output();
    if cpus < 2 || !taskset.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: --pin needs taskset and 2 cores");
        return;
    }
    let v = bench(&[
        "relay",
        "--rooms",
        "2",
        "--room-size",
        "2",
        "--duration-secs",
        "1",
        "--no-baseline",
        "--pin",
    ]);
    assert_eq!(v["machine"]["pinned"], true, "{v}");
    assert_eq!(v["machine"]["server_cpus"], "0", "{v}");
    assert!(v["deliveries"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn bench_baseline_target_idle_smoke() {
    let v = bench(&[
        "idle",
        "--connections",
        "20",
        "--room-size",
        "4",
        "--procs",
        "2",
        "--hold-secs",
        "1",
        "--target",
        "baseline",
    ]);
    assert_eq!(v["target"], "baseline", "{v}");
    assert_eq!(v["connections_held"], 20, "{v}");
}

#[test]
fn bench_signal_smoke() {
    let v = bench(&[
        "signal",
        "--pairs",
        "3",
        "--exchanges",
        "2",
        "--candidates",
        "5",
    ]);
    assert_eq!(v["failed_pairs"], 0, "{v}");
    // Per exchange: offer + answer + 5 candidates each way.
    assert_eq!(v["hop"]["count"], 3 * 2 * 12, "{v}");
    assert_eq!(v["exchange"]["count"], 3 * 2, "{v}");
    assert_eq!(v["baseline"]["hop"]["count"], 3 * 2 * 12, "{v}");
    assert!(v["vs_baseline"]["hop_p99"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn bench_slow_reader_smoke() {
    let v = bench(&[
        "slow-reader",
        "--rooms",
        "2",
        "--room-size",
        "2",
        "--rate",
        "50",
        "--payload-bytes",
        "64",
        "--phase-secs",
        "1",
    ]);
    assert_eq!(v["failed_peers"], 0, "{v}");
    assert!(v["others_before"]["count"].as_u64().unwrap() > 0, "{v}");
    assert!(v["others_after"]["count"].as_u64().unwrap() > 0, "{v}");
}

/// What a run of native peers (`--native`, `--native-pairs`) must count, in `r` (a part of
/// the result `v`): no room ended, every send delivered and received once and in order,
/// nothing lost, skipped or doubled.
fn assert_native_counted(r: &serde_json::Value, v: &serde_json::Value) {
    assert_eq!(r["rooms_ended"], 0, "{v}");
    let m = &r["messages"];
    assert!(m["sent"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(m["lost_silently"], 0, "{v}");
    assert_eq!(m["sent"], m["delivered"], "{v}");
    assert_eq!(m["sent"], m["received_once_in_order"], "{v}");
    assert_eq!(m["received_out_of_order_or_twice"], 0, "{v}");
    assert_eq!(m["skipped_after_undeliverable"], 0, "{v}");
}

#[test]
fn bench_soak_smoke() {
    let v = bench(&[
        "soak",
        "--minutes",
        "0.25",
        "--connections",
        "20",
        "--relay-rooms",
        "2",
        "--rate",
        "20",
        "--sample-secs",
        "2",
        "--native-pairs",
        "2",
    ]);
    let relay = &v["relay"];
    // The native pairs: every send settled delivered, each once and in order at its partner.
    assert_native_counted(&v["native"], &v);
    assert!(relay["delivered"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(relay["out_of_order"], 0, "{v}");
    assert_eq!(relay["dropped_connections"], 0, "{v}");
    let hostile = &v["hostile"];
    assert!(hostile["runs"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(hostile["closed_as_documented"], hostile["runs"], "{v}");
    assert!(hostile["slowloris"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(hostile["slow_readers_cut"], hostile["slow_readers"], "{v}");
    assert!(v["samples"].as_array().unwrap().len() >= 3, "{v}");
}

#[test]
fn bench_churn_smoke() {
    let v = bench(&[
        "churn",
        "--connections",
        "20",
        "--room-size",
        "4",
        "--percent-per-min",
        "600",
        "--duration-secs",
        "2",
        "--sample-secs",
        "1",
    ]);
    assert!(v["replaced"].as_u64().unwrap() >= 1, "{v}");
    // The server's own files plus the 20 connections, once they are up.
    let samples = v["samples"].as_array().unwrap();
    assert!(
        samples
            .iter()
            .any(|s| s["open_files"].as_u64().unwrap() > 25),
        "{v}"
    );
}

/// Also checks that every event the joins caused reached the benchmark's webhook receiver.
#[test]
fn bench_history_smoke() {
    let v = bench(&["history", "--joins", "40", "--concurrency", "8"]);
    for run in [
        "sqlite_webhooks_off",
        "sqlite_webhooks_on",
        "cluster_postgres",
        "cluster_redis_only",
    ] {
        let r = &v["join_storm"][run];
        assert_eq!(r["failed"], 0, "{run}: {v}");
        assert_eq!(r["join_frame_to_joined"]["count"], 40, "{run}: {v}");
    }
    let d = &v["webhook_delivery"];
    assert_eq!(d["events_delivered"], d["events_caused_by_joins"], "{v}");
}

/// `cluster` at tiny size on the Redis it starts (`flags`): every measurement delivers, and
/// reports the load of each of its `redis` Redis processes.
fn cluster_smoke(flags: &[&str], redis: usize) {
    let mut args = vec!["cluster"];
    args.extend_from_slice(flags);
    args.extend([
        "--nodes",
        "2",
        "--rooms",
        "2",
        "--duration-secs",
        "1",
        "--joins",
        "20",
    ]);
    let v = bench(&args);
    for placement in ["same_node", "cross_node"] {
        let p = &v[placement];
        for relay in ["latency_10_rooms", "relay_window_1", "relay_flat_out"] {
            assert!(p[relay]["latency"]["count"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(p[relay]["failed_peers"], 0, "{v}");
            assert_eq!(
                p[relay]["redis_load"].as_array().unwrap().len(),
                redis,
                "{v}"
            );
        }
        assert_eq!(p["join"]["failed"], 0, "{v}");
        let commands: f64 = p["join"]["redis_load"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["commands_per_sec"].as_f64().unwrap())
            .sum();
        assert!(commands > 0.0, "{v}");
    }
}

#[test]
fn bench_cluster_smoke() {
    cluster_smoke(&[], 1);
}

/// The same on a Redis Cluster started by the bench: each measurement reports the load of
/// each of its three masters.
#[test]
fn bench_cluster_redis_cluster_smoke() {
    cluster_smoke(&["--redis-cluster"], 3);
}

/// Also the real-process test of durable sessions: a real `bluecam serve` restarted with
/// SIGTERM and killed with SIGKILL, every client resuming its session, nothing lost.
#[test]
fn bench_restart_smoke() {
    let v = bench(&["restart", "--clients", "20", "--settle-secs", "1"]);
    for r in v["restarts"].as_array().unwrap() {
        assert_eq!(r["all_resumed"], true, "{v}");
        assert_eq!(r["resumed"], 20, "{v}");
    }
    assert_eq!(v["restarts"][1]["signal"], "SIGKILL", "{v}");
    assert_eq!(v["sessions_expired"], 0, "{v}");
    let m = &v["messages"];
    assert!(m["sent"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(m["lost"], 0, "{v}");
    assert_eq!(m["unacknowledged_at_end"], 0, "{v}");
    assert_eq!(m["sent"], m["delivered_in_order_once"], "{v}");
}

/// The same with native peers (`bluecam-client`) over the HTTP transport: every send settles
/// delivered, each arrives once and in order, all resume.
#[test]
fn bench_restart_native_smoke() {
    let v = bench(&[
        "restart",
        "--native",
        "--transport",
        "http",
        "--clients",
        "20",
        "--settle-secs",
        "1",
    ]);
    for r in v["restarts"].as_array().unwrap() {
        assert_eq!(r["all_resumed"], true, "{v}");
    }
    assert_native_counted(&v, &v);
}

#[test]
fn bench_stun_smoke() {
    let v = bench(&["stun", "--senders", "2", "--duration-secs", "1"]);
    let (sent, answered) = (v["sent"].as_u64().unwrap(), v["answered"].as_u64().unwrap());
    // UDP: a loaded machine may drop a few; nearly all are answered.
    assert!(answered > 0 && answered * 10 >= sent * 9, "{v}");
}

#[test]
fn bench_transport_smoke() {
    let v = bench(&[
        "transport",
        "--pairs",
        "3",
        "--rate",
        "20",
        "--duration-secs",
        "1",
    ]);
    for t in ["ws", "http"] {
        let r = &v[t];
        let (sent, delivered) = (
            r["sent"].as_u64().unwrap(),
            r["delivered"].as_u64().unwrap(),
        );
        assert!(sent > 0 && delivered == sent, "{t}: {r}");
        assert!(r["latency"]["p50_ms"].as_f64().unwrap() > 0.0, "{t}: {r}");
        assert_eq!(r["duplicated_or_out_of_order"], 0, "{t}: {r}");
    }
    assert!(v["http"]["http_requests"].as_u64().unwrap() > 0, "{v}");
}

/// Also a real-process chaos test of the cluster: three nodes and a real `redis-server` with
/// its append-only file, a node killed, a node frozen past its expiry, Redis killed and
/// restarted from its file, then restarted empty; every message delivered once and in order.
#[test]
fn bench_chaos_smoke() {
    let v = bench(&["chaos", "--clients", "6", "--settle-secs", "1"]);
    let faults = v["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4, "{v}");
    for f in faults {
        assert_eq!(f["every_client_delivering"], true, "{v}");
    }
    assert_eq!(v["sessions_expired"], 0, "{v}");
    let m = &v["messages"];
    assert!(m["sent"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(m["lost_silently"], 0, "{v}");
    assert_eq!(m["reported_lost"], 0, "{v}");
    assert_eq!(m["sent"], m["delivered_in_order_once"], "{v}");
}

/// The same with native peers (`bluecam-client`), each with the three nodes as its list:
/// every send settles delivered, each arrives once and in order, no room ends.
#[test]
fn bench_chaos_native_smoke() {
    let v = bench(&["chaos", "--native", "--clients", "6", "--settle-secs", "1"]);
    let faults = v["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4, "{v}");
    for f in faults {
        assert_eq!(f["every_client_delivering"], true, "{v}");
    }
    assert_native_counted(&v, &v);
}

/// The same on a Redis Cluster of three masters and three replicas started by the bench: a
/// node killed, a node frozen, a master SIGKILLed (its replica takes over), a shard emptied.
#[test]
fn bench_chaos_redis_cluster_smoke() {
    let v = bench(&[
        "chaos",
        "--redis-cluster",
        "--clients",
        "6",
        "--settle-secs",
        "1",
    ]);
    let faults = v["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 4, "{v}");
    assert_eq!(faults[2]["fault"], "Redis Cluster master SIGKILL, failover");
    for f in faults {
        assert_eq!(f["every_client_delivering"], true, "{v}");
    }
    assert_eq!(v["sessions_expired"], 0, "{v}");
    let m = &v["messages"];
    assert!(m["sent"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(m["lost_silently"], 0, "{v}");
    assert_eq!(m["reported_lost"], 0, "{v}");
    assert_eq!(m["sent"], m["delivered_in_order_once"], "{v}");
}

/// A server binary that is not there is named, before anything is started.
#[test]
fn missing_server_binary_is_named() {
    let missing = temp_dir("missing-bin").join("bluecam");
    for how in ["flag", "env"] {
        let mut cmd = Command::new(BENCH);
        cmd.args(["join-storm", "--joins", "1", "--no-baseline"]);
        match how {
            "flag" => cmd.arg("--bluecam").arg(&missing),
            _ => cmd.env("BLUECAM_BIN", &missing),
        };
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{how}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&missing.display().to_string()) && err.contains("does not exist"),
            "{how}: {err}"
        );
    }
    std::fs::remove_dir_all(missing.parent().unwrap()).unwrap();
}
