//! `signal`: WebRTC-style signaling between pairs: an offer, an answer and trickled ICE
//! candidates both ways, relayed by the server. Per-hop latency and whole-exchange time.

use super::*;
use wire::{Wire, join_spec, open, payload_of};

/// An SDP of a typical audio+video+data offer is about this long.
const SDP_CHARS: usize = 1200;
/// A typical ICE candidate line.
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.2 rport 46154 generation 0 ufrag EEtu network-cost 999";

type Sink = futures_util::stream::SplitSink<Ws, Message>;
type Stream = futures_util::stream::SplitStream<Ws>;

/// Sends one signal stamped with the send time (for peerjs as an OFFER, ANSWER or CANDIDATE).
async fn send_signal(
    wire: Wire,
    sink: &mut Sink,
    to: &str,
    base: Instant,
    kind: &str,
    body: &str,
) -> anyhow::Result<()> {
    let t = base.elapsed().as_nanos() as u64;
    let data = format!("{{\"t\":{t},\"k\":\"{kind}\",\"b\":\"{body}\"}}");
    let peerjs_type = match kind {
        "offer" => "OFFER",
        "answer" => "ANSWER",
        _ => "CANDIDATE",
    };
    for frame in wire.frames(&[to.to_owned()], &data, true, peerjs_type)? {
        sink.send(Message::text(frame)).await?;
    }
    Ok(())
}

/// Reads signals until `want` returns true for the set of kinds seen; records hop latencies.
async fn read_signals(
    wire: Wire,
    stream: &mut Stream,
    base: Instant,
    hops: &mut Histogram<u64>,
    mut done: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Stamp {
        t: u64,
        k: Kind,
    }
    #[derive(serde::Deserialize, Clone, Copy)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Offer,
        Answer,
        Candidate,
    }
    while let Some(msg) = stream.next().await {
        let Message::Text(text) = msg? else { continue };
        let now = base.elapsed().as_nanos() as u64;
        if let Some(stamp) = payload_of(wire.kind, &text, |p| serde_json::from_str::<Stamp>(p)) {
            let stamp = stamp?;
            hops.saturating_record(now.saturating_sub(stamp.t) / 1000);
            let k = match stamp.k {
                Kind::Offer => "offer",
                Kind::Answer => "answer",
                Kind::Candidate => "candidate",
            };
            if done(k) {
                return Ok(());
            }
        }
    }
    bail!("connection closed during the exchange")
}

/// One offer/answer exchange between A and B; returns its duration.
async fn exchange(
    wire: Wire,
    a: (&mut Sink, &mut Stream, &str),
    b: (&mut Sink, &mut Stream, &str),
    base: Instant,
    candidates: usize,
    sdp: &str,
    hops: &mut Histogram<u64>,
) -> anyhow::Result<Duration> {
    let (a_sink, a_stream, a_id) = a;
    let (b_sink, b_stream, b_id) = b;
    let t0 = Instant::now();
    let mut hops_b = new_histogram()?;
    let side_a = async {
        send_signal(wire, a_sink, b_id, base, "offer", sdp).await?;
        for _ in 0..candidates {
            send_signal(wire, a_sink, b_id, base, "candidate", CANDIDATE).await?;
        }
        let (mut answer, mut cands) = (false, 0);
        read_signals(wire, a_stream, base, hops, |k| {
            match k {
                "answer" => answer = true,
                _ => cands += 1,
            }
            answer && cands == candidates
        })
        .await?;
        anyhow::Ok(t0.elapsed())
    };
    let side_b = async {
        let mut offered = false;
        read_signals(wire, b_stream, base, &mut hops_b, |k| {
            offered |= k == "offer";
            offered
        })
        .await?;
        send_signal(wire, b_sink, a_id, base, "answer", sdp).await?;
        for _ in 0..candidates {
            send_signal(wire, b_sink, a_id, base, "candidate", CANDIDATE).await?;
        }
        let mut cands = 0;
        if candidates > 0 {
            read_signals(wire, b_stream, base, &mut hops_b, |_| {
                cands += 1;
                cands == candidates
            })
            .await?;
        }
        anyhow::Ok(t0.elapsed())
    };
    let (done_a, done_b) = tokio::try_join!(side_a, side_b)?;
    hops.add(&hops_b)?;
    Ok(done_a.max(done_b))
}

pub(super) async fn signal(
    target: &Target,
    pairs: usize,
    exchanges: usize,
    candidates: usize,
) -> anyhow::Result<serde_json::Value> {
    progress(&format!("creating {pairs} rooms of 2"));
    create_rooms(target, "signal-", pairs, 2).await?;
    let base = Instant::now();
    let sdp = "s".repeat(SDP_CHARS);
    let mut tasks = tokio::task::JoinSet::new();
    let wire = Wire { kind: target.kind };
    for p in 0..pairs {
        let room = format!("signal-{p}");
        let specs = (
            join_spec(target, &room, "a")?,
            join_spec(target, &room, "b")?,
        );
        let addr = target.addr;
        let sdp = sdp.clone();
        tasks.spawn(async move {
            let (mut a, a_id, _) = open(wire.kind, addr, specs.0, Some(source_ip(2 * p))).await?;
            let (b, b_id, _) = open(wire.kind, addr, specs.1, Some(source_ip(2 * p + 1))).await?;
            if wire.kind == TargetKind::Matchbox {
                // matchbox assigns B its id before it can route to B: wait until it tells A.
                let new_peer = format!(r#"{{"NewPeer":"{b_id}"}}"#);
                loop {
                    match a.next().await {
                        Some(Ok(Message::Text(text))) if text.as_str() == new_peer => break,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e.into()),
                        None => bail!("matchbox closed A's connection"),
                    }
                }
            }
            let (mut a_sink, mut a_stream) = a.split();
            let (mut b_sink, mut b_stream) = b.split();
            let mut hops = new_histogram()?;
            let mut whole = new_histogram()?;
            for _ in 0..exchanges {
                let took = exchange(
                    wire,
                    (&mut a_sink, &mut a_stream, &a_id),
                    (&mut b_sink, &mut b_stream, &b_id),
                    base,
                    candidates,
                    &sdp,
                    &mut hops,
                )
                .await?;
                whole.saturating_record(took.as_micros() as u64);
            }
            anyhow::Ok((hops, whole))
        });
    }
    progress(&format!("{pairs} pairs × {exchanges} exchanges"));
    let started = Instant::now();
    let mut hops = new_histogram()?;
    let mut whole = new_histogram()?;
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((h, w)) => {
                hops.add(&h)?;
                whole.add(&w)?;
            }
            Err(_) => failed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "scenario": "signal",
        "target": target.kind.name(),
        "pairs": pairs,
        "exchanges_per_pair": exchanges,
        "candidates_each_way": candidates,
        "failed_pairs": failed,
        "seconds": secs,
        "signals_per_sec": hops.len() as f64 / secs,
        "hop": quantiles(&hops),
        "exchange": quantiles(&whole),
    }))
}
