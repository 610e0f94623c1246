//! An in-memory backend of every store port: the reference implementation,
//! and a test double for embedders. One mutex guards all state, which makes
//! every operation trivially atomic.

use std::collections::{BTreeMap, VecDeque};

/// The store's maps hash with foldhash (seeded per map, as std's SipHash
/// is, but several times faster on the short keys held here).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use crate::code_decision::{CodeDecision, CodeState, CodeVerdict};
use crate::error::{StoreError, UniqueField};
use crate::events::Push;
use crate::identity::Email;
use crate::ledger::{transition, Balance, Hold, LedgerEntry, LedgerOutcome, LedgerRequest};
use crate::limits::{evaluate, LimitCheck, LimitDecision, LimitState};
use crate::phone::PhoneNumber;
use crate::pool::{
    DeviceMessage, Intake, IntakeTally, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo,
    PoolNumber, PoolStats, PoolSweep, ReceivedSms, UsedRun,
};
use crate::receive::{ReceiveOutcome, ReceiveRequest, ReceiveState, Received};
use crate::secret::TokenHash;
use crate::sending::{
    receipt_transition, AuditStatus, ReceiptOutcome, ReceiptUpdate, RecipientStatus, SendTask,
    Signature, TaskState, Template,
};
use crate::session_decision::OpenSession;
use crate::store::{
    CodeKey, CodeRecord, CodeStore, ConsumeOutcome, EntryQuery, Grant, GrantKind, GrantStore,
    ItemStore, LedgerStore, LimitMode, LimitStore, PhonePool, Purged, QueueStore, RevokeScope,
    SendStore, Session, SessionStore, SignatureWrite, StoreResult, TemplateWrite, UserKey,
    UserStore, WriteOutcome, DEFAULT_POOL_SIZE,
};
use crate::user::{User, UserChange, UserId};

#[derive(Debug, Default)]
struct Inner {
    users: HashMap<UserId, User>,
    by_username: HashMap<String, UserId>,
    by_phone: HashMap<PhoneNumber, UserId>,
    by_email: HashMap<Email, UserId>,
    sessions: HashMap<TokenHash, Session>,
    next_session_seq: u64,
    codes: HashMap<CodeKey, CodeRecord>,
    grants: HashMap<(GrantKind, PhoneNumber), Grant>,
    limits: HashMap<String, LimitState>,
    pool_size: Option<u32>,
    /// Numbers in upload order (`BTreeMap` by insertion sequence).
    numbers: BTreeMap<u64, PoolNumber>,
    number_seq: HashMap<PhoneNumber, u64>,
    next_number: u64,
    /// Per app, its [`UsedRun`]s by `last`: `last → first`.
    used_runs: HashMap<String, BTreeMap<u64, u64>>,
    leases: HashMap<String, Lease>,
    open_leases: usize,
    items: HashMap<String, Item>,
    sms: HashMap<String, VecDeque<ReceivedSms>>,
    device: HashMap<String, VecDeque<DeviceMessage>>,
    mailboxes: HashMap<UserId, BTreeMap<u64, Push>>,
    next_seq: u64,
    balances: HashMap<UserId, Balance>,
    holds: HashMap<String, Hold>,
    entries: HashMap<String, LedgerEntry>,
    user_entries: HashMap<UserId, Vec<String>>,
    signatures: BTreeMap<i64, Signature>,
    templates: BTreeMap<i64, Template>,
    next_sign_id: i64,
    next_temp_id: i64,
    tasks: HashMap<String, SendTask>,
    task_order: Vec<String>,
    statuses: HashMap<String, Vec<RecipientStatus>>,
    /// (carrier or "", gateway id) → (task uuid, recipient index).
    gateway_ids: HashMap<(String, String), (String, usize)>,
}

/// Every store port in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    /// Up to `want` numbers passing `eligible`, oldest first, each given to
    /// `take` (which marks it used for `app`): only `custom` when given,
    /// else a [`PoolSweep`] over the pool and `app`'s runs.
    fn claim<T>(
        &mut self,
        app: &str,
        want: usize,
        custom: Option<&PhoneNumber>,
        eligible: impl Fn(&PoolNumber) -> bool,
        mut take: impl FnMut(&mut PoolNumber) -> Option<T>,
    ) -> Vec<T> {
        let mut out = Vec::new();
        if want == 0 {
            return out;
        }
        if let Some(phone) = custom {
            // One number can pass: no walk, and no run to change (a later
            // sweep finds it used and folds it into a run).
            let seq = self.number_seq.get(phone).copied();
            if let Some(num) = seq.and_then(|s| self.numbers.get_mut(&s)) {
                if eligible(num) {
                    out.extend(take(num));
                }
            }
            return out;
        }
        let runs = self.used_runs.remove(app).unwrap_or_default();
        let mut sweep = PoolSweep::new(app);
        while out.len() < want {
            let Some(from) = sweep.from() else { break };
            let Some((&seq, num)) = self.numbers.range_mut(from..).next() else {
                break;
            };
            let run = runs
                .range(seq..)
                .next()
                .map(|(&last, &first)| UsedRun { first, last });
            if sweep.skip_run(seq, run) {
                continue;
            }
            let ok = eligible(num);
            out.extend(sweep.visit(seq, num, ok, &mut take));
        }
        let changes = sweep.finish();
        let mut runs = runs;
        for r in changes.removed {
            runs.remove(&r.last);
        }
        for r in changes.added {
            runs.insert(r.last, r.first);
        }
        if !runs.is_empty() {
            self.used_runs.insert(app.to_owned(), runs);
        }
        out
    }

    fn lookup(&self, id: Option<&UserId>) -> Option<User> {
        id.and_then(|id| self.users.get(id)).cloned()
    }

    /// [`StoreError::Conflict`] if the new user's id or a unique field is
    /// taken.
    fn check_unique(&self, user: &User) -> StoreResult<()> {
        if self.users.contains_key(&user.id) {
            return Err(StoreError::Conflict(UniqueField::Id));
        }
        if user
            .username
            .as_ref()
            .is_some_and(|u| self.by_username.contains_key(&u.key()))
        {
            return Err(StoreError::Conflict(UniqueField::Username));
        }
        if user
            .phone
            .as_ref()
            .is_some_and(|p| self.by_phone.contains_key(p))
        {
            return Err(StoreError::Conflict(UniqueField::Phone));
        }
        if user
            .email
            .as_ref()
            .is_some_and(|e| self.by_email.contains_key(e))
        {
            return Err(StoreError::Conflict(UniqueField::Email));
        }
        Ok(())
    }

    /// Appends `push` to `user`'s mailbox under the next sequence.
    fn push_mailbox(&mut self, user: &UserId, push: Push) -> u64 {
        self.next_seq += 1;
        let seq = self.next_seq;
        self.mailboxes
            .entry(user.clone())
            .or_default()
            .insert(seq, push);
        seq
    }

    /// Applies [`transition`] for `request` with its balance, hold and entry.
    fn apply_ledger(&mut self, request: LedgerRequest) -> LedgerOutcome {
        let balance = self
            .balances
            .get(&request.user)
            .copied()
            .unwrap_or_default();
        if self.entries.contains_key(&request.op_id) {
            return LedgerOutcome::Duplicate(balance);
        }
        let hold = request
            .op
            .hold_id()
            .and_then(|h| self.holds.get(h))
            .cloned();
        match transition(balance, hold.as_ref(), &request) {
            Err(r) => LedgerOutcome::Refused(r),
            Ok((after, hold)) => {
                if let Some(h) = hold {
                    self.holds.insert(h.hold_id.clone(), h);
                }
                self.balances.insert(request.user.clone(), after);
                self.user_entries
                    .entry(request.user.clone())
                    .or_default()
                    .push(request.op_id.clone());
                self.entries.insert(
                    request.op_id.clone(),
                    LedgerEntry {
                        request,
                        balance_after: after,
                    },
                );
                LedgerOutcome::Applied(after)
            }
        }
    }

    /// Stores a user that passed [`check_unique`](Self::check_unique).
    fn insert_user(&mut self, user: User) {
        if let Some(u) = &user.username {
            self.by_username.insert(u.key(), user.id.clone());
        }
        if let Some(p) = &user.phone {
            self.by_phone.insert(p.clone(), user.id.clone());
        }
        if let Some(e) = &user.email {
            self.by_email.insert(e.clone(), user.id.clone());
        }
        self.users.insert(user.id.clone(), user);
    }
}

#[async_trait]
impl UserStore for MemoryStore {
    async fn create_user(&self, user: User) -> StoreResult<()> {
        let mut g = self.lock();
        g.check_unique(&user)?;
        g.insert_user(user);
        Ok(())
    }

    async fn user(&self, key: &UserKey) -> StoreResult<Option<User>> {
        let g = self.lock();
        Ok(g.lookup(match key {
            UserKey::Id(id) => Some(id),
            UserKey::Username(username) => g.by_username.get(&username.key()),
            UserKey::Phone(phone) => g.by_phone.get(phone),
            UserKey::Email(email) => g.by_email.get(email),
        }))
    }

    async fn update_user(&self, id: &UserId, change: UserChange) -> StoreResult<User> {
        let mut g = self.lock();
        let before = g.users.get(id).cloned().ok_or(StoreError::NotFound)?;
        let mut after = before.clone();
        change.apply(&mut after);
        if after.email != before.email {
            if let Some(e) = &after.email {
                if g.by_email.get(e).is_some_and(|owner| owner != id) {
                    return Err(StoreError::Conflict(UniqueField::Email));
                }
                g.by_email.insert(e.clone(), id.clone());
            }
            if let Some(old) = &before.email {
                g.by_email.remove(old);
            }
        }
        g.users.insert(id.clone(), after);
        Ok(before)
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn open_session(&self, request: OpenSession) -> StoreResult<Session> {
        let mut g = self.lock();
        let user_id = &request.session.user_id;
        if let Some(user) = &request.new_user {
            g.check_unique(user)?;
        }
        let existing: Vec<Session> = g
            .sessions
            .values()
            .filter(|s| &s.user_id == user_id)
            .cloned()
            .collect();
        g.next_session_seq += 1;
        let admission = request.apply(&existing, g.next_session_seq);
        if let Some(user) = request.new_user {
            g.insert_user(user);
        }
        for hash in &admission.evict {
            g.sessions.remove(hash);
        }
        g.sessions
            .insert(admission.session.token_hash, admission.session.clone());
        Ok(admission.session)
    }

    async fn session(&self, token_hash: &TokenHash) -> StoreResult<Option<Session>> {
        Ok(self.lock().sessions.get(token_hash).cloned())
    }

    async fn mark_session_used(
        &self,
        token_hash: &TokenHash,
        now: i64,
    ) -> StoreResult<Option<Session>> {
        let mut g = self.lock();
        Ok(g.sessions.get_mut(token_hash).map(|s| {
            let before = s.clone();
            s.first_used_at.get_or_insert(now);
            before
        }))
    }

    async fn revoke(&self, scope: RevokeScope) -> StoreResult<usize> {
        let mut g = self.lock();
        let before = g.sessions.len();
        match scope {
            RevokeScope::Session(hash) => {
                g.sessions.remove(&hash);
            }
            RevokeScope::User { user_id, keep } => g
                .sessions
                .retain(|h, s| s.user_id != user_id || Some(*h) == keep),
        }
        Ok(before - g.sessions.len())
    }

    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        Ok(self
            .lock()
            .sessions
            .values()
            .filter(|s| &s.user_id == user_id)
            .cloned()
            .collect())
    }
}

#[async_trait]
impl CodeStore for MemoryStore {
    async fn decide_code(&self, decision: CodeDecision) -> StoreResult<CodeVerdict> {
        let mut g = self.lock();
        let g = &mut *g;
        let keys = decision.limit_keys();
        // The states are moved out and back in, not cloned: the pumping
        // breaker's counter of a busy prefix holds hundreds of hits.
        let mut state = CodeState {
            code: g.codes.get(decision.key()).cloned(),
            limits: keys
                .iter()
                .map(|k| g.limits.get_mut(*k).map(std::mem::take).unwrap_or_default())
                .collect(),
            grant: None,
        };
        let verdict = decision.apply(&mut state);
        if let Some(grant) = state.grant {
            g.grants.insert((grant.kind, grant.phone.clone()), grant);
        }
        match state.code {
            Some(code) => {
                g.codes.insert(decision.key().clone(), code);
            }
            None => {
                g.codes.remove(decision.key());
            }
        }
        for (k, s) in keys.into_iter().zip(state.limits) {
            match g.limits.get_mut(k) {
                Some(old) => *old = s,
                None if s == LimitState::default() => {}
                None => {
                    g.limits.insert(k.to_owned(), s);
                }
            }
        }
        Ok(verdict)
    }

    async fn code(&self, key: &CodeKey) -> StoreResult<Option<CodeRecord>> {
        Ok(self.lock().codes.get(key).cloned())
    }
}

#[async_trait]
impl GrantStore for MemoryStore {
    async fn put_grant(&self, grant: Grant) -> StoreResult<()> {
        self.lock()
            .grants
            .insert((grant.kind, grant.phone.clone()), grant);
        Ok(())
    }

    async fn grant(&self, kind: GrantKind, phone: &PhoneNumber) -> StoreResult<Option<Grant>> {
        Ok(self.lock().grants.get(&(kind, phone.clone())).cloned())
    }

    async fn consume_grant(
        &self,
        kind: GrantKind,
        phone: &PhoneNumber,
        presented: Option<TokenHash>,
        now: i64,
    ) -> StoreResult<ConsumeOutcome> {
        Ok(match self.lock().grants.get_mut(&(kind, phone.clone())) {
            Some(g) => g.consume(presented.as_ref(), now),
            None => ConsumeOutcome::Missing,
        })
    }
}

#[async_trait]
impl LimitStore for MemoryStore {
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: LimitMode,
    ) -> StoreResult<LimitDecision> {
        let mut g = self.lock();
        let states: Vec<LimitState> = checks
            .iter()
            .map(|c| g.limits.get(&c.key).cloned().unwrap_or_default())
            .collect();
        let decision = evaluate(&states, checks, now);
        if mode == LimitMode::Acquire && decision.is_allowed() {
            for (mut s, c) in states.into_iter().zip(checks) {
                s.record(&c.rule, now);
                g.limits.insert(c.key.clone(), s);
            }
        }
        Ok(decision)
    }

    async fn record(&self, check: &LimitCheck, now: i64) -> StoreResult<()> {
        self.lock()
            .limits
            .entry(check.key.clone())
            .or_default()
            .record(&check.rule, now);
        Ok(())
    }

    async fn reset(&self, key: &str) -> StoreResult<()> {
        self.lock().limits.remove(key);
        Ok(())
    }
}

#[async_trait]
impl PhonePool for MemoryStore {
    async fn pool_stats(&self) -> StoreResult<PoolStats> {
        let g = self.lock();
        Ok(PoolStats {
            size: g.pool_size.unwrap_or(DEFAULT_POOL_SIZE),
            numbers: g.numbers.len() as u64,
            open_leases: g.open_leases as u64,
        })
    }

    async fn set_pool_size(&self, size: u32) -> StoreResult<()> {
        self.lock().pool_size = Some(size);
        Ok(())
    }

    async fn intake(&self, entries: Vec<NumberInfo>, now: i64) -> StoreResult<Intake> {
        let mut g = self.lock();
        let g = &mut *g;
        let size = g.pool_size.unwrap_or(DEFAULT_POOL_SIZE);
        let mut tally = IntakeTally::new(size, g.numbers.len() as u64, g.open_leases as u64);
        for info in entries {
            if let Some(&seq) = g.number_seq.get(&info.mobile) {
                if let Some(n) = g.numbers.get_mut(&seq) {
                    tally.refresh(n, &info);
                }
                continue;
            }
            if let Some(number) = tally.admit(&info, now) {
                let seq = g.next_number;
                g.next_number += 1;
                g.number_seq.insert(info.mobile, seq);
                g.numbers.insert(seq, number);
            }
        }
        Ok(tally.finish())
    }

    async fn number(&self, mobile: &PhoneNumber) -> StoreResult<Option<PoolNumber>> {
        let g = self.lock();
        Ok(g.number_seq
            .get(mobile)
            .and_then(|s| g.numbers.get(s))
            .cloned())
    }

    async fn hand_out(&self, app: &str, n: usize, now: i64) -> StoreResult<Vec<NumberInfo>> {
        let mut g = self.lock();
        Ok(g.claim(
            app,
            n,
            None,
            |num| num.available_for(app, now),
            |num| Some(num.hand_out(app)),
        ))
    }

    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome> {
        let mut g = self.lock();
        if let Some(hold) = req.hold_request() {
            if let LedgerOutcome::Refused(r) = g.apply_ledger(hold) {
                return Ok(LeaseOutcome::Refused(r));
            }
        }
        let mut ids = req.lease_ids.iter();
        let out = g.claim(
            &req.item,
            req.lease_ids.len(),
            req.filter.custom.as_ref(),
            |num| req.eligible(num),
            |num| ids.next().map(|id| num.lease_to(&req, id)),
        );
        g.open_leases += out.len();
        for l in &out {
            g.leases.insert(l.id.clone(), l.clone());
        }
        if let Some(release) = req.release_request(out.len()) {
            g.apply_ledger(release);
        }
        Ok(LeaseOutcome::Leased(out))
    }

    async fn lease_record(&self, id: &str) -> StoreResult<Option<Lease>> {
        Ok(self.lock().leases.get(id).cloned())
    }

    async fn receive(&self, req: ReceiveRequest) -> StoreResult<ReceiveOutcome> {
        let mut g = self.lock();
        let states: Vec<ReceiveState> = req
            .batch
            .iter()
            .map(|sms| {
                let number = g
                    .number_seq
                    .get(&sms.mobile)
                    .and_then(|s| g.numbers.get(s))
                    .cloned();
                let lease = number
                    .as_ref()
                    .and_then(|n| n.lease.as_ref())
                    .and_then(|l| g.leases.get(&l.lease_id))
                    .cloned();
                let items = ReceiveRequest::item_ids(sms, number.as_ref())
                    .iter()
                    .filter_map(|id| g.items.get(id).cloned())
                    .collect();
                let mailbox_len = lease
                    .as_ref()
                    .and_then(|l| g.mailboxes.get(&l.user))
                    .map_or(0, BTreeMap::len);
                ReceiveState {
                    number,
                    lease,
                    items,
                    mailbox_len,
                }
            })
            .collect();
        let fx = match req.decide(&states) {
            Ok(fx) => fx,
            Err(refused) => return Ok(ReceiveOutcome::Refused(refused)),
        };
        let mut done = Received::default();
        for (app, sms) in fx.queue {
            g.sms.entry(app).or_default().push_back(sms);
        }
        done.captured = fx.captures.len();
        for capture in fx.captures {
            g.apply_ledger(capture);
        }
        for id in &fx.charge_leases {
            if let Some(l) = g.leases.get_mut(id) {
                l.charged = true;
            }
        }
        for (user, n) in fx.trims {
            if let Some(m) = g.mailboxes.get_mut(&user) {
                for _ in 0..n {
                    m.pop_first();
                }
            }
            done.dropped.push((user, n as u64));
        }
        for (user, push) in fx.pushes {
            let seq = g.push_mailbox(&user, push.clone());
            done.pushed.push((user, seq, push));
        }
        Ok(ReceiveOutcome::Received(done))
    }

    async fn due_leases(&self, now: i64, limit: usize) -> StoreResult<Vec<Lease>> {
        let g = self.lock();
        let mut due: Vec<Lease> = g
            .leases
            .values()
            .filter(|l| !l.settled && l.until <= now)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.until, &a.id).cmp(&(b.until, &b.id)));
        due.truncate(limit);
        Ok(due)
    }

    async fn mark_settled(&self, id: &str) -> StoreResult<bool> {
        let mut g = self.lock();
        let changed = match g.leases.get_mut(id) {
            Some(l) if !l.settled => {
                l.settled = true;
                true
            }
            _ => false,
        };
        if changed {
            g.open_leases = g.open_leases.saturating_sub(1);
        }
        Ok(changed)
    }
}

#[async_trait]
impl ItemStore for MemoryStore {
    async fn put_item(&self, item: Item) -> StoreResult<()> {
        self.lock().items.insert(item.id.clone(), item);
        Ok(())
    }

    async fn item(&self, id: &str) -> StoreResult<Option<Item>> {
        Ok(self.lock().items.get(id).cloned())
    }

    async fn items(&self) -> StoreResult<Vec<Item>> {
        let mut all: Vec<Item> = self.lock().items.values().cloned().collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }
}

fn take_front<T>(q: Option<&mut VecDeque<T>>, max: usize) -> Vec<T> {
    match q {
        Some(q) => {
            let n = max.min(q.len());
            q.drain(..n).collect()
        }
        None => Vec::new(),
    }
}

#[async_trait]
impl QueueStore for MemoryStore {
    async fn push_sms(&self, app: &str, sms: ReceivedSms) -> StoreResult<()> {
        self.lock()
            .sms
            .entry(app.to_owned())
            .or_default()
            .push_back(sms);
        Ok(())
    }

    async fn take_sms(&self, app: &str, max: usize) -> StoreResult<Vec<ReceivedSms>> {
        Ok(take_front(self.lock().sms.get_mut(app), max))
    }

    async fn push_device_message(&self, cid: &str, message: DeviceMessage) -> StoreResult<()> {
        self.lock()
            .device
            .entry(cid.to_owned())
            .or_default()
            .push_back(message);
        Ok(())
    }

    async fn take_device_messages(&self, cid: &str, max: usize) -> StoreResult<Vec<DeviceMessage>> {
        Ok(take_front(self.lock().device.get_mut(cid), max))
    }

    async fn mailbox_push(&self, user: &UserId, push: Push) -> StoreResult<u64> {
        Ok(self.lock().push_mailbox(user, push))
    }

    async fn mailbox(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> StoreResult<Vec<(u64, Push)>> {
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .lock()
            .mailboxes
            .get(user)
            .map(|m| {
                m.range((from, Bound::Unbounded))
                    .take(max)
                    .map(|(k, v)| (*k, v.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn mailbox_ack(&self, user: &UserId, seq: u64) -> StoreResult<()> {
        if let Some(m) = self.lock().mailboxes.get_mut(user) {
            m.remove(&seq);
        }
        Ok(())
    }

    async fn purge_before(&self, before: i64) -> StoreResult<Purged> {
        fn purge<T>(queues: &mut HashMap<String, VecDeque<T>>, old: impl Fn(&T) -> bool) -> u64 {
            let mut n = 0;
            for q in queues.values_mut() {
                let len = q.len();
                q.retain(|e| !old(e));
                n += (len - q.len()) as u64;
            }
            queues.retain(|_, q| !q.is_empty());
            n
        }
        let mut g = self.lock();
        let sms = purge(&mut g.sms, |m| m.at < before);
        let device_messages = purge(&mut g.device, |m| m.at < before);
        let mut mailbox = 0;
        for m in g.mailboxes.values_mut() {
            let len = m.len();
            m.retain(|_, p| p.at() == 0 || p.at() >= before);
            mailbox += (len - m.len()) as u64;
        }
        Ok(Purged {
            sms,
            device_messages,
            mailbox,
        })
    }
}

#[async_trait]
impl LedgerStore for MemoryStore {
    async fn apply(&self, request: LedgerRequest) -> StoreResult<LedgerOutcome> {
        Ok(self.lock().apply_ledger(request))
    }

    async fn balance(&self, user: &UserId) -> StoreResult<Balance> {
        Ok(self.lock().balances.get(user).copied().unwrap_or_default())
    }

    async fn entries(&self, query: &EntryQuery) -> StoreResult<Vec<LedgerEntry>> {
        let g = self.lock();
        Ok(match query {
            EntryQuery::Op(op_id) => g.entries.get(op_id).cloned().into_iter().collect(),
            EntryQuery::User(user) => g
                .user_entries
                .get(user)
                .map(|ids| {
                    ids.iter()
                        .filter_map(|id| g.entries.get(id).cloned())
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    async fn hold(&self, hold_id: &str) -> StoreResult<Option<Hold>> {
        Ok(self.lock().holds.get(hold_id).cloned())
    }

    async fn expired_holds(&self, now: i64, limit: usize) -> StoreResult<Vec<Hold>> {
        let g = self.lock();
        let mut out: Vec<Hold> = g
            .holds
            .values()
            .filter(|h| h.remaining > 0 && h.expires_at.is_some_and(|e| e <= now))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.expires_at, &a.hold_id).cmp(&(b.expires_at, &b.hold_id)));
        out.truncate(limit);
        Ok(out)
    }
}

#[async_trait]
impl SendStore for MemoryStore {
    async fn write_signature(&self, write: SignatureWrite) -> StoreResult<WriteOutcome<Signature>> {
        let mut g = self.lock();
        Ok(match write {
            SignatureWrite::Create(mut sig) => {
                g.next_sign_id += 1;
                sig.id = g.next_sign_id;
                g.signatures.insert(sig.id, sig.clone());
                WriteOutcome::Created(sig)
            }
            SignatureWrite::Replace { old, new } => match g.signatures.get(&old.id) {
                Some(cur) if *cur == old => {
                    g.signatures.insert(old.id, new);
                    WriteOutcome::Replaced
                }
                _ => WriteOutcome::Stale,
            },
            SignatureWrite::Delete(id) => {
                if !g.signatures.contains_key(&id) {
                    WriteOutcome::Missing
                } else if g.templates.values().any(|t| t.sign_id == id) {
                    WriteOutcome::InUse
                } else {
                    g.signatures.remove(&id);
                    WriteOutcome::Deleted
                }
            }
        })
    }

    async fn signature(&self, id: i64) -> StoreResult<Option<Signature>> {
        Ok(self.lock().signatures.get(&id).cloned())
    }

    async fn signatures_of(&self, owner: &UserId) -> StoreResult<Vec<Signature>> {
        Ok(self
            .lock()
            .signatures
            .values()
            .filter(|s| &s.owner == owner)
            .cloned()
            .collect())
    }

    async fn write_template(&self, write: TemplateWrite) -> StoreResult<WriteOutcome<Template>> {
        let mut g = self.lock();
        Ok(match write {
            TemplateWrite::Create(mut template) => {
                if !g.signatures.contains_key(&template.sign_id) {
                    return Ok(WriteOutcome::Missing);
                }
                g.next_temp_id += 1;
                template.id = g.next_temp_id;
                g.templates.insert(template.id, template.clone());
                WriteOutcome::Created(template)
            }
            TemplateWrite::Replace { old, new } => {
                let sign_ok = g.signatures.contains_key(&new.sign_id);
                match g.templates.get(&old.id) {
                    Some(cur) if *cur == old && sign_ok => {
                        g.templates.insert(old.id, new);
                        WriteOutcome::Replaced
                    }
                    _ => WriteOutcome::Stale,
                }
            }
            TemplateWrite::Delete(id) => match g.templates.remove(&id) {
                Some(_) => WriteOutcome::Deleted,
                None => WriteOutcome::Missing,
            },
        })
    }

    async fn template(&self, id: i64) -> StoreResult<Option<Template>> {
        Ok(self.lock().templates.get(&id).cloned())
    }

    async fn templates_of(&self, owner: &UserId) -> StoreResult<Vec<Template>> {
        Ok(self
            .lock()
            .templates
            .values()
            .filter(|t| &t.owner == owner)
            .cloned()
            .collect())
    }

    async fn create_task(&self, task: SendTask) -> StoreResult<()> {
        let mut g = self.lock();
        if g.tasks.contains_key(&task.uuid) {
            return Err(StoreError::Conflict(UniqueField::Id));
        }
        g.statuses.insert(
            task.uuid.clone(),
            vec![RecipientStatus::Pending; task.recipients.len()],
        );
        g.task_order.push(task.uuid.clone());
        g.tasks.insert(task.uuid.clone(), task);
        Ok(())
    }

    async fn task(&self, uuid: &str) -> StoreResult<Option<SendTask>> {
        Ok(self.lock().tasks.get(uuid).cloned())
    }

    async fn set_task_state(
        &self,
        uuid: &str,
        from: TaskState,
        to: TaskState,
        at: i64,
    ) -> StoreResult<bool> {
        let mut g = self.lock();
        Ok(g.tasks
            .get_mut(uuid)
            .is_some_and(|t| t.move_state(from, to, at)))
    }

    async fn recipient_statuses(&self, uuid: &str) -> StoreResult<Vec<RecipientStatus>> {
        Ok(self.lock().statuses.get(uuid).cloned().unwrap_or_default())
    }

    async fn record_statuses(
        &self,
        uuid: &str,
        updates: Vec<(usize, RecipientStatus)>,
    ) -> StoreResult<()> {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(v) = g.statuses.get_mut(uuid) {
            for (i, st) in updates {
                if let Some(slot) = v.get_mut(i) {
                    if *slot == RecipientStatus::Pending {
                        if let RecipientStatus::Sent {
                            gateway_id,
                            carrier,
                            ..
                        } = &st
                        {
                            g.gateway_ids.insert(
                                (carrier.clone().unwrap_or_default(), gateway_id.clone()),
                                (uuid.to_owned(), i),
                            );
                        }
                        *slot = st;
                    }
                }
            }
        }
        Ok(())
    }

    async fn pending_reviews(&self, max: usize) -> StoreResult<(Vec<Signature>, Vec<Template>)> {
        let g = self.lock();
        let sigs = g
            .signatures
            .values()
            .filter(|s| s.audit == AuditStatus::Pending)
            .take(max)
            .cloned()
            .collect();
        let temps = g
            .templates
            .values()
            .filter(|t| t.audit == AuditStatus::Pending)
            .take(max)
            .cloned()
            .collect();
        Ok((sigs, temps))
    }

    async fn recipient_by_gateway_id(
        &self,
        carrier: &str,
        gateway_id: &str,
    ) -> StoreResult<Option<(String, usize)>> {
        Ok(self
            .lock()
            .gateway_ids
            .get(&(carrier.to_owned(), gateway_id.to_owned()))
            .cloned())
    }

    async fn apply_receipt(
        &self,
        uuid: &str,
        index: usize,
        update: ReceiptUpdate,
    ) -> StoreResult<ReceiptOutcome> {
        let mut g = self.lock();
        let Some(task) = g.tasks.get(uuid).cloned() else {
            return Ok(ReceiptOutcome::Unknown);
        };
        let Some(current) = g.statuses.get(uuid).and_then(|v| v.get(index)).cloned() else {
            return Ok(ReceiptOutcome::Unknown);
        };
        let Some((next, refund)) = receipt_transition(&task, index, &current, &update) else {
            return Ok(ReceiptOutcome::Unchanged(current));
        };
        let mut refunded = 0;
        if let Some(request) = refund {
            let amount = match &request.op {
                crate::ledger::LedgerOp::Refund { amount } => *amount,
                _ => 0,
            };
            // Under the one lock: the status and the refund move together.
            if let LedgerOutcome::Applied(_) = g.apply_ledger(request) {
                refunded = amount;
            }
        }
        if let Some(slot) = g.statuses.get_mut(uuid).and_then(|v| v.get_mut(index)) {
            *slot = next.clone();
        }
        Ok(ReceiptOutcome::Applied {
            status: next,
            refunded,
        })
    }

    async fn open_tasks(&self) -> StoreResult<Vec<String>> {
        let g = self.lock();
        Ok(g.task_order
            .iter()
            .filter(|u| {
                g.tasks
                    .get(*u)
                    .is_some_and(|t| matches!(t.state, TaskState::Created | TaskState::Queued))
            })
            .cloned()
            .collect())
    }
}

#[cfg(all(test, feature = "testkit"))]
mod conformance {
    crate::store_conformance_tests!(async {
        crate::store::Stores::from_single(std::sync::Arc::new(super::MemoryStore::new()))
    });

    /// Nothing to reopen: the same store twice.
    #[test]
    fn pool_hand_outs_survive_reopen() {
        let store = std::sync::Arc::new(super::MemoryStore::new());
        crate::testkit::run(crate::testkit::pool_hand_outs_survive_reopen(|| {
            let store = store.clone();
            async move { crate::store::Stores::from_single(store) }
        }));
    }
}
