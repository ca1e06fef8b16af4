//! Rates per source address: a token bucket for each source (an IPv4 address or an IPv6 /64),
//! in a table of bounded size that forgets only what it can forget without changing an answer.
//! Used where a request without credentials costs this node or the cluster something: STUN
//! answers, demo rooms, HTTP transport requests passed to another node. No I/O: the caller
//! passes the time.

use bluecam_core::TokenBucket;
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

/// A full table is swept for idle sources at most this often, so a flood of new sources costs
/// one pass over the table per interval, not one per request.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Who a rate applies to: an IPv4 address, or an IPv6 /64 (one host or one customer's
/// network usually holds a whole /64, so counting its addresses apart would give it 2^64
/// buckets). An IPv4-mapped IPv6 address (a dual-stack socket) is its IPv4 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    V4(Ipv4Addr),
    /// The first 64 bits.
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4),
                None => Self::V6Prefix((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// Why a source may not have what it asked for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// Its source is over its rate.
    Rate,
    /// A new source, and the table is full of sources in use.
    TableFull,
}

/// One source's bucket and when it last asked.
#[derive(Clone, Debug)]
struct Entry {
    bucket: TokenBucket,
    last: Instant,
}

/// A bucket per [`Source`], up to `max_sources` of them.
///
/// Invariant: a bucket idle for `burst / rate` has refilled to its burst, which is exactly a
/// new source's bucket; so forgetting it changes no answer, and only such buckets are dropped.
/// A table full of buckets in use refuses new sources rather than reset the others (which
/// would give a flood of spoofed or rotated addresses a fresh burst for every one).
#[derive(Debug)]
pub struct SourceRates {
    rate: f64,
    burst: f64,
    max_sources: usize,
    sources: HashMap<Source, Entry>,
    /// How long a bucket takes to refill from empty to its burst.
    refill: Duration,
    /// The earliest time a full table is swept again.
    next_sweep: Instant,
}

impl SourceRates {
    /// `rate` a second with bursts of `burst` for each source, `max_sources` remembered.
    pub fn new(rate: f64, burst: f64, max_sources: usize, now: Instant) -> Self {
        let positive = rate.max(f64::MIN_POSITIVE);
        // (A rate so low that the refill does not fit a Duration never refills: never dropped.)
        let refill =
            Duration::try_from_secs_f64(burst.max(0.0) / positive).unwrap_or(Duration::MAX);
        Self {
            rate,
            burst,
            max_sources,
            sources: HashMap::new(),
            refill,
            next_sweep: now,
        }
    }

    /// Takes `cost` from the bucket of `from`'s source at `now`, if it holds that much.
    pub fn try_take(&mut self, from: IpAddr, cost: f64, now: Instant) -> Result<(), Over> {
        let source = Source::from(from);
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.sweep(now);
            if self.sources.len() >= self.max_sources {
                return Err(Over::TableFull);
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let entry = self.sources.entry(source).or_insert_with(|| Entry {
            bucket: TokenBucket::new(rate, burst, now),
            last: now,
        });
        entry.last = now;
        if entry.bucket.try_take(cost, now) {
            Ok(())
        } else {
            Err(Over::Rate)
        }
    }

    /// Charges `cost` known only afterwards to `from`'s source (into debt if need be); nothing
    /// when the source is not remembered (it was forgotten meanwhile: a fresh bucket).
    pub fn charge(&mut self, from: IpAddr, cost: f64, now: Instant) {
        if let Some(entry) = self.sources.get_mut(&Source::from(from)) {
            entry.bucket.charge(cost, now);
            entry.last = now;
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Forgets the sources idle long enough to be full again (at most once per
    /// [`SWEEP_INTERVAL`]).
    fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_INTERVAL;
        let refill = self.refill;
        self.sources
            .retain(|_, e| now.saturating_duration_since(e.last) < refill);
    }
}

/// [`SourceRates`] behind a lock, for request handlers (held for one lookup, never across an
/// `.await`).
#[derive(Debug)]
pub struct SharedRates(std::sync::Mutex<SourceRates>);

impl SharedRates {
    pub fn new(rate: f64, burst: f64, max_sources: usize) -> Self {
        Self(std::sync::Mutex::new(SourceRates::new(
            rate,
            burst,
            max_sources,
            Instant::now(),
        )))
    }

    /// [`SourceRates::try_take`] now.
    pub fn try_take(&self, from: IpAddr, cost: f64) -> Result<(), Over> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(from, cost, Instant::now())
    }

    /// [`SourceRates::charge`] now.
    pub fn charge(&self, from: IpAddr, cost: f64) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .charge(from, cost, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_idle_until_full_again_is_forgotten_and_none_in_use_is() {
        let t0 = Instant::now();
        let mut r = SourceRates::new(1.0, 2.0, 2, t0);
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        r.try_take(a, 2.0, t0).unwrap();
        r.try_take(b, 1.0, t0).unwrap();
        assert_eq!(r.try_take(c, 1.0, t0), Err(Over::TableFull));
        assert_eq!(r.try_take(a, 1.0, t0), Err(Over::Rate));
        // Two seconds on, b (idle since t0) is full again: forgotten for c. a asked at t0 too.
        let t2 = t0 + Duration::from_secs(2);
        r.try_take(c, 1.0, t2).unwrap();
        assert_eq!(r.len(), 1);
        // Costs other than one: a large request takes more of the bucket.
        assert_eq!(r.try_take(c, 5.0, t2), Err(Over::Rate));
        // A cost charged afterwards puts the bucket into debt: nothing passes until it is repaid
        // (at 1 a second: four seconds for a debt of 3 and one more token).
        r.charge(c, 4.0, t2);
        assert_eq!(
            r.try_take(c, 1.0, t2 + Duration::from_secs(3)),
            Err(Over::Rate)
        );
        r.try_take(c, 1.0, t2 + Duration::from_secs(4)).unwrap();
    }
}
