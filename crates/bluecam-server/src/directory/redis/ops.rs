//! [`RedisDirectory`]: each operation of the directory model
//! (`bluecam_core::directory::Directory`) carried out on Redis: the room's part by its script
//! (one slot, keys declared), what spans rooms or is global (the node set, a node's rooms, the
//! orphan index, the rebuild mark) by plain commands around it. Answers are the model's types;
//! `tests/vectors/directory.json` and a randomised comparison (the server's tests) hold the
//! two to the same results.

use super::*;
use bluecam_core::directory::{
    ClaimReply, DirState, JoinReply, PeerEntry, Reaped, RegisterReply, RoomDump, Seat,
    SessionRecord, View,
};
use std::collections::{BTreeMap, BTreeSet};

/// Rooms with orphans, scored by when the next one may be due (ms).
const ORPHAN_INDEX: &str = "bc:orphans";
/// Every node that may still hold peers.
const NODES: &str = "bc:nodes";
/// The directory's epoch.
const EPOCH: &str = "bc:epoch";
/// Set for a resume window after Redis lost its data.
const REBUILT: &str = "bc:rebuilt";
/// Orphan index entries one reap round sweeps at most.
const SWEEP_BATCH: i64 = 1000;

fn alive_key(node: &NodeId) -> String {
    format!("bc:node:{{{node}}}:alive")
}

fn node_rooms_key(node: &NodeId) -> String {
    format!("bc:node:{{{node}}}:rooms")
}

/// The directory on Redis. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RedisDirectory {
    client: Client,
    opts: Options,
    /// On a Redis Cluster: scripts answer with the messages they emit, which are published
    /// here with `SPUBLISH` (see `scripts.rs`, `DONE_SHARDED`).
    sharded: bool,
}

type R<T> = Result<T, BrokerError>;

impl RedisDirectory {
    pub(super) fn new(client: Client, opts: Options) -> Self {
        let sharded = client.is_clustered();
        Self {
            client,
            opts,
            sharded,
        }
    }

    /// The form of `script` for this Redis.
    fn form<'s>(&self, script: &'s Script) -> &'s fred::types::scripts::Script {
        if self.sharded {
            &script.sharded
        } else {
            &script.inline
        }
    }

    /// A script's answer: on a Redis Cluster, `{answer, messages}`, whose messages (node,
    /// text, node, text…) are published now, in order, each on its node's shard, before the
    /// answer is used (so a peer's frames sent after its join reach each node after the
    /// join's news). A message that cannot be published is lost to its node (logged); its
    /// replica is repaired by its next resync, which a failover (the usual cause: the
    /// channel's shard is unreachable) brings about on every node.
    async fn answered<T: FromValue>(&self, answer: Value) -> R<T> {
        if !self.sharded {
            return T::from_value(answer).map_err(backend);
        }
        let mut parts = match answer {
            Value::Array(parts) if parts.len() == 2 => parts.into_iter(),
            other => return Err(backend(format!("unexpected script answer {other:?}"))),
        };
        let inner = parts.next().unwrap_or(Value::Null);
        if let Some(Value::Array(out)) = parts.next()
            && !out.is_empty()
        {
            let pipe = self.client.pipeline();
            let mut out = out.into_iter();
            while let (Some(node), Some(msg)) = (out.next(), out.next()) {
                let node = NodeId::new(node.as_string().unwrap_or_default());
                let _: () = pipe.spublish(channel(&node), msg).await.map_err(backend)?;
            }
            match tokio::time::timeout(COMMAND_TIMEOUT, pipe.try_all::<Value>()).await {
                Ok(results) => {
                    for r in results {
                        if let Err(e) = r {
                            tracing::warn!(error = %e, "a directory event could not be published");
                        }
                    }
                }
                Err(_) => tracing::warn!("publishing directory events timed out"),
            }
        }
        T::from_value(inner).map_err(backend)
    }

    /// Connects to the Redis at `url` (`redis://…`), for tools and tests.
    pub async fn connect(url: &str) -> R<Self> {
        let config = FredConfig::from_url(url).map_err(backend)?;
        let client = Builder::from_config(config).build().map_err(backend)?;
        client.init().await.map_err(backend)?;
        Ok(Self::new(
            client,
            Options {
                timeout: Some(COMMAND_TIMEOUT),
                ..Options::default()
            },
        ))
    }

    fn cmd(&self) -> fred::clients::WithOptions<Client> {
        self.client.with_options(&self.opts)
    }

    /// Runs a room's script by SHA, and by its text (`EVAL`, which also caches it there) when
    /// the Redis that holds the room does not know it: it was restarted, its script cache
    /// flushed, or it is a master of a Redis Cluster this node has not run the script on (a
    /// `SCRIPT LOAD` would reach one master only, not necessarily the room's). A `NOSCRIPT`
    /// answer ran nothing, so the retry cannot apply anything twice.
    async fn eval<T: FromValue>(&self, script: &Script, room: &RoomId, args: Vec<String>) -> R<T> {
        let script = self.form(script);
        let sha = script.sha1().clone();
        let keys = room_keys(room);
        let r: Result<Value, _> = match self
            .cmd()
            .evalsha(sha.clone(), keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let lua = script.lua().cloned().unwrap_or_default();
                self.cmd().eval(lua, keys, args).await
            }
            r => r,
        };
        self.answered(r.map_err(backend)?).await
    }

    /// Runs a room's script that may seat a peer of `room` on `node`, the node first joining
    /// the node set and listing the room as one of its own (`Directory::note_node_room`), all
    /// in one pipeline: one round trip, in order on one connection.
    async fn eval_noted<T: FromValue>(
        &self,
        node: &NodeId,
        room: &RoomId,
        script: &Script,
        args: Vec<String>,
    ) -> R<T> {
        let sha = self.form(script).sha1().clone();
        let pipe = self.client.pipeline();
        let queued: Result<(), fred::error::Error> = async {
            let () = pipe.sadd(NODES, node.as_str()).await?;
            let () = pipe.sadd(node_rooms_key(node), room.as_str()).await?;
            // (`EVALSHA` by hand: pipelines have no Lua interface. Routed to the room's slot.)
            let keys = room_keys(room);
            let slot = fred::types::ClusterHash::from(keys[0].as_str());
            let mut all = vec![sha.to_string(), keys.len().to_string()];
            all.extend(keys);
            all.extend(args.iter().cloned());
            let evalsha = fred::types::CustomCommand::new("EVALSHA", slot, false);
            let () = pipe.custom(evalsha, all).await?;
            Ok(())
        }
        .await;
        queued.map_err(backend)?;
        let mut answers = tokio::time::timeout(COMMAND_TIMEOUT, pipe.try_all::<Value>())
            .await
            .map_err(backend)?;
        let answer = answers.pop().ok_or_else(|| backend("no answer"))?;
        for noted in answers {
            noted.map_err(backend)?;
        }
        match answer {
            // Redis does not know the script (it restarted): the notes went through; the
            // script, which ran nothing, runs now.
            Err(e) if e.details().starts_with("NOSCRIPT") => self.eval(script, room, args).await,
            Err(e) => Err(backend(e)),
            Ok(v) => self.answered(v).await,
        }
    }

    /// Before an operation that may seat a peer of `room` on `node`: the node joins the node
    /// set and lists the room as one of its own (`Directory::note_node_room`).
    pub async fn note_node_room(&self, node: &NodeId, room: &RoomId) -> R<()> {
        let pipe = self.client.pipeline();
        let () = pipe.sadd(NODES, node.as_str()).await.map_err(backend)?;
        let () = pipe
            .sadd(node_rooms_key(node), room.as_str())
            .await
            .map_err(backend)?;
        let _: Vec<Value> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        Ok(())
    }

    /// `Directory::create_room`: writes the room's record (`json`) unless there is one.
    pub async fn create_room(&self, room: &RoomId, json: &str) -> R<bool> {
        let args = vec![
            room.to_string(),
            json.to_owned(),
            crate::unix_now().to_string(),
        ];
        let n: i64 = self.eval(&CREATE_ROOM, room, args).await?;
        Ok(n == 1)
    }

    /// `Directory::join`.
    pub async fn join(
        &self,
        room: &RoomId,
        node: &NodeId,
        peer: &PeerEntry,
        max_peers: u32,
        multiple_sessions: bool,
    ) -> R<JoinReply> {
        let mut args = peer_args(room, node, peer, Some(max_peers));
        args.push(u8::from(multiple_sessions).to_string());
        let (tag, mut rest) = tagged(self.eval_noted(node, room, &JOIN, args).await?);
        Ok(match tag.as_str() {
            "ok" => {
                let ver = rest.next().and_then(|v| v.as_u64()).unwrap_or(0);
                let peers = seats(
                    rest.next().unwrap_or(Value::Null),
                    rest.next().unwrap_or(Value::Null),
                );
                let replaced = match rest.next() {
                    Some(Value::Array(ids)) => ids
                        .into_iter()
                        .filter_map(|v| v.as_string().map(PeerId::new))
                        .collect(),
                    _ => Vec::new(),
                };
                JoinReply::Joined {
                    view: view(ver, peers),
                    replaced,
                }
            }
            "full" => JoinReply::Full,
            "gone" => JoinReply::Gone,
            other => return Err(backend(format!("unexpected join answer {other:?}"))),
        })
    }

    /// `Directory::claim`.
    pub async fn claim(
        &self,
        room: &RoomId,
        node: &NodeId,
        identity: &Identity,
        session: &SessionId,
        secret: &SessionSecret,
    ) -> R<ClaimReply> {
        let args = vec![
            room.to_string(),
            session.to_string(),
            secret.expose().to_owned(),
            node.to_string(),
            identity.to_string(),
        ];
        let (tag, mut rest) = tagged(self.eval_noted(node, room, &CLAIM, args).await?);
        Ok(match tag.as_str() {
            "ok" => {
                let ver = rest.next().and_then(|v| v.as_u64()).unwrap_or(0);
                let session: SessionRecord = rest
                    .next()
                    .and_then(|v| v.as_string())
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .ok_or_else(|| backend("unreadable session record"))?;
                let peers = seats(
                    rest.next().unwrap_or(Value::Null),
                    rest.next().unwrap_or(Value::Null),
                );
                ClaimReply::Claimed {
                    session,
                    view: view(ver, peers),
                }
            }
            "missing" if self.epoch().await?.1 => ClaimReply::Rebuilding,
            "missing" | "expired" => ClaimReply::Expired,
            "here" => ClaimReply::Here,
            "unauthorized" => ClaimReply::Unauthorized,
            other => return Err(backend(format!("unexpected claim answer {other:?}"))),
        })
    }

    /// `Directory::leave`.
    pub async fn leave(
        &self,
        room: &RoomId,
        peer: &PeerId,
        node: &NodeId,
        reason: LeaveReason,
    ) -> R<bool> {
        let reason = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let args = vec![room.to_string(), peer.to_string(), node.to_string(), reason];
        let n: i64 = self.eval(&LEAVE, room, args).await?;
        Ok(n == 1)
    }

    /// `Directory::register`.
    pub async fn register(
        &self,
        room: &RoomId,
        node: &NodeId,
        peer: &PeerEntry,
        seq: u64,
        seen_ver: u64,
    ) -> R<RegisterReply> {
        let mut args = peer_args(room, node, peer, None);
        args.extend([seq.to_string(), seen_ver.to_string()]);
        let (tag, mut rest) = tagged(self.eval_noted(node, room, &REGISTER, args).await?);
        Ok(match tag.as_str() {
            "ok" => RegisterReply::Present,
            "added" => RegisterReply::Added,
            "moved" => RegisterReply::Moved {
                node: NodeId::new(rest.next().and_then(|v| v.as_string()).unwrap_or_default()),
            },
            "left" => RegisterReply::Left,
            "gone" => RegisterReply::Gone,
            other => return Err(backend(format!("unexpected register answer {other:?}"))),
        })
    }

    /// `Directory::raise_version`.
    pub async fn raise_version(&self, room: &RoomId, ver: u64) -> R<()> {
        let _: i64 = self
            .eval(
                &RAISE_VERSION,
                room,
                vec![room.to_string(), ver.to_string()],
            )
            .await?;
        Ok(())
    }

    /// `Directory::delete_room`.
    pub async fn delete_room(
        &self,
        room: &RoomId,
        reason: RoomClosedReason,
        node: &NodeId,
        only_if_empty: bool,
    ) -> R<bool> {
        let reason = serde_json::to_value(reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let args = vec![
            room.to_string(),
            reason,
            node.to_string(),
            if only_if_empty { "empty" } else { "" }.to_owned(),
        ];
        let n: i64 = self.eval(&DELETE_ROOM, room, args).await?;
        if n == 1 {
            let _: i64 = self
                .cmd()
                .zrem(self.orphan_index_of(room), room.as_str())
                .await
                .map_err(backend)?;
        }
        Ok(n == 1)
    }

    /// On a Redis Cluster, each shard's first slot range and every range with the first of
    /// its shard, from fred's slot map; `None` on one Redis.
    fn shards(&self) -> Option<ShardMap> {
        use fred::interfaces::ClusterInterface as _;
        let routing = self
            .client
            .is_clustered()
            .then(|| self.client.cached_cluster_state())
            .flatten()?;
        let mut firsts: BTreeMap<String, (u16, u16)> = BTreeMap::new();
        for range in routing.slots() {
            let first = firsts
                .entry(range.primary.to_string())
                .or_insert((range.start, range.end));
            if range.start < first.0 {
                *first = (range.start, range.end);
            }
        }
        let ranges = routing
            .slots()
            .iter()
            .map(|r| ((r.start, r.end), firsts[&r.primary.to_string()]))
            .collect();
        Some(ShardMap {
            firsts: firsts.into_values().collect(),
            ranges,
        })
    }

    /// The keys of `what`, one per shard on a Redis Cluster (`bc:{eN}:what`, see
    /// [`shard_key`]), or `single` on one Redis.
    fn shard_keys(&self, what: &str, single: &str) -> Vec<String> {
        let Some(map) = self.shards() else {
            return vec![single.to_owned()];
        };
        let mut keys: Vec<String> = map
            .firsts
            .into_iter()
            .map(|(start, end)| shard_key(what, start, end))
            .collect();
        keys.sort();
        keys
    }

    /// The keys of the directory's epoch: `bc:epoch` on one Redis, one per shard on a Redis
    /// Cluster, so that a shard that lost its data is noticed like a whole Redis that did.
    fn epoch_keys(&self) -> Vec<String> {
        self.shard_keys("epoch", EPOCH)
    }

    /// The orphan index of every shard (`bc:orphans` on one Redis).
    fn orphan_index_keys(&self) -> Vec<String> {
        self.shard_keys("orphans", ORPHAN_INDEX)
    }

    /// The orphan index that lists `room`: its shard's on a Redis Cluster (`bc:{eN}:orphans`,
    /// beside the shard's epoch), so that rooms and their index are lost and swept together.
    fn orphan_index_of(&self, room: &RoomId) -> String {
        let Some(map) = self.shards() else {
            return ORPHAN_INDEX.to_owned();
        };
        let slot = fred::util::redis_keyslot(room_key(room, "room").as_bytes());
        map.ranges
            .into_iter()
            .find(|((start, end), _)| (*start..=*end).contains(&slot))
            .map_or_else(
                || ORPHAN_INDEX.to_owned(),
                |(_, (start, end))| shard_key("orphans", start, end),
            )
    }

    /// The epoch as one string from each of its keys' values (`None` when one is missing).
    fn joined_epoch(keys: &[String], values: &[Option<String>]) -> Option<String> {
        let mut parts = Vec::with_capacity(keys.len());
        for (key, value) in keys.iter().zip(values) {
            let value = value.as_deref()?;
            parts.push(if keys.len() == 1 {
                value.to_owned()
            } else {
                format!("{key}={value}")
            });
        }
        Some(parts.join(","))
    }

    /// `Directory::heartbeat`: renews `node`'s liveness (SET … GET: none when it had lapsed),
    /// reads the epoch (SET NX GET on each of its keys: drawing `fresh` where there is none)
    /// and adds the node to the node set.
    pub async fn heartbeat(&self, node: &NodeId, alive_ms: u64, fresh: &str) -> R<Beat> {
        let keys = self.epoch_keys();
        let pipe = self.client.pipeline();
        let queued: Result<(), fred::error::Error> = async {
            let () = pipe
                .set(
                    alive_key(node),
                    1,
                    Some(Expiration::PX(alive_ms as i64)),
                    None,
                    true,
                )
                .await?;
            for key in &keys {
                let () = pipe
                    .set(key.as_str(), fresh, None, Some(SetOptions::NX), true)
                    .await?;
            }
            let () = pipe.sadd(NODES, node.as_str()).await?;
            Ok(())
        }
        .await;
        queued.map_err(backend)?;
        let answers: Vec<Value> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let mut answers = answers.into_iter();
        let lapsed = matches!(answers.next(), Some(Value::Null) | None);
        let mut drew_epoch = false;
        let mut values = Vec::with_capacity(keys.len());
        for _ in &keys {
            values.push(match answers.next() {
                Some(Value::Null) | None => {
                    drew_epoch = true;
                    Some(fresh.to_owned())
                }
                Some(v) => Some(v.as_string().unwrap_or_else(|| fresh.to_owned())),
            });
        }
        let epoch = Self::joined_epoch(&keys, &values).unwrap_or_else(|| fresh.to_owned());
        let was_missing = answers.next().and_then(|v| v.as_u64()) == Some(1) || lapsed;
        Ok(Beat {
            epoch,
            was_missing,
            drew_epoch,
        })
    }

    /// `Directory::expire`: `node`'s liveness ends now.
    pub async fn expire(&self, node: &NodeId) -> R<()> {
        let _: i64 = self.cmd().del(alive_key(node)).await.map_err(backend)?;
        Ok(())
    }

    /// `Directory::mark_rebuilt`.
    pub async fn mark_rebuilt(&self, window_ms: u64) -> R<()> {
        let window = Expiration::PX(window_ms.max(1) as i64);
        let () = self
            .cmd()
            .set(REBUILT, 1, Some(window), None, false)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// `Directory::epoch`: the epoch, and whether the rebuild mark is on.
    pub async fn epoch(&self) -> R<(Option<String>, bool)> {
        let keys = self.epoch_keys();
        let pipe = self.client.pipeline();
        for key in &keys {
            let () = pipe.get(key.as_str()).await.map_err(backend)?;
        }
        let () = pipe.exists(REBUILT).await.map_err(backend)?;
        let mut answers: Vec<Value> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let marked = answers.pop().and_then(|v| v.as_u64()) == Some(1);
        let values: Vec<Option<String>> = answers.into_iter().map(|v| v.as_string()).collect();
        Ok((Self::joined_epoch(&keys, &values), marked))
    }

    /// `Directory::reap`: every other node whose liveness expired is reaped room by room (its
    /// seats become orphans, the room indexed by when they are due), then leaves the node
    /// set; then the rooms whose orphans are due are swept.
    pub async fn reap(&self, me: &NodeId, window_ms: u64) -> R<Reaped> {
        let mut out = Reaped::default();
        let mut nodes: Vec<String> = self.cmd().smembers(NODES).await.map_err(backend)?;
        nodes.sort();
        for node in nodes {
            let node = NodeId::new(node);
            if node == *me {
                continue;
            }
            let alive: bool = self.cmd().exists(alive_key(&node)).await.map_err(backend)?;
            if alive {
                continue;
            }
            let mut orphaned = 0;
            for room in self.node_rooms(&node).await? {
                let args = vec![room.to_string(), node.to_string(), window_ms.to_string()];
                let (n, until): (u64, i64) = self.eval(&REAP_ROOM, &room, args).await?;
                if n > 0 {
                    self.index_orphans(&room, until).await?;
                }
                orphaned += n;
            }
            // (A claim onto this node since then added it back: it is reaped again later.)
            let _: i64 = self
                .cmd()
                .del(node_rooms_key(&node))
                .await
                .map_err(backend)?;
            let _: i64 = self
                .cmd()
                .srem(NODES, node.as_str())
                .await
                .map_err(backend)?;
            out.nodes.push((node, orphaned));
        }
        // Redis's clock, which the scripts read.
        let time = fred::types::CustomCommand::new("TIME", fred::types::ClusterHash::Random, false);
        let t: Vec<String> = self
            .client
            .custom(time, Vec::<String>::new())
            .await
            .map_err(backend)?;
        let part = |i: usize| t.get(i).and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
        let now = part(0) * 1000 + part(1) / 1000;
        // Each shard's index on a Redis Cluster (one on one Redis).
        for index in self.orphan_index_keys() {
            let due: Vec<String> = self
                .cmd()
                .zrangebyscore(
                    index.as_str(),
                    "-inf",
                    now as f64,
                    false,
                    Some((0, SWEEP_BATCH)),
                )
                .await
                .map_err(backend)?;
            for room in due {
                let room = RoomId::new(room);
                let n: u64 = self
                    .eval(&SWEEP_ROOM, &room, vec![room.to_string()])
                    .await?;
                out.swept += n;
                // Removed, then indexed again by its next orphan if it has one: a reap of the
                // room that ran meanwhile is either before the removal (its orphan is seen
                // here) or after it (it indexed the room itself).
                let _: i64 = self
                    .cmd()
                    .zrem(index.as_str(), room.as_str())
                    .await
                    .map_err(backend)?;
                let next: Vec<(String, f64)> = self
                    .cmd()
                    .zrange(
                        room_key(&room, "orphans").as_str(),
                        0,
                        0,
                        None,
                        false,
                        None,
                        true,
                    )
                    .await
                    .map_err(backend)?;
                if let Some((_, until)) = next.first() {
                    self.index_orphans(&room, *until as i64).await?;
                }
            }
        }
        Ok(out)
    }

    /// Indexes `room` as having orphans due at `until` (or earlier, if so indexed already).
    async fn index_orphans(&self, room: &RoomId, until: i64) -> R<()> {
        let _: i64 = self
            .cmd()
            .zadd(
                self.orphan_index_of(room),
                None,
                Some(fred::types::sorted_sets::Ordering::LessThan),
                false,
                false,
                (until as f64, room.as_str()),
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// `Directory::snapshot`: a room's version and seats.
    pub async fn snapshot(&self, room: &RoomId) -> R<View> {
        let key = |part| room_key(room, part);
        let pipe = self.client.pipeline();
        let _: () = pipe.get(key("ver")).await.map_err(backend)?;
        let _: () = pipe.hgetall(key("peers")).await.map_err(backend)?;
        let _: () = pipe.hgetall(key("nodes")).await.map_err(backend)?;
        let all: Vec<Value> = tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)?;
        let mut all = all.into_iter();
        let ver = all.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let peers = all.next().unwrap_or(Value::Null);
        let nodes = all.next().unwrap_or(Value::Null);
        Ok(view(ver, seats(peers, nodes)))
    }

    /// The rooms `node` may have peers in.
    pub async fn node_rooms(&self, node: &NodeId) -> R<Vec<RoomId>> {
        let rooms: Vec<String> = self
            .cmd()
            .smembers(node_rooms_key(node))
            .await
            .map_err(backend)?;
        Ok(rooms.into_iter().map(RoomId::new).collect())
    }

    /// `Directory::recorded_on`: the seats recorded on `node`, by room.
    pub async fn recorded_on(&self, node: &NodeId) -> R<Vec<(RoomId, PeerId)>> {
        let mut out = Vec::new();
        let mut rooms = self.node_rooms(node).await?;
        rooms.sort();
        for room in rooms {
            let entries: HashMap<String, String> = self
                .cmd()
                .hgetall(&room_key(&room, "nodes"))
                .await
                .map_err(backend)?;
            let mut here: Vec<PeerId> = entries
                .into_iter()
                .filter(|(_, v)| v.split('\n').next() == Some(node.as_str()))
                .map(|(p, _)| PeerId::new(p))
                .collect();
            here.sort();
            out.extend(here.into_iter().map(|p| (room.clone(), p)));
        }
        Ok(out)
    }

    /// `Directory::prune_node_room`.
    pub async fn prune_node_room(&self, node: &NodeId, room: &RoomId) -> R<()> {
        let _: i64 = self
            .cmd()
            .srem(node_rooms_key(node), room.as_str())
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// How many seats each room has.
    pub async fn peer_counts(&self, rooms: &[RoomId]) -> R<Vec<u32>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = self.client.pipeline();
        for room in rooms {
            let _: () = pipe.hlen(&room_key(room, "nodes")).await.map_err(backend)?;
        }
        tokio::time::timeout(COMMAND_TIMEOUT, pipe.all())
            .await
            .map_err(backend)?
            .map_err(backend)
    }

    /// Moves what a BlueCam before the per-room key layout left in Redis: each room record
    /// (`bc:room:{id}`) is written where rooms are now (unless there is one), and the old
    /// membership keys (rooms' seats, sessions, node lists, tombstones) are deleted. Nodes of
    /// the old layout must all be stopped first: their peers rejoin as new peers. Returns how
    /// many rooms moved.
    pub async fn migrate_old_layout(&self) -> R<usize> {
        let mut moved = 0;
        for pattern in [
            "bc:room:*",
            "bc:session:*",
            "bc:gone:*",
            "bc:roomgone:*",
            "bc:node:*:peers",
        ] {
            for key in self.scan(pattern).await? {
                if let Some(id) = key.strip_prefix("bc:room:")
                    && !id.contains(':')
                {
                    let json: Option<String> = self.cmd().get(&key).await.map_err(backend)?;
                    if let Some(json) = json
                        && self.create_room(&RoomId::new(id), &json).await?
                    {
                        moved += 1;
                    }
                }
                let _: i64 = self.cmd().del(&key).await.map_err(backend)?;
            }
        }
        Ok(moved)
    }

    /// Every key matching `pattern` (`SCAN`).
    async fn scan(&self, pattern: &str) -> R<Vec<String>> {
        let mut out = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let scan =
                fred::types::CustomCommand::new("SCAN", fred::types::ClusterHash::Random, false);
            let args = vec![
                cursor.clone(),
                "MATCH".into(),
                pattern.into(),
                "COUNT".into(),
                "1000".into(),
            ];
            let (next, keys): (String, Vec<String>) =
                self.client.custom(scan, args).await.map_err(backend)?;
            out.extend(keys);
            if next == "0" {
                return Ok(out);
            }
            cursor = next;
        }
    }

    /// Everything lost (`FLUSHALL`), for tests of a Redis that lost its data.
    pub async fn wipe(&self) -> R<()> {
        let () = self.client.flushall(false).await.map_err(backend)?;
        Ok(())
    }

    /// The whole directory as the vectors compare it (`Directory::state`), read with `KEYS`:
    /// for tests on a Redis of their own.
    pub async fn state(&self) -> R<DirState> {
        let mut state = DirState::default();
        let keys: Vec<String> = self
            .client
            .custom(
                fred::types::CustomCommand::new("KEYS", fred::types::ClusterHash::Random, false),
                vec!["bc:*"],
            )
            .await
            .map_err(backend)?;
        let mut rooms = BTreeSet::new();
        for key in &keys {
            if let Some(rest) = key.strip_prefix("bc:{")
                && let Some((room, _)) = rest.split_once("}:")
            {
                rooms.insert(RoomId::new(room));
            }
            if let Some(rest) = key.strip_prefix("bc:node:{")
                && let Some(node) = rest.strip_suffix("}:rooms")
            {
                let node = NodeId::new(node);
                let rooms: BTreeSet<RoomId> = self.node_rooms(&node).await?.into_iter().collect();
                state.node_rooms.insert(node, rooms);
            }
        }
        for room in rooms {
            let k = |part| room_key(&room, part);
            let exists: bool = self.cmd().exists(k("room")).await.map_err(backend)?;
            let deleted: bool = self.cmd().exists(k("deleted")).await.map_err(backend)?;
            let ver: Option<u64> = self.cmd().get(k("ver")).await.map_err(backend)?;
            let peers: HashMap<String, String> =
                self.cmd().hgetall(k("peers")).await.map_err(backend)?;
            let nodes: HashMap<String, String> =
                self.cmd().hgetall(k("nodes")).await.map_err(backend)?;
            let sessions: HashMap<String, String> =
                self.cmd().hgetall(k("sessions")).await.map_err(backend)?;
            let gone: Vec<String> = self
                .cmd()
                .zrangebyscore(
                    k("gone"),
                    (crate::unix_now() * 1000) as f64,
                    "+inf",
                    false,
                    None,
                )
                .await
                .map_err(backend)?;
            let orphans: Vec<String> = self
                .cmd()
                .zrange(k("orphans"), 0, -1, None, false, None, false)
                .await
                .map_err(backend)?;
            let mut seats: Vec<Seat> = peers
                .into_iter()
                .filter_map(|(id, rec)| {
                    let rec: PeerRecord = serde_json::from_str(&rec).ok()?;
                    let (node, session) = nodes.get(&id)?.split_once('\n')?;
                    Some(Seat {
                        info: rec.info,
                        seq: rec.seq,
                        node: NodeId::new(node),
                        session: SessionId::new(session),
                    })
                })
                .collect();
            seats.sort_by(|a, b| a.info.id.cmp(&b.info.id));
            let dump = RoomDump {
                exists,
                deleted,
                ver: ver.unwrap_or(0),
                seats,
                sessions: sessions
                    .into_iter()
                    .filter_map(|(s, r)| Some((SessionId::new(s), serde_json::from_str(&r).ok()?)))
                    .collect::<BTreeMap<_, _>>(),
                gone: gone.into_iter().map(PeerId::new).collect(),
                orphans: orphans.into_iter().map(PeerId::new).collect(),
            };
            if dump != RoomDump::default() {
                state.rooms.insert(room, dump);
            }
        }
        let nodes: Vec<String> = self.cmd().smembers(NODES).await.map_err(backend)?;
        state.nodes = nodes.into_iter().map(NodeId::new).collect();
        for key in self.orphan_index_keys() {
            let index: Vec<String> = self
                .cmd()
                .zrange(key.as_str(), 0, -1, None, false, None, false)
                .await
                .map_err(backend)?;
            state
                .orphan_index
                .extend(index.into_iter().map(RoomId::new));
        }
        let (epoch, rebuilding) = self.epoch().await?;
        state.epoch = epoch.is_some();
        state.rebuilding = rebuilding;
        state.node_rooms.retain(|_, r| !r.is_empty());
        Ok(state)
    }
}

/// Reads a room's seats (`HGETALL peers`, `HGETALL nodes`), by peer id.
fn seats(peers: Value, nodes: Value) -> Vec<RemotePeer> {
    let nodes: HashMap<String, String> = nodes.convert().unwrap_or_default();
    let peers: HashMap<String, String> = peers.convert().unwrap_or_default();
    let mut out: Vec<RemotePeer> = peers
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
        .collect();
    out.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    out
}

/// A range of hash slots, first and last.
type SlotSpan = (u16, u16);

/// A Redis Cluster's shards, as fred's slot map has them.
struct ShardMap {
    /// Each shard's first slot range.
    firsts: Vec<SlotSpan>,
    /// Every slot range, with the first range of its shard.
    ranges: Vec<(SlotSpan, SlotSpan)>,
}

fn view(ver: u64, peers: Vec<RemotePeer>) -> View {
    View { ver, peers }
}

/// A shard's own key of `what` on a Redis Cluster: `bc:{eN}:what`, `N` the smallest number
/// whose tag lands in the shard's first slot range `start..=end` (a third of the slots of a
/// three-shard cluster: found within a few tries), so every node picks the same key, and a
/// shard's keys share one tag.
fn shard_key(what: &str, start: u16, end: u16) -> String {
    (0u32..)
        .map(|n| format!("{{e{n}}}"))
        .find(|tag| (start..=end).contains(&fred::util::redis_keyslot(tag.as_bytes())))
        .map_or_else(|| format!("bc:{what}"), |tag| format!("bc:{tag}:{what}"))
}
