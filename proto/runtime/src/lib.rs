//! The plumbing the gateway, the node-agents and the audit-sink share, written once: the checks
//! of a NATS connection's TLS files and the reading of its permission errors
//! (`nats_connection`), capped exponential backoff (`backoff`), the background audit publisher
//! (`audit_publisher`) and KV writes that carry headers (`kv_write`).
//!
//! The contract these speak (subjects, streams, headers, signing) is `execmesh-proto`; this
//! package holds what runs.

pub mod audit_publisher;
pub mod backoff;
pub mod kv_write;
pub mod nats_connection;
