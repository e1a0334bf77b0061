//! Relay mode (`execmesh-node-agent relay`): one user's personal executor for SSH targets that run no agent, with the SSH keys never leaving the user's machine.
//!
//! Each target is served by a [`Node`] of its own, exactly as an agent serves its host —
//! the same admission (signatures, tier cap, CommandGuard), job pipeline, output chunks in
//! MESH_OUT, statuses in `mesh_jobs`, audit events and recovery — except that its executor is
//! the target's SSH master connection instead of local children, and that it subscribes only
//! to its user's subjects (`…host.<target>.exec.<user>`, `…host.<target>.ctl.<user>`), which
//! is all the NATS identity `relay-<user>` allows. A target is online (its heartbeat written)
//! only while its master connection is alive; otherwise its fact pack says why it is not.

pub mod config;
mod control;
pub mod files;
mod probe;
pub mod sftp;
pub mod ssh;

use std::sync::Arc;
use std::time::Duration;

use execmesh_runtime::backoff::Backoff;
use tokio::task::JoinSet;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, info, info_span, warn};

pub use config::RelayConfig;

use crate::error::AgentError;
use crate::executor::Executor;
use crate::node::Node;
use crate::presence::Heartbeat;
use crate::relay::files::RemoteFiles;
use crate::relay::ssh::{SshTarget, TargetState};
use crate::{connection, dispatch, provision, recovery};

/// First and longest wait between two connection attempts to a target.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How long the last writes at shutdown (presence removal, audit) may take per target.
const FAREWELL_LIMIT: Duration = Duration::from_secs(5);
/// Longest one write of the target's presence or fact pack may take.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// Runs the relay until `shutdown`, then drains every target like an agent drains its host.
pub async fn run(config: RelayConfig, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.agent.validate()?;
    let instance = format!("{:016x}", rand::random::<u64>());
    let started_at_ms = execmesh_proto::now_ms();
    let user = config.user.clone();
    info!(user = %user, tenant = %config.agent.tenant, targets = config.targets.len(),
          instance = %instance, "relay starting");
    let record_key = crate::record_key(&config.agent)?;
    let client = connection::connect_relay(&config.agent, &user).await?;
    let js = async_nats::jetstream::new(client.clone());
    let Some(mesh) = provision::provision_once_placed(&js, &config.agent, &shutdown).await? else {
        info!("stopped before the mesh's streams could be placed");
        return Ok(());
    };

    let control_dir = control::directory(user.as_str(), &config.relay_id);
    control::prepare(&control_dir)
        .await
        .map_err(|source| AgentError::ControlDir {
            path: control_dir.clone(),
            source,
        })?;

    let mut served = JoinSet::new();
    for target in &config.targets {
        let ssh = Arc::new(SshTarget::new(
            target.ssh.clone(),
            user.clone(),
            config.relay_id.clone(),
            control_dir.clone(),
        ));
        let node_config = config.node_config(target);
        let files = Arc::new(RemoteFiles::new(
            Arc::clone(&ssh),
            node_config.file_roots.clone(),
            node_config.file_limits(),
            target.grep_max_bytes,
        ));
        let node = Arc::new(Node::new(
            node_config,
            instance.clone(),
            client.clone(),
            &mesh,
            shutdown.clone(),
            record_key.clone(),
            Executor::Ssh(Arc::clone(&ssh), files),
        ));
        let recovered = recovery::recover(&node).await?;
        if recovered > 0 {
            info!(target = %ssh.id(), recovered, "marked the jobs of an earlier run lost");
        }
        let subscriptions = dispatch::subscribe(&node, Some(&user)).await?;
        let heartbeat = Arc::new(Heartbeat::new(&node, mesh.presence.clone(), started_at_ms));
        let span = info_span!("target", target = %ssh.id(), user = %user);
        served.spawn(serve_target(node, ssh, heartbeat, subscriptions).instrument(span));
    }
    info!(user = %user, "relay serving its targets");
    while served.join_next().await.is_some() {}
    // Every master is closed: the directory is empty unless a close failed (then it stays for
    // the next start to reap).
    let _ = std::fs::remove_dir(&control_dir);
    let _ = tokio::time::timeout(FAREWELL_LIMIT, client.flush()).await;
    info!(user = %user, "relay stopped");
    Ok(())
}

/// Serves one target: requests until shutdown (then drains its jobs), while its connection
/// is watched (presence written only while the master is up) and its facts kept.
async fn serve_target(
    node: Arc<Node>,
    ssh: Arc<SshTarget>,
    heartbeat: Arc<Heartbeat>,
    subscriptions: dispatch::Subscriptions,
) {
    let watch_stop = CancellationToken::new();
    let watcher = tokio::spawn(
        watch_connection(
            Arc::clone(&node),
            Arc::clone(&ssh),
            Arc::clone(&heartbeat),
            watch_stop.clone(),
        )
        .in_current_span(),
    );
    let keeper = tokio::spawn(
        keep_facts(Arc::clone(&node), Arc::clone(&ssh), watch_stop.clone()).in_current_span(),
    );
    dispatch::serve(Arc::clone(&node), subscriptions).await;
    watch_stop.cancel();
    let _ = watcher.await;
    let _ = keeper.await;
    if matches!(ssh.state(), TargetState::Online) {
        match tokio::time::timeout(FAREWELL_LIMIT, heartbeat.withdraw()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "removing the presence key failed"),
            Err(_) => warn!("removing the presence key timed out"),
        }
    }
    node.audit.close(Duration::from_secs(2)).await;
    ssh.close().await;
}

/// Keeps the target's master connection up: connects with backoff, and while it is up beats
/// and checks it every heartbeat interval. Nothing here waits on the target's shell: the
/// target shows online as soon as its master is up, whatever its login shell does (the facts
/// probe runs apart, in [`keep_facts`]).
async fn watch_connection(
    node: Arc<Node>,
    ssh: Arc<SshTarget>,
    heartbeat: Arc<Heartbeat>,
    stop: CancellationToken,
) {
    let interval = node.config.heartbeat_interval();
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    loop {
        // Bounded inside (ConnectTimeout and an overall limit).
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = ssh.connect() => connected,
        };
        if connected.is_err() {
            store_identity(&node).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(backoff.next_delay()) => continue,
            }
        }
        backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        // The labels first (one bounded write), so that a target that shows online can be
        // selected; then the heartbeat.
        store_identity(&node).await;
        let mut alive = true;
        while alive {
            match tokio::time::timeout(WRITE_LIMIT, heartbeat.beat()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "heartbeat failed"),
                Err(_) => warn!("heartbeat timed out"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(interval) => {}
            }
            alive = ssh.check().await;
        }
        match tokio::time::timeout(WRITE_LIMIT, heartbeat.withdraw()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "removing the presence key failed"),
            Err(_) => warn!("removing the presence key timed out"),
        }
        store_identity(&node).await;
    }
}

/// Writes what the relay knows of the target without asking it (identity, user, state),
/// within [`WRITE_LIMIT`].
async fn store_identity(node: &Node) {
    match tokio::time::timeout(WRITE_LIMIT, node.facts.store_identity()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %e, "storing the target's fact pack failed"),
        Err(_) => warn!("storing the target's fact pack timed out"),
    }
}

/// Probes the target's facts while it is online: at once when it comes up, then every facts
/// interval; a probe that fails or does not answer (each is bounded by the target's remote
/// timeout) is retried with backoff. Offline, it waits for the next state change.
async fn keep_facts(node: Arc<Node>, ssh: Arc<SshTarget>, stop: CancellationToken) {
    let mut states = ssh.subscribe();
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    loop {
        let online = matches!(*states.borrow_and_update(), TargetState::Online);
        let wait = if !online {
            None
        } else {
            let probe = node.facts.refresh();
            match tokio::time::timeout(node.config.facts_interval(), probe).await {
                Ok(Ok(_)) => {
                    backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
                    Some(node.config.facts_interval())
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "refreshing the target's facts failed; retrying");
                    Some(backoff.next_delay())
                }
                Err(_) => {
                    warn!("refreshing the target's facts timed out; retrying");
                    Some(backoff.next_delay())
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = states.changed() => if changed.is_err() { return },
            _ = sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
        }
    }
}
