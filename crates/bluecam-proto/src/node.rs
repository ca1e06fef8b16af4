//! The messages cluster nodes send each other over pub/sub (channel `bc:n:{node}`), as one
//! typed enum: [`NodeMessage`]. Frames are published by the nodes; membership messages by the
//! directory's scripts in the same atomic step as the change they announce. The wire shape is
//! one flat JSON object tagged by `t`, so that a frame's JSON is borrowed as it is, never
//! re-parsed; `docs/protocol.md` ("Between nodes") lists every kind.

use crate::{LeaveReason, NodeId, PeerId, PeerInfo, RawValue, RoomClosedReason, RoomId};
use serde::{Deserialize, Serialize};

/// A peer as the directory records it: who it is, and its join order in the room.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerRecord {
    pub info: PeerInfo,
    pub seq: u64,
}

/// One message between nodes. `ver` is the room's membership version after the change.
#[derive(Clone, Debug)]
pub enum NodeMessage<'a> {
    /// A frame for peers `to` of `room` held by the receiving node (JSON of a server frame).
    Frame {
        room: RoomId,
        to: Vec<PeerId>,
        frame: &'a RawValue,
    },
    /// A peer joined `room` on `node` (or was put back there after the directory lost it).
    Joined {
        room: RoomId,
        ver: u64,
        node: NodeId,
        peer: PeerRecord,
    },
    /// A peer left `room` for good.
    Left {
        room: RoomId,
        ver: u64,
        peer: PeerId,
        reason: LeaveReason,
    },
    /// A peer of `room` is on `node` now (it resumed there); its old node hands over.
    Moved {
        room: RoomId,
        ver: u64,
        node: NodeId,
        peer: PeerRecord,
    },
    /// `room` was deleted or expired: every node closes it.
    Closed {
        room: RoomId,
        reason: RoomClosedReason,
    },
    /// The app's backend removes `peer` of `room`, which the directory places on the
    /// receiving node (sent by the node whose API was asked).
    Kick { room: RoomId, peer: PeerId },
    /// A message from the app's backend to the peers `to` of `room` held by the receiving node
    /// (`None`: to every one of them); `body` is `{"type", "data"}`, as the API took it.
    ServerMessage {
        room: RoomId,
        to: Option<Vec<PeerId>>,
        body: &'a RawValue,
    },
}

/// Why a node message was refused.
#[derive(Debug)]
pub enum NodeMessageError {
    /// Not JSON of the flat shape.
    Json(serde_json::Error),
    /// A known kind without a field it needs.
    Missing {
        kind: &'static str,
        field: &'static str,
    },
}

impl std::fmt::Display for NodeMessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Json(e) => write!(f, "not a node message: {e}"),
            Self::Missing { kind, field } => write!(f, "a `{kind}` message without `{field}`"),
        }
    }
}

impl std::error::Error for NodeMessageError {}

/// The flat wire shape (every field of every kind).
#[derive(Deserialize, Serialize)]
struct Flat<'a> {
    t: &'a str,
    room: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ver: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<Vec<PeerId>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    f: Option<&'a RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rec: Option<PeerRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<PeerId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

impl<'a> NodeMessage<'a> {
    /// The message's kind on the wire (`t`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Frame { .. } => "frame",
            Self::Joined { .. } => "joined",
            Self::Left { .. } => "left",
            Self::Moved { .. } => "moved",
            Self::Closed { .. } => "closed",
            Self::Kick { .. } => "kick",
            Self::ServerMessage { .. } => "message",
        }
    }

    /// The room the message is about.
    pub fn room(&self) -> &RoomId {
        match self {
            Self::Frame { room, .. }
            | Self::Joined { room, .. }
            | Self::Left { room, .. }
            | Self::Moved { room, .. }
            | Self::Closed { room, .. }
            | Self::Kick { room, .. }
            | Self::ServerMessage { room, .. } => room,
        }
    }

    /// Decodes a message; `Ok(None)` for a kind this build does not know (a newer node's:
    /// ignored, so nodes of two versions can share a cluster during a rolling upgrade).
    pub fn decode(text: &'a str) -> Result<Option<Self>, NodeMessageError> {
        let flat: Flat<'a> = serde_json::from_str(text).map_err(NodeMessageError::Json)?;
        let room = flat.room;
        let need =
            |kind: &'static str, field: &'static str| NodeMessageError::Missing { kind, field };
        // A membership message without its version would be taken as older than any replica.
        let ver = |kind| flat.ver.ok_or(need(kind, "ver"));
        Ok(Some(match flat.t {
            "frame" => Self::Frame {
                room,
                to: flat.to.unwrap_or_default(),
                frame: flat.f.ok_or(need("frame", "f"))?,
            },
            "joined" => Self::Joined {
                room,
                ver: ver("joined")?,
                node: flat.node.ok_or(need("joined", "node"))?,
                peer: flat.rec.ok_or(need("joined", "rec"))?,
            },
            "left" => Self::Left {
                room,
                ver: ver("left")?,
                peer: flat.peer.ok_or(need("left", "peer"))?,
                reason: match flat.reason {
                    Some("left") => LeaveReason::Left,
                    Some("kicked") => LeaveReason::Kicked,
                    Some("replaced") => LeaveReason::Replaced,
                    // A reason this build does not know is still a departure.
                    _ => LeaveReason::Timeout,
                },
            },
            "moved" => Self::Moved {
                room,
                ver: ver("moved")?,
                node: flat.node.ok_or(need("moved", "node"))?,
                peer: flat.rec.ok_or(need("moved", "rec"))?,
            },
            "closed" => Self::Closed {
                room,
                reason: if flat.reason == Some("expired") {
                    RoomClosedReason::Expired
                } else {
                    RoomClosedReason::Deleted
                },
            },
            "kick" => Self::Kick {
                room,
                peer: flat.peer.ok_or(need("kick", "peer"))?,
            },
            "message" => Self::ServerMessage {
                room,
                to: flat.to,
                body: flat.f.ok_or(need("message", "f"))?,
            },
            _ => return Ok(None),
        }))
    }

    /// The wire text of a [`NodeMessage::Frame`] whose frame is `frame_json` (the JSON of a
    /// server frame, trusted as such): the same text as [`NodeMessage::encode`] gives, without
    /// parsing the frame again on the hot path.
    pub fn frame_text(room: &RoomId, to: &[PeerId], frame_json: &str) -> String {
        let room = serde_json::to_string(room).unwrap_or_default();
        let to = serde_json::to_string(to).unwrap_or_default();
        let mut out = String::with_capacity(frame_json.len() + to.len() + room.len() + 32);
        out.push_str(r#"{"t":"frame","room":"#);
        out.push_str(&room);
        out.push_str(r#","to":"#);
        out.push_str(&to);
        out.push_str(r#","f":"#);
        out.push_str(frame_json);
        out.push('}');
        out
    }

    /// The wire text.
    pub fn encode(&self) -> String {
        let mut flat = Flat {
            t: self.kind(),
            room: self.room().clone(),
            ver: None,
            to: None,
            f: None,
            node: None,
            rec: None,
            peer: None,
            reason: None,
        };
        match self {
            Self::Frame { to, frame, .. } => {
                flat.to = Some(to.clone());
                flat.f = Some(frame);
            }
            Self::Joined {
                ver, node, peer, ..
            }
            | Self::Moved {
                ver, node, peer, ..
            } => {
                flat.ver = Some(*ver);
                flat.node = Some(node.clone());
                flat.rec = Some(peer.clone());
            }
            Self::Left {
                ver, peer, reason, ..
            } => {
                flat.ver = Some(*ver);
                flat.peer = Some(peer.clone());
                flat.reason = Some(match reason {
                    LeaveReason::Left => "left",
                    LeaveReason::Timeout => "timeout",
                    LeaveReason::Kicked => "kicked",
                    LeaveReason::Replaced => "replaced",
                });
            }
            Self::Closed { reason, .. } => {
                flat.reason = Some(match reason {
                    RoomClosedReason::Deleted => "deleted",
                    RoomClosedReason::Expired => "expired",
                });
            }
            Self::Kick { peer, .. } => flat.peer = Some(peer.clone()),
            Self::ServerMessage { to, body, .. } => {
                flat.to = to.clone();
                flat.f = Some(body);
            }
        }
        // Serializing ids, numbers and raw JSON cannot fail.
        serde_json::to_string(&flat).unwrap_or_default()
    }
}
