//! MCP Tasks end to end: a client that declares the Tasks extension gets a task for `bash`,
//! `grep` and `file` `copy`, stored in JetStream so another replica answers for it, also after
//! the replica that created it died; a task is its user's alone; cancelling it stops its
//! processes on the host; it is forgotten when its TTL is up; a client following its tasks on
//! `subscriptions/listen` is sent each state they reach, from any replica.

use std::time::Duration;

use rmcp::model::{CallToolResponse, ClientCapabilities, TaskStatus};
use serde_json::{Value, json};

use execmesh_tests::process::{job_processes, jobs_running};
use execmesh_tests::tasks::{TaskListen, error_code};
use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, eventually};

/// The JSON-RPC code the extension gives an unknown (or another user's, or expired) task.
const INVALID_PARAMS: i32 = -32602;

/// `bash` arguments for a command on `host` that runs until killed, a shell and two sleeps in one
/// process group, whose environment carries `marker`.
fn long_command(host: &str, marker: &str) -> serde_json::Value {
    json!({"host": host, "cmd": "sleep 1000 & sleep 1000 & wait", "env": {"TEST_MARKER": marker}})
}

/// A marker no other run of the suite uses (a failed run may leave its processes behind).
fn unique_marker(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{name}-{}-{nanos}", std::process::id())
}

/// The job of the command carrying `marker`, once it runs on this machine.
async fn job_of(marker: &str) -> String {
    eventually(Duration::from_secs(10), || async {
        jobs_running(marker).into_iter().next()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_as_a_task_answers_at_once_and_its_result_fits_the_schema() {
    let nats = Nats::start().await;
    let _web1 = NodeAgent::new(&nats, "web-1").start().await;
    let _web2 = NodeAgent::new(&nats, "web-2").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.task_client("alice").await;

    // One host: the task's result is the command's end, not a job id to follow (the task
    // waits past the 2 s inline window a plain call has).
    let task = client
        .call_task(
            "bash",
            json!({"host": "web-1", "cmd": "sleep 2.5; echo done"}),
        )
        .await;
    assert!(task.id.starts_with("task-"), "{task:?}");
    assert_eq!(task.ttl_ms, Some(3_600_000));
    assert_eq!(task.poll_interval_ms, Some(1_000));
    let out = client.task_result(&task, Duration::from_secs(30)).await;
    assert!(!out.is_error(), "{}", out.text());
    out.assert_field("state", "exited");
    out.assert_field("output", "done\n");

    // Fan-out: every host's status in the task's result.
    let task = client
        .call_task("bash", json!({"hosts": "web-*", "cmd": "echo hi"}))
        .await;
    let out = client.task_result(&task, Duration::from_secs(30)).await;
    assert!(!out.is_error(), "{}", out.text());
    let hosts = out.structured()["hosts"].as_array().expect("hosts").clone();
    assert_eq!(hosts.len(), 2, "{}", out.text());
    assert!(hosts.iter().all(|h| h["status"] == "ok"), "{}", out.text());

    // A refusal is a completed task whose result is the refusal (isError), as the extension
    // says of tool errors.
    let task = client
        .call_task("bash", json!({"host": "nowhere-1", "cmd": "true"}))
        .await;
    let out = client.task_result(&task, Duration::from_secs(30)).await;
    out.assert_refused_as("unknown_host", "nowhere-1");

    // Quick tools answer as before; so does a client that did not declare the extension.
    match client.call_once("whoami", json!({})).await {
        Ok(CallToolResponse::Complete(result)) => assert_ne!(result.is_error, Some(true)),
        other => panic!("whoami answered {other:?}"),
    }
    let plain = gw.client("alice").await;
    plain
        .bash("web-1", "echo plain")
        .await
        .assert_field("output", "plain\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grep_and_file_copy_run_as_tasks() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().expect("a root");
    let agent = |host: &str| {
        NodeAgent::new(&nats, host)
            .arg("--file-root", root.path())
            .arg("--warm-shells", "0")
            .start()
    };
    let (_g1, _g2) = (agent("g-1").await, agent("g-2").await);
    let src = root.path().join("app.log");
    std::fs::write(&src, "INFO up\nERROR disk full\n").expect("write the log");
    let gw = Gateway::new(&nats).start().await;
    let client = gw.task_client("alice").await;

    let task = client
        .call_task(
            "grep",
            json!({"hosts": "g-*", "pattern": "ERROR", "paths": [root.path()]}),
        )
        .await;
    let out = client.task_result(&task, Duration::from_secs(30)).await;
    assert!(!out.is_error(), "{}", out.text());
    out.assert_field("total_matches", 2);

    let dst = root.path().join("copy/app.log");
    let task = client
        .call_task(
            "file",
            json!({"host": "g-1", "action": "copy", "path": src, "to_host": "g-2", "to": dst,
                   "create_dirs": true}),
        )
        .await;
    let out = client.task_result(&task, Duration::from_secs(30)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(
        std::fs::read_to_string(&dst).expect("the copy"),
        "INFO up\nERROR disk full\n"
    );
    // Other file actions are quick: no task.
    match client
        .call_once(
            "file",
            json!({"host": "g-1", "action": "stat", "path": src}),
        )
        .await
    {
        Ok(CallToolResponse::Complete(result)) => assert_ne!(result.is_error, Some(true)),
        other => panic!("file stat answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_its_users_alone() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let alice = gw.task_client("alice").await;
    let bob = gw.task_client("bob").await;
    let marker = &unique_marker("task-owner");
    let task = alice.call_task("bash", long_command("web-1", marker)).await;
    let job = job_of(marker).await;

    // Bob can neither read nor cancel it: to him it does not exist.
    let refused = bob
        .get_task(&task)
        .await
        .expect_err("bob reads alice's task");
    assert_eq!(error_code(&refused), Some(INVALID_PARAMS), "{refused}");
    let refused = bob
        .cancel_task(&task)
        .await
        .expect_err("bob cancels alice's task");
    assert_eq!(error_code(&refused), Some(INVALID_PARAMS), "{refused}");
    assert!(
        !job_processes(&job).is_empty(),
        "bob's cancel stopped nothing"
    );
    let got = alice.get_task(&task).await.expect("alice reads her task");
    assert_eq!(got.task.status(), TaskStatus::Working);

    // An id that was never a task is refused the same way.
    let mut unknown = task.clone();
    unknown.id = "task-0000000000000000".into();
    let refused = alice.get_task(&unknown).await.expect_err("an unknown task");
    assert_eq!(error_code(&refused), Some(INVALID_PARAMS), "{refused}");

    alice
        .cancel_task(&task)
        .await
        .expect("alice cancels her task");
    eventually(Duration::from_secs(15), || async {
        job_processes(&job).is_empty()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_survives_its_replica_and_is_cancelled_from_another() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let mut replica = gw.spawn_replica(&nats).await;
    let token = gw.mint("alice");
    let on_replica = McpClient::with_tasks(replica.url(), &token).await;
    let marker = &unique_marker("task-replica");
    let task = on_replica
        .call_task("bash", long_command("web-1", marker))
        .await;
    let job = job_of(marker).await;
    // Its two sleeps (the warm shell running them has no environment of the job's own).
    eventually(Duration::from_secs(10), || async {
        job_processes(&job).len() >= 2
    })
    .await;

    // A client follows the task on the other replica meanwhile.
    let mut listen = TaskListen::open(&gw.url(), &token, &[&task.id], true)
        .await
        .unwrap_or_else(|answer| panic!("no stream: {answer:?}"));
    let ack = listen.next(Duration::from_secs(10)).await.expect("an ack");
    assert_eq!(ack["params"]["notifications"]["taskIds"], json!([task.id]));
    let first = listen.next_task(Duration::from_secs(10)).await;
    assert_eq!(first["status"], "working", "{first}");

    // The replica that created the task and runs its call dies.
    replica.kill_hard().await;

    // Another replica answers for the task: still working (its job runs on), and once the
    // dead replica's lease has run out, saying why. The follower is told first: nobody
    // asks tasks/get meanwhile, so the note comes from the listening replica's own re-reads,
    // which settle the orphan as tasks/get would.
    let told = listen.next_task(Duration::from_secs(30)).await;
    assert_eq!(told["status"], "working", "{told}");
    let note = told["statusMessage"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(note.contains("stopped") && note.contains("still"), "{told}");
    let client = gw.task_client("alice").await;
    let got = client
        .get_task(&task)
        .await
        .expect("tasks/get on another replica");
    assert_eq!(got.task.status(), TaskStatus::Working);
    assert_eq!(got.task.task.status_message.as_deref(), Some(&*note));

    // Cancelled there, the job's whole process group goes.
    client.cancel_task(&task).await.expect("tasks/cancel");
    eventually(Duration::from_secs(15), || async {
        job_processes(&job).is_empty()
    })
    .await;
    let got = client
        .get_task(&task)
        .await
        .expect("tasks/get after the cancel");
    assert_eq!(got.task.status(), TaskStatus::Cancelled);
    // Cancelling again is acknowledged and changes nothing.
    client.cancel_task(&task).await.expect("a second cancel");
    let ended = listen.next_task(Duration::from_secs(10)).await;
    assert_eq!(ended["status"], "cancelled", "{ended}");
    let end = listen.next(Duration::from_secs(10)).await.expect("the end");
    assert_eq!(end["result"]["resultType"], "complete", "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_task_is_forgotten_when_its_ttl_is_up() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.task_ttl = Duration::from_secs(2))
        .start()
        .await;
    let client = gw.task_client("alice").await;
    let task = client
        .call_task("bash", json!({"host": "web-1", "cmd": "echo short-lived"}))
        .await;
    assert_eq!(task.ttl_ms, Some(2_000));
    let out = client.task_result(&task, Duration::from_secs(10)).await;
    out.assert_field("output", "short-lived\n");
    let gone = eventually(Duration::from_secs(10), || async {
        client.get_task(&task).await.err()
    })
    .await;
    assert_eq!(error_code(&gone), Some(INVALID_PARAMS), "{gone}");
    assert!(gone.to_string().contains("unknown task"), "{gone}");
}

/// A 2025 client declares its capabilities in `initialize`, which a stateless server does not
/// keep: its calls answer with plain results, never a task it might not expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_client_gets_plain_results() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let capabilities = ClientCapabilities::builder().enable_tasks().build();
    let token = gw.mint("alice");
    let client =
        McpClient::connect_declaring(&gw.url(), Some(&token), Some("2025-11-25"), capabilities)
            .await
            .expect("a 2025-11-25 client connects");
    match client
        .call_once("bash", json!({"host": "web-1", "cmd": "echo legacy"}))
        .await
    {
        Ok(CallToolResponse::Complete(result)) => {
            assert_eq!(
                result.structured_content.expect("structured")["output"],
                "legacy\n"
            )
        }
        other => panic!("a legacy client got {other:?}"),
    }
}

/// The server says it serves the Tasks extension.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_extension_is_declared() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.task_client("alice").await;
    let info = client.service().peer_info().expect("server info").clone();
    let extensions = serde_json::to_value(&info.capabilities).expect("capabilities");
    assert_eq!(
        extensions["extensions"]["io.modelcontextprotocol/tasks"],
        json!({}),
        "{extensions}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listening_client_is_sent_each_state_of_its_own_tasks_from_any_replica() {
    const WAIT: Duration = Duration::from_secs(30);
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let mut gw = Gateway::new(&nats).start().await;
    let replica = gw.spawn_replica(&nats).await;
    let alice = gw.task_client("alice").await;
    let bob = gw.task_client("bob").await;
    let short = alice
        .call_task(
            "bash",
            json!({"host": "web-1", "cmd": "sleep 1; echo done"}),
        )
        .await;
    let long = alice
        .call_task("bash", long_command("web-1", &unique_marker("task-listen")))
        .await;
    let bobs = bob
        .call_task("bash", json!({"host": "web-1", "cmd": "true"}))
        .await;

    // Followed on the other replica: acknowledged are alice's two tasks, neither bob's nor an
    // id that never was.
    let alices_token = gw.mint("alice");
    let named = [&*short.id, &*long.id, &*bobs.id, "task-0000000000000000"];
    let mut listen = TaskListen::open(replica.url(), &alices_token, &named, true)
        .await
        .unwrap_or_else(|answer| panic!("no stream: {answer:?}"));
    let ack = listen.next(WAIT).await.expect("an acknowledgement");
    assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
    assert_eq!(
        ack["params"]["notifications"]["taskIds"],
        json!([short.id, long.id])
    );

    // Each task as it stands, then again as it changes, until the short one has completed:
    // its last state is the one tasks/get gives, result and all.
    let mut seen: Vec<Value> = Vec::new();
    let done = loop {
        let task = listen.next_task(WAIT).await;
        assert!(
            task["taskId"] == short.id || task["taskId"] == long.id,
            "{task}"
        );
        seen.push(task.clone());
        if task["taskId"] == short.id && task["status"] == "completed" {
            break task;
        }
    };
    assert!(
        seen.iter()
            .any(|t| t["taskId"] == long.id && t["status"] == "working"),
        "the long task's state was not sent: {seen:?}"
    );
    assert_eq!(
        done["result"]["structuredContent"]["output"], "done\n",
        "{done}"
    );
    let got = alice.get_task(&short).await.expect("tasks/get");
    let mut got = serde_json::to_value(got).expect("a task as JSON");
    let mut sent = done.clone();
    for fields in [&mut got, &mut sent] {
        let fields = fields.as_object_mut().expect("an object");
        for changing in ["lastUpdatedAt", "resultType", "_meta"] {
            fields.remove(changing);
        }
    }
    assert_eq!(sent, got, "the notification is not what tasks/get shows");

    // Cancelled on the first replica, the long task's end is sent, and with every task ended
    // the subscription ends with its request's result.
    alice.cancel_task(&long).await.expect("tasks/cancel");
    loop {
        let task = listen.next_task(WAIT).await;
        assert_eq!(
            task["taskId"], long.id,
            "a task sent again after its end: {task}"
        );
        if task["status"] == "cancelled" {
            break;
        }
    }
    let end = listen.next(WAIT).await.expect("the subscription's end");
    assert_eq!(end["id"], listen.id, "{end}");
    assert_eq!(end["result"]["resultType"], "complete", "{end}");
    assert!(listen.next(WAIT).await.is_none(), "a message after the end");

    // Bob, naming alice's task, is acknowledged nothing, and his stream ends at once.
    let mut peek = TaskListen::open(&gw.url(), &gw.mint("bob"), &[&long.id], true)
        .await
        .unwrap_or_else(|answer| panic!("no stream: {answer:?}"));
    let ack = peek.next(WAIT).await.expect("an acknowledgement");
    assert_eq!(
        ack["params"]["notifications"]["taskIds"],
        json!([]),
        "{ack}"
    );
    let end = peek.next(WAIT).await.expect("the subscription's end");
    assert_eq!(end["result"]["resultType"], "complete", "{end}");

    // A client that did not declare the extension is refused the way the extension says.
    let (status, body) = TaskListen::open(&gw.url(), &alices_token, &[&short.id], false)
        .await
        .err()
        .expect("an undeclared extension refused");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["error"]["code"], -32021, "{body}");
    let required = &body["error"]["data"]["requiredCapabilities"]["extensions"];
    assert_eq!(
        required["io.modelcontextprotocol/tasks"],
        json!({}),
        "{body}"
    );

    // One subscription follows at most 100 tasks.
    let many: Vec<String> = (0..101).map(|n| format!("task-{n:016x}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (_, body) = TaskListen::open(&gw.url(), &alices_token, &many, true)
        .await
        .err()
        .expect("too many tasks refused");
    assert_eq!(body["error"]["code"], -32602, "{body}");

    // A gateway that stops ends its subscriptions with their result: it neither cuts them nor
    // waits for their tasks to end.
    let last = alice
        .call_task("bash", json!({"host": "web-1", "cmd": "sleep 20"}))
        .await;
    let mut open = TaskListen::open(&gw.url(), &alices_token, &[&last.id], true)
        .await
        .unwrap_or_else(|answer| panic!("no stream: {answer:?}"));
    open.next(WAIT).await.expect("an acknowledgement");
    let first = open.next_task(WAIT).await;
    assert_eq!(first["status"], "working", "{first}");
    gw.stop().await;
    let end = open.next(WAIT).await.expect("the subscription's end");
    assert_eq!(end["result"]["resultType"], "complete", "{end}");
}
