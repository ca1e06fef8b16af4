//! `relay`: P peers in rooms of k, each broadcasting small messages to its room, either flat out
//! (each sender keeps at most `window` messages undelivered) or at a fixed offered rate (open
//! loop: the k-th message of a sender is due at a fixed time, stamped with that time, and sent
//! late if the generator falls behind, so a slow server cannot slow the load down and hide its
//! own latency). Messages/s delivered, latency, server CPU per million deliveries.
//!
//! The peers connect once; then come one or more timed phases (one per offered rate of a
//! sweep), separated by a pause that lets every message of the phase land. Every payload
//! carries its phase, its sender's index in the room and its send time, so deliveries are
//! attributed and measured whatever the server writes around them.

use super::*;
use std::convert::Infallible;
use std::sync::{Mutex, atomic::AtomicU32};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use wire::{Wire, join_spec, open, payload_of};

/// What to run against one server.
#[derive(Clone, Debug)]
pub(super) struct RelayOpts {
    pub(super) rooms: usize,
    pub(super) room_size: usize,
    pub(super) duration_secs: u64,
    pub(super) payload_bytes: usize,
    pub(super) window: u64,
    /// Offered messages/s (total over all peers), one phase each; empty: one flat-out phase.
    pub(super) rates: Vec<f64>,
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    Pause,
    Window(u64),
    /// Every peer sends one message per `period_ns`, the first at `first_ns` (from `base`)
    /// plus its own stagger.
    Rate {
        period_ns: u64,
        first_ns: u64,
    },
    Stop,
}

#[derive(Clone, Copy, Debug)]
struct Cmd {
    phase: u32,
    mode: Mode,
}

/// Per-sender delivery counter, for the flat-out window.
struct SenderState {
    delivered: AtomicU64,
    wake: Notify,
}

/// Latency histograms are sharded (one per peer would cost too much memory at 16,000 peers).
const SHARDS: usize = 64;

struct Shared {
    base: Instant,
    /// The phase being measured: deliveries of any other phase are ignored.
    phase: AtomicU32,
    deliveries: AtomicU64,
    sent: AtomicU64,
    hists: Vec<Mutex<Histogram<u64>>>,
    stop: CancellationToken,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: u64,
    i: usize,
    h: u32,
}

/// One peer: what it needs to send and to attribute what it receives.
struct Peer {
    ws: Ws,
    index: usize,
    /// The ids of the other members (for servers without broadcast).
    others: Vec<String>,
    senders: Arc<Vec<Arc<SenderState>>>,
    stagger: f64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

/// Where a sender's frames go, and what it counts.
struct Out<'a> {
    sink: &'a mut Sink,
    shared: &'a Shared,
    sent: &'a mut u64,
}

impl Out<'_> {
    async fn send(&mut self, frames: Vec<String>) -> anyhow::Result<()> {
        for frame in frames {
            self.sink.feed(Message::text(frame)).await?;
        }
        self.sink.flush().await?;
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        *self.sent += 1;
        Ok(())
    }
}

/// Flat out: a new message whenever fewer than `window` of this sender's are undelivered.
async fn window_phase(
    out: &mut Out<'_>,
    me: &SenderState,
    window: u64,
    fanout: u64,
    frames: impl Fn(u64, u64) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Infallible> {
    let mut seq = 0u64;
    loop {
        loop {
            let notified = me.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let outstanding = (seq * fanout).saturating_sub(me.delivered.load(Ordering::Acquire));
            if outstanding < window * fanout {
                break;
            }
            notified.await;
        }
        let t = out.shared.base.elapsed().as_nanos() as u64;
        out.send(frames(seq, t)?).await?;
        seq += 1;
    }
}

/// Open loop: message `seq` is due at `first + seq * period` and stamped with that time.
async fn rate_phase(
    out: &mut Out<'_>,
    first: u64,
    period_ns: u64,
    frames: impl Fn(u64, u64) -> anyhow::Result<Vec<String>>,
) -> anyhow::Result<Infallible> {
    let mut seq = 0u64;
    loop {
        let due = first + seq * period_ns;
        tokio::time::sleep_until((out.shared.base + Duration::from_nanos(due)).into()).await;
        out.send(frames(seq, due)?).await?;
        seq += 1;
    }
}

async fn run_peer(
    peer: Peer,
    wire: Wire,
    shared: Arc<Shared>,
    mut cmds: watch::Receiver<Cmd>,
    pad: Arc<str>,
) -> anyhow::Result<u64> {
    let (mut sink, mut stream) = peer.ws.split();
    let me = Arc::clone(&peer.senders[peer.index]);
    let fanout = peer.senders.len() as u64 - 1;
    let index = peer.index;
    let shard = index.wrapping_mul(31).wrapping_add(peer.others.len()) % SHARDS;
    let recv_shared = Arc::clone(&shared);
    let senders = Arc::clone(&peer.senders);
    let send = async {
        let mut sent_total = 0u64;
        let frames = |seq: u64, t: u64, phase: u32| {
            let payload = format!(r#"{{"t":{t},"s":{seq},"i":{index},"h":{phase},"p":"{pad}"}}"#);
            wire.frames(&peer.others, &payload, false, "CANDIDATE")
        };
        let mut out = Out {
            sink: &mut sink,
            shared: &shared,
            sent: &mut sent_total,
        };
        loop {
            let cmd = *cmds.borrow_and_update();
            match cmd.mode {
                Mode::Stop => break,
                Mode::Pause => {}
                Mode::Window(window) => {
                    let phase = window_phase(&mut out, &me, window, fanout, |seq, t| {
                        frames(seq, t, cmd.phase)
                    });
                    tokio::select! {
                        r = phase => match r? {},
                        _ = cmds.changed() => continue,
                    }
                }
                Mode::Rate {
                    period_ns,
                    first_ns,
                } => {
                    let first = first_ns + (peer.stagger * period_ns as f64) as u64;
                    let phase = rate_phase(&mut out, first, period_ns, |seq, t| {
                        frames(seq, t, cmd.phase)
                    });
                    tokio::select! {
                        r = phase => match r? {},
                        _ = cmds.changed() => continue,
                    }
                }
            }
            if cmds.changed().await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
        anyhow::Ok(sent_total)
    };
    let recv = async {
        let shared = recv_shared;
        loop {
            let msg = tokio::select! {
                msg = stream.next() => msg,
                () = shared.stop.cancelled() => break,
            };
            let text = match msg {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => break,
            };
            let now = shared.base.elapsed().as_nanos() as u64;
            let Some(Some(stamp)) =
                payload_of(wire.kind, &text, |p| serde_json::from_str::<Stamp>(p).ok())
            else {
                continue;
            };
            if stamp.h != shared.phase.load(Ordering::Relaxed) {
                continue;
            }
            lock(&shared.hists[shard]).saturating_record(now.saturating_sub(stamp.t) / 1000);
            shared.deliveries.fetch_add(1, Ordering::Relaxed);
            if let Some(s) = senders.get(stamp.i) {
                s.delivered.fetch_add(1, Ordering::AcqRel);
                s.wake.notify_one();
            }
        }
        anyhow::Ok(())
    };
    let (sent, received) = tokio::join!(send, recv);
    received?;
    sent
}

/// Waits until no delivery has landed for 300 ms (at most `max`).
async fn settle(shared: &Shared, max: Duration) {
    let t0 = Instant::now();
    let mut last = shared.deliveries.load(Ordering::Relaxed);
    while t0.elapsed() < max {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = shared.deliveries.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Runs every phase of `opts` against one server.
pub(super) async fn relay_on(
    target: &Target,
    opts: &RelayOpts,
) -> anyhow::Result<serde_json::Value> {
    let RelayOpts {
        rooms, room_size, ..
    } = *opts;
    let kind = target.kind;
    progress(&format!(
        "{}: {rooms} rooms of {room_size}: connecting",
        kind.name()
    ));
    let prefix = format!("relay{room_size}-");
    create_rooms(target, &prefix, rooms, room_size).await?;
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    for r in 0..rooms {
        for p in 0..room_size {
            let spec = join_spec(target, &format!("{prefix}{r}"), &format!("p{p}"))?;
            let sem = Arc::clone(&sem);
            let i = r * room_size + p;
            let addr = target.addr_for(i);
            tasks.spawn(async move {
                let _permit = sem.acquire_owned().await?;
                let (ws, id, _) = open(kind, addr, spec, Some(source_ip(i))).await?;
                anyhow::Ok((r, p, ws, id))
            });
        }
    }
    let mut by_room: Vec<Vec<(usize, Ws, String)>> = (0..rooms).map(|_| Vec::new()).collect();
    while let Some(res) = tasks.join_next().await {
        let (r, p, ws, id) = res??;
        by_room[r].push((p, ws, id));
    }
    let shared = Arc::new(Shared {
        base: Instant::now(),
        phase: AtomicU32::new(0),
        deliveries: AtomicU64::new(0),
        sent: AtomicU64::new(0),
        hists: (0..SHARDS)
            .map(|_| new_histogram().map(Mutex::new))
            .collect::<Result<_, _>>()?,
        stop: CancellationToken::new(),
    });
    let (cmd_tx, cmd_rx) = watch::channel(Cmd {
        phase: 0,
        mode: Mode::Pause,
    });
    let pad: Arc<str> = "x".repeat(opts.payload_bytes).into();
    let wire = Wire { kind };
    let total_peers = (rooms * room_size) as f64;
    let mut all_senders = Vec::new();
    let mut peers = tokio::task::JoinSet::new();
    for (r, mut members) in by_room.into_iter().enumerate() {
        members.sort_by_key(|m| m.0);
        let senders: Arc<Vec<Arc<SenderState>>> = Arc::new(
            (0..members.len())
                .map(|_| {
                    Arc::new(SenderState {
                        delivered: AtomicU64::new(0),
                        wake: Notify::new(),
                    })
                })
                .collect(),
        );
        all_senders.extend(senders.iter().cloned());
        let ids: Vec<String> = members.iter().map(|m| m.2.clone()).collect();
        for (index, (_, ws, _)) in members.into_iter().enumerate() {
            let others = ids
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != index)
                .map(|(_, id)| id.clone())
                .collect();
            // Spread the peers' sending times evenly over a period (room-major order).
            let stagger = (index * rooms + r) as f64 / total_peers;
            let peer = Peer {
                ws,
                index,
                others,
                senders: Arc::clone(&senders),
                stagger,
            };
            peers.spawn(run_peer(
                peer,
                wire,
                Arc::clone(&shared),
                cmd_rx.clone(),
                Arc::clone(&pad),
            ));
        }
    }
    drop(cmd_rx);
    // Let the join fan-out (peer_joined, NewPeer) settle first.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fanout = (room_size - 1) as f64;
    let phases: Vec<Option<f64>> = if opts.rates.is_empty() {
        vec![None]
    } else {
        opts.rates.iter().map(|r| Some(*r)).collect()
    };
    let mut results = Vec::new();
    for (n, rate) in phases.into_iter().enumerate() {
        let phase = n as u32 + 1;
        settle(&shared, Duration::from_secs(5)).await;
        shared.phase.store(phase, Ordering::Relaxed);
        shared.deliveries.store(0, Ordering::Relaxed);
        shared.sent.store(0, Ordering::Relaxed);
        for s in &all_senders {
            s.delivered.store(0, Ordering::Relaxed);
        }
        for h in &shared.hists {
            lock(h).reset();
        }
        let mode = match rate {
            None => Mode::Window(opts.window),
            Some(rate) => Mode::Rate {
                period_ns: (total_peers / rate.max(0.001) * 1e9) as u64,
                first_ns: shared.base.elapsed().as_nanos() as u64 + 10_000_000,
            },
        };
        let label = match rate {
            None => format!("{}: flat out (window {})", kind.name(), opts.window),
            Some(r) => format!("{}: {r} msg/s offered", kind.name()),
        };
        progress(&format!("{label}, {} s", opts.duration_secs));
        let cpu_before = target.pid.and_then(cpu_ticks);
        let t0 = Instant::now();
        cmd_tx.send(Cmd { phase, mode })?;
        let bar = {
            let shared = Arc::clone(&shared);
            progress::timed(&label, opts.duration_secs, move || {
                let d = shared.deliveries.load(Ordering::Relaxed);
                let secs = t0.elapsed().as_secs_f64().max(0.001);
                format!("{:.0} deliveries/s", d as f64 / secs)
            })
        };
        tokio::time::sleep(Duration::from_secs(opts.duration_secs)).await;
        let delivered = shared.deliveries.load(Ordering::Relaxed);
        let seconds = t0.elapsed().as_secs_f64();
        let cpu_after = target.pid.and_then(cpu_ticks);
        drop(bar);
        cmd_tx.send(Cmd {
            phase,
            mode: Mode::Pause,
        })?;
        // The phase's last messages still count for latency (not for the rate).
        settle(&shared, Duration::from_secs(10)).await;
        let sent = shared.sent.load(Ordering::Relaxed);
        let landed = shared.deliveries.load(Ordering::Relaxed);
        let mut hist = new_histogram()?;
        for h in &shared.hists {
            hist.add(&*lock(h))?;
        }
        let server_cpu_secs = match (cpu_before, cpu_after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / TICKS_PER_SEC),
            _ => None,
        };
        let per_sec = delivered as f64 / seconds;
        results.push(serde_json::json!({
            "mode": if rate.is_some() { "rate" } else { "flat-out" },
            "offered_messages_per_sec": rate,
            "offered_deliveries_per_sec": rate.map(|r| r * fanout),
            "window_per_sender": if rate.is_none() { Some(opts.window) } else { None },
            "seconds": seconds,
            "messages_sent": sent,
            "deliveries": delivered,
            "deliveries_per_sec": per_sec,
            "undelivered_after_drain": (sent as f64 * fanout) as u64 - landed.min((sent as f64 * fanout) as u64),
            "server_cpu_secs": server_cpu_secs,
            "server_cpu_utilization": server_cpu_secs.map(|c| c / seconds),
            "server_cpu_secs_per_million_deliveries": server_cpu_secs.map(|c| c / (delivered.max(1) as f64 / 1e6)),
            "deliveries_per_server_cpu_sec": server_cpu_secs.map(|c| delivered as f64 / c.max(0.01)),
            "latency": quantiles(&hist),
        }));
    }
    cmd_tx.send(Cmd {
        phase: 0,
        mode: Mode::Stop,
    })?;
    shared.stop.cancel();
    let mut failed_peers = 0;
    while let Some(r) = peers.join_next().await {
        if r?.is_err() {
            failed_peers += 1;
        }
    }
    let mut out = serde_json::json!({
        "target": kind.name(),
        "rooms": rooms,
        "room_size": room_size,
        "payload_bytes": opts.payload_bytes,
        "one_frame_per": if kind.broadcasts() { "message" } else { "recipient" },
        "failed_peers": failed_peers,
    });
    if results.len() == 1 {
        // A single phase: its figures at the top level.
        if let (Some(obj), Some(serde_json::Value::Object(phase))) =
            (out.as_object_mut(), results.pop())
        {
            obj.extend(phase);
        }
    } else {
        out["points"] = serde_json::Value::Array(results);
    }
    Ok(out)
}

/// Ratios of BlueCam's figures to the baseline's (throughput: higher is better; latency and
/// CPU: lower is better).
pub(super) fn ratios(ours: &serde_json::Value, base: &serde_json::Value) -> serde_json::Value {
    let r = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => serde_json::json!(a / b),
        _ => serde_json::Value::Null,
    };
    let one = |o: &serde_json::Value, b: &serde_json::Value| {
        serde_json::json!({
            "deliveries_per_sec": r(&o["deliveries_per_sec"], &b["deliveries_per_sec"]),
            "latency_p50": r(&o["latency"]["p50_ms"], &b["latency"]["p50_ms"]),
            "latency_p99": r(&o["latency"]["p99_ms"], &b["latency"]["p99_ms"]),
            "latency_p999": r(&o["latency"]["p999_ms"], &b["latency"]["p999_ms"]),
            "server_cpu_secs_per_million_deliveries": r(
                &o["server_cpu_secs_per_million_deliveries"],
                &b["server_cpu_secs_per_million_deliveries"],
            ),
        })
    };
    match (ours["points"].as_array(), base["points"].as_array()) {
        (Some(o), Some(b)) => {
            serde_json::Value::Array(o.iter().zip(b).map(|(o, b)| one(o, b)).collect())
        }
        _ => one(ours, base),
    }
}

/// The plot's series of a sweep result.
pub(super) fn series(name: &str, result: &serde_json::Value) -> plot::Series {
    let points = result["points"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    Some((
                        p["offered_deliveries_per_sec"].as_f64()?,
                        p["latency"]["p50_ms"].as_f64()?,
                        p["latency"]["p99_ms"].as_f64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    plot::Series {
        name: name.to_owned(),
        points,
    }
}
