//! Fan-out: resolves a selector to target hosts and runs one request per host with a sliding
//! window, so that every targeted host ends with exactly one status from a fixed set.
//!
//! Offline hosts and hosts outside the caller's reach are settled before anything is sent.
//! While requests are in flight, presence is re-read every few seconds: a host whose agent
//! died mid-call is reported `lost` at once instead of after its timeout. `max_failures` stops
//! sending new requests; hosts never contacted are `not_started`. Cancellation (the client went
//! away) settles everything still outstanding and lets the caller clean up on the nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use execmesh_proto::{Token, pb};

use crate::core::error::ToolError;
use crate::core::hosts::HostRecord;
use crate::core::hosts::HostState;
use crate::core::mesh::Mesh;
use crate::core::selector::{Candidate, Groups, Selector, SelectorError};

/// How often presence is re-read while requests are in flight.
const PRESENCE_CHECK: Duration = Duration::from_secs(2);

/// The one status every targeted host ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HostStatus {
    /// The request did what was asked (a command exited 0, a search ran).
    Ok,
    /// The command ran and exited with a non-zero code (or was ended by a signal).
    ExitNonzero,
    /// The host did not finish within the per-host timeout.
    Timeout,
    /// The caller may not reach this host, or the host's own policy refused the request.
    Denied,
    /// No agent is connected for this host; nothing was sent.
    Offline,
    /// The host's agent went away while the request ran.
    Lost,
    /// Not contacted: the fan-out stopped early (`max_failures`) or was cancelled.
    NotStarted,
    /// Anything else: the agent refused the request or the reply was unusable.
    Error,
}

impl HostStatus {
    /// Every status, in the order summaries list them.
    pub const ALL: [HostStatus; 8] = [
        HostStatus::Ok,
        HostStatus::ExitNonzero,
        HostStatus::Timeout,
        HostStatus::Denied,
        HostStatus::Offline,
        HostStatus::Lost,
        HostStatus::NotStarted,
        HostStatus::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Ok => "ok",
            HostStatus::ExitNonzero => "exit_nonzero",
            HostStatus::Timeout => "timeout",
            HostStatus::Denied => "denied",
            HostStatus::Offline => "offline",
            HostStatus::Lost => "lost",
            HostStatus::NotStarted => "not_started",
            HostStatus::Error => "error",
        }
    }

    /// Whether the status counts toward `max_failures`: a request was made and went wrong.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            HostStatus::ExitNonzero | HostStatus::Timeout | HostStatus::Lost | HostStatus::Error
        )
    }
}

/// How one host ended, with what the request produced (if anything).
#[derive(Debug, Clone)]
pub struct Outcome<T> {
    pub host: Token,
    pub status: HostStatus,
    /// In words, naming the host: "exit code 2", "no agent connected (last seen 40 s ago)".
    pub reason: String,
    pub value: Option<T>,
}

impl<T> Outcome<T> {
    pub fn new(host: Token, status: HostStatus, reason: impl Into<String>) -> Self {
        Self {
            host,
            status,
            reason: reason.into(),
            value: None,
        }
    }

    pub fn with_value(mut self, value: T) -> Self {
        self.value = Some(value);
        self
    }
}

/// A count or a percentage of the targets (`10`, `"25%"`), for `batch` and `max_failures`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Amount {
    Count(u64),
    /// A percentage of the targeted hosts, e.g. "25%" (rounded up, at least 1).
    Percent(String),
}

impl Amount {
    /// The amount for `total` targets.
    pub fn resolve(&self, name: &str, total: usize) -> Result<usize, String> {
        match self {
            Amount::Count(n) => usize::try_from(*n).map_err(|_| format!("`{name}` is too large")),
            Amount::Percent(text) => {
                let number = text
                    .trim()
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<f64>().ok())
                    .filter(|p| p.is_finite() && *p > 0.0 && *p <= 100.0)
                    .ok_or_else(|| {
                        format!(
                            "`{name}` must be a count or a percentage such as \"25%\", not `{text}`"
                        )
                    })?;
                Ok(((total as f64 * number / 100.0).ceil() as usize).max(1))
            }
        }
    }
}

/// A selector resolved against the mesh for one caller.
#[derive(Debug)]
pub struct Targets {
    /// The selector as the caller wrote it.
    pub selector: String,
    /// Matching hosts the caller may reach, by id.
    pub hosts: BTreeMap<Token, Arc<HostRecord>>,
    /// Matching hosts outside the caller's reach.
    pub denied: BTreeSet<Token>,
}

/// Why a selector could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("bad selector `{selector}`: {source}")]
    Selector {
        selector: String,
        source: SelectorError,
    },
    #[error("selector `{selector}` matches {count} hosts; at most {max} may be targeted at once")]
    TooMany {
        selector: String,
        count: usize,
        max: usize,
    },
    #[error(transparent)]
    Mesh(#[from] crate::core::mesh::MeshError),
}

/// The hosts a caller may reach, from the policy's selectors (`None`: every host).
#[derive(Debug, Clone)]
pub struct Reach {
    selector: Option<Selector>,
    /// The selectors as written, for messages.
    pub text: String,
}

impl Reach {
    /// Every host (no policy restricts the caller).
    pub fn everything() -> Self {
        Self {
            selector: None,
            text: "*".into(),
        }
    }

    /// The union of `selectors`. An empty list reaches nothing; a selector that does not
    /// parse reaches nothing (and is logged) rather than everything.
    pub fn of(selectors: &[String], groups: &Groups) -> Self {
        let text = selectors.join(" or ");
        if selectors.iter().any(|s| s.trim() == "*") {
            return Self {
                selector: None,
                text,
            };
        }
        let parts: Vec<Selector> = selectors
            .iter()
            .filter_map(|s| match Selector::parse(s, groups) {
                Ok(sel) => Some(sel),
                Err(e) => {
                    tracing::warn!(selector = %s, error = %e, "reach selector ignored");
                    None
                }
            })
            .collect();
        Self {
            selector: Some(Selector::Or(parts)),
            text: if text.is_empty() {
                "no hosts".into()
            } else {
                text
            },
        }
    }

    /// This reach narrowed to the hosts `selector` also matches (a runbook's `hosts`): a host
    /// must be in both. A selector that does not parse narrows to nothing.
    pub fn narrowed(&self, selector: &str, groups: &Groups) -> Self {
        let narrow = match Selector::parse(selector, groups) {
            Ok(sel) => sel,
            Err(e) => {
                tracing::warn!(selector = %selector, error = %e, "narrowing selector does not parse; it matches no host");
                Selector::Or(Vec::new())
            }
        };
        let combined = match &self.selector {
            None => narrow,
            Some(own) => Selector::And(vec![own.clone(), narrow]),
        };
        Self {
            selector: Some(combined),
            text: format!("{}, and only `{selector}`", self.text),
        }
    }

    /// Whether every host is allowed (nothing to check per host).
    pub fn is_everything(&self) -> bool {
        self.selector.is_none()
    }

    pub fn allows(&self, candidate: &Candidate<'_>) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(candidate))
    }
}

// === impl Targets ===

impl Targets {
    /// Resolves `selector` against every host the mesh knows. With the bare `*`, hosts outside
    /// the caller's reach are left out; a selector that names them otherwise gets them back as
    /// denied, so the caller learns why they were not contacted.
    pub async fn resolve(
        mesh: &Mesh,
        selector: &str,
        groups: &Groups,
        reach: &Reach,
        max_hosts: usize,
    ) -> Result<Self, ResolveError> {
        let parsed =
            Selector::parse(selector, groups).map_err(|source| ResolveError::Selector {
                selector: selector.to_string(),
                source,
            })?;
        let now = execmesh_proto::now_ms();
        let mut hosts = BTreeMap::new();
        let mut denied = BTreeSet::new();
        for (id, record) in mesh.hosts().await? {
            let candidate = Candidate {
                host: id.as_str(),
                facts: record.facts.as_ref(),
                state: HostState::of(record.presence.as_ref(), now),
            };
            if !parsed.matches(&candidate) {
                continue;
            }
            if reach.allows(&candidate) {
                hosts.insert(id, record);
            } else if !parsed.is_all() {
                denied.insert(id);
            }
        }
        let count = hosts.len() + denied.len();
        if count > max_hosts {
            return Err(ResolveError::TooMany {
                selector: selector.to_string(),
                count,
                max: max_hosts,
            });
        }
        Ok(Self {
            selector: selector.to_string(),
            hosts,
            denied,
        })
    }

    /// Hosts targeted in all (reachable and denied).
    pub fn len(&self) -> usize {
        self.hosts.len() + self.denied.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a fan-out runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Most requests in flight at once.
    pub window: usize,
    /// Stop sending once this many requests failed (see [`HostStatus::is_failure`]).
    pub max_failures: Option<usize>,
    /// The caller went away: stop, and settle the rest.
    pub cancel: CancellationToken,
}

/// Receives each host's outcome as it is settled (for progress notifications).
pub trait Progress: Send + Sync {
    fn settled(&self, answered: usize, total: usize, host: &Token, status: HostStatus);
}

/// Progress nobody listens to.
pub struct NoProgress;

impl Progress for NoProgress {
    fn settled(&self, _: usize, _: usize, _: &Token, _: HostStatus) {}
}

/// What [`run`] returns: every targeted host once, sorted by host id.
#[derive(Debug)]
pub struct Report<T> {
    pub outcomes: Vec<Outcome<T>>,
    /// Why sending stopped early, if it did.
    pub stopped: Option<String>,
    /// Hosts that had a request in flight when the fan-out was cancelled: the caller may want
    /// to stop the work there.
    pub abandoned: Vec<Token>,
    /// The most requests that were in flight at once.
    pub peak_in_flight: usize,
}

impl<T> Report<T> {
    /// Count of hosts per status, in [`HostStatus::ALL`] order, zero counts left out.
    pub fn counts(&self) -> Vec<(HostStatus, usize)> {
        HostStatus::ALL
            .iter()
            .map(|s| (*s, self.outcomes.iter().filter(|o| o.status == *s).count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// [`Report::counts`] keyed by status name, as tool results show them.
    pub fn counts_by_name(&self) -> BTreeMap<String, usize> {
        self.counts()
            .into_iter()
            .map(|(s, n)| (s.as_str().to_string(), n))
            .collect()
    }

    /// "40 hosts: 37 ok, 2 exit_nonzero, 1 offline".
    pub fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts()
            .iter()
            .map(|(s, n)| format!("{n} {}", s.as_str()))
            .collect();
        let mut text = format!(
            "{} host(s): {}",
            self.outcomes.len(),
            if parts.is_empty() {
                "none".to_string()
            } else {
                parts.join(", ")
            }
        );
        if let Some(why) = &self.stopped {
            text.push_str(&format!(" ({why})"));
        }
        text
    }
}

/// Runs `request` for every reachable target in `targets`, at most `plan.window` at once.
pub async fn run<T, F, Fut>(
    mesh: &Mesh,
    targets: Targets,
    plan: &Plan,
    progress: &dyn Progress,
    request: F,
) -> Report<T>
where
    F: Fn(Token) -> Fut,
    Fut: Future<Output = Outcome<T>>,
{
    let total = targets.len();
    let mut settled: BTreeMap<Token, Outcome<T>> = BTreeMap::new();
    let settle = |outcome: Outcome<T>, settled: &mut BTreeMap<Token, Outcome<T>>| {
        progress.settled(settled.len() + 1, total, &outcome.host, outcome.status);
        settled.insert(outcome.host.clone(), outcome);
    };
    for host in targets.denied {
        let reason = "outside the hosts you may reach".to_string();
        settle(Outcome::new(host, HostStatus::Denied, reason), &mut settled);
    }
    let now = execmesh_proto::now_ms();
    let mut queue = Vec::new();
    for (host, record) in targets.hosts {
        if record.presence.is_none() {
            let last = record
                .facts
                .as_ref()
                .map(|f| {
                    format!(
                        " (registered, facts from {} s ago)",
                        now.saturating_sub(f.collected_at_ms) / 1000
                    )
                })
                .unwrap_or_default();
            let reason = format!("no agent connected for host {host}{last}");
            settle(
                Outcome::new(host, HostStatus::Offline, reason),
                &mut settled,
            );
        } else {
            queue.push(host);
        }
    }
    queue.reverse(); // pop() takes hosts in id order

    let (lost_tx, lost_rx) = watch::channel(BTreeSet::<Token>::new());
    let mut in_flight: BTreeSet<Token> = BTreeSet::new();
    let mut pending = FuturesUnordered::new();
    let mut failures = 0usize;
    let mut stopped = None;
    let mut peak = 0usize;
    let mut ticker = tokio::time::interval(PRESENCE_CHECK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;

    loop {
        while stopped.is_none() && in_flight.len() < plan.window.max(1) {
            let Some(host) = queue.pop() else { break };
            in_flight.insert(host.clone());
            peak = peak.max(in_flight.len());
            let mut lost = lost_rx.clone();
            let fut = request(host.clone());
            pending.push(async move {
                let watched = host.clone();
                tokio::select! {
                    outcome = fut => outcome,
                    _ = lost.wait_for(|set| set.contains(&watched)) => Outcome::new(
                        host.clone(),
                        HostStatus::Lost,
                        format!("the agent of host {host} went away (heartbeats stopped) while the request ran"),
                    ),
                }
            });
        }
        if pending.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            _ = plan.cancel.cancelled() => {
                stopped = Some("cancelled: the caller went away".to_string());
                break;
            }
            Some(outcome) = pending.next() => {
                in_flight.remove(&outcome.host);
                if outcome.status.is_failure() {
                    failures += 1;
                    if let Some(max) = plan.max_failures
                        && failures >= max
                        && stopped.is_none()
                        && !queue.is_empty()
                    {
                        stopped = Some(format!("stopped after {failures} failure(s): max_failures is {max}"));
                    }
                }
                settle(outcome, &mut settled);
            }
            _ = ticker.tick() => {
                if let Ok(present) = mesh.present_hosts().await {
                    let gone: BTreeSet<Token> =
                        in_flight.iter().filter(|h| !present.contains(*h)).cloned().collect();
                    if !gone.is_empty() {
                        lost_tx.send_modify(|set| set.extend(gone));
                    }
                }
            }
        }
    }

    // Only cancellation leaves requests in flight: they started, so they are not "not
    // started"; the caller is told to stop them.
    let abandoned: Vec<Token> = in_flight.iter().cloned().collect();
    let why = stopped.clone().unwrap_or_default();
    for host in in_flight {
        let reason = format!(
            "host {host} was still working when the call ended ({why}); its work is being stopped"
        );
        settle(Outcome::new(host, HostStatus::Error, reason), &mut settled);
    }
    while let Some(host) = queue.pop() {
        let reason = format!("host {host} was not contacted ({why})");
        settle(
            Outcome::new(host, HostStatus::NotStarted, reason),
            &mut settled,
        );
    }
    Report {
        outcomes: settled.into_values().collect(),
        stopped,
        abandoned,
        peak_in_flight: peak,
    }
}

/// The fan-out status of a request that failed before a job result came back.
pub fn classify<T>(host: Token, error: ToolError) -> Outcome<T> {
    let status = match &error {
        ToolError::OfflineHost { .. } | ToolError::UnknownHost { .. } => HostStatus::Offline,
        ToolError::HostTimeout { .. } => HostStatus::Timeout,
        ToolError::Denied { .. } | ToolError::Tier(_) => HostStatus::Denied,
        // The host's own policy refused (tier cap, run-as, CommandGuard, roots), or it does not
        // accept the request's signature, or the run-as account lacks the permission.
        ToolError::Refused { code, .. }
            if crate::core::error::is_node_denial(*code)
                || matches!(
                    code,
                    pb::ErrorCode::Unauthenticated | pb::ErrorCode::PermissionDenied
                ) =>
        {
            HostStatus::Denied
        }
        _ => HostStatus::Error,
    };
    Outcome::new(host, status, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_resolve_counts_and_percentages() {
        assert_eq!(Amount::Count(5).resolve("batch", 40), Ok(5));
        assert_eq!(Amount::Percent("25%".into()).resolve("batch", 40), Ok(10));
        assert_eq!(Amount::Percent("1%".into()).resolve("batch", 10), Ok(1));
        assert_eq!(Amount::Percent("33%".into()).resolve("batch", 10), Ok(4));
        assert!(
            Amount::Percent("lots".into())
                .resolve("batch", 10)
                .unwrap_err()
                .contains("`batch` must be a count or a percentage")
        );
        assert!(Amount::Percent("0%".into()).resolve("batch", 10).is_err());
        assert!(Amount::Percent("150%".into()).resolve("batch", 10).is_err());
    }

    #[test]
    fn failures_are_requests_that_went_wrong() {
        let failing: Vec<&str> = HostStatus::ALL
            .iter()
            .filter(|s| s.is_failure())
            .map(|s| s.as_str())
            .collect();
        assert_eq!(failing, ["exit_nonzero", "timeout", "lost", "error"]);
    }
}
