//! Guard tiers and reach end to end: the policy decides which tools a user sees, which calls
//! go through, and which hosts they reach; the policy reloads while the gateway runs.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use execmesh_gateway::core::tier::Tier;
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{Gateway, McpClient, Nats, NodeAgent, Policy, ToolOutput, eventually};

/// alice is `dangerous` everywhere, bob `standard` and carol `readonly` on `web-*`.
fn policy() -> Policy {
    Policy::new()
        .group("ops", Tier::Standard, &["web-*"], &["bob"])
        .group("oncall", Tier::Dangerous, &["*"], &["alice"])
        .group("contractors", Tier::Readonly, &["web-*"], &["carol"])
}

#[tokio::test]
async fn tools_list_is_filtered_per_tier_with_narrowed_action_enums() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;

    // alice is `dangerous`: every tool, every action.
    let alice = gw.client("alice").await;
    let everything = alice.tool_names().await;
    let all = alice.actions("file").await;
    for action in ["move", "delete", "copy"] {
        assert!(
            all.contains(&action.to_string()),
            "{action} missing: {all:?}"
        );
    }

    // carol is `readonly`: every tool but bash, read actions only.
    let carol = gw.client("carol").await;
    let mut expected = everything.clone();
    expected.retain(|t| t != "bash");
    assert_eq!(carol.tool_names().await, expected);
    assert_eq!(
        carol.actions("file").await,
        ["read", "stat", "list", "grep"]
    );
    assert_eq!(carol.actions("job").await, ["poll", "list", "wait"]);
    if everything.contains(&"facts".to_string()) {
        assert_eq!(carol.actions("facts").await, ["get"]);
    }

    // bob is `standard`: bash, and writes but no moves or deletes.
    let bob = gw.client("bob").await;
    assert_eq!(bob.tool_names().await, everything);
    assert_eq!(
        bob.actions("file").await,
        ["read", "stat", "list", "grep", "write", "append"]
    );
    assert_eq!(bob.actions("job").await, ["poll", "list", "wait", "kill"]);
}

#[tokio::test]
async fn tools_list_is_marked_private() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let token = gw.mint("carol");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let reply: Value = gw
        .post_raw(Some(&token), list)
        .await
        .json()
        .await
        .expect("a JSON reply");
    let result = &reply["result"];
    assert!(result["tools"].is_array(), "{reply}");
    // Whatever the protocol revision calls it, the list says it must not be shared.
    let text = result.to_string();
    assert!(text.contains("private"), "{reply}");
}

#[tokio::test]
async fn calls_outside_the_tier_are_refused_naming_the_tier_needed() {
    let nats = Nats::start().await;
    let agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;

    let carol = gw.client("carol").await;
    let out = carol
        .call("bash", json!({"host": agent.host(), "cmd": "echo hi"}))
        .await;
    out.assert_refused_as("tier", "needs tier standard");
    out.assert_text_has("your tier is readonly");
    let out = carol.job("kill", "x-12345678").await;
    out.assert_refused_as("tier", "needs tier standard");

    let bob = gw.client("bob").await;
    let out = bob
        .call(
            "file",
            json!({"host": agent.host(), "action": "delete", "path": "/tmp/x"}),
        )
        .await;
    out.assert_refused_as("tier", "needs tier dangerous");
    // Within the tier the call goes through.
    let out = bob
        .call("bash", json!({"host": agent.host(), "cmd": "echo hi"}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], json!("hi\n"), "{}", out.text());
}

#[tokio::test]
async fn a_host_outside_the_reach_is_denied_and_never_contacted() {
    let nats = Nats::start().await;
    let web = NodeAgent::new(&nats, "web-1").start().await;
    let db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let bob = gw.client("bob").await;

    let marker = db.dir().join("touched");
    let cmd = format!("touch {}", marker.display());
    let out = bob
        .call("bash", json!({"host": db.host(), "cmd": cmd}))
        .await;
    out.assert_refused_as("denied", "db-1");
    assert!(!marker.exists(), "the denied command ran");
    let out = bob
        .call(
            "file",
            json!({"host": db.host(), "action": "stat", "path": "/tmp"}),
        )
        .await;
    out.assert_refused_as("denied", "db-1");

    let out = bob
        .call("bash", json!({"host": web.host(), "cmd": "echo ok"}))
        .await;
    assert!(!out.is_error(), "{}", out.text());

    // A job on db-1 (alice reaches every host): bob cannot read or stop it by its id.
    let alice = gw.client("alice").await;
    let out = alice
        .call(
            "bash",
            json!({"host": db.host(), "cmd": "echo secret", "title": "db"}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let job = out.job_id();
    // The job is alice's: to bob it does not exist (saying it is on a host he may not reach
    // would tell him it does).
    for action in ["poll", "wait"] {
        let out = bob.job(action, &job).await;
        out.assert_refused_as("unknown_job", &job);
        assert!(!out.text().contains("db-1"), "{}", out.text());
    }
}

#[tokio::test]
async fn whoami_reports_the_policy_tier_groups_and_reach() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let out = gw.client("bob").await.call("whoami", json!({})).await;
    let s = out.structured();
    assert_eq!(s["user"], json!("bob"));
    assert_eq!(s["tier"], json!("standard"));
    assert_eq!(s["groups"], json!(["ops"]));
    assert_eq!(s["reachable_hosts"], json!(["web-*"]));
    assert_eq!(s["policy_version"].as_str().map(str::len), Some(64));
}

#[tokio::test]
async fn a_token_tier_caps_the_policy_tier() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let token = gw.issue("alice", Duration::from_secs(600), "mcp", Tier::Readonly);
    let client = McpClient::new(&gw.url(), &token).await;
    assert!(!client.tool_names().await.contains(&"bash".to_string()));
    let out = client.call("whoami", json!({})).await;
    assert_eq!(out.structured()["tier"], json!("readonly"));
}

#[tokio::test]
async fn users_missing_from_the_policy_are_refused() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}});
    let response = gw.post_raw(Some(&gw.mint("mallory")), list).await;
    assert_eq!(response.status(), 401);
    let body = response.text().await.unwrap_or_default();
    assert!(body.contains("not in this gateway's policy"), "{body}");
}

#[tokio::test]
async fn without_a_policy_every_user_is_dangerous_and_reaches_everything() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).start().await;
    let out = gw.client("anyone").await.call("whoami", json!({})).await;
    assert_eq!(out.structured()["tier"], json!("dangerous"));
    assert_eq!(out.structured()["reachable_hosts"], json!(["*"]));
    assert_eq!(out.structured()["policy_version"], json!("development"));
}

#[tokio::test]
async fn policy_changes_apply_without_restart() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let path = gw.policy_path().expect("a policy file").to_path_buf();
    let client = gw.client("carol").await;
    let tier = || async {
        client.call("whoami", json!({})).await.structured()["tier"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(tier().await.as_deref(), Some("readonly"));

    // Written in place as an editor would: the gateway notices the change by itself.
    let promoted = policy().tier_of("carol", Tier::Standard).to_string();
    assert_ne!(promoted, policy().to_string());
    std::fs::write(&path, &promoted).expect("rewrite the policy");
    eventually(Duration::from_secs(10), || async {
        tier().await.as_deref() == Some("standard")
    })
    .await;
    assert!(client.tool_names().await.contains(&"bash".to_string()));
}

#[tokio::test]
async fn user_add_writes_the_policy_and_token_mint_speaks_for_its_users_only() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = dir.path().join("policy.toml");
    let key = dir.path().join("gateway.key");
    std::fs::write(
        &policy,
        "# the team\n[groups.ops]\ntier = \"standard\"\nhosts = [\"*\"]\n",
    )
    .expect("write a policy");
    let gateway = |args: &[&str]| {
        let mut command = tokio::process::Command::new(workspace_binary("execmesh-gateway"));
        command
            .arg("--policy-file")
            .arg(&policy)
            .arg("--key-file")
            .arg(&key)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let run = |mut command: tokio::process::Command, stdin: &'static str| async move {
        let mut child = command.spawn().expect("run execmesh-gateway");
        if let Some(mut input) = child.stdin.take() {
            use tokio::io::AsyncWriteExt;
            input
                .write_all(stdin.as_bytes())
                .await
                .expect("write stdin");
        }
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("execmesh-gateway finished")
            .expect("its output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };

    let (code, _) = run(
        gateway(&["user", "add", "dave", "--group", "ops", "--password-stdin"]),
        "hunter2-but-longer\n",
    )
    .await;
    assert_eq!(code, Some(0));
    let (code, generated) = run(gateway(&["user", "add", "erin", "--tier", "readonly"]), "").await;
    assert_eq!(code, Some(0));
    assert_eq!(generated.len(), 20, "a generated password is printed once");
    let text = std::fs::read_to_string(&policy).expect("the policy");
    assert!(text.starts_with("# the team\n"), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains(&generated),
        "{text}"
    );
    let parsed =
        execmesh_gateway::core::policy::Policy::parse(&text, &policy).expect("a valid policy");
    let dave = parsed.user("dave").expect("dave");
    assert!(execmesh_gateway::core::policy::password::verify(
        dave.password_hash.as_deref(),
        "hunter2-but-longer"
    ));
    let (code, _) = run(gateway(&["user", "add", "dave", "--password-stdin"]), "x\n").await;
    assert_eq!(
        code,
        Some(1),
        "an existing user is not overwritten without --replace"
    );

    let gw = Gateway::new(&nats)
        .policy_file(&policy)
        .key_file(&key)
        .start()
        .await;
    let (code, token) = run(
        gateway(&["--public-url", &gw.url(), "token", "mint", "--user", "dave"]),
        "",
    )
    .await;
    assert_eq!(code, Some(0));
    let out = McpClient::new(&gw.url(), &token)
        .await
        .call("whoami", json!({}))
        .await;
    assert_eq!(out.structured()["user"], json!("dave"));
    assert_eq!(out.structured()["tier"], json!("standard"));
    let (code, _) = run(gateway(&["token", "mint", "--user", "nobody"]), "").await;
    assert_eq!(code, Some(64), "no tokens for users outside the policy");
}

/// Two developers, a lead with operator rights and a `dangerous` user without them, on `web-*`.
fn owners_policy() -> Policy {
    Policy::new()
        .operators(&["@leads"])
        .group(
            "devs",
            Tier::Standard,
            &["web-*"],
            &["alice", "bob", "dora"],
        )
        .group("leads", Tier::Standard, &["web-*"], &["olive"])
        .tier_of("dora", Tier::Dangerous)
}

/// Runs `cmd` on `host` as `client` and returns the job id (`bg` to return at once).
async fn job_of(client: &McpClient, host: &str, cmd: &str, bg: bool) -> String {
    let out = client
        .call("bash", json!({"host": host, "cmd": cmd, "bg": bg}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    out.job_id()
}

/// The ids of the jobs a `job list` result shows.
fn listed(out: &ToolOutput) -> Vec<String> {
    assert!(!out.is_error(), "{}", out.text());
    out.structured()["jobs"]
        .as_array()
        .expect("a job list")
        .iter()
        .filter_map(|j| j["job"].as_str().map(String::from))
        .collect()
}

/// The refusal text with the job id replaced, so two refusals about different ids compare.
fn without_id(out: &ToolOutput, id: &str) -> String {
    out.text().replace(id, "<id>")
}

#[tokio::test]
async fn another_users_job_is_unknown_to_them_in_every_action_as_if_it_did_not_exist() {
    let nats = Nats::start().await;
    let _web1 = NodeAgent::new(&nats, "web-1").start().await;
    let _web2 = NodeAgent::new(&nats, "web-2").start().await;
    let gw = Gateway::new(&nats).policy(owners_policy()).start().await;
    let bob = gw.client("bob").await;
    let sleeper = job_of(&bob, "web-1", "sleep 300", true).await;
    let finished = job_of(&bob, "web-1", "echo secret-output", false).await;
    let fanout = bob
        .call("bash", json!({"hosts": "web-*", "cmd": "echo fan"}))
        .await;
    let group = fanout.structured()["group"]
        .as_str()
        .expect("a group id")
        .to_string();

    // What anyone is told about an id no host knows.
    let alice = gw.client("alice").await;
    let nosuch = "nosuch-abcdefgh";
    let unknown = alice.job("poll", nosuch).await;
    unknown.assert_refused_as("unknown_job", nosuch);
    let unknown = without_id(&unknown, nosuch);

    for who in ["alice", "dora"] {
        let client = gw.client(who).await;
        for job in [&sleeper, &finished, &group] {
            for args in [
                json!({"action": "poll", "job": job}),
                json!({"action": "poll", "job": job, "host": "web-1"}),
                json!({"action": "poll", "job": job, "tail": 5}),
                json!({"action": "wait", "job": job, "timeout": 1}),
                json!({"action": "kill", "job": job}),
                json!({"action": "kill", "job": job, "host": "web-1"}),
            ] {
                let out = client.call("job", args.clone()).await;
                out.assert_refused_as("unknown_job", job);
                assert_eq!(without_id(&out, job), unknown, "{who} {args}");
            }
        }
        let mine = listed(&client.call("job", json!({"action": "list"})).await);
        assert!(
            !mine.contains(&sleeper) && !mine.contains(&finished) && !mine.contains(&group),
            "{who} lists bob's jobs: {mine:?}"
        );
        let grouped = listed(&client.job("list", &group).await);
        assert!(grouped.is_empty(), "{who} lists bob's group: {grouped:?}");
        for user in ["bob", "*"] {
            let out = client
                .call("job", json!({"action": "list", "user": user}))
                .await;
            out.assert_refused_as("not_operator", "operator rights");
        }
    }
    // Nobody but bob stopped his job.
    let out = bob.job("poll", &sleeper).await;
    assert_eq!(
        out.structured()["job"]["state"],
        json!("running"),
        "{}",
        out.text()
    );
    let mine = listed(&bob.call("job", json!({"action": "list"})).await);
    assert!(
        mine.contains(&sleeper) && mine.contains(&finished),
        "{mine:?}"
    );
    bob.job("kill", &sleeper).await;
}

#[tokio::test]
async fn cursors_open_only_for_the_user_and_the_job_they_were_issued_for() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).policy(owners_policy()).start().await;
    let bob = gw.client("bob").await;
    let alice = gw.client("alice").await;
    let secret = job_of(&bob, "web-1", "echo secret-output", false).await;
    let running = job_of(&bob, "web-1", "echo first; sleep 300", true).await;
    let cursor = eventually(Duration::from_secs(10), || async {
        let out = bob.job("poll", &running).await;
        (out.structured()["lines"] == json!(1))
            .then(|| out.structured()["next_cursor"].as_str().map(String::from))
            .flatten()
    })
    .await;
    let garbage = alice
        .call("job", json!({"action": "poll", "cursor": "garbage"}))
        .await;
    garbage.assert_refused_as("bad_cursor", "not one this gateway issued");

    // bob's own cursor, replayed by alice: the same answer as garbage.
    let out = alice
        .call("job", json!({"action": "poll", "cursor": cursor}))
        .await;
    out.assert_refused_as("bad_cursor", "not one this gateway issued");
    assert_eq!(out.text(), garbage.text());
    // A cursor made up to name bob's finished job: his output stays his.
    let forged = URL_SAFE_NO_PAD.encode(format!("1:web-1:{secret}:1:0"));
    let out = alice
        .call("job", json!({"action": "poll", "cursor": forged}))
        .await;
    out.assert_refused_as("bad_cursor", "not one this gateway issued");
    assert!(!out.text().contains("secret-output"), "{}", out.text());
    // bob's cursor moved to his other job does not open for bob either.
    let (plain, tag) = cursor.split_once('.').unwrap_or((cursor.as_str(), ""));
    let plain = String::from_utf8(URL_SAFE_NO_PAD.decode(plain).unwrap_or_default())
        .unwrap_or_default()
        .replace(&running, &secret);
    let moved = format!("{}.{tag}", URL_SAFE_NO_PAD.encode(plain));
    let out = bob
        .call("job", json!({"action": "poll", "cursor": moved}))
        .await;
    out.assert_refused_as("bad_cursor", "not one this gateway issued");
    // Unchanged, it still works for bob.
    let out = bob
        .call("job", json!({"action": "poll", "cursor": cursor}))
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["done"], json!(false));
    bob.job("kill", &running).await;
}

#[tokio::test]
async fn operators_follow_list_and_kill_other_users_jobs_within_their_reach() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let _db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = Gateway::new(&nats)
        .policy(owners_policy().user("root", Tier::Dangerous, &["*"]))
        .start()
        .await;
    let bob = gw.client("bob").await;
    let olive = gw.client("olive").await;
    let sleeper = job_of(&bob, "web-1", "echo started; sleep 300", true).await;
    let finished = job_of(&bob, "web-1", "echo bobs-output", false).await;

    let out = olive.job("poll", &finished).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], json!("bobs-output\n"));
    assert_eq!(out.structured()["job"]["user"], json!("bob"));
    let me = olive.call("whoami", json!({})).await;
    assert_eq!(me.structured()["operator"], json!(true), "{}", me.text());
    let of_bob = listed(
        &olive
            .call("job", json!({"action": "list", "user": "bob"}))
            .await,
    );
    assert_eq!(of_bob, [finished.clone(), sleeper.clone()], "newest first");
    let everyone = listed(
        &olive
            .call("job", json!({"action": "list", "user": "*"}))
            .await,
    );
    assert!(everyone.contains(&sleeper), "{everyone:?}");
    assert!(
        listed(&olive.call("job", json!({"action": "list"})).await).is_empty(),
        "by default an operator lists their own jobs"
    );
    let out = olive.job("kill", &sleeper).await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(
        out.structured()["job"]["state"],
        json!("killed"),
        "{}",
        out.text()
    );

    // Operator rights do not widen reach: a job on db-1 is named, but denied.
    let root = gw.client("root").await;
    let on_db = job_of(&root, "db-1", "echo db", false).await;
    let out = olive.job("poll", &on_db).await;
    out.assert_refused_as("denied", "db-1");
}

#[tokio::test]
async fn an_action_in_any_other_shape_than_its_name_is_refused_before_it_is_checked_or_sent() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    let _agent = NodeAgent::new(&nats, "web-1")
        .arg("--file-root", root.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).policy(policy()).start().await;
    let carol = gw.client("carol").await;

    // carol is readonly: a write in disguise must not get past the gateway's tier check.
    let marker = root.path().join("written-by-carol.txt");
    for action in [
        json!({"write": null}),
        json!({"append": {}}),
        json!(["write"]),
    ] {
        let out = carol
            .call(
                "file",
                json!({"host": "web-1", "action": action, "path": marker, "content": "x\n"}),
            )
            .await;
        out.assert_refused_as("invalid_arguments", "`action`");
        assert!(!marker.exists(), "the disguised write ran");
    }
    let out = carol
        .call(
            "job",
            json!({"action": {"kill": null}, "job": "x-12345678"}),
        )
        .await;
    out.assert_refused_as("invalid_arguments", "`action`");
    let out = carol
        .call(
            "facts",
            json!({"action": {"refresh": null}, "hosts": "web-1"}),
        )
        .await;
    out.assert_refused_as("invalid_arguments", "`action`");
    let out = carol
        .call(
            "grep",
            json!({"hosts": "web-1", "pattern": "x", "mode": {"count": null}}),
        )
        .await;
    out.assert_refused_as("invalid_arguments", "`mode`");
    // The documented shape still works within the tier, and is refused outside it.
    let out = carol
        .call(
            "file",
            json!({"host": "web-1", "action": "write", "path": marker, "content": "x\n"}),
        )
        .await;
    out.assert_refused_as("tier", "needs tier standard");
    let out = carol
        .call(
            "file",
            json!({"host": "web-1", "action": "list", "path": root.path()}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
}
