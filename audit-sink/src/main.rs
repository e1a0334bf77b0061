//! The `execmesh-audit-sink` binary: command line, configuration, logging, runtime, signals; the work is in the library.

use std::process::ExitCode;

use execmesh_audit_sink::{Cli, Command, Config};

use execmesh_runtime::config::{self, EXIT_USAGE};
use execmesh_runtime::{signals, telemetry};

/// `verify`: the chain does not verify.
const EXIT_BROKEN: u8 = 1;
/// `verify`: the chain is intact, but some events were signed by no known key.
const EXIT_UNSIGNED: u8 = 2;
/// The store or NATS failed (sysexits `EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;

fn main() -> ExitCode {
    let (cli, config) = match config::parse_and_load(|cli: &Cli| Config::load(&cli.settings)) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let filter = match &command {
        Command::Export(args) => match args.filter.to_filter() {
            Ok(filter) => Some(filter),
            Err(e) => {
                eprintln!("invalid filter: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        _ => None,
    };
    let runtime =
        match signals::runtime(tokio::runtime::Builder::new_multi_thread().worker_threads(2)) {
            Ok(runtime) => runtime,
            Err(exit) => return exit,
        };
    // Spans are exported by the serving sink only; the exporter runs on the runtime, so it is
    // set up inside it.
    let traces = matches!(command, Command::Serve).then_some(config.telemetry.as_ref());
    let telemetry = runtime.block_on(async {
        telemetry::init(
            &config.log,
            config.log_json,
            traces.flatten(),
            "execmesh-audit-sink",
            Vec::new(),
        )
    });
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("execmesh-audit-sink: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        match command {
            Command::Serve => serve(config).await,
            Command::Verify => verify(&config).await,
            Command::Export(args) => export(&config, args, filter.unwrap_or_default()).await,
        }
    });
    // Flushed on the runtime, which still runs its workers.
    telemetry.shutdown();
    code
}

async fn serve(config: Config) -> ExitCode {
    signals::serve(
        "audit-sink",
        "exiting without finishing the batch",
        ExitCode::from(EXIT_UNAVAILABLE),
        |shutdown| execmesh_audit_sink::run(config, shutdown),
    )
    .await
}

/// Prints the chain's state; exit 0 when intact and every event was signed by a known key,
/// 1 naming the first bad record, 2 naming the events no known key signed.
async fn verify(config: &Config) -> ExitCode {
    match execmesh_audit_sink::verify(config).await {
        Ok(report) => match report.broken {
            None if report.unsigned > 0 => {
                println!(
                    "chain intact: {} records; head seq {} hash {}",
                    report.records, report.head_seq, report.head_hash
                );
                let more = report.unsigned - report.unsigned_ids.len() as u64;
                println!(
                    "{} events were signed by no key of the identities file (planted under \
                     another identity's subject, or stored while the sink checked no \
                     signatures): {}{}",
                    report.unsigned,
                    report.unsigned_ids.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
                ExitCode::from(EXIT_UNSIGNED)
            }
            None => {
                println!(
                    "chain intact: {} records, each signed by a known key; head seq {} hash {}",
                    report.records, report.head_seq, report.head_hash
                );
                ExitCode::SUCCESS
            }
            Some(broken) => {
                println!(
                    "chain broken at record {}: {}\n({} records before it verify; the last good one is seq {} hash {})",
                    broken.seq, broken.problem, report.records, report.head_seq, report.head_hash
                );
                ExitCode::from(EXIT_BROKEN)
            }
        },
        Err(e) => {
            eprintln!("execmesh-audit-sink verify: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

async fn export(
    config: &Config,
    args: Box<execmesh_audit_sink::config::ExportArgs>,
    filter: execmesh_audit_sink::Filter,
) -> ExitCode {
    let result = match &args.output {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => {
                let mut out = std::io::BufWriter::new(file);
                execmesh_audit_sink::export(config, filter, &mut out).await
            }
            Err(e) => {
                eprintln!("cannot create {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => {
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            execmesh_audit_sink::export(config, filter, &mut out).await
        }
    };
    match result {
        Ok(n) => {
            eprintln!("exported {n} records");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("execmesh-audit-sink export: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}
