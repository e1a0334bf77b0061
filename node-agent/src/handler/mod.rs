//! The handlers of the request kinds, one module each, and the replies they share.
//!
//! A handler takes a request that admission let through (and that arrived while the agent
//! still takes work) and answers it. The dispatcher decides which handler runs; the handlers
//! never call each other.

pub mod control;
pub mod facts;
pub mod file;
pub mod grep;
pub mod run;

use execmesh_proto::Token;
use execmesh_proto::pb::{self, ErrorCode};
use prost::Message as _;
use tracing::{debug, info, warn};

use crate::refusal::Refusal;

/// The ExecReply that carries `refusal`.
pub fn exec_error(refusal: &Refusal) -> pb::ExecReply {
    pb::ExecReply {
        body: Some(pb::exec_reply::Body::Error(refusal.to_pb())),
    }
}

/// The ControlReply that carries `refusal`.
pub fn control_error(refusal: &Refusal) -> pb::ControlReply {
    pb::ControlReply {
        body: Some(pb::control_reply::Body::Error(refusal.to_pb())),
    }
}

/// `reply` if it fits the server's `max_payload`; a reply over it could not be sent at all,
/// so the caller is told instead (`ask` says what to ask for).
pub fn within_payload(
    host: &Token,
    reply: pb::ExecReply,
    max_payload: usize,
    ask: &str,
) -> Result<pb::ExecReply, Refusal> {
    let len = reply.encoded_len();
    if len > max_payload {
        return Err(Refusal::too_large(host, len, max_payload, ask));
    }
    Ok(reply)
}

/// The reply carrying `body` when it fits the server's `max_payload`; otherwise the refusal
/// saying so (`ask` says what to ask for instead). `what` names the request kind in the log.
pub fn answer(
    host: &Token,
    body: pb::exec_reply::Body,
    max_payload: usize,
    what: &str,
    ask: &str,
) -> pb::ExecReply {
    let reply = pb::ExecReply { body: Some(body) };
    match within_payload(host, reply, max_payload, ask) {
        Ok(reply) => {
            debug!("{what} answered");
            reply
        }
        Err(refusal) => {
            warn!(reason = %refusal.message, "{what} reply over the max payload");
            exec_error(&refusal)
        }
    }
}

/// The reply refusing a request of kind `what` on `host` with `code`, for the reason `why`.
pub fn refuse(
    host: &Token,
    code: ErrorCode,
    why: &dyn std::fmt::Display,
    what: &str,
) -> pb::ExecReply {
    info!(code = code.as_str_name(), reason = %why, "{what} refused");
    exec_error(&Refusal::new(code, format!("host {host}: {why}")))
}
