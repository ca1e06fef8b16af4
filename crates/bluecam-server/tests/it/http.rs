//! The HTTP API: every route, every error status, auth.

use crate::common::{SECRET, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn call(
    s: &TestServer,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = s.http().request(method, s.url(path)).bearer_auth(SECRET);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let text = res.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        },
    )
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

#[tokio::test]
async fn create_get_list_delete_rooms() {
    let s = TestServer::start().await;
    let (st, room) = call(
        &s,
        Method::POST,
        "/v1/rooms",
        Some(json!({
            "id": "r-1", "name": "Room", "description": "d", "owner": "o", "members": ["m1", "m2"],
            "maxPeers": 4, "emptyTimeoutSecs": 600, "metadata": {"x": 1}
        })),
    )
    .await;
    assert_eq!(st, 201);
    for (k, v) in [
        ("id", json!("r-1")),
        ("name", json!("Room")),
        ("description", json!("d")),
        ("owner", json!("o")),
        ("members", json!(["m1", "m2"])),
        ("maxPeers", json!(4)),
        ("emptyTimeoutSecs", json!(600)),
        ("metadata", json!({"x": 1})),
        ("peerCount", json!(0)),
    ] {
        assert_eq!(room[k], v, "{k}");
    }
    assert!(room["createdAt"].as_u64().unwrap() > 1_700_000_000);

    let (st, generated) = call(&s, Method::POST, "/v1/rooms", Some(json!({}))).await;
    assert_eq!(st, 201);
    let id = generated["id"].as_str().unwrap();
    assert!(id.len() >= 22, "at least 128 random bits: {id}");
    assert_eq!(generated["maxPeers"], 50);
    assert_eq!(generated["members"], Value::Null);

    let (st, body) = call(&s, Method::POST, "/v1/rooms", Some(json!({"id": "r-1"}))).await;
    assert_eq!(st, 409);
    assert_error(&body, "room_exists");

    let (st, got) = call(&s, Method::GET, "/v1/rooms/r-1", None).await;
    assert_eq!((st, got), (StatusCode::OK, room.clone()));

    let (st, list) = call(&s, Method::GET, "/v1/rooms", None).await;
    assert_eq!(st, 200);
    assert_eq!(list["rooms"].as_array().unwrap().len(), 2);
    for member in ["o", "m2"] {
        let (_, list) = call(&s, Method::GET, &format!("/v1/rooms?member={member}"), None).await;
        assert_eq!(list["rooms"].as_array().unwrap().len(), 1, "{member}");
        assert_eq!(list["rooms"][0]["id"], "r-1");
    }
    let (_, list) = call(&s, Method::GET, "/v1/rooms?member=nobody", None).await;
    assert_eq!(list["rooms"], json!([]));

    let (st, _) = call(&s, Method::DELETE, "/v1/rooms/r-1", None).await;
    assert_eq!(st, 204);
    let (st, body) = call(&s, Method::GET, "/v1/rooms/r-1", None).await;
    assert_eq!(st, 404);
    assert_error(&body, "room_not_found");
    let (st, body) = call(&s, Method::DELETE, "/v1/rooms/r-1", None).await;
    assert_eq!(st, 404);
    assert_error(&body, "room_not_found");
}

#[tokio::test]
async fn lists_filter_by_owner_and_page_with_a_cursor_that_survives_changes() {
    let s = TestServer::start().await;
    for i in 0..25 {
        let owner = if i % 5 == 0 { "boss" } else { "other" };
        let (st, _) = call(
            &s,
            Method::POST,
            "/v1/rooms",
            Some(json!({"id": format!("p-{i:02}"), "owner": owner, "members": ["m"]})),
        )
        .await;
        assert_eq!(st, 201);
    }
    let (_, list) = call(&s, Method::GET, "/v1/rooms?owner=boss", None).await;
    let ids: Vec<_> = list["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [
            json!("p-00"),
            json!("p-05"),
            json!("p-10"),
            json!("p-15"),
            json!("p-20")
        ]
    );
    assert!(list.get("nextCursor").is_none(), "{list}");
    // Owner and member together: both must hold.
    let (_, list) = call(&s, Method::GET, "/v1/rooms?owner=boss&member=nobody", None).await;
    assert_eq!(list["rooms"], json!([]));

    // Pages of 10: every room once, in order, while rooms come and go between pages.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/rooms?limit=10&cursor={c}"),
            None => "/v1/rooms?limit=10".to_owned(),
        };
        let (st, page) = call(&s, Method::GET, &path, None).await;
        assert_eq!(st, 200, "{page}");
        seen.extend(
            page["rooms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        if pages == 1 {
            // A room of the first page goes, a new one comes: no page shifts or repeats.
            call(&s, Method::DELETE, "/v1/rooms/p-03", None).await;
            call(&s, Method::POST, "/v1/rooms", Some(json!({"id": "p-99"}))).await;
        }
        match page["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).map(|i| format!("p-{i:02}")).collect();
    expected.push("p-99".into());
    assert_eq!(seen, expected, "every room once, in creation order");
    assert_eq!(pages, 3);
    for bad in [
        "/v1/rooms?limit=0",
        "/v1/rooms?limit=1001",
        "/v1/rooms?cursor=%21%21",
        "/v1/rooms/p-00/peers?limit=0",
        "/v1/rooms/p-00/peers?cursor=x",
    ] {
        let (st, body) = call(&s, Method::GET, bad, None).await;
        assert_eq!(st, 400, "{bad}: {body}");
    }
    // A room's peers come in pages too, in join order.
    call(&s, Method::POST, "/v1/rooms", Some(json!({"id": "pp"}))).await;
    let mut clients = Vec::new();
    for who in ["a", "b", "c"] {
        clients.push(s.join("pp", who).await);
    }
    let (_, first) = call(&s, Method::GET, "/v1/rooms/pp/peers?limit=2", None).await;
    let names = |v: &Value| -> Vec<String> {
        v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["identity"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&first), ["a", "b"]);
    let cursor = first["nextCursor"].as_str().unwrap().to_owned();
    let (_, second) = call(
        &s,
        Method::GET,
        &format!("/v1/rooms/pp/peers?limit=2&cursor={cursor}"),
        None,
    )
    .await;
    assert_eq!(names(&second), ["c"]);
    assert!(second.get("nextCursor").is_none(), "{second}");
}

#[tokio::test]
async fn invalid_room_bodies_are_400() {
    let s = TestServer::start().await;
    for body in [
        json!({"id": "has space"}),
        json!({"id": ""}),
        json!({"id": "x".repeat(200)}),
        json!({"maxPeers": 0}),
        json!({"maxPeers": 51}),
        json!({"unknownField": 1}),
        json!({"members": "not-a-list"}),
        json!({"name": "n".repeat(2000)}),
        json!([1, 2]),
    ] {
        let (st, err) = call(&s, Method::POST, "/v1/rooms", Some(body.clone())).await;
        assert_eq!(st, 400, "{body}");
        assert_error(&err, "bad_request");
    }
    let res = s
        .http()
        .post(s.url("/v1/rooms"))
        .bearer_auth(SECRET)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 415);
    let res = s
        .http()
        .post(s.url("/v1/rooms"))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = s
        .http()
        .post(s.url("/v1/rooms"))
        .bearer_auth(SECRET)
        .json(&json!({"name": "x".repeat(300 << 10)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    let body: Value = res.json().await.unwrap();
    assert_error(&body, "too_large");
}

#[tokio::test]
async fn peers_of_a_room() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let (st, body) = call(&s, Method::GET, &format!("/v1/rooms/{room}/peers"), None).await;
    assert_eq!((st, body), (StatusCode::OK, json!({"peers": []})));
    let a = s.join(&room, "alice").await;
    let (_, body) = call(&s, Method::GET, &format!("/v1/rooms/{room}/peers"), None).await;
    assert_eq!(body["peers"][0]["id"], a.id());
    assert_eq!(body["peers"][0]["identity"], "alice");
    assert_eq!(body["peers"][0]["connected"], true);
    let (_, got) = call(&s, Method::GET, &format!("/v1/rooms/{room}"), None).await;
    assert_eq!(got["peerCount"], 1);
    let (st, body) = call(&s, Method::GET, "/v1/rooms/nope/peers", None).await;
    assert_eq!(st, 404);
    assert_error(&body, "room_not_found");
}

#[tokio::test]
async fn tokens_from_the_api_open_their_room() {
    let s = TestServer::start().await;
    let room = s.room().await;
    let (st, body) = call(
        &s,
        Method::POST,
        &format!("/v1/rooms/{room}/tokens"),
        Some(json!({
            "identity": "alice", "name": "Alice", "ttlSecs": 120, "metadata": {"role": "host"},
            "permissions": {"sendData": true}
        })),
    )
    .await;
    assert_eq!(st, 201);
    let token = body["token"].as_str().unwrap().to_owned();
    let exp = body["expiresAt"].as_u64().unwrap();
    assert!(exp >= crate::common::now() + 110 && exp <= crate::common::now() + 130);
    let claims = s.secret.verify(&token).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.room.as_str()),
        ("alice", room.as_str())
    );

    let mut c = crate::common::Client::connect(s.addr).await;
    c.send_frame(&bluecam_proto::ClientMessage::Join {
        token,
        resume: None,
    })
    .await;
    let joined = c.expect_joined().await;
    assert_eq!(joined["self"]["name"], "Alice");
    assert_eq!(joined["self"]["metadata"], json!({"role": "host"}));

    let (st, body) = call(
        &s,
        Method::POST,
        "/v1/rooms/nope/tokens",
        Some(json!({"identity": "a"})),
    )
    .await;
    assert_eq!(st, 404);
    assert_error(&body, "room_not_found");
    for bad in [
        json!({}),
        json!({"identity": ""}),
        json!({"identity": "a", "ttlSecs": 0}),
    ] {
        let (st, body) = call(
            &s,
            Method::POST,
            &format!("/v1/rooms/{room}/tokens"),
            Some(bad),
        )
        .await;
        assert_eq!(st, 400);
        assert_error(&body, "bad_request");
    }
}

#[tokio::test]
async fn auth_is_required_on_every_api_route() {
    let s = TestServer::start().await;
    let routes = [
        (Method::POST, "/v1/rooms"),
        (Method::GET, "/v1/rooms"),
        (Method::GET, "/v1/rooms/x"),
        (Method::DELETE, "/v1/rooms/x"),
        (Method::PATCH, "/v1/rooms/x"),
        (Method::GET, "/v1/rooms/x/peers"),
        (Method::POST, "/v1/rooms/x/tokens"),
    ];
    for (method, path) in routes {
        let res = s
            .http()
            .request(method.clone(), s.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer");
        let body: Value = res.json().await.unwrap();
        assert_error(&body, "unauthorized");
        let res = s
            .http()
            .request(method.clone(), s.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401, "{method} {path}");
    }
}

#[tokio::test]
async fn health_ready_metrics_and_unknown_routes() {
    let s = TestServer::start().await;
    let res = s.http().get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let res = s.http().get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let room = s.room().await;
    let _a = s.join(&room, "a").await;
    let text = s.get_text("/metrics").await;
    for name in [
        "bluecam_connections",
        "bluecam_rooms_active",
        "bluecam_peers",
        "bluecam_frames_in_total{op=\"join\"}",
        "bluecam_frames_out_total",
        "bluecam_relay_bytes_total",
        "bluecam_joins_total",
        "bluecam_queue_overflows_total",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    let (st, body) = call(&s, Method::GET, "/nope", None).await;
    assert_eq!(st, 404);
    assert_error(&body, "not_found");
    let res = s
        .http()
        .put(s.url("/v1/rooms"))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn the_sdk_is_served_with_cors_and_an_etag() {
    let s = TestServer::start().await;
    let res = s.http().get(s.url("/sdk/bluecam.js")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        res.text()
            .await
            .unwrap()
            .contains("export async function joinRoom")
    );
    let again = s
        .http()
        .get(s.url("/sdk/bluecam.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    for module in ["delivery.js", "errors.js", "mesh.js", "signaling.js"] {
        let res = s
            .http()
            .get(s.url(&format!("/sdk/{module}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{module}");
    }
    let res = s.http().get(s.url("/sdk/nope.js")).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn demo_endpoints_mint_rooms_and_tokens_only_when_the_demo_is_on() {
    let s = TestServer::start().await; // loopback bind: the demo is on by default
    let page = s.get_text("/").await;
    assert!(page.contains("New private room"));
    let res = s.http().post(s.url("/demo/rooms")).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let id = created["room"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["invite"], format!("/?room={id}"));
    assert_eq!(created["room"]["maxPeers"], 8);
    let res = s
        .http()
        .post(s.url(&format!("/demo/rooms/{id}/tokens")))
        .json(&json!({"name": "Ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let token: Value = res.json().await.unwrap();
    let claims = s.secret.verify(token["token"].as_str().unwrap()).unwrap();
    assert_eq!(claims.room.as_str(), id);
    assert_eq!(claims.name.as_deref(), Some("Ann"));
    let res = s
        .http()
        .post(s.url("/demo/rooms/nope/tokens"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    let off = TestServer::with(|c| c.demo = Some(false)).await;
    let res = off
        .http()
        .post(off.url("/demo/rooms"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let body: Value = res.json().await.unwrap();
    assert_error(&body, "not_found");
    let page = off.get_text("/").await;
    assert!(page.contains("BlueCam is running"));
}

/// `PATCH /v1/rooms/{id}`: the given fields change (`null` clears an optional one), checked as
/// at creation; the joins that follow obey the new maximum and member list.
#[tokio::test]
async fn a_room_changes_with_patch_and_joins_follow_it() {
    use bluecam_proto::CloseCode;
    let s = TestServer::start().await;
    let (status, room) = call(
        &s,
        Method::POST,
        "/v1/rooms",
        Some(json!({"name": "a", "owner": "olga", "members": ["alice", "bob"], "maxPeers": 5})),
    )
    .await;
    assert_eq!(status, 201);
    let id = room["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/rooms/{id}");
    let (status, changed) = call(
        &s,
        Method::PATCH,
        &path,
        Some(json!({"name": "b", "maxPeers": 1, "metadata": {"plan": "pro"}})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "b");
    assert_eq!(changed["maxPeers"], 1);
    assert_eq!(changed["metadata"], json!({"plan": "pro"}));
    assert_eq!(changed["owner"], "olga", "unchanged");
    assert_eq!(changed["members"], json!(["alice", "bob"]), "unchanged");
    assert_eq!(changed["createdAt"], room["createdAt"]);
    let (_, got) = call(&s, Method::GET, &path, None).await;
    assert_eq!(got["name"], "b");
    assert_eq!(got["maxPeers"], 1);
    // The new maximum: one peer.
    let mut alice = s.join(&id, "alice").await;
    crate::common::Client::join_fails(
        s.addr,
        s.token(&id, "bob"),
        "room_full",
        CloseCode::RoomFull,
    )
    .await;
    // Room for three, and no member list any more: anyone with a token.
    let (status, changed) = call(
        &s,
        Method::PATCH,
        &path,
        Some(json!({"maxPeers": 3, "members": null})),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["members"], Value::Null);
    assert_eq!(changed["peerCount"], 1);
    let mut carol = s.join(&id, "carol").await;
    alice.recv_op("peer_joined").await;
    // A member list again, without bob.
    call(
        &s,
        Method::PATCH,
        &path,
        Some(json!({"members": ["alice", "carol"]})),
    )
    .await;
    crate::common::Client::join_fails(
        s.addr,
        s.token(&id, "bob"),
        "forbidden",
        CloseCode::Forbidden,
    )
    .await;
    // Checked as at creation; the room is left as it was.
    for (body, what) in [
        (json!({"maxPeers": 0}), "maxPeers 0"),
        (json!({"maxPeers": null}), "maxPeers null"),
        (json!({"owner": "x"}), "a field that cannot change"),
        (json!({"name": 5}), "a name that is not text"),
        (json!({"name": "n".repeat(10_000)}), "a name too long"),
    ] {
        let (status, body) = call(&s, Method::PATCH, &path, Some(body)).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_error(&body, "bad_request");
    }
    let (_, got) = call(&s, Method::GET, &path, None).await;
    assert_eq!(
        (got["name"].clone(), got["maxPeers"].clone()),
        (json!("b"), json!(3))
    );
    let (status, body) = call(
        &s,
        Method::PATCH,
        "/v1/rooms/no-such-room",
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&body, "room_not_found");
    carol.send_json(json!({"op": "leave"})).await;
    alice.send_json(json!({"op": "leave"})).await;
}

/// `DELETE /v1/rooms/{id}/peers/{peerId}`: the peer's connection closes with `kicked`, the
/// others see it leave with reason `kicked`, its identity's tokens issued until then open
/// nothing (a resume presents one too), a token issued later does, and all of it survives a
/// restart. A detached peer (away within its resume window) goes at once too.
#[tokio::test]
async fn a_removed_peer_is_closed_and_its_tokens_stop_working() {
    use crate::common::{Client, creds};
    use bluecam_proto::{ClientMessage, CloseCode};
    let s = TestServer::start().await;
    let id = s.room().await;
    let mut alice = s.join(&id, "alice").await;
    let mut bob = s.join(&id, "bob").await;
    alice.recv_op("peer_joined").await;
    let bob_creds = creds(&bob);
    let path = format!("/v1/rooms/{id}/peers/{}", bob.id());
    let (status, body) = call(&s, Method::DELETE, &path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["peer"]["id"], bob.id());
    assert_eq!(body["peer"]["identity"], "bob");
    let removed_at = body["removedAt"].as_u64().unwrap();
    assert!(removed_at.abs_diff(crate::common::now()) <= 2, "{body}");
    assert_eq!(bob.closed().await, Some(CloseCode::Kicked.code()));
    alice.expect_left(&bob.id(), "kicked").await;
    let (_, peers) = call(&s, Method::GET, &format!("/v1/rooms/{id}/peers"), None).await;
    assert_eq!(peers["peers"].as_array().unwrap().len(), 1, "{peers}");

    // Tokens issued up to the removal's second are refused, a resume with one included.
    let old = s.token_with(&id, "bob", |c| c.iat = removed_at);
    Client::join_fails(s.addr, old.clone(), "unauthorized", CloseCode::Unauthorized).await;
    let mut c = Client::connect(s.addr).await;
    c.send_frame(&ClientMessage::Join {
        token: old,
        resume: Some(bob_creds),
    })
    .await;
    c.expect_error("unauthorized").await;
    // Other identities are not affected.
    let carol = s.join(&id, "carol").await;
    alice.recv_op("peer_joined").await;
    // A token issued after the removal opens the room: minted offline a second later, or
    // by the API at once (which issues it for the next second).
    let later = s.token_with(&id, "bob", |c| c.iat = removed_at + 1);
    let mut again = Client::connect(s.addr).await;
    again
        .send_frame(&ClientMessage::Join {
            token: later,
            resume: None,
        })
        .await;
    again.expect_joined().await;
    again.send_json(json!({"op": "leave"})).await;
    let (status, minted) = call(
        &s,
        Method::POST,
        &format!("/v1/rooms/{id}/tokens"),
        Some(json!({"identity": "bob"})),
    )
    .await;
    assert_eq!(status, 201, "{minted}");
    let mut third = Client::connect(s.addr).await;
    third
        .send_frame(&ClientMessage::Join {
            token: minted["token"].as_str().unwrap().to_owned(),
            resume: None,
        })
        .await;
    third.expect_joined().await;

    // A detached peer: removed at once, and its resume fails.
    let carol_id = carol.id();
    let carol_creds = creds(&carol);
    drop(carol);
    s.wait_disconnected(&id, &carol_id).await;
    let (status, _) = call(
        &s,
        Method::DELETE,
        &format!("/v1/rooms/{id}/peers/{carol_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(s.presence(&id, &carol_id).await, None);
    let mut c = Client::connect(s.addr).await;
    c.send_frame(&ClientMessage::Join {
        token: s.token_with(&id, "carol", |c| c.iat = removed_at),
        resume: Some(carol_creds),
    })
    .await;
    c.expect_error("unauthorized").await;

    // Unknown peer, unknown room.
    let (status, body) = call(&s, Method::DELETE, &path, None).await;
    assert_eq!(status, 404);
    assert_error(&body, "unknown_peer");
    let (status, body) = call(&s, Method::DELETE, "/v1/rooms/nope/peers/x", None).await;
    assert_eq!(status, 404);
    assert_error(&body, "room_not_found");

    // The refusal is durable.
    drop((alice, third));
    let dir = s.stop().await;
    let s = TestServer::in_dir(dir, |_| {}).await;
    Client::join_fails(
        s.addr,
        s.token_with(&id, "bob", |c| c.iat = removed_at),
        "unauthorized",
        CloseCode::Unauthorized,
    )
    .await;
    s.join(&id, "alice").await;
}

/// `POST /v1/rooms/{id}/messages`: every peer, or those named, gets a `server_message`,
/// numbered in its own sequence space; what a peer has not acknowledged comes again after
/// its resume (and only that); ids not in the room are reported, not an error.
#[tokio::test]
async fn the_backend_sends_messages_into_a_room_acknowledged_end_to_end() {
    use crate::common::{Client, creds};
    use bluecam_proto::ClientMessage;
    let s = TestServer::start().await;
    let id = s.room().await;
    let path = format!("/v1/rooms/{id}/messages");
    let mut alice = s.join(&id, "alice").await;
    let mut bob = s.join(&id, "bob").await;
    alice.recv_op("peer_joined").await;
    let (status, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"type": "notice", "data": {"text": "ends in 5 minutes"}})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["unreachable"], json!([]));
    assert_eq!(body["sent"].as_array().unwrap().len(), 2);
    let mut epochs = Vec::new();
    for c in [&mut alice, &mut bob] {
        let m = c.recv_op("server_message").await;
        assert_eq!(
            (m["s"].as_u64(), &m["type"], &m["data"]),
            (
                Some(1),
                &json!("notice"),
                &json!({"text": "ends in 5 minutes"})
            ),
            "{m}"
        );
        epochs.push(m["e"].as_u64().unwrap());
    }
    // To bob, and to an id that is not in the room.
    let (status, body) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"type": "t", "data": 2, "to": [bob.id(), "nobody"]})),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (body["sent"].clone(), body["unreachable"].clone()),
        (json!([bob.id()]), json!(["nobody"]))
    );
    assert_eq!(bob.recv_op("server_message").await["s"], 2);
    // Bob acknowledges the first only, and his connection drops; a third comes meanwhile.
    bob.send_json(json!({"op": "server_ack", "e": epochs[1], "s": 1}))
        .await;
    bob.assert_alive().await;
    let bob_id = bob.id();
    let bob_creds = creds(&bob);
    drop(bob);
    s.wait_disconnected(&id, &bob_id).await;
    let (status, _) = call(
        &s,
        Method::POST,
        &path,
        Some(json!({"type": "t", "data": 3, "to": [bob_id]})),
    )
    .await;
    assert_eq!(status, 202);
    let (mut back, _) = s.resume(&id, "bob", bob_creds).await;
    for want in [2, 3] {
        let m = back.recv_op("server_message").await;
        assert_eq!(
            (m["e"].as_u64(), m["s"].as_u64()),
            (Some(epochs[1]), Some(want))
        );
    }
    back.assert_alive().await;
    // Bad requests.
    for (body, what) in [
        (json!({"data": 1}), "no type"),
        (json!({"type": ""}), "an empty type"),
        (json!({"type": "t", "to": []}), "an empty to"),
        (json!({"type": "t", "extra": 1}), "an unknown field"),
    ] {
        let (status, body) = call(&s, Method::POST, &path, Some(body)).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_error(&body, "bad_request");
    }
    let (status, body) = call(
        &s,
        Method::POST,
        "/v1/rooms/nope/messages",
        Some(json!({"type": "t"})),
    )
    .await;
    assert_eq!(status, 404);
    assert_error(&body, "room_not_found");
    // A malformed ack is a bad frame, not a crash.
    let mut c = Client::connect(s.addr).await;
    c.send_frame(&ClientMessage::Join {
        token: s.token(&id, "carol"),
        resume: None,
    })
    .await;
    c.expect_joined().await;
    c.send_json(json!({"op": "server_ack", "e": "x"})).await;
    c.expect_error("bad_request").await;
}
