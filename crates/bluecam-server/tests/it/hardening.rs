//! Hostile input: slowloris and silent connections, connection caps, the demo's endpoints,
//! close codes that must arrive (lingering close), and error bodies for malformed requests.

use crate::common::{Client, SECRET, TestServer, WAIT, read_to_close};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpSocket, TcpStream},
};
use tokio_tungstenite::tungstenite::{
    Message,
    protocol::frame::{
        Frame,
        coding::{Data, OpCode},
    },
};

/// A TCP connection to `server` from the loopback address `source` (127.x.y.z).
async fn connect_from(source: Ipv4Addr, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(server).await.unwrap()
}

/// Sends one raw HTTP/1.1 request (the connection closes after it) and returns the status,
/// the lowercased header block and the body.
async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let bytes = read_to_close(&mut tcp).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("no HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_lowercase(), body.to_owned())
}

/// Asserts the documented error body with a 4xx status; returns its code.
fn assert_json_error(what: &str, status: u16, head: &str, body: &str) -> String {
    assert!((400..500).contains(&status), "{what}: status {status}");
    assert!(
        head.contains("content-type: application/json"),
        "{what}: not JSON:\n{head}\n{body}"
    );
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: {body}"));
    let code = v["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: {v}"));
    assert!(v["error"]["message"].is_string(), "{what}: {v}");
    code.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_and_silent_connections_are_cut_while_health_and_joins_keep_answering() {
    let s = TestServer::with(|c| {
        c.limits.http_header_timeout_secs = 2;
        c.limits.max_connections_per_source = 300;
        c.limits.per_source_exempt = Vec::new();
    })
    .await;
    let room = s.room().await;
    let addr = s.addr;
    // 300 silent connections from one address, 300 that send a request header one byte every
    // 500 ms from another (each byte well within any per-read timeout), and 50 more from the
    // first address, over its cap.
    let silent_src = Ipv4Addr::new(127, 0, 9, 1);
    let drip_src = Ipv4Addr::new(127, 0, 9, 2);
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(connect_from(silent_src, addr).await);
    }
    // Admitted and held (not refused or reset): nothing to read yet, and no end.
    for tcp in silent.iter().rev().take(10) {
        let mut buf = [0u8; 16];
        let err = tcp.try_read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    }
    let mut drips = Vec::new();
    for _ in 0..300 {
        let mut tcp = connect_from(drip_src, addr).await;
        drips.push(tokio::spawn(async move {
            let header =
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
            for b in header {
                if tcp.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            // Cut before the header was complete: the server answered nothing, or a 408.
            let answer = read_to_close(&mut tcp).await;
            assert!(
                answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
                "{}",
                String::from_utf8_lossy(&answer)
            );
        }));
    }
    // Over the per-source cap: a 503 with the JSON body, at once.
    for _ in 0..5 {
        let mut tcp = connect_from(silent_src, addr).await;
        let answer = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains(r#""code":"unavailable""#), "{answer}");
    }
    // While all that is held, the server answers others: health, and a WebSocket join.
    let res = s.http().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut a = s.join(&room, "a").await;
    a.assert_alive().await;
    // Every silent connection is cut by the header timeout (they stayed forever before).
    for tcp in &mut silent {
        assert!(read_to_close(tcp).await.is_empty());
    }
    for d in drips {
        d.await.unwrap();
    }
    // The joined WebSocket is not an idle HTTP connection: it lives on.
    a.assert_alive().await;
    // Places were given back: the address may connect again.
    let mut again = connect_from(silent_src, addr).await;
    again
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&read_to_close(&mut again).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let s = TestServer::with(|c| c.limits.http_header_timeout_secs = 1).await;
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // One answer, then the connection is closed while it idles (it stayed open before).
    let answer = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1);
}

#[tokio::test]
async fn a_body_that_trickles_gets_408_and_an_oversized_one_413_at_once() {
    let s = TestServer::with(|c| c.limits.http_request_timeout_secs = 1).await;
    let auth = format!("Authorization: Bearer {SECRET}\r\n");
    // Declares 100 bytes, sends one: the request times out instead of holding the connection.
    let (status, head, body) = raw_http(
        s.addr,
        &format!("POST /v1/rooms HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"),
    )
    .await;
    assert_eq!(status, 408);
    assert_json_error("trickle", status, &head, &body);
    // Declares far more than the limit: refused before any of it is read.
    let (status, head, body) = raw_http(
        s.addr,
        &format!("POST /v1/rooms HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{"),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(
        assert_json_error("oversize", status, &head, &body),
        "too_large"
    );
}

#[tokio::test]
async fn the_total_connection_cap_answers_503_json() {
    let s = TestServer::with(|c| c.limits.max_http_connections = 3).await;
    let held: Vec<TcpStream> =
        futures_util::future::join_all((0..3).map(|_| TcpStream::connect(s.addr)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let (status, head, body) = raw_http(
        s.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503);
    assert!(head.contains("content-type: application/json"));
    assert!(body.contains("too many connections on this node"), "{body}");
    drop(held);
    // Once they are gone, the server answers again (their places come back when the server
    // has seen them close: retry until it has).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = raw_http(
            s.addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never answered again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_demo_token_endpoint_refuses_backend_rooms_exactly_as_missing_ones() {
    let s = TestServer::start().await; // loopback: the demo is on
    s.create_room(json!({"id": "team-42"})).await;
    let ask = |id: &str| {
        let url = s.url(&format!("/demo/rooms/{id}/tokens"));
        let http = s.http();
        async move {
            let res = http.post(url).json(&json!({})).send().await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let backend = ask("team-42").await;
    let missing = ask("team-43").await;
    // A well-formed demo id with a forged MAC, and a real demo room.
    let forged = ask("demo-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(backend.0, 404);
    assert_eq!(backend, missing, "an existence oracle");
    assert_eq!(backend, forged);
    let demo: Value = s
        .http()
        .post(s.url("/demo/rooms"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = demo["room"]["id"].as_str().unwrap();
    assert_eq!(ask(id).await.0, 201);
    // A demo room that is gone answers like the others.
    s.delete_room(id).await;
    assert_eq!(ask(id).await, missing);
}

#[tokio::test]
async fn the_demo_is_off_by_default_behind_a_public_url() {
    let s = TestServer::with(|c| c.public_url = Some("https://meet.example.com".into())).await;
    let res = s.http().post(s.url("/demo/rooms")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    let local = TestServer::with(|c| c.public_url = Some("http://localhost:8080".into())).await;
    let res = local
        .http()
        .post(local.url("/demo/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let forced = TestServer::with(|c| {
        c.public_url = Some("https://meet.example.com".into());
        c.demo = Some(true);
    })
    .await;
    let res = forced
        .http()
        .post(forced.url("/demo/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn a_burst_of_bad_frames_always_shows_its_errors_and_4029() {
    let s = TestServer::start().await;
    let room = s.room().await;
    for run in 0..20 {
        let mut a = s.join(&room, &format!("a{run}")).await;
        // 25 in one burst: the server closes after the 21st, with 4 still unread.
        let burst: Vec<_> = (0..25).map(|_| Ok(Message::text("garbage"))).collect();
        a.ws.send_all(&mut futures_util::stream::iter(burst))
            .await
            .unwrap();
        for i in 0..21 {
            let e = a.expect_error("bad_request").await;
            assert_eq!(e["close"] == 4029, i == 20, "run {run}, error {i}: {e}");
        }
        assert_eq!(a.closed().await, Some(4029), "run {run}");
    }
}

#[tokio::test]
async fn a_frame_far_over_the_cap_closes_1009_while_it_is_still_being_sent() {
    let s = TestServer::start().await; // hard cap: about 2 MiB
    let room = s.room().await;
    for run in 0..5 {
        let a = s.join(&room, &format!("a{run}")).await;
        let (mut tx, mut rx) = a.ws.split();
        let huge = json!({"op": "send", "msg": "x".repeat(8 << 20)}).to_string();
        let sending = tokio::spawn(async move {
            let _ = tx.send(Message::text(huge)).await; // may fail: the server closes
        });
        let code = loop {
            match tokio::time::timeout(WAIT, rx.next()).await.unwrap() {
                Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("run {run}: no close frame, {e}"),
                None => panic!("run {run}: no close frame"),
            }
        };
        assert_eq!(code, Some(1009), "run {run}");
        sending.await.unwrap();
    }
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let mut a = s.join(&room, "a").await;
    let bad = Frame::message(vec![b'"', 0xff, 0xfe, b'"'], OpCode::Data(Data::Text), true);
    a.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(a.closed().await, Some(1007));
    // Before the join, too.
    let mut b = Client::connect(s.addr).await;
    let bad = Frame::message(vec![0xc3, 0x28], OpCode::Data(Data::Text), true);
    b.ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(b.closed().await, Some(1007));
}

#[tokio::test]
async fn every_malformed_request_gets_a_json_4xx() {
    let s = TestServer::start().await;
    let auth = format!("Authorization: Bearer {SECRET}\r\n");
    let ws = "Connection: Upgrade\r\nUpgrade: websocket\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "bad UTF-8 in a path",
            format!("GET /v1/rooms/%ff%fe HTTP/1.1\r\n{auth}"),
        ),
        (
            "bad UTF-8 in a token path",
            format!(
                "POST /v1/rooms/%c3%28/tokens HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
            ),
        ),
        (
            "unknown query key",
            format!("GET /v1/rooms?colour=blue HTTP/1.1\r\n{auth}"),
        ),
        (
            "query key twice",
            format!("GET /v1/rooms?member=a&member=b HTTP/1.1\r\n{auth}"),
        ),
        (
            "not JSON",
            format!(
                "POST /v1/rooms HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{{nope"
            ),
        ),
        (
            "JSON array",
            format!(
                "POST /v1/rooms HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
            ),
        ),
        (
            "no content type",
            format!("POST /v1/rooms HTTP/1.1\r\n{auth}Content-Length: 2\r\n\r\n{{}}"),
        ),
        (
            "body too large",
            format!(
                "POST /v1/rooms HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{"
            ),
        ),
        (
            "unknown field",
            format!(
                "POST /v1/rooms HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 12\r\n\r\n{{\"colour\":1}}"
            ),
        ),
        ("no secret", "GET /v1/rooms HTTP/1.1\r\n".to_owned()),
        (
            "lowercase scheme, wrong secret",
            "GET /v1/rooms HTTP/1.1\r\nAuthorization: bearer nope\r\n".to_owned(),
        ),
        ("method", format!("PATCH /v1/rooms HTTP/1.1\r\n{auth}")),
        ("route", "GET /v2/nothing HTTP/1.1\r\n".to_owned()),
        ("SDK file", "GET /sdk/nope.js HTTP/1.1\r\n".to_owned()),
        ("ws without upgrade", "GET /v1/ws HTTP/1.1\r\n".to_owned()),
        (
            "ws without key",
            format!("GET /v1/ws HTTP/1.1\r\n{ws}Sec-WebSocket-Version: 13\r\n"),
        ),
        (
            "ws version 8",
            format!(
                "GET /v1/ws HTTP/1.1\r\n{ws}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
        ),
        (
            "ws with a bad key",
            format!(
                "GET /v1/ws HTTP/1.1\r\n{ws}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"
            ),
        ),
        (
            "ws by HEAD",
            format!(
                "HEAD /v1/ws HTTP/1.1\r\n{ws}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
        ),
        (
            "ws by POST",
            format!(
                "POST /v1/ws HTTP/1.1\r\n{ws}Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            ),
        ),
    ];
    for (what, request) in cases {
        let request = if request.contains("\r\n\r\n") {
            request.replacen(
                "HTTP/1.1\r\n",
                "HTTP/1.1\r\nHost: x\r\nConnection: close\r\n",
                1,
            )
        } else {
            format!("{request}Host: x\r\nConnection: close\r\n\r\n")
        };
        let (status, head, body) = raw_http(s.addr, &request).await;
        if request.starts_with("HEAD") {
            // A HEAD answer has no body, only the status and headers of the GET.
            assert!((400..500).contains(&status), "{what}: status {status}");
            assert!(head.contains("content-type: application/json"), "{what}");
            continue;
        }
        assert_json_error(what, status, &head, &body);
    }
    let (status, head, _) = raw_http(
        s.addr,
        &format!("GET /v1/ws HTTP/1.1\r\nHost: x\r\n{ws}Sec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 426);
    assert!(head.contains("sec-websocket-version: 13"), "{head}");
}

#[tokio::test]
async fn huge_numbers_in_every_numeric_field_get_400() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let huge = [
        "9223372036854775808",
        "18446744073709551615",
        "18446744073709551616",
        "4294967296",
        "-1",
        "1e300",
        "1.5",
    ];
    for n in huge {
        for (path, body) in [
            ("/v1/rooms".to_owned(), format!(r#"{{"maxPeers": {n}}}"#)),
            (
                "/v1/rooms".to_owned(),
                format!(r#"{{"emptyTimeoutSecs": {n}}}"#),
            ),
            (
                format!("/v1/rooms/{room}/tokens"),
                format!(r#"{{"identity": "a", "ttlSecs": {n}}}"#),
            ),
        ] {
            let res = s
                .http()
                .post(s.url(&path))
                .bearer_auth(SECRET)
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = res.json().await.unwrap();
            assert_eq!(status, 400, "{body}: {v}");
            assert_eq!(v["error"]["code"], "bad_request", "{body}: {v}");
        }
    }
    // Numbers in a WebSocket frame: refused with an error, the connection stays.
    let mut a = s.join(&room, "a").await;
    for n in ["18446744073709551616", "-1", "1e300", "1.5"] {
        a.send_text(format!(r#"{{"op": "send", "msg": 1, "ref": {n}}}"#))
            .await;
        a.expect_error("bad_request").await;
    }
    a.assert_alive().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let s = TestServer::start().await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let res = s
            .http()
            .get(s.url("/v1/rooms"))
            .header("authorization", format!("{scheme} {SECRET}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme}");
    }
}

#[tokio::test]
async fn metrics_on_their_own_address_only() {
    let dir = crate::common::temp_dir();
    let config = bluecam_server::Config {
        data_dir: dir.clone(),
        api_secret: Some(SECRET.into()),
        metrics_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..bluecam_server::Config::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = bluecam_server::Server::bind(listener, config)
        .await
        .unwrap();
    let addr = server.local_addr().unwrap();
    let metrics = server.metrics_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(server.run(stop.clone()));
    // The open-connection gauge follows connections as they are admitted and as they close
    // (each nextest test is its own process, so the gauge is this server's). A client without
    // a pool, so that its own connection is the only other one, once the last has closed.
    let once = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let open_now = || {
        let once = once.clone();
        async move {
            let page = once
                .get(format!("http://{metrics}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            page.lines()
                .find_map(|l| l.strip_prefix("bluecam_http_connections "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        }
    };
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(addr).await.unwrap(),
        TcpStream::connect(addr).await.unwrap(),
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    while open_now().await != Some(3.0) {
        assert!(tokio::time::Instant::now() < deadline, "gauge never 2 + 1");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    while open_now().await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gauge never back to 1"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let http = reqwest::Client::new();
    let public = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    let private = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    assert!(
        private
            .text()
            .await
            .unwrap()
            .contains("bluecam_http_connections")
    );
    let other = http
        .get(format!("http://{metrics}/v1/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "only /metrics there");
    // Nor a WebSocket, however plain its handshake (answered before hyper on the main port).
    let (status, _, _) = raw_http(
        metrics,
        "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404, "no WebSocket on the metrics port");
    stop.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
