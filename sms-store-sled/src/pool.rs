//! [`PhonePool`] and [`ItemStore`].
//!
//! Numbers live in `pool_numbers` (phone → [`PoolNumber`]) and, in upload
//! order, in `pool_order` (big-endian sequence → phone); numbers are never
//! removed. `pool_runs` holds each app's [`UsedRun`]s (app length, app,
//! big-endian `last` → big-endian `first`), changed in the transaction of
//! each hand-out and lease: a claim plans with a [`PoolSweep`] that jumps
//! over them, so its cost does not grow with the numbers the app already
//! had. `pool_meta` holds the pool size and two counters kept in the same
//! transactions as the changes they count: the stored numbers and the
//! unsettled leases. `leases_open` indexes the unsettled leases by end.

use std::collections::HashMap;

use async_trait::async_trait;
use sled::transaction::{abort, TransactionalTree};
use sled::Transactional;

use sms_core::ledger::LedgerOutcome;
use sms_core::phone::PhoneNumber;
use sms_core::pool::{
    Intake, IntakeTally, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo, PoolNumber,
    PoolStats, PoolSweep, RunChanges, UsedRun,
};
use sms_core::receive::{ReceiveOutcome, ReceiveRequest, ReceiveState, Received};
use sms_core::store::{ItemStore, PhonePool, StoreResult, DEFAULT_POOL_SIZE};
use sms_core::user::UserId;

use crate::{
    decode, decode_opt, encode, ledger, queues::tx_append, seq_entries, tx, Error, SledStore,
    Trees, TxResult, CLAIM_RETRIES, ITEMS, LEASES, MAILBOX, POOL_META, POOL_NUMBERS, POOL_ORDER,
    POOL_RUNS, SMS_QUEUE,
};

/// `pool_meta` key of the pool size (absent: [`DEFAULT_POOL_SIZE`]).
const META_SIZE: &[u8] = b"size";
/// `pool_meta` key of the count of stored numbers.
const META_NUMBERS: &[u8] = b"numbers";
/// `pool_meta` key of the count of unsettled leases.
const META_OPEN_LEASES: &[u8] = b"open_leases";

/// The `leases_open` key of a lease: its end, big-endian with the sign bit
/// flipped (so keys sort by end, negative ends included), then its id. Keys
/// sort by `(until, id)`, the order [`PhonePool::due_leases`] returns.
fn open_key(until: i64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&sortable(until));
    k.extend_from_slice(id.as_bytes());
    k
}

fn sortable(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn phone_key(phone: &PhoneNumber) -> &[u8] {
    phone.as_e164().as_bytes()
}

fn tx_counter(meta: &TransactionalTree, key: &[u8]) -> TxResult<u64> {
    Ok(tx(decode_opt(POOL_META, meta.get(key)?))?.unwrap_or(0))
}

fn tx_put_counter(meta: &TransactionalTree, key: &[u8], value: u64) -> TxResult<()> {
    meta.insert(key, tx(encode(POOL_META, &value))?)?;
    Ok(())
}

impl Trees {
    fn pool_number(&self, phone: &[u8]) -> Result<Option<PoolNumber>, Error> {
        decode_opt(POOL_NUMBERS, self.pool_numbers.get(phone)?)
    }

    /// The first of an app's runs (`prefix`: [`runs_prefix`]) ending at or
    /// after `seq`.
    fn run_from(&self, prefix: &[u8], seq: u64) -> Result<Option<UsedRun>, Error> {
        let range = run_key(prefix, seq)..=run_key(prefix, u64::MAX);
        let Some(entry) = self.pool_runs.range(range).next() else {
            return Ok(None);
        };
        let (key, first) = entry?;
        Ok(Some(UsedRun {
            first: be_u64(POOL_RUNS, &first)?,
            last: be_u64(POOL_RUNS, key.get(prefix.len()..).unwrap_or_default())?,
        }))
    }

    /// Plans a claim for `app` of up to `want` numbers passing `eligible`,
    /// oldest first: only `custom` when given, else a [`PoolSweep`] over
    /// `pool_order` and the app's runs, where `mark` (the claim's
    /// transition, on a copy) shows the sweep each candidate as used.
    /// Read on the writer thread, the only writer, so nothing changes
    /// before the claim's transaction (which checks again all the same).
    fn plan(
        &self,
        app: &str,
        want: usize,
        custom: Option<&PhoneNumber>,
        eligible: impl Fn(&PoolNumber) -> bool,
        mark: impl Fn(&mut PoolNumber),
    ) -> Result<Plan, Error> {
        let mut plan = Plan::default();
        if want == 0 {
            return Ok(plan);
        }
        if let Some(phone) = custom {
            // One number can pass: no walk, and no run to change (a later
            // sweep finds it used and folds it into a run).
            let key = phone_key(phone);
            if self.pool_number(key)?.is_some_and(|n| eligible(&n)) {
                plan.candidates.push(key.into());
            }
            return Ok(plan);
        }
        let prefix = runs_prefix(app);
        let mut sweep = PoolSweep::new(app);
        let mut order: Option<sled::Iter> = None;
        while plan.candidates.len() < want {
            let Some(from) = sweep.from() else { break };
            let entries = order.get_or_insert_with(|| self.pool_order.range(from.to_be_bytes()..));
            let Some(entry) = entries.next() else { break };
            let (key, phone) = entry?;
            let seq = be_u64(POOL_ORDER, &key)?;
            if sweep.skip_run(seq, self.run_from(&prefix, seq)?) {
                order = None;
                continue;
            }
            // Written in the same transaction as the order entry; a missing
            // record would be corruption, and cannot be claimed anyway.
            let Some(mut num) = self.pool_number(&phone)? else {
                sweep.pass(seq);
                continue;
            };
            let ok = eligible(&num);
            let taken = sweep.visit(seq, &mut num, ok, |n| {
                mark(n);
                Some(())
            });
            if taken.is_some() {
                plan.candidates.push(phone);
            }
        }
        plan.runs = sweep.finish();
        plan.prefix = prefix;
        Ok(plan)
    }
}

/// What a claim takes: the numbers (phone keys), oldest first, and the
/// changes to the app's runs.
#[derive(Default)]
struct Plan {
    candidates: Vec<sled::IVec>,
    prefix: Vec<u8>,
    runs: RunChanges,
}

impl Plan {
    /// Inside the claim's transaction: applies the run changes, aborting
    /// with [`Error::Raced`] when a run to remove is not as it was read.
    fn apply_runs(&self, runs: &TransactionalTree) -> TxResult<()> {
        for r in &self.runs.removed {
            let key = run_key(&self.prefix, r.last);
            if runs.get(&key)?.as_deref() != Some(&r.first.to_be_bytes()[..]) {
                return abort(Error::Raced);
            }
            runs.remove(key)?;
        }
        for r in &self.runs.added {
            runs.insert(run_key(&self.prefix, r.last), &r.first.to_be_bytes()[..])?;
        }
        Ok(())
    }
}

/// The key prefix of an app's runs in `pool_runs`: the app's length
/// (big-endian u32), then the app, so no app's prefix starts another's.
fn runs_prefix(app: &str) -> Vec<u8> {
    let len = u32::try_from(app.len()).unwrap_or(u32::MAX);
    let mut k = Vec::with_capacity(4 + app.len() + 8);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(app.as_bytes());
    k
}

/// The `pool_runs` key of a run ending at `last`.
fn run_key(prefix: &[u8], last: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&last.to_be_bytes());
    k
}

fn be_u64(tree: &'static str, bytes: &[u8]) -> Result<u64, Error> {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .map_err(|_| Error::Malformed {
            tree,
            what: "sequence is not 8 bytes",
        })
}

/// Inside a claim transaction: each of the planned candidates, which must
/// still pass `eligible` (else the claim aborts with [`Error::Raced`] and
/// is planned again), is given to `take`, then stored back; what `take`
/// returns is collected (`None` ends the claim). The plan's run changes
/// are applied with it.
fn claim_numbers<T>(
    numbers: &TransactionalTree,
    runs: &TransactionalTree,
    plan: &Plan,
    eligible: impl Fn(&PoolNumber) -> bool,
    mut take: impl FnMut(&mut PoolNumber) -> TxResult<Option<T>>,
) -> TxResult<Vec<T>> {
    let mut out = Vec::new();
    for phone in &plan.candidates {
        let Some(raw) = numbers.get(phone)? else {
            return abort(Error::Raced);
        };
        let mut num: PoolNumber = tx(decode(POOL_NUMBERS, &raw))?;
        if !eligible(&num) {
            return abort(Error::Raced);
        }
        let Some(got) = take(&mut num)? else {
            // Never reached (a plan has at most as many candidates as
            // wanted); the runs would cover a number left untaken.
            return abort(Error::Raced);
        };
        numbers.insert(phone, tx(encode(POOL_NUMBERS, &num))?)?;
        out.push(got);
    }
    plan.apply_runs(runs)?;
    Ok(out)
}

/// Inside a lease transaction: leases the planned numbers
/// ([`claim_numbers`]), keeping the open-lease count and index.
#[allow(clippy::too_many_arguments)]
fn claim_leases(
    req: &LeaseRequest,
    plan: &Plan,
    eligible: impl Fn(&PoolNumber) -> bool,
    numbers: &TransactionalTree,
    runs: &TransactionalTree,
    meta: &TransactionalTree,
    leases: &TransactionalTree,
    open: &TransactionalTree,
) -> TxResult<Vec<Lease>> {
    let mut open_count = tx_counter(meta, META_OPEN_LEASES)?;
    let mut ids = req.lease_ids.iter();
    let out = claim_numbers(numbers, runs, plan, eligible, |num| {
        let Some(id) = ids.next() else {
            return Ok(None);
        };
        let lease = num.lease_to(req, id);
        let record = tx(encode(LEASES, &lease))?;
        if let Some(old) = leases.insert(id.as_bytes(), record)? {
            // A reused id replaces its lease (as the reference does); keep
            // the open count and index exact.
            let old: Lease = tx(decode(LEASES, &old))?;
            if !old.settled {
                open.remove(open_key(old.until, &old.id))?;
                open_count = open_count.saturating_sub(1);
            }
        }
        open.insert(open_key(lease.until, &lease.id), &b""[..])?;
        open_count += 1;
        Ok(Some(lease))
    })?;
    if !out.is_empty() {
        tx_put_counter(meta, META_OPEN_LEASES, open_count)?;
    }
    Ok(out)
}

#[async_trait]
impl PhonePool for SledStore {
    async fn pool_stats(&self) -> StoreResult<PoolStats> {
        self.run(|t| {
            // One consistent read of the three counters.
            let (size, numbers, open_leases) = t.pool_meta.transaction(|meta| {
                let size: Option<u32> = tx(decode_opt(POOL_META, meta.get(META_SIZE)?))?;
                Ok((
                    size.unwrap_or(DEFAULT_POOL_SIZE),
                    tx_counter(meta, META_NUMBERS)?,
                    tx_counter(meta, META_OPEN_LEASES)?,
                ))
            })?;
            Ok(PoolStats {
                size,
                numbers,
                open_leases,
            })
        })
        .await
    }

    async fn set_pool_size(&self, size: u32) -> StoreResult<()> {
        self.write(move |t| {
            t.pool_meta.insert(META_SIZE, encode(POOL_META, &size)?)?;
            Ok(())
        })
        .await
    }

    async fn intake(&self, entries: Vec<NumberInfo>, now: i64) -> StoreResult<Intake> {
        self.write(move |t| {
            let intake = (&t.pool_numbers, &t.pool_order, &t.pool_meta).transaction(
                |(numbers, order, meta)| {
                    let size: u32 = tx(decode_opt(POOL_META, meta.get(META_SIZE)?))?
                        .unwrap_or(DEFAULT_POOL_SIZE);
                    let stored = tx_counter(meta, META_NUMBERS)?;
                    let open = tx_counter(meta, META_OPEN_LEASES)?;
                    let mut tally = IntakeTally::new(size, stored, open);
                    for info in &entries {
                        let key = phone_key(&info.mobile);
                        if let Some(raw) = numbers.get(key)? {
                            let mut n: PoolNumber = tx(decode(POOL_NUMBERS, &raw))?;
                            tally.refresh(&mut n, info);
                            numbers.insert(key, tx(encode(POOL_NUMBERS, &n))?)?;
                            continue;
                        }
                        if let Some(n) = tally.admit(info, now) {
                            let seq = order.generate_id()?;
                            numbers.insert(key, tx(encode(POOL_NUMBERS, &n))?)?;
                            order.insert(&seq.to_be_bytes()[..], key)?;
                        }
                    }
                    tx_put_counter(meta, META_NUMBERS, tally.stored())?;
                    let out = tally.finish();
                    Ok(out)
                },
            )?;
            Ok(intake)
        })
        .await
    }

    async fn number(&self, mobile: &PhoneNumber) -> StoreResult<Option<PoolNumber>> {
        let mobile = mobile.clone();
        self.run(move |t| t.pool_number(phone_key(&mobile))).await
    }

    async fn hand_out(&self, app: &str, n: usize, now: i64) -> StoreResult<Vec<NumberInfo>> {
        let app = app.to_owned();
        self.write_if(move |t| {
            let eligible = |num: &PoolNumber| num.available_for(&app, now);
            for _ in 0..CLAIM_RETRIES {
                let plan = t.plan(&app, n, None, eligible, |num| {
                    num.hand_out(&app);
                })?;
                if plan.candidates.is_empty() && plan.runs.is_empty() {
                    // Nothing to write: no wait for a flush.
                    return Ok((Vec::new(), false));
                }
                let result = (&t.pool_numbers, &t.pool_runs).transaction(|(numbers, runs)| {
                    claim_numbers(numbers, runs, &plan, eligible, |num| {
                        Ok(Some(num.hand_out(&app)))
                    })
                });
                match result.map_err(Error::from) {
                    Err(Error::Raced) => continue,
                    other => return other.map(|out| (out, true)),
                }
            }
            Ok((Vec::new(), false))
        })
        .await
    }

    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome> {
        self.write(move |t| {
            let eligible = |num: &PoolNumber| req.eligible(num);
            let hold = req.hold_request();
            // The plan is read outside the transaction (sled's cannot
            // iterate) and checked inside it; a plan that no longer holds
            // starts the claim over.
            for _ in 0..CLAIM_RETRIES {
                let plan = t.plan(
                    &req.item,
                    req.lease_ids.len(),
                    req.filter.custom.as_ref(),
                    eligible,
                    |num| {
                        num.lease_to(&req, "");
                    },
                )?;
                let trees = (
                    &t.pool_numbers,
                    &t.pool_runs,
                    &t.pool_meta,
                    &t.leases,
                    &t.leases_open,
                    &t.balances,
                    &t.holds,
                    &t.ledger_entries,
                    &t.ledger_by_user,
                    &t.holds_expiring,
                );
                let result = trees.transaction(|trees| {
                    let (numbers, runs, meta, leases, open, b, h, e, u, x) = trees;
                    let ledger = [b, h, e, u, x];
                    if let Some(h) = &hold {
                        if let LedgerOutcome::Refused(r) = ledger::tx_apply(ledger, h)? {
                            return Ok(LeaseOutcome::Refused(r));
                        }
                    }
                    let out =
                        claim_leases(&req, &plan, eligible, numbers, runs, meta, leases, open)?;
                    if let Some(release) = req.release_request(out.len()) {
                        ledger::tx_apply(ledger, &release)?;
                    }
                    Ok(LeaseOutcome::Leased(out))
                });
                match result.map_err(Error::from) {
                    Err(Error::Raced) => continue,
                    other => return other,
                }
            }
            Ok(LeaseOutcome::Leased(Vec::new()))
        })
        .await
    }

    async fn lease_record(&self, id: &str) -> StoreResult<Option<Lease>> {
        let id = id.to_owned();
        self.run(move |t| decode_opt(LEASES, t.leases.get(id.as_bytes())?))
            .await
    }

    async fn receive(&self, req: ReceiveRequest) -> StoreResult<ReceiveOutcome> {
        self.write_if(move |t| {
            // The state the decision needs, read on the writer thread: only
            // this thread writes, so nothing changes before the transaction
            // below, and a refused batch (an upload of unknown numbers)
            // costs no transaction at all. Each lessee's mailbox keys are
            // listed once (sled's transactions cannot iterate).
            let mut mailboxes: HashMap<UserId, Vec<sled::IVec>> = HashMap::new();
            let mut states = Vec::with_capacity(req.batch.len());
            for sms in &req.batch {
                let number = t.pool_number(phone_key(&sms.mobile))?;
                let lease: Option<Lease> = match number.as_ref().and_then(|n| n.lease.as_ref()) {
                    Some(l) => decode_opt(LEASES, t.leases.get(l.lease_id.as_bytes())?)?,
                    None => None,
                };
                let mut found = Vec::new();
                for id in ReceiveRequest::item_ids(sms, number.as_ref()) {
                    if let Some(item) = decode_opt::<Item>(ITEMS, t.items.get(id.as_bytes())?)? {
                        found.push(item);
                    }
                }
                let mailbox_len = match &lease {
                    Some(l) => {
                        if !mailboxes.contains_key(&l.user) {
                            let keys =
                                seq_entries(&t.mailbox, l.user.as_str().as_bytes(), usize::MAX)?
                                    .into_iter()
                                    .map(|(key, _)| key)
                                    .collect();
                            mailboxes.insert(l.user.clone(), keys);
                        }
                        mailboxes.get(&l.user).map_or(0, Vec::len)
                    }
                    None => 0,
                };
                states.push(ReceiveState {
                    number,
                    lease,
                    items: found,
                    mailbox_len,
                });
            }
            let fx = match req.decide(&states) {
                Ok(fx) => fx,
                Err(refused) => return Ok((ReceiveOutcome::Refused(refused), false)),
            };
            // Every effect in one transaction: all durable, or none.
            let trees = (
                &t.leases,
                &t.sms_queue,
                &t.mailbox,
                &t.balances,
                &t.holds,
                &t.ledger_entries,
                &t.ledger_by_user,
                &t.holds_expiring,
            );
            let outcome = trees.transaction(|trees| {
                let (leases, queue, mailbox, b, h, e, u, x) = trees;
                let mut done = Received::default();
                for (app, sms) in &fx.queue {
                    tx_append(queue, app.as_bytes(), &tx(encode(SMS_QUEUE, sms))?)?;
                }
                for capture in &fx.captures {
                    ledger::tx_apply([b, h, e, u, x], capture)?;
                }
                done.captured = fx.captures.len();
                for id in &fx.charge_leases {
                    if let Some(raw) = leases.get(id.as_bytes())? {
                        let mut lease: Lease = tx(decode(LEASES, &raw))?;
                        lease.charged = true;
                        leases.insert(id.as_bytes(), tx(encode(LEASES, &lease))?)?;
                    }
                }
                for (user, n) in &fx.trims {
                    let oldest = mailboxes.get(user).map(Vec::as_slice).unwrap_or_default();
                    for key in oldest.iter().take(*n) {
                        mailbox.remove(key)?;
                    }
                    done.dropped.push((user.clone(), *n as u64));
                }
                for (user, push) in &fx.pushes {
                    let seq = tx_append(
                        mailbox,
                        user.as_str().as_bytes(),
                        &tx(encode(MAILBOX, push))?,
                    )?;
                    done.pushed.push((user.clone(), seq, push.clone()));
                }
                Ok(ReceiveOutcome::Received(done))
            })?;
            let wrote = matches!(outcome, ReceiveOutcome::Received(_));
            Ok((outcome, wrote))
        })
        .await
    }

    async fn due_leases(&self, now: i64, limit: usize) -> StoreResult<Vec<Lease>> {
        self.run(move |t| {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            // Every key up to and including end `now` (keys sort by end).
            let end = sortable(now).to_vec();
            for entry in t.leases_open.iter() {
                let (key, _) = entry?;
                let (Some(until), Some(id)) = (key.get(..8), key.get(8..)) else {
                    continue;
                };
                if until > &end[..] {
                    break;
                }
                let Some(lease) = decode_opt::<Lease>(LEASES, t.leases.get(id)?)? else {
                    continue;
                };
                // Settled (or replaced) since the index was read.
                if lease.settled || open_key(lease.until, &lease.id) != key.as_ref() {
                    continue;
                }
                out.push(lease);
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
    }

    async fn mark_settled(&self, id: &str) -> StoreResult<bool> {
        let id = id.to_owned();
        self.write(move |t| {
            let changed =
                (&t.leases, &t.leases_open, &t.pool_meta).transaction(|(leases, open, meta)| {
                    let Some(raw) = leases.get(id.as_bytes())? else {
                        return Ok(false);
                    };
                    let mut lease: Lease = tx(decode(LEASES, &raw))?;
                    if lease.settled {
                        return Ok(false);
                    }
                    lease.settled = true;
                    leases.insert(id.as_bytes(), tx(encode(LEASES, &lease))?)?;
                    open.remove(open_key(lease.until, &lease.id))?;
                    let count = tx_counter(meta, META_OPEN_LEASES)?;
                    tx_put_counter(meta, META_OPEN_LEASES, count.saturating_sub(1))?;
                    Ok(true)
                })?;
            Ok(changed)
        })
        .await
    }
}

#[async_trait]
impl ItemStore for SledStore {
    async fn put_item(&self, item: Item) -> StoreResult<()> {
        self.write(move |t| {
            t.items.insert(item.id.as_bytes(), encode(ITEMS, &item)?)?;
            Ok(())
        })
        .await
    }

    async fn item(&self, id: &str) -> StoreResult<Option<Item>> {
        let id = id.to_owned();
        self.run(move |t| decode_opt(ITEMS, t.items.get(id.as_bytes())?))
            .await
    }

    async fn items(&self) -> StoreResult<Vec<Item>> {
        self.run(|t| {
            t.items
                .iter()
                .map(|entry| decode(ITEMS, &entry?.1))
                .collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::pool::LeaseFilter;
    use sms_core::user::UserId;

    fn store() -> SledStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        SledStore::from_db(db).unwrap()
    }

    fn info(mobile: &str) -> NumberInfo {
        NumberInfo {
            mobile: PhoneNumber::parse_cn_mobile(mobile).unwrap(),
            cid: "d".into(),
            imsi: "i".into(),
            imei: "e".into(),
            iccid: "c".into(),
            ip: "ip".into(),
            area: None,
        }
    }

    fn req(item: &str, ids: &[&str], now: i64) -> LeaseRequest {
        LeaseRequest {
            user: UserId::from_string("u".into()),
            item: item.into(),
            lease_ids: ids.iter().map(|s| s.to_string()).collect(),
            filter: LeaseFilter::default(),
            now,
            until: now + 10,
            hold_id: "h".into(),
            price: 1,
            hold: None,
        }
    }

    fn open_count(s: &SledStore) -> u64 {
        decode_opt(POOL_META, s.trees.pool_meta.get(META_OPEN_LEASES).unwrap())
            .unwrap()
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn open_lease_count_and_index_stay_exact() {
        let s = store();
        s.intake(vec![info("13800000001"), info("13800000002")], 0)
            .await
            .unwrap();
        assert_eq!(
            s.lease(req("a", &["x"], 1)).await.unwrap().leases().len(),
            1
        );
        assert_eq!(open_count(&s), 1);
        let stats = s.pool_stats().await.unwrap();
        assert_eq!((stats.numbers, stats.open_leases), (2, 1));
        // A reused lease id replaces the lease: still one open lease, one
        // index entry.
        assert_eq!(
            s.lease(req("b", &["x"], 2)).await.unwrap().leases().len(),
            1
        );
        assert_eq!(open_count(&s), 1);
        assert_eq!(s.trees.leases_open.len(), 1);
        let due = s.due_leases(100, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].id.as_str(), due[0].item.as_str()), ("x", "b"));
        assert!(s.mark_settled("x").await.unwrap());
        assert_eq!(open_count(&s), 0);
        assert!(s.trees.leases_open.is_empty());
        assert!(s.due_leases(100, 10).await.unwrap().is_empty());
        // Nothing to claim: no lease, nothing written.
        assert!(s
            .lease(req("a", &[], 50))
            .await
            .unwrap()
            .leases()
            .is_empty());
        assert!(s.hand_out("a", 0, 50).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn hand_outs_keep_one_run_per_app() {
        let s = store();
        s.set_pool_size(1_000).await.unwrap();
        let all: Vec<NumberInfo> = (0..300).map(|i| info(&format!("1380000{i:04}"))).collect();
        s.intake(all.clone(), 0).await.unwrap();
        for round in 0..30 {
            let got = s.hand_out("a", 10, 1).await.unwrap();
            let want: Vec<_> = all[round * 10..round * 10 + 10].to_vec();
            assert_eq!(got, want, "round {round}");
        }
        // Three hundred numbers handed out in thirty calls: one run.
        let prefix = runs_prefix("a");
        let runs: Vec<_> = s.trees.pool_runs.scan_prefix(&prefix).collect();
        assert_eq!(runs.len(), 1);
        assert_eq!(s.trees.pool_runs.len(), 1);
        // Nothing left: no write, and the run stays as it is.
        assert!(s.hand_out("a", 10, 1).await.unwrap().is_empty());
        assert_eq!(s.trees.pool_runs.len(), 1);
        // Another app's runs are its own.
        assert_eq!(s.hand_out("b", 1, 1).await.unwrap(), all[..1].to_vec());
        assert_eq!(s.trees.pool_runs.len(), 2);
        assert_eq!(s.trees.pool_runs.scan_prefix(&prefix).count(), 1);
    }

    #[tokio::test]
    async fn corrupt_pool_records_are_backend_errors() {
        let s = store();
        s.intake(vec![info("13800000001")], 0).await.unwrap();
        s.trees
            .pool_numbers
            .insert("+8613800000001", &b"{"[..])
            .unwrap();
        let r = s.lease(req("a", &["x"], 1)).await;
        assert!(
            matches!(r, Err(sms_core::error::StoreError::Backend(_))),
            "{r:?}"
        );
        let r = s.intake(vec![info("13800000001")], 1).await;
        assert!(
            matches!(r, Err(sms_core::error::StoreError::Backend(_))),
            "{r:?}"
        );
    }

    #[test]
    fn open_keys_sort_by_end_then_id() {
        let mut keys = vec![
            open_key(5, "b"),
            open_key(-3, "z"),
            open_key(5, "a"),
            open_key(i64::MAX, ""),
            open_key(i64::MIN, "x"),
            open_key(0, "m"),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                open_key(i64::MIN, "x"),
                open_key(-3, "z"),
                open_key(0, "m"),
                open_key(5, "a"),
                open_key(5, "b"),
                open_key(i64::MAX, ""),
            ]
        );
    }
}
