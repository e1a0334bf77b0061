//! Signing in with a policy user's password, as every login form of the gateway does (OAuth's
//! `/authorize`, the console): argon2 checked off the async workers, unknown users checked
//! against a dummy hash, behind per-address and per-user rate limits that both forms share.

use std::time::Duration;

use tracing::{info, warn};

use crate::core::policy::{Policy, password};
use crate::core::ratelimit::RateLimiter;

/// Failed logins per user per window before the user is held back.
pub const LOGIN_FAILURES_PER_USER: u32 = 5;
/// Login attempts per client address per window.
pub const LOGINS_PER_ADDRESS: u32 = 20;
/// The window of the limits above.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The password check with its rate limits, one per replica, shared by the login forms so that
/// two forms do not double an attacker's guesses.
pub struct SignIn {
    /// Failed logins per user.
    failures_per_user: RateLimiter,
    /// Login attempts per client address.
    logins_per_address: RateLimiter,
}

/// Why a sign-in was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignInRefusal {
    /// Too many attempts from this client address; try again after the duration.
    #[error("Too many sign-in attempts from your address.")]
    AddressLimited(Duration),
    /// Too many failed attempts for this user; try again after the duration.
    #[error("Too many failed sign-ins for this user.")]
    UserLimited(Duration),
    /// The user is unknown, has no password, or the password is wrong (never said which).
    #[error("Wrong user name or password.")]
    Wrong,
}

impl Default for SignIn {
    fn default() -> Self {
        Self {
            failures_per_user: RateLimiter::new(LOGIN_FAILURES_PER_USER, RATE_WINDOW),
            logins_per_address: RateLimiter::new(LOGINS_PER_ADDRESS, RATE_WINDOW),
        }
    }
}

// === impl SignIn ===

impl SignIn {
    /// `Ok` when `username` (already lower-cased) signs in with `password` under `policy`,
    /// from `address`.
    pub async fn check(
        &self,
        policy: &Policy,
        username: &str,
        password: String,
        address: &str,
    ) -> Result<(), SignInRefusal> {
        if let Err(wait) = self.logins_per_address.hit(address) {
            warn!(address = %address, "login attempts from this address are rate-limited");
            return Err(SignInRefusal::AddressLimited(wait));
        }
        if let Err(wait) = self.failures_per_user.check(username) {
            warn!(user = %username, address = %address, "logins of this user are rate-limited");
            return Err(SignInRefusal::UserLimited(wait));
        }
        let hash = policy.user(username).and_then(|u| u.password_hash.clone());
        // argon2 takes tens of milliseconds of CPU: off the async workers. Unknown users are
        // checked against a dummy hash, so the time taken does not tell who exists.
        let verified =
            tokio::task::spawn_blocking(move || password::verify(hash.as_deref(), &password))
                .await
                .unwrap_or(false);
        if !verified || policy.grant(username).is_none() {
            let _ = self.failures_per_user.hit(username);
            info!(user = %username, address = %address, "login refused: wrong user name or password");
            return Err(SignInRefusal::Wrong);
        }
        Ok(())
    }
}
