//! The code-receiving platform's rules: numbers in from devices, numbers out
//! to consumers (`pool`) and leased to users (`hub`), received SMS routed to
//! their lessee and charged once, texts queued for devices, and leases
//! settled when they end.

use std::sync::Arc;

use crate::billing::{refusal_error, Billing};
use crate::clock::Clock;
use crate::error::CoreError;
use crate::events::{Event, EventHub, Push};
use crate::ledger::{Amount, LedgerOp};
use crate::phone::PhoneNumber;
use crate::pool::{
    DeviceMessage, HoldTerms, Intake, Item, Lease, LeaseFilter, LeaseOutcome, LeaseRequest,
    NumberInfo, PoolStats, ReceivedSms, MAX_ITEM_ID_LEN,
};
use crate::random::{random_hex, RandomSource};
use crate::receive::{ReceiveOutcome, ReceiveRequest};
use crate::store::{EntryQuery, Purged, Stores};
use crate::user::UserId;

/// Which device channels (`cid`s) a device credential may act for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DeviceScope {
    /// Any channel (no credentials configured, or an unbound device token).
    #[default]
    Any,
    /// Only these channels: uploads of numbers with another `cid`, or of
    /// numbers another channel holds, codes for such numbers, and texts
    /// queued for other channels are refused
    /// ([`CoreError::OutsideDeviceScope`]).
    Channels(std::collections::BTreeSet<String>),
}

impl DeviceScope {
    /// True when `cid` is one of the scope's channels.
    pub fn covers(&self, cid: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Channels(c) => c.contains(cid),
        }
    }

    fn check(&self, cid: &str) -> Result<(), CoreError> {
        if self.covers(cid) {
            Ok(())
        } else {
            Err(CoreError::OutsideDeviceScope)
        }
    }
}

/// Pool rules; every number is configuration with these defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Length of a lease (20 minutes).
    pub lease_secs: i64,
    /// Numbers per lease request (20).
    pub max_lease_count: u32,
    /// Numbers per `GET /mobiles` (100).
    pub max_hand_out: u32,
    /// Longest text a user may send from a leased number (500 chars).
    pub max_message_chars: usize,
    /// A lease hold expires this long after its leases end (120 s): the
    /// sweeper settles leases first, then releases whatever a crash left
    /// reserved.
    pub hold_grace_secs: i64,
    /// Retention (72 h): unfetched codes (`GET /vcodes/<app>`), texts for
    /// devices (`GET /sends/<cid>`) and undelivered mailbox entries older
    /// than this are dropped by [`PoolService::purge_expired`].
    pub retention_secs: i64,
    /// Entries kept in one user's mailbox (1,000); a push beyond it drops
    /// the oldest, counted in the logs.
    pub mailbox_cap: usize,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            lease_secs: 20 * 60,
            max_lease_count: 20,
            max_hand_out: 100,
            max_message_chars: 500,
            hold_grace_secs: 120,
            retention_secs: 72 * 3_600,
            mailbox_cap: 1_000,
        }
    }
}

/// An SMS as a device uploads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingSms {
    /// The receiving number.
    pub mobile: PhoneNumber,
    /// The text (`vcode`).
    pub text: String,
    /// The app it is for, if known.
    pub appname: Option<String>,
    /// The device's channel.
    pub chanlid: Option<String>,
}

/// The pool service.
#[derive(Debug, Clone)]
pub struct PoolService {
    stores: Stores,
    billing: Arc<Billing>,
    events: Arc<dyn EventHub>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    policy: PoolPolicy,
}

impl PoolService {
    /// A pool service over the ports.
    pub fn new(
        stores: Stores,
        billing: Arc<Billing>,
        events: Arc<dyn EventHub>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        policy: PoolPolicy,
    ) -> Self {
        Self {
            stores,
            billing,
            events,
            clock,
            rng,
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &PoolPolicy {
        &self.policy
    }

    /// Sets the pool size (`/setsize`).
    pub async fn set_size(&self, size: u32) -> Result<(), CoreError> {
        Ok(self.stores.pool.set_pool_size(size).await?)
    }

    /// The pool size.
    pub async fn size(&self) -> Result<u32, CoreError> {
        Ok(self.stores.pool.pool_stats().await?.size)
    }

    /// The pool at a glance: size, numbers stored, unsettled leases (root).
    pub async fn stats(&self) -> Result<PoolStats, CoreError> {
        Ok(self.stores.pool.pool_stats().await?)
    }

    /// Every item, by id (root).
    pub async fn items(&self) -> Result<Vec<Item>, CoreError> {
        Ok(self.stores.items.items().await?)
    }

    /// Numbers from a device (`POST /phones`).
    pub async fn upload_numbers(&self, entries: Vec<NumberInfo>) -> Result<Intake, CoreError> {
        self.upload_numbers_for(&DeviceScope::Any, entries).await
    }

    /// Numbers in from a device acting for `scope`: every entry's `cid`,
    /// and the `cid` of a number already in the pool, must be in the scope
    /// ([`CoreError::OutsideDeviceScope`], nothing stored), so one device
    /// cannot take over another's numbers (and the texts sent from them).
    pub async fn upload_numbers_for(
        &self,
        scope: &DeviceScope,
        entries: Vec<NumberInfo>,
    ) -> Result<Intake, CoreError> {
        if let DeviceScope::Channels(_) = scope {
            for e in &entries {
                scope.check(&e.cid)?;
                if let Some(n) = self.stores.pool.number(&e.mobile).await? {
                    scope.check(&n.info.cid)?;
                }
            }
        }
        Ok(self.stores.pool.intake(entries, self.clock.unix()).await?)
    }

    /// Up to `n` numbers never handed out for `app` (`GET /mobiles`).
    pub async fn hand_out(&self, app: &str, n: u32) -> Result<Vec<NumberInfo>, CoreError> {
        if n == 0 || n > self.policy.max_hand_out {
            return Err(CoreError::InvalidParameter("n"));
        }
        check_item_id(app)?;
        Ok(self
            .stores
            .pool
            .hand_out(app, n as usize, self.clock.unix())
            .await?)
    }

    /// Creates or updates an item (root).
    pub async fn put_item(&self, item: Item) -> Result<(), CoreError> {
        check_item_id(&item.id)?;
        if item.price < 0 || item.send_price < 0 {
            return Err(CoreError::InvalidParameter("price"));
        }
        if let Some(p) = &item.code_pattern {
            if p.len() > 512 || regex::Regex::new(p).is_err() {
                return Err(CoreError::InvalidParameter("code_pattern"));
            }
        }
        Ok(self.stores.items.put_item(item).await?)
    }

    /// The item with this id.
    pub async fn item(&self, id: &str) -> Result<Option<Item>, CoreError> {
        if check_item_id(id).is_err() {
            return Ok(None);
        }
        Ok(self.stores.items.item(id).await?)
    }

    /// How many numbers one lease request may ask for: 1 to
    /// [`PoolPolicy::max_lease_count`] ([`CoreError::InvalidCount`]
    /// otherwise). [`lease`](Self::lease) applies it; a front end that must
    /// answer a bad count before other fields asks here instead of copying
    /// the rule.
    pub fn check_lease_count(&self, count: u32) -> Result<(), CoreError> {
        if count == 0 || count > self.policy.max_lease_count {
            return Err(CoreError::InvalidCount);
        }
        Ok(())
    }

    /// Leases up to `count` numbers for `item_id` to `user` (`hub`
    /// `CSMobileNum`). Checks, in order: the item
    /// ([`CoreError::ItemNotFound`]), the count
    /// ([`CoreError::InvalidCount`]), a custom number
    /// ([`CoreError::NumberUnavailable`]), the balance for `count × price`
    /// ([`CoreError::InsufficientBalance`]); no number at all is
    /// [`CoreError::NoNumbers`]. The price of each lease is held and taken when
    /// its first SMS arrives.
    pub async fn lease(
        &self,
        user: &UserId,
        item_id: &str,
        count: u32,
        filter: LeaseFilter,
    ) -> Result<Vec<Lease>, CoreError> {
        let r = self.lease_unmetered(user, item_id, count, filter).await;
        let outcome = match &r {
            Ok(_) => "leased",
            Err(CoreError::NoNumbers) => "no_numbers",
            Err(CoreError::NumberUnavailable) => "unavailable",
            Err(CoreError::InsufficientBalance { .. }) => "insufficient_balance",
            Err(CoreError::Store(_)) => "error",
            Err(_) => "refused",
        };
        metrics::counter!(crate::metrics::LEASES, "outcome" => outcome).increment(1);
        r
    }

    async fn lease_unmetered(
        &self,
        user: &UserId,
        item_id: &str,
        count: u32,
        filter: LeaseFilter,
    ) -> Result<Vec<Lease>, CoreError> {
        let item = self.item(item_id).await?.ok_or(CoreError::ItemNotFound)?;
        self.check_lease_count(count)?;
        let now = self.clock.unix();
        if let Some(custom) = &filter.custom {
            let ok = self
                .stores
                .pool
                .number(custom)
                .await?
                .is_some_and(|n| filter.admits(&n, &item.id, now));
            if !ok {
                return Err(CoreError::NumberUnavailable);
            }
        }
        if item.price.checked_mul(i64::from(count)).is_none() {
            return Err(CoreError::InvalidCount);
        }
        let hold_id = self.billing.new_op_id("lease");
        let lease_ids = (0..count)
            .map(|_| random_hex(self.rng.as_ref(), 12))
            .collect();
        // One store call: the hold of count × price, the numbers, and the
        // release of what the numbers not found would have cost.
        let outcome = self
            .stores
            .pool
            .lease(LeaseRequest {
                user: user.clone(),
                item: item.id.clone(),
                lease_ids,
                filter: filter.clone(),
                now,
                until: now.saturating_add(self.policy.lease_secs),
                hold_id,
                price: item.price,
                hold: Some(HoldTerms {
                    // Released by the sweeper if it outlives its lease.
                    expires_at: Some(
                        now.saturating_add(self.policy.lease_secs + self.policy.hold_grace_secs),
                    ),
                }),
            })
            .await?;
        let leases = match outcome {
            LeaseOutcome::Leased(l) => l,
            LeaseOutcome::Refused(r) => return Err(refusal_error(r)),
        };
        if leases.is_empty() {
            return Err(if filter.custom.is_some() {
                CoreError::NumberUnavailable
            } else {
                CoreError::NoNumbers
            });
        }
        Ok(leases)
    }

    /// SMS from devices (`POST /vcodes`): each is queued for its app (when
    /// named) and, when its number is leased for that app (any app when none
    /// is named), delivered to the lessee's mailbox and live sessions; the
    /// lease's price is taken with its first SMS.
    pub async fn receive(&self, batch: Vec<IncomingSms>) -> Result<(), CoreError> {
        self.receive_for(&DeviceScope::Any, batch).await
    }

    /// [`receive`](Self::receive) from a device acting for `scope`. Every
    /// number must be in the pool ([`CoreError::InvalidParameter`]
    /// `"mobile"` otherwise: codes for numbers never uploaded, or no longer
    /// stored, are not kept) and held by a channel of the scope
    /// ([`CoreError::OutsideDeviceScope`]); a refused batch stores nothing.
    pub async fn receive_for(
        &self,
        scope: &DeviceScope,
        batch: Vec<IncomingSms>,
    ) -> Result<(), CoreError> {
        let request = ReceiveRequest {
            scope: scope.clone(),
            batch,
            now: self.clock.unix(),
            mailbox_cap: self.policy.mailbox_cap,
        };
        let done = match self.stores.pool.receive(request).await? {
            ReceiveOutcome::Received(done) => done,
            ReceiveOutcome::Refused(r) => return Err(r.into()),
        };
        for (user, dropped) in &done.dropped {
            tracing::warn!(
                user = %user,
                dropped,
                cap = self.policy.mailbox_cap,
                "mailbox full: oldest entries dropped"
            );
        }
        for (user, seq, push) in done.pushed {
            self.events.publish(&user, Event::Push { seq, push });
        }
        Ok(())
    }

    /// Retention: drops unfetched codes, texts for devices and mailbox
    /// entries older than [`PoolPolicy::retention_secs`] (the sweeper runs
    /// it), logging how many of each went.
    pub async fn purge_expired(&self) -> Result<Purged, CoreError> {
        let before = self.clock.unix().saturating_sub(self.policy.retention_secs);
        let purged = self.stores.queues.purge_before(before).await?;
        if purged != Purged::default() {
            tracing::info!(
                sms = purged.sms,
                device_messages = purged.device_messages,
                mailbox = purged.mailbox,
                "retention: old entries dropped"
            );
        }
        Ok(purged)
    }

    /// Queued SMS of `app`, oldest first, each once (`GET /vcodes/<app>`).
    pub async fn take_codes(&self, app: &str, max: usize) -> Result<Vec<ReceivedSms>, CoreError> {
        check_item_id(app)?;
        Ok(self.stores.queues.take_sms(app, max).await?)
    }

    /// A user sends a text from a number they lease (`hub` `CSSendMsg`).
    /// Checks, in order: the item ([`CoreError::ItemNotFound`]), the lease
    /// ([`CoreError::NotLeased`]), the text
    /// ([`CoreError::MessageEmpty`] / [`CoreError::MessageTooLong`]), the
    /// balance ([`CoreError::InsufficientBalance`]).
    pub async fn send_from(
        &self,
        user: &UserId,
        item_id: &str,
        mobile: &str,
        msg: &str,
    ) -> Result<(), CoreError> {
        let item = self.item(item_id).await?.ok_or(CoreError::ItemNotFound)?;
        let now = self.clock.unix();
        let phone = PhoneNumber::parse_cn_mobile(mobile).map_err(|_| CoreError::NotLeased)?;
        let number = self
            .stores
            .pool
            .number(&phone)
            .await?
            .ok_or(CoreError::NotLeased)?;
        let leased = number
            .lease
            .as_ref()
            .is_some_and(|l| &l.user == user && l.item == item.id && l.until > now);
        if !leased {
            return Err(CoreError::NotLeased);
        }
        if msg.is_empty() {
            return Err(CoreError::MessageEmpty);
        }
        if msg.chars().count() > self.policy.max_message_chars {
            return Err(CoreError::MessageTooLong);
        }
        if item.send_price > 0 {
            self.billing
                .apply(
                    user,
                    self.billing.new_op_id("send"),
                    LedgerOp::Debit {
                        amount: item.send_price,
                    },
                )
                .await?;
        }
        self.stores
            .queues
            .push_device_message(
                &number.info.cid,
                DeviceMessage {
                    mobile: phone,
                    item_id: item.id,
                    msg: msg.to_owned(),
                    at: now,
                },
            )
            .await?;
        Ok(())
    }

    /// Texts queued for the device on `cid`, each once (`GET /sends/<cid>`).
    pub async fn take_device_messages(
        &self,
        cid: &str,
        max: usize,
    ) -> Result<Vec<DeviceMessage>, CoreError> {
        self.take_device_messages_for(&DeviceScope::Any, cid, max)
            .await
    }

    /// [`take_device_messages`](Self::take_device_messages) for a device
    /// acting for `scope` ([`CoreError::OutsideDeviceScope`] for a channel
    /// outside it).
    pub async fn take_device_messages_for(
        &self,
        scope: &DeviceScope,
        cid: &str,
        max: usize,
    ) -> Result<Vec<DeviceMessage>, CoreError> {
        scope.check(cid)?;
        Ok(self.stores.queues.take_device_messages(cid, max).await?)
    }

    /// Sets the pool gauge (`sms_pool_numbers{state}`, `free` and `leased`)
    /// from the store's counters ([`crate::store::PhonePool::pool_stats`],
    /// no scan of the pool). The lease sweeper of the platform calls it
    /// every second.
    pub async fn record_census(&self) -> Result<(), CoreError> {
        let c = self.stores.pool.pool_stats().await?;
        metrics::gauge!(crate::metrics::POOL_NUMBERS, "state" => "free").set(c.available() as f64);
        metrics::gauge!(crate::metrics::POOL_NUMBERS, "state" => "leased")
            .set(c.open_leases as f64);
        Ok(())
    }

    /// Settles leases that have ended: the held price of a lease that never
    /// got an SMS is released, exactly once. Then releases what expired holds
    /// still reserve (holds orphaned by a crash between holding and leasing).
    /// Returns how many leases were settled.
    pub async fn settle_due(&self, limit: usize) -> Result<usize, CoreError> {
        let now = self.clock.unix();
        let due = self.stores.pool.due_leases(now, limit).await?;
        let mut n = 0;
        for lease in due {
            self.settle(&lease).await?;
            n += 1;
        }
        for hold in self.stores.ledger.expired_holds(now, limit).await? {
            tracing::warn!(hold = %hold.hold_id, amount = hold.remaining, "releasing an expired hold");
            self.billing
                .apply(
                    &hold.user,
                    format!("expire:{}", hold.hold_id),
                    LedgerOp::Release {
                        amount: hold.remaining,
                        hold_id: hold.hold_id,
                    },
                )
                .await?;
        }
        Ok(n)
    }

    async fn settle(&self, lease: &Lease) -> Result<(), CoreError> {
        let captured = !self
            .stores
            .ledger
            .entries(&EntryQuery::Op(format!("capture:{}", lease.id)))
            .await?
            .is_empty();
        if !captured && lease.price > 0 {
            let released = self
                .billing
                .apply(
                    &lease.user,
                    format!("release:{}", lease.id),
                    LedgerOp::Release {
                        hold_id: lease.hold_id.clone(),
                        amount: lease.price,
                    },
                )
                .await;
            match released {
                Ok(_) => {}
                // The hold already expired and was released whole.
                Err(CoreError::InvalidParameter("hold")) => {}
                Err(e) => return Err(e),
            }
        }
        self.stores.pool.mark_settled(&lease.id).await?;
        Ok(())
    }

    /// The user's whole mailbox (pushes not yet delivered), oldest first.
    /// Sessions read it a page at a time with [`mailbox_page`](Self::mailbox_page).
    pub async fn mailbox(&self, user: &UserId) -> Result<Vec<(u64, Push)>, CoreError> {
        Ok(self.stores.queues.mailbox(user, None, usize::MAX).await?)
    }

    /// Up to `max` mailbox entries with a sequence number above `after`
    /// (from the start when `None`), oldest first.
    pub async fn mailbox_page(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<(u64, Push)>, CoreError> {
        Ok(self.stores.queues.mailbox(user, after, max).await?)
    }

    /// Acknowledges one delivered push.
    pub async fn ack(&self, user: &UserId, seq: u64) -> Result<(), CoreError> {
        Ok(self.stores.queues.mailbox_ack(user, seq).await?)
    }

    /// The price held for leases is in `Balance::held`; this is what a user
    /// can spend.
    pub async fn available(&self, user: &UserId) -> Result<Amount, CoreError> {
        Ok(self.billing.balance(user).await?.available())
    }
}

fn check_item_id(id: &str) -> Result<(), CoreError> {
    if id.is_empty() || id.len() > MAX_ITEM_ID_LEN || id.chars().any(char::is_control) {
        return Err(CoreError::InvalidParameter("item"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "pool_service_tests.rs"]
mod tests;
