//! HTTP transport requests passed between nodes: each node's channel for them, the
//! messages' head and body, and the answering of requests other nodes pass to this one.

use super::*;

/// The channel of HTTP transport requests passed to a node, and of their answers.
pub(super) fn http_channel(node: &NodeId) -> String {
    format!("bc:h:{node}")
}

/// The head of a message on a node's HTTP channel: a request passed on (`q`, from `from`) or
/// an answer (`r`, to the request of that number). The body follows the head's line as the
/// bytes it is (never escaped into a JSON string, which could make it six times larger).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayHead {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) q: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) from: Option<NodeId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) op: Option<HttpOp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) r: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<u16>,
}

impl RelayHead {
    /// The head's JSON line, then the body.
    pub(crate) fn encode(&self, body: &[u8]) -> Vec<u8> {
        let head = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(head.len() + 1 + body.len());
        out.extend_from_slice(&head);
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// Splits a message into its head and body.
    pub(crate) fn decode(message: &[u8]) -> Option<(Self, &[u8])> {
        let end = message.iter().position(|b| *b == b'\n')?;
        let head = serde_json::from_slice(&message[..end]).ok()?;
        Some((head, &message[end + 1..]))
    }
}

/// Requests passed on by other nodes that this node answers at once at most (each waits up to
/// a poll's wait); beyond, the request is answered 503 at once (the client retries). The
/// requesting nodes' own budgets (`transport::http`) bound what arrives in the first place.
const ANSWERING_AT_ONCE: usize = 4096;

impl RedisBroker {
    /// A message on this node's HTTP channel: a request to answer (in a task of its own,
    /// tracked for shutdown: a poll may wait), or the answer to one of ours.
    pub(super) fn on_http(
        self: &Arc<Self>,
        message: &[u8],
        tasks: &TaskTracker,
        handler: &HttpHandler,
    ) {
        let Some((head, body)) = RelayHead::decode(message) else {
            tracing::error!("undecodable HTTP transport relay message");
            self.metrics.redis_errors.increment(1);
            return;
        };
        match head {
            RelayHead {
                q: Some(id),
                from: Some(from),
                op: Some(op),
                ..
            } => {
                let handler = handler.clone();
                let me = Arc::clone(self);
                let body = bytes::Bytes::copy_from_slice(body);
                let busy = self
                    .http_answering
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                    >= ANSWERING_AT_ONCE;
                tasks.spawn(async move {
                    let reply = if busy {
                        HttpReply {
                            status: 503,
                            body: r#"{"error":{"code":"unavailable","message":"the node holding this session is busy; retry"}}"#.into(),
                        }
                    } else {
                        (handler.0)(op, body).await
                    };
                    me.http_answering
                        .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                    let answer = RelayHead {
                        q: None,
                        from: None,
                        op: None,
                        r: Some(id),
                        status: Some(reply.status),
                    };
                    let message = answer.encode(reply.body.as_bytes());
                    let sent = me.publish_to(http_channel(&from), message).await;
                    if let Err(e) = sent {
                        me.redis_error("HTTP transport answer", &e);
                    }
                });
            }
            RelayHead {
                r: Some(id),
                status: Some(status),
                ..
            } => {
                let waiting = self
                    .http_waiting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = waiting {
                    let body = String::from_utf8_lossy(body).into_owned();
                    let _ = tx.send(HttpReply { status, body });
                }
            }
            _ => {
                tracing::error!("HTTP transport relay message of no known shape");
                self.metrics.redis_errors.increment(1);
            }
        }
    }
}
