//! Calls survive the server: sessions are durable on a single node (a restart keeps every
//! peer id), the schema is versioned and migrated, and one identity holds one seat.

use crate::common::{Client, TestServer, creds, temp_dir};
use bluecam_proto::{ClientMessage, ResumeCredentials};
use serde_json::json;

/// Resumes `old`'s session on `s` as `identity`; returns the new client.
async fn resume(s: &TestServer, room: &str, identity: &str, old: &Client) -> Client {
    let (c, joined) = s.resume(room, identity, creds(old)).await;
    assert_eq!(joined["self"]["id"], old.id(), "the same peer id");
    c
}

#[tokio::test]
async fn sessions_survive_a_restart_with_their_peer_ids_and_no_leave_or_join() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    let (a_id, b_id) = (a.id(), b.id());

    // SIGTERM's path: every client is told the server restarts (1012, resume).
    let stopping = tokio::spawn(s.stop());
    assert_eq!(a.closed().await, Some(1012));
    let dir = stopping.await.unwrap();
    let s = TestServer::in_dir(dir, |_| {}).await;

    // Both are in the room again, waiting for their clients.
    assert_eq!(s.presence(&room, &a_id).await, Some(false));
    assert_eq!(s.presence(&room, &b_id).await, Some(false));

    let mut a2 = resume(&s, &room, "a", &a).await;
    assert_eq!(a2.joined.as_ref().unwrap().peers[0].id.as_str(), b_id);
    // A frame for b, who is not back yet, is kept for b.
    a2.send_json(json!({"op": "send", "to": [b_id], "msg": "while you were away"}))
        .await;
    a2.assert_alive().await; // no unknown_peer: b is still in the room
    let mut b2 = resume(&s, &room, "b", &b).await;
    let m = b2.recv_op("message").await;
    assert_eq!(
        (m["from"].as_str(), &m["msg"]),
        (Some(a_id.as_str()), &json!("while you were away"))
    );
    // Nobody saw anyone leave or join: the next frame a gets is b's message.
    b2.send_json(json!({"op": "send", "msg": "hello"})).await;
    let m = a2.recv().await;
    assert_eq!(
        (m["op"].as_str(), &m["msg"]),
        (Some("message"), &json!("hello")),
        "{m}"
    );
    // A wrong secret is refused after the restart, as before it.
    let mut forged = Client::connect(s.addr).await;
    forged
        .send_frame(&ClientMessage::Join {
            token: s.token(&room, "a"),
            resume: Some(ResumeCredentials {
                session: creds(&a).session,
                secret: bluecam_proto::SessionSecret::new("guessed"),
            }),
        })
        .await;
    forged.expect_error("session_expired").await;
    let dir = s.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_peer_that_does_not_come_back_after_a_restart_leaves_with_timeout() {
    let short = |c: &mut bluecam_server::Config| c.limits.resume_window_secs = 2;
    let s = TestServer::with(short).await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    // b leaves for good before the restart: it must not come back with it.
    let mut c = s.join(&room, "c").await;
    a.recv_op("peer_joined").await;
    c.send_json(json!({"op": "leave"})).await;
    assert_eq!(c.closed().await, Some(1000));
    assert_eq!(a.recv_op("peer_left").await["reason"], "left");
    let dir = s.stop().await;
    let s = TestServer::in_dir(dir, short).await;
    let list = s.api_get(&format!("/v1/rooms/{room}/peers")).await;
    assert_eq!(list["peers"].as_array().unwrap().len(), 2, "{list}");
    let mut a2 = resume(&s, &room, "a", &a).await;
    let left = a2.recv_op("peer_left").await;
    assert_eq!(
        (left["peer"]["id"].as_str(), left["reason"].as_str()),
        (Some(b.id().as_str()), Some("timeout"))
    );
    let dir = s.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_data_dir_from_before_schema_versions_is_migrated_and_a_newer_one_refused() {
    let dir = temp_dir();
    {
        // The schema as the first release wrote it: no user_version, no sessions table.
        let db = rusqlite::Connection::open(dir.join("bluecam.sqlite3")).unwrap();
        db.execute_batch(
            "CREATE TABLE rooms (id TEXT PRIMARY KEY NOT NULL, name TEXT, description TEXT,
             owner TEXT, members TEXT, max_peers INTEGER NOT NULL, empty_timeout_secs INTEGER,
             metadata TEXT, created_at INTEGER NOT NULL, last_active_at INTEGER NOT NULL);
             INSERT INTO rooms VALUES ('old-room', 'Old', NULL, 'olga', NULL, 2, NULL, NULL, 1, 1);",
        )
        .unwrap();
    }
    let s = TestServer::in_dir(dir, |_| {}).await;
    let room = s.api_get("/v1/rooms/old-room").await;
    assert_eq!(room["name"], "Old");
    assert_eq!(room["multipleSessions"], false);
    // The migrated store keeps sessions: a call in the old room survives a restart.
    let a = s.join("old-room", "olga").await;
    let dir = s.stop().await;
    let version: usize = rusqlite::Connection::open(dir.join("bluecam.sqlite3"))
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, bluecam_server::persist::store::SCHEMA_VERSION);
    let s = TestServer::in_dir(dir, |_| {}).await;
    resume(&s, "old-room", "olga", &a).await;
    let dir = s.stop().await;

    // A data dir a newer build wrote is refused with a clear error, not misread.
    rusqlite::Connection::open(dir.join("bluecam.sqlite3"))
        .unwrap()
        .pragma_update(None, "user_version", 999)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = bluecam_server::Config {
        data_dir: dir.clone(),
        api_secret: Some(crate::common::SECRET.into()),
        ..Default::default()
    };
    let err = bluecam_server::Server::bind(listener, config)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("newer than this build"), "{err}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_second_session_of_an_identity_replaces_the_first_even_in_a_full_room() {
    let s = TestServer::start().await;
    let room = s.create_room(json!({"maxPeers": 2})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut owner = s.join(&room, "owner").await;
    let mut visitor = s.join(&room, "visitor").await;
    owner.recv_op("peer_joined").await;
    // The visitor reloads: a fresh join by the same identity while the old tab is still
    // connected (or its socket not yet noticed as dead).
    let reloaded = s.join(&room, "visitor").await;
    assert_ne!(reloaded.id(), visitor.id());
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
    // The replaced session is over.
    let mut late = Client::connect(s.addr).await;
    late.send_frame(&ClientMessage::Join {
        token: s.token(&room, "visitor"),
        resume: Some(creds(&visitor)),
    })
    .await;
    late.expect_error("session_expired").await;
    // A stranger still finds the room full.
    Client::join_fails(
        s.addr,
        s.token(&room, "stranger"),
        "room_full",
        bluecam_proto::CloseCode::RoomFull,
    )
    .await;

    // A room that allows several sessions per identity counts them as seats.
    let many = s
        .create_room(json!({"maxPeers": 2, "multipleSessions": true}))
        .await;
    assert_eq!(many["multipleSessions"], true);
    let many = many["id"].as_str().unwrap().to_owned();
    let mut first = s.join(&many, "same").await;
    let _second = s.join(&many, "same").await;
    first.recv_op("peer_joined").await;
    Client::join_fails(
        s.addr,
        s.token(&many, "same"),
        "room_full",
        bluecam_proto::CloseCode::RoomFull,
    )
    .await;
    first.assert_alive().await;
}
