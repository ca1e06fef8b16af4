//! A cluster on PostgreSQL: a real `postgres` (Debian's `postgresql`: each test runs its own
//! `initdb` cluster on a free port, as an unprivileged user) and a real `redis-server`. Rooms
//! outlive Redis; two nodes record one call and deliver each webhook once; the sessions of a
//! node that died end when it died.

use crate::cluster::Redis;
use crate::common::{Client, TestServer, WAIT};
use axum::{Router, body::Bytes, extract::State, http::HeaderMap, routing::post};
use serde_json::{Value, json};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use bluecam_server::testkit::Postgres;

const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// What the receiver got: (webhook-id, type, data), verified.
pub type Got = Arc<Mutex<Vec<(String, String, Value)>>>;

/// How the receiver answers each request (its status), by the event's type.
type Answer = Arc<dyn Fn(&str) -> u16 + Send + Sync>;

/// A webhook endpoint that checks every signature itself (HMAC-SHA256 of `id.timestamp.body`
/// under the secret's bytes) and records what it accepted (a 2xx answer).
pub async fn receiver() -> (String, Got) {
    receiver_answering(Arc::new(|_| 204)).await
}

/// [`receiver`], answering what `answer` says for each event type.
pub async fn receiver_answering(answer: Answer) -> (String, Got) {
    async fn hook(
        State((got, answer)): State<(Got, Answer)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::http::StatusCode {
        use base64::Engine as _;
        use hmac::Mac as _;
        let h = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let (id, ts, sig) = (
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(WEBHOOK_SECRET.trim_start_matches("whsec_"))
            .unwrap();
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&body);
        let want = format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        );
        if sig.split(' ').all(|s| s != want) {
            return axum::http::StatusCode::UNAUTHORIZED;
        }
        let v: Value = serde_json::from_slice(&body).unwrap();
        let kind = v["type"].as_str().unwrap().to_owned();
        let status = answer(&kind);
        if status < 300 {
            got.lock().unwrap().push((id, kind, v["data"].clone()));
        }
        axum::http::StatusCode::from_u16(status).unwrap()
    }
    let got: Got = Arc::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state((got.clone(), answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

/// One endpoint with every event, signed with the tests' secret.
pub fn endpoint(url: &str) -> bluecam_server::config::WebhookConfig {
    bluecam_server::config::WebhookConfig {
        url: url.to_owned(),
        secret: WEBHOOK_SECRET.into(),
        events: vec![],
    }
}

async fn node(redis: &Redis, pg: &Postgres, hook: Option<&str>) -> TestServer {
    TestServer::with(node_config(redis, pg, hook)).await
}

/// A cluster node's settings on `redis` and `pg` (short expiries), with a webhook endpoint.
fn node_config(
    redis: &Redis,
    pg: &Postgres,
    hook: Option<&str>,
) -> impl FnOnce(&mut bluecam_server::Config) + Send + 'static {
    let (redis, db, hook) = (redis.url(), pg.url(), hook.map(str::to_owned));
    move |c| {
        c.redis_url = Some(redis);
        c.database_url = Some(db);
        c.cluster.node_ttl_secs = 2;
        c.limits.resume_window_secs = 2;
        if let Some(url) = hook {
            c.webhooks = vec![endpoint(&url)];
        }
    }
}

async fn leave(c: &mut Client) {
    c.send_json(json!({"op": "leave"})).await;
    assert_eq!(c.closed().await, Some(1000));
}

async fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_within(what, WAIT * 2, done).await;
}

async fn wait_within(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_outlive_a_redis_that_lost_its_data() {
    let pg = Postgres::start();
    let mut redis = Redis::start();
    let a = node(&redis, &pg, None).await;
    let room = a
        .create_room(json!({"name": "durable", "owner": "olga"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    redis.restart_empty();
    // Listed and readable from PostgreSQL, and joinable again (put back into Redis).
    let list = a.api_get("/v1/rooms?owner=olga").await;
    assert_eq!(list["rooms"][0]["id"], room, "{list}");
    let wait = Instant::now() + WAIT;
    loop {
        let got = a.api_get(&format!("/v1/rooms/{room}")).await;
        if got["name"] == "durable" {
            break;
        }
        assert!(Instant::now() < wait, "{got}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = a.join(&room, "olga").await;
    leave(&mut c).await;
    // A second node reads the same rooms.
    let b = node(&redis, &pg, None).await;
    assert_eq!(
        b.api_get(&format!("/v1/rooms/{room}")).await["name"],
        "durable"
    );
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_record_one_call_and_deliver_each_webhook_once() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (hook, got) = receiver().await;
    let a = node(&redis, &pg, Some(&hook)).await;
    let b = node(&redis, &pg, Some(&hook)).await;
    let room = a.room().await;
    let mut alice = a.join(&room, "alice").await;
    let mut bob = b.join(&room, "bob").await;
    let t_call = Instant::now();
    alice.recv_op("peer_joined").await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    leave(&mut bob).await;
    let call_secs = t_call.elapsed().as_secs_f64();
    alice.recv_op("peer_left").await;
    leave(&mut alice).await;
    a.delete_room(&room).await;
    wait_until("room.deleted", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, t, _)| t == "room.deleted")
    })
    .await;
    // Anything sent twice would have come by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = got.lock().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "room.created",
            "peer.joined",
            "peer.joined",
            "call.started",
            "peer.left",
            "call.ended",
            "peer.left",
            "room.deleted"
        ],
        "each event once, in the room's order"
    );
    let ids: std::collections::HashSet<&str> = events.iter().map(|(i, _, _)| i.as_str()).collect();
    assert_eq!(ids.len(), events.len());
    let ended = &events[5].2;
    let d = ended["durationSecs"].as_f64().unwrap();
    assert!(
        (d - call_secs).abs() <= 1.0,
        "call {d} s, really {call_secs:.2} s"
    );
    // Either node answers with the same history.
    let from_b = b.api_get(&format!("/v1/rooms/{room}/calls")).await;
    assert_eq!(&from_b["calls"][0], ended, "{from_b}");
    let one = a
        .api_get(&format!("/v1/calls/{}", ended["id"].as_str().unwrap()))
        .await;
    assert_eq!(&one, ended);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_of_a_node_that_died_end_when_it_died() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let a = node(&redis, &pg, None).await;
    // (A node that can crash: no drain, no last words, as a SIGKILL.)
    let b = TestServer::crashable(node_config(&redis, &pg, None)).await;
    let room = a.room().await;
    let mut alice = a.join(&room, "alice").await;
    let bob = b.join(&room, "bob").await;
    let t_call = Instant::now();
    alice.recv_op("peer_joined").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Node b crashes and bob never comes back anywhere.
    let died = t_call.elapsed().as_secs_f64();
    b.crash();
    drop(bob);
    // Bob leaves (his node's liveness and his resume window run out, then the sweep).
    let deadline = Instant::now() + WAIT * 3;
    let call = loop {
        let calls = a.api_get(&format!("/v1/rooms/{room}/calls")).await;
        let c = calls["calls"][0].clone();
        if !c["endedAt"].is_null() {
            break c;
        }
        assert!(Instant::now() < deadline, "the call never ended: {calls}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let d = call["durationSecs"].as_f64().unwrap();
    assert!(
        (d - died).abs() <= 1.0,
        "the call lasted {d} s; its node died at {died:.2} s"
    );
    let bob_row = call["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["identity"] == "bob")
        .unwrap()
        .clone();
    assert!(
        (bob_row["durationSecs"].as_f64().unwrap() - died).abs() <= 1.0,
        "{bob_row}"
    );
    leave(&mut alice).await;
}

/// `history_retention_days` on PostgreSQL: the SQLite test's scenario.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_what_ended_before_the_cutoff_on_postgres() {
    let pg = Postgres::start();
    let store = bluecam_server::persist::history::postgres::PgStore::connect(&pg.url(), 4)
        .await
        .unwrap();
    bluecam_server::testkit::retention_scenario(
        bluecam_server::persist::history::Backend::Postgres(store),
    )
    .await;
}

/// PostgreSQL SIGKILLed and restarted under two nodes with a call and webhooks: the call goes on
/// (messages keep flowing through Redis), `/readyz` says what is down meanwhile, and once it is
/// back the history holds the whole call with its real duration and every webhook event is
/// delivered, a repeat only ever with the same `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_outage_ends_no_call_and_loses_no_history() {
    let mut pg = Postgres::start();
    let redis = Redis::start();
    let (hook, got) = receiver().await;
    let a = node(&redis, &pg, Some(&hook)).await;
    let b = node(&redis, &pg, Some(&hook)).await;
    let room = a.room().await;
    let mut alice = a.join(&room, "alice").await;
    let mut bob = b.join(&room, "bob").await;
    let t_call = Instant::now();
    alice.recv_op("peer_joined").await;
    wait_until("call.started", || {
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, t, _)| t == "call.started")
    })
    .await;

    pg.kill();
    let ready = |s: &TestServer| {
        let url = s.url("/readyz");
        async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status().as_u16(), res.text().await.unwrap())
        }
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = ready(&a).await;
        if status == 503 {
            assert!(body.contains("not ready: PostgreSQL unavailable"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz stayed ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The call goes on: messages flow between the nodes, nobody leaves.
    for n in 0..5 {
        alice
            .send_json(json!({"op": "send", "to": [bob.id()], "msg": n}))
            .await;
        assert_eq!(bob.recv_op("message").await["msg"], n);
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // (Off the runtime: the nodes on it keep running while it waits for PostgreSQL.)
    let _pg = tokio::task::spawn_blocking(move || {
        pg.restart();
        pg
    })
    .await
    .unwrap();
    let deadline = Instant::now() + WAIT * 2;
    while ready(&a).await.0 != 200 || ready(&b).await.0 != 200 {
        assert!(Instant::now() < deadline, "readyz never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    leave(&mut bob).await;
    let call_secs = t_call.elapsed().as_secs_f64();
    alice.recv_op("peer_left").await;
    leave(&mut alice).await;
    // The history writer tries a batch again after a wait that doubles while the database is
    // away (up to 30 s): once PostgreSQL is back, what was recorded meanwhile, and these
    // events behind it, go at the end of the current wait. (A loaded machine, whose
    // PostgreSQL takes long to stop and start, sees waits of several seconds.)
    let catch_up = Duration::from_secs(45);
    wait_within("call.ended", catch_up, || {
        got.lock()
            .unwrap()
            .iter()
            .any(|(_, t, _)| t == "call.ended")
    })
    .await;
    wait_within("both peer.left", catch_up, || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(_, t, _)| t == "peer.left")
            .count()
            >= 2
    })
    .await;
    // Anything sent again would have come by now.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = got.lock().unwrap().clone();
    let mut first: Vec<(String, String)> = Vec::new();
    for (id, kind, _) in &events {
        match first.iter().find(|(i, _)| i == id) {
            // A repeat (an attempt whose answer was lost) is the same event.
            Some((_, k)) => assert_eq!(k, kind, "webhook-id {id} reused"),
            None => first.push((id.clone(), kind.clone())),
        }
    }
    let types: Vec<&str> = first.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "room.created",
            "peer.joined",
            "peer.joined",
            "call.started",
            "peer.left",
            "call.ended",
            "peer.left"
        ],
        "every event, once each, in the room's order"
    );
    let calls = a.api_get(&format!("/v1/rooms/{room}/calls")).await;
    let calls = calls["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1, "the outage split no call: {calls:?}");
    let d = calls[0]["durationSecs"].as_f64().unwrap();
    assert!(
        (d - call_secs).abs() <= 1.0,
        "call {d} s, really {call_secs:.2} s"
    );
}

/// Two nodes started at the same instant on an empty database: one migrates the schema, the
/// other waits for it (an advisory lock), and both serve the same rooms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_started_at_once_on_an_empty_database_both_come_up() {
    let pg = Postgres::start();
    let redis = Redis::start();
    let (a, b) = tokio::join!(node(&redis, &pg, None), node(&redis, &pg, None));
    let room = a.room().await;
    assert_eq!(b.api_get(&format!("/v1/rooms/{room}")).await["id"], room);
    let mut alice = a.join(&room, "alice").await;
    let mut bob = b.join(&room, "bob").await;
    alice.recv_op("peer_joined").await;
    leave(&mut bob).await;
    leave(&mut alice).await;
}

/// A CA (its certificate, PEM) and a server certificate it signed for `names` (PEM, with its
/// key's PEM).
fn ca_and_server(names: &[&str]) -> (String, String, String) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let server = rcgen::CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), server.pem(), key.serialize_pem())
}

/// TLS to PostgreSQL as libpq's `sslmode` says: verified against `sslrootcert`, refused when
/// the certificate is from another authority or (verify-full) for another host, never a
/// plaintext connection when TLS was asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_as_sslmode_says() {
    use bluecam_server::persist::history::postgres::PgStore;
    let (ca, cert, key) = ca_and_server(&["127.0.0.1", "localhost"]);
    let pg = Postgres::start_tls(&cert, &key);
    let dir = crate::common::temp_dir();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (other_ca, _, _) = ca_and_server(&["127.0.0.1"]);
    let other_file = dir.join("other-ca.pem");
    std::fs::write(&other_file, &other_ca).unwrap();
    let url = |q: &str| format!("{}?{q}", pg.url());
    let connect = |u: String| async move { PgStore::connect(&u, 2).await };
    // Verified: the connection is encrypted (PostgreSQL says so for its own session).
    let store = connect(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    )))
    .await
    .unwrap();
    assert!(store.connection_is_tls().await.unwrap());
    // (verify-ca checks the chain, not the name: a host the certificate does not name.)
    let by_name = format!(
        "postgres://bluecam@localhost:{}/postgres?sslmode=verify-ca&sslrootcert={}",
        pg.port,
        ca_file.display()
    );
    let store = connect(by_name).await.unwrap();
    assert!(store.connection_is_tls().await.unwrap());
    // Refused: another authority; and a name the certificate does not hold with verify-full.
    let err = connect(url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        other_file.display()
    )))
    .await
    .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
    let (_, wrong_cert, wrong_key) = ca_and_server(&["db.example.com"]);
    drop(pg);
    let pg = Postgres::start_tls(&wrong_cert, &wrong_key);
    let wrong = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url(),
        ca_file.display()
    );
    assert!(connect(wrong).await.is_err());
    // TLS asked of a server without it: an error, never plaintext.
    let plain = Postgres::start();
    let err = connect(format!("{}?sslmode=require", plain.url()))
        .await
        .unwrap_err();
    assert!(!err.to_string().is_empty());
    // And sslmode=disable there connects in the clear, as asked.
    let store = connect(format!("{}?sslmode=disable", plain.url()))
        .await
        .unwrap();
    assert!(!store.connection_is_tls().await.unwrap());
    let _ = std::fs::remove_dir_all(dir);
}

/// `PATCH` with rooms in PostgreSQL (and their copy in Redis): every node answers with the
/// changed room, also once Redis has lost its copy.
/// A room changed (`PATCH`) and a peer removed from it are durable: Redis empty, the changed
/// room comes back from PostgreSQL with its removal (the removed identity's older tokens are
/// still refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_room_and_a_removal_are_durable() {
    let pg = Postgres::start();
    let mut redis = Redis::start();
    let (a, b) = (node(&redis, &pg, None).await, node(&redis, &pg, None).await);
    let room = a.room().await;
    let res = a
        .http()
        .patch(a.url(&format!("/v1/rooms/{room}")))
        .bearer_auth(crate::common::SECRET)
        .json(&json!({"description": "kept", "maxPeers": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        b.api_get(&format!("/v1/rooms/{room}")).await["description"],
        "kept"
    );
    let bob = a.join(&room, "bob").await;
    let removed_at = crate::cluster::kick(&b, &room, &bob.id()).await;
    let refused = a.token_with(&room, "bob", |c| c.iat = removed_at);
    // Redis empty: the durable copy, changed, comes back.
    redis.restart_empty();
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let got = b.api_get(&format!("/v1/rooms/{room}")).await;
        if got["description"] == "kept" && got["maxPeers"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{got}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With its removal: bob's older token is refused (once the directory is back; until
    // then a join is told to retry).
    loop {
        let mut c = Client::connect(a.addr).await;
        c.send_frame(&bluecam_proto::ClientMessage::Join {
            token: refused.clone(),
            resume: None,
        })
        .await;
        let v = c.recv().await;
        if v["code"] == "unauthorized" {
            break;
        }
        assert_eq!(v["code"], "unavailable", "{v}");
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    a.join(&room, "alice").await;
}

/// A node SIGKILLed while its webhook attempt is in flight: the event stays claimed by the dead
/// node for the claim time (30 s), then another node sends it; it reaches the receiver once,
/// under its one `webhook-id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_in_flight_on_a_node_that_dies_is_sent_by_another_after_its_claim() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    /// Requests that arrived; while `hold`, each is kept unanswered (an attempt in flight).
    #[derive(Clone, Default)]
    struct Hook {
        hold: Arc<AtomicBool>,
        arrived: Arc<AtomicUsize>,
        got: Got,
    }
    async fn hook(State(h): State<Hook>, headers: HeaderMap, body: Bytes) -> u16 {
        h.arrived.fetch_add(1, Ordering::SeqCst);
        while h.hold.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let v: Value = serde_json::from_slice(&body).unwrap();
        let id = headers["webhook-id"].to_str().unwrap().to_owned();
        h.got.lock().unwrap().push((
            id,
            v["type"].as_str().unwrap().to_owned(),
            v["data"].clone(),
        ));
        204
    }
    let h = Hook::default();
    h.hold.store(true, Ordering::SeqCst);
    let app = Router::new()
        .route(
            "/hook",
            post(|s: State<Hook>, hd: HeaderMap, b: Bytes| async move {
                axum::http::StatusCode::from_u16(hook(s, hd, b).await).unwrap()
            }),
        )
        .with_state(h.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let pg = Postgres::start();
    let redis = Redis::start();
    let b = TestServer::crashable(node_config(&redis, &pg, Some(&url))).await;
    // The room's creation is the event; node b's attempt at it is held in flight.
    let room = b.room().await;
    wait_until("node b's attempt", || h.arrived.load(Ordering::SeqCst) >= 1).await;
    b.crash();
    let crashed = Instant::now();
    // Another node comes up; the receiver answers from now on.
    let a = node(&redis, &pg, Some(&url)).await;
    h.hold.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !h
        .got
        .lock()
        .unwrap()
        .iter()
        .any(|(_, t, _)| t == "room.created")
    {
        assert!(Instant::now() < deadline, "the event was never sent again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = crashed.elapsed();
    // Not before the dead node's claim ran out (it was taken a moment before the crash).
    assert!(
        after >= Duration::from_secs(25),
        "sent again after {after:?}: within the claim"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = h.got.lock().unwrap().clone();
    let created: Vec<&(String, String, Value)> =
        got.iter().filter(|(_, t, _)| t == "room.created").collect();
    // (The dead node's attempt died with its connection: the receiver never answered it.)
    assert_eq!(created.len(), 1, "{got:?}");
    assert_eq!(created[0].2["id"], room);
    drop(a);
}
