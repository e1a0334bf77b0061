//! Per-user and per-host output quotas: the bytes MESH_OUT may take from one user's jobs, and from all jobs, on this host within a sliding window.
//!
//! The window is the output retention: what a quota bounds is the output this host keeps in the
//! stream at any time. Usage is counted in slots of a twenty-fourth of the window, so bytes
//! leave the count about when their records age out of the stream. The counts live in the
//! agent's memory: a restarted agent starts from zero (at worst a window's worth of output more
//! for the host, which MESH_OUT's own byte limit still bounds).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use execmesh_proto::pb::{self, OutputLimit};

/// Slots a window is counted in.
const SLOTS: u64 = 24;
/// Users named in a heartbeat as having used up their quota.
const MAX_NAMED_USERS: usize = 16;

/// The quotas of this host and what has been used of them.
#[derive(Debug)]
pub struct Quotas {
    /// Bytes one user's jobs may store within the window.
    per_user: u64,
    /// Bytes all jobs on the host may store within the window.
    per_host: u64,
    window: Duration,
    /// Slot 0 starts here.
    epoch: Instant,
    ledger: Mutex<Ledger>,
}

/// What a piece of output may keep: `bytes` (up to what was asked), and the quota that allowed
/// fewer, if one did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    pub bytes: u64,
    pub short_by: Option<OutputLimit>,
}

#[derive(Debug, Default)]
struct Ledger {
    host: Usage,
    users: HashMap<String, Usage>,
    /// Bytes dropped since start, by limit (job cap, user quota, host quota).
    dropped: [u64; 3],
}

/// Bytes stored per slot, oldest first; slots older than the window are dropped as it moves.
#[derive(Debug, Default)]
struct Usage {
    slots: VecDeque<(u64, u64)>,
}

// === impl Usage ===

impl Usage {
    /// Bytes within the window that ends with slot `now`.
    fn used(&mut self, now: u64) -> u64 {
        while self
            .slots
            .front()
            .is_some_and(|(slot, _)| slot + SLOTS <= now)
        {
            self.slots.pop_front();
        }
        self.slots.iter().map(|(_, bytes)| bytes).sum()
    }

    fn add(&mut self, now: u64, bytes: u64) {
        match self.slots.back_mut() {
            Some((slot, sum)) if *slot == now => *sum += bytes,
            _ => self.slots.push_back((now, bytes)),
        }
    }

    /// Takes back bytes added but not used, from the newest slots.
    fn sub(&mut self, mut bytes: u64) {
        for (_, sum) in self.slots.iter_mut().rev() {
            let taken = bytes.min(*sum);
            *sum -= taken;
            bytes -= taken;
            if bytes == 0 {
                break;
            }
        }
    }
}

// === impl Quotas ===

impl Quotas {
    pub fn new(per_user: u64, per_host: u64, window: Duration) -> Self {
        Self {
            per_user,
            per_host,
            window: window.max(Duration::from_secs(1)),
            epoch: Instant::now(),
            ledger: Mutex::default(),
        }
    }

    /// Takes up to `want` bytes from `user`'s quota and the host's; fewer when one of them has
    /// less room left, and then `short_by` names it (the user's when both are short).
    pub fn take(&self, user: &str, want: u64) -> Grant {
        let now = self.slot();
        let mut ledger = self.lock();
        let host_room = self.per_host.saturating_sub(ledger.host.used(now));
        let user_usage = ledger.users.entry(user.to_string()).or_default();
        let user_room = self.per_user.saturating_sub(user_usage.used(now));
        let bytes = want.min(user_room).min(host_room);
        user_usage.add(now, bytes);
        ledger.host.add(now, bytes);
        let short_by = (bytes < want).then_some(if user_room <= host_room {
            OutputLimit::UserQuota
        } else {
            OutputLimit::HostQuota
        });
        Grant { bytes, short_by }
    }

    /// Gives back bytes [`Quotas::take`] granted that the output did not keep (a piece cut at a
    /// line end, or output the job's own cap dropped).
    pub fn give_back(&self, user: &str, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut ledger = self.lock();
        ledger.host.sub(bytes);
        if let Some(usage) = ledger.users.get_mut(user) {
            usage.sub(bytes);
        }
    }

    /// Counts `bytes` a job dropped because of `limit`, for the heartbeat.
    pub fn dropped(&self, limit: OutputLimit, bytes: u64) {
        let index = match limit {
            OutputLimit::Unspecified => return,
            OutputLimit::JobCap => 0,
            OutputLimit::UserQuota => 1,
            OutputLimit::HostQuota => 2,
        };
        self.lock().dropped[index] += bytes;
    }

    /// The host's usage for its heartbeat (without the stream's fill, which the caller adds).
    pub fn usage(&self) -> pb::OutputUsage {
        let now = self.slot();
        let mut ledger = self.lock();
        let host_bytes = ledger.host.used(now);
        let mut at_quota = BTreeSet::new();
        ledger.users.retain(|user, usage| {
            let used = usage.used(now);
            if used >= self.per_user {
                at_quota.insert(user.clone());
            }
            used > 0
        });
        let [job_cap, user_quota, host_quota] = ledger.dropped;
        pb::OutputUsage {
            host_bytes,
            host_quota_bytes: self.per_host,
            user_quota_bytes: self.per_user,
            window_secs: self.window.as_secs(),
            users_at_quota: at_quota.into_iter().take(MAX_NAMED_USERS).collect(),
            dropped_job_cap_bytes: job_cap,
            dropped_user_quota_bytes: user_quota,
            dropped_host_quota_bytes: host_quota,
            stream_bytes: 0,
            stream_max_bytes: 0,
        }
    }

    /// The marker line written where `limit` cut a job's output off.
    pub fn marker(&self, limit: OutputLimit, user: &str) -> String {
        let secs = self.window.as_secs();
        let window = if secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else {
            format!("{secs}s")
        };
        match limit {
            OutputLimit::HostQuota => format!(
                "[execmesh: this host's output quota of {} bytes per {window} reached; further \
                 output is counted and dropped]\n",
                self.per_host
            ),
            _ => format!(
                "[execmesh: output quota of {} bytes per {window} for user {user} on this host \
                 reached; further output is counted and dropped]\n",
                self.per_user
            ),
        }
    }

    /// The quota `limit` names, in bytes (for a job's reason).
    pub fn limit_bytes(&self, limit: OutputLimit) -> u64 {
        match limit {
            OutputLimit::HostQuota => self.per_host,
            _ => self.per_user,
        }
    }

    /// The current slot: how many twenty-fourths of the window have passed since start.
    fn slot(&self) -> u64 {
        let slot_len = self.window.as_millis() / u128::from(SLOTS);
        let elapsed = self.epoch.elapsed().as_millis();
        u64::try_from(elapsed / slot_len.max(1)).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        // A panic while holding the lock leaves counts, not invariants: go on with them.
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_and_the_host_are_granted_what_is_left_and_told_which_quota_ran_out() {
        let q = Quotas::new(100, 150, Duration::from_secs(3600));
        assert_eq!(
            q.take("alice", 60),
            Grant {
                bytes: 60,
                short_by: None
            }
        );
        assert_eq!(
            q.take("alice", 60),
            Grant {
                bytes: 40,
                short_by: Some(OutputLimit::UserQuota)
            }
        );
        // Bob has his own quota, but the host has 50 left.
        assert_eq!(
            q.take("bob", 80),
            Grant {
                bytes: 50,
                short_by: Some(OutputLimit::HostQuota)
            }
        );
        // What was not kept comes back.
        q.give_back("bob", 30);
        let usage = q.usage();
        assert_eq!(usage.host_bytes, 120);
        assert_eq!(usage.users_at_quota, vec!["alice".to_string()]);
        q.dropped(OutputLimit::UserQuota, 7);
        assert_eq!(q.usage().dropped_user_quota_bytes, 7);
    }

    #[test]
    fn usage_leaves_the_window_slot_by_slot() {
        let mut u = Usage::default();
        u.add(0, 10);
        u.add(5, 20);
        assert_eq!(u.used(5), 30);
        assert_eq!(u.used(SLOTS), 20);
        assert_eq!(u.used(SLOTS + 5), 0);
    }
}
