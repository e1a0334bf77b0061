//! Prometheus metrics of every service: the process's one registry, the text exposition `/metrics` serves (on a listener of its own, or merged into a service's router), and the metric every service shares (NATS reconnects).
//!
//! Metrics are registered once per process by the module that updates them (a `LazyLock` of its
//! own metrics that registers them on first use); labels are small closed sets (tools, outcomes,
//! statuses), never ids or user input.

use std::sync::{LazyLock, Mutex};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Metric, Registry};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// The process's registry; every metric's name gets the `execmesh_` prefix.
static REGISTRY: LazyLock<Mutex<Registry>> =
    LazyLock::new(|| Mutex::new(Registry::with_prefix("execmesh")));

/// Registers `metric` as `execmesh_<name>` (counters get `_total`) with its `help`.
pub fn register(name: &str, help: &str, metric: impl Metric) {
    if let Ok(mut registry) = REGISTRY.lock() {
        registry.register(name, help, metric);
    }
}

/// The registry in the Prometheus text format (`/metrics`'s body).
pub fn render() -> String {
    let mut text = String::new();
    if let Ok(registry) = REGISTRY.lock()
        && let Err(e) = encode(&mut text, &registry)
    {
        warn!(error = %e, "encoding the metrics failed");
    }
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The router answering `GET /metrics`, to serve alone or merge into a service's own.
pub fn router() -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render()) }),
    )
}

/// What [`serve`] logs, followed by the URL it serves at.
pub const SERVING: &str = "serving metrics at ";

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{SERVING}http://{addr}/metrics");
    }
    if let Err(e) = axum::serve(listener, router())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        warn!(error = %e, "the metrics listener failed");
    }
}

/// Binds `addr` for [`serve`], naming the address when it cannot.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Why metrics cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Lost NATS connections, each of which starts a reconnect: `execmesh_nats_reconnects_total`.
pub static NATS_RECONNECTS: LazyLock<Counter> = LazyLock::new(|| {
    let counter = Counter::default();
    register(
        "nats_reconnects",
        "NATS connections lost (each starts a reconnect)",
        counter.clone(),
    );
    counter
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_metrics_render_as_prometheus_text() {
        NATS_RECONNECTS.inc();
        let text = render();
        assert!(
            text.contains("# TYPE execmesh_nats_reconnects counter"),
            "{text}"
        );
        assert!(text.contains("execmesh_nats_reconnects_total "), "{text}");
    }
}
