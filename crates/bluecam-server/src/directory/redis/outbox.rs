//! The node's outbox: frames and removals for other nodes, published in order, pipelined
//! (one task per node).

use super::*;

impl RedisBroker {
    pub(super) async fn run_outbox(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Outgoing>,
        stop: CancellationToken,
        host: &dyn Host,
    ) {
        let mut batch = Vec::with_capacity(OUTBOX_BATCH);
        loop {
            batch.clear();
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, OUTBOX_BATCH) => n,
                () = stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            let mut frames = Vec::new();
            for item in batch.drain(..) {
                match item {
                    Outgoing::Frame { .. } => frames.push(item),
                    Outgoing::Removed {
                        room, peer, reason, ..
                    } => {
                        // Frames sent before the leave go first.
                        self.publish_frames(std::mem::take(&mut frames), host).await;
                        let r = self.dir.leave(&room, &peer, &self.node, reason).await;
                        match r {
                            Ok(_) => self.metrics.cluster_out.increment(1),
                            // The resync removes it (the node does not hold it any more).
                            Err(e) => self.step_error(host, "leave", &e),
                        }
                    }
                }
            }
            self.publish_frames(frames, host).await;
        }
    }

    /// Publishes frames in one pipeline. A frame that failed, or that no node received (its
    /// node is dead, draining, or not subscribed yet after Redis came back), is reported to
    /// its sender.
    async fn publish_frames(&self, items: Vec<Outgoing>, host: &dyn Host) {
        if items.is_empty() {
            return;
        }
        let mut received: Vec<bool> = vec![false; items.len()];
        if self.client.is_connected() {
            let sharded = self.client.is_clustered();
            let pipe = self.client.pipeline();
            let mut queued = true;
            for item in &items {
                if let Outgoing::Frame {
                    node,
                    room,
                    to,
                    frame,
                    ..
                } = item
                {
                    let text = NodeMessage::frame_text(room, to, frame.as_str());
                    // (`SPUBLISH` on a Redis Cluster: see `publish_to`.)
                    let r: Result<(), _> = if sharded {
                        pipe.spublish(channel(node), text).await
                    } else {
                        pipe.publish(channel(node), text).await
                    };
                    queued &= r.is_ok();
                }
            }
            if queued {
                match tokio::time::timeout(COMMAND_TIMEOUT, pipe.try_all::<i64>()).await {
                    Ok(answers) => {
                        for (slot, answer) in received.iter_mut().zip(answers) {
                            match answer {
                                Ok(n) => *slot = n > 0,
                                Err(e) => self.step_error(host, "publish", &e),
                            }
                        }
                        for (item, ok) in items.iter().zip(&received) {
                            if let (false, Outgoing::Frame { node, room, to, .. }) = (ok, item) {
                                tracing::debug!(%node, %room, ?to, "frame for a node nobody listens for");
                            }
                        }
                        if received.iter().any(|r| !r) {
                            // A node nobody listens for: dead, restarted under a new id, or
                            // this node's replica is stale. The next resync repoints replicas.
                            host.handle(Input::Signal(Signal::Unheard));
                        }
                    }
                    Err(_) => self.step_error(host, "publish", &"timed out"),
                }
            }
        }
        let delivered = received.iter().filter(|r| **r).count();
        self.metrics.cluster_out.increment(delivered as u64);
        if delivered == items.len() {
            return;
        }
        for (item, ok) in items.into_iter().zip(received) {
            if !ok {
                host.undelivered(item);
            }
        }
    }
}
