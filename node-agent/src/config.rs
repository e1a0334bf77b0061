//! The node-agent's typed configuration: defaults, the TOML file, flag/environment overrides, checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use execmesh_proto::subject::{DEFAULT_TENANT, MAX_TOKEN_LEN};
use execmesh_proto::{Token, jetstream};
use execmesh_runtime::config::Rendered;
use execmesh_runtime::nats_settings::{NatsConfig, NatsSettings};
use execmesh_runtime::telemetry::{Export, MetricsAt, TelemetrySettings};

use crate::cli::Cli;
use crate::files::{DEFAULT_ROOTS, Limits};
use crate::grep::GrepLimits;
use crate::guard::GuardConfig;
use crate::tier::Tier;

/// Largest output chunk the agent writes (the stream accepts larger records; this keeps pages
/// and memory small).
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;
/// Smallest chunk size that still makes sense.
pub const MIN_CHUNK_BYTES: usize = 1024;

/// Everything the node-agent needs to know to run. Build it with [`Config::load`] from the
/// command line, or in code with [`Config::new`] and struct update syntax:
///
/// ```
/// # use execmesh_node_agent::Config;
/// let config = Config {
///     max_jobs: 4,
///     ..Config::new("nats://127.0.0.1:4222", "web-1").unwrap()
/// };
/// assert_eq!(config.host_id.as_str(), "web-1");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where NATS is and how to authenticate to it and verify it.
    pub nats: NatsConfig,
    /// Tenant of this host.
    pub tenant: Token,
    /// This host's id in subjects and keys.
    pub host_id: Token,
    /// Labels published in the host's registration, matched by selectors.
    pub labels: BTreeMap<String, String>,
    /// Public keys of the gateways whose signed requests this host acts on: each a base64
    /// Ed25519 key, or a file of such keys, one per line (what the gateway writes to
    /// `<exec_signing_key>.pub`). Without any, every request is refused as unsigned.
    pub gateway_keys: Vec<String>,
    /// The highest tier any request acts with on this host, whatever the gateway says.
    /// Unset: dangerous, so a host limits nothing beyond what the gateway's policy grants unless
    /// its owner lowers it.
    pub max_tier: Tier,
    /// MCP user (or `*` for every other user) → the unix accounts it may run as, the first being
    /// its default. Empty: everything runs as the agent's own account (development only).
    pub run_as: BTreeMap<String, Vec<String>>,
    /// The CommandGuard: on or off, deny-list or allowlist mode, extra deny rules, default
    /// rules switched off, allowed commands.
    pub guard: GuardConfig,
    /// Runbook name → the one hash (`sha256:…`) this host runs it at. Empty: every runbook the
    /// gateway signs runs; otherwise only these, at these hashes (`[runbook_pins]`).
    pub runbook_pins: BTreeMap<String, String>,
    /// Most jobs running at once.
    pub max_jobs: usize,
    /// Timeout of a job whose request names none.
    pub default_timeout_secs: u64,
    /// Time between SIGTERM and SIGKILL when a job is stopped without a grace of its own.
    pub kill_grace_ms: u64,
    /// Time between presence heartbeats; a heartbeat lives three intervals.
    pub heartbeat_interval_ms: u64,
    /// Age limit of MESH_OUT when this agent creates it.
    pub output_retention_secs: u64,
    /// Age limit of `mesh_jobs` when this agent creates it.
    pub job_retention_secs: u64,
    /// Output bytes kept per job; the rest is counted and dropped.
    pub max_output_bytes_per_job: u64,
    /// Output bytes one user's jobs may keep in MESH_OUT from this host within the output
    /// retention; past it their output is counted and dropped.
    pub max_output_bytes_per_user: u64,
    /// Output bytes all jobs on this host may keep in MESH_OUT within the output retention.
    pub max_output_bytes_per_host: u64,
    /// The disk the mesh's JetStream store may use, shared out between its streams and buckets
    /// ([`jetstream::StoreLimits`]); the agent bounds each stream it opens by its share.
    pub jetstream_budget_bytes: u64,
    /// Target chunk size (and longest line before it is cut).
    pub chunk_bytes: usize,
    /// Longest wait before pending output is published.
    pub coalesce_ms: u64,
    /// Shortest time between two progress writes of a running job's status: output is
    /// counted as it is published, and the status rewritten at most this often, only when
    /// the counts changed (a status write per chunk would double the KV traffic of output).
    pub progress_interval_ms: u64,
    /// How long running jobs may finish after a shutdown signal before they are killed.
    pub shutdown_grace_ms: u64,
    /// Shell that runs each command as `<shell> -c <cmd>`.
    pub shell: PathBuf,
    /// Shells kept started ahead of time, so a job does not wait for its shell to start; 0
    /// starts a fresh shell for every job. Idle ones do not count against `max_jobs`.
    pub warm_shells: usize,
    /// Replicas of the streams and buckets this agent creates.
    pub replicas: usize,
    /// Directories the file tool may read and change; canonicalised at start, where a missing
    /// one is skipped with a warning.
    pub file_roots: Vec<PathBuf>,
    /// Whether the file tool reads and changes regular files with more than one hard link
    /// (off: refused, since a hard link inside a root can name a file outside them).
    pub file_allow_hardlinks: bool,
    /// Most bytes one file read returns (a text page or raw bytes).
    pub file_max_read_bytes: u64,
    /// Most bytes one file write or append carries.
    pub file_max_write_bytes: u64,
    /// Most bytes one copy may write to this host.
    pub file_max_copy_bytes: u64,
    /// Seconds between collections of the host's fact pack (it is also collected at start and
    /// on a refresh request).
    pub facts_interval_secs: u64,
    /// Results (matches, or files in count / files mode) a grep returns when its request names
    /// no `max_matches`.
    pub grep_default_max_matches: u64,
    /// Most results a grep returns, whatever its request asks.
    pub grep_max_matches: u64,
    /// Longest a grep searches before it returns what it found (the request's expiry may cut
    /// it shorter).
    pub grep_timeout_secs: u64,
    /// Most bytes of results (matches, file counts, digest groups) in one grep reply; replies
    /// also stay under the NATS max payload.
    pub grep_max_reply_bytes: u64,
    /// Redact secrets from job output before it is published (line by line).
    pub output_redaction: bool,
    /// Regular expressions redacted on top of the built-in rules (from stored commands, and
    /// from output with `output_redaction`).
    pub redact_patterns: Vec<String>,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax.
    pub log: String,
    /// Log JSON lines instead of text.
    pub log_json: bool,
    /// Where traces are exported; `None`: they are not.
    pub telemetry: Option<Export>,
    /// Where `/metrics` is served (nowhere by default).
    pub metrics: MetricsAt,
}

/// Why a configuration cannot be used. [`ConfigError::Invalid`] lists every bad value at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` cannot be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("configuration file {} is not valid TOML: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    /// Values that are out of range, of the wrong type, or unknown keys; one sentence each.
    #[error("{}", Rendered(problems))]
    Invalid { problems: Vec<String> },
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nats: NatsConfig::default(),
            tenant: default_tenant(),
            host_id: default_host_id(),
            labels: BTreeMap::new(),
            gateway_keys: Vec::new(),
            max_tier: Tier::Dangerous,
            run_as: BTreeMap::new(),
            guard: GuardConfig::default(),
            runbook_pins: BTreeMap::new(),
            max_jobs: 64,
            default_timeout_secs: 3600,
            kill_grace_ms: 5000,
            heartbeat_interval_ms: 2000,
            output_retention_secs: jetstream::DEFAULT_OUTPUT_RETENTION.as_secs(),
            job_retention_secs: jetstream::DEFAULT_JOB_RETENTION.as_secs(),
            max_output_bytes_per_job: 256 * 1024 * 1024,
            max_output_bytes_per_user: 512 * 1024 * 1024,
            max_output_bytes_per_host: 1024 * 1024 * 1024,
            jetstream_budget_bytes: jetstream::DEFAULT_STORE_BUDGET_BYTES,
            chunk_bytes: 16 * 1024,
            coalesce_ms: 20,
            progress_interval_ms: 2000,
            shutdown_grace_ms: 10_000,
            shell: PathBuf::from("/bin/bash"),
            warm_shells: 2,
            replicas: 1,
            file_roots: DEFAULT_ROOTS.iter().map(PathBuf::from).collect(),
            file_allow_hardlinks: false,
            file_max_read_bytes: 1024 * 1024,
            file_max_write_bytes: 64 * 1024 * 1024,
            file_max_copy_bytes: 1024 * 1024 * 1024,
            facts_interval_secs: 300,
            grep_default_max_matches: 200,
            grep_max_matches: 10_000,
            grep_timeout_secs: 30,
            grep_max_reply_bytes: 512 * 1024,
            output_redaction: false,
            redact_patterns: Vec::new(),
            log: "info".to_string(),
            log_json: false,
            telemetry: None,
            metrics: MetricsAt::Off,
        }
    }
}

fn default_tenant() -> Token {
    Token::sanitize(DEFAULT_TENANT, MAX_TOKEN_LEN).expect("the default tenant is a valid token")
}

/// The machine's hostname folded into a token, or `localhost` when nothing usable is left.
pub fn default_host_id() -> Token {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| Token::sanitize(&h.to_string_lossy(), MAX_TOKEN_LEN))
        .or_else(|| Token::sanitize("localhost", MAX_TOKEN_LEN))
        .expect("`localhost` is a valid token")
}

// === impl Config ===

impl Config {
    /// A default configuration for `host_id` talking to `nats_url`; the common start for tests.
    pub fn new(nats_url: &str, host_id: &str) -> Result<Config, ConfigError> {
        let host_id = Token::parse("host id", host_id).map_err(|e| ConfigError::Invalid {
            problems: vec![format!("host_id: {e}")],
        })?;
        Ok(Config {
            nats: NatsConfig::new(nats_url),
            host_id,
            ..Config::default()
        })
    }

    /// Builds the configuration from defaults, the TOML file named by `cli.config`, and the
    /// flags/environment in `cli` (which win), then [validates](Config::validate) it. Every bad
    /// value is reported, not just the first.
    pub fn load(cli: Cli) -> Result<Config, ConfigError> {
        let (file, file_path) = match &cli.config {
            Some(path) => (read_file(path)?, Some(path.clone())),
            None => (toml::Table::new(), None),
        };
        Self::load_table(cli, file, file_path)
    }

    /// [`Config::load`] over a TOML table already read from `file_path` (the relay reads its
    /// file first and passes on the keys it shares with the agent).
    pub fn load_table(
        cli: Cli,
        file: toml::Table,
        file_path: Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let mut l = Layers {
            file,
            file_path,
            problems: Vec::new(),
        };
        let d = Config::default();
        let c = &cli;

        let tenant_s: String = l.get("tenant", "--tenant", &c.tenant, d.tenant.to_string());
        let host_s: Option<String> = l.get_opt("host_id", "--host-id", &c.host_id);
        let nats = c.nats.clone().or(l.shared());
        let mut config = Config {
            nats: nats.resolve(),
            tenant: d.tenant.clone(),
            host_id: d.host_id.clone(),
            labels: BTreeMap::new(),
            gateway_keys: l.strings("gateway_keys", &c.gateway_keys, d.gateway_keys),
            max_tier: l.get("max_tier", "--max-tier", &c.max_tier, d.max_tier),
            run_as: BTreeMap::new(),
            guard: d.guard.clone(),
            runbook_pins: BTreeMap::new(),
            max_jobs: l.get("max_jobs", "--max-jobs", &c.max_jobs, d.max_jobs),
            default_timeout_secs: l.get(
                "default_timeout_secs",
                "--default-timeout-secs",
                &c.default_timeout_secs,
                d.default_timeout_secs,
            ),
            kill_grace_ms: l.get(
                "kill_grace_ms",
                "--kill-grace-ms",
                &c.kill_grace_ms,
                d.kill_grace_ms,
            ),
            heartbeat_interval_ms: l.get(
                "heartbeat_interval_ms",
                "--heartbeat-interval-ms",
                &c.heartbeat_interval_ms,
                d.heartbeat_interval_ms,
            ),
            output_retention_secs: l.get(
                "output_retention_secs",
                "--output-retention-secs",
                &c.output_retention_secs,
                d.output_retention_secs,
            ),
            job_retention_secs: l.get(
                "job_retention_secs",
                "--job-retention-secs",
                &c.job_retention_secs,
                d.job_retention_secs,
            ),
            max_output_bytes_per_job: l.get(
                "max_output_bytes_per_job",
                "--max-output-bytes-per-job",
                &c.max_output_bytes_per_job,
                d.max_output_bytes_per_job,
            ),
            max_output_bytes_per_user: l.get(
                "max_output_bytes_per_user",
                "--max-output-bytes-per-user",
                &c.max_output_bytes_per_user,
                d.max_output_bytes_per_user,
            ),
            max_output_bytes_per_host: l.get(
                "max_output_bytes_per_host",
                "--max-output-bytes-per-host",
                &c.max_output_bytes_per_host,
                d.max_output_bytes_per_host,
            ),
            jetstream_budget_bytes: l.get(
                "jetstream_budget_bytes",
                "--jetstream-budget-bytes",
                &c.jetstream_budget_bytes,
                d.jetstream_budget_bytes,
            ),
            chunk_bytes: l.get(
                "chunk_bytes",
                "--chunk-bytes",
                &c.chunk_bytes,
                d.chunk_bytes,
            ),
            coalesce_ms: l.get(
                "coalesce_ms",
                "--coalesce-ms",
                &c.coalesce_ms,
                d.coalesce_ms,
            ),
            progress_interval_ms: l.get(
                "progress_interval_ms",
                "--progress-interval-ms",
                &c.progress_interval_ms,
                d.progress_interval_ms,
            ),
            shutdown_grace_ms: l.get(
                "shutdown_grace_ms",
                "--shutdown-grace-ms",
                &c.shutdown_grace_ms,
                d.shutdown_grace_ms,
            ),
            shell: l.get("shell", "--shell", &c.shell, d.shell),
            warm_shells: l.get(
                "warm_shells",
                "--warm-shells",
                &c.warm_shells,
                d.warm_shells,
            ),
            replicas: l.get("replicas", "--replicas", &c.replicas, d.replicas),
            file_roots: l.paths("file_roots", &c.file_roots, d.file_roots),
            file_allow_hardlinks: l.get(
                "file_allow_hardlinks",
                "--file-allow-hardlinks",
                &c.file_allow_hardlinks,
                d.file_allow_hardlinks,
            ),
            file_max_read_bytes: l.get(
                "file_max_read_bytes",
                "--file-max-read-bytes",
                &c.file_max_read_bytes,
                d.file_max_read_bytes,
            ),
            file_max_write_bytes: l.get(
                "file_max_write_bytes",
                "--file-max-write-bytes",
                &c.file_max_write_bytes,
                d.file_max_write_bytes,
            ),
            file_max_copy_bytes: l.get(
                "file_max_copy_bytes",
                "--file-max-copy-bytes",
                &c.file_max_copy_bytes,
                d.file_max_copy_bytes,
            ),
            facts_interval_secs: l.get(
                "facts_interval_secs",
                "--facts-interval-secs",
                &c.facts_interval_secs,
                d.facts_interval_secs,
            ),
            grep_default_max_matches: l.get(
                "grep_default_max_matches",
                "--grep-default-max-matches",
                &c.grep_default_max_matches,
                d.grep_default_max_matches,
            ),
            grep_max_matches: l.get(
                "grep_max_matches",
                "--grep-max-matches",
                &c.grep_max_matches,
                d.grep_max_matches,
            ),
            grep_timeout_secs: l.get(
                "grep_timeout_secs",
                "--grep-timeout-secs",
                &c.grep_timeout_secs,
                d.grep_timeout_secs,
            ),
            grep_max_reply_bytes: l.get(
                "grep_max_reply_bytes",
                "--grep-max-reply-bytes",
                &c.grep_max_reply_bytes,
                d.grep_max_reply_bytes,
            ),
            output_redaction: l.get(
                "output_redaction",
                "--output-redaction",
                &c.output_redaction,
                d.output_redaction,
            ),
            redact_patterns: l.patterns("redact_patterns", &c.redact_patterns),
            log: l.get("log", "--log", &c.log, d.log),
            log_json: l.get("log_json", "--log-json", &c.log_json, d.log_json),
            telemetry: None,
            metrics: MetricsAt::Off,
        };
        let telemetry: TelemetrySettings = c.telemetry.clone().or(l.shared());
        config.telemetry = telemetry.resolve(|key| std::env::var(key).ok(), &mut l.problems);
        config.metrics = telemetry.metrics(MetricsAt::Off, &mut l.problems);

        match Token::parse("tenant", &tenant_s) {
            Ok(t) => config.tenant = t,
            Err(e) => l.problems.push(format!("tenant: {e}")),
        }
        if let Some(host) = host_s {
            match Token::parse("host id", &host) {
                Ok(t) => config.host_id = t,
                Err(e) => l.problems.push(format!("host_id: {e}")),
            }
        }
        config.labels = l.labels(&cli.labels);
        config.runbook_pins = l.runbook_pins(&cli.runbook_pins);
        config.run_as = l.run_as(&cli.run_as);
        config.guard = l.guard(&cli.guard_enabled, d.guard);
        l.check_unknown_keys();

        let mut problems = l.problems;
        problems.extend(config.problems());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    /// Checks values that types alone cannot (ranges, files, URLs); `run` calls it first, so a
    /// configuration built in code is held to the same rules as one loaded from a file.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid { problems })
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.nats.url.trim().is_empty() {
            p.push("nats_url: is empty".to_string());
        }
        for url in self.nats.urls() {
            if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                p.push(format!("nats_url: `{url}`: {e}"));
            }
        }
        if self.nats.creds.is_some() && self.nats.nkey_seed.is_some() {
            p.push("nats_creds and nats_nkey_seed: give one way to authenticate, not both".into());
        }
        for (key, path) in [
            ("nats_creds", &self.nats.creds),
            ("nats_nkey_seed", &self.nats.nkey_seed),
            ("nats_tls_ca", &self.nats.tls_ca),
            ("nats_tls_cert", &self.nats.tls_cert),
            ("nats_tls_key", &self.nats.tls_key),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                p.push(format!("{key}: {} is not a readable file", path.display()));
            }
        }
        self.nats.check_tls_pair(&mut p);
        let mut range = |key: &str, value: u64, min: u64, max: u64| {
            if value < min || value > max {
                p.push(format!("{key}: {value} is outside {min}..={max}"));
            }
        };
        range("max_jobs", self.max_jobs as u64, 1, 100_000);
        range(
            "default_timeout_secs",
            self.default_timeout_secs,
            1,
            366 * 24 * 3600,
        );
        range("kill_grace_ms", self.kill_grace_ms, 0, 3_600_000);
        range(
            "heartbeat_interval_ms",
            self.heartbeat_interval_ms,
            100,
            600_000,
        );
        range(
            "output_retention_secs",
            self.output_retention_secs,
            1,
            u64::MAX,
        );
        range("job_retention_secs", self.job_retention_secs, 1, u64::MAX);
        range(
            "max_output_bytes_per_job",
            self.max_output_bytes_per_job,
            1,
            u64::MAX,
        );
        range(
            "max_output_bytes_per_user",
            self.max_output_bytes_per_user,
            1,
            u64::MAX,
        );
        range(
            "max_output_bytes_per_host",
            self.max_output_bytes_per_host,
            1,
            u64::MAX,
        );
        range(
            "jetstream_budget_bytes",
            self.jetstream_budget_bytes,
            jetstream::MIN_STORE_BUDGET_BYTES,
            i64::MAX as u64,
        );
        range(
            "chunk_bytes",
            self.chunk_bytes as u64,
            MIN_CHUNK_BYTES as u64,
            MAX_CHUNK_BYTES as u64,
        );
        range("coalesce_ms", self.coalesce_ms, 0, 10_000);
        range(
            "progress_interval_ms",
            self.progress_interval_ms,
            100,
            600_000,
        );
        range("shutdown_grace_ms", self.shutdown_grace_ms, 0, 3_600_000);
        range("replicas", self.replicas as u64, 1, 5);
        range(
            "file_max_read_bytes",
            self.file_max_read_bytes,
            1024,
            64 * 1024 * 1024,
        );
        range(
            "file_max_write_bytes",
            self.file_max_write_bytes,
            1,
            u64::MAX,
        );
        range("file_max_copy_bytes", self.file_max_copy_bytes, 1, u64::MAX);
        range("warm_shells", self.warm_shells as u64, 0, 64);
        range("facts_interval_secs", self.facts_interval_secs, 1, 86_400);
        range("grep_max_matches", self.grep_max_matches, 1, 1_000_000);
        range(
            "grep_default_max_matches",
            self.grep_default_max_matches,
            1,
            self.grep_max_matches.max(1),
        );
        range("grep_timeout_secs", self.grep_timeout_secs, 1, 3600);
        range(
            "grep_max_reply_bytes",
            self.grep_max_reply_bytes,
            16 * 1024,
            64 * 1024 * 1024,
        );
        if !self.shell.is_absolute() {
            p.push(format!(
                "shell: {} is not an absolute path",
                self.shell.display()
            ));
        } else if !self.shell.is_file() {
            p.push(format!("shell: {} does not exist", self.shell.display()));
        }
        for root in &self.file_roots {
            if !root.is_absolute() {
                p.push(format!(
                    "file_roots: {} is not an absolute path",
                    root.display()
                ));
            }
        }
        for entry in &self.gateway_keys {
            if let Err(e) = crate::signature::keys_of(entry) {
                p.push(format!("gateway_keys: {e}"));
            }
        }
        p.extend(crate::runas::check_mapping(&self.run_as));
        p.extend(self.guard.problems());
        for (k, v) in &self.labels {
            if let Err(e) = check_label(k, v) {
                p.push(format!("label `{k}`: {e}"));
            }
        }
        if let Err(e) = execmesh_proto::redact::Redactor::new(&self.redact_patterns) {
            p.push(format!("redact_patterns: {e}"));
        }
        if let Err(e) = execmesh_runtime::logging::check_filter(&self.log) {
            p.push(format!("log: `{}`: {e}", self.log));
        }
        p
    }

    /// [`Config::heartbeat_interval_ms`] as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// Lifetime of one heartbeat: three intervals, at least one second (the server's minimum).
    pub fn presence_ttl(&self) -> Duration {
        let ms = self.heartbeat_interval_ms.saturating_mul(3);
        Duration::from_secs(ms.div_ceil(1000).max(1))
    }

    /// [`Config::default_timeout_secs`] as a duration.
    pub fn default_timeout(&self) -> Duration {
        Duration::from_secs(self.default_timeout_secs)
    }

    /// [`Config::kill_grace_ms`] as a duration.
    pub fn kill_grace(&self) -> Duration {
        Duration::from_millis(self.kill_grace_ms)
    }

    /// The byte limits of the mesh's streams and buckets, from [`Config::jetstream_budget_bytes`].
    pub fn store_limits(&self) -> jetstream::StoreLimits {
        jetstream::StoreLimits::from_budget(self.jetstream_budget_bytes)
    }

    /// [`Config::coalesce_ms`] as a duration.
    pub fn coalesce(&self) -> Duration {
        Duration::from_millis(self.coalesce_ms)
    }

    /// [`Config::progress_interval_ms`] as a duration.
    pub fn progress_interval(&self) -> Duration {
        Duration::from_millis(self.progress_interval_ms)
    }

    /// The file tool's limits.
    pub fn file_limits(&self) -> Limits {
        Limits {
            max_read_bytes: self.file_max_read_bytes,
            max_write_bytes: self.file_max_write_bytes,
            max_copy_bytes: self.file_max_copy_bytes,
        }
    }

    /// [`Config::facts_interval_secs`] as a duration.
    pub fn facts_interval(&self) -> Duration {
        Duration::from_secs(self.facts_interval_secs)
    }

    /// The grep limits.
    pub fn grep_limits(&self) -> GrepLimits {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        GrepLimits {
            default_max_matches: clamp(self.grep_default_max_matches),
            max_matches: clamp(self.grep_max_matches),
            timeout: Duration::from_secs(self.grep_timeout_secs),
            max_reply_bytes: usize::try_from(self.grep_max_reply_bytes).unwrap_or(usize::MAX),
        }
    }

    /// [`Config::shutdown_grace_ms`] as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// Label keys are short identifiers; values are free text without control characters.
fn check_label(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 63 {
        return Err("keys are 1 to 63 characters".into());
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        return Err(format!(
            "key has `{c}`; allowed are letters, digits and `-_./`"
        ));
    }
    if value.len() > 255 {
        return Err("values are at most 255 bytes".into());
    }
    if value.chars().any(char::is_control) {
        return Err("value has a control character".into());
    }
    Ok(())
}

pub fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// How a table of strings (`[labels]`, `[runbook_pins]`) is named in problems.
struct TableNames {
    /// The file's key.
    key: &'static str,
    /// What a value must be.
    values: &'static str,
    /// What the table looks like.
    example: &'static str,
    /// One pair of the flag, in words.
    item: &'static str,
    /// The flag and variable that give pairs.
    source: &'static str,
    /// The shape of a pair.
    form: &'static str,
}

/// The file layer under the flag/environment layer, collecting problems as keys are read.
struct Layers {
    file: toml::Table,
    file_path: Option<PathBuf>,
    problems: Vec<String>,
}

/// The file's keys besides the NATS ones (those are [`NatsSettings`]'s).
const KNOWN_KEYS: &[&str] = &[
    "tenant",
    "host_id",
    "labels",
    "gateway_keys",
    "max_tier",
    "run_as",
    "guard",
    "runbook_pins",
    "max_jobs",
    "default_timeout_secs",
    "kill_grace_ms",
    "heartbeat_interval_ms",
    "output_retention_secs",
    "job_retention_secs",
    "max_output_bytes_per_job",
    "max_output_bytes_per_user",
    "max_output_bytes_per_host",
    "jetstream_budget_bytes",
    "chunk_bytes",
    "coalesce_ms",
    "progress_interval_ms",
    "shutdown_grace_ms",
    "shell",
    "warm_shells",
    "replicas",
    "file_roots",
    "file_allow_hardlinks",
    "file_max_read_bytes",
    "file_max_write_bytes",
    "file_max_copy_bytes",
    "facts_interval_secs",
    "grep_default_max_matches",
    "grep_max_matches",
    "grep_timeout_secs",
    "grep_max_reply_bytes",
    "output_redaction",
    "redact_patterns",
    "log",
    "log_json",
];

impl Layers {
    /// The keys of the file that settings every service shares (the NATS ones, the telemetry
    /// ones) declare, read (and checked) as those settings.
    fn shared<S: clap::Args + serde::de::DeserializeOwned + Default>(&mut self) -> S {
        let keys = execmesh_runtime::config::keys_of::<S>();
        let table = (self.file.iter())
            .filter(|(key, _)| keys.contains(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let file = PathBuf::from(self.file_name());
        execmesh_runtime::config::from_table(table, &keys, &file, &mut self.problems)
    }

    fn get<T: Setting>(&mut self, key: &str, flag: &str, cli: &Option<String>, default: T) -> T {
        self.get_opt(key, flag, cli).unwrap_or(default)
    }

    fn get_opt<T: Setting>(&mut self, key: &str, flag: &str, cli: &Option<String>) -> Option<T> {
        if let Some(raw) = cli {
            return match T::from_text(raw) {
                Ok(v) => Some(v),
                Err(why) => {
                    let env = format!("EXECMESH_{}", key.to_ascii_uppercase());
                    self.problems
                        .push(format!("{key} = `{raw}` (from {flag} or {env}): {why}"));
                    None
                }
            };
        }
        let value = self.file.get(key)?;
        match T::from_toml(value) {
            Ok(v) => Some(v),
            Err(why) => {
                let file = self.file_name();
                self.problems
                    .push(format!("{key} = {value} (in {file}): {why}"));
                None
            }
        }
    }

    /// A list of paths: the flag (repeated, or comma-separated in the environment) wins over
    /// the file's array of strings.
    fn paths(&mut self, key: &str, cli: &[String], default: Vec<PathBuf>) -> Vec<PathBuf> {
        if !cli.is_empty() {
            return cli
                .iter()
                .map(|s| s.trim())
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
        match self.file.get(key) {
            None => default,
            Some(toml::Value::Array(items)) => {
                let mut paths = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) if !s.is_empty() => paths.push(PathBuf::from(s)),
                        _ => {
                            let file = self.file_name();
                            self.problems.push(format!(
                                "{key}: {item} (in {file}): expected a non-empty path string"
                            ));
                        }
                    }
                }
                paths
            }
            Some(other) => {
                let file = self.file_name();
                self.problems.push(format!(
                    "{key} = {other} (in {file}): expected an array of paths such as [\"/var/log\"]"
                ));
                default
            }
        }
    }

    /// A list of strings (keys or paths): the flag (repeated, or comma-separated in the
    /// environment) wins over the file's array.
    fn strings(&mut self, key: &str, cli: &[String], default: Vec<String>) -> Vec<String> {
        let default = default.iter().map(PathBuf::from).collect();
        self.paths(key, cli, default)
            .into_iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    /// A list of regular expressions, kept exactly as written (no trimming): the flag
    /// (repeated, or one per line in the environment) wins over the file's array of strings.
    fn patterns(&mut self, key: &str, cli: &[String]) -> Vec<String> {
        if !cli.is_empty() {
            return cli.iter().filter(|s| !s.is_empty()).cloned().collect();
        }
        match self.file.get(key) {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => {
                let mut patterns = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(s) if !s.is_empty() => patterns.push(s.to_string()),
                        _ => {
                            let file = self.file_name();
                            self.problems.push(format!(
                                "{key}: {item} (in {file}): expected a non-empty regular expression string"
                            ));
                        }
                    }
                }
                patterns
            }
            Some(other) => {
                let file = self.file_name();
                self.problems.push(format!(
                    "{key} = {other} (in {file}): expected an array of regular expression strings"
                ));
                Vec::new()
            }
        }
    }

    /// `[run_as]`: `user = "account"` or `user = ["account", …]`; then `--run-as user=account`
    /// pairs (several for one user add accounts in order).
    fn run_as(&mut self, cli: &[String]) -> BTreeMap<String, Vec<String>> {
        let mut mapping: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match self.file.get("run_as") {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (user, accounts) in t {
                    let accounts = match accounts {
                        toml::Value::String(a) => Some(vec![a.clone()]),
                        toml::Value::Array(items) => items
                            .iter()
                            .map(|i| i.as_str().map(str::to_string))
                            .collect::<Option<Vec<_>>>(),
                        _ => None,
                    };
                    match accounts {
                        Some(accounts) => {
                            mapping.insert(user.clone(), accounts);
                        }
                        None => {
                            let file = self.file_name();
                            self.problems.push(format!(
                                "run_as.{user} (in {file}): expected an account name or a list of them"
                            ));
                        }
                    }
                }
            }
            Some(other) => {
                let file = self.file_name();
                self.problems.push(format!(
                    "run_as = {other} (in {file}): expected a table such as `[run_as]` / `alice = \"alice\"`"
                ));
            }
        }
        for pair in cli {
            match pair.split_once('=') {
                Some((user, account)) => mapping
                    .entry(user.trim().to_string())
                    .or_default()
                    .push(account.trim().to_string()),
                None => self.problems.push(format!(
                    "run-as `{pair}` (from --run-as or EXECMESH_RUN_AS): expected USER=ACCOUNT"
                )),
            }
        }
        mapping
    }

    /// `[guard]` (see [`GuardConfig::read_toml`]); `--guard-enabled` wins over `enabled`.
    fn guard(&mut self, cli_enabled: &Option<String>, default: GuardConfig) -> GuardConfig {
        let mut guard = default;
        let file = self.file_name();
        if let Some(value) = self.file.get("guard").cloned() {
            self.problems.extend(guard.read_toml(&value, &file));
        }
        if let Some(raw) = cli_enabled {
            match bool::from_text(raw) {
                Ok(b) => guard.enabled = b,
                Err(why) => self.problems.push(format!(
                    "guard_enabled = `{raw}` (from --guard-enabled or EXECMESH_GUARD_ENABLED): {why}"
                )),
            }
        }
        guard
    }

    fn labels(&mut self, cli: &[String]) -> BTreeMap<String, String> {
        self.string_table(
            cli,
            &TableNames {
                key: "labels",
                values: "label values are strings",
                example: "`[labels]` / `role = \"web\"`",
                item: "label",
                source: "--label or EXECMESH_LABELS",
                form: "KEY=VALUE",
            },
        )
    }

    /// `[runbook_pins]` (`name = "sha256:…"`) and `--runbook-pin NAME=HASH`, which win.
    fn runbook_pins(&mut self, cli: &[String]) -> BTreeMap<String, String> {
        let pins = self.string_table(
            cli,
            &TableNames {
                key: "runbook_pins",
                values: "a pin is the runbook's hash, a string `sha256:…`",
                example: "`[runbook_pins]` / `disk-usage = \"sha256:…\"`",
                item: "runbook pin",
                source: "--runbook-pin or EXECMESH_RUNBOOK_PINS",
                form: "NAME=HASH",
            },
        );
        for (name, hash) in &pins {
            let hex = hash.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                self.problems.push(format!(
                    "runbook pin `{name}`: `{hash}` is not a runbook hash (`sha256:` and 64 hex digits, as `execmeshctl runbooks` shows)"
                ));
            }
        }
        pins
    }

    /// A table of strings in the file, then `KEY=VALUE` pairs from the command line or
    /// environment (`cli`), which win; `names` words the problems.
    fn string_table(&mut self, cli: &[String], names: &TableNames) -> BTreeMap<String, String> {
        let TableNames {
            key,
            values,
            example,
            item,
            source,
            form,
        } = names;
        let mut table = BTreeMap::new();
        match self.file.get(*key) {
            None => {}
            Some(toml::Value::Table(t)) => {
                for (k, v) in t {
                    match v {
                        toml::Value::String(s) => {
                            table.insert(k.clone(), s.clone());
                        }
                        other => {
                            let file = self.file_name();
                            self.problems
                                .push(format!("{key}.{k} = {other} (in {file}): {values}"));
                        }
                    }
                }
            }
            Some(other) => {
                let file = self.file_name();
                self.problems.push(format!(
                    "{key} = {other} (in {file}): expected a table such as {example}"
                ));
            }
        }
        for pair in cli {
            match pair.split_once('=') {
                Some((k, v)) => {
                    table.insert(k.trim().to_string(), v.trim().to_string());
                }
                None => self
                    .problems
                    .push(format!("{item} `{pair}` (from {source}): expected {form}")),
            }
        }
        table
    }

    fn check_unknown_keys(&mut self) {
        let mut shared_keys = execmesh_runtime::config::keys_of::<NatsSettings>();
        shared_keys.extend(execmesh_runtime::config::keys_of::<TelemetrySettings>());
        let unknown: Vec<String> = self
            .file
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()) && !shared_keys.contains(k))
            .cloned()
            .collect();
        for key in unknown {
            let file = self.file_name();
            self.problems.push(format!("unknown key `{key}` in {file}"));
        }
    }

    fn file_name(&self) -> String {
        self.file_path
            .as_deref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the configuration file".into())
    }
}

/// A configuration value that can come from a flag/environment string or a TOML value.
trait Setting: Sized {
    fn from_text(s: &str) -> Result<Self, String>;
    fn from_toml(v: &toml::Value) -> Result<Self, String>;
}

impl Setting for u64 {
    fn from_text(s: &str) -> Result<Self, String> {
        s.trim()
            .replace('_', "")
            .parse()
            .map_err(|_| "not a whole number".to_string())
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::Integer(i) => u64::try_from(*i).map_err(|_| "is negative".to_string()),
            _ => Err("expected a whole number".into()),
        }
    }
}

impl Setting for usize {
    fn from_text(s: &str) -> Result<Self, String> {
        u64::from_text(s).and_then(|v| usize::try_from(v).map_err(|_| "is too large".to_string()))
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        u64::from_toml(v).and_then(|v| usize::try_from(v).map_err(|_| "is too large".to_string()))
    }
}

impl Setting for bool {
    fn from_text(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" | "" => Ok(false),
            _ => Err("expected true or false".into()),
        }
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| "expected true or false".into())
    }
}

impl Setting for String {
    fn from_text(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| "expected a string".into())
    }
}

impl Setting for Tier {
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse()
            .map_err(|e: execmesh_proto::UnknownTier| e.to_string())
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        String::from_toml(v).and_then(|s| Self::from_text(&s))
    }
}

impl Setting for PathBuf {
    fn from_text(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("is empty".into());
        }
        Ok(PathBuf::from(s))
    }
    fn from_toml(v: &toml::Value) -> Result<Self, String> {
        String::from_toml(v).and_then(|s| Self::from_text(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(file: &str, cli: Cli) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(file.as_bytes()).expect("write");
        Config::load(Cli {
            config: Some(f.path().to_path_buf()),
            ..cli
        })
    }

    #[test]
    fn defaults_are_valid() {
        let config = Config::new("nats://127.0.0.1:4222", "web-1").expect("valid");
        config.validate().expect("defaults validate");
        assert_eq!(config.tenant.as_str(), "default");
        assert_eq!(config.chunk_bytes, 16 * 1024);
        assert_eq!(config.presence_ttl(), Duration::from_secs(6));
        // Unset, the host caps nothing the gateway grants.
        assert_eq!(config.max_tier, Tier::Dangerous);
    }

    #[test]
    fn the_jetstream_budget_and_output_quotas_come_from_the_file_and_flags_and_are_checked() {
        let d = Config::default();
        assert_eq!(d.store_limits(), jetstream::StoreLimits::default());
        assert_eq!(d.max_output_bytes_per_user, 512 * 1024 * 1024);
        assert_eq!(d.max_output_bytes_per_host, 1024 * 1024 * 1024);

        let config = load(
            "jetstream_budget_bytes = 1073741824\nmax_output_bytes_per_user = 5000\n",
            Cli {
                max_output_bytes_per_host: Some("9000".into()),
                ..Cli::default()
            },
        )
        .expect("valid");
        assert_eq!(
            config.store_limits(),
            jetstream::StoreLimits::from_budget(1024 * 1024 * 1024)
        );
        assert_eq!(
            config.store_limits().out_bytes,
            // AUDIT 10 %, mesh_jobs 5 %, two host buckets 3 % each, four small buckets 1 % each.
            1024 * 1024 * 1024 - 1024 * 1024 * 1024 / 100 * 25
        );
        assert_eq!(config.max_output_bytes_per_user, 5000);
        assert_eq!(config.max_output_bytes_per_host, 9000);

        // A budget too small to share out, and a quota of nothing, are named.
        let err = load(
            "jetstream_budget_bytes = 1000\nmax_output_bytes_per_user = 0\n",
            Cli::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("jetstream_budget_bytes: 1000 is outside")
                && err.contains("max_output_bytes_per_user: 0 is outside"),
            "{err}"
        );
    }

    #[test]
    fn redaction_and_hard_link_settings_load_and_a_bad_pattern_is_named() {
        let config = load(
            "output_redaction = true\nfile_allow_hardlinks = true\nredact_patterns = [\"corp-[0-9]{6}\", \" spaced (?P<secret>x)\"]\n",
            Cli::default(),
        )
        .expect("valid");
        assert!(config.output_redaction);
        assert!(config.file_allow_hardlinks);
        assert_eq!(
            config.redact_patterns,
            ["corp-[0-9]{6}", " spaced (?P<secret>x)"]
        );
        let defaults = Config::default();
        assert!(!defaults.output_redaction && !defaults.file_allow_hardlinks);

        let err = load("redact_patterns = [\"(unclosed\"]\n", Cli::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("redact_patterns") && err.contains("(unclosed"),
            "{err}"
        );
        let config = load(
            "",
            Cli {
                output_redaction: Some("true".into()),
                redact_patterns: vec!["a,b{1,2}".into()],
                ..Cli::default()
            },
        )
        .expect("valid");
        assert!(config.output_redaction);
        assert_eq!(config.redact_patterns, ["a,b{1,2}"]);
    }

    #[test]
    fn new_refuses_a_host_id_that_is_not_a_token() {
        let err = Config::new("nats://x", "Web.1").unwrap_err().to_string();
        assert!(err.contains("host_id") && err.contains("Web.1"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file() {
        let config = load(
            "host_id = \"from-file\"\nmax_jobs = 3\nchunk_bytes = 4096\n[labels]\nrole = \"db\"\n",
            Cli {
                max_jobs: Some("7".into()),
                labels: vec!["dc=fra".into()],
                ..Cli::default()
            },
        )
        .expect("valid");
        assert_eq!(config.host_id.as_str(), "from-file");
        assert_eq!(config.max_jobs, 7);
        assert_eq!(config.chunk_bytes, 4096);
        assert_eq!(config.labels.get("role").map(String::as_str), Some("db"));
        assert_eq!(config.labels.get("dc").map(String::as_str), Some("fra"));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = load(
            "max_jobs = \"many\"\nchunk_bytes = 999999\ncolour = \"blue\"\n",
            Cli {
                host_id: Some("Bad Host".into()),
                coalesce_ms: Some("soon".into()),
                labels: vec!["novalue".into()],
                ..Cli::default()
            },
        )
        .unwrap_err();
        let text = err.to_string();
        for needle in [
            "max_jobs",
            "chunk_bytes",
            "colour",
            "host_id",
            "coalesce_ms",
            "novalue",
        ] {
            assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
        }
        let ConfigError::Invalid { problems } = err else {
            panic!("expected Invalid, got {text}");
        };
        assert_eq!(problems.len(), 6, "{problems:#?}");
    }

    #[test]
    fn a_nats_client_certificate_needs_its_key_and_both_must_exist() {
        let err = Config {
            nats: NatsConfig {
                tls_cert: Some("/nonexistent/client.pem".into()),
                ..NatsConfig::default()
            },
            ..Config::default()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("nats_tls_cert and nats_tls_key go together")
                && err.contains("nats_tls_cert: /nonexistent/client.pem is not a readable file"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = Config::load(Cli {
            config: Some("/nonexistent/agent.toml".into()),
            ..Cli::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/agent.toml"), "{err}");
    }

    #[test]
    fn the_example_file_loads_to_the_defaults_with_every_user_mapped_to_an_unprivileged_account() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/node-agent.example.toml");
        let config = Config::load(Cli {
            config: Some(path.into()),
            ..Cli::default()
        })
        .expect("the example is valid");
        // The safe setup is the example's: nobody's jobs run as the agent's own account (root
        // under the systemd unit), and warm shells, which would, are off.
        let expected = Config {
            run_as: [("*".to_string(), vec!["execmesh-run".to_string()])].into(),
            warm_shells: 0,
            ..Config::default()
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn presence_ttl_rounds_up_to_whole_seconds() {
        let config = Config {
            heartbeat_interval_ms: 300,
            ..Config::default()
        };
        assert_eq!(config.presence_ttl(), Duration::from_secs(1));
        let config = Config {
            heartbeat_interval_ms: 2500,
            ..Config::default()
        };
        assert_eq!(config.presence_ttl(), Duration::from_secs(8));
    }

    #[test]
    fn file_roots_come_from_flags_or_the_file_and_must_be_absolute() {
        assert_eq!(
            Config::default().file_roots,
            ["/tmp", "/var/log", "/srv", "/opt", "/home"].map(PathBuf::from)
        );
        let config = load(
            "file_roots = [\"/srv/app\", \"/var/log\"]\nfile_max_read_bytes = 4096\n",
            Cli::default(),
        )
        .expect("valid");
        assert_eq!(
            config.file_roots,
            ["/srv/app", "/var/log"].map(PathBuf::from)
        );
        assert_eq!(config.file_limits().max_read_bytes, 4096);
        let config = load(
            "file_roots = [\"/srv/app\"]\n",
            Cli {
                file_roots: vec!["/data".into(), "/backup".into()],
                ..Cli::default()
            },
        )
        .expect("valid");
        assert_eq!(config.file_roots, ["/data", "/backup"].map(PathBuf::from));
        let err = load(
            "file_roots = [\"relative/dir\", 3]\nfile_max_read_bytes = 0\n",
            Cli::default(),
        )
        .unwrap_err()
        .to_string();
        for needle in ["relative/dir", "file_roots: 3", "file_max_read_bytes"] {
            assert!(err.contains(needle), "`{needle}` missing from:\n{err}");
        }
        let config = load("file_roots = []\n", Cli::default()).expect("valid");
        assert!(config.file_roots.is_empty());
    }

    #[test]
    fn keys_tier_run_as_and_guard_load_from_the_file_and_flags() {
        use execmesh_proto::signing::{SigningKey, public_key_to_base64};
        let key = public_key_to_base64(&SigningKey::from_bytes(&[1; 32]).verifying_key());
        let config = load(
            &format!(
                "gateway_keys = [\"{key}\"]\nmax_tier = \"standard\"\n[run_as]\nalice = \"alice\"\n\
                 bob = [\"bob\", \"deploy\"]\n[guard]\ndeny = [\"iptables -F\"]\n\
                 disable = [\"power\"]\n"
            ),
            Cli {
                run_as: vec!["carol=carol".into(), "bob=backup".into()],
                ..Cli::default()
            },
        )
        .expect("valid");
        assert_eq!(config.gateway_keys, [key]);
        assert_eq!(config.max_tier, Tier::Standard);
        assert_eq!(config.run_as["alice"], ["alice"]);
        assert_eq!(config.run_as["bob"], ["bob", "deploy", "backup"]);
        assert_eq!(config.run_as["carol"], ["carol"]);
        assert!(config.guard.enabled);
        assert_eq!(config.guard.deny, ["iptables -F"]);
        assert_eq!(config.guard.disable, ["power"]);

        let err = load(
            "gateway_keys = [\"/nonexistent/key.pub\"]\nmax_tier = \"root\"\n[run_as]\nAlice = 3\n\
             [guard]\ndeny = [\"rm [x\"]\ncolour = 1\n",
            Cli {
                guard_enabled: Some("maybe".into()),
                ..Cli::default()
            },
        )
        .unwrap_err()
        .to_string();
        for needle in [
            "/nonexistent/key.pub",
            "max_tier",
            "run_as.Alice",
            "rm [x",
            "guard.colour",
            "guard_enabled",
        ] {
            assert!(err.contains(needle), "`{needle}` missing from:\n{err}");
        }
    }

    #[test]
    fn runbook_pins_load_from_the_file_and_flags_and_a_bad_hash_is_named() {
        let hash = format!("sha256:{}", "ab".repeat(32));
        let config = load(
            &format!("[runbook_pins]\ndisk-usage = \"{hash}\"\n"),
            Cli {
                runbook_pins: vec![format!("cert-expiry={hash}")],
                ..Cli::default()
            },
        )
        .expect("valid");
        assert_eq!(config.runbook_pins.len(), 2);
        assert_eq!(config.runbook_pins["disk-usage"], hash);
        let err = load(
            "[runbook_pins]\ndisk-usage = \"md5:abc\"\nother = 3\n",
            Cli {
                runbook_pins: vec!["no-equals".into()],
                ..Cli::default()
            },
        )
        .unwrap_err()
        .to_string();
        for needle in ["md5:abc", "runbook_pins.other", "no-equals"] {
            assert!(err.contains(needle), "`{needle}` missing from:\n{err}");
        }
    }

    #[test]
    fn labels_are_checked() {
        assert!(check_label("role", "web").is_ok());
        assert!(check_label("", "x").is_err());
        assert!(check_label("a b", "x").is_err());
        assert!(check_label("k", "line\nbreak").is_err());
    }
}
