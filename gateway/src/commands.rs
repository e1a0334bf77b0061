//! The one-shot subcommands of `execmesh-gateway`: `token mint` and `user add`.
//!
//! Each returns what to print on success and an error naming what is wrong; `main` maps them to
//! exit codes.

use std::io::Read;

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
/// without one (development mode) the token is `dangerous` unless capped.
pub fn mint(
    config: &Config,
    user: &str,
    ttl: &str,
    tier: Option<&str>,
) -> Result<String, CommandError> {
    let ttl = parse_ttl(ttl).map_err(|e| CommandError::Usage(format!("invalid --ttl: {e}")))?;
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
        scope: MCP_SCOPE,
        tier,
        client_id: None,
    };
    Ok(key.issue(&config.audience(config.listen), &spec)?.token)
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
