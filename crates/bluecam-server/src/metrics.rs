//! Prometheus metrics. Handles of the hot-path counters are registered once and kept in
//! [`Metrics`], so counting a frame is an atomic add, not a registry lookup.

use bluecam_proto::ErrorCode;
use metrics::{Counter, Gauge, counter, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Client ops counted in `bluecam_frames_in_total{op}`; "invalid" for frames that did not parse.
const OPS: [&str; 7] = ["join", "signal", "send", "leave", "ping", "pong", "invalid"];

/// History events dropped at a full queue (the history recorder takes its handle by this
/// name).
pub const HISTORY_EVENTS_DROPPED: &str = "bluecam_history_events_dropped_total";

/// The metric handles of one server.
#[derive(Clone, Debug)]
pub struct Metrics {
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
    http_refused_total: Counter,
    http_refused_source: Counter,
    /// Cluster: frames and events published to other nodes, and received from them.
    pub cluster_out: Counter,
    pub cluster_in: Counter,
    /// Cluster: frames that could not be published (the sender got an error).
    pub cluster_unsent: Counter,
    /// Cluster: frames from another node whose recipients were not here.
    pub cluster_undeliverable: Counter,
    /// STUN Binding requests answered.
    pub stun_answers: Counter,
    /// STUN datagrams dropped: not a Binding request, or over a rate limit.
    pub stun_refused: Counter,
    /// STUN Binding requests refused by a rate limit, by limit (`stun::Refusal`).
    stun_limited_source: Counter,
    stun_limited_total: Counter,
    stun_limited_table_full: Counter,
    /// History events dropped because the history writer's queue was full (the database was
    /// away or slower than the events came).
    pub history_events_dropped: Counter,
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
            cluster_unsent: counter!("bluecam_cluster_unsent_total"),
            cluster_undeliverable: counter!("bluecam_cluster_undeliverable_total"),
            stun_answers: counter!("bluecam_stun_answers_total"),
            stun_refused: counter!("bluecam_stun_refused_total"),
            stun_limited_source: counter!("bluecam_stun_limited_total", "limit" => "source"),
            stun_limited_total: counter!("bluecam_stun_limited_total", "limit" => "total"),
            stun_limited_table_full: counter!("bluecam_stun_limited_total", "limit" => "table_full"),
            history_events_dropped: counter!(HISTORY_EVENTS_DROPPED),
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

    /// Counts a TCP connection refused at a cap.
    pub fn http_refused(&self, why: crate::serve::Refusal) {
        match why {
            crate::serve::Refusal::Total => self.http_refused_total.increment(1),
            crate::serve::Refusal::PerSource => self.http_refused_source.increment(1),
        }
    }

    /// Counts one STUN Binding request refused by a rate limit.
    pub fn stun_limited(&self, why: crate::stun::Refusal) {
        match why {
            crate::stun::Refusal::SourceRate => self.stun_limited_source.increment(1),
            crate::stun::Refusal::TotalRate => self.stun_limited_total.increment(1),
            crate::stun::Refusal::TableFull => self.stun_limited_table_full.increment(1),
        }
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
        prometheus().render()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
