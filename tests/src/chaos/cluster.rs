//! The fault scenarios of a mesh on a 3-node JetStream cluster at R3: the meta leader and the output stream's leader killed under a job a client pages, every node restarted in turn under calls, and an agent whose node dies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::Context;
use execmesh_proto::jetstream::OUT_STREAM;
use serde::Serialize;
use serde_json::json;

use super::{
    Answer, Broken, CALL_TIMEOUT, CHUNKS, Call, HOST, Invariants, LineTally, RECOVERY, Scenario,
    Size, USER, answered_since, follow, job_end, job_lines, ms, raw_bash_told, reached, settle,
    state_of,
};
use crate::{Gateway, Nats, NodeAgent};

/// Nodes of the cluster.
const NODES: usize = 3;
/// The pause between two chunks of the job under the leader kills: it prints for about 7.5 s
/// before its gate and as long after.
const CLUSTER_PACE: &str = "0.075";
/// Longest one page call may take before the pager counts it failed and asks again.
const PAGE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest a call may take while nodes restart: an answer or a clear refusal, never a hang.
const ROLLING_BOUND: Duration = Duration::from_secs(20);
/// Wrong answers kept for the report.
const WRONG_KEPT: usize = 8;

/// Figures of [`Scenario::ClusterLeaderKill`].
#[derive(Debug, Serialize)]
pub struct ClusterLeaderFigures {
    /// The job's lines, paged by a client while the leaders died.
    pub lines: LineTally,
    /// Lines stored when the meta leader was killed, and when the stream leader was.
    pub lines_at_meta_kill: u64,
    pub lines_at_stream_kill: u64,
    /// Whether the stream leader killed was also the meta leader then.
    pub stream_leader_was_meta_leader: bool,
    /// From the meta leader's kill until the other nodes agreed on a new one.
    pub meta_election_ms: u64,
    /// From the stream leader's kill until MESH_OUT had a new leader.
    pub stream_election_ms: u64,
    /// From each kill until a page sent after it was answered: the pause the client saw.
    pub pause_after_meta_kill_ms: u64,
    pub pause_after_stream_kill_ms: u64,
    /// Page calls answered, and those that failed (timed out or refused) and were asked again.
    pub pages: usize,
    pub failed_pages: usize,
    /// The slowest page call.
    pub slowest_page_ms: u64,
    /// The job's state at the end.
    pub job_state: String,
    /// The job's state on the page that ended the client's paging.
    pub paged_until: Option<String>,
}

/// Figures of [`Scenario::ClusterRollingRestart`].
#[derive(Debug, Serialize)]
pub struct ClusterRollingFigures {
    /// Clients calling at once.
    pub clients: usize,
    /// How long each node's restart took until the cluster had a meta leader again.
    pub restart_ms: Vec<u64>,
    /// Calls made, answered as asked, refused (HTTP 503, retryable) and tool errors.
    pub calls: usize,
    pub answered: usize,
    pub refused: usize,
    pub tool_errors: usize,
    /// Calls that answered otherwise or not within the bound.
    pub wrong: usize,
    /// The slowest call, and the bound every call must answer within.
    pub slowest_ms: u64,
    pub bound_ms: u64,
    /// What the first wrong answers were.
    pub wrong_answers: Vec<String>,
    /// Calls answered `running` with a job to follow (their output not stored within the
    /// inline wait while a node restarted), and how many of those jobs then ended exited with
    /// their output.
    pub answered_running: usize,
    pub running_ended_ok: usize,
}

/// Figures of [`Scenario::ClusterAgentFailover`].
#[derive(Debug, Serialize)]
pub struct ClusterAgentFailoverFigures {
    /// From the kill of the only node the agent was given until a command ran on it again.
    pub first_call_ms: Option<u64>,
    /// Whether the agent rode it out in the same process.
    pub agent_survived: bool,
}

/// A job printing `size.cluster_lines` numbered lines is paged from its start by a client while
/// the JetStream meta leader is killed with SIGKILL (and restarted once a new one is elected),
/// then MESH_OUT's leader. Every line comes back once, in order; pages answer again after each
/// kill, the pause measured.
pub async fn cluster_leader_kill(size: &Size) -> Result<ClusterLeaderFigures, Broken> {
    let nats = Nats::builder().cluster(NODES).start().await;
    let cluster = nats.cluster().expect("a cluster was asked for");
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    // Half way the job waits at a gate, opened once both kills are done: however long the
    // elections and restarts take, both land while it runs.
    let gate_dir = tempfile::tempdir().expect("a temp dir for the job's gate");
    let gate = gate_dir.path().join("open");
    let job = client
        .bash_bg(HOST, &gated_job(size.cluster_lines, &gate))
        .await;
    let pager = gw.client(USER).await.with_timeout(PAGE_TIMEOUT);
    let following = tokio::spawn(follow(pager, job.clone()));

    let mut invariants = Invariants::default();
    let at_meta = reached(&client, &job, size.cluster_lines / 5).await;
    invariants.holds(
        "the meta leader's kill lands while the job runs",
        at_meta.as_ref().is_some_and(|p| p.running),
        "the job had ended (or printed nothing) before it",
    );
    let meta = cluster.wait_for_meta_leader(None).await;
    let meta_killed = Instant::now();
    cluster.node(&meta).kill().await;
    cluster.wait_for_meta_leader(Some(&meta)).await;
    let meta_election = meta_killed.elapsed();
    cluster.node(&meta).restart().await;
    replicas_current(&nats).await;

    let at_stream = reached(&client, &job, size.cluster_lines / 2).await;
    invariants.holds(
        "the stream leader's kill lands while the job runs",
        at_stream.as_ref().is_some_and(|p| p.running),
        "the job had ended before it",
    );
    let js = nats.jetstream().await;
    let leader = stream_leader(&js).await;
    let now_meta = cluster.wait_for_meta_leader(None).await;
    let stream_killed = Instant::now();
    cluster.node(&leader).kill().await;
    let elected = settle(|| async {
        stream_leader_now(&js)
            .await
            .filter(|now| *now != leader)
            .map(|_| ())
    })
    .await;
    let stream_election = stream_killed.elapsed();
    invariants.holds(
        "MESH_OUT elects a new leader",
        elected.is_some(),
        "no new leader",
    );
    cluster.node(&leader).restart().await;
    std::fs::write(&gate, b"").expect("open the job's gate");

    let job_state = state_of(job_end(&client, &job).await.as_ref());
    invariants.equal("the job ends exited", "exited", job_state.as_str());
    let followed = following.await.expect("the pager does not panic");
    let pause = |kill: Instant| {
        followed
            .answered
            .iter()
            .find(|(sent, _)| *sent >= kill)
            .map(|(_, answered)| answered.duration_since(kill))
    };
    let (pause_meta, pause_stream) = (pause(meta_killed), pause(stream_killed));
    invariants.settled(
        "pages resume after the meta leader's kill",
        pause_meta,
        RECOVERY,
    );
    invariants.settled(
        "pages resume after the stream leader's kill",
        pause_stream,
        RECOVERY,
    );
    let lines = invariants.lines_once(size.cluster_lines, &followed.lines);
    invariants.finish(
        Scenario::ClusterLeaderKill,
        ClusterLeaderFigures {
            lines,
            lines_at_meta_kill: at_meta.map_or(0, |p| p.lines),
            lines_at_stream_kill: at_stream.map_or(0, |p| p.lines),
            stream_leader_was_meta_leader: leader == now_meta,
            meta_election_ms: ms(meta_election),
            stream_election_ms: ms(stream_election),
            pause_after_meta_kill_ms: pause_meta.map_or(ms(RECOVERY), ms),
            pause_after_stream_kill_ms: pause_stream.map_or(ms(RECOVERY), ms),
            pages: followed.answered.len(),
            failed_pages: followed.failed,
            slowest_page_ms: ms(followed.slowest),
            job_state,
            paged_until: followed.done_state,
        },
    )
}

/// A job printing the numbers `1..=lines`, one per line, in [`CHUNKS`] chunks
/// [`CLUSTER_PACE`] apart, that waits after half of them until `gate` exists.
fn gated_job(lines: u64, gate: &std::path::Path) -> String {
    let per = lines / CHUNKS;
    let chunks = |from: u64, to: u64| {
        format!(
            "for i in $(seq {from} {to}); do seq $(( i*{per}+1 )) $(( (i+1)*{per} )); \
             sleep {CLUSTER_PACE}; done"
        )
    };
    format!(
        "{}; while [ ! -e '{}' ]; do sleep 0.05; done; {}; seq {} {lines}",
        chunks(0, CHUNKS / 2 - 1),
        gate.display(),
        chunks(CHUNKS / 2, CHUNKS - 1),
        per * CHUNKS + 1
    )
}

/// `size.clients` clients call `bash` without pause while every node of the cluster is
/// restarted in turn (SIGTERM, start, a meta leader again). Every call answers as asked or is
/// refused with a retryable error within a bound; none hangs; calls answer after the last restart.
pub async fn cluster_rolling_restart(size: &Size) -> Result<ClusterRollingFigures, Broken> {
    let nats = Nats::builder().cluster(NODES).start().await;
    let cluster = nats.cluster().expect("a cluster was asked for");
    let _agent = NodeAgent::new(&nats, HOST).start().await;
    let gw = Gateway::new(&nats).start().await;
    let token = gw.mint(USER);
    let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
    let wrong_answers: Arc<Mutex<Vec<String>>> = Arc::default();
    let running_jobs: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = Vec::new();
    for c in 0..size.clients {
        let (http, url, token) = (gw.http_client(), gw.url(), token.clone());
        let (calls, stop, wrong) = (calls.clone(), stop.clone(), wrong_answers.clone());
        let running = running_jobs.clone();
        callers.push(tokio::spawn(async move {
            let mut id = c as u64 * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 1;
                let sent = Instant::now();
                let (mut answer, told) = raw_bash_told(&http, &url, &token, id).await;
                let took = sent.elapsed();
                if let Some((status, body)) = told {
                    // A call past the inline wait answers with the job to follow: checked below.
                    let run = &body["result"]["structuredContent"];
                    if let (200, "running", Some(job)) = (
                        status,
                        run["state"].as_str().unwrap_or_default(),
                        run["job"].as_str(),
                    ) {
                        running.lock().expect("running jobs").push(job.to_string());
                        answer = Answer::Answered;
                    } else {
                        let mut wrong = wrong.lock().expect("wrong answers");
                        if wrong.len() < WRONG_KEPT {
                            let body = body.to_string();
                            let body = body.get(..300).unwrap_or(&body);
                            wrong.push(format!("after {} ms: HTTP {status}: {body}", ms(took)));
                        }
                    }
                }
                calls
                    .lock()
                    .expect("calls")
                    .push(Call { sent, took, answer });
            }
        }));
    }
    let mut invariants = Invariants::default();
    let warm = answered_since(&calls, Instant::now()).await;
    invariants.holds(
        "calls answer before the restarts",
        warm.is_some(),
        "no call answered",
    );
    let mut restart_ms = Vec::new();
    for node in cluster.nodes() {
        let started = Instant::now();
        node.restart().await;
        cluster.wait_for_meta_leader(None).await;
        restart_ms.push(ms(started.elapsed()));
        replicas_current(&nats).await;
    }
    let last = Instant::now();
    let back = answered_since(&calls, last).await;
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        let _ = caller.await;
    }
    invariants.settled(
        "calls answer after the last restart",
        back.map(|(_, took)| took),
        RECOVERY,
    );

    // Each call answered `running` ends as asked: exited, its output whole.
    let running = std::mem::take(&mut *running_jobs.lock().expect("running jobs"));
    let client = gw.client(USER).await.with_timeout(CALL_TIMEOUT);
    let mut running_ended_ok = 0;
    for job in &running {
        let exited = state_of(job_end(&client, job).await.as_ref()) == "exited";
        if exited && job_lines(&client, job).await == ["ok"] {
            running_ended_ok += 1;
        }
    }
    invariants.equal(
        "every call answered running ends exited with its output",
        running.len(),
        running_ended_ok,
    );

    let calls = std::mem::take(&mut *calls.lock().expect("calls"));
    let count = |answer: Answer| calls.iter().filter(|c| c.answer == answer).count();
    let slowest = calls.iter().map(|c| c.took).max().unwrap_or_default();
    let wrong = count(Answer::Wrong);
    invariants.equal(
        "every call answers, is refused or is a tool error",
        0,
        wrong,
    );
    invariants.holds(
        "no call hangs",
        slowest < ROLLING_BOUND,
        format_args!("the slowest took {slowest:?}, bound {ROLLING_BOUND:?}"),
    );
    invariants.finish(
        Scenario::ClusterRollingRestart,
        ClusterRollingFigures {
            clients: size.clients,
            restart_ms,
            calls: calls.len(),
            answered: count(Answer::Answered),
            refused: count(Answer::Refused),
            tool_errors: count(Answer::ToolError),
            wrong,
            slowest_ms: ms(slowest),
            bound_ms: ms(ROLLING_BOUND),
            wrong_answers: std::mem::take(&mut *wrong_answers.lock().expect("wrong answers")),
            answered_running: running.len(),
            running_ended_ok,
        },
    )
}

/// An agent given the URL of one node only is left without it (SIGKILL): it reconnects to a
/// node it learned from the cluster, and commands run on it again without a restart.
pub async fn cluster_agent_failover(_size: &Size) -> Result<ClusterAgentFailoverFigures, Broken> {
    let nats = Nats::builder().cluster(NODES).start().await;
    let cluster = nats.cluster().expect("a cluster was asked for");
    let only = &cluster.nodes()[0];
    let mut agent = NodeAgent::new(&nats, HOST)
        .nats_url(only.url())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client(USER).await.with_timeout(Duration::from_secs(10));
    let mut invariants = Invariants::default();
    let before = client
        .try_call("bash", json!({"host": HOST, "cmd": "echo ok"}))
        .await;
    let before = match before {
        Ok(out) => out.structured()["output"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        Err(e) => e.to_string(),
    };
    invariants.holds(
        "a command runs before the kill",
        before == "ok\n",
        format_args!("it answered {before:?}"),
    );

    let pid = agent.pid();
    let killed = Instant::now();
    only.kill().await;
    let ran = settle(|| async {
        let out = client
            .try_call("bash", json!({"host": HOST, "cmd": "echo ok"}))
            .await
            .ok()?;
        (out.structured()["output"] == "ok\n").then_some(())
    })
    .await;
    let first_call = ran.map(|_| killed.elapsed());
    invariants.settled("a command runs on the agent again", first_call, RECOVERY);
    let agent_survived = agent.exited().is_none() && agent.pid() == pid;
    invariants.holds(
        "the agent rides out its node's death",
        agent_survived,
        "it exited",
    );
    only.restart().await;
    invariants.finish(
        Scenario::ClusterAgentFailover,
        ClusterAgentFailoverFigures {
            first_call_ms: first_call.map(ms),
            agent_survived,
        },
    )
}

/// The name of MESH_OUT's leader once it has one.
async fn stream_leader(js: &Context) -> String {
    settle(|| stream_leader_now(js))
        .await
        .map(|(leader, _)| leader)
        .expect("MESH_OUT has a leader")
}

/// MESH_OUT's leader as the cluster reports it now, `None` while it has none.
async fn stream_leader_now(js: &Context) -> Option<String> {
    let info = tokio::time::timeout(Duration::from_secs(5), async {
        js.get_stream(OUT_STREAM)
            .await
            .ok()?
            .info()
            .await
            .ok()
            .cloned()
    })
    .await
    .ok()??;
    info.cluster
        .as_ref()?
        .leader
        .clone()
        .filter(|l| !l.is_empty())
}

/// Waits until every replica of MESH_OUT is current again (a restarted node has caught up), so
/// the next fault does not meet a stream already short of a copy.
async fn replicas_current(nats: &Nats) {
    let js = nats.jetstream().await;
    settle(|| async {
        let info = js
            .get_stream(OUT_STREAM)
            .await
            .ok()?
            .info()
            .await
            .ok()?
            .clone();
        let cluster = info.cluster.as_ref()?;
        let current = cluster.replicas.len() + 1 == NODES
            && cluster.replicas.iter().all(|r| r.current && !r.offline);
        current.then_some(())
    })
    .await;
}
