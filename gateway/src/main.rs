//! `execmesh-gateway`: serve MCP, or mint a token.

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use execmesh_gateway::auth::{SigningKey, parse_ttl};
use execmesh_gateway::config::{Cli, Command, Config, TokenCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.settings) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("invalid configuration: {e}");
            return ExitCode::from(64);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(TokenCommand::Mint { user, ttl }) => mint(&config, &user, &ttl),
        Command::Serve => serve(config),
    }
}

fn mint(config: &Config, user: &str, ttl: &str) -> ExitCode {
    let ttl = match parse_ttl(ttl) {
        Ok(ttl) => ttl,
        Err(e) => {
            eprintln!("invalid --ttl: {e}");
            return ExitCode::from(64);
        }
    };
    let token = SigningKey::load_or_create(&config.key_file).and_then(|key| key.mint(user, ttl));
    match token {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot mint token: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(config: Config) -> ExitCode {
    init_tracing(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signal(shutdown.clone()));
        execmesh_gateway::run(config, listener, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("execmesh-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXECMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
