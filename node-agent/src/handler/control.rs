//! Answers a kill request: stops the job if it runs here and replies with how it ended, or with its stored end.

use std::time::Duration;

use execmesh_proto::pb::{self, ErrorCode};
use prost::Message as _;
use tokio::time::timeout;
use tracing::info;

use super::control_error;
use crate::node::Node;
use crate::refusal::Refusal;
use crate::registry::{self, KillOrder};
use crate::request::KillSpec;

/// Extra time a kill request waits for the job's end, beyond its grace period.
const KILL_REPLY_SLACK: Duration = Duration::from_secs(5);

fn control_status(status: pb::JobStatus) -> pb::ControlReply {
    pb::ControlReply {
        body: Some(pb::control_reply::Body::Status(status)),
    }
}

/// Kills the job of `spec` if it runs here and answers with its final status once it ended;
/// a job that does not run here is answered with its stored status.
pub async fn handle(node: &Node, spec: KillSpec) -> pb::ControlReply {
    let host = node.host();
    let job = &spec.job;
    if let Some(handle) = node.registry.get(job) {
        let reason = if spec.user.is_empty() {
            "killed on request".to_string()
        } else {
            format!("killed on request of {}", spec.user)
        };
        info!(grace_ms = spec.grace.as_millis() as u64, "kill requested");
        // A full channel means a kill is already under way; this request waits for it too.
        let _ = handle.kill.try_send(KillOrder {
            grace: spec.grace,
            reason,
        });
        let mut done = handle.done;
        return match timeout(
            spec.grace + KILL_REPLY_SLACK,
            registry::wait_finished(&mut done),
        )
        .await
        {
            Ok(Some(finished)) => control_status(finished.status.clone()),
            _ => control_error(&Refusal::new(
                ErrorCode::Internal,
                format!(
                    "host {host}: job {job} did not end within {} ms of the kill request; it is still being stopped",
                    (spec.grace + KILL_REPLY_SLACK).as_millis()
                ),
            )),
        };
    }
    // Not running here: report how it ended, if it is known at all.
    match node.jobs_kv.get(node.job_key(job)).await {
        Ok(Some(bytes)) => match pb::JobStatus::decode(bytes.as_ref()) {
            Ok(status) => control_status(status),
            Err(e) => control_error(&Refusal::new(
                ErrorCode::Internal,
                format!("host {host}: the stored status of job {job} is unreadable: {e}"),
            )),
        },
        Ok(None) => control_error(&Refusal::new(
            ErrorCode::UnknownJob,
            format!("job {job} is not known on host {host}"),
        )),
        Err(e) => control_error(&Refusal::new(
            ErrorCode::Internal,
            format!("host {host}: cannot read the status of job {job}: {e}"),
        )),
    }
}
