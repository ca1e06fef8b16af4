//! Frames from a client to the server.
//!
//! Parsing is one pass over a flat struct of every field any op may carry, then a check per
//! op: serde cannot borrow a [`RawValue`] through an internally tagged enum, and the server
//! must not copy payloads.

use crate::{ErrorCode, PeerId, SessionId, SessionSecret};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Every frame a client sends.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientMessage<'a> {
    /// The first frame of a connection: the token, and resume credentials when resuming.
    Join {
        token: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeCredentials>,
    },
    /// Forward `data` (WebRTC signaling: offers, answers, candidates) to one peer.
    Signal {
        to: PeerId,
        data: Cow<'a, RawValue>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Relay `msg` to the listed peers, or to everyone else in the room when `to` is absent.
    Send {
        #[serde(skip_serializing_if = "Option::is_none")]
        to: Option<Vec<PeerId>>,
        msg: Cow<'a, RawValue>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u64>,
    },
    /// Every `server_message` of the sequence space `e` up to `s` was delivered (cumulative).
    ServerAck {
        e: u64,
        s: u64,
    },
    /// Leave the room for good (closing the socket without it keeps the session resumable).
    Leave,
    Ping,
    Pong,
}

/// `join.resume`: the session to take back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeCredentials {
    pub session: SessionId,
    pub secret: SessionSecret,
}

/// Why a client frame was refused before reaching the room logic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// The frame's `ref`, if it could be read.
    pub reference: Option<u64>,
}

impl FrameError {
    fn bad(message: impl Into<String>, reference: Option<u64>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
            reference,
        }
    }
}

#[derive(Deserialize)]
struct FlatFrame<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    resume: Option<ResumeCredentials>,
    #[serde(default, borrow)]
    to: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    msg: Option<&'a RawValue>,
    #[serde(default, rename = "ref")]
    reference: Option<u64>,
    #[serde(default)]
    e: Option<u64>,
    #[serde(default)]
    s: Option<u64>,
}

impl<'a> ClientMessage<'a> {
    /// Parses one frame. Unknown fields are ignored; a missing or mistyped field of the op
    /// is a `bad_request`.
    pub fn from_json(text: &'a str) -> Result<Self, FrameError> {
        // serde would read a struct from a JSON array too (fields in order); frames are objects.
        if !text.trim_start().starts_with('{') {
            return Err(FrameError::bad("a frame must be a JSON object", None));
        }
        let flat: FlatFrame<'a> = serde_json::from_str(text)
            .map_err(|e| FrameError::bad(format!("not a valid frame: {e}"), salvage_ref(text)))?;
        let reference = flat.reference;
        let need = |field: Option<&'a RawValue>, name: &str| {
            field.map(Cow::Borrowed).ok_or_else(|| {
                FrameError::bad(format!("{} needs a non-null {name}", flat.op), reference)
            })
        };
        Ok(match &*flat.op {
            "join" => Self::Join {
                token: flat
                    .token
                    .ok_or_else(|| FrameError::bad("join needs a token", reference))?,
                resume: flat.resume,
            },
            "signal" => {
                let to = flat
                    .to
                    .and_then(|raw| serde_json::from_str::<PeerId>(raw.get()).ok())
                    .ok_or_else(|| {
                        FrameError::bad("signal needs to: a peer id string", reference)
                    })?;
                Self::Signal {
                    to,
                    data: need(flat.data, "data")?,
                    reference,
                }
            }
            "send" => {
                let to = match flat.to {
                    None => None,
                    Some(raw) => {
                        Some(serde_json::from_str::<Vec<PeerId>>(raw.get()).map_err(|_| {
                            FrameError::bad("send.to must be an array of peer ids", reference)
                        })?)
                    }
                };
                Self::Send {
                    to,
                    msg: need(flat.msg, "msg")?,
                    reference,
                }
            }
            "server_ack" => match (flat.e, flat.s) {
                (Some(e), Some(s)) => Self::ServerAck { e, s },
                _ => {
                    return Err(FrameError::bad(
                        "server_ack needs e and s: whole numbers",
                        reference,
                    ));
                }
            },
            "leave" => Self::Leave,
            "ping" => Self::Ping,
            "pong" => Self::Pong,
            other => return Err(FrameError::bad(format!("unknown op {other:?}"), reference)),
        })
    }

    /// The op name, for metrics and logs.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Join { .. } => "join",
            Self::Signal { .. } => "signal",
            Self::Send { .. } => "send",
            Self::ServerAck { .. } => "server_ack",
            Self::Leave => "leave",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }

    /// Serializes to the JSON text of one frame.
    pub fn to_json(&self) -> String {
        // Cannot fail: string keys only, no fallible Serialize impls.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Reads `ref` from a frame that failed to parse as a whole, so its error can still name it.
fn salvage_ref(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct RefOnly {
        #[serde(rename = "ref")]
        reference: Option<u64>,
    }
    serde_json::from_str::<RefOnly>(text).ok()?.reference
}
