//! Call history and the webhook outbox (docs/http-api.md, "Call history"; docs/webhooks.md).
//!
//! The hub reports what happens to sessions ([`Event`]: opened, resumed, closed, a room created
//! or closed) to a [`Recorder`], in the order it happened. One writer thread applies the events
//! in batches, one transaction each: a session's record (`participants`), the room's calls (a
//! call is an interval with at least two peers in the room), and the webhook events they cause
//! (`webhook_outbox`), together, so a crash keeps all three or none. Webhooks are delivered from
//! the outbox by [`crate::webhooks`].
//!
//! Times are kept in milliseconds and shown in Unix seconds. The leave time of a peer whose
//! connection was lost is when it was lost, not when its resume window ran out; after a crash,
//! it is the last moment the node was known alive (written twice a second).

use crate::store::{SqliteStore, StoreError};
use bluecam_proto::{Identity, PeerId, Room, RoomId, SessionId};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};
use tokio::sync::{Notify, mpsc, oneshot};

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
    /// A session resumed: it is connected again.
    Attached { session: SessionId },
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
    /// A room was deleted (`deleted`) or expired empty (`expired`): its sessions end.
    RoomClosed {
        room: RoomId,
        reason: &'static str,
        at_ms: u64,
    },
    /// The node is alive now (written twice a second: after a crash, the open sessions left
    /// when the node was last alive).
    Alive { at_ms: u64 },
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
    /// Pending events now (kept here, so the bound costs no query).
    pub pending: Arc<AtomicUsize>,
    /// Woken when events were added.
    pub added: Arc<Notify>,
    /// Events dropped because the outbox was full.
    pub dropped: metrics::Counter,
}

enum Op {
    Event(Event),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Queues history events for the writer thread. Cheap to clone; sending never blocks (a join
/// never waits for the history).
#[derive(Clone, Debug)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Op>,
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Event(e) => e.fmt(f),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// Events one transaction takes at most.
const BATCH: usize = 4096;

impl Recorder {
    pub fn record(&self, event: Event) {
        let _ = self.tx.send(Op::Event(event));
    }

    /// Waits until everything recorded before is committed.
    pub async fn flush(&self) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Op::Flush(done))
            .map_err(|_| "the history writer is gone".to_owned())?;
        rx.await
            .map_err(|_| "the history writer is gone".to_owned())?
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

impl SqliteStore {
    /// Starts the history writer (a thread: its work is blocking SQLite calls). Before it
    /// runs, `recover` must have closed what a crash left open.
    pub fn history(&self, outbox: Outbox) -> std::io::Result<Recorder> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Op>();
        let conn = self.connection();
        std::thread::Builder::new()
            .name("bluecam-history".into())
            .spawn(move || {
                let mut dropped_logged = 0u64;
                while let Some(first) = rx.blocking_recv() {
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let events: Vec<&Event> = batch
                        .iter()
                        .filter_map(|op| match op {
                            Op::Event(e) => Some(e),
                            Op::Flush(_) => None,
                        })
                        .collect();
                    let result = match conn.lock() {
                        Ok(mut guard) => apply(&mut guard, &events, &outbox),
                        Err(_) => Err(StoreError::Backend("store mutex poisoned".into())),
                    };
                    let result = match result {
                        Ok(stats) => {
                            if stats.dropped > 0 {
                                outbox.dropped.increment(stats.dropped);
                                dropped_logged += stats.dropped;
                                tracing::warn!(
                                    dropped = stats.dropped,
                                    dropped_total = dropped_logged,
                                    max_pending = outbox.max_pending,
                                    "webhook outbox full: events dropped"
                                );
                            }
                            if stats.added > 0 {
                                outbox.added.notify_one();
                            }
                            Ok(())
                        }
                        Err(e) => {
                            tracing::error!(error = %e, events = events.len(), "could not record history");
                            Err(e.to_string())
                        }
                    };
                    for op in batch {
                        if let Op::Flush(done) = op {
                            let _ = done.send(result.clone());
                        }
                    }
                }
            })?;
        Ok(Recorder { tx })
    }

    /// After a start: every session still open lost its connection when the node was last
    /// alive (a crash, or the restart itself). Sessions the restart restored stay open, as
    /// detached since then (a resume attaches them again); the others end then, as timeouts.
    pub fn recover_history(
        &self,
        restored: &std::collections::HashSet<SessionId>,
        outbox: &Outbox,
    ) -> Result<(), StoreError> {
        let conn = self.connection();
        let mut conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        let alive: Option<u64> = conn
            .query_row(
                "SELECT value FROM node_state WHERE key = 'alive_at_ms'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let alive = alive.unwrap_or_else(now_ms);
        let open: Vec<(String, String)> = conn
            .prepare("SELECT session, room FROM participants WHERE left_at_ms IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut events = Vec::new();
        for (session, room) in open {
            let session = SessionId::new(session);
            if !restored.contains(&session) {
                events.push(Event::Closed {
                    room: RoomId::new(room),
                    session,
                    reason: "timeout",
                    at_ms: alive,
                    detached_at_ms: Some(alive),
                });
            }
        }
        conn.execute(
            "UPDATE participants SET detached_at_ms = COALESCE(detached_at_ms, ?1)
             WHERE left_at_ms IS NULL",
            [alive],
        )?;
        let refs: Vec<&Event> = events.iter().collect();
        apply(&mut conn, &refs, outbox)?;
        let pending: i64 = conn.query_row(
            "SELECT COUNT(*) FROM webhook_outbox WHERE state = 0",
            [],
            |r| r.get(0),
        )?;
        outbox
            .pending
            .store(usize::try_from(pending).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Default)]
struct Applied {
    added: usize,
    dropped: u64,
}

/// Applies a batch of events in one transaction.
fn apply(conn: &mut Connection, events: &[&Event], outbox: &Outbox) -> Result<Applied, StoreError> {
    let tx = conn.transaction()?;
    let mut out = Applied::default();
    for event in events {
        apply_one(&tx, event, outbox, &mut out)?;
    }
    tx.commit()?;
    Ok(out)
}

fn apply_one(
    tx: &Transaction<'_>,
    event: &Event,
    outbox: &Outbox,
    out: &mut Applied,
) -> Result<(), StoreError> {
    match event {
        Event::Opened {
            room,
            session,
            peer,
            identity,
            name,
            at_ms,
        } => {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO participants (session, room, peer, identity, name,
                 joined_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    session.as_str(),
                    room.as_str(),
                    peer.as_str(),
                    identity.as_str(),
                    name,
                    at_ms
                ],
            )?;
            if inserted == 0 {
                return Ok(());
            }
            let data = json!({
                "roomId": room, "peerId": peer, "identity": identity, "name": name,
                "joinedAt": secs(*at_ms),
            });
            enqueue(tx, outbox, out, room.as_str(), "peer.joined", *at_ms, data)?;
            if open_sessions(tx, room.as_str())? >= 2 && open_call(tx, room.as_str())?.is_none() {
                start_call(tx, outbox, out, room.as_str(), *at_ms)?;
            }
        }
        Event::Attached { session } => {
            tx.execute(
                "UPDATE participants SET detached_at_ms = NULL WHERE session = ?1",
                [session.as_str()],
            )?;
        }
        Event::Closed {
            room,
            session,
            reason,
            at_ms,
            detached_at_ms,
        } => {
            close_session(
                tx,
                outbox,
                out,
                room.as_str(),
                session.as_str(),
                reason,
                *at_ms,
                *detached_at_ms,
            )?;
        }
        Event::RoomCreated { room, at_ms } => {
            let data = serde_json::to_value(room).unwrap_or(Value::Null);
            enqueue(
                tx,
                outbox,
                out,
                room.id.as_str(),
                "room.created",
                *at_ms,
                data,
            )?;
        }
        Event::RoomClosed {
            room,
            reason,
            at_ms,
        } => {
            let open: Vec<String> = tx
                .prepare_cached(
                    "SELECT session FROM participants WHERE room = ?1 AND left_at_ms IS NULL
                     ORDER BY joined_at_ms",
                )?
                .query_map([room.as_str()], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            for session in open {
                close_session(
                    tx,
                    outbox,
                    out,
                    room.as_str(),
                    &session,
                    "room_closed",
                    *at_ms,
                    None,
                )?;
            }
            let data = json!({ "roomId": room, "reason": reason });
            enqueue(tx, outbox, out, room.as_str(), "room.deleted", *at_ms, data)?;
        }
        Event::Alive { at_ms } => {
            tx.execute(
                "INSERT INTO node_state (key, value) VALUES ('alive_at_ms', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [at_ms],
            )?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn close_session(
    tx: &Transaction<'_>,
    outbox: &Outbox,
    out: &mut Applied,
    room: &str,
    session: &str,
    reason: &str,
    at_ms: u64,
    detached_at_ms: Option<u64>,
) -> Result<(), StoreError> {
    let row = tx
        .query_row(
            "SELECT peer, identity, name, joined_at_ms, detached_at_ms FROM participants
             WHERE session = ?1 AND left_at_ms IS NULL",
            [session],
            |r| {
                Ok((
                    SessionRow {
                        peer: r.get(0)?,
                        identity: r.get(1)?,
                        name: r.get(2)?,
                        joined_at_ms: r.get(3)?,
                        left_at_ms: None,
                    },
                    r.get::<_, Option<u64>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((
        SessionRow {
            peer,
            identity,
            name,
            joined_at_ms: joined,
            ..
        },
        stored_detached,
    )) = row
    else {
        return Ok(());
    };
    // A peer that timed out left when its connection was lost (the earliest we know of).
    let left = match (reason, detached_at_ms, stored_detached) {
        ("timeout", Some(a), Some(b)) => a.min(b),
        ("timeout", a, b) => a.or(b).unwrap_or(at_ms),
        _ => at_ms,
    }
    .clamp(joined, at_ms.max(joined));
    tx.execute(
        "UPDATE participants SET left_at_ms = ?2, reason = ?3 WHERE session = ?1",
        params![session, left, reason],
    )?;
    let data = json!({
        "roomId": room, "peerId": peer, "identity": identity, "name": name,
        "joinedAt": secs(joined), "leftAt": secs(left), "reason": reason,
        "durationSecs": duration_secs(joined, left),
    });
    enqueue(tx, outbox, out, room, "peer.left", at_ms, data)?;
    if let Some((call, started)) = open_call(tx, room)?
        && open_sessions(tx, room)? < 2
    {
        // The call ended when its second-to-last participant left (a timeout may date that
        // before now).
        let mut lefts: Vec<u64> = participants_between(tx, room, started, None)?
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
        tx.execute(
            "UPDATE calls SET ended_at_ms = ?2 WHERE id = ?1",
            params![call, ended],
        )?;
        if let Some(record) = call_record(tx, &call)? {
            let data = serde_json::to_value(&record).unwrap_or(Value::Null);
            enqueue(tx, outbox, out, room, "call.ended", at_ms, data)?;
        }
    }
    Ok(())
}

fn start_call(
    tx: &Transaction<'_>,
    outbox: &Outbox,
    out: &mut Applied,
    room: &str,
    at_ms: u64,
) -> Result<(), StoreError> {
    let id = format!("call_{}", crate::auth::random_id(12));
    // Who the room belonged to then: usage by owner or member stays right after the room is
    // deleted.
    let (owner, members): (Option<String>, Option<String>) = tx
        .query_row(
            "SELECT owner, members FROM rooms WHERE id = ?1",
            [room],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?
        .unwrap_or((None, None));
    tx.execute(
        "INSERT INTO calls (id, room, owner, members, started_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, room, owner, members, at_ms],
    )?;
    if let Some(record) = call_record(tx, &id)? {
        let data = serde_json::to_value(&record).unwrap_or(Value::Null);
        enqueue(tx, outbox, out, room, "call.started", at_ms, data)?;
    }
    Ok(())
}

fn open_sessions(tx: &Connection, room: &str) -> Result<i64, StoreError> {
    Ok(tx.query_row(
        "SELECT COUNT(*) FROM participants WHERE room = ?1 AND left_at_ms IS NULL",
        [room],
        |r| r.get(0),
    )?)
}

fn open_call(tx: &Connection, room: &str) -> Result<Option<(String, u64)>, StoreError> {
    Ok(tx
        .query_row(
            "SELECT id, started_at_ms FROM calls WHERE room = ?1 AND ended_at_ms IS NULL",
            [room],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
}

/// Adds one event for every subscriber that wants its type, unless the outbox is full.
fn enqueue(
    tx: &Transaction<'_>,
    outbox: &Outbox,
    out: &mut Applied,
    room: &str,
    event_type: &str,
    at_ms: u64,
    data: Value,
) -> Result<(), StoreError> {
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
        if outbox.pending.load(Ordering::Relaxed) >= outbox.max_pending {
            out.dropped += 1;
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO webhook_outbox (id, endpoint, room, type, body, created_at_ms,
             next_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        )?
        .execute(params![id, sub.url, room, event_type, body, at_ms])?;
        outbox.pending.fetch_add(1, Ordering::Relaxed);
        out.added += 1;
    }
    Ok(())
}

/// One participant of a call, as the API shows it: its time in the call (its join, or the
/// call's start if it was waiting alone; its leave, or the call's end).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
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

/// A call as usage reads it.
struct CallRow {
    room: String,
    started: u64,
    ended: Option<u64>,
    owner: Option<String>,
    members: Option<String>,
}

struct SessionRow {
    peer: String,
    identity: String,
    name: Option<String>,
    joined_at_ms: u64,
    left_at_ms: Option<u64>,
}

/// The sessions of a room that overlap `[from, to)` (`to` None: up to now), in join order.
fn participants_between(
    conn: &Connection,
    room: &str,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<SessionRow>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT peer, identity, name, joined_at_ms, left_at_ms FROM participants
             WHERE room = ?1 AND joined_at_ms < ?3 AND (left_at_ms IS NULL OR left_at_ms > ?2)
             ORDER BY joined_at_ms, session",
        )?
        .query_map(params![room, from, to.unwrap_or(u64::MAX >> 1)], |r| {
            Ok(SessionRow {
                peer: r.get(0)?,
                identity: r.get(1)?,
                name: r.get(2)?,
                joined_at_ms: r.get(3)?,
                left_at_ms: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

fn call_record(conn: &Connection, id: &str) -> Result<Option<CallRecord>, StoreError> {
    let row: Option<(String, u64, Option<u64>)> = conn
        .query_row(
            "SELECT room, started_at_ms, ended_at_ms FROM calls WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((room, started, ended)) = row else {
        return Ok(None);
    };
    let now = now_ms();
    let end = ended.unwrap_or(now);
    let participants = participants_between(conn, &room, started, ended)?
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

/// What `GET /v1/usage` reports for one room.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RoomUsage {
    pub room_id: String,
    pub calls: u64,
    pub call_secs: u64,
    pub participant_secs: u64,
}

/// What `GET /v1/usage` reports.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
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

impl SqliteStore {
    /// A room's calls, newest first, after the cursor (the last call of the page before).
    pub fn calls(
        &self,
        room: RoomId,
        limit: usize,
        after: Option<(u64, String)>,
    ) -> Result<Vec<CallRecord>, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        let (at, id) = after.unwrap_or((u64::MAX >> 1, String::new()));
        let ids: Vec<String> = conn
            .prepare_cached(
                "SELECT id FROM calls WHERE room = ?1 AND (started_at_ms < ?2 OR
                 (started_at_ms = ?2 AND (?3 = '' OR id < ?3)))
                 ORDER BY started_at_ms DESC, id DESC LIMIT ?4",
            )?
            .query_map(params![room.as_str(), at, id, limit as u64], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = call_record(&conn, &id)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Where a call starts, for a page cursor: (start in ms, id).
    pub fn call_position(&self, id: &str) -> Result<Option<(u64, String)>, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        Ok(conn
            .query_row(
                "SELECT started_at_ms, id FROM calls WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Whether a room has any call on record (a deleted room's history stays).
    pub fn has_calls(&self, room: &RoomId) -> Result<bool, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        Ok(conn
            .query_row(
                "SELECT 1 FROM calls WHERE room = ?1 LIMIT 1",
                [room.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    pub fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        call_record(&conn, id)
    }

    /// Usage in `[from, to)` (Unix seconds): every call and participant interval is clipped
    /// to it.
    pub fn usage(&self, from: u64, to: u64, filter: UsageFilter) -> Result<Usage, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        let (from_ms, to_ms) = (from.saturating_mul(1000), to.saturating_mul(1000));
        let now = now_ms();
        let calls: Vec<CallRow> = conn
            .prepare_cached(
                "SELECT id, room, started_at_ms, ended_at_ms, owner, members FROM calls
                 WHERE started_at_ms < ?2 AND (ended_at_ms IS NULL OR ended_at_ms > ?1)
                 ORDER BY room, started_at_ms",
            )?
            .query_map(params![from_ms, to_ms], |r| {
                Ok(CallRow {
                    room: r.get(1)?,
                    started: r.get(2)?,
                    ended: r.get(3)?,
                    owner: r.get(4)?,
                    members: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let mut usage = Usage {
            from,
            to,
            ..Usage::default()
        };
        let mut by_room: std::collections::BTreeMap<String, RoomUsage> = Default::default();
        for CallRow {
            room,
            started,
            ended,
            owner,
            members,
        } in calls
        {
            let keep = match &filter {
                UsageFilter::All => true,
                UsageFilter::Owner(who) => owner.as_deref() == Some(who),
                UsageFilter::Member(who) => {
                    owner.as_deref() == Some(who)
                        || members
                            .and_then(|m| serde_json::from_str::<Vec<String>>(&m).ok())
                            .is_some_and(|m| m.iter().any(|x| x == who))
                }
            };
            if !keep {
                continue;
            }
            let end = ended.unwrap_or(now);
            let (a, b) = (started.max(from_ms), end.min(to_ms));
            if b <= a {
                continue;
            }
            let mut participant_ms = 0u64;
            for p in participants_between(&conn, &room, started, ended)? {
                let pa = p.joined_at_ms.max(a);
                let pb = p.left_at_ms.unwrap_or(end).min(b);
                participant_ms += pb.saturating_sub(pa);
            }
            let entry = by_room.entry(room.clone()).or_insert_with(|| RoomUsage {
                room_id: room,
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
}

/// One event waiting in the outbox for its endpoint.
#[derive(Clone, Debug)]
pub struct Pending {
    pub seq: i64,
    pub id: String,
    pub endpoint: String,
    pub body: String,
    pub attempts: u32,
    pub created_at_ms: u64,
}

impl SqliteStore {
    /// The events due for delivery at `now`: for each endpoint and room, only its oldest
    /// pending event (delivery is in order per room), and only once its retry time came.
    pub fn due_webhooks(&self, now: u64, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        let rows = conn
            .prepare_cached(
                "SELECT o.seq, o.id, o.endpoint, o.body, o.attempts, o.created_at_ms
                 FROM webhook_outbox o
                 WHERE o.state = 0 AND o.next_at_ms <= ?1 AND o.seq = (SELECT MIN(p.seq)
                   FROM webhook_outbox p WHERE p.state = 0 AND p.endpoint = o.endpoint
                   AND p.room = o.room)
                 ORDER BY o.seq LIMIT ?2",
            )?
            .query_map(params![now, limit as u64], |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    endpoint: r.get(2)?,
                    body: r.get(3)?,
                    attempts: r.get(4)?,
                    created_at_ms: r.get(5)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// When the next pending event is due, if any.
    pub fn next_webhook_at(&self) -> Result<Option<u64>, StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        Ok(conn.query_row(
            "SELECT MIN(next_at_ms) FROM webhook_outbox WHERE state = 0",
            [],
            |r| r.get(0),
        )?)
    }

    /// Records the outcome of an attempt: delivered (removed), to retry at `retry_at`, or
    /// failed for good (kept, marked).
    pub fn webhook_attempted(
        &self,
        seq: i64,
        outcome: Attempt,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.connection();
        let conn = conn
            .lock()
            .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
        match outcome {
            Attempt::Delivered => {
                conn.execute("DELETE FROM webhook_outbox WHERE seq = ?1", [seq])?;
            }
            Attempt::Retry { at_ms } => {
                conn.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_at_ms = ?2,
                     last_error = ?3 WHERE seq = ?1",
                    params![seq, at_ms, error],
                )?;
            }
            Attempt::Failed => {
                conn.execute(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, state = 2,
                     last_error = ?2 WHERE seq = ?1",
                    params![seq, error],
                )?;
            }
        }
        Ok(())
    }
}

/// The outcome of one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Retry { at_ms: u64 },
    Failed,
}

/// The schema step that adds the history (see `store::MIGRATIONS`).
pub const MIGRATION: &str = "
    CREATE TABLE participants (
        session TEXT PRIMARY KEY NOT NULL,
        room TEXT NOT NULL,
        peer TEXT NOT NULL,
        identity TEXT NOT NULL,
        name TEXT,
        joined_at_ms INTEGER NOT NULL,
        left_at_ms INTEGER,
        detached_at_ms INTEGER,
        reason TEXT
    );
    CREATE INDEX participants_by_room ON participants (room, joined_at_ms);
    CREATE INDEX participants_open ON participants (room) WHERE left_at_ms IS NULL;
    CREATE TABLE calls (
        id TEXT PRIMARY KEY NOT NULL,
        room TEXT NOT NULL,
        owner TEXT,
        members TEXT,
        started_at_ms INTEGER NOT NULL,
        ended_at_ms INTEGER
    );
    CREATE INDEX calls_by_room ON calls (room, started_at_ms, id);
    CREATE INDEX calls_by_time ON calls (started_at_ms);
    CREATE TABLE webhook_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        room TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        next_at_ms INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    CREATE INDEX webhook_outbox_order ON webhook_outbox (state, endpoint, room, seq);
    CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_at_ms);
    CREATE TABLE node_state (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
";
