//! The directory's Lua scripts (one shared prelude of functions and one script per
//! operation, built and hashed once, called by SHA), the arguments they share, and their
//! answers read as a typed [`DirReply`].

use super::*;

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
pub(super) type Script = LazyLock<fred::types::scripts::Script>;

fn script(body: &str) -> fred::types::scripts::Script {
    fred::types::scripts::Script::from_lua(PRELUDE.to_owned() + body)
}

/// A join: refuses a full or deleted room, records the peer, publishes `joined` to the other
/// nodes of the room. ARGV: room, peer, node, info JSON, session, session JSON, max peers.
pub(super) static JOIN: Script = LazyLock::new(|| {
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
pub(super) static CLAIM: Script = LazyLock::new(|| {
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
pub(super) static LEAVE: Script = LazyLock::new(|| {
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
pub(super) static REAP: Script = LazyLock::new(|| {
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
pub(super) static SWEEP_ORPHANS: Script = LazyLock::new(|| {
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
pub(super) static REGISTER: Script = LazyLock::new(|| {
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
pub(super) static RAISE_VERSION: Script = LazyLock::new(|| {
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
pub(super) static DELETE_ROOM: Script = LazyLock::new(|| {
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

/// The arguments `JOIN` and `REGISTER` share (their first seven): the peer as the directory
/// records it, with its session record (what a resume on another node needs), built once.
pub(super) struct PeerArgs<'a> {
    pub(super) room: &'a RoomId,
    pub(super) info: &'a bluecam_proto::PeerInfo,
    pub(super) session: &'a bluecam_proto::SessionId,
    pub(super) secret: &'a SessionSecret,
    pub(super) permissions: Permissions,
    /// Seats of the room (`JOIN`); none for `REGISTER`, which puts back a peer that had one.
    pub(super) max_peers: Option<u32>,
}

impl PeerArgs<'_> {
    pub(super) fn build(&self, node: &NodeId) -> Vec<String> {
        let record = SessionRecord {
            room: self.room.clone(),
            peer: self.info.id.clone(),
            identity: self.info.identity.clone(),
            secret: self.secret.clone(),
            permissions: self.permissions,
        };
        vec![
            self.room.to_string(),
            self.info.id.to_string(),
            node.to_string(),
            serde_json::to_string(self.info).unwrap_or_default(),
            self.session.to_string(),
            serde_json::to_string(&record).unwrap_or_default(),
            self.max_peers.map(|n| n.to_string()).unwrap_or_default(),
        ]
    }
}

/// The answer of a directory script, its tag read in one place: what the operation did.
#[derive(Debug)]
pub(super) enum DirReply {
    /// Done (`JOIN`, `CLAIM`, `REGISTER`), with what followed the tag.
    Ok(Vec<Value>),
    /// The room is full (`JOIN`).
    RoomFull,
    /// The room was deleted (`JOIN`, `REGISTER`).
    RoomGone,
    /// No such session, or not this secret (`CLAIM`).
    Expired,
    /// The session belongs to another room or identity (`CLAIM`).
    Unauthorized,
    /// Redis lost its data a moment ago: what it lacks may come back (`CLAIM`).
    Rebuilding,
    /// The peer left for good meanwhile: its tombstone (`REGISTER`).
    Left,
    /// The peer is on another node now (`REGISTER`).
    Moved,
    /// The peer was put back (`REGISTER`).
    Added,
}

impl DirReply {
    /// Reads a script's answer: a tag, then what goes with it.
    pub(super) fn read(answer: Vec<Value>, script: &str) -> Result<Self, BrokerError> {
        let mut values = answer.into_iter();
        let tag = values.next().and_then(|v| v.as_string());
        Ok(match tag.as_deref() {
            Some("ok") => Self::Ok(values.collect()),
            Some("full") => Self::RoomFull,
            Some("gone") => Self::RoomGone,
            Some("expired") => Self::Expired,
            Some("unauthorized") => Self::Unauthorized,
            Some("rebuilding") => Self::Rebuilding,
            Some("left") => Self::Left,
            Some("moved") => Self::Moved,
            Some("added") => Self::Added,
            other => return Err(backend(format!("unexpected {script} answer {other:?}"))),
        })
    }
}
