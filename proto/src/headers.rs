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
/// When a message returned by a direct get was stored (RFC 3339, UTC).
pub const NATS_TIME_STAMP: &str = "Nats-Time-Stamp";
/// Set by the server on direct-get replies: the stream the message was read from. A stored
/// record that already carries one was itself the answer to a JetStream request (a record
/// planted through a reply subject): the answer to its direct get then carries two.
pub const NATS_STREAM: &str = "Nats-Stream";

/// KV delete and purge markers (`DEL`, `PURGE`).
pub const KV_OPERATION: &str = "KV-Operation";

/// Signed records (`signing::record`): the public nkey (`U…`) of the identity that signed the
/// record.
pub const SIGNER: &str = "Execmesh-Signer";
/// Signed records: the Ed25519 signature, standard base64, over the bytes
/// `signing::record_message` defines.
pub const SIGNATURE: &str = "Execmesh-Signature";
