//! [`PhonePool`], [`ItemStore`] and [`QueueStore`].
//!
//! Every change to the numbers (intake, hand-outs, leases) runs under the
//! pool's advisory lock, so the sweep in upload order (a
//! [`PoolSweep`] jumping over the app's runs in `pool_runs`), the core's
//! eligibility test, the claim and the runs' update are one step across
//! every node; the
//! ledger's lock of the leaser's balance is taken after it (one global
//! order: pool, then balance).

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::PgConnection;

use sms_core::events::Push;
use sms_core::ledger::LedgerOutcome;
use sms_core::phone::PhoneNumber;
use sms_core::pool::{
    DeviceMessage, Intake, IntakeTally, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo,
    PoolNumber, PoolStats, PoolSweep, ReceivedSms, RunChanges, UsedRun,
};
use sms_core::receive::{ReceiveOutcome, ReceiveRequest, ReceiveState, Received};
use sms_core::store::{ItemStore, PhonePool, Purged, QueueStore, StoreResult, DEFAULT_POOL_SIZE};
use sms_core::user::UserId;

use crate::money::{apply_ledger, balance_lock};
use crate::{
    db, decode, decode_all, decode_opt, encode, in_tx, lock_keys, to_i64, to_u64, PgStore, Result2,
};

const NUMBERS: &str = "pool_numbers";
const LEASES: &str = "leases";
const ITEMS: &str = "items";
const SMS: &str = "sms_queue";
const DEVICE: &str = "device_queue";
const MAILBOX: &str = "mailbox";
const POOL_LOCK: &str = "pool";
/// Numbers read per round trip while sweeping in upload order (small: a
/// jump over a run leaves the rest of a batch unread).
const SWEEP_BATCH: i64 = 32;

fn mailbox_lock(user: &UserId) -> String {
    format!("mailbox:{}", user.as_str())
}

async fn pool_size(conn: &mut PgConnection) -> Result2<u32> {
    let v: Option<i64> = sqlx::query_scalar("SELECT value FROM pool_meta WHERE key = 'size'")
        .fetch_optional(conn)
        .await?;
    Ok(v.and_then(|v| u32::try_from(v).ok())
        .unwrap_or(DEFAULT_POOL_SIZE))
}

async fn put_number(conn: &mut PgConnection, seq: i64, n: &PoolNumber) -> Result2<()> {
    sqlx::query("UPDATE pool_numbers SET body = $2 WHERE seq = $1")
        .bind(seq)
        .bind(encode(NUMBERS, n)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Claims up to `want` numbers passing `eligible` for `app`, oldest first,
/// giving each to `take` (which marks it used for `app`) until `take`
/// returns `None`; stores the changed numbers. Only `custom` when given;
/// else a [`PoolSweep`] over the numbers and the app's runs
/// (`pool_runs`), whose changes it stores too. Runs under the pool lock.
async fn claim<T>(
    conn: &mut PgConnection,
    app: &str,
    want: usize,
    custom: Option<&PhoneNumber>,
    eligible: impl Fn(&PoolNumber) -> bool,
    mut take: impl FnMut(&mut PoolNumber) -> Option<T>,
) -> Result2<Vec<T>> {
    let mut out = Vec::new();
    if want == 0 {
        return Ok(out);
    }
    if let Some(phone) = custom {
        // One number can pass: no walk, and no run to change (a later
        // sweep finds it used and folds it into a run).
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, body FROM pool_numbers WHERE phone = $1")
                .bind(phone.as_e164())
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((seq, body)) = row {
            let mut n: PoolNumber = decode(NUMBERS, &body)?;
            if eligible(&n) {
                if let Some(got) = take(&mut n) {
                    put_number(conn, seq, &n).await?;
                    out.push(got);
                }
            }
        }
        return Ok(out);
    }
    let mut sweep = PoolSweep::new(app);
    'scan: while out.len() < want {
        let Some(from) = sweep.from() else { break };
        // The next numbers, each with the app's first run ending at or
        // after it (the run covers the number when it starts at or before).
        let rows: Vec<(i64, String, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT n.seq, n.body, r.first_seq, r.last_seq FROM \
             (SELECT seq, body FROM pool_numbers WHERE seq >= $2 ORDER BY seq LIMIT $3) n \
             LEFT JOIN LATERAL (SELECT first_seq, last_seq FROM pool_runs \
             WHERE app = $1 AND last_seq >= n.seq ORDER BY last_seq LIMIT 1) r ON true \
             ORDER BY n.seq",
        )
        .bind(app)
        .bind(to_i64(from))
        .bind(SWEEP_BATCH)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        for (seq, body, first, last) in rows {
            if out.len() >= want {
                break 'scan;
            }
            let at = to_u64(seq);
            match sweep.from() {
                None => break 'scan,
                // Inside a run the sweep jumped over.
                Some(from) if at < from => continue,
                Some(_) => {}
            }
            let run = first.zip(last).map(|(first, last)| UsedRun {
                first: to_u64(first),
                last: to_u64(last),
            });
            if sweep.skip_run(at, run) {
                continue;
            }
            let mut n: PoolNumber = decode(NUMBERS, &body)?;
            let ok = eligible(&n);
            if let Some(got) = sweep.visit(at, &mut n, ok, &mut take) {
                put_number(conn, seq, &n).await?;
                out.push(got);
            }
        }
    }
    put_runs(conn, app, sweep.finish()).await?;
    Ok(out)
}

/// Applies a sweep's changes to `app`'s runs (removals first).
async fn put_runs(conn: &mut PgConnection, app: &str, changes: RunChanges) -> Result2<()> {
    if !changes.removed.is_empty() {
        let lasts: Vec<i64> = changes.removed.iter().map(|r| to_i64(r.last)).collect();
        sqlx::query("DELETE FROM pool_runs WHERE app = $1 AND last_seq = ANY($2)")
            .bind(app)
            .bind(lasts)
            .execute(&mut *conn)
            .await?;
    }
    if !changes.added.is_empty() {
        let lasts: Vec<i64> = changes.added.iter().map(|r| to_i64(r.last)).collect();
        let firsts: Vec<i64> = changes.added.iter().map(|r| to_i64(r.first)).collect();
        sqlx::query(
            "INSERT INTO pool_runs (app, last_seq, first_seq) \
             SELECT $1, l, f FROM UNNEST($2::bigint[], $3::bigint[]) AS u(l, f) \
             ON CONFLICT (app, last_seq) DO UPDATE SET first_seq = EXCLUDED.first_seq",
        )
        .bind(app)
        .bind(lasts)
        .bind(firsts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn put_lease(conn: &mut PgConnection, lease: &Lease) -> Result2<()> {
    sqlx::query(
        "INSERT INTO leases (id, until, settled, body) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET until = $2, settled = $3, body = $4",
    )
    .bind(&lease.id)
    .bind(lease.until)
    .bind(lease.settled)
    .bind(encode(LEASES, lease)?)
    .execute(conn)
    .await?;
    Ok(())
}

async fn lock_lease(conn: &mut PgConnection, id: &str) -> Result2<Option<Lease>> {
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM leases WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await?;
    decode_opt(LEASES, body)
}

#[async_trait]
impl PhonePool for PgStore {
    async fn pool_stats(&self) -> StoreResult<PoolStats> {
        // One snapshot (a single statement) of the size and both counts.
        let (size, numbers, open): (Option<i64>, i64, i64) = sqlx::query_as(
            "SELECT (SELECT value FROM pool_meta WHERE key = 'size'), \
             (SELECT count(*) FROM pool_numbers), \
             (SELECT count(*) FROM leases WHERE NOT settled)",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(PoolStats {
            size: size.map_or(DEFAULT_POOL_SIZE, |s| u32::try_from(s).unwrap_or(u32::MAX)),
            numbers: to_u64(numbers),
            open_leases: to_u64(open),
        })
    }

    async fn set_pool_size(&self, size: u32) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO pool_meta (key, value) VALUES ('size', $1) \
             ON CONFLICT (key) DO UPDATE SET value = $1",
        )
        .bind(i64::from(size))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn intake(&self, entries: Vec<NumberInfo>, now: i64) -> StoreResult<Intake> {
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, vec![POOL_LOCK.into()]).await?;
                let size = pool_size(&mut tx).await?;
                let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM pool_numbers")
                    .fetch_one(&mut *tx)
                    .await?;
                let open: i64 = sqlx::query_scalar("SELECT count(*) FROM leases WHERE NOT settled")
                    .fetch_one(&mut *tx)
                    .await?;
                let mut tally = IntakeTally::new(size, to_u64(stored), to_u64(open));
                for info in &entries {
                    let row: Option<(i64, String)> =
                        sqlx::query_as("SELECT seq, body FROM pool_numbers WHERE phone = $1")
                            .bind(info.mobile.as_e164())
                            .fetch_optional(&mut *tx)
                            .await?;
                    if let Some((seq, body)) = row {
                        let mut n: PoolNumber = decode(NUMBERS, &body)?;
                        tally.refresh(&mut n, info);
                        put_number(&mut tx, seq, &n).await?;
                        continue;
                    }
                    if let Some(n) = tally.admit(info, now) {
                        sqlx::query("INSERT INTO pool_numbers (phone, body) VALUES ($1, $2)")
                            .bind(info.mobile.as_e164())
                            .bind(encode(NUMBERS, &n)?)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Ok(tally.finish())
            }
            .await
        })
    }

    async fn number(&self, mobile: &PhoneNumber) -> StoreResult<Option<PoolNumber>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM pool_numbers WHERE phone = $1")
                .bind(mobile.as_e164())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(decode_opt(NUMBERS, body)?)
    }

    async fn hand_out(&self, app: &str, n: usize, now: i64) -> StoreResult<Vec<NumberInfo>> {
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, vec![POOL_LOCK.into()]).await?;
                claim(
                    &mut tx,
                    app,
                    n,
                    None,
                    |num| num.available_for(app, now),
                    |num| Some(num.hand_out(app)),
                )
                .await
            }
            .await
        })
    }

    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome> {
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, vec![POOL_LOCK.into()]).await?;
                lock_keys(&mut tx, vec![balance_lock(&req.user)]).await?;
                if let Some(hold) = req.hold_request() {
                    if let LedgerOutcome::Refused(r) = apply_ledger(&mut tx, &hold).await? {
                        return Ok(LeaseOutcome::Refused(r));
                    }
                }
                let mut ids = req.lease_ids.iter();
                let leases = claim(
                    &mut tx,
                    &req.item,
                    req.lease_ids.len(),
                    req.filter.custom.as_ref(),
                    |num| req.eligible(num),
                    |num| ids.next().map(|id| num.lease_to(&req, id)),
                )
                .await?;
                for l in &leases {
                    put_lease(&mut tx, l).await?;
                }
                if let Some(release) = req.release_request(leases.len()) {
                    apply_ledger(&mut tx, &release).await?;
                }
                Ok(LeaseOutcome::Leased(leases))
            }
            .await
        })
    }

    async fn lease_record(&self, id: &str) -> StoreResult<Option<Lease>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM leases WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(LEASES, body)?)
    }

    async fn receive(&self, req: ReceiveRequest) -> StoreResult<ReceiveOutcome> {
        in_tx!(self, |tx| {
            async {
                // The pool lock first (as every change of pool numbers and
                // `lease` take it), then the numbers' rows, then each
                // lessee's balance and mailbox.
                lock_keys(&mut tx, vec![POOL_LOCK.into()]).await?;
                let mut phones: Vec<&str> = req.batch.iter().map(|s| s.mobile.as_e164()).collect();
                phones.sort_unstable();
                phones.dedup();
                let mut numbers: HashMap<String, PoolNumber> = HashMap::new();
                for phone in phones {
                    let body: Option<String> = sqlx::query_scalar(
                        "SELECT body FROM pool_numbers WHERE phone = $1 FOR UPDATE",
                    )
                    .bind(phone)
                    .fetch_optional(&mut *tx)
                    .await?;
                    if let Some(n) = decode_opt::<PoolNumber>(NUMBERS, body)? {
                        numbers.insert(phone.to_owned(), n);
                    }
                }
                let mut users: Vec<UserId> = numbers
                    .values()
                    .filter_map(|n| n.lease.as_ref().map(|l| l.user.clone()))
                    .collect();
                users.sort();
                users.dedup();
                let mut keys = Vec::new();
                for u in &users {
                    keys.push(balance_lock(u));
                    keys.push(mailbox_lock(u));
                }
                lock_keys(&mut tx, keys).await?;
                let mut held: HashMap<UserId, usize> = HashMap::new();
                for u in &users {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM mailbox WHERE user_id = $1")
                        .bind(u.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                    held.insert(u.clone(), usize::try_from(n).unwrap_or(usize::MAX));
                }
                let mut states = Vec::with_capacity(req.batch.len());
                for sms in &req.batch {
                    let number = numbers.get(sms.mobile.as_e164()).cloned();
                    let lease = match number.as_ref().and_then(|n| n.lease.as_ref()) {
                        Some(l) => lock_lease(&mut tx, &l.lease_id).await?,
                        None => None,
                    };
                    let mut items = Vec::new();
                    for id in ReceiveRequest::item_ids(sms, number.as_ref()) {
                        let body: Option<String> =
                            sqlx::query_scalar("SELECT body FROM items WHERE id = $1")
                                .bind(&id)
                                .fetch_optional(&mut *tx)
                                .await?;
                        if let Some(item) = decode_opt::<Item>(ITEMS, body)? {
                            items.push(item);
                        }
                    }
                    let mailbox_len = lease
                        .as_ref()
                        .and_then(|l| held.get(&l.user).copied())
                        .unwrap_or(0);
                    states.push(ReceiveState {
                        number,
                        lease,
                        items,
                        mailbox_len,
                    });
                }
                let fx = match req.decide(&states) {
                    Ok(fx) => fx,
                    Err(refused) => return Ok(ReceiveOutcome::Refused(refused)),
                };
                let mut done = Received::default();
                for (app, sms) in &fx.queue {
                    insert_sms(&mut tx, app, sms).await?;
                }
                for capture in &fx.captures {
                    apply_ledger(&mut tx, capture).await?;
                }
                done.captured = fx.captures.len();
                for id in &fx.charge_leases {
                    if let Some(mut lease) = lock_lease(&mut tx, id).await? {
                        lease.charged = true;
                        put_lease(&mut tx, &lease).await?;
                    }
                }
                for (user, n) in &fx.trims {
                    let r = sqlx::query(
                        "DELETE FROM mailbox WHERE user_id = $1 AND seq IN (SELECT seq FROM mailbox \
                         WHERE user_id = $1 ORDER BY seq LIMIT $2)",
                    )
                    .bind(user.as_str())
                    .bind(limit(*n))
                    .execute(&mut *tx)
                    .await?;
                    done.dropped.push((user.clone(), r.rows_affected()));
                }
                for (user, push) in &fx.pushes {
                    let seq = insert_mailbox(&mut tx, user, push).await?;
                    done.pushed.push((user.clone(), seq, push.clone()));
                }
                Ok(ReceiveOutcome::Received(done))
            }
            .await
        })
    }

    async fn due_leases(&self, now: i64, limit: usize) -> StoreResult<Vec<Lease>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM leases WHERE NOT settled AND until <= $1 ORDER BY until, id LIMIT $2",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(decode_all(LEASES, &rows)?)
    }

    async fn mark_settled(&self, id: &str) -> StoreResult<bool> {
        in_tx!(self, |tx| {
            async {
                let Some(mut lease) = lock_lease(&mut tx, id).await? else {
                    return Ok(false);
                };
                if lease.settled {
                    return Ok(false);
                }
                lease.settled = true;
                put_lease(&mut tx, &lease).await?;
                Ok(true)
            }
            .await
        })
    }
}

#[async_trait]
impl ItemStore for PgStore {
    async fn put_item(&self, item: Item) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO items (id, body) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET body = $2",
        )
        .bind(&item.id)
        .bind(encode(ITEMS, &item)?)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn item(&self, id: &str) -> StoreResult<Option<Item>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM items WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(ITEMS, body)?)
    }

    async fn items(&self) -> StoreResult<Vec<Item>> {
        let rows: Vec<String> = sqlx::query_scalar("SELECT body FROM items ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_all(ITEMS, &rows)?)
    }
}

fn limit(max: usize) -> i64 {
    i64::try_from(max).unwrap_or(i64::MAX)
}

/// Appends `sms` to `app`'s queue.
async fn insert_sms(conn: &mut PgConnection, app: &str, sms: &ReceivedSms) -> Result2<()> {
    sqlx::query("INSERT INTO sms_queue (app, at, body) VALUES ($1, $2, $3)")
        .bind(app)
        .bind(sms.at)
        .bind(encode(SMS, sms)?)
        .execute(conn)
        .await?;
    Ok(())
}

/// Appends `push` to `user`'s mailbox under the next sequence; the caller
/// holds the user's mailbox lock (see [`QueueStore::mailbox_push`]).
async fn insert_mailbox(conn: &mut PgConnection, user: &UserId, push: &Push) -> Result2<u64> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO mailbox (user_id, seq, at, body) \
         VALUES ($1, nextval('mailbox_seq'), $2, $3) RETURNING seq",
    )
    .bind(user.as_str())
    .bind(push.at())
    .bind(encode(MAILBOX, push)?)
    .fetch_one(conn)
    .await?;
    Ok(to_u64(seq))
}

/// Removes and returns up to `max` of the oldest rows of `table` whose
/// `owner` column is `key`, in one statement (rows another caller is taking
/// right now are skipped), oldest first.
async fn take_oldest<T: serde::de::DeserializeOwned>(
    store: &PgStore,
    table: &'static str,
    owner: &'static str,
    key: &str,
    max: usize,
) -> StoreResult<Vec<T>> {
    let mut rows: Vec<(i64, String)> = sqlx::query_as(&format!(
        "DELETE FROM {table} WHERE seq IN (SELECT seq FROM {table} WHERE {owner} = $1 \
         ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING seq, body"
    ))
    .bind(key)
    .bind(limit(max))
    .fetch_all(&store.pool)
    .await
    .map_err(db)?;
    rows.sort_by_key(|(s, _)| *s);
    Ok(rows
        .iter()
        .map(|(_, b)| decode(table, b))
        .collect::<Result2<_>>()?)
}

#[async_trait]
impl QueueStore for PgStore {
    async fn push_sms(&self, app: &str, sms: ReceivedSms) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(insert_sms(&mut conn, app, &sms).await?)
    }

    async fn take_sms(&self, app: &str, max: usize) -> StoreResult<Vec<ReceivedSms>> {
        take_oldest(self, SMS, "app", app, max).await
    }

    async fn push_device_message(&self, cid: &str, message: DeviceMessage) -> StoreResult<()> {
        sqlx::query("INSERT INTO device_queue (cid, at, body) VALUES ($1, $2, $3)")
            .bind(cid)
            .bind(message.at)
            .bind(encode(DEVICE, &message)?)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn take_device_messages(&self, cid: &str, max: usize) -> StoreResult<Vec<DeviceMessage>> {
        take_oldest(self, DEVICE, "cid", cid, max).await
    }

    async fn mailbox_push(&self, user: &UserId, push: Push) -> StoreResult<u64> {
        in_tx!(self, |tx| {
            async {
                // Per user, sequence numbers are drawn and committed in one
                // order, so a reader paging after N never misses an entry
                // that commits later with a smaller number.
                lock_keys(&mut tx, vec![mailbox_lock(user)]).await?;
                insert_mailbox(&mut tx, user, &push).await
            }
            .await
        })
    }

    async fn mailbox(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> StoreResult<Vec<(u64, Push)>> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, body FROM mailbox WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(user.as_str())
        .bind(after.map_or(-1, to_i64))
        .bind(limit(max))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|(s, b)| Ok((to_u64(*s), decode(MAILBOX, b)?)))
            .collect::<Result2<_>>()?)
    }

    async fn mailbox_ack(&self, user: &UserId, seq: u64) -> StoreResult<()> {
        sqlx::query("DELETE FROM mailbox WHERE user_id = $1 AND seq = $2")
            .bind(user.as_str())
            .bind(to_i64(seq))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn purge_before(&self, before: i64) -> StoreResult<Purged> {
        in_tx!(self, |tx| {
            async {
                let sms = sqlx::query("DELETE FROM sms_queue WHERE at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                let device_messages = sqlx::query("DELETE FROM device_queue WHERE at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                // `at` 0 is "unknown" (Push::at): such entries stay.
                let mailbox = sqlx::query("DELETE FROM mailbox WHERE at <> 0 AND at < $1")
                    .bind(before)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                Ok(Purged {
                    sms,
                    device_messages,
                    mailbox,
                })
            }
            .await
        })
    }
}
