//! A host's state as the gateway sees it: from its agent's signed heartbeat, or unverified when
//! its records are not signed by its agent's key.

use std::fmt;

use execmesh_proto::pb;

use crate::core::mesh::HostRecord;

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
