//! Bearer tokens already verified, keyed by their SHA-256, with the identity their claims give: the signature check and claim parsing run once per token, not on every call.
//!
//! What is cached is only what cannot change during a token's life (its signature, issuer,
//! audience, claims). Expiry is checked on every hit, and the checks that can change — the
//! revocation list, the policy's grant, the scope — run on every call as before. Entries are
//! keyed by a hash of the whole token, so a token differing in any byte is verified anew.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};

use crate::core::auth::Identity;

/// Most tokens remembered; when full, the expired ones go, and if none has, all of them.
const CAPACITY: usize = 4096;

/// Identities of verified tokens by the SHA-256 of the token.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    by_hash: Mutex<HashMap<[u8; 32], Identity>>,
}

// === impl VerifiedTokens ===

impl VerifiedTokens {
    /// The identity of `token`, verified before and not expired at `now_secs`; otherwise
    /// `verify` is asked and what it accepts is remembered.
    pub fn get_or_verify<E>(
        &self,
        token: &str,
        now_secs: u64,
        verify: impl FnOnce() -> Result<Identity, E>,
    ) -> Result<Identity, E> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let tokens = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(identity) = tokens.get(&hash)
                && identity.expires_at > now_secs
            {
                return Ok(identity.clone());
            }
        }
        let identity = verify()?;
        let mut tokens = self.by_hash.lock().unwrap_or_else(PoisonError::into_inner);
        if tokens.len() >= CAPACITY {
            tokens.retain(|_, identity| identity.expires_at > now_secs);
            if tokens.len() >= CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(hash, identity.clone());
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::core::tier::Tier;

    fn identity(expires_at: u64) -> Identity {
        Identity {
            user: execmesh_proto::Token::parse("user", "alice").expect("token"),
            expires_at,
            token_id: "t-1".into(),
            tier: Tier::Standard,
            scopes: vec!["mcp".into()],
            client_id: None,
            groups: Vec::new(),
            reach: Vec::new(),
            run_as: None,
        }
    }

    #[test]
    fn a_token_is_verified_once_until_it_expires() {
        let tokens = VerifiedTokens::default();
        let calls = Cell::new(0);
        let verify = || {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(identity(100))
        };
        tokens.get_or_verify("a.b.c", 10, verify).expect("valid");
        tokens.get_or_verify("a.b.c", 99, verify).expect("cached");
        assert_eq!(calls.get(), 1);
        // Any other byte is another token; past its expiry it is checked again (and refused).
        tokens.get_or_verify("a.b.d", 10, verify).expect("valid");
        assert_eq!(calls.get(), 2);
        assert_eq!(tokens.get_or_verify("a.b.c", 100, || Err(())), Err(()));
    }
}
