//! What an idle joined connection costs the server in live heap bytes, counted by this test
//! binary's allocator (`dhat`; not timed, not RSS: the same count on every run and machine, give or
//! take a few bytes of the server's own background work). The server runs in this process;
//! its clients run in a child process (this binary again, `footprint_clients`), so their
//! allocations are not counted. Fails above a budget, fresh from the join and again once every
//! connection has exchanged pings and gone idle (BENCHMARKS.md: a used connection once held
//! more than a fresh one).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// (The client process speaks to the test on its stdout; the test prints what it measured.)
#![allow(clippy::print_stdout)]

#[allow(dead_code)]
#[path = "it/common.rs"]
mod common;

use common::*;
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Command, Stdio},
    time::Duration,
};

// Counts live heap bytes (only while a profiler runs: the client process runs none).
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn live() -> isize {
    dhat::HeapStats::get().curr_bytes as isize
}

/// Joined connections held; rooms of ten.
const CONNECTIONS: usize = 400;
const ROOM_SIZE: usize = 10;
/// Pings each connection sends (one at a time) before the second count.
const PINGS: usize = 20;
/// Live heap bytes one idle joined connection may hold, fresh or used. Measured at this
/// commit: 1,409 fresh, 1,389 used: the server's own WebSocket layer holds no read or write
/// buffer while a connection is idle (3,326; 5,383 with tungstenite's socket), the
/// connection's task is its loop alone (the join and the end boxed, no block or function
/// around it keeping its arguments twice), the loop polls two things, its socket and one
/// signal from the driver (frames, kills, shutdown, its turn to ping), keeping no future of
/// either (2,814 with three signals, a timer and `select!`), a room keeps its peers in a vector
/// without spare slots (2,326 in a hash map), what the loop does without waiting is a plain
/// function, with what has to wait boxed (2,188: a task of 1,024 bytes), and the join owns
/// the socket until it is done, the loop is written in the task's own future and its record
/// is 80 bytes, so the task is 384 bytes (1,691: 512); a peer's record keeps its id once, a
/// single node keeps a session secret's digest, and the driver's entry per connection is 32
/// bytes (was 64), and the connection's permit under the caps 56 (72). The budget leaves room
/// for small changes, not for a buffer or a queue block more per connection, nor for the
/// task's next size (512 bytes: tokio aligns it to 128).
const BUDGET: isize = 1_500;

/// Live bytes once the count has settled (background work comes and goes).
async fn settled() -> isize {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut samples = Vec::new();
    for _ in 0..5 {
        samples.push(live());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_joined_connection_holds_no_more_than_its_budget_fresh_or_used() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let server = TestServer::start().await;
    let mut tokens = String::new();
    for r in 0..CONNECTIONS.div_ceil(ROOM_SIZE) {
        let room = server
            .create_room(serde_json::json!({ "maxPeers": ROOM_SIZE }))
            .await;
        let room = room["id"].as_str().unwrap().to_owned();
        for k in 0..ROOM_SIZE {
            tokens.push_str(&server.token(&room, &format!("u{r}-{k}")));
            tokens.push('\n');
        }
    }
    let file = temp_dir().join("tokens");
    std::fs::write(&file, tokens).unwrap();
    let before = settled().await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "footprint_clients", "--nocapture"])
        .env("BLUECAM_FOOTPRINT_ADDR", server.addr.to_string())
        .env("BLUECAM_FOOTPRINT_TOKENS", &file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Reads the child's lines until one starts with `word` (or the child is gone).
    let mut wait_for = |word: &str| {
        let mut line = String::new();
        while !line.starts_with(word) {
            line.clear();
            let n = tokio::task::block_in_place(|| out.read_line(&mut line)).unwrap();
            assert!(n > 0, "the client process ended before {word:?}");
        }
    };
    wait_for("ready");
    let fresh = (settled().await - before) / CONNECTIONS as isize;
    writeln!(child.stdin.as_mut().unwrap(), "ping").unwrap();
    wait_for("pinged");
    let used = (settled().await - before) / CONNECTIONS as isize;
    drop(child.stdin.take());
    let _ = child.wait();
    println!("live heap bytes per idle joined connection: fresh {fresh}, used {used}");
    assert!(
        fresh <= BUDGET && used <= BUDGET,
        "an idle joined connection holds {fresh} bytes fresh and {used} used: over the budget \
         of {BUDGET}"
    );
}

/// The client process of the test above (run by it, not by the suite: it does nothing
/// without the address and tokens it is given).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the client process of an_idle_joined_connection_holds_no_more_than_its_budget"]
async fn footprint_clients() {
    use bluecam_proto::ClientMessage;
    let (Ok(addr), Ok(tokens)) = (
        std::env::var("BLUECAM_FOOTPRINT_ADDR"),
        std::env::var("BLUECAM_FOOTPRINT_TOKENS"),
    ) else {
        return;
    };
    let addr = addr.parse().unwrap();
    let mut clients = Vec::new();
    for token in std::fs::read_to_string(tokens).unwrap().lines() {
        let mut c = Client::connect(addr).await;
        c.send_frame(&ClientMessage::Join {
            token: token.to_owned(),
            resume: None,
        })
        .await;
        c.expect_joined().await;
        clients.push(c);
    }
    // Everyone's `peer_joined`s read: the server's queues are empty.
    for c in &mut clients {
        while tokio::time::timeout(Duration::from_millis(20), c.next())
            .await
            .is_ok()
        {}
    }
    println!("ready {}", clients.len());
    let mut line = String::new();
    while tokio::task::block_in_place(|| std::io::stdin().read_line(&mut line)).unwrap() > 0 {
        if line.trim() == "ping" {
            for c in &mut clients {
                for _ in 0..PINGS {
                    c.send_frame(&ClientMessage::Ping).await;
                    let pong = c.next().await.unwrap();
                    assert_eq!(pong["op"], "pong", "{pong}");
                }
            }
            println!("pinged");
        }
        line.clear();
    }
}
