//! Limits and their overflow policies: frame size, rate, bad frames, slow readers, deadlines.

use crate::common::{Client, TestServer};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn oversized_frame_gets_too_large_and_beyond_the_cap_closes_1009() {
    let s = TestServer::with(|c| {
        c.limits.max_frame_bytes = 10_000;
        c.limits.rate_burst_bytes = 10 << 20;
    })
    .await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let big = "x".repeat(15_000);
    a.send_json(json!({"op": "send", "msg": big})).await;
    a.expect_error("too_large").await;
    a.assert_alive().await;
    let huge = "x".repeat(30_000);
    a.send_json(json!({"op": "send", "msg": huge})).await;
    assert_eq!(a.closed().await, Some(1009));
}

#[tokio::test]
async fn a_flood_is_rate_limited_with_retry_after() {
    let s = TestServer::with(|c| {
        c.limits.rate_frames_per_sec = 5;
        c.limits.rate_burst_frames = 10;
    })
    .await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let mut b = s.join(&room, "b").await;
    for i in 0..30 {
        a.send_json(json!({"op": "send", "msg": i, "ref": i})).await;
    }
    let mut delivered = 0;
    let mut limited = Vec::new();
    // Every frame is accounted for: delivered to b, or refused to a with its ref.
    while delivered + limited.len() < 30 {
        tokio::select! {
            m = b.recv_op("message") => { let _ = m; delivered += 1; }
            e = a.recv_op("error") => {
                assert_eq!(e["code"], "rate_limited");
                assert!(e["retryAfterMs"].as_u64().unwrap() > 0);
                limited.push(e["ref"].as_u64().unwrap());
            }
        }
    }
    assert!((10..30).contains(&delivered), "delivered {delivered}");
    assert_eq!(limited.len(), 30 - delivered);
    // Rate limiting is back-pressure, not a fault: the connection stays.
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.assert_alive().await;
}

#[tokio::test]
async fn too_many_bad_frames_close_4029() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    for _ in 0..21 {
        a.send_text("garbage").await;
    }
    let mut last = json!(null);
    for _ in 0..21 {
        last = a.expect_error("bad_request").await;
    }
    assert_eq!(last["close"], 4029);
    assert_eq!(a.closed().await, Some(4029));
}

#[tokio::test]
async fn join_deadline_closes_4008() {
    let s = TestServer::with(|c| c.limits.join_timeout_secs = 1).await;
    let mut c = Client::connect(s.addr).await;
    c.expect_error("bad_request").await;
    assert_eq!(c.closed().await, Some(4008));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_disconnected_while_a_fast_peer_gets_every_frame() {
    let s = TestServer::with(|c| {
        c.limits.outbound_queue_bytes = 256 << 10;
        // Room for everything the slow reader misses, so its resume must be gapless.
        c.limits.resume_buffer_bytes = 64 << 20;
        c.limits.resume_buffer_frames = 8192;
        // A replay is exempt from the byte bound but not from the queue's frame slots: room
        // for the whole backlog, so a resume cannot overflow before it has sent `joined`.
        c.limits.outbound_queue_frames = 16_384;
        // The queue bound is under test, not the stall rule (which a loaded machine can trip
        // for the fast reader too).
        c.limits.write_stall_ms = 600_000;
        c.limits.rate_frames_per_sec = 1_000_000;
        c.limits.rate_burst_frames = 1_000_000;
        c.limits.rate_bytes_per_sec = 1 << 40;
        c.limits.rate_burst_bytes = 1 << 40;
    })
    .await;
    let room = s.room().await;
    let mut sender = s.join(&room, "sender").await;
    let mut fast = s.join(&room, "fast").await;
    let mut slow = s.join(&room, "slow").await; // never reads until the end
    sender.recv_op("peer_joined").await;
    sender.recv_op("peer_joined").await;
    fast.recv_op("peer_joined").await;
    let pad = "y".repeat(8 << 10);
    let n = 4000u64; // 32 MiB: far more than socket buffers plus the 256 KiB queue
    // The sender keeps at most `window` frames ahead of the fast reader, as a well-behaved
    // app would: the fast peer's queue never fills, the slow one's must.
    let window = 8u64;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0u64);
    let receiver = tokio::spawn(async move {
        let mut next = 0u64;
        while next < n {
            let m = fast.recv_op("message").await;
            assert_eq!(m["msg"]["i"], next, "fast peer lost or reordered a frame");
            next += 1;
            progress_tx.send_replace(next);
        }
        fast
    });
    let slow_id = slow.id();
    let sending = tokio::spawn(async move {
        for i in 0..n {
            while i >= *progress.borrow() + window {
                progress.changed().await.unwrap();
            }
            sender
                .send_json(json!({"op": "send", "msg": {"i": i, "pad": pad}}))
                .await;
        }
        sender
    });
    // The slow reader is cut off mid-stream: once the server has detached it, it reads again
    // (a close frame cannot reach a client that reads nothing). It sees the slow-consumer
    // code after the frames already in its socket, then resumes and gets exactly the rest, in
    // order: the frames that were in its queue or arrived after the overflow were kept for it.
    s.wait_disconnected(&room, &slow_id).await;
    let mut seen = 0u64;
    let code = loop {
        match slow.next().await {
            Ok(m) if m["op"] == "message" => {
                assert_eq!(m["msg"]["i"], seen, "slow reader lost or reordered a frame");
                seen += 1;
            }
            Ok(_) => {}
            Err(crate::common::Closed(code)) => break code,
        }
    };
    assert_eq!(code, Some(4030));
    assert!(seen < n, "the slow reader was never cut off");
    // The backlog may itself exceed the small outbound queue, so, like the SDK, resume again
    // after each 4030 until everything has arrived; every round must make progress.
    let session = slow.joined.as_ref().unwrap().session.clone();
    let mut rounds = 0;
    while seen < n {
        rounds += 1;
        assert!(rounds < 200, "no progress after {rounds} resumes");
        let mut back = crate::common::Client::connect(s.addr).await;
        back.send_frame(&bluecam_proto::ClientMessage::Join {
            token: s.token(&room, "slow"),
            resume: Some(bluecam_proto::ResumeCredentials {
                session: session.id.clone(),
                secret: session.secret.clone(),
            }),
        })
        .await;
        assert_eq!(back.expect_joined().await["resumed"], true);
        while seen < n {
            match back.next().await {
                Ok(m) if m["op"] == "message" => {
                    assert_eq!(
                        m["msg"]["i"], seen,
                        "resume lost, repeated or reordered a frame"
                    );
                    seen += 1;
                }
                Ok(_) => {}
                Err(crate::common::Closed(code)) => {
                    assert_eq!(code, Some(4030));
                    break;
                }
            }
        }
        if seen == n {
            back.send_json(json!({"op": "ping"})).await;
            assert_eq!(
                back.recv().await["op"],
                "pong",
                "nothing beyond the last frame"
            );
        }
    }
    let _sender = sending.await.unwrap();
    receiver.await.unwrap();
}

/// Limits with no rate limit on the sender (the tests below flood on purpose).
fn unlimited_rates(c: &mut bluecam_server::config::Config) {
    c.limits.rate_frames_per_sec = 1_000_000;
    c.limits.rate_burst_frames = 1_000_000;
    c.limits.rate_bytes_per_sec = 1 << 40;
    c.limits.rate_burst_bytes = 1 << 40;
}

/// Guards the time-based slow-consumer rule: with a queue bound too large to ever fill, a peer
/// that stops reading is still cut off once its socket takes nothing for `write_stall_ms`.
#[tokio::test]
async fn a_reader_that_stops_is_cut_off_by_the_stall_rule_long_before_its_queue_fills() {
    let s = TestServer::with(|c| {
        c.limits.outbound_queue_bytes = 512 << 20;
        c.limits.outbound_queue_frames = 1 << 20;
        c.limits.write_stall_ms = 300;
        unlimited_rates(c);
    })
    .await;
    let room = s.room().await;
    let mut sender = s.join(&room, "sender").await;
    let mut slow = s.join(&room, "slow").await; // never reads until the end
    sender.recv_op("peer_joined").await;
    let pad = "z".repeat(16 << 10);
    let slow_id = slow.id();
    // 16 KiB at a time: socket buffers fill within seconds; the queue never would. Until this
    // server (not a neighbour test's: metrics are process-wide) has detached the slow peer.
    let mut sent = 0u64;
    loop {
        sender
            .send_json(json!({"op": "send", "msg": {"i": sent, "pad": pad}}))
            .await;
        sent += 1;
        if sent.is_multiple_of(64) {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            // Detached, or already gone: a fast server can overflow the detached peer's resume
            // buffer (ending its session) between two looks.
            if s.presence(&room, &slow_id).await != Some(true) {
                break;
            }
        }
        assert!(sent < 200_000, "never cut off");
    }
    // What reached its socket is readable, then the close says slow consumer.
    let code = loop {
        match slow.next().await {
            Ok(_) => {}
            Err(crate::common::Closed(code)) => break code,
        }
    };
    assert_eq!(code, Some(4030));
}

/// The answer to a `ping` is written by the connection itself, not through its queue: a client
/// that pings and never reads fills its socket with `pong`s alone, and is cut off by the same
/// write-stall rule (not left with a write that never ends); its room goes on.
#[tokio::test]
async fn a_client_that_pings_and_never_reads_is_cut_off_by_the_stall_rule() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::with(|c| {
        c.limits.write_stall_ms = 300;
        unlimited_rates(c);
    })
    .await;
    let room = s.room().await;
    let mut other = s.join(&room, "other").await;
    let mut pinger = s.join(&room, "pinger").await; // never reads until the end
    other.recv_op("peer_joined").await;
    let pinger_id = pinger.id();
    let mut sent = 0u64;
    // (Well within the idle timeout: the other peer's client reads nothing until the end, so it
    // does not answer the server's pings either.)
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        // A batch of pings, then a look at the peer. Once the server stops reading (its write
        // waits), the batch cannot go out: given up after a while, the look still comes.
        let batch = async {
            for _ in 0..1024 {
                pinger.ws.feed(Message::text(r#"{"op":"ping"}"#)).await?;
            }
            pinger.ws.flush().await
        };
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(200), batch).await {
            sent += 1024;
        }
        // Detached, or already gone.
        if s.presence(&room, &pinger_id).await != Some(true) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not cut off after {sent} pings in 20 s"
        );
    }
    assert!(sent > 0);
    // The pongs that reached its socket are readable, then the close says slow consumer.
    let mut pongs = 0u64;
    let code = loop {
        match pinger.next().await {
            Ok(frame) => {
                assert_eq!(frame["op"], "pong", "only pongs were sent to it: {frame}");
                pongs += 1;
            }
            Err(crate::common::Closed(code)) => break code,
        }
    };
    assert!(pongs > 0, "no pong for {sent} pings");
    assert_eq!(code, Some(4030));
    other.assert_alive().await;
}

#[tokio::test]
async fn origin_allow_list_refuses_other_origins() {
    let s = TestServer::with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = format!("ws://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Origin", "https://app.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

/// The finding "the write-stall rule counted per feed": a reader that keeps reading, only
/// slowly (about 5 Mbit/s), must not be cut off because one large message takes longer than
/// `write_stall_ms` to reach it. The rule is about a socket that takes nothing.
#[tokio::test]
async fn a_slow_but_steady_reader_is_not_cut_off_by_the_stall_rule() {
    use bluecam_proto::ClientMessage;
    use futures_util::{SinkExt as _, StreamExt as _};
    use serde_json::Value;
    use tokio::io::AsyncReadExt as _;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::with(|c| {
        c.limits.outbound_queue_bytes = 64 << 20;
        c.limits.outbound_queue_frames = 1 << 16;
        c.limits.write_stall_ms = 300;
        unlimited_rates(c);
    })
    .await;
    let room = s.room().await;
    let mut sender = s.join(&room, "sender").await;
    // The slow reader: a small receive buffer, and raw reads at a fixed pace once joined.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(32 << 10).unwrap();
    let tcp = socket.connect(s.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(format!("ws://{}/v1/ws", s.addr), tcp)
        .await
        .unwrap();
    let join = ClientMessage::Join {
        token: s.token(&room, "slow"),
        resume: None,
    };
    slow.send(Message::text(join.to_json())).await.unwrap();
    let joined = loop {
        if let Some(Ok(Message::Text(t))) = slow.next().await {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["op"] == "joined" {
                break v;
            }
        }
    };
    let slow_id = joined["self"]["id"].as_str().unwrap().to_owned();
    sender.recv_op("peer_joined").await;
    // Eight messages of 900 KiB: 7 MiB, more than the socket buffers hold.
    let pad = "z".repeat(900 << 10);
    for i in 0..8 {
        sender
            .send_json(json!({"op": "send", "to": [slow_id], "msg": {"i": i, "pad": pad}}))
            .await;
    }
    // 32 KiB every 50 ms (about 5 Mbit/s) for 4 s: well below one 900 KiB message per stall.
    let tcp = slow.get_mut();
    let mut buf = vec![0u8; 32 << 10];
    let mut total = 0usize;
    let until = std::time::Instant::now() + Duration::from_secs(4);
    while std::time::Instant::now() < until {
        let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf))
            .await
            .expect("the server stopped writing")
            .unwrap();
        assert!(n > 0, "closed after {total} bytes");
        total += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(total > 1 << 20, "only {total} bytes in 4 s");
    assert_eq!(
        s.presence(&room, &slow_id).await,
        Some(true),
        "cut off while reading steadily, after {total} bytes"
    );
}
