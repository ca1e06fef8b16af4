//! Test helpers: build join requests, drive a [`Hub`] with client frames given as JSON text,
//! and decode what it outputs into owned values that are easy to match on.

use bluecam_core::{
    ConnId, CoreConfig, Frame, FreshIds, Hub, JoinRejected, JoinRequest, Output, RoomAccess,
};
use bluecam_proto::{
    ClientMessage, CloseCode, ErrorCode, ErrorFrame, Identity, Joined, LeaveReason, Limits, PeerId,
    PeerInfo, Permissions, ResumeCredentials, RoomClosedReason, RoomId, RoomSummary, ServerMessage,
    SessionId, SessionSecret,
};
use std::time::{Duration, Instant};

/// A room as the store would hand it to the core: open to anyone, `max_peers` seats.
pub fn room(id: &str, max_peers: u32) -> RoomAccess {
    RoomAccess {
        summary: RoomSummary {
            id: RoomId::new(id),
            name: None,
            description: None,
            metadata: None,
            max_peers,
        },
        owner: None,
        members: None,
        multiple_sessions: false,
    }
}

/// The limits a shell would put in `joined.limits` (the core only passes them through).
pub fn limits(max_peers: u32) -> Limits {
    Limits {
        max_frame_bytes: 1_064_960,
        rate_frames_per_sec: 200,
        rate_burst_frames: 400,
        rate_bytes_per_sec: 2 << 20,
        rate_burst_bytes: 4 << 20,
        outbound_queue_bytes: 4 << 20,
        max_peers,
        resume_window_secs: 60,
        ping_interval_secs: 20,
    }
}

/// Ids the shell would draw for newcomer number `n`.
pub fn fresh(n: u64) -> FreshIds {
    FreshIds::new(
        PeerId::new(format!("peer-{n}")),
        SessionId::new(format!("session-{n}")),
        SessionSecret::new(format!("secret-{n}")),
    )
}

/// A verified `join` of `identity` into `room` on `conn`, as a new peer.
pub fn join_request(conn: ConnId, room: &RoomAccess, identity: &str, n: u64) -> JoinRequest {
    JoinRequest {
        conn,
        room: room.clone(),
        identity: Identity::new(identity),
        name: Some(format!("{identity} (name)")),
        metadata: None,
        permissions: Permissions::default(),
        resume: None,
        fresh: fresh(n),
        ice_servers: Vec::new(),
        limits: limits(room.summary.max_peers),
        cluster: None,
    }
}

/// Parses a client frame; tests write frames as the JSON a client would send.
pub fn client(text: &str) -> ClientMessage<'_> {
    ClientMessage::from_json(text).unwrap_or_else(|e| panic!("bad test frame {text}: {e:?}"))
}

/// A `send` frame; `to: None` broadcasts.
pub fn send_frame(to: Option<&[&PeerId]>, msg: &str, reference: Option<u64>) -> String {
    let mut text = String::from(r#"{"op":"send""#);
    if let Some(to) = to {
        let ids: Vec<&str> = to.iter().map(|p| p.as_str()).collect();
        text.push_str(&format!(
            r#","to":{}"#,
            serde_json::to_string(&ids).unwrap()
        ));
    }
    text.push_str(&format!(r#","msg":{msg}"#));
    if let Some(r) = reference {
        text.push_str(&format!(r#","ref":{r}"#));
    }
    text.push('}');
    text
}

/// A `signal` frame.
pub fn signal_frame(to: &PeerId, data: &str, reference: Option<u64>) -> String {
    match reference {
        Some(r) => format!(r#"{{"op":"signal","to":"{to}","data":{data},"ref":{r}}}"#),
        None => format!(r#"{{"op":"signal","to":"{to}","data":{data}}}"#),
    }
}

/// A server frame, decoded into owned parts. Payloads keep their exact JSON text.
#[derive(Debug)]
pub enum Seen {
    Joined(Box<Joined>),
    PeerJoined(PeerInfo),
    PeerLeft {
        peer: PeerId,
        reason: LeaveReason,
    },
    Signal {
        from: PeerId,
        data: String,
    },
    Message {
        from: PeerId,
        msg: String,
    },
    ServerMessage {
        e: u64,
        s: u64,
        msg_type: String,
        data: String,
    },
    RoomClosed(RoomClosedReason),
    Error(ErrorFrame),
    Ping,
    Pong,
}

impl Seen {
    /// The error frame, or a panic naming what came instead.
    pub fn error(&self) -> &ErrorFrame {
        match self {
            Seen::Error(e) => e,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// The joined frame, or a panic naming what came instead.
    pub fn joined(&self) -> &Joined {
        match self {
            Seen::Joined(j) => j,
            other => panic!("expected joined, got {other:?}"),
        }
    }
}

/// Decodes a frame the hub wrote, and checks that it is in the canonical form: parsing it and
/// writing it again gives the same text.
pub fn decode(frame: &Frame) -> Seen {
    let text = frame.as_str();
    let msg = ServerMessage::from_json(text)
        .unwrap_or_else(|e| panic!("hub wrote an unparsable frame {text}: {e}"));
    assert_eq!(msg.to_json(), text, "frame does not round-trip");
    match msg {
        ServerMessage::Joined(j) => Seen::Joined(j),
        ServerMessage::PeerJoined(p) => Seen::PeerJoined(p.peer),
        ServerMessage::PeerLeft(p) => Seen::PeerLeft {
            peer: p.peer.id,
            reason: p.reason,
        },
        ServerMessage::Signal(s) => Seen::Signal {
            from: s.from,
            data: s.data.get().to_owned(),
        },
        ServerMessage::Message(m) => Seen::Message {
            from: m.from,
            msg: m.msg.get().to_owned(),
        },
        ServerMessage::ServerMessage(m) => Seen::ServerMessage {
            e: m.e,
            s: m.s,
            msg_type: m.msg_type.into_owned(),
            data: m.data.get().to_owned(),
        },
        ServerMessage::RoomClosed(r) => Seen::RoomClosed(r.reason),
        ServerMessage::Error(e) => Seen::Error(e),
        ServerMessage::Ping => Seen::Ping,
        ServerMessage::Pong => Seen::Pong,
    }
}

/// Everything the hub output after one or more inputs, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    pub outputs: Vec<Output>,
}

impl Outbox {
    /// Takes every pending output of `hub`.
    pub fn drain(hub: &mut Hub) -> Self {
        Self {
            outputs: std::iter::from_fn(|| hub.poll_output()).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// The frames queued to `conn`, in order, decoded.
    pub fn to(&self, conn: ConnId) -> Vec<Seen> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Deliver { conns, frame } => {
                    let n = conns.iter().filter(|c| **c == conn).count();
                    assert!(n <= 1, "{conn:?} listed {n} times in one Deliver");
                    (n == 1).then(|| decode(frame))
                }
                _ => None,
            })
            .collect()
    }

    /// Every connection that was queued at least one frame.
    pub fn recipients(&self) -> Vec<ConnId> {
        let mut all: Vec<ConnId> = self
            .outputs
            .iter()
            .flat_map(|o| match o {
                Output::Deliver { conns, .. } => conns.clone(),
                _ => Vec::new(),
            })
            .collect();
        all.sort();
        all.dedup();
        all
    }

    pub fn closes(&self) -> Vec<(ConnId, CloseCode)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Close { conn, code } => Some((*conn, *code)),
                _ => None,
            })
            .collect()
    }

    pub fn vacated(&self) -> Vec<RoomId> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::RoomVacated { room } => Some(room.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn overflows(&self) -> Vec<(RoomId, PeerId)> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::ResumeBufferOverflow { room, peer } => Some((room.clone(), peer.clone())),
                _ => None,
            })
            .collect()
    }
}

/// A joined client: its connection and what its `joined` frame told it.
#[derive(Clone, Debug)]
pub struct Client {
    pub conn: ConnId,
    pub peer: PeerId,
    pub identity: Identity,
    pub session: SessionId,
    pub secret: SessionSecret,
}

impl Client {
    /// The `resume` of a `join` that takes this session back.
    pub fn creds(&self) -> ResumeCredentials {
        ResumeCredentials {
            session: self.session.clone(),
            secret: self.secret.clone(),
        }
    }
}

/// A hub with a clock base, fresh connection numbers and fresh ids.
#[derive(Debug)]
pub struct World {
    pub hub: Hub,
    pub t0: Instant,
    next: u64,
}

impl World {
    pub fn new() -> Self {
        Self::with_config(CoreConfig::default())
    }

    pub fn with_config(config: CoreConfig) -> Self {
        Self {
            hub: Hub::new(config),
            t0: Instant::now(),
            next: 0,
        }
    }

    /// `t0 + secs`.
    pub fn at(&self, secs: u64) -> Instant {
        self.t0 + Duration::from_secs(secs)
    }

    /// A connection number never used before.
    pub fn conn(&mut self) -> ConnId {
        self.next += 1;
        ConnId(self.next)
    }

    /// A join of a new peer on a fresh connection.
    pub fn request(&mut self, room: &RoomAccess, identity: &str) -> JoinRequest {
        let conn = self.conn();
        join_request(conn, room, identity, conn.0)
    }

    /// A resume of `client`'s session on a fresh connection.
    pub fn resume_request(&mut self, room: &RoomAccess, client: &Client) -> JoinRequest {
        let mut req = self.request(room, client.identity.as_str());
        req.resume = Some(client.creds());
        req
    }

    /// Runs a join that must succeed; returns the client (from its `joined` frame) and all
    /// outputs.
    pub fn admit(&mut self, req: JoinRequest) -> (Client, Outbox) {
        let conn = req.conn;
        let identity = req.identity.clone();
        let peer = self
            .hub
            .handle_join(req)
            .unwrap_or_else(|e| panic!("join refused: {e:?}"));
        let out = self.drain();
        let frames = out.to(conn);
        let joined = frames
            .first()
            .unwrap_or_else(|| panic!("no joined frame for {conn:?}"))
            .joined();
        assert_eq!(joined.self_.id, peer, "joined.self is the admitted peer");
        let client = Client {
            conn,
            peer,
            identity,
            session: joined.session.id.clone(),
            secret: joined.session.secret.clone(),
        };
        (client, out)
    }

    /// A new peer `identity` joins `room`.
    pub fn join(&mut self, room: &RoomAccess, identity: &str) -> (Client, Outbox) {
        let req = self.request(room, identity);
        self.admit(req)
    }

    /// A join that must be refused; it must output nothing.
    pub fn refuse(&mut self, req: JoinRequest) -> JoinRejected {
        let err = match self.hub.handle_join(req) {
            Ok(peer) => panic!("join admitted as {peer:?}, expected a refusal"),
            Err(e) => e,
        };
        assert!(self.drain().is_empty(), "a refused join has no outputs");
        self.check();
        err
    }

    /// `client` sends the frame `text`; returns the outputs.
    pub fn input(&mut self, client: &Client, text: &str) -> Outbox {
        self.hub.handle_message(client.conn, self::client(text));
        self.check();
        self.drain()
    }

    pub fn drain(&mut self) -> Outbox {
        Outbox::drain(&mut self.hub)
    }

    /// Asserts the hub's invariants.
    pub fn check(&self) {
        if let Err(e) = self.hub.check_invariants() {
            panic!("hub invariant broken: {e}");
        }
    }
}

/// Asserts `seen` is one `unknown_peer` error listing `peers` and echoing `reference`.
pub fn assert_unknown_peer(seen: &[Seen], peers: &[&PeerId], reference: Option<u64>) {
    let [one] = seen else {
        panic!("expected one unknown_peer error, got {seen:?}");
    };
    let e = one.error();
    assert_eq!(e.code, ErrorCode::UnknownPeer);
    assert_eq!(e.reference, reference);
    let listed: Vec<&PeerId> = e.peers.iter().flatten().collect();
    assert_eq!(listed, peers);
}
