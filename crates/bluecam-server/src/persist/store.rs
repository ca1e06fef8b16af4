//! Where rooms live. [`Store`] is the seam between the room logic and storage: the
//! single-node default is [`SqliteStore`] (one file under the data dir); cluster mode puts a
//! Redis implementation behind the same trait. The data dir and the SQLite files in it are
//! private to the server's user (Unix: 0700 and 0600): they hold session digests, the call
//! history and the webhook endpoints.

use bluecam_proto::{Identity, PeerInfo, Permissions, RawValue, Room, RoomId, SessionId};
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use std::{
    path::Path,
    sync::{Arc, Mutex},
};
use tokio::sync::{mpsc, oneshot};

/// A boxed error of a backend's client, kept as the source.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// A storage failure. `Exists` is the caller's fault; the others are the server's, each with
/// its source (shown in the server's log, never to a client; the text names the source's own,
/// since logs print errors with `Display`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a room with this id exists already")]
    Exists,
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("PostgreSQL: {0}")]
    Postgres(#[source] BackendError),
    #[error("Redis: {0}")]
    Redis(#[source] BackendError),
    #[error("{0}")]
    Directory(#[from] crate::directory::BrokerError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the {what} has schema version {found}, newer than this build's {supported}: run the \
         newer bluecam (downgrades are not supported)"
    )]
    NewerSchema {
        what: &'static str,
        found: usize,
        supported: usize,
    },
    #[error("the store's lock was poisoned by a panic")]
    Poisoned,
    #[error("the store's worker task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the {0} writer is gone")]
    WriterGone(&'static str),
    /// The outcome of a batch, handed to every waiter of it.
    #[error("{0}")]
    Shared(#[from] std::sync::Arc<StoreError>),
}

/// A queued write's outcome, as each of its waiters gets it.
pub type Committed = Result<(), std::sync::Arc<StoreError>>;

/// Persistent rooms. `peer_count` is not stored: callers fill it from the live driver.
pub trait Store: Send + Sync + 'static {
    /// Saves a new room; `Exists` when the id is taken.
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>>;
    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>>;
    /// All rooms, or those where `member` is the owner or a member; oldest first.
    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>>;
    /// Removes a room; false when there was none.
    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Writes a changed room over the stored one (`PATCH`); false when there is none. Its
    /// removals (`Room::removed`) are the store's, never written over.
    fn update_room(&self, room: Room) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Records that the app's backend removed `identity` from the room at `at` (Unix
    /// seconds): its tokens issued then or before are refused from now on
    /// ([`Room::revoked`]). False when there is no such room.
    fn remove_identity(
        &self,
        room: RoomId,
        identity: Identity,
        at: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Removes a room that expired empty, only if it is still empty (in a cluster the check
    /// and the removal are one step, so a join on another node cannot slip in between); false
    /// when nothing was removed. On one node the caller has checked the driver already.
    fn delete_empty_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.delete_room(id)
    }
    /// Records that the room was last occupied at `at` (Unix seconds), for `emptyTimeoutSecs`.
    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Rooms with an empty timeout whose last occupation is older than it at `now`.
    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>>;
    /// Whether the store answers (for `/readyz`).
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Whether this store deleted the room a moment ago (a cluster's Redis keeps a tombstone
    /// for an hour), so a durable copy still being deleted is not put back.
    fn recently_deleted(&self, _id: &RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async { Ok(false) })
    }
}

/// Keeps the rooms `member` owns or is a member of (stores that cannot filter in a query).
pub(crate) fn retain_involving(rooms: &mut Vec<Room>, member: &Identity) {
    rooms.retain(|r| {
        r.owner.as_ref() == Some(member) || r.members.as_ref().is_some_and(|m| m.contains(member))
    });
}

/// Rooms in one SQLite file. One connection behind one mutex: SQLite serializes writers
/// anyway, and every statement here is a short indexed lookup, run off the async threads.
/// Rooms read or created are also kept in memory ([`RoomCache`]), so a join, which reads its
/// room, takes neither the connection's lock nor a thread of the blocking pool.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    cache: Arc<Mutex<RoomCache>>,
}

/// The rooms this process has read or created, up to [`RoomCache::CAPACITY`] (an arbitrary
/// one makes way past that). A copy is right until its room is changed (`PATCH`: the new one
/// replaces it) or deleted (it goes), each after its commit. `changes` stops a read that began
/// before a change or a delete from putting the old room back after it.
#[derive(Debug, Default)]
struct RoomCache {
    rooms: std::collections::HashMap<RoomId, Room>,
    changes: u64,
}

impl RoomCache {
    /// About 300 bytes each, so at most some 20 MB.
    const CAPACITY: usize = 65_536;

    fn lock(cache: &Mutex<Self>) -> std::sync::MutexGuard<'_, Self> {
        // Only a copy: one that a panic left half-written is still a map of rooms.
        cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a room read from the database, unless a change or a delete ran since the read
    /// began (when the count of changes was `seen`): the copy could be of a room changed or
    /// gone since.
    fn fill(&mut self, room: &Room, seen: u64) {
        if self.changes == seen {
            self.put(room.clone());
        }
    }

    /// After a room's change is committed.
    fn replace(&mut self, room: Room) {
        self.changes += 1;
        self.put(room);
    }

    /// After a room's delete is committed.
    fn forget(&mut self, id: &RoomId) {
        self.changes += 1;
        self.rooms.remove(id);
    }

    fn put(&mut self, room: Room) {
        if self.rooms.len() >= Self::CAPACITY && !self.rooms.contains_key(&room.id) {
            let evicted = self.rooms.keys().next().cloned();
            if let Some(id) = evicted {
                self.rooms.remove(&id);
            }
        }
        self.rooms.insert(room.id.clone(), room);
    }
}

/// Set on every connection (not part of a migration).
const PRAGMAS: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
PRAGMA busy_timeout = 5000;
";

/// The schema, one step per version (`PRAGMA user_version` says how many have run). A step
/// is never edited once released: a new binary on an old data dir runs the steps it lacks, in
/// one transaction each, so an upgrade keeps every room and session (docs/architecture.md,
/// "What survives what").
const MIGRATIONS: &[&str] = &[
    // 1: rooms (a data dir from before versioning has this table already).
    "CREATE TABLE IF NOT EXISTS rooms (
        id TEXT PRIMARY KEY NOT NULL,
        name TEXT,
        description TEXT,
        owner TEXT,
        members TEXT,
        max_peers INTEGER NOT NULL,
        empty_timeout_secs INTEGER,
        metadata TEXT,
        created_at INTEGER NOT NULL,
        last_active_at INTEGER NOT NULL
    );",
    // 2: durable sessions (a restart keeps every call), and the one-seat-per-identity option.
    "ALTER TABLE rooms ADD COLUMN multiple_sessions INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE sessions (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        room TEXT NOT NULL,
        peer TEXT NOT NULL,
        info TEXT NOT NULL,
        permissions TEXT NOT NULL,
        secret_sha256 BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_room ON sessions (room);",
    // 3: call history and the webhook outbox (their statements are in history/sqlite.rs; the
    // file's schema is all here, so that one module owns the file).
    "
    CREATE TABLE participants (
        session TEXT PRIMARY KEY NOT NULL,
        room TEXT NOT NULL,
        node TEXT NOT NULL,
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
",
    // 4: retention finds the sessions that ended before a time without reading every row
    // (failed webhook events: `webhook_outbox_due` already).
    "CREATE INDEX participants_left ON participants (left_at_ms) WHERE left_at_ms IS NOT NULL;",
    // 5: identities removed from a room by the backend, with when (a JSON object; NULL: none).
    "ALTER TABLE rooms ADD COLUMN removed TEXT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the schema to [`SCHEMA_VERSION`]; refuses a data dir written by a newer build.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            what: "data dir",
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i + 1)?;
        tx.commit()?;
        if current > 0 || i > 0 {
            tracing::info!(version = i + 1, "store schema migrated");
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, name, description, owner, members, max_peers, empty_timeout_secs, \
     metadata, created_at, multiple_sessions, removed";

/// The SQLite file in the data dir.
const DB_FILE: &str = "bluecam.sqlite3";
/// The files SQLite keeps beside it in WAL mode (it gives them the mode of the main file).
#[cfg(unix)]
const DB_SIDE_FILES: [&str; 2] = ["bluecam.sqlite3-wal", "bluecam.sqlite3-shm"];

/// Unix mode of the data dir: its user only.
#[cfg(unix)]
const DIR_MODE: u32 = 0o700;
/// Unix mode of the files in the data dir.
#[cfg(unix)]
const FILE_MODE: u32 = 0o600;

/// Creates the data dir (and its parents) private to this user, or makes an existing one
/// private if its group or others may use it (said once, at info).
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)?;
        make_private(dir, DIR_MODE)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Takes the group's and others' access away from `path` if they have any (logged once, at
/// info: a data dir from an older release, or made by hand).
#[cfg(unix)]
fn make_private(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let was = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if was & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        tracing::info!(
            path = %path.display(),
            was = format_args!("{was:o}"),
            now = format_args!("{mode:o}"),
            "made private to this user (the group or others could read it)"
        );
    }
    Ok(())
}

/// Creates the SQLite file 0600 if it is not there (SQLite makes `-wal` and `-shm` with the
/// mode of the main file, so they are 0600 too), and makes existing ones private.
#[cfg(unix)]
fn create_db_file(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = dir.join(DB_FILE);
    // An empty file is a new database to SQLite.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(&path)?;
    make_private(&path, FILE_MODE)?;
    for side in DB_SIDE_FILES {
        match make_private(&dir.join(side), FILE_MODE) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn create_db_file(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

impl SqliteStore {
    /// Opens (or creates) `dir/bluecam.sqlite3`, the dir and its files private to this user.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |what: &'static str, source: std::io::Error| StoreError::Io {
            what,
            path: dir.to_owned(),
            source,
        };
        create_data_dir(dir).map_err(|e| io("cannot create the data dir", e))?;
        create_db_file(dir).map_err(|e| io("cannot create the database file in", e))?;
        let mut conn = Connection::open(dir.join(DB_FILE))?;
        conn.execute_batch(PRAGMAS)?;
        // Every statement of the store, the session log and the history stays prepared (they
        // are some 40; rusqlite keeps 16 by default).
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        // A restart forgets who was in which room, so every room counts as occupied until now:
        // `emptyTimeoutSecs` runs from this start, never from an occupation before it.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        conn.execute(
            "UPDATE rooms SET last_active_at = ?1 WHERE last_active_at < ?1",
            [now],
        )?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            cache: Arc::default(),
        })
    }

    /// The connection, for the history writer and its queries (history.rs).
    pub(crate) fn connection(&self) -> Arc<Mutex<Connection>> {
        Arc::clone(&self.conn)
    }

    /// Runs `f` with the connection on the blocking pool.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn.lock().map_err(|_| StoreError::Poisoned)?;
                f(&mut guard)
            })
            .await?
        })
    }
}

/// A room's removals as stored (empty when it has none, or there is no such room).
fn removed_of(
    conn: &Connection,
    id: &RoomId,
) -> Result<std::collections::BTreeMap<Identity, u64>, StoreError> {
    let text: Option<Option<String>> = conn
        .prepare_cached("SELECT removed FROM rooms WHERE id = ?1")?
        .query_row([id.as_str()], |r| r.get(0))
        .optional()?;
    Ok(text
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default())
}

/// The `members` column of a room: a JSON array, or NULL without a member list.
fn members_column(room: &Room) -> Option<String> {
    room.members
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()))
}

fn row_to_room(row: &rusqlite::Row<'_>) -> rusqlite::Result<Room> {
    let members: Option<String> = row.get(4)?;
    let metadata: Option<String> = row.get(7)?;
    Ok(Room {
        id: RoomId::new(row.get::<_, String>(0)?),
        name: row.get(1)?,
        description: row.get(2)?,
        owner: row.get::<_, Option<String>>(3)?.map(Identity::new),
        members: members.and_then(|m| serde_json::from_str(&m).ok()),
        max_peers: row.get(5)?,
        empty_timeout_secs: row.get(6)?,
        metadata: metadata.and_then(|m| RawValue::from_string(m).ok()),
        created_at: row.get(8)?,
        peer_count: 0,
        multiple_sessions: row.get(9)?,
        removed: row
            .get::<_, Option<String>>(10)?
            .and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default(),
    })
}

impl Store for SqliteStore {
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>> {
        let cache = Arc::clone(&self.cache);
        self.with(move |conn| {
            let members = members_column(&room);
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO rooms (id, name, description, owner, members, max_peers,
                 empty_timeout_secs, metadata, created_at, last_active_at, multiple_sessions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)",
                params![
                    room.id.as_str(),
                    room.name,
                    room.description,
                    room.owner.as_ref().map(Identity::as_str),
                    members,
                    room.max_peers,
                    room.empty_timeout_secs,
                    room.metadata.as_ref().map(|m| m.get()),
                    room.created_at,
                    room.multiple_sessions,
                ],
            )?;
            if inserted == 0 {
                Err(StoreError::Exists)
            } else {
                RoomCache::lock(&cache).put(room);
                Ok(())
            }
        })
    }

    fn update_room(&self, room: Room) -> BoxFuture<'_, Result<bool, StoreError>> {
        let cache = Arc::clone(&self.cache);
        self.with(move |conn| {
            let members = members_column(&room);
            let updated = conn.execute(
                "UPDATE rooms SET name = ?2, description = ?3, members = ?4, max_peers = ?5,
                 empty_timeout_secs = ?6, metadata = ?7 WHERE id = ?1",
                params![
                    room.id.as_str(),
                    room.name,
                    room.description,
                    members,
                    room.max_peers,
                    room.empty_timeout_secs,
                    room.metadata.as_ref().map(|m| m.get()),
                ],
            )? > 0;
            // (Under the connection's lock: no delete or removal can come between the write
            // and this.)
            if updated {
                let mut room = room;
                room.removed = removed_of(conn, &room.id)?;
                RoomCache::lock(&cache).replace(room);
            }
            Ok(updated)
        })
    }

    fn remove_identity(
        &self,
        id: RoomId,
        identity: Identity,
        at: u64,
    ) -> BoxFuture<'_, Result<bool, StoreError>> {
        let cache = Arc::clone(&self.cache);
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let Some(mut room) = tx
                .prepare_cached(&format!("SELECT {COLUMNS} FROM rooms WHERE id = ?1"))?
                .query_row([id.as_str()], row_to_room)
                .optional()?
            else {
                return Ok(false);
            };
            let when = room.removed.entry(identity).or_default();
            *when = (*when).max(at);
            let removed = serde_json::to_string(&room.removed).unwrap_or_else(|_| "{}".into());
            tx.execute(
                "UPDATE rooms SET removed = ?2 WHERE id = ?1",
                params![id.as_str(), removed],
            )?;
            tx.commit()?;
            RoomCache::lock(&cache).replace(room);
            Ok(true)
        })
    }

    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>> {
        let changes = {
            let cache = RoomCache::lock(&self.cache);
            if let Some(room) = cache.rooms.get(&id) {
                let room = room.clone();
                return Box::pin(std::future::ready(Ok(Some(room))));
            }
            cache.changes
        };
        let cache = Arc::clone(&self.cache);
        self.with(move |conn| {
            let room = conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM rooms WHERE id = ?1"))?
                .query_row([id.as_str()], row_to_room)
                .optional()?;
            if let Some(room) = &room {
                RoomCache::lock(&cache).fill(room, changes);
            }
            Ok(room)
        })
    }

    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>> {
        self.with(move |conn| {
            let rooms = match member {
                None => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM rooms ORDER BY created_at, id"
                    ))?
                    .query_map([], row_to_room)?
                    .collect::<Result<Vec<_>, _>>()?,
                Some(who) => conn
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM rooms WHERE owner = ?1 OR EXISTS
                         (SELECT 1 FROM json_each(rooms.members) WHERE value = ?1)
                         ORDER BY created_at, id"
                    ))?
                    .query_map([who.as_str()], row_to_room)?
                    .collect::<Result<Vec<_>, _>>()?,
            };
            Ok(rooms)
        })
    }

    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let cache = Arc::clone(&self.cache);
        self.with(move |conn| {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM sessions WHERE room = ?1", [id.as_str()])?;
            let deleted = tx.execute("DELETE FROM rooms WHERE id = ?1", [id.as_str()])? > 0;
            tx.commit()?;
            RoomCache::lock(&cache).forget(&id);
            Ok(deleted)
        })
    }

    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |conn| {
            conn.execute(
                "UPDATE rooms SET last_active_at = ?2 WHERE id = ?1",
                params![id.as_str(), at],
            )?;
            Ok(())
        })
    }

    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>> {
        self.with(move |conn| {
            let ids = conn
                .prepare_cached(
                    "SELECT id FROM rooms WHERE empty_timeout_secs IS NOT NULL
                     AND last_active_at + empty_timeout_secs <= ?1",
                )?
                .query_map([now], |row| row.get::<_, String>(0))?
                .map(|r| r.map(RoomId::new))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ids)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
    }
}

/// A session as the single-node store keeps it, so that a restart (graceful or not) can put
/// its peer back in its room for the resume window.
#[derive(Clone, Debug)]
pub struct StoredSession {
    pub room: RoomId,
    pub info: PeerInfo,
    pub permissions: Permissions,
    pub session: SessionId,
    /// SHA-256 of the session secret; the secret itself is never written.
    pub secret_digest: [u8; 32],
}

enum SessionOp {
    Insert(Box<StoredSession>, oneshot::Sender<Committed>),
    Remove(SessionId),
    Flush(oneshot::Sender<Committed>),
}

/// Writes session records with group commit: one writer thread takes every operation waiting
/// at once and commits them in one transaction, so a join storm costs one fsync-free WAL
/// commit per batch rather than per join. Cheap to clone; the thread ends with the last clone.
///
/// The queue has no bound of its own, on purpose: no drop policy is safe for it. A dropped
/// `Remove` would bring a session that ended back after a restart (a ghost peer in its room
/// for the resume window); a dropped `Insert` would break the promise that a `joined` session
/// survives a crash. It is bounded by the driver instead: each session queues one `Insert` (its
/// join waits for the commit) and at most one `Remove`, and a join reads its room through the
/// same connection first, so while the writer is stalled on the database no new join gets as
/// far as queueing; what can wait is at most an `Insert` and a `Remove` for each session the
/// driver held when the writer stalled. A
/// database that fails (rather than stalls) does not hold the queue either: the writer
/// answers the batch with the error and goes on.
#[derive(Clone, Debug)]
pub struct SessionLog {
    tx: mpsc::UnboundedSender<SessionOp>,
}

/// Operations one transaction takes at most.
const SESSION_BATCH: usize = 4096;
/// How long the session writer waits, after an operation that found the queue empty, for
/// others to share its transaction: a `joined` is that much later, and under a storm of joins
/// each commit takes several.
const SESSION_GATHER: std::time::Duration = std::time::Duration::from_micros(500);

impl std::fmt::Debug for SessionOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Insert(..) => "Insert",
            Self::Remove(_) => "Remove",
            Self::Flush(_) => "Flush",
        })
    }
}

impl SessionLog {
    /// Queues a new session; the receiver says when it is committed (a `joined` waits for
    /// that, so a session its client holds survives a SIGKILL right after).
    pub fn insert(&self, session: StoredSession) -> oneshot::Receiver<Committed> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(SessionOp::Insert(_, done))) =
            self.tx.send(SessionOp::Insert(Box::new(session), done))
        {
            let _ = done.send(Err(Arc::new(StoreError::WriterGone("session log"))));
        }
        rx
    }

    /// Queues the removal of a session that ended (after any insert of it queued before).
    pub fn remove(&self, session: SessionId) {
        let _ = self.tx.send(SessionOp::Remove(session));
    }

    /// Waits until everything queued before is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, rx) = oneshot::channel();
        let gone = || StoreError::WriterGone("session log");
        self.tx.send(SessionOp::Flush(done)).map_err(|_| gone())?;
        Ok(rx.await.map_err(|_| gone())??)
    }
}

impl SqliteStore {
    /// Starts the session writer (a thread: its work is blocking SQLite calls).
    pub fn session_log(&self) -> std::io::Result<SessionLog> {
        let (tx, mut rx) = mpsc::unbounded_channel::<SessionOp>();
        let conn = Arc::clone(&self.conn);
        std::thread::Builder::new()
            .name("bluecam-sessions".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Group commit: joins that arrive within a moment of this one share its
                    // transaction (one commit's locks and WAL frames for many sessions).
                    if rx.is_empty() {
                        std::thread::sleep(SESSION_GATHER);
                    }
                    let mut batch = vec![first];
                    while batch.len() < SESSION_BATCH {
                        match rx.try_recv() {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    let result = match conn.lock() {
                        Ok(mut guard) => write_sessions(&mut guard, &batch),
                        Err(_) => Err(StoreError::Poisoned),
                    }
                    .map_err(Arc::new);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, ops = batch.len(), "could not write sessions");
                    }
                    for op in batch {
                        if let SessionOp::Insert(_, done) | SessionOp::Flush(done) = op {
                            let _ = done.send(result.clone());
                        }
                    }
                }
            })?;
        Ok(SessionLog { tx })
    }

    /// The sessions a restart must restore, in join order, with their rooms; sessions of rooms
    /// that no longer exist are dropped.
    pub fn stored_sessions(&self) -> Result<Vec<(Room, StoredSession)>, StoreError> {
        let conn = self.conn.lock().map_err(|_| StoreError::Poisoned)?;
        conn.execute(
            "DELETE FROM sessions WHERE room NOT IN (SELECT id FROM rooms)",
            [],
        )?;
        let mut rooms: std::collections::HashMap<String, Room> = std::collections::HashMap::new();
        let rows = conn
            .prepare(
                "SELECT room, id, info, permissions, secret_sha256 FROM sessions ORDER BY seq",
            )?
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Vec<u8>>(4)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (room_id, session, info, permissions, digest) in rows {
            let (Ok(info), Ok(permissions), Ok(secret_digest)) = (
                serde_json::from_str::<PeerInfo>(&info),
                serde_json::from_str::<Permissions>(&permissions),
                <[u8; 32]>::try_from(digest.as_slice()),
            ) else {
                tracing::warn!(%session, "unreadable session record skipped");
                continue;
            };
            let room = match rooms.get(&room_id) {
                Some(r) => r.clone(),
                None => {
                    let Some(r) = conn
                        .prepare_cached(&format!("SELECT {COLUMNS} FROM rooms WHERE id = ?1"))?
                        .query_row([&room_id], row_to_room)
                        .optional()?
                    else {
                        continue;
                    };
                    rooms.insert(room_id.clone(), r.clone());
                    r
                }
            };
            out.push((
                room,
                StoredSession {
                    room: RoomId::new(room_id),
                    info,
                    permissions,
                    session: SessionId::new(session),
                    secret_digest,
                },
            ));
        }
        Ok(out)
    }
}

fn write_sessions(conn: &mut Connection, batch: &[SessionOp]) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO sessions (id, room, peer, info, permissions, secret_sha256,
             created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut remove = tx.prepare_cached("DELETE FROM sessions WHERE id = ?1")?;
        let now = crate::unix_now();
        for op in batch {
            match op {
                SessionOp::Insert(s, _) => {
                    insert.execute(params![
                        s.session.as_str(),
                        s.room.as_str(),
                        s.info.id.as_str(),
                        serde_json::to_string(&s.info).unwrap_or_default(),
                        serde_json::to_string(&s.permissions).unwrap_or_default(),
                        &s.secret_digest[..],
                        now,
                    ])?;
                }
                SessionOp::Remove(id) => {
                    remove.execute([id.as_str()])?;
                }
                SessionOp::Flush(_) => {}
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
#[cfg(unix)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn temp() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("bluecam-store-{}", crate::auth::random_token(9)))
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Every file in `dir` (the database and its `-wal` and `-shm` among them) is 0600.
    fn assert_private(dir: &Path) {
        assert_eq!(mode(dir), 0o700, "{}", dir.display());
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            assert_eq!(mode(&path), 0o600, "{}", path.display());
            names.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
        for name in [DB_FILE].iter().chain(&DB_SIDE_FILES) {
            assert!(names.iter().any(|n| n == name), "no {name} in {names:?}");
        }
    }

    fn room(id: &str) -> Room {
        serde_json::from_value(
            serde_json::json!({ "id": id, "maxPeers": 10, "createdAt": 1, "peerCount": 0 }),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn rooms_are_read_from_memory_and_a_delete_is_seen_at_once() {
        let dir = temp();
        let store = SqliteStore::open(&dir).unwrap();
        store.create_room(room("a")).await.unwrap();
        // Gone from the database behind the store's back: still served from memory.
        let conn = store.connection();
        conn.lock()
            .unwrap()
            .execute("DELETE FROM rooms", [])
            .unwrap();
        assert!(store.room(RoomId::new("a")).await.unwrap().is_some());
        // Through the store, it is gone for every later read.
        store.create_room(room("b")).await.unwrap();
        assert!(store.delete_room(RoomId::new("b")).await.unwrap());
        assert!(store.room(RoomId::new("b")).await.unwrap().is_none());
        // A room the cache never held is read from the database, then kept.
        conn.lock()
            .unwrap()
            .execute(
                "INSERT INTO rooms (id, max_peers, created_at, last_active_at, multiple_sessions)
                 VALUES ('c', 50, 1, 1, 0)",
                [],
            )
            .unwrap();
        assert!(store.room(RoomId::new("c")).await.unwrap().is_some());
        conn.lock()
            .unwrap()
            .execute("DELETE FROM rooms", [])
            .unwrap();
        assert!(store.room(RoomId::new("c")).await.unwrap().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_read_that_began_before_a_delete_does_not_put_the_room_back() {
        let mut cache = RoomCache::default();
        let seen = cache.changes;
        // (The read finds the room; the delete commits and runs before the read is kept.)
        cache.forget(&RoomId::new("a"));
        cache.fill(&room("a"), seen);
        assert!(cache.rooms.is_empty());
        cache.fill(&room("a"), cache.changes);
        assert_eq!(cache.rooms.len(), 1);
    }

    #[test]
    fn a_read_that_began_before_a_change_does_not_put_the_old_room_back() {
        let mut cache = RoomCache::default();
        let seen = cache.changes;
        let mut changed = room("a");
        changed.name = Some("changed".into());
        // (The read finds the old room; the change commits and runs before the read is kept.)
        cache.replace(changed);
        cache.fill(&room("a"), seen);
        assert_eq!(
            cache.rooms[&RoomId::new("a")].name.as_deref(),
            Some("changed")
        );
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let mut cache = RoomCache::default();
        for i in 0..RoomCache::CAPACITY + 10 {
            cache.put(room(&format!("r{i}")));
        }
        assert_eq!(cache.rooms.len(), RoomCache::CAPACITY);
    }

    #[test]
    fn store_data_dir_and_its_files_are_private_from_the_start() {
        let top = temp();
        let dir = top.join("nested").join("data");
        let store = SqliteStore::open(&dir).unwrap();
        store
            .connection()
            .lock()
            .unwrap()
            .execute("INSERT INTO node_state (key, value) VALUES ('k', 1)", [])
            .unwrap();
        assert_private(&dir);
        // Parents made for it are private too.
        assert_eq!(mode(&top.join("nested")), 0o700);
        drop(store);
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn store_an_existing_data_dir_open_to_others_is_made_private() {
        let dir = temp();
        std::fs::create_dir_all(&dir).unwrap();
        // A data dir of an older release: everything readable by everyone, and a connection
        // still open, so the -wal and -shm files are there too.
        let old = Connection::open(dir.join(DB_FILE)).unwrap();
        old.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);")
            .unwrap();
        for name in [".", DB_FILE, DB_SIDE_FILES[0], DB_SIDE_FILES[1]] {
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let store = SqliteStore::open(&dir).unwrap();
        assert_private(&dir);
        drop((store, old));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
