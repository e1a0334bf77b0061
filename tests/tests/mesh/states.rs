//! Honest job and host states: a job whose agent died reads `lost` to every reader and ends in the audit trail exactly once, whoever settles it; an offline host says when it was last seen.

use std::time::Duration;

use execmesh_proto::jetstream::PRESENCE_BUCKET;
use execmesh_proto::pb::{self, audit_event::Body};
use execmesh_proto::subject::audit_kind;
use execmesh_tests::presence::presence_key;
use execmesh_tests::process::job_processes;
use execmesh_tests::{
    AuditSink, Gateway, Nats, NodeAgent, RunningAgent, RunningAudit, RunningGateway, eventually,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

/// The stored events of `kind` about `job`.
async fn events(sink: &RunningAudit, kind: &str, job: &str) -> Vec<pb::AuditEvent> {
    sink.query_all(pb::AuditQuery {
        kind: kind.into(),
        job_id: job.into(),
        ..Default::default()
    })
    .await
    .into_iter()
    .filter_map(|r| r.event)
    .collect()
}

/// Waits until `job` has a stored `job-finished` event, and returns it.
async fn finished(sink: &RunningAudit, job: &str) -> pb::AuditEvent {
    eventually(WAIT, || async {
        events(sink, audit_kind::JOB_FINISHED, job).await.pop()
    })
    .await
}

/// Waits until `job`'s `job-started` event is stored; returns the pid it names.
async fn started(sink: &RunningAudit, job: &str) -> u32 {
    eventually(WAIT, || async {
        let started = events(sink, audit_kind::JOB_STARTED, job).await;
        started.first().and_then(|e| match &e.body {
            Some(Body::JobStarted(s)) => Some(s.pid),
            _ => None,
        })
    })
    .await
}

/// Runs `true` on `host` and waits for its `job-finished`: the agent publishes its audit events
/// in order, so any event it queued before (a duplicate end, say) is stored by then too.
async fn audit_drained(sink: &RunningAudit, client: &execmesh_tests::McpClient, host: &str) {
    let marker = client.bash(host, "true").await;
    assert!(!marker.is_error(), "{}", marker.text());
    finished(sink, &marker.job_id()).await;
}

/// The job's state in the MCP `job list` of `client`.
async fn listed_state(client: &execmesh_tests::McpClient, job: &str) -> String {
    let listed = client.call("job", json!({"action": "list"})).await;
    let jobs = listed.structured()["jobs"].as_array().cloned();
    jobs.unwrap_or_default()
        .iter()
        .find(|j| j["job"] == job)
        .and_then(|j| j["state"].as_str().map(String::from))
        .unwrap_or_else(|| panic!("job {job} not listed: {}", listed.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_agent_is_killed_ends_once_in_the_audit_trail_as_lost() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    let mut agent = quick_beating_agent(&nats).await;
    // Two replicas race to settle the job; one wins.
    let one = Gateway::new(&nats).start().await;
    let _two = Gateway::new(&nats).replica_of(&one).start().await;
    let client = one.client("alice").await;
    let job = client.bash_bg("web-1", "sleep 1000").await;
    let pid = started(&sink, &job).await;

    agent.kill_hard().await;
    let killed_at = std::time::Instant::now();
    // Nobody reads the job: the gateways notice the expired heartbeat by themselves.
    let end = finished(&sink, &job).await;
    println!(
        "job-finished (lost) stored {} ms after the kill (heartbeat 300 ms, TTL 1 s)",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(end.outcome, "lost", "{end:?}");
    assert_eq!(end.source, pb::AuditSource::Gateway as i32, "{end:?}");
    assert_eq!((end.user.as_str(), end.host.as_str()), ("alice", "web-1"));
    let Some(Body::JobFinished(body)) = &end.body else {
        panic!("not a job-finished body: {end:?}")
    };
    assert_eq!(body.state, pb::JobState::Lost as i32);
    assert!(body.reason.contains("web-1"), "{}", body.reason);

    // The restarted agent kills the job's leftover `sleep`, says so, and records it.
    agent.restart().await;
    let orphan = eventually(WAIT, || async {
        events(&sink, audit_kind::ORPHAN_KILLED, &job).await.pop()
    })
    .await;
    let Some(Body::OrphanKilled(killed)) = &orphan.body else {
        panic!("not an orphan-killed body: {orphan:?}")
    };
    // The job's shell died with its agent's pipes; its `sleep` (same job id) is what is left.
    let [leftover] = killed.pids[..] else {
        panic!("one leftover process expected: {killed:?} (job shell was {pid})")
    };
    let log = agent.log_tail(200);
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains("killed leftover processes")
            && l.contains(&job)
            && l.contains(&leftover.to_string())),
        "{log}"
    );
    audit_drained(&sink, &client, "web-1").await;
    let ends = events(&sink, audit_kind::JOB_FINISHED, &job).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_its_unfinished_job_once_in_the_audit_trail_as_lost() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    // Heartbeats that outlive the restart: the agent, not a gateway, settles the job.
    let mut agent = NodeAgent::new(&nats, "web-1")
        .arg("--heartbeat-interval-ms", "5000")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let job = client.bash_bg("web-1", "sleep 1000").await;
    started(&sink, &job).await;

    agent.kill_hard().await;
    agent.restart().await;
    let end = finished(&sink, &job).await;
    assert_eq!(end.outcome, "lost", "{end:?}");
    assert_eq!(end.source, pb::AuditSource::Agent as i32, "{end:?}");
    assert_eq!(listed_state(&client, &job).await, "lost");
    audit_drained(&sink, &client, "web-1").await;
    let ends = events(&sink, audit_kind::JOB_FINISHED, &job).await;
    assert_eq!(ends.len(), 1, "{ends:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reader_says_lost_for_a_job_whose_agent_died() {
    let nats = Nats::start().await;
    let mut agent = quick_beating_agent(&nats).await;
    let gw = Gateway::new(&nats).admin().start().await;
    let client = gw.client("alice").await;
    let job = client.bash_bg("web-1", "sleep 1000").await;
    assert_eq!(listed_state(&client, &job).await, "running");

    agent.kill_hard().await;
    eventually(WAIT, || async {
        listed_state(&client, &job).await == "lost"
    })
    .await;
    let mut admin = gw.admin_client("alice").await;
    let listed = admin
        .jobs
        .list(pb::ListJobsRequest::default())
        .await
        .expect("list jobs")
        .into_inner();
    let status = listed.jobs.iter().find(|j| j.job_id == job);
    assert_eq!(
        status.map(|j| j.state()),
        Some(pb::JobState::Lost),
        "{listed:?}"
    );
    let polled = client.job("poll", &job).await;
    assert_eq!(polled.structured()["job"]["state"], "lost");
    assert_eq!(polled.structured()["done"], true);

    // The job's `sleep` outlived its agent; the restarted agent kills it, so the test leaves
    // no process behind on the machine.
    agent.restart().await;
    eventually(WAIT, || async { job_processes(&job).is_empty() }).await;
}

/// How long the tests of vouched-for jobs let a heartbeat be gone before its jobs count lost.
const SHORT_GRACE: Duration = Duration::from_millis(200);

/// An agent for `web-1` beating every 300 ms: its heartbeat expires about a second after it
/// dies.
async fn quick_beating_agent(nats: &Nats) -> RunningAgent {
    NodeAgent::new(nats, "web-1")
        .arg("--heartbeat-interval-ms", "300")
        .start()
        .await
}

/// An agent for `web-1` that stores its heartbeat again only after 20 s: a heartbeat taken away
/// stays away for the test.
async fn seldom_beating_agent(nats: &Nats) -> RunningAgent {
    NodeAgent::new(nats, "web-1")
        .arg("--heartbeat-interval-ms", "20000")
        .start()
        .await
}

/// A gateway that counts a running job lost [`SHORT_GRACE`] after its host's heartbeat went.
async fn short_grace_gateway(nats: &Nats) -> RunningGateway {
    Gateway::new(nats)
        .configure(|c| c.lost_grace = SHORT_GRACE)
        .start()
        .await
}

/// Takes `host`'s heartbeat away, as a new stream leader expiring it does, and waits past the
/// grace: by the heartbeat alone, a reader now counts its jobs lost.
async fn heartbeat_taken_away(nats: &Nats, host: &str) {
    let presence = nats
        .jetstream()
        .await
        .get_key_value(PRESENCE_BUCKET)
        .await
        .expect("the presence bucket");
    presence
        .delete(presence_key(host))
        .await
        .expect("delete the heartbeat");
    tokio::time::sleep(3 * SHORT_GRACE).await;
    assert!(nats.presence(host).await.is_none(), "the heartbeat is gone");
}

/// A heartbeat that goes missing while its agent lives (JetStream electing leaders back to back
/// for longer than the grace) does not end the job: asked over core NATS, the agent says it
/// still runs it, and the job runs to its end with all its output, lost to no reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_heartbeat_goes_missing_while_its_agent_runs_it_is_not_marked_lost() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    // A heartbeat stored again only after the job has ended: the gap outlasts the grace.
    let _agent = seldom_beating_agent(&nats).await;
    let gw = short_grace_gateway(&nats).await;
    let client = gw.client("alice").await;
    let job = client
        .bash_bg(
            "web-1",
            "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.5; done",
        )
        .await;
    started(&sink, &job).await;
    heartbeat_taken_away(&nats, "web-1").await;
    assert_eq!(listed_state(&client, &job).await, "running");

    let waited = client.wait_exited(&job, 30).await;
    let text = waited.text();
    assert!(text.contains("line 1") && text.contains("line 6"), "{text}");
    audit_drained(&sink, &client, "web-1").await;
    let ends = events(&sink, audit_kind::JOB_FINISHED, &job).await;
    assert_eq!(
        ends.iter().map(|e| e.outcome.as_str()).collect::<Vec<_>>(),
        ["ok"],
        "{ends:?}"
    );
}

/// A job its agent vouched for while the heartbeat was missing is looked at again: should the
/// agent die before its heartbeat is back (no new marker then comes), the job still ends lost
/// without anyone reading it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vouched_for_job_is_looked_at_again_and_ends_lost_once_its_agent_dies() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    let mut agent = seldom_beating_agent(&nats).await;
    let gw = short_grace_gateway(&nats).await;
    let client = gw.client("alice").await;
    let job = client.bash_bg("web-1", "sleep 1000").await;
    started(&sink, &job).await;
    // The settler asks a grace after the marker, and the agent vouches for the job; a reader
    // past the grace is told so too.
    heartbeat_taken_away(&nats, "web-1").await;
    assert_eq!(listed_state(&client, &job).await, "running");
    agent.kill_hard().await;
    // Nobody reads the job: the settler's next look finds no agent.
    let end = finished(&sink, &job).await;
    assert_eq!(end.outcome, "lost", "{end:?}");
    assert_eq!(end.source, pb::AuditSource::Gateway as i32, "{end:?}");
    agent.restart().await;
    eventually(WAIT, || async { job_processes(&job).is_empty() }).await;
}

/// A frozen agent answers no query, and each of its jobs' queries waits out the timeout: its
/// jobs are asked after together, so a reader waits about one timeout, not one per job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jobs_of_a_frozen_agent_are_asked_after_together_and_marked_lost() {
    let nats = Nats::start().await;
    let mut agent = quick_beating_agent(&nats).await;
    let gw = short_grace_gateway(&nats).await;
    let client = gw.client("alice").await;
    let mut jobs = Vec::new();
    for _ in 0..6 {
        jobs.push(client.bash_bg("web-1", "sleep 1000").await);
    }
    agent.freeze();
    eventually(WAIT, || async { nats.presence("web-1").await.is_none() }).await;
    // Past the grace, every reader counts the jobs lost unless the agent vouches for them.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let listed = std::time::Instant::now();
    for job in &jobs {
        assert_eq!(listed_state(&client, job).await, "lost");
    }
    // A gross bound: one query timeout (1 s) and the reads, where one per job took 6 s.
    assert!(
        listed.elapsed() < Duration::from_secs(4),
        "the jobs were asked after one by one: {:?}",
        listed.elapsed()
    );
    // The restarted agent kills what is left of the jobs, so the test leaves no process behind.
    agent.thaw();
    agent.kill_hard().await;
    agent.restart().await;
    for job in &jobs {
        eventually(WAIT, || async { job_processes(job).is_empty() }).await;
    }
}

/// The MCP `hosts` entry of `host`.
async fn host_view(client: &execmesh_tests::McpClient, host: &str) -> serde_json::Value {
    let out = client.call("hosts", json!({})).await;
    let hosts = out.structured()["hosts"].as_array().cloned();
    hosts
        .unwrap_or_default()
        .into_iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("{host} not listed: {}", out.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_host_is_last_seen_at_its_last_heartbeat_not_its_facts() {
    let nats = Nats::start().await;
    let mut killed = NodeAgent::new(&nats, "web-1")
        .arg("--heartbeat-interval-ms", "300")
        .start()
        .await;
    let mut stopped = NodeAgent::new(&nats, "web-2")
        .arg("--heartbeat-interval-ms", "300")
        .start()
        .await;
    let gw = Gateway::new(&nats).admin().start().await;
    let client = gw.client("alice").await;
    // Facts are collected at start (then every 5 min): let them age past a few heartbeats, so
    // "last seen" from the facts would be visibly older than the last heartbeat.
    eventually(WAIT, || async {
        let heartbeat = killed.presence().await.map_or(0, |p| p.heartbeat_at_ms);
        let listed = gw
            .admin_client("alice")
            .await
            .hosts
            .list(pb::ListHostsRequest::default())
            .await
            .ok()?
            .into_inner();
        let facts = listed
            .hosts
            .iter()
            .find(|h| h.host == "web-1")?
            .facts
            .clone()?;
        (heartbeat > facts.collected_at_ms + 3000).then_some(())
    })
    .await;

    killed.kill_hard().await;
    let killed_at = execmesh_proto::now_ms();
    stopped.stop().await;
    let stopped_at = execmesh_proto::now_ms();
    let offline = eventually(WAIT, || async {
        let view = host_view(&client, "web-1").await;
        (view["state"] == "offline").then_some(view)
    })
    .await;
    let since_kill = (execmesh_proto::now_ms() - killed_at) / 1000;
    let seen = offline["last_seen_secs"].as_u64();
    assert!(
        seen.is_some_and(|s| s <= since_kill + 1),
        "last seen {seen:?} s ago, killed {since_kill} s ago: {offline}"
    );

    // Any replica, also one started after the host died, reads the same from JetStream.
    let late = Gateway::new(&nats).admin().replica_of(&gw).start().await;
    for gateway in [&gw, &late] {
        let mut admin = gateway.admin_client("alice").await;
        let listed = admin
            .hosts
            .list(pb::ListHostsRequest::default())
            .await
            .expect("list hosts")
            .into_inner();
        let last = |host: &str| {
            let h = listed.hosts.iter().find(|h| h.host == host);
            let h = h.unwrap_or_else(|| panic!("{host} not listed: {listed:?}"));
            assert_eq!(h.state(), pb::HostState::Offline, "{h:?}");
            h.last_heartbeat_ms
        };
        // Gross bounds: within a heartbeat or two of the kill (the TTL rounds to a second).
        let web1 = last("web-1");
        println!(
            "web-1 last heartbeat {} ms before its kill",
            killed_at as i64 - web1 as i64
        );
        assert!(
            web1 + 2000 >= killed_at && web1 <= killed_at + 500,
            "web-1 last heartbeat {web1}, killed at {killed_at}"
        );
        let web2 = last("web-2");
        assert!(
            web2 + 2000 >= killed_at && web2 <= stopped_at + 500,
            "web-2 last heartbeat {web2}, stopped at {stopped_at}"
        );
    }
    // A call to the dead host names the same time, not the age of its facts.
    let out = client.bash("web-1", "true").await;
    assert!(out.is_error());
    let text = out.text();
    let ago: u64 = text
        .split("last seen ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no last seen in: {text}"));
    let since_kill = (execmesh_proto::now_ms() - killed_at) / 1000;
    assert!(
        ago <= since_kill + 1,
        "{text} ({since_kill} s after the kill)"
    );
}
