//! The two decisions on verification codes, each one atomic store call:
//! issuing a code (cooldown, caps per address and per client IP, the
//! SMS-pumping breaker, replacing the old code) and checking one (the
//! failure budget, redeeming, the breaker's bookkeeping).
//!
//! A decision names the small state it touches (one code record and a few
//! limit keys); a [`crate::store::CodeStore`] loads that state, calls the
//! pure transition [`CodeDecision::apply`] and stores what changed, all in
//! one atomic step. Every rule lives here, once; the stores decide nothing.

use crate::limits::{evaluate, LimitCheck, LimitDecision, LimitState};
use crate::secret::CodeHash;
use crate::store::{CodeKey, CodeRecord, Grant, RedeemOutcome};

/// The SMS-pumping breaker's three counters for one number prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PumpChecks {
    /// Open (sends refused) while locked.
    pub trip: LimitCheck,
    /// Sends to the prefix; its rule's `max` is the burst size.
    pub sent: LimitCheck,
    /// Successful checks in the prefix; its rule's `max` is the share of
    /// the burst that must be confirmed.
    pub ok: LimitCheck,
}

/// Issue a new code: the request of [`CodeDecision::Issue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueCode {
    /// The new record; its `issued_at` is the decision's time.
    pub record: CodeRecord,
    /// The resend cooldown per (address, purpose).
    pub cooldown_secs: i64,
    /// The caps (per address, per client IP); all pass or the send is
    /// refused, and only an issued code counts against them.
    pub caps: Vec<LimitCheck>,
    /// The breaker of the number's prefix (phones only).
    pub pump: Option<PumpChecks>,
}

/// Check a presented code: the request of [`CodeDecision::Check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckCode {
    /// Which code.
    pub key: CodeKey,
    /// The HMAC of what was presented.
    pub presented: CodeHash,
    /// The decision's time.
    pub now: i64,
    /// Wrong tries before the code is void.
    pub max_attempts: u32,
    /// The budget of failed checks of the address; a failed check counts a
    /// hit, and once it is spent checks are refused.
    pub failures: LimitCheck,
    /// The breaker's count of successful checks in the prefix (phones).
    pub pump_ok: Option<LimitCheck>,
    /// What a successful check earns: this grant is stored (replacing the
    /// one of its kind and phone) in the same atomic step.
    pub grant: Option<Grant>,
}

/// One decision on codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeDecision {
    /// Issue a code.
    Issue(IssueCode),
    /// Check a code.
    Check(CheckCode),
}

/// The outcome of [`CodeDecision::Issue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueOutcome {
    /// Stored, replacing the previous code of the key; counted against the
    /// caps and the breaker.
    Issued,
    /// The previous code is within the cooldown; nothing changed.
    Cooldown {
        /// When a new code may be issued.
        retry_at: i64,
    },
    /// The breaker of the prefix is open, or a cap is spent; nothing
    /// changed.
    Limited {
        /// When to retry.
        retry_at: i64,
    },
    /// This send tripped the breaker: it counts against the caps, the
    /// breaker is now open, and no code was stored.
    Tripped {
        /// When the breaker closes.
        retry_at: i64,
    },
}

/// The outcome of [`CodeDecision::Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The failure budget is spent; nothing changed.
    Locked {
        /// When checks are accepted again.
        retry_at: i64,
    },
    /// The code was presented; anything but
    /// [`RedeemOutcome::Redeemed`] counted as a failure.
    Presented(RedeemOutcome),
}

/// The outcome of a [`CodeDecision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeVerdict {
    /// Of an issue.
    Issue(IssueOutcome),
    /// Of a check.
    Check(CheckOutcome),
}

/// The state a [`CodeDecision`] reads and changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeState {
    /// The code record of [`CodeDecision::key`].
    pub code: Option<CodeRecord>,
    /// The states of [`CodeDecision::limit_keys`], in that order (default
    /// for keys never written).
    pub limits: Vec<LimitState>,
    /// Output only (stores load nothing here): a grant to store, set by a
    /// successful check that carries one.
    pub grant: Option<Grant>,
}

impl CodeDecision {
    /// The code record the decision touches.
    pub fn key(&self) -> &CodeKey {
        match self {
            Self::Issue(i) => &i.record.key,
            Self::Check(c) => &c.key,
        }
    }

    /// The limit keys the decision touches, in the order
    /// [`CodeState::limits`] holds them. A key named twice is loaded once
    /// per position; the last position written wins, so callers name each
    /// key once.
    pub fn limit_keys(&self) -> Vec<&str> {
        self.checks().map(|c| c.key.as_str()).collect()
    }

    fn checks(&self) -> impl Iterator<Item = &LimitCheck> {
        let (a, b, c): (&[LimitCheck], Option<&PumpChecks>, Option<&LimitCheck>) = match self {
            Self::Issue(i) => (&i.caps, i.pump.as_ref(), None),
            Self::Check(c) => (std::slice::from_ref(&c.failures), None, c.pump_ok.as_ref()),
        };
        a.iter()
            .chain(b.into_iter().flat_map(|p| [&p.trip, &p.sent, &p.ok]))
            .chain(c)
    }

    /// The pure transition: decides on `state` and changes it as the
    /// decision requires. A store applies it atomically: it loads
    /// [`CodeState`], calls this, and writes back what differs.
    pub fn apply(&self, state: &mut CodeState) -> CodeVerdict {
        let wanted = self.checks().count();
        state.limits.resize_with(wanted, LimitState::default);
        match self {
            Self::Issue(i) => CodeVerdict::Issue(issue(i, state)),
            Self::Check(c) => CodeVerdict::Check(check(c, state)),
        }
    }
}

fn issue(req: &IssueCode, state: &mut CodeState) -> IssueOutcome {
    let now = req.record.issued_at;
    if let Some(old) = &state.code {
        let retry_at = old.issued_at.saturating_add(req.cooldown_secs);
        if retry_at > now {
            return IssueOutcome::Cooldown { retry_at };
        }
    }
    let n = req.caps.len();
    let (caps, pump_states) = state.limits.split_at_mut(n);
    if let (Some(p), [trip, ..]) = (&req.pump, &*pump_states) {
        if let Some(retry_at) = trip.blocked_until(&p.trip.rule, now) {
            return IssueOutcome::Limited { retry_at };
        }
    }
    if let LimitDecision::Denied { retry_at, .. } = evaluate(caps, &req.caps, now) {
        return IssueOutcome::Limited { retry_at };
    }
    for (s, c) in caps.iter_mut().zip(&req.caps) {
        s.record(&c.rule, now);
    }
    if let (Some(p), [trip, sent, ok]) = (&req.pump, pump_states) {
        sent.record(&p.sent.rule, now);
        let burst = sent.blocked_until(&p.sent.rule, now).is_some();
        let confirmed = ok.blocked_until(&p.ok.rule, now).is_some();
        if burst && !confirmed {
            trip.record(&p.trip.rule, now);
            let retry_at = trip.blocked_until(&p.trip.rule, now).unwrap_or(now);
            return IssueOutcome::Tripped { retry_at };
        }
    }
    state.code = Some(req.record.clone());
    IssueOutcome::Issued
}

fn check(req: &CheckCode, state: &mut CodeState) -> CheckOutcome {
    let now = req.now;
    let (fail, rest) = state.limits.split_at_mut(1);
    let fail = &mut fail[0];
    if let Some(retry_at) = fail.blocked_until(&req.failures.rule, now) {
        return CheckOutcome::Locked { retry_at };
    }
    let outcome = match &mut state.code {
        Some(r) => r.redeem(&req.presented, now, req.max_attempts),
        None => RedeemOutcome::Missing,
    };
    if outcome == RedeemOutcome::Redeemed {
        if let (Some(ok), [s, ..]) = (&req.pump_ok, rest) {
            s.record(&ok.rule, now);
        }
        state.grant.clone_from(&req.grant);
    } else {
        fail.record(&req.failures.rule, now);
    }
    CheckOutcome::Presented(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use crate::limits::LimitRule;
    use crate::secret::CodeHasher;
    use crate::store::Purpose;

    fn key() -> CodeKey {
        CodeKey {
            address: "+8613811112222".into(),
            purpose: Purpose::Register,
        }
    }

    fn issue_at(code: &str, now: i64, ip_max: u32) -> CodeDecision {
        let h = CodeHasher::new([1; 32]);
        CodeDecision::Issue(IssueCode {
            record: CodeRecord {
                key: key(),
                hash: h.hash(&key().flat(), code),
                issued_at: now,
                expires_at: now + 300,
                attempts: 0,
                used: false,
            },
            cooldown_secs: 60,
            caps: vec![
                LimitCheck::new("addr", LimitRule::per(5, 3_600)),
                LimitCheck::new("ip", LimitRule::per(ip_max, 3_600)),
            ],
            pump: Some(PumpChecks {
                trip: LimitCheck::new("trip", LimitRule::per(1, 3_600).with_lockout(3_600)),
                sent: LimitCheck::new("sent", LimitRule::per(3, 3_600)),
                ok: LimitCheck::new("ok", LimitRule::per(1, 3_600)),
            }),
        })
    }

    fn issue_ok(d: CodeDecision, s: &mut CodeState) {
        assert_eq!(d.apply(s), CodeVerdict::Issue(IssueOutcome::Issued));
    }

    fn limited(retry_at: i64) -> CodeVerdict {
        CodeVerdict::Issue(IssueOutcome::Limited { retry_at })
    }

    fn check_at(code: &str, now: i64) -> CodeDecision {
        let h = CodeHasher::new([1; 32]);
        CodeDecision::Check(CheckCode {
            key: key(),
            presented: h.hash(&key().flat(), code),
            now,
            max_attempts: 5,
            failures: LimitCheck::new("fail", LimitRule::per(2, 86_400)),
            pump_ok: Some(LimitCheck::new("ok", LimitRule::per(1, 3_600))),
            grant: None,
        })
    }

    #[test]
    fn limit_keys_follow_the_state_order() {
        assert_eq!(
            issue_at("1", 0, 9).limit_keys(),
            ["addr", "ip", "trip", "sent", "ok"]
        );
        assert_eq!(check_at("1", 0).limit_keys(), ["fail", "ok"]);
    }

    #[test]
    fn cooldown_refusal_consumes_no_quota() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        let d = issue_at("111111", clock.unix(), 9);
        assert_eq!(d.apply(&mut s), CodeVerdict::Issue(IssueOutcome::Issued));
        let after_first = s.clone();
        clock.advance(59);
        let d = issue_at("222222", clock.unix(), 9);
        assert_eq!(
            d.apply(&mut s),
            CodeVerdict::Issue(IssueOutcome::Cooldown { retry_at: 1_060 })
        );
        assert_eq!(s, after_first, "a refused send changes nothing");
        clock.advance(1);
        let d = issue_at("333333", clock.unix(), 9);
        assert_eq!(d.apply(&mut s), CodeVerdict::Issue(IssueOutcome::Issued));
        assert_eq!(s.limits[0].hits, vec![1_000, 1_060]);
    }

    #[test]
    fn spent_cap_refuses_and_counts_nothing() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        issue_ok(issue_at("1", clock.unix(), 1), &mut s);
        s.code = None;
        clock.advance(100);
        let before = s.clone();
        assert_eq!(issue_at("2", clock.unix(), 1).apply(&mut s), limited(4_600));
        assert_eq!(s, before);
    }

    #[test]
    fn breaker_trips_on_an_unconfirmed_burst_and_stays_open() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        for _ in 0..2 {
            s.code = None;
            issue_ok(issue_at("1", clock.unix(), 99), &mut s);
            clock.advance(1);
        }
        s.code = None;
        // The third send reaches the burst with no successful check.
        assert_eq!(
            issue_at("1", clock.unix(), 99).apply(&mut s),
            CodeVerdict::Issue(IssueOutcome::Tripped { retry_at: 4_602 })
        );
        assert_eq!(s.code, None, "a tripping send stores no code");
        assert_eq!(s.limits[0].hits.len(), 3, "it counts against the caps");
        clock.advance(10);
        let before = s.clone();
        assert_eq!(
            issue_at("1", clock.unix(), 99).apply(&mut s),
            limited(4_602)
        );
        assert_eq!(s, before);
    }

    #[test]
    fn a_confirmed_burst_does_not_trip() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        for i in 0..4 {
            s.code = None;
            assert_eq!(
                issue_at("123456", clock.unix(), 99).apply(&mut s),
                CodeVerdict::Issue(IssueOutcome::Issued),
                "send {i}"
            );
            // Move the limit states of the issue to a check's layout.
            let mut c = CodeState {
                code: s.code.clone(),
                limits: vec![LimitState::default(), s.limits[4].clone()],
                grant: None,
            };
            assert_eq!(
                check_at("123456", clock.unix()).apply(&mut c),
                CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
            );
            s.limits[4] = c.limits[1].clone();
            clock.advance(61);
        }
    }

    #[test]
    fn check_counts_failures_only_and_locks_when_spent() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        issue_at("123456", clock.unix(), 9).apply(&mut s);
        let mut c = CodeState {
            code: s.code.clone(),
            limits: vec![],
            grant: None,
        };
        clock.advance(5);
        for left in [4, 3] {
            assert_eq!(
                check_at("000000", clock.unix()).apply(&mut c),
                CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Mismatch {
                    attempts_left: left
                }))
            );
        }
        let before = c.clone();
        assert_eq!(
            check_at("123456", clock.unix()).apply(&mut c),
            CodeVerdict::Check(CheckOutcome::Locked {
                retry_at: 1_005 + 86_400
            })
        );
        assert_eq!(c, before, "a locked check changes nothing");
    }

    #[test]
    fn only_a_successful_check_stores_its_grant() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        issue_at("123456", clock.unix(), 9).apply(&mut s);
        let grant = Grant {
            kind: crate::store::GrantKind::PasswordReset,
            phone: crate::phone::PhoneNumber::parse_cn_mobile("13811112222").unwrap(),
            token_hash: None,
            issued_at: 1_000,
            expires_at: 1_600,
            used: false,
        };
        let with_grant = |code: &str| match check_at(code, clock.unix()) {
            CodeDecision::Check(mut c) => {
                c.grant = Some(grant.clone());
                CodeDecision::Check(c)
            }
            other => other,
        };
        let mut c = CodeState {
            code: s.code.clone(),
            ..CodeState::default()
        };
        with_grant("000000").apply(&mut c);
        assert_eq!(c.grant, None);
        assert_eq!(
            with_grant("123456").apply(&mut c),
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
        );
        assert_eq!(c.grant, Some(grant));
    }

    #[test]
    fn success_records_the_breaker_and_not_a_failure() {
        let clock = ManualClock::at(1_000);
        let mut s = CodeState::default();
        issue_at("123456", clock.unix(), 9).apply(&mut s);
        let mut c = CodeState {
            code: s.code.clone(),
            limits: vec![],
            grant: None,
        };
        assert_eq!(
            check_at("123456", clock.unix()).apply(&mut c),
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
        );
        assert!(c.limits[0].hits.is_empty());
        assert_eq!(c.limits[1].hits, vec![1_000]);
        assert_eq!(
            check_at("123456", clock.unix()).apply(&mut c),
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Used))
        );
        assert_eq!(c.limits[0].hits, vec![1_000]);
        let mut none = CodeState::default();
        assert_eq!(
            check_at("123456", clock.unix()).apply(&mut none),
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Missing))
        );
        assert_eq!(
            none.limits[0].hits,
            vec![1_000],
            "a missing code is a failure"
        );
    }
}
