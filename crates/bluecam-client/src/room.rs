//! A room over the server's relay: the join, the peers, the delivery guarantee, resume.
//!
//! [`Room::join`] connects to a BlueCam server (a WebSocket, or the HTTP long-polling transport
//! where one cannot be opened: `link.rs`), joins with a token, and spawns
//! the task that keeps the room: it answers the server, keeps one [`Outbox`] per peer and one
//! [`Inbox`] per sender, a WebRTC data channel to each peer (`p2p.rs`, as the SDK's
//! `mesh.js`; unless [`Options::webrtc`] is off: then it tells every peer `{"nortc": true}`
//! and browsers use the relay with it), sends what the app hands it over that channel when it
//! is open and otherwise through the relay in batched frames within the server's rate limit,
//! retransmits what is not acknowledged (over the relay), gives up at the delivery bound,
//! notices a silent server, and resumes its session after a dropped connection or a server
//! restart (the data channels carry on meanwhile).

use crate::delivery::{Envelope, Epochs, Inbox, MAX_MESSAGE_BYTES, Outbox, Via, envelopes_of};
pub use crate::link::Transport;
use crate::link::{Incoming, Link, Nodes};
use crate::p2p::{IceConfig, LinkEvent, LinkEvents, PeerLink};
use crate::sender::{
    DELIVERY_TIMEOUT_MS, PathState, RELAY_BATCH_CHARS, TICK_MS, Tick, relay_frames, relay_msg,
    tick_peer,
};
use bluecam_proto::{CloseCode, PeerInfo};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// Silent this long, the server is pinged; silent [`DEAD_AFTER`], the connection is given up
/// and the session resumed (as the SDK does).
const PING_AFTER: Duration = Duration::from_secs(5);
const DEAD_AFTER: Duration = Duration::from_secs(12);
/// Acks wait this long, so that several messages share one.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// The share of the server's frame rate limit this client keeps to (it holds frames back
/// rather than have the server refuse them).
const RATE_MARGIN: f64 = 0.9;
/// After a peer's data channel closes, a new connection is tried after this long (the SDK's);
/// after connections that never opened, after twice as long each time, up to RELINK_MAX.
const RELINK_AFTER: Duration = Duration::from_secs(1);
const RELINK_MAX: Duration = Duration::from_secs(60);

/// The way messages to and from a peer go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// The WebRTC data channel, directly between the two peers.
    P2p,
    /// The server's relay.
    Relay,
}

impl Path {
    /// `p2p` or `relay`, as the SDK names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::P2p => "p2p",
            Path::Relay => "relay",
        }
    }
}

/// What a room reports, in order.
#[derive(Debug)]
pub enum Event {
    /// A peer came into the room.
    PeerJoined(PeerInfo),
    /// A peer left (`reason`: `left`, `timeout`, `kicked`, `replaced`).
    PeerLeft { peer: PeerInfo, reason: String },
    /// An app message, delivered once and in order per sender. `from` is `None` for a message
    /// of the app's backend (`POST /v1/rooms/{id}/messages`).
    Message {
        msg_type: String,
        data: Box<RawValue>,
        from: Option<PeerInfo>,
        /// How it came (the backend's come through the server: `Relay`).
        path: Path,
    },
    /// Messages to and from a peer now go this way (its data channel opened or closed).
    PathChange { peer: PeerInfo, path: Path },
    /// The link to the server: `connected`, `reconnecting`, or `disconnected` (for good).
    Connection(&'static str),
    /// Something the app can act on (the server's error code, or the close that ended the
    /// session: `kicked`, `room_closed`, …).
    Error { code: String, message: String },
}

/// Why a message was not delivered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// These peers did not acknowledge it (they left or were not in the room, the room ended,
    /// or the delivery bound passed).
    #[error("could not reach: {}", .0.join(", "))]
    Undeliverable(Vec<String>),
    /// Its data's JSON is larger than 1 MiB; nothing was sent.
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes")]
    TooLarge(usize),
    /// Its data is not JSON text; nothing was sent.
    #[error("the data is not JSON")]
    NotJson,
    /// This peer's token does not allow sending data (`permissions.sendData` is false).
    #[error("this peer's token does not allow sending data")]
    PermissionDenied,
}

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot reach the server: {0}")]
    Connect(String),
    /// The server refused the join (`room_not_found`, `unauthorized`, `forbidden`, `room_full`…).
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
}

/// Settles when every addressed peer acknowledged the message, or with why not.
pub type Delivery = oneshot::Receiver<Result<(), SendError>>;

enum Command {
    Send {
        msg_type: String,
        json: String,
        to: Option<Vec<String>>,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Leave(oneshot::Sender<()>),
}

/// Options of a join.
#[derive(Clone, Debug)]
pub struct Options {
    /// A message not acknowledged this long is given up (with every later one to that peer).
    pub delivery_timeout: Duration,
    /// How the server is reached: a WebSocket, falling back to HTTP long-polling where one
    /// cannot be opened (the default), or only one of them.
    pub transport: Transport,
    /// Further nodes of the same cluster (`http(s)://host:port`), in order of preference after
    /// the `server` of [`Room::join`]: a node that cannot be reached, or that goes away
    /// (restarting, draining, silent), gives way to the next (the SDK's list of nodes).
    pub nodes: Vec<String>,
    /// Whether to open a WebRTC data channel to each peer (the default, when the crate is
    /// built with its `webrtc` feature); off, every message goes through the server's relay.
    pub webrtc: bool,
    /// Reach peers only through the TURN servers of the server's `iceServers` (the SDK's
    /// `iceTransportPolicy: "relay"`).
    pub relay_only_ice: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            delivery_timeout: Duration::from_millis(DELIVERY_TIMEOUT_MS),
            transport: Transport::Auto,
            nodes: Vec::new(),
            webrtc: crate::p2p::AVAILABLE,
            relay_only_ice: false,
        }
    }
}

/// A joined room. Dropping it leaves.
#[derive(Debug)]
pub struct Room {
    me: PeerInfo,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    peers: Vec<PeerInfo>,
    transport: &'static str,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Send { .. } => "Send",
            Command::Leave(_) => "Leave",
        })
    }
}

/// `RoomClosed` → `room_closed` (the close codes' names in tests/vectors/close-codes.json).
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The indexes of a peer's pending messages that `keep` picks, oldest first.
fn pending_where(outbox: &Outbox, keep: impl Fn(&crate::delivery::Pending) -> bool) -> Vec<usize> {
    outbox
        .pending()
        .iter()
        .enumerate()
        .filter(|(_, p)| keep(p))
        .map(|(i, _)| i)
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether the token lets this peer send data (its `permissions.sendData`; true when it does
/// not say, or cannot be read: the server decides anyway).
fn token_sends_data(token: &str) -> bool {
    use base64::Engine as _;
    let Some(payload) = token.split('.').nth(1) else {
        return true;
    };
    let Ok(bytes) =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('='))
    else {
        return true;
    };
    let claims: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    claims["permissions"]["sendData"].as_bool() != Some(false)
}

/// A frame from the server, its payloads as they came (never re-serialized: a chunk may hold
/// a lone surrogate, and data keeps its bytes).
#[derive(Deserialize)]
struct Frame<'a> {
    op: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    peer: Option<PeerInfo>,
    #[serde(default)]
    peers: Option<Vec<String>>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "retryAfterMs")]
    retry_after_ms: Option<u64>,
    #[serde(default)]
    e: Option<u64>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default, rename = "type")]
    msg_type: Option<String>,
}

impl Room {
    /// Joins the room of `token` on `server` (`http(s)://host:port`, a path prefix kept),
    /// or, when it cannot be reached, on the first of `options.nodes` that can (each is tried
    /// once; a refusal is not tried elsewhere).
    pub async fn join(server: &str, token: &str, mut options: Options) -> Result<Room, JoinError> {
        let mut urls = vec![server.to_owned()];
        urls.append(&mut options.nodes);
        let mut nodes = Nodes::new(urls, options.transport);
        let mut tried = 0;
        let (link, joined) = loop {
            match nodes.connect(token, None).await {
                Ok(ok) => break ok,
                Err(JoinError::Connect(_)) if tried + 1 < nodes.len() => tried += 1,
                Err(e) => return Err(e),
            }
        };
        let transport = link.transport();
        let (commands, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let me = joined.self_.clone();
        let peers = joined.peers.clone();
        let (link_events, link_rx) = mpsc::unbounded_channel();
        let mut driver = Driver {
            webrtc: options.webrtc && crate::p2p::AVAILABLE,
            ice: IceConfig {
                servers: joined.ice_servers.clone(),
                relay_only: options.relay_only_ice,
            },
            link_events,
            connected: true,
            nodes,
            sends_data: token_sends_data(token),
            token: token.to_owned(),
            options,
            session: (
                joined.session.id.to_string(),
                joined.session.secret.expose().to_owned(),
            ),
            me: me.clone(),
            peers: HashMap::new(),
            inboxes: HashMap::new(),
            epochs: Epochs::default(),
            deliveries: HashMap::new(),
            next_delivery: 0,
            events: events_tx,
            out: VecDeque::new(),
            server_acks: HashMap::new(),
            server_seen: HashMap::new(),
            bucket: Bucket::new(&joined.limits),
            relay_paused_until: None,
            flush_due: false,
            acks_due_at: None,
            leave_done: None,
            held: VecDeque::new(),
        };
        for p in joined.peers {
            driver.add_peer(p, false);
        }
        tokio::spawn(driver.run(link, rx, link_rx));
        Ok(Room {
            me,
            commands,
            events,
            peers,
            transport,
        })
    }

    /// How the join went: `websocket` or `http` (the SDK's `room.transport`).
    pub fn transport(&self) -> &'static str {
        self.transport
    }

    /// This peer.
    pub fn me(&self) -> &PeerInfo {
        &self.me
    }

    /// The peers in the room at the join.
    pub fn initial_peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    /// Sends `json` (the data's JSON text) of `msg_type` to every peer, or to `to` (each id
    /// once, whatever the list repeats). While an addressee has 1,024 messages or 16 MiB
    /// unacknowledged, the message waits (and every message sent after it) until there is
    /// room, as the SDK's `sendMessage` does: memory in flight stays bounded per peer.
    pub fn send(&self, msg_type: &str, json: String, to: Option<Vec<String>>) -> Delivery {
        let (done, rx) = oneshot::channel();
        if json.len() > MAX_MESSAGE_BYTES {
            let _ = done.send(Err(SendError::TooLarge(json.len())));
            return rx;
        }
        if serde_json::from_str::<&RawValue>(&json).is_err() {
            let _ = done.send(Err(SendError::NotJson));
            return rx;
        }
        // A line break in JSON text can only be whitespace between its tokens (a string
        // cannot hold one raw): it becomes a space, so that the data is one line as the SDK's
        // `JSON.stringify` writes it (the HTTP transport sends a frame per line, and
        // `bluecam join` writes a message per line).
        let json = if json.contains(['\n', '\r']) {
            json.replace(['\n', '\r'], " ")
        } else {
            json
        };
        let to = to.map(|ids| {
            let mut seen = std::collections::HashSet::new();
            ids.into_iter()
                .filter(|id| seen.insert(id.clone()))
                .collect()
        });
        let cmd = Command::Send {
            msg_type: msg_type.to_owned(),
            json,
            to,
            done,
        };
        if let Err(mpsc::error::SendError(Command::Send { done, .. })) = self.commands.send(cmd) {
            let _ = done.send(Err(SendError::Undeliverable(Vec::new())));
        }
        rx
    }

    /// The next event; `None` once the room has ended and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Leaves: tells the server (the others see `peer_left` at once); what is not acknowledged
    /// yet fails (its deliveries are settled before this returns).
    pub async fn leave(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The server's frame rate limit, kept with a margin: frames wait here rather than be refused.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    burst: f64,
    per_ms: f64,
    at: Instant,
}

impl Bucket {
    fn new(limits: &bluecam_proto::Limits) -> Self {
        let burst = (limits.rate_burst_frames as f64 * RATE_MARGIN).max(1.0);
        Self {
            tokens: burst,
            burst,
            per_ms: (limits.rate_frames_per_sec as f64 * RATE_MARGIN / 1000.0).max(0.001),
            at: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens
            + now.duration_since(self.at).as_secs_f64() * 1000.0 * self.per_ms)
            .min(self.burst);
        self.at = now;
    }

    /// Whether a frame could go now (without taking its token).
    fn ready(&mut self) -> bool {
        self.refill();
        self.tokens >= 1.0
    }

    fn take(&mut self) -> bool {
        self.refill();
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token comes.
    fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.at + Duration::from_secs_f64(missing / self.per_ms / 1000.0)
    }
}

struct PeerState {
    info: PeerInfo,
    outbox: Outbox,
    /// (epoch, seq) → the deliveries waiting for it.
    waiting: HashMap<(u64, u64), Vec<u64>>,
    ack_due: bool,
    /// The WebRTC connection to this peer (its data channel), when there is one.
    link: Option<PeerLink>,
    path: Path,
    /// The peer said it makes no WebRTC connection (`nortc`).
    no_webrtc: bool,
    /// When a new connection is tried (after the last one's channel closed).
    relink_at: Option<Instant>,
    /// When acks or the channel's draining last showed progress (ms), and the channel's
    /// buffered bytes at the last tick (sender.rs).
    last_progress_at: u64,
    last_buffered: u64,
    /// Connections in a row that never opened.
    relink_fails: u32,
    /// End-to-end encryption does not match with this peer (it encrypts; this client has no
    /// room key): nothing goes to it or is taken from it.
    mismatch: bool,
}

struct PendingDelivery {
    remaining: usize,
    failed: Vec<String>,
    done: Option<oneshot::Sender<Result<(), SendError>>>,
}

struct Driver {
    /// Whether this room makes WebRTC connections.
    webrtc: bool,
    ice: IceConfig,
    link_events: LinkEvents,
    /// Whether the server is reachable now (frames can go).
    connected: bool,
    nodes: Nodes,
    token: String,
    sends_data: bool,
    options: Options,
    session: (String, String),
    me: PeerInfo,
    peers: HashMap<String, PeerState>,
    /// What was delivered from each sender id (kept while it leaves and comes back).
    inboxes: HashMap<String, Inbox>,
    epochs: Epochs,
    deliveries: HashMap<u64, PendingDelivery>,
    next_delivery: u64,
    events: mpsc::UnboundedSender<Event>,
    /// Frames to write, in order (within the rate limit).
    out: VecDeque<String>,
    server_acks: HashMap<u64, u64>,
    server_seen: HashMap<u64, u64>,
    bucket: Bucket,
    /// The server said `rate_limited`: no relay frame until then.
    relay_paused_until: Option<Instant>,
    /// New messages wait for the end of this turn, so that a burst shares frames.
    flush_due: bool,
    acks_due_at: Option<Instant>,
    /// The app's `leave`, answered once the room is over.
    leave_done: Option<oneshot::Sender<()>>,
    /// Sends waiting for room in an addressee's outbox, in the order they were made.
    held: VecDeque<Held>,
}

/// A send waiting for room in the outboxes of its addressees ([`OUTBOX_MAX_MESSAGES`],
/// [`OUTBOX_MAX_BYTES`]).
struct Held {
    msg_type: String,
    json: String,
    ids: Vec<String>,
    done: oneshot::Sender<Result<(), SendError>>,
}

/// Unacknowledged messages to one peer above which a send waits for room, as the SDK's
/// `sendMessage` does (back-pressure, never a drop).
const OUTBOX_MAX_MESSAGES: usize = 1024;
/// Unacknowledged bytes to one peer above which a send waits for room.
const OUTBOX_MAX_BYTES: usize = 16 << 20;

/// What the links tell the room: the peer's id, the link's generation, and what happened.
type LinkRx = mpsc::UnboundedReceiver<(String, String, LinkEvent)>;

enum End {
    /// Left, or the session ended for good.
    Over,
    /// The connection dropped: resume.
    Resume,
}

impl Driver {
    fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    fn nortc(&mut self, id: &str) {
        // This client makes no WebRTC connection: the peer uses the relay with it.
        self.out.push_back(
            serde_json::json!({"op": "signal", "to": id, "data": {"nortc": true}}).to_string(),
        );
    }

    /// A new WebRTC connection to a peer, in place of the one it had (`polite`: the larger
    /// id, as the SDK decides).
    fn link(&mut self, id: &str) {
        let polite = self.me.id.to_string().as_str() > id;
        let link = PeerLink::start(id, polite, &self.ice, self.link_events.clone());
        self.drop_link(id);
        if let Some(peer) = self.peers.get_mut(id) {
            peer.link = link;
            peer.relink_at = None;
        }
    }

    /// Lets a peer's connection go: what went on its channel unacknowledged goes over the
    /// relay now (whatever the room had heard of the channel: it may have opened, and been
    /// used, before its `Open` was taken), and the path is the relay's.
    fn drop_link(&mut self, id: &str) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.link.take().is_none() {
            return;
        }
        let was_p2p = peer.path == Path::P2p;
        peer.path = Path::Relay;
        let info = peer.info.clone();
        let on_channel = pending_where(&peer.outbox, |p| p.via == Via::P2p);
        if was_p2p {
            self.emit(Event::PathChange {
                peer: info,
                path: Path::Relay,
            });
        }
        if !on_channel.is_empty() {
            self.transmit(id, &on_channel, true);
        }
    }

    /// End-to-end encryption does not match with this peer (it encrypts, this client has no
    /// room key): nothing goes to it or is taken from it, no connection is made, what waits
    /// for it fails, and the app is told (as the SDK's `E2eeMismatchError`).
    fn mismatch(&mut self, id: &str) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        if peer.mismatch {
            return;
        }
        peer.mismatch = true;
        peer.no_webrtc = true;
        peer.relink_at = None;
        self.drop_link(id);
        self.fail_outbox(id, now_ms());
        self.emit(Event::Error {
            code: "e2ee_mismatch".to_owned(),
            message: format!(
                "end-to-end encryption does not match with peer {id}: it encrypts end to end, and this client has no room key"
            ),
        });
    }

    /// What a peer's link did.
    fn on_link(&mut self, id: &str, generation: &str, event: LinkEvent) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        // (An envelope is the same whichever connection brought it: one from a connection
        // just replaced is taken, and spares its sender a retransmission.)
        if let LinkEvent::Data(text) = &event {
            if !peer.mismatch
                && let Ok(raw) = serde_json::from_str::<&RawValue>(text)
                && let Some(env) = Envelope::from_raw(raw)
            {
                self.on_envelope(id, &env, Path::P2p);
            }
            return;
        }
        if peer
            .link
            .as_ref()
            .is_none_or(|l| l.generation != generation)
        {
            return;
        }
        match event {
            LinkEvent::Signal(data) => self
                .out
                .push_back(serde_json::json!({"op": "signal", "to": id, "data": data}).to_string()),
            LinkEvent::Open => {
                peer.relink_fails = 0;
                if peer.path != Path::P2p {
                    peer.path = Path::P2p;
                    let info = peer.info.clone();
                    self.emit(Event::PathChange {
                        peer: info,
                        path: Path::P2p,
                    });
                }
                // What never went out goes over the channel now.
                let Some(peer) = self.peers.get(id) else {
                    return;
                };
                let fresh = pending_where(&peer.outbox, |p| p.via == Via::None);
                self.transmit(id, &fresh, false);
            }
            LinkEvent::Down => {
                let opened = peer.path == Path::P2p;
                self.drop_link(id);
                if let Some(peer) = self.peers.get_mut(id)
                    && !peer.no_webrtc
                {
                    // A connection that never opened is tried again later and later (up to
                    // RELINK_MAX): the peer may not be reachable at all.
                    if !opened {
                        peer.relink_fails = peer.relink_fails.saturating_add(1);
                    }
                    let wait = (RELINK_AFTER * 2u32.pow(peer.relink_fails.min(6))).min(RELINK_MAX);
                    peer.relink_at = Some(Instant::now() + wait);
                }
            }
            LinkEvent::Data(_) => {}
        }
    }

    /// New connections for peers whose channel closed a while ago.
    fn relink_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| p.relink_at.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.link(&id);
        }
    }

    /// Signaling data from a peer that is about its WebRTC connection (perfect negotiation,
    /// with the SDK's generations: `gen` names the sender's connection, `to` ours).
    fn on_rtc_signal(&mut self, from: &str, data: serde_json::Value) {
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        if peer.mismatch {
            return;
        }
        // A peer that encrypts end to end (its key exchange's hello, or a sealed signal): this
        // client has no room key. It is told (at once, as the SDK does), and nothing more goes
        // either way.
        let hello = data.get("e2ee");
        if hello.is_some_and(|v| v == false) {
            return;
        }
        if hello.is_some() || data.get("x").is_some() {
            if hello.is_some() {
                self.out.push_back(
                    serde_json::json!({"op": "signal", "to": from, "data": {"e2ee": false}})
                        .to_string(),
                );
            }
            self.mismatch(from);
            return;
        }
        if data.get("nortc").is_some_and(|v| v == true) {
            peer.no_webrtc = true;
            peer.relink_at = None;
            self.drop_link(from);
            return;
        }
        let offer = data["description"]["type"] == "offer";
        if !self.webrtc {
            // The peer did not hear (or forgot) that this one has no WebRTC.
            if offer {
                self.nortc(from);
            }
            return;
        }
        if data.get("description").is_none() && data.get("candidate").is_none() {
            return;
        }
        let generation = data.get("gen").and_then(|g| g.as_str()).map(str::to_owned);
        let to = data.get("to").and_then(|g| g.as_str());
        match &peer.link {
            // Addressed to an older connection of ours: stale.
            Some(link) if to.is_some_and(|to| to != link.generation) => return,
            // To the connection let go last (before the next one is made): stale too.
            None if to.is_some() => return,
            _ => {}
        }
        // An offer from a newer remote connection: the peer started over, so do we.
        let fresh = offer
            && peer
                .link
                .as_ref()
                .is_some_and(|l| l.remote_gen.is_some() && l.remote_gen != generation);
        if peer.link.is_none() || fresh {
            peer.no_webrtc = false;
            self.link(from);
        }
        let Some(link) = self.peers.get_mut(from).and_then(|p| p.link.as_mut()) else {
            return;
        };
        if link.remote_gen.is_none() {
            link.remote_gen.clone_from(&generation);
        }
        if generation.is_some() && generation != link.remote_gen {
            return;
        }
        link.signal(data, false);
    }

    fn add_peer(&mut self, info: PeerInfo, announce: bool) {
        let id = info.id.to_string();
        if id == self.me.id.to_string() || self.peers.contains_key(&id) {
            return;
        }
        let outbox = Outbox::new(self.epochs.next(now_ms()));
        self.inboxes.entry(id.clone()).or_default();
        self.peers.insert(
            id.clone(),
            PeerState {
                info: info.clone(),
                outbox,
                waiting: HashMap::new(),
                ack_due: false,
                link: None,
                path: Path::Relay,
                no_webrtc: false,
                relink_at: None,
                last_progress_at: 0,
                last_buffered: 0,
                relink_fails: 0,
                mismatch: false,
            },
        );
        if self.webrtc {
            self.link(&id);
        } else {
            self.nortc(&id);
        }
        if announce {
            self.emit(Event::PeerJoined(info));
        }
    }

    fn remove_peer(&mut self, id: &str) -> Option<PeerInfo> {
        let peer = self.peers.remove(id)?;
        // (In the order they were sent: delivery ids grow with it, and an app, `bluecam join`
        // among them, may be told of them in the order they settle.)
        let mut failed: Vec<u64> = peer.waiting.into_values().flatten().collect();
        failed.sort_unstable();
        for d in failed {
            self.settle(d, Some(id));
        }
        Some(peer.info)
    }

    /// One peer of delivery `d` acknowledged it (`failed`: `None`) or did not.
    fn settle(&mut self, d: u64, failed: Option<&str>) {
        let Some(p) = self.deliveries.get_mut(&d) else {
            return;
        };
        p.remaining -= 1;
        if let Some(id) = failed {
            p.failed.push(id.to_owned());
        }
        if p.remaining == 0
            && let Some(p) = self.deliveries.remove(&d)
            && let Some(done) = p.done
        {
            let _ = done.send(if p.failed.is_empty() {
                Ok(())
            } else {
                Err(SendError::Undeliverable(p.failed))
            });
        }
    }

    fn send(
        &mut self,
        msg_type: String,
        json: String,
        to: Option<Vec<String>>,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        if !self.sends_data {
            let _ = done.send(Err(SendError::PermissionDenied));
            return;
        }
        let ids: Vec<String> = match to {
            Some(ids) => ids,
            None => self.peers.keys().cloned().collect(),
        };
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.reachable(id))
            .cloned()
            .collect();
        if ids.is_empty() || missing.len() == ids.len() {
            let _ = done.send(if missing.is_empty() {
                Ok(())
            } else {
                Err(SendError::Undeliverable(missing))
            });
            return;
        }
        // An addressee with a full outbox: the send waits (and every send after it, so that
        // each peer gets its messages in the order they were sent).
        if !self.held.is_empty() || self.full(&ids) {
            self.held.push_back(Held {
                msg_type,
                json,
                ids,
                done,
            });
            return;
        }
        self.add(msg_type, json, ids, done);
    }

    /// Everything unacknowledged to a peer fails (its deliveries settle naming it), and the
    /// pair starts a new sequence space (a new epoch).
    fn fail_outbox(&mut self, id: &str, now: u64) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let epoch = peer.outbox.epoch();
        let failed: Vec<u64> = peer
            .outbox
            .fail()
            .into_iter()
            .flat_map(|p| peer.waiting.remove(&(epoch, p.seq)).unwrap_or_default())
            .collect();
        peer.outbox = Outbox::new(self.epochs.next(now));
        for d in failed {
            self.settle(d, Some(id));
        }
    }

    /// Whether a message can be addressed to this peer (in the room, and not one whose
    /// end-to-end encryption does not match).
    fn reachable(&self, id: &str) -> bool {
        self.peers.get(id).is_some_and(|p| !p.mismatch)
    }

    /// Whether one of these peers has no room for another message.
    fn full(&self, ids: &[String]) -> bool {
        ids.iter().any(|id| {
            self.peers.get(id).is_some_and(|p| {
                p.outbox.pending().len() >= OUTBOX_MAX_MESSAGES
                    || p.outbox.bytes() >= OUTBOX_MAX_BYTES
            })
        })
    }

    /// Takes the sends that waited, in order, while their addressees have room (a peer that
    /// left meanwhile makes its send undeliverable).
    fn release_held(&mut self) {
        while let Some(next) = self.held.front() {
            if self.full(&next.ids) {
                return;
            }
            let Some(Held {
                msg_type,
                json,
                ids,
                done,
            }) = self.held.pop_front()
            else {
                return;
            };
            if ids.iter().any(|id| self.reachable(id)) {
                self.add(msg_type, json, ids, done);
            } else {
                let _ = done.send(Err(SendError::Undeliverable(ids)));
            }
        }
    }

    /// Adds a message to the outboxes of these peers (at least one of them in the room; those
    /// with room): it goes to those in the room, and the send fails naming the others once the
    /// rest is settled.
    fn add(
        &mut self,
        msg_type: String,
        json: String,
        ids: Vec<String>,
        done: oneshot::Sender<Result<(), SendError>>,
    ) {
        let (ids, missing): (Vec<String>, Vec<String>) =
            ids.into_iter().partition(|id| self.reachable(id));
        let d = self.next_delivery;
        self.next_delivery += 1;
        self.deliveries.insert(
            d,
            PendingDelivery {
                remaining: ids.len(),
                failed: missing,
                done: Some(done),
            },
        );
        let now = now_ms();
        for id in ids {
            if let Some(peer) = self.peers.get_mut(&id) {
                let seq = peer.outbox.add(&msg_type, json.clone(), now);
                peer.waiting
                    .entry((peer.outbox.epoch(), seq))
                    .or_default()
                    .push(d);
            }
        }
        self.flush_due = true;
    }

    /// Sends what was never sent (new messages, or frames that could not go), batched.
    fn flush(&mut self) {
        self.flush_due = false;
        self.flush_to(false);
    }

    /// Sends what was never sent to peers whose data channel is open, at once: the relay's
    /// rate limit (or its absence while the server is away) holds back only what goes by the
    /// relay, which waits for [`Driver::flush`].
    fn flush_channels(&mut self) {
        self.flush_to(true);
    }

    fn flush_to(&mut self, channels_only: bool) {
        let ids: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| !channels_only || p.link.as_ref().is_some_and(PeerLink::can_take_more))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let unsent = pending_where(&self.peers[&id].outbox, |p| p.sent_at == 0);
            if !unsent.is_empty() {
                self.send_pending(&id, &unsent, false, !channels_only);
            }
        }
    }

    /// Sends these pending messages of one peer: over its data channel when that is open
    /// (and `relay_only` is false), otherwise over the relay (not while the server asked to
    /// wait, or is away: they stay unsent, and go with the next flush or the resume).
    fn transmit(&mut self, id: &str, due: &[usize], relay_only: bool) {
        self.send_pending(id, due, relay_only, true);
    }

    /// [`Driver::transmit`]; `relay`: whether the relay may be used now at all.
    fn send_pending(&mut self, id: &str, due: &[usize], relay_only: bool, relay: bool) {
        let relay_ok =
            relay && self.connected && self.relay_paused_until.is_none_or(|t| Instant::now() >= t);
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let now = now_ms();
        let stamp = peer.outbox.stamp();
        let mut link = peer.link.as_ref().filter(|l| !relay_only && l.is_open());
        let mut messages = Vec::new();
        for &i in due {
            let Some(p) = peer.outbox.pending_mut().get_mut(i) else {
                continue;
            };
            let envelopes = envelopes_of(p.seq, &p.msg_type, &p.json, Some(stamp));
            if let Some(l) = link {
                // (All of a message's chunks or none; after a refusal, none of the later
                // messages either: they go as the channel drains, or by the relay.)
                if l.send_all(envelopes.iter().map(Envelope::to_json).collect()) {
                    p.via = Via::P2p;
                    p.sent_at = now;
                    peer.last_progress_at = now;
                    continue;
                }
                link = None;
            }
            if !relay_ok {
                // Nowhere to go now: unsent (the next tick, flush or resume sends it; a try
                // that did not happen does not count).
                p.sent_at = 0;
                if p.via == Via::P2p {
                    p.via = Via::Relay;
                }
                continue;
            }
            p.via = Via::Relay;
            p.sent_at = now;
            messages.push((p.json.encode_utf16().count(), envelopes));
        }
        for frame in relay_frames(messages, RELAY_BATCH_CHARS) {
            self.out.push_back(format!(
                "{{\"op\":\"send\",\"to\":[{}],\"msg\":{}}}",
                serde_json::json!(id),
                relay_msg(&frame.envelopes)
            ));
        }
    }

    fn tick(&mut self) {
        self.tick_peers(true);
        self.relink_due();
    }

    /// While reconnecting: only the delivery bound (nothing can be sent; a resume sends
    /// everything unacknowledged again), so that every send settles in time however long the
    /// server is away, as in the SDK; sends that waited for room may go into the outboxes.
    fn expire(&mut self) {
        self.tick_peers(false);
        self.relink_due();
        self.release_held();
    }

    fn tick_peers(&mut self, connected: bool) {
        let now = now_ms();
        let bound = self.options.delivery_timeout.as_millis() as u64;
        let ids: Vec<String> = self.peers.keys().cloned().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            let link_open = peer.link.as_ref().is_some_and(PeerLink::is_open);
            let path = PathState {
                link_open,
                buffered: if link_open {
                    peer.link.as_ref().map_or(0, PeerLink::buffered)
                } else {
                    0
                },
                last_buffered: peer.last_buffered,
                last_progress_at: peer.last_progress_at,
            };
            match tick_peer(peer.outbox.pending_mut().iter_mut(), path, now, bound) {
                Tick::Expire => self.fail_outbox(&id, now),
                Tick::Send {
                    due,
                    last_progress_at,
                    last_buffered,
                } => {
                    peer.last_progress_at = last_progress_at;
                    peer.last_buffered = last_buffered;
                    // Again over the relay while the server is there; over the channel
                    // while it is away (as the SDK).
                    if !due.is_empty() {
                        self.transmit(&id, &due, connected);
                    }
                }
            }
        }
        // (What could not go yet goes with the next frame the rate limit allows.)
        self.flush_due = true;
    }

    fn flush_acks(&mut self) {
        self.flush_acks_by(true);
    }

    /// `channels`: acks may go over the data channels (not at a leave, which lets them go at
    /// once: the relay's go out before the `leave`).
    fn flush_acks_by(&mut self, channels: bool) {
        self.acks_due_at = None;
        let connected = self.connected;
        let mut out = Vec::new();
        for (id, peer) in &mut self.peers {
            if !peer.ack_due {
                continue;
            }
            let Some(inbox) = self.inboxes.get(id) else {
                continue;
            };
            let ack = inbox.ack().to_json();
            if channels
                && let Some(link) = &peer.link
                && link.send(ack.clone())
            {
                peer.ack_due = false;
                continue;
            }
            // (While the server is away, the resume sends it.)
            if !connected {
                continue;
            }
            peer.ack_due = false;
            let to = serde_json::json!(id);
            // A peer that may not send data has its relayed frames refused: its acks go
            // as signals (as the SDK's do).
            out.push(if self.sends_data {
                format!("{{\"op\":\"send\",\"to\":[{to}],\"msg\":{ack}}}")
            } else {
                format!("{{\"op\":\"signal\",\"to\":{to},\"data\":{{\"ack\":{ack}}}}}")
            });
        }
        self.out.extend(out);
        if connected {
            for (e, s) in std::mem::take(&mut self.server_acks) {
                self.out
                    .push_back(serde_json::json!({"op": "server_ack", "e": e, "s": s}).to_string());
            }
        }
    }

    fn ack_soon(&mut self) {
        self.acks_due_at
            .get_or_insert_with(|| Instant::now() + ACK_DELAY);
    }

    fn on_envelope(&mut self, from: &str, env: &Envelope, path: Path) {
        if let Envelope::Ack { .. } = env {
            let Some(peer) = self.peers.get_mut(from) else {
                return;
            };
            let epoch = peer.outbox.epoch();
            let settled: Vec<u64> = peer
                .outbox
                .ack(env)
                .into_iter()
                .flat_map(|seq| peer.waiting.remove(&(epoch, seq)).unwrap_or_default())
                .collect();
            if !settled.is_empty() {
                peer.last_progress_at = now_ms();
            }
            for d in settled {
                self.settle(d, None);
            }
            return;
        }
        let Some(peer) = self.peers.get_mut(from) else {
            return;
        };
        peer.ack_due = true;
        let info = peer.info.clone();
        let delivered = self
            .inboxes
            .entry(from.to_owned())
            .or_default()
            .receive(env);
        for m in delivered {
            self.emit(Event::Message {
                msg_type: m.msg_type,
                data: m.data,
                from: Some(info.clone()),
                path,
            });
        }
        self.ack_soon();
    }

    /// A relayed `msg`: one envelope, or an array of them.
    fn on_relayed(&mut self, from: &str, msg: &RawValue) {
        if self.peers.get(from).is_some_and(|p| p.mismatch) {
            return;
        }
        let list: Vec<&RawValue> = if msg.get().trim_start().starts_with('[') {
            serde_json::from_str(msg.get()).unwrap_or_default()
        } else {
            vec![msg]
        };
        for raw in list {
            if let Some(env) = Envelope::from_raw(raw) {
                self.on_envelope(from, &env, Path::Relay);
            }
        }
    }

    /// One frame from the server; `Some` when the session ends.
    fn on_frame(&mut self, text: &str) -> Option<End> {
        let f: Frame<'_> = serde_json::from_str(text).ok()?;
        let from = f.from.clone().unwrap_or_default();
        match f.op.as_str() {
            "peer_joined" => {
                if let Some(p) = f.peer {
                    self.add_peer(p, true);
                }
            }
            "peer_left" => {
                let id = f.peer.map(|p| p.id.to_string()).unwrap_or_default();
                if let Some(info) = self.remove_peer(&id) {
                    self.emit(Event::PeerLeft {
                        peer: info,
                        reason: f.reason.unwrap_or_else(|| "left".to_owned()),
                    });
                }
            }
            "message" => {
                if let Some(msg) = f.msg {
                    self.on_relayed(&from, msg);
                }
            }
            "signal" => {
                #[derive(Deserialize)]
                struct SignalData<'a> {
                    #[serde(default, borrow)]
                    ack: Option<&'a RawValue>,
                }
                let raw = f.data?;
                match serde_json::from_str::<SignalData<'_>>(raw.get()) {
                    // Acks of a peer that may not send data come as signals.
                    Ok(SignalData { ack: Some(ack) }) => {
                        if let Some(env @ Envelope::Ack { .. }) = Envelope::from_raw(ack) {
                            self.on_envelope(&from, &env, Path::Relay);
                        }
                    }
                    Ok(_) => {
                        if let Ok(data) = serde_json::from_str::<serde_json::Value>(raw.get())
                            && data.is_object()
                        {
                            self.on_rtc_signal(&from, data);
                        }
                    }
                    Err(_) => {}
                }
            }
            "server_message" => {
                let (e, s) = (f.e?, f.s?);
                let last = self.server_seen.get(&e).copied().unwrap_or(0);
                if s > last {
                    self.server_seen.insert(e, s);
                    if let Some(data) = f.data {
                        self.emit(Event::Message {
                            msg_type: f.msg_type.unwrap_or_default(),
                            data: data.to_owned(),
                            from: None,
                            path: Path::Relay,
                        });
                    }
                }
                let ack = self.server_acks.entry(e).or_insert(0);
                *ack = (*ack).max(s).max(last);
                self.ack_soon();
            }
            "ping" => self.out.push_back(r#"{"op":"pong"}"#.to_owned()),
            "room_closed" => {
                self.emit(Event::Error {
                    code: "room_closed".to_owned(),
                    message: format!("the room was {}", f.reason.as_deref().unwrap_or("closed")),
                });
                return Some(End::Over);
            }
            "error" => {
                let code = f.code.unwrap_or_else(|| "error".to_owned());
                match code.as_str() {
                    "rate_limited" => {
                        let wait = Duration::from_millis(f.retry_after_ms.unwrap_or(100).max(1));
                        self.relay_paused_until = Some(Instant::now() + wait);
                    }
                    // Not passed on to these peers now (their node is away): soon again.
                    "unavailable" => {
                        for id in f.peers.unwrap_or_default() {
                            if let Some(p) = self.peers.get_mut(&id) {
                                for e in p.outbox.pending_mut() {
                                    e.tries = 0;
                                }
                            }
                        }
                    }
                    // (A relay frame for a peer that is gone is the delivery layer's business.)
                    "unknown_peer" => {}
                    _ => self.emit(Event::Error {
                        code,
                        message: f.message.unwrap_or_default(),
                    }),
                }
            }
            _ => {}
        }
        None
    }

    async fn run(
        mut self,
        link: Link,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut links: LinkRx,
    ) {
        self.emit(Event::Connection("connected"));
        let mut link = Some(link);
        while let Some(mut current) = link.take() {
            if let End::Resume = self.serve(&mut current, &mut commands, &mut links).await {
                // Let go of the old connection first (an HTTP session is ended on the server,
                // so that what comes meanwhile is kept for the resume).
                drop(current);
                self.connected = false;
                self.emit(Event::Connection("reconnecting"));
                link = self.resume(&mut commands, &mut links).await;
                if link.is_some() {
                    self.connected = true;
                    self.emit(Event::Connection("connected"));
                }
            }
        }
        self.end();
        // (`leave` returns once every delivery is settled.)
        if let Some(done) = self.leave_done.take() {
            let _ = done.send(());
        }
    }

    /// The room is over: whatever is not acknowledged fails.
    fn end(&mut self) {
        // (Every peer's, in the order they were sent.)
        let mut failed: Vec<(u64, String)> = Vec::new();
        for (id, peer) in std::mem::take(&mut self.peers) {
            failed.extend(
                peer.waiting
                    .into_values()
                    .flatten()
                    .map(|d| (d, id.clone())),
            );
        }
        failed.sort_unstable();
        for (d, id) in failed {
            self.settle(d, Some(&id));
        }
        for held in std::mem::take(&mut self.held) {
            let _ = held.done.send(Err(SendError::Undeliverable(held.ids)));
        }
        self.emit(Event::Connection("disconnected"));
    }

    /// The app's command while the server is away; true when it left (or dropped the Room):
    /// the room is over.
    fn command_while_away(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            Some(Command::Send {
                msg_type,
                json,
                to,
                done,
            }) => {
                self.send(msg_type, json, to, done);
                false
            }
            Some(Command::Leave(done)) => {
                self.leave_done = Some(done);
                true
            }
            None => true,
        }
    }

    /// Messages and acks over the data channels go while the server is away.
    fn flush_while_away(&mut self) {
        if self.flush_due {
            self.flush_channels();
        }
        if self.acks_due_at.is_some_and(|t| t <= Instant::now()) {
            self.flush_acks();
        }
    }

    /// Resumes the session, backing off up to 5 s; `None` when the server refuses it (the
    /// session expired, the token was refused, the room is gone) or the app left meanwhile.
    async fn resume(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        links: &mut LinkRx,
    ) -> Option<Link> {
        let mut wait = Duration::from_millis(250);
        let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
        loop {
            let (token, (session, secret)) = (self.token.clone(), self.session.clone());
            // (Taken out while the attempt runs beside the sends and the ticker.)
            let mut nodes = std::mem::take(&mut self.nodes);
            let result = {
                let attempt = nodes.connect(&token, Some((&session, &secret)));
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        r = &mut attempt => break r,
                        cmd = commands.recv() => if self.command_while_away(cmd) {
                            return None;
                        },
                        _ = ticker.tick() => self.expire(),
                        Some((id, generation, event)) = links.recv() => self.on_link(&id, &generation, event),
                    }
                    self.flush_while_away();
                }
            };
            self.nodes = nodes;
            match result {
                Ok((link, joined)) => {
                    // (Relay frames are made again below; what the data channels asked to
                    // signal meanwhile goes now.)
                    self.out.retain(|f| f.starts_with(r#"{"op":"signal""#));
                    self.bucket = Bucket::new(&joined.limits);
                    // Reconcile the peers: those gone left; new ones joined.
                    let present: Vec<String> =
                        joined.peers.iter().map(|p| p.id.to_string()).collect();
                    let gone: Vec<String> = self
                        .peers
                        .keys()
                        .filter(|id| !present.contains(id))
                        .cloned()
                        .collect();
                    for id in gone {
                        if let Some(info) = self.remove_peer(&id) {
                            self.emit(Event::PeerLeft {
                                peer: info,
                                reason: "left".to_owned(),
                            });
                        }
                    }
                    for p in joined.peers {
                        self.add_peer(p, true);
                    }
                    // What may have been lost with the connection goes again: every
                    // unacknowledged message (over the data channel where it is open), the
                    // acks, and that this peer has no WebRTC (where it has none).
                    let ids: Vec<String> = self.peers.keys().cloned().collect();
                    for id in ids {
                        if !self.webrtc {
                            self.nortc(&id);
                        }
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.ack_due = true;
                            for e in p.outbox.pending_mut() {
                                if e.via != Via::P2p {
                                    e.sent_at = 0;
                                }
                            }
                        }
                    }
                    self.connected = true;
                    self.flush();
                    self.ack_soon();
                    return Some(link);
                }
                Err(JoinError::Refused { code, message }) => {
                    self.emit(Event::Error { code, message });
                    return None;
                }
                Err(JoinError::Connect(_)) => {}
            }
            // (A little jitter, so that clients of a restarted server do not come back at once.)
            let jitter = Duration::from_millis(
                u64::from(
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.subsec_nanos()),
                ) % 100,
            );
            let backoff = tokio::time::sleep(wait + jitter);
            tokio::pin!(backoff);
            loop {
                tokio::select! {
                    () = &mut backoff => break,
                    _ = ticker.tick() => self.expire(),
                    Some((id, generation, event)) = links.recv() => self.on_link(&id, &generation, event),
                    cmd = commands.recv() => if self.command_while_away(cmd) {
                        return None;
                    },
                }
                self.flush_while_away();
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    /// Writes what is queued, within the rate limit: false when the socket is gone.
    async fn write_out(&mut self, link: &mut Link) -> bool {
        while !self.out.is_empty() && self.bucket.take() {
            let Some(text) = self.out.pop_front() else {
                break;
            };
            if !link.send(text).await {
                return false;
            }
        }
        true
    }

    async fn serve(
        &mut self,
        link: &mut Link,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        links: &mut LinkRx,
    ) -> End {
        let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
        let mut heard = Instant::now();
        let mut pinged = false;
        loop {
            // (Acknowledgements, or a peer's leaving, may have made room for sends that wait.)
            if !self.held.is_empty() {
                self.release_held();
            }
            // New messages become frames only when a frame can go: while the rate limit holds
            // frames back, messages gather, and then share one.
            if self.flush_due && self.out.is_empty() && self.bucket.ready() {
                self.flush();
            } else if self.flush_due {
                // (Messages to peers on an open channel do not wait for the relay's turn.)
                self.flush_channels();
            }
            if !self.write_out(link).await {
                return End::Resume;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            let write_at = if self.out.is_empty() && !self.flush_due {
                far
            } else {
                self.bucket.next_at()
            };
            let acks_at = self.acks_due_at.unwrap_or(far);
            let silent_at = if pinged {
                heard + DEAD_AFTER
            } else {
                heard + PING_AFTER
            };
            tokio::select! {
                incoming = link.recv() => {
                    heard = Instant::now();
                    pinged = false;
                    match incoming {
                        Incoming::Frame(text) => {
                            if let Some(end) = self.on_frame(text.as_str()) {
                                link.close().await;
                                return end;
                            }
                        }
                        Incoming::Closed(code) => return self.closed(code),
                    }
                }
                cmd = commands.recv() => {
                    let mut next = cmd;
                    loop {
                        match next {
                            Some(Command::Send { msg_type, json, to, done }) => self.send(msg_type, json, to, done),
                            // Left, or the Room was dropped: leave.
                            Some(Command::Leave(done)) => {
                                self.leave(link).await;
                                self.leave_done = Some(done);
                                return End::Over;
                            }
                            None => {
                                self.leave(link).await;
                                return End::Over;
                            }
                        }
                        // (Everything already asked for goes in this turn: a burst shares frames.)
                        match commands.try_recv() {
                            Ok(c) => next = Some(c),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => next = None,
                        }
                    }
                }
                _ = ticker.tick() => self.tick(),
                Some((id, generation, event)) = links.recv() => self.on_link(&id, &generation, event),
                _ = tokio::time::sleep_until(acks_at) => self.flush_acks(),
                _ = tokio::time::sleep_until(write_at) => {}
                _ = tokio::time::sleep_until(silent_at) => {
                    if pinged {
                        // (Another node, if there is one, as the SDK after 4998.)
                        self.nodes.advance();
                        return End::Resume;
                    }
                    pinged = true;
                    self.out.push_back(r#"{"op":"ping"}"#.to_owned());
                }
            }
        }
    }

    /// Tells the server (after the acks that are due), and fails what is not acknowledged.
    async fn leave(&mut self, link: &mut Link) {
        self.flush_acks_by(false);
        self.out.push_back(r#"{"op":"leave"}"#.to_owned());
        // (Within the rate limit, but not waiting for it: a leave goes now.)
        while let Some(text) = self.out.pop_front() {
            if !matches!(
                tokio::time::timeout(Duration::from_secs(2), link.send(text)).await,
                Ok(true)
            ) {
                break;
            }
        }
        link.close().await;
    }

    /// The server ended the connection (`code`: its close code; `None`: it dropped): resume
    /// (on the next node when this one is going away), or the session is over.
    fn closed(&mut self, code: Option<u16>) -> End {
        let code = code.and_then(CloseCode::from_code);
        if code.is_some_and(CloseCode::next_node) {
            self.nodes.advance();
        }
        match code {
            Some(c) if !c.resumable() => {
                self.emit(Event::Error {
                    code: snake(&format!("{c:?}")),
                    message: c.reason().to_owned(),
                });
                End::Over
            }
            _ => End::Resume,
        }
    }
}
