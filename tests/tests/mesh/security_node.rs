//! End-to-end: the node's own defences — signed requests (forged, replayed, unsigned, expired), the host's tier cap, run-as accounts and the CommandGuard — against a real nats-server and the real agent binary.
//!
//! Requests are published straight onto NATS as an attacker holding NATS credentials would,
//! or sent through the gateway as a user would. Commands the guard must refuse are chosen so
//! that they would do no harm even if it let them through.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use execmesh_gateway::core::signer::Signer;
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::signing::SigningKey;
use execmesh_proto::{Token, subject};
use execmesh_tests::{Gateway, Nats, NodeAgent, ToolOutput};
use nix::unistd::{User, geteuid};
use prost::Message as _;
use serde_json::json;

/// A request to run `cmd` on `host` as `alice`, valid for 30 s, with the caller's tier.
fn run_request(host: &str, job: &str, cmd: &str) -> pb::ExecRequest {
    pb::ExecRequest {
        tenant: "default".into(),
        host: host.into(),
        job_id: job.into(),
        user: "alice".into(),
        expires_at_ms: execmesh_proto::now_ms() + 30_000,
        tier: pb::Tier::Standard as i32,
        body: Some(pb::exec_request::Body::Run(pb::RunRequest {
            cmd: cmd.into(),
            inline_window_ms: 5_000,
            inline_max_bytes: 64 * 1024,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Publishes `payload` on `host`'s exec subject for `alice`, as anyone with NATS access could.
async fn publish(nats: &Nats, host: &str, payload: Vec<u8>) -> pb::ExecReply {
    let client = nats.client().await;
    let subject = subject::exec(
        &Token::parse("tenant", "default").expect("token"),
        &Token::parse("host id", host).expect("token"),
        &Token::parse("user", "alice").expect("token"),
    );
    let reply = tokio::time::timeout(
        Duration::from_secs(20),
        client.request(subject, payload.into()),
    )
    .await
    .expect("the agent answers in time")
    .expect("the request is delivered");
    pb::ExecReply::decode(reply.payload).expect("an ExecReply")
}

/// The mesh's own signer, as a gateway holds it.
fn mesh_signer(nats: &Nats) -> Signer {
    Signer::load_or_create(&nats.mesh_signing_key()).expect("the test mesh's key")
}

#[track_caller]
fn refusal(reply: &pb::ExecReply) -> (ErrorCode, String) {
    match &reply.body {
        Some(pb::exec_reply::Body::Error(e)) => (e.code(), e.message.clone()),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[track_caller]
fn ran(reply: &pb::ExecReply) -> String {
    match &reply.body {
        Some(pb::exec_reply::Body::Run(run)) => {
            String::from_utf8_lossy(run.inline_output.as_deref().unwrap_or_default()).into_owned()
        }
        other => panic!("expected the command to run, got {other:?}"),
    }
}

#[track_caller]
fn refused(out: &ToolOutput, needles: &[&str]) {
    assert!(out.is_error(), "expected a refusal, got: {}", out.text());
    for needle in needles {
        assert!(
            out.text().contains(needle),
            "`{needle}` not in: {}",
            out.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_unsigned_requests_published_onto_nats_are_refused_and_never_run() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let marker = tempfile::tempdir().expect("temp dir");
    let touched = marker.path().join("ran");
    let cmd = format!("touch {}", touched.display());

    let unsigned = publish(
        &nats,
        "web-1",
        run_request("web-1", "unsigned-1", &cmd).encode_to_vec(),
    )
    .await;
    let (code, message) = refusal(&unsigned);
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(
        message.contains("web-1") && message.contains("not signed"),
        "{message}"
    );

    // Signed by a key the agent does not trust.
    let stranger = Signer::new(SigningKey::from_bytes(&[9; 32]));
    let untrusted = publish(
        &nats,
        "web-1",
        stranger.sign(run_request("web-1", "stranger-1", &cmd)),
    )
    .await;
    let (code, message) = refusal(&untrusted);
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.contains("does not trust"), "{message}");

    // Signed by the mesh's key for a harmless command, then changed on the way.
    let genuine = mesh_signer(&nats).sign(run_request("web-1", "forged-1", "true"));
    let mut forged = pb::ExecRequest::decode(genuine.as_slice()).expect("decodes");
    forged.body = run_request("web-1", "forged-1", &cmd).body;
    let reply = publish(&nats, "web-1", forged.encode_to_vec()).await;
    let (code, message) = refusal(&reply);
    assert_eq!(code, ErrorCode::Unauthenticated);
    assert!(message.contains("forged"), "{message}");

    assert!(!touched.exists(), "a refused command ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_is_refused_and_an_expired_one_too() {
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let signer = mesh_signer(&nats);

    let signed = signer.sign(run_request("web-1", "once-1", "echo once"));
    assert_eq!(
        ran(&publish(&nats, "web-1", signed.clone()).await),
        "once\n"
    );
    let (code, message) = refusal(&publish(&nats, "web-1", signed).await);
    assert_eq!(code, ErrorCode::Replayed);
    assert!(
        message.contains("web-1") && message.contains("nonce"),
        "{message}"
    );

    let mut old = run_request("web-1", "late-1", "echo late");
    old.expires_at_ms = execmesh_proto::now_ms() - 1_000;
    let (code, message) = refusal(&publish(&nats, "web-1", signer.sign(old)).await);
    assert_eq!(code, ErrorCode::Expired);
    assert!(message.contains("expired"), "{message}");

    // A genuine request for another host is refused by this one.
    let elsewhere = signer.sign(run_request("web-2", "elsewhere-1", "echo hi"));
    let (code, message) = refusal(&publish(&nats, "web-1", elsewhere).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(message.contains("web-2"), "{message}");
}

/// A request naming the agent's instance runs before its status is stored, its replays refused
/// by the instance's nonce cache. A restart empties that cache: a request captured before it
/// names the old instance, so the new one stores first, and the store refuses the job id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_captured_before_an_agent_restart_is_refused_after_it() {
    let nats = Nats::start().await;
    let mut agent = NodeAgent::new(&nats, "web-1").start().await;
    let signer = mesh_signer(&nats);
    let marker = tempfile::tempdir().expect("temp dir");
    let ran_file = marker.path().join("ran");
    let cmd = format!("echo ran >> {}", ran_file.display());

    let mut request = run_request("web-1", "captured-1", &cmd);
    request.agent_instance = agent.instance().to_string();
    let captured = signer.sign(request);
    assert_eq!(ran(&publish(&nats, "web-1", captured.clone()).await), "");
    let (code, _) = refusal(&publish(&nats, "web-1", captured.clone()).await);
    assert_eq!(code, ErrorCode::Replayed);

    agent.restart().await;
    let (code, message) = refusal(&publish(&nats, "web-1", captured).await);
    assert_eq!(code, ErrorCode::Invalid);
    assert!(
        message.contains("captured-1") && message.contains("already exists"),
        "{message}"
    );
    let runs = std::fs::read_to_string(&ran_file).expect("the first request ran");
    assert_eq!(
        runs, "ran\n",
        "the captured request ran again after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_caps_the_tier_whatever_the_gateway_says() {
    let nats = Nats::start().await;
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::write(root.path().join("notes.txt"), "hello\n").expect("write");
    let _agent = NodeAgent::new(&nats, "db-1")
        .arg("--max-tier", "readonly")
        .arg("--file-root", root.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    let out = client.bash("db-1", "echo hi").await;
    refused(&out, &["db-1", "needs tier standard", "at most readonly"]);
    let out = client
        .call(
            "file",
            json!({"host": "db-1", "action": "delete", "path": root.path().join("notes.txt")}),
        )
        .await;
    refused(&out, &["db-1", "needs tier dangerous"]);
    let out = client
        .call(
            "file",
            json!({"host": "db-1", "action": "read", "path": root.path().join("notes.txt")}),
        )
        .await;
    assert!(!out.is_error(), "a read is readonly: {}", out.text());
    assert!(out.text().contains("hello"), "{}", out.text());

    // Published straight onto NATS with the mesh's key and the highest tier: still capped.
    let mut request = run_request("db-1", "capped-1", "echo hi");
    request.tier = pb::Tier::Dangerous as i32;
    let (code, _) = refusal(&publish(&nats, "db-1", mesh_signer(&nats).sign(request)).await);
    assert_eq!(code, ErrorCode::Tier);
    // And a request that names no tier at all is refused.
    let mut request = run_request("db-1", "tierless-1", "echo hi");
    request.tier = pb::Tier::Unspecified as i32;
    let (code, message) = refusal(&publish(&nats, "db-1", mesh_signer(&nats).sign(request)).await);
    assert_eq!(code, ErrorCode::Tier);
    assert!(message.contains("no tier"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_files_run_as_the_mapped_account_and_unmapped_users_are_refused() {
    let nats = Nats::start().await;
    let daemon = User::from_name("daemon")
        .expect("passwd lookup")
        .expect("the daemon account exists");
    // A root the mapped account may write to, and a directory only root may write to.
    let root = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(root.path(), PermissionsExt::from_mode(0o777)).expect("chmod");
    let private = root.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, PermissionsExt::from_mode(0o755)).expect("chmod");

    let _agent = NodeAgent::new(&nats, "app-1")
        .arg("--run-as", "alice=daemon")
        .arg("--file-root", root.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let alice = gw.client("alice").await;

    let out = alice
        .bash("app-1", "id -u; id -g; echo $HOME; echo $USER; pwd")
        .await;
    if !geteuid().is_root() {
        // An agent that is not root can only run as itself.
        refused(&out, &["app-1", "not root"]);
        return;
    }
    assert!(!out.is_error(), "{}", out.text());
    let home = daemon.dir.display().to_string();
    let expected_cwd = if daemon.dir.is_dir() {
        home.as_str()
    } else {
        "/"
    };
    assert_eq!(
        out.structured()["output"],
        format!(
            "{}\n{}\n{home}\ndaemon\n{expected_cwd}\n",
            daemon.uid, daemon.gid
        )
    );

    // Files written through the file tool belong to the account; its rights are the account's.
    let mine = root.path().join("made-by-alice.txt");
    let out = alice
        .call(
            "file",
            json!({"host": "app-1", "action": "write", "path": mine, "content": "x\n"}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let meta = std::fs::metadata(&mine).expect("written");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (daemon.uid.as_raw(), daemon.gid.as_raw())
    );
    let out = alice
        .call("file", json!({"host": "app-1", "action": "write", "path": private.join("no.txt"), "content": "x\n"}))
        .await;
    refused(&out, &["app-1"]);
    assert!(!private.join("no.txt").exists());

    // bob has no account on this host.
    let bob = gw.client("bob").await;
    let out = bob.bash("app-1", "id -u").await;
    refused(&out, &["app-1", "user bob", "no unix account"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_a_denied_command_through_the_gateway_naming_the_rule() {
    let nats = Nats::start().await;
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(config.path(), "[guard]\ndeny = [\"iptables -F\"]\n")
        .expect("write the agent config");
    let _agent = NodeAgent::new(&nats, "web-1")
        .arg("--config", config.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;

    // Harmless even if it ran: there is no such device.
    let out = client
        .bash(
            "web-1",
            "echo start; sh -c 'mkfs.ext4 /nonexistent/execmesh-guard'",
        )
        .await;
    refused(
        &out,
        &[
            "web-1",
            "CommandGuard",
            "rule mkfs",
            "mkfs.ext4 /nonexistent/execmesh-guard",
            "sh -c",
        ],
    );
    let out = client.bash("web-1", "sudo -n iptables -t nat -F").await;
    refused(&out, &["host rule `iptables -F`"]);
    let out = client.bash("web-1", "echo 'if then'; if").await;
    refused(&out, &["does not parse"]);

    let out = client
        .bash(
            "web-1",
            "echo \"rm -rf /\"; ls -la / >/dev/null && echo listed",
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], "rm -rf /\nlisted\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_refuses_indirect_interpreters_piped_code_and_dangerous_env_before_anything_runs()
{
    let nats = Nats::start().await;
    let _agent = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let marker = tempfile::tempdir().expect("temp dir");
    let touched = marker.path().join("ran");
    let touch = format!("touch {}", touched.display());
    // Harmless even if they ran: the device does not exist, the marker only records a run.
    let mkfs = "mkfs.ext4 /nonexistent/execmesh-guard";

    for (cmd, needles) in [
        (
            format!("$SHELL -c '{touch}; {mkfs}'"),
            vec!["rule mkfs", "-c", mkfs],
        ),
        (
            format!("bash +x -c '{touch}; {mkfs}'"),
            vec!["rule mkfs", "bash -c"],
        ),
        (
            format!("echo '{touch}; {mkfs}' | source /dev/stdin"),
            vec!["rule mkfs", "source"],
        ),
        (
            format!("alias go='{mkfs}'; {touch}; go"),
            vec!["rule mkfs", "alias go"],
        ),
        (
            format!("{touch}; cat /dev/null | sh"),
            vec!["rule unchecked-code", "sh (reading its input)"],
        ),
        (
            format!("{touch}; [[ 1 -eq 'x[$({mkfs})]' ]]"),
            vec!["rule mkfs", "arithmetic"],
        ),
        // `find .. -maxdepth 0 -delete` from /tmp could only try to remove `/` itself.
        (
            format!("{touch}; cd /tmp && find ../ -maxdepth 0 -delete"),
            vec!["rule recursive-delete", "find -delete"],
        ),
    ] {
        let out = client.bash("web-1", &cmd).await;
        let mut needles = needles;
        needles.extend(["web-1", "CommandGuard"]);
        refused(&out, &needles);
    }

    // A request variable the shell runs before the command: refused, naming it.
    let script = marker.path().join("bash_env.sh");
    std::fs::write(&script, format!("{touch}\n")).expect("write the BASH_ENV file");
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "true", "env": {"BASH_ENV": script.display().to_string()}}),
        )
        .await;
    refused(&out, &["web-1", "rule dangerous-env", "`BASH_ENV`"]);
    assert!(!touched.exists(), "a refused command ran");

    // Ordinary commands and variables still run.
    let out = client
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "echo \"$GREETING\" | tr a-z A-Z; kill -0 $$ && echo alive", "env": {"GREETING": "hi"}}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert_eq!(out.structured()["output"], "HI\nalive\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowlist_host_runs_only_its_listed_commands() {
    let nats = Nats::start().await;
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        "[guard]\nmode = \"allowlist\"\nallow = [\"echo ...\", \"tr a-z A-Z\", \"uname -s\"]\n",
    )
    .expect("write the agent config");
    let _agent = NodeAgent::new(&nats, "web-1")
        .arg("--config", config.path())
        .start()
        .await;
    let gw = Gateway::new(&nats).start().await;
    let client = gw.client("alice").await;
    let marker = tempfile::tempdir().expect("temp dir");
    let touched = marker.path().join("ran");

    let out = client
        .bash("web-1", "echo allowed | tr a-z A-Z; uname -s")
        .await;
    assert!(!out.is_error(), "{}", out.text());
    assert!(
        out.structured()["output"]
            .as_str()
            .is_some_and(|o| o.starts_with("ALLOWED\n")),
        "{}",
        out.text()
    );

    for (cmd, needle) in [
        (
            format!("echo hi; touch {}", touched.display()),
            "`touch` is not in this host's allowlist",
        ),
        ("uname -a".to_string(), "no allowed pattern for `uname`"),
        (
            format!("sh -c 'touch {}'", touched.display()),
            "runs text as shell code",
        ),
        (format!("echo hi > {}", touched.display()), "redirection"),
        ("$UNAME -s".to_string(), "only known at run time"),
    ] {
        let out = client.bash("web-1", &cmd).await;
        refused(&out, &["web-1", "rule allowlist", needle]);
    }
    assert!(!touched.exists(), "a refused command ran");
}
