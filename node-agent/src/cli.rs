//! The node-agent's command line: one flag (and one `EXECMESH_…` variable) per configuration key.
//!
//! Values stay strings here so that [`Config::load`](crate::Config::load) can check all of them
//! together and name every bad one at once, whether it came from a flag, the environment or the
//! TOML file.

use std::path::PathBuf;

use clap::Parser;
use execmesh_runtime::nats_settings::NatsSettings;
use execmesh_runtime::telemetry::TelemetrySettings;

/// `execmesh-node-agent`: executes requests for this host and streams their output into JetStream.
///
/// Every setting can come from the TOML file given with `--config`, from an `EXECMESH_…`
/// environment variable, or from a flag; a flag wins over the environment, which wins over the
/// file. Durations are plain numbers whose unit is in the name (`…-secs`, `…-ms`).
#[derive(Debug, Default, Clone, Parser)]
#[command(name = "execmesh-node-agent", version, about, long_about)]
pub struct Cli {
    /// TOML configuration file; its keys are the flag names with `_` instead of `-`
    /// (for example `nats_url = "nats://10.0.0.5:4222"`, `[labels]` for labels).
    #[arg(long, env = "EXECMESH_AGENT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Where NATS is and how to authenticate to it and verify it.
    #[command(flatten)]
    pub nats: NatsSettings,

    /// Where traces are exported (OTLP), if anywhere.
    #[command(flatten)]
    pub telemetry: TelemetrySettings,

    /// Tenant this host belongs to (`[a-z0-9-]{1,63}`). [default: default]
    #[arg(long, env = "EXECMESH_TENANT", value_name = "TOKEN")]
    pub tenant: Option<String>,

    /// Host id in subjects and keys (`[a-z0-9-]{1,63}`). [default: the hostname, sanitized]
    #[arg(long, env = "EXECMESH_HOST_ID", value_name = "TOKEN")]
    pub host_id: Option<String>,

    /// A label of this host, used by selectors (`role=web`); repeat the flag for more.
    /// In the environment: comma-separated pairs.
    #[arg(
        long = "label",
        env = "EXECMESH_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub labels: Vec<String>,

    /// Pins a runbook: NAME=HASH (the `sha256:…` that `execmeshctl runbooks` shows); repeat
    /// the flag for more. With any pin, this host runs only pinned runbooks, each only at its
    /// pinned hash (an edited runbook is refused until its new hash is pinned); without pins it
    /// runs whatever runbook the gateway signs. In the environment: comma-separated.
    #[arg(
        long = "runbook-pin",
        env = "EXECMESH_RUNBOOK_PINS",
        value_name = "NAME=HASH",
        value_delimiter = ','
    )]
    pub runbook_pins: Vec<String>,

    /// A gateway public key this host trusts (base64 Ed25519, as in the gateway's
    /// `exec-signing.key.pub`), or a file of such keys, one per line; repeat the flag for more.
    /// Only requests signed by one of them are acted on; without any, every request is refused.
    /// In the environment: comma-separated.
    #[arg(
        long = "gateway-key",
        env = "EXECMESH_GATEWAY_KEYS",
        value_name = "KEY|PATH",
        value_delimiter = ','
    )]
    pub gateway_keys: Vec<String>,

    /// Highest tier (readonly, standard, dangerous) any request acts with on this host, whatever
    /// the gateway says: a request acts with the lower of its own tier and this one.
    /// [default: dangerous]
    #[arg(long, env = "EXECMESH_MAX_TIER", value_name = "TIER")]
    pub max_tier: Option<String>,

    /// Maps an MCP user to a unix account it runs as (`alice=alice`, `*=execmesh` for every
    /// other user); repeat the flag for more, or for more accounts of one user (the first is its
    /// default). Adds to the file's `[run_as]`. Without any mapping everything runs as the
    /// agent's own account. In the environment: comma-separated pairs.
    #[arg(
        long = "run-as",
        env = "EXECMESH_RUN_AS",
        value_name = "USER=ACCOUNT",
        value_delimiter = ','
    )]
    pub run_as: Vec<String>,

    /// Check every command with the CommandGuard (the file's `[guard] enabled`).
    /// [default: true]
    #[arg(long, env = "EXECMESH_GUARD_ENABLED", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub guard_enabled: Option<String>,

    /// Most jobs running at once; further requests are refused as busy. [default: 64]
    #[arg(long, env = "EXECMESH_MAX_JOBS", value_name = "N")]
    pub max_jobs: Option<String>,

    /// Wall-clock limit of a job whose request names none. [default: 3600]
    #[arg(long, env = "EXECMESH_DEFAULT_TIMEOUT_SECS", value_name = "SECS")]
    pub default_timeout_secs: Option<String>,

    /// Time between SIGTERM and SIGKILL when a job is stopped. [default: 5000]
    #[arg(long, env = "EXECMESH_KILL_GRACE_MS", value_name = "MS")]
    pub kill_grace_ms: Option<String>,

    /// Time between presence heartbeats; the heartbeat expires after three intervals.
    /// [default: 2000]
    #[arg(long, env = "EXECMESH_HEARTBEAT_INTERVAL_MS", value_name = "MS")]
    pub heartbeat_interval_ms: Option<String>,

    /// How long MESH_OUT keeps output, when this agent creates the stream. [default: 86400]
    #[arg(long, env = "EXECMESH_OUTPUT_RETENTION_SECS", value_name = "SECS")]
    pub output_retention_secs: Option<String>,

    /// How long `mesh_jobs` keeps job statuses, when this agent creates the bucket.
    /// [default: 604800]
    #[arg(long, env = "EXECMESH_JOB_RETENTION_SECS", value_name = "SECS")]
    pub job_retention_secs: Option<String>,

    /// Output bytes kept per job; past it output is counted and dropped. [default: 268435456]
    #[arg(long, env = "EXECMESH_MAX_OUTPUT_BYTES_PER_JOB", value_name = "BYTES")]
    pub max_output_bytes_per_job: Option<String>,

    /// Output bytes one user's jobs may keep in MESH_OUT from this host within the output
    /// retention; past it their output is counted, dropped and marked. [default: 536870912]
    #[arg(long, env = "EXECMESH_MAX_OUTPUT_BYTES_PER_USER", value_name = "BYTES")]
    pub max_output_bytes_per_user: Option<String>,

    /// Output bytes all jobs on this host may keep in MESH_OUT within the output retention.
    /// [default: 1073741824]
    #[arg(long, env = "EXECMESH_MAX_OUTPUT_BYTES_PER_HOST", value_name = "BYTES")]
    pub max_output_bytes_per_host: Option<String>,

    /// The disk the mesh's JetStream store may use. MESH_OUT gets 75 %, AUDIT 10 %, `mesh_jobs`
    /// 5 %, `mesh_presence` and `mesh_facts` 3 % each, each other bucket 1 %; the agent sets
    /// each stream's byte limit to its share.
    /// [default: 2147483648]
    #[arg(long, env = "EXECMESH_JETSTREAM_BUDGET_BYTES", value_name = "BYTES")]
    pub jetstream_budget_bytes: Option<String>,

    /// Target size of one output chunk (1024 to 32768); longer lines are cut at this size.
    /// [default: 16384]
    #[arg(long, env = "EXECMESH_CHUNK_BYTES", value_name = "BYTES")]
    pub chunk_bytes: Option<String>,

    /// Longest time output waits to be coalesced into a chunk before it is published.
    /// [default: 20]
    #[arg(long, env = "EXECMESH_COALESCE_MS", value_name = "MS")]
    pub coalesce_ms: Option<String>,

    /// Most often a running job's status is rewritten with its progress (bytes, lines, last
    /// output time), and only when it changed. [default: 2000]
    #[arg(long, env = "EXECMESH_PROGRESS_INTERVAL_MS", value_name = "MS")]
    pub progress_interval_ms: Option<String>,

    /// On SIGTERM/SIGINT, how long running jobs may finish before they are killed.
    /// [default: 10000]
    #[arg(long, env = "EXECMESH_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<String>,

    /// Shell that runs commands, as `<shell> -c <cmd>`. [default: /bin/bash]
    #[arg(long, env = "EXECMESH_SHELL", value_name = "PATH")]
    pub shell: Option<String>,

    /// Shells kept started ahead of time, each waiting for a job, so a short command does not
    /// wait for its shell to start (0 starts a fresh shell for every job). Idle ones are not
    /// jobs and do not count against --max-jobs. Requests that set a variable the shell treats
    /// specially (BASH_ENV, SHELLOPTS, IFS, …), use a relative working directory, or send a
    /// command over 16 KiB get a fresh shell. [default: 2]
    #[arg(long, env = "EXECMESH_WARM_SHELLS", value_name = "N")]
    pub warm_shells: Option<String>,

    /// JetStream replicas of the streams and buckets this agent creates. [default: 1]
    #[arg(long, env = "EXECMESH_REPLICAS", value_name = "N")]
    pub replicas: Option<String>,

    /// A directory the `file` tool may read and change (absolute; its symlinks are resolved
    /// at start, and a missing one is skipped with a warning); repeat the flag for more. Paths
    /// outside every root are refused, after `..` and symlinks are resolved. In the environment:
    /// comma-separated paths. [default: /tmp, /var/log, /srv, /opt, /home]
    #[arg(
        long = "file-root",
        env = "EXECMESH_FILE_ROOTS",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub file_roots: Vec<String>,

    /// Let the `file` tool read and change regular files with more than one hard link. Off, such
    /// a file is refused: a hard link inside a root can name a file outside every root.
    /// [default: false]
    #[arg(long, env = "EXECMESH_FILE_ALLOW_HARDLINKS", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub file_allow_hardlinks: Option<String>,

    /// Most bytes one file read returns (a page of text or raw bytes); replies are also kept
    /// under the NATS max payload. [default: 1048576]
    #[arg(long, env = "EXECMESH_FILE_MAX_READ_BYTES", value_name = "BYTES")]
    pub file_max_read_bytes: Option<String>,

    /// Most bytes one file write or append may carry. [default: 67108864]
    #[arg(long, env = "EXECMESH_FILE_MAX_WRITE_BYTES", value_name = "BYTES")]
    pub file_max_write_bytes: Option<String>,

    /// Most bytes one copy may write to this host. [default: 1073741824]
    #[arg(long, env = "EXECMESH_FILE_MAX_COPY_BYTES", value_name = "BYTES")]
    pub file_max_copy_bytes: Option<String>,

    /// Seconds between collections of the host's fact pack (OS, memory, disks, ports, services,
    /// packages) into `mesh_facts`; it is also collected at start and on a refresh request.
    /// [default: 300]
    #[arg(long, env = "EXECMESH_FACTS_INTERVAL_SECS", value_name = "SECS")]
    pub facts_interval_secs: Option<String>,

    /// Results (matches, or files in count / files mode) a grep returns when its request names
    /// no limit; every match is still counted. [default: 200]
    #[arg(long, env = "EXECMESH_GREP_DEFAULT_MAX_MATCHES", value_name = "N")]
    pub grep_default_max_matches: Option<String>,

    /// Most results a grep returns, whatever its request asks. [default: 10000]
    #[arg(long, env = "EXECMESH_GREP_MAX_MATCHES", value_name = "N")]
    pub grep_max_matches: Option<String>,

    /// Longest a grep searches before it returns what it found; the request's expiry may cut
    /// it shorter. [default: 30]
    #[arg(long, env = "EXECMESH_GREP_TIMEOUT_SECS", value_name = "SECS")]
    pub grep_timeout_secs: Option<String>,

    /// Most bytes of results (matches, file counts, digest groups) in one grep reply; replies
    /// also stay under the NATS max payload. [default: 524288]
    #[arg(long, env = "EXECMESH_GREP_MAX_REPLY_BYTES", value_name = "BYTES")]
    pub grep_max_reply_bytes: Option<String>,

    /// Redact secrets (passwords, tokens, keys, random-looking strings) from job output before
    /// it leaves this host, line by line; off, output is published as the job wrote it.
    /// [default: false]
    #[arg(long, env = "EXECMESH_OUTPUT_REDACTION", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub output_redaction: Option<String>,

    /// A regular expression redacted on top of the built-in rules, from the commands stored in
    /// `mesh_jobs` and (with --output-redaction) from output; a group named `secret` limits the
    /// redaction to it. Repeat the flag; in the environment, one pattern per line.
    #[arg(
        long = "redact-pattern",
        env = "EXECMESH_REDACT_PATTERNS",
        value_name = "REGEX",
        value_delimiter = '\n'
    )]
    pub redact_patterns: Vec<String>,

    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,execmesh_node_agent=debug`).
    /// [default: info]
    #[arg(long, env = "EXECMESH_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Write logs as JSON lines instead of text. [default: false]
    #[arg(long, env = "EXECMESH_LOG_JSON", value_name = "BOOL",
          num_args = 0..=1, default_missing_value = "true")]
    pub log_json: Option<String>,

    /// A tool to run instead of the agent.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools of the `execmesh-node-agent` binary besides the agent itself.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The host's CommandGuard.
    #[command(subcommand)]
    Guard(GuardCommand),
    /// Runs as one user's SSH relay: serves that user's requests to SSH targets that run no
    /// agent, through the user's own ssh config, agent, keys and known_hosts.
    ///
    /// The file (TOML) has the agent's shared keys (`nats_url`, `nats_nkey_seed` of the
    /// `relay-<user>` identity from `nats-config`, `gateway_keys`, `max_tier`, `guard`, limits),
    /// `user = "<mcp user>"`, and one `[[targets]]` table per target: `id`, `destination`
    /// (`user@host` or an ssh config alias), `labels`, `max_tier`, `ssh_config`,
    /// `accept_new_host_key` (default false: strict known_hosts), `shell` (default /bin/bash).
    /// See docs/relay.md.
    Relay(RelayArgs),
}

/// The arguments of `relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// The relay's TOML configuration.
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,
}

/// `execmesh-node-agent guard …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GuardCommand {
    /// Says whether this host's CommandGuard would refuse COMMAND, and by which rule.
    ///
    /// Reads the agent's configuration like the agent does (the file, then `EXECMESH_…`
    /// variables). Exit code 0: allowed; 1: refused; 2: bad usage or configuration.
    /// Example: `execmesh-node-agent guard check -- 'rm -rf "$DIR/"'`.
    Check(GuardCheck),
}

/// The arguments of `guard check`.
#[derive(Debug, Clone, clap::Args)]
pub struct GuardCheck {
    /// The agent's TOML configuration. [default: `--config` or EXECMESH_AGENT_CONFIG, else
    /// /etc/execmesh/node-agent.toml when it exists]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// The directory the command would start in; relative paths are judged against it.
    /// [default: not known]
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// An environment variable the request would set; repeat the flag for more.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,

    /// The command, as the `bash` tool would send it (several words are joined with spaces).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn labels_repeat_and_booleans_take_optional_values() {
        let cli = Cli::try_parse_from([
            "execmesh-node-agent",
            "--label",
            "role=web",
            "--label",
            "dc=fra",
            "--log-json",
            "--nats-tls-required=false",
        ])
        .expect("parses");
        assert_eq!(cli.labels, ["role=web", "dc=fra"]);
        assert_eq!(cli.log_json.as_deref(), Some("true"));
        assert_eq!(cli.nats.nats_tls_required, Some(false));
    }

    #[test]
    fn guard_check_takes_a_command_after_dashes() {
        let cli = Cli::try_parse_from([
            "execmesh-node-agent",
            "guard",
            "check",
            "--config",
            "/etc/agent.toml",
            "--env",
            "A=1",
            "--",
            "rm",
            "-rf",
            "/",
        ])
        .expect("parses");
        let Some(Command::Guard(GuardCommand::Check(check))) = cli.command else {
            panic!("expected guard check, got {:?}", cli.command);
        };
        assert_eq!(
            check.config.as_deref(),
            Some(std::path::Path::new("/etc/agent.toml"))
        );
        assert_eq!(check.env, ["A=1"]);
        assert_eq!(check.command, ["rm", "-rf", "/"]);
        assert!(Cli::try_parse_from(["execmesh-node-agent", "guard", "check"]).is_err());
    }
}
