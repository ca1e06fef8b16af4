//! Per-connection limits as pure state: token buckets for the inbound rate, and the window
//! that counts bad frames. The connection task owns one of each and passes `now`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// What a token bucket holds and how fast it fills, without the clock (a [`RateLimiter`]'s
/// two buckets share theirs: every connection has one).
#[derive(Clone, Debug)]
struct Level {
    rate: f64,
    burst: f64,
    tokens: f64,
}

impl Level {
    /// A full bucket.
    fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_sec.max(f64::MIN_POSITIVE),
            burst,
            tokens: burst,
        }
    }

    fn refill(&mut self, elapsed_secs: f64) {
        self.tokens = (self.tokens + elapsed_secs * self.rate).min(self.burst);
    }

    /// How long until `n` tokens are available (zero when they are now).
    fn wait_for(&self, n: f64) -> Duration {
        if self.tokens >= n || (n > self.burst && self.tokens >= self.burst) {
            // A single cost above the burst passes when the bucket is full, so an allowed
            // frame size larger than the byte burst can still get through.
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n.min(self.burst) - self.tokens) / self.rate)
        }
    }

    fn take(&mut self, n: f64) {
        self.tokens -= n;
    }
}

/// Seconds from `last` to `now` (none when the clock reads earlier), and `last` moved to `now`.
fn elapsed(last: &mut Instant, now: Instant) -> f64 {
    let secs = now.saturating_duration_since(*last).as_secs_f64();
    *last = now;
    secs
}

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    level: Level,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        Self {
            level: Level::new(rate_per_sec, burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        self.level.refill(elapsed(&mut self.last, now));
    }

    /// Takes `n` tokens whether they are there or not: a cost known only afterwards (an
    /// answer's size). The bucket may go into debt; nothing more passes until it is repaid.
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level.take(n);
    }

    /// Takes `n` tokens if they are there now; false (and nothing taken) otherwise.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.level.wait_for(n).is_zero() {
            self.level.take(n);
            true
        } else {
            false
        }
    }
}

/// Frames-per-second and bytes-per-second limits of one connection: two buckets filled by
/// one clock.
#[derive(Clone, Debug)]
pub struct RateLimiter {
    frames: Level,
    bytes: Level,
    last: Instant,
}

impl RateLimiter {
    /// Both buckets start full.
    pub fn new(
        frames_per_sec: u32,
        burst_frames: u32,
        bytes_per_sec: u64,
        burst_bytes: u64,
        now: Instant,
    ) -> Self {
        Self {
            frames: Level::new(frames_per_sec.into(), burst_frames.into()),
            bytes: Level::new(bytes_per_sec as f64, burst_bytes as f64),
            last: now,
        }
    }

    /// Admits a frame of `len` bytes, or says how long to wait. A refused frame costs nothing.
    pub fn check(&mut self, len: usize, now: Instant) -> Result<(), Duration> {
        let secs = elapsed(&mut self.last, now);
        self.frames.refill(secs);
        self.bytes.refill(secs);
        let wait = self
            .frames
            .wait_for(1.0)
            .max(self.bytes.wait_for(len as f64));
        if wait.is_zero() {
            self.frames.take(1.0);
            self.bytes.take(len as f64);
            Ok(())
        } else {
            Err(wait)
        }
    }
}

/// Counts bad frames in a sliding window; too many means the client is broken or hostile.
#[derive(Clone, Debug)]
pub struct BadFrameWindow {
    max: usize,
    window: Duration,
    seen: VecDeque<Instant>,
}

impl BadFrameWindow {
    /// Tolerates `max` bad frames within `window`. Holds no memory until the first bad frame
    /// (every connection has one of these; few ever send a bad frame).
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            seen: VecDeque::new(),
        }
    }

    /// Records one bad frame; true when that makes more than `max` within the window.
    pub fn record(&mut self, now: Instant) -> bool {
        while self
            .seen
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            self.seen.pop_front();
        }
        self.seen.push_back(now);
        // Bounded: we never keep more than max + 1 entries.
        if self.seen.len() > self.max + 1 {
            self.seen.pop_front();
        }
        self.seen.len() > self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refuses_then_refills() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(10, 20, 1_000_000, 1_000_000, t0);
        for _ in 0..20 {
            assert!(rl.check(10, t0).is_ok());
        }
        let wait = rl.check(10, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(rl.check(10, t0 + Duration::from_millis(100)).is_ok());
        assert!(rl.check(10, t0 + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn byte_bucket_limits_large_frames_and_refusal_costs_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(1000, 1000, 1000, 2000, t0);
        assert!(rl.check(1500, t0).is_ok());
        assert!(rl.check(1000, t0).is_err());
        // The refused frame did not consume frame tokens or bytes.
        assert!(rl.check(500, t0).is_ok());
        // A frame bigger than the byte burst passes only from a full bucket.
        assert!(rl.check(5000, t0).is_err());
        assert!(rl.check(5000, t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn bad_frames_close_only_above_max_in_window() {
        let t0 = Instant::now();
        let mut w = BadFrameWindow::new(20, Duration::from_secs(10));
        for i in 0..20 {
            assert!(!w.record(t0 + Duration::from_millis(i)));
        }
        assert!(w.record(t0 + Duration::from_millis(20)));
        let mut w = BadFrameWindow::new(20, Duration::from_secs(10));
        for i in 0..100u64 {
            // One bad frame a second never trips the limit.
            assert!(!w.record(t0 + Duration::from_secs(i)));
        }
    }
}
