//! [`ClusterNode`]: the control loop of one cluster node as a sans-IO state machine. It owns
//! every decision a node takes about the shared directory (when to renew its liveness, when
//! the directory lost its data, when it is out of step and must resync, when to reap dead
//! nodes, which rooms to put back) and none of the I/O: the shell asks
//! [`ClusterNode::poll_step`] what to do, carries the [`Step`] out against the directory (Redis
//! in the server, an in-memory model in the simulation test) and reports with
//! [`ClusterNode::done`]. Things the shell notices on the way (a reconnection, a failed
//! command, a frame nobody heard) come in as [`Signal`]s.
//!
//! A round: `Heartbeat`, then (when the directory lost its data) `RestoreRooms`, then (when
//! out of step) `Resync`, then (unless the node just reconnected) `Reap`. The heartbeat is
//! due every third of the node expiry and is never held up by the rest of a round: a long
//! resync cannot starve it, or the node would be reaped while alive.
//!
//! Invariants (checked by the simulation test and `check_invariants`):
//! - at most one heartbeat and one other step are in flight;
//! - a node that was out of step stays marked until a resync went through;
//! - a node never reaps within one node expiry after a reconnection (nodes that lost the
//!   directory together get that long to renew their liveness first);
//! - for one resume window after the directory lost its data, replicas are not reconciled
//!   with it (the other nodes, a frozen one included, may still be putting their peers back).

use crate::{Frame, RemotePeer, RoomEvent};
use bluecam_proto::{NodeId, NodeMessage, PeerId, Room, RoomClosedReason, RoomId};
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

/// The node the directory records the peers of a reaped node on (orphans): held by no node,
/// resumable anywhere for the resume window.
pub const ORPHAN_NODE: &str = "~";

/// Something the shell noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The connection to the directory was re-established: writes may be lost.
    Reconnected,
    /// The subscription was re-established: events may be lost.
    Resubscribed,
    /// A directory command failed.
    Failed,
    /// Events from other nodes were dropped (this node was too slow).
    Lagged,
    /// A frame was published to a node nobody listens for, or a peer addressed peers this
    /// node's replica does not know: a replica may be stale.
    Unheard,
}

/// One thing to do against the directory.
#[derive(Clone, Debug)]
pub enum Step {
    /// Renew this node's liveness (it lives [`ClusterNode::alive_for`]), read the directory's
    /// epoch (setting `fresh` if there is none) and add this node to the node set; report a
    /// [`Beat`].
    Heartbeat,
    /// Create these rooms if absent: the directory lost them, and this node has peers in them.
    /// Also mark the directory as being rebuilt for [`ClusterNode::resume_window`]
    /// (`bc:rebuilt`): until then a session or room it lacks may be on its way back from a
    /// node that is cut off, so a resume or join is told to retry rather than that it is gone.
    RestoreRooms(Vec<Room>),
    /// Put this node's peers back, remove entries of peers it no longer holds, and (if
    /// `reconcile`) bring every room replica to the directory's snapshot. Report whether every
    /// part went through.
    Resync { reconcile: bool },
    /// Orphan the peers of nodes whose liveness has expired, and remove orphans whose resume
    /// window has passed.
    Reap,
}

/// What a heartbeat found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Beat {
    /// The directory's epoch (the one there, or the fresh one this heartbeat set).
    pub epoch: String,
    /// This node's liveness had lapsed, or it was not in the node set: it may have been
    /// reaped (its peers orphaned), or the directory lost it. (Membership of the node set alone
    /// does not tell: a claim onto a thawed node adds it back before its first heartbeat.)
    pub was_missing: bool,
    /// The directory had no epoch: this heartbeat drew it. The directory is new, or lost its
    /// data a moment ago; either way a room or session it lacks may be on its way back from a
    /// node that has not noticed yet (treated as a loss: rebuilt for one resume window).
    pub drew_epoch: bool,
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// `None`: the heartbeat failed.
    Heartbeat(Option<Beat>),
    RestoreRooms,
    /// Whether every part went through.
    Resync(bool),
    Reap,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    Idle,
    /// A round was begun by a heartbeat: the next step is due.
    Next,
    InFlight,
}

/// See the module doc.
#[derive(Debug)]
pub struct ClusterNode {
    node: NodeId,
    ttl: Duration,
    resume_window: Duration,
    next_beat: Instant,
    beating: bool,
    work: Work,
    /// Out of step with the directory until a resync goes through.
    dirty: bool,
    /// The directory lost this node's seats (it was reaped, or the directory lost its data):
    /// a join or claim answered before the loss and not handled yet has a seat the loss took,
    /// which only a resync after the join puts back. Cleared by a resync with no join under
    /// way.
    repairing: bool,
    /// No reaping before this (a reconnection): nodes that lost the directory together get a
    /// full node expiry to renew their liveness first.
    grace_until: Option<Instant>,
    /// Rooms to put back before the resync.
    restore: Option<Vec<Room>>,
    /// The directory's epoch as last seen.
    epoch: Option<String>,
    /// When the directory was last found to have lost its data.
    rebuilt_at: Option<Instant>,
    /// The stored rooms this node has peers in, as last read.
    known_rooms: HashMap<RoomId, Room>,
    /// Steps that were due in this round, in order.
    round: Vec<&'static str>,
}

impl ClusterNode {
    /// A node whose first heartbeat is due at `now`; `ttl` is the node expiry, `resume_window`
    /// how long a peer whose connection dropped stays resumable.
    pub fn new(node: NodeId, ttl: Duration, resume_window: Duration, now: Instant) -> Self {
        Self {
            node,
            ttl,
            resume_window,
            next_beat: now,
            beating: false,
            work: Work::Idle,
            dirty: false,
            repairing: false,
            grace_until: None,
            restore: None,
            epoch: None,
            rebuilt_at: None,
            known_rooms: HashMap::new(),
            round: Vec::new(),
        }
    }

    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// How long a renewed liveness lives: two thirds of the node expiry, renewed every third,
    /// so one missed renewal is tolerated and a dead node is found within the expiry.
    pub fn alive_for(&self) -> Duration {
        alive_for(self.ttl)
    }

    /// How long a peer whose connection dropped stays resumable.
    pub fn resume_window(&self) -> Duration {
        self.resume_window
    }

    /// When [`Self::poll_step`] next has something to do (the next heartbeat).
    pub fn poll_timeout(&self) -> Instant {
        if self.beating {
            // Nothing is due before the heartbeat in flight ends (its `done` may be late: a
            // shell waking at `next_beat` meanwhile would only spin).
            self.next_beat + self.ttl
        } else {
            self.next_beat
        }
    }

    /// The directory's epoch as last seen.
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    /// Whether the node is marked out of step with the directory.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Takes in something the shell noticed at `now`.
    pub fn signal(&mut self, signal: Signal, now: Instant) {
        self.dirty = true;
        if matches!(signal, Signal::Reconnected | Signal::Resubscribed) {
            self.grace_until = Some(now + self.ttl);
        }
    }

    /// Marks the node out of step with the directory (a resync follows).
    pub fn mark_out_of_step(&mut self) {
        self.dirty = true;
    }

    /// Remembers a stored room as read (what to put back if the directory loses it).
    pub fn remember_room(&mut self, room: &Room) {
        self.known_rooms.insert(room.id.clone(), room.clone());
    }

    /// The next step, if one is due at `now`.
    pub fn poll_step(&mut self, now: Instant) -> Option<Step> {
        if !self.beating && now >= self.next_beat {
            self.beating = true;
            self.next_beat = now + self.ttl / 3;
            return Some(Step::Heartbeat);
        }
        if self.work != Work::Next {
            return None;
        }
        self.work = Work::InFlight;
        if let Some(rooms) = self.restore.take() {
            self.round.push("restore");
            return Some(Step::RestoreRooms(rooms));
        }
        if self.dirty && !self.round.contains(&"resync") {
            self.dirty = false;
            self.round.push("resync");
            // For a resume window after the directory lost its data, nodes (a frozen one
            // included) may still be putting their peers back: a snapshot lacks peers that
            // never left. Departures still arrive as events meanwhile.
            let reconcile = !self.recently_rebuilt(now);
            if !reconcile {
                // Reconciled in a later round, once the others have put their peers back.
                self.dirty = true;
            }
            return Some(Step::Resync { reconcile });
        }
        let grace = self.grace_until.is_some_and(|t| now < t);
        if !grace && !self.round.contains(&"reap") {
            self.round.push("reap");
            return Some(Step::Reap);
        }
        self.work = Work::Idle;
        None
    }

    /// Reports how a step ended. `local_rooms`: the rooms this node has peers in now, or a
    /// join under way into; `joining`: whether a join is under way.
    pub fn done(&mut self, done: Done, now: Instant, local_rooms: &[RoomId], joining: bool) {
        match done {
            Done::Heartbeat(beat) => {
                self.beating = false;
                let Some(beat) = beat else {
                    self.dirty = true;
                    return;
                };
                let local: HashSet<&RoomId> = local_rooms.iter().collect();
                self.known_rooms.retain(|id, _| local.contains(id));
                let seen = self.epoch.replace(beat.epoch.clone());
                if beat.drew_epoch || seen.is_some_and(|seen| seen != beat.epoch) {
                    // The directory lost its data: put back what this node holds.
                    self.rebuilt_at = Some(now);
                    self.dirty = true;
                    self.repairing = true;
                    self.restore = Some(self.known_rooms.values().cloned().collect());
                    // A resync already done in this round came before the loss: another
                    // follows the restore.
                    self.round.retain(|s| *s != "resync");
                }
                if beat.was_missing && !local_rooms.is_empty() {
                    // Reaped, or the directory lost the node set: put our peers back.
                    self.dirty = true;
                    self.repairing = true;
                }
                if self.work == Work::Idle {
                    self.round.clear();
                    self.work = Work::Next;
                }
            }
            Done::RestoreRooms | Done::Reap => self.work = Work::Next,
            Done::Resync(ok) => {
                if !ok || (self.repairing && joining) {
                    // (A join under way during a repair: its seat may be among the lost, and
                    // is put back by the next resync, once the join is handled.)
                    self.dirty = true;
                } else {
                    self.repairing = false;
                }
                self.work = Work::Next;
            }
        }
    }

    /// Whether a room or session missing from the directory may be missing because the
    /// directory lost its data (rather than because it was deleted or expired), given the
    /// directory's epoch now and whether it is marked as being rebuilt: a node cut off during
    /// the loss may still put it back within the resume window. A join or resume then retries
    /// instead of hearing that it is gone.
    pub fn directory_lost(&self, current: Option<&str>, marked: bool, now: Instant) -> bool {
        // (A node whose first heartbeat has not gone through knows nothing of the directory
        // yet; the server does not serve before it, a restarted node of the simulation may.)
        self.epoch.is_none()
            || marked
            || self.recently_rebuilt(now)
            || self
                .epoch
                .as_deref()
                .is_some_and(|seen| Some(seen) != current)
    }

    /// Whether this node found the directory's data lost within the last resume window.
    pub fn recently_rebuilt(&self, now: Instant) -> bool {
        self.rebuilt_at
            .is_some_and(|t| now.saturating_duration_since(t) < self.resume_window)
    }

    /// Checks the machine's invariants (for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.work == Work::Idle && self.restore.is_some() {
            // A restore is only ever set by a beat, which starts a round at once unless one
            // is in flight (whose end continues the round).
            return Err("rooms to restore, but no round to restore them".into());
        }
        Ok(())
    }
}

/// How long a heartbeat renews a node's liveness for, given the node expiry `ttl` (see
/// [`ClusterNode::alive_for`]).
pub fn alive_for(ttl: Duration) -> Duration {
    ttl * 2 / 3
}

/// Splits a room's peers per the directory into those of other nodes and those it places on
/// `me` (which `me` may not have admitted yet: their join or resume here is a step behind).
pub fn split_view(peers: Vec<RemotePeer>, me: &NodeId) -> (Vec<RemotePeer>, Vec<RemotePeer>) {
    peers.into_iter().partition(|p| p.node != *me)
}

/// The directory's entries for `me` that `me` no longer holds and that no join under way may
/// still claim: to be removed and announced as left.
pub fn stale_entries<'a>(
    recorded: impl IntoIterator<Item = (RoomId, bluecam_proto::PeerId)> + 'a,
    held: &'a HashSet<(RoomId, bluecam_proto::PeerId)>,
    joining: impl Fn(&RoomId) -> bool + 'a,
) -> impl Iterator<Item = (RoomId, bluecam_proto::PeerId)> + 'a {
    recorded
        .into_iter()
        .filter(move |e| !held.contains(e) && !joining(&e.0))
}

/// A message from another node, as the core applies it (`Hub::handle_room_event` or
/// `Hub::handle_room_closed`).
#[derive(Debug)]
pub enum Decoded {
    Room {
        room: RoomId,
        ver: u64,
        event: RoomEvent,
    },
    Closed {
        room: RoomId,
        reason: RoomClosedReason,
    },
    /// `Hub::handle_kick`.
    Kick { room: RoomId, peer: PeerId },
    /// `Hub::handle_server_message`: `body` is `{"type", "data"}`.
    ServerMessage {
        room: RoomId,
        to: Option<Vec<PeerId>>,
        body: Box<bluecam_proto::RawValue>,
    },
}

impl Decoded {
    /// What a node message means to the core; `None` for a frame that is not a server frame.
    pub fn from_message(msg: NodeMessage<'_>) -> Option<Self> {
        let remote = |node, rec: bluecam_proto::PeerRecord| RemotePeer {
            info: rec.info,
            node,
            seq: rec.seq,
        };
        let (room, ver, event) = match msg {
            NodeMessage::Frame { room, to, frame } => {
                let frame =
                    Frame::from_text(bytes::Bytes::copy_from_slice(frame.get().as_bytes()))?;
                (room, 0, RoomEvent::Frame { to, frame })
            }
            NodeMessage::Joined {
                room,
                ver,
                node,
                peer,
            } => (room, ver, RoomEvent::Joined(remote(node, peer))),
            NodeMessage::Left {
                room,
                ver,
                peer,
                reason,
            } => (room, ver, RoomEvent::Left { peer, reason }),
            NodeMessage::Moved {
                room,
                ver,
                node,
                peer,
            } => (room, ver, RoomEvent::Moved(remote(node, peer))),
            NodeMessage::Closed { room, reason } => return Some(Self::Closed { room, reason }),
            NodeMessage::Kick { room, peer } => return Some(Self::Kick { room, peer }),
            NodeMessage::ServerMessage { room, to, body } => {
                return Some(Self::ServerMessage {
                    room,
                    to,
                    body: body.to_owned(),
                });
            }
        };
        Some(Self::Room { room, ver, event })
    }
}
