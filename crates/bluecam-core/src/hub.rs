//! [`Hub`]: every room, peer and session of one node, and the routing between them.
//!
//! Invariants (checked by the property test in `tests/`):
//! - a peer is in exactly one room, and a room in `rooms` has at least one peer;
//! - `conns` maps exactly the attached peers, `sessions` exactly the peers;
//! - every detached peer has one entry in `expiries`, attached peers none;
//! - frames reach only peers of the sender's room, with `from` written here.

use crate::Frame;
use bluecam_proto::{
    CloseCode, ErrorCode, ErrorFrame, IceServer, Identity, Joined, LeaveReason, Limits,
    MessageFrame, PeerId, PeerInfo, PeerJoined, PeerLeft, Permissions, ResumeCredentials,
    RoomClosed, RoomClosedReason, RoomId, RoomSummary, ServerMessage, SessionId, SessionInfo,
    SessionSecret, SignalFrame,
};
use serde_json::value::RawValue;
use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap, VecDeque},
    time::{Duration, Instant},
};

/// A WebSocket connection, numbered by the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Settings of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How long a peer whose connection dropped stays in its room, resumable.
    pub resume_window: Duration,
    /// Frames kept for a detached peer; one more ends its session.
    pub resume_buffer_frames: usize,
    /// Bytes kept for a detached peer; more ends its session.
    pub resume_buffer_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            resume_window: Duration::from_secs(60),
            resume_buffer_frames: 1024,
            resume_buffer_bytes: 4 << 20,
        }
    }
}

/// What the core needs of a stored room to admit a peer.
#[derive(Clone, Debug)]
pub struct RoomAccess {
    pub summary: RoomSummary,
    pub owner: Option<Identity>,
    pub members: Option<Vec<Identity>>,
}

/// Ids the shell drew for a newcomer (used unless the join resumes a session).
#[derive(Clone, Debug)]
pub struct FreshIds {
    pub peer: PeerId,
    pub session: SessionId,
    pub secret: SessionSecret,
}

/// A `join` whose token the shell has verified.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    pub conn: ConnId,
    pub room: RoomAccess,
    pub identity: Identity,
    pub name: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    pub permissions: Permissions,
    pub resume: Option<ResumeCredentials>,
    pub fresh: FreshIds,
    pub ice_servers: Vec<IceServer>,
    pub limits: Limits,
}

/// Why a join was refused; the shell answers with the error code and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRejected {
    RoomFull,
    Forbidden,
    /// The resume named an unknown session, or the wrong secret.
    SessionExpired,
    /// The resume's session belongs to another room or identity than the token.
    Unauthorized,
    /// This connection has joined already.
    AlreadyJoined,
}

impl JoinRejected {
    /// The wire error code.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::RoomFull => ErrorCode::RoomFull,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::SessionExpired => ErrorCode::SessionExpired,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::AlreadyJoined => ErrorCode::BadRequest,
        }
    }

    /// Text for the error frame.
    pub fn message(self) -> &'static str {
        match self {
            Self::RoomFull => "the room is full",
            Self::Forbidden => "this identity is not a member of the room",
            Self::SessionExpired => "the session to resume has expired or does not exist",
            Self::Unauthorized => "the session to resume belongs to another room or identity",
            Self::AlreadyJoined => "this connection has joined already",
        }
    }
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Queue `frame` to each connection.
    Deliver { conns: Vec<ConnId>, frame: Frame },
    /// Close the connection after the frames queued before this.
    Close { conn: ConnId, code: CloseCode },
    /// The room's last peer is gone (the shell notes it for `emptyTimeoutSecs`).
    RoomVacated { room: RoomId },
    /// A detached peer's resume buffer overflowed and its session was ended (for metrics).
    ResumeBufferOverflow { room: RoomId, peer: PeerId },
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HubStats {
    pub rooms: usize,
    pub peers: usize,
    pub detached: usize,
}

#[derive(Debug)]
enum Link {
    Attached(ConnId),
    Detached {
        expires: Instant,
        buffer: VecDeque<Frame>,
        bytes: usize,
    },
}

#[derive(Debug)]
struct PeerState {
    info: PeerInfo,
    session: SessionId,
    secret: SessionSecret,
    permissions: Permissions,
    /// Join order within the room, for stable peer lists.
    seq: u64,
    link: Link,
}

#[derive(Debug)]
struct RoomState {
    summary: RoomSummary,
    peers: HashMap<PeerId, PeerState>,
}

/// All rooms of a node with their peers and sessions. See the module doc for invariants.
#[derive(Debug)]
pub struct Hub {
    config: CoreConfig,
    rooms: HashMap<RoomId, RoomState>,
    conns: HashMap<ConnId, (RoomId, PeerId)>,
    sessions: HashMap<SessionId, (RoomId, PeerId)>,
    expiries: BTreeSet<(Instant, SessionId)>,
    outputs: VecDeque<Output>,
    next_seq: u64,
}

impl Hub {
    /// An empty hub.
    pub fn new(config: CoreConfig) -> Self {
        Self {
            config,
            rooms: HashMap::new(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            expiries: BTreeSet::new(),
            outputs: VecDeque::new(),
            next_seq: 0,
        }
    }

    /// Admits a verified join (new peer or resumed session). On success the outputs hold
    /// `joined` for the joiner (then, on resume, the frames kept for it) and `peer_joined`
    /// for the others.
    pub fn handle_join(&mut self, req: JoinRequest) -> Result<PeerId, JoinRejected> {
        if self.conns.contains_key(&req.conn) {
            return Err(JoinRejected::AlreadyJoined);
        }
        match req.resume.clone() {
            Some(creds) => self.resume(req, creds),
            None => self.join_fresh(req),
        }
    }

    fn join_fresh(&mut self, req: JoinRequest) -> Result<PeerId, JoinRejected> {
        let room_id = req.room.summary.id.clone();
        if let Some(members) = &req.room.members {
            let is_owner = req.room.owner.as_ref() == Some(&req.identity);
            if !is_owner && !members.contains(&req.identity) {
                return Err(JoinRejected::Forbidden);
            }
        }
        let present = self.rooms.get(&room_id).map_or(0, |r| r.peers.len());
        if present >= req.room.summary.max_peers as usize {
            return Err(JoinRejected::RoomFull);
        }
        let info = PeerInfo {
            id: req.fresh.peer.clone(),
            identity: req.identity,
            name: req.name,
            metadata: req.metadata,
        };
        let room = self
            .rooms
            .entry(room_id.clone())
            .or_insert_with(|| RoomState {
                summary: req.room.summary.clone(),
                peers: HashMap::new(),
            });
        // The latest stored room wins (name or limits may have changed).
        room.summary = req.room.summary;
        let others = sorted_peers(room);
        let others_conns = attached_conns(room, None);
        let detached_others: Vec<PeerId> = detached_peers(room);
        self.next_seq += 1;
        room.peers.insert(
            info.id.clone(),
            PeerState {
                info: info.clone(),
                session: req.fresh.session.clone(),
                secret: req.fresh.secret.clone(),
                permissions: req.permissions,
                seq: self.next_seq,
                link: Link::Attached(req.conn),
            },
        );
        let joined = Joined {
            self_: info.clone(),
            room: room.summary.clone(),
            peers: others,
            session: SessionInfo {
                id: req.fresh.session.clone(),
                secret: req.fresh.secret,
                resume_window_secs: self.config.resume_window.as_secs(),
            },
            ice_servers: req.ice_servers,
            limits: req.limits,
            resumed: false,
        };
        self.conns
            .insert(req.conn, (room_id.clone(), info.id.clone()));
        self.sessions
            .insert(req.fresh.session, (room_id.clone(), info.id.clone()));
        self.push_deliver(
            vec![req.conn],
            Frame::new(&ServerMessage::Joined(Box::new(joined))),
        );
        let announce = Frame::new(&ServerMessage::PeerJoined(PeerJoined {
            peer: info.clone(),
        }));
        self.push_deliver(others_conns, announce.clone());
        self.buffer_for(&room_id, &detached_others, &announce);
        Ok(info.id)
    }

    fn resume(
        &mut self,
        req: JoinRequest,
        creds: ResumeCredentials,
    ) -> Result<PeerId, JoinRejected> {
        let Some((room_id, peer_id)) = self.sessions.get(&creds.session).cloned() else {
            return Err(JoinRejected::SessionExpired);
        };
        let room = self
            .rooms
            .get_mut(&room_id)
            .ok_or(JoinRejected::SessionExpired)?;
        let peer = room
            .peers
            .get_mut(&peer_id)
            .ok_or(JoinRejected::SessionExpired)?;
        if !peer.secret.matches(&creds.secret) {
            return Err(JoinRejected::SessionExpired);
        }
        if room_id != req.room.summary.id || peer.info.identity != req.identity {
            return Err(JoinRejected::Unauthorized);
        }
        room.summary = req.room.summary;
        let old = std::mem::replace(&mut peer.link, Link::Attached(req.conn));
        let mut joined = Joined {
            self_: peer.info.clone(),
            room: room.summary.clone(),
            peers: Vec::new(), // filled below, once `peer` is no longer borrowed
            session: SessionInfo {
                id: peer.session.clone(),
                secret: peer.secret.clone(),
                resume_window_secs: self.config.resume_window.as_secs(),
            },
            ice_servers: req.ice_servers,
            limits: req.limits,
            resumed: true,
        };
        joined.peers = sorted_peers(room)
            .into_iter()
            .filter(|p| p.id != peer_id)
            .collect();
        self.conns.insert(req.conn, (room_id, peer_id.clone()));
        self.push_deliver(
            vec![req.conn],
            Frame::new(&ServerMessage::Joined(Box::new(joined))),
        );
        match old {
            Link::Attached(old_conn) => {
                // Taken over while the old socket still looked alive (half-open TCP).
                self.conns.remove(&old_conn);
                self.outputs.push_back(Output::Close {
                    conn: old_conn,
                    code: CloseCode::Replaced,
                });
            }
            Link::Detached {
                expires, buffer, ..
            } => {
                self.expiries.remove(&(expires, creds.session));
                for frame in buffer {
                    self.push_deliver(vec![req.conn], frame);
                }
            }
        }
        Ok(peer_id)
    }

    /// Routes one frame from a joined connection. Frames from unknown connections are ignored
    /// (the shell only passes frames after a successful join).
    pub fn handle_message(&mut self, conn: ConnId, msg: bluecam_proto::ClientMessage<'_>) {
        use bluecam_proto::ClientMessage as M;
        let Some((room_id, from)) = self.conns.get(&conn).cloned() else {
            return;
        };
        match msg {
            M::Join { .. } => self.push_error(
                conn,
                ErrorFrame::new(ErrorCode::BadRequest, "this connection has joined already"),
            ),
            M::Signal {
                to,
                data,
                reference,
            } => {
                if to == from || !self.in_room(&room_id, &to) {
                    self.push_error(conn, unknown_peers(vec![to], reference));
                    return;
                }
                let frame = Frame::new(&ServerMessage::Signal(SignalFrame {
                    from,
                    data: Cow::Borrowed(&*data),
                }));
                self.route(&room_id, &[to], frame);
            }
            M::Send { to, msg, reference } => {
                if !self.may_send_data(&room_id, &from) {
                    self.push_error(
                        conn,
                        ErrorFrame::new(
                            ErrorCode::PermissionDenied,
                            "the token does not allow sending data",
                        )
                        .with_ref(reference),
                    );
                    return;
                }
                let (targets, unknown) = self.targets(&room_id, &from, to);
                if !targets.is_empty() {
                    let frame = Frame::new(&ServerMessage::Message(MessageFrame {
                        from,
                        msg: Cow::Borrowed(&*msg),
                    }));
                    self.route(&room_id, &targets, frame);
                }
                if !unknown.is_empty() {
                    self.push_error(conn, unknown_peers(unknown, reference));
                }
            }
            M::Leave => {
                self.remove_peer(&room_id, &from, LeaveReason::Left);
                self.outputs.push_back(Output::Close {
                    conn,
                    code: CloseCode::Normal,
                });
            }
            M::Ping => self.push_deliver(vec![conn], Frame::new(&ServerMessage::Pong)),
            M::Pong => {}
        }
    }

    /// The connection is gone without `leave`: its peer stays, detached and resumable, until
    /// the resume window passes.
    pub fn handle_disconnect(&mut self, conn: ConnId, now: Instant) {
        let Some((room_id, peer_id)) = self.conns.remove(&conn) else {
            return;
        };
        let expires = now + self.config.resume_window;
        if let Some(peer) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.peers.get_mut(&peer_id))
        {
            peer.link = Link::Detached {
                expires,
                buffer: VecDeque::new(),
                bytes: 0,
            };
            self.expiries.insert((expires, peer.session.clone()));
        }
    }

    /// Like [`Hub::handle_disconnect`], keeping `backlog` (frames queued to the connection but
    /// never written) first in the peer's resume buffer, in order. `truncated` says frames for
    /// it were dropped already: a resume would have a gap, so the session ends instead.
    pub fn handle_disconnect_with_backlog(
        &mut self,
        conn: ConnId,
        now: Instant,
        backlog: impl IntoIterator<Item = Frame>,
        truncated: bool,
    ) {
        let Some((room_id, peer_id)) = self.conns.get(&conn).cloned() else {
            return;
        };
        self.handle_disconnect(conn, now);
        if truncated {
            self.outputs.push_back(Output::ResumeBufferOverflow {
                room: room_id.clone(),
                peer: peer_id.clone(),
            });
            self.remove_peer(&room_id, &peer_id, LeaveReason::Timeout);
            return;
        }
        for frame in backlog {
            self.buffer_for(&room_id, std::slice::from_ref(&peer_id), &frame);
        }
    }

    /// The room was deleted or expired: everyone in it is told and disconnected, and its
    /// sessions end.
    pub fn handle_room_closed(&mut self, room_id: &RoomId, reason: RoomClosedReason) {
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        let frame = Frame::new(&ServerMessage::RoomClosed(RoomClosed { reason }));
        let conns = attached_conns(&room, None);
        for peer in room.peers.into_values() {
            self.sessions.remove(&peer.session);
            match peer.link {
                Link::Attached(conn) => {
                    self.conns.remove(&conn);
                }
                Link::Detached { expires, .. } => {
                    self.expiries.remove(&(expires, peer.session));
                }
            }
        }
        self.push_deliver(conns.clone(), frame);
        for conn in conns {
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::RoomClosed,
            });
        }
    }

    /// Ends the sessions whose resume window has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((expires, session)) = self.expiries.first().cloned() {
            if expires > now {
                break;
            }
            self.expiries.pop_first();
            if let Some((room_id, peer_id)) = self.sessions.get(&session).cloned() {
                self.remove_peer(&room_id, &peer_id, LeaveReason::Timeout);
            }
        }
    }

    /// When [`Hub::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(t, _)| *t)
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Peers present in a room (attached or resuming), in join order.
    pub fn peers(&self, room: &RoomId) -> Vec<PeerInfo> {
        self.rooms.get(room).map(sorted_peers).unwrap_or_default()
    }

    /// Peers present in a room with whether each is connected (false while resumable).
    pub fn peer_presence(&self, room: &RoomId) -> Vec<(PeerInfo, bool)> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut peers: Vec<&PeerState> = room.peers.values().collect();
        peers.sort_by_key(|p| p.seq);
        peers
            .into_iter()
            .map(|p| (p.info.clone(), matches!(p.link, Link::Attached(_))))
            .collect()
    }

    /// Number of peers present in a room.
    pub fn peer_count(&self, room: &RoomId) -> usize {
        self.rooms.get(room).map_or(0, |r| r.peers.len())
    }

    /// The room a connection has joined, with its peer id.
    pub fn peer_of(&self, conn: ConnId) -> Option<&(RoomId, PeerId)> {
        self.conns.get(&conn)
    }

    /// Counts for metrics.
    pub fn stats(&self) -> HubStats {
        HubStats {
            rooms: self.rooms.len(),
            peers: self.sessions.len(),
            detached: self.expiries.len(),
        }
    }

    /// Checks the invariants of the module doc; for tests.
    #[doc(hidden)]
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut attached = 0;
        let mut detached = 0;
        for (room_id, room) in &self.rooms {
            if room.peers.is_empty() {
                return Err(format!("room {room_id} is empty but kept"));
            }
            for (peer_id, peer) in &room.peers {
                if self.sessions.get(&peer.session) != Some(&(room_id.clone(), peer_id.clone())) {
                    return Err(format!("session of {peer_id} does not map back"));
                }
                match &peer.link {
                    Link::Attached(conn) => {
                        attached += 1;
                        if self.conns.get(conn) != Some(&(room_id.clone(), peer_id.clone())) {
                            return Err(format!("conn of {peer_id} does not map back"));
                        }
                    }
                    Link::Detached {
                        expires,
                        buffer,
                        bytes,
                    } => {
                        detached += 1;
                        if !self.expiries.contains(&(*expires, peer.session.clone())) {
                            return Err(format!("{peer_id} is detached without expiry"));
                        }
                        if buffer.len() > self.config.resume_buffer_frames
                            || *bytes > self.config.resume_buffer_bytes
                            || *bytes != buffer.iter().map(Frame::len).sum::<usize>()
                        {
                            return Err(format!("resume buffer of {peer_id} out of bounds"));
                        }
                    }
                }
            }
        }
        let peers: usize = self.rooms.values().map(|r| r.peers.len()).sum();
        if peers != self.sessions.len() || attached != self.conns.len() {
            return Err("sessions or conns hold entries for no peer".into());
        }
        if detached != self.expiries.len() {
            return Err("expiries hold entries for no detached peer".into());
        }
        Ok(())
    }

    fn in_room(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.peers.contains_key(peer))
    }

    fn may_send_data(&self, room: &RoomId, peer: &PeerId) -> bool {
        self.rooms
            .get(room)
            .and_then(|r| r.peers.get(peer))
            .is_some_and(|p| p.permissions.send_data)
    }

    /// Splits a `send.to` into peers of the room and ids that are not (self counts as unknown).
    fn targets(
        &self,
        room_id: &RoomId,
        from: &PeerId,
        to: Option<Vec<PeerId>>,
    ) -> (Vec<PeerId>, Vec<PeerId>) {
        let Some(room) = self.rooms.get(room_id) else {
            return (Vec::new(), to.unwrap_or_default());
        };
        match to {
            None => (
                room.peers.keys().filter(|p| *p != from).cloned().collect(),
                Vec::new(),
            ),
            Some(mut list) => {
                list.sort();
                list.dedup();
                list.into_iter()
                    .partition(|p| p != from && room.peers.contains_key(p))
            }
        }
    }

    /// Delivers to attached targets and keeps the frame for detached ones.
    fn route(&mut self, room_id: &RoomId, targets: &[PeerId], frame: Frame) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let mut conns = Vec::with_capacity(targets.len());
        let mut detached = Vec::new();
        for target in targets {
            match room.peers.get(target).map(|p| &p.link) {
                Some(Link::Attached(conn)) => conns.push(*conn),
                Some(Link::Detached { .. }) => detached.push(target.clone()),
                None => {}
            }
        }
        self.push_deliver(conns, frame.clone());
        self.buffer_for(room_id, &detached, &frame);
    }

    /// Keeps `frame` for detached peers; a peer whose buffer would overflow loses its session
    /// (its sender learns through `peer_left`: nothing is dropped silently).
    fn buffer_for(&mut self, room_id: &RoomId, peers: &[PeerId], frame: &Frame) {
        let mut overflowed = Vec::new();
        if let Some(room) = self.rooms.get_mut(room_id) {
            for peer_id in peers {
                if let Some(Link::Detached { buffer, bytes, .. }) =
                    room.peers.get_mut(peer_id).map(|p| &mut p.link)
                {
                    if buffer.len() < self.config.resume_buffer_frames
                        && *bytes + frame.len() <= self.config.resume_buffer_bytes
                    {
                        *bytes += frame.len();
                        buffer.push_back(frame.clone());
                    } else {
                        overflowed.push(peer_id.clone());
                    }
                }
            }
        }
        for peer in overflowed {
            // Removing an earlier one keeps its peer_left for this one, which may overflow
            // (and be removed and reported) there already.
            if !self.in_room(room_id, &peer) {
                continue;
            }
            self.outputs.push_back(Output::ResumeBufferOverflow {
                room: room_id.clone(),
                peer: peer.clone(),
            });
            self.remove_peer(room_id, &peer, LeaveReason::Timeout);
        }
    }

    fn remove_peer(&mut self, room_id: &RoomId, peer_id: &PeerId, reason: LeaveReason) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let Some(peer) = room.peers.remove(peer_id) else {
            return;
        };
        self.sessions.remove(&peer.session);
        match peer.link {
            Link::Attached(conn) => {
                self.conns.remove(&conn);
            }
            Link::Detached { expires, .. } => {
                self.expiries.remove(&(expires, peer.session));
            }
        }
        if room.peers.is_empty() {
            self.rooms.remove(room_id);
            self.outputs.push_back(Output::RoomVacated {
                room: room_id.clone(),
            });
            return;
        }
        let frame = Frame::new(&ServerMessage::PeerLeft(PeerLeft {
            peer: peer.info,
            reason,
        }));
        let conns = attached_conns(room, None);
        let detached = detached_peers(room);
        self.push_deliver(conns, frame.clone());
        self.buffer_for(room_id, &detached, &frame);
    }

    fn push_deliver(&mut self, conns: Vec<ConnId>, frame: Frame) {
        if !conns.is_empty() {
            self.outputs.push_back(Output::Deliver { conns, frame });
        }
    }

    fn push_error(&mut self, conn: ConnId, error: ErrorFrame) {
        self.push_deliver(vec![conn], Frame::new(&ServerMessage::Error(error)));
    }
}

fn unknown_peers(peers: Vec<PeerId>, reference: Option<u64>) -> ErrorFrame {
    let mut e = ErrorFrame::new(
        ErrorCode::UnknownPeer,
        "no such peer in this room; nothing was delivered to it",
    )
    .with_ref(reference);
    e.peers = Some(peers);
    e
}

fn sorted_peers(room: &RoomState) -> Vec<PeerInfo> {
    let mut peers: Vec<&PeerState> = room.peers.values().collect();
    peers.sort_by_key(|p| p.seq);
    peers.into_iter().map(|p| p.info.clone()).collect()
}

fn attached_conns(room: &RoomState, except: Option<&PeerId>) -> Vec<ConnId> {
    room.peers
        .iter()
        .filter(|(id, _)| Some(*id) != except)
        .filter_map(|(_, p)| match p.link {
            Link::Attached(conn) => Some(conn),
            Link::Detached { .. } => None,
        })
        .collect()
}

fn detached_peers(room: &RoomState) -> Vec<PeerId> {
    room.peers
        .iter()
        .filter(|(_, p)| matches!(p.link, Link::Detached { .. }))
        .map(|(id, _)| id.clone())
        .collect()
}
