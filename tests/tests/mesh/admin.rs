//! The gRPC admin API end to end: every RPC of the five `execmesh.v1` services against a real
//! mesh (nats-server, node-agents, the audit-sink, an in-process gateway), through tonic clients
//! generated from `admin.proto`; its bearer-token and client-certificate checks; health and
//! reflection.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::{Code, Status, Streaming};

use execmesh_proto::Tier;
use execmesh_proto::pb;
use execmesh_tests::admin::{
    AdminClient, admin_gateway, assert_status as assert_code, get_job, team_policy,
};
use execmesh_tests::identities::register_gone_hosts;
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{
    AdminMode, AdminPki, AuditSink, Gateway, Nats, NodeAgent, Policy, eventually, with_approval,
};

/// How long a test waits for one streamed message or a condition.
const WAIT: Duration = Duration::from_secs(20);

/// The next message of a server stream, within [`WAIT`].
async fn next<T>(stream: &mut Streaming<T>) -> Option<T> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("a stream message within the wait")
        .expect("a stream message, not an error")
}

/// Starts `cmd` in the background on `host` as `user` and returns its job id.
async fn background(
    gw: &execmesh_tests::RunningGateway,
    user: &str,
    host: &str,
    cmd: &str,
) -> String {
    gw.client(user).await.bash_bg(host, cmd).await
}

#[tokio::test]
async fn hosts_are_listed_by_selector_got_by_id_and_watched_coming_and_going() {
    let nats = Nats::start().await;
    let _web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats).admin().start().await;
    let mut admin = gw.admin_client("root").await;

    let listed = admin
        .hosts
        .list(pb::ListHostsRequest {
            selector: "role=web".into(),
            ..Default::default()
        })
        .await
        .expect("list hosts")
        .into_inner();
    assert_eq!(listed.hosts.len(), 1, "{listed:?}");
    let web = &listed.hosts[0];
    assert_eq!(web.host, "web-1");
    assert_eq!(web.state(), pb::HostState::Online);
    assert_eq!(web.labels.get("role").map(String::as_str), Some("web"));
    assert!(web.last_heartbeat_ms > 0 && web.presence.is_some() && web.facts.is_some());
    assert_eq!((listed.online, listed.stale, listed.offline), (1, 0, 0));
    let none = admin
        .hosts
        .list(pb::ListHostsRequest {
            selector: "role=db".into(),
            ..Default::default()
        })
        .await
        .expect("list hosts")
        .into_inner();
    assert!(none.hosts.is_empty());
    assert_code(
        admin
            .hosts
            .list(pb::ListHostsRequest {
                selector: "role=(".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "bad selector",
    );

    let got = admin
        .hosts
        .get(pb::GetHostRequest {
            host: "web-1".into(),
        })
        .await
        .expect("get host")
        .into_inner();
    assert_eq!(got.host.expect("a host").host, "web-1");
    assert_code(
        admin
            .hosts
            .get(pb::GetHostRequest {
                host: "db-9".into(),
            })
            .await,
        Code::NotFound,
        "db-9",
    );
    assert_code(
        admin
            .hosts
            .get(pb::GetHostRequest {
                host: "Not.A.Host".into(),
            })
            .await,
        Code::InvalidArgument,
        "host id",
    );

    // Page by page: the counts of all matching hosts on each page, the hosts once, in order.
    let gone: Vec<String> = (1..=4).map(|i| format!("gone-{i}")).collect();
    register_gone_hosts(&nats, &gone).await;
    let mut paged = Vec::new();
    let mut page_token = String::new();
    for page in 1.. {
        assert!(page <= 3, "three pages of 2 list 5 hosts");
        let request = pb::ListHostsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        };
        let listed = admin
            .hosts
            .list(request)
            .await
            .expect("a page")
            .into_inner();
        assert_eq!(
            (listed.total, listed.online, listed.offline),
            (5, 1, 4),
            "{listed:?}"
        );
        paged.extend(listed.hosts.iter().map(|h| h.host.clone()));
        page_token = listed.next_page_token;
        if page_token.is_empty() {
            break;
        }
        assert_eq!(listed.hosts.len(), 2);
        assert_eq!(Some(&page_token), paged.last());
    }
    assert_eq!(paged, ["gone-1", "gone-2", "gone-3", "gone-4", "web-1"]);
    // Unpaged (an older client): every host in one answer.
    let all = admin
        .hosts
        .list(pb::ListHostsRequest::default())
        .await
        .expect("every host")
        .into_inner();
    assert_eq!((all.hosts.len(), all.next_page_token.as_str()), (5, ""));
    assert_code(
        admin
            .hosts
            .list(pb::ListHostsRequest {
                page_token: "no such/token".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "page_token",
    );

    // The watch reports the fleet as it is, then an agent arriving and leaving.
    let mut watch = admin
        .hosts
        .watch(pb::WatchHostsRequest {
            selector: "web-* or role=db".into(),
            include_initial: true,
        })
        .await
        .expect("watch hosts")
        .into_inner();
    let first = next(&mut watch).await.expect("an initial event");
    assert!(first.initial);
    assert_eq!(
        (first.host.as_str(), first.state()),
        ("web-1", pb::HostState::Online)
    );
    let mut db = nats.agent("db-1", &[("role", "db")]).await;
    let came = next(&mut watch).await.expect("db-1 coming online");
    assert_eq!(
        (came.host.as_str(), came.state(), came.initial),
        ("db-1", pb::HostState::Online, false)
    );
    assert_eq!(
        came.detail
            .expect("detail")
            .labels
            .get("role")
            .map(String::as_str),
        Some("db")
    );
    db.stop().await;
    let went = next(&mut watch).await.expect("db-1 going offline");
    assert_eq!(
        (went.host.as_str(), went.state(), went.previous()),
        ("db-1", pb::HostState::Offline, pb::HostState::Online)
    );
    assert!(went.time_ms >= came.time_ms);
}

#[tokio::test]
async fn tail_streams_a_running_job_to_its_exit_record_and_then_ends() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let mut admin = gw.admin_client("root").await;
    let job = background(
        &gw,
        "carol",
        "web-1",
        "for i in $(seq 1 6); do echo line-$i; sleep 0.3; done; exit 3",
    )
    .await;

    let mut tail = admin
        .jobs
        .tail(pb::TailJobRequest {
            job_id: job.clone(),
            ..Default::default()
        })
        .await
        .expect("tail")
        .into_inner();
    let mut text = String::new();
    let mut chunks = 0;
    let mut last_cursor;
    let exit = loop {
        let message = next(&mut tail)
            .await
            .expect("the stream ends only after the exit");
        assert!(!message.cursor.is_empty());
        last_cursor = message.cursor.clone();
        match message.body.expect("a body") {
            pb::tail_job_response::Body::Chunk(chunk) => {
                assert_eq!(chunk.index, chunks);
                chunks += 1;
                text.push_str(&String::from_utf8_lossy(&chunk.data));
            }
            pb::tail_job_response::Body::Exit(status) => break status,
        }
    };
    let expected: String = (1..=6).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(text, expected);
    assert!(
        chunks >= 2,
        "a running job streams as it writes ({chunks} chunk)"
    );
    assert_eq!(exit.state(), pb::JobState::Exited);
    assert_eq!(exit.exit_code, Some(3));
    assert_eq!(exit.job_id, job);
    assert!(
        tokio::time::timeout(WAIT, tail.message())
            .await
            .expect("the stream ends")
            .expect("cleanly")
            .is_none(),
        "nothing follows the exit record"
    );

    // Resuming from the last cursor gives only the exit; the last lines are a tail away.
    let mut resumed = admin
        .jobs
        .tail(pb::TailJobRequest {
            cursor: last_cursor,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let only = next(&mut resumed).await.expect("the exit again");
    assert!(matches!(
        only.body,
        Some(pb::tail_job_response::Body::Exit(_))
    ));
    let mut last_two = admin
        .jobs
        .tail(pb::TailJobRequest {
            job_id: job.clone(),
            tail_lines: 2,
            ..Default::default()
        })
        .await
        .expect("tail 2")
        .into_inner();
    match next(&mut last_two).await.and_then(|m| m.body) {
        Some(pb::tail_job_response::Body::Chunk(chunk)) => {
            assert_eq!(chunk.data, b"line-5\nline-6\n".to_vec());
            assert_eq!(chunk.first_line, 4);
        }
        other => panic!("expected the last two lines, got {other:?}"),
    }
    assert_code(
        admin
            .jobs
            .tail(pb::TailJobRequest {
                cursor: "garbage".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "bad cursor",
    );
    assert_code(
        admin
            .jobs
            .tail(pb::TailJobRequest {
                job_id: "nosuch-job1".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nosuch-job1",
    );
}

#[tokio::test]
async fn jobs_are_listed_with_filters_got_and_killed() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let _db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let mut admin = gw.admin_client("root").await;
    let done = gw.client("carol").await.bash("db-1", "echo done").await;
    let done = done.job_id();
    let sleeper = background(&gw, "dave", "web-1", "sleep 300").await;

    let list = |host: &str, user: &str, state: pb::JobState| pb::ListJobsRequest {
        host: host.into(),
        user: user.into(),
        state: state as i32,
        ..Default::default()
    };
    let ids =
        |r: pb::ListJobsResponse| -> Vec<String> { r.jobs.into_iter().map(|j| j.job_id).collect() };
    let all = admin
        .jobs
        .list(list("", "", pb::JobState::Unspecified))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(all), [sleeper.as_str(), done.as_str()], "newest first");
    let running = admin
        .jobs
        .list(list("", "", pb::JobState::Running))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(running), [sleeper.as_str()]);
    let on_db = admin
        .jobs
        .list(list("db-1", "", pb::JobState::Unspecified))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(on_db), [done.as_str()]);
    let of_dave = admin
        .jobs
        .list(list("", "dave", pb::JobState::Unspecified))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(ids(of_dave), [sleeper.as_str()]);
    let one = admin
        .jobs
        .list(pb::ListJobsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(one.truncated && one.jobs.len() == 1);

    let got = admin
        .jobs
        .get(get_job(&done))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got.jobs.len(), 1);
    assert_eq!(got.jobs[0].state(), pb::JobState::Exited);
    assert_eq!(got.jobs[0].user, "carol");
    assert_code(
        admin
            .jobs
            .get(pb::GetJobRequest {
                job_id: done.clone(),
                host: "web-1".into(),
            })
            .await,
        Code::NotFound,
        "web-1",
    );

    let killed = admin
        .jobs
        .kill(pb::KillJobRequest {
            job_id: sleeper.clone(),
            host: "web-1".into(),
            grace_ms: 200,
        })
        .await
        .expect("kill")
        .into_inner();
    assert_eq!(killed.jobs.len(), 1);
    assert_eq!(killed.jobs[0].state(), pb::JobState::Killed, "{killed:?}");
    let after = admin
        .jobs
        .get(get_job(&sleeper))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(after.jobs[0].state(), pb::JobState::Killed);
    // Killing an ended job reports it as it is.
    let again = admin
        .jobs
        .kill(pb::KillJobRequest {
            job_id: done.clone(),
            ..Default::default()
        })
        .await
        .expect("kill an ended job")
        .into_inner();
    assert_eq!(again.jobs[0].state(), pb::JobState::Exited);
    assert_code(
        admin
            .jobs
            .kill(pb::KillJobRequest {
                job_id: "nosuch-job1".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
        "nosuch-job1",
    );
    assert_code(
        admin.jobs.kill(pb::KillJobRequest::default()).await,
        Code::InvalidArgument,
        "job_id",
    );
}

#[tokio::test]
async fn an_admin_token_grants_no_other_users_jobs_without_operator_rights() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats)
        .policy(Policy::new().operators(&["olive"]).group(
            "ops",
            Tier::Dangerous,
            &["*"],
            &["alice", "bob", "olive"],
        ))
        .admin()
        .start()
        .await;
    let job = background(&gw, "bob", "web-1", "sleep 300").await;
    let mut alice = gw.admin_client("alice").await;
    let nosuch = "nosuch-abcdefgh";
    let not_found = |status: Status, id: &str| {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        status.message().replace(id, "<id>")
    };
    let unknown = not_found(
        alice
            .jobs
            .get(get_job(nosuch))
            .await
            .expect_err("an unknown job"),
        nosuch,
    );

    // To alice (admin scope, dangerous, no operator rights) bob's job does not exist.
    let listed = alice
        .jobs
        .list(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.jobs.iter().all(|j| j.user == "alice"), "{listed:?}");
    assert_code(
        alice
            .jobs
            .list(pb::ListJobsRequest {
                user: "bob".into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
        "operator rights",
    );
    let got = alice
        .jobs
        .get(get_job(&job))
        .await
        .expect_err("bob's job is unknown to alice");
    assert_eq!(not_found(got, &job), unknown);
    let killed = alice
        .jobs
        .kill(pb::KillJobRequest {
            job_id: job.clone(),
            host: String::new(),
            grace_ms: 0,
        })
        .await
        .expect_err("alice cannot kill bob's job");
    assert_eq!(not_found(killed, &job), unknown);
    let tailed = alice
        .jobs
        .tail(pb::TailJobRequest {
            job_id: job.clone(),
            ..Default::default()
        })
        .await
        .expect_err("alice cannot tail bob's job");
    assert_eq!(not_found(tailed, &job), unknown);

    // olive is an operator: she sees, tails and kills it.
    let mut olive = gw.admin_client("olive").await;
    let listed = olive
        .jobs
        .list(pb::ListJobsRequest {
            user: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.jobs.len(), 1, "{listed:?}");
    let mut tail = olive
        .jobs
        .tail(pb::TailJobRequest {
            job_id: job.clone(),
            ..Default::default()
        })
        .await
        .expect("an operator tails bob's job")
        .into_inner();
    let killed = olive
        .jobs
        .kill(pb::KillJobRequest {
            job_id: job.clone(),
            host: "web-1".into(),
            grace_ms: 200,
        })
        .await
        .expect("an operator kills bob's job")
        .into_inner();
    assert_eq!(killed.jobs[0].state(), pb::JobState::Killed, "{killed:?}");
    // The tail ends with the exit; its cursor is olive's, and opens for nobody else.
    let cursor = loop {
        let message = next(&mut tail).await.expect("the tail ends with the exit");
        if let Some(pb::tail_job_response::Body::Exit(_)) = message.body {
            break message.cursor;
        }
    };
    assert_code(
        alice
            .jobs
            .tail(pb::TailJobRequest {
                cursor: cursor.clone(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "bad cursor",
    );
    olive
        .jobs
        .tail(pb::TailJobRequest {
            cursor,
            ..Default::default()
        })
        .await
        .expect("olive resumes with her own cursor");
}

#[tokio::test]
async fn an_approval_decided_through_the_api_unblocks_the_held_call_and_self_approval_is_refused() {
    let nats = Nats::start().await;
    let db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = admin_gateway(&nats, team_policy()).await;
    let alice_mcp = gw.client("alice").await;
    let mut alice = gw.admin_client("alice").await;
    let mut bob = gw.admin_client("bob").await;
    let mut watch = bob
        .approvals
        .watch(pb::WatchApprovalsRequest::default())
        .await
        .expect("watch approvals")
        .into_inner();

    let marker = db.dir().join("approved-ran");
    let args =
        json!({"host": "db-1", "cmd": format!("touch {} && echo approved", marker.display())});
    let held = alice_mcp.call("bash", args.clone()).await;
    let id = held.approval_id();

    let requested = next(&mut watch).await.expect("the request is watched");
    let requested = requested.approval.expect("an approval");
    assert_eq!(
        (
            requested.id.as_str(),
            requested.state(),
            requested.user.as_str()
        ),
        (id.as_str(), pb::ApprovalState::Pending, "alice")
    );
    assert_eq!(requested.hosts, ["db-1"]);
    let arguments: Value = serde_json::from_str(&requested.arguments_json).expect("JSON arguments");
    assert_eq!(arguments["cmd"], args["cmd"]);

    let pending = bob
        .approvals
        .list(pb::ListApprovalsRequest {
            state: pb::ApprovalState::Pending as i32,
            limit: 0,
        })
        .await
        .expect("list approvals")
        .into_inner();
    assert_eq!(
        pending
            .approvals
            .iter()
            .map(|a| a.id.as_str())
            .collect::<Vec<_>>(),
        [id.as_str()]
    );
    assert_code(
        alice
            .approvals
            .approve(pb::ApproveRequest { id: id.clone() })
            .await,
        Code::PermissionDenied,
        "may not approve their own request",
    );
    assert!(!marker.exists(), "a held call must not run");

    let approved = bob
        .approvals
        .approve(pb::ApproveRequest { id: id.clone() })
        .await
        .expect("approve")
        .into_inner()
        .approval
        .expect("the approval");
    assert_eq!(approved.state(), pb::ApprovalState::Approved);
    assert_eq!(approved.decided_by, "bob");
    let decided = next(&mut watch).await.expect("the decision is watched");
    assert_eq!(
        decided.approval.expect("approval").state(),
        pb::ApprovalState::Approved
    );

    let ran = alice_mcp.call("bash", with_approval(&args, &id)).await;
    assert!(!ran.is_error(), "{}", ran.text());
    ran.assert_field("output", json!("approved\n"));
    assert!(marker.exists());
    let used = bob
        .approvals
        .get(pb::GetApprovalRequest { id: id.clone() })
        .await
        .expect("get")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(used.state(), pb::ApprovalState::Used);
    assert!(used.used_at_ms > 0);
    assert_code(
        bob.approvals
            .approve(pb::ApproveRequest { id: id.clone() })
            .await,
        Code::FailedPrecondition,
        "already used",
    );

    // A denial needs a reason, and the requester's call stays refused.
    let second = alice_mcp.bash("db-1", "echo no").await;
    let second = second.structured()["approval_id"]
        .as_str()
        .expect("a second approval id")
        .to_string();
    assert_code(
        bob.approvals
            .deny(pb::DenyRequest {
                id: second.clone(),
                reason: " ".into(),
            })
            .await,
        Code::InvalidArgument,
        "reason",
    );
    let denied = bob
        .approvals
        .deny(pb::DenyRequest {
            id: second.clone(),
            reason: "not during the freeze".into(),
        })
        .await
        .expect("deny")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(denied.state(), pb::ApprovalState::Denied);
    assert_eq!(denied.reason, "not during the freeze");
    assert_code(
        bob.approvals
            .get(pb::GetApprovalRequest {
                id: "apr-0000000000000000".into(),
            })
            .await,
        Code::NotFound,
        "apr-0000000000000000",
    );
    assert_code(
        bob.approvals
            .get(pb::GetApprovalRequest { id: "nope".into() })
            .await,
        Code::InvalidArgument,
        "not an approval id",
    );
}

#[tokio::test]
async fn audit_is_queried_exported_and_verified_through_the_sink() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let mut admin = gw.admin_client("root").await;
    let query = pb::AuditQuery {
        tool: "bash".into(),
        ..Default::default()
    };
    assert_code(
        admin.audit.query(query.clone()).await,
        Code::Unavailable,
        "audit-sink",
    );

    let _sink = AuditSink::new(&nats).sqlite().start().await;
    let out = gw.client("carol").await.bash("web-1", "echo audited").await;
    let job = out.job_id();
    let records = eventually(WAIT, || {
        let mut audit = admin.audit.clone();
        let query = pb::AuditQuery {
            job_id: job.clone(),
            ..Default::default()
        };
        async move {
            let page = audit.query(query).await.ok()?.into_inner();
            let kinds: Vec<String> = page.records.iter().map(|r| r.kind.clone()).collect();
            kinds
                .iter()
                .any(|k| k == "job-finished")
                .then_some(page.records)
        }
    })
    .await;
    assert!(
        records
            .iter()
            .all(|r| r.event.as_ref().is_some_and(|e| e.job_id == job))
    );

    // Export pages through everything, one record per message, in chain order.
    let mut export = admin
        .audit
        .export(pb::AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .await
        .expect("export")
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(record) = tokio::time::timeout(WAIT, export.message())
        .await
        .expect("export messages")
        .expect("export records")
    {
        seqs.push(record.seq);
    }
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert!(seqs.len() >= records.len(), "{seqs:?}");
    assert_eq!(seqs, expected, "every record once, in order");

    let verified = admin
        .audit
        .verify(pb::AuditVerifyRequest {})
        .await
        .expect("verify")
        .into_inner();
    assert!(verified.ok, "{verified:?}");
    assert!(verified.records >= seqs.len() as u64);
    assert_code(
        admin
            .audit
            .query(pb::AuditQuery {
                cursor: "not-a-cursor".into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "cursor",
    );
}

#[tokio::test]
async fn tokens_are_minted_revoked_and_revocations_listed() {
    let nats = Nats::start().await;
    // alice mints for bob: the policy must name her a token admin.
    let gw = admin_gateway(&nats, team_policy().token_admins(&["alice"])).await;
    let mut alice = gw.admin_client("alice").await;

    let minted = alice
        .tokens
        .mint(pb::MintTokenRequest {
            user: "bob".into(),
            ttl_secs: 600,
            scopes: vec!["admin".into()],
            tier: pb::Tier::Readonly as i32,
        })
        .await
        .expect("mint")
        .into_inner();
    assert_eq!(minted.user, "bob");
    assert_eq!(minted.scopes, ["admin"]);
    assert_eq!(minted.tier(), pb::Tier::Readonly);
    let now = execmesh_proto::now_ms();
    assert!((now + 590_000..=now + 600_000).contains(&minted.expires_at_ms));
    let mut bob = AdminClient::new(
        gw.admin_channel().await.expect("connect"),
        Some(&minted.token),
    );
    bob.approvals
        .list(pb::ListApprovalsRequest::default())
        .await
        .expect("the minted admin token works");
    let mcp = alice
        .tokens
        .mint(pb::MintTokenRequest {
            user: "bob".into(),
            ..Default::default()
        })
        .await
        .expect("mint an mcp token")
        .into_inner();
    assert_eq!(mcp.scopes, ["mcp"]);
    let whoami = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    assert_eq!(
        gw.post_raw(Some(&mcp.token), whoami.clone()).await.status(),
        200
    );
    assert_code(
        alice
            .tokens
            .mint(pb::MintTokenRequest {
                user: "mallory".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
        "mallory",
    );
    assert_code(
        alice
            .tokens
            .mint(pb::MintTokenRequest {
                user: "bob".into(),
                scopes: vec!["root".into()],
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "unknown scope",
    );

    // Revoked by id: /mcp refuses it within about a second; by the token itself: so does this API.
    let revoked = alice
        .tokens
        .revoke(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::TokenId(
                mcp.token_id.clone(),
            )),
        })
        .await
        .expect("revoke by id")
        .into_inner();
    assert_eq!(revoked.token_id, mcp.token_id);
    eventually(WAIT, || async {
        gw.post_raw(Some(&mcp.token), whoami.clone()).await.status() == 401
    })
    .await;
    alice
        .tokens
        .revoke(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::Token(
                minted.token.clone(),
            )),
        })
        .await
        .expect("revoke by token");
    eventually(WAIT, || {
        let mut approvals = bob.approvals.clone();
        async move {
            approvals
                .list(pb::ListApprovalsRequest::default())
                .await
                .err()
                .is_some_and(|s| {
                    s.code() == Code::Unauthenticated && s.message().contains("revoked")
                })
        }
    })
    .await;
    let listed = alice
        .tokens
        .list_revocations(pb::ListRevocationsRequest {})
        .await
        .expect("list revocations")
        .into_inner();
    let ids: Vec<&str> = listed
        .revocations
        .iter()
        .map(|r| r.token_id.as_str())
        .collect();
    assert!(
        ids.contains(&mcp.token_id.as_str()) && ids.contains(&minted.token_id.as_str()),
        "{ids:?}"
    );
    let by_token = listed
        .revocations
        .iter()
        .find(|r| r.token_id == minted.token_id)
        .expect("listed");
    assert_eq!(by_token.expires_at_ms, minted.expires_at_ms);
    assert!(by_token.revoked_at_ms > 0);
    assert_code(
        alice
            .tokens
            .revoke(pb::RevokeTokenRequest { target: None })
            .await,
        Code::InvalidArgument,
        "token_id",
    );
}

#[tokio::test]
async fn a_missing_invalid_or_non_admin_token_is_refused() {
    let nats = Nats::start().await;
    let gw = admin_gateway(&nats, team_policy()).await;
    let list = pb::ListHostsRequest::default();

    let mut anonymous = gw.admin_client_with_token(None).await;
    assert_code(
        anonymous.hosts.list(list.clone()).await,
        Code::Unauthenticated,
        "missing bearer token",
    );
    let mut forged = gw.admin_client_with_token(Some("e30.e30.e30")).await;
    assert_code(
        forged.jobs.list(pb::ListJobsRequest::default()).await,
        Code::Unauthenticated,
        "invalid bearer token",
    );
    let mcp_only = gw.mint("alice");
    let mut user = gw.admin_client_with_token(Some(&mcp_only)).await;
    let refused = assert_code(
        user.hosts.list(list.clone()).await,
        Code::PermissionDenied,
        "admin",
    );
    assert!(refused.message().contains("--scope admin"), "{refused:?}");
    assert_code(
        user.tokens.mint(pb::MintTokenRequest::default()).await,
        Code::PermissionDenied,
        "admin",
    );
    // A user the policy does not know is refused even with the scope.
    let mut stranger = gw.admin_client("mallory").await;
    assert_code(
        stranger.hosts.list(list).await,
        Code::Unauthenticated,
        "not in this gateway's policy",
    );
}

#[tokio::test]
async fn with_mtls_a_client_without_a_certificate_from_the_ca_is_refused() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .admin_mode(AdminMode::Mtls)
        .start()
        .await;
    let token = gw.mint_admin("root");
    let list = pb::ListApprovalsRequest::default();

    let channel = gw
        .admin_channel()
        .await
        .expect("connect with the client certificate");
    AdminClient::new(channel, Some(&token))
        .approvals
        .list(list)
        .await
        .expect("a client with a certificate from the CA is served");

    // The server refuses the handshake; depending on timing the client notices at connect or
    // at its first call.
    for (who, client, alert) in [
        ("no certificate", None, "CertificateRequired"),
        (
            "another CA's certificate",
            Some(AdminPki::foreign_client()),
            "UnknownCA",
        ),
    ] {
        let refused = match gw.admin_channel_with(client.as_ref()).await {
            Err(e) => format!("{e:?}"),
            Ok(channel) => match AdminClient::new(channel, Some(&token))
                .approvals
                .list(list)
                .await
            {
                Err(status) => format!("{status:?}"),
                Ok(_) => panic!("a client with {who} must be refused"),
            },
        };
        // The handshake fails (the server's alert says why), before any token is looked at.
        assert!(refused.contains(alert), "{who}: {refused}");
    }
}

#[tokio::test]
async fn over_tls_without_a_client_ca_any_client_with_an_admin_token_is_served() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).admin_mode(AdminMode::Tls).start().await;
    let channel = gw
        .admin_channel_with(None)
        .await
        .expect("connect over TLS without a client certificate");
    let mut admin = AdminClient::new(channel, Some(&gw.mint_admin("root")));
    admin
        .approvals
        .list(pb::ListApprovalsRequest::default())
        .await
        .expect("served over TLS");
    // A plaintext client cannot talk to it.
    let plain = tonic::transport::Channel::from_shared(format!(
        "http://{}",
        gw.admin_addr().expect("an admin address")
    ))
    .expect("a URL")
    .connect()
    .await;
    if let Ok(plain) = plain {
        let mut hosts = pb::hosts_service_client::HostsServiceClient::new(plain);
        assert!(hosts.list(pb::ListHostsRequest::default()).await.is_err());
    }
}

#[tokio::test]
async fn reflection_lists_the_services_and_health_reports_each_serving() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let channel = gw.admin_channel().await.expect("connect");

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection answers without a token")
        .into_inner();
    let reply = next(&mut replies).await.expect("a reflection reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("expected a service list, got {reply:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in [
        "execmesh.v1.HostsService",
        "execmesh.v1.JobsService",
        "execmesh.v1.ApprovalsService",
        "execmesh.v1.AuditService",
        "execmesh.v1.TokensService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }

    // The descriptor of a service resolves, so grpcurl can describe and call it.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "execmesh.v1.JobsService".into(),
        )),
    };
    let mut replies = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = next(&mut replies).await.expect("a reflection reply");
    assert!(
        matches!(
            reply.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
        ),
        "{reply:?}"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["execmesh.v1.JobsService", "execmesh.v1.TokensService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            status.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service}"
        );
    }
}

#[tokio::test]
async fn token_mint_with_scope_admin_makes_a_token_the_admin_api_accepts() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let output = tokio::process::Command::new(workspace_binary("execmesh-gateway"))
        .arg("--key-file")
        .arg(gw.key_file())
        .arg("--public-url")
        .arg(&gw.audience().resource)
        .args([
            "token", "mint", "--user", "ops-1", "--ttl", "10m", "--scope", "admin",
        ])
        .output()
        .await
        .expect("run execmesh-gateway token mint");
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout)
        .expect("a token")
        .trim()
        .to_string();
    let mut admin = gw.admin_client_with_token(Some(&token)).await;
    admin
        .approvals
        .list(pb::ListApprovalsRequest::default())
        .await
        .expect("an admin-scoped token from the command line is accepted");
    // Without --scope the token is for /mcp only.
    let output = tokio::process::Command::new(workspace_binary("execmesh-gateway"))
        .arg("--key-file")
        .arg(gw.key_file())
        .arg("--public-url")
        .arg(&gw.audience().resource)
        .args(["token", "mint", "--user", "ops-1"])
        .output()
        .await
        .expect("run execmesh-gateway token mint");
    let token = String::from_utf8(output.stdout)
        .expect("a token")
        .trim()
        .to_string();
    let mut admin = gw.admin_client_with_token(Some(&token)).await;
    assert_code(
        admin.hosts.list(pb::ListHostsRequest::default()).await,
        Code::PermissionDenied,
        "admin",
    );
}

/// A policy with a token admin (root), a readonly user (carol) and an approver of every tier
/// and reach, for the minting and approving rules.
fn authz_policy() -> Policy {
    Policy::new()
        .group(
            "ops",
            Tier::Dangerous,
            &["*"],
            &["alice", "bob", "root", "erin"],
        )
        .user("carol", Tier::Readonly, &["*"])
        .user("dave", Tier::Dangerous, &["web-*"])
        .toml(
            r#"[[approvals]]
tool = "bash"

# erin is not an approver; carol and dave are, but lack the tier or the reach of db-1.
[approvers]
users = ["alice", "bob", "carol", "dave"]

[token_admins]
users = ["root"]
"#,
        )
}

/// The audit records of `kind`, once at least `count` are stored.
async fn audited(admin: &AdminClient, kind: &str, count: usize) -> Vec<pb::AuditEvent> {
    eventually(WAIT, || {
        let mut audit = admin.audit.clone();
        let query = pb::AuditQuery {
            kind: kind.into(),
            limit: 1000,
            ..Default::default()
        };
        async move {
            let page = audit.query(query).await.ok()?.into_inner();
            (page.records.len() >= count).then(|| {
                page.records
                    .into_iter()
                    .filter_map(|r| r.event)
                    .collect::<Vec<_>>()
            })
        }
    })
    .await
}

#[tokio::test]
async fn the_admin_api_mints_only_for_yourself_within_your_tier_and_scopes_unless_token_admin() {
    let nats = Nats::start().await;
    let _sink = AuditSink::new(&nats).sqlite().start().await;
    let gw = admin_gateway(&nats, authz_policy()).await;
    let mut alice = gw.admin_client("alice").await;
    let mut carol = gw.admin_client("carol").await;
    let mut root = gw.admin_client("root").await;
    let mint = |user: &str, tier: pb::Tier, scopes: &[&str]| pb::MintTokenRequest {
        user: user.into(),
        ttl_secs: 600,
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        tier: tier as i32,
    };

    // A requester cannot make a teammate's token to approve their own request with it.
    let refused = assert_code(
        alice
            .tokens
            .mint(mint("bob", pb::Tier::Unspecified, &["admin"]))
            .await,
        Code::PermissionDenied,
        "alice may not mint a token for bob",
    );
    assert!(refused.message().contains("[token_admins]"), "{refused:?}");
    // A readonly user holding an admin token cannot mint a dangerous one, even for herself.
    let refused = assert_code(
        carol
            .tokens
            .mint(mint("carol", pb::Tier::Dangerous, &["mcp"]))
            .await,
        Code::PermissionDenied,
        "dangerous",
    );
    assert!(refused.message().contains("(readonly)"), "{refused:?}");
    let own = carol
        .tokens
        .mint(mint("", pb::Tier::Unspecified, &["mcp"]))
        .await
        .expect("carol mints for herself")
        .into_inner();
    assert_eq!(
        (own.user.as_str(), own.tier()),
        ("carol", pb::Tier::Readonly)
    );
    // Nor with a scope the minting token lacks.
    let admin_only = gw.issue(
        "alice",
        Duration::from_secs(600),
        "admin",
        execmesh_gateway::core::tier::Tier::Dangerous,
    );
    let mut narrow = gw.admin_client_with_token(Some(&admin_only)).await;
    assert_code(
        narrow
            .tokens
            .mint(mint("alice", pb::Tier::Unspecified, &["mcp"]))
            .await,
        Code::PermissionDenied,
        "`mcp` scope",
    );
    // Nor above the tier the minting token carries.
    let capped = gw.issue(
        "alice",
        Duration::from_secs(600),
        "mcp admin",
        execmesh_gateway::core::tier::Tier::Standard,
    );
    let mut capped = gw.admin_client_with_token(Some(&capped)).await;
    assert_code(
        capped
            .tokens
            .mint(mint("alice", pb::Tier::Dangerous, &["mcp"]))
            .await,
        Code::PermissionDenied,
        "above the tier alice acts with (standard)",
    );
    let alices = alice
        .tokens
        .mint(mint("alice", pb::Tier::Standard, &["admin"]))
        .await
        .expect("alice mints for herself")
        .into_inner();
    assert_eq!(alices.tier(), pb::Tier::Standard);

    // A token admin mints for others, never above their tier in the policy.
    assert_code(
        root.tokens
            .mint(mint("carol", pb::Tier::Standard, &["mcp"]))
            .await,
        Code::PermissionDenied,
        "carol's tier in the policy (readonly)",
    );
    let bobs = root
        .tokens
        .mint(mint("bob", pb::Tier::Dangerous, &["admin"]))
        .await
        .expect("a token admin mints for bob")
        .into_inner();
    assert_eq!(
        (bobs.user.as_str(), bobs.tier()),
        ("bob", pb::Tier::Dangerous)
    );
    root.tokens
        .revoke(pb::RevokeTokenRequest {
            target: Some(pb::revoke_token_request::Target::Token(bobs.token.clone())),
        })
        .await
        .expect("revoke bob's token");

    // Every mint and revoke is audited: who, for whom, tier, scopes, id, expiry; never the token.
    let minted = audited(&root, "token-minted", 3).await;
    let summary: Vec<(String, String, String, String)> = minted
        .iter()
        .map(|e| match &e.body {
            Some(pb::audit_event::Body::TokenMinted(m)) => {
                assert!(m.expires_at_ms > 0 && !m.token_id.is_empty(), "{m:?}");
                (
                    e.user.clone(),
                    m.for_user.clone(),
                    m.tier.clone(),
                    m.grounds.clone(),
                )
            }
            other => panic!("not a token-minted body: {other:?}"),
        })
        .collect();
    for expected in [
        ("carol", "carol", "readonly", "self"),
        ("alice", "alice", "standard", "self"),
        ("root", "bob", "dangerous", "token_admin"),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
            expected.3.to_string(),
        );
        assert!(
            summary.contains(&expected),
            "{expected:?} not in {summary:?}"
        );
    }
    let bob_minted = minted
        .iter()
        .find_map(|e| match &e.body {
            Some(pb::audit_event::Body::TokenMinted(m)) if m.for_user == "bob" => Some(m.clone()),
            _ => None,
        })
        .expect("bob's mint");
    assert_eq!(bob_minted.token_id, bobs.token_id);
    assert_eq!(bob_minted.scopes, ["admin"]);
    assert_eq!(bob_minted.expires_at_ms, bobs.expires_at_ms);
    let revoked = audited(&root, "token-revoked", 1).await;
    match &revoked[0].body {
        Some(pb::audit_event::Body::TokenRevoked(r)) => {
            assert_eq!(
                (r.token_id.as_str(), r.for_user.as_str(), r.by.as_str()),
                (bobs.token_id.as_str(), "bob", "root")
            );
        }
        other => panic!("not a token-revoked body: {other:?}"),
    }
    // The refusals are audited too, naming the RPC.
    let denied = audited(&root, "call-denied", 5).await;
    assert!(
        denied.iter().any(|e| e.user == "alice"
            && matches!(&e.body, Some(pb::audit_event::Body::CallDenied(d))
                if d.reason.contains("TokensService.Mint") && d.reason.contains("for bob"))),
        "{denied:?}"
    );
    let everything = format!("{minted:?}{revoked:?}{denied:?}");
    for token in [&own.token, &alices.token, &bobs.token] {
        assert!(
            !everything.contains(token.as_str()),
            "a token reached the audit trail"
        );
    }
}

#[tokio::test]
async fn approvers_must_be_named_hold_the_tier_and_reach_the_call_needs_and_never_the_requester() {
    let nats = Nats::start().await;
    let _db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = admin_gateway(&nats, authz_policy()).await;
    let alice_mcp = gw.client("alice").await;
    let args = json!({"host": "db-1", "cmd": "echo released"});
    let held = alice_mcp.call("bash", args.clone()).await;
    let id = held.structured()["approval_id"]
        .as_str()
        .unwrap_or_else(|| panic!("held: {}", held.text()))
        .to_string();
    let approve = |id: &str| pb::ApproveRequest { id: id.into() };

    let mut alice = gw.admin_client("alice").await;
    assert_code(
        alice.approvals.approve(approve(&id)).await,
        Code::PermissionDenied,
        "may not approve their own request",
    );
    let mut erin = gw.admin_client("erin").await;
    assert_code(
        erin.approvals.approve(approve(&id)).await,
        Code::PermissionDenied,
        "erin is not an approver",
    );
    let mut carol = gw.admin_client("carol").await;
    let refused = assert_code(
        carol.approvals.approve(approve(&id)).await,
        Code::PermissionDenied,
        "needs tier standard",
    );
    assert!(
        refused.message().contains("carol acts with tier readonly"),
        "{refused:?}"
    );
    let mut dave = gw.admin_client("dave").await;
    let refused = assert_code(
        dave.approvals
            .deny(pb::DenyRequest {
                id: id.clone(),
                reason: "no".into(),
            })
            .await,
        Code::PermissionDenied,
        "host db-1 is outside dave's reach",
    );
    assert!(refused.message().contains("web-*"), "{refused:?}");

    let mut bob = gw.admin_client("bob").await;
    let approved = bob
        .approvals
        .approve(approve(&id))
        .await
        .expect("bob may approve")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(approved.decided_by, "bob");
    let ran = alice_mcp.call("bash", with_approval(&args, &id)).await;
    ran.assert_field("output", json!("released\n"));

    // The policy in force at decision time decides: without [approvers], nobody approves.
    let second = alice_mcp.call("bash", args.clone()).await;
    let second = second.structured()["approval_id"]
        .as_str()
        .expect("a second approval id")
        .to_string();
    let version = |out: &execmesh_tests::ToolOutput| {
        out.structured()["policy_version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = version(&alice_mcp.call("whoami", json!({})).await);
    let path = gw.policy_path().expect("a policy file");
    let authz = authz_policy().to_string();
    let without = authz.replace(
        "[approvers]\nusers = [\"alice\", \"bob\", \"carol\", \"dave\"]\n",
        "",
    );
    assert_ne!(without, authz);
    std::fs::write(path, without).expect("rewrite the policy");
    eventually(WAIT, || async {
        version(&alice_mcp.call("whoami", json!({})).await) != before
    })
    .await;
    assert_code(
        bob.approvals.approve(approve(&second)).await,
        Code::PermissionDenied,
        "names no approvers",
    );
}

#[tokio::test]
async fn token_mint_refuses_a_tier_above_the_users_a_ttl_past_the_maximum_and_a_guessed_gateway() {
    let nats = Nats::start().await;
    // A gateway with a public URL: the README's old command minted for 127.0.0.1:8420 instead.
    let gw = Gateway::new(&nats)
        .policy(authz_policy())
        .configure(|c| c.public_url = Some("https://mesh.example.com/mcp".into()))
        .start()
        .await;
    let policy = gw.policy_path().expect("a policy file");
    let mint = |settings: &[&str], args: &[&str]| {
        let mut command = tokio::process::Command::new(workspace_binary("execmesh-gateway"));
        command
            .arg("--key-file")
            .arg(gw.key_file())
            .arg("--policy-file")
            .arg(policy)
            .args(settings)
            .args(["token", "mint"])
            .args(args);
        async move {
            command
                .output()
                .await
                .expect("run execmesh-gateway token mint")
        }
    };
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});

    // Without the gateway's public URL (or listen address) it does not guess.
    let out = mint(&[], &["--user", "carol"]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(text(&out.stderr).contains("--public-url"), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");

    let public = ["--public-url", "https://mesh.example.com/mcp"];
    let out = mint(&public, &["--user", "carol"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("https://mesh.example.com/mcp"),
        "{out:?}"
    );
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(gw.post_raw(Some(&token), list.clone()).await.status(), 200);

    // Above the user's tier: an error naming the user and both tiers, not a quiet downgrade.
    let out = mint(&public, &["--user", "carol", "--tier", "dangerous"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = text(&out.stderr);
    for needle in ["`carol`", "dangerous", "readonly"] {
        assert!(stderr.contains(needle), "{needle} not in {stderr}");
    }
    assert!(out.stdout.is_empty(), "{out:?}");
    // Longer than the gateway accepts (90 days unless configured).
    let out = mint(&public, &["--user", "carol", "--ttl", "200d"]).await;
    assert_eq!(out.status.code(), Some(64), "{out:?}");
    assert!(
        text(&out.stderr).contains("max_token_lifetime_secs"),
        "{out:?}"
    );
}
