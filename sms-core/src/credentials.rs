//! Support for password checks: a striped per-account lock that serialises
//! verifications of one account within a process (so concurrent guesses are
//! counted one by one against the lockout), and a short-lived cache of
//! verified credentials (so a client that authenticates every request —
//! `sendapi`'s HTTP Basic auth — pays argon2 once, not per request).

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Mutex as AsyncMutex;

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
