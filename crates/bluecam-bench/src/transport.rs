//! `transport`: the relay over the HTTP transport (long-polling) against the relay over
//! WebSockets, on the same server with the same load: P two-peer rooms, each peer sending to
//! the other at a fixed rate for a while. Messages delivered, latency, and server CPU per
//! million deliveries for each transport.
//!
//! The HTTP client speaks the transport as the SDK does: one poll and one send in flight per
//! peer, every message due since the last send going in the next request (batching is the
//! transport's design, not a bench artefact). Every payload carries its send time.

use super::*;
use std::sync::atomic::AtomicU64;

/// Which transport a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Transport {
    Ws,
    Http,
    /// One run of each, WebSocket first.
    Both,
}

#[derive(serde::Deserialize)]
struct Stamp {
    t: u64,
    /// The message's number from its sender (from 0).
    n: u64,
}

/// Counts and latencies of one run.
struct Tally {
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Messages that arrived twice, or out of their sender's order.
    disordered: AtomicU64,
    requests: AtomicU64,
    /// Writers still sending: the count of sent messages is final once none is.
    writers: AtomicU64,
    hist: std::sync::Mutex<Histogram<u64>>,
}

impl Tally {
    /// One arrival; `next` is the number expected from this sender.
    fn record(&self, base: Instant, msg: &str, next: &mut u64) {
        if let Ok(s) = serde_json::from_str::<Stamp>(msg) {
            if s.n != *next {
                self.disordered.fetch_add(1, Ordering::Relaxed);
            }
            *next = s.n + 1;
            let now = base.elapsed().as_micros() as u64;
            let _ = self
                .hist
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(now.saturating_sub(s.t).max(1));
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The messages of a server frame's JSON: `message` frames' `msg`.
fn messages_of(frame: &serde_json::Value) -> Option<String> {
    (frame["op"] == "message").then(|| frame["msg"].to_string())
}

pub(super) async fn transport(
    target: &Target,
    which: Transport,
    pairs: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let kinds: &[Transport] = match which {
        Transport::Both => &[Transport::Ws, Transport::Http],
        one => std::slice::from_ref(match one {
            Transport::Ws => &Transport::Ws,
            _ => &Transport::Http,
        }),
    };
    let mut out = serde_json::Map::new();
    for (n, kind) in kinds.iter().enumerate() {
        let name = if *kind == Transport::Ws { "ws" } else { "http" };
        progress(&format!(
            "{name}: {pairs} two-peer rooms, {rate} msg/s per peer, {duration:?}"
        ));
        let prefix = format!("tr{n}-{}-", wire::run_tag());
        create_rooms(target, &prefix, pairs, 2).await?;
        out.insert(
            name.to_owned(),
            run(target, *kind, &prefix, pairs, rate, duration).await?,
        );
    }
    let mut result = serde_json::json!({
        "scenario": "transport",
        "pairs": pairs,
        "rate_per_peer": rate,
        "duration_secs": duration.as_secs_f64(),
    });
    for (k, v) in out {
        result[k] = v;
    }
    Ok(result)
}

async fn run(
    target: &Target,
    kind: Transport,
    prefix: &str,
    pairs: usize,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    let tally = Arc::new(Tally {
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        disordered: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        writers: AtomicU64::new(0),
        hist: std::sync::Mutex::new(new_histogram()?),
    });
    let base = Instant::now();
    let stop = tokio_util::sync::CancellationToken::new();
    // Join every peer first; then all send for `duration`.
    let mut peers = Vec::new();
    for p in 0..pairs {
        let room = format!("{prefix}{p}");
        for side in 0..2 {
            let token = mint(&target.secret, &room, &format!("u{side}"))?;
            peers.push((p, side, token));
        }
    }
    let go = Arc::new(tokio::sync::Barrier::new(peers.len() + 1));
    let ids: Arc<std::sync::Mutex<HashMap<(usize, usize), String>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (p, side, token)) in peers.into_iter().enumerate() {
        let (tally, stop, go, ids) = (
            Arc::clone(&tally),
            stop.clone(),
            Arc::clone(&go),
            Arc::clone(&ids),
        );
        let addr = target.addr;
        let http = target.http.clone();
        let source = source_ip(i);
        tasks.spawn(async move {
            let ctx = PeerCtx {
                pair: p,
                side,
                ids: &ids,
                go: &go,
                tally: &tally,
                stop: &stop,
                base,
                period: Duration::from_secs_f64(1.0 / rate.max(0.001)),
            };
            match kind {
                Transport::Http => peer_http(&http, source, token, ctx).await,
                _ => peer_ws(addr, source, token, ctx).await,
            }
        });
    }
    go.wait().await;
    let cpu0 = target.pid.and_then(cpu_ticks);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let sent_at_stop = tally.sent.load(Ordering::Relaxed);
    stop.cancel();
    // Let what is in flight land (the last poll answers within one round trip), once every
    // writer has stopped (one may be sending what fell due at the stop).
    let settle = Instant::now() + Duration::from_secs(5);
    while (tally.writers.load(Ordering::Acquire) > 0
        || tally.delivered.load(Ordering::Relaxed) < tally.sent.load(Ordering::Relaxed))
        && Instant::now() < settle
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu1 = target.pid.and_then(cpu_ticks);
    let secs = started.elapsed().as_secs_f64();
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    let (sent, delivered) = (
        tally.sent.load(Ordering::Relaxed),
        tally.delivered.load(Ordering::Relaxed),
    );
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS_PER_SEC),
        _ => None,
    };
    let hist = tally.hist.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(serde_json::json!({
        "sent": sent,
        "sent_before_stop": sent_at_stop,
        "delivered": delivered,
        "duplicated_or_out_of_order": tally.disordered.load(Ordering::Relaxed),
        "seconds": secs,
        "delivered_per_sec": delivered as f64 / secs,
        "latency": quantiles(&hist),
        "http_requests": tally.requests.load(Ordering::Relaxed),
        "server_cpu_secs": cpu,
        "server_cpu_secs_per_million_deliveries": cpu.map(|c| c / (delivered.max(1) as f64 / 1e6)),
    }))
}

/// What every peer of a run shares, and who it is.
struct PeerCtx<'a> {
    pair: usize,
    side: usize,
    ids: &'a std::sync::Mutex<HashMap<(usize, usize), String>>,
    go: &'a tokio::sync::Barrier,
    tally: &'a Tally,
    stop: &'a tokio_util::sync::CancellationToken,
    base: Instant,
    period: Duration,
}

/// Publishes this peer's id and waits for the other's.
async fn other_id(
    ids: &std::sync::Mutex<HashMap<(usize, usize), String>>,
    pair: usize,
    side: usize,
    me: String,
) -> String {
    ids.lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert((pair, side), me);
    loop {
        if let Some(id) = ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(pair, 1 - side))
        {
            return id.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A message's frame: `send` to `to`, stamped with its due time and its number.
fn frame(to: &str, due_us: u64, n: u64) -> String {
    format!(r#"{{"op":"send","to":["{to}"],"msg":{{"t":{due_us},"n":{n}}}}}"#)
}

async fn peer_ws(
    addr: SocketAddr,
    source: Ipv4Addr,
    token: String,
    ctx: PeerCtx<'_>,
) -> anyhow::Result<()> {
    let PeerCtx {
        pair,
        side,
        ids,
        go,
        tally,
        stop,
        base,
        period,
    } = ctx;
    let mut ws = connect(addr, bluecam_proto::WS_PATH, Some(source)).await?;
    let me = join(&mut ws, token).await?.self_.id.to_string();
    let to = other_id(ids, pair, side, me).await;
    let (mut tx, mut rx) = ws.split();
    go.wait().await;
    let reader = async {
        let mut next = 0;
        while let Some(Ok(msg)) = rx.next().await {
            if let Message::Text(text) = msg
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(m) = messages_of(&v)
            {
                tally.record(base, &m, &mut next);
            }
        }
    };
    let writer = async {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0;
        tally.writers.fetch_add(1, Ordering::AcqRel);
        while !stop.is_cancelled() {
            tick.tick().await;
            let due = base.elapsed().as_micros() as u64;
            tally.sent.fetch_add(1, Ordering::Relaxed);
            if tx.send(Message::text(frame(&to, due, n))).await.is_err() {
                break;
            }
            n += 1;
        }
        tally.writers.fetch_sub(1, Ordering::AcqRel);
        std::future::pending::<()>().await;
    };
    tokio::join!(reader, writer);
    Ok(())
}

async fn peer_http(
    http: &str,
    source: Ipv4Addr,
    token: String,
    ctx: PeerCtx<'_>,
) -> anyhow::Result<()> {
    let PeerCtx {
        pair,
        side,
        ids,
        go,
        tally,
        stop,
        base,
        period,
    } = ctx;
    // Two connections: one for the poll, one for sends (as a browser keeps them).
    let client = || {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::V4(source))
            .tcp_nodelay(true)
            .build()
    };
    let (poller, sender) = (client()?, client()?);
    let join = ClientMessage::Join {
        token,
        resume: None,
    }
    .to_json();
    let v: serde_json::Value = sender
        .post(format!("{http}/v1/http/open"))
        .body(join)
        .send()
        .await?
        .json()
        .await?;
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let sid = v["sid"].as_str().context("no sid")?.to_owned();
    let me = v["frames"][0]["self"]["id"]
        .as_str()
        .context("not joined")?
        .to_owned();
    let to = other_id(ids, pair, side, me).await;
    go.wait().await;
    let mut ack = v["first"].as_u64().unwrap_or(1);
    let reader = async {
        let mut next = 0;
        loop {
            let body = serde_json::json!({"sid": sid, "ack": ack}).to_string();
            let Ok(res) = poller
                .post(format!("{http}/v1/http/poll"))
                .body(body)
                .send()
                .await
            else {
                break;
            };
            tally.requests.fetch_add(1, Ordering::Relaxed);
            let Ok(v) = res.json::<serde_json::Value>().await else {
                break;
            };
            let first = v["first"].as_u64().unwrap_or(0);
            for (i, f) in v["frames"].as_array().into_iter().flatten().enumerate() {
                let n = first + i as u64;
                if n == ack + 1 {
                    ack = n;
                    if let Some(m) = messages_of(f) {
                        tally.record(base, &m, &mut next);
                    }
                }
            }
            if v.get("close").is_some() {
                break;
            }
        }
    };
    let writer = async {
        let mut seq = 2u64;
        let mut next_due = Instant::now();
        tally.writers.fetch_add(1, Ordering::AcqRel);
        while !stop.is_cancelled() {
            tokio::time::sleep_until(next_due.into()).await;
            // Everything due by now goes in this request.
            let mut body = String::new();
            let mut n = 0u64;
            let now = Instant::now();
            while next_due <= now {
                let due = next_due.duration_since(base).as_micros() as u64;
                body.push('\n');
                body.push_str(&frame(&to, due, seq - 2 + n));
                next_due += period;
                n += 1;
            }
            // Counted as sent once handed to the request (it may land after the stop).
            tally.sent.fetch_add(n, Ordering::Relaxed);
            let head = serde_json::json!({"sid": sid, "seq": seq}).to_string();
            let ok = sender
                .post(format!("{http}/v1/http/send"))
                .body(head + &body)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            tally.requests.fetch_add(1, Ordering::Relaxed);
            if !ok {
                break;
            }
            seq += n;
        }
        tally.writers.fetch_sub(1, Ordering::AcqRel);
        std::future::pending::<()>().await;
    };
    tokio::join!(reader, writer);
    Ok(())
}
