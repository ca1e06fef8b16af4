//! `signal`: WebRTC-style signaling between pairs: an offer, an answer and trickled ICE
//! candidates both ways, relayed by the server. Per-hop latency and whole-exchange time.

use super::*;

/// An SDP of a typical audio+video+data offer is about this long.
const SDP_CHARS: usize = 1200;
/// A typical ICE candidate line.
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 46154 typ srflx raddr 10.0.0.2 rport 46154 generation 0 ufrag EEtu network-cost 999";

type Sink = futures_util::stream::SplitSink<Ws, Message>;
type Stream = futures_util::stream::SplitStream<Ws>;

/// Sends one `signal` stamped with the send time.
async fn send_signal(
    sink: &mut Sink,
    to: &PeerId,
    base: Instant,
    kind: &str,
    body: &str,
) -> anyhow::Result<()> {
    let t = base.elapsed().as_nanos() as u64;
    let data = RawValue::from_string(format!("{{\"t\":{t},\"k\":\"{kind}\",\"b\":\"{body}\"}}"))?;
    let frame = ClientMessage::Signal {
        to: to.clone(),
        data: Cow::Owned(data),
        reference: None,
    };
    sink.send(Message::text(frame.to_json())).await?;
    Ok(())
}

/// Reads signals until `want` returns true for the set of kinds seen; records hop latencies.
async fn read_signals(
    stream: &mut Stream,
    base: Instant,
    hops: &mut Histogram<u64>,
    mut done: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        t: u64,
        k: &'a str,
    }
    while let Some(msg) = stream.next().await {
        let Message::Text(text) = msg? else { continue };
        if let ServerMessage::Signal(s) = ServerMessage::from_json(&text)? {
            let stamp: Stamp<'_> = serde_json::from_str(s.data.get())?;
            let now = base.elapsed().as_nanos() as u64;
            hops.saturating_record(now.saturating_sub(stamp.t) / 1000);
            if done(stamp.k) {
                return Ok(());
            }
        }
    }
    bail!("connection closed during the exchange")
}

/// One offer/answer exchange between A and B; returns its duration.
async fn exchange(
    a: (&mut Sink, &mut Stream, &PeerId),
    b: (&mut Sink, &mut Stream, &PeerId),
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
        send_signal(a_sink, b_id, base, "offer", sdp).await?;
        for _ in 0..candidates {
            send_signal(a_sink, b_id, base, "candidate", CANDIDATE).await?;
        }
        let (mut answer, mut cands) = (false, 0);
        read_signals(a_stream, base, hops, |k| {
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
        read_signals(b_stream, base, &mut hops_b, |k| {
            offered |= k == "offer";
            offered
        })
        .await?;
        send_signal(b_sink, a_id, base, "answer", sdp).await?;
        for _ in 0..candidates {
            send_signal(b_sink, a_id, base, "candidate", CANDIDATE).await?;
        }
        let mut cands = 0;
        if candidates > 0 {
            read_signals(b_stream, base, &mut hops_b, |_| {
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
    for p in 0..pairs {
        let room = format!("signal-{p}");
        let tokens = (
            mint(&target.secret, &room, "a")?,
            mint(&target.secret, &room, "b")?,
        );
        let addr = target.addr;
        let sdp = sdp.clone();
        tasks.spawn(async move {
            let mut a = connect(addr, Some(source_ip(2 * p))).await?;
            let a_id = join(&mut a, tokens.0).await?.self_.id;
            let mut b = connect(addr, Some(source_ip(2 * p + 1))).await?;
            let b_id = join(&mut b, tokens.1).await?.self_.id;
            let (mut a_sink, mut a_stream) = a.split();
            let (mut b_sink, mut b_stream) = b.split();
            let mut hops = new_histogram()?;
            let mut whole = new_histogram()?;
            for _ in 0..exchanges {
                let took = exchange(
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
