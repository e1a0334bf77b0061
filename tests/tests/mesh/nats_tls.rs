//! NATS over TLS: gateway, agents and audit-sink work through a TLS-only server, every one of their connections is TLS, and clients without TLS, without trust in the server's CA or without a client certificate the server requires are refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use execmesh_proto::pb;
use execmesh_proto::subject::audit_kind;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use execmesh_tests::agent::AGENT_BINARY;
use execmesh_tests::audit_sink::SINK_BINARY;
use execmesh_tests::certificates::TestCa;
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{AuditSink, Gateway, McpClient, Nats, NodeAgent, eventually};

/// How long a refused client may take to be refused, and an audit row to land.
const WAIT: Duration = Duration::from_secs(20);

/// Runs `echo` through the gateway on `host` and checks the answer.
async fn echo(client: &McpClient, host: &str, words: &str) {
    let out = client
        .call(
            "bash",
            json!({"host": host, "cmd": format!("echo {words}")}),
        )
        .await;
    assert!(!out.is_error(), "bash failed: {}", out.text());
    out.assert_field("output", format!("{words}\n"));
}

/// Starts `seq 1 <n>` and pages it from the inline answer to the end; returns every line.
async fn page_through(client: &McpClient, host: &str, n: u32) -> Vec<String> {
    let out = client
        .call("bash", json!({"host": host, "cmd": format!("seq 1 {n}")}))
        .await;
    let s = out.structured().clone();
    let job = s["job"].as_str().expect("a job id").to_string();
    assert_eq!(s["truncated"], true, "{s}");
    let mut lines: Vec<String> = text_lines(&s);
    let mut cursor = s["next_cursor"].as_str().map(String::from);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(c) = cursor {
        assert!(
            tokio::time::Instant::now() < deadline,
            "paging {job} did not finish"
        );
        let page = client
            .call("job", json!({"action": "poll", "job": job, "cursor": c}))
            .await;
        assert!(!page.is_error(), "poll failed: {}", page.text());
        let s = page.structured();
        lines.extend(text_lines(s));
        cursor = if s["done"] == true {
            None
        } else {
            s["next_cursor"].as_str().map(String::from)
        };
    }
    lines
}

fn text_lines(page: &Value) -> Vec<String> {
    page["output"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until the sink holds an event of `kind` for `user` on `host` (`""`: any host; the
/// gateway's call events name none).
async fn audited(sink: &execmesh_tests::RunningAudit, user: &str, host: &str, kind: &str) {
    eventually(WAIT, || async {
        let records = sink
            .query_all(pb::AuditQuery {
                user: user.into(),
                host: host.into(),
                kind: kind.into(),
                ..Default::default()
            })
            .await;
        !records.is_empty()
    })
    .await;
}

/// The client connections the server reports, as (name, TLS version); the version is empty for
/// a plain-text connection.
async fn connections(nats: &Nats) -> Vec<(String, String)> {
    let url = format!(
        "{}/connz?limit=1024",
        nats.monitor_url().expect("a server with monitoring")
    );
    let connz: Value = reqwest::get(&url)
        .await
        .and_then(reqwest::Response::error_for_status)
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .expect("connz is JSON");
    connz["connections"]
        .as_array()
        .expect("connz lists connections")
        .iter()
        .map(|c| {
            let field = |name: &str| c[name].as_str().unwrap_or_default().to_string();
            (field("name"), field("tls_version"))
        })
        .collect()
}

/// A client that speaks plain-text NATS: reads the server's INFO, sends CONNECT and PING, and
/// returns the INFO line and whatever else the server sent before it closed the connection.
async fn plain_text_session(nats: &Nats) -> (String, String) {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", nats.port()))
        .await
        .expect("the server accepts TCP");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while !received.ends_with(b"\r\n") {
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the server sends INFO")
            .expect("read INFO");
        assert!(n > 0, "closed before INFO");
        received.extend_from_slice(&buf[..n]);
    }
    let info = String::from_utf8_lossy(&received).into_owned();
    // The server may already have closed its side; a failed write is a refusal too.
    let _ = tcp
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
        .await;
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => rest.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server neither answered nor closed a plain-text client; it sent {:?}",
                String::from_utf8_lossy(&rest)
            ),
        }
    }
    (info, String::from_utf8_lossy(&rest).into_owned())
}

/// Connects with `options` and expects the server to refuse: an error, not a hang.
async fn refused(nats: &Nats, options: async_nats::ConnectOptions, who: &str) -> String {
    match tokio::time::timeout(WAIT, options.connect(nats.url())).await {
        Ok(Ok(_)) => panic!("{who} was let in"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("{who} was neither let in nor refused within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_round_trips_through_a_tls_only_server_on_tls_connections() {
    let nats = Nats::builder().tls().monitor().start().await;
    let sink = AuditSink::new(&nats).start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    // A `tls://` URL works as well as `nats://` with a CA.
    let gw = Gateway::new(&nats)
        .configure(|c| c.nats.url = c.nats.url.replacen("nats://", "tls://", 1))
        .start()
        .await;
    let client = gw.client("alice").await;

    echo(&client, "web-1", "over tls").await;
    let lines = page_through(&client, "web-1", 2500).await;
    let expected: Vec<String> = (1..=2500).map(|i| i.to_string()).collect();
    assert!(
        lines == expected,
        "paged output differs: {} lines",
        lines.len()
    );
    audited(&sink, "alice", "web-1", audit_kind::JOB_FINISHED).await;
    audited(&sink, "alice", "", audit_kind::CALL_COMPLETED).await;

    // The server saw every one of the mesh's connections as TLS.
    let conns = connections(&nats).await;
    for name in [
        "execmesh-gateway",
        "execmesh-node-agent web-1",
        "execmesh-audit-sink",
    ] {
        assert!(
            conns.iter().any(|(n, _)| n == name),
            "no connection named {name}: {conns:?}"
        );
    }
    assert!(
        conns.iter().all(|(_, version)| version.starts_with("1.")),
        "a connection without TLS: {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_and_clients_that_do_not_trust_the_ca_are_refused() {
    let nats = Nats::builder().tls().start().await;

    let (info, after) = plain_text_session(&nats).await;
    assert!(info.contains("\"tls_required\":true"), "{info}");
    assert!(
        !after.contains("PONG"),
        "a plain-text client got PONG: {after:?}"
    );

    let other = TestCa::new("some other CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let other_ca = other.write(dir.path(), "other-ca");
    refused(
        &nats,
        async_nats::ConnectOptions::new()
            .add_root_certificates(other_ca)
            .require_tls(true),
        "a client trusting another CA",
    )
    .await;
    // Without any CA the client falls back to the system's roots, which do not know the test CA.
    refused(
        &nats,
        async_nats::ConnectOptions::new(),
        "a client trusting the system's roots",
    )
    .await;

    // The harness's own connection, with the CA, gets in.
    let client = nats.client().await;
    client.flush().await.expect("a TLS round trip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_verifies_clients_refuses_those_without_its_certificate_and_serves_the_mesh()
{
    let nats = Nats::builder().tls_verify_clients().monitor().start().await;
    let ca = nats.tls_ca().expect("TLS mode").to_path_buf();
    assert!(
        nats.tls_client_cert().is_some(),
        "verify mode has a client certificate"
    );

    refused(
        &nats,
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true),
        "a client without a certificate",
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stranger = TestCa::new("a stranger's CA")
        .client("stranger")
        .write(dir.path(), "stranger");
    refused(
        &nats,
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca)
            .add_client_certificate(stranger.cert, stranger.key)
            .require_tls(true),
        "a client with a certificate from another CA",
    )
    .await;

    // Gateway, agent and sink present the CA's client certificate and work as usual.
    let sink = AuditSink::new(&nats).start().await;
    let _agent = NodeAgent::new(&nats, "db-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("bob").await;
    echo(&client, "db-1", "verified").await;
    audited(&sink, "bob", "db-1", audit_kind::JOB_FINISHED).await;
    let conns = connections(&nats).await;
    assert!(
        conns.iter().all(|(_, version)| version.starts_with("1.")),
        "a connection without TLS: {conns:?}"
    );
}

/// Runs `binary` with `args` (no inherited `EXECMESH_*`) and returns its stderr; it must fail.
fn failing_run(binary: &str, args: &[&std::ffi::OsStr], cwd: &Path) -> String {
    let mut command = Command::new(workspace_binary(binary));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("EXECMESH_") {
            command.env_remove(key);
        }
    }
    let output = command
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{binary} started: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_file_that_cannot_be_used_stops_each_service_naming_the_file_and_the_reason() {
    let nats = Nats::builder().tls_verify_clients().start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN NOTHING-----\n").expect("write");
    let url = nats.url();
    let client = nats.tls_client_cert().expect("verify mode").clone();
    let expect_named = |text: &str, key: &str| {
        assert!(
            text.contains(&format!("cannot use {key} {}", garbage.display())),
            "{key} and the file are not named: {text}"
        );
    };

    let agent = |tls: &[&std::ffi::OsStr]| {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "--nats-url".as_ref(),
            url.as_ref(),
            "--host-id".as_ref(),
            "web-1".as_ref(),
        ];
        args.extend_from_slice(tls);
        failing_run(AGENT_BINARY, &args, dir.path())
    };
    let stderr = agent(&["--nats-tls-ca".as_ref(), garbage.as_os_str()]);
    expect_named(&stderr, "nats_tls_ca");
    assert!(
        stderr.contains("missing section end"),
        "no reason: {stderr}"
    );
    let stderr = agent(&[
        "--nats-tls-ca".as_ref(),
        nats.tls_ca().expect("TLS mode").as_os_str(),
        "--nats-tls-cert".as_ref(),
        client.cert.as_os_str(),
        "--nats-tls-key".as_ref(),
        garbage.as_os_str(),
    ]);
    expect_named(&stderr, "nats_tls_key");

    let sqlite = dir.path().join("audit.db");
    let stderr = failing_run(
        SINK_BINARY,
        &[
            "serve".as_ref(),
            "--nats-url".as_ref(),
            url.as_ref(),
            "--sqlite-path".as_ref(),
            sqlite.as_os_str(),
            "--nats-tls-ca".as_ref(),
            nats.tls_ca().expect("TLS mode").as_os_str(),
            "--nats-tls-cert".as_ref(),
            garbage.as_os_str(),
            "--nats-tls-key".as_ref(),
            client.key.as_os_str(),
        ],
        dir.path(),
    );
    expect_named(&stderr, "nats_tls_cert");

    let mut config = execmesh_gateway::Config::new(&url, dir.path().join("gateway.key"));
    config.exec_signing_key = nats.mesh_signing_key();
    config.nats.tls_ca = Some(garbage.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let outcome = tokio::time::timeout(
        WAIT,
        execmesh_gateway::run(config, listener, CancellationToken::new()),
    )
    .await
    .expect("the gateway gives up at once");
    let err = outcome
        .expect_err("the gateway refuses the CA file")
        .to_string();
    expect_named(&err, "nats_tls_ca");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_server_config_combines_with_tls_and_both_survive_a_restart() {
    let nats = Nats::builder()
        .config("max_payload: 2MB\n")
        .tls()
        .monitor()
        .start()
        .await;
    let client = nats.client().await;
    let info = client.server_info();
    assert_eq!(
        info.max_payload,
        2 * 1024 * 1024,
        "the given config is lost"
    );
    assert!(info.tls_required, "the tls block is lost");

    // Same ports after the restart (the harness checks): monitoring answers on its old port, and
    // the harness's client comes back over TLS. (A connection still in its handshake is listed
    // without a name or a TLS version.)
    nats.restart().await;
    eventually(WAIT, || async {
        connections(&nats)
            .await
            .iter()
            .any(|(name, version)| name == "execmesh-tests" && version.starts_with("1."))
    })
    .await;
    client
        .flush()
        .await
        .expect("a TLS round trip after the restart");
}
