//! A real OTLP trace receiver for the scenarios: the collector's gRPC `TraceService` (from the OpenTelemetry protocol definitions) and its HTTP/protobuf twin on loopback ports, keeping every span the services export, flattened for assertions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message as _;
use tokio::task::JoinHandle;

/// How long exported spans may take to arrive (the exporters batch every 5 s by default).
pub const ARRIVAL: Duration = Duration::from_secs(20);

/// One received span, flattened: ids as lower-case hex, attributes as text.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that exported it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub attributes: BTreeMap<String, String>,
    /// Whether its status is ERROR.
    pub error: bool,
    /// From its start to its end.
    pub duration: Duration,
}

// === impl ReceivedSpan ===

impl ReceivedSpan {
    /// The attribute `key`, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// The spans received so far, in arrival order.
type Received = Arc<Mutex<Vec<ReceivedSpan>>>;

/// The receiver: gRPC and HTTP/protobuf endpoints; stopped on drop.
pub struct OtlpReceiver {
    grpc: SocketAddr,
    http: SocketAddr,
    received: Received,
    tasks: Vec<JoinHandle<()>>,
}

// === impl OtlpReceiver ===

impl OtlpReceiver {
    /// Serves both endpoints on free loopback ports.
    pub async fn start() -> OtlpReceiver {
        let received = Received::default();
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP gRPC port");
        let grpc = grpc_listener.local_addr().expect("its address");
        let service = TraceServiceServer::new(Collector(received.clone()));
        let grpc_task = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP HTTP port");
        let http = http_listener.local_addr().expect("its address");
        let kept = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let kept = kept.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => {
                            keep(&kept, request);
                            (
                                axum::http::StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec(),
                            )
                        }
                        Err(_) => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            }),
        );
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http_listener, app).await;
        });
        OtlpReceiver {
            grpc,
            http,
            received,
            tasks: vec![grpc_task, http_task],
        }
    }

    /// The gRPC endpoint (`otlp_protocol = "grpc"`).
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The HTTP/protobuf endpoint's base (`otlp_protocol = "http/protobuf"`).
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The spans of `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans = self.spans();
        spans.retain(|s| s.trace_id == trace_id);
        spans
    }

    /// The spans of `trace_id` once `complete` holds for them, within [`ARRIVAL`].
    pub async fn trace_when(
        &self,
        trace_id: &str,
        complete: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        crate::eventually(ARRIVAL, || async {
            let spans = self.trace(trace_id);
            complete(&spans).then_some(spans)
        })
        .await
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The gRPC `TraceService`: keeps what it is sent.
struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Flattens and keeps the spans of `request`.
fn keep(received: &Received, request: ExportTraceServiceRequest) {
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    error: span
                        .status
                        .is_some_and(|s| s.code == StatusCode::Error as i32),
                    duration: Duration::from_nanos(
                        span.end_time_unix_nano
                            .saturating_sub(span.start_time_unix_nano),
                    ),
                });
            }
        }
    }
    if let Ok(mut kept) = received.lock() {
        kept.extend(spans);
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                Some(other) => format!("{other:?}"),
                None => String::new(),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A span tree as text, one span per line indented under its parent: `name (service)`. For
/// failure messages and the closing note.
pub fn tree(spans: &[ReceivedSpan]) -> String {
    fn walk(spans: &[ReceivedSpan], parent: &str, depth: usize, out: &mut String) {
        for span in spans.iter().filter(|s| s.parent_span_id == parent) {
            out.push_str(&format!(
                "{}{} ({})\n",
                "  ".repeat(depth),
                span.name,
                span.service
            ));
            walk(spans, &span.span_id, depth + 1, out);
        }
    }
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    // Roots: no parent, or a parent not received (the client's own span).
    let mut roots: Vec<&str> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id.as_str()))
        .map(|s| s.parent_span_id.as_str())
        .collect();
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        if !root.is_empty() {
            out.push_str(&format!("(client span {root})\n"));
        }
        walk(spans, root, usize::from(!root.is_empty()), &mut out);
    }
    out
}

/// Calls `tool` with `arguments` at the MCP endpoint `url` as one stateless JSON-RPC POST with
/// `token`, the HTTP `headers` given (`traceparent`, …) and `meta` as the request's `_meta`;
/// the JSON-RPC response body.
pub async fn call_traced(
    url: &str,
    token: &str,
    headers: &[(&str, &str)],
    meta: Option<serde_json::Value>,
    tool: &str,
    arguments: serde_json::Value,
) -> serde_json::Value {
    let mut params = serde_json::json!({"name": tool, "arguments": arguments});
    if let Some(meta) = meta {
        params["_meta"] = meta;
    }
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
    let mut request = reqwest::Client::new()
        .post(url)
        .header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        )
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(30));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"));
    let text = response.text().await.unwrap_or_default();
    // A JSON body, or an SSE stream whose `data:` line carries it.
    serde_json::from_str(&text)
        .ok()
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find_map(|d| serde_json::from_str(d.trim()).ok())
        })
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {text:?}"))
}
