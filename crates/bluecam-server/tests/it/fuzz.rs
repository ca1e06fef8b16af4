//! The fuzz targets' checks (`bluecam_server::fuzzing`, run for hours by `scripts/fuzz`) as
//! short property tests on the stable toolchain: random bytes, and inputs shaped like what
//! each parser expects, with hostile values in every field.

use bluecam_server::fuzzing;
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values, hostile ones included: huge and negative numbers, floats, deep nesting,
/// prototype-pollution keys, odd strings.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(u64::MAX)),
        Just(json!(9_223_372_036_854_775_808u64)),
        Just(json!(-1)),
        Just(json!(0)),
        "[a-z0-9_.-]{0,12}".prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(Value::from("__proto__")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z]{1,8}",
        Just("__proto__".to_owned()),
        Just("constructor".to_owned()),
    ]
}

/// An object with some of `fields` (and sometimes an unknown one), each a hostile value.
fn object_of(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (prop::sample::select(fields), json_value()),
        0..fields.len() + 2,
    )
    .prop_map(|pairs| Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

const CLIENT_FIELDS: &[&str] = &[
    "op", "token", "resume", "to", "data", "msg", "ref", "session", "secret",
];
const OPS: &[&str] = &["join", "signal", "send", "leave", "ping", "pong", "nope"];

fn client_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (prop::sample::select(OPS), object_of(CLIENT_FIELDS)).prop_map(|(op, mut v)| {
            v["op"] = Value::from(op);
            v.to_string()
        }),
        object_of(CLIENT_FIELDS).prop_map(|v| v.to_string()),
    ]
}

const ROOM_FIELDS: &[&str] = &[
    "id",
    "name",
    "description",
    "owner",
    "members",
    "maxPeers",
    "emptyTimeoutSecs",
    "metadata",
];
const TOKEN_FIELDS: &[&str] = &["identity", "name", "ttlSecs", "permissions", "metadata"];

const EVENT_FIELDS: &[&str] = &[
    "t", "room", "ver", "to", "f", "node", "rec", "peer", "reason",
];
const KINDS: &[&str] = &["frame", "joined", "left", "moved", "closed", "other"];

/// A line from another node: mostly well-formed for room `fuzz`, with hostile fields.
fn cluster_line() -> impl Strategy<Value = String> {
    let rec = (
        "[a-c]",
        "[a-c]",
        any::<u64>(),
        prop::option::of(json_value()),
    )
        .prop_map(|(peer, identity, seq, extra)| {
            let mut rec = json!({"info": {"id": peer, "identity": identity}, "seq": seq % 10});
            if let Some(extra) = extra {
                rec["info"]["metadata"] = extra;
            }
            rec
        });
    let frame = prop_oneof![
        Just(json!({"op": "message", "from": "a", "msg": 1})),
        Just(json!({"op": "signal", "from": "b", "data": {}})),
        json_value(),
    ];
    prop_oneof![
        1 => any::<String>(),
        1 => object_of(EVENT_FIELDS).prop_map(|v| v.to_string()),
        6 => (
            prop::sample::select(KINDS),
            prop::sample::select(&["fuzz", "fuzz", "elsewhere"][..]),
            0u64..6,
            rec,
            frame,
            prop::sample::select(&["a", "b", "c", "local-peer"][..]),
            prop::sample::select(&["n1", "n2"][..]),
            prop::sample::select(&["left", "timeout", "kicked", "expired", "x"][..]),
        )
            .prop_map(|(t, room, ver, rec, f, peer, node, reason)| {
                json!({
                    "t": t, "room": room, "ver": ver, "rec": rec, "f": f,
                    "to": [peer], "peer": peer, "node": node, "reason": reason,
                })
                .to_string()
            }),
    ]
}

/// WebSocket handshakes: a request line and headers drawn from what a handshake has, with
/// near misses (case, whitespace, duplicates, other versions and keys), or any bytes.
fn websocket_head() -> impl Strategy<Value = Vec<u8>> {
    let line = prop::sample::select(
        &[
            "GET /v1/ws HTTP/1.1",
            "GET /v1/ws HTTP/1.1",
            "GET /v1/ws HTTP/1.1",
            "GET /v1/ws HTTP/1.1",
            "GET /v1/ws HTTP/1.0",
            "GET /v1/ws?x HTTP/1.1",
            "POST /v1/ws HTTP/1.1",
            "GET /v1/wss HTTP/1.1",
            "get /v1/ws HTTP/1.1",
        ][..],
    );
    let header = (
        prop::sample::select(
            &[
                "Connection",
                "connection",
                "Upgrade",
                "UPGRADE",
                "Sec-WebSocket-Version",
                "Sec-WebSocket-Key",
                "Origin",
                "Host",
                "Content-Length",
                "X-Other",
            ][..],
        ),
        prop::sample::select(
            &[
                "Upgrade",
                "keep-alive, upgrade",
                "websocket",
                "WebSocket",
                "13",
                " 13",
                "13 ",
                "13, 8",
                "8",
                "dGhlIHNhbXBsZSBub25jZQ==",
                " dGhlIHNhbXBsZSBub25jZQ== ",
                "dGhlIHNhbXBsZSBub25jZQ",
                "AAAAAAAAAAAAAAAAAAAAAAA=",
                "https://app.example.com",
                "rooms.example.com:443",
                "",
                "0",
                "caf\u{e9}",
            ][..],
        ),
    );
    // The four headers a handshake needs, each usually right, sometimes a near miss or absent.
    let core = |name: &'static str, right: &'static str, misses: &'static [&'static str]| {
        prop_oneof![
            6 => Just(Some(format!("{name}: {right}"))),
            2 => prop::sample::select(misses).prop_map(move |v| Some(format!("{name}: {v}"))),
            1 => Just(None),
        ]
    };
    let cores = (
        core(
            "Connection",
            "Upgrade",
            &["keep-alive", "upgrade, close", ""],
        ),
        core("Upgrade", "websocket", &["WebSocket", "h2c", "websocket2"]),
        core(
            "Sec-WebSocket-Version",
            "13",
            &["8", " 13", "13 ", "13, 8", "0"],
        ),
        core(
            "Sec-WebSocket-Key",
            "dGhlIHNhbXBsZSBub25jZQ==",
            &[
                "dGhlIHNhbXBsZSBub25jZQ",
                "AAAAAAAAAAAAAAAAAAAAAAA=",
                " dGhlIHNhbXBsZSBub25jZQ== ",
                "",
            ],
        ),
    );
    let handshake = (line, cores, prop::collection::vec(header, 0..3)).prop_map(
        |(line, (c, u, v, k), headers)| {
            let mut head = format!("{line}\r\n");
            for h in [c, u, v, k].into_iter().flatten() {
                head.push_str(&format!("{h}\r\n"));
            }
            for (name, value) in headers {
                head.push_str(&format!("{name}: {value}\r\n"));
            }
            head.push_str("\r\n");
            head.into_bytes()
        },
    );
    prop_oneof![4 => handshake, 1 => prop::collection::vec(any::<u8>(), 0..300)]
}

/// A client's WebSocket frames: mostly valid (text whole and in fragments, cut inside
/// characters, binary, pings, pongs, closes), with one rule broken here and there (a reserved
/// bit or opcode, no mask, a fragmented or long control frame, a stray continuation, bytes that
/// are not UTF-8, lengths at the cap and around the 7-bit and 16-bit length forms), the last
/// frame sometimes cut short.
fn websocket_client_frames() -> impl Strategy<Value = Vec<u8>> {
    let payload = prop_oneof![
        4 => any::<String>().prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..40),
        1 => prop::sample::select(vec![125usize, 126, 127, 4095, 4096, 4097, 65_535, 65_536])
            .prop_map(|n| vec![b'a'; n]),
        1 => Just("€😀".as_bytes()[..5].to_vec()),
    ];
    let opcode = prop_oneof![
        6 => prop::sample::select(vec![0u8, 1, 2, 8, 9, 10]),
        1 => prop::sample::select(vec![3u8, 7, 11, 15]),
    ];
    let frame = (
        opcode,
        prop::bool::weighted(0.8),
        prop::bool::weighted(0.05),
        prop::bool::weighted(0.97),
        any::<[u8; 4]>(),
        payload,
    )
        .prop_map(|(opcode, fin, rsv, masked, mask, payload)| {
            let mut out = vec![opcode | if fin { 0x80 } else { 0 } | if rsv { 0x40 } else { 0 }];
            let bit = if masked { 0x80 } else { 0 };
            match payload.len() {
                n @ 0..=125 => out.push(bit | n as u8),
                n @ 126..=0xffff => {
                    out.push(bit | 126);
                    out.extend_from_slice(&(n as u16).to_be_bytes());
                }
                n => {
                    out.push(bit | 127);
                    out.extend_from_slice(&(n as u64).to_be_bytes());
                }
            }
            if masked {
                out.extend_from_slice(&mask);
                out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
            } else {
                out.extend_from_slice(&payload);
            }
            out
        });
    (
        prop::collection::vec(frame, 1..8),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(frames, cut, short)| {
            let mut data = frames.concat();
            if short {
                data.truncate(cut.index(data.len() + 1));
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn websocket_handshakes(head in websocket_head()) {
        fuzzing::websocket_handshake(&head);
    }

    #[test]
    fn websocket_frames(data in websocket_client_frames()) {
        fuzzing::websocket_frames(&data);
    }

    #[test]
    fn websocket_random_bytes(data in prop::collection::vec(any::<u8>(), 0..64)) {
        fuzzing::websocket_frames(&data);
    }

    #[test]
    fn client_frames(text in client_frame()) {
        fuzzing::client_frame(text.as_bytes());
    }

    #[test]
    fn tokens(bytes in prop::collection::vec(any::<u8>(), 0..48), text in any::<String>()) {
        fuzzing::token(&bytes);
        fuzzing::token(text.as_bytes());
    }

    #[test]
    fn api_bodies(room in object_of(ROOM_FIELDS), token in object_of(TOKEN_FIELDS), raw in any::<String>()) {
        fuzzing::api_bodies(room.to_string().as_bytes());
        fuzzing::api_bodies(token.to_string().as_bytes());
        fuzzing::api_bodies(raw.as_bytes());
    }

    #[test]
    fn cluster_messages(lines in prop::collection::vec(cluster_line(), 1..24)) {
        fuzzing::cluster_messages(lines.join("\n").as_bytes());
    }

    #[test]
    fn http_bodies(
        sid in "[a-zA-Z0-9_.-]{0,60}",
        n in any::<u64>(),
        lines in prop::collection::vec(any::<String>(), 0..6),
        raw in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let poll = json!({"sid": sid, "ack": n}).to_string();
        fuzzing::http_bodies(poll.as_bytes());
        let head = json!({"sid": sid, "seq": n}).to_string();
        let send = std::iter::once(head).chain(lines).collect::<Vec<_>>().join("\n");
        fuzzing::http_bodies(send.as_bytes());
        let relay = format!("{{\"q\":{n},\"from\":\"{sid}\",\"op\":\"poll\"}}\n{send}");
        fuzzing::http_bodies(relay.as_bytes());
        fuzzing::http_bodies(&raw);
    }
}

/// The checks can fail: each rejects an input that breaks its property.
#[test]
fn the_checks_catch_what_they_guard() {
    // A forged token is caught by the token check's first assertion.
    let secret = bluecam_server::Secret::new("fuzzing-secret-0123456789");
    let now = crate::common::now();
    let forged = secret
        .mint(&bluecam_server::Claims {
            sub: "x".into(),
            room: "r".into(),
            exp: now + 60,
            iat: now,
            nbf: None,
            name: None,
            metadata: None,
            permissions: None,
        })
        .unwrap();
    let caught = std::panic::catch_unwind(|| fuzzing::token(forged.as_bytes()));
    assert!(caught.is_err(), "a valid token passed as a forgery");
    // A session id made with the secret is caught by the transport check.
    let base = "node1.abcdefghijklmnopqrstuv1";
    let sid = format!("{base}.{}", secret.sid_tag(base));
    let poll = format!(r#"{{"sid":"{sid}","ack":0}}"#);
    let caught = std::panic::catch_unwind(|| fuzzing::http_bodies(poll.as_bytes()));
    assert!(caught.is_err(), "a real session id passed as a forgery");
    // Valid inputs of each kind pass (a handshake the direct path takes, through both paths).
    fuzzing::websocket_handshake(
        b"GET /v1/ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    fuzzing::client_frame(br#"{"op":"send","msg":{"a":1},"ref":3}"#);
    fuzzing::api_bodies(br#"{"maxPeers": 2, "emptyTimeoutSecs": 60}"#);
    fuzzing::api_bodies(br#"{"identity": "a", "ttlSecs": 60}"#);
    fuzzing::cluster_messages(
        br#"{"t":"joined","room":"fuzz","ver":2,"node":"n2","rec":{"info":{"id":"a","identity":"a"},"seq":2}}
{"t":"frame","room":"fuzz","ver":2,"to":["local-peer"],"f":{"op":"message","from":"a","msg":1}}
{"t":"left","room":"fuzz","ver":3,"peer":"a","reason":"left"}"#,
    );
}
