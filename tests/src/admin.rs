//! The admin API from a test: test certificates (a CA, the gateway's server certificate, client certificates), and channels to a test gateway for `execmeshctl`'s admin client (the five `execmesh.v1` services with a bearer token).
//!
//! ```no_run
//! # async fn scenario(nats: &execmesh_tests::Nats) {
//! # use execmesh_tests::Gateway;
//! # use execmesh_proto::pb;
//! let gw = Gateway::new(nats).admin().start().await;
//! let mut admin = gw.admin_client("root").await;
//! let hosts = admin.hosts.list(pb::ListHostsRequest::default()).await.unwrap();
//! # }
//! ```

use std::time::Duration;

use execmesh_gateway::core::tier::Tier;
use execmeshctl::admin_client::{self, ClientTls, ConnectError};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::Channel;

/// The admin client the scenarios use: `execmeshctl`'s own.
pub use execmeshctl::admin_client::AdminClient;

use crate::{Policy, RunningGateway};

/// Approves approval `id` through `admin` (an approver's client) and returns the approval,
/// checked `approved`. Panics when the admin API refuses.
pub async fn approve(admin: &AdminClient, id: &str) -> execmesh_proto::pb::Approval {
    use execmesh_proto::pb;
    let mut approvals = admin.approvals.clone();
    let approved = approvals
        .approve(pb::ApproveRequest { id: id.to_string() })
        .await
        .unwrap_or_else(|e| panic!("approving {id}: {e}"))
        .into_inner();
    let approval = approved.approval.expect("an approval");
    assert_eq!(
        approval.state(),
        pb::ApprovalState::Approved,
        "{approval:?}"
    );
    approval
}

/// A team policy for operator scenarios: alice and bob, both `dangerous` everywhere and both
/// approvers, and every `bash` call held for a teammate's approval. Nobody is a token admin: each
/// mints tokens through the admin API for themselves only.
pub fn team_policy() -> Policy {
    Policy::new()
        .group("ops", Tier::Dangerous, &["*"], &["alice", "bob"])
        .toml(
            r#"# Every command waits for a teammate.
[[approvals]]
tool = "bash"

# Either may release the other's commands (never their own).
[approvers]
groups = ["ops"]
"#,
        )
}

/// Asserts an admin call failed with `code` and a message that has `needle`; returns the
/// status for further checks.
#[track_caller]
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    needle: &str,
) -> tonic::Status {
    let status = result.expect_err("the call must fail");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(needle),
        "{needle:?} not in {:?}",
        status.message()
    );
    status
}

/// A gateway on `nats` serving the admin API and enforcing `policy` (see [`team_policy`]).
pub async fn admin_gateway(nats: &crate::Nats, policy: impl std::fmt::Display) -> RunningGateway {
    crate::Gateway::new(nats)
        .policy(policy)
        .admin()
        .start()
        .await
}

/// A `GetJob` request for job `id`, on whichever host ran it.
pub fn get_job(id: &str) -> execmesh_proto::pb::GetJobRequest {
    execmesh_proto::pb::GetJobRequest {
        job_id: id.to_string(),
        host: String::new(),
    }
}

/// Lifetime of admin tokens minted by [`RunningGateway::mint_admin`].
const TOKEN_TTL: Duration = Duration::from_secs(3600);
/// How long a test client may take to connect to the admin API.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a test gateway serves its admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminMode {
    /// Plaintext on loopback.
    Plain,
    /// TLS with a certificate signed by the test CA.
    Tls,
    /// TLS, and client certificates signed by the test CA required.
    Mtls,
}

/// A certificate (PEM) and its private key (PEM).
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    pub cert: String,
    pub key: String,
}

/// The certificates of a test admin API: a CA, the server's certificate for `localhost` and
/// `127.0.0.1`, and a client certificate, all signed by the CA.
#[derive(Debug, Clone)]
pub struct AdminPki {
    /// The CA certificate (PEM) clients trust and the server checks client certificates with.
    pub ca: String,
    pub server: CertifiedKey,
    /// A client certificate the CA signed (accepted under mTLS).
    pub client: CertifiedKey,
}

// === impl AdminPki ===

impl AdminPki {
    /// A fresh CA with a server and a client certificate.
    pub fn generate() -> Self {
        let (ca, ca_key) = certificate_authority("execmesh test admin CA");
        let server = leaf(
            &ca,
            &ca_key,
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            &ca,
            &ca_key,
            &["admin-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Self {
            ca: ca.pem(),
            server,
            client,
        }
    }

    /// A client certificate from another CA, which this gateway must refuse.
    pub fn foreign_client() -> CertifiedKey {
        let (ca, ca_key) = certificate_authority("some other CA");
        leaf(
            &ca,
            &ca_key,
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

fn certificate_authority(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("generate a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign the CA");
    (cert, key)
}

fn leaf(
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> CertifiedKey {
    let key = KeyPair::generate().expect("generate a key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("certificate parameters");
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = params
        .signed_by(&key, ca, ca_key)
        .expect("sign a certificate with the CA");
    CertifiedKey {
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

// === impl RunningGateway ===

impl RunningGateway {
    /// A bearer token for `user` with the `admin` scope (and `mcp`), valid for an hour.
    pub fn mint_admin(&self, user: &str) -> String {
        self.issue(user, TOKEN_TTL, "mcp admin", Tier::Dangerous)
    }

    /// A channel to the admin API: over TLS trusting the test CA when it serves TLS, with the
    /// test client certificate when it requires one.
    pub async fn admin_channel(&self) -> Result<Channel, ConnectError> {
        let client = self.admin_pki().map(|pki| pki.client.clone());
        self.admin_channel_with(client.as_ref()).await
    }

    /// A channel to the admin API presenting `client` (or no certificate with `None`).
    pub async fn admin_channel_with(
        &self,
        client: Option<&CertifiedKey>,
    ) -> Result<Channel, ConnectError> {
        let addr = self
            .admin_addr()
            .expect("the gateway serves no admin API: start it with .admin()");
        match self.admin_pki() {
            None => admin_client::connect(&format!("http://{addr}"), None, CONNECT_TIMEOUT).await,
            Some(pki) => {
                let tls = ClientTls {
                    ca: Some(pki.ca.clone().into_bytes()),
                    identity: client
                        .map(|c| (c.cert.clone().into_bytes(), c.key.clone().into_bytes())),
                    domain: Some("localhost".into()),
                };
                admin_client::connect(&format!("https://{addr}"), Some(&tls), CONNECT_TIMEOUT).await
            }
        }
    }

    /// Admin clients authenticated as `user` with an admin-scoped token.
    pub async fn admin_client(&self, user: &str) -> AdminClient {
        let token = self.mint_admin(user);
        self.admin_client_with_token(Some(&token)).await
    }

    /// Admin clients sending `token` as it is (or none).
    pub async fn admin_client_with_token(&self, token: Option<&str>) -> AdminClient {
        let channel = self
            .admin_channel()
            .await
            .unwrap_or_else(|e| panic!("connect to the admin API: {e:?}"));
        AdminClient::new(channel, token)
    }
}
