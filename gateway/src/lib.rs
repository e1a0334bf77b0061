//! execmesh gateway: the stateless MCP endpoint in front of the mesh.
//!
//! `run` serves `/mcp` on an already bound listener until the shutdown token is cancelled. Every
//! replica is interchangeable: job state and output live in JetStream, tokens verify with the
//! shared key file.

pub mod admin;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod auth_failures;
pub mod commands;
pub mod config;
pub mod error;
pub mod fanout;
pub mod job_access;
pub mod listener;
pub mod mesh;
pub mod oauth;
pub mod paging;
pub mod policy;
pub mod records;
pub mod selector;
pub mod server;
pub mod signer;
pub mod tier;
pub mod tls;
pub mod tools;
pub mod trace;

pub use config::Config;
pub use server::{run, run_with_admin};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Audit(#[from] audit::PatternError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    OAuth(#[from] oauth::StoreError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Approvals(#[from] approvals::ApprovalError),
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}
