//! Answers a file operation: runs it on a file worker as the request's account, audits what it changed, and replies with its result.

use std::sync::Arc;

use execmesh_proto::pb;
use tracing::{debug, info, warn};

use super::{exec_error, within_payload};
use crate::audit::{FileChange, Origin};
use crate::files::{Budget, FileError};
use crate::node::Node;
use crate::refusal::Refusal;
use crate::request::FileSpec;
use crate::runas::{Account, FsCredentials};

/// Runs one file operation; the reply carries its result or a refusal naming the host, and
/// always fits the server's max payload.
pub async fn handle(node: &Arc<Node>, spec: FileSpec) -> pb::ExecReply {
    let host = node.host();
    let max_payload = node.client.server_info().max_payload;
    let budget = Budget::until_expiry(max_payload, spec.expires_at_ms);
    let change = FileChange::of(&spec.request);
    match serve(node, spec.request, budget, spec.account).await {
        Ok(result) => {
            if let Some(change) = change {
                let origin = Origin {
                    job: spec.job.as_str(),
                    user: spec.user.as_str(),
                    trace_id: &spec.trace_id,
                };
                node.audit.file_changed(origin, change, &result);
            }
            let reply = pb::ExecReply {
                body: Some(pb::exec_reply::Body::File(result)),
            };
            match within_payload(host, reply, max_payload, "ask for less") {
                Ok(reply) => {
                    debug!("file request answered");
                    reply
                }
                Err(refusal) => {
                    warn!(reason = %refusal.message, "file reply over the max payload");
                    exec_error(&refusal)
                }
            }
        }
        Err(e) => {
            info!(code = e.code().as_str_name(), reason = %e, "file request refused");
            exec_error(&Refusal::new(e.code(), format!("host {host}: {e}")))
        }
    }
}

/// Runs a file operation on a file worker, acting as `account` when it is not the agent's own:
/// the kernel checks access as the account and new files belong to it.
async fn serve(
    node: &Arc<Node>,
    request: pb::FileRequest,
    budget: Budget,
    account: Option<Account>,
) -> Result<pb::FileReply, FileError> {
    let Some(account) = account.filter(Account::switches) else {
        return node.files.serve(request, budget).await;
    };
    node.files
        .run_blocking(move |files| {
            let _as = FsCredentials::assume(&account).map_err(|source| FileError::Io {
                path: String::new(),
                op: "taking on the run-as account",
                source,
            })?;
            files.handle(request, &budget)
        })
        .await
        .unwrap_or_else(|source| {
            Err(FileError::Io {
                path: String::new(),
                op: "the file task",
                source,
            })
        })
}
