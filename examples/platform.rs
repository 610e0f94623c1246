//! The SMS platform: every dialect on one port over the sled store.
//!
//! ```text
//! cargo run --release --example platform -- --root-password 'change-me!' --outbox outbox.jsonl
//! ```
//! `--help` lists every flag and its environment variable.

use clap::Parser;
use sms_platform::{Platform, PlatformArgs};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let requested = std::env::var("RUST_LOG").ok();
    tracing_subscriber::fmt()
        .with_env_filter(sms_platform::logging::filter(requested.as_deref()))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = PlatformArgs::parse();
    let running = match Platform::new(args).start().await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    let signal = sms_platform::signals::shutdown_signal().await;
    tracing::info!("{signal}: shutting down gracefully");
    running.shutdown().await;
    std::process::ExitCode::SUCCESS
}
