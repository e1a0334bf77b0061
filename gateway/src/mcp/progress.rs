//! MCP progress notifications for fan-outs ("17/40 hosts answered"), sent in order and at a
//! bounded rate when the client asked for progress (a `progressToken` in the request's `_meta`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rmcp::RoleServer;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::{Peer, RequestContext};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use execmesh_proto::Token;

use crate::core::fanout::{HostStatus, Progress};

/// Least time between two notifications; the last one (everything answered) always goes out.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Forwards progress to the client through one task, so notifications keep their order.
pub struct McpProgress {
    /// `None` once finished.
    tx: Option<mpsc::UnboundedSender<ProgressNotificationParam>>,
    token: ProgressToken,
    /// What `settled` last sent and when, to rate-limit.
    last: Mutex<Option<Instant>>,
    /// What the fan-out is doing, for the message ("hosts answered", "hosts searched").
    verb: &'static str,
    forwarder: Option<JoinHandle<()>>,
}

impl McpProgress {
    /// A reporter for this request, or `None` when the client did not ask for progress.
    pub fn for_request(context: &RequestContext<RoleServer>, verb: &'static str) -> Option<Self> {
        let token = context.meta.get_progress_token()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward(context.peer.clone(), rx));
        Some(Self {
            tx: Some(tx),
            token,
            last: Mutex::new(None),
            verb,
            forwarder: Some(forwarder),
        })
    }

    /// Sends what is queued before the result goes out.
    pub async fn finish(mut self) {
        self.tx.take();
        if let Some(task) = self.forwarder.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
        }
    }
}

impl Progress for McpProgress {
    fn settled(&self, answered: usize, total: usize, host: &Token, status: HostStatus) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last.lock() else {
                return;
            };
            let due = last.is_none_or(|t| now.duration_since(t) >= MIN_INTERVAL);
            if answered < total && !due {
                return;
            }
            *last = Some(now);
        }
        let message = format!(
            "{answered}/{total} {} (latest: {host} {})",
            self.verb,
            status.as_str()
        );
        if let Some(tx) = &self.tx {
            let _ = tx.send(
                ProgressNotificationParam::new(self.token.clone(), answered as f64)
                    .with_total(total as f64)
                    .with_message(message),
            );
        }
    }
}

async fn forward(
    peer: Peer<RoleServer>,
    mut rx: mpsc::UnboundedReceiver<ProgressNotificationParam>,
) {
    while let Some(param) = rx.recv().await {
        if let Err(e) = peer.notify_progress(param).await {
            tracing::debug!(error = %e, "progress notification not delivered");
            return;
        }
    }
}

/// A reporter that does nothing, when the client asked for no progress.
pub fn reporter(progress: &Option<McpProgress>) -> &dyn Progress {
    match progress {
        Some(p) => p,
        None => &crate::core::fanout::NoProgress,
    }
}
