//! What the history's logic (`mod.rs`) needs of a database, for one transaction ([`Db`]), and
//! the rows it exchanges with it. SQLite (`sqlite.rs`) and PostgreSQL (`postgres.rs`) each
//! implement it.

use super::R;

/// A session's row, as the logic reads it.
#[derive(Clone, Debug)]
pub struct SessionRow {
    pub peer: String,
    pub identity: String,
    pub name: Option<String>,
    pub joined_at_ms: u64,
    pub left_at_ms: Option<u64>,
}

/// A new session's row.
#[derive(Clone, Debug)]
pub struct NewSession<'a> {
    pub session: &'a str,
    pub room: &'a str,
    pub node: &'a str,
    pub peer: &'a str,
    pub identity: &'a str,
    pub name: Option<&'a str>,
    pub joined_at_ms: u64,
}

/// A call as usage reads it.
#[derive(Clone, Debug)]
pub struct CallRow {
    pub room: String,
    pub started: u64,
    pub ended: Option<u64>,
    pub owner: Option<String>,
    pub members: Option<String>,
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

/// An event for the outbox.
#[derive(Clone, Debug)]
pub struct NewEvent<'a> {
    pub id: &'a str,
    pub endpoint: &'a str,
    pub room: &'a str,
    pub event_type: &'a str,
    pub body: &'a str,
    pub at_ms: u64,
}

/// The outcome of one delivery attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Retry { at_ms: u64 },
    Failed,
}

/// The statements of the history, for one transaction. Those both databases run as written
/// are in `sql.rs`; the logic that uses them (`mod.rs`) is shared.
pub trait Db {
    /// Serializes changes to one room's history across nodes (PostgreSQL: a transaction lock;
    /// SQLite has one writer already).
    fn lock_room(&mut self, room: &str) -> R<()>;
    /// False when the session has a row already.
    fn insert_session(&mut self, s: &NewSession<'_>) -> R<bool>;
    /// The session is connected again, on `node`; a row another node had ended as a timeout
    /// is open again. True when it was ended.
    fn attach(&mut self, session: &str, node: &str) -> R<bool>;
    /// A session's row while it is open and held by `node`, and when its connection was lost
    /// (if known).
    fn open_session(&mut self, session: &str, node: &str) -> R<Option<(SessionRow, Option<u64>)>>;
    fn close_session(&mut self, session: &str, left_ms: u64, reason: &str) -> R<()>;
    /// The open sessions of a room (of one node's, with `node`), oldest first.
    fn open_sessions(&mut self, room: &str, node: Option<&str>) -> R<Vec<String>>;
    /// How many open sessions of the room are connected (not waiting for a resume): a call
    /// starts when two are.
    fn connected_sessions(&mut self, room: &str) -> R<usize>;
    /// The session's connection was lost at `at_ms` (if it is still open).
    fn detach(&mut self, session: &str, at_ms: u64) -> R<()>;
    fn open_call(&mut self, room: &str) -> R<Option<(String, u64)>>;
    /// The room's owner and members (JSON array) now, if it exists.
    fn room_owner(&mut self, room: &str) -> R<(Option<String>, Option<String>)>;
    fn insert_call(
        &mut self,
        id: &str,
        room: &str,
        owner: Option<&str>,
        members: Option<&str>,
        at_ms: u64,
    ) -> R<()>;
    fn end_call(&mut self, id: &str, ended_ms: u64) -> R<()>;
    /// A call's room, start and end.
    fn call_row(&mut self, id: &str) -> R<Option<(String, u64, Option<u64>)>>;
    /// The sessions of a room that overlap `[from, to)` (`to` None: up to now), in join order.
    fn sessions_between(&mut self, room: &str, from: u64, to: Option<u64>) -> R<Vec<SessionRow>>;
    fn insert_event(&mut self, e: &NewEvent<'_>) -> R<()>;
    fn set_alive(&mut self, node: &str, at_ms: u64) -> R<()>;
    fn alive(&mut self, node: &str) -> R<Option<u64>>;
    /// Every open session of a node: (room, session).
    fn node_sessions(&mut self, node: &str) -> R<Vec<(String, String)>>;
    /// Marks every open session of `node` as detached since `at_ms` (unless it was already).
    fn detach_node(&mut self, node: &str, at_ms: u64) -> R<()>;
    /// Open sessions of other nodes last alive before `before_ms`: (room, session, node,
    /// alive).
    fn dead_sessions(&mut self, me: &str, before_ms: u64) -> R<Vec<(String, String, String, u64)>>;
    /// A room's calls that started before `before` (start, id), newest first.
    fn call_ids(
        &mut self,
        room: &str,
        before: Option<(u64, String)>,
        limit: usize,
    ) -> R<Vec<String>>;
    fn call_position(&mut self, id: &str) -> R<Option<(u64, String)>>;
    /// Calls that overlap `[from, to)`.
    fn calls_between(&mut self, from_ms: u64, to_ms: u64) -> R<Vec<CallRow>>;
    fn pending_events(&mut self) -> R<i64>;
    /// Deletes at most `limit` rows of each history table that ended before `before_ms`
    /// ([`super::sql::PRUNE`]); how many of each.
    fn prune(&mut self, before_ms: u64, limit: usize) -> R<[usize; 3]>;
    /// The events due at `now`: for each endpoint and room only its oldest pending one, and
    /// only once its retry time came; in a cluster, claimed by `node` for a while, so no other
    /// node sends them meanwhile.
    fn due_events(&mut self, now: u64, limit: usize, node: &str) -> R<Vec<Pending>>;
    fn next_due(&mut self) -> R<Option<u64>>;
    fn attempted(&mut self, seq: i64, outcome: Attempt, error: Option<&str>) -> R<()>;
}
