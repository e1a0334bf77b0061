//! The fleet as this replica sees it: every host's last facts and heartbeat, held in memory and
//! kept current by watches of `mesh_facts` and `mesh_presence` ([`crate::core::directory_watch`]),
//! each record checked once, as it arrives. Listing the fleet then reads two probes from NATS
//! instead of every host's records, whatever the fleet's size.
//!
//! A listing must not miss what was stored before it began (a host that has just registered),
//! so it first asks NATS for the sequence of the tenant's last record in each bucket and waits
//! for the watches, which deliver in stream order, to take that far
//! ([`crate::core::mesh::Mesh::hosts`]). While the directory is not complete (loading, a watch
//! failed, the identities changed) listings read NATS as before.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use execmesh_proto::Token;
use execmesh_proto::identities::Identities;
use tokio::sync::Notify;

use crate::core::hosts::{HostEntries, HostKey, HostRecord, KvLast};

/// The host directory of one replica.
#[derive(Debug, Default)]
pub struct Directory {
    state: Mutex<State>,
    /// Wakes listings waiting for the watches to take more records.
    advanced: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Both watches delivered every record stored when they opened, and still run.
    complete: bool,
    /// Counts the directories installed: a listing waits on the one it began with.
    generation: u64,
    hosts: HostEntries,
    taken: Taken,
    /// The identities its records were checked against (`None`: records are not checked).
    checked_against: Option<Arc<Identities>>,
}

/// How far the watches got: the stream sequence of the last record each took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub facts: u64,
    pub presence: u64,
}

/// Where a complete directory stood when a listing began.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    generation: u64,
    /// Hosts (keys of either bucket) the directory holds.
    pub keys: usize,
}

// === impl Taken ===

impl Taken {
    /// Notes a record of the bucket of `key` taken, stored at `seq`.
    pub fn took(&mut self, key: HostKey, seq: u64) {
        let at = match key {
            HostKey::Facts => &mut self.facts,
            HostKey::Presence => &mut self.presence,
        };
        *at = (*at).max(seq);
    }

    /// Whether every record up to `to` in both buckets was taken.
    fn reached(&self, to: Taken) -> bool {
        self.facts >= to.facts && self.presence >= to.presence
    }
}

// === impl Directory ===

impl Directory {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent directory.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the directory stands, when it is complete and its records were checked against
    /// `identities`, the ones in force (until the watch has checked again what changed, a
    /// listing reads NATS).
    pub fn mark(&self, identities: Option<&Arc<Identities>>) -> Option<Mark> {
        let state = self.state();
        let same = match (&state.checked_against, identities) {
            (Some(checked), Some(now)) => Arc::ptr_eq(checked, now),
            (None, None) => true,
            _ => false,
        };
        (state.complete && same).then_some(Mark {
            generation: state.generation,
            keys: state.hosts.len(),
        })
    }

    /// The listed hosts, once the watches have taken every record up to `to` (the last stored
    /// ones: a watch delivers in stream order, so none before is left out, but one replaced
    /// before its watch delivered it, which it then skips); `None` when they did not within
    /// `wait`, or the directory was installed again or fell incomplete meanwhile.
    pub async fn listed_once(
        &self,
        mark: &Mark,
        to: Taken,
        wait: Duration,
    ) -> Option<BTreeMap<Token, Arc<HostRecord>>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let advanced = self.advanced.notified();
            tokio::pin!(advanced);
            // Registered before the state is looked at, so no record taken in between is missed.
            advanced.as_mut().enable();
            {
                let state = self.state();
                if !state.complete || state.generation != mark.generation {
                    return None;
                }
                if state.taken.reached(to) {
                    return Some(state.hosts.listed());
                }
            }
            tokio::time::timeout_at(deadline, advanced).await.ok()?;
        }
    }

    /// Installs what watches that have just delivered every stored record built: listings
    /// read it from now on.
    pub fn install(
        &self,
        hosts: HostEntries,
        taken: Taken,
        checked_against: Option<Arc<Identities>>,
    ) {
        {
            let mut state = self.state();
            state.checked_against = checked_against;
            state.generation += 1;
            state.complete = true;
            state.hosts = hosts;
            state.taken = taken;
        }
        self.advanced.notify_waiters();
    }

    /// Takes one record a running watch delivered: the last of `kv_key` in the bucket of `key`,
    /// stored at `seq`.
    pub fn take(&self, key: HostKey, kv_key: &str, seq: u64, last: Option<KvLast>) {
        {
            let mut state = self.state();
            state.taken.took(key, seq);
            state.hosts.set_at(kv_key, key, seq, last);
        }
        self.advanced.notify_waiters();
    }

    /// The keys whose last record was ignored, by host: what new identities may accept.
    pub fn rejected(&self) -> Vec<(Token, HostKey)> {
        self.state().hosts.rejected()
    }

    /// Notes that every record ignored so far was checked again against `identities`.
    pub fn checked_against(&self, identities: Option<Arc<Identities>>) {
        self.state().checked_against = identities;
    }

    /// Takes a record of `kv_key` read again (not delivered by a watch, so it moves no [`Taken`]),
    /// stored at `seq`; passed over when the watch has delivered a later one meanwhile.
    pub fn recheck(&self, key: HostKey, kv_key: &str, seq: u64, last: Option<KvLast>) {
        self.state().hosts.set_at(kv_key, key, seq, last);
    }

    /// Marks the directory incomplete (a watch ended, the identities changed): listings read
    /// NATS until one is installed again.
    pub fn invalidate(&self) {
        {
            let mut state = self.state();
            state.complete = false;
            state.hosts = HostEntries::default();
        }
        self.advanced.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::hosts::KvLast;
    use execmesh_proto::pb;
    use prost::Message as _;

    fn facts(host: &str) -> Option<KvLast> {
        let pack = pb::HostFacts {
            host: host.to_string(),
            ..Default::default()
        };
        Some(KvLast::Value(pack.encode_to_vec().into()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_listing_waits_until_the_watches_took_the_last_stored_records() {
        let directory = Directory::default();
        let mut hosts = HostEntries::default();
        hosts.set_at("default.a", HostKey::Facts, 5, facts("a"));
        let taken = Taken {
            facts: 5,
            presence: 7,
        };
        directory.install(hosts, taken, None);
        let mark = directory.mark(None).expect("complete");
        let wait = Duration::from_secs(1);
        let listed = |to| directory.listed_once(&mark, to, wait);
        assert_eq!(listed(taken).await.map(|h| h.len()), Some(1));
        // `b` was stored at 9 and the watch has not taken it: no listing without it.
        let to = Taken {
            facts: 9,
            presence: 7,
        };
        assert!(listed(to).await.is_none(), "listed before taking `b`");
        // Records taken of other keys, however many, do not stand in for it.
        for seq in [6, 8] {
            directory.take(HostKey::Facts, "default.a", seq, facts("a"));
        }
        directory.take(HostKey::Presence, "default.a", 10, None);
        assert!(listed(to).await.is_none(), "listed before taking `b`");
        let (hosts, _) = tokio::join!(listed(to), async {
            directory.take(HostKey::Facts, "default.b", 9, facts("b"));
        });
        let hosts = hosts.expect("listed once `b` was taken");
        assert_eq!(
            hosts.keys().map(Token::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        // Installed again meanwhile: the listing reads NATS instead.
        directory.install(HostEntries::default(), to, None);
        assert!(listed(to).await.is_none(), "a mark of an earlier directory");
    }
}
