//! The revocation list as this replica sees it: a copy of `mesh_revoked` kept current by a
//! watch, so a token check costs no NATS round trip and a revocation written by any replica is
//! seen by every replica as soon as NATS delivers it. While NATS is away the copy is trusted for
//! a bounded staleness (`revocation_max_staleness_secs`), then tokens are refused until it is
//! current again (docs/security.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use execmesh_proto::jetstream::REVOKED_BUCKET;
use execmesh_proto::pb;
use execmesh_runtime::backoff::Backoff;

use crate::core::consumers::WatchFor;
use crate::core::mesh::{KvChange, Mesh};
use crate::core::token_store::{Store, StoreError};

/// Default of `revocation_max_staleness_secs`: how long a copy that can no longer be kept
/// current is trusted.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_secs(60);
/// How often the copy is confirmed current while the connection is up.
const TICK: Duration = Duration::from_millis(250);
/// How long the gateway waits at start for the first complete copy before serving.
const FIRST_LOAD: Duration = Duration::from_secs(10);
/// How long a new watch may take to deliver the list before it is opened again (the records
/// it was told of may have expired before it began).
const CATCH_UP: Duration = Duration::from_secs(5);
/// Entries beyond which expired tokens are swept from the copy.
const SWEEP_AT: usize = 10_000;

/// Why the revocations in force cannot be listed: the reason NATS gave.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unlisted(String);

/// The revocations in force, read from `mesh_revoked` itself (not this replica's copy), by
/// token id; expired ones, and records the gateway did not sign, are left out. Read through
/// [`Mesh::kv_current`], its consumer counted like any call's ([`crate::core::consumers`]).
pub async fn in_force(mesh: &Mesh) -> Result<Vec<pb::Revocation>, Unlisted> {
    let now_secs = execmesh_proto::now_ms() / 1000;
    let mut revocations: Vec<pb::Revocation> = mesh
        .kv_current(REVOKED_BUCKET, ">", WatchFor::Call("revocations"))
        .await
        .map_err(|e| Unlisted(e.to_string()))?
        .into_iter()
        // Expired keys leave an empty marker behind.
        .filter(KvChange::is_value)
        .filter_map(|change| {
            let expires_at = serde_json::from_slice::<u64>(&change.value).ok()?;
            (expires_at > now_secs).then(|| pb::Revocation {
                token_id: change.key,
                expires_at_ms: expires_at * 1000,
                revoked_at_ms: change.stored_at_ms,
            })
        })
        .collect();
    revocations.sort_by(|a, b| a.token_id.cmp(&b.token_id));
    Ok(revocations)
}

/// Why the revocation list cannot be consulted: the caller refuses the token rather than risk
/// honouring a revoked one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RevocationUnknown {
    /// The list has not been read since the gateway started.
    #[error("the revocation list has not been read yet")]
    NotLoaded,
    /// The copy was last known current `age` ago, longer than the configured staleness.
    #[error(
        "the revocation list was last confirmed current {}s ago (NATS unreachable), more than the {}s this gateway accepts",
        age.as_secs(),
        max.as_secs()
    )]
    Stale { age: Duration, max: Duration },
}

/// Answers "is this token revoked?" for one replica.
pub struct Revocations {
    store: Store,
    /// The longest time since the copy was last known current for which it is trusted.
    max_staleness: Duration,
    /// jti → its expiry (unix seconds), `None` when the record does not say (any record counts).
    revoked: Mutex<HashMap<String, Option<u64>>>,
    /// When the copy was last known current; `None` before the first complete read.
    current_at: Mutex<Option<Instant>>,
}

// === impl Revocations ===

impl Revocations {
    /// A list that trusts its copy for `max_staleness` once it cannot be kept current. Nothing
    /// is known until [`Revocations::watch`] has read the list once.
    pub fn new(store: Store, max_staleness: Duration) -> Self {
        Self {
            store,
            max_staleness,
            revoked: Mutex::new(HashMap::new()),
            current_at: Mutex::new(None),
        }
    }

    /// Starts keeping the copy current on a task until `shutdown`, and waits (a bounded time)
    /// for the first complete read, so a gateway that starts serving knows its list.
    pub async fn start(self: &Arc<Self>, client: async_nats::Client, shutdown: CancellationToken) {
        let (loaded, mut first) = watch::channel(false);
        tokio::spawn(self.clone().watch(client, loaded, shutdown));
        if tokio::time::timeout(FIRST_LOAD, first.wait_for(|loaded| *loaded))
            .await
            .is_err()
        {
            warn!(
                wait = ?FIRST_LOAD,
                "the revocation list is not loaded yet; tokens are refused until it is"
            );
        }
    }

    /// Whether the token `jti` is revoked, from the copy; an error when the copy cannot be
    /// trusted (see [`RevocationUnknown`]).
    pub fn is_revoked(&self, jti: &str) -> Result<bool, RevocationUnknown> {
        if self.revoked.lock().is_ok_and(|r| r.contains_key(jti)) {
            return Ok(true);
        }
        let current_at = self.current_at.lock().ok().and_then(|at| *at);
        match current_at {
            None => Err(RevocationUnknown::NotLoaded),
            Some(at) if at.elapsed() > self.max_staleness => Err(RevocationUnknown::Stale {
                age: at.elapsed(),
                max: self.max_staleness,
            }),
            Some(_) => Ok(false),
        }
    }

    /// Revokes `jti` (valid until `expires_at`) for every replica; this one refuses it at once.
    pub async fn revoke(&self, jti: &str, expires_at: u64) -> Result<(), StoreError> {
        self.store.revoke_token(jti, expires_at).await?;
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.insert(jti.to_string(), Some(expires_at));
        }
        Ok(())
    }

    /// Follows the list until `shutdown`: every record is added to the copy; the copy is
    /// confirmed current every [`TICK`] while the watch has caught up and the connection is up.
    /// A watch that fails is opened again (with backoff), reading the list from its start.
    async fn watch(
        self: Arc<Self>,
        client: async_nats::Client,
        loaded: watch::Sender<bool>,
        shutdown: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
        loop {
            let (mut changes, mut caught_up) = match self.store.watch_revoked().await {
                Ok((watch, empty)) => (watch.changes, empty),
                Err(e) => {
                    debug!(error = %e, "cannot watch the revocation list; retrying");
                    if backoff.wait(&shutdown).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            let mut tick = tokio::time::interval(TICK);
            let opened = Instant::now();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    change = changes.next() => match change {
                        Some(Ok(entry)) => {
                            backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
                            caught_up |= entry.pending == 0;
                            self.add(&entry);
                        }
                        Some(Err(e)) => {
                            debug!(error = %e, "the revocation watch failed; opening it again");
                            break;
                        }
                        None => break,
                    },
                    _ = tick.tick() => {}
                }
                if !caught_up && opened.elapsed() > CATCH_UP {
                    debug!("the revocation watch did not catch up; opening it again");
                    break;
                }
                if caught_up && client.connection_state() == State::Connected {
                    self.confirm_current();
                    if !*loaded.borrow() {
                        info!("revocation list loaded");
                        loaded.send_replace(true);
                    }
                }
            }
            if backoff.wait(&shutdown).await.is_err() {
                return;
            }
        }
    }

    /// Adds one record of the list to the copy: any record under a token's key counts, a
    /// delete too (see [`crate::core::token_store`]).
    fn add(&self, entry: &KvChange) {
        let expires_at = serde_json::from_slice::<u64>(&entry.value).ok();
        let Ok(mut revoked) = self.revoked.lock() else {
            return;
        };
        if revoked.len() >= SWEEP_AT {
            let now = execmesh_proto::now_ms() / 1000;
            revoked.retain(|_, expires| expires.is_none_or(|at| at >= now));
        }
        // A delete or expiry marker after the record keeps its expiry, so the sweep can drop
        // it once the token is expired anyway.
        revoked
            .entry(entry.key.clone())
            .and_modify(|known| *known = known.or(expires_at))
            .or_insert(expires_at);
    }

    fn confirm_current(&self) {
        if let Ok(mut at) = self.current_at.lock() {
            *at = Some(Instant::now());
        }
    }
}
