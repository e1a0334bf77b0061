//! The agent's shared state: identity, NATS handles, job limits, the job registry, stop signals.

use std::sync::Arc;

use async_nats::Client;
use async_nats::jetstream::{self, kv};
use execmesh_proto::redact::Redactor;
use execmesh_proto::signing::RecordKey;
use execmesh_proto::{Token, subject};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use crate::admission::Admission;
use crate::audit::Audit;
use crate::config::Config;
use crate::executor::Executor;
use crate::facts::Facts;
use crate::files::{Files, Roots};
use crate::provision::Mesh;
use crate::quota::Quotas;
use crate::registry::Registry;
use crate::warm::WarmPool;

/// Everything a request handler or a job needs, shared behind an `Arc`.
pub struct Node {
    pub config: Config,
    /// Random id of this agent process, recorded in job statuses and heartbeats; recovery uses
    /// it to tell which run a job belonged to.
    pub instance: String,
    pub client: Client,
    pub js: jetstream::Context,
    /// `mesh_jobs`.
    pub jobs_kv: kv::Store,
    /// Bounds concurrent jobs. A request takes a permit before its child is spawned; the permit
    /// is released when the child is reaped and its output and status are stored, not when the
    /// reply is sent.
    pub permits: Arc<Semaphore>,
    pub registry: Arc<Registry>,
    /// Fired on SIGTERM/SIGINT: take no new work.
    pub stopping: CancellationToken,
    /// Fired when the shutdown grace is over: kill every job still running.
    pub kill_all: CancellationToken,
    /// Fired when even killed jobs could not store their end: stop retrying NATS writes.
    pub hard_stop: CancellationToken,
    /// Job tasks (one per running job).
    pub jobs: TaskTracker,
    /// Request handler tasks (replies in flight).
    pub handlers: TaskTracker,
    /// The file tool: allowed roots, limits, copies in progress.
    pub files: Arc<Files>,
    /// Shells started ahead of time for the next jobs.
    pub warm: Arc<WarmPool>,
    /// Who may do what here: trusted gateway keys and replays, the tier cap, run-as, the guard.
    pub admission: Admission,
    /// The host's fact pack: collected, stored in `mesh_facts`, cached for requests.
    pub facts: Arc<Facts>,
    /// Publishes job and file events to AUDIT.
    pub audit: Audit,
    /// Signs every record this agent writes (output, job statuses, heartbeats, facts, audit
    /// events) as its identity, so a gateway that trusts the identities file can tell them from
    /// records planted by others. `None` without a NATS seed: records go out unsigned, and such
    /// a gateway ignores them.
    pub record_key: Option<Arc<RecordKey>>,
    /// The per-user and per-host output quotas every job's output counts against.
    pub quotas: Arc<Quotas>,
    /// Where jobs run: local children, or (relay mode) remote shells over SSH.
    pub executor: Executor,
    /// Redacts secrets from what is stored or shown of a request (the command in `mesh_jobs`,
    /// audit fields, logs) and, with `output_redaction`, from output.
    pub redactor: Arc<Redactor>,
}

// === impl Node ===

impl Node {
    pub fn new(
        config: Config,
        instance: String,
        client: Client,
        mesh: &Mesh,
        stopping: CancellationToken,
        record_key: Option<Arc<RecordKey>>,
        executor: Executor,
    ) -> Self {
        let js = jetstream::new(client.clone());
        // The roots are canonicalised now (missing ones are skipped with a warning).
        // A relay target's roots are on the target (resolved there); none are local.
        let local_roots: &[std::path::PathBuf] = if executor.is_local() {
            &config.file_roots
        } else {
            &[]
        };
        let roots = Roots::new(local_roots).allowing_hardlinks(config.file_allow_hardlinks);
        let admission = Admission::new(&config, roots.clone());
        let files = Arc::new(Files::with(roots, config.file_limits()));
        let facts = Arc::new(Facts::new(
            js.clone(),
            mesh.facts.clone(),
            &config,
            record_key.clone(),
            executor.clone(),
        ));
        let warm = Arc::new(WarmPool::new(
            &config.shell,
            config.host_id.clone(),
            instance.clone(),
            config.warm_shells,
            if executor.is_local() {
                admission.warm_account()
            } else {
                None
            },
        ));
        // The patterns were checked with the rest of the configuration; were one bad after all,
        // the built-in rules still apply.
        let redactor = Arc::new(Redactor::new(&config.redact_patterns).unwrap_or_else(|e| {
            error!(error = %e, "redact_patterns: using the built-in rules only");
            Redactor::builtin().clone()
        }));
        let audit = Audit::start(
            client.clone(),
            config.tenant.clone(),
            config.host_id.clone(),
            instance.clone(),
            config.replicas,
            record_key.as_deref().cloned(),
            Arc::clone(&redactor),
        );
        let quotas = Arc::new(Quotas::new(
            config.max_output_bytes_per_user,
            config.max_output_bytes_per_host,
            std::time::Duration::from_secs(config.output_retention_secs),
        ));
        Self {
            record_key,
            quotas,
            audit,
            admission,
            warm,
            permits: Arc::new(Semaphore::new(config.max_jobs)),
            config,
            instance,
            client,
            js,
            jobs_kv: mesh.jobs.clone(),
            registry: Arc::new(Registry::default()),
            stopping,
            kill_all: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            jobs: TaskTracker::new(),
            handlers: TaskTracker::new(),
            files,
            facts,
            executor,
            redactor,
        }
    }

    pub fn host(&self) -> &Token {
        &self.config.host_id
    }

    pub fn tenant(&self) -> &Token {
        &self.config.tenant
    }

    /// `mesh.v1.<tenant>.out.<host>.<job>`.
    pub fn out_subject(&self, job: &Token) -> String {
        subject::out(self.tenant(), self.host(), job)
    }

    /// `<tenant>.<host>.<job>` in `mesh_jobs`.
    pub fn job_key(&self, job: &Token) -> String {
        subject::job_key(self.tenant(), self.host(), job)
    }
}
