//! `bluecam-bench`: a load generator speaking the real protocol through `bluecam-proto`.
//! Scenarios: `idle` (connections held, server RSS and CPU), `join-storm` (join rate and
//! latency), `relay` (messages/s delivered and latency in rooms of k peers) and `signal`
//! (offer/answer/candidate exchanges: per-hop latency and whole-exchange time), `slow-reader`
//! (one peer stops reading: its disconnection and everyone else's latency), `churn`
//! (connections replaced continuously: memory and open files must stay flat), `soak` (churn,
//! ordered relay, slow readers and hostile clients at once, for a long time) and `restart`
//! (the server restarted and killed under clients: time to resume, messages lost).
//! Unless `--server` is given it starts its own `bluecam serve` child with limits raised for
//! load (`target.rs`, BENCHMARKS.md), so it can read that process's memory and CPU; that
//! `bluecam` is the binary beside this one unless `--bluecam` names another (`server_bin.rs`).
//! `relay`, `signal` and `join-storm` then run the same load against the no-protocol baseline
//! relay (`baseline.rs`, its own child process) and report BlueCam's figures as ratios to it.
//! `--target peerjs|matchbox` measures those servers with the same load (`wire.rs`);
//! `--pin` puts the server on core 0 and the generator on core 1. The flags: `cli.rs`.

/// The allocator `bluecam` ships with: the bare relay (`baseline-server`) and BlueCam are
/// compared on the same one.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context as _, bail};
use bluecam_proto::{ClientMessage, Joined, PeerId, RawValue, ServerMessage};
use bluecam_server::{Claims, Secret};
use clap::Parser as _;
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

mod baseline;
mod chaos;
mod churn;
mod cli;
mod cluster;
mod history;
mod idle;
mod native;
mod plot;
mod progress;
mod rediscluster;
mod relay;
mod restart;
mod server_bin;
mod signal;
mod slow;
mod soak;
mod storm;
mod stun;
mod summary;
mod target;
mod transport;
mod wire;

use churn::churn;
use cli::{BenchArgs, Scenario};
use cluster::cluster;
use idle::{idle, idle_worker};
use relay::{RelayOpts, relay_on};
use server_bin::ServerBin;
use signal::signal;
use slow::slow_reader;
use soak::{SoakOpts, soak};
use storm::join_storm;
use target::{BENCH_CONFIG, Target, TempDir, free_addr, pin_process, start_target};
use wire::TargetKind;

type Ws = WebSocketStream<TcpStream>;

/// Which scenarios also run against the baseline relay, in the same invocation.
fn with_baseline(args: &BenchArgs) -> bool {
    !args.no_baseline
        && args.target == TargetKind::Bluecam
        && matches!(
            args.scenario,
            Scenario::Relay { .. } | Scenario::Signal { .. } | Scenario::JoinStorm { .. }
        )
}

/// Runs the scenario against one server.
async fn run_on(target: &Target, scenario: &Scenario) -> anyhow::Result<serde_json::Value> {
    Ok(match *scenario {
        Scenario::Idle {
            connections,
            room_size,
            procs,
            hold_secs,
            pings,
            heartbeat_secs,
        } => {
            idle(
                target,
                connections,
                room_size,
                procs.max(1),
                hold_secs,
                heartbeat_secs,
                pings,
            )
            .await?
        }
        Scenario::JoinStorm {
            joins,
            concurrency,
            room_size,
        } => join_storm(target, joins, concurrency.max(1), room_size).await?,
        Scenario::Relay {
            rooms,
            room_size,
            duration_secs,
            payload_bytes,
            window,
            rate,
            ref sweep,
            plot: _,
        } => {
            let opts = RelayOpts {
                rooms,
                room_size: room_size.max(2),
                duration_secs,
                payload_bytes,
                window: window.max(1),
                rates: rate.map_or_else(|| sweep.clone(), |r| vec![r]),
            };
            relay_on(target, &opts).await?
        }
        Scenario::Signal {
            pairs,
            exchanges,
            candidates,
        } => signal(target, pairs.max(1), exchanges.max(1), candidates).await?,
        Scenario::Transport {
            transport,
            pairs,
            rate,
            duration_secs,
        } => {
            transport::transport(
                target,
                transport,
                pairs.max(1),
                rate,
                Duration::from_secs(duration_secs.max(1)),
            )
            .await?
        }
        Scenario::Stun {
            senders,
            window,
            duration_secs,
        } => {
            stun::stun(
                target,
                senders.max(1),
                window.max(1),
                Duration::from_secs(duration_secs.max(1)),
            )
            .await?
        }
        Scenario::SlowReader {
            rooms,
            room_size,
            rate,
            payload_bytes,
            phase_secs,
        } => {
            slow_reader(
                target,
                rooms.max(1),
                room_size.max(2),
                rate,
                payload_bytes,
                phase_secs.max(1),
            )
            .await?
        }
        Scenario::Soak {
            minutes,
            connections,
            relay_rooms,
            rate,
            sample_secs,
            native_pairs,
        } => {
            let opts = SoakOpts {
                minutes,
                connections: connections.max(1),
                relay_rooms,
                rate,
                sample_secs,
                native_pairs,
            };
            soak(target, &opts).await?
        }
        Scenario::Churn {
            connections,
            room_size,
            percent_per_min,
            duration_secs,
            sample_secs,
        } => {
            churn(
                target,
                connections.max(1),
                room_size.max(1),
                percent_per_min,
                duration_secs,
                sample_secs,
            )
            .await?
        }
        Scenario::IdleWorker { .. }
        | Scenario::BaselineServer { .. }
        | Scenario::Cluster { .. }
        | Scenario::History { .. }
        | Scenario::Restart { .. }
        | Scenario::Chaos { .. } => unreachable_worker()?,
    })
}

/// The machine line of every result.
fn machine(pin: bool) -> serde_json::Value {
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    serde_json::json!({
        "cpus": cpus,
        "pinned": pin,
        "server_cpus": if pin { "0" } else { "any" },
        "generator_cpus": if pin { "1" } else { "any" },
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(BenchArgs::parse()).await
}

async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match &args.scenario {
        Scenario::IdleWorker {
            addr,
            room_prefix,
            room_size,
            start,
            count,
            source_ip,
            pings,
            heartbeat_secs,
        } => {
            let target = Target {
                kind: args.target,
                http: format!("http://{addr}"),
                addr: *addr,
                spread: Vec::new(),
                secret: Secret::new(args.secret.clone().unwrap_or_default()),
                pid: None,
                child: None,
                _dir: None,
            };
            let spec = idle::WorkerSpec {
                prefix: room_prefix.clone(),
                room_size: *room_size,
                start: *start,
                count: *count,
                source: *source_ip,
                pings: *pings,
                heartbeat: Duration::from_secs(*heartbeat_secs),
            };
            return idle_worker(&target, spec).await;
        }
        Scenario::BaselineServer { bind } => return baseline::baseline_server(*bind).await,
        Scenario::Restart {
            clients,
            rate,
            settle_secs,
            native,
            transport,
        } => {
            let bin = ServerBin::find(args.bluecam.as_deref())?;
            let (rate, settle) = (rate.max(0.1), (*settle_secs).max(1));
            let result = if *native {
                let transport = native::transport(transport)?;
                native::restart_native(&bin, *clients, rate, settle, transport).await?
            } else {
                restart::restart(&bin, *clients, rate, settle).await?
            };
            return report(&args, result);
        }
        Scenario::Chaos {
            clients,
            rate,
            settle_secs,
            redis_cluster,
            native,
            transport,
        } => {
            let bin = ServerBin::find(args.bluecam.as_deref())?;
            let native = if *native {
                Some(native::transport(transport)?)
            } else {
                None
            };
            let result = chaos::chaos(
                &bin,
                *clients,
                rate.max(0.1),
                (*settle_secs).max(1),
                *redis_cluster,
                native,
            )
            .await?;
            return report(&args, result);
        }
        Scenario::History {
            joins,
            concurrency,
            room_size,
        } => {
            let bin = ServerBin::find(args.bluecam.as_deref())?;
            let result = history::history(
                &bin,
                (*joins).max(1),
                (*concurrency).max(1),
                (*room_size).max(2),
            )
            .await?;
            return report(&args, result);
        }
        Scenario::Cluster {
            nodes,
            redis,
            redis_cluster,
            rooms,
            duration_secs,
            joins,
        } => {
            let bin = ServerBin::find(args.bluecam.as_deref())?;
            let result = cluster(
                &bin,
                (*nodes).max(1),
                redis.clone(),
                *redis_cluster,
                (*rooms).max(1),
                *duration_secs,
                (*joins).max(1),
            )
            .await?;
            let text = serde_json::to_string_pretty(&result)?;
            if let Some(path) = &args.json {
                std::fs::write(path, &text)?;
            }
            say(&text);
            return Ok(());
        }
        _ => {}
    }
    if args.target != TargetKind::Bluecam
        && matches!(
            args.scenario,
            Scenario::SlowReader { .. } | Scenario::Churn { .. } | Scenario::Soak { .. }
        )
    {
        bail!(
            "slow-reader, churn and soak measure BlueCam only (they read its /metrics and sessions)"
        );
    }
    // (Read before pinning, which narrows what this process sees.)
    let machine = machine(args.pin);
    if args.pin {
        anyhow::ensure!(
            machine["cpus"].as_u64().unwrap_or(0) >= 2,
            "--pin needs at least 2 cores"
        );
        pin_process(std::process::id(), "1")?;
    }
    let mut result = {
        let target = start_target(&args, args.target).await?;
        run_on(&target, &args.scenario).await?
    };
    result["scenario"] = scenario_name(&args.scenario).into();
    if with_baseline(&args) {
        let base = {
            let target = start_target(&args, TargetKind::Baseline).await?;
            run_on(&target, &args.scenario).await?
        };
        result["vs_baseline"] = summary::ratios(&result, &base);
        result["baseline"] = base;
    }
    if let Scenario::Relay {
        plot: Some(path), ..
    } = &args.scenario
    {
        let mut series = vec![relay::series(args.target.name(), &result)];
        if result["baseline"].is_object() {
            series.push(relay::series("baseline", &result["baseline"]));
        }
        let title = format!(
            "relay: {} rooms of {}, {} B payloads{}",
            result["rooms"],
            result["room_size"],
            result["payload_bytes"],
            if args.pin { ", pinned" } else { "" }
        );
        plot::latency_against_load(path, &title, &series)?;
        result["plot"] = path.display().to_string().into();
    }
    result["machine"] = machine;
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &text)?;
    }
    say(&text);
    let _ = writeln!(std::io::stderr(), "{}", summary::human(&result));
    Ok(())
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Idle { .. } => "idle",
        Scenario::JoinStorm { .. } => "join-storm",
        Scenario::Relay { .. } => "relay",
        Scenario::Signal { .. } => "signal",
        Scenario::Stun { .. } => "stun",
        Scenario::Transport { .. } => "transport",
        Scenario::SlowReader { .. } => "slow-reader",
        Scenario::Churn { .. } => "churn",
        Scenario::Soak { .. } => "soak",
        Scenario::IdleWorker { .. } => "idle-worker",
        Scenario::BaselineServer { .. } => "baseline-server",
        Scenario::Cluster { .. } => "cluster",
        Scenario::History { .. } => "history",
        Scenario::Restart { .. } => "restart",
        Scenario::Chaos { .. } => "chaos",
    }
}

/// Prints a scenario's result (with the machine) and writes it to `--json`.
fn report(args: &BenchArgs, mut result: serde_json::Value) -> anyhow::Result<()> {
    result["machine"] = machine(false);
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
    if target.kind != TargetKind::Bluecam {
        return Ok(()); // the other servers make rooms on first use, or have none
    }
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

/// Opens a WebSocket to `path` from `source` (a 127.x.y.z address, to spread ephemeral ports).
async fn connect(addr: SocketAddr, path: &str, source: Option<Ipv4Addr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::from((ip, 0)))?;
    }
    let open = async {
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .write_buffer_size(0);
        let url = format!("ws://{addr}{path}");
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        anyhow::Ok(ws)
    };
    match tokio::time::timeout(ANSWER_BOUND, open).await {
        Ok(ws) => ws,
        Err(_) => bail!("no WebSocket to {addr} within {ANSWER_BOUND:?}"),
    }
}

/// How long [`connect`] and [`join`] wait for the server: a server that holds a connection or
/// a join fails the run, naming which, instead of hanging it.
const ANSWER_BOUND: Duration = Duration::from_secs(20);

/// Sends `join` and waits for `joined` (at most [`ANSWER_BOUND`]).
async fn join(ws: &mut Ws, token: String) -> anyhow::Result<Joined> {
    let frame = ClientMessage::Join {
        token,
        resume: None,
    }
    .to_json();
    let answer = async {
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
    };
    match tokio::time::timeout(ANSWER_BOUND, answer).await {
        Ok(joined) => joined,
        Err(_) => bail!("no joined within {ANSWER_BOUND:?}"),
    }
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
