//! The delivery queue (carriers.md C2): a message is stored before the
//! client is told it was accepted, offered to its carrier route at once,
//! and, when the route only failed transiently, offered again later by a
//! worker with exponential backoff and jitter. A message a carrier accepted
//! is never offered again.
//!
//! [`DeliveryQueue`] is the store port (one call per decision);
//! [`MemoryDeliveryQueue`] serves it in memory. [`Delivery`] runs the
//! decisions; [`QueuedSender`] serves [`CodeSender`] through it.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::carrier::{Carrier, CarrierError, CarrierMessage, CarrierSender};
use crate::clock::Clock;
use crate::error::StoreError;
use crate::random::RandomSource;
use crate::sender::{CodeSender, OutboundMessage, SendError};

/// Where a queued message stands.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QueueState {
    /// Waiting for an offer at `next_at` (unix s).
    Queued {
        /// When it is due.
        next_at: i64,
        /// Offers so far.
        attempts: u32,
    },
    /// A carrier accepted it: never offered again.
    Sent {
        /// The carrier's id.
        provider_id: String,
    },
    /// Every carrier refused it for good, or its attempts ran out.
    Failed {
        /// The last provider code.
        code: String,
    },
}

/// One queued message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QueuedMessage {
    /// The message (its idempotency key is the queue key).
    pub message: CarrierMessage,
    /// Where it stands.
    pub state: QueueState,
}

impl QueuedMessage {
    /// A new message, due at `now`.
    pub fn new(message: CarrierMessage, now: i64) -> Self {
        Self {
            message,
            state: QueueState::Queued {
                next_at: now,
                attempts: 0,
            },
        }
    }

    /// Whether it is waiting and due at `now`.
    pub fn is_due(&self, now: i64) -> bool {
        matches!(self.state, QueueState::Queued { next_at, .. } if next_at <= now)
    }

    /// The message after `decision`; `None` when it is no longer queued
    /// (a `Sent` or `Failed` message never changes). Every store applies
    /// this atomically.
    pub fn apply(&self, decision: QueueDecision) -> Option<Self> {
        let QueueState::Queued { attempts, .. } = self.state else {
            return None;
        };
        let state = match decision {
            QueueDecision::Sent(provider_id) => QueueState::Sent { provider_id },
            QueueDecision::Retry { next_at } => QueueState::Queued {
                next_at,
                attempts: attempts + 1,
            },
            QueueDecision::Failed(code) => QueueState::Failed { code },
        };
        Some(Self {
            message: self.message.clone(),
            state,
        })
    }
}

/// The outcome of one offer, as the queue records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueDecision {
    /// Accepted with this id.
    Sent(String),
    /// Offer again at `next_at`.
    Retry {
        /// When.
        next_at: i64,
    },
    /// Give up with this code.
    Failed(String),
}

/// Durable storage of queued messages.
///
/// # Contract
/// * [`enqueue`](Self::enqueue) stores a message `Queued` (due now) unless
///   its idempotency key is already known; it answers whether it stored it.
///   Durable when it returns `Ok`.
/// * [`due`](Self::due) lists `Queued` messages with `next_at <= now`,
///   oldest first, at most `limit`.
/// * [`decide`](Self::decide) applies one decision atomically, and only to a
///   `Queued` message: a `Sent` or `Failed` one never changes again (so an
///   accepted message is never offered twice, whoever raced).
#[async_trait]
pub trait DeliveryQueue: Debug + Send + Sync + 'static {
    /// Stores a new message.
    async fn enqueue(&self, message: CarrierMessage, now: i64) -> Result<bool, StoreError>;
    /// Messages due at `now`.
    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError>;
    /// Applies a decision to message `key`; whether it applied.
    async fn decide(&self, key: &str, decision: QueueDecision) -> Result<bool, StoreError>;
    /// A message by key.
    async fn get(&self, key: &str) -> Result<Option<QueuedMessage>, StoreError>;
    /// How many messages are `Queued` (due or waiting for a retry): the
    /// queue gauge. The default counts [`due`](Self::due) at the end of
    /// time; a store with a cheaper count overrides it.
    async fn depth(&self) -> Result<usize, StoreError> {
        Ok(self.due(i64::MAX, usize::MAX).await?.len())
    }
}

/// [`DeliveryQueue`] in memory (tests, embedders without a disk).
#[derive(Debug, Default)]
pub struct MemoryDeliveryQueue {
    inner: Mutex<BTreeMap<String, (u64, QueuedMessage)>>,
    seq: std::sync::atomic::AtomicU64,
}

impl MemoryDeliveryQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (u64, QueuedMessage)>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl DeliveryQueue for MemoryDeliveryQueue {
    async fn enqueue(&self, message: CarrierMessage, now: i64) -> Result<bool, StoreError> {
        let mut m = self.map();
        if m.contains_key(&message.idempotency_key) {
            return Ok(false);
        }
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.insert(
            message.idempotency_key.clone(),
            (seq, QueuedMessage::new(message, now)),
        );
        Ok(true)
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        let m = self.map();
        let mut v: Vec<&(u64, QueuedMessage)> = m
            .values()
            .filter(
                |(_, q)| matches!(q.state, QueueState::Queued { next_at, .. } if next_at <= now),
            )
            .collect();
        v.sort_by_key(|(seq, _)| *seq);
        Ok(v.into_iter().take(limit).map(|(_, q)| q.clone()).collect())
    }

    async fn decide(&self, key: &str, decision: QueueDecision) -> Result<bool, StoreError> {
        let mut m = self.map();
        let Some((_, q)) = m.get_mut(key) else {
            return Ok(false);
        };
        match q.apply(decision) {
            Some(next) => {
                *q = next;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<QueuedMessage>, StoreError> {
        Ok(self.map().get(key).map(|(_, q)| q.clone()))
    }
}

/// Exponential backoff with jitter: `base · 2^attempt`, capped at `cap`,
/// then drawn uniformly from the upper half (so retries of many messages
/// spread out but never come sooner than half the delay). Any unit.
pub fn jittered_backoff(base: u64, attempt: u32, cap: u64, random: &dyn RandomSource) -> u64 {
    let full = base.saturating_mul(1u64 << attempt.min(32)).min(cap);
    let half = full / 2;
    let spread = u32::try_from(full - half).unwrap_or(u32::MAX);
    half + u64::from(random.below(spread.saturating_add(1)))
}

/// How the queue retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Offers before a message fails for good (8).
    pub max_attempts: u32,
    /// The first retry's delay in seconds (5); doubles per attempt up to
    /// `max_backoff_secs`, each delay drawn from its upper half (jitter).
    pub backoff_secs: i64,
    /// The longest delay (600).
    pub max_backoff_secs: i64,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff_secs: 5,
            max_backoff_secs: 600,
        }
    }
}

/// What an offer came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Accepted.
    Sent(String),
    /// Only delayed: still queued.
    Delayed,
    /// Refused for good.
    Failed(CarrierError),
}

/// Picks the carrier route of a message.
pub type RouteFn = Arc<dyn Fn(&CarrierMessage) -> Arc<dyn Carrier> + Send + Sync>;

#[derive(Clone)]
struct Router(RouteFn);

impl Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<route>")
    }
}

/// Runs the queue's decisions over one carrier route per message.
#[derive(Debug, Clone)]
pub struct Delivery {
    queue: Arc<dyn DeliveryQueue>,
    route: Router,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    policy: QueuePolicy,
}

impl Delivery {
    /// A queue whose messages go to `route(message)`.
    pub fn new(
        queue: Arc<dyn DeliveryQueue>,
        route: RouteFn,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
        policy: QueuePolicy,
    ) -> Self {
        Self {
            queue,
            route: Router(route),
            clock,
            random,
            policy,
        }
    }

    /// The delay before offer `attempts + 1`.
    pub fn backoff(&self, attempts: u32) -> i64 {
        let secs = jittered_backoff(
            self.policy.backoff_secs.max(1) as u64,
            attempts,
            self.policy.max_backoff_secs.max(1) as u64,
            self.random.as_ref(),
        );
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// Stores `message` and offers it once. A repeat of a known key is not
    /// offered again: it answers from the stored state.
    pub async fn submit(&self, message: CarrierMessage) -> Result<Offer, StoreError> {
        let key = message.idempotency_key.clone();
        if !self
            .queue
            .enqueue(message.clone(), self.clock.unix())
            .await?
        {
            return Ok(match self.queue.get(&key).await?.map(|q| q.state) {
                Some(QueueState::Sent { provider_id }) => Offer::Sent(provider_id),
                Some(QueueState::Failed { code }) => {
                    Offer::Failed(CarrierError::permanent(code, "refused"))
                }
                _ => Offer::Delayed,
            });
        }
        self.offer(&message, 0).await
    }

    async fn offer(&self, message: &CarrierMessage, attempts: u32) -> Result<Offer, StoreError> {
        let key = &message.idempotency_key;
        let route = (self.route.0)(message);
        match route.send(message).await {
            Ok(a) => {
                self.queue
                    .decide(key, QueueDecision::Sent(a.provider_id.clone()))
                    .await?;
                Ok(Offer::Sent(a.provider_id))
            }
            Err(e) if e.is_transient() && attempts + 1 < self.policy.max_attempts => {
                let next_at = self.clock.unix() + self.backoff(attempts);
                self.queue
                    .decide(key, QueueDecision::Retry { next_at })
                    .await?;
                Ok(Offer::Delayed)
            }
            Err(e) => {
                let code = match &e {
                    CarrierError::Transient { code, .. } | CarrierError::Permanent { code, .. } => {
                        code.clone()
                    }
                    CarrierError::Unsupported(_) => "unsupported".into(),
                };
                self.queue.decide(key, QueueDecision::Failed(code)).await?;
                Ok(Offer::Failed(e))
            }
        }
    }

    /// Offers every due message once (the worker's pass); how many. Then
    /// sets the queue gauge (`sms_delivery_queue_depth`) from
    /// [`DeliveryQueue::depth`].
    pub async fn work_once(&self, limit: usize) -> Result<usize, StoreError> {
        let due = self.queue.due(self.clock.unix(), limit).await?;
        for q in &due {
            if let QueueState::Queued { attempts, .. } = q.state {
                self.offer(&q.message, attempts).await?;
            }
        }
        let depth = self.queue.depth().await?;
        metrics::gauge!(crate::metrics::DELIVERY_QUEUE_DEPTH).set(depth as f64);
        Ok(due.len())
    }
}

/// [`CodeSender`] through a [`Delivery`]: a code is queued, offered at
/// once; `Ok` when accepted or only delayed, an error when every carrier
/// refused it (the dialect's send failure, carriers.md C2).
#[derive(Debug, Clone)]
pub struct QueuedSender {
    delivery: Delivery,
}

impl QueuedSender {
    /// Codes through `delivery`.
    pub fn new(delivery: Delivery) -> Self {
        Self { delivery }
    }
}

#[async_trait]
impl CodeSender for QueuedSender {
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError> {
        match self.delivery.submit(CarrierSender::message(message)).await {
            Ok(Offer::Sent(_) | Offer::Delayed) => Ok(()),
            Ok(Offer::Failed(e)) => Err(SendError(e.to_string())),
            Err(e) => Err(SendError(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carrier::RecordingCarrier;
    use crate::clock::ManualClock;
    use crate::random::SeededRandom;
    use crate::sender::Channel;

    fn msg(key: &str) -> CarrierMessage {
        CarrierMessage::new_code(key, Channel::Sms, "13800000000", "x", "1")
    }

    fn setup() -> (
        Delivery,
        Arc<RecordingCarrier>,
        Arc<ManualClock>,
        Arc<MemoryDeliveryQueue>,
    ) {
        let carrier = Arc::new(RecordingCarrier::new("c"));
        let clock = Arc::new(ManualClock::at(1000));
        let queue = Arc::new(MemoryDeliveryQueue::new());
        let c2: Arc<dyn Carrier> = carrier.clone();
        let d = Delivery::new(
            queue.clone(),
            Arc::new(move |_| c2.clone()),
            clock.clone(),
            Arc::new(SeededRandom::new(3)),
            QueuePolicy {
                max_attempts: 3,
                ..QueuePolicy::default()
            },
        );
        (d, carrier, clock, queue)
    }

    #[tokio::test]
    async fn delayed_messages_are_retried_by_the_worker_and_never_resent() {
        let (d, carrier, clock, queue) = setup();
        carrier.fail_next(CarrierError::transient("503", "down"));
        assert_eq!(d.submit(msg("a")).await.unwrap(), Offer::Delayed);
        // Not due yet.
        assert_eq!(d.work_once(10).await.unwrap(), 0);
        clock.advance(d.policy.max_backoff_secs);
        assert_eq!(d.work_once(10).await.unwrap(), 1);
        assert_eq!(
            queue.get("a").await.unwrap().unwrap().state,
            QueueState::Sent {
                provider_id: "c-1".into()
            }
        );
        // A repeat of the key is answered from the queue, not offered.
        assert_eq!(d.submit(msg("a")).await.unwrap(), Offer::Sent("c-1".into()));
        assert_eq!(carrier.offered().len(), 2);
        clock.advance(10_000);
        assert_eq!(d.work_once(10).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn permanent_refusal_and_exhausted_attempts_fail() {
        let (d, carrier, clock, _queue) = setup();
        carrier.fail_next(CarrierError::permanent("bad", "number"));
        assert!(matches!(
            d.submit(msg("p")).await.unwrap(),
            Offer::Failed(_)
        ));
        carrier.fail_all(Some(CarrierError::transient("503", "down")));
        assert_eq!(d.submit(msg("t")).await.unwrap(), Offer::Delayed);
        for _ in 0..5 {
            clock.advance(d.policy.max_backoff_secs);
            d.work_once(10).await.unwrap();
        }
        assert!(matches!(
            d.queue.get("t").await.unwrap().unwrap().state,
            QueueState::Failed { .. }
        ));
        assert_eq!(
            carrier
                .offered()
                .iter()
                .filter(|m| m.idempotency_key == "t")
                .count(),
            3
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half() {
        let (d, ..) = setup();
        for a in 0..10 {
            let full = (5i64 << a).min(600);
            let b = d.backoff(a);
            assert!(b >= full / 2 && b <= full, "{a}: {b}");
        }
    }
}
