//! Prometheus metrics. Handles of the hot-path counters are registered once and kept in
//! [`Metrics`], so counting a frame is an atomic add, not a registry lookup.

use bluecam_proto::ErrorCode;
use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

/// Client ops counted in `bluecam_frames_in_total{op}`; "invalid" for frames that did not parse.
const OPS: [&str; 7] = ["join", "signal", "send", "leave", "ping", "pong", "invalid"];

/// Why something this node was handed did not reach where it was going: every drop has one,
/// is counted in `bluecam_dropped_total{reason}` and is logged (at most every
/// [`DROP_LOG_EVERY`] per reason, with how many since the last line). A drop whose sender is
/// told (an `error` frame, a rejected send) is still a drop here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A history event, at a full recorder queue (the database away or slow).
    HistoryQueueFull,
    /// A history event, the recorder's writer gone (it panicked, or the node is stopping).
    HistoryWriterGone,
    /// A webhook event, at a full outbox (`webhook_outbox_max`).
    WebhookOutboxFull,
    /// A frame for a peer on another node, at a full or closed cluster outbox (the sender
    /// gets `unsent`).
    ClusterFrameUnsent,
    /// A moved peer's buffered frames handed to its new node, at a full or closed outbox (the
    /// frames are lost to that peer; its senders see a gap).
    ClusterHandOverUnsent,
    /// A peer's removal for the other nodes, at a full or closed outbox (repaired when the
    /// node next re-registers its peers).
    ClusterRemovalUnsent,
    /// Events from other nodes this node was too slow to read (repaired by a resync).
    ClusterEventsLagged,
    /// Log lines, at a full log buffer (the log's reader slow) or a closed log output: the
    /// server never waits for its log. Counted by the binary's log writer ([`count_log_drops`]),
    /// never logged (that would be one more line to drop).
    LogLines,
}

impl DropReason {
    const ALL: [Self; 8] = [
        Self::HistoryQueueFull,
        Self::HistoryWriterGone,
        Self::WebhookOutboxFull,
        Self::ClusterFrameUnsent,
        Self::ClusterHandOverUnsent,
        Self::ClusterRemovalUnsent,
        Self::ClusterEventsLagged,
        Self::LogLines,
    ];

    /// Its `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HistoryQueueFull => "history_queue_full",
            Self::HistoryWriterGone => "history_writer_gone",
            Self::WebhookOutboxFull => "webhook_outbox_full",
            Self::ClusterFrameUnsent => "cluster_frame_unsent",
            Self::ClusterHandOverUnsent => "cluster_hand_over_unsent",
            Self::ClusterRemovalUnsent => "cluster_removal_unsent",
            Self::ClusterEventsLagged => "cluster_events_lagged",
            Self::LogLines => "log_lines",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// How many log lines the process dropped so far (set once, by whoever writes the log).
static LOG_DROPS: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>> = OnceLock::new();

/// Tells the metrics how to count the log lines dropped (`bluecam_dropped_total{reason="log_lines"}`).
pub fn count_log_drops(count: impl Fn() -> u64 + Send + Sync + 'static) {
    let _ = LOG_DROPS.set(Box::new(count));
}

/// Drops of one reason are logged at most this often.
pub const DROP_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The drop counters and their rate-limited log lines.
#[derive(Debug)]
struct Drops {
    counters: [Counter; DropReason::ALL.len()],
    /// Dropped since the last log line, per reason.
    unlogged: [AtomicU64; DropReason::ALL.len()],
    /// When the last line was logged, in milliseconds after `epoch` plus one (0: never).
    logged_at: [AtomicU64; DropReason::ALL.len()],
    epoch: Instant,
}

impl Drops {
    fn new() -> Self {
        Self {
            counters: DropReason::ALL
                .map(|r| counter!("bluecam_dropped_total", "reason" => r.as_str())),
            unlogged: std::array::from_fn(|_| AtomicU64::new(0)),
            logged_at: std::array::from_fn(|_| AtomicU64::new(0)),
            epoch: Instant::now(),
        }
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        let i = reason.index();
        self.counters[i].increment(n);
        self.unlogged[i].fetch_add(n, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.logged_at[i].load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= DROP_LOG_EVERY.as_millis() as u64;
        // (Of several threads dropping at once, one logs.)
        if due
            && self.logged_at[i]
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let dropped = self.unlogged[i].swap(0, Ordering::Relaxed);
            tracing::warn!(
                dropped,
                reason = reason.as_str(),
                "dropped (see DropReason)"
            );
        }
    }
}

/// The metric handles of one server.
#[derive(Clone, Debug)]
pub struct Metrics {
    drops: Arc<Drops>,
    frames_in: [Counter; OPS.len()],
    pub frames_out: Counter,
    pub relay_bytes: Counter,
    pub connections: Gauge,
    pub rooms: Gauge,
    pub peers: Gauge,
    pub detached_peers: Gauge,
    pub joins: Counter,
    pub resumes: Counter,
    pub outbound_overflows: Counter,
    pub resume_buffer_overflows: Counter,
    pub connections_refused: Counter,
    /// Open TCP connections (HTTP and WebSocket).
    pub http_connections: Gauge,
    /// TCP connections refused at the total cap and at the per-source cap.
    pub http_refused_total: Counter,
    pub http_refused_source: Counter,
    /// Cluster: frames and events published to other nodes, and received from them.
    pub cluster_out: Counter,
    pub cluster_in: Counter,
    /// Cluster: frames from another node whose recipients were not here.
    pub cluster_undeliverable: Counter,
    /// STUN Binding requests answered.
    pub stun_answers: Counter,
    /// STUN datagrams dropped: not a Binding request, or over a rate limit.
    pub stun_refused: Counter,
    /// STUN Binding requests refused by a rate limit, by limit (`stun::Refusal`).
    pub stun_limited_source: Counter,
    pub stun_limited_total: Counter,
    pub stun_limited_table_full: Counter,
    /// Cluster: failed Redis operations.
    pub redis_errors: Counter,
    /// HTTP transport requests, and those passed to the node holding their session.
    pub http_transport_requests: Counter,
    pub http_forwarded: Counter,
    /// HTTP transport requests naming a session id this cluster did not make (answered 404
    /// where they arrived), and requests to pass on refused by the per-source rate.
    pub http_forged_sids: Counter,
    pub http_forward_limited: Counter,
    /// Webhook events delivered (a 2xx answer), attempts that failed (to be retried), events
    /// given up after the retry period, events dropped because the outbox was full, and the
    /// events waiting.
    pub webhooks_delivered: Counter,
    pub webhook_attempts_failed: Counter,
    pub webhooks_failed: Counter,
    pub webhooks_dropped: Counter,
    pub webhooks_pending: Gauge,
}

/// The process-wide Prometheus recorder. The `metrics` facade has one global recorder, so
/// several servers in one process (tests) share it.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; we then render an empty page
        // rather than refuse to start.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was installed already; /metrics will be empty");
        }
        handle
    })
}

impl Metrics {
    /// Registers every metric (so they all appear, at zero, from the start).
    pub fn new() -> Self {
        prometheus();
        Self {
            drops: Arc::new(Drops::new()),
            frames_in: OPS.map(|op| counter!("bluecam_frames_in_total", "op" => op)),
            frames_out: counter!("bluecam_frames_out_total"),
            relay_bytes: counter!("bluecam_relay_bytes_total"),
            connections: gauge!("bluecam_connections"),
            rooms: gauge!("bluecam_rooms_active"),
            peers: gauge!("bluecam_peers"),
            detached_peers: gauge!("bluecam_peers_resuming"),
            joins: counter!("bluecam_joins_total"),
            resumes: counter!("bluecam_resumes_total"),
            outbound_overflows: counter!("bluecam_queue_overflows_total", "queue" => "outbound"),
            resume_buffer_overflows: counter!("bluecam_queue_overflows_total", "queue" => "resume"),
            connections_refused: counter!("bluecam_connections_refused_total"),
            http_connections: gauge!("bluecam_http_connections"),
            http_refused_total: counter!("bluecam_http_refused_total", "cap" => "total"),
            http_refused_source: counter!("bluecam_http_refused_total", "cap" => "source"),
            cluster_out: counter!("bluecam_cluster_messages_total", "dir" => "out"),
            cluster_in: counter!("bluecam_cluster_messages_total", "dir" => "in"),
            cluster_undeliverable: counter!("bluecam_cluster_undeliverable_total"),
            stun_answers: counter!("bluecam_stun_answers_total"),
            stun_refused: counter!("bluecam_stun_refused_total"),
            stun_limited_source: counter!("bluecam_stun_limited_total", "limit" => "source"),
            stun_limited_total: counter!("bluecam_stun_limited_total", "limit" => "total"),
            stun_limited_table_full: counter!("bluecam_stun_limited_total", "limit" => "table_full"),
            redis_errors: counter!("bluecam_redis_errors_total"),
            http_transport_requests: counter!("bluecam_http_transport_requests_total"),
            http_forwarded: counter!("bluecam_http_transport_forwarded_total"),
            http_forged_sids: counter!("bluecam_http_transport_forged_sids_total"),
            http_forward_limited: counter!("bluecam_http_transport_forward_limited_total"),
            webhooks_delivered: counter!("bluecam_webhooks_total", "outcome" => "delivered"),
            webhook_attempts_failed: counter!("bluecam_webhook_attempts_failed_total"),
            webhooks_failed: counter!("bluecam_webhooks_total", "outcome" => "failed"),
            webhooks_dropped: counter!("bluecam_webhooks_total", "outcome" => "dropped"),
            webhooks_pending: gauge!("bluecam_webhooks_pending"),
        }
    }

    /// Counts (and logs, now and then) `n` things dropped for `reason`.
    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.drops.dropped(reason, n);
    }

    /// Counts one inbound frame of `op` (a name from the protocol, or "invalid").
    pub fn frame_in(&self, op: &str) {
        let i = OPS.iter().position(|o| *o == op).unwrap_or(OPS.len() - 1);
        self.frames_in[i].increment(1);
    }

    /// Counts one error sent to a client.
    pub fn error(&self, code: ErrorCode) {
        counter!("bluecam_errors_total", "code" => code.as_str()).increment(1);
    }

    /// Counts one closed connection by reason.
    pub fn closed(&self, code: bluecam_proto::CloseCode) {
        counter!("bluecam_connections_closed_total", "code" => code.code().to_string())
            .increment(1);
    }

    /// The Prometheus text page.
    pub fn render(&self) -> String {
        if let Some(count) = LOG_DROPS.get() {
            self.drops.counters[DropReason::LogLines.index()].absolute(count());
        }
        prometheus().render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
