//! The gateway as an OAuth 2.1 authorization server for its own `/mcp` resource (DESIGN §5).
//!
//! - `/.well-known/oauth-protected-resource[/<path>]`: RFC 9728 metadata naming the resource
//!   and this gateway as its authorization server.
//! - `/.well-known/oauth-authorization-server` (and `/.well-known/openid-configuration`):
//!   RFC 8414 metadata.
//! - `/authorize`: a login page; the password is checked against the policy's argon2 hash and
//!   the browser is sent back with `code`, `state` and `iss` (RFC 9207).
//! - `/token`: `authorization_code` with PKCE S256 (`plain` is refused) and `refresh_token`
//!   with rotation; replaying a used code or refresh token revokes its whole family.
//! - `/register`: dynamic client registration (RFC 7591); client ID metadata documents (an
//!   `https` client_id) are fetched instead.
//! - `/revoke`: RFC 7009.
//!
//! Access tokens are short-lived JWTs bound to the resource (RFC 8707 `aud`). Everything that
//! must outlive a request lives in KV (`mesh_oauth`, `mesh_revoked`), so any replica serves
//! any step of a flow.

mod authorize;
mod client;
mod login;
mod metadata;
mod register;
mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use crate::client_addr::ClientAddr;
use crate::core::auth::{Audience, SigningKey};
use crate::core::policy::LivePolicy;
use crate::core::revocation::Revocations;
use crate::core::sign_in::SignIn;

pub use crate::core::ratelimit::RateLimiter;
pub use crate::core::token_store::{Store, StoreError};

/// Scopes this server grants. `mcp` is what `/mcp` requires.
pub const SCOPES_SUPPORTED: &[&str] = &[crate::core::auth::MCP_SCOPE];
/// How long an authorization code may wait for its exchange.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Client registrations per client address per window.
pub const REGISTRATIONS_PER_ADDRESS: u32 = 20;
/// The window of the registration limit.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// What the OAuth endpoints read: the core services they issue tokens with, and the
/// authorization server's own state.
pub struct OAuthState {
    /// Signs the access tokens issued (and verifies those presented for revocation).
    pub key: SigningKey,
    /// The issuer and resource every token names.
    pub audience: Audience,
    /// Who may sign in, with which scopes.
    pub policy: Arc<LivePolicy>,
    /// Revoked token ids, which revocation and refresh-token reuse add to.
    pub revocations: Arc<Revocations>,
    /// Lifetime of the access tokens issued.
    pub access_token_ttl: Duration,
    /// Lifetime of the refresh tokens issued (and of a revoked family's record).
    pub refresh_token_ttl: Duration,
    pub oauth: OAuth,
}

/// The authorization server's shared state on one replica.
pub struct OAuth {
    /// Codes, refresh tokens, families, clients.
    pub store: Store,
    /// The password check of the login page, shared with the console's.
    pub sign_in: Arc<SignIn>,
    /// Registrations per client address.
    pub registrations_per_address: RateLimiter,
    /// Fetches client ID metadata documents: no redirects, short timeout.
    pub http: reqwest::Client,
}

// === impl OAuth ===

impl OAuth {
    /// Opens (creating if missing) the KV buckets and sets up the limiters.
    pub async fn open(
        mesh: &crate::core::mesh::Mesh,
        replicas: usize,
        sign_in: Arc<SignIn>,
    ) -> Result<Self, StoreError> {
        let store = Store::open(mesh, replicas).await?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StoreError::Open {
                bucket: "(http client)".to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            store,
            sign_in,
            registrations_per_address: RateLimiter::new(REGISTRATIONS_PER_ADDRESS, RATE_WINDOW),
            http,
        })
    }
}

/// The OAuth routes, to merge into the gateway's router.
pub fn routes(state: &OAuthState) -> Router<Arc<OAuthState>> {
    let resource_path = state.audience.resource_path().to_string();
    let mut router = Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(metadata::protected_resource),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::authorization_server),
        )
        .route(
            "/.well-known/openid-configuration",
            get(metadata::authorization_server),
        )
        .route("/authorize", get(authorize::show).post(authorize::submit))
        .route("/token", post(token::token))
        .route("/register", post(register::register))
        .route("/revoke", post(token::revoke));
    // RFC 9728 §3.1: the path-inserted form for the resource's own path, and for `/mcp` (where
    // this gateway serves it) when a proxy publishes it elsewhere.
    let mut paths = vec!["/mcp".to_string()];
    if !resource_path.is_empty() && resource_path != "/mcp" {
        paths.push(resource_path);
    }
    for path in paths {
        router = router.route(
            &format!("/.well-known/oauth-protected-resource{path}"),
            get(metadata::protected_resource),
        );
    }
    router
}

/// Headers every response carrying secrets or a login form gets.
pub fn no_store(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// An OAuth error response (RFC 6749 §5.2): JSON `error` and `error_description`.
pub fn error_json(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({ "error": error, "error_description": description })),
    )
        .into_response();
    no_store(response.headers_mut());
    response
}

/// 429 with `Retry-After`.
pub fn too_many(retry_after: Duration, what: &str) -> Response {
    let secs = retry_after.as_secs().max(1);
    let mut response = error_json(
        StatusCode::TOO_MANY_REQUESTS,
        "slow_down",
        &format!("too many {what}; try again in {secs} s"),
    );
    if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// 32 random bytes, base64url: codes, refresh tokens, client ids, family ids.
pub fn random_secret() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    execmesh_proto::now_ms() / 1000
}
