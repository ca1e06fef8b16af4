//! A room over the server's relay: the join, the peers, the delivery guarantee, resume.
//!
//! [`Room::join`] connects to a BlueCam server over a WebSocket, joins with a token, and spawns
//! the task that keeps the room: it answers the server, keeps one [`Outbox`] per peer and one
//! [`Inbox`] per sender, sends each message through the relay (this client does not make
//! WebRTC connections yet: it tells every peer `{"nortc": true}`, so browsers use the relay
//! with it too), retransmits what is not acknowledged, gives up at the delivery bound and
//! resumes its session after a dropped connection or a server restart.

use crate::delivery::{Envelope, Epochs, Inbox, Outbox, Via, envelopes_of};
use crate::sender::{
    DELIVERY_TIMEOUT_MS, PathState, RELAY_BATCH_CHARS, TICK_MS, Tick, relay_frames, relay_msg,
    tick_peer,
};
use bluecam_proto::{CloseCode, PeerInfo};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

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
    },
    /// The link to the server: `connected`, `reconnecting`, or `disconnected` (for good).
    Connection(&'static str),
    /// Something the app can act on (the server's error code, or the close that ended the
    /// session: `kicked`, `room_closed`, …).
    Error { code: String, message: String },
}

/// Why a message did not reach some of its peers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("could not reach: {}", peers.join(", "))]
pub struct Undeliverable {
    /// The ids of the peers that did not acknowledge it (they left, the room ended, or the
    /// delivery bound passed).
    pub peers: Vec<String>,
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

/// Settles when every addressed peer acknowledged the message, or with the peers that did not.
pub type Delivery = oneshot::Receiver<Result<(), Undeliverable>>;

enum Command {
    Send {
        msg_type: String,
        json: String,
        to: Option<Vec<String>>,
        done: oneshot::Sender<Result<(), Undeliverable>>,
    },
    Leave(oneshot::Sender<()>),
}

/// Options of a join.
#[derive(Clone, Debug)]
pub struct Options {
    /// A message not acknowledged this long is given up (with every later one to that peer).
    pub delivery_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            delivery_timeout: Duration::from_millis(DELIVERY_TIMEOUT_MS),
        }
    }
}

/// A joined room. Dropping it leaves the task running until [`Room::leave`]; leave to go.
#[derive(Debug)]
pub struct Room {
    me: PeerInfo,
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<Event>,
    peers: Vec<PeerInfo>,
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

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ws_url(server: &str) -> String {
    let base = server.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_owned()
    };
    format!("{base}/v1/ws")
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket and joins (or resumes); the socket and the `joined` frame.
async fn connect(
    url: &str,
    token: &str,
    resume: Option<(&str, &str)>,
) -> Result<(Ws, bluecam_proto::Joined), JoinError> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(|e| JoinError::Connect(e.to_string()))?;
    let mut join = serde_json::json!({"op": "join", "token": token});
    if let Some((session, secret)) = resume {
        join["resume"] = serde_json::json!({"session": session, "secret": secret});
    }
    ws.send(WsMessage::text(join.to_string()))
        .await
        .map_err(|e| JoinError::Connect(e.to_string()))?;
    while let Some(msg) = ws.next().await {
        let msg = msg.map_err(|e| JoinError::Connect(e.to_string()))?;
        let WsMessage::Text(text) = msg else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        match v["op"].as_str() {
            Some("joined") => {
                let joined: bluecam_proto::Joined = serde_json::from_value(v).map_err(|e| {
                    JoinError::Connect(format!("a joined frame it cannot read: {e}"))
                })?;
                return Ok((ws, joined));
            }
            Some("error") => {
                return Err(JoinError::Refused {
                    code: v["code"].as_str().unwrap_or("error").to_owned(),
                    message: v["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
            _ => {}
        }
    }
    Err(JoinError::Connect(
        "the server closed the connection before answering the join".to_owned(),
    ))
}

impl Room {
    /// Joins the room of `token` on `server` (`http(s)://host:port`, a path prefix kept).
    pub async fn join(server: &str, token: &str, options: Options) -> Result<Room, JoinError> {
        let url = ws_url(server);
        let (ws, joined) = connect(&url, token, None).await?;
        let (commands, rx) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let me = joined.self_.clone();
        let peers = joined.peers.clone();
        let mut driver = Driver {
            url,
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
            out: Vec::new(),
            server_acks: HashMap::new(),
            server_seen: HashMap::new(),
        };
        for p in joined.peers {
            driver.add_peer(p, false);
        }
        tokio::spawn(driver.run(ws, rx));
        Ok(Room {
            me,
            commands,
            events,
            peers,
        })
    }

    /// This peer.
    pub fn me(&self) -> &PeerInfo {
        &self.me
    }

    /// The peers in the room at the join.
    pub fn initial_peers(&self) -> &[PeerInfo] {
        &self.peers
    }

    /// Sends `json` (the data's JSON text) of `msg_type` to every peer, or to `to`.
    pub fn send(&self, msg_type: &str, json: String, to: Option<Vec<String>>) -> Delivery {
        let (done, rx) = oneshot::channel();
        let cmd = Command::Send {
            msg_type: msg_type.to_owned(),
            json,
            to,
            done,
        };
        if let Err(mpsc::error::SendError(Command::Send { done, .. })) = self.commands.send(cmd) {
            let _ = done.send(Err(Undeliverable { peers: Vec::new() }));
        }
        rx
    }

    /// The next event; `None` once the room has ended and every event was taken.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Leaves: tells the server (the others see `peer_left` at once); what is not acknowledged
    /// yet fails.
    pub async fn leave(self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct PeerState {
    info: PeerInfo,
    outbox: Outbox,
    /// (epoch, seq) → the deliveries waiting for it.
    waiting: HashMap<(u64, u64), Vec<u64>>,
    ack_due: bool,
}

struct PendingDelivery {
    remaining: usize,
    failed: Vec<String>,
    done: Option<oneshot::Sender<Result<(), Undeliverable>>>,
}

struct Driver {
    url: String,
    token: String,
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
    /// Frames to write, in order.
    out: Vec<String>,
    server_acks: HashMap<u64, u64>,
    server_seen: HashMap<u64, u64>,
}

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
            },
        );
        // This client does not make WebRTC connections: the peer uses the relay with it.
        self.out.push(
            serde_json::json!({"op": "signal", "to": id, "data": {"nortc": true}}).to_string(),
        );
        if announce {
            self.emit(Event::PeerJoined(info));
        }
    }

    fn remove_peer(&mut self, id: &str) -> Option<PeerInfo> {
        let peer = self.peers.remove(id)?;
        let failed: Vec<u64> = peer.waiting.into_values().flatten().collect();
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
                Err(Undeliverable { peers: p.failed })
            });
        }
    }

    fn send(
        &mut self,
        msg_type: String,
        json: String,
        to: Option<Vec<String>>,
        done: oneshot::Sender<Result<(), Undeliverable>>,
    ) {
        let ids: Vec<String> = match to {
            Some(ids) => ids,
            None => self.peers.keys().cloned().collect(),
        };
        let missing: Vec<String> = ids
            .iter()
            .filter(|id| !self.peers.contains_key(*id))
            .cloned()
            .collect();
        if !missing.is_empty() || ids.is_empty() {
            let _ = done.send(if missing.is_empty() {
                Ok(())
            } else {
                Err(Undeliverable { peers: missing })
            });
            return;
        }
        let d = self.next_delivery;
        self.next_delivery += 1;
        self.deliveries.insert(
            d,
            PendingDelivery {
                remaining: ids.len(),
                failed: Vec::new(),
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
                let last = peer.outbox.pending().len() - 1;
                self.transmit(&id, &[last]);
            }
        }
    }

    /// Sends these pending messages of one peer over the relay.
    fn transmit(&mut self, id: &str, due: &[usize]) {
        let Some(peer) = self.peers.get_mut(id) else {
            return;
        };
        let now = now_ms();
        let stamp = peer.outbox.stamp();
        let mut messages = Vec::new();
        for &i in due {
            let p = &mut peer.outbox.pending_mut()[i];
            p.via = Via::Relay;
            p.sent_at = now;
            messages.push((
                p.json.encode_utf16().count(),
                envelopes_of(p.seq, &p.msg_type, &p.json, Some(stamp)),
            ));
        }
        for frame in relay_frames(messages, RELAY_BATCH_CHARS) {
            self.out.push(format!(
                "{{\"op\":\"send\",\"to\":[{}],\"msg\":{}}}",
                serde_json::json!(id),
                relay_msg(&frame.envelopes)
            ));
        }
    }

    fn tick(&mut self) {
        let now = now_ms();
        let bound = self.options.delivery_timeout.as_millis() as u64;
        let ids: Vec<String> = self.peers.keys().cloned().collect();
        for id in ids {
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            match tick_peer(
                peer.outbox.pending_mut().iter_mut(),
                PathState::default(),
                now,
                bound,
            ) {
                Tick::Expire => {
                    let epoch = peer.outbox.epoch();
                    let failed: Vec<u64> = peer
                        .outbox
                        .fail()
                        .into_iter()
                        .flat_map(|p| peer.waiting.remove(&(epoch, p.seq)).unwrap_or_default())
                        .collect();
                    peer.outbox = Outbox::new(self.epochs.next(now));
                    for d in failed {
                        self.settle(d, Some(&id));
                    }
                }
                Tick::Send { due, .. } => {
                    if !due.is_empty() {
                        self.transmit(&id, &due);
                    }
                }
            }
        }
        self.flush_acks();
    }

    fn flush_acks(&mut self) {
        let mut out = Vec::new();
        for (id, peer) in &mut self.peers {
            if peer.ack_due {
                peer.ack_due = false;
                if let Some(inbox) = self.inboxes.get(id) {
                    out.push(format!(
                        "{{\"op\":\"send\",\"to\":[{}],\"msg\":{}}}",
                        serde_json::json!(id),
                        inbox.ack().to_json()
                    ));
                }
            }
        }
        self.out.extend(out);
        for (e, s) in std::mem::take(&mut self.server_acks) {
            self.out
                .push(serde_json::json!({"op": "server_ack", "e": e, "s": s}).to_string());
        }
    }

    fn on_envelope(&mut self, from: &str, env: &Envelope) {
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
            });
        }
    }

    /// One frame from the server; `Some` when the session ends.
    fn on_frame(&mut self, text: &str) -> Option<End> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        match v["op"].as_str()? {
            "peer_joined" => {
                if let Ok(p) = serde_json::from_value::<PeerInfo>(v["peer"].clone()) {
                    self.add_peer(p, true);
                }
            }
            "peer_left" => {
                let id = v["peer"]["id"].as_str().unwrap_or_default().to_owned();
                if let Some(info) = self.remove_peer(&id) {
                    self.emit(Event::PeerLeft {
                        peer: info,
                        reason: v["reason"].as_str().unwrap_or("left").to_owned(),
                    });
                }
            }
            "message" => {
                let from = v["from"].as_str().unwrap_or_default().to_owned();
                let msg = &v["msg"];
                let list = if msg.is_array() {
                    msg.as_array().cloned().unwrap_or_default()
                } else {
                    vec![msg.clone()]
                };
                for e in list {
                    if let Some(env) = Envelope::parse(&e.to_string()) {
                        self.on_envelope(&from, &env);
                    }
                }
            }
            "signal" => {
                // Acks of a peer that may not send data come as signals.
                let from = v["from"].as_str().unwrap_or_default().to_owned();
                if let Some(env) = v["data"]
                    .get("ack")
                    .and_then(|a| Envelope::parse(&a.to_string()))
                    && let Envelope::Ack { .. } = env
                {
                    self.on_envelope(&from, &env);
                }
            }
            "server_message" => {
                let (e, s) = (v["e"].as_u64()?, v["s"].as_u64()?);
                let last = self.server_seen.get(&e).copied().unwrap_or(0);
                if s > last {
                    self.server_seen.insert(e, s);
                    if let Ok(data) = RawValue::from_string(v["data"].to_string()) {
                        self.emit(Event::Message {
                            msg_type: v["type"].as_str().unwrap_or_default().to_owned(),
                            data,
                            from: None,
                        });
                    }
                }
                let ack = self.server_acks.entry(e).or_insert(0);
                *ack = (*ack).max(s).max(last);
            }
            "room_closed" => {
                self.emit(Event::Error {
                    code: "room_closed".to_owned(),
                    message: format!("the room was {}", v["reason"].as_str().unwrap_or("closed")),
                });
                return Some(End::Over);
            }
            "error" => {
                let code = v["code"].as_str().unwrap_or("error");
                // (Relay frames the server could not pass on are the delivery layer's business.)
                if !matches!(code, "unknown_peer" | "unavailable" | "rate_limited") {
                    self.emit(Event::Error {
                        code: code.to_owned(),
                        message: v["message"].as_str().unwrap_or_default().to_owned(),
                    });
                }
            }
            _ => {}
        }
        None
    }

    async fn run(mut self, mut ws: Ws, mut commands: mpsc::UnboundedReceiver<Command>) {
        self.emit(Event::Connection("connected"));
        loop {
            match self.serve(&mut ws, &mut commands).await {
                End::Over => break,
                End::Resume => {
                    self.emit(Event::Connection("reconnecting"));
                    match self.resume(&mut commands).await {
                        Some(next) => {
                            ws = next;
                            self.emit(Event::Connection("connected"));
                        }
                        None => break,
                    }
                }
            }
        }
        let ids: Vec<String> = self.peers.keys().cloned().collect();
        for id in ids {
            self.remove_peer(&id);
        }
        self.emit(Event::Connection("disconnected"));
    }

    /// Resumes the session (backing off); `None` when it cannot be.
    async fn resume(&mut self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Option<Ws> {
        let mut wait = Duration::from_millis(250);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            while let Ok(cmd) = commands.try_recv() {
                match cmd {
                    Command::Send {
                        msg_type,
                        json,
                        to,
                        done,
                    } => self.send(msg_type, json, to, done),
                    Command::Leave(done) => {
                        let _ = done.send(());
                        return None;
                    }
                }
            }
            self.out.clear();
            match connect(
                &self.url,
                &self.token,
                Some((&self.session.0, &self.session.1)),
            )
            .await
            {
                Ok((ws, joined)) => {
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
                    // Everything unacknowledged goes again.
                    let ids: Vec<String> = self.peers.keys().cloned().collect();
                    for id in ids {
                        let n = self.peers.get(&id).map_or(0, |p| p.outbox.pending().len());
                        let all: Vec<usize> = (0..n).collect();
                        self.transmit(&id, &all);
                    }
                    return Some(ws);
                }
                Err(JoinError::Refused { code, message }) => {
                    self.emit(Event::Error { code, message });
                    return None;
                }
                Err(JoinError::Connect(_)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                self.emit(Event::Error {
                    code: "unreachable".to_owned(),
                    message: "the server could not be reached to resume".to_owned(),
                });
                return None;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn serve(&mut self, ws: &mut Ws, commands: &mut mpsc::UnboundedReceiver<Command>) -> End {
        let mut ticker = tokio::time::interval(Duration::from_millis(TICK_MS));
        let mut acks = tokio::time::interval(Duration::from_millis(10));
        loop {
            for text in std::mem::take(&mut self.out) {
                if ws.send(WsMessage::text(text)).await.is_err() {
                    return End::Resume;
                }
            }
            tokio::select! {
                msg = ws.next() => match msg {
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Some(end) = self.on_frame(&text) {
                            let _ = ws.close(None).await;
                            return end;
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => return self.closed(frame),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return End::Resume,
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Send { msg_type, json, to, done }) => self.send(msg_type, json, to, done),
                    Some(Command::Leave(done)) => {
                        let _ = ws.send(WsMessage::text(r#"{"op":"leave"}"#)).await;
                        let _ = ws.close(None).await;
                        let _ = done.send(());
                        return End::Over;
                    }
                    None => {}
                },
                _ = ticker.tick() => self.tick(),
                _ = acks.tick() => self.flush_acks(),
            }
        }
    }

    /// The server closed the connection: resume, or the session is over.
    fn closed(&mut self, frame: Option<CloseFrame>) -> End {
        let code = frame.as_ref().map(|f| u16::from(f.code));
        match code.and_then(CloseCode::from_code) {
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
