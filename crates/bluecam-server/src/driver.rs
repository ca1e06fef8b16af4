//! [`Driver`]: the driver of this node's state machine ([`bluecam_core::Node`]: the room core
//! and, in a cluster, the control loop). It owns the node and the outbound queue of every
//! joined connection, behind one mutex: every routing decision needs both, each critical
//! section is one input to the node, a few map lookups and non-blocking queue pushes, and it
//! is never held across an `.await`. Every change to the node is an [`Input`] given to
//! [`Driver::handle`] (or one of the methods around it that add what the server keeps beside
//! the node: session records, history); the driver then carries out the node's outputs:
//! frames into connection queues, frames and removals to the other nodes ([`Broker`]), and the
//! directory steps of the control loop to the cluster's shell (`directory::redis`), whose
//! results come back as inputs.

use crate::{
    directory::{Broker, Outgoing},
    metrics::{DropReason, Metrics},
    persist::history::{self, Recorder},
    persist::store::{SessionLog, StoredSession},
};
use bluecam_core::{
    ConnId, CoreConfig, Frame, Handled, Hub, HubStats, Input, JoinRejected, JoinRequest, LocalPeer,
    Node, Output, RestoredSession,
    cluster::{ClusterNode, Signal, Step},
};
use bluecam_proto::{
    ClientMessage, CloseCode, ErrorFrame, PeerId, PeerInfo, RoomClosedReason, RoomId, ServerMessage,
};
use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};
use tokio::sync::{Notify, mpsc, oneshot};
use tungstenite::Utf8Bytes;

/// What the driver hands a connection task to write.
#[derive(Debug)]
pub enum Outbound {
    /// A frame; `resumable` ones are kept for the peer if the connection ends unwritten.
    Frame { text: Utf8Bytes, resumable: bool },
    /// Close after the frames before it.
    Close(CloseCode),
}

/// State shared between the driver and one connection task.
#[derive(Debug, Default)]
pub struct ConnShared {
    /// The connection's id (kept here rather than in its task, whose every byte counts).
    pub conn: ConnId,
    /// Bytes queued and not yet written; bounded by `outbound_queue_bytes`.
    pub queued_bytes: AtomicUsize,
    /// Set (with `kill`) when the driver drops the connection out of band: slow consumer.
    kill_code: AtomicU16,
    /// Set when the connection task starts serving (writing its queue): until then the client
    /// could not have read anything, so the byte bound allows it a resume buffer's worth more
    /// (a resumed connection's task may be held up while live frames queue behind its replay).
    pub writing: AtomicBool,
    /// Set by the driver's ping round ([`Driver::ping_round`]): the connection's turn to ping
    /// its client and check that it was heard from lately.
    ping_due: AtomicBool,
    /// What the driver hands the connection task to write, in order. Its signal also tells
    /// the task of a kill, so that the task waits on one thing for both.
    pub queue: Outq,
}

/// What a connection task does next ([`ConnShared::next`]).
#[derive(Debug)]
pub enum Next {
    /// Writes this.
    Out(Outbound),
    /// Ends now, with this code (out of band: a slow consumer, a close whose queue was full,
    /// the server's shutdown).
    Killed(CloseCode),
    /// Ends: the driver let go of it, and everything queued was taken.
    Closed,
    /// Pings its client, and ends if it was not heard from within the idle timeout.
    Ping,
}

impl ConnShared {
    /// The close code the driver asked for, if any.
    pub fn kill_code(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.kill_code.load(Ordering::Acquire))
    }

    /// Ends the connection out of band with `code`.
    fn kill(&self, code: CloseCode) {
        self.kill_code.store(code.code(), Ordering::Release);
        self.queue.waker.wake();
    }

    /// The next thing for the connection task: a kill first, then its turn to ping, then what
    /// is queued, in order. `Pending` registers the task to be woken by the next of them.
    pub fn poll_next(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Next> {
        use std::task::Poll;
        // Registered before looking: whatever comes after the looks wakes the task.
        self.queue.waker.register(cx.waker());
        if let Some(code) = self.kill_code() {
            return Poll::Ready(Next::Killed(code));
        }
        // (Read before it is swapped: the swap is a write, and this runs once per batch.)
        if self.ping_due.load(Ordering::Acquire) && self.ping_due.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Next::Ping);
        }
        if let Some(out) = self.queue.try_pop() {
            return Poll::Ready(Next::Out(out));
        }
        if self.queue.closed.load(Ordering::Acquire) {
            // (A push may have raced the close check above.)
            return Poll::Ready(self.queue.try_pop().map_or(Next::Closed, Next::Out));
        }
        Poll::Pending
    }

    /// A kill (looked for while a write waits for the socket); what is queued stays queued.
    pub fn poll_killed(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<CloseCode> {
        self.queue.waker.register(cx.waker());
        match self.kill_code() {
            Some(code) => std::task::Poll::Ready(code),
            None => std::task::Poll::Pending,
        }
    }
}

/// A connection's outbound queue: bounded, one writer (the driver, under its lock) and one
/// reader (the connection task), and no memory held while it is empty. (A `tokio` channel
/// keeps a block of 32 slots from its creation, and a second once it has wrapped: 1.3 KB per
/// connection, idle or not, measured in BENCHMARKS.md.)
#[derive(Debug, Default)]
pub struct Outq {
    frames: Mutex<VecDeque<Outbound>>,
    /// Wakes the connection's task, the queue's one reader (for a frame, a kill, its turn to
    /// ping or the close).
    waker: futures_util::task::AtomicWaker,
    /// The driver let go of the connection: nothing more comes.
    closed: AtomicBool,
}

/// Slots an emptied queue keeps while the connection is busy (more are given back at once:
/// a burst, such as a `joined` or a replay, is over); an idle one gives back all
/// ([`Outq::trim`]). Giving back less often than every batch spares the allocator a round
/// trip per batch under load.
const OUTQ_KEEP: usize = 16;

impl Outq {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Outbound>> {
        self.frames.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `out` unless `cap` frames are queued already (or the queue is closed).
    pub(crate) fn try_push(&self, out: Outbound, cap: usize) -> Result<(), Outbound> {
        let mut frames = self.lock();
        if frames.len() >= cap || self.closed.load(Ordering::Acquire) {
            return Err(out);
        }
        frames.push_back(out);
        drop(frames);
        self.waker.wake();
        Ok(())
    }

    /// Nothing more comes after what is queued.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Gives all room back if nothing is queued (the connection task calls it when it has been
    /// idle for a while).
    pub fn trim(&self) {
        let mut frames = self.lock();
        if frames.is_empty() {
            frames.shrink_to_fit();
        }
    }

    /// The next frame, if one is queued.
    pub fn try_pop(&self) -> Option<Outbound> {
        let mut frames = self.lock();
        let out = frames.pop_front();
        if frames.is_empty() && frames.capacity() > OUTQ_KEEP {
            // A burst (a `joined`, a replay) is over: give its room back.
            frames.shrink_to(OUTQ_KEEP);
        }
        out
    }
}

#[derive(Debug)]
struct ConnTx {
    shared: Arc<ConnShared>,
    /// Set once the connection overflowed: frames for it wait here, after those in its queue,
    /// until its task ends and hands both to the core's resume buffer.
    /// (Boxed: few connections overflow, and every connection has an entry in the driver's
    /// map.)
    spill: Option<Box<Spill>>,
    /// Bytes replayed to it when it resumed: its queue may hold that much on top of the
    /// usual bound, so live frames arriving behind a large replay do not count the replay
    /// against it (a resume must not overflow before the client could read a frame).
    replayed: usize,
}

/// Frames for a connection being dropped as a slow consumer, bounded like a resume buffer.
#[derive(Debug, Default)]
struct Spill {
    frames: Vec<Utf8Bytes>,
    bytes: usize,
    /// A frame did not fit: the session cannot be resumed without a gap, so it will end.
    truncated: bool,
}

#[derive(Debug)]
struct Inner {
    node: Node,
    /// (foldhash: looked up for every frame delivered; see the core's maps.)
    conns: std::collections::HashMap<ConnId, ConnTx, foldhash::fast::RandomState>,
}

/// Cluster: the node's identity in the cluster and where the steps of its control loop go.
#[derive(Debug)]
pub struct ClusterPart {
    pub node: ClusterNode,
    /// To the shell that carries the steps out against the directory
    /// (`directory::redis::RedisBroker::start`): at most two are in flight at a time (a
    /// heartbeat and one other, see `bluecam_core::cluster`).
    pub steps: mpsc::UnboundedSender<Step>,
}

/// Cheap to clone; all clones share one node.
#[derive(Clone, Debug)]
pub struct Driver {
    inner: Arc<Mutex<Inner>>,
    /// Where the control loop's steps go (a cluster).
    steps: Option<mpsc::UnboundedSender<Step>>,
    /// Woken when the node's next deadline may have moved earlier (a step ended).
    rescheduled: Arc<Notify>,
    next_conn: Arc<AtomicU64>,
    queue_bytes: usize,
    queue_frames: usize,
    spill_frames: usize,
    spill_bytes: usize,
    metrics: Metrics,
    /// The other nodes (a no-op on a single node).
    broker: Arc<dyn Broker>,
    /// Single node: where sessions are made durable (a cluster keeps them in Redis).
    sessions: Option<SessionLog>,
    /// Where sessions, calls and webhook events are recorded (history.rs).
    history: Option<Recorder>,
}

/// Rooms whose last peer left during a call; the caller records it in the store.
pub type Vacated = Vec<RoomId>;

/// Resolves once a new session's record is committed (or could not be).
pub type Persisted = oneshot::Receiver<crate::persist::store::Committed>;

impl Driver {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: CoreConfig,
        cluster: Option<ClusterPart>,
        queue_bytes: usize,
        queue_frames: usize,
        metrics: Metrics,
        broker: Arc<dyn Broker>,
        sessions: Option<SessionLog>,
        history: Option<Recorder>,
    ) -> Self {
        let (machine, steps) = match cluster {
            Some(c) => (Some(c.node), Some(c.steps)),
            None => (None, None),
        };
        Self {
            sessions,
            history,
            steps,
            rescheduled: Arc::new(Notify::new()),
            spill_frames: core.resume_buffer_frames,
            spill_bytes: core.resume_buffer_bytes,
            inner: Arc::new(Mutex::new(Inner {
                node: Node::new(Hub::new(core), machine),
                conns: Default::default(),
            })),
            next_conn: Arc::new(AtomicU64::new(1)),
            queue_bytes,
            queue_frames: queue_frames.max(1),
            metrics,
            broker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in the core; the state is still the
        // best we have, so keep serving rather than poison every connection.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Gives slice `slice` of `slices` of the connections its turn to ping (each connection is
    /// in one slice, by its id). One timer for the node instead of one per connection: an idle
    /// connection holds no timer, and a round spreads the pings over the interval.
    pub fn ping_round(&self, slice: u64, slices: u64) {
        for (conn, c) in &self.lock().conns {
            if conn.0 % slices == slice {
                c.shared.ping_due.store(true, Ordering::Release);
                c.shared.queue.waker.wake();
            }
        }
    }

    /// Ends every connection with `code` (the server's shutdown: 1012). A connection that
    /// registers afterwards sees the shutdown itself (`conn::run` looks once its registration is
    /// in).
    pub fn kill_all(&self, code: CloseCode) {
        for c in self.lock().conns.values() {
            // (A code asked for before, a slow consumer's, stays.)
            let _ = c.shared.kill_code.compare_exchange(
                0,
                code.code(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            c.shared.queue.waker.wake();
        }
    }

    /// Gives a new connection its id and outbound queue (`ConnShared::queue`).
    pub fn register(&self) -> (ConnId, Arc<ConnShared>) {
        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let shared = Arc::new(ConnShared {
            conn,
            ..ConnShared::default()
        });
        self.lock().conns.insert(
            conn,
            ConnTx {
                shared: Arc::clone(&shared),
                spill: None,
                replayed: 0,
            },
        );
        (conn, shared)
    }

    /// Frames a queue may hold: a full queue of live frames plus a whole resume replay.
    fn queue_cap(&self) -> usize {
        self.queue_frames + self.spill_frames + 1
    }

    /// Puts back the sessions a restart read from the store (before any connection), each
    /// with a full resume window from now.
    pub fn restore(&self, sessions: impl IntoIterator<Item = RestoredSession>) -> usize {
        let now = Instant::now();
        let mut inner = self.lock();
        let mut n = 0;
        for s in sessions {
            inner.node.handle(Input::Restore(s), now);
            n += 1;
        }
        let stats = inner.node.stats();
        self.set_gauges(stats);
        n
    }

    /// Admits a verified join. Also returns rooms vacated by sessions that expired first, and
    /// (single node, new session) when the session is durable: `joined` must wait for it.
    pub fn join(
        &self,
        req: JoinRequest,
    ) -> (Result<PeerId, JoinRejected>, Vacated, Option<Persisted>) {
        let resuming = req.resume.is_some();
        let now = Instant::now();
        // What the session record needs, taken before the core consumes the request.
        let record = match (&self.sessions, resuming) {
            (Some(_), false) => Some(StoredSession {
                room: req.room.summary.id.clone(),
                info: PeerInfo {
                    id: req.fresh.peer.clone(),
                    identity: req.identity.clone(),
                    name: req.name.clone(),
                    metadata: req.metadata.clone(),
                },
                permissions: req.permissions,
                session: req.fresh.session.clone(),
                secret_digest: req.fresh.secret_digest(),
            }),
            _ => None,
        };
        // What the history needs of a fresh session, or the session a resume continues.
        let opened = (!resuming).then(|| history::Event::Opened {
            room: req.room.summary.id.clone(),
            session: req.fresh.session.clone(),
            peer: req.fresh.peer.clone(),
            identity: req.identity.clone(),
            name: req.name.clone(),
            at_ms: history::now_ms(),
        });
        let resumed = req
            .resume
            .as_ref()
            .map(|r| (req.room.summary.id.clone(), r.session.clone()));
        let mut inner = self.lock();
        // Expire due sessions first, so a resume that arrives after its window (but before the
        // timer task's next tick) fails as it should.
        inner.node.handle(Input::Timeout, now);
        // (Their outputs first: the history hears of sessions that expired before this join.)
        let mut vacated = self.drain(&mut inner);
        let conn = req.conn;
        let Handled::Joined(result) = inner.node.handle(Input::Join(req), now) else {
            unreachable!("a join is answered with Joined")
        };
        if let (Some(recorder), Ok(_)) = (&self.history, &result) {
            // Before the outputs: a seat taken over (the old session's end is among them)
            // keeps its call going rather than ending it and starting another.
            match (opened, resumed) {
                (Some(event), _) => recorder.record(event),
                (None, Some((room, session))) => recorder.record(history::Event::Attached {
                    room,
                    session,
                    at_ms: history::now_ms(),
                }),
                (None, None) => {}
            }
        }
        // Queued under the lock, so the removal of this session (queued by whatever ends it)
        // can only come after the insert.
        let persisted = match (&self.sessions, record, &result) {
            (Some(log), Some(record), Ok(_)) => Some(log.insert(record)),
            _ => None,
        };
        vacated.extend(self.drain_with(&mut inner, Some(conn)));
        if result.is_ok() {
            if resuming {
                self.metrics.resumes.increment(1);
            } else {
                self.metrics.joins.increment(1);
            }
        }
        (result, vacated, persisted)
    }

    /// Routes one frame of a joined connection, read at `now`.
    pub fn message(&self, conn: ConnId, msg: ClientMessage<'_>, now: Instant) -> Vacated {
        let mut inner = self.lock();
        inner.node.handle(Input::Message { conn, msg }, now);
        self.drain(&mut inner)
    }

    /// Gives the node one input and carries out what it decided (the cluster's shell feeds
    /// the node through here: events from other nodes, snapshots, signals, steps done). Rooms
    /// these vacate are not noted for `emptyTimeoutSecs` here: the peers they remove are
    /// other nodes' (noted there), or of a room that is gone.
    pub fn handle(&self, input: Input<'_>) -> Handled {
        let step_done = matches!(input, Input::StepDone(_));
        let mut inner = self.lock();
        let handled = inner.node.handle(input, Instant::now());
        self.drain(&mut inner);
        drop(inner);
        if step_done {
            // The next heartbeat may be due before the timer task's wake-up.
            self.rescheduled.notify_one();
        }
        handled
    }

    /// Woken when the node's next deadline may have moved earlier.
    pub fn rescheduled(&self) -> &Notify {
        &self.rescheduled
    }

    /// The connection task is ending: forget its queue; its peer (if still joined) becomes
    /// resumable. The frame whose write was interrupted, the frames still queued for it (never
    /// written), then those spilled after it overflowed, are taken back under the lock (so none can slip in meanwhile) and kept first
    /// in its resume buffer, in order.
    pub fn disconnect(
        &self,
        conn: ConnId,
        now: Instant,
        unsent: Vec<Outbound>,
        queue: &Outq,
    ) -> Vacated {
        let mut inner = self.lock();
        queue.close();
        let spill = inner
            .conns
            .remove(&conn)
            .and_then(|c| c.spill)
            .unwrap_or_default();
        let mut backlog = Vec::new();
        // The frames taken from the queue but never written come first (the HTTP transport's
        // never polled, then the one whose write was interrupted), then the queue, then the
        // spill.
        let mut unsent = unsent.into_iter();
        while let Some(out) = unsent.next().or_else(|| queue.try_pop()) {
            if let Outbound::Frame {
                text,
                resumable: true,
            } = out
            {
                backlog.push(text);
            }
        }
        backlog.extend(spill.frames);
        let backlog = backlog
            .into_iter()
            .filter_map(|t| bluecam_core::Frame::from_text(bytes::Bytes::from(t)))
            .collect();
        // The history hears that the session is no longer connected (before whatever the
        // disconnection ends: its end comes after).
        if let Some(recorder) = &self.history
            && let Some((room, session)) = inner.node.hub().session_of(conn)
        {
            recorder.record(history::Event::Detached {
                room,
                session,
                at_ms: history::now_ms(),
            });
        }
        let input = Input::Disconnect {
            conn,
            backlog,
            truncated: spill.truncated,
        };
        inner.node.handle(input, now);
        self.drain(&mut inner)
    }

    /// Cluster: whether a join into `room` is waiting for the directory.
    pub fn has_pending_join(&self, room: &RoomId) -> bool {
        self.lock().node.hub().has_pending_join(room)
    }

    /// Cluster: whether a room the store lacks may be on its way back (see
    /// `Node::directory_lost`), given the directory's epoch and rebuild mark as just read.
    pub fn directory_lost(&self, current: Option<&str>, marked: bool) -> bool {
        self.lock()
            .node
            .directory_lost(current, marked, Instant::now())
    }

    /// This node's peers (to re-register them with the directory).
    pub fn local_peers(&self) -> Vec<LocalPeer> {
        self.lock().node.hub().local_peers()
    }

    /// Rooms with peers on this node.
    pub fn local_rooms(&self) -> Vec<RoomId> {
        self.lock().node.hub().local_rooms()
    }

    /// Cluster: something for another node could not be sent. A frame's sender is told which
    /// peers did not get it.
    pub fn undelivered(&self, item: Outgoing) {
        match item {
            Outgoing::Frame {
                to,
                origin: Some(origin),
                ..
            } => {
                self.metrics.dropped(DropReason::ClusterFrameUnsent, 1);
                let mut inner = self.lock();
                self.tell(
                    &mut inner,
                    origin.conn,
                    crate::directory::unsent_error(to, origin.reference),
                );
            }
            Outgoing::Frame { origin: None, .. } => {
                self.metrics.dropped(DropReason::ClusterHandOverUnsent, 1);
            }
            Outgoing::Removed { .. } => {
                self.metrics.dropped(DropReason::ClusterRemovalUnsent, 1);
            }
        }
    }

    /// Queues an error frame to one connection.
    fn tell(&self, inner: &mut Inner, conn: ConnId, error: ErrorFrame) {
        self.metrics.error(error.code);
        let frame = Frame::new(&ServerMessage::Error(error));
        let len = frame.len();
        if let (Some(c), Ok(text)) = (
            inner.conns.get_mut(&conn),
            Utf8Bytes::try_from(bytes::Bytes::from(frame)),
        ) {
            let cap = self.byte_cap(c);
            self.enqueue(c, &text, false, len, cap);
        }
    }

    /// The bytes a connection's queue may hold: the configured bound, plus what it was
    /// replayed when it resumed (a replay does not count against it), plus, until its task
    /// starts writing, a resume buffer's worth (it could not have read anything yet).
    fn byte_cap(&self, c: &ConnTx) -> usize {
        let waiting = if c.shared.writing.load(Ordering::Acquire) {
            0
        } else {
            self.spill_bytes
        };
        self.queue_bytes
            .saturating_add(c.replayed)
            .saturating_add(waiting)
    }

    /// Tells everyone in the room and disconnects them.
    pub fn close_room(&self, room: &RoomId, reason: RoomClosedReason) {
        let mut inner = self.lock();
        let input = Input::RoomClosed {
            room: room.clone(),
            reason,
        };
        inner.node.handle(input, Instant::now());
        if let Some(recorder) = &self.history {
            // This node's sessions in it end (the room.deleted event is its deleter's).
            recorder.record(history::Event::RoomClosedHere {
                room: room.clone(),
                at_ms: history::now_ms(),
            });
        }
        self.drain(&mut inner);
    }

    /// Hands a message of the app's backend (`body`: `{"type", "data"}`) to this node's peers
    /// `to` of `room` (`None`: every one of them): the peers it went to, and the rooms left
    /// empty (by a peer ended for leaving too many unacknowledged).
    pub fn server_message(
        &self,
        room: &RoomId,
        to: Option<Vec<PeerId>>,
        body: &bluecam_proto::RawValue,
    ) -> (Vec<PeerId>, Vacated) {
        let Ok(parsed) = serde_json::from_str::<bluecam_proto::ServerMessageBody<'_>>(body.get())
        else {
            tracing::warn!(room = %room, "a backend message without type and data: dropped");
            return (Vec::new(), Vacated::default());
        };
        let mut inner = self.lock();
        let input = Input::ServerMessage {
            room: room.clone(),
            to,
            msg_type: &parsed.msg_type,
            data: parsed.data,
            epoch: server_epoch(),
        };
        let sent = match inner.node.handle(input, Instant::now()) {
            Handled::ServerSent(sent) => sent,
            _ => Vec::new(),
        };
        (sent, self.drain(&mut inner))
    }

    /// Removes a peer of this node for the app's backend (`Input::Kick`): whether it was
    /// here, and the rooms it left empty.
    pub fn kick(&self, room: &RoomId, peer: &PeerId) -> (bool, Vacated) {
        let mut inner = self.lock();
        let input = Input::Kick {
            room: room.clone(),
            peer: peer.clone(),
        };
        let found = matches!(
            inner.node.handle(input, Instant::now()),
            Handled::Kicked(true)
        );
        (found, self.drain(&mut inner))
    }

    /// Ends expired sessions; returns vacated rooms and when to call again.
    pub fn tick(&self, now: Instant) -> (Vacated, Option<Instant>) {
        let mut inner = self.lock();
        inner.node.handle(Input::Timeout, now);
        let vacated = self.drain(&mut inner);
        let stats = inner.node.stats();
        let next = inner.node.poll_timeout();
        drop(inner);
        self.set_gauges(stats);
        (vacated, next)
    }

    /// Peers of a room with whether each is connected right now.
    pub fn peers(&self, room: &RoomId) -> Vec<(PeerInfo, bool)> {
        self.lock().node.hub().peer_presence(room)
    }

    pub fn peer_count(&self, room: &RoomId) -> usize {
        self.lock().node.hub().peer_count(room)
    }

    /// Refreshes the room and peer gauges.
    pub fn stats(&self) -> HubStats {
        let stats = self.lock().node.stats();
        self.set_gauges(stats);
        stats
    }

    fn set_gauges(&self, stats: HubStats) {
        self.metrics.rooms.set(stats.rooms as f64);
        self.metrics.peers.set(stats.peers as f64);
        self.metrics.detached_peers.set(stats.detached as f64);
    }

    /// Carries out the core's outputs. A connection whose queue is full is dropped as a slow
    /// consumer: its task is woken to close the socket, and until it has, frames for it are
    /// spilled (bounded) for its resume buffer, so no other connection ever waits for it and
    /// nothing addressed to it is lost silently.
    fn drain(&self, inner: &mut Inner) -> Vacated {
        self.drain_with(inner, None)
    }

    /// [`Self::drain`], where frames to `replay_to` (a connection that just resumed) do not
    /// count against the queue's byte bound: a replay is bounded by the resume buffer already,
    /// and must not overflow the new connection before it could read anything.
    fn drain_with(&self, inner: &mut Inner, replay_to: Option<ConnId>) -> Vacated {
        let mut vacated = Vec::new();
        while let Some(output) = inner.node.poll_output() {
            match output {
                Output::Deliver { conns, frame } => {
                    let len = frame.len();
                    let resumable = frame.resumable();
                    let Ok(text) = Utf8Bytes::try_from(bytes::Bytes::from(frame)) else {
                        tracing::error!("core produced a frame that is not UTF-8");
                        continue;
                    };
                    for conn in conns {
                        if let Some(c) = inner.conns.get_mut(&conn) {
                            let cap = if Some(conn) == replay_to {
                                c.replayed += len;
                                usize::MAX
                            } else {
                                self.byte_cap(c)
                            };
                            self.enqueue(c, &text, resumable, len, cap);
                        }
                    }
                }
                Output::Close { conn, code } => {
                    if let Some(c) = inner.conns.remove(&conn) {
                        let queue = &c.shared.queue;
                        if c.spill.is_some()
                            || queue
                                .try_push(Outbound::Close(code), self.queue_cap())
                                .is_err()
                        {
                            // The queue is full or gone: close at once instead of after it.
                            c.shared.kill(code);
                        }
                        // The driver lets go of it: nothing more comes after the close.
                        queue.close();
                    }
                }
                Output::RoomVacated { room } => vacated.push(room),
                Output::ResumeBufferOverflow { room, peer } => {
                    tracing::info!(%room, %peer, "resume buffer overflowed; session ended");
                    self.metrics.resume_buffer_overflows.increment(1);
                }
                Output::Publish {
                    node,
                    room,
                    to,
                    frame,
                    origin,
                } => {
                    let item = Outgoing::Frame {
                        node,
                        room,
                        to,
                        frame,
                        origin,
                    };
                    match self.broker.send(item) {
                        Ok(()) => {}
                        // The outbox is full or gone: the sender learns at once.
                        Err(Outgoing::Frame {
                            to,
                            origin: Some(origin),
                            ..
                        }) => {
                            self.metrics.dropped(DropReason::ClusterFrameUnsent, 1);
                            let e = crate::directory::unsent_error(to, origin.reference);
                            self.tell(inner, origin.conn, e);
                        }
                        // A moved peer's frames handed to its new node: lost to that peer
                        // (its senders see a gap), never silently.
                        Err(_) => self.metrics.dropped(DropReason::ClusterHandOverUnsent, 1),
                    }
                }
                Output::PeerRemoved {
                    room,
                    peer,
                    session,
                    reason,
                    detached_at,
                } => {
                    if let Some(log) = &self.sessions {
                        log.remove(session.clone());
                    }
                    if let Some(recorder) = &self.history {
                        recorder.record(history::Event::Closed {
                            room: room.clone(),
                            session: session.clone(),
                            reason: leave_reason(reason),
                            at_ms: history::now_ms(),
                            detached_at_ms: detached_at.map(history::instant_ms),
                        });
                    }
                    let item = Outgoing::Removed {
                        room,
                        peer,
                        session,
                        reason,
                    };
                    if self.broker.send(item).is_err() {
                        // Repaired when the node next re-registers its peers (the resync
                        // removes the entry this node no longer holds).
                        self.metrics.dropped(DropReason::ClusterRemovalUnsent, 1);
                        inner
                            .node
                            .handle(Input::Signal(Signal::Failed), Instant::now());
                    }
                }
                Output::UnknownPeers { room, peers } => {
                    // (The node marked itself out of step: a resync checks the replica.)
                    tracing::debug!(%room, peers, "a frame for peers this node does not know");
                }
                Output::Directory(step) => {
                    if let Some(steps) = &self.steps
                        && steps.send(step).is_err()
                    {
                        // The shell is gone: the server is stopping.
                        tracing::debug!("a directory step after the cluster's shell stopped");
                    }
                }
                Output::Undeliverable { room, peers } => {
                    tracing::debug!(%room, peers, "frame from another node for peers not here");
                    self.metrics.cluster_undeliverable.increment(peers as u64);
                }
            }
        }
        vacated
    }

    /// Queues one frame to a connection, or spills it once the connection has overflowed.
    fn enqueue(&self, c: &mut ConnTx, text: &Utf8Bytes, resumable: bool, len: usize, cap: usize) {
        if c.spill.is_none() {
            let queued = c.shared.queued_bytes.fetch_add(len, Ordering::AcqRel) + len;
            let out = Outbound::Frame {
                text: text.clone(),
                resumable,
            };
            if queued <= cap && c.shared.queue.try_push(out, self.queue_cap()).is_ok() {
                return;
            }
            c.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.metrics.outbound_overflows.increment(1);
            c.shared.kill(CloseCode::SlowConsumer);
            c.spill = Some(Box::default());
        }
        if let Some(spill) = &mut c.spill
            && !spill.truncated
            && resumable
        {
            if spill.frames.len() < self.spill_frames && spill.bytes + len <= self.spill_bytes {
                spill.bytes += len;
                spill.frames.push(text.clone());
            } else {
                spill.truncated = true;
                spill.frames = Vec::new();
            }
        }
    }
}

/// A leave reason as history and webhooks name it (the wire's names).
fn leave_reason(reason: bluecam_proto::LeaveReason) -> history::LeaveReason {
    use bluecam_proto::LeaveReason as R;
    match reason {
        R::Left => "left",
        R::Timeout => "timeout",
        R::Kicked => "kicked",
        R::Replaced => "replaced",
    }
}

impl crate::directory::Host for Driver {
    fn handle(&self, input: Input<'static>) -> Handled {
        Driver::handle(self, input)
    }

    fn server_message(
        &self,
        room: &RoomId,
        to: Option<Vec<PeerId>>,
        body: &bluecam_proto::RawValue,
    ) {
        Driver::server_message(self, room, to, body);
    }

    fn local_peers(&self) -> Vec<LocalPeer> {
        Driver::local_peers(self)
    }

    fn local_rooms(&self) -> Vec<RoomId> {
        Driver::local_rooms(self)
    }

    fn has_pending_join(&self, room: &RoomId) -> bool {
        Driver::has_pending_join(self, room)
    }

    fn undelivered(&self, item: Outgoing) {
        Driver::undelivered(self, item);
    }

    fn peers(&self, room: &RoomId) -> Vec<(PeerInfo, bool)> {
        Driver::peers(self, room)
    }
}

/// A fresh sequence space for the backend's messages to one peer (`server_message.e`): the
/// time in microseconds, and never twice in this process (nor, by the clock, in the process
/// before it: a client that sees a new space after a restart starts over).
pub fn server_epoch() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut last = LAST.load(Ordering::Acquire);
    loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ConnShared, Next, Outbound};
    use bluecam_proto::CloseCode;
    use std::{sync::Arc, time::Duration};
    use tungstenite::Utf8Bytes;

    #[test]
    fn sequence_spaces_are_never_drawn_twice_even_from_several_threads() {
        let drawn: Vec<u64> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..10_000)
                            .map(|_| super::server_epoch())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: std::collections::HashSet<u64> = drawn.iter().copied().collect();
        assert_eq!(unique.len(), drawn.len());
    }

    fn frame(n: u32) -> Outbound {
        Outbound::Frame {
            text: Utf8Bytes::from(n.to_string()),
            resumable: true,
        }
    }

    fn text(out: Option<Outbound>) -> Option<String> {
        match out? {
            Outbound::Frame { text, .. } => Some(text.to_string()),
            Outbound::Close(code) => Some(format!("close {}", code.code())),
        }
    }

    /// What `ConnShared::next` gives, as text (`None`: closed).
    fn next_text(next: Next) -> Option<String> {
        match next {
            Next::Out(out) => text(Some(out)),
            Next::Killed(code) => Some(format!("killed {}", code.code())),
            Next::Ping => Some("ping".into()),
            Next::Closed => None,
        }
    }

    #[test]
    fn outq_keeps_order_refuses_past_its_bound_and_ends_after_a_close() {
        let c = ConnShared::default();
        let q = &c.queue;
        for n in 0..3 {
            q.try_push(frame(n), 3).unwrap();
        }
        assert!(q.try_push(frame(3), 3).is_err(), "past the bound");
        assert_eq!(text(q.try_pop()).as_deref(), Some("0"));
        q.try_push(Outbound::Close(CloseCode::Replaced), 3).unwrap();
        q.close();
        assert!(q.try_push(frame(9), 3).is_err(), "nothing after the close");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let rest: Vec<Option<String>> = rt.block_on(async {
            let mut rest = Vec::new();
            for _ in 0..4 {
                rest.push(next_text(std::future::poll_fn(|cx| c.poll_next(cx)).await));
            }
            rest
        });
        let close = format!("close {}", CloseCode::Replaced.code());
        assert_eq!(
            rest,
            [Some("1".into()), Some("2".into()), Some(close), None]
        );
    }

    /// A runtime with two workers, so that a waiting task is woken from another thread.
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn outq_pop_waits_for_a_push_and_an_idle_queue_holds_no_memory() {
        let rt = runtime();
        rt.block_on(async {
            let c = Arc::new(ConnShared::default());
            let q = &c.queue;
            let reader = tokio::spawn({
                let c = Arc::clone(&c);
                async move { next_text(std::future::poll_fn(|cx| c.poll_next(cx)).await) }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!reader.is_finished(), "nothing queued yet");
            q.try_push(frame(7), 8).unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), reader).await;
            assert_eq!(got.unwrap().unwrap().as_deref(), Some("7"));
            // A burst grows the queue; emptied, it keeps a little while busy, nothing once
            // trimmed.
            for n in 0..100 {
                q.try_push(frame(n), 1_000).unwrap();
            }
            while q.try_pop().is_some() {}
            assert!(q.lock().capacity() <= super::OUTQ_KEEP);
            q.trim();
            assert_eq!(q.lock().capacity(), 0);
        });
    }

    #[test]
    fn a_kill_comes_before_what_is_queued_and_wakes_a_waiting_task() {
        let rt = runtime();
        rt.block_on(async {
            let c = Arc::new(ConnShared::default());
            // A task waiting for a kill (a write waiting for its socket) is not ended by pushes,
            // and leaves them queued.
            let waiting = tokio::spawn({
                let c = Arc::clone(&c);
                async move { std::future::poll_fn(|cx| c.poll_killed(cx)).await }
            });
            c.queue.try_push(frame(1), 8).unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "a push is not a kill");
            c.kill(CloseCode::SlowConsumer);
            let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
            assert_eq!(got.unwrap().unwrap(), CloseCode::SlowConsumer);
            // Killed with a frame queued: the kill first.
            let next = next_text(std::future::poll_fn(|cx| c.poll_next(cx)).await);
            assert_eq!(
                next,
                Some(format!("killed {}", CloseCode::SlowConsumer.code()))
            );
            assert_eq!(c.queue.lock().len(), 1, "the frame stays for the resume");
        });
    }
}
