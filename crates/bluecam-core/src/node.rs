//! [`Node`]: one BlueCam node as one sans-IO state machine. It holds the room core ([`Hub`])
//! and, in a cluster, the control loop ([`ClusterNode`]); everything that happens to the node
//! comes in as one [`Input`], and everything it decides comes out as an [`Output`]: frames to
//! connections, messages to other nodes, and the directory steps of the control loop
//! ([`Output::Directory`]), whose results come back in as [`Input::StepDone`].
//!
//! The shell (the server's driver, or the simulation test) owns the node, feeds it inputs
//! with the time, carries its outputs out, and calls [`Input::Timeout`] at
//! [`Node::poll_timeout`]. What the node needs to know from the directory to admit a peer
//! (a join or a claim) comes in as [`Input::Admission`], and the node decides what the answer
//! means (the rules the server and the simulation used to write out each for itself).

use crate::{
    ClusterView, ConnId, Frame, Hub, HubStats, JoinRejected, JoinRequest, Output, RemotePeer,
    RestoredSession, RoomEvent,
    cluster::{ClusterNode, Done, Signal},
    directory::{ClaimReply, JoinReply},
};
use bluecam_proto::{
    ClientMessage, LeaveReason, NodeId, PeerId, ResumeCredentials, Room, RoomClosedReason, RoomId,
    SessionId,
};
use std::time::Instant;

/// Everything that happens to a node.
// (An input lives on the stack for the one call that hands it over: its size is no cost worth
// a box per join.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input<'a> {
    /// A session read back from the store after a restart (single node), detached.
    Restore(RestoredSession),
    /// A verified join (in a cluster, after its [`Input::Admission`]). Send
    /// [`Input::Timeout`] just before it, so a resume that arrives after its window (before
    /// the next timeout was due) fails as it should.
    Join(JoinRequest),
    /// A frame from a joined connection.
    Message {
        conn: ConnId,
        msg: ClientMessage<'a>,
    },
    /// A connection ended; `backlog` are the frames queued to it and never written, in order,
    /// `truncated` that some were dropped already (see [`Hub::handle_disconnect_with_backlog`]).
    Disconnect {
        conn: ConnId,
        backlog: Vec<Frame>,
        truncated: bool,
    },
    /// Cluster: a join into this stored room is about to ask the directory (see
    /// [`Hub::begin_cluster_join`]); the room is remembered, to be put back if the directory
    /// loses it.
    Admitting(Room),
    /// Cluster: the directory's answer to the join begun with [`Input::Admitting`]: to a new
    /// peer (`resume: None`) or to a claim of the session `resume`. `None`: the directory
    /// could not be asked. See [`Handled::Admitted`].
    Admission {
        room: RoomId,
        resume: Option<ResumeCredentials>,
        answer: Option<DirAnswer>,
    },
    /// Cluster: an event from another node.
    RoomEvent {
        room: RoomId,
        ver: u64,
        event: RoomEvent,
    },
    /// Cluster: the directory's view of a room: its version, the peers of other nodes, and
    /// those it places here (see [`Hub::handle_room_snapshot_with`]).
    Snapshot {
        room: RoomId,
        ver: u64,
        peers: Vec<RemotePeer>,
        here: Vec<PeerId>,
    },
    /// The room was deleted or expired.
    RoomClosed {
        room: RoomId,
        reason: RoomClosedReason,
    },
    /// Cluster: a peer of this node left for good elsewhere while this node was cut off.
    PeerGone { room: RoomId, peer: PeerId },
    /// The app's backend removes a peer (see [`Hub::handle_kick`]): from the API of this
    /// node, or (cluster) of another one that found it here. [`Handled::Kicked`].
    Kick { room: RoomId, peer: PeerId },
    /// A message from the app's backend to peers of this node (see
    /// [`Hub::handle_server_message`]); `to: None`, to every one of them in the room.
    /// [`Handled::ServerSent`].
    ServerMessage {
        room: RoomId,
        to: Option<Vec<PeerId>>,
        msg_type: &'a str,
        data: &'a bluecam_proto::RawValue,
        epoch: u64,
    },
    /// Cluster: something the shell noticed (a reconnection, a failed command, ...).
    Signal(Signal),
    /// Cluster: how a step of [`Output::Directory`] ended.
    StepDone(Done),
    /// Time passed: expire what is due, start the steps that are due.
    Timeout,
}

/// The directory's answer to an admission.
#[derive(Debug)]
pub enum DirAnswer {
    Join(JoinReply),
    Claim(ClaimReply),
}

/// What an input answers, beside the outputs.
#[derive(Debug)]
pub enum Handled {
    Nothing,
    /// [`Input::Join`]: the peer admitted, or why not.
    Joined(Result<PeerId, JoinRejected>),
    /// [`Input::Admission`]: the room as the cluster sees it for the join (`None`: the node
    /// resumes a session it holds on its own), or the error to refuse the join with (the join
    /// is no longer pending then).
    Admitted(Result<Option<ClusterView>, JoinRejected>),
    /// [`Input::Snapshot`]: false when it was older than the replica and skipped (read another).
    Snapshot {
        applied: bool,
    },
    /// [`Input::Kick`]: whether this node held the peer (and removed it).
    Kicked(bool),
    /// [`Input::ServerMessage`]: the peers it went to.
    ServerSent(Vec<PeerId>),
}

/// See the module doc.
#[derive(Debug)]
pub struct Node {
    hub: Hub,
    cluster: Option<ClusterNode>,
}

impl Node {
    /// A single node, or (with `cluster`) a node of a cluster.
    pub fn new(hub: Hub, cluster: Option<ClusterNode>) -> Self {
        Self { hub, cluster }
    }

    /// The room core, to read (every change goes through [`Node::handle`]).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The control loop, to read; `None` on a single node.
    pub fn cluster(&self) -> Option<&ClusterNode> {
        self.cluster.as_ref()
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> Option<&NodeId> {
        self.cluster.as_ref().map(ClusterNode::node)
    }

    pub fn stats(&self) -> HubStats {
        self.hub.stats()
    }

    /// Takes in one input at `now`.
    pub fn handle(&mut self, input: Input<'_>, now: Instant) -> Handled {
        let handled = match input {
            Input::Restore(session) => {
                self.hub.restore(session, now);
                Handled::Nothing
            }
            Input::Join(req) => Handled::Joined(self.hub.handle_join(req)),
            Input::Message { conn, msg } => {
                self.hub.handle_message(conn, msg);
                Handled::Nothing
            }
            Input::Disconnect {
                conn,
                backlog,
                truncated,
            } => {
                self.hub
                    .handle_disconnect_with_backlog(conn, now, backlog, truncated);
                Handled::Nothing
            }
            Input::Admitting(room) => {
                if let Some(c) = &mut self.cluster {
                    c.remember_room(&room);
                }
                self.hub.begin_cluster_join(&room.id);
                Handled::Nothing
            }
            Input::Admission {
                room,
                resume,
                answer,
            } => {
                let admitted = self.admission(resume.as_ref(), answer, now);
                if admitted.is_err() {
                    self.hub.end_cluster_join(&room);
                }
                Handled::Admitted(admitted)
            }
            Input::RoomEvent { room, ver, event } => {
                self.hub.handle_room_event(&room, ver, event);
                Handled::Nothing
            }
            Input::Snapshot {
                room,
                ver,
                peers,
                here,
            } => Handled::Snapshot {
                applied: self.hub.handle_room_snapshot_with(&room, ver, peers, &here),
            },
            Input::RoomClosed { room, reason } => {
                self.hub.handle_room_closed(&room, reason);
                Handled::Nothing
            }
            Input::PeerGone { room, peer } => {
                self.hub.handle_peer_gone(&room, &peer);
                Handled::Nothing
            }
            Input::Kick { room, peer } => Handled::Kicked(self.hub.handle_kick(&room, &peer)),
            Input::ServerMessage {
                room,
                to,
                msg_type,
                data,
                epoch,
            } => Handled::ServerSent(self.hub.handle_server_message(
                &room,
                to.as_deref(),
                msg_type,
                data,
                epoch,
            )),
            Input::Signal(signal) => {
                if let Some(c) = &mut self.cluster {
                    c.signal(signal, now);
                }
                Handled::Nothing
            }
            Input::StepDone(done) => {
                if let Some(c) = &mut self.cluster {
                    let mut rooms = self.hub.local_rooms();
                    rooms.extend(self.hub.joining_rooms().cloned());
                    rooms.sort();
                    rooms.dedup();
                    c.done(done, now, &rooms, self.hub.joining_rooms().next().is_some());
                }
                Handled::Nothing
            }
            Input::Timeout => {
                self.hub.handle_timeout(now);
                Handled::Nothing
            }
        };
        self.poll_steps(now);
        handled
    }

    /// The control loop's steps that are due, queued as outputs after the room core's.
    fn poll_steps(&mut self, now: Instant) {
        let Some(c) = &mut self.cluster else {
            return;
        };
        while let Some(step) = c.poll_step(now) {
            self.hub.push_output(Output::Directory(step));
        }
    }

    /// What the directory's answer (`None`: it could not be asked) means for a join or, with
    /// `resume`, a claim.
    fn admission(
        &mut self,
        resume: Option<&ResumeCredentials>,
        answer: Option<DirAnswer>,
        now: Instant,
    ) -> Result<Option<ClusterView>, JoinRejected> {
        let Some(cluster) = &mut self.cluster else {
            // A single node is its own directory.
            return Ok(None);
        };
        if answer.is_none() {
            // Out of step with a directory that did not answer: resync once it does.
            cluster.signal(Signal::Failed, now);
        }
        let node = cluster.node().clone();
        let held = |s: &SessionId| self.hub.has_session(s);
        match (resume, answer) {
            (None, Some(DirAnswer::Join(JoinReply::Joined { view, replaced }))) => {
                Ok(Some(view.joined(&node, replaced)))
            }
            (None, Some(DirAnswer::Join(JoinReply::Full))) => Err(JoinRejected::RoomFull),
            (None, Some(DirAnswer::Join(JoinReply::Gone))) => Err(JoinRejected::RoomClosed),
            (Some(creds), Some(DirAnswer::Claim(ClaimReply::Claimed { session, view }))) => view
                .claimed(&node, creds.session.clone(), session)
                .map(Some)
                .ok_or(JoinRejected::DirectoryUnavailable),
            (Some(_), Some(DirAnswer::Claim(ClaimReply::Unauthorized))) => {
                Err(JoinRejected::Unauthorized)
            }
            // Recorded on this node: the core resumes it (held here, or once this node's own
            // earlier claim of it is handled; if it expired here, the core says so).
            (Some(_), Some(DirAnswer::Claim(ClaimReply::Here))) => Ok(None),
            // Claimed even when this node holds the session (the directory may have moved it
            // away meanwhile, a move this node has not heard of yet): when the directory has
            // nothing to move, is being rebuilt, or cannot be asked, a session held here is
            // resumed here.
            (
                Some(creds),
                None | Some(DirAnswer::Claim(ClaimReply::Expired | ClaimReply::Rebuilding)),
            ) if held(&creds.session) => Ok(None),
            // While the directory is being rebuilt (it lost its data a moment ago), the node
            // holding the session may not have put it back yet: retry, do not end a session
            // that exists.
            (Some(_), Some(DirAnswer::Claim(ClaimReply::Expired)))
                if cluster.recently_rebuilt(now) =>
            {
                Err(JoinRejected::DirectoryUnavailable)
            }
            // Gone from the directory and not held here. (Not left to the core: a node the
            // session was once handed over from would answer "overtaken, retry" for ever.)
            (Some(_), Some(DirAnswer::Claim(ClaimReply::Expired))) => {
                Err(JoinRejected::SessionExpired)
            }
            _ => Err(JoinRejected::DirectoryUnavailable),
        }
    }

    /// Whether a room the store does not have may be missing because the directory lost its
    /// data (a join should retry) rather than because it was deleted: see
    /// [`ClusterNode::directory_lost`]. Always false on a single node.
    pub fn directory_lost(&self, current: Option<&str>, marked: bool, now: Instant) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.directory_lost(current, marked, now))
    }

    /// The next output to carry out. A frame for peers the room does not know marks the
    /// cluster node out of step (its replica may have missed their joins) as it goes out.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.hub.poll_output()?;
        if let (Output::UnknownPeers { .. }, Some(c)) = (&out, &mut self.cluster) {
            c.mark_out_of_step();
        }
        Some(out)
    }

    /// When to send [`Input::Timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let cluster = self.cluster.as_ref().map(ClusterNode::poll_timeout);
        match (self.hub.poll_timeout(), cluster) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Checks the invariants of both machines (for tests).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.hub.check_invariants()?;
        self.cluster
            .as_ref()
            .map_or(Ok(()), ClusterNode::check_invariants)
    }
}

/// The seat the directory gave a connection (a new peer, or a session claimed here): the
/// peer, its session, and the reason it leaves with if the core refuses the join after all.
pub fn seat_given(
    view: Option<&ClusterView>,
    fresh_peer: &PeerId,
    fresh_session: &SessionId,
    resuming: bool,
) -> Option<(PeerId, SessionId, LeaveReason)> {
    match (view, resuming) {
        (Some(_), false) => Some((fresh_peer.clone(), fresh_session.clone(), LeaveReason::Left)),
        (Some(view), true) => view
            .claimed
            .as_ref()
            .map(|c| (c.info.id.clone(), c.session.clone(), LeaveReason::Timeout)),
        (None, _) => None,
    }
}

/// Whether a seat the directory gave (see [`seat_given`]) must be taken back out of the
/// directory after the core refused the join: a new peer's always; a claimed session's when
/// it ended here (one overtaken by another node's claim is that node's now, and may be an
/// orphan any node could remove).
pub fn seat_to_remove(
    seat: Option<(PeerId, SessionId, LeaveReason)>,
    rejected: JoinRejected,
) -> Option<(PeerId, SessionId, LeaveReason)> {
    seat.filter(|(_, _, reason)| {
        *reason == LeaveReason::Left || rejected == JoinRejected::SessionExpired
    })
}
