//! TokensService: mints bearer tokens, revokes them through the revocation list every replica
//! reads (`mesh_revoked`), and lists the revocations in force. Every mint and revoke is audited
//! (`token-minted`, `token-revoked`), with the token's id, never the token.
//!
//! Minting through the API is for yourself: the caller's own user, never above the tier the
//! caller acts with, never with a scope the caller's token lacks. A user the policy's
//! `[token_admins]` names may also mint for other users of the policy, never above the tier the
//! policy gives that user. Anything else is PERMISSION_DENIED, naming the user, the tier or scope
//! and why; a tier above the ceiling is refused, never silently lowered. (Minting with the key
//! file, `execmesh-gateway token mint`, is the key holder's act and not bound by this.)

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use tonic::{Request, Response, Status};
use tracing::info;

use execmesh_proto::jetstream::REVOKED_BUCKET;
use execmesh_proto::pb;

use super::Admin;
use crate::commands::token_scope;
use crate::core::auth::{Identity, TokenSpec};
use crate::core::policy::Policy;
use crate::core::tier::Tier;

/// Lifetime of a minted token when the request names none, as `token mint` defaults.
const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// The TokensService implementation.
pub struct TokensApi {
    admin: Admin,
}

impl TokensApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

/// Why the caller may mint a token for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grounds {
    /// For themselves.
    Own,
    /// For another user, as a token admin.
    TokenAdmin,
}

impl Grounds {
    fn as_str(self) -> &'static str {
        match self {
            Self::Own => "self",
            Self::TokenAdmin => "token_admin",
        }
    }
}

/// What a mint request may have, given who asks: the grounds and the highest tier. Refusals
/// are PERMISSION_DENIED naming the user and why.
fn entitlement(
    policy: &Policy,
    caller: &Identity,
    user: &str,
    scope: &str,
) -> Result<(Grounds, Tier), Status> {
    let me = caller.user.as_str();
    let grant = policy.grant(user).ok_or_else(|| {
        Status::failed_precondition(format!(
            "user `{user}` is not in the policy; add it with `execmesh-gateway user add {user}`"
        ))
    })?;
    if user == me {
        // Never more than the minting token itself carries.
        if let Some(missing) = scope.split(' ').find(|s| !caller.has_scope(s)) {
            return Err(Status::permission_denied(format!(
                "{me} may not mint a token with the `{missing}` scope: the token {me} calls with \
                 lacks it, and a token minted through the API has only scopes the minting token \
                 has (yours: {})",
                caller.scopes.join(" ")
            )));
        }
        return Ok((Grounds::Own, caller.tier));
    }
    if policy.is_token_admin(me) {
        return Ok((Grounds::TokenAdmin, grant.tier));
    }
    Err(Status::permission_denied(format!(
        "{me} may not mint a token for {user}: through the admin API a user mints tokens only \
         for themselves, unless the policy's [token_admins] names them (token admins: {}); the \
         key holder can run `execmesh-gateway token mint --user {user}` on the gateway",
        policy.token_admins().describe()
    )))
}

#[tonic::async_trait]
impl pb::tokens_service_server::TokensService for TokensApi {
    async fn mint(
        &self,
        request: Request<pb::MintTokenRequest>,
    ) -> Result<Response<pb::MintTokenResponse>, Status> {
        self.admin
            .unary("TokensService.Mint", request, |caller, req| async move {
                let state = &self.admin.state;
                let scope = token_scope(&req.scopes).map_err(Status::invalid_argument)?;
                let max = state.key.max_lifetime();
                let ttl = match req.ttl_secs {
                    0 => DEFAULT_TTL.min(max),
                    secs => Duration::from_secs(secs),
                };
                if ttl > max {
                    return Err(Status::invalid_argument(format!(
                        "ttl_secs {} is longer than the longest token lifetime this gateway \
                         allows ({} s, {} days; max_token_lifetime_secs)",
                        req.ttl_secs,
                        max.as_secs(),
                        max.as_secs() / 86400
                    )));
                }
                let asked = match Tier::from_wire(req.tier) {
                    Some(tier) => Some(tier),
                    None if req.tier == pb::Tier::Unspecified as i32 => None,
                    None => {
                        return Err(Status::invalid_argument(format!(
                            "unknown tier {}",
                            req.tier
                        )));
                    }
                };
                // No user: the caller's own token.
                let user = match req.user.trim() {
                    "" => caller.user.to_string(),
                    user => user.to_string(),
                };
                let policy = state.policy.current();
                let (grounds, ceiling) = entitlement(&policy, &caller, &user, &scope)?;
                let tier = match asked {
                    None => ceiling,
                    Some(asked) if asked <= ceiling => asked,
                    Some(asked) => {
                        let whose = match grounds {
                            Grounds::Own => format!("the tier {} acts with", caller.user),
                            Grounds::TokenAdmin => format!("{user}'s tier in the policy"),
                        };
                        return Err(Status::permission_denied(format!(
                            "{} may not mint a {asked} token for {user}: {asked} is above {whose} \
                             ({ceiling}); ask for {ceiling} or lower",
                            caller.user
                        )));
                    }
                };
                let spec = TokenSpec {
                    user: &user,
                    ttl,
                    scope: &scope,
                    tier,
                    client_id: None,
                };
                let issued = state
                    .key
                    .issue(&state.audience, &spec)
                    .map_err(|e| Status::invalid_argument(format!("cannot mint the token: {e}")))?;
                let scopes: Vec<String> = scope.split(' ').map(str::to_string).collect();
                state.audit.token_minted(
                    caller.user.as_str(),
                    pb::TokenMinted {
                        token_id: issued.jti.clone(),
                        for_user: user.clone(),
                        scopes: scopes.clone(),
                        tier: tier.to_string(),
                        expires_at_ms: issued.expires_at * 1000,
                        by: caller.user.to_string(),
                        grounds: grounds.as_str().to_string(),
                    },
                );
                info!(for_user = %user, jti = %issued.jti, scope = %scope, tier = %tier, by = %caller.user, grounds = grounds.as_str(), "token minted");
                Ok(pb::MintTokenResponse {
                    token: issued.token,
                    token_id: issued.jti,
                    user,
                    scopes,
                    tier: tier.to_wire() as i32,
                    expires_at_ms: issued.expires_at * 1000,
                })
            })
            .await
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.admin
            .unary("TokensService.Revoke", request, |caller, req| async move {
                let state = &self.admin.state;
                let (jti, expires_at, for_user) = match req.target {
                    Some(pb::revoke_token_request::Target::Token(token)) => {
                        let identity =
                            state
                                .key
                                .verify(token.trim(), &state.audience)
                                .map_err(|e| {
                                    Status::invalid_argument(format!(
                                        "cannot revoke that token: {e} (an expired token needs no \
                                     revocation; revoke by token_id otherwise)"
                                    ))
                                })?;
                        (
                            identity.token_id,
                            identity.expires_at,
                            identity.user.to_string(),
                        )
                    }
                    Some(pb::revoke_token_request::Target::TokenId(id)) => {
                        let id = id.trim().to_string();
                        if !is_token_id(&id) {
                            return Err(Status::invalid_argument(format!(
                                "`{id}` is not a token id (the `jti` of a token: letters, digits, \
                                 `-` and `_`)"
                            )));
                        }
                        // The token's expiry is not known from its id: keep the revocation as
                        // long as any token this gateway accepts can live.
                        let until =
                            execmesh_proto::now_ms() / 1000 + state.key.max_lifetime().as_secs();
                        (id, until, String::new())
                    }
                    None => {
                        return Err(Status::invalid_argument(
                            "say which token: set `token_id` or `token`",
                        ));
                    }
                };
                state
                    .revocations
                    .revoke(&jti, expires_at)
                    .await
                    .map_err(|e| {
                        Status::unavailable(format!(
                            "cannot write the revocation list ({e}); try again shortly"
                        ))
                    })?;
                state.audit.token_revoked(
                    caller.user.as_str(),
                    pb::TokenRevoked {
                        token_id: jti.clone(),
                        for_user,
                        kept_until_ms: expires_at * 1000,
                        by: caller.user.to_string(),
                    },
                );
                info!(jti = %jti, by = %caller.user, "token revoked");
                Ok(pb::RevokeTokenResponse {
                    token_id: jti,
                    expires_at_ms: expires_at * 1000,
                })
            })
            .await
    }

    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        self.admin
            .unary(
                "TokensService.ListRevocations",
                request,
                |_, _| async move {
                    let unavailable = |e: &dyn std::fmt::Display| {
                        Status::unavailable(format!(
                            "cannot read the revocation list ({e}); try again shortly"
                        ))
                    };
                    let bucket = self
                        .admin
                        .state
                        .mesh
                        .js
                        .get_key_value(REVOKED_BUCKET)
                        .await
                        .map_err(|e| unavailable(&e))?;
                    let mut keys = bucket.keys().await.map_err(|e| unavailable(&e))?;
                    let now_secs = execmesh_proto::now_ms() / 1000;
                    let mut revocations = Vec::new();
                    while let Some(key) = keys.next().await {
                        let key = key.map_err(|e| unavailable(&e))?;
                        let Some(entry) = bucket.entry(&key).await.map_err(|e| unavailable(&e))?
                        else {
                            continue;
                        };
                        // Expired keys leave an empty marker behind.
                        if entry.operation != kv::Operation::Put || entry.value.is_empty() {
                            continue;
                        }
                        let Ok(expires_at) = serde_json::from_slice::<u64>(&entry.value) else {
                            continue;
                        };
                        if expires_at <= now_secs {
                            continue;
                        }
                        revocations.push(pb::Revocation {
                            token_id: key,
                            expires_at_ms: expires_at * 1000,
                            revoked_at_ms: (entry.created.unix_timestamp_nanos() / 1_000_000).max(0)
                                as u64,
                        });
                    }
                    revocations.sort_by(|a, b| a.token_id.cmp(&b.token_id));
                    Ok(pb::ListRevocationsResponse { revocations })
                },
            )
            .await
    }
}

/// Whether `id` can be a token id: the characters the revocation list keys by (the ids this
/// gateway issues are URL-safe base64).
fn is_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
}
