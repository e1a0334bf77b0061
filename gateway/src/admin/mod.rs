//! The gRPC admin API (`execmesh.v1`): hosts, jobs, approvals, audit and tokens for operators,
//! with gRPC health and server reflection, over TLS (optionally mTLS) or plaintext on loopback.
//!
//! Every RPC of the five services authorizes its caller first (an `admin`-scoped bearer token,
//! see [`auth`]) and runs in a span naming the RPC and the user; a refusal by policy
//! (PERMISSION_DENIED) is audited as a `call-denied` event naming the RPC. Health and reflection answer
//! without a token, so `grpcurl` can discover the services. Server streams (watches, tails,
//! exports) end when the gateway shuts down, so a graceful shutdown is not held up by them.

pub mod approvals;
pub mod audit;
pub mod auth;
pub mod error;
pub mod hosts;
pub mod jobs;
pub mod runbooks;
pub mod tls;
pub mod tokens;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use futures::stream::BoxStream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use execmesh_proto::pb;

use crate::config::Config;
use crate::core::approvals::Approvals;
use crate::core::audit::Audit;
use crate::core::auth::{Audience, Identity, SigningKey};
use crate::core::bearer::Bearer;
use crate::core::mesh::Mesh;
use crate::core::paging::CursorKey;
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;

/// Messages a server stream may have queued for a slow client before its producer waits.
const STREAM_BUFFER: usize = 64;

/// The gRPC service names the health service reports on.
const SERVICES: [&str; 6] = [
    pb::hosts_service_server::SERVICE_NAME,
    pb::jobs_service_server::SERVICE_NAME,
    pb::approvals_service_server::SERVICE_NAME,
    pb::audit_service_server::SERVICE_NAME,
    pb::runbooks_service_server::SERVICE_NAME,
    pb::tokens_service_server::SERVICE_NAME,
];

/// Why the admin API could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen for the admin API on {addr} (admin_addr): {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::AdminTlsError),
    #[error("the admin API cannot start: {0}")]
    Setup(String),
    #[error("the admin API server failed: {0}")]
    Serve(String),
}

/// A server stream's messages: a producer task feeds it through a bounded channel.
pub type AdminStream<T> = BoxStream<'static, Result<T, Status>>;

/// What the admin API reads and acts through: the configuration and the core services.
pub struct AdminState {
    pub config: Arc<Config>,
    pub mesh: Mesh,
    /// Checks the bearer token of every RPC.
    pub bearer: Arc<Bearer>,
    /// Issues and verifies the tokens TokensService mints and revokes.
    pub key: SigningKey,
    /// The issuer and resource every token names.
    pub audience: Audience,
    /// Users, groups, tiers, approvers and operators; reloaded in place.
    pub policy: Arc<LivePolicy>,
    /// Records admin steps (mints, revocations, decisions, refusals).
    pub audit: Arc<Audit>,
    /// Calls held for approval, decided here.
    pub approvals: Approvals,
    /// Seals the job cursors of tails.
    pub cursors: CursorKey,
    /// Revoked token ids, which TokensService adds to.
    pub revocations: Arc<Revocations>,
}

/// What every admin service shares: the admin state and the gateway's shutdown.
#[derive(Clone)]
pub struct Admin {
    pub state: Arc<AdminState>,
    /// Cancelled when the gateway stops; ends every server stream.
    pub shutdown: CancellationToken,
}

// === impl Admin ===

impl Admin {
    /// Runs one unary RPC: authorizes the caller, then `handle` with the caller and the
    /// message, inside a span naming the RPC and the user. Failures are logged with their code.
    pub async fn unary<Req, Res, F, Fut>(
        &self,
        rpc: &'static str,
        request: Request<Req>,
        handle: F,
    ) -> Result<Response<Res>, Status>
    where
        F: FnOnce(Identity, Req) -> Fut,
        Fut: Future<Output = Result<Res, Status>>,
    {
        let span = info_span!("admin", rpc, user = tracing::field::Empty);
        async move {
            let caller = auth::authorize(&self.state.bearer, &request).await?;
            tracing::Span::current().record("user", caller.user.as_str());
            let user = caller.user.clone();
            let result = handle(caller, request.into_inner()).await;
            match &result {
                Ok(_) => debug!("admin call answered"),
                Err(status) => {
                    info!(code = ?status.code(), message = status.message(), "admin call failed");
                    // A refusal by policy (minting above one's tier, deciding without being an
                    // approver) is an audited step like a denied tool call.
                    if status.code() == tonic::Code::PermissionDenied {
                        self.state
                            .audit
                            .admin_denied(user.as_str(), rpc, status.message());
                    }
                }
            }
            result.map(Response::new)
        }
        .instrument(span)
        .await
    }

    /// A server stream fed by `produce`, which runs on its own task (in the RPC's span) and
    /// sends into the channel it is given. It stops when the client goes away (the send
    /// fails), when the gateway shuts down, or when it returns.
    pub fn stream<T, F, Fut>(&self, produce: F) -> AdminStream<T>
    where
        T: Send + 'static,
        F: FnOnce(mpsc::Sender<Result<T, Status>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let closed = tx.clone();
        let producer = produce(tx);
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = producer => {}
                    _ = closed.closed() => debug!("admin stream client went away"),
                    _ = shutdown.cancelled() => debug!("admin stream ended by shutdown"),
                }
            }
            .in_current_span(),
        );
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }))
    }
}

/// Binds the admin API's address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves the admin API on `listener` until `shutdown` is cancelled: TLS when `admin_tls` is
/// configured (client certificates required when `admin_client_ca` is), else plaintext (the
/// configuration allows that on loopback only).
pub async fn serve(
    state: Arc<AdminState>,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let addr = listener
        .local_addr()
        .map_err(|e| AdminError::Setup(e.to_string()))?;
    let mut server = Server::builder();
    match &state.config.admin_tls {
        Some(files) => {
            let tls = tls::server_tls(files, state.config.admin_client_ca.as_deref())?;
            server = server
                .tls_config(tls)
                .map_err(|e| AdminError::Tls(tls::AdminTlsError::Config(e.to_string())))?;
            info!(
                addr = %addr,
                client_certificates = state.config.admin_client_ca.is_some(),
                "serving the admin API (gRPC over TLS)"
            );
        }
        None => warn!(
            addr = %addr,
            "serving the admin API in plaintext on loopback: set admin_tls_cert and \
             admin_tls_key to encrypt it (and admin_client_ca to require client certificates)"
        ),
    }

    let (health_reporter, health) = tonic_health::server::health_reporter();
    for service in SERVICES {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(execmesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| AdminError::Setup(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| AdminError::Setup(format!("reflection: {e}")))?;

    let admin = Admin {
        state,
        shutdown: shutdown.clone(),
    };
    server
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::hosts_service_server::HostsServiceServer::new(
            hosts::HostsApi::new(admin.clone()),
        ))
        .add_service(pb::jobs_service_server::JobsServiceServer::new(
            jobs::JobsApi::new(admin.clone()),
        ))
        .add_service(pb::approvals_service_server::ApprovalsServiceServer::new(
            approvals::ApprovalsApi::new(admin.clone()),
        ))
        .add_service(pb::audit_service_server::AuditServiceServer::new(
            audit::AuditApi::new(admin.clone()),
        ))
        .add_service(pb::runbooks_service_server::RunbooksServiceServer::new(
            runbooks::RunbooksApi::new(admin.clone()),
        ))
        .add_service(pb::tokens_service_server::TokensServiceServer::new(
            tokens::TokensApi::new(admin),
        ))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown.cancelled_owned())
        .await
        .map_err(|e| AdminError::Serve(e.to_string()))?;
    info!("admin API stopped");
    Ok(())
}
