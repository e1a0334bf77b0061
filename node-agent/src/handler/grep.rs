//! Answers a host's share of a fan-out grep: the search runs on a file worker, bounded by the request's expiry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, ErrorCode};
use tracing::{debug, info, warn};

use super::{exec_error, within_payload};
use crate::files::Budget;
use crate::node::Node;
use crate::refusal::Refusal;
use crate::request::GrepSpec;

/// Time kept between a search's deadline and the request's expiry, for the reply to travel.
const GREP_REPLY_MARGIN: Duration = Duration::from_millis(500);

/// Runs one host's share of a fan-out grep on the blocking pool (with a file-worker permit, so
/// searches never take every blocking thread), bounded by the request's expiry and the grep
/// timeout; the reply always fits the server's max payload.
pub async fn handle(node: &Arc<Node>, spec: GrepSpec) -> pb::ExecReply {
    let host = node.host();
    let max_payload = node.client.server_info().max_payload;
    let limits = node.config.grep_limits();
    // Stop searching a little before the request expires, so the partial answer still arrives
    // while the caller waits.
    let left = Duration::from_millis(spec.expires_at_ms.saturating_sub(execmesh_proto::now_ms()));
    let left = left.saturating_sub((left / 10).min(GREP_REPLY_MARGIN));
    let deadline = Instant::now() + left.min(limits.timeout);
    let reply_bytes = Budget::new(max_payload, deadline).reply_bytes;
    let work = node.files.run_blocking(move |files| {
        crate::grep::grep(files, &limits, spec.request, reply_bytes, deadline)
    });
    // Waiting for a worker counts against the request's time too; a search that started
    // returns by itself at the deadline.
    let result = match tokio::time::timeout_at((deadline + GREP_REPLY_MARGIN).into(), work).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => {
            return exec_error(&Refusal::new(
                ErrorCode::Internal,
                format!("host {host}: the search task failed: {e}"),
            ));
        }
        Err(_) => {
            return exec_error(&Refusal::new(
                ErrorCode::Busy,
                format!("host {host}: no search worker became free before the request expired"),
            ));
        }
    };
    match result {
        Ok(result) => {
            let reply = pb::ExecReply {
                body: Some(pb::exec_reply::Body::Grep(result)),
            };
            match within_payload(host, reply, max_payload, "ask for fewer matches") {
                Ok(reply) => {
                    debug!("grep answered");
                    reply
                }
                Err(refusal) => {
                    warn!(reason = %refusal.message, "grep reply over the max payload");
                    exec_error(&refusal)
                }
            }
        }
        Err(e) => {
            info!(code = e.code().as_str_name(), reason = %e, "grep refused");
            exec_error(&Refusal::new(e.code(), format!("host {host}: {e}")))
        }
    }
}
