//! Answers a grep (one host's share of a fan-out, or the file tool's grep of one path): the search runs on a file worker as the request's account, bounded by the request's expiry and the host's grep limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, ErrorCode};

use super::{answer, refuse};
use crate::files::Budget;
use crate::node::Node;
use crate::request::GrepSpec;

/// Time kept between a search's deadline and the request's expiry, for the reply to travel.
const GREP_REPLY_MARGIN: Duration = Duration::from_millis(500);

/// Runs one grep on the blocking pool (with a file-worker permit, so searches never take every
/// blocking thread) acting as the request's account like any file operation, bounded by the
/// request's expiry and the grep timeout; the reply always fits the server's max payload.
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
    let request = spec.request;
    let work = async {
        match node.executor.remote_files() {
            // A relay target's files, streamed over SFTP into the same search.
            Some(remote) => {
                remote
                    .grep(&node.files, limits, request, reply_bytes, deadline)
                    .await
            }
            None => {
                node.files
                    .run_as(spec.account, move |files| {
                        crate::grep::grep(files, &limits, request, reply_bytes, deadline)
                    })
                    .await
            }
        }
    };
    // Waiting for a worker counts against the request's time too; a search that started
    // returns by itself at the deadline.
    match tokio::time::timeout_at((deadline + GREP_REPLY_MARGIN).into(), work).await {
        Ok(Ok(reply)) => answer(
            host,
            pb::exec_reply::Body::Grep(reply),
            max_payload,
            "grep",
            "ask for fewer matches",
        ),
        Ok(Err(e)) => refuse(host, e.code(), &e, "grep"),
        Err(_) => refuse(
            host,
            ErrorCode::Busy,
            &"no search worker became free before the request expired",
            "grep",
        ),
    }
}
