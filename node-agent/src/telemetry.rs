//! Sets up the agent's logging from its configuration (the filter and the JSON switch), with the setup every service shares.

use crate::config::Config;

/// Installs the global subscriber. The filter was checked by [`Config::validate`]; should it
/// still not parse, `info` is used.
pub fn init(config: &Config) {
    execmesh_runtime::logging::init(&config.log, config.log_json);
}
