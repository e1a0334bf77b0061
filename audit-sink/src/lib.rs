//! The execmesh audit-sink: stores every event of the AUDIT stream once, in a hash chain, and answers audit queries.
//!
//! [`run`] opens the store (SQLite by default, or PostgreSQL), connects to NATS, creates the
//! AUDIT stream if it is missing, consumes it with a durable pull consumer and serves the query
//! service until the shutdown token fires. [`verify`] and [`export`] work on the store alone.

pub mod chain;
pub mod config;
mod connection;
mod consumer;
mod metrics;
pub mod record;
pub mod service;
pub mod store;

use std::io::Write;
use std::sync::Arc;

use execmesh_proto::identities::{LiveIdentities, OPEN_MESH_WARNING};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::{Cli, Command, Config, ConfigError};
pub use store::{Filter, Store, StoreConfig, StoreError, VerifyReport};

/// Why the audit-sink could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The first NATS connection failed: the URL or the file and the reason.
    #[error(transparent)]
    Nats(#[from] execmesh_runtime::nats_connection::ConnectError),
    #[error("cannot create or open {what}: {source}")]
    Provision {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot start the audit query service: {0}")]
    Service(String),
    #[error("cannot write the export: {0}")]
    Write(#[from] std::io::Error),
    #[error("there is no audit store at {0} (check --sqlite-path / --config)")]
    NoStore(std::path::PathBuf),
    /// The identities file cannot be used.
    #[error(transparent)]
    Identities(#[from] execmesh_proto::identities::IdentitiesError),
    /// `/metrics` cannot be served where configured.
    #[error(transparent)]
    Metrics(#[from] execmesh_runtime::metrics::MetricsError),
}

/// Runs the sink until `shutdown` is cancelled: the batch in hand is committed and acknowledged,
/// answers in flight are sent, then it returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), SinkError> {
    info!(store = %store_name(&config.store), nats_url = %config.nats_url,
          consumer = %config.consumer, "audit-sink starting");
    let identities = match &config.identities_file {
        Some(path) => {
            let live = Arc::new(LiveIdentities::load(path)?);
            tokio::spawn(Arc::clone(&live).watch(shutdown.clone()));
            Some(live)
        }
        None => {
            warn!(
                "{OPEN_MESH_WARNING} (This audit-sink stores every event without a signer; \
                   `verify` reports them all.)"
            );
            None
        }
    };
    if let execmesh_runtime::telemetry::MetricsAt::Listen(addr) = config.metrics {
        let listener = execmesh_runtime::metrics::bind(addr).await?;
        tokio::spawn(execmesh_runtime::metrics::serve(listener, shutdown.clone()));
    }
    let store = Arc::new(Store::open(&config.store).await?);
    let client = connection::connect(&config).await?;
    let js = async_nats::jetstream::new(client.clone());
    let stream = consumer::ensure_stream(&js, config.replicas).await?;
    let consumer =
        consumer::Consumer::create(&stream, Arc::clone(&store), &config, identities).await?;
    let service =
        service::Service::start(&client, Arc::clone(&store), config.query_max_limit).await?;
    info!("ready: consuming AUDIT and answering audit queries");

    let consuming = tokio::spawn(consumer.run(shutdown.clone()));
    service.run(shutdown.clone()).await;
    let _ = consuming.await;
    // The last acknowledgements are queued publishes: send them before leaving.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.flush()).await;
    info!("audit-sink stopped");
    Ok(())
}

/// Recomputes the chain of the configured store.
pub async fn verify(config: &Config) -> Result<VerifyReport, SinkError> {
    let store = open_existing(&config.store).await?;
    Ok(store.verify().await?)
}

/// Writes every record matching `filter` (its cursor and limit are ignored), oldest first, as
/// JSON lines to `out`; returns how many.
pub async fn export(
    config: &Config,
    filter: Filter,
    out: &mut impl Write,
) -> Result<u64, SinkError> {
    let store = open_existing(&config.store).await?;
    let mut filter = Filter {
        limit: store::MAX_PAGE,
        newest_first: false,
        after_seq: None,
        ..filter
    };
    let mut written = 0u64;
    loop {
        let page = store.query(&filter).await?;
        for record in &page.records {
            serde_json::to_writer(&mut *out, &record.to_json()).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
            written += 1;
        }
        match page.records.last() {
            Some(last) if page.next_cursor.is_some() => filter.after_seq = Some(last.row.seq),
            _ => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// Opens a store that must exist already: `verify` and `export` of a mistyped SQLite path
/// should fail, not report an empty store they just created.
async fn open_existing(config: &StoreConfig) -> Result<Store, SinkError> {
    if let StoreConfig::Sqlite(path) = config
        && !path.is_file()
    {
        return Err(SinkError::NoStore(path.clone()));
    }
    Ok(Store::open(config).await?)
}

/// The store, for logs: `sqlite:<path>` or `postgres` (the URL may hold a password).
fn store_name(store: &StoreConfig) -> String {
    match store {
        StoreConfig::Sqlite(path) => format!("sqlite:{}", path.display()),
        StoreConfig::Postgres(_) => "postgres".to_string(),
    }
}
