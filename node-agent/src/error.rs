//! Why the node-agent could not start or keep running, as variants a caller can match.

use std::path::PathBuf;

use crate::config::ConfigError;

/// A boxed error from async-nats, whose operations each have their own error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of [`run`](crate::run). Each names what it was doing and with what.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// [`Config::validate`](crate::Config::validate) refused the configuration.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),

    /// The creds or nkey seed file cannot be read.
    #[error("cannot read NATS credentials from {}: {source}", path.display())]
    Credentials {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The NATS seed cannot sign records (not an nkey user seed).
    #[error("cannot sign records with the NATS seed: {0}")]
    RecordKey(#[from] execmesh_proto::signing::RecordKeyError),

    /// A TLS file for NATS cannot be used.
    #[error(transparent)]
    NatsTls(#[from] execmesh_runtime::nats_connection::NatsTlsError),

    /// `/metrics` cannot be served where configured.
    #[error(transparent)]
    Metrics(#[from] execmesh_runtime::metrics::MetricsError),

    /// The first connection failed (the agent does not retry at start).
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },

    /// A stream or bucket could neither be created nor opened.
    #[error("cannot provision {what}: {source}")]
    Provision { what: String, source: BoxError },

    /// The jobs an earlier run left RUNNING could not be listed.
    #[error("cannot recover the jobs of an earlier agent run: {source}")]
    Recovery { source: BoxError },

    /// The host's facts or first heartbeat were not acknowledged.
    #[error("cannot register the host ({what}): {source}")]
    Register {
        what: &'static str,
        source: BoxError,
    },

    /// The relay's directory of ssh control sockets cannot be made.
    #[error("cannot create the relay's control directory {}: {source}", path.display())]
    ControlDir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Subscribing to the host's request subjects failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        source: async_nats::SubscribeError,
    },
}
