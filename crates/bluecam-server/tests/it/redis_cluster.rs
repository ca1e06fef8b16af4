//! Cluster mode on a Redis Cluster: three masters and three replicas (Debian's `redis-server`
//! with `--cluster-enabled yes`, joined by `redis-cli --cluster create`), started once for
//! this file and shared by its tests, with BlueCam nodes in this process. Rooms land on every
//! shard and relay once and in order across nodes; a master SIGKILLed fails over to its
//! replica and every room relays again with no call ended; a shard that lost its data is
//! noticed (its own epoch) and put back by the nodes.
//!
//! The scenarios run one after the other in one test, on one cluster (the suite runs each test
//! in a process of its own, so one test is how a file shares a fixture); a scenario that
//! breaks a master leaves the cluster whole for the next.

use crate::cluster::{cut, join_on, until_delivered, wait_for_room};
use crate::common::{Client, TestServer};
use bluecam_server::testkit::{RedisCluster, redis_cli};
use serde_json::{Value, json};
use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The cluster of this file, started at first use.
fn shared() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The slot of a room's keys (every key of a room carries it as a hash tag).
fn slot(room: &str) -> u16 {
    fred::util::redis_keyslot(format!("bc:{{{room}}}:room").as_bytes())
}

/// A node of the cluster, with a short liveness expiry for fast tests.
async fn node(cluster: &RedisCluster) -> TestServer {
    let url = cluster.url();
    TestServer::with(move |c| {
        c.redis_url = Some(url);
        c.cluster.node_ttl_secs = 3;
    })
    .await
}

/// `n` rooms on each master (by the slot ranges `redis-cli --cluster create` gives three
/// masters), created through `via`.
async fn rooms_on_every_shard(via: &TestServer, n: usize) -> Vec<String> {
    let mut by_shard: [Vec<String>; 3] = Default::default();
    while by_shard.iter().any(|r| r.len() < n) {
        let room = via.room().await;
        let shard = (usize::from(slot(&room)) * 3) / 16_384;
        if by_shard[shard].len() < n {
            by_shard[shard].push(room);
        }
    }
    by_shard.into_iter().flatten().collect()
}

/// Alice on `a` and bob on `b` in `room`, alice having seen bob join.
async fn pair(a: &TestServer, b: &TestServer, room: &str) -> (Client, Client) {
    let mut alice = join_on(a, room, "alice").await;
    let bob = join_on(b, room, "bob").await;
    alice.recv_op("peer_joined").await;
    (alice, bob)
}

/// Alice sends `n` messages to the room; bob gets each once, in order, and then alice's
/// marker as the very next message (nothing twice).
async fn relays_in_order(alice: &mut Client, bob: &mut Client, n: u64) {
    for i in 0..n {
        alice.send_json(json!({"op": "send", "msg": i})).await;
    }
    alice.send_json(json!({"op": "send", "msg": "end"})).await;
    for i in 0..n {
        let m = bob.recv_op("message").await;
        assert_eq!(
            (m["from"].as_str(), m["msg"].as_u64()),
            (Some(&*alice.id()), Some(i))
        );
    }
    assert_eq!(bob.recv_op("message").await["msg"], "end");
}

async fn rooms_on_every_shard_relay_once_and_in_order_across_nodes() {
    let cluster = shared();
    let nodes = [
        node(cluster).await,
        node(cluster).await,
        node(cluster).await,
    ];
    let rooms = rooms_on_every_shard(&nodes[0], 2).await;
    for (i, room) in rooms.iter().enumerate() {
        let (a, b) = (&nodes[i % 3], &nodes[(i + 1) % 3]);
        let (mut alice, mut bob) = pair(a, b, room).await;
        relays_in_order(&mut alice, &mut bob, 40).await;
        relays_in_order(&mut bob, &mut alice, 5).await;
        // The third node sees the room and both peers connected.
        let third = &nodes[(i + 2) % 3];
        let got: Value = third.api_get(&format!("/v1/rooms/{room}")).await;
        assert_eq!(got["id"], *room);
        assert_eq!(third.presence(room, &alice.id()).await, Some(true));
        assert_eq!(third.presence(room, &bob.id()).await, Some(true));
        // A session resumes on the third node with its id.
        let bob_id = bob.id();
        let (mut back, _) = third.resume_retrying(room, "bob", cut(bob)).await;
        assert_eq!(back.id(), bob_id);
        until_delivered(&mut alice, &mut back, "after the resume").await;
    }
}

async fn a_room_full_counts_the_peers_of_every_node_on_a_redis_cluster() {
    let cluster = shared();
    let (a, b) = (node(cluster).await, node(cluster).await);
    let room = a.create_room(json!({"maxPeers": 2})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _alice = join_on(&a, &room, "alice").await;
    let _bob = join_on(&b, &room, "bob").await;
    let mut carol = Client::connect(b.addr).await;
    carol
        .send_frame(&bluecam_proto::ClientMessage::Join {
            token: a.token(&room, "carol"),
            resume: None,
        })
        .await;
    carol.expect_error("room_full").await;
}

async fn a_master_killed_fails_over_and_every_room_relays_again_with_no_call_ended() {
    let cluster = shared();
    let nodes = [
        node(cluster).await,
        node(cluster).await,
        node(cluster).await,
    ];
    let rooms = rooms_on_every_shard(&nodes[0], 1).await;
    let mut pairs = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        let (mut alice, mut bob) = pair(&nodes[i % 3], &nodes[(i + 1) % 3], room).await;
        relays_in_order(&mut alice, &mut bob, 10).await;
        pairs.push((alice, bob));
    }
    // The master of the first room's shard dies; its replica takes over.
    let victim = cluster.master_of(slot(&rooms[0]));
    let killed = Instant::now();
    cluster.kill(victim);
    for (i, (alice, bob)) in pairs.iter_mut().enumerate() {
        until_delivered(alice, bob, &format!("room {i} after the failover")).await;
        until_delivered(bob, alice, &format!("room {i} back")).await;
    }
    let relaying_again = killed.elapsed();
    eprintln!("every room relays again {relaying_again:?} after the master's SIGKILL");
    assert!(
        relaying_again < Duration::from_secs(30),
        "every room relays again {relaying_again:?} after the kill"
    );
    // Joins and resumes work in the failed-over shard too.
    let carol = join_on(&nodes[2], &rooms[0], "carol").await;
    assert_eq!(carol.joined.as_ref().unwrap().peers.len(), 2);
    let (alice, bob) = pairs.swap_remove(0);
    let bob_id = bob.id();
    let (back, _) = nodes[2].resume_retrying(&rooms[0], "bob", cut(bob)).await;
    assert_eq!(back.id(), bob_id);
    drop(alice);
    // The old master comes back as a replica: the cluster is whole for the next scenario.
    let c = cluster;
    tokio::task::spawn_blocking(move || {
        c.wait_whole();
        c.restart(victim);
        c.wait_whole();
    })
    .await
    .unwrap();
}

async fn a_shard_that_lost_its_data_is_noticed_and_put_back_by_the_nodes() {
    let cluster = shared();
    let (a, b) = (node(cluster).await, node(cluster).await);
    let rooms = rooms_on_every_shard(&a, 1).await;
    let mut pairs = Vec::new();
    for room in &rooms {
        pairs.push(pair(&a, &b, room).await);
    }
    // One master (and so its replica) loses everything; the other shards keep theirs.
    let victim = cluster.master_of(slot(&rooms[1]));
    assert_eq!(
        redis_cli(victim, &["flushall"]).trim(),
        "OK",
        "FLUSHALL on the master"
    );
    wait_for_room(&a, &rooms[1]).await;
    for (i, (alice, bob)) in pairs.iter_mut().enumerate() {
        until_delivered(alice, bob, &format!("room {i} to bob")).await;
        until_delivered(bob, alice, &format!("room {i} to alice")).await;
    }
    // A newcomer into the lost shard's room sees both peers, put back by their nodes.
    let carol = join_on(&b, &rooms[1], "carol").await;
    assert_eq!(carol.joined.as_ref().unwrap().peers.len(), 2);
}

async fn the_http_transport_is_relayed_between_nodes_over_shard_channels() {
    use crate::transport::HttpClient;
    let cluster = shared();
    let (a, b) = (node(cluster).await, node(cluster).await);
    let room = a.room().await;
    let mut ws = join_on(&b, &room, "ws").await;
    // Every request of the HTTP client goes to the other node than the one before: half of
    // them are passed on to the session's node over its shard channel, and answered back.
    let (ua, ub) = (a.url(""), b.url(""));
    let join = bluecam_proto::ClientMessage::Join {
        token: a.token(&room, "http"),
        resume: None,
    };
    let mut h = HttpClient::open_via(&[&ua, &ub], &join).await;
    let joined = h.recv_op("joined").await;
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    ws.recv_op("peer_joined").await;
    let frames: Vec<String> = (0..20)
        .map(|i| json!({"op": "send", "to": [ws.id()], "msg": i}).to_string())
        .collect();
    h.send(&frames).await;
    for i in 0..20 {
        ws.send_json(json!({"op": "send", "to": [hid], "msg": i}))
            .await;
    }
    for i in 0..20 {
        assert_eq!(ws.recv_op("message").await["msg"], i);
        assert_eq!(h.recv_op("message").await["msg"], i);
    }
}

async fn peers_of_a_dead_node_are_orphaned_and_swept_from_every_shards_index() {
    let cluster = shared();
    let url = cluster.url();
    let short = move |c: &mut bluecam_server::Config| {
        c.redis_url = Some(url.clone());
        c.cluster.node_ttl_secs = 3;
        c.limits.resume_window_secs = 2;
    };
    let (a, b) = (
        TestServer::with(short.clone()).await,
        TestServer::with(short).await,
    );
    let rooms = rooms_on_every_shard(&a, 1).await;
    let mut pairs = Vec::new();
    for room in &rooms {
        pairs.push(pair(&a, &b, room).await);
    }
    // B goes away and its peers come back nowhere: orphaned (listed, not connected) in every
    // room, then swept from each shard's orphan index when their window ends.
    b.stop().await;
    for (room, (alice, bob)) in rooms.iter().zip(pairs.iter_mut()) {
        let bob_id = bob.id();
        let left = alice.recv_op("peer_left").await;
        assert_eq!(
            (left["peer"]["id"].as_str(), left["reason"].as_str()),
            (Some(bob_id.as_str()), Some("timeout")),
            "room {room}"
        );
        assert_eq!(a.presence(room, &bob_id).await, None);
    }
}

/// A peer removed through the other node, in a room on each shard: closed with `kicked`, seen
/// leaving with reason `kicked`, its older token refused (the removal is in the room's slot).
async fn a_peer_removed_through_another_node_leaves_on_every_shard() {
    use bluecam_proto::CloseCode;
    let cluster = shared();
    let (a, b) = (node(cluster).await, node(cluster).await);
    for room in rooms_on_every_shard(&a, 1).await {
        let (mut alice, mut bob) = pair(&a, &b, &room).await;
        let removed_at = crate::cluster::kick(&a, &room, &bob.id()).await;
        assert_eq!(bob.closed().await, Some(CloseCode::Kicked.code()));
        let left = alice.recv_op("peer_left").await;
        assert_eq!(left["reason"], "kicked", "{left}");
        Client::join_fails(
            b.addr,
            b.token_with(&room, "bob", |c| c.iat = removed_at),
            "unauthorized",
            CloseCode::Unauthorized,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_scenarios() {
    eprintln!("scenario: rooms_on_every_shard_relay_once_and_in_order_across_nodes");
    rooms_on_every_shard_relay_once_and_in_order_across_nodes().await;
    eprintln!("scenario: a_peer_removed_through_another_node_leaves_on_every_shard");
    a_peer_removed_through_another_node_leaves_on_every_shard().await;
    eprintln!("scenario: a_room_full_counts_the_peers_of_every_node_on_a_redis_cluster");
    a_room_full_counts_the_peers_of_every_node_on_a_redis_cluster().await;
    eprintln!("scenario: the_http_transport_is_relayed_between_nodes_over_shard_channels");
    the_http_transport_is_relayed_between_nodes_over_shard_channels().await;
    eprintln!("scenario: peers_of_a_dead_node_are_orphaned_and_swept_from_every_shards_index");
    peers_of_a_dead_node_are_orphaned_and_swept_from_every_shards_index().await;
    eprintln!(
        "scenario: a_master_killed_fails_over_and_every_room_relays_again_with_no_call_ended"
    );
    a_master_killed_fails_over_and_every_room_relays_again_with_no_call_ended().await;
    eprintln!("scenario: a_shard_that_lost_its_data_is_noticed_and_put_back_by_the_nodes");
    a_shard_that_lost_its_data_is_noticed_and_put_back_by_the_nodes().await;
}
