//! PostgreSQL, where a cluster keeps what must outlive Redis: rooms, call history and the
//! webhook outbox (docs/architecture.md, "Durable records in a cluster"). A pool of
//! connections (deadpool-postgres over tokio-postgres); versioned migrations applied at start
//! under a lock, so nodes starting together migrate once.
//!
//! The history's statements ([`Db`]) run on the history writer's thread and on the blocking
//! pool, one round trip each, driven by the runtime's handle. Changes to a room's history take
//! a transaction lock on the room, so two nodes recording in the same room serialize.

use super::{Attempt, CallRow, Db, NewEvent, NewSession, Pending, R, SessionRow, sql};
use crate::persist::store::{Store, StoreError};
use bluecam_proto::{Identity, Room, RoomId};
use deadpool_postgres::{Pool, Transaction};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// The schema, one step per version (`bluecam_schema.version` says how many have run). A step
/// is never edited once released.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE rooms (
        id TEXT PRIMARY KEY,
        owner TEXT,
        members TEXT,
        created_at BIGINT NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX rooms_in_order ON rooms (created_at, id);
    CREATE TABLE participants (
        session TEXT PRIMARY KEY,
        room TEXT NOT NULL,
        node TEXT NOT NULL,
        peer TEXT NOT NULL,
        identity TEXT NOT NULL,
        name TEXT,
        joined_at_ms BIGINT NOT NULL,
        left_at_ms BIGINT,
        detached_at_ms BIGINT,
        reason TEXT
    );
    CREATE INDEX participants_by_room ON participants (room, joined_at_ms);
    CREATE INDEX participants_open ON participants (room) WHERE left_at_ms IS NULL;
    CREATE INDEX participants_open_by_node ON participants (node) WHERE left_at_ms IS NULL;
    CREATE TABLE calls (
        id TEXT PRIMARY KEY,
        room TEXT NOT NULL,
        owner TEXT,
        members TEXT,
        started_at_ms BIGINT NOT NULL,
        ended_at_ms BIGINT
    );
    CREATE INDEX calls_by_room ON calls (room, started_at_ms, id);
    CREATE INDEX calls_by_time ON calls (started_at_ms);
    CREATE TABLE webhook_outbox (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        room TEXT NOT NULL,
        type TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at_ms BIGINT NOT NULL,
        next_at_ms BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        state SMALLINT NOT NULL DEFAULT 0,
        claimed_until_ms BIGINT,
        claimed_by TEXT,
        last_error TEXT
    );
    CREATE INDEX webhook_outbox_order ON webhook_outbox (endpoint, room, seq) WHERE state = 0;
    CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at_ms) WHERE state = 0;
    CREATE TABLE node_state (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
",
    // 2: retention finds what ended before a time without reading every row.
    "
    CREATE INDEX participants_left ON participants (left_at_ms) WHERE left_at_ms IS NOT NULL;
    CREATE INDEX webhook_outbox_failed ON webhook_outbox (next_at_ms) WHERE state = 2;
",
    // 3: identities removed from a room by the backend (`Room::removed`), beside the room's
    // body (a change of the room writes the body, never these).
    "
    CREATE TABLE room_removals (
        room TEXT NOT NULL,
        identity TEXT NOT NULL,
        at BIGINT NOT NULL,
        PRIMARY KEY (room, identity)
    );
",
];

/// The lock every migrating node takes (any constant of ours).
const MIGRATION_LOCK: i64 = 0x6263_0001;
/// How long a node's claim on an event it is sending keeps other nodes off it: longer than
/// one attempt (5 s); a node that died mid-attempt has its events sent by another after it.
const CLAIM_MS: i64 = 30_000;

/// A PostgreSQL error with its causes in its text (the pool's "error performing TLS
/// handshake" says why only in its sources: "invalid peer certificate: UnknownIssuer").
fn pg(e: impl Into<crate::persist::store::BackendError>) -> StoreError {
    let e: crate::persist::store::BackendError = e.into();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    StoreError::Postgres(text.into())
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// The cluster's PostgreSQL. Cheap to clone.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    handle: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

impl PgStore {
    /// Connects (a pool of `size` connections) and brings the schema up to date.
    pub async fn connect(url: &str, size: usize) -> Result<Self, StoreError> {
        // (`sslmode` and `sslrootcert` as libpq reads them: postgres_tls.rs.)
        let (config, tls) = super::postgres_tls::settings(url)?;
        let manager_config = deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => deadpool_postgres::Manager::from_config(config, tls, manager_config),
            None => deadpool_postgres::Manager::from_config(
                config,
                tokio_postgres::NoTls,
                manager_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(pg)?;
        let store = Self {
            pool,
            handle: tokio::runtime::Handle::current(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Whether this store's connections are encrypted (PostgreSQL's own view of one).
    pub async fn connection_is_tls(&self) -> Result<bool, StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pg)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let result = async {
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS bluecam_schema (version INTEGER NOT NULL)",
                )
                .await
                .map_err(pg)?;
            let current: i32 = client
                .query_opt("SELECT version FROM bluecam_schema", &[])
                .await
                .map_err(pg)?
                .map_or(0, |r| r.get(0));
            let current = usize::try_from(current).unwrap_or(0);
            if current > MIGRATIONS.len() {
                return Err(StoreError::NewerSchema {
                    what: "database",
                    found: current,
                    supported: MIGRATIONS.len(),
                });
            }
            for (n, step) in MIGRATIONS.iter().enumerate().skip(current) {
                let tx = client.transaction().await.map_err(pg)?;
                tx.batch_execute(step).await.map_err(pg)?;
                let version = i32::try_from(n + 1).unwrap_or(i32::MAX);
                tx.execute("DELETE FROM bluecam_schema", &[])
                    .await
                    .map_err(pg)?;
                tx.execute(
                    "INSERT INTO bluecam_schema (version) VALUES ($1)",
                    &[&version],
                )
                .await
                .map_err(pg)?;
                tx.commit().await.map_err(pg)?;
                tracing::info!(version = n + 1, "postgres schema migrated");
            }
            Ok(())
        }
        .await;
        let _ = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }

    /// Runs `f` in one transaction, on this thread (not an async one: the writer thread or
    /// the blocking pool).
    pub fn transaction<T>(&self, f: impl FnOnce(&mut dyn Db) -> R<T>) -> R<T> {
        let h = &self.handle;
        let mut client = h.block_on(self.pool.get()).map_err(pg)?;
        let tx = h.block_on(client.transaction()).map_err(pg)?;
        let out = f(&mut Pg { tx: &tx, h })?;
        h.block_on(tx.commit()).map_err(pg)?;
        Ok(out)
    }

    /// Whether the database answers.
    pub async fn check(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await.map_err(pg)?;
        client.execute("SELECT 1", &[]).await.map_err(pg)?;
        Ok(())
    }
}

/// One transaction, as [`Db`].
struct Pg<'a, 't> {
    tx: &'a Transaction<'t>,
    h: &'a tokio::runtime::Handle,
}

type Params<'p> = &'p [&'p (dyn ToSql + Sync)];

impl Pg<'_, '_> {
    fn exec(&self, sql: &str, params: Params<'_>) -> R<u64> {
        self.h.block_on(self.tx.execute(sql, params)).map_err(pg)
    }

    fn rows(&self, sql: &str, params: Params<'_>) -> R<Vec<tokio_postgres::Row>> {
        self.h.block_on(self.tx.query(sql, params)).map_err(pg)
    }

    fn row(&self, sql: &str, params: Params<'_>) -> R<Option<tokio_postgres::Row>> {
        self.h.block_on(self.tx.query_opt(sql, params)).map_err(pg)
    }
}

fn alive_key(node: &str) -> String {
    format!("alive:{node}")
}

fn session_row(r: &tokio_postgres::Row) -> SessionRow {
    SessionRow {
        peer: r.get(0),
        identity: r.get(1),
        name: r.get(2),
        joined_at_ms: u(r.get(3)),
        left_at_ms: r.get::<_, Option<i64>>(4).map(u),
    }
}

impl Db for Pg<'_, '_> {
    fn lock_room(&mut self, room: &str) -> R<()> {
        self.exec("SELECT pg_advisory_xact_lock(7, hashtext($1))", &[&room])?;
        Ok(())
    }

    fn insert_session(&mut self, s: &NewSession<'_>) -> R<bool> {
        Ok(self.exec(
            "INSERT INTO participants (session, room, node, peer, identity, name, joined_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (session) DO NOTHING",
            &[
                &s.session,
                &s.room,
                &s.node,
                &s.peer,
                &s.identity,
                &s.name,
                &i(s.joined_at_ms),
            ],
        )? > 0)
    }

    fn attach(&mut self, session: &str, node: &str) -> R<bool> {
        let reopened = self.exec(sql::REOPEN_TIMED_OUT, &[&session])? > 0;
        self.exec(sql::ATTACH_HERE, &[&session, &node])?;
        Ok(reopened)
    }

    fn open_session(&mut self, session: &str, node: &str) -> R<Option<(SessionRow, Option<u64>)>> {
        Ok(self
            .row(
                "SELECT peer, identity, name, joined_at_ms, left_at_ms, detached_at_ms
                 FROM participants WHERE session = $1 AND node = $2 AND left_at_ms IS NULL",
                &[&session, &node],
            )?
            .map(|r| (session_row(&r), r.get::<_, Option<i64>>(5).map(u))))
    }

    fn close_session(&mut self, session: &str, left_ms: u64, reason: &str) -> R<()> {
        self.exec(sql::CLOSE_SESSION, &[&session, &i(left_ms), &reason])?;
        Ok(())
    }

    fn open_sessions(&mut self, room: &str, node: Option<&str>) -> R<Vec<String>> {
        Ok(self
            .rows(
                "SELECT session FROM participants WHERE room = $1 AND left_at_ms IS NULL
                 AND ($2::TEXT IS NULL OR node = $2) ORDER BY joined_at_ms",
                &[&room, &node],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn open_call(&mut self, room: &str) -> R<Option<(String, u64)>> {
        Ok(self
            .row(sql::OPEN_CALL, &[&room])?
            .map(|r| (r.get(0), u(r.get(1)))))
    }

    fn room_owner(&mut self, room: &str) -> R<(Option<String>, Option<String>)> {
        Ok(self
            .row(sql::ROOM_OWNER, &[&room])?
            .map_or((None, None), |r| (r.get(0), r.get(1))))
    }

    fn insert_call(
        &mut self,
        id: &str,
        room: &str,
        owner: Option<&str>,
        members: Option<&str>,
        at_ms: u64,
    ) -> R<()> {
        self.exec(sql::INSERT_CALL, &[&id, &room, &owner, &members, &i(at_ms)])?;
        Ok(())
    }

    fn end_call(&mut self, id: &str, ended_ms: u64) -> R<()> {
        self.exec(sql::END_CALL, &[&id, &i(ended_ms)])?;
        Ok(())
    }

    fn call_row(&mut self, id: &str) -> R<Option<(String, u64, Option<u64>)>> {
        Ok(self
            .row(sql::CALL_ROW, &[&id])?
            .map(|r| (r.get(0), u(r.get(1)), r.get::<_, Option<i64>>(2).map(u))))
    }

    fn sessions_between(&mut self, room: &str, from: u64, to: Option<u64>) -> R<Vec<SessionRow>> {
        Ok(self
            .rows(
                sql::SESSIONS_BETWEEN,
                &[&room, &i(from), &to.map_or(i64::MAX, i)],
            )?
            .iter()
            .map(session_row)
            .collect())
    }

    fn insert_event(&mut self, e: &NewEvent<'_>) -> R<()> {
        self.exec(
            sql::INSERT_EVENT,
            &[
                &e.id,
                &e.endpoint,
                &e.room,
                &e.event_type,
                &e.body,
                &i(e.at_ms),
            ],
        )?;
        Ok(())
    }

    fn set_alive(&mut self, node: &str, at_ms: u64) -> R<()> {
        self.exec(sql::SET_ALIVE, &[&alive_key(node), &i(at_ms)])?;
        Ok(())
    }

    fn alive(&mut self, node: &str) -> R<Option<u64>> {
        Ok(self
            .row(sql::ALIVE, &[&alive_key(node)])?
            .map(|r| u(r.get(0))))
    }

    fn node_sessions(&mut self, node: &str) -> R<Vec<(String, String)>> {
        Ok(self
            .rows(sql::NODE_SESSIONS, &[&node])?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn detach_node(&mut self, node: &str, at_ms: u64) -> R<()> {
        self.exec(sql::DETACH_NODE, &[&node, &i(at_ms)])?;
        Ok(())
    }

    fn dead_sessions(&mut self, me: &str, before_ms: u64) -> R<Vec<(String, String, String, u64)>> {
        Ok(self
            .rows(
                "SELECT p.room, p.session, p.node, COALESCE(n.value, p.joined_at_ms) FROM participants p
                 LEFT JOIN node_state n ON n.key = 'alive:' || p.node
                 WHERE p.left_at_ms IS NULL AND p.node <> $1 AND COALESCE(n.value, 0) < $2
                 ORDER BY p.joined_at_ms LIMIT 1000",
                &[&me, &i(before_ms)],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), u(r.get(3))))
            .collect())
    }

    fn call_ids(
        &mut self,
        room: &str,
        before: Option<(u64, String)>,
        limit: usize,
    ) -> R<Vec<String>> {
        let (at, id) = before.unwrap_or((i64::MAX as u64, String::new()));
        Ok(self
            .rows(sql::CALL_IDS, &[&room, &i(at), &id, &i(limit as u64)])?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn call_position(&mut self, id: &str) -> R<Option<(u64, String)>> {
        Ok(self
            .row(sql::CALL_POSITION, &[&id])?
            .map(|r| (u(r.get(0)), r.get(1))))
    }

    fn calls_between(&mut self, from_ms: u64, to_ms: u64) -> R<Vec<CallRow>> {
        Ok(self
            .rows(sql::CALLS_BETWEEN, &[&i(from_ms), &i(to_ms)])?
            .iter()
            .map(|r| CallRow {
                room: r.get(0),
                started: u(r.get(1)),
                ended: r.get::<_, Option<i64>>(2).map(u),
                owner: r.get(3),
                members: r.get(4),
            })
            .collect())
    }

    fn prune(&mut self, before_ms: u64, limit: usize) -> R<[usize; 3]> {
        let mut out = [0; 3];
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        for (n, statement) in out.iter_mut().zip(sql::PRUNE) {
            *n = usize::try_from(self.exec(statement, &[&i(before_ms), &limit])?).unwrap_or(0);
        }
        Ok(out)
    }

    fn connected_sessions(&mut self, room: &str) -> R<usize> {
        let n: i64 = self
            .row(sql::CONNECTED_SESSIONS, &[&room])?
            .map_or(0, |r| r.get(0));
        Ok(usize::try_from(n).unwrap_or(0))
    }

    fn detach(&mut self, session: &str, at_ms: u64) -> R<()> {
        self.exec(sql::DETACH, &[&session, &i(at_ms)])?;
        Ok(())
    }

    fn pending_events(&mut self) -> R<i64> {
        Ok(self.row(sql::PENDING_EVENTS, &[])?.map_or(0, |r| r.get(0)))
    }

    fn due_events(&mut self, now: u64, limit: usize, node: &str) -> R<Vec<Pending>> {
        // Claimed in the same statement (rows another node is claiming are skipped), so each
        // event is sent by one node at a time.
        let mut due: Vec<Pending> = self
            .rows(
                "UPDATE webhook_outbox SET claimed_until_ms = $1 + $4, claimed_by = $3
                 WHERE seq IN (
                   SELECT o.seq FROM webhook_outbox o
                   WHERE o.state = 0 AND o.next_at_ms <= $1
                     AND (o.claimed_until_ms IS NULL OR o.claimed_until_ms < $1)
                     AND o.seq = (SELECT MIN(p.seq) FROM webhook_outbox p WHERE p.state = 0
                                  AND p.endpoint = o.endpoint AND p.room = o.room)
                   ORDER BY o.seq LIMIT $2
                   FOR UPDATE SKIP LOCKED)
                 RETURNING seq, id, endpoint, body, attempts, created_at_ms",
                &[&i(now), &i(limit as u64), &node, &CLAIM_MS],
            )?
            .iter()
            .map(|r| Pending {
                seq: r.get(0),
                id: r.get(1),
                endpoint: r.get(2),
                body: r.get(3),
                attempts: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
                created_at_ms: u(r.get(5)),
            })
            .collect();
        due.sort_by_key(|p| p.seq);
        Ok(due)
    }

    fn next_due(&mut self) -> R<Option<u64>> {
        Ok(self
            .row(
                // Over the events that can be due: each room's oldest (those behind it wait).
                "SELECT MIN(GREATEST(o.next_at_ms, COALESCE(o.claimed_until_ms, 0)))
                 FROM webhook_outbox o WHERE o.state = 0 AND o.seq = (SELECT MIN(p.seq)
                   FROM webhook_outbox p WHERE p.state = 0 AND p.endpoint = o.endpoint
                   AND p.room = o.room)",
                &[],
            )?
            .and_then(|r| r.get::<_, Option<i64>>(0))
            .map(u))
    }

    fn attempted(&mut self, seq: i64, outcome: Attempt, error: Option<&str>) -> R<()> {
        match outcome {
            Attempt::Delivered => {
                self.exec(sql::ATTEMPTED, &[&seq])?;
            }
            Attempt::Retry { at_ms } => {
                self.exec(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, next_at_ms = $2,
                     last_error = $3, claimed_until_ms = NULL WHERE seq = $1",
                    &[&seq, &i(at_ms), &error],
                )?;
            }
            Attempt::Failed => {
                self.exec(
                    "UPDATE webhook_outbox SET attempts = attempts + 1, state = 2,
                     last_error = $2, claimed_until_ms = NULL WHERE seq = $1",
                    &[&seq, &error],
                )?;
            }
        }
        Ok(())
    }
}

/// A cluster's rooms: kept in PostgreSQL, and mirrored in Redis (`live`), where the
/// membership scripts need them (a join checks that its room exists in the same atomic step
/// as it takes a seat). A room Redis lost is put back there from PostgreSQL when it is next
/// read.
pub struct ClusterRooms {
    pub pg: PgStore,
    pub live: Arc<dyn Store>,
}

fn pg_err(e: impl Into<crate::persist::store::BackendError>) -> StoreError {
    pg(e)
}

/// The rooms table's statements (used inside [`ClusterRooms::with`]).
struct PgRooms;

impl PgRooms {
    fn insert(db: &mut Pg<'_, '_>, room: &Room) -> R<bool> {
        let body = serde_json::to_string(room).map_err(pg)?;
        let members = room
            .members
            .as_ref()
            .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
        Ok(db.exec(
            "INSERT INTO rooms (id, owner, members, created_at, body) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO NOTHING",
            &[
                &room.id.as_str(),
                &room.owner.as_ref().map(Identity::as_str),
                &members,
                &i(room.created_at),
                &body,
            ],
        )? > 0)
    }
}

impl std::fmt::Debug for ClusterRooms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterRooms")
    }
}

/// Runs a rooms statement in its own transaction on the blocking pool.
async fn rooms_tx<T: Send + 'static>(
    pg: &PgStore,
    f: impl FnOnce(&mut Pg<'_, '_>) -> R<T> + Send + 'static,
) -> R<T> {
    let pg = pg.clone();
    tokio::task::spawn_blocking(move || {
        let h = pg.handle.clone();
        let mut client = h.block_on(pg.pool.get()).map_err(pg_err)?;
        let tx = h.block_on(client.transaction()).map_err(pg_err)?;
        let out = f(&mut Pg { tx: &tx, h: &h })?;
        h.block_on(tx.commit()).map_err(pg_err)?;
        Ok(out)
    })
    .await?
}

fn room_of(body: &str) -> Option<Room> {
    serde_json::from_str(body).ok()
}

impl Store for ClusterRooms {
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let r = room.clone();
            if !rooms_tx(&self.pg, move |db| PgRooms::insert(db, &r)).await? {
                return Err(StoreError::Exists);
            }
            // Durable now: a Redis that could not take the copy gets it when the room is next
            // read.
            match self.live.create_room(room).await {
                Ok(()) | Err(StoreError::Exists) => {}
                Err(e) => tracing::warn!(error = %e, "room not mirrored in Redis yet"),
            }
            Ok(())
        })
    }

    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>> {
        Box::pin(async move {
            if let Some(room) = self.live.room(id.clone()).await? {
                return Ok(Some(room));
            }
            let key = id.to_string();
            let room = rooms_tx(&self.pg, move |db| {
                Ok(db
                    .row("SELECT body FROM rooms WHERE id = $1", &[&key])?
                    .and_then(|r| room_of(&r.get::<_, String>(0))))
            })
            .await?;
            if let Some(room) = &room
                && !self.live.recently_deleted(&id).await?
            {
                // Redis lost it (a restart without persistence): put it back (not a room an
                // expiry is deleting: Redis first, then here), its removals first.
                let key = id.to_string();
                let removed = rooms_tx(&self.pg, move |db| {
                    Ok(db
                        .rows(
                            "SELECT identity, at FROM room_removals WHERE room = $1",
                            &[&key],
                        )?
                        .iter()
                        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1)))
                        .collect::<Vec<_>>())
                })
                .await?;
                match self.live.create_room(room.clone()).await {
                    Ok(()) | Err(StoreError::Exists) => {}
                    Err(e) => return Err(e),
                }
                for (who, at) in removed {
                    let at = u64::try_from(at).unwrap_or(0);
                    self.live
                        .remove_identity(id.clone(), Identity::new(who), at)
                        .await?;
                }
                tracing::info!(room = %room.id, "room put back into Redis from PostgreSQL");
                return self.live.room(id).await;
            }
            Ok(None)
        })
    }

    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>> {
        Box::pin(async move {
            let mut rooms = rooms_tx(&self.pg, |db| {
                Ok(db
                    .rows("SELECT body FROM rooms ORDER BY created_at, id", &[])?
                    .iter()
                    .filter_map(|r| room_of(&r.get::<_, String>(0)))
                    .collect::<Vec<Room>>())
            })
            .await?;
            if let Some(member) = member {
                crate::persist::store::retain_involving(&mut rooms, &member);
            }
            Ok(rooms)
        })
    }

    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            // The durable row first: a read between the two steps finds the Redis copy (and
            // the join it serves is ended by the Redis delete), never a room to put back.
            let key = id.to_string();
            let durable = rooms_tx(&self.pg, move |db| {
                db.exec("DELETE FROM room_removals WHERE room = $1", &[&key])?;
                Ok(db.exec("DELETE FROM rooms WHERE id = $1", &[&key])? > 0)
            })
            .await?;
            let live = self.live.delete_room(id).await?;
            Ok(live || durable)
        })
    }

    fn update_room(&self, room: Room) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let body = serde_json::to_string(&room).map_err(pg_err)?;
            let key = room.id.to_string();
            let durable = rooms_tx(&self.pg, move |db| {
                Ok(db.exec("UPDATE rooms SET body = $2 WHERE id = $1", &[&key, &body])? > 0)
            })
            .await?;
            if durable {
                // (A Redis that lacks the room gets the new copy when it is next read.)
                self.live.update_room(room).await?;
            }
            Ok(durable)
        })
    }

    fn remove_identity(
        &self,
        id: RoomId,
        identity: Identity,
        at: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let (key, who) = (id.to_string(), identity.to_string());
            let stamp = i64::try_from(at).unwrap_or(i64::MAX);
            let durable = rooms_tx(&self.pg, move |db| {
                if db
                    .row("SELECT 1 FROM rooms WHERE id = $1", &[&key])?
                    .is_none()
                {
                    return Ok(false);
                }
                db.exec(
                    "INSERT INTO room_removals (room, identity, at) VALUES ($1, $2, $3)
                     ON CONFLICT (room, identity)
                     DO UPDATE SET at = GREATEST(room_removals.at, EXCLUDED.at)",
                    &[&key, &who, &stamp],
                )?;
                Ok(true)
            })
            .await?;
            if durable {
                // (A Redis that lacks the room gets it, with this, when it is next read.)
                self.live.remove_identity(id, identity, at).await?;
            }
            Ok(durable)
        })
    }

    fn delete_empty_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            // Redis checks emptiness and deletes in one step; then the durable record goes.
            if !self.live.delete_empty_room(id.clone()).await? {
                return Ok(false);
            }
            let key = id.to_string();
            rooms_tx(&self.pg, move |db| {
                db.exec("DELETE FROM room_removals WHERE room = $1", &[&key])?;
                db.exec("DELETE FROM rooms WHERE id = $1", &[&key])?;
                Ok(())
            })
            .await?;
            Ok(true)
        })
    }

    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.live.touch_room(id, at)
    }

    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>> {
        self.live.expired_rooms(now)
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.pg.check().await?;
            self.live.check().await
        })
    }
}
