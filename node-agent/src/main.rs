//! The `execmesh-node-agent` binary: configuration, logging, runtime, signals; the work is in the library.

use std::process::ExitCode;

use clap::Parser as _;
use execmesh_node_agent::cli::{Command, GuardCommand};
use execmesh_node_agent::relay::{self, RelayConfig};
use execmesh_node_agent::{Cli, Config, guard_check, telemetry};

use execmesh_runtime::config::{self, EXIT_USAGE};
use execmesh_runtime::signals;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if !e.use_stderr() {
                ExitCode::SUCCESS // --help, --version
            } else if guard_tool() {
                ExitCode::from(guard_check::USAGE)
            } else {
                ExitCode::from(EXIT_USAGE)
            };
        }
    };
    if let Some(Command::Guard(GuardCommand::Check(check))) = cli.command.clone() {
        let code = guard_check::run(
            cli,
            &check,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        );
        return ExitCode::from(code);
    }
    if let Some(Command::Relay(relay)) = cli.command.clone() {
        return run_relay(cli, &relay.config);
    }
    let config = match Config::load(cli) {
        Ok(config) => config,
        Err(e) => return config::invalid(&e),
    };
    serve("node-agent", "execmesh-agent", &config, |shutdown| {
        execmesh_node_agent::run(config.clone(), shutdown)
    })
}

/// `execmesh-node-agent relay --config <file>`: the same runtime, telemetry and signals as the
/// agent.
fn run_relay(cli: Cli, path: &std::path::Path) -> ExitCode {
    let config = match RelayConfig::load(cli, path) {
        Ok(config) => config,
        Err(e) => return config::invalid(&e),
    };
    let agent = config.agent.clone();
    serve("relay", "execmesh-relay", &agent, |shutdown| {
        relay::run(config, shutdown)
    })
}

/// Runs `service` (its threads named `threads`, its telemetry set up from `telemetry_of`) until
/// a signal stops it (drained), or a second one (at once).
fn serve<F, Fut>(name: &'static str, threads: &str, telemetry_of: &Config, service: F) -> ExitCode
where
    F: FnOnce(tokio_util::sync::CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), execmesh_node_agent::AgentError>>,
{
    // Two workers carry the agent. The blocking pool runs file operations (at most
    // `files::FILE_WORKERS` at once) and keeps room beyond them for everything else; its threads
    // start on demand and end when idle.
    let runtime = match signals::runtime(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(execmesh_node_agent::files::FILE_WORKERS + 8)
            .thread_name(threads),
    ) {
        Ok(runtime) => runtime,
        Err(exit) => return exit,
    };
    // The span exporter runs on the runtime, so it is set up inside it.
    let telemetry = match runtime.block_on(async { telemetry::init(telemetry_of) }) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("execmesh-node-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(signals::serve(
        name,
        "exiting without draining",
        ExitCode::FAILURE,
        service,
    ));
    // Flushed on the runtime, which still runs its workers.
    telemetry.shutdown();
    code
}

/// Whether the command line asks for the `guard` tool, whose usage errors exit 2 (as its
/// documentation promises) rather than 64.
fn guard_tool() -> bool {
    std::env::args()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "guard")
}
