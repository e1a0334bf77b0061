//! `execmeshctl` end to end: the real binary against a real mesh (nats-server, node-agents, the
//! audit-sink, a gateway serving the admin API). Every command once as a table and once with
//! `--json`; approvals decided with it unblock and refuse MCP calls; `job tail` follows a running
//! job to its end; refusals and unreachable gateways get words and their exit codes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use execmesh_proto::Tier;
use execmesh_tests::admin::{admin_gateway, team_policy};
use execmesh_tests::identities::put_signed;
use execmesh_tests::process::workspace_binary;
use execmesh_tests::{
    AdminMode, AuditSink, Gateway, Nats, NodeAgent, RunningGateway, eventually, with_approval,
};

/// How long one command or one streamed line may take.
const WAIT: Duration = Duration::from_secs(30);

/// What one run of `execmeshctl` did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    /// Asserts exit 0 and returns itself.
    #[track_caller]
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "execmeshctl failed: {self:#?}");
        self
    }

    /// Asserts the exit code and that stderr contains every needle.
    #[track_caller]
    fn fails(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{self:#?}");
        for needle in needles {
            assert!(self.stderr.contains(needle), "{needle:?} not in {self:#?}");
        }
    }

    /// Stdout as one JSON document.
    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {self:#?}"))
    }

    /// The table's header and rows, split on runs of two or more spaces.
    #[track_caller]
    fn table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut lines = self.stdout.lines().take_while(|l| !l.trim().is_empty());
        let split = |l: &str| -> Vec<String> {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect()
        };
        let header = split(
            lines
                .next()
                .unwrap_or_else(|| panic!("no table: {self:#?}")),
        );
        (header, lines.map(split).collect())
    }

    /// The table row whose first cell is `key`.
    #[track_caller]
    fn row(&self, key: &str) -> Vec<String> {
        let (_, rows) = self.table();
        rows.into_iter()
            .find(|r| r.first().is_some_and(|c| c == key))
            .unwrap_or_else(|| panic!("no row {key:?} in {self:#?}"))
    }
}

/// Runs `execmeshctl` as an operator of one gateway would: its own home and working directory
/// (so no config file or quickstart state of this machine is read) and no `EXECMESH_ADMIN_*`
/// variables but those given.
struct Ctl {
    bin: PathBuf,
    /// `--addr` and `--token` (or nothing when the test sets them another way).
    flags: Vec<String>,
    env: Vec<(String, String)>,
    /// HOME and the working directory.
    home: TempDir,
    cwd: Option<PathBuf>,
}

impl Ctl {
    /// A ctl for `gw`'s admin API with `token`.
    fn new(gw: &RunningGateway, token: &str) -> Self {
        let addr = gw.admin_addr().expect("the gateway serves the admin API");
        Self::bare().flags(&["--addr", &format!("http://{addr}"), "--token", token])
    }

    /// A ctl with no connection settings at all.
    fn bare() -> Self {
        Self {
            bin: workspace_binary("execmeshctl"),
            flags: Vec::new(),
            env: Vec::new(),
            home: TempDir::new().expect("a temp home"),
            cwd: None,
        }
    }

    fn flags(mut self, flags: &[&str]) -> Self {
        self.flags.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .args(&self.flags)
            .env_clear()
            .env("HOME", self.home.path())
            .current_dir(self.cwd.as_deref().unwrap_or(self.home.path()))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        for (k, v) in &self.env {
            command.env(k, v);
        }
        command
    }

    /// Runs one command to its end.
    async fn run(&self, args: &[&str]) -> Out {
        let output = tokio::time::timeout(WAIT, self.command(args).output())
            .await
            .unwrap_or_else(|_| panic!("execmeshctl {args:?} did not finish within {WAIT:?}"))
            .expect("run execmeshctl");
        Out {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Starts a command that streams (watch, tail) and returns it with its stdout's lines.
    fn spawn(&self, args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn execmeshctl");
        let stdout = child.stdout.take().expect("piped stdout");
        (child, BufReader::new(stdout).lines())
    }
}

/// The next line of a streaming command, within [`WAIT`].
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("a line within the wait")
        .expect("read a line")
        .expect("a line, not the end of the stream")
}

/// Reads JSON lines until one satisfies `wanted`, and returns it.
async fn json_line_where(
    lines: &mut Lines<BufReader<ChildStdout>>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let line = next_line(lines).await;
        let value: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if wanted(&value) {
            return value;
        }
    }
}

/// Starts `cmd` in the background on `host` as `user`; its job id.
async fn background(gw: &RunningGateway, user: &str, host: &str, cmd: &str) -> String {
    gw.client(user).await.bash_bg(host, cmd).await
}

#[tokio::test]
async fn hosts_are_listed_as_a_table_and_json_and_watched_coming_online() {
    let nats = Nats::start().await;
    let _web = nats.agent("web-1", &[("role", "web")]).await;
    let _db = nats.agent("db-1", &[("role", "db")]).await;
    let gw = Gateway::new(&nats).admin().start().await;
    let ctl = Ctl::new(&gw, &gw.mint_admin("root"));

    let out = ctl.run(&["hosts"]).await.ok();
    let (header, rows) = out.table();
    assert_eq!(
        header,
        [
            "HOST",
            "SERVED BY",
            "STATE",
            "HEARTBEAT",
            "JOBS",
            "OS",
            "CPUS",
            "MEMORY",
            "LOAD",
            "LABELS"
        ]
    );
    assert_eq!(
        rows.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["db-1", "web-1"]
    );
    let web = out.row("web-1");
    assert_eq!(web[1], "agent");
    assert_eq!(web[2], "online");
    assert!(
        web[3] == "just now" || web[3].ends_with("s ago"),
        "a relative heartbeat: {web:?}"
    );
    assert_eq!(web.last().map(String::as_str), Some("role=web"));
    assert!(
        out.stdout.contains("2 hosts: 2 online, 0 stale, 0 offline"),
        "{out:#?}"
    );

    // Asked for a host at a time, the same listing: every page's hosts, the counts of all.
    // (Heartbeat age, jobs and load move between the two runs: the rest is compared.)
    let steady = |rows: &[Vec<String>]| -> Vec<Vec<String>> {
        let columns = [0, 1, 2, 5, 6, 7, 9];
        (rows.iter())
            .map(|row| columns.iter().map(|&c| row[c].clone()).collect())
            .collect()
    };
    let paged = ctl.run(&["hosts", "--page-size", "1"]).await.ok();
    assert_eq!(steady(&paged.table().1), steady(&rows), "{paged:#?}");
    assert_eq!(paged.table().1.len(), 2, "{paged:#?}");
    assert!(
        paged
            .stdout
            .contains("2 hosts: 2 online, 0 stale, 0 offline"),
        "{paged:#?}"
    );
    ctl.run(&["hosts", "--page-size", "0"])
        .await
        .fails(2, &["--page-size", "1..=5000"]);

    let listed = ctl.run(&["hosts", "role=web", "--json"]).await.ok().json();
    assert_eq!(listed["online"], json!(1));
    let hosts = listed["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 1, "{listed}");
    assert_eq!(hosts[0]["host"], json!("web-1"));
    assert_eq!(hosts[0]["state"], json!("online"));
    assert_eq!(hosts[0]["labels"]["role"], json!("web"));
    assert!(
        hosts[0]["last_heartbeat_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 0)
    );
    assert!(
        hosts[0]["facts"]["cpus"].as_u64().is_some_and(|n| n > 0),
        "{listed}"
    );

    // JSON lines: each host's state at the start, then a host coming online.
    let (mut json_watch, mut json_lines) = ctl.spawn(&["hosts", "watch", "--json"]);
    let first = json_line_where(&mut json_lines, |_| true).await;
    assert_eq!(first["initial"], json!(true), "{first}");
    assert_eq!(first["state"], json!("online"), "{first}");
    // Tables: a header, then changes only.
    let (mut table_watch, mut table_lines) = ctl.spawn(&["hosts", "watch", "--changes-only"]);
    let header = next_line(&mut table_lines).await;
    assert!(
        header.starts_with("TIME") && header.contains("HOST") && header.contains("STATE"),
        "{header}"
    );

    let _cache = nats.agent("cache-1", &[("role", "cache")]).await;
    let online = json_line_where(&mut json_lines, |e| e["host"] == json!("cache-1")).await;
    assert_eq!(
        (
            &online["state"],
            &online["initial"],
            &online["detail"]["labels"]["role"]
        ),
        (&json!("online"), &json!(false), &json!("cache"))
    );
    let line = next_line(&mut table_lines).await;
    assert!(
        line.contains("cache-1") && line.contains("new → online") && line.contains("role=cache"),
        "{line}"
    );
    json_watch.kill().await.expect("stop the watch");
    table_watch.kill().await.expect("stop the watch");
}

#[tokio::test]
async fn jobs_are_listed_got_and_killed_as_tables_and_json() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let _db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let ctl = Ctl::new(&gw, &gw.mint_admin("root"));
    let sleeper = background(&gw, "alice", "web-1", "sleep 300").await;
    let quick = gw.client("bob").await.bash("db-1", "echo quick").await;
    let quick = quick.job_id();

    let out = ctl.run(&["jobs"]).await.ok();
    let (header, _) = out.table();
    assert_eq!(
        header,
        [
            "JOB", "HOST", "USER", "STATE", "EXIT", "STARTED", "DURATION", "CMD"
        ]
    );
    let row = out.row(&sleeper);
    assert_eq!(&row[1..5], ["web-1", "alice", "running", "-"]);
    assert_eq!(row.last().map(String::as_str), Some("sleep 300"));
    assert_eq!(&out.row(&quick)[1..5], ["db-1", "bob", "exited", "0"]);

    let running = ctl
        .run(&["jobs", "--host", "web-1", "--state", "running", "--json"])
        .await
        .ok()
        .json();
    let jobs = running["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 1, "{running}");
    assert_eq!(jobs[0]["job_id"], json!(sleeper));
    assert_eq!(jobs[0]["state"], json!("running"));
    assert_eq!(running["truncated"], json!(false));
    let bobs = ctl
        .run(&["jobs", "--user", "bob", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(bobs["jobs"][0]["job_id"], json!(quick), "{bobs}");
    assert_eq!(bobs["jobs"][0]["exit_code"], json!(0));
    let limited = ctl
        .run(&["jobs", "--limit", "1", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(limited["jobs"].as_array().map(Vec::len), Some(1));
    assert_eq!(limited["truncated"], json!(true));

    let detail = ctl.run(&["job", "get", &sleeper]).await.ok();
    assert!(detail.stdout.starts_with("job:"), "{detail:#?}");
    for needle in [
        sleeper.as_str(),
        "host:     web-1",
        "state:    running",
        "cmd:      sleep 300",
    ] {
        assert!(detail.stdout.contains(needle), "{needle:?} in {detail:#?}");
    }
    let got = ctl.run(&["job", "get", &quick, "--json"]).await.ok().json();
    assert_eq!(got["jobs"][0]["host"], json!("db-1"));
    assert_eq!(got["jobs"][0]["lines"], json!(1));

    let killed = ctl.run(&["job", "kill", &sleeper]).await.ok();
    assert_eq!(killed.row(&sleeper)[1], "web-1");
    let state = eventually(WAIT, || async {
        let got = ctl
            .run(&["job", "get", &sleeper, "--json"])
            .await
            .ok()
            .json();
        let state = got["jobs"][0]["state"].clone();
        (state != json!("running")).then_some(state)
    })
    .await;
    assert_eq!(state, json!("killed"));
    // Killing an ended job reports it unchanged.
    let again = ctl
        .run(&["job", "kill", &sleeper, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(again["jobs"][0]["state"], json!("killed"));
    let killed = ctl.run(&["jobs", "--state", "killed"]).await.ok();
    assert_eq!(killed.row(&sleeper)[3], "killed");

    ctl.run(&["jobs", "--state", "finished"])
        .await
        .fails(2, &["running, exited, timed_out, killed, lost or failed"]);
    ctl.run(&["job", "get", "nope-00000000"])
        .await
        .fails(1, &["not found", "nope-00000000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_shown_redacted_by_the_job_tool_the_admin_api_and_execmeshctl() {
    use prost::Message as _;
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let ctl = Ctl::new(&gw, &gw.mint_admin("root"));
    let alice = gw.client("alice").await;

    // A job run now: its agent stores the command redacted.
    let out = alice
        .call(
            "bash",
            json!({"host": "web-1", "cmd": "MYSQL_PWD=newSECRET true", "title": "with token=titleSECRET"}),
        )
        .await;
    assert!(!out.is_error(), "{}", out.text());
    let fresh = out.job_id();
    assert!(
        !fresh.contains("secret"),
        "the job id names a secret: {fresh}"
    );
    // A job recorded by an agent from before redaction: shown redacted all the same.
    let planted = "migrate-00000001";
    let old = execmesh_proto::pb::JobStatus {
        job_id: planted.into(),
        tenant: "default".into(),
        host: "web-1".into(),
        user: "alice".into(),
        cmd: "DB_PASS=oldSECRET ./migrate".into(),
        state: execmesh_proto::pb::JobState::Exited as i32,
        exit_code: Some(0),
        started_at_ms: execmesh_proto::now_ms(),
        ended_at_ms: execmesh_proto::now_ms(),
        ..Default::default()
    };
    // Signed by web-1's agent, as agents write job records: an unsigned one would be ignored.
    let js = nats.jetstream().await;
    let jobs = js.get_key_value("mesh_jobs").await.expect("mesh_jobs");
    let signer = nats.identities().record_key("agent-web-1");
    let key = format!("default.web-1.{planted}");
    put_signed(&js, &jobs, &key, old.encode_to_vec(), &signer).await;

    let shown = |what: &str, text: &str| {
        assert!(!text.contains("SECRET"), "{what} shows a secret: {text}");
    };
    let listed = alice
        .call("job", json!({"action": "list", "host": "web-1"}))
        .await;
    assert!(!listed.is_error(), "{}", listed.text());
    shown("job list", &listed.text());
    shown("job list", &listed.structured().to_string());
    listed.assert_text_has("DB_PASS=[redacted] ./migrate");
    listed.assert_text_has("MYSQL_PWD=[redacted] true");

    let table = ctl.run(&["jobs"]).await.ok();
    shown("execmeshctl jobs", &table.stdout);
    assert_eq!(
        table.row(planted).last().map(String::as_str),
        Some("DB_PASS=[redacted] ./migrate")
    );
    let json = ctl.run(&["jobs", "--json"]).await.ok();
    shown("execmeshctl jobs --json", &json.stdout);
    for job in [planted, fresh.as_str()] {
        let detail = ctl.run(&["job", "get", job]).await.ok();
        shown("execmeshctl job get", &detail.stdout);
        let got = ctl.run(&["job", "get", job, "--json"]).await.ok();
        shown("execmeshctl job get --json", &got.stdout);
    }
    let got = ctl.run(&["job", "get", &fresh, "--json"]).await.ok().json();
    assert_eq!(got["jobs"][0]["cmd"], json!("MYSQL_PWD=[redacted] true"));
    assert_eq!(got["jobs"][0]["title"], json!("with token=[redacted]"));
}

#[tokio::test]
async fn job_tail_prints_a_running_jobs_output_to_its_end() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let ctl = Ctl::new(&gw, &gw.mint_admin("root"));
    let job = background(
        &gw,
        "alice",
        "web-1",
        "for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done; exit 3",
    )
    .await;

    // Started while the job runs: follows it to the end, and mirrors its exit code.
    let out = ctl
        .run(&["job", "tail", &job, "--from-start", "--exit-code"])
        .await;
    assert_eq!(
        out.stdout, "line-1\nline-2\nline-3\nline-4\nline-5\n",
        "{out:#?}"
    );
    assert_eq!(out.code, 3, "--exit-code mirrors the job's: {out:#?}");
    assert!(
        out.stderr.contains("exit 3 after")
            && out.stderr.contains(&format!("on web-1 (job {job})")),
        "{out:#?}"
    );

    // Without --exit-code a tail that saw the job end succeeds; -n starts near the end.
    let last = ctl.run(&["job", "tail", &job, "-n", "2"]).await.ok();
    assert_eq!(last.stdout, "line-4\nline-5\n");

    let out = ctl
        .run(&["job", "tail", &job, "--from-start", "--json"])
        .await
        .ok();
    let messages: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let (exit, chunks) = messages.split_last().expect("messages");
    let text: String = chunks
        .iter()
        .map(|c| {
            assert_eq!(c["type"], json!("output"), "{c}");
            c["data"].as_str().expect("data").to_string()
        })
        .collect();
    assert_eq!(text, "line-1\nline-2\nline-3\nline-4\nline-5\n");
    assert_eq!(
        chunks[0]["first_line"],
        json!(0),
        "line numbers count from 0: {}",
        chunks[0]
    );
    assert_eq!(exit["type"], json!("exit"));
    assert_eq!(exit["job"]["exit_code"], json!(3));
    assert_eq!(exit["job"]["state"], json!("exited"));
    assert!(exit["cursor"].as_str().is_some_and(|c| !c.is_empty()));

    ctl.run(&["job", "tail", "nope-00000000"])
        .await
        .fails(1, &["not found"]);
}

#[tokio::test]
async fn approvals_decided_with_execmeshctl_unblock_or_refuse_the_held_call() {
    let nats = Nats::start().await;
    let db = NodeAgent::new(&nats, "db-1").start().await;
    let gw = admin_gateway(&nats, team_policy()).await;
    let alice_mcp = gw.client("alice").await;
    let alice = Ctl::new(&gw, &gw.mint_admin("alice"));
    let bob = Ctl::new(&gw, &gw.mint_admin("bob"));
    let (mut watch, mut watched) = bob.spawn(&["approvals", "watch", "--json"]);

    let marker = db.dir().join("approved-ran");
    let args =
        json!({"host": "db-1", "cmd": format!("touch {} && echo approved", marker.display())});
    let id = alice_mcp.call("bash", args.clone()).await.approval_id();

    let requested = json_line_where(&mut watched, |e| e["approval"]["id"] == json!(id)).await;
    assert_eq!(
        requested["approval"]["state"],
        json!("pending"),
        "{requested}"
    );
    assert_eq!(requested["approval"]["user"], json!("alice"));

    let pending = bob.run(&["approvals"]).await.ok();
    let (header, _) = pending.table();
    assert_eq!(
        header,
        [
            "ID",
            "STATE",
            "USER",
            "HOSTS",
            "REQUESTED",
            "EXPIRES",
            "DECIDED",
            "SUMMARY"
        ]
    );
    let row = pending.row(&id);
    assert_eq!(&row[1..4], ["pending", "alice", "db-1"]);
    assert!(row[5].starts_with("in "), "expires in the future: {row:?}");
    let listed = bob.run(&["approvals", "--json"]).await.ok().json();
    assert_eq!(listed["approvals"][0]["id"], json!(id));
    assert_eq!(listed["approvals"][0]["arguments"]["cmd"], args["cmd"]);

    let detail = bob.run(&["approval", "get", &id]).await.ok();
    for needle in [
        "state:",
        "pending",
        "summary:",
        "db-1",
        "arguments:",
        "\"cmd\"",
    ] {
        assert!(detail.stdout.contains(needle), "{needle:?} in {detail:#?}");
    }
    let got = bob
        .run(&["approval", "get", &id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(got["approval"]["hosts"], json!(["db-1"]));
    assert_eq!(got["approval"]["tool"], json!("bash"));

    alice
        .run(&["approve", &id])
        .await
        .fails(1, &["permission denied", "own request"]);
    assert!(!marker.exists(), "a held call must not run");
    let approved = bob.run(&["approve", &id]).await.ok();
    assert!(
        approved
            .stdout
            .starts_with(&format!("approved {id} for alice")),
        "{approved:#?}"
    );
    let decided = json_line_where(&mut watched, |e| {
        e["approval"]["id"] == json!(id) && e["approval"]["state"] == json!("approved")
    })
    .await;
    assert_eq!(decided["approval"]["decided_by"], json!("bob"));
    assert_eq!(
        decided["initial"],
        json!(false),
        "a change, not the state at the start"
    );

    let ran = alice_mcp.call("bash", with_approval(&args, &id)).await;
    assert!(!ran.is_error(), "{}", ran.text());
    ran.assert_field("output", json!("approved\n"));
    assert!(marker.exists());
    bob.run(&["approve", &id])
        .await
        .fails(1, &["cannot do that now", "used"]);

    // A denial's reason reaches the caller.
    let second_args = json!({"host": "db-1", "cmd": "echo no"});
    let second = alice_mcp
        .call("bash", second_args.clone())
        .await
        .approval_id();
    bob.run(&["deny", &second, "--reason", " "])
        .await
        .fails(2, &["--reason"]);
    let denied = bob
        .run(&[
            "deny",
            &second,
            "--reason",
            "not during the freeze",
            "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(denied["approval"]["state"], json!("denied"));
    assert_eq!(denied["approval"]["reason"], json!("not during the freeze"));
    let refused = alice_mcp
        .call("bash", with_approval(&second_args, &second))
        .await;
    assert!(refused.is_error(), "{}", refused.text());
    assert!(
        refused
            .text()
            .contains("bob denied it: not during the freeze"),
        "{}",
        refused.text()
    );

    // Decided ones show with --all, newest first; the table says who decided and why.
    let all = bob.run(&["approvals", "--all", "--json"]).await.ok().json();
    let states: Vec<(&Value, &Value)> = all["approvals"]
        .as_array()
        .expect("approvals")
        .iter()
        .map(|a| (&a["id"], &a["state"]))
        .collect();
    assert_eq!(
        states,
        [
            (&json!(second), &json!("denied")),
            (&json!(id), &json!("used"))
        ]
    );
    let table = bob.run(&["approvals", "--all"]).await.ok();
    assert!(
        table.row(&second)[6].starts_with("bob: not during the freeze"),
        "{table:#?}"
    );
    assert_eq!(
        bob.run(&["approvals"]).await.ok().stdout,
        "no approvals pending (--all shows decided ones)\n"
    );
    bob.run(&["approval", "get", "apr-0000000000000000"])
        .await
        .fails(1, &["not found", "apr-0000000000000000"]);
    watch.kill().await.expect("stop the watch");

    // The table form of the watch: a header, then one line per change.
    let (mut watch, mut lines) = bob.spawn(&["approvals", "watch", "--changes-only"]);
    let header = next_line(&mut lines).await;
    assert!(
        header.starts_with("TIME") && header.contains("SUMMARY"),
        "{header}"
    );
    let third = alice_mcp.bash("db-1", "echo third").await.approval_id();
    let line = next_line(&mut lines).await;
    assert!(
        line.contains(&third) && line.contains("pending") && line.contains("alice"),
        "{line}"
    );
    watch.kill().await.expect("stop the watch");

    let approved = bob.run(&["approve", &third, "--json"]).await.ok().json();
    assert_eq!(approved["approval"]["state"], json!("approved"));
    assert_eq!(approved["approval"]["decided_by"], json!("bob"));
    let fourth = alice_mcp.bash("db-1", "echo fourth").await.approval_id();
    let denied = bob
        .run(&["deny", &fourth, "--reason", "use the runbook"])
        .await
        .ok();
    assert!(
        denied
            .stdout
            .starts_with(&format!("denied {fourth} for alice: "))
            && denied
                .stdout
                .contains("reason (shown to alice): use the runbook"),
        "{denied:#?}"
    );
}

#[tokio::test]
async fn audit_is_searched_exported_and_verified() {
    let nats = Nats::start().await;
    let _web = NodeAgent::new(&nats, "web-1").start().await;
    let _sink = AuditSink::new(&nats).sqlite().start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let ctl = Ctl::new(&gw, &gw.mint_admin("root"));
    let out = gw.client("carol").await.bash("web-1", "echo audited").await;
    let job = out.job_id();

    let page = eventually(WAIT, || async {
        let page = ctl
            .run(&["audit", "--job", &job, "--json"])
            .await
            .ok()
            .json();
        let finished = page["records"]
            .as_array()?
            .iter()
            .any(|r| r["kind"] == json!("job-finished"));
        finished.then_some(page)
    })
    .await;
    let records = page["records"].as_array().expect("records");
    assert!(records.iter().all(|r| r["job_id"] == json!(job)), "{page}");
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seqs:?}"
    );
    let finished = records
        .iter()
        .find(|r| r["kind"] == json!("job-finished"))
        .expect("job-finished");
    assert_eq!(finished["detail"]["exit_code"], json!(0));
    assert_eq!(finished["host"], json!("web-1"));

    let table = ctl
        .run(&["audit", "--job", &job, "--oldest-first"])
        .await
        .ok();
    let (header, rows) = table.table();
    assert_eq!(
        header,
        [
            "SEQ", "TIME", "KIND", "USER", "HOST", "TOOL", "JOB", "OUTCOME", "DETAIL"
        ]
    );
    let kinds: Vec<&str> = rows.iter().map(|r| r[2].as_str()).collect();
    assert!(
        kinds.contains(&"job-started") && kinds.contains(&"job-finished"),
        "{table:#?}"
    );
    let finished = rows.iter().find(|r| r[2] == "job-finished").expect("a row");
    assert_eq!(
        (finished[4].as_str(), finished[7].as_str()),
        ("web-1", "ok")
    );
    assert!(finished[8].starts_with("exited 0 after"), "{finished:?}");

    let calls = ctl
        .run(&[
            "audit",
            "--since",
            "1h",
            "--user",
            "carol",
            "--kind",
            "call-received",
            "--json",
        ])
        .await
        .ok()
        .json();
    let calls = calls["records"].as_array().expect("records");
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["detail"]["args"]["cmd"], json!("echo audited"));
    let none = ctl
        .run(&["audit", "--until", "2000-01-01T00:00:00Z"])
        .await
        .ok();
    assert!(
        none.stdout.starts_with("no audit events match"),
        "{none:#?}"
    );
    let one = ctl.run(&["audit", "--limit", "1"]).await.ok();
    assert!(
        one.stdout.contains("(more: execmeshctl audit --cursor "),
        "{one:#?}"
    );

    let export = ctl.run(&["audit", "export"]).await.ok();
    let lines: Vec<Value> = export
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=lines.len() as u64).collect::<Vec<_>>(),
        "every record once, in order"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64))
    );
    let bash_only = ctl.run(&["audit", "export", "--tool", "bash"]).await.ok();
    let tools: Vec<Value> = bash_only
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line")["tool"].clone())
        .collect();
    assert!(
        !tools.is_empty() && tools.iter().all(|t| t == "bash"),
        "{tools:?}"
    );

    let verified = ctl.run(&["audit", "verify"]).await.ok();
    assert!(
        verified.stdout.starts_with("audit chain intact: "),
        "{verified:#?}"
    );
    let verified = ctl.run(&["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(verified["ok"], json!(true));
    assert!(
        verified["records"]
            .as_u64()
            .is_some_and(|n| n >= seqs.len() as u64)
    );

    ctl.run(&["audit", "--since", "yesterday"])
        .await
        .fails(2, &["--since", "RFC 3339"]);
}

#[tokio::test]
async fn tokens_are_minted_revoked_and_revocations_listed() {
    let nats = Nats::start().await;
    // alice mints for bob: the policy must name her a token admin.
    let gw = admin_gateway(&nats, team_policy().token_admins(&["alice"])).await;
    let alice = Ctl::new(&gw, &gw.mint_admin("alice"));

    let minted = alice
        .run(&[
            "token", "mint", "--user", "bob", "--scope", "admin", "--ttl", "1h",
        ])
        .await
        .ok();
    let token = minted.stdout.trim().to_string();
    assert_eq!(
        minted.stdout.lines().count(),
        1,
        "only the token on stdout: {minted:#?}"
    );
    assert!(
        minted
            .stderr
            .contains("for bob (scopes admin, tier dangerous)"),
        "{minted:#?}"
    );
    let as_bob = Ctl::new(&gw, &token);
    as_bob.run(&["hosts"]).await.ok();

    let mcp = alice
        .run(&[
            "token", "mint", "--user", "bob", "--tier", "readonly", "--json",
        ])
        .await
        .ok()
        .json();
    assert_eq!(mcp["scopes"], json!(["mcp"]));
    assert_eq!(mcp["tier"], json!("readonly"));
    assert_eq!(mcp["user"], json!("bob"));
    let mcp_id = mcp["token_id"].as_str().expect("a token id").to_string();
    alice
        .run(&["token", "mint", "--user", "mallory"])
        .await
        .fails(1, &["mallory", "not in the policy"]);

    let revoked = alice.run(&["token", "revoke", &token]).await.ok();
    assert!(revoked.stdout.starts_with("revoked token "), "{revoked:#?}");
    let refused = eventually(WAIT, || async {
        let out = as_bob.run(&["hosts"]).await;
        (out.code != 0).then_some(out)
    })
    .await;
    refused.fails(1, &["did not accept the token", "revoked"]);
    let by_id = alice
        .run(&["token", "revoke", &mcp_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(by_id["token_id"], json!(mcp_id));

    let table = alice.run(&["token", "revocations"]).await.ok();
    let (header, rows) = table.table();
    assert_eq!(header, ["TOKEN ID", "REVOKED", "KEPT UNTIL"]);
    assert_eq!(rows.len(), 2, "{table:#?}");
    let revoked_at = &table.row(&mcp_id)[1];
    assert!(
        revoked_at == "just now" || revoked_at.ends_with("s ago"),
        "{table:#?}"
    );
    let listed = alice
        .run(&["token", "revocations", "--json"])
        .await
        .ok()
        .json();
    let ids: Vec<&str> = listed["revocations"]
        .as_array()
        .expect("revocations")
        .iter()
        .filter_map(|r| r["token_id"].as_str())
        .collect();
    assert!(ids.contains(&mcp_id.as_str()), "{listed}");
    assert_eq!(ids.len(), 2);
}

#[tokio::test]
async fn token_mint_approve_and_deny_print_who_may_not_and_why_and_mints_are_audited() {
    let nats = Nats::start().await;
    let _db = NodeAgent::new(&nats, "db-1").start().await;
    let _sink = AuditSink::new(&nats).sqlite().start().await;
    // bob approves; carol is an approver without the tier; erin is no approver.
    let policy = team_policy()
        .user("carol", Tier::Readonly, &["*"])
        .member_of("erin", &["ops"])
        .to_string()
        .replace(
            "[approvers]\ngroups = [\"ops\"]\n",
            "[approvers]\nusers = [\"alice\", \"bob\", \"carol\"]\n",
        );
    let gw = admin_gateway(&nats, &policy).await;
    let alice = Ctl::new(&gw, &gw.mint_admin("alice"));
    let carol = Ctl::new(&gw, &gw.mint_admin("carol"));
    let erin = Ctl::new(&gw, &gw.mint_admin("erin"));

    // Minting: for yourself only, never above your tier.
    alice
        .run(&["token", "mint", "--user", "bob", "--scope", "admin"])
        .await
        .fails(
            1,
            &[
                "permission denied",
                "alice may not mint a token for bob",
                "[token_admins]",
            ],
        );
    carol
        .run(&["token", "mint", "--tier", "dangerous"])
        .await
        .fails(1, &["permission denied", "dangerous", "(readonly)"]);
    let own = carol.run(&["token", "mint", "--json"]).await.ok().json();
    assert_eq!(
        (&own["user"], &own["tier"]),
        (&json!("carol"), &json!("readonly"))
    );

    // Deciding: named approvers with the tier the call needs, never the requester.
    let id = gw
        .client("alice")
        .await
        .bash("db-1", "echo held")
        .await
        .approval_id();
    erin.run(&["approve", &id])
        .await
        .fails(1, &["permission denied", "erin is not an approver"]);
    carol
        .run(&["deny", &id, "--reason", "no"])
        .await
        .fails(1, &["permission denied", "needs tier standard", "readonly"]);
    alice
        .run(&["approve", &id])
        .await
        .fails(1, &["permission denied", "own request"]);
    let bob = Ctl::new(&gw, &gw.mint_admin("bob"));
    let approved = bob.run(&["approve", &id, "--json"]).await.ok().json();
    assert_eq!(approved["approval"]["decided_by"], json!("bob"));

    // The mint is in the audit trail, with its id and never the token.
    let audit = eventually(WAIT, || async {
        let out = alice
            .run(&["audit", "--kind", "token-minted", "--json"])
            .await;
        (out.code == 0 && out.stdout.contains(own["token_id"].as_str().unwrap_or("-")))
            .then_some(out)
    })
    .await;
    let records = audit.json()["records"].clone();
    let minted = records
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["detail"]["token_id"] == own["token_id"])
        .unwrap_or_else(|| panic!("carol's mint in {records}"));
    assert_eq!(minted["user"], json!("carol"));
    assert_eq!(minted["detail"]["for_user"], json!("carol"));
    assert_eq!(minted["detail"]["tier"], json!("readonly"));
    assert_eq!(minted["detail"]["scopes"], json!(["mcp"]));
    let token = own["token"].as_str().expect("a token");
    assert!(
        !audit.stdout.contains(token),
        "the token reached the audit trail"
    );
}

#[tokio::test]
async fn refusals_and_unreachable_gateways_get_words_and_exit_codes() {
    let nats = Nats::start().await;
    let gw = admin_gateway(&nats, team_policy()).await;

    Ctl::new(&gw, "not-a-token").run(&["hosts"]).await.fails(
        1,
        &[
            "did not accept the token from --token",
            "token mint --user NAME --scope admin",
        ],
    );
    let addr = format!("http://{}", gw.admin_addr().expect("admin address"));
    Ctl::bare()
        .flags(&["--addr", &addr])
        .run(&["hosts"])
        .await
        .fails(1, &["the gateway wants a token", "--token-file"]);
    // A valid token without the admin scope.
    Ctl::new(&gw, &gw.mint("alice")).run(&["jobs"]).await.fails(
        1,
        &[
            "permission denied",
            "lacks the `admin` scope",
            "--scope admin",
        ],
    );

    // Nothing listens on a port just released.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let out = Ctl::bare()
        .flags(&["--addr", &format!("127.0.0.1:{port}"), "--token", "x"])
        .run(&["hosts"])
        .await;
    out.fails(
        3,
        &[&format!(
            "cannot connect to http://127.0.0.1:{port}: connection refused (is the gateway \
             running with admin_addr set?)"
        )],
    );

    let ctl = Ctl::new(&gw, &gw.mint_admin("alice"));
    ctl.run(&["hosts", "--cert", "client.pem"])
        .await
        .fails(2, &["--cert and --key go together"]);
    ctl.run(&["jobs", "--limit", "many"])
        .await
        .fails(2, &["--limit"]);
    ctl.run(&["hosts", "role=="])
        .await
        .fails(1, &["the gateway refused the request"]);
    let help = ctl.run(&["approve", "--help"]).await.ok();
    assert!(
        help.stdout.contains("Example:\n  execmeshctl approve apr-"),
        "{help:#?}"
    );
}

#[tokio::test]
async fn over_mtls_execmeshctl_presents_its_certificate_and_trusts_only_the_ca_given() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats)
        .admin_mode(AdminMode::Mtls)
        .start()
        .await;
    let pki = gw.admin_pki().expect("test certificates").clone();
    let dir = TempDir::new().expect("a temp dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path.display().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("client.pem", &pki.client.cert),
        write("client.key", &pki.client.key),
    );
    let port = gw.admin_addr().expect("admin address").port();
    let token = gw.mint_admin("root");

    // No scheme: https, because TLS settings are given.
    let out = Ctl::bare()
        .flags(&["--addr", &format!("localhost:{port}"), "--token", &token])
        .flags(&["--ca", &ca, "--cert", &cert, "--key", &key])
        .run(&["hosts", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["hosts"], json!([]));

    let https = format!("https://localhost:{port}");
    Ctl::bare()
        .flags(&["--addr", &https, "--token", &token, "--ca", &ca])
        .run(&["hosts"])
        .await
        .fails(
            3,
            &[&format!("cannot connect to {https}"), "--cert and --key"],
        );
    Ctl::bare()
        .flags(&[
            "--addr", &https, "--token", &token, "--cert", &cert, "--key", &key,
        ])
        .run(&["hosts"])
        .await
        .fails(3, &[&format!("cannot connect to {https}"), "--ca"]);
}

#[tokio::test]
async fn settings_come_from_flags_then_env_then_the_config_file_then_the_quickstart() {
    let nats = Nats::start().await;
    let gw = Gateway::new(&nats).admin().start().await;
    let addr = format!("http://{}", gw.admin_addr().expect("admin address"));
    let token = gw.mint_admin("root");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!(
            "127.0.0.1:{}",
            listener.local_addr().expect("address").port()
        )
    };

    // The default config file, with a token file beside it.
    let ctl = Ctl::bare();
    let config_dir = ctl.home.path().join(".config/execmesh");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::write(config_dir.join("admin.token"), format!("{token}\n")).expect("token file");
    std::fs::write(
        config_dir.join("ctl.toml"),
        format!("addr = \"{addr}\"\ntoken_file = \"admin.token\"\n"),
    )
    .expect("config file");
    ctl.run(&["hosts"]).await.ok();

    // The environment wins over the file, a flag over the environment.
    let ctl = ctl.env("EXECMESH_ADMIN_ADDR", &closed);
    ctl.run(&["hosts"]).await.fails(3, &[&closed]);
    ctl.run(&["hosts", "--addr", &addr]).await.ok();
    Ctl::bare()
        .env("EXECMESH_ADMIN_ADDR", &addr)
        .env("EXECMESH_ADMIN_TOKEN", &token)
        .run(&["hosts"])
        .await
        .ok();

    // An explicit --config must exist and be valid.
    Ctl::bare()
        .run(&["hosts", "--config", "/nonexistent/ctl.toml"])
        .await
        .fails(2, &["cannot read the config file /nonexistent/ctl.toml"]);

    // The quickstart's state file, found from a subdirectory of its checkout.
    let checkout = TempDir::new().expect("a checkout");
    std::fs::create_dir_all(checkout.path().join(".execmesh")).expect("state dir");
    std::fs::create_dir_all(checkout.path().join("deploy")).expect("a subdirectory");
    std::fs::write(
        checkout.path().join(".execmesh/quickstart.json"),
        json!({"mcp_url": "http://127.0.0.1:8420/mcp", "admin_addr": gw.admin_addr().expect("addr").to_string(), "admin_token": token})
            .to_string(),
    )
    .expect("quickstart.json");
    let out = Ctl::bare()
        .cwd(&checkout.path().join("deploy"))
        .run(&["hosts", "--json"])
        .await
        .ok();
    assert_eq!(out.json()["hosts"], json!([]));
    // Its token is not sent to another address.
    Ctl::bare()
        .cwd(checkout.path())
        .run(&["hosts", "--addr", &addr])
        .await
        .fails(1, &["the gateway wants a token"]);
}

#[tokio::test]
async fn every_command_explains_itself_with_an_example() {
    let ctl = Ctl::bare();
    for command in [
        &["hosts"][..],
        &["hosts", "watch"],
        &["jobs"],
        &["job", "get"],
        &["job", "tail"],
        &["job", "kill"],
        &["approvals"],
        &["approvals", "watch"],
        &["approval", "get"],
        &["approve"],
        &["deny"],
        &["audit"],
        &["audit", "export"],
        &["audit", "verify"],
        &["token", "mint"],
        &["token", "revoke"],
        &["token", "revocations"],
        &["runbooks"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let out = ctl.run(&args).await.ok();
        assert!(
            out.stdout.contains("Example") && out.stdout.contains("  execmeshctl "),
            "{command:?}: {out:#?}"
        );
    }
    let out = ctl.run(&[]).await;
    out.fails(2, &["Usage: execmeshctl"]);
}
