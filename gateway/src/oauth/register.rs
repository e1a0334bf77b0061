//! `/register`: dynamic client registration (RFC 7591) for clients without a client ID metadata
//! document. Every client is public (`token_endpoint_auth_method: none`; PKCE protects the
//! code); registrations are kept in `mesh_oauth` and rate-limited per address.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use super::OAuthState;
use super::client::check_redirect_uri;
use super::{ClientAddr, error_json, no_store, now_secs, random_secret, too_many};
use crate::core::token_store::RegisteredClient;

/// Most redirect URIs one client may register.
const MAX_REDIRECT_URIS: usize = 10;

/// The fields of a registration request this server reads; others are ignored.
#[derive(Debug, Deserialize)]
struct RegistrationRequest {
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    client_name: Option<String>,
    #[serde(default)]
    grant_types: Option<Vec<String>>,
    #[serde(default)]
    response_types: Option<Vec<String>>,
}

/// POST `/register`.
pub async fn register(
    State(state): State<Arc<OAuthState>>,
    ClientAddr(address): ClientAddr,
    body: Bytes,
) -> Response {
    if let Err(wait) = state.oauth.registrations_per_address.hit(&address) {
        warn!(address = %address, "client registrations from this address are rate-limited");
        return too_many(wait, "client registrations");
    }
    let request: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return invalid(
                "invalid_client_metadata",
                &format!("not a registration request: {e}"),
            );
        }
    };
    if request.redirect_uris.is_empty() || request.redirect_uris.len() > MAX_REDIRECT_URIS {
        return invalid(
            "invalid_redirect_uri",
            &format!("register 1 to {MAX_REDIRECT_URIS} redirect_uris"),
        );
    }
    for uri in &request.redirect_uris {
        if let Err(e) = check_redirect_uri(uri) {
            return invalid("invalid_redirect_uri", &e);
        }
    }
    let grant_types = request
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if let Some(other) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return invalid(
            "invalid_client_metadata",
            &format!("grant type `{other}` is not supported"),
        );
    }
    if let Some(other) = request
        .response_types
        .iter()
        .flatten()
        .find(|r| r.as_str() != "code")
    {
        return invalid(
            "invalid_client_metadata",
            &format!("response type `{other}` is not supported"),
        );
    }
    let name = request
        .client_name
        .map(|n| n.chars().take(100).collect::<String>());
    let client = RegisteredClient {
        client_id: random_secret(),
        client_name: name,
        redirect_uris: request.redirect_uris,
        issued_at: now_secs(),
    };
    if let Err(e) = state.oauth.store.put_client(&client).await {
        warn!(error = %e, "cannot store a client registration");
        return error_json(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the registration cannot be stored right now",
        );
    }
    info!(client = %client.client_id, name = ?client.client_name, "client registered");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "client_id": client.client_id,
            "client_id_issued_at": client.issued_at,
            "client_name": client.client_name,
            "redirect_uris": client.redirect_uris,
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        })),
    )
        .into_response();
    no_store(response.headers_mut());
    response
}

fn invalid(error: &str, description: &str) -> Response {
    error_json(StatusCode::BAD_REQUEST, error, description)
}
