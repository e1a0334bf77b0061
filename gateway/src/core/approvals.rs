//! Approvals: calls the policy marks wait for a teammate's decision.
//!
//! A marked call first returns an "approval required" result (not an error) with an approval id;
//! the record, in the `mesh_approvals` bucket under `<tenant>.<id>`, binds a sha256 of the tool,
//! the arguments, the resolved hosts, the user, the run-as account and the policy version. An
//! approver approves or denies it; the requester re-calls with the same arguments plus
//! `approval_id`, and the gateway runs the call only if the hash still matches, the approval is
//! unexpired, and it can move the record from `approved` to `used` (a compare-and-set, so two
//! replicas cannot both spend one approval).
//!
//! Who may decide is checked against the policy in force at decision time ([`Authority`]): the
//! approver is the person the admin token names, must be in the policy's `[approvers]` (nobody
//! is, when it is not set), must not be the requester, and must hold the tier the held call
//! needs and reach every host it resolved to.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use execmesh_proto::jetstream as layout;
use execmesh_proto::redact::Redactor;
use execmesh_proto::{Token, pb};
use execmesh_runtime::kv_write::{self, Expect, KvWriteError};

use crate::core::audit::{Audit, CallAudit};
use crate::core::auth::Identity;
use crate::core::consumers::WatchFor;
use crate::core::error::ToolError;
use crate::core::fanout::Reach;
pub use crate::core::held::{ApprovalState, Held};
use crate::core::hosts::HostRecord;
use crate::core::hosts::HostState;
use crate::core::mesh::{Mesh, MeshError, MeshErrorKind, WatchFrom};
use crate::core::policy::{ApprovalRule, LivePolicy, Policy};
use crate::core::selector::{Candidate, Groups, Selector};
use crate::core::tier::{self, Tier};
use crate::core::webhook::ApprovalWebhook;

/// How long a request waits for a decision, and an approval for its use, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15 * 60);
/// The argument that carries an approval id on the re-call.
pub const ARG: &str = "approval_id";
/// Attempts at a compare-and-set before giving up (another replica writing the same record).
const CAS_ATTEMPTS: usize = 5;
/// Most approvals [`Approvals::list`] returns (newest first).
const LIST_MAX: usize = 1000;

/// One approval request and its decision, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// `apr-<16 hex>`: a subject-safe token.
    pub id: String,
    pub state: ApprovalState,
    pub tool: String,
    pub action: Option<String>,
    /// The resolved hosts the call targets, sorted.
    pub hosts: Vec<String>,
    /// Who asked.
    pub user: String,
    /// The unix account the policy maps the requester to.
    pub run_as: Option<String>,
    /// One line saying what is to be approved.
    pub summary: String,
    /// The call's arguments (without `approval_id`), redacted like audit events.
    pub arguments: Value,
    /// sha256 (hex) over tool, arguments, hosts, user, run-as and policy version.
    pub request_hash: String,
    /// The policy version the request was made under.
    pub policy_version: String,
    /// The approval rules that matched, as text.
    pub rules: Vec<String>,
    pub requested_at_ms: u64,
    /// After this the request can no longer be decided, nor an approval used.
    pub expires_at_ms: u64,
    pub decided_by: Option<String>,
    pub decided_at_ms: Option<u64>,
    /// The approver's reason (required for a denial).
    pub reason: Option<String>,
    pub used_at_ms: Option<u64>,
}

impl ApprovalRecord {
    /// The state as of `now_ms`: a pending or approved record past its expiry is expired.
    pub fn effective_state(&self, now_ms: u64) -> ApprovalState {
        match self.state {
            ApprovalState::Pending | ApprovalState::Approved if now_ms >= self.expires_at_ms => {
                ApprovalState::Expired
            }
            state => state,
        }
    }

    fn with_effective_state(mut self, now_ms: u64) -> Self {
        self.state = self.effective_state(now_ms);
        self
    }
}

/// Why an approval operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval `{id}` (it may have been cleaned up after 7 days)")]
    NotFound { id: String },
    #[error("approval `{id}` was requested by {user}, who may not approve their own request")]
    SelfApproval { id: String, user: String },
    #[error(
        "approval `{id}` cannot be decided by anyone: the policy names no approvers (add \
         [approvers] with users = [...] or groups = [...] to it)"
    )]
    NoApprovers { id: String },
    #[error(
        "{user} may not decide approval `{id}`: {user} is not an approver (the policy's \
         [approvers]: {approvers})"
    )]
    NotApprover {
        id: String,
        user: String,
        approvers: String,
    },
    #[error(
        "{user} may not decide approval `{id}`: it holds a `{tool}`{} call, which needs tier \
         {needed}, and {user} acts with tier {have}",
        action_suffix(.action)
    )]
    ApproverTier {
        id: String,
        user: String,
        tool: String,
        action: Option<String>,
        needed: Tier,
        have: Tier,
    },
    #[error(
        "{user} may not decide approval `{id}`: its host {host} is outside {user}'s reach \
         ({reach})"
    )]
    ApproverReach {
        id: String,
        user: String,
        host: String,
        reach: String,
    },
    #[error("approval `{id}` is already {state}")]
    AlreadyDecided { id: String, state: ApprovalState },
    #[error("approval `{id}` expired before it was decided")]
    Expired { id: String },
    #[error("`{0}` is not an approval id (they look like `apr-0123456789abcdef`)")]
    InvalidId(String),
    #[error("a denial needs a reason")]
    MissingReason,
    #[error("the approvals store is unavailable: {0}")]
    Mesh(String),
    /// A record the gateway cannot encode, or a stored (signed) record it cannot decode: a bug
    /// or corrupt data, not a transport failure; retrying does not help.
    #[error("an approval record cannot be read or written: {0}")]
    Internal(String),
}

fn action_suffix(action: &Option<String>) -> String {
    match action {
        Some(action) => format!(" {action}"),
        None => String::new(),
    }
}

impl ApprovalError {
    /// A failure of the mesh under the store, by its kind: only transport failures (and
    /// unreadable stored records, as the mesh reports them) are "unavailable".
    fn mesh(e: MeshError) -> Self {
        match e.kind() {
            MeshErrorKind::Unavailable | MeshErrorKind::Corrupt | MeshErrorKind::Busy => {
                Self::Mesh(e.to_string())
            }
            MeshErrorKind::Internal | MeshErrorKind::Setup => Self::Internal(e.to_string()),
        }
    }

    /// Whether the error says the caller may not decide (as opposed to a state or store error).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::SelfApproval { .. }
                | Self::NoApprovers { .. }
                | Self::NotApprover { .. }
                | Self::ApproverTier { .. }
                | Self::ApproverReach { .. }
        )
    }
}

/// What a decision is checked against, at the time it is made: the policy in force, the named
/// host groups selectors use, and the mesh (whose facts the approver's reach selectors match).
pub struct Authority<'a> {
    pub policy: &'a Policy,
    pub groups: &'a Groups,
    pub mesh: &'a Mesh,
}

// === impl Authority ===

impl Authority<'_> {
    /// `Ok` when `approver` may decide `record`: named by `[approvers]`, not the requester,
    /// acting with the tier the held call needs, and reaching every one of its hosts.
    pub async fn check(
        &self,
        record: &ApprovalRecord,
        approver: &Identity,
    ) -> Result<(), ApprovalError> {
        let id = &record.id;
        let user = approver.user.as_str();
        if record.user == user {
            return Err(ApprovalError::SelfApproval {
                id: id.clone(),
                user: user.to_string(),
            });
        }
        let Some(approvers) = self.policy.approvers() else {
            return Err(ApprovalError::NoApprovers { id: id.clone() });
        };
        if !self.policy.is_approver(user) {
            return Err(ApprovalError::NotApprover {
                id: id.clone(),
                user: user.to_string(),
                approvers: approvers.describe(),
            });
        }
        // A held runbook needs the runbook's own tier (its name is the record's action).
        let needed = match (record.tool.as_str(), record.action.as_deref()) {
            ("runbook", Some(name)) => self
                .policy
                .runbook(name)
                .map_or(Tier::Dangerous, |rb| rb.tier),
            (tool, action) => tier::required(tool, action),
        };
        if approver.tier < needed {
            return Err(ApprovalError::ApproverTier {
                id: id.clone(),
                user: user.to_string(),
                tool: record.tool.clone(),
                action: record.action.clone(),
                needed,
                have: approver.tier,
            });
        }
        if approver.reach.iter().any(|s| s.trim() == "*") {
            return Ok(());
        }
        let reach = Reach::of(&approver.reach, self.groups);
        let now = execmesh_proto::now_ms();
        for host in &record.hosts {
            // Host ids in a record were validated when it was made; a record that was
            // tampered with names no host anyone reaches.
            let known = match Token::parse("host", host) {
                Ok(token) => self.mesh.host(&token).await.map_err(ApprovalError::mesh)?,
                Err(_) => None,
            };
            let candidate = Candidate {
                host,
                facts: known.as_ref().and_then(|r| r.facts.as_ref()),
                state: HostState::of(known.as_ref().and_then(|r| r.presence.as_ref()), now),
            };
            if !reach.allows(&candidate) {
                return Err(ApprovalError::ApproverReach {
                    id: id.clone(),
                    user: user.to_string(),
                    host: host.clone(),
                    reach: reach.text.clone(),
                });
            }
        }
        Ok(())
    }
}

/// The approvals of one tenant, in `mesh_approvals`. Records are signed as the gateway and
/// read back through the mesh's checks: one the gateway did not sign (flipped to `approved` by
/// someone else) is treated as absent.
#[derive(Clone)]
pub struct Approvals {
    /// Checked reads and signed writes.
    mesh: Mesh,
    kv: kv::Store,
    tenant: Token,
    ttl: Duration,
    /// Decisions are audited here (requests and uses through the call's own trail).
    audit: Arc<Audit>,
    /// Where new requests are announced, if anywhere.
    webhook: Option<ApprovalWebhook>,
}

// === impl Approvals ===

impl Approvals {
    /// Creates the bucket if missing (otherwise uses it as it is) and opens it.
    pub async fn open(
        mesh: &Mesh,
        tenant: Token,
        replicas: usize,
        ttl: Duration,
        audit: Arc<Audit>,
    ) -> Result<Self, ApprovalError> {
        let js = &mesh.js;
        let config = layout::approvals_bucket(&mesh.limits, replicas);
        let name = config.bucket.clone();
        let kv = match js.create_key_value(config).await {
            Ok(kv) => kv,
            Err(create) => {
                debug!(bucket = %name, error = %create, "create failed; opening the existing bucket");
                js.get_key_value(&name).await.map_err(|open| {
                    ApprovalError::Mesh(format!(
                        "cannot open KV bucket {name}: create failed ({create}), open failed ({open})"
                    ))
                })?
            }
        };
        Ok(Self {
            mesh: mesh.clone(),
            kv,
            tenant,
            ttl,
            audit,
            webhook: None,
        })
    }

    /// The same store, announcing each new request to `webhook`.
    pub fn with_webhook(mut self, webhook: Option<ApprovalWebhook>) -> Self {
        self.webhook = webhook;
        self
    }

    /// How long a request waits for a decision.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Every approval of the tenant still stored, newest first (at most 1,000).
    pub async fn list(&self) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        let prefix = format!("{}.", self.tenant);
        let mut keys = self
            .kv
            .keys()
            .await
            .map_err(|e| ApprovalError::Mesh(e.to_string()))?;
        let mut ids = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| ApprovalError::Mesh(e.to_string()))?;
            if let Some(id) = key.strip_prefix(&prefix) {
                ids.push(id.to_string());
            }
        }
        let now = execmesh_proto::now_ms();
        let mut records = Vec::with_capacity(ids.len());
        for id in ids {
            match self.load(&id).await {
                Ok((record, _)) => records.push(record.with_effective_state(now)),
                // Purged between the listing and the read.
                Err(ApprovalError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        records.sort_by(|a, b| {
            b.requested_at_ms
                .cmp(&a.requested_at_ms)
                .then(b.id.cmp(&a.id))
        });
        records.truncate(LIST_MAX);
        Ok(records)
    }

    /// One approval.
    pub async fn get(&self, id: &str) -> Result<ApprovalRecord, ApprovalError> {
        let (record, _) = self.load(id).await?;
        Ok(record.with_effective_state(execmesh_proto::now_ms()))
    }

    /// Approves a pending request as `approver`, if `authority` lets them decide it.
    pub async fn approve(
        &self,
        id: &str,
        approver: &Identity,
        authority: &Authority<'_>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        self.decide(id, approver, authority, ApprovalState::Approved, None)
            .await
    }

    /// Denies a pending request as `approver`, saying why, if `authority` lets them decide it.
    pub async fn deny(
        &self,
        id: &str,
        approver: &Identity,
        authority: &Authority<'_>,
        reason: &str,
    ) -> Result<ApprovalRecord, ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::MissingReason);
        }
        self.decide(
            id,
            approver,
            authority,
            ApprovalState::Denied,
            Some(reason.trim()),
        )
        .await
    }

    /// Every change to the tenant's approvals from now on (new requests, decisions, uses).
    pub async fn watch(
        &self,
    ) -> Result<BoxStream<'static, Result<ApprovalRecord, ApprovalError>>, ApprovalError> {
        let watch = self
            .mesh
            .watch_kv(
                layout::APPROVALS_BUCKET,
                &format!("{}.>", self.tenant),
                WatchFrom::New,
                WatchFor::Client("approvals"),
            )
            .await
            .map_err(ApprovalError::mesh)?;
        let stream = watch.changes.filter_map(|entry| async move {
            match entry {
                Err(e) => Some(Err(ApprovalError::mesh(e))),
                // Deletions, and records the gateway did not sign.
                Ok(entry) if !entry.is_value() => None,
                Ok(entry) => Some(
                    decode(&format!("record `{}`", entry.key), &entry.value)
                        .map(|r| r.with_effective_state(execmesh_proto::now_ms())),
                ),
            }
        });
        Ok(stream.boxed())
    }

    async fn decide(
        &self,
        id: &str,
        approver: &Identity,
        authority: &Authority<'_>,
        to: ApprovalState,
        reason: Option<&str>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        // Who may decide is checked on the stored record (its tool, action and hosts never
        // change); the state is checked first so a late decision says so, and again below.
        let current = self.get(id).await?;
        still_pending(id, current.state)?;
        authority.check(&current, approver).await?;
        let approver = approver.user.as_str();
        let record = self
            .transition(id, |record, now| {
                still_pending(id, record.effective_state(now))?;
                if record.user == approver {
                    return Err(ApprovalError::SelfApproval {
                        id: id.to_string(),
                        user: approver.to_string(),
                    });
                }
                record.state = to;
                record.decided_by = Some(approver.to_string());
                record.decided_at_ms = Some(now);
                record.reason = reason.map(str::to_string);
                Ok(())
            })
            .await?;
        let outcome = record.state.to_string();
        let body = audit_body(&record, &outcome);
        (self.audit).approval_decided(&record.tool, &outcome, body, approver);
        Ok(record)
    }

    /// Applies `change` to the stored record with compare-and-set, retrying on a concurrent
    /// write.
    async fn transition(
        &self,
        id: &str,
        change: impl Fn(&mut ApprovalRecord, u64) -> Result<(), ApprovalError>,
    ) -> Result<ApprovalRecord, ApprovalError> {
        for _ in 0..CAS_ATTEMPTS {
            let (mut record, revision) = self.load(id).await?;
            let now = execmesh_proto::now_ms();
            change(&mut record, now)?;
            let bytes = encode(&record)?;
            let written = kv_write::write(
                &self.mesh.js,
                &self.kv,
                &self.key(id),
                bytes,
                HeaderMap::new(),
                Expect::Revision(revision),
                self.mesh.records.key(),
            )
            .await;
            match written {
                Ok(_) => {
                    info!(approval = %id, state = %record.state, user = %record.user, "approval changed");
                    return Ok(record);
                }
                Err(KvWriteError::WrongRevision { .. }) => continue,
                Err(e) => return Err(ApprovalError::Mesh(e.to_string())),
            }
        }
        Err(ApprovalError::Mesh(format!(
            "approval `{id}` kept changing under concurrent writers; try again"
        )))
    }

    async fn create(&self, record: &ApprovalRecord) -> Result<(), ApprovalError> {
        kv_write::create(
            &self.mesh.js,
            &self.kv,
            &self.key(&record.id),
            encode(record)?,
            HeaderMap::new(),
            self.mesh.records.key(),
        )
        .await
        .map_err(|e| ApprovalError::Mesh(e.to_string()))?;
        Ok(())
    }

    async fn load(&self, id: &str) -> Result<(ApprovalRecord, u64), ApprovalError> {
        if !is_id(id) {
            return Err(ApprovalError::InvalidId(id.to_string()));
        }
        // Read through the mesh's checks: a record the gateway did not sign is no approval.
        let entry = self
            .mesh
            .kv_get(layout::APPROVALS_BUCKET, &self.key(id))
            .await
            .map_err(ApprovalError::mesh)?;
        match entry {
            Some(entry) => {
                let record = decode(&format!("approval `{id}`"), &entry.payload)?;
                Ok((record, entry.seq))
            }
            None => Err(ApprovalError::NotFound { id: id.to_string() }),
        }
    }

    fn key(&self, id: &str) -> String {
        format!("{}.{id}", self.tenant)
    }
}

/// How often the pending-approvals gauge is recomputed without a change: a pending request
/// expires by the clock, with no write to the bucket that a watch would see.
const PENDING_RECOUNT: Duration = Duration::from_secs(5);
/// How long the gauge's watch waits before it starts again after it failed.
const PENDING_REWATCH: Duration = Duration::from_secs(2);

/// The tenant's pending approval requests as a watch of the bucket sees them: each key with the
/// time it expires, for the `execmesh_approvals_pending` gauge.
#[derive(Debug, Default)]
struct PendingTally {
    expires_at_ms: std::collections::HashMap<String, u64>,
}

// === impl PendingTally ===

impl PendingTally {
    /// Takes in one change of key `key`: a pending record counts until it expires; a decided,
    /// used or removed one no longer does.
    fn change(&mut self, key: &str, record: Option<&ApprovalRecord>) {
        match record {
            Some(record) if record.state == ApprovalState::Pending => {
                self.expires_at_ms
                    .insert(key.to_string(), record.expires_at_ms);
            }
            _ => {
                self.expires_at_ms.remove(key);
            }
        }
    }

    /// Requests still pending at `now_ms`; the expired ones are forgotten.
    fn count(&mut self, now_ms: u64) -> usize {
        self.expires_at_ms.retain(|_, expires| now_ms < *expires);
        self.expires_at_ms.len()
    }
}

impl Approvals {
    /// Keeps the `execmesh_approvals_pending` gauge at the tenant's pending requests, from a
    /// watch of the bucket (every replica reports the whole tenant's count), until `shutdown`.
    pub async fn count_pending(self, shutdown: tokio_util::sync::CancellationToken) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = self.tally_pending() => {}
                () = shutdown.cancelled() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(PENDING_REWATCH) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One watch of the bucket feeding the gauge; returns when the watch fails or ends.
    async fn tally_pending(&self) {
        let filter = format!("{}.>", self.tenant);
        let mut watch = match (self.mesh)
            .watch_kv(
                layout::APPROVALS_BUCKET,
                &filter,
                WatchFrom::LastPerKey,
                WatchFor::Upkeep("pending-approvals"),
            )
            .await
        {
            Ok(watch) => watch,
            Err(e) => {
                debug!(error = %e, "cannot watch the approvals for the pending gauge");
                return;
            }
        };
        let mut tally = PendingTally::default();
        let mut recount = tokio::time::interval(PENDING_RECOUNT);
        loop {
            tokio::select! {
                change = watch.changes.next() => match change {
                    Some(Ok(change)) => {
                        let record = change
                            .is_value()
                            .then(|| decode(&change.key, &change.value).ok())
                            .flatten();
                        tally.change(&change.key, record.as_ref());
                        // Counted once the values stored when the watch began are all in.
                        if change.pending > 0 {
                            continue;
                        }
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "the approvals watch for the pending gauge failed");
                        return;
                    }
                    None => return,
                },
                _ = recount.tick() => {}
            }
            crate::core::metrics::approvals_pending(tally.count(execmesh_proto::now_ms()));
        }
    }
}

fn encode(record: &ApprovalRecord) -> Result<Bytes, ApprovalError> {
    serde_json::to_vec(record).map(Bytes::from).map_err(|e| {
        ApprovalError::Internal(format!("cannot encode approval `{}`: {e}", record.id))
    })
}

/// A stored record the gateway signed but cannot parse: corrupt or from an incompatible
/// version, which is not the store being unavailable.
fn decode(what: &str, bytes: &[u8]) -> Result<ApprovalRecord, ApprovalError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApprovalError::Internal(format!("{what} is unreadable: {e}")))
}

/// `Ok` while approval `id` in `state` may still be decided.
fn still_pending(id: &str, state: ApprovalState) -> Result<(), ApprovalError> {
    match state {
        ApprovalState::Pending => Ok(()),
        ApprovalState::Expired => Err(ApprovalError::Expired { id: id.to_string() }),
        state => Err(ApprovalError::AlreadyDecided {
            id: id.to_string(),
            state,
        }),
    }
}

/// Whether `id` looks like an approval id (and is therefore safe as a KV key token).
pub fn is_id(id: &str) -> bool {
    id.strip_prefix("apr-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    })
}

fn new_id() -> String {
    format!("apr-{:016x}", rand::random::<u64>())
}

// === the gate tools pass through ===

/// What a call would do, for the approval check.
pub struct Request<'a> {
    /// The tool's action (`file` delete, `facts` refresh), if it has one.
    pub action: Option<&'a str>,
    /// The hosts the call would be sent to, with what the mesh knows of them.
    pub hosts: Vec<(&'a Token, Option<&'a HostRecord>)>,
    /// One line for the approver: "bash `rm -rf /srv/old` on db-1".
    pub summary: String,
}

impl<'a> Request<'a> {
    /// The request of a fan-out over resolved `targets`.
    pub fn for_targets(
        targets: &'a crate::core::fanout::Targets,
        action: Option<&'a str>,
        summary: String,
    ) -> Self {
        Self {
            action,
            hosts: targets.hosts.iter().map(|(h, r)| (h, Some(&**r))).collect(),
            summary,
        }
    }
}

/// A call as the gate sees it, and the services the gate checks it with.
pub struct Gate<'a> {
    /// The tool called.
    pub tool: &'a str,
    /// The call's arguments without `approval_id`: what an approval is bound to.
    pub args: &'a Map<String, Value>,
    /// The approval the caller presents, if any.
    pub approval_id: Option<&'a str>,
    pub identity: &'a Identity,
    /// The call's audit trail: the gate records `requested` and `used` in it.
    pub audit: &'a CallAudit<'a>,
    pub mesh: &'a Mesh,
    pub policy: &'a LivePolicy,
    /// Named groups the rules' selectors may use.
    pub groups: &'a Groups,
    pub approvals: &'a Approvals,
    /// Redacts the summary and arguments an approver is shown.
    pub redactor: &'a Redactor,
}

/// [`gate`] for calls that name their hosts by id: the hosts' records are read only when a rule
/// could hold the call.
pub async fn gate_hosts(
    call: &Gate<'_>,
    action: Option<&str>,
    hosts: &[&Token],
    summary: impl FnOnce() -> String,
) -> Result<(), ToolError> {
    let policy = call.policy.current();
    if policy
        .approval_rules_for(call.tool, action)
        .next()
        .is_none()
    {
        return Ok(());
    }
    let mut records = Vec::with_capacity(hosts.len());
    for host in hosts {
        records.push(call.mesh.host(host).await?);
    }
    let request = Request {
        action,
        hosts: hosts
            .iter()
            .zip(&records)
            .map(|(host, record)| (*host, record.as_ref()))
            .collect(),
        summary: summary(),
    };
    gate(call, request).await
}

/// Checks a call against the policy's approval rules. `Ok`: the call may go on (no rule
/// matched, or it carries a valid approval, now spent). [`ToolError::ApprovalRequired`]: the
/// call is held (a new request, or one still pending), which the client sees as a normal
/// result. Another error: the approval it carries cannot be used.
pub async fn gate(call: &Gate<'_>, request: Request<'_>) -> Result<(), ToolError> {
    let tool = call.tool;
    let policy = call.policy.current();
    let groups = &call.groups;
    let rules: Vec<&ApprovalRule> = policy
        .approval_rules_for(tool, request.action)
        .filter(|rule| covers(rule, &request.hosts, groups))
        .collect();
    if rules.is_empty() {
        return Ok(());
    }
    let approvals = &call.approvals;
    let mut hosts: Vec<String> = request.hosts.iter().map(|(h, _)| h.to_string()).collect();
    hosts.sort();
    hosts.dedup();
    let user = call.identity.user.as_str();
    let run_as = call.identity.run_as.as_deref();
    let hash = request_hash(tool, call.args, &hosts, user, run_as, policy.version());
    let Some(id) = call.approval_id else {
        let now = execmesh_proto::now_ms();
        let record = ApprovalRecord {
            id: new_id(),
            state: ApprovalState::Pending,
            tool: tool.to_string(),
            action: request.action.map(str::to_string),
            hosts,
            user: user.to_string(),
            run_as: run_as.map(str::to_string),
            summary: call.redactor.text(&request.summary),
            arguments: call.redactor.args_value(call.args),
            request_hash: hash,
            policy_version: policy.version().to_string(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            requested_at_ms: now,
            expires_at_ms: now + approvals.ttl().as_millis() as u64,
            decided_by: None,
            decided_at_ms: None,
            reason: None,
            used_at_ms: None,
        };
        approvals.create(&record).await.map_err(store_error)?;
        if let Some(webhook) = &approvals.webhook {
            webhook.announce(&record);
        }
        call.audit
            .approval("requested", audit_body(&record, "requested"));
        info!(approval = %record.id, hosts = record.hosts.len(), "approval requested");
        return Err(required(&record, "approval required"));
    };
    let unusable = |reason: String| ToolError::ApprovalUnusable {
        id: id.to_string(),
        reason,
    };
    let current = approvals.get(id).await.map_err(|e| match e {
        ApprovalError::Mesh(m) => ToolError::Mesh(m),
        e @ ApprovalError::Internal(_) => store_error(e),
        other => unusable(other.to_string()),
    })?;
    if current.user != user {
        return Err(unusable(format!(
            "it was requested by {}, not by you",
            current.user
        )));
    }
    if current.request_hash != hash {
        return Err(unusable(
            "it was granted for a different call: the tool, arguments, target hosts, run-as \
             account or policy changed since. Call without `approval_id` to request a new approval"
                .to_string(),
        ));
    }
    match current.state {
        ApprovalState::Approved => {}
        ApprovalState::Pending => {
            return Err(required(
                &current,
                "approval still pending: ask an approver to run `execmeshctl approve`",
            ));
        }
        ApprovalState::Denied => {
            return Err(unusable(format!(
                "{} denied it: {}",
                current.decided_by.as_deref().unwrap_or("an approver"),
                current.reason.as_deref().unwrap_or("no reason given")
            )));
        }
        ApprovalState::Used => {
            return Err(unusable(
                "it was used already; an approval runs its call once".to_string(),
            ));
        }
        ApprovalState::Expired => {
            return Err(unusable(
                "it expired; call without `approval_id` to request a new approval".to_string(),
            ));
        }
    }
    // Spend it: only one of two concurrent re-calls gets past this compare-and-set.
    let spent = approvals
        .transition(id, |record, now| match record.effective_state(now) {
            ApprovalState::Approved => {
                record.state = ApprovalState::Used;
                record.used_at_ms = Some(now);
                Ok(())
            }
            state => Err(ApprovalError::AlreadyDecided {
                id: id.to_string(),
                state,
            }),
        })
        .await
        .map_err(|e| match e {
            ApprovalError::Mesh(m) => ToolError::Mesh(m),
            e @ ApprovalError::Internal(_) => store_error(e),
            other => unusable(other.to_string()),
        })?;
    call.audit.approval("used", audit_body(&spent, "used"));
    Ok(())
}

/// Whether `rule` covers the call: always when it names no hosts, else when its selector
/// matches one of the call's hosts. A rule whose selector does not parse covers every host:
/// a typo must not waive an approval.
fn covers(rule: &ApprovalRule, hosts: &[(&Token, Option<&HostRecord>)], groups: &Groups) -> bool {
    let Some(text) = &rule.hosts else {
        return true;
    };
    let Ok(selector) = Selector::parse(text, groups) else {
        tracing::warn!(selector = %text, "approval rule selector does not parse; it covers every host");
        return true;
    };
    let now = execmesh_proto::now_ms();
    hosts.iter().any(|(host, record)| {
        selector.matches(&Candidate {
            host: host.as_str(),
            facts: record.and_then(|r| r.facts.as_ref()),
            state: HostState::of(record.and_then(|r| r.presence.as_ref()), now),
        })
    })
}

/// sha256 over the call's identity-bearing parts, each length-prefixed so no two different
/// calls share an encoding. Arguments are hashed in canonical JSON (keys sorted).
pub fn request_hash(
    tool: &str,
    args: &Map<String, Value>,
    hosts: &[String],
    user: &str,
    run_as: Option<&str>,
    policy_version: &str,
) -> String {
    let mut args = args.clone();
    args.remove(ARG);
    let canonical = canonical(&Value::Object(args)).to_string();
    let mut hasher = Sha256::new();
    for part in [
        tool,
        canonical.as_str(),
        &hosts.join(","),
        user,
        run_as.unwrap_or(""),
        policy_version,
    ] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `value` with every object's keys in sorted order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

impl Held {
    /// The held answer for `record`.
    pub fn of(record: &ApprovalRecord) -> Self {
        Self {
            approval_required: true,
            approval_id: record.id.clone(),
            state: record.state,
            summary: record.summary.clone(),
            hosts: record.hosts.clone(),
            expires_at_ms: record.expires_at_ms,
        }
    }
}

/// The result a held call returns: not an error, so the model reads it as "wait".
fn required(record: &ApprovalRecord, headline: &str) -> ToolError {
    let minutes = record
        .expires_at_ms
        .saturating_sub(execmesh_proto::now_ms())
        .div_ceil(60_000);
    let text = format!(
        "{headline}: {summary}. Approval id {id}. An approver the policy names approves it with \
         `execmeshctl approve {id}` (you cannot approve your own request); then call this tool \
         again with the same arguments and \"approval_id\": \"{id}\". It expires in {minutes} \
         min.",
        summary = record.summary,
        id = record.id,
    );
    ToolError::ApprovalRequired {
        id: record.id.clone(),
        text,
        details: Box::new(Held::of(record)),
    }
}

fn store_error(e: ApprovalError) -> ToolError {
    match e {
        ApprovalError::Internal(_) => ToolError::internal("the approvals store failed", &e),
        other => ToolError::Mesh(other.to_string()),
    }
}

/// The audit body of an approval step.
pub fn audit_body(record: &ApprovalRecord, step: &str) -> pb::audit_event::Body {
    match step {
        "requested" => {
            let (hosts, hosts_omitted) = crate::core::audit::listed(record.hosts.clone());
            pb::audit_event::Body::ApprovalRequested(pb::ApprovalRequested {
                approval_id: record.id.clone(),
                summary: record.summary.clone(),
                hosts,
                request_hash: record.request_hash.clone(),
                expires_at_ms: record.expires_at_ms,
                hosts_omitted,
            })
        }
        _ => pb::audit_event::Body::ApprovalDecided(pb::ApprovalDecided {
            approval_id: record.id.clone(),
            decision: step.to_string(),
            by: record.decided_by.clone().unwrap_or_default(),
            reason: record.reason.clone().unwrap_or_default(),
            requested_by: record.user.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_stored_approval_is_internal_not_unavailable() {
        let e = decode("approval `apr-0123456789abcdef`", b"{not json").unwrap_err();
        assert!(matches!(e, ApprovalError::Internal(_)), "{e:?}");
        assert!(!e.to_string().contains("unavailable"), "{e}");
        let tool = store_error(e);
        assert!(matches!(tool, ToolError::Internal(_)), "{tool:?}");
        assert_eq!(tool.code(), "internal");
        assert!(!tool.to_string().contains("unavailable"), "{tool}");
    }

    #[test]
    fn a_mesh_failure_under_the_store_keeps_its_kind() {
        let internal = ApprovalError::mesh(MeshError::Internal("cannot encode".into()));
        assert!(
            matches!(internal, ApprovalError::Internal(_)),
            "{internal:?}"
        );
        let down = ApprovalError::mesh(MeshError::Timeout(Duration::from_secs(5)));
        assert!(matches!(down, ApprovalError::Mesh(_)), "{down:?}");
        assert_eq!(store_error(down).code(), "unavailable");
    }

    fn args(json: Value) -> Map<String, Value> {
        match json {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn hash_ignores_key_order_and_the_approval_id() {
        let hosts = vec!["db-1".to_string()];
        let a = request_hash(
            "bash",
            &args(serde_json::json!({"host": "db-1", "cmd": "rm x", "env": {"A": "1", "B": "2"}})),
            &hosts,
            "alice",
            Some("alice"),
            "v1",
        );
        let b = request_hash(
            "bash",
            &args(
                serde_json::json!({"env": {"B": "2", "A": "1"}, "cmd": "rm x", "host": "db-1", "approval_id": "apr-0000000000000001"}),
            ),
            &hosts,
            "alice",
            Some("alice"),
            "v1",
        );
        assert_eq!(a, b);
    }

    #[test]
    fn hash_changes_with_every_bound_part() {
        let hosts = vec!["db-1".to_string()];
        let base = args(serde_json::json!({"host": "db-1", "cmd": "rm x"}));
        let h =
            |tool: &str, a: &Map<String, Value>, hosts: &[String], user: &str, run_as, v: &str| {
                request_hash(tool, a, hosts, user, run_as, v)
            };
        let reference = h("bash", &base, &hosts, "alice", Some("alice"), "v1");
        let other_args = args(serde_json::json!({"host": "db-1", "cmd": "rm y"}));
        for changed in [
            h("file", &base, &hosts, "alice", Some("alice"), "v1"),
            h("bash", &other_args, &hosts, "alice", Some("alice"), "v1"),
            h(
                "bash",
                &base,
                &["db-2".to_string()],
                "alice",
                Some("alice"),
                "v1",
            ),
            h("bash", &base, &hosts, "bob", Some("alice"), "v1"),
            h("bash", &base, &hosts, "alice", Some("root"), "v1"),
            h("bash", &base, &hosts, "alice", None, "v1"),
            h("bash", &base, &hosts, "alice", Some("alice"), "v2"),
        ] {
            assert_ne!(changed, reference);
        }
    }

    #[test]
    fn ids_are_checked_before_they_become_keys() {
        assert!(is_id(&new_id()));
        for bad in [
            "apr-",
            "apr-0123",
            "apr-0123456789ABCDEF",
            "apr-01234567.9abcdef",
            "x",
            "apr-0123456789abcdef0",
        ] {
            assert!(!is_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_pending_tally_counts_undecided_unexpired_requests() {
        let record = |state, expires_at_ms| ApprovalRecord {
            state,
            expires_at_ms,
            ..sample_record()
        };
        let mut tally = PendingTally::default();
        tally.change("t.apr-1", Some(&record(ApprovalState::Pending, 2_000)));
        tally.change("t.apr-2", Some(&record(ApprovalState::Pending, 5_000)));
        tally.change("t.apr-3", Some(&record(ApprovalState::Approved, 5_000)));
        assert_eq!(tally.count(1_000), 2);
        // Decided, removed, expired: no longer pending.
        tally.change("t.apr-2", Some(&record(ApprovalState::Denied, 5_000)));
        assert_eq!(tally.count(1_000), 1);
        assert_eq!(tally.count(2_000), 0, "apr-1 expired");
        tally.change("t.apr-4", Some(&record(ApprovalState::Pending, 9_000)));
        tally.change("t.apr-4", None);
        assert_eq!(tally.count(3_000), 0);
    }

    #[test]
    fn pending_and_approved_records_expire() {
        let record = sample_record();
        assert_eq!(record.effective_state(99), ApprovalState::Approved);
        assert_eq!(record.effective_state(100), ApprovalState::Expired);
        let used = ApprovalRecord {
            state: ApprovalState::Used,
            ..record
        };
        assert_eq!(used.effective_state(1000), ApprovalState::Used);
    }

    /// An approved request of alice's that expires at 100 ms.
    fn sample_record() -> ApprovalRecord {
        ApprovalRecord {
            id: new_id(),
            state: ApprovalState::Approved,
            tool: "bash".into(),
            action: None,
            hosts: vec![],
            user: "alice".into(),
            run_as: None,
            summary: String::new(),
            arguments: Value::Null,
            request_hash: String::new(),
            policy_version: String::new(),
            rules: vec![],
            requested_at_ms: 0,
            expires_at_ms: 100,
            decided_by: None,
            decided_at_ms: None,
            reason: None,
            used_at_ms: None,
        }
    }
}
