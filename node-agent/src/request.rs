//! Checks requests from the wire and turns them into validated job and kill orders.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use execmesh_proto::pb::{self, ErrorCode};
use execmesh_proto::{Token, headers};

use crate::config::Config;
use crate::refusal::Refusal;
use crate::runas::Account;

/// Longest command accepted: Linux refuses a single exec argument longer than this (128 KiB).
pub const MAX_CMD_BYTES: usize = 128 * 1024 - 1;
/// Longest job title.
pub const MAX_TITLE_BYTES: usize = 1024;
/// Longest working directory path.
pub const MAX_CWD_BYTES: usize = 4096;
/// Longest job timeout a request may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 24 * 3600);
/// Longest grace period a kill request may ask for.
pub const MAX_KILL_GRACE: Duration = Duration::from_secs(3600);

/// Most argv elements a runbook run may carry (its `argv` and `then_argv` together).
pub const MAX_ARGV: usize = 1024;

/// Runs a runbook's two steps (`argv`, then `then_argv`) without their words ever being shell
/// text: `$1` is how many words the first step has, the words follow as positional parameters,
/// and the first step is run through `eval` of `"${1}" "${2}" …` references only. The job exits
/// with the first step's code when that is not 0, else with the second's. POSIX sh.
const THEN_SCRIPT: &str = r#"n=$1; shift
refs=""; i=1
while [ "$i" -le "$n" ]; do refs="$refs \"\${$i}\""; i=$((i + 1)); done
eval "$refs"; first=$?
shift "$n"
"$@"; second=$?
if [ "$first" -ne 0 ]; then exit "$first"; fi
exit "$second""#;

/// A validated request to run a command.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub job: Token,
    pub user: Token,
    /// The command line run with `<shell> -c`, or, for an argv run, the argv shell-quoted: what
    /// the guard checks and the job status shows.
    pub cmd: String,
    /// When not empty, what is executed directly (no shell parses `cmd`): the request's argv, or
    /// for a two-step runbook the agent's fixed [`THEN_SCRIPT`] with both steps as its arguments.
    pub argv: Vec<String>,
    /// The runbook the run comes from, as the gateway signed it.
    pub runbook: Option<pb::RunbookRef>,
    pub cwd: Option<PathBuf>,
    pub env: HashMap<String, String>,
    pub timeout: Duration,
    pub bg: bool,
    pub inline_window: Duration,
    pub inline_max_bytes: u64,
    pub title: String,
    /// W3C trace id (32 lower-case hex) of the tool call, or empty.
    pub trace_id: String,
    /// The agent instance the request names (`ExecRequest.agent_instance`), or empty: when it
    /// is this agent's own, the job starts before its status is stored.
    pub agent_instance: String,
    /// The account the job runs as; `None`: the agent's own (no `[run_as]` mapping). Set by
    /// admission after the mapping is consulted.
    pub account: Option<Account>,
}

/// A validated operation on the host's files: a file request or a grep. Its paths (and a
/// grep's pattern and globs) are checked where it is served, against the roots.
#[derive(Debug, Clone)]
pub struct FsSpec<R> {
    pub job: Token,
    pub user: Token,
    /// W3C trace id (32 lower-case hex) of the tool call, or empty.
    pub trace_id: String,
    /// Unix milliseconds after which the caller no longer waits: searches stop walking then.
    pub expires_at_ms: u64,
    /// A file request names an operation (checked).
    pub request: R,
    /// The account the operation acts as; `None`: the agent's own. Set by admission.
    pub account: Option<Account>,
}

/// A validated file operation.
pub type FileSpec = FsSpec<pb::FileRequest>;

/// A validated grep.
pub type GrepSpec = FsSpec<pb::GrepRequest>;

impl<R> FsSpec<R> {
    fn new(job: Token, user: Token, trace_id: String, expires_at_ms: u64, request: R) -> Self {
        FsSpec {
            job,
            user,
            trace_id,
            expires_at_ms,
            request,
            account: None,
        }
    }
}

/// A validated request for the host's fact pack.
#[derive(Debug, Clone)]
pub struct FactsSpec {
    pub job: Token,
    pub user: Token,
    /// W3C trace id (32 lower-case hex) of the tool call, or empty.
    pub trace_id: String,
    /// Collect now (and store) rather than answer with the last pack.
    pub refresh: bool,
}

/// What a valid ExecRequest asks for.
#[derive(Debug, Clone)]
pub enum Order {
    Run(RunSpec),
    File(FileSpec),
    Grep(GrepSpec),
    Facts(FactsSpec),
}

/// A validated control request: what to do with which job, on whose behalf.
#[derive(Debug, Clone)]
pub struct ControlSpec {
    pub job: Token,
    pub user: String,
    pub order: ControlOrder,
}

/// What a control request asks of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlOrder {
    /// Stop it, with this long between SIGTERM and SIGKILL.
    Kill { grace: Duration },
    /// Say whether it still runs here.
    Query,
}

/// [`order`] for a request that must run a command.
#[cfg(test)]
pub fn run_spec(
    req: pb::ExecRequest,
    subject_user: &str,
    headers: Option<&HeaderMap>,
    config: &Config,
    now_ms: u64,
) -> Result<RunSpec, Refusal> {
    match order(req, subject_user, headers, config, now_ms)? {
        Order::Run(spec) => Ok(spec),
        Order::File(_) | Order::Grep(_) | Order::Facts(_) => Err(Refusal::new(
            ErrorCode::Invalid,
            format!(
                "host {}: expected a command, got another kind of request",
                config.host_id
            ),
        )),
    }
}

/// Refuses a request this host cannot take as it is: `what` is wrong with it.
fn invalid(host: &Token, what: impl std::fmt::Display) -> Refusal {
    Refusal::new(ErrorCode::Invalid, format!("host {host}: {what}"))
}

/// A token of the request (`kind` names it in the refusal).
fn token(host: &Token, kind: &'static str, value: &str) -> Result<Token, Refusal> {
    Token::parse(kind, value).map_err(|e| invalid(host, e))
}

/// Refuses a request addressed to another host or tenant: subjects route by host, so this
/// catches a mis-built or replayed request rather than a routing mistake.
fn addressed_here(config: &Config, host: &str, tenant: &str) -> Result<(), Refusal> {
    let this = &config.host_id;
    let req_host = token(this, "host id", host)?;
    if req_host != *this {
        return Err(invalid(
            this,
            format!("the request is addressed to host {req_host}"),
        ));
    }
    let tenant = token(this, "tenant", tenant)?;
    if tenant != config.tenant {
        return Err(invalid(
            this,
            format!(
                "the request is for tenant {tenant}, this host serves tenant {}",
                config.tenant
            ),
        ));
    }
    Ok(())
}

/// Refuses a request without an expiry or past it (`job` names it in the refusal).
pub fn check_expiry(
    config: &Config,
    expires_at_ms: u64,
    job: &str,
    now_ms: u64,
) -> Result<(), Refusal> {
    let host = &config.host_id;
    if expires_at_ms == 0 {
        return Err(Refusal::new(
            ErrorCode::Invalid,
            format!("host {host}: the request carries no expiry (expires_at_ms = 0)"),
        ));
    }
    if expires_at_ms < now_ms {
        return Err(Refusal::new(
            ErrorCode::Expired,
            format!(
                "host {host}: the request for job {} expired {} ms before it arrived",
                job.escape_debug(),
                now_ms - expires_at_ms
            ),
        ));
    }
    Ok(())
}

/// Checks an ExecRequest received on `…exec.<subject_user>` against this host and the clock.
pub fn order(
    req: pb::ExecRequest,
    subject_user: &str,
    headers: Option<&HeaderMap>,
    config: &Config,
    now_ms: u64,
) -> Result<Order, Refusal> {
    let host = &config.host_id;

    addressed_here(config, &req.host, &req.tenant)?;
    let job = token(host, "job id", &req.job_id)?;
    let user = token(host, "user", &req.user)?;
    if user.as_str() != subject_user {
        return Err(invalid(
            host,
            format!("the request names user {user} but came on the subject of user {subject_user}"),
        ));
    }
    check_expiry(config, req.expires_at_ms, job.as_str(), now_ms)?;
    let trace_id = if is_trace_id(&req.trace_id) {
        req.trace_id
    } else {
        headers
            .and_then(|h| h.get(headers::TRACEPARENT))
            .and_then(|v| trace_id_of(v.as_str()))
            .unwrap_or_default()
    };
    let run = match req.body {
        Some(pb::exec_request::Body::Run(run)) => run,
        Some(pb::exec_request::Body::File(request)) => {
            if request.op.is_none() {
                return Err(invalid(host, "the file request names no operation"));
            }
            let expires = req.expires_at_ms;
            return Ok(Order::File(FsSpec::new(
                job, user, trace_id, expires, request,
            )));
        }
        Some(pb::exec_request::Body::Grep(request)) => {
            let expires = req.expires_at_ms;
            return Ok(Order::Grep(FsSpec::new(
                job, user, trace_id, expires, request,
            )));
        }
        Some(pb::exec_request::Body::Facts(facts)) => {
            return Ok(Order::Facts(FactsSpec {
                job,
                user,
                trace_id,
                refresh: facts.refresh,
            }));
        }
        None => {
            return Err(invalid(
                host,
                "the request has no body this agent understands",
            ));
        }
    };

    if run.cmd.trim().is_empty() {
        return Err(invalid(host, "the command is empty"));
    }
    if run.cmd.len() > MAX_CMD_BYTES {
        return Err(invalid(
            host,
            format!(
                "the command is {} bytes long; the most is {MAX_CMD_BYTES}",
                run.cmd.len()
            ),
        ));
    }
    if run.cmd.contains('\0') {
        return Err(invalid(host, "the command contains a NUL byte"));
    }
    if run.title.len() > MAX_TITLE_BYTES {
        return Err(invalid(
            host,
            format!("the title is longer than {MAX_TITLE_BYTES} bytes"),
        ));
    }
    if run.cwd.len() > MAX_CWD_BYTES || run.cwd.contains('\0') {
        return Err(invalid(host, "the working directory is not a usable path"));
    }
    for (key, value) in &run.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return Err(invalid(
                host,
                format!(
                    "environment variable `{}` is not valid (empty, `=` or NUL)",
                    key.escape_debug()
                ),
            ));
        }
    }

    let timeout = if run.timeout_ms == 0 {
        config.default_timeout()
    } else {
        Duration::from_millis(run.timeout_ms).min(MAX_TIMEOUT)
    };
    let (cmd, argv) = exec_argv(host, config, run.cmd, run.argv, run.then_argv)?;

    Ok(Order::Run(RunSpec {
        job,
        user,
        cmd,
        argv,
        runbook: run.runbook,
        cwd: (!run.cwd.is_empty()).then(|| PathBuf::from(run.cwd)),
        env: run.env,
        timeout,
        bg: run.bg,
        inline_window: Duration::from_millis(run.inline_window_ms),
        inline_max_bytes: run.inline_max_bytes,
        title: run.title,
        trace_id,
        agent_instance: req.agent_instance,
        account: None,
    }))
}

/// The text the guard checks and the status shows, and the argv to execute (empty: run `cmd`
/// with the shell). An argv run's text is built here from its words, whatever `cmd` says.
fn exec_argv(
    host: &Token,
    config: &Config,
    cmd: String,
    argv: Vec<String>,
    then: Vec<String>,
) -> Result<(String, Vec<String>), Refusal> {
    if argv.is_empty() {
        if !then.is_empty() {
            return Err(invalid(host, "the request has a `then_argv` but no `argv`"));
        }
        return Ok((cmd, argv));
    }
    let words = argv.len() + then.len();
    let bytes: usize = argv.iter().chain(&then).map(|w| w.len() + 1).sum();
    if words > MAX_ARGV || bytes > MAX_CMD_BYTES {
        return Err(invalid(
            host,
            format!(
                "the argv has {words} words, {bytes} bytes; the most is {MAX_ARGV} words, {MAX_CMD_BYTES} bytes"
            ),
        ));
    }
    if argv.iter().chain(&then).any(|w| w.contains('\0')) {
        return Err(invalid(host, "an argv word contains a NUL byte"));
    }
    if argv[0].is_empty() || then.first().is_some_and(String::is_empty) {
        return Err(invalid(host, "the argv names no program"));
    }
    if then.is_empty() {
        return Ok((quote_words(&argv), argv));
    }
    let text = format!("{}; {}", quote_words(&argv), quote_words(&then));
    let mut exec = vec![
        config.shell.display().to_string(),
        "-c".to_string(),
        THEN_SCRIPT.to_string(),
        "runbook".to_string(),
        argv.len().to_string(),
    ];
    exec.extend(argv);
    exec.extend(then);
    Ok((text, exec))
}

/// `words` as shell words, each single-quoted unless plain: the guard parses this text into
/// exactly these words, and a listing shows what ran.
pub fn quote_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a ControlRequest against this host.
pub fn control_spec(req: pb::ControlRequest, config: &Config) -> Result<ControlSpec, Refusal> {
    let host = &config.host_id;
    addressed_here(config, &req.host, &req.tenant)?;
    let job = token(host, "job id", &req.job_id)?;
    let order = match req.body {
        Some(pb::control_request::Body::Kill(kill)) => ControlOrder::Kill {
            grace: if kill.grace_ms == 0 {
                config.kill_grace()
            } else {
                Duration::from_millis(kill.grace_ms).min(MAX_KILL_GRACE)
            },
        },
        Some(pb::control_request::Body::Query(pb::JobQuery {})) => ControlOrder::Query,
        None => {
            return Err(invalid(
                host,
                "the control request has no body this agent understands",
            ));
        }
    };
    if !req.user.is_empty() {
        token(host, "user", &req.user)?;
    }
    Ok(ControlSpec {
        job,
        user: req.user,
        order,
    })
}

fn is_trace_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.trim().split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    is_trace_id(trace).then(|| trace.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new("nats://127.0.0.1:4222", "web-1").expect("config")
    }

    fn request() -> pb::ExecRequest {
        pb::ExecRequest {
            tenant: "default".into(),
            host: "web-1".into(),
            job_id: "build-abc".into(),
            user: "alice".into(),
            expires_at_ms: 2_000,
            trace_id: String::new(),
            body: Some(pb::exec_request::Body::Run(pb::RunRequest {
                cmd: "echo hi".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn refuse(req: pb::ExecRequest, user: &str) -> Refusal {
        run_spec(req, user, None, &config(), 1_000).unwrap_err()
    }

    #[test]
    fn a_good_request_becomes_a_spec_with_defaults() {
        let spec = run_spec(request(), "alice", None, &config(), 1_000).expect("valid");
        assert_eq!(spec.job.as_str(), "build-abc");
        assert_eq!(spec.timeout, Duration::from_secs(3600));
        assert!(spec.cwd.is_none());
    }

    #[test]
    fn the_user_must_match_the_subject() {
        let r = refuse(request(), "mallory");
        assert_eq!(r.code, ErrorCode::Invalid);
        assert!(
            r.message.contains("web-1") && r.message.contains("mallory"),
            "{r:?}"
        );
    }

    #[test]
    fn another_host_or_bad_tokens_are_invalid() {
        let mut req = request();
        req.host = "web-2".into();
        assert!(refuse(req, "alice").message.contains("web-2"));
        let mut req = request();
        req.job_id = "a.b".into();
        assert_eq!(refuse(req, "alice").code, ErrorCode::Invalid);
    }

    #[test]
    fn an_expired_request_is_refused_as_expired() {
        let mut req = request();
        req.expires_at_ms = 999;
        assert_eq!(refuse(req, "alice").code, ErrorCode::Expired);
        let mut req = request();
        req.expires_at_ms = 0;
        assert_eq!(refuse(req, "alice").code, ErrorCode::Invalid);
    }

    #[test]
    fn a_file_request_is_checked_like_a_run_request() {
        let file = |op: Option<pb::file_request::Op>| {
            let mut req = request();
            req.body = Some(pb::exec_request::Body::File(pb::FileRequest { op }));
            req
        };
        let stat = Some(pb::file_request::Op::Stat(pb::FileStat {
            path: "/tmp/x".into(),
        }));
        let Ok(Order::File(spec)) = order(file(stat.clone()), "alice", None, &config(), 1_000)
        else {
            panic!("a file order");
        };
        assert_eq!((spec.user.as_str(), spec.expires_at_ms), ("alice", 2_000));
        let r = order(file(stat.clone()), "mallory", None, &config(), 1_000).unwrap_err();
        assert_eq!(r.code, ErrorCode::Invalid);
        let r = order(file(stat), "alice", None, &config(), 2_001).unwrap_err();
        assert_eq!(r.code, ErrorCode::Expired);
        let r = order(file(None), "alice", None, &config(), 1_000).unwrap_err();
        assert!(r.message.contains("no operation"), "{r:?}");
    }

    #[test]
    fn grep_and_facts_requests_become_orders_checked_like_the_others() {
        let mut req = request();
        req.body = Some(pb::exec_request::Body::Grep(pb::GrepRequest {
            paths: vec!["/var/log".into()],
            pattern: "ERROR".into(),
            ..Default::default()
        }));
        let Ok(Order::Grep(spec)) = order(req.clone(), "alice", None, &config(), 1_000) else {
            panic!("a grep order");
        };
        assert_eq!(
            (spec.request.pattern.as_str(), spec.expires_at_ms),
            ("ERROR", 2_000)
        );
        let r = order(req, "alice", None, &config(), 2_001).unwrap_err();
        assert_eq!(r.code, ErrorCode::Expired);

        let mut req = request();
        req.body = Some(pb::exec_request::Body::Facts(pb::FactsRequest {
            refresh: true,
        }));
        let Ok(Order::Facts(spec)) = order(req.clone(), "alice", None, &config(), 1_000) else {
            panic!("a facts order");
        };
        assert!(spec.refresh);
        req.host = "web-2".into();
        let r = order(req, "alice", None, &config(), 1_000).unwrap_err();
        assert_eq!(r.code, ErrorCode::Invalid);
    }

    #[test]
    fn an_argv_run_shows_and_guards_its_words_quoted() {
        let mut req = request();
        req.body = Some(pb::exec_request::Body::Run(pb::RunRequest {
            cmd: "whatever the sender says".into(),
            argv: vec!["echo".into(), "nginx.service; rm -rf /tmp/x".into()],
            ..Default::default()
        }));
        let spec = run_spec(req, "alice", None, &config(), 1_000).expect("valid");
        assert_eq!(spec.cmd, "echo 'nginx.service; rm -rf /tmp/x'");
        assert_eq!(spec.argv, ["echo", "nginx.service; rm -rf /tmp/x"]);
    }

    #[tokio::test]
    async fn two_steps_run_in_order_with_their_words_untouched() {
        let mut req = request();
        req.body = Some(pb::exec_request::Body::Run(pb::RunRequest {
            cmd: "x".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo one \"$0\"; exit 3".into(),
                "$(id)".into(),
            ],
            then_argv: vec![
                "printf".into(),
                "%s|".into(),
                "a b".into(),
                "${x}".into(),
                "'".into(),
            ],
            ..Default::default()
        }));
        let mut config = config();
        config.shell = "/bin/sh".into();
        let spec = run_spec(req, "alice", None, &config, 1_000).expect("valid");
        let out = tokio::process::Command::new(&spec.argv[0])
            .args(&spec.argv[1..])
            .output()
            .await
            .expect("runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "one $(id)\na b|${x}|'|"
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "the first step's failure is the job's"
        );
    }

    #[test]
    fn trace_id_comes_from_the_request_or_the_traceparent_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            headers::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let spec = run_spec(request(), "alice", Some(&headers), &config(), 1_000).expect("ok");
        assert_eq!(spec.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let mut req = request();
        req.trace_id = "0af7651916cd43dd8448eb211c80319c".into();
        let spec = run_spec(req, "alice", Some(&headers), &config(), 1_000).expect("ok");
        assert_eq!(spec.trace_id, "0af7651916cd43dd8448eb211c80319c");
    }
}
