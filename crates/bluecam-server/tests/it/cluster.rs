//! Cluster mode: nodes in this process sharing rooms through a real `redis-server` that each
//! test starts on a free port (Debian's `redis-server` must be installed).

use crate::common::{Client, SECRET, TestServer, WAIT, temp_dir};
use bluecam_proto::{ClientMessage, ResumeCredentials, SessionId, SessionSecret};
use serde_json::{Value, json};
use std::{
    io::{Read as _, Write as _},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// A `redis-server` of this test, with append-only persistence so a restart keeps the data.
pub struct Redis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// TLS only (no plain port): the PEM certificate and key it serves.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Redis {
    /// Nothing running: stands in while the real one is moved to a blocking task.
    fn placeholder() -> Self {
        Self {
            port: 0,
            dir: std::path::PathBuf::new(),
            child: None,
            tls: None,
        }
    }

    /// Starts one on a free port. (A port found free can be taken before redis-server binds
    /// it: then it exits, and another port is tried.)
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts one that speaks TLS only, with this certificate and key.
    pub fn start_tls(cert: PathBuf, key: PathBuf) -> Self {
        Self::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(PathBuf, PathBuf)>) -> Self {
        let mut redis = Self {
            port: 0,
            dir: temp_dir(),
            child: None,
            tls,
        };
        for _ in 0..5 {
            redis.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts redis-server on `self.port`; false if it exited (its port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-auth-clients", "no", "--tls-cert-file"])
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key),
        };
        let mut child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "yes", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let deadline = Instant::now() + WAIT;
        while !self.answers() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        true
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.tls.is_some() {
            // (Listening is enough: the test's own TLS client is the node.)
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// How many nodes the directory holds (`SCARD bc:nodes`): a reaped node is removed.
    fn nodes(&self) -> Option<i64> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(b"SCARD bc:nodes\r\n").ok()?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).ok()?;
        std::str::from_utf8(&buf[..n])
            .ok()?
            .trim()
            .strip_prefix(':')?
            .parse()
            .ok()
    }

    /// Waits (without blocking the runtime) until the directory holds `n` nodes.
    async fn wait_for_nodes(&self, n: i64) {
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        while self.nodes() != Some(n) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the directory never came to {n} nodes"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it (SIGTERM: the append-only file is flushed) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }

    /// Runs `f` (which waits on the process) on a blocking thread, so the nodes of the test,
    /// which run on the test's runtime, are not frozen meanwhile.
    async fn off_runtime(&mut self, f: impl FnOnce(&mut Redis) + Send + 'static) {
        let mut r = std::mem::replace(self, Redis::placeholder());
        *self = tokio::task::spawn_blocking(move || {
            f(&mut r);
            r
        })
        .await
        .unwrap();
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "redis-server could not take its port back");
    }

    /// Starts it again on the same port without its data (no persistence, or a failover to
    /// an empty replica).
    pub fn restart_empty(&mut self) {
        self.stop();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
        assert!(self.spawn(), "redis-server could not take its port back");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A node of the cluster on `redis`, with a short liveness expiry for fast tests.
pub(crate) async fn node(redis: &Redis) -> TestServer {
    let url = redis.url();
    TestServer::with(move |c| {
        c.redis_url = Some(url);
        c.cluster.node_ttl_secs = 3;
    })
    .await
}

pub(crate) async fn join_on(server: &TestServer, room: &str, identity: &str) -> Client {
    server.join(room, identity).await
}

/// Two nodes and a room with alice on the first and bob on the second (alice has seen bob
/// join).
async fn alice_and_bob(redis: &Redis) -> (TestServer, TestServer, String, Client, Client) {
    let (a, b) = (node(redis).await, node(redis).await);
    let room = a.room().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let bob = join_on(&b, &room, "bob").await;
    alice.recv_op("peer_joined").await;
    (a, b, room, alice, bob)
}

fn peer_ids(joined: &Value) -> Vec<String> {
    joined["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn peers_on_two_nodes_join_signal_send_and_leave() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let mut bob = Client::connect(b.addr).await;
    bob.send_frame(&ClientMessage::Join {
        token: b.token(&room, "bob"),
        resume: None,
    })
    .await;
    let joined = bob.expect_joined().await;
    assert_eq!(
        peer_ids(&joined),
        vec![alice.id()],
        "bob sees alice at once"
    );
    let seen = alice.recv_op("peer_joined").await;
    assert_eq!(seen["peer"]["id"], bob.id());

    alice
        .send_json(json!({"op": "signal", "to": bob.id(), "data": {"sdp": "offer"}}))
        .await;
    let signal = bob.recv_op("signal").await;
    assert_eq!(signal["from"], alice.id());
    assert_eq!(signal["data"]["sdp"], "offer");
    bob.send_json(json!({"op": "signal", "to": alice.id(), "data": {"sdp": "answer"}}))
        .await;
    assert_eq!(alice.recv_op("signal").await["data"]["sdp"], "answer");

    // Broadcast and targeted, in order, each way.
    for i in 0..50 {
        alice.send_json(json!({"op": "send", "msg": i})).await;
    }
    for i in 0..50 {
        let m = bob.recv_op("message").await;
        assert_eq!(
            (m["from"].as_str(), m["msg"].as_i64()),
            (Some(&*alice.id()), Some(i))
        );
    }
    bob.send_json(json!({"op": "send", "to": [alice.id()], "msg": {"hi": true}}))
        .await;
    let m = alice.recv_op("message").await;
    assert_eq!(m["from"], bob.id());
    assert_eq!(m["msg"]["hi"], true);

    bob.send_json(json!({"op": "leave"})).await;
    let left = alice.recv_op("peer_left").await;
    assert_eq!(left["peer"]["id"], bob.id());
    assert_eq!(left["reason"], "left");
    alice.assert_alive().await;
}

#[tokio::test]
async fn the_http_api_of_any_node_sees_and_deletes_rooms_of_all() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    // Created through A: visible and listed through B.
    let got: Value = b.api_get(&format!("/v1/rooms/{room}")).await;
    assert_eq!(got["id"], room);
    // A token minted by A works on B.
    let mut bob = Client::connect(b.addr).await;
    bob.send_frame(&ClientMessage::Join {
        token: a.token(&room, "bob"),
        resume: None,
    })
    .await;
    bob.expect_joined().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let list: Value = a.api_get("/v1/rooms").await;
    let listed = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == room)
        .cloned()
        .unwrap();
    assert_eq!(listed["peerCount"], 2, "counts peers on every node");
    let peers: Value = b.api_get(&format!("/v1/rooms/{room}/peers")).await;
    assert_eq!(peers["peers"].as_array().unwrap().len(), 2);

    // Deleted through B: alice, on A, is told and disconnected.
    b.delete_room(&room).await;
    assert_eq!(alice.recv_op("room_closed").await["reason"], "deleted");
    assert_eq!(alice.closed().await, Some(4040));
    assert_eq!(bob.recv_op("room_closed").await["reason"], "deleted");
    let res = a
        .http()
        .get(a.url(&format!("/v1/rooms/{room}")))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_room_full_counts_the_peers_of_every_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.create_room(json!({"maxPeers": 2})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _alice = join_on(&a, &room, "alice").await;
    let _bob = join_on(&b, &room, "bob").await;
    let mut carol = Client::connect(a.addr).await;
    carol
        .send_frame(&ClientMessage::Join {
            token: a.token(&room, "carol"),
            resume: None,
        })
        .await;
    carol.expect_error("room_full").await;
}

/// Drops a client's TCP connection without a close frame (a network cut).
pub(crate) fn cut(client: Client) -> ResumeCredentials {
    let joined = client.joined.clone().unwrap();
    drop(client);
    ResumeCredentials {
        session: SessionId::new(joined.session.id.to_string()),
        secret: SessionSecret::new(joined.session.secret.expose()),
    }
}

#[tokio::test]
async fn a_session_resumes_on_another_node_with_its_id_and_its_frames() {
    let redis = Redis::start();
    let (a, b, room, mut alice, bob) = alice_and_bob(&redis).await;
    let bob_id = bob.id();
    let creds = cut(bob);
    b.wait_disconnected(&room, &bob_id).await;
    // Kept for bob on B while he is away...
    for i in 0..5 {
        alice
            .send_json(json!({"op": "send", "to": [bob_id], "msg": i}))
            .await;
    }
    // ...and handed to A when he comes back there.
    let (mut back, joined) = a.resume(&room, "bob", creds).await;
    assert_eq!(joined["resumed"], true);
    assert_eq!(back.id(), bob_id, "same peer id on the new node");
    assert_eq!(peer_ids(&joined), vec![alice.id()]);
    for i in 0..5 {
        let m = back.recv_op("message").await;
        assert_eq!(m["msg"], i, "the frames kept on the old node, in order");
    }
    // Now on A with alice: frames flow locally both ways, and nobody saw a leave.
    alice.send_json(json!({"op": "send", "msg": "after"})).await;
    assert_eq!(back.recv_op("message").await["msg"], "after");
    back.send_json(json!({"op": "send", "msg": "hello"})).await;
    let m = alice.recv().await;
    assert_eq!(m["op"], "message", "no peer_left before it: {m}");
    assert_eq!(m["from"], bob_id);
}

#[tokio::test]
async fn peers_of_a_stopped_node_leave_when_their_resume_window_ends_after_its_expiry() {
    let redis = Redis::start();
    let url = redis.url();
    let short = move |c: &mut bluecam_server::Config| {
        c.redis_url = Some(url.clone());
        c.cluster.node_ttl_secs = 3;
        c.limits.resume_window_secs = 2;
    };
    let (a, b) = (
        TestServer::with(short.clone()).await,
        TestServer::with(short).await,
    );
    let room = a.room().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let bob = join_on(&b, &room, "bob").await;
    alice.recv_op("peer_joined").await;
    let bob_id = bob.id();
    // B goes away and bob does not come back anywhere.
    b.stop().await;
    drop(bob);
    // B is reaped (its liveness expired): bob stays in the room, resumable, for the window,
    // listed as not connected...
    redis.wait_for_nodes(1).await;
    assert_eq!(
        a.presence(&room, &bob_id).await,
        Some(false),
        "listed, not connected"
    );
    // ...then leaves.
    let left = alice.recv_op("peer_left").await;
    assert_eq!(left["peer"]["id"], bob_id);
    assert_eq!(left["reason"], "timeout");
    // (How soon: `bluecam-bench cluster` and docs/architecture.md, "Liveness"; no clock here.)
    alice.assert_alive().await;
}

#[tokio::test]
async fn a_peer_of_a_reaped_node_resumes_on_another_node_within_the_resume_window() {
    // A node frozen or cut off past its liveness expiry is reaped; its peers must not leave:
    // they resume elsewhere, with their ids, and nobody sees a departure.
    let redis = Redis::start();
    let (a, b, room, mut alice, bob) = alice_and_bob(&redis).await;
    let bob_id = bob.id();
    let creds = cut(bob);
    b.stop().await;
    redis.wait_for_nodes(1).await;
    // Presence tells: bob's node is dead (A lists him as not connected), until he resumes.
    assert_eq!(a.presence(&room, &bob_id).await, Some(false));
    let (mut back, joined) = a.resume(&room, "bob", creds).await;
    assert_eq!(
        (joined["resumed"].as_bool(), back.id()),
        (Some(true), bob_id.clone())
    );
    assert_eq!(a.presence(&room, &bob_id).await, Some(true));
    back.send_json(json!({"op": "send", "msg": "back"})).await;
    let m = alice.recv().await;
    assert_eq!(
        (m["op"].as_str(), m["msg"].as_str()),
        (Some("message"), Some("back")),
        "no peer_left before it: {m}"
    );
    alice
        .send_json(json!({"op": "send", "msg": "welcome"}))
        .await;
    assert_eq!(back.recv_op("message").await["msg"], "welcome");
}

#[tokio::test]
async fn redis_down_is_not_ready_refuses_joins_reports_unsent_frames_and_recovers() {
    let mut redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let mut bob = join_on(&b, &room, "bob").await;
    let mut frank = join_on(&a, &room, "frank").await;
    alice.recv_op("peer_joined").await;
    alice.recv_op("peer_joined").await;
    let ready = |s: &TestServer| {
        let url = s.url("/readyz");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    assert_eq!(ready(&a).await, 200);

    redis.off_runtime(Redis::stop).await;
    // Not ready, within a few seconds, and the answer says what is down.
    let deadline = Instant::now() + WAIT;
    while ready(&a).await != 503 {
        assert!(Instant::now() < deadline, "readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer: Value = reqwest::get(a.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["error"]["message"], "not ready: Redis unavailable",
        "{answer}"
    );
    // A frame for a peer on the other node is not lost silently: its sender is told.
    alice
        .send_json(json!({"op": "send", "to": [bob.id()], "msg": "lost?", "ref": 7}))
        .await;
    let e = alice.expect_error("unavailable").await;
    assert_eq!(e["ref"], 7);
    assert_eq!(e["peers"][0], bob.id());
    // New joins are refused with a clear error.
    let mut carol = Client::connect(a.addr).await;
    carol
        .send_frame(&ClientMessage::Join {
            token: a.token(&room, "carol"),
            resume: None,
        })
        .await;
    carol.expect_error("unavailable").await;
    // Peers of one node still reach each other.
    alice
        .send_json(json!({"op": "send", "to": [frank.id()], "msg": "local"}))
        .await;
    assert_eq!(frank.recv_op("message").await["msg"], "local");

    redis.off_runtime(Redis::restart).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while ready(&a).await != 200 || ready(&b).await != 200 {
        assert!(Instant::now() < deadline, "readyz never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Delivery resumes both ways (retrying until the subscriptions are back).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        n += 1;
        alice
            .send_json(json!({"op": "send", "to": [bob.id()], "msg": n, "ref": n}))
            .await;
        let got = tokio::time::timeout(Duration::from_millis(500), bob.recv_op("message")).await;
        if let Ok(m) = got {
            assert_eq!(m["from"], alice.id());
            break;
        }
        assert!(Instant::now() < deadline, "delivery never resumed");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        bob.send_json(json!({"op": "send", "to": [alice.id()], "msg": "back"}))
            .await;
        let got = tokio::time::timeout(Duration::from_millis(500), alice.recv_op("message")).await;
        if let Ok(m) = got {
            assert_eq!(m["msg"], "back");
            break;
        }
        assert!(Instant::now() < deadline, "delivery never resumed from bob");
    }
    let mut erin = Client::connect(b.addr).await;
    erin.send_frame(&ClientMessage::Join {
        token: b.token(&room, "erin"),
        resume: None,
    })
    .await;
    let joined = erin.expect_joined().await;
    assert_eq!(
        peer_ids(&joined).len(),
        3,
        "the directory knows alice, bob and frank again"
    );
}

#[tokio::test]
async fn a_draining_node_sends_its_clients_to_resume_on_another() {
    let redis = Redis::start();
    let (a, b, room, mut alice, mut bob) = alice_and_bob(&redis).await;
    let bob_id = bob.id();
    let joined = bob.joined.clone().unwrap();
    // SIGTERM's path: B stops accepting and closes its clients with 1012 (restarting: resume).
    let stopping = tokio::spawn(b.stop());
    assert_eq!(bob.closed().await, Some(1012));
    stopping.await.unwrap();
    let (mut back, j) = a
        .resume(
            &room,
            "bob",
            ResumeCredentials {
                session: SessionId::new(joined.session.id.to_string()),
                secret: SessionSecret::new(joined.session.secret.expose()),
            },
        )
        .await;
    assert_eq!(
        (j["resumed"].as_bool(), back.id()),
        (Some(true), bob_id.clone())
    );
    alice
        .send_json(json!({"op": "send", "msg": "still here"}))
        .await;
    assert_eq!(back.recv_op("message").await["msg"], "still here");
    // Once B has been reaped, bob is still in the room: he moved before B was reaped.
    redis.wait_for_nodes(1).await;
    back.send_json(json!({"op": "send", "msg": "late"})).await;
    let m = alice.recv().await;
    assert_eq!(
        (m["op"].as_str(), m["msg"].as_str()),
        (Some("message"), Some("late")),
        "{m}"
    );
}

#[tokio::test]
async fn every_frame_sent_across_a_redis_restart_is_delivered_once_or_reported() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let mut redis = Redis::start();
    let (_a, _b, _room, alice, bob) = alice_and_bob(&redis).await;
    let bob_id = bob.id();
    const N: u64 = 300;
    let (mut to_server, mut from_server) = alice.ws.split();
    // Bob counts what arrives; alice's reader collects the refs reported as not delivered.
    let newest = Arc::new(AtomicU64::new(0));
    let delivered = tokio::spawn({
        let newest = Arc::clone(&newest);
        async move {
            let mut got = Vec::new();
            let mut ws = bob.ws;
            while let Ok(Some(Ok(msg))) =
                tokio::time::timeout(Duration::from_secs(8), ws.next()).await
            {
                if let Message::Text(t) = msg {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["op"] == "message" {
                        let i = v["msg"].as_u64().unwrap();
                        newest.fetch_max(i, Ordering::AcqRel);
                        got.push(i);
                    }
                }
            }
            got
        }
    });
    let reported = tokio::spawn(async move {
        let mut refs = Vec::new();
        while let Ok(Some(Ok(msg))) =
            tokio::time::timeout(Duration::from_secs(8), from_server.next()).await
        {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["op"] == "error" {
                    // Told, either way: the node could not reach bob's node (`unavailable`),
                    // or while its replica was being rebuilt it did not know bob
                    // (`unknown_peer`; the spurious report is issue 12's to remove).
                    assert!(
                        v["code"] == "unavailable" || v["code"] == "unknown_peer",
                        "{v}"
                    );
                    refs.push(v["ref"].as_u64().unwrap());
                }
            }
        }
        refs
    });
    let send = |i: u64| {
        Message::text(json!({"op": "send", "to": [bob_id], "msg": i, "ref": i}).to_string())
    };
    for i in 0..N {
        to_server.send(send(i)).await.unwrap();
        if i == 50 {
            redis.off_runtime(Redis::stop).await;
        }
        if i == 200 {
            redis.off_runtime(Redis::restart).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Keep sending until deliveries resume after the restart (however long the cluster takes
    // to recover on a loaded machine), with a generous deadline.
    let mut sent = N;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while newest.load(Ordering::Acquire) <= 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "delivery never resumed after the restart"
        );
        to_server.send(send(sent)).await.unwrap();
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (delivered, reported) = (delivered.await.unwrap(), reported.await.unwrap());
    let mut sorted = delivered.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted, delivered, "delivered in order and at most once");
    let lost: Vec<u64> = (0..sent)
        .filter(|i| !delivered.contains(i) && !reported.contains(i))
        .collect();
    assert!(lost.is_empty(), "lost silently: {lost:?}");
    // (Frames sent while Redis was away are either reported, or held by the client library
    // and published once it is back; both are fine, silence is not.)
}

/// Waits until `node` finds `room` (the nodes put back a room a directory lost).
pub(crate) async fn wait_for_room(node: &TestServer, room: &str) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let status = node
            .http()
            .get(node.url(&format!("/v1/rooms/{room}")))
            .bearer_auth(SECRET)
            .send()
            .await
            .unwrap()
            .status();
        if status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room {room} never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends `msg` from `from` to `to` until `to` gets it (frames sent while the directory is
/// being rebuilt may be reported undeliverable: the SDK would retransmit them).
pub(crate) async fn until_delivered(from: &mut Client, to: &mut Client, what: &str) {
    let to_id = to.id();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        from.send_json(json!({"op": "send", "to": [to_id], "msg": what}))
            .await;
        let got = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                let f = to.recv().await;
                assert_ne!(f["op"], "peer_left", "nobody may leave: {f}");
                assert_ne!(f["op"], "room_closed", "the call must go on: {f}");
                if f["op"] == "message" && f["msg"] == what {
                    return;
                }
            }
        })
        .await;
        if got.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never got through"
        );
    }
}

#[tokio::test]
async fn redis_restarted_without_its_data_keeps_every_call() {
    let mut redis = Redis::start();
    let (a, b, room, mut alice, mut bob) = alice_and_bob(&redis).await;
    let bob_id = bob.id();
    redis.off_runtime(|r| r.restart_empty()).await;
    // The nodes notice the new directory epoch and put back the room, their peers and sessions.
    wait_for_room(&a, &room).await;
    until_delivered(&mut alice, &mut bob, "to bob").await;
    until_delivered(&mut bob, &mut alice, "to alice").await;
    // A newcomer on B sees both; both see it.
    let carol = join_on(&b, &room, "carol").await;
    let mut ids: Vec<String> = carol
        .joined
        .as_ref()
        .unwrap()
        .peers
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    ids.sort();
    let mut want = vec![alice.id(), bob_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    // Bob's session survived too: he resumes on A with his id (at once: while B may still
    // be putting it back, A answers "unavailable, retry", never "expired").
    let creds = cut(bob);
    let (back, _) = a.resume_retrying(&room, "bob", creds).await;
    assert_eq!(back.id(), bob_id);
}

#[tokio::test]
async fn the_http_transport_works_through_a_load_balancer_that_alternates_between_nodes() {
    use crate::transport::HttpClient;
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let mut ws = join_on(&b, &room, "ws").await;
    // Every request of the HTTP client goes to the other node than the one before.
    let (ua, ub) = (a.url(""), b.url(""));
    let join = ClientMessage::Join {
        token: a.token(&room, "http"),
        resume: None,
    };
    let mut h = HttpClient::open_via(&[&ua, &ub], &join).await;
    let joined = h.recv_op("joined").await;
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    assert_eq!(peer_ids(&joined), vec![ws.id()]);
    ws.recv_op("peer_joined").await;
    for batch in 0..5 {
        let frames: Vec<String> = (0..20)
            .map(|i| json!({"op": "send", "to": [ws.id()], "msg": batch * 20 + i}).to_string())
            .collect();
        h.send(&frames).await;
    }
    for i in 0..100 {
        ws.send_json(json!({"op": "send", "to": [hid], "msg": i}))
            .await;
    }
    for i in 0..100 {
        assert_eq!(ws.recv_op("message").await["msg"], i);
        assert_eq!(h.recv_op("message").await["msg"], i);
    }
    // The node holding the session goes: requests through the other get 404 at once, and the
    // session resumes there, with its id.
    a.stop().await;
    h.bases = vec![ub.clone()];
    let gone = tokio::time::timeout(WAIT, async {
        loop {
            let res = h.poll_raw(h.ack).await;
            if res.status() == 404 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "requests for the lost node's session never got 404"
    );
    let resume = crate::transport::resume_join(&b, &room, "http", &joined);
    let mut again = HttpClient::open(&ub, &resume).await;
    let back = again.recv_op("joined").await;
    assert_eq!(back["resumed"], true, "{back}");
    assert_eq!(back["self"]["id"], hid.as_str());
    ws.send_json(json!({"op": "send", "to": [hid], "msg": "after"}))
        .await;
    assert_eq!(again.recv_op("message").await["msg"], "after");
}

#[tokio::test]
async fn one_seat_per_identity_across_nodes_even_in_a_full_room() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.create_room(json!({"maxPeers": 2})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut owner = join_on(&a, &room, "owner").await;
    let mut visitor = join_on(&a, &room, "visitor").await;
    owner.recv_op("peer_joined").await;
    // The visitor's page reloads and lands on the other node, the old tab still connected:
    // the new session takes the seat (the room is full without it).
    let reloaded = join_on(&b, &room, "visitor").await;
    assert_eq!(
        visitor.closed().await,
        Some(4042),
        "final: replaced by a newer session"
    );
    let left = owner.recv_op("peer_left").await;
    assert_eq!(
        (left["peer"]["id"].as_str(), left["reason"].as_str()),
        (Some(visitor.id().as_str()), Some("replaced"))
    );
    let joined = owner.recv_op("peer_joined").await;
    assert_eq!(joined["peer"]["id"].as_str(), Some(reloaded.id().as_str()));
    assert_eq!(a.presence(&room, &visitor.id()).await, None);
    // A room that keeps several sessions per identity keeps both, across nodes too.
    let several = a.create_room(json!({"multipleSessions": true})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut first = join_on(&a, &several, "visitor").await;
    let second = join_on(&b, &several, "visitor").await;
    assert_eq!(
        first.recv_op("peer_joined").await["peer"]["id"],
        second.id()
    );
    first.assert_alive().await;
}

/// A masked client frame (a zero mask: the payload as is).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&[0; 4]);
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_join_read_after_its_client_closed_takes_over_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let mut visitor = join_on(&a, &room, "visitor").await;
    // B reads a join of the visitor's identity only with its client's close behind it (a node
    // frozen past the client's patience: the client closed and joined elsewhere meanwhile).
    let mut tcp = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    tcp.write_all(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    let join = json!({"op": "join", "token": b.token(&room, "visitor")}).to_string();
    let mut late = client_frame(0x1, join.as_bytes());
    late.extend(client_frame(0x8, &1000u16.to_be_bytes()));
    tcp.write_all(&late).await.unwrap();
    let answered = crate::common::read_to_close(&mut tcp).await;
    assert!(
        !String::from_utf8_lossy(&answered).contains("joined"),
        "the late join was carried out"
    );
    // The live session keeps its seat; a join whose client is there takes it over.
    visitor.assert_alive().await;
    assert_eq!(b.presence(&room, &visitor.id()).await, Some(true));
    let _reloaded = join_on(&b, &room, "visitor").await;
    assert_eq!(visitor.closed().await, Some(4042));
}

/// A Redis with ACL users (the default user off): the node authenticates with the user and
/// password of its URL; a wrong password stops its start with a clear error.
#[tokio::test]
async fn a_redis_acl_user_in_the_url_is_used_and_a_wrong_password_refused() {
    use bluecam_server::testkit::redis_cli;
    let redis = Redis::start();
    let port = redis.port;
    for args in [
        &[
            "ACL",
            "SETUSER",
            "bluecam",
            "on",
            ">s3cret-pass",
            "~*",
            "&*",
            "+@all",
        ][..],
        &["ACL", "SETUSER", "default", "off"][..],
    ] {
        assert_eq!(redis_cli(port, args).trim(), "OK", "{args:?}");
    }
    let url = format!("redis://bluecam:s3cret-pass@127.0.0.1:{port}");
    let a = TestServer::with(move |c| {
        c.redis_url = Some(url);
        c.cluster.node_ttl_secs = 3;
    })
    .await;
    let room = a.room().await;
    let mut alice = join_on(&a, &room, "alice").await;
    let mut bob = join_on(&a, &room, "bob").await;
    alice.recv_op("peer_joined").await;
    bob.send_json(json!({"op": "send", "to": [alice.id()], "msg": "hi"}))
        .await;
    assert_eq!(alice.recv_op("message").await["msg"], "hi");

    let config = bluecam_server::Config {
        data_dir: temp_dir(),
        api_secret: Some(crate::common::SECRET.into()),
        redis_url: Some(format!("redis://bluecam:wrong@127.0.0.1:{port}")),
        ..bluecam_server::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = tokio::time::timeout(WAIT, bluecam_server::Server::bind(listener, config))
        .await
        .expect("a wrong password must stop the start, not hang it");
    let Err(err) = started else {
        panic!("a wrong password must stop the start");
    };
    let text = format!("{err:#}").to_lowercase();
    assert!(
        text.contains("wrongpass") || text.contains("auth") || text.contains("password"),
        "{text}"
    );
}

/// A room changed through one node (`PATCH`) is the changed room on every node: the others
/// answer with it and their joins obey it.
#[tokio::test]
async fn a_room_changed_on_one_node_is_changed_on_every_node() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let res = a
        .http()
        .patch(a.url(&format!("/v1/rooms/{room}")))
        .bearer_auth(SECRET)
        .json(&json!({"name": "renamed", "maxPeers": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let on_b = b.api_get(&format!("/v1/rooms/{room}")).await;
    assert_eq!(
        (on_b["name"].clone(), on_b["maxPeers"].clone()),
        (json!("renamed"), json!(1))
    );
    let _alice = join_on(&a, &room, "alice").await;
    Client::join_fails(
        b.addr,
        b.token(&room, "bob"),
        "room_full",
        bluecam_proto::CloseCode::RoomFull,
    )
    .await;
}

/// `identity` joined `room` on a node of its own, which is then killed (SIGKILL, as
/// [`TestServer::crash`] does it) once `watcher` has seen the join: the peer's id.
async fn crashed_peer(redis: &Redis, room: &str, identity: &str, watcher: &mut Client) -> String {
    let url = redis.url();
    let node = TestServer::crashable(move |c| {
        c.redis_url = Some(url);
        c.cluster.node_ttl_secs = 3;
    })
    .await;
    let peer = join_on(&node, room, identity).await;
    watcher.recv_op("peer_joined").await;
    let id = peer.id();
    node.crash();
    id
}

/// Removes `peer` of `room` through `via`'s API; the removal's time.
pub(crate) async fn kick(via: &TestServer, room: &str, peer: &str) -> u64 {
    let res = via
        .http()
        .delete(via.url(&format!("/v1/rooms/{room}/peers/{peer}")))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["removedAt"].as_u64().unwrap()
}

/// A peer removed through the API of a node that does not hold it: the node holding it
/// closes it with `kicked` and the others see it leave with reason `kicked`; its identity's
/// older tokens are refused on every node. A peer whose node died (SIGKILL, not yet reaped)
/// is removed by the directory for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_through_one_node_leaves_from_the_node_that_holds_it() {
    use bluecam_proto::CloseCode;
    let redis = Redis::start();
    let (a, b, room, mut alice, mut bob) = alice_and_bob(&redis).await;
    let removed_at = kick(&a, &room, &bob.id()).await;
    assert_eq!(bob.closed().await, Some(CloseCode::Kicked.code()));
    alice.expect_left(&bob.id(), "kicked").await;
    for node in [&a, &b] {
        Client::join_fails(
            node.addr,
            node.token_with(&room, "bob", |c| c.iat = removed_at),
            "unauthorized",
            CloseCode::Unauthorized,
        )
        .await;
    }
    drop(b);

    // Carol on a node that is killed: nobody listens on its channel any more.
    let carol_id = crashed_peer(&redis, &room, "carol", &mut alice).await;
    kick(&a, &room, &carol_id).await;
    alice.expect_left(carol_id.as_str(), "kicked").await;
    assert_eq!(a.presence(&room, &carol_id).await, None);
}

/// A message of the backend sent through one node reaches the peers of the other nodes (and
/// those of its own), each once; a peer whose node is gone is reported unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_message_reaches_the_peers_of_every_node() {
    let redis = Redis::start();
    let (a, b, room, mut alice, mut bob) = alice_and_bob(&redis).await;
    let send = |to: Value| {
        let (a, room) = (&a, &room);
        async move {
            let res = a
                .http()
                .post(a.url(&format!("/v1/rooms/{room}/messages")))
                .bearer_auth(SECRET)
                .json(&json!({"type": "notice", "data": "hi", "to": to}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 202);
            res.json::<Value>().await.unwrap()
        }
    };
    let body = send(Value::Null).await;
    assert_eq!(body["sent"].as_array().unwrap().len(), 2, "{body}");
    for c in [&mut alice, &mut bob] {
        let m = c.recv_op("server_message").await;
        assert_eq!((m["s"].as_u64(), &m["data"]), (Some(1), &json!("hi")));
    }
    let body = send(json!([bob.id()])).await;
    assert_eq!(body["sent"], json!([bob.id()]));
    assert_eq!(bob.recv_op("server_message").await["s"], 2);
    alice.assert_alive().await;
    // Carol's node is killed: she is unreachable until she resumes somewhere.
    let carol_id = crashed_peer(&redis, &room, "carol", &mut alice).await;
    let body = send(json!([carol_id])).await;
    assert_eq!(body["unreachable"], json!([carol_id]), "{body}");
    drop(b);
}
