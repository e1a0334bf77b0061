//! The audit-sink's command line and configuration: a TOML file, overridden key by key by `EXECMESH_*` environment variables and then by flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use execmesh_runtime::nats_settings::{DEFAULT_NATS_URL, NatsConfig, NatsSettings};
use execmesh_runtime::telemetry::{Export, MetricsAt, TelemetrySettings};

use crate::store::{Filter, StoreConfig};

/// Command line of `execmesh-audit-sink`.
#[derive(Debug, Parser)]
#[command(
    name = "execmesh-audit-sink",
    version,
    about = "The execmesh audit-sink: stores every audit event of the mesh in a hash-chained table \
             (SQLite or PostgreSQL) and answers audit queries over NATS.",
    long_about = "The execmesh audit-sink: stores every audit event of the mesh in a hash-chained \
table (SQLite or PostgreSQL) and answers audit queries over NATS.

`serve` (the default) reads the JetStream stream AUDIT with the durable pull consumer `audit-sink` \
(creating the stream if it is missing), stores events in batched transactions, acknowledges them \
only after the commit and stores each event id once, so a crash or a redelivery neither loses nor \
duplicates anything. Each record's hash is sha256(previous hash ‖ the record's columns). Queries \
are served on mesh.v1.<tenant>.svc.audit.query and chain checks on mesh.v1.<tenant>.svc.audit.verify.

`verify` recomputes the chain from the store and names the first record that does not verify \
(exit 1); with an intact chain it lists the events no key of the identities file signed (exit 2). \
`export --jsonl` writes the records matching its filters as JSON lines.

With identities_file (written by `execmesh-gateway nats-config`) every event's signature is checked \
as it arrives and its signer stored with it (and covered by the chain); an event that no listed \
identity entitled to its subject signed is stored with no signer and logged.

Every setting can come from the TOML file given with --config (same name, snake_case), from its \
EXECMESH_* environment variable, or from the flag, which wins. Invalid values stop the program \
with exit code 64.",
    after_help = "Examples:
  execmesh-audit-sink --sqlite-path /var/lib/execmesh/audit/audit.db
  execmesh-audit-sink --store postgres --postgres-url 'host=/run/postgresql dbname=audit'
  execmesh-audit-sink --config /etc/execmesh/audit-sink.toml verify
  execmesh-audit-sink export --jsonl --user alice --since 2026-05-01T00:00:00Z > alice.jsonl"
)]
pub struct Cli {
    /// Settings; each may also come from the config file (same key, snake_case).
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Consume AUDIT into the store and answer queries over NATS (the default).
    Serve,
    /// Recompute the hash chain; print the first record that does not verify and exit 1, or,
    /// with the chain intact, the events no known key signed and exit 2.
    Verify,
    /// Write the records matching the filters, oldest first, one JSON object per line.
    Export(Box<ExportArgs>),
}

/// `export` options.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Write JSON lines (the only format).
    #[arg(long, required = true)]
    pub jsonl: bool,
    /// Write to this file instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// The filters of `export`, the same as those of a query.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time: RFC 3339 (2026-05-01T12:00:00Z) or unix milliseconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (exclusive): RFC 3339 or unix milliseconds.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub job: Option<String>,
    #[arg(long)]
    pub tool: Option<String>,
    /// W3C trace id (32 hex digits).
    #[arg(long)]
    pub trace: Option<String>,
    /// `ok`, `error`, `denied`, `exit_nonzero`, `timed_out`, `killed`, …
    #[arg(long)]
    pub outcome: Option<String>,
    /// Event kind: call-received, call-denied, call-dispatched, call-completed, job-started,
    /// job-finished, file-changed.
    #[arg(long)]
    pub kind: Option<String>,
}

/// Every configurable key. All optional here; [`Config`] holds the resolved values. Unknown keys
/// in the file are refused by [`Config::load`], naming them.
#[derive(Debug, Default, Clone, Args, Deserialize)]
pub struct Settings {
    /// Path of a TOML file with any of these keys.
    #[arg(long, global = true, env = "EXECMESH_AUDIT_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where NATS is and how to authenticate to it and verify it.
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsSettings,
    /// Where traces are exported (OTLP), if anywhere.
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// The mesh's public identities file (`identities.toml`, written by nats-config): each
    /// event's signature is checked on arrival and its signer stored; `verify` reports events
    /// no known key signed. Reread when it changes. Without it nothing is checked.
    #[arg(long, global = true, env = "EXECMESH_IDENTITIES_FILE")]
    pub identities_file: Option<PathBuf>,
    /// `sqlite` (one file, the default) or `postgres`.
    #[arg(long, global = true, env = "EXECMESH_AUDIT_STORE")]
    pub store: Option<String>,
    /// The SQLite file (created with its directory) [default: .execmesh/audit.db].
    #[arg(long, global = true, env = "EXECMESH_AUDIT_SQLITE_PATH")]
    pub sqlite_path: Option<PathBuf>,
    /// PostgreSQL connection string, e.g. postgresql://audit@db.internal/audit or
    /// "host=/run/postgresql dbname=audit" (required with --store postgres).
    #[arg(long, global = true, env = "EXECMESH_AUDIT_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// Most events stored in one transaction [default: 1000].
    #[arg(long, global = true, env = "EXECMESH_AUDIT_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// After the first event of a batch, how long to wait for more before committing, in ms
    /// [default: 20].
    #[arg(long, global = true, env = "EXECMESH_AUDIT_BATCH_LINGER_MS")]
    pub batch_linger_ms: Option<u64>,
    /// Name of the durable consumer on AUDIT; sinks sharing it share the work [default:
    /// audit-sink].
    #[arg(long, global = true, env = "EXECMESH_AUDIT_CONSUMER")]
    pub consumer: Option<String>,
    /// JetStream replicas of the AUDIT stream, when this sink creates it [default: 1].
    #[arg(long, global = true, env = "EXECMESH_REPLICAS")]
    pub replicas: Option<usize>,
    /// Most records one query page may return [default: 1000].
    #[arg(long, global = true, env = "EXECMESH_AUDIT_QUERY_MAX_LIMIT")]
    pub query_max_limit: Option<usize>,
    /// Log filter (tracing EnvFilter syntax) [default: info].
    #[arg(long, global = true, env = "EXECMESH_LOG")]
    pub log: Option<String>,
    /// Log as JSON lines.
    #[arg(long, global = true, env = "EXECMESH_LOG_JSON")]
    pub log_json: Option<bool>,
}

/// Why the configuration is unusable. Every problem is listed, not just the first.
pub use execmesh_runtime::config::ConfigError;

/// The resolved configuration of one audit-sink.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where NATS is and how to authenticate to it and verify it.
    pub nats: NatsConfig,
    /// The identities event signatures are checked against; `None`: not checked (development).
    pub identities_file: Option<PathBuf>,
    /// Where the records are stored.
    pub store: StoreConfig,
    /// Most events per transaction.
    pub batch_size: usize,
    /// How long a started batch waits for more events.
    pub batch_linger: Duration,
    /// The durable consumer's name.
    pub consumer: String,
    /// Replicas of the AUDIT stream when created here.
    pub replicas: usize,
    /// Cap on a query page.
    pub query_max_limit: usize,
    pub log: String,
    pub log_json: bool,
    /// Where traces are exported; `None`: they are not.
    pub telemetry: Option<Export>,
    /// Where `/metrics` is served (nowhere by default).
    pub metrics: MetricsAt,
}

/// Exclusive bounds of the numeric settings.
const MAX_BATCH: usize = 10_000;
const MAX_LINGER_MS: u64 = 10_000;

// === impl Config ===

impl Config {
    /// A configuration with defaults, for tests and embedding.
    pub fn new(nats_url: &str, store: StoreConfig) -> Self {
        Self {
            nats: NatsConfig::new(nats_url),
            identities_file: None,
            store,
            batch_size: 1000,
            batch_linger: Duration::from_millis(20),
            consumer: execmesh_proto::jetstream::AUDIT_CONSUMER.to_string(),
            replicas: 1,
            query_max_limit: 1000,
            log: "info".to_string(),
            log_json: false,
            telemetry: None,
            metrics: MetricsAt::Off,
        }
    }

    /// Resolves flags/env over the config file over defaults.
    pub fn load(cli: &Settings) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let file = match &cli.config {
            Some(path) => read_file(path, &mut problems)?,
            None => Settings::default(),
        };
        let pick = Settings::merge(cli.clone(), file);
        let store = match pick.store.as_deref().unwrap_or("sqlite") {
            "sqlite" => StoreConfig::Sqlite(
                pick.sqlite_path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(".execmesh/audit.db")),
            ),
            "postgres" | "postgresql" => match pick.postgres_url.clone() {
                Some(url) if !url.trim().is_empty() => StoreConfig::Postgres(url),
                _ => {
                    problems.push("store `postgres` needs postgres_url".to_string());
                    StoreConfig::Postgres(String::new())
                }
            },
            other => {
                problems.push(format!("store `{other}` is not `sqlite` or `postgres`"));
                StoreConfig::Sqlite(PathBuf::new())
            }
        };
        let mut config = Self {
            nats: pick.nats.resolve(),
            ..Self::new(DEFAULT_NATS_URL, store)
        };
        config.identities_file = pick.identities_file;
        if let Some(v) = pick.batch_size {
            config.batch_size = v;
        }
        if let Some(v) = pick.batch_linger_ms {
            config.batch_linger = Duration::from_millis(v);
        }
        if let Some(v) = pick.consumer {
            config.consumer = v;
        }
        if let Some(v) = pick.replicas {
            config.replicas = v;
        }
        if let Some(v) = pick.query_max_limit {
            config.query_max_limit = v;
        }
        if let Some(v) = pick.log {
            config.log = v;
        }
        config.log_json = pick.log_json.unwrap_or(false);
        config.telemetry = (pick.telemetry).resolve(|key| std::env::var(key).ok(), &mut problems);
        config.metrics = (pick.telemetry).metrics(MetricsAt::Off, &mut problems);
        if let Err(e) = config.validate() {
            problems.extend(e.problems);
        }
        ConfigError::or_ok(problems, config)
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !self.nats.url.contains(':') {
            problems.push(format!("nats_url `{}` is not a URL", self.nats.url));
        }
        self.nats.check_tls_pair(&mut problems);
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            problems.push(format!("batch_size must be 1..={MAX_BATCH}"));
        }
        if self.batch_linger > Duration::from_millis(MAX_LINGER_MS) {
            problems.push(format!("batch_linger_ms must be at most {MAX_LINGER_MS}"));
        }
        if self.consumer.is_empty()
            || !self
                .consumer
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            problems.push(format!(
                "consumer `{}` must be letters, digits, `-` and `_`",
                self.consumer
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            problems.push("replicas must be 1..=5".to_string());
        }
        if !(1..=crate::store::MAX_PAGE).contains(&self.query_max_limit) {
            problems.push(format!(
                "query_max_limit must be 1..={}",
                crate::store::MAX_PAGE
            ));
        }
        if let StoreConfig::Sqlite(path) = &self.store
            && path.as_os_str().is_empty()
        {
            problems.push("sqlite_path is empty".to_string());
        }
        if let Err(e) = execmesh_runtime::logging::check_filter(&self.log) {
            problems.push(format!("log `{}`: {e}", self.log));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }
}

// === impl FilterArgs ===

impl FilterArgs {
    /// The store filter these flags describe (every record matching, oldest first).
    pub fn to_filter(&self) -> Result<Filter, ConfigError> {
        let mut problems = Vec::new();
        let mut time = |flag: &str, value: &Option<String>| {
            value.as_deref().and_then(|v| match parse_time(v) {
                Some(ms) => Some(ms),
                None => {
                    problems.push(format!(
                        "--{flag} `{v}` is neither RFC 3339 (2026-05-01T12:00:00Z) nor unix milliseconds"
                    ));
                    None
                }
            })
        };
        let since_ms = time("since", &self.since);
        let until_ms = time("until", &self.until);
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Filter {
            tenant: self.tenant.clone(),
            since_ms,
            until_ms,
            user: self.user.clone(),
            host: self.host.clone(),
            job_id: self.job.clone(),
            tool: self.tool.clone(),
            trace_id: self.trace.clone(),
            outcome: self.outcome.clone(),
            kind: self.kind.clone(),
            ..Default::default()
        })
    }
}

/// RFC 3339 or unix milliseconds.
pub fn parse_time(value: &str) -> Option<u64> {
    if let Ok(ms) = value.parse::<u64>() {
        return Some(ms);
    }
    let t =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The settings of the config file at `path`, every bad or unknown key a problem.
fn read_file(path: &Path, problems: &mut Vec<String>) -> Result<Settings, ConfigError> {
    execmesh_runtime::config::read_file(path, &[], problems)
}

impl Settings {
    /// Each key from `over` when set there, else from `under`.
    fn merge(over: Self, under: Self) -> Self {
        execmesh_runtime::layered!(
            over over under:
            identities_file,
            store,
            sqlite_path,
            postgres_url,
            batch_size,
            batch_linger_ms,
            consumer,
            replicas,
            query_max_limit,
            log,
            log_json
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.toml");
        std::fs::write(
            &path,
            "store = \"postgres\"\npostgres_url = \"host=/tmp dbname=a\"\nbatch_size = 50\n",
        )
        .unwrap();
        let cli = Settings {
            config: Some(path),
            batch_size: Some(70),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        assert_eq!(
            config.store,
            StoreConfig::Postgres("host=/tmp dbname=a".into())
        );
        assert_eq!(config.batch_size, 70);
        assert_eq!(config.batch_linger, Duration::from_millis(20));
    }

    #[test]
    fn the_default_store_is_a_sqlite_file_under_execmesh() {
        let config = Config::load(&Settings::default()).unwrap();
        assert_eq!(
            config.store,
            StoreConfig::Sqlite(PathBuf::from(".execmesh/audit.db"))
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let cli = Settings {
            store: Some("postgres".into()),
            batch_size: Some(0),
            consumer: Some("a.b".into()),
            ..Default::default()
        };
        let err = Config::load(&cli).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    #[test]
    fn a_nats_client_certificate_needs_its_key() {
        let mut cli = Settings::default();
        cli.nats.nats_tls_cert = Some("/etc/execmesh/sink.pem".into());
        let err = Config::load(&cli).unwrap_err().to_string();
        assert!(
            err.contains("nats_tls_cert and nats_tls_key go together"),
            "{err}"
        );
        cli.nats.nats_tls_key = Some("/etc/execmesh/sink-key.pem".into());
        let nats = Config::load(&cli).unwrap().nats;
        let (_, key) = nats.tls_client().expect("both given");
        assert_eq!(key, Path::new("/etc/execmesh/sink-key.pem"));
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sink.toml");
        std::fs::write(&path, "batch_sise = 5\n").unwrap();
        let cli = Settings {
            config: Some(path),
            ..Default::default()
        };
        assert!(
            Config::load(&cli)
                .unwrap_err()
                .to_string()
                .contains("batch_sise")
        );
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let cli = Settings {
            config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("audit-sink.example.toml")),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        // The package's /etc/execmesh/audit-sink.toml: the store in the unit's StateDirectory.
        assert_eq!(
            config.store,
            StoreConfig::Sqlite(PathBuf::from("/var/lib/execmesh/audit/audit.db"))
        );
        assert_eq!(
            config.identities_file.as_deref(),
            Some(Path::new("/etc/execmesh/identities.toml"))
        );
    }

    #[test]
    fn times_are_rfc3339_or_unix_milliseconds() {
        assert_eq!(parse_time("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(
            parse_time("2023-11-14T22:13:20.123Z"),
            Some(1_700_000_000_123)
        );
        assert_eq!(parse_time("yesterday"), None);
    }
}
