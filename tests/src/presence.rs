//! Reads a host's heartbeat from the `mesh_presence` bucket, the way the gateway learns who is online.

use async_nats::jetstream::{self, kv};
use execmesh_proto::jetstream::PRESENCE_BUCKET;
use execmesh_proto::pb;
use execmesh_proto::subject::{self, DEFAULT_TENANT, Token};
use prost::Message;

use crate::Nats;

/// The `mesh_presence` key of `host` in the default tenant.
pub fn presence_key(host: &str) -> String {
    let tenant = Token::parse("tenant", DEFAULT_TENANT).expect("the default tenant is a token");
    let host = Token::parse("host id", host).unwrap_or_else(|e| panic!("{e}"));
    subject::host_key(&tenant, &host)
}

/// The live heartbeat of `host`, or `None` when the bucket does not exist yet, the key is absent,
/// deleted, or expired, or NATS cannot be read right now.
pub async fn read_presence(js: &jetstream::Context, host: &str) -> Option<pb::Presence> {
    let bucket = js.get_key_value(PRESENCE_BUCKET).await.ok()?;
    // A read error (server restarting, say) is "not known now": callers poll.
    let entry = match bucket.entry(presence_key(host)).await {
        Ok(entry) => entry?,
        Err(e) => {
            tracing::debug!(%host, error = %e, "presence read failed");
            return None;
        }
    };
    // Deletes, purges and TTL expiry markers all mean "not here".
    if entry.operation != kv::Operation::Put || entry.value.is_empty() {
        return None;
    }
    let presence = pb::Presence::decode(entry.value)
        .unwrap_or_else(|e| panic!("{PRESENCE_BUCKET} value of {host} is not a Presence: {e}"));
    Some(presence)
}

// === impl Nats ===

impl Nats {
    /// The live heartbeat of `host` (see [`read_presence`]).
    pub async fn presence(&self, host: &str) -> Option<pb::Presence> {
        read_presence(&self.jetstream().await, host).await
    }
}
