//! The identities of a test mesh: a seed per identity (gateway, audit-sink, each agent) and the public identities file listing their keys, so the agents, gateways and sinks the harness starts sign and check their records as a secured mesh does, even on a server without NATS accounts.
//!
//! ```no_run
//! # async fn scenario() {
//! # use execmesh_tests::Nats;
//! let nats = Nats::start().await;
//! let seed = nats.identities().seed_file("agent-web-1"); // made on first use, file rewritten
//! let key = nats.identities().record_key("gateway"); // to sign a record as the gateway
//! # }
//! ```
//!
//! Agent identities are made on demand (the first `NodeAgent::new` for a host); the identities
//! file is then rewritten (a new file renamed over the old one), and a gateway or sink that meets
//! a signer it does not know yet reads it again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use execmesh_proto::identities::{IDENTITIES_FILE, IdentitiesDoc};
use execmesh_proto::signing::RecordKey;

/// The test mesh's identities, in a directory of the server's temp dir.
#[derive(Debug)]
pub struct MeshIdentities {
    dir: PathBuf,
    /// Identity name → its seed (the text written to `<dir>/<name>.nk`).
    seeds: Mutex<BTreeMap<String, String>>,
    /// Relay identity (`relay-<user>`) → the targets it serves.
    relay_targets: Mutex<BTreeMap<String, Vec<String>>>,
}

// === impl MeshIdentities ===

impl MeshIdentities {
    /// The gateway's and the audit-sink's identities in `dir` (created), and the file.
    pub(crate) fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("create the test mesh's identities dir");
        let identities = Self {
            dir: dir.to_path_buf(),
            seeds: Mutex::new(BTreeMap::new()),
            relay_targets: Mutex::new(BTreeMap::new()),
        };
        identities.add(["gateway".to_string(), "audit-sink".to_string()]);
        identities
    }

    /// The public identities file (`identities_file` of the gateways and sinks).
    pub fn identities_file(&self) -> PathBuf {
        self.dir.join(IDENTITIES_FILE)
    }

    /// The seed file of `identity` (`gateway`, `audit-sink`, `agent-<host>`), made (and the
    /// identities file rewritten) if the identity is new.
    pub fn seed_file(&self, identity: &str) -> PathBuf {
        self.add([identity.to_string()]);
        self.dir.join(format!("{identity}.nk"))
    }

    /// The seed file of the SSH relay of `user` serving `targets` (made, or its targets
    /// replaced, and the identities file rewritten).
    pub fn relay_seed_file(&self, user: &str, targets: &[&str]) -> PathBuf {
        let name = format!("relay-{user}");
        self.relay_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                name.clone(),
                targets.iter().map(|t| t.to_string()).collect(),
            );
        self.add([name.clone()]);
        // The targets may have changed for a known identity: write the file again.
        let seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        write_atomically(&self.identities_file(), &self.render(&seeds));
        self.dir.join(format!("{name}.nk"))
    }

    /// Makes the agent identities of `hosts` at once (one rewrite of the file), for fleets.
    pub fn add_agents<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        self.add(hosts.into_iter().map(|h| format!("agent-{h}")));
    }

    /// Enrols the agent of `host` with the key of `seed`, made before (records it signed
    /// meanwhile were refused); the identities file is rewritten.
    pub fn enrol_agent_with(&self, host: &str, seed: &str) {
        let name = format!("agent-{host}");
        let mut seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        write_atomically(&self.dir.join(format!("{name}.nk")), &format!("{seed}\n"));
        seeds.insert(name, seed.to_string());
        write_atomically(&self.identities_file(), &self.render(&seeds));
    }

    /// The signing key of `identity` (made if new), to sign records as it.
    pub fn record_key(&self, identity: &str) -> RecordKey {
        let path = self.seed_file(identity);
        RecordKey::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn add(&self, names: impl IntoIterator<Item = String>) {
        let mut seeds = self.seeds.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for name in names {
            if seeds.contains_key(&name) {
                continue;
            }
            assert!(
                name == "gateway"
                    || name == "audit-sink"
                    || name.starts_with("agent-")
                    || name.starts_with("relay-"),
                "unknown kind of identity `{name}`"
            );
            let seed = nkeys::KeyPair::new_user()
                .seed()
                .expect("a new user key has a seed");
            write_atomically(&self.dir.join(format!("{name}.nk")), &format!("{seed}\n"));
            seeds.insert(name, seed);
            changed = true;
        }
        if changed {
            write_atomically(&self.identities_file(), &self.render(&seeds));
        }
    }

    /// The identities file for `seeds`.
    fn render(&self, seeds: &BTreeMap<String, String>) -> String {
        let relays = self
            .relay_targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        render(seeds, &relays)
    }
}

/// The identities file for `seeds`, with the targets of each relay identity.
fn render(seeds: &BTreeMap<String, String>, relays: &BTreeMap<String, Vec<String>>) -> String {
    let public = |seed: &str| {
        nkeys::KeyPair::from_seed(seed)
            .expect("a seed made by the harness")
            .public_key()
    };
    let mut doc = IdentitiesDoc {
        tenant: execmesh_proto::subject::DEFAULT_TENANT.to_string(),
        ..Default::default()
    };
    for (name, seed) in seeds {
        match name.as_str() {
            "gateway" => doc.gateway = public(seed),
            "audit-sink" => doc.audit_sink = public(seed),
            relay if relay.starts_with("relay-") => {
                let user = relay.trim_start_matches("relay-").to_string();
                let targets = relays.get(relay).cloned().unwrap_or_default();
                doc.relays.insert(user, (public(seed), targets));
            }
            agent => {
                let host = agent.trim_start_matches("agent-").to_string();
                doc.agents.insert(host, public(seed));
            }
        }
    }
    doc.render("the test harness")
}

/// Writes `text` to a new file renamed over `path`: a reader sees the old file or the new one,
/// and the new inode tells a polling reader that it changed.
fn write_atomically(path: &Path, text: &str) {
    use std::os::unix::fs::OpenOptionsExt as _;
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        file.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    }
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Writes `value` under `key` of `store` signed with `signer`, whatever the key holds now: how a
/// scenario plants a record as the identity that would write it (an agent's job record or facts).
pub async fn put_signed(
    js: &async_nats::jetstream::Context,
    store: &async_nats::jetstream::kv::Store,
    key: &str,
    value: Vec<u8>,
    signer: &RecordKey,
) {
    let headers = async_nats::HeaderMap::new();
    let any = execmesh_runtime::kv_write::Expect::Any;
    execmesh_runtime::kv_write::write(js, store, key, value.into(), headers, any, Some(signer))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

/// Registers `hosts` as hosts long gone (offline): each one's registration, `{host,
/// collected_at_ms: 1}` in `mesh_facts`, signed by its own agent's key (enrolled here), as its
/// agent wrote it before it went away. The buckets must exist (an agent or gateway made them).
pub async fn register_gone_hosts(nats: &crate::Nats, hosts: &[String]) {
    let facts = |host: &str| execmesh_proto::pb::HostFacts {
        host: host.to_string(),
        collected_at_ms: 1,
        ..Default::default()
    };
    register_hosts(nats, hosts, facts, false).await;
}

/// Registers `hosts` as present without an agent: each one's fact pack (`facts(host)`) and a
/// heartbeat that stays current for ten minutes, both signed by the host's own agent key
/// (enrolled here), as its agent would write them. Lists past what can connect here, or past
/// one direct get, without a process per host. The buckets must exist.
pub async fn register_present_hosts(
    nats: &crate::Nats,
    hosts: &[String],
    facts: impl Fn(&str) -> execmesh_proto::pb::HostFacts,
) {
    register_hosts(nats, hosts, facts, true).await;
}

/// Enrolls `hosts`' agent keys and writes each one's fact pack, and a heartbeat when
/// `heartbeat`, signed with its agent's key.
async fn register_hosts(
    nats: &crate::Nats,
    hosts: &[String],
    facts: impl Fn(&str) -> execmesh_proto::pb::HostFacts,
    heartbeat: bool,
) {
    use execmesh_proto::jetstream::{FACTS_BUCKET, PRESENCE_BUCKET};
    use futures::StreamExt as _;
    use prost::Message as _;

    nats.identities()
        .add_agents(hosts.iter().map(String::as_str));
    let js = nats.jetstream().await;
    let facts_kv = js.get_key_value(FACTS_BUCKET).await.expect("facts bucket");
    let presence = js
        .get_key_value(PRESENCE_BUCKET)
        .await
        .expect("presence bucket");
    futures::stream::iter(hosts)
        .map(|host| {
            let (js, facts_kv, presence) = (&js, &facts_kv, &presence);
            let pack = facts(host);
            async move {
                let key = nats.identities().record_key(&format!("agent-{host}"));
                let entry = format!("default.{host}");
                put_signed(js, facts_kv, &entry, pack.encode_to_vec(), &key).await;
                if heartbeat {
                    let beat = execmesh_proto::pb::Presence {
                        host: host.clone(),
                        heartbeat_at_ms: execmesh_proto::now_ms(),
                        heartbeat_interval_ms: 600_000,
                        ..Default::default()
                    };
                    put_signed(js, presence, &entry, beat.encode_to_vec(), &key).await;
                }
            }
        })
        .buffer_unordered(256)
        .collect::<()>()
        .await;
}
