//! The native client (`bluecam-client`) against the real `bluecam serve`: two native peers in a
//! room exchange messages through the relay, exactly once and in order, and keep doing so
//! while the server is SIGKILLed and started again (their sessions resume; nothing is lost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bluecam_client::room::{Event, JoinError, Options, Room, Transport};
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;
use common::{BIN, Served, temp_dir};

/// `bluecam serve` on `bind`, until it prints its address.
fn serve(dir: &Path, bind: &str) -> Served {
    serve_with(dir, bind, &[])
}

fn serve_with(dir: &Path, bind: &str, args: &[&str]) -> Served {
    let mut child = Command::new(BIN)
        .args(["serve", "--no-stun", "--bind", bind])
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let url = line
        .trim()
        .strip_prefix("BlueCam is listening on ")
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_owned();
    // (The rest of what it prints is not read: a pipe nobody reads must not stop it.)
    std::thread::spawn(move || for _ in out.lines() {});
    Served {
        child,
        url,
        lines: vec![line],
    }
}

fn cli(dir: &Path, args: &[&str]) -> String {
    cli_env(dir, args, &[])
}

fn cli_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .arg("--data-dir")
        .arg(dir)
        .env_remove("BLUECAM_API_SECRET")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Creates a room on `url`; a function that mints a token of it for an identity.
fn room_tokens(dir: &Path, url: &str) -> impl Fn(&str) -> String {
    let room: serde_json::Value =
        serde_json::from_str(&cli(dir, &["room", "create", "--server", url])).unwrap();
    let id = room["id"].as_str().unwrap().to_owned();
    let dir = dir.to_owned();
    move |who| {
        cli(
            &dir,
            &["token", "--room", &id, "--identity", who, "--ttl", "600"],
        )
        .trim()
        .to_owned()
    }
}

/// Waits until `room` has heard that the peer `id` joined (its other events are dropped).
async fn heard_of(room: &mut Room, id: &str) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), room.next_event()).await {
            Ok(Some(Event::PeerJoined(p))) if p.id.as_str() == id => return,
            Ok(Some(_)) => {}
            other => panic!("{id} never joined, as far as the room heard: {other:?}"),
        }
    }
}

/// Waits for `n` messages of `msg_type` and returns their data's numbers, failing after 60 s;
/// the connection states seen meanwhile go to `states`.
async fn collect_states(
    room: &mut Room,
    msg_type: &str,
    n: usize,
    states: &mut Vec<&'static str>,
) -> Vec<u64> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let ev = tokio::time::timeout_at(deadline, room.next_event())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} of {n} messages of {msg_type} after 60 s: {got:?}",
                    got.len()
                )
            })
            .expect("the room ended");
        match ev {
            Event::Message {
                msg_type: t, data, ..
            } if t == msg_type => {
                let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
                got.push(v["i"].as_u64().unwrap());
            }
            Event::Connection(state) => states.push(state),
            _ => {}
        }
    }
    got
}

async fn collect(room: &mut Room, msg_type: &str, n: usize) -> Vec<u64> {
    collect_states(room, msg_type, n, &mut Vec::new()).await
}

/// The relay alone (these tests are about what goes through the server; the data channel's
/// own are in native_p2p.rs).
fn relay_options() -> Options {
    Options {
        webrtc: false,
        ..Options::default()
    }
}

fn over(transport: Transport) -> Options {
    Options {
        transport,
        ..relay_options()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_relay_exactly_once_in_order_through_a_server_sigkill() {
    relay_through_a_sigkill(Transport::Auto, "websocket").await;
}

/// The same with alice on the HTTP long-polling transport (bob on a WebSocket): her polls
/// fail while the server is away, the new server does not know her transport session (404),
/// and she resumes over HTTP with nothing lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_peer_over_http_long_polling_relays_exactly_once_in_order_through_a_server_sigkill()
 {
    relay_through_a_sigkill(Transport::Http, "http").await;
}

async fn relay_through_a_sigkill(alice: Transport, alice_over: &str) {
    let dir = temp_dir("relay");
    let first = serve(&dir, "127.0.0.1:0");
    let url = first.url.clone();
    let token = room_tokens(&dir, &url);
    let mut a = Room::join(&url, &token("alice"), over(alice))
        .await
        .unwrap();
    assert_eq!(a.transport(), alice_over);
    let mut b = Room::join(&url, &token("bob"), relay_options())
        .await
        .unwrap();
    assert_eq!(b.transport(), "websocket");
    let (a_id, b_id) = (a.me().id.to_string(), b.me().id.to_string());
    // Bob sees alice in the room at his join; alice hears of bob.
    assert_eq!(b.initial_peers().len(), 1);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), a.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::PeerJoined(p) => {
                assert_eq!(p.id.to_string(), b_id);
                break;
            }
            _ => continue,
        }
    }
    // 300 each way, not waiting for each other.
    let send = |room: &Room, to: &str, kind: &str, range: std::ops::Range<u64>| {
        range
            .map(|i| {
                room.send(
                    kind,
                    format!(r#"{{"i":{i},"text":"é ✓ {i}"}}"#),
                    Some(vec![to.to_owned()]),
                )
            })
            .collect::<Vec<_>>()
    };
    let ab = send(&a, &b_id, "ab", 0..300);
    let ba = send(&b, &a_id, "ba", 0..300);
    assert_eq!(
        collect(&mut b, "ab", 300).await,
        (0..300).collect::<Vec<_>>()
    );
    assert_eq!(
        collect(&mut a, "ba", 300).await,
        (0..300).collect::<Vec<_>>()
    );
    for d in ab.into_iter().chain(ba) {
        d.await.unwrap().unwrap();
    }

    // The server is SIGKILLed while alice sends, and started again on the same address: both
    // resume their sessions (a single node keeps them on disk), and every message arrives once.
    let bind = url.trim_start_matches("http://").to_owned();
    let more = send(&a, &b_id, "kill", 0..100);
    drop(first);
    let more_after = send(&a, &b_id, "kill", 100..200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _second = serve(&dir, &bind);
    let mut states = Vec::new();
    assert_eq!(
        collect_states(&mut b, "kill", 200, &mut states).await,
        (0..200).collect::<Vec<_>>()
    );
    assert!(
        states.ends_with(&["reconnecting", "connected"]),
        "bob resumed: {states:?}"
    );
    for d in more.into_iter().chain(more_after) {
        d.await.unwrap().unwrap();
    }
    a.leave().await;
    // Bob sees alice leave.
    loop {
        match tokio::time::timeout(Duration::from_secs(10), b.next_event())
            .await
            .unwrap()
            .unwrap()
        {
            Event::PeerLeft { peer, reason } => {
                assert_eq!(
                    (peer.id.to_string(), reason.as_str()),
                    (a_id.clone(), "left")
                );
                break;
            }
            _ => continue,
        }
    }
    b.leave().await;
}

/// Open file descriptors of this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_joins_and_leaves_keep_the_open_files_flat() {
    let dir = temp_dir("cycles");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let mut stay = Room::join(&url, &token("stay"), relay_options())
        .await
        .unwrap();
    let visitor = token("visitor");
    let mut fds = Vec::new();
    for round in 0..20u64 {
        let v = Room::join(&url, &visitor, relay_options()).await.unwrap();
        let d = v.send("hello", format!(r#"{{"i":{round}}}"#), None);
        assert_eq!(
            collect(&mut stay, "hello", 1).await,
            vec![round],
            "visitor {round}'s message"
        );
        d.await.unwrap().unwrap();
        v.leave().await;
        fds.push(open_fds());
    }
    // After the first rounds (the runtime's own files), the count does not grow.
    assert!(fds[19] <= fds[4] + 2, "open files per round: {fds:?}");
    stay.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_frozen_past_the_watchdog_is_left_and_resumed_nothing_lost() {
    let dir = temp_dir("frozen");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let a = Room::join(&url, &token("alice"), relay_options())
        .await
        .unwrap();
    let mut b = Room::join(&url, &token("bob"), relay_options())
        .await
        .unwrap();
    let b_id = b.me().id.to_string();
    let pid = served.child.id().to_string();
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    // Frozen (SIGSTOP) for longer than the client's 12 s watchdog, while alice sends: both
    // give the silent connection up, and resume once it thaws; every message arrives once.
    signal("-STOP");
    // (kill returns before every thread of the server has stopped: a message sent at once
    // could still be relayed, and nobody would need to resume.)
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|task| {
                let stat =
                    std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
                // (The state follows the command's closing parenthesis.)
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
    };
    let stopping = Instant::now();
    while !all_stopped() {
        assert!(
            stopping.elapsed() < Duration::from_secs(5),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let sends: Vec<_> = (0..50u64)
        .map(|i| {
            a.send(
                "frozen",
                format!(r#"{{"i":{i}}}"#),
                Some(vec![b_id.clone()]),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(14)).await;
    signal("-CONT");
    let mut states = Vec::new();
    assert_eq!(
        collect_states(&mut b, "frozen", 50, &mut states).await,
        (0..50).collect::<Vec<_>>()
    );
    assert!(
        states.contains(&"reconnecting") && states.last() == Some(&"connected"),
        "bob gave the frozen server up and resumed: {states:?}"
    );
    for d in sends {
        d.await.unwrap().unwrap();
    }
    a.leave().await;
    b.leave().await;
}

/// A peer that never acknowledges (a raw WebSocket client, not the crate): the sender keeps at
/// most 1,024 of its messages unacknowledged, the rest wait, and all of them settle
/// (undeliverable) once that peer leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_acknowledges_holds_back_what_goes_beyond_the_bound() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let dir = temp_dir("bound");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let ws_url = format!("{}/v1/ws", url.replacen("http", "ws", 1));
    let (mut mute, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let join = serde_json::json!({"op": "join", "token": token("mute")}).to_string();
    mute.send(Message::text(join)).await.unwrap();
    let joined: serde_json::Value = loop {
        if let Some(Ok(Message::Text(t))) = mute.next().await {
            break serde_json::from_str(&t).unwrap();
        }
    };
    assert_eq!(joined["op"], "joined", "{joined}");
    let mute_id = joined["self"]["id"].as_str().unwrap().to_owned();
    let mut alice = Room::join(&url, &token("alice"), relay_options())
        .await
        .unwrap();
    let sends: Vec<_> = (0..1_100u64)
        .map(|i| alice.send("n", format!(r#"{{"i":{i}}}"#), Some(vec![mute_id.clone()])))
        .collect();
    // Everything the mute peer gets for 3 s (retransmissions included): no message past the
    // 1,024th.
    let mut highest = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout_at(until, mute.next()).await {
        let Message::Text(text) = msg else { continue };
        let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
        if frame["op"] != "message" {
            continue;
        }
        let envelopes = match &frame["msg"] {
            serde_json::Value::Array(list) => list.clone(),
            one => vec![one.clone()],
        };
        for e in envelopes {
            if e["k"] == "m" {
                highest = highest.max(e["s"].as_u64().unwrap());
            }
        }
    }
    assert_eq!(
        highest, 1_024,
        "the highest sequence number the mute peer got"
    );
    // It leaves: every send settles, none as delivered.
    mute.send(Message::text(r#"{"op":"leave"}"#)).await.unwrap();
    for (i, d) in sends.into_iter().enumerate() {
        let outcome = tokio::time::timeout(Duration::from_secs(20), d)
            .await
            .unwrap_or_else(|_| panic!("send {i} still pending after the peer left"))
            .unwrap();
        assert!(outcome.is_err(), "send {i} settled as {outcome:?}");
    }
    // A peer that acknowledges lets what waited go as room is made: 3,000 sent at once all
    // arrive, once and in order, and every send resolves.
    let mut bob = Room::join(&url, &token("bob"), relay_options())
        .await
        .unwrap();
    let bob_id = bob.me().id.to_string();
    // (Once alice knows of bob: a send to a peer she has not heard of is undeliverable.)
    heard_of(&mut alice, &bob_id).await;
    let sends: Vec<_> = (0..3_000u64)
        .map(|i| alice.send("m", format!(r#"{{"i":{i}}}"#), Some(vec![bob_id.clone()])))
        .collect();
    assert_eq!(
        collect(&mut bob, "m", 3_000).await,
        (0..3_000).collect::<Vec<_>>()
    );
    for d in sends {
        d.await.unwrap().unwrap();
    }
    // A send to a peer in the room and to one that is not: it goes to the one, and fails
    // naming the other.
    let partly = alice.send(
        "x",
        r#"{"i":0}"#.to_owned(),
        Some(vec![bob_id.clone(), "nobody".to_owned()]),
    );
    assert_eq!(collect(&mut bob, "x", 1).await, vec![0]);
    match partly.await.unwrap() {
        Err(bluecam_client::room::SendError::Undeliverable(peers)) => {
            assert_eq!(peers, vec!["nobody".to_owned()]);
        }
        other => panic!("a send to bob and nobody settled as {other:?}"),
    }
    alice.leave().await;
    bob.leave().await;
}

/// The server gone for longer than the delivery bound: a send made meanwhile settles
/// (undeliverable) within the bound while the client is still trying to reconnect, as the
/// SDK's do; it does not wait for the app to leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_settles_within_the_bound_while_the_server_is_away() {
    let dir = temp_dir("away");
    let mut served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let options = || Options {
        delivery_timeout: Duration::from_secs(2),
        ..relay_options()
    };
    let mut alice = Room::join(&url, &token("alice"), options()).await.unwrap();
    let bob = Room::join(&url, &token("bob"), options()).await.unwrap();
    let bob_id = bob.me().id.to_string();
    heard_of(&mut alice, &bob_id).await;
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    let d = alice.send("late", r#"{"i":0}"#.to_owned(), Some(vec![bob_id]));
    let outcome = tokio::time::timeout(Duration::from_secs(15), d)
        .await
        .expect("the send still pending 15 s into the outage (bound: 2 s)")
        .unwrap();
    assert!(outcome.is_err(), "settled as {outcome:?}");
    alice.leave().await;
    bob.leave().await;
}

/// A hostile proxy in front of `upstream`: plain HTTP passes, and every WebSocket upgrade is
/// refused with a 403 or, with `hold`, left unanswered (as proxies that do not know WebSockets
/// do).
async fn websocket_blocking_proxy(upstream: &str, hold: bool) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if text.contains("upgrade: websocket") {
                    if hold {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    } else {
                        let _ = client
                            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    return;
                }
                let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                if server.write_all(&head).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Where WebSockets are blocked (refused, or held unanswered by a proxy), the client joins
/// over HTTP long-polling on its own and the guarantee holds across the two transports; a
/// client told to use WebSockets only says it cannot connect. A node that cannot be reached
/// gives way to the next of the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_websockets_fall_back_to_http_and_a_dead_node_to_the_next() {
    let dir = temp_dir("fallback");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let refusing = websocket_blocking_proxy(&url, false).await;
    let holding = websocket_blocking_proxy(&url, true).await;

    let mut alice = Room::join(&refusing, &token("alice"), relay_options())
        .await
        .unwrap();
    assert_eq!(alice.transport(), "http");
    let started = Instant::now();
    let mut carol = Room::join(&holding, &token("carol"), relay_options())
        .await
        .unwrap();
    assert_eq!(carol.transport(), "http");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "an upgrade held unanswered is given 2 s"
    );
    match Room::join(&refusing, &token("dave"), over(Transport::WebSocket)).await {
        Err(JoinError::Connect(why)) => assert!(why.contains("403"), "{why}"),
        other => panic!("a refused WebSocket, with no fallback: {other:?}"),
    }

    // Bob's first node is gone (a port nobody listens on): he joins on the second.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let options = Options {
        nodes: vec![url.clone()],
        ..relay_options()
    };
    let mut bob = Room::join(&dead, &token("bob"), options).await.unwrap();
    assert_eq!(bob.transport(), "websocket");
    let bob_id = bob.me().id.to_string();
    let alice_id = alice.me().id.to_string();
    heard_of(&mut alice, &bob_id).await;
    heard_of(&mut carol, &bob_id).await;

    // Pretty-printed data over HTTP (a frame a line there): it arrives as the same JSON (its
    // line breaks were whitespace), and the frames after it are numbered right.
    let pretty = alice.send(
        "pretty",
        "{\n  \"i\": 0,\r\n  \"s\": \"a\\nb\"\n}".to_owned(),
        Some(vec![bob_id.clone()]),
    );
    loop {
        match tokio::time::timeout(Duration::from_secs(10), bob.next_event()).await {
            Ok(Some(Event::Message { msg_type, data, .. })) if msg_type == "pretty" => {
                let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
                assert_eq!(v, serde_json::json!({"i": 0, "s": "a\nb"}));
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("the pretty-printed message never came: {other:?}"),
        }
    }
    pretty.await.unwrap().unwrap();
    // 200 each way between HTTP and WebSocket, and 50 to both at once.
    let to_bob: Vec<_> = (0..200)
        .map(|i| alice.send("ab", format!(r#"{{"i":{i}}}"#), Some(vec![bob_id.clone()])))
        .collect();
    let to_alice: Vec<_> = (0..200)
        .map(|i| {
            bob.send(
                "ba",
                format!(r#"{{"i":{i}}}"#),
                Some(vec![alice_id.clone()]),
            )
        })
        .collect();
    let to_all: Vec<_> = (0..50)
        .map(|i| bob.send("all", format!(r#"{{"i":{i}}}"#), None))
        .collect();
    assert_eq!(
        collect(&mut bob, "ab", 200).await,
        (0..200).collect::<Vec<_>>()
    );
    assert_eq!(
        collect(&mut alice, "ba", 200).await,
        (0..200).collect::<Vec<_>>()
    );
    assert_eq!(
        collect(&mut alice, "all", 50).await,
        (0..50).collect::<Vec<_>>()
    );
    assert_eq!(
        collect(&mut carol, "all", 50).await,
        (0..50).collect::<Vec<_>>()
    );
    for d in to_bob.into_iter().chain(to_alice).chain(to_all) {
        d.await.unwrap().unwrap();
    }
    // Alice leaves over HTTP: bob sees her go at once (a leave, not a timeout).
    alice.leave().await;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), bob.next_event()).await {
            Ok(Some(Event::PeerLeft { peer, reason })) if peer.id.as_str() == alice_id => {
                assert_eq!(reason, "left");
                break;
            }
            Ok(Some(_)) => {}
            other => panic!("bob never saw alice leave: {other:?}"),
        }
    }
    carol.leave().await;
    bob.leave().await;
}

/// `bluecam join` as a child: its stdout's lines come through the receiver.
fn join_cli(
    args: &[&str],
    env: &[(&str, &Path)],
) -> (
    std::process::Child,
    std::sync::mpsc::Receiver<serde_json::Value>,
) {
    let mut child = Command::new(BIN)
        .arg("join")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).unwrap());
        }
    });
    (child, rx)
}

/// The next line of `event` (others skipped), within 20 s.
fn next_line(
    lines: &std::sync::mpsc::Receiver<serde_json::Value>,
    event: &str,
) -> serde_json::Value {
    loop {
        let v = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no {event} line: {e}"));
        if v["event"] == event {
            return v;
        }
    }
}

/// `wss://` and the HTTP transport over `https://`, with built-in TLS and a certificate the
/// client trusts through `SSL_CERT_FILE` (the platform's roots otherwise).
#[test]
fn bluecam_join_reaches_a_tls_server_over_wss_and_over_https_long_polling() {
    use std::io::Write as _;
    let dir = temp_dir("tls");
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let served = serve_with(
        &dir,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let port = served.url.rsplit(':').next().unwrap().trim_end_matches('/');
    let url = format!("https://localhost:{port}");
    let trust = [("SSL_CERT_FILE", cert.as_path())];
    let room: serde_json::Value = serde_json::from_str(&cli_env(
        &dir,
        &["room", "create", "--server", &url],
        &trust,
    ))
    .unwrap();
    let token = |who: &str| {
        cli(
            &dir,
            &[
                "token",
                "--room",
                room["id"].as_str().unwrap(),
                "--identity",
                who,
            ],
        )
        .trim()
        .to_owned()
    };
    let (mut alice, alice_out) = join_cli(
        &[
            "--server",
            &url,
            "--transport",
            "websocket",
            "--token",
            &token("alice"),
        ],
        &trust,
    );
    assert_eq!(next_line(&alice_out, "joined")["transport"], "websocket");
    let (mut bob, bob_out) = join_cli(
        &[
            "--server",
            &url,
            "--transport",
            "http",
            "--token",
            &token("bob"),
        ],
        &trust,
    );
    assert_eq!(next_line(&bob_out, "joined")["transport"], "http");
    {
        let mut stdin = bob.stdin.take().unwrap();
        for i in 0..20 {
            writeln!(stdin, r#"{{"type":"t","data":{{"i":{i}}}}}"#).unwrap();
        }
    }
    for i in 0..20 {
        assert_eq!(next_line(&alice_out, "message")["data"]["i"], i);
    }
    for _ in 0..20 {
        next_line(&bob_out, "delivered");
    }
    assert!(bob.wait().unwrap().success());
    drop(alice.stdin.take());
    assert!(alice.wait().unwrap().success());
    // Without the certificate trusted, the client says it cannot connect.
    let (mut carol, _) = join_cli(&["--server", &url, "--token", &token("carol")], &[]);
    assert!(!carol.wait().unwrap().success());
}

/// Waits for the room to end with an `Error` of `code` then `disconnected`.
async fn ended_with(room: &mut Room, code: &str) {
    let mut error = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), room.next_event()).await {
            Ok(Some(Event::Error { code: c, .. })) => error = Some(c),
            Ok(Some(Event::Connection("disconnected"))) | Ok(None) => break,
            Ok(Some(_)) => {}
            Err(_) => panic!("the room did not end (expected {code})"),
        }
    }
    assert_eq!(error.as_deref(), Some(code));
}

/// One seat per identity: a fresh join of the same identity ends the older room (4042,
/// `superseded`, not resumed), and a peer kicked by the backend ends (`kicked`), as the SDK
/// decides from the same close-code vectors; the delivery to them settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seat_taken_by_the_same_identity_or_a_kick_ends_the_room_for_good() {
    let dir = temp_dir("seat");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let room: serde_json::Value =
        serde_json::from_str(&cli(&dir, &["room", "create", "--server", &url])).unwrap();
    let id = room["id"].as_str().unwrap().to_owned();
    let token = |who: &str| {
        cli(&dir, &["token", "--room", &id, "--identity", who])
            .trim()
            .to_owned()
    };
    let mut first = Room::join(&url, &token("alice"), relay_options())
        .await
        .unwrap();
    let mut bob = Room::join(&url, &token("bob"), relay_options())
        .await
        .unwrap();
    let first_id = first.me().id.to_string();
    heard_of(&mut first, bob.me().id.as_str()).await;
    let second = Room::join(&url, &token("alice"), relay_options())
        .await
        .unwrap();
    ended_with(&mut first, "superseded").await;
    // Bob sees the old seat go and the new one come.
    heard_of(&mut bob, second.me().id.as_str()).await;
    let late = bob.send("t", "1".to_owned(), Some(vec![first_id.clone()]));
    assert_eq!(
        late.await.unwrap(),
        Err(bluecam_client::room::SendError::Undeliverable(vec![
            first_id
        ]))
    );
    // The backend kicks bob.
    let bob_id = bob.me().id.to_string();
    cli(&dir, &["room", "kick", &id, &bob_id, "--server", &url]);
    ended_with(&mut bob, "kicked").await;
    second.leave().await;
}

// ---- The WebRTC data channel (`Options::webrtc`, on by default) -------------------------

use bluecam_client::room::Path as Route;

/// Waits until `room` says messages to and from `id` go by `path`.
async fn path_becomes(room: &mut Room, id: &str, path: Route) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, room.next_event()).await {
            Ok(Some(Event::PathChange { peer, path: p }))
                if peer.id.as_str() == id && p == path =>
            {
                return;
            }
            Ok(Some(_)) => {}
            other => panic!("the path to {id} never became {path:?}: {other:?}"),
        }
    }
}

/// Waits for `n` messages of `msg_type`: their numbers and the paths they came by.
async fn collect_paths(room: &mut Room, msg_type: &str, n: usize) -> Vec<(u64, Route)> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n {
        let ev = tokio::time::timeout_at(deadline, room.next_event())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} messages of {msg_type} after 60 s", got.len()))
            .expect("the room ended");
        if let Event::Message {
            msg_type: t,
            data,
            path,
            ..
        } = ev
            && t == msg_type
        {
            let v: serde_json::Value = serde_json::from_str(data.get()).unwrap();
            got.push((v["i"].as_u64().unwrap(), path));
        }
    }
    got
}

fn numbered(
    room: &Room,
    to: &str,
    kind: &str,
    range: std::ops::Range<u64>,
) -> Vec<bluecam_client::room::Delivery> {
    range
        .map(|i| {
            room.send(
                kind,
                format!(r#"{{"i":{i},"text":"é ✓ {i}"}}"#),
                Some(vec![to.to_owned()]),
            )
        })
        .collect()
}

/// Two native peers open the SDK's data channel to each other (whichever is polite: both
/// roles are played, one by each), 1,000 messages each way go over it once and in order, and
/// while the server is SIGKILLed they keep going peer to peer (acknowledged too: every
/// delivery resolves with no server at all); both resume when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_talk_over_the_data_channel_and_on_while_the_server_is_killed() {
    let dir = temp_dir("p2p");
    let first = serve(&dir, "127.0.0.1:0");
    let url = first.url.clone();
    let token = room_tokens(&dir, &url);
    let mut a = Room::join(&url, &token("alice"), Options::default())
        .await
        .unwrap();
    let mut b = Room::join(&url, &token("bob"), Options::default())
        .await
        .unwrap();
    let (a_id, b_id) = (a.me().id.to_string(), b.me().id.to_string());
    path_becomes(&mut a, &b_id, Route::P2p).await;
    path_becomes(&mut b, &a_id, Route::P2p).await;

    let ab = numbered(&a, &b_id, "ab", 0..1000);
    let ba = numbered(&b, &a_id, "ba", 0..1000);
    let want: Vec<(u64, Route)> = (0..1000).map(|i| (i, Route::P2p)).collect();
    assert_eq!(collect_paths(&mut b, "ab", 1000).await, want);
    assert_eq!(collect_paths(&mut a, "ba", 1000).await, want);
    for d in ab.into_iter().chain(ba) {
        d.await.unwrap().unwrap();
    }

    // No server: the channel carries on, messages and their acknowledgements.
    let bind = url.trim_start_matches("http://").to_owned();
    drop(first);
    let ab = numbered(&a, &b_id, "away", 0..200);
    let ba = numbered(&b, &a_id, "away", 0..200);
    let want: Vec<(u64, Route)> = (0..200).map(|i| (i, Route::P2p)).collect();
    assert_eq!(collect_paths(&mut b, "away", 200).await, want);
    assert_eq!(collect_paths(&mut a, "away", 200).await, want);
    for d in ab.into_iter().chain(ba) {
        tokio::time::timeout(Duration::from_secs(10), d)
            .await
            .expect("settled without the server")
            .unwrap()
            .unwrap();
    }
    let _second = serve(&dir, &bind);
    for room in [&mut a, &mut b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, room.next_event()).await {
                Ok(Some(Event::Connection("connected"))) => break,
                Ok(Some(Event::PeerLeft { peer, .. })) => panic!("{} seen leaving", peer.id),
                Ok(Some(_)) => {}
                other => panic!("never resumed: {other:?}"),
            }
        }
    }
    let d = a.send("after", r#"{"i":0}"#.to_owned(), None);
    assert_eq!(
        collect_paths(&mut b, "after", 1).await,
        vec![(0, Route::P2p)]
    );
    d.await.unwrap().unwrap();
    a.leave().await;
    b.leave().await;
}

/// A native peer that makes no WebRTC connection (`webrtc: false`) tells the other, which
/// then reaches it through the relay (no channel is ever reported open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_webrtc_is_reached_through_the_relay() {
    let dir = temp_dir("nortc");
    let served = serve(&dir, "127.0.0.1:0");
    let token = room_tokens(&dir, &served.url);
    let mut a = Room::join(&served.url, &token("alice"), Options::default())
        .await
        .unwrap();
    let mut b = Room::join(&served.url, &token("bob"), relay_options())
        .await
        .unwrap();
    let (a_id, b_id) = (a.me().id.to_string(), b.me().id.to_string());
    heard_of(&mut a, &b_id).await;
    let ab = numbered(&a, &b_id, "ab", 0..100);
    let ba = numbered(&b, &a_id, "ba", 0..100);
    let want: Vec<(u64, Route)> = (0..100).map(|i| (i, Route::Relay)).collect();
    assert_eq!(collect_paths(&mut b, "ab", 100).await, want);
    assert_eq!(collect_paths(&mut a, "ba", 100).await, want);
    for d in ab.into_iter().chain(ba) {
        d.await.unwrap().unwrap();
    }
    // (Nor does one open later.)
    let late = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            if let Some(Event::PathChange { .. }) = a.next_event().await {
                return;
            }
        }
    })
    .await;
    assert!(late.is_err(), "a data channel to a peer without WebRTC");
    a.leave().await;
    b.leave().await;
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 20 visitors join, open a data channel with a peer that stays, send over it and leave: the
/// connections are let go of (open files flat, memory not growing per round).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_p2p_joins_and_leaves_keep_open_files_and_memory_flat() {
    let dir = temp_dir("p2p-cycles");
    let served = serve(&dir, "127.0.0.1:0");
    let url = served.url.clone();
    let token = room_tokens(&dir, &url);
    let mut stay = Room::join(&url, &token("stay"), Options::default())
        .await
        .unwrap();
    let visitor = token("visitor");
    let (mut fds, mut rss) = (Vec::new(), Vec::new());
    for round in 0..20u64 {
        let mut v = Room::join(&url, &visitor, Options::default())
            .await
            .unwrap();
        let v_id = v.me().id.to_string();
        path_becomes(&mut v, &stay.me().id.to_string(), Route::P2p).await;
        path_becomes(&mut stay, &v_id, Route::P2p).await;
        let d = v.send("hello", format!(r#"{{"i":{round}}}"#), None);
        assert_eq!(
            collect_paths(&mut stay, "hello", 1).await,
            vec![(round, Route::P2p)],
            "visitor {round}'s message"
        );
        d.await.unwrap().unwrap();
        v.leave().await;
        // (The connection's task closes it once its room lets go.)
        tokio::time::sleep(Duration::from_millis(200)).await;
        fds.push(open_fds());
        rss.push(rss_kib());
    }
    assert!(fds[19] <= fds[4] + 2, "open files per round: {fds:?}");
    assert!(
        rss[19] <= rss[4] + 8 * 1024,
        "resident KiB per round: {rss:?}"
    );
    stay.leave().await;
}
