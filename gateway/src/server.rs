//! The HTTP server: `/mcp` (stateless Streamable HTTP behind bearer auth), the OAuth
//! authorization server's endpoints, the web console at `/console`, and `/healthz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::Config;
use crate::core::auth::{AuthError, MCP_SCOPE, SigningKey};
use crate::core::auth_failures::{AuthFailures, Endpoint};
use crate::core::bearer::{Bearer, BearerRefusal};
use crate::core::mesh::Mesh;
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;
use crate::core::webhook::ApprovalWebhook;
use crate::mcp::envelope::{self, Refused, Rejection};
use crate::mcp::listen;
use crate::mcp::{Handler, McpState};
use crate::oauth::{OAuth, OAuthState};
use crate::origin::OriginPolicy;
use crate::state::Services;
use execmesh_runtime::telemetry::MetricsAt;

/// The router: `/mcp` behind the Origin and bearer checks, the OAuth endpoints and `/healthz`.
pub fn router(
    mcp: Arc<McpState>,
    bearer: Arc<Bearer>,
    oauth: Arc<OAuthState>,
    shutdown: CancellationToken,
) -> Router {
    let config = &mcp.config;
    let origins = Arc::new(OriginPolicy::new(
        config.tls.is_some(),
        &bearer.audience.issuer,
        &config.allowed_origins,
    ));
    let allowed_hosts = crate::origin::allowed_hosts(&config.public_names, &bearer.audience);
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(allowed_hosts)
        // `Origin` is checked by `origin::check` in front of the bearer check: a same-origin
        // page needs the request's own `Host`, which the transport's fixed list cannot say.
        .disable_allowed_origins()
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    let gate = Arc::new(Gate {
        bearer,
        nats: mcp.mesh.client.clone(),
        max_body_bytes: config.max_body_bytes,
        mesh_wait: config.mesh_unreachable_wait,
        listen: mcp.clone(),
        shutdown: shutdown.clone(),
    });
    let mcp = StreamableHttpService::new(
        move || Ok(Handler::new(mcp.clone())),
        Arc::new(NeverSessionManager::default()),
        mcp_config,
    );
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(gate, guard_mcp))
        .layer(middleware::from_fn_with_state(
            origins,
            crate::origin::check,
        ))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .merge(crate::oauth::routes(&oauth).with_state(oauth.clone()))
}

/// What the `/mcp` middleware reads.
struct Gate {
    bearer: Arc<Bearer>,
    /// The mesh's connection, whose state says whether a tool call can be served.
    nats: async_nats::Client,
    /// Largest accepted request body.
    max_body_bytes: usize,
    /// How long a tool call waits for a lost NATS connection before it is refused.
    mesh_wait: std::time::Duration,
    /// What `subscriptions/listen` for tasks reads (served here, see [`listen`]).
    listen: Arc<McpState>,
    /// Ends task subscriptions when the gateway stops.
    shutdown: CancellationToken,
}

/// Verifies the bearer token and puts the caller's [`crate::core::auth::Identity`] into the
/// request, then answers what rmcp would not word the JSON-RPC way (see [`envelope`]) and the
/// `subscriptions/listen` for tasks that rmcp cannot read (see [`listen`]). An invalid token is
/// audited (coalesced, see [`crate::core::auth_failures`]); a missing one is not: it is how
/// every OAuth client discovers the authorization server.
async fn guard_mcp(State(gate): State<Arc<Gate>>, request: Request, next: Next) -> Response {
    let bearer = &gate.bearer;
    let addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return unauthorized(bearer, None);
    };
    let identity = match bearer.check(token, Endpoint::Mcp, addr).await {
        Ok(identity) => identity,
        Err(BearerRefusal::Invalid(e)) => return unauthorized(bearer, Some(&e)),
        Err(BearerRefusal::RevocationUnknown(e)) => {
            let id = match envelope::read(request.into_body(), gate.max_body_bytes).await {
                Ok(body) => envelope::parse(&body).map_or(serde_json::Value::Null, |m| m.id),
                Err(_) => serde_json::Value::Null,
            };
            return Refused {
                rejection: Rejection::RevocationUnknown,
                id,
                message: format!(
                    "cannot check token revocation: {e}; retry in {} s",
                    envelope::RETRY_AFTER.as_secs()
                ),
            }
            .into_response();
        }
        Err(BearerRefusal::MissingScope { .. }) => return insufficient_scope(bearer),
        Err(BearerRefusal::UnknownUser { user }) => {
            return unauthorized_challenge(
                bearer,
                Some(&format!("user {user} is not in this gateway's policy")),
            );
        }
    };
    // Anything but a JSON POST is rmcp's to answer (405, 406, 415), logged here.
    let mut request = if request.method() == Method::POST && envelope::is_json(request.headers()) {
        let (parts, body) = request.into_parts();
        let body = match envelope::read(body, gate.max_body_bytes).await {
            Ok(body) => body,
            Err(refused) => return refused.into_response(),
        };
        let message = match envelope::parse(&body) {
            Ok(message) => message,
            Err(refused) => return refused.into_response(),
        };
        if envelope::needs_mesh(message.method.as_deref())
            && let Err(refused) =
                envelope::mesh_reachable(&gate.nats, gate.mesh_wait, &message.id).await
        {
            return refused.into_response();
        }
        if message.method.as_deref() == Some(listen::METHOD)
            && let Some(wanted) = listen::wanted(&parts.headers, &body)
        {
            let state = gate.listen.clone();
            let shutdown = gate.shutdown.clone();
            return listen::serve(state, identity, wanted, &parts.headers, shutdown).await;
        }
        Request::from_parts(parts, Body::from(body))
    } else {
        request
    };
    request.extensions_mut().insert(identity);
    let response = next.run(request).await;
    envelope::log_refused(response.status());
    response
}

fn unauthorized(bearer: &Bearer, error: Option<&AuthError>) -> Response {
    unauthorized_challenge(bearer, error.map(|e| e.to_string()).as_deref())
}

/// Where clients find this resource's OAuth metadata (RFC 9728 §5.1).
fn resource_metadata(bearer: &Bearer) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource{}",
        bearer.audience.issuer,
        bearer.audience.resource_path()
    )
}

/// 403 for a valid token without the `mcp` scope (RFC 6750 §3.1).
fn insufficient_scope(bearer: &Bearer) -> Response {
    let challenge = format!(
        r#"Bearer error="insufficient_scope", scope="{MCP_SCOPE}", resource_metadata="{}", error_description="the token lacks the {MCP_SCOPE} scope""#,
        resource_metadata(bearer)
    );
    challenge_response(
        StatusCode::FORBIDDEN,
        format!("insufficient scope: the token lacks the `{MCP_SCOPE}` scope\n"),
        &challenge,
    )
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750, RFC 9728 §5.1): where to find the
/// authorization server, which scope to ask for, and what was wrong with the token.
fn unauthorized_challenge(bearer: &Bearer, error: Option<&str>) -> Response {
    let metadata = resource_metadata(bearer);
    let challenge = match error {
        None => format!(r#"Bearer resource_metadata="{metadata}", scope="{MCP_SCOPE}""#),
        Some(description) => format!(
            r#"Bearer resource_metadata="{metadata}", scope="{MCP_SCOPE}", error="invalid_token", error_description="{}""#,
            description.replace(['"', '\\'], "'")
        ),
    };
    let body = match error {
        None => "missing bearer token: sign in through OAuth (see /.well-known/oauth-protected-resource) or send `Authorization: Bearer <token>` (execmesh-gateway token mint)\n".to_string(),
        Some(e) => format!("invalid bearer token: {e}\n"),
    };
    challenge_response(StatusCode::UNAUTHORIZED, body, &challenge)
}

fn challenge_response(status: StatusCode, body: String, challenge: &str) -> Response {
    let mut response = (status, body).into_response();
    if let Ok(value) = HeaderValue::from_str(challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// What the job cursors' secret is derived for (see [`SigningKey::derive_secret`]).
const CURSOR_PURPOSE: &str = "execmesh job cursors v2";

/// How long the audit events of the last calls may take to be published at shutdown.
const AUDIT_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to NATS and serves until `shutdown` is cancelled: MCP on `listener`, and the admin
/// API on `admin_addr` when one is configured (bound here, before anything else starts).
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), crate::GatewayError> {
    let admin = match config.admin_addr {
        Some(addr) => Some(crate::admin::bind(addr).await?),
        None => None,
    };
    // Bound before anything starts, like the admin API: a taken port is a clear error now.
    if let MetricsAt::Listen(addr) = config.metrics {
        let metrics = execmesh_runtime::metrics::bind(addr).await?;
        tokio::spawn(execmesh_runtime::metrics::serve(metrics, shutdown.clone()));
    }
    run_with_admin(config, listener, admin, shutdown).await
}

/// [`run`] with the admin API's listener already bound (`None`: no admin API), whatever
/// `admin_addr` says; tests bind `127.0.0.1:0` and read the port back.
pub async fn run_with_admin(
    config: Config,
    listener: tokio::net::TcpListener,
    admin_listener: Option<tokio::net::TcpListener>,
    shutdown: CancellationToken,
) -> Result<(), crate::GatewayError> {
    let key =
        SigningKey::load_or_create(&config.key_file)?.with_max_lifetime(config.max_token_lifetime);
    let policy = Arc::new(LivePolicy::load(config.policy_file.as_deref())?);
    let mesh = Mesh::connect(&config.mesh()).await?;
    let addr = listener.local_addr().map_err(crate::GatewayError::Serve)?;
    let audience = config.audience(addr);
    let sign_in = Arc::new(crate::core::sign_in::SignIn::default());
    let oauth = OAuth::open(&mesh, config.kv_replicas, sign_in.clone()).await?;
    let revocations = Arc::new(Revocations::new(
        oauth.store.clone(),
        config.revocation_max_staleness,
    ));
    revocations
        .start(mesh.client.clone(), shutdown.clone())
        .await;
    let audit = crate::core::audit::Audit::start(
        mesh.client.clone(),
        mesh.tenant.clone(),
        &config.audit_redact_patterns,
        config.kv_replicas,
        config.audit_queue,
        mesh.records.key().cloned(),
    )?;
    let audit = Arc::new(audit);
    let approvals = crate::core::approvals::Approvals::open(
        &mesh,
        mesh.tenant.clone(),
        config.kv_replicas,
        config.approval_ttl,
        audit.clone(),
    )
    .await?
    .with_webhook(match &config.approval_webhook_url {
        Some(url) => Some(ApprovalWebhook::new(url, &audience.issuer)?),
        None => None,
    });
    let tasks = crate::core::tasks::Tasks::open(
        &mesh,
        config.kv_replicas,
        config.task_ttl,
        config.task_poll_interval,
    )
    .await?;
    tokio::spawn(policy.clone().watch(shutdown.clone()));
    tokio::spawn(approvals.clone().count_pending(shutdown.clone()));
    let cursors =
        crate::core::paging::CursorKey::new(&key.derive_secret(CURSOR_PURPOSE), &mesh.tenant);
    let auth_failures = Arc::new(AuthFailures::new(audit.clone()));
    // Publishes the pending counts at shutdown, before the audit publisher is closed below.
    let auth_failures_task = tokio::spawn(auth_failures.clone().run(shutdown.clone()));
    tokio::spawn(crate::core::directory_watch::run(
        mesh.clone(),
        shutdown.clone(),
    ));
    // Ends jobs whose host went away even when nobody reads them (see the rule's module).
    tokio::spawn(crate::core::jobs::state::run(
        mesh.clone(),
        audit.clone(),
        shutdown.clone(),
    ));
    if let Some(identities) = mesh.records.trust() {
        tokio::spawn(identities.clone().watch(shutdown.clone()));
    }
    info!(resource = %audience.resource, issuer = %audience.issuer, "OAuth resource");
    let services = Services {
        config: Arc::new(config),
        mesh,
        bearer: Arc::new(Bearer {
            key,
            audience,
            revocations: revocations.clone(),
            policy: policy.clone(),
            failures: auth_failures,
            verified: Default::default(),
        }),
        policy,
        audit,
        approvals,
        tasks,
        cursors,
        revocations,
        sign_in,
    };
    let mut app = router(
        services.mcp(),
        services.bearer.clone(),
        services.oauth(oauth),
        shutdown.clone(),
    )
    .merge(crate::console::routes(services.console()));
    if services.config.metrics == MetricsAt::Shared {
        app = app.merge(execmesh_runtime::metrics::router());
    }
    // The admin API serves next to MCP and stops with it; a failure of either stops both.
    let admin = admin_listener.map(|admin_listener| {
        let state = services.admin();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let result = crate::admin::serve(state, admin_listener, shutdown.clone()).await;
            if result.is_err() {
                shutdown.cancel();
            }
            result
        })
    });
    let tls = match &services.config.tls {
        Some(files) => Some(crate::tls::server_config(&files.cert, &files.key)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let limits = crate::listener::Limits::of(&services.config);
    info!(
        addr = %addr,
        header_read_timeout = ?limits.header_read_timeout,
        idle_timeout = ?limits.idle_timeout,
        max_connections_per_address = limits.max_per_address,
        "serving MCP at {scheme}://{addr}/mcp"
    );
    crate::listener::serve(listener, tls, app, limits, shutdown.clone()).await;
    if let Some(admin) = admin {
        // MCP stopped (shutdown, or it failed): make sure the admin API stops too.
        shutdown.cancel();
        match admin.await {
            Ok(result) => result?,
            Err(e) => tracing::error!(error = %e, "the admin API task failed"),
        }
    }
    shutdown.cancel();
    if let Err(e) = auth_failures_task.await {
        tracing::error!(error = %e, "the auth-failure audit task failed");
    }
    services.audit.close(AUDIT_FLUSH).await;
    info!("gateway stopped");
    Ok(())
}
