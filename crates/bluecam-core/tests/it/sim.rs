//! Deterministic simulation of a cluster: several nodes, each a real room core ([`Hub`]) and a
//! real control loop ([`ClusterNode`]), over the product's model of the directory
//! (`bluecam_core::directory`, which the Redis scripts are tested against) and a model of
//! pub/sub, with
//! clients running a twin of the SDK's delivery logic (per-pair sequence numbers and epochs,
//! cumulative acks, retransmission, a delivery deadline that rejects and starts a new epoch).
//!
//! A seed draws the schedule: pub/sub delays that reorder messages across nodes, dropped
//! subscriptions, node crashes with restarts, freezes (some past the node expiry, a few past
//! the resume window), the
//! directory losing its data, and clients reconnecting elsewhere. After every step it checks:
//! no peer attached on two running nodes, the core's and the control loop's invariants, no
//! message delivered twice or out of order. Once the faults stop, it checks that everything
//! settled: every send resolved or rejected (none pending), every resolved message delivered,
//! every client back in the room with one node holding it, and every node's presence, every
//! client's view and the directory agreeing.
//!
//! `BLUECAM_SIM_SEEDS=N` runs N seeds (default 1,000, about 20 s), `BLUECAM_SIM_SEED=S` one; a failure names
//! its seed, and the same seed replays the same run (the trace's hash is compared in a test).
//! A longer run: `cargo test -p bluecam-core --test it sim -- --ignored`.
//! A new session of an identity takes its seat over across nodes, as the server asks the
//! directory to; `BLUECAM_SIM_SEVERAL=1` keeps every session instead (a room with
//! `multipleSessions`).

use crate::support::{Seen, decode, limits, room};
use bluecam_core::{
    ConnId, CoreConfig, DirAnswer, Frame, FreshIds, Handled, Hub, Input, JoinRequest, Node, Origin,
    Output,
    cluster::{ClusterNode, Decoded, Done, Signal, Step, split_view, stale_entries},
    directory::{Directory as Model, PeerEntry, RegisterReply},
    node::{seat_given, seat_to_remove},
};
use bluecam_proto::{
    ClientMessage, CloseCode, ErrorCode, Identity, LeaveReason, NodeId, NodeMessage, PeerId,
    PeerInfo, Permissions, ResumeCredentials, RoomClosedReason, RoomId, SessionId, SessionSecret,
};
use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    fmt::Write as _,
    time::{Duration, Instant},
};

const STEP: Duration = Duration::from_millis(100);
/// Node expiry (`node_ttl_secs`): a heartbeat every third.
const TTL: Duration = Duration::from_millis(1500);
const RESUME_WINDOW: Duration = Duration::from_secs(8);
/// The SDK's `deliveryTimeoutMs`, scaled like the rest.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);
/// A client that heard nothing for this long (a ping included) gives up on its connection.
const WATCHDOG: Duration = Duration::from_secs(2);
const RETRANSMIT: Duration = Duration::from_millis(800);
const FAULTS_FOR: Duration = Duration::from_secs(20);
/// Sending goes on this long after the faults stop; then the run waits for everything to
/// settle (longer than a delivery deadline).
const SEND_AFTER_FAULTS: Duration = Duration::from_secs(3);
const SETTLE: Duration = Duration::from_secs(30);
const NODES: usize = 3;
const CLIENTS: usize = 6;
/// Rooms; client `c` is in room `c % ROOMS`.
const ROOMS: usize = 2;

/// SplitMix64: small, fast, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True with probability `per_mille`/1000.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }
}

/// Room `k` of generation `gen` (a room the app's backend deleted is made again under a new
/// id, as an app makes a new meeting).
fn room_id(k: usize, generation: u32) -> RoomId {
    match generation {
        0 => RoomId::new(format!("r{k}")),
        g => RoomId::new(format!("r{k}.{g}")),
    }
}

/// The room of client `c`.
fn room_of(c: usize) -> usize {
    c % ROOMS
}

/// The room as the store holds it.
fn stored_room(id: RoomId) -> bluecam_proto::Room {
    bluecam_proto::Room {
        id,
        name: None,
        description: None,
        owner: None,
        members: None,
        max_peers: 100,
        empty_timeout_secs: None,
        metadata: None,
        created_at: 0,
        peer_count: 0,
        multiple_sessions: false,
        removed: Default::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// The directory (the product's model, `bluecam_core::directory`) and pub/sub.

#[derive(Default)]
struct Channel {
    queue: VecDeque<(Instant, String)>,
    delay: Duration,
}

struct Directory {
    model: Model,
    /// The model as it was a moment ago, for a failover to a replica that was behind.
    older: Model,
    older_at: Instant,
    /// Subscribed nodes' channels.
    channels: BTreeMap<String, Channel>,
    /// Where the model's clock (milliseconds) starts.
    start: Instant,
    /// Unreachable until then (Redis down): every operation and publish fails.
    down_until: Option<Instant>,
}

impl Directory {
    fn new(start: Instant, shards: usize) -> Self {
        Self {
            model: Model::with_shards(shards),
            older: Model::with_shards(shards),
            older_at: start,
            channels: BTreeMap::new(),
            start,
            down_until: None,
        }
    }

    fn down(&self, now: Instant) -> bool {
        self.down_until.is_some_and(|t| now < t)
    }

    fn ms(&self, now: Instant) -> u64 {
        now.duration_since(self.start).as_millis() as u64
    }

    fn publish(&mut self, node: &str, text: String, now: Instant) -> bool {
        if self.down(now) {
            return false;
        }
        let Some(ch) = self.channels.get_mut(node) else {
            return false;
        };
        // One connection per channel: first in, first out, whatever the delay.
        let at = ch
            .queue
            .back()
            .map_or(now + ch.delay, |(t, _)| (*t).max(now + ch.delay));
        ch.queue.push_back((at, text));
        true
    }

    /// Runs an operation of the model at `now` and carries what it published to the
    /// subscribed nodes' channels (nobody listens on an orphan's `~`); `None` (nothing done)
    /// while the directory is unreachable.
    fn run<T>(&mut self, now: Instant, op: impl FnOnce(&mut Model, u64) -> T) -> Option<T> {
        if self.down(now) {
            return None;
        }
        let ms = self.ms(now);
        let out = op(&mut self.model, ms);
        for p in self.model.take_published() {
            self.publish(p.node.as_str(), p.text, now);
        }
        Some(out)
    }

    /// Reads the model (`None` while the directory is unreachable).
    fn read<T>(&self, now: Instant, read: impl FnOnce(&Model, u64) -> T) -> Option<T> {
        (!self.down(now)).then(|| read(&self.model, self.ms(now)))
    }

    /// Redis restarted without its data: everything is gone, subscriptions included (the
    /// nodes resubscribe at once, and learn of it).
    fn wipe(&mut self) {
        self.model.wipe();
        for ch in self.channels.values_mut() {
            *ch = Channel::default();
        }
    }
}

fn entry(info: PeerInfo, session: SessionId, secret: SessionSecret) -> PeerEntry {
    PeerEntry {
        info,
        session,
        secret,
        permissions: Permissions::default(),
    }
}

// ---------------------------------------------------------------------------------------------
// Nodes.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Health {
    Up,
    Frozen { until: Instant },
    Dead { restart_at: Instant },
}

/// What a client's connection carries to its node.
enum ToNode {
    Join {
        room: usize,
        identity: Identity,
        resume: Option<ResumeCredentials>,
        fresh: FreshIds,
    },
    Frame(String),
    Closed,
}

enum Outgoing {
    Frame {
        node: NodeId,
        room: RoomId,
        to: Vec<PeerId>,
        frame: Frame,
        origin: Option<Origin>,
    },
    Removed {
        room: RoomId,
        peer: PeerId,
        reason: LeaveReason,
    },
}

struct Admission {
    due: Instant,
    conn: ConnId,
    req: JoinRequest,
    /// The seat the directory recorded for it: removed again if the core refuses it.
    seat: Option<(PeerId, SessionId, LeaveReason)>,
}

struct SimNode {
    name: String,
    /// The product's node: room core and control loop.
    node: Node,
    /// Directory steps the node asked for, carried out at the end of its turn.
    steps: VecDeque<Step>,
    health: Health,
    /// Connection → client, and what each connection sent that the node has not read.
    conns: BTreeMap<ConnId, (usize, VecDeque<ToNode>)>,
    outbox: VecDeque<Outgoing>,
    /// Joins whose directory answer is on its way (as a real node awaits Redis): handled when
    /// due, while the node goes on applying room events and its other connections.
    admitting: VecDeque<Admission>,
    /// Signals that arrived while frozen.
    signals: Vec<Signal>,
    next_conn: u64,
    incarnation: u32,
}

impl SimNode {
    fn new(index: usize, incarnation: u32, now: Instant) -> Self {
        let name = format!("n{index}.{incarnation}");
        Self {
            node: Node::new(
                Hub::new(CoreConfig {
                    resume_window: RESUME_WINDOW,
                    ..CoreConfig::default()
                }),
                Some(ClusterNode::new(
                    NodeId::new(name.as_str()),
                    TTL,
                    RESUME_WINDOW,
                    now,
                )),
            ),
            steps: VecDeque::new(),
            name,
            health: Health::Up,
            conns: BTreeMap::new(),
            outbox: VecDeque::new(),
            admitting: VecDeque::new(),
            signals: Vec::new(),
            next_conn: 1,
            incarnation,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clients: a twin of the SDK's delivery logic.

#[derive(Clone, Copy, Debug, PartialEq)]
enum MsgState {
    Pending,
    Resolved,
    Rejected,
}

struct Msg {
    from: PeerId,
    to: PeerId,
    /// Order among the messages of this pair.
    n: u64,
    state: MsgState,
    delivered: u32,
}

struct OutPair {
    epoch: u64,
    next_seq: u64,
    /// (seq, message, first sent, last sent)
    unacked: VecDeque<(u64, usize, Instant, Option<Instant>)>,
}

struct Conn {
    node: usize,
    incarnation: u32,
    conn: ConnId,
    joined: bool,
    opened: Instant,
    last_heard: Instant,
    pinged: bool,
}

struct SimClient {
    identity: Identity,
    peer: Option<PeerId>,
    creds: Option<ResumeCredentials>,
    conn: Option<Conn>,
    view: BTreeSet<PeerId>,
    outs: BTreeMap<PeerId, OutPair>,
    /// Per sender: (epoch, next expected seq).
    ins: BTreeMap<PeerId, (u64, u64)>,
    next_epoch: u64,
    /// Not before this instant may it connect again.
    retry_at: Instant,
}

struct Sim {
    rng: Rng,
    now: Instant,
    start: Instant,
    dir: Directory,
    nodes: Vec<SimNode>,
    clients: Vec<SimClient>,
    msgs: Vec<Msg>,
    /// Last delivered order per (from, to).
    delivered_upto: BTreeMap<(PeerId, PeerId), u64>,
    /// Messages sent per (from, to).
    sent_per_pair: BTreeMap<(PeerId, PeerId), u64>,
    next_id: u64,
    trace: String,
    /// `BLUECAM_SIM_DEBUG`: a more detailed trace.
    debug: bool,
    /// The first invariant broken.
    violation: Option<String>,
    /// Until when a fault that justifies losses (a freeze past the resume window, the
    /// directory losing its data) may still cause them: a rejected message or an ended
    /// session outside it is a violation.
    justified_until: Option<Instant>,
    /// Faults that overlap (a node frozen or down, the directory unreachable, each followed
    /// by a node expiry to recover) make one disruption, from its first fault's start to its
    /// last one's end: a session may have had no way back for that long. Each fault alone
    /// is shorter than the resume window (and justifies nothing); a disruption that is not
    /// justifies what a single fault that long would.
    disruption: Option<(Instant, Instant)>,
    /// Peers some client was admitted as. One that never was (its node died between the
    /// directory's answer and the admission) was announced to the others and leaves when its
    /// resume window ends: what they sent it is rejected, rightly.
    ever_joined: BTreeSet<PeerId>,
    /// Each room's generation: a deleted room is made again under a new id.
    generations: [u32; ROOMS],
    /// When a room was last deleted. (Not followed by the directory losing its data within a
    /// resume window: a node that had not heard of the deletion puts the room back, the known
    /// limit of a directory that lost its data; docs/architecture.md.)
    deleted_at: Option<Instant>,
    stats: Stats,
}

#[derive(Debug, Default)]
struct Stats {
    sent: u64,
    resolved: u64,
    rejected: u64,
    faults: u64,
    /// Of them, a shard wiped or failed over with its last writes lost (odd seeds).
    shard_faults: u64,
    sessions_ended: u64,
    rooms_not_found: u64,
}

fn envelope(epoch: u64, seq: u64, msg: usize) -> String {
    format!(r#"{{"e":{epoch},"s":{seq},"m":{msg}}}"#)
}

fn send_text(to: &PeerId, msg: &str) -> String {
    format!(r#"{{"op":"send","to":["{to}"],"msg":{msg}}}"#)
}

impl Sim {
    fn new(seed: u64) -> Self {
        let start = Instant::now();
        // Odd seeds run on a directory of three shards (a Redis Cluster), even ones on one.
        let shards = if seed % 2 == 1 { 3 } else { 1 };
        let mut sim = Self {
            rng: Rng(seed),
            now: start,
            start,
            dir: Directory::new(start, shards),
            nodes: Vec::new(),
            clients: Vec::new(),
            msgs: Vec::new(),
            delivered_upto: BTreeMap::new(),
            sent_per_pair: BTreeMap::new(),
            next_id: 0,
            trace: String::new(),
            violation: None,
            justified_until: None,
            disruption: None,
            ever_joined: BTreeSet::new(),
            generations: [0; ROOMS],
            deleted_at: None,
            debug: std::env::var("BLUECAM_SIM_DEBUG").is_ok(),
            stats: Stats::default(),
        };
        for k in 0..ROOMS {
            sim.dir.model.create_room(&room_id(k, 0));
        }
        for i in 0..NODES {
            let node = SimNode::new(i, 0, start);
            sim.dir
                .channels
                .insert(node.name.clone(), Channel::default());
            sim.nodes.push(node);
        }
        for i in 0..CLIENTS {
            sim.clients.push(SimClient {
                identity: Identity::new(format!("user{i}")),
                peer: None,
                creds: None,
                conn: None,
                view: BTreeSet::new(),
                outs: BTreeMap::new(),
                ins: BTreeMap::new(),
                next_epoch: 1,
                retry_at: start,
            });
        }
        sim
    }

    /// Room `k` as it is now.
    fn room_of_gen(&self, k: usize) -> RoomId {
        room_id(k, self.generations[k])
    }

    fn at(&self) -> u128 {
        self.now.duration_since(self.start).as_millis()
    }

    fn log(&mut self, what: impl std::fmt::Display) {
        let at = self.at();
        let _ = writeln!(self.trace, "{at:>6} {what}");
    }

    fn fresh_ids(&mut self) -> FreshIds {
        self.next_id += 1;
        let n = self.next_id;
        FreshIds::new(
            PeerId::new(format!("p{n}")),
            SessionId::new(format!("s{n}")),
            SessionSecret::new(format!("x{n}")),
        )
    }

    // ----- the run -----

    fn run(&mut self) -> Result<(), String> {
        let faults_end = self.start + FAULTS_FOR;
        let sends_end = faults_end + SEND_AFTER_FAULTS;
        let end = sends_end + SETTLE;
        while self.now < end {
            // (Faults begin once everyone has joined.)
            if self.now < faults_end && self.now >= self.start + Duration::from_secs(1) {
                self.faults();
            } else {
                self.heal();
            }
            // What a replica has: the model as it was up to a second ago.
            if self.now.duration_since(self.dir.older_at) >= Duration::from_secs(1) {
                self.dir.older = self.dir.model.clone();
                self.dir.older_at = self.now;
            }
            self.step_nodes()?;
            self.step_clients(self.now < sends_end)?;
            self.check_step()?;
            self.now += STEP;
        }
        self.check_settled()
    }

    /// Draws this step's faults.
    fn faults(&mut self) {
        let r = self.rng.below(1000);
        let up: Vec<usize> = (0..NODES)
            .filter(|i| self.nodes[*i].health == Health::Up)
            .collect();
        match r {
            // A node is SIGKILLed (one at least stays up); it restarts under a new id.
            0..=3 if up.len() > 1 => {
                let i = up[self.rng.below(up.len())];
                let downtime = self.rng.millis(300, 3000);
                self.kill(i, downtime);
            }
            // A node freezes, sometimes past the node expiry, always within the resume window.
            4..=8 if up.len() > 1 => {
                let i = up[self.rng.below(up.len())];
                let d = self.rng.millis(300, 6000);
                self.freeze(i, d, "");
            }
            // Rarely, a freeze past the resume window: its peers that did not resume elsewhere
            // leave (their senders are told), and the thawed node must not put them back.
            51 if up.len() > 1 => {
                let i = up[self.rng.below(up.len())];
                let d = self.rng.millis(9_000, 15_000);
                self.freeze(i, d, " (past the resume window)");
            }
            // Redis is unreachable for a while (shorter than the resume window): what was in
            // flight on the subscriptions is lost; nothing must be rejected, nobody leaves.
            52..=53 if !self.dir.down(self.now) => {
                let d = self.rng.millis(300, 5000);
                self.dir.down_until = Some(self.now + d);
                for ch in self.dir.channels.values_mut() {
                    ch.queue.clear();
                }
                self.disrupt(d);
                self.stats.faults += 1;
                self.log(format_args!("directory unreachable for {d:?}"));
            }
            // The app's backend deletes a room through a node (its clients' calls end), and
            // makes it again when they come back.
            54 if !up.is_empty() && !self.dir.down(self.now) => {
                let k = self.rng.below(ROOMS);
                let i = up[self.rng.below(up.len())];
                let node = NodeId::new(self.nodes[i].name.as_str());
                let now = self.now;
                let old = self.room_of_gen(k);
                let deleted = self.dir.run(now, |d, ms| {
                    d.delete_room(&old, RoomClosedReason::Deleted, &node, false, ms)
                });
                if deleted == Some(true) {
                    self.justify(Duration::ZERO);
                    self.deleted_at = Some(self.now);
                    self.generations[k] += 1;
                    let new = self.room_of_gen(k);
                    self.dir.model.create_room(&new);
                    let input = Input::RoomClosed {
                        room: old,
                        reason: RoomClosedReason::Deleted,
                    };
                    self.input(i, input);
                    self.stats.faults += 1;
                    let name = self.nodes[i].name.clone();
                    self.log(format_args!("room {k} deleted through {name}"));
                }
            }
            // Redis restarts without its data.
            9 if self
                .deleted_at
                .is_none_or(|t| self.now.duration_since(t) > RESUME_WINDOW) =>
            {
                self.dir.wipe();
                self.justify(Duration::ZERO);
                for n in &mut self.nodes {
                    if n.health
                        != (Health::Dead {
                            restart_at: self.now,
                        })
                    {
                        n.signals.push(Signal::Reconnected);
                        n.signals.push(Signal::Resubscribed);
                    }
                }
                self.stats.faults += 1;
                self.log("directory wiped");
            }
            // A node's subscription drops (what was queued for it is lost) and comes back.
            10..=13 => {
                let i = self.rng.below(NODES);
                let name = self.nodes[i].name.clone();
                if let Some(ch) = self.dir.channels.get_mut(&name) {
                    ch.queue.clear();
                    self.nodes[i].signals.push(Signal::Resubscribed);
                    self.stats.faults += 1;
                    self.log(format_args!("resubscribe {name}"));
                }
            }
            // Pub/sub to one node slows down or speeds up (reordering across nodes).
            14..=40 => {
                let i = self.rng.below(NODES);
                let d = self.rng.millis(0, 700);
                let name = self.nodes[i].name.clone();
                if let Some(ch) = self.dir.channels.get_mut(&name) {
                    ch.delay = d;
                }
            }
            // On a Redis Cluster: one shard loses everything (its master restarted empty);
            // the nodes learn it from that shard's epoch at their next heartbeat.
            54..=55
                if self.dir.model.shards() > 1
                    && self
                        .deleted_at
                        .is_none_or(|t| self.now.duration_since(t) > RESUME_WINDOW) =>
            {
                let k = self.rng.below(self.dir.model.shards());
                self.dir.model.wipe_shard(k);
                self.justify(Duration::ZERO);
                self.stats.faults += 1;
                self.stats.shard_faults += 1;
                self.log(format_args!("shard {k} wiped"));
            }
            // On a Redis Cluster: a master fails over to a replica that missed its last
            // writes (up to a second of them); every node sees the cluster change and
            // registers its peers again.
            56..=57
                if self.dir.model.shards() > 1
                    && self
                        .deleted_at
                        .is_none_or(|t| self.now.duration_since(t) > RESUME_WINDOW) =>
            {
                let k = self.rng.below(self.dir.model.shards());
                let older = self.dir.older.clone();
                self.dir.model.restore_shard(k, &older);
                self.justify(Duration::ZERO);
                for n in &mut self.nodes {
                    if n.health == Health::Up {
                        n.signals.push(Signal::Reconnected);
                    }
                }
                self.stats.faults += 1;
                self.stats.shard_faults += 1;
                self.log(format_args!("shard {k} failed over, its last writes lost"));
            }
            // A client's connection drops; it resumes on a node of its choice.
            41..=50 => {
                let c = self.rng.below(CLIENTS);
                if self.clients[c].conn.is_some() {
                    self.drop_conn(c);
                    self.stats.faults += 1;
                    self.log(format_args!("client {c} reconnects"));
                }
            }
            _ => {}
        }
    }

    /// After the faults: delays back to normal.
    fn heal(&mut self) {
        for ch in self.dir.channels.values_mut() {
            ch.delay = Duration::ZERO;
        }
    }

    /// SIGSTOP: the node does nothing until `d` has passed.
    fn freeze(&mut self, i: usize, d: Duration, note: &str) {
        self.nodes[i].health = Health::Frozen {
            until: self.now + d,
        };
        self.disrupt(d);
        self.stats.faults += 1;
        let name = self.nodes[i].name.clone();
        self.log(format_args!("freeze {name} for {d:?}{note}"));
    }

    fn kill(&mut self, i: usize, downtime: Duration) {
        let name = self.nodes[i].name.clone();
        self.dir.channels.remove(&name);
        self.nodes[i].health = Health::Dead {
            restart_at: self.now + downtime,
        };
        self.disrupt(downtime);
        self.stats.faults += 1;
        self.log(format_args!("kill {name} for {downtime:?}"));
        // Its connections break: their clients see it at once.
        for c in 0..CLIENTS {
            if self.clients[c].conn.as_ref().is_some_and(|k| k.node == i) {
                self.clients[c].conn = None;
                self.clients[c].retry_at = self.now;
            }
        }
    }

    /// The client closes its connection (its node reads the close when it runs).
    fn drop_conn(&mut self, c: usize) {
        if let Some(k) = self.clients[c].conn.take() {
            let node = &mut self.nodes[k.node];
            if node.incarnation == k.incarnation
                && let Some((_, q)) = node.conns.get_mut(&k.conn)
            {
                q.push_back(ToNode::Closed);
            }
        }
        self.clients[c].retry_at = self.now;
    }

    // ----- nodes -----

    fn step_nodes(&mut self) -> Result<(), String> {
        if self.dir.down_until.is_some_and(|t| self.now >= t) {
            // Redis is back: every node's connections come back (it learns of it).
            self.dir.down_until = None;
            self.log("directory reachable again");
            for n in &mut self.nodes {
                if !matches!(n.health, Health::Dead { .. }) {
                    n.signals.push(Signal::Reconnected);
                    n.signals.push(Signal::Resubscribed);
                }
            }
        }
        for i in 0..NODES {
            match self.nodes[i].health {
                Health::Dead { restart_at } if restart_at <= self.now => {
                    let inc = self.nodes[i].incarnation + 1;
                    self.nodes[i] = SimNode::new(i, inc, self.now);
                    let name = self.nodes[i].name.clone();
                    self.dir.channels.insert(name.clone(), Channel::default());
                    self.log(format_args!("restart as {name}"));
                }
                Health::Frozen { until } if until <= self.now => {
                    self.nodes[i].health = Health::Up;
                    let name = self.nodes[i].name.clone();
                    self.log(format_args!("thaw {name}"));
                }
                _ => {}
            }
            if self.nodes[i].health == Health::Up {
                self.run_node(i)?;
            }
        }
        Ok(())
    }

    fn run_node(&mut self, i: usize) -> Result<(), String> {
        let now = self.now;
        for s in std::mem::take(&mut self.nodes[i].signals) {
            self.input(i, Input::Signal(s));
        }
        // Events from other nodes that are due.
        let name = self.nodes[i].name.clone();
        while let Some(ch) = self.dir.channels.get_mut(&name) {
            if ch.queue.front().is_none_or(|(t, _)| *t > now) {
                break;
            }
            let (_, text) = ch.queue.pop_front().expect("front");
            if self.debug && !text.starts_with(r#"{"t":"frame""#) {
                self.log(format_args!("{name} hears {text}"));
            }
            let msg = NodeMessage::decode(&text)
                .map_err(|e| format!("the model wrote a bad node message {text}: {e}"))?
                .ok_or("unknown kind")?;
            let input = match Decoded::from_message(msg).ok_or("bad frame")? {
                Decoded::Room { room, ver, event } => Input::RoomEvent { room, ver, event },
                Decoded::Closed { room, reason } => Input::RoomClosed { room, reason },
                Decoded::Kick { room, peer } => Input::Kick { room, peer },
                // (The simulation's backend sends none.)
                Decoded::ServerMessage { .. } => return Err("unexpected backend message".into()),
            };
            self.input(i, input);
        }
        self.finish_admissions(i);
        // What its connections sent (a connection whose join waits for the directory is read
        // once it is handled).
        let waiting: BTreeSet<ConnId> = self.nodes[i].admitting.iter().map(|a| a.conn).collect();
        let conns: Vec<ConnId> = self.nodes[i]
            .conns
            .keys()
            .copied()
            .filter(|c| !waiting.contains(c))
            .collect();
        for conn in conns {
            while let Some(item) = self.nodes[i]
                .conns
                .get_mut(&conn)
                .and_then(|(_, q)| q.pop_front())
            {
                match item {
                    ToNode::Join {
                        room,
                        identity,
                        resume,
                        fresh,
                    } => {
                        self.admit(i, conn, room, identity, resume, fresh);
                        if self.nodes[i].admitting.iter().any(|a| a.conn == conn) {
                            break;
                        }
                    }
                    ToNode::Frame(text) => {
                        let msg = ClientMessage::from_json(&text).map_err(|e| format!("{e:?}"))?;
                        self.input(i, Input::Message { conn, msg });
                    }
                    ToNode::Closed => {
                        self.nodes[i].conns.remove(&conn);
                        let input = Input::Disconnect {
                            conn,
                            backlog: Vec::new(),
                            truncated: false,
                        };
                        self.input(i, input);
                    }
                }
                self.drain(i);
            }
        }
        self.input(i, Input::Timeout);
        // The directory steps the node asked for; they run to completion at once.
        while let Some(step) = self.nodes[i].steps.pop_front() {
            if self.debug {
                let name = &self.nodes[i].name;
                let line = format!("{name} step {step:?}");
                self.log(line);
            }
            let done = self.carry_out(i, step);
            self.input(i, Input::StepDone(done));
        }
        self.flush_outbox(i);
        Ok(())
    }

    /// Gives node `i` an input now and carries out its outputs.
    fn input(&mut self, i: usize, input: Input<'_>) -> Handled {
        let now = self.now;
        let handled = self.nodes[i].node.handle(input, now);
        self.drain(i);
        handled
    }

    /// The shell's `cluster_admit` and `hub.join`.
    fn admit(
        &mut self,
        i: usize,
        conn: ConnId,
        k: usize,
        identity: Identity,
        resume: Option<ResumeCredentials>,
        fresh: FreshIds,
    ) {
        let rid = self.room_of_gen(k);
        let room_id = || rid.clone();
        let now = self.now;
        let name = self.nodes[i].name.clone();
        let refuse = |sim: &mut Self, code: ErrorCode| {
            let e = bluecam_proto::ErrorFrame::new(code, "refused");
            let frame = Frame::new(&bluecam_proto::ServerMessage::Error(e));
            sim.deliver_to_client(i, conn, &frame);
            let close = CloseCode::for_join_error(code);
            sim.close_client(i, conn, close);
        };
        // The shell reads the room from the store (in a cluster, the directory) first.
        let Some(exists) = self.dir.read(now, |d, _| d.room_exists(&room_id())) else {
            return refuse(self, ErrorCode::Unavailable);
        };
        if !exists {
            let (epoch, marked) = self.dir.model.epoch(self.dir.ms(now));
            if self.nodes[i]
                .node
                .directory_lost(epoch.as_deref(), marked, now)
            {
                // The directory lost its data a moment ago: the room may be on its way back.
                return refuse(self, ErrorCode::Unavailable);
            }
            // Legitimate only when no running node holds a peer of the room: the room's record
            // lived in the lost directory and only the nodes holding its peers can put it back
            // (until rooms live in SQL). Its client is told (its call ends; what it had
            // pending is rejected) and joins again later.
            if self
                .nodes
                .iter()
                .any(|n| n.health == Health::Up && n.node.hub().local_rooms().contains(&room_id()))
            {
                let c = self.nodes[i].conns.get(&conn).map_or(usize::MAX, |x| x.0);
                let holders: Vec<&str> = self
                    .nodes
                    .iter()
                    .filter(|n| {
                        n.health == Health::Up && n.node.hub().local_rooms().contains(&room_id())
                    })
                    .map(|n| n.name.as_str())
                    .collect();
                let what =
                    format!("client {c} was told room_not_found while {holders:?} hold the room");
                self.fail_later(what);
            }
            // The app's backend, told by `roomNotFoundCallback`, creates the room again.
            self.stats.rooms_not_found += 1;
            self.dir.model.create_room(&room_id());
            return refuse(self, ErrorCode::RoomNotFound);
        }
        self.input(i, Input::Admitting(stored_room(room_id())));
        let room = room(room_id().as_str(), 100);
        let node = NodeId::new(name.as_str());
        // The directory's answer (`None`: unreachable); the node decides what it means, as
        // in the server's `cluster_admit`.
        let answer = match &resume {
            // (A session this node holds is claimed too: the directory may have moved it to
            // another node meanwhile, a move this node has not heard of yet.)
            Some(creds) => self
                .dir
                .run(now, |d, ms| {
                    d.claim(
                        &room_id(),
                        &node,
                        &identity,
                        &creds.session,
                        &creds.secret,
                        ms,
                    )
                })
                .map(DirAnswer::Claim),
            None => {
                let info = PeerInfo {
                    id: fresh.peer.clone(),
                    identity: identity.clone(),
                    name: None,
                    metadata: None,
                };
                let peer = entry(info, fresh.session.clone(), fresh.secret.clone());
                self.dir
                    .run(now, |d, ms| {
                        // One seat per identity across nodes, as the server asks for (see
                        // `multiple_sessions` in its `cluster_admit`), unless the run keeps
                        // several (`BLUECAM_SIM_SEVERAL=1`).
                        let several = std::env::var_os("BLUECAM_SIM_SEVERAL").is_some();
                        d.join(&room_id(), &node, &peer, 100, several, ms)
                    })
                    .map(DirAnswer::Join)
            }
        };
        let input = Input::Admission {
            room: room_id(),
            resume: resume.clone(),
            answer,
        };
        let Handled::Admitted(admitted) = self.input(i, input) else {
            unreachable!("an admission is answered with Admitted");
        };
        let cluster = match admitted {
            Ok(view) => view,
            Err(rejected) => return refuse(self, rejected.code()),
        };
        // The seat the directory gave this connection: taken back out if the core refuses.
        let seat = seat_given(
            cluster.as_ref(),
            &fresh.peer,
            &fresh.session,
            resume.is_some(),
        );
        let req = JoinRequest {
            conn,
            room,
            identity,
            name: None,
            metadata: None,
            permissions: Permissions::default(),
            resume,
            fresh: fresh.clone(),
            ice_servers: Vec::new(),
            limits: limits(100),
            cluster,
        };
        if self.debug {
            let before: Vec<String> = self.nodes[i]
                .node
                .hub()
                .peer_presence(&room_id())
                .into_iter()
                .map(|(p, c)| format!("{}{}", p.id, if c { "" } else { "(detached)" }))
                .collect();
            let view = req.cluster.as_ref().map(|v| {
                let peers: Vec<String> = v
                    .peers
                    .iter()
                    .map(|p| format!("{}@{}", p.info.id, p.node))
                    .collect();
                let here: Vec<String> = v
                    .pending_here
                    .iter()
                    .map(|p| p.info.id.to_string())
                    .collect();
                format!("ver {} peers {peers:?} here {here:?}", v.ver)
            });
            self.log(format_args!(
                "{name} admits {:?} (replica {before:?}, view {view:?})",
                req.fresh.peer
            ));
        }
        // The directory's answer reaches the node a moment later.
        let due = now + self.rng.millis(0, 400);
        self.nodes[i].admitting.push_back(Admission {
            due,
            conn,
            req,
            seat,
        });
    }

    /// Handles the joins whose directory answer has arrived.
    fn finish_admissions(&mut self, i: usize) {
        while self.nodes[i]
            .admitting
            .front()
            .is_some_and(|a| a.due <= self.now)
        {
            let a = self.nodes[i].admitting.pop_front().expect("front");
            let (room, peer) = (a.req.room.summary.id.clone(), a.req.fresh.peer.clone());
            let Handled::Joined(result) = self.nodes[i].node.handle(Input::Join(a.req), self.now)
            else {
                unreachable!("a join is answered with Joined");
            };
            if self.debug {
                let name = self.nodes[i].name.clone();
                let local: Vec<String> = self.nodes[i]
                    .node
                    .hub()
                    .local_peers()
                    .into_iter()
                    .map(|p| p.info.id.to_string())
                    .collect();
                self.log(format_args!(
                    "{name} handled the join of {peer}: {result:?}; holds {local:?}"
                ));
            }
            self.drain(i);
            if let Err(e) = result {
                if let Some((peer, _, reason)) = seat_to_remove(a.seat, e) {
                    self.nodes[i]
                        .outbox
                        .push_back(Outgoing::Removed { room, peer, reason });
                }
                let e = bluecam_proto::ErrorFrame::new(e.code(), "refused");
                let frame = Frame::new(&bluecam_proto::ServerMessage::Error(e.clone()));
                self.deliver_to_client(i, a.conn, &frame);
                self.close_client(i, a.conn, CloseCode::for_join_error(e.code));
            }
        }
    }

    /// Carries out one step of a node's control loop against the model directory.
    fn carry_out(&mut self, i: usize, step: Step) -> Done {
        let now = self.now;
        let node = NodeId::new(self.nodes[i].name.as_str());
        match step {
            Step::Heartbeat => {
                let alive_for = cluster(&self.nodes[i].node).alive_for().as_millis() as u64;
                self.next_id += 1;
                let fresh = format!("epoch{}", self.next_id);
                let beat = self
                    .dir
                    .run(now, |d, ms| d.heartbeat(&node, alive_for, &fresh, ms));
                Done::Heartbeat(beat)
            }
            Step::RestoreRooms(rooms) => {
                // The room's version back to this node's replica's first, then the rebuild
                // mark, then the rooms (as the server's `restore_rooms`).
                let ver = self.nodes[i]
                    .node
                    .hub()
                    .local_peers()
                    .iter()
                    .map(|p| p.room_ver)
                    .max()
                    .unwrap_or(0);
                let window = cluster(&self.nodes[i].node).resume_window().as_millis() as u64;
                let restored = self.dir.run(now, |d, ms| {
                    for room in &rooms {
                        d.raise_version(&room.id, ver);
                    }
                    d.mark_rebuilt(window, ms);
                    for room in &rooms {
                        d.create_room(&room.id);
                    }
                });
                if restored.is_none() {
                    self.input(i, Input::Signal(Signal::Failed));
                }
                Done::RestoreRooms
            }
            Step::Resync { reconcile } => {
                let mut local = self.nodes[i].node.hub().local_peers();
                local.sort_by(|a, b| a.info.id.cmp(&b.info.id));
                for p in &local {
                    let peer = entry(p.info.clone(), p.session.clone(), p.secret.clone());
                    let reply = self.dir.run(now, |d, ms| {
                        d.register(&p.room, &node, &peer, p.seq, p.room_ver, ms)
                    });
                    let Some(reply) = reply else {
                        self.input(i, Input::Signal(Signal::Failed));
                        return Done::Resync(false);
                    };
                    match reply {
                        RegisterReply::Present
                        | RegisterReply::Added
                        | RegisterReply::Moved { .. } => {}
                        RegisterReply::Gone => {
                            let input = Input::RoomClosed {
                                room: p.room.clone(),
                                reason: RoomClosedReason::Deleted,
                            };
                            self.input(i, input);
                        }
                        RegisterReply::Left => {
                            let input = Input::PeerGone {
                                room: p.room.clone(),
                                peer: p.info.id.clone(),
                            };
                            self.input(i, input);
                        }
                    }
                }
                let held: HashSet<(RoomId, PeerId)> = self.nodes[i]
                    .node
                    .hub()
                    .local_peers()
                    .into_iter()
                    .map(|p| (p.room, p.info.id))
                    .collect();
                let Some(recorded) = self.dir.read(now, |d, _| d.recorded_on(&node)) else {
                    self.input(i, Input::Signal(Signal::Failed));
                    return Done::Resync(false);
                };
                let hub = self.nodes[i].node.hub();
                let stale: Vec<_> =
                    stale_entries(recorded, &held, |r| hub.has_pending_join(r)).collect();
                for (room, peer) in stale {
                    let left = self.dir.run(now, |d, ms| {
                        d.leave(&room, &peer, &node, LeaveReason::Timeout, ms)
                    });
                    if left.is_none() {
                        self.input(i, Input::Signal(Signal::Failed));
                        return Done::Resync(false);
                    }
                }
                let mut applied = true;
                if reconcile {
                    let mut rooms = self.nodes[i].node.hub().local_rooms();
                    rooms.sort();
                    for room in rooms {
                        let Some(view) = self.dir.read(now, |d, _| d.snapshot(&room)) else {
                            self.input(i, Input::Signal(Signal::Failed));
                            return Done::Resync(false);
                        };
                        let (peers, here) = split_view(view.peers, &node);
                        let here: Vec<PeerId> = here.into_iter().map(|p| p.info.id).collect();
                        let input = Input::Snapshot {
                            room,
                            ver: view.ver,
                            peers,
                            here,
                        };
                        if let Handled::Snapshot { applied: false } = self.input(i, input) {
                            applied = false;
                        }
                    }
                }
                Done::Resync(applied)
            }
            Step::Reap => {
                let window = RESUME_WINDOW.as_millis() as u64;
                if self
                    .dir
                    .run(now, |d, ms| d.reap(&node, window, ms))
                    .is_none()
                {
                    self.input(i, Input::Signal(Signal::Failed));
                }
                Done::Reap
            }
        }
    }

    /// Publishes the outbox in order; a frame nobody hears is reported to its sender.
    fn flush_outbox(&mut self, i: usize) {
        let now = self.now;
        let name = self.nodes[i].name.clone();
        while let Some(item) = self.nodes[i].outbox.pop_front() {
            match item {
                Outgoing::Frame {
                    node,
                    room,
                    to,
                    frame,
                    origin,
                } => {
                    let text = NodeMessage::frame_text(&room, &to, frame.as_str());
                    if !self.dir.publish(node.as_str(), text, now) {
                        self.input(i, Input::Signal(Signal::Unheard));
                        if let Some(origin) = origin {
                            let mut e = bluecam_proto::ErrorFrame::new(
                                ErrorCode::Unavailable,
                                "unreachable",
                            )
                            .with_ref(origin.reference);
                            e.peers = Some(to);
                            let f = Frame::new(&bluecam_proto::ServerMessage::Error(e));
                            self.deliver_to_client(i, origin.conn, &f);
                        }
                    }
                }
                Outgoing::Removed { room, peer, reason } => {
                    let node = NodeId::new(name.as_str());
                    let left = self
                        .dir
                        .run(now, |d, ms| d.leave(&room, &peer, &node, reason, ms));
                    if left.is_none() {
                        // The next resync removes it.
                        self.input(i, Input::Signal(Signal::Failed));
                    }
                }
            }
        }
    }

    /// A fault that may cause losses, for `lasting`: what it causes may show until a message
    /// sent then has timed out after it ends.
    fn justify(&mut self, lasting: Duration) {
        let until = self.now + lasting + RESUME_WINDOW + DELIVERY_TIMEOUT + WATCHDOG;
        self.justified_until = Some(self.justified_until.map_or(until, |t| t.max(until)));
    }

    /// A fault that takes a node or the directory away for `d` from now (see `disruption`).
    fn disrupt(&mut self, d: Duration) {
        let end = self.now + d;
        let (start, end) = match self.disruption {
            // Overlapping (or within a node expiry of) the disruption under way: part of it.
            Some((start, until)) if self.now <= until + TTL => (start, end.max(until)),
            _ => (self.now, end),
        };
        self.disruption = Some((start, end));
        if end.duration_since(start) >= RESUME_WINDOW {
            self.justify(end.duration_since(self.now));
        }
    }

    /// Checks that a loss (`what`) is justified by a fault.
    fn loss(&mut self, what: &str) {
        if self.justified_until.is_none_or(|t| self.now > t) {
            self.fail_later(format!("{what} with no fault that justifies it"));
        }
    }

    /// Carries out the core's outputs.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].node.poll_output() {
            match out {
                Output::Deliver { conns, frame } => {
                    let mut conns = conns;
                    conns.sort();
                    for conn in conns {
                        self.deliver_to_client(i, conn, &frame);
                    }
                }
                Output::Close { conn, code } => self.close_client(i, conn, code),
                Output::Publish {
                    node,
                    room,
                    to,
                    frame,
                    origin,
                } => self.nodes[i].outbox.push_back(Outgoing::Frame {
                    node,
                    room,
                    to,
                    frame,
                    origin,
                }),
                Output::PeerRemoved {
                    room, peer, reason, ..
                } => {
                    if self.debug {
                        let name = self.nodes[i].name.clone();
                        self.log(format_args!("{name} removes {peer} ({reason:?})"));
                    }
                    self.nodes[i]
                        .outbox
                        .push_back(Outgoing::Removed { room, peer, reason });
                }
                Output::UnknownPeers { .. } => {
                    // (The node marked itself out of step.)
                    if self.debug {
                        let name = self.nodes[i].name.clone();
                        self.log(format_args!("{name} unknown peers"));
                    }
                }
                Output::Directory(step) => self.nodes[i].steps.push_back(step),
                Output::Undeliverable { room, peers } if self.debug => {
                    let name = self.nodes[i].name.clone();
                    self.log(format_args!("{name} undeliverable {room} x{peers}"));
                }
                Output::RoomVacated { .. }
                | Output::ResumeBufferOverflow { .. }
                | Output::Undeliverable { .. } => {}
            }
        }
    }

    fn client_of(&self, i: usize, conn: ConnId) -> Option<usize> {
        let node = &self.nodes[i];
        let (c, _) = node.conns.get(&conn)?;
        let k = self.clients[*c].conn.as_ref()?;
        (k.node == i && k.incarnation == node.incarnation && k.conn == conn).then_some(*c)
    }

    fn close_client(&mut self, i: usize, conn: ConnId, code: CloseCode) {
        let client = self.client_of(i, conn);
        if let Some(c) = client {
            self.log(format_args!("client {c} closed with {code:?}"));
        }
        self.nodes[i].conns.remove(&conn);
        let Some(c) = client else {
            return;
        };
        self.clients[c].conn = None;
        self.clients[c].retry_at = self.now + STEP;
        if !code.resumable() && self.clients[c].creds.is_some() {
            self.end_session(c, &format!("closed {code:?}"));
        }
    }

    /// A client's session is over: everything it had pending is rejected (its sender is
    /// told), and it joins again as a new peer.
    fn end_session(&mut self, c: usize, why: &str) {
        self.stats.sessions_ended += 1;
        self.loss(&format!("client {c}'s session ended ({why})"));
        self.log(format_args!("client {c} session ended: {why}"));
        let outs = std::mem::take(&mut self.clients[c].outs);
        for (_, pair) in outs {
            for (_, m, _, _) in pair.unacked {
                self.reject(m);
            }
        }
        let cl = &mut self.clients[c];
        cl.peer = None;
        cl.creds = None;
        cl.view.clear();
        cl.ins.clear();
    }

    fn reject(&mut self, m: usize) {
        if self.msgs[m].state == MsgState::Pending {
            self.msgs[m].state = MsgState::Rejected;
            self.stats.rejected += 1;
            let (from, to, n) = (
                self.msgs[m].from.clone(),
                self.msgs[m].to.clone(),
                self.msgs[m].n,
            );
            if self.ever_joined.contains(&to) {
                self.loss(&format!("message {m} ({from} → {to} #{n}) rejected"));
            }
        }
    }

    fn deliver_to_client(&mut self, i: usize, conn: ConnId, frame: &Frame) {
        let Some(c) = self.client_of(i, conn) else {
            return;
        };
        let now = self.now;
        if let Some(k) = &mut self.clients[c].conn {
            k.last_heard = now;
            k.pinged = false;
        }
        match decode(frame) {
            Seen::Joined(j) => {
                let node = self.nodes[i].name.clone();
                let peers: Vec<&str> = j.peers.iter().map(|p| p.id.as_str()).collect();
                self.log(format_args!(
                    "client {c} joined {node} as {} (resumed: {}) with {peers:?}",
                    j.self_.id, j.resumed
                ));
                let cl = &mut self.clients[c];
                if let Some(k) = &mut cl.conn {
                    k.joined = true;
                }
                cl.peer = Some(j.self_.id.clone());
                self.ever_joined.insert(j.self_.id.clone());
                cl.creds = Some(ResumeCredentials {
                    session: j.session.id.clone(),
                    secret: j.session.secret.clone(),
                });
                let view: BTreeSet<PeerId> = j.peers.iter().map(|p| p.id.clone()).collect();
                let gone: Vec<PeerId> = cl.view.difference(&view).cloned().collect();
                cl.view = view;
                for p in gone {
                    self.peer_gone(c, &p);
                }
                // Everything unacked goes again on the new connection.
                for pair in self.clients[c].outs.values_mut() {
                    for u in &mut pair.unacked {
                        u.3 = None;
                    }
                }
            }
            Seen::PeerJoined(p) => {
                self.log(format_args!("client {c} sees {} join", p.id));
                self.clients[c].view.insert(p.id);
            }
            Seen::PeerLeft { peer, reason } => {
                self.log(format_args!("client {c} sees {peer} leave ({reason:?})"));
                self.clients[c].view.remove(&peer);
                self.peer_gone(c, &peer);
            }
            Seen::Message { from, msg } => self.on_message(c, from, &msg),
            Seen::Error(e) => {
                self.log(format_args!("client {c} error {:?}", e.code));
                let joined = self.clients[c].conn.as_ref().is_some_and(|k| k.joined);
                if !joined && e.code == ErrorCode::SessionExpired {
                    self.end_session(c, "session expired");
                }
            }
            Seen::RoomClosed(_) => {
                self.end_session(c, "room closed");
            }
            // (The simulation's backend sends none.)
            Seen::Signal { .. } | Seen::ServerMessage { .. } | Seen::Ping | Seen::Pong => {}
        }
    }

    /// A peer left for good: what was pending to it is rejected. Its inbox (the last epoch
    /// and sequence number heard) is kept, as the SDK keeps it: a peer announced as gone can
    /// come back with the same id (it resumed after all), and its retransmissions of what was
    /// delivered already must not look new.
    fn peer_gone(&mut self, c: usize, peer: &PeerId) {
        if let Some(pair) = self.clients[c].outs.remove(peer) {
            for (_, m, _, _) in pair.unacked {
                self.reject(m);
            }
        }
    }

    fn on_message(&mut self, c: usize, from: PeerId, msg: &str) {
        let v: serde_json::Value = serde_json::from_str(msg).expect("envelope");
        if let Some(epoch) = v.get("a").and_then(|a| a.as_u64()) {
            let upto = v["u"].as_u64().unwrap_or(0);
            let mut resolved = Vec::new();
            if let Some(pair) = self.clients[c].outs.get_mut(&from)
                && pair.epoch == epoch
            {
                while pair.unacked.front().is_some_and(|u| u.0 <= upto) {
                    resolved.push(pair.unacked.pop_front().expect("front").1);
                }
            }
            for m in resolved {
                if self.msgs[m].state == MsgState::Pending {
                    self.msgs[m].state = MsgState::Resolved;
                    self.stats.resolved += 1;
                }
            }
            return;
        }
        let (epoch, seq, m) = (
            v["e"].as_u64().unwrap_or(0),
            v["s"].as_u64().unwrap_or(0),
            v["m"].as_u64().unwrap_or(0) as usize,
        );
        let mut inbox = *self.clients[c]
            .ins
            .entry(from.clone())
            .or_insert((epoch, 1));
        if self.debug {
            self.log(format_args!(
                "client {c} gets {from} e{epoch} s{seq} (inbox e{} next s{})",
                inbox.0, inbox.1
            ));
        }
        if epoch < inbox.0 {
            return;
        }
        if epoch > inbox.0 {
            inbox = (epoch, 1);
        }
        if seq == inbox.1 {
            inbox.1 += 1;
            let me = self.clients[c].peer.clone().expect("joined");
            let record = &mut self.msgs[m];
            record.delivered += 1;
            let twice = (record.delivered > 1).then(|| {
                format!(
                    "{} → {} #{} delivered twice",
                    record.from, record.to, record.n
                )
            });
            let key = (record.from.clone(), record.to.clone());
            let n = record.n;
            let wrong =
                (record.to != me).then(|| format!("message {m} for {} reached {me}", record.to));
            let last = self.delivered_upto.get(&key).copied().unwrap_or(0);
            for w in [wrong, twice].into_iter().flatten() {
                self.fail_later(w);
            }
            if n <= last {
                self.fail_later(format!(
                    "message {m} ({} → {}, #{n}) delivered after #{last}",
                    key.0, key.1
                ));
            }
            self.delivered_upto.insert(key, n);
        }
        self.clients[c].ins.insert(from.clone(), inbox);
        let ack = format!(r#"{{"a":{},"u":{}}}"#, inbox.0, inbox.1 - 1);
        self.client_send(c, &send_text(&from, &ack));
    }

    /// Records a violation (the step's check reports the first).
    fn fail_later(&mut self, what: String) {
        self.log(format_args!("VIOLATION {what}"));
        self.violation.get_or_insert(what);
    }

    fn client_send(&mut self, c: usize, text: &str) {
        let Some(k) = &self.clients[c].conn else {
            return;
        };
        if !k.joined {
            return;
        }
        let node = &mut self.nodes[k.node];
        if node.incarnation != k.incarnation {
            return;
        }
        if let Some((_, q)) = node.conns.get_mut(&k.conn) {
            q.push_back(ToNode::Frame(text.to_owned()));
        }
    }

    // ----- clients -----

    fn step_clients(&mut self, sending: bool) -> Result<(), String> {
        let now = self.now;
        for c in 0..CLIENTS {
            // Connect (or resume) when not connected.
            if self.clients[c].conn.is_none() && self.clients[c].retry_at <= now {
                self.connect(c);
            }
            // The watchdog: a ping after a quiet second, give up after WATCHDOG.
            let mut give_up = false;
            let mut ping = false;
            if let Some(k) = &mut self.clients[c].conn {
                let quiet = now.duration_since(k.last_heard);
                if quiet >= WATCHDOG || (!k.joined && now.duration_since(k.opened) >= WATCHDOG) {
                    give_up = true;
                } else if quiet >= Duration::from_secs(1) && !k.pinged && k.joined {
                    k.pinged = true;
                    ping = true;
                }
            }
            if give_up {
                self.log(format_args!("client {c} gives up on its node"));
                self.drop_conn(c);
                continue;
            }
            if ping {
                self.client_send(c, r#"{"op":"ping"}"#);
            }
            let Some(me) = self.clients[c].peer.clone() else {
                continue;
            };
            // One new message to every peer it sees, every other step.
            if sending && self.rng.chance(500) {
                let view: Vec<PeerId> = self.clients[c].view.iter().cloned().collect();
                for to in view {
                    let m = self.msgs.len();
                    let cl = &mut self.clients[c];
                    let epoch = cl.next_epoch;
                    let pair = cl.outs.entry(to.clone()).or_insert_with(|| OutPair {
                        epoch,
                        next_seq: 1,
                        unacked: VecDeque::new(),
                    });
                    if pair.epoch == epoch {
                        cl.next_epoch += 1;
                    }
                    let n = self
                        .sent_per_pair
                        .entry((me.clone(), to.clone()))
                        .or_default();
                    *n += 1;
                    let n = *n;
                    let seq = pair.next_seq;
                    pair.next_seq += 1;
                    pair.unacked.push_back((seq, m, now, None));
                    self.msgs.push(Msg {
                        from: me.clone(),
                        to,
                        n,
                        state: MsgState::Pending,
                        delivered: 0,
                    });
                    self.stats.sent += 1;
                }
            }
            // The delivery deadline, then (re)transmission.
            let mut expired = Vec::new();
            let mut texts = Vec::new();
            let mut fresh_epochs = 0;
            let next_epoch = self.clients[c].next_epoch;
            for (to, pair) in &mut self.clients[c].outs {
                if pair
                    .unacked
                    .front()
                    .is_some_and(|u| now.duration_since(u.2) >= DELIVERY_TIMEOUT)
                {
                    expired.extend(pair.unacked.drain(..).map(|u| u.1));
                    pair.epoch = next_epoch + fresh_epochs;
                    fresh_epochs += 1;
                    pair.next_seq = 1;
                    continue;
                }
                for u in &mut pair.unacked {
                    if u.3.is_none_or(|t| now.duration_since(t) >= RETRANSMIT) {
                        u.3 = Some(now);
                        texts.push(send_text(to, &envelope(pair.epoch, u.0, u.1)));
                    }
                }
            }
            self.clients[c].next_epoch += fresh_epochs;
            for m in expired {
                self.reject(m);
            }
            if self.clients[c].conn.as_ref().is_some_and(|k| k.joined) {
                for t in texts {
                    self.client_send(c, &t);
                }
            } else {
                // Not sent: go at once when joined again.
                for pair in self.clients[c].outs.values_mut() {
                    for u in &mut pair.unacked {
                        u.3 = None;
                    }
                }
            }
        }
        Ok(())
    }

    fn connect(&mut self, c: usize) {
        let up: Vec<usize> = (0..NODES)
            .filter(|i| !matches!(self.nodes[*i].health, Health::Dead { .. }))
            .collect();
        if up.is_empty() {
            return;
        }
        // A frozen node accepts the connection (the kernel does) but answers nothing.
        let i = up[self.rng.below(up.len())];
        let fresh = self.fresh_ids();
        let node = &mut self.nodes[i];
        let conn = ConnId(node.next_conn);
        node.next_conn += 1;
        let cl = &mut self.clients[c];
        node.conns.insert(
            conn,
            (
                c,
                VecDeque::from([ToNode::Join {
                    room: room_of(c),
                    identity: cl.identity.clone(),
                    resume: cl.creds.clone(),
                    fresh,
                }]),
            ),
        );
        cl.conn = Some(Conn {
            node: i,
            incarnation: node.incarnation,
            conn,
            joined: false,
            opened: self.now,
            last_heard: self.now,
            pinged: false,
        });
    }

    // ----- invariants -----

    fn check_step(&mut self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let mut attached: BTreeMap<PeerId, usize> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if matches!(n.health, Health::Dead { .. }) {
                continue;
            }
            n.node
                .check_invariants()
                .map_err(|e| format!("node {i}: {e}"))?;
            if n.health != Health::Up {
                continue;
            }
            let locals: HashSet<PeerId> = n
                .node
                .hub()
                .local_peers()
                .into_iter()
                .map(|p| p.info.id)
                .collect();
            for k in 0..ROOMS {
                for (info, connected) in n.node.hub().peer_presence(&self.room_of_gen(k)) {
                    if connected && locals.contains(&info.id) {
                        *attached.entry(info.id).or_default() += 1;
                    }
                }
            }
        }
        if let Some((peer, n)) = attached.iter().find(|(_, n)| **n > 1) {
            return Err(format!("{peer} is attached on {n} running nodes"));
        }
        Ok(())
    }

    fn check_settled(&mut self) -> Result<(), String> {
        for (k, m) in self.msgs.iter().enumerate() {
            match m.state {
                MsgState::Pending => {
                    return Err(format!(
                        "message {k} ({} → {} #{}) still pending",
                        m.from, m.to, m.n
                    ));
                }
                MsgState::Resolved if m.delivered != 1 => {
                    return Err(format!(
                        "message {k} ({} → {} #{}) resolved but delivered {} times",
                        m.from, m.to, m.n, m.delivered
                    ));
                }
                _ => {}
            }
        }
        let mut everyone = BTreeSet::new();
        let mut rooms: Vec<BTreeSet<PeerId>> = vec![BTreeSet::new(); ROOMS];
        for (c, cl) in self.clients.iter().enumerate() {
            let joined = cl.conn.as_ref().is_some_and(|k| k.joined);
            let peer = cl.peer.clone().filter(|_| joined);
            let Some(peer) = peer else {
                return Err(format!("client {c} is not back in the room"));
            };
            rooms[room_of(c)].insert(peer.clone());
            everyone.insert(peer);
        }
        for (k, members) in rooms.iter().enumerate() {
            let dir: BTreeSet<PeerId> = self
                .dir
                .model
                .snapshot(&self.room_of_gen(k))
                .peers
                .into_iter()
                .map(|p| p.info.id)
                .collect();
            if dir != *members {
                return Err(format!(
                    "the directory has {dir:?} in room {k}, its clients are {members:?}"
                ));
            }
        }
        for (c, cl) in self.clients.iter().enumerate() {
            let mut want = rooms[room_of(c)].clone();
            want.remove(cl.peer.as_ref().expect("peer"));
            if cl.view != want {
                return Err(format!("client {c} sees {:?}, want {want:?}", cl.view));
            }
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if n.health != Health::Up {
                return Err(format!("node {i} is not up after the faults"));
            }
            let held: BTreeSet<RoomId> = n
                .node
                .hub()
                .local_peers()
                .into_iter()
                .map(|p| p.room)
                .collect();
            for (k, members) in rooms.iter().enumerate() {
                let seen: BTreeSet<PeerId> = n
                    .node
                    .hub()
                    .peers(&self.room_of_gen(k))
                    .into_iter()
                    .map(|p| p.id)
                    .collect();
                if held.contains(&self.room_of_gen(k)) && seen != *members {
                    return Err(format!(
                        "node {i} ({}) sees {seen:?} in room {k}, want {members:?}",
                        n.name
                    ));
                }
            }
        }
        for peer in &everyone {
            let holders = self
                .nodes
                .iter()
                .filter(|n| {
                    n.node
                        .hub()
                        .local_peers()
                        .iter()
                        .any(|p| p.info.id == *peer)
                })
                .count();
            if holders != 1 {
                return Err(format!("{peer} is held by {holders} nodes"));
            }
        }
        Ok(())
    }
}

fn trace_hash(trace: &str) -> u64 {
    // FNV-1a: stable across runs and machines.
    trace.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs one seed; `Err` carries the seed, the violation and the end of the trace.
fn run_seed(seed: u64) -> Result<(Stats, u64), String> {
    let mut sim = Sim::new(seed);
    let result = sim.run();
    let hash = trace_hash(&sim.trace);
    if let Ok(path) = std::env::var("BLUECAM_SIM_TRACE") {
        let _ = std::fs::write(path, &sim.trace);
    }
    result.map(|()| (std::mem::take(&mut sim.stats), hash)).map_err(|e| {
        let tail: Vec<&str> = sim.trace.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "seed {seed}: {e}\n(replay: BLUECAM_SIM_SEED={seed} cargo test -p bluecam-core --test it sim)\n{}",
            tail.join("\n")
        )
    })
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(s) = std::env::var("BLUECAM_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("BLUECAM_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

fn run_many(seeds: Vec<u64>) {
    let mut total = Stats::default();
    let n = seeds.len();
    let mut failed = 0;
    for seed in seeds {
        match run_seed(seed) {
            Ok((s, _)) => {
                total.sent += s.sent;
                total.resolved += s.resolved;
                total.rejected += s.rejected;
                total.faults += s.faults;
                total.shard_faults += s.shard_faults;
                total.sessions_ended += s.sessions_ended;
                total.rooms_not_found += s.rooms_not_found;
            }
            // `BLUECAM_SIM_COUNT`: go on, and count the seeds that fail.
            Err(e) if std::env::var_os("BLUECAM_SIM_COUNT").is_some() => {
                failed += 1;
                eprintln!("{}", e.lines().next().unwrap_or_default());
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("{n} seeds: {total:?}");
    assert_eq!(failed, 0, "{failed} of {n} seeds failed");
}

#[test]
fn cluster_simulation_keeps_the_delivery_guarantee_under_faults() {
    run_many(seeds(1000));
}

#[test]
fn a_seed_replays_exactly() {
    let a = run_seed(7).map(|(_, h)| h);
    let b = run_seed(7).map(|(_, h)| h);
    assert_eq!(a.is_ok(), b.is_ok());
    if let (Ok(a), Ok(b)) = (a, b) {
        assert_eq!(a, b, "the same seed gave two different runs");
    }
}

#[test]
#[ignore = "long: cargo test -p bluecam-core --test it sim -- --ignored"]
fn cluster_simulation_long_run() {
    run_many((1_000..21_000).collect());
}

/// A sim node's control loop (every sim node is a cluster node).
fn cluster(node: &Node) -> &ClusterNode {
    node.cluster().expect("a cluster node")
}
