//! Discovery documents: protected resource metadata (RFC 9728) and authorization server metadata
//! (RFC 8414, also served as OpenID configuration for clients that only look there).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::OAuthState;
use super::SCOPES_SUPPORTED;

/// `/.well-known/oauth-protected-resource[/mcp]`.
pub async fn protected_resource(State(state): State<Arc<OAuthState>>) -> Json<Value> {
    let audience = &state.audience;
    Json(json!({
        "resource": audience.resource,
        "authorization_servers": [audience.issuer],
        "scopes_supported": SCOPES_SUPPORTED,
        "bearer_methods_supported": ["header"],
        "resource_name": "execmesh",
    }))
}

/// `/.well-known/oauth-authorization-server` and `/.well-known/openid-configuration`.
pub async fn authorization_server(State(state): State<Arc<OAuthState>>) -> Json<Value> {
    Json(document(&state.audience.issuer))
}

/// The authorization server metadata of `issuer`.
pub fn document(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "registration_endpoint": format!("{issuer}/register"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_response_iss_parameter_supported": true,
        "client_id_metadata_document_supported": true,
    })
}
