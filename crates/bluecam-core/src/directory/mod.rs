//! [`Directory`]: the cluster directory's rules, written once. Who is in which room on which
//! node, which session may resume where, when a room is full, when a peer of a dead node
//! leaves, and which nodes are told of each change.
//!
//! This is the specification. The Redis scripts of the server (`directory/redis/scripts.rs`)
//! are its translation, key for key: every operation here is one script (or, for the reap, one
//! script per room) that touches only the keys of one room, and the shared vectors in
//! `tests/vectors/directory.json` (operations in; answers, messages published and the state
//! after out) are run against both. The cluster simulation runs the nodes against this model.
//!
//! The state mirrors the Redis keys (see the server's `directory/redis/mod.rs` for the table):
//! per room its record (whether it exists), version, seats (peer → record, node, session),
//! sessions, tombstones of peers that left for good, orphans and a deletion tombstone; per
//! node its liveness and the rooms it may have peers in (a superset: written before the
//! operation that seats a peer there, pruned only when the node is reaped); the node set, the
//! epoch, the rebuild mark and the index of rooms with orphans.
//!
//! Time is passed in (`now`, milliseconds); the scripts read Redis's clock.
//!
//! **Shards.** [`Directory::with_shards`] splits the state as a Redis Cluster does: each room's
//! records on one shard, with its entry in that shard's orphan index (the server's
//! `bc:{eN}:orphans`), each global record (the node set, each node's liveness and rooms, the
//! rebuild mark) on the shard of its own key, and one epoch per shard (the server's
//! `bc:{eN}:epoch`). Which shard holds what is a stand-in for the cluster's slot map
//! (a hash of the key's name), enough for the simulation to lose one shard's data
//! ([`Directory::wipe_shard`]) or its last writes ([`Directory::restore_shard`], a failover to a
//! replica that was behind).

pub use crate::cluster::{Beat, ORPHAN_NODE};
use crate::{ClaimedSession, ClusterView, RemotePeer, cluster::split_view};
use bluecam_proto::{
    Identity, LeaveReason, NodeId, NodeMessage, PeerId, PeerInfo, PeerRecord, Permissions,
    RoomClosedReason, RoomId, SessionId, SessionSecret,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// How long a tombstone (a peer that left for good, a deleted room) is kept, in ms.
pub const TOMBSTONE_MS: u64 = 3_600_000;

/// What a session record holds: what a resume on another node needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub room: RoomId,
    pub peer: PeerId,
    pub identity: Identity,
    pub secret: SessionSecret,
    pub permissions: Permissions,
}

/// A peer as the directory records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seat {
    pub info: PeerInfo,
    /// Join order in the room.
    pub seq: u64,
    /// The node holding it ([`ORPHAN_NODE`] for an orphan).
    pub node: NodeId,
    pub session: SessionId,
}

impl Seat {
    fn remote(&self) -> RemotePeer {
        RemotePeer {
            info: self.info.clone(),
            node: self.node.clone(),
            seq: self.seq,
        }
    }

    fn record(&self) -> PeerRecord {
        PeerRecord {
            info: self.info.clone(),
            seq: self.seq,
        }
    }
}

/// A new peer, or one a node puts back: the arguments `join` and `register` share.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerEntry {
    pub info: PeerInfo,
    pub session: SessionId,
    pub secret: SessionSecret,
    #[serde(default = "Permissions::default")]
    pub permissions: Permissions,
}

impl PeerEntry {
    /// The session record this peer is stored with in `room`.
    pub fn record(&self, room: &RoomId) -> SessionRecord {
        SessionRecord {
            room: room.clone(),
            peer: self.info.id.clone(),
            identity: self.info.identity.clone(),
            secret: self.secret.clone(),
            permissions: self.permissions,
        }
    }
}

/// A room's membership: its version and every seat, by peer id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub ver: u64,
    pub peers: Vec<RemotePeer>,
}

impl View {
    /// The room as a node that just seated a new peer sees it (the peer's seq is the
    /// version): peers of other nodes, and those recorded on this one it may not hold yet.
    pub fn joined(self, node: &NodeId, replaced: Vec<PeerId>) -> ClusterView {
        let (peers, pending_here) = split_view(self.peers, node);
        ClusterView {
            ver: self.ver,
            seq: self.ver,
            peers,
            claimed: None,
            pending_here,
            replaced,
        }
    }

    /// The room as a node that just claimed `session` (stored as `record`) sees it; `None`
    /// when the claimed peer is missing from it (never, from a correct directory).
    pub fn claimed(
        self,
        node: &NodeId,
        session: SessionId,
        record: SessionRecord,
    ) -> Option<ClusterView> {
        let me = self
            .peers
            .iter()
            .find(|p| p.info.id == record.peer)?
            .clone();
        let (peers, pending_here) = split_view(self.peers, node);
        Some(ClusterView {
            ver: self.ver,
            seq: me.seq,
            peers,
            pending_here,
            replaced: Vec::new(),
            claimed: Some(ClaimedSession {
                info: me.info,
                session,
                secret: record.secret,
                permissions: record.permissions,
            }),
        })
    }
}

/// What a join answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum JoinReply {
    /// Seated, with the room after it (the new peer's seq is `view.ver`), and the seats of
    /// the same identity it took over (see [`admit`]), which left with reason `replaced`.
    Joined {
        view: View,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replaced: Vec<PeerId>,
    },
    /// Every seat is taken.
    Full,
    /// No such room (never made, or deleted).
    Gone,
}

/// What a claim (a resume on a node that does not hold the session) answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ClaimReply {
    /// Moved to the claiming node, with the session as stored and the room after it.
    Claimed { session: SessionRecord, view: View },
    /// No such session in this room, or not this secret.
    Expired,
    /// Recorded on the claiming node already: it holds the session, or will once a claim of
    /// its own that the directory answered is handled (or it expired there a moment ago).
    Here,
    /// The session is this room's but another identity's.
    Unauthorized,
    /// The directory lost its data a moment ago: the node holding the session may still put
    /// it back. Retry.
    Rebuilding,
}

/// What putting a peer back answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum RegisterReply {
    /// It was there, on this node (or an orphan of it, taken back and announced as moved).
    Present,
    /// It was missing: put back and announced as joined.
    Added,
    /// It is on another node now.
    Moved { node: NodeId },
    /// It left for good meanwhile (its tombstone).
    Left,
    /// The room was deleted.
    Gone,
}

/// What a reap round did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaped {
    /// Nodes found dead, with how many of their peers became orphans.
    pub nodes: Vec<(NodeId, u64)>,
    /// Orphans whose resume window had passed: they left.
    pub swept: u64,
}

/// A message the directory publishes to a node (on its channel), as it encodes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    pub node: NodeId,
    pub text: String,
}

/// Who may take a seat, the one rule of it: the single node's core (`Hub`) and the directory
/// of a cluster (this model, and the `JOIN` script that translates it) both apply it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admit {
    /// The seats the new session takes over: the identity's others, unless the room allows
    /// several sessions per identity (a reload or a second tab replaces the first).
    pub replaces: Vec<PeerId>,
    /// Every seat is taken by others (those replaced not counted): refused, and nobody is
    /// replaced.
    pub full: bool,
}

/// [`Admit`] for a new session of `identity` in a room with these seats (peer and identity),
/// the joiner's own not among them.
pub fn admit<'a>(
    seats: impl IntoIterator<Item = (&'a PeerId, &'a Identity)>,
    identity: &Identity,
    multiple_sessions: bool,
    max_peers: u32,
) -> Admit {
    let mut replaces = Vec::new();
    let mut others = 0usize;
    for (peer, who) in seats {
        if !multiple_sessions && who == identity {
            replaces.push(peer.clone());
        } else {
            others += 1;
        }
    }
    let full = others >= max_peers as usize;
    if full {
        replaces.clear();
    }
    Admit { replaces, full }
}

#[derive(Clone, Debug, Default)]
struct RoomState {
    /// The room's record exists (it was made and not deleted).
    exists: bool,
    ver: u64,
    seats: BTreeMap<PeerId, Seat>,
    sessions: BTreeMap<SessionId, SessionRecord>,
    /// Peers that left for good, until when.
    gone: BTreeMap<PeerId, u64>,
    /// Orphans, until when their resume window lasts.
    orphans: BTreeMap<PeerId, u64>,
    /// Deleted, until when the tombstone lasts.
    deleted_until: Option<u64>,
}

impl RoomState {
    fn view(&self) -> View {
        View {
            ver: self.ver,
            peers: self.seats.values().map(Seat::remote).collect(),
        }
    }

    fn is_blank(&self) -> bool {
        !self.exists
            && self.ver == 0
            && self.seats.is_empty()
            && self.sessions.is_empty()
            && self.gone.is_empty()
            && self.orphans.is_empty()
            && self.deleted_until.is_none()
    }
}

/// The shard of a key among `count` (FNV-1a of its name: a stand-in for the cluster's slot
/// map).
fn shard_of(count: usize, key: &str) -> usize {
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % count.max(1) as u64) as usize
}

/// Puts back in `now` the entries of `older` whose key `on` selects, and removes the ones
/// `older` lacks (a shard gone back to what a replica had).
fn restore<K: Ord + Clone, V: Clone>(
    now: &mut BTreeMap<K, V>,
    older: &BTreeMap<K, V>,
    on: impl Fn(&K) -> bool,
) {
    now.retain(|k, _| !on(k));
    now.extend(
        older
            .iter()
            .filter(|(k, _)| on(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
}

/// The directory. See the module doc.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    rooms: BTreeMap<RoomId, RoomState>,
    /// Nodes that may still hold peers.
    nodes: BTreeSet<NodeId>,
    /// Each node's liveness, until when.
    alive: BTreeMap<NodeId, u64>,
    /// Rooms each node may have peers in.
    node_rooms: BTreeMap<NodeId, BTreeSet<RoomId>>,
    /// Rooms with orphans, by when the next one may be due.
    orphan_index: BTreeMap<RoomId, u64>,
    /// The epoch of each shard (one: shard 0).
    epochs: BTreeMap<usize, String>,
    rebuilt_until: Option<u64>,
    /// Shards (0 or 1: one Redis).
    shards: usize,
    /// What was published, in order, since the last [`Directory::take_published`].
    published: Vec<Publish>,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory over `shards` shards, as on a Redis Cluster (see the module doc).
    pub fn with_shards(shards: usize) -> Self {
        Self {
            shards,
            ..Self::default()
        }
    }

    fn shard_count(&self) -> usize {
        self.shards.max(1)
    }

    /// How many shards (1: one Redis).
    pub fn shards(&self) -> usize {
        self.shard_count()
    }

    fn shard_of(&self, key: &str) -> usize {
        shard_of(self.shard_count(), key)
    }

    fn room_shard(&self, room: &RoomId) -> usize {
        self.shard_of(&format!("room:{room}"))
    }

    /// The shard that holds `room`'s records.
    pub fn shard_of_room(&self, room: &RoomId) -> usize {
        self.room_shard(room)
    }

    /// One shard lost everything it held (its master restarted empty, or failed over to an
    /// empty replica): its rooms, the global records that live on it and its epoch.
    pub fn wipe_shard(&mut self, shard: usize) {
        let empty = Self::with_shards(self.shards);
        self.restore_shard(shard, &empty);
    }

    /// One shard went back to what it held in `older` (a failover to a replica that missed
    /// its master's last writes); the other shards keep theirs.
    pub fn restore_shard(&mut self, shard: usize, older: &Directory) {
        let count = self.shard_count();
        let on_room_shard = |r: &RoomId| shard_of(count, &format!("room:{r}")) == shard;
        let on_node_shard = |n: &NodeId| shard_of(count, &format!("node:{n}")) == shard;
        restore(&mut self.rooms, &older.rooms, on_room_shard);
        // (The orphan index is kept per shard, each listing its own rooms.)
        restore(&mut self.orphan_index, &older.orphan_index, on_room_shard);
        restore(&mut self.alive, &older.alive, on_node_shard);
        restore(&mut self.node_rooms, &older.node_rooms, on_node_shard);
        restore(&mut self.epochs, &older.epochs, |s| *s == shard);
        if self.shard_of("nodes") == shard {
            self.nodes = older.nodes.clone();
        }
        if self.shard_of("rebuilt") == shard {
            self.rebuilt_until = older.rebuilt_until;
        }
    }

    /// The epoch as one string (`None` while a shard has none).
    fn joined_epoch(&self) -> Option<String> {
        let n = self.shard_count();
        let mut parts = Vec::with_capacity(n);
        for shard in 0..n {
            let e = self.epochs.get(&shard)?;
            parts.push(if n == 1 {
                e.clone()
            } else {
                format!("{shard}={e}")
            });
        }
        Some(parts.join(","))
    }

    /// What was published since the last call, in order.
    pub fn take_published(&mut self) -> Vec<Publish> {
        std::mem::take(&mut self.published)
    }

    fn room(&mut self, room: &RoomId) -> &mut RoomState {
        self.rooms.entry(room.clone()).or_default()
    }

    fn publish(&mut self, node: &NodeId, msg: &NodeMessage<'_>) {
        self.published.push(Publish {
            node: node.clone(),
            text: msg.encode(),
        });
    }

    /// Publishes `msg` once to every node with a seat in the room (orphans' `~` included, as
    /// the scripts do: nobody listens there), but those in `told` (updated).
    fn tell_room(&mut self, room: &RoomId, msg: &NodeMessage<'_>, told: &mut BTreeSet<NodeId>) {
        let nodes: Vec<NodeId> = self
            .rooms
            .get(room)
            .map(|r| r.seats.values().map(|s| s.node.clone()).collect())
            .unwrap_or_default();
        for n in nodes {
            if told.insert(n.clone()) {
                self.publish(&n, msg);
            }
        }
    }

    /// What a node does before any operation that may seat a peer of `room` on it (`join`,
    /// `claim` and `register` do it first): it joins the node set and lists the room as one of
    /// its own (a superset: harmless if the operation then refuses; see `prune_node_room`).
    fn note_node_room(&mut self, node: &NodeId, room: &RoomId) {
        self.nodes.insert(node.clone());
        self.node_rooms
            .entry(node.clone())
            .or_default()
            .insert(room.clone());
    }

    /// The room's record is written (the store made it): it exists, and is no tombstone.
    pub fn create_room(&mut self, room: &RoomId) -> bool {
        let r = self.room(room);
        if r.exists {
            return false;
        }
        r.exists = true;
        r.deleted_until = None;
        true
    }

    /// Whether the room's record exists.
    pub fn room_exists(&self, room: &RoomId) -> bool {
        self.rooms.get(room).is_some_and(|r| r.exists)
    }

    /// Whether the room was deleted within the tombstone's life.
    pub fn recently_deleted(&self, room: &RoomId, now: u64) -> bool {
        self.rooms
            .get(room)
            .and_then(|r| r.deleted_until)
            .is_some_and(|t| t > now)
    }

    /// Seats `peer` on `node` with join order `seq` (`seat` and `announce_joined` in the
    /// scripts' prelude) and announces it (`joined`, at version `ver`) to the room's other
    /// nodes.
    fn seat(&mut self, room: &RoomId, node: &NodeId, peer: &PeerEntry, seq: u64, ver: u64) {
        let seat = Seat {
            info: peer.info.clone(),
            seq,
            node: node.clone(),
            session: peer.session.clone(),
        };
        let msg = NodeMessage::Joined {
            room: room.clone(),
            ver,
            node: node.clone(),
            peer: seat.record(),
        };
        let r = self.room(room);
        r.sessions.insert(seat.session.clone(), peer.record(room));
        r.seats.insert(seat.info.id.clone(), seat);
        self.tell_room(room, &msg, &mut BTreeSet::from([node.clone()]));
    }

    /// A new peer on `node`: refused when the room is gone or full ([`admit`], `max_peers`
    /// seats); otherwise the seats it takes over leave (`replaced`: announced to every node
    /// but this one, which is told in the answer), and it is seated with the next version as
    /// its seq and announced (`joined`) to the room's other nodes.
    pub fn join(
        &mut self,
        room: &RoomId,
        node: &NodeId,
        peer: &PeerEntry,
        max_peers: u32,
        multiple_sessions: bool,
        now: u64,
    ) -> JoinReply {
        self.note_node_room(node, room);
        let r = self.room(room);
        if !r.exists {
            return JoinReply::Gone;
        }
        // (A join repeated after an answer that was lost finds its seat taken by itself.)
        let seats = r
            .seats
            .values()
            .filter(|s| s.info.id != peer.info.id)
            .map(|s| (&s.info.id, &s.info.identity));
        let admit = admit(seats, &peer.info.identity, multiple_sessions, max_peers);
        if admit.full {
            return JoinReply::Full;
        }
        for old in &admit.replaces {
            self.replace(room, old, node, now);
        }
        let r = self.room(room);
        r.ver += 1;
        let ver = r.ver;
        self.seat(room, node, peer, ver, ver);
        JoinReply::Joined {
            view: self.rooms[room].view(),
            replaced: admit.replaces,
        }
    }

    /// A seat taken over by a new session on `node`: it leaves (`replaced`), and its own node
    /// is told even when no seat of the room is left there (it must close the old session).
    fn replace(&mut self, room: &RoomId, peer: &PeerId, node: &NodeId, now: u64) {
        let Some(old) = self
            .rooms
            .get(room)
            .and_then(|r| r.seats.get(peer))
            .map(|s| s.node.clone())
        else {
            return;
        };
        let msg = self.remove(room, peer, node, LeaveReason::Replaced, now);
        let still = self.rooms[room].seats.values().any(|s| s.node == old);
        if old != *node && !still {
            self.publish(&old, &msg);
        }
    }

    /// Moves `peer` (seated on `old`) to `node` and announces `moved` to the room's nodes,
    /// `old` included; returns the new version.
    fn move_peer(&mut self, room: &RoomId, peer: &PeerId, old: &NodeId, node: &NodeId) -> u64 {
        let r = self.room(room);
        r.orphans.remove(peer);
        r.ver += 1;
        let ver = r.ver;
        let Some(seat) = r.seats.get_mut(peer) else {
            return ver;
        };
        seat.node = node.clone();
        let msg = NodeMessage::Moved {
            room: room.clone(),
            ver,
            node: node.clone(),
            peer: seat.record(),
        };
        let mut told = BTreeSet::from([node.clone()]);
        self.tell_room(room, &msg, &mut told);
        if !told.contains(old) {
            self.publish(old, &msg);
        }
        ver
    }

    /// A resume on `node` of a session another node holds (or an orphan): checks the secret
    /// and identity, moves the peer here and announces it (the old node hands over).
    pub fn claim(
        &mut self,
        room: &RoomId,
        node: &NodeId,
        identity: &Identity,
        session: &SessionId,
        secret: &SessionSecret,
        now: u64,
    ) -> ClaimReply {
        self.note_node_room(node, room);
        let record = self
            .rooms
            .get(room)
            .and_then(|r| r.sessions.get(session))
            .cloned();
        let Some(record) = record else {
            return if self.rebuilt_until.is_some_and(|t| t > now) {
                ClaimReply::Rebuilding
            } else {
                ClaimReply::Expired
            };
        };
        if record.secret != *secret {
            return ClaimReply::Expired;
        }
        if record.identity != *identity {
            return ClaimReply::Unauthorized;
        }
        let Some(old) = self.rooms[room]
            .seats
            .get(&record.peer)
            .map(|s| s.node.clone())
        else {
            return ClaimReply::Expired;
        };
        if old == *node {
            return ClaimReply::Here;
        }
        self.move_peer(room, &record.peer, &old, node);
        ClaimReply::Claimed {
            session: record,
            view: self.rooms[room].view(),
        }
    }

    /// Removes `peer` (its tombstone kept) and announces `left` to the room's other nodes.
    fn remove(
        &mut self,
        room: &RoomId,
        peer: &PeerId,
        node: &NodeId,
        reason: LeaveReason,
        now: u64,
    ) -> NodeMessage<'static> {
        let r = self.room(room);
        r.gone.retain(|_, t| *t > now);
        r.gone.insert(peer.clone(), now + TOMBSTONE_MS);
        r.orphans.remove(peer);
        if let Some(seat) = r.seats.remove(peer) {
            r.sessions.remove(&seat.session);
        }
        r.ver += 1;
        let msg = NodeMessage::Left {
            room: room.clone(),
            ver: r.ver,
            peer: peer.clone(),
            reason,
        };
        self.tell_room(room, &msg, &mut BTreeSet::from([node.clone()]));
        msg
    }

    /// A peer of `node` is gone: removes it (unless it moved to another node meanwhile; an
    /// orphan goes too) and announces `left`. Whether it was removed.
    pub fn leave(
        &mut self,
        room: &RoomId,
        peer: &PeerId,
        node: &NodeId,
        reason: LeaveReason,
        now: u64,
    ) -> bool {
        let Some(at) = self
            .rooms
            .get(room)
            .and_then(|r| r.seats.get(peer))
            .map(|s| s.node.clone())
        else {
            return false;
        };
        if at != *node && at.as_str() != ORPHAN_NODE {
            return false;
        }
        self.remove(room, peer, node, reason, now);
        true
    }

    /// Puts a peer of `node` back (after the directory lost it, or the node was reaped while
    /// cut off). `seq` is its join order, `seen_ver` the version the node's replica reached:
    /// the room's version never goes below it.
    pub fn register(
        &mut self,
        room: &RoomId,
        node: &NodeId,
        peer: &PeerEntry,
        seq: u64,
        seen_ver: u64,
        now: u64,
    ) -> RegisterReply {
        self.note_node_room(node, room);
        let r = self.room(room);
        if !r.exists {
            return RegisterReply::Gone;
        }
        let id = &peer.info.id;
        if r.gone.get(id).is_some_and(|t| *t > now) {
            return RegisterReply::Left;
        }
        r.ver = r.ver.max(seen_ver);
        if let Some(at) = r.seats.get(id).map(|s| s.node.clone()) {
            if at.as_str() == ORPHAN_NODE {
                self.move_peer(room, id, &at, node);
                return RegisterReply::Present;
            }
            if at != *node {
                return RegisterReply::Moved { node: at };
            }
            return RegisterReply::Present;
        }
        r.ver += 1;
        let ver = r.ver;
        self.seat(room, node, peer, seq, ver);
        RegisterReply::Added
    }

    /// Raises a room's version to at least `ver` (a node putting the room back).
    pub fn raise_version(&mut self, room: &RoomId, ver: u64) {
        let r = self.room(room);
        r.ver = r.ver.max(ver);
    }

    /// Deletes a room with everything recorded about it (leaving a tombstone) and publishes
    /// `closed` to the nodes with peers in it but `node`. With `only_if_empty`, only when no
    /// peer is in it. Whether it was deleted.
    pub fn delete_room(
        &mut self,
        room: &RoomId,
        reason: RoomClosedReason,
        node: &NodeId,
        only_if_empty: bool,
        now: u64,
    ) -> bool {
        let Some(r) = self.rooms.get(room) else {
            return false;
        };
        if (only_if_empty && !r.seats.is_empty()) || !r.exists {
            return false;
        }
        let msg = NodeMessage::Closed {
            room: room.clone(),
            reason,
        };
        self.tell_room(room, &msg, &mut BTreeSet::from([node.clone()]));
        let r = self.room(room);
        *r = RoomState {
            deleted_until: Some(now + TOMBSTONE_MS),
            ..RoomState::default()
        };
        self.orphan_index.remove(room);
        true
    }

    /// Renews `node`'s liveness for `alive_for` ms, reads the epoch (setting `fresh` if there
    /// is none) and adds the node to the node set.
    pub fn heartbeat(&mut self, node: &NodeId, alive_for: u64, fresh: &str, now: u64) -> Beat {
        let lapsed = self
            .alive
            .insert(node.clone(), now + alive_for)
            .is_none_or(|t| t <= now);
        let mut drew_epoch = false;
        for shard in 0..self.shard_count() {
            if let std::collections::btree_map::Entry::Vacant(e) = self.epochs.entry(shard) {
                e.insert(fresh.to_owned());
                drew_epoch = true;
            }
        }
        let epoch = self.joined_epoch().unwrap_or_else(|| fresh.to_owned());
        let was_missing = self.nodes.insert(node.clone()) || lapsed;
        Beat {
            epoch,
            was_missing,
            drew_epoch,
        }
    }

    /// The liveness of `node` ends now (it stopped renewing it and it expired).
    pub fn expire(&mut self, node: &NodeId) {
        self.alive.remove(node);
    }

    /// Marks the directory as being rebuilt for `window` ms.
    pub fn mark_rebuilt(&mut self, window: u64, now: u64) {
        self.rebuilt_until = Some(now + window.max(1));
    }

    /// The epoch, and whether the rebuild mark is on.
    pub fn epoch(&self, now: u64) -> (Option<String>, bool) {
        (
            self.joined_epoch(),
            self.rebuilt_until.is_some_and(|t| t > now),
        )
    }

    /// A reap round run by `me`: the peers of every other node whose liveness has expired
    /// become orphans for `window` ms (held by no node, resumable anywhere, nothing announced);
    /// the node leaves the node set. Then orphans whose window has passed leave their rooms
    /// (reason `timeout`).
    pub fn reap(&mut self, me: &NodeId, window: u64, now: u64) -> Reaped {
        let mut out = Reaped::default();
        let dead: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| *n != me && self.alive.get(*n).is_none_or(|t| *t <= now))
            .cloned()
            .collect();
        for node in dead {
            let mut orphaned = 0;
            for room in self.node_rooms.remove(&node).unwrap_or_default() {
                let until = now + window;
                let r = self.room(&room);
                let mut any = false;
                for seat in r.seats.values_mut().filter(|s| s.node == node) {
                    seat.node = NodeId::new(ORPHAN_NODE);
                    r.orphans.insert(seat.info.id.clone(), until);
                    orphaned += 1;
                    any = true;
                }
                if any {
                    let e = self.orphan_index.entry(room).or_insert(until);
                    *e = (*e).min(until);
                }
            }
            self.nodes.remove(&node);
            out.nodes.push((node, orphaned));
        }
        let due: Vec<RoomId> = self
            .orphan_index
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            out.swept += self.sweep_room(&room, now);
        }
        self.rooms.retain(|_, r| !r.is_blank());
        out
    }

    /// Removes a room's orphans whose window has passed; re-indexes the room by its next.
    fn sweep_room(&mut self, room: &RoomId, now: u64) -> u64 {
        let r = self.room(room);
        let due: Vec<PeerId> = r
            .orphans
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        let mut removed = 0;
        for peer in due {
            let r = self.room(room);
            r.orphans.remove(&peer);
            if r.seats
                .get(&peer)
                .is_some_and(|s| s.node.as_str() == ORPHAN_NODE)
            {
                self.remove(
                    room,
                    &peer,
                    &NodeId::new(ORPHAN_NODE),
                    LeaveReason::Timeout,
                    now,
                );
                removed += 1;
            }
        }
        match self.room(room).orphans.values().min().copied() {
            Some(next) => self.orphan_index.insert(room.clone(), next),
            None => self.orphan_index.remove(room),
        };
        removed
    }

    /// A room's version and seats.
    pub fn snapshot(&self, room: &RoomId) -> View {
        self.rooms.get(room).map(RoomState::view).unwrap_or(View {
            ver: 0,
            peers: Vec::new(),
        })
    }

    /// The seats the directory records on `node`, by room (what a resync compares with what
    /// the node holds).
    pub fn recorded_on(&self, node: &NodeId) -> Vec<(RoomId, PeerId)> {
        let Some(rooms) = self.node_rooms.get(node) else {
            return Vec::new();
        };
        rooms
            .iter()
            .filter_map(|room| self.rooms.get(room).map(|r| (room, r)))
            .flat_map(|(room, r)| {
                r.seats
                    .values()
                    .filter(|s| s.node == *node)
                    .map(|s| (room.clone(), s.info.id.clone()))
            })
            .collect()
    }

    /// `room` is no longer one of `node`'s rooms: the node holds no peer there and no
    /// operation that may seat one there is under way (it checks again after, and notes the
    /// room again if one began meanwhile).
    pub fn prune_node_room(&mut self, node: &NodeId, room: &RoomId) {
        if let Some(rooms) = self.node_rooms.get_mut(node) {
            rooms.remove(room);
        }
    }

    /// Whether `node` is in the node set (it may still hold peers).
    pub fn has_node(&self, node: &NodeId) -> bool {
        self.nodes.contains(node)
    }

    /// Everything lost: Redis restarted without its data.
    pub fn wipe(&mut self) {
        *self = Self::with_shards(self.shards);
    }

    /// The state, as the vectors compare it.
    pub fn state(&self, now: u64) -> DirState {
        DirState {
            rooms: self
                .rooms
                .iter()
                .filter(|(_, r)| !r.is_blank())
                .map(|(id, r)| {
                    (
                        id.clone(),
                        RoomDump {
                            exists: r.exists,
                            deleted: r.deleted_until.is_some_and(|t| t > now),
                            ver: r.ver,
                            seats: r.seats.values().cloned().collect(),
                            sessions: r.sessions.clone(),
                            gone: r
                                .gone
                                .iter()
                                .filter(|(_, t)| **t > now)
                                .map(|(p, _)| p.clone())
                                .collect(),
                            orphans: r.orphans.keys().cloned().collect(),
                        },
                    )
                })
                .collect(),
            nodes: self.nodes.clone(),
            node_rooms: self
                .node_rooms
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(n, r)| (n.clone(), r.clone()))
                .collect(),
            orphan_index: self.orphan_index.keys().cloned().collect(),
            epoch: self.joined_epoch().is_some(),
            rebuilding: self.rebuilt_until.is_some_and(|t| t > now),
        }
    }
}

mod vectors;
pub use vectors::{Answer, DirState, Op, RoomDump, published_json};
