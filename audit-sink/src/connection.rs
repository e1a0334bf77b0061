//! The sink's NATS connection: its name and its inbox, over the one connect of `execmesh-runtime`.

use async_nats::Client;

use execmesh_runtime::nats_connection::{self, ConnectAs, ConnectError};

use crate::config::Config;

/// Connects once, failing fast with the URL or file in the error; afterwards the client
/// reconnects forever, and the consumer and the service carry on where they were.
pub async fn connect(config: &Config) -> Result<Client, ConnectError> {
    let who = ConnectAs {
        name: "execmesh-audit-sink".to_string(),
        // Replies (JetStream API responses, pulled batches) arrive under the sinks' own prefix,
        // the only inbox their NATS permissions let them read.
        inbox_prefix: execmesh_proto::subject::AUDIT_SINK_INBOX.to_string(),
        host: None,
        user: "the sink's NATS user",
    };
    nats_connection::connect(&config.nats, who).await
}
