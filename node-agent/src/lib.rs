//! The execmesh node-agent: executes requests for its host and streams their output into JetStream.
//!
//! [`run`] connects to NATS, provisions the mesh's stream and buckets, recovers the jobs an
//! earlier run left behind, registers the host, announces it with an acknowledged heartbeat, and
//! then serves `mesh.v1.<tenant>.host.<host>.{exec.*,ctl}` until the shutdown token fires.

mod admission;
mod audit;
mod chunker;
pub mod cli;
pub mod config;
mod connection;
mod digest;
mod dispatch;
mod drain;
pub mod error;
mod executor;
mod facts;
pub mod files;
mod grep;
pub mod guard;
pub mod guard_check;
mod handler;
mod job;
mod lines;
mod metrics;
mod node;
mod output;
mod presence;
mod process;
mod provision;
mod publish;
mod quota;
mod recovery;
pub mod refusal;
mod registry;
pub mod relay;
mod request;
mod residency;
mod retry;
pub mod runas;
pub mod signature;
mod status;
pub mod telemetry;
pub mod tier;
mod vfork;
mod warm;

use std::sync::Arc;
use std::time::Duration;

use execmesh_proto::signing::RecordKey;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use cli::Cli;
pub use config::{Config, ConfigError};
pub use error::AgentError;
pub use execmesh_proto::Token;
pub use facts::AGENT_VERSION;

use crate::node::Node;
use crate::presence::Heartbeat;

/// How long the last NATS writes at shutdown (presence removal, flush) may take.
const FAREWELL_LIMIT: Duration = Duration::from_secs(5);
/// How long the audit events still queued at shutdown may take to be published.
const AUDIT_FLUSH_LIMIT: Duration = Duration::from_secs(2);

/// Told once the agent is serving: its presence is stored and its subscriptions are active.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The host id the agent serves.
    pub host: Token,
    /// The tenant the agent serves.
    pub tenant: Token,
    /// Random id of this agent run, as recorded in job statuses and heartbeats.
    pub instance: String,
}

/// What an agent checks before it serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Startup {
    /// Everything: the stream and buckets are created when missing and kept at the budget's byte
    /// limits, and the jobs an earlier run of this host left behind are ended. What the binary
    /// does.
    #[default]
    Full,
    /// For simulated fleets of tens of thousands of agents in one process (`execmesh-bench
    /// scale`): the buckets are opened as they are (one lookup each; nothing created, no byte
    /// limits kept), no earlier run is looked for (a simulated host has none), and the
    /// machine's facts are collected once for the whole process, each agent adding its own
    /// identity. Requests, heartbeats, fact packs and audit are handled exactly as in
    /// [`Startup::Full`]; only the work that fifty thousand agents sharing one machine would
    /// repeat for nothing is left out.
    Light,
}

/// How [`run_with`] starts the agent.
#[derive(Debug, Default)]
pub struct Launch {
    /// Sent [`Ready`] once the agent serves requests (for tests and embedders that must not
    /// guess when it is up).
    pub ready: Option<oneshot::Sender<Ready>>,
    pub startup: Startup,
}

/// Pages out the binary's start-up code and returns the heap start-up freed, once the agent has
/// settled ([`residency`]): the idle agent's memory is then what it runs, not all it ran once.
async fn give_back_startup_pages(stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => return,
        () = tokio::time::sleep(residency::SETTLE) => {}
    }
    let released = tokio::task::spawn_blocking(|| {
        residency::release_freed_heap();
        residency::release_startup_pages()
    });
    match released.await {
        Ok(Ok(bytes)) => debug!(bytes, "start-up pages of the binary given back"),
        // A kernel before 5.4 has no MADV_PAGEOUT: the agent keeps them, as it always did.
        Ok(Err(e)) => debug!(error = %e, "start-up pages of the binary kept"),
        Err(e) => debug!(error = %e, "giving back start-up pages did not run"),
    }
}

/// The key this agent signs its records with: the one of its NATS seed (`nats_nkey_seed`, or
/// the seed in `nats_creds`). Without one the agent still runs, but says plainly what that means.
pub(crate) fn record_key(config: &Config) -> Result<Option<Arc<RecordKey>>, AgentError> {
    let Some(path) = (config.nats.nkey_seed.as_ref()).or(config.nats.creds.as_ref()) else {
        warn!(host = %config.host_id,
              "NO NATS SEED: this agent's records (output, job statuses, heartbeats, facts, audit \
               events) go out unsigned. A gateway that checks signatures (`identities_file`) \
               ignores them and lists this host as `unverified`; one that does not check cannot \
               tell them from records anyone who reaches NATS could write. Set `nats_nkey_seed` \
               to this host's seed from `execmesh-gateway nats-config`.");
        return Ok(None);
    };
    let key = RecordKey::load(path)?;
    info!(host = %config.host_id, signer = key.public_key(),
          "signing this agent's records with the key of its NATS seed");
    Ok(Some(Arc::new(key)))
}

/// Runs the agent until `shutdown` is cancelled, then drains: no new jobs, running jobs get
/// `shutdown_grace_ms` to finish before they are killed, the presence key is removed.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    run_with(config, shutdown, Launch::default()).await
}

/// [`run`], started as `launch` says.
pub async fn run_with(
    config: Config,
    shutdown: CancellationToken,
    launch: Launch,
) -> Result<(), AgentError> {
    let Launch { ready, startup } = launch;
    config.validate()?;
    let instance = format!("{:016x}", rand::random::<u64>());
    let started_at_ms = execmesh_proto::now_ms();
    info!(host = %config.host_id, tenant = %config.tenant, instance = %instance,
          nats_url = %config.nats.url, version = AGENT_VERSION, "node-agent starting");

    let record_key = record_key(&config)?;
    if let execmesh_runtime::telemetry::MetricsAt::Listen(addr) = config.metrics {
        let listener = execmesh_runtime::metrics::bind(addr).await?;
        tokio::spawn(execmesh_runtime::metrics::serve(listener, shutdown.clone()));
    }
    let client = connection::connect(&config).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mesh = match startup {
        Startup::Full => match provision::provision_once_placed(&js, &config, &shutdown).await? {
            Some(mesh) => mesh,
            None => {
                info!("stopped before the mesh's streams could be placed");
                return Ok(());
            }
        },
        Startup::Light => provision::open(&js).await?,
    };
    let node = Arc::new(Node::new(
        config,
        instance.clone(),
        client.clone(),
        &mesh,
        shutdown,
        record_key,
        executor::Executor::Local,
    ));

    if startup == Startup::Light {
        node.facts.share_machine_pack();
    }
    if startup == Startup::Full {
        let recovered = recovery::recover(&node).await?;
        if recovered > 0 {
            info!(recovered, "ended the jobs of an earlier run");
        }
    }
    // After recovery, whose scan of /proc must not meet this run's own shells.
    let warm = tokio::spawn(Arc::clone(&node.warm).run());
    // The full fact pack (with the labels) is the host's registration: written before the
    // first heartbeat, so a host that shows online can be selected by its facts.
    node.facts
        .refresh()
        .await
        .map_err(|e| AgentError::Register {
            what: "facts",
            source: Box::new(e),
        })?;
    let heartbeat = Arc::new(Heartbeat::new(&node, mesh.presence.clone(), started_at_ms));
    // Subscribe before the first heartbeat: once the heartbeat is acknowledged, the server has
    // processed the subscriptions too, so a host that shows online can be reached.
    let subscriptions = dispatch::subscribe(&node, None).await?;
    heartbeat
        .beat()
        .await
        .map_err(|source| AgentError::Register {
            what: "presence",
            source,
        })?;
    info!(host = %node.host(), max_jobs = node.config.max_jobs, "ready");
    if let Some(ready) = ready {
        let _ = ready.send(Ready {
            host: node.host().clone(),
            tenant: node.tenant().clone(),
            instance: instance.clone(),
        });
    }

    let beats_stop = CancellationToken::new();
    // Removes abandoned copies while the agent runs, and every unfinished one when it stops.
    let sweeper = tokio::spawn(Arc::clone(&node.files).sweep(beats_stop.clone()));
    let facts = tokio::spawn(Arc::clone(&node.facts).run(beats_stop.clone()));
    if startup == Startup::Full {
        tokio::spawn(give_back_startup_pages(beats_stop.clone()));
    }
    let beats = tokio::spawn({
        let heartbeat = Arc::clone(&heartbeat);
        let stop = beats_stop.clone();
        async move { heartbeat.run(stop).await }
    });

    dispatch::serve(Arc::clone(&node), subscriptions).await;
    node.warm.close();
    let _ = warm.await;

    beats_stop.cancel();
    let _ = beats.await;
    let _ = sweeper.await;
    let _ = facts.await;
    // With NATS unreachable there is no one to say goodbye to: the presence key expires by its
    // TTL, and the last audit events are given up at once (the log says how many), so the
    // agent stops promptly instead of waiting out each farewell's limit.
    let online = client.connection_state() == async_nats::connection::State::Connected;
    if online {
        match tokio::time::timeout(FAREWELL_LIMIT, heartbeat.withdraw()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "removing the presence key failed"),
            Err(_) => warn!("removing the presence key timed out"),
        }
    }
    // Job and file events of the last moments go out before the connection does.
    let grace = if online {
        AUDIT_FLUSH_LIMIT
    } else {
        Duration::from_millis(100)
    };
    node.audit.close(grace).await;
    if online {
        let _ = tokio::time::timeout(FAREWELL_LIMIT, client.flush()).await;
    }
    info!(host = %node.host(), "node-agent stopped");
    Ok(())
}
