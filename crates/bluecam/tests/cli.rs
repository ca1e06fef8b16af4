//! The `bluecam` binary end to end: `serve` (first start, secret file, SIGTERM), `room`,
//! `token`, and a smoke run of every `bench` scenario at tiny size so they cannot rot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;
use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_bluecam");

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bluecam-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Served {
    child: Child,
    url: String,
    lines: Vec<String>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `bluecam serve` on a port of its choosing (port 0: no port picked here and handed
/// over, which another process could take first) and reads what it prints until the secret
/// line; the address comes from the first line.
fn serve(dir: &Path) -> Served {
    serve_with(dir, &[])
}

/// [`serve`] with these environment variables.
fn serve_with(dir: &Path, vars: &[(&str, &str)]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .envs(vars.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        lines.push(line.trim_end().to_owned());
        if line.contains("BLUECAM_API_SECRET=") || line.starts_with("API secret:") {
            break;
        }
        line.clear();
    }
    let url = lines
        .first()
        .and_then(|l| l.strip_prefix("BlueCam is listening on "))
        .unwrap_or_else(|| panic!("no address in {lines:?}"))
        .to_owned();
    Served { child, url, lines }
}

fn bluecam(args: &[&str], dir: &Path, url: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .args(["--server", url, "--data-dir"])
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_room_token_and_graceful_shutdown() {
    let dir = temp_dir("serve");
    let served = serve(&dir);
    assert!(served.lines[0].contains(&served.url), "{:?}", served.lines);
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.starts_with("Generated an API secret"))
    );
    let secret_file = dir.join("api-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&secret_file)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let secret = std::fs::read_to_string(&secret_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        served.lines.iter().any(|l| l.contains(&secret)),
        "the new secret is printed once"
    );

    let url = served.url.clone();
    let room = json_of(&bluecam(
        &[
            "room", "create", "--name", "Demo", "--member", "bob", "--owner", "alice",
        ],
        &dir,
        &url,
    ));
    let id = room["id"].as_str().unwrap().to_owned();
    assert_eq!(room["name"], "Demo");
    let list = json_of(&bluecam(&["room", "list", "--member", "bob"], &dir, &url));
    assert_eq!(list["rooms"][0]["id"], id.as_str());
    let owned = json_of(&bluecam(&["room", "list", "--owner", "alice"], &dir, &url));
    assert_eq!(owned["rooms"][0]["id"], id.as_str());
    let none = json_of(&bluecam(&["room", "list", "--owner", "bob"], &dir, &url));
    assert_eq!(none["rooms"], serde_json::json!([]));
    let got = json_of(&bluecam(&["room", "get", &id], &dir, &url));
    assert_eq!(got["id"], id.as_str());
    // Call history and usage (the calls themselves are tested in bluecam-server's tests).
    let calls = json_of(&bluecam(&["calls", &id], &dir, &url));
    assert_eq!(calls, serde_json::json!({"calls": []}));
    let usage = json_of(&bluecam(
        &["usage", "--from", "0", "--owner", "alice"],
        &dir,
        &url,
    ));
    assert_eq!(
        (usage["calls"].as_u64(), usage["from"].as_u64()),
        (Some(0), Some(0)),
        "{usage}"
    );
    assert!(
        usage["to"].as_u64().unwrap() > 1_700_000_000,
        "--to defaults to now: {usage}"
    );
    let missing = Command::new(BIN)
        .args(["calls", "no-such-room", "--server", &url, "--data-dir"])
        .arg(&dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("room_not_found"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let token = Command::new(BIN)
        .args([
            "token",
            "--room",
            &id,
            "--identity",
            "bob",
            "--ttl",
            "60",
            "--data-dir",
        ])
        .arg(&dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    assert_eq!(token.trim().split('.').count(), 3, "a JWT alone on stdout");
    join_with(&served.url, token.trim());

    let deleted = bluecam(&["room", "delete", &id], &dir, &url);
    assert!(deleted.status.success());
    let missing = bluecam(&["room", "get", &id], &dir, &url);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("room_not_found"));

    let wrong = Command::new(BIN)
        .args(["room", "list", "--server", &url, "--secret", "wrong"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("unauthorized"));

    // SIGTERM: the server exits cleanly and quickly.
    let mut served = served;
    let pid = served.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let t0 = Instant::now();
    loop {
        if let Some(status) = served.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second start reads the same secret back and prints no secret.
    let again = serve(&dir);
    assert!(again.lines.iter().all(|l| !l.contains(&secret)));
    drop(again);
    std::fs::remove_dir_all(dir).unwrap();
}

fn join_with(url: &str, token: &str) {
    let v = join_answer(url, token);
    assert_eq!(v["op"], "joined", "{v}");
    assert_eq!(v["self"]["identity"], "bob");
}

/// Joins over a WebSocket; the server's first frame.
fn join_answer(url: &str, token: &str) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt as _, StreamExt as _};
        let ws_url = format!("{}/v1/ws", url.replace("http://", "ws://"));
        let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        let join = serde_json::json!({"op": "join", "token": token}).to_string();
        ws.send(tokio_tungstenite::tungstenite::Message::text(join))
            .await
            .unwrap();
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        serde_json::from_str(msg.to_text().unwrap()).unwrap()
    })
}

#[test]
fn every_setting_can_come_from_the_environment() {
    let dir = temp_dir("env");
    let served = serve_with(
        &dir,
        &[
            (
                "BLUECAM_ICE_SERVERS",
                r#"[{"urls":["stun:stun.example.com:3478"]}]"#,
            ),
            ("BLUECAM_TURN_URLS", "turn:turn.example.com:3478"),
            ("BLUECAM_TURN_SECRET", "coturn-secret"),
            ("BLUECAM_LIMITS_MAX_PEERS_PER_ROOM", "1"),
            ("BLUECAM_NO_STUN", "true"),
        ],
    );
    let url = served.url.clone();
    let room = json_of(&bluecam(&["room", "create"], &dir, &url));
    assert_eq!(room["maxPeers"], 1, "{room}");
    let id = room["id"].as_str().unwrap();
    let token = |who: &str| {
        let out = Command::new(BIN)
            .args(["token", "--room", id, "--identity", who, "--data-dir"])
            .arg(&dir)
            .env_remove("BLUECAM_API_SECRET")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let joined = join_answer(&url, &token("bob"));
    assert_eq!(joined["op"], "joined", "{joined}");
    let ice = joined["iceServers"].as_array().unwrap();
    assert_eq!(
        ice.len(),
        2,
        "configured STUN, then TURN, no built-in STUN: {ice:?}"
    );
    assert_eq!(ice[0]["urls"][0], "stun:stun.example.com:3478");
    assert_eq!(ice[1]["urls"][0], "turn:turn.example.com:3478");
    assert!(
        ice[1]["username"]
            .as_str()
            .unwrap()
            .ends_with(joined["self"]["id"].as_str().unwrap())
    );
    drop(served);

    // A variable that cannot be read stops the start, naming it.
    let out = Command::new(BIN)
        .args(["serve", "--bind", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("BLUECAM_LIMITS_MAX_FRAME_BYTES", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BLUECAM_LIMITS_MAX_FRAME_BYTES"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

fn bench(args: &[&str]) -> Value {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = temp_dir(&format!("bench-{}-{run}", args[0]));
    let json = dir.join("result.json");
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    ]);
    assert_eq!(v["connections_held"], 40, "{v}");
    assert_eq!(v["connections_failed"], 0, "{v}");
    assert!(v["server_rss_per_connection_bytes"].is_number(), "{v}");
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
    ]);
    let relay = &v["relay"];
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

#[test]
fn bench_cluster_smoke() {
    let v = bench(&[
        "cluster",
        "--nodes",
        "2",
        "--rooms",
        "2",
        "--duration-secs",
        "1",
        "--joins",
        "20",
    ]);
    for placement in ["same_node", "cross_node"] {
        let p = &v[placement];
        for relay in ["latency_10_rooms", "relay_window_1", "relay_flat_out"] {
            assert!(p[relay]["latency"]["count"].as_u64().unwrap() > 0, "{v}");
            assert_eq!(p[relay]["failed_peers"], 0, "{v}");
        }
        assert_eq!(p["join"]["failed"], 0, "{v}");
    }
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
