//! execmesh gateway: the stateless MCP endpoint in front of the mesh.
//!
//! `run` serves `/mcp` on an already bound listener until the shutdown token is cancelled. Every
//! replica is interchangeable: job state and output live in JetStream, tokens verify with the
//! shared key file.

pub mod admin;
pub mod commands;
pub mod config;
pub mod core;
pub mod listener;
pub mod mcp;
pub mod oauth;
pub mod origin;
pub mod server;
pub mod state;
pub mod tls;

pub use config::Config;
pub use server::{run, run_with_admin};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Audit(#[from] crate::core::audit::PatternError),
    #[error(transparent)]
    Auth(#[from] crate::core::auth::AuthError),
    #[error(transparent)]
    Mesh(#[from] crate::core::mesh::MeshError),
    #[error(transparent)]
    Policy(#[from] crate::core::policy::PolicyError),
    #[error(transparent)]
    OAuth(#[from] oauth::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Approvals(#[from] crate::core::approvals::ApprovalError),
    #[error(transparent)]
    Tasks(#[from] crate::core::tasks::TaskError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    Metrics(#[from] execmesh_runtime::metrics::MetricsError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}
