//! The agent instance last heard from on each host, named in the requests sent there so that an agent can start a job before storing its status.
//!
//! An agent acts on a `run` request before its status is stored only when the request names
//! the agent's own instance: such a request was signed after the instance started, so the
//! instance's nonce cache refuses any replay of it. The gateway learns the instance from the
//! agent's replies (every job status names it); after an agent restart the first request names
//! the old instance, takes the stored-first path, and its reply teaches the new one. A wrong
//! entry (a forged reply, say) can only make an agent take the slower path.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use execmesh_proto::Token;

/// Agent instance per host, as last reported by the host's agent.
#[derive(Debug, Default)]
pub struct AgentInstances {
    by_host: RwLock<HashMap<Token, String>>,
}

// === impl AgentInstances ===

impl AgentInstances {
    /// The instance last heard from on `host`; empty if none yet.
    pub fn of(&self, host: &Token) -> String {
        let by_host = self.by_host.read().unwrap_or_else(PoisonError::into_inner);
        by_host.get(host).cloned().unwrap_or_default()
    }

    /// Remembers that `instance` answered for `host` (empty: nothing learnt).
    pub fn learn(&self, host: &Token, instance: &str) {
        if instance.is_empty() {
            return;
        }
        let known = self.by_host.read().unwrap_or_else(PoisonError::into_inner);
        if known.get(host).is_some_and(|i| i == instance) {
            return;
        }
        drop(known);
        let mut by_host = self.by_host.write().unwrap_or_else(PoisonError::into_inner);
        by_host.insert(host.clone(), instance.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_instance_heard_from_is_named() {
        let instances = AgentInstances::default();
        let host = Token::parse("host id", "web-1").expect("token");
        assert_eq!(instances.of(&host), "");
        instances.learn(&host, "00aa");
        instances.learn(&host, "");
        assert_eq!(instances.of(&host), "00aa");
        instances.learn(&host, "00bb");
        assert_eq!(instances.of(&host), "00bb");
    }
}
