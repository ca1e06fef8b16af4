//! The history's statements for a single node's SQLite file (see [`super::Db`]).

use super::{Attempt, CallRow, Db, NewEvent, NewSession, Pending, R, SessionRow, sql};
use crate::persist::store::{SqliteStore, StoreError};
use rusqlite::{OptionalExtension, Transaction, params};

/// Runs `f` in one transaction of the node's connection.
pub fn transaction<T>(store: &SqliteStore, f: impl FnOnce(&mut dyn Db) -> R<T>) -> R<T> {
    let conn = store.connection();
    let mut conn = conn.lock().map_err(|_| StoreError::Poisoned)?;
    let tx = conn.transaction()?;
    let out = f(&mut Sqlite(&tx))?;
    tx.commit()?;
    Ok(out)
}

/// One transaction, as [`Db`].
struct Sqlite<'a, 'c>(&'a Transaction<'c>);

impl Sqlite<'_, '_> {
    /// Runs a statement, prepared once per connection (the history runs several on every join
    /// and leave; parsing them each time was a fifth of its thread's time).
    fn exec(&self, sql: &str, params: impl rusqlite::Params) -> rusqlite::Result<usize> {
        self.0.prepare_cached(sql)?.execute(params)
    }

    /// One row of a statement prepared once per connection (see [`Self::exec`]).
    fn row<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        self.0.prepare_cached(sql)?.query_row(params, f)
    }
}

fn alive_key(node: &str) -> String {
    format!("alive:{node}")
}

impl Db for Sqlite<'_, '_> {
    fn lock_room(&mut self, _room: &str) -> R<()> {
        Ok(())
    }

    fn insert_session(&mut self, s: &NewSession<'_>) -> R<bool> {
        Ok(self
            .0
            .prepare_cached(
                "INSERT OR IGNORE INTO participants (session, room, node, peer, identity, name,
             joined_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                s.session,
                s.room,
                s.node,
                s.peer,
                s.identity,
                s.name,
                s.joined_at_ms
            ])?
            > 0)
    }

    fn attach(&mut self, session: &str, node: &str) -> R<bool> {
        let reopened = self.exec(&sql::sqlite(sql::REOPEN_TIMED_OUT), [session])? > 0;
        self.exec(&sql::sqlite(sql::ATTACH_HERE), params![session, node])?;
        Ok(reopened)
    }

    fn open_session(&mut self, session: &str, node: &str) -> R<Option<(SessionRow, Option<u64>)>> {
        Ok(self
            .row(
                "SELECT peer, identity, name, joined_at_ms, detached_at_ms FROM participants
                 WHERE session = ?1 AND node = ?2 AND left_at_ms IS NULL",
                params![session, node],
                |r| {
                    Ok((
                        SessionRow {
                            peer: r.get(0)?,
                            identity: r.get(1)?,
                            name: r.get(2)?,
                            joined_at_ms: r.get(3)?,
                            left_at_ms: None,
                        },
                        r.get(4)?,
                    ))
                },
            )
            .optional()?)
    }

    fn close_session(&mut self, session: &str, left_ms: u64, reason: &str) -> R<()> {
        self.exec(
            &sql::sqlite(sql::CLOSE_SESSION),
            params![session, left_ms, reason],
        )?;
        Ok(())
    }

    fn open_sessions(&mut self, room: &str, node: Option<&str>) -> R<Vec<String>> {
        Ok(self
            .0
            .prepare_cached(
                "SELECT session FROM participants WHERE room = ?1 AND left_at_ms IS NULL
                 AND (?2 IS NULL OR node = ?2) ORDER BY joined_at_ms",
            )?
            .query_map(params![room, node], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn open_call(&mut self, room: &str) -> R<Option<(String, u64)>> {
        Ok(self
            .row(&sql::sqlite(sql::OPEN_CALL), [room], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    fn room_owner(&mut self, room: &str) -> R<(Option<String>, Option<String>)> {
        Ok(self
            .row(&sql::sqlite(sql::ROOM_OWNER), [room], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?
            .unwrap_or((None, None)))
    }

    fn insert_call(
        &mut self,
        id: &str,
        room: &str,
        owner: Option<&str>,
        members: Option<&str>,
        at_ms: u64,
    ) -> R<()> {
        self.exec(
            &sql::sqlite(sql::INSERT_CALL),
            params![id, room, owner, members, at_ms],
        )?;
        Ok(())
    }

    fn end_call(&mut self, id: &str, ended_ms: u64) -> R<()> {
        self.exec(&sql::sqlite(sql::END_CALL), params![id, ended_ms])?;
        Ok(())
    }

    fn call_row(&mut self, id: &str) -> R<Option<(String, u64, Option<u64>)>> {
        Ok(self
            .row(&sql::sqlite(sql::CALL_ROW), [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }

    fn sessions_between(&mut self, room: &str, from: u64, to: Option<u64>) -> R<Vec<SessionRow>> {
        Ok(self
            .0
            .prepare_cached(&sql::sqlite(sql::SESSIONS_BETWEEN))?
            .query_map(params![room, from, to.unwrap_or(i64::MAX as u64)], |r| {
                Ok(SessionRow {
                    peer: r.get(0)?,
                    identity: r.get(1)?,
                    name: r.get(2)?,
                    joined_at_ms: r.get(3)?,
                    left_at_ms: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn insert_event(&mut self, e: &NewEvent<'_>) -> R<()> {
        self.0
            .prepare_cached(&sql::sqlite(sql::INSERT_EVENT))?
            .execute(params![
                e.id,
                e.endpoint,
                e.room,
                e.event_type,
                e.body,
                e.at_ms
            ])?;
        Ok(())
    }

    fn set_alive(&mut self, node: &str, at_ms: u64) -> R<()> {
        self.exec(
            &sql::sqlite(sql::SET_ALIVE),
            params![alive_key(node), at_ms],
        )?;
        Ok(())
    }

    fn alive(&mut self, node: &str) -> R<Option<u64>> {
        Ok(self
            .row(&sql::sqlite(sql::ALIVE), [alive_key(node)], |r| r.get(0))
            .optional()?)
    }

    fn node_sessions(&mut self, node: &str) -> R<Vec<(String, String)>> {
        Ok(self
            .0
            .prepare_cached(&sql::sqlite(sql::NODE_SESSIONS))?
            .query_map([node], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?)
    }

    fn detach_node(&mut self, node: &str, at_ms: u64) -> R<()> {
        self.exec(&sql::sqlite(sql::DETACH_NODE), params![node, at_ms])?;
        Ok(())
    }

    fn dead_sessions(
        &mut self,
        _me: &str,
        _before_ms: u64,
    ) -> R<Vec<(String, String, String, u64)>> {
        // A single node has no other nodes; its own crash is handled at its start.
        Ok(Vec::new())
    }

    fn call_ids(
        &mut self,
        room: &str,
        before: Option<(u64, String)>,
        limit: usize,
    ) -> R<Vec<String>> {
        let (at, id) = before.unwrap_or((i64::MAX as u64, String::new()));
        Ok(self
            .0
            .prepare_cached(&sql::sqlite(sql::CALL_IDS))?
            .query_map(params![room, at, id, limit as u64], |r| r.get(0))?
            .collect::<Result<_, _>>()?)
    }

    fn call_position(&mut self, id: &str) -> R<Option<(u64, String)>> {
        Ok(self
            .row(&sql::sqlite(sql::CALL_POSITION), [id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    fn calls_between(&mut self, from_ms: u64, to_ms: u64) -> R<Vec<CallRow>> {
        Ok(self
            .0
            .prepare_cached(&sql::sqlite(sql::CALLS_BETWEEN))?
            .query_map(params![from_ms, to_ms], |r| {
                Ok(CallRow {
                    room: r.get(0)?,
                    started: r.get(1)?,
                    ended: r.get(2)?,
                    owner: r.get(3)?,
                    members: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?)
    }

    fn prune(&mut self, before_ms: u64, limit: usize) -> R<[usize; 3]> {
        let mut out = [0; 3];
        for (n, statement) in out.iter_mut().zip(sql::PRUNE) {
            *n = self.exec(&sql::sqlite(statement), params![before_ms, limit])?;
        }
        Ok(out)
    }

    fn connected_sessions(&mut self, room: &str) -> R<usize> {
        let n: i64 = self.row(&sql::sqlite(sql::CONNECTED_SESSIONS), [room], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn detach(&mut self, session: &str, at_ms: u64) -> R<()> {
        self.exec(&sql::sqlite(sql::DETACH), params![session, at_ms])?;
        Ok(())
    }

    fn pending_events(&mut self) -> R<i64> {
        Ok(self.row(&sql::sqlite(sql::PENDING_EVENTS), [], |r| r.get(0))?)
    }

    fn due_events(&mut self, now: u64, limit: usize, _node: &str) -> R<Vec<Pending>> {
        Ok(self
            .0
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
            .collect::<Result<_, _>>()?)
    }

    fn next_due(&mut self) -> R<Option<u64>> {
        // Over the events that can be due: each room's oldest (those behind it wait for it).
        Ok(self.row(
            "SELECT MIN(o.next_at_ms) FROM webhook_outbox o WHERE o.state = 0
             AND o.seq = (SELECT MIN(p.seq) FROM webhook_outbox p WHERE p.state = 0
               AND p.endpoint = o.endpoint AND p.room = o.room)",
            [],
            |r| r.get(0),
        )?)
    }

    fn attempted(&mut self, seq: i64, outcome: Attempt, error: Option<&str>) -> R<()> {
        match outcome {
            Attempt::Delivered => {
                self.exec(&sql::sqlite(sql::ATTEMPTED), [seq])?;
            }
            Attempt::Retry { at_ms } => {
                self.exec(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_at_ms = ?2,
                     last_error = ?3 WHERE seq = ?1",
                    params![seq, at_ms, error],
                )?;
            }
            Attempt::Failed => {
                self.exec(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, state = 2,
                     last_error = ?2 WHERE seq = ?1",
                    params![seq, error],
                )?;
            }
        }
        Ok(())
    }
}
