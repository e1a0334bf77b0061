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
mod probe;
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
use crate::relay::ssh::{SshTarget, TargetState};
use crate::{connection, dispatch, provision, recovery};

/// First and longest wait between two connection attempts to a target.
const RECONNECT_FIRST: Duration = Duration::from_secs(1);
const RECONNECT_MAX: Duration = Duration::from_secs(60);
/// How long the last writes at shutdown (presence removal, audit) may take per target.
const FAREWELL_LIMIT: Duration = Duration::from_secs(5);

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
    let mesh = provision::provision(&js, &config.agent).await?;

    let mut served = JoinSet::new();
    for target in &config.targets {
        let ssh = Arc::new(SshTarget::new(
            target.ssh.clone(),
            user.clone(),
            config.relay_id.clone(),
        ));
        let node = Arc::new(Node::new(
            config.node_config(target),
            instance.clone(),
            client.clone(),
            &mesh,
            shutdown.clone(),
            record_key.clone(),
            Executor::Ssh(Arc::clone(&ssh)),
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
    let _ = tokio::time::timeout(FAREWELL_LIMIT, client.flush()).await;
    info!(user = %user, "relay stopped");
    Ok(())
}

/// Serves one target: requests until shutdown (then drains its jobs), while its connection
/// is watched and its presence written only while the master is up.
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
    dispatch::serve(Arc::clone(&node), subscriptions).await;
    watch_stop.cancel();
    let _ = watcher.await;
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

/// Keeps the target's master connection up: connects with backoff, records why it is down
/// in the target's fact pack, beats while it is up and withdraws the heartbeat when it goes.
async fn watch_connection(
    node: Arc<Node>,
    ssh: Arc<SshTarget>,
    heartbeat: Arc<Heartbeat>,
    stop: CancellationToken,
) {
    let interval = node.config.heartbeat_interval();
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
    let mut shown: Option<String> = None;
    loop {
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = ssh.connect() => connected,
        };
        if connected.is_err() {
            record_state(&node, &ssh, &mut shown).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(backoff.next_delay()) => continue,
            }
        }
        backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_MAX);
        // Facts first: a target that shows online can be selected by its facts.
        record_state(&node, &ssh, &mut shown).await;
        let mut alive = true;
        while alive {
            if let Err(e) = heartbeat.beat().await {
                warn!(error = %e, "heartbeat failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sleep(interval) => {}
            }
            alive = ssh.check().await;
        }
        if let Err(e) = heartbeat.withdraw().await {
            warn!(error = %e, "removing the presence key failed");
        }
        record_state(&node, &ssh, &mut shown).await;
    }
}

/// Rewrites the target's fact pack when its state changed since `shown` (a probe while
/// online, the reason while offline).
async fn record_state(node: &Node, ssh: &SshTarget, shown: &mut Option<String>) {
    let now = ssh.state().describe();
    if shown.as_deref() == Some(now.as_str()) {
        return;
    }
    match node.facts.refresh().await {
        Ok(_) => *shown = Some(now),
        Err(e) => warn!(error = %e, "storing the target's fact pack failed"),
    }
}
