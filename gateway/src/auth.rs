//! Bearer tokens: Ed25519-signed JWTs that every gateway replica holding the same key verifies.
//!
//! The key is a 32-byte Ed25519 seed kept (base64) in the gateway's state directory. Tokens are
//! compact JWS (`alg: EdDSA`), so any JWT library can inspect them; verification needs no shared
//! session state, only the key file.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, Signer, Verifier};
use serde::{Deserialize, Serialize};

use execmesh_proto::Token;

/// The issuer written into every token and required on verification.
pub const ISSUER: &str = "execmesh";
/// The audience of MCP access tokens.
pub const AUDIENCE: &str = "execmesh-mcp";
/// Longest lifetime `token mint` accepts.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a key could not be loaded or a token could not be minted or verified.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read key file {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    WriteKey {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} does not hold a base64 Ed25519 seed of 32 bytes")]
    BadKey { path: String },
    #[error("invalid user name: {0}")]
    BadUser(#[from] execmesh_proto::TokenError),
    #[error("token lifetime must be between 1 second and {} days", MAX_TTL.as_secs() / 86400)]
    BadTtl,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not verify with this gateway's key")]
    BadSignature,
    #[error("the token expired {0} seconds ago")]
    Expired(u64),
    #[error("the token was issued for `{0}`, not for this gateway")]
    WrongAudience(String),
}

/// The verified identity carried by a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user, a subject-safe token.
    pub user: Token,
    /// Unix seconds at which the token expires.
    pub expires_at: u64,
    /// The token's id, for revocation and audit.
    pub token_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    jti: String,
}

/// The gateway's token key. Cloning shares nothing mutable.
#[derive(Clone)]
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

fn now_secs() -> u64 {
    execmesh_proto::now_ms() / 1000
}

// === impl SigningKey ===

impl SigningKey {
    /// Generates a fresh key (not persisted).
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// Loads the key from `path`, creating it (mode 0600, parent directories too) if it does
    /// not exist yet, so a first start needs no setup and later starts keep issued tokens valid.
    pub fn load_or_create(path: &Path) -> Result<Self, AuthError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(text.trim(), path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                key.write(path)?;
                Ok(key)
            }
            Err(source) => Err(AuthError::ReadKey {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Loads an existing key; a missing file is an error.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::ReadKey {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_base64(text.trim(), path)
    }

    fn from_base64(text: &str, path: &Path) -> Result<Self, AuthError> {
        let bad = || AuthError::BadKey {
            path: path.display().to_string(),
        };
        let bytes = STANDARD.decode(text).map_err(|_| bad())?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        Ok(Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    fn write(&self, path: &Path) -> Result<(), AuthError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| AuthError::WriteKey {
            path: path.display().to_string(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(err)?;
        writeln!(file, "{}", STANDARD.encode(self.key.to_bytes())).map_err(err)?;
        file.sync_all().map_err(err)
    }

    /// Mints an access token for `user`, valid for `ttl`.
    pub fn mint(&self, user: &str, ttl: Duration) -> Result<String, AuthError> {
        let user = Token::parse("user", user)?;
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(AuthError::BadTtl);
        }
        let now = now_secs();
        let jti: [u8; 12] = rand::random();
        let claims = Claims {
            iss: ISSUER.to_string(),
            sub: user.to_string(),
            aud: AUDIENCE.to_string(),
            iat: now,
            exp: now + ttl.as_secs().max(1),
            jti: URL_SAFE_NO_PAD.encode(jti),
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).map_err(|_| AuthError::Malformed)?);
        let signing_input = format!("{header}.{payload}");
        let signature = self.key.sign(signing_input.as_bytes());
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes())
        ))
    }

    /// Verifies a token's signature, issuer, audience and expiry.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice(&h).ok())
            .ok_or(AuthError::Malformed)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("EdDSA") {
            return Err(AuthError::Malformed);
        }
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature)
            .ok()
            .and_then(|s| s.try_into().ok())
            .ok_or(AuthError::Malformed)?;
        let signing_input = &token[..header_len(token)];
        self.key
            .verifying_key()
            .verify(signing_input.as_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|p| serde_json::from_slice(&p).ok())
            .ok_or(AuthError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(AuthError::Malformed);
        }
        if claims.aud != AUDIENCE {
            return Err(AuthError::WrongAudience(claims.aud));
        }
        let now = now_secs();
        if claims.exp <= now {
            return Err(AuthError::Expired(now - claims.exp));
        }
        Ok(Identity {
            user: Token::parse("user", &claims.sub).map_err(|_| AuthError::Malformed)?,
            expires_at: claims.exp,
            token_id: claims.jti,
        })
    }
}

/// Length of `header.payload` in a compact JWS (everything before the last dot).
fn header_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// Parses a duration such as `30s`, `15m`, `12h`, `7d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30s, 15m, 12h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("`{text}`: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_token_verifies_with_the_same_key_only() {
        let key = SigningKey::generate();
        let token = key.mint("alice", Duration::from_secs(60)).unwrap();
        let id = key.verify(&token).unwrap();
        assert_eq!(id.user.as_str(), "alice");
        assert!(matches!(
            SigningKey::generate().verify(&token),
            Err(AuthError::BadSignature)
        ));
    }

    #[test]
    fn tampered_and_malformed_tokens_are_refused() {
        let key = SigningKey::generate();
        let token = key.mint("alice", Duration::from_secs(60)).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"execmesh","sub":"root","aud":"execmesh-mcp","iat":0,"exp":99999999999,"jti":"x"}"#,
        );
        parts[1] = &forged;
        assert!(matches!(
            key.verify(&parts.join(".")),
            Err(AuthError::BadSignature)
        ));
        for bad in ["", "a.b", "a.b.c.d", "x.y.z"] {
            assert!(key.verify(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn key_file_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/gateway.key");
        let a = SigningKey::load_or_create(&path).unwrap();
        let b = SigningKey::load_or_create(&path).unwrap();
        let token = a.mint("bob", Duration::from_secs(5)).unwrap();
        assert!(b.verify(&token).is_ok());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_ttl("7w").is_err());
        assert!(parse_ttl("soon").is_err());
    }
}
