//! The SQLite store: one file in WAL mode, a writer connection for appends and a reader connection for queries and verification.
//!
//! SQLite calls block, so each runs on the blocking pool. The writer commits with
//! `synchronous = FULL`: the sink acknowledges events to JetStream after the commit, so a
//! committed batch must survive a power cut, not only a crash of the process.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use super::{Appended, Filter, Param, StoreError, query_sql, unsigned};
use crate::chain::{GENESIS, Row};
use crate::record::Stored;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    seq        INTEGER PRIMARY KEY,
    event_id   TEXT    NOT NULL UNIQUE,
    time_ms    INTEGER NOT NULL,
    tenant     TEXT    NOT NULL,
    source     TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    user_name  TEXT    NOT NULL,
    host       TEXT    NOT NULL,
    job_id     TEXT    NOT NULL,
    tool       TEXT    NOT NULL,
    trace_id   TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    signer     TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_events_time  ON audit_events (time_ms);
CREATE INDEX IF NOT EXISTS audit_events_trace ON audit_events (trace_id);
CREATE INDEX IF NOT EXISTS audit_events_job   ON audit_events (job_id);
CREATE INDEX IF NOT EXISTS audit_events_user  ON audit_events (user_name, time_ms);
CREATE INDEX IF NOT EXISTS audit_events_host  ON audit_events (host, time_ms);
";

const INSERT: &str = "INSERT INTO audit_events (seq, event_id, time_ms, tenant, source, kind, \
     user_name, host, job_id, tool, trace_id, outcome, payload, prev_hash, hash, signer) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) \
     ON CONFLICT (event_id) DO NOTHING";

/// Adds the `signer` column to a store created before signers were recorded (its rows keep
/// an empty signer, which hashes as they always did).
fn add_signer_column(conn: &Connection) -> Result<(), StoreError> {
    let has: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('audit_events') WHERE name = 'signer'")?
        .exists([])?;
    if !has {
        conn.execute_batch("ALTER TABLE audit_events ADD COLUMN signer TEXT NOT NULL DEFAULT ''")?;
    }
    Ok(())
}

/// How long a connection waits for another process's write lock (a second sink on the same
/// file, an operator's `sqlite3` session) before the batch fails and is retried.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A SQLite store.
pub struct SqliteStore {
    /// Appends; one at a time.
    writer: Arc<Mutex<Connection>>,
    /// Queries and verification, which WAL mode lets run beside appends.
    reader: Arc<Mutex<Connection>>,
}

// === impl SqliteStore ===

impl SqliteStore {
    /// Opens (creating if missing) the file at `path` and its schema.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = path.to_path_buf();
        blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            let writer = connect(&path, OpenFlags::default())?;
            writer.pragma_update(None, "journal_mode", "WAL")?;
            writer.pragma_update(None, "synchronous", "FULL")?;
            writer.execute_batch(SCHEMA)?;
            add_signer_column(&writer)?;
            let reader = connect(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            Ok(SqliteStore {
                writer: Arc::new(Mutex::new(writer)),
                reader: Arc::new(Mutex::new(reader)),
            })
        })
        .await
    }

    pub async fn append(&self, rows: Vec<Row>) -> Result<Appended, StoreError> {
        let writer = Arc::clone(&self.writer);
        blocking(move || {
            let mut conn = lock(&writer)?;
            // IMMEDIATE takes the write lock now, so the head read below is the head the
            // inserts extend, also with a second process on the same file.
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (head_seq, head_hash) = tx
                .query_row(
                    "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()?
                .unwrap_or((0, GENESIS.to_string()));
            let head_seq = unsigned(head_seq, 0, "seq")?;
            let existing = {
                let mut stmt =
                    tx.prepare_cached("SELECT 1 FROM audit_events WHERE event_id = ?1")?;
                let mut existing = HashSet::new();
                for row in &rows {
                    if stmt.exists([&row.event_id])? {
                        existing.insert(row.event_id.clone());
                    }
                }
                existing
            };
            let (chained, duplicates) = super::chain_new(head_seq, &head_hash, rows, &existing);
            {
                let mut insert = tx.prepare_cached(INSERT)?;
                for s in &chained {
                    let r = &s.row;
                    let inserted = insert.execute(params![
                        r.seq as i64,
                        r.event_id,
                        r.time_ms as i64,
                        r.tenant,
                        r.source,
                        r.kind,
                        r.user,
                        r.host,
                        r.job_id,
                        r.tool,
                        r.trace_id,
                        r.outcome,
                        r.payload,
                        s.prev_hash,
                        s.hash,
                        r.signer,
                    ])?;
                    if inserted != 1 {
                        // Impossible under the write lock; never leave a gap in the chain.
                        return Err(StoreError::Conflict(format!(
                            "event {} appeared during the batch",
                            r.event_id
                        )));
                    }
                }
            }
            tx.commit()?;
            Ok(Appended {
                stored: chained.len(),
                duplicates,
                head_seq: chained.last().map_or(head_seq, |s| s.row.seq),
            })
        })
        .await
    }

    /// Up to `limit` records matching `filter`, and the head seq.
    pub async fn query(
        &self,
        filter: &Filter,
        limit: usize,
    ) -> Result<(Vec<Stored>, u64), StoreError> {
        let (sql, params) = query_sql(filter, limit, |n| format!("?{n}"));
        let reader = Arc::clone(&self.reader);
        blocking(move || {
            let conn = lock(&reader)?;
            let values: Vec<rusqlite::types::Value> = params.into_iter().map(value).collect();
            let records = select(&conn, &sql, rusqlite::params_from_iter(values))?;
            let head: i64 =
                conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_events", [], |r| {
                    r.get(0)
                })?;
            Ok((records, unsigned(head, 0, "seq")?))
        })
        .await
    }

    /// Up to `limit` records after `after_seq`, in seq order.
    pub async fn range(&self, after_seq: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let reader = Arc::clone(&self.reader);
        blocking(move || {
            let conn = lock(&reader)?;
            let sql = format!(
                "SELECT {} FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT {limit}",
                super::COLUMNS
            );
            select(&conn, &sql, [after_seq as i64])
        })
        .await
    }
}

fn connect(path: &PathBuf, flags: OpenFlags) -> Result<Connection, StoreError> {
    let conn =
        Connection::open_with_flags(path, flags).map_err(|source| StoreError::OpenSqlite {
            path: path.clone(),
            source,
        })?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn value(param: Param) -> rusqlite::types::Value {
    match param {
        Param::Int(v) => rusqlite::types::Value::Integer(v),
        Param::Text(v) => rusqlite::types::Value::Text(v),
    }
}

fn select(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Stored>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let seq = unsigned(r.get(0)?, 0, "seq")?;
        out.push(Stored {
            row: Row {
                seq,
                event_id: r.get(1)?,
                time_ms: unsigned(r.get(2)?, seq, "time_ms")?,
                tenant: r.get(3)?,
                source: r.get(4)?,
                kind: r.get(5)?,
                user: r.get(6)?,
                host: r.get(7)?,
                job_id: r.get(8)?,
                tool: r.get(9)?,
                trace_id: r.get(10)?,
                outcome: r.get(11)?,
                payload: r.get(12)?,
                signer: r.get(15)?,
            },
            prev_hash: r.get(13)?,
            hash: r.get(14)?,
        });
    }
    Ok(out)
}

fn lock(conn: &Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>, StoreError> {
    conn.lock()
        .map_err(|_| StoreError::Worker("a SQLite call panicked earlier".into()))
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Worker(e.to_string()))?
}
