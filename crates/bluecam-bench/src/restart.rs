//! `restart`: N clients in two-peer rooms on one node, each sending numbered messages to its
//! partner through the relay; the node is restarted (SIGTERM, then SIGKILL), each time started
//! again at once on the same address and data dir. Measures how long until every client has
//! resumed its session (same peer id) and counts messages end to end: every one must arrive
//! exactly once and in order. Like the SDK, the clients acknowledge end to end and retransmit
//! what is not acknowledged after a resume: what a crashed process held in memory (resume
//! buffers) is recovered that way, and the count of retransmissions says how much that was.

use super::*;
use bluecam_proto::ResumeCredentials;

/// How often an unacknowledged message is sent again while connected.
const RETRANSMIT: Duration = Duration::from_secs(2);
/// Reconnection back-off bounds (the SDK uses 250 ms to 5 s; a benchmark wants the floor).
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A `bluecam serve` child that can be stopped and started again on the same address and dir
/// (with `redis`, a cluster node).
pub(super) struct Node {
    pub(super) bin: ServerBin,
    pub(super) addr: SocketAddr,
    pub(super) dir: TempDir,
    pub(super) secret: String,
    pub(super) redis: Option<String>,
    pub(super) child: Option<Child>,
}

impl Node {
    pub(super) fn spawn(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(self.bin.path());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.dir.0.join("bench.toml"))
            .arg("--bind")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(self.dir.0.join("data"));
        if let Some(redis) = &self.redis {
            cmd.args(["--redis", redis]);
        }
        let child = cmd
            .env("BLUECAM_API_SECRET", &self.secret)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the server")?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends `signal` without waiting (SIGSTOP, SIGCONT).
    pub(super) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status()?;
            anyhow::ensure!(status.success(), "kill -{signal} failed");
        }
        Ok(())
    }

    pub(super) async fn healthy(&self) -> anyhow::Result<()> {
        // (Each check bounded: a server that takes the connection and never answers is not
        // healthy.)
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        for _ in 0..400 {
            if http
                .get(format!("http://{}/healthz", self.addr))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("the server did not become healthy")
    }

    /// Sends `signal` and waits for the process to exit.
    pub(super) fn stop(&mut self, signal: &str) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} failed");
        child.wait()?;
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop("KILL");
    }
}

/// Counters shared by every client.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) sent: AtomicU64,
    pub(super) delivered: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) out_of_order: AtomicU64,
    pub(super) retransmitted: AtomicU64,
    pub(super) resumes: AtomicU64,
    pub(super) expired: AtomicU64,
    /// Clients connected and joined right now.
    pub(super) up: AtomicU64,
    /// Clients whose sends are all acknowledged after the senders stopped (each keeps reading
    /// and acknowledging until every client is).
    drained: AtomicU64,
}

pub(super) struct Client {
    pub(super) i: usize,
    /// How many clients there are (to know when all have drained).
    pub(super) clients: usize,
    /// The nodes to connect to: after a lost connection, the next one (as the SDK does).
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) token: String,
    pub(super) creds: ResumeCredentials,
    pub(super) partner: PeerId,
    pub(super) counts: Arc<Counts>,
    /// When this client last resumed (ms since the run's start), for the resume times.
    pub(super) resumed_at: Arc<AtomicU64>,
    /// When this client last had a message delivered (ms since the run's start).
    pub(super) delivered_at: Arc<AtomicU64>,
    /// A connection that brings nothing for this long is given up (the SDK's watchdog): a
    /// frozen server answers nothing and closes nothing.
    pub(super) watchdog: Option<Duration>,
    pub(super) started: Instant,
}

pub(super) enum Ended {
    /// Asked to stop, every message acknowledged or the drain deadline passed.
    Done { unacked: u64 },
    /// The server refused the resume: the session is gone.
    Expired,
}

impl Client {
    /// Runs until `stop` is set and its sends are acknowledged (or `drain_until` passes).
    pub(super) async fn run(
        self,
        ws: Ws,
        rate: f64,
        stop: Arc<AtomicBool>,
        drain_until: Arc<AtomicU64>,
    ) -> anyhow::Result<Ended> {
        let mut ws = Some(ws);
        let mut next_seq = 0u64;
        // Sent and not acknowledged, oldest first (all retransmitted after a resume).
        let mut unacked: std::collections::VecDeque<(u64, Instant)> = Default::default();
        let mut expected = 0u64;
        let mut attempt = 0u32;
        let mut send_every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        send_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        let mut drained = false;
        let mut node = 0usize;
        let mut last_heard = Instant::now();
        loop {
            let Some(socket) = ws.as_mut() else {
                // Reconnect with back-off and resume the session.
                let base = BACKOFF_MIN
                    .saturating_mul(1 << attempt.min(4))
                    .min(BACKOFF_MAX);
                // Spread over [base/2, base) by client, so the clients do not come back in lockstep.
                let spread = ((self.i * 7919 + attempt as usize) % 100) as f64 / 200.0;
                tokio::time::sleep(base.mul_f64(0.5 + spread)).await;
                attempt += 1;
                node = (node + 1) % self.addrs.len();
                match self.resume(self.addrs[node]).await {
                    Ok(Some(new)) => {
                        ws = Some(new);
                        attempt = 0;
                        last_heard = Instant::now();
                        self.counts.resumes.fetch_add(1, Ordering::Relaxed);
                        self.counts.up.fetch_add(1, Ordering::Relaxed);
                        self.resumed_at
                            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        // Everything unacknowledged again, in order.
                        let socket = ws.as_mut().context("just set")?;
                        for (seq, at) in unacked.iter_mut() {
                            self.counts.retransmitted.fetch_add(1, Ordering::Relaxed);
                            *at = Instant::now();
                            if send(socket, &self.partner, "s", *seq).await.is_err() {
                                break;
                            }
                        }
                    }
                    Ok(None) => {
                        self.counts.expired.fetch_add(1, Ordering::Relaxed);
                        return Ok(Ended::Expired);
                    }
                    Err(_) => {} // not back yet
                }
                continue;
            };
            let lost = tokio::select! {
                _ = send_every.tick(), if !stop.load(Ordering::Relaxed) => {
                    unacked.push_back((next_seq, Instant::now()));
                    self.counts.sent.fetch_add(1, Ordering::Relaxed);
                    next_seq += 1;
                    send(socket, &self.partner, "s", next_seq - 1).await.is_err()
                }
                _ = check.tick() => {
                    if stop.load(Ordering::Relaxed) {
                        if unacked.is_empty() && !drained {
                            drained = true;
                            self.counts.drained.fetch_add(1, Ordering::Relaxed);
                        }
                        let everyone = self.counts.drained.load(Ordering::Relaxed) as usize
                            >= self.clients;
                        let late = self.started.elapsed().as_millis() as u64
                            > drain_until.load(Ordering::Relaxed);
                        if everyone || late {
                            let _ = socket.close(None).await;
                            return Ok(Ended::Done { unacked: unacked.len() as u64 });
                        }
                    }
                    let mut broken = self.watchdog.is_some_and(|w| last_heard.elapsed() >= w);
                    for (seq, at) in unacked.iter_mut() {
                        if broken {
                            break;
                        }
                        if at.elapsed() >= RETRANSMIT {
                            self.counts.retransmitted.fetch_add(1, Ordering::Relaxed);
                            *at = Instant::now();
                            if send(socket, &self.partner, "s", *seq).await.is_err() {
                                broken = true;
                                break;
                            }
                        }
                    }
                    broken
                }
                msg = socket.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        last_heard = Instant::now();
                        if let Ok(ServerMessage::Message(m)) = ServerMessage::from_json(&text) {
                            let v: serde_json::Value =
                                serde_json::from_str(m.msg.get()).unwrap_or_default();
                            if let Some(a) = v["a"].as_u64() {
                                while unacked.front().is_some_and(|(s, _)| *s <= a) {
                                    unacked.pop_front();
                                }
                                false
                            } else if let Some(s) = v["s"].as_u64() {
                                match s.cmp(&expected) {
                                    std::cmp::Ordering::Equal => {
                                        expected += 1;
                                        self.counts.delivered.fetch_add(1, Ordering::Relaxed);
                                        self.delivered_at.store(
                                            self.started.elapsed().as_millis() as u64,
                                            Ordering::Relaxed,
                                        );
                                    }
                                    std::cmp::Ordering::Less => {
                                        self.counts.duplicates.fetch_add(1, Ordering::Relaxed);
                                    }
                                    std::cmp::Ordering::Greater => {
                                        // A gap: dropped here, the sender retransmits it.
                                        self.counts.out_of_order.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                expected > 0
                                    && send(socket, &self.partner, "a", expected - 1).await.is_err()
                            } else {
                                false
                            }
                        } else {
                            false
                        }
                    }
                    Some(Ok(_)) => {
                        last_heard = Instant::now();
                        false
                    }
                    Some(Err(_)) | None => true,
                },
            };
            if lost {
                ws = None;
                self.counts.up.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// One resume attempt at `addr`: `Ok(None)` when the server says the session is gone.
    async fn resume(&self, addr: SocketAddr) -> anyhow::Result<Option<Ws>> {
        let connecting = connect(addr, "/v1/ws", Some(source_ip(self.i)));
        // A frozen node accepts the connection (its kernel does) and answers nothing.
        let mut ws = tokio::time::timeout(Duration::from_secs(2), connecting)
            .await
            .context("connect timed out")??;
        let frame = ClientMessage::Join {
            token: self.token.clone(),
            resume: Some(self.creds.clone()),
        }
        .to_json();
        ws.send(Message::text(frame)).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, ws.next()).await {
            if let Message::Text(text) = msg? {
                match ServerMessage::from_json(&text)? {
                    ServerMessage::Joined(_) => return Ok(Some(ws)),
                    ServerMessage::Error(e)
                        if e.code == bluecam_proto::ErrorCode::SessionExpired =>
                    {
                        return Ok(None);
                    }
                    ServerMessage::Error(e) => bail!("resume failed: {}", e.code),
                    _ => {}
                }
            }
        }
        bail!("closed before joined")
    }
}

async fn send(ws: &mut Ws, to: &PeerId, key: &str, n: u64) -> anyhow::Result<()> {
    let frame = serde_json::json!({"op": "send", "to": [to], "msg": {key: n}}).to_string();
    ws.send(Message::text(frame)).await?;
    Ok(())
}

/// Waits until every client is up again (or `deadline`); returns the resume times of this
/// restart, in ms from `from` (the signal).
async fn wait_resumed(
    counts: &Counts,
    clients: usize,
    resumed_at: &[Arc<AtomicU64>],
    from: u64,
    deadline: Duration,
) -> Vec<u64> {
    let until = Instant::now() + deadline;
    while (counts.up.load(Ordering::Relaxed) as usize) < clients && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times: Vec<u64> = resumed_at
        .iter()
        .map(|t| t.load(Ordering::Relaxed))
        .filter(|t| *t >= from)
        .map(|t| t - from)
        .collect();
    times.sort_unstable();
    times
}

/// Stops the senders and waits for every client to drain (or `window_ms` to pass); returns
/// the messages still unacknowledged and the sessions the server refused to resume.
pub(super) async fn drain(
    mut tasks: tokio::task::JoinSet<anyhow::Result<Ended>>,
    stop: &AtomicBool,
    drain_until: &AtomicU64,
    started: Instant,
    window_ms: u64,
) -> anyhow::Result<(u64, u64)> {
    progress("stopping the senders; draining");
    stop.store(true, Ordering::Relaxed);
    drain_until.store(
        started.elapsed().as_millis() as u64 + window_ms,
        Ordering::Relaxed,
    );
    let (mut unacked, mut expired) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r?? {
            Ended::Done { unacked: u } => unacked += u,
            Ended::Expired => expired += 1,
        }
    }
    Ok((unacked, expired))
}

pub(super) fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One `bluecam serve` started here (the bench's configuration, a data dir in a temp dir),
/// healthy, and the target that reaches it.
pub(super) async fn single_node(bin: &ServerBin, tag: &str) -> anyhow::Result<(Node, Target)> {
    let dir = std::env::temp_dir().join(format!("bluecam-bench-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    std::fs::write(dir.0.join("bench.toml"), BENCH_CONFIG)?;
    let mut node = Node {
        bin: bin.clone(),
        addr: free_addr()?,
        dir,
        secret: bluecam_server::auth::random_token(32),
        redis: None,
        child: None,
    };
    node.spawn()?;
    node.healthy().await?;
    let target = Target {
        kind: TargetKind::Bluecam,
        http: format!("http://{}", node.addr),
        addr: node.addr,
        spread: Vec::new(),
        secret: Secret::new(node.secret.clone()),
        pid: None,
        child: None,
        _dir: None,
    };
    Ok((node, target))
}

pub(super) async fn restart(
    bin: &ServerBin,
    clients: usize,
    rate: f64,
    settle_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let clients = clients.max(2) / 2 * 2;
    let (mut node, target) = single_node(bin, "restart").await?;
    let rooms = clients / 2;
    progress(&format!("{clients} clients in {rooms} rooms of 2"));
    create_rooms(&target, "restart-", rooms, 2).await?;
    let mut joined = Vec::with_capacity(clients);
    for i in 0..clients {
        let token = mint(
            &target.secret,
            &format!("restart-{}", i / 2),
            &format!("r{i}"),
        )?;
        let mut ws = connect(node.addr, "/v1/ws", Some(source_ip(i))).await?;
        let j = join(&mut ws, token.clone()).await?;
        joined.push((ws, token, j));
    }
    let ids: Vec<PeerId> = joined.iter().map(|(_, _, j)| j.self_.id.clone()).collect();
    let counts = Arc::new(Counts::default());
    counts.up.store(clients as u64, Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let drain_until = Arc::new(AtomicU64::new(u64::MAX));
    let started = Instant::now();
    let resumed_at: Vec<Arc<AtomicU64>> =
        (0..clients).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (ws, token, j)) in joined.into_iter().enumerate() {
        let client = Client {
            i,
            clients,
            addrs: vec![node.addr],
            token,
            creds: ResumeCredentials {
                session: j.session.id.clone(),
                secret: j.session.secret.clone(),
            },
            partner: ids[i ^ 1].clone(),
            counts: Arc::clone(&counts),
            resumed_at: Arc::clone(&resumed_at[i]),
            delivered_at: Arc::new(AtomicU64::new(0)),
            watchdog: None,
            started,
        };
        tasks.spawn(client.run(ws, rate, Arc::clone(&stop), Arc::clone(&drain_until)));
    }
    let mut phases = Vec::new();
    for signal in ["TERM", "KILL"] {
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress(&format!("SIG{signal}, then start again"));
        let t0 = started.elapsed().as_millis() as u64;
        let before = counts.resumes.load(Ordering::Relaxed);
        node.stop(signal)?;
        let exited = started.elapsed().as_millis() as u64 - t0;
        node.spawn()?;
        node.healthy().await?;
        let healthy = started.elapsed().as_millis() as u64 - t0;
        let times = wait_resumed(&counts, clients, &resumed_at, t0, Duration::from_secs(60)).await;
        let resumed = counts.resumes.load(Ordering::Relaxed) - before;
        phases.push(serde_json::json!({
            "signal": format!("SIG{signal}"),
            "exit_ms": exited,
            "healthy_ms": healthy,
            "resumed": resumed,
            "resume_ms": {
                "p50": pct(&times, 0.5), "p99": pct(&times, 0.99), "max": times.last().copied().unwrap_or(0),
            },
            "all_resumed": resumed as usize >= clients,
        }));
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let (unacked, expired) = drain(tasks, &stop, &drain_until, started, 30_000).await?;
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let sent = c(&counts.sent);
    let delivered = c(&counts.delivered);
    Ok(serde_json::json!({
        "scenario": "restart",
        "clients": clients,
        "rate_per_client": rate,
        "restarts": phases,
        "sessions_expired": expired,
        "messages": {
            "sent": sent,
            "delivered_in_order_once": delivered,
            "lost": sent.saturating_sub(delivered),
            "unacknowledged_at_end": unacked,
            "retransmitted": c(&counts.retransmitted),
            "duplicates_discarded": c(&counts.duplicates),
            "gaps_discarded": c(&counts.out_of_order),
        },
    }))
}
