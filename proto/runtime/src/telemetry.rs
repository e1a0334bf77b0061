//! Traces out of every service: the OTLP settings each flattens into its own, the exporter (gRPC or HTTP/protobuf, batched on the service's runtime behind a bounded queue), the subscriber that carries both the log lines and the spans, and W3C context in and out of HTTP headers, NATS headers and MCP `_meta`.
//!
//! Off unless an endpoint is configured (`otlp_endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`): then no exporter task
//! runs and no span is built for export. On, spans end into a queue of at most `otlp_queue`
//! spans that a task on the service's runtime exports in batches; a full queue drops spans,
//! never blocks a call. [`Telemetry::shutdown`] flushes what is queued.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{BatchConfigBuilder, SdkTracerProvider};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Spans that may wait for export when `otlp_queue` is not set.
pub const DEFAULT_QUEUE: usize = 2048;
/// Spans sent in one export request.
const BATCH: usize = 512;

/// The telemetry settings every service takes, declared once: one flag, one `EXECMESH_…`
/// variable and one config-file key each, flattened into each service's settings.
#[derive(Debug, Default, Clone, PartialEq, clap::Args, serde::Deserialize)]
pub struct TelemetrySettings {
    /// OTLP endpoint to export traces to (`http://collector:4317` for gRPC,
    /// `http://collector:4318` for HTTP/protobuf, which appends `/v1/traces`), or `off`.
    /// Unset: the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`;
    /// neither set, traces are not exported [default: off].
    #[arg(
        long,
        global = true,
        env = "EXECMESH_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http/protobuf`. Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` /
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` [default: grpc].
    #[arg(
        long,
        global = true,
        env = "EXECMESH_OTLP_PROTOCOL",
        value_name = "PROTOCOL"
    )]
    pub otlp_protocol: Option<String>,
    /// Most finished spans waiting for export; beyond, new ones are dropped [default: 2048].
    #[arg(long, global = true, env = "EXECMESH_OTLP_QUEUE", value_name = "SPANS")]
    pub otlp_queue: Option<usize>,
    /// Address to serve Prometheus `/metrics` on (`host:port`), or `off`. The gateway serves
    /// it on its MCP listener when unset; the agent and the audit-sink serve none [default:
    /// gateway: its MCP listener; others: off].
    #[arg(
        long,
        global = true,
        env = "EXECMESH_METRICS_LISTEN",
        value_name = "ADDR"
    )]
    pub metrics_listen: Option<String>,
}

/// Where a service serves `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAt {
    Off,
    /// On the service's own HTTP listener (the gateway's MCP listener).
    Shared,
    /// On a listener of its own.
    Listen(std::net::SocketAddr),
}

// === impl TelemetrySettings ===

impl TelemetrySettings {
    /// Each key from `self` when set there, else from `under` (flags and environment over the
    /// file).
    pub fn or(self, under: Self) -> Self {
        Self {
            otlp_endpoint: self.otlp_endpoint.or(under.otlp_endpoint),
            otlp_protocol: self.otlp_protocol.or(under.otlp_protocol),
            otlp_queue: self.otlp_queue.or(under.otlp_queue),
            metrics_listen: self.metrics_listen.or(under.metrics_listen),
        }
    }

    /// Where `/metrics` is served: `metrics_listen`, else `unset`; a bad value is pushed to
    /// `problems`.
    pub fn metrics(&self, unset: MetricsAt, problems: &mut Vec<String>) -> MetricsAt {
        match self.metrics_listen.as_deref().map(str::trim) {
            None => unset,
            Some("" | "off") => MetricsAt::Off,
            Some(text) => match text.parse() {
                Ok(addr) => MetricsAt::Listen(addr),
                Err(e) => {
                    problems.push(format!(
                        "metrics_listen `{text}` is not an address (host:port, or `off`): {e}"
                    ));
                    MetricsAt::Off
                }
            },
        }
    }

    /// The export these settings ask for, with the standard `OTEL_*` variables read through
    /// `env`; each bad value is pushed to `problems`.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> Option<Export> {
        let set = |key: &str| env(key).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = match self.otlp_endpoint.as_deref().map(str::trim) {
            Some("" | "off") => return None,
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push(format!(
                        "otlp_endpoint `{url}` is not an http:// or https:// URL (or `off`)"
                    ));
                    return None;
                }
                Some(url.to_string())
            }
            None if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
                || set("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
            {
                None
            }
            None => return None,
        };
        let protocol = self
            .otlp_protocol
            .clone()
            .or_else(|| set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = match protocol.as_deref().map(str::trim) {
            None | Some("grpc") => Protocol::Grpc,
            Some("http/protobuf") => Protocol::HttpProtobuf,
            Some(other) => {
                problems.push(format!(
                    "otlp_protocol `{other}` is not `grpc` or `http/protobuf`"
                ));
                return None;
            }
        };
        let queue = self.otlp_queue.unwrap_or(DEFAULT_QUEUE);
        if queue == 0 {
            problems.push("otlp_queue must be at least 1".to_string());
            return None;
        }
        Some(Export {
            endpoint,
            protocol,
            queue,
        })
    }
}

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// The configured endpoint; `None`: the exporter reads the standard `OTEL_*` variables.
    pub endpoint: Option<String>,
    pub protocol: Protocol,
    /// Most finished spans waiting for export.
    pub queue: usize,
}

/// The OTLP transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// Why the exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP exporter: {0}")]
pub struct ExporterError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Whether this process exports spans: context is extracted and injected only then.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports spans.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The installed telemetry; [`Telemetry::shutdown`] flushes the spans still queued.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

// === impl Telemetry ===

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. Call it from outside the
    /// runtime's workers (after `block_on` returns) while the runtime is still alive: the
    /// export runs on it.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("exporting the last spans failed: {e}");
        }
    }
}

/// Installs the global subscriber: the log lines of [`crate::logging::layer`] (`filter`,
/// `json`) and, when `export` is set, the spans of execmesh's own crates exported as
/// `service` with `attributes` on its resource. Must run inside the Tokio runtime the exporter
/// will use (`runtime.enter()`).
pub fn init(
    filter: &str,
    json: bool,
    export: Option<&Export>,
    service: &str,
    attributes: Vec<(&'static str, String)>,
) -> Result<Telemetry, ExporterError> {
    use std::io::IsTerminal as _;
    let ansi = std::io::stderr().is_terminal();
    let logs = crate::logging::layer(filter, json, ansi, std::io::stderr);
    let Some(export) = export else {
        if let Err(e) = tracing_subscriber::registry().with(logs).try_init() {
            eprintln!("logging was set up already: {e}");
        }
        return Ok(Telemetry::default());
    };
    let provider = provider(export, service, attributes)?;
    // Only execmesh's spans: the exporter's own HTTP/2 and gRPC spans would otherwise be
    // exported too, each export making the next one.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("execmesh"))
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target().starts_with("execmesh") && *meta.level() <= tracing::Level::INFO
        }));
    if let Err(e) = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
    {
        eprintln!("logging was set up already: {e}");
    }
    EXPORTING.store(true, Ordering::Relaxed);
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The tracer provider: the exporter of `export` behind a batch processor on the current
/// Tokio runtime with a queue of `export.queue` spans.
fn provider(
    export: &Export,
    service: &str,
    attributes: Vec<(&'static str, String)>,
) -> Result<SdkTracerProvider, ExporterError> {
    let exporter = match export.protocol {
        Protocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            match &export.endpoint {
                Some(url) => builder.with_endpoint(url.clone()).build()?,
                None => builder.build()?,
            }
        }
        Protocol::HttpProtobuf => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            match &export.endpoint {
                // Like `OTEL_EXPORTER_OTLP_ENDPOINT`, the key names the collector, not the path.
                Some(url) => builder
                    .with_endpoint(format!("{}/v1/traces", url.trim_end_matches('/')))
                    .build()?,
                None => builder.build()?,
            }
        }
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(export.queue)
        .with_max_export_batch_size(BATCH.min(export.queue))
        .build();
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_batch_config(batch)
        .build();
    // `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` are read by the resource builder; the
    // service's own name is the default, not an override.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_string());
    }
    let attributes = attributes.into_iter().map(|(k, v)| KeyValue::new(k, v));
    let resource = resource.with_attributes(attributes).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}

/// W3C `traceparent` and `tracestate`, and `baggage`.
fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    PROPAGATOR.get_or_init(|| {
        TextMapCompositePropagator::new(vec![
            Box::new(TraceContextPropagator::new()),
            Box::new(BaggagePropagator::new()),
        ])
    })
}

/// The context a carrier holds (empty when it holds none, or an invalid one).
pub fn extract(carrier: &dyn Extractor) -> Context {
    propagator().extract(carrier)
}

/// Whether `cx` names a remote span (a valid `traceparent` was extracted).
pub fn has_parent(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

/// Makes `span` a child of the span `cx` names, when it names one and spans are exported.
pub fn continue_from(span: &Span, cx: Context) {
    if exporting() && has_parent(&cx) {
        let _ = span.set_parent(cx);
    }
}

/// The trace id and span id of `span` (lower-case hex), when spans are exported.
pub fn ids(span: &Span) -> Option<(String, String)> {
    if !exporting() {
        return None;
    }
    let cx = span.context();
    let ctx = cx.span().span_context().clone();
    ctx.is_valid()
        .then(|| (ctx.trace_id().to_string(), ctx.span_id().to_string()))
}

/// Writes `span`'s context (`traceparent`, `tracestate`, `baggage`) into NATS `headers`, when
/// spans are exported; whether it did.
pub fn inject_nats(span: &Span, headers: &mut async_nats::HeaderMap) -> bool {
    if !exporting() {
        return false;
    }
    let cx = span.context();
    if !has_parent(&cx) {
        return false;
    }
    propagator().inject_context(&cx, &mut NatsHeadersMut(headers));
    true
}

/// HTTP request headers as a carrier.
pub struct HttpHeaders<'a>(pub &'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// NATS message headers as a carrier.
pub struct NatsHeaders<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

/// NATS message headers being written.
struct NatsHeadersMut<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

/// An MCP request's `_meta` object as a carrier (SEP-414: `traceparent`, `tracestate` and
/// `baggage` keys with the W3C header values).
pub struct JsonMeta<'a>(pub &'a serde_json::Map<String, serde_json::Value>);

impl Extractor for JsonMeta<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(serde_json::Value::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            vars.iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_configured() {
        let mut problems = Vec::new();
        let none = TelemetrySettings::default();
        assert_eq!(none.resolve(env(&[]), &mut problems), None);
        let off = TelemetrySettings {
            otlp_endpoint: Some("off".into()),
            ..Default::default()
        };
        let standard = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")];
        assert_eq!(off.resolve(env(&standard), &mut problems), None);
        let from_env = none.resolve(env(&standard), &mut problems).expect("on");
        assert_eq!(from_env.endpoint, None, "the exporter reads the variable");
        assert_eq!(from_env.protocol, Protocol::Grpc);
        assert_eq!(from_env.queue, DEFAULT_QUEUE);
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(none.resolve(env(&disabled), &mut problems), None);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn the_key_wins_over_the_standard_variables_and_bad_values_are_named() {
        let mut problems = Vec::new();
        let http = TelemetrySettings {
            otlp_endpoint: Some("http://collector:4318".into()),
            otlp_queue: Some(10),
            ..Default::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        let export = http.resolve(env(&vars), &mut problems).expect("on");
        assert_eq!(export.endpoint.as_deref(), Some("http://collector:4318"));
        assert_eq!(export.protocol, Protocol::HttpProtobuf);
        assert_eq!(export.queue, 10);
        let bad = TelemetrySettings {
            otlp_endpoint: Some("collector:4317".into()),
            ..Default::default()
        };
        assert_eq!(bad.resolve(env(&[]), &mut problems), None);
        let bad_protocol = TelemetrySettings {
            otlp_endpoint: Some("http://c:4317".into()),
            otlp_protocol: Some("thrift".into()),
            ..Default::default()
        };
        assert_eq!(bad_protocol.resolve(env(&[]), &mut problems), None);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("otlp_endpoint"), "{problems:?}");
        assert!(problems[1].contains("thrift"), "{problems:?}");
    }

    #[test]
    fn metrics_are_served_where_configured() {
        let mut problems = Vec::new();
        let at = |listen: Option<&str>, problems: &mut Vec<String>| {
            let settings = TelemetrySettings {
                metrics_listen: listen.map(str::to_string),
                ..Default::default()
            };
            settings.metrics(MetricsAt::Shared, problems)
        };
        assert_eq!(at(None, &mut problems), MetricsAt::Shared);
        assert_eq!(at(Some("off"), &mut problems), MetricsAt::Off);
        assert_eq!(
            at(Some("127.0.0.1:9464"), &mut problems),
            MetricsAt::Listen("127.0.0.1:9464".parse().expect("an address"))
        );
        assert!(problems.is_empty());
        assert_eq!(at(Some("nowhere"), &mut problems), MetricsAt::Off);
        assert!(
            problems[0].contains("metrics_listen `nowhere`"),
            "{problems:?}"
        );
    }

    #[test]
    fn meta_and_headers_carry_w3c_context() {
        let mut meta = serde_json::Map::new();
        meta.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        let cx = extract(&JsonMeta(&meta));
        assert!(has_parent(&cx));
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static("00-zz-yy-01"));
        assert!(!has_parent(&extract(&HttpHeaders(&headers))));
    }
}
