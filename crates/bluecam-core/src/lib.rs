//! BlueCam room core: membership, routing, resume and limits as pure state machines.
//!
//! Nothing here does I/O, reads a clock, draws random numbers or spawns: the shell passes
//! `now` and fresh ids in, and takes what to send out as data ([`Output`]). That keeps the
//! logic testable without sockets or sleeps, and lets one core serve the single-node server
//! and cluster nodes alike.

pub mod cluster;
pub mod directory;
mod frame;
mod hub;
mod limits;
pub mod node;

pub use frame::Frame;
pub use hub::{
    ClaimedSession, ClusterView, ConnId, CoreConfig, FreshIds, Hub, HubStats, JoinRejected,
    JoinRequest, LocalPeer, Origin, Output, RemotePeer, RestoredSession, RoomAccess, RoomEvent,
    secret_digest,
};
pub use limits::{BadFrameWindow, RateLimiter, Rates, TokenBucket};
pub use node::{DirAnswer, Handled, Input, Node};
