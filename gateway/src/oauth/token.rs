//! `/token` (authorization code with PKCE S256, refresh with rotation) and `/revoke` (RFC 7009).
//!
//! A login starts a *family*: its code, every refresh token rotated from it and the access
//! tokens issued along the way. Each code and refresh token is redeemed at most once (a `used.`
//! marker only one replica can create); presenting one again means it leaked, so the whole
//! family is revoked: its refresh tokens stop working and its access tokens go on the
//! revocation list.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::OAuthState;
use super::{error_json, no_store, now_secs, random_secret};
use crate::core::auth::TokenSpec;
use crate::core::token_store::{CodeGrant, Family, RefreshGrant, StoreError};

/// A `/token` error: the OAuth error code and a description.
pub struct TokenError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl TokenError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: if error == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            },
            error,
            description: description.into(),
        }
    }

    fn grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }

    fn unavailable(e: StoreError) -> Self {
        warn!(error = %e, "OAuth store failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "the authorization server cannot reach its store; try again".into(),
        }
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        error_json(self.status, self.error, &self.description)
    }
}

impl From<StoreError> for TokenError {
    fn from(e: StoreError) -> Self {
        Self::unavailable(e)
    }
}

/// POST `/token`.
pub async fn token(
    State(state): State<Arc<OAuthState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TokenError> {
    let params = form(&body)?;
    let client_id = client_id(&headers, &params)?;
    let result = match params.get("grant_type").map(String::as_str) {
        Some("authorization_code") => authorization_code(&state, &client_id, &params).await,
        Some("refresh_token") => refresh(&state, &client_id, &params).await,
        Some(other) => Err(TokenError::new(
            "unsupported_grant_type",
            format!("grant_type `{other}` is not supported"),
        )),
        None => Err(TokenError::new("invalid_request", "grant_type is missing")),
    };
    result.inspect_err(|e| {
        info!(client = %client_id, error = e.error, reason = %e.description, "token request refused");
    })
}

async fn authorization_code(
    state: &OAuthState,
    client_id: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, TokenError> {
    let code = required(params, "code")?;
    let verifier = required(params, "code_verifier")
        .map_err(|_| TokenError::new("invalid_request", "PKCE code_verifier is missing"))?;
    let store = &state.oauth.store;
    let grant: CodeGrant = store
        .code(code)
        .await?
        .filter(|g| g.expires_at > now_secs())
        .ok_or_else(|| TokenError::grant("the authorization code is unknown or expired"))?;
    if grant.client_id != client_id {
        return Err(TokenError::grant("the code was issued to another client"));
    }
    if !store.mark_used(code, super::CODE_TTL * 2).await? {
        warn!(user = %grant.user, client = %client_id, "authorization code replayed; revoking its family");
        revoke_family(state, &grant.family).await?;
        return Err(TokenError::grant("the authorization code was already used"));
    }
    if params.get("redirect_uri").map(String::as_str) != Some(grant.redirect_uri.as_str()) {
        return Err(TokenError::grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    if !pkce_matches(verifier, &grant.code_challenge) {
        return Err(TokenError::grant(
            "PKCE verification failed: code_verifier does not match",
        ));
    }
    check_resource(state, params, &grant.resource)?;
    let response = issue(state, &grant.family, &grant.user, client_id, &grant.scope).await?;
    info!(user = %grant.user, client = %client_id, "tokens issued for an authorization code");
    Ok(response)
}

async fn refresh(
    state: &OAuthState,
    client_id: &str,
    params: &BTreeMap<String, String>,
) -> Result<Response, TokenError> {
    let token = required(params, "refresh_token")?;
    let store = &state.oauth.store;
    let grant: RefreshGrant = store
        .refresh(token)
        .await?
        .filter(|g| g.expires_at > now_secs())
        .ok_or_else(|| TokenError::grant("the refresh token is unknown or expired"))?;
    if grant.client_id != client_id {
        return Err(TokenError::grant(
            "the refresh token was issued to another client",
        ));
    }
    let ttl = state.refresh_token_ttl;
    if !store.mark_used(token, ttl).await? {
        warn!(user = %grant.user, client = %client_id, "rotated refresh token reused; revoking its family");
        revoke_family(state, &grant.family).await?;
        return Err(TokenError::grant(
            "the refresh token was already used; every token of this login is revoked",
        ));
    }
    if store.family_revoked(&grant.family).await? {
        return Err(TokenError::grant("this login was revoked; sign in again"));
    }
    check_resource(state, params, &grant.resource)?;
    // A refresh may narrow the scope, never widen it.
    let scope = match params.get("scope").filter(|s| !s.is_empty()) {
        Some(asked) => {
            let have: Vec<&str> = grant.scope.split_whitespace().collect();
            let asked: Vec<&str> = asked.split_whitespace().collect();
            if let Some(extra) = asked.iter().find(|s| !have.contains(s)) {
                return Err(TokenError::new(
                    "invalid_scope",
                    format!("scope `{extra}` was not granted to this login"),
                ));
            }
            asked.join(" ")
        }
        None => grant.scope.clone(),
    };
    let response = issue(state, &grant.family, &grant.user, client_id, &scope).await?;
    info!(user = %grant.user, client = %client_id, "tokens refreshed");
    Ok(response)
}

/// Issues an access token and a new refresh token in `family`, for a user the policy still
/// knows, with the tier the policy grants now.
async fn issue(
    state: &OAuthState,
    family_id: &str,
    user: &str,
    client_id: &str,
    scope: &str,
) -> Result<Response, TokenError> {
    let grant = state
        .policy
        .current()
        .grant(user)
        .ok_or_else(|| TokenError::grant(format!("user {user} is no longer in the policy")))?;
    let access_ttl = state.access_token_ttl;
    let refresh_ttl = state.refresh_token_ttl;
    let spec = TokenSpec {
        user,
        ttl: access_ttl,
        scope,
        tier: grant.tier,
        client_id: Some(client_id),
    };
    let access = state.key.issue(&state.audience, &spec).map_err(|e| {
        warn!(error = %e, "cannot sign an access token");
        TokenError::grant(format!("cannot issue a token: {e}"))
    })?;
    let store = &state.oauth.store;
    let now = now_secs();
    let mut family = store.family(family_id).await?.unwrap_or(Family {
        user: user.to_string(),
        client_id: client_id.to_string(),
        access: Vec::new(),
    });
    family.access.retain(|(_, exp)| *exp > now);
    family.access.push((access.jti.clone(), access.expires_at));
    store.put_family(family_id, &family, refresh_ttl).await?;
    let refresh_token = random_secret();
    let refresh = RefreshGrant {
        family: family_id.to_string(),
        client_id: client_id.to_string(),
        user: user.to_string(),
        scope: scope.to_string(),
        resource: state.audience.resource.clone(),
        expires_at: now + refresh_ttl.as_secs(),
    };
    store
        .put_refresh(&refresh_token, &refresh, refresh_ttl)
        .await?;
    let mut response = Json(json!({
        "access_token": access.token,
        "token_type": "Bearer",
        "expires_in": access_ttl.as_secs(),
        "refresh_token": refresh_token,
        "scope": scope,
    }))
    .into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// Stops a family: no more refreshes, and its live access tokens are revoked everywhere.
async fn revoke_family(state: &OAuthState, family_id: &str) -> Result<(), StoreError> {
    let store = &state.oauth.store;
    store
        .revoke_family(family_id, state.refresh_token_ttl)
        .await?;
    if let Some(family) = store.family(family_id).await? {
        let now = now_secs();
        for (jti, exp) in family.access.iter().filter(|(_, exp)| *exp > now) {
            state.revocations.revoke(jti, *exp).await?;
        }
    }
    Ok(())
}

/// POST `/revoke` (RFC 7009): a refresh token revokes its family, an access token itself. The
/// answer is 200 whether or not the token was known.
pub async fn revoke(
    State(state): State<Arc<OAuthState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, TokenError> {
    let params = form(&body)?;
    let token = required(&params, "token")?;
    let client = client_id(&headers, &params).ok();
    let result: Result<(), StoreError> = async {
        if let Some(grant) = state.oauth.store.refresh(token).await? {
            if client.as_deref().is_none_or(|c| c == grant.client_id) {
                info!(user = %grant.user, "refresh token revoked; revoking its family");
                revoke_family(&state, &grant.family).await?;
            }
            return Ok(());
        }
        if let Ok(identity) = state.key.verify(token, &state.audience) {
            info!(user = %identity.user, jti = %identity.token_id, "access token revoked");
            state
                .revocations
                .revoke(&identity.token_id, identity.expires_at)
                .await?;
        }
        Ok(())
    }
    .await;
    result.map_err(TokenError::unavailable)?;
    let mut response = StatusCode::OK.into_response();
    no_store(response.headers_mut());
    Ok(response)
}

/// S256: BASE64URL(SHA256(verifier)) equals the challenge, compared in constant time. The
/// verifier must be 43–128 unreserved characters (RFC 7636 §4.1).
fn pkce_matches(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~'));
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    well_formed && bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// A `resource` on the token request must be the one the grant is for (RFC 8707).
fn check_resource(
    state: &OAuthState,
    params: &BTreeMap<String, String>,
    granted: &str,
) -> Result<(), TokenError> {
    match params.get("resource") {
        Some(r) if r.trim_end_matches('/') != granted => Err(TokenError::new(
            "invalid_target",
            format!(
                "resource `{r}` is not the one this grant is for ({})",
                state.audience.resource
            ),
        )),
        _ => Ok(()),
    }
}

/// The client: `client_id` in the body, or the user part of HTTP Basic (public clients have no
/// secret to check).
fn client_id(headers: &HeaderMap, params: &BTreeMap<String, String>) -> Result<String, TokenError> {
    if let Some(id) = params.get("client_id").filter(|s| !s.is_empty()) {
        return Ok(id.clone());
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.split_once(':').map(|(id, _)| id.to_string()));
    basic
        .map(|id| {
            url::form_urlencoded::parse(format!("x={id}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or(id)
        })
        .filter(|id| !id.is_empty())
        .ok_or_else(|| TokenError::new("invalid_client", "client_id is missing"))
}

fn required<'a>(params: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, TokenError> {
    params
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| TokenError::new("invalid_request", format!("`{name}` is missing")))
}

fn form(body: &[u8]) -> Result<BTreeMap<String, String>, TokenError> {
    let mut params = BTreeMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if params
            .insert(name.to_string(), value.into_owned())
            .is_some()
        {
            return Err(TokenError::new(
                "invalid_request",
                format!("`{name}` is given more than once"),
            ));
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_only_its_verifier() {
        // RFC 7636 appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(pkce_matches(verifier, challenge));
        assert!(!pkce_matches(&verifier.replace('d', "e"), challenge));
        assert!(!pkce_matches("short", challenge));
    }
}
