//! The gateway in-process on a loopback port, with a signing key for minting bearer tokens, stopped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use execmesh_gateway::config::TlsFiles;
use execmesh_gateway::core::auth::{Audience, MCP_SCOPE, SigningKey, TokenSpec};
use execmesh_gateway::core::tier::Tier;
use execmesh_gateway::{Config, GatewayError};
use serde_json::Value;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Nats;
use crate::admin::{AdminMode, AdminPki};
use crate::certificates::TestCa;
use crate::client::{McpClient, post_raw};

/// How long a started gateway may take to answer its first HTTP request.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a stopping gateway may take to finish.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lifetime of tokens minted by [`RunningGateway::mint`].
const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How to run one gateway replica.
///
/// ```no_run
/// # async fn scenario(nats: &execmesh_tests::Nats) {
/// # use execmesh_tests::Gateway;
/// let gw = Gateway::new(nats).start().await;
/// let replica = Gateway::new(nats).replica_of(&gw).start().await; // accepts gw's tokens
/// # }
/// ```
pub struct Gateway {
    /// The configuration handed to `execmesh_gateway::run` (its `listen` is set at start).
    config: Config,
    /// The signing key file, when shared with another replica; a fresh one otherwise.
    key_file: Option<PathBuf>,
    /// The policy: text written to a file at start, or a file to use as it is.
    policy: Option<PolicySource>,
    /// Serve HTTPS with a certificate made for 127.0.0.1 at start.
    https: bool,
    /// Serve the admin API on a loopback port, and how.
    admin: Option<AdminMode>,
    /// Runbook files (name, TOML) written to `runbooks/` next to the policy file at start.
    runbooks: Vec<(String, String)>,
}

/// Where a test gateway's policy comes from.
enum PolicySource {
    Text(String),
    File(PathBuf),
}

/// A gateway serving on `127.0.0.1:<port>`; cancelled on drop.
pub struct RunningGateway {
    /// The bound address.
    addr: SocketAddr,
    /// The key that signs this gateway's tokens (loaded from the same file the gateway uses).
    key: SigningKey,
    /// The signing key file.
    key_file: PathBuf,
    /// Cancels `run`.
    shutdown: CancellationToken,
    /// The task running `execmesh_gateway::run`; `None` once stopped.
    task: Option<JoinHandle<Result<(), GatewayError>>>,
    /// The issuer and resource its tokens name.
    audience: Audience,
    /// The policy file, if it has one.
    policy_file: Option<PathBuf>,
    /// With HTTPS: the certificate of the test CA that signed the gateway's (PEM), which clients
    /// must trust.
    certificate: Option<String>,
    /// Where the admin API listens, if it is served.
    admin_addr: Option<SocketAddr>,
    /// The admin API's certificates, when it serves TLS.
    admin_pki: Option<AdminPki>,
    /// Holds a fresh key file; removed on drop (after the task is cancelled).
    _dir: TempDir,
}

// === impl Gateway ===

impl Gateway {
    /// A gateway on `nats` with the default configuration and a fresh signing key.
    pub fn new(nats: &Nats) -> Self {
        Self {
            // The real key file is chosen at start; this placeholder is replaced there.
            config: Config {
                // The test mesh's command key, which its agents trust.
                exec_signing_key: nats.mesh_signing_key(),
                nats_tls_ca: nats.tls_ca().map(Path::to_path_buf),
                nats_tls_client: nats.tls_client_cert().map(|c| TlsFiles {
                    cert: c.cert.clone(),
                    key: c.key.clone(),
                }),
                // The test mesh's gateway identity: it signs what it writes and checks what it
                // reads against the mesh's identities file, as a secured gateway does.
                nats_nkey_seed: Some(nats.identities().seed_file("gateway")),
                identities_file: Some(nats.identities().identities_file()),
                ..Config::new(&nats.url(), PathBuf::new())
            },
            key_file: None,
            policy: None,
            https: false,
            admin: None,
            runbooks: Vec::new(),
        }
    }

    /// Another replica of `gateway`: the same token key, public URL (token audience) and policy
    /// file, so each accepts the other's tokens, as replicas behind one load balancer do.
    pub fn replica_of(mut self, gateway: &RunningGateway) -> Self {
        self.key_file = Some(gateway.key_file.clone());
        self.config.public_url = Some(gateway.audience.resource.clone());
        if let Some(path) = &gateway.policy_file {
            self.policy = Some(PolicySource::File(path.clone()));
        }
        self
    }

    /// Serves HTTPS with a certificate for 127.0.0.1 from a test CA (see
    /// [`RunningGateway::certificate`] and [`RunningGateway::http_client`]).
    pub fn https(mut self) -> Self {
        self.https = true;
        self
    }

    /// Serves the admin API (gRPC) in plaintext on a loopback port (see
    /// [`RunningGateway::admin_client`]).
    pub fn admin(mut self) -> Self {
        self.admin = Some(AdminMode::Plain);
        self
    }

    /// Serves the admin API as `mode` says: over TLS with a certificate of a fresh test CA
    /// ([`RunningGateway::admin_pki`]), and with [`AdminMode::Mtls`] requiring client
    /// certificates that CA signed.
    pub fn admin_mode(mut self, mode: AdminMode) -> Self {
        self.admin = Some(mode);
        self
    }

    /// Enforces the policy `text` (TOML, see `execmesh_gateway::core::policy`, or a
    /// [`Policy`](crate::policy::Policy)), written to a file in the gateway's temp dir. Without a policy the gateway runs in development mode.
    pub fn policy(mut self, text: impl std::fmt::Display) -> Self {
        self.policy = Some(PolicySource::Text(text.to_string()));
        self
    }

    /// Adds runbook `name` (a runbook file's TOML, see `execmesh_gateway::core::runbooks`),
    /// written to the `runbooks/` directory next to the policy file at start.
    pub fn runbook(mut self, name: &str, toml: &str) -> Self {
        self.runbooks.push((name.to_string(), toml.to_string()));
        self
    }

    /// Enforces the policy file at `path` (shared with another replica, or changed by the test
    /// to see a reload).
    pub fn policy_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy = Some(PolicySource::File(path.into()));
        self
    }

    /// Signs requests to agents with the key at `path` (created if missing) instead of the
    /// test mesh's, which agents started by the harness trust.
    pub fn exec_signing_key(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.exec_signing_key = path.into();
        self
    }

    /// Uses (and, if missing, creates) the signing key at `path`, so replicas sharing it accept
    /// each other's tokens.
    pub fn key_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.key_file = Some(path.into());
        self
    }

    /// Adds a public host name the gateway answers to (Host header validation).
    pub fn public_name(mut self, name: &str) -> Self {
        self.config.public_names.push(name.to_string());
        self
    }

    /// Adds an allowed browser Origin.
    pub fn allowed_origin(mut self, origin: &str) -> Self {
        self.config.allowed_origins.push(origin.to_string());
        self
    }

    /// Changes any other part of the configuration.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// The mesh as this gateway would reach it (its NATS connection, its record key and the
    /// identities it trusts), without serving anything: for tests of the core's stores.
    pub async fn mesh(self) -> execmesh_gateway::core::mesh::Mesh {
        crate::init_tracing();
        execmesh_gateway::core::mesh::Mesh::connect(&self.config.mesh())
            .await
            .unwrap_or_else(|e| panic!("cannot reach the mesh: {e}"))
    }

    /// Binds `127.0.0.1:0`, spawns `execmesh_gateway::run` on a task and waits until it answers
    /// HTTP. Panics if the gateway stops before that.
    pub async fn start(self) -> RunningGateway {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-gateway-")
            .tempdir()
            .expect("create a temp dir for the gateway");
        let key_file = self
            .key_file
            .unwrap_or_else(|| dir.path().join("signing.key"));
        let key = SigningKey::load_or_create(&key_file)
            .unwrap_or_else(|e| panic!("signing key {}: {e}", key_file.display()));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let mut config = self.config;
        config.listen = addr;
        config.key_file = key_file.clone();
        let policy_file = match self.policy {
            Some(PolicySource::Text(text)) => {
                let path = dir.path().join("policy.toml");
                std::fs::write(&path, text).expect("write the test policy");
                Some(path)
            }
            Some(PolicySource::File(path)) => Some(path),
            None => None,
        };
        config.policy_file = policy_file.clone();
        if !self.runbooks.is_empty() {
            let policy = policy_file
                .as_deref()
                .expect("runbooks come with a policy: give one with `policy`");
            let dir = execmesh_gateway::core::policy::runbooks_dir(policy);
            std::fs::create_dir_all(&dir).expect("create the runbooks directory");
            for (name, toml) in &self.runbooks {
                std::fs::write(dir.join(format!("{name}.toml")), toml)
                    .expect("write a test runbook");
            }
        }
        let certificate = self.https.then(|| {
            let ca = TestCa::new("execmesh test gateway CA");
            let files = ca
                .server(&["127.0.0.1", "localhost"])
                .write(dir.path(), "tls");
            config.tls = Some(TlsFiles {
                cert: files.cert,
                key: files.key,
            });
            ca.pem()
        });
        let audience = config.audience(addr);
        let (admin_listener, admin_pki) = match self.admin {
            None => (None, None),
            Some(mode) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind 127.0.0.1:0 for the admin API");
                let pki = (mode != AdminMode::Plain).then(|| {
                    let pki = AdminPki::generate();
                    let write = |name: &str, pem: &str| {
                        let path = dir.path().join(name);
                        std::fs::write(&path, pem).expect("write a test admin certificate");
                        path
                    };
                    config.admin_tls = Some(execmesh_gateway::config::TlsFiles {
                        cert: write("admin.crt", &pki.server.cert),
                        key: write("admin.key", &pki.server.key),
                    });
                    if mode == AdminMode::Mtls {
                        config.admin_client_ca = Some(write("admin-ca.crt", &pki.ca));
                    }
                    pki
                });
                (Some(listener), pki)
            }
        };
        let admin_addr = admin_listener
            .as_ref()
            .map(|l| l.local_addr().expect("a bound listener has an address"));

        let shutdown = CancellationToken::new();
        let task = tokio::spawn(execmesh_gateway::run_with_admin(
            config,
            listener,
            admin_listener,
            shutdown.clone(),
        ));
        let mut gateway = RunningGateway {
            addr,
            key,
            key_file,
            shutdown,
            task: Some(task),
            audience,
            policy_file,
            certificate,
            admin_addr,
            admin_pki,
            _dir: dir,
        };
        gateway.wait_serving().await;
        tracing::debug!(%addr, "gateway ready");
        gateway
    }
}

// === impl RunningGateway ===

impl RunningGateway {
    /// The MCP endpoint, `http://127.0.0.1:<port>/mcp`.
    pub fn url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    /// With HTTPS, the certificate of the test CA that signed the gateway's (PEM), for clients to
    /// trust.
    pub fn certificate(&self) -> Option<&str> {
        self.certificate.as_deref()
    }

    /// A reqwest client for this gateway: it trusts the gateway's certificate under HTTPS.
    pub fn http_client(&self) -> reqwest::Client {
        self.http_client_with_timeout(Duration::from_secs(30))
    }

    fn http_client_with_timeout(&self, timeout: Duration) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(pem) = &self.certificate {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .expect("the test certificate parses");
            builder = builder.add_root_certificate(cert);
        }
        builder.build().expect("an HTTP client")
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, if the gateway serves it ([`Gateway::admin`]).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The admin API's test certificates, when it serves TLS.
    pub fn admin_pki(&self) -> Option<&AdminPki> {
        self.admin_pki.as_ref()
    }

    /// The signing key file (pass it to [`Gateway::key_file`] for another replica).
    pub fn key_file(&self) -> &Path {
        &self.key_file
    }

    /// A bearer token for `user`, valid for an hour.
    pub fn mint(&self, user: &str) -> String {
        self.mint_with_ttl(user, TOKEN_TTL)
    }

    /// A bearer token for `user`, valid for `ttl` (as `token mint` makes them: scope `mcp`, the
    /// tier left to the policy).
    pub fn mint_with_ttl(&self, user: &str, ttl: Duration) -> String {
        self.issue(user, ttl, MCP_SCOPE, Tier::Dangerous)
    }

    /// A bearer token for `user` with the given lifetime, scope and tier cap.
    pub fn issue(&self, user: &str, ttl: Duration, scope: &str, tier: Tier) -> String {
        let spec = TokenSpec {
            user,
            ttl,
            scope,
            tier,
            client_id: None,
        };
        self.key
            .issue(&self.audience, &spec)
            .unwrap_or_else(|e| panic!("mint a token for {user}: {e}"))
            .token
    }

    /// A token with exactly `claims` (a JSON object), signed with this gateway's key: what
    /// someone holding the key file, or a minting host with a wrong clock, could make.
    pub fn sign_claims(&self, claims: &Value) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use ed25519_dalek::Signer;
        let seed = std::fs::read_to_string(&self.key_file).expect("read the gateway key");
        let seed: [u8; 32] = STANDARD
            .decode(seed.trim())
            .expect("a base64 key")
            .try_into()
            .expect("a 32-byte seed");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"at+jwt"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("JSON claims"));
        let input = format!("{header}.{payload}");
        let signature = key.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The issuer and resource of this gateway's tokens (`public_url`, else its own address).
    pub fn audience(&self) -> &Audience {
        &self.audience
    }

    /// `http://127.0.0.1:<port>`, where the OAuth endpoints are.
    pub fn base_url(&self) -> String {
        let scheme = if self.certificate.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The policy file the gateway enforces, if any.
    pub fn policy_path(&self) -> Option<&Path> {
        self.policy_file.as_deref()
    }

    /// An MCP client (newest protocol) authenticated as `user`.
    pub async fn client(&self, user: &str) -> McpClient {
        McpClient::new(&self.url(), &self.mint(user)).await
    }

    /// An MCP client (newest protocol) authenticated as `user` that declares the Tasks
    /// extension on its requests.
    pub async fn task_client(&self, user: &str) -> McpClient {
        McpClient::with_tasks(&self.url(), &self.mint(user)).await
    }

    /// An MCP client authenticated as `user` that uses the `initialize` handshake of `version`.
    pub async fn legacy_client(&self, user: &str, version: &str) -> McpClient {
        McpClient::legacy(&self.url(), &self.mint(user), version).await
    }

    /// POSTs `body` to the MCP endpoint as is (see [`post_raw`]).
    pub async fn post_raw(&self, token: Option<&str>, body: Value) -> reqwest::Response {
        post_raw(&self.url(), token, body).await
    }

    /// Cancels the gateway and waits for `run` to return. Panics if it returned an error or did
    /// not finish within 10 s.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(STOP_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("gateway {} failed: {e}", self.addr),
            Ok(Err(e)) => panic!("gateway {} task failed: {e}", self.addr),
            Err(_) => panic!("gateway {} did not stop within {STOP_TIMEOUT:?}", self.addr),
        }
    }

    /// Waits until the gateway answers an HTTP request (any status), or panics with the reason it
    /// stopped.
    async fn wait_serving(&mut self) {
        let http = self.http_client_with_timeout(Duration::from_secs(1));
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if http.get(self.url()).send().await.is_ok() {
                return;
            }
            if let Some(task) = self.task.as_mut()
                && task.is_finished()
            {
                let outcome = match task.await {
                    Ok(Ok(())) => "returned Ok(()) without serving".to_string(),
                    Ok(Err(e)) => format!("failed: {e}"),
                    Err(e) => format!("panicked: {e}"),
                };
                self.task = None;
                panic!("gateway on {} stopped before serving: {outcome}", self.addr);
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "gateway on {} not serving within {READY_TIMEOUT:?}",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            // Drop cannot wait for a graceful finish (`stop` does); aborting makes sure no
            // gateway task outlives the handle that owns it.
            task.abort();
        }
    }
}
