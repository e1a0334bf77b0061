//! What the gateway knows of a host: its record as the last stored facts and heartbeat make it,
//! and its state, from its agent's signed heartbeat, or unverified when its records are not
//! signed by its agent's key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;
use execmesh_proto::{Token, pb, subject};
use prost::Message as _;

use crate::core::records::Rejection;

/// What the gateway knows of one host.
#[derive(Debug, Clone)]
pub struct HostRecord {
    pub host: Token,
    pub facts: Option<pb::HostFacts>,
    pub presence: Option<pb::Presence>,
    /// Why the host's facts or heartbeat were ignored, when they were: not signed by its
    /// agent's key (an agent without its seed, or a forgery). The host then shows `unverified`.
    pub unverified: Option<String>,
    /// How the host's last heartbeat went away, when it has none now and the marker is still
    /// stored: the source of "last seen" for an offline host.
    pub departed: Option<Departure>,
}

/// A heartbeat that is gone: the marker the server (TTL expiry) or the agent (withdrawal at a
/// graceful stop) left in `mesh_presence` in its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Departure {
    /// When the marker was stored, in ms since the epoch (its `Nats-Time-Stamp`).
    pub at_ms: u64,
    /// The server expired the heartbeat (its TTL ran out); `false`: the agent withdrew it.
    pub expired: bool,
}

// === impl HostRecord ===

impl HostRecord {
    /// A host known only by its id.
    pub fn new(host: Token) -> Self {
        Self {
            host,
            facts: None,
            presence: None,
            unverified: None,
            departed: None,
        }
    }

    /// The user whose SSH relay serves this host, when it is a relay target (no agent of its
    /// own): its requests go to that user's subjects only.
    pub fn relay_user(&self) -> Option<&str> {
        self.facts
            .as_ref()
            .map(|f| f.relay_user.as_str())
            .filter(|u| !u.is_empty())
    }

    /// Why the relay serving this host cannot reach it right now, when it said so.
    pub fn relay_offline_reason(&self) -> Option<&str> {
        self.facts
            .as_ref()
            .map(|f| f.relay_offline_reason.as_str())
            .filter(|r| !r.is_empty())
    }

    /// When the host's last heartbeat was written, if that is known: the live heartbeat's time,
    /// or else read off the marker that replaced it.
    ///
    /// Heartbeats expire by TTL, so an offline host has no heartbeat record left. What survives
    /// is the marker: stored by the server in JetStream (so every replica reads it, also after
    /// a gateway restart), stamped with the expiry time, which is the last heartbeat's time plus
    /// the TTL the agent states in its registration. That costs the agent nothing per beat (the
    /// alternative, rewriting its registration on every beat, would double the heartbeat
    /// traffic of a large fleet). A withdrawn heartbeat's marker is stamped when the agent
    /// stopped, right after its last beat. Without either (the marker aged out, see
    /// `execmesh_proto::jetstream::PRESENCE_MARKER_TTL`) "last seen" is unknown, never the age of the facts.
    pub fn last_heartbeat_ms(&self) -> Option<u64> {
        if let Some(presence) = &self.presence {
            return Some(presence.heartbeat_at_ms);
        }
        let departed = self.departed?;
        if !departed.expired {
            return Some(departed.at_ms);
        }
        // An agent too old to state its TTL: the expiry time is the best bound there is.
        let ttl = self.facts.as_ref().map_or(0, |f| f.presence_ttl_ms);
        Some(departed.at_ms.saturating_sub(ttl))
    }
}

/// The last stored record of one KV key, as a listing reads it.
#[derive(Debug, Clone)]
pub enum KvLast {
    Value(Bytes),
    /// Not its key's owner's.
    Rejected(Rejection),
    /// A delete, purge or TTL-expiry marker.
    Gone(Departure),
}

/// Which of a host's two keys a record is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKey {
    /// `mesh_facts`: its registration and fact pack.
    Facts,
    /// `mesh_presence`: its heartbeat.
    Presence,
}

/// How the last record of one of a host's keys reads, besides what the host's record holds.
#[derive(Debug, Clone, Default)]
enum Seen {
    /// Nothing stored there, or an empty value.
    #[default]
    Nothing,
    Value,
    /// Ignored, with the reason shown.
    Rejected(String),
    Gone(Departure),
}

impl Seen {
    /// Whether a host is listed for this record: a value or a rejected record is; a marker
    /// alone lists nothing.
    fn lists(&self) -> bool {
        matches!(self, Self::Value | Self::Rejected(_))
    }
}

/// One host as the last records of its two keys make it.
#[derive(Debug, Clone)]
struct HostEntry {
    record: Arc<HostRecord>,
    facts: Seen,
    presence: Seen,
    /// The stream sequence of the record each key was last set from (0: unknown).
    facts_seq: u64,
    presence_seq: u64,
}

// === impl HostEntry ===

impl HostEntry {
    fn new(host: Token) -> Self {
        Self {
            record: Arc::new(HostRecord::new(host)),
            facts: Seen::Nothing,
            presence: Seen::Nothing,
            facts_seq: 0,
            presence_seq: 0,
        }
    }

    /// Takes the last record of one of the host's keys, stored at `seq` (`None`: nothing to
    /// read there); one stored before the record the key was set from is passed over.
    fn set(&mut self, key: HostKey, seq: u64, last: Option<KvLast>) {
        let set_from = match key {
            HostKey::Facts => &mut self.facts_seq,
            HostKey::Presence => &mut self.presence_seq,
        };
        if seq < *set_from {
            return;
        }
        *set_from = seq;
        // Copied only while a listing handed out still holds the record.
        let record = Arc::make_mut(&mut self.record);
        let what = match key {
            HostKey::Facts => "facts",
            HostKey::Presence => "heartbeat",
        };
        let (seen, value) = match last {
            Some(KvLast::Value(value)) => (Seen::Value, Some(value)),
            Some(KvLast::Rejected(rejection)) => {
                (Seen::Rejected(format!("{what} {rejection}")), None)
            }
            Some(KvLast::Gone(departure)) => (Seen::Gone(departure), None),
            None => (Seen::Nothing, None),
        };
        match key {
            HostKey::Facts => {
                record.facts = value.and_then(|v| pb::HostFacts::decode(v).ok());
                self.facts = seen;
            }
            HostKey::Presence => {
                record.presence = value.and_then(|v| pb::Presence::decode(v).ok());
                self.presence = seen;
            }
        }
        // The facts' reason first: a forged registration matters more than a heartbeat.
        record.unverified = match (&self.facts, &self.presence) {
            (Seen::Rejected(why), _) | (_, Seen::Rejected(why)) => Some(why.clone()),
            _ => None,
        };
        // A marker tells when a registered host was last seen.
        record.departed = match self.presence {
            Seen::Gone(departure) if self.facts.lists() => Some(departure),
            _ => None,
        };
    }

    /// Whether the host is listed: its registration or its heartbeat is stored.
    fn listed(&self) -> bool {
        self.facts.lists() || self.presence.lists()
    }
}

/// Hosts by id, as the last records of their keys in `mesh_facts` and `mesh_presence` make
/// them: one listing read at once, or the directory kept current record by record.
#[derive(Debug, Clone, Default)]
pub struct HostEntries(BTreeMap<Token, HostEntry>);

// === impl HostEntries ===

impl HostEntries {
    /// Takes the last record of `key` of the host that `kv_key` (`<tenant>.<host>`) names; a
    /// key that names no host is passed over.
    pub fn set(&mut self, kv_key: &str, key: HostKey, last: Option<KvLast>) {
        self.set_at(kv_key, key, 0, last);
    }

    /// [`HostEntries::set`] from the record stored at `seq`: passed over when the key was set
    /// from a later one.
    pub fn set_at(&mut self, kv_key: &str, key: HostKey, seq: u64, last: Option<KvLast>) {
        let Ok((_, host)) = subject::parse_host_key(kv_key) else {
            return;
        };
        self.0
            .entry(host.clone())
            .or_insert_with(|| HostEntry::new(host))
            .set(key, seq, last);
    }

    /// The hosts with a record of either key (listed or not).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no host has a record.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys whose last record was ignored (not signed by the key's owner), by host.
    pub fn rejected(&self) -> Vec<(Token, HostKey)> {
        let mut keys = Vec::new();
        for (host, entry) in &self.0 {
            if matches!(entry.facts, Seen::Rejected(_)) {
                keys.push((host.clone(), HostKey::Facts));
            }
            if matches!(entry.presence, Seen::Rejected(_)) {
                keys.push((host.clone(), HostKey::Presence));
            }
        }
        keys
    }

    /// The hosts listed, by id: each record is shared, not copied.
    pub fn listed(&self) -> BTreeMap<Token, Arc<HostRecord>> {
        self.0
            .iter()
            .filter(|(_, entry)| entry.listed())
            .map(|(host, entry)| (host.clone(), entry.record.clone()))
            .collect()
    }
}

/// Hosts in one page of a listing at the most (the `hosts` tool's default too): a page of 5,000
/// is about 1.6 MB of JSON, a whole listing of 50,000 would pass the 16 MiB body rmcp's client
/// accepts, and the 4 MiB a gRPC client accepts by default from about 6,000 hosts on.
pub const MAX_PAGE_HOSTS: usize = 5_000;

/// One page of a listing sorted by id: up to `limit` hosts after the host `after` (the last one
/// of the page before, as its cursor names it; it need not be listed any more), and the id to go
/// on after when more follow.
pub fn page(
    hosts: &BTreeMap<Token, Arc<HostRecord>>,
    after: Option<Token>,
    limit: usize,
) -> (Vec<&Arc<HostRecord>>, Option<Token>) {
    let from = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut rest = hosts.range((from, Bound::Unbounded));
    let page: Vec<&Arc<HostRecord>> = rest.by_ref().take(limit).map(|(_, r)| r).collect();
    let next = match (rest.next(), page.last()) {
        (Some(_), Some(last)) => Some(last.host.clone()),
        _ => None,
    };
    (page, next)
}

/// Where a host stands. Selectors match it (`state=online`) by [`HostState::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Heartbeats arrive on time.
    Online,
    /// The last heartbeat is late by more than two intervals.
    Stale,
    /// No heartbeat: the agent is not connected.
    Offline,
    /// Records are there but not signed by the agent's key, so they are ignored.
    Unverified,
}

// === impl HostState ===

impl HostState {
    /// The state from a heartbeat: late by more than two intervals is stale.
    pub fn of(presence: Option<&pb::Presence>, now_ms: u64) -> Self {
        match presence {
            None => Self::Offline,
            Some(p) => {
                let interval = p.heartbeat_interval_ms.max(500);
                if now_ms.saturating_sub(p.heartbeat_at_ms) > 2 * interval + 1000 {
                    Self::Stale
                } else {
                    Self::Online
                }
            }
        }
    }

    /// The state of a stored host: [`HostState::of`] its heartbeat, or unverified when there is
    /// none because its records were ignored.
    pub fn of_record(record: &HostRecord, now_ms: u64) -> Self {
        match (&record.presence, &record.unverified) {
            (None, Some(_)) => Self::Unverified,
            (presence, _) => Self::of(presence.as_ref(), now_ms),
        }
    }

    /// The name clients and selectors use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Online => "online",
            Self::Stale => "stale",
            Self::Offline => "offline",
            Self::Unverified => "unverified",
        }
    }
}

impl fmt::Display for HostState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(host: &str) -> KvLast {
        KvLast::Value(
            pb::HostFacts {
                host: host.to_string(),
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        )
    }

    fn heartbeat(at_ms: u64) -> KvLast {
        KvLast::Value(
            pb::Presence {
                heartbeat_at_ms: at_ms,
                ..Default::default()
            }
            .encode_to_vec()
            .into(),
        )
    }

    fn gone(at_ms: u64) -> KvLast {
        KvLast::Gone(Departure {
            at_ms,
            expired: true,
        })
    }

    fn forged() -> KvLast {
        KvLast::Rejected(Rejection::Planted)
    }

    #[test]
    fn a_host_is_listed_by_its_registration_or_heartbeat_whatever_order_they_come_in() {
        let mut a = HostEntries::default();
        a.set("default.web-1", HostKey::Facts, Some(facts("web-1")));
        a.set("default.web-1", HostKey::Presence, Some(gone(5)));
        let mut b = HostEntries::default();
        b.set("default.web-1", HostKey::Presence, Some(gone(5)));
        b.set("default.web-1", HostKey::Facts, Some(facts("web-1")));
        for hosts in [a.listed(), b.listed()] {
            let web = &hosts[&Token::parse("host", "web-1").expect("id")];
            assert!(web.facts.is_some() && web.presence.is_none());
            assert_eq!(web.departed.map(|d| d.at_ms), Some(5));
        }

        // A marker alone lists nothing; a heartbeat alone does; a key naming no host is passed over.
        let mut hosts = HostEntries::default();
        hosts.set("default.gone-1", HostKey::Presence, Some(gone(1)));
        hosts.set("default.beat-1", HostKey::Presence, Some(heartbeat(7)));
        hosts.set("not a host key", HostKey::Facts, Some(facts("x")));
        let listed = hosts.listed();
        assert_eq!(
            listed.keys().map(Token::as_str).collect::<Vec<_>>(),
            ["beat-1"]
        );
        assert_eq!(listed.values().next().and_then(|r| r.departed), None);
    }

    #[test]
    fn a_rejected_record_shows_why_the_facts_reason_first_until_a_good_one_replaces_it() {
        let mut hosts = HostEntries::default();
        hosts.set("default.web-1", HostKey::Presence, Some(forged()));
        hosts.set("default.web-1", HostKey::Facts, Some(forged()));
        let why = |hosts: &HostEntries| {
            hosts
                .listed()
                .values()
                .next()
                .and_then(|r| r.unverified.clone())
        };
        assert!(
            why(&hosts).is_some_and(|w| w.starts_with("facts ")),
            "{:?}",
            why(&hosts)
        );
        assert_eq!(hosts.rejected().len(), 2);

        hosts.set("default.web-1", HostKey::Facts, Some(facts("web-1")));
        assert!(
            why(&hosts).is_some_and(|w| w.starts_with("heartbeat ")),
            "{:?}",
            why(&hosts)
        );
        hosts.set("default.web-1", HostKey::Presence, Some(heartbeat(9)));
        assert_eq!(why(&hosts), None);
        assert!(hosts.rejected().is_empty());
    }

    #[test]
    fn a_record_read_again_does_not_replace_a_later_one() {
        let mut hosts = HostEntries::default();
        hosts.set_at("default.web-1", HostKey::Presence, 10, Some(heartbeat(10)));
        hosts.set_at("default.web-1", HostKey::Presence, 4, Some(heartbeat(4)));
        let beat = |hosts: &HostEntries| {
            hosts
                .listed()
                .values()
                .next()
                .and_then(|r| r.presence.as_ref().map(|p| p.heartbeat_at_ms))
        };
        assert_eq!(beat(&hosts), Some(10));
        hosts.set_at("default.web-1", HostKey::Presence, 11, Some(heartbeat(11)));
        assert_eq!(beat(&hosts), Some(11));
    }

    #[test]
    fn a_listing_handed_out_keeps_its_records_as_they_were() {
        let mut hosts = HostEntries::default();
        hosts.set("default.web-1", HostKey::Presence, Some(heartbeat(1)));
        let before = hosts.listed();
        hosts.set("default.web-1", HostKey::Presence, Some(heartbeat(2)));
        let at = |l: &BTreeMap<Token, Arc<HostRecord>>| {
            l.values()
                .next()
                .and_then(|r| r.presence.as_ref().map(|p| p.heartbeat_at_ms))
        };
        assert_eq!((at(&before), at(&hosts.listed())), (Some(1), Some(2)));
    }

    #[test]
    fn late_heartbeat_is_stale() {
        let p = pb::Presence {
            heartbeat_at_ms: 10_000,
            heartbeat_interval_ms: 2000,
            ..Default::default()
        };
        assert_eq!(HostState::of(Some(&p), 11_000), HostState::Online);
        assert_eq!(HostState::of(Some(&p), 20_000), HostState::Stale);
        assert_eq!(HostState::of(None, 20_000), HostState::Offline);
    }

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!(HostState::Online.to_string(), "online");
        assert_eq!(HostState::Stale.as_str(), "stale");
        assert_eq!(HostState::Offline.as_str(), "offline");
        assert_eq!(HostState::Unverified.as_str(), "unverified");
    }
}
