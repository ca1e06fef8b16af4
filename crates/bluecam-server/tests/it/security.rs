//! Regression tests of the security review (docs/security.md): each reproduces a finding as it
//! was exploited against the server before its fix.

use crate::{
    cluster::{Redis, node},
    common::{Client, SECRET, TestServer, WAIT, temp_dir},
    transport::HttpClient,
};
use bluecam_proto::ClientMessage;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A counter's value on one server's `/metrics` (0 when it was never incremented).
async fn counter(server: &TestServer, name: &str) -> u64 {
    let text = server.get_text("/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn join_frame(server: &TestServer, room: &str, identity: &str) -> ClientMessage<'static> {
    ClientMessage::Join {
        token: server.token(room, identity),
        resume: None,
    }
}

/// Finding 1: eight concurrent 2 MB sends naming another node's session, with made-up ids,
/// were each published to Redis six times larger (escaped), until Redis cut that node's
/// subscription. Now a session id carries a tag only the cluster's secret makes: a forged one
/// is answered where it arrives, and nothing reaches Redis.
#[tokio::test]
async fn forged_session_ids_are_answered_where_they_arrive_and_never_reach_redis() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = a.room().await;
    let mut alice = a.join(&room, "alice").await;
    let mut bob = b.join(&room, "bob").await;
    alice.recv_op("peer_joined").await;
    let http = reqwest::Client::new();

    // A join that fails hands out no session, and so names no node.
    let res = http
        .post(a.url("/v1/http/open"))
        .body(json!({"op": "join", "token": "garbage"}).to_string())
        .send()
        .await
        .unwrap();
    let failed: Value = res.json().await.unwrap();
    assert_eq!(failed["frames"][0]["code"], "unauthorized", "{failed}");
    assert!(failed.get("close").is_some(), "{failed}");
    assert!(
        failed.get("sid").is_none(),
        "a failed join got a session: {failed}"
    );

    // A real session on b names b's node: an attacker can learn it.
    let mut h = HttpClient::open(&b.url(""), &join_frame(&b, &room, "http")).await;
    h.recv_op("joined").await;
    let b_node = h.sid.split('.').next().unwrap().to_owned();
    let real_tag = h.sid.rsplit('.').next().unwrap().to_owned();

    // What nodes pass each other goes through `bc:h:{node}` on this test's own Redis (the
    // metrics are the process's, shared with the tests running beside this one).
    let config = fred::types::config::Config::from_url(&redis.url()).unwrap();
    let watcher = fred::types::Builder::from_config(config)
        .build_subscriber_client()
        .unwrap();
    fred::prelude::ClientLike::init(&watcher).await.unwrap();
    let mut passed_on = fred::prelude::EventInterface::message_rx(&watcher);
    fred::prelude::PubsubInterface::psubscribe(&watcher, "bc:h:*")
        .await
        .unwrap();

    let junk = vec![1u8; 2_000_000];
    let forged = |i: usize| {
        let sid = match i {
            // The real session's id with its tag moved onto another id.
            0 => format!("{b_node}.forged0000000000000000000.{real_tag}"),
            _ => format!("{b_node}.forged{i}.AAAAAAAAAAAAAAAAAAAAAA"),
        };
        let mut body = json!({"sid": sid, "seq": 2}).to_string().into_bytes();
        body.push(b'\n');
        body.extend_from_slice(&junk);
        body
    };
    let sends = (0..8).map(|i| http.post(a.url("/v1/http/send")).body(forged(i)).send());
    for res in futures_util::future::join_all(sends).await {
        assert_eq!(res.unwrap().status(), 404);
    }
    // The real session's id with one character of its tag changed: refused too.
    let mut altered = h.sid.clone();
    let last = altered.pop().unwrap();
    altered.push(if last == 'A' { 'B' } else { 'A' });
    let res = http
        .post(a.url("/v1/http/poll"))
        .body(json!({"sid": altered, "ack": 0}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // (Redis delivers in order: a marker published now arrives after anything before it.)
    let marker = redis_client(&redis).await;
    let _: i64 = fred::prelude::PubsubInterface::publish(&marker, "bc:h:mark", "m")
        .await
        .unwrap();
    let first = passed_on.recv().await.unwrap();
    assert_eq!(
        &*first.channel, "bc:h:mark",
        "a forged request was passed on through Redis"
    );
    assert!(counter(&a, "bluecam_http_transport_forged_sids_total").await >= 9);

    // b's subscription and its rooms are untouched: messages cross both ways, in order.
    for i in 0..20 {
        alice
            .send_json(json!({"op": "send", "to": [bob.id()], "msg": i}))
            .await;
        bob.send_json(json!({"op": "send", "to": [alice.id()], "msg": i}))
            .await;
    }
    for i in 0..20 {
        assert_eq!(bob.recv_op("message").await["msg"], i);
        assert_eq!(alice.recv_op("message").await["msg"], i);
    }
    // And a real session is still served through the other node.
    h.bases = vec![a.url("")];
    let to_bob = json!({"op": "send", "to": [bob.id()], "msg": "via a"}).to_string();
    h.send(&[to_bob]).await;
    assert_eq!(bob.recv_op("message").await["msg"], "via a");
    assert!(counter(&a, "bluecam_http_transport_forwarded_total").await >= 1);
    let forwarded = passed_on.recv().await.unwrap();
    assert_eq!(&*forwarded.channel, format!("bc:h:{b_node}"));
}

async fn redis_client(redis: &Redis) -> fred::clients::Client {
    let config = fred::types::config::Config::from_url(&redis.url()).unwrap();
    let client = fred::types::Builder::from_config(config).build().unwrap();
    fred::prelude::ClientLike::init(&client).await.unwrap();
    client
}

/// Finding 1 (rate): requests for sessions of other nodes from one address are limited by
/// bytes per second, whatever their session.
#[tokio::test]
async fn requests_passed_to_other_nodes_are_rate_limited_per_source() {
    let redis = Redis::start();
    let a = TestServer::with(|c| {
        c.redis_url = Some(redis.url());
        c.cluster.node_ttl_secs = 3;
        // Loopback is exempt by default (a proxy on the same host carries everyone).
        c.limits.per_source_exempt = Vec::new();
    })
    .await;
    let b = node(&redis).await;
    let room = b.room().await;
    let mut h = HttpClient::open(&b.url(""), &join_frame(&b, &room, "http")).await;
    h.recv_op("joined").await;
    h.send(&[json!({"op": "ping"}).to_string()]).await;
    // Frame 2 was taken: sends numbered from 2 again deliver nothing, but each is passed on.
    let line = format!("{{\"op\":\"send\",\"msg\":\"{}\"}}", "x".repeat(1_000_000));
    let body = format!("{}\n{line}", json!({"sid": h.sid, "seq": 2}));
    let http = reqwest::Client::new();
    let mut limited = false;
    for _ in 0..20 {
        let res = http
            .post(a.url("/v1/http/send"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            let v: Value = res.json().await.unwrap();
            assert_eq!(v["error"]["code"], "rate_limited");
            limited = true;
            break;
        }
        assert_eq!(res.status(), 200);
    }
    assert!(limited, "20 MB passed on from one address without a limit");
    assert!(counter(&a, "bluecam_http_transport_forward_limited_total").await >= 1);
}

/// Finding 1 (answers): a poll that does not move its `ack` gets the same frames again, so
/// polls passed to another node could each bring back a large answer for a small request. The
/// answers' bytes are charged too, and the node's own budget holds for every source together,
/// exempt ones included (behind a proxy on the same host every client is loopback): with the
/// default settings, repeated polls end in 429.
#[tokio::test]
async fn polls_passed_to_other_nodes_are_charged_for_their_answers_whoever_asks() {
    let redis = Redis::start();
    let (a, b) = (node(&redis).await, node(&redis).await);
    let room = b.room().await;
    let mut h = HttpClient::open(&b.url(""), &join_frame(&b, &room, "http")).await;
    let joined = h.recv_op("joined").await;
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    // About 1 MB waiting for the HTTP peer, never acknowledged.
    let mut ws = b.join(&room, "ws").await;
    let chunk = "y".repeat(250_000);
    for _ in 0..4 {
        ws.send_json(json!({"op": "send", "to": [hid], "msg": chunk}))
            .await;
    }
    let http = reqwest::Client::new();
    let poll = json!({"sid": h.sid, "ack": 0}).to_string();
    let mut limited = false;
    let mut answered_bytes = 0usize;
    for _ in 0..200 {
        let res = http
            .post(a.url("/v1/http/poll"))
            .body(poll.clone())
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = true;
            break;
        }
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        // Passed-on answers come in batches of at most 256 KiB of frames (one frame at least).
        assert!(text.len() < 300_000, "an answer of {} bytes", text.len());
        answered_bytes += text.len();
    }
    assert!(
        limited,
        "{answered_bytes} bytes of answers passed on for 200 small polls without a limit"
    );
    assert!(counter(&a, "bluecam_http_transport_forward_limited_total").await >= 1);
}

/// Reads from `stream` until it closes or `WAIT` passes; the text read.
async fn read_answer(stream: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Finding 2: a trickled body to `/v1/http/open` stayed open past 100 s, and a declared
/// `Content-Length: 100000000` on `/v1/http/send` was not refused.
#[tokio::test]
async fn transport_bodies_have_a_read_timeout_and_declared_lengths_are_refused_at_once() {
    let s = TestServer::with(|c| c.limits.http_request_timeout_secs = 1).await;
    // Trickled: a few bytes of a declared 100, then silence.
    let mut trickle = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    trickle
        .write_all(
            b"POST /v1/http/open HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 100\r\n\r\n{\"op\"",
        )
        .await
        .unwrap();
    let answer = read_answer(&mut trickle).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // Declared far over the route's limit: 413 before any of it is sent.
    for (path, declared) in [
        ("/v1/http/send", 100_000_000u64),
        ("/v1/http/poll", 4096),
        ("/v1/http/open", 10_000_000),
    ] {
        let mut big = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {declared}\r\n\r\n"
        );
        big.write_all(head.as_bytes()).await.unwrap();
        let answer = read_answer(&mut big).await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(answer.contains("too_large"), "{path}: {answer}");
    }
    // Sent without a declared length (chunked), over the poll's limit: 413 too.
    let mut chunked = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let mut request =
        b"POST /v1/http/poll HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nbb8\r\n"
            .to_vec();
    request.extend_from_slice(&[b' '; 3000]);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    chunked.write_all(&request).await.unwrap();
    let answer = read_answer(&mut chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

/// Finding 3: a token for a room that was deleted and created again with the same id opened
/// the new room. A token issued before its room was created is refused now.
#[tokio::test]
async fn a_token_issued_before_its_room_was_created_again_is_refused() {
    let s = TestServer::start().await;
    s.create_room(json!({"id": "standup"})).await;
    // Issued a minute ago, for the room of that id that existed then.
    let old = s.token_with("standup", "former", |c| c.iat -= 60);
    s.delete_room("standup").await;
    s.create_room(json!({"id": "standup"})).await;
    Client::join_fails(
        s.addr,
        old,
        "unauthorized",
        bluecam_proto::CloseCode::for_join_error(bluecam_proto::ErrorCode::Unauthorized),
    )
    .await;
    // One issued in the future would pass that rule for every later room of the id: refused.
    let future = s.token_with("standup", "clock", |c| c.iat += 600);
    Client::join_fails(
        s.addr,
        future,
        "unauthorized",
        bluecam_proto::CloseCode::for_join_error(bluecam_proto::ErrorCode::Unauthorized),
    )
    .await;
    // One issued now opens it.
    s.join("standup", "invitee").await;
}

/// Finding 4: the demo, on by default for a loopback bind, was public behind a reverse proxy
/// on the same host; its rooms had no rate, and its guests got TURN credentials. The default
/// demo now serves only a browser that opened the link printed at start (a cookie carries its
/// key), in requests naming a local host without a proxy's forwarding header.
#[tokio::test]
async fn the_default_demo_serves_only_this_machine_within_a_rate_and_without_turn() {
    let s = TestServer::with(|c| {
        c.limits.per_source_exempt = Vec::new();
        c.turn = Some(bluecam_server::config::TurnConfig {
            urls: vec!["turn:127.0.0.1:3478".into()],
            secret: "turn-secret-for-the-test".into(),
            ttl_secs: 600,
        });
    })
    .await;
    let key = s
        .demo_key
        .clone()
        .expect("the default demo is on, with a key");
    let http = reqwest::Client::new();
    let cookie = format!("bluecam_demo={key}");
    // Without the key: what a proxy in front of this loopback server passes on, with the
    // server's own address as Host (nginx's default) and no forwarding header.
    let res = http.post(s.url("/demo/rooms")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let page = http
        .get(s.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("New private room"),
        "the demo page without its key"
    );
    let wrong = http
        .post(s.url("/demo/rooms"))
        .header("cookie", "bluecam_demo=guessed-key-0000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 404);
    // With the key but through a proxy (a forwarding header) or under a public name.
    for (name, value) in [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-real-ip", "203.0.113.9"),
        ("x-forwarded-host", "meet.example.com"),
        ("forwarded", "for=203.0.113.9"),
        ("host", "meet.example.com"),
        ("host", "localhost.example.com"),
    ] {
        let res = http
            .post(s.url("/demo/rooms"))
            .header("cookie", &cookie)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{name}: {value}");
        let link = http
            .get(s.url(&format!("/?demo={key}")))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert!(
            link.headers().get("set-cookie").is_none(),
            "{name}: {value}"
        );
    }
    // The link, opened on this machine: the demo page and the cookie.
    let link = http
        .get(s.url(&format!("/?demo={key}")))
        .send()
        .await
        .unwrap();
    let set = link.headers()["set-cookie"].to_str().unwrap().to_owned();
    // Which page `/` is depends on the request: no cache keeps it for another.
    assert_eq!(link.headers()["cache-control"], "private, no-cache");
    assert_eq!(link.headers()["vary"], "Cookie");
    assert!(
        set.starts_with(&cookie) && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(link.text().await.unwrap().contains("New private room"));
    // With it: five rooms at once from one source, then 429.
    let mut rooms = Vec::new();
    for _ in 0..5 {
        let res = http
            .post(s.url("/demo/rooms"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        rooms.push(v["room"]["id"].as_str().unwrap().to_owned());
    }
    let res = http
        .post(s.url("/demo/rooms"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    // A demo guest gets no TURN credentials; a backend's user does.
    let res = http
        .post(s.url(&format!("/demo/rooms/{}/tokens", rooms[0])))
        .header("cookie", &cookie)
        .json(&json!({"name": "guest"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let token: Value = res.json().await.unwrap();
    let mut guest = Client::connect(s.addr).await;
    guest
        .send_frame(&ClientMessage::Join {
            token: token["token"].as_str().unwrap().to_owned(),
            resume: None,
        })
        .await;
    let joined = guest.expect_joined().await;
    assert!(
        !joined["iceServers"].to_string().contains("turn:"),
        "{joined}"
    );
    let room = s.room().await;
    let mut user = Client::connect(s.addr).await;
    user.send_frame(&join_frame(&s, &room, "user")).await;
    let joined = user.expect_joined().await;
    assert!(
        joined["iceServers"].to_string().contains("turn:"),
        "{joined}"
    );
}

/// A fresh CA-less certificate for 127.0.0.1 in `dir`: (certificate, key) files.
fn certificate(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let generated = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let (cert, key) = (dir.join("redis.crt"), dir.join("redis.key"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

async fn bind(config: bluecam_server::Config) -> Result<(), bluecam_server::ServerError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    bluecam_server::Server::bind(listener, config)
        .await
        .map(|_| ())
}

/// Finding 5: `rediss://` connected without TLS. Now it is verified TLS, or no start.
#[tokio::test]
async fn rediss_is_verified_tls_or_the_node_does_not_start() {
    let dir = temp_dir();
    let (cert, key) = certificate(&dir);
    let redis = Redis::start_tls(cert.clone(), key);
    let url = redis.url().replace("redis://", "rediss://");
    let cluster = |url: &str, ca: Option<std::path::PathBuf>| bluecam_server::Config {
        data_dir: temp_dir(),
        api_secret: Some(SECRET.into()),
        redis_url: Some(url.to_owned()),
        redis_ca: ca,
        ..Default::default()
    };
    // Trusting its CA: a working node, rooms and joins through the TLS Redis.
    let a = TestServer::with(|c| {
        c.redis_url = Some(url.clone());
        c.redis_ca = Some(cert.clone());
    })
    .await;
    let room = a.room().await;
    a.join(&room, "alice").await;
    // Not trusting it (the system's roots): no start.
    let err = tokio::time::timeout(WAIT * 2, bind(cluster(&url, None)))
        .await
        .expect("a node with an unverifiable Redis neither started nor gave up");
    assert!(
        err.is_err(),
        "a node trusted a certificate no CA vouches for"
    );
    // A CA setting that cannot be honoured (a plain URL): refused at once.
    let plain = redis.url();
    let err = bind(cluster(&plain, Some(cert.clone()))).await.unwrap_err();
    assert!(err.to_string().contains("rediss"), "{err}");
}
