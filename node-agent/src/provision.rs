//! Creates (or opens) the MESH_OUT stream and the KV buckets the mesh runs on.
//!
//! The node-agent is the single place that provisions JetStream: every agent does it at start
//! (create if missing, otherwise use what exists as it is), so a fresh NATS server works without a
//! separate setup step, and the gateway only reads and writes. The definitions themselves live in
//! `execmesh_proto::jetstream`, shared with the gateway and the tests.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use execmesh_proto::jetstream as layout;
use tracing::debug;

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
    js.get_or_create_stream(out)
        .await
        .map_err(|e| AgentError::Provision {
            what: format!("stream {}", layout::OUT_STREAM),
            source: Box::new(e),
        })?;

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

/// Creates the bucket, or opens it when it exists already (possibly with another configuration,
/// which is then left alone: the operator may have tuned it).
async fn bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, AgentError> {
    let name = config.bucket.clone();
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(create) => {
            debug!(bucket = %name, error = %create, "create failed; opening the existing bucket");
            js.get_key_value(&name)
                .await
                .map_err(|open| AgentError::Provision {
                    what: format!("KV bucket {name}"),
                    source: format!("create failed ({create}), open failed ({open})").into(),
                })
        }
    }
}
