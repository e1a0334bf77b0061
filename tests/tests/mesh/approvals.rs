//! Approvals end to end: a call the policy marks is held with an approval id, an approver the
//! policy names (never the requester) approves or denies it through the admin API, and the
//! approval runs exactly the call it was granted for, once, before it expires.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use tonic::Code;

use execmesh_gateway::core::approvals::{ApprovalState, Approvals};
use execmesh_gateway::core::audit::Audit;
use execmesh_proto::{Tier, Token, pb};
use execmesh_tests::admin::assert_status as refused;
use execmesh_tests::{
    AdminClient, AuditSink, Gateway, Nats, NodeAgent, Policy, ToolOutput, eventually, with_approval,
};

/// alice and bob on call (`dangerous` everywhere), approving each other's calls on database
/// hosts and file deletes.
fn policy() -> Policy {
    Policy::new()
        .group("oncall", Tier::Dangerous, &["*"], &["alice", "bob"])
        .toml(
            r#"# Any command on a database host waits for a teammate.
[[approvals]]
tool = "bash"
hosts = "role=db"

[[approvals]]
tool = "file"
action = "delete"

# Anyone on call may release a teammate's call (never their own).
[approvers]
groups = ["oncall"]
"#,
        )
}

/// Approves `id` through the admin API as the user `admin` speaks for.
async fn approve(admin: &AdminClient, id: &str) -> Result<pb::Approval, tonic::Status> {
    let mut approvals = admin.approvals.clone();
    approvals
        .approve(pb::ApproveRequest { id: id.into() })
        .await
        .map(|r| r.into_inner().approval.expect("an approval"))
}

/// Denies `id` through the admin API as the user `admin` speaks for.
async fn deny(admin: &AdminClient, id: &str, reason: &str) -> Result<pb::Approval, tonic::Status> {
    let mut approvals = admin.approvals.clone();
    approvals
        .deny(pb::DenyRequest {
            id: id.into(),
            reason: reason.into(),
        })
        .await
        .map(|r| r.into_inner().approval.expect("an approval"))
}

/// The approvals store as the gateway keeps it (read here; decided through the admin API).
async fn store(nats: &Nats, ttl: Duration) -> Approvals {
    let tenant = Token::parse("tenant", "default").expect("tenant");
    let mesh = Gateway::new(nats).mesh().await;
    let signer = mesh.records.key().cloned();
    let audit =
        Audit::start(nats.client().await, tenant.clone(), &[], 1, 16_384, signer).expect("audit");
    Approvals::open(&mesh, tenant, 1, ttl, Arc::new(audit))
        .await
        .expect("open mesh_approvals")
}

/// The approval id of a held call, after checking it is held (and not an error).
#[track_caller]
fn held(out: &ToolOutput) -> String {
    let id = out.approval_id();
    assert!(
        out.text().contains("execmeshctl approve"),
        "the text says how to get it approved: {}",
        out.text()
    );
    id
}

/// Asserts the call was refused because the approval it names cannot be used.
#[track_caller]
fn unusable(out: &ToolOutput, needle: &str) {
    out.assert_refused_as("approval_unusable", needle);
}

#[tokio::test]
async fn a_marked_call_waits_for_a_teammates_approval_and_runs_exactly_once() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats).policy(policy()).admin().start().await;
    let sink = AuditSink::new(&nats).sqlite().start().await;
    let approvals = store(&nats, Duration::from_secs(900)).await;
    let alice = gw.client("alice").await;
    let bob = gw.client("bob").await;
    let alice_admin = gw.admin_client("alice").await;
    let bob_admin = gw.admin_client("bob").await;

    // Not covered by a rule: runs at once.
    let out = alice
        .call("bash", json!({"host": web.host(), "cmd": "echo hi"}))
        .await;
    assert_eq!(out.structured()["output"], json!("hi\n"), "{}", out.text());

    let marker = db.dir().join("ran");
    let args = json!({"host": db.host(), "cmd": format!("touch {} && echo ran", marker.display())});
    let id = held(&alice.call("bash", args.clone()).await);
    assert!(!marker.exists(), "a held call must not run");
    let record = approvals.get(&id).await.expect("the record");
    assert_eq!(record.state, ApprovalState::Pending);
    assert_eq!(record.user, "alice");
    assert_eq!(record.hosts, ["db-1"]);
    assert!(record.summary.contains("db-1"), "{}", record.summary);
    assert_eq!(record.arguments["cmd"], args["cmd"]);

    // Still pending: the re-call is held again, nothing runs.
    let again = alice.call("bash", with_approval(&args, &id)).await;
    assert_eq!(held(&again), id);
    assert_eq!(again.structured()["state"], json!("pending"));
    assert!(!marker.exists());

    // The requester cannot approve their own request.
    refused(
        approve(&alice_admin, &id).await,
        Code::PermissionDenied,
        "alice, who may not approve their own request",
    );
    let approved = approve(&bob_admin, &id).await.expect("bob approves");
    assert_eq!(approved.state(), pb::ApprovalState::Approved);
    assert_eq!(approved.decided_by, "bob");
    refused(
        approve(&bob_admin, &id).await,
        Code::FailedPrecondition,
        "already approved",
    );

    // Changed arguments, or another user, cannot spend it.
    let changed = json!({"host": db.host(), "cmd": "rm -rf /var/lib/db", "approval_id": id});
    unusable(&alice.call("bash", changed).await, "different call");
    unusable(
        &bob.call("bash", with_approval(&args, &id)).await,
        "requested by alice",
    );
    assert!(!marker.exists());

    // The call it was granted for runs, once.
    let out = alice.call("bash", with_approval(&args, &id)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], json!("ran\n"), "{}", out.text());
    assert!(marker.exists());
    unusable(
        &alice.call("bash", with_approval(&args, &id)).await,
        "used already",
    );
    let spent = approvals.get(&id).await.expect("the record");
    assert_eq!(spent.state, ApprovalState::Used);
    assert!(spent.used_at_ms.is_some());

    // A denial carries its reason back to the requester.
    let id = held(&alice.call("bash", args.clone()).await);
    refused(
        deny(&bob_admin, &id, "  ").await,
        Code::InvalidArgument,
        "needs a reason",
    );
    deny(&bob_admin, &id, "not during the backup window")
        .await
        .expect("bob denies");
    unusable(
        &alice.call("bash", with_approval(&args, &id)).await,
        "bob denied it: not during the backup window",
    );

    // Unknown and malformed ids are named.
    unusable(
        &alice
            .call("bash", with_approval(&args, "apr-0000000000000000"))
            .await,
        "no approval",
    );
    unusable(
        &alice.call("bash", with_approval(&args, "../../x")).await,
        "not an approval id",
    );
    let listed = approvals.list().await.expect("list");
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0].state, ApprovalState::Denied, "newest first");

    // Every step is in the audit trail: two requests, then approved, used and denied.
    let steps = eventually(Duration::from_secs(30), || async {
        // Two publishers (the gateway, the approver's side): ordered by event time.
        let mut records = sink.export(&[]);
        records.sort_by_key(|r| r["time_ms"].as_u64());
        let steps: Vec<(String, String, String)> = records
            .iter()
            .filter(|r| {
                r["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("approval-"))
            })
            .map(|r| {
                let text = |k: &str| r[k].as_str().unwrap_or_default().to_string();
                (text("kind"), text("outcome"), text("user"))
            })
            .collect();
        (steps.len() >= 5).then_some(steps)
    })
    .await;
    let step = |kind: &str, outcome: &str, user: &str| {
        (kind.to_string(), outcome.to_string(), user.to_string())
    };
    assert_eq!(
        steps,
        [
            step("approval-requested", "requested", "alice"),
            step("approval-decided", "approved", "bob"),
            step("approval-decided", "used", "alice"),
            step("approval-requested", "requested", "alice"),
            step("approval-decided", "denied", "bob"),
        ]
    );
}

#[tokio::test]
async fn an_approval_expires_unused_and_cannot_be_decided_late() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let ttl = Duration::from_secs(2);
    let gw = Gateway::new(&nats)
        .policy(policy())
        .configure(|c| c.approval_ttl = ttl)
        .admin()
        .start()
        .await;
    let approvals = store(&nats, ttl).await;
    let alice = gw.client("alice").await;
    let bob_admin = gw.admin_client("bob").await;
    let args = json!({"host": db.host(), "cmd": "echo late"});

    // Approved, but not used in time.
    let used_late = held(&alice.call("bash", args.clone()).await);
    approve(&bob_admin, &used_late).await.expect("approve");
    // Never decided.
    let decided_late = held(&alice.call("bash", args.clone()).await);
    eventually(Duration::from_secs(15), || async {
        let used = approvals.get(&used_late).await.ok()?;
        let decided = approvals.get(&decided_late).await.ok()?;
        (used.state == ApprovalState::Expired && decided.state == ApprovalState::Expired)
            .then_some(())
    })
    .await;

    unusable(
        &alice.call("bash", with_approval(&args, &used_late)).await,
        "expired",
    );
    refused(
        approve(&bob_admin, &decided_late).await,
        Code::FailedPrecondition,
        "expired",
    );
}

#[tokio::test]
async fn rules_hold_only_the_calls_they_cover_fan_outs_included() {
    let nats = Nats::start().await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let root = tempfile::tempdir().expect("a file root for web-1");
    let web = NodeAgent::new(&nats, "web-1")
        .label("role", "web")
        .arg("--file-root", root.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).policy(policy()).admin().start().await;
    let alice = gw.client("alice").await;
    let bob_admin = gw.admin_client("bob").await;

    // The gated tools say they take an approval id.
    let tools = alice.list_tools().await;
    for name in ["bash", "file", "grep", "facts", "job"] {
        let tool = tools.iter().find(|t| t.name == name).expect(name);
        assert!(
            tool.input_schema["properties"]["approval_id"].is_object(),
            "{name} lacks approval_id"
        );
    }

    // A fan-out that reaches a database host is held as a whole; one that does not runs.
    let all = json!({"hosts": "*", "cmd": "echo fleet"});
    let out = alice.call("bash", all.clone()).await;
    let id = held(&out);
    assert_eq!(out.structured()["hosts"], json!(["db-1", "web-1"]));
    let out = alice
        .call("bash", json!({"hosts": "role=web", "cmd": "echo web"}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["counts"]["ok"], json!(1), "{}", out.text());

    approve(&bob_admin, &id).await.expect("approve");
    let out = alice.call("bash", with_approval(&all, &id)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["counts"]["ok"], json!(2), "{}", out.text());

    // `file` delete is held on any host; reads are not.
    let victim = root.path().join("victim");
    std::fs::write(&victim, "x").expect("write");
    let delete =
        json!({"host": web.host(), "action": "delete", "path": victim.display().to_string()});
    let id = held(&alice.call("file", delete.clone()).await);
    assert!(victim.exists());
    let out = alice
        .call(
            "file",
            json!({"host": web.host(), "action": "stat", "path": victim.display().to_string()}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    approve(&bob_admin, &id).await.expect("approve");
    let out = alice.call("file", with_approval(&delete, &id)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert!(!victim.exists(), "the approved delete ran");
    drop(db);
}
