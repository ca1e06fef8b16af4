//! [`Broker`]: the seam between the room logic and the other nodes of a cluster. It keeps the
//! directory of who is in which room on which node, and carries frames and membership events
//! between nodes.
//!
//! The single-node default is [`LocalBroker`]: one node holds every peer, so there is no one
//! to tell and nothing to look up, and every method is the identity. Cluster mode puts
//! [`redis::RedisBroker`] behind the same trait. The room logic (`bluecam-core`) is the
//! same in both: it sees peers of other nodes as remote peers of its rooms.
//!
//! Dependencies point one way: the node's driver (`crate::driver`) and the cluster's shell
//! ([`redis`]) both depend on this module, never on each other. The driver reaches the
//! cluster through [`Broker`]; the shell's tasks feed the node through the [`Host`] they are
//! started with (`RedisBroker::start`), which they own: nothing is bound late. The decisions
//! are the node's (`bluecam_core::Node`): the shell carries out its directory steps and
//! reports what it saw, the driver carries out the rest.

pub mod redis;

use bluecam_core::{
    Frame, Handled, Input, LocalPeer, Origin,
    directory::{ClaimReply, JoinReply},
};
use bluecam_proto::{
    ErrorCode, ErrorFrame, LeaveReason, NodeId, PeerId, PeerInfo, Permissions, ResumeCredentials,
    RoomId, SessionId, SessionSecret,
};
use futures_util::future::BoxFuture;

/// Peers of a room with whether each is connected.
pub type Presence = Vec<(PeerInfo, bool)>;

/// Merges the directory's peers of a room (in join order, each connected unless its node was
/// found dead: an orphan waiting for its resume) with what this node knows of its own peers:
/// whether each is connected right now.
pub fn presence(directory: Presence, here: &[(PeerInfo, bool)]) -> Presence {
    directory
        .into_iter()
        .map(|(p, alive)| {
            let connected = here
                .iter()
                .find(|(i, _)| i.id == p.id)
                .map_or(alive, |(_, c)| *c);
            (p, connected)
        })
        .collect()
}

/// Why the directory could not answer (its refusals are answers: `JoinReply`, `ClaimReply`).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the cluster directory is unavailable: {0}")]
    Unavailable(String),
}

/// A new peer, as the directory records it.
#[derive(Clone, Debug)]
pub struct NewPeer {
    pub room: RoomId,
    pub max_peers: u32,
    /// The room keeps several sessions per identity (else a new one replaces the others).
    pub multiple_sessions: bool,
    pub info: PeerInfo,
    pub permissions: Permissions,
    pub session: SessionId,
    pub secret: SessionSecret,
}

/// What a node sends to the others, in order.
#[derive(Debug)]
pub enum Outgoing {
    /// A frame for peers `to` of `room`, who are on `node`.
    Frame {
        node: NodeId,
        room: RoomId,
        to: Vec<PeerId>,
        frame: Frame,
        origin: Option<Origin>,
    },
    /// A peer of this node is gone for good: remove it from the directory, tell the others.
    Removed {
        room: RoomId,
        peer: PeerId,
        session: SessionId,
        reason: LeaveReason,
    },
}

/// Where a peer the backend removes is, as the directory says (`Broker::kick`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kick {
    /// On this node (always so on a single node): the driver removes it.
    Here,
    /// On another node, which was told to remove it.
    Told,
    /// On no live node (an orphan, or its node is gone): removed from the directory, which
    /// told the others.
    Removed,
    /// Not in the room.
    Unknown,
}

/// Where a message of the app's backend goes in a cluster (`Broker::server_message`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Routed {
    /// Recipients this node holds: the driver hands it to them.
    pub here: Vec<PeerId>,
    /// Recipients of other nodes, which were handed it.
    pub elsewhere: Vec<PeerId>,
    /// Recipients no live node holds (an orphan waiting for its resume, a node gone), and ids
    /// that are not in the room.
    pub unreachable: Vec<PeerId>,
}

/// A request of the HTTP transport (`crate::transport::http`) passed to the node holding its session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpOp {
    Poll,
    Send,
}

/// The holding node's answer to a passed-on request.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// Why a request could not be passed on.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// No node listens under that id (it is gone, or restarted under a new id).
    NoSuchNode,
    /// It did not answer in time, or the directory is unreachable.
    NoAnswer,
}

/// What answers requests passed on by other nodes
/// (`crate::transport::http::forwarded_handler`; the cluster node is started with it).
#[derive(Clone)]
pub struct HttpHandler(
    pub std::sync::Arc<dyn Fn(HttpOp, bytes::Bytes) -> BoxFuture<'static, HttpReply> + Send + Sync>,
);

impl std::fmt::Debug for HttpHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpHandler")
    }
}

/// The directory and transport between nodes. See the module doc.
pub trait Broker: Send + Sync + 'static {
    /// This node's id in the cluster; `None` on a single node.
    fn node(&self) -> Option<&NodeId>;

    /// Records a new peer with the directory (which refuses it when the room is full or
    /// gone); what the answer means is the node's to decide (`Input::Admission`). A single
    /// node has no directory to ask.
    fn join(&self, peer: NewPeer) -> BoxFuture<'_, Result<JoinReply, BrokerError>>;

    /// Asks the directory to move a session (perhaps held by another node) here; see
    /// [`Broker::join`].
    fn claim(
        &self,
        room: RoomId,
        identity: bluecam_proto::Identity,
        creds: ResumeCredentials,
    ) -> BoxFuture<'_, Result<ClaimReply, BrokerError>>;

    /// Queues something for the other nodes without waiting. `Err` gives it back when it
    /// cannot be sent (queue full, directory down); the caller tells the sender.
    fn send(&self, item: Outgoing) -> Result<(), Outgoing>;

    /// A room's peers across the cluster, in join order, each with whether its node is alive
    /// (see [`presence`]); `None` on a single node (the driver knows).
    fn presence(&self, room: RoomId) -> BoxFuture<'_, Result<Option<Presence>, BrokerError>>;

    /// Finds a peer the backend removes and, when another node holds it, has that node
    /// remove it (see [`Kick`]). A single node holds every peer: [`Kick::Here`].
    fn kick(&self, room: RoomId, peer: PeerId) -> BoxFuture<'_, Result<Kick, BrokerError>>;

    /// Hands a message of the app's backend (`body`: `{"type", "data"}`) to the other nodes
    /// holding its recipients (`to`, or every peer of the room), and says where each is (see
    /// [`Routed`]). A single node holds every peer: nothing is routed, the driver finds them.
    fn server_message(
        &self,
        room: RoomId,
        to: Option<Vec<PeerId>>,
        body: Box<bluecam_proto::RawValue>,
    ) -> BoxFuture<'_, Result<Routed, BrokerError>>;

    /// Peer counts of rooms across the cluster; `None` on a single node.
    fn peer_counts(
        &self,
        rooms: Vec<RoomId>,
    ) -> BoxFuture<'_, Result<Option<Vec<u32>>, BrokerError>>;

    /// Whether the directory answers (for `/readyz`).
    fn check(&self) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// The directory's epoch and whether it is marked as being rebuilt, for
    /// `Node::directory_lost` (a room the store lacks may be on its way back). A single node
    /// has no directory: `(None, false)`.
    fn directory_epoch(&self) -> BoxFuture<'_, Result<(Option<String>, bool), BrokerError>> {
        Box::pin(async { Ok((None, false)) })
    }

    /// Passes an HTTP transport request (its body as it came, bytes) to `node`, which holds
    /// its session, and waits up to `wait` for its answer. A single node has no one to pass it
    /// to.
    fn forward_http(
        &self,
        node: NodeId,
        op: HttpOp,
        body: bytes::Bytes,
        wait: std::time::Duration,
    ) -> BoxFuture<'_, Result<HttpReply, ForwardError>> {
        let _ = (node, op, body, wait);
        Box::pin(async { Err(ForwardError::NoSuchNode) })
    }
}

/// What the cluster's shell needs of this node (its driver implements it): one way in for
/// everything it saw ([`Host::handle`]), and a few reads.
pub trait Host: Send + Sync + 'static {
    /// Gives the node an input (an event from another node, a room's snapshot, a room closed,
    /// a peer gone, a signal, a step done) and carries out what it decided.
    fn handle(&self, input: Input<'static>) -> Handled;
    /// A message of the app's backend for this node's peers `to` of `room` (`None`: all),
    /// from the node whose API took it (`body`: `{"type", "data"}`).
    fn server_message(
        &self,
        room: &RoomId,
        to: Option<Vec<PeerId>>,
        body: &bluecam_proto::RawValue,
    );
    /// This node's peers (to put them back into the directory).
    fn local_peers(&self) -> Vec<LocalPeer>;
    /// Rooms with peers on this node.
    fn local_rooms(&self) -> Vec<RoomId>;
    /// Whether a join into `room` is waiting for the directory.
    fn has_pending_join(&self, room: &RoomId) -> bool;
    /// Something for another node could not be sent: its sender is told.
    fn undelivered(&self, item: Outgoing);
    /// A room's peers on this node with whether each is connected.
    fn peers(&self, room: &RoomId) -> Vec<(PeerInfo, bool)>;
}

/// The error a sender gets when its frame could not reach another node.
pub fn unsent_error(to: Vec<PeerId>, reference: Option<u64>) -> ErrorFrame {
    let mut e = ErrorFrame::new(
        ErrorCode::Unavailable,
        "these peers are on another node, which could not be reached; nothing was delivered to them",
    )
    .with_ref(reference);
    e.peers = Some(to);
    e
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

impl std::fmt::Debug for dyn Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Broker")
    }
}

/// The single-node broker: every peer is on this node.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn node(&self) -> Option<&NodeId> {
        None
    }

    fn join(&self, _: NewPeer) -> BoxFuture<'_, Result<JoinReply, BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unavailable(
                "a single node has no directory".into(),
            ))
        })
    }

    fn claim(
        &self,
        _: RoomId,
        _: bluecam_proto::Identity,
        _: ResumeCredentials,
    ) -> BoxFuture<'_, Result<ClaimReply, BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Unavailable(
                "a single node has no directory".into(),
            ))
        })
    }

    fn send(&self, item: Outgoing) -> Result<(), Outgoing> {
        match item {
            // The core never addresses another node when there is none.
            Outgoing::Frame { .. } => Err(item),
            Outgoing::Removed { .. } => Ok(()),
        }
    }

    fn presence(&self, _: RoomId) -> BoxFuture<'_, Result<Option<Presence>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    fn kick(&self, _: RoomId, _: PeerId) -> BoxFuture<'_, Result<Kick, BrokerError>> {
        Box::pin(async { Ok(Kick::Here) })
    }

    fn server_message(
        &self,
        _: RoomId,
        _: Option<Vec<PeerId>>,
        _: Box<bluecam_proto::RawValue>,
    ) -> BoxFuture<'_, Result<Routed, BrokerError>> {
        Box::pin(async { Ok(Routed::default()) })
    }

    fn peer_counts(&self, _: Vec<RoomId>) -> BoxFuture<'_, Result<Option<Vec<u32>>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}
