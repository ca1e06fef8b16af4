//! The directory's Lua scripts: the translation of the model `bluecam_core::directory` (the
//! specification, tested against these through `tests/vectors/directory.json`). One shared
//! prelude of functions and one script per operation, built and hashed once in two forms
//! (one Redis: the script publishes what it emits; a Redis Cluster: it answers it, see
//! [`Scripts`]), called by SHA.
//!
//! Every script touches the keys of one room only, all declared (`KEYS`, in the order of
//! [`room_keys`]) and all carrying the room as a hash tag, so each runs in one slot. What
//! spans rooms or is global (the node set, a node's rooms, the orphan index, the room list,
//! the rebuild mark) is written by [`super::ops`] around the scripts.

use super::*;

/// The parts of a room's keys, in the order every script declares them (`KEYS[1]`…).
const ROOM_KEYS: [&str; 9] = [
    "room", "peers", "nodes", "ver", "active", "sessions", "gone", "orphans", "deleted",
];

/// One key of a room (`part` one of [`ROOM_KEYS`]).
pub(super) fn room_key(room: &RoomId, part: &str) -> String {
    debug_assert!(ROOM_KEYS.contains(&part), "no room key {part}");
    format!("bc:{{{room}}}:{part}")
}

/// The keys of a room, in the order every script declares them.
pub(super) fn room_keys(room: &RoomId) -> Vec<String> {
    ROOM_KEYS.iter().map(|k| room_key(room, k)).collect()
}

/// Functions every directory script shares (each script is this prelude plus its body, built
/// once): each step of the model is written once.
const PRELUDE: &str = r#"
local K = {room = KEYS[1], peers = KEYS[2], nodes = KEYS[3], ver = KEYS[4], active = KEYS[5],
  sessions = KEYS[6], gone = KEYS[7], orphans = KEYS[8], deleted = KEYS[9]}
local TOMBSTONE_MS = 3600000
-- Messages to nodes, in order: node, message, node, message… (sent by `done`).
local OUT = {}
local function emit(n, msg)
  table.insert(OUT, n)
  table.insert(OUT, msg)
end
-- Publishes msg once to every node with a seat in the room, but those already in told (a set
-- of node ids, updated).
local function tell_room(msg, told)
  for _, v in ipairs(redis.call('HVALS', K.nodes)) do
    local n = string.match(v, '^([^\n]*)')
    if not told[n] then told[n] = true; emit(n, msg) end
  end
end
-- The node and session of a `nodes` entry ("node\nsession").
local function entry(cur)
  return string.match(cur, '^([^\n]*)\n(.*)$')
end
-- Whether a sorts before b byte by byte (as Rust orders strings).
local function bytewise(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function room_json()
  return cjson.encode(ARGV[1])
end
-- Seats peer on node with record rec and its session.
local function seat(peer, node, rec, sess, sess_json)
  redis.call('HSET', K.peers, peer, rec)
  redis.call('HSET', K.nodes, peer, node .. '\n' .. sess)
  redis.call('HSET', K.sessions, sess, sess_json)
end
-- Announces to the room's other nodes that peer joined on node with record rec.
local function announce_joined(ver, node, rec)
  tell_room('{"t":"joined","room":' .. room_json() .. ',"ver":' .. ver .. ',"node":' ..
    cjson.encode(node) .. ',"rec":' .. rec .. '}', {[node] = true})
end
-- Moves peer (session sess, on node old) to node and announces it to the room's nodes, old
-- included; returns the new version.
local function move(peer, sess, old, node)
  redis.call('HSET', K.nodes, peer, node .. '\n' .. sess)
  redis.call('ZREM', K.orphans, peer)
  local ver = redis.call('INCR', K.ver)
  local msg = '{"t":"moved","room":' .. room_json() .. ',"ver":' .. ver .. ',"node":' ..
    cjson.encode(node) .. ',"rec":' .. redis.call('HGET', K.peers, peer) .. '}'
  local told = {[node] = true}
  tell_room(msg, told)
  if not told[old] then emit(old, msg) end
  return ver
end
-- Removes peer (session sess), keeping its tombstone, and announces `left` with reason to the
-- room's nodes but node; returns the message.
local function remove(peer, sess, node, reason)
  local now = now_ms()
  redis.call('ZREMRANGEBYSCORE', K.gone, '-inf', now)
  redis.call('ZADD', K.gone, now + TOMBSTONE_MS, peer)
  redis.call('PEXPIRE', K.gone, TOMBSTONE_MS)
  redis.call('ZREM', K.orphans, peer)
  redis.call('HDEL', K.peers, peer)
  redis.call('HDEL', K.nodes, peer)
  redis.call('HDEL', K.sessions, sess)
  if redis.call('HLEN', K.nodes) == 0 then
    redis.call('SET', K.active, redis.call('TIME')[1], 'XX')
  end
  local ver = redis.call('INCR', K.ver)
  local msg = '{"t":"left","room":' .. room_json() .. ',"ver":' .. ver .. ',"peer":' ..
    cjson.encode(peer) .. ',"reason":' .. cjson.encode(reason) .. '}'
  tell_room(msg, {[node] = true})
  return msg
end
"#;

/// How a script ends on one Redis: it publishes what it emitted to the nodes' channels
/// (`PUBLISH`, in the same atomic step) and answers.
const DONE_INLINE: &str = r#"
local function done(x)
  for i = 1, #OUT, 2 do redis.call('PUBLISH', 'bc:n:' .. OUT[i], OUT[i + 1]) end
  return x
end
"#;

/// How a script ends on a Redis Cluster: it answers with what it emitted, which the node
/// publishes (`SPUBLISH` to each node's channel, on that channel's shard: a script may only
/// touch its room's slot), before anything else it sends.
const DONE_SHARDED: &str = r#"
local function done(x)
  return {x, OUT}
end
"#;

/// A directory script, built and hashed once in each form, called by SHA.
pub(super) struct Scripts {
    /// For one Redis: publishes its messages itself.
    pub(super) inline: fred::types::scripts::Script,
    /// For a Redis Cluster: answers `{answer, messages}`.
    pub(super) sharded: fred::types::scripts::Script,
}

/// A directory script (see [`Scripts`]).
pub(super) type Script = LazyLock<Scripts>;

fn script(body: &str) -> Scripts {
    let with =
        |done: &str| fred::types::scripts::Script::from_lua(PRELUDE.to_owned() + done + body);
    Scripts {
        inline: with(DONE_INLINE),
        sharded: with(DONE_SHARDED),
    }
}

/// Writes a room's record unless there is one: the room exists, and is no tombstone.
/// ARGV: room, record JSON, now (Unix seconds). Returns 1 when written.
pub(super) static CREATE_ROOM: Script = LazyLock::new(|| {
    script(
        r#"
if redis.call('SET', K.room, ARGV[2], 'NX') == false then return done(0) end
redis.call('DEL', K.deleted)
redis.call('SET', K.active, ARGV[3])
return done(1)
"#,
    )
});

/// `Directory::join`. ARGV: room, peer, node, info JSON, session, session JSON, max peers,
/// multiple sessions ("1": several per identity). The rule is `directory::admit`'s.
pub(super) static JOIN: Script = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', K.room) == 0 then return done({'gone'}) end
local replaced, others = {}, redis.call('HLEN', K.nodes) - redis.call('HEXISTS', K.nodes, ARGV[2])
if ARGV[8] ~= '1' then
  -- One seat per identity: the identity's other seats are taken over, not counted.
  local identity = cjson.decode(ARGV[4]).identity
  local all = redis.call('HGETALL', K.peers)
  for i = 1, #all, 2 do
    if all[i] ~= ARGV[2] and cjson.decode(all[i + 1]).info.identity == identity then
      table.insert(replaced, all[i])
    end
  end
  others = others - #replaced
end
if others >= tonumber(ARGV[7]) then return done({'full'}) end
-- In the model's order (bytes, as Rust compares strings; Lua's `<` follows the locale).
table.sort(replaced, bytewise)
for _, peer in ipairs(replaced) do
  local cur = redis.call('HGET', K.nodes, peer)
  if cur then
    local old, sess = entry(cur)
    local msg = remove(peer, sess, ARGV[3], 'replaced')
    local still = false
    for _, v in ipairs(redis.call('HVALS', K.nodes)) do
      if entry(v) == old then still = true; break end
    end
    if old ~= ARGV[3] and not still then emit(old, msg) end
  end
end
local ver = redis.call('INCR', K.ver)
local rec = '{"info":' .. ARGV[4] .. ',"seq":' .. ver .. '}'
seat(ARGV[2], ARGV[3], rec, ARGV[5], ARGV[6])
announce_joined(ver, ARGV[3], rec)
return done({'ok', ver, redis.call('HGETALL', K.peers), redis.call('HGETALL', K.nodes), replaced})
"#,
    )
});

/// `Directory::claim` (but for the rebuild mark, which is global: a session that is not
/// there answers `missing`, and the caller checks the mark).
/// ARGV: room, session, secret, node, identity.
pub(super) static CLAIM: Script = LazyLock::new(|| {
    script(
        r#"
local s = redis.call('HGET', K.sessions, ARGV[2])
if not s then return done({'missing'}) end
local sess = cjson.decode(s)
if sess.secret ~= ARGV[3] then return done({'expired'}) end
if sess.identity ~= ARGV[5] then return done({'unauthorized'}) end
local cur = redis.call('HGET', K.nodes, sess.peer)
if not cur or not redis.call('HGET', K.peers, sess.peer) then return done({'expired'}) end
local old = entry(cur)
-- Recorded on this very node: it holds it, will once its own claim is handled, or it expired
-- there a moment ago (the node knows which).
if old == ARGV[4] then return done({'here'}) end
local ver = move(sess.peer, ARGV[2], old, ARGV[4])
return done({'ok', ver, s, redis.call('HGETALL', K.peers), redis.call('HGETALL', K.nodes)})
"#,
    )
});

/// `Directory::leave`. ARGV: room, peer, node, reason.
pub(super) static LEAVE: Script = LazyLock::new(|| {
    script(
        r#"
local cur = redis.call('HGET', K.nodes, ARGV[2])
if not cur then return done(0) end
local n0, sess = entry(cur)
-- (An orphan of this node, reaped while it was cut off, goes too: the node knows it is gone.)
if n0 ~= ARGV[3] and n0 ~= '~' then return done(0) end
remove(ARGV[2], sess, ARGV[3], ARGV[4])
return done(1)
"#,
    )
});

/// The part of `Directory::reap` in one room: the seats of a dead node become orphans (node
/// `~`) until the resume window ends; nothing is published. ARGV: room, node, window in ms.
/// Returns how many, and until when.
pub(super) static REAP_ROOM: Script = LazyLock::new(|| {
    script(
        r#"
local until_ms = now_ms() + tonumber(ARGV[3])
local orphaned = 0
local all = redis.call('HGETALL', K.nodes)
for i = 1, #all, 2 do
  local n0, sess = entry(all[i + 1])
  if n0 == ARGV[2] then
    redis.call('HSET', K.nodes, all[i], '~\n' .. sess)
    redis.call('ZADD', K.orphans, until_ms, all[i])
    orphaned = orphaned + 1
  end
end
return done({orphaned, until_ms})
"#,
    )
});

/// The part of `Directory::reap` in one room: its orphans whose resume window has passed
/// leave (reason timeout), announced to the room's nodes. ARGV: room. Returns how many.
pub(super) static SWEEP_ROOM: Script = LazyLock::new(|| {
    script(
        r#"
local removed = 0
for _, peer in ipairs(redis.call('ZRANGEBYSCORE', K.orphans, '-inf', now_ms())) do
  redis.call('ZREM', K.orphans, peer)
  local cur = redis.call('HGET', K.nodes, peer)
  if cur then
    local n0, sess = entry(cur)
    if n0 == '~' then
      remove(peer, sess, '~', 'timeout')
      removed = removed + 1
    end
  end
end
return done(removed)
"#,
    )
});

/// `Directory::register`. ARGV as `JOIN` (the seventh empty), then seq and the version the
/// node has seen. Answers `gone`, `left`, `moved` (and the node), `ok` (present) or `added`.
pub(super) static REGISTER: Script = LazyLock::new(|| {
    script(
        r#"
if redis.call('EXISTS', K.room) == 0 then return done({'gone'}) end
local t = redis.call('ZSCORE', K.gone, ARGV[2])
if t and tonumber(t) > now_ms() then return done({'left'}) end
-- The room's version never goes below what this node has seen (Redis lost its last writes):
-- a snapshot read after this is never older than the node's replica.
local v = tonumber(redis.call('GET', K.ver) or '0')
if v < tonumber(ARGV[9]) then redis.call('SET', K.ver, ARGV[9]) end
local cur = redis.call('HGET', K.nodes, ARGV[2])
if cur then
  local n = entry(cur)
  if n == '~' then
    -- Orphaned while this node was cut off, and not resumed elsewhere: it is here again.
    move(ARGV[2], ARGV[5], '~', ARGV[3])
    return done({'ok'})
  end
  if n ~= ARGV[3] then return done({'moved', n}) end
  return done({'ok'})
end
local ver = redis.call('INCR', K.ver)
local rec = '{"info":' .. ARGV[4] .. ',"seq":' .. ARGV[8] .. '}'
seat(ARGV[2], ARGV[3], rec, ARGV[5], ARGV[6])
announce_joined(ver, ARGV[3], rec)
return done({'added'})
"#,
    )
});

/// `Directory::raise_version`. ARGV: room, version.
pub(super) static RAISE_VERSION: Script = LazyLock::new(|| {
    script(
        r#"
local v = tonumber(redis.call('GET', K.ver) or '0')
if v < tonumber(ARGV[2]) then redis.call('SET', K.ver, ARGV[2]) end
return done(1)
"#,
    )
});

/// `Directory::delete_room`. ARGV: room, reason, this node, and 'empty' to delete it only if
/// no peer is in it (checked in the same step, so a join cannot slip in). Returns 0 when
/// nothing was deleted.
pub(super) static DELETE_ROOM: Script = LazyLock::new(|| {
    script(
        r#"
if ARGV[4] == 'empty' and redis.call('HLEN', K.nodes) > 0 then return done(0) end
if redis.call('EXISTS', K.room) == 0 then return done(0) end
tell_room('{"t":"closed","room":' .. room_json() .. ',"reason":' .. cjson.encode(ARGV[2]) .. '}',
  {[ARGV[3]] = true})
redis.call('DEL', K.room, K.peers, K.nodes, K.ver, K.active, K.sessions, K.gone, K.orphans)
-- A tombstone: a durable copy of the room (PostgreSQL) being deleted is not put back.
redis.call('SET', K.deleted, 1, 'PX', TOMBSTONE_MS)
return done(1)
"#,
    )
});

/// The arguments `JOIN` and `REGISTER` share (their first seven): the peer as the directory
/// records it, with its session record, built once.
pub(super) fn peer_args(
    room: &RoomId,
    node: &NodeId,
    peer: &PeerEntry,
    max_peers: Option<u32>,
) -> Vec<String> {
    vec![
        room.to_string(),
        peer.info.id.to_string(),
        node.to_string(),
        serde_json::to_string(&peer.info).unwrap_or_default(),
        peer.session.to_string(),
        serde_json::to_string(&peer.record(room)).unwrap_or_default(),
        max_peers.map(|n| n.to_string()).unwrap_or_default(),
    ]
}

/// A script's answer: its tag, and what followed it.
pub(super) fn tagged(answer: Vec<Value>) -> (String, std::vec::IntoIter<Value>) {
    let mut values = answer.into_iter();
    let tag = values
        .next()
        .and_then(|v| v.as_string())
        .unwrap_or_default();
    (tag, values)
}
