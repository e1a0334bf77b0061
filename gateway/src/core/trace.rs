//! W3C trace context for a tool call: continued from the client's `traceparent` when it sends
//! one, otherwise started here, and passed on to the agent in a NATS header.
//!
//! A client may send its context in the request's `_meta` (SEP-414) or in HTTP headers; when
//! `_meta` holds a valid `traceparent` it wins and the headers are not read: `_meta` is what
//! the MCP client itself wrote for this request, while headers may have been set by a proxy
//! (or a client library) for the HTTP exchange as a whole.

use std::fmt;

use execmesh_runtime::telemetry::{self, HttpHeaders, JsonMeta};
use serde_json::{Map, Value};
use tracing::Span;

/// Where a call's trace context came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// The MCP request's `_meta` (SEP-414).
    Meta,
    /// The HTTP request's `traceparent` header.
    Header,
    /// Neither carried a valid one: the trace starts here.
    None,
}

// === impl Carrier ===

impl Carrier {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meta => "meta",
            Self::Header => "header",
            Self::None => "none",
        }
    }
}

/// The trace a tool call belongs to and this call's own span id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// 16 lower-case hex digits.
    pub span_id: String,
}

impl TraceContext {
    /// Continues `traceparent` if it is valid (version 00), else starts a new trace.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        let span_id = hex(&rand::random::<[u8; 8]>());
        if let Some(trace_id) = traceparent.and_then(parse_trace_id) {
            return Self { trace_id, span_id };
        }
        Self {
            trace_id: hex(&rand::random::<[u8; 16]>()),
            span_id,
        }
    }

    /// The `traceparent` header value for the next hop (sampled).
    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.span_id)
    }

    /// The trace of the call whose span is `span`, continued from `meta` (the request's
    /// `_meta`) if it holds a valid `traceparent`, else from `headers`; with spans exported,
    /// `span` becomes the child of the client's span and its ids are the call's.
    pub fn of_call(
        span: &Span,
        meta: Option<&Map<String, Value>>,
        headers: Option<&http::HeaderMap>,
    ) -> (Self, Carrier) {
        let valid = |value: Option<&str>| value.and_then(parse_trace_id).is_some();
        let meta = meta.filter(|m| valid(m.get("traceparent").and_then(Value::as_str)));
        let header = headers.filter(|h| valid(h.get("traceparent").and_then(|v| v.to_str().ok())));
        let (traceparent, carrier) = match (meta, header) {
            (Some(meta), _) => {
                telemetry::continue_from(span, telemetry::extract(&JsonMeta(meta)));
                (
                    meta.get("traceparent").and_then(Value::as_str),
                    Carrier::Meta,
                )
            }
            (None, Some(headers)) => {
                telemetry::continue_from(span, telemetry::extract(&HttpHeaders(headers)));
                (
                    headers.get("traceparent").and_then(|v| v.to_str().ok()),
                    Carrier::Header,
                )
            }
            (None, None) => (None, Carrier::None),
        };
        let trace = match telemetry::ids(span) {
            Some((trace_id, span_id)) => Self { trace_id, span_id },
            None => Self::continue_or_start(traceparent),
        };
        (trace, carrier)
    }

    /// The `traceparent` for a request sent from within `span`: that span's own when spans are
    /// exported (the agent's span becomes its child), else the call's.
    pub fn traceparent_in(&self, span: &Span) -> String {
        match telemetry::ids(span) {
            Some((trace_id, span_id)) => format!("00-{trace_id}-{span_id}-01"),
            None => self.traceparent(),
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.trace_id)
    }
}

/// The trace id of a valid version-00 `traceparent`.
pub fn parse_trace_id(value: &str) -> Option<String> {
    let parts: Vec<&str> = value.trim().split('-').collect();
    let ["00", trace, span, flags] = parts[..] else {
        return None;
    };
    let is_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    (is_hex(trace, 32) && is_hex(span, 16) && is_hex(flags, 2) && !zero(trace) && !zero(span))
        .then(|| trace.to_string())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_parent_and_replaces_an_invalid_one() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::continue_or_start(Some(parent));
        assert_eq!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(t.span_id, "00f067aa0ba902b7");
        assert!(
            t.traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-0000-00f067aa0ba902b7-01",
        ] {
            let t = TraceContext::continue_or_start(Some(bad));
            assert_eq!(t.trace_id.len(), 32);
            assert_ne!(t.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        }
    }

    #[test]
    fn meta_wins_over_the_header_and_an_invalid_meta_does_not() {
        let from_meta = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let from_header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", http::HeaderValue::from_static(from_header));
        let mut meta = Map::new();
        meta.insert("traceparent".into(), from_meta.into());
        let span = Span::none();
        let (t, carrier) = TraceContext::of_call(&span, Some(&meta), Some(&headers));
        assert_eq!(
            (t.trace_id.as_str(), carrier),
            ("4bf92f3577b34da6a3ce929d0e0e4736", Carrier::Meta)
        );
        meta.insert("traceparent".into(), "00-bad".into());
        let (t, carrier) = TraceContext::of_call(&span, Some(&meta), Some(&headers));
        assert_eq!(
            (t.trace_id.as_str(), carrier),
            ("0af7651916cd43dd8448eb211c80319c", Carrier::Header)
        );
        let (_, carrier) = TraceContext::of_call(&span, None, None);
        assert_eq!(carrier, Carrier::None);
    }
}
