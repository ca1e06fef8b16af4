//! What outlives a process: rooms and a single node's sessions ([`store`], SQLite; in a
//! cluster rooms live in PostgreSQL, `history::postgres`), the call history and the webhook
//! outbox ([`history`]), and webhook delivery from that outbox ([`webhooks`]).

pub mod history;
pub mod store;
pub mod webhooks;
