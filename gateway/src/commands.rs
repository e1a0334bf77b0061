//! The one-shot subcommands of `execmesh-gateway`: `token mint` and `user add`.
//!
//! Each returns what to print on success and an error naming what is wrong; `main` maps them to
//! exit codes.

use std::io::Read;

use crate::admin::auth::ADMIN_SCOPE;
use crate::auth::{MCP_SCOPE, SigningKey, TokenSpec, parse_ttl};
use crate::config::Config;
use crate::policy::{self, NewUser, Policy};
use crate::tier::Tier;

/// Why a subcommand failed. `Usage` errors exit 64 (a bad argument), others 1.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("cannot read the password from standard input: {0}")]
    Stdin(std::io::Error),
}

/// `token mint`: a bearer token for `user` valid for `ttl`, for headless clients and CI. With a
/// policy the user must exist in it, and the token's tier is the user's (or lower with `tier`);
/// without one (development mode) the token is `dangerous` unless capped. `scopes` says what it
/// may be used for: `mcp` (the MCP endpoint) and/or `admin` (the admin API).
pub fn mint(
    config: &Config,
    user: &str,
    ttl: &str,
    tier: Option<&str>,
    scopes: &[String],
) -> Result<String, CommandError> {
    let ttl = parse_ttl(ttl).map_err(|e| CommandError::Usage(format!("invalid --ttl: {e}")))?;
    let scope =
        token_scope(scopes).map_err(|e| CommandError::Usage(format!("invalid --scope: {e}")))?;
    let cap = tier
        .map(|t| t.parse::<Tier>())
        .transpose()
        .map_err(|e| CommandError::Usage(format!("invalid --tier: {e}")))?;
    let policy = match &config.policy_file {
        Some(path) => Policy::load(path)?,
        None => Policy::development(),
    };
    let grant = policy.grant(user).ok_or_else(|| {
        CommandError::Usage(format!(
            "user `{user}` is not in the policy; add it with `execmesh-gateway user add {user}`"
        ))
    })?;
    let tier = cap.map_or(grant.tier, |cap| cap.min(grant.tier));
    let key = SigningKey::load_or_create(&config.key_file)?;
    let spec = TokenSpec {
        user,
        ttl,
        scope: &scope,
        tier,
        client_id: None,
    };
    Ok(key.issue(&config.audience(config.listen), &spec)?.token)
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

/// What `user add` did.
#[derive(Debug)]
pub struct Added {
    /// The generated password, when none was given on standard input: shown once.
    pub generated_password: Option<String>,
    /// The user's tier under the new policy.
    pub tier: Tier,
}

/// `user add`: writes `name` into the policy file with an argon2 hash of the password read from
/// `stdin` (one line), or of a generated one.
pub fn add_user(
    config: &Config,
    name: &str,
    tier: Option<&str>,
    groups: Vec<String>,
    password_stdin: Option<&mut dyn Read>,
    replace: bool,
) -> Result<Added, CommandError> {
    let path = config.policy_file.as_ref().ok_or_else(|| {
        CommandError::Usage(
            "no policy file configured: set `policy_file` in the config, --policy-file or \
             EXECMESH_POLICY_FILE"
                .to_string(),
        )
    })?;
    let tier = tier
        .map(|t| t.parse::<Tier>())
        .transpose()
        .map_err(|e| CommandError::Usage(format!("invalid --tier: {e}")))?;
    let (password, generated) = match password_stdin {
        Some(stdin) => {
            let mut text = String::new();
            stdin
                .read_to_string(&mut text)
                .map_err(CommandError::Stdin)?;
            let line = text.lines().next().unwrap_or_default().to_string();
            if line.is_empty() {
                return Err(CommandError::Usage(
                    "the password on standard input is empty".to_string(),
                ));
            }
            (line, None)
        }
        None => {
            let password = policy::password::generate();
            (password.clone(), Some(password))
        }
    };
    let user = NewUser {
        name: name.to_string(),
        password,
        tier,
        groups,
        replace,
    };
    let policy = policy::add_user(path, &user)?;
    let tier = policy.grant(name).map(|g| g.tier).unwrap_or_default();
    Ok(Added {
        generated_password: generated,
        tier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_scopes_default_to_mcp_and_only_known_ones_are_minted() {
        let scopes =
            |list: &[&str]| token_scope(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(scopes(&[]).unwrap(), "mcp");
        assert_eq!(scopes(&["admin"]).unwrap(), "admin");
        assert_eq!(scopes(&["admin", " mcp", "admin"]).unwrap(), "admin mcp");
        assert!(scopes(&["mcp", "root"]).unwrap_err().contains("`root`"));
    }
}
