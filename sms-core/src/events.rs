//! Events the front ends push to users (a received SMS, a kickout), and the
//! [`EventHub`] port that carries them to live sessions. [`LocalEventHub`]
//! serves one process in memory; a multi-node backend serves the same trait
//! across nodes.
//!
//! Events are wake-ups for live sessions only: anything that must not be lost
//! (a received SMS) is first written to the user's mailbox
//! ([`crate::store::QueueStore`]), and a session that logs in later reads it
//! from there.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use serde::{Deserialize, Serialize};

use crate::secret::TokenHash;
use crate::user::UserId;

/// A message waiting in a user's mailbox until a session delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Push {
    /// An SMS reached a number the user leases (hub `PushRecvMsg`).
    RecvMsg {
        /// The number, 11-digit form.
        mobile: String,
        /// The SMS text.
        msg: String,
        /// When it arrived (Unix s); 0 when unknown (entries stored before
        /// this field existed, which retention never drops by age).
        #[serde(default)]
        at: i64,
    },
}

impl Push {
    /// When the push was made (Unix s; 0 when unknown).
    pub fn at(&self) -> i64 {
        match self {
            Self::RecvMsg { at, .. } => *at,
        }
    }
}

/// Why sessions are closed (hub `PushKickout` `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KickoutReason {
    /// 1: server shutdown or maintenance.
    Shutdown,
    /// 2: the password was changed.
    PasswordChanged,
    /// 3: the account was banned.
    Banned,
}

impl KickoutReason {
    /// The seed's `state` value.
    pub fn state(self) -> u8 {
        match self {
            Self::Shutdown => 1,
            Self::PasswordChanged => 2,
            Self::Banned => 3,
        }
    }
}

/// One event for one user's live sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A mailbox entry to deliver (and acknowledge once written).
    Push {
        /// Mailbox sequence number.
        seq: u64,
        /// The message.
        push: Push,
    },
    /// Close every session of the user, except one logged in with `spare`.
    Kickout {
        /// Why.
        reason: KickoutReason,
        /// The session to leave open (the one that changed the password).
        spare: Option<TokenHash>,
    },
}

/// Delivers events to the live sessions of a user.
///
/// # Contract
/// `publish` never blocks and never fails: a subscriber that cannot keep up
/// (its queue is full) is dropped — its [`Subscription`] sees the end
/// ([`Subscription::recv`] answers `None`) — so one slow client never holds
/// up others.
pub trait EventHub: Debug + Send + Sync + 'static {
    /// Sends `event` to every live subscription of `user`.
    fn publish(&self, user: &UserId, event: Event);
    /// Subscribes to `user`'s events with a queue of `capacity`.
    fn subscribe(&self, user: &UserId, capacity: usize) -> Subscription;
}

/// One subscription's queue, shared by its [`Subscription`] and the
/// [`SubscriptionSender`] a hub keeps.
#[derive(Debug)]
struct Queue {
    capacity: usize,
    state: Mutex<QueueState>,
}

#[derive(Debug, Default)]
struct QueueState {
    /// Events not yet received; no allocation while empty.
    events: VecDeque<Arc<Event>>,
    /// The hub dropped this subscriber (it fell behind, or the hub is gone).
    closed: bool,
    /// The receiving task, while it waits.
    waker: Option<Waker>,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the subscription: its receiver sees `None` once it has taken
    /// what was queued.
    fn close(&self) {
        let waker = {
            let mut st = self.state();
            st.closed = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The receiving end of a subscription to one user's events
/// ([`EventHub::subscribe`]).
///
/// Small while idle: one allocation of under a hundred bytes, and a queue
/// that is allocated only while events wait in it. Dropping it unsubscribes
/// (the hub forgets it at its next publish or subscribe for the user).
#[derive(Debug)]
pub struct Subscription {
    queue: Arc<Queue>,
}

/// The sending end of a [`Subscription`], kept by an event hub. Dropping it
/// ends the subscription (its receiver sees `None`).
#[derive(Debug)]
pub struct SubscriptionSender {
    queue: Arc<Queue>,
}

/// A new subscription whose queue holds at most `capacity` events (at least
/// one): the sender for the hub, the receiver for the session.
pub fn subscription(capacity: usize) -> (SubscriptionSender, Subscription) {
    let queue = Arc::new(Queue {
        capacity: capacity.max(1),
        state: Mutex::new(QueueState::default()),
    });
    (
        SubscriptionSender {
            queue: queue.clone(),
        },
        Subscription { queue },
    )
}

impl Subscription {
    /// The next event; `None` once the hub dropped this subscriber (it fell
    /// behind) or the hub is gone, after the events queued before that.
    ///
    /// Cancel-safe: an event is taken only when this returns it.
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next event (see [`recv`](Self::recv)).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let mut st = self.queue.state();
        if let Some(ev) = st.events.pop_front() {
            if st.events.is_empty() {
                // Idle subscriptions hold no queue memory.
                st.events = VecDeque::new();
            }
            drop(st);
            return Poll::Ready(Some(Arc::unwrap_or_clone(ev)));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        match &mut st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl SubscriptionSender {
    /// Queues `event`; `false` (and the subscription ended) if its queue was
    /// full, `false` also if the receiver is gone or the subscription had
    /// ended already.
    pub fn send(&self, event: Arc<Event>) -> bool {
        if self.is_closed() {
            return false;
        }
        let mut st = self.queue.state();
        if st.closed {
            return false;
        }
        if st.events.len() >= self.queue.capacity {
            st.closed = true;
        } else {
            st.events.push_back(event);
        }
        let queued = !st.closed;
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// True once the receiver was dropped.
    pub fn is_closed(&self) -> bool {
        Arc::strong_count(&self.queue) < 2
    }
}

impl Drop for SubscriptionSender {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// The in-process hub.
#[derive(Debug, Default, Clone)]
pub struct LocalEventHub {
    subs: Arc<Mutex<HashMap<UserId, Vec<SubscriptionSender>>>>,
}

impl LocalEventHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Live subscriptions of `user` (for tests and metrics).
    pub fn subscribers(&self, user: &UserId) -> usize {
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(user) {
            v.retain(|s| !s.is_closed());
            v.len()
        } else {
            0
        }
    }
}

impl EventHub for LocalEventHub {
    fn publish(&self, user: &UserId, event: Event) {
        // One copy of the event, shared by every subscription.
        let event = Arc::new(event);
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(user) {
            v.retain(|s| s.send(event.clone()));
            if v.is_empty() {
                g.remove(user);
            }
        }
    }

    fn subscribe(&self, user: &UserId, capacity: usize) -> Subscription {
        let (tx, rx) = subscription(capacity);
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        let v = g.entry(user.clone()).or_default();
        // Forget subscriptions whose receivers are gone (reconnects, logouts).
        v.retain(|s| !s.is_closed());
        v.push(tx);
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slow_subscriber_is_dropped_others_served() {
        let hub = LocalEventHub::new();
        let u = UserId::from_string("u".into());
        let mut slow = hub.subscribe(&u, 1);
        let mut fast = hub.subscribe(&u, 8);
        let ev = |seq| Event::Push {
            seq,
            push: Push::RecvMsg {
                mobile: "13811112222".into(),
                msg: "x".into(),
                at: 0,
            },
        };
        hub.publish(&u, ev(1));
        hub.publish(&u, ev(2)); // slow is full: dropped
        assert_eq!(fast.recv().await, Some(ev(1)));
        assert_eq!(fast.recv().await, Some(ev(2)));
        assert_eq!(slow.recv().await, Some(ev(1)));
        assert_eq!(slow.recv().await, None, "dropped subscriber sees the end");
        assert_eq!(hub.subscribers(&u), 1);
    }

    fn kick() -> Event {
        Event::Kickout {
            reason: KickoutReason::Shutdown,
            spare: None,
        }
    }

    #[tokio::test]
    async fn dropping_the_hub_ends_subscriptions_after_what_was_queued() {
        let hub = LocalEventHub::new();
        let u = UserId::from_string("u".into());
        let mut sub = hub.subscribe(&u, 4);
        hub.publish(&u, kick());
        drop(hub);
        assert_eq!(sub.recv().await, Some(kick()));
        assert_eq!(sub.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_and_a_drained_queue_holds_no_memory() {
        let hub = LocalEventHub::new();
        let u = UserId::from_string("u".into());
        let mut sub = hub.subscribe(&u, 4);
        assert_eq!(sub.queue.state().events.capacity(), 0, "nothing allocated");
        let publisher = hub.clone();
        let user = u.clone();
        let waiter = tokio::spawn(async move { sub.recv().await.map(|e| (e, sub)) });
        tokio::task::yield_now().await;
        publisher.publish(&user, kick());
        let (ev, sub) = waiter.await.unwrap().expect("an event");
        assert_eq!(ev, kick());
        assert_eq!(
            sub.queue.state().events.capacity(),
            0,
            "released once drained"
        );
    }

    #[test]
    fn a_dropped_subscription_is_forgotten() {
        let hub = LocalEventHub::new();
        let u = UserId::from_string("u".into());
        let a = hub.subscribe(&u, 4);
        let _b = hub.subscribe(&u, 4);
        assert_eq!(hub.subscribers(&u), 2);
        drop(a);
        assert_eq!(hub.subscribers(&u), 1);
        hub.publish(&u, kick());
        assert_eq!(hub.subscribers(&u), 1);
    }

    #[test]
    fn a_sender_reports_a_full_queue_and_a_gone_receiver() {
        let (tx, rx) = subscription(1);
        assert!(tx.send(Arc::new(kick())));
        assert!(!tx.send(Arc::new(kick())), "full: the subscription ends");
        assert!(!tx.send(Arc::new(kick())), "ended");
        let (tx, rx2) = subscription(0);
        drop(rx2);
        assert!(tx.is_closed());
        assert!(!tx.send(Arc::new(kick())));
        drop(rx);
    }
}
