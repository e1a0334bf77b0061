//! The audit-sink's Prometheus metrics: events stored, duplicates skipped, failed store attempts, and the audit lag (how long the oldest event of the last committed batch waited between being made and being stored). Registered in the process's registry (`execmesh_runtime::metrics`) on first use; served when `metrics_listen` is set.

use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

use execmesh_runtime::metrics::register;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

struct Metrics {
    stored: Counter,
    duplicates: Counter,
    store_failures: Counter,
    lag: Gauge<f64, AtomicU64>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        stored: Counter::default(),
        duplicates: Counter::default(),
        store_failures: Counter::default(),
        lag: Gauge::default(),
    };
    register(
        "audit_events_stored",
        "Audit events appended to the store",
        metrics.stored.clone(),
    );
    register(
        "audit_duplicates",
        "Audit events delivered again and skipped (already stored)",
        metrics.duplicates.clone(),
    );
    register(
        "audit_store_failures",
        "Attempts to store a batch that the store refused (each is retried)",
        metrics.store_failures.clone(),
    );
    register(
        "audit_lag_seconds",
        "Age of the oldest event of the last committed batch when it was committed",
        metrics.lag.clone(),
    );
    metrics
});

/// A batch was committed: `stored` new events, `duplicates` skipped, the oldest made at
/// `oldest_ms` (Unix ms).
pub fn committed(stored: usize, duplicates: usize, oldest_ms: Option<u64>) {
    METRICS.stored.inc_by(stored as u64);
    METRICS.duplicates.inc_by(duplicates as u64);
    if let Some(oldest) = oldest_ms {
        let lag_ms = execmesh_proto::now_ms().saturating_sub(oldest);
        METRICS.lag.set(lag_ms as f64 / 1000.0);
    }
}

/// A batch could not be stored (it will be tried again).
pub fn store_failed() {
    METRICS.store_failures.inc();
}
