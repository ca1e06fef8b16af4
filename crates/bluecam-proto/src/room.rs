//! Shapes shared by the HTTP API and the WebSocket frames: rooms, peers, ICE servers, limits.

use crate::{Identity, PeerId, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A room as the HTTP API returns it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Room {
    pub id: RoomId,
    pub name: Option<String>,
    pub description: Option<String>,
    pub owner: Option<Identity>,
    /// When set, only the owner and these identities may join.
    pub members: Option<Vec<Identity>>,
    pub max_peers: u32,
    /// Remove the room after it has been empty this long; `None`: never.
    pub empty_timeout_secs: Option<u64>,
    /// Any JSON the app stored with the room.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Box<RawValue>>,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    pub peer_count: u32,
    /// Whether one identity may hold several seats at once (several tabs or devices). When
    /// false (the default), a join by an identity already in the room replaces its session.
    #[serde(default)]
    pub multiple_sessions: bool,
    /// Identities the app's backend removed from the room, each with when (Unix seconds):
    /// their tokens issued then or before are refused. Kept by each store beside the room
    /// (never in its JSON: a change of the room cannot write over a removal).
    #[serde(skip)]
    pub removed: std::collections::BTreeMap<Identity, u64>,
}

impl Room {
    /// Whether a token for `identity` issued at `iat` predates the identity's removal.
    pub fn revoked(&self, identity: &Identity, iat: u64) -> bool {
        self.removed.get(identity).is_some_and(|at| iat <= *at)
    }
}

/// What a joining peer learns about its room (`joined.room`): no owner or member list.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomSummary {
    pub id: RoomId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Box<RawValue>>,
    pub max_peers: u32,
}

impl From<&Room> for RoomSummary {
    fn from(room: &Room) -> Self {
        Self {
            id: room.id.clone(),
            name: room.name.clone(),
            description: room.description.clone(),
            metadata: room.metadata.clone(),
            max_peers: room.max_peers,
        }
    }
}

/// A peer as other peers (and the HTTP API) see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub id: PeerId,
    pub identity: Identity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The `metadata` of its token: any JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub metadata: Option<Box<RawValue>>,
}

impl PartialEq for PeerInfo {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.identity == other.identity
            && self.name == other.name
            && self.metadata.as_deref().map(RawValue::get)
                == other.metadata.as_deref().map(RawValue::get)
    }
}

/// What a token allows; each permission is granted when absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Permissions {
    #[serde(default = "yes")]
    pub publish_media: bool,
    #[serde(default = "yes")]
    pub subscribe_media: bool,
    #[serde(default = "yes")]
    pub send_data: bool,
}

fn yes() -> bool {
    true
}

impl Default for Permissions {
    fn default() -> Self {
        Self {
            publish_media: true,
            subscribe_media: true,
            send_data: true,
        }
    }
}

/// One entry of `RTCConfiguration.iceServers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The limits in force for a connection, sent in `joined.limits` so clients can pace themselves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Largest accepted text frame, in bytes (a `send` of a 1 MiB message plus its envelope).
    pub max_frame_bytes: usize,
    /// Sustained frames per second before `rate_limited`.
    pub rate_frames_per_sec: u32,
    /// Frames that may arrive at once above the sustained rate.
    pub rate_burst_frames: u32,
    /// Sustained bytes per second before `rate_limited`.
    pub rate_bytes_per_sec: u64,
    /// Bytes that may arrive at once above the sustained rate.
    pub rate_burst_bytes: u64,
    /// Bytes the server queues towards this connection before it disconnects it as too slow.
    pub outbound_queue_bytes: usize,
    pub max_peers: u32,
    pub resume_window_secs: u64,
    /// The server pings this often and drops a connection silent for twice as long.
    pub ping_interval_secs: u64,
}
