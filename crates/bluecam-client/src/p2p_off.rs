//! Built without the `webrtc` feature: no WebRTC connection is made, every peer is told
//! `{"nortc": true}` and reached through the relay.

use bluecam_proto::IceServer;
use serde_json::Value;
use tokio::sync::mpsc;

/// Where links would tell their room what happened (none are made).
pub(crate) type LinkEvents = mpsc::UnboundedSender<(String, String, LinkEvent)>;

/// Whether this build makes WebRTC connections.
pub(crate) const AVAILABLE: bool = false;

/// What a link tells its room (never, in this build).
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum LinkEvent {
    Signal(Value),
    Open,
    Down,
    Data(String),
}

/// How a link reaches the other side (unread in this build).
#[derive(Clone, Debug, Default)]
#[allow(dead_code)]
pub(crate) struct IceConfig {
    pub servers: Vec<IceServer>,
    pub relay_only: bool,
}

/// No link is ever made in this build.
#[derive(Debug)]
pub(crate) struct PeerLink {
    pub generation: String,
    pub remote_gen: Option<String>,
    never: std::convert::Infallible,
}

impl PeerLink {
    pub fn start(_: &str, _: bool, _: &IceConfig, _: LinkEvents) -> Option<PeerLink> {
        None
    }

    pub fn is_open(&self) -> bool {
        match self.never {}
    }

    pub fn buffered(&self) -> u64 {
        match self.never {}
    }

    pub fn send(&self, _: String) -> bool {
        match self.never {}
    }

    pub fn can_take_more(&self) -> bool {
        match self.never {}
    }

    pub fn send_all(&self, _: Vec<String>) -> bool {
        match self.never {}
    }

    pub fn signal(&self, _: Value, _: bool) {
        match self.never {}
    }
}
