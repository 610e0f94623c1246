//! The names of every metric the `sms-*` crates emit, and the few helpers
//! that emit them from more than one place.
//!
//! The library crates only *emit*, through the [`metrics`] facade (no I/O:
//! without an installed recorder every call is a no-op). Whoever runs them
//! installs a recorder: the platform installs the Prometheus exporter and
//! renders it at `GET /metrics`; an embedder installs its own (or none).
//! [`describe`] registers the help text of every metric with that recorder.
//!
//! Label values are always from small fixed sets (a dialect, a route
//! template, a purpose, an outcome): never a phone number, a user, a token or
//! a raw path.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};

/// HTTP requests answered: counter, labels `dialect`, `route`, `status`.
pub const HTTP_REQUESTS: &str = "sms_http_requests_total";
/// HTTP request handling time: histogram (seconds), labels `dialect`, `route`.
pub const HTTP_REQUEST_DURATION: &str = "sms_http_request_duration_seconds";
/// Verification codes issued (and handed to the sender): counter, label
/// `purpose`.
pub const CODES_ISSUED: &str = "sms_codes_issued_total";
/// Verification code checks: counter, labels `purpose`, `outcome`
/// (`ok`, `invalid`, `locked`).
pub const CODES_CHECKED: &str = "sms_codes_checked_total";
/// Requests refused by a limit: counter, label `limit` (see [`Limit`]).
pub const LIMIT_REFUSALS: &str = "sms_limit_refusals_total";
/// Messages offered to a carrier: counter, labels `carrier`, `outcome`
/// (`accepted`, `transient`, `permanent`, `unsupported`).
pub const CARRIER_MESSAGES: &str = "sms_carrier_messages_total";
/// Time of one carrier request: histogram (seconds), label `carrier`.
pub const CARRIER_REQUEST_DURATION: &str = "sms_carrier_request_duration_seconds";
/// Messages waiting in the delivery queue: gauge.
pub const DELIVERY_QUEUE_DEPTH: &str = "sms_delivery_queue_depth";
/// Open `hub` WebSocket sessions: gauge.
pub const WS_SESSIONS: &str = "sms_ws_sessions";
/// Pushes sent to live sessions (queued on the session's socket): counter,
/// label `kind` (`recv_msg`, `mobile_num`, `kickout`).
pub const PUSHES: &str = "sms_pushes_total";
/// Lease requests: counter, label `outcome` (`leased`, `no_numbers`,
/// `unavailable`, `insufficient_balance`, `refused`, `error`).
pub const LEASES: &str = "sms_leases_total";
/// Numbers in the pool: gauge, label `state` (`free`, `leased`).
pub const POOL_NUMBERS: &str = "sms_pool_numbers";
/// Time of one store call: histogram (seconds), label `op`
/// (`<port>.<method>`, e.g. `codes.decide_code`).
pub const STORE_OPERATION_DURATION: &str = "sms_store_operation_duration_seconds";
/// Ledger movements: counter, labels `kind` (`charge`, `debit`, `refund`,
/// `hold`, `capture`, `release`) and `outcome` (`applied`, `duplicate`,
/// `refused`, `error`).
pub const LEDGER_OPERATIONS: &str = "sms_ledger_operations_total";

/// Every metric: name, type, unit-free help text.
pub const ALL: [(&str, Kind, &str); 14] = [
    (
        HTTP_REQUESTS,
        Kind::Counter,
        "HTTP requests answered, by dialect, route template and status",
    ),
    (
        HTTP_REQUEST_DURATION,
        Kind::Histogram,
        "HTTP request handling time in seconds, by dialect and route template",
    ),
    (
        CODES_ISSUED,
        Kind::Counter,
        "Verification codes issued, by purpose",
    ),
    (
        CODES_CHECKED,
        Kind::Counter,
        "Verification code checks, by purpose and outcome",
    ),
    (
        LIMIT_REFUSALS,
        Kind::Counter,
        "Requests refused by a rate limit, cooldown or lockout, by limit",
    ),
    (
        CARRIER_MESSAGES,
        Kind::Counter,
        "Messages offered to a carrier, by carrier and outcome",
    ),
    (
        CARRIER_REQUEST_DURATION,
        Kind::Histogram,
        "Carrier request time in seconds, by carrier",
    ),
    (
        DELIVERY_QUEUE_DEPTH,
        Kind::Gauge,
        "Messages waiting in the delivery queue",
    ),
    (WS_SESSIONS, Kind::Gauge, "Open hub WebSocket sessions"),
    (
        PUSHES,
        Kind::Counter,
        "Pushes sent to live WebSocket sessions, by kind",
    ),
    (LEASES, Kind::Counter, "Number lease requests, by outcome"),
    (
        POOL_NUMBERS,
        Kind::Gauge,
        "Numbers in the pool, by state (free or leased)",
    ),
    (
        STORE_OPERATION_DURATION,
        Kind::Histogram,
        "Store call time in seconds, by operation",
    ),
    (
        LEDGER_OPERATIONS,
        Kind::Counter,
        "Ledger movements, by kind and outcome",
    ),
];

/// The type of a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of observations.
    Histogram,
}

/// Registers the help text (and, for durations, the unit) of every metric
/// in [`ALL`] with the installed recorder. Call once, after installing it.
pub fn describe() {
    for (name, kind, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => {
                metrics::describe_histogram!(name, metrics::Unit::Seconds, help)
            }
        }
    }
}

/// The limit that refused a request (label of [`LIMIT_REFUSALS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The resend cooldown of one address.
    CodeCooldown,
    /// The send caps per address and per client IP.
    CodeSendCap,
    /// The SMS-pumping breaker of a number prefix.
    PumpBreaker,
    /// The failed-check cap of one address.
    CodeCheckLock,
    /// The failed-login lockout of one account.
    LoginLockout,
    /// The existence-probe limit per client IP.
    Probe,
    /// The failed-password budget per client IP.
    PasswordBudget,
    /// The cap on concurrent password hashing.
    HashGate,
}

impl Limit {
    /// The label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::CodeCooldown => "code_cooldown",
            Self::CodeSendCap => "code_send_cap",
            Self::PumpBreaker => "pump_breaker",
            Self::CodeCheckLock => "code_check_lock",
            Self::LoginLockout => "login_lockout",
            Self::Probe => "probe",
            Self::PasswordBudget => "password_budget",
            Self::HashGate => "hash_gate",
        }
    }
}

/// Counts one refusal by `limit`.
pub fn limit_refused(limit: Limit) {
    metrics::counter!(LIMIT_REFUSALS, "limit" => limit.as_str()).increment(1);
}

/// Records one message offered to `carrier`: its outcome and how long the
/// carrier took.
pub fn carrier_offered(carrier: &str, outcome: &'static str, took: Duration) {
    let carrier = carrier.to_owned();
    metrics::counter!(CARRIER_MESSAGES, "carrier" => carrier.clone(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(CARRIER_REQUEST_DURATION, "carrier" => carrier).record(took);
}

/// A [`Carrier`] that records every offer to the carrier it wraps
/// ([`CARRIER_MESSAGES`], [`CARRIER_REQUEST_DURATION`]) under that
/// carrier's name. Wrap each configured carrier once, below any failover.
#[derive(Debug)]
pub struct MeteredCarrier {
    inner: Arc<dyn Carrier>,
}

impl MeteredCarrier {
    /// Records the offers to `inner`.
    pub fn new(inner: Arc<dyn Carrier>) -> Self {
        Self { inner }
    }

    /// `inner`, wrapped.
    pub fn wrap(inner: Arc<dyn Carrier>) -> Arc<dyn Carrier> {
        Arc::new(Self::new(inner))
    }
}

/// The outcome label of a carrier's answer.
pub fn carrier_outcome(r: &Result<Accepted, CarrierError>) -> &'static str {
    match r {
        Ok(_) => "accepted",
        Err(CarrierError::Transient { .. }) => "transient",
        Err(CarrierError::Permanent { .. }) => "permanent",
        Err(CarrierError::Unsupported(_)) => "unsupported",
    }
}

#[async_trait]
impl Carrier for MeteredCarrier {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let start = Instant::now();
        let r = self.inner.send(message).await;
        carrier_offered(self.inner.name(), carrier_outcome(&r), start.elapsed());
        r
    }

    async fn send_batch(&self, messages: &[CarrierMessage]) -> Vec<Result<Accepted, CarrierError>> {
        let start = Instant::now();
        let out = self.inner.send_batch(messages).await;
        let took = start.elapsed();
        let name = self.inner.name().to_owned();
        metrics::histogram!(CARRIER_REQUEST_DURATION, "carrier" => name.clone()).record(took);
        for r in &out {
            metrics::counter!(CARRIER_MESSAGES, "carrier" => name.clone(), "outcome" => carrier_outcome(r))
                .increment(1);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_prometheus_practice() {
        for (name, kind, help) in ALL {
            assert!(name.starts_with("sms_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
        let mut names: Vec<_> = ALL.iter().map(|m| m.0).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are distinct");
    }
}
