//! Events the front ends push to users (a received SMS, a kickout), and the
//! [`EventHub`] port that carries them to live sessions. [`LocalEventHub`]
//! serves one process in memory; a multi-node backend serves the same trait
//! across nodes.
//!
//! Events are wake-ups for live sessions only: anything that must not be lost
//! (a received SMS) is first written to the user's mailbox
//! ([`crate::store::QueueStore`]), and a session that logs in later reads it
//! from there.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

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
/// (its queue is full) is dropped — its receiver sees the channel closed — so
/// one slow client never holds up others.
pub trait EventHub: Debug + Send + Sync + 'static {
    /// Sends `event` to every live subscription of `user`.
    fn publish(&self, user: &UserId, event: Event);
    /// Subscribes to `user`'s events with a queue of `capacity`.
    fn subscribe(&self, user: &UserId, capacity: usize) -> mpsc::Receiver<Event>;
}

/// The in-process hub.
#[derive(Debug, Default, Clone)]
pub struct LocalEventHub {
    subs: Arc<Mutex<HashMap<UserId, Vec<mpsc::Sender<Event>>>>>,
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
        let mut g = self.subs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.get_mut(user) {
            v.retain(|s| s.try_send(event.clone()).is_ok());
            if v.is_empty() {
                g.remove(user);
            }
        }
    }

    fn subscribe(&self, user: &UserId, capacity: usize) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
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
}
