//! Running a service: its async runtime, and shutdown on signals (the first SIGTERM or SIGINT
//! cancels the service's shutdown token, a second one exits at once).

use std::fmt::Display;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

/// Builds the async runtime from `builder`, or says why it cannot start (exit 1).
pub fn runtime(builder: &mut tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        ExitCode::FAILURE
    })
}

/// Runs the service `name` (`node-agent`, `audit-sink`) under [`watch`] until `run` returns:
/// success, or `failed` once its error is logged and printed as `execmesh-<name>: <error>`.
/// Call it inside the runtime.
pub async fn serve<F, E>(
    name: &str,
    second: &'static str,
    failed: ExitCode,
    run: impl FnOnce(CancellationToken) -> F,
) -> ExitCode
where
    F: Future<Output = Result<(), E>>,
    E: Display,
{
    let shutdown = CancellationToken::new();
    if let Err(e) = watch(shutdown.clone(), second) {
        eprintln!("cannot install signal handlers: {e}");
        return ExitCode::FAILURE;
    }
    match run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{name} failed");
            eprintln!("execmesh-{name}: {e}");
            failed
        }
    }
}

/// Cancels `shutdown` on the first SIGTERM or SIGINT; a second one logs `second` (what is given
/// up by not waiting) and exits with 130 at once. Call it inside the runtime.
pub fn watch(shutdown: CancellationToken, second: &'static str) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        shutdown.cancel();
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: {second}");
        std::process::exit(130);
    });
    Ok(())
}
