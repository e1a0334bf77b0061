//! Keeps this replica's host directory ([`crate::core::directory`]) current: one watch of
//! `mesh_facts` and one of `mesh_presence`, opened again, and the directory read from the start,
//! when either fails or an identity is removed or changed (a record accepted may be refused
//! now). Identities only added (a host enrolled) make only the records ignored so far be read
//! and checked again.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::BoxStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use execmesh_proto::identities::Identities;
use execmesh_proto::jetstream::{FACTS_BUCKET, PRESENCE_BUCKET};
use execmesh_proto::subject;
use execmesh_runtime::backoff::Backoff;

use crate::core::consumers::WatchFor;
use crate::core::directory::Taken;
use crate::core::hosts::{HostEntries, HostKey};
use crate::core::mesh::{KvChange, Mesh, MeshError, WatchFrom, last_of_change};

/// How long new watches may take to deliver every stored record before they are opened again.
const CATCH_UP: Duration = Duration::from_secs(120);
/// How often the identities in force are compared with those the records were checked against.
const IDENTITIES_TICK: Duration = Duration::from_secs(1);

/// Why the directory is read again from the start.
#[derive(Debug, thiserror::Error)]
enum Reopen {
    #[error(transparent)]
    Watch(#[from] MeshError),
    #[error("a watch ended")]
    Ended,
    #[error("the watches did not deliver every stored record within {0:?}")]
    CatchUp(Duration),
    #[error("the identities in force changed")]
    Identities,
}

type Changes = BoxStream<'static, Result<KvChange, MeshError>>;

/// Keeps `mesh.directory` current until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: CancellationToken) {
    let mut backoff = retry();
    let mut loaded_once = false;
    loop {
        let ended = follow(&mesh, &shutdown, &mut loaded_once, &mut backoff).await;
        mesh.directory.invalidate();
        match ended {
            Ok(()) => return,
            // Opened again at once: a changed file is not a failure.
            Err(Reopen::Identities) => {
                info!("the identities changed: the host directory is read again");
                continue;
            }
            Err(e) => debug!(error = %e, "the host directory is read again"),
        }
        if backoff.wait(&shutdown).await.is_err() {
            return;
        }
    }
}

/// Reads both buckets into a new directory, installs it, then takes every change until a
/// watch ends, the identities change or `shutdown` (`Ok`).
async fn follow(
    mesh: &Mesh,
    shutdown: &CancellationToken,
    loaded_once: &mut bool,
    backoff: &mut Backoff,
) -> Result<(), Reopen> {
    let mut trusted = identities_in_force(mesh);
    let filter = format!("{}.>", mesh.tenant);
    let open = |bucket, purpose| {
        mesh.watch_kv(
            bucket,
            &filter,
            WatchFrom::LastPerKey,
            WatchFor::Upkeep(purpose),
        )
    };
    let (facts, presence) = tokio::try_join!(
        open(FACTS_BUCKET, "directory-facts"),
        open(PRESENCE_BUCKET, "directory-presence")
    )?;
    let (mut facts_changes, mut presence_changes) = (facts.changes, presence.changes);
    let mut hosts = HostEntries::default();
    let mut taken = Taken::default();
    let (mut facts_loaded, mut presence_loaded) = (facts.initial == 0, presence.initial == 0);
    let deadline = Instant::now() + CATCH_UP;
    while !(facts_loaded && presence_loaded) {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep_until(deadline) => return Err(Reopen::CatchUp(CATCH_UP)),
            change = next(&mut facts_changes), if !facts_loaded => {
                facts_loaded = load(&mut hosts, &mut taken, HostKey::Facts, change?);
            }
            change = next(&mut presence_changes), if !presence_loaded => {
                presence_loaded = load(&mut hosts, &mut taken, HostKey::Presence, change?);
            }
        }
    }
    let count = hosts.listed().len();
    mesh.directory.install(hosts, taken, trusted.clone());
    *backoff = retry();
    if !*loaded_once {
        info!(hosts = count, "host directory loaded");
        *loaded_once = true;
    }
    let mut identities = tokio::time::interval(IDENTITIES_TICK);
    loop {
        let (key, change) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            change = next(&mut facts_changes) => (HostKey::Facts, change?),
            change = next(&mut presence_changes) => (HostKey::Presence, change?),
            _ = identities.tick() => {
                let now = identities_in_force(mesh);
                match (&trusted, &now) {
                    (Some(before), Some(now)) if !Arc::ptr_eq(before, now) => {
                        if !now.extend(before) {
                            return Err(Reopen::Identities);
                        }
                        // Only added: only the records ignored so far can be accepted now.
                        recheck_rejected(mesh).await?;
                        mesh.directory.checked_against(Some(now.clone()));
                        trusted = Some(now.clone());
                    }
                    _ => {}
                }
                continue;
            }
        };
        let (kv_key, seq) = (change.key.clone(), change.revision);
        mesh.directory
            .take(key, &kv_key, seq, last_of_change(change));
    }
}

/// Takes one record into a directory being loaded; whether its watch has now delivered every
/// record stored when it opened.
fn load(hosts: &mut HostEntries, taken: &mut Taken, key: HostKey, change: KvChange) -> bool {
    let loaded = change.pending == 0;
    taken.took(key, change.revision);
    let (kv_key, seq) = (change.key.clone(), change.revision);
    hosts.set_at(&kv_key, key, seq, last_of_change(change));
    loaded
}

/// Pauses before the watches are opened again after a failure: 250 ms doubling to 5 s.
fn retry() -> Backoff {
    Backoff::new(Duration::from_millis(250), Duration::from_secs(5))
}

/// The next change of a watch; its end is an error (a watch of a bucket does not end by itself).
async fn next(changes: &mut Changes) -> Result<KvChange, Reopen> {
    Ok(changes.next().await.ok_or(Reopen::Ended)??)
}

/// The identities records are checked against now (a reload makes new ones).
fn identities_in_force(mesh: &Mesh) -> Option<Arc<Identities>> {
    mesh.records.trust().map(|trust| trust.current())
}

/// Reads again, and checks again, every key whose last record the directory ignored.
async fn recheck_rejected(mesh: &Mesh) -> Result<(), MeshError> {
    for (host, key) in mesh.directory.rejected() {
        let bucket = match key {
            HostKey::Facts => FACTS_BUCKET,
            HostKey::Presence => PRESENCE_BUCKET,
        };
        let kv_key = subject::host_key(&mesh.tenant, &host);
        let (seq, last) = mesh.kv_last(bucket, &kv_key).await?;
        mesh.directory.recheck(key, &kv_key, seq, last);
    }
    Ok(())
}
