//! `execmesh-gateway`: serve MCP, mint a token, or add a user to the policy.

use std::process::ExitCode;

use execmesh_runtime::{config, telemetry};
use tokio_util::sync::CancellationToken;

use execmesh_gateway::commands::{self, CommandError};
use execmesh_gateway::config::{Cli, Command, Config, TokenCommand, UserCommand};

fn main() -> ExitCode {
    let (cli, config) = match config::parse_and_load(|cli: &Cli| Config::load(&cli.settings)) {
        Ok(loaded) => loaded,
        Err(exit) => return exit,
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Token(TokenCommand::Mint {
            user,
            ttl,
            tier,
            scopes,
        }) => match commands::mint(&config, &user, &ttl, tier.as_deref(), &scopes) {
            Ok(minted) => {
                // The token alone on stdout, so `TOKEN=$(execmesh-gateway token mint ...)` works.
                println!("{}", minted.token);
                eprintln!(
                    "token {} for {} (tier {}) at {}, expires at unix time {}",
                    minted.token_id, minted.user, minted.tier, minted.resource, minted.expires_at
                );
                ExitCode::SUCCESS
            }
            Err(e) => failed("cannot mint token", &e),
        },
        Command::User(UserCommand::Add {
            name,
            tier,
            groups,
            password_stdin,
            replace,
        }) => {
            let mut stdin = std::io::stdin();
            let input = password_stdin.then_some(&mut stdin as &mut dyn std::io::Read);
            match commands::add_user(&config, &name, tier.as_deref(), groups, input, replace) {
                Ok(added) => {
                    if let Some(password) = added.generated_password {
                        // Shown once: only its hash is stored.
                        println!("{password}");
                    }
                    eprintln!("user {name} saved (tier {})", added.tier);
                    ExitCode::SUCCESS
                }
                Err(e) => failed("cannot add user", &e),
            }
        }
        Command::ExecKey => {
            match execmesh_gateway::core::signer::Signer::load_or_create(&config.exec_signing_key) {
                Ok(signer) => {
                    println!("{}", signer.public_key_base64());
                    eprintln!(
                        "key id {} ({})",
                        signer.key_id(),
                        config.exec_signing_key.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("cannot load the exec signing key: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::NatsConfig {
            inventory,
            out,
            rotate,
        } => execmeshctl::nats_config::run(&inventory, &out, &rotate),
        Command::Serve => serve(config),
    }
}

fn failed(what: &str, e: &CommandError) -> ExitCode {
    eprintln!("{what}: {e}");
    match e {
        CommandError::Usage(_) => ExitCode::from(config::EXIT_USAGE),
        _ => ExitCode::from(1),
    }
}

fn serve(config: Config) -> ExitCode {
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
    // The gateway's filter comes from the environment only. The span exporter runs on the
    // runtime, so it is set up inside it.
    let filter = std::env::var("EXECMESH_LOG").unwrap_or_else(|_| "info".to_string());
    let telemetry = {
        let _runtime = runtime.enter();
        telemetry::init(
            &filter,
            config.log_json,
            config.telemetry.as_ref(),
            "execmesh-gateway",
            Vec::new(),
        )
    };
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("execmesh-gateway: {e}");
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
    // Flushed on the runtime, which still runs its workers.
    telemetry.shutdown();
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
