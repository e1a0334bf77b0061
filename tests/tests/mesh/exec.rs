//! End-to-end: an MCP client runs commands on real agents through the gateway and reads their output.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use execmesh_tests::process::job_processes;
use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, eventually};

/// Pages a job from its start (or `cursor`) to its end and returns every line.
async fn read_all(client: &McpClient, job: &str, cursor: Option<String>) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut cursor = cursor;
    let mut pages = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < deadline, "paging {job} did not finish");
        let mut args = json!({"action": "poll", "job": job});
        if let Some(c) = &cursor {
            args["cursor"] = json!(c);
        }
        let out = client.call("job", args).await;
        assert!(!out.is_error(), "poll failed: {}", out.text());
        let s = out.structured();
        pages += 1;
        let text = s["output"].as_str().unwrap_or_default();
        lines.extend(text.lines().map(str::to_string));
        if s["done"] == json!(true) {
            return (lines, pages);
        }
        let next = s["next_cursor"]
            .as_str()
            .expect("a page before the end has a cursor")
            .to_string();
        if s["lines"] == json!(0) {
            // Caught up with a running job: wait for more output without spinning hard.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cursor = Some(next);
    }
}

/// Whether any process belongs to process group `pgid`.
fn group_alive(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // Fields after the command's closing parenthesis: state ppid pgrp …
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(2).map(str::to_string))
            .is_some_and(|pgrp| pgrp == pgid.to_string())
    })
}

fn numbers(from: u64, to: u64) -> Vec<String> {
    (from..=to).map(|i| i.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_are_listed_with_schemas_and_annotations() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let tools = gw.client("alice").await.list_tools().await;
    let names: BTreeSet<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(
        names,
        [
            "bash", "facts", "file", "grep", "hosts", "job", "runbook", "whoami"
        ]
        .map(String::from)
        .into()
    );
    for tool in &tools {
        assert!(
            tool.output_schema.is_some(),
            "{} has no outputSchema",
            tool.name
        );
        assert!(
            tool.annotations.is_some(),
            "{} has no annotations",
            tool.name
        );
        assert!(
            tool.description.as_ref().is_some_and(|d| d.len() > 40),
            "{} is undocumented",
            tool.name
        );
    }
    let hosts = tools.iter().find(|t| t.name == "hosts").unwrap();
    assert_eq!(
        hosts.annotations.as_ref().unwrap().read_only_hint,
        Some(true)
    );
    let bash = tools.iter().find(|t| t.name == "bash").unwrap();
    assert_eq!(
        bash.annotations.as_ref().unwrap().read_only_hint,
        Some(false)
    );
    let required = bash
        .input_schema
        .get("required")
        .cloned()
        .unwrap_or_default();
    assert!(
        required.as_array().unwrap().contains(&json!("cmd")),
        "{required}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_round_trip() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.bash("web-1", "echo hi").await;
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    assert_eq!(s["output"], "hi\n");
    assert_eq!(s["exit_code"], 0);
    assert_eq!(s["state"], "exited");
    assert_eq!(s["truncated"], false);
    assert!(out.text().starts_with("hi\n"), "{}", out.text());
    assert!(out.text().contains("exit 0"), "{}", out.text());
    // The agent recorded the trace id of the call in the job status.
    assert_eq!(s["status"]["trace_id"], s["trace_id"]);
    assert_eq!(s["trace_id"].as_str().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nonzero_exit_is_a_result_not_an_error() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client
        .bash("web-1", "echo out; echo oops >&2; exit 3")
        .await;
    assert!(
        !out.is_error(),
        "a non-zero exit must not be isError: {}",
        out.text()
    );
    let s = out.structured();
    assert_eq!(s["exit_code"], 3);
    assert_eq!(s["state"], "exited");
    let output = s["output"].as_str().unwrap();
    assert!(
        output.contains("out\n") && output.contains("oops\n"),
        "{output}"
    );
    assert!(out.text().contains("exit 3"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_whoami_describe_the_mesh_and_the_caller() {
    let nats = Nats::start().await;
    let _a = nats.agent("web-1", &[("role", "web")]).await;
    let _b = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.call("hosts", json!({})).await;
    let hosts = out.structured()["hosts"].as_array().unwrap().clone();
    assert_eq!(hosts.len(), 2, "{}", out.text());
    let web = hosts.iter().find(|h| h["host"] == "web-1").unwrap();
    assert_eq!(web["state"], "online");
    assert_eq!(web["labels"]["role"], "web");
    let only_web = client.call("hosts", json!({"selector": "web-*"})).await;
    assert_eq!(only_web.structured()["hosts"].as_array().unwrap().len(), 1);
    let me = client.call("whoami", json!({})).await;
    assert_eq!(me.structured()["user"], "alice");
    assert!(me.text().contains("alice"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_job_pages_to_the_end_with_every_line_once_in_order() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "seq 1 200000", "title": "count"}),
        )
        .await;
    let s = out.structured();
    let job = s["job"].as_str().unwrap().to_string();
    assert!(job.starts_with("count-"), "{job}");
    // The inline answer is the first page; the rest follows with the cursor.
    assert_eq!(s["truncated"], true);
    let first: Vec<String> = s["output"]
        .as_str()
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(first.len(), 1000, "default page is 1000 lines");
    let (rest, pages) = read_all(&client, &job, s["next_cursor"].as_str().map(String::from)).await;
    let mut all = first;
    all.extend(rest);
    assert_eq!(all.len(), 200_000);
    assert!(
        all == numbers(1, 200_000),
        "lines missing, repeated or out of order"
    );
    assert!(pages >= 199, "pages are capped: {pages}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_page_and_page_caps() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let out = client.bash("web-1", "seq 1 50000").await;
    let job = out.job_id();
    let tail = client
        .call("job", json!({"action": "poll", "job": job, "tail": 10}))
        .await;
    let s = tail.structured();
    assert_eq!(
        s["output"].as_str().unwrap().lines().collect::<Vec<_>>(),
        numbers(49_991, 50_000)
    );
    assert_eq!(s["first_line"], 49_990);
    assert_eq!(s["done"], true);
    // Line and byte caps.
    let page = client
        .call("job", json!({"action": "poll", "job": job, "max_lines": 7}))
        .await;
    assert_eq!(page.structured()["lines"], 7);
    let page = client
        .call(
            "job",
            json!({"action": "poll", "job": job, "max_bytes": 1024}),
        )
        .await;
    let bytes = page.structured()["output"].as_str().unwrap().len();
    assert!(bytes <= 1024 && bytes > 900, "{bytes}");
    // A long line is clamped with a visible marker.
    let out = client
        .bash("web-1", "head -c 10000 /dev/zero | tr '\\0' x; echo")
        .await;
    let text = out.structured()["output"].as_str().unwrap().to_string();
    assert!(
        text.contains("[line clamped: 5904 more bytes]"),
        "{}",
        &text[text.len().saturating_sub(80)..]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_window_versus_bg() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let cmd = "sleep 0.5; echo done";
    let inline = client.bash("web-1", cmd).await;
    assert_eq!(inline.structured()["state"], "exited", "{}", inline.text());
    assert_eq!(inline.structured()["output"], "done\n");

    let started = Instant::now();
    let bg = client
        .call("bash", json!({"host": "web-1", "cmd": cmd, "bg": true}))
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "bg must not wait for the job"
    );
    let s = bg.structured();
    assert_eq!(s["state"], "running");
    assert!(s["next_cursor"].is_string());
    let job = s["job"].as_str().unwrap();
    assert!(bg.text().contains(job));

    let short_wait = client
        .call("bash", json!({"host": "web-1", "cmd": cmd, "wait": 0.1}))
        .await;
    assert_eq!(short_wait.structured()["state"], "running");

    let waited = client.wait_exited(job, 10).await;
    assert_eq!(waited.structured()["job"]["exit_code"], 0);
    assert_eq!(waited.structured()["output"], "done\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_leaves_no_process_of_the_group() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let s = client
        .bash_running(
            "web-1",
            "trap '' TERM; sleep 1000 & sleep 1000 & echo started; wait",
            0.3,
        )
        .await;
    let pgid = s["status"]["pid"].as_u64().unwrap() as u32;
    assert!(group_alive(pgid));
    let job = s["job"].as_str().unwrap();
    client.kill(job).await;
    eventually(Duration::from_secs(10), || async { !group_alive(pgid) }).await;
    // Killing it again reports how it ended instead of failing.
    let again = client.job("kill", job).await;
    assert_eq!(again.structured()["job"]["state"], "killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_and_unknown_hosts_are_reported_at_once_by_name() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    agent.stop().await;

    let started = Instant::now();
    let out = client.bash("web-1", "true").await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    assert!(out.is_error());
    out.assert_text_has("web-1");
    out.assert_text_has("offline");
    let hosts = client.call("hosts", json!({})).await;
    assert_eq!(hosts.structured()["hosts"][0]["state"], "offline");

    let out = client.bash("nope-9", "true").await;
    assert!(out.is_error());
    out.assert_text_has("unknown host `nope-9`");
    out.assert_text_has("web-1");

    let out = client.bash("Bad.Host", "true").await;
    out.assert_refused("Bad.Host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_job_and_bad_cursor_are_clear_errors() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    for action in ["poll", "wait", "kill"] {
        let out = client.job(action, "nope-abcdefgh").await;
        assert!(out.is_error(), "{action}");
        out.assert_text_has("unknown job `nope-abcdefgh`");
    }
    let out = client
        .call("job", json!({"action": "poll", "cursor": "not-a-cursor"}))
        .await;
    out.assert_refused("bad cursor");
    let out = client.call("job", json!({"action": "explode"})).await;
    out.assert_refused("invalid arguments for `job`");
    let out = client.call("bash", json!({"host": "web-1"})).await;
    out.assert_refused("cmd");
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "true", "cwd": "/does/not/exist"}),
        )
        .await;
    out.assert_refused("/does/not/exist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_the_end_of_a_finished_job_answers_done() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let job = client.bash_bg("web-1", "echo one; sleep 1; echo two").await;
    // A cursor issued while the job ran, after everything it had written.
    let cursor = eventually(Duration::from_secs(10), || async {
        let out = client.job("poll", &job).await;
        (out.structured()["output"] == json!("one\n") && out.structured()["done"] == json!(false))
            .then(|| out.structured()["next_cursor"].as_str().map(String::from))
            .flatten()
    })
    .await;
    client.wait_exited(&job, 20).await;
    // The job's output leaves MESH_OUT (as retention removes it): the cursor now points past
    // everything that is stored, and the job is over.
    let subject = format!("mesh.v1.default.out.web-1.{job}");
    nats.jetstream()
        .await
        .get_stream("MESH_OUT")
        .await
        .expect("the output stream")
        .purge()
        .filter(subject)
        .await
        .expect("purge the job's output");
    let out = client
        .call(
            "job",
            json!({"action": "poll", "job": job, "cursor": cursor}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let s = out.structured();
    assert_eq!(s["done"], json!(true), "{}", out.text());
    assert_eq!(s["next_cursor"], Value::Null, "{}", out.text());
    assert_eq!(s["job"]["state"], json!("exited"));
    assert!(!out.text().contains("still running"), "{}", out.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_started_on_one_replica_pages_on_another() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let one = Gateway::new(&nats).start().await;
    let two = Gateway::new(&nats).replica_of(&one).start().await;
    let token = one.mint("alice");
    let c1 = McpClient::new(&one.url(), &token).await;
    let c2 = McpClient::new(&two.url(), &token).await;
    let job = c1
        .bash_bg("web-1", "seq 1 3000; sleep 0.3; seq 3001 6000")
        .await;
    let (lines, _) = read_all(&c2, &job, None).await;
    assert!(lines == numbers(1, 6000));
    let listed = c2.call("job", json!({"action": "list"})).await;
    assert!(listed.text().contains(&job), "{}", listed.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_marks_its_running_job_lost_and_leaves_no_orphans() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let s = client
        .bash_running("web-1", "setsid sleep 1000 & sleep 1000; echo never", 0.3)
        .await;
    let job = s["job"].as_str().unwrap().to_string();
    let pgid = s["status"]["pid"].as_u64().unwrap() as u32;
    agent.kill_hard().await;
    agent.restart().await;
    let status = eventually(Duration::from_secs(10), || async {
        let out = client.job("poll", &job).await;
        (out.structured()["job"]["state"] == "lost").then(|| out.structured().clone())
    })
    .await;
    assert_eq!(status["done"], true);
    eventually(Duration::from_secs(10), || async { !group_alive(pgid) }).await;
    // Also the `setsid` child that left the group is gone: found by the job id in its environment.
    assert!(
        !job_processes_exist(&job),
        "a process of job {job} survived the restart"
    );
}

/// Whether a process of `job` is alive (see [`job_processes`]).
fn job_processes_exist(job: &str) -> bool {
    !job_processes(job).is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_job_loses_no_acknowledged_output() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    // 30,000 lines over about three seconds.
    let cmd = "for i in $(seq 1 30); do seq $(( (i-1)*1000+1 )) $(( i*1000 )); sleep 0.1; done";
    let job = client.bash_bg("web-1", cmd).await;
    // Restart once some output is stored.
    eventually(Duration::from_secs(10), || async {
        let out = client
            .call(
                "job",
                json!({"action": "poll", "job": job, "max_lines": 1, "tail": 1}),
            )
            .await;
        out.structured()["first_line"]
            .as_u64()
            .is_some_and(|n| n > 3000)
    })
    .await;
    nats.restart().await;
    let waited = eventually(Duration::from_secs(30), || async {
        let out = client
            .try_call("job", json!({"action": "wait", "job": job, "timeout": 5}))
            .await
            .ok()?;
        (out.structured()["job"]["state"] == "exited").then_some(out)
    })
    .await;
    assert_eq!(waited.structured()["job"]["exit_code"], 0);
    let (lines, _) = read_all(&client, &job, None).await;
    assert_eq!(lines.len(), 30_000);
    assert!(
        lines == numbers(1, 30_000),
        "output lost, repeated or reordered across the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_bad_tokens_get_401_with_a_challenge() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let other = Gateway::new(&nats).start().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    for (token, error) in [
        (None, false),
        (Some("garbage".to_string()), true),
        (Some(other.mint("alice")), true),
    ] {
        let response = gw.post_raw(token.as_deref(), list.clone()).await;
        assert_eq!(response.status(), 401);
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        assert_eq!(challenge.contains("invalid_token"), error, "{challenge}");
    }
    let ok = gw.post_raw(Some(&gw.mint("alice")), list).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_host_and_origin_headers_are_refused() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .public_name("mesh.example.com")
        .allowed_origin("https://app.example.com")
        .start()
        .await;
    let token = gw.mint("alice");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let post = |host: Option<&'static str>, origin: Option<&'static str>| {
        let mut request = reqwest::Client::new()
            .post(gw.url())
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(h) = host {
            request = request.header("host", h);
        }
        if let Some(o) = origin {
            request = request.header("origin", o);
        }
        request.send()
    };
    for (host, origin, status) in [
        (Some("evil.example.net"), None, 403),
        (None, Some("https://evil.example.net"), 403),
        (Some("mesh.example.com"), None, 200),
        (None, Some("https://app.example.com"), 200),
    ] {
        let response = post(host, origin).await.unwrap();
        assert_eq!(
            response.status(),
            status,
            "host {host:?}, origin {origin:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_current_protocol_clients_both_work() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let current = gw.client("alice").await;
    assert_eq!(current.protocol_version().to_string(), "2026-07-28");
    for client in [
        current,
        gw.legacy_client("alice", "2025-03-26").await,
        gw.legacy_client("alice", "2025-06-18").await,
        gw.legacy_client("alice", "2025-11-25").await,
    ] {
        let version = client.protocol_version().to_string();
        let out = client.bash("web-1", "echo $((6*7))").await;
        assert_eq!(out.structured()["output"], "42\n", "protocol {version}");
        let value: Value = out.structured().clone();
        assert_eq!(value["exit_code"], 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_agent_dies_is_reported_lost_once_its_heartbeat_expires() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1")
        .arg("--heartbeat-interval-ms", "300")
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let job = client.bash_bg("web-1", "echo before; sleep 1000").await;
    eventually(Duration::from_secs(10), || async {
        let out = client.job("poll", &job).await;
        out.structured()["lines"] == 1
    })
    .await;
    agent.kill_hard().await;
    // `wait` notices the missing heartbeat instead of waiting out its timeout.
    let started = Instant::now();
    let waited = client
        .call("job", json!({"action": "wait", "job": job, "timeout": 60}))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        waited.structured()["job"]["state"],
        "lost",
        "{}",
        waited.text()
    );
    assert!(waited.text().contains("web-1"), "{}", waited.text());
    let polled = client.job("poll", &job).await;
    assert_eq!(polled.structured()["done"], true);
    assert_eq!(polled.structured()["output"], "before\n");
    // The job's `sleep` outlived its agent; the agent's next start kills it.
    assert!(job_processes_exist(&job));
    agent.restart().await;
    eventually(Duration::from_secs(10), || async {
        !job_processes_exist(&job)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_expired_tokens_are_refused() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.max_body_bytes = 64 * 1024)
        .start()
        .await;
    let token = gw.mint("alice");
    let huge = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "bash", "arguments": {"host": "web-1", "cmd": "x".repeat(100_000)}}});
    assert_eq!(gw.post_raw(Some(&token), huge).await.status(), 413);
    // Expiry has one-second resolution: a two-second token is valid for at least one second.
    let short = gw.mint_with_ttl("alice", Duration::from_secs(2));
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    assert_eq!(gw.post_raw(Some(&short), list.clone()).await.status(), 200);
    eventually(Duration::from_secs(6), || async {
        let response = gw.post_raw(Some(&short), list.clone()).await;
        response.status() == 401
            && response.headers()["www-authenticate"]
                .to_str()
                .is_ok_and(|c| c.contains("expired"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_with_output_redaction_redacts_output_before_it_leaves_the_host() {
    let nats = Nats::start().await;
    // Small chunks, so the secrets of the long job fall on every side of chunk boundaries.
    let _vault = NodeAgent::new(&nats, "vault-1")
        .arg("--output-redaction", "true")
        .arg("--redact-pattern", "corp-[0-9]{6}")
        .arg("--chunk-bytes", "1024")
        .start()
        .await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    // Secrets made at run time, so they exist only in the output (the command never spells
    // the marker `SECRET`).
    let secrets = "s=$(printf 'SEC%s' RET); echo \"DB_PASSWORD=hunter2$s\"; echo \"Authorization: Bearer abc123$s\"; \
                   echo ok; echo corp-123456; \
                   printf -- '-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkq%s\\n-----END PRIVATE KEY-----\\n' $s; \
                   echo after";
    let out = client.bash("vault-1", secrets).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(
        out.structured()["output"],
        "DB_PASSWORD=[redacted]\nAuthorization: Bearer [redacted]\nok\n[redacted]\n\
         -----BEGIN PRIVATE KEY-----[redacted]-----END PRIVATE KEY-----\nafter\n"
    );
    let job = out.job_id();
    let (paged, _) = read_all(&client, &job, None).await;
    assert_eq!(paged[0], "DB_PASSWORD=[redacted]");

    // A key block printed a line at a time, so the agent reads its lines apart: still
    // redacted whole (the body line is too short and plain for any rule of its own).
    let out = client
        .bash(
            "vault-1",
            "s=$(printf 'SEC%s' RET); echo '-----BEGIN PRIVATE KEY-----'; sleep 0.2; \
             echo \"abc$s\"; sleep 0.2; echo '-----END PRIVATE KEY-----'; echo after",
        )
        .await;
    assert_eq!(
        out.structured()["output"],
        "-----BEGIN PRIVATE KEY-----[redacted]-----END PRIVATE KEY-----\nafter\n"
    );
    assert!(paged.iter().all(|l| !l.contains("SECRET")), "{paged:?}");

    // A long job: thousands of chunks' worth of lines, each with a secret.
    let out = client
        .call(
            "bash",
            json!({"host": "vault-1", "cmd": "s=$(printf 'SEC%s' RET); for i in $(seq 1 3000); do echo \"line $i token=t0k${i}$s\"; done", "bg": true}),
        )
        .await;
    let long = out.job_id();
    let (lines, _) = read_all(&client, &long, None).await;
    let expected: Vec<String> = (1..=3000)
        .map(|i| format!("line {i} token=[redacted]"))
        .collect();
    assert!(
        lines == expected,
        "lines redacted, in order, none lost: {lines:?}"
    );

    // Nothing of it reached MESH_OUT unredacted.
    let mut chunks = 0;
    for msg in nats.stored_messages("MESH_OUT").await {
        if msg.subject.contains(".out.vault-1.") {
            chunks += 1;
            let text = String::from_utf8_lossy(&msg.payload);
            assert!(
                !text.contains("SECRET"),
                "record {} leaks: {text}",
                msg.sequence
            );
        }
    }
    assert!(chunks > 50, "the long job spans many chunks: {chunks}");

    // Redaction is the host's choice: without it, output is published as written.
    let out = client
        .bash("web-1", "s=$(printf 'SEC%s' RET); echo token=abc$s")
        .await;
    assert_eq!(out.structured()["output"], "token=abcSECRET\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_shows_its_output_so_far_in_poll_and_list() {
    let nats = Nats::start().await;
    let _agent = nats.agent("web-1", &[]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let job = client
        .bash_bg("web-1", "echo one; echo two; sleep 60")
        .await;

    // The status says what is stored while the job still runs (a write every few seconds at
    // most), not bytes=0 lines=0 until it ends.
    let polled = eventually(Duration::from_secs(10), || async {
        let out = client
            .call("job", json!({"action": "poll", "job": job, "tail": 10}))
            .await;
        let status = out.structured()["job"].clone();
        (status["lines"] == 2).then_some(status)
    })
    .await;
    assert_eq!(polled["state"], "running", "{polled}");
    assert_eq!(polled["bytes"], 8, "{polled}");
    assert!(
        polled["last_output_at_ms"].as_u64().is_some_and(|t| t > 0),
        "{polled}"
    );
    let listed = client.call("job", json!({"action": "list"})).await;
    let mine = listed.structured()["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["job"] == job.as_str()).cloned())
        .unwrap_or_default();
    assert_eq!(mine["state"], "running", "{}", listed.text());
    assert_eq!(mine["lines"], 2, "{}", listed.text());
    listed.assert_text_has("2 lines (8 bytes) of output so far");
    client.job("kill", &job).await;
}
