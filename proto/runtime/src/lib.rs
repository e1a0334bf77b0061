//! The plumbing the gateway, the node-agents and the audit-sink share, written once: the NATS
//! connection with its TLS file checks and connection-event logging (`nats_connection`), capped
//! exponential backoff (`backoff`), the background audit publisher (`audit_publisher`), KV
//! writes that carry headers (`kv_write`), the logging setup (`logging`), Prometheus metrics (`metrics`), the NATS settings
//! every service flattens into its own (`nats_settings`), traces out and W3C context in and out
//! (`telemetry`), the configuration seam that names every
//! bad value (`config`) and shutdown on signals (`signals`).
//!
//! The contract these speak (subjects, streams, headers, signing) is `execmesh-proto`; this
//! package holds what runs.

pub mod audit_publisher;
pub mod backoff;
pub mod config;
pub mod kv_write;
pub mod logging;
pub mod metrics;
pub mod nats_connection;
pub mod nats_settings;
pub mod signals;
pub mod telemetry;
