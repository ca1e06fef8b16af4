//! `chaos`: three cluster nodes on one `redis-server` with persistence (append-only file), all
//! started here; clients in two-peer rooms whose two peers start on different nodes, each
//! sending numbered messages to its partner through the relay (so every message crosses the
//! cluster), acknowledged end to end and retransmitted like the SDK does. Then four faults in a
//! row: a node SIGKILLed (started again at once, as a new node), a node frozen (SIGSTOP) past
//! the node expiry then thawed, Redis SIGKILLed and restarted from its file, Redis restarted
//! without its data. For each fault: how long until every client had a message delivered again
//! (from the fault's start), and whether every client was connected. At the end every message
//! is counted: delivered once and in order, or still unacknowledged (reported lost). With
//! `--redis-cluster` the nodes share a Redis Cluster (three masters, three replicas) and the
//! two Redis faults are a master SIGKILLed (its replica takes over) and a shard emptied.

use super::rediscluster::RedisCluster;
use super::restart::{Client, Counts, Node, drain, pct};
use super::*;
use bluecam_proto::ResumeCredentials;

/// The node expiry of the bench's nodes (seconds): short, so that a freeze outlives it quickly.
const NODE_TTL_SECS: u64 = 3;
/// The clients' watchdog: a connection silent this long is given up (the SDK pings after 5 s
/// of silence and gives up after 12 s; scaled down with the node expiry).
const WATCHDOG: Duration = Duration::from_secs(4);

/// A `redis-server` with an append-only file, which can be killed and started again (with its
/// file, or without).
struct RedisProc {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl RedisProc {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server (apt-get install redis-server)")?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Removes what Redis wrote (its append-only files).
    fn wipe(&self) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(&self.dir.0)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every client had a message delivered after `from` (ms since the start), or
/// `deadline`; returns the times, in ms from `from`, sorted, and whether all got there.
async fn wait_delivering(
    delivered_at: &[Arc<AtomicU64>],
    started: Instant,
    from: u64,
    deadline: Duration,
) -> (Vec<u64>, bool) {
    let until = Instant::now() + deadline;
    let mut first: Vec<Option<u64>> = vec![None; delivered_at.len()];
    loop {
        let now = started.elapsed().as_millis() as u64;
        for (slot, at) in first.iter_mut().zip(delivered_at) {
            if slot.is_none() && at.load(Ordering::Relaxed) > from {
                *slot = Some(now - from);
            }
        }
        if first.iter().all(Option::is_some) || Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = first.iter().all(Option::is_some);
    let mut times: Vec<u64> = first.into_iter().flatten().collect();
    times.sort_unstable();
    (times, all)
}

/// The clients of a run: this generator's own protocol clients, or native peers
/// (`bluecam-client`, `--native`).
enum Clients {
    Wire {
        tasks: tokio::task::JoinSet<anyhow::Result<super::restart::Ended>>,
        counts: Arc<Counts>,
        stop: Arc<AtomicBool>,
        drain_until: Arc<AtomicU64>,
        delivered_at: Vec<Arc<AtomicU64>>,
    },
    Native(super::native::Fleet),
}

impl Clients {
    fn delivered_at(&self) -> &[Arc<AtomicU64>] {
        match self {
            Self::Wire { delivered_at, .. } => delivered_at,
            Self::Native(fleet) => &fleet.delivered_at,
        }
    }

    fn up(&self) -> u64 {
        match self {
            Self::Wire { counts, .. } => counts.up.load(Ordering::Relaxed),
            Self::Native(fleet) => fleet.up(),
        }
    }

    /// Stops the senders, drains, and counts every message.
    async fn finish(self, started: Instant) -> anyhow::Result<serde_json::Value> {
        match self {
            Self::Wire {
                tasks,
                counts,
                stop,
                drain_until,
                ..
            } => {
                let (unacked, expired) = drain(tasks, &stop, &drain_until, started, 60_000).await?;
                let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let sent = c(&counts.sent);
                let delivered = c(&counts.delivered);
                Ok(serde_json::json!({
                    "sessions_expired": expired,
                    "messages": {
                        "sent": sent,
                        "delivered_in_order_once": delivered,
                        "reported_lost": unacked,
                        "lost_silently": sent.saturating_sub(delivered).saturating_sub(unacked),
                        "retransmitted": c(&counts.retransmitted),
                        "duplicates_discarded": c(&counts.duplicates),
                        "gaps_discarded": c(&counts.out_of_order),
                    },
                }))
            }
            Self::Native(fleet) => Ok(fleet.finish().await),
        }
    }
}

pub(super) async fn chaos(
    bin: &ServerBin,
    clients: usize,
    rate: f64,
    settle_secs: u64,
    redis_cluster: bool,
    native: Option<bluecam_client::room::Transport>,
) -> anyhow::Result<serde_json::Value> {
    let clients = clients.max(2) / 2 * 2;
    let base = std::env::temp_dir().join(format!("bluecam-bench-chaos-{}", std::process::id()));
    std::fs::create_dir_all(base.join("redis"))?;
    let _base = TempDir(base.clone());
    let mut redis = RedisProc {
        port: free_addr()?.port(),
        dir: TempDir(base.join("redis")),
        child: None,
    };
    let mut cluster = None;
    if redis_cluster {
        let c = tokio::task::spawn_blocking(RedisCluster::start).await?;
        cluster = Some(c);
    } else {
        redis.start()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let redis_url = cluster
        .as_ref()
        .map_or_else(|| redis.url(), RedisCluster::url);
    let secret = bluecam_server::auth::random_token(32);
    let config = format!("{BENCH_CONFIG}[cluster]\nnode_ttl_secs = {NODE_TTL_SECS}\n");
    let mut nodes = Vec::new();
    for i in 0..3 {
        let dir = base.join(format!("node{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("bench.toml"), &config)?;
        let mut node = Node {
            bin: bin.clone(),
            addr: free_addr()?,
            dir: TempDir(dir),
            secret: secret.clone(),
            redis: Some(redis_url.clone()),
            child: None,
        };
        node.spawn()?;
        nodes.push(node);
    }
    for node in &nodes {
        node.healthy().await?;
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let target = Target {
        kind: TargetKind::Bluecam,
        http: format!("http://{}", addrs[0]),
        addr: addrs[0],
        spread: Vec::new(),
        secret: Secret::new(secret.clone()),
        pid: None,
        child: None,
        _dir: None,
    };
    let rooms = clients / 2;
    progress(&format!(
        "3 nodes, {clients} clients in {rooms} rooms of 2 (partners on different nodes)"
    ));
    create_rooms(&target, "chaos-", rooms, 2).await?;
    let started = Instant::now();
    // Partners on different nodes: room k's peers on nodes k and k + 1; each client's list of
    // nodes starts with its own.
    let home = |i: usize| (i / 2 + i % 2) % addrs.len();
    let fleet = if let Some(transport) = native {
        let urls: Vec<String> = addrs.iter().map(|a| format!("http://{a}")).collect();
        let nodes = |i: usize| {
            let mut mine = urls.clone();
            mine.rotate_left(home(i));
            mine
        };
        let fleet = super::native::Fleet::start(
            &target.secret,
            "chaos-",
            clients,
            nodes,
            transport,
            rate,
            started,
        )
        .await?;
        Clients::Native(fleet)
    } else {
        let mut joined = Vec::with_capacity(clients);
        for i in 0..clients {
            let token = mint(
                &target.secret,
                &format!("chaos-{}", i / 2),
                &format!("c{i}"),
            )?;
            let mut ws = connect(addrs[home(i)], "/v1/ws", Some(source_ip(i))).await?;
            let j = join(&mut ws, token.clone()).await?;
            joined.push((ws, token, j, home(i)));
        }
        let ids: Vec<PeerId> = joined
            .iter()
            .map(|(_, _, j, _)| j.self_.id.clone())
            .collect();
        let counts = Arc::new(Counts::default());
        counts.up.store(clients as u64, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let drain_until = Arc::new(AtomicU64::new(u64::MAX));
        let delivered_at: Vec<Arc<AtomicU64>> =
            (0..clients).map(|_| Arc::new(AtomicU64::new(0))).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (ws, token, j, home)) in joined.into_iter().enumerate() {
            let mut mine = addrs.clone();
            mine.rotate_left(home);
            let client = Client {
                i,
                clients,
                addrs: mine,
                token,
                creds: ResumeCredentials {
                    session: j.session.id.clone(),
                    secret: j.session.secret.clone(),
                },
                partner: ids[i ^ 1].clone(),
                counts: Arc::clone(&counts),
                resumed_at: Arc::new(AtomicU64::new(0)),
                delivered_at: Arc::clone(&delivered_at[i]),
                watchdog: Some(WATCHDOG),
                started,
            };
            tasks.spawn(client.run(ws, rate, Arc::clone(&stop), Arc::clone(&drain_until)));
        }
        Clients::Wire {
            tasks,
            counts,
            stop,
            drain_until,
            delivered_at,
        }
    };
    let mut faults = Vec::new();
    let mut measure = async |name: &str, fleet: &Clients, from: u64| {
        let (times, all) =
            wait_delivering(fleet.delivered_at(), started, from, Duration::from_secs(60)).await;
        faults.push(serde_json::json!({
            "fault": name,
            "delivering_again_ms": {
                "p50": pct(&times, 0.5), "p99": pct(&times, 0.99),
                "max": times.last().copied().unwrap_or(0),
            },
            "every_client_delivering": all,
            "clients_up_after": fleet.up(),
        }));
    };
    let now_ms = || started.elapsed().as_millis() as u64;

    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    progress("SIGKILL of a node, started again at once");
    let t = now_ms();
    nodes[1].stop("KILL")?;
    nodes[1].spawn()?;
    nodes[1].healthy().await?;
    measure("node SIGKILL and restart", &fleet, t).await;

    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let freeze = Duration::from_secs(NODE_TTL_SECS + 2);
    progress(&format!(
        "SIGSTOP of a node for {freeze:?} (past the node expiry), then SIGCONT"
    ));
    let t = now_ms();
    nodes[2].signal("STOP")?;
    tokio::time::sleep(freeze).await;
    nodes[2].signal("CONT")?;
    measure("node frozen past its expiry, then thawed", &fleet, t).await;

    if let Some(c) = cluster {
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress("a Redis Cluster master SIGKILLed (its replica takes over), back as a replica");
        let victim = c.masters().first().copied().context("no master")?;
        let t = now_ms();
        c.kill(victim);
        measure("Redis Cluster master SIGKILL, failover", &fleet, t).await;
        let c = tokio::task::spawn_blocking(move || {
            c.wait_whole();
            c.restart(victim);
            c.wait_whole();
            c
        })
        .await?;

        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress("a Redis Cluster shard loses its data (FLUSHALL on its master)");
        let victim = c.masters().last().copied().context("no master")?;
        let t = now_ms();
        let _ = super::rediscluster::redis_cli(victim, &["flushall"]);
        measure("Redis Cluster shard emptied", &fleet, t).await;
        cluster = Some(c);
    } else {
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress("Redis SIGKILLed, restarted from its append-only file after 1 s");
        let t = now_ms();
        redis.kill();
        tokio::time::sleep(Duration::from_secs(1)).await;
        redis.start()?;
        measure("Redis SIGKILL, restart from its file", &fleet, t).await;

        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress("Redis restarted without its data");
        let t = now_ms();
        redis.kill();
        redis.wipe()?;
        redis.start()?;
        measure("Redis restarted empty", &fleet, t).await;
    }

    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let mut result = fleet.finish(started).await?;
    drop(cluster);
    result["scenario"] = "chaos".into();
    result["redis"] = if redis_cluster {
        "a Redis Cluster of 3 masters and 3 replicas"
    } else {
        "one Redis"
    }
    .into();
    result["nodes"] = 3.into();
    result["node_ttl_secs"] = NODE_TTL_SECS.into();
    result["clients"] = clients.into();
    if let Some(transport) = native {
        result["native"] = true.into();
        result["transport"] = format!("{transport:?}").into();
    }
    result["rate_per_client"] = rate.into();
    result["faults"] = faults.into();
    Ok(result)
}
