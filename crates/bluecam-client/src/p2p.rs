//! The WebRTC data channel to one peer, as the browser SDK's `mesh.js` makes it, so that a
//! native peer and a browser (or two native peers) talk directly.
//!
//! One [`PeerLink`] per remote peer and connection generation: a `webrtc` peer connection
//! with the SDK's pre-negotiated, reliable, ordered data channel (`bluecam`, id 0), negotiated
//! with the SDK's rules (docs/protocol.md, docs/native-client.md):
//! - the **impolite** side (the smaller peer id) makes the first offer at once; the polite one
//!   waits for it and makes one itself only if none came within 3 s; in a collision the
//!   impolite side ignores the offer it gets and the polite side rolls its own back;
//! - every signal names this connection's generation (`gen`) and the remote one it answers
//!   (`to`); the first description says which media this side sends (`sends: []`: none, this
//!   client is data-only, so a browser holds its tracks back rather than offer them to it);
//! - a description that comes over the data channel (`{"sig":…}`, a browser's media offer
//!   after the first exchange) is answered there; media sections are refused (no codecs);
//! - candidates are trickled through the server as they are gathered; those that come before
//!   the remote description wait for it.
//!
//! The link runs in its own task and knows nothing of envelopes: the room hands it text to
//! send and gets back what it must forward ([`LinkEvent`]). When the channel closes or the
//! connection fails, the room lets the link go and makes a new one after a second (a new
//! generation, as the SDK relinks); whatever was on the channel unacknowledged goes over the
//! relay meanwhile.

use bluecam_proto::IceServer;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSdpType, RTCSessionDescription,
};

/// How long the polite side waits for the first offer before making one itself.
const FIRST_OFFER_WAIT: Duration = Duration::from_secs(3);
/// How a signal sent over the data channel starts (app data there is envelopes, `{"v":…`).
const CHANNEL_SIGNAL: &str = "{\"sig\":";
/// Bytes handed to a link and not yet sent by its channel above which `send` says no (the
/// SDK's `bufferedAmount` bound): the message goes over the relay instead.
const MAX_QUEUED: usize = 4 << 20;
/// A connection whose channel has not opened this long is given up (the room makes another,
/// later and later).
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a channel with bytes outstanding says how many are left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Where links tell their room what happened: the peer's id, the link's generation, and what.
pub(crate) type LinkEvents = mpsc::UnboundedSender<(String, String, LinkEvent)>;

/// Whether this build makes WebRTC connections.
pub(crate) const AVAILABLE: bool = true;

/// What a link tells its room.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// Signaling data for the remote peer, through the server (`gen` and `to` included).
    Signal(Value),
    /// The data channel opened.
    Open,
    /// The data channel closed or the connection failed (or never came up): let it go.
    Down,
    /// A data channel message that is not a signal (an envelope's text, or an array of them).
    Data(String),
}

enum Command {
    Signal(Value, bool),
    Send(String),
}

/// The room's handle on one link: dropping it closes the connection (its task sees the
/// commands end, closes the channel and the peer connection, and stops).
#[derive(Debug)]
pub(crate) struct PeerLink {
    /// This connection's generation.
    pub generation: String,
    /// The remote connection it negotiates with, once known.
    pub remote_gen: Option<String>,
    open: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    /// Bytes the channel has taken and not yet sent (SCTP's outstanding bytes).
    outstanding: Arc<AtomicUsize>,
    commands: mpsc::UnboundedSender<Command>,
}

/// How a link reaches the other side.
#[derive(Clone, Debug, Default)]
pub(crate) struct IceConfig {
    pub servers: Vec<IceServer>,
    /// Only through TURN relays (the SDK's `iceTransportPolicy: "relay"`).
    pub relay_only: bool,
}

/// A fresh generation name (8 characters, as the SDK's).
fn new_gen() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = nanos
        ^ (COUNTER.fetch_add(1, Ordering::Relaxed) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ u64::from(std::process::id()).rotate_left(32);
    format!("{:08x}", (n ^ (n >> 29)) as u32)
}

impl PeerLink {
    /// Starts a connection to one peer. `polite`: this side yields in an offer collision and
    /// lets the other make the first offer (the SDK's rule: the larger peer id is polite).
    pub fn start(
        peer: &str,
        polite: bool,
        ice: &IceConfig,
        events: LinkEvents,
    ) -> Option<PeerLink> {
        Self::start_with(peer, polite, ice, events, FIRST_OFFER_WAIT)
    }

    /// [`PeerLink::start`], the polite side making its own offer after `first_offer_wait`
    /// if none came (a test makes both sides offer at once).
    fn start_with(
        peer: &str,
        polite: bool,
        ice: &IceConfig,
        events: LinkEvents,
        first_offer_wait: Duration,
    ) -> Option<PeerLink> {
        let generation = new_gen();
        let open = Arc::new(AtomicBool::new(false));
        let queued = Arc::new(AtomicUsize::new(0));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let (commands, rx) = mpsc::unbounded_channel();
        tokio::spawn(
            Negotiation {
                polite,
                first_offer_wait,
                peer: peer.to_owned(),
                generation: generation.clone(),
                remote_gen: None,
                events,
                open: open.clone(),
                queued: queued.clone(),
                outstanding: outstanding.clone(),
                have_local_offer: false,
                got_offer: false,
                exchanged: false,
                has_remote: false,
                early: Vec::new(),
            }
            .run(ice.clone(), rx),
        );
        Some(PeerLink {
            generation,
            remote_gen: None,
            open,
            queued,
            outstanding,
            commands,
        })
    }

    /// Whether the data channel can carry messages now.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Bytes handed over and not yet sent (the SDK's `bufferedAmount`).
    pub fn buffered(&self) -> u64 {
        (self.queued.load(Ordering::Relaxed) + self.outstanding.load(Ordering::Relaxed)) as u64
    }

    /// Puts text on the data channel, in order; false when the channel is not open or backed
    /// up (then it goes by the relay).
    pub fn send(&self, text: String) -> bool {
        self.send_all(vec![text])
    }

    /// Whether the channel is open and takes more now.
    pub fn can_take_more(&self) -> bool {
        self.is_open() && self.buffered() <= MAX_QUEUED as u64
    }

    /// Puts all of these on the data channel, in order, or none of them (a message's chunks:
    /// part of a message on the channel would only be sent again).
    pub fn send_all(&self, texts: Vec<String>) -> bool {
        if !self.can_take_more() {
            return false;
        }
        for text in texts {
            self.queued.fetch_add(text.len(), Ordering::Relaxed);
            if self.commands.send(Command::Send(text)).is_err() {
                return false;
            }
        }
        true
    }

    /// Applies signaling data from the remote peer, after what came before it (`over_channel`:
    /// it came over the data channel, where an offer is answered).
    pub fn signal(&self, data: Value, over_channel: bool) {
        let _ = self.commands.send(Command::Signal(data, over_channel));
    }
}

/// Where the peer connection tells the link what happened.
enum Note {
    Candidate(RTCIceCandidateInit),
    State(RTCPeerConnectionState),
    Open,
    Closed,
    Text(String),
}

#[derive(Clone)]
struct Handler(mpsc::UnboundedSender<Note>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.0.send(Note::Candidate(c));
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.0.send(Note::State(state));
    }
}

/// One connection's negotiation state (perfect negotiation, in one task: an offer is never
/// being made while a signal is applied, so a collision is an offer in `have-local-offer`).
struct Negotiation {
    polite: bool,
    first_offer_wait: Duration,
    peer: String,
    generation: String,
    remote_gen: Option<String>,
    events: LinkEvents,
    open: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    outstanding: Arc<AtomicUsize>,
    have_local_offer: bool,
    got_offer: bool,
    exchanged: bool,
    has_remote: bool,
    early: Vec<RTCIceCandidateInit>,
}

fn ice_servers(ice: &IceConfig) -> Vec<RTCIceServer> {
    ice.servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

impl Negotiation {
    fn emit(&self, e: LinkEvent) {
        let _ = self
            .events
            .send((self.peer.clone(), self.generation.clone(), e));
    }

    /// Signaling data to the remote peer through the server.
    fn signal(&self, mut data: Value) {
        data["gen"] = json!(self.generation);
        if let Some(to) = &self.remote_gen {
            data["to"] = json!(to);
        }
        self.emit(LinkEvent::Signal(data));
    }

    /// A description to send: in the first exchange with the media this side sends (none).
    fn describe(&self, desc: &RTCSessionDescription) -> Value {
        let mut d = json!({ "description": desc });
        if !self.exchanged {
            d["sends"] = json!([]);
        }
        d
    }

    async fn run(mut self, ice: IceConfig, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (notes_tx, mut notes) = mpsc::unbounded_channel();
        let mut config = RTCConfigurationBuilder::new().with_ice_servers(ice_servers(&ice));
        if ice.relay_only {
            config = config.with_ice_transport_policy(RTCIceTransportPolicy::Relay);
        }
        let built = PeerConnectionBuilder::new()
            .with_configuration(config.build())
            .with_handler(Arc::new(Handler(notes_tx.clone())))
            .with_udp_addrs(vec!["0.0.0.0:0".to_owned()])
            .build()
            .await;
        let pc = match built {
            Ok(pc) => pc,
            Err(_) => {
                self.emit(LinkEvent::Down);
                return;
            }
        };
        let init = RTCDataChannelInit {
            ordered: true,
            negotiated: Some(0),
            ..Default::default()
        };
        let dc = match pc.create_data_channel("bluecam", Some(init)).await {
            Ok(dc) => dc,
            Err(_) => {
                let _ = pc.close().await;
                self.emit(LinkEvent::Down);
                return;
            }
        };
        let reader = tokio::spawn(read_channel(dc.clone(), notes_tx));
        if !self.polite {
            self.offer(&pc).await;
        }
        let first_offer = tokio::time::sleep(self.first_offer_wait);
        tokio::pin!(first_offer);
        let mut waited = self.polite;
        let open_by = tokio::time::sleep(OPEN_TIMEOUT);
        tokio::pin!(open_by);
        let mut drain = tokio::time::interval(DRAIN_POLL);
        // (Not polled while nothing is outstanding: no burst of missed ticks afterwards.)
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut first_offer, if waited => {
                    waited = false;
                    if !self.got_offer && !self.have_local_offer && !self.has_remote {
                        self.offer(&pc).await;
                    }
                }
                () = &mut open_by, if !self.open.load(Ordering::Acquire) => break,
                _ = drain.tick(), if self.outstanding.load(Ordering::Relaxed) > 0 => {
                    self.outstanding.store(dc.outstanding_bytes().await.unwrap_or(0), Ordering::Relaxed);
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(text)) => {
                        self.queued.fetch_sub(text.len(), Ordering::Relaxed);
                        if dc.send_text(&text).await.is_err() {
                            break;
                        }
                        // (After a burst: what the channel holds now.)
                        if commands.is_empty() {
                            self.outstanding.store(dc.outstanding_bytes().await.unwrap_or(0), Ordering::Relaxed);
                        }
                    }
                    Some(Command::Signal(data, over_channel)) => {
                        self.apply(&pc, &dc, data, over_channel).await;
                    }
                    None => break,
                },
                note = notes.recv() => match note {
                    Some(Note::Candidate(c)) => self.signal(json!({ "candidate": c })),
                    Some(Note::State(s)) => {
                        if matches!(s, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed) {
                            break;
                        }
                    }
                    Some(Note::Open) => {
                        self.open.store(true, Ordering::Release);
                        self.emit(LinkEvent::Open);
                    }
                    Some(Note::Text(text)) => {
                        if text.starts_with(CHANNEL_SIGNAL) {
                            if let Ok(v) = serde_json::from_str::<Value>(&text)
                                && let Some(sig) = v.get("sig")
                            {
                                self.apply(&pc, &dc, sig.clone(), true).await;
                            }
                        } else {
                            self.emit(LinkEvent::Data(text));
                        }
                    }
                    Some(Note::Closed) | None => break,
                },
            }
        }
        self.open.store(false, Ordering::Release);
        self.emit(LinkEvent::Down);
        reader.abort();
        let _ = dc.close().await;
        let _ = pc.close().await;
    }

    async fn offer(&mut self, pc: &impl PeerConnection) {
        let Ok(offer) = pc.create_offer(None).await else {
            return;
        };
        if pc.set_local_description(offer.clone()).await.is_ok() {
            self.have_local_offer = true;
            self.signal(self.describe(&offer));
        }
    }

    /// Applies signaling data from the remote peer (perfect negotiation).
    async fn apply(
        &mut self,
        pc: &impl PeerConnection,
        dc: &Arc<dyn DataChannel>,
        data: Value,
        over_channel: bool,
    ) {
        // The remote connection this one negotiates with: the first that speaks.
        if self.remote_gen.is_none()
            && let Some(g) = data.get("gen").and_then(Value::as_str)
        {
            self.remote_gen = Some(g.to_owned());
        }
        if let Some(desc) = data.get("description") {
            let Ok(desc) = serde_json::from_value::<RTCSessionDescription>(desc.clone()) else {
                return;
            };
            let offer = desc.sdp_type == RTCSdpType::Offer;
            if offer {
                self.got_offer = true;
            }
            let collision = offer && self.have_local_offer;
            if collision && !self.polite {
                return;
            }
            if collision {
                let Ok(rollback) = RTCSessionDescription::rollback(None) else {
                    return;
                };
                if pc.set_local_description(rollback).await.is_err() {
                    return;
                }
                self.have_local_offer = false;
            }
            if desc.sdp_type == RTCSdpType::Answer {
                if !self.have_local_offer {
                    return;
                }
                self.have_local_offer = false;
            }
            if pc.set_remote_description(desc).await.is_err() {
                return;
            }
            self.has_remote = true;
            for c in std::mem::take(&mut self.early) {
                let _ = pc.add_ice_candidate(c).await;
            }
            if offer {
                let Ok(answer) = pc.create_answer(None).await else {
                    return;
                };
                if pc.set_local_description(answer.clone()).await.is_err() {
                    return;
                }
                let d = self.describe(&answer);
                self.exchanged = true;
                // An offer that came over the data channel is answered there.
                if over_channel && self.open.load(Ordering::Acquire) {
                    let text = format!("{CHANNEL_SIGNAL}{d}}}");
                    if dc.send_text(&text).await.is_ok() {
                        return;
                    }
                }
                self.signal(d);
            } else {
                self.exchanged = true;
            }
        } else if let Some(c) = data.get("candidate") {
            let Ok(c) = serde_json::from_value::<RTCIceCandidateInit>(c.clone()) else {
                return;
            };
            if c.candidate.is_empty() {
                return;
            }
            if !self.has_remote {
                self.early.push(c);
            } else {
                let _ = pc.add_ice_candidate(c).await;
            }
        }
    }
}

/// Forwards what the data channel does to the link's task.
async fn read_channel(dc: Arc<dyn DataChannel>, notes: mpsc::UnboundedSender<Note>) {
    loop {
        let note = match dc.poll().await {
            Some(DataChannelEvent::OnOpen) => Note::Open,
            Some(DataChannelEvent::OnMessage(msg)) => {
                if !msg.is_string {
                    continue;
                }
                match String::from_utf8(msg.data.to_vec()) {
                    Ok(text) => Note::Text(text),
                    Err(_) => continue,
                }
            }
            Some(DataChannelEvent::OnClose) | None => {
                let _ = notes.send(Note::Closed);
                return;
            }
            Some(_) => continue,
        };
        if notes.send(note).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Glare: both sides offer at once (the polite one does not wait), and each gets the
    /// other's offer in `have-local-offer`: the impolite side ignores it, the polite side rolls
    /// its own back and answers; the channel opens and carries data both ways. Real WebRTC on
    /// this machine's interfaces, the two links' signals passed by hand.
    ///
    /// Each side sends again every 100 ms until the other's message has arrived, as the room
    /// does with what is not acknowledged: a message sent the moment one side's channel opens
    /// can reach the other before the `webrtc` crate has opened the channel there, and that
    /// crate then drops it (docs/native-client.md, "Known limits"; 1 run in 8 under load
    /// before this loop).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn both_sides_offering_at_once_still_open_the_channel() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let ice = IceConfig::default();
        // (Each link's events name its remote peer: "b" are impolite a's, "a" polite b's.)
        let a = PeerLink::start_with("b", false, &ice, tx.clone(), Duration::ZERO).unwrap();
        let b = PeerLink::start_with("a", true, &ice, tx, Duration::ZERO).unwrap();
        let mut held: Vec<(bool, Value)> = Vec::new();
        let mut offers = (false, false);
        let mut opened = (false, false);
        let mut got = (None, None);
        let mut again = tokio::time::interval(Duration::from_millis(100));
        tokio::time::timeout(Duration::from_secs(20), async {
            while got.0.is_none() || got.1.is_none() {
                let (peer, _, event) = tokio::select! {
                    got = rx.recv() => got.expect("the links went away"),
                    _ = again.tick() => {
                        // (What the other side has not had yet, again.)
                        if opened.0 && got.1.is_none() {
                            assert!(a.send("from a".to_owned()));
                        }
                        if opened.1 && got.0.is_none() {
                            assert!(b.send("from b".to_owned()));
                        }
                        continue;
                    }
                };
                let from_a = peer == "b";
                match event {
                    LinkEvent::Signal(data) => {
                        if data["description"]["type"] == "offer" {
                            if from_a {
                                offers.0 = true;
                            } else {
                                offers.1 = true;
                            }
                        }
                        // Nothing passes before both offers are out: they cross.
                        held.push((from_a, data));
                        if offers.0 && offers.1 {
                            for (from_a, data) in held.drain(..) {
                                if from_a {
                                    b.signal(data, false);
                                } else {
                                    a.signal(data, false);
                                }
                            }
                        }
                    }
                    LinkEvent::Open => {
                        if from_a {
                            opened.0 = true;
                            assert!(a.send("from a".to_owned()));
                        } else {
                            opened.1 = true;
                            assert!(b.send("from b".to_owned()));
                        }
                    }
                    LinkEvent::Data(text) => {
                        if from_a {
                            got.0 = Some(text);
                        } else {
                            got.1 = Some(text);
                        }
                    }
                    LinkEvent::Down => panic!("a link went down (a's: {from_a})"),
                }
            }
        })
        .await
        .expect("the channel opened within 20 s");
        assert_eq!(opened, (true, true));
        assert_eq!(got, (Some("from b".to_owned()), Some("from a".to_owned())));
    }
}
