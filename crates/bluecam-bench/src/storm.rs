//! `join-storm`: joins per second and join latency.

use super::*;

pub(super) async fn join_storm(
    target: &Target,
    joins: usize,
    concurrency: usize,
    room_size: usize,
) -> anyhow::Result<serde_json::Value> {
    let rooms = joins.div_ceil(room_size);
    progress(&format!("creating {rooms} rooms"));
    create_rooms(target, "storm-", rooms, room_size).await?;
    let specs: Vec<wire::JoinSpec> = (0..joins)
        .map(|i| {
            wire::join_spec(
                target,
                &format!("storm-{}", i / room_size),
                &format!("s{i}"),
            )
        })
        .collect::<Result<_, _>>()?;
    let kind = target.kind;
    progress(&format!("{joins} joins, {concurrency} at a time"));
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let cpu_before = target.pid.and_then(cpu_ticks);
    let started = Instant::now();
    for (i, spec) in specs.into_iter().enumerate() {
        let permit = Arc::clone(&sem).acquire_owned().await?;
        let addr = target.addr_for(i);
        tasks.spawn(async move {
            let t0 = Instant::now();
            let r = wire::open(kind, addr, spec, Some(source_ip(i)))
                .await
                .map(|(ws, _, join_only)| (ws, join_only));
            drop(permit);
            r.map(|(ws, join_only)| (ws, t0.elapsed(), join_only))
        });
    }
    let mut total = new_histogram()?;
    let mut join_only = new_histogram()?;
    let mut held = Vec::with_capacity(joins);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok((ws, t, j)) => {
                total.saturating_record(t.as_micros() as u64);
                join_only.saturating_record(j.as_micros() as u64);
                held.push(ws);
            }
            Err(_) => failed += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = target.pid.and_then(cpu_ticks);
    let ok = held.len();
    // Server CPU (user + system, in 10 ms ticks: about ±10 ms over the storm) per join.
    let cpu_us_per_join = match (cpu_before, cpu_after) {
        (Some(b), Some(a)) if ok > 0 => Some((a - b) as f64 / TICKS_PER_SEC * 1e6 / ok as f64),
        _ => None,
    };
    drop(held);
    Ok(serde_json::json!({
        "scenario": "join-storm",
        "target": kind.name(),
        "joins": ok,
        "failed": failed,
        "concurrency": concurrency,
        "room_size": room_size,
        "seconds": secs,
        "joins_per_sec": ok as f64 / secs,
        "server_cpu_us_per_join": cpu_us_per_join,
        "connect_and_join": quantiles(&total),
        // From the end of the upgrade to the join's acknowledgement (the baseline's: the answer
        // to its first frame).
        "join_frame_to_joined": quantiles(&join_only),
    }))
}
