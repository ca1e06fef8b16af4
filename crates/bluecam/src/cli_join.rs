//! `bluecam join`: a native peer of a room, for a shell (docs/native-client.md). What happens in
//! the room comes out on stdout, one JSON object per line with an `event` field; what to send
//! goes in on stdin, one JSON object per line, `{"type", "data", "to"?}`.

use anyhow::Context as _;
use bluecam_client::room::{Event, Options, Room, SendError, Transport};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use std::io::Write as _;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The server's URL (`http(s)://host:port`, a path prefix kept). Several nodes of a
    /// cluster, in order of preference: the flag again, or a comma-separated list (a node that
    /// cannot be reached, or goes away, gives way to the next).
    #[arg(long, env = "BLUECAM_SERVER", required = true, value_delimiter = ',')]
    server: Vec<String>,
    /// How to reach the server: `auto` (a WebSocket, or HTTP long-polling where one cannot be
    /// opened), `websocket` or `http`.
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// The room token (from the app's backend, `bluecam token`, or the HTTP API).
    #[arg(long, env = "BLUECAM_TOKEN", hide_env_values = true)]
    token: String,
    /// Relay only: no WebRTC data channel (the peers are told, and use the relay with it).
    #[arg(long)]
    no_webrtc: bool,
    /// Reach peers only through the server's TURN relays (`iceTransportPolicy: "relay"`).
    #[arg(long, conflicts_with = "no_webrtc")]
    relay_only_ice: bool,
    /// At the end of stdin, wait at most this long for what is still unacknowledged.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum TransportArg {
    Auto,
    Websocket,
    Http,
}

/// Lines sent and not yet delivered (or reported undeliverable) at most; stdin waits beyond.
const MAX_OUTSTANDING: usize = 1024;

/// One line on stdout (lines are written whole, one at a time).
fn emit(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn peer_json(p: &bluecam_proto::PeerInfo) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

/// A `message` line. Written with the data as it came (never re-parsed: a peer's data may hold
/// what `serde_json::Value` cannot, a lone surrogate's escape).
#[derive(serde::Serialize)]
struct MessageLine<'a> {
    event: &'static str,
    #[serde(rename = "type")]
    msg_type: &'a str,
    data: &'a serde_json::value::RawValue,
    from: serde_json::Value,
    path: &'static str,
}

/// An event as one line.
fn event_line(e: &Event) -> String {
    let json = match e {
        Event::PeerJoined(p) => serde_json::json!({"event": "peer_joined", "peer": peer_json(p)}),
        Event::PeerLeft { peer, reason } => {
            serde_json::json!({"event": "peer_left", "peer": peer_json(peer), "reason": reason})
        }
        Event::Message {
            msg_type,
            data,
            from,
            path,
        } => {
            let line = MessageLine {
                event: "message",
                msg_type,
                data,
                from: from.as_ref().map_or(
                    serde_json::json!({"server": true}),
                    |p| serde_json::json!({"id": p.id, "identity": p.identity}),
                ),
                path: path.as_str(),
            };
            let text = serde_json::to_string(&line).unwrap_or_default();
            // One line each: a raw line break in a peer's data is whitespace between its
            // JSON's tokens (a string cannot hold one), so a space in its place.
            return if text.contains(['\n', '\r']) {
                text.replace(['\n', '\r'], " ")
            } else {
                text
            };
        }
        Event::PathChange { peer, path } => {
            serde_json::json!({"event": "path", "peer": peer_json(peer), "path": path.as_str()})
        }
        Event::Connection(state) => serde_json::json!({"event": "connection", "state": state}),
        Event::Error { code, message } => {
            serde_json::json!({"event": "error", "code": code, "message": message})
        }
    };
    json.to_string()
}

fn emit_line(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The line for what became of stdin's line `n`.
fn outcome(
    n: u64,
    result: Result<Result<(), SendError>, tokio::sync::oneshot::error::RecvError>,
) -> serde_json::Value {
    match result {
        Ok(Ok(())) => serde_json::json!({"event": "delivered", "line": n}),
        Ok(Err(SendError::Undeliverable(peers))) => {
            serde_json::json!({"event": "undeliverable", "line": n, "peers": peers})
        }
        Ok(Err(e)) => {
            let code = match e {
                SendError::TooLarge(_) => "too_large",
                SendError::NotJson => "not_json",
                SendError::PermissionDenied => "permission_denied",
                SendError::Undeliverable(_) => "undeliverable",
            };
            serde_json::json!({"event": "undeliverable", "line": n, "peers": [], "code": code, "message": e.to_string()})
        }
        Err(_) => serde_json::json!({"event": "undeliverable", "line": n, "peers": []}),
    }
}

/// Writes a line's outcome and every other outcome already settled, in line order. Outcomes
/// that settle together (one acknowledgement settles many lines at once) come out of the set
/// in the order it polls them, not the order they settled: a line pushed just now whose
/// outcome was already there is polled first, ahead of older lines woken by the same
/// acknowledgement. Every outcome settled before this one has been woken by then (the room
/// settles them in order), so taking every woken one (through the set's pauses for fairness)
/// and sorting puts them back in order.
fn emit_settled(
    first: (u64, serde_json::Value),
    outstanding: &mut FuturesUnordered<impl Future<Output = (u64, serde_json::Value)>>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Wake, Waker};
    /// Whether the set asked to be polled again (it pauses after a while, and wakes itself).
    struct Woken(AtomicBool);
    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let woken = Arc::new(Woken(AtomicBool::new(false)));
    let waker = Waker::from(woken.clone());
    let mut cx = Context::from_waker(&waker);
    let mut settled = vec![first];
    // (Each pause for fairness polls some; a bound all the same, should something wake itself
    // for ever.)
    for _ in 0..4 * (outstanding.len() + 1) {
        woken.0.store(false, Ordering::SeqCst);
        match futures_util::Stream::poll_next(std::pin::Pin::new(&mut *outstanding), &mut cx) {
            Poll::Ready(Some(next)) => settled.push(next),
            Poll::Ready(None) => break,
            Poll::Pending if woken.0.load(Ordering::SeqCst) => {}
            Poll::Pending => break,
        }
    }
    settled.sort_by_key(|(n, _)| *n);
    for (_, line) in settled {
        emit(&line);
    }
}

/// One stdin line: what to send.
#[derive(serde::Deserialize)]
struct Line {
    #[serde(rename = "type")]
    msg_type: String,
    #[serde(default)]
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    to: Option<serde_json::Value>,
}

pub async fn join(args: JoinArgs) -> anyhow::Result<()> {
    let (first, others) = args
        .server
        .split_first()
        .context("--server: at least one URL")?;
    let options = Options {
        transport: match args.transport {
            TransportArg::Auto => Transport::Auto,
            TransportArg::Websocket => Transport::WebSocket,
            TransportArg::Http => Transport::Http,
        },
        nodes: others.to_vec(),
        webrtc: !args.no_webrtc,
        relay_only_ice: args.relay_only_ice,
        ..Options::default()
    };
    let mut room = Room::join(first, &args.token, options)
        .await
        .context("joining")?;
    emit(&serde_json::json!({
        "event": "joined",
        "transport": room.transport(),
        "self": peer_json(room.me()),
        "peers": room.initial_peers().iter().map(peer_json).collect::<Vec<_>>(),
    }));
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<Result<String, String>>();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt as _;
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        loop {
            let mut buf = Vec::new();
            match stdin.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8(buf)
                        .map(|l| l.trim_end_matches(['\n', '\r']).to_owned())
                        .map_err(|_| "the line is not UTF-8".to_owned());
                    if lines_tx.send(line).is_err() {
                        return;
                    }
                }
            }
        }
    });
    // Each line's outcome, written as it settles: in the order the room settles them (a
    // peer's acknowledgement settles its messages in the order they were sent).
    let mut outstanding = FuturesUnordered::new();
    let mut line_no = 0u64;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let ended_by_server = loop {
        tokio::select! {
            // (Back-pressure: at most MAX_OUTSTANDING lines wait for their outcome; stdin is
            // not read meanwhile, as the SDK's sendMessage waits above 1,024 unacknowledged.)
            Some(done) = outstanding.next(), if !outstanding.is_empty() => emit_settled(done, &mut outstanding),
            line = lines.recv(), if outstanding.len() < MAX_OUTSTANDING => {
                let Some(line) = line else { break false };
                line_no += 1;
                let parsed = line.and_then(|line| {
                    let l: Line = serde_json::from_str(&line).map_err(|e| e.to_string())?;
                    let to = match l.to {
                        None | Some(serde_json::Value::Null) => None,
                        Some(serde_json::Value::String(s)) => Some(vec![s]),
                        Some(v) => Some(serde_json::from_value::<Vec<String>>(v).map_err(|_| "`to` must be a peer id or a list of them".to_owned())?),
                    };
                    Ok((l.msg_type, l.data.map_or_else(|| "null".to_owned(), |d| d.get().to_owned()), to))
                });
                match parsed {
                    Ok((msg_type, json, to)) => {
                        let delivery = room.send(&msg_type, json, to);
                        let n = line_no;
                        // (Outside tokio's cooperative budget: `emit_settled` polls many at once.)
                        outstanding.push(tokio::task::unconstrained(async move { (n, outcome(n, delivery.await)) }));
                    }
                    Err(message) => emit(&serde_json::json!({"event": "error", "code": "bad_input", "line": line_no, "message": message})),
                }
            }
            event = room.next_event() => {
                let Some(event) = event else { break true };
                emit_line(&event_line(&event));
                if matches!(event, Event::Connection("disconnected")) {
                    break true;
                }
            }
            _ = &mut interrupt => {
                // At once: what is outstanding is told undeliverable.
                room.leave().await;
                while let Some(done) = outstanding.next().await {
                    emit_settled(done, &mut outstanding);
                }
                std::process::exit(130);
            }
        }
    };
    if ended_by_server {
        while let Some(done) = outstanding.next().await {
            emit_settled(done, &mut outstanding);
        }
        anyhow::bail!("the session ended");
    }
    // End of stdin: what is outstanding is waited for (bounded), while events still come out.
    let drain = tokio::time::sleep(Duration::from_secs(args.drain_secs));
    tokio::pin!(drain);
    let mut ended = false;
    loop {
        tokio::select! {
            done = outstanding.next() => match done {
                Some(done) => emit_settled(done, &mut outstanding),
                None => break,
            },
            event = room.next_event() => match event {
                Some(event) => {
                    emit_line(&event_line(&event));
                    if matches!(event, Event::Connection("disconnected")) {
                        ended = true;
                        break;
                    }
                }
                None => {
                    ended = true;
                    break;
                }
            },
            _ = &mut drain => break,
            _ = &mut interrupt => break,
        }
    }
    // Leaving settles what is still outstanding (told undeliverable), then each says so.
    room.leave().await;
    while let Some(done) = outstanding.next().await {
        emit_settled(done, &mut outstanding);
    }
    if ended {
        anyhow::bail!("the session ended");
    }
    Ok(())
}
