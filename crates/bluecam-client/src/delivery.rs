//! Envelopes, the sender's [`Outbox`] and the recipient's [`Inbox`]: `sdk/js/delivery.js` in
//! Rust, with the same wire format (docs/protocol.md §15) and the same decisions.
//!
//! Every app message to one peer gets a sequence number in the (sender, recipient) space, named
//! by an epoch the sender draws when it starts the space. The recipient delivers in order,
//! drops duplicates and acknowledges cumulatively; the sender keeps a message until it is
//! acknowledged. Messages whose JSON is longer than [`CHUNK_CHARS`] UTF-16 code units travel
//! as chunks cut at those offsets, as JavaScript's `String.prototype.slice` cuts them: a chunk
//! may end inside a surrogate pair, so a chunk's part is UTF-16 ([`Utf16`]), written and read
//! with the escapes `JSON.stringify` uses for a lone surrogate.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap, VecDeque};

/// Envelope format version.
pub const VERSION: u64 = 1;
/// Largest message accepted: UTF-8 bytes of its data's JSON.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Messages whose JSON is longer than this (in UTF-16 code units, as JavaScript counts a
/// string's length) travel as chunks.
pub const CHUNK_CHARS: usize = 16 * 1024;
/// Most chunks a message can have.
pub const MAX_CHUNKS: u64 = (MAX_MESSAGE_BYTES as u64).div_ceil(CHUNK_CHARS as u64) + 1;
/// Sequence numbers further ahead than this are refused (the sender's outbox is smaller).
pub const MAX_AHEAD: u64 = 4096;
/// JavaScript's `Number.MAX_SAFE_INTEGER`: the largest number an envelope may carry.
const MAX_SAFE: f64 = 9_007_199_254_740_991.0;

/// Text as UTF-16 code units: a chunk's part, which may hold half of a surrogate pair.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Utf16(pub Vec<u16>);

impl Utf16 {
    /// The text's code units.
    pub fn from_text(text: &str) -> Self {
        Self(text.encode_utf16().collect())
    }

    /// As a JSON string literal, escaped as `JSON.stringify` escapes it (a lone surrogate as
    /// `\udXXX`).
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 2);
        out.push('"');
        for unit in char::decode_utf16(self.0.iter().copied()) {
            match unit {
                Ok(c) => push_escaped(&mut out, c),
                Err(e) => push_u_escape(&mut out, e.unpaired_surrogate()),
            }
        }
        out.push('"');
        out
    }

    /// Reads a JSON string literal (quotes included) into code units, lone surrogates kept;
    /// `None` when it is not one.
    pub fn from_json(literal: &str) -> Option<Self> {
        let inner = literal.strip_prefix('"')?.strip_suffix('"')?;
        let mut out = Vec::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => return None,
                '\\' => {
                    let unit = match chars.next()? {
                        '"' => u16::from(b'"'),
                        '\\' => u16::from(b'\\'),
                        '/' => u16::from(b'/'),
                        'b' => 0x08,
                        'f' => 0x0c,
                        'n' => u16::from(b'\n'),
                        'r' => u16::from(b'\r'),
                        't' => u16::from(b'\t'),
                        'u' => {
                            let hex: String = chars.by_ref().take(4).collect();
                            if hex.len() != 4 {
                                return None;
                            }
                            u16::from_str_radix(&hex, 16).ok()?
                        }
                        _ => return None,
                    };
                    out.push(unit);
                }
                c if (c as u32) < 0x20 => return None,
                c => {
                    let mut buf = [0u16; 2];
                    out.extend_from_slice(c.encode_utf16(&mut buf));
                }
            }
        }
        Some(Self(out))
    }
}

fn push_u_escape(out: &mut String, unit: u16) {
    out.push_str(&format!("\\u{unit:04x}"));
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\u{8}' => out.push_str("\\b"),
        '\u{c}' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 => push_u_escape(out, c as u16),
        c => out.push(c),
    }
}

/// A JSON string literal of `text`, as `JSON.stringify` writes it.
fn json_string(text: &str) -> String {
    Utf16::from_text(text).to_json()
}

/// The sender's sequence space, stamped on its envelopes: `e`, its epoch, and `b`, its lowest
/// unacknowledged sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: u64,
    pub base: u64,
}

/// One envelope (docs/protocol.md §15). `e` and `b` are optional: an envelope without them is
/// one of epoch 0, from a sender of the first version of the protocol. Two envelopes are equal
/// when they are written the same.
#[derive(Clone, Debug)]
pub enum Envelope {
    /// A whole message: sequence `s`, type `t`, data `d` (any JSON).
    Message {
        s: u64,
        t: String,
        d: Box<RawValue>,
        e: Option<u64>,
        b: Option<u64>,
    },
    /// Chunk `i` of `n` of message `s`; the parts, in order, are the JSON text of its data.
    Chunk {
        s: u64,
        t: String,
        i: u64,
        n: u64,
        p: Utf16,
        e: Option<u64>,
        b: Option<u64>,
    },
    /// Every message up to `a` of the sequence space `e` has been delivered.
    Ack { a: u64, e: Option<u64> },
}

impl PartialEq for Envelope {
    fn eq(&self, other: &Self) -> bool {
        self.to_json() == other.to_json()
    }
}

/// The fields of an envelope as they came (each one's raw JSON, `null` included).
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    v: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    k: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    s: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    t: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    d: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    i: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    n: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    p: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    a: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    e: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    b: Option<&'a RawValue>,
}

/// A field that is there (even `null`): its raw JSON.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A safe integer (`Number.isSafeInteger`): a JSON number with no fraction, within ±2^53 − 1.
fn safe_integer(raw: Option<&RawValue>) -> Option<u64> {
    let text = raw?.get();
    if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    let x: f64 = serde_json::from_str(text).ok()?;
    (x.fract() == 0.0 && x.abs() <= MAX_SAFE && x >= 0.0).then_some(x as u64)
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str(raw?.get()).ok()
}

impl Envelope {
    /// Reads an envelope from its JSON text; `None` for anything the SDK would ignore (another
    /// version, a missing or malformed field: the shared vectors' `invalid`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::from_raw(serde_json::from_str::<&RawValue>(text).ok()?)
    }

    /// Reads an envelope from a JSON value (an element of a relay frame's `msg`).
    pub fn from_raw(raw: &RawValue) -> Option<Self> {
        let f: Fields<'_> = serde_json::from_str(raw.get()).ok()?;
        if safe_integer(f.v) != Some(VERSION) || f.v.map(RawValue::get) == Some("-0") {
            return None;
        }
        // The epoch and base are optional, well-formed if there.
        let e = match f.e {
            None => None,
            Some(_) => Some(safe_integer(f.e)?),
        };
        let b = match f.b {
            None => None,
            Some(_) => Some(safe_integer(f.b).filter(|b| *b >= 1)?),
        };
        let seq = |raw| safe_integer(raw).filter(|s| *s >= 1);
        match string(f.k)?.as_str() {
            "m" => Some(Self::Message {
                s: seq(f.s)?,
                t: string(f.t)?,
                d: f.d?.to_owned(),
                e,
                b,
            }),
            "c" => {
                let n = safe_integer(f.n).filter(|n| (1..=MAX_CHUNKS).contains(n))?;
                let i = safe_integer(f.i).filter(|i| *i < n)?;
                Some(Self::Chunk {
                    s: seq(f.s)?,
                    t: string(f.t)?,
                    i,
                    n,
                    p: Utf16::from_json(f.p?.get())?,
                    e,
                    b,
                })
            }
            "a" => Some(Self::Ack {
                a: safe_integer(f.a)?,
                e,
            }),
            _ => None,
        }
    }

    /// The envelope's JSON text, with the keys in the SDK's order (`v`, `k`, then the kind's
    /// fields, then `e` and `b`).
    pub fn to_json(&self) -> String {
        let stamp = |e: &Option<u64>, b: &Option<u64>| {
            let mut out = String::new();
            if let Some(e) = e {
                out.push_str(&format!(",\"e\":{e}"));
            }
            if let Some(b) = b {
                out.push_str(&format!(",\"b\":{b}"));
            }
            out
        };
        match self {
            Self::Message { s, t, d, e, b } => format!(
                "{{\"v\":{VERSION},\"k\":\"m\",\"s\":{s},\"t\":{},\"d\":{}{}}}",
                json_string(t),
                d.get(),
                stamp(e, b)
            ),
            Self::Chunk {
                s,
                t,
                i,
                n,
                p,
                e,
                b,
            } => format!(
                "{{\"v\":{VERSION},\"k\":\"c\",\"s\":{s},\"t\":{},\"i\":{i},\"n\":{n},\"p\":{}{}}}",
                json_string(t),
                p.to_json(),
                stamp(e, b)
            ),
            Self::Ack { a, e } => format!(
                "{{\"v\":{VERSION},\"k\":\"a\",\"a\":{a}{}}}",
                stamp(e, &None)
            ),
        }
    }
}

/// The envelopes of one message: whole, or cut into chunks of [`CHUNK_CHARS`] UTF-16 code
/// units of its data's JSON text (the offsets JavaScript's `slice` cuts at). `from` stamps
/// them with the sender's epoch and base (`None`: an envelope of the first protocol).
///
pub fn envelopes_of(seq: u64, msg_type: &str, json: &str, from: Option<Stamp>) -> Vec<Envelope> {
    let (e, b) = (from.map(|f| f.epoch), from.map(|f| f.base));
    let units: Vec<u16> = json.encode_utf16().collect();
    if units.len() <= CHUNK_CHARS {
        // (Data that is not JSON cannot be sent: `Outbox::add` is given JSON text.)
        let d = RawValue::from_string(json.to_owned()).unwrap_or_default();
        return vec![Envelope::Message {
            s: seq,
            t: msg_type.to_owned(),
            d,
            e,
            b,
        }];
    }
    let n = units.len().div_ceil(CHUNK_CHARS) as u64;
    units
        .chunks(CHUNK_CHARS)
        .enumerate()
        .map(|(i, part)| Envelope::Chunk {
            s: seq,
            t: msg_type.to_owned(),
            i: i as u64,
            n,
            p: Utf16(part.to_vec()),
            e,
            b,
        })
        .collect()
}

/// Draws epochs: each larger than the one before, and (being milliseconds × 1000) than those of
/// a process that ran before this one.
#[derive(Debug, Default)]
pub struct Epochs {
    last: u64,
}

impl Epochs {
    /// A new epoch, given the wall clock in milliseconds since 1970.
    pub fn next(&mut self, now_unix_ms: u64) -> u64 {
        self.last = (self.last + 1).max(now_unix_ms.saturating_mul(1000));
        self.last
    }
}

/// Which path a message last went by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Not sent yet.
    None,
    /// The data channel.
    P2p,
    /// The server's relay.
    Relay,
}

/// A message waiting for its acknowledgement.
#[derive(Clone, Debug)]
pub struct Pending {
    pub seq: u64,
    pub msg_type: String,
    /// The data's JSON text.
    pub json: String,
    /// UTF-8 bytes of `json`.
    pub bytes: usize,
    pub via: Via,
    /// When it was last sent (ms); 0 before the first time, or when the last attempt could not
    /// go out.
    pub sent_at: u64,
    /// Retransmissions so far (for the back-off).
    pub tries: u32,
    /// When it was handed over (ms), for the delivery bound.
    pub added_at: u64,
}

/// Unacknowledged messages to one peer, in sequence order.
#[derive(Debug)]
pub struct Outbox {
    epoch: u64,
    next_seq: u64,
    pending: VecDeque<Pending>,
    bytes: usize,
}

impl Outbox {
    /// A new sequence space (its epoch from [`Epochs::next`]).
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            next_seq: 1,
            pending: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Adds a message (`json`: its data's JSON text) at `now` (ms); its sequence number.
    pub fn add(&mut self, msg_type: &str, json: String, now: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let bytes = json.len();
        self.bytes += bytes;
        self.pending.push_back(Pending {
            seq,
            msg_type: msg_type.to_owned(),
            json,
            bytes,
            via: Via::None,
            sent_at: 0,
            tries: 0,
            added_at: now,
        });
        seq
    }

    /// This space's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The lowest unacknowledged sequence number: every message below it was acknowledged.
    pub fn base(&self) -> u64 {
        self.pending.front().map_or(self.next_seq, |p| p.seq)
    }

    /// What this space stamps on its envelopes.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            epoch: self.epoch,
            base: self.base(),
        }
    }

    /// The messages waiting, oldest first.
    pub fn pending(&self) -> &VecDeque<Pending> {
        &self.pending
    }

    /// The same, to record their transmissions.
    pub fn pending_mut(&mut self) -> &mut VecDeque<Pending> {
        &mut self.pending
    }

    /// Bytes of the messages waiting.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A cumulative ack (an [`Envelope::Ack`]; anything else acknowledges nothing): the sequence
    /// numbers it acknowledged. An ack of another epoch (an earlier space of ours for this
    /// peer) acknowledges nothing here; one without an epoch is of a first-protocol peer.
    pub fn ack(&mut self, ack: &Envelope) -> Vec<u64> {
        let Envelope::Ack { a, e } = ack else {
            return Vec::new();
        };
        if e.is_some_and(|e| e != self.epoch) {
            return Vec::new();
        }
        let mut done = Vec::new();
        while self.pending.front().is_some_and(|p| p.seq <= *a) {
            if let Some(p) = self.pending.pop_front() {
                self.bytes -= p.bytes;
                done.push(p.seq);
            }
        }
        done
    }

    /// The peer cannot be reached any more (it left, or the delivery bound passed): every
    /// message waiting, to be rejected; the space stays (the caller starts a new one).
    pub fn fail(&mut self) -> Vec<Pending> {
        self.bytes = 0;
        self.pending.drain(..).collect()
    }
}

/// A message delivered, in order.
#[derive(Clone, Debug)]
pub struct Delivered {
    pub seq: u64,
    pub msg_type: String,
    /// Its data's JSON.
    pub data: Box<RawValue>,
}

#[derive(Debug)]
struct Chunks {
    msg_type: String,
    parts: Vec<Option<Utf16>>,
    have: usize,
}

/// What one sender has delivered to us, and what waits for a gap to fill.
#[derive(Debug)]
pub struct Inbox {
    /// The sender's epoch being received (`None` until its first envelope).
    epoch: Option<u64>,
    /// Every message below this has been delivered.
    expected: u64,
    held: BTreeMap<u64, (String, Box<RawValue>)>,
    chunks: HashMap<u64, Chunks>,
}

impl Default for Inbox {
    fn default() -> Self {
        Self {
            epoch: None,
            expected: 1,
            held: BTreeMap::new(),
            chunks: HashMap::new(),
        }
    }
}

impl Inbox {
    /// The next sequence number to deliver.
    pub fn expected(&self) -> u64 {
        self.expected
    }

    /// Messages held behind a gap, and chunked ones incomplete.
    pub fn waiting(&self) -> (usize, usize) {
        (self.held.len(), self.chunks.len())
    }

    /// Forgets what waits (the sender left: those can never complete).
    pub fn clear_waiting(&mut self) {
        self.held.clear();
        self.chunks.clear();
    }

    /// The ack to send back: the cumulative ack, naming the epoch it acknowledges.
    pub fn ack(&self) -> Envelope {
        Envelope::Ack {
            a: self.expected - 1,
            e: self.epoch.filter(|e| *e != 0),
        }
    }

    /// Takes one envelope (an ack is not for an inbox: nothing); returns the messages now
    /// deliverable, in order. Duplicates and chunks of delivered messages are dropped.
    pub fn receive(&mut self, env: &Envelope) -> Vec<Delivered> {
        let (s, e, b) = match env {
            Envelope::Message { s, e, b, .. } | Envelope::Chunk { s, e, b, .. } => (*s, *e, *b),
            Envelope::Ack { .. } => return Vec::new(),
        };
        let epoch = e.unwrap_or(0);
        match self.epoch {
            None => self.epoch = Some(epoch),
            Some(current) if epoch > current => {
                // A new sequence space: what was held of the old one will never complete.
                self.epoch = Some(epoch);
                self.expected = 1;
                self.clear_waiting();
            }
            Some(current) if epoch < current => return Vec::new(),
            Some(_) => {}
        }
        if let Some(b) = b
            && b > self.expected
        {
            // Everything below the sender's base was acknowledged, so delivered to us: never
            // sent again, it must not be waited for.
            self.held = self.held.split_off(&b);
            self.chunks.retain(|seq, _| *seq >= b);
            self.expected = b;
        }
        self.store(s, env);
        let mut out = Vec::new();
        while let Some((msg_type, data)) = self.held.remove(&self.expected) {
            // Chunks of a message that also came whole (a hostile sender) would stay forever.
            self.chunks.remove(&self.expected);
            out.push(Delivered {
                seq: self.expected,
                msg_type,
                data,
            });
            self.expected += 1;
        }
        out
    }

    fn store(&mut self, s: u64, env: &Envelope) {
        if s < self.expected || self.held.contains_key(&s) || s >= self.expected + MAX_AHEAD {
            return;
        }
        match env {
            Envelope::Message { t, d, .. } => {
                self.held.insert(s, (t.clone(), d.clone()));
            }
            Envelope::Chunk { t, i, n, p, .. } => {
                let c = self.chunks.entry(s).or_insert_with(|| Chunks {
                    msg_type: t.clone(),
                    parts: vec![None; *n as usize],
                    have: 0,
                });
                let i = *i as usize;
                if c.parts.len() != *n as usize || c.parts[i].is_some() {
                    return;
                }
                c.parts[i] = Some(p.clone());
                c.have += 1;
                if c.have < c.parts.len() {
                    return;
                }
                if let Some(c) = self.chunks.remove(&s) {
                    let units: Vec<u16> = c.parts.into_iter().flatten().flat_map(|p| p.0).collect();
                    // A broken sender's message can never complete: dropped.
                    if let Ok(text) = String::from_utf16(&units)
                        && let Ok(data) = RawValue::from_string(text)
                    {
                        self.held.insert(s, (c.msg_type, data));
                    }
                }
            }
            Envelope::Ack { .. } => {}
        }
    }
}
