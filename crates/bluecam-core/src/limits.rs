//! Per-connection limits as pure state: token buckets for the inbound rate, and the window
//! that counts bad frames. The connection task owns one of each and passes `now`.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// How fast a token bucket fills and what it holds at most: the same for every connection (a
/// [`RateLimiter`] is given its [`Rates`] at each check rather than keeping a copy: every
/// connection has one).
#[derive(Clone, Copy, Debug)]
struct Fill {
    rate: f64,
    burst: f64,
}

impl Fill {
    fn new(rate_per_sec: f64, burst: f64) -> Self {
        Self {
            rate: rate_per_sec.max(f64::MIN_POSITIVE),
            burst,
        }
    }

    fn refill(self, tokens: &mut f64, elapsed_secs: f64) {
        *tokens = (*tokens + elapsed_secs * self.rate).min(self.burst);
    }

    /// How long until `n` tokens are available with `tokens` there now (zero when they are).
    fn wait_for(self, tokens: f64, n: f64) -> Duration {
        if tokens >= n || (n > self.burst && tokens >= self.burst) {
            // A single cost above the burst passes when the bucket is full, so an allowed
            // frame size larger than the byte burst can still get through.
            Duration::ZERO
        } else {
            Duration::from_secs_f64((n.min(self.burst) - tokens) / self.rate)
        }
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
    fill: Fill,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate_per_sec: f64, burst: f64, now: Instant) -> Self {
        Self {
            fill: Fill::new(rate_per_sec, burst),
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        self.fill
            .refill(&mut self.tokens, elapsed(&mut self.last, now));
    }

    /// Takes `n` tokens whether they are there or not: a cost known only afterwards (an
    /// answer's size). The bucket may go into debt; nothing more passes until it is repaid.
    pub fn charge(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens -= n;
    }

    /// Takes `n` tokens if they are there now; false (and nothing taken) otherwise.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.fill.wait_for(self.tokens, n).is_zero() {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

/// The frames-per-second and bytes-per-second limits a [`RateLimiter`] applies, and their
/// bursts.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    frames: Fill,
    bytes: Fill,
}

impl Rates {
    pub fn new(
        frames_per_sec: u32,
        burst_frames: u32,
        bytes_per_sec: u64,
        burst_bytes: u64,
    ) -> Self {
        Self {
            frames: Fill::new(frames_per_sec.into(), burst_frames.into()),
            bytes: Fill::new(bytes_per_sec as f64, burst_bytes as f64),
        }
    }
}

/// One connection's two buckets, frames and bytes, filled by one clock at the [`Rates`] each
/// check is given (32 bytes: what it keeps is its own levels and clock).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    frames: f64,
    bytes: f64,
    last: Instant,
}

impl RateLimiter {
    /// Both buckets start full.
    pub fn new(rates: &Rates, now: Instant) -> Self {
        Self {
            frames: rates.frames.burst,
            bytes: rates.bytes.burst,
            last: now,
        }
    }

    /// Admits a frame of `len` bytes, or says how long to wait. A refused frame costs nothing.
    pub fn check(&mut self, rates: &Rates, len: usize, now: Instant) -> Result<(), Duration> {
        let secs = elapsed(&mut self.last, now);
        rates.frames.refill(&mut self.frames, secs);
        rates.bytes.refill(&mut self.bytes, secs);
        let wait = rates
            .frames
            .wait_for(self.frames, 1.0)
            .max(rates.bytes.wait_for(self.bytes, len as f64));
        if wait.is_zero() {
            self.frames -= 1.0;
            self.bytes -= len as f64;
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
        let rates = Rates::new(10, 20, 1_000_000, 1_000_000);
        let mut rl = RateLimiter::new(&rates, t0);
        for _ in 0..20 {
            assert!(rl.check(&rates, 10, t0).is_ok());
        }
        let wait = rl.check(&rates, 10, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(
            rl.check(&rates, 10, t0 + Duration::from_millis(100))
                .is_ok()
        );
        assert!(
            rl.check(&rates, 10, t0 + Duration::from_millis(100))
                .is_err()
        );
    }

    #[test]
    fn byte_bucket_limits_large_frames_and_refusal_costs_nothing() {
        let t0 = Instant::now();
        let rates = Rates::new(1000, 1000, 1000, 2000);
        let mut rl = RateLimiter::new(&rates, t0);
        assert!(rl.check(&rates, 1500, t0).is_ok());
        assert!(rl.check(&rates, 1000, t0).is_err());
        // The refused frame did not consume frame tokens or bytes.
        assert!(rl.check(&rates, 500, t0).is_ok());
        // A frame bigger than the byte burst passes only from a full bucket.
        assert!(rl.check(&rates, 5000, t0).is_err());
        assert!(rl.check(&rates, 5000, t0 + Duration::from_secs(2)).is_ok());
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
