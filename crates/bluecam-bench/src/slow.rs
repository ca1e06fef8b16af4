//! `slow-reader`: rooms with steady traffic at a fixed offered rate; then one peer stops
//! reading. Its queue must stay bounded, it must be disconnected (close 4030) within seconds,
//! and the other peers' latency must not change.

use super::*;
use std::sync::atomic::AtomicU8;

/// Phases of the run: 0 everyone reads, 1 one peer has stopped reading.
const PHASES: usize = 2;

/// Reads the server's count of slow-consumer closes from `/metrics`.
async fn slow_closes(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("bluecam_connections_closed_total{code=\"4030\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

pub(super) async fn slow_reader(
    target: &Target,
    rooms: usize,
    room_size: usize,
    rate: u64,
    payload_bytes: usize,
    phase_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    progress(&format!("creating {rooms} rooms of {room_size}"));
    create_rooms(target, "slow-", rooms, room_size).await?;
    let base = Instant::now();
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let pad = "x".repeat(payload_bytes);
    let mut peers = tokio::task::JoinSet::new();
    for r in 0..rooms {
        for p in 0..room_size {
            let token = mint(&target.secret, &format!("slow-{r}"), &format!("p{p}"))?;
            let mut ws = connect(
                target.addr,
                bluecam_proto::WS_PATH,
                Some(source_ip(r * room_size + p)),
            )
            .await?;
            join(&mut ws, token).await?;
            let (mut sink, mut stream) = ws.split();
            let (phase, stop, pad) = (Arc::clone(&phase), Arc::clone(&stop), pad.clone());
            // Room 0's first peer is the one that will stop reading.
            let my_pause = (r == 0 && p == 0).then(|| Arc::clone(&paused));
            let stop_rx = Arc::clone(&stop);
            let phase_rx = Arc::clone(&phase);
            peers.spawn(async move {
                let send = async move {
                    let mut tick =
                        tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let t = base.elapsed().as_nanos() as u64;
                        let raw = RawValue::from_string(format!(
                            "{{\"t\":{t},\"s\":{seq},\"p\":\"{pad}\"}}"
                        ))?;
                        let frame = ClientMessage::Send {
                            to: None,
                            msg: Cow::Owned(raw),
                            reference: None,
                        };
                        if sink.send(Message::text(frame.to_json())).await.is_err() {
                            break; // the slow peer's own connection is closed under it
                        }
                        seq += 1;
                    }
                    anyhow::Ok(())
                };
                let recv = async move {
                    let mut hists = [new_histogram()?, new_histogram()?];
                    let mut closed_with = None;
                    #[derive(serde::Deserialize)]
                    struct Stamp {
                        t: u64,
                    }
                    loop {
                        if let Some(p) = &my_pause {
                            while p.load(Ordering::Relaxed) && !stop_rx.load(Ordering::Relaxed) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                        let next =
                            tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
                        if stop_rx.load(Ordering::Relaxed) {
                            break;
                        }
                        let Ok(msg) = next else { continue };
                        match msg {
                            Some(Ok(Message::Text(text))) => {
                                if let Ok(ServerMessage::Message(m)) =
                                    ServerMessage::from_json(&text)
                                    && let Ok(stamp) = serde_json::from_str::<Stamp>(m.msg.get())
                                {
                                    let now = base.elapsed().as_nanos() as u64;
                                    let ph =
                                        (phase_rx.load(Ordering::Relaxed) as usize).min(PHASES - 1);
                                    if my_pause.is_none() {
                                        hists[ph]
                                            .saturating_record(now.saturating_sub(stamp.t) / 1000);
                                    }
                                }
                            }
                            Some(Ok(Message::Close(frame))) => {
                                closed_with = frame.map(|f| u16::from(f.code));
                                break;
                            }
                            Some(Ok(_)) => {}
                            Some(Err(_)) | None => break,
                        }
                    }
                    anyhow::Ok((hists, closed_with))
                };
                let (sent, received) = tokio::join!(send, recv);
                sent?;
                received
            });
        }
    }
    let http = reqwest::Client::new();
    let closes_before = slow_closes(&http, &target.http).await?;
    progress(&format!("phase 1: everyone reads, {phase_secs} s"));
    let bar = progress::timed("slow-reader: everyone reads", phase_secs, String::new);
    tokio::time::sleep(Duration::from_secs(phase_secs)).await;
    drop(bar);
    let rss_before = target.pid.and_then(rss_kib);
    progress(&format!("phase 2: one peer stops reading, {phase_secs} s"));
    phase.store(1, Ordering::Relaxed);
    paused.store(true, Ordering::Relaxed);
    let stopped_at = Instant::now();
    let mut disconnected_after = None;
    let mut rss_max = rss_before;
    let bar = progress::timed("slow-reader: one peer stopped", phase_secs, String::new);
    while stopped_at.elapsed() < Duration::from_secs(phase_secs) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_max = rss_max.max(target.pid.and_then(rss_kib));
        if disconnected_after.is_none() && slow_closes(&http, &target.http).await? > closes_before {
            disconnected_after = Some(stopped_at.elapsed().as_secs_f64());
        }
    }
    drop(bar);
    stop.store(true, Ordering::Relaxed);
    paused.store(false, Ordering::Relaxed);
    let mut hists = [new_histogram()?, new_histogram()?];
    let mut slow_close = None;
    let mut failed = 0;
    while let Some(r) = peers.join_next().await {
        match r? {
            Ok((h, closed)) => {
                for (all, mine) in hists.iter_mut().zip(h.iter()) {
                    all.add(mine)?;
                }
                slow_close = slow_close.or(closed);
            }
            Err(_) => failed += 1,
        }
    }
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    Ok(serde_json::json!({
        "scenario": "slow-reader",
        "rooms": rooms,
        "room_size": room_size,
        "rate_per_sender": rate,
        "payload_bytes": payload_bytes,
        "phase_secs": phase_secs,
        "others_before": quantiles(&hists[0]),
        "others_after": quantiles(&hists[1]),
        "others_p99_change": p99(&hists[1]) / p99(&hists[0]).max(0.001) - 1.0,
        "slow_peer_disconnected_after_secs": disconnected_after,
        "slow_peer_close_code": slow_close,
        "server_rss_before_kib": rss_before,
        "server_rss_max_during_kib": rss_max,
        "failed_peers": failed,
    }))
}
