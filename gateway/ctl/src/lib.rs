//! `execmeshctl`: the operator's command-line client of the gateway's gRPC admin API.
//!
//! [`run`] parses the command line, connects (see [`connect`], over [`admin_client`]) and runs
//! one command group's function, which prints a table ([`table`]) or JSON. Failures become
//! [`CtlError`]s, whose exit codes scripts can rely on: 0 done, 1 the gateway said no, 2 usage,
//! 3 cannot connect.
//!
//! `execmeshctl nats-config` ([`nats_config`]) writes a secured mesh's NATS configuration and
//! needs no connection at all.
//!
//! No server stack is linked: the admin API's generated clients (`execmesh-proto`) over tonic's
//! channel are all it needs.

pub mod admin_client;
pub mod approvals;
pub mod audit;
pub mod cli;
pub mod connect;
pub mod hosts;
pub mod jobs;
pub mod nats_config;
pub mod runbooks;
pub mod table;
pub mod tokens;

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

use cli::{Cli, Command, Connection, HostsCommand, TopCommand};
use connect::Settings;

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// A bad argument or setting (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The admin API could not be reached, or the connection broke (exit 3).
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The gateway answered with an error, in words (exit 1).
    #[error("{0}")]
    Refused(String),
    /// The command ran and found something wrong, e.g. a broken audit chain (exit 1).
    #[error("{0}")]
    Failed(String),
    /// `job tail --exit-code`: the job ended with this code (nothing to print).
    #[error("the job exited with {0}")]
    JobExit(u8),
    /// Standard output is gone (a closed pipe): stop quietly.
    #[error("standard output closed")]
    Closed,
    /// Writing standard output failed.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
}

// === impl CtlError ===

impl CtlError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Connect { .. } => 3,
            CtlError::Refused(_) | CtlError::Failed(_) | CtlError::Output(_) => 1,
            CtlError::JobExit(code) => *code,
            CtlError::Closed => 0,
        }
    }
}

/// Runs `execmeshctl` with `args` (the program name first) and returns its exit code.
pub fn run(args: impl IntoIterator<Item = impl Into<OsString> + Clone>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        // --help and --version exit 0, usage errors 2; clap prints either.
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let command = match cli.command {
        // Files only: no runtime, and no connection settings to resolve (or to be wrong).
        TopCommand::NatsConfig(args) => {
            return nats_config::run(&args.inventory, &args.out, &args.rotate);
        }
        TopCommand::Admin(command) => command,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execute(&cli.connection, command, cli.json)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match &e {
                CtlError::Closed | CtlError::JobExit(_) => {}
                e => eprintln!("error: {e}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Connects and runs one command.
async fn execute(connection: &Connection, command: Command, json: bool) -> Result<(), CtlError> {
    let settings = Settings::resolve(connection)?;
    // Arguments are checked before connecting, so a typo is a usage error whatever the gateway.
    match command {
        Command::Hosts {
            selector,
            page_size,
            watch,
        } => match watch {
            None => {
                let mut admin = settings.connect().await?;
                let selector = selector.unwrap_or_default();
                hosts::list(&mut admin, selector, page_size, json).await
            }
            Some(HostsCommand::Watch {
                selector,
                changes_only,
            }) => {
                let mut admin = settings.connect().await?;
                hosts::watch(
                    &mut admin,
                    selector.unwrap_or_default(),
                    !changes_only,
                    json,
                )
                .await
            }
        },
        Command::Jobs(filters) => {
            let request = jobs::list_request(&filters)?;
            let mut admin = settings.connect().await?;
            jobs::list(&mut admin, request, json).await
        }
        Command::Job(command) => jobs::run(settings, command, json).await,
        Command::Approvals { filters, watch } => {
            approvals::run_list(settings, filters, watch, json).await
        }
        Command::Approval(cli::ApprovalCommand::Get { id }) => {
            let mut admin = settings.connect().await?;
            approvals::get(&mut admin, id, json).await
        }
        Command::Approve { id } => {
            let mut admin = settings.connect().await?;
            approvals::approve(&mut admin, id, json).await
        }
        Command::Deny { id, reason } => {
            if reason.trim().is_empty() {
                return Err(CtlError::Usage(
                    "--reason must say why, for the requester".into(),
                ));
            }
            let mut admin = settings.connect().await?;
            approvals::deny(&mut admin, id, reason, json).await
        }
        Command::Audit {
            filters,
            page,
            command,
        } => audit::run(settings, filters, page, command, json).await,
        Command::Token(command) => tokens::run(settings, command, json).await,
        Command::Runbooks => {
            let mut admin = settings.connect().await?;
            runbooks::list(&mut admin, json).await
        }
    }
}

/// Writes `text` to standard output as it is (a closed pipe stops the command quietly).
pub fn print(text: &str) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(output_error)
}

/// Writes raw bytes to standard output (job output is not necessarily UTF-8).
pub fn print_bytes(bytes: &[u8]) -> Result<(), CtlError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(output_error)
}

/// Prints one answer as a pretty JSON document.
pub fn print_json(value: &Value) -> Result<(), CtlError> {
    print_json_text(serde_json::to_string_pretty(value))
}

/// Prints one item of a stream as a line of JSON.
pub fn print_json_line(value: &Value) -> Result<(), CtlError> {
    print_json_text(serde_json::to_string(value))
}

fn print_json_text(text: serde_json::Result<String>) -> Result<(), CtlError> {
    let text = text.map_err(|e| CtlError::Output(std::io::Error::other(e)))?;
    print(&format!("{text}\n"))
}

fn output_error(e: std::io::Error) -> CtlError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        CtlError::Closed
    } else {
        CtlError::Output(e)
    }
}

/// A protobuf enum value as a lower-case word: `HOST_STATE_ONLINE` with prefix `HOST_STATE_`
/// is `online`.
pub fn enum_word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// Parses a lower-case word back to the enum's `SCREAMING_CASE` name with `prefix`
/// (`timed-out` → `JOB_STATE_TIMED_OUT`).
pub fn enum_name(word: &str, prefix: &str) -> String {
    format!(
        "{prefix}{}",
        word.trim().replace('-', "_").to_ascii_uppercase()
    )
}
