//! Frames from the server to a client.
//!
//! Serialization is derived (`op` tag). Deserialization, needed by clients, reads the `op` first
//! and then the variant's own struct, because serde cannot buffer a [`RawValue`] inside an
//! internally tagged enum.

use crate::{
    CloseCode, ErrorCode, IceServer, Limits, PeerId, PeerInfo, RoomSummary, SessionId,
    SessionSecret,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Every frame the server sends.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Joined(Box<Joined>),
    PeerJoined(PeerJoined),
    PeerLeft(PeerLeft),
    Signal(SignalFrame<'a>),
    Message(MessageFrame<'a>),
    ServerMessage(ServerMessageFrame<'a>),
    RoomClosed(RoomClosed),
    Error(ErrorFrame),
    Ping,
    Pong,
}

/// `joined`: the answer to a successful `join` (or resume).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Joined {
    #[serde(rename = "self")]
    pub self_: PeerInfo,
    pub room: RoomSummary,
    /// The other peers present (including ones whose connection is momentarily resuming).
    pub peers: Vec<PeerInfo>,
    pub session: SessionInfo,
    pub ice_servers: Vec<IceServer>,
    pub limits: Limits,
    /// True when this `joined` answers a resume: the peer id is the old one.
    #[serde(default)]
    pub resumed: bool,
}

/// Credentials for resuming the session after a lost connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub id: SessionId,
    pub secret: SessionSecret,
    pub resume_window_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerJoined {
    pub peer: PeerInfo,
}

/// Why a peer left the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaveReason {
    /// It sent `leave`.
    Left,
    /// Its connection was lost and it did not resume within the window (or its resume buffer
    /// overflowed).
    Timeout,
    /// The server removed it.
    Kicked,
    /// A newer session of the same identity took its seat (a reload, a second tab).
    Replaced,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerLeft {
    pub peer: PeerInfo,
    pub reason: LeaveReason,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignalFrame<'a> {
    pub from: PeerId,
    pub data: Cow<'a, RawValue>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MessageFrame<'a> {
    pub from: PeerId,
    pub msg: Cow<'a, RawValue>,
}

/// What the app's backend sends into a room (`POST /v1/rooms/{id}/messages`, and the node
/// message `message` that carries it to the nodes holding its recipients): `{"type", "data"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerMessageBody<'a> {
    #[serde(rename = "type", borrow)]
    pub msg_type: Cow<'a, str>,
    #[serde(borrow)]
    pub data: &'a RawValue,
}

/// `server_message`: a message from the app's backend (`POST /v1/rooms/{id}/messages`), number
/// `s` of this peer's sequence space `e` (acknowledged with `server_ack`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerMessageFrame<'a> {
    pub e: u64,
    pub s: u64,
    #[serde(rename = "type")]
    pub msg_type: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Cow<'a, RawValue>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomClosedReason {
    Deleted,
    Expired,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoomClosed {
    pub reason: RoomClosedReason,
}

/// `error`: a frame was refused (or a join failed).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    /// The `ref` of the client frame this answers, when it had one.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<u64>,
    /// For `unknown_peer`: the ids that were not delivered to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<Vec<PeerId>>,
    /// For `rate_limited`: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// When the server will close the socket after this error, the close code it will use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub close: Option<u16>,
}

impl ErrorFrame {
    /// An error with just a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reference: None,
            peers: None,
            retry_after_ms: None,
            close: None,
        }
    }

    /// Sets the `ref` it answers.
    pub fn with_ref(mut self, reference: Option<u64>) -> Self {
        self.reference = reference;
        self
    }

    /// Announces the close that follows.
    pub fn closing(mut self, close: CloseCode) -> Self {
        self.close = Some(close.code());
        self
    }
}

#[derive(Deserialize)]
struct OpOnly<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
}

impl<'a> ServerMessage<'a> {
    /// Serializes to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: every map key is a string and no custom
        // Serialize impl returns an error.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// [`Self::to_json`] as bytes (UTF-8), in a buffer sized for the frame up front: a relayed
    /// `message` or `signal` is written once, without growing (and copying) its buffer on
    /// the way.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // `{"op":"message","from":"…","msg":…}`: the payload, the sender's id and 40 bytes.
        let size = match self {
            Self::Message(m) => m.msg.get().len() + m.from.as_str().len() + 40,
            Self::Signal(s) => s.data.get().len() + s.from.as_str().len() + 40,
            Self::ServerMessage(m) => m.data.get().len() + m.msg_type.len() + 96,
            _ => 128,
        };
        let mut out = Vec::with_capacity(size);
        // A relayed frame (most frames a server writes) is written out by hand: the derived
        // serializer escapes each key and the tag as it goes. The same bytes (the tests
        // compare them with the derived serializer's).
        let (op, from, key, payload): (&[u8], _, &[u8], _) = match self {
            Self::Message(m) => (br#"{"op":"message","from":"#, &m.from, b"msg", &m.msg),
            Self::Signal(s) => (br#"{"op":"signal","from":"#, &s.from, b"data", &s.data),
            // (Cannot fail, as above.)
            _ => {
                let _ = serde_json::to_writer(&mut out, self);
                return out;
            }
        };
        out.extend_from_slice(op);
        let _ = serde_json::to_writer(&mut out, from.as_str());
        out.extend_from_slice(b",\"");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        out.extend_from_slice(payload.get().as_bytes());
        out.push(b'}');
        out
    }

    /// Parses one frame (for clients).
    pub fn from_json(text: &'a str) -> Result<Self, serde_json::Error> {
        let op: OpOnly<'_> = serde_json::from_str(text)?;
        Ok(match &*op.op {
            "joined" => Self::Joined(Box::new(serde_json::from_str(text)?)),
            "peer_joined" => Self::PeerJoined(serde_json::from_str(text)?),
            "peer_left" => Self::PeerLeft(serde_json::from_str(text)?),
            "signal" => Self::Signal(serde_json::from_str(text)?),
            "message" => Self::Message(serde_json::from_str(text)?),
            "server_message" => Self::ServerMessage(serde_json::from_str(text)?),
            "room_closed" => Self::RoomClosed(serde_json::from_str(text)?),
            "error" => Self::Error(serde_json::from_str(text)?),
            "ping" => Self::Ping,
            "pong" => Self::Pong,
            other => {
                return Err(serde::de::Error::custom(format_args!(
                    "unknown op {other:?}"
                )));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{MessageFrame, ServerMessage, SignalFrame};
    use crate::PeerId;
    use proptest::prelude::*;
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    proptest! {
        /// A relayed frame written by hand is the derived serializer's, byte for byte, whatever
        /// the sender's id (quotes, backslashes, control characters, any Unicode) and payload.
        #[test]
        fn relayed_frames_are_written_as_derived(from in any::<String>(), data in any::<String>(), n in any::<i64>()) {
            let payloads = [
                serde_json::to_string(&data).unwrap(),
                format!(r#"{{"k":{},"n":{n},"a":[1,true,null]}}"#, serde_json::to_string(&data).unwrap()),
                // (A payload is relayed as it came, its whitespace too.)
                format!("[ {} ,\n\t{n} ]", serde_json::to_string(&data).unwrap()),
            ];
            for payload in &payloads {
                let raw = RawValue::from_string(payload.clone()).unwrap();
                for msg in [
                    ServerMessage::Message(MessageFrame {
                        from: PeerId::new(from.as_str()),
                        msg: Cow::Borrowed(&raw),
                    }),
                    ServerMessage::Signal(SignalFrame {
                        from: PeerId::new(from.as_str()),
                        data: Cow::Borrowed(&raw),
                    }),
                ] {
                    prop_assert_eq!(
                        String::from_utf8(msg.to_json_bytes()).unwrap(),
                        serde_json::to_string(&msg).unwrap()
                    );
                }
            }
        }
    }
}
