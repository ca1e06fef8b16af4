//! The sender's decisions, as `sdk/js/sender.js` makes them: what each peer's outbox must do at
//! a tick (give up past the delivery bound, or send again what waited too long for its ack),
//! and how relayed envelopes are cut into frames. No clock, no I/O.

use crate::delivery::{Envelope, Pending, Via};

/// A message not acknowledged this long (ms) is sent again, over the relay; each further
/// attempt waits twice as long, up to [`RETRANSMIT_MAX_MS`].
pub const RETRANSMIT_MS: u64 = 1500;
pub const RETRANSMIT_MAX_MS: u64 = 30_000;
/// The slowest path waited for before a large send counts as stalled: 1 MB/s (bytes per ms).
pub const SLOWEST_BYTES_PER_MS: u64 = 1000;
/// Bytes of retransmissions per tick at most (at least one message goes).
pub const RETRANSMIT_BYTES_PER_TICK: usize = 256 * 1024;
/// Characters of payload one relay frame carries at most (one envelope at least).
pub const RELAY_BATCH_CHARS: usize = 256 * 1024;
/// The retransmission check's period (ms).
pub const TICK_MS: u64 = 250;
/// The default delivery bound (ms): a message not acknowledged this long after it was handed
/// over is given up, with every later one to that peer.
pub const DELIVERY_TIMEOUT_MS: u64 = 60_000;
/// What a relay frame costs beyond an envelope's payload, as counted against the cap.
const ENVELOPE_OVERHEAD_CHARS: usize = 100;

/// What the room knows of one peer's path at a tick.
#[derive(Clone, Copy, Debug, Default)]
pub struct PathState {
    /// The data channel is open.
    pub link_open: bool,
    /// The data channel's buffered bytes now (0 when closed).
    pub buffered: u64,
    /// Its buffered bytes at the tick before.
    pub last_buffered: u64,
    /// When acks or the channel's draining last showed progress (ms).
    pub last_progress_at: u64,
}

/// One peer's decision at a tick.
#[derive(Debug, PartialEq, Eq)]
pub enum Tick {
    /// The oldest message is past the delivery bound: fail it and every later one (the pair
    /// then starts a new sequence space).
    Expire,
    /// Send these again now (indexes into the outbox's pending, oldest first), and keep the
    /// path's progress as given.
    Send {
        due: Vec<usize>,
        last_progress_at: u64,
        last_buffered: u64,
    },
}

/// A message's retransmission timeout: doubling per attempt up to the cap, plus the time the
/// slowest path needs to carry its bytes.
pub fn retransmit_timeout(p: &Pending) -> u64 {
    let doubled = RETRANSMIT_MS.saturating_mul(1u64 << p.tries.min(20));
    doubled.min(RETRANSMIT_MAX_MS) + p.bytes as u64 / SLOWEST_BYTES_PER_MS
}

/// Decides one peer's tick at `now` (ms). A message chosen for a retransmission counts one
/// more try (the only change it makes).
pub fn tick_peer<'a>(
    pending: impl IntoIterator<Item = &'a mut Pending>,
    path: PathState,
    now: u64,
    delivery_timeout_ms: u64,
) -> Tick {
    let mut pending = pending.into_iter().peekable();
    if pending
        .peek()
        .is_some_and(|p| now.saturating_sub(p.added_at) >= delivery_timeout_ms)
    {
        return Tick::Expire;
    }
    // A data channel still draining a large send is slow, not stalled.
    let last_progress_at = if path.buffered > 0 && path.buffered < path.last_buffered {
        now
    } else {
        path.last_progress_at
    };
    let mut budget = RETRANSMIT_BYTES_PER_TICK as i64;
    let mut due = Vec::new();
    for (i, p) in pending.enumerate() {
        let rto = retransmit_timeout(p);
        let stalled =
            p.via != Via::P2p || !path.link_open || now.saturating_sub(last_progress_at) >= rto;
        if p.sent_at > 0 && (now.saturating_sub(p.sent_at) < rto || !stalled) {
            continue;
        }
        if budget <= 0 {
            continue;
        }
        budget -= p.bytes as i64;
        if p.sent_at > 0 {
            p.tries += 1;
        }
        due.push(i);
    }
    Tick::Send {
        due,
        last_progress_at,
        last_buffered: path.buffered,
    }
}

/// One relay frame of a peer's messages: its envelopes, and the index of the first message it
/// carries (part of). If a frame cannot go, that message and every later one wait.
#[derive(Debug, PartialEq)]
pub struct RelayFrame {
    pub envelopes: Vec<Envelope>,
    pub first: usize,
}

/// How a relay send of one peer's messages (each: its data's JSON length in UTF-16 code units,
/// and its envelopes) is cut into frames, in order: at most `max_chars` of payload each, but at
/// least one envelope.
pub fn relay_frames(messages: Vec<(usize, Vec<Envelope>)>, max_chars: usize) -> Vec<RelayFrame> {
    let mut frames: Vec<RelayFrame> = Vec::new();
    let mut chars = 0usize;
    for (i, (json_chars, envs)) in messages.into_iter().enumerate() {
        for env in envs {
            let payload = match &env {
                Envelope::Chunk { p, .. } => p.0.len(),
                _ => json_chars,
            };
            let size = payload + ENVELOPE_OVERHEAD_CHARS;
            let start_new = match frames.last() {
                None => true,
                Some(_) => chars > 0 && chars + size > max_chars,
            };
            if start_new {
                frames.push(RelayFrame {
                    envelopes: Vec::new(),
                    first: i,
                });
                chars = 0;
            }
            if let Some(f) = frames.last_mut() {
                f.envelopes.push(env);
            }
            chars += size;
        }
    }
    frames
}

/// A relay frame's `msg`: the envelopes as a JSON array.
pub fn relay_msg(envelopes: &[Envelope]) -> String {
    let mut out = String::from("[");
    for (i, e) in envelopes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.to_json());
    }
    out.push(']');
    out
}
