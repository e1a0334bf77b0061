//! The agent's NATS connection: its name, its own inbox and its log label, over the one connect of `execmesh-runtime`.

use async_nats::Client;

use execmesh_proto::{Token, subject};
use execmesh_runtime::nats_connection::{self, ConnectAs, ConnectError};

use crate::config::Config;
use crate::error::AgentError;

/// Connects once, failing fast with the URL or file in the error; after that first connection
/// the client reconnects forever.
pub async fn connect(config: &Config) -> Result<Client, AgentError> {
    let host = &config.host_id;
    let who = ConnectAs {
        name: format!("execmesh-node-agent {host}"),
        // Replies to this agent's requests (JetStream acks, direct gets) arrive under a prefix
        // of its own, which its NATS permissions allow it to read, and no other agent's.
        inbox_prefix: subject::agent_inbox(&config.tenant, host),
        host: Some(host.to_string()),
        user: "this agent's NATS user",
    };
    connect_as(config, who).await
}

/// Connects as the SSH relay of `user` (its own inbox, `relay-<user>`'s NATS identity).
pub async fn connect_relay(config: &Config, user: &Token) -> Result<Client, AgentError> {
    let who = ConnectAs {
        name: format!("execmesh-node-agent relay {user}"),
        inbox_prefix: subject::relay_inbox(&config.tenant, user),
        host: None,
        user: "this relay's NATS user",
    };
    connect_as(config, who).await
}

async fn connect_as(config: &Config, who: ConnectAs) -> Result<Client, AgentError> {
    nats_connection::connect(&config.nats, who)
        .await
        .map_err(|e| match e {
            ConnectError::Connect { url, source } => AgentError::Connect { url, source },
            ConnectError::Credentials { path, source } => AgentError::Credentials { path, source },
            ConnectError::Tls(e) => AgentError::NatsTls(e),
        })
}
