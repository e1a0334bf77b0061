//! Answers control requests: a kill stops the job if it runs here and replies with how it ended (a job that does not run here, with its stored status); a query says from this agent's own table whether the job is one of its own.

use std::time::Duration;

use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode};
use prost::Message as _;
use tokio::time::timeout;
use tracing::info;

use super::control_error;
use crate::node::Node;
use crate::refusal::Refusal;
use crate::registry::{self, JobHandle, KillOrder};
use crate::request::{ControlOrder, ControlSpec};

/// Extra time a kill request waits for the job's end, beyond its grace period.
const KILL_REPLY_SLACK: Duration = Duration::from_secs(5);

fn control_status(status: pb::JobStatus) -> pb::ControlReply {
    pb::ControlReply {
        body: Some(pb::control_reply::Body::Status(status)),
    }
}

/// Does what `spec` orders with its job: a kill of a job that does not run here is answered
/// with its stored status, a query of one with a refusal.
pub async fn handle(node: &Node, spec: ControlSpec) -> pb::ControlReply {
    let job = &spec.job;
    match (node.registry.get(job), spec.order) {
        (Some(handle), ControlOrder::Kill { grace }) => {
            kill(node, &spec.user, job, handle, grace).await
        }
        (Some(handle), ControlOrder::Query) => control_status(match &*handle.done.borrow() {
            Some(finished) => finished.status.clone(),
            // Said from this agent's own table: the store may be electing a leader.
            None => pb::JobStatus {
                job_id: job.to_string(),
                tenant: node.tenant().to_string(),
                host: node.host().to_string(),
                state: pb::JobState::Running as i32,
                agent_instance: node.instance.clone(),
                ..Default::default()
            },
        }),
        // Only this instance's table answers a query: a stored RUNNING may be a status whose
        // end was never stored, and would vouch for a job nothing runs.
        (None, ControlOrder::Query) => control_error(&Refusal::new(
            ErrorCode::UnknownJob,
            format!(
                "job {job} does not run in this agent instance on host {}",
                node.host()
            ),
        )),
        (None, ControlOrder::Kill { .. }) => stored(node, job).await,
    }
}

/// Orders the running `job` killed and answers with its final status once it ended.
async fn kill(
    node: &Node,
    user: &str,
    job: &Token,
    handle: JobHandle,
    grace: Duration,
) -> pb::ControlReply {
    let reason = if user.is_empty() {
        "killed on request".to_string()
    } else {
        format!("killed on request of {user}")
    };
    info!(grace_ms = grace.as_millis() as u64, "kill requested");
    // A full channel means a kill is already under way; this request waits for it too.
    let _ = handle.kill.try_send(KillOrder { grace, reason });
    let mut done = handle.done;
    match timeout(grace + KILL_REPLY_SLACK, registry::wait_finished(&mut done)).await {
        Ok(Some(finished)) => control_status(finished.status.clone()),
        _ => control_error(&Refusal::new(
            ErrorCode::Internal,
            format!(
                "host {}: job {job} did not end within {} ms of the kill request; it is still being stopped",
                node.host(),
                (grace + KILL_REPLY_SLACK).as_millis()
            ),
        )),
    }
}

/// A job that does not run here, as it is stored, if it is known at all.
async fn stored(node: &Node, job: &Token) -> pb::ControlReply {
    let host = node.host();
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
