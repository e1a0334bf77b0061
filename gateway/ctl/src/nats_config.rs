//! `execmeshctl nats-config` (also `execmesh-gateway nats-config`): the nats-server configuration of a secured mesh, one NATS user (nkey) per identity allowed only what that identity does.
//!
//! From an inventory (tenant, host ids, optional SSH relays) it writes `nats.conf` — one account
//! `MESH` with JetStream, and in it the gateway, the audit-sink and every agent as an nkey user
//! with its own permissions — and one seed file per identity (`seeds/<identity>.nk`, mode 0600).
//! Seeds already in the output directory are kept, so adding a host changes no other key;
//! `--rotate` replaces chosen ones. The configuration holds public keys only.
//!
//! What each identity may do is contract, decided in `execmesh_proto::permissions`; this module
//! lists the identities of an inventory, renders the configuration and keeps the seeds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use execmesh_proto::identities::IdentitiesDoc;
use execmesh_proto::jetstream::AUDIT_CONSUMER;
use execmesh_proto::permissions::{self, Permissions};
use execmesh_proto::{Token, subject};
use serde::Deserialize;

/// The one account every execmesh identity belongs to: they share its subjects and JetStream.
pub const ACCOUNT: &str = "MESH";
/// The configuration file written into the output directory.
pub const CONFIG_FILE: &str = "nats.conf";
/// The public identities file written into the output directory (the gateway's and the
/// audit-sink's `identities_file`).
pub use execmesh_proto::identities::IDENTITIES_FILE;
/// The directory (inside the output directory) holding one seed file per identity.
pub const SEEDS_DIR: &str = "seeds";
/// A host id that would let its agent publish audit events as the gateway (`audit.gateway.*`).
const RESERVED_HOST: &str = subject::AUDIT_GATEWAY_SOURCE;

/// Why no configuration was generated.
#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    /// The inventory file cannot be read.
    #[error("cannot read the inventory {path}: {source}")]
    ReadInventory {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The inventory is not valid; every problem is listed.
    #[error("invalid inventory {path}:\n  {}", problems.join("\n  "))]
    Inventory {
        path: PathBuf,
        problems: Vec<String>,
    },
    /// `--rotate` named an identity the inventory does not have.
    #[error("cannot rotate `{name}`: no such identity (the inventory has: {known})")]
    UnknownIdentity { name: String, known: String },
    /// A seed file exists but does not hold a user seed.
    #[error("seed file {path}: {reason} (remove it, or rotate the identity, to get a new one)")]
    Seed { path: PathBuf, reason: String },
    /// Writing the output failed.
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl NatsConfigError {
    /// Whether the caller asked for something impossible (exit 64), rather than the system failing.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::Inventory { .. } | Self::UnknownIdentity { .. } | Self::Seed { .. }
        )
    }
}

// === the inventory ===

/// The inventory file as written (TOML), before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    relays: Vec<RelayFile>,
    #[serde(default)]
    audit_consumer: Option<String>,
    #[serde(default)]
    server: Option<ServerSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    user: String,
    targets: Vec<String>,
}

/// What the mesh is made of: the input of the generator.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The tenant every host belongs to.
    pub tenant: Token,
    /// Host ids, one agent (and one NATS user) each.
    pub hosts: Vec<Token>,
    /// Personal SSH relays (DESIGN §8): each serves only its user's requests to its targets.
    pub relays: Vec<Relay>,
    /// The audit-sink's durable consumer on AUDIT (its `consumer` setting).
    pub audit_consumer: String,
    /// Server settings (listen address, JetStream store, TLS); `None` leaves them out, for a
    /// configuration included into another or given to a server started with flags.
    pub server: Option<ServerSettings>,
}

/// An SSH relay run by one user for some targets.
#[derive(Debug, Clone)]
pub struct Relay {
    pub user: Token,
    pub targets: Vec<Token>,
}

/// The server part of the generated configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Client address [default: 127.0.0.1:4222].
    #[serde(default = "default_listen")]
    pub listen: String,
    /// The server's name.
    #[serde(default)]
    pub server_name: Option<String>,
    /// JetStream's store directory [default: /var/lib/nats].
    #[serde(default = "default_store_dir")]
    pub store_dir: String,
    /// JetStream file storage limit [default: 20GB].
    #[serde(default = "default_max_file_store")]
    pub max_file_store: String,
    /// Monitoring endpoint (healthz, varz, jsz); `""` turns it off [default: 127.0.0.1:8222].
    #[serde(default = "default_http")]
    pub http: String,
    /// TLS for client connections.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

/// The server's certificate, and the CA client certificates must chain to when clients are
/// verified.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub ca: Option<String>,
    /// Require client certificates (signed by `ca`) on top of the nkeys.
    #[serde(default)]
    pub verify: bool,
}

fn default_listen() -> String {
    "127.0.0.1:4222".into()
}
fn default_store_dir() -> String {
    "/var/lib/nats".into()
}
fn default_max_file_store() -> String {
    "20GB".into()
}
fn default_http() -> String {
    "127.0.0.1:8222".into()
}

// === impl Inventory ===

impl Inventory {
    /// Reads and validates the inventory at `path`.
    pub fn load(path: &Path) -> Result<Self, NatsConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| NatsConfigError::ReadInventory {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|problems| NatsConfigError::Inventory {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Validates inventory text (TOML), naming every problem.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let file: InventoryFile = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let mut token =
            |kind: &'static str, at: String, value: &str| match Token::parse(kind, value) {
                Ok(token) => Some(token),
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    None
                }
            };
        let tenant = token(
            "tenant",
            "tenant".into(),
            file.tenant.as_deref().unwrap_or(subject::DEFAULT_TENANT),
        );
        let hosts = host_ids(&mut token, "hosts", &file.hosts);
        let relays: Vec<Relay> = file
            .relays
            .iter()
            .enumerate()
            .filter_map(|(i, relay)| {
                let user = token("user", format!("relays[{i}].user"), &relay.user);
                let targets = host_ids(&mut token, &format!("relays[{i}].targets"), &relay.targets);
                Some(Relay {
                    user: user?,
                    targets,
                })
            })
            .collect();
        let audit_consumer = file
            .audit_consumer
            .unwrap_or_else(|| AUDIT_CONSUMER.to_string());
        token("consumer name", "audit_consumer".into(), &audit_consumer);

        if file.hosts.is_empty() {
            problems.push("hosts: the inventory lists no host".into());
        }
        let mut seen = BTreeSet::new();
        for host in &hosts {
            if !seen.insert(host) {
                problems.push(format!("hosts: `{host}` is listed twice"));
            }
            if host.as_str() == RESERVED_HOST {
                problems.push(format!(
                    "hosts: `{host}` is reserved: audit events under that source are the \
                     gateway's, and an agent of that name could publish them"
                ));
            }
        }
        let mut users = BTreeSet::new();
        for (i, relay) in file.relays.iter().enumerate() {
            if !users.insert(&relay.user) {
                problems.push(format!(
                    "relays[{i}].user: `{}` has two relays; list all its targets in one",
                    relay.user
                ));
            }
            if relay.targets.is_empty() {
                problems.push(format!("relays[{i}].targets: no target"));
            }
        }
        if let Some(tls) = file.server.as_ref().and_then(|s| s.tls.as_ref())
            && tls.verify
            && tls.ca.is_none()
        {
            problems.push("server.tls.verify: client certificates need `ca`".into());
        }
        match tenant {
            Some(tenant) if problems.is_empty() => Ok(Self {
                tenant,
                hosts,
                relays,
                audit_consumer,
                server: file.server,
            }),
            _ => Err(problems),
        }
    }
}

// === identities ===

/// One NATS user of the mesh.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its name: `gateway`, `audit-sink`, `agent-<host>` or `relay-<user>`; also the stem of its
    /// seed file.
    pub name: String,
    /// Who uses it, for the comment in the configuration.
    pub description: String,
    /// The setting that points the service at its seed file.
    pub setting: &'static str,
    /// The inbox prefix its service uses (derived from the identity, see
    /// `execmesh_proto::subject`): its permissions allow subscribing under it only.
    pub inbox: String,
    pub permissions: Permissions,
}

/// Every identity of the inventory, gateway first.
pub fn identities(inventory: &Inventory) -> Vec<Identity> {
    let tenant = &inventory.tenant;
    let mut out = vec![
        Identity {
            name: "gateway".into(),
            description: "every gateway replica".into(),
            setting: "execmesh-gateway: nats_nkey_seed",
            inbox: subject::GATEWAY_INBOX.into(),
            permissions: permissions::gateway(),
        },
        Identity {
            name: "audit-sink".into(),
            description: format!("every audit-sink (consumer `{}`)", inventory.audit_consumer),
            setting: "execmesh-audit-sink: nats_nkey_seed",
            inbox: subject::AUDIT_SINK_INBOX.into(),
            permissions: permissions::audit_sink(&inventory.audit_consumer),
        },
    ];
    out.extend(inventory.hosts.iter().map(|host| Identity {
        name: format!("agent-{host}"),
        description: format!("the node-agent of host {host} (tenant {tenant})"),
        setting: "execmesh-node-agent: nats_nkey_seed",
        inbox: subject::agent_inbox(tenant, host),
        permissions: permissions::agent(tenant, host),
    }));
    out.extend(inventory.relays.iter().map(|relay| {
        let targets: Vec<&str> = relay.targets.iter().map(Token::as_str).collect();
        Identity {
            name: format!("relay-{}", relay.user),
            description: format!(
                "the SSH relay of user {} for {} (tenant {tenant})",
                relay.user,
                targets.join(", ")
            ),
            setting: "execmesh-node-agent relay: nats_nkey_seed",
            inbox: subject::relay_inbox(tenant, &relay.user),
            permissions: permissions::relay(tenant, &relay.user, &relay.targets),
        }
    }));
    out
}

// === the server configuration ===

/// A nats-server configuration: server settings and the users of the mesh account.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Comment lines written at the top.
    pub header: Vec<String>,
    /// Server settings; `None` writes the account only.
    pub server: Option<ServerSettings>,
    /// The users of [`ACCOUNT`].
    pub users: Vec<User>,
    /// The user a connection without credentials becomes (test harnesses, local development);
    /// `None`: such connections are refused.
    pub no_auth_user: Option<String>,
}

/// One user of the mesh account.
#[derive(Debug, Clone)]
pub struct User {
    /// Written as a comment above the user.
    pub comment: String,
    pub auth: UserAuth,
    /// `None`: every subject (an administrator).
    pub permissions: Option<Permissions>,
}

/// How a user proves who it is.
#[derive(Debug, Clone)]
pub enum UserAuth {
    /// An nkey public key (`U…`); the user holds the seed.
    Nkey(String),
    /// A user name and password (for test harnesses; execmesh's identities use nkeys).
    Password { user: String, password: String },
}

// === impl ServerConfig ===

impl ServerConfig {
    /// The configuration text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            let _ = writeln!(out, "# {line}");
        }
        if let Some(server) = &self.server {
            render_server(&mut out, server);
        }
        let _ = writeln!(
            out,
            "\naccounts {{\n  {ACCOUNT} {{\n    jetstream: enabled\n    users: ["
        );
        for user in &self.users {
            let _ = writeln!(out, "      # {}", user.comment);
            let _ = writeln!(out, "      {{");
            match &user.auth {
                UserAuth::Nkey(key) => {
                    let _ = writeln!(out, "        nkey: {}", quote(key));
                }
                UserAuth::Password { user, password } => {
                    let _ = writeln!(out, "        user: {}", quote(user));
                    let _ = writeln!(out, "        password: {}", quote(password));
                }
            }
            if let Some(p) = &user.permissions {
                render_permissions(&mut out, p);
            }
            let _ = writeln!(out, "      }}");
        }
        let _ = writeln!(out, "    ]\n  }}\n}}");
        if let Some(user) = &self.no_auth_user {
            let _ = writeln!(out, "\nno_auth_user: {}", quote(user));
        }
        out
    }
}

fn render_server(out: &mut String, s: &ServerSettings) {
    let _ = writeln!(out, "\nlisten: {}", quote(&s.listen));
    if let Some(name) = &s.server_name {
        let _ = writeln!(out, "server_name: {}", quote(name));
    }
    let _ = writeln!(
        out,
        "# Job output records are at most 256 KiB; file reads and copies travel in ~512 KiB \
         messages.\nmax_payload: 1MB"
    );
    if !s.http.is_empty() {
        let _ = writeln!(out, "http: {}", quote(&s.http));
    }
    let _ = writeln!(
        out,
        "\njetstream {{\n  store_dir: {}\n  max_file_store: {}\n  max_memory_store: 256MB\n}}",
        quote(&s.store_dir),
        s.max_file_store
    );
    if let Some(tls) = &s.tls {
        let _ = writeln!(out, "\ntls {{");
        let _ = writeln!(out, "  cert_file: {}", quote(&tls.cert));
        let _ = writeln!(out, "  key_file: {}", quote(&tls.key));
        if let Some(ca) = &tls.ca {
            let _ = writeln!(out, "  ca_file: {}", quote(ca));
        }
        if tls.verify {
            let _ = writeln!(out, "  verify: true");
        }
        let _ = writeln!(out, "}}");
    }
}

fn render_permissions(out: &mut String, p: &Permissions) {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("              {}", quote(s)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let _ = writeln!(out, "        permissions: {{");
    let _ = writeln!(
        out,
        "          publish: {{\n            allow: [\n{}\n            ]\n          }}",
        list(&p.publish)
    );
    let _ = writeln!(
        out,
        "          subscribe: {{\n            allow: [\n{}\n            ]\n          }}",
        list(&p.subscribe)
    );
    if let Some(r) = &p.responses {
        let _ = writeln!(
            out,
            "          allow_responses: {{ max: {}, expires: {} }}",
            r.max,
            quote(&r.expires)
        );
    }
    let _ = writeln!(out, "        }}");
}

/// A double-quoted configuration string (subjects hold `$`, `*` and `>`).
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

// === generation ===

/// What happened to one identity's seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedState {
    /// Made now: the identity is new.
    New,
    /// Found in the output directory and kept.
    Kept,
    /// Replaced on request (`--rotate`).
    Rotated,
}

/// One identity as written.
#[derive(Debug, Clone)]
pub struct Written {
    pub identity: Identity,
    /// Its nkey public key, as in the configuration.
    pub public_key: String,
    /// Its seed file (mode 0600).
    pub seed_file: PathBuf,
    pub seed: SeedState,
}

/// The result of [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    /// `<out>/nats.conf`.
    pub config_file: PathBuf,
    /// `<out>/identities.toml`: every identity's public key, for `identities_file`.
    pub identities_file: PathBuf,
    /// The configuration as written, to extend (tests add a harness user).
    pub config: ServerConfig,
    /// Every identity, gateway first.
    pub identities: Vec<Written>,
}

/// Writes `<out>/nats.conf` and `<out>/seeds/<identity>.nk` for `inventory`; seeds already there
/// are kept unless their identity is in `rotate`.
pub fn generate(
    inventory: &Inventory,
    source: &str,
    out: &Path,
    rotate: &[String],
) -> Result<Generated, NatsConfigError> {
    let identities = identities(inventory);
    let names: BTreeSet<&str> = identities.iter().map(|i| i.name.as_str()).collect();
    if let Some(name) = rotate.iter().find(|r| !names.contains(r.as_str())) {
        return Err(NatsConfigError::UnknownIdentity {
            name: name.clone(),
            known: names.into_iter().collect::<Vec<_>>().join(", "),
        });
    }
    let seeds = out.join(SEEDS_DIR);
    create_private_dir(out, 0o755)?;
    create_private_dir(&seeds, 0o700)?;

    let mut written = Vec::with_capacity(identities.len());
    for identity in identities {
        let seed_file = seeds.join(format!("{}.nk", identity.name));
        let rotated = rotate.contains(&identity.name);
        let (public_key, seed) = match (rotated, read_seed(&seed_file)?) {
            (false, Some(key)) => (key, SeedState::Kept),
            (rotated, _) => {
                let pair = nkeys::KeyPair::new_user();
                let text = pair.seed().map_err(|e| NatsConfigError::Seed {
                    path: seed_file.clone(),
                    reason: e.to_string(),
                })?;
                write_file(&seed_file, format!("{text}\n").as_bytes(), 0o600)?;
                let state = if rotated {
                    SeedState::Rotated
                } else {
                    SeedState::New
                };
                (pair.public_key(), state)
            }
        };
        written.push(Written {
            identity,
            public_key,
            seed_file,
            seed,
        });
    }

    let config = ServerConfig {
        header: vec![
            format!(
                "execmesh NATS server configuration for tenant `{}`.",
                inventory.tenant
            ),
            format!("Generated by `execmeshctl nats-config` from {source}: regenerate it"),
            "instead of editing it. Public keys only; each identity's seed is in seeds/.".into(),
        ],
        server: inventory.server.clone(),
        users: written
            .iter()
            .map(|w| User {
                comment: format!("{}: {}", w.identity.name, w.identity.description),
                auth: UserAuth::Nkey(w.public_key.clone()),
                permissions: Some(w.identity.permissions.clone()),
            })
            .collect(),
        no_auth_user: None,
    };
    let config_file = out.join(CONFIG_FILE);
    write_file(&config_file, config.render().as_bytes(), 0o644)?;
    let identities_file = out.join(IDENTITIES_FILE);
    write_file(
        &identities_file,
        identities_doc(inventory, &written)
            .render(source)
            .as_bytes(),
        0o644,
    )?;
    Ok(Generated {
        config_file,
        identities_file,
        config,
        identities: written,
    })
}

/// The public identities file's content: every identity's public key, by role.
fn identities_doc(inventory: &Inventory, written: &[Written]) -> IdentitiesDoc {
    let key = |name: &str| {
        written
            .iter()
            .find(|w| w.identity.name == name)
            .map(|w| w.public_key.clone())
            .unwrap_or_default()
    };
    IdentitiesDoc {
        tenant: inventory.tenant.to_string(),
        gateway: key("gateway"),
        audit_sink: key("audit-sink"),
        agents: inventory
            .hosts
            .iter()
            .map(|h| (h.to_string(), key(&format!("agent-{h}"))))
            .collect(),
        relays: inventory
            .relays
            .iter()
            .map(|r| {
                let targets = r.targets.iter().map(Token::to_string).collect();
                (
                    r.user.to_string(),
                    (key(&format!("relay-{}", r.user)), targets),
                )
            })
            .collect(),
    }
}

/// The public key of the user seed in `path`, or `None` if there is no such file.
fn read_seed(path: &Path) -> Result<Option<String>, NatsConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(NatsConfigError::Seed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            });
        }
    };
    let fail = |reason: String| NatsConfigError::Seed {
        path: path.to_path_buf(),
        reason,
    };
    let pair = nkeys::KeyPair::from_seed(text.trim()).map_err(|e| fail(e.to_string()))?;
    let key = pair.public_key();
    if !key.starts_with('U') {
        return Err(fail("not a user seed (`SU…`)".into()));
    }
    Ok(Some(key))
}

fn create_private_dir(path: &Path, mode: u32) -> Result<(), NatsConfigError> {
    let fail = |source| NatsConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(path).map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// Writes `bytes` to a temp file created with `mode` beside `path` and renames it over `path`,
/// so a reader (or a crash) never sees half a file, and a seed is never readable by others.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NatsConfigError> {
    let fail = |source| NatsConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// `nats-config` (of `execmeshctl` and of `execmesh-gateway`): writes the configuration and
/// seeds for the inventory at `inventory` into `out`, prints what it wrote. Exit 64 when the
/// inventory or `rotate` is wrong (nothing is written), 1 when writing fails.
pub fn run(inventory: &Path, out: &Path, rotate: &[String]) -> ExitCode {
    let result = Inventory::load(inventory)
        .and_then(|parsed| generate(&parsed, &inventory.display().to_string(), out, rotate));
    match result {
        Ok(generated) => {
            print!("{}", summary(&generated));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot write the NATS configuration: {e}");
            ExitCode::from(if e.is_usage() { 64 } else { 1 })
        }
    }
}

/// The summary `nats-config` prints: each identity, its key, its seed file and where it goes.
pub fn summary(generated: &Generated) -> String {
    let mut out = format!("wrote {}\n", generated.config_file.display());
    let width = generated
        .identities
        .iter()
        .map(|w| w.identity.name.len())
        .max()
        .unwrap_or(0);
    let mut by_setting: BTreeMap<&str, usize> = BTreeMap::new();
    for w in &generated.identities {
        *by_setting.entry(w.identity.setting).or_default() += 1;
        let state = match w.seed {
            SeedState::New => "new",
            SeedState::Kept => "kept",
            SeedState::Rotated => "rotated",
        };
        let _ = writeln!(
            out,
            "  {:width$}  {}  {} ({state})",
            w.identity.name,
            w.public_key,
            w.seed_file.display()
        );
    }
    let _ = writeln!(
        out,
        "wrote {} (public keys: the gateway's and the audit-sink's `identities_file`)",
        generated.identities_file.display()
    );
    let _ = writeln!(
        out,
        "Give each service its seed file (`nats_nkey_seed`; agents: seeds/agent-<host>.nk), then \
         start (or reload) nats-server with {}.",
        generated.config_file.display()
    );
    out
}

/// The host ids listed at `at` in the inventory, each checked by `token` (which names a bad one
/// as a problem at `at[i]`).
fn host_ids(
    token: &mut impl FnMut(&'static str, String, &str) -> Option<Token>,
    at: &str,
    values: &[String],
) -> Vec<Token> {
    values
        .iter()
        .enumerate()
        .filter_map(|(i, value)| token("host id", format!("{at}[{i}]"), value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_problems_are_all_named() {
        let problems = Inventory::parse(
            r#"
            tenant = "Prod"
            hosts = ["web-1", "Web_2", "web-1", "gateway", "a.b"]
            [[relays]]
            user = "al ice"
            targets = ["db-*"]
            "#,
        )
        .expect_err("the inventory is refused");
        let text = problems.join("\n");
        for needle in [
            "tenant: tenant `Prod`",
            "hosts[1]: host id `Web_2`",
            "hosts[4]: host id `a.b`",
            "`web-1` is listed twice",
            "`gateway` is reserved",
            "relays[0].user: user `al ice`",
            "relays[0].targets[0]: host id `db-*`",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
        }
        assert!(
            Inventory::parse("hosts = []").is_err(),
            "an empty inventory"
        );
        assert!(
            Inventory::parse("hosts = [\"a\"]\nhsots = 1").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn configuration_quotes_subjects_and_lists_every_identity() {
        let inventory = Inventory::parse(
            r#"
            hosts = ["web-1", "web-2"]
            [server]
            listen = "0.0.0.0:4222"
            [server.tls]
            cert = "/etc/nats/server.crt"
            key = "/etc/nats/server.key"
            "#,
        )
        .expect("a valid inventory");
        let dir = tempfile::tempdir().expect("temp dir");
        let generated = generate(&inventory, "test", dir.path(), &[]).expect("generated");
        let names: Vec<&str> = generated
            .identities
            .iter()
            .map(|w| w.identity.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["gateway", "audit-sink", "agent-web-1", "agent-web-2"]
        );
        let text = std::fs::read_to_string(&generated.config_file).expect("config written");
        assert!(text.contains("\"$KV.mesh_facts.default.web-1\""), "{text}");
        assert!(
            text.contains("cert_file: \"/etc/nats/server.crt\""),
            "{text}"
        );
        for w in &generated.identities {
            assert!(text.contains(&w.public_key));
            let mode = std::fs::metadata(&w.seed_file)
                .expect("seed written")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{}", w.seed_file.display());
            let seed = std::fs::read_to_string(&w.seed_file).expect("seed");
            assert!(!text.contains(seed.trim()), "a seed leaked into the config");
        }

        // The public identities file names every identity's key, and no seed.
        let text = std::fs::read_to_string(&generated.identities_file).expect("identities");
        let identities =
            execmesh_proto::identities::Identities::parse(&text).expect("the identities parse");
        for w in &generated.identities {
            let listed = identities.by_key(&w.public_key).expect("listed");
            assert_eq!(listed.name, w.identity.name);
            let seed = std::fs::read_to_string(&w.seed_file).expect("seed");
            assert!(
                !text.contains(seed.trim()),
                "a seed leaked into the identities"
            );
        }

        // Generating again keeps every key; rotating replaces only the one named.
        let again = generate(&inventory, "test", dir.path(), &["agent-web-2".into()])
            .expect("generated again");
        let keys = |g: &Generated| -> Vec<String> {
            g.identities.iter().map(|w| w.public_key.clone()).collect()
        };
        let (before, after) = (keys(&generated), keys(&again));
        assert_eq!(before[..3], after[..3]);
        assert_ne!(before[3], after[3]);
        assert_eq!(again.identities[3].seed, SeedState::Rotated);
        let unknown = generate(&inventory, "test", dir.path(), &["agent-db-1".into()])
            .expect_err("unknown identity");
        assert!(unknown.to_string().contains("agent-db-1"), "{unknown}");
    }
}
