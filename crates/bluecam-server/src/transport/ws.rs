//! `GET /v1/ws`: the WebSocket transport. The upgrade (with its checks), then the socket as
//! a [`Transport`] for the connection loop (`crate::transport::conn`): frames read and written, pings,
//! the close handshake, and the write-stall rule.

use crate::{
    AppState,
    api::ApiError,
    driver::Outbound,
    front::serve::ConnPermit,
    transport::{
        conn::{ConnectionSlot, Incoming, Put, Transport},
        websocket::Socket,
    },
};
use axum::{
    body::Body,
    extract::{FromRequestParts, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use bluecam_proto::{CloseCode, ErrorCode};
use hyper_util::rt::TokioIo;
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tungstenite::{
    Utf8Bytes,
    protocol::frame::coding::{Control, Data, OpCode},
};

/// The server's side of one WebSocket: over the TCP socket itself (the direct handshake,
/// [`serve_direct`]), or over what hyper hands over after its upgrade (TLS, and every handshake
/// the direct path leaves to it).
type WebSocket<S> = Socket<Counted<S>>;

impl<S> Transport for WebSocket<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Incoming> {
        self.poll_read(cx)
    }

    fn gone_already(&mut self) -> bool {
        Socket::gone_already(self)
    }

    /// Sends an error frame now; a client that takes no byte of it within the write-stall
    /// time is a slow consumer (the task must not wait on it for ever: it would see no kill,
    /// shutdown or idle check meanwhile).
    async fn send_text(&mut self, text: String, state: &AppState) -> Result<(), CloseCode> {
        self.frame(OpCode::Data(Data::Text), text.as_bytes());
        let progress = Arc::clone(&self.get_ref().written);
        let stall = state.config.limits.write_stall();
        match unless_stalled(&progress, stall, self.write_all()).await {
            None => Err(CloseCode::SlowConsumer),
            Some(Err(_)) => Err(CloseCode::InternalError),
            Some(Ok(())) => Ok(()),
        }
    }

    fn heard_at(&self, last_frame: Instant) -> Instant {
        last_frame
    }

    /// Written without waiting: a socket that takes nothing keeps the ping with the rest, and
    /// the write-stall rule or the idle timeout ends it.
    async fn ping(&mut self) -> bool {
        self.frame(OpCode::Control(Control::Ping), &[]);
        let written = std::future::poll_fn(|cx| std::task::Poll::Ready(self.poll_write(cx))).await;
        !matches!(written, std::task::Poll::Ready(Err(_)))
    }

    /// Buffers the frame (written by the flush, or sooner when the buffer is full). A frame
    /// waiting for room when the socket stalls has not been taken.
    async fn put(&mut self, text: &Utf8Bytes, _resumable: bool, state: &AppState) -> Put {
        if self.buffered() >= WRITE_BUFFER {
            let stall = state.config.limits.write_stall();
            let progress = Arc::clone(&self.get_ref().written);
            match unless_stalled(&progress, stall, self.write_all()).await {
                None => return Put::Stalled,
                Some(Err(_)) => return Put::Gone,
                Some(Ok(())) => {}
            }
        }
        self.frame(OpCode::Data(Data::Text), text.as_bytes());
        Put::Taken
    }

    async fn flush_batch(&mut self, state: &AppState) -> Option<Option<CloseCode>> {
        let stall = state.config.limits.write_stall();
        let progress = Arc::clone(&self.get_ref().written);
        match unless_stalled(&progress, stall, self.write_all()).await {
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
        self.close_frame(code);
        if tokio::time::timeout(CLOSE_TIMEOUT, self.write_all())
            .await
            .is_err()
        {
            return;
        }
        crate::front::serve::linger(self.get_mut()).await;
    }

    /// The client closed (or the socket broke): sends the reply to its close.
    async fn finish(&mut self, _state: &AppState, _shared: &crate::driver::ConnShared) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.write_all()).await;
    }
}

/// Frames buffered beyond this are written before another is taken.
const WRITE_BUFFER: usize = 16 << 10;

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
        .any(|v| list_has(v, token))
}

/// Whether one comma-separated header value has this token (case-insensitively).
fn list_has(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a `Sec-WebSocket-Key` is 16 bytes in base64 (RFC 6455 section 4.2.1).
fn valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(key)
        .is_ok_and(|raw| raw.len() == 16)
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Response> {
        let accept =
            handshake_accept(&parts.method, &parts.headers).map_err(Refusal::into_response)?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::BadRequest,
                    "this connection cannot be upgraded to a WebSocket",
                )
                .into_response()
            })?;
        Ok(Self {
            on_upgrade,
            accept,
            permit: parts.extensions.get::<Arc<ConnPermit>>().cloned(),
            host: parts
                .headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        })
    }
}

/// Why a handshake is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// 400, with this message.
    Bad(&'static str),
    /// 426: only version 13.
    Version,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Bad(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
                    .into_response()
            }
            Self::Version => {
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
                res
            }
        }
    }
}

/// The handshake's own checks (RFC 6455 section 4.2.1) on a request hyper parsed: its
/// `Sec-WebSocket-Accept`, or why it is refused.
pub(crate) fn handshake_accept(
    method: &axum::http::Method,
    h: &HeaderMap,
) -> Result<HeaderValue, Refusal> {
    let bad = Refusal::Bad;
    if method != axum::http::Method::GET {
        return Err(bad("a WebSocket handshake is a GET"));
    }
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
        return Err(Refusal::Version);
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
        .ok_or_else(|| bad("missing or invalid Sec-WebSocket-Key"))?;
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
        .map_err(|_| bad("invalid Sec-WebSocket-Key"))
}

/// The checks after the handshake's own: the origin, a server shutting down, the connection
/// cap. The slot is reserved before the 101 answer, so a storm cannot overshoot the cap.
fn admit(state: &AppState, origin: Option<&str>) -> Result<ConnectionSlot, ApiError> {
    if !state.origin_allowed(origin) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        ));
    }
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("server is shutting down"));
    }
    reserve(state).ok_or_else(|| {
        state.metrics.connections_refused.increment(1);
        ApiError::unavailable("too many connections on this node")
    })
}

/// A place under the connection cap, if there is one.
fn reserve(state: &AppState) -> Option<ConnectionSlot> {
    let open = state.connections.fetch_add(1, Ordering::AcqRel);
    if open >= state.config.limits.max_connections {
        state.connections.fetch_sub(1, Ordering::AcqRel);
        return None;
    }
    Some(ConnectionSlot(state.clone()))
}

/// One admitted WebSocket from its 101 answer to its end: the connection's task, spawned as
/// it is (see `conn::run`). It holds its places under the caps (`slot`, `permit`) and
/// shutdown's count of it (`track`) until it ends.
fn serve_socket<S>(
    slot: ConnectionSlot,
    io: S,
    permit: Option<Arc<ConnPermit>>,
    host: Option<String>,
    track: tokio_util::task::task_tracker::TaskTrackerToken,
) -> impl std::future::Future<Output = ()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let state = slot.0.clone();
    let io = Counted {
        inner: io,
        written: Arc::default(),
    };
    let socket = Socket::new(io, state.config.limits.hard_frame_cap());
    crate::transport::conn::run(state, socket, host, (slot, permit, track))
}

/// Upgrades to a WebSocket after the origin and capacity checks (through hyper: over TLS, and
/// every handshake [`serve_direct`] does not take).
pub async fn upgrade(State(state): State<AppState>, headers: HeaderMap, ws: WsUpgrade) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let slot = match admit(&state, origin) {
        Ok(slot) => slot,
        Err(refused) => return refused.into_response(),
    };
    // Tracked from before the 101 answer, so shutdown waits for this connection too.
    let track = state.tracker.token();
    let WsUpgrade {
        on_upgrade,
        accept,
        permit,
        host,
    } = ws;
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                tokio::spawn(serve_socket(
                    slot,
                    TokioIo::new(upgraded),
                    permit,
                    host,
                    track,
                ));
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    res
}

/// The longest handshake the direct path reads (a browser's is about 500 bytes; a longer one
/// goes through hyper).
const DIRECT_HEAD_MAX: usize = 2048;

/// Sets a header's value, or `None` when it came before (a second `Origin`, say).
fn once<'a>(slot: &mut Option<&'a str>, value: &'a str) -> Option<()> {
    slot.replace(value).is_none().then_some(())
}

/// What a direct handshake needs from the request's head.
pub(crate) struct DirectHandshake {
    /// The head's length in bytes.
    pub len: usize,
    pub accept: String,
    pub origin: Option<String>,
    pub host: Option<String>,
}

/// A plain WebSocket handshake for [`bluecam_proto::WS_PATH`] in `head`, exactly and alone: a
/// GET over HTTP/1.1 with a valid key, version 13, every header visible ASCII, no body and no
/// header twice that matters. Anything else is `None`, and hyper serves the connection as it
/// would without this path (with the same answers for every refusal).
pub(crate) fn direct_handshake(head: &[u8]) -> Option<DirectHandshake> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(head).ok()? else {
        return None;
    };
    if len != head.len()
        || req.method != Some("GET")
        || req.path != Some(bluecam_proto::WS_PATH)
        || req.version != Some(1)
    {
        return None;
    }
    let (mut connection, mut upgrade) = (false, false);
    let (mut version, mut key, mut origin, mut host) = (None, None, None, None);
    for h in req.headers.iter() {
        if !h
            .value
            .iter()
            .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        {
            return None;
        }
        // As it is, as hyper's path reads it (httparse trims the whitespace around it for both).
        let value = std::str::from_utf8(h.value).ok()?;
        match h.name.to_ascii_lowercase().as_str() {
            "connection" => connection |= list_has(value, "upgrade"),
            "upgrade" => upgrade |= list_has(value, "websocket"),
            "sec-websocket-version" => once(&mut version, value)?,
            "sec-websocket-key" => once(&mut key, value)?,
            "origin" => once(&mut origin, value)?,
            "host" => once(&mut host, value)?,
            "content-length" | "transfer-encoding" => return None,
            _ => {}
        }
    }
    let key = key?;
    if !connection || !upgrade || version != Some("13") || !valid_key(key.as_bytes()) {
        return None;
    }
    Some(DirectHandshake {
        len,
        accept: tungstenite::handshake::derive_accept_key(key.as_bytes()),
        origin: origin.map(str::to_owned),
        host: host.map(str::to_owned),
    })
}

/// `GET /v1/ws` answered on the TCP socket itself, without hyper: the WebSocket's first bytes
/// are read without being taken (`peek`); when they are a plain handshake that passes every
/// check, the 101 answer is written and the socket becomes the WebSocket. Otherwise the socket
/// is handed back, untouched, for hyper to serve (every other request, every refusal, a head
/// that came in pieces). Joins cost less CPU this way (no HTTP connection, request, router and
/// upgrade per join; BENCHMARKS.md). `None`: the connection is taken (or was dropped: no head
/// within `wait`, as hyper's header timeout would).
pub(crate) async fn serve_direct(
    state: &AppState,
    mut tcp: tokio::net::TcpStream,
    permit: &Arc<ConnPermit>,
    wait: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut head = vec![0u8; DIRECT_HEAD_MAX];
    // A shutdown closes a connection that has sent nothing yet at once, as hyper does. (A head
    // that comes in pieces goes to hyper, whose header timeout starts again: at most twice
    // `wait` for a client that trickles its head.)
    let peeked = tokio::select! {
        peeked = tokio::time::timeout(wait, tcp.peek(&mut head)) => peeked,
        () = stop.cancelled() => return None,
    };
    let n = match peeked {
        Ok(Ok(n)) if n > 0 => n,
        Ok(Ok(_)) | Ok(Err(_)) | Err(_) => return None,
    };
    let Some(handshake) = direct_handshake(&head[..n]) else {
        return Some(tcp);
    };
    // A refusal is hyper's to answer (and to count), as for every other refused handshake.
    if !state.origin_allowed(handshake.origin.as_deref()) || state.shutdown.is_cancelled() {
        return Some(tcp);
    }
    let Some(slot) = reserve(state) else {
        return Some(tcp);
    };
    // Tracked from before the 101 answer, so shutdown waits for this connection too.
    let track = state.tracker.token();
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: {}\r\n\r\n",
        handshake.accept
    );
    let answered = async {
        tcp.read_exact(&mut head[..handshake.len]).await?;
        tcp.write_all(answer.as_bytes()).await
    };
    if !matches!(tokio::time::timeout(wait, answered).await, Ok(Ok(()))) {
        return None;
    }
    drop(head);
    let permit = Some(Arc::clone(permit));
    tokio::spawn(serve_socket(slot, tcp, permit, handshake.host, track));
    None
}

/// How long a close frame may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::direct_handshake;

    const HEAD: &str = "GET /v1/ws HTTP/1.1\r\nHost: rooms.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\nUpgrade: websocket\r\nOrigin: https://app.example.com\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";

    #[test]
    fn a_browsers_handshake_is_taken_directly() {
        let h = direct_handshake(HEAD.as_bytes()).expect("direct");
        assert_eq!(h.len, HEAD.len());
        // RFC 6455 section 1.3's example.
        assert_eq!(h.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(h.origin.as_deref(), Some("https://app.example.com"));
        assert_eq!(h.host.as_deref(), Some("rooms.example.com"));
        // Header names in any case, `Connection` with more than one token.
        let mixed = HEAD
            .replace("Connection: Upgrade", "connection: keep-alive, Upgrade")
            .replace("Upgrade: websocket", "UPGRADE: WebSocket");
        assert!(direct_handshake(mixed.as_bytes()).is_some());
    }

    #[test]
    fn anything_else_is_left_to_hyper() {
        let cases = [
            ("a head in pieces", HEAD[..HEAD.len() - 2].to_owned()),
            ("bytes after the head", format!("{HEAD}\u{81}")),
            ("another path", HEAD.replace("/v1/ws", "/v1/ws/")),
            ("a query", HEAD.replace("/v1/ws", "/v1/ws?x=1")),
            ("POST", HEAD.replace("GET", "POST")),
            ("HTTP/1.0", HEAD.replace("HTTP/1.1", "HTTP/1.0")),
            ("no upgrade", HEAD.replace("Upgrade: websocket\r\n", "")),
            (
                "no connection upgrade",
                HEAD.replace("Connection: Upgrade", "Connection: keep-alive"),
            ),
            ("version 8", HEAD.replace("Version: 13", "Version: 8")),
            (
                "a short key",
                HEAD.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="),
            ),
            ("no key", HEAD.replace("Sec-WebSocket-Key", "X-Key")),
            (
                "two origins",
                HEAD.replace("Origin:", "Origin: https://a.example\r\nOrigin:"),
            ),
            (
                "two keys",
                HEAD.replace(
                    "Sec-WebSocket-Key:",
                    "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Key:",
                ),
            ),
            (
                "a body",
                HEAD.replace("Pragma: no-cache", "Content-Length: 0"),
            ),
            ("a non-ASCII header", HEAD.replace("no-cache", "n\u{e9}")),
            ("not HTTP", "\u{16}\u{3}\u{1}\u{2}\u{0}".to_owned()),
        ];
        for (what, head) in cases {
            assert!(direct_handshake(head.as_bytes()).is_none(), "{what}");
        }
    }

    /// A batch that ends in the driver's close (a room deleted, a peer removed or replaced)
    /// while the client reads slowly: the frames are buffered, the close is reached, and the
    /// flush has to wait for the socket. The loop tries a batch once without waiting, drops
    /// that attempt, and waits in another: the close must be left for that one.
    #[tokio::test]
    async fn a_close_behind_a_flush_that_waits_is_kept_for_the_write_that_waits() {
        use super::{Counted, Outbound, Socket, WebSocket};
        use crate::transport::conn::write_batch;
        use bluecam_proto::CloseCode;
        use std::{pin::pin, sync::atomic::Ordering, task::Poll};
        use tokio::io::AsyncReadExt as _;
        let dir = std::env::temp_dir().join(format!(
            "bluecam-ws-close-{}-{}",
            std::process::id(),
            crate::auth::random_token(6)
        ));
        let config = crate::Config {
            data_dir: dir.clone(),
            api_secret: Some("a-test-secret-of-at-least-32-characters".into()),
            ..crate::Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = crate::Server::bind(listener, config).await.unwrap();
        let state = server.state.clone();
        // The client's end takes 64 bytes, then nothing until it reads.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let io = Counted {
            inner: ours,
            written: Default::default(),
        };
        let mut socket: WebSocket<_> = Socket::new(io, 1 << 20);
        let (_conn, shared) = state.driver.register();
        let text = "x".repeat(200);
        shared.queued_bytes.fetch_add(text.len(), Ordering::AcqRel);
        let mut slot = Some(Outbound::Frame {
            text: text.into(),
            resumable: true,
        });
        shared
            .queue
            .try_push(Outbound::Close(CloseCode::RoomClosed), 16)
            .unwrap();
        let once = std::future::poll_fn(|cx| {
            let write = write_batch(&mut socket, &mut slot, &shared, &state);
            Poll::Ready(pin!(write).poll(cx))
        })
        .await;
        assert!(once.is_pending(), "the flush waits for the socket");
        assert!(
            matches!(slot, Some(Outbound::Close(CloseCode::RoomClosed))),
            "the close waits for the write that waits"
        );
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).await.unwrap();
            all
        });
        let ended = write_batch(&mut socket, &mut slot, &shared, &state).await;
        assert_eq!(ended, Some(Some(CloseCode::RoomClosed)));
        drop(socket);
        // (The frame's 200 bytes and its header; the close frame itself is `close`'s.)
        assert_eq!(reader.await.unwrap().len(), 204);
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
}
