//! Webhook delivery (docs/webhooks.md), following the Standard Webhooks specification: each
//! event is a POST with `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,` and
//! the base64 HMAC-SHA256 of `id.timestamp.body` under the endpoint's `whsec_` secret), so a
//! backend verifies it with that specification's libraries in any language.
//!
//! Delivery is at least once, from the durable outbox the history writer fills
//! (history.rs), and in order per room and endpoint: only the oldest pending event of a room
//! is attempted, and the next waits until it is delivered or given up. A failed attempt (no
//! 2xx within 5 s) is retried after 1 s, then after a wait that doubles, with jitter, up to 10
//! minutes, until `webhook_retry_secs` (24 h) have passed since the event; then it is marked
//! failed and counted.
//!
//! An endpoint's URL may carry a credential (`user:pass@`, `?token=`): logs, errors and the
//! outbox's `last_error` show it as [`redacted`] only.

use crate::{
    config::{WebhookConfig, redacted},
    metrics::Metrics,
    persist::history::{Attempt, Backend, Outbox, Pending, now_ms},
};
use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// One time limit per attempt.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The first retry's wait, and the longest wait between attempts.
const FIRST_RETRY_MS: u64 = 1000;
const MAX_RETRY_MS: u64 = 10 * 60 * 1000;
/// Attempts in flight at most (each for a different room or endpoint).
const PARALLEL: usize = 64;

/// A client error's text, with its causes, but not the URL it names (which may carry a
/// credential): reqwest's own text ends in `for url (…)` with the whole URL.
fn error_text(e: reqwest::Error, endpoint: &str) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    // Should a cause name the URL after all, it is shown redacted (as given, and as a parsed
    // URL prints itself).
    let shown = redacted(endpoint);
    text = text.replace(endpoint, &shown);
    if let Ok(u) = reqwest::Url::parse(endpoint) {
        text = text.replace(u.as_str(), &shown);
    }
    text
}

/// `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body` under `key`.
pub fn sign(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    use base64::Engine as _;
    use hmac::Mac as _;
    // HMAC takes keys of any length: this cannot fail.
    let mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).map(|mut mac| {
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body.as_bytes());
        mac.finalize().into_bytes()
    });
    match mac {
        Ok(bytes) => format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
        Err(_) => String::new(),
    }
}

/// The wait before attempt `attempts + 1`, after `attempts` failed ones: 1 s, then doubling
/// up to 10 minutes, each within ±20 % (so endpoints that failed together do not retry
/// together).
pub fn retry_wait_ms(attempts: u32) -> u64 {
    use rand::Rng as _;
    let base = FIRST_RETRY_MS
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(20))
        .min(MAX_RETRY_MS);
    let jittered = base as f64 * rand::rng().random_range(0.8..1.2);
    (jittered as u64).clamp(1, MAX_RETRY_MS)
}

/// Delivers the outbox until `stop`.
#[derive(Debug)]
pub struct Deliverer {
    /// Where the outbox is (the node's SQLite, or the cluster's PostgreSQL).
    pub backend: Backend,
    /// This node, as it claims events in a cluster (so each is sent by one node).
    pub node: String,
    pub endpoints: Vec<WebhookConfig>,
    pub outbox: Outbox,
    pub metrics: Metrics,
    /// How long an event is retried before it is given up.
    pub retry_for: Duration,
}

impl Deliverer {
    pub async fn run(self, stop: CancellationToken) {
        let keys: Arc<HashMap<String, Vec<u8>>> = Arc::new(
            self.endpoints
                .iter()
                .filter_map(|e| Some((e.url.clone(), e.key().ok()?)))
                .collect(),
        );
        let client = match reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("bluecam/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the webhook client; no webhooks");
                return;
            }
        };
        // Up to PARALLEL attempts in flight, each room's head at most once; a slot freed by
        // one attempt takes the next due event at once (a slow endpoint holds only its own
        // slots, not a whole round).
        let mut inflight: tokio::task::JoinSet<(Pending, Result<(), Failure>)> =
            tokio::task::JoinSet::new();
        let mut busy: HashSet<i64> = HashSet::new();
        loop {
            while let Some(done) = inflight.try_join_next() {
                if let Ok((p, result)) = done {
                    busy.remove(&p.seq);
                    self.settle(p, result).await;
                }
            }
            self.metrics
                .webhooks_pending
                .set(self.outbox.pending.load(Ordering::Relaxed) as f64);
            let free = PARALLEL.saturating_sub(inflight.len());
            let mut started = 0;
            if free > 0 {
                let now = now_ms();
                let node = self.node.clone();
                // (Heads in flight are due again until settled: ask for more, skip those.)
                let due = self
                    .backend
                    .run(move |db| db.due_events(now, PARALLEL * 2, &node))
                    .await;
                match due {
                    Ok(due) => {
                        let fresh: Vec<Pending> = due
                            .into_iter()
                            .filter(|p| !busy.contains(&p.seq))
                            .take(free)
                            .collect();
                        for p in fresh {
                            busy.insert(p.seq);
                            let client = client.clone();
                            let keys = Arc::clone(&keys);
                            inflight.spawn(async move {
                                let result = attempt(&client, keys.get(&p.endpoint), &p).await;
                                (p, result)
                            });
                            started += 1;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read the webhook outbox"),
                }
            }
            if started > 0 {
                continue;
            }
            if inflight.is_empty() {
                let next = self.backend.run(|db| db.next_due()).await.ok().flatten();
                let wait = next
                    .map_or(60_000, |t| t.saturating_sub(now_ms()))
                    .clamp(10, 60_000);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = self.outbox.added.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(wait)) => {}
                }
            } else {
                // Wait for a slot, new events, or a retry falling due.
                tokio::select! {
                    () = stop.cancelled() => return,
                    done = inflight.join_next() => {
                        if let Some(Ok((p, result))) = done {
                            busy.remove(&p.seq);
                            self.settle(p, result).await;
                        }
                    }
                    () = self.outbox.added.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }

    /// Records one attempt's outcome.
    async fn settle(&self, p: Pending, result: Result<(), Failure>) {
        let now = now_ms();
        let (outcome, error) = match result {
            Ok(()) => {
                self.metrics.webhooks_delivered.increment(1);
                (Attempt::Delivered, None)
            }
            Err(Failure { error: e, hopeless }) => {
                self.metrics.webhook_attempts_failed.increment(1);
                let attempts = p.attempts + 1;
                let expired =
                    now.saturating_sub(p.created_at_ms) >= self.retry_for.as_millis() as u64;
                let endpoint = redacted(&p.endpoint);
                if hopeless || expired {
                    self.metrics.webhooks_failed.increment(1);
                    tracing::warn!(id = %p.id, %endpoint, attempts, error = %e,
                        "webhook event given up");
                    (Attempt::Failed, Some(e))
                } else {
                    tracing::debug!(id = %p.id, %endpoint, attempts, error = %e,
                        "webhook attempt failed; will retry");
                    let at_ms = now + retry_wait_ms(attempts);
                    (Attempt::Retry { at_ms }, Some(e))
                }
            }
        };
        if !matches!(outcome, Attempt::Retry { .. }) {
            let _ = self
                .outbox
                .pending
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        let seq = p.seq;
        let written = self
            .backend
            .run(move |db| db.attempted(seq, outcome, error.as_deref()))
            .await;
        if written.is_err() {
            // Not recorded: it is attempted again (at least once).
            tracing::warn!(id = %p.id, "cannot record a webhook attempt");
        }
    }
}

/// Why an attempt failed, and whether trying again could help.
#[derive(Debug)]
struct Failure {
    /// Shown in logs and kept in `last_error`: never the endpoint's URL unredacted.
    error: String,
    /// No retry can succeed (the endpoint is no longer configured): give up now.
    hopeless: bool,
}

impl From<String> for Failure {
    fn from(error: String) -> Self {
        Self {
            error,
            hopeless: false,
        }
    }
}

/// One POST of one event.
async fn attempt(
    client: &reqwest::Client,
    key: Option<&Vec<u8>>,
    p: &Pending,
) -> Result<(), Failure> {
    let key = key.ok_or_else(|| Failure {
        error: "this endpoint is no longer configured".into(),
        hopeless: true,
    })?;
    let timestamp = now_ms() / 1000;
    let signature = sign(key, &p.id, timestamp, &p.body);
    let res = client
        .post(&p.endpoint)
        .header("content-type", "application/json")
        .header("webhook-id", &p.id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(p.body.clone())
        .send()
        .await
        .map_err(|e| Failure::from(error_text(e, &p.endpoint)))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", res.status()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_specifications_example() {
        // The example of the Standard Webhooks specification (and of its libraries' tests).
        let config = WebhookConfig {
            url: "https://example.com/hook".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            events: vec![],
        };
        let key = config.key().unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn waits_double_from_one_second_up_to_ten_minutes() {
        for _ in 0..100 {
            let first = retry_wait_ms(1);
            assert!((800..1200).contains(&first), "{first}");
            let third = retry_wait_ms(3);
            assert!((3200..4800).contains(&third), "{third}");
            assert!(retry_wait_ms(40) <= MAX_RETRY_MS);
            assert!(retry_wait_ms(40) >= MAX_RETRY_MS * 8 / 10);
        }
    }

    #[test]
    fn webhook_endpoints_are_shown_without_credentials_query_fragment_or_path() {
        for (url, shown) in [
            (
                "https://user:pa55@hooks.example.com/in/x?token=s3cret#frag",
                "https://hooks.example.com #",
            ),
            (
                "http://user@127.0.0.1:8080/hook?token=s3cret",
                "http://127.0.0.1:8080 #",
            ),
            ("https://[::1]:8443/?a=s3cret", "https://[::1]:8443 #"),
            ("https://example.com", "https://example.com #"),
            // A default port is not shown; one that is not the default is.
            ("https://example.com:443/h", "https://example.com #"),
            // A credential in the path (Slack's, Discord's webhooks).
            (
                "https://hooks.slack.com/services/T000/B000/s3cret",
                "https://hooks.slack.com #",
            ),
            // Unparsable: the hash alone.
            (
                "http://us:pa55@exa mple.com:99999/p?token=s3cret",
                "(an endpoint) #",
            ),
            ("not a url?token=s3cret", "(an endpoint) #"),
        ] {
            let got = redacted(url);
            assert!(got.starts_with(shown), "{url}: {got}");
            assert_eq!(got.len(), shown.len() + 8, "{url}: {got}");
            assert!(!got.contains("s3cret") && !got.contains("pa55"), "{got}");
        }
        // The hash tells two endpoints of one host apart.
        assert_ne!(
            redacted("https://hooks.example.com/a"),
            redacted("https://hooks.example.com/b")
        );
    }

    #[tokio::test]
    async fn webhook_client_errors_do_not_name_the_url() {
        // Nobody listens there: the client fails, and its error would name the whole URL.
        let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://user:pa55word@{}/hook?token=s3cret#frag",
            gone.local_addr().unwrap()
        );
        drop(gone);
        let e = reqwest::Client::new()
            .post(&url)
            .send()
            .await
            .expect_err("nobody listens");
        assert!(e.to_string().contains("s3cret"), "the hazard: {e}");
        let text = error_text(e, &url);
        for secret in ["s3cret", "pa55word", "user", "frag"] {
            assert!(!text.contains(secret), "{secret} in {text:?}");
        }
        assert!(text.starts_with("error sending request"), "{text}");
    }

    #[test]
    fn config_errors_show_the_endpoint_redacted() {
        let bad = WebhookConfig {
            url: "http://127.0.0.1:9/h?token=s3cret".into(),
            secret: "not-whsec".into(),
            events: vec![],
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(
            e.contains("http://127.0.0.1:9 #") && !e.contains("s3cret") && !e.contains("/h"),
            "{e}"
        );
        let bad = WebhookConfig {
            url: "ftp://u:s3cret@x/".into(),
            ..bad
        };
        let e = bad.validate().unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn bad_endpoints_are_refused_with_a_reason() {
        let ok = WebhookConfig {
            url: "http://127.0.0.1:9/h".into(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            events: vec!["call.ended".into()],
        };
        ok.validate().unwrap();
        let mut bad = ok.clone();
        bad.secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into();
        assert!(bad.validate().unwrap_err().to_string().contains("whsec_"));
        let mut bad = ok.clone();
        bad.url = "ftp://x/".into();
        assert!(bad.validate().is_err());
        let mut bad = ok;
        bad.events = vec!["call.over".into()];
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("call.over")
        );
    }
}
