//! NATS away and requests the gateway refuses itself: fast JSON-RPC errors with `Retry-After`, the revocation list trusted for a bounded staleness, parse errors the JSON-RPC way; an agent that waits for a cluster to place its streams.

use std::time::{Duration, Instant};

use base64::Engine as _;
use execmesh_gateway::mcp::envelope::{INVALID_REQUEST, PARSE_ERROR, Rejection, UNAVAILABLE};
use execmesh_proto::jetstream::REVOKED_BUCKET;
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{
    Gateway, McpClient, Nats, NodeAgent, RunningGateway, eventually, read_answer, rejection_of,
};
use serde_json::{Value, json};

fn list() -> Value {
    json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}})
}

fn bash(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "bash", "arguments": {"host": "web-1", "cmd": "echo hi"}}})
}

/// Revokes `token` by writing its id into the revocation bucket, as any replica does.
async fn revoke(nats: &Nats, token: &str) {
    let claims = token.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .expect("base64url claims"),
    )
    .expect("JSON claims");
    let jti = claims["jti"].as_str().expect("a jti");
    let kv = nats
        .jetstream()
        .await
        .get_key_value(REVOKED_BUCKET)
        .await
        .expect("the revocation bucket");
    kv.put(jti, "4102444800".into()).await.expect("revoke");
}

/// POSTs `body` as is with `content_type`.
async fn post_bytes(
    gw: &RunningGateway,
    token: &str,
    content_type: &str,
    body: &str,
) -> reqwest::Response {
    gw.http_client()
        .post(gw.url())
        .header("accept", "application/json, text/event-stream")
        .header("content-type", content_type)
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /mcp")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_away_fails_calls_fast_with_a_json_rpc_error_and_retry_after() {
    let nats = Nats::start().await;
    let _agent = nats.agent("web-1", &[]).await;
    let gw = Gateway::new(&nats).start().await;
    let token = gw.mint("alice");
    let revoked = gw.mint("alice");
    revoke(&nats, &revoked).await;
    eventually(Duration::from_secs(5), || async {
        gw.post_raw(Some(&revoked), list()).await.status() == 401
    })
    .await;
    assert_eq!(gw.post_raw(Some(&token), bash(1)).await.status(), 200);

    nats.stop().await;
    // The first calls may still find the connection up; once it is down, each call is refused
    // within the gateway's wait (2 s by default), not the 10 s of a NATS request.
    let (took, (status, retry_after, body)) = eventually(Duration::from_secs(20), || async {
        let started = Instant::now();
        let answer = read_answer(gw.post_raw(Some(&token), bash(7)).await).await;
        (answer.0 == 503).then(|| (started.elapsed(), answer))
    })
    .await;
    eprintln!("a tool call with NATS away was refused after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], UNAVAILABLE);
    assert_eq!(rejection_of(&body), Some(Rejection::MeshUnreachable));
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("unreachable") && message.contains("NATS"),
        "{message}"
    );

    // Within the staleness the gateway allows (60 s by default), its copy of the revocation
    // list still answers: a valid token lists tools, the revoked one stays refused.
    assert_eq!(gw.post_raw(Some(&token), list()).await.status(), 200);
    assert_eq!(gw.post_raw(Some(&revoked), list()).await.status(), 401);

    nats.restart().await;
    eventually(Duration::from_secs(20), || async {
        gw.post_raw(Some(&token), bash(8)).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refused_once_the_revocation_list_is_staler_than_allowed() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .configure(|c| c.revocation_max_staleness = Duration::from_secs(1))
        .start()
        .await;
    let token = gw.mint("alice");
    assert_eq!(gw.post_raw(Some(&token), list()).await.status(), 200);

    nats.stop().await;
    let (status, retry_after, body) = eventually(Duration::from_secs(20), || async {
        let answer = read_answer(gw.post_raw(Some(&token), list()).await).await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(retry_after.as_deref(), Some("5"));
    assert_eq!(body["id"], 3);
    assert_eq!(rejection_of(&body), Some(Rejection::RevocationUnknown));
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("revocation"), "{message}");

    // Back once NATS is: the watch catches up and the list is current again.
    nats.restart().await;
    eventually(Duration::from_secs(20), || async {
        gw.post_raw(Some(&token), list()).await.status() == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_parse_error_and_a_wrong_content_type_is_415() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let token = gw.mint("alice");

    let (status, retry_after, body) = read_answer(
        post_bytes(
            &gw,
            &token,
            "application/json",
            "{\"jsonrpc\": \"2.0\", \"id\": 1,",
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(retry_after, None);
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], Value::Null);
    assert_eq!(body["error"]["code"], PARSE_ERROR);
    assert_eq!(rejection_of(&body), Some(Rejection::ParseError));

    let (status, _, body) = read_answer(
        post_bytes(
            &gw,
            &token,
            "application/json",
            r#"{"jsonrpc": "2.0", "id": 4, "nonsense": true}"#,
        )
        .await,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], INVALID_REQUEST);

    let response = post_bytes(&gw, &token, "text/plain", &list().to_string()).await;
    assert_eq!(response.status(), 415);
    // A bad body from someone without a token is still told to sign in first.
    let response = gw
        .http_client()
        .post(gw.url())
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("POST /mcp");
    assert_eq!(response.status(), 401);
    // And well-formed requests still work.
    assert_eq!(gw.post_raw(Some(&token), list()).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_bash_timeout_is_refused_with_its_meaning() {
    let nats = Nats::start().await;
    let _agent = nats.agent("web-1", &[]).await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    for args in [
        json!({"host": "web-1", "cmd": "echo hi", "timeout": 0}),
        json!({"hosts": "web-*", "cmd": "echo hi", "timeout": 0}),
    ] {
        let out = client.call("bash", args).await;
        out.assert_refused("`timeout` must be more than 0 seconds");
    }
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "echo hi", "timeout": 0.5}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    out.assert_text_has("hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_nats_reconnect_attempt_is_logged_once() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    nats.stop().await;
    eventually(Duration::from_secs(15), || async {
        agent
            .log_tail(1000)
            .matches("NATS reconnect attempt failed")
            .count()
            >= 3
    })
    .await;
    nats.restart().await;
    eventually(Duration::from_secs(20), || async {
        agent.log_tail(1000).matches("connected to NATS").count() >= 2
    })
    .await;
    agent.stop().await;

    // The service's own line per event, not async-nats' `event: …` copy beside it.
    let log = agent.log_tail(1000);
    assert!(!log.contains("event: "), "{log}");
    assert_eq!(log.matches("disconnected from NATS").count(), 1, "{log}");
}

/// The gateway's log file, read whole.
fn read_log(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_one_info_line_in_the_gateways_log_and_a_gone_client_no_error() {
    let nats = Nats::start().await;
    let _agent = nats.agent("web-1", &[]).await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let key = dir.path().join("gateway.key");
    let log = dir.path().join("gateway.log");
    // The gateway binary as deployed, its stderr a file, its filter the default.
    let mut gateway = tokio::process::Command::new(workspace_binary("execmesh-gateway"))
        .args([
            "--nats-url",
            &nats.url(),
            "--listen",
            "127.0.0.1:0",
            "--admin-addr",
            "off",
        ])
        .arg("--key-file")
        .arg(&key)
        .arg("--exec-signing-key")
        .arg(nats.mesh_signing_key())
        .env_remove("EXECMESH_LOG")
        .stderr(std::fs::File::create(&log).expect("create the log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start execmesh-gateway");
    let url = eventually(Duration::from_secs(20), || async {
        let text = read_log(&log);
        let (_, rest) = text.split_once("serving MCP at ")?;
        rest.split_whitespace().next().map(str::to_string)
    })
    .await;
    let minted = tokio::process::Command::new(workspace_binary("execmesh-gateway"))
        .arg("--key-file")
        .arg(&key)
        .args(["--public-url", &url, "token", "mint", "--user", "alice"])
        .output()
        .await
        .expect("token mint");
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    let served = read_log(&log).lines().count();

    let client = McpClient::new(&url, &token).await;
    for _ in 0..3 {
        let out = client.bash("web-1", "echo hi").await;
        assert!(!out.is_error(), "{}", out.text());
        out.assert_text_has("hi\n");
    }
    // A client that gives up mid-call and goes away.
    let impatient = McpClient::new(&url, &token)
        .await
        .with_timeout(Duration::from_millis(300));
    assert!(
        impatient
            .try_call("bash", json!({"host": "web-1", "cmd": "sleep 2"}))
            .await
            .is_err()
    );
    drop(impatient);
    eventually(Duration::from_secs(15), || async {
        read_log(&log).matches("tool call").count() >= 4
    })
    .await;
    gateway.kill().await.expect("stop the gateway");

    let text = read_log(&log);
    let calls: Vec<&str> = text.lines().skip(served).collect();
    let tool_lines: Vec<&&str> = calls.iter().filter(|l| l.contains("tool call")).collect();
    assert_eq!(tool_lines.len(), 4, "{text}");
    for line in &tool_lines {
        for field in [
            "INFO",
            "tool=bash",
            "user=alice",
            "trace_id=",
            "hosts=",
            "outcome=",
            "duration_ms=",
        ] {
            assert!(line.contains(field), "{field} not in {line}");
        }
    }
    // Four calls, four lines: nothing else at INFO (no rmcp request dumps), no ERROR.
    assert_eq!(calls.len(), 4, "{text}");
    assert!(!text.contains("InitializeRequestParams"), "{text}");
    assert!(!text.contains("ERROR"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_its_cluster_can_place_streams_waits_and_serves_once_it_can() {
    let nats = Nats::builder().cluster(3).start().await;
    let cluster = nats.cluster().expect("a cluster was asked for");
    // Two of the three nodes down: the one left has no meta leader, and no stream can be
    // created or even looked up until the others are back.
    for name in ["n2", "n3"] {
        cluster.node(name).stop().await;
    }
    let starting = NodeAgent::new(&nats, "web-1")
        .ready_timeout(Duration::from_secs(120))
        .spawn()
        .await;
    let log = starting.log_path();
    let waiting = eventually(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&log).ok()?;
        let waits = text
            .lines()
            .filter(|line| line.contains("cannot place the mesh's streams yet"))
            .count();
        (waits >= 2).then_some(text)
    })
    .await;
    assert!(waiting.contains("tries=2"), "{waiting}");
    assert!(starting.is_running(), "the agent gave up: {waiting}");

    // Back with its nodes, the cluster elects a leader and places the streams, and the same
    // agent process comes up (one that had exited would fail `ready`).
    for name in ["n2", "n3"] {
        cluster.node(name).restart().await;
    }
    let agent = starting.ready().await;
    let log = std::fs::read_to_string(agent.log_path()).expect("the agent's log");
    assert!(log.contains("the mesh's streams are in place"), "{log}");
    let gw = Gateway::new(&nats).start().await;
    gw.client("alice")
        .await
        .bash("web-1", "echo placed")
        .await
        .assert_field("output", "placed\n");
}
