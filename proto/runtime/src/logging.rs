//! Logging setup of every service: an `EnvFilter`, text or JSON lines on stderr, colour only for a person at a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `filter` in `EnvFilter` syntax (`info` should it not parse;
/// each service checks it with its configuration first), one JSON object per line with the
/// event's fields at the top level when `json`, else text.
pub fn init(filter: &str, json: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: redirected to a file or the journal, escape
        // codes would litter every line.
        .with_ansi(std::io::stderr().is_terminal());
    let result = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was set up already: {e}");
    }
}

/// Whether `filter` is valid `EnvFilter` syntax; the reason when it is not.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::try_new(filter)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
