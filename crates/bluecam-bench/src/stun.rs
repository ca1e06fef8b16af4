//! `stun`: UDP senders (each from its own loopback address) ask the built-in STUN server for
//! their address, `window` Binding requests at a time each, for a while: answers per second,
//! and per second of server CPU.

use super::*;
use ::stun::{
    agent::TransactionId,
    message::{BINDING_REQUEST, Message as StunMessage, Setter},
};

fn binding_request() -> anyhow::Result<Vec<u8>> {
    let mut m = StunMessage::new();
    let setters: [Box<dyn Setter>; 2] = [Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)];
    m.build(&setters)?;
    Ok(m.raw)
}

pub(super) async fn stun(
    target: &Target,
    senders: usize,
    window: usize,
    duration: Duration,
) -> anyhow::Result<serde_json::Value> {
    progress(&format!(
        "{senders} senders, {window} requests in flight each, {duration:?}"
    ));
    let cpu0 = target.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..senders {
        let addr = target.addr;
        tasks.spawn(async move {
            let socket = tokio::net::UdpSocket::bind(SocketAddr::from((source_ip(i), 0))).await?;
            let request = binding_request()?;
            let mut buf = vec![0u8; 1500];
            let (mut sent, mut answered) = (0u64, 0u64);
            while Instant::now() < until {
                for _ in 0..window {
                    socket.send_to(&request, addr).await?;
                    sent += 1;
                }
                for _ in 0..window {
                    match tokio::time::timeout(
                        Duration::from_millis(200),
                        socket.recv_from(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(_)) => answered += 1,
                        _ => break,
                    }
                }
            }
            Ok::<_, anyhow::Error>((sent, answered))
        });
    }
    let (mut sent, mut answered) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        let (s, a) = r??;
        sent += s;
        answered += a;
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = match (cpu0, target.pid.and_then(cpu_ticks)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / TICKS_PER_SEC),
        _ => None,
    };
    Ok(serde_json::json!({
        "scenario": "stun",
        "senders": senders,
        "window": window,
        "seconds": secs,
        "sent": sent,
        "answered": answered,
        "unanswered": sent.saturating_sub(answered),
        "answers_per_sec": answered as f64 / secs,
        "server_cpu_secs": cpu,
        "answers_per_server_cpu_sec": cpu.filter(|c| *c > 0.0).map(|c| answered as f64 / c),
    }))
}
