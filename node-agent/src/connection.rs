//! The agent's NATS connection: authentication, TLS, reconnects, and logging of connection events.

use async_nats::{Client, ConnectOptions, Event, ServerAddr, ServerError};
use tracing::{debug, info, warn};

use execmesh_proto::subject;

use crate::config::Config;
use crate::error::AgentError;

/// Connects once, failing fast with the URL in the error: a wrong address or credential should
/// stop the agent at start, not leave it retrying quietly. After that first connection the client
/// reconnects forever.
pub async fn connect(config: &Config) -> Result<Client, AgentError> {
    let url = config.nats_url.clone();
    let addrs = config
        .nats_urls()
        .map(|u| u.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Connect {
            url: url.clone(),
            source: async_nats::ConnectError::with_source(
                async_nats::ConnectErrorKind::ServerParse,
                e,
            ),
        })?;

    let mut options = match &config.nats_creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| AgentError::Credentials {
                path: path.clone(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = &config.nats_nkey_seed {
        let seed = std::fs::read_to_string(path).map_err(|source| AgentError::Credentials {
            path: path.clone(),
            source,
        })?;
        options = options.nkey(seed.trim().to_string());
    }
    let client_cert = config
        .nats_tls_cert
        .as_deref()
        .zip(config.nats_tls_key.as_deref());
    options = execmesh_runtime::nats_connection::apply_tls(
        options,
        config.nats_tls_ca.as_deref(),
        client_cert,
    )?;
    if config.nats_tls_required {
        options = options.require_tls(true);
    }

    let host = config.host_id.clone();
    options
        .name(format!("execmesh-node-agent {host}"))
        // Replies to this agent's requests (JetStream acks, direct gets) arrive under a prefix
        // of its own, which its NATS permissions allow it to read, and no other agent's.
        .custom_inbox_prefix(subject::agent_inbox(&config.tenant, &host))
        .max_reconnects(None)
        .event_callback(move |event| {
            let host = host.clone();
            async move { log_event(&host, event) }
        })
        .connect(addrs)
        .await
        .map_err(|source| AgentError::Connect { url, source })
}

/// Logs one connection event. A publish refused for permissions reaches the client only here, so
/// it is logged loudly: otherwise a misconfigured account would look like a silent agent.
fn log_event(host: &execmesh_proto::Token, event: Event) {
    match event {
        Event::Connected => info!(host = %host, "connected to NATS"),
        Event::Disconnected => warn!(host = %host, "disconnected from NATS; reconnecting"),
        Event::ServerError(ServerError::Other(msg)) => {
            match execmesh_runtime::nats_connection::permission_violation(&msg) {
                Some((operation, subject)) => warn!(host = %host, operation, subject, error = %msg,
                "NATS refused an operation for permissions (this agent's NATS user does not allow it)"),
                None => warn!(host = %host, error = %msg, "NATS server error"),
            }
        }
        Event::ServerError(e) => warn!(host = %host, error = %e, "NATS server error"),
        Event::ClientError(e) => warn!(host = %host, error = %e, "NATS client error"),
        Event::SlowConsumer(sid) => {
            warn!(host = %host, sid, "NATS slow consumer: messages were dropped")
        }
        Event::LameDuckMode => warn!(host = %host, "NATS server entered lame duck mode"),
        Event::Draining => debug!(host = %host, "NATS connection draining"),
        Event::Closed => info!(host = %host, "NATS connection closed"),
    }
}
