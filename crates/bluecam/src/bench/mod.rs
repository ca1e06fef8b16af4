//! `bluecam bench`: a load generator speaking the real protocol through `bluecam-proto`.
//! Scenarios: `idle` (connections held, server RSS and CPU), `join-storm` (join rate and
//! latency), `relay` (messages/s delivered and latency in rooms of k peers) and `signal`
//! (offer/answer/candidate exchanges: per-hop latency and whole-exchange time), `slow-reader`
//! (one peer stops reading: its disconnection and everyone else's latency), `churn`
//! (connections replaced continuously: memory and open files must stay flat), `soak` (churn,
//! ordered relay, slow readers and hostile clients at once, for a long time) and `restart`
//! (the server restarted and killed under clients: time to resume, messages lost).
//! Unless `--server` is given it starts its own `bluecam serve` child with limits raised for
//! load (see BENCHMARKS.md), so it can read that process's memory and CPU. `relay`, `signal`
//! and `join-storm` then run the same load against the no-protocol baseline relay
//! (`baseline.rs`, its own child process) and report BlueCam's figures as ratios to it.
//! `--target peerjs|matchbox` measures those servers with the same load (`wire.rs`);
//! `--pin` puts the server on core 0 and the generator on core 1.

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

mod baseline;
mod chaos;
mod churn;
mod cluster;
mod history;
mod idle;
mod plot;
mod progress;
mod relay;
mod restart;
mod signal;
mod slow;
mod soak;
mod storm;
mod stun;
mod summary;
mod transport;
mod wire;

use churn::churn;
use cluster::cluster;
use idle::{idle, idle_worker};
use relay::{RelayOpts, relay_on};
use signal::signal;
use slow::slow_reader;
use soak::{SoakOpts, soak};
use storm::join_storm;
use wire::TargetKind;

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
    /// The kind of server measured (peerjs and matchbox need --server: bench/compare.sh
    /// starts them).
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Bluecam)]
    target: TargetKind,
    /// Do not also run `relay`, `signal` and `join-storm` against the baseline relay.
    #[arg(long, global = true)]
    no_baseline: bool,
    /// Pin the server (its child, or --server-pid) to core 0 and the generator to core 1,
    /// with `taskset` (util-linux).
    #[arg(long, global = true)]
    pin: bool,
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
    /// Every peer broadcasts to its room, flat out (at most `window` messages in flight) or
    /// at a fixed offered rate; messages/s delivered, latency, server CPU; the same against
    /// the baseline relay.
    Relay {
        #[arg(long, default_value_t = 1_000)]
        rooms: usize,
        #[arg(long, default_value_t = 2)]
        room_size: usize,
        /// Seconds per measured phase (per rate of a sweep).
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
        #[arg(long, default_value_t = 64)]
        payload_bytes: usize,
        /// Flat out: messages each sender may have undelivered.
        #[arg(long, default_value_t = 16)]
        window: u64,
        /// Open loop: messages/s offered in total (spread evenly over the peers; each is
        /// delivered to room_size - 1 peers).
        #[arg(long, conflicts_with = "sweep")]
        rate: Option<f64>,
        /// Open loop at each of these total offered rates (messages/s), one phase each.
        #[arg(long, value_delimiter = ',')]
        sweep: Vec<f64>,
        /// With --sweep: write an SVG plot of latency against offered load here.
        #[arg(long, requires = "sweep")]
        plot: Option<std::path::PathBuf>,
    },
    /// UDP senders asking the built-in STUN server for their address, `window` requests at a
    /// time each: answers per second, and per server CPU-second.
    Stun {
        #[arg(long, default_value_t = 8)]
        senders: usize,
        #[arg(long, default_value_t = 32)]
        window: usize,
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
    },
    /// Two-peer rooms relaying at a fixed rate over WebSockets and over the HTTP transport
    /// (long-polling), on the same server: delivered, latency, server CPU per million.
    Transport {
        /// ws, http, or both (one run of each).
        #[arg(long, value_enum, default_value_t = transport::Transport::Both)]
        transport: transport::Transport,
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Messages per second each peer sends.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
        #[arg(long, default_value_t = 10)]
        duration_secs: u64,
    },
    /// Pairs exchange an offer, an answer and ICE candidates both ways through the server;
    /// per-hop latency and whole-exchange time.
    Signal {
        #[arg(long, default_value_t = 100)]
        pairs: usize,
        #[arg(long, default_value_t = 20)]
        exchanges: usize,
        #[arg(long, default_value_t = 20)]
        candidates: usize,
    },
    /// Steady traffic at a fixed rate, then one peer stops reading: its disconnection time and
    /// the other peers' latency before and after.
    SlowReader {
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        #[arg(long, default_value_t = 4)]
        room_size: usize,
        /// Messages per second each peer broadcasts.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        #[arg(long, default_value_t = 4096)]
        payload_bytes: usize,
        #[arg(long, default_value_t = 10)]
        phase_secs: u64,
    },
    /// A share of the connections is replaced every minute (half leave, half drop); server
    /// memory and open files are sampled to show they stay flat.
    Churn {
        #[arg(long, default_value_t = 1_000)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
        #[arg(long, default_value_t = 20.0)]
        percent_per_min: f64,
        #[arg(long, default_value_t = 600)]
        duration_secs: u64,
        #[arg(long, default_value_t = 30)]
        sample_secs: u64,
    },
    /// Churn, relay pairs checking order, slow readers and hostile clients (bad frame bursts,
    /// oversized frames, invalid UTF-8, slowloris) all at once for a long time; server RSS and
    /// open files must stay flat, and every hostile client must see its documented close.
    Soak {
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        #[arg(long, default_value_t = 500)]
        connections: usize,
        #[arg(long, default_value_t = 50)]
        relay_rooms: usize,
        /// Messages per second each relay peer sends.
        #[arg(long, default_value_t = 20)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        sample_secs: u64,
    },
    /// Clients in two-peer rooms messaging through the relay; the server (started here) is
    /// restarted with SIGTERM, then SIGKILL: time until every client resumed its session, and
    /// every message counted end to end (lost must be 0).
    Restart {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        /// Messages per second each client sends to its partner.
        #[arg(long, default_value_t = 2.0)]
        rate: f64,
        /// Seconds of traffic before each restart and after the last.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
    },
    /// Three `serve --redis` nodes on one Redis with persistence (all started here), clients in
    /// two-peer rooms across nodes messaging through the relay, and four faults in a row: a
    /// node SIGKILLed, a node frozen past its expiry, Redis SIGKILLed and restarted from its
    /// file, Redis restarted empty. Time until delivery works again after each, and every
    /// message counted end to end (lost silently must be 0).
    Chaos {
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Messages per second each client sends to its partner.
        #[arg(long, default_value_t = 5.0)]
        rate: f64,
        /// Seconds of traffic before each fault and after the last.
        #[arg(long, default_value_t = 5)]
        settle_secs: u64,
    },
    /// Several `serve --redis` nodes on one Redis (started here): relay and join latency for
    /// peers on the same node against peers on different nodes.
    Cluster {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Redis to use (default: start a `redis-server` on a free port).
        #[arg(long)]
        redis: Option<String>,
        #[arg(long, default_value_t = 500)]
        rooms: usize,
        #[arg(long, default_value_t = 5)]
        duration_secs: u64,
        #[arg(long, default_value_t = 2_000)]
        joins: usize,
    },
    /// Call history and webhooks: a join storm with webhooks off and on (a receiver here), the
    /// webhook delivery rate, and join latency on a PostgreSQL cluster node against SQLite.
    History {
        #[arg(long, default_value_t = 2_000)]
        joins: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10)]
        room_size: usize,
    },
    /// (internal) the no-protocol baseline relay server.
    #[command(hide = true)]
    BaselineServer {
        #[arg(long)]
        bind: SocketAddr,
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
    kind: TargetKind,
    http: String,
    addr: SocketAddr,
    /// Cluster runs: client `i` connects to `spread[i % len]` (empty: always `addr`).
    spread: Vec<SocketAddr>,
    secret: Secret,
    pid: Option<u32>,
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Target {
    /// Where client number `i` connects.
    fn addr_for(&self, i: usize) -> SocketAddr {
        if self.spread.is_empty() {
            self.addr
        } else {
            self.spread[i % self.spread.len()]
        }
    }
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
stun_rate_per_source = 1000000000
stun_burst_per_source = 1000000000
"#;

/// A command that runs `program`, on core 0 when pinning.
fn server_command(program: impl AsRef<std::ffi::OsStr>, pin: bool) -> Command {
    if pin {
        // taskset execs the program: the child's pid is the server's.
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Pins every thread of a running process to `cpus` (a taskset list).
fn pin_process(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus])
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .status()
        .context("--pin needs taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed for pid {pid}");
    Ok(())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

async fn start_target(args: &BenchArgs, kind: TargetKind) -> anyhow::Result<Target> {
    if let Some(url) = args.server.as_ref().filter(|_| kind == args.target) {
        let secret = match kind {
            TargetKind::Bluecam => args
                .secret
                .clone()
                .context("--server needs --secret or BLUECAM_API_SECRET")?,
            _ => String::new(),
        };
        let host = url
            .trim_start_matches("http://")
            .trim_start_matches("ws://")
            .trim_end_matches('/')
            .to_owned();
        let addr = tokio::net::lookup_host(&host)
            .await?
            .next()
            .context("cannot resolve the server")?;
        if args.pin
            && let Some(pid) = args.server_pid
        {
            pin_process(pid, "0")?;
        }
        return Ok(Target {
            kind,
            http: format!("http://{host}"),
            addr,
            spread: Vec::new(),
            secret: Secret::new(secret),
            pid: args.server_pid,
            child: None,
            _dir: None,
        });
    }
    let addr = free_addr()?;
    match kind {
        TargetKind::Bluecam => {}
        TargetKind::Baseline => {
            let child = server_command(std::env::current_exe()?, args.pin)
                .args(["bench", "baseline-server", "--bind"])
                .arg(addr.to_string())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start the baseline server")?;
            let target = Target {
                kind,
                http: format!("http://{addr}"),
                addr,
                spread: Vec::new(),
                secret: Secret::new(String::new()),
                pid: Some(child.id()),
                child: Some(child),
                _dir: None,
            };
            for _ in 0..200 {
                if TcpStream::connect(addr).await.is_ok() {
                    return Ok(target);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            bail!("the baseline server did not start");
        }
        TargetKind::Peerjs | TargetKind::Matchbox => bail!(
            "start {} yourself and pass --server URL --server-pid PID (bench/compare.sh does)",
            kind.name()
        ),
    }
    let dir = std::env::temp_dir().join(format!("bluecam-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("bench.toml"), BENCH_CONFIG)?;
    let secret = bluecam_server::auth::random_token(32);
    let child = server_command(std::env::current_exe()?, args.pin)
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
        kind,
        http: format!("http://{addr}"),
        addr,
        spread: Vec::new(),
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
        } => idle(target, connections, room_size, procs.max(1), hold_secs).await?,
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
        } => {
            let opts = SoakOpts {
                minutes,
                connections: connections.max(1),
                relay_rooms,
                rate,
                sample_secs,
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

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    match &args.scenario {
        Scenario::IdleWorker {
            addr,
            room_prefix,
            room_size,
            start,
            count,
            source_ip,
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
            return idle_worker(&target, room_prefix, *room_size, *start, *count, *source_ip).await;
        }
        Scenario::BaselineServer { bind } => return baseline::baseline_server(*bind).await,
        Scenario::Restart {
            clients,
            rate,
            settle_secs,
        } => {
            let result = restart::restart(*clients, rate.max(0.1), (*settle_secs).max(1)).await?;
            return report(&args, result);
        }
        Scenario::Chaos {
            clients,
            rate,
            settle_secs,
        } => {
            let result = chaos::chaos(*clients, rate.max(0.1), (*settle_secs).max(1)).await?;
            return report(&args, result);
        }
        Scenario::History {
            joins,
            concurrency,
            room_size,
        } => {
            let result =
                history::history((*joins).max(1), (*concurrency).max(1), (*room_size).max(2))
                    .await?;
            return report(&args, result);
        }
        Scenario::Cluster {
            nodes,
            redis,
            rooms,
            duration_secs,
            joins,
        } => {
            let result = cluster(
                (*nodes).max(1),
                redis.clone(),
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
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 << 10)
        .write_buffer_size(0);
    let url = format!("ws://{addr}{path}");
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
