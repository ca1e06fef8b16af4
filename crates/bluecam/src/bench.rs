//! `bluecam bench`: a load generator speaking the real protocol through `bluecam-proto`.
//! Scenarios: `idle` (connections held, server RSS and CPU), `join-storm` (join rate and
//! latency) and `relay` (messages/s delivered and latency in rooms of k peers).
//! Unless `--server` is given it starts its own `bluecam serve` child with limits raised for
//! load (see BENCHMARKS.md), so it can read that process's memory and CPU.

use anyhow::{Context as _, bail};
use bluecam_proto::{ClientMessage, Joined, PeerId, RawValue, ServerMessage};
use bluecam_server::{Claims, Secret};
use clap::{Args, Subcommand};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use std::{
    borrow::Cow,
    collections::HashMap,
    io::{BufRead as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio::{
    net::{TcpSocket, TcpStream},
    sync::Semaphore,
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, protocol::WebSocketConfig},
};

type Ws = WebSocketStream<TcpStream>;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Benchmark a running server at this URL instead of starting one.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Its API secret (with --server).
    #[arg(
        long,
        env = "BLUECAM_API_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,
    /// Its process id (with --server), to read its memory and CPU.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Hold N idle joined connections; report server RSS per connection and idle CPU.
    Idle {
        #[arg(long, default_value_t = 19_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        /// Generator processes (each may hold at most 20,000 open files here).
        #[arg(long, default_value_t = 4)]
        procs: usize,
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
    },
    /// N clients connect and join as fast as allowed; join rate and latency.
    JoinStorm {
        #[arg(long, default_value_t = 5_000)]
        joins: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
    },
    /// Every peer broadcasts to its room flat out (at most `window` messages in flight);
    /// messages/s delivered and latency.
    Relay {
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        #[arg(long, default_value_t = 2)]
        room_size: usize,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 16)]
        window: u64,
    },
    /// (internal) one generator process of `idle`.
    #[command(hide = true)]
    IdleWorker {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        room_prefix: String,
        #[arg(long)]
        room_size: usize,
        #[arg(long)]
        start: usize,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        source_ip: Ipv4Addr,
    },
}

/// The server under test.
struct Target {
    http: String,
    addr: SocketAddr,
    secret: Secret,
    pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Limits raised for load: the defaults protect a server from clients, a benchmark needs
/// clients that may go flat out. BENCHMARKS.md repeats this.
const BENCH_CONFIG: &str = r#"
demo = false
[limits]
rate_frames_per_sec = 100000000
rate_burst_frames = 100000000
rate_bytes_per_sec = 100000000000
rate_burst_bytes = 100000000000
max_peers_per_room = 1000
max_connections = 1000000
"#;

async fn start_target(args: &BenchArgs) -> anyhow::Result<Target> {
    if let Some(url) = &args.server {
        let secret = args
            .secret
            .clone()
            .context("--server needs --secret or BLUECAM_API_SECRET")?;
        let host = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .context("cannot resolve the server")?;
        return Ok(Target {
            http: url.trim_end_matches('/').to_owned(),
            addr,
            secret: Secret::new(secret),
            pid: args.server_pid,
            child: None,
            _dir: None,
        });
    }
    let dir = std::env::temp_dir().join(format!("bluecam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("bench.toml"), BENCH_CONFIG)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let secret = bluecam_server::auth::random_token(32);
    let child = Command::new(std::env::current_exe()?)
        .arg("serve")
        .arg("--config")
        .arg(dir.0.join("bench.toml"))
        .arg("--bind")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir.0.join("data"))
        .env("BLUECAM_API_SECRET", &secret)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start the server")?;
    let target = Target {
        http: format!("http://{addr}"),
        addr,
        secret: Secret::new(secret),
        pid: Some(child.id()),
        child: Some(child),
        _dir: Some(dir),
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{}/healthz", target.http))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(target);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the server did not become healthy")
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Scenario::IdleWorker {
        addr,
        room_prefix,
        room_size,
        start,
        count,
        source_ip,
    } = &args.scenario
    {
        let secret = Secret::new(args.secret.clone().context("worker needs the secret")?);
        return idle_worker(
            *addr,
            &secret,
            room_prefix,
            *room_size,
            *start,
            *count,
            *source_ip,
        )
        .await;
    }
    let target = start_target(&args).await?;
    let result = match args.scenario {
        Scenario::Idle {
            connections,
            room_size,
            procs,
            hold_secs,
        } => idle(&target, connections, room_size, procs.max(1), hold_secs).await?,
        Scenario::JoinStorm {
            joins,
            concurrency,
            room_size,
        } => join_storm(&target, joins, concurrency.max(1), room_size).await?,
        Scenario::Relay {
            rooms,
            room_size,
            duration_secs,
            payload_bytes,
            window,
        } => {
            relay(
                &target,
                rooms,
                room_size.max(2),
                duration_secs,
                payload_bytes,
                window.max(1),
            )
            .await?
        }
        Scenario::IdleWorker { .. } => unreachable_worker()?,
    };
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    say(&text);
    Ok(())
}

fn unreachable_worker() -> anyhow::Result<serde_json::Value> {
    bail!("worker handled above")
}

#[allow(clippy::print_stdout)] // the benchmark's report
fn say(text: &str) {
    println!("{text}");
}

fn progress(text: &str) {
    let _ = writeln!(std::io::stderr(), "bench: {text}");
}

/// Creates rooms `{prefix}{i}` for i in 0..n, allowing `max_peers` each.
async fn create_rooms(
    target: &Target,
    prefix: &str,
    n: usize,
    max_peers: usize,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let sem = Arc::new(Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let req = http
            .post(format!("{}/v1/rooms", target.http))
            .bearer_auth(target.secret.expose())
            .json(&serde_json::json!({"id": format!("{prefix}{i}"), "maxPeers": max_peers}));
        tasks.spawn(async move {
            let res = req.send().await;
            drop(permit);
            match res {
                Ok(r) if r.status().is_success() || r.status().as_u16() == 409 => Ok(()),
                Ok(r) => Err(anyhow::anyhow!("room creation failed: {}", r.status())),
                Err(e) => Err(e.into()),
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

fn mint(secret: &Secret, room: &str, identity: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    Ok(secret.mint(&Claims {
        sub: identity.into(),
        room: room.into(),
        exp: now + 3600,
        iat: now,
        nbf: None,
        name: None,
        metadata: None,
        permissions: None,
    })?)
}

/// Opens a WebSocket from `source` (a 127.x.y.z address, to spread ephemeral ports).
async fn connect(addr: SocketAddr, source: Option<Ipv4Addr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0);
    let url = format!("ws://{addr}{}", bluecam_proto::WS_PATH);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
    Ok(ws)
}

/// Sends `join` and waits for `joined`.
async fn join(ws: &mut Ws, token: String) -> anyhow::Result<Joined> {
    let frame = ClientMessage::Join {
        token,
        resume: None,
    }
    .to_json();
    ws.send(Message::text(frame)).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            match ServerMessage::from_json(&text)? {
                ServerMessage::Joined(joined) => return Ok(*joined),
                ServerMessage::Error(e) => bail!("join failed: {} {}", e.code, e.message),
                _ => {}
            }
        }
    }
    bail!("connection closed before joined")
}

fn source_ip(i: usize) -> Ipv4Addr {
    // 127.0.1.0 – 127.0.1.255: away from 127.0.0.1 where the server listens.
    Ipv4Addr::new(127, 0, 1, (i % 250) as u8 + 1)
}

fn quantiles(h: &Histogram<u64>) -> serde_json::Value {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    serde_json::json!({
        "count": h.len(),
        "p50_ms": us(0.50),
        "p99_ms": us(0.99),
        "p999_ms": us(0.999),
        "max_ms": h.max() as f64 / 1000.0,
    })
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    // Microseconds, 1 µs to 100 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Clock ticks per second for /proc times (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

async fn idle(
    target: &Target,
    connections: usize,
    room_size: usize,
    procs: usize,
    hold_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let rooms = connections.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    create_rooms(target, "idle-", rooms, room_size).await?;
    let rss_before = target.pid.and_then(rss_kib);
    progress(&format!(
        "opening {connections} connections from {procs} processes"
    ));
    let started = Instant::now();
    let per = connections.div_ceil(procs);
    let mut workers = Vec::new();
    for w in 0..procs {
        let start = w * per;
        let count = per.min(connections.saturating_sub(start));
        if count == 0 {
            break;
        }
        let mut child = Command::new(std::env::current_exe()?)
            .args(["bench", "idle-worker", "--addr"])
            .arg(target.addr.to_string())
            .args(["--room-prefix", "idle-", "--room-size"])
            .arg(room_size.to_string())
            .arg("--start")
            .arg(start.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--source-ip")
            .arg(source_ip(w).to_string())
            .env("BLUECAM_API_SECRET", target.secret.expose())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push((child, std::io::BufReader::new(stdout)));
    }
    let mut held = 0usize;
    let mut failed = 0usize;
    for (_, out) in &mut workers {
        let mut line = String::new();
        let out_ref = out;
        tokio::task::block_in_place(|| out_ref.read_line(&mut line))?;
        let mut parts = line.split_whitespace().skip(1);
        held += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        failed += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    let open_secs = started.elapsed().as_secs_f64();
    progress(&format!(
        "{held} connections joined ({failed} failed) in {open_secs:.1} s; holding {hold_secs} s"
    ));
    // Let the post-join burst settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = target.pid.and_then(cpu_ticks);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let held_for = t0.elapsed().as_secs_f64();
    let cpu_after = target.pid.and_then(cpu_ticks);
    let rss_after = target.pid.and_then(rss_kib);
    for (mut child, _) in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if held > 0 => Some((a.saturating_sub(b)) as f64 * 1024.0 / held as f64),
        _ => None,
    };
    let idle_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a - b) as f64 / TICKS_PER_SEC / held_for * 100.0),
        _ => None,
    };
    Ok(serde_json::json!({
        "scenario": "idle",
        "connections_requested": connections,
        "connections_held": held,
        "connections_failed": failed,
        "room_size": room_size,
        "generator_processes": procs,
        "open_secs": open_secs,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_per_connection_bytes": per_conn,
        "server_idle_cpu_percent": idle_cpu,
    }))
}

async fn idle_worker(
    addr: SocketAddr,
    secret: &Secret,
    prefix: &str,
    room_size: usize,
    start: usize,
    count: usize,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(count.max(1));
    let stop = Arc::new(tokio::sync::Notify::new());
    for i in start..start + count {
        let room = format!("{prefix}{}", i / room_size);
        let token = mint(secret, &room, &format!("idle-{i}"))?;
        let sem = Arc::clone(&sem);
        let done = done_tx.clone();
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await;
            let ws = async {
                let mut ws = connect(addr, Some(source)).await?;
                join(&mut ws, token).await?;
                anyhow::Ok(ws)
            }
            .await;
            drop(permit);
            let ok = ws.is_ok();
            let _ = done.send(ok).await;
            if let Ok(mut ws) = ws {
                // Keep reading so pings are answered; stop when told.
                loop {
                    tokio::select! {
                        msg = ws.next() => if msg.is_none() { break },
                        () = stop.notified() => break,
                    }
                }
                let _ = ws.close(None).await;
            }
        });
    }
    drop(done_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    // Each task reports once, then keeps its sender while it holds its connection.
    while ok + failed < count {
        match done_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    say(&format!("ready {ok} {failed}"));
    // Hold until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    stop.notify_waiters();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn join_storm(
    target: &Target,
    joins: usize,
    concurrency: usize,
    room_size: usize,
) -> anyhow::Result<serde_json::Value> {
    let rooms = joins.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    create_rooms(target, "storm-", rooms, room_size).await?;
    let tokens: Vec<String> = (0..joins)
        .map(|i| {
            mint(
                &target.secret,
                &format!("storm-{}", i / room_size),
                &format!("s{i}"),
            )
        })
        .collect::<Result<_, _>>()?;
    progress(&format!("{joins} joins, {concurrency} at a time"));
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (i, token) in tokens.into_iter().enumerate() {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let addr = target.addr;
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = async {
                let mut ws = connect(addr, Some(source_ip(i))).await?;
                let t_join = Instant::now();
                join(&mut ws, token).await?;
                anyhow::Ok((ws, t_join.elapsed()))
            }
            .await;
            drop(permit);
            r.map(|(ws, join_only)| (ws, t0.elapsed(), join_only))
        });
    }
    let mut total = new_histogram()?;
    let mut join_only = new_histogram()?;
    let mut held = Vec::with_capacity(joins);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((ws, t, j)) => {
                total.saturating_record(t.as_micros() as u64);
                join_only.saturating_record(j.as_micros() as u64);
                held.push(ws);
            }
            Err(_) => failed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ok = held.len();
    drop(held);
    Ok(serde_json::json!({
        "scenario": "join-storm",
        "joins": ok,
        "failed": failed,
        "concurrency": concurrency,
        "room_size": room_size,
        "seconds": secs,
        "joins_per_sec": ok as f64 / secs,
        "connect_and_join": quantiles(&total),
        "join_frame_to_joined": quantiles(&join_only),
    }))
}

/// Per-sender delivery counter, for the flat-out window.
struct SenderState {
    delivered: AtomicU64,
    wake: tokio::sync::Notify,
}

async fn relay(
    target: &Target,
    rooms: usize,
    room_size: usize,
    duration_secs: u64,
    payload_bytes: usize,
    window: u64,
) -> anyhow::Result<serde_json::Value> {
    progress(&format!("creating {rooms} rooms of {room_size}"));
    let prefix = format!("relay{room_size}-");
    create_rooms(target, &prefix, rooms, room_size).await?;
    progress("connecting");
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..rooms {
        for p in 0..room_size {
            let token = mint(&target.secret, &format!("{prefix}{r}"), &format!("p{p}"))?;
            let addr = target.addr;
            let sem = Arc::clone(&sem);
            let i = r * room_size + p;
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let mut ws = connect(addr, Some(source_ip(i))).await?;
                let joined = join(&mut ws, token).await?;
                anyhow::Ok((r, ws, joined.self_.id))
            });
        }
    }
    let mut by_room: Vec<Vec<(Ws, PeerId)>> = (0..rooms).map(|_| Vec::new()).collect();
    while let Some(res) = tasks.join_next().await {
        let (r, ws, id) = res??;
        by_room[r].push((ws, id));
    }
    // Drain the peer_joined frames the later joiners caused, so they do not count.
    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let deliveries = Arc::new(AtomicU64::new(0));
    let pad = "x".repeat(payload_bytes);
    let mut peers = tokio::task::JoinSet::new();
    for members in by_room {
        let senders: HashMap<PeerId, Arc<SenderState>> = members
            .iter()
            .map(|(_, id)| {
                (
                    id.clone(),
                    Arc::new(SenderState {
                        delivered: AtomicU64::new(0),
                        wake: tokio::sync::Notify::new(),
                    }),
                )
            })
            .collect();
        let senders = Arc::new(senders);
        let fanout = (room_size - 1) as u64;
        for (ws, id) in members {
            let (mut sink, mut stream) = ws.split();
            let me = Arc::clone(&senders[&id]);
            let senders = Arc::clone(&senders);
            let stop_tx = Arc::clone(&stop);
            let stop_rx = Arc::clone(&stop);
            let deliveries = Arc::clone(&deliveries);
            let pad = pad.clone();
            peers.spawn(async move {
                let send = async move {
                    let mut seq = 0u64;
                    while !stop_tx.load(Ordering::Relaxed) {
                        while seq * fanout - me.delivered.load(Ordering::Acquire) >= window * fanout
                        {
                            let notified = me.wake.notified();
                            if seq * fanout - me.delivered.load(Ordering::Acquire) < window * fanout
                            {
                                break;
                            }
                            if tokio::time::timeout(Duration::from_millis(200), notified)
                                .await
                                .is_err()
                                && stop_tx.load(Ordering::Relaxed)
                            {
                                return anyhow::Ok(seq);
                            }
                        }
                        let t = base.elapsed().as_nanos() as u64;
                        let msg = format!("{{\"t\":{t},\"s\":{seq},\"p\":\"{pad}\"}}");
                        let raw = RawValue::from_string(msg)?;
                        let frame = ClientMessage::Send {
                            to: None,
                            msg: Cow::Owned(raw),
                            reference: None,
                        };
                        sink.send(Message::text(frame.to_json())).await?;
                        seq += 1;
                    }
                    let _ = sink.close().await;
                    anyhow::Ok(seq)
                };
                let recv = async move {
                    let mut hist = new_histogram()?;
                    #[derive(serde::Deserialize)]
                    struct Stamp {
                        t: u64,
                    }
                    while let Some(msg) = stream.next().await {
                        let Ok(Message::Text(text)) = msg else { break };
                        if let Ok(ServerMessage::Message(m)) = ServerMessage::from_json(&text) {
                            let now = base.elapsed().as_nanos() as u64;
                            if let Ok(stamp) = serde_json::from_str::<Stamp>(m.msg.get()) {
                                hist.saturating_record(now.saturating_sub(stamp.t) / 1000);
                            }
                            deliveries.fetch_add(1, Ordering::Relaxed);
                            if let Some(s) = senders.get(&m.from) {
                                s.delivered.fetch_add(1, Ordering::AcqRel);
                                s.wake.notify_one();
                            }
                        }
                        if stop_rx.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    anyhow::Ok(hist)
                };
                let (sent, hist) = tokio::join!(send, recv);
                anyhow::Ok((sent?, hist?))
            });
        }
    }
    progress(&format!("sending for {duration_secs} s"));
    let cpu_before = target.pid.and_then(cpu_ticks);
    tokio::time::sleep(Duration::from_secs(duration_secs)).await;
    let delivered = deliveries.load(Ordering::Relaxed);
    let elapsed = base.elapsed().as_secs_f64();
    let cpu_after = target.pid.and_then(cpu_ticks);
    stop.store(true, Ordering::Relaxed);
    let mut hist = new_histogram()?;
    let mut sent = 0u64;
    let mut failed_peers = 0;
    while let Some(r) = peers.join_next().await {
        match r? {
            Ok((s, h)) => {
                sent += s;
                hist.add(&h)?;
            }
            Err(_) => failed_peers += 1,
        }
    }
    let server_cpu_secs = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a - b) as f64 / TICKS_PER_SEC),
        _ => None,
    };
    Ok(serde_json::json!({
        "scenario": "relay",
        "rooms": rooms,
        "room_size": room_size,
        "payload_bytes": payload_bytes,
        "window_per_sender": window,
        "seconds": elapsed,
        "messages_sent": sent,
        "deliveries": delivered,
        "deliveries_per_sec": delivered as f64 / elapsed,
        "server_cpu_secs": server_cpu_secs,
        "server_cpu_secs_per_million_deliveries": server_cpu_secs.map(|c| c / (delivered.max(1) as f64 / 1e6)),
        "failed_peers": failed_peers,
        "latency": quantiles(&hist),
    }))
}
