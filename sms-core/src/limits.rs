//! The keyed-limit engine: sliding windows with optional lockout, used for
//! send caps, failed-check caps, login lockout and probe limits alike.
//!
//! The state of one key is a [`LimitState`]; its transitions are pure
//! functions here, and a [`crate::store::LimitStore`] applies them atomically.

use serde::{Deserialize, Serialize};

/// The default prefix length IPv6 clients are keyed by (a /64 is what one
/// subscriber line usually gets, so it is one client).
pub const DEFAULT_IPV6_PREFIX_LEN: u8 = 64;

/// The per-IP limit key of a client address: an IPv4 address as itself, an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as that IPv4 address, and any
/// other IPv6 address as its network of `ipv6_prefix_len` bits (clamped to
/// 0–128), written `addr/len`. Every per-IP limit keys through this, so one
/// subscriber cannot multiply its budget by walking its /64, nor by writing
/// its IPv4 address in IPv6 form.
pub fn ip_limit_key(ip: std::net::IpAddr, ipv6_prefix_len: u8) -> String {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let len = ipv6_prefix_len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(v6) & mask);
                format!("{net}/{len}")
            }
        },
    }
}

/// One rule over one key: at most `max` hits in any `window_secs`, and, when
/// `lockout_secs` is set, reaching `max` locks the key for that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitRule {
    /// Length of the sliding window, seconds.
    pub window_secs: i64,
    /// Hits allowed within the window.
    pub max: u32,
    /// Lock the key for this long once `max` is reached (else the key frees
    /// up as old hits leave the window).
    pub lockout_secs: Option<i64>,
}

impl LimitRule {
    /// `max` per `window_secs`, sliding.
    pub const fn per(max: u32, window_secs: i64) -> Self {
        Self {
            window_secs,
            max,
            lockout_secs: None,
        }
    }

    /// The same rule with a lockout.
    pub const fn with_lockout(mut self, lockout_secs: i64) -> Self {
        self.lockout_secs = Some(lockout_secs);
        self
    }
}

/// A rule applied to a key, e.g. `code:addr:+8613811112222` with 5 per hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCheck {
    /// The key (callers prefix it with what it counts).
    pub key: String,
    /// The rule.
    pub rule: LimitRule,
}

impl LimitCheck {
    /// A check of `rule` on `key`.
    pub fn new(key: impl Into<String>, rule: LimitRule) -> Self {
        Self {
            key: key.into(),
            rule,
        }
    }
}

/// The outcome of evaluating limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// Every check passed.
    Allowed,
    /// A check failed; `index` names the first failing check, `retry_at` when
    /// all failing checks will pass again (Unix seconds).
    Denied {
        /// Index into the checks given.
        index: usize,
        /// When to retry.
        retry_at: i64,
    },
}

impl LimitDecision {
    /// True when allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// The stored state of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitState {
    /// Hit times (Unix seconds), oldest first, at most the rule's `max` kept.
    pub hits: Vec<i64>,
    /// Locked until this time, if a lockout fired.
    pub locked_until: Option<i64>,
}

impl LimitState {
    /// When this key would allow another hit under `rule` at `now`: `None`
    /// if it allows one now.
    pub fn blocked_until(&self, rule: &LimitRule, now: i64) -> Option<i64> {
        if let Some(until) = self.locked_until {
            if until > now {
                return Some(until);
            }
        }
        if rule.max == 0 {
            return Some(now.saturating_add(rule.window_secs));
        }
        let max = rule.max as usize;
        let live = self.live_hits(rule, now).count();
        if live >= max {
            // The hit that must leave the window before another is allowed.
            let oldest_relevant = self.live_hits(rule, now).nth(live - max)?;
            return Some(oldest_relevant.saturating_add(rule.window_secs));
        }
        None
    }

    fn live_hits<'a>(&'a self, rule: &LimitRule, now: i64) -> impl Iterator<Item = i64> + 'a {
        let from = now.saturating_sub(rule.window_secs);
        self.hits
            .iter()
            .copied()
            .filter(move |&t| t > from && t <= now)
    }

    /// Records a hit at `now`, dropping hits that left the window and firing
    /// the lockout when the count reaches `max`.
    pub fn record(&mut self, rule: &LimitRule, now: i64) {
        if matches!(self.locked_until, Some(u) if u <= now) {
            self.locked_until = None;
        }
        let from = now.saturating_sub(rule.window_secs);
        self.hits.retain(|&t| t > from);
        self.hits.push(now);
        let keep = rule.max.max(1) as usize;
        if self.hits.len() > keep {
            let drop = self.hits.len() - keep;
            self.hits.drain(..drop);
        }
        if let Some(lock) = rule.lockout_secs {
            if self.hits.len() >= rule.max as usize {
                self.locked_until = Some(now.saturating_add(lock));
                self.hits.clear();
            }
        }
    }

    /// Takes back the hit recorded at `at` (the newest such hit), as if it had
    /// never been counted; a lockout that already fired stays.
    pub fn unrecord(&mut self, at: i64) {
        if let Some(pos) = self.hits.iter().rposition(|&t| t == at) {
            self.hits.remove(pos);
        }
    }

    /// True when the state holds nothing that matters at `now` under `rule`
    /// (backends may delete such keys).
    pub fn is_idle(&self, rule: &LimitRule, now: i64) -> bool {
        self.blocked_until(rule, now).is_none() && self.live_hits(rule, now).next().is_none()
    }
}

/// Evaluates `checks` against their states; used by every [`LimitStore`]
/// implementation so that they decide alike.
///
/// [`LimitStore`]: crate::store::LimitStore
pub fn evaluate(states: &[LimitState], checks: &[LimitCheck], now: i64) -> LimitDecision {
    let mut first = None;
    let mut retry_at = i64::MIN;
    for (i, (state, check)) in states.iter().zip(checks).enumerate() {
        if let Some(until) = state.blocked_until(&check.rule, now) {
            first.get_or_insert(i);
            retry_at = retry_at.max(until);
        }
    }
    match first {
        None => LimitDecision::Allowed,
        Some(index) => LimitDecision::Denied { index, retry_at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sliding_window_counts_and_frees() {
        let rule = LimitRule::per(3, 60);
        let mut s = LimitState::default();
        for t in [0, 10, 20] {
            assert_eq!(s.blocked_until(&rule, t), None);
            s.record(&rule, t);
        }
        assert_eq!(s.blocked_until(&rule, 30), Some(60));
        assert_eq!(s.blocked_until(&rule, 60), None);
    }

    #[test]
    fn lockout_fires_at_max_and_lasts() {
        let rule = LimitRule::per(5, 900).with_lockout(900);
        let mut s = LimitState::default();
        for t in 0..5 {
            s.record(&rule, t * 10);
        }
        assert_eq!(s.blocked_until(&rule, 40), Some(40 + 900));
        assert_eq!(s.blocked_until(&rule, 939), Some(940));
        assert_eq!(s.blocked_until(&rule, 940), None);
    }

    #[test]
    fn ip_keys_group_a_v6_prefix_and_unmap_v4() {
        let k = |s: &str, len| ip_limit_key(s.parse().unwrap(), len);
        assert_eq!(k("10.77.0.1", 64), "10.77.0.1");
        assert_eq!(k("::ffff:10.77.0.1", 64), "10.77.0.1");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::/64");
        assert_eq!(k("2001:db8:1:2:ffff:1:2:3", 64), "2001:db8:1:2::/64");
        assert_ne!(k("2001:db8:1:3::1", 64), k("2001:db8:1:2::1", 64));
        assert_eq!(k("2001:db8:1:2::1", 48), "2001:db8:1::/48");
        assert_eq!(k("2001:db8::1", 128), "2001:db8::1/128");
        assert_eq!(k("2001:db8::1", 200), "2001:db8::1/128");
        assert_eq!(k("2001:db8::1", 0), "::/0");
    }

    #[test]
    fn zero_max_always_denies() {
        let rule = LimitRule::per(0, 60);
        assert!(LimitState::default().blocked_until(&rule, 5).is_some());
    }

    proptest! {
        /// Whatever the order of requests, no window of the rule's length
        /// ever holds more than `max` allowed hits.
        #[test]
        fn never_more_than_max_in_any_window(
            max in 1u32..6,
            window in 1i64..100,
            gaps in proptest::collection::vec(0i64..30, 1..60),
        ) {
            let rule = LimitRule::per(max, window);
            let mut s = LimitState::default();
            let mut allowed = Vec::new();
            let mut now = 0;
            for g in gaps {
                now += g;
                if s.blocked_until(&rule, now).is_none() {
                    s.record(&rule, now);
                    allowed.push(now);
                }
            }
            for &start in &allowed {
                let n = allowed.iter().filter(|&&t| t >= start && t < start + window).count();
                prop_assert!(n <= max as usize);
            }
        }
    }
}
