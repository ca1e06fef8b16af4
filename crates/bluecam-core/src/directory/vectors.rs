//! The directory as the shared vectors (`tests/vectors/directory.json`) drive it: one
//! operation ([`Op`]) in, its answer ([`Answer`]) out, and the state ([`DirState`]) compared
//! after each case. The server's tests run the Redis scripts against the same file.

use super::*;

/// The directory's state as the vectors compare it (times left out: the scripts read Redis's
/// clock).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DirState {
    pub rooms: BTreeMap<RoomId, RoomDump>,
    pub nodes: BTreeSet<NodeId>,
    pub node_rooms: BTreeMap<NodeId, BTreeSet<RoomId>>,
    pub orphan_index: BTreeSet<RoomId>,
    pub epoch: bool,
    pub rebuilding: bool,
}

/// One room of a [`DirState`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomDump {
    pub exists: bool,
    pub deleted: bool,
    pub ver: u64,
    pub seats: Vec<Seat>,
    pub sessions: BTreeMap<SessionId, SessionRecord>,
    pub gone: BTreeSet<PeerId>,
    pub orphans: BTreeSet<PeerId>,
}

/// One directory operation, as the shared vectors (`tests/vectors/directory.json`) write it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateRoom {
        room: RoomId,
    },
    Join {
        room: RoomId,
        node: NodeId,
        peer: PeerEntry,
        max_peers: u32,
        #[serde(default)]
        multiple_sessions: bool,
    },
    Claim {
        room: RoomId,
        node: NodeId,
        identity: Identity,
        session: SessionId,
        secret: SessionSecret,
    },
    Leave {
        room: RoomId,
        peer: PeerId,
        node: NodeId,
        reason: LeaveReason,
    },
    Register {
        room: RoomId,
        node: NodeId,
        peer: PeerEntry,
        seq: u64,
        seen_ver: u64,
    },
    RaiseVersion {
        room: RoomId,
        ver: u64,
    },
    DeleteRoom {
        room: RoomId,
        reason: RoomClosedReason,
        node: NodeId,
        #[serde(default)]
        only_if_empty: bool,
    },
    Heartbeat {
        node: NodeId,
        alive_ms: u64,
        fresh: String,
    },
    /// A node's liveness expires.
    Expire {
        node: NodeId,
    },
    MarkRebuilt {
        window_ms: u64,
    },
    Reap {
        node: NodeId,
        window_ms: u64,
    },
    Snapshot {
        room: RoomId,
    },
    RecordedOn {
        node: NodeId,
    },
    PruneNodeRoom {
        node: NodeId,
        room: RoomId,
    },
    /// Everything is lost (Redis restarted without its data).
    Wipe,
}

/// Published messages as the vectors write them: `{node, msg}` with the message parsed, sorted
/// (the scripts publish in the order of a Redis hash).
pub fn published_json(list: Vec<Publish>) -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = list
        .into_iter()
        .map(|p| {
            let msg = serde_json::from_str::<serde_json::Value>(&p.text)
                .unwrap_or(serde_json::Value::String(p.text));
            serde_json::json!({ "node": p.node, "msg": msg })
        })
        .collect();
    out.sort_by_key(|v| v.to_string());
    out
}

/// What an operation answered, shaped as the vectors write it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Join(JoinReply),
    Claim(ClaimReply),
    Register(RegisterReply),
    Created {
        created: bool,
    },
    Removed {
        removed: bool,
    },
    Deleted {
        deleted: bool,
    },
    Beat {
        epoch: String,
        was_missing: bool,
        drew_epoch: bool,
    },
    Reaped(Reaped),
    View(View),
    Recorded(Vec<(RoomId, PeerId)>),
    Done {},
}

impl From<Beat> for Answer {
    fn from(b: Beat) -> Self {
        Self::Beat {
            epoch: b.epoch,
            was_missing: b.was_missing,
            drew_epoch: b.drew_epoch,
        }
    }
}

impl Directory {
    /// Runs one operation.
    pub fn apply(&mut self, op: &Op, now: u64) -> Answer {
        match op {
            Op::CreateRoom { room } => Answer::Created {
                created: self.create_room(room),
            },
            Op::Join {
                room,
                node,
                peer,
                max_peers,
                multiple_sessions,
            } => Answer::Join(self.join(room, node, peer, *max_peers, *multiple_sessions, now)),
            Op::Claim {
                room,
                node,
                identity,
                session,
                secret,
            } => Answer::Claim(self.claim(room, node, identity, session, secret, now)),
            Op::Leave {
                room,
                peer,
                node,
                reason,
            } => Answer::Removed {
                removed: self.leave(room, peer, node, *reason, now),
            },
            Op::Register {
                room,
                node,
                peer,
                seq,
                seen_ver,
            } => Answer::Register(self.register(room, node, peer, *seq, *seen_ver, now)),
            Op::RaiseVersion { room, ver } => {
                self.raise_version(room, *ver);
                Answer::Done {}
            }
            Op::DeleteRoom {
                room,
                reason,
                node,
                only_if_empty,
            } => Answer::Deleted {
                deleted: self.delete_room(room, *reason, node, *only_if_empty, now),
            },
            Op::Heartbeat {
                node,
                alive_ms,
                fresh,
            } => self.heartbeat(node, *alive_ms, fresh, now).into(),
            Op::Expire { node } => {
                self.expire(node);
                Answer::Done {}
            }
            Op::MarkRebuilt { window_ms } => {
                self.mark_rebuilt(*window_ms, now);
                Answer::Done {}
            }
            Op::Reap { node, window_ms } => Answer::Reaped(self.reap(node, *window_ms, now)),
            Op::Snapshot { room } => Answer::View(self.snapshot(room)),
            Op::RecordedOn { node } => Answer::Recorded(self.recorded_on(node)),
            Op::PruneNodeRoom { node, room } => {
                self.prune_node_room(node, room);
                Answer::Done {}
            }
            Op::Wipe => {
                self.wipe();
                Answer::Done {}
            }
        }
    }
}
