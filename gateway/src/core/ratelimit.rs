//! Fixed-window counters that slow down password guessing (per user, per client address) and
//! registration floods. Per replica: N replicas allow N times the rate, which still keeps
//! guessing an argon2-hashed password hopeless.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys beyond which expired windows are swept.
const SWEEP_AT: usize = 10_000;

/// At most `limit` events per key in each `window`.
pub struct RateLimiter {
    limit: u32,
    window: Duration,
    /// key → (start of its window, events in it).
    counts: Mutex<HashMap<String, (Instant, u32)>>,
}

// === impl RateLimiter ===

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when `key` has used up its window, without counting.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Ok(counts) = self.counts.lock() else {
            return Ok(());
        };
        match counts.get(key) {
            Some((start, n)) if start.elapsed() < self.window && *n >= self.limit => {
                Err(self.window.saturating_sub(start.elapsed()))
            }
            _ => Ok(()),
        }
    }

    /// Counts one event for `key`; `Err(retry_after)` if that exceeds the limit.
    pub fn hit(&self, key: &str) -> Result<(), Duration> {
        let Ok(mut counts) = self.counts.lock() else {
            return Ok(());
        };
        if counts.len() >= SWEEP_AT {
            let window = self.window;
            counts.retain(|_, (start, _)| start.elapsed() < window);
        }
        let entry = counts
            .entry(key.to_string())
            .or_insert_with(|| (Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.limit {
            Err(self.window.saturating_sub(entry.0.elapsed()))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_held_back_after_its_limit_and_others_are_not() {
        let limiter = RateLimiter::new(2, Duration::from_secs(60));
        assert!(limiter.hit("alice").is_ok());
        assert!(limiter.check("alice").is_ok());
        assert!(limiter.hit("alice").is_ok());
        assert!(limiter.check("alice").is_err());
        let retry = limiter.hit("alice").unwrap_err();
        assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
        assert!(limiter.hit("bob").is_ok());
    }

    #[test]
    fn the_window_resets() {
        let limiter = RateLimiter::new(1, Duration::from_millis(30));
        assert!(limiter.hit("k").is_ok());
        assert!(limiter.hit("k").is_err());
        std::thread::sleep(Duration::from_millis(40));
        assert!(limiter.hit("k").is_ok());
    }
}
