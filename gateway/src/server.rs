//! The HTTP server: `/mcp` (stateless Streamable HTTP behind bearer auth) and `/healthz`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::auth::SigningKey;
use crate::config::Config;
use crate::mesh::Mesh;
use crate::tools::Handler;

/// What every request handler shares: read-only after start.
pub struct AppState {
    pub config: Config,
    pub mesh: Mesh,
    /// Verifies bearer tokens.
    pub key: SigningKey,
}

/// The router: `/mcp` and `/healthz`.
pub fn router(state: Arc<AppState>, shutdown: CancellationToken) -> Router {
    let config = &state.config;
    let mut allowed_hosts = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    allowed_hosts.extend(config.public_names.iter().cloned());
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_allowed_hosts(allowed_hosts)
        .with_allowed_origins(config.allowed_origins.clone())
        .enforce_origin_validation()
        .with_max_request_body_bytes(config.max_body_bytes)
        .with_cancellation_token(shutdown.child_token());
    let handler_state = state.clone();
    let mcp = StreamableHttpService::new(
        move || Ok(Handler::new(handler_state.clone())),
        Arc::new(NeverSessionManager::default()),
        mcp_config,
    );
    Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_bearer,
        ))
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
}

/// Verifies the bearer token and puts the caller's [`crate::auth::Identity`] into the request.
async fn require_bearer(
    State(state): State<Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let Some(token) = token else {
        return unauthorized(None);
    };
    match state.key.verify(token.trim()) {
        Ok(identity) => {
            request.extensions_mut().insert(identity);
            next.run(request).await
        }
        Err(e) => {
            debug!(error = %e, "bearer token refused");
            unauthorized(Some(&e.to_string()))
        }
    }
}

/// 401 with a `WWW-Authenticate` challenge (RFC 6750).
fn unauthorized(error: Option<&str>) -> Response {
    let challenge = match error {
        None => r#"Bearer realm="execmesh""#.to_string(),
        Some(description) => format!(
            r#"Bearer realm="execmesh", error="invalid_token", error_description="{}""#,
            description.replace('"', "'")
        ),
    };
    let body = match error {
        None => "missing bearer token: send `Authorization: Bearer <token>` (execmesh-gateway token mint)\n".to_string(),
        Some(e) => format!("invalid bearer token: {e}\n"),
    };
    let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// Connects to NATS and serves until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), crate::GatewayError> {
    let key = SigningKey::load_or_create(&config.key_file)?;
    let mesh = Mesh::connect(&config).await?;
    let addr = listener.local_addr().map_err(crate::GatewayError::Serve)?;
    let state = Arc::new(AppState { config, mesh, key });
    let app = router(state, shutdown.clone());
    info!(addr = %addr, "serving MCP at http://{addr}/mcp");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(crate::GatewayError::Serve)?;
    info!("gateway stopped");
    Ok(())
}
