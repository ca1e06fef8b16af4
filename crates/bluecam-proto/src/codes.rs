//! Stable error codes (in `error` frames and HTTP error bodies) and WebSocket close codes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The `code` of an `error` frame or of an HTTP error body. Stable: clients match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ErrorCode {
    /// The room of the token does not exist (or was deleted).
    RoomNotFound,
    /// Bad signature, expired or not yet valid token, or a token for another room.
    Unauthorized,
    /// The room has a member list and this identity is not on it.
    Forbidden,
    /// The room already holds `maxPeers` peers.
    RoomFull,
    /// The frame is not valid JSON, has an unknown `op`, or misses or mistypes a field.
    BadRequest,
    /// The frame is larger than `limits.maxFrameBytes`.
    TooLarge,
    /// The connection exceeded its frame or byte rate; the frame was dropped, retry later.
    RateLimited,
    /// A `to` names a peer that is not in the sender's room.
    UnknownPeer,
    /// A resume named a session that does not exist any more (window passed) or a wrong secret.
    SessionExpired,
    /// The token lacks the permission the frame needs.
    PermissionDenied,
    /// HTTP: a room with that id exists already.
    RoomExists,
    /// HTTP: the route does not exist.
    NotFound,
    /// The server is shutting down or a dependency is down; retry elsewhere or later.
    Unavailable,
    /// A fault of the server; details are in its log, never in the frame.
    Internal,
}

impl ErrorCode {
    /// The snake_case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoomNotFound => "room_not_found",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RoomFull => "room_full",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::RateLimited => "rate_limited",
            Self::UnknownPeer => "unknown_peer",
            Self::SessionExpired => "session_expired",
            Self::PermissionDenied => "permission_denied",
            Self::RoomExists => "room_exists",
            Self::NotFound => "not_found",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the server closed a WebSocket. The numeric values are part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 1000: the peer sent `leave`.
    Normal,
    /// 1001: a join refused for now (`unavailable`: the store or broker is down, the node is
    /// draining); resume, on another node if there is one. (A shutdown closes with 1012.)
    GoingAway,
    /// 1002: a broken WebSocket frame.
    ProtocolError,
    /// 1007: a text frame that is not valid UTF-8.
    InvalidData,
    /// 1009: a frame exceeded the hard size cap; the connection could not continue.
    MessageTooBig,
    /// 1011: a server fault.
    InternalError,
    /// 4000: the first frame was not a valid `join`.
    BadJoin,
    /// 4001: `join` failed with `unauthorized`.
    Unauthorized,
    /// 4003: `join` failed with `forbidden`.
    Forbidden,
    /// 4004: `join` failed with `room_not_found`.
    RoomNotFound,
    /// 4008: no `join` within the join deadline.
    JoinTimeout,
    /// 4009: `join` failed with `room_full`.
    RoomFull,
    /// 4010: resume failed: the session expired or the secret was wrong.
    SessionExpired,
    /// 4011: nothing received for the idle timeout (ping/pong liveness).
    IdleTimeout,
    /// 4029: too many bad frames in a short time.
    TooManyErrors,
    /// 4030: the outbound queue overflowed (slow reader); the session can be resumed.
    SlowConsumer,
    /// 4040: the room was deleted or expired.
    RoomClosed,
    /// 4041: the session was resumed on another connection.
    Replaced,
    /// 4042: a newer session of the same identity took this one's seat (a reload, a second
    /// tab); final.
    Superseded,
    /// 4043: the app's backend removed this peer from the room
    /// (`DELETE /v1/rooms/{id}/peers/{peerId}`); final.
    Kicked,
    /// 1012: the server is restarting; resume once it is back (sessions survive a restart).
    ServiceRestart,
}

impl CloseCode {
    /// Every close code, for lookups and docs.
    pub const ALL: [CloseCode; 21] = [
        Self::Normal,
        Self::GoingAway,
        Self::ProtocolError,
        Self::InvalidData,
        Self::MessageTooBig,
        Self::InternalError,
        Self::BadJoin,
        Self::Unauthorized,
        Self::Forbidden,
        Self::RoomNotFound,
        Self::JoinTimeout,
        Self::RoomFull,
        Self::SessionExpired,
        Self::IdleTimeout,
        Self::TooManyErrors,
        Self::SlowConsumer,
        Self::RoomClosed,
        Self::Replaced,
        Self::Superseded,
        Self::Kicked,
        Self::ServiceRestart,
    ];

    /// The close code with this number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::ProtocolError => 1002,
            Self::InvalidData => 1007,
            Self::MessageTooBig => 1009,
            Self::InternalError => 1011,
            Self::BadJoin => 4000,
            Self::Unauthorized => 4001,
            Self::Forbidden => 4003,
            Self::RoomNotFound => 4004,
            Self::JoinTimeout => 4008,
            Self::RoomFull => 4009,
            Self::SessionExpired => 4010,
            Self::IdleTimeout => 4011,
            Self::TooManyErrors => 4029,
            Self::SlowConsumer => 4030,
            Self::RoomClosed => 4040,
            Self::Replaced => 4041,
            Self::Superseded => 4042,
            Self::Kicked => 4043,
            Self::ServiceRestart => 1012,
        }
    }

    /// The short reason text sent with the close frame.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Normal => "left",
            Self::GoingAway => "server shutting down",
            Self::ProtocolError => "broken frame",
            Self::InvalidData => "text frame is not UTF-8",
            Self::MessageTooBig => "frame too large",
            Self::InternalError => "internal error",
            Self::BadJoin => "first frame must be join",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::RoomNotFound => "room not found",
            Self::JoinTimeout => "join timeout",
            Self::RoomFull => "room full",
            Self::SessionExpired => "session expired",
            Self::IdleTimeout => "idle timeout",
            Self::TooManyErrors => "too many bad frames",
            Self::SlowConsumer => "slow consumer",
            Self::RoomClosed => "room closed",
            Self::Replaced => "session resumed elsewhere",
            Self::Superseded => "replaced by a newer session of this identity",
            Self::Kicked => "removed from the room",
            Self::ServiceRestart => "server restarting",
        }
    }

    /// The close code that ends a failed `join` with this error, if any.
    pub fn for_join_error(code: ErrorCode) -> Self {
        match code {
            ErrorCode::Unauthorized => Self::Unauthorized,
            ErrorCode::Forbidden => Self::Forbidden,
            ErrorCode::RoomNotFound => Self::RoomNotFound,
            ErrorCode::RoomFull => Self::RoomFull,
            ErrorCode::SessionExpired => Self::SessionExpired,
            ErrorCode::Unavailable => Self::GoingAway,
            ErrorCode::Internal => Self::InternalError,
            _ => Self::BadJoin,
        }
    }

    /// Whether a client's next attempt should go to the next node of a cluster: this one is
    /// going away (draining, restarting).
    pub fn next_node(self) -> bool {
        matches!(self, Self::GoingAway | Self::ServiceRestart)
    }

    /// Whether a client should try to resume its session after this close.
    pub fn resumable(self) -> bool {
        matches!(
            self,
            Self::GoingAway
                // One client holds one connection at a time: a newer one holding its session is
                // an attempt it abandoned (read late by a thawed node); it resumes again.
                | Self::Replaced
                | Self::ServiceRestart
                // The join did not arrive in time: the connection's fault, not the session's.
                | Self::JoinTimeout
                | Self::IdleTimeout
                | Self::SlowConsumer
                | Self::InternalError
        )
    }
}
