//! The link to a node: a WebSocket (`ws://` or `wss://`), or the HTTP long-polling transport
//! (`/v1/http/*`, docs/protocol.md section 17) where a WebSocket cannot be opened. Both carry
//! the same frames, join, resume and close codes; [`Link`] hides which one is in use, and
//! [`Nodes`] picks the node and the transport, as the browser SDK's `signaling.js` does.

use crate::room::JoinError;
use bluecam_proto::CloseCode;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

/// A connection attempt (TCP, WebSocket handshake or HTTP open, join) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Without a transport set, a WebSocket not open after this long (a proxy that holds the
/// upgrade) gives way to HTTP on the same node (the SDK's `WS_OPEN_TIMEOUT_MS`).
const WS_OPEN_TIMEOUT: Duration = Duration::from_secs(2);
/// A write to a socket that takes longer than this: the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(12);
/// The server answers a poll within 25 s when it has nothing; this long without an answer,
/// the request is tried again.
const POLL_TIMEOUT: Duration = Duration::from_secs(35);
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// The server answers `open` once the join is done, or after the join timeout less a second
/// (then a poll brings the answer); as the SDK, this long at most.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// A request of the client's close waits this long at most.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests that fail (no answer, 5xx, 429) are tried again, waiting twice as long each time
/// from [`RETRY_MIN`] to [`RETRY_MAX`], until they have failed for this long.
const LOST_AFTER: Duration = Duration::from_secs(8);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How this client reaches a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket; where one cannot be opened (refused by a proxy, or not open within 2 s,
    /// or opened but never answering the join), the HTTP transport on the same node, and from
    /// then on HTTP first (the SDK's default).
    #[default]
    Auto,
    /// A WebSocket only (the SDK's `signalMethod: "websocket"`).
    WebSocket,
    /// The HTTP long-polling transport only (`signalMethod: "http"`).
    Http,
}

/// The text of a frame from the server.
pub(crate) enum Text {
    Ws(Utf8Bytes),
    Http(Box<RawValue>),
}

impl Text {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Ws(t) => t.as_str(),
            Self::Http(t) => t.get(),
        }
    }
}

/// What comes from the server.
pub(crate) enum Incoming {
    Frame(Text),
    /// The connection is over: the server's close code, or `None` when it dropped.
    Closed(Option<u16>),
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection to a node, joined.
pub(crate) enum Link {
    Ws(Box<Ws>),
    Http(HttpLink),
}

impl Link {
    /// The transport's name, as the SDK's `room.transport`.
    pub(crate) fn transport(&self) -> &'static str {
        match self {
            Self::Ws(_) => "websocket",
            Self::Http(_) => "http",
        }
    }

    /// Sends a frame: false when the connection is gone.
    pub(crate) async fn send(&mut self, text: String) -> bool {
        match self {
            Self::Ws(ws) => matches!(
                tokio::time::timeout(WRITE_TIMEOUT, ws.send(WsMessage::text(text))).await,
                Ok(Ok(()))
            ),
            Self::Http(h) => h.up.send(Up::Frame(text)).is_ok(),
        }
    }

    /// The next frame, or the end of the connection. Cancel-safe (a `select!` arm).
    pub(crate) async fn recv(&mut self) -> Incoming {
        match self {
            Self::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(WsMessage::Text(text))) => return Incoming::Frame(Text::Ws(text)),
                    // (tungstenite queues the pong; sending it now.)
                    Some(Ok(WsMessage::Ping(_))) => {
                        let _ = ws.flush().await;
                    }
                    Some(Ok(WsMessage::Close(frame))) => {
                        return Incoming::Closed(frame.map(|f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Incoming::Closed(None),
                }
            },
            Self::Http(h) => h.down.recv().await.unwrap_or(Incoming::Closed(None)),
        }
    }

    /// Closes the connection (after what was sent), within 2 s.
    pub(crate) async fn close(&mut self) {
        let wait = Duration::from_secs(2);
        match self {
            Self::Ws(ws) => {
                let _ = tokio::time::timeout(wait, Ws::close(ws, None)).await;
            }
            Self::Http(h) => {
                let (done, sent) = oneshot::channel();
                if h.up.send(Up::Close(done)).is_ok() {
                    let _ = tokio::time::timeout(wait + CLOSE_TIMEOUT, sent).await;
                }
            }
        }
    }
}

/// The nodes this client may use, in order of preference, and which transport it uses.
#[derive(Debug, Default)]
pub(crate) struct Nodes {
    /// Each node's base URL (`http(s)://host:port`, a path prefix kept).
    urls: Vec<String>,
    at: usize,
    transport: Transport,
    /// A WebSocket could not be opened and HTTP worked: HTTP first from now on.
    ws_blocked: bool,
}

/// The process's HTTP client, shared by its rooms (its connection pool, and the root
/// certificates it reads once: about 200 KB and a few ms each).
fn http_client() -> Result<reqwest::Client, JoinError> {
    static CLIENT: std::sync::OnceLock<Result<reqwest::Client, String>> =
        std::sync::OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| JoinError::Connect(format!("HTTP client: {e}")))
}

impl Nodes {
    pub(crate) fn new(urls: Vec<String>, transport: Transport) -> Self {
        // (A WebSocket URL is taken as its node's: `ws(s)://host/v1/ws` → `http(s)://host`.)
        let urls = urls
            .into_iter()
            .map(|u| {
                let u = u.trim_end_matches('/');
                let u = u.strip_suffix("/v1/ws").unwrap_or(u);
                if let Some(rest) = u.strip_prefix("wss://") {
                    format!("https://{rest}")
                } else if let Some(rest) = u.strip_prefix("ws://") {
                    format!("http://{rest}")
                } else {
                    u.to_owned()
                }
            })
            .collect();
        Self {
            urls,
            at: 0,
            transport,
            ws_blocked: false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// The node in use.
    pub(crate) fn current(&self) -> &str {
        &self.urls[self.at % self.urls.len()]
    }

    /// The next node (the same one when there is one).
    pub(crate) fn advance(&mut self) {
        // (None while the room's resume has them taken out: nothing to move.)
        self.at = (self.at + 1) % self.urls.len().max(1);
    }

    /// Connects to the node in use and joins (or resumes): over a WebSocket, or HTTP as the
    /// transport says. A failure to reach the node moves on to the next one; a refusal does
    /// not (another node would refuse it too).
    pub(crate) async fn connect(
        &mut self,
        token: &str,
        resume: Option<(&str, &str)>,
    ) -> Result<(Link, bluecam_proto::Joined), JoinError> {
        let mut join = serde_json::json!({"op": "join", "token": token});
        if let Some((session, secret)) = resume {
            join["resume"] = serde_json::json!({"session": session, "secret": secret});
        }
        let join = join.to_string();
        let node = self.current().to_owned();
        let http_first = match self.transport {
            Transport::Http => true,
            Transport::WebSocket => false,
            Transport::Auto => self.ws_blocked,
        };
        let result = if http_first {
            self.connect_http(&node, join).await
        } else {
            let fall_back = self.transport == Transport::Auto;
            match connect_ws(&ws_url(&node), &join, fall_back).await {
                // No WebSocket to this node (refused, not opened in time, or opened by a proxy
                // that then passes nothing): the same attempt goes on over HTTP.
                Err(WsFailure::NotOpened(why)) if fall_back => {
                    let r = self.connect_http(&node, join).await;
                    if r.is_ok() {
                        self.ws_blocked = true;
                    }
                    r.map_err(|e| match e {
                        JoinError::Connect(h) => {
                            JoinError::Connect(format!("WebSocket: {why}; HTTP: {h}"))
                        }
                        refused => refused,
                    })
                }
                Err(WsFailure::NotOpened(why)) => Err(JoinError::Connect(why)),
                Err(WsFailure::Join(e)) => Err(e),
                Ok(ok) => Ok(ok),
            }
        };
        if matches!(result, Err(JoinError::Connect(_))) {
            self.advance();
        }
        result
    }

    async fn connect_http(
        &mut self,
        node: &str,
        join: String,
    ) -> Result<(Link, bluecam_proto::Joined), JoinError> {
        let client = http_client()?;
        let base = format!("{node}/v1/http");
        tokio::time::timeout(OPEN_TIMEOUT, open_http(client, base, join))
            .await
            .unwrap_or_else(|_| Err(JoinError::Connect("no answer to the join".to_owned())))
    }
}

/// `http(s)://host/prefix` → `ws(s)://host/prefix/v1/ws`.
fn ws_url(node: &str) -> String {
    let base = if let Some(rest) = node.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = node.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        node.to_owned()
    };
    format!("{base}/v1/ws")
}

/// A join's answer: refused for good, or to be tried again (`unavailable`, `internal`: the
/// server says try again).
pub(crate) fn join_refusal(code: &str, message: String) -> JoinError {
    if matches!(code, "unavailable" | "internal") {
        JoinError::Connect(format!("{code}: {message}"))
    } else {
        JoinError::Refused {
            code: code.to_owned(),
            message,
        }
    }
}

/// What a first frame says: joined, refused, or something else (`None`: read on).
fn answer_to_join(text: &str) -> Option<Result<bluecam_proto::Joined, JoinError>> {
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    match v["op"].as_str() {
        Some("joined") => Some(
            serde_json::from_value(v)
                .map_err(|e| JoinError::Connect(format!("a joined frame it cannot read: {e}"))),
        ),
        Some("error") => Some(Err(join_refusal(
            v["code"].as_str().unwrap_or("error"),
            v["message"].as_str().unwrap_or_default().to_owned(),
        ))),
        _ => None,
    }
}

enum WsFailure {
    /// No WebSocket, or one that never answered the join: HTTP may get through.
    NotOpened(String),
    /// The join was answered (refused), or the connection failed after it was.
    Join(JoinError),
}

async fn connect_ws(
    url: &str,
    join: &str,
    fall_back: bool,
) -> Result<(Link, bluecam_proto::Joined), WsFailure> {
    let started = Instant::now();
    let open_within = if fall_back {
        WS_OPEN_TIMEOUT
    } else {
        CONNECT_TIMEOUT
    };
    // Buffers of 8 KiB rather than tungstenite's 128 KiB each (a peer's frames are small, and
    // a large one only takes more reads), and no Nagle delay on frames.
    let config = WebSocketConfig::default()
        .read_buffer_size(8 << 10)
        .write_buffer_size(8 << 10);
    let open = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
    let mut ws = match tokio::time::timeout(open_within, open).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Err(WsFailure::NotOpened(e.to_string())),
        Err(_) => {
            return Err(WsFailure::NotOpened(
                "WebSocket not opened in time".to_owned(),
            ));
        }
    };
    let answer = async {
        ws.send(WsMessage::text(join.to_owned()))
            .await
            .map_err(|e| WsFailure::NotOpened(e.to_string()))?;
        let lost = |why: String| WsFailure::Join(JoinError::Connect(why));
        while let Some(msg) = ws.next().await {
            let msg = msg.map_err(|e| lost(e.to_string()))?;
            let WsMessage::Text(text) = msg else { continue };
            if let Some(answer) = answer_to_join(&text) {
                return answer.map_err(WsFailure::Join);
            }
        }
        Err(lost(
            "the server closed the connection before answering the join".to_owned(),
        ))
    };
    let left = CONNECT_TIMEOUT.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, answer).await {
        Ok(Ok(joined)) => Ok((Link::Ws(Box::new(ws)), joined)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(WsFailure::NotOpened("no answer to the join".to_owned())),
    }
}

/// Frames from the server, as a `poll` (or `open`) answers.
#[derive(Deserialize)]
struct Down {
    #[serde(default)]
    sid: Option<String>,
    first: u64,
    frames: Vec<Box<RawValue>>,
    #[serde(default)]
    close: Option<DownClose>,
}

#[derive(Deserialize)]
struct DownClose {
    code: u16,
}

/// What a `send` answers.
#[derive(Deserialize)]
struct SendAnswer {
    ack: u64,
    #[serde(default)]
    closed: bool,
}

/// To the task that sends frames up.
enum Up {
    Frame(String),
    /// Sends what waits with `close: true`, then says so.
    Close(oneshot::Sender<()>),
}

/// The HTTP transport's session: a task polls (down), one sends (up). Dropped, the poll
/// stops at once and the sender ends the session on the server (`close: true`), so that
/// nothing more is taken for it there: what comes for this peer meanwhile is kept for its
/// resume, as for a WebSocket that closed.
pub(crate) struct HttpLink {
    down: mpsc::UnboundedReceiver<Incoming>,
    up: mpsc::UnboundedSender<Up>,
    poller: tokio::task::AbortHandle,
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// A request failed for good (the session is gone, or the body was refused), with the close
/// code a WebSocket would have had; or it may be tried again.
enum PostError {
    Final(u16),
    Retry(String),
}

impl PostError {
    /// The end of the connection this failure makes (`None`: it dropped; retry elsewhere).
    fn closed(self) -> Incoming {
        match self {
            Self::Final(code) => Incoming::Closed(Some(code)),
            Self::Retry(_) => Incoming::Closed(None),
        }
    }
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    body: String,
    timeout: Duration,
) -> Result<bytes::Bytes, PostError> {
    let res = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body(body)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| PostError::Retry(e.to_string()))?;
    match res.status().as_u16() {
        200 => res
            .bytes()
            .await
            .map_err(|e| PostError::Retry(e.to_string())),
        // The session is gone (it ended, or its node did): a new one resumes.
        404 | 403 => Err(PostError::Final(1006)),
        413 => Err(PostError::Final(CloseCode::MessageTooBig.code())),
        s => Err(PostError::Retry(format!("HTTP {s}"))),
    }
}

/// [`post`], tried again while it fails for a reason that may pass, for [`LOST_AFTER`].
async fn post_retrying(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    timeout: Duration,
) -> Result<bytes::Bytes, PostError> {
    let mut failing_since = None;
    let mut wait = RETRY_MIN;
    loop {
        match post(client, url, body.to_owned(), timeout).await {
            Err(PostError::Retry(why)) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= LOST_AFTER {
                    return Err(PostError::Retry(why));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
            done => return done,
        }
    }
}

async fn open_http(
    client: reqwest::Client,
    base: String,
    join: String,
) -> Result<(Link, bluecam_proto::Joined), JoinError> {
    let answer = post(&client, &format!("{base}/open"), join, OPEN_TIMEOUT)
        .await
        .map_err(|e| match e {
            PostError::Final(code) => JoinError::Connect(format!("HTTP open refused ({code})")),
            PostError::Retry(why) => JoinError::Connect(why),
        })?;
    let mut down: Down = serde_json::from_slice(&answer)
        .map_err(|e| JoinError::Connect(format!("an answer it cannot read: {e}")))?;
    let sid = down.sid.take();
    // The number of the last frame taken.
    let mut ack = down.first.saturating_sub(1);
    let mut after = Vec::new();
    let mut joined = take_answer(&mut down, &mut ack, &mut after);
    if let (None, Some(sid)) = (&joined, &sid) {
        // The join took longer than the server waits to answer `open`: the session is there,
        // and its `joined` (or error) comes with a poll.
        let url = format!("{base}/poll");
        while joined.is_none() && down.close.is_none() {
            let body = serde_json::json!({"sid": sid, "ack": ack}).to_string();
            let answer = post_retrying(&client, &url, &body, POLL_TIMEOUT)
                .await
                .map_err(|_| JoinError::Connect("the join's session was lost".to_owned()))?;
            down = serde_json::from_slice(&answer)
                .map_err(|e| JoinError::Connect(format!("an answer it cannot read: {e}")))?;
            joined = take_answer(&mut down, &mut ack, &mut after);
        }
    }
    let joined = match (joined, down.close) {
        (Some(answer), None) => answer?,
        (Some(Err(refused)), Some(_)) => return Err(refused),
        (_, Some(close)) => {
            return Err(JoinError::Connect(format!(
                "the server ended the session at its join ({})",
                close.code
            )));
        }
        (None, None) => {
            return Err(JoinError::Connect(
                "no answer to the join, and no transport session".to_owned(),
            ));
        }
    };
    let Some(sid) = sid else {
        return Err(JoinError::Connect("no transport session".to_owned()));
    };
    let (down_tx, down_rx) = mpsc::unbounded_channel();
    // The frames after `joined` in the same answer come first.
    for frame in after {
        let _ = down_tx.send(Incoming::Frame(Text::Http(frame)));
    }
    // A `send` body the server takes: twice its frame limit (it allows 64 KiB more).
    let batch = 2 * joined.limits.max_frame_bytes;
    let (up_tx, up_rx) = mpsc::unbounded_channel();
    let poller = tokio::spawn(poll_loop(
        client.clone(),
        base.clone(),
        sid.clone(),
        ack,
        down_tx.clone(),
    ));
    // (Not aborted with the link: it ends the session on the server when the link goes.)
    tokio::spawn(send_loop(client, base, sid, batch, up_rx, down_tx));
    let link = HttpLink {
        down: down_rx,
        up: up_tx,
        poller: poller.abort_handle(),
    };
    Ok((Link::Http(link), joined))
}

/// Takes the frames of an answer up to the join's answer (`joined` or an error), if it is
/// among them; those after it go to `after`. `ack` counts every frame taken.
fn take_answer(
    down: &mut Down,
    ack: &mut u64,
    after: &mut Vec<Box<RawValue>>,
) -> Option<Result<bluecam_proto::Joined, JoinError>> {
    let mut answer = None;
    for (i, frame) in std::mem::take(&mut down.frames).into_iter().enumerate() {
        // (Frames already taken, in an answer sent again, are skipped.)
        if down.first + i as u64 != *ack + 1 {
            continue;
        }
        *ack += 1;
        if answer.is_some() {
            after.push(frame);
        } else {
            answer = answer_to_join(frame.get());
        }
    }
    answer
}

/// Polls for frames (acknowledging those received) until the session ends.
async fn poll_loop(
    client: reqwest::Client,
    base: String,
    sid: String,
    mut ack: u64,
    down: mpsc::UnboundedSender<Incoming>,
) {
    let url = format!("{base}/poll");
    loop {
        let body = serde_json::json!({"sid": sid, "ack": ack}).to_string();
        let answer = match post_retrying(&client, &url, &body, POLL_TIMEOUT).await {
            Ok(answer) => answer,
            Err(e) => {
                let _ = down.send(e.closed());
                return;
            }
        };
        let Ok(answer) = serde_json::from_slice::<Down>(&answer) else {
            let _ = down.send(Incoming::Closed(None));
            return;
        };
        for (i, frame) in answer.frames.into_iter().enumerate() {
            // Frames already taken (an answer sent again) are skipped.
            if answer.first + i as u64 == ack + 1 {
                ack += 1;
                if down.send(Incoming::Frame(Text::Http(frame))).is_err() {
                    return;
                }
            }
        }
        if let Some(close) = answer.close {
            let _ = down.send(Incoming::Closed(Some(close.code)));
            return;
        }
    }
}

/// The frames of one `send` body from the front of `waiting`: as many as fit in `max` bytes
/// (one at least), after the header.
fn send_body(
    sid: &str,
    seq: u64,
    close: bool,
    waiting: &VecDeque<(u64, String)>,
    max: usize,
) -> (String, usize) {
    let mut body = if close {
        serde_json::json!({"sid": sid, "seq": seq, "close": true})
    } else {
        serde_json::json!({"sid": sid, "seq": seq})
    }
    .to_string();
    let mut taken = 0;
    for (_, text) in waiting {
        if taken > 0 && body.len() + 1 + text.len() > max {
            break;
        }
        body.push('\n');
        body.push_str(text);
        taken += 1;
    }
    (body, taken)
}

/// The client's close: what waits goes (in bodies the server takes), the last with
/// `close: true` (after a `leave`, the session ends as a leave; otherwise its peer is detached
/// and resumable). One try each: a close that does not arrive ends like a dropped connection.
async fn close_session(
    client: &reqwest::Client,
    url: &str,
    sid: &str,
    mut waiting: VecDeque<(u64, String)>,
    next: u64,
    max: usize,
    done: Option<oneshot::Sender<()>>,
) {
    loop {
        let seq = waiting.front().map_or(next, |(n, _)| *n);
        let (body, taken) = send_body(sid, seq, false, &waiting, max);
        if taken == waiting.len() {
            let (body, _) = send_body(sid, seq, true, &waiting, usize::MAX);
            let _ = post(client, url, body, CLOSE_TIMEOUT).await;
            break;
        }
        if post(client, url, body, CLOSE_TIMEOUT).await.is_err() {
            break;
        }
        waiting.drain(..taken);
    }
    if let Some(done) = done {
        let _ = done.send(());
    }
}

/// Takes what the link hands over: a frame is queued with the next number (`None`); the
/// client's close (with what to answer once it went) or the link dropped ends the session.
fn take(
    up: Option<Up>,
    waiting: &mut VecDeque<(u64, String)>,
    next: &mut u64,
) -> Option<Option<oneshot::Sender<()>>> {
    match up {
        Some(Up::Frame(text)) => {
            waiting.push_back((*next, text));
            *next += 1;
            None
        }
        Some(Up::Close(done)) => Some(Some(done)),
        // The link was dropped (given up for another): the session ends, resumable.
        None => Some(None),
    }
}

/// Sends frames up in order, a request at a time, each batch tried again until the server
/// took it; closes the session when told, or when the link is dropped.
async fn send_loop(
    client: reqwest::Client,
    base: String,
    sid: String,
    max: usize,
    mut up: mpsc::UnboundedReceiver<Up>,
    down: mpsc::UnboundedSender<Incoming>,
) {
    let url = format!("{base}/send");
    // The join was frame 1.
    let mut next = 2u64;
    let mut waiting: VecDeque<(u64, String)> = VecDeque::new();
    loop {
        if waiting.is_empty()
            && let Some(done) = take(up.recv().await, &mut waiting, &mut next)
        {
            close_session(&client, &url, &sid, waiting, next, max, done).await;
            return;
        }
        let seq = waiting.front().map_or(next, |(n, _)| *n);
        let (body, _) = send_body(&sid, seq, false, &waiting, max);
        let request = post_retrying(&client, &url, &body, SEND_TIMEOUT);
        tokio::pin!(request);
        // Frames that come meanwhile queue; a close goes at once, beside the request under
        // way (the server takes two at a time, and numbering skips what it already took).
        let result = loop {
            tokio::select! {
                r = &mut request => break r,
                up_next = up.recv() => if let Some(done) = take(up_next, &mut waiting, &mut next) {
                    close_session(&client, &url, &sid, waiting, next, max, done).await;
                    return;
                },
            }
        };
        match result {
            Ok(answer) => {
                let Ok(answer) = serde_json::from_slice::<SendAnswer>(&answer) else {
                    let _ = down.send(Incoming::Closed(None));
                    return;
                };
                while waiting.front().is_some_and(|(n, _)| *n <= answer.ack) {
                    waiting.pop_front();
                }
                if answer.closed {
                    // The session ended: its close comes with the next poll; nothing more
                    // goes up.
                    while let Some(up) = up.recv().await {
                        if let Up::Close(done) = up {
                            let _ = done.send(());
                            return;
                        }
                    }
                    return;
                }
            }
            Err(e) => {
                let _ = down.send(e.closed());
                return;
            }
        }
    }
}
