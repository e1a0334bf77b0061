//! Audits refused bearer tokens (`/mcp`'s 401s, the admin API's UNAUTHENTICATED) without letting
//! a flood of them flood the audit stream.
//!
//! Failures are coalesced per (endpoint, client address, reason) in fixed windows: the first
//! failure of a window is published at once with a count of 1; the others are counted, and when
//! the window closes one event carries their count and the time they span. So one key yields at
//! most two events per window, and the keys tracked at once are capped: beyond [`MAX_KEYS`],
//! failures are counted under the client address `*`. Whatever the flood, a replica publishes at
//! most about `2 × (MAX_KEYS + endpoints × reasons)` such events per window. Pending counts are
//! published when the gateway stops. The token itself is never recorded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use execmesh_proto::pb;

use crate::core::audit::Audit;
use crate::core::auth::AuthError;

/// How long one window of counting lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most (endpoint, address, reason) keys counted at once; beyond, the address is `*`.
pub const MAX_KEYS: usize = 1024;
/// The address failures are counted under once [`MAX_KEYS`] keys are tracked.
const OVERFLOW_ADDR: &str = "*";

/// Where a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// The MCP endpoint (HTTP 401).
    Mcp,
    /// The gRPC admin API (UNAUTHENTICATED).
    Admin,
}

impl Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Self::Mcp => "mcp",
            Self::Admin => "admin",
        }
    }
}

/// Why a token was refused: one of the token errors, or a valid token of a user the policy
/// does not know.
#[derive(Debug, Clone, Copy)]
pub enum Refusal<'a> {
    /// The token did not verify (or was revoked).
    Token(&'a AuthError),
    /// The token verified but names a user the policy does not have.
    UnknownUser,
}

impl Refusal<'_> {
    fn code(&self) -> &'static str {
        match self {
            Self::Token(e) => e.code(),
            Self::UnknownUser => "unknown_user",
        }
    }

    fn reason(&self) -> String {
        match self {
            Self::Token(e) => e.to_string(),
            Self::UnknownUser => "the token's user is not in this gateway's policy".to_string(),
        }
    }
}

/// One refused token, as the bearer check saw it.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub endpoint: Endpoint,
    /// The client's address, when the transport knows it.
    pub addr: Option<IpAddr>,
    pub refusal: Refusal<'a>,
    /// The token's subject and id, when its signature verified.
    pub user: Option<&'a str>,
    pub token_id: Option<&'a str>,
}

/// An event to publish: the token's subject (or empty) and the body.
type Event = (String, pb::AuthFailed);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    endpoint: Endpoint,
    addr: String,
    code: &'static str,
}

/// The failures of one key in its current window, beyond the first (already published).
#[derive(Debug)]
struct Slot {
    opened: Instant,
    /// Counted and not yet published.
    count: u64,
    first_ms: u64,
    last_ms: u64,
    /// The latest of the counted ones.
    reason: String,
    user: String,
    token_id: String,
}

/// The counting, apart from the publishing (so it can be tested without NATS).
#[derive(Debug)]
struct Coalescer {
    window: Duration,
    max_keys: usize,
    slots: HashMap<Key, Slot>,
}

impl Coalescer {
    fn new(window: Duration, max_keys: usize) -> Self {
        Self {
            window,
            max_keys,
            slots: HashMap::new(),
        }
    }

    /// Counts `failure`; returns the events to publish now: the window's first failure, after
    /// the count of the key's previous window if that was still pending.
    fn record(&mut self, now: Instant, now_ms: u64, failure: &Failure<'_>) -> Vec<Event> {
        let mut key = Key {
            endpoint: failure.endpoint,
            addr: failure
                .addr
                .map(|a| a.to_canonical().to_string())
                .unwrap_or_else(|| "unknown".to_string()),
            code: failure.refusal.code(),
        };
        if !self.slots.contains_key(&key) && self.slots.len() >= self.max_keys {
            key.addr = OVERFLOW_ADDR.to_string();
        }
        let reason = failure.refusal.reason();
        let user = failure.user.unwrap_or_default().to_string();
        let token_id = failure.token_id.unwrap_or_default().to_string();
        let mut events = Vec::new();
        if let Some(slot) = self.slots.get_mut(&key) {
            if now.duration_since(slot.opened) < self.window {
                slot.count += 1;
                slot.last_ms = now_ms;
                if slot.count == 1 {
                    slot.first_ms = now_ms;
                }
                slot.reason = reason;
                slot.user = user;
                slot.token_id = token_id;
                return events;
            }
            if let Some(slot) = self.slots.remove(&key) {
                events.extend(summary(&key, slot));
            }
        }
        events.push((
            user.clone(),
            pb::AuthFailed {
                code: key.code.to_string(),
                reason: reason.clone(),
                client_addr: key.addr.clone(),
                endpoint: key.endpoint.as_str().to_string(),
                count: 1,
                first_ms: now_ms,
                last_ms: now_ms,
                token_id: token_id.clone(),
            },
        ));
        self.slots.insert(
            key,
            Slot {
                opened: now,
                count: 0,
                first_ms: now_ms,
                last_ms: now_ms,
                reason,
                user,
                token_id,
            },
        );
        events
    }

    /// Closes the windows that are over (every window with `all`) and returns their counts.
    fn flush(&mut self, now: Instant, all: bool) -> Vec<Event> {
        let window = self.window;
        let over: Vec<Key> = self
            .slots
            .iter()
            .filter(|(_, slot)| all || now.duration_since(slot.opened) >= window)
            .map(|(key, _)| key.clone())
            .collect();
        over.into_iter()
            .filter_map(|key| {
                let slot = self.slots.remove(&key)?;
                summary(&key, slot)
            })
            .collect()
    }
}

/// The event of a closed window, if it counted anything beyond its first failure.
fn summary(key: &Key, slot: Slot) -> Option<Event> {
    (slot.count > 0).then(|| {
        (
            slot.user,
            pb::AuthFailed {
                code: key.code.to_string(),
                reason: slot.reason,
                client_addr: key.addr.clone(),
                endpoint: key.endpoint.as_str().to_string(),
                count: slot.count,
                first_ms: slot.first_ms,
                last_ms: slot.last_ms,
                token_id: slot.token_id,
            },
        )
    })
}

/// The gateway's record of refused tokens, shared by `/mcp` and the admin API.
pub struct AuthFailures {
    audit: Arc<Audit>,
    counts: Mutex<Coalescer>,
}

// === impl AuthFailures ===

impl AuthFailures {
    /// Publishes through `audit`, coalescing in windows of [`WINDOW`].
    pub fn new(audit: Arc<Audit>) -> Self {
        Self {
            audit,
            counts: Mutex::new(Coalescer::new(WINDOW, MAX_KEYS)),
        }
    }

    /// Records one refused token (published at once if it opens a window, else counted).
    pub fn record(&self, failure: &Failure<'_>) {
        crate::core::metrics::auth_failure(failure.endpoint.as_str(), failure.refusal.code());
        let events = match self.counts.lock() {
            Ok(mut counts) => counts.record(Instant::now(), execmesh_proto::now_ms(), failure),
            Err(_) => return,
        };
        self.publish(events);
    }

    /// Publishes the counts of closed windows every quarter window, and every pending count
    /// when `shutdown` is cancelled.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(WINDOW / 4);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = ticks.tick() => false,
            };
            self.flush(all);
            if all {
                return;
            }
        }
    }

    /// Publishes the counts of closed windows (all windows with `all`).
    pub fn flush(&self, all: bool) {
        let events = match self.counts.lock() {
            Ok(mut counts) => counts.flush(Instant::now(), all),
            Err(_) => return,
        };
        self.publish(events);
    }

    fn publish(&self, events: Vec<Event>) {
        for (user, event) in events {
            self.audit.auth_failed(&user, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure<'a>(addr: &str, refusal: Refusal<'a>) -> Failure<'a> {
        Failure {
            endpoint: Endpoint::Mcp,
            addr: Some(addr.parse().unwrap()),
            refusal,
            user: None,
            token_id: None,
        }
    }

    #[test]
    fn a_flood_is_one_event_at_once_and_one_count_when_the_window_closes() {
        let mut c = Coalescer::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let bad = AuthError::BadSignature;
        let first = c.record(t0, 1000, &failure("10.0.0.1", Refusal::Token(&bad)));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1.count, 1);
        assert_eq!(first[0].1.code, "bad_signature");
        assert_eq!(first[0].1.client_addr, "10.0.0.1");
        for i in 1..=999 {
            let t = t0 + Duration::from_millis(i);
            assert!(
                c.record(t, 1000 + i, &failure("10.0.0.1", Refusal::Token(&bad)))
                    .is_empty()
            );
        }
        // Another address or another reason is its own key.
        let expired = AuthError::Expired(5);
        assert_eq!(
            c.record(t0, 1000, &failure("10.0.0.2", Refusal::Token(&bad)))
                .len(),
            1
        );
        assert_eq!(
            c.record(t0, 1000, &failure("10.0.0.1", Refusal::Token(&expired)))
                .len(),
            1
        );
        assert!(c.flush(t0 + Duration::from_secs(30), false).is_empty());
        let closed = c.flush(t0 + Duration::from_secs(61), false);
        assert_eq!(
            closed.len(),
            1,
            "only the key that counted more than its first"
        );
        let (_, summary) = &closed[0];
        assert_eq!(summary.count, 999);
        assert_eq!((summary.first_ms, summary.last_ms), (1001, 1999));
        // The next failure opens a new window, published at once.
        let again = c.record(
            t0 + Duration::from_secs(62),
            9000,
            &failure("10.0.0.1", Refusal::Token(&bad)),
        );
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].1.count, 1);
    }

    #[test]
    fn a_pending_count_is_published_before_the_next_window_and_at_shutdown() {
        let mut c = Coalescer::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let f = failure("10.0.0.1", Refusal::UnknownUser);
        c.record(t0, 1, &f);
        c.record(t0, 2, &f);
        c.record(t0, 3, &f);
        let next = c.record(t0 + Duration::from_secs(61), 4, &f);
        assert_eq!(
            next.iter().map(|(_, e)| e.count).collect::<Vec<_>>(),
            [2, 1]
        );
        c.record(t0 + Duration::from_secs(62), 5, &f);
        let at_stop = c.flush(t0 + Duration::from_secs(62), true);
        assert_eq!(at_stop.len(), 1);
        assert_eq!(at_stop[0].1.count, 1);
        assert_eq!(at_stop[0].1.code, "unknown_user");
    }

    #[test]
    fn many_addresses_are_counted_together_beyond_the_key_cap() {
        let mut c = Coalescer::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        let bad = AuthError::Malformed;
        let mut published = 0;
        for i in 0..1000u32 {
            let addr = format!("10.0.{}.{}", i / 256, i % 256);
            published += c.record(t0, 1, &failure(&addr, Refusal::Token(&bad))).len();
        }
        assert_eq!(published, 11, "ten addresses and the overflow key");
        let closed = c.flush(t0 + Duration::from_secs(61), false);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1.client_addr, "*");
        assert_eq!(closed[0].1.count, 989);
    }
}
