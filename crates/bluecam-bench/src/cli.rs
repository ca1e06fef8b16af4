//! The command line: the flags every scenario takes, and the scenarios with theirs.

use super::*;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "bluecam-bench",
    version,
    about = "Load generator for BlueCam, speaking the real protocol (see BENCHMARKS.md)"
)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
    /// The `bluecam` binary to start servers from [default: `bluecam` beside this program].
    #[arg(long, env = "BLUECAM_BIN", global = true)]
    pub(crate) bluecam: Option<std::path::PathBuf>,
    /// Benchmark a running server at this URL instead of starting one.
    #[arg(long, global = true)]
    pub(crate) server: Option<String>,
    /// Its API secret (with --server).
    #[arg(
        long,
        env = "BLUECAM_API_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub(crate) secret: Option<String>,
    /// Its process id (with --server), to read its memory and CPU.
    #[arg(long, global = true)]
    pub(crate) server_pid: Option<u32>,
    /// Write the result as JSON to this file.
    #[arg(long, global = true)]
    pub(crate) json: Option<std::path::PathBuf>,
    /// The kind of server measured (peerjs and matchbox need --server: bench/compare.sh
    /// starts them).
    #[arg(long, global = true, value_enum, default_value_t = TargetKind::Bluecam)]
    pub(crate) target: TargetKind,
    /// Do not also run `relay`, `signal` and `join-storm` against the baseline relay.
    #[arg(long, global = true)]
    pub(crate) no_baseline: bool,
    /// Pin the server (its child, or --server-pid) to core 0 and the generator to core 1,
    /// with `taskset` (util-linux).
    #[arg(long, global = true)]
    pub(crate) pin: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Scenario {
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
        /// Then each connection sends this many pings (BlueCam's `ping` frame; a WebSocket
        /// ping to the other targets), one at a time, each after the last one's pong, and the
        /// RSS is measured again once they are idle (a used connection; 0: not measured).
        #[arg(long, default_value_t = 100)]
        pings: u32,
        /// While held, each connection pings every this many seconds, as an idle SDK client
        /// does (BlueCam's SDK pings after 5 s of silence; peerjs's client sends `HEARTBEAT`
        /// every 5 s; a WebSocket ping to matchbox and the bare relay), the first at a point
        /// spread over the period; 0: silent.
        #[arg(long, default_value_t = 0)]
        heartbeat_secs: u64,
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
        /// Two-peer rooms of native peers (`bluecam-client`, as `bluecam join`) relaying at
        /// `rate` throughout, with the SDK's delivery guarantee (counted end to end).
        #[arg(long, default_value_t = 0)]
        native_pairs: usize,
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
        /// The clients are native peers (`bluecam-client`, as `bluecam join`), with the SDK's
        /// delivery guarantee, instead of this generator's own protocol clients.
        #[arg(long)]
        native: bool,
        /// With `--native`: the clients' transport (`auto`, `websocket` or `http`).
        #[arg(long, default_value = "auto", requires = "native")]
        transport: String,
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
        /// Run the nodes on a Redis Cluster (three masters, three replicas) started here; the
        /// Redis faults become a master SIGKILLed (failover) and a shard emptied.
        #[arg(long)]
        redis_cluster: bool,
        /// The clients are native peers (`bluecam-client`, as `bluecam join`, each with the
        /// three nodes as its list), with the SDK's delivery guarantee.
        #[arg(long)]
        native: bool,
        /// With `--native`: the clients' transport (`auto`, `websocket` or `http`).
        #[arg(long, default_value = "auto", requires = "native")]
        transport: String,
    },
    /// Several `serve --redis` nodes on one Redis or a Redis Cluster (started here): relay and
    /// join latency for peers on the same node against peers on different nodes, and the load
    /// of each Redis.
    Cluster {
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Redis to use (default: start a `redis-server` on a free port).
        #[arg(long)]
        redis: Option<String>,
        /// Start a Redis Cluster (three masters, three replicas) for each measurement instead
        /// of one Redis, and report each master's load.
        #[arg(long, conflicts_with = "redis")]
        redis_cluster: bool,
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
        #[arg(long, default_value_t = 0)]
        pings: u32,
        #[arg(long, default_value_t = 0)]
        heartbeat_secs: u64,
    },
}
