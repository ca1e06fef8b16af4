//! Resuming a session after a dropped connection.

use crate::common::{Client, TestServer, creds};
use bluecam_proto::{ClientMessage, CloseCode, ResumeCredentials};
use serde_json::json;

#[tokio::test]
async fn resume_within_the_window_keeps_the_peer_and_delivers_what_was_sent_meanwhile() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    let b_id = b.id();
    let b_creds = creds(&b);
    // b's socket drops (no leave).
    drop(b.ws);
    // Frames sent once the server has noticed the drop are kept for b (frames written to the
    // dead socket before that are the SDK's end-to-end acks' business).
    s.wait_disconnected(&room, &b_id).await;
    for i in 0..50 {
        a.send_json(json!({"op": "send", "msg": i})).await;
    }
    a.send_json(json!({"op": "signal", "to": b_id, "data": "sig"}))
        .await;
    a.assert_alive().await; // no unknown_peer: b is still in the room

    let mut b2 = Client::connect(s.addr).await;
    b2.send_frame(&ClientMessage::Join {
        token: s.token(&room, "b"),
        resume: Some(b_creds),
    })
    .await;
    let joined = b2.expect_joined().await;
    assert_eq!(joined["resumed"], true);
    assert_eq!(joined["self"]["id"], b_id);
    assert_eq!(joined["peers"][0]["id"], a.id());
    for i in 0..50 {
        let m = b2.recv_op("message").await;
        assert_eq!(m["msg"], i, "in order, exactly once");
    }
    assert_eq!(b2.recv_op("signal").await["data"], "sig");
    // Nothing more was kept (no duplicates), and new frames flow.
    a.send_json(json!({"op": "send", "msg": "after"})).await;
    assert_eq!(b2.recv().await["msg"], "after");
    // a never saw b leave.
    a.send_json(json!({"op": "ping"})).await;
    assert_eq!(a.recv().await["op"], "pong");
}

#[tokio::test]
async fn resume_takes_over_a_half_open_connection() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    let mut old = b;
    let mut b2 = Client::connect(s.addr).await;
    b2.send_frame(&ClientMessage::Join {
        token: s.token(&room, "b"),
        resume: Some(creds(&old)),
    })
    .await;
    assert_eq!(b2.expect_joined().await["self"]["id"], old.id());
    assert_eq!(old.closed().await, Some(CloseCode::Replaced.code()));
    a.send_json(json!({"op": "send", "msg": "x"})).await;
    assert_eq!(b2.recv_op("message").await["msg"], "x");
}

#[tokio::test]
async fn resume_after_the_window_fails_and_others_see_the_peer_leave() {
    let s = TestServer::with(|c| c.limits.resume_window_secs = 1).await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let b = s.join(&room, "b").await;
    a.recv_op("peer_joined").await;
    let b_creds = creds(&b);
    let b_id = b.id();
    drop(b.ws);
    let left = a.recv_op("peer_left").await;
    assert_eq!(left["peer"]["id"], b_id);
    assert_eq!(left["reason"], "timeout");
    let mut b2 = Client::connect(s.addr).await;
    b2.send_frame(&ClientMessage::Join {
        token: s.token(&room, "b"),
        resume: Some(b_creds),
    })
    .await;
    b2.expect_error("session_expired").await;
    assert_eq!(b2.closed().await, Some(CloseCode::SessionExpired.code()));
}

#[tokio::test]
async fn resume_with_a_token_for_another_room_or_identity_is_unauthorized() {
    let s = TestServer::start().await;
    let (room, other) = (s.room().await, s.room().await);
    let b = s.join(&room, "b").await;
    let b_creds = creds(&b);
    for token in [s.token(&other, "b"), s.token(&room, "eve")] {
        let mut c = Client::connect(s.addr).await;
        c.send_frame(&ClientMessage::Join {
            token,
            resume: Some(b_creds.clone()),
        })
        .await;
        c.expect_error("unauthorized").await;
        assert_eq!(c.closed().await, Some(CloseCode::Unauthorized.code()));
    }
    // A wrong secret is indistinguishable from an expired session.
    let mut c = Client::connect(s.addr).await;
    c.send_frame(&ClientMessage::Join {
        token: s.token(&room, "b"),
        resume: Some(ResumeCredentials {
            session: b_creds.session.clone(),
            secret: bluecam_proto::SessionSecret::new("guess"),
        }),
    })
    .await;
    c.expect_error("session_expired").await;
}
