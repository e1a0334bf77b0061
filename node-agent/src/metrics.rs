//! The agent's Prometheus metrics: jobs running now and output bytes published to MESH_OUT by stream. Registered in the process's registry (`execmesh_runtime::metrics`) on first use; served when `metrics_listen` is set.

use std::sync::LazyLock;

use execmesh_runtime::metrics::register;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamLabel {
    /// `stdout`, `stderr`, or `agent` (the agent's own markers).
    stream: &'static str,
}

struct Metrics {
    running: Gauge,
    output_bytes: Family<StreamLabel, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let metrics = Metrics {
        running: Gauge::default(),
        output_bytes: Family::default(),
    };
    register(
        "jobs_running",
        "Jobs running on this host now",
        metrics.running.clone(),
    );
    register(
        "output_bytes",
        "Bytes of job output published to MESH_OUT, by stream",
        metrics.output_bytes.clone(),
    );
    metrics
});

/// A job started (`1`) or ended (`-1`).
pub fn running(change: i64) {
    METRICS.running.inc_by(change);
}

/// `bytes` of output of `stream` were published.
pub fn output(stream: &'static str, bytes: usize) {
    METRICS
        .output_bytes
        .get_or_create(&StreamLabel { stream })
        .inc_by(bytes as u64);
}
