//! `GET /v1/ws`: one task per connection. It reads the `join` (within the deadline), then
//! loops: frames in (size cap, rate limit, parse, hand to the hub), frames out (from its
//! bounded queue, batched into one flush), liveness pings, and the hub's or the server's
//! request to close.

use crate::{AppState, api::ApiError, auth::TokenError, hub::Outbound, serve::ConnPermit};
use axum::{
    body::Body,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use bluecam_core::{BadFrameWindow, ConnId, FreshIds, JoinRequest, RateLimiter, RoomAccess};
use bluecam_proto::{
    ClientMessage, CloseCode, ErrorCode, ErrorFrame, FrameError, PeerId, RoomClosedReason,
    RoomSummary, ServerMessage, SessionId, SessionSecret,
};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tungstenite::{
    Message, Utf8Bytes,
    protocol::{CloseFrame, Role, WebSocketConfig},
};

/// Frames written per flush at most, so one busy connection cannot hog its task's writes.
pub(crate) const WRITE_BATCH: usize = 64;

/// Frames up to this size still get their `ref` echoed in a `rate_limited` error (reading the
/// `ref` of a larger frame would cost the parse the limit is there to avoid).
const RATE_LIMITED_REF_MAX: usize = 64 << 10;

/// The server's side of one WebSocket.
type WebSocket = WebSocketStream<Counted<TokioIo<hyper::upgrade::Upgraded>>>;

/// What carries one client's frames: a WebSocket, or the HTTP transport's emulation of one
/// (`crate::http`). Everything above it (join, limits, the hub, resume) is the same.
// One per connection, made once and kept in place for the connection's life: boxing the
// larger variant would only add an indirection to every WebSocket read and write.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Link {
    Ws(WebSocket),
    Http(crate::http::HttpLink),
}

/// What came in from the client.
pub(crate) enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A sign of life without a frame (a WebSocket ping or pong).
    Heard,
    /// The client closed, or the connection is gone.
    Gone,
    /// What the client sent must close the connection with this code (none: no one to tell).
    Broken(Option<CloseCode>),
}

impl Link {
    /// The next thing from the client. Cancellation-safe.
    async fn next(&mut self) -> Incoming {
        match self {
            Self::Ws(socket) => match socket.next().await {
                Some(Ok(Message::Text(text))) => Incoming::Text(text),
                Some(Ok(Message::Binary(_))) => Incoming::Binary,
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                    Incoming::Heard
                }
                Some(Ok(Message::Close(_))) | None => Incoming::Gone,
                Some(Err(e)) => Incoming::Broken(read_error_close(e)),
            },
            Self::Http(link) => link.next().await,
        }
    }

    /// Sends one frame now (errors): `Err` when the connection is gone.
    async fn send_text(&mut self, text: String) -> Result<(), CloseCode> {
        match self {
            Self::Ws(socket) => socket
                .send(Message::Text(text.into()))
                .await
                .map_err(|_| CloseCode::InternalError),
            // Errors are bounded like every other frame: a client that makes them faster than
            // it polls is a slow consumer.
            Self::Http(link) if link.down.bytes() > link.cap => Err(CloseCode::SlowConsumer),
            Self::Http(link) => {
                link.down.push(text.into(), false);
                Ok(())
            }
        }
    }

    /// When the client was last heard of, given when the last frame came.
    fn heard_at(&self, last_frame: Instant) -> Instant {
        match self {
            Self::Ws(_) => last_frame,
            Self::Http(link) => link.down.last_request().max(last_frame),
        }
    }

    /// A liveness ping (WebSocket only: an HTTP client polls); false when the socket is gone.
    async fn ping(&mut self) -> bool {
        match self {
            Self::Ws(socket) => socket
                .send(Message::Ping(bytes::Bytes::new()))
                .await
                .is_ok(),
            Self::Http(_) => true,
        }
    }

    /// See [`write_batch`].
    async fn write_batch(
        &mut self,
        slot: &mut Option<Outbound>,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &crate::hub::ConnShared,
        state: &AppState,
    ) -> Option<Option<CloseCode>> {
        match self {
            Self::Ws(socket) => write_batch(socket, slot, rx, shared, state).await,
            Self::Http(link) => link.write_batch(slot, rx, shared, state).await,
        }
    }
}

/// The upgraded connection, counting the bytes its socket takes: the write-stall rule looks at
/// progress (a socket that takes nothing for `write_stall_ms`), not at how long one write took,
/// so a slow reader that keeps reading is never cut off by one large message.
pub(crate) struct Counted<T> {
    inner: T,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<T> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Counted<T> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Runs `write` to completion, or gives up (`None`) once the socket has taken no byte for a
/// whole `stall`.
async fn unless_stalled<F: std::future::Future>(
    written: &std::sync::atomic::AtomicU64,
    stall: Duration,
    write: F,
) -> Option<F::Output> {
    let mut write = std::pin::pin!(write);
    let mut seen = written.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(stall, &mut write).await {
            Ok(out) => return Some(out),
            Err(_) => {
                let now = written.load(Ordering::Relaxed);
                if now == seen {
                    return None;
                }
                seen = now;
            }
        }
    }
}

/// A checked WebSocket handshake (RFC 6455 section 4.2.1). Every refusal is a JSON error body.
#[derive(Debug)]
pub struct WsUpgrade {
    on_upgrade: hyper::upgrade::OnUpgrade,
    accept: HeaderValue,
    /// The TCP connection's place under the connection caps, kept for the socket's life.
    permit: Option<Arc<ConnPermit>>,
    /// The request's `Host` (for the built-in STUN server's URL when no public URL is set).
    host: Option<String>,
}

/// Whether a comma-separated header has this token (case-insensitively).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let bad = |message: &str| {
            ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message).into_response()
        };
        if parts.method != axum::http::Method::GET {
            return Err(bad("a WebSocket handshake is a GET"));
        }
        let h = &parts.headers;
        if !header_has_token(h, header::CONNECTION, "upgrade")
            || !header_has_token(h, header::UPGRADE, "websocket")
        {
            return Err(bad(
                "this is the WebSocket endpoint: expected Connection: upgrade and Upgrade: websocket",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .is_none_or(|v| v.as_bytes() != b"13")
        {
            let mut res = ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                ErrorCode::BadRequest,
                "only WebSocket version 13 is supported",
            )
            .into_response();
            res.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            return Err(res);
        }
        // The key is 16 random bytes in base64 (RFC 6455 section 4.2.1).
        let key = h
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(k.as_bytes())
                    .is_ok_and(|raw| raw.len() == 16)
            })
            .ok_or_else(|| bad("missing or invalid Sec-WebSocket-Key"))?;
        let accept =
            HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
                .map_err(|_| bad("invalid Sec-WebSocket-Key"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| bad("this connection cannot be upgraded to a WebSocket"))?;
        Ok(Self {
            on_upgrade,
            accept,
            permit: parts.extensions.get::<Arc<ConnPermit>>().cloned(),
            host: h
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

/// Upgrades to a WebSocket after the origin and capacity checks.
pub async fn upgrade(State(state): State<AppState>, headers: HeaderMap, ws: WsUpgrade) -> Response {
    if !state.origin_allowed(headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())) {
        return crate::api::ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        )
        .into_response();
    }
    if state.shutdown.is_cancelled() {
        return crate::api::ApiError::unavailable("server is shutting down").into_response();
    }
    // Reserve a slot before upgrading so a storm cannot overshoot the cap.
    let open = state.connections.fetch_add(1, Ordering::AcqRel);
    if open >= state.config.limits.max_connections {
        state.connections.fetch_sub(1, Ordering::AcqRel);
        state.metrics.connections_refused.increment(1);
        return crate::api::ApiError::unavailable("too many connections on this node")
            .into_response();
    }
    let slot = ConnectionSlot(state.clone());
    // Tracked from before the 101 answer, so shutdown waits for this connection too.
    let track = state.tracker.token();
    let limits = &state.config.limits;
    // Every connection keeps its read buffer for life: 2 KiB holds ~20 small frames per read
    // (1 KiB measured ~20 % more CPU per relayed message; 4 KiB 2 KB more memory per idle
    // connection, see BENCHMARKS.md). Larger frames grow it as needed.
    let config = WebSocketConfig::default()
        .read_buffer_size(2 << 10)
        .write_buffer_size(16 << 10)
        .max_write_buffer_size(limits.outbound_queue_bytes.max(limits.hard_frame_cap()) * 2)
        .max_message_size(Some(limits.hard_frame_cap()))
        .max_frame_size(Some(limits.hard_frame_cap()));
    let WsUpgrade {
        on_upgrade,
        accept,
        permit,
        host,
    } = ws;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let io = Counted {
            inner: TokioIo::new(upgraded),
            written: Arc::default(),
        };
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        run(slot.0.clone(), Link::Ws(socket), host).await;
        drop((slot, track, permit));
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// Holds one unit of `connections` (and the gauge) until dropped.
pub(crate) struct ConnectionSlot(pub(crate) AppState);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
        self.0
            .metrics
            .connections
            .set(self.0.connections.load(Ordering::Acquire) as f64);
    }
}

/// Serves one client's connection (a WebSocket, or an HTTP transport session) to its end.
pub(crate) async fn run(state: AppState, mut socket: Link, host: Option<String>) {
    state
        .metrics
        .connections
        .set(state.connections.load(Ordering::Acquire) as f64);
    let limits = &state.config.limits;
    let first = tokio::select! {
        first = tokio::time::timeout(limits.join_timeout(), first_text(&mut socket)) => first,
        () = state.shutdown.cancelled() => {
            close(&state, &mut socket, CloseCode::ServiceRestart).await;
            return;
        }
    };
    let text = match first {
        Err(_elapsed) => {
            send_error(
                &state,
                &mut socket,
                ErrorFrame::new(
                    ErrorCode::BadRequest,
                    "no join frame within the join deadline",
                )
                .closing(CloseCode::JoinTimeout),
            )
            .await;
            close(&state, &mut socket, CloseCode::JoinTimeout).await;
            return;
        }
        Ok(Err(None)) => return,
        Ok(Err(Some(code))) => {
            close(&state, &mut socket, code).await;
            return;
        }
        Ok(Ok(text)) => text,
    };
    state.metrics.frame_in("join");
    let (conn, mut rx, shared) = state.hub.register();
    if let Err((error, code)) = join(&state, conn, &text, host.as_deref()).await {
        let vacated = state
            .hub
            .disconnect(conn, Instant::now(), Vec::new(), &mut rx);
        state.touch_rooms(vacated).await;
        send_error(&state, &mut socket, error.closing(code)).await;
        close(&state, &mut socket, code).await;
        return;
    }
    let mut connection = Connection {
        limiter: RateLimiter::new(
            limits.rate_frames_per_sec,
            limits.rate_burst_frames,
            limits.rate_bytes_per_sec,
            limits.rate_burst_bytes,
            Instant::now(),
        ),
        bad_frames: BadFrameWindow::new(
            limits.max_bad_frames,
            Duration::from_secs(limits.bad_frame_window_secs),
        ),
        last_heard: Instant::now(),
        state: state.clone(),
        conn,
        unsent: None,
    };
    let end = connection.serve(&mut socket, &mut rx, &shared).await;
    // Frames the client never got are kept for its resume, in order: over HTTP those no poll
    // has carried yet (like a WebSocket's queue; those carried and not acknowledged are like
    // bytes handed to a socket), then the one whose write was interrupted.
    let mut unsent = match &socket {
        Link::Http(link) => link.down.take_unsent(),
        Link::Ws(_) => Vec::new(),
    };
    unsent.extend(connection.unsent.take());
    let vacated = state.hub.disconnect(conn, Instant::now(), unsent, &mut rx);
    state.touch_rooms(vacated).await;
    match (end, &mut socket) {
        (Some(code), _) => close(&state, &mut socket, code).await,
        // The client closed (or the socket broke): send the close reply tungstenite queued.
        (None, Link::Ws(ws)) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.flush()).await;
        }
        // Over HTTP, the client's own close ends the session quietly; anything else (the
        // hub let go of the connection) is a slow consumer's end, resumable.
        (None, Link::Http(link)) if link.client_closed => link.down.gone(),
        (None, Link::Http(link)) => {
            let code = shared.kill_code().unwrap_or(CloseCode::SlowConsumer);
            state.metrics.closed(code);
            link.down.close(code);
        }
    }
}

/// Reads until the first text frame. `Err(None)` when the client went away first,
/// `Err(Some(code))` when what it sent must close the connection.
async fn first_text(socket: &mut Link) -> Result<Utf8Bytes, Option<CloseCode>> {
    loop {
        match socket.next().await {
            Incoming::Text(text) => return Ok(text),
            Incoming::Binary => return Ok(Utf8Bytes::from_static("")),
            Incoming::Gone => return Err(None),
            Incoming::Broken(code) => return Err(code),
            Incoming::Heard => {}
        }
    }
}

/// Verifies the `join` and admits the peer.
async fn join(
    state: &AppState,
    conn: ConnId,
    text: &str,
    host: Option<&str>,
) -> Result<PeerId, (ErrorFrame, CloseCode)> {
    let fail = |code: ErrorCode, message: &str| {
        (
            ErrorFrame::new(code, message),
            CloseCode::for_join_error(code),
        )
    };
    let msg =
        ClientMessage::from_json(text).map_err(|e| fail(ErrorCode::BadRequest, &e.message))?;
    let ClientMessage::Join { token, resume } = msg else {
        return Err(fail(ErrorCode::BadRequest, "the first frame must be join"));
    };
    let claims = state
        .secret
        .verify(&token)
        .map_err(|e: TokenError| fail(ErrorCode::Unauthorized, &e.to_string()))?;
    let room = match state.store.room(claims.room.clone()).await {
        Ok(Some(room)) => room,
        // In a cluster whose directory lost its data a moment ago, the room may be on its
        // way back: retry rather than end the call.
        Ok(None) if state.broker.directory_lost().await => {
            return Err(fail(
                ErrorCode::Unavailable,
                "the cluster directory is being rebuilt; retry",
            ));
        }
        Ok(None) => return Err(fail(ErrorCode::RoomNotFound, "no such room")),
        Err(e) => {
            tracing::error!(error = %e, "store failed during join");
            return Err(fail(
                ErrorCode::Unavailable,
                "the room store is unavailable; retry",
            ));
        }
    };
    // A token is for the room that existed when it was issued: one issued before this room
    // was created (for an earlier room of the same id, deleted since) opens nothing.
    if claims.iat.saturating_add(crate::auth::LEEWAY_SECS) < room.created_at {
        return Err(fail(
            ErrorCode::Unauthorized,
            "token issued before the room was created (for an earlier room of this id)",
        ));
    }
    let peer = PeerId::new(crate::auth::random_token(12));
    let mut ice_servers = state.config.ice_servers.clone();
    // The operator's servers first, then the built-in STUN, then this session's TURN.
    if let Some(stun) = builtin_stun(&state.config, host) {
        ice_servers.push(stun);
    }
    // The demo's anonymous guests get no TURN credentials: a relay is the operator's cost,
    // for the operator's own users.
    if let Some(turn) = &state.config.turn
        && !crate::auth::is_demo_room_id(&state.secret, room.id.as_str())
    {
        ice_servers.push(turn.ice_server(peer.as_str(), crate::unix_now()));
    }
    let fresh = FreshIds {
        peer,
        session: SessionId::new(crate::auth::random_token(16)),
        secret: SessionSecret::new(crate::auth::random_token(32)),
    };
    let permissions = claims.permissions.unwrap_or_default();
    let room_id = room.id.clone();
    let cluster = if state.broker.node().is_some() {
        cluster_admit(state, &room, &claims, permissions, &fresh, resume.as_ref()).await?
    } else {
        None
    };
    let registered = cluster.is_some() && resume.is_none();
    let req = JoinRequest {
        conn,
        room: RoomAccess {
            summary: RoomSummary::from(&room),
            owner: room.owner.clone(),
            members: room.members.clone(),
            multiple_sessions: room.multiple_sessions,
        },
        identity: claims.sub,
        name: claims.name,
        metadata: claims.metadata,
        permissions,
        resume,
        fresh: fresh.clone(),
        ice_servers,
        limits: state.config.limits.to_wire(room.max_peers),
        cluster,
    };
    let (result, vacated, persisted) = state.hub.join(req);
    // `joined` is written only once the session is durable: a client never holds a session
    // that a crash right after could lose.
    if let Some(persisted) = persisted
        && let Err(e) = persisted
            .await
            .unwrap_or_else(|_| Err("the session log is closed".into()))
    {
        tracing::warn!(error = %e, "session not durable: it will not survive a restart");
    }
    state.touch_rooms(vacated).await;
    let peer = result.map_err(|rejected| {
        if registered {
            // The directory has the peer already: take it back out.
            let _ = state.broker.send(crate::broker::Outgoing::Removed {
                room: room_id.clone(),
                peer: fresh.peer.clone(),
                session: fresh.session.clone(),
                reason: bluecam_proto::LeaveReason::Left,
            });
        }
        (
            ErrorFrame::new(rejected.code(), rejected.message()),
            CloseCode::for_join_error(rejected.code()),
        )
    })?;
    // A DELETE may have removed the room between our read and the join, and found no one to
    // close yet: look again, so the room cannot live on in the hub after its deletion.
    if matches!(state.store.room(room_id.clone()).await, Ok(None)) {
        state.hub.close_room(&room_id, RoomClosedReason::Deleted);
    }
    Ok(peer)
}

/// Cluster: records the join with the directory (or moves a session held by another node
/// here) before the core admits it; the answer is the room as the cluster sees it.
async fn cluster_admit(
    state: &AppState,
    room: &bluecam_proto::Room,
    claims: &crate::Claims,
    permissions: bluecam_proto::Permissions,
    fresh: &FreshIds,
    resume: Option<&bluecam_proto::ResumeCredentials>,
) -> Result<Option<bluecam_core::ClusterView>, (ErrorFrame, CloseCode)> {
    let fail = |code: ErrorCode, message: &str| {
        (
            ErrorFrame::new(code, message),
            CloseCode::for_join_error(code),
        )
    };
    // Checked before the directory records anyone (the core checks again).
    if resume.is_none()
        && let Some(members) = &room.members
        && room.owner.as_ref() != Some(&claims.sub)
        && !members.contains(&claims.sub)
    {
        return Err(fail(
            ErrorCode::Forbidden,
            "this identity is not a member of the room",
        ));
    }
    state.hub.begin_cluster_join(&room.id);
    let answer = match resume {
        // This node holds the session: the core resumes it, nothing moves.
        Some(creds) if state.hub.has_session(&creds.session) => Ok(None),
        Some(creds) => {
            state
                .broker
                .claim(room.id.clone(), claims.sub.clone(), creds.clone())
                .await
        }
        None => {
            state
                .broker
                .join(crate::broker::NewPeer {
                    room: room.id.clone(),
                    max_peers: room.max_peers,
                    info: bluecam_proto::PeerInfo {
                        id: fresh.peer.clone(),
                        identity: claims.sub.clone(),
                        name: claims.name.clone(),
                        metadata: claims.metadata.clone(),
                    },
                    permissions,
                    session: fresh.session.clone(),
                    secret: fresh.secret.clone(),
                })
                .await
        }
    };
    answer.map_err(|e| {
        state.hub.end_cluster_join(&room.id);
        use crate::broker::BrokerError as B;
        match e {
            B::RoomFull => fail(ErrorCode::RoomFull, "the room is full"),
            B::RoomGone => fail(ErrorCode::RoomNotFound, "no such room"),
            B::Unauthorized => fail(
                ErrorCode::Unauthorized,
                "the session to resume belongs to another room or identity",
            ),
            B::Unavailable(_) => fail(
                ErrorCode::Unavailable,
                "the cluster directory is unavailable; retry",
            ),
        }
    })
}

/// The per-connection state of the main loop.
struct Connection {
    state: AppState,
    conn: ConnId,
    limiter: RateLimiter,
    bad_frames: BadFrameWindow,
    last_heard: Instant,
    /// A frame taken from the queue whose write did not complete (see `write_batch`).
    unsent: Option<Outbound>,
}

impl Connection {
    /// Runs until the connection ends; returns the close code to send, if one is due.
    async fn serve(
        &mut self,
        socket: &mut Link,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &Arc<crate::hub::ConnShared>,
    ) -> Option<CloseCode> {
        let state = self.state.clone();
        let limits = &state.config.limits;
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + limits.ping_interval(),
            limits.ping_interval(),
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Registered once for the connection's life rather than on every wake-up (re-arming
        // them per frame was about 5 % of the server's CPU under relay load).
        let shutdown = state.shutdown.cancelled();
        tokio::pin!(shutdown);
        let killed = shared.kill.notified();
        tokio::pin!(killed);
        loop {
            // Unbiased: a connection whose queue is never empty must still read its socket and
            // send its pings.
            tokio::select! {
                () = &mut shutdown => return Some(CloseCode::ServiceRestart),
                () = &mut killed => {
                    return Some(shared.kill_code().unwrap_or(CloseCode::SlowConsumer));
                }
                out = rx.recv() => match out {
                    Some(first) => {
                        // A peer that stops reading (TCP zero window) blocks this write: the
                        // hub's overflow verdict and shutdown must still get through, and a
                        // write that takes longer than the idle timeout is a slow consumer.
                        self.unsent = Some(first);
                        let write = tokio::time::timeout(
                            limits.idle_timeout(),
                            socket.write_batch(&mut self.unsent, rx, shared, &state),
                        );
                        tokio::select! {
                            written = write => match written {
                                Ok(Some(code)) => return code,
                                Ok(None) => {}
                                Err(_) => return Some(CloseCode::SlowConsumer),
                            },
                            () = &mut killed => {
                                return Some(shared.kill_code().unwrap_or(CloseCode::SlowConsumer));
                            }
                            () = &mut shutdown => return Some(CloseCode::ServiceRestart),
                        }
                    }
                    None => return None,
                },
                msg = socket.next() => match msg {
                    Incoming::Text(text) => {
                        if let Some(code) = self.on_text(socket, &text).await {
                            return Some(code);
                        }
                    }
                    Incoming::Binary => {
                        state.metrics.frame_in("invalid");
                        let e = FrameError {
                            code: ErrorCode::BadRequest,
                            message: "binary frames are not part of the protocol".into(),
                            reference: None,
                        };
                        if let Some(code) = self.reject(socket, e).await {
                            return Some(code);
                        }
                    }
                    Incoming::Heard => self.last_heard = Instant::now(),
                    Incoming::Gone => return None,
                    Incoming::Broken(code) => return code,
                },
                _ = ping.tick() => {
                    if socket.heard_at(self.last_heard).elapsed() >= limits.idle_timeout() {
                        return Some(CloseCode::IdleTimeout);
                    }
                    if !socket.ping().await {
                        return None;
                    }
                }
            }
        }
    }

    /// One text frame from the client. Returns a close code when the connection must end.
    async fn on_text(&mut self, socket: &mut Link, text: &Utf8Bytes) -> Option<CloseCode> {
        let now = Instant::now();
        self.last_heard = now;
        let state = &self.state;
        let limits = &state.config.limits;
        if text.len() > limits.max_frame_bytes {
            state.metrics.frame_in("invalid");
            let e = FrameError {
                code: ErrorCode::TooLarge,
                message: format!(
                    "frame of {} bytes exceeds the limit of {} bytes",
                    text.len(),
                    limits.max_frame_bytes
                ),
                reference: None,
            };
            return self.reject(socket, e).await;
        }
        if let Err(wait) = self.limiter.check(text.len(), now) {
            state.metrics.frame_in("invalid");
            let reference = if text.len() <= RATE_LIMITED_REF_MAX {
                ClientMessage::from_json(text)
                    .ok()
                    .and_then(|m| frame_ref(&m))
            } else {
                None
            };
            let mut error = ErrorFrame::new(
                ErrorCode::RateLimited,
                "rate limit exceeded; the frame was dropped, send it again later",
            )
            .with_ref(reference);
            error.retry_after_ms = Some(wait.as_millis().max(1) as u64);
            state.metrics.error(ErrorCode::RateLimited);
            return send_error_frame(socket, error).await.err();
        }
        match ClientMessage::from_json(text) {
            Ok(msg) => {
                state.metrics.frame_in(msg.op());
                if let ClientMessage::Send { msg: payload, .. } = &msg {
                    state
                        .metrics
                        .relay_bytes
                        .increment(payload.get().len() as u64);
                }
                let vacated = state.hub.message(self.conn, msg);
                state.touch_rooms(vacated).await;
                None
            }
            Err(e) => {
                state.metrics.frame_in("invalid");
                self.reject(socket, e).await
            }
        }
    }

    /// Answers a bad frame with an error; too many bad frames end the connection.
    async fn reject(&mut self, socket: &mut Link, e: FrameError) -> Option<CloseCode> {
        self.state.metrics.error(e.code);
        let mut error = ErrorFrame::new(e.code, e.message).with_ref(e.reference);
        let too_many = self.bad_frames.record(Instant::now());
        if too_many {
            error = error.closing(CloseCode::TooManyErrors);
        }
        if let Err(code) = send_error_frame(socket, error).await {
            return Some(code);
        }
        too_many.then_some(CloseCode::TooManyErrors)
    }
}

fn frame_ref(msg: &ClientMessage<'_>) -> Option<u64> {
    match msg {
        ClientMessage::Signal { reference, .. } | ClientMessage::Send { reference, .. } => {
            *reference
        }
        _ => None,
    }
}

/// Writes the frame in `slot` and whatever else is queued (up to a batch), then flushes once.
/// Returns `Some(close)` when the connection must end (`Some(None)`: the socket is gone).
///
/// Cancellation-safe: a frame leaves `slot` only once the socket has taken it, so if this
/// future is dropped (the hub closed the connection while a write was blocked) the frame is
/// still in `slot`, to be kept for the peer's resume.
async fn write_batch(
    socket: &mut WebSocket,
    slot: &mut Option<Outbound>,
    rx: &mut mpsc::Receiver<Outbound>,
    shared: &crate::hub::ConnShared,
    state: &AppState,
) -> Option<Option<CloseCode>> {
    let mut written = 0;
    let stall = state.config.limits.write_stall();
    let progress = Arc::clone(&socket.get_ref().written);
    while let Some(out) = slot.as_ref() {
        match out {
            Outbound::Frame { text, .. } => {
                let (text, len) = (text.clone(), text.len());
                // A feed that is still pending has not taken the frame: on a stall it stays in
                // `slot`, for the peer's resume.
                let Some(sent) =
                    unless_stalled(&progress, stall, socket.feed(Message::Text(text))).await
                else {
                    return Some(Some(CloseCode::SlowConsumer));
                };
                *slot = None;
                shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                if sent.is_err() {
                    return Some(None);
                }
                state.metrics.frames_out.increment(1);
                written += 1;
            }
            Outbound::Close(code) => {
                let code = *code;
                *slot = None;
                let _ = socket.flush().await;
                return Some(Some(code));
            }
        }
        if written < WRITE_BATCH {
            *slot = rx.try_recv().ok();
        }
    }
    match unless_stalled(&progress, stall, socket.flush()).await {
        None => Some(Some(CloseCode::SlowConsumer)),
        Some(Err(_)) => Some(None),
        Some(Ok(())) => None,
    }
}

/// The close code for a failed read: 1009 when the frame exceeded the hard cap, 1007 for a
/// text frame that is not UTF-8, 1002 for a broken frame; none when the socket broke (there is
/// no one left to tell).
fn read_error_close(e: tungstenite::Error) -> Option<CloseCode> {
    use tungstenite::Error as E;
    match e {
        E::Capacity(_) => Some(CloseCode::MessageTooBig),
        E::Utf8(_) => Some(CloseCode::InvalidData),
        E::Protocol(tungstenite::error::ProtocolError::ResetWithoutClosingHandshake) => None,
        E::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

async fn send_error(state: &AppState, socket: &mut Link, error: ErrorFrame) {
    state.metrics.error(error.code);
    let _ = send_error_frame(socket, error).await;
}

/// Sends an error frame; `Err(close)` when the socket is gone.
async fn send_error_frame(socket: &mut Link, error: ErrorFrame) -> Result<(), CloseCode> {
    socket
        .send_text(ServerMessage::Error(error).to_json())
        .await
}

/// Sends the close frame (after whatever error frames went before it), then closes lingering
/// ([`crate::serve::linger`]): without it the kernel's reset over unread data can destroy the
/// close frame in flight, and the client would see 1006 instead of the code.
async fn close(state: &AppState, socket: &mut Link, code: CloseCode) {
    state.metrics.closed(code);
    let socket = match socket {
        Link::Ws(ws) => ws,
        Link::Http(link) => {
            link.down.close(code);
            return;
        }
    };
    // The peer may already be gone or not reading; a failed or stuck close changes nothing.
    let frame = Message::Close(Some(CloseFrame {
        code: code.code().into(),
        reason: Utf8Bytes::from_static(code.reason()),
    }));
    if tokio::time::timeout(CLOSE_TIMEOUT, socket.send(frame))
        .await
        .is_err()
    {
        return;
    }
    crate::serve::linger(socket.get_mut()).await;
}

/// How long a close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The built-in STUN server as clients reach it: `stun:HOST:PORT`, HOST from the public URL,
/// else from the request's `Host`; none when STUN is off or no host is known.
fn builtin_stun(
    config: &crate::config::Config,
    host: Option<&str>,
) -> Option<bluecam_proto::IceServer> {
    if !config.stun {
        return None;
    }
    let port = config.stun_bind?.port();
    let authority = match &config.public_url {
        // "https://host:port/path" → "host:port"
        Some(url) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            rest.split(['/', '?', '#']).next().unwrap_or(rest)
        }
        None => host?,
    };
    // "host:port" or "[v6]:port": the host part, brackets kept for IPv6.
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => authority,
    };
    if host.is_empty() {
        return None;
    }
    Some(bluecam_proto::IceServer {
        urls: vec![format!("stun:{host}:{port}")],
        username: None,
        credential: None,
    })
}
