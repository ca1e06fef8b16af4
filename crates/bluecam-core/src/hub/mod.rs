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

mod check;
mod peers;
mod rejected;
mod replica;
mod routing;

pub use rejected::JoinRejected;
pub use replica::{ClaimedSession, ClusterView, LocalPeer, RemotePeer, RoomEvent};
use std::{
    borrow::Cow,
    collections::{BTreeSet, VecDeque},
    time::{Duration, Instant},
};

/// The core's maps: keyed by ids, looked up on every frame. foldhash (seeded per process) rather
/// than std's SipHash, which was some 3 % of the server's CPU on the relay path.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A WebSocket connection, numbered by the shell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

/// What the core keeps to check a resume's secret. On a single node, its digest (as the
/// durable session records keep it), inline: 32 bytes in the peer's record rather than an
/// allocation of its own for every peer. In a cluster the secret itself: the directory keeps
/// secrets, and this node registers its peers with it again after the directory lost its data.
#[derive(Clone)]
enum Secret {
    Plain(SessionSecret),
    Digest([u8; 32]),
}

impl Secret {
    /// How a node keeps a newcomer's secret.
    fn kept(fresh: &FreshIds, cluster: bool) -> Self {
        if cluster {
            Self::Plain(fresh.secret.clone())
        } else {
            Self::Digest(fresh.secret_digest)
        }
    }

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
    /// [`secret_digest`] of `secret`, computed where the ids are drawn rather than under the
    /// node's lock (a single node keeps it, and records it with the session).
    secret_digest: [u8; 32],
}

impl FreshIds {
    pub fn new(peer: PeerId, session: SessionId, secret: SessionSecret) -> Self {
        let secret_digest = secret_digest(&secret);
        Self {
            peer,
            session,
            secret,
            secret_digest,
        }
    }

    /// [`secret_digest`] of the secret.
    pub fn secret_digest(&self) -> [u8; 32] {
        self.secret_digest
    }
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

/// The connection whose frame caused a [`Output::Publish`], to tell it if that fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub conn: ConnId,
    pub reference: Option<u64>,
}

/// What the shell must do, in order.
#[derive(Clone, Debug)]
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
    /// may have missed their joins: the node marks itself out of step (a resync follows).
    UnknownPeers { room: RoomId, peers: usize },
    /// Cluster: a step of the control loop to carry out against the directory; its result
    /// comes back as `Input::StepDone` (see [`crate::node::Node`]).
    Directory(crate::cluster::Step),
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
        /// (Boxed: the peer's record, which every peer has, stays small.)
        #[allow(
            clippy::box_collection,
            reason = "24 bytes less in every peer's record; a detached peer is rare"
        )]
        buffer: Box<VecDeque<Frame>>,
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
    /// Messages from the app's backend not acknowledged yet (a peer of this node that got
    /// any; boxed, so a peer that never gets one costs a pointer).
    out: Option<Box<ServerOut>>,
}

/// The app's backend's messages to one peer of this node (`server_message`), kept until the
/// peer acknowledges them (`server_ack`): sent again after its resume (a connection that died
/// may have taken some with it), and after it when it moves to another node. Those another
/// node forwarded after the peer when it moved here are kept too, in their own space.
#[derive(Debug)]
struct ServerOut {
    /// This node's sequence space for the peer: drawn by the shell when this node sent it its
    /// first one (0 until then: only forwarded ones so far).
    epoch: u64,
    /// The number of this node's last message to it (the first is 1).
    last: u64,
    /// (space, number, frame), in the order they were sent.
    unacked: VecDeque<(u64, u64, Frame)>,
    bytes: usize,
}

impl ServerOut {
    fn new() -> Box<Self> {
        Box::new(Self {
            epoch: 0,
            last: 0,
            unacked: VecDeque::new(),
            bytes: 0,
        })
    }
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
            out: None,
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
    peers: peers::PeerMap,
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
    /// Peers the directory let go for a newer session of their identity (`left`, reason
    /// `replaced`) before this node had admitted them: admitted, they leave at once.
    replaced: Vec<PeerId>,
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
            rooms: HashMap::default(),
            conns: HashMap::default(),
            sessions: HashMap::default(),
            expiries: BTreeSet::new(),
            pending: HashMap::default(),
            outputs: VecDeque::new(),
            next_seq: 0,
            ended: HashMap::default(),
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
                peers: peers::PeerMap::default(),
                ver: 0,
            });
        room.peers.insert(PeerState {
            info: r.info.clone(),
            permissions: r.permissions,
            seq: self.next_seq,
            at: At::Here {
                session: r.session.clone(),
                secret: Secret::Digest(r.secret_digest),
                link: Link::Detached {
                    expires,
                    buffer: Box::default(),
                    bytes: 0,
                },
            },
            moved_ver: 0,
            out: None,
        });
        self.sessions
            .insert(r.session.clone(), (room_id, r.info.id));
        self.expiries.insert((expires, r.session));
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
        // Taken over by a newer session before it was admitted here: it leaves at once (its
        // client gets `joined`, then 4042, as two racing tabs on one node do).
        if let (Ok(peer), Some(pending)) = (&result, self.pending.get(&room_id))
            && pending.replaced.contains(peer)
        {
            let peer = peer.clone();
            self.supersede(&room_id, &[peer]);
        }
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
        // Who may take a seat, and which seats of the same identity a new session takes over
        // (a reload, a second tab): the rule of `directory::admit`, applied here on a single
        // node, and by the directory in a cluster (which tells this node what it let go).
        let replaced = match &view {
            None => {
                let seats = self
                    .rooms
                    .get(&room_id)
                    .into_iter()
                    .flat_map(|r| r.peers.iter().map(|(id, p)| (id, &p.info.identity)));
                let admit = crate::directory::admit(
                    seats,
                    &req.identity,
                    req.room.multiple_sessions,
                    req.room.summary.max_peers,
                );
                if admit.full {
                    return Err(JoinRejected::RoomFull);
                }
                admit.replaces
            }
            Some(view) => view.replaced.clone(),
        };
        self.supersede(&room_id, &replaced);
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
        room.peers.insert(PeerState {
            info: info.clone(),
            permissions: req.permissions,
            seq,
            at: At::Here {
                session: req.fresh.session.clone(),
                secret: Secret::kept(&req.fresh, view.is_some()),
                link: Link::Attached(req.conn),
            },
            moved_ver: 0,
            out: None,
        });
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

    /// The app's backend removes a peer of this node (`DELETE /v1/rooms/{id}/peers/{peer}`):
    /// it leaves with reason `kicked`, and its connection, if it has one, is closed with
    /// [`CloseCode::Kicked`]. False when this node does not hold it (a peer of another node
    /// is removed by that node, which the shell tells).
    pub fn handle_kick(&mut self, room_id: &RoomId, peer_id: &PeerId) -> bool {
        let Some(At::Here { link, .. }) = self
            .rooms
            .get(room_id)
            .and_then(|r| r.peers.get(peer_id))
            .map(|p| &p.at)
        else {
            return false;
        };
        let conn = match link {
            Link::Attached(conn) => Some(*conn),
            Link::Detached { .. } => None,
        };
        self.remove_peer(room_id, peer_id, LeaveReason::Kicked);
        if let Some(conn) = conn {
            self.outputs.push_back(Output::Close {
                conn,
                code: CloseCode::Kicked,
            });
        }
        true
    }

    /// Removes the seats a new session took over, reason `replaced`; an attached one of this
    /// node is closed with [`CloseCode::Superseded`] (another node closes its own when the
    /// directory tells it).
    pub(super) fn supersede(&mut self, room_id: &RoomId, peers: &[PeerId]) {
        // (A join in flight whose answer is older may still list them as on their way here.)
        if let Some(pending) = self.pending.get_mut(room_id) {
            for p in peers {
                if !pending.replaced.contains(p) {
                    pending.replaced.push(p.clone());
                }
            }
        }
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let mut old: Vec<(u64, PeerId, Option<ConnId>)> = peers
            .iter()
            .filter_map(|id| {
                let p = room.peers.get(id)?;
                let conn = match &p.at {
                    At::Here {
                        link: Link::Attached(conn),
                        ..
                    } => Some(*conn),
                    _ => None,
                };
                Some((p.seq, id.clone(), conn))
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
        self.conns
            .insert(req.conn, (room_id.clone(), peer_id.clone()));
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
                // (The backend's messages follow, all those not acknowledged.)
                for frame in buffer.into_iter().filter(|f| !f.is_server_message()) {
                    self.push_deliver(vec![req.conn], frame);
                }
            }
        }
        // What the old connection may have taken with it: every message of the backend not
        // acknowledged, in order (the client drops those it has).
        for frame in self.unacked_server_messages(&room_id, &peer_id) {
            self.push_deliver(vec![req.conn], frame);
        }
        Ok(peer_id)
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
                buffer: Box::default(),
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

    /// Queues an output of the node's after the core's own (see [`crate::node::Node`]).
    pub(crate) fn push_output(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Peers present in a room (attached or resuming), in join order.
    pub fn peers(&self, room: &RoomId) -> Vec<PeerInfo> {
        self.rooms.get(room).map(sorted_peers).unwrap_or_default()
    }

    /// This node's peers present in a room, with whether each is connected (false while
    /// resumable); peers on other nodes are left out (the directory knows whether their node
    /// is alive).
    pub fn peer_presence(&self, room: &RoomId) -> Vec<(PeerInfo, bool)> {
        let Some(room) = self.rooms.get(room) else {
            return Vec::new();
        };
        let mut peers: Vec<&PeerState> = room.peers.values().collect();
        peers.sort_by_key(|p| p.seq);
        // Only this node's own peers: whether a peer of another node is connected is the
        // directory's to say (its node may be dead).
        peers
            .into_iter()
            .filter_map(|p| {
                let connected = !matches!(p.link()?, Link::Detached { .. });
                Some((p.info.clone(), connected))
            })
            .collect()
    }

    /// Number of peers present in a room.
    pub fn peer_count(&self, room: &RoomId) -> usize {
        self.rooms.get(room).map_or(0, |r| r.peers.len())
    }

    /// The room and session of the peer on this connection.
    pub fn session_of(&self, conn: ConnId) -> Option<(RoomId, SessionId)> {
        let (room, peer) = self.conns.get(&conn)?;
        match &self.rooms.get(room)?.peers.get(peer)?.at {
            At::Here { session, .. } => Some((room.clone(), session.clone())),
            _ => None,
        }
    }

    /// The room and peer on this connection.
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
