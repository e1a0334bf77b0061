//! The fleet as this replica sees it: every host's last facts and heartbeat, held in memory and
//! kept current by watches of `mesh_facts` and `mesh_presence` ([`crate::core::directory_watch`]),
//! each record checked once, as it arrives. Listing the fleet then reads two probes from NATS
//! instead of every host's records, whatever the fleet's size.
//!
//! A listing must not miss what was stored before it began (a host that has just registered),
//! so it first asks NATS how many records follow the last one the directory took and waits for
//! the watches to take them ([`crate::core::mesh::Mesh::hosts`]). While the directory is not
//! complete (loading, a watch failed, the identities changed) listings read NATS as before.

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
    /// Counts the directories installed: counts of one mean nothing to the next.
    generation: u64,
    hosts: HostEntries,
    facts: Applied,
    presence: Applied,
    /// The identities its records were checked against (`None`: records are not checked).
    checked_against: Option<Arc<Identities>>,
}

/// How far the watch of one bucket got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The stream sequence of the last record taken.
    pub seq: u64,
    /// The records taken since the watch opened.
    pub count: u64,
}

/// Where a complete directory stood when a listing began.
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    generation: u64,
    /// Hosts (keys of either bucket) the directory holds.
    pub keys: usize,
    pub facts: Applied,
    pub presence: Applied,
}

// === impl Applied ===

impl Applied {
    /// Counts one record taken, stored at `seq`.
    pub fn took(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
        self.count += 1;
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
            facts: state.facts,
            presence: state.presence,
        })
    }

    /// The listed hosts, once the watches have taken `facts` and `presence` records in all
    /// (counted as in `mark`); `None` when they did not within `wait`, or the directory was
    /// installed again or fell incomplete meanwhile.
    pub async fn listed_once(
        &self,
        mark: &Mark,
        facts: u64,
        presence: u64,
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
                if state.facts.count >= facts && state.presence.count >= presence {
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
        facts: Applied,
        presence: Applied,
        checked_against: Option<Arc<Identities>>,
    ) {
        {
            let mut state = self.state();
            state.checked_against = checked_against;
            state.generation += 1;
            state.complete = true;
            state.hosts = hosts;
            state.facts = facts;
            state.presence = presence;
        }
        self.advanced.notify_waiters();
    }

    /// Takes one record a running watch delivered: the last of `kv_key` in the bucket of `key`,
    /// stored at `seq`.
    pub fn take(&self, key: HostKey, kv_key: &str, seq: u64, last: Option<KvLast>) {
        {
            let mut state = self.state();
            match key {
                HostKey::Facts => state.facts.took(seq),
                HostKey::Presence => state.presence.took(seq),
            }
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

    /// Takes a record of `kv_key` read again (not delivered by the watch, so not counted),
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
