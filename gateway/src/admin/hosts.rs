//! HostsService: the fleet as the mesh knows it (registrations in `mesh_facts`, heartbeats in
//! `mesh_presence`), and its presence changes as they happen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::debug;

use execmesh_proto::jetstream::PRESENCE_BUCKET;
use execmesh_proto::{Token, pb, subject};
use prost::Message as _;

use super::{Admin, AdminStream, error};
use crate::core::consumers::WatchFor;
use crate::core::fanout::{Reach, Targets};
use crate::core::hosts::{self, HostRecord, HostState, MAX_PAGE_HOSTS};
use crate::core::mesh::{KvChange, MeshError, WatchFrom};
use crate::core::selector::{Candidate, Selector};

/// How often a watch re-checks heartbeats for hosts turning stale (no KV change marks that).
const STALE_CHECK: Duration = Duration::from_secs(1);

/// The HostsService implementation.
pub struct HostsApi {
    admin: Admin,
}

impl HostsApi {
    pub fn new(admin: Admin) -> Self {
        Self { admin }
    }
}

#[tonic::async_trait]
impl pb::hosts_service_server::HostsService for HostsApi {
    async fn list(
        &self,
        request: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        self.admin
            .unary("HostsService.List", request, |_, req| async move {
                let state = &self.admin.state;
                let selector = non_empty_or_all(&req.selector);
                // Operators see every host: the policy's reach limits what users may run, not
                // what the admin API shows.
                let targets = Targets::resolve(
                    &state.mesh,
                    selector,
                    &state.config.groups,
                    &Reach::everything(),
                    usize::MAX,
                )
                .await
                .map_err(error::resolve)?;
                let after = match req.page_token.as_str() {
                    "" => None,
                    token => Some(Token::parse("page token", token).map_err(|_| {
                        Status::invalid_argument(format!(
                            "page_token {token:?} is not one a listing gave: pass \
                             `next_page_token` unchanged"
                        ))
                    })?),
                };
                let limit = match req.page_size as usize {
                    0 => usize::MAX,
                    size => size.min(MAX_PAGE_HOSTS),
                };
                let now = execmesh_proto::now_ms();
                // The counts are of every matching host; the page is what is sent.
                let states: Vec<pb::HostState> = targets
                    .hosts
                    .values()
                    .map(|r| host_state(r.presence.as_ref(), now))
                    .collect();
                let count = |s: pb::HostState| states.iter().filter(|t| **t == s).count() as u32;
                let (page, next) = hosts::page(&targets.hosts, after, limit);
                Ok(pb::ListHostsResponse {
                    online: count(pb::HostState::Online),
                    stale: count(pb::HostState::Stale),
                    offline: count(pb::HostState::Offline),
                    total: targets.hosts.len() as u32,
                    hosts: page.into_iter().map(|r| host(r, now)).collect(),
                    next_page_token: next.map(|t| t.to_string()).unwrap_or_default(),
                })
            })
            .await
    }

    async fn get(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::GetHostResponse>, Status> {
        self.admin
            .unary("HostsService.Get", request, |_, req| async move {
                let id = Token::parse("host id", &req.host)
                    .map_err(|e| error::bad_id("host id", &req.host, e))?;
                let record = self
                    .admin
                    .state
                    .mesh
                    .host(&id)
                    .await
                    .map_err(error::mesh)?
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "unknown host `{id}`: no agent has ever registered it; \
                             HostsService.List shows the known hosts"
                        ))
                    })?;
                Ok(pb::GetHostResponse {
                    host: Some(host(&record, execmesh_proto::now_ms())),
                })
            })
            .await
    }

    type WatchStream = AdminStream<pb::HostEvent>;

    async fn watch(
        &self,
        request: Request<pb::WatchHostsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.admin
            .unary("HostsService.Watch", request, |_, req| async move {
                let state = &self.admin.state;
                let selector =
                    Selector::parse(non_empty_or_all(&req.selector), &state.config.groups)
                        .map_err(|e| {
                            Status::invalid_argument(format!(
                                "bad selector `{}`: {e}",
                                req.selector
                            ))
                        })?;
                // The watch opens before the snapshot is read, so no change falls between them.
                // Heartbeats the host's agent did not sign are ignored, like in every read.
                let changes = state
                    .mesh
                    .watch_kv(
                        PRESENCE_BUCKET,
                        &format!("{}.>", state.mesh.tenant),
                        WatchFrom::New,
                        WatchFor::Client("hosts"),
                    )
                    .await
                    .map_err(error::mesh)?
                    .changes;
                let snapshot = state.mesh.hosts().await.map_err(error::mesh)?;
                let watcher = Watcher {
                    admin: self.admin.clone(),
                    selector,
                    hosts: snapshot,
                    states: BTreeMap::new(),
                };
                Ok(self
                    .admin
                    .stream(move |tx| watcher.run(changes, req.include_initial, tx)))
            })
            .await
    }
}

/// One watch's view of the fleet: every host's record and the state last reported for it.
struct Watcher {
    admin: Admin,
    selector: Selector,
    hosts: BTreeMap<Token, Arc<HostRecord>>,
    /// The state each host was last seen in (reported or not, whether it matched or not).
    states: BTreeMap<Token, pb::HostState>,
}

// === impl Watcher ===

impl Watcher {
    async fn run(
        mut self,
        mut changes: BoxStream<'static, Result<KvChange, MeshError>>,
        include_initial: bool,
        tx: mpsc::Sender<Result<pb::HostEvent, Status>>,
    ) {
        let now = execmesh_proto::now_ms();
        let ids: Vec<Token> = self.hosts.keys().cloned().collect();
        for id in ids {
            let state = self.state_now(&id, now);
            self.states.insert(id.clone(), state);
            if include_initial
                && let Some(event) = self.event(&id, state, pb::HostState::Unspecified, now, true)
                && tx.send(Ok(event)).await.is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(STALE_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let changed: Vec<Token> = tokio::select! {
                entry = changes.next() => match entry {
                    Some(Ok(entry)) => match self.apply(entry).await {
                        Some(id) => vec![id],
                        None => continue,
                    },
                    Some(Err(e)) => {
                        let _ = tx.send(Err(error::mesh(e))).await;
                        return;
                    }
                    None => {
                        let _ = tx
                            .send(Err(Status::unavailable(
                                "the presence watch ended (NATS connection lost?); watch again",
                            )))
                            .await;
                        return;
                    }
                },
                _ = tick.tick() => self.hosts.keys().cloned().collect(),
            };
            let now = execmesh_proto::now_ms();
            for id in changed {
                let state = self.state_now(&id, now);
                let previous = self
                    .states
                    .insert(id.clone(), state)
                    .unwrap_or(pb::HostState::Unspecified);
                if previous == state {
                    continue;
                }
                if let Some(event) = self.event(&id, state, previous, now, false)
                    && tx.send(Ok(event)).await.is_err()
                {
                    return;
                }
            }
        }
    }

    /// Applies one presence change to the host's record; returns its id.
    async fn apply(&mut self, entry: KvChange) -> Option<Token> {
        let (_, id) = subject::parse_host_key(&entry.key).ok()?;
        if entry.rejected.is_some() {
            // Not the host's agent's: no change at all.
            return None;
        }
        let departed = entry.departure();
        // A delete, a purge or a TTL expiry marker: the heartbeat is gone.
        let presence = entry
            .is_value()
            .then(|| pb::Presence::decode(entry.value).ok())
            .flatten();
        let coming_back = presence.is_some()
            && self
                .hosts
                .get(&id)
                .is_none_or(|r| r.presence.is_none() || r.facts.is_none());
        if coming_back {
            // A new or restarted agent registers (labels, platform) as it starts: read it again
            // so the selector sees its current labels.
            match self.admin.state.mesh.host(&id).await {
                Ok(Some(record)) => {
                    self.hosts.insert(id.clone(), Arc::new(record));
                }
                Ok(None) => {}
                Err(e) => debug!(host = %id, error = %e, "host registration not readable"),
            }
        }
        let record = Arc::make_mut(
            self.hosts
                .entry(id.clone())
                .or_insert_with(|| Arc::new(HostRecord::new(id.clone()))),
        );
        record.presence = presence;
        record.departed = departed;
        Some(id)
    }

    fn state_now(&self, id: &Token, now: u64) -> pb::HostState {
        host_state(self.hosts.get(id).and_then(|r| r.presence.as_ref()), now)
    }

    /// The event for `id` entering `state`, if the watch's selector matches it.
    fn event(
        &self,
        id: &Token,
        state: pb::HostState,
        previous: pb::HostState,
        now: u64,
        initial: bool,
    ) -> Option<pb::HostEvent> {
        let record = self.hosts.get(id)?;
        let candidate = Candidate {
            host: id.as_str(),
            facts: record.facts.as_ref(),
            state: HostState::of(record.presence.as_ref(), now),
        };
        if !self.selector.matches(&candidate) {
            return None;
        }
        Some(pb::HostEvent {
            host: id.to_string(),
            state: state as i32,
            previous: previous as i32,
            time_ms: now,
            detail: Some(host(record, now)),
            initial,
        })
    }
}

/// A host as the admin API shows it.
pub fn host(record: &HostRecord, now: u64) -> pb::Host {
    pb::Host {
        host: record.host.to_string(),
        state: host_state(record.presence.as_ref(), now) as i32,
        labels: record
            .facts
            .as_ref()
            .map(|f| f.labels.clone())
            .unwrap_or_default(),
        last_heartbeat_ms: record.last_heartbeat_ms().unwrap_or(0),
        presence: record.presence.clone(),
        facts: record.facts.clone(),
    }
}

/// The state of a host from its heartbeat, by the same rule as the MCP `hosts` tool.
fn host_state(presence: Option<&pb::Presence>, now: u64) -> pb::HostState {
    match HostState::of(presence, now) {
        HostState::Online => pb::HostState::Online,
        HostState::Stale => pb::HostState::Stale,
        HostState::Offline | HostState::Unverified => pb::HostState::Offline,
    }
}

fn non_empty_or_all(selector: &str) -> &str {
    if selector.trim().is_empty() {
        "*"
    } else {
        selector
    }
}
