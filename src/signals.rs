//! The signals that ask the platform to stop.

/// Waits for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what docker, systemd and
/// Kubernetes send to stop a service); returns the signal's name. Either
/// way the caller shuts down gracefully: every `hub` WebSocket session gets
/// `PushKickout` state 1.
pub async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => "Ctrl-C",
                _ = term.recv() => "SIGTERM",
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    "Ctrl-C"
}
