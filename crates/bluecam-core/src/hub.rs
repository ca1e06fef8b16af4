//! [`Hub`]: every room, peer and session of one node, and the routing between them.
//!
//! Invariants (checked by the property test in `tests/`):
//! - a peer is in exactly one room, and a room in `rooms` has at least one peer of this node,
//!   unless a join into it waits for the cluster directory (its replica is kept meanwhile);
//! - `conns` maps exactly the attached peers, `sessions` exactly the peers;
//! - every detached peer has one entry in `expiries`, attached peers none;
//! - frames reach only peers of the sender's room, with `from` written here.

use crate::Frame;
use bluecam_proto::{
    CloseCode, ErrorCode, ErrorFrame, IceServer, Identity, Joined, LeaveReason, Limits,
    MessageFrame, NodeId, PeerId, PeerInfo, PeerJoined, PeerLeft, Permissions, ResumeCredentials,
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
    /// Whether one identity may hold several seats; when false, a join by an identity that
    /// is in the room already replaces its peer (reason `replaced`).
    pub multiple_sessions: bool,
}

/// A session read back from disk after a restart: its peer is put back in its room, detached,
/// for the resume window (see [`Hub::restore`]).
#[derive(Clone, Debug)]
pub struct RestoredSession {
    pub room: RoomSummary,
    pub info: PeerInfo,
    pub permissions: Permissions,
    pub session: SessionId,
    /// [`secret_digest`] of the session secret (the secret itself is never stored).
    pub secret_digest: [u8; 32],
}

/// The SHA-256 of a session secret, as durable session records keep it.
pub fn secret_digest(secret: &SessionSecret) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(secret.expose().as_bytes()).into()
}

/// What the core keeps to check a resume's secret.
#[derive(Clone)]
enum Secret {
    Plain(SessionSecret),
    /// A session restored from disk keeps only the digest until its first resume.
    Digest([u8; 32]),
}

impl Secret {
    fn matches(&self, presented: &SessionSecret) -> bool {
        match self {
            Self::Plain(s) => s.matches(presented),
            Self::Digest(d) => {
                let p = secret_digest(presented);
                d.iter().zip(p).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
            }
        }
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
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
    /// In cluster mode: the room as the directory saw it when it admitted this join.
    pub cluster: Option<ClusterView>,
}

/// A peer of a room as the cluster directory records it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RemotePeer {
    pub info: PeerInfo,
    pub node: NodeId,
    /// Join order in the cluster.
    pub seq: u64,
}

/// What the cluster directory answered to a join or a resume: the room's membership at the
/// version `ver`, and this peer's place in it.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub ver: u64,
    /// This peer's join order.
    pub seq: u64,
    /// The peers of the room on *other* nodes, per the directory (this node knows its own;
    /// the joiner, if listed, is skipped).
    pub peers: Vec<RemotePeer>,
    /// For a resume on a node that does not hold the session: the session as stored.
    pub claimed: Option<ClaimedSession>,
    /// Peers the directory places on *this* node that this node may not hold yet (their own
    /// join or resume here is a step behind this one): the joiner must still list them, and
    /// frames for them go round through the node's own channel until they are admitted.
    pub pending_here: Vec<RemotePeer>,
}

/// A session taken over from another node.
#[derive(Clone, Debug)]
pub struct ClaimedSession {
    pub info: PeerInfo,
    pub session: SessionId,
    pub secret: SessionSecret,
    pub permissions: Permissions,
}

/// What another node of the cluster says about a room.
#[derive(Clone, Debug)]
pub enum RoomEvent {
    /// A peer joined on another node.
    Joined(RemotePeer),
    /// A peer of another node left (or its node died).
    Left { peer: PeerId, reason: LeaveReason },
    /// A peer resumed its session on another node (`peer.node`).
    Moved(RemotePeer),
    /// A frame for peers of this room, `from` already written.
    Frame { to: Vec<PeerId>, frame: Frame },
}

impl RoomEvent {
    fn is_membership(&self) -> bool {
        !matches!(self, Self::Frame { .. })
    }
}

/// The connection whose frame caused a [`Output::Publish`], to tell it if that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub conn: ConnId,
    pub reference: Option<u64>,
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
    /// A claim answered by the directory was overtaken by another node's claim of the same
    /// session before this node handled it: retry.
    Overtaken,
    /// The room was deleted while the directory answered the join.
    RoomClosed,
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
            Self::Overtaken => ErrorCode::Unavailable,
            Self::RoomClosed => ErrorCode::RoomNotFound,
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
            Self::Overtaken => "the session was resumed on another node meanwhile; retry",
            Self::RoomClosed => "the room was deleted",
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
    /// Cluster: send `frame` to peers `to` of `room` on another node.
    Publish {
        node: NodeId,
        room: RoomId,
        to: Vec<PeerId>,
        frame: Frame,
        origin: Option<Origin>,
    },
    /// A peer of this node is gone for good: the shell ends its session record and its call
    /// history entry, and (cluster) removes it from the directory.
    PeerRemoved {
        room: RoomId,
        peer: PeerId,
        session: SessionId,
        reason: LeaveReason,
        /// When its connection was lost, if it was detached (waiting for a resume) rather than
        /// connected: that is when it really left.
        detached_at: Option<Instant>,
    },
    /// A frame from another node found none of its recipients here (for metrics).
    Undeliverable { room: RoomId, peers: usize },
    /// A peer of this node addressed peers its room does not know. In a cluster the replica
    /// may have missed their joins: the shell checks it against the directory (a resync).
    UnknownPeers { room: RoomId, peers: usize },
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

/// Where a peer is connected.
#[derive(Debug)]
enum At {
    /// On this node, with its session.
    Here {
        session: SessionId,
        secret: Secret,
        link: Link,
    },
    /// On another node of the cluster (this room's replica of the directory in Redis).
    There(NodeId),
}

#[derive(Debug)]
struct PeerState {
    info: PeerInfo,
    permissions: Permissions,
    /// Join order within the room, for stable peer lists (the cluster's order in cluster mode).
    seq: u64,
    at: At,
    /// The room version of its last move heard from the directory (cluster): a claim of it
    /// answered at an older version was overtaken by that move.
    moved_ver: u64,
}

impl PeerState {
    /// A peer of another node, as the directory records it.
    fn remote(p: RemotePeer) -> Self {
        Self {
            info: p.info,
            permissions: Permissions::default(),
            seq: p.seq,
            at: At::There(p.node),
            moved_ver: 0,
        }
    }

    fn link(&self) -> Option<&Link> {
        match &self.at {
            At::Here { link, .. } => Some(link),
            At::There(_) => None,
        }
    }

    fn link_mut(&mut self) -> Option<&mut Link> {
        match &mut self.at {
            At::Here { link, .. } => Some(link),
            At::There(_) => None,
        }
    }
}

#[derive(Debug)]
struct RoomState {
    summary: RoomSummary,
    peers: HashMap<PeerId, PeerState>,
    /// The last cluster membership version applied (0 on a single node).
    ver: u64,
}

/// Cluster events for a room whose replica does not exist yet because a join into it is in
/// flight (see [`Hub::begin_cluster_join`]); applied once the join's snapshot is.
#[derive(Debug, Default)]
struct Pending {
    joins: usize,
    events: Vec<(u64, RoomEvent)>,
    /// The room was closed (deleted) while these joins waited: they are refused.
    closed: Option<RoomClosedReason>,
}

/// Frames kept per pending room at most; more are dropped (reported as undeliverable).
const MAX_PENDING_EVENTS: usize = 4096;

/// All rooms of a node with their peers and sessions. See the module doc for invariants.
#[derive(Debug)]
pub struct Hub {
    config: CoreConfig,
    rooms: HashMap<RoomId, RoomState>,
    conns: HashMap<ConnId, (RoomId, PeerId)>,
    sessions: HashMap<SessionId, (RoomId, PeerId)>,
    expiries: BTreeSet<(Instant, SessionId)>,
    pending: HashMap<RoomId, Pending>,
    outputs: VecDeque<Output>,
    next_seq: u64,
    /// Sessions this node ended lately (the latest [`MAX_ENDED`]), and how: a resume of one
    /// handed over to another node is told to retry (it claims the session back), and a claim
    /// answered by the directory for one that expired here meanwhile is refused (this node
    /// removed it from the directory as it expired).
    ended: HashMap<SessionId, Ended>,
    ended_order: VecDeque<SessionId>,
}

/// How much later a session expires whose room has a join waiting for the directory.
const PENDING_EXPIRY_DELAY: Duration = Duration::from_millis(250);

/// Sessions ended lately that a hub remembers.
const MAX_ENDED: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// It resumed on another node, at this room version.
    HandedOver { ver: u64 },
    /// Its resume window passed here.
    Expired,
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
            pending: HashMap::new(),
            outputs: VecDeque::new(),
            next_seq: 0,
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
        }
    }

    fn ended(&mut self, session: SessionId, how: Ended) {
        if self.ended.insert(session.clone(), how).is_none() {
            self.ended_order.push_back(session);
            if self.ended_order.len() > MAX_ENDED
                && let Some(old) = self.ended_order.pop_front()
            {
                self.ended.remove(&old);
            }
        }
    }

    /// Whether this node holds the session (a resume of it needs no cluster lookup).
    pub fn has_session(&self, session: &SessionId) -> bool {
        self.sessions.contains_key(session)
    }

    /// Puts a session back after a restart (single node): its peer is in its room again,
    /// detached, until it resumes or the resume window (counted from `now`) passes, when it
    /// leaves with reason `timeout`. Nobody is told: to the others it never left. Sessions are
    /// restored in join order, before any connection exists; a session already held is
    /// ignored.
    pub fn restore(&mut self, r: RestoredSession, now: Instant) {
        if self.sessions.contains_key(&r.session) {
            return;
        }
        let expires = now + self.config.resume_window;
        self.next_seq += 1;
        let room_id = r.room.id.clone();
        let room = self
            .rooms
            .entry(room_id.clone())
            .or_insert_with(|| RoomState {
                summary: r.room,
                peers: HashMap::new(),
                ver: 0,
            });
        room.peers.insert(
            r.info.id.clone(),
            PeerState {
                info: r.info.clone(),
                permissions: r.permissions,
                seq: self.next_seq,
                at: At::Here {
                    session: r.session.clone(),
                    secret: Secret::Digest(r.secret_digest),
                    link: Link::Detached {
                        expires,
                        buffer: VecDeque::new(),
                        bytes: 0,
                    },
                },
                moved_ver: 0,
            },
        );
        self.sessions
            .insert(r.session.clone(), (room_id, r.info.id));
        self.expiries.insert((expires, r.session));
    }

    /// Cluster: a join into `room` is about to ask the directory. Until the join is handled
    /// (or [`Hub::end_cluster_join`] is called), events for the room are kept rather than
    /// dropped, so none published between the directory's answer and this node's handling of
    /// it is lost.
    pub fn begin_cluster_join(&mut self, room: &RoomId) {
        self.pending.entry(room.clone()).or_default().joins += 1;
    }

    /// Whether a join into `room` is waiting for the directory.
    pub fn has_pending_join(&self, room: &RoomId) -> bool {
        self.pending.contains_key(room)
    }

    /// Cluster: a join begun with [`Hub::begin_cluster_join`] ended without reaching
    /// [`Hub::handle_join`].
    pub fn end_cluster_join(&mut self, room: &RoomId) {
        if let Some(p) = self.pending.get_mut(room) {
            p.joins = p.joins.saturating_sub(1);
            if p.joins == 0 {
                self.pending.remove(room);
                self.drop_if_no_local_peers(room);
            }
        }
    }

    /// Admits a verified join (new peer or resumed session). On success the outputs hold
    /// `joined` for the joiner (then, on resume, the frames kept for it) and `peer_joined`
    /// for the others.
    pub fn handle_join(&mut self, mut req: JoinRequest) -> Result<PeerId, JoinRejected> {
        let cluster = req.cluster.take();
        let room_id = req.room.summary.id.clone();
        let closed = self.pending.get(&room_id).and_then(|p| p.closed);
        let result = if self.conns.contains_key(&req.conn) {
            Err(JoinRejected::AlreadyJoined)
        } else if closed.is_some() {
            Err(JoinRejected::RoomClosed)
        } else {
            match (req.resume.clone(), cluster) {
                (Some(creds), Some(view)) if !self.sessions.contains_key(&creds.session) => {
                    self.claim(req, creds, view)
                }
                (Some(creds), Some(view)) => {
                    // A session this node holds that the directory had recorded on another
                    // node (this node missed its move, and its client came back here): claimed
                    // back. The replica catches up with the directory's answer first, so the
                    // missed move, older than it, is ignored when it arrives.
                    if self.rooms.get(&room_id).is_some_and(|r| view.ver > r.ver) {
                        let here: Vec<PeerId> = view
                            .pending_here
                            .iter()
                            .map(|p| p.info.id.clone())
                            .collect();
                        self.handle_room_snapshot_with(&room_id, view.ver, view.peers, &here);
                    }
                    self.resume(req, creds)
                }
                (Some(creds), None) => self.resume(req, creds),
                (None, view) => self.join_fresh(req, view),
            }
        };
        // Events kept while the directory answered apply now (after `joined`, in order).
        if let Some(pending) = self.pending.get_mut(&room_id) {
            pending.joins = pending.joins.saturating_sub(1);
            let events = if self.rooms.contains_key(&room_id) || pending.joins == 0 {
                std::mem::take(&mut pending.events)
            } else {
                Vec::new()
            };
            let last = pending.joins == 0;
            if last {
                self.pending.remove(&room_id);
            }
            for (ver, event) in events {
                self.handle_room_event(&room_id, ver, event);
            }
            if last {
                self.drop_if_no_local_peers(&room_id);
            }
        }
        result
    }

    /// Creates the room's replica if needed and adds the peers of a directory snapshot that
    /// it does not hold (a join's own snapshot: they are not announced, the joiner gets them in
    /// `joined` and the others heard of them already).
    fn replica(
        &mut self,
        summary: RoomSummary,
        view: Option<&ClusterView>,
        joiner: &PeerId,
    ) -> &mut RoomState {
        let id = summary.id.clone();
        match (self.rooms.get_mut(&id), view) {
            (Some(room), Some(view)) if view.ver > room.ver => {
                // The directory's answer can overtake events on the subscription: bring the
                // replica to the answer's version as a snapshot would (announcing what the
                // peers here missed), so later events at or below it are rightly ignored.
                let mut peers: Vec<RemotePeer> = view
                    .peers
                    .iter()
                    .filter(|p| p.info.id != *joiner)
                    .cloned()
                    .collect();
                // A session being claimed is in the replica already, on its old node: it is
                // not gone, it is coming here.
                if let Some(p) = room.peers.get(joiner)
                    && let At::There(node) = &p.at
                {
                    peers.push(RemotePeer {
                        info: p.info.clone(),
                        node: node.clone(),
                        seq: p.seq,
                    });
                }
                let here: Vec<PeerId> = view
                    .pending_here
                    .iter()
                    .map(|p| p.info.id.clone())
                    .collect();
                self.handle_room_snapshot_with(&id, view.ver, peers, &here);
            }
            _ => {}
        }
        if !self.rooms.contains_key(&id) {
            // No replica yet, or the snapshot above let go of its last local peer and
            // dropped it: built from the view, never empty when the view is not.
            let mut room = RoomState {
                summary: summary.clone(),
                peers: HashMap::new(),
                ver: 0,
            };
            if let Some(view) = view {
                room.ver = view.ver;
                for p in view.peers.iter().filter(|p| p.info.id != *joiner) {
                    room.peers
                        .insert(p.info.id.clone(), PeerState::remote(p.clone()));
                }
            }
            self.rooms.insert(id.clone(), room);
        }
        // Just inserted or found above; a snapshot never drops a room with a local peer, and
        // a replica without one is dropped only after this join adds its peer.
        let room = self.rooms.entry(id.clone()).or_insert_with(|| RoomState {
            summary: summary.clone(),
            peers: HashMap::new(),
            ver: 0,
        });
        // Peers on their way onto this node (a join or claim here that the directory has
        // answered and this hub not yet admitted): in the room for the joiner too, and
        // announced to the peers already here (their own join event, older than this answer,
        // will be ignored). Their own admission replaces the entry.
        let mut arriving = Vec::new();
        for p in view.map(|v| v.pending_here.as_slice()).unwrap_or_default() {
            if p.info.id != *joiner && !room.peers.contains_key(&p.info.id) {
                room.peers
                    .insert(p.info.id.clone(), PeerState::remote(p.clone()));
                arriving.push(p.info.clone());
            }
        }
        for info in arriving {
            let Some(room) = self.rooms.get(&id) else {
                break;
            };
            let announce = Frame::new(&ServerMessage::PeerJoined(PeerJoined { peer: info }));
            let conns = attached_conns(room, None);
            let detached = detached_peers(room);
            self.push_deliver(conns, announce.clone());
            self.buffer_for(&id, &detached, &announce);
        }
        // (Still there: announcing drops nothing.)
        let room = self.rooms.entry(id).or_insert_with(|| RoomState {
            summary: summary.clone(),
            peers: HashMap::new(),
            ver: 0,
        });
        // The latest stored room wins (name or limits may have changed).
        room.summary = summary;
        room
    }

    fn join_fresh(
        &mut self,
        req: JoinRequest,
        view: Option<ClusterView>,
    ) -> Result<PeerId, JoinRejected> {
        let room_id = req.room.summary.id.clone();
        if let Some(members) = &req.room.members {
            let is_owner = req.room.owner.as_ref() == Some(&req.identity);
            if !is_owner && !members.contains(&req.identity) {
                return Err(JoinRejected::Forbidden);
            }
        }
        // One seat per identity unless the room allows more: a newer session replaces the
        // older (a reload, a second tab), before the seats are counted. In a cluster the
        // directory counted the seats and keeps several sessions per identity.
        if view.is_none() && !req.room.multiple_sessions {
            self.replace_identity(&room_id, &req.identity);
        }
        // In cluster mode the directory counted the seats (the joiner's included).
        if view.is_none() {
            let present = self.rooms.get(&room_id).map_or(0, |r| r.peers.len());
            if present >= req.room.summary.max_peers as usize {
                return Err(JoinRejected::RoomFull);
            }
        }
        let info = PeerInfo {
            id: req.fresh.peer.clone(),
            identity: req.identity,
            name: req.name,
            metadata: req.metadata,
        };
        self.next_seq += 1;
        let seq = view.as_ref().map_or(self.next_seq, |v| v.seq);
        let resume_window_secs = self.config.resume_window.as_secs();
        let room = self.replica(req.room.summary, view.as_ref(), &info.id);
        let others = sorted_peers(room);
        let others_conns = attached_conns(room, None);
        let detached_others: Vec<PeerId> = detached_peers(room);
        room.peers.insert(
            info.id.clone(),
            PeerState {
                info: info.clone(),
                permissions: req.permissions,
                seq,
                at: At::Here {
                    session: req.fresh.session.clone(),
                    secret: Secret::Plain(req.fresh.secret.clone()),
                    link: Link::Attached(req.conn),
                },
                moved_ver: 0,
            },
        );
        let joined = Joined {
            self_: info.clone(),
            room: room.summary.clone(),
            peers: others,
            session: SessionInfo {
                id: req.fresh.session.clone(),
                secret: req.fresh.secret,
                resume_window_secs,
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

    /// Removes this node's peers of `identity` from the room, reason `replaced`; an attached
    /// one is closed with [`CloseCode::Superseded`].
    fn replace_identity(&mut self, room_id: &RoomId, identity: &Identity) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let mut old: Vec<(u64, PeerId, Option<ConnId>)> = room
            .peers
            .iter()
            .filter(|(_, p)| p.info.identity == *identity)
            .filter_map(|(id, p)| match &p.at {
                At::Here { link, .. } => Some((
                    p.seq,
                    id.clone(),
                    match link {
                        Link::Attached(conn) => Some(*conn),
                        Link::Detached { .. } => None,
                    },
                )),
                At::There(_) => None,
            })
            .collect();
        old.sort();
        for (_, peer, conn) in old {
            if let Some(conn) = conn {
                self.outputs.push_back(Output::Close {
                    conn,
                    code: CloseCode::Superseded,
                });
            }
            self.remove_peer(room_id, &peer, LeaveReason::Replaced);
        }
    }

    fn resume(
        &mut self,
        req: JoinRequest,
        creds: ResumeCredentials,
    ) -> Result<PeerId, JoinRejected> {
        let Some((room_id, peer_id)) = self.sessions.get(&creds.session).cloned() else {
            // Handed over to another node (which this node heard of after the directory
            // answered this resume): the client tries again, and claims it back.
            if matches!(
                self.ended.get(&creds.session),
                Some(Ended::HandedOver { .. })
            ) {
                return Err(JoinRejected::Overtaken);
            }
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
        let At::Here {
            session,
            secret,
            link,
        } = &mut peer.at
        else {
            return Err(JoinRejected::SessionExpired);
        };
        if !secret.matches(&creds.secret) {
            return Err(JoinRejected::SessionExpired);
        }
        if room_id != req.room.summary.id || peer.info.identity != req.identity {
            return Err(JoinRejected::Unauthorized);
        }
        // A restored session keeps the digest only until it is resumed with the secret.
        *secret = Secret::Plain(creds.secret.clone());
        let old = std::mem::replace(link, Link::Attached(req.conn));
        let session_info = SessionInfo {
            id: session.clone(),
            secret: creds.secret.clone(),
            resume_window_secs: self.config.resume_window.as_secs(),
        };
        let self_ = peer.info.clone();
        room.summary = req.room.summary;
        let joined = Joined {
            self_,
            room: room.summary.clone(),
            peers: sorted_peers(room)
                .into_iter()
                .filter(|p| p.id != peer_id)
                .collect(),
            session: session_info,
            ice_servers: req.ice_servers,
            limits: req.limits,
            resumed: true,
        };
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

    /// Cluster: resumes a session that lived on another node. The directory has moved it
    /// here already; frames its old node still held follow as [`RoomEvent::Frame`]s.
    fn claim(
        &mut self,
        req: JoinRequest,
        creds: ResumeCredentials,
        view: ClusterView,
    ) -> Result<PeerId, JoinRejected> {
        let Some(claimed) = view.claimed.clone() else {
            return Err(JoinRejected::SessionExpired);
        };
        if claimed.session != creds.session || !claimed.secret.matches(&creds.secret) {
            return Err(JoinRejected::SessionExpired);
        }
        if claimed.info.identity != req.identity {
            return Err(JoinRejected::Unauthorized);
        }
        // It expired here while the directory answered (and this node removed it there).
        if matches!(self.ended.get(&creds.session), Some(Ended::Expired)) {
            return Err(JoinRejected::SessionExpired);
        }
        let room_id = req.room.summary.id.clone();
        let peer_id = claimed.info.id.clone();
        // A move of this session elsewhere heard since the directory answered (another node
        // claimed it after this one did): the answer is stale, the session is there now. The
        // client tries again, and its next claim takes the session back.
        let moved_since = |ver: u64| ver > view.ver;
        if let Some(Ended::HandedOver { ver }) = self.ended.get(&creds.session)
            && moved_since(*ver)
        {
            return Err(JoinRejected::Overtaken);
        }
        if let Some(p) = self.rooms.get(&room_id).and_then(|r| r.peers.get(&peer_id))
            && matches!(p.at, At::There(_))
            && moved_since(p.moved_ver)
        {
            return Err(JoinRejected::Overtaken);
        }
        let resume_window_secs = self.config.resume_window.as_secs();
        let room = self.replica(req.room.summary, Some(&view), &peer_id);
        // A peer this replica never heard of (its join is still on the way here, behind the
        // claim's answer): the others here learn of it now, since the event that would have
        // told them will be older than the replica and ignored.
        let unheard = !room.peers.contains_key(&peer_id);
        let announce = unheard.then(|| {
            Frame::new(&ServerMessage::PeerJoined(PeerJoined {
                peer: claimed.info.clone(),
            }))
        });
        room.peers.insert(
            peer_id.clone(),
            PeerState {
                info: claimed.info.clone(),
                permissions: claimed.permissions,
                seq: view.seq,
                at: At::Here {
                    session: claimed.session.clone(),
                    secret: Secret::Plain(claimed.secret.clone()),
                    link: Link::Attached(req.conn),
                },
                moved_ver: 0,
            },
        );
        let joined = Joined {
            self_: claimed.info,
            room: room.summary.clone(),
            peers: sorted_peers(room)
                .into_iter()
                .filter(|p| p.id != peer_id)
                .collect(),
            session: SessionInfo {
                id: claimed.session.clone(),
                secret: claimed.secret,
                resume_window_secs,
            },
            ice_servers: req.ice_servers,
            limits: req.limits,
            resumed: true,
        };
        self.conns
            .insert(req.conn, (room_id.clone(), peer_id.clone()));
        self.sessions
            .insert(claimed.session, (room_id.clone(), peer_id.clone()));
        self.push_deliver(
            vec![req.conn],
            Frame::new(&ServerMessage::Joined(Box::new(joined))),
        );
        if let (Some(announce), Some(room)) = (announce, self.rooms.get(&room_id)) {
            let conns = attached_conns(room, Some(&peer_id));
            let detached = detached_peers(room);
            self.push_deliver(conns, announce.clone());
            self.buffer_for(&room_id, &detached, &announce);
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
                    if to != from {
                        self.outputs.push_back(Output::UnknownPeers {
                            room: room_id.clone(),
                            peers: 1,
                        });
                    }
                    self.push_error(conn, unknown_peers(vec![to], reference));
                    return;
                }
                let frame = Frame::new(&ServerMessage::Signal(SignalFrame {
                    from,
                    data: Cow::Borrowed(&*data),
                }));
                self.route(&room_id, &[to], frame, Some(Origin { conn, reference }));
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
                    self.route(&room_id, &targets, frame, Some(Origin { conn, reference }));
                }
                if !unknown.is_empty() {
                    self.outputs.push_back(Output::UnknownPeers {
                        room: room_id.clone(),
                        peers: unknown.len(),
                    });
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

    /// Cluster: applies what another node says about a room. Membership events older than
    /// the replica (`ver` at most its version) are ignored; events for a room with a join in
    /// flight are kept until the join is handled; others for unknown rooms are dropped (a
    /// frame among them is reported as [`Output::Undeliverable`]).
    pub fn handle_room_event(&mut self, room_id: &RoomId, ver: u64, event: RoomEvent) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            // Membership events are few and must not be lost; frames are bounded.
            if let Some(pending) = self.pending.get_mut(room_id)
                && (event.is_membership() || pending.events.len() < MAX_PENDING_EVENTS)
            {
                pending.events.push((ver, event));
            } else if let RoomEvent::Frame { to, .. } = event {
                self.outputs.push_back(Output::Undeliverable {
                    room: room_id.clone(),
                    peers: to.len(),
                });
            }
            return;
        };
        if event.is_membership() {
            if ver <= room.ver {
                return;
            }
            room.ver = ver;
        }
        match event {
            RoomEvent::Joined(p) => self.add_remote(room_id, p),
            RoomEvent::Left { peer, reason } => {
                if matches!(room.peers.get(&peer).map(|p| &p.at), Some(At::There(_))) {
                    self.remove_peer(room_id, &peer, reason);
                }
            }
            RoomEvent::Moved(p) => {
                if let Some(peer) = room.peers.get_mut(&p.info.id) {
                    peer.moved_ver = ver;
                    self.moved(room_id, &p.info.id, p.node, ver);
                } else {
                    // Gone from here already (its session expired here as it resumed there):
                    // it is back.
                    self.add_remote(room_id, p);
                }
            }
            RoomEvent::Frame { to, frame } => {
                // Only peers of this node: a frame from another node is never published again
                // (two nodes that disagree for a moment on where a peer is must not bounce it
                // between them). One that missed its peer is counted; the SDK's acks resend it.
                let mut missing = 0;
                let targets: Vec<PeerId> = to
                    .into_iter()
                    .filter(|p| {
                        let here =
                            matches!(room.peers.get(p).map(|s| &s.at), Some(At::Here { .. }));
                        missing += usize::from(!here);
                        here
                    })
                    .collect();
                if missing > 0 {
                    self.outputs.push_back(Output::Undeliverable {
                        room: room_id.clone(),
                        peers: missing,
                    });
                }
                self.route(room_id, &targets, frame, None);
            }
        }
    }

    /// A peer resumed on `node`. If it was here, this node lets go of it: an open connection
    /// is replaced, and frames kept for it go after it to its new node.
    fn moved(&mut self, room_id: &RoomId, peer_id: &PeerId, node: NodeId, ver: u64) {
        let Some(peer) = self
            .rooms
            .get_mut(room_id)
            .and_then(|r| r.peers.get_mut(peer_id))
        else {
            return;
        };
        let old = std::mem::replace(&mut peer.at, At::There(node.clone()));
        let At::Here { session, link, .. } = old else {
            return;
        };
        self.sessions.remove(&session);
        self.ended(session.clone(), Ended::HandedOver { ver });
        match link {
            Link::Attached(conn) => {
                self.conns.remove(&conn);
                self.outputs.push_back(Output::Close {
                    conn,
                    code: CloseCode::Replaced,
                });
            }
            Link::Detached {
                expires, buffer, ..
            } => {
                self.expiries.remove(&(expires, session));
                // Membership changes are not sent after it: its `joined` on the new node
                // lists the room as it is, and this node's view may be stale (it was cut off,
                // and announced as gone a peer that had moved on meanwhile).
                for frame in buffer.into_iter().filter(|f| !f.is_membership()) {
                    self.outputs.push_back(Output::Publish {
                        node: node.clone(),
                        room: room_id.clone(),
                        to: vec![peer_id.clone()],
                        frame,
                        origin: None,
                    });
                }
            }
        }
        self.drop_if_no_local_peers(room_id);
    }

    /// Cluster: reconciles a room's replica with the directory's list of the peers of *other*
    /// nodes (after Redis came back): peers it lost are announced as left (timeout), peers it
    /// missed as joined, and a peer of this node that the directory places elsewhere is let go.
    pub fn handle_room_snapshot(
        &mut self,
        room_id: &RoomId,
        ver: u64,
        peers: Vec<RemotePeer>,
    ) -> bool {
        self.handle_room_snapshot_with(room_id, ver, peers, &[])
    }

    /// [`Hub::handle_room_snapshot`], where `here` names the peers the directory places on
    /// this node: one this hub has not admitted yet (its join or resume here is a step behind
    /// the snapshot) is on its way, not gone, and is not announced as leaving.
    ///
    /// A snapshot older than the replica (its version below the replica's: events published
    /// after it was read were applied first) would undo them: it is skipped, and `false` says
    /// so (the shell reads another). The directory's version never goes below a replica's
    /// (re-registering a peer raises it), so only a stale read is ever lower.
    pub fn handle_room_snapshot_with(
        &mut self,
        room_id: &RoomId,
        ver: u64,
        peers: Vec<RemotePeer>,
        here: &[PeerId],
    ) -> bool {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return true;
        };
        if ver < room.ver {
            return false;
        }
        room.ver = ver;
        let listed: HashMap<PeerId, RemotePeer> =
            peers.into_iter().map(|p| (p.info.id.clone(), p)).collect();
        let gone: Vec<PeerId> = room
            .peers
            .iter()
            .filter(|(id, p)| {
                matches!(p.at, At::There(_)) && !listed.contains_key(*id) && !here.contains(*id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut elsewhere = Vec::new();
        for (id, p) in &listed {
            // (A peer found on another node than the replica had it moved at this version at
            // the latest.)
            match room.peers.get_mut(id).map(|s| {
                if matches!(&s.at, At::There(node) if *node != p.node) {
                    s.moved_ver = ver;
                }
                &mut s.at
            }) {
                Some(At::There(node)) => *node = p.node.clone(),
                // An orphan (its node was reaped while this node was cut off) that this node
                // holds is still this node's: its next resync takes it back.
                Some(At::Here { .. }) if p.node.as_str() == crate::cluster::ORPHAN_NODE => {}
                // The snapshot lists only peers of other nodes: this one resumed there.
                Some(At::Here { .. }) => elsewhere.push((id.clone(), p.node.clone())),
                None => {}
            }
        }
        let new: Vec<RemotePeer> = listed
            .into_values()
            .filter(|p| !room.peers.contains_key(&p.info.id))
            .collect();
        for peer in gone {
            self.remove_peer(room_id, &peer, LeaveReason::Timeout);
        }
        for (peer, node) in elsewhere {
            self.moved(room_id, &peer, node, ver);
        }
        if !self.rooms.contains_key(room_id) {
            return true;
        }
        let mut new = new;
        new.sort_by_key(|p| p.seq);
        for p in new {
            self.add_remote(room_id, p);
        }
        true
    }

    /// A peer joined on another node: added to the replica and announced here.
    fn add_remote(&mut self, room_id: &RoomId, p: RemotePeer) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        if room.peers.contains_key(&p.info.id) {
            return;
        }
        let announce = Frame::new(&ServerMessage::PeerJoined(PeerJoined {
            peer: p.info.clone(),
        }));
        room.peers.insert(p.info.id.clone(), PeerState::remote(p));
        let conns = attached_conns(room, None);
        let detached = detached_peers(room);
        self.push_deliver(conns, announce.clone());
        self.buffer_for(room_id, &detached, &announce);
    }

    /// Rooms this node holds local peers in.
    pub fn local_rooms(&self) -> Vec<RoomId> {
        self.rooms.keys().cloned().collect()
    }

    /// This node's peers, for re-registering them with the directory.
    pub fn local_peers(&self) -> Vec<LocalPeer> {
        let mut out = Vec::with_capacity(self.sessions.len());
        for (room_id, room) in &self.rooms {
            for p in room.peers.values() {
                if let At::Here {
                    session,
                    secret: Secret::Plain(secret),
                    ..
                } = &p.at
                {
                    out.push(LocalPeer {
                        room: room_id.clone(),
                        room_ver: room.ver,
                        info: p.info.clone(),
                        permissions: p.permissions,
                        seq: p.seq,
                        session: session.clone(),
                        secret: secret.clone(),
                    });
                }
            }
        }
        out
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
            && let At::Here { session, link, .. } = &mut peer.at
        {
            *link = Link::Detached {
                expires,
                buffer: VecDeque::new(),
                bytes: 0,
            };
            self.expiries.insert((expires, session.clone()));
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

    /// The room was deleted or expired: everyone in it (on this node) is told and
    /// disconnected, and its sessions end.
    pub fn handle_room_closed(&mut self, room_id: &RoomId, reason: RoomClosedReason) {
        // Joins into it answered by the directory before it was deleted are refused when
        // they arrive.
        if let Some(pending) = self.pending.get_mut(room_id) {
            pending.closed = Some(reason);
            pending.events.clear();
        }
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        let frame = Frame::new(&ServerMessage::RoomClosed(RoomClosed { reason }));
        let conns = attached_conns(&room, None);
        for peer in room.peers.into_values() {
            let At::Here { session, link, .. } = peer.at else {
                continue;
            };
            self.sessions.remove(&session);
            match link {
                Link::Attached(conn) => {
                    self.conns.remove(&conn);
                }
                Link::Detached { expires, .. } => {
                    self.expiries.remove(&(expires, session));
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
                // A join into its room waits for the cluster directory (perhaps this very
                // session's resume, which the directory has moved here already): it expires
                // once that is done, not under it.
                if self.pending.contains_key(&room_id)
                    && let Some(Link::Detached { expires, .. }) = self
                        .rooms
                        .get_mut(&room_id)
                        .and_then(|r| r.peers.get_mut(&peer_id))
                        .and_then(|p| match &mut p.at {
                            At::Here { link, .. } => Some(link),
                            At::There(_) => None,
                        })
                {
                    *expires = now + PENDING_EXPIRY_DELAY;
                    self.expiries.insert((*expires, session));
                    continue;
                }
                self.remove_peer(&room_id, &peer_id, LeaveReason::Timeout);
                self.ended(session, Ended::Expired);
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

    /// Peers present in a room with whether each is connected (false while resumable; peers
    /// on other nodes count as connected).
    pub fn peer_presence(&self, room: &RoomId) -> Vec<(PeerInfo, bool)> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut peers: Vec<&PeerState> = room.peers.values().collect();
        peers.sort_by_key(|p| p.seq);
        peers
            .into_iter()
            .map(|p| {
                let connected = !matches!(p.link(), Some(Link::Detached { .. }));
                (p.info.clone(), connected)
            })
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

    /// Counts for metrics (peers of this node only).
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
        let mut local = 0;
        for (room_id, room) in &self.rooms {
            if !self.pending.contains_key(room_id)
                && !room.peers.values().any(|p| matches!(p.at, At::Here { .. }))
            {
                return Err(format!("room {room_id} has no local peer but is kept"));
            }
            for (peer_id, peer) in &room.peers {
                let At::Here { session, link, .. } = &peer.at else {
                    continue;
                };
                local += 1;
                if self.sessions.get(session) != Some(&(room_id.clone(), peer_id.clone())) {
                    return Err(format!("session of {peer_id} does not map back"));
                }
                match link {
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
                        if !self.expiries.contains(&(*expires, session.clone())) {
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
        if local != self.sessions.len() || attached != self.conns.len() {
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

    /// Delivers to attached targets, keeps the frame for detached ones, and publishes it once
    /// per other node for targets there.
    fn route(
        &mut self,
        room_id: &RoomId,
        targets: &[PeerId],
        frame: Frame,
        origin: Option<Origin>,
    ) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let mut conns = Vec::with_capacity(targets.len());
        let mut detached = Vec::new();
        let mut remote: Vec<(NodeId, Vec<PeerId>)> = Vec::new();
        for target in targets {
            match room.peers.get(target).map(|p| &p.at) {
                Some(At::Here {
                    link: Link::Attached(conn),
                    ..
                }) => conns.push(*conn),
                Some(At::Here {
                    link: Link::Detached { .. },
                    ..
                }) => detached.push(target.clone()),
                Some(At::There(node)) => match remote.iter_mut().find(|(n, _)| n == node) {
                    Some((_, to)) => to.push(target.clone()),
                    None => remote.push((node.clone(), vec![target.clone()])),
                },
                None => {}
            }
        }
        for (node, to) in remote {
            self.outputs.push_back(Output::Publish {
                node,
                room: room_id.clone(),
                to,
                frame: frame.clone(),
                origin,
            });
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
                    room.peers.get_mut(peer_id).and_then(PeerState::link_mut)
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
        if let At::Here { session, link, .. } = peer.at {
            self.sessions.remove(&session);
            let detached_at = match link {
                Link::Attached(conn) => {
                    self.conns.remove(&conn);
                    None
                }
                Link::Detached { expires, .. } => {
                    self.expiries.remove(&(expires, session.clone()));
                    expires.checked_sub(self.config.resume_window)
                }
            };
            self.outputs.push_back(Output::PeerRemoved {
                room: room_id.clone(),
                peer: peer_id.clone(),
                session,
                reason,
                detached_at,
            });
        }
        if self.drop_if_no_local_peers(room_id) {
            return;
        }
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let frame = Frame::new(&ServerMessage::PeerLeft(PeerLeft {
            peer: peer.info,
            reason,
        }));
        let conns = attached_conns(room, None);
        let detached = detached_peers(room);
        self.push_deliver(conns, frame.clone());
        self.buffer_for(room_id, &detached, &frame);
    }

    /// Cluster: the directory says that a peer of this node left for good elsewhere while this
    /// node was cut off (it resumed on another node and left there, or its resume window passed
    /// as an orphan), and this node missed it. Its session here ends (an attached connection is
    /// closed with 4010, session expired) and the others here see it leave (`timeout`).
    pub fn handle_peer_gone(&mut self, room_id: &RoomId, peer_id: &PeerId) {
        let at = self
            .rooms
            .get(room_id)
            .and_then(|r| r.peers.get(peer_id))
            .map(|p| &p.at);
        let conn = match at {
            Some(At::Here {
                link: Link::Attached(conn),
                ..
            }) => Some(*conn),
            Some(At::Here { .. }) => None,
            _ => return,
        };
        self.remove_peer(room_id, peer_id, LeaveReason::Timeout);
        if let Some(conn) = conn {
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::SessionExpired,
            });
        }
    }

    /// Forgets a room's replica once no peer of this node is in it (peers elsewhere are the
    /// directory's business); true if it did.
    fn drop_if_no_local_peers(&mut self, room_id: &RoomId) -> bool {
        let Some(room) = self.rooms.get(room_id) else {
            return false;
        };
        // (Kept while a join into it waits for the directory: its version, and where the
        // events it applied put its peers, outlive this moment. The join's end drops it.)
        if self.pending.contains_key(room_id)
            || room.peers.values().any(|p| matches!(p.at, At::Here { .. }))
        {
            return false;
        }
        self.rooms.remove(room_id);
        self.outputs.push_back(Output::RoomVacated {
            room: room_id.clone(),
        });
        true
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

/// A peer of this node with what the directory records of it.
#[derive(Clone, Debug)]
pub struct LocalPeer {
    pub room: RoomId,
    /// The membership version this node's replica of the room has reached.
    pub room_ver: u64,
    pub info: PeerInfo,
    pub permissions: Permissions,
    pub seq: u64,
    pub session: SessionId,
    pub secret: SessionSecret,
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
        .filter_map(|(_, p)| match p.link() {
            Some(Link::Attached(conn)) => Some(*conn),
            _ => None,
        })
        .collect()
}

fn detached_peers(room: &RoomState) -> Vec<PeerId> {
    room.peers
        .iter()
        .filter(|(_, p)| matches!(p.link(), Some(Link::Detached { .. })))
        .map(|(id, _)| id.clone())
        .collect()
}
