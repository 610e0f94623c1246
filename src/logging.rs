//! The platform's logs: the subscriber of `--log-format` ([`init`]) and the
//! log filter: whatever the operator asks for (`RUST_LOG`),
//! some crates are capped at `info`:
//!
//! * those that print request or frame payloads at `debug`/`trace`, which
//!   carry codes and tokens ([`PAYLOAD_TARGETS`]);
//! * sled, whose `trace` events are emitted from crossbeam-epoch destructors
//!   while a thread's locals are being torn down, where the fmt layer's
//!   thread-local buffer is already gone: at `trace` the process aborts when
//!   a worker thread exits.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::{SubscriberInitExt, TryInitError};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

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

/// Installs the platform's log subscriber on stderr: `format` as
/// `--log-format` asks, filtered by [`filter`] over `requested` (e.g.
/// `RUST_LOG`). Text has colour only when stderr is a terminal; JSON is one
/// object per line with an RFC 3339 `timestamp` and the event's fields at
/// the top level (the access line of each HTTP request carries
/// `request_id`, `dialect`, `route`, `status` and `duration_ms`). Fails when
/// a global subscriber is already set.
pub fn init(format: LogFormat, requested: Option<&str>) -> Result<(), TryInitError> {
    init_with_writer(format, requested, std::io::stderr)
}

/// [`init`] with another writer (tests capture the lines).
pub fn init_with_writer<W>(
    format: LogFormat,
    requested: Option<&str>,
    writer: W,
) -> Result<(), TryInitError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(requested))
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            // Colour only for a person at a terminal, never in files or
            // journals.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .finish()
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .finish()
            .try_init(),
    }
}
