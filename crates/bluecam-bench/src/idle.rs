//! `idle`: hold N joined connections from several generator processes; server RSS per
//! connection and idle CPU.

use super::*;

pub(super) async fn idle(
    target: &Target,
    connections: usize,
    room_size: usize,
    procs: usize,
    hold_secs: u64,
) -> anyhow::Result<serde_json::Value> {
    let rooms = connections.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    create_rooms(target, "idle-", rooms, room_size).await?;
    let rss_before = target.pid.and_then(rss_kib);
    progress(&format!(
        "opening {connections} connections from {procs} processes"
    ));
    let started = Instant::now();
    let per = connections.div_ceil(procs);
    let mut workers = Vec::new();
    for w in 0..procs {
        let start = w * per;
        let count = per.min(connections.saturating_sub(start));
        if count == 0 {
            break;
        }
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--target", target.kind.name(), "idle-worker", "--addr"])
            .arg(target.addr.to_string())
            .args(["--room-prefix", "idle-", "--room-size"])
            .arg(room_size.to_string())
            .arg("--start")
            .arg(start.to_string())
            .arg("--count")
            .arg(count.to_string())
            .arg("--source-ip")
            .arg(source_ip(w).to_string())
            .env("BLUECAM_API_SECRET", target.secret.expose())
            .env("BLUECAM_BENCH_TAG", wire::run_tag())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push((child, std::io::BufReader::new(stdout)));
    }
    let mut held = 0usize;
    let mut failed = 0usize;
    for (_, out) in &mut workers {
        let mut line = String::new();
        let out_ref = out;
        tokio::task::block_in_place(|| out_ref.read_line(&mut line))?;
        let mut parts = line.split_whitespace().skip(1);
        held += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        failed += parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    let open_secs = started.elapsed().as_secs_f64();
    progress(&format!(
        "{held} connections joined ({failed} failed) in {open_secs:.1} s; holding {hold_secs} s"
    ));
    // Let the post-join burst settle before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = target.pid.and_then(cpu_ticks);
    let t0 = Instant::now();
    let bar = progress::timed("idle: holding", hold_secs, String::new);
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    drop(bar);
    let held_for = t0.elapsed().as_secs_f64();
    let cpu_after = target.pid.and_then(cpu_ticks);
    let rss_after = target.pid.and_then(rss_kib);
    for (mut child, _) in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(b), Some(a)) if held > 0 => Some((a.saturating_sub(b)) as f64 * 1024.0 / held as f64),
        _ => None,
    };
    let idle_cpu = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) => Some((a - b) as f64 / TICKS_PER_SEC / held_for * 100.0),
        _ => None,
    };
    Ok(serde_json::json!({
        "scenario": "idle",
        "target": target.kind.name(),
        "connections_requested": connections,
        "connections_held": held,
        "connections_failed": failed,
        "room_size": room_size,
        "generator_processes": procs,
        "open_secs": open_secs,
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_per_connection_bytes": per_conn,
        "server_idle_cpu_percent": idle_cpu,
    }))
}

pub(super) async fn idle_worker(
    target: &Target,
    prefix: &str,
    room_size: usize,
    start: usize,
    count: usize,
    source: Ipv4Addr,
) -> anyhow::Result<()> {
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(count.max(1));
    // A token, not a Notify: a task busy with a frame when the stop comes must still see it.
    let stop = tokio_util::sync::CancellationToken::new();
    for i in start..start + count {
        let room = format!("{prefix}{}", i / room_size);
        let spec = wire::join_spec(target, &room, &format!("idle-{i}"))?;
        let (kind, addr) = (target.kind, target.addr);
        let sem = Arc::clone(&sem);
        let done = done_tx.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let permit = sem.acquire_owned().await;
            // A server at its own file limit leaves connections unanswered in its backlog:
            // count them as failed rather than wait forever.
            let ws = match tokio::time::timeout(
                Duration::from_secs(15),
                wire::open(kind, addr, spec, Some(source)),
            )
            .await
            {
                Ok(r) => r.map(|(ws, _, _)| ws),
                Err(_) => Err(anyhow::anyhow!("no answer within 15 s")),
            };
            drop(permit);
            let ok = ws.is_ok();
            let _ = done.send(ok).await;
            if let Ok(mut ws) = ws {
                // Keep reading so pings are answered; stop when told.
                loop {
                    tokio::select! {
                        msg = ws.next() => if msg.is_none() { break },
                        () = stop.cancelled() => break,
                    }
                }
                let _ = ws.close(None).await;
            }
        });
    }
    drop(done_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    // Each task reports once, then keeps its sender while it holds its connection.
    while ok + failed < count {
        match done_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    say(&format!("ready {ok} {failed}"));
    // Hold until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
    })
    .await?;
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}
