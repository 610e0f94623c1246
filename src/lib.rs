//! # sms-platform
//!
//! The platform server assembled from the `sms-*` crates: every dialect on
//! one listener (decision G1), over the sled store (or PostgreSQL with `--store`, for several nodes), with the outbox sender of
//! decision G9 and the flags of decision G10. `examples/platform.rs` is a thin
//! `main` around [`Platform`]; the integration tests start the same thing on a
//! free port.
#![deny(missing_docs)]

pub mod carriers;
pub mod config;
pub mod console;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod outbox;
pub mod platform;
pub mod router;
pub mod secrets;
pub mod signals;
pub mod workers;

pub use config::{LogFormat, PlatformArgs};
pub use platform::{Platform, PlatformError, RunningPlatform};
pub use workers::{BackgroundWorkers, WorkersHealth};

/// The README's Rust snippets, compiled as doc tests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
