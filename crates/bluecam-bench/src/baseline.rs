//! The baseline: a relay with no protocol, to tell what this machine can do at all. It runs as
//! its own process (`bluecam-bench baseline-server`, hidden), on the same tokio runtime as
//! `bluecam serve` (the binary's multi-threaded default), listens with the same backlog, sets
//! `TCP_NODELAY` on accepted sockets and speaks WebSocket through the same tokio-tungstenite
//! with the same buffer sizes. It has no JSON, no auth, no limits: a client opens
//! `/room/<id>`, its first text frame (its "join") is answered with one text frame, and every
//! later one goes, as it is (shared, not copied), to the other connections of that room. (The
//! answered first frame makes its join comparable with a real one: a frame in, a frame out.)

use super::*;
use std::sync::Mutex;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{
    Utf8Bytes,
    handshake::server::{ErrorResponse, Request, Response},
};

/// One room: its members' outboxes, by connection number.
type Members = Arc<Mutex<Vec<(u64, mpsc::UnboundedSender<Utf8Bytes>)>>>;
type Rooms = Arc<Mutex<HashMap<String, Members>>>;

pub(super) async fn baseline_server(bind: SocketAddr) -> anyhow::Result<()> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(bind)?;
    let listener = socket.listen(4096)?;
    let rooms: Rooms = Arc::default();
    let mut next = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        next += 1;
        tokio::spawn(connection(tcp, Arc::clone(&rooms), next));
    }
}

async fn connection(tcp: TcpStream, rooms: Rooms, me: u64) {
    let config = WebSocketConfig::default()
        .read_buffer_size(1 << 10)
        .write_buffer_size(16 << 10)
        .max_message_size(Some(2 << 20))
        .max_frame_size(Some(2 << 20));
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let mut joined: Option<(String, Members)> = None;
    // Joins the room before the 101 goes out, so a client that sees the upgrade is reachable.
    // (The error type is tungstenite's, not ours to shrink.)
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, res: Response| -> Result<Response, ErrorResponse> {
        if let Some(room) = req.uri().path().strip_prefix("/room/") {
            let members = Arc::clone(
                rooms
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(room.to_owned())
                    .or_default(),
            );
            members
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((me, tx));
            joined = Some((room.to_owned(), members));
        }
        Ok(res)
    };
    let accepted =
        tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await;
    let Some((room, members)) = joined else {
        return;
    };
    let room = room.as_str();
    let Ok(mut ws) = accepted else {
        leave(&rooms, room, &members, me);
        return;
    };
    // One task per connection, reading and writing (as BlueCam does): no split halves, no
    // lock between them.
    let mut joined_yet = false;
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(text) = out else { break };
                // Everything queued (up to a batch) goes out in one flush.
                if ws.feed(Message::Text(text)).await.is_err() {
                    break;
                }
                let mut batch = 1;
                while batch < 64 {
                    let Ok(text) = rx.try_recv() else { break };
                    if ws.feed(Message::Text(text)).await.is_err() {
                        break;
                    }
                    batch += 1;
                }
                if ws.flush().await.is_err() {
                    break;
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(_))) if !joined_yet => {
                    joined_yet = true;
                    if ws.send(Message::Text(JOINED.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(text))) => {
                    let members = members
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    for (id, tx) in members.iter() {
                        if *id != me {
                            let _ = tx.send(text.clone());
                        }
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    leave(&rooms, room, &members, me);
}

/// The answer to a connection's first frame.
const JOINED: &str = r#"{"op":"joined"}"#;

fn leave(rooms: &Rooms, room: &str, members: &Members, me: u64) {
    let empty = {
        let mut list = members
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        list.retain(|(id, _)| *id != me);
        list.is_empty()
    };
    if empty {
        let mut rooms = rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if rooms
            .get(room)
            .is_some_and(|m| m.lock().map(|l| l.is_empty()).unwrap_or(false))
        {
            rooms.remove(room);
        }
    }
}
