//! [`Metered`]: a decorator over the store ports that times every call
//! (`sms_store_operation_duration_seconds{op}`, `op` = `<port>.<method>`,
//! e.g. `codes.decide_code`) and counts ledger movements
//! (`sms_ledger_operations_total{kind,outcome}`), whatever the backend.
//!
//! A method that takes one of several kinds of request is labelled by the
//! kind, with the name of the method that served that kind before the
//! ports were merged (so the label values did not change): e.g.
//! [`UserStore::user`] by phone is `users.user_by_phone`,
//! [`SessionStore::revoke`] of one session `sessions.revoke_session`,
//! [`SendStore::write_template`] with a `Replace` `sending.replace_template`.
//!
//! [`Stores::metered`] wraps every port of a [`Stores`]; the platform does
//! it once at start. Through the [`metrics`] facade: without a recorder the
//! timing costs one clock read per call and nothing is kept.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use crate::code_decision::{CodeDecision, CodeVerdict};
use crate::events::Push;
use crate::ledger::{Balance, Hold, LedgerEntry, LedgerOp, LedgerOutcome, LedgerRequest};
use crate::limits::{LimitCheck, LimitDecision};
use crate::metrics::{LEDGER_OPERATIONS, STORE_OPERATION_DURATION};
use crate::phone::PhoneNumber;
use crate::pool::{
    DeviceMessage, Intake, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo, PoolNumber,
    PoolStats, ReceivedSms,
};
use crate::receive::{ReceiveOutcome, ReceiveRequest};
use crate::secret::TokenHash;
use crate::sending::{
    ReceiptOutcome, ReceiptUpdate, RecipientStatus, SendTask, Signature, TaskState, Template,
};
use crate::session_decision::OpenSession;
use crate::store::*;
use crate::user::{User, UserChange, UserId};

/// One store port, timed. Built by [`Stores::metered`].
#[derive(Debug)]
pub struct Metered<T: ?Sized> {
    inner: Arc<T>,
}

impl<T: ?Sized> Metered<T> {
    /// Times the calls to `inner`.
    pub fn new(inner: Arc<T>) -> Self {
        Self { inner }
    }
}

impl Stores {
    /// The same stores, every call timed and every ledger movement counted
    /// (see [`crate::metered`]).
    pub fn metered(self) -> Self {
        Self {
            users: Arc::new(Metered::new(self.users)),
            sessions: Arc::new(Metered::new(self.sessions)),
            codes: Arc::new(Metered::new(self.codes)),
            grants: Arc::new(Metered::new(self.grants)),
            limits: Arc::new(Metered::new(self.limits)),
            pool: Arc::new(Metered::new(self.pool)),
            items: Arc::new(Metered::new(self.items)),
            queues: Arc::new(Metered::new(self.queues)),
            ledger: Arc::new(Metered::new(self.ledger)),
            sending: Arc::new(Metered::new(self.sending)),
        }
    }
}

async fn timed<R>(op: &'static str, call: impl Future<Output = R>) -> R {
    let start = Instant::now();
    let r = call.await;
    metrics::histogram!(STORE_OPERATION_DURATION, "op" => op).record(start.elapsed());
    r
}

/// The `kind` label of a ledger movement.
fn ledger_kind(op: &LedgerOp) -> &'static str {
    match op {
        LedgerOp::Charge { .. } => "charge",
        LedgerOp::Debit { .. } => "debit",
        LedgerOp::Refund { .. } => "refund",
        LedgerOp::Hold { .. } => "hold",
        LedgerOp::Capture { .. } => "capture",
        LedgerOp::Release { .. } => "release",
    }
}

#[async_trait]
impl UserStore for Metered<dyn UserStore> {
    async fn create_user(&self, user: User) -> StoreResult<()> {
        timed("users.create_user", self.inner.create_user(user)).await
    }
    async fn user(&self, key: &UserKey) -> StoreResult<Option<User>> {
        let op = match key {
            UserKey::Id(_) => "users.user",
            UserKey::Username(_) => "users.user_by_username",
            UserKey::Phone(_) => "users.user_by_phone",
            UserKey::Email(_) => "users.user_by_email",
        };
        timed(op, self.inner.user(key)).await
    }
    async fn update_user(&self, id: &UserId, change: UserChange) -> StoreResult<User> {
        timed("users.update_user", self.inner.update_user(id, change)).await
    }
}

#[async_trait]
impl SessionStore for Metered<dyn SessionStore> {
    async fn open_session(&self, request: OpenSession) -> StoreResult<Session> {
        timed("sessions.open_session", self.inner.open_session(request)).await
    }
    async fn session(&self, token_hash: &TokenHash) -> StoreResult<Option<Session>> {
        timed("sessions.session", self.inner.session(token_hash)).await
    }
    async fn mark_session_used(
        &self,
        token_hash: &TokenHash,
        now: i64,
    ) -> StoreResult<Option<Session>> {
        timed(
            "sessions.mark_session_used",
            self.inner.mark_session_used(token_hash, now),
        )
        .await
    }
    async fn revoke(&self, scope: RevokeScope) -> StoreResult<usize> {
        let op = match scope {
            RevokeScope::Session(_) => "sessions.revoke_session",
            RevokeScope::User { .. } => "sessions.revoke_user_sessions",
        };
        timed(op, self.inner.revoke(scope)).await
    }
    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        timed("sessions.user_sessions", self.inner.user_sessions(user_id)).await
    }
}

#[async_trait]
impl CodeStore for Metered<dyn CodeStore> {
    async fn decide_code(&self, decision: CodeDecision) -> StoreResult<CodeVerdict> {
        timed("codes.decide_code", self.inner.decide_code(decision)).await
    }
    async fn code(&self, key: &CodeKey) -> StoreResult<Option<CodeRecord>> {
        timed("codes.code", self.inner.code(key)).await
    }
}

#[async_trait]
impl GrantStore for Metered<dyn GrantStore> {
    async fn put_grant(&self, grant: Grant) -> StoreResult<()> {
        timed("grants.put_grant", self.inner.put_grant(grant)).await
    }
    async fn grant(&self, kind: GrantKind, phone: &PhoneNumber) -> StoreResult<Option<Grant>> {
        timed("grants.grant", self.inner.grant(kind, phone)).await
    }
    async fn consume_grant(
        &self,
        kind: GrantKind,
        phone: &PhoneNumber,
        presented: Option<TokenHash>,
        now: i64,
    ) -> StoreResult<ConsumeOutcome> {
        timed(
            "grants.consume_grant",
            self.inner.consume_grant(kind, phone, presented, now),
        )
        .await
    }
}

#[async_trait]
impl LimitStore for Metered<dyn LimitStore> {
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: LimitMode,
    ) -> StoreResult<LimitDecision> {
        let op = match mode {
            LimitMode::Acquire => "limits.acquire",
            LimitMode::Peek => "limits.peek",
        };
        timed(op, self.inner.check(checks, now, mode)).await
    }
    async fn record(&self, check: &LimitCheck, now: i64) -> StoreResult<()> {
        timed("limits.record", self.inner.record(check, now)).await
    }
    async fn reset(&self, key: &str) -> StoreResult<()> {
        timed("limits.reset", self.inner.reset(key)).await
    }
}

#[async_trait]
impl PhonePool for Metered<dyn PhonePool> {
    async fn pool_stats(&self) -> StoreResult<PoolStats> {
        timed("pool.pool_stats", self.inner.pool_stats()).await
    }
    async fn set_pool_size(&self, size: u32) -> StoreResult<()> {
        timed("pool.set_pool_size", self.inner.set_pool_size(size)).await
    }
    async fn intake(&self, entries: Vec<NumberInfo>, now: i64) -> StoreResult<Intake> {
        timed("pool.intake", self.inner.intake(entries, now)).await
    }
    async fn number(&self, mobile: &PhoneNumber) -> StoreResult<Option<PoolNumber>> {
        timed("pool.number", self.inner.number(mobile)).await
    }
    async fn hand_out(&self, app: &str, n: usize, now: i64) -> StoreResult<Vec<NumberInfo>> {
        timed("pool.hand_out", self.inner.hand_out(app, n, now)).await
    }
    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome> {
        // The lease's hold (and the release of what was not leased) are
        // ledger movements applied inside this one call.
        let has_hold = req.hold_request().is_some();
        let terms = req.clone();
        let r = timed("pool.lease", self.inner.lease(req)).await;
        let count = |kind: &'static str, outcome: &'static str| {
            metrics::counter!(LEDGER_OPERATIONS, "kind" => kind, "outcome" => outcome).increment(1);
        };
        match &r {
            Ok(LeaseOutcome::Leased(l)) => {
                if has_hold {
                    count("hold", "applied");
                }
                if terms.release_request(l.len()).is_some() {
                    count("release", "applied");
                }
            }
            Ok(LeaseOutcome::Refused(_)) if has_hold => count("hold", "refused"),
            Err(_) if has_hold => count("hold", "error"),
            Ok(LeaseOutcome::Refused(_)) | Err(_) => {}
        }
        r
    }
    async fn lease_record(&self, id: &str) -> StoreResult<Option<Lease>> {
        timed("pool.lease_record", self.inner.lease_record(id)).await
    }
    async fn receive(&self, req: ReceiveRequest) -> StoreResult<ReceiveOutcome> {
        // A lease's first SMS captures its price inside this one call.
        let r = timed("pool.receive", self.inner.receive(req)).await;
        if let Ok(ReceiveOutcome::Received(done)) = &r {
            if done.captured > 0 {
                metrics::counter!(LEDGER_OPERATIONS, "kind" => "capture", "outcome" => "applied")
                    .increment(done.captured as u64);
            }
        }
        r
    }
    async fn due_leases(&self, now: i64, limit: usize) -> StoreResult<Vec<Lease>> {
        timed("pool.due_leases", self.inner.due_leases(now, limit)).await
    }
    async fn mark_settled(&self, id: &str) -> StoreResult<bool> {
        timed("pool.mark_settled", self.inner.mark_settled(id)).await
    }
}

#[async_trait]
impl ItemStore for Metered<dyn ItemStore> {
    async fn put_item(&self, item: Item) -> StoreResult<()> {
        timed("items.put_item", self.inner.put_item(item)).await
    }
    async fn item(&self, id: &str) -> StoreResult<Option<Item>> {
        timed("items.item", self.inner.item(id)).await
    }
    async fn items(&self) -> StoreResult<Vec<Item>> {
        timed("items.items", self.inner.items()).await
    }
}

#[async_trait]
impl QueueStore for Metered<dyn QueueStore> {
    async fn push_sms(&self, app: &str, sms: ReceivedSms) -> StoreResult<()> {
        timed("queues.push_sms", self.inner.push_sms(app, sms)).await
    }
    async fn take_sms(&self, app: &str, max: usize) -> StoreResult<Vec<ReceivedSms>> {
        timed("queues.take_sms", self.inner.take_sms(app, max)).await
    }
    async fn push_device_message(&self, cid: &str, message: DeviceMessage) -> StoreResult<()> {
        timed(
            "queues.push_device_message",
            self.inner.push_device_message(cid, message),
        )
        .await
    }
    async fn take_device_messages(&self, cid: &str, max: usize) -> StoreResult<Vec<DeviceMessage>> {
        timed(
            "queues.take_device_messages",
            self.inner.take_device_messages(cid, max),
        )
        .await
    }
    async fn mailbox_push(&self, user: &UserId, push: Push) -> StoreResult<u64> {
        timed("queues.mailbox_push", self.inner.mailbox_push(user, push)).await
    }
    async fn mailbox(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> StoreResult<Vec<(u64, Push)>> {
        timed("queues.mailbox", self.inner.mailbox(user, after, max)).await
    }
    async fn mailbox_ack(&self, user: &UserId, seq: u64) -> StoreResult<()> {
        timed("queues.mailbox_ack", self.inner.mailbox_ack(user, seq)).await
    }
    async fn purge_before(&self, before: i64) -> StoreResult<Purged> {
        timed("queues.purge_before", self.inner.purge_before(before)).await
    }
}

#[async_trait]
impl LedgerStore for Metered<dyn LedgerStore> {
    async fn apply(&self, request: LedgerRequest) -> StoreResult<LedgerOutcome> {
        let kind = ledger_kind(&request.op);
        let r = timed("ledger.apply", self.inner.apply(request)).await;
        let outcome = match &r {
            Ok(LedgerOutcome::Applied(_)) => "applied",
            Ok(LedgerOutcome::Duplicate(_)) => "duplicate",
            Ok(LedgerOutcome::Refused(_)) => "refused",
            Err(_) => "error",
        };
        metrics::counter!(LEDGER_OPERATIONS, "kind" => kind, "outcome" => outcome).increment(1);
        r
    }
    async fn balance(&self, user: &UserId) -> StoreResult<Balance> {
        timed("ledger.balance", self.inner.balance(user)).await
    }
    async fn entries(&self, query: &EntryQuery) -> StoreResult<Vec<LedgerEntry>> {
        let op = match query {
            EntryQuery::Op(_) => "ledger.entry",
            EntryQuery::User(_) => "ledger.entries",
        };
        timed(op, self.inner.entries(query)).await
    }
    async fn hold(&self, hold_id: &str) -> StoreResult<Option<Hold>> {
        timed("ledger.hold", self.inner.hold(hold_id)).await
    }
    async fn expired_holds(&self, now: i64, limit: usize) -> StoreResult<Vec<Hold>> {
        timed("ledger.expired_holds", self.inner.expired_holds(now, limit)).await
    }
}

#[async_trait]
impl SendStore for Metered<dyn SendStore> {
    async fn write_signature(&self, write: SignatureWrite) -> StoreResult<WriteOutcome<Signature>> {
        let op = match write {
            SignatureWrite::Create(_) => "sending.create_signature",
            SignatureWrite::Replace { .. } => "sending.replace_signature",
            SignatureWrite::Delete(_) => "sending.delete_signature",
        };
        timed(op, self.inner.write_signature(write)).await
    }
    async fn signature(&self, id: i64) -> StoreResult<Option<Signature>> {
        timed("sending.signature", self.inner.signature(id)).await
    }
    async fn signatures_of(&self, owner: &UserId) -> StoreResult<Vec<Signature>> {
        timed("sending.signatures_of", self.inner.signatures_of(owner)).await
    }
    async fn write_template(&self, write: TemplateWrite) -> StoreResult<WriteOutcome<Template>> {
        let op = match write {
            TemplateWrite::Create(_) => "sending.create_template",
            TemplateWrite::Replace { .. } => "sending.replace_template",
            TemplateWrite::Delete(_) => "sending.delete_template",
        };
        timed(op, self.inner.write_template(write)).await
    }
    async fn template(&self, id: i64) -> StoreResult<Option<Template>> {
        timed("sending.template", self.inner.template(id)).await
    }
    async fn templates_of(&self, owner: &UserId) -> StoreResult<Vec<Template>> {
        timed("sending.templates_of", self.inner.templates_of(owner)).await
    }
    async fn create_task(&self, task: SendTask) -> StoreResult<()> {
        timed("sending.create_task", self.inner.create_task(task)).await
    }
    async fn task(&self, uuid: &str) -> StoreResult<Option<SendTask>> {
        timed("sending.task", self.inner.task(uuid)).await
    }
    async fn set_task_state(
        &self,
        uuid: &str,
        from: TaskState,
        to: TaskState,
        at: i64,
    ) -> StoreResult<bool> {
        timed(
            "sending.set_task_state",
            self.inner.set_task_state(uuid, from, to, at),
        )
        .await
    }
    async fn recipient_statuses(&self, uuid: &str) -> StoreResult<Vec<RecipientStatus>> {
        timed(
            "sending.recipient_statuses",
            self.inner.recipient_statuses(uuid),
        )
        .await
    }
    async fn record_statuses(
        &self,
        uuid: &str,
        updates: Vec<(usize, RecipientStatus)>,
    ) -> StoreResult<()> {
        timed(
            "sending.record_statuses",
            self.inner.record_statuses(uuid, updates),
        )
        .await
    }
    async fn pending_reviews(&self, max: usize) -> StoreResult<(Vec<Signature>, Vec<Template>)> {
        timed("sending.pending_reviews", self.inner.pending_reviews(max)).await
    }
    async fn recipient_by_gateway_id(
        &self,
        carrier: &str,
        gateway_id: &str,
    ) -> StoreResult<Option<(String, usize)>> {
        timed(
            "sending.recipient_by_gateway_id",
            self.inner.recipient_by_gateway_id(carrier, gateway_id),
        )
        .await
    }
    async fn apply_receipt(
        &self,
        uuid: &str,
        index: usize,
        update: ReceiptUpdate,
    ) -> StoreResult<ReceiptOutcome> {
        // A receipt's refund is a ledger movement inside this one call.
        let r = timed(
            "sending.apply_receipt",
            self.inner.apply_receipt(uuid, index, update),
        )
        .await;
        if let Ok(ReceiptOutcome::Applied { refunded, .. }) = &r {
            if *refunded > 0 {
                metrics::counter!(LEDGER_OPERATIONS, "kind" => "refund", "outcome" => "applied")
                    .increment(1);
            }
        }
        r
    }
    async fn open_tasks(&self) -> StoreResult<Vec<String>> {
        timed("sending.open_tasks", self.inner.open_tasks()).await
    }
}

#[cfg(all(test, feature = "testkit"))]
mod conformance {
    // The decorator changes nothing a store guarantees.
    crate::store_conformance_tests!(async {
        crate::store::Stores::from_single(std::sync::Arc::new(crate::memory::MemoryStore::new()))
            .metered()
    });
}
