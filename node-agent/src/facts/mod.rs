//! The host's fact pack ("server memory"): collected at start and every `facts_interval_secs`, stored in `mesh_facts`, served to `facts` requests.
//!
//! Collection reads files and may run a command (systemctl, rpm), so it runs on the blocking
//! pool, one at a time; the pack is kept in memory for `facts` requests that do not ask for a
//! refresh. The registration (host, labels, agent version) is part of every pack.

pub(crate) mod sources;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::{pb, subject};
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};
use prost::Message as _;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::executor::Executor;

/// The agent's version, published in facts and heartbeats.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a fact pack could not be collected or stored.
#[derive(Debug, thiserror::Error)]
pub enum FactsError {
    /// The collection task panicked or was cancelled.
    #[error("collecting the facts failed: {0}")]
    Collect(#[from] tokio::task::JoinError),
    /// A relay's probe of its SSH target did not answer (the message names the target).
    #[error("{0}")]
    Probe(String),
    /// The pack was collected but `mesh_facts` did not take it.
    #[error("storing the facts in mesh_facts failed: {0}")]
    Store(#[from] KvWriteError),
}

/// Collects, stores and serves this host's fact pack.
pub struct Facts {
    js: jetstream::Context,
    store: kv::Store,
    /// Signs each stored pack as this agent (`None`: unsigned): the labels in it decide who may
    /// reach the host, so nobody else may write them.
    signer: Option<Arc<RecordKey>>,
    /// `<tenant>.<host>`.
    key: String,
    /// What the agent itself contributes to every pack: host, labels, version, interval.
    identity: pb::HostFacts,
    interval: Duration,
    /// The last pack collected (the registration alone until the first collection).
    current: Mutex<pb::HostFacts>,
    /// Held while a collection runs, so refreshes do not pile up collections.
    collecting: tokio::sync::Mutex<()>,
    /// Where the facts come from: this machine, or (relay mode) the SSH target's fixed probe.
    executor: Executor,
    /// Whether the machine's part of the pack is [`shared_machine_pack`]: set for
    /// [`crate::Startup::Light`] agents, thousands of which share one machine and process.
    shared: AtomicBool,
}

/// The machine's part of the pack for [`crate::Startup::Light`] agents: collected once per
/// process and again once older than `max_age`. Tens of thousands of simulated agents on one
/// machine would otherwise each read the same files, and `/proc/net/tcp` grows with their own
/// connections, so the fleet's start-up would grow with its square.
fn shared_machine_pack(max_age: Duration) -> pb::HostFacts {
    static MACHINE: Mutex<Option<(Instant, pb::HostFacts)>> = Mutex::new(None);
    let mut machine = MACHINE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match &*machine {
        Some((at, pack)) if at.elapsed() < max_age => pack.clone(),
        _ => {
            let pack = collect(pb::HostFacts::default());
            *machine = Some((Instant::now(), pack.clone()));
            pack
        }
    }
}

// === impl Facts ===

impl Facts {
    pub fn new(
        js: jetstream::Context,
        store: kv::Store,
        config: &Config,
        signer: Option<Arc<RecordKey>>,
        executor: Executor,
    ) -> Facts {
        let identity = pb::HostFacts {
            host: config.host_id.to_string(),
            labels: config
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            agent_version: AGENT_VERSION.to_string(),
            interval_secs: config.facts_interval_secs,
            // Lets a gateway tell when the last heartbeat was from its expiry marker.
            presence_ttl_ms: config.presence_ttl().as_millis() as u64,
            ..Default::default()
        };
        Facts {
            js,
            store,
            signer,
            key: subject::host_key(&config.tenant, &config.host_id),
            current: Mutex::new(identity.clone()),
            identity,
            interval: config.facts_interval(),
            collecting: tokio::sync::Mutex::new(()),
            executor,
            shared: AtomicBool::new(false),
        }
    }

    /// The last pack collected.
    pub fn cached(&self) -> pb::HostFacts {
        self.current
            .lock()
            .map(|facts| facts.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Collects the pack now (off the async threads), stores it in `mesh_facts` and keeps it.
    pub async fn refresh(&self) -> Result<pb::HostFacts, FactsError> {
        let _turn = self.collecting.lock().await;
        let identity = self.identity.clone();
        let facts = match &self.executor {
            Executor::Local if self.shared.load(Ordering::Relaxed) => {
                let interval = self.interval;
                let machine =
                    tokio::task::spawn_blocking(move || shared_machine_pack(interval)).await?;
                with_identity(machine, identity)
            }
            Executor::Local => tokio::task::spawn_blocking(move || collect(identity)).await?,
            Executor::Ssh(target, _) => target.facts(identity).await.map_err(FactsError::Probe)?,
        };
        self.store(facts).await
    }

    /// Takes the machine's part of every pack from [`shared_machine_pack`] from now on.
    pub(crate) fn share_machine_pack(&self) {
        self.shared.store(true, Ordering::Relaxed);
    }

    /// Stores what a relay knows of its target without asking it (its identity, user and
    /// state): written as the target's state changes, so that it never waits on a probe.
    pub async fn store_identity(&self) -> Result<pb::HostFacts, FactsError> {
        match &self.executor {
            Executor::Ssh(target, _) => {
                self.store(target.identity_pack(self.identity.clone()))
                    .await
            }
            Executor::Local => self.refresh().await,
        }
    }

    /// Stores `facts` in `mesh_facts` and keeps them as the current pack.
    async fn store(&self, facts: pb::HostFacts) -> Result<pb::HostFacts, FactsError> {
        kv_write::write(
            &self.js,
            &self.store,
            &self.key,
            Bytes::from(facts.encode_to_vec()),
            HeaderMap::new(),
            Expect::Any,
            self.signer.as_deref(),
        )
        .await?;
        match self.current.lock() {
            Ok(mut current) => *current = facts.clone(),
            Err(poisoned) => *poisoned.into_inner() = facts.clone(),
        }
        Ok(facts)
    }

    /// Refreshes every interval until `stop`; a failed refresh is logged and the next one tried.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // immediate; the agent collected at start
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.refresh().await {
                Ok(_) => debug!(key = %self.key, "facts refreshed"),
                Err(e) => warn!(key = %self.key, error = %e, "refreshing the facts failed"),
            }
        }
    }
}

/// The full pack: `identity` plus what the system says. A missing source leaves its field
/// empty; nothing here fails.
fn collect(identity: pb::HostFacts) -> pb::HostFacts {
    let uname = nix::sys::utsname::uname().ok();
    let os = sources::os_release();
    let memory = sources::memory();
    let (load1, load5, load15) = sources::load();
    let (package_count, package_manager) = sources::packages();
    pb::HostFacts {
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        os: os
            .pretty
            .unwrap_or_else(|| std::env::consts::OS.to_string()),
        os_id: os.id,
        os_version: os.version,
        kernel: uname
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        arch: std::env::consts::ARCH.to_string(),
        cpus: online_cpus(),
        memory_bytes: memory.total,
        memory_available_bytes: memory.available,
        swap_total_bytes: memory.swap_total,
        swap_free_bytes: memory.swap_free,
        uptime_secs: sources::uptime_secs(),
        load1,
        load5,
        load15,
        disks: sources::disks(),
        ip_addresses: sources::ip_addresses(),
        listening_ports: sources::listening_ports(),
        services: sources::services(),
        package_count,
        package_manager: package_manager.to_string(),
        collected_at_ms: execmesh_proto::now_ms(),
        ..identity
    }
}

/// `machine` (a pack collected without identity) as the pack of the agent `identity` says.
fn with_identity(machine: pb::HostFacts, identity: pb::HostFacts) -> pb::HostFacts {
    pb::HostFacts {
        host: identity.host,
        labels: identity.labels,
        agent_version: identity.agent_version,
        interval_secs: identity.interval_secs,
        presence_ttl_ms: identity.presence_ttl_ms,
        relay_user: identity.relay_user,
        relay_offline_reason: identity.relay_offline_reason,
        ..machine
    }
}

fn online_cpus() -> u32 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .and_then(|n| u32::try_from(n).ok())
        .or_else(|| {
            std::thread::available_parallelism()
                .ok()
                .and_then(|n| u32::try_from(n.get()).ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_machine_pack_carries_each_agents_own_identity() {
        let identity = |host: &str| pb::HostFacts {
            host: host.into(),
            labels: [("shard".to_string(), host.to_string())].into(),
            agent_version: AGENT_VERSION.into(),
            interval_secs: 60,
            presence_ttl_ms: 3000,
            ..Default::default()
        };
        let machine = shared_machine_pack(Duration::from_secs(60));
        let again = shared_machine_pack(Duration::from_secs(60));
        assert_eq!(
            machine.collected_at_ms, again.collected_at_ms,
            "collected once"
        );
        let (a, b) = (
            with_identity(machine.clone(), identity("sim-1")),
            with_identity(machine.clone(), identity("sim-2")),
        );
        assert_eq!(
            (a.host.as_str(), a.labels["shard"].as_str()),
            ("sim-1", "sim-1")
        );
        assert_eq!(
            (b.host.as_str(), b.labels["shard"].as_str()),
            ("sim-2", "sim-2")
        );
        assert_eq!((a.interval_secs, a.presence_ttl_ms), (60, 3000));
        assert!(!a.kernel.is_empty() && a.kernel == machine.kernel, "{a:?}");
        assert_eq!(a.hostname, b.hostname);
    }

    #[test]
    fn a_collection_on_this_machine_has_the_basics_and_keeps_the_identity() {
        let identity = pb::HostFacts {
            host: "web-1".into(),
            labels: [("role".to_string(), "web".to_string())].into(),
            interval_secs: 300,
            agent_version: AGENT_VERSION.into(),
            ..Default::default()
        };
        let facts = collect(identity);
        assert_eq!(facts.host, "web-1");
        assert_eq!(facts.labels.get("role").map(String::as_str), Some("web"));
        assert_eq!(facts.interval_secs, 300);
        assert!(facts.cpus > 0 && facts.memory_bytes > 0, "{facts:?}");
        assert!(!facts.kernel.is_empty() && !facts.arch.is_empty());
        assert!(facts.collected_at_ms > 0);
    }
}
