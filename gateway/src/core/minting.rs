//! Who may mint a token for whom, with which scopes, tier and lifetime, and who may revoke one:
//! the rules every face that mints or revokes (the admin API, the console) applies alike.
//!
//! A caller mints for themselves never above the tier they act with and never with a scope the
//! token they call with lacks. A user the policy's `[token_admins]` names may also mint for
//! other users of the policy, never above the tier the policy gives that user. A tier above the
//! ceiling is refused, never silently lowered. (Minting with the key file, `execmesh-gateway
//! token mint`, is the key holder's act and not bound by this.)

use std::time::Duration;

use crate::core::auth::{ADMIN_SCOPE, Identity, MCP_SCOPE};
use crate::core::policy::Policy;
use crate::core::tier::Tier;

/// Lifetime of a minted token when the request names none, as `token mint` defaults.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);

/// Why the caller may mint a token for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grounds {
    /// For themselves.
    Own,
    /// For another user, as a token admin.
    TokenAdmin,
}

impl Grounds {
    /// How the audit record names the grounds.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Own => "self",
            Self::TokenAdmin => "token_admin",
        }
    }
}

/// Why a mint is refused. `UnknownUser` is a precondition a caller fixes in the policy; every
/// other variant is a refusal by the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintRefusal {
    #[error("user `{user}` is not in the policy; add it with `execmesh-gateway user add {user}`")]
    UnknownUser { user: String },
    #[error(
        "{me} may not mint a token with the `{missing}` scope: the token {me} calls with lacks \
         it, and a token minted through the API has only scopes the minting token has (yours: \
         {has})"
    )]
    MissingScope {
        me: String,
        missing: String,
        has: String,
    },
    #[error(
        "{me} may not mint a token for {user}: through the admin API a user mints tokens only \
         for themselves, unless the policy's [token_admins] names them (token admins: {admins}); \
         the key holder can run `execmesh-gateway token mint --user {user}` on the gateway"
    )]
    NotTokenAdmin {
        me: String,
        user: String,
        admins: String,
    },
    #[error(
        "{me} may not mint a {asked} token for {user}: {asked} is above {whose} ({ceiling}); ask \
         for {ceiling} or lower"
    )]
    AboveCeiling {
        me: String,
        user: String,
        asked: Tier,
        whose: String,
        ceiling: Tier,
    },
}

/// What a mint of `scope` for `user` may have, given who asks: the grounds and the highest tier.
pub fn entitlement(
    policy: &Policy,
    caller: &Identity,
    user: &str,
    scope: &str,
) -> Result<(Grounds, Tier), MintRefusal> {
    let me = caller.user.as_str();
    let grant = policy.grant(user).ok_or_else(|| MintRefusal::UnknownUser {
        user: user.to_string(),
    })?;
    if user == me {
        // Never more than the minting token itself carries.
        if let Some(missing) = scope.split(' ').find(|s| !caller.has_scope(s)) {
            return Err(MintRefusal::MissingScope {
                me: me.to_string(),
                missing: missing.to_string(),
                has: caller.scopes.join(" "),
            });
        }
        return Ok((Grounds::Own, caller.tier));
    }
    if policy.is_token_admin(me) {
        return Ok((Grounds::TokenAdmin, grant.tier));
    }
    Err(MintRefusal::NotTokenAdmin {
        me: me.to_string(),
        user: user.to_string(),
        admins: policy.token_admins().describe(),
    })
}

/// What a token admin may mint for `user` (themselves included) on grounds of the policy alone,
/// not of the token they call with: the face has no such token (the console's session carries
/// only the `console` scope). The ceiling is the tier the policy gives `user`.
pub fn entitlement_as_token_admin(
    policy: &Policy,
    me: &str,
    user: &str,
) -> Result<(Grounds, Tier), MintRefusal> {
    let grant = policy.grant(user).ok_or_else(|| MintRefusal::UnknownUser {
        user: user.to_string(),
    })?;
    if !policy.is_token_admin(me) {
        return Err(MintRefusal::NotTokenAdmin {
            me: me.to_string(),
            user: user.to_string(),
            admins: policy.token_admins().describe(),
        });
    }
    let grounds = if user == me {
        Grounds::Own
    } else {
        Grounds::TokenAdmin
    };
    Ok((grounds, grant.tier))
}

/// The tier to mint: the one asked for when at or below `ceiling`, the ceiling when none was.
pub fn tier_within(
    me: &str,
    user: &str,
    grounds: Grounds,
    asked: Option<Tier>,
    ceiling: Tier,
) -> Result<Tier, MintRefusal> {
    match asked {
        None => Ok(ceiling),
        Some(asked) if asked <= ceiling => Ok(asked),
        Some(asked) => {
            let whose = match grounds {
                Grounds::Own => format!("the tier {me} acts with"),
                Grounds::TokenAdmin => format!("{user}'s tier in the policy"),
            };
            Err(MintRefusal::AboveCeiling {
                me: me.to_string(),
                user: user.to_string(),
                asked,
                whose,
                ceiling,
            })
        }
    }
}

/// Whether `user` may manage tokens (mint for anyone, revoke any) in a face that signs people
/// in by password rather than by a token with scopes: the policy's `[token_admins]`.
pub fn may_manage_tokens(policy: &Policy, user: &str) -> bool {
    policy.is_token_admin(user)
}

/// The lifetime of a minted token: `asked` (the default when `None`), refused when longer
/// than `max`, the longest this gateway allows.
pub fn lifetime(asked: Option<Duration>, max: Duration) -> Result<Duration, String> {
    let ttl = asked.unwrap_or(DEFAULT_TTL.min(max));
    if ttl > max {
        return Err(format!(
            "ttl_secs {} is longer than the longest token lifetime this gateway allows ({} s, \
             {} days; max_token_lifetime_secs)",
            ttl.as_secs(),
            max.as_secs(),
            max.as_secs() / 86400
        ));
    }
    Ok(ttl)
}

/// The `scope` claim of a minted token: the scopes asked for (`mcp` when none), each one this
/// gateway knows, space-separated, without repeats.
pub fn token_scope(scopes: &[String]) -> Result<String, String> {
    let mut claim: Vec<&str> = Vec::new();
    for scope in scopes.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if scope != MCP_SCOPE && scope != ADMIN_SCOPE {
            return Err(format!(
                "unknown scope `{scope}`; the scopes are `{MCP_SCOPE}` and `{ADMIN_SCOPE}`"
            ));
        }
        if !claim.contains(&scope) {
            claim.push(scope);
        }
    }
    if claim.is_empty() {
        claim.push(MCP_SCOPE);
    }
    Ok(claim.join(" "))
}

/// Whether `id` can be a token id: the characters the revocation list keys by (the ids this
/// gateway issues are URL-safe base64).
pub fn is_token_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 200
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '='))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_above_the_ceiling_is_refused_not_lowered() {
        assert_eq!(
            tier_within("a", "a", Grounds::Own, None, Tier::Standard),
            Ok(Tier::Standard)
        );
        assert_eq!(
            tier_within("a", "a", Grounds::Own, Some(Tier::Readonly), Tier::Standard),
            Ok(Tier::Readonly)
        );
        let err = tier_within(
            "a",
            "b",
            Grounds::TokenAdmin,
            Some(Tier::Dangerous),
            Tier::Standard,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("b's tier in the policy (standard)"), "{err}");
    }

    #[test]
    fn token_ids_are_url_safe() {
        assert!(is_token_id("abc-DEF_1="));
        assert!(!is_token_id(""));
        assert!(!is_token_id("a b"));
    }
}
