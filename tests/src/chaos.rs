//! Fault scenarios run against a real mesh: each kills a part with SIGKILL (or takes NATS away, or floods output past its limits), measures how the mesh settles, returns its figures and checks the promises that must survive.
//!
//! The scenarios are written once and run at two sizes: [`Size::CI`] by the `chaos` module of
//! the scenario binary (`tests/tests/mesh/chaos.rs`), [`Size::FULL`] by `execmesh-bench chaos`.
//! Each returns its figures when every invariant holds, or [`Broken`] naming the ones that did
//! not, with the figures.
//!
//! A new fault is a [`Scenario`] variant, a function here returning its figures through
//! [`Invariants::finish`], a size in [`Size`] if it needs one, and a line in the test module.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use execmesh_gateway::mcp::envelope::{Rejection, UNAVAILABLE};
use execmesh_nats_server::eventually::Outcome;
use execmesh_proto::jetstream::{
    AUDIT_STREAM, JOBS_BUCKET, MIN_STORE_BUDGET_BYTES, OUT_STREAM, StoreLimits,
};
use execmesh_proto::pb;
use execmesh_proto::subject::{DEFAULT_TENANT, job_key};
use prost::Message as _;
use serde::Serialize;
use serde_json::{Value, json};

use crate::process::job_processes;

mod cluster;
mod stall;
use crate::{
    AuditSink, Gateway, McpClient, Nats, NodeAgent, RunningAgent, RunningAudit, read_answer,
    rejection_of,
};
pub use cluster::{ClusterAgentFailoverFigures, ClusterLeaderFigures, ClusterRollingFigures};

/// The host every scenario runs its commands on.
const HOST: &str = "chaos-1";
/// The user every scenario calls as (the gateways run without a policy).
const USER: &str = "ops";
/// Chunks a paced job prints its lines in, [`PACE`] apart: the job runs for about
/// `CHUNKS × PACE`, long enough for faults to land while it prints.
const CHUNKS: u64 = 100;
/// The pause between two chunks of a paced job, in seconds as `sleep` takes it.
const PACE: &str = "0.05";
/// How often a settling condition is checked again.
const POLL: Duration = Duration::from_millis(20);
/// Longest any one state may take to settle before the scenario reports it broken.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);
/// Longest the mesh may take to work again after a fault has passed (calls answer, events
/// are audited).
const RECOVERY: Duration = Duration::from_secs(30);
/// Longest a client waits for one call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The gateway's `mesh_unreachable_wait_ms` in [`Scenario::NatsAwayDuringCalls`]: shorter than
/// the default so the scenario's outage holds many refusals at either size.
const MESH_WAIT: Duration = Duration::from_secs(1);
/// The gateway's `request_timeout_ms` there: shorter than the default so the clients are
/// calling again soon after NATS went away.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes of each numbered line a flooding job prints (`seq -f '%099g'` and its newline).
const FLOOD_LINE: u64 = 100;

/// One fault scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// nats-server killed (SIGKILL) and restarted on its store while a job prints: no line lost,
    /// repeated or reordered.
    NatsKillMidJob,
    /// A node-agent killed while its jobs run: the jobs are reported `lost` within a few
    /// heartbeats, and the restarted agent leaves none of their processes alive.
    AgentKill,
    /// A gateway replica killed (SIGKILL) while a job it started runs: another replica pages the
    /// whole job.
    ReplicaKill,
    /// The audit-sink killed and restarted again and again while tool calls go on: every call
    /// answers, every audit event is stored once, and the hash chain verifies.
    SinkKillCycles,
    /// nats-server killed while the mesh is idle and restarted after an outage: calls, host
    /// state and the audit trail recover without restarting any service.
    NatsOutageIdle,
    /// A job floods output past its user's quota and past MESH_OUT's size on an agent with the
    /// smallest JetStream budget: the job runs to its end, its dropped output is counted, the
    /// stream stays within its limit, heartbeats go on, and the next job is stored whole.
    DiskQuota,
    /// nats-server killed while clients call: every call answers within a bound (refused with
    /// HTTP 503 or a tool error, never a hang), and calls answer again once it is back.
    NatsAwayDuringCalls,
    /// On a 3-node JetStream cluster at R3, the meta leader and then MESH_OUT's leader killed
    /// (SIGKILL) while a client pages a job: no line lost or repeated, pages resume.
    ClusterLeaderKill,
    /// Every node of the cluster restarted in turn while clients call: every call answers or is
    /// refused with a retryable error, none hangs.
    ClusterRollingRestart,
    /// The only node an agent was given dies: it reconnects to another node by itself.
    ClusterAgentFailover,
    /// A node-agent frozen (SIGSTOP) while a client pages its job, past its heartbeat's TTL, as
    /// a JetStream leader election leaves it: within the gateway's grace its job is not lost;
    /// past it the job is marked lost, and once the agent goes on the client still pages every
    /// line to the job's real end.
    AgentStall,
}

/// How big each scenario runs.
#[derive(Debug, Clone)]
pub struct Size {
    /// Lines the job of [`Scenario::NatsKillMidJob`] prints.
    pub job_lines: u64,
    /// nats-server kills during that job.
    pub nats_kills: usize,
    /// How long nats-server stays down at each kill during that job.
    pub nats_down: Duration,
    /// Jobs running on the agent of [`Scenario::AgentKill`] when it is killed.
    pub agent_jobs: usize,
    /// The heartbeat interval of that agent.
    pub heartbeat: Duration,
    /// Lines the job of [`Scenario::ReplicaKill`] prints.
    pub replica_lines: u64,
    /// Tool calls made during [`Scenario::SinkKillCycles`].
    pub calls: usize,
    /// Clients making them concurrently.
    pub clients: usize,
    /// Sink kills among those calls.
    pub sink_kills: usize,
    /// How long nats-server stays away in [`Scenario::NatsOutageIdle`].
    pub outage: Duration,
    /// How long it stays away in [`Scenario::NatsAwayDuringCalls`], whose calls come from
    /// `clients` clients.
    pub calls_outage: Duration,
    /// Bytes the job of [`Scenario::DiskQuota`] prints: more than MESH_OUT holds at the
    /// smallest budget (8.4 MiB).
    pub flood_bytes: u64,
    /// The per-user output quota of that agent.
    pub user_quota: u64,
    /// Lines the job of [`Scenario::AgentStall`] prints.
    pub stall_lines: u64,
    /// Lines the job of [`Scenario::ClusterLeaderKill`] prints.
    pub cluster_lines: u64,
}

/// The invariants a scenario found broken, with its figures.
#[derive(Debug)]
pub struct Broken {
    /// The scenario.
    pub scenario: Scenario,
    /// Each invariant that did not hold.
    pub violations: Vec<Violation>,
    /// The scenario's figures as measured.
    pub figures: Value,
}

/// One invariant that did not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The invariant, as a promise ("no line lost").
    pub invariant: &'static str,
    /// What was found instead.
    pub found: String,
}

/// The invariants of one scenario, checked as it goes.
#[derive(Debug, Default)]
pub struct Invariants {
    violations: Vec<Violation>,
}

/// How the numbered lines `1..=expected` a job printed came back when paged.
#[derive(Debug, Clone, Serialize)]
pub struct LineTally {
    /// Lines the job printed.
    pub expected: u64,
    /// Lines paged back.
    pub seen: u64,
    /// Numbers that never came back.
    pub lost: u64,
    /// Lines that came back more than once (or were not the job's).
    pub duplicated: u64,
    /// Whether every line came back in the order printed.
    pub in_order: bool,
}

/// Figures of [`Scenario::NatsKillMidJob`].
#[derive(Debug, Serialize)]
pub struct NatsKillFigures {
    /// The job's lines, printed and paged back.
    pub lines: LineTally,
    /// nats-server kills.
    pub kills: usize,
    /// Lines stored when each kill came, all while the job ran.
    pub lines_stored_at_kills: Vec<u64>,
    /// How long nats-server stayed down each time.
    pub down_ms: u64,
    /// How long each restart took until the server was ready (JetStream store recovered).
    pub server_restart_ms: Vec<u64>,
    /// From the last restart until the job was seen ended.
    pub settle_ms: u64,
    /// The job's state at the end.
    pub job_state: String,
    /// The job's exit code.
    pub exit_code: Option<i64>,
}

/// Figures of [`Scenario::AgentKill`].
#[derive(Debug, Serialize)]
pub struct AgentKillFigures {
    /// Jobs running when the agent was killed.
    pub jobs: usize,
    /// The agent's heartbeat interval.
    pub heartbeat_ms: u64,
    /// How long its presence outlives its last heartbeat.
    pub presence_ttl_ms: u64,
    /// From the kill until a `job wait` answered `lost`.
    pub lost_after_ms: u64,
    /// The same, in heartbeats.
    pub lost_after_heartbeats: f64,
    /// Processes of the jobs alive after the kill (they outlive their agent).
    pub processes_left_by_kill: usize,
    /// From the restarted agent's first heartbeat until none of them was left.
    pub orphan_cleanup_ms: Option<u64>,
    /// Processes of the jobs alive at the end.
    pub orphans: usize,
    /// Jobs whose state is `lost` at the end.
    pub jobs_lost: usize,
}

/// Figures of [`Scenario::ReplicaKill`].
#[derive(Debug, Serialize)]
pub struct ReplicaKillFigures {
    /// The job's lines, started through the killed replica and paged back through the other.
    pub lines: LineTally,
    /// Lines stored when the replica was killed, while the job ran.
    pub lines_stored_at_kill: u64,
    /// From the kill until the other replica served a page of the job.
    pub first_page_on_replica_ms: u64,
    /// Whether the killed replica refused connections afterwards.
    pub killed_replica_gone: bool,
    /// The job's state at the end, as the surviving replica reports it.
    pub job_state: String,
}

/// Figures of [`Scenario::SinkKillCycles`].
#[derive(Debug, Serialize)]
pub struct SinkKillFigures {
    /// Tool calls made.
    pub calls: usize,
    /// Clients making them concurrently.
    pub clients: usize,
    /// Calls that failed or answered wrongly.
    pub call_errors: usize,
    /// Sink kills, each followed by a restart, spread over the calls.
    pub sink_kills: usize,
    /// Those that came before the last call had answered.
    pub kills_during_calls: usize,
    /// The audit rows.
    pub audit: AuditTally,
    /// Whether `execmesh-audit-sink verify` found the hash chain intact.
    pub chain_ok: bool,
    /// From the last call until the store held every event.
    pub settle_ms: Option<u64>,
}

/// Audit events published to `AUDIT` and rows the sink stored.
#[derive(Debug, Clone, Serialize)]
pub struct AuditTally {
    /// Distinct events in the `AUDIT` stream.
    pub expected: usize,
    /// Rows in the store.
    pub stored: usize,
    /// Rows stored more than once (same event id).
    pub duplicated: usize,
    /// Events never stored.
    pub missing: usize,
}

/// Figures of [`Scenario::NatsOutageIdle`].
#[derive(Debug, Serialize)]
pub struct NatsOutageFigures {
    /// How long nats-server stayed away.
    pub outage_ms: u64,
    /// How long its restart took until it was ready.
    pub server_restart_ms: u64,
    /// From the restart until a `bash` call answered.
    pub first_call_ms: Option<u64>,
    /// From the restart until `hosts` said the host is online.
    pub host_online_ms: Option<u64>,
    /// From the restart until the audit trail held the first answered call's events.
    pub audit_flowing_ms: Option<u64>,
    /// Whether the agent, the gateway and the sink all rode out the outage without a restart.
    pub services_survived: bool,
}

/// Figures of [`Scenario::DiskQuota`].
#[derive(Debug, Serialize)]
pub struct DiskQuotaFigures {
    /// Bytes the job printed.
    pub written_bytes: u64,
    /// Of those, bytes stored (the job's status, less the marker line).
    pub kept_bytes: u64,
    /// Bytes dropped past the quota, as the job's status counts them.
    pub dropped_bytes: u64,
    /// The per-user quota.
    pub user_quota_bytes: u64,
    /// MESH_OUT's bytes at the end, and its byte limit.
    pub stream_bytes: u64,
    pub stream_max_bytes: u64,
    /// The agent's heartbeat interval, and the longest gap between two heartbeats seen
    /// while the job ran.
    pub heartbeat_ms: u64,
    pub max_heartbeat_gap_ms: u64,
    /// Heartbeats seen while the job ran.
    pub heartbeats: usize,
    /// From the start of the job until it was seen ended.
    pub job_ms: u64,
    /// The job's state and exit code.
    pub job_state: String,
    pub exit_code: Option<i64>,
    /// From the next job's start until the audit store held its events.
    pub next_job_audited_ms: Option<u64>,
}

/// Figures of [`Scenario::NatsAwayDuringCalls`].
#[derive(Debug, Serialize)]
pub struct NatsAwayCallsFigures {
    /// Clients calling at once.
    pub clients: usize,
    /// How long nats-server stayed away.
    pub outage_ms: u64,
    /// The gateway's `mesh_unreachable_wait_ms`, and the bound every call must answer within.
    pub mesh_wait_ms: u64,
    pub bound_ms: u64,
    /// Calls made in all, and those sent while nats-server was away.
    pub calls: usize,
    pub calls_during_outage: usize,
    /// Of those, refused with HTTP 503 (`mesh_unreachable`) or answered with a tool error.
    pub refused: usize,
    pub tool_errors: usize,
    /// Of those, answered as asked (sent just before the restart, they waited for it).
    pub answered_during_outage: usize,
    /// Calls that answered otherwise, or not at all within the client's timeout.
    pub wrong: usize,
    /// The slowest answer to a call sent while nats-server was away, and of all calls.
    pub slowest_during_outage_ms: u64,
    pub slowest_ms: u64,
    /// From the restart until a call sent after it answered.
    pub first_success_ms: Option<u64>,
}

// === impl Scenario ===

impl Scenario {
    /// Every scenario, in the order `execmesh-bench chaos` runs them.
    pub const ALL: [Scenario; 11] = [
        Scenario::NatsKillMidJob,
        Scenario::AgentKill,
        Scenario::ReplicaKill,
        Scenario::SinkKillCycles,
        Scenario::NatsOutageIdle,
        Scenario::DiskQuota,
        Scenario::NatsAwayDuringCalls,
        Scenario::ClusterLeaderKill,
        Scenario::ClusterRollingRestart,
        Scenario::ClusterAgentFailover,
        Scenario::AgentStall,
    ];

    /// The scenario's name in reports (a JSON key).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::NatsKillMidJob => "nats_kill_mid_job",
            Scenario::AgentKill => "agent_kill",
            Scenario::ReplicaKill => "replica_kill",
            Scenario::SinkKillCycles => "sink_kill_cycles",
            Scenario::NatsOutageIdle => "nats_outage_idle",
            Scenario::DiskQuota => "disk_quota",
            Scenario::NatsAwayDuringCalls => "nats_away_during_calls",
            Scenario::ClusterLeaderKill => "cluster_leader_kill",
            Scenario::ClusterRollingRestart => "cluster_rolling_restart",
            Scenario::ClusterAgentFailover => "cluster_agent_failover",
            Scenario::AgentStall => "agent_stall",
        }
    }

    /// Runs the scenario at `size`: its figures as JSON, or what broke.
    pub async fn run(self, size: &Size) -> Result<Value, Broken> {
        match self {
            Scenario::NatsKillMidJob => nats_kill_mid_job(size).await.map(figures),
            Scenario::AgentKill => agent_kill(size).await.map(figures),
            Scenario::ReplicaKill => replica_kill(size).await.map(figures),
            Scenario::SinkKillCycles => sink_kill_cycles(size).await.map(figures),
            Scenario::NatsOutageIdle => nats_outage_idle(size).await.map(figures),
            Scenario::DiskQuota => disk_quota(size).await.map(figures),
            Scenario::NatsAwayDuringCalls => nats_away_during_calls(size).await.map(figures),
            Scenario::ClusterLeaderKill => cluster::cluster_leader_kill(size).await.map(figures),
            Scenario::ClusterRollingRestart => {
                cluster::cluster_rolling_restart(size).await.map(figures)
            }
            Scenario::ClusterAgentFailover => {
                cluster::cluster_agent_failover(size).await.map(figures)
            }
            Scenario::AgentStall => stall::agent_stall(size).await.map(figures),
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// === impl Size ===

impl Size {
    /// Small enough for the test suite on two cores (the eight single-server scenarios in about
    /// a minute and a half, the cluster scenarios in about another).
    pub const CI: Size = Size {
        job_lines: 30_000,
        nats_kills: 1,
        nats_down: Duration::from_millis(300),
        agent_jobs: 3,
        heartbeat: Duration::from_millis(300),
        replica_lines: 20_000,
        calls: 60,
        clients: 4,
        sink_kills: 2,
        outage: Duration::from_secs(1),
        // Longer than the ~3 s a call in flight at the kill takes to be refused, so every
        // client sends calls while NATS is away.
        calls_outage: Duration::from_secs(4),
        flood_bytes: 20 << 20,
        user_quota: 1 << 20,
        stall_lines: 100_000,
        // The size: paged in 20 pages of 10,000 lines, a few seconds in a debug build.
        cluster_lines: 200_000,
    };

    /// The sizes the fault-injection run of the mesh's promises used.
    pub const FULL: Size = Size {
        job_lines: 2_000_000,
        nats_kills: 2,
        nats_down: Duration::from_secs(1),
        agent_jobs: 20,
        heartbeat: Duration::from_millis(500),
        replica_lines: 200_000,
        calls: 2000,
        clients: 16,
        sink_kills: 6,
        outage: Duration::from_secs(5),
        calls_outage: Duration::from_secs(10),
        flood_bytes: 64 << 20,
        user_quota: 4 << 20,
        stall_lines: 1_000_000,
        cluster_lines: 2_000_000,
    };
}

// === impl Broken ===

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "chaos scenario {} broke its promises:", self.scenario)?;
        for v in &self.violations {
            writeln!(f, "  - {}: {}", v.invariant, v.found)?;
        }
        let figures = serde_json::to_string_pretty(&self.figures).unwrap_or_default();
        write!(f, "figures: {figures}")
    }
}

impl std::error::Error for Broken {}

// === impl Invariants ===

impl Invariants {
    /// `invariant` holds when `found` is `expected`.
    pub fn equal<T: PartialEq + fmt::Debug>(
        &mut self,
        invariant: &'static str,
        expected: T,
        found: T,
    ) {
        if expected != found {
            self.broken(invariant, format!("expected {expected:?}, found {found:?}"));
        }
    }

    /// `invariant` holds when `holds`; `found` says what was seen otherwise.
    pub fn holds(&mut self, invariant: &'static str, holds: bool, found: impl fmt::Display) {
        if !holds {
            self.broken(invariant, found.to_string());
        }
    }

    /// `invariant` holds when something settled (`took` is `Some`) within `bound`.
    pub fn settled(&mut self, invariant: &'static str, took: Option<Duration>, bound: Duration) {
        match took {
            Some(took) if took <= bound => {}
            Some(took) => self.broken(invariant, format!("took {took:?}, bound {bound:?}")),
            None => self.broken(invariant, format!("did not settle within {SETTLE_LIMIT:?}")),
        }
    }

    /// Tallies `lines` against `1..=expected` and holds [`Invariants::every_line_once`] of
    /// them: the tally, for the figures.
    pub fn lines_once(&mut self, expected: u64, lines: &[String]) -> LineTally {
        let tally = LineTally::of(expected, lines);
        self.every_line_once(&tally);
        tally
    }

    /// The line tally is perfect: every line once, in order.
    pub fn every_line_once(&mut self, lines: &LineTally) {
        self.equal("no line lost", 0, lines.lost);
        self.equal("no line repeated", 0, lines.duplicated);
        self.holds("lines in the order printed", lines.in_order, "out of order");
        self.equal("every line paged back", lines.expected, lines.seen);
    }

    fn broken(&mut self, invariant: &'static str, found: String) {
        self.violations.push(Violation { invariant, found });
    }

    /// The scenario's figures if every invariant held, [`Broken`] otherwise.
    pub fn finish<F: Serialize>(self, scenario: Scenario, figures: F) -> Result<F, Broken> {
        if self.violations.is_empty() {
            return Ok(figures);
        }
        Err(Broken {
            scenario,
            violations: self.violations,
            figures: self::figures(figures),
        })
    }
}

// === impl LineTally ===

impl LineTally {
    /// Tallies `lines` against the numbers `1..=expected`, one per line.
    pub fn of(expected: u64, lines: &[String]) -> LineTally {
        let mut seen_count = vec![0u32; expected as usize + 1];
        let mut duplicated = 0;
        let mut in_order = true;
        let mut last = 0u64;
        for line in lines {
            match line.parse::<u64>() {
                Ok(n) if (1..=expected).contains(&n) => {
                    in_order &= n > last;
                    last = n;
                    seen_count[n as usize] += 1;
                    if seen_count[n as usize] > 1 {
                        duplicated += 1;
                    }
                }
                _ => duplicated += 1,
            }
        }
        let lost = seen_count[1..].iter().filter(|&&c| c == 0).count() as u64;
        LineTally {
            expected,
            seen: lines.len() as u64,
            lost,
            duplicated,
            in_order,
        }
    }
}

// === the scenarios ===

/// nats-server is killed with SIGKILL `size.nats_kills` times while a job prints
/// `size.job_lines` numbered lines, each time restarted on its port and store after
/// `size.nats_down`. Every line comes back once, in order, and the job ends `exited 0`.
pub async fn nats_kill_mid_job(size: &Size) -> Result<NatsKillFigures, Broken> {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    let job = client.bash_bg(HOST, &paced_job(size.job_lines)).await;

    let mut invariants = Invariants::default();
    let mut lines_stored_at_kills = Vec::new();
    let mut server_restart_ms = Vec::new();
    for kill in 1..=size.nats_kills {
        let mark = size.job_lines * kill as u64 / (size.nats_kills as u64 + 1);
        let Some(progress) = reached(&client, &job, mark).await else {
            invariants.broken("the job prints", format!("fewer than {mark} lines stored"));
            break;
        };
        invariants.holds(
            "each kill lands while the job runs",
            progress.running,
            format_args!("the job had ended before kill {kill}"),
        );
        lines_stored_at_kills.push(progress.lines);
        nats.kill().await;
        tokio::time::sleep(size.nats_down).await;
        let started = Instant::now();
        nats.restart().await;
        server_restart_ms.push(ms(started.elapsed()));
    }

    // The wait for the end starts right after the last restart.
    let ended = job_end(&client, &job).await;
    let settle_ms = ended
        .as_ref()
        .map_or(ms(SETTLE_LIMIT), |(_, took)| ms(*took));
    let job_state = state_of(ended.as_ref());
    invariants.equal("the job ends exited", "exited", job_state.as_str());
    let exit_code = ended
        .as_ref()
        .and_then(|(job, _)| job["exit_code"].as_i64());
    invariants.equal("the job exits 0", Some(0), exit_code);
    let lines = invariants.lines_once(size.job_lines, &job_lines(&client, &job).await);
    invariants.finish(
        Scenario::NatsKillMidJob,
        NatsKillFigures {
            lines,
            kills: size.nats_kills,
            lines_stored_at_kills,
            down_ms: ms(size.nats_down),
            server_restart_ms,
            settle_ms,
            job_state,
            exit_code,
        },
    )
}

/// A node-agent running `size.agent_jobs` jobs (each with a child that left the job's process
/// group) is killed with SIGKILL. The gateway reports the jobs `lost` within a few heartbeats;
/// once the agent is restarted, no process of them is left.
pub async fn agent_kill(size: &Size) -> Result<AgentKillFigures, Broken> {
    let nats = Nats::start().await;
    let heartbeat_ms = ms(size.heartbeat);
    let mut agent = NodeAgent::new(&nats, HOST)
        .arg("--heartbeat-interval-ms", heartbeat_ms.to_string())
        .start()
        .await;
    let presence_ttl = presence_ttl(&nats, heartbeat_ms);
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    let mut jobs = Vec::new();
    for _ in 0..size.agent_jobs {
        jobs.push(client.bash_bg(HOST, "setsid sleep 1000 & sleep 1000").await);
    }
    // Both processes of each job run before the kill.
    let mut invariants = Invariants::default();
    let started = settle(|| async { jobs.iter().all(|j| job_processes(j).len() >= 2) }).await;
    invariants.holds("the jobs start", started.is_some(), "not every job started");

    agent.kill_hard().await;
    let lost = settle(|| async {
        let out = client
            .try_call(
                "job",
                json!({"action": "wait", "job": jobs[0], "timeout": 5}),
            )
            .await
            .ok()?;
        (out.structured()["job"]["state"] == "lost").then_some(())
    })
    .await;
    // The wait starts right after the kill.
    let lost_after = lost.map(|((), took)| took);
    let processes_left_by_kill = count_processes(&jobs);

    agent.restart().await;
    let cleanup = settle(|| async { count_processes(&jobs) == 0 }).await;
    let orphans = count_processes(&jobs);
    // A broken run must not leave its orphans to the next test: they go now, by pid.
    for pid in jobs.iter().flat_map(|job| job_processes(job)) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let mut jobs_lost = 0;
    for job in &jobs {
        let out = client.job("poll", job).await;
        if out.structured()["job"]["state"] == "lost" && out.structured()["done"] == true {
            jobs_lost += 1;
        }
    }

    // The dead agent's presence expires after its TTL (three heartbeats, in whole seconds);
    // the server's expiry sweep and the gateway's look add to that, hence the gross bound.
    invariants.settled(
        "jobs of a killed agent are reported lost within the presence TTL + 5 s",
        lost_after,
        presence_ttl + Duration::from_secs(5),
    );
    invariants.equal("no orphan process after the restart", 0, orphans);
    invariants.equal("every job ends lost", jobs.len(), jobs_lost);
    invariants.holds(
        "the jobs' processes outlive the killed agent until it restarts",
        processes_left_by_kill > 0,
        "none was left: the kill did not land while the jobs ran",
    );
    invariants.finish(
        Scenario::AgentKill,
        AgentKillFigures {
            jobs: jobs.len(),
            heartbeat_ms,
            presence_ttl_ms: ms(presence_ttl),
            lost_after_ms: lost_after.map_or(ms(SETTLE_LIMIT), ms),
            lost_after_heartbeats: lost_after.map_or(f64::NAN, |d| {
                (d.as_secs_f64() / size.heartbeat.as_secs_f64() * 10.0).round() / 10.0
            }),
            processes_left_by_kill,
            orphan_cleanup_ms: cleanup.map(|(_, took)| ms(took)),
            orphans,
            jobs_lost,
        },
    )
}

/// A job started through one gateway replica (the real binary) prints `size.replica_lines` lines;
/// the replica is killed with SIGKILL while it runs. Another replica (same key, no state shared but JetStream) pages the whole
/// job and sees it end.
pub async fn replica_kill(size: &Size) -> Result<ReplicaKillFigures, Broken> {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let survivor = Gateway::new(&nats).start().await;
    let mut doomed = survivor.spawn_replica(&nats).await;
    let token = survivor.mint(USER);
    let first = McpClient::new(doomed.url(), &token)
        .await
        .with_timeout(Duration::from_secs(2));
    let second = McpClient::new(&survivor.url(), &token)
        .await
        .with_timeout(CALL_TIMEOUT);
    let job = first.bash_bg(HOST, &paced_job(size.replica_lines)).await;

    let mut invariants = Invariants::default();
    let mark = size.replica_lines / 4;
    let at_kill = reached(&first, &job, mark).await;
    invariants.holds(
        "the kill lands while the job runs",
        at_kill.as_ref().is_some_and(|p| p.running),
        "the job had ended (or printed nothing) before the kill",
    );
    doomed.kill_hard().await;
    let first_page = settle(|| async { progress(&second, &job).await }).await;
    let first_page_ms = first_page.map(|(_, took)| ms(took));
    let gone = settle(|| async { first.try_call("whoami", json!({})).await.is_err() }).await;
    invariants.holds(
        "the killed replica is gone",
        gone.is_some(),
        "it still answers",
    );

    let job_state = state_of(job_end(&second, &job).await.as_ref());
    invariants.equal("the job ends exited", "exited", job_state.as_str());
    invariants.holds(
        "the other replica serves the job",
        first_page_ms.is_some(),
        "no page",
    );
    let lines = invariants.lines_once(size.replica_lines, &job_lines(&second, &job).await);
    invariants.finish(
        Scenario::ReplicaKill,
        ReplicaKillFigures {
            lines,
            lines_stored_at_kill: at_kill.map_or(0, |p| p.lines),
            first_page_on_replica_ms: first_page_ms.unwrap_or(ms(SETTLE_LIMIT)),
            killed_replica_gone: gone.is_some(),
            job_state,
        },
    )
}

/// `size.clients` clients make `size.calls` `bash` calls while the audit-sink is killed with
/// SIGKILL `size.sink_kills` times, spread over the calls, and restarted each time. Every call
/// answers; afterwards the store holds every event of the `AUDIT` stream exactly once and its
/// hash chain verifies.
pub async fn sink_kill_cycles(size: &Size) -> Result<SinkKillFigures, Broken> {
    let nats = Nats::start().await;
    let mut sink = AuditSink::new(&nats).start().await;
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let gw = Gateway::new(&nats).start().await;
    let token = gw.mint(USER);

    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for c in 0..size.clients {
        let client = McpClient::new(&gw.url(), &token)
            .await
            .with_timeout(CALL_TIMEOUT);
        let (done, errors) = (done.clone(), errors.clone());
        let calls: Vec<usize> = (c..size.calls).step_by(size.clients).collect();
        callers.push(tokio::spawn(async move {
            for n in calls {
                let expected = format!("call-{n}\n");
                let args = json!({"host": HOST, "cmd": format!("echo call-{n}")});
                let ok = match client.try_call("bash", args).await {
                    Ok(out) => !out.is_error() && out.structured()["output"] == expected,
                    Err(_) => false,
                };
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (mut kills, mut kills_during_calls) = (0, 0);
    for kill in 1..=size.sink_kills {
        let mark = size.calls * kill / (size.sink_kills + 1);
        if settle(|| async { done.load(Ordering::Relaxed) >= mark })
            .await
            .is_none()
        {
            break;
        }
        if done.load(Ordering::Relaxed) < size.calls {
            kills_during_calls += 1;
        }
        sink.kill_hard().await;
        kills += 1;
        sink.restart().await;
    }
    for caller in callers {
        if caller.await.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    }
    let calls_ended = Instant::now();

    // Settled when the store holds as many rows as the stream holds events (events of the
    // last calls may still be on their way to the stream: its length is read each time).
    let settled = settle(|| async { sink.head_seq().await >= audit_stream_len(&nats).await }).await;
    let settle_ms = settled.map(|_| ms(calls_ended.elapsed()));
    let audit = audit_tally(&nats, &sink).await;
    let (status, verify) = sink.verify();
    let chain_ok = status.success();

    let mut invariants = Invariants::default();
    let call_errors = errors.load(Ordering::Relaxed);
    invariants.equal("every call answers while the sink is down", 0, call_errors);
    invariants.equal(
        "the sink is killed as often as asked",
        size.sink_kills,
        kills,
    );
    invariants.holds(
        "the sink is killed while calls go on",
        kills_during_calls > 0,
        "every kill came after the last call",
    );
    invariants.equal("no audit event lost", 0, audit.missing);
    invariants.equal("no audit row stored twice", 0, audit.duplicated);
    invariants.equal("every event stored", audit.expected, audit.stored);
    invariants.holds("the hash chain verifies", chain_ok, verify.trim());
    invariants.finish(
        Scenario::SinkKillCycles,
        SinkKillFigures {
            calls: size.calls,
            clients: size.clients,
            call_errors,
            sink_kills: kills,
            kills_during_calls,
            audit,
            chain_ok,
            settle_ms,
        },
    )
}

/// With an agent, a gateway and the sink idle, nats-server is killed with SIGKILL and comes back
/// on its port and store after `size.outage`. Without restarting any of them, calls answer
/// again, the host is online again and audit events reach the store again.
pub async fn nats_outage_idle(size: &Size) -> Result<NatsOutageFigures, Broken> {
    let nats = Nats::start().await;
    let mut sink = AuditSink::new(&nats).start().await;
    let mut agent = NodeAgent::new(&nats, HOST)
        .arg("--heartbeat-interval-ms", "300")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(Duration::from_secs(5));
    let agent_instance = agent.instance().to_string();
    client.bash(HOST, "true").await;

    nats.kill().await;
    tokio::time::sleep(size.outage).await;
    let started = Instant::now();
    nats.restart().await;
    let restarted = Instant::now();
    let server_restart_ms = ms(started.elapsed());

    let answered = settle(|| async {
        let out = client
            .try_call("bash", json!({"host": HOST, "cmd": "echo back"}))
            .await;
        let out = out.ok()?;
        let trace = out.structured()["trace_id"].as_str()?.to_string();
        (out.structured()["output"] == "back\n").then_some(trace)
    })
    .await;
    let first_call_ms = answered.as_ref().map(|_| ms(restarted.elapsed()));
    let online = settle(|| async {
        let out = client
            .try_call("hosts", json!({"selector": HOST}))
            .await
            .ok()?;
        (out.structured()["online"] == 1).then_some(())
    })
    .await;
    let host_online_ms = online.map(|_| ms(restarted.elapsed()));
    let audit_flowing_ms = match &answered {
        Some((trace, _)) => audit_stored(&sink, trace)
            .await
            .then(|| ms(restarted.elapsed())),
        None => None,
    };
    let services_survived = agent.exited().is_none()
        && sink.exited().is_none()
        && agent
            .presence()
            .await
            .is_some_and(|p| p.agent_instance == agent_instance);

    let mut invariants = Invariants::default();
    let bound = RECOVERY;
    invariants.settled(
        "calls answer again after the outage",
        first_call_ms.map(Duration::from_millis),
        bound,
    );
    invariants.settled(
        "the host is online again",
        host_online_ms.map(Duration::from_millis),
        bound,
    );
    invariants.settled(
        "audit events reach the store again",
        audit_flowing_ms.map(Duration::from_millis),
        bound,
    );
    invariants.holds(
        "no service restarts",
        services_survived,
        "a service exited or the agent is a new instance",
    );
    invariants.finish(
        Scenario::NatsOutageIdle,
        NatsOutageFigures {
            outage_ms: ms(size.outage),
            server_restart_ms,
            first_call_ms,
            host_online_ms,
            audit_flowing_ms,
            services_survived,
        },
    )
}

/// On an agent with the smallest JetStream budget and a per-user quota of `size.user_quota`, a
/// job prints `size.flood_bytes` (more than MESH_OUT holds). The job runs to its end; its status
/// counts what was dropped, kept and dropped add up to what it printed, its stored output ends
/// with the quota's marker; MESH_OUT stays within its limit; heartbeats go on at their interval;
/// and another user's job afterwards is stored whole and audited.
pub async fn disk_quota(size: &Size) -> Result<DiskQuotaFigures, Broken> {
    let heartbeat = Duration::from_millis(300);
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    let agent = NodeAgent::new(&nats, HOST)
        .arg(
            "--jetstream-budget-bytes",
            MIN_STORE_BUDGET_BYTES.to_string(),
        )
        .arg("--max-output-bytes-per-user", size.user_quota.to_string())
        .arg("--heartbeat-interval-ms", ms(heartbeat).to_string())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    let stream_max_bytes = StoreLimits::from_budget(MIN_STORE_BUDGET_BYTES).out_bytes as u64;

    let lines = size.flood_bytes / FLOOD_LINE;
    let written_bytes = lines * FLOOD_LINE;
    let started = Instant::now();
    let job = client
        .bash_bg(HOST, &format!("seq -f '%099g' 1 {lines}"))
        .await;
    let job_ended = AtomicBool::new(false);
    let (ended, beats) = tokio::join!(
        async {
            let ended = job_end(&client, &job).await;
            job_ended.store(true, Ordering::Relaxed);
            ended
        },
        heartbeats_until(&agent, &job_ended),
    );
    let job_ms = ms(started.elapsed());
    let job_state = state_of(ended.as_ref());
    let status = ended.map(|(status, _)| status).unwrap_or_default();
    let exit_code = status["exit_code"].as_i64();
    let dropped_by = dropped_by(&nats, &job).await;
    let dropped_bytes = status["dropped_bytes"].as_u64().unwrap_or(0);
    let output = job_lines(&client, &job).await.join("\n");
    let marker = output
        .rfind("[execmesh: output quota")
        .map_or("", |at| &output[at..]);
    // The status counts the stored marker line (and its newline) with the job's output.
    let stored_bytes = status["bytes"].as_u64().unwrap_or(0);
    let kept_bytes = stored_bytes.saturating_sub(marker.len() as u64 + 1);
    let stream_bytes = stream_bytes(&nats, OUT_STREAM).await;
    let gaps = beats.windows(2).map(|w| w[1].saturating_sub(w[0]));
    let max_heartbeat_gap_ms = gaps.max().unwrap_or(ms(SETTLE_LIMIT));

    // Another user's job afterwards is stored whole, and its audit events reach the store.
    let next = gw.client("ops-next").await.with_timeout(CALL_TIMEOUT);
    let next_started = Instant::now();
    let out = next
        .try_call("bash", json!({"host": HOST, "cmd": "seq 1 3"}))
        .await
        .ok();
    let next_output = out.as_ref().map(|o| o.structured()["output"].clone());
    let next_trace = out
        .as_ref()
        .and_then(|o| o.structured()["trace_id"].as_str().map(str::to_string));
    let next_job_audited_ms = match &next_trace {
        Some(trace) => audit_stored(&sink, trace)
            .await
            .then(|| ms(next_started.elapsed())),
        None => None,
    };
    let online = next
        .try_call("hosts", json!({"selector": HOST}))
        .await
        .is_ok_and(|o| o.structured()["online"] == 1);

    let mut invariants = Invariants::default();
    invariants.holds(
        "the job prints more than MESH_OUT holds",
        written_bytes > stream_max_bytes,
        format_args!("{written_bytes} bytes against a limit of {stream_max_bytes}"),
    );
    invariants.equal("the job runs to its end", "exited", job_state.as_str());
    invariants.equal("the job exits 0", Some(0), exit_code);
    invariants.equal(
        "the status names the quota that dropped output",
        Some(pb::OutputLimit::UserQuota),
        dropped_by,
    );
    invariants.holds(
        "the status says why output was dropped",
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&format!("output quota of {}", size.user_quota))),
        format_args!("reason {}", status["reason"]),
    );
    invariants.equal(
        "kept and dropped add up to what the job printed",
        written_bytes,
        kept_bytes + dropped_bytes,
    );
    invariants.holds(
        "no more is kept than the quota",
        kept_bytes <= size.user_quota,
        format_args!("{kept_bytes} bytes kept"),
    );
    invariants.holds(
        "the output ends with the quota's marker",
        marker.ends_with("further output is counted and dropped]"),
        format_args!("output ends {:?}", output.lines().last()),
    );
    invariants.holds(
        "MESH_OUT stays within its limit",
        stream_bytes <= stream_max_bytes,
        format_args!("{stream_bytes} bytes against a limit of {stream_max_bytes}"),
    );
    invariants.holds(
        "heartbeats go on while the job floods",
        max_heartbeat_gap_ms < ms(heartbeat) * 3,
        format_args!("a gap of {max_heartbeat_gap_ms} ms"),
    );
    invariants.holds("the host stays online", online, "hosts says it is not");
    invariants.equal(
        "the next job is stored whole",
        Some(json!("1\n2\n3\n")),
        next_output,
    );
    invariants.settled(
        "the next job is audited",
        next_job_audited_ms.map(Duration::from_millis),
        RECOVERY,
    );
    invariants.finish(
        Scenario::DiskQuota,
        DiskQuotaFigures {
            written_bytes,
            kept_bytes,
            dropped_bytes,
            user_quota_bytes: size.user_quota,
            stream_bytes,
            stream_max_bytes,
            heartbeat_ms: ms(heartbeat),
            max_heartbeat_gap_ms,
            heartbeats: beats.len(),
            job_ms,
            job_state,
            exit_code,
            next_job_audited_ms,
        },
    )
}

/// How one raw `tools/call` answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The call's output, as asked.
    Answered,
    /// HTTP 503 with the JSON-RPC error `mesh_unreachable` and `Retry-After`.
    Refused,
    /// A tool result marked as an error.
    ToolError,
    /// Anything else, or no answer within the client's timeout.
    Wrong,
}

/// One call of [`nats_away_during_calls`]: when it was sent, how long it took, how it answered.
#[derive(Debug, Clone, Copy)]
struct Call {
    sent: Instant,
    took: Duration,
    answer: Answer,
}

/// `size.clients` clients call `bash` one call after another while nats-server is killed with
/// SIGKILL and restarted on its store after `size.calls_outage`. Every call sent while it is
/// away answers within the gateway's `request_timeout_ms`, twice its `mesh_unreachable_wait_ms`
/// and a second, refused (HTTP 503), with a tool error or, sent just before the restart, as
/// asked; every call answers as one of those or as asked; and calls answer
/// as asked again after the restart.
pub async fn nats_away_during_calls(size: &Size) -> Result<NatsAwayCallsFigures, Broken> {
    // A call sent as NATS dies finds the connection still up: it waits for its reply
    // (`request_timeout`) before it waits for the connection to come back.
    let bound = REQUEST_TIMEOUT + MESH_WAIT * 2 + Duration::from_secs(1);
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| {
            c.mesh_unreachable_wait = MESH_WAIT;
            // A call in flight when NATS goes waits this long for its reply; shorter than the
            // default so the clients are calling again while NATS is still away.
            c.request_timeout = REQUEST_TIMEOUT;
        })
        .start()
        .await;
    let token = gw.mint(USER);
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..size.clients {
        let (http, url, token) = (gw.http_client(), gw.url(), token.clone());
        let (calls, stop) = (calls.clone(), stop.clone());
        callers.push(tokio::spawn(async move {
            let mut id = c as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                let answer = raw_bash(&http, &url, &token, id).await;
                let call = Call {
                    sent,
                    took: sent.elapsed(),
                    answer,
                };
                calls.lock().expect("calls").push(call);
            }
        }));
    }
    let warm = answered_since(&calls, Instant::now()).await;

    let killed = Instant::now();
    nats.kill().await;
    tokio::time::sleep(size.calls_outage).await;
    nats.restart().await;
    let restarted = Instant::now();
    let back = answered_since(&calls, restarted).await;
    let first_success_ms = back.map(|(_, took)| ms(took));
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let _ = caller.await;
    }

    let calls = std::mem::take(&mut *calls.lock().expect("calls"));
    let during: Vec<&Call> = calls
        .iter()
        .filter(|c| c.sent >= killed && c.sent < restarted)
        .collect();
    let count = |answer: Answer| during.iter().filter(|c| c.answer == answer).count();
    let slowest = |calls: &mut dyn Iterator<Item = &Call>| calls.map(|c| c.took).max();
    let slowest_during = slowest(&mut during.iter().copied()).unwrap_or_default();
    let slowest_all = slowest(&mut calls.iter()).unwrap_or_default();
    let wrong = calls.iter().filter(|c| c.answer == Answer::Wrong).count();
    let refused = count(Answer::Refused);
    let tool_errors = count(Answer::ToolError);

    let mut invariants = Invariants::default();
    invariants.holds(
        "calls answer before the outage",
        warm.is_some(),
        "no call answered",
    );
    invariants.holds(
        "calls fail fast while NATS is away",
        refused + tool_errors > 0,
        format_args!("none of {} calls was refused", during.len()),
    );
    invariants.holds(
        "every call during the outage answers within the bound",
        slowest_during < bound,
        format_args!("the slowest took {slowest_during:?}, bound {bound:?}"),
    );
    invariants.equal(
        "every call answers, is refused or is a tool error",
        0,
        wrong,
    );
    invariants.settled(
        "calls answer again after the restart",
        first_success_ms.map(Duration::from_millis),
        RECOVERY,
    );
    invariants.finish(
        Scenario::NatsAwayDuringCalls,
        NatsAwayCallsFigures {
            clients: size.clients,
            outage_ms: ms(size.calls_outage),
            mesh_wait_ms: ms(MESH_WAIT),
            bound_ms: ms(bound),
            calls: calls.len(),
            calls_during_outage: during.len(),
            refused,
            tool_errors,
            answered_during_outage: count(Answer::Answered),
            wrong,
            slowest_during_outage_ms: ms(slowest_during),
            slowest_ms: ms(slowest_all),
            first_success_ms,
        },
    )
}

// === what the scenarios share ===

/// Calls `bash` (`echo ok`) with a bare JSON-RPC request, as a client without a session would,
/// and says how it answered.
async fn raw_bash(http: &reqwest::Client, url: &str, token: &str, id: u64) -> Answer {
    raw_bash_told(http, url, token, id).await.0
}

/// [`raw_bash`], with what came back when it is [`Answer::Wrong`]: the HTTP status and body, or
/// the client's error.
async fn raw_bash_told(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    id: u64,
) -> (Answer, Option<(u16, Value)>) {
    let request = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "bash", "arguments": {"host": HOST, "cmd": "echo ok"}}});
    let sent = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&request)
        .timeout(CALL_TIMEOUT)
        .send()
        .await;
    let response = match sent {
        Ok(response) => response,
        Err(e) => return (Answer::Wrong, Some((0, json!(format!("no answer: {e}"))))),
    };
    let (status, retry_after, body) = read_answer(response).await;
    let result = &body["result"];
    let answer = match status {
        503 if body["error"]["code"] == UNAVAILABLE
            && rejection_of(&body) == Some(Rejection::MeshUnreachable)
            && retry_after.is_some() =>
        {
            Answer::Refused
        }
        200 if result["isError"] == true => Answer::ToolError,
        200 if result["structuredContent"]["output"] == "ok\n" => Answer::Answered,
        _ => Answer::Wrong,
    };
    let told = (answer == Answer::Wrong).then_some((status, body));
    (answer, told)
}

/// The heartbeat times (unix ms) the agent's presence showed, each once, sampled every
/// [`POLL`] until `done` and four were seen.
async fn heartbeats_until(agent: &RunningAgent, done: &AtomicBool) -> Vec<u64> {
    let mut beats: Vec<u64> = Vec::new();
    // At least a few beats, however soon the job ends.
    while !done.load(Ordering::Relaxed) || beats.len() < 4 {
        if let Some(p) = agent.presence().await
            && beats.last() != Some(&p.heartbeat_at_ms)
        {
            beats.push(p.heartbeat_at_ms);
        }
        tokio::time::sleep(POLL).await;
    }
    beats
}

/// Whether the store holds an audit event of `trace` within [`SETTLE_LIMIT`].
async fn audit_stored(sink: &RunningAudit, trace: &str) -> bool {
    let query = pb::AuditQuery {
        trace_id: trace.to_string(),
        ..Default::default()
    };
    settle(|| async {
        let page = sink.try_query(query.clone()).await.ok()?;
        (!page.records.is_empty()).then_some(())
    })
    .await
    .is_some()
}

/// How far a job has got, from a one-line tail page.
struct Progress {
    /// Lines stored so far.
    lines: u64,
    /// Whether the job still runs.
    running: bool,
}

/// The lifetime of the heartbeat of an agent beating every `heartbeat_ms`, as the agent computes it.
fn presence_ttl(nats: &Nats, heartbeat_ms: u64) -> Duration {
    let mut config = execmesh_node_agent::config::Config::new(&nats.url(), HOST)
        .expect("an agent configuration");
    config.heartbeat_interval_ms = heartbeat_ms;
    config.presence_ttl()
}

/// The job's progress, or `None` if the gateway cannot say now (NATS restarting).
async fn progress(client: &McpClient, job: &str) -> Option<Progress> {
    let args = json!({"action": "poll", "job": job, "tail": 1, "max_lines": 1});
    let out = client.try_call("job", args).await.ok()?;
    let s = out.structured();
    if out.is_error() {
        return None;
    }
    let lines = s["first_line"].as_u64().unwrap_or(0) + s["lines"].as_u64().unwrap_or(0);
    Some(Progress {
        lines,
        running: s["job"]["state"] == "running",
    })
}

/// The job's status (the `job` of a `wait` answer) once it no longer runs, and how long that
/// took; `None` if it still ran after [`SETTLE_LIMIT`].
async fn job_end(client: &McpClient, job: &str) -> Option<(Value, Duration)> {
    settle(|| async {
        let args = json!({"action": "wait", "job": job, "timeout": 5});
        let out = client.try_call("job", args).await.ok()?;
        let status = out.structured()["job"].clone();
        (status["state"].is_string() && status["state"] != "running").then_some(status)
    })
    .await
}

/// The state of an ended job, `running` if it did not end.
fn state_of(ended: Option<&(Value, Duration)>) -> String {
    ended
        .and_then(|(status, _)| status["state"].as_str())
        .unwrap_or("running")
        .to_string()
}

/// The job's progress once it has stored `mark` lines or ended; `None` if neither happened
/// within [`SETTLE_LIMIT`].
async fn reached(client: &McpClient, job: &str, mark: u64) -> Option<Progress> {
    let reached = settle(|| async {
        let p = progress(client, job).await?;
        (p.lines >= mark || !p.running).then_some(p)
    })
    .await;
    reached.map(|(p, _)| p)
}

/// A job printing the numbers `1..=lines`, one per line, in [`CHUNKS`] chunks [`PACE`] apart.
fn paced_job(lines: u64) -> String {
    paced_job_with(lines, PACE)
}

/// A job printing the numbers `1..=lines`, one per line, in [`CHUNKS`] chunks `pace` seconds
/// apart.
fn paced_job_with(lines: u64, pace: &str) -> String {
    let per = lines / CHUNKS;
    let rest = lines - per * CHUNKS;
    format!(
        "for i in $(seq 0 {}); do seq $(( i*{per}+1 )) $(( (i+1)*{per} )); sleep {pace}; done; \
         seq {} {lines}",
        CHUNKS - 1,
        lines - rest + 1
    )
}

/// What a client paging a job from its start saw.
struct Followed {
    /// Every line, in the order paged.
    lines: Vec<String>,
    /// When each answered page was sent and when it answered.
    answered: Vec<(Instant, Instant)>,
    /// Page calls that failed (timed out, refused, a tool error) and were asked again.
    failed: usize,
    /// The slowest page call.
    slowest: Duration,
    /// The job's state on the page that said the output was done.
    done_state: Option<String>,
}

/// Pages `job` from its start, as a client following it does, until it is done, asking again (same cursor) when a page fails,
/// for at most the settle limit.
async fn follow(client: McpClient, job: String) -> Followed {
    let mut followed = Followed {
        lines: Vec::new(),
        answered: Vec::new(),
        failed: 0,
        slowest: Duration::ZERO,
        done_state: None,
    };
    let mut cursor: Option<String> = None;
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        let args = largest_page(&job, cursor.as_deref());
        let sent = Instant::now();
        let answer = client.try_call("job", args).await;
        followed.slowest = followed.slowest.max(sent.elapsed());
        let out = match answer {
            Ok(out) if !out.is_error() => out,
            _ => {
                followed.failed += 1;
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        followed.answered.push((sent, Instant::now()));
        let s = out.structured();
        let page = s["output"].as_str().unwrap_or_default();
        followed.lines.extend(page.lines().map(str::to_string));
        if s["done"] == true {
            followed.done_state = s["job"]["state"].as_str().map(str::to_string);
            break;
        }
        if let Some(next) = s["next_cursor"].as_str() {
            cursor = Some(next.to_string());
        }
        if page.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    followed
}

/// The arguments of a `job` poll for the largest page of `job`, from `cursor` (its start
/// without one).
fn largest_page(job: &str, cursor: Option<&str>) -> Value {
    let mut args =
        json!({"action": "poll", "job": job, "max_lines": 10_000, "max_bytes": 1_048_576});
    if let Some(c) = cursor {
        args["cursor"] = json!(c);
    }
    args
}

/// Every line of a finished job, paged from its start in the largest pages.
pub async fn job_lines(client: &McpClient, job: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cursor: Option<String> = None;
    let deadline = Instant::now() + SETTLE_LIMIT;
    while Instant::now() < deadline {
        let args = largest_page(job, cursor.as_deref());
        let out = client.call("job", args).await;
        let s = out.structured();
        lines.extend(
            s["output"]
                .as_str()
                .unwrap_or_default()
                .lines()
                .map(str::to_string),
        );
        if s["done"] == true {
            break;
        }
        match s["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    lines
}

/// Checks `condition` every 20 ms until it returns `Some` (or `true`), for at most
/// [`SETTLE_LIMIT`]: its value and how long that took, or `None`. Unlike `eventually`, not
/// settling is a figure here, not a panic.
async fn settle<F, Fut, T>(mut condition: F) -> Option<(T, Duration)>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome<Value = T>,
{
    let started = Instant::now();
    loop {
        let remaining = SETTLE_LIMIT.saturating_sub(started.elapsed());
        if let Ok(outcome) = tokio::time::timeout(remaining, condition()).await
            && let Some(value) = outcome.settled()
        {
            return Some((value, started.elapsed()));
        }
        if started.elapsed() >= SETTLE_LIMIT {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits, as [`settle`] does, until one of `calls` sent at or after `since` answered as asked:
/// how long that took, or `None`.
async fn answered_since(calls: &Arc<Mutex<Vec<Call>>>, since: Instant) -> Option<((), Duration)> {
    settle(|| async {
        let calls = calls.lock().expect("calls");
        calls
            .iter()
            .any(|c| c.sent >= since && c.answer == Answer::Answered)
    })
    .await
}

/// How many processes of `jobs` are alive.
fn count_processes(jobs: &[String]) -> usize {
    jobs.iter().map(|job| job_processes(job).len()).sum()
}

/// The limit that cut `job`'s output off on [`HOST`], as its status in `mesh_jobs` names it
/// (the tools show only its reason in words).
async fn dropped_by(nats: &Nats, job: &str) -> Option<pb::OutputLimit> {
    let token = |kind, value| execmesh_proto::subject::Token::parse(kind, value).ok();
    let key = job_key(
        &token("tenant", DEFAULT_TENANT)?,
        &token("host id", HOST)?,
        &token("job id", job)?,
    );
    let kv = nats
        .jetstream()
        .await
        .get_key_value(JOBS_BUCKET)
        .await
        .ok()?;
    let value = kv.get(&key).await.ok()??;
    let status = pb::JobStatus::decode(value).ok()?;
    pb::OutputLimit::try_from(status.dropped_by).ok()
}

/// Bytes stored in `stream` now.
async fn stream_bytes(nats: &Nats, stream: &str) -> u64 {
    let js = nats.jetstream().await;
    let mut stream = js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("{stream} exists: {e}"));
    stream.info().await.expect("stream info").state.bytes
}

/// Messages in the `AUDIT` stream now.
async fn audit_stream_len(nats: &Nats) -> u64 {
    let js = nats.jetstream().await;
    let mut stream = js
        .get_stream(AUDIT_STREAM)
        .await
        .unwrap_or_else(|e| panic!("{AUDIT_STREAM} exists: {e}"));
    stream
        .info()
        .await
        .expect("AUDIT stream info")
        .state
        .messages
}

/// The events of the `AUDIT` stream against the rows of the store.
async fn audit_tally(nats: &Nats, sink: &RunningAudit) -> AuditTally {
    let published: BTreeSet<String> = nats
        .stored_messages(AUDIT_STREAM)
        .await
        .into_iter()
        .map(|m| {
            pb::AuditEvent::decode(m.payload)
                .expect("AUDIT holds AuditEvents")
                .id
        })
        .collect();
    let rows: Vec<String> = sink
        .query_all(pb::AuditQuery::default())
        .await
        .into_iter()
        .map(|r| r.event.map(|e| e.id).unwrap_or_default())
        .collect();
    let distinct: BTreeSet<&String> = rows.iter().collect();
    AuditTally {
        expected: published.len(),
        stored: rows.len(),
        duplicated: rows.len() - distinct.len(),
        missing: published.iter().filter(|id| !distinct.contains(id)).count(),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A scenario's figures as JSON.
fn figures<F: Serialize>(figures: F) -> Value {
    serde_json::to_value(figures).expect("figures serialize")
}

#[cfg(test)]
mod tests {
    use super::{Invariants, LineTally, Scenario};

    fn lines(numbers: &[&str]) -> Vec<String> {
        numbers.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_tally_counts_lost_repeated_foreign_and_reordered_lines() {
        let perfect = LineTally::of(3, &lines(&["1", "2", "3"]));
        assert_eq!(
            (
                perfect.seen,
                perfect.lost,
                perfect.duplicated,
                perfect.in_order
            ),
            (3, 0, 0, true)
        );
        // 4 never came, 3 came twice, `x` is not the job's, 2 came after 3.
        let broken = LineTally::of(4, &lines(&["1", "3", "2", "3", "x"]));
        assert_eq!(
            (broken.seen, broken.lost, broken.duplicated, broken.in_order),
            (5, 1, 2, false)
        );
    }

    #[test]
    fn a_broken_promise_is_named_with_the_figures() {
        let mut invariants = Invariants::default();
        invariants.every_line_once(&LineTally::of(2, &lines(&["2", "1"])));
        let broken = invariants
            .finish(Scenario::NatsKillMidJob, "figures")
            .expect_err("out of order is broken");
        let named: Vec<&str> = broken.violations.iter().map(|v| v.invariant).collect();
        assert_eq!(named, ["lines in the order printed"]);
        let text = broken.to_string();
        assert!(text.contains("nats_kill_mid_job"), "{text}");
        assert!(text.contains("figures"), "{text}");
        assert!(Invariants::default().finish(Scenario::AgentKill, 1).is_ok());
    }
}
