//! [`Resilient`]: one carrier with retries (exponential backoff with
//! jitter) on transient failures, a rate limit (a token bucket) and a
//! circuit breaker that skips a carrier which keeps failing. The platform
//! wraps every configured carrier in one, so a route's failover passes on
//! only after a carrier's retries are spent (carriers.md C2).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};
use sms_core::clock::Clock;
use sms_core::random::RandomSource;
use tokio::time::Instant;

/// How hard one carrier is tried (keys of every `[[carrier]]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeliveryPolicy {
    /// `retries`: further attempts after a transient failure (2).
    pub retries: u32,
    /// `backoff_ms`: the first retry's delay before jitter (200); doubles
    /// per retry up to 10 s; each delay is drawn uniformly from its upper
    /// half.
    pub backoff_ms: u64,
    /// `rate_per_sec`: messages per second at most (0: unlimited, the
    /// default); a burst of one second's worth is allowed.
    pub rate_per_sec: f64,
    /// `breaker_failures`: consecutive failed messages that open the
    /// breaker (5).
    pub breaker_failures: u32,
    /// `breaker_open_secs`: how long an open breaker skips the carrier
    /// before one trial message (30).
    pub breaker_open_secs: i64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            backoff_ms: 200,
            rate_per_sec: 0.0,
            breaker_failures: 5,
            breaker_open_secs: 30,
        }
    }
}

#[derive(Debug)]
struct State {
    failures: u32,
    open_until: Option<i64>,
    tokens: f64,
    refilled: Option<Instant>,
}

/// A carrier with retries, a rate limit and a circuit breaker.
pub struct Resilient {
    inner: Arc<dyn Carrier>,
    policy: DeliveryPolicy,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    state: Mutex<State>,
}

impl fmt::Debug for Resilient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Resilient {
    /// Wraps `inner`.
    pub fn new(
        inner: Arc<dyn Carrier>,
        policy: DeliveryPolicy,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            inner,
            policy,
            clock,
            random,
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                tokens: policy.rate_per_sec.max(1.0),
                refilled: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the breaker lets a message through now.
    pub fn is_open(&self) -> bool {
        let now = self.clock.unix();
        matches!(self.state().open_until, Some(t) if now < t)
    }

    /// Takes a token, or says how long to wait for one.
    fn take_token(&self) -> Option<Duration> {
        let rate = self.policy.rate_per_sec;
        if rate <= 0.0 {
            return None;
        }
        let mut s = self.state();
        let now = Instant::now();
        let last = s.refilled.unwrap_or(now);
        s.tokens = (s.tokens + now.duration_since(last).as_secs_f64() * rate).min(rate.max(1.0));
        s.refilled = Some(now);
        if s.tokens >= 1.0 {
            s.tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - s.tokens) / rate))
        }
    }

    /// The delay before retry `attempt` (0-based): the upper half of
    /// `backoff · 2^attempt`, capped at 10 s.
    pub fn backoff(&self, attempt: u32) -> Duration {
        Duration::from_millis(sms_core::delivery::jittered_backoff(
            self.policy.backoff_ms,
            attempt,
            10_000,
            self.random.as_ref(),
        ))
    }

    fn record(&self, ok: bool) {
        let mut s = self.state();
        if ok {
            s.failures = 0;
            s.open_until = None;
            return;
        }
        s.failures += 1;
        if s.failures >= self.policy.breaker_failures.max(1) {
            s.open_until = Some(self.clock.unix() + self.policy.breaker_open_secs.max(1));
            tracing::warn!(carrier = self.inner.name(), "circuit breaker open");
        }
    }
}

#[async_trait]
impl Carrier for Resilient {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        if self.is_open() {
            return Err(CarrierError::transient(
                "circuit-open",
                "carrier skipped for a while",
            ));
        }
        let mut attempt = 0;
        loop {
            while let Some(wait) = self.take_token() {
                tokio::time::sleep(wait).await;
            }
            match self.inner.send(message).await {
                Ok(a) => {
                    self.record(true);
                    return Ok(a);
                }
                Err(e) if e.is_transient() && attempt < self.policy.retries => {
                    tokio::time::sleep(self.backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    // A refusal of this one message says nothing about the
                    // carrier's health; only transient failures count.
                    if e.is_transient() {
                        self.record(false);
                    }
                    return Err(e);
                }
            }
        }
    }

    /// One batch call to the carrier (after the rate limit's tokens for
    /// every message); messages it failed transiently are then retried one
    /// by one as [`send`](Carrier::send) does.
    async fn send_batch(&self, messages: &[CarrierMessage]) -> Vec<Result<Accepted, CarrierError>> {
        if self.is_open() {
            let e = CarrierError::transient("circuit-open", "carrier skipped for a while");
            return vec![Err(e); messages.len()];
        }
        for _ in messages {
            while let Some(wait) = self.take_token() {
                tokio::time::sleep(wait).await;
            }
        }
        let mut out = self.inner.send_batch(messages).await;
        for (m, r) in messages.iter().zip(out.iter_mut()) {
            match r {
                Ok(_) => self.record(true),
                Err(e) if e.is_transient() => *r = self.send(m).await,
                Err(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::carrier::RecordingCarrier;
    use sms_core::clock::ManualClock;
    use sms_core::random::SeededRandom;
    use sms_core::sender::Channel;

    fn msg() -> CarrierMessage {
        CarrierMessage::new_code("k", Channel::Sms, "13800000000", "x", "1")
    }

    fn wrap(
        inner: Arc<RecordingCarrier>,
        clock: Arc<ManualClock>,
        policy: DeliveryPolicy,
    ) -> Resilient {
        Resilient::new(inner, policy, clock, Arc::new(SeededRandom::new(1)))
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_then_reported() {
        let inner = Arc::new(RecordingCarrier::new("c"));
        let r = wrap(
            inner.clone(),
            Arc::new(ManualClock::at(0)),
            DeliveryPolicy::default(),
        );
        inner.fail_next(CarrierError::transient("throttled", "t"));
        inner.fail_next(CarrierError::transient("throttled", "t"));
        assert!(r.send(&msg()).await.is_ok());
        assert_eq!(inner.offered().len(), 3);
        inner.fail_all(Some(CarrierError::transient("503", "down")));
        assert!(r.send(&msg()).await.unwrap_err().is_transient());
        assert_eq!(inner.offered().len(), 6);
        // A permanent refusal is not retried.
        inner.fail_all(None);
        inner.fail_next(CarrierError::permanent("bad", "number"));
        assert!(r.send(&msg()).await.is_err());
        assert_eq!(inner.offered().len(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_skips_then_tries_again() {
        let inner = Arc::new(RecordingCarrier::new("c"));
        let clock = Arc::new(ManualClock::at(100));
        let policy = DeliveryPolicy {
            retries: 0,
            breaker_failures: 2,
            breaker_open_secs: 30,
            ..DeliveryPolicy::default()
        };
        let r = wrap(inner.clone(), clock.clone(), policy);
        inner.fail_all(Some(CarrierError::transient("503", "down")));
        assert!(r.send(&msg()).await.is_err());
        assert!(!r.is_open());
        assert!(r.send(&msg()).await.is_err());
        assert!(r.is_open());
        let offered = inner.offered().len();
        let e = r.send(&msg()).await.unwrap_err();
        assert!(matches!(&e, CarrierError::Transient { code, .. } if code == "circuit-open"));
        assert_eq!(inner.offered().len(), offered, "skipped while open");
        inner.fail_all(None);
        clock.advance(30);
        assert!(r.send(&msg()).await.is_ok());
        assert!(!r.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_spaces_messages() {
        let inner = Arc::new(RecordingCarrier::new("c"));
        let policy = DeliveryPolicy {
            rate_per_sec: 2.0,
            ..DeliveryPolicy::default()
        };
        let r = wrap(inner.clone(), Arc::new(ManualClock::at(0)), policy);
        let start = Instant::now();
        for _ in 0..6 {
            r.send(&msg()).await.unwrap();
        }
        // Paused time: the waits are virtual and exact.
        assert!(Instant::now().duration_since(start) >= Duration::from_secs(2));
        assert_eq!(inner.accepted().len(), 6);
    }

    #[test]
    fn backoff_grows_with_jitter_in_the_upper_half() {
        let r = wrap(
            Arc::new(RecordingCarrier::new("c")),
            Arc::new(ManualClock::at(0)),
            DeliveryPolicy::default(),
        );
        for attempt in 0..8 {
            let full = Duration::from_millis(200 * (1 << attempt)).min(Duration::from_secs(10));
            let d = r.backoff(attempt);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
    }
}
