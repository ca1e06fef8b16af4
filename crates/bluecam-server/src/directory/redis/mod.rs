//! Cluster mode: [`RedisBroker`] (the directory of peers and the pub/sub transport between
//! nodes) and [`RedisStore`] (rooms), both on one Redis. `docs/architecture.md` ("Cluster")
//! explains the design; the keys are:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bc:room:{room}` | string | the room (JSON), as the HTTP API created it |
//! | `bc:rooms` | sorted set | room ids by creation time |
//! | `bc:room:{room}:active` | string | when the room was last occupied (Unix seconds) |
//! | `bc:room:{room}:peers` | hash | peer id → `{"info":…,"seq":…}` |
//! | `bc:room:{room}:nodes` | hash | peer id → `node\nsession` |
//! | `bc:room:{room}:ver` | counter | membership version (every join, leave and move) |
//! | `bc:session:{session}` | string | `{"room","peer","identity","secret","permissions"}` |
//! | `bc:node:{node}:alive` | string, expiring | the node's heartbeat |
//! | `bc:node:{node}:peers` | set | `room\npeer` of the node's peers |
//! | `bc:nodes` | set | every node that may still own peers |
//! | `bc:epoch` | string | the directory's epoch: drawn once; a Redis that lost its data has none |
//! | `bc:orphans` | sorted set | `room\npeer` of peers of reaped nodes (recorded on node `~`), by when their resume window ends |
//! | `bc:gone:{room}\n{peer}` | string, expiring (1 h) | a tombstone: the peer left for good (`REGISTER` does not put it back) |
//! | `bc:rebuilt` | string, expiring (a resume window) | Redis lost its data a moment ago: what it lacks may still come back |
//! | `bc:roomgone:{room}` | string, expiring (1 h) | a tombstone: the room was deleted (its PostgreSQL row is not put back) |
//!
//! Each node subscribes to its own channel `bc:n:{node}`; what nodes send each other is
//! [`bluecam_proto::NodeMessage`]. Membership changes run as Lua scripts, which update the
//! directory, bump the room's version and publish the event to the other nodes of the room in
//! one atomic step; the scripts share one prelude of functions (record, move, remove, tell the
//! room's nodes), so each operation is written once, and are called by SHA (`EVALSHA`, loaded
//! again after a Redis restart). Frames are published by one ordered outbox task per node,
//! pipelined.
//!
//! Every decision about the directory (when to heartbeat, resync, reap, rebuild) is taken by
//! the sans-IO [`bluecam_core::cluster::ClusterNode`]; this module carries its steps out.

mod connect;
mod outbox;
mod relay;
mod rooms;
mod scripts;

use connect::build;
pub use connect::redis_config;
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
    ClaimedSession, ClusterView, RemotePeer,
    cluster::{Beat, ClusterNode, Done, Signal, Step, split_view, stale_entries},
};
use bluecam_proto::{
    Identity, LeaveReason, NodeId, NodeMessage, PeerId, PeerRecord, Permissions, ResumeCredentials,
    Room, RoomClosedReason, RoomId, SessionSecret,
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
    sync::{Arc, LazyLock, Mutex, OnceLock},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How long one Redis command may take before it counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection attempts at start before a node gives up.
const CONNECT_TRIES: u32 = 5;
/// Items the outbox sends per pipeline at most.
const OUTBOX_BATCH: usize = 512;

/// What a session record holds (what a resume on another node needs).
#[derive(Debug, Serialize, Deserialize)]
struct SessionRecord {
    room: RoomId,
    peer: PeerId,
    identity: Identity,
    secret: SessionSecret,
    permissions: Permissions,
}

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

/// Parses a membership snapshot (`HGETALL peers`, `HGETALL nodes`) into peers.
fn snapshot(peers: Value, nodes: Value) -> Vec<RemotePeer> {
    let nodes: HashMap<String, String> = nodes.convert().unwrap_or_default();
    let peers: HashMap<String, String> = peers.convert().unwrap_or_default();
    peers
        .into_iter()
        .filter_map(|(id, rec)| {
            let rec: PeerRecord = serde_json::from_str(&rec).ok()?;
            let node = nodes.get(&id)?.split('\n').next()?.to_owned();
            Some(RemotePeer {
                info: rec.info,
                node: NodeId::new(node),
                seq: rec.seq,
            })
        })
        .collect()
}

/// The Redis side of a cluster node. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct RedisBroker {
    node: NodeId,
    client: Client,
    opts: Options,
    outbox: mpsc::Sender<Outgoing>,
    /// Taken by [`RedisBroker::start`].
    outbox_rx: std::sync::Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// How long the peers of a reaped node stay in their rooms, resumable anywhere.
    resume_window: Duration,
    metrics: Metrics,
    hub: OnceLock<Arc<dyn Host>>,
    /// The node's control loop (see `bluecam_core::cluster`); locked briefly, never across
    /// an `.await`.
    machine: Mutex<ClusterNode>,
    /// Answers HTTP transport requests passed to this node.
    http_handler: OnceLock<HttpHandler>,
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
        Ok(Arc::new(Self {
            client,
            opts: Options {
                fail_fast: true,
                timeout: Some(COMMAND_TIMEOUT),
                ..Options::default()
            },
            outbox,
            outbox_rx: std::sync::Mutex::new(Some(rx)),
            resume_window,
            metrics,
            hub: OnceLock::new(),
            machine: Mutex::new(ClusterNode::new(
                node.clone(),
                ttl,
                resume_window,
                Instant::now(),
            )),
            http_handler: OnceLock::new(),
            http_waiting: Mutex::new(HashMap::new()),
            http_next: std::sync::atomic::AtomicU64::new(0),
            http_answering: std::sync::atomic::AtomicUsize::new(0),
            node,
            config,
        }))
    }

    /// The rooms store on the same Redis.
    pub fn store(self: &Arc<Self>) -> RedisStore {
        RedisStore {
            broker: Arc::clone(self),
        }
    }

    /// Starts the node's tasks: subscriber, outbox, heartbeat with reaper, and the resync
    /// after a reconnection. Fails when the subscription cannot be made.
    pub async fn start(
        self: &Arc<Self>,
        hub: Arc<dyn Host>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        let _ = self.hub.set(Arc::clone(&hub));
        // The first heartbeat, before this node takes any peer.
        let first = self.machine().poll_step(Instant::now());
        if let Some(step) = first {
            let done = self.run_step(step).await;
            if done == Done::Heartbeat(None) {
                return Err(BrokerError::Unavailable(
                    "the first heartbeat failed".into(),
                ));
            }
            let rooms = hub.local_rooms();
            self.machine().done(done, Instant::now(), &rooms);
        }
        let subscriber = build(&self.config)
            .map_err(backend)?
            .build_subscriber_client()
            .map_err(backend)?;
        subscriber.init().await.map_err(backend)?;
        let mut messages = subscriber.message_rx();
        let mut resubscribed = subscriber.reconnect_rx();
        subscriber
            .subscribe(vec![channel(&self.node), http_channel(&self.node)])
            .await
            .map_err(backend)?;
        let http_chan = http_channel(&self.node);
        let resubscribe = subscriber.manage_subscriptions();
        tracing::info!(node = %self.node, "cluster node joined through Redis");

        // Events from other nodes, applied in the order Redis delivered them.
        let me = Arc::clone(self);
        let stop = shutdown.clone();
        let events_hub = Arc::clone(&hub);
        let answers = tracker.clone();
        tracker.spawn(async move {
            let hub = events_hub;
            loop {
                let msg = tokio::select! {
                    () = stop.cancelled() => break,
                    m = messages.recv() => m,
                };
                match msg {
                    Ok(msg) if *msg.channel == *http_chan => {
                        if let Some(message) = msg.value.as_bytes() {
                            me.on_http(message, &answers);
                        }
                    }
                    Ok(msg) => {
                        me.metrics.cluster_in.increment(1);
                        if let Some(text) = msg.value.as_str() {
                            me.on_event(hub.as_ref(), &text);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        // Lost events are repaired by the next resync (not a Redis error:
                        // this node read too slowly).
                        me.metrics
                            .dropped(crate::metrics::DropReason::ClusterEventsLagged, n);
                        me.signal(Signal::Lagged);
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
            tracker.spawn(async move { me.run_outbox(rx, stop).await });
        }

        // The control loop: carries out the steps of `ClusterNode` (heartbeat, restore, resync,
        // reap). A heartbeat runs beside the other steps, so a long resync cannot starve it.
        let me = Arc::clone(self);
        let mut reconnects = self.client.reconnect_rx();
        tracker.spawn(async move {
            let mut running: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
            loop {
                let now = Instant::now();
                while let Some(step) = me.machine().poll_step(now) {
                    let me = Arc::clone(&me);
                    running.push(Box::pin(async move { me.run_step(step).await }));
                }
                let wake_at = tokio::time::Instant::from_std(me.machine().poll_timeout());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(wake_at) => {}
                    Some(done) = running.next() => {
                        let rooms = hub.local_rooms();
                        me.machine().done(done, Instant::now(), &rooms);
                    }
                    r = reconnects.recv() => {
                        if r.is_ok() {
                            tracing::info!("Redis is back: re-registering this node's peers");
                            me.signal(Signal::Reconnected);
                        }
                    }
                    r = resubscribed.recv() => {
                        if r.is_ok() {
                            me.signal(Signal::Resubscribed);
                        }
                    }
                }
            }
        });
        Ok(())
    }

    fn machine(&self) -> std::sync::MutexGuard<'_, ClusterNode> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn signal(&self, signal: Signal) {
        self.machine().signal(signal, Instant::now());
    }

    /// Carries out one step of the control loop.
    async fn run_step(self: &Arc<Self>, step: Step) -> Done {
        match step {
            Step::Heartbeat => Done::Heartbeat(self.heartbeat().await.ok()),
            Step::RestoreRooms(rooms) => {
                self.restore_rooms(rooms).await;
                Done::RestoreRooms
            }
            Step::Resync { reconcile } => {
                let ok = match self.hub.get() {
                    Some(hub) => self.resync(hub.as_ref(), reconcile).await,
                    None => true,
                };
                Done::Resync(ok)
            }
            Step::Reap => {
                self.reap().await;
                Done::Reap
            }
        }
    }

    fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&self.opts)
    }

    fn redis_error(&self, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.increment(1);
        self.signal(Signal::Failed);
        tracing::warn!(error = %e, "Redis {what} failed");
    }

    /// Renews this node's liveness key (it lives `ClusterNode::alive_for`), reads the
    /// directory's epoch (drawing one when there is none: a Redis that lost its data has none,
    /// or, once another node drew it, another) and adds this node to the node set.
    async fn heartbeat(self: &Arc<Self>) -> Result<Beat, BrokerError> {
        let key = format!("bc:node:{}:alive", self.node);
        let ttl = self.machine().alive_for().as_millis() as i64;
        let fresh = crate::auth::random_token(9);
        let pipe = self.client.pipeline();
        let queued: Result<(), fred::error::Error> = async {
            // SET … GET: none when the liveness had lapsed (anyone may have reaped this node).
            let () = pipe
                .set(key, 1, Some(Expiration::PX(ttl)), None, true)
                .await?;
            // SET NX GET: the epoch that was there, or none (and ours is now).
            let () = pipe
                .set("bc:epoch", fresh.as_str(), None, Some(SetOptions::NX), true)
                .await?;
            let () = pipe.sadd("bc:nodes", self.node.as_str()).await?;
            Ok(())
        }
        .await;
        let answers = match queued {
            Ok(()) => tokio::time::timeout(COMMAND_TIMEOUT, pipe.all::<Vec<Value>>())
                .await
                .map_err(backend)
                .and_then(|r| r.map_err(backend)),
            Err(e) => Err(backend(e)),
        };
        let answers = answers.inspect_err(|e| self.redis_error("heartbeat", e))?;
        let mut answers = answers.into_iter();
        let lapsed = matches!(answers.next(), Some(Value::Null) | None);
        let epoch = match answers.next() {
            Some(Value::Null) | None => fresh,
            Some(v) => v.as_string().unwrap_or(fresh),
        };
        let was_missing = answers.next().and_then(|v| v.as_u64()) == Some(1) || lapsed;
        let beat = Beat { epoch, was_missing };
        self.note_beat(&beat);
        Ok(beat)
    }

    /// Logs what a heartbeat found that the control loop will act on.
    fn note_beat(&self, beat: &Beat) {
        let machine = self.machine();
        if machine.epoch().is_some_and(|e| e != beat.epoch) {
            tracing::warn!(
                "Redis lost its data (a new directory epoch): rebuilding what this node holds"
            );
            self.metrics.redis_errors.increment(1);
        } else if beat.was_missing && machine.epoch().is_some() {
            tracing::warn!("this node was missing from the directory; re-registering");
        }
    }

    /// Marks the directory as being rebuilt (see `Step::RestoreRooms`) and puts back stored
    /// rooms this node has peers in (create-if-absent): Redis lost them.
    async fn restore_rooms(self: &Arc<Self>, rooms: Vec<Room>) {
        // Each room's version goes back to this node's before the room exists again, so a
        // join in the gap before the re-registration is numbered above every replica.
        let mut vers: HashMap<RoomId, u64> = HashMap::new();
        if let Some(hub) = self.hub.get() {
            for p in hub.local_peers() {
                let v = vers.entry(p.room).or_default();
                *v = (*v).max(p.room_ver);
            }
        }
        for room in &rooms {
            let ver = vers.get(&room.id).copied().unwrap_or(0);
            let args = vec![room.id.to_string(), ver.to_string()];
            if let Err(e) = self.eval::<i64>(&RAISE_VERSION, args).await {
                self.redis_error("version restore", &e);
            }
        }
        let window = self.machine().resume_window().as_millis() as i64;
        let marked: Result<(), _> = self
            .cmd()
            .set(
                "bc:rebuilt",
                1,
                Some(Expiration::PX(window.max(1))),
                None,
                false,
            )
            .await;
        if let Err(e) = marked {
            self.redis_error("rebuild mark", &e);
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

    /// Orphans the peers of nodes whose liveness key has expired (see `REAP`), and removes
    /// orphans whose resume window has passed.
    async fn reap(&self) {
        let nodes: Vec<String> = match self.cmd().smembers("bc:nodes").await {
            Ok(n) => n,
            Err(e) => return self.redis_error("node list", &e),
        };
        for node in nodes {
            let node = NodeId::new(node);
            if node == self.node {
                continue;
            }
            let alive: bool = match self.cmd().exists(format!("bc:node:{node}:alive")).await {
                Ok(n) => n,
                Err(e) => return self.redis_error("liveness check", &e),
            };
            if alive {
                continue;
            }
            let window = self.resume_window.as_millis().to_string();
            let orphaned: Result<i64, _> = self.eval(&REAP, vec![node.to_string(), window]).await;
            match orphaned {
                Ok(n) if n >= 0 => tracing::info!(
                    %node,
                    peers = n,
                    "node is gone; its peers may resume on another node within the resume window"
                ),
                Ok(_) => {}
                Err(e) => self.redis_error("reap", &e),
            }
        }
        // Orphans whose window has passed leave their rooms.
        let swept: Result<i64, _> = self.eval(&SWEEP_ORPHANS, Vec::new()).await;
        match swept {
            Ok(0) => {}
            Ok(n) => tracing::info!(peers = n, "peers of a gone node did not resume; they left"),
            Err(e) => self.redis_error("orphan sweep", &e),
        }
    }

    /// Brings the directory and this node back in step (after Redis came back, an error, or
    /// lost events): puts this node's peers back (announcing them if they had been removed),
    /// removes entries of peers it no longer holds, and reconciles every room replica with
    /// the directory (unless `reconcile` is false: the directory is being rebuilt). Returns
    /// whether every step went through.
    async fn resync(&self, hub: &dyn Host, reconcile: bool) -> bool {
        let local = hub.local_peers();
        for p in &local {
            let mut args = PeerArgs {
                room: &p.room,
                info: &p.info,
                session: &p.session,
                secret: &p.secret,
                permissions: p.permissions,
                max_peers: None,
            }
            .build(&self.node);
            args.extend([p.seq.to_string(), p.room_ver.to_string()]);
            let r: Result<Vec<Value>, _> = self.eval(&REGISTER, args).await;
            match r
                .map_err(backend)
                .and_then(|a| DirReply::read(a, "register"))
            {
                Ok(DirReply::RoomGone) => {
                    hub.close_room(&p.room, RoomClosedReason::Deleted);
                }
                Ok(DirReply::Left) => {
                    hub.peer_gone(&p.room, &p.info.id);
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
        let mine: Vec<String> = match self
            .cmd()
            .smembers(format!("bc:node:{}:peers", self.node))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                self.redis_error("node peers", &e);
                return false;
            }
        };
        let held: HashSet<(RoomId, PeerId)> = hub
            .local_peers()
            .into_iter()
            .map(|p| (p.room, p.info.id))
            .collect();
        let recorded = mine.iter().filter_map(|e| {
            let (room, peer) = e.split_once('\n')?;
            Some((RoomId::new(room), PeerId::new(peer)))
        });
        let stale: Vec<_> =
            stale_entries(recorded, &held, |room| hub.has_pending_join(room)).collect();
        for (room, peer) in stale {
            let args = vec![
                room.to_string(),
                peer.to_string(),
                self.node.to_string(),
                "timeout".to_owned(),
            ];
            if let Err(e) = self.eval::<i64>(&LEAVE, args).await {
                self.redis_error("stale entry removal", &e);
                return false;
            }
        }
        if !reconcile {
            // The directory was lost a moment ago and the other nodes are putting their peers
            // back: a snapshot now would announce live peers as gone (`ClusterNode` asks again
            // in a later round).
            return true;
        }
        let mut stale = false;
        for room in hub.local_rooms() {
            match self.room_snapshot(&room).await {
                Ok((ver, peers)) => {
                    // Peers recorded on this node that it does not hold yet are joining or
                    // resuming here right now: not gone.
                    let (peers, here) = split_view(peers, &self.node);
                    let here: Vec<PeerId> = here.into_iter().map(|p| p.info.id).collect();
                    if !hub.snapshot(&room, ver, peers, &here) {
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
        let p = format!("bc:room:{room}");
        let pipe = self.client.pipeline();
        let _: () = pipe.get(format!("{p}:ver")).await.map_err(backend)?;
        let _: () = pipe.hgetall(format!("{p}:peers")).await.map_err(backend)?;
        let _: () = pipe.hgetall(format!("{p}:nodes")).await.map_err(backend)?;
        let all: Vec<Value> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let mut all = all.into_iter();
        let ver = all.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let peers = all.next().unwrap_or(Value::Null);
        let nodes = all.next().unwrap_or(Value::Null);
        Ok((ver, snapshot(peers, nodes)))
    }

    /// Runs a directory script by SHA, loading it first when Redis does not know it (it was
    /// restarted, or its script cache flushed). A `NOSCRIPT` answer ran nothing, so the retry
    /// cannot apply anything twice.
    async fn eval<R: FromValue>(
        &self,
        script: &Script,
        args: Vec<String>,
    ) -> Result<R, fred::error::Error> {
        let sha = script.sha1().clone();
        match self
            .cmd()
            .evalsha(sha.clone(), Vec::<String>::new(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let lua = script.lua().cloned().unwrap_or_default();
                let _: String = self.cmd().script_load(lua).await?;
                self.cmd().evalsha(sha, Vec::<String>::new(), args).await
            }
            r => r,
        }
    }

    /// Applies one message from another node.
    fn on_event(&self, hub: &dyn Host, text: &str) {
        match decode_event(text) {
            Ok(Some(Decoded::Room { room, ver, event })) => hub.remote(&room, ver, event),
            Ok(Some(Decoded::Closed { room, reason })) => hub.close_room(&room, reason),
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
            let listeners: Result<i64, _> = self.client.publish(http_channel(&node), message).await;
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

    fn set_http_handler(&self, handler: HttpHandler) {
        let _ = self.http_handler.set(handler);
    }

    fn join(&self, peer: NewPeer) -> BoxFuture<'_, Result<Option<ClusterView>, BrokerError>> {
        Box::pin(async move {
            let args = PeerArgs {
                room: &peer.room,
                info: &peer.info,
                session: &peer.session,
                secret: &peer.secret,
                permissions: peer.permissions,
                max_peers: Some(peer.max_peers),
            }
            .build(&self.node);
            let r: Vec<Value> = self.eval(&JOIN, args).await.map_err(|e| {
                self.redis_error("join", &e);
                backend(e)
            })?;
            let mut r = match DirReply::read(r, "join")? {
                DirReply::Ok(rest) => rest.into_iter(),
                DirReply::RoomFull => return Err(BrokerError::RoomFull),
                DirReply::RoomGone => return Err(BrokerError::RoomGone),
                other => return Err(backend(format!("unexpected join answer {other:?}"))),
            };
            let ver = r.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let peers = r.next().unwrap_or(Value::Null);
            let nodes = r.next().unwrap_or(Value::Null);
            let (peers, pending_here) = split_view(snapshot(peers, nodes), &self.node);
            Ok(Some(ClusterView {
                ver,
                seq: ver,
                peers,
                claimed: None,
                pending_here,
            }))
        })
    }

    fn claim(
        &self,
        room: RoomId,
        identity: Identity,
        creds: ResumeCredentials,
    ) -> BoxFuture<'_, Result<Option<ClusterView>, BrokerError>> {
        Box::pin(async move {
            let args = vec![
                creds.session.to_string(),
                creds.secret.expose().to_owned(),
                self.node.to_string(),
                room.to_string(),
                identity.to_string(),
            ];
            let r: Vec<Value> = self.eval(&CLAIM, args).await.map_err(|e| {
                self.redis_error("claim", &e);
                backend(e)
            })?;
            let mut r = match DirReply::read(r, "claim")? {
                DirReply::Ok(rest) => rest.into_iter(),
                // While the directory is being rebuilt (Redis lost its data a moment ago), the
                // node holding the session may not have put it back yet: try again, do not
                // end a session that exists.
                DirReply::Rebuilding => {
                    return Err(backend("the cluster directory is being rebuilt"));
                }
                DirReply::Expired if self.machine().recently_rebuilt(Instant::now()) => {
                    return Err(backend("the cluster directory is being rebuilt"));
                }
                DirReply::Expired => return Ok(None),
                DirReply::Unauthorized => return Err(BrokerError::Unauthorized),
                other => return Err(backend(format!("unexpected claim answer {other:?}"))),
            };
            let ver = r.next().and_then(|v| v.as_u64()).unwrap_or(0);
            let session: SessionRecord = r
                .next()
                .and_then(|v| v.as_string())
                .and_then(|s| serde_json::from_str(&s).ok())
                .ok_or_else(|| backend("unreadable session record"))?;
            let peers = snapshot(
                r.next().unwrap_or(Value::Null),
                r.next().unwrap_or(Value::Null),
            );
            let me = peers
                .iter()
                .find(|p| p.info.id == session.peer)
                .cloned()
                .ok_or_else(|| backend("claimed peer missing from its room"))?;
            let (peers, pending_here) = split_view(peers, &self.node);
            Ok(Some(ClusterView {
                ver,
                seq: me.seq,
                peers,
                pending_here,
                claimed: Some(ClaimedSession {
                    info: me.info,
                    session: creds.session,
                    secret: session.secret,
                    permissions: session.permissions,
                }),
            }))
        })
    }

    fn send(&self, item: Outgoing) -> Result<(), Outgoing> {
        self.outbox.try_send(item).map_err(|e| {
            let item = match e {
                mpsc::error::TrySendError::Full(item) | mpsc::error::TrySendError::Closed(item) => {
                    item
                }
            };
            if matches!(item, Outgoing::Removed { .. }) {
                // The next resync removes the entry this node no longer holds.
                self.signal(Signal::Failed);
            }
            item
        })
    }

    fn presence(
        &self,
        room: RoomId,
    ) -> BoxFuture<'_, Result<Option<crate::directory::Presence>, BrokerError>> {
        Box::pin(async move {
            let (_, mut peers) = self.room_snapshot(&room).await?;
            peers.sort_by_key(|p| p.seq);
            let local = self.hub.get().map(|h| h.peers(&room)).unwrap_or_default();
            Ok(Some(
                peers
                    .into_iter()
                    .map(|p| {
                        // This node knows whether its own peers are connected right now.
                        let connected = local
                            .iter()
                            .find(|(i, _)| i.id == p.info.id)
                            .is_none_or(|(_, c)| *c);
                        (p.info, connected)
                    })
                    .collect(),
            ))
        })
    }

    fn peer_counts(
        &self,
        rooms: Vec<RoomId>,
    ) -> BoxFuture<'_, Result<Option<Vec<u32>>, BrokerError>> {
        Box::pin(async move {
            if rooms.is_empty() {
                return Ok(Some(Vec::new()));
            }
            let pipe = self.client.pipeline();
            for room in &rooms {
                let _: () = pipe
                    .hlen(format!("bc:room:{room}:nodes"))
                    .await
                    .map_err(backend)?;
            }
            let counts: Vec<u32> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
                .await
                .map_err(backend)?
                .map_err(backend)?;
            Ok(Some(counts))
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            let r: Result<String, _> = self.cmd().ping(None).await;
            r.map(drop).map_err(backend)
        })
    }

    fn replica_suspect(&self) {
        self.signal(Signal::Unheard);
    }

    fn directory_lost(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let pipe = self.client.pipeline();
            let queued = async {
                let () = pipe.get("bc:epoch").await?;
                let () = pipe.exists("bc:rebuilt").await?;
                pipe.all::<(Option<String>, bool)>().await
            };
            match tokio::time::timeout(COMMAND_TIMEOUT, queued).await {
                Ok(Ok((current, marked))) => {
                    self.machine()
                        .directory_lost(current.as_deref(), marked, Instant::now())
                }
                // Redis is away: a retry is the right answer either way.
                _ => true,
            }
        })
    }
}
