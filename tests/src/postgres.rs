//! A real PostgreSQL server for one test: `initdb` into a temp dir, `postgres` on a private unix socket, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` system user (created by Debian's package) through `setpriv`, which also gives it
//! `PR_SET_PDEATHSIG` after the switch: a killed test process takes its server with it. The
//! server listens on no TCP port at all, only on a socket in its own directory, so parallel
//! tests never compete for a port.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ChildProcess, log_tail};

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a fast shutdown may take before the server is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The superuser `initdb` creates (trust authentication over the private socket).
pub const SUPERUSER: &str = "execmesh";
/// The port number only names the socket file (`.s.PGSQL.5432`) in the private directory.
const SOCKET_PORT: u16 = 5432;

/// A PostgreSQL server private to one test.
///
/// ```no_run
/// # async fn scenario() {
/// # use execmesh_tests::Postgres;
/// let pg = Postgres::start().await;
/// let client = pg.connect().await;
/// client.batch_execute("SELECT 1").await.unwrap();
/// # }
/// ```
pub struct Postgres {
    /// `data/` (the cluster), `run/` (the socket), and the server log.
    dir: TempDir,
    /// The postmaster; `None` once stopped.
    server: Option<ChildProcess>,
}

/// Options for a [`Postgres`] server.
#[derive(Debug, Default)]
pub struct PostgresBuilder {
    /// Keep `fsync` on (as in production), for benchmarks; tests turn it off for speed.
    durable: bool,
}

// === impl PostgresBuilder ===

impl PostgresBuilder {
    /// Keeps PostgreSQL's durability settings (fsync, full page writes) as in production.
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Creates the cluster and starts the server; panics with its log if it does not come up.
    pub async fn start(self) -> Postgres {
        crate::init_tracing();
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("execmesh-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL");
        let data = dir.path().join("data");
        let run = dir.path().join("run");
        std::fs::create_dir(&run).expect("create the socket directory");
        hand_over(dir.path());
        hand_over(&run);

        let log = dir.path().join("initdb.log");
        let mut initdb = cluster_command(&bin.join("initdb"), dir.path(), &data);
        initdb
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        let mut child = ChildProcess::spawn("initdb", initdb, &log)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("initdb").display()));
        match child.wait_timeout(START_TIMEOUT).await {
            Some(status) if status.success() => {}
            other => panic!(
                "initdb failed ({other:?}); log {}:\n{}",
                log.display(),
                log_tail(&log, 40)
            ),
        }

        let log = dir.path().join("postgres.log");
        let mut postgres = cluster_command(&bin.join("postgres"), dir.path(), &data);
        postgres
            .arg("-k")
            .arg(&run)
            .args(["-p", &SOCKET_PORT.to_string()])
            .args(["-c", "listen_addresses="]);
        if !self.durable {
            postgres.args(["-c", "fsync=off", "-c", "full_page_writes=off"]);
        }
        let server = ChildProcess::spawn("postgres", postgres, &log)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.join("postgres").display()));
        let mut pg = Postgres {
            dir,
            server: Some(server),
        };
        pg.wait_ready().await;
        pg
    }
}

// === impl Postgres ===

impl Postgres {
    /// A server with test settings (fsync off).
    pub async fn start() -> Postgres {
        Self::builder().start().await
    }

    /// A server with more options.
    pub fn builder() -> PostgresBuilder {
        PostgresBuilder::default()
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A libpq-style connection string for database `postgres` as the superuser.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// A connection string for `database`.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "host={} port={SOCKET_PORT} user={SUPERUSER} dbname={database}",
            self.socket_dir().display()
        )
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A connection to database `postgres` (for a test to look at or change what is stored).
    pub async fn connect(&self) -> tokio_postgres::Client {
        self.try_connect(&self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL: {e}"))
    }

    async fn try_connect(
        &self,
        url: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let url = self.url();
        loop {
            if self.try_connect(&url).await.is_ok() {
                return;
            }
            let server = self.server.as_mut().expect("the server was just started");
            server.check_starting(deadline, START_TIMEOUT);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the backends exit,
        // and only then does the postmaster; the temp dir can go after that.
        server.signal(Signal::SIGINT);
        let deadline = std::time::Instant::now() + STOP_GRACE;
        while server.exited().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(server);
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("postgres: files kept in {}", self.dir.path().display());
        }
    }
}

/// The directory with `initdb` and `postgres`: `EXECMESH_PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian keeps them off `PATH`), else `PATH`.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        find_bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL not found (EXECMESH_PG_BIN, /usr/lib/postgresql/*/bin, PATH). Run the \
                 test command `tests/run.sh`, which installs it with apt"
            )
        })
    })
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("EXECMESH_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?).find(|dir| dir.join("initdb").is_file())
}

/// The `postgres` system user's uid and gid, when the tests run as root (and must switch).
fn server_user() -> Option<(nix::unistd::Uid, nix::unistd::Gid)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "the tests run as root, which PostgreSQL refuses, and there is no `postgres` user \
                 to run it as; install PostgreSQL with apt (tests/run.sh does) or run as another user"
            )
        });
    Some((user.uid, user.gid))
}

/// Gives `path` to the server user (nothing to do when the tests do not run as root).
fn hand_over(path: &Path) {
    if let Some((uid, gid)) = server_user() {
        nix::unistd::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// `program`, run as the server user when the tests run as root.
/// `program` (initdb, postgres) run as the server user in `dir` on the cluster in `data`.
fn cluster_command(program: &Path, dir: &Path, data: &Path) -> Command {
    let mut command = as_server_user(program);
    command.current_dir(dir).arg("-D").arg(data);
    command
}

fn as_server_user(program: &Path) -> Command {
    match server_user() {
        Some(_) => {
            let mut command = Command::new("setpriv");
            command
                .args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
                // The credential switch clears the parent-death signal; set it again after it.
                .args(["--pdeathsig=KILL", "--"])
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}
