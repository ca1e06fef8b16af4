//! The HTTP transport (`/v1/http/*`) against a real server: the same frames as a WebSocket,
//! acknowledged polls, idempotent sends, limits, abandonment and resume.

use crate::common::{TestServer, WAIT};
use bluecam_proto::ClientMessage;
use serde_json::{Value, json};
use std::time::Duration;

/// A client of the HTTP transport, speaking it as the SDK does. With several base URLs (the
/// nodes of a cluster), each request goes to the next one in turn, as through a load balancer
/// without sticky sessions.
#[derive(Debug)]
pub struct HttpClient {
    http: reqwest::Client,
    pub bases: Vec<String>,
    turn: std::sync::atomic::AtomicUsize,
    pub sid: String,
    /// The number of the last frame received.
    pub ack: u64,
    /// The number of the next frame to send.
    pub seq: u64,
    /// Frames received and not yet read.
    inbox: std::collections::VecDeque<Value>,
    pub close: Option<(u64, String)>,
}

impl HttpClient {
    /// Opens a session with this join frame; panics unless the server answers 200.
    pub async fn open(base: &str, join: &ClientMessage<'_>) -> Self {
        Self::open_via(&[base], join).await
    }

    /// [`HttpClient::open`] on the first base; later requests take the bases in turn.
    pub async fn open_via(bases: &[&str], join: &ClientMessage<'_>) -> Self {
        let base = bases[0];
        let http = reqwest::Client::new();
        let res = http
            .post(format!("{base}/v1/http/open"))
            .header("content-type", "text/plain")
            .body(join.to_json())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        assert_eq!(res.headers()["cache-control"], "no-store");
        let v: Value = res.json().await.unwrap();
        let mut c = Self {
            http,
            bases: bases.iter().map(|b| (*b).to_owned()).collect(),
            turn: std::sync::atomic::AtomicUsize::new(1),
            sid: v["sid"].as_str().unwrap().to_owned(),
            ack: 0,
            seq: 2, // the join was frame 1
            inbox: Default::default(),
            close: None,
        };
        c.take(&v);
        c
    }

    fn take(&mut self, v: &Value) {
        let first = v["first"].as_u64().unwrap();
        for (i, f) in v["frames"].as_array().unwrap().iter().enumerate() {
            let n = first + i as u64;
            if n == self.ack + 1 {
                self.inbox.push_back(f.clone());
                self.ack = n;
            }
        }
        if let Some(c) = v.get("close") {
            self.close = Some((
                c["code"].as_u64().unwrap(),
                c["reason"].as_str().unwrap().to_owned(),
            ));
        }
    }

    /// The base URL of the next request.
    fn base(&self) -> &str {
        let i = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// One poll with this `ack`: the raw answer.
    pub async fn poll_raw(&self, ack: u64) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/http/poll", self.base()))
            .body(json!({"sid": self.sid, "ack": ack}).to_string())
            .send()
            .await
            .unwrap()
    }

    /// Polls once; what it answered.
    pub async fn poll(&mut self) -> Value {
        let res = self.poll_raw(self.ack).await;
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        self.take(&v);
        v
    }

    /// The next frame, polling as needed.
    pub async fn recv(&mut self) -> Value {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = self.inbox.pop_front() {
                    return f;
                }
                assert!(self.close.is_none(), "closed: {:?}", self.close);
                self.poll().await;
            }
        })
        .await
        .expect("no frame in time")
    }

    /// The next frame of this op, skipping others.
    pub async fn recv_op(&mut self, op: &str) -> Value {
        loop {
            let f = self.recv().await;
            if f["op"] == op {
                return f;
            }
        }
    }

    /// Polls until the session closes; its code.
    pub async fn closed(&mut self) -> u64 {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some((code, _)) = &self.close {
                    return *code;
                }
                self.inbox.clear();
                self.poll().await;
            }
        })
        .await
        .expect("no close in time")
    }

    /// Sends frames numbered from `seq` (as a retry does, with an old `seq`); the answer.
    pub async fn send_from(&self, seq: u64, frames: &[String], close: bool) -> reqwest::Response {
        let mut body = json!({"sid": self.sid, "seq": seq, "close": close}).to_string();
        for f in frames {
            body.push('\n');
            body.push_str(f);
        }
        self.http
            .post(format!("{}/v1/http/send", self.base()))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Sends frames; panics unless all were taken.
    pub async fn send(&mut self, frames: &[String]) {
        let res = self.send_from(self.seq, frames, false).await;
        assert_eq!(res.status(), 200);
        let v: Value = res.json().await.unwrap();
        self.seq += frames.len() as u64;
        assert_eq!(v["ack"], self.seq - 1, "{v}");
    }
}

fn join(server: &TestServer, room: &str, identity: &str) -> ClientMessage<'static> {
    ClientMessage::Join {
        token: server.token(room, identity),
        resume: None,
    }
}

/// A `join` that resumes the session of this `joined` frame.
pub(crate) fn resume_join(
    server: &TestServer,
    room: &str,
    identity: &str,
    joined: &Value,
) -> ClientMessage<'static> {
    ClientMessage::Join {
        token: server.token(room, identity),
        resume: Some(bluecam_proto::ResumeCredentials {
            session: serde_json::from_value(joined["session"]["id"].clone()).unwrap(),
            secret: serde_json::from_value(joined["session"]["secret"].clone()).unwrap(),
        }),
    }
}

fn send_frame(to: &str, msg: &str) -> String {
    json!({"op": "send", "to": [to], "msg": msg}).to_string()
}

#[tokio::test]
async fn an_http_peer_and_a_websocket_peer_talk_both_ways_in_order() {
    let server = TestServer::start().await;
    let room = server.room().await;
    let mut ws = server.join(&room, "ws").await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    let joined = h.recv().await;
    assert_eq!(joined["op"], "joined", "{joined}");
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    assert_eq!(joined["peers"][0]["id"], ws.id());
    let seen = ws.recv_op("peer_joined").await;
    assert_eq!(seen["peer"]["id"], hid);

    // HTTP to WebSocket: 300 frames in batches, in order.
    for batch in 0..3 {
        let frames: Vec<String> = (0..100)
            .map(|i| send_frame(&ws.id(), &format!("h{}", batch * 100 + i)))
            .collect();
        h.send(&frames).await;
    }
    for i in 0..300 {
        let m = ws.recv_op("message").await;
        assert_eq!(m["msg"], format!("h{i}"));
        assert_eq!(m["from"], hid);
    }
    // WebSocket to HTTP: 300 frames, received over polls, in order.
    for i in 0..300 {
        ws.send_json(json!({"op": "send", "to": [hid], "msg": format!("w{i}")}))
            .await;
    }
    for i in 0..300 {
        let m = h.recv_op("message").await;
        assert_eq!(m["msg"], format!("w{i}"));
    }
}

#[tokio::test]
async fn a_lost_poll_answer_is_sent_again_and_a_retried_send_delivers_nothing_twice() {
    let server = TestServer::start().await;
    let room = server.room().await;
    let mut ws = server.join(&room, "ws").await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    let hid = h.recv().await["self"]["id"].as_str().unwrap().to_owned();
    ws.recv_op("peer_joined").await;
    for i in 0..3 {
        ws.send_json(json!({"op": "send", "to": [hid], "msg": i}))
            .await;
    }
    // Wait until the three are there, then "lose" that answer: poll again with the old ack.
    let before = h.ack;
    let first = tokio::time::timeout(WAIT, async {
        loop {
            let v: Value = h.poll_raw(before).await.json().await.unwrap();
            let n = v["frames"].as_array().unwrap().len();
            if n >= 3 {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let again: Value = h.poll_raw(before).await.json().await.unwrap();
    assert_eq!(again["first"], first["first"]);
    assert_eq!(again["frames"], first["frames"]);
    h.take(&again);
    for i in 0..3 {
        assert_eq!(h.recv_op("message").await["msg"], i);
    }

    // A send retried (its answer lost) with the same numbers: taken once.
    let frames = vec![send_frame(&ws.id(), "once"), send_frame(&ws.id(), "twice?")];
    let seq = h.seq;
    for _ in 0..3 {
        let res = h.send_from(seq, &frames, false).await;
        assert_eq!(res.status(), 200);
    }
    h.seq += 2;
    // A retry that overlaps: its first frame was taken, the second is new.
    let overlap = vec![
        send_frame(&ws.id(), "twice?"),
        send_frame(&ws.id(), "third"),
    ];
    h.send_from(seq + 1, &overlap, false).await;
    h.seq += 1;
    assert_eq!(ws.recv_op("message").await["msg"], "once");
    assert_eq!(ws.recv_op("message").await["msg"], "twice?");
    assert_eq!(ws.recv_op("message").await["msg"], "third");
    // A gap (a frame sent before one that never came) is refused and takes nothing.
    let res = h
        .send_from(seq + 10, &[send_frame(&ws.id(), "gap")], false)
        .await;
    assert_eq!(res.status(), 409);
    h.send(&[json!({"op": "ping"}).to_string()]).await;
    assert_eq!(h.recv_op("pong").await["op"], "pong");
    ws.assert_alive().await;
}

#[tokio::test]
async fn bad_frames_and_oversized_ones_get_the_websockets_answers() {
    let server = TestServer::with(|c| c.limits.max_frame_bytes = 1000).await;
    let room = server.room().await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    h.recv_op("joined").await;
    h.send(&["not json".to_owned()]).await;
    assert_eq!(h.recv_op("error").await["code"], "bad_request");
    let big = json!({"op": "send", "msg": "x".repeat(1500)}).to_string();
    h.send(&[big]).await;
    assert_eq!(h.recv_op("error").await["code"], "too_large");
    // Over the hard cap (twice the limit): refused before it is read, like a WebSocket's 1009.
    let huge = json!({"op": "send", "msg": "x".repeat(300_000)}).to_string();
    let res = h.send_from(h.seq, &[huge], false).await;
    assert_eq!(res.status(), 413);
    // An unknown session is a 404 (the SDK then opens a new one and resumes).
    let mut other = HttpClient::open(&server.url(""), &join(&server, &room, "x")).await;
    other.sid = "no-such-session".into();
    assert_eq!(other.poll_raw(0).await.status(), 404);
    assert_eq!(other.send_from(2, &[], false).await.status(), 404);
    // The first frame must be a join, as on a WebSocket.
    let res = reqwest::Client::new()
        .post(server.url("/v1/http/open"))
        .body(json!({"op": "ping"}).to_string())
        .send()
        .await
        .unwrap();
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["frames"][0]["code"], "bad_request", "{v}");
    assert_eq!(v["close"]["code"], 4000, "{v}");
}

#[tokio::test]
async fn a_newer_poll_answers_the_older_one_at_once() {
    let server = TestServer::start().await;
    let room = server.room().await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    h.recv_op("joined").await;
    let ack = h.ack;
    let old = tokio::spawn({
        let (http, base, sid) = (h.http.clone(), h.base().to_owned(), h.sid.clone());
        async move {
            let t0 = std::time::Instant::now();
            let res = http
                .post(format!("{base}/v1/http/poll"))
                .body(json!({"sid": sid, "ack": ack}).to_string())
                .send()
                .await
                .unwrap();
            (t0.elapsed(), res.json::<Value>().await.unwrap())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let newer = tokio::spawn({
        let (http, base, sid) = (h.http.clone(), h.base().to_owned(), h.sid.clone());
        async move {
            http.post(format!("{base}/v1/http/poll"))
                .body(json!({"sid": sid, "ack": ack}).to_string())
                .send()
                .await
                .unwrap()
        }
    });
    let (took, v) = tokio::time::timeout(WAIT, old).await.unwrap().unwrap();
    assert!(
        took < Duration::from_secs(5),
        "the old poll waited {took:?}"
    );
    assert_eq!(v["frames"], json!([]));
    // The newer one gets the next frame.
    h.send(&[json!({"op": "ping"}).to_string()]).await;
    let v: Value = tokio::time::timeout(WAIT, newer)
        .await
        .unwrap()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["frames"][0]["op"], "pong", "{v}");
}

#[tokio::test]
async fn an_abandoned_session_detaches_then_resumes_over_http_with_the_same_peer_id() {
    let server = TestServer::with(|c| {
        c.limits.ping_interval_secs = 1; // silent for 2 s: gone
        c.limits.resume_window_secs = 30;
    })
    .await;
    let room = server.room().await;
    let mut ws = server.join(&room, "ws").await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    let joined = h.recv_op("joined").await;
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    ws.recv_op("peer_joined").await;
    // A frame for it that no poll ever carries: kept for the resume, as a WebSocket's queue is.
    ws.send_json(json!({"op": "send", "to": [hid], "msg": "never polled"}))
        .await;
    // Nobody polls: the session ends like a silent WebSocket, and the peer stays, detached
    // (the WebSocket peer keeps talking meanwhile, or it too would be silent for too long).
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.presence(&room, &hid).await != Some(false) {
        assert!(tokio::time::Instant::now() < deadline, "never detached");
        ws.send_json(json!({"op": "ping"})).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Frames for it meanwhile are kept for its resume.
    ws.send_json(json!({"op": "send", "to": [hid], "msg": "while away"}))
        .await;
    let resume = resume_join(&server, &room, "http", &joined);
    let mut again = HttpClient::open(&server.url(""), &resume).await;
    let back = again.recv_op("joined").await;
    assert_eq!(back["resumed"], true);
    assert_eq!(back["self"]["id"], hid.as_str());
    assert_eq!(again.recv_op("message").await["msg"], "never polled");
    assert_eq!(again.recv_op("message").await["msg"], "while away");
    // A send to the ended session is told so (nothing more to send; the close is polled)...
    let res = h
        .send_from(h.seq, &[json!({"op": "ping"}).to_string()], false)
        .await;
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["closed"], true, "{v}");
    // ...and the old session tells its (absent) client why it ended, without the frame that
    // went to the resume.
    assert_eq!(h.closed().await, 4011);
    // Nobody saw a leave.
    ws.send_json(json!({"op": "ping"})).await;
    loop {
        let f = ws.recv().await;
        assert_ne!(f["op"], "peer_left", "{f}");
        if f["op"] == "pong" && again.ack > 0 {
            break;
        }
    }
}

#[tokio::test]
async fn a_client_close_after_leave_is_a_leave() {
    let server = TestServer::start().await;
    let room = server.room().await;
    let mut ws = server.join(&room, "ws").await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    let hid = h.recv_op("joined").await["self"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    ws.recv_op("peer_joined").await;
    let res = h
        .send_from(h.seq, &[json!({"op": "leave"}).to_string()], true)
        .await;
    assert_eq!(res.status(), 200);
    let left = ws.recv_op("peer_left").await;
    assert_eq!(left["peer"]["id"], hid.as_str());
    assert_eq!(left["reason"], "left");
    // A session its client closed goes at once (nothing left to tell it).
    let gone = tokio::time::timeout(WAIT, async {
        while h.poll_raw(h.ack).await.status() != 404 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the closed session lingered");
}

#[tokio::test]
async fn cross_origin_pages_may_read_the_answers_when_their_origin_may_connect() {
    let server = TestServer::with(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let room = server.room().await;
    let http = reqwest::Client::new();
    let res = http
        .post(server.url("/v1/http/open"))
        .header("origin", "https://app.example")
        .body(join(&server, &room, "a").to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let res = http
        .post(server.url("/v1/http/open"))
        .header("origin", "https://evil.example")
        .body(join(&server, &room, "b").to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // A refusal of the router itself (a body over the limit) is readable cross-origin too.
    let res = http
        .post(server.url("/v1/http/send"))
        .header("origin", "https://app.example")
        .body("x".repeat(3 << 20))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn errors_for_a_client_that_never_polls_are_bounded_too() {
    let server = TestServer::with(|c| {
        c.limits.rate_frames_per_sec = 1;
        c.limits.rate_burst_frames = 1;
        c.limits.max_frame_bytes = 8 << 10;
        c.limits.outbound_queue_bytes = 64 << 10;
    })
    .await;
    let room = server.room().await;
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "flood")).await;
    // Every ping over the rate gets a `rate_limited` error; none is ever polled.
    let pings: Vec<String> = (0..3000)
        .map(|_| json!({"op": "ping"}).to_string())
        .collect();
    for _ in 0..3 {
        let res = h.send_from(h.seq, &pings, false).await;
        let v: Value = res.json().await.unwrap();
        h.seq += pings.len() as u64;
        if v["closed"] == true {
            break;
        }
    }
    // The session ended as a slow consumer (its errors waiting reached the cap), resumable.
    assert_eq!(h.closed().await, 4030);
}

#[tokio::test]
async fn sessions_count_under_the_per_source_cap_and_give_their_place_back() {
    let server = TestServer::with(|c| {
        c.limits.per_source_exempt = vec![];
        c.limits.max_connections_per_source = 6;
    })
    .await;
    let room = server.room().await;
    // One client, so one or two TCP connections; every session takes a place too.
    let mut open = Vec::new();
    let refused = loop {
        let res = reqwest::Client::new()
            .post(server.url("/v1/http/open"))
            .body(join(&server, &room, &format!("p{}", open.len())).to_json())
            .send()
            .await;
        match res {
            Ok(r) if r.status() == 200 => {
                let v: Value = r.json().await.unwrap();
                open.push(v["sid"].as_str().unwrap().to_owned());
            }
            Ok(r) => break r.status().as_u16(),
            // Refused before a request could be made: the TCP cap itself.
            Err(_) => break 0,
        }
        assert!(open.len() <= 6, "more sessions than the cap allows");
    };
    assert!(refused == 503 || refused == 0, "refused with {refused}");
    assert!(
        open.len() >= 4,
        "only {} sessions before the cap",
        open.len()
    );
    // A session that ends gives its place back.
    let http = reqwest::Client::new();
    let body = format!(
        "{}\n{}",
        json!({"sid": open[0], "seq": 2, "close": true}),
        json!({"op": "leave"})
    );
    let res = http
        .post(server.url("/v1/http/send"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(http);
    let again = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(r) = reqwest::Client::new()
                .post(server.url("/v1/http/open"))
                .body(join(&server, &room, "again").to_json())
                .send()
                .await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the place never came back");
}

#[tokio::test]
async fn an_http_session_survives_a_server_restart_with_its_peer_id() {
    let server = TestServer::start().await;
    let room = server.room().await;
    let ws = server.join(&room, "ws").await;
    let ws_creds = crate::common::creds(&ws);
    let mut h = HttpClient::open(&server.url(""), &join(&server, &room, "http")).await;
    let joined = h.recv_op("joined").await;
    let hid = joined["self"]["id"].as_str().unwrap().to_owned();
    // A restart: the process goes, the sessions stay in its store.
    let dir = server.stop().await;
    drop(ws);
    let server = TestServer::in_dir(dir, |_| {}).await;
    // The new process does not know the transport session: 404, so the client opens a new
    // one and resumes.
    h.bases = vec![server.url("")];
    assert_eq!(h.poll_raw(h.ack).await.status(), 404);
    let resume = resume_join(&server, &room, "http", &joined);
    let mut again = HttpClient::open(&server.url(""), &resume).await;
    let back = again.recv_op("joined").await;
    assert_eq!(back["resumed"], true, "{back}");
    assert_eq!(back["self"]["id"], hid.as_str());
    let (mut ws, _) = server.resume(&room, "ws", ws_creds).await;
    ws.send_json(json!({"op": "send", "to": [hid], "msg": "after the restart"}))
        .await;
    assert_eq!(again.recv_op("message").await["msg"], "after the restart");
    again
        .send(&[json!({"op": "send", "to": [ws.id()], "msg": "back"}).to_string()])
        .await;
    assert_eq!(ws.recv_op("message").await["msg"], "back");
}
