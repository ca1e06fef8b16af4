//! `churn`: a steady population of joined connections of which a share is replaced every
//! minute (half leave, half just drop and let their session expire); server memory and open
//! files are sampled to show they stay flat (no leak).

use super::*;
use tokio::sync::oneshot;

/// Open file descriptors of a process.
pub(super) fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// One connection held until told to go; `leave` says whether it sends `leave` or just drops.
pub(super) async fn hold(
    addr: SocketAddr,
    source: Ipv4Addr,
    token: String,
    go: oneshot::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut ws = connect(addr, bluecam_proto::WS_PATH, Some(source)).await?;
    join(&mut ws, token).await?;
    let mut go = go;
    loop {
        tokio::select! {
            leave = &mut go => {
                if leave.unwrap_or(true) {
                    ws.send(Message::text(ClientMessage::Leave.to_json())).await?;
                    let _ = ws.close(None).await;
                }
                return Ok(());
            }
            msg = ws.next() => if msg.is_none() { return Ok(()) },
        }
    }
}

pub(super) async fn churn(
    target: &Target,
    connections: usize,
    room_size: usize,
    percent_per_min: f64,
    duration_secs: u64,
    sample_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let rooms = connections.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    // Dropped peers stay (resumable) for the resume window, so rooms need headroom.
    create_rooms(target, "churn-", rooms, room_size * 4).await?;
    let mut slots: Vec<Option<oneshot::Sender<bool>>> = Vec::with_capacity(connections);
    let mut tasks = tokio::task::JoinSet::new();
    let mut serial = 0usize;
    let mut open = |i: usize,
                    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>|
     -> anyhow::Result<oneshot::Sender<bool>> {
        serial += 1;
        let token = mint(
            &target.secret,
            &format!("churn-{}", i / room_size),
            &format!("c{serial}"),
        )?;
        let (tx, rx) = oneshot::channel();
        tasks.spawn(hold(target.addr, source_ip(serial), token, rx));
        Ok(tx)
    };
    for i in 0..connections {
        slots.push(Some(open(i, &mut tasks)?));
    }
    let per_sec = connections as f64 * percent_per_min / 100.0 / 60.0;
    progress(&format!(
        "replacing {per_sec:.1} connections/s for {duration_secs} s"
    ));
    let started = Instant::now();
    let shown = Arc::new(AtomicU64::new(0));
    let bar = {
        let shown = Arc::clone(&shown);
        progress::timed("churn", duration_secs, move || {
            format!("{} replaced", shown.load(Ordering::Relaxed))
        })
    };
    let mut samples = Vec::new();
    let mut owed = 0.0;
    let mut replaced = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut next_sample = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(duration_secs) {
        tick.tick().await;
        owed += per_sec / 10.0;
        while owed >= 1.0 {
            owed -= 1.0;
            let i = replaced * 7919 % connections; // spread over rooms
            if let Some(go) = slots[i].take() {
                let _ = go.send(replaced.is_multiple_of(2));
            }
            slots[i] = Some(open(i, &mut tasks)?);
            replaced += 1;
            shown.store(replaced as u64, Ordering::Relaxed);
        }
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
        if started.elapsed() >= next_sample {
            next_sample += Duration::from_secs(sample_secs.max(1));
            samples.push(serde_json::json!({
                "t": started.elapsed().as_secs(),
                "rss_kib": target.pid.and_then(rss_kib),
                "open_files": target.pid.and_then(open_files),
            }));
        }
    }
    drop(bar);
    for go in slots.into_iter().flatten() {
        let _ = go.send(true);
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(serde_json::json!({
        "scenario": "churn",
        "connections": connections,
        "room_size": room_size,
        "percent_replaced_per_min": percent_per_min,
        "seconds": started.elapsed().as_secs_f64(),
        "replaced": replaced,
        "samples": samples,
    }))
}
