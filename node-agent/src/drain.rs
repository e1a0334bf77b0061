//! Drains the jobs at shutdown: running jobs get the shutdown grace, then are killed and given time to store their end.

use std::time::Duration;

use tokio::time::timeout;
use tracing::{info, warn};

use crate::node::Node;

/// How long killed jobs may take to store their end before publishing is abandoned.
const KILLED_STORE_LIMIT: Duration = Duration::from_secs(10);

/// Waits for running jobs up to the shutdown grace, then kills the rest and waits for them to
/// store their end; abandons NATS writes only when even that does not finish.
pub async fn drain_jobs(node: &Node) {
    node.jobs.close();
    if !node.jobs.is_empty() {
        info!(
            running = node.registry.len(),
            grace_ms = node.config.shutdown_grace_ms,
            "waiting for running jobs"
        );
    }
    if timeout(node.config.shutdown_grace(), node.jobs.wait())
        .await
        .is_err()
    {
        warn!(
            running = node.registry.len(),
            "shutdown grace over; killing running jobs"
        );
        node.kill_all.cancel();
        let limit = node.config.kill_grace() + KILLED_STORE_LIMIT;
        if timeout(limit, node.jobs.wait()).await.is_err() {
            warn!("killed jobs could not store their end; abandoning their output");
            node.hard_stop.cancel();
            let _ = timeout(Duration::from_secs(2), node.jobs.wait()).await;
        }
    }
    node.handlers.close();
    let _ = timeout(Duration::from_secs(2), node.handlers.wait()).await;
}
