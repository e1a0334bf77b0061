//! Answers a request to run a command: takes a job slot, starts the job, and replies with its status — and its output when it ends within the inline window.

use std::sync::Arc;

use execmesh_proto::pb::{self, ErrorCode};
use tokio::time::timeout;
use tracing::warn;

use super::{exec_error, within_payload};
use crate::job;
use crate::node::Node;
use crate::refusal::Refusal;
use crate::registry;
use crate::request::RunSpec;

fn run_reply(status: pb::JobStatus, inline_output: Option<Vec<u8>>) -> pb::ExecReply {
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Run(pb::RunReply {
            status: Some(status),
            inline_output,
        })),
    }
}

/// Starts the job of `spec` (when a job slot is free) and answers with its RUNNING status, or
/// with its end when it finishes within the request's inline window.
pub async fn handle(node: &Arc<Node>, spec: RunSpec) -> pb::ExecReply {
    let host = node.host();
    let refused = |refusal: Refusal| {
        warn!(code = refusal.code.as_str_name(), reason = %node.redactor.text(&refusal.message),
              "request refused");
        exec_error(&refusal)
    };
    let Ok(permit) = Arc::clone(&node.permits).try_acquire_owned() else {
        return refused(Refusal::new(
            ErrorCode::Busy,
            format!(
                "host {host} runs its maximum of {} jobs",
                node.config.max_jobs
            ),
        ));
    };
    let (bg, window) = (spec.bg, spec.inline_window);
    let mut started = match job::start(node, spec, permit).await {
        Ok(started) => started,
        Err(refusal) => return refused(refusal),
    };
    if !bg
        && !window.is_zero()
        && let Ok(Some(finished)) =
            timeout(window, registry::wait_finished(&mut started.done)).await
    {
        let max_payload = node.client.server_info().max_payload;
        let reply = run_reply(finished.status.clone(), finished.inline.clone());
        // Output over the max payload is left out: the caller pages it instead.
        return within_payload(host, reply, max_payload, "page the output")
            .unwrap_or_else(|_| run_reply(finished.status.clone(), None));
    }
    // Still running: the reply waits until the RUNNING status is stored, so the job can be
    // followed (and is settled lost if this agent dies) from the moment the caller hears of it.
    match (&mut started.running).await {
        Ok(running) => run_reply(running, None),
        Err(_) => exec_error(&Refusal::new(
            ErrorCode::Internal,
            format!("host {host}: the job task ended before the job was recorded"),
        )),
    }
}
