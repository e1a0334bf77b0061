//! `execmeshctl`: the operator's command-line client of the gateway's gRPC admin API.

use std::process::ExitCode;

fn main() -> ExitCode {
    execmeshctl::run(std::env::args_os())
}
