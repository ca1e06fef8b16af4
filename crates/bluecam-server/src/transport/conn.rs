//! The connection loop every transport runs ([`run`]): it reads the `join` (within the
//! deadline), then loops: frames in (size cap, rate limit, parse, hand to the driver), frames out
//! (from its bounded queue, batched), liveness, and the driver's or the server's request to
//! close. What carries the frames is a [`Transport`]: a WebSocket (`crate::transport::ws`) or the HTTP
//! transport (`crate::transport::http`); this module knows neither.

use crate::{
    AppState,
    auth::TokenError,
    driver::{Next, Outbound},
};
use bluecam_core::{
    BadFrameWindow, ConnId, DirAnswer, FreshIds, Handled, Input, JoinRequest, RateLimiter,
    RoomAccess,
};
use bluecam_proto::{
    ClientMessage, CloseCode, ErrorCode, ErrorFrame, FrameError, PeerId, RoomClosedReason,
    RoomSummary, ServerMessage, SessionId, SessionSecret,
};
use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};
use tungstenite::Utf8Bytes;

/// Frames written per flush at most, so one busy connection cannot hog its task's writes.
const WRITE_BATCH: usize = 64;

/// Frames up to this size still get their `ref` echoed in a `rate_limited` error (reading the
/// `ref` of a larger frame would cost the parse the limit is there to avoid).
const RATE_LIMITED_REF_MAX: usize = 64 << 10;

/// What carries one client's frames: a WebSocket (`crate::transport::ws`), or the HTTP transport's
/// emulation of one (`crate::transport::http`). Everything above it (join, limits, the driver, resume) is
/// [`run`], the same for both.
pub(crate) trait Transport: Send {
    /// The next thing from the client; `Pending` registers the task to be woken when it
    /// comes. (A poll, not a future: the connection loop polls it beside the driver's signal
    /// without keeping a future of each in every connection's task.)
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Incoming>;

    /// Sends one frame now (errors): `Err` when the connection is gone.
    async fn send_text(&mut self, text: String, state: &AppState) -> Result<(), CloseCode>;

    /// When the client was last heard of, given when the last frame came.
    fn heard_at(&self, last_frame: Instant) -> Instant;

    /// A liveness ping; false when the connection is gone.
    async fn ping(&mut self) -> bool;

    /// Hands one queued frame to the connection (see [`write_batch`], which calls it).
    /// Cancellation-safe: a frame not taken yet is not taken.
    async fn put(&mut self, text: &Utf8Bytes, resumable: bool, state: &AppState) -> Put;

    /// After a batch of [`Transport::put`]s: sends what they buffered. `Some` when the
    /// connection must end (with that code, or none: it is gone).
    async fn flush_batch(&mut self, state: &AppState) -> Option<Option<CloseCode>>;

    /// Frames handed over that the client has not got yet (kept for its resume).
    fn take_unsent(&mut self) -> Vec<Outbound>;

    /// Ends the connection with `code`, telling the client.
    async fn close(&mut self, code: CloseCode);

    /// The connection ended without a code of the server's (the client closed, the socket
    /// broke, or the driver let go of it).
    async fn finish(&mut self, state: &AppState, shared: &crate::driver::ConnShared);

    /// Whether the client has gone already, as far as what it sent so far tells, without
    /// waiting (a WebSocket whose close or end is already in; the HTTP transport cannot tell).
    fn gone_already(&mut self) -> bool {
        false
    }
}

/// What became of a frame [`Transport::put`] was given.
pub(crate) enum Put {
    /// Taken (sent, or buffered for the next flush or poll).
    Taken,
    /// Taken, but the connection is gone.
    Gone,
    /// Not taken: the client reads nothing (the write-stall rule); it stays queued.
    Stalled,
}

/// Writes the frame in `slot` and whatever else is queued (up to [`WRITE_BATCH`]), the same
/// loop for every transport; `Some` when the connection must end (with that code, or none: it
/// is gone). Cancellation-safe: a frame not taken yet stays in `slot` (kept for a resume).
pub(crate) async fn write_batch<T: Transport>(
    socket: &mut T,
    slot: &mut Option<Outbound>,
    shared: &crate::driver::ConnShared,
    state: &AppState,
) -> Option<Option<CloseCode>> {
    // Frames written are counted once per batch, one update of the shared counter rather than
    // one per frame; when the batch ends, or when it is dropped while it waits (see
    // `Connection::step`).
    let mut written = FramesOut(0, &state.metrics.frames_out);
    let end = loop {
        let Some(out) = slot.as_ref() else {
            break None;
        };
        match out {
            Outbound::Frame { text, resumable } => {
                let len = text.len();
                let put = socket.put(text, *resumable, state).await;
                if matches!(put, Put::Stalled) {
                    break Some(Some(CloseCode::SlowConsumer));
                }
                *slot = None;
                shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                if matches!(put, Put::Gone) {
                    break Some(None);
                }
                written.0 += 1;
            }
            Outbound::Close(code) => {
                let code = *code;
                // (The frames before it go out first, if they can. The close stays in `slot`
                // until they have: a batch tried without waiting and dropped at this flush
                // leaves it for the write that waits.)
                let _ = socket.flush_batch(state).await;
                *slot = None;
                break Some(Some(code));
            }
        }
        if written.0 < WRITE_BATCH {
            *slot = shared.queue.try_pop();
        }
    };
    drop(written);
    match end {
        Some(end) => Some(end),
        None => socket.flush_batch(state).await,
    }
}

/// Writes the `pong` to a client's `ping` (as [`write_batch`] writes a frame); `Some` when the
/// connection must end, as there.
async fn answer<T: Transport>(socket: &mut T, state: &AppState) -> Option<Option<CloseCode>> {
    match socket
        .put(&Utf8Bytes::from_static(PONG), false, state)
        .await
    {
        Put::Stalled => return Some(Some(CloseCode::SlowConsumer)),
        Put::Gone => return Some(None),
        Put::Taken => state.metrics.frames_out.increment(1),
    }
    socket.flush_batch(state).await
}

/// Frames written by one [`write_batch`], counted when it ends or is dropped.
struct FramesOut<'a>(usize, &'a ::metrics::Counter);

impl Drop for FramesOut<'_> {
    fn drop(&mut self) {
        if self.0 > 0 {
            self.1.increment(self.0 as u64);
        }
    }
}

/// A batch whose write has to wait for the socket (a peer that stops reading: TCP zero
/// window): the driver's verdicts (a slow consumer, shutdown) still get through, and a write
/// that takes longer than the idle timeout is a slow consumer. `Some` when the connection must
/// end, as [`write_batch`].
async fn write_waiting<T: Transport>(
    socket: &mut T,
    slot: &mut Option<Outbound>,
    shared: &crate::driver::ConnShared,
    state: &AppState,
) -> Option<Option<CloseCode>> {
    tokio::select! {
        written = tokio::time::timeout(
            state.config.limits.idle_timeout(),
            write_batch(socket, slot, shared, state),
        ) => written.unwrap_or(Some(Some(CloseCode::SlowConsumer))),
        code = std::future::poll_fn(|cx| shared.poll_killed(cx)) => Some(Some(code)),
        // (One the driver let go of already is not reached by its shutdown kill.)
        () = state.shutdown.cancelled() => Some(Some(CloseCode::ServiceRestart)),
    }
}

/// What woke the connection loop.
enum Event {
    Driver(Next),
    Socket(Incoming),
}

/// What [`Connection::step`] came to.
enum Step {
    /// The connection ends (with that code, or none: it is gone).
    End(Option<CloseCode>),
    /// Something has to wait ([`Connection::wait`]).
    Wait(Slow),
}

/// What a connection has to wait for, rarely: boxed, so that its state is not part of every
/// connection's task.
enum Slow {
    /// A batch whose write waits for the socket (see `write_waiting`).
    Write,
    /// A liveness ping.
    Ping,
    /// Rooms a frame left empty (a `leave`), to record.
    Touch(Vec<bluecam_proto::RoomId>),
    /// A bad frame, to answer (and count towards the bad-frame limit).
    Reject(FrameError),
    /// An error to send (the frame was dropped).
    Error(ErrorFrame),
    /// The answer to the client's `ping` (written by `Connection::step`, never waited on).
    Pong,
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

/// Serves one client's connection (a WebSocket, or an HTTP transport session) to its end,
/// then drops `held` (what the connection holds for its life: its places under the caps).
///
/// This future is most of what an idle connection's task holds, so it is kept small
/// (BENCHMARKS.md, "What an idle connection holds"): it is the task's whole future (the
/// transports spawn it, not a block around it); it is not an `async fn`, whose arguments are
/// stored twice (as they came and again as locals); the join owns the socket until it is done
/// and is boxed, as is the end (each runs once); and the loop is written out here, so that
/// what it waits on is one pointer rather than a future of its own. What the task keeps for
/// the connection's life is the socket, the [`Connection`] and `held`.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its arguments twice in the connection's task"
)]
pub(crate) fn run<T: Transport, H: Send>(
    state: AppState,
    socket: T,
    host: Option<String>,
    held: H,
) -> impl std::future::Future<Output = ()> {
    // (Without its spare capacity: the join holds it until it is done.)
    let begin = Box::pin(begin(state, socket, host.map(String::into_boxed_str)));
    async move {
        let Some((mut socket, mut connection)) = begin.await else {
            drop(held);
            return;
        };
        // The driver ends connections at shutdown (`Driver::kill_all`); one registered after
        // that sees it here.
        let end = if connection.state.shutdown.is_cancelled() {
            Some(CloseCode::ServiceRestart)
        } else {
            connection.shared.writing.store(true, Ordering::Release);
            // Most of what a connection does (a frame in, a batch out) is done without
            // waiting, in `Connection::step`; what has to wait (a full socket, a ping, an
            // error to send, rooms to record) is boxed.
            loop {
                let step = std::future::poll_fn(|cx| connection.step(&mut socket, cx));
                let slow = match step.await {
                    Step::End(code) => break code,
                    Step::Wait(slow) => slow,
                };
                if let Some(code) = Box::pin(connection.wait(&mut socket, slow)).await {
                    break code;
                }
            }
        };
        Box::pin(connection.end(&mut socket, end)).await;
        drop(held);
    }
}

/// The join, owning the socket until it is done: the socket and the admitted connection, or
/// `None` when the connection ended instead (its socket closed and dropped here).
async fn begin<T: Transport>(
    state: AppState,
    mut socket: T,
    host: Option<Box<str>>,
) -> Option<(T, Connection)> {
    let connection = admit(&state, &mut socket, host).await?;
    Some((socket, connection))
}

/// The connection up to its join: the join frame (within the deadline), verified and
/// admitted; `None` when the connection ended instead.
async fn admit<T: Transport>(
    state: &AppState,
    socket: &mut T,
    host: Option<Box<str>>,
) -> Option<Connection> {
    state
        .metrics
        .connections
        .set(state.connections.load(Ordering::Acquire) as f64);
    let limits = &state.config.limits;
    let first = tokio::select! {
        first = tokio::time::timeout(limits.join_timeout(), first_text(socket)) => first,
        () = state.shutdown.cancelled() => {
            close(state, socket, CloseCode::ServiceRestart).await;
            return None;
        }
    };
    let text = match first {
        Err(_elapsed) => {
            send_error(
                state,
                socket,
                ErrorFrame::new(
                    ErrorCode::BadRequest,
                    "no join frame within the join deadline",
                )
                .closing(CloseCode::JoinTimeout),
            )
            .await;
            close(state, socket, CloseCode::JoinTimeout).await;
            return None;
        }
        Ok(Err(None)) => return None,
        Ok(Err(Some(code))) => {
            close(state, socket, code).await;
            return None;
        }
        Ok(Ok(text)) => text,
    };
    state.metrics.frame_in("join");
    // In a cluster a join takes over the seats of its identity's other sessions, wherever
    // they are. A node frozen past its client's patience reads the join late: by then the
    // client closed this connection and joined elsewhere, and carrying the join out would
    // take over that newer, live session (4042, final for the SDK). Its close is then among
    // what this socket holds, and the join is dropped.
    if state.broker.node().is_some() && socket.gone_already() {
        tracing::debug!("a join whose client had gone already was dropped");
        return None;
    }
    let (conn, shared) = state.driver.register();
    if let Err((error, code)) = Box::pin(join(state, conn, &text, host.as_deref())).await {
        let vacated = state
            .driver
            .disconnect(conn, Instant::now(), Vec::new(), &shared.queue);
        state.touch_rooms(vacated).await;
        send_error(state, socket, error.closing(code)).await;
        close(state, socket, code).await;
        return None;
    }
    // The join frame and the host are needed no more: not kept for the connection's life.
    drop((text, host));
    Some(Connection {
        limiter: RateLimiter::new(&limits.rates(), Instant::now()),
        bad_frames: None,
        last_heard: Heard::at(Instant::now()),
        state: state.clone(),
        shared,
        unsent: None,
        socket_first: false,
    })
}
impl Connection {
    /// After the loop: what the client did not get is kept for its resume, the connection
    /// leaves the driver, and the client is told why (`end`) or its close answered.
    async fn end<T: Transport>(mut self, socket: &mut T, end: Option<CloseCode>) {
        let state = &self.state;
        // Frames the client never got are kept for its resume, in order: over HTTP those no
        // poll has carried yet (like a WebSocket's queue; those carried and not acknowledged
        // are like bytes handed to a socket), then the one whose write was interrupted.
        let mut unsent = socket.take_unsent();
        unsent.extend(self.unsent.take().map(|out| *out));
        let vacated =
            state
                .driver
                .disconnect(self.shared.conn, Instant::now(), unsent, &self.shared.queue);
        state.touch_rooms(vacated).await;
        match end {
            Some(code) => close(state, socket, code).await,
            None => socket.finish(state, &self.shared).await,
        }
    }
}

/// Reads until the first text frame. `Err(None)` when the client went away first,
/// `Err(Some(code))` when what it sent must close the connection.
async fn first_text<T: Transport>(socket: &mut T) -> Result<Utf8Bytes, Option<CloseCode>> {
    loop {
        match std::future::poll_fn(|cx| socket.poll_next(cx)).await {
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
        Ok(None) if directory_lost(state).await => {
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
    // The backend removed this identity from the room: only a token issued since opens it.
    if room.revoked(&claims.sub, claims.iat) {
        return Err(fail(
            ErrorCode::Unauthorized,
            "token issued before this identity was removed from the room",
        ));
    }
    // (An `iat` in the future would pass that rule for every later room of the id.)
    if claims.iat > crate::unix_now().saturating_add(crate::auth::LEEWAY_SECS) {
        return Err(fail(ErrorCode::Unauthorized, "token issued in the future"));
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
    let fresh = FreshIds::new(
        peer,
        SessionId::new(crate::auth::random_token(16)),
        SessionSecret::new(crate::auth::random_token(32)),
    );
    let permissions = claims.permissions.unwrap_or_default();
    let room_id = room.id.clone();
    let cluster = if state.broker.node().is_some() {
        cluster_admit(state, &room, &claims, permissions, &fresh, resume.as_ref()).await?
    } else {
        None
    };
    // The seat the directory gave this connection (a new peer, or a session claimed here):
    // taken back out if the core refuses the join.
    let seat = bluecam_core::node::seat_given(
        cluster.as_ref(),
        &fresh.peer,
        &fresh.session,
        resume.is_some(),
    );
    let req = JoinRequest {
        conn,
        room: RoomAccess {
            summary: RoomSummary::from(&room),
            owner: room.owner.clone(),
            members: room.members.clone(),
            multiple_sessions: room.multiple_sessions,
        },
        identity: claims.sub.clone(),
        name: claims.name,
        metadata: claims.metadata,
        permissions,
        resume,
        fresh: fresh.clone(),
        ice_servers,
        limits: state.config.limits.to_wire(room.max_peers),
        cluster,
    };
    let (result, vacated, persisted) = state.driver.join(req);
    // `joined` is written only once the session is durable: a client never holds a session
    // that a crash right after could lose.
    if let Some(persisted) = persisted
        && let Err(e) = persisted.await.unwrap_or_else(|_| {
            Err(Arc::new(crate::persist::store::StoreError::WriterGone(
                "session log",
            )))
        })
    {
        tracing::warn!(error = %e, "session not durable: it will not survive a restart");
    }
    state.touch_rooms(vacated).await;
    let peer = result.map_err(|rejected| {
        if let Some((peer, session, reason)) = bluecam_core::node::seat_to_remove(seat, rejected) {
            // The directory has the peer here already: take it back out.
            let removed = crate::directory::Outgoing::Removed {
                room: room_id.clone(),
                peer,
                session,
                reason,
            };
            if let Err(item) = state.broker.send(removed) {
                state.driver.undelivered(item);
            }
        }
        (
            ErrorFrame::new(rejected.code(), rejected.message()),
            CloseCode::for_join_error(rejected.code()),
        )
    })?;
    // A DELETE may have removed the room between our read and the join, and found no one to
    // close yet: look again, so the room cannot live on in the driver after its deletion. (On
    // one node the read is a lookup in memory: the store forgets a room once its delete is
    // committed, before the DELETE closes it in the driver.)
    // The same for a removal of this identity (`DELETE /v1/rooms/{id}/peers/{peerId}`) that
    // came between: the peer it let in goes as removed.
    match state.store.room(room_id.clone()).await {
        Ok(None) => state.driver.close_room(&room_id, RoomClosedReason::Deleted),
        Ok(Some(now)) if now.revoked(&claims.sub, claims.iat) => {
            let (_, vacated) = state.driver.kick(&room_id, &peer);
            state.touch_rooms(vacated).await;
        }
        _ => {}
    }
    Ok(peer)
}

/// Whether a room the store lacks may be on its way back in a cluster whose directory lost
/// its data a moment ago (`Node::directory_lost`); a directory that cannot be read says yes
/// (a retry is the right answer either way).
async fn directory_lost(state: &AppState) -> bool {
    if state.broker.node().is_none() {
        return false;
    }
    match state.broker.directory_epoch().await {
        Ok((current, marked)) => state.driver.directory_lost(current.as_deref(), marked),
        Err(_) => true,
    }
}

/// Cluster: records the join with the directory (or moves a session held by another node
/// here) before the core admits it; the node decides what the answer means, and gives the
/// room as the cluster sees it.
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
    state.driver.handle(Input::Admitting(room.clone()));
    let answer = match resume {
        // Claimed even when this node holds the session (see `Node`'s admission).
        Some(creds) => state
            .broker
            .claim(room.id.clone(), claims.sub.clone(), creds.clone())
            .await
            .map(DirAnswer::Claim),
        None => state
            .broker
            .join(crate::directory::NewPeer {
                room: room.id.clone(),
                max_peers: room.max_peers,
                // One seat per identity across nodes, as on one node (a join read late, its
                // client gone, never gets here: see `admit`).
                multiple_sessions: room.multiple_sessions,
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
            .map(DirAnswer::Join),
    };
    let input = Input::Admission {
        room: room.id.clone(),
        resume: resume.cloned(),
        answer: answer.ok(),
    };
    let Handled::Admitted(admitted) = state.driver.handle(input) else {
        unreachable!("an admission is answered with Admitted")
    };
    admitted.map_err(|rejected| fail(rejected.code(), rejected.message()))
}

/// The per-connection state of the main loop.
///
/// Part of every connection's task, so kept small (80 bytes): its id is in `shared`, its
/// limiter keeps only its levels, its clock is coarse, what is rare is boxed.
struct Connection {
    state: AppState,
    shared: Arc<crate::driver::ConnShared>,
    limiter: RateLimiter,
    /// The client's recent bad frames, from its first (few connections ever send one).
    bad_frames: Option<Box<BadFrameWindow>>,
    last_heard: Heard,
    /// A frame taken from the queue whose write did not complete (see `write_batch`): boxed,
    /// as a batch is written at once but when a socket is full.
    unsent: Option<Box<Outbound>>,
    /// Whether [`Connection::step`] looks at the socket before the driver's signal this turn.
    socket_first: bool,
}

/// When a connection last heard from its client, in 8 bytes where an `Instant` takes 16:
/// milliseconds since the first reading of this clock in the process.
#[derive(Clone, Copy, Debug)]
struct Heard(u64);

impl Heard {
    fn epoch() -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn at(t: Instant) -> Self {
        let since = t.saturating_duration_since(Self::epoch());
        Self(since.as_secs() * 1000 + u64::from(since.subsec_millis()))
    }

    fn instant(self) -> Instant {
        Self::epoch() + Duration::from_millis(self.0)
    }
}

impl Connection {
    /// Handles what the driver's signal and the socket have ready, until both are pending
    /// (`Pending`, the task registered with both), the connection ends, or something has to
    /// wait. Each is looked at first in turn: a connection whose queue is never empty still
    /// reads its socket and one whose client never stops sending still writes.
    fn step<T: Transport>(
        &mut self,
        socket: &mut T,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Step> {
        use std::task::Poll;
        loop {
            self.socket_first = !self.socket_first;
            let event = if self.socket_first
                && let Poll::Ready(read) = socket.poll_next(cx)
            {
                Event::Socket(read)
            } else if let Poll::Ready(next) = self.shared.poll_next(cx) {
                Event::Driver(next)
            } else if !self.socket_first
                && let Poll::Ready(read) = socket.poll_next(cx)
            {
                Event::Socket(read)
            } else {
                return Poll::Pending;
            };
            let step = match event {
                Event::Driver(Next::Out(first)) => {
                    // Most batches are written at once: tried without waiting, so the
                    // waiting write's state (timers, the transport's write futures) is
                    // allocated only when a socket is full. (Cancellation-safe: what was not
                    // taken stays in `slot`, and is kept in `unsent`.)
                    // (Nothing is left in `unsent` once a batch or a waiting write has ended
                    // without ending the connection.)
                    debug_assert!(self.unsent.is_none());
                    let mut slot = Some(first);
                    let write = write_batch(socket, &mut slot, &self.shared, &self.state);
                    let written = std::pin::pin!(write).poll(cx);
                    self.unsent = slot.map(Box::new);
                    match written {
                        Poll::Ready(Some(code)) => Step::End(code),
                        Poll::Ready(None) => continue,
                        Poll::Pending => Step::Wait(Slow::Write),
                    }
                }
                // Its turn in the driver's ping round (`Driver::ping_round`).
                Event::Driver(Next::Ping) => {
                    // Between pings a connection is often idle: its queue holds no memory
                    // then.
                    self.shared.queue.trim();
                    let limits = &self.state.config.limits;
                    let silent = socket.heard_at(self.last_heard.instant()).elapsed();
                    if silent >= limits.idle_timeout() {
                        Step::End(Some(CloseCode::IdleTimeout))
                    } else if silent < limits.ping_interval() / 2 {
                        // Heard from lately (the SDK pings every 5 s when it has nothing to
                        // say): alive, and its traffic keeps proxies and NATs open; a ping
                        // would only cost both ends a frame.
                        continue;
                    } else {
                        Step::Wait(Slow::Ping)
                    }
                }
                Event::Driver(Next::Killed(code)) => Step::End(Some(code)),
                // (Let go of by the driver: with the code it asked for, if it did.)
                Event::Driver(Next::Closed) => Step::End(self.shared.kill_code()),
                Event::Socket(Incoming::Text(text)) => match self.on_text(&text) {
                    None => continue,
                    // An idle SDK client pings every 5 s: through the driver each `pong` took
                    // the node's lock, the room's rules, the queue and a wake of this task. It
                    // goes the way a batch does (`put`, then the flush tried without waiting),
                    // under the same rules; a flush that has to wait is the waiting write's
                    // (`Slow::Write`, with the kill, shutdown and idle bounds). A socket too
                    // full to take it leaves it out: that client is being sent frames anyway.
                    Some(Slow::Pong) => {
                        let write = answer(socket, &self.state);
                        match std::pin::pin!(write).poll(cx) {
                            Poll::Ready(Some(code)) => Step::End(code),
                            Poll::Ready(None) => continue,
                            Poll::Pending => Step::Wait(Slow::Write),
                        }
                    }
                    Some(slow) => Step::Wait(slow),
                },
                Event::Socket(Incoming::Binary) => {
                    self.state.metrics.frame_in("invalid");
                    Step::Wait(Slow::Reject(FrameError {
                        code: ErrorCode::BadRequest,
                        message: "binary frames are not part of the protocol".into(),
                        reference: None,
                    }))
                }
                Event::Socket(Incoming::Heard) => {
                    self.last_heard = Heard::at(Instant::now());
                    continue;
                }
                Event::Socket(Incoming::Gone) => Step::End(None),
                Event::Socket(Incoming::Broken(code)) => Step::End(code),
            };
            return Poll::Ready(step);
        }
    }

    /// What [`Connection::step`] left to wait for; `Some` when the connection must end (with
    /// that code, or none: it is gone). Run to completion (`run` does): a waiting write holds
    /// the interrupted frame in its own state and puts it back in `unsent` when it ends.
    async fn wait<T: Transport>(
        &mut self,
        socket: &mut T,
        slow: Slow,
    ) -> Option<Option<CloseCode>> {
        let state = &self.state.clone();
        match slow {
            // (Boxed on its own: the timers of a waiting write are not allocated for a ping.)
            Slow::Write => {
                let mut slot = self.unsent.take().map(|out| *out);
                let end = Box::pin(write_waiting(socket, &mut slot, &self.shared, state)).await;
                self.unsent = slot.map(Box::new);
                end
            }
            Slow::Ping => (!socket.ping().await).then_some(None),
            Slow::Touch(vacated) => {
                state.touch_rooms(vacated).await;
                None
            }
            Slow::Reject(e) => self.reject(socket, e).await.map(Some),
            Slow::Error(e) => send_error_frame(state, socket, e).await.err().map(Some),
            // (`step` writes it; as a waiting write, should it ever come here.)
            Slow::Pong => answer(socket, state).await,
        }
    }

    /// One text frame from the client, handled without waiting; what is left to do (rarely
    /// anything) is the answer.
    fn on_text(&mut self, text: &Utf8Bytes) -> Option<Slow> {
        let now = Instant::now();
        self.last_heard = Heard::at(now);
        let state = &self.state;
        let limits = &state.config.limits;
        if text.len() > limits.max_frame_bytes {
            state.metrics.frame_in("invalid");
            return Some(Slow::Reject(FrameError {
                code: ErrorCode::TooLarge,
                message: format!(
                    "frame of {} bytes exceeds the limit of {} bytes",
                    text.len(),
                    limits.max_frame_bytes
                ),
                reference: None,
            }));
        }
        if let Err(wait) = self.limiter.check(&limits.rates(), text.len(), now) {
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
            return Some(Slow::Error(error));
        }
        match ClientMessage::from_json(text) {
            Ok(msg) => {
                state.metrics.frame_in(msg.op());
                if matches!(msg, ClientMessage::Ping) {
                    // A `pong` concerns no one else: written by the connection itself (see
                    // `Connection::step`), not through the node.
                    return Some(Slow::Pong);
                }
                if let ClientMessage::Send { msg: payload, .. } = &msg {
                    state
                        .metrics
                        .relay_bytes
                        .increment(payload.get().len() as u64);
                }
                let vacated = state.driver.message(self.shared.conn, msg, now);
                (!vacated.is_empty()).then_some(Slow::Touch(vacated))
            }
            Err(e) => {
                state.metrics.frame_in("invalid");
                Some(Slow::Reject(e))
            }
        }
    }

    /// Answers a bad frame with an error; too many bad frames end the connection.
    async fn reject<T: Transport>(&mut self, socket: &mut T, e: FrameError) -> Option<CloseCode> {
        self.state.metrics.error(e.code);
        let mut error = ErrorFrame::new(e.code, e.message).with_ref(e.reference);
        let limits = &self.state.config.limits;
        let too_many = self
            .bad_frames
            .get_or_insert_with(|| {
                Box::new(BadFrameWindow::new(
                    limits.max_bad_frames,
                    Duration::from_secs(limits.bad_frame_window_secs),
                ))
            })
            .record(Instant::now());
        if too_many {
            error = error.closing(CloseCode::TooManyErrors);
        }
        if let Err(code) = send_error_frame(&self.state, socket, error).await {
            return Some(code);
        }
        too_many.then_some(CloseCode::TooManyErrors)
    }
}

/// The answer to a client's `ping` (`ServerMessage::Pong`'s text: a test checks it).
const PONG: &str = r#"{"op":"pong"}"#;

fn frame_ref(msg: &ClientMessage<'_>) -> Option<u64> {
    match msg {
        ClientMessage::Signal { reference, .. } | ClientMessage::Send { reference, .. } => {
            *reference
        }
        _ => None,
    }
}

async fn send_error<T: Transport>(state: &AppState, socket: &mut T, error: ErrorFrame) {
    state.metrics.error(error.code);
    let _ = send_error_frame(state, socket, error).await;
}

/// Sends an error frame; `Err(close)` when the socket is gone or takes nothing.
async fn send_error_frame<T: Transport>(
    state: &AppState,
    socket: &mut T,
    error: ErrorFrame,
) -> Result<(), CloseCode> {
    socket
        .send_text(ServerMessage::Error(error).to_json(), state)
        .await
}
/// Ends the connection with `code` (counted), after whatever error frames went before it.
async fn close<T: Transport>(state: &AppState, socket: &mut T, code: CloseCode) {
    state.metrics.closed(code);
    socket.close(code).await;
}

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

#[cfg(test)]
mod tests {
    /// The `pong` a connection writes itself is the protocol's.
    #[test]
    fn the_pong_is_the_protocols() {
        assert_eq!(super::PONG, bluecam_proto::ServerMessage::Pong.to_json());
    }
}
