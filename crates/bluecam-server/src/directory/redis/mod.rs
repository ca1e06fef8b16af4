//! Cluster mode: [`RedisBroker`] (the directory of peers and the pub/sub transport between
//! nodes) and [`RedisStore`] (rooms), both on one Redis. `docs/architecture.md` ("Cluster")
//! explains the design; the keys are:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bc:{room}:room` | string | the room (JSON), as the HTTP API created it |
//! | `bc:{room}:active` | string | when the room was last occupied (Unix seconds) |
//! | `bc:{room}:removed` | string | JSON object: identity → when the backend removed it (Unix seconds): its older tokens are refused (`rooms.rs`; not a directory key) |
//! | `bc:{room}:peers` | hash | peer id → `{"info":…,"seq":…}` |
//! | `bc:{room}:nodes` | hash | peer id → `node\nsession` (node `~`: an orphan) |
//! | `bc:{room}:ver` | counter | membership version (every join, leave and move) |
//! | `bc:{room}:sessions` | hash | session → `{"room","peer","identity","secret","permissions"}` |
//! | `bc:{room}:gone` | sorted set, expiring (1 h) | tombstones: peers that left for good (`REGISTER` does not put them back), by until when |
//! | `bc:{room}:orphans` | sorted set | peers of reaped nodes, by when their resume window ends |
//! | `bc:{room}:deleted` | string, expiring (1 h) | a tombstone: the room was deleted (its PostgreSQL row is not put back) |
//! | `bc:rooms` | sorted set | room ids by creation time |
//! | `bc:orphans` | sorted set | rooms with orphans, by when the next may be due (on a Redis Cluster one per shard, `bc:{eN}:orphans`, listing the shard's rooms) |
//! | `bc:node:{node}:alive` | string, expiring | the node's heartbeat |
//! | `bc:node:{node}:rooms` | set | rooms the node may have peers in (a superset: written before a join, pruned by its resyncs) |
//! | `bc:nodes` | set | every node that may still hold peers |
//! | `bc:epoch` | string | the directory's epoch: drawn once; a Redis that lost its data has none |
//! | `bc:{eN}:epoch` | string | on a Redis Cluster, one epoch per shard instead (`N`: the smallest number whose tag lands in the shard's first slot range), so a shard that lost its data is noticed |
//! | `bc:rebuilt` | string, expiring (a resume window) | Redis lost its data a moment ago: what it lacks may still come back |
//!
//! Every key of a room carries the room as a hash tag (`{room}`): each membership operation
//! is one Lua script that touches one room's keys only, all declared, so it runs in one slot
//! of a Redis Cluster. The scripts are the translation of the model
//! `bluecam_core::directory::Directory` (the specification), held to it by the shared vectors
//! `tests/vectors/directory.json`; [`RedisDirectory`] carries out each operation of the
//! model (the script, and the global writes around it).
//!
//! Each node subscribes to its own channel `bc:n:{node}` (a shard channel on a Redis Cluster:
//! `SSUBSCRIBE`/`SPUBLISH`); what nodes send each other is [`bluecam_proto::NodeMessage`]. A
//! membership script updates the room, bumps its version and publishes the event to the
//! other nodes of the room in one atomic step (on a Redis Cluster it answers the events and
//! the node publishes them before anything else it sends: a script may touch one slot); the scripts
//! share one prelude of functions (seat, move, remove, tell the room's nodes) and are called
//! by SHA (`EVALSHA`, loaded again after a Redis restart). Frames are published by one
//! ordered outbox task per node, pipelined.
//!
//! Every decision about the directory (when to heartbeat, resync, reap, rebuild) is taken by
//! the sans-IO [`bluecam_core::cluster::ClusterNode`]; this module carries its steps out.

mod connect;
mod ops;
mod outbox;
mod relay;
mod rooms;
mod scripts;

use connect::build;
pub use connect::redis_config;
pub use ops::RedisDirectory;
pub(crate) use relay::RelayHead;
use relay::http_channel;
pub use rooms::RedisStore;
use scripts::*;

use crate::{
    directory::{
        Broker, BrokerError, ForwardError, Host, HttpHandler, HttpOp, HttpReply, NewPeer, Outgoing,
    },
    metrics::Metrics,
    persist::store::{Store, StoreError},
};
use bluecam_core::{
    Handled, Input, RemotePeer,
    cluster::{Beat, Done, Signal, Step, split_view, stale_entries},
    directory::{ClaimReply, JoinReply, PeerEntry, RegisterReply},
};
use bluecam_proto::{
    Identity, LeaveReason, NodeId, NodeMessage, PeerId, PeerRecord, ResumeCredentials, Room,
    RoomClosedReason, RoomId, SessionId, SessionSecret,
};
use fred::prelude::{
    Builder, Client, ClientLike as _, Config as FredConfig, EventInterface as _, Expiration,
    FromValue, HashesInterface as _, KeysInterface as _, LuaInterface as _, Options,
    PubsubInterface as _, ReconnectPolicy, SetOptions, SetsInterface as _,
    SortedSetsInterface as _, Value,
};
use futures_util::{StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use serde::{Deserialize, Serialize};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection attempts at start before a node gives up.
const CONNECT_TRIES: u32 = 5;
/// Items the outbox sends per pipeline at most.
const OUTBOX_BATCH: usize = 512;

pub use bluecam_core::cluster::Decoded;

/// Decodes a message from another node; `Ok(None)` for one that carries nothing this node
/// can apply (a kind it does not know, a frame that is not a server frame).
pub fn decode_event(text: &str) -> Result<Option<Decoded>, bluecam_proto::NodeMessageError> {
    let Some(msg) = NodeMessage::decode(text)? else {
        tracing::warn!("unknown cluster message kind");
        return Ok(None);
    };
    Ok(Decoded::from_message(msg))
}

fn channel(node: &NodeId) -> String {
    format!("bc:n:{node}")
}

fn backend(e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

/// The Redis side of a cluster node. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct RedisBroker {
    node: NodeId,
    client: Client,
    opts: Options,
    /// The directory's operations.
    dir: RedisDirectory,
    outbox: mpsc::Sender<Outgoing>,
    /// Taken by [`RedisBroker::start`].
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// How long the peers of a reaped node stay in their rooms, resumable anywhere.
    resume_window: Duration,
    metrics: Metrics,
    /// How long a heartbeat renews this node's liveness for.
    alive_for: Duration,
    /// Requests this node passed on, waiting for their answers.
    http_waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<HttpReply>>>,
    http_next: std::sync::atomic::AtomicU64,
    /// Requests passed on by other nodes being answered now (see `relay.rs`).
    http_answering: std::sync::atomic::AtomicUsize,
    /// The client settings (TLS included) of every connection the node makes.
    config: FredConfig,
}

impl RedisBroker {
    /// Connects to Redis; fails when it cannot be reached now.
    pub async fn connect(
        config: FredConfig,
        ttl: Duration,
        resume_window: Duration,
        queue: usize,
        metrics: Metrics,
    ) -> Result<Arc<Self>, BrokerError> {
        // A Redis that is slow to answer at our start (busy, or starting itself) gets a few
        // tries, each with a new client, before the node gives up.
        let mut tries = 0;
        let client = loop {
            let client = build(&config).map_err(backend)?.build().map_err(backend)?;
            match client.init().await {
                Ok(_) => break client,
                Err(e) => {
                    tries += 1;
                    if tries >= CONNECT_TRIES {
                        return Err(backend(e));
                    }
                    tracing::warn!(error = %e, "Redis does not answer yet; trying again");
                    let _ = client.quit().await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        let node = NodeId::new(crate::auth::random_token(9));
        let (outbox, rx) = mpsc::channel(queue.max(1));
        let opts = Options {
            fail_fast: true,
            timeout: Some(COMMAND_TIMEOUT),
            ..Options::default()
        };
        Ok(Arc::new(Self {
            dir: RedisDirectory::new(client.clone(), opts.clone()),
            client,
            opts,
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(rx)),
            resume_window,
            metrics,
            alive_for: bluecam_core::cluster::alive_for(ttl),
            http_waiting: Mutex::new(HashMap::new()),
            http_next: std::sync::atomic::AtomicU64::new(0),
            http_answering: std::sync::atomic::AtomicUsize::new(0),
            node,
            config,
        }))
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> &NodeId {
        &self.node
    }

    /// The rooms store on the same Redis.
    pub fn store(self: &Arc<Self>) -> RedisStore {
        RedisStore {
            broker: Arc::clone(self),
        }
    }

    /// Starts the node's tasks: subscriber, outbox, and the shell of the control loop, which
    /// carries out the directory `steps` the node decides on (heartbeat, restore, resync,
    /// reap). Runs the first heartbeat before anything else; fails when it fails or the
    /// subscription cannot be made.
    pub async fn start(
        self: &Arc<Self>,
        host: Arc<dyn Host>,
        mut steps: mpsc::UnboundedReceiver<Step>,
        http_handler: HttpHandler,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        match self.dir.migrate_old_layout().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rooms = n, "moved rooms to the per-room key layout"),
            Err(e) => tracing::warn!(error = %e, "could not move rooms of the old key layout"),
        }
        // The first heartbeat, before this node takes any peer (the node asks for it at once).
        host.handle(Input::Timeout);
        let mut epoch = None;
        let Ok(step @ Step::Heartbeat) = steps.try_recv() else {
            return Err(BrokerError::Unavailable(
                "the node did not ask for its first heartbeat".into(),
            ));
        };
        let done = self.run_step(host.as_ref(), step).await;
        let Done::Heartbeat(Some(beat)) = &done else {
            return Err(BrokerError::Unavailable(
                "the first heartbeat failed".into(),
            ));
        };
        self.note_beat(&mut epoch, beat);
        host.handle(Input::StepDone(done));
        let subscriber = build(&self.config)
            .map_err(backend)?
            .build_subscriber_client()
            .map_err(backend)?;
        subscriber.init().await.map_err(backend)?;
        let mut messages = subscriber.message_rx();
        let mut resubscribed = subscriber.reconnect_rx();
        // On a Redis Cluster the node's channels are shard channels (`SSUBSCRIBE`): each
        // lives on the shard of its name, and a message there is not forwarded to the others.
        // (One at a time: the two are in different slots.)
        let channels = [channel(&self.node), http_channel(&self.node)];
        if self.client.is_clustered() {
            for c in channels {
                subscriber.ssubscribe(c).await.map_err(backend)?;
            }
        } else {
            subscriber
                .subscribe(channels.to_vec())
                .await
                .map_err(backend)?;
        }
        let http_chan = http_channel(&self.node);
        let resubscribe = subscriber.manage_subscriptions();
        tracing::info!(node = %self.node, "cluster node joined through Redis");

        // Events from other nodes, applied in the order Redis delivered them.
        let me = Arc::clone(self);
        let stop = shutdown.clone();
        let events_host = Arc::clone(&host);
        let answers = tracker.clone();
        // On a Redis Cluster the shard channels are subscribed again every few seconds: a
        // master that failed over or a slot that moved takes a shard channel's subscription
        // with it, and fred's own resubscription (after a reconnection) can run before the
        // cluster has a new master for the slot. Subscribing again where one is subscribed
        // already does nothing; where the subscription was lost, it comes back on the slot's
        // master now (what was published meanwhile is reported to its senders as unheard).
        let clustered = self.client.is_clustered();
        let mut again = tokio::time::interval(Duration::from_secs(2));
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shard_channels = [channel(&self.node), http_channel(&self.node)];
        tracker.spawn(async move {
            let host = events_host;
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    m = messages.recv() => m,
                    _ = again.tick(), if clustered => {
                        for c in &shard_channels {
                            if let Err(e) = subscriber.ssubscribe(c.clone()).await {
                                tracing::debug!(error = %e, "shard channel not subscribed yet");
                            }
                        }
                        continue;
                    }
                };
                match msg {
                    Ok(msg) if *msg.channel == *http_chan => {
                        if let Some(message) = msg.value.as_bytes() {
                            me.on_http(message, &answers, &http_handler);
                        }
                    }
                    Ok(msg) => {
                        me.metrics.cluster_in.increment(1);
                        if let Some(text) = msg.value.as_str() {
                            me.on_event(host.as_ref(), &text);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Lost events are repaired by the next resync (not a Redis error:
                        // this node read too slowly).
                        me.metrics
                            .dropped(crate::metrics::DropReason::ClusterEventsLagged, n);
                        host.handle(Input::Signal(Signal::Lagged));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                }
            }
            resubscribe.abort();
            let _ = subscriber.quit().await;
        });

        // The outbox: frames and removals, in order.
        let me = Arc::clone(self);
        let rx = self
            .outbox_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(rx) = rx {
            let stop = shutdown.clone();
            let host = Arc::clone(&host);
            tracker.spawn(async move { me.run_outbox(rx, stop, host.as_ref()).await });
        }

        // The shell of the control loop: carries out the directory steps the node decides on
        // (when each is due is the node's: its driver's timer wakes it). A heartbeat runs
        // beside the other steps, so a long resync cannot starve it.
        let me = Arc::clone(self);
        let mut reconnects = self.client.reconnect_rx();
        // A Redis Cluster whose shards changed (a master failed over to its replica, slots
        // moved): a replica may lack the last writes its master took, so this node's peers
        // are registered again, as after a reconnection.
        let mut cluster_changes = self.client.cluster_change_rx();
        tracker.spawn(async move {
            let mut running: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    Some(step) = steps.recv() => {
                        let me = Arc::clone(&me);
                        let host = Arc::clone(&host);
                        running.push(Box::pin(
                            async move { me.run_step(host.as_ref(), step).await },
                        ));
                    }
                    Some(done) = running.next() => {
                        if let Done::Heartbeat(Some(beat)) = &done {
                            me.note_beat(&mut epoch, beat);
                        }
                        host.handle(Input::StepDone(done));
                    }
                    r = reconnects.recv() => {
                        if r.is_ok() {
                            tracing::info!("Redis is back: re-registering this node's peers");
                            host.handle(Input::Signal(Signal::Reconnected));
                        }
                    }
                    r = resubscribed.recv() => {
                        if r.is_ok() {
                            host.handle(Input::Signal(Signal::Resubscribed));
                        }
                    }
                    r = cluster_changes.recv() => {
                        if let Ok(changes) = r
                            && !changes.is_empty()
                        {
                            tracing::info!(
                                ?changes,
                                "the Redis Cluster changed: re-registering this node's peers"
                            );
                            host.handle(Input::Signal(Signal::Reconnected));
                        }
                    }
                }
            }
        });
        Ok(())
    }

    /// Carries out one step of the control loop.
    async fn run_step(self: &Arc<Self>, host: &dyn Host, step: Step) -> Done {
        match step {
            Step::Heartbeat => Done::Heartbeat(self.heartbeat().await.ok()),
            Step::RestoreRooms(rooms) => {
                self.restore_rooms(host, rooms).await;
                Done::RestoreRooms
            }
            Step::Resync { reconcile } => Done::Resync(self.resync(host, reconcile).await),
            Step::Reap => {
                self.reap(host).await;
                Done::Reap
            }
        }
    }

    fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&self.opts)
    }

    /// Publishes on a node's channel: `SPUBLISH` on a Redis Cluster (the channel's shard
    /// only), `PUBLISH` on one Redis. How many listened.
    async fn publish_to<V>(&self, channel: String, message: V) -> Result<i64, fred::error::Error>
    where
        V: TryInto<Value> + Send,
        V::Error: Into<fred::error::Error> + Send,
    {
        if self.client.is_clustered() {
            self.client.spublish(channel, message).await
        } else {
            self.client.publish(channel, message).await
        }
    }

    /// Counts and logs a failed command. (The node learns of it from what the step reports,
    /// or from a [`Signal::Failed`] where no step does.)
    fn redis_error(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.increment(1);
        tracing::warn!(error = %e, "Redis {what} failed");
    }

    /// [`Self::redis_error`], and the node is told it is out of step.
    fn step_error(&self, host: &dyn Host, what: &str, e: &dyn std::fmt::Display) {
        self.redis_error(what, e);
        host.handle(Input::Signal(Signal::Failed));
    }

    /// Renews this node's liveness (it lives `ClusterNode::alive_for`), reads the directory's
    /// epoch (drawing one when there is none: a Redis that lost its data has none, or, once
    /// another node drew it, another) and adds this node to the node set.
    async fn heartbeat(self: &Arc<Self>) -> Result<Beat, BrokerError> {
        let ttl = self.alive_for.as_millis() as u64;
        let fresh = crate::auth::random_token(9);
        self.dir
            .heartbeat(&self.node, ttl, &fresh)
            .await
            .inspect_err(|e| self.redis_error("heartbeat", e))
    }

    /// Logs what a heartbeat found that the node will act on; `epoch` is the one last seen.
    fn note_beat(&self, epoch: &mut Option<String>, beat: &Beat) {
        let seen = epoch.replace(beat.epoch.clone());
        if seen.as_ref().is_some_and(|e| *e != beat.epoch) {
            tracing::warn!(
                "Redis lost its data (a new directory epoch): rebuilding what this node holds"
            );
            self.metrics.redis_errors.increment(1);
        } else if beat.drew_epoch {
            tracing::info!(
                "this node drew the directory's epoch (a new directory, or one that lost its \
                 data): for one resume window, joins into rooms it lacks are told to retry"
            );
        } else if beat.was_missing && seen.is_some() {
            tracing::warn!("this node was missing from the directory; re-registering");
        }
    }

    /// Marks the directory as being rebuilt (see `Step::RestoreRooms`) and puts back stored
    /// rooms this node has peers in (create-if-absent): Redis lost them.
    async fn restore_rooms(self: &Arc<Self>, host: &dyn Host, rooms: Vec<Room>) {
        // Each room's version goes back to this node's before the room exists again, so a
        // join in the gap before the re-registration is numbered above every replica.
        let mut vers: HashMap<RoomId, u64> = HashMap::new();
        for p in host.local_peers() {
            let v = vers.entry(p.room).or_default();
            *v = (*v).max(p.room_ver);
        }
        for room in &rooms {
            let ver = vers.get(&room.id).copied().unwrap_or(0);
            if let Err(e) = self.dir.raise_version(&room.id, ver).await {
                self.step_error(host, "version restore", &e);
            }
        }
        let window = self.resume_window.as_millis() as u64;
        if let Err(e) = self.dir.mark_rebuilt(window).await {
            self.step_error(host, "rebuild mark", &e);
        }
        let store = RedisStore {
            broker: Arc::clone(self),
        };
        for room in rooms {
            match store.create_room(room).await {
                Ok(()) | Err(StoreError::Exists) => {}
                Err(e) => tracing::warn!(error = %e, "could not put a room back"),
            }
        }
    }

    /// Orphans the peers of nodes whose liveness key has expired, and removes orphans whose
    /// resume window has passed (`Directory::reap`).
    async fn reap(&self, host: &dyn Host) {
        let window = self.resume_window.as_millis() as u64;
        match self.dir.reap(&self.node, window).await {
            Ok(reaped) => {
                for (node, peers) in reaped.nodes {
                    tracing::info!(
                        %node,
                        peers,
                        "node is gone; its peers may resume on another node within the resume window"
                    );
                }
                if reaped.swept > 0 {
                    tracing::info!(
                        peers = reaped.swept,
                        "peers of a gone node did not resume; they left"
                    );
                }
            }
            Err(e) => self.step_error(host, "reap", &e),
        }
    }

    /// Brings the directory and this node back in step (after Redis came back, an error, or
    /// lost events): puts this node's peers back (announcing them if they had been removed),
    /// removes entries of peers it no longer holds, and reconciles every room replica with
    /// the directory (unless `reconcile` is false: the directory is being rebuilt). Returns
    /// whether every step went through.
    async fn resync(&self, host: &dyn Host, reconcile: bool) -> bool {
        let local = host.local_peers();
        for p in &local {
            let entry = PeerEntry {
                info: p.info.clone(),
                session: p.session.clone(),
                secret: p.secret.clone(),
                permissions: p.permissions,
            };
            let r = self
                .dir
                .register(&p.room, &self.node, &entry, p.seq, p.room_ver)
                .await;
            match r {
                Ok(RegisterReply::Gone) => {
                    host.handle(Input::RoomClosed {
                        room: p.room.clone(),
                        reason: RoomClosedReason::Deleted,
                    });
                }
                Ok(RegisterReply::Left) => {
                    host.handle(Input::PeerGone {
                        room: p.room.clone(),
                        peer: p.info.id.clone(),
                    });
                }
                // `Moved` is applied by the room's snapshot below.
                Ok(_) => {}
                Err(e) => {
                    self.redis_error("re-register", &e);
                    return false;
                }
            }
        }
        // Entries of peers this node no longer holds (a leave that failed, a join whose answer
        // was lost): removed and announced, unless a join into their room is under way.
        let recorded = match self.dir.recorded_on(&self.node).await {
            Ok(m) => m,
            Err(e) => {
                self.redis_error("node peers", &e);
                return false;
            }
        };
        let held: HashSet<(RoomId, PeerId)> = host
            .local_peers()
            .into_iter()
            .map(|p| (p.room, p.info.id))
            .collect();
        let stale: Vec<_> = stale_entries(recorded.iter().cloned(), &held, |room| {
            host.has_pending_join(room)
        })
        .collect();
        for (room, peer) in stale {
            let left = self
                .dir
                .leave(&room, &peer, &self.node, LeaveReason::Timeout)
                .await;
            if let Err(e) = left {
                self.redis_error("stale entry removal", &e);
                return false;
            }
        }
        if !self.prune_rooms(host, &recorded).await {
            return false;
        }
        if !reconcile {
            // The directory was lost a moment ago and the other nodes are putting their peers
            // back: a snapshot now would announce live peers as gone (`ClusterNode` asks again
            // in a later round).
            return true;
        }
        let mut stale = false;
        for room in host.local_rooms() {
            match self.room_snapshot(&room).await {
                Ok((ver, peers)) => {
                    // Peers recorded on this node that it does not hold yet are joining or
                    // resuming here right now: not gone.
                    let (peers, here) = split_view(peers, &self.node);
                    let here: Vec<PeerId> = here.into_iter().map(|p| p.info.id).collect();
                    let input = Input::Snapshot {
                        room,
                        ver,
                        peers,
                        here,
                    };
                    if let Handled::Snapshot { applied: false } = host.handle(input) {
                        // Older than events this node applied meanwhile: read it again.
                        stale = true;
                    }
                }
                Err(e) => {
                    self.redis_error("room snapshot", &e);
                    return false;
                }
            }
        }
        !stale
    }

    /// A room's version and every peer in it, per the directory.
    async fn room_snapshot(&self, room: &RoomId) -> Result<(u64, Vec<RemotePeer>), BrokerError> {
        let view = self.dir.snapshot(room).await?;
        Ok((view.ver, view.peers))
    }

    /// Takes the rooms where this node holds nobody, and no join is under way, off its list
    /// (`Directory::prune_node_room`), so the list does not grow with every room the node
    /// ever served. A join that begins meanwhile lists its room before its script runs: it
    /// is checked again after the removal and the room listed again.
    async fn prune_rooms(&self, host: &dyn Host, recorded: &[(RoomId, PeerId)]) -> bool {
        let rooms = match self.dir.node_rooms(&self.node).await {
            Ok(r) => r,
            Err(e) => {
                self.redis_error("node rooms", &e);
                return false;
            }
        };
        let local: HashSet<RoomId> = host.local_rooms().into_iter().collect();
        let recorded: HashSet<&RoomId> = recorded.iter().map(|(r, _)| r).collect();
        let busy = |room: &RoomId| {
            host.has_pending_join(room) || local.contains(room) || recorded.contains(room)
        };
        for room in rooms.into_iter().filter(|r| !busy(r)) {
            let pruned = self.dir.prune_node_room(&self.node, &room).await;
            let relisted = match pruned {
                Ok(()) if host.has_pending_join(&room) || !host.peers(&room).is_empty() => {
                    self.dir.note_node_room(&self.node, &room).await
                }
                other => other,
            };
            if let Err(e) = relisted {
                self.redis_error("node rooms", &e);
                return false;
            }
        }
        true
    }

    /// Applies one message from another node.
    fn on_event(&self, host: &dyn Host, text: &str) {
        match decode_event(text) {
            Ok(Some(Decoded::Room { room, ver, event })) => {
                host.handle(Input::RoomEvent { room, ver, event });
            }
            Ok(Some(Decoded::Closed { room, reason })) => {
                host.handle(Input::RoomClosed { room, reason });
            }
            Ok(Some(Decoded::Kick { room, peer })) => {
                host.handle(Input::Kick { room, peer });
            }
            Ok(Some(Decoded::ServerMessage { room, to, body })) => {
                host.server_message(&room, to, &body);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "undecodable cluster message");
                self.metrics.redis_errors.increment(1);
            }
        }
    }
}

impl Broker for RedisBroker {
    fn node(&self) -> Option<&NodeId> {
        Some(&self.node)
    }

    fn forward_http(
        &self,
        node: NodeId,
        op: HttpOp,
        body: bytes::Bytes,
        wait: Duration,
    ) -> BoxFuture<'_, Result<HttpReply, ForwardError>> {
        Box::pin(async move {
            let id = self
                .http_next
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.http_waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id, tx);
            // Out of the map however this ends, the caller giving up (its client gone) included.
            struct Waiting<'a>(
                &'a Mutex<HashMap<u64, tokio::sync::oneshot::Sender<HttpReply>>>,
                u64,
            );
            impl Drop for Waiting<'_> {
                fn drop(&mut self) {
                    self.0
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&self.1);
                }
            }
            let _waiting = Waiting(&self.http_waiting, id);
            let head = RelayHead {
                q: Some(id),
                from: Some(self.node.clone()),
                op: Some(op),
                r: None,
                status: None,
            };
            let message = head.encode(&body);
            let listeners = self.publish_to(http_channel(&node), message).await;
            match listeners {
                // Nobody listens under that id: the node is gone.
                Ok(0) => Err(ForwardError::NoSuchNode),
                Ok(_) => match tokio::time::timeout(wait, rx).await {
                    Ok(Ok(reply)) => Ok(reply),
                    _ => Err(ForwardError::NoAnswer),
                },
                Err(e) => {
                    self.redis_error("HTTP transport request", &e);
                    Err(ForwardError::NoAnswer)
                }
            }
        })
    }

    fn join(&self, peer: NewPeer) -> BoxFuture<'_, Result<JoinReply, BrokerError>> {
        Box::pin(async move {
            let entry = PeerEntry {
                info: peer.info,
                session: peer.session,
                secret: peer.secret,
                permissions: peer.permissions,
            };
            self.dir
                .join(
                    &peer.room,
                    &self.node,
                    &entry,
                    peer.max_peers,
                    peer.multiple_sessions,
                )
                .await
                .inspect_err(|e| self.redis_error("join", e))
        })
    }

    fn claim(
        &self,
        room: RoomId,
        identity: Identity,
        creds: ResumeCredentials,
    ) -> BoxFuture<'_, Result<ClaimReply, BrokerError>> {
        Box::pin(async move {
            self.dir
                .claim(&room, &self.node, &identity, &creds.session, &creds.secret)
                .await
                .inspect_err(|e| self.redis_error("claim", e))
        })
    }

    fn send(&self, item: Outgoing) -> Result<(), Outgoing> {
        self.outbox.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => item,
        })
    }

    fn presence(
        &self,
        room: RoomId,
    ) -> BoxFuture<'_, Result<Option<crate::directory::Presence>, BrokerError>> {
        Box::pin(async move {
            let (_, mut peers) = self.room_snapshot(&room).await?;
            peers.sort_by_key(|p| p.seq);
            // A peer of a reaped node is an orphan (its node `~`) until it resumes or its
            // window ends: not connected.
            let orphan = bluecam_core::cluster::ORPHAN_NODE;
            Ok(Some(
                peers
                    .into_iter()
                    .map(|p| {
                        let alive = p.node.as_str() != orphan;
                        (p.info, alive)
                    })
                    .collect(),
            ))
        })
    }

    fn kick(
        &self,
        room: RoomId,
        peer: PeerId,
    ) -> BoxFuture<'_, Result<crate::directory::Kick, BrokerError>> {
        use crate::directory::Kick;
        Box::pin(async move {
            let (_, peers) = self.room_snapshot(&room).await?;
            let Some(node) = peers
                .into_iter()
                .find(|p| p.info.id == peer)
                .map(|p| p.node)
            else {
                return Ok(Kick::Unknown);
            };
            if node == self.node {
                return Ok(Kick::Here);
            }
            if node.as_str() != bluecam_core::cluster::ORPHAN_NODE {
                let msg = bluecam_proto::NodeMessage::Kick {
                    room: room.clone(),
                    peer: peer.clone(),
                }
                .encode();
                let listeners = self
                    .publish_to(channel(&node), msg)
                    .await
                    .map_err(backend)?;
                if listeners > 0 {
                    return Ok(Kick::Told);
                }
            }
            // No node holds it (an orphan waiting for its resume, or a node gone and not
            // reaped yet): the directory removes it and tells the others, as that node would.
            let removed = self
                .dir
                .leave(&room, &peer, &node, bluecam_proto::LeaveReason::Kicked)
                .await
                .map_err(backend)?;
            Ok(if removed {
                Kick::Removed
            } else {
                Kick::Unknown
            })
        })
    }

    fn server_message(
        &self,
        room: RoomId,
        to: Option<Vec<PeerId>>,
        body: Box<bluecam_proto::RawValue>,
    ) -> BoxFuture<'_, Result<crate::directory::Routed, BrokerError>> {
        Box::pin(async move {
            let (_, mut seats) = self.room_snapshot(&room).await?;
            seats.sort_by_key(|p| p.seq);
            let mut routed = crate::directory::Routed::default();
            let wanted: Vec<(PeerId, Option<NodeId>)> = match to {
                Some(to) => to
                    .into_iter()
                    .map(|id| {
                        let node = seats
                            .iter()
                            .find(|s| s.info.id == id)
                            .map(|s| s.node.clone());
                        (id, node)
                    })
                    .collect(),
                None => seats
                    .into_iter()
                    .map(|s| (s.info.id, Some(s.node)))
                    .collect(),
            };
            let mut by_node: Vec<(NodeId, Vec<PeerId>)> = Vec::new();
            for (peer, node) in wanted {
                match node {
                    Some(n) if n == self.node => routed.here.push(peer),
                    Some(n) if n.as_str() != bluecam_core::cluster::ORPHAN_NODE => {
                        match by_node.iter_mut().find(|(m, _)| *m == n) {
                            Some((_, list)) => list.push(peer),
                            None => by_node.push((n, vec![peer])),
                        }
                    }
                    _ => routed.unreachable.push(peer),
                }
            }
            // One after the other, each published before the answer: a backend that waits
            // for it before its next message keeps its order on every node.
            for (node, peers) in by_node {
                let msg = bluecam_proto::NodeMessage::ServerMessage {
                    room: room.clone(),
                    to: Some(peers.clone()),
                    body: &body,
                }
                .encode();
                let listeners = self
                    .publish_to(channel(&node), msg)
                    .await
                    .map_err(backend)?;
                if listeners > 0 {
                    routed.elsewhere.extend(peers);
                } else {
                    routed.unreachable.extend(peers);
                }
            }
            Ok(routed)
        })
    }

    fn peer_counts(
        &self,
        rooms: Vec<RoomId>,
    ) -> BoxFuture<'_, Result<Option<Vec<u32>>, BrokerError>> {
        Box::pin(async move { self.dir.peer_counts(&rooms).await.map(Some) })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let r: Result<String, _> = self.cmd().ping(None).await;
            r.map(drop).map_err(backend)
        })
    }

    fn directory_epoch(&self) -> BoxFuture<'_, Result<(Option<String>, bool), BrokerError>> {
        Box::pin(async move { self.dir.epoch().await })
    }
}
