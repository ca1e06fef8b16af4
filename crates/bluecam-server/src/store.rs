//! Where rooms live. [`Store`] is the seam between the room logic and storage: the
//! single-node default is [`SqliteStore`] (one file under the data dir); cluster mode puts a
//! Redis implementation behind the same trait.

use bluecam_proto::{Identity, RawValue, Room, RoomId};
use futures_util::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use std::{
    path::Path,
    sync::{Arc, Mutex},
};

/// A storage failure. `Exists` is the caller's fault; the others are the server's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a room with this id exists already")]
    Exists,
    #[error("storage error: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

/// Persistent rooms. `peer_count` is not stored: callers fill it from the live hub.
pub trait Store: Send + Sync + 'static {
    /// Saves a new room; `Exists` when the id is taken.
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>>;
    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>>;
    /// All rooms, or those where `member` is the owner or a member; oldest first.
    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>>;
    /// Removes a room; false when there was none.
    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>>;
    /// Removes a room that expired empty, only if it is still empty (in a cluster the check
    /// and the removal are one step, so a join on another node cannot slip in between); false
    /// when nothing was removed. On one node the caller has checked the hub already.
    fn delete_empty_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        self.delete_room(id)
    }
    /// Records that the room was last occupied at `at` (Unix seconds), for `emptyTimeoutSecs`.
    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Rooms with an empty timeout whose last occupation is older than it at `now`.
    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>>;
    /// Whether the store answers (for `/readyz`).
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// Rooms in one SQLite file. One connection behind one mutex: SQLite serializes writers
/// anyway, and every statement here is a short indexed lookup, run off the async threads.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS rooms (
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
);
";

const COLUMNS: &str =
    "id, name, description, owner, members, max_peers, empty_timeout_secs, metadata, created_at";

impl SqliteStore {
    /// Opens (or creates) `dir/bluecam.sqlite3`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(e.to_string()))?;
        let conn = Connection::open(dir.join("bluecam.sqlite3"))?;
        conn.execute_batch(SCHEMA)?;
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
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> BoxFuture<'_, Result<T, StoreError>> {
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut guard = conn
                    .lock()
                    .map_err(|_| StoreError::Backend("store mutex poisoned".into()))?;
                f(&mut guard)
            })
            .await
            .map_err(|e| StoreError::Backend(e.to_string()))?
        })
    }
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
    })
}

impl Store for SqliteStore {
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>> {
        self.with(move |conn| {
            let members = room
                .members
                .as_ref()
                .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO rooms (id, name, description, owner, members, max_peers,
                 empty_timeout_secs, metadata, created_at, last_active_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
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
                ],
            )?;
            if inserted == 0 {
                Err(StoreError::Exists)
            } else {
                Ok(())
            }
        })
    }

    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>> {
        self.with(move |conn| {
            Ok(conn
                .prepare_cached(&format!("SELECT {COLUMNS} FROM rooms WHERE id = ?1"))?
                .query_row([id.as_str()], row_to_room)
                .optional()?)
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
        self.with(move |conn| {
            Ok(conn.execute("DELETE FROM rooms WHERE id = ?1", [id.as_str()])? > 0)
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
