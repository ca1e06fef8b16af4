//! The HTTP transport (`/v1/http/*`): the protocol's frames over plain HTTP requests, for
//! browsers that cannot open a WebSocket (none in the browser, or a proxy that blocks it).
//!
//! Long-polling, every request a `POST` with a `text/plain` body (a CORS "simple request": no
//! preflight; no secret in any URL; never cached by a proxy):
//! - `open`: the body is the `join` frame. The answer names the transport session (`sid`) and
//!   carries the first frames (`joined`, or the error and the close).
//! - `poll` (`{"sid","ack"}`): frames numbered after `ack`, as soon as there is one, or none
//!   after `poll_wait`. Frames stay here until a later poll acknowledges them, so a lost answer
//!   costs nothing: the next poll gets them again.
//! - `send` (`{"sid","seq","close"}` on the first line, one frame per line after it): frame `i`
//!   of the body is number `seq + i`; numbers already taken are skipped, so a retried request
//!   delivers nothing twice. `close` ends the session after the frames (the client's close).
//!
//! Behind the three requests the session is an emulated connection ([`HttpLink`]) served by
//! the same code as a WebSocket (`conn::run`): the same join, limits, driver, resume and close
//! codes. A session nobody polls ends like a silent WebSocket (4011, then resumable for the
//! resume window). In a cluster a request may reach any node: one for a session held by
//! another node is passed to it through Redis and its answer passed back (`forward`).

mod link;

use crate::{
    AppState,
    api::ApiError,
    directory::{ForwardError, HttpOp, HttpReply},
    transport::conn::ConnectionSlot,
};
use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use bluecam_proto::ErrorCode;
use link::POLL_BATCH_BYTES;
pub(crate) use link::{Down, HttpLink, Up};
use serde::Deserialize;
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use tungstenite::Utf8Bytes;

/// Frames a session's requests may have handed over and its connection not yet read...
const UP_QUEUE: usize = 256;
/// ...and `send` requests of one session at once (the SDK's, and its closing one).
const SENDS_AT_ONCE: usize = 2;
/// A session whose connection ended keeps its close code this long for the client to poll.
const CLOSE_LINGER: Duration = Duration::from_secs(30);
/// The longest a poll waits for a frame (less when the idle timeout is shorter).
const POLL_WAIT: Duration = Duration::from_secs(25);
/// A poll passed to another node gets this much longer than the poll itself to come back.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);
/// A send passed to another node is answered within this, or the client tries again.
const FORWARD_SEND_WAIT: Duration = Duration::from_secs(10);

/// A transport session as its requests see it.
struct Session {
    up: mpsc::Sender<Up>,
    /// The byte budget of frames handed over and not yet taken by the connection.
    up_bytes: Arc<tokio::sync::Semaphore>,
    /// `send` requests under way.
    sends: tokio::sync::Semaphore,
    down: Arc<Down>,
    /// The number of the last frame handed to the connection; held across a `send` so that
    /// two requests of one client cannot interleave their frames.
    taken: tokio::sync::Mutex<u64>,
}

/// Bytes a second, and at once, that one source may have passed to other nodes and back
/// (through Redis, which every node shares): several sessions' worth of the WebSocket's own
/// rate, and a burst of several largest sends.
const FORWARD_BYTES_PER_SEC: f64 = 4.0 * 1024.0 * 1024.0;
const FORWARD_BURST_BYTES: f64 = 8.0 * 1024.0 * 1024.0;
/// The same for every source together, exempt ones included (a proxy on this host carries
/// everyone's requests): what this node publishes for the transport stays well under what a
/// Redis subscriber's output buffer holds (32 MB by default), whoever asks.
const FORWARD_NODE_BYTES_PER_SEC: f64 = 16.0 * 1024.0 * 1024.0;
const FORWARD_NODE_BURST_BYTES: f64 = 16.0 * 1024.0 * 1024.0;
/// What a request passed on costs beside its body and its answer (the relay's heads).
const FORWARD_REQUEST_COST: f64 = 1024.0;
/// Sources remembered for that rate at most.
const FORWARD_SOURCES: usize = 100_000;
/// Frame bytes in the answer to a poll passed on by another node at most (at least one frame,
/// whatever its size): a client that polls another node gets its frames in smaller batches,
/// so one answer is never a large publish.
pub(crate) const FORWARDED_POLL_BATCH_BYTES: usize = 256 << 10;

/// The transport sessions of this node.
pub struct HttpSessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
    /// The bytes of requests passed to other nodes and of their answers, per source...
    forwards: crate::front::sources::SharedRates,
    /// ...and from every source together.
    forwards_total: Mutex<bluecam_core::TokenBucket>,
}

impl Default for HttpSessions {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
            forwards: crate::front::sources::SharedRates::new(
                FORWARD_BYTES_PER_SEC,
                FORWARD_BURST_BYTES,
                FORWARD_SOURCES,
            ),
            forwards_total: Mutex::new(bluecam_core::TokenBucket::new(
                FORWARD_NODE_BYTES_PER_SEC,
                FORWARD_NODE_BURST_BYTES,
                Instant::now(),
            )),
        }
    }
}

impl HttpSessions {
    /// Whether a request of `cost` bytes from `source` (`None`: an exempt one) may be passed
    /// to another node now (taking the bytes if so).
    fn forward_admitted(&self, source: Option<IpAddr>, cost: f64) -> bool {
        if let Some(source) = source
            && self.forwards.try_take(source, cost).is_err()
        {
            return false;
        }
        self.forwards_total
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(cost, Instant::now())
    }

    /// Charges an answer's bytes, known only once it came back, to the source and the node
    /// (into debt if need be: the next request waits until it is repaid).
    fn forward_answered(&self, source: Option<IpAddr>, bytes: usize) {
        if let Some(source) = source {
            self.forwards.charge(source, bytes as f64);
        }
        self.forwards_total
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .charge(bytes as f64, Instant::now());
    }
}

impl std::fmt::Debug for HttpSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSessions")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl HttpSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, sid: &str) -> Option<Arc<Session>> {
        self.lock().get(sid).cloned()
    }

    /// Transport sessions open on this node now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The answer headers every transport response carries: JSON, never cached.
fn respond(status: StatusCode, body: String) -> Response {
    let mut res = (status, body).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Every answer of the transport's routes, refusals of the router included (413), is readable
/// by the page that asked when its origin may connect (the SDK is often on another origin).
async fn cors(
    State(state): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut res = next.run(req).await;
    if let Some(origin) = origin
        && state.origin_allowed(origin.to_str().ok())
    {
        let h = res.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    res
}

/// Until disarmed (its `open` answered), ends the session as a leave: a client that gave up on
/// its `open` never learned the session id, so no one could resume it.
struct Abandoned(Option<Arc<Session>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        if let Some(session) = self.0.take() {
            if let Ok(budget) = Arc::clone(&session.up_bytes).try_acquire_many_owned(16) {
                let leave = Utf8Bytes::from_static(r#"{"op":"leave"}"#);
                let _ = session.up.try_send(Up::Text(leave, budget));
            }
            let _ = session.up.try_send(Up::Closed);
        }
    }
}

/// How long a poll may wait for frames.
fn poll_wait(state: &AppState) -> Duration {
    POLL_WAIT.min(state.config.limits.idle_timeout() / 2)
}

/// `POST /v1/http/open`: the body is the `join` frame.
pub async fn open(
    State(state): State<AppState>,
    tcp: Option<axum::Extension<Arc<crate::front::serve::ConnPermit>>>,
    req: axum::extract::Request,
) -> Response {
    let headers = req.headers().clone();
    let body = match crate::api::read_body(&state, req).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if !state.origin_allowed(origin) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "origin not allowed",
        )
        .into_response();
    }
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("server is shutting down").into_response();
    }
    let Ok(join) = Utf8Bytes::try_from(body) else {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            "the body is not UTF-8",
        )
        .into_response();
    };
    // The same cap as WebSockets: a transport session is a connection.
    let open = state.connections.fetch_add(1, Ordering::AcqRel);
    if open >= state.config.limits.max_connections {
        state.connections.fetch_sub(1, Ordering::AcqRel);
        state.metrics.connections_refused.increment(1);
        return ApiError::unavailable("too many connections on this node").into_response();
    }
    let slot = ConnectionSlot(state.clone());
    // A session holds a place under the TCP caps, overall and per source, as a WebSocket's
    // connection does: one address cannot open sessions without bound over a few requests.
    let place = match tcp.map(|t| state.gate.admit_own(t.ip)) {
        Some(Ok(place)) => Some(place),
        Some(Err(why)) => {
            why.count(&state.metrics);
            return ApiError::unavailable("too many connections from this address").into_response();
        }
        None => None,
    };
    let track = state.tracker.token();
    let sid = new_sid(&state);
    let (tx, rx) = mpsc::channel(UP_QUEUE);
    let down = Arc::new(Down::new());
    let limits = &state.config.limits;
    // Frames handed over and not yet taken: at most two largest frames' worth (a connection
    // busy writing does not read, and its client's requests wait meanwhile).
    let budget = limits
        .hard_frame_cap()
        .saturating_mul(2)
        .min(u32::MAX as usize);
    let session = Arc::new(Session {
        up: tx,
        up_bytes: Arc::new(tokio::sync::Semaphore::new(budget)),
        sends: tokio::sync::Semaphore::new(SENDS_AT_ONCE),
        down: Arc::clone(&down),
        // The join was frame 1.
        taken: tokio::sync::Mutex::new(1),
    });
    // Cannot fail: the channel is new, and the join is within the budget (the body limit).
    let permits = join.len().clamp(1, budget.max(1)) as u32;
    if let Ok(place) = Arc::clone(&session.up_bytes).try_acquire_many_owned(permits) {
        let _ = session.up.try_send(Up::Text(join, place));
    }
    state.http.lock().insert(sid.clone(), Arc::clone(&session));
    let mut abandoned = Abandoned(Some(Arc::clone(&session)));
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let link = HttpLink {
        up: rx,
        down: Arc::clone(&down),
        cap: (limits.outbound_queue_bytes / 2).max(limits.hard_frame_cap()),
        client_closed: false,
    };
    let task_state = state.clone();
    let task_sid = sid.clone();
    let task_down = Arc::clone(&down);
    tokio::spawn(async move {
        let down = task_down;
        crate::transport::conn::run(task_state.clone(), link, host, ()).await;
        drop(track);
        // A session the server ended keeps its close for the client's next poll (and its
        // places under the caps meanwhile); one the client closed goes at once.
        if !down.closed_by_client() {
            let _ = tokio::time::timeout(CLOSE_LINGER, down.close_carried()).await;
        }
        task_state.http.lock().remove(&task_sid);
        drop((slot, place));
    });
    // Within the SDK's own join deadline, so that it does not give up on an answer coming.
    let wait = state
        .config
        .limits
        .join_timeout()
        .saturating_sub(Duration::from_secs(1));
    let mut batch = down
        .poll(0, wait.max(Duration::from_secs(1)), POLL_BATCH_BYTES)
        .await;
    // A join that failed answers its error, then ends the connection: the answer waits for
    // that end (it follows at once) so as to carry it.
    let joined = batch
        .frames
        .first()
        .is_none_or(|f| f.as_str().starts_with(r#"{"op":"joined""#));
    if !joined && batch.close.is_none() {
        down.closed_within(JOIN_END_WAIT).await;
        batch = down.poll(0, Duration::ZERO, POLL_BATCH_BYTES).await;
    }
    abandoned.0 = None;
    // A session that already ended (its join failed) has nothing more to poll: its answer
    // carries the close and no session id (which would name this node to anyone).
    let sid = (joined && batch.close.is_none()).then_some(sid.as_str());
    respond(StatusCode::OK, batch.to_json(sid))
}

/// The longest session id looked at (ours are under 80 characters).
const MAX_SID_LEN: usize = 128;

/// How long an `open` whose join failed waits for the connection's end after its error.
const JOIN_END_WAIT: Duration = Duration::from_secs(1);

/// A new session id: this node's id (in a cluster, so that any node can tell whose session it
/// is), 176 random bits, then a tag under a key derived from the API secret, so
/// that any node tells a forged or altered id from a real one without asking anyone.
fn new_sid(state: &AppState) -> String {
    let base = match state.broker.node() {
        Some(node) => format!("{node}.{}", crate::auth::random_token(22)),
        None => crate::auth::random_token(22),
    };
    let tag = state.secret.sid_tag(&base);
    format!("{base}.{tag}")
}

/// The node a session id names when its tag is right (`Some(None)` on a single node, or for
/// an id without a node); `None` for an id this cluster did not make.
fn sid_node<'a>(state: &AppState, sid: &'a str) -> Option<Option<&'a str>> {
    // (Ours are under 80 characters: a longer one is not hashed at all.)
    if sid.len() > MAX_SID_LEN {
        return None;
    }
    let (base, tag) = sid.rsplit_once('.')?;
    if !state.secret.sid_tag_matches(base, tag) {
        return None;
    }
    Some(base.split_once('.').map(|(node, _)| node))
}

#[derive(Deserialize)]
struct PollRequest {
    sid: String,
    ack: u64,
}

#[derive(Deserialize)]
struct SendHeader {
    sid: String,
    seq: u64,
    #[serde(default)]
    close: bool,
}

/// An answer: its status and JSON body (errors in the API's shape, `{"error":{…}}`).
type Answer = (StatusCode, String);

fn answer_error(code: StatusCode, error: ErrorCode, message: &str) -> Answer {
    let body = serde_json::json!({"error": {"code": error, "message": message}});
    (code, body.to_string())
}

fn bad_request(message: &str) -> Answer {
    answer_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

fn no_session_answer() -> Answer {
    answer_error(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        "no such transport session (it ended, or its node is gone): open a new one and resume",
    )
}

/// `POST /v1/http/poll`: `{"sid","ack"}`.
pub async fn poll(
    State(state): State<AppState>,
    tcp: Option<axum::Extension<Arc<crate::front::serve::ConnPermit>>>,
    req: axum::extract::Request,
) -> Response {
    request(state, tcp, req, HttpOp::Poll).await
}

/// `POST /v1/http/send`: `{"sid","seq","close"}`, then one frame per line.
pub async fn send(
    State(state): State<AppState>,
    tcp: Option<axum::Extension<Arc<crate::front::serve::ConnPermit>>>,
    req: axum::extract::Request,
) -> Response {
    request(state, tcp, req, HttpOp::Send).await
}

async fn request(
    state: AppState,
    tcp: Option<axum::Extension<Arc<crate::front::serve::ConnPermit>>>,
    req: axum::extract::Request,
    op: HttpOp,
) -> Response {
    let body = match crate::api::read_body(&state, req).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let source = tcp.and_then(|t| t.source());
    let (status, text) = answer(&state, op, body, source).await;
    respond(status, text)
}

/// The frames of a `send` body after its head line, one per line (the last line may be
/// empty: a body that ends with a line break has no frame after it).
pub(crate) fn frame_lines(mut rest: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
        let line = rest.slice(..end);
        rest = rest.slice((end + 1).min(rest.len())..);
        Some(line)
    })
}

/// The session id a request names.
pub(crate) fn sid_of(op: HttpOp, body: &[u8]) -> Result<String, Answer> {
    match op {
        HttpOp::Poll => serde_json::from_slice::<PollRequest>(body)
            .map(|r| r.sid)
            .map_err(|e| bad_request(&e.to_string())),
        HttpOp::Send => {
            let end = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
            serde_json::from_slice::<SendHeader>(&body[..end])
                .map(|h| h.sid)
                .map_err(|e| bad_request(&e.to_string()))
        }
    }
}

/// Answers a poll or a send: here when this node holds the session; in a cluster, passed to
/// the node that does (its id starts the session's), and its answer passed back. A session id
/// whose tag is wrong is answered here, as one that does not exist, without touching Redis.
async fn answer(state: &AppState, op: HttpOp, body: Bytes, source: Option<IpAddr>) -> Answer {
    state.metrics.http_transport_requests.increment(1);
    let sid = match sid_of(op, &body) {
        Ok(sid) => sid,
        Err(a) => return a,
    };
    let Some(node) = sid_node(state, &sid) else {
        state.metrics.http_forged_sids.increment(1);
        return no_session_answer();
    };
    if state.http.get(&sid).is_none()
        && let Some(me) = state.broker.node()
        && let Some(node) = node
        && node != me.as_str()
    {
        // Every node shares Redis: one source's requests, or everyone's, may not crowd out the
        // cluster's own traffic there.
        let cost = body.len() as f64 + FORWARD_REQUEST_COST;
        if !state.http.forward_admitted(source, cost) {
            state.metrics.http_forward_limited.increment(1);
            return answer_error(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                "too many requests from this address for sessions of other nodes; retry",
            );
        }
        let wait = match op {
            HttpOp::Poll => poll_wait(state) + FORWARD_MARGIN,
            HttpOp::Send => FORWARD_SEND_WAIT,
        };
        state.metrics.http_forwarded.increment(1);
        return match state
            .broker
            .forward_http(bluecam_proto::NodeId::new(node.to_owned()), op, body, wait)
            .await
        {
            Ok(reply) => {
                state.http.forward_answered(source, reply.body.len());
                (
                    StatusCode::from_u16(reply.status).unwrap_or(StatusCode::BAD_GATEWAY),
                    reply.body,
                )
            }
            // Its node is gone: the client resumes the session elsewhere.
            Err(ForwardError::NoSuchNode) => no_session_answer(),
            // Slow or unreachable: the client tries again (and resumes if it keeps failing).
            Err(ForwardError::NoAnswer) => answer_error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the node holding this session did not answer; retry",
            ),
        };
    }
    answer_here(state, op, body, POLL_BATCH_BYTES).await
}

/// Answers a request for a session on this node (also one passed on by another node), a poll
/// with up to `batch_bytes` of frames.
pub(crate) async fn answer_here(
    state: &AppState,
    op: HttpOp,
    body: Bytes,
    batch_bytes: usize,
) -> Answer {
    match op {
        HttpOp::Poll => {
            let req: PollRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => return bad_request(&e.to_string()),
            };
            let Some(session) = state.http.get(&req.sid) else {
                return no_session_answer();
            };
            let batch = session
                .down
                .poll(req.ack, poll_wait(state), batch_bytes)
                .await;
            (StatusCode::OK, batch.to_json(None))
        }
        HttpOp::Send => {
            let end = body.iter().position(|b| *b == b'\n').unwrap_or(body.len());
            let head: SendHeader = match serde_json::from_slice(&body[..end]) {
                Ok(h) => h,
                Err(e) => return bad_request(&e.to_string()),
            };
            let frames = body.slice((end + 1).min(body.len())..);
            match local_send(state, &head, frames).await {
                Ok(body) => (StatusCode::OK, body),
                Err(a) => a,
            }
        }
    }
}

/// Hands the frames of a `send` to the session's connection. The answer's `ack` is the number
/// of the last frame it has taken; `closed` says the connection has ended (its close comes with
/// the next poll), so sending more is useless.
async fn local_send(state: &AppState, head: &SendHeader, frames: Bytes) -> Result<String, Answer> {
    let session = state.http.get(&head.sid).ok_or_else(no_session_answer)?;
    let Ok(_sending) = session.sends.try_acquire() else {
        return Err(answer_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many sends of this session at once: send one at a time",
        ));
    };
    let mut taken = session.taken.lock().await;
    let hard_cap = state.config.limits.hard_frame_cap();
    let budget = hard_cap.saturating_mul(2).min(u32::MAX as usize);
    let answer = |taken: u64, closed: bool| {
        if closed {
            format!("{{\"ack\":{taken},\"closed\":true}}")
        } else {
            format!("{{\"ack\":{taken}}}")
        }
    };
    let mut n = head.seq;
    for line in frame_lines(frames) {
        if n > *taken + 1 {
            return Err(answer_error(
                StatusCode::CONFLICT,
                ErrorCode::BadRequest,
                &format!("frame {n} sent before frame {}", *taken + 1),
            ));
        }
        if n == *taken + 1 {
            let up = if line.len() > hard_cap {
                Up::TooLarge
            } else {
                let Ok(text) = Utf8Bytes::try_from(line) else {
                    return Err(bad_request("a frame is not UTF-8"));
                };
                // Waits while the connection is busy (back-pressure on the client's requests),
                // holding the frame's bytes in the session's budget until it is taken.
                let permits = text.len().clamp(1, budget.max(1)) as u32;
                let Ok(place) = Arc::clone(&session.up_bytes)
                    .acquire_many_owned(permits)
                    .await
                else {
                    return Ok(answer(*taken, true));
                };
                Up::Text(text, place)
            };
            if session.up.send(up).await.is_err() {
                // The connection ended: the client learns why from its poll.
                return Ok(answer(*taken, true));
            }
            *taken = n;
        }
        // (Saturating: a hostile `seq` near the end of the range is refused above, never
        // wrapped.)
        n = n.saturating_add(1);
    }
    if head.close {
        session.down.closing_by_client();
        let _ = session.up.send(Up::Closed).await;
    }
    Ok(answer(*taken, session.up.is_closed()))
}

/// This node's answerer of requests passed on by other nodes (its cluster node is started with
/// it).
pub fn forwarded_handler(state: &AppState) -> crate::directory::HttpHandler {
    let weak = std::sync::Arc::downgrade(&state.0);
    crate::directory::HttpHandler(std::sync::Arc::new(move |op, body: Bytes| {
        let weak = weak.clone();
        Box::pin(async move {
            let Some(shared) = weak.upgrade() else {
                let (status, body) = no_session_answer();
                return HttpReply {
                    status: status.as_u16(),
                    body,
                };
            };
            let (status, body) =
                answer_here(&AppState(shared), op, body, FORWARDED_POLL_BATCH_BYTES).await;
            HttpReply {
                status: status.as_u16(),
                body,
            }
        })
    }))
}

/// A poll's body at most: `{"sid","ack"}` (a session id is under 100 bytes).
const POLL_BODY_MAX: usize = 1 << 10;

/// The transport's routes, each with a body limit of its own (a declared length over it is
/// refused before anything is read, and every body is read within the request timeout): an
/// `open` carries a `join` (as large as an API body at most), a `poll` a few dozen bytes, and
/// a `send` frames up to the hard cap.
pub fn routes(state: &AppState) -> axum::Router<AppState> {
    use axum::{extract::DefaultBodyLimit, middleware::from_fn_with_state, routing::post};
    let limited = |limit: usize, route: axum::routing::MethodRouter<AppState>| {
        route
            .layer(DefaultBodyLimit::max(limit))
            .layer(from_fn_with_state(
                limit,
                crate::api::refuse_declared_oversize,
            ))
    };
    let limits = &state.config.limits;
    let send_limit = limits.hard_frame_cap() + (64 << 10);
    axum::Router::new()
        .route(
            "/v1/http/open",
            limited(limits.max_http_body_bytes, post(open)),
        )
        .route("/v1/http/poll", limited(POLL_BODY_MAX, post(poll)))
        .route("/v1/http/send", limited(send_limit, post(send)))
        .layer(from_fn_with_state(state.clone(), cors))
}
