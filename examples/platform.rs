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
    let args = PlatformArgs::parse();
    let requested = std::env::var("RUST_LOG").ok();
    if let Err(e) = sms_platform::logging::init(args.log_format, requested.as_deref()) {
        eprintln!("cannot set up logging: {e}");
        return std::process::ExitCode::FAILURE;
    }
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
