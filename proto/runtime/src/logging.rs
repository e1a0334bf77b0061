//! Logging setup of every service: an `EnvFilter` with quiet defaults for chatty libraries, text or JSON lines on stderr, colour only for a person at a terminal.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Filter, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Libraries whose INFO lines are noise for on-call, quietened unless the filter names them:
/// rmcp logs every stateless request's whole `InitializeRequestParams` and three more lines
/// per call; async-nats logs each connection event that the services log themselves.
const QUIET_BY_DEFAULT: &[(&str, &str)] = &[("rmcp", "warn"), ("async_nats", "warn")];

/// Messages rmcp logs at ERROR when a client went away before its answer was sent: an
/// expected event, not an error. Shown only when the filter asks for rmcp at DEBUG.
const PEER_GONE: &[&str] = &[
    "failed to send pending response during drain",
    "response send task failed during drain",
];

/// Installs the global subscriber: `filter` in `EnvFilter` syntax (`info` should it not parse;
/// each service checks it with its configuration first) over [`QUIET_BY_DEFAULT`], one JSON
/// object per line with the event's fields at the top level when `json`, else text.
pub fn init(filter: &str, json: bool) {
    let ansi = std::io::stderr().is_terminal();
    if let Err(e) = tracing_subscriber::registry()
        .with(layer(filter, json, ansi, std::io::stderr))
        .try_init()
    {
        eprintln!("logging was set up already: {e}");
    }
}

/// The formatting layer [`init`] installs, writing to `writer`, with its filters.
pub fn layer<S, W>(filter: &str, json: bool, ansi: bool, writer: W) -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let env = EnvFilter::try_new(with_defaults(filter)).unwrap_or_else(|_| EnvFilter::new("info"));
    let quiet = PeerGoneFilter {
        show: rmcp_debug(filter),
    };
    // Colour only for a person at a terminal: redirected to a file or the journal, escape
    // codes would litter every line.
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let formatted: Box<dyn Layer<S> + Send + Sync> = if json {
        Box::new(text.json().flatten_event(true))
    } else {
        Box::new(text)
    };
    formatted.with_filter(env).with_filter(quiet)
}

/// Whether `filter` is valid `EnvFilter` syntax; the reason when it is not.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Rate limit of a log line that outside input can repeat at will (a refused request): at most
/// `burst` lines per `window`; the rest are counted and the count goes with the next line.
pub struct Throttle {
    burst: u32,
    window: Duration,
    /// (window start, lines in it, lines held back since the last one written).
    state: Mutex<(Option<Instant>, u32, u64)>,
}

// === impl Throttle ===

impl Throttle {
    pub fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(held back)` when a line may be written now (with the count of lines held back
    /// since the last one), `None` when this one is held back.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return Some(0);
        };
        let (start, lines, held) = &mut *state;
        if start.is_none_or(|at| at.elapsed() >= self.window) {
            *start = Some(Instant::now());
            *lines = 0;
        }
        if *lines >= self.burst {
            *held += 1;
            return None;
        }
        *lines += 1;
        Some(std::mem::take(held))
    }
}

/// `filter` behind the [`QUIET_BY_DEFAULT`] directives of the libraries it does not name, so
/// an operator who names one (`rmcp=debug`) gets what they asked for.
fn with_defaults(filter: &str) -> String {
    let mut directives: Vec<String> = QUIET_BY_DEFAULT
        .iter()
        .filter(|(target, _)| !filter.contains(target))
        .map(|(target, level)| format!("{target}={level}"))
        .collect();
    directives.insert(0, filter.to_string());
    directives.join(",")
}

/// Whether `filter` asks for rmcp's DEBUG lines (then [`PEER_GONE`] messages are shown).
fn rmcp_debug(filter: &str) -> bool {
    filter.split(',').any(|directive| {
        directive
            .trim()
            .strip_prefix("rmcp")
            .and_then(|rest| rest.rsplit_once('='))
            .is_some_and(|(_, level)| {
                matches!(
                    level.trim().to_ascii_lowercase().as_str(),
                    "debug" | "trace"
                )
            })
    })
}

/// Drops rmcp's [`PEER_GONE`] errors unless `show`.
struct PeerGoneFilter {
    show: bool,
}

impl<S> Filter<S> for PeerGoneFilter {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        if self.show || *meta.level() != Level::ERROR || !meta.target().starts_with("rmcp") {
            return true;
        }
        let mut message = Message(None);
        event.record(&mut message);
        !message.0.is_some_and(|m| PEER_GONE.contains(&m.as_str()))
    }
}

/// The `message` field of an event.
struct Message(Option<String>);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = Some(value.to_string());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = Some(format!("{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log written to memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut log) = self.0.lock() {
                log.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Self::Writer {
            self.clone()
        }
    }

    /// What the services' subscriber writes for a stateless call's library chatter and a
    /// client that went away, with `filter`.
    fn logged(filter: &str) -> String {
        let log = Captured::default();
        let subscriber =
            tracing_subscriber::registry().with(layer(filter, false, false, log.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "rmcp::service", peer_info = "InitializeRequestParams { .. }", "Service initialized as server");
            tracing::info!(target: "async_nats", "event: disconnected");
            tracing::error!(target: "rmcp::service", error = "channel closed", "failed to send pending response during drain");
            tracing::error!(target: "rmcp::service", error = "boom", "fail to close sink");
            tracing::info!(target: "execmesh_gateway::mcp", "tool call");
        });
        let text = log.0.lock().map(|l| l.clone()).unwrap_or_default();
        String::from_utf8_lossy(&text).into_owned()
    }

    #[test]
    fn library_chatter_and_a_gone_client_are_not_logged_by_default() {
        let log = logged("info");
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("tool call"), "{log}");
        assert!(log.contains("fail to close sink"), "{log}");
        assert!(!log.contains("InitializeRequestParams"), "{log}");
        assert!(!log.contains("event: disconnected"), "{log}");
        assert!(!log.contains("during drain"), "{log}");
    }

    #[test]
    fn a_throttle_holds_back_lines_past_its_burst_and_counts_them() {
        let throttle = Throttle::new(2, Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), None);
        assert_eq!(throttle.admit(), None);
        let next = Throttle::new(1, Duration::ZERO);
        assert_eq!(next.admit(), Some(0));
        assert_eq!(next.admit(), Some(0), "a new window admits again");
    }

    #[test]
    fn a_filter_naming_a_library_gets_its_lines() {
        let log = logged("info,rmcp=debug");
        assert!(log.contains("InitializeRequestParams"), "{log}");
        assert!(log.contains("during drain"), "{log}");
        assert!(!log.contains("event: disconnected"), "{log}");
        assert!(logged("info,async_nats=info").contains("event: disconnected"));
    }
}
