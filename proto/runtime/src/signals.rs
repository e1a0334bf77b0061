//! Shutdown on signals: the first SIGTERM or SIGINT cancels the service's shutdown token, a second one exits at once.

use tokio_util::sync::CancellationToken;

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
