//! The revocation list as `/mcp` sees it: `mesh_revoked` read through a short per-token cache,
//! so a token revoked on any replica is refused by every replica within [`CACHE_TTL`], and a
//! busy token costs one KV read per second per replica.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::core::token_store::{Store, StoreError};

/// How long one answer about a token is trusted. Bounds how late another replica notices a
/// revocation.
pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Entries beyond which the cache is swept of stale answers.
const SWEEP_AT: usize = 10_000;

/// Answers "is this token revoked?" for one replica.
pub struct Revocations {
    store: Store,
    /// jti → (when checked, revoked).
    cache: Mutex<HashMap<String, (Instant, bool)>>,
}

// === impl Revocations ===

impl Revocations {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether the token `jti` is revoked. A KV failure is an error (the caller refuses the
    /// request rather than risk honouring a revoked token).
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, StoreError> {
        if let Ok(cache) = self.cache.lock()
            && let Some((at, revoked)) = cache.get(jti)
            && (*revoked || at.elapsed() < CACHE_TTL)
        {
            return Ok(*revoked);
        }
        let revoked = self.store.is_revoked(jti).await?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= SWEEP_AT {
                cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            }
            cache.insert(jti.to_string(), (Instant::now(), revoked));
        }
        Ok(revoked)
    }

    /// Revokes `jti` (valid until `expires_at`) for every replica.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), StoreError> {
        self.store.revoke_token(jti, expires_at).await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(jti.to_string(), (Instant::now(), true));
        }
        Ok(())
    }
}
