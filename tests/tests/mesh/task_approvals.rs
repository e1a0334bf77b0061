//! Tasks meeting approvals and the audit trail: a task held for approval asks its client for
//! input inside the task (`input_required`, the approval's link) and runs once a teammate
//! approves, or ends with the held result when the user declines; a cancelled task is audited
//! as an event of its own, naming who cancelled it and the hosts whose jobs were stopped.

use std::time::Duration;

use rmcp::model::{ElicitRequestParams, InputRequest, InputResponses};
use serde_json::json;

use execmesh_proto::pb::audit_event::Body;
use execmesh_proto::subject::audit_kind;
use execmesh_proto::{Tier, pb};
use execmesh_tests::admin::approve;
use execmesh_tests::process::{job_processes, jobs_running};
use execmesh_tests::{AuditSink, Gateway, McpClient, Nats, Policy, eventually};

/// alice and bob on call; any command on a database host waits for a teammate.
pub fn policy() -> Policy {
    Policy::new()
        .group("oncall", Tier::Dangerous, &["*"], &["alice", "bob"])
        .approved_by("bash", "role=db", &["oncall"])
}

/// The one URL elicitation of a task's input requests: its key, message and link.
fn url_elicitation(requests: &rmcp::model::InputRequests) -> (String, String, String) {
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (key, request) = requests.iter().next().expect("one request");
    let InputRequest::Elicitation(elicit) = request else {
        panic!("not an elicitation: {request:?}");
    };
    match &elicit.params {
        ElicitRequestParams::UrlElicitationParams { message, url, .. } => {
            (key.clone(), message.clone(), url.clone())
        }
        other => panic!("not a URL elicitation: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_task_asks_for_input_and_runs_once_approved_or_ends_held_when_declined() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats).policy(policy()).admin().start().await;
    let alice = McpClient::with_tasks_and_elicitation(&gw.url(), &gw.mint("alice")).await;
    let bob = gw.admin_client("bob").await;
    let marker = db.dir().join("ran");
    let cmd = format!("touch {} && echo ran", marker.display());

    // Held: the task asks for input, showing the approval's link, and runs nothing yet.
    let task = alice
        .call_task("bash", json!({"host": db.host(), "cmd": cmd}))
        .await;
    let (requests, status) = alice.task_input(&task, Duration::from_secs(15)).await;
    let (key, message, url) = url_elicitation(&requests);
    let id = url.rsplit('/').next().unwrap_or_default().to_string();
    assert!(id.starts_with("apr-"), "{url}");
    assert_eq!(url, format!("{}/console/approvals/{id}", gw.base_url()));
    assert_eq!(key, format!("approval-{id}"));
    assert!(
        message.contains("db-1") && message.contains("oncall"),
        "{message}"
    );
    assert!(
        message.contains(&format!("execmeshctl approve {id}")),
        "{message}"
    );
    assert_eq!(
        status.as_deref(),
        Some(message.as_str()),
        "the status says it too"
    );
    assert!(
        !marker.exists(),
        "a held task must not run before it is approved"
    );
    // The client's user looked at the link: the task keeps waiting.
    let accepted: InputResponses = [(key.clone(), json!({"action": "accept"}))].into();
    alice
        .answer_task(&task, accepted)
        .await
        .expect("tasks/update");

    // bob approves: the task runs the call with the approval and completes with its output.
    approve(&bob, &id).await;
    let out = alice.task_result(&task, Duration::from_secs(30)).await;
    assert!(!out.is_error(), "{}", out.text());
    out.assert_field("output", "ran\n");
    assert!(marker.exists());

    // Declined: the task ends with the held result, whose approval id a re-call can carry.
    let task = alice
        .call_task("bash", json!({"host": db.host(), "cmd": "true"}))
        .await;
    let (requests, _) = alice.task_input(&task, Duration::from_secs(15)).await;
    let (key, _, url) = url_elicitation(&requests);
    let declined: InputResponses = [(key, json!({"action": "decline"}))].into();
    alice
        .answer_task(&task, declined)
        .await
        .expect("tasks/update");
    let out = alice.task_result(&task, Duration::from_secs(30)).await;
    let held = out.approval_id();
    assert!(url.ends_with(&held), "the same approval: {url} {held}");

    // A client without URL elicitation gets the held result as the task's result at once.
    let tasks_only = gw.task_client("alice").await;
    let task = tasks_only
        .call_task("bash", json!({"host": db.host(), "cmd": "true"}))
        .await;
    let out = tasks_only.task_result(&task, Duration::from_secs(30)).await;
    assert!(out.approval_id().starts_with("apr-"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cancel_is_audited_with_who_the_task_and_the_hosts_stopped() {
    let nats = Nats::start().await;
    let sink = AuditSink::new(&nats).start().await;
    let _web1 = nats.agent("web-1", &[]).await;
    let _web2 = nats.agent("web-2", &[]).await;
    let gw = Gateway::new(&nats).start().await;
    let alice = gw.task_client("alice").await;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let marker = format!("task-audit-{}-{nanos}", std::process::id());
    let task = alice
        .call_task(
            "bash",
            json!({"hosts": "web-*", "cmd": "sleep 1000", "env": {"TEST_MARKER": marker}}),
        )
        .await;
    // A fan-out's hosts share its job id: one id, a sleep on each host.
    let job = eventually(Duration::from_secs(15), || async {
        let job = jobs_running(&marker).into_iter().next()?;
        (job_processes(&job).len() >= 2).then_some(job)
    })
    .await;

    alice.cancel_task(&task).await.expect("tasks/cancel");
    eventually(Duration::from_secs(15), || async {
        job_processes(&job).is_empty()
    })
    .await;

    let records = eventually(Duration::from_secs(20), || async {
        let records = sink
            .query_all(pb::AuditQuery {
                kind: audit_kind::TASK_CANCELLED.into(),
                ..Default::default()
            })
            .await;
        (!records.is_empty()).then_some(records)
    })
    .await;
    assert_eq!(records.len(), 1, "{records:?}");
    let event = records[0].event.as_ref().expect("an event");
    assert_eq!(
        (
            event.user.as_str(),
            event.tool.as_str(),
            event.outcome.as_str()
        ),
        ("alice", "bash", "cancelled")
    );
    assert_eq!(
        event.trace_id.len(),
        32,
        "the cancel has a trace: {event:?}"
    );
    let Some(Body::TaskCancelled(cancelled)) = &event.body else {
        panic!("not a task cancel: {event:?}");
    };
    assert_eq!(cancelled.task_id, task.id);
    assert_eq!(cancelled.hosts, ["web-1", "web-2"]);
    assert_eq!((cancelled.jobs, cancelled.stopped), (2, 2));
}
