//! Answers a request for the host's fact pack: the cached one, or a fresh one collected and stored first.

use std::sync::Arc;

use execmesh_proto::pb::{self, ErrorCode};
use tracing::warn;

use super::exec_error;
use crate::node::Node;
use crate::refusal::Refusal;
use crate::request::FactsSpec;

/// Answers with the cached fact pack, or collects, stores and answers with a fresh one.
pub async fn handle(node: &Arc<Node>, spec: FactsSpec) -> pb::ExecReply {
    let facts = if spec.refresh {
        match node.facts.refresh().await {
            Ok(facts) => facts,
            Err(e) => {
                warn!(error = %e, "refreshing the facts failed");
                return exec_error(&Refusal::new(
                    ErrorCode::Internal,
                    format!("host {}: {e}", node.host()),
                ));
            }
        }
    } else {
        node.facts.cached()
    };
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Facts(pb::FactsReply {
            facts: Some(facts),
        })),
    }
}
