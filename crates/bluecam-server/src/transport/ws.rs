//! `GET /v1/ws`: the WebSocket transport. The upgrade (with its checks), then the socket as
//! a [`Transport`] for the connection loop (`crate::transport::conn`): frames read and written, pings,
//! the close handshake, and the write-stall rule.

use crate::{
    AppState,
    api::ApiError,
    driver::Outbound,
    front::serve::ConnPermit,
    transport::conn::{ConnectionSlot, Incoming, Put, Transport},
};
use axum::{
    body::Body,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use bluecam_proto::{CloseCode, ErrorCode};
use futures_util::SinkExt as _;
use hyper_util::rt::TokioIo;
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio_tungstenite::WebSocketStream;
use tungstenite::{
    Message, Utf8Bytes,
    protocol::{CloseFrame, Role, WebSocketConfig},
};

/// The server's side of one WebSocket.
type WebSocket = WebSocketStream<Counted<TokioIo<hyper::upgrade::Upgraded>>>;

impl Transport for WebSocket {
    async fn next(&mut self) -> Incoming {
        match futures_util::StreamExt::next(self).await {
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Incoming::Heard,
            Some(Ok(Message::Close(_))) | None => Incoming::Gone,
            Some(Err(e)) => Incoming::Broken(read_error_close(e)),
        }
    }

    async fn send_text(&mut self, text: String) -> Result<(), CloseCode> {
        self.send(Message::Text(text.into()))
            .await
            .map_err(|_| CloseCode::InternalError)
    }

    fn heard_at(&self, last_frame: Instant) -> Instant {
        last_frame
    }

    async fn ping(&mut self) -> bool {
        self.send(Message::Ping(bytes::Bytes::new())).await.is_ok()
    }

    /// Feeds the frame to the socket (written by the flush, or sooner when tungstenite's
    /// buffer fills). A feed still pending when the socket stalls has not taken the frame.
    async fn put(&mut self, text: &Utf8Bytes, _resumable: bool, state: &AppState) -> Put {
        let stall = state.config.limits.write_stall();
        let progress = Arc::clone(&self.get_ref().written);
        match unless_stalled(&progress, stall, self.feed(Message::Text(text.clone()))).await {
            None => Put::Stalled,
            Some(Err(_)) => Put::Gone,
            Some(Ok(())) => Put::Taken,
        }
    }

    async fn flush_batch(&mut self, state: &AppState) -> Option<Option<CloseCode>> {
        let stall = state.config.limits.write_stall();
        let progress = Arc::clone(&self.get_ref().written);
        match unless_stalled(&progress, stall, self.flush()).await {
            None => Some(Some(CloseCode::SlowConsumer)),
            Some(Err(_)) => Some(None),
            Some(Ok(())) => None,
        }
    }

    /// What was queued towards the socket stays in the driver's queue (taken back by the driver).
    fn take_unsent(&mut self) -> Vec<Outbound> {
        Vec::new()
    }

    /// Sends the close frame, then closes lingering ([`crate::front::serve::linger`]): without it the
    /// kernel's reset over unread data can destroy the close frame in flight, and the client
    /// would see 1006 instead of the code.
    async fn close(&mut self, code: CloseCode) {
        // The peer may already be gone or not reading; a failed or stuck close changes nothing.
        let frame = Message::Close(Some(CloseFrame {
            code: code.code().into(),
            reason: Utf8Bytes::from_static(code.reason()),
        }));
        if tokio::time::timeout(CLOSE_TIMEOUT, self.send(frame))
            .await
            .is_err()
        {
            return;
        }
        crate::front::serve::linger(self.get_mut()).await;
    }

    /// The client closed (or the socket broke): sends the close reply tungstenite queued.
    async fn finish(&mut self, _state: &AppState, _shared: &crate::driver::ConnShared) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.flush()).await;
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
    // Every connection keeps its read buffer for life, so it is small: 1 KiB (2 KiB cost 1 KB
    // more per idle connection for a relay CPU within the run-to-run spread; the 20 % more CPU
    // once measured for 1 KiB was before the writes were batched; 4 KiB cost 2 KB more; see
    // BENCHMARKS.md). Larger frames grow it as needed.
    let config = WebSocketConfig::default()
        .read_buffer_size(1 << 10)
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
        crate::transport::conn::run(slot.0.clone(), socket, host).await;
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

/// How long a close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
