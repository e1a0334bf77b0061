//! The sink's NATS connection: authentication, TLS, reconnects, and logging of connection events.

use async_nats::{Client, ConnectOptions, Event, ServerAddr, ServerError};
use tracing::{debug, info, warn};

use crate::SinkError;
use crate::config::Config;

/// Connects once, failing fast with the URL in the error; afterwards the client reconnects
/// forever, and the consumer and the service carry on where they were.
pub async fn connect(config: &Config) -> Result<Client, SinkError> {
    let url = config.nats_url.clone();
    let failed = |reason: String| SinkError::Connect {
        url: url.clone(),
        reason,
    };
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    let mut options = match &config.nats_creds {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| failed(format!("credentials {}: {e}", path.display())))?,
        None => ConnectOptions::new(),
    };
    if let Some(path) = &config.nats_nkey_seed {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| failed(format!("nkey seed {}: {e}", path.display())))?;
        options = options.nkey(seed.trim().to_string());
    }
    let client_cert = config
        .nats_tls_client
        .as_ref()
        .map(|c| (c.cert.as_path(), c.key.as_path()));
    options = execmesh_runtime::nats_connection::apply_tls(
        options,
        config.nats_tls_ca.as_deref(),
        client_cert,
    )?;
    options
        .name("execmesh-audit-sink")
        // Replies (JetStream API responses, pulled batches) arrive under the sinks' own prefix,
        // the only inbox their NATS permissions let them read.
        .custom_inbox_prefix(execmesh_proto::subject::AUDIT_SINK_INBOX)
        .max_reconnects(None)
        .event_callback(|event| async move { log_event(event) })
        .connect(addrs)
        .await
        .map_err(|e| failed(e.to_string()))
}

fn log_event(event: Event) {
    match event {
        Event::Connected => info!("connected to NATS"),
        Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
        Event::ServerError(ServerError::Other(msg)) => {
            match execmesh_runtime::nats_connection::permission_violation(&msg) {
                Some((operation, subject)) => warn!(operation, subject, error = %msg,
                "NATS refused an operation for permissions (the sink's NATS user does not allow it)"),
                None => warn!(error = %msg, "NATS server error"),
            }
        }
        Event::ServerError(e) => warn!(error = %e, "NATS server error"),
        Event::ClientError(e) => warn!(error = %e, "NATS client error"),
        Event::SlowConsumer(sid) => warn!(sid, "NATS slow consumer: messages were dropped"),
        Event::LameDuckMode => warn!("NATS server entered lame duck mode"),
        Event::Draining => debug!("NATS connection draining"),
        Event::Closed => info!("NATS connection closed"),
    }
}
