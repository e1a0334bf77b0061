//! Sets up logging: an `EnvFilter` from the configuration, text or JSON lines on stderr.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::Config;

/// Installs the global subscriber. The filter was checked by [`Config::validate`]; should it
/// still not parse, `info` is used.
pub fn init(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: redirected to a file or the journal, escape
        // codes would litter every line.
        .with_ansi(std::io::stderr().is_terminal());
    let result = if config.log_json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
    if let Err(e) = result {
        eprintln!("logging was set up already: {e}");
    }
}
