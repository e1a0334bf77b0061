//! Answers a file operation: runs it on a file worker as the request's account (or on the relay's SSH target over SFTP), audits what it changed, and replies with its result.

use std::sync::Arc;

use execmesh_proto::pb;

use super::{answer, refuse};
use crate::audit::{FileChange, Origin};
use crate::files::Budget;
use crate::node::Node;
use crate::request::FileSpec;

/// Runs one file operation; the reply carries its result or a refusal naming the host, and
/// always fits the server's max payload.
pub async fn handle(node: &Arc<Node>, spec: FileSpec) -> pb::ExecReply {
    let host = node.host();
    let max_payload = node.client.server_info().max_payload;
    let budget = Budget::until_expiry(max_payload, spec.expires_at_ms);
    let change = FileChange::of(&spec.request);
    let request = spec.request;
    let result = match node.executor.remote_files() {
        // A relay target's files, over SFTP (the relay's own disk is never served for it).
        Some(remote) => remote.handle(&node.files, request, budget).await,
        None => {
            node.files
                .run_as(spec.account, move |files| files.handle(request, &budget))
                .await
        }
    };
    match result {
        Ok(result) => {
            if let Some(change) = change {
                let origin = Origin {
                    job: spec.job.as_str(),
                    user: spec.user.as_str(),
                    trace_id: &spec.trace_id,
                };
                node.audit.file_changed(origin, change, &result);
            }
            let body = pb::exec_reply::Body::File(result);
            answer(host, body, max_payload, "file request", "ask for less")
        }
        Err(e) => refuse(host, e.code(), &e, "file request"),
    }
}
