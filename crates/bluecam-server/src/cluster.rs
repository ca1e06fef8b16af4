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

use crate::{
    broker::{
        Broker, BrokerError, ForwardError, Host, HttpHandler, HttpOp, HttpReply, NewPeer, Outgoing,
    },
    metrics::Metrics,
    store::{Store, StoreError},
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

/// Functions every directory script shares (each script is this prelude plus its body, built
/// once): each directory operation is written once.
const PRELUDE: &str = r#"
-- Publishes msg once to every node with peers in the room whose key prefix is p, but those
-- already in told (a set of node ids, updated).
local function tell_room(p, msg, told)
  for _, v in ipairs(redis.call('HVALS', p .. ':nodes')) do
    local n = string.match(v, '^([^\n]*)')
    if not told[n] then told[n] = true; redis.call('PUBLISH', 'bc:n:' .. n, msg) end
  end
end
-- The node and session of a `nodes` entry ("node\nsession").
local function entry(cur)
  return string.match(cur, '^([^\n]*)\n(.*)$')
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000), t[1]
end
-- Records peer of room on node (a join, a re-registration); bumps and returns the version.
local function record(room, peer, node, rec, sess, sess_json)
  local p = 'bc:room:' .. room
  redis.call('HSET', p .. ':peers', peer, rec)
  redis.call('HSET', p .. ':nodes', peer, node .. '\n' .. sess)
  redis.call('SET', 'bc:session:' .. sess, sess_json)
  redis.call('SADD', 'bc:node:' .. node .. ':peers', room .. '\n' .. peer)
  redis.call('SADD', 'bc:nodes', node)
end
-- Announces to the room's other nodes that peer joined on node with record rec.
local function announce_joined(room, ver, node, rec)
  tell_room('bc:room:' .. room, '{"t":"joined","room":' .. cjson.encode(room) .. ',"ver":' ..
    ver .. ',"node":' .. cjson.encode(node) .. ',"rec":' .. rec .. '}', {[node] = true})
end
-- Moves peer of room (recorded with session sess, on node old) to node and announces it to
-- the room's nodes (old included); returns the new version.
local function move(room, peer, sess, old, node)
  local p = 'bc:room:' .. room
  redis.call('HSET', p .. ':nodes', peer, node .. '\n' .. sess)
  redis.call('SREM', 'bc:node:' .. old .. ':peers', room .. '\n' .. peer)
  redis.call('ZREM', 'bc:orphans', room .. '\n' .. peer)
  redis.call('SADD', 'bc:node:' .. node .. ':peers', room .. '\n' .. peer)
  redis.call('SADD', 'bc:nodes', node)
  local ver = redis.call('INCR', p .. ':ver')
  local msg = '{"t":"moved","room":' .. cjson.encode(room) .. ',"ver":' .. ver ..
    ',"node":' .. cjson.encode(node) .. ',"rec":' .. redis.call('HGET', p .. ':peers', peer) .. '}'
  local told = {[node] = true}
  tell_room(p, msg, told)
  if not told[old] then redis.call('PUBLISH', 'bc:n:' .. old, msg) end
  return ver
end
-- Removes peer of room (session sess, on node) and announces `left` with reason to the room's
-- other nodes.
local function remove(room, peer, sess, node, reason)
  local p = 'bc:room:' .. room
  -- A tombstone, so that a node that missed this (cut off) does not put the peer back.
  redis.call('SET', 'bc:gone:' .. room .. '\n' .. peer, 1, 'PX', 3600000)
  redis.call('ZREM', 'bc:orphans', room .. '\n' .. peer)
  redis.call('HDEL', p .. ':peers', peer)
  redis.call('HDEL', p .. ':nodes', peer)
  redis.call('DEL', 'bc:session:' .. sess)
  redis.call('SREM', 'bc:node:' .. node .. ':peers', room .. '\n' .. peer)
  if redis.call('HLEN', p .. ':nodes') == 0 then
    redis.call('SET', p .. ':active', redis.call('TIME')[1], 'XX')
  end
  local ver = redis.call('INCR', p .. ':ver')
  tell_room(p, '{"t":"left","room":' .. cjson.encode(room) .. ',"ver":' .. ver ..
    ',"peer":' .. cjson.encode(peer) .. ',"reason":' .. cjson.encode(reason) .. '}',
    {[node] = true})
end
"#;

/// A directory script: the prelude and its body, built and hashed once, called by SHA.
type Script = LazyLock<fred::types::scripts::Script>;

fn script(body: &str) -> fred::types::scripts::Script {
    fred::types::scripts::Script::from_lua(PRELUDE.to_owned() + body)
}

/// A join: refuses a full or deleted room, records the peer, publishes `joined` to the other
/// nodes of the room. ARGV: room, peer, node, info JSON, session, session JSON, max peers.
static JOIN: Script = LazyLock::new(|| {
    script(
        r#"
local p = 'bc:room:' .. ARGV[1]
if redis.call('EXISTS', p) == 0 then return {'gone'} end
if redis.call('HEXISTS', p .. ':nodes', ARGV[2]) == 0
  and redis.call('HLEN', p .. ':nodes') >= tonumber(ARGV[7]) then return {'full'} end
local ver = redis.call('INCR', p .. ':ver')
local rec = '{"info":' .. ARGV[4] .. ',"seq":' .. ver .. '}'
record(ARGV[1], ARGV[2], ARGV[3], rec, ARGV[5], ARGV[6])
announce_joined(ARGV[1], ver, ARGV[3], rec)
return {'ok', ver, redis.call('HGETALL', p .. ':peers'), redis.call('HGETALL', p .. ':nodes')}
"#,
    )
});

/// A resume on this node of a session another node holds (or an orphan of a node that was
/// reaped): checks the secret, room and identity, moves the peer here, publishes `moved` (the
/// old node hands over what it kept).
/// ARGV: session, secret, node, room, identity.
static CLAIM: Script = LazyLock::new(|| {
    script(
        r#"
local s = redis.call('GET', 'bc:session:' .. ARGV[1])
-- Redis lost its data a moment ago: the node holding the session may still put it back.
if not s and redis.call('EXISTS', 'bc:rebuilt') == 1 then return {'rebuilding'} end
if not s then return {'expired'} end
local sess = cjson.decode(s)
if sess.secret ~= ARGV[2] then return {'expired'} end
if sess.room ~= ARGV[4] or sess.identity ~= ARGV[5] then return {'unauthorized'} end
local p = 'bc:room:' .. sess.room
local cur = redis.call('HGET', p .. ':nodes', sess.peer)
if not cur or not redis.call('HGET', p .. ':peers', sess.peer) then return {'expired'} end
local old = entry(cur)
-- Recorded on this very node, which does not hold it: it expired here a moment ago.
if old == ARGV[3] then return {'expired'} end
local ver = move(sess.room, sess.peer, ARGV[1], old, ARGV[3])
return {'ok', ver, s, redis.call('HGETALL', p .. ':peers'), redis.call('HGETALL', p .. ':nodes')}
"#,
    )
});

/// A peer of `node` is gone: removes it (unless it moved to another node meanwhile) and
/// publishes `left`. ARGV: room, peer, node, reason.
static LEAVE: Script = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', 'bc:room:' .. ARGV[1] .. ':nodes', ARGV[2])
if not cur then return 0 end
local n0, sess = entry(cur)
-- (An orphan of this node, reaped while it was cut off, goes too: the node knows it is gone.)
if n0 ~= ARGV[3] and n0 ~= '~' then return 0 end
remove(ARGV[1], ARGV[2], sess, ARGV[3], ARGV[4])
return 1
"#,
    )
});

/// A node whose liveness key is gone: the peers still recorded on it become **orphans**, held
/// by no node (`~`) but still in their rooms, resumable on any node, for the resume window
/// (`bc:orphans`, scored by when it ends): a frozen or partitioned node looks like a reconnect,
/// not a departure. Nothing is published: the other nodes' replicas keep the peer where it was
/// until it moves (a claim or the thawed node's `REGISTER` publishes `moved`) or leaves
/// (`SWEEP_ORPHANS`). ARGV: node, resume window in ms.
static REAP: Script = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', 'bc:node:' .. ARGV[1] .. ':alive') == 1 then return -1 end
local until_ms = now_ms() + tonumber(ARGV[2])
local orphaned = 0
for _, m in ipairs(redis.call('SMEMBERS', 'bc:node:' .. ARGV[1] .. ':peers')) do
  local room, peer = string.match(m, '^([^\n]*)\n(.*)$')
  local p = 'bc:room:' .. room
  local cur = redis.call('HGET', p .. ':nodes', peer)
  if cur then
    local n0, sess = entry(cur)
    if n0 == ARGV[1] then
      redis.call('HSET', p .. ':nodes', peer, '~\n' .. sess)
      redis.call('ZADD', 'bc:orphans', until_ms, m)
      orphaned = orphaned + 1
    end
  end
end
redis.call('DEL', 'bc:node:' .. ARGV[1] .. ':peers')
redis.call('SREM', 'bc:nodes', ARGV[1])
return orphaned
"#,
    )
});

/// Orphans whose resume window has passed leave their rooms (reason timeout), announced to the
/// nodes of their rooms. Any node may run it; each orphan is removed once. No ARGV.
static SWEEP_ORPHANS: Script = LazyLock::new(|| {
    script(
        r#"
local removed = 0
for _, m in ipairs(redis.call('ZRANGEBYSCORE', 'bc:orphans', '-inf', now_ms(), 'LIMIT', 0, 1000)) do
  redis.call('ZREM', 'bc:orphans', m)
  local room, peer = string.match(m, '^([^\n]*)\n(.*)$')
  local cur = redis.call('HGET', 'bc:room:' .. room .. ':nodes', peer)
  if cur then
    local n0, sess = entry(cur)
    if n0 == '~' then
      remove(room, peer, sess, '~', 'timeout')
      removed = removed + 1
    end
  end
end
return removed
"#,
    )
});

/// Puts a peer of this node back into the directory (after Redis lost it or restarted, or
/// the node was reaped while cut off). ARGV as `JOIN` plus its seq, plus the version this node
/// has seen. Returns 'gone' when the room was deleted, 'moved' (and the node) when the peer is
/// on another node now, 'ok' when it was there (or an orphan of this node, taken back and
/// announced as moved here), 'added' when it was put back and announced.
static REGISTER: Script = LazyLock::new(|| {
    script(
        r#"
local p = 'bc:room:' .. ARGV[1]
if redis.call('EXISTS', p) == 0 then return {'gone'} end
-- It left for good while this node was cut off (moved elsewhere and left there, or its resume
-- window passed): not put back.
if redis.call('EXISTS', 'bc:gone:' .. ARGV[1] .. '\n' .. ARGV[2]) == 1 then return {'left'} end
-- The room's version never goes below what this node has seen (Redis lost its last writes):
-- a snapshot read after this is never older than the node's replica.
local v = tonumber(redis.call('GET', p .. ':ver') or '0')
if v < tonumber(ARGV[9]) then redis.call('SET', p .. ':ver', ARGV[9]) end
local cur = redis.call('HGET', p .. ':nodes', ARGV[2])
if cur then
  local n = entry(cur)
  if n == '~' then
    -- Orphaned while this node was cut off, and not resumed elsewhere: it is here again.
    move(ARGV[1], ARGV[2], ARGV[5], '~', ARGV[3])
    return {'ok'}
  end
  if n ~= ARGV[3] then return {'moved', n} end
  redis.call('SADD', 'bc:node:' .. ARGV[3] .. ':peers', ARGV[1] .. '\n' .. ARGV[2])
  return {'ok'}
end
local ver = redis.call('INCR', p .. ':ver')
local rec = '{"info":' .. ARGV[4] .. ',"seq":' .. ARGV[8] .. '}'
record(ARGV[1], ARGV[2], ARGV[3], rec, ARGV[5], ARGV[6])
announce_joined(ARGV[1], ver, ARGV[3], rec)
return {'added'}
"#,
    )
});

/// Raises a room's version to at least ARGV[2] (a node putting the room back after Redis lost
/// its data). ARGV: room, version.
static RAISE_VERSION: Script = LazyLock::new(|| {
    script(
        r#"
local k = 'bc:room:' .. ARGV[1] .. ':ver'
local v = tonumber(redis.call('GET', k) or '0')
if v < tonumber(ARGV[2]) then redis.call('SET', k, ARGV[2]) end
return 1
"#,
    )
});

/// Deletes a room with everything recorded about it and publishes `closed` to the nodes
/// that had peers in it. ARGV: room, reason, this node, and 'empty' to delete it only if no
/// peer is in it (checked in the same step, so a join cannot slip in). Returns 0 when
/// nothing was deleted.
static DELETE_ROOM: Script = LazyLock::new(|| {
    script(
        r#"
local p = 'bc:room:' .. ARGV[1]
if ARGV[4] == 'empty' and redis.call('HLEN', p .. ':nodes') > 0 then return 0 end
if redis.call('DEL', p) == 0 then return 0 end
-- A tombstone: a durable copy of the room (PostgreSQL) being deleted is not put back.
redis.call('SET', 'bc:roomgone:' .. ARGV[1], 1, 'PX', 3600000)
redis.call('ZREM', 'bc:rooms', ARGV[1])
local msg = '{"t":"closed","room":' .. cjson.encode(ARGV[1]) .. ',"reason":' ..
  cjson.encode(ARGV[2]) .. '}'
local all = redis.call('HGETALL', p .. ':nodes')
for i = 1, #all, 2 do
  local n, sess = entry(all[i + 1])
  redis.call('DEL', 'bc:session:' .. sess)
  redis.call('SREM', 'bc:node:' .. n .. ':peers', ARGV[1] .. '\n' .. all[i])
  redis.call('ZREM', 'bc:orphans', ARGV[1] .. '\n' .. all[i])
end
tell_room(p, msg, {[ARGV[3]] = true})
redis.call('DEL', p .. ':peers', p .. ':nodes', p .. ':ver', p .. ':active')
return 1
"#,
    )
});

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

/// The channel of HTTP transport requests passed to a node, and of their answers.
fn http_channel(node: &NodeId) -> String {
    format!("bc:h:{node}")
}

/// The head of a message on a node's HTTP channel: a request passed on (`q`, from `from`) or
/// an answer (`r`, to the request of that number). The body follows the head's line as the
/// bytes it is (never escaped into a JSON string, which could make it six times larger).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    from: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    op: Option<HttpOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
}

impl RelayHead {
    /// The head's JSON line, then the body.
    pub(crate) fn encode(&self, body: &[u8]) -> Vec<u8> {
        let head = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(head.len() + 1 + body.len());
        out.extend_from_slice(&head);
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// Splits a message into its head and body.
    pub(crate) fn decode(message: &[u8]) -> Option<(Self, &[u8])> {
        let end = message.iter().position(|b| *b == b'\n')?;
        let head = serde_json::from_slice(&message[..end]).ok()?;
        Some((head, &message[end + 1..]))
    }
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
    /// The client settings (TLS included) of every connection the node makes.
    config: FredConfig,
}

/// The client settings of `url`. A `rediss://` URL gets verified TLS (rustls): against the
/// PEM CA bundle `ca` when given, else the system's roots; any TLS setting that cannot be
/// honoured is an error, never a silent plaintext connection.
pub fn redis_config(url: &str, ca: Option<&std::path::Path>) -> Result<FredConfig, String> {
    let mut config = FredConfig::from_url(url)
        .map_err(|e| format!("the Redis URL is not valid: {}", e.details()))?;
    let tls_url = url.starts_with("rediss") || url.starts_with("valkeys");
    match (tls_url, ca) {
        (false, Some(_)) => {
            return Err(
                "redis_ca is set but the Redis URL is not rediss://: refusing to \
                        connect without TLS"
                    .into(),
            );
        }
        (true, Some(ca)) => {
            use rustls::pki_types::{CertificateDer, pem::PemObject as _};
            let bad = |e: &dyn std::fmt::Display| format!("redis_ca {}: {e}", ca.display());
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"holds no certificate"));
            }
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let tls = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            config.tls = Some(fred::types::config::TlsConnector::from(tls).into());
        }
        // fred fills it in from the URL (system roots); make sure it did.
        (true, None) if config.tls.is_none() => {
            let tls = fred::types::config::TlsConnector::default_rustls()
                .map_err(|e| format!("TLS: {}", e.details()))?;
            config.tls = Some(tls.into());
        }
        _ => {}
    }
    Ok(config)
}

/// A fred client of `config` with reconnection forever (every 250 ms to 2 s).
fn build(config: &FredConfig) -> Result<Builder, fred::error::Error> {
    let mut builder = Builder::from_config(config.clone());
    builder
        .set_policy(ReconnectPolicy::new_exponential(0, 250, 2_000, 2))
        .with_connection_config(|c| {
            c.connection_timeout = COMMAND_TIMEOUT;
            c.internal_command_timeout = COMMAND_TIMEOUT;
            // A command reported as failed must never be replayed after a reconnection: its
            // sender was told it was not delivered, and may have sent it again.
            c.max_command_attempts = 1;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = COMMAND_TIMEOUT;
            // Events from other nodes queue here while this node applies them.
            p.broadcast_channel_capacity = 1 << 16;
        });
    Ok(builder)
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
                            me.on_http(message);
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
            let session = SessionRecord {
                room: p.room.clone(),
                peer: p.info.id.clone(),
                identity: p.info.identity.clone(),
                secret: p.secret.clone(),
                permissions: p.permissions,
            };
            let args = vec![
                p.room.to_string(),
                p.info.id.to_string(),
                self.node.to_string(),
                serde_json::to_string(&p.info).unwrap_or_default(),
                p.session.to_string(),
                serde_json::to_string(&session).unwrap_or_default(),
                String::new(),
                p.seq.to_string(),
                p.room_ver.to_string(),
            ];
            let r: Result<Vec<String>, _> = self.eval(&REGISTER, args).await;
            match r {
                Ok(answer) if answer.first().map(String::as_str) == Some("gone") => {
                    hub.close_room(&p.room, RoomClosedReason::Deleted);
                }
                Ok(answer) if answer.first().map(String::as_str) == Some("left") => {
                    hub.peer_gone(&p.room, &p.info.id);
                }
                // 'moved' is applied by the room's snapshot below.
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
    /// A message on this node's HTTP channel: a request to answer (in a task of its own: a
    /// poll may wait), or the answer to one of ours.
    fn on_http(self: &Arc<Self>, message: &[u8]) {
        let Some((head, body)) = RelayHead::decode(message) else {
            tracing::error!("undecodable HTTP transport relay message");
            self.metrics.redis_errors.increment(1);
            return;
        };
        match head {
            RelayHead {
                q: Some(id),
                from: Some(from),
                op: Some(op),
                ..
            } => {
                let Some(handler) = self.http_handler.get().cloned() else {
                    return;
                };
                let me = Arc::clone(self);
                let body = bytes::Bytes::copy_from_slice(body);
                tokio::spawn(async move {
                    let reply = (handler.0)(op, body).await;
                    let answer = RelayHead {
                        q: None,
                        from: None,
                        op: None,
                        r: Some(id),
                        status: Some(reply.status),
                    };
                    let message = answer.encode(reply.body.as_bytes());
                    let sent: Result<i64, _> =
                        me.client.publish(http_channel(&from), message).await;
                    if let Err(e) = sent {
                        me.redis_error("HTTP transport answer", &e);
                    }
                });
            }
            RelayHead {
                r: Some(id),
                status: Some(status),
                ..
            } => {
                let waiting = self
                    .http_waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = waiting {
                    let body = String::from_utf8_lossy(body).into_owned();
                    let _ = tx.send(HttpReply { status, body });
                }
            }
            _ => {
                tracing::error!("HTTP transport relay message of no known shape");
                self.metrics.redis_errors.increment(1);
            }
        }
    }

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

    async fn run_outbox(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Outgoing>,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(OUTBOX_BATCH);
        loop {
            batch.clear();
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, OUTBOX_BATCH) => n,
                () = stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            let mut frames = Vec::new();
            for item in batch.drain(..) {
                match item {
                    Outgoing::Frame { .. } => frames.push(item),
                    Outgoing::Removed {
                        room, peer, reason, ..
                    } => {
                        // Frames sent before the leave go first.
                        self.publish_frames(std::mem::take(&mut frames)).await;
                        let reason = match reason {
                            LeaveReason::Left => "left",
                            LeaveReason::Timeout => "timeout",
                            LeaveReason::Kicked => "kicked",
                            LeaveReason::Replaced => "replaced",
                        };
                        let args = vec![
                            room.to_string(),
                            peer.to_string(),
                            self.node.to_string(),
                            reason.to_owned(),
                        ];
                        let r: Result<i64, _> = self.eval(&LEAVE, args).await;
                        match r {
                            Ok(_) => self.metrics.cluster_out.increment(1),
                            // The resync after reconnection removes it (not re-registered).
                            Err(e) => self.redis_error("leave", &e),
                        }
                    }
                }
            }
            self.publish_frames(frames).await;
        }
    }

    /// Publishes frames in one pipeline. A frame that failed, or that no node received (its
    /// node is dead, draining, or not subscribed yet after Redis came back), is reported to
    /// its sender.
    async fn publish_frames(&self, items: Vec<Outgoing>) {
        if items.is_empty() {
            return;
        }
        let mut received: Vec<bool> = vec![false; items.len()];
        if self.client.is_connected() {
            let pipe = self.client.pipeline();
            let mut queued = true;
            for item in &items {
                if let Outgoing::Frame {
                    node,
                    room,
                    to,
                    frame,
                    ..
                } = item
                {
                    let r: Result<(), _> = pipe
                        .publish(
                            channel(node),
                            NodeMessage::frame_text(room, to, frame.as_str()),
                        )
                        .await;
                    queued &= r.is_ok();
                }
            }
            if queued {
                match tokio::time::timeout(COMMAND_TIMEOUT, pipe.try_all::<i64>()).await {
                    Ok(answers) => {
                        for (slot, answer) in received.iter_mut().zip(answers) {
                            match answer {
                                Ok(n) => *slot = n > 0,
                                Err(e) => self.redis_error("publish", &e),
                            }
                        }
                        for (item, ok) in items.iter().zip(&received) {
                            if let (false, Outgoing::Frame { node, room, to, .. }) = (ok, item) {
                                tracing::debug!(%node, %room, ?to, "frame for a node nobody listens for");
                            }
                        }
                        if received.iter().any(|r| !r) {
                            // A node nobody listens for: dead, restarted under a new id, or
                            // this node's replica is stale. The next resync repoints replicas.
                            self.signal(Signal::Unheard);
                        }
                    }
                    Err(_) => self.redis_error("publish", &"timed out"),
                }
            }
        }
        let delivered = received.iter().filter(|r| **r).count();
        self.metrics.cluster_out.increment(delivered as u64);
        if delivered == items.len() {
            return;
        }
        if let Some(hub) = self.hub.get() {
            for (item, ok) in items.into_iter().zip(received) {
                if !ok {
                    hub.undelivered(item);
                }
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
            let session = SessionRecord {
                room: peer.room.clone(),
                peer: peer.info.id.clone(),
                identity: peer.info.identity.clone(),
                secret: peer.secret.clone(),
                permissions: peer.permissions,
            };
            let args = vec![
                peer.room.to_string(),
                peer.info.id.to_string(),
                self.node.to_string(),
                serde_json::to_string(&peer.info).unwrap_or_default(),
                peer.session.to_string(),
                serde_json::to_string(&session).unwrap_or_default(),
                peer.max_peers.to_string(),
            ];
            let r: Vec<Value> = self.eval(&JOIN, args).await.map_err(|e| {
                self.redis_error("join", &e);
                backend(e)
            })?;
            let mut r = r.into_iter();
            match r.next().and_then(|v| v.as_string()).as_deref() {
                Some("ok") => {}
                Some("full") => return Err(BrokerError::RoomFull),
                Some("gone") => return Err(BrokerError::RoomGone),
                other => return Err(backend(format!("unexpected join answer {other:?}"))),
            }
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
            let mut r = r.into_iter();
            match r.next().and_then(|v| v.as_string()).as_deref() {
                Some("ok") => {}
                // While the directory is being rebuilt (Redis lost its data a moment ago), the
                // node holding the session may not have put it back yet: try again, do not
                // end a session that exists.
                Some("rebuilding") => {
                    return Err(backend("the cluster directory is being rebuilt"));
                }
                Some("expired") if self.machine().recently_rebuilt(Instant::now()) => {
                    return Err(backend("the cluster directory is being rebuilt"));
                }
                Some("expired") => return Ok(None),
                Some("unauthorized") => return Err(BrokerError::Unauthorized),
                other => return Err(backend(format!("unexpected claim answer {other:?}"))),
            }
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
    ) -> BoxFuture<'_, Result<Option<crate::broker::Presence>, BrokerError>> {
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

/// Rooms in Redis (see the module doc for the keys).
#[derive(Clone, Debug)]
pub struct RedisStore {
    broker: Arc<RedisBroker>,
}

fn store_err(e: impl Into<crate::store::BackendError>) -> StoreError {
    StoreError::Redis(e.into())
}

impl RedisStore {
    async fn rooms_by_id(&self, ids: Vec<String>) -> Result<Vec<Room>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| format!("bc:room:{id}")).collect();
        let values: Vec<Option<String>> = self.broker.cmd().mget(keys).await.map_err(store_err)?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }
}

impl Store for RedisStore {
    fn create_room(&self, room: Room) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(&room).map_err(store_err)?;
            let set: Option<String> = self
                .broker
                .cmd()
                .set(
                    format!("bc:room:{}", room.id),
                    json,
                    None,
                    Some(SetOptions::NX),
                    false,
                )
                .await
                .map_err(store_err)?;
            if set.is_none() {
                return Err(StoreError::Exists);
            }
            let pipe = self.broker.client.pipeline();
            // (A room made again with the id of a deleted one is no tombstone.)
            let _: () = pipe
                .del(format!("bc:roomgone:{}", room.id))
                .await
                .map_err(store_err)?;
            let _: () = pipe
                .zadd(
                    "bc:rooms",
                    None,
                    None,
                    false,
                    false,
                    (room.created_at as f64, room.id.as_str()),
                )
                .await
                .map_err(store_err)?;
            let _: () = pipe
                .set(
                    format!("bc:room:{}:active", room.id),
                    crate::unix_now(),
                    None,
                    None,
                    false,
                )
                .await
                .map_err(store_err)?;
            let _: Vec<Value> = pipe.all().await.map_err(store_err)?;
            Ok(())
        })
    }

    fn room(&self, id: RoomId) -> BoxFuture<'_, Result<Option<Room>, StoreError>> {
        Box::pin(async move {
            let v: Option<String> = self
                .broker
                .cmd()
                .get(format!("bc:room:{id}"))
                .await
                .map_err(store_err)?;
            let room: Option<Room> = v
                .map(|v| serde_json::from_str(&v).map_err(store_err))
                .transpose()?;
            if let Some(room) = &room {
                self.broker.machine().remember_room(room);
            }
            Ok(room)
        })
    }

    fn rooms(&self, member: Option<Identity>) -> BoxFuture<'_, Result<Vec<Room>, StoreError>> {
        Box::pin(async move {
            let ids: Vec<String> = self
                .broker
                .cmd()
                .zrange("bc:rooms", 0, -1, None, false, None, false)
                .await
                .map_err(store_err)?;
            let mut rooms = self.rooms_by_id(ids).await?;
            if let Some(member) = member {
                crate::store::retain_involving(&mut rooms, &member);
            }
            Ok(rooms)
        })
    }

    fn delete_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let args = vec![
                id.to_string(),
                "deleted".to_owned(),
                self.broker.node.to_string(),
            ];
            let n: i64 = self
                .broker
                .eval(&DELETE_ROOM, args)
                .await
                .map_err(store_err)?;
            Ok(n == 1)
        })
    }

    fn delete_empty_room(&self, id: RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let args = vec![
                id.to_string(),
                "expired".to_owned(),
                self.broker.node.to_string(),
                "empty".to_owned(),
            ];
            let n: i64 = self
                .broker
                .eval(&DELETE_ROOM, args)
                .await
                .map_err(store_err)?;
            Ok(n == 1)
        })
    }

    fn touch_room(&self, id: RoomId, at: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.broker
                .cmd()
                .set::<(), _, _>(
                    format!("bc:room:{id}:active"),
                    at,
                    None,
                    Some(SetOptions::XX),
                    false,
                )
                .await
                .map_err(store_err)
        })
    }

    fn expired_rooms(&self, now: u64) -> BoxFuture<'_, Result<Vec<RoomId>, StoreError>> {
        Box::pin(async move {
            let rooms = self.rooms(None).await?;
            let rooms: Vec<Room> = rooms
                .into_iter()
                .filter(|r| r.empty_timeout_secs.is_some())
                .collect();
            if rooms.is_empty() {
                return Ok(Vec::new());
            }
            let pipe = self.broker.client.pipeline();
            for r in &rooms {
                let _: () = pipe
                    .get(format!("bc:room:{}:active", r.id))
                    .await
                    .map_err(store_err)?;
                let _: () = pipe
                    .hlen(format!("bc:room:{}:nodes", r.id))
                    .await
                    .map_err(store_err)?;
            }
            let answers: Vec<Value> = pipe.all().await.map_err(store_err)?;
            let mut out = Vec::new();
            for (r, pair) in rooms.into_iter().zip(answers.chunks(2)) {
                let active = pair.first().and_then(Value::as_u64).unwrap_or(r.created_at);
                let peers = pair.get(1).and_then(Value::as_u64).unwrap_or(0);
                if peers == 0
                    && r.empty_timeout_secs
                        .is_some_and(|t| active.saturating_add(t) <= now)
                {
                    out.push(r.id);
                }
            }
            Ok(out)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.broker.check().await.map_err(store_err) })
    }

    fn recently_deleted(&self, id: &RoomId) -> BoxFuture<'_, Result<bool, StoreError>> {
        let key = format!("bc:roomgone:{id}");
        Box::pin(async move {
            let n: i64 = self.broker.cmd().exists(key).await.map_err(store_err)?;
            Ok(n > 0)
        })
    }
}
