//! A simulated fleet: many real node-agents in this process, each with its own NATS connection,
//! for benchmarks that need hundreds or thousands of hosts on one machine.
//!
//! Each host runs the node-agent library's `run` exactly as the binary does (same request
//! handling, same file and grep code); only the process is shared. Warm shells are off (a
//! thousand idle bash processes would measure the machine, not the mesh) and heartbeats are
//! slower than the default, so the fleet's own upkeep does not drown the measurement. A
//! [`Fleet::light`] fleet also skips the start-up checks a real agent makes once
//! ([`Startup::Light`]), so tens of thousands fit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use execmesh_node_agent::config::Config;
use execmesh_node_agent::{Launch, Startup};

use crate::Nats;

/// Agents started at once while the fleet comes up, unless [`Fleet::start_concurrency`] says.
const START_CONCURRENCY: usize = 64;

/// A change applied to every simulated agent's configuration.
type ConfigChange = Box<dyn Fn(&mut Config) + Send + Sync>;

/// How to build the fleet.
pub struct Fleet {
    nats_url: String,
    /// The server's TLS files, when it runs in TLS mode.
    nats_tls: Option<crate::NatsTls>,
    /// The test mesh's gateway key, which every simulated agent trusts.
    gateway_key: String,
    prefix: String,
    count: usize,
    heartbeat: Duration,
    facts_interval: Duration,
    configure: Option<ConfigChange>,
    startup: Startup,
    start_concurrency: usize,
    /// Each host's seed in the test mesh's identities: every simulated agent signs its records
    /// as its host, like a real one.
    seeds: HashMap<String, PathBuf>,
}

/// A running fleet; every agent is stopped when it is dropped.
pub struct RunningFleet {
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// Host ids, `<prefix>-<n>` from 1.
    pub hosts: Vec<String>,
    /// How long the whole fleet took to come up.
    pub startup: Duration,
}

// === impl Fleet ===

impl Fleet {
    /// `count` hosts named `<prefix>-1` … `<prefix>-<count>` on `nats`.
    pub fn new(nats: &Nats, prefix: &str, count: usize) -> Self {
        let hosts: Vec<String> = (1..=count).map(|i| format!("{prefix}-{i}")).collect();
        // One rewrite of the identities file for the whole fleet.
        nats.identities()
            .add_agents(hosts.iter().map(String::as_str));
        let seeds = hosts
            .into_iter()
            .map(|host| {
                let seed = nats.identities().seed_file(&format!("agent-{host}"));
                (host, seed)
            })
            .collect();
        Self {
            seeds,
            nats_url: nats.url(),
            nats_tls: nats.tls().cloned(),
            gateway_key: nats.mesh_public_key().to_string(),
            prefix: prefix.to_string(),
            count,
            heartbeat: Duration::from_secs(10),
            facts_interval: Duration::from_secs(3600),
            configure: None,
            startup: Startup::Full,
            start_concurrency: START_CONCURRENCY,
        }
    }

    /// Starts every agent with [`Startup::Light`]: no bucket is created or bounded and no
    /// earlier run looked for (the gateway, or the harness's provisioning, makes the buckets
    /// first); requests are handled as by any agent.
    pub fn light(mut self) -> Self {
        self.startup = Startup::Light;
        self
    }

    /// How many agents start at once (default 64).
    pub fn start_concurrency(mut self, agents: usize) -> Self {
        self.start_concurrency = agents.max(1);
        self
    }

    /// Time between heartbeats of each agent (default 10 s).
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// Changes every agent's configuration (file roots, keys, …) after the defaults.
    pub fn configure(mut self, change: impl Fn(&mut Config) + Send + Sync + 'static) -> Self {
        self.configure = Some(Box::new(change));
        self
    }

    /// Starts every agent and returns once each has announced itself (its `ready` signal,
    /// sent after its acknowledged first heartbeat). Panics naming the host that failed.
    pub async fn start(self) -> RunningFleet {
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let hosts: Vec<String> = (1..=self.count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect();
        let mut tasks = Vec::with_capacity(self.count);
        let mut ready = futures::stream::iter(hosts.iter().cloned().map(|host| {
            let mut config = Config::new(&self.nats_url, &host)
                .unwrap_or_else(|e| panic!("config for simulated host {host}: {e}"));
            config.warm_shells = 0;
            if let Some(tls) = &self.nats_tls {
                config.nats.tls_ca = Some(tls.ca.clone());
                config.nats.tls_cert = tls.client.as_ref().map(|c| c.cert.clone());
                config.nats.tls_key = tls.client.as_ref().map(|c| c.key.clone());
            }
            config.gateway_keys = vec![self.gateway_key.clone()];
            config.nats.nkey_seed = self.seeds.get(&host).cloned();
            config.heartbeat_interval_ms = self.heartbeat.as_millis() as u64;
            config.facts_interval_secs = self.facts_interval.as_secs();
            if let Some(change) = &self.configure {
                change(&mut config);
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let token = shutdown.child_token();
            let task_host = host.clone();
            let startup = self.startup;
            let task = tokio::spawn(async move {
                if let Err(e) = execmesh_node_agent::run_with(
                    config,
                    token,
                    Launch {
                        ready: Some(tx),
                        startup,
                    },
                )
                .await
                {
                    tracing::error!(host = %task_host, error = %e, "simulated agent failed");
                }
            });
            (host, task, rx)
        }))
        .map(|(host, task, rx)| async move {
            let ok = tokio::time::timeout(Duration::from_secs(120), rx).await;
            (host, task, ok)
        })
        .buffer_unordered(self.start_concurrency);
        while let Some((host, task, ok)) = ready.next().await {
            match ok {
                Ok(Ok(_)) => tasks.push(task),
                Ok(Err(_)) => panic!("simulated agent {host} stopped before it was ready"),
                Err(_) => panic!("simulated agent {host} was not ready within 120 s"),
            }
        }
        drop(ready);
        RunningFleet {
            shutdown,
            tasks,
            hosts,
            startup: started.elapsed(),
        }
    }
}

// === impl RunningFleet ===

impl RunningFleet {
    /// Agents still running (a failed agent's task has ended).
    pub fn alive(&self) -> usize {
        self.tasks.iter().filter(|t| !t.is_finished()).count()
    }

    /// Stops every agent gracefully (each removes its presence) and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

impl Drop for RunningFleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
