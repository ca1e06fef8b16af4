//! [`Frame`]: one serialized server frame, shared (not copied) by every recipient.

use bluecam_proto::ServerMessage;
use bytes::Bytes;

/// The JSON text of one server frame. Cloning shares the bytes.
///
/// Invariant: the bytes are valid UTF-8 (serde_json writes UTF-8; other bytes are checked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    resumable: bool,
}

impl Frame {
    /// Serializes a message once.
    pub fn new(msg: &ServerMessage<'_>) -> Self {
        // Answers to one connection (`joined`, `error`, `pong`) mean nothing on another one;
        // what peers and the room send is kept for the peer across a resume.
        let resumable = !matches!(
            msg,
            ServerMessage::Joined(_)
                | ServerMessage::Error(_)
                | ServerMessage::Ping
                | ServerMessage::Pong
        );
        Self {
            bytes: Bytes::from(msg.to_json_bytes()),
            resumable,
        }
    }

    /// Takes back the text of a resumable frame; `None` if it is not UTF-8.
    pub fn from_text(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).is_ok().then_some(Self {
            bytes,
            resumable: true,
        })
    }

    /// Whether the frame is a membership change (`peer_joined`, `peer_left`). Server frames
    /// are written with `op` first.
    pub fn is_membership(&self) -> bool {
        self.as_str().starts_with(r#"{"op":"peer_"#)
    }

    /// Whether it is a `server_message` (kept by the hub until acknowledged, so a copy kept
    /// for a resume is not sent twice).
    pub fn is_server_message(&self) -> bool {
        self.as_str().starts_with(r#"{"op":"server_message""#)
    }

    /// Whether the frame belongs to the peer (kept across a resume) rather than to the one
    /// connection it answers.
    pub fn resumable(&self) -> bool {
        self.resumable
    }

    /// The frame's bytes (UTF-8 JSON).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // The invariant above makes this infallible; fall back to "" rather than panic.
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether it is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl From<Frame> for Bytes {
    fn from(frame: Frame) -> Self {
        frame.bytes
    }
}
