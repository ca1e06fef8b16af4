//! Why a join was refused, as the wire says it.

use bluecam_proto::ErrorCode;

/// Why a join was refused; the shell answers with the error code and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinRejected {
    RoomFull,
    Forbidden,
    /// The resume named an unknown session, or the wrong secret.
    SessionExpired,
    /// The resume's session belongs to another room or identity than the token.
    Unauthorized,
    /// This connection has joined already.
    AlreadyJoined,
    /// A claim answered by the directory was overtaken by another node's claim of the same
    /// session before this node handled it: retry.
    Overtaken,
    /// The room was deleted while the directory answered the join (or before: the directory
    /// has no such room).
    RoomClosed,
    /// Cluster: the directory could not be asked, or gave an answer that admits nobody:
    /// retry.
    DirectoryUnavailable,
}

impl JoinRejected {
    /// The wire error code.
    pub fn code(self) -> ErrorCode {
        match self {
            Self::RoomFull => ErrorCode::RoomFull,
            Self::Forbidden => ErrorCode::Forbidden,
            Self::SessionExpired => ErrorCode::SessionExpired,
            Self::Unauthorized => ErrorCode::Unauthorized,
            Self::AlreadyJoined => ErrorCode::BadRequest,
            Self::Overtaken => ErrorCode::Unavailable,
            Self::RoomClosed => ErrorCode::RoomNotFound,
            Self::DirectoryUnavailable => ErrorCode::Unavailable,
        }
    }

    /// Text for the error frame.
    pub fn message(self) -> &'static str {
        match self {
            Self::RoomFull => "the room is full",
            Self::Forbidden => "this identity is not a member of the room",
            Self::SessionExpired => "the session to resume has expired or does not exist",
            Self::Unauthorized => "the session to resume belongs to another room or identity",
            Self::AlreadyJoined => "this connection has joined already",
            Self::Overtaken => "the session was resumed on another node meanwhile; retry",
            Self::RoomClosed => "the room was deleted",
            Self::DirectoryUnavailable => "the cluster directory is unavailable; retry",
        }
    }
}
