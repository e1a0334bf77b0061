//! A secured test mesh: the NATS accounts `execmeshctl nats-config` generates for a test inventory, its services on their own credentials, and connections as any identity.
//!
//! ```no_run
//! # async fn scenario() {
//! # use execmesh_tests::nats_accounts::SecuredMesh;
//! let mesh = SecuredMesh::generate(&["web-1", "web-2"]);
//! let nats = mesh.start_nats().await;
//! let gw = mesh.gateway(&nats).start().await; // creates the streams the agents may not
//! let agent = mesh.agent(&nats, "web-1").start().await;
//! let mut thief = mesh.connect_as(&nats, "agent-web-1").await;
//! let _sub = thief.client.subscribe("mesh.v1.default.host.web-2.>").await;
//! thief.refused("mesh.v1.default.host.web-2.>").await;
//! # }
//! ```
//!
//! The server runs the generated account plus one user, `harness`, with every right, that
//! connections without credentials become (`no_auth_user`): the harness's own connections (an
//! agent's readiness, audit queries, [`Nats::client`]) keep working unchanged, while every
//! execmesh process, and every connection made with [`SecuredMesh::connect_as`], is its identity.
//! [`SecuredMesh::generated_config`] is the configuration exactly as generated, without that
//! user.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{Client, Event, ServerError};
use execmeshctl::nats_config::{self, Generated, Inventory, User, UserAuth};
use tempfile::TempDir;
use tokio::sync::mpsc;

use crate::{AuditSink, Gateway, Nats, NodeAgent};

/// The user connections without credentials become on a [`SecuredMesh`]'s server.
pub const HARNESS_USER: &str = "harness";
/// How long [`Identified::refused`] waits for the server's report.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The generated NATS accounts of one test mesh, with the seed files of its identities.
pub struct SecuredMesh {
    /// Holds the inventory, `nats.conf` and `seeds/`.
    dir: TempDir,
    /// What the generator wrote.
    generated: Generated,
}

/// A connection as one identity, with the permission violations the server reported on it.
pub struct Identified {
    pub client: Client,
    /// The identity's inbox prefix (replies to its requests arrive under it).
    pub inbox: String,
    /// The identity's signing key (the key of its seed), to sign records as it.
    pub key: execmesh_proto::signing::RecordKey,
    /// The text of every `Permissions Violation …` error, in order.
    violations: mpsc::UnboundedReceiver<String>,
}

// === impl SecuredMesh ===

impl SecuredMesh {
    /// Generates the accounts of tenant `default` with an agent identity per host in `hosts`.
    pub fn generate(hosts: &[&str]) -> Self {
        Self::generate_with_relays(hosts, &[])
    }

    /// [`SecuredMesh::generate`] plus an SSH relay identity (`relay-<user>`) per `(user,
    /// targets)` in `relays`.
    pub fn generate_with_relays(hosts: &[&str], relays: &[(&str, &[&str])]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("execmesh-accounts-")
            .tempdir()
            .expect("create a temp dir for the NATS accounts");
        let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        let mut text = format!("tenant = \"default\"\nhosts = [{}]\n", list.join(", "));
        for (user, targets) in relays {
            let targets: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
            text.push_str(&format!(
                "\n[[relays]]\nuser = {user:?}\ntargets = [{}]\n",
                targets.join(", ")
            ));
        }
        let path = dir.path().join("inventory.toml");
        std::fs::write(&path, &text).expect("write the test inventory");
        let inventory = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let generated = nats_config::generate(
            &inventory,
            &path.display().to_string(),
            &dir.path().join("out"),
            &[],
        )
        .unwrap_or_else(|e| panic!("generating the NATS accounts failed: {e}"));
        Self { dir, generated }
    }

    /// The configuration exactly as generated (no server section: the harness sets address,
    /// port and store with flags).
    pub fn generated_config(&self) -> String {
        std::fs::read_to_string(&self.generated.config_file).expect("read the generated nats.conf")
    }

    /// The generated configuration plus the [`HARNESS_USER`], whom connections without
    /// credentials become.
    pub fn server_config(&self) -> String {
        let mut config = self.generated.config.clone();
        config.users.push(User {
            comment: "the test harness's own connections (no credentials)".into(),
            auth: UserAuth::Password {
                user: HARNESS_USER.into(),
                // Never used: connections without credentials become this user.
                password: HARNESS_USER.into(),
            },
            permissions: None,
        });
        config.no_auth_user = Some(HARNESS_USER.into());
        config.render()
    }

    /// A nats-server running [`SecuredMesh::server_config`].
    pub async fn start_nats(&self) -> Nats {
        Nats::builder().config(self.server_config()).start().await
    }

    /// The seed file of `identity` (`gateway`, `audit-sink`, `agent-<host>`).
    pub fn seed_file(&self, identity: &str) -> PathBuf {
        self.written(identity).seed_file.clone()
    }

    /// The nkey public key of `identity`.
    pub fn public_key(&self, identity: &str) -> &str {
        &self.written(identity).public_key
    }

    /// The agent of `host`, authenticating (and signing its records) with its own seed.
    pub fn agent(&self, nats: &Nats, host: &str) -> NodeAgent {
        NodeAgent::new(nats, host).nkey_seed(self.seed_file(&format!("agent-{host}")))
    }

    /// A gateway authenticating with the gateway seed and checking records against the
    /// generated identities file.
    pub fn gateway(&self, nats: &Nats) -> Gateway {
        let seed = self.seed_file("gateway");
        let identities = self.identities_file();
        Gateway::new(nats).configure(|c| {
            c.nats.nkey_seed = Some(seed);
            c.identities_file = Some(identities);
        })
    }

    /// An audit-sink authenticating with the audit-sink seed and checking event signatures
    /// against the generated identities file.
    pub fn audit_sink(&self, nats: &Nats) -> AuditSink {
        AuditSink::new(nats)
            .nkey_seed(self.seed_file("audit-sink"))
            .identities_file(Some(self.identities_file()))
    }

    /// The generated public identities file (`identities.toml`).
    pub fn identities_file(&self) -> PathBuf {
        self.generated.identities_file.clone()
    }

    /// The signing key of `identity`, to sign records as it (or as someone who stole its seed).
    pub fn record_key(&self, identity: &str) -> execmesh_proto::signing::RecordKey {
        execmesh_proto::signing::RecordKey::load(&self.seed_file(identity))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Connects to `nats` as `identity`, with its seed and inbox prefix, as its service would
    /// (or as someone who stole its seed).
    pub async fn connect_as(&self, nats: &Nats, identity: &str) -> Identified {
        let written = self.written(identity);
        let seed = std::fs::read_to_string(&written.seed_file).expect("read the seed");
        let (tx, violations) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::new()
            .name(format!("execmesh-tests as {identity}"))
            .nkey(seed.trim().to_string())
            .custom_inbox_prefix(&written.identity.inbox)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(ServerError::Other(msg)) = event
                        && msg.contains("Permissions Violation")
                    {
                        let _ = tx.send(msg);
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect as {identity}: {e}"));
        Identified {
            client,
            inbox: written.identity.inbox.clone(),
            key: execmesh_proto::signing::RecordKey::from_seed(seed.trim())
                .unwrap_or_else(|e| panic!("{e}")),
            violations,
        }
    }

    /// The directory holding `nats.conf` and `seeds/`.
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn written(&self, identity: &str) -> &nats_config::Written {
        self.generated
            .identities
            .iter()
            .find(|w| w.identity.name == identity)
            .unwrap_or_else(|| panic!("no identity {identity} in the test mesh"))
    }
}

// === impl Identified ===

impl Identified {
    /// Waits until the server reports a permissions violation for exactly `subject` and
    /// returns its text; earlier reports for other subjects are skipped. Panics if none comes
    /// within 10 s: the operation was allowed.
    #[track_caller]
    pub fn refused<'a>(
        &'a mut self,
        subject: &'a str,
    ) -> impl std::future::Future<Output = String> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let quoted = format!("\"{subject}\"");
            let wait = async {
                while let Some(msg) = self.violations.recv().await {
                    if msg.contains(&quoted) {
                        return Some(msg);
                    }
                }
                None
            };
            match tokio::time::timeout(REFUSAL_TIMEOUT, wait).await {
                Ok(Some(msg)) => msg,
                _ => panic!(
                    "{caller}: NATS did not refuse `{subject}` within {REFUSAL_TIMEOUT:?}: \
                     the identity is allowed more than it should be"
                ),
            }
        }
    }

    /// Violations reported so far and not yet consumed by [`Identified::refused`].
    pub fn pending_violations(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(msg) = self.violations.try_recv() {
            out.push(msg);
        }
        out
    }
}
