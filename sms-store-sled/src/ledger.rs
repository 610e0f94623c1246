//! [`LedgerStore`]: balances (`balances`), holds (`holds`), entries by
//! operation id (`ledger_entries`) and each user's entries in order
//! (`ledger_by_user`: user id, 0 byte, big-endian sequence → operation id),
//! and holds that will expire (`holds_expiring`: expiry, hold id).

use async_trait::async_trait;
use sled::transaction::TransactionalTree;
use sled::Transactional;

use sms_core::ledger::{transition, Balance, Hold, LedgerEntry, LedgerOutcome, LedgerRequest};
use sms_core::store::{EntryQuery, LedgerStore, StoreResult};
use sms_core::user::UserId;

use crate::{
    decode, decode_opt, encode, seq_entries, seq_key, tx, SledStore, TxResult, BALANCES, HOLDS,
    LEDGER_ENTRIES,
};

#[async_trait]
impl LedgerStore for SledStore {
    async fn apply(&self, request: LedgerRequest) -> StoreResult<LedgerOutcome> {
        self.write(move |t| {
            let trees = (
                &t.balances,
                &t.holds,
                &t.ledger_entries,
                &t.ledger_by_user,
                &t.holds_expiring,
            );
            let outcome = trees.transaction(|(balances, holds, entries, by_user, expiring)| {
                tx_apply([balances, holds, entries, by_user, expiring], &request)
            })?;
            Ok(outcome)
        })
        .await
    }

    async fn balance(&self, user: &UserId) -> StoreResult<Balance> {
        let user = user.clone();
        self.run(move |t| {
            Ok(
                decode_opt(BALANCES, t.balances.get(user.as_str().as_bytes())?)?
                    .unwrap_or_default(),
            )
        })
        .await
    }

    async fn entries(&self, query: &EntryQuery) -> StoreResult<Vec<LedgerEntry>> {
        let query = query.clone();
        self.run(move |t| match &query {
            EntryQuery::Op(op_id) => {
                let entry = decode_opt(LEDGER_ENTRIES, t.ledger_entries.get(op_id.as_bytes())?)?;
                Ok(entry.into_iter().collect())
            }
            EntryQuery::User(user) => {
                let mut out = Vec::new();
                let owner = user.as_str().as_bytes();
                for (_, op_id) in seq_entries(&t.ledger_by_user, owner, usize::MAX)? {
                    if let Some(raw) = t.ledger_entries.get(&op_id)? {
                        out.push(decode(LEDGER_ENTRIES, &raw)?);
                    }
                }
                Ok(out)
            }
        })
        .await
    }

    async fn hold(&self, hold_id: &str) -> StoreResult<Option<Hold>> {
        let hold_id = hold_id.to_owned();
        self.run(move |t| decode_opt(HOLDS, t.holds.get(hold_id.as_bytes())?))
            .await
    }

    async fn expired_holds(&self, now: i64, limit: usize) -> StoreResult<Vec<Hold>> {
        self.run(move |t| {
            let end = order_i64(now.saturating_add(1));
            let mut out = Vec::new();
            for item in t.holds_expiring.range(..end.to_vec()) {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = item?;
                let id = &key[8..];
                if let Some(h) = decode_opt::<Hold>(HOLDS, t.holds.get(id)?)? {
                    if h.remaining > 0 && h.expires_at.is_some_and(|e| e <= now) {
                        out.push(h);
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// Applies [`transition`] for `request` inside a transaction over the
/// ledger's trees: balances, holds, entries, entries by user, expiring
/// holds (in that order).
pub(crate) fn tx_apply(
    [balances, holds, entries, by_user, expiring]: [&TransactionalTree; 5],
    request: &LedgerRequest,
) -> TxResult<LedgerOutcome> {
    let user = request.user.as_str().as_bytes();
    let op_id = request.op_id.as_bytes();
    let balance: Balance = tx(decode_opt(BALANCES, balances.get(user)?))?.unwrap_or_default();
    if entries.get(op_id)?.is_some() {
        return Ok(LedgerOutcome::Duplicate(balance));
    }
    let hold: Option<Hold> = match request.op.hold_id() {
        Some(id) => tx(decode_opt(HOLDS, holds.get(id.as_bytes())?))?,
        None => None,
    };
    let (after, hold) = match transition(balance, hold.as_ref(), request) {
        Ok(applied) => applied,
        Err(refusal) => return Ok(LedgerOutcome::Refused(refusal)),
    };
    if let Some(h) = hold {
        holds.insert(h.hold_id.as_bytes(), tx(encode(HOLDS, &h))?)?;
        if let Some(at) = h.expires_at {
            let key = expiry_key(at, &h.hold_id);
            if h.remaining > 0 {
                expiring.insert(key, &[][..])?;
            } else {
                expiring.remove(key)?;
            }
        }
    }
    balances.insert(user, tx(encode(BALANCES, &after))?)?;
    let entry = LedgerEntry {
        request: request.clone(),
        balance_after: after,
    };
    entries.insert(op_id, tx(encode(LEDGER_ENTRIES, &entry))?)?;
    // Drawn inside the transaction: per user, sequence order is commit
    // order.
    let seq = by_user.generate_id()?;
    by_user.insert(seq_key(user, seq), op_id)?;
    Ok(LedgerOutcome::Applied(after))
}

/// Big-endian bytes of `v` that sort like the signed value.
fn order_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// `holds_expiring` key: expiry, then hold id.
fn expiry_key(at: i64, hold_id: &str) -> Vec<u8> {
    let mut k = order_i64(at).to_vec();
    k.extend_from_slice(hold_id.as_bytes());
    k
}
