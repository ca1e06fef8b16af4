//! The connection's side of an HTTP transport session ([`HttpLink`], its `Transport`): frames
//! the client's `send`s hand over (`Up`, bounded by a byte budget), and frames for the
//! client, numbered and kept until a poll acknowledges them ([`Down`]).

use crate::{
    AppState,
    driver::Outbound,
    transport::conn::{Incoming, Put, Transport},
};
use bluecam_proto::CloseCode;
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::sync::{Notify, mpsc};
use tungstenite::Utf8Bytes;

/// Frame bytes in one poll's answer at most (at least one frame, whatever its size).
pub(super) const POLL_BATCH_BYTES: usize = 1 << 20;
/// Frames waiting for a poll's acknowledgement are not a stall before this long: a client
/// acknowledges with its next poll, one round trip after the answer arrived (however large).
const HTTP_STALL_MIN: Duration = Duration::from_secs(10);

/// What the session's requests hand to its connection (with its place in the queue's byte
/// budget, given back when the connection takes it).
pub(crate) enum Up {
    Text(Utf8Bytes, tokio::sync::OwnedSemaphorePermit),
    /// A frame over the hard cap (the WebSocket's 1009).
    TooLarge,
    /// The client closed the session.
    Closed,
}

/// Frames for the client, numbered from 1, kept until a poll acknowledges them.
#[derive(Debug)]
pub(crate) struct Down {
    state: Mutex<DownState>,
    /// Frames, a close or a newer poll: wakes the waiting poll.
    ready: Notify,
    /// An acknowledgement: wakes a writer waiting for room.
    room: Notify,
    /// A poll's answer carried the close.
    done: Notify,
}

#[derive(Debug)]
struct DownState {
    /// Number, text, and whether the frame is kept for a resume if never polled.
    frames: VecDeque<(u64, Utf8Bytes, bool)>,
    /// The last frame number a poll's answer carried.
    carried: u64,
    /// A poll's answer carried the close: the client knows, the session can go.
    close_carried: bool,
    /// The number of the next frame.
    next: u64,
    bytes: usize,
    /// The connection ended with this code (the last thing a poll gets).
    close: Option<CloseCode>,
    /// Frames acknowledged so far (progress, for the stall rule).
    acked: u64,
    /// The session ended by the client's own close.
    by_client: bool,
    last_request: Instant,
    /// The newest poll: an older one still waiting answers at once (empty).
    poll: u64,
}

/// One poll's answer.
pub(super) struct Batch {
    pub(super) first: u64,
    pub(super) frames: Vec<Utf8Bytes>,
    pub(super) close: Option<CloseCode>,
}

impl Down {
    pub(super) fn new() -> Self {
        Self {
            state: Mutex::new(DownState {
                frames: VecDeque::new(),
                carried: 0,
                close_carried: false,
                next: 1,
                bytes: 0,
                close: None,
                acked: 0,
                by_client: false,
                last_request: Instant::now(),
                poll: 0,
            }),
            ready: Notify::new(),
            room: Notify::new(),
            done: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DownState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a frame for the client (the bound is the caller's: `HttpLink::write_batch`,
    /// `Transport::send_text`).
    pub(crate) fn push(&self, text: Utf8Bytes, resumable: bool) {
        let mut st = self.lock();
        st.bytes += text.len();
        let n = st.next;
        st.frames.push_back((n, text, resumable));
        st.next += 1;
        drop(st);
        self.ready.notify_waiters();
    }

    /// Bytes waiting for the client.
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Takes out the frames no poll has carried yet (kept for a resume, like the frames still
    /// queued towards a WebSocket).
    pub(crate) fn take_unsent(&self) -> Vec<Outbound> {
        let mut st = self.lock();
        let carried = st.carried;
        let keep = st
            .frames
            .iter()
            .take_while(|(n, _, _)| *n <= carried)
            .count();
        let unsent: Vec<_> = st.frames.drain(keep..).collect();
        st.bytes -= unsent.iter().map(|(_, t, _)| t.len()).sum::<usize>();
        unsent
            .into_iter()
            .map(|(_, text, resumable)| Outbound::Frame { text, resumable })
            .collect()
    }

    /// The connection ended with `code`: the client gets it after the frames before it.
    pub(crate) fn close(&self, code: CloseCode) {
        self.lock().close = Some(code);
        self.ready.notify_waiters();
    }

    /// The client closed the session: nothing more to tell it.
    pub(crate) fn gone(&self) {
        self.close(CloseCode::Normal);
    }

    /// The client is closing the session itself: whatever ends the connection now (its close,
    /// or the leave before it), its client is not polling any more.
    pub(super) fn closing_by_client(&self) {
        self.lock().by_client = true;
    }

    /// Whether the client closed the session itself.
    pub(super) fn closed_by_client(&self) -> bool {
        self.lock().by_client
    }

    /// Resolves once a poll's answer has carried the close.
    pub(super) async fn close_carried(&self) {
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().close_carried {
                return;
            }
            notified.await;
        }
    }

    /// Resolves once the connection has ended (its close is set), or after `within`.
    pub(super) async fn closed_within(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().close.is_some() {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }

    /// When a request of the client last came (or ended: a poll waits a while).
    pub(crate) fn last_request(&self) -> Instant {
        self.lock().last_request
    }

    /// Drops the frames numbered up to `ack`.
    fn ack(&self, st: &mut DownState, ack: u64) {
        let mut dropped = 0;
        while st.frames.front().is_some_and(|(n, _, _)| *n <= ack) {
            if let Some((_, text, _)) = st.frames.pop_front() {
                st.bytes -= text.len();
                dropped += 1;
            }
        }
        if dropped > 0 {
            st.acked += dropped;
            self.room.notify_waiters();
        }
    }

    /// Waits until `len` more bytes fit under `cap` (or nothing is waiting). False when no
    /// frame was acknowledged for a whole `stall`: the client stopped polling.
    async fn wait_room(&self, len: usize, cap: usize, stall: Duration) -> bool {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let seen = {
                let st = self.lock();
                if st.frames.is_empty() || st.bytes + len <= cap {
                    return true;
                }
                st.acked
            };
            if tokio::time::timeout(stall, notified).await.is_err() && self.lock().acked == seen {
                return false;
            }
        }
    }

    /// Acknowledges up to `ack`, then answers with the frames after it as soon as there is
    /// one (or the close), or with none after `wait` or when a newer poll came.
    pub(super) async fn poll(&self, ack: u64, wait: Duration, batch_bytes: usize) -> Batch {
        let batch = self.poll_inner(ack, wait, batch_bytes).await;
        if batch.close.is_some() {
            self.done.notify_waiters();
        }
        batch
    }

    async fn poll_inner(&self, ack: u64, wait: Duration, batch_bytes: usize) -> Batch {
        let me = {
            let mut st = self.lock();
            st.last_request = Instant::now();
            self.ack(&mut st, ack);
            st.poll += 1;
            st.poll
        };
        // An older poll still waiting (its client gave up on it) answers now.
        self.ready.notify_waiters();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                let newer = st.poll != me;
                if st.close_carried && !newer {
                    return st.batch(batch_bytes);
                }
                if newer || !st.frames.is_empty() || st.close.is_some() {
                    st.last_request = Instant::now();
                    return if newer {
                        st.empty()
                    } else {
                        st.batch(batch_bytes)
                    };
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let mut st = self.lock();
                st.last_request = Instant::now();
                return if st.poll == me {
                    st.batch(batch_bytes)
                } else {
                    st.empty()
                };
            }
        }
    }
}

impl DownState {
    /// Frames from the oldest kept, up to the batch size; the close once all are in.
    fn batch(&mut self, batch_bytes: usize) -> Batch {
        let first = self.frames.front().map_or(self.next, |(n, _, _)| *n);
        let mut frames = Vec::new();
        let mut bytes = 0;
        for (_, text, _) in &self.frames {
            if !frames.is_empty() && bytes + text.len() > batch_bytes {
                break;
            }
            bytes += text.len();
            frames.push(text.clone());
        }
        let close = (frames.len() == self.frames.len())
            .then_some(self.close)
            .flatten();
        self.carried = self.carried.max(first + frames.len() as u64 - 1);
        self.close_carried |= close.is_some();
        Batch {
            first,
            frames,
            close,
        }
    }

    fn empty(&self) -> Batch {
        Batch {
            first: self.next,
            frames: Vec::new(),
            close: None,
        }
    }
}

impl Batch {
    /// `{"first":N,"frames":[…],"close":{"code","reason"}}`, the frames' JSON as it is.
    pub(super) fn to_json(&self, sid: Option<&str>) -> String {
        let size: usize = self.frames.iter().map(|f| f.len() + 1).sum();
        let mut out = String::with_capacity(size + 96);
        out.push('{');
        if let Some(sid) = sid {
            out.push_str("\"sid\":");
            out.push_str(&serde_json::Value::from(sid).to_string());
            out.push(',');
        }
        out.push_str(&format!("\"first\":{},\"frames\":[", self.first));
        for (i, f) in self.frames.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(f.as_str());
        }
        out.push(']');
        if let Some(code) = self.close {
            out.push_str(&format!(
                ",\"close\":{{\"code\":{},\"reason\":{}}}",
                code.code(),
                serde_json::Value::from(code.reason())
            ));
        }
        out.push('}');
        out
    }
}

/// The connection's side of an HTTP transport session: its [`Transport`].
pub(crate) struct HttpLink {
    pub(super) up: mpsc::Receiver<Up>,
    pub(crate) down: Arc<Down>,
    /// Bytes that may wait for the client: half the outbound queue, at least one largest
    /// frame.
    pub(crate) cap: usize,
    /// The client closed the session (rather than the server or silence ending it).
    pub(crate) client_closed: bool,
}

impl Transport for HttpLink {
    fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Incoming> {
        std::task::Poll::Ready(match std::task::ready!(self.up.poll_recv(cx)) {
            // (The permit goes here: the frame has left the queue.)
            Some(Up::Text(text, _permit)) => Incoming::Text(text),
            Some(Up::TooLarge) => Incoming::Broken(Some(CloseCode::MessageTooBig)),
            Some(Up::Closed) => {
                self.client_closed = true;
                Incoming::Gone
            }
            None => Incoming::Gone,
        })
    }

    /// The frame in `slot` and whatever else is queued (up to a batch) go to the poll buffer,
    /// which holds up to half the outbound queue (at least one largest frame). A client that
    /// acknowledges nothing for a while with the buffer full is a slow consumer (4030), as a
    /// WebSocket that takes no bytes is. Cancellation-safe like `ws::write_batch`.
    /// Buffers the frame for the next poll, waiting while the buffer is full (a client that
    /// polls too slowly is a slow consumer).
    async fn put(&mut self, text: &Utf8Bytes, resumable: bool, state: &AppState) -> Put {
        let stall = state.config.limits.write_stall().max(HTTP_STALL_MIN);
        if !self.down.wait_room(text.len(), self.cap, stall).await {
            return Put::Stalled;
        }
        self.down.push(text.clone(), resumable);
        Put::Taken
    }

    /// Polls carry what was buffered: nothing to flush.
    async fn flush_batch(&mut self, _state: &AppState) -> Option<Option<CloseCode>> {
        None
    }

    async fn send_text(&mut self, text: String, _state: &AppState) -> Result<(), CloseCode> {
        // Errors are bounded like every other frame: a client that makes them faster than it
        // polls is a slow consumer.
        if self.down.bytes() > self.cap {
            return Err(CloseCode::SlowConsumer);
        }
        self.down.push(text.into(), false);
        Ok(())
    }

    /// A poll is a request: the client was heard of then too.
    fn heard_at(&self, last_frame: Instant) -> Instant {
        self.down.last_request().max(last_frame)
    }

    /// An HTTP client polls: no ping of the server's.
    async fn ping(&mut self) -> bool {
        true
    }

    /// The frames no poll has carried yet (like a WebSocket's queue; those carried and not
    /// acknowledged are like bytes handed to a socket).
    fn take_unsent(&mut self) -> Vec<Outbound> {
        self.down.take_unsent()
    }

    /// The client gets the close with its next poll.
    async fn close(&mut self, code: CloseCode) {
        self.down.close(code);
    }

    /// The client's own close ends the session quietly; anything else (the driver let go of the
    /// connection) is a slow consumer's end, resumable.
    async fn finish(&mut self, state: &AppState, shared: &crate::driver::ConnShared) {
        if self.client_closed {
            self.down.gone();
        } else {
            let code = shared.kill_code().unwrap_or(CloseCode::SlowConsumer);
            state.metrics.closed(code);
            self.down.close(code);
        }
    }
}
