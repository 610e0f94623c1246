//! [`PhonePool`] and [`ItemStore`].
//!
//! Numbers live in `pool_numbers` (phone → [`PoolNumber`]) and, in upload
//! order, in `pool_order` (big-endian sequence → phone); numbers are never
//! removed. `pool_meta` holds the pool size and two counters kept in the same
//! transactions as the changes they count: the stored numbers and the
//! unsettled leases. `leases_open` indexes the unsettled leases by end.

use std::collections::HashMap;

use async_trait::async_trait;
use sled::transaction::{abort, TransactionalTree};
use sled::Transactional;

use sms_core::ledger::LedgerOutcome;
use sms_core::phone::PhoneNumber;
use sms_core::pool::{
    Intake, IntakeTally, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo, PoolNumber, PoolStats,
};
use sms_core::receive::{ReceiveOutcome, ReceiveRequest, ReceiveState, Received};
use sms_core::store::{ItemStore, PhonePool, StoreResult, DEFAULT_POOL_SIZE};
use sms_core::user::UserId;

use crate::{
    decode, decode_opt, encode, ledger, queues::tx_append, seq_entries, tx, Error, SledStore,
    Trees, TxResult, CLAIM_RETRIES, ITEMS, LEASES, MAILBOX, POOL_META, POOL_NUMBERS, SMS_QUEUE,
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

    /// Up to `max` numbers passing `eligible`, in upload order: the
    /// candidates of a claim (re-checked inside its transaction).
    fn candidates(
        &self,
        max: usize,
        eligible: impl Fn(&PoolNumber) -> bool,
    ) -> Result<Vec<sled::IVec>, Error> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for entry in self.pool_order.iter() {
            let (_, phone) = entry?;
            // Written in the same transaction as the order entry; a missing
            // record would be corruption, and cannot be claimed anyway.
            if let Some(n) = self.pool_number(&phone)? {
                if eligible(&n) {
                    out.push(phone);
                    if out.len() >= max {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Runs an optimistic claim: `claim(candidates, strict)` runs in a
    /// transaction and aborts with [`Error::Raced`] when `strict` and a
    /// candidate no longer qualifies; then the candidates are scanned again.
    /// The last attempt is not strict: it claims what still qualifies.
    fn claim<T>(
        &self,
        scan: impl Fn(&Self) -> Result<Vec<sled::IVec>, Error>,
        claim: impl Fn(&[sled::IVec], bool) -> Result<Vec<T>, Error>,
    ) -> Result<Vec<T>, Error> {
        for attempt in 0..CLAIM_RETRIES {
            let candidates = scan(self)?;
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            match claim(&candidates, attempt + 1 < CLAIM_RETRIES) {
                Err(Error::Raced) => continue,
                other => return other,
            }
        }
        Ok(Vec::new())
    }
}

/// Inside a claim transaction: each of the `candidates`, up to `want`, that
/// still passes `eligible` (aborting with [`Error::Raced`] when one does not
/// and `strict`) is given to `take`, then stored back; what `take` returns
/// is collected (`None` ends the claim).
fn claim_numbers<T>(
    numbers: &TransactionalTree,
    candidates: &[sled::IVec],
    want: usize,
    strict: bool,
    eligible: impl Fn(&PoolNumber) -> bool,
    mut take: impl FnMut(&mut PoolNumber) -> TxResult<Option<T>>,
) -> TxResult<Vec<T>> {
    let mut out = Vec::new();
    for phone in candidates {
        if out.len() >= want {
            break;
        }
        let Some(raw) = numbers.get(phone)? else {
            continue;
        };
        let mut num: PoolNumber = tx(decode(POOL_NUMBERS, &raw))?;
        if !eligible(&num) {
            if strict {
                return abort(Error::Raced);
            }
            continue;
        }
        let Some(got) = take(&mut num)? else { break };
        numbers.insert(phone, tx(encode(POOL_NUMBERS, &num))?)?;
        out.push(got);
    }
    Ok(out)
}

/// Inside a lease transaction: leases up to `req.lease_ids.len()` of the
/// `candidates` ([`claim_numbers`]), keeping the open-lease count and index.
#[allow(clippy::too_many_arguments)]
fn claim_leases(
    req: &LeaseRequest,
    candidates: &[sled::IVec],
    strict: bool,
    eligible: impl Fn(&PoolNumber) -> bool,
    numbers: &TransactionalTree,
    meta: &TransactionalTree,
    leases: &TransactionalTree,
    open: &TransactionalTree,
) -> TxResult<Vec<Lease>> {
    let mut open_count = tx_counter(meta, META_OPEN_LEASES)?;
    let mut ids = req.lease_ids.iter();
    let want = req.lease_ids.len();
    let out = claim_numbers(numbers, candidates, want, strict, eligible, |num| {
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
        self.write(move |t| {
            let eligible = |num: &PoolNumber| num.available_for(&app, now);
            t.claim(
                |t| t.candidates(n, eligible),
                |candidates, strict| {
                    let out = t.pool_numbers.transaction(|numbers| {
                        claim_numbers(numbers, candidates, n, strict, eligible, |num| {
                            Ok(Some(num.hand_out(&app)))
                        })
                    })?;
                    Ok(out)
                },
            )
        })
        .await
    }

    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome> {
        self.write(move |t| {
            let want = req.lease_ids.len();
            let eligible = |num: &PoolNumber| req.eligible(num);
            let hold = req.hold_request();
            // Candidates are scanned outside the transaction (sled's cannot
            // iterate) and re-checked inside it; a candidate lost to a
            // concurrent caller starts the claim over (the last attempt
            // claims what still qualifies).
            for attempt in 0..CLAIM_RETRIES {
                let strict = attempt + 1 < CLAIM_RETRIES;
                let candidates = t.candidates(want, eligible)?;
                let trees = (
                    &t.pool_numbers,
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
                    let (numbers, meta, leases, open, b, h, e, u, x) = trees;
                    let ledger = [b, h, e, u, x];
                    if let Some(h) = &hold {
                        if let LedgerOutcome::Refused(r) = ledger::tx_apply(ledger, h)? {
                            return Ok(LeaseOutcome::Refused(r));
                        }
                    }
                    let out = claim_leases(
                        &req,
                        &candidates,
                        strict,
                        eligible,
                        numbers,
                        meta,
                        leases,
                        open,
                    )?;
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
