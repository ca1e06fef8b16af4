//! The built-in STUN server (RFC 8489): answers Binding requests on UDP with the requester's
//! address as this node sees it (XOR-MAPPED-ADDRESS), so that browsers behind a NAT learn
//! their public address without a third-party STUN server. Only Binding requests are answered,
//! within a rate per source (an IPv4 address or an IPv6 /64) and a rate in total
//! ([`StunLimiter`]); anything else is dropped without an answer (a STUN server that answered
//! everything would be a reflector). The wire format is the `stun` crate's (webrtc-rs).

use crate::{
    config::LimitsConfig,
    front::sources::{Over, SourceRates},
    metrics::Metrics,
};
use bluecam_core::TokenBucket;
use std::{net::IpAddr, time::Instant};
use stun::{
    fingerprint::FINGERPRINT,
    message::{BINDING_REQUEST, BINDING_SUCCESS, Message, Setter},
    xoraddr::XorMappedAddress,
};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

/// Sources remembered for the per-source rate at most. UDP source addresses can be spoofed, so
/// the table must not grow with them; when it is full of sources still in use, a new source is
/// refused (never the others reset: that would give a spoofer a fresh burst for every one).
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

/// The rates the STUN server answers at (`[limits]` `stun_*`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StunLimits {
    /// Answers per second and burst for one source: a browser's ICE gathering sends a few
    /// requests per server; the burst covers several tabs behind a NAT.
    pub rate_per_source: f64,
    pub burst_per_source: f64,
    /// Answers per second and burst from every source together: what a spoofed flood can make
    /// this node reflect at most, however many addresses it comes from.
    pub rate_total: f64,
    pub burst_total: f64,
    /// Sources remembered at most.
    pub max_sources: usize,
}

impl From<&LimitsConfig> for StunLimits {
    fn from(l: &LimitsConfig) -> Self {
        Self {
            rate_per_source: l.stun_rate_per_source,
            burst_per_source: l.stun_burst_per_source,
            rate_total: l.stun_rate_total,
            burst_total: l.stun_burst_total,
            max_sources: MAX_SOURCES,
        }
    }
}

/// Why a Binding request gets no answer (`bluecam_stun_limited_total{limit}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its source is over its rate.
    SourceRate,
    /// Every source together is over the total rate.
    TotalRate,
    /// A new source, and the table is full of sources in use.
    TableFull,
}

impl Refusal {
    /// Counts it in `bluecam_stun_limited_total{limit}`.
    fn count(self, metrics: &Metrics) {
        match self {
            Self::SourceRate => metrics.stun_limited_source.increment(1),
            Self::TotalRate => metrics.stun_limited_total.increment(1),
            Self::TableFull => metrics.stun_limited_table_full.increment(1),
        }
    }
}

/// The rate limits of the STUN server: a bucket per source (an IPv4 address or an IPv6 /64,
/// see [`crate::front::sources`]), up to `max_sources` of them, and one for every source together. No
/// I/O: the caller passes the time.
#[derive(Debug)]
pub struct StunLimiter {
    per_source: SourceRates,
    total: TokenBucket,
}

impl StunLimiter {
    pub fn new(limits: StunLimits, now: Instant) -> Self {
        Self {
            per_source: SourceRates::new(
                limits.rate_per_source,
                limits.burst_per_source,
                limits.max_sources,
                now,
            ),
            total: TokenBucket::new(limits.rate_total, limits.burst_total, now),
        }
    }

    /// Whether a Binding request from `from` may be answered at `now` (taking a token of its
    /// source and one of the total if so).
    pub fn handle_request(&mut self, from: IpAddr, now: Instant) -> Result<(), Refusal> {
        // The source's own bucket first: a source over its rate must not use up the total,
        // or one flooding address would silence everyone.
        self.per_source
            .try_take(from, 1.0, now)
            .map_err(|over| match over {
                Over::Rate => Refusal::SourceRate,
                Over::TableFull => Refusal::TableFull,
            })?;
        if !self.total.try_take(1.0, now) {
            return Err(Refusal::TotalRate);
        }
        Ok(())
    }

    /// Sources remembered now.
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

/// Serves STUN on `socket` until `stop` within `limits`.
pub async fn serve(
    socket: UdpSocket,
    limits: StunLimits,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 1500];
    let mut limiter = StunLimiter::new(limits, Instant::now());
    loop {
        let (n, from) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                // An ICMP error for an earlier answer (the client went away): keep serving.
                Err(_) => continue,
            },
        };
        // Parsed first: what is not a Binding request costs no source any of its budget, and
        // takes no place in the table.
        let Some(reply) = answer(&buf[..n], from) else {
            metrics.stun_refused.increment(1);
            continue;
        };
        if let Err(why) = limiter.handle_request(from.ip(), Instant::now()) {
            why.count(&metrics);
            metrics.stun_refused.increment(1);
            continue;
        }
        metrics.stun_answers.increment(1);
        // UDP: an answer the kernel would not send is a lost datagram, which the client
        // retransmits for; nothing to do here.
        let _ = socket.send_to(&reply, from).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::front::sources::Source;
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    fn limits() -> StunLimits {
        StunLimits {
            rate_per_source: 20.0,
            burst_per_source: 100.0,
            rate_total: 1_000_000.0,
            burst_total: 1_000_000.0,
            max_sources: 1_000,
        }
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
    }

    /// Takes the whole burst of `from`.
    fn drain(l: &mut StunLimiter, from: IpAddr, now: Instant) {
        for _ in 0..100 {
            l.handle_request(from, now).unwrap();
        }
        assert_eq!(l.handle_request(from, now), Err(Refusal::SourceRate));
    }

    #[test]
    fn stun_ipv6_sources_share_the_bucket_of_their_64() {
        let now = Instant::now();
        let mut l = StunLimiter::new(limits(), now);
        drain(&mut l, v6("2001:db8:1:2::1"), now);
        // Another address of the same /64: the same bucket, empty.
        assert_eq!(
            l.handle_request(v6("2001:db8:1:2:ffff:1:2:3"), now),
            Err(Refusal::SourceRate)
        );
        // Another /64: its own.
        assert_eq!(l.handle_request(v6("2001:db8:1:3::1"), now), Ok(()));
        assert_eq!(l.sources(), 2);
    }

    #[test]
    fn stun_ipv4_mapped_ipv6_is_its_ipv4_address_and_ipv4_is_per_address() {
        let now = Instant::now();
        let mut l = StunLimiter::new(limits(), now);
        drain(&mut l, "192.0.2.7".parse().unwrap(), now);
        assert_eq!(
            l.handle_request(v6("::ffff:192.0.2.7"), now),
            Err(Refusal::SourceRate)
        );
        // (Its neighbours are other sources: IPv4 is counted per address.)
        assert_eq!(l.handle_request("192.0.2.8".parse().unwrap(), now), Ok(()));
        assert_eq!(
            Source::from(v6("::ffff:192.0.2.8")),
            Source::V4(Ipv4Addr::new(192, 0, 2, 8))
        );
    }

    #[test]
    fn stun_a_full_table_refuses_new_sources_and_never_resets_the_others() {
        let now = Instant::now();
        let mut l = StunLimiter::new(
            StunLimits {
                max_sources: 3,
                ..limits()
            },
            now,
        );
        let flooder: IpAddr = "198.51.100.1".parse().unwrap();
        drain(&mut l, flooder, now);
        l.handle_request("198.51.100.2".parse().unwrap(), now)
            .unwrap();
        l.handle_request("198.51.100.3".parse().unwrap(), now)
            .unwrap();
        // Spoofed new sources while every bucket is in use: refused, counted as such...
        for i in 10..100 {
            let spoofed = IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
            assert_eq!(l.handle_request(spoofed, now), Err(Refusal::TableFull));
        }
        assert_eq!(l.sources(), 3);
        // ...and the flooder's bucket was not reset by them (it was, by a full reset).
        assert_eq!(l.handle_request(flooder, now), Err(Refusal::SourceRate));
    }

    #[test]
    fn stun_a_source_idle_until_refilled_is_evicted_for_a_new_one() {
        let t0 = Instant::now();
        let mut l = StunLimiter::new(
            StunLimits {
                max_sources: 2,
                ..limits()
            },
            t0,
        );
        let (idle, busy): (IpAddr, IpAddr) =
            ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        l.handle_request(idle, t0).unwrap();
        drain(&mut l, busy, t0);
        // 100 / 20 = 5 s to refill. At 4 s nothing may go; the busy one takes all it has
        // again (the 80 refilled since).
        let t4 = t0 + Duration::from_secs(4);
        let newcomer: IpAddr = "192.0.2.3".parse().unwrap();
        assert_eq!(l.handle_request(newcomer, t4), Err(Refusal::TableFull));
        for _ in 0..80 {
            l.handle_request(busy, t4).unwrap();
        }
        // At 6 s the idle one is as good as new: dropped for the newcomer. The busy one, seen
        // at 4 s, stays with what it has (40 refilled since), not a fresh burst.
        let t6 = t0 + Duration::from_secs(6);
        assert_eq!(l.handle_request(newcomer, t6), Ok(()));
        assert_eq!(l.sources(), 2);
        for _ in 0..40 {
            l.handle_request(busy, t6).unwrap();
        }
        assert_eq!(l.handle_request(busy, t6), Err(Refusal::SourceRate));
    }

    #[test]
    fn stun_the_total_budget_caps_answers_across_all_sources() {
        let now = Instant::now();
        let mut l = StunLimiter::new(
            StunLimits {
                rate_total: 100.0,
                burst_total: 250.0,
                ..limits()
            },
            now,
        );
        // 50 sources of 10 requests each: each within its own rate, 500 in all.
        let mut answered = 0;
        let mut over_total = 0;
        for i in 0..50u8 {
            for _ in 0..10 {
                match l.handle_request(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), now) {
                    Ok(()) => answered += 1,
                    Err(Refusal::TotalRate) => over_total += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
        assert_eq!((answered, over_total), (250, 250));
        // A second later the total has refilled by its rate.
        let later = now + Duration::from_secs(1);
        let mut again = 0;
        for i in 100..200u8 {
            if l.handle_request(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)), later)
                .is_ok()
            {
                again += 1;
            }
        }
        assert_eq!(again, 100);
    }
}
