//! The platform's log filter: whatever the operator asks for (`RUST_LOG`),
//! some crates are capped at `info`:
//!
//! * those that print request or frame payloads at `debug`/`trace`, which
//!   carry codes and tokens ([`PAYLOAD_TARGETS`]);
//! * sled, whose `trace` events are emitted from crossbeam-epoch destructors
//!   while a thread's locals are being torn down, where the fmt layer's
//!   thread-local buffer is already gone: at `trace` the process aborts when
//!   a worker thread exits.

use tracing_subscriber::EnvFilter;

/// Targets that log payloads at `debug`/`trace`.
pub const PAYLOAD_TARGETS: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "h2",
    "hyper_util",
];

/// Targets that log from thread-local destructors.
pub const TEARDOWN_TARGETS: &[&str] = &["sled"];

/// The filter for `requested` (a `RUST_LOG`-style directive list; `info`
/// when none), with [`PAYLOAD_TARGETS`] and [`TEARDOWN_TARGETS`] capped at
/// `info`.
pub fn filter(requested: Option<&str>) -> EnvFilter {
    let mut directives = requested.unwrap_or("info").trim().to_owned();
    if directives.is_empty() {
        directives.push_str("info");
    }
    for t in PAYLOAD_TARGETS.iter().chain(TEARDOWN_TARGETS) {
        directives.push_str(&format!(",{t}=info"));
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}
