//! Opens the MESH_OUT stream and the KV buckets the agent writes, creating any that is missing.
//!
//! Whoever starts first provisions: the gateway creates every stream and bucket of the mesh at
//! start, and an agent that finds one missing (a development mesh whose agent came up first)
//! creates it with its own retention settings. Existing ones are used as they are, except for
//! their byte limit: the agent brings the limit of every stream it opens to its budget's share
//! ([`layout::StoreLimits`]), so a stream created unbounded by an older execmesh, or by a gateway
//! with the default budget, gets the configured bound. In a secured mesh an agent's NATS user may
//! only look streams up, not create or change them: there the gateway must have started once
//! before the agents, and the limits are the gateway's (a refused change is logged). The
//! definitions live in `execmesh_proto::jetstream`, shared with the gateway and the tests.
//!
//! A cluster that cannot place the streams yet (still forming, or short of the nodes the
//! `replicas` setting asks for) is waited for in the process, tried again with a growing pause.
//! Any other refusal ends the start.

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateKeyValueError, CreateKeyValueErrorKind, CreateStreamError, CreateStreamErrorKind,
    GetStreamError, GetStreamErrorKind,
};
use async_nats::jetstream::{self, ErrorCode, kv, stream};
use execmesh_proto::jetstream as layout;
use execmesh_runtime::backoff::Backoff;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, warn};

use crate::config::Config;
use crate::error::AgentError;

/// The first wait before provisioning is tried again on a cluster that cannot place the
/// streams yet; it doubles up to [`PLACEMENT_WAIT_MAX`].
const PLACEMENT_WAIT_FIRST: Duration = Duration::from_secs(1);
const PLACEMENT_WAIT_MAX: Duration = Duration::from_secs(15);

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
async fn provision(js: &jetstream::Context, config: &Config) -> Result<Mesh, AgentError> {
    let limits = config.store_limits();
    let out = layout::out_stream(
        Duration::from_secs(config.output_retention_secs),
        &limits,
        config.replicas,
    );
    if !exists(js, layout::OUT_STREAM).await? {
        info!(stream = layout::OUT_STREAM, "stream missing; creating it");
        js.get_or_create_stream(out)
            .await
            .map_err(|e| missing(format!("stream {}", layout::OUT_STREAM), e))?;
    }

    let presence = bucket(js, layout::presence_bucket(&limits, config.replicas)).await?;
    let facts = bucket(js, layout::facts_bucket(&limits, config.replicas)).await?;
    let jobs = bucket(
        js,
        layout::jobs_bucket(
            Duration::from_secs(config.job_retention_secs),
            &limits,
            config.replicas,
        ),
    )
    .await?;
    // Off the start path: where the agent may not change streams, a refused update takes a
    // request timeout each, and the agent works with the limits as they are meanwhile.
    tokio::spawn(bound(js.clone(), limits, config.replicas).in_current_span());
    Ok(Mesh {
        presence,
        facts,
        jobs,
    })
}

/// [`provision`], tried again for as long as the server cannot place the mesh's streams yet: a
/// cluster still forming or short of a node ("no suitable peers for placement"), without a
/// meta leader, or not answering JetStream requests. The agent waits in its process, saying why
/// at each try, rather than exiting for its unit to start it again; any other failure ends the
/// start. `None`: `shutdown` came first.
pub async fn provision_once_placed(
    js: &jetstream::Context,
    config: &Config,
    shutdown: &CancellationToken,
) -> Result<Option<Mesh>, AgentError> {
    let mut backoff = Backoff::new(PLACEMENT_WAIT_FIRST, PLACEMENT_WAIT_MAX);
    let mut tries: u32 = 1;
    loop {
        let error = match provision(js, config).await {
            Ok(mesh) => {
                if tries > 1 {
                    info!(tries, "the mesh's streams are in place");
                }
                return Ok(Some(mesh));
            }
            Err(e) if waits_for_cluster(&e) => e,
            Err(e) => return Err(e),
        };
        warn!(tries, replicas = config.replicas, error = %error,
              "NATS cannot place the mesh's streams yet (a cluster forming, or short of the \
               nodes for `replicas`); trying again");
        if backoff.wait(shutdown).await.is_err() {
            return Ok(None);
        }
        tries += 1;
    }
}

/// Whether `error` says the server cannot place or answer for streams now, rather than refusing
/// them: a JetStream cluster without the peers for the replicas asked, without a meta leader,
/// or a JetStream request not answered.
fn waits_for_cluster(error: &AgentError) -> bool {
    let AgentError::Provision { source, .. } = error else {
        return false;
    };
    let placement = |e: &jetstream::Error| {
        let code = e.error_code();
        code == ErrorCode::CLUSTER_NO_PEERS || code == ErrorCode::CLUSTER_NOT_AVAILABLE
    };
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
    while let Some(e) = next {
        if let Some(e) = e.downcast_ref::<CreateStreamError>() {
            match e.kind() {
                CreateStreamErrorKind::JetStream(js) if placement(&js) => return true,
                CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                    return true;
                }
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<GetStreamError>() {
            match e.kind() {
                GetStreamErrorKind::JetStream(js) if placement(&js) => return true,
                GetStreamErrorKind::Request => return true,
                _ => {}
            }
        }
        if let Some(e) = e.downcast_ref::<CreateKeyValueError>()
            && e.kind() == CreateKeyValueErrorKind::TimedOut
        {
            return true;
        }
        if let Some(e) = e.downcast_ref::<jetstream::Error>()
            && placement(e)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Opens the buckets as they are, one lookup each: for [`crate::Startup::Light`], where
/// whoever set the mesh up has made them already. A missing one is an error, not created.
pub async fn open(js: &jetstream::Context) -> Result<Mesh, AgentError> {
    let open = |name: &'static str| async move {
        js.get_key_value(name)
            .await
            .map_err(|e| AgentError::Provision {
                what: format!("KV bucket {name} (a light start creates nothing)"),
                source: Box::new(e),
            })
    };
    let (presence, facts, jobs) = tokio::try_join!(
        open(layout::PRESENCE_BUCKET),
        open(layout::FACTS_BUCKET),
        open(layout::JOBS_BUCKET)
    )?;
    Ok(Mesh {
        presence,
        facts,
        jobs,
    })
}

/// The streams whose byte limit the agent keeps at its budget's share: those it opens (and
/// its NATS user may look up). The gateway's own buckets are created bounded by the gateway.
fn bounded_streams() -> [String; 5] {
    [
        layout::OUT_STREAM.to_string(),
        layout::AUDIT_STREAM.to_string(),
        format!("KV_{}", layout::PRESENCE_BUCKET),
        format!("KV_{}", layout::FACTS_BUCKET),
        format!("KV_{}", layout::JOBS_BUCKET),
    ]
}

/// Sets the byte limit of each of [`bounded_streams`] that exists to its share of `limits`,
/// leaving the rest of its configuration (age, replicas, an operator's edits) as it is.
async fn bound(js: jetstream::Context, limits: layout::StoreLimits, replicas: usize) {
    // AUDIT is opened by the agent's audit publisher, perhaps not yet: created here first, so
    // it starts with this budget's share rather than the default's.
    if let Err(e) = js
        .get_or_create_stream(layout::audit_stream(&limits, replicas))
        .await
    {
        debug!(stream = layout::AUDIT_STREAM, error = %e, "AUDIT not opened yet");
    }
    for name in bounded_streams() {
        let Some(wanted) = limits.of_stream(&name) else {
            continue;
        };
        match set_max_bytes(&js, &name, wanted).await {
            Ok(Some(old)) => {
                info!(stream = %name, old_max_bytes = old, max_bytes = wanted, "stream byte limit set");
            }
            Ok(None) => {}
            Err(e) => warn!(
                stream = %name, max_bytes = wanted, error = %e,
                "cannot set the stream's byte limit; it keeps its old one (in a secured mesh \
                 set it with `nats stream edit --max-bytes`)"
            ),
        }
    }
}

/// Changes the byte limit of the stream `name` to `wanted`; `Some(old limit)` when it changed,
/// `None` when it was already `wanted` or the stream does not exist.
async fn set_max_bytes(
    js: &jetstream::Context,
    name: &str,
    wanted: i64,
) -> Result<Option<i64>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(mut stream) = lookup(js, name).await? else {
        return Ok(None);
    };
    let mut config = stream.info().await?.config.clone();
    if config.max_bytes == wanted {
        return Ok(None);
    }
    let old = std::mem::replace(&mut config.max_bytes, wanted);
    js.update_stream(config).await?;
    Ok(Some(old))
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
    match lookup(js, name).await {
        Ok(found) => Ok(found.is_some()),
        Err(e) => Err(AgentError::Provision {
            what: format!("stream {name} (looking it up)"),
            source: Box::new(e),
        }),
    }
}

/// The stream `name`, `None` when the server says it does not exist.
async fn lookup(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Stream>, GetStreamError> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(e),
        },
    }
}

/// The error for a stream or bucket that is missing and could not be created: with NATS
/// permissions an agent may not create it, and the gateway should have.
fn missing(what: String, e: impl std::error::Error + Send + Sync + 'static) -> AgentError {
    AgentError::Provision {
        what: format!(
            "{what}: it does not exist and this agent could not create it (in a secured mesh \
             the gateway creates it: start the gateway once first; when the server says its storage\
             resources are exceeded, lower jetstream_budget_bytes or raise its max_file_store)"
        ),
        source: Box::new(e),
    }
}
