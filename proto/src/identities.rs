//! Who is who on NATS: the public identities file `execmeshctl nats-config` writes (`identities.toml`, public nkeys only), which identity may sign a record on which subject, and the check of a received record against it.
//!
//! Every identity of a secured mesh (the gateway replicas, the audit-sink, each agent, each
//! SSH relay) signs what it writes into JetStream with its own key (`signing::RecordKey`). A
//! reader that trusts the file checks each record it reads with [`Identities::check`]: signed,
//! by a key the file lists, whose identity is entitled to the record's subject:
//!
//! | subject | entitled |
//! |---|---|
//! | `mesh.v1.<tenant>.out.<host>.<job>` | the agent of `host`, a relay serving `host` |
//! | `mesh.v1.<tenant>.audit.<host>.<kind>` | the agent of `host`, a relay serving `host` |
//! | `mesh.v1.<tenant>.audit.gateway.<kind>` | the gateway |
//! | `$KV.mesh_presence.<tenant>.<host>`, `$KV.mesh_facts.<tenant>.<host>` | the agent of `host`, a relay serving `host` |
//! | `$KV.mesh_jobs.<tenant>.<host>.<job>` | the agent of `host`, a relay serving `host`, the gateway (it marks jobs of dead agents lost) |
//! | `$KV.mesh_approvals.…`, `$KV.mesh_revoked.…`, `$KV.mesh_oauth.…`, `$KV.mesh_tasks.…` | the gateway |
//!
//! Anything else (another tenant, another bucket) is entitled to nobody.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::HeaderMap;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::jetstream::{
    APPROVALS_BUCKET, FACTS_BUCKET, JOBS_BUCKET, OAUTH_BUCKET, PRESENCE_BUCKET, REVOKED_BUCKET,
    TASKS_BUCKET,
};
use crate::signing::{RecordSignatureError, SignedRecord, VerifyingKey, nkey_public_key};
use crate::subject::AUDIT_GATEWAY_SOURCE;
use crate::{Token, headers};

/// The file name `nats-config` writes next to `nats.conf`.
pub const IDENTITIES_FILE: &str = "identities.toml";

/// How often a [`LiveIdentities`] checks its file for changes.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two log lines about rejected records of one subject family and reason.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Rejection families remembered for rate limiting; beyond, the memory is cleared.
const REJECT_LOG_KEYS: usize = 4096;

/// Why the identities file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum IdentitiesError {
    /// The file cannot be read.
    #[error("cannot read the identities file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid; every problem is listed.
    #[error("invalid identities file {}:\n  {}", path.display(), problems.join("\n  "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// What an identity is, and so which records it may sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Every gateway replica (they share one identity).
    Gateway,
    /// The audit-sink: signs nothing the mesh reads.
    AuditSink,
    /// The node-agent of one host.
    Agent(Token),
    /// The SSH relay of one user, for its targets.
    Relay { user: Token, targets: Vec<Token> },
}

/// One identity of the mesh.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Its name, as in `nats-config`: `gateway`, `audit-sink`, `agent-<host>`, `relay-<user>`.
    pub name: String,
    pub role: Role,
    /// Its public nkey (`U…`).
    pub public_key: String,
    /// The Ed25519 key inside [`Identity::public_key`].
    key: VerifyingKey,
}

/// Why a record is not accepted as its subject's owner's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not signed, or the signature does not hold over this subject and content.
    #[error(transparent)]
    Signature(#[from] RecordSignatureError),
    /// Signed by a key the identities file does not list.
    #[error("signed by {signer}, a key the identities file does not list")]
    UnknownSigner { signer: String },
    /// Signed by a listed identity that may not write this subject (one agent speaking for
    /// another host, an agent writing an approval).
    #[error("signed by {identity}, which may not write {subject} (only {entitled} may)")]
    NotEntitled {
        identity: String,
        subject: String,
        entitled: String,
    },
    /// No identity may write this subject (another tenant, an unknown bucket).
    #[error("no identity of this mesh may write {subject}")]
    Nobody { subject: String },
}

impl RecordError {
    /// A short word for the reason, for logs and rate limiting.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Signature(RecordSignatureError::Unsigned) => "unsigned",
            Self::Signature(RecordSignatureError::Invalid { .. }) => "bad signature",
            Self::Signature(_) => "malformed signature",
            Self::UnknownSigner { .. } => "unknown signer",
            Self::NotEntitled { .. } => "signer not entitled",
            Self::Nobody { .. } => "nobody entitled",
        }
    }
}

/// Who may write a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Writers {
    Gateway,
    /// The agent of the host or a relay serving it (output, audit events, heartbeats, facts).
    Host(Token),
    /// The host's writers, or the gateway (job statuses).
    HostOrGateway(Token),
}

/// The identities of one tenant's mesh, by public key.
#[derive(Debug, Clone)]
pub struct Identities {
    pub tenant: Token,
    by_key: HashMap<String, Identity>,
    /// Agent host → its identity's name, for messages.
    agents: BTreeMap<Token, String>,
    /// Relays by target host: their identity names.
    relays: BTreeMap<Token, Vec<String>>,
}

/// The file as written (TOML).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tenant: String,
    gateway: String,
    audit_sink: String,
    #[serde(default)]
    agents: BTreeMap<String, String>,
    #[serde(default)]
    relays: BTreeMap<String, RelayFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RelayFile {
    key: String,
    targets: Vec<String>,
}

/// The content of an identities file, to write it (`nats-config` does).
#[derive(Debug, Clone, Default)]
pub struct IdentitiesDoc {
    pub tenant: String,
    /// Public nkeys.
    pub gateway: String,
    pub audit_sink: String,
    /// Host id → public nkey.
    pub agents: BTreeMap<String, String>,
    /// User → (public nkey, targets).
    pub relays: BTreeMap<String, (String, Vec<String>)>,
}

// === impl IdentitiesDoc ===

impl IdentitiesDoc {
    /// The file's text: commented TOML that [`Identities::parse`] reads back.
    pub fn render(&self, source: &str) -> String {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# The identities of an execmesh mesh: who is who on NATS, by public nkey. No secrets.\n\
             # Generated by `execmeshctl nats-config` from {source}: regenerate it instead of\n\
             # editing it. The gateway and the audit-sink read it (`identities_file`) to check that\n\
             # every record they read was signed by the identity entitled to write it."
        );
        let _ = writeln!(out, "tenant = {}", q(&self.tenant));
        let _ = writeln!(out, "gateway = {}", q(&self.gateway));
        let _ = writeln!(out, "audit_sink = {}", q(&self.audit_sink));
        let _ = writeln!(
            out,
            "\n# host id = the public nkey of its node-agent\n[agents]"
        );
        for (host, key) in &self.agents {
            let _ = writeln!(out, "{} = {}", q(host), q(key));
        }
        for (user, (key, targets)) in &self.relays {
            let targets: Vec<String> = targets.iter().map(|t| q(t)).collect();
            let _ = writeln!(
                out,
                "\n# the SSH relay of user {user}\n[relays.{}]\nkey = {}\ntargets = [{}]",
                q(user),
                q(key),
                targets.join(", ")
            );
        }
        out
    }
}

// === impl Identities ===

impl Identities {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, IdentitiesError> {
        let text = std::fs::read_to_string(path).map_err(|source| IdentitiesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|problems| IdentitiesError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Validates the file's text, naming every problem.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let file: File = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        let mut problems = Vec::new();
        let tenant = Token::parse("tenant", &file.tenant)
            .map_err(|e| problems.push(format!("tenant: {e}")))
            .ok();
        let mut by_key: HashMap<String, Identity> = HashMap::new();
        let mut agents = BTreeMap::new();
        let mut relays: BTreeMap<Token, Vec<String>> = BTreeMap::new();
        let mut add =
            |at: String, name: String, role: Role, public: &str, problems: &mut Vec<String>| {
                let key = match nkey_public_key(public) {
                    Ok(key) if public.starts_with('U') => key,
                    Ok(_) => {
                        problems.push(format!("{at}: `{public}` is not a user nkey (`U…`)"));
                        return;
                    }
                    Err(e) => {
                        problems.push(format!("{at}: `{public}` is not a public nkey: {e}"));
                        return;
                    }
                };
                if let Some(other) = by_key.get(public) {
                    problems.push(format!(
                    "{at}: the key of {name} is also the key of {}: every identity needs its own",
                    other.name
                ));
                    return;
                }
                by_key.insert(
                    public.to_string(),
                    Identity {
                        name,
                        role,
                        public_key: public.to_string(),
                        key,
                    },
                );
            };
        add(
            "gateway".into(),
            "gateway".into(),
            Role::Gateway,
            &file.gateway,
            &mut problems,
        );
        add(
            "audit_sink".into(),
            "audit-sink".into(),
            Role::AuditSink,
            &file.audit_sink,
            &mut problems,
        );
        for (host, public) in &file.agents {
            let at = format!("agents.{host}");
            match Token::parse("host id", host) {
                Ok(token) if token.as_str() == AUDIT_GATEWAY_SOURCE => problems.push(format!(
                    "{at}: `{host}` is reserved: audit events under that source are the gateway's"
                )),
                Ok(token) => {
                    let name = format!("agent-{token}");
                    agents.insert(token.clone(), name.clone());
                    add(at, name, Role::Agent(token), public, &mut problems);
                }
                Err(e) => problems.push(format!("{at}: {e}")),
            }
        }
        for (user, relay) in &file.relays {
            let at = format!("relays.{user}");
            let user = match Token::parse("user", user) {
                Ok(user) => user,
                Err(e) => {
                    problems.push(format!("{at}: {e}"));
                    continue;
                }
            };
            let mut targets = Vec::new();
            for (i, target) in relay.targets.iter().enumerate() {
                match Token::parse("host id", target) {
                    Ok(t) => targets.push(t),
                    Err(e) => problems.push(format!("{at}.targets[{i}]: {e}")),
                }
            }
            let name = format!("relay-{user}");
            for target in &targets {
                relays.entry(target.clone()).or_default().push(name.clone());
            }
            add(
                at,
                name,
                Role::Relay { user, targets },
                &relay.key,
                &mut problems,
            );
        }
        match tenant {
            Some(tenant) if problems.is_empty() => Ok(Self {
                tenant,
                by_key,
                agents,
                relays,
            }),
            _ => Err(problems),
        }
    }

    /// The identity whose public nkey is `public`.
    pub fn by_key(&self, public: &str) -> Option<&Identity> {
        self.by_key.get(public)
    }

    /// Every identity the file lists.
    pub fn all(&self) -> impl Iterator<Item = &Identity> {
        self.by_key.values()
    }

    /// Whether these identities grant everything `earlier` granted (identities were only
    /// added): a record `earlier` accepted is accepted now, and only ones it refused can change.
    pub fn extend(&self, earlier: &Identities) -> bool {
        self.tenant == earlier.tenant
            && earlier.by_key.iter().all(|(key, identity)| {
                self.by_key
                    .get(key)
                    .is_some_and(|now| now.name == identity.name && now.role == identity.role)
            })
    }

    /// How many identities the file lists.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether the file lists no identity (it always lists the gateway and the audit-sink).
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Checks a record stored on `subject`: signed by a listed identity entitled to the subject,
    /// and the signature holds. Returns that identity.
    pub fn check(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<&Identity, RecordError> {
        let record = SignedRecord::read(subject, headers, payload)?;
        let identity = self.entitled_signer(subject, &record.signer)?;
        record.verify(&identity.key)?;
        Ok(identity)
    }

    /// The identity of `signer` if it is listed and may write `subject`; the signature itself
    /// is not checked (see [`Identities::check`]).
    pub fn entitled_signer(&self, subject: &str, signer: &str) -> Result<&Identity, RecordError> {
        let writers = self.writers(subject).ok_or_else(|| RecordError::Nobody {
            subject: subject.to_string(),
        })?;
        let identity = self
            .by_key
            .get(signer)
            .ok_or_else(|| RecordError::UnknownSigner {
                signer: signer.to_string(),
            })?;
        if may_write(&identity.role, &writers) {
            Ok(identity)
        } else {
            Err(RecordError::NotEntitled {
                identity: identity.name.clone(),
                subject: subject.to_string(),
                entitled: self.describe(&writers),
            })
        }
    }

    /// Verifies a record already read with [`SignedRecord::read`] as `identity`'s.
    pub fn verify(identity: &Identity, record: &SignedRecord) -> Result<(), RecordError> {
        Ok(record.verify(&identity.key)?)
    }

    /// Who may write `subject`, or `None` when nobody may.
    fn writers(&self, subject: &str) -> Option<Writers> {
        let tokens: Vec<&str> = subject.split('.').collect();
        let host = |t: &str| Token::parse("host id", t).ok();
        let own_tenant = |t: &str| t == self.tenant.as_str();
        match tokens.as_slice() {
            ["mesh", "v1", tenant, "out", h, _job] if own_tenant(tenant) => {
                host(h).map(Writers::Host)
            }
            ["mesh", "v1", tenant, "audit", source, _kind] if own_tenant(tenant) => {
                if *source == AUDIT_GATEWAY_SOURCE {
                    Some(Writers::Gateway)
                } else {
                    host(source).map(Writers::Host)
                }
            }
            ["$KV", bucket, tenant, h]
                if own_tenant(tenant)
                    && (*bucket == PRESENCE_BUCKET || *bucket == FACTS_BUCKET) =>
            {
                // A relay target's heartbeat and fact pack are its relay's to write.
                host(h).map(Writers::Host)
            }
            ["$KV", bucket, tenant, h, _job] if own_tenant(tenant) && *bucket == JOBS_BUCKET => {
                host(h).map(Writers::HostOrGateway)
            }
            ["$KV", bucket, _, ..]
                if *bucket == APPROVALS_BUCKET
                    || *bucket == REVOKED_BUCKET
                    || *bucket == OAUTH_BUCKET
                    || *bucket == TASKS_BUCKET =>
            {
                Some(Writers::Gateway)
            }
            _ => None,
        }
    }

    /// The identities `writers` stands for, in words.
    fn describe(&self, writers: &Writers) -> String {
        let host_writers = |host: &Token, relays: bool| {
            let mut names = vec![
                self.agents
                    .get(host)
                    .cloned()
                    .unwrap_or_else(|| format!("agent-{host} (not in the identities file)")),
            ];
            if relays {
                names.extend(self.relays.get(host).into_iter().flatten().cloned());
            }
            names
        };
        let names = match writers {
            Writers::Gateway => vec!["gateway".to_string()],
            Writers::Host(host) => host_writers(host, true),
            Writers::HostOrGateway(host) => {
                let mut names = host_writers(host, true);
                names.push("gateway".into());
                names
            }
        };
        names.join(" or ")
    }
}

fn may_write(role: &Role, writers: &Writers) -> bool {
    let serves = |host: &Token| match role {
        Role::Agent(h) => h == host,
        Role::Relay { targets, .. } => targets.contains(host),
        _ => false,
    };
    match writers {
        Writers::Gateway => *role == Role::Gateway,
        Writers::Host(host) => serves(host),
        Writers::HostOrGateway(host) => *role == Role::Gateway || serves(host),
    }
}

// === live identities ===

/// What identifies a version of a file on disk without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// The identities a running service trusts: read at start, read again whenever the file changes
/// (a host was added). A file that no longer reads or validates is logged and the identities in
/// force stay.
#[derive(Debug)]
pub struct LiveIdentities {
    path: PathBuf,
    current: RwLock<Arc<Identities>>,
    stamp: Mutex<Option<Stamp>>,
}

impl LiveIdentities {
    /// Loads the file at `path`; a file that cannot be used is an error (the service refuses
    /// to start rather than trust nobody or everybody).
    pub fn load(path: &Path) -> Result<Self, IdentitiesError> {
        let stamp = stamp(path);
        let identities = Identities::load(path)?;
        info!(path = %path.display(), tenant = %identities.tenant, identities = identities.len(),
              "identities loaded: records are accepted only when signed by the identity entitled to them");
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(identities)),
            stamp: Mutex::new(stamp),
        })
    }

    /// The identities in force now.
    pub fn current(&self) -> Arc<Identities> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the file again if it changed since it was last read. A caller that comes while
    /// another reads it waits for the new identities rather than use the old ones.
    pub fn reload_if_changed(&self) {
        let now = stamp(&self.path);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return;
        }
        *last = now;
        match Identities::load(&self.path) {
            Ok(identities) => {
                info!(path = %self.path.display(), identities = identities.len(), "identities reloaded");
                match self.current.write() {
                    Ok(mut guard) => *guard = Arc::new(identities),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(identities),
                }
            }
            Err(e) => error!(path = %self.path.display(), error = %e,
                             "identities reload failed; the identities in force stay"),
        }
    }

    /// Checks a record against the identities in force ([`Identities::check`]); a signer the
    /// file does not list makes it read the file again first if it changed (a host was just
    /// added). Returns the signer's identity name.
    pub fn check(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<String, RecordError> {
        let first = self
            .current()
            .check(subject, headers, payload)
            .map(|i| i.name.clone());
        match first {
            Err(RecordError::UnknownSigner { .. }) => {
                self.reload_if_changed();
                self.current()
                    .check(subject, headers, payload)
                    .map(|i| i.name.clone())
            }
            other => other,
        }
    }

    /// Rereads the file whenever it changes, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => self.reload_if_changed(),
            }
        }
    }
}

/// The warning every service logs at start when it trusts no identities file.
pub const OPEN_MESH_WARNING: &str = "NO IDENTITIES FILE: records are not checked. Anyone who can \
     reach NATS can forge hosts (labels and facts that widen a user's reach), job output and \
     statuses, approvals, token revocations and audit events. Run NATS with the accounts \
     `execmeshctl nats-config` writes and set `identities_file` (and each service's \
     `nats_nkey_seed`) before trusting this mesh.";

// === rejection log ===

/// Rate-limited warnings about rejected records: one line per subject family and reason per
/// minute, with how many were suppressed meanwhile, so a forger (or a misconfigured agent)
/// cannot flood the log.
#[derive(Debug, Default)]
pub struct Rejections {
    /// (family, reason) → when last logged, rejections since.
    seen: Mutex<HashMap<RejectionFamily, (Instant, u64)>>,
}

/// A subject family (the subject without its last token) and a reason, as rate limited.
type RejectionFamily = (String, &'static str);

impl Rejections {
    /// Records that the record on `subject` was ignored for `error` (`reason` in a word, such as
    /// [`RecordError::reason`]); logs at warn unless the same family and reason was logged within
    /// the last minute. `what` says what was read.
    pub fn note(
        &self,
        what: &str,
        subject: &str,
        reason: &'static str,
        error: &dyn std::fmt::Display,
    ) {
        let family = family(subject);
        let suppressed = {
            let Ok(mut seen) = self.seen.lock() else {
                return;
            };
            if seen.len() >= REJECT_LOG_KEYS {
                seen.clear();
            }
            let now = Instant::now();
            match seen.get_mut(&(family.clone(), reason)) {
                Some((at, count)) if now.duration_since(*at) < REJECT_LOG_EVERY => {
                    *count += 1;
                    return;
                }
                Some((at, count)) => {
                    let suppressed = *count;
                    *at = now;
                    *count = 0;
                    suppressed
                }
                None => {
                    seen.insert((family.clone(), reason), (now, 0));
                    0
                }
            }
        };
        warn!(what, subject, reason, error = %error, suppressed,
              "ignoring a record not signed by the identity entitled to it");
    }
}

/// A subject without its last token (the job, the event kind): what rate limiting groups by.
fn family(subject: &str) -> String {
    match subject.rsplit_once('.') {
        Some((head, _)) if subject.starts_with("mesh.") || subject.starts_with("$KV.mesh_jobs") => {
            head.to_string()
        }
        _ => subject.to_string(),
    }
}

/// Whether a record read through a direct get was planted: it was itself the answer to a
/// JetStream request sent to a reply subject of the requester's choosing, so it carries the
/// server's answer headers twice (its own, stored, and those of this answer). Such a record's
/// `Nats-Subject` is ambiguous, and the record is not its subject's owner's.
pub fn is_planted(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| {
        [
            headers::NATS_STREAM,
            headers::NATS_SUBJECT,
            headers::NATS_SEQUENCE,
        ]
        .into_iter()
        .any(|name| h.get_all(name).count() > 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::RecordKey;

    struct Mesh {
        gateway: RecordKey,
        sink: RecordKey,
        web1: RecordKey,
        web2: RecordKey,
        relay: RecordKey,
        identities: Identities,
        text: String,
    }

    fn key() -> RecordKey {
        RecordKey::from_seed(&nkeys::KeyPair::new_user().seed().expect("seed")).expect("key")
    }

    fn mesh() -> Mesh {
        let (gateway, sink, web1, web2, relay) = (key(), key(), key(), key(), key());
        let doc = IdentitiesDoc {
            tenant: "default".into(),
            gateway: gateway.public_key().into(),
            audit_sink: sink.public_key().into(),
            agents: [
                ("web-1".to_string(), web1.public_key().to_string()),
                ("web-2".to_string(), web2.public_key().to_string()),
            ]
            .into(),
            relays: [(
                "alice".to_string(),
                (relay.public_key().to_string(), vec!["legacy-1".to_string()]),
            )]
            .into(),
        };
        let text = doc.render("test");
        let identities = Identities::parse(&text).expect("the rendered file parses");
        Mesh {
            gateway,
            sink,
            web1,
            web2,
            relay,
            identities,
            text,
        }
    }

    fn signed(key: &RecordKey, subject: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        key.sign(subject, &mut h, b"payload");
        h
    }

    fn check<'a>(m: &'a Mesh, key: &RecordKey, subject: &str) -> Result<&'a str, RecordError> {
        let h = signed(key, subject);
        m.identities
            .check(subject, Some(&h), b"payload")
            .map(|i| i.name.as_str())
    }

    #[test]
    fn identities_extend_earlier_ones_only_when_nothing_was_taken_away() {
        let m = mesh();
        let same = Identities::parse(&m.text).expect("parses");
        assert!(same.extend(&m.identities));

        // A host enrolled: everything granted before still is.
        let mut doc = IdentitiesDoc {
            tenant: "default".into(),
            gateway: m.gateway.public_key().into(),
            audit_sink: m.sink.public_key().into(),
            agents: [
                ("web-1".to_string(), m.web1.public_key().to_string()),
                ("web-2".to_string(), m.web2.public_key().to_string()),
                ("web-3".to_string(), key().public_key().to_string()),
            ]
            .into(),
            relays: [(
                "alice".to_string(),
                (
                    m.relay.public_key().to_string(),
                    vec!["legacy-1".to_string()],
                ),
            )]
            .into(),
        };
        let added = Identities::parse(&doc.render("test")).expect("parses");
        assert!(added.extend(&m.identities));
        assert!(!m.identities.extend(&added), "web-3 was taken away");

        // A host's key replaced, or a relay's targets changed: not an extension.
        doc.agents
            .insert("web-1".to_string(), key().public_key().to_string());
        let rotated = Identities::parse(&doc.render("test")).expect("parses");
        assert!(!rotated.extend(&m.identities));
        doc.agents
            .insert("web-1".to_string(), m.web1.public_key().to_string());
        doc.relays.insert(
            "alice".to_string(),
            (
                m.relay.public_key().to_string(),
                vec!["legacy-2".to_string()],
            ),
        );
        let retargeted = Identities::parse(&doc.render("test")).expect("parses");
        assert!(!retargeted.extend(&m.identities));
    }

    #[test]
    fn each_subject_is_written_by_its_owner_only() {
        let m = mesh();
        let own = [
            (&m.web1, "mesh.v1.default.out.web-1.job-1", "agent-web-1"),
            (
                &m.web1,
                "mesh.v1.default.audit.web-1.job-started",
                "agent-web-1",
            ),
            (&m.web1, "$KV.mesh_presence.default.web-1", "agent-web-1"),
            (&m.web1, "$KV.mesh_facts.default.web-1", "agent-web-1"),
            (&m.web1, "$KV.mesh_jobs.default.web-1.job-1", "agent-web-1"),
            (&m.gateway, "$KV.mesh_jobs.default.web-1.job-1", "gateway"),
            (&m.gateway, "$KV.mesh_approvals.default.apr-1", "gateway"),
            (&m.gateway, "$KV.mesh_revoked.abc", "gateway"),
            (&m.gateway, "$KV.mesh_oauth.refresh.abc", "gateway"),
            (&m.gateway, "$KV.mesh_tasks.default.task-1", "gateway"),
            (
                &m.gateway,
                "mesh.v1.default.audit.gateway.call-received",
                "gateway",
            ),
            (
                &m.relay,
                "mesh.v1.default.out.legacy-1.job-1",
                "relay-alice",
            ),
            (
                &m.relay,
                "$KV.mesh_jobs.default.legacy-1.job-1",
                "relay-alice",
            ),
            // A relay target is online while its relay's SSH connection is: the relay writes
            // its heartbeat and fact pack (DESIGN §2).
            (
                &m.relay,
                "$KV.mesh_presence.default.legacy-1",
                "relay-alice",
            ),
            (&m.relay, "$KV.mesh_facts.default.legacy-1", "relay-alice"),
        ];
        for (key, subject, name) in own {
            assert_eq!(check(&m, key, subject), Ok(name), "{subject}");
        }
        let foreign = [
            (&m.web1, "mesh.v1.default.out.web-2.job-1"),
            (&m.web1, "$KV.mesh_facts.default.web-2"),
            (&m.web1, "$KV.mesh_jobs.default.web-2.job-1"),
            (&m.web1, "$KV.mesh_approvals.default.apr-1"),
            (&m.web1, "$KV.mesh_revoked.abc"),
            (&m.web1, "$KV.mesh_oauth.code.abc"),
            (&m.web1, "$KV.mesh_tasks.default.task-1"),
            (&m.web1, "mesh.v1.default.audit.gateway.call-received"),
            (&m.web2, "mesh.v1.default.audit.web-1.job-started"),
            (&m.gateway, "$KV.mesh_facts.default.web-1"),
            (&m.gateway, "mesh.v1.default.out.web-1.job-1"),
            (&m.sink, "mesh.v1.default.audit.gateway.call-received"),
            (&m.relay, "$KV.mesh_presence.default.web-1"),
            (&m.relay, "$KV.mesh_facts.default.web-1"),
            (&m.relay, "mesh.v1.default.out.web-1.job-1"),
        ];
        for (key, subject) in foreign {
            let err = check(&m, key, subject).expect_err(subject);
            assert!(
                matches!(err, RecordError::NotEntitled { .. }),
                "{subject}: {err}"
            );
        }
        let err = check(&m, &m.web1, "mesh.v1.other.out.web-1.job-1").expect_err("tenant");
        assert!(matches!(err, RecordError::Nobody { .. }), "{err}");
        let err = check(&m, &key(), "mesh.v1.default.out.web-1.job-1").expect_err("stranger");
        assert!(matches!(err, RecordError::UnknownSigner { .. }), "{err}");
    }

    #[test]
    fn a_record_copied_onto_another_subject_is_refused() {
        let m = mesh();
        let own = "$KV.mesh_jobs.default.web-1.plant-1";
        let h = signed(&m.web1, own);
        let planted = m
            .identities
            .check("$KV.mesh_jobs.default.web-2.job-1", Some(&h), b"payload")
            .expect_err("planted");
        assert!(
            matches!(planted, RecordError::NotEntitled { .. }),
            "{planted}"
        );
        // Even onto another key of its own host: the signature names the subject.
        let err = m
            .identities
            .check("$KV.mesh_jobs.default.web-1.other", Some(&h), b"payload")
            .expect_err("moved");
        assert_eq!(err.reason(), "bad signature", "{err}");
        assert_eq!(
            m.identities
                .check(own, None, b"payload")
                .expect_err("unsigned")
                .reason(),
            "unsigned"
        );
    }

    #[test]
    fn bad_files_name_every_problem() {
        let m = mesh();
        let k = m.web1.public_key();
        let text = format!(
            "tenant = \"Bad\"\ngateway = \"{k}\"\naudit_sink = \"nope\"\n[agents]\n\"Web_1\" = \"{k}\"\ngateway = \"{}\"\n",
            m.web2.public_key()
        );
        let problems = Identities::parse(&text).expect_err("invalid").join("\n");
        for needle in [
            "tenant:",
            "audit_sink: `nope`",
            "agents.Web_1",
            "agents.gateway",
        ] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
        let twice = m.text.replace(m.web2.public_key(), m.web1.public_key());
        let problems = Identities::parse(&twice)
            .expect_err("duplicate key")
            .join("\n");
        assert!(
            problems.contains("also the key of agent-web-1"),
            "{problems}"
        );
    }

    #[test]
    fn planted_answers_are_recognised_by_repeated_server_headers() {
        let mut h = HeaderMap::new();
        h.insert(headers::NATS_STREAM, "KV_mesh_jobs");
        h.insert(headers::NATS_SUBJECT, "$KV.mesh_jobs.default.web-1.x");
        assert!(!is_planted(Some(&h)));
        h.append(headers::NATS_SUBJECT, "$KV.mesh_jobs.default.web-2.y");
        assert!(is_planted(Some(&h)));
        assert!(!is_planted(None));
    }
}
