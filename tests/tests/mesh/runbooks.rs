//! Runbooks end to end: a readonly user runs a reviewed runbook where `bash` is refused, values
//! that would break out are refused by type (and could not reach a shell anyway), tier and
//! `hosts` narrow who and where, fan-out and approvals work as for `bash`, an edited file is
//! reloaded under a new hash, a pinned host refuses a hash it cannot match, and the agent
//! refuses a request whose argv was altered on the way.

use std::time::Duration;

use futures::StreamExt;
use prost::Message as _;
use serde_json::{Value, json};

use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::{Tier, Token, subject};
use execmesh_tests::{AuditSink, Gateway, Nats, NodeAgent, Policy, eventually, with_approval};

/// Echoes its one parameter: the pattern lets shell syntax through on purpose, so only the argv
/// form keeps it from a shell.
const ECHO: &str = r#"
description = "Echo a text"
command = ["echo", "{text}"]
tier = "readonly"
timeout = "20s"

[params.text]
type = "string"
pattern = "[A-Za-z0-9 .;:/$()`|&>=_-]{1,200}"
"#;

/// A strictly typed runbook: the breakout values must not even pass its types.
const STATUS: &str = r#"
description = "Pretend to show a unit's status"
command = ["echo", "status", "{unit}", "{lines}", "{dir}"]
tier = "readonly"

[params.unit]
type = "string"
pattern = "[a-z0-9@._-]{1,64}\\.service"

[params.lines]
type = "integer"
min = 1
max = 100
default = 10

[params.dir]
type = "path"
default = "/var/log"
"#;

/// Needs standard: a readonly user may not run it.
const TOUCH: &str = r#"
description = "Touch a file in /tmp"
command = ["touch", "{path}"]
tier = "standard"

[params.path]
type = "path"
roots = ["/tmp"]
"#;

/// Only on web hosts.
const WEB_ONLY: &str = r#"
description = "Say which web host this is"
command = ["echo", "web"]
tier = "readonly"
hosts = "role=web"
"#;

/// The arguments of `runbook` action `run` of `name` on one `host`.
fn run_on(host: &str, name: &str, params: Value) -> Value {
    json!({"action": "run", "name": name, "host": host, "params": params})
}

/// The policy of these scenarios: `sam` is readonly on web hosts, `ops` standard everywhere.
fn policy() -> Policy {
    Policy::new()
        .user("sam", Tier::Readonly, &["role=web"])
        .user("ops", Tier::Standard, &["*"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_user_runs_a_readonly_runbook_on_its_hosts_and_is_refused_bash() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let db = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo-text", ECHO)
        .runbook("touch-tmp", TOUCH)
        .runbook("web-only", WEB_ONLY)
        .start()
        .await;
    let sam = gw.client("sam").await;

    let tools = sam.tool_names().await;
    assert!(tools.contains(&"runbook".to_string()), "{tools:?}");
    assert!(!tools.contains(&"bash".to_string()), "{tools:?}");
    sam.bash(web.host(), "echo hi")
        .await
        .assert_refused_as("tier", "needs tier standard");

    // The list holds what sam may run, with parameter schemas, and not the standard one.
    let list = sam.call("runbook", json!({"action": "list"})).await;
    let names: Vec<&str> = list.structured()["runbooks"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["echo-text", "web-only"], "{}", list.text());
    let echo = &list.structured()["runbooks"][0];
    assert_eq!(echo["params"]["required"], json!(["text"]));
    assert_eq!(
        echo["params"]["properties"]["text"]["type"],
        json!("string")
    );
    let hash = echo["hash"].as_str().expect("a hash").to_string();

    let out = sam
        .call(
            "runbook",
            run_on(web.host(), "echo-text", json!({"text": "hello"})),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(
        out.structured()["output"],
        json!("hello\n"),
        "{}",
        out.text()
    );
    assert_eq!(out.structured()["runbook"]["hash"], json!(hash));
    assert_eq!(out.structured()["exit_code"], json!(0));

    // Outside sam's reach, outside the runbook's hosts, above sam's tier: refused, nothing sent.
    sam.call(
        "runbook",
        run_on(db.host(), "echo-text", json!({"text": "x"})),
    )
    .await
    .assert_refused_as("denied", "db-1");
    let ops = gw.client("ops").await;
    ops.call(
        "runbook",
        json!({"action": "run", "name": "web-only", "host": db.host()}),
    )
    .await
    .assert_refused_as("denied", "role=web");
    let out = ops
        .call(
            "runbook",
            json!({"action": "run", "name": "web-only", "hosts": "*"}),
        )
        .await;
    assert_eq!(
        out.structured()["counts"],
        json!({"ok": 1}),
        "{}",
        out.text()
    );
    assert_eq!(out.structured()["hosts"][0]["host"], json!("web-1"));
    let marker = "/tmp/execmesh-runbook-tier-marker";
    sam.call(
        "runbook",
        run_on(web.host(), "touch-tmp", json!({"path": marker})),
    )
    .await
    .assert_refused_as("tier", "runbook `touch-tmp` needs tier standard");
    assert!(!std::path::Path::new(marker).exists());
    sam.call(
        "runbook",
        json!({"action": "run", "name": "no-such", "host": web.host()}),
    )
    .await
    .assert_refused_as("invalid_arguments", "echo-text, web-only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakout_values_are_refused_by_type_and_a_permissive_one_reaches_no_shell() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("unit-status", STATUS)
        .runbook("echo-text", ECHO)
        .start()
        .await;
    let sam = gw.client("sam").await;
    let marker = tempfile::tempdir().expect("temp dir");
    let touched = marker.path().join("x");
    let run = |params: Value, name: &str| run_on(web.host(), name, params);

    let cases = [
        (
            json!({"unit": format!("nginx.service; touch {}", touched.display())}),
            "unit",
        ),
        (
            json!({"unit": format!("$(touch {}).service", touched.display())}),
            "unit",
        ),
        (json!({"unit": "nginx.service\ntouch /tmp/x"}), "unit"),
        (json!({"unit": "nginx.service", "lines": "5; id"}), "lines"),
        (
            json!({"unit": "nginx.service", "dir": "/var/log/../../etc"}),
            "dir",
        ),
    ];
    for (params, param) in cases {
        let out = sam
            .call("runbook", run(params.clone(), "unit-status"))
            .await;
        out.assert_refused_as("invalid_arguments", &format!("parameter `{param}`"));
    }
    let out = sam
        .call(
            "runbook",
            run(json!({"unit": "nginx.service"}), "unit-status"),
        )
        .await;
    assert_eq!(
        out.structured()["output"],
        json!("status nginx.service 10 /var/log\n"),
        "{}",
        out.text()
    );

    // A pattern that lets `;`, `$(…)` and backquotes through: the text is one argument of
    // echo, printed as it is, and the agent records the argv it ran, quoted.
    for text in [
        format!("nginx.service; touch {}", touched.display()),
        format!("$(touch {})", touched.display()),
        format!("`touch {}` | tee /tmp/y", touched.display()),
    ] {
        let out = sam
            .call("runbook", run(json!({"text": text}), "echo-text"))
            .await;
        assert!(!out.is_error(), "{}", out.text());
        assert_eq!(out.structured()["output"], json!(format!("{text}\n")));
        assert_eq!(
            out.structured()["status"]["cmd"],
            json!(format!("echo '{text}'")),
            "the agent's record of the argv"
        );
    }
    assert!(!touched.exists(), "a value reached a shell");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runbook_fans_out_over_five_hosts_with_one_status_each() {
    let nats = Nats::start().await;
    let mut agents = Vec::new();
    for i in 1..=5 {
        agents.push(nats.agent(&format!("web-{i}"), &[("role", "web")]).await);
    }
    // A script runbook: its parameter arrives as $RB_GREETING, and web-3 fails.
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook(
            "greet",
            r#"
description = "Greet from every host; fails on web-3"
script = 'echo "$RB_GREETING from $EXECMESH_HOST"; test "$EXECMESH_HOST" != web-3'
tier = "readonly"

[params.greeting]
type = "enum"
values = ["hello", "bye"]
default = "hello"
"#,
        )
        .start()
        .await;
    agents[4].stop().await;
    let sam = gw.client("sam").await;
    let out = sam
        .call(
            "runbook",
            json!({"action": "run", "name": "greet", "hosts": "web-*", "params": {"greeting": "bye"}}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let result = out.structured();
    assert_eq!(
        result["counts"],
        json!({"ok": 3, "exit_nonzero": 1, "offline": 1}),
        "{}",
        out.text()
    );
    let hosts = result["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 5);
    for host in hosts {
        let id = host["host"].as_str().expect("a host id");
        match host["status"].as_str() {
            Some("ok") => assert_eq!(host["output"], json!(format!("bye from {id}\n"))),
            Some("exit_nonzero") => assert_eq!(id, "web-3"),
            Some("offline") => assert_eq!(id, "web-5"),
            other => panic!("{id}: {other:?}"),
        }
    }
    assert_eq!(result["runbook"]["name"], json!("greet"));
    // The group is a job like any other: `job` lists it.
    let group = result["group"].as_str().expect("a group id");
    assert!(group.starts_with("greet-"), "{group}");
    let listed = sam.call("job", json!({"action": "list"})).await;
    assert!(listed.text().contains(group), "{}", listed.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_marked_runbook_is_held_until_approved_and_then_runs_once() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let sink = AuditSink::new(&nats).sqlite().start().await;
    let policy = policy()
        .user("lead", Tier::Standard, &["*"])
        .toml("[approvers]\nusers = [\"lead\"]\n");
    let gw = Gateway::new(&nats)
        .policy(policy)
        .runbook(
            "careful",
            &ECHO.replace("timeout = \"20s\"", "timeout = \"20s\"\napproval = true"),
        )
        .admin()
        .start()
        .await;
    let sam = gw.client("sam").await;
    let args = run_on(
        web.host(),
        "careful",
        json!({"text": "approved ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"}),
    );
    let held = sam.call("runbook", args.clone()).await;
    let id = held.approval_id();
    assert!(
        held.structured()["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("careful")
    );

    let admin = gw.admin_client("lead").await;
    let mut approvals = admin.approvals.clone();
    approvals
        .approve(pb::ApproveRequest { id: id.clone() })
        .await
        .expect("lead approves");
    let out = sam.call("runbook", with_approval(&args, &id)).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(
        out.structured()["output"],
        json!("approved ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789\n")
    );
    sam.call("runbook", with_approval(&args, &id))
        .await
        .assert_refused_as("approval_unusable", "used already");

    // The audit trail names the runbook and its hash per host, and redacts the parameters.
    let hash = out.structured()["runbook"]["hash"]
        .as_str()
        .expect("a hash")
        .to_string();
    let records = eventually(Duration::from_secs(30), || async {
        let records = sink.export(&[]);
        let has = |kind: &str| records.iter().any(|r| r["kind"] == kind);
        (has("call-dispatched") && has("job-finished") && has("call-completed")).then_some(records)
    })
    .await;
    let dispatched: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "call-dispatched")
        .collect();
    assert_eq!(
        dispatched[0]["detail"]["request"],
        json!(format!("runbook careful {hash}")),
        "{dispatched:?}"
    );
    let all = serde_json::to_string(&records).expect("json");
    assert!(
        !all.contains("ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"),
        "a secret parameter reached the audit trail"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_runbook_file_changes_its_hash_and_is_picked_up_on_reload() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo-text", ECHO)
        .admin()
        .start()
        .await;
    let admin = gw.admin_client("ops").await;
    let list = || async {
        let mut runbooks = admin.runbooks.clone();
        runbooks
            .list(pb::ListRunbooksRequest {})
            .await
            .expect("the admin API lists runbooks")
            .into_inner()
    };
    let before = list().await;
    assert_eq!(before.runbooks.len(), 1);
    let old_hash = before.runbooks[0].hash.clone();
    assert_eq!(before.runbooks[0].tier(), pb::Tier::Readonly);

    let file = execmesh_gateway::core::policy::runbooks_dir(gw.policy_path().expect("a policy"))
        .join("echo-text.toml");
    std::fs::write(
        &file,
        ECHO.replace("[\"echo\", \"{text}\"]", "[\"echo\", \"v2\", \"{text}\"]"),
    )
    .expect("edit the runbook");
    let after = eventually(Duration::from_secs(20), || async {
        let now = list().await;
        (now.runbooks[0].hash != old_hash).then_some(now)
    })
    .await;
    assert_ne!(after.policy_version, before.policy_version);
    assert!(
        after.runbooks[0].command.contains("v2"),
        "{:?}",
        after.runbooks[0]
    );
    let out = gw
        .client("sam")
        .await
        .call(
            "runbook",
            run_on(web.host(), "echo-text", json!({"text": "hi"})),
        )
        .await;
    assert_eq!(
        out.structured()["output"],
        json!("v2 hi\n"),
        "{}",
        out.text()
    );
    assert_eq!(
        out.structured()["runbook"]["hash"],
        json!(after.runbooks[0].hash)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_pins_runbooks_refuses_a_hash_it_cannot_match() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo-text", ECHO)
        .runbook("web-only", WEB_ONLY)
        .start()
        .await;
    let sam = gw.client("sam").await;
    let list = sam.call("runbook", json!({"action": "list"})).await;
    let hash = list.structured()["runbooks"][0]["hash"]
        .as_str()
        .expect("a hash")
        .to_string();
    let web = NodeAgent::new(&nats, "web-1")
        .label("role", "web")
        .arg("--runbook-pin", format!("echo-text={hash}"))
        .start()
        .await;
    let run = |name: &str| {
        let params = match name {
            "echo-text" => json!({"text": "pinned"}),
            _ => json!({}),
        };
        run_on(web.host(), name, params)
    };

    let out = sam.call("runbook", run("echo-text")).await;
    assert_eq!(
        out.structured()["output"],
        json!("pinned\n"),
        "{}",
        out.text()
    );
    sam.call("runbook", run("web-only"))
        .await
        .assert_refused_as("runbook_not_pinned", "not pinned");

    let file = execmesh_gateway::core::policy::runbooks_dir(gw.policy_path().expect("a policy"))
        .join("echo-text.toml");
    std::fs::write(&file, ECHO.replace("Echo a text", "Echo a text, edited")).expect("edit");
    eventually(Duration::from_secs(20), || async {
        let out = sam.call("runbook", run("echo-text")).await;
        out.is_error().then_some(out)
    })
    .await
    .assert_refused_as("runbook_not_pinned", "pinned at");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_refuses_a_runbook_request_whose_argv_was_altered_in_flight() {
    let nats = Nats::start().await;
    let web = nats.agent("web-1", &[("role", "web")]).await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo-text", ECHO)
        .start()
        .await;
    // Anyone with NATS access sees the request go by.
    let client = nats.client().await;
    let mut seen = client
        .subscribe("mesh.v1.default.host.web-1.exec.>")
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let out = gw
        .client("sam")
        .await
        .call(
            "runbook",
            run_on(web.host(), "echo-text", json!({"text": "genuine"})),
        )
        .await;
    assert_eq!(
        out.structured()["output"],
        json!("genuine\n"),
        "{}",
        out.text()
    );
    let captured = tokio::time::timeout(Duration::from_secs(10), seen.next())
        .await
        .expect("the request went by")
        .expect("a message");
    let genuine = pb::ExecRequest::decode(captured.payload.clone()).expect("an ExecRequest");
    let Some(pb::exec_request::Body::Run(run)) = &genuine.body else {
        panic!("a run request: {genuine:?}");
    };
    assert_eq!(run.argv, ["echo", "genuine"]);
    assert_eq!(
        run.runbook.as_ref().expect("a runbook ref").name,
        "echo-text"
    );

    let send = |payload: Vec<u8>| {
        let client = client.clone();
        async move {
            let subject = subject::exec(
                &Token::parse("tenant", "default").expect("token"),
                &Token::parse("host id", "web-1").expect("token"),
                &Token::parse("user", "sam").expect("token"),
            );
            let reply = tokio::time::timeout(
                Duration::from_secs(20),
                client.request(subject, payload.into()),
            )
            .await
            .expect("the agent answers")
            .expect("delivered");
            match pb::ExecReply::decode(reply.payload)
                .expect("an ExecReply")
                .body
            {
                Some(pb::exec_reply::Body::Error(e)) => (e.code(), e.message),
                other => panic!("expected a refusal, got {other:?}"),
            }
        }
    };
    // The argv changed on the way (signature kept): refused as forged, and nothing ran.
    let mut altered = genuine.clone();
    if let Some(pb::exec_request::Body::Run(run)) = &mut altered.body {
        run.argv = vec!["sh".into(), "-c".into(), "echo altered".into()];
    }
    let (code, message) = send(altered.encode_to_vec()).await;
    assert_eq!(code, ErrorCode::Unauthenticated, "{message}");
    assert!(message.contains("forged"), "{message}");
    // The request as it went by is genuine: refused only as a replay.
    let (code, message) = send(captured.payload.to_vec()).await;
    assert_eq!(code, ErrorCode::Replayed, "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starter_catalogue_runs_for_real_where_this_machine_can() {
    let nats = Nats::start().await;
    let web = NodeAgent::new(&nats, "web-1")
        .label("role", "web")
        .arg("--file-root", "/tmp")
        .arg("--file-root", "/etc/ssl")
        .start()
        .await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let mut gw = Gateway::new(&nats).policy(policy());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("deploy/runbooks") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a name")
            .to_string();
        gw = gw.runbook(&name, &std::fs::read_to_string(&path).expect("readable"));
        names.push(name);
    }
    assert_eq!(names.len(), 7, "{names:?}");
    let gw = gw.start().await;
    let ops = gw.client("ops").await;
    let run = |name: &str, params: Value| run_on(web.host(), name, params);

    let out = ops
        .call("runbook", run("disk-usage", json!({"path": "/tmp"})))
        .await;
    assert_eq!(out.structured()["exit_code"], json!(0), "{}", out.text());
    assert!(out.text().contains("Filesystem"), "{}", out.text());
    let out = ops
        .call("runbook", run("disk-usage", json!({"path": "/etc"})))
        .await;
    out.assert_refused_as("outside_roots", "/etc");

    let out = ops
        .call(
            "runbook",
            run(
                "cert-expiry",
                json!({"path": "/etc/ssl/certs/ca-certificates.crt", "within": "1d"}),
            ),
        )
        .await;
    assert!(out.text().contains("notAfter="), "{}", out.text());

    let out = ops
        .call(
            "runbook",
            run("package-version", json!({"package": "dpkg"})),
        )
        .await;
    assert_eq!(out.structured()["exit_code"], json!(0), "{}", out.text());
    assert!(out.text().contains("dpkg "), "{}", out.text());

    // The others depend on systemd and wtmp, which a container may lack: each is admitted (the
    // guard and the tier let it through) and runs to an exit code.
    for (name, params) in [
        ("service-status", json!({"unit": "ssh.service"})),
        (
            "journal-tail",
            json!({"unit": "ssh.service", "lines": 5, "since": "1h"}),
        ),
        ("recent-logins", json!({"count": 5})),
    ] {
        let out = ops.call("runbook", run(name, params)).await;
        assert!(!out.is_error(), "{name}: {}", out.text());
        assert!(
            out.structured()["exit_code"].is_i64(),
            "{name}: {}",
            out.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execmeshctl_lists_the_runbooks_a_user_may_run_with_their_hashes() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .policy(policy())
        .runbook("echo-text", ECHO)
        .runbook("touch-tmp", TOUCH)
        .admin()
        .start()
        .await;
    let addr = format!("http://{}", gw.admin_addr().expect("the admin API"));
    let home = tempfile::tempdir().expect("a temp home");
    let ctl = async |user: &str, json: bool| {
        let mut command =
            tokio::process::Command::new(execmesh_tests::process::workspace_binary("execmeshctl"));
        command
            .args(["runbooks", "--addr", &addr, "--token"])
            .arg(gw.issue(user, Duration::from_secs(600), "mcp admin", Tier::Standard))
            .env_clear()
            .env("HOME", home.path())
            .current_dir(home.path());
        if json {
            command.arg("--json");
        }
        let out = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .expect("execmeshctl answers in time")
            .expect("run execmeshctl");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let listed = ctl("sam", true).await;
    let listed: Value = serde_json::from_str(&listed).expect("JSON");
    let names: Vec<&str> = listed["runbooks"]
        .as_array()
        .expect("runbooks")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["echo-text"], "readonly sam sees what sam may run");
    assert_eq!(listed["runbooks"][0]["tier"], json!("readonly"));
    assert_eq!(
        listed["runbooks"][0]["params"]["properties"]["text"]["type"],
        json!("string")
    );
    let hash = listed["runbooks"][0]["hash"].as_str().expect("a hash");
    assert!(hash.starts_with("sha256:"), "{hash}");

    let table = ctl("ops", false).await;
    let header = table.lines().next().expect("a header");
    for column in ["NAME", "TIER", "HOSTS", "APPROVAL", "RUNS", "HASH"] {
        assert!(header.contains(column), "{table}");
    }
    let touch = table
        .lines()
        .find(|l| l.starts_with("touch-tmp"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        touch.contains("standard") && touch.contains("touch {path}"),
        "{touch}"
    );
    assert!(table.contains(hash), "{table}");
}
