//! `relay`: every peer broadcasts flat out (bounded window); deliveries/s and latency.

use super::*;

/// Per-sender delivery counter, for the flat-out window.
struct SenderState {
    delivered: AtomicU64,
    wake: tokio::sync::Notify,
}

pub(super) async fn relay(
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
            let sem = Arc::clone(&sem);
            let i = r * room_size + p;
            let addr = target.addr_for(i);
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
