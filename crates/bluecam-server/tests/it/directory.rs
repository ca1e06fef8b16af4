//! The Redis scripts against the directory model (`bluecam_core::directory`), on a real
//! Redis: the shared vectors `tests/vectors/directory.json` (what the model answers, publishes
//! and leaves behind, step by step), then random sequences of operations run on both side by
//! side, compared after every step. One Redis for the file.

use crate::cluster::Redis;
use bluecam_core::directory::{
    Answer, Directory, Op, PeerEntry, Publish, published_json as normalise,
};
use bluecam_proto::{
    Identity, LeaveReason, NodeId, PeerId, PeerInfo, RoomClosedReason, RoomId, SessionId,
    SessionSecret,
};
use bluecam_server::directory::redis::RedisDirectory;
use fred::prelude::{ClientLike as _, EventInterface as _, PubsubInterface as _};
use serde_json::Value;
use std::time::Duration;

/// The Redis and what listens on every node's channel.
struct Bench {
    _redis: Redis,
    dir: RedisDirectory,
    publisher: fred::clients::Client,
    messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
    _subscriber: fred::clients::SubscriberClient,
}

const MARK: &str = "bc:n:mark:end-of-step";

impl Bench {
    async fn start() -> Self {
        let redis = Redis::start();
        let url = redis.url();
        let dir = RedisDirectory::connect(&url).await.unwrap();
        let config = fred::types::config::Config::from_url(&url).unwrap();
        let subscriber = fred::types::Builder::from_config(config.clone())
            .build_subscriber_client()
            .unwrap();
        subscriber.init().await.unwrap();
        let messages = subscriber.message_rx();
        subscriber.psubscribe("bc:n:*").await.unwrap();
        let publisher = fred::types::Builder::from_config(config).build().unwrap();
        publisher.init().await.unwrap();
        Self {
            _redis: redis,
            dir,
            publisher,
            messages,
            _subscriber: subscriber,
        }
    }

    /// Everything published since the last call (up to a marker published now), as the
    /// vectors write it.
    async fn published(&mut self) -> Vec<Value> {
        let _: i64 = self.publisher.publish(MARK, "mark").await.unwrap();
        let mut out = Vec::new();
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.messages.recv())
                .await
                .expect("the step's messages")
                .unwrap();
            if *msg.channel == *MARK {
                break;
            }
            let node = msg.channel.strip_prefix("bc:n:").unwrap().to_owned();
            out.push(Publish {
                node: NodeId::new(node),
                text: msg.value.as_string().unwrap(),
            });
        }
        normalise(out)
    }

    /// Runs one operation on Redis, answering as the model does.
    async fn apply(&self, op: &Op) -> Answer {
        let d = &self.dir;
        match op {
            Op::CreateRoom { room } => Answer::Created {
                created: d
                    .create_room(room, r#"{"made":"by the test"}"#)
                    .await
                    .unwrap(),
            },
            Op::Join {
                room,
                node,
                peer,
                max_peers,
                multiple_sessions,
            } => Answer::Join(
                d.join(room, node, peer, *max_peers, *multiple_sessions)
                    .await
                    .unwrap(),
            ),
            Op::Claim {
                room,
                node,
                identity,
                session,
                secret,
            } => Answer::Claim(
                d.claim(room, node, identity, session, secret)
                    .await
                    .unwrap(),
            ),
            Op::Leave {
                room,
                peer,
                node,
                reason,
            } => Answer::Removed {
                removed: d.leave(room, peer, node, *reason).await.unwrap(),
            },
            Op::Register {
                room,
                node,
                peer,
                seq,
                seen_ver,
            } => Answer::Register(d.register(room, node, peer, *seq, *seen_ver).await.unwrap()),
            Op::RaiseVersion { room, ver } => {
                d.raise_version(room, *ver).await.unwrap();
                Answer::Done {}
            }
            Op::DeleteRoom {
                room,
                reason,
                node,
                only_if_empty,
            } => Answer::Deleted {
                deleted: d
                    .delete_room(room, *reason, node, *only_if_empty)
                    .await
                    .unwrap(),
            },
            Op::Heartbeat {
                node,
                alive_ms,
                fresh,
            } => d.heartbeat(node, *alive_ms, fresh).await.unwrap().into(),
            Op::Expire { node } => {
                d.expire(node).await.unwrap();
                Answer::Done {}
            }
            Op::MarkRebuilt { window_ms } => {
                d.mark_rebuilt(*window_ms).await.unwrap();
                Answer::Done {}
            }
            Op::Reap { node, window_ms } => Answer::Reaped(d.reap(node, *window_ms).await.unwrap()),
            Op::Snapshot { room } => Answer::View(d.snapshot(room).await.unwrap()),
            Op::RecordedOn { node } => Answer::Recorded(d.recorded_on(node).await.unwrap()),
            Op::PruneNodeRoom { node, room } => {
                d.prune_node_room(node, room).await.unwrap();
                Answer::Done {}
            }
            Op::Wipe => {
                d.wipe().await.unwrap();
                Answer::Done {}
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    steps: Vec<Step>,
    state: bluecam_core::directory::DirState,
}

#[derive(serde::Deserialize)]
struct Step {
    op: Op,
    answer: Value,
    published: Vec<Value>,
}

#[tokio::test]
async fn the_redis_scripts_answer_as_the_model_does() {
    let mut bench = Bench::start().await;

    // The shared vectors.
    // (The crate's directory as the test runner says it is now, not as it was at build time: a
    // binary built in another clone sharing the target directory would look there.)
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let path: std::path::PathBuf = [
        dir.as_str(),
        "..",
        "..",
        "tests",
        "vectors",
        "directory.json",
    ]
    .iter()
    .collect();
    let vectors: Vectors = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for case in &vectors.cases {
        bench.dir.wipe().await.unwrap();
        // Redis forgets its scripts too (as after a restart): the first of each case is
        // loaded again on `NOSCRIPT`.
        let flush =
            fred::types::CustomCommand::new("SCRIPT", fred::types::ClusterHash::Random, false);
        let _: String = bench.publisher.custom(flush, vec!["FLUSH"]).await.unwrap();
        for (i, step) in case.steps.iter().enumerate() {
            let answer = serde_json::to_value(bench.apply(&step.op).await).unwrap();
            let what = format!("{} step {i} ({:?})", case.name, step.op);
            assert_eq!(answer, step.answer, "answer of {what}");
            assert_eq!(
                bench.published().await,
                step.published,
                "published by {what}"
            );
        }
        assert_eq!(
            bench.dir.state().await.unwrap(),
            case.state,
            "state after {}",
            case.name
        );
    }

    // Random sequences, side by side with the model.
    let seeds: Vec<u64> = match std::env::var("BLUECAM_DIRECTORY_SEEDS") {
        Ok(s) => s.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => vec![1, 2, 3, 4],
    };
    for seed in seeds {
        bench.dir.wipe().await.unwrap();
        let mut model = Directory::new();
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut trace = Vec::new();
        for i in 0..250 {
            let op = random_op(&mut rng);
            trace.push(format!("{op:?}"));
            let now = 1_000_000 + i;
            let want = model.apply(&op, now);
            let got = bench.apply(&op).await;
            let context = || format!("seed {seed}, step {i}; ops so far:\n{}", trace.join("\n"));
            assert_eq!(got, want, "answer differs: {}", context());
            let sent = bench.published().await;
            assert_eq!(
                sent,
                normalise(model.take_published()),
                "published: {}",
                context()
            );
            assert_eq!(
                bench.dir.state().await.unwrap(),
                model.state(now),
                "state: {}",
                context()
            );
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick(&mut self, prefix: &str, n: u64) -> String {
        format!("{prefix}{}", self.below(n) + 1)
    }
}

/// Three rooms, three nodes, six peers (each with its session): small enough that operations
/// collide often.
fn random_op(rng: &mut Rng) -> Op {
    let room = RoomId::new(rng.pick("r", 3));
    let node = NodeId::new(rng.pick("n", 3));
    let p = rng.pick("p", 6);
    let entry = PeerEntry {
        info: PeerInfo {
            id: PeerId::new(p.as_str()),
            // Two peers per identity (p1 and p4, …): a join may take over the other's seat.
            identity: Identity::new(format!("user-{}", p[1..].parse::<u64>().unwrap_or(0) % 3)),
            name: None,
            metadata: None,
        },
        session: SessionId::new(format!("s-{p}")),
        secret: SessionSecret::new(format!("secret-{p}")),
        permissions: Default::default(),
    };
    match rng.below(100) {
        0..=7 => Op::CreateRoom { room },
        8..=29 => Op::Join {
            room,
            node,
            peer: entry,
            max_peers: 1 + rng.below(4) as u32,
            multiple_sessions: rng.below(4) == 0,
        },
        30..=44 => Op::Claim {
            room,
            node,
            identity: if rng.below(10) == 0 {
                Identity::new("mallory")
            } else {
                entry.info.identity
            },
            session: entry.session,
            secret: if rng.below(10) == 0 {
                SessionSecret::new("wrong")
            } else {
                entry.secret
            },
        },
        45..=56 => Op::Leave {
            room,
            peer: entry.info.id,
            node: if rng.below(5) == 0 {
                NodeId::new("~")
            } else {
                node
            },
            reason: [LeaveReason::Left, LeaveReason::Timeout][rng.below(2) as usize],
        },
        57..=66 => Op::Register {
            room,
            node,
            peer: entry,
            seq: rng.below(20),
            seen_ver: rng.below(20),
        },
        67..=68 => Op::RaiseVersion {
            room,
            ver: rng.below(30),
        },
        69..=72 => Op::DeleteRoom {
            room,
            reason: RoomClosedReason::Deleted,
            node,
            only_if_empty: rng.below(2) == 0,
        },
        73..=80 => Op::Heartbeat {
            node,
            alive_ms: 600_000,
            fresh: "epoch".into(),
        },
        81..=84 => Op::Expire { node },
        85..=90 => Op::Reap {
            node,
            window_ms: [0, 3_600_000][rng.below(2) as usize],
        },
        91..=92 => Op::Snapshot { room },
        93..=94 => Op::RecordedOn { node },
        95..=96 => Op::PruneNodeRoom { node, room },
        97 => Op::MarkRebuilt { window_ms: 600_000 },
        _ => Op::Wipe,
    }
}

#[tokio::test]
async fn rooms_of_the_old_key_layout_are_moved_at_start() {
    let bench = Bench::start().await;
    let p = &bench.publisher;
    use fred::prelude::KeysInterface as _;
    let room = r#"{"id":"old-room","createdAt":1}"#;
    let () = p
        .set("bc:room:old-room", room, None, None, false)
        .await
        .unwrap();
    let () = p
        .set("bc:room:old-room:ver", 7, None, None, false)
        .await
        .unwrap();
    let () = p
        .set("bc:session:s1", "{}", None, None, false)
        .await
        .unwrap();
    let () = p
        .set("bc:gone:old-room\np1", 1, None, None, false)
        .await
        .unwrap();
    let () = p
        .set("bc:node:n1:peers", 1, None, None, false)
        .await
        .unwrap();
    assert_eq!(bench.dir.migrate_old_layout().await.unwrap(), 1);
    let state = bench.dir.state().await.unwrap();
    assert!(state.rooms[&RoomId::new("old-room")].exists);
    let left: Vec<String> = p
        .custom(
            fred::types::CustomCommand::new("KEYS", fred::types::ClusterHash::Random, false),
            vec!["bc:*"],
        )
        .await
        .unwrap();
    assert_eq!(
        left.len(),
        2,
        "only the new room's record and activity: {left:?}"
    );
    // Done once: nothing to move the second time.
    assert_eq!(bench.dir.migrate_old_layout().await.unwrap(), 0);
    let v: Option<String> = p.get("bc:{old-room}:room").await.unwrap();
    assert_eq!(v.as_deref(), Some(room));
}
