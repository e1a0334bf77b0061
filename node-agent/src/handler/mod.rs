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
use execmesh_proto::pb;
use prost::Message as _;

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
