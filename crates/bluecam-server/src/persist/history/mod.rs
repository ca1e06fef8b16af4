//! Call history and the webhook outbox (docs/http-api.md, "Call history"; docs/webhooks.md).
//!
//! The driver reports what happens to sessions ([`Event`]: opened, resumed, closed, a room created
//! or closed) to a [`Recorder`], in the order it happened. One writer thread per node applies
//! the events in batches, one transaction each: a session's record (`participants`), the room's
//! calls (a call is an interval with at least two peers in the room), and the webhook events
//! they cause (`webhook_outbox`), together, so a crash keeps all three or none. Webhooks are
//! delivered from the outbox by [`crate::persist::webhooks`].
//!
//! The logic is written once, against [`Db`] (`db.rs`): the statements it needs, for SQLite (a
//! single node, [`sqlite`]) and PostgreSQL (a cluster, [`postgres`], where the nodes share the
//! tables and serialize the changes of a room with a lock); those both run as written are
//! written once (`sql.rs`).
//!
//! Times are kept in milliseconds and shown in Unix seconds. The leave time of a peer whose
//! connection was lost is when it was lost, not when its resume window ran out; after a crash,
//! it is the last moment its node was known alive (noted twice a second).

mod db;
pub mod postgres;
mod postgres_tls;
mod sql;
pub mod sqlite;

pub use db::{Attempt, CallRow, Db, NewEvent, NewSession, Pending, SessionRow};

use crate::persist::store::{SqliteStore, StoreError};
use bluecam_proto::{Identity, PeerId, Room, RoomId, SessionId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tokio::sync::{
    Notify,
    mpsc::{self, error::TrySendError},
    oneshot,
};

type R<T> = Result<T, StoreError>;

/// Why a session ended, as history and webhooks say it.
pub type LeaveReason = &'static str;

/// Something that happened, for the history and the webhooks.
#[derive(Clone, Debug)]
pub enum Event {
    /// A fresh session joined (not a resume: a resume continues its session).
    Opened {
        room: RoomId,
        session: SessionId,
        peer: PeerId,
        identity: Identity,
        name: Option<String>,
        at_ms: u64,
    },
    /// A session resumed on this node: it is connected again (and, in a cluster, held here).
    Attached {
        room: RoomId,
        session: SessionId,
        at_ms: u64,
    },
    /// A session's connection was lost: it waits for a resume, still in the room (and in its
    /// call) but not connected, so it cannot start a call.
    Detached {
        room: RoomId,
        session: SessionId,
        at_ms: u64,
    },
    /// A session ended. `detached_at_ms`: when its connection was lost, if it was waiting for
    /// a resume (a timeout); that is when it left.
    Closed {
        room: RoomId,
        session: SessionId,
        reason: LeaveReason,
        at_ms: u64,
        detached_at_ms: Option<u64>,
    },
    /// A room was created through the API.
    RoomCreated { room: Box<Room>, at_ms: u64 },
    /// The room was closed: this node's sessions in it end (`room_closed`).
    RoomClosedHere { room: RoomId, at_ms: u64 },
    /// A room was deleted (`deleted`) or expired empty (`expired`), by this node's API or
    /// sweep: the `room.deleted` event (one node records it).
    RoomDeleted {
        room: RoomId,
        reason: &'static str,
        at_ms: u64,
    },
    /// The node is alive now (after a crash, its open sessions left when it was last alive).
    Alive { at_ms: u64 },
    /// Cluster: ends the sessions of nodes that died and whose sessions nobody took over
    /// within the resume window.
    Sweep { now_ms: u64 },
}

/// A webhook endpoint as the outbox needs it: where, and which event types (empty: all).
#[derive(Clone, Debug)]
pub struct Subscriber {
    pub url: String,
    pub events: Vec<String>,
}

impl Subscriber {
    fn wants(&self, event_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event_type)
    }
}

/// The webhook side of the recorder: who subscribes, the outbox bound and its fill.
#[derive(Clone, Debug)]
pub struct Outbox {
    pub subscribers: Vec<Subscriber>,
    /// Pending events at most; beyond, new events are dropped (counted and logged).
    pub max_pending: usize,
    /// Pending events now (kept here, so the bound costs no query; a cluster node refreshes it
    /// from the shared table now and then).
    pub pending: Arc<AtomicUsize>,
    /// Woken when events were added.
    pub added: Arc<Notify>,
    /// Events dropped because the outbox was full.
    pub dropped: metrics::Counter,
}

/// Who records: this node's id in the shared tables ("" on a single node), and, in a
/// cluster, when another node counts as dead with its sessions gone.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub node: String,
    /// A node silent this long (its liveness, plus a resume window) has lost every session
    /// nobody took over.
    pub dead_after_ms: u64,
}

/// Where the history lives: the node's SQLite file, or the cluster's PostgreSQL.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(postgres::PgStore),
}

impl Backend {
    /// Runs `f` in one transaction, on this (blocking) thread.
    pub fn transaction<T>(&self, f: impl FnOnce(&mut dyn Db) -> R<T>) -> R<T> {
        match self {
            Self::Sqlite(s) => sqlite::transaction(s, f),
            Self::Postgres(p) => p.transaction(f),
        }
    }

    /// Runs `f` in one transaction on the blocking pool.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Db) -> R<T> + Send + 'static,
    ) -> R<T> {
        let backend = self.clone();
        tokio::task::spawn_blocking(move || backend.transaction(f)).await?
    }
}

enum Op {
    Event(Event),
    Flush(oneshot::Sender<crate::persist::store::Committed>),
    /// One round of retention: what ended before `before_ms`, [`PRUNE_ROWS`] rows of each
    /// table at most; answers whether rows are left.
    Prune {
        before_ms: u64,
        done: oneshot::Sender<Result<[usize; 3], Arc<StoreError>>>,
    },
}

/// Rows of each table one round of retention deletes at most: a short transaction, so events
/// recorded meanwhile wait for a few milliseconds, not for the whole pruning.
const PRUNE_ROWS: usize = 1000;

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => e.fmt(f),
            Self::Flush(_) => f.write_str("Flush"),
            Self::Prune { before_ms, .. } => write!(f, "Prune({before_ms})"),
        }
    }
}

/// Queues history events for the writer thread. Cheap to clone; recording never blocks (a join
/// never waits for the history, and events are recorded under the driver's lock).
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Op>,
    metrics: crate::metrics::Metrics,
}

use crate::metrics::DropReason;

/// Events waiting for the writer at most. While the database is away the writer retries its
/// batch for about a minute and new events wait here; past this bound the newest event is
/// dropped ([`DropReason::HistoryQueueFull`]), so an outage costs bounded memory (a few
/// hundred bytes an event: some 20 MB) and never holds up a join.
pub const QUEUE: usize = 65_536;
/// Events one transaction takes at most.
const BATCH: usize = 1024;
/// How long the writer waits after an event that found the queue empty, for others to share
/// its transaction.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);
/// A failed batch is tried again after this, then after twice as long each time, up to a
/// wait of `RETRY_LAST` (about a minute in all): then it is given up (logged).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_LAST: std::time::Duration = std::time::Duration::from_secs(30);

impl Recorder {
    /// Queues an event; when the queue is full, the event is dropped (see [`DropReason`]).
    pub fn record(&self, event: Event) {
        match self.tx.try_send(Op::Event(event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.metrics.dropped(DropReason::HistoryQueueFull, 1),
            Err(TrySendError::Closed(_)) => {
                self.metrics.dropped(DropReason::HistoryWriterGone, 1);
            }
        }
    }

    /// Waits until everything recorded before is committed (waiting for room in the queue
    /// first: a flush is never dropped).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let gone = || StoreError::WriterGone("history");
        self.tx.send(Op::Flush(done)).await.map_err(|_| gone())?;
        Ok(rx.await.map_err(|_| gone())??)
    }

    /// Deletes the history that ended before `before_ms` (sessions, calls, failed webhook
    /// events), in rounds of at most [`PRUNE_ROWS`] rows a table, each its own transaction
    /// between the events recorded meanwhile; how many rows of each table.
    pub async fn prune(&self, before_ms: u64) -> Result<[u64; 3], StoreError> {
        let gone = || StoreError::WriterGone("history");
        let mut total = [0u64; 3];
        loop {
            let (done, rx) = oneshot::channel();
            self.tx
                .send(Op::Prune { before_ms, done })
                .await
                .map_err(|_| gone())?;
            let round = rx.await.map_err(|_| gone())??;
            for (t, n) in total.iter_mut().zip(round) {
                *t += n as u64;
            }
            if round.iter().all(|n| *n < PRUNE_ROWS) {
                return Ok(total);
            }
        }
    }

    /// Starts the writer (a thread: its work is blocking database calls), with a queue of
    /// [`QUEUE`] events.
    pub fn start(
        backend: Backend,
        outbox: Outbox,
        node: NodeInfo,
        metrics: crate::metrics::Metrics,
    ) -> std::io::Result<Self> {
        Self::start_with(backend, outbox, node, (QUEUE, BATCH), metrics)
    }

    /// [`Recorder::start`] with a queue of `queue` ops, `batch` of them per transaction.
    fn start_with(
        backend: Backend,
        outbox: Outbox,
        node: NodeInfo,
        (queue, batch_max): (usize, usize),
        metrics: crate::metrics::Metrics,
    ) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Op>(queue);
        let writer_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("bluecam-history".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Group commit: nothing waits for the history, so events that arrive
                    // within a few milliseconds share one transaction.
                    if rx.is_empty() {
                        std::thread::sleep(GATHER);
                    }
                    let mut batch = vec![first];
                    while batch.len() < batch_max {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let events: Vec<&Event> = batch
                        .iter()
                        .filter_map(|op| match op {
                            Op::Event(e) => Some(e),
                            Op::Flush(_) | Op::Prune { .. } => None,
                        })
                        .collect();
                    // A database that is away (a restart, a failover) gets the batch again,
                    // waiting longer each time, for about a minute; meanwhile new events queue.
                    let mut wait = RETRY_FIRST;
                    let result = loop {
                        let result = backend.transaction(|db| {
                            let mut out = Applied::default();
                            for event in &events {
                                apply(db, event, &outbox, &node, &mut out)?;
                            }
                            Ok(out)
                        });
                        match result {
                            Err(e) if wait <= RETRY_LAST => {
                                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                                    "could not record history; will retry");
                                std::thread::sleep(wait);
                                wait *= 2;
                            }
                            other => break other,
                        }
                    };
                    let result = match result {
                        Ok(stats) => {
                            if stats.dropped > 0 {
                                outbox.dropped.increment(stats.dropped);
                                writer_metrics
                                    .dropped(DropReason::WebhookOutboxFull, stats.dropped);
                            }
                            if stats.added > 0 {
                                outbox.pending.fetch_add(stats.added, Ordering::Relaxed);
                                outbox.added.notify_one();
                            }
                            Ok(())
                        }
                        Err(e) => {
                            tracing::error!(error = %e, events = events.len(),
                                "could not record history: these events are lost");
                            Err(Arc::new(e))
                        }
                    };
                    for op in batch {
                        match op {
                            Op::Flush(done) => {
                                let _ = done.send(result.clone());
                            }
                            // (After the batch's events: one short transaction each.)
                            Op::Prune { before_ms, done } => {
                                let round = backend
                                    .transaction(|db| db.prune(before_ms, PRUNE_ROWS))
                                    .map_err(Arc::new);
                                let _ = done.send(round);
                            }
                            Op::Event(_) => {}
                        }
                    }
                }
            })?;
        Ok(Self { tx, metrics })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The Unix-epoch milliseconds of an `Instant` in the past.
pub fn instant_ms(at: std::time::Instant) -> u64 {
    now_ms().saturating_sub(at.elapsed().as_millis() as u64)
}

fn secs(ms: u64) -> u64 {
    ms / 1000
}

/// Whole seconds of an interval, rounded to the nearest.
fn duration_secs(from_ms: u64, to_ms: u64) -> u64 {
    (to_ms.saturating_sub(from_ms) + 500) / 1000
}

/// After a start: every session this node still had open lost its connection when the node
/// was last alive (a crash, or the restart itself). Sessions the restart restored stay open,
/// detached since then (a resume attaches them again); the others end then, as timeouts.
/// Also counts the pending webhook events.
pub fn recover(
    backend: &Backend,
    node: &NodeInfo,
    restored: &std::collections::HashSet<SessionId>,
    outbox: &Outbox,
) -> R<()> {
    backend.transaction(|db| {
        let alive = db.alive(&node.node)?.unwrap_or_else(now_ms);
        let mut out = Applied::default();
        for (room, session) in db.node_sessions(&node.node)? {
            let session = SessionId::new(session);
            if !restored.contains(&session) {
                let event = Event::Closed {
                    room: RoomId::new(room),
                    session,
                    reason: "timeout",
                    at_ms: alive,
                    detached_at_ms: Some(alive),
                };
                apply(db, &event, outbox, node, &mut out)?;
            }
        }
        db.detach_node(&node.node, alive)?;
        // (Read after the closes above added their events.)
        let pending = db.pending_events()?;
        outbox
            .pending
            .store(usize::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    })
}

#[derive(Default)]
struct Applied {
    added: usize,
    dropped: u64,
}

/// Whether the room's call starts now: none is open and at least two sessions are connected.
/// (The open call is looked up first: once a room has a call, every later join finds it and
/// counts nobody.)
fn call_due(db: &mut dyn Db, room: &str) -> R<bool> {
    Ok(db.open_call(room)?.is_none() && db.connected_sessions(room)? >= 2)
}

fn apply(
    db: &mut dyn Db,
    event: &Event,
    outbox: &Outbox,
    node: &NodeInfo,
    out: &mut Applied,
) -> R<()> {
    match event {
        Event::Opened {
            room,
            session,
            peer,
            identity,
            name,
            at_ms,
        } => {
            db.lock_room(room.as_str())?;
            let new = NewSession {
                session: session.as_str(),
                room: room.as_str(),
                node: &node.node,
                peer: peer.as_str(),
                identity: identity.as_str(),
                name: name.as_deref(),
                joined_at_ms: *at_ms,
            };
            if !db.insert_session(&new)? {
                return Ok(());
            }
            let data = json!({
                "roomId": room, "peerId": peer, "identity": identity, "name": name,
                "joinedAt": secs(*at_ms),
            });
            enqueue(db, outbox, out, room.as_str(), "peer.joined", *at_ms, data)?;
            if call_due(db, room.as_str())? {
                start_call(db, outbox, out, room.as_str(), *at_ms)?;
            }
        }
        Event::Attached {
            room,
            session,
            at_ms,
        } => {
            db.lock_room(room.as_str())?;
            // Another node may have ended it a moment before (its resume window ran out there
            // as it resumed here): it is back, and so may be the room's call.
            if db.attach(session.as_str(), &node.node)? && call_due(db, room.as_str())? {
                start_call(db, outbox, out, room.as_str(), *at_ms)?;
            }
        }
        // (No lock: it changes no call; a detached session keeps its call going.)
        Event::Detached { session, at_ms, .. } => db.detach(session.as_str(), *at_ms)?,
        Event::Closed {
            room,
            session,
            reason,
            at_ms,
            detached_at_ms,
        } => {
            db.lock_room(room.as_str())?;
            end_session(
                db,
                outbox,
                out,
                Ending {
                    room: room.as_str(),
                    session: session.as_str(),
                    holder: &node.node,
                    reason,
                    at_ms: *at_ms,
                    detached_at_ms: *detached_at_ms,
                },
            )?;
        }
        Event::RoomCreated { room, at_ms } => {
            db.lock_room(room.id.as_str())?;
            let data = serde_json::to_value(room).unwrap_or(Value::Null);
            enqueue(
                db,
                outbox,
                out,
                room.id.as_str(),
                "room.created",
                *at_ms,
                data,
            )?;
        }
        Event::RoomClosedHere { room, at_ms } => {
            db.lock_room(room.as_str())?;
            for session in db.open_sessions(room.as_str(), Some(&node.node))? {
                end_session(
                    db,
                    outbox,
                    out,
                    Ending {
                        room: room.as_str(),
                        session: &session,
                        holder: &node.node,
                        reason: "room_closed",
                        at_ms: *at_ms,
                        detached_at_ms: None,
                    },
                )?;
            }
        }
        Event::RoomDeleted {
            room,
            reason,
            at_ms,
        } => {
            db.lock_room(room.as_str())?;
            let data = json!({ "roomId": room, "reason": reason });
            enqueue(db, outbox, out, room.as_str(), "room.deleted", *at_ms, data)?;
        }
        Event::Alive { at_ms } => db.set_alive(&node.node, *at_ms)?,
        Event::Sweep { now_ms } => {
            let before = now_ms.saturating_sub(node.dead_after_ms);
            for (room, session, dead, alive) in db.dead_sessions(&node.node, before)? {
                db.lock_room(&room)?;
                // (Only if the dead node still holds it once the room is locked: a resume on
                // another node moves it.)
                end_session(
                    db,
                    outbox,
                    out,
                    Ending {
                        room: &room,
                        session: &session,
                        holder: &dead,
                        reason: "timeout",
                        at_ms: *now_ms,
                        detached_at_ms: Some(alive),
                    },
                )?;
            }
            // The shared table's count, less what this batch added (counted at its commit).
            let pending = usize::try_from(db.pending_events()?).unwrap_or(0);
            outbox
                .pending
                .store(pending.saturating_sub(out.added), Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A session's end, as recorded.
struct Ending<'a> {
    room: &'a str,
    session: &'a str,
    /// The node that must hold the session for this end to count: the one recording it, or
    /// the dead node a sweep ends it for (another node's resume moved it: it goes on there).
    holder: &'a str,
    reason: &'a str,
    at_ms: u64,
    detached_at_ms: Option<u64>,
}

fn end_session(db: &mut dyn Db, outbox: &Outbox, out: &mut Applied, end: Ending<'_>) -> R<()> {
    let Ending {
        room,
        session,
        holder,
        reason,
        at_ms,
        detached_at_ms,
    } = end;
    let Some((row, stored_detached)) = db.open_session(session, holder)? else {
        return Ok(());
    };
    let joined = row.joined_at_ms;
    // A peer that timed out left when its connection was lost (the earliest we know of).
    let left = match (reason, detached_at_ms, stored_detached) {
        ("timeout", Some(a), Some(b)) => a.min(b),
        ("timeout", a, b) => a.or(b).unwrap_or(at_ms),
        _ => at_ms,
    }
    .clamp(joined, at_ms.max(joined));
    db.close_session(session, left, reason)?;
    let data = json!({
        "roomId": room, "peerId": row.peer, "identity": row.identity, "name": row.name,
        "joinedAt": secs(joined), "leftAt": secs(left), "reason": reason,
        "durationSecs": duration_secs(joined, left),
    });
    enqueue(db, outbox, out, room, "peer.left", at_ms, data)?;
    if let Some((call, started)) = db.open_call(room)?
        && db.open_sessions(room, None)?.len() < 2
    {
        // The call ended when its second-to-last participant left (a timeout may date that
        // before now).
        let mut lefts: Vec<u64> = db
            .sessions_between(room, started, None)?
            .iter()
            .map(|p| p.left_at_ms.unwrap_or(u64::MAX))
            .collect();
        lefts.sort_unstable();
        let ended = if lefts.len() >= 2 {
            lefts[lefts.len() - 2].min(at_ms)
        } else {
            left
        }
        .max(started);
        db.end_call(&call, ended)?;
        enqueue_call(db, outbox, out, &call, "call.ended", at_ms)?;
    }
    Ok(())
}

fn start_call(
    db: &mut dyn Db,
    outbox: &Outbox,
    out: &mut Applied,
    room: &str,
    at_ms: u64,
) -> R<()> {
    let id = format!("call_{}", crate::auth::random_id(12));
    // Who the room belonged to then: usage by owner or member stays right after the room is
    // deleted.
    let (owner, members) = db.room_owner(room)?;
    db.insert_call(&id, room, owner.as_deref(), members.as_deref(), at_ms)?;
    enqueue_call(db, outbox, out, &id, "call.started", at_ms)
}

/// The `call.started` or `call.ended` event of a call: the call as the API shows it.
fn enqueue_call(
    db: &mut dyn Db,
    outbox: &Outbox,
    out: &mut Applied,
    id: &str,
    event_type: &str,
    at_ms: u64,
) -> R<()> {
    if let Some(record) = call_record(db, id)? {
        let room = record.room_id.clone();
        let data = serde_json::to_value(&record).unwrap_or(Value::Null);
        enqueue(db, outbox, out, &room, event_type, at_ms, data)?;
    }
    Ok(())
}

/// Adds one event for every subscriber that wants its type, unless the outbox is full.
fn enqueue(
    db: &mut dyn Db,
    outbox: &Outbox,
    out: &mut Applied,
    room: &str,
    event_type: &str,
    at_ms: u64,
    data: Value,
) -> R<()> {
    let wanting: Vec<&Subscriber> = outbox
        .subscribers
        .iter()
        .filter(|s| s.wants(event_type))
        .collect();
    if wanting.is_empty() {
        return Ok(());
    }
    let body = json!({ "type": event_type, "timestamp": secs(at_ms), "data": data }).to_string();
    let id = format!("msg_{}", crate::auth::random_id(18));
    for sub in wanting {
        // (Counted into `pending` once the transaction commits: a batch tried again must not
        // count twice.)
        if outbox.pending.load(Ordering::Relaxed) + out.added >= outbox.max_pending {
            out.dropped += 1;
            continue;
        }
        db.insert_event(&NewEvent {
            id: &id,
            endpoint: &sub.url,
            room,
            event_type,
            body: &body,
            at_ms,
        })?;
        out.added += 1;
    }
    Ok(())
}

/// One participant of a call, as the API shows it: its time in the call (its join, or the
/// call's start if it was waiting alone; its leave, or the call's end).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Participant {
    pub identity: String,
    pub peer_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub joined_at: u64,
    /// `None` while it is in the call.
    pub left_at: Option<u64>,
    pub duration_secs: u64,
}

/// One call: an interval with at least two peers in the room.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallRecord {
    pub id: String,
    pub room_id: String,
    pub started_at: u64,
    /// `None` while the call is live.
    pub ended_at: Option<u64>,
    pub duration_secs: u64,
    pub participants: Vec<Participant>,
}

/// One call with its participants.
pub fn call_record(db: &mut dyn Db, id: &str) -> R<Option<CallRecord>> {
    let Some((room, started, ended)) = db.call_row(id)? else {
        return Ok(None);
    };
    let end = ended.unwrap_or_else(now_ms);
    let participants = db
        .sessions_between(&room, started, ended)?
        .into_iter()
        .map(|p| {
            let from = p.joined_at_ms.max(started);
            let to = p.left_at_ms.map(|l| l.min(end));
            Participant {
                identity: p.identity,
                peer_id: p.peer,
                name: p.name,
                joined_at: secs(from),
                left_at: to.or(ended).map(secs),
                duration_secs: duration_secs(from, to.unwrap_or(end)),
            }
        })
        .collect();
    Ok(Some(CallRecord {
        id: id.to_owned(),
        room_id: room,
        started_at: secs(started),
        ended_at: ended.map(secs),
        duration_secs: duration_secs(started, end),
        participants,
    }))
}

/// A room's calls, newest first, after the call `after` (the last of the page before).
pub fn calls(
    db: &mut dyn Db,
    room: &str,
    limit: usize,
    after: Option<&str>,
) -> R<Option<Vec<CallRecord>>> {
    let before = match after {
        Some(id) => match db.call_position(id)? {
            Some(pos) => Some(pos),
            None => return Ok(None),
        },
        None => None,
    };
    let mut out = Vec::new();
    for id in db.call_ids(room, before, limit)? {
        if let Some(c) = call_record(db, &id)? {
            out.push(c);
        }
    }
    Ok(Some(out))
}

/// What `GET /v1/usage` reports for one room.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoomUsage {
    pub room_id: String,
    pub calls: u64,
    pub call_secs: u64,
    pub participant_secs: u64,
}

/// What `GET /v1/usage` reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub from: u64,
    pub to: u64,
    pub calls: u64,
    pub call_secs: u64,
    pub participant_secs: u64,
    pub rooms: Vec<RoomUsage>,
}

/// Whose usage: every room's, or the rooms an identity owned (or was a member of) at the time
/// of each call.
#[derive(Clone, Debug)]
pub enum UsageFilter {
    All,
    Owner(String),
    Member(String),
}

/// Usage in `[from, to)` (Unix seconds): every call and participant interval is clipped to it.
pub fn usage(db: &mut dyn Db, from: u64, to: u64, filter: &UsageFilter) -> R<Usage> {
    let (from_ms, to_ms) = (from.saturating_mul(1000), to.saturating_mul(1000));
    let now = now_ms();
    let mut usage = Usage {
        from,
        to,
        ..Usage::default()
    };
    let mut by_room: std::collections::BTreeMap<String, RoomUsage> = Default::default();
    for call in db.calls_between(from_ms, to_ms)? {
        let keep = match filter {
            UsageFilter::All => true,
            UsageFilter::Owner(who) => call.owner.as_deref() == Some(who),
            UsageFilter::Member(who) => {
                call.owner.as_deref() == Some(who)
                    || call
                        .members
                        .as_deref()
                        .and_then(|m| serde_json::from_str::<Vec<String>>(m).ok())
                        .is_some_and(|m| m.iter().any(|x| x == who))
            }
        };
        if !keep {
            continue;
        }
        let end = call.ended.unwrap_or(now);
        let (a, b) = (call.started.max(from_ms), end.min(to_ms));
        if b <= a {
            continue;
        }
        let mut participant_ms = 0u64;
        for p in db.sessions_between(&call.room, call.started, call.ended)? {
            let pa = p.joined_at_ms.max(a);
            let pb = p.left_at_ms.unwrap_or(end).min(b);
            participant_ms += pb.saturating_sub(pa);
        }
        let entry = by_room
            .entry(call.room.clone())
            .or_insert_with(|| RoomUsage {
                room_id: call.room.clone(),
                ..RoomUsage::default()
            });
        entry.calls += 1;
        entry.call_secs += b - a;
        entry.participant_secs += participant_ms;
    }
    // Summed in milliseconds, shown in seconds.
    for mut r in by_room.into_values() {
        r.call_secs = (r.call_secs + 500) / 1000;
        r.participant_secs = (r.participant_secs + 500) / 1000;
        usage.calls += r.calls;
        usage.call_secs += r.call_secs;
        usage.participant_secs += r.participant_secs;
        usage.rooms.push(r);
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[tokio::test]
    async fn history_events_past_the_queue_are_dropped_and_counted_while_the_writer_is_stalled() {
        let dir = std::env::temp_dir().join(format!(
            "bluecam-history-queue-{}",
            crate::auth::random_token(9)
        ));
        let store = SqliteStore::open(&dir).unwrap();
        let outbox = Outbox {
            subscribers: vec![],
            max_pending: 10,
            pending: Arc::default(),
            added: Arc::default(),
            dropped: metrics::Counter::noop(),
        };
        let node = NodeInfo {
            node: String::new(),
            dead_after_ms: 1000,
        };
        let backend = Backend::Sqlite(store.clone());
        // A queue of 4; one event per transaction, so the writer takes exactly one and then
        // waits for the database.
        let recorder = Recorder::start_with(
            backend.clone(),
            outbox,
            node,
            (4, 1),
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        // The database stalls (its connection is held): the writer takes one event and waits.
        let conn = store.connection();
        let held = conn.lock().unwrap();
        recorder.record(Event::Alive { at_ms: 1 });
        let deadline = Instant::now() + Duration::from_secs(10);
        while recorder.tx.capacity() < 4 {
            assert!(Instant::now() < deadline, "the writer never took the event");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Ten more, on this thread, which holds the database: four wait, six are dropped, and
        // none of it blocks (an unbounded queue would have kept all ten).
        for at_ms in 2..=11 {
            recorder.record(Event::Alive { at_ms });
        }
        // (This test's process has this one server's metrics.)
        let page = crate::metrics::prometheus().render();
        let dropped = page
            .lines()
            .find_map(|l| l.strip_prefix(r#"bluecam_dropped_total{reason="history_queue_full"} "#))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert_eq!(dropped, Some(6.0), "{page}");
        drop(held);
        recorder.flush().await.unwrap();
        // What was queued was kept, in order; the newest were dropped.
        let alive = backend.transaction(|db| db.alive("")).unwrap();
        assert_eq!(alive, Some(5));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
