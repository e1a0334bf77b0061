//! An agent frozen past its heartbeat's TTL while a client pages its job: the gap a JetStream leader election leaves in a live agent's heartbeats, made on a single server with SIGSTOP.

use std::time::{Duration, Instant};

use execmesh_gateway::core::jobs::state::DEFAULT_LOST_GRACE;
use serde::Serialize;
use serde_json::json;

use super::{
    Broken, CALL_TIMEOUT, HOST, Invariants, LineTally, POLL, Scenario, Size, USER, follow, ms,
    paced_job_with, presence_ttl, reached, settle,
};
use crate::{Gateway, McpClient, Nats, NodeAgent, RunningAgent};

/// The pause between two chunks of the job: it prints for about 10 s, long enough for both
/// stalls to land while it runs.
const STALL_PACE: &str = "0.1";
/// How far past TTL + grace the long stall lasts: long enough that the job is surely marked
/// lost.
const PAST_GRACE: Duration = Duration::from_secs(2);

/// Figures of [`Scenario::AgentStall`].
#[derive(Debug, Serialize)]
pub struct AgentStallFigures {
    /// The agent's heartbeat interval and its heartbeat's TTL; the gateway's grace after it.
    pub heartbeat_ms: u64,
    pub presence_ttl_ms: u64,
    pub lost_grace_ms: u64,
    /// How long the agent was frozen each time.
    pub short_stall_ms: u64,
    pub long_stall_ms: u64,
    /// Whether its heartbeat expired during each stall (the host showed offline).
    pub offline_in_short_stall: bool,
    pub offline_in_long_stall: bool,
    /// The job states a reader saw during each stall, each change once.
    pub states_in_short_stall: Vec<String>,
    pub states_in_long_stall: Vec<String>,
    /// The first job's lines, paged by a client throughout the short stall, and its state on
    /// the page that ended the paging.
    pub lines: LineTally,
    pub paged_until: Option<String>,
    /// The second job's lines, paged from its start once its agent was back, and its state on
    /// the page that ended the paging.
    pub lines_after_lost: LineTally,
    pub paged_after_lost_until: Option<String>,
}

/// Two jobs printing `size.stall_lines` lines each, on an agent (heartbeat `size.heartbeat`)
/// frozen once during each. During the first, paged by a client all along, the agent is frozen
/// for a little longer than its heartbeat's TTL, within the gateway's grace: its heartbeat
/// expires, the job is not lost, and the client pages every line once up to the job's exit.
/// During the second the agent is frozen past TTL + grace: the job is marked lost; when the
/// agent goes on it writes the rest over the mark, and a client paging the job then reads every
/// line once up to its real end, not to the mark.
pub async fn agent_stall(size: &Size) -> Result<AgentStallFigures, Broken> {
    let nats = Nats::start().await;
    let heartbeat_ms = ms(size.heartbeat);
    let agent = NodeAgent::new(&nats, HOST)
        .arg("--heartbeat-interval-ms", heartbeat_ms.to_string())
        .start()
        .await;
    let ttl = presence_ttl(&nats, heartbeat_ms);
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    let mut invariants = Invariants::default();

    let job = client
        .bash_bg(HOST, &paced_job_with(size.stall_lines, STALL_PACE))
        .await;
    let following = tokio::spawn(follow(
        gw.client(USER).await.with_timeout(CALL_TIMEOUT),
        job.clone(),
    ));
    let at_short = reached(&client, &job, size.stall_lines / 5).await;
    invariants.holds(
        "the short stall lands while the job runs",
        at_short.as_ref().is_some_and(|p| p.running),
        "the job had ended before it",
    );
    // Half the grace past the TTL: the heartbeat surely expired, the grace not yet out.
    let short_stall = ttl + DEFAULT_LOST_GRACE / 2;
    let short = stall(&agent, &client, &job, short_stall).await;
    invariants.holds(
        "the heartbeat expires during the short stall",
        short.offline,
        "the host never showed offline: the stall proved nothing",
    );
    invariants.holds(
        "a job is not lost while its agent is silent for less than TTL + grace",
        !short.states.iter().any(|s| s == "lost"),
        format_args!("a reader saw {:?}", short.states),
    );
    let followed = following.await.expect("the pager does not panic");
    invariants.equal(
        "the client pages the first job to its exit",
        Some("exited"),
        followed.done_state.as_deref(),
    );
    let lines = invariants.lines_once(size.stall_lines, &followed.lines);

    let job = client
        .bash_bg(HOST, &paced_job_with(size.stall_lines, STALL_PACE))
        .await;
    let at_long = reached(&client, &job, size.stall_lines / 5).await;
    invariants.holds(
        "the long stall lands while the job runs",
        at_long.as_ref().is_some_and(|p| p.running),
        "the job had ended before it",
    );
    let long_stall = ttl + DEFAULT_LOST_GRACE + PAST_GRACE;
    let long = stall(&agent, &client, &job, long_stall).await;
    invariants.holds(
        "a job whose agent is silent past TTL + grace is marked lost",
        long.states.iter().any(|s| s == "lost"),
        format_args!("a reader saw {:?}", long.states),
    );
    let back = settle(|| async { agent.presence().await.map(|_| ()) }).await;
    invariants.holds("the agent heartbeats again", back.is_some(), "it did not");
    let after = follow(
        gw.client(USER).await.with_timeout(CALL_TIMEOUT),
        job.clone(),
    )
    .await;
    invariants.equal(
        "a client paging the job after its agent came back reads to its real end",
        Some("exited"),
        after.done_state.as_deref(),
    );
    let lines_after_lost = invariants.lines_once(size.stall_lines, &after.lines);
    invariants.finish(
        Scenario::AgentStall,
        AgentStallFigures {
            heartbeat_ms,
            presence_ttl_ms: ms(ttl),
            lost_grace_ms: ms(DEFAULT_LOST_GRACE),
            short_stall_ms: ms(short_stall),
            long_stall_ms: ms(long_stall),
            offline_in_short_stall: short.offline,
            offline_in_long_stall: long.offline,
            states_in_short_stall: short.states,
            states_in_long_stall: long.states,
            lines,
            paged_until: followed.done_state,
            lines_after_lost,
            paged_after_lost_until: after.done_state,
        },
    )
}

/// What a reader saw while the agent was frozen.
struct Stall {
    /// Whether the host showed offline (its heartbeat expired) at some point.
    offline: bool,
    /// The job's states as `job poll` showed them, each change once.
    states: Vec<String>,
}

/// Freezes `agent` for `how_long`, reading its presence and the job's state meanwhile, then
/// lets it go on and reads once more (the state right after its first heartbeat).
async fn stall(agent: &RunningAgent, client: &McpClient, job: &str, how_long: Duration) -> Stall {
    let mut seen = Stall {
        offline: false,
        states: Vec::new(),
    };
    agent.freeze();
    let frozen = Instant::now();
    while frozen.elapsed() < how_long {
        seen.offline |= agent.presence().await.is_none();
        look(client, job, &mut seen.states).await;
        tokio::time::sleep(POLL).await;
    }
    agent.thaw();
    look(client, job, &mut seen.states).await;
    seen
}

/// Adds the job's state now to `states` if it changed.
async fn look(client: &McpClient, job: &str, states: &mut Vec<String>) {
    let args = json!({"action": "poll", "job": job, "tail": 1, "max_lines": 1});
    let Ok(out) = client.try_call("job", args).await else {
        return;
    };
    if let Some(state) = out.structured()["job"]["state"].as_str()
        && states.last().map(String::as_str) != Some(state)
    {
        states.push(state.to_string());
    }
}
