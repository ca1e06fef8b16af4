//! `bluecam join`: a native peer of a room, for a shell (docs/native-client.md). What happens in
//! the room comes out on stdout, one JSON object per line with an `event` field; what to send
//! goes in on stdin, one JSON object per line, `{"type", "data", "to"?}`.

use anyhow::Context as _;
use bluecam_client::room::{Event, Options, Room};
use std::io::Write as _;
use std::time::Duration;
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct JoinArgs {
    /// The server's URL (`http(s)://host:port`, a path prefix kept).
    #[arg(long, env = "BLUECAM_SERVER")]
    server: String,
    /// The room token (from the app's backend, `bluecam token`, or the HTTP API).
    #[arg(long, env = "BLUECAM_TOKEN", hide_env_values = true)]
    token: String,
    /// Relay only: no WebRTC data channel. (The native client has no WebRTC yet, so this is
    /// what it does either way; the peers are told, and use the relay with it.)
    #[arg(long)]
    no_webrtc: bool,
    /// At the end of stdin, wait at most this long for what is still unacknowledged.
    #[arg(long, default_value_t = 30)]
    drain_secs: u64,
}

/// One line on stdout (lines are written whole, one at a time).
fn emit(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{value}");
    let _ = out.flush();
}

fn peer_json(p: &bluecam_proto::PeerInfo) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or_default()
}

fn event_json(e: &Event) -> serde_json::Value {
    match e {
        Event::PeerJoined(p) => serde_json::json!({"event": "peer_joined", "peer": peer_json(p)}),
        Event::PeerLeft { peer, reason } => {
            serde_json::json!({"event": "peer_left", "peer": peer_json(peer), "reason": reason})
        }
        Event::Message {
            msg_type,
            data,
            from,
        } => serde_json::json!({
            "event": "message",
            "type": msg_type,
            "data": data,
            "from": from.as_ref().map_or(serde_json::json!({"server": true}), |p| {
                serde_json::json!({"id": p.id, "identity": p.identity})
            }),
            "path": "relay",
        }),
        Event::Connection(state) => serde_json::json!({"event": "connection", "state": state}),
        Event::Error { code, message } => {
            serde_json::json!({"event": "error", "code": code, "message": message})
        }
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
    if !args.no_webrtc {
        eprintln!(
            "bluecam join: this client has no WebRTC yet: it uses the relay with every peer (as with --no-webrtc)"
        );
    }
    let mut room = Room::join(&args.server, &args.token, Options::default())
        .await
        .context("joining")?;
    emit(&serde_json::json!({
        "event": "joined",
        "self": peer_json(room.me()),
        "peers": room.initial_peers().iter().map(peer_json).collect::<Vec<_>>(),
    }));
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = stdin.next_line().await {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut outstanding = tokio::task::JoinSet::new();
    let mut line_no = 0u64;
    let mut interrupt = std::pin::pin!(tokio::signal::ctrl_c());
    let ended_by_server = loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break false };
                line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let parsed: Result<Line, _> = serde_json::from_str(&line);
                let parsed = parsed.map_err(|e| e.to_string()).and_then(|l| {
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
                        outstanding.spawn(async move {
                            match delivery.await {
                                Ok(Ok(())) => emit(&serde_json::json!({"event": "delivered", "line": n})),
                                Ok(Err(u)) => emit(&serde_json::json!({"event": "undeliverable", "line": n, "peers": u.peers})),
                                Err(_) => emit(&serde_json::json!({"event": "undeliverable", "line": n, "peers": []})),
                            }
                        });
                    }
                    Err(message) => emit(&serde_json::json!({"event": "error", "code": "bad_input", "line": line_no, "message": message})),
                }
            }
            event = room.next_event() => {
                let Some(event) = event else { break true };
                emit(&event_json(&event));
                if matches!(event, Event::Connection("disconnected")) {
                    break true;
                }
            }
            _ = &mut interrupt => {
                room.leave().await;
                return Ok(());
            }
        }
    };
    if ended_by_server {
        anyhow::bail!("the session ended");
    }
    // End of stdin: what is outstanding is waited for (bounded), while events still come out.
    let drain = tokio::time::sleep(Duration::from_secs(args.drain_secs));
    tokio::pin!(drain);
    loop {
        tokio::select! {
            done = outstanding.join_next() => if done.is_none() { break },
            event = room.next_event() => match event {
                Some(event) => emit(&event_json(&event)),
                None => break,
            },
            _ = &mut drain => break,
            _ = &mut interrupt => break,
        }
    }
    room.leave().await;
    Ok(())
}
