//! Checks run on untrusted input, shared by the cargo-fuzz targets (`fuzz/`, `scripts/fuzz`)
//! and the property tests of `./scripts/test` (`tests/it/fuzz.rs`): each takes raw bytes,
//! must never panic on them except where it asserts a property, and asserts what must hold for
//! any input.
//!
//! - [`client_frame`]: the WebSocket frame parser; a frame that parses prints to JSON that
//!   parses to the same frame.
//! - [`token`]: token verification; text is never a token without the secret, and a valid
//!   token with bytes changed is refused or (base64's spare bits) decodes to the same claims.
//! - [`api_bodies`]: the HTTP API's request bodies; whatever is accepted is within every bound.
//! - [`cluster_messages`]: messages from other nodes, as lines, applied to a room core that
//!   holds a local peer; the core's invariants hold after each.
//! - [`websocket_handshake`]: the handshake answered without hyper takes only what hyper's
//!   path would take, with the same answer.
//! - [`http_bodies`]: the HTTP transport's `poll` and `send` bodies and the messages that pass
//!   them between nodes; no text names a session without the secret, a `send` splits into
//!   its lines and nothing else, and a relay message decodes to what encodes it again.

use crate::{
    Secret,
    api::{CreateRoom, CreateToken, MAX_EMPTY_TIMEOUT_SECS},
    auth::Claims,
    config::LimitsConfig,
    directory::redis::{Decoded, decode_event},
};
use bluecam_core::{ClusterView, ConnId, FreshIds, Hub, JoinRequest, RoomAccess};
use bluecam_proto::{
    ClientMessage, Identity, PeerId, Permissions, Room, RoomId, RoomSummary, SessionId,
    SessionSecret,
};
use std::{sync::LazyLock, time::Instant};

static SECRET: LazyLock<Secret> = LazyLock::new(|| Secret::new("fuzzing-secret-0123456789"));
const NOW: u64 = 1_900_000_000;

/// The client frame parser.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = ClientMessage::from_json(text) {
        let printed = msg.to_json();
        let again = ClientMessage::from_json(&printed)
            .unwrap_or_else(|e| panic!("{printed} does not parse again: {e:?}"));
        assert_eq!(again.to_json(), printed, "a frame changed in a round trip");
    }
}

fn valid_claims() -> Claims {
    let now = crate::unix_now();
    Claims {
        sub: Identity::new("alice"),
        room: RoomId::new("room-1"),
        exp: now + 3600,
        iat: now,
        nbf: None,
        name: Some("Alice".into()),
        metadata: None,
        permissions: None,
    }
}

/// Token verification.
pub fn token(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            SECRET.verify(text).is_err(),
            "a token was forged without the secret: {text:?}"
        );
    }
    if data.is_empty() {
        return;
    }
    let claims = valid_claims();
    let Ok(token) = SECRET.mint(&claims) else {
        panic!("cannot mint");
    };
    let mut bytes = token.clone().into_bytes();
    let len = bytes.len();
    // The input's first byte picks where its other bytes are XORed onto the token.
    let start = usize::from(data[0]) * len / 256;
    for (i, b) in data[1..].iter().enumerate() {
        bytes[(start + i) % len] ^= b;
    }
    if let Ok(changed) = String::from_utf8(bytes)
        && let Ok(got) = SECRET.verify(&changed)
    {
        assert_eq!(
            serde_json::to_value(&got).ok(),
            serde_json::to_value(&claims).ok(),
            "a changed token was accepted with other claims: {changed}"
        );
    }
}

/// The bodies of `POST /v1/rooms` and `POST /v1/rooms/{id}/tokens`.
pub fn api_bodies(data: &[u8]) {
    const CAP: u32 = 50;
    if let Ok(body) = serde_json::from_slice::<CreateRoom>(data)
        && let Ok(room) = body.into_room(CAP, NOW)
    {
        let id = room.id.as_str();
        assert!(!id.is_empty() && id.len() <= 128, "id {id:?}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "id {id:?}"
        );
        assert!((1..=CAP).contains(&room.max_peers), "{room:?}");
        assert!(
            room.empty_timeout_secs
                .is_none_or(|t| t <= MAX_EMPTY_TIMEOUT_SECS),
            "{room:?}"
        );
        assert!(room.name.as_ref().is_none_or(|n| n.len() <= 1024));
        assert!(room.description.as_ref().is_none_or(|n| n.len() <= 1024));
        assert!(room.members.as_ref().is_none_or(|m| m.len() <= 1000));
        // What is stored and listed prints and reads back.
        let printed = serde_json::to_string(&room).unwrap_or_default();
        let back: Room = serde_json::from_str(&printed)
            .unwrap_or_else(|e| panic!("{printed} does not read back: {e}"));
        assert_eq!(back.max_peers, room.max_peers);
    }
    if let Ok(body) = serde_json::from_slice::<CreateToken>(data)
        && let Ok(claims) = body.into_claims(RoomId::new("room-1"), (3600, 7 * 86_400), NOW)
    {
        assert!(claims.exp > claims.iat && claims.exp - claims.iat <= 7 * 86_400);
        assert!(!claims.sub.as_str().is_empty() && claims.sub.as_str().len() <= 1024);
        // A minted token verifies to the same claims (checked without the clock: the claims
        // are in the future of NOW, not of the machine).
        let token = SECRET
            .mint(&claims)
            .unwrap_or_else(|e| panic!("cannot mint {claims:?}: {e}"));
        let payload = token.split('.').nth(1).unwrap_or_default();
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap_or_default();
        let back: Claims = serde_json::from_slice(&decoded)
            .unwrap_or_else(|e| panic!("the payload of {token} does not read back: {e}"));
        assert_eq!(
            serde_json::to_value(&back).ok(),
            serde_json::to_value(&claims).ok()
        );
    }
}

/// A room core with one local peer in room `fuzz`, joined through the cluster directory.
fn cluster_core() -> Hub {
    let mut hub = Hub::new(LimitsConfig::default().core());
    let room = Room {
        id: RoomId::new("fuzz"),
        name: None,
        description: None,
        owner: None,
        members: None,
        max_peers: 8,
        empty_timeout_secs: None,
        metadata: None,
        created_at: NOW,
        peer_count: 0,
        multiple_sessions: false,
        removed: Default::default(),
    };
    let req = JoinRequest {
        conn: ConnId(1),
        room: RoomAccess {
            summary: RoomSummary::from(&room),
            owner: None,
            members: None,
            multiple_sessions: true,
        },
        identity: Identity::new("local"),
        name: None,
        metadata: None,
        permissions: Permissions::default(),
        resume: None,
        fresh: FreshIds::new(
            PeerId::new("local-peer"),
            SessionId::new("local-session"),
            SessionSecret::new("local-secret"),
        ),
        ice_servers: Vec::new(),
        limits: LimitsConfig::default().to_wire(8),
        cluster: Some(ClusterView {
            ver: 1,
            seq: 1,
            peers: Vec::new(),
            claimed: None,
            pending_here: Vec::new(),
            replaced: Vec::new(),
        }),
    };
    hub.begin_cluster_join(&req.room.summary.id);
    let id = req.room.summary.id.clone();
    if let Err(e) = hub.handle_join(req) {
        panic!("the fuzzing core refused its own join: {e:?}");
    }
    hub.end_cluster_join(&id);
    while hub.poll_output().is_some() {}
    hub
}

/// Messages from other nodes, one per line, applied in order.
pub fn cluster_messages(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut hub = cluster_core();
    let now = Instant::now();
    for line in text.lines() {
        match decode_event(line) {
            Ok(Some(Decoded::Room { room, ver, event })) => {
                hub.handle_room_event(&room, ver, event)
            }
            Ok(Some(Decoded::Closed { room, reason })) => hub.handle_room_closed(&room, reason),
            Ok(Some(Decoded::Kick { room, peer })) => {
                hub.handle_kick(&room, &peer);
            }
            Ok(Some(Decoded::ServerMessage { room, to, body })) => {
                if let Ok(b) =
                    serde_json::from_str::<bluecam_proto::ServerMessageBody<'_>>(body.get())
                {
                    hub.handle_server_message(&room, to.as_deref(), &b.msg_type, b.data, 1);
                }
            }
            Ok(None) | Err(_) => continue,
        }
        while hub.poll_output().is_some() {}
        if let Err(e) = hub.check_invariants() {
            panic!("after {line}: {e}");
        }
    }
    hub.handle_timeout(now + std::time::Duration::from_secs(3600));
    while hub.poll_output().is_some() {}
    if let Err(e) = hub.check_invariants() {
        panic!("after the expiry: {e}");
    }
}

/// The HTTP transport's request bodies, as `poll` and as `send`, and as a message between
/// nodes.
pub fn http_bodies(data: &[u8]) {
    use crate::{directory::HttpOp, directory::redis::RelayHead, transport::http};
    for op in [HttpOp::Poll, HttpOp::Send] {
        if let Ok(sid) = http::sid_of(op, data)
            && let Some((base, tag)) = sid.rsplit_once('.')
        {
            assert!(
                !SECRET.sid_tag_matches(base, tag),
                "a session id made without the secret passed: {sid}"
            );
        }
    }
    let body = axum::body::Bytes::copy_from_slice(data);
    let lines: Vec<_> = http::frame_lines(body).collect();
    let mut joined = lines.join(&b'\n');
    assert!(lines.iter().all(|l| !l.contains(&b'\n')));
    if data.ends_with(b"\n") {
        joined.push(b'\n');
    }
    assert_eq!(joined, data, "a send's lines are its body");
    if let Some((head, rest)) = RelayHead::decode(data) {
        let again = head.encode(rest);
        let Some((head2, rest2)) = RelayHead::decode(&again) else {
            panic!("an encoded relay message does not decode: {head:?}");
        };
        assert_eq!((&head, rest), (&head2, rest2));
    }
}

/// The WebSocket handshake taken on the socket itself (`ws::serve_direct`): never panics on
/// any bytes, and takes only what hyper's path would take, with the same answer: a head it
/// takes, parsed as hyper parses it (httparse, into a header map), passes the same handshake
/// checks with the same `Sec-WebSocket-Accept`, and has the same `Origin` and `Host`.
pub fn websocket_handshake(data: &[u8]) {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
    let Some(direct) = crate::transport::ws::direct_handshake(data) else {
        return;
    };
    assert_eq!(direct.len, data.len(), "the whole input is the head");
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    assert!(
        matches!(req.parse(data), Ok(httparse::Status::Complete(_))),
        "taken, but not a complete request for httparse"
    );
    let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
        panic!("taken, with a method hyper would not read");
    };
    let mut map = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            panic!("taken, with a header hyper would not read: {h:?}");
        };
        map.append(name, value);
    }
    let accept = match crate::transport::ws::handshake_accept(&method, &map) {
        Ok(accept) => accept,
        Err(why) => panic!("taken directly, refused through hyper: {why:?}"),
    };
    assert_eq!(accept.to_str().ok(), Some(direct.accept.as_str()));
    let get = |name| map.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    assert_eq!(
        get(header::ORIGIN),
        direct.origin.as_deref(),
        "the same Origin"
    );
    assert_eq!(get(header::HOST), direct.host.as_deref(), "the same Host");
}

/// The WebSocket frames a client sends (`transport::websocket::Decoder`): never panics, and
/// reads what tungstenite's server socket (which BlueCam used before) reads from the same
/// bytes: the same messages, pings, pongs and close replies in the same order, and the same
/// end: waiting for more bytes, or closing with the same code. The one difference allowed: a
/// frame whose header already breaks a rule is refused before its payload is all there, where
/// tungstenite waits for the rest.
pub fn websocket_frames(data: &[u8]) {
    use crate::transport::websocket::{Decoder, Event};
    use bluecam_proto::CloseCode;
    use tungstenite::{Message, error::ProtocolError, protocol::frame::FrameHeader};

    const MAX: usize = 4096;
    #[derive(Debug, PartialEq)]
    enum Seen {
        Text(String),
        Binary,
        Ping(Vec<u8>),
        Pong,
        Close(Vec<u8>),
    }

    // Ours.
    let mut decoder = Decoder::new(MAX);
    let (mut ours, mut at) = (Vec::new(), 0);
    let our_end = loop {
        match decoder.decode(&data[at..]) {
            Ok(Some((taken, event))) => {
                assert!(
                    taken > 0 && at + taken <= data.len(),
                    "took {taken} at {at}"
                );
                at += taken;
                match event {
                    Event::Text(text) => ours.push(Seen::Text(text.as_str().to_owned())),
                    Event::Binary => ours.push(Seen::Binary),
                    Event::Ping(payload) => ours.push(Seen::Ping(payload.to_vec())),
                    Event::Pong => ours.push(Seen::Pong),
                    Event::Close(reply) => {
                        ours.push(Seen::Close(reply.to_vec()));
                        break None;
                    }
                    Event::Fragment => {}
                }
            }
            Ok(None) => break None,
            Err(code) => break Some(code),
        }
    };

    // tungstenite's, reading the same bytes (what it writes back is dropped).
    struct Bytes<'a>(std::io::Cursor<&'a [u8]>);
    impl std::io::Read for Bytes<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }
    impl std::io::Write for Bytes<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX))
        .max_frame_size(Some(MAX));
    let mut socket = tungstenite::WebSocket::from_raw_socket(
        Bytes(std::io::Cursor::new(data)),
        tungstenite::protocol::Role::Server,
        Some(config),
    );
    let mut theirs = Vec::new();
    let their_end = loop {
        match socket.read() {
            Ok(Message::Text(text)) => theirs.push(Seen::Text(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => theirs.push(Seen::Binary),
            Ok(Message::Ping(payload)) => theirs.push(Seen::Ping(payload.to_vec())),
            Ok(Message::Pong(_)) => theirs.push(Seen::Pong),
            Ok(Message::Close(frame)) => {
                // The reply tungstenite sends: the frame echoed, or 1002 for a code no one may send.
                let reply = frame.map_or_else(Vec::new, |f| {
                    let (code, reason) = if f.code.is_allowed() {
                        (u16::from(f.code), f.reason.as_str().to_owned())
                    } else {
                        (1002, "Protocol violation".to_owned())
                    };
                    [&code.to_be_bytes()[..], reason.as_bytes()].concat()
                });
                theirs.push(Seen::Close(reply));
                break None;
            }
            Ok(Message::Frame(_)) => unreachable!("tungstenite reads no raw frames"),
            Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                break None;
            }
            Err(tungstenite::Error::Capacity(_)) => break Some(CloseCode::MessageTooBig),
            Err(tungstenite::Error::Utf8(_)) => break Some(CloseCode::InvalidData),
            Err(tungstenite::Error::Protocol(_)) => break Some(CloseCode::ProtocolError),
            Err(e) => panic!("tungstenite failed otherwise: {e}"),
        }
    };

    assert_eq!(ours, theirs, "the same messages");
    if our_end != their_end {
        // Refused from its header, before the frame's end is there.
        let complete = FrameHeader::parse(&mut std::io::Cursor::new(&data[at..]))
            .ok()
            .flatten()
            .is_some_and(|(header, len)| {
                (header.len(len) as u64).saturating_add(len) <= (data.len() - at) as u64
            });
        assert!(
            our_end.is_some() && their_end.is_none() && !complete,
            "ours ended {our_end:?}, tungstenite's {their_end:?}"
        );
    }
}
