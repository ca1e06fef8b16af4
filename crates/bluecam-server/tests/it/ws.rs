//! Joining, routing and isolation over real WebSockets.

use crate::common::{Client, TestServer};
use bluecam_proto::{ClientMessage, CloseCode};
use serde_json::json;

#[tokio::test]
async fn two_peers_join_and_see_each_other() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "alice").await;
    let mut b = s.join(&room, "bob").await;
    let joined_b = b.joined.clone().unwrap();
    assert_eq!(joined_b.peers.len(), 1);
    assert_eq!(joined_b.peers[0].id.to_string(), a.id());
    assert_eq!(joined_b.room.id.as_str(), room);
    assert_ne!(a.id(), b.id());
    let pj = a.recv_op("peer_joined").await;
    assert_eq!(pj["peer"]["id"], b.id());
    assert_eq!(pj["peer"]["identity"], "bob");
    // The other side's peers list is empty for the first joiner.
    assert!(a.joined.as_ref().unwrap().peers.is_empty());
    b.send_json(json!({"op": "leave"})).await;
    assert_eq!(b.closed().await, Some(1000));
    let left = a.recv_op("peer_left").await;
    assert_eq!(left["peer"]["id"], b.id());
    assert_eq!(left["reason"], "left");
}

#[tokio::test]
async fn signal_and_send_reach_only_the_addressed_peer_with_server_written_from() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let mut b = s.join(&room, "b").await;
    let mut c = s.join(&room, "c").await;
    a.recv_op("peer_joined").await;
    a.recv_op("peer_joined").await;
    b.recv_op("peer_joined").await;

    // A client-written `from` is ignored: the server writes the real one.
    a.send_json(json!({"op": "signal", "to": b.id(), "from": c.id(), "data": {"sdp": "offer"}}))
        .await;
    let sig = b.recv_op("signal").await;
    assert_eq!(sig["from"], a.id());
    assert_eq!(sig["data"], json!({"sdp": "offer"}));

    a.send_json(json!({"op": "send", "to": [c.id(), c.id()], "msg": "only-c"}))
        .await;
    let m = c.recv_op("message").await;
    assert_eq!(
        (m["from"].clone(), m["msg"].clone()),
        (json!(a.id()), json!("only-c"))
    );

    // Broadcast reaches both others; b's next message is the broadcast, proving it never
    // got the targeted one, and c gets it exactly once.
    a.send_json(json!({"op": "send", "msg": {"n": 1}})).await;
    assert_eq!(b.recv_op("message").await["msg"], json!({"n": 1}));
    assert_eq!(c.recv_op("message").await["msg"], json!({"n": 1}));
    // a got nothing back: its next frame is the pong.
    a.send_json(json!({"op": "ping"})).await;
    assert_eq!(a.recv().await["op"], "pong");
    c.send_json(json!({"op": "ping"})).await;
    assert_eq!(c.recv().await["op"], "pong");
}

#[tokio::test]
async fn payloads_are_forwarded_byte_for_byte() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let mut b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    let payload = r#"{"z":1.50,  "a":"\u00e9",  "n":[1, 2]}"#;
    a.send_text(format!(r#"{{"op":"send","msg":{payload}}}"#))
        .await;
    let raw = match tokio::time::timeout(
        crate::common::WAIT,
        futures_util::StreamExt::next(&mut b.ws),
    )
    .await
    .unwrap()
    {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => t.to_string(),
        other => panic!("unexpected {other:?}"),
    };
    assert!(raw.ends_with(&format!(r#""msg":{payload}}}"#)), "{raw}");
}

#[tokio::test]
async fn a_peer_cannot_reach_another_room() {
    let s = TestServer::start().await;
    let (r1, r2) = (s.room().await, s.room().await);
    let mut a = s.join(&r1, "a").await;
    let mut x = s.join(&r2, "x").await;
    a.send_json(json!({"op": "signal", "to": x.id(), "data": 1, "ref": 7}))
        .await;
    let e = a.expect_error("unknown_peer").await;
    assert_eq!(e["ref"], 7);
    assert_eq!(e["peers"], json!([x.id()]));
    a.send_json(json!({"op": "send", "to": [x.id(), "nobody"], "msg": 1, "ref": 8}))
        .await;
    let e = a.expect_error("unknown_peer").await;
    assert_eq!(e["ref"], 8);
    assert_eq!(e["peers"].as_array().unwrap().len(), 2);
    // Sending to yourself is refused the same way.
    a.send_json(json!({"op": "signal", "to": a.id(), "data": 1}))
        .await;
    a.expect_error("unknown_peer").await;
    // x received nothing.
    x.assert_alive().await;
    a.assert_alive().await;
}

#[tokio::test]
async fn join_errors_have_codes_and_close_codes() {
    let s = TestServer::with(|c| c.limits.max_peers_per_room = 50).await;
    let room = s.room().await;
    // Unknown room.
    Client::join_fails(
        s.addr,
        s.token("no-such-room", "a"),
        "room_not_found",
        CloseCode::RoomNotFound,
    )
    .await;
    // Bad signature.
    let forged = bluecam_server::Secret::new("wrong")
        .mint(&bluecam_server::Claims {
            sub: "a".into(),
            room: room.as_str().into(),
            exp: crate::common::now() + 60,
            iat: crate::common::now(),
            nbf: None,
            name: None,
            metadata: None,
            permissions: None,
        })
        .unwrap();
    Client::join_fails(s.addr, forged, "unauthorized", CloseCode::Unauthorized).await;
    // Expired beyond the leeway.
    let expired = s.token_with(&room, "a", |c| c.exp = crate::common::now() - 30);
    Client::join_fails(s.addr, expired, "unauthorized", CloseCode::Unauthorized).await;
    // Not valid yet.
    let future = s.token_with(&room, "a", |c| c.nbf = Some(crate::common::now() + 60));
    Client::join_fails(s.addr, future, "unauthorized", CloseCode::Unauthorized).await;
    // Garbage token.
    Client::join_fails(
        s.addr,
        "abc.def.ghi".into(),
        "unauthorized",
        CloseCode::Unauthorized,
    )
    .await;
    // First frame not a join.
    let mut c = Client::connect(s.addr).await;
    c.send_json(json!({"op": "ping"})).await;
    c.expect_error("bad_request").await;
    assert_eq!(c.closed().await, Some(4000));
}

#[tokio::test]
async fn full_room_and_member_list() {
    let s = TestServer::start().await;
    let room = s.create_room(json!({"maxPeers": 2})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let _a = s.join(&room, "a").await;
    let _b = s.join(&room, "b").await;
    Client::join_fails(
        s.addr,
        s.token(&room, "c"),
        "room_full",
        CloseCode::RoomFull,
    )
    .await;

    let private = s
        .create_room(json!({"owner": "olivia", "members": ["victor"]}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.join(&private, "olivia").await;
    s.join(&private, "victor").await;
    Client::join_fails(
        s.addr,
        s.token(&private, "mallory"),
        "forbidden",
        CloseCode::Forbidden,
    )
    .await;
}

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_usable() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    for bad in [
        "not json",
        "[\"ping\"]",
        "{\"op\":\"nope\",\"ref\":3}",
        "{\"op\":\"signal\",\"data\":1}",
        "{\"op\":\"send\"}",
        "{\"op\":\"send\",\"to\":\"x\",\"msg\":1}",
        "{\"op\":\"join\",\"token\":\"t\"}",
    ] {
        a.send_text(bad).await;
        let e = a.expect_error("bad_request").await;
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
        if bad.contains("\"ref\":3") {
            assert_eq!(e["ref"], 3);
        }
    }
    a.ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![
        1, 2, 3,
    ]))
    .await
    .unwrap();
    a.expect_error("bad_request").await;
    a.assert_alive().await;
}

use futures_util::SinkExt as _;

#[tokio::test]
async fn permissions_without_send_data_refuse_send_but_allow_signal() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut viewer = crate::common::Client::connect(s.addr).await;
    viewer
        .send_frame(&ClientMessage::Join {
            token: s.token_with(&room, "v", |c| {
                c.permissions = Some(bluecam_proto::Permissions {
                    publish_media: false,
                    subscribe_media: true,
                    send_data: false,
                })
            }),
            resume: None,
        })
        .await;
    viewer.expect_joined().await;
    let mut b = s.join(&room, "b").await;
    viewer.recv_op("peer_joined").await;
    viewer
        .send_json(json!({"op": "send", "msg": 1, "ref": 1}))
        .await;
    viewer.expect_error("permission_denied").await;
    viewer
        .send_json(json!({"op": "signal", "to": b.id(), "data": 1}))
        .await;
    assert_eq!(b.recv_op("signal").await["from"], viewer.id());
}

#[tokio::test]
async fn joined_carries_configured_ice_servers_and_per_session_turn_credentials() {
    let s = TestServer::with(|c| {
        c.ice_servers = vec![bluecam_proto::IceServer {
            urls: vec!["stun:stun.example.com:3478".into()],
            username: None,
            credential: None,
        }];
        c.turn = Some(bluecam_server::config::TurnConfig {
            urls: vec!["turn:turn.example.com:3478".into()],
            secret: "shared".into(),
            ttl_secs: 600,
        });
    })
    .await;
    let room = s.room().await;
    let a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    let ice_a = &a.joined.as_ref().unwrap().ice_servers;
    let ice_b = &b.joined.as_ref().unwrap().ice_servers;
    // The configured servers, the built-in STUN, then this session's TURN.
    assert_eq!(ice_a[0].urls, ["stun:stun.example.com:3478"]);
    assert_eq!(ice_a[1].urls, [format!("stun:127.0.0.1:{}", s.addr.port())]);
    let (ice_a, ice_b) = (&ice_a[1..], &ice_b[1..]);
    assert_eq!(ice_a[1].urls, ["turn:turn.example.com:3478"]);
    let user = ice_a[1].username.as_deref().unwrap();
    let (expiry, _) = user.split_once(':').unwrap();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry >= crate::common::now() + 590 && expiry <= crate::common::now() + 610);
    assert_ne!(
        ice_a[1].username, ice_b[1].username,
        "credentials are per session"
    );
    assert!(ice_a[1].credential.as_ref().is_some_and(|c| c.len() == 28));
}

/// A handshake in one piece is answered on the socket itself (no `date`: hyper dates its
/// answers); one whose head comes in pieces, through hyper. Both become WebSockets that join.
#[tokio::test]
async fn a_websocket_handshake_in_one_piece_or_in_pieces_both_join() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let s = TestServer::start().await;
    let room = s.room().await;
    let head = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    );
    for (i, cut) in [head.len(), 20].into_iter().enumerate() {
        let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        tcp.write_all(&head.as_bytes()[..cut]).await.unwrap();
        if cut < head.len() {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            tcp.write_all(&head.as_bytes()[cut..]).await.unwrap();
        }
        // The answer's head, a byte at a time (a frame may follow it).
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            answer.push(tcp.read_u8().await.unwrap());
        }
        let answer = String::from_utf8(answer).unwrap().to_ascii_lowercase();
        assert!(answer.starts_with("http/1.1 101 "), "{answer}");
        assert!(
            answer.contains("\r\nsec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
            "{answer}"
        );
        if cut == head.len() {
            assert!(!answer.contains("\r\ndate:"), "answered directly: {answer}");
        }
        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
            tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let mut c = Client { ws, joined: None };
        c.send_frame(&ClientMessage::Join {
            token: s.token(&room, &format!("p{i}")),
            resume: None,
        })
        .await;
        c.expect_joined().await;
    }
}

/// The server pings a connection it has not heard from lately, and only that: a client that
/// talks (the SDK pings every 5 s when it has nothing to say) gets no WebSocket ping, a silent
/// one gets one per round (and answers it, so it stays).
#[tokio::test]
async fn only_a_silent_connection_is_pinged() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::with(|c| c.limits.ping_interval_secs = 1).await;
    let room = s.room().await;
    let mut talker = s.join(&room, "talker").await;
    let mut silent = s.join(&room, "silent").await;
    // Three rounds of pings; each client reads all along (tungstenite answers a ping when read).
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    async fn pings(client: &mut Client, talks: bool, until: tokio::time::Instant) -> usize {
        let ws = &mut client.ws;
        let mut pings = 0;
        let mut beat = tokio::time::interval(std::time::Duration::from_millis(250));
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return pings,
                _ = beat.tick(), if talks => {
                    let ping = Message::text(r#"{"op":"ping"}"#);
                    futures_util::SinkExt::send(ws, ping).await.unwrap();
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    Some(Ok(_)) => {}
                    other => panic!("the connection ended: {other:?}"),
                },
            }
        }
    }
    let (talked, was_silent) = tokio::join!(
        pings(&mut talker, true, until),
        pings(&mut silent, false, until)
    );
    assert_eq!(talked, 0, "a client heard from lately was pinged");
    assert!(
        was_silent >= 2,
        "a silent client got {was_silent} pings in three rounds"
    );
}
