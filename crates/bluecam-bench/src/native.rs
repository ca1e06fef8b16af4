//! `restart --native`: the `restart` scenario driven by real native peers (`bluecam-client`,
//! the crate behind `bluecam join`) instead of the generator's own protocol clients. Each
//! client is a `Room` in a two-peer room sending numbered messages to its partner; the node is
//! restarted (SIGTERM, then SIGKILL). Measured: how long until every client is connected
//! again, and every message counted end to end with the SDK's promise: each `send` settles
//! delivered (acknowledged by the partner) or undeliverable (the sender is told), each partner
//! gets what it gets once and in order, and nothing is lost silently.

use super::restart::{pct, single_node};
use super::*;
use bluecam_client::room::{Delivery, Event, Options, Room, SendError, Transport};
use futures_util::FutureExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::sync::oneshot::error::RecvError;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    delivered: AtomicU64,
    undeliverable: AtomicU64,
    /// Messages the partner got, once and in the order sent.
    received: AtomicU64,
    /// Messages the partner got out of order or twice (must be 0).
    broken: AtomicU64,
    /// Numbers the partner never got, skipped by a later one: each was undeliverable, its
    /// sender told (the delivery bound passed).
    skipped: AtomicU64,
    /// `connected` after a `reconnecting`.
    resumes: AtomicU64,
    /// Clients connected right now.
    up: AtomicU64,
    /// Rooms that ended (the server refused a resume).
    ended: AtomicU64,
    /// Clients whose deliveries have all settled after the senders stopped (each keeps reading
    /// and acknowledging until every client has).
    settled: AtomicU64,
}

/// What one native peer received and settled (the counting of [`client`]).
struct Tally {
    counts: Arc<Counts>,
    delivered_at: Arc<AtomicU64>,
    started: Instant,
    /// The partner's next number.
    expected: u64,
}

impl Tally {
    fn outcome(&self, outcome: Result<Result<(), SendError>, RecvError>) {
        match outcome {
            Ok(Ok(())) => self.counts.delivered.fetch_add(1, Ordering::Relaxed),
            _ => self.counts.undeliverable.fetch_add(1, Ordering::Relaxed),
        };
    }

    /// A message of the partner: the next number, or a later one after numbers its sender
    /// was told were undeliverable (the delivery bound passed: a new epoch); an earlier one
    /// is out of order or twice.
    fn message(&mut self, data: &RawValue) {
        let i = serde_json::from_str::<serde_json::Value>(data.get())
            .ok()
            .and_then(|v| v["i"].as_u64());
        match i {
            Some(i) if i >= self.expected => {
                self.counts
                    .skipped
                    .fetch_add(i - self.expected, Ordering::Relaxed);
                self.expected = i + 1;
                self.counts.received.fetch_add(1, Ordering::Relaxed);
                let now = self.started.elapsed().as_millis() as u64;
                self.delivered_at.store(now, Ordering::Relaxed);
            }
            _ => {
                self.counts.broken.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// One native peer: sends to `partner` at `rate` until `stop`, then waits for its deliveries
/// to settle, and keeps reading until every client has (or `deadline` passes).
#[allow(clippy::too_many_arguments)]
async fn client(
    mut room: Room,
    partner: String,
    rate: f64,
    clients: u64,
    counts: Arc<Counts>,
    resumed_at: Arc<AtomicU64>,
    delivered_at: Arc<AtomicU64>,
    stop: CancellationToken,
    started: Instant,
) {
    let mut outstanding: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let mut tally = Tally {
        counts: Arc::clone(&counts),
        delivered_at,
        started,
        expected: 0,
    };
    let mut next = 0u64;
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sending = true;
    let mut settled = false;
    let mut down = false;
    let deadline = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(deadline);
    // (While draining: a look at whether every client has settled.)
    let mut check = tokio::time::interval(Duration::from_millis(50));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if !sending && !settled && outstanding.is_empty() {
            settled = true;
            counts.settled.fetch_add(1, Ordering::Release);
        }
        if settled && counts.settled.load(Ordering::Acquire) >= clients {
            break;
        }
        tokio::select! {
            _ = every.tick(), if sending => {
                let d = room.send("n", format!(r#"{{"i":{next}}}"#), Some(vec![partner.clone()]));
                next += 1;
                counts.sent.fetch_add(1, Ordering::Relaxed);
                outstanding.push(d);
            }
            Some(outcome) = outstanding.next(), if !outstanding.is_empty() => tally.outcome(outcome),
            event = room.next_event() => match event {
                Some(Event::Message { data, .. }) => tally.message(&data),
                Some(Event::Connection("reconnecting")) => {
                    down = true;
                    counts.up.fetch_sub(1, Ordering::Relaxed);
                }
                Some(Event::Connection("connected")) if down => {
                    down = false;
                    counts.up.fetch_add(1, Ordering::Relaxed);
                    counts.resumes.fetch_add(1, Ordering::Relaxed);
                    resumed_at.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
                Some(Event::Connection("disconnected")) | None => {
                    counts.ended.fetch_add(1, Ordering::Relaxed);
                    if !down {
                        counts.up.fetch_sub(1, Ordering::Relaxed);
                    }
                    // (Its deliveries settle as the room ends.)
                    while let Some(outcome) = outstanding.next().await {
                        tally.outcome(outcome);
                    }
                    if !settled {
                        counts.settled.fetch_add(1, Ordering::Release);
                    }
                    return;
                }
                Some(_) => {}
            },
            () = stop.cancelled(), if sending => {
                sending = false;
                // Draining: bounded.
                deadline.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(90));
            }
            _ = check.tick(), if !sending => {}
            () = &mut deadline => break,
        }
    }
    // What the room already took (and acknowledged) but this task has not read yet counts too.
    while let Some(Some(event)) = room.next_event().now_or_never() {
        if let Event::Message { data, .. } = event {
            tally.message(&data);
        }
    }
    room.leave().await;
    // (Whatever was still outstanding settled with the leave.)
    while let Some(outcome) = outstanding.next().await {
        tally.outcome(outcome);
    }
}

/// Native peers in two-peer rooms, each sending to its partner until [`Fleet::finish`].
pub(super) struct Fleet {
    tasks: tokio::task::JoinSet<()>,
    counts: Arc<Counts>,
    stop: CancellationToken,
    /// When each client last connected again after a drop (ms since `started`).
    pub(super) resumed_at: Vec<Arc<AtomicU64>>,
    /// When each client last got a message from its partner (ms since `started`).
    pub(super) delivered_at: Vec<Arc<AtomicU64>>,
}

impl Fleet {
    /// Joins `clients` peers (an even number), client `i` into room `{prefix}{i / 2}` as
    /// identity `n{i}` through the nodes `nodes(i)` (its list, in order), and starts them
    /// sending `rate` messages a second each to its partner.
    pub(super) async fn start(
        secret: &Secret,
        prefix: &str,
        clients: usize,
        nodes: impl Fn(usize) -> Vec<String>,
        transport: Transport,
        rate: f64,
        started: Instant,
    ) -> anyhow::Result<Self> {
        let mut joined = Vec::with_capacity(clients);
        for i in 0..clients {
            let token = mint(secret, &format!("{prefix}{}", i / 2), &format!("n{i}"))?;
            let mut list = nodes(i);
            let first = list.remove(0);
            let options = Options {
                transport,
                nodes: list,
                // (What is measured is the server's relay.)
                webrtc: false,
                ..Options::default()
            };
            let room = Room::join(&first, &token, options)
                .await
                .with_context(|| format!("client {i} joining"))?;
            joined.push(room);
        }
        let ids: Vec<String> = joined.iter().map(|r| r.me().id.to_string()).collect();
        let counts = Arc::new(Counts::default());
        counts.up.store(clients as u64, Ordering::Relaxed);
        let stop = CancellationToken::new();
        let at = || -> Vec<Arc<AtomicU64>> { (0..clients).map(|_| Arc::default()).collect() };
        let (resumed_at, delivered_at) = (at(), at());
        let mut tasks = tokio::task::JoinSet::new();
        for (i, room) in joined.into_iter().enumerate() {
            tasks.spawn(client(
                room,
                ids[i ^ 1].clone(),
                rate,
                clients as u64,
                Arc::clone(&counts),
                Arc::clone(&resumed_at[i]),
                Arc::clone(&delivered_at[i]),
                stop.clone(),
                started,
            ));
        }
        Ok(Self {
            tasks,
            counts,
            stop,
            resumed_at,
            delivered_at,
        })
    }

    /// Clients connected right now.
    pub(super) fn up(&self) -> u64 {
        self.counts.up.load(Ordering::Relaxed)
    }

    /// `connected` after a drop, so far.
    fn resumes(&self) -> u64 {
        self.counts.resumes.load(Ordering::Relaxed)
    }

    /// Stops the senders, waits until every delivery settled (every client keeps reading
    /// until all have, at most 90 s), and counts the messages.
    pub(super) async fn finish(mut self) -> serde_json::Value {
        progress("stopping the senders; every delivery settles");
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let counts = &self.counts;
        let (sent, delivered, undeliverable) = (
            c(&counts.sent),
            c(&counts.delivered),
            c(&counts.undeliverable),
        );
        serde_json::json!({
            "rooms_ended": c(&counts.ended),
            "messages": {
                "sent": sent,
                "delivered": delivered,
                "undeliverable_sender_told": undeliverable,
                "lost_silently": sent.saturating_sub(delivered + undeliverable),
                "received_once_in_order": c(&counts.received),
                "received_out_of_order_or_twice": c(&counts.broken),
                "skipped_after_undeliverable": c(&counts.skipped),
            },
        })
    }
}

/// The `--transport` of the scenarios with native clients.
pub(super) fn transport(name: &str) -> anyhow::Result<Transport> {
    Ok(match name {
        "auto" => Transport::Auto,
        "websocket" => Transport::WebSocket,
        "http" => Transport::Http,
        other => bail!("--transport: auto, websocket or http, not {other}"),
    })
}

pub(super) async fn restart_native(
    bin: &ServerBin,
    clients: usize,
    rate: f64,
    settle_secs: u64,
    transport: Transport,
) -> anyhow::Result<serde_json::Value> {
    let clients = clients.max(2) / 2 * 2;
    let (mut node, target) = single_node(bin, "native").await?;
    let http = target.http.clone();
    let rooms = clients / 2;
    progress(&format!(
        "{clients} native clients ({transport:?}) in {rooms} rooms of 2"
    ));
    create_rooms(&target, "native-", rooms, 2).await?;
    let started = Instant::now();
    let fleet = Fleet::start(
        &target.secret,
        "native-",
        clients,
        |_| vec![http.clone()],
        transport,
        rate,
        started,
    )
    .await?;
    let mut phases = Vec::new();
    for signal in ["TERM", "KILL"] {
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        progress(&format!("SIG{signal}, then start again"));
        let t0 = started.elapsed().as_millis() as u64;
        let before = fleet.resumes();
        node.stop(signal)?;
        let exited = started.elapsed().as_millis() as u64 - t0;
        node.spawn()?;
        node.healthy().await?;
        let healthy = started.elapsed().as_millis() as u64 - t0;
        // Every client connected again since the signal (or a minute passed).
        let until = Instant::now() + Duration::from_secs(60);
        let mut times = loop {
            let times: Vec<u64> = fleet
                .resumed_at
                .iter()
                .map(|t| t.load(Ordering::Relaxed))
                .filter(|t| *t >= t0)
                .map(|t| t - t0)
                .collect();
            if times.len() >= clients || Instant::now() >= until {
                break times;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        times.sort_unstable();
        phases.push(serde_json::json!({
            "signal": format!("SIG{signal}"),
            "exit_ms": exited,
            "healthy_ms": healthy,
            "resumed": fleet.resumes() - before,
            "resume_ms": {
                "p50": pct(&times, 0.5), "p99": pct(&times, 0.99), "max": times.last().copied().unwrap_or(0),
            },
            "all_resumed": times.len() >= clients,
        }));
    }
    tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    let mut result = fleet.finish().await;
    result["scenario"] = "restart".into();
    result["clients"] = clients.into();
    result["native"] = true.into();
    result["transport"] = format!("{transport:?}").into();
    result["rate_per_client"] = rate.into();
    result["restarts"] = phases.into();
    Ok(result)
}
