//! Support for password checks: a striped per-account lock that serialises
//! verifications of one account within a process (so concurrent guesses are
//! counted one by one against the lockout), and a short-lived cache of
//! verified credentials (so a client that authenticates every request —
//! `sendapi`'s HTTP Basic auth — pays argon2 once, not per request).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::{Mutex as AsyncMutex, Semaphore, SemaphorePermit};

use crate::error::CoreError;

use crate::random::RandomSource;
use crate::user::UserId;

/// Stripes of the per-account lock.
const STRIPES: usize = 64;
/// Entries kept before the cache is cleared.
const MAX_ENTRIES: usize = 10_000;

/// Striped async locks keyed by account.
#[derive(Debug)]
pub(crate) struct AccountLocks {
    stripes: Vec<AsyncMutex<()>>,
}

impl AccountLocks {
    pub(crate) fn new() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AsyncMutex::new(())).collect(),
        }
    }

    /// The lock of `user`'s stripe.
    pub(crate) fn of(&self, user: &UserId) -> &AsyncMutex<()> {
        let h = user
            .as_str()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
        &self.stripes[(h % STRIPES as u64) as usize]
    }
}

/// The cap on password hashing for unauthenticated requests: at most
/// `running` checks at once and `waiting` more in line; one beyond both is
/// refused at once ([`CoreError::Overloaded`]) rather than making everyone
/// wait longer.
#[derive(Debug)]
pub(crate) struct HashGate {
    turns: Semaphore,
    admitted: AtomicUsize,
    max_admitted: usize,
}

/// A place in the gate: running (it holds a permit) and counted until
/// dropped.
pub(crate) struct Turn<'a> {
    gate: &'a HashGate,
    _permit: SemaphorePermit<'a>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.gate.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashGate {
    pub(crate) fn new(running: usize, waiting: usize) -> Self {
        let running = running.max(1);
        Self {
            turns: Semaphore::new(running),
            admitted: AtomicUsize::new(0),
            max_admitted: running.saturating_add(waiting),
        }
    }

    /// Waits for a turn, or refuses at once when the line is full.
    pub(crate) async fn enter(&self) -> Result<Turn<'_>, CoreError> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.max_admitted {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            crate::metrics::limit_refused(crate::metrics::Limit::HashGate);
            return Err(CoreError::Overloaded);
        }
        // Counted from here: a cancelled wait must give its place back.
        struct Place<'a>(&'a AtomicUsize);
        impl Drop for Place<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let place = Place(&self.admitted);
        let permit = self
            .turns
            .acquire()
            .await
            .map_err(|_| CoreError::Overloaded)?;
        std::mem::forget(place);
        Ok(Turn {
            gate: self,
            _permit: permit,
        })
    }
}

/// Verified (account, password) pairs, keyed by an HMAC of both under a
/// per-process key, remembered with the password hash they matched: a
/// password change (new hash) or the TTL ends an entry.
#[derive(Debug)]
pub(crate) struct VerifiedCache {
    key: [u8; 32],
    ttl_secs: i64,
    entries: Mutex<HashMap<[u8; 32], (String, i64)>>,
    /// Per account: entries older than this do not count (a failed login
    /// since then must go the full way, so its success resets the count).
    stale_before: Mutex<HashMap<UserId, i64>>,
}

impl VerifiedCache {
    pub(crate) fn new(rng: &dyn RandomSource, ttl_secs: i64) -> Self {
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        Self {
            key,
            ttl_secs,
            entries: Mutex::new(HashMap::new()),
            stale_before: Mutex::new(HashMap::new()),
        }
    }

    /// Makes every entry of `user` made up to now stale.
    pub(crate) fn invalidate(&self, user: &UserId, now: i64) {
        if self.ttl_secs <= 0 {
            return;
        }
        let mut g = self.stale_before.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_ENTRIES {
            g.retain(|_, at| now < at.saturating_add(self.ttl_secs));
        }
        g.insert(user.clone(), now);
    }

    fn digest(&self, user: &UserId, password: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(user.as_str().as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// True if `password` was verified for `user` against `phc` recently.
    pub(crate) fn hit(&self, user: &UserId, password: &str, phc: &str, now: i64) -> bool {
        if self.ttl_secs <= 0 {
            return false;
        }
        let stale = self
            .stale_before
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied();
        let d = self.digest(user, password);
        let g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&d).is_some_and(|(h, at)| {
            h == phc && now < at.saturating_add(self.ttl_secs) && stale.is_none_or(|s| *at > s)
        })
    }

    /// Remembers a successful verification.
    pub(crate) fn insert(&self, user: &UserId, password: &str, phc: &str, now: i64) {
        if self.ttl_secs <= 0 {
            return;
        }
        let d = self.digest(user, password);
        let mut g = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if g.len() >= MAX_ENTRIES {
            g.retain(|_, (_, at)| now < at.saturating_add(self.ttl_secs));
            if g.len() >= MAX_ENTRIES {
                g.clear();
            }
        }
        g.insert(d, (phc.to_owned(), now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    #[tokio::test]
    async fn hash_gate_refuses_beyond_running_and_waiting() {
        let gate = HashGate::new(2, 1);
        let a = gate.enter().await.unwrap();
        let b = gate.enter().await.unwrap();
        // A third waits for a turn; a fourth finds the line full.
        let mut third = Box::pin(gate.enter());
        assert!(futures_util::FutureExt::now_or_never(&mut third).is_none());
        assert!(matches!(gate.enter().await, Err(CoreError::Overloaded)));
        drop(a);
        let c = third.await.unwrap();
        // Two running, the line free again: a newcomer waits, and one more
        // is refused.
        let mut waiting = Box::pin(gate.enter());
        assert!(futures_util::FutureExt::now_or_never(&mut waiting).is_none());
        assert!(matches!(gate.enter().await, Err(CoreError::Overloaded)));
        drop(waiting);
        drop((b, c));
        // Everything given back, including a wait that was cancelled.
        let cancelled = gate.enter();
        drop(cancelled);
        let _x = gate.enter().await.unwrap();
        let _y = gate.enter().await.unwrap();
        assert_eq!(gate.admitted.load(Ordering::Acquire), 2);
    }

    #[test]
    fn cache_matches_only_same_password_hash_and_time() {
        let c = VerifiedCache::new(&SeededRandom::new(1), 300);
        let u = UserId::from_string("u".into());
        assert!(!c.hit(&u, "pw", "h1", 0));
        c.insert(&u, "pw", "h1", 0);
        assert!(c.hit(&u, "pw", "h1", 299));
        assert!(!c.hit(&u, "pw", "h1", 300), "expired");
        assert!(!c.hit(&u, "pw", "h2", 10), "password changed");
        assert!(!c.hit(&u, "other", "h1", 10));
        assert!(!c.hit(&UserId::from_string("v".into()), "pw", "h1", 10));
        c.invalidate(&u, 5);
        assert!(!c.hit(&u, "pw", "h1", 10), "a failure since makes it stale");
        c.insert(&u, "pw", "h1", 6);
        assert!(c.hit(&u, "pw", "h1", 10));
    }
}
