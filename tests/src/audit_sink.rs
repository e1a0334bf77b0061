//! The real `execmesh-audit-sink` binary as a test's audit store: spawned on SQLite or PostgreSQL, awaited until it answers queries, killed, restarted, queried, verified and tampered with.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use bytes::Bytes;
use execmesh_proto::{Token, pb, subject};
use prost::Message as _;
use serde_json::Value;
use tempfile::TempDir;

use crate::process::{ServiceProcess, service_command};
use crate::{Nats, Postgres};

/// Name of the sink binary in the cargo target directory.
pub const SINK_BINARY: &str = "execmesh-audit-sink";
/// How long a sink may take from spawn to its first answered query.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a sink stores its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the sink's temp dir.
    Sqlite,
    /// A PostgreSQL database (connection string).
    Postgres(String),
}

/// How to run one audit-sink.
///
/// ```no_run
/// # async fn scenario(nats: &execmesh_tests::Nats, pg: &execmesh_tests::Postgres) {
/// # use execmesh_tests::AuditSink;
/// let sink = AuditSink::new(nats).start().await; // SQLite
/// let sink = AuditSink::new(nats).postgres(pg).start().await;
/// # }
/// ```
#[derive(Clone)]
pub struct AuditSink {
    /// URL of the test's nats-server.
    nats_url: String,
    /// The server's TLS files, when it runs in TLS mode.
    nats_tls: Option<crate::NatsTls>,
    backend: Backend,
    /// `--nats-nkey-seed` (the test mesh's audit-sink identity unless a test says otherwise).
    nkey_seed: Option<PathBuf>,
    /// `--identities-file`: the identities event signatures are checked against.
    identities_file: Option<PathBuf>,
    /// Further command-line arguments, in order.
    args: Vec<String>,
}

/// An audit-sink process started by [`AuditSink::start`]; killed on drop. Its temp dir (the
/// SQLite file and the logs) goes too, unless the test is failing: then it is kept and named.
pub struct RunningAudit {
    /// The process.
    process: ServiceProcess,
    spec: AuditSink,
    dir: TempDir,
    /// Starts so far (one log file per start).
    starts: usize,
    /// The harness's own NATS connection, for queries.
    client: async_nats::Client,
    tenant: Token,
}

// === impl AuditSink ===

impl AuditSink {
    /// A sink on `nats`, storing in SQLite.
    pub fn new(nats: &Nats) -> Self {
        Self {
            nats_url: nats.url(),
            nats_tls: nats.tls().cloned(),
            backend: Backend::Sqlite,
            nkey_seed: Some(nats.identities().seed_file("audit-sink")),
            identities_file: Some(nats.identities().identities_file()),
            args: crate::agent::replicas_args(nats),
        }
    }

    /// Connects with the seed at `path` instead of the test mesh's audit-sink identity.
    pub fn nkey_seed(mut self, path: impl Into<PathBuf>) -> Self {
        self.nkey_seed = Some(path.into());
        self
    }

    /// Checks event signatures against the identities file at `path` instead of the test
    /// mesh's; `None` checks nothing.
    pub fn identities_file(mut self, path: Option<PathBuf>) -> Self {
        self.identities_file = path;
        self
    }

    /// Stores in a SQLite file (the default).
    pub fn sqlite(mut self) -> Self {
        self.backend = Backend::Sqlite;
        self
    }

    /// Stores in `pg`'s `postgres` database.
    pub fn postgres(mut self, pg: &Postgres) -> Self {
        self.backend = Backend::Postgres(pg.url());
        self
    }

    /// Stores in the given backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Adds `flag value`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Spawns the sink and waits until it answers a query.
    pub async fn start(self) -> RunningAudit {
        crate::init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-audit-")
            .tempdir()
            .expect("create a temp dir for the audit-sink");
        let client = crate::nats::connect(&self.nats_url, self.nats_tls.as_ref()).await;
        let mut sink = RunningAudit {
            process: ServiceProcess::new("audit-sink"),
            spec: self,
            dir,
            starts: 0,
            client,
            tenant: Token::parse("tenant", subject::DEFAULT_TENANT).expect("a valid tenant"),
        };
        sink.launch().await;
        sink
    }
}

// === impl RunningAudit ===

impl RunningAudit {
    /// The backend the records are stored in.
    pub fn backend(&self) -> &Backend {
        &self.spec.backend
    }

    /// The SQLite file (also when the sink runs on PostgreSQL, where it is unused).
    pub fn sqlite_path(&self) -> PathBuf {
        self.dir.path().join("audit.db")
    }

    /// The log file of the current (or last) start.
    pub fn log_path(&self) -> PathBuf {
        self.dir
            .path()
            .join(format!("audit-sink-{}.log", self.starts))
    }

    /// The last `lines` lines of the current start's log.
    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.log_path(), lines)
    }

    /// The pid of the running sink. Panics if it is stopped.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The exit status if the sink has exited by itself (or was stopped).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// SIGKILL and reap: whatever the sink had not committed and acknowledged is redelivered
    /// to the next start.
    pub async fn kill_hard(&mut self) -> ExitStatus {
        self.process.kill_hard().await
    }

    /// SIGTERM, and waits for a graceful exit.
    pub async fn stop(&mut self) -> ExitStatus {
        self.process.stop(&self.log_path()).await
    }

    /// Starts the sink again with the same store (stopping it gracefully first if it runs) and
    /// waits until it answers queries.
    pub async fn restart(&mut self) {
        if self.process.is_running() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// One page of `query` in the default tenant. Panics if the sink answers with an error.
    pub async fn query(&self, query: pb::AuditQuery) -> pb::AuditPage {
        match self.try_query(query).await {
            Ok(page) => page,
            Err(e) => panic!("audit query failed: {e}"),
        }
    }

    /// One page of `query`, or the sink's error (or the request's failure) in words.
    pub async fn try_query(&self, query: pb::AuditQuery) -> Result<pb::AuditPage, String> {
        let subject = subject::audit_query(&self.tenant);
        let request = async_nats::Request::new()
            .payload(Bytes::from(query.encode_to_vec()))
            .timeout(Some(QUERY_TIMEOUT));
        let reply = self
            .client
            .send_request(subject, request)
            .await
            .map_err(|e| e.to_string())?;
        let reply = pb::AuditQueryReply::decode(reply.payload).map_err(|e| e.to_string())?;
        match reply.body {
            Some(pb::audit_query_reply::Body::Page(page)) => Ok(page),
            Some(pb::audit_query_reply::Body::Error(e)) => Err(e),
            None => Err("empty reply".to_string()),
        }
    }

    /// Every record matching `query`, following the cursor page by page.
    pub async fn query_all(&self, mut query: pb::AuditQuery) -> Vec<pb::AuditRecord> {
        let mut out = Vec::new();
        loop {
            let page = self.query(query.clone()).await;
            out.extend(page.records);
            if page.next_cursor.is_empty() {
                return out;
            }
            query.cursor = page.next_cursor;
        }
    }

    /// The newest stored seq: how many records the store holds.
    pub async fn head_seq(&self) -> u64 {
        self.query(pb::AuditQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .head_seq
    }

    /// The sink's `verify` over NATS.
    pub async fn verify_over_nats(&self) -> pb::AuditVerifyReply {
        let reply = self
            .client
            .request(
                subject::audit_verify(&self.tenant),
                Bytes::from(pb::AuditVerifyRequest::default().encode_to_vec()),
            )
            .await
            .expect("the audit-sink answers verify requests");
        pb::AuditVerifyReply::decode(reply.payload).expect("a well-formed AuditVerifyReply")
    }

    /// Runs `execmesh-audit-sink verify` on this sink's store: its exit status and output.
    pub fn verify(&self) -> (ExitStatus, String) {
        self.subcommand(&["verify"])
    }

    /// Runs `execmesh-audit-sink export --jsonl` with `filters` (`["--user", "alice"]`) and
    /// returns the JSON lines. Panics if it fails.
    pub fn export(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["export", "--jsonl"];
        args.extend_from_slice(filters);
        let (status, out) = self.subcommand(&args);
        assert!(
            status.success(),
            "export {filters:?} failed ({status}):\n{out}"
        );
        out.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l}: {e}")))
            .collect()
    }

    /// Runs SQL against the store directly, as someone with access to the database would (to
    /// alter or delete stored records).
    pub async fn execute_sql(&self, sql: &str) {
        match &self.spec.backend {
            Backend::Sqlite => {
                let conn = rusqlite::Connection::open(self.sqlite_path())
                    .unwrap_or_else(|e| panic!("open {}: {e}", self.sqlite_path().display()));
                conn.busy_timeout(Duration::from_secs(10))
                    .expect("set a busy timeout");
                conn.execute_batch(sql)
                    .unwrap_or_else(|e| panic!("SQLite `{sql}`: {e}"));
            }
            Backend::Postgres(url) => {
                let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|e| panic!("connect to PostgreSQL: {e}"));
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                client
                    .batch_execute(sql)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL `{sql}`: {e}"));
            }
        }
    }

    /// Runs the sink binary with this sink's store settings and `args`; stdout and stderr
    /// together.
    fn subcommand(&self, args: &[&str]) -> (ExitStatus, String) {
        let output = self
            .spec
            .command(self.dir.path())
            .args(args)
            .output()
            .expect("run execmesh-audit-sink");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        (output.status, text)
    }

    async fn launch(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let mut command = self.spec.command(self.dir.path());
        command.arg("serve");
        self.process.spawn(command, &log);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let probe = pb::AuditQuery {
                limit: 1,
                ..Default::default()
            };
            if self.try_query(probe).await.is_ok() {
                return;
            }
            self.process.assert_waiting(
                deadline,
                &log,
                format_args!("did not answer a query within {READY_TIMEOUT:?}"),
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl AuditSink {
    /// The sink binary with NATS and store settings (and no inherited `EXECMESH_*`).
    fn command(&self, dir: &std::path::Path) -> Command {
        let mut command = service_command(SINK_BINARY, dir);
        command.arg("--nats-url").arg(&self.nats_url);
        if let Some(tls) = &self.nats_tls {
            command.args(tls.flags());
        }
        if let Some(seed) = &self.nkey_seed {
            command.arg("--nats-nkey-seed").arg(seed);
        }
        if let Some(file) = &self.identities_file {
            command.arg("--identities-file").arg(file);
        }
        match &self.backend {
            Backend::Sqlite => command
                .args(["--store", "sqlite", "--sqlite-path"])
                .arg(dir.join("audit.db")),
            Backend::Postgres(url) => command
                .args(["--store", "postgres", "--postgres-url"])
                .arg(url),
        };
        command.args(&self.args);
        command
    }
}

impl Drop for RunningAudit {
    fn drop(&mut self) {
        self.process.discard_keeping_logs(&mut self.dir);
    }
}
