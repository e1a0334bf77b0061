//! The gateway's configuration: a TOML file, overridden key by key by flags and `EXECMESH_*` env.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use execmesh_proto::Token;
use execmesh_runtime::config;
use execmesh_runtime::nats_settings::{DEFAULT_NATS_URL, NatsConfig, NatsSettings};
use execmesh_runtime::telemetry::{Export, MetricsAt, TelemetrySettings};

/// Command line of `execmesh-gateway`.
#[derive(Debug, Parser)]
#[command(
    name = "execmesh-gateway",
    version,
    about = "The execmesh gateway: a stateless MCP endpoint (/mcp) that turns tool calls into \
             requests to node-agents over NATS and pages their output from JetStream.",
    long_about = None
)]
pub struct Cli {
    /// Settings; each may also come from the config file (same key, snake_case).
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve MCP over HTTP (the default).
    Serve,
    /// Manage bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the public half of the key that signs requests to the agents (`exec_signing_key`,
    /// created if missing), as the agents' `gateway_keys` take it; its key id goes to stderr.
    ExecKey,
    /// Manage the users of the policy file.
    #[command(subcommand)]
    User(UserCommand),
    /// Write the nats-server configuration of a secured mesh from an inventory of hosts: one
    /// NATS user (nkey) per identity — gateway, audit-sink, each agent, each SSH relay — allowed
    /// only its own subjects and keys, and one seed file per identity (kept when they exist).
    NatsConfig {
        /// The inventory (TOML: `tenant`, `hosts`, optional `[[relays]]`, `audit_consumer`,
        /// `[server]`); see deploy/nats/inventory.example.toml.
        #[arg(long)]
        inventory: PathBuf,
        /// Directory to write `nats.conf` and `seeds/<identity>.nk` into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Make a new key for this identity (`agent-web-1`, `gateway`, …), e.g. after a host's
        /// seed leaked; repeat for several. Other seeds in the directory are kept.
        #[arg(long = "rotate")]
        rotate: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add USER to the policy file (`policy_file`; created if missing), keeping the rest of the
    /// file as it is. Without --password-stdin a random password is generated and printed once.
    Add {
        /// The user name: lower-case letters, digits and `-`.
        name: String,
        /// The user's own tier (readonly, standard, dangerous); without it the groups decide.
        #[arg(long)]
        tier: Option<String>,
        /// A group the user belongs to (repeat for several); it must be defined in the policy.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Read the password from standard input (one line).
        #[arg(long)]
        password_stdin: bool,
        /// Change an existing user: the password, and groups and tier when given.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a new bearer token for USER, signed with the key of the gateway that will verify
    /// it. Give that gateway's settings (its `--config FILE`, or the same `--key-file` and
    /// `--public-url`; without a public_url, its `--listen` and TLS files), so the token names
    /// the issuer and audience it serves: without `public_url` or `listen` the command refuses
    /// to guess.
    Mint {
        /// The user the token speaks for: lower-case letters, digits and `-`.
        #[arg(long)]
        user: String,
        /// Lifetime, e.g. 30m, 12h, 30d (at most max_token_lifetime_secs, 90d by default).
        #[arg(long, default_value = "12h")]
        ttl: String,
        /// A tier at or below the user's (readonly, standard, dangerous); above it is an error.
        #[arg(long)]
        tier: Option<String>,
        /// What the token may be used for: `mcp` (the MCP endpoint), `admin` (the gRPC admin
        /// API). Repeat or separate with commas for both.
        #[arg(long = "scope", value_delimiter = ',', default_value = "mcp")]
        scopes: Vec<String>,
    },
}

/// Every configurable key. All optional here; [`Config`] holds the resolved values. Unknown keys
/// in the file are refused by [`Config::load`], naming them.
#[derive(Debug, Default, Clone, Args, Deserialize)]
pub struct Settings {
    /// Path of a TOML file with any of these keys.
    #[arg(long, env = "EXECMESH_GATEWAY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Where NATS is and how to authenticate to it and verify it (the gateway signs its records
    /// — approvals, revocations, OAuth grants, audit events — with its nkey seed).
    #[command(flatten)]
    #[serde(flatten)]
    pub nats: NatsSettings,
    /// Where traces are exported (OTLP), if anywhere.
    #[command(flatten)]
    #[serde(flatten)]
    pub telemetry: TelemetrySettings,
    /// The mesh's public identities file (`identities.toml`, written by `nats-config`): every
    /// record read from JetStream must be signed by the identity entitled to it, or it is
    /// ignored. Reread when it changes. Without it (development) records are not checked.
    #[arg(long, env = "EXECMESH_IDENTITIES_FILE")]
    pub identities_file: Option<PathBuf>,
    /// Address to serve MCP on [default: 127.0.0.1:8420].
    #[arg(long, env = "EXECMESH_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) to serve HTTPS with; needs `tls_key`. Without both
    /// the gateway serves plain HTTP (put it behind a TLS-terminating proxy then).
    #[arg(long, env = "EXECMESH_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[arg(long, env = "EXECMESH_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Address to serve the gRPC admin API on; `off` (or empty) disables it
    /// [default: 127.0.0.1:8421]. Without `admin_tls_cert` it must be a loopback address.
    #[arg(long, env = "EXECMESH_ADMIN_ADDR")]
    pub admin_addr: Option<String>,
    /// PEM certificate chain (leaf first) the admin API serves TLS with; needs `admin_tls_key`.
    #[arg(long, env = "EXECMESH_ADMIN_TLS_CERT")]
    pub admin_tls_cert: Option<PathBuf>,
    /// PEM private key of `admin_tls_cert`.
    #[arg(long, env = "EXECMESH_ADMIN_TLS_KEY")]
    pub admin_tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): when set, admin clients must present a certificate it signed
    /// (mTLS). Needs `admin_tls_cert`.
    #[arg(long, env = "EXECMESH_ADMIN_CLIENT_CA")]
    pub admin_client_ca: Option<PathBuf>,
    /// File with the Ed25519 token key (base64 seed; created on first start)
    /// [default: .execmesh/gateway.key]. Every replica must use the same key.
    #[arg(long, env = "EXECMESH_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// File with the Ed25519 key that signs every request to the agents (base64 seed; created on
    /// first start, its public half written to `<file>.pub` for the agents' `gateway_keys`)
    /// [default: exec-signing.key beside key_file]. Every replica must use the same key.
    #[arg(long, env = "EXECMESH_EXEC_SIGNING_KEY")]
    pub exec_signing_key: Option<PathBuf>,
    /// Host names (or host:port) clients use to reach this gateway, accepted in the `Host`
    /// header in addition to localhost / 127.0.0.1 / ::1. Comma separated.
    #[arg(long, env = "EXECMESH_PUBLIC_NAMES", value_delimiter = ',')]
    pub public_names: Option<Vec<String>>,
    /// Browser origins allowed to call /mcp (e.g. https://app.example.com:443). Requests with
    /// any other `Origin` are refused; requests without one (non-browser clients) pass.
    #[arg(long, env = "EXECMESH_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,
    /// The canonical public URL of the MCP endpoint, the OAuth resource and token audience; the
    /// same on every replica [default: http://<listen>/mcp].
    #[arg(long, env = "EXECMESH_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The policy file (users, groups, tiers, reach). Without one the gateway runs in
    /// development mode: every token holder is `dangerous` and reaches every host.
    #[arg(long, env = "EXECMESH_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Lifetime of OAuth access tokens, in seconds [default: 900].
    #[arg(long, env = "EXECMESH_ACCESS_TOKEN_TTL_SECS")]
    pub access_token_ttl_secs: Option<u64>,
    /// Lifetime of OAuth refresh tokens, in seconds [default: 2592000 (30 days)].
    #[arg(long, env = "EXECMESH_REFRESH_TOKEN_TTL_SECS")]
    pub refresh_token_ttl_secs: Option<u64>,
    /// Longest lifetime (exp - iat) of a bearer token this gateway mints or accepts, in seconds
    /// [default: 7776000 (90 days)].
    #[arg(long, env = "EXECMESH_MAX_TOKEN_LIFETIME_SECS")]
    pub max_token_lifetime_secs: Option<u64>,
    /// How long a client may take to send a request's headers (counted from its first byte, or
    /// from the connection's start) and to complete a TLS handshake, in seconds [default: 10].
    #[arg(long, env = "EXECMESH_HEADER_READ_TIMEOUT_SECS")]
    pub header_read_timeout_secs: Option<u64>,
    /// How long a connection may stay open with no request in flight before the gateway closes
    /// it, in seconds [default: 60].
    #[arg(long, env = "EXECMESH_IDLE_TIMEOUT_SECS")]
    pub idle_timeout_secs: Option<u64>,
    /// Most connections one client address may hold open to the MCP listener at once; 0 for no
    /// cap [default: 128].
    #[arg(long, env = "EXECMESH_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// JetStream replicas of the KV buckets the gateway creates (`mesh_oauth`, `mesh_revoked`)
    /// [default: 1].
    #[arg(long, env = "EXECMESH_KV_REPLICAS")]
    pub kv_replicas: Option<usize>,
    /// The disk the mesh's JetStream store may use; the streams and buckets the gateway creates
    /// get their share of it (give the agents the same) [default: 2147483648].
    #[arg(long, env = "EXECMESH_JETSTREAM_BUDGET_BYTES")]
    pub jetstream_budget_bytes: Option<u64>,
    /// How long a call held for approval waits for a decision, and an approval for its use,
    /// in seconds [default: 900].
    #[arg(long, env = "EXECMESH_APPROVAL_TTL_SECS")]
    pub approval_ttl_secs: Option<u64>,
    /// Where each new approval request is announced: an incoming-webhook URL (Slack or
    /// anything that takes Slack's JSON), sent a message with a link to the request's console
    /// page [default: none].
    #[arg(long, env = "EXECMESH_APPROVAL_WEBHOOK_URL")]
    pub approval_webhook_url: Option<String>,
    /// How long a console sign-in lasts, in seconds [default: 3600].
    #[arg(long, env = "EXECMESH_CONSOLE_SESSION_TTL_SECS")]
    pub console_session_ttl_secs: Option<u64>,
    /// How long an MCP task (a `tools/call` a client let run as a task) is kept after it is
    /// created, its result included, in seconds [default: 3600].
    #[arg(long, env = "EXECMESH_TASK_TTL_SECS")]
    pub task_ttl_secs: Option<u64>,
    /// How often clients are asked to poll a task, in ms [default: 1000].
    #[arg(long, env = "EXECMESH_TASK_POLL_INTERVAL_MS")]
    pub task_poll_interval_ms: Option<u64>,
    /// Tenant token [default: default].
    #[arg(long, env = "EXECMESH_TENANT")]
    pub tenant: Option<String>,
    /// How long `bash` waits for a job before returning its id, in ms [default: 2000].
    #[arg(long, env = "EXECMESH_INLINE_WINDOW_MS")]
    pub inline_window_ms: Option<u64>,
    /// Most lines in one page of output [default: 1000].
    #[arg(long, env = "EXECMESH_PAGE_MAX_LINES")]
    pub page_max_lines: Option<usize>,
    /// Most bytes in one page of output [default: 65536].
    #[arg(long, env = "EXECMESH_PAGE_MAX_BYTES")]
    pub page_max_bytes: Option<usize>,
    /// Lines longer than this are clamped in pages, with a marker [default: 4096].
    #[arg(long, env = "EXECMESH_MAX_LINE_BYTES")]
    pub max_line_bytes: Option<usize>,
    /// How long to wait for an agent's reply beyond the inline window, in ms [default: 5000].
    #[arg(long, env = "EXECMESH_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Largest accepted MCP request body, in bytes [default: 4194304].
    #[arg(long, env = "EXECMESH_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// How long a tool call waits for a lost NATS connection to come back before it is refused
    /// (HTTP 503, JSON-RPC error, `Retry-After`), in ms [default: 2000].
    #[arg(long, env = "EXECMESH_MESH_UNREACHABLE_WAIT_MS")]
    pub mesh_unreachable_wait_ms: Option<u64>,
    /// How long the gateway trusts its copy of the token revocation list once NATS is
    /// unreachable; after that every token is refused (503) until NATS is back, in seconds
    /// [default: 60].
    #[arg(long, env = "EXECMESH_REVOCATION_MAX_STALENESS_SECS")]
    pub revocation_max_staleness_secs: Option<u64>,
    /// How long a host whose heartbeat expired has to heartbeat again before its running jobs
    /// are marked lost, in ms: covers a NATS node's restart or a JetStream leader election,
    /// after which the server expires heartbeats that could not be stored [default: 3000].
    #[arg(long, env = "EXECMESH_LOST_GRACE_MS")]
    pub lost_grace_ms: Option<u64>,
    /// Watches admin and console clients may hold open on this replica at once (`execmeshctl
    /// hosts watch`, `approvals watch`, the console's live pages), each a JetStream consumer;
    /// one more is refused with RESOURCE_EXHAUSTED [default: 64].
    #[arg(long, env = "EXECMESH_MAX_WATCHES")]
    pub max_watches: Option<usize>,
    /// Consumers this replica's calls may hold at once (waits for a job's end, reads of more
    /// keys than one direct get returns); one more waits up to 10 s for a slot [default: 256].
    #[arg(long, env = "EXECMESH_MAX_CALL_WATCHES")]
    pub max_call_watches: Option<usize>,
    /// Audit events waiting to be published to NATS; beyond, new events are dropped (counted
    /// and logged), except a fan-out's per-host events, which wait up to 2 s for room
    /// [default: 16384].
    #[arg(long, env = "EXECMESH_AUDIT_QUEUE")]
    pub audit_queue: Option<usize>,
    /// Log as JSON lines.
    #[arg(long, env = "EXECMESH_LOG_JSON")]
    pub log_json: Option<bool>,
    /// Named host groups for selectors, `name = "selector"` (config file only), used as `@name`.
    #[arg(skip)]
    pub groups: Option<BTreeMap<String, String>>,
    /// Most hosts a fan-out (`bash` with `hosts`, `grep`) contacts at once when the call sets no
    /// `batch` [default: 256].
    #[arg(long, env = "EXECMESH_FANOUT_WINDOW")]
    pub fanout_window: Option<usize>,
    /// Most hosts one fan-out may target [default: 10000].
    #[arg(long, env = "EXECMESH_FANOUT_MAX_HOSTS")]
    pub fanout_max_hosts: Option<usize>,
    /// Extra regular expressions redacted from audited tool arguments, on top of the built-in
    /// ones (tokens, passwords, keys); a group named `secret` limits the redaction to it.
    /// Repeat the flag; in the environment, one pattern per line.
    #[arg(
        long = "audit-redact-pattern",
        env = "EXECMESH_AUDIT_REDACT_PATTERNS",
        value_delimiter = '\n'
    )]
    pub audit_redact_patterns: Option<Vec<String>>,
}

/// Why the configuration is unusable. Every problem is listed, not just the first.
pub use execmesh_runtime::config::ConfigError;

/// The resolved configuration of one gateway.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where NATS is and how to authenticate to it and verify it.
    pub nats: NatsConfig,
    /// The identities file records are checked against; `None`: development, unchecked.
    pub identities_file: Option<PathBuf>,
    /// Where `main` binds; `run` takes an already bound listener.
    pub listen: SocketAddr,
    /// Certificate and key to serve HTTPS with; `None`: plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Where `run` binds the gRPC admin API; `None`: not served. [`Config::load`] defaults to
    /// [`DEFAULT_ADMIN_ADDR`]; [`Config::new`] (tests, embedding) leaves it off.
    pub admin_addr: Option<SocketAddr>,
    /// Certificate and key the admin API serves TLS with; `None`: plaintext, loopback only.
    pub admin_tls: Option<TlsFiles>,
    /// CA that admin clients' certificates must chain to (mTLS); `None`: no client certificates.
    pub admin_client_ca: Option<PathBuf>,
    /// The Ed25519 token key file, shared by every replica.
    pub key_file: PathBuf,
    /// The Ed25519 key file that signs requests to agents, shared by every replica.
    pub exec_signing_key: PathBuf,
    /// Extra names accepted in the `Host` header.
    pub public_names: Vec<String>,
    /// Browser origins accepted in the `Origin` header.
    pub allowed_origins: Vec<String>,
    /// The public URL of `/mcp` (OAuth resource, token audience); `None`: `http://<listen>/mcp`.
    pub public_url: Option<String>,
    /// The policy file; `None`: development mode.
    pub policy_file: Option<PathBuf>,
    /// Lifetime of OAuth access tokens.
    pub access_token_ttl: Duration,
    /// Lifetime of OAuth refresh tokens (each refresh rotates the token and restarts it).
    pub refresh_token_ttl: Duration,
    /// Longest lifetime of a bearer token this gateway mints or accepts.
    pub max_token_lifetime: Duration,
    /// Whether `public_url` or `listen` came from the configuration rather than the defaults:
    /// `token mint` refuses to guess which gateway a token is for.
    pub audience_explicit: bool,
    /// How long a client may take to send a request's headers, and a TLS handshake.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Most connections open at once per client address; 0: no cap.
    pub max_connections_per_address: usize,
    /// Replicas of the buckets the gateway creates.
    pub kv_replicas: usize,
    /// The JetStream disk budget the streams and buckets the gateway creates are bounded by.
    pub jetstream_budget_bytes: u64,
    /// How long an approval request (and an approval) stays usable.
    pub approval_ttl: Duration,
    /// Where new approval requests are announced (Slack-compatible JSON); `None`: nowhere.
    pub approval_webhook_url: Option<String>,
    /// How long a console sign-in lasts.
    pub console_session_ttl: Duration,
    /// How long an MCP task is kept after it is created.
    pub task_ttl: Duration,
    /// The poll interval tasks suggest to clients.
    pub task_poll_interval: Duration,
    pub tenant: String,
    /// Default inline window of `bash`.
    pub inline_window: Duration,
    pub page_max_lines: usize,
    pub page_max_bytes: usize,
    pub max_line_bytes: usize,
    /// Added to a request's own wait when waiting for an agent's reply.
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// How long a tool call waits for a lost NATS connection before it is refused.
    pub mesh_unreachable_wait: Duration,
    /// How long the revocation list's copy is trusted once it cannot be kept current.
    pub revocation_max_staleness: Duration,
    /// How long a host's heartbeat may stay expired before its running jobs are lost.
    pub lost_grace: Duration,
    /// Client watches held open at once ([`crate::core::consumers`]).
    pub max_watches: usize,
    /// Consumers calls hold at once ([`crate::core::consumers`]).
    pub max_call_watches: usize,
    /// Audit events waiting to be published ([`crate::core::audit`]).
    pub audit_queue: usize,
    pub log_json: bool,
    /// Where traces are exported; `None`: they are not.
    pub telemetry: Option<Export>,
    /// Where `/metrics` is served.
    pub metrics: MetricsAt,
    /// Named host groups (`@name` in selectors), as selector text; checked at load.
    pub groups: BTreeMap<String, String>,
    /// Default sliding window of a fan-out: hosts contacted at once.
    pub fanout_window: usize,
    /// Most hosts one fan-out may target.
    pub fanout_max_hosts: usize,
    /// Redaction patterns for audit events, beyond the built-in ones.
    pub audit_redact_patterns: Vec<String>,
}

/// A PEM certificate chain and its key: what the gateway serves HTTPS with, or presents to NATS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key.
    pub key: PathBuf,
}

/// Where the admin API listens unless configured otherwise.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8421);

/// Hard ceilings on what a caller may ask of one page.
pub const PAGE_LINES_CEILING: usize = 10_000;
pub const PAGE_BYTES_CEILING: usize = 1024 * 1024;

impl Config {
    /// What connecting to the mesh needs of this configuration.
    pub fn mesh(&self) -> crate::core::mesh::MeshSettings<'_> {
        crate::core::mesh::MeshSettings {
            nats: &self.nats,
            identities_file: self.identities_file.as_deref(),
            tenant: &self.tenant,
            exec_signing_key: &self.exec_signing_key,
            kv_replicas: self.kv_replicas,
            lost_grace: self.lost_grace,
            max_watches: self.max_watches,
            max_call_watches: self.max_call_watches,
            store_limits: execmesh_proto::jetstream::StoreLimits::from_budget(
                self.jetstream_budget_bytes,
            ),
        }
    }

    /// The issuer and resource of this gateway's tokens: from `public_url`, else
    /// `http://<addr>/mcp` (127.0.0.1 when `addr` is unspecified), `addr` being where it listens.
    pub fn audience(&self, addr: SocketAddr) -> crate::core::auth::Audience {
        self.public_url
            .as_deref()
            .and_then(|url| crate::core::auth::Audience::parse(url).ok())
            .unwrap_or_else(|| crate::core::auth::Audience::for_listen(addr, self.tls.is_some()))
    }

    /// A configuration with defaults, for tests and embedding.
    pub fn new(nats_url: &str, key_file: PathBuf) -> Self {
        Self {
            nats: NatsConfig::new(nats_url),
            identities_file: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8420)),
            tls: None,
            admin_addr: None,
            admin_tls: None,
            admin_client_ca: None,
            exec_signing_key: key_file.with_file_name("exec-signing.key"),
            key_file,
            public_names: Vec::new(),
            allowed_origins: Vec::new(),
            public_url: None,
            policy_file: None,
            access_token_ttl: Duration::from_secs(900),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            max_token_lifetime: crate::core::auth::DEFAULT_MAX_LIFETIME,
            audience_explicit: false,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_address: 128,
            kv_replicas: 1,
            jetstream_budget_bytes: execmesh_proto::jetstream::DEFAULT_STORE_BUDGET_BYTES,
            approval_ttl: crate::core::approvals::DEFAULT_TTL,
            approval_webhook_url: None,
            console_session_ttl: Duration::from_secs(3600),
            task_ttl: crate::core::tasks::DEFAULT_TTL,
            task_poll_interval: crate::core::tasks::DEFAULT_POLL_INTERVAL,
            tenant: execmesh_proto::subject::DEFAULT_TENANT.to_string(),
            inline_window: Duration::from_secs(2),
            page_max_lines: 1000,
            page_max_bytes: 64 * 1024,
            max_line_bytes: 4096,
            request_timeout: Duration::from_secs(5),
            max_body_bytes: 4 * 1024 * 1024,
            mesh_unreachable_wait: Duration::from_secs(2),
            revocation_max_staleness: crate::core::revocation::DEFAULT_MAX_STALENESS,
            lost_grace: crate::core::jobs::state::DEFAULT_LOST_GRACE,
            max_watches: crate::core::consumers::DEFAULT_MAX_WATCHES,
            max_call_watches: crate::core::consumers::DEFAULT_MAX_CALL_WATCHES,
            audit_queue: crate::core::audit::DEFAULT_QUEUE,
            log_json: false,
            telemetry: None,
            metrics: MetricsAt::Shared,
            groups: BTreeMap::new(),
            fanout_window: 256,
            fanout_max_hosts: 10_000,
            audit_redact_patterns: Vec::new(),
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
        let key_file = (pick.key_file).unwrap_or_else(|| PathBuf::from(".execmesh/gateway.key"));
        let mut config = Self {
            nats: pick.nats.resolve(),
            ..Self::new(DEFAULT_NATS_URL, key_file)
        };
        if let Some(path) = pick.exec_signing_key {
            config.exec_signing_key = path;
        }
        config.identities_file = pick.identities_file;
        config.audience_explicit =
            pick.listen.is_some() || pick.public_url.as_deref().is_some_and(|u| !u.is_empty());
        if let Some(v) = pick.listen {
            config.listen = v;
        }
        if let Some(v) = pick.public_names {
            config.public_names = v.into_iter().filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = pick.allowed_origins {
            config.allowed_origins = v.into_iter().filter(|s| !s.is_empty()).collect();
        }
        if let Some(v) = pick.tenant {
            config.tenant = v;
        }
        config.public_url = pick.public_url.filter(|s| !s.is_empty());
        config.tls = pair(
            "tls_cert",
            "tls_key",
            pick.tls_cert,
            pick.tls_key,
            &mut problems,
        );
        config.admin_addr = match pick.admin_addr.as_deref().map(str::trim) {
            None => Some(DEFAULT_ADMIN_ADDR),
            Some("" | "off") => None,
            Some(text) => text
                .parse()
                .map_err(|e| {
                    problems.push(format!(
                        "admin_addr `{text}` is not an address (host:port, or `off`): {e}"
                    ))
                })
                .ok(),
        };
        config.admin_tls = pair(
            "admin_tls_cert",
            "admin_tls_key",
            pick.admin_tls_cert,
            pick.admin_tls_key,
            &mut problems,
        );
        config.admin_client_ca = pick.admin_client_ca;
        config.policy_file = pick.policy_file;
        if let Some(v) = pick.access_token_ttl_secs {
            config.access_token_ttl = Duration::from_secs(v);
        }
        if let Some(v) = pick.refresh_token_ttl_secs {
            config.refresh_token_ttl = Duration::from_secs(v);
        }
        if let Some(v) = pick.max_token_lifetime_secs {
            config.max_token_lifetime = Duration::from_secs(v);
        }
        if let Some(v) = pick.header_read_timeout_secs {
            config.header_read_timeout = Duration::from_secs(v);
        }
        if let Some(v) = pick.idle_timeout_secs {
            config.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = pick.max_connections_per_address {
            config.max_connections_per_address = v;
        }
        if let Some(v) = pick.kv_replicas {
            config.kv_replicas = v;
        }
        if let Some(v) = pick.jetstream_budget_bytes {
            config.jetstream_budget_bytes = v;
        }
        if let Some(v) = pick.approval_ttl_secs {
            config.approval_ttl = Duration::from_secs(v);
        }
        config.approval_webhook_url = pick.approval_webhook_url.filter(|s| !s.is_empty());
        if let Some(v) = pick.console_session_ttl_secs {
            config.console_session_ttl = Duration::from_secs(v);
        }
        if let Some(v) = pick.task_ttl_secs {
            config.task_ttl = Duration::from_secs(v);
        }
        if let Some(v) = pick.task_poll_interval_ms {
            config.task_poll_interval = Duration::from_millis(v);
        }
        if let Some(v) = pick.inline_window_ms {
            config.inline_window = Duration::from_millis(v);
        }
        if let Some(v) = pick.page_max_lines {
            config.page_max_lines = v;
        }
        if let Some(v) = pick.page_max_bytes {
            config.page_max_bytes = v;
        }
        if let Some(v) = pick.max_line_bytes {
            config.max_line_bytes = v;
        }
        if let Some(v) = pick.request_timeout_ms {
            config.request_timeout = Duration::from_millis(v);
        }
        if let Some(v) = pick.max_body_bytes {
            config.max_body_bytes = v;
        }
        if let Some(v) = pick.mesh_unreachable_wait_ms {
            config.mesh_unreachable_wait = Duration::from_millis(v);
        }
        if let Some(v) = pick.revocation_max_staleness_secs {
            config.revocation_max_staleness = Duration::from_secs(v);
        }
        if let Some(v) = pick.lost_grace_ms {
            config.lost_grace = Duration::from_millis(v);
        }
        if let Some(v) = pick.max_watches {
            config.max_watches = v;
        }
        match pick.audit_queue {
            Some(0) => problems.push("audit_queue must be at least 1".to_string()),
            Some(v) => config.audit_queue = v,
            None => {}
        }
        match pick.max_call_watches {
            Some(0) => problems.push("max_call_watches must be at least 1".to_string()),
            Some(v) => config.max_call_watches = v,
            None => {}
        }
        config.log_json = pick.log_json.unwrap_or(false);
        config.telemetry = (pick.telemetry).resolve(|key| std::env::var(key).ok(), &mut problems);
        config.metrics = (pick.telemetry).metrics(MetricsAt::Shared, &mut problems);
        if let Some(v) = pick.groups {
            config.groups = v;
        }
        if let Some(v) = pick.fanout_window {
            config.fanout_window = v;
        }
        if let Some(v) = pick.fanout_max_hosts {
            config.fanout_max_hosts = v;
        }
        if let Some(v) = pick.audit_redact_patterns {
            config.audit_redact_patterns = v.into_iter().filter(|p| !p.is_empty()).collect();
        }
        if let Err(e) = config.validate() {
            problems.extend(e.problems);
        }
        ConfigError::or_ok(problems, config)
    }

    /// Checks every value and reports all problems at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if !self.nats.url.contains("://") && !self.nats.url.contains(':') {
            problems.push(format!("nats_url `{}` is not a URL", self.nats.url));
        }
        self.nats.check_tls_pair(&mut problems);
        if let Err(e) = Token::parse("tenant", &self.tenant) {
            problems.push(e.to_string());
        }
        if !(1..=PAGE_LINES_CEILING).contains(&self.page_max_lines) {
            problems.push(format!("page_max_lines must be 1..={PAGE_LINES_CEILING}"));
        }
        if !(1024..=PAGE_BYTES_CEILING).contains(&self.page_max_bytes) {
            problems.push(format!(
                "page_max_bytes must be 1024..={PAGE_BYTES_CEILING}"
            ));
        }
        if !(80..=65536).contains(&self.max_line_bytes) {
            problems.push("max_line_bytes must be 80..=65536".to_string());
        }
        if self.approval_ttl < Duration::from_secs(1)
            || self.approval_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("approval_ttl_secs must be 1..=604800".to_string());
        }
        if let Some(url) = &self.approval_webhook_url {
            match url::Url::parse(url) {
                Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                Ok(_) => problems.push(format!(
                    "approval_webhook_url `{url}` must start with https:// or http://"
                )),
                Err(e) => problems.push(format!("approval_webhook_url `{url}`: {e}")),
            }
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(24 * 3600))
            .contains(&self.console_session_ttl)
        {
            problems.push("console_session_ttl_secs must be 60..=86400".to_string());
        }
        if self.task_ttl < Duration::from_secs(1)
            || self.task_ttl > Duration::from_secs(7 * 24 * 3600)
        {
            problems.push("task_ttl_secs must be 1..=604800".to_string());
        }
        if self.task_poll_interval < Duration::from_millis(100)
            || self.task_poll_interval > Duration::from_secs(60)
        {
            problems.push("task_poll_interval_ms must be 100..=60000".to_string());
        }
        if self.inline_window > Duration::from_secs(600) {
            problems.push("inline_window_ms must be at most 600000".to_string());
        }
        if let Err(e) = crate::core::selector::Selector::check_groups(&self.groups) {
            problems.push(e.to_string());
        }
        if !(1..=10_000).contains(&self.fanout_window) {
            problems.push("fanout_window must be 1..=10000".to_string());
        }
        if !(1..=100_000).contains(&self.fanout_max_hosts) {
            problems.push("fanout_max_hosts must be 1..=100000".to_string());
        }
        if let Some(url) = &self.public_url
            && let Err(e) = crate::core::auth::Audience::parse(url)
        {
            problems.push(format!("public_url: {e}"));
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(24 * 3600))
            .contains(&self.access_token_ttl)
        {
            problems.push("access_token_ttl_secs must be 10..=86400".to_string());
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(366 * 24 * 3600))
            .contains(&self.refresh_token_ttl)
        {
            problems.push("refresh_token_ttl_secs must be 60..=31622400".to_string());
        }
        if !(Duration::from_secs(3600)..=crate::core::auth::LONGEST_MAX_LIFETIME)
            .contains(&self.max_token_lifetime)
        {
            problems.push(format!(
                "max_token_lifetime_secs must be 3600..={}",
                crate::core::auth::LONGEST_MAX_LIFETIME.as_secs()
            ));
        } else if self.max_token_lifetime < self.access_token_ttl {
            problems.push(
                "max_token_lifetime_secs must be at least access_token_ttl_secs, or the \
                 gateway's own OAuth access tokens would be refused"
                    .to_string(),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.header_read_timeout)
        {
            problems.push("header_read_timeout_secs must be 1..=300".to_string());
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.idle_timeout) {
            problems.push("idle_timeout_secs must be 1..=3600".to_string());
        }
        if self.max_connections_per_address > 1_000_000 {
            problems.push(
                "max_connections_per_address must be at most 1000000 (0: no cap)".to_string(),
            );
        }
        if let Err(e) = crate::core::audit::Redactor::new(&self.audit_redact_patterns) {
            problems.push(e.to_string());
        }
        if let Some(addr) = self.admin_addr
            && self.admin_tls.is_none()
            && !addr.ip().is_loopback()
        {
            problems.push(format!(
                "admin_addr {addr} is not a loopback address: serving the admin API beyond this \
                 machine needs TLS (set admin_tls_cert and admin_tls_key)"
            ));
        }
        if self.admin_client_ca.is_some() && self.admin_tls.is_none() {
            problems.push(
                "admin_client_ca needs admin_tls_cert and admin_tls_key: client certificates \
                 are only checked over TLS"
                    .to_string(),
            );
        }
        if !(1..=5).contains(&self.kv_replicas) {
            problems.push("kv_replicas must be 1..=5".to_string());
        }
        if self.jetstream_budget_bytes < execmesh_proto::jetstream::MIN_STORE_BUDGET_BYTES {
            problems.push(format!(
                "jetstream_budget_bytes must be at least {} (16 MiB)",
                execmesh_proto::jetstream::MIN_STORE_BUDGET_BYTES
            ));
        }
        for origin in &self.allowed_origins {
            if let Err(e) = crate::origin::check_allowed(origin) {
                problems.push(e);
            }
        }
        ConfigError::or_ok(problems, ())
    }
}

/// A certificate and its key, which go together: both, neither, or a problem.
fn pair(
    cert_key: &str,
    key_key: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    problems: &mut Vec<String>,
) -> Option<TlsFiles> {
    match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        _ => {
            problems.push(format!(
                "{cert_key} and {key_key} go together: give both or neither"
            ));
            None
        }
    }
}

/// The settings of the config file at `path`, every bad or unknown key a problem. Only a file
/// that cannot be read or parsed at all stops the loading here.
fn read_file(path: &Path, problems: &mut Vec<String>) -> Result<Settings, ConfigError> {
    // `groups` has no flag: only a file can set it.
    config::read_file(path, &["groups"], problems)
}

impl Settings {
    /// Each key from `over` when set there, else from `under`.
    fn merge(over: Self, under: Self) -> Self {
        execmesh_runtime::layered!(
            over over under:
            identities_file,
            listen,
            tls_cert,
            tls_key,
            admin_addr,
            admin_tls_cert,
            admin_tls_key,
            admin_client_ca,
            key_file,
            exec_signing_key,
            public_names,
            allowed_origins,
            public_url,
            policy_file,
            access_token_ttl_secs,
            refresh_token_ttl_secs,
            max_token_lifetime_secs,
            header_read_timeout_secs,
            idle_timeout_secs,
            max_connections_per_address,
            kv_replicas,
            jetstream_budget_bytes,
            approval_ttl_secs,
            approval_webhook_url,
            console_session_ttl_secs,
            task_ttl_secs,
            task_poll_interval_ms,
            tenant,
            inline_window_ms,
            page_max_lines,
            page_max_bytes,
            max_line_bytes,
            request_timeout_ms,
            max_body_bytes,
            mesh_unreachable_wait_ms,
            revocation_max_staleness_secs,
            lost_grace_ms,
            max_watches,
            max_call_watches,
            audit_queue,
            log_json,
            groups,
            fanout_window,
            fanout_max_hosts,
            audit_redact_patterns
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_packaged_production_setup() {
        // gateway.example.toml is /etc/execmesh/gateway.toml of the package; its unit adds the
        // NATS seed on the command line.
        let cli = Settings {
            config: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.example.toml")),
            nats: NatsSettings {
                nats_nkey_seed: Some("/run/credentials/execmesh-gateway.service/nats-seed".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            config.policy_file.as_deref(),
            Some(Path::new("/etc/execmesh/policy.toml"))
        );
        assert_eq!(
            config.identities_file.as_deref(),
            Some(Path::new("/etc/execmesh/identities.toml"))
        );
        assert!(config.key_file.starts_with("/var/lib/execmesh/gateway"));
        assert!(
            config
                .exec_signing_key
                .starts_with("/var/lib/execmesh/gateway")
        );
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(
            &path,
            "nats_url = \"nats://10.0.0.1:4222\"\npage_max_lines = 50\ntenant = \"acme\"\n",
        )
        .unwrap();
        let cli = Settings {
            config: Some(path),
            page_max_lines: Some(70),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        assert_eq!(config.nats.url, "nats://10.0.0.1:4222");
        assert_eq!(config.page_max_lines, 70);
        assert_eq!(config.tenant, "acme");
        assert_eq!(config.page_max_bytes, 64 * 1024);
    }

    #[test]
    fn the_jetstream_budget_bounds_what_the_gateway_creates_and_is_checked() {
        use execmesh_proto::jetstream::StoreLimits;
        let config = Config::load(&Settings::default()).unwrap();
        assert_eq!(config.mesh().store_limits, StoreLimits::default());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "jetstream_budget_bytes = 1073741824\n").unwrap();
        let config = Config::load(&Settings {
            config: Some(path),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            config.mesh().store_limits,
            StoreLimits::from_budget(1024 * 1024 * 1024)
        );
        let err = Config::load(&Settings {
            jetstream_budget_bytes: Some(1000),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("jetstream_budget_bytes"), "{err}");
    }

    #[test]
    fn every_bad_value_is_named() {
        let cli = Settings {
            tenant: Some("Bad.Tenant".into()),
            page_max_lines: Some(0),
            allowed_origins: Some(vec!["example.com".into()]),
            ..Default::default()
        };
        let err = Config::load(&cli).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
    }

    #[test]
    fn a_tls_certificate_needs_its_key() {
        let cli = Settings {
            tls_cert: Some("gw.crt".into()),
            ..Default::default()
        };
        let err = Config::load(&cli).unwrap_err();
        assert!(
            err.to_string().contains("tls_cert and tls_key go together"),
            "{err}"
        );
        let cli = Settings {
            tls_cert: Some("gw.crt".into()),
            tls_key: Some("gw.key".into()),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        assert!(config.tls.is_some());
        let audience = config.audience("127.0.0.1:8420".parse().unwrap());
        assert_eq!(audience.resource, "https://127.0.0.1:8420/mcp");
    }

    #[test]
    fn the_admin_api_listens_on_loopback_by_default_and_off_disables_it() {
        let config = Config::load(&Settings::default()).unwrap();
        assert_eq!(config.admin_addr, Some(DEFAULT_ADMIN_ADDR));
        assert_eq!(Config::new("nats://x:4222", "k".into()).admin_addr, None);
        for off in ["off", ""] {
            let cli = Settings {
                admin_addr: Some(off.into()),
                ..Default::default()
            };
            assert_eq!(Config::load(&cli).unwrap().admin_addr, None, "{off:?}");
        }
        let cli = Settings {
            admin_addr: Some("localhost:8421".into()),
            ..Default::default()
        };
        assert!(
            Config::load(&cli)
                .unwrap_err()
                .to_string()
                .contains("admin_addr `localhost:8421`")
        );
    }

    #[test]
    fn a_non_loopback_admin_api_needs_tls_and_a_client_ca_needs_tls() {
        let cli = Settings {
            admin_addr: Some("0.0.0.0:8421".into()),
            admin_client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        let err = Config::load(&cli).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.problems[0].contains("admin_addr 0.0.0.0:8421"), "{err}");
        assert!(err.problems[0].contains("admin_tls_cert"), "{err}");
        assert!(err.problems[1].contains("admin_client_ca"), "{err}");
        let cli = Settings {
            admin_addr: Some("0.0.0.0:8421".into()),
            admin_tls_cert: Some("admin.crt".into()),
            admin_tls_key: Some("admin.key".into()),
            admin_client_ca: Some("ca.pem".into()),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        assert!(config.admin_tls.is_some() && config.admin_client_ca.is_some());
        let cli = Settings {
            admin_tls_cert: Some("admin.crt".into()),
            ..Default::default()
        };
        assert!(
            Config::load(&cli)
                .unwrap_err()
                .to_string()
                .contains("admin_tls_cert and admin_tls_key go together")
        );
    }

    #[test]
    fn token_lifetime_and_connection_limits_are_checked() {
        let config = Config::load(&Settings::default()).unwrap();
        assert_eq!(config.max_token_lifetime.as_secs(), 90 * 86400);
        assert_eq!(config.header_read_timeout.as_secs(), 10);
        assert_eq!(config.idle_timeout.as_secs(), 60);
        assert_eq!(config.max_connections_per_address, 128);
        assert!(!config.audience_explicit);
        let cli = Settings {
            max_token_lifetime_secs: Some(400 * 86400),
            header_read_timeout_secs: Some(0),
            idle_timeout_secs: Some(7200),
            ..Default::default()
        };
        let err = Config::load(&cli).unwrap_err();
        assert_eq!(err.problems.len(), 3, "{err}");
        assert!(err.problems[0].contains("max_token_lifetime_secs"), "{err}");
        assert!(
            err.problems[1].contains("header_read_timeout_secs"),
            "{err}"
        );
        assert!(err.problems[2].contains("idle_timeout_secs"), "{err}");
        let cli = Settings {
            public_url: Some("https://gw.example.com/mcp".into()),
            max_connections_per_address: Some(0),
            ..Default::default()
        };
        let config = Config::load(&cli).unwrap();
        assert!(config.audience_explicit);
        assert_eq!(config.max_connections_per_address, 0);
    }

    #[test]
    fn every_bad_certificate_pair_and_address_is_named_at_once() {
        let mut cli = Settings {
            tls_cert: Some("gw.crt".into()),
            admin_tls_key: Some("admin.key".into()),
            admin_addr: Some("nowhere".into()),
            ..Default::default()
        };
        cli.nats.nats_tls_cert = Some("nats.crt".into());
        let err = Config::load(&cli).unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        for needle in [
            "nats_tls_cert and",
            "tls_cert and",
            "admin_tls_cert and",
            "admin_addr",
        ] {
            assert!(
                err.to_string().contains(needle),
                "`{needle}` missing: {err}"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, "nats_ulr = \"x\"\n").unwrap();
        let cli = Settings {
            config: Some(path),
            ..Default::default()
        };
        assert!(
            Config::load(&cli)
                .unwrap_err()
                .to_string()
                .contains("nats_ulr")
        );
    }
}
