//! Names and bounds the JetStream consumers this gateway replica creates.
//!
//! Every consumer a gateway makes is an ordered (ephemeral) push consumer: KV watches, the
//! streamed read of more keys than a direct get returns, a call's wait for a job's end. Each is
//! named `<replica>-<purpose>-<n>`, so `nats consumer ls` tells whose and what it is, and the
//! server's per-stream consumer limit (1,000 by default on 2.15) can be planned: a replica
//! holds its few upkeep watches, at most [`Consumers::max_watches`] watches for admin and
//! console clients (one more is refused, saying so) and at most [`Consumers::max_call_watches`]
//! for calls (one more waits for a slot, up to [`CALL_SLOT_WAIT`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Client watches a replica holds at once unless `max_watches` says.
pub const DEFAULT_MAX_WATCHES: usize = 64;
/// Call watches a replica holds at once unless `max_call_watches` says.
pub const DEFAULT_MAX_CALL_WATCHES: usize = 256;
/// How long a call waits for a free call watch before it is answered that the replica is busy.
pub const CALL_SLOT_WAIT: Duration = Duration::from_secs(10);

/// Who a consumer is for, which decides its bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFor {
    /// The replica's own upkeep, one each for its life (departing hosts, the revocation list,
    /// the pending-approvals gauge): a fixed number, not counted.
    Upkeep(&'static str),
    /// An admin, console or MCP client (a task subscription) following changes for as long as
    /// it stays connected: at most `max_watches`; one more is refused.
    Client(&'static str),
    /// One call's short read or wait: at most `max_call_watches`; one more waits for a slot.
    Call(&'static str),
}

impl WatchFor {
    fn purpose(self) -> &'static str {
        match self {
            Self::Upkeep(p) | Self::Client(p) | Self::Call(p) => p,
        }
    }
}

/// Why no consumer could be made.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WatchRefused {
    #[error(
        "this gateway replica already serves {limit} watches (`max_watches`); close one or \
         raise the limit"
    )]
    ClientsFull { limit: usize },
    #[error(
        "this gateway replica is waiting on {limit} reads and job ends (`max_call_watches`) and \
         none freed up within {waited:?}; try again shortly"
    )]
    CallsFull { limit: usize, waited: Duration },
}

/// A name for a new consumer and, for counted ones, its slot: the consumer's stream holds the
/// slot until it is dropped.
#[derive(Debug)]
pub struct Admitted {
    pub name: String,
    pub slot: Option<OwnedSemaphorePermit>,
}

/// The replica's consumer names and limits.
#[derive(Debug)]
pub struct Consumers {
    /// This replica's id, the first part of every consumer name: `gw-<8 hex digits>`.
    pub replica: String,
    next: AtomicU64,
    clients: Arc<Semaphore>,
    calls: Arc<Semaphore>,
    pub max_watches: usize,
    pub max_call_watches: usize,
}

// === impl Consumers ===

impl Consumers {
    pub fn new(max_watches: usize, max_call_watches: usize) -> Self {
        Self {
            replica: format!("gw-{:08x}", rand::random::<u32>()),
            next: AtomicU64::new(1),
            clients: Arc::new(Semaphore::new(max_watches)),
            calls: Arc::new(Semaphore::new(max_call_watches.max(1))),
            max_watches,
            max_call_watches: max_call_watches.max(1),
        }
    }

    /// A name and, for a counted consumer, a slot; refused when the kind is at its limit.
    pub async fn admit(&self, watch: WatchFor) -> Result<Admitted, WatchRefused> {
        let slot = match watch {
            WatchFor::Upkeep(_) => None,
            WatchFor::Client(_) => {
                Some(Arc::clone(&self.clients).try_acquire_owned().map_err(|_| {
                    WatchRefused::ClientsFull {
                        limit: self.max_watches,
                    }
                })?)
            }
            WatchFor::Call(_) => Some(
                tokio::time::timeout(CALL_SLOT_WAIT, Arc::clone(&self.calls).acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .ok_or(WatchRefused::CallsFull {
                        limit: self.max_call_watches,
                        waited: CALL_SLOT_WAIT,
                    })?,
            ),
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            name: format!("{}-{}-{n}", self.replica, watch.purpose()),
            slot,
        })
    }
}

impl Default for Consumers {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_WATCHES, DEFAULT_MAX_CALL_WATCHES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn names_say_whose_and_what_and_each_is_new() {
        let consumers = Consumers::default();
        let a = consumers
            .admit(WatchFor::Upkeep("departures"))
            .await
            .unwrap();
        let b = consumers.admit(WatchFor::Call("job-end")).await.unwrap();
        assert!(
            a.name
                .starts_with(&format!("{}-departures-", consumers.replica)),
            "{}",
            a.name
        );
        assert!(
            b.name
                .starts_with(&format!("{}-job-end-", consumers.replica)),
            "{}",
            b.name
        );
        assert_ne!(a.name, b.name);
        // NATS consumer names may not hold `.`, `*`, `>` or whitespace.
        assert!(!a.name.contains(['.', '*', '>', ' ']), "{}", a.name);
        assert!(a.slot.is_none() && b.slot.is_some());
    }

    #[tokio::test]
    async fn a_client_watch_past_the_limit_is_refused_until_one_closes() {
        let consumers = Consumers::new(2, 8);
        let first = consumers.admit(WatchFor::Client("hosts")).await.unwrap();
        let _second = consumers.admit(WatchFor::Client("hosts")).await.unwrap();
        assert_eq!(consumers.clients.available_permits(), 0);
        let refused = consumers
            .admit(WatchFor::Client("hosts"))
            .await
            .unwrap_err();
        assert_eq!(refused, WatchRefused::ClientsFull { limit: 2 });
        assert!(refused.to_string().contains("max_watches"), "{refused}");
        // Upkeep is not counted against clients.
        consumers.admit(WatchFor::Upkeep("revoked")).await.unwrap();
        drop(first);
        consumers.admit(WatchFor::Client("hosts")).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_past_the_limit_waits_for_a_slot_then_gives_up_saying_why() {
        let consumers = Arc::new(Consumers::new(1, 1));
        let held = consumers.admit(WatchFor::Call("job-end")).await.unwrap();
        // A slot freed while waiting is taken.
        let waiter = tokio::spawn({
            let consumers = Arc::clone(&consumers);
            async move {
                consumers
                    .admit(WatchFor::Call("job-end"))
                    .await
                    .map(|a| a.name)
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        let taken = waiter.await.unwrap().unwrap();
        assert!(taken.contains("job-end"));
        // None freed: refused after the wait.
        let _held = consumers.admit(WatchFor::Call("job-end")).await.unwrap();
        let refused = consumers
            .admit(WatchFor::Call("job-end"))
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            WatchRefused::CallsFull {
                limit: 1,
                waited: CALL_SLOT_WAIT
            }
        );
    }
}
