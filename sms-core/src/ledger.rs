//! The balance ledger: every movement of money is one [`LedgerRequest`] with
//! an operation id, applied atomically by a [`crate::store::LedgerStore`]; a
//! retried id applies once. Balances never go below zero, and a balance
//! always equals the sum of its entries.
//!
//! A balance has a `total` and a `held` part; `available = total - held` is
//! what can be held or debited. Holds are reservations (a leased number's
//! price) that are later captured (taken) or released.

use serde::{Deserialize, Serialize};

use crate::user::UserId;

/// Balance units (the smallest unit of the platform's currency).
pub type Amount = i64;

/// A user's balance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    /// Everything the user has.
    pub total: Amount,
    /// The part reserved by holds.
    pub held: Amount,
}

impl Balance {
    /// What can be held or debited.
    pub fn available(&self) -> Amount {
        self.total - self.held
    }
}

/// A reservation against a balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's id (the id of the operation that made it).
    pub hold_id: String,
    /// Whose.
    pub user: UserId,
    /// What is still reserved.
    pub remaining: Amount,
    /// After this time (Unix s) whatever is still reserved is released by
    /// the sweeper ([`crate::store::LedgerStore::expired_holds`]): a hold
    /// orphaned by a crash never keeps money forever.
    #[serde(default)]
    pub expires_at: Option<i64>,
}

/// One kind of movement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerOp {
    /// Money in (root's `/v2/charge`): `total += amount`.
    Charge {
        /// > 0.
        amount: Amount,
    },
    /// Money out now: needs `available >= amount`.
    Debit {
        /// > 0.
        amount: Amount,
    },
    /// Money back after a debit: `total += amount`.
    Refund {
        /// > 0.
        amount: Amount,
    },
    /// Reserve `amount` (needs `available >= amount`); the hold's id is the
    /// operation id.
    Hold {
        /// > 0.
        amount: Amount,
        /// When the rest of the hold is released by the sweeper, if ever.
        #[serde(default)]
        expires_at: Option<i64>,
    },
    /// Take `amount` of a hold: `held -= amount; total -= amount`.
    Capture {
        /// The hold.
        hold_id: String,
        /// > 0, at most what the hold still reserves.
        amount: Amount,
    },
    /// Give back `amount` of a hold: `held -= amount`.
    Release {
        /// The hold.
        hold_id: String,
        /// > 0, at most what the hold still reserves.
        amount: Amount,
    },
}

impl LedgerOp {
    /// The hold this operation acts on, if it acts on an existing one.
    pub fn hold_id(&self) -> Option<&str> {
        match self {
            Self::Capture { hold_id, .. } | Self::Release { hold_id, .. } => Some(hold_id),
            _ => None,
        }
    }

    fn amount(&self) -> Amount {
        match self {
            Self::Charge { amount }
            | Self::Debit { amount }
            | Self::Refund { amount }
            | Self::Hold { amount, .. }
            | Self::Capture { amount, .. }
            | Self::Release { amount, .. } => *amount,
        }
    }

    /// The change this operation makes to `total` once applied.
    pub fn total_delta(&self) -> Amount {
        match self {
            Self::Charge { amount } | Self::Refund { amount } => *amount,
            Self::Debit { amount } | Self::Capture { amount, .. } => -amount,
            Self::Hold { .. } | Self::Release { .. } => 0,
        }
    }
}

/// One movement to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRequest {
    /// Unique per operation: a retry with the same id applies once.
    pub op_id: String,
    /// Whose balance.
    pub user: UserId,
    /// What.
    pub op: LedgerOp,
    /// When (Unix s).
    pub at: i64,
}

/// An applied movement, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The request.
    pub request: LedgerRequest,
    /// The balance right after it.
    pub balance_after: Balance,
}

/// Why a movement was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not enough available balance.
    Insufficient {
        /// What was available.
        available: Amount,
    },
    /// The hold does not exist, belongs to someone else, or reserves less
    /// than asked.
    BadHold,
    /// The amount is not positive, or would overflow.
    InvalidAmount,
}

/// The outcome of applying a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOutcome {
    /// Applied now; the balance after.
    Applied(Balance),
    /// This operation id was applied before; nothing changed; the current
    /// balance.
    Duplicate(Balance),
    /// Refused; nothing changed.
    Refused(Refusal),
}

/// The pure transition of one request: `balance` and (for capture and
/// release) the hold it acts on. Returns the new balance and the new or
/// changed hold. Every [`crate::store::LedgerStore`] applies exactly this.
pub fn transition(
    balance: Balance,
    hold: Option<&Hold>,
    req: &LedgerRequest,
) -> Result<(Balance, Option<Hold>), Refusal> {
    let amount = req.op.amount();
    if amount <= 0 {
        return Err(Refusal::InvalidAmount);
    }
    let mut b = balance;
    let hold_out = match &req.op {
        LedgerOp::Charge { .. } | LedgerOp::Refund { .. } => {
            b.total = b.total.checked_add(amount).ok_or(Refusal::InvalidAmount)?;
            None
        }
        LedgerOp::Debit { .. } => {
            if b.available() < amount {
                return Err(Refusal::Insufficient {
                    available: b.available(),
                });
            }
            b.total -= amount;
            None
        }
        LedgerOp::Hold { expires_at, .. } => {
            if b.available() < amount {
                return Err(Refusal::Insufficient {
                    available: b.available(),
                });
            }
            b.held += amount;
            Some(Hold {
                hold_id: req.op_id.clone(),
                user: req.user.clone(),
                remaining: amount,
                expires_at: *expires_at,
            })
        }
        LedgerOp::Capture { .. } | LedgerOp::Release { .. } => {
            let h = hold.ok_or(Refusal::BadHold)?;
            if h.user != req.user || h.remaining < amount {
                return Err(Refusal::BadHold);
            }
            let mut h = h.clone();
            h.remaining -= amount;
            b.held -= amount;
            if matches!(req.op, LedgerOp::Capture { .. }) {
                b.total -= amount;
            }
            Some(h)
        }
    };
    Ok((b, hold_out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn req(id: &str, op: LedgerOp) -> LedgerRequest {
        LedgerRequest {
            op_id: id.into(),
            user: UserId::from_string("u".into()),
            op,
            at: 0,
        }
    }

    #[test]
    fn hold_capture_release() {
        let b = Balance::default();
        let (b, _) = transition(b, None, &req("c", LedgerOp::Charge { amount: 100 })).unwrap();
        let (b, h) = transition(
            b,
            None,
            &req(
                "h",
                LedgerOp::Hold {
                    amount: 30,
                    expires_at: None,
                },
            ),
        )
        .unwrap();
        let h = h.unwrap();
        assert_eq!((b.total, b.held, b.available()), (100, 30, 70));
        let (b, h) = transition(
            b,
            Some(&h),
            &req(
                "x",
                LedgerOp::Capture {
                    hold_id: "h".into(),
                    amount: 10,
                },
            ),
        )
        .unwrap();
        assert_eq!((b.total, b.held), (90, 20));
        let (b, h) = transition(
            b,
            h.as_ref(),
            &req(
                "y",
                LedgerOp::Release {
                    hold_id: "h".into(),
                    amount: 20,
                },
            ),
        )
        .unwrap();
        assert_eq!((b.total, b.held, h.unwrap().remaining), (90, 0, 0));
        assert_eq!(
            transition(b, None, &req("d", LedgerOp::Debit { amount: 91 })),
            Err(Refusal::Insufficient { available: 90 })
        );
        assert_eq!(
            transition(b, None, &req("d", LedgerOp::Charge { amount: 0 })),
            Err(Refusal::InvalidAmount)
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Charge(i64),
        Debit(i64),
        Refund(i64),
        Hold(i64),
        Capture(usize, i64),
        Release(usize, i64),
        Retry(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (1i64..100).prop_map(Step::Charge),
            (1i64..100).prop_map(Step::Debit),
            (1i64..50).prop_map(Step::Refund),
            (1i64..80).prop_map(Step::Hold),
            (0usize..8, 1i64..60).prop_map(|(h, a)| Step::Capture(h, a)),
            (0usize..8, 1i64..60).prop_map(|(h, a)| Step::Release(h, a)),
            (0usize..40).prop_map(Step::Retry),
        ]
    }

    proptest! {
        /// A simple model of a store: whatever the sequence (retries
        /// included), the balance equals the sum of the applied entries,
        /// `held` equals the sum of what holds reserve, and neither goes
        /// negative or past the total.
        #[test]
        fn balance_is_sum_of_entries_and_never_negative(steps in proptest::collection::vec(step(), 1..80)) {
            let mut balance = Balance::default();
            let mut holds: HashMap<String, Hold> = HashMap::new();
            let mut applied: Vec<LedgerRequest> = Vec::new();
            let mut sent: Vec<LedgerRequest> = Vec::new();
            for (i, s) in steps.into_iter().enumerate() {
                let hold_name = |h: usize| format!("h{h}");
                let r = match s {
                    Step::Charge(a) => req(&format!("op{i}"), LedgerOp::Charge { amount: a }),
                    Step::Debit(a) => req(&format!("op{i}"), LedgerOp::Debit { amount: a }),
                    Step::Refund(a) => req(&format!("op{i}"), LedgerOp::Refund { amount: a }),
                    Step::Hold(a) => req(&hold_name(i % 8), LedgerOp::Hold { amount: a, expires_at: None }),
                    Step::Capture(h, a) => req(&format!("op{i}"), LedgerOp::Capture { hold_id: hold_name(h), amount: a }),
                    Step::Release(h, a) => req(&format!("op{i}"), LedgerOp::Release { hold_id: hold_name(h), amount: a }),
                    Step::Retry(k) => match sent.get(k) { Some(r) => r.clone(), None => continue },
                };
                sent.push(r.clone());
                if applied.iter().any(|a| a.op_id == r.op_id) {
                    continue; // duplicate: nothing changes
                }
                let hold = r.op.hold_id().and_then(|id| holds.get(id)).cloned();
                if let Ok((b, h)) = transition(balance, hold.as_ref(), &r) {
                    balance = b;
                    if let Some(h) = h { holds.insert(h.hold_id.clone(), h); }
                    applied.push(r);
                }
                prop_assert!(balance.held >= 0);
                prop_assert!(balance.available() >= 0);
                let sum: i64 = applied.iter().map(|a| a.op.total_delta()).sum();
                prop_assert_eq!(balance.total, sum);
                let reserved: i64 = holds.values().map(|h| h.remaining).sum();
                prop_assert_eq!(balance.held, reserved);
            }
        }
    }
}
