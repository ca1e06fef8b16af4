//! [`Frame`]: one serialized server frame, shared (not copied) by every recipient.

use bluecam_proto::ServerMessage;
use bytes::Bytes;

/// The JSON text of one server frame. Cloning shares the bytes.
///
/// Invariant: the bytes are valid UTF-8 (they only ever come from a `String`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    /// Serializes a message once.
    pub fn new(msg: &ServerMessage<'_>) -> Self {
        Self(Bytes::from(msg.to_json()))
    }

    /// Takes back bytes that were a frame's text; `None` if they are not UTF-8.
    pub fn from_text(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).is_ok().then_some(Self(bytes))
    }

    /// The frame's bytes (UTF-8 JSON).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The frame as text.
    pub fn as_str(&self) -> &str {
        // The invariant above makes this infallible; fall back to "" rather than panic.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is empty (never, for a real frame).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Frame> for Bytes {
    fn from(frame: Frame) -> Self {
        frame.0
    }
}
