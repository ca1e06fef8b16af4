//! The history's statements that SQLite and PostgreSQL both run as written, each written
//! once here: PostgreSQL's `$n` placeholders, which [`sqlite`] turns into SQLite's `?n`.
//! What only one dialect can say (PostgreSQL's row locks and claims of webhook events,
//! SQLite's conflict clause spelled its way) stays with its backend (`sqlite.rs`,
//! `postgres.rs`).

/// A statement written for PostgreSQL as SQLite takes it (`$n` → `?n`).
pub(super) fn sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) const REOPEN_TIMED_OUT: &str = "UPDATE participants SET left_at_ms = NULL, reason = NULL
             WHERE session = $1 AND reason = 'timeout'";

pub(super) const ATTACH_HERE: &str =
    "UPDATE participants SET detached_at_ms = NULL, node = $2 WHERE session = $1";

pub(super) const CONNECTED_SESSIONS: &str = "SELECT COUNT(*) FROM participants
             WHERE room = $1 AND left_at_ms IS NULL AND detached_at_ms IS NULL";

pub(super) const DETACH: &str = "UPDATE participants SET detached_at_ms = $2
             WHERE session = $1 AND left_at_ms IS NULL";

pub(super) const CLOSE_SESSION: &str =
    "UPDATE participants SET left_at_ms = $2, reason = $3 WHERE session = $1";

pub(super) const OPEN_CALL: &str =
    "SELECT id, started_at_ms FROM calls WHERE room = $1 AND ended_at_ms IS NULL";

pub(super) const ROOM_OWNER: &str = "SELECT owner, members FROM rooms WHERE id = $1";

pub(super) const INSERT_CALL: &str =
    "INSERT INTO calls (id, room, owner, members, started_at_ms) VALUES ($1, $2, $3, $4, $5)";

pub(super) const END_CALL: &str = "UPDATE calls SET ended_at_ms = $2 WHERE id = $1";

pub(super) const CALL_ROW: &str =
    "SELECT room, started_at_ms, ended_at_ms FROM calls WHERE id = $1";

pub(super) const SESSIONS_BETWEEN: &str =
    "SELECT peer, identity, name, joined_at_ms, left_at_ms FROM participants
                 WHERE room = $1 AND joined_at_ms < $3 AND (left_at_ms IS NULL OR left_at_ms > $2)
                 ORDER BY joined_at_ms, session";

pub(super) const INSERT_EVENT: &str =
    "INSERT INTO webhook_outbox (id, endpoint, room, type, body, created_at_ms, next_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $6)";

pub(super) const SET_ALIVE: &str = "INSERT INTO node_state (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value";

pub(super) const ALIVE: &str = "SELECT value FROM node_state WHERE key = $1";

pub(super) const NODE_SESSIONS: &str =
    "SELECT room, session FROM participants WHERE left_at_ms IS NULL AND node = $1";

pub(super) const DETACH_NODE: &str =
    "UPDATE participants SET detached_at_ms = COALESCE(detached_at_ms, $2)
             WHERE left_at_ms IS NULL AND node = $1";

pub(super) const CALL_IDS: &str = "SELECT id FROM calls WHERE room = $1 AND (started_at_ms < $2 OR
                 (started_at_ms = $2 AND ($3 = '' OR id < $3)))
                 ORDER BY started_at_ms DESC, id DESC LIMIT $4";

pub(super) const CALL_POSITION: &str = "SELECT started_at_ms, id FROM calls WHERE id = $1";

pub(super) const CALLS_BETWEEN: &str =
    "SELECT room, started_at_ms, ended_at_ms, owner, members FROM calls
                 WHERE started_at_ms < $2 AND (ended_at_ms IS NULL OR ended_at_ms > $1)
                 ORDER BY room, started_at_ms";

pub(super) const PENDING_EVENTS: &str = "SELECT COUNT(*) FROM webhook_outbox WHERE state = 0";

pub(super) const ATTEMPTED: &str = "DELETE FROM webhook_outbox WHERE seq = $1";

/// Retention, at most `$2` rows a statement: sessions that ended before `$1`, calls that ended
/// before it, and webhook events that failed (state 2) with their last attempt before it.
pub(super) const PRUNE: [&str; 3] = [
    "DELETE FROM participants WHERE session IN (SELECT session FROM participants
                 WHERE left_at_ms IS NOT NULL AND left_at_ms < $1 LIMIT $2)",
    "DELETE FROM calls WHERE id IN (SELECT id FROM calls
                 WHERE started_at_ms < $1 AND ended_at_ms IS NOT NULL AND ended_at_ms < $1 LIMIT $2)",
    "DELETE FROM webhook_outbox WHERE seq IN (SELECT seq FROM webhook_outbox
                 WHERE state = 2 AND next_at_ms < $1 LIMIT $2)",
];

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_become_sqlites() {
        assert_eq!(
            super::sqlite("UPDATE t SET a = $2 WHERE b = $1 AND c = '$x'"),
            "UPDATE t SET a = ?2 WHERE b = ?1 AND c = '$x'"
        );
    }
}
