//! `idle`: hold N joined connections from several generator processes; server RSS per
//! connection and idle CPU, fresh from the join, and again once every connection has
//! exchanged pings and gone idle (a used connection may hold more than a fresh one).

use super::*;

pub(super) async fn idle(
    target: &Target,
    connections: usize,
    room_size: usize,
    procs: usize,
    hold_secs: u64,
    heartbeat_secs: u64,
    pings: u32,
) -> anyhow::Result<serde_json::Value> {
    let rooms = connections.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    create_rooms(target, "idle-", rooms, room_size).await?;
    let rss_before = target.pid.and_then(rss_kib);
    let kernel_before = KernelMemory::read();
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
            .arg("--pings")
            .arg(pings.to_string())
            .arg("--heartbeat-secs")
            .arg(heartbeat_secs.to_string())
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
    let kernel_after = KernelMemory::read();
    // Used: every connection exchanges its pings, then all are idle again.
    let mut rss_used = None;
    let mut ping_secs = None;
    let mut ping_lost = 0usize;
    if pings > 0 {
        progress(&format!("each connection sends {pings} pings"));
        let t = Instant::now();
        for (child, _) in &mut workers {
            let stdin = child.stdin.as_mut().context("worker stdin")?;
            tokio::task::block_in_place(|| writeln!(stdin, "ping"))?;
        }
        for (_, out) in &mut workers {
            let mut line = String::new();
            tokio::task::block_in_place(|| out.read_line(&mut line))?;
            anyhow::ensure!(line.starts_with("pinged"), "worker: {line:?}");
            // "pinged DONE LOST": a connection that broke while pinging is not a used one.
            ping_lost += line
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
        }
        ping_secs = Some(t.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_secs(2)).await;
        rss_used = target.pid.and_then(rss_kib);
    }
    for (mut child, _) in workers {
        drop(child.stdin.take());
        let _ = child.wait();
    }
    let slope = |after: Option<u64>| match (rss_before, after) {
        (Some(b), Some(a)) if held > 0 => Some((a.saturating_sub(b)) as f64 * 1024.0 / held as f64),
        _ => None,
    };
    let per_conn = slope(rss_after);
    // The kernel's memory for the sockets, beside the server's own: both ends of every
    // connection (the generator is on the same kernel), so per connection, not per server side.
    let kernel = |f: fn(&KernelMemory) -> u64| match (&kernel_before, &kernel_after) {
        (Some(b), Some(a)) if held > 0 => Some(f(a).saturating_sub(f(b)) as f64 / held as f64),
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
        "heartbeat_secs": heartbeat_secs,
        "pings_per_connection": pings,
        "ping_secs": ping_secs,
        "ping_connections_lost": ping_lost,
        "server_rss_used_kib": rss_used,
        "server_rss_per_used_connection_bytes": slope(rss_used),
        "kernel_tcp_buffer_bytes_per_connection": kernel(|k| k.tcp_buffer_bytes),
        "kernel_slab_bytes_per_connection": kernel(|k| k.slab_bytes),
    }))
}

/// What the kernel holds for sockets: the TCP buffers (`/proc/net/sockstat`, `mem` in pages)
/// and all slab memory (`/proc/meminfo`, where socket structures, files and epoll entries live).
struct KernelMemory {
    tcp_buffer_bytes: u64,
    slab_bytes: u64,
}

impl KernelMemory {
    fn read() -> Option<Self> {
        let sockstat = std::fs::read_to_string("/proc/net/sockstat").ok()?;
        let tcp_pages: u64 = sockstat
            .lines()
            .find_map(|l| l.strip_prefix("TCP:"))?
            .split_whitespace()
            .skip_while(|w| *w != "mem")
            .nth(1)?
            .parse()
            .ok()?;
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let slab_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("Slab:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(Self {
            // (`mem` counts pages: 4 KiB on the x86-64 machines these figures come from.)
            tcp_buffer_bytes: tcp_pages * 4096,
            slab_bytes: slab_kib * 1024,
        })
    }
}

/// One generator process of `idle`.
pub(super) struct WorkerSpec {
    pub prefix: String,
    pub room_size: usize,
    pub start: usize,
    pub count: usize,
    pub source: Ipv4Addr,
    /// WebSocket pings each connection sends when told (`ping` on stdin).
    pub pings: u32,
    /// While held, a ping every this long (zero: none).
    pub heartbeat: Duration,
}

pub(super) async fn idle_worker(target: &Target, w: WorkerSpec) -> anyhow::Result<()> {
    let WorkerSpec {
        prefix,
        room_size,
        start,
        count,
        source,
        pings,
        heartbeat,
    } = w;
    let sem = Arc::new(Semaphore::new(128));
    let mut tasks = tokio::task::JoinSet::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<bool>(count.max(1));
    // A token, not a Notify: a task busy with a frame when the stop comes must still see it.
    let stop = tokio_util::sync::CancellationToken::new();
    // Told to ping: each connection sends its pings, then reports on `pinged`.
    let ping = tokio_util::sync::CancellationToken::new();
    let (pinged_tx, mut pinged_rx) = tokio::sync::mpsc::channel::<bool>(count.max(1));
    for i in start..start + count {
        let room = format!("{prefix}{}", i / room_size);
        let spec = wire::join_spec(target, &room, &format!("idle-{i}"))?;
        let (kind, addr) = (target.kind, target.addr);
        let sem = Arc::clone(&sem);
        let done = done_tx.clone();
        let stop = stop.clone();
        let ping = ping.clone();
        let pinged = pinged_tx.clone();
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
                // Keep reading so pings are answered; ping when told; stop when told; and,
                // with a heartbeat, ping every period, the first at this connection's share
                // of it (so the connections' pings are spread evenly).
                let mut told_to_ping = false;
                let period = heartbeat.max(Duration::from_millis(1));
                let offset = period.mul_f64((i % 1000) as f64 / 1000.0);
                let mut beat =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                loop {
                    tokio::select! {
                        msg = ws.next() => if msg.is_none() { break },
                        _ = beat.tick(), if !heartbeat.is_zero() && !told_to_ping => {
                            if ws.send(heartbeat_frame(kind)).await.is_err() {
                                break;
                            }
                        }
                        () = ping.cancelled(), if !told_to_ping => {
                            told_to_ping = true;
                            let ok = ping_pong(&mut ws, kind, pings).await;
                            let _ = pinged.send(ok).await;
                        }
                        () = stop.cancelled() => break,
                    }
                }
                let _ = ws.close(None).await;
            }
        });
    }
    drop(done_tx);
    drop(pinged_tx);
    // Each task reports once, then keeps its sender while it holds its connection.
    let (ok, failed) = tally(&mut done_rx, count).await;
    say(&format!("ready {ok} {failed}"));
    // Hold until the parent closes our stdin; `ping` on it: every connection pings.
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
            let _ = line_tx.send(std::mem::take(&mut line));
        }
    });
    while let Some(line) = lines.recv().await {
        if line.trim() == "ping" {
            ping.cancel();
            let (done, lost) = tally(&mut pinged_rx, ok).await;
            say(&format!("pinged {done} {lost}"));
        }
    }
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Counts `n` reports of success or failure (fewer if every reporter is gone).
async fn tally(reports: &mut tokio::sync::mpsc::Receiver<bool>, n: usize) -> (usize, usize) {
    let (mut ok, mut failed) = (0usize, 0usize);
    while ok + failed < n {
        match reports.recv().await {
            Some(true) => ok += 1,
            Some(false) => failed += 1,
            None => break,
        }
    }
    (ok, failed)
}

/// What an idle client sends as its heartbeat: BlueCam's `ping` frame (as the SDK does),
/// peerjs's `HEARTBEAT` (as its client library does, every 5 s), a WebSocket ping to the
/// others (matchbox's protocol has no heartbeat message; the bare relay would relay one).
fn heartbeat_frame(kind: TargetKind) -> Message {
    match kind {
        TargetKind::Bluecam => Message::Text(ClientMessage::Ping.to_json().into()),
        TargetKind::Peerjs => Message::Text(r#"{"type":"HEARTBEAT"}"#.into()),
        _ => Message::Ping(Vec::new().into()),
    }
}

/// Sends `n` pings, each after the last one's pong: BlueCam's own (`{"op":"ping"}`, whose
/// `pong` the connection writes at once, without its queue), a WebSocket ping to the others;
/// false when the connection broke.
async fn ping_pong(ws: &mut Ws, kind: TargetKind, n: u32) -> bool {
    let bluecam = matches!(kind, TargetKind::Bluecam);
    for i in 0..n {
        let ping = if bluecam {
            Message::Text(ClientMessage::Ping.to_json().into())
        } else {
            Message::Ping(i.to_be_bytes().to_vec().into())
        };
        if ws.send(ping).await.is_err() {
            return false;
        }
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(_))) if !bluecam => break,
                Some(Ok(Message::Text(t)))
                    if bluecam
                        && matches!(ServerMessage::from_json(&t), Ok(ServerMessage::Pong)) =>
                {
                    break;
                }
                Some(Ok(_)) => {}
                _ => return false,
            }
        }
    }
    true
}
