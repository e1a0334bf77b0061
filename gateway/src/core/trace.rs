//! W3C trace context for a tool call: continued from the client's `traceparent` when it sends
//! one, otherwise started here, and passed on to the agent in a NATS header.

use std::fmt;

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
}
