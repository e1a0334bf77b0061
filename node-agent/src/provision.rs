//! Opens the MESH_OUT stream and the KV buckets the agent writes, creating any that is missing.
//!
//! Whoever starts first provisions: the gateway creates every stream and bucket of the mesh at
//! start, and an agent that finds one missing (a development mesh whose agent came up first)
//! creates it with its own retention settings. Existing ones are used as they are. In a secured
//! mesh an agent's NATS user may only look streams up, not create them: there the gateway must
//! have started once before the agents. The definitions live in `execmesh_proto::jetstream`,
//! shared with the gateway and the tests.

use std::time::Duration;

use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::{self, ErrorCode, kv};
use execmesh_proto::jetstream as layout;
use tracing::{debug, info};

use crate::config::Config;
use crate::error::AgentError;

/// Handles on the buckets the agent writes.
#[derive(Clone)]
pub struct Mesh {
    /// `mesh_presence`: heartbeats with a per-message TTL.
    pub presence: kv::Store,
    /// `mesh_facts`: the host's registration.
    pub facts: kv::Store,
    /// `mesh_jobs`: job statuses.
    pub jobs: kv::Store,
}

/// Makes sure the stream and buckets exist and opens them.
pub async fn provision(js: &jetstream::Context, config: &Config) -> Result<Mesh, AgentError> {
    let out = layout::out_stream(
        Duration::from_secs(config.output_retention_secs),
        config.replicas,
    );
    if !exists(js, layout::OUT_STREAM).await? {
        info!(stream = layout::OUT_STREAM, "stream missing; creating it");
        js.get_or_create_stream(out)
            .await
            .map_err(|e| missing(format!("stream {}", layout::OUT_STREAM), e))?;
    }

    let presence = bucket(js, layout::presence_bucket(config.replicas)).await?;
    let facts = bucket(js, layout::facts_bucket(config.replicas)).await?;
    let jobs = bucket(
        js,
        layout::jobs_bucket(
            Duration::from_secs(config.job_retention_secs),
            config.replicas,
        ),
    )
    .await?;
    Ok(Mesh {
        presence,
        facts,
        jobs,
    })
}

/// Opens the bucket, creating it first when it does not exist. A create that fails is followed
/// by one more open, for the agent that lost a race with another creator.
async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, AgentError> {
    let name = config.bucket.clone();
    if !exists(js, &format!("KV_{name}")).await? {
        info!(bucket = %name, "KV bucket missing; creating it");
        match js.create_key_value(config).await {
            Ok(store) => return Ok(store),
            Err(create) => {
                debug!(bucket = %name, error = %create, "create failed; opening the bucket");
                if !exists(js, &format!("KV_{name}")).await? {
                    return Err(missing(format!("KV bucket {name}"), create));
                }
            }
        }
    }
    js.get_key_value(&name)
        .await
        .map_err(|e| AgentError::Provision {
            what: format!("KV bucket {name}"),
            source: Box::new(e),
        })
}

/// Whether the stream `name` exists. Only "not found" is `false`: a lookup the server refuses
/// or does not answer is an error, so the agent does not go on to a create that cannot work.
async fn exists(js: &jetstream::Context, name: &str) -> Result<bool, AgentError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(AgentError::Provision {
                what: format!("stream {name} (looking it up)"),
                source: Box::new(e),
            }),
        },
    }
}

/// The error for a stream or bucket that is missing and could not be created: with NATS
/// permissions an agent may not create it, and the gateway should have.
fn missing(what: String, e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
    AgentError::Provision {
        what: format!(
            "{what}: it does not exist and this agent could not create it (in a secured mesh \
             the gateway creates it: start the gateway once first)"
        ),
        source: Box::new(e),
    }
}
