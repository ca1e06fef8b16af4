//! BlueCam wire protocol: the JSON frames of `GET /v1/ws`, one enum per direction
//! ([`ClientMessage`] to the server, [`ServerMessage`] from it), the ids they carry, error and
//! close codes. No I/O lives here. `docs/protocol.md` is the prose version of this crate.
//!
//! Payloads (`data` of `signal`, `msg` of `send`) are [`RawValue`]s: the server routes on the
//! envelope and forwards payload bytes untouched.

mod client;
mod codes;
mod ids;
mod node;
mod room;
mod server;

pub use client::{ClientMessage, FrameError, ResumeCredentials};
pub use codes::{CloseCode, ErrorCode};
pub use ids::{Identity, NodeId, PeerId, RoomId, SessionId, SessionSecret};
pub use node::{NodeMessage, NodeMessageError, PeerRecord};
pub use room::{IceServer, Limits, PeerInfo, Permissions, Room, RoomSummary};
pub use serde_json::value::RawValue;
pub use server::{
    ErrorFrame, Joined, LeaveReason, MessageFrame, PeerJoined, PeerLeft, RoomClosed,
    RoomClosedReason, ServerMessage, ServerMessageBody, ServerMessageFrame, SessionInfo,
    SignalFrame,
};

/// Path of the WebSocket endpoint.
pub const WS_PATH: &str = "/v1/ws";
