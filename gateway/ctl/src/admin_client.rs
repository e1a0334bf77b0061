//! The client of the gateway's gRPC admin API: the channel (plaintext, TLS or mTLS) and the six
//! `execmesh.v1` service clients on it, each request carrying the bearer token.
//!
//! `execmeshctl` connects with it, and so do the end-to-end tests, so both speak to the admin API
//! the same way:
//!
//! ```no_run
//! # async fn list() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use execmesh_proto::pb;
//! use execmeshctl::admin_client::{self, AdminClient, ClientTls};
//!
//! let tls = ClientTls {
//!     ca: Some(std::fs::read("/etc/execmesh/admin-ca.pem")?),
//!     ..ClientTls::default()
//! };
//! let channel =
//!     admin_client::connect("https://mesh-admin:8421", Some(&tls), Duration::from_secs(5)).await?;
//! let mut admin = AdminClient::new(channel, Some("eyJ…"));
//! let hosts = admin.hosts.list(pb::ListHostsRequest::default()).await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use execmesh_proto::pb;

/// How the channel checks the gateway and proves who the client is.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// CA certificate(s) (PEM) the gateway's certificate must chain to; `None`: the system's
    /// roots.
    pub ca: Option<Vec<u8>>,
    /// A client certificate and its key (PEM), for a gateway that requires them
    /// (`admin_client_ca`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the gateway's certificate must hold, when it is not the host of the URL.
    pub domain: Option<String>,
}

/// Why no channel was opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URL is not one.
    #[error("{url}: {source}")]
    Url {
        url: String,
        source: tonic::transport::Error,
    },
    /// The TLS settings cannot be used (a certificate or key that does not parse).
    #[error("TLS settings: {0}")]
    Tls(tonic::transport::Error),
    /// Connecting (TCP, then the TLS handshake) failed.
    #[error("cannot connect: {0}")]
    Connect(tonic::transport::Error),
}

/// Opens a channel to the admin API at `url` (`http://…` or `https://…`), over TLS when `tls`
/// is given. Connecting happens now, so an unreachable gateway is reported before any request.
pub async fn connect(
    url: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
) -> Result<Channel, ConnectError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|source| ConnectError::Url {
            url: url.to_string(),
            source,
        })?
        .connect_timeout(connect_timeout);
    if let Some(tls) = tls {
        // tonic builds its rustls configuration with the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = match &tls.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain);
        }
        endpoint = endpoint.tls_config(config).map_err(ConnectError::Tls)?;
    }
    endpoint.connect().await.map_err(ConnectError::Connect)
}

// === Bearer ===

/// Puts `authorization: Bearer <token>` on every request (nothing without a token).
#[derive(Debug, Clone)]
pub struct Bearer(Result<Option<MetadataValue<Ascii>>, InvalidToken>);

/// A token that cannot travel in a header: only visible ASCII can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token holds characters a token cannot have")]
pub struct InvalidToken;

// === impl Bearer ===

impl Bearer {
    /// The interceptor sending `token`, or none; a token that cannot be sent is refused here.
    pub fn new(token: Option<&str>) -> Result<Self, InvalidToken> {
        let value = match token {
            None => None,
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| InvalidToken)?,
            ),
        };
        Ok(Self(Ok(value)))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match &self.0 {
            Ok(Some(value)) => {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            Ok(None) => {}
            Err(e) => return Err(Status::invalid_argument(e.to_string())),
        }
        Ok(request)
    }
}

/// A channel that carries the bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Clients of the six admin services over one channel, with one token.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// HostsService: list, get, watch.
    pub hosts: pb::hosts_service_client::HostsServiceClient<Authed>,
    /// JobsService: list, get, kill, tail.
    pub jobs: pb::jobs_service_client::JobsServiceClient<Authed>,
    /// ApprovalsService: list, get, approve, deny, watch.
    pub approvals: pb::approvals_service_client::ApprovalsServiceClient<Authed>,
    /// AuditService: query, export, verify.
    pub audit: pb::audit_service_client::AuditServiceClient<Authed>,
    /// TokensService: mint, revoke, list revocations.
    pub tokens: pb::tokens_service_client::TokensServiceClient<Authed>,
    /// RunbooksService: list.
    pub runbooks: pb::runbooks_service_client::RunbooksServiceClient<Authed>,
}

// === impl AdminClient ===

impl AdminClient {
    /// Clients on `channel` that send `token` (none: no `authorization` metadata). A token that
    /// cannot be sent fails every call with `InvalidArgument`; [`Bearer::new`] reports it
    /// before any call.
    pub fn new(channel: Channel, token: Option<&str>) -> Self {
        let bearer = Bearer::new(token).unwrap_or_else(|e| Bearer(Err(e)));
        Self::with_bearer(channel, bearer)
    }

    /// Clients on `channel` whose requests go through `bearer`.
    pub fn with_bearer(channel: Channel, bearer: Bearer) -> Self {
        let authed = || InterceptedService::new(channel.clone(), bearer.clone());
        Self {
            hosts: pb::hosts_service_client::HostsServiceClient::new(authed()),
            jobs: pb::jobs_service_client::JobsServiceClient::new(authed()),
            approvals: pb::approvals_service_client::ApprovalsServiceClient::new(authed()),
            audit: pb::audit_service_client::AuditServiceClient::new(authed()),
            tokens: pb::tokens_service_client::TokensServiceClient::new(authed()),
            runbooks: pb::runbooks_service_client::RunbooksServiceClient::new(authed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_sends_the_token_and_refuses_one_it_cannot_send() {
        let mut bearer = Bearer::new(Some("abc.def")).expect("a token");
        let request = bearer.call(Request::new(())).expect("sent");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer abc.def")
        );
        let mut none = Bearer::new(None).expect("no token");
        let request = none.call(Request::new(())).expect("sent");
        assert!(request.metadata().get("authorization").is_none());
        assert_eq!(Bearer::new(Some("line\nbreak")).err(), Some(InvalidToken));
        let mut bad = Bearer(Err(InvalidToken));
        let refused = bad.call(Request::new(())).expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    }
}
