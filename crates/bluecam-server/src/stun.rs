//! The built-in STUN server (RFC 8489): answers Binding requests on UDP with the requester's
//! address as this node sees it (XOR-MAPPED-ADDRESS), so that browsers behind a NAT learn
//! their public address without a third-party STUN server. Only Binding requests are answered,
//! each source address within a rate limit; anything else is dropped without an answer (a
//! STUN server that answered everything would be a reflector). The wire format is the `stun`
//! crate's (webrtc-rs).

use crate::metrics::Metrics;
use bluecam_core::TokenBucket;
use std::{collections::HashMap, net::IpAddr, time::Instant};
use stun::{
    fingerprint::FINGERPRINT,
    message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter},
    xoraddr::XorMappedAddress,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Source addresses remembered for the rate limit at most; beyond, the table starts over.
const MAX_SOURCES: usize = 100_000;

/// The answer to one datagram: the Binding success response for a Binding request, nothing
/// for anything else.
pub fn answer(datagram: &[u8], from: std::net::SocketAddr) -> Option<Vec<u8>> {
    if !stun::message::is_message(datagram) {
        return None;
    }
    let mut request = Message::new();
    request.unmarshal_binary(datagram).ok()?;
    if request.typ != BINDING_REQUEST {
        return None;
    }
    let mut response = Message::new();
    let setters: [Box<dyn Setter>; 4] = [
        Box::new(request),
        Box::new(BINDING_SUCCESS),
        Box::new(XorMappedAddress {
            ip: from.ip(),
            port: from.port(),
        }),
        Box::new(FINGERPRINT),
    ];
    response.build(&setters).ok()?;
    Some(response.raw)
}

/// Serves STUN on `socket` until `stop`, answering each source address at most `rate` times a
/// second with bursts of `burst` (`stun_rate_per_source`, `stun_burst_per_source`: a browser's
/// ICE gathering sends a few requests per server; the burst covers several tabs behind a NAT).
pub async fn serve(
    socket: UdpSocket,
    rate: f64,
    burst: f64,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 1500];
    let mut buckets: HashMap<IpAddr, TokenBucket> = HashMap::new();
    loop {
        let (n, from) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // An ICMP error for an earlier answer (the client went away): keep serving.
                Err(_) => continue,
            },
        };
        let now = Instant::now();
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&from.ip()) {
            buckets.clear();
        }
        let allowed = buckets
            .entry(from.ip())
            .or_insert_with(|| TokenBucket::new(rate, burst, now))
            .try_take(1.0, now);
        if !allowed {
            metrics.stun_refused.increment(1);
            continue;
        }
        if let Some(reply) = answer(&buf[..n], from) {
            metrics.stun_answers.increment(1);
            let _ = socket.send_to(&reply, from).await;
        } else {
            metrics.stun_refused.increment(1);
        }
    }
}
