//! `soak`: everything a hostile, busy day brings, at once and for a long time. Joined
//! connections churn (a share replaced every minute, half leaving, half dropping), pairs relay
//! steadily and check every message arrives once and in order, peers stop reading in a room
//! that floods them, and hostile clients send bad frame bursts, oversized frames, invalid
//! UTF-8, slowloris headers and silent connections. Server RSS and open files are sampled:
//! they must stay flat, and every hostile client must see its documented close.

use super::churn::{hold, open_files};
use super::*;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    sync::oneshot,
};
use tokio_tungstenite::tungstenite::protocol::frame::{
    Frame,
    coding::{Data, OpCode},
};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub(super) struct SoakOpts {
    pub minutes: f64,
    pub connections: usize,
    pub relay_rooms: usize,
    /// Messages per second each relay peer sends.
    pub rate: u64,
    pub sample_secs: u64,
    /// Two-peer rooms of native peers (`bluecam-client`) relaying at `rate` throughout, each
    /// send settled delivered or undeliverable and counted once and in order at its partner.
    pub native_pairs: usize,
}

/// What the relay pairs saw.
#[derive(Default)]
struct RelayCount {
    sent: AtomicU64,
    delivered: AtomicU64,
    /// Messages that did not come next in their sender's order (lost, repeated or reordered).
    out_of_order: AtomicU64,
    /// Relay connections that ended before the soak did.
    dropped: AtomicU64,
}

/// Hostile clients, and the close each saw.
#[derive(Default)]
struct Hostile {
    runs: AtomicU64,
    /// Runs that saw the documented close code.
    as_documented: AtomicU64,
    /// Runs that saw something else (recorded in `odd`).
    odd: std::sync::Mutex<Vec<String>>,
    slow_readers: AtomicU64,
    /// Slow readers the server disconnected.
    slow_cut: AtomicU64,
    /// Of those, the ones whose close frame (4030) still reached them (it can only when
    /// the reader reads again within the server's close timeout).
    slow_cut_4030: AtomicU64,
    slowloris: AtomicU64,
    slowloris_cut: AtomicU64,
}

pub(super) async fn soak(target: &Target, opts: &SoakOpts) -> anyhow::Result<serde_json::Value> {
    let duration = Duration::from_secs_f64((opts.minutes * 60.0).max(1.0));
    let churn_rooms = opts.connections.div_ceil(10).max(1);
    progress(&format!(
        "soak for {:.1} min: {} churning connections, {} relay pairs at {}/s each, slow readers and hostile clients",
        duration.as_secs_f64() / 60.0,
        opts.connections,
        opts.relay_rooms,
        opts.rate
    ));
    create_rooms(target, "soak-churn-", churn_rooms, 40).await?;
    create_rooms(target, "soak-relay-", opts.relay_rooms, 4).await?;
    create_rooms(target, "soak-slow-", 1, 50).await?;
    create_rooms(target, "soak-bad-", 1, 1000).await?;
    let native = if opts.native_pairs > 0 {
        create_rooms(target, "soak-native-", opts.native_pairs, 2).await?;
        let fleet = super::native::Fleet::start(
            &target.secret,
            "soak-native-",
            opts.native_pairs * 2,
            |_| vec![target.http.clone()],
            bluecam_client::room::Transport::Auto,
            opts.rate.max(1) as f64,
            Instant::now(),
        )
        .await?;
        Some(fleet)
    } else {
        None
    };
    let stop = CancellationToken::new();
    let relay = Arc::new(RelayCount::default());
    let hostile = Arc::new(Hostile::default());
    let mut tasks = tokio::task::JoinSet::new();
    for room in 0..opts.relay_rooms {
        for side in 0..2 {
            let token = mint(
                &target.secret,
                &format!("soak-relay-{room}"),
                &format!("r{room}-{side}"),
            )?;
            tasks.spawn(relay_peer(
                target.addr,
                source_ip(room * 2 + side),
                token,
                opts.rate,
                Arc::clone(&relay),
                stop.clone(),
            ));
        }
    }
    tasks.spawn(slow_readers(
        target.addr,
        target.secret.clone(),
        Arc::clone(&hostile),
        stop.clone(),
    ));
    tasks.spawn(bad_clients(
        target.addr,
        target.secret.clone(),
        Arc::clone(&hostile),
        stop.clone(),
    ));
    // Churn: a steady population, 20 % replaced per minute.
    let mut held = tokio::task::JoinSet::new();
    let mut slots: Vec<Option<oneshot::Sender<bool>>> = Vec::with_capacity(opts.connections);
    let mut serial = 0usize;
    let mut open = |i: usize,
                    held: &mut tokio::task::JoinSet<anyhow::Result<()>>|
     -> anyhow::Result<oneshot::Sender<bool>> {
        serial += 1;
        let token = mint(
            &target.secret,
            &format!("soak-churn-{}", i / 10),
            &format!("c{serial}"),
        )?;
        let (tx, rx) = oneshot::channel();
        held.spawn(hold(target.addr, source_ip(serial + 7), token, rx));
        Ok(tx)
    };
    for i in 0..opts.connections {
        slots.push(Some(open(i, &mut held)?));
    }
    let per_tick = opts.connections as f64 * 0.20 / 60.0 / 10.0;
    let started = Instant::now();
    let bar = progress::timed("soak", duration.as_secs(), {
        let relay = Arc::clone(&relay);
        move || format!("{} delivered", relay.delivered.load(Ordering::Relaxed))
    });
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut owed = 0.0;
    let mut replaced = 0usize;
    let mut next_sample = Duration::ZERO;
    let mut churn_failures = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let i = replaced * 7919 % opts.connections.max(1);
            if let Some(go) = slots[i].take() {
                let _ = go.send(replaced.is_multiple_of(2));
            }
            slots[i] = Some(open(i, &mut held)?);
            replaced += 1;
        }
        while let Some(done) = held.try_join_next() {
            if !matches!(done, Ok(Ok(()))) {
                churn_failures += 1;
            }
        }
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(opts.sample_secs.max(1));
            samples.push(sample(target, started, &relay));
        }
    }
    drop(bar);
    stop.cancel();
    for go in slots.into_iter().flatten() {
        let _ = go.send(true);
    }
    while let Some(done) = held.join_next().await {
        if !matches!(done, Ok(Ok(()))) {
            churn_failures += 1;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let native = match native {
        Some(fleet) => fleet.finish().await,
        None => serde_json::Value::Null,
    };
    // Everything closed: what the server holds now, once the dropped sessions expired too
    // (they wait out the resume window, 60 s by default; sampled once here as it stands).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sample(target, started, &relay);
    let rss: Vec<u64> = samples
        .iter()
        .filter_map(|s| s["rss_kib"].as_u64())
        .collect();
    let files: Vec<u64> = samples
        .iter()
        .filter_map(|s| s["open_files"].as_u64())
        .collect();
    // Growth over the last two thirds (the first third is warm-up: buffers and allocator
    // arenas reach their working size).
    let from = rss.len() / 3;
    let growth =
        |v: &[u64]| -> Option<i64> { Some(*v.last()? as i64 - *v.get(v.len() / 3)? as i64) };
    let odd = hostile.odd.lock().map(|o| o.clone()).unwrap_or_default();
    Ok(serde_json::json!({
        "scenario": "soak",
        "minutes": started.elapsed().as_secs_f64() / 60.0,
        "connections": opts.connections,
        "replaced": replaced,
        "churn_failures": churn_failures,
        "relay": {
            "pairs": opts.relay_rooms,
            "sent": relay.sent.load(Ordering::Relaxed),
            "delivered": relay.delivered.load(Ordering::Relaxed),
            "out_of_order": relay.out_of_order.load(Ordering::Relaxed),
            "dropped_connections": relay.dropped.load(Ordering::Relaxed),
        },
        "native": native,
        "hostile": {
            "runs": hostile.runs.load(Ordering::Relaxed),
            "closed_as_documented": hostile.as_documented.load(Ordering::Relaxed),
            "odd": odd.iter().take(20).collect::<Vec<_>>(),
            "odd_count": odd.len(),
            "slow_readers": hostile.slow_readers.load(Ordering::Relaxed),
            "slow_readers_cut": hostile.slow_cut.load(Ordering::Relaxed),
            "slow_readers_saw_4030": hostile.slow_cut_4030.load(Ordering::Relaxed),
            "slowloris": hostile.slowloris.load(Ordering::Relaxed),
            "slowloris_cut": hostile.slowloris_cut.load(Ordering::Relaxed),
        },
        "rss_kib": {
            "min": rss.iter().min(),
            "max": rss.iter().max(),
            "at_one_third": rss.get(from),
            "last": rss.last(),
            "growth_last_two_thirds": growth(&rss),
        },
        "open_files": {
            "min": files.iter().min(),
            "max": files.iter().max(),
            "at_one_third": files.get(files.len() / 3),
            "last": files.last(),
        },
        "after": after,
        "samples": samples,
    }))
}

fn sample(target: &Target, started: Instant, relay: &RelayCount) -> serde_json::Value {
    serde_json::json!({
        "t": started.elapsed().as_secs(),
        "rss_kib": target.pid.and_then(rss_kib),
        "open_files": target.pid.and_then(open_files),
        "delivered": relay.delivered.load(Ordering::Relaxed),
    })
}

/// One peer of a relay pair: sends `{"s": me, "i": n}` at `rate`, and checks that its
/// partner's messages come in order with no gap or repeat.
async fn relay_peer(
    addr: SocketAddr,
    source: Ipv4Addr,
    token: String,
    rate: u64,
    count: Arc<RelayCount>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut ws = connect(addr, bluecam_proto::WS_PATH, Some(source)).await?;
    let joined = join(&mut ws, token).await?;
    let me = joined.self_.id;
    // Send only once the partner is in the room: a broadcast reaches those present, so
    // messages sent before it joined would count as lost.
    if joined.peers.is_empty() {
        loop {
            let Some(Ok(msg)) = ws.next().await else {
                bail!("closed before the partner joined");
            };
            if let Message::Text(text) = msg
                && text.contains(r#""op":"peer_joined""#)
            {
                break;
            }
        }
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut next_out = 0u64;
    let mut expected: HashMap<String, u64> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                let _ = ws.send(Message::text(ClientMessage::Leave.to_json())).await;
                return Ok(());
            }
            _ = tick.tick() => {
                let frame = serde_json::json!({"op": "send", "msg": {"s": me.as_str(), "i": next_out}});
                if ws.send(Message::text(frame.to_string())).await.is_err() {
                    count.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                next_out += 1;
                count.sent.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => {
                let Some(Ok(msg)) = msg else {
                    count.dropped.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                };
                let Message::Text(text) = msg else { continue };
                let v: serde_json::Value = serde_json::from_str(&text)?;
                if v["op"] != "message" {
                    continue;
                }
                let (Some(s), Some(i)) = (v["msg"]["s"].as_str(), v["msg"]["i"].as_u64()) else {
                    continue;
                };
                let next = expected.entry(s.to_owned()).or_insert(0);
                if i != *next {
                    count.out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                *next = i + 1;
                count.delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Every 10 s: a peer joins the flooded room and stops reading; after 10 s it reads again:
/// the server must have cut it off (the connection ends within 15 s of reading; with close
/// 4030 if that frame still got through). One flooder sends 64 KiB messages to the room 50
/// times a second throughout.
async fn slow_readers(
    addr: SocketAddr,
    secret: Secret,
    hostile: Arc<Hostile>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut flooder = connect(addr, bluecam_proto::WS_PATH, None).await?;
    join(&mut flooder, mint(&secret, "soak-slow-0", "flooder")?).await?;
    let pad = "z".repeat(64 << 10);
    let flood = serde_json::json!({"op": "send", "msg": pad}).to_string();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut every = tokio::time::interval(Duration::from_secs(10));
    let mut readers = tokio::task::JoinSet::new();
    let mut n = 0usize;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                flooder.send(Message::text(flood.clone())).await?;
            }
            msg = flooder.next() => if msg.is_none() { bail!("the flooder was disconnected") },
            _ = every.tick() => {
                n += 1;
                let token = mint(&secret, "soak-slow-0", &format!("slow{n}"))?;
                let hostile = Arc::clone(&hostile);
                readers.spawn(async move {
                    let mut ws = connect(addr, bluecam_proto::WS_PATH, None).await?;
                    join(&mut ws, token).await?;
                    hostile.slow_readers.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    if let Ok(code) =
                        tokio::time::timeout(Duration::from_secs(15), closed_with(&mut ws)).await
                    {
                        hostile.slow_cut.fetch_add(1, Ordering::Relaxed);
                        if code == Some(4030) {
                            hostile.slow_cut_4030.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    anyhow::Ok(())
                });
            }
        }
        while let Some(done) = readers.try_join_next() {
            done??;
        }
    }
    let _ = flooder
        .send(Message::text(ClientMessage::Leave.to_json()))
        .await;
    while let Some(done) = readers.join_next().await {
        done??;
    }
    Ok(())
}

/// Reads until the server closes; its close code (`None` without a close frame).
async fn closed_with(ws: &mut Ws) -> Option<u16> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Twice a second, one hostile client in turn; each must see its documented close.
async fn bad_clients(
    addr: SocketAddr,
    secret: Secret,
    hostile: Arc<Hostile>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut runs = tokio::task::JoinSet::new();
    let mut n = 0usize;
    while !stop.is_cancelled() {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        n += 1;
        let token = mint(&secret, "soak-bad-0", &format!("bad{n}"))?;
        let hostile = Arc::clone(&hostile);
        let kind = n % 5;
        runs.spawn(async move {
            if kind == 4 {
                return slowloris(addr, &hostile).await;
            }
            let mut ws = connect(addr, bluecam_proto::WS_PATH, None).await?;
            join(&mut ws, token).await?;
            let (expect, what) = match kind {
                0 => {
                    for _ in 0..25 {
                        ws.feed(Message::text("garbage")).await?;
                    }
                    ws.flush().await?;
                    (4029, "25 bad frames")
                }
                1 => {
                    let huge = serde_json::json!({"op": "send", "msg": "x".repeat(3 << 20)});
                    let _ = ws.send(Message::text(huge.to_string())).await;
                    (1009, "oversized frame")
                }
                2 => {
                    let bad =
                        Frame::message(vec![b'"', 0xff, b'"'], OpCode::Data(Data::Text), true);
                    ws.send(Message::Frame(bad)).await?;
                    (1007, "invalid UTF-8")
                }
                _ => {
                    for _ in 0..21 {
                        ws.feed(Message::binary(vec![1u8, 2, 3])).await?;
                    }
                    ws.flush().await?;
                    (4029, "binary frames")
                }
            };
            hostile.runs.fetch_add(1, Ordering::Relaxed);
            let got = closed_with(&mut ws).await;
            if got == Some(expect) {
                hostile.as_documented.fetch_add(1, Ordering::Relaxed);
            } else if let Ok(mut odd) = hostile.odd.lock() {
                odd.push(format!("{what}: expected {expect}, got {got:?}"));
            }
            anyhow::Ok(())
        });
        while let Some(done) = runs.try_join_next() {
            done??;
        }
    }
    while let Some(done) = runs.join_next().await {
        done??;
    }
    Ok(())
}

/// A request header sent a byte a second; the server must cut it (header timeout).
async fn slowloris(addr: SocketAddr, hostile: &Hostile) -> anyhow::Result<()> {
    let mut tcp = TcpStream::connect(addr).await?;
    hostile.slowloris.fetch_add(1, Ordering::Relaxed);
    let header =
        b"GET /healthz HTTP/1.1\r\nHost: soak\r\nX-Slow: 0123456789012345678901234567890123456789";
    let mut buf = [0u8; 512];
    for b in header {
        if tcp.write_all(&[*b]).await.is_err() {
            break;
        }
        // Cut: EOF, a reset or the server's last answer (408) within the second.
        if tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf))
            .await
            .is_ok()
        {
            hostile.slowloris_cut.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    Ok(())
}
