//! Sets up the agent's logging and trace export from its configuration (the filter, the JSON switch, the OTLP settings), with the setup every service shares.

use execmesh_runtime::telemetry::{ExporterError, Telemetry};

use crate::config::Config;

/// Installs the global subscriber, exporting spans as `execmesh-node-agent` of this host when
/// configured; inside the runtime the exporter will use. The filter was checked by
/// [`Config::validate`]; should it still not parse, `info` is used.
pub fn init(config: &Config) -> Result<Telemetry, ExporterError> {
    execmesh_runtime::telemetry::init(
        &config.log,
        config.log_json,
        config.telemetry.as_ref(),
        "execmesh-node-agent",
        vec![
            ("execmesh.host", config.host_id.to_string()),
            ("execmesh.tenant", config.tenant.to_string()),
        ],
    )
}
