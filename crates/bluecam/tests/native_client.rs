//! The native client (`bluecam-client`) against the real `bluecam serve`: two native peers in a
//! room exchange messages through the relay, exactly once and in order, and keep doing so
//! while the server is SIGKILLed and started again (their sessions resume; nothing is lost).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bluecam_client::room::{Event, Options, Room};
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
    let mut child = Command::new(BIN)
        .args(["serve", "--no-stun", "--bind", bind, "--data-dir"])
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
    let out = Command::new(BIN)
        .args(args)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_native_peers_relay_exactly_once_in_order_through_a_server_sigkill() {
    let dir = temp_dir("relay");
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
    let mut stay = Room::join(&url, &token("stay"), Options::default())
        .await
        .unwrap();
    let visitor = token("visitor");
    let mut fds = Vec::new();
    for round in 0..20u64 {
        let v = Room::join(&url, &visitor, Options::default())
            .await
            .unwrap();
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
    let a = Room::join(&url, &token("alice"), Options::default())
        .await
        .unwrap();
    let mut b = Room::join(&url, &token("bob"), Options::default())
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
    let mut alice = Room::join(&url, &token("alice"), Options::default())
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
    let mut bob = Room::join(&url, &token("bob"), Options::default())
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
