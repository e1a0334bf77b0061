//! Names of the NATS headers execmesh sets or reads.

/// W3C trace context, carried from the gateway to the agent (and on to audit events).
pub const TRACEPARENT: &str = "traceparent";

/// JetStream's de-duplication id: a retried publish with the same id is stored once.
pub const MSG_ID: &str = "Nats-Msg-Id";

/// Per-message TTL (nats-server ≥ 2.11), used for KV keys that expire such as presence.
pub const TTL: &str = "Nats-TTL";

/// Set by the server on direct-get replies.
pub const NATS_SEQUENCE: &str = "Nats-Sequence";
/// Set by the server on direct-get replies: messages left after this one for the request.
pub const NATS_NUM_PENDING: &str = "Nats-Num-Pending";
/// Set by the server on direct-get replies: the subject the message was stored on.
pub const NATS_SUBJECT: &str = "Nats-Subject";
