//! Receiving SMS on pool numbers: one decision per device upload.
//!
//! A store's [`crate::store::PhonePool::receive`] loads, for each SMS of the
//! batch, the [`ReceiveState`] it touches (the number, the lease the number
//! names, the items that give the code pattern, how full the lessee's mailbox
//! is), calls [`ReceiveRequest::decide`] — the pure rule, here — and commits
//! the [`ReceiveEffects`] atomically: each SMS into its app's queue, each
//! lease's price captured once and the lease marked charged, each lessee's
//! `PushRecvMsg` into the mailbox, the oldest mailbox entries beyond the cap
//! dropped. A refused batch changes nothing.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::events::Push;
use crate::ledger::{LedgerOp, LedgerRequest};
use crate::pool::{extract_code, Item, Lease, PoolNumber, ReceivedSms};
use crate::pool_service::{DeviceScope, IncomingSms};
use crate::user::UserId;

/// A device's upload of received SMS, as one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// The channels the uploading device may speak for.
    pub scope: DeviceScope,
    /// The SMS, in the order uploaded.
    pub batch: Vec<IncomingSms>,
    /// When (Unix s).
    pub now: i64,
    /// How many entries a user's mailbox keeps (the oldest go first).
    pub mailbox_cap: usize,
}

/// What a store loads for one SMS before deciding: the current state of
/// everything the SMS may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveState {
    /// The receiving number, if it is in the pool.
    pub number: Option<PoolNumber>,
    /// The lease record the number names ([`PoolNumber::lease`]), if any.
    pub lease: Option<Lease>,
    /// The items named by the SMS's app ([`IncomingSms::appname`]) and by
    /// the lease, those that exist (for their code patterns).
    pub items: Vec<Item>,
    /// Entries held in the lessee's mailbox now (0 without a lease).
    pub mailbox_len: usize,
}

impl ReceiveRequest {
    /// The items a store loads for `sms` given the number it found: the
    /// SMS's app and the item of the lease the number names.
    pub fn item_ids(sms: &IncomingSms, number: Option<&PoolNumber>) -> Vec<String> {
        let mut ids: Vec<String> = sms.appname.iter().cloned().collect();
        if let Some(l) = number.and_then(|n| n.lease.as_ref()) {
            if !ids.contains(&l.item) {
                ids.push(l.item.clone());
            }
        }
        ids
    }

    /// The rule. `states[i]` is what the store loaded for `batch[i]`.
    ///
    /// * Every number must be in the pool and within the device's scope, or
    ///   the whole batch is refused ([`ReceiveRefusal`]).
    /// * An SMS that names its app goes to that app's queue, with the code
    ///   extracted by the app's pattern (the lease's item when it names
    ///   none).
    /// * An SMS for a number under a live lease (not ended, and for the
    ///   lease's item when the SMS names one) reaches the lessee's mailbox;
    ///   the lease's price is captured from its hold by the first such SMS
    ///   only (op id `capture:<lease>`), and the lease is marked charged.
    /// * A mailbox keeps `mailbox_cap` entries: the oldest entries held
    ///   before the batch are dropped to make room (a single batch larger
    ///   than the cap is kept whole).
    pub fn decide(&self, states: &[ReceiveState]) -> Result<ReceiveEffects, ReceiveRefusal> {
        if states.len() != self.batch.len() {
            return Err(ReceiveRefusal::UnknownNumber);
        }
        let mut numbers = Vec::with_capacity(states.len());
        for (sms, state) in self.batch.iter().zip(states) {
            let Some(number) = &state.number else {
                return Err(ReceiveRefusal::UnknownNumber);
            };
            if number.info.mobile != sms.mobile {
                return Err(ReceiveRefusal::UnknownNumber);
            }
            if !self.scope.covers(&number.info.cid) {
                return Err(ReceiveRefusal::OutsideScope);
            }
            numbers.push(number);
        }
        let mut effects = ReceiveEffects::default();
        let mut charged: BTreeSet<&str> = BTreeSet::new();
        // Per lessee: entries held before the batch, and pushes added.
        let mut mailboxes: HashMap<&UserId, (usize, usize)> = HashMap::new();
        for ((sms, state), number) in self.batch.iter().zip(states).zip(numbers) {
            let lease_ref = number
                .lease
                .as_ref()
                .filter(|l| l.until > self.now)
                .filter(|l| sms.appname.as_deref().is_none_or(|a| a == l.item));
            let item_id = sms
                .appname
                .as_deref()
                .or_else(|| lease_ref.map(|l| l.item.as_str()));
            let pattern = item_id
                .and_then(|id| state.items.iter().find(|i| i.id == id))
                .and_then(|i| i.code_pattern.as_deref());
            if let Some(app) = &sms.appname {
                let code = extract_code(&sms.text, pattern).unwrap_or_else(|| sms.text.clone());
                effects.queue.push((
                    app.clone(),
                    ReceivedSms {
                        mobile: sms.mobile.clone(),
                        text: sms.text.clone(),
                        code,
                        appname: sms.appname.clone(),
                        chanlid: sms.chanlid.clone(),
                        at: self.now,
                    },
                ));
            }
            let Some(lease_ref) = lease_ref else {
                continue;
            };
            // The record must be the lease the number names.
            let Some(lease) = state.lease.as_ref().filter(|l| l.id == lease_ref.lease_id) else {
                continue;
            };
            if !lease.charged && charged.insert(lease.id.as_str()) {
                if lease.price > 0 {
                    effects.captures.push(LedgerRequest {
                        op_id: format!("capture:{}", lease.id),
                        user: lease.user.clone(),
                        op: LedgerOp::Capture {
                            hold_id: lease.hold_id.clone(),
                            amount: lease.price,
                        },
                        at: self.now,
                    });
                }
                effects.charge_leases.push(lease.id.clone());
            }
            let held = mailboxes
                .entry(&lease.user)
                .or_insert((state.mailbox_len, 0));
            held.1 += 1;
            effects.pushes.push((
                lease.user.clone(),
                Push::RecvMsg {
                    mobile: sms.mobile.to_string(),
                    msg: sms.text.clone(),
                    at: self.now,
                },
            ));
        }
        for (user, (held, added)) in mailboxes {
            let over = (held + added).saturating_sub(self.mailbox_cap).min(held);
            if over > 0 {
                effects.trims.push((user.clone(), over));
            }
        }
        effects.trims.sort();
        Ok(effects)
    }
}

/// Why a batch was refused; nothing of it was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReceiveRefusal {
    /// A number of the batch is not in the pool.
    UnknownNumber,
    /// A number of the batch belongs to a channel outside the device's
    /// scope.
    OutsideScope,
}

impl From<ReceiveRefusal> for crate::CoreError {
    fn from(r: ReceiveRefusal) -> Self {
        match r {
            ReceiveRefusal::UnknownNumber => Self::InvalidParameter("mobile"),
            ReceiveRefusal::OutsideScope => Self::OutsideDeviceScope,
        }
    }
}

/// What a store commits for an accepted batch, in one atomic write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiveEffects {
    /// Appended to each app's queue, in order.
    pub queue: Vec<(String, ReceivedSms)>,
    /// Ledger captures (each idempotent by its op id), applied in order.
    pub captures: Vec<LedgerRequest>,
    /// Leases to mark charged.
    pub charge_leases: Vec<String>,
    /// Mailbox entries to append, in order (the store assigns sequences).
    pub pushes: Vec<(UserId, Push)>,
    /// How many of each user's oldest mailbox entries (held before the
    /// batch) to drop.
    pub trims: Vec<(UserId, usize)>,
}

/// What an accepted batch did, for the caller to publish and log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Received {
    /// Each mailbox entry appended, with the sequence the store gave it.
    pub pushed: Vec<(UserId, u64, Push)>,
    /// Mailbox entries dropped for the cap, per user.
    pub dropped: Vec<(UserId, u64)>,
    /// Lease prices captured (each a lease's first SMS).
    pub captured: usize,
}

/// The answer of [`crate::store::PhonePool::receive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Committed.
    Received(Received),
    /// Refused; nothing changed.
    Refused(ReceiveRefusal),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::PhoneNumber;
    use crate::pool::{LeaseRef, NumberInfo, Operator};

    fn phone(s: &str) -> PhoneNumber {
        PhoneNumber::parse_cn_mobile(s).unwrap()
    }

    fn number(mobile: &str, cid: &str, lease: Option<(&str, &str, i64)>) -> PoolNumber {
        PoolNumber {
            info: NumberInfo {
                mobile: phone(mobile),
                cid: cid.into(),
                imsi: String::new(),
                imei: String::new(),
                iccid: String::new(),
                ip: String::new(),
                area: None,
            },
            operator: Operator::parse("cmcc").unwrap(),
            added_at: 0,
            lease: lease.map(|(id, item, until)| LeaseRef {
                lease_id: id.into(),
                user: UserId::from_string("u1".into()),
                item: item.into(),
                until,
            }),
            used_for: BTreeSet::new(),
        }
    }

    fn lease(id: &str, item: &str, until: i64, charged: bool) -> Lease {
        Lease {
            id: id.into(),
            mobile: phone("13700001111"),
            user: UserId::from_string("u1".into()),
            item: item.into(),
            started_at: 0,
            until,
            hold_id: format!("hold:{id}"),
            price: 5,
            charged,
            settled: false,
        }
    }

    fn sms(mobile: &str, text: &str, app: Option<&str>) -> IncomingSms {
        IncomingSms {
            mobile: phone(mobile),
            text: text.into(),
            appname: app.map(str::to_owned),
            chanlid: None,
        }
    }

    fn request(batch: Vec<IncomingSms>, cap: usize) -> ReceiveRequest {
        ReceiveRequest {
            scope: DeviceScope::Any,
            batch,
            now: 100,
            mailbox_cap: cap,
        }
    }

    fn leased_state(charged: bool, mailbox_len: usize) -> ReceiveState {
        ReceiveState {
            number: Some(number("13700001111", "c1", Some(("l1", "app", 200)))),
            lease: Some(lease("l1", "app", 200, charged)),
            items: vec![Item {
                id: "app".into(),
                name: "app".into(),
                price: 5,
                send_price: 1,
                code_pattern: None,
            }],
            mailbox_len,
        }
    }

    #[test]
    fn the_first_sms_of_a_lease_captures_once_and_every_sms_reaches_the_mailbox() {
        let req = request(
            vec![
                sms("13700001111", "code 123456", None),
                sms("13700001111", "again 654321", None),
            ],
            10,
        );
        let state = leased_state(false, 0);
        let fx = req.decide(&[state.clone(), state]).unwrap();
        assert_eq!(fx.captures.len(), 1);
        assert_eq!(fx.captures[0].op_id, "capture:l1");
        assert_eq!(fx.charge_leases, vec!["l1".to_string()]);
        assert_eq!(fx.pushes.len(), 2);
        assert!(fx.queue.is_empty(), "no app named: no queue entry");
        assert!(fx.trims.is_empty());
        // Already charged: nothing captured again.
        let fx = req
            .decide(&[leased_state(true, 0), leased_state(true, 0)])
            .unwrap();
        assert!(fx.captures.is_empty() && fx.charge_leases.is_empty());
        assert_eq!(fx.pushes.len(), 2);
    }

    #[test]
    fn an_ended_lease_or_another_app_gets_nothing_but_the_queue_does() {
        let mut req = request(vec![sms("13700001111", "123456", Some("other"))], 10);
        let fx = req.decide(&[leased_state(false, 0)]).unwrap();
        assert_eq!(fx.queue.len(), 1);
        assert_eq!(fx.queue[0].0, "other");
        assert_eq!(fx.queue[0].1.code, "123456");
        assert!(fx.pushes.is_empty() && fx.captures.is_empty());
        req.batch = vec![sms("13700001111", "123456", None)];
        req.now = 200;
        let fx = req.decide(&[leased_state(false, 0)]).unwrap();
        assert_eq!(fx, ReceiveEffects::default());
    }

    #[test]
    fn unknown_numbers_and_foreign_channels_refuse_the_whole_batch() {
        let req = request(
            vec![sms("13700001111", "1", None), sms("13700002222", "2", None)],
            10,
        );
        let missing = ReceiveState::default();
        assert_eq!(
            req.decide(&[leased_state(false, 0), missing]),
            Err(ReceiveRefusal::UnknownNumber)
        );
        let mut scoped = request(vec![sms("13700001111", "1", None)], 10);
        scoped.scope = DeviceScope::Channels(["c2".to_string()].into());
        assert_eq!(
            scoped.decide(&[leased_state(false, 0)]),
            Err(ReceiveRefusal::OutsideScope)
        );
    }

    #[test]
    fn the_mailbox_cap_drops_the_oldest_entries_held_before() {
        let req = request(
            vec![sms("13700001111", "1", None), sms("13700001111", "2", None)],
            3,
        );
        let state = leased_state(true, 3);
        let fx = req.decide(&[state.clone(), state]).unwrap();
        assert_eq!(fx.trims, vec![(UserId::from_string("u1".into()), 2)]);
        // Held 1, cap 3, +2: room enough.
        let state = leased_state(true, 1);
        assert!(req
            .decide(&[state.clone(), state])
            .unwrap()
            .trims
            .is_empty());
    }

    #[test]
    fn the_code_pattern_of_the_lease_item_extracts_the_code() {
        let req = request(
            vec![sms("13700001111", "Your code: 4321. Hi", Some("app"))],
            10,
        );
        let mut state = leased_state(false, 0);
        state.items[0].code_pattern = Some(r"code: (\d{4})".into());
        let fx = req.decide(&[state]).unwrap();
        assert_eq!(fx.queue[0].1.code, "4321");
        assert_eq!(fx.pushes.len(), 1);
    }
}
