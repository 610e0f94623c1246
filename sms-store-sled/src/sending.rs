//! [`SendStore`]: signatures, templates and send tasks.
//!
//! * `signatures` / `templates`: big-endian id → record. Ids of both come
//!   from one counter, `send_meta`'s `last_id` (the last id handed out),
//!   incremented in the transaction that creates the record: increasing,
//!   never reused, across restarts included.
//! * `signatures_by_owner` / `templates_by_owner`: owner, 0 byte, big-endian
//!   id → empty; scanned (outside transactions) by
//!   [`signatures_of`](SendStore::signatures_of) and
//!   [`templates_of`](SendStore::templates_of), so results come by id.
//! * `templates_by_signature`: big-endian signature id, big-endian template
//!   id → empty; and `template_counts`: big-endian signature id → how many
//!   templates name it (absent: none). Both change in the same transactions
//!   as the templates, and a signature's delete
//!   ([`SignatureWrite::Delete`]) reads the count in the transaction that
//!   deletes, which is what makes it atomic with a template's create
//!   ([`TemplateWrite::Create`]; sled transactions cannot iterate).
//! * `tasks`: uuid → [`SendTask`] (recipients included); `task_statuses`:
//!   uuid, 0 byte, big-endian recipient index → [`RecipientStatus`], so a
//!   prefix scan lists them in recipient order. Statuses are sparse: a
//!   recipient without a key is `Pending`, and `task_counts` (uuid →
//!   big-endian recipient count, written with the task) says how many there
//!   are, so accepting a task of 10,000 recipients writes three keys, not
//!   10,001. (Tasks written before `task_counts` existed have one key per
//!   recipient and no count; both layouts read alike.) `task_seq`: uuid → creation
//!   sequence (big-endian, drawn inside the creating transaction, so it is
//!   commit order); `tasks_open`: sequence → uuid of every task in `Created`
//!   or `Queued`, kept in the transactions that create tasks and change their
//!   state.
//! * `task_gateway_ids`: carrier name (empty when the status names none),
//!   0 byte, gateway id → uuid, 0 byte, big-endian recipient index: written
//!   in the transaction of [`record_statuses`](SendStore::record_statuses)
//!   that records a `Sent` status, so a receipt matched by the carrier's
//!   message id finds its recipient after a restart too.
//! * [`apply_receipt`](SendStore::apply_receipt) runs one transaction over
//!   `tasks`, `task_statuses` and the ledger's trees: the status
//!   ([`receipt_transition`]) and its refund (the ledger's
//!   `tx_apply`) commit together or not at all.

use async_trait::async_trait;
use sled::transaction::{abort, TransactionalTree};
use sled::Transactional;

use sms_core::error::UniqueField;
use sms_core::ledger::{LedgerOp, LedgerOutcome};
use sms_core::sending::{
    receipt_transition, AuditStatus, ReceiptOutcome, ReceiptUpdate, RecipientStatus, SendTask,
    Signature, TaskState, Template,
};
use sms_core::store::{SendStore, SignatureWrite, StoreResult, TemplateWrite, WriteOutcome};
use sms_core::user::UserId;

use crate::{
    decode, decode_opt, encode, ledger, seq_entries, seq_entries_after, seq_key, seq_of,
    seq_prefix, tx, Error, SledStore, Trees, TxResult, SEND_META, SIGNATURES, TASKS, TASKS_OPEN,
    TASK_COUNTS, TASK_SEQ, TASK_STATUSES, TEMPLATES, TEMPLATE_COUNTS,
};

/// `send_meta` key of the last signature or template id handed out.
/// The one id counter of layouts before signatures and templates each had
/// their own; a fresh per-kind counter starts above it.
const META_LAST_ID: &[u8] = b"last_id";
/// The last signature id drawn.
const META_LAST_SIGN_ID: &[u8] = b"last_sign_id";
/// The last template id drawn.
const META_LAST_TEMP_ID: &[u8] = b"last_temp_id";

/// The key of a signature or template (and of a signature's count).
fn id_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The `*_by_owner` key of a record.
fn owner_key(owner: &UserId, id: i64) -> Vec<u8> {
    seq_key(owner.as_str().as_bytes(), id as u64)
}

/// The `templates_by_signature` key of a template.
fn by_signature_key(sign_id: i64, id: i64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&sign_id.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// The `task_statuses` key of recipient `index` of task `uuid`.
fn status_key(uuid: &str, index: usize) -> Vec<u8> {
    seq_key(uuid.as_bytes(), index as u64)
}

/// The `task_gateway_ids` key of a carrier's message id.
fn gateway_key(carrier: &str, gateway_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(carrier.len() + gateway_id.len() + 1);
    k.extend_from_slice(carrier.as_bytes());
    k.push(0);
    k.extend_from_slice(gateway_id.as_bytes());
    k
}

/// The task uuid and recipient index of a `task_statuses` key.
fn split_status_key(key: &[u8]) -> Option<(String, usize)> {
    let (uuid, index) = key.split_at_checked(key.len().checked_sub(9)?)?;
    let (zero, index) = index.split_first()?;
    if *zero != 0 {
        return None;
    }
    let index = u64::from_be_bytes(<[u8; 8]>::try_from(index).ok()?);
    Some((
        String::from_utf8(uuid.to_vec()).ok()?,
        usize::try_from(index).ok()?,
    ))
}

/// The recipient count of a task with sparse statuses (`None`: no such
/// task, or one written with a key per recipient).
fn recipient_count(counts: &sled::Tree, uuid: &str) -> Result<Option<usize>, Error> {
    let Some(raw) = counts.get(uuid.as_bytes())? else {
        return Ok(None);
    };
    let n = <[u8; 8]>::try_from(raw.as_ref()).map_err(|_| Error::Malformed {
        tree: TASK_COUNTS,
        what: "recipient count is not 8 bytes",
    })?;
    Ok(usize::try_from(u64::from_be_bytes(n)).ok())
}

/// The status under `key` (a [`status_key`]) in a transaction: its value,
/// else `Pending` when the task keeps sparse statuses and the index is one
/// of its `count` recipients, else `None` (no such recipient).
fn status_in_tx(
    statuses: &TransactionalTree,
    key: &[u8],
    count: Option<usize>,
) -> TxResult<Option<RecipientStatus>> {
    if let Some(raw) = statuses.get(key)? {
        return Ok(Some(tx(decode(TASK_STATUSES, &raw))?));
    }
    let index = key
        .len()
        .checked_sub(8)
        .and_then(|at| <[u8; 8]>::try_from(&key[at..]).ok())
        .map(u64::from_be_bytes)
        .and_then(|i| usize::try_from(i).ok());
    Ok(match (count, index) {
        (Some(n), Some(i)) if i < n => Some(RecipientStatus::Pending),
        _ => None,
    })
}

/// States listed by [`SendStore::open_tasks`].
fn is_open(state: TaskState) -> bool {
    matches!(state, TaskState::Created | TaskState::Queued)
}

/// Draws the next id from the counter at `key` (signatures and templates
/// count separately, like tables with their own auto-increment).
fn tx_next_id(meta: &TransactionalTree, key: &'static [u8]) -> TxResult<i64> {
    let last: i64 = match tx(decode_opt(SEND_META, meta.get(key)?))? {
        Some(last) => last,
        // Ids drawn from the old shared counter are never handed out again.
        None => tx(decode_opt(SEND_META, meta.get(META_LAST_ID)?))?.unwrap_or(0),
    };
    let Some(next) = last.checked_add(1) else {
        return abort(Error::Malformed {
            tree: SEND_META,
            what: "id counter exhausted",
        });
    };
    meta.insert(key, tx(encode(SEND_META, &next))?)?;
    Ok(next)
}

/// How many templates name signature `sign_id`.
fn tx_template_count(counts: &TransactionalTree, sign_id: i64) -> TxResult<u64> {
    Ok(tx(decode_opt(TEMPLATE_COUNTS, counts.get(id_key(sign_id))?))?.unwrap_or(0))
}

/// Adds a template to signature `sign_id` (`added`) or takes one away.
fn tx_count_template(
    counts: &TransactionalTree,
    by_signature: &TransactionalTree,
    sign_id: i64,
    id: i64,
    added: bool,
) -> TxResult<()> {
    let key = id_key(sign_id);
    let count = tx_template_count(counts, sign_id)?;
    let count = if added {
        by_signature.insert(&by_signature_key(sign_id, id)[..], &b""[..])?;
        count.saturating_add(1)
    } else {
        by_signature.remove(&by_signature_key(sign_id, id)[..])?;
        count.saturating_sub(1)
    };
    if count == 0 {
        counts.remove(&key[..])?;
    } else {
        counts.insert(&key[..], tx(encode(TEMPLATE_COUNTS, &count))?)?;
    }
    Ok(())
}

/// Moves a record's owner index entry when its owner changes.
fn tx_move_owner(
    by_owner: &TransactionalTree,
    id: i64,
    from: &UserId,
    to: &UserId,
) -> TxResult<()> {
    if from != to {
        by_owner.remove(owner_key(from, id))?;
        by_owner.insert(owner_key(to, id), &b""[..])?;
    }
    Ok(())
}

impl Trees {
    /// The records of `owner` that `index` lists, by id, re-checked with
    /// `owner_of` (a concurrent replace may have moved one).
    fn owned<T: serde::de::DeserializeOwned>(
        &self,
        index: &sled::Tree,
        records: &sled::Tree,
        tree: &'static str,
        owner: &UserId,
        owner_of: impl Fn(&T) -> &UserId,
    ) -> Result<Vec<T>, Error> {
        let owner_bytes = owner.as_str().as_bytes();
        let prefix = seq_prefix(owner_bytes);
        let mut out = Vec::new();
        for (key, _) in seq_entries(index, owner_bytes, usize::MAX)? {
            let Some(id) = seq_of(&prefix, &key) else {
                continue;
            };
            if let Some(record) = decode_opt::<T>(tree, records.get(id.to_be_bytes())?)? {
                if owner_of(&record) == owner {
                    out.push(record);
                }
            }
        }
        Ok(out)
    }
}

impl SledStore {
    /// [`SignatureWrite::Create`].
    async fn create_signature(&self, sig: Signature) -> StoreResult<WriteOutcome<Signature>> {
        self.write(move |t| {
            let trees = (&t.signatures, &t.signatures_by_owner, &t.send_meta);
            let sig = trees.transaction(|(sigs, by_owner, meta)| {
                let mut sig = sig.clone();
                sig.id = tx_next_id(meta, META_LAST_SIGN_ID)?;
                sigs.insert(&id_key(sig.id)[..], tx(encode(SIGNATURES, &sig))?)?;
                by_owner.insert(owner_key(&sig.owner, sig.id), &b""[..])?;
                Ok(sig)
            })?;
            Ok(WriteOutcome::Created(sig))
        })
        .await
    }

    /// [`SignatureWrite::Replace`].
    async fn replace_signature(
        &self,
        old: Signature,
        new: Signature,
    ) -> StoreResult<WriteOutcome<Signature>> {
        self.write(move |t| {
            let key = id_key(old.id);
            let encoded = encode(SIGNATURES, &new)?;
            let replaced =
                (&t.signatures, &t.signatures_by_owner).transaction(|(sigs, by_owner)| {
                    let Some(raw) = sigs.get(key)? else {
                        return Ok(WriteOutcome::Stale);
                    };
                    let cur: Signature = tx(decode(SIGNATURES, &raw))?;
                    if cur != old {
                        return Ok(WriteOutcome::Stale);
                    }
                    sigs.insert(&key[..], encoded.as_slice())?;
                    tx_move_owner(by_owner, old.id, &cur.owner, &new.owner)?;
                    Ok(WriteOutcome::Replaced)
                })?;
            Ok(replaced)
        })
        .await
    }

    /// [`SignatureWrite::Delete`].
    async fn delete_signature(&self, id: i64) -> StoreResult<WriteOutcome<Signature>> {
        self.write(move |t| {
            let key = id_key(id);
            let trees = (&t.signatures, &t.signatures_by_owner, &t.template_counts);
            let outcome = trees.transaction(|(sigs, by_owner, counts)| {
                let Some(raw) = sigs.get(key)? else {
                    return Ok(WriteOutcome::Missing);
                };
                if tx_template_count(counts, id)? > 0 {
                    return Ok(WriteOutcome::InUse);
                }
                let cur: Signature = tx(decode(SIGNATURES, &raw))?;
                sigs.remove(&key[..])?;
                by_owner.remove(owner_key(&cur.owner, id))?;
                Ok(WriteOutcome::Deleted)
            })?;
            Ok(outcome)
        })
        .await
    }

    /// [`TemplateWrite::Create`].
    async fn create_template(&self, template: Template) -> StoreResult<WriteOutcome<Template>> {
        self.write(move |t| {
            let trees = (
                &t.signatures,
                &t.templates,
                &t.templates_by_owner,
                &t.templates_by_signature,
                &t.template_counts,
                &t.send_meta,
            );
            let created =
                trees.transaction(|(sigs, templates, by_owner, by_signature, counts, meta)| {
                    if sigs.get(id_key(template.sign_id))?.is_none() {
                        return Ok(WriteOutcome::Missing);
                    }
                    let mut template = template.clone();
                    template.id = tx_next_id(meta, META_LAST_TEMP_ID)?;
                    templates
                        .insert(&id_key(template.id)[..], tx(encode(TEMPLATES, &template))?)?;
                    by_owner.insert(owner_key(&template.owner, template.id), &b""[..])?;
                    tx_count_template(counts, by_signature, template.sign_id, template.id, true)?;
                    Ok(WriteOutcome::Created(template))
                })?;
            Ok(created)
        })
        .await
    }

    /// [`TemplateWrite::Replace`].
    async fn replace_template(
        &self,
        old: Template,
        new: Template,
    ) -> StoreResult<WriteOutcome<Template>> {
        self.write(move |t| {
            let key = id_key(old.id);
            let encoded = encode(TEMPLATES, &new)?;
            let trees = (
                &t.signatures,
                &t.templates,
                &t.templates_by_owner,
                &t.templates_by_signature,
                &t.template_counts,
            );
            let replaced =
                trees.transaction(|(sigs, templates, by_owner, by_signature, counts)| {
                    if sigs.get(id_key(new.sign_id))?.is_none() {
                        return Ok(WriteOutcome::Stale);
                    }
                    let Some(raw) = templates.get(key)? else {
                        return Ok(WriteOutcome::Stale);
                    };
                    let cur: Template = tx(decode(TEMPLATES, &raw))?;
                    if cur != old {
                        return Ok(WriteOutcome::Stale);
                    }
                    templates.insert(&key[..], encoded.as_slice())?;
                    tx_move_owner(by_owner, old.id, &cur.owner, &new.owner)?;
                    if cur.sign_id != new.sign_id {
                        tx_count_template(counts, by_signature, cur.sign_id, old.id, false)?;
                        tx_count_template(counts, by_signature, new.sign_id, old.id, true)?;
                    }
                    Ok(WriteOutcome::Replaced)
                })?;
            Ok(replaced)
        })
        .await
    }

    /// [`TemplateWrite::Delete`].
    async fn delete_template(&self, id: i64) -> StoreResult<WriteOutcome<Template>> {
        self.write(move |t| {
            let key = id_key(id);
            let trees = (
                &t.templates,
                &t.templates_by_owner,
                &t.templates_by_signature,
                &t.template_counts,
            );
            let deleted = trees.transaction(|(templates, by_owner, by_signature, counts)| {
                let Some(raw) = templates.remove(&key[..])? else {
                    return Ok(WriteOutcome::Missing);
                };
                let cur: Template = tx(decode(TEMPLATES, &raw))?;
                by_owner.remove(owner_key(&cur.owner, id))?;
                tx_count_template(counts, by_signature, cur.sign_id, id, false)?;
                Ok(WriteOutcome::Deleted)
            })?;
            Ok(deleted)
        })
        .await
    }
}

#[async_trait]
impl SendStore for SledStore {
    async fn write_signature(&self, write: SignatureWrite) -> StoreResult<WriteOutcome<Signature>> {
        match write {
            SignatureWrite::Create(sig) => self.create_signature(sig).await,
            SignatureWrite::Replace { old, new } => self.replace_signature(old, new).await,
            SignatureWrite::Delete(id) => self.delete_signature(id).await,
        }
    }

    async fn signature(&self, id: i64) -> StoreResult<Option<Signature>> {
        self.run(move |t| decode_opt(SIGNATURES, t.signatures.get(id_key(id))?))
            .await
    }

    async fn signatures_of(&self, owner: &UserId) -> StoreResult<Vec<Signature>> {
        let owner = owner.clone();
        self.run(move |t| {
            t.owned(
                &t.signatures_by_owner,
                &t.signatures,
                SIGNATURES,
                &owner,
                |s: &Signature| &s.owner,
            )
        })
        .await
    }

    async fn write_template(&self, write: TemplateWrite) -> StoreResult<WriteOutcome<Template>> {
        match write {
            TemplateWrite::Create(template) => self.create_template(template).await,
            TemplateWrite::Replace { old, new } => self.replace_template(old, new).await,
            TemplateWrite::Delete(id) => self.delete_template(id).await,
        }
    }

    async fn template(&self, id: i64) -> StoreResult<Option<Template>> {
        self.run(move |t| decode_opt(TEMPLATES, t.templates.get(id_key(id))?))
            .await
    }

    async fn templates_of(&self, owner: &UserId) -> StoreResult<Vec<Template>> {
        let owner = owner.clone();
        self.run(move |t| {
            t.owned(
                &t.templates_by_owner,
                &t.templates,
                TEMPLATES,
                &owner,
                |x: &Template| &x.owner,
            )
        })
        .await
    }

    async fn create_task(&self, task: SendTask) -> StoreResult<()> {
        self.write(move |t| {
            let uuid = task.uuid.as_bytes();
            let record = encode(TASKS, &task)?;
            let count = (task.recipients.len() as u64).to_be_bytes();
            let open = is_open(task.state);
            let trees = (&t.tasks, &t.task_counts, &t.task_seq, &t.tasks_open);
            trees.transaction(|(tasks, counts, seqs, open_tasks)| {
                if tasks.get(uuid)?.is_some() {
                    return abort(Error::Conflict(UniqueField::Id));
                }
                tasks.insert(uuid, record.as_slice())?;
                // Every recipient starts `Pending`: no status key yet.
                counts.insert(uuid, &count[..])?;
                // Drawn inside the transaction: sequence order is commit
                // order.
                let seq = seqs.generate_id()?.to_be_bytes();
                seqs.insert(uuid, &seq[..])?;
                if open {
                    open_tasks.insert(&seq[..], uuid)?;
                }
                Ok(())
            })?;
            Ok(())
        })
        .await
    }

    async fn task(&self, uuid: &str) -> StoreResult<Option<SendTask>> {
        let uuid = uuid.to_owned();
        self.run(move |t| decode_opt(TASKS, t.tasks.get(uuid.as_bytes())?))
            .await
    }

    async fn set_task_state(
        &self,
        uuid: &str,
        from: TaskState,
        to: TaskState,
        at: i64,
    ) -> StoreResult<bool> {
        let uuid = uuid.to_owned();
        self.write(move |t| {
            let key = uuid.as_bytes();
            let trees = (&t.tasks, &t.task_seq, &t.tasks_open);
            let moved = trees.transaction(|(tasks, seqs, open_tasks)| {
                let Some(raw) = tasks.get(key)? else {
                    return Ok(false);
                };
                let mut task: SendTask = tx(decode(TASKS, &raw))?;
                if !task.move_state(from, to, at) {
                    return Ok(false);
                }
                tasks.insert(key, tx(encode(TASKS, &task))?)?;
                if is_open(from) != is_open(to) {
                    let Some(seq) = seqs.get(key)? else {
                        return abort(Error::Malformed {
                            tree: TASK_SEQ,
                            what: "task without a creation sequence",
                        });
                    };
                    if is_open(to) {
                        open_tasks.insert(seq, key)?;
                    } else {
                        open_tasks.remove(seq)?;
                    }
                }
                Ok(true)
            })?;
            Ok(moved)
        })
        .await
    }

    async fn recipient_statuses(&self, uuid: &str) -> StoreResult<Vec<RecipientStatus>> {
        let uuid = uuid.to_owned();
        self.run(move |t| {
            let kept = seq_entries_after(&t.task_statuses, uuid.as_bytes(), None, usize::MAX)?;
            let Some(count) = recipient_count(&t.task_counts, &uuid)? else {
                // Written before sparse statuses: one key per recipient.
                return kept
                    .into_iter()
                    .map(|(_, _, raw)| decode(TASK_STATUSES, &raw))
                    .collect();
            };
            let mut all = vec![RecipientStatus::Pending; count];
            for (index, _, raw) in kept {
                if let Some(slot) = usize::try_from(index).ok().and_then(|i| all.get_mut(i)) {
                    *slot = decode(TASK_STATUSES, &raw)?;
                }
            }
            Ok(all)
        })
        .await
    }

    async fn record_statuses(
        &self,
        uuid: &str,
        updates: Vec<(usize, RecipientStatus)>,
    ) -> StoreResult<()> {
        let uuid = uuid.to_owned();
        self.write(move |t| {
            // Writing `Pending` over `Pending` changes nothing: skipped.
            let updates = updates
                .into_iter()
                .filter(|(_, status)| *status != RecipientStatus::Pending)
                .map(|(i, status)| {
                    let index = match &status {
                        RecipientStatus::Sent {
                            gateway_id,
                            carrier,
                            ..
                        } => Some((
                            gateway_key(carrier.as_deref().unwrap_or(""), gateway_id),
                            status_key(&uuid, i),
                        )),
                        _ => None,
                    };
                    Ok((status_key(&uuid, i), encode(TASK_STATUSES, &status)?, index))
                })
                .collect::<Result<Vec<_>, Error>>()?;
            if updates.is_empty() {
                return Ok(());
            }
            // Read on the writer thread, which is the only one to write it.
            let count = recipient_count(&t.task_counts, &uuid)?;
            let trees = (&t.task_statuses, &t.task_gateway_ids);
            trees.transaction(|(statuses, gateway_ids)| {
                for (key, encoded, index) in &updates {
                    // No status: no such task, or an index past its
                    // recipients.
                    let Some(cur) = status_in_tx(statuses, key, count)? else {
                        continue;
                    };
                    if cur == RecipientStatus::Pending {
                        statuses.insert(key.as_slice(), encoded.as_slice())?;
                        if let Some((gw_key, at)) = index {
                            gateway_ids.insert(gw_key.as_slice(), at.as_slice())?;
                        }
                    }
                }
                Ok(())
            })?;
            Ok(())
        })
        .await
    }

    async fn pending_reviews(&self, max: usize) -> StoreResult<(Vec<Signature>, Vec<Template>)> {
        // A scan of every signature and template: root's occasional view,
        // never a request path of users.
        self.run(move |t| {
            let mut sigs = Vec::new();
            for entry in t.signatures.iter() {
                let s: Signature = decode(SIGNATURES, &entry?.1)?;
                if s.audit == AuditStatus::Pending && sigs.len() < max {
                    sigs.push(s);
                }
            }
            let mut temps = Vec::new();
            for entry in t.templates.iter() {
                let x: Template = decode(TEMPLATES, &entry?.1)?;
                if x.audit == AuditStatus::Pending && temps.len() < max {
                    temps.push(x);
                }
            }
            Ok((sigs, temps))
        })
        .await
    }

    async fn recipient_by_gateway_id(
        &self,
        carrier: &str,
        gateway_id: &str,
    ) -> StoreResult<Option<(String, usize)>> {
        let key = gateway_key(carrier, gateway_id);
        self.run(move |t| {
            Ok(t.task_gateway_ids
                .get(key)?
                .and_then(|v| split_status_key(&v)))
        })
        .await
    }

    async fn apply_receipt(
        &self,
        uuid: &str,
        index: usize,
        update: ReceiptUpdate,
    ) -> StoreResult<ReceiptOutcome> {
        let uuid = uuid.to_owned();
        self.write_if(move |t| {
            let key = status_key(&uuid, index);
            let count = recipient_count(&t.task_counts, &uuid)?;
            let trees = (
                &t.tasks,
                &t.task_statuses,
                &t.balances,
                &t.holds,
                &t.ledger_entries,
                &t.ledger_by_user,
                &t.holds_expiring,
            );
            let outcome = trees.transaction(|(tasks, statuses, b, h, e, u, x)| {
                let Some(task) = tx(decode_opt::<SendTask>(TASKS, tasks.get(uuid.as_bytes())?))?
                else {
                    return Ok(ReceiptOutcome::Unknown);
                };
                let Some(current) = status_in_tx(statuses, &key, count)? else {
                    return Ok(ReceiptOutcome::Unknown);
                };
                let Some((next, refund)) = receipt_transition(&task, index, &current, &update)
                else {
                    return Ok(ReceiptOutcome::Unchanged(current));
                };
                let mut refunded = 0;
                if let Some(request) = refund {
                    if let LedgerOutcome::Applied(_) = ledger::tx_apply([b, h, e, u, x], &request)?
                    {
                        if let LedgerOp::Refund { amount } = request.op {
                            refunded = amount;
                        }
                    }
                }
                statuses.insert(key.as_slice(), tx(encode(TASK_STATUSES, &next))?)?;
                Ok(ReceiptOutcome::Applied {
                    status: next,
                    refunded,
                })
            })?;
            let wrote = matches!(outcome, ReceiptOutcome::Applied { .. });
            Ok((outcome, wrote))
        })
        .await
    }

    async fn open_tasks(&self) -> StoreResult<Vec<String>> {
        self.run(move |t| {
            let mut out = Vec::new();
            for entry in t.tasks_open.iter() {
                let (_, uuid) = entry?;
                let uuid = String::from_utf8(uuid.to_vec()).map_err(|_| Error::Malformed {
                    tree: TASKS_OPEN,
                    what: "task uuid is not UTF-8",
                })?;
                out.push(uuid);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::sending::{AuditStatus, TemplateType};

    fn store() -> SledStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        SledStore::from_db(db).unwrap()
    }

    fn created<T: std::fmt::Debug>(outcome: WriteOutcome<T>) -> T {
        match outcome {
            WriteOutcome::Created(x) => x,
            other => panic!("a create answered {other:?}"),
        }
    }

    fn template(owner: &str, sign_id: i64) -> Template {
        Template {
            id: 0,
            owner: UserId::from_string(owner.into()),
            sign_id,
            name: "t".into(),
            content: "c".into(),
            kind: TemplateType::Notice,
            description: "d".into(),
            audit: AuditStatus::Pending,
            reject_reason: String::new(),
            created_at: 1,
            updated_at: 1,
        }
    }

    fn sent(i: usize) -> RecipientStatus {
        RecipientStatus::Sent {
            gateway_id: format!("g{i}"),
            at: 1,
            carrier: None,
        }
    }

    #[tokio::test]
    async fn sparse_statuses_read_as_pending_and_old_full_layouts_still_read() {
        let s = store();
        let phone = |n: u32| {
            sms_core::phone::PhoneNumber::parse_cn_mobile(&format!("1380000{n:04}")).unwrap()
        };
        let task = |uuid: &str| SendTask {
            uuid: uuid.into(),
            owner: UserId::from_string("u1".into()),
            sign_id: 1,
            temp_id: 1,
            recipients: (0..3).map(phone).collect(),
            text: "【x】y".into(),
            segments: 1,
            unit_price: 1,
            state: TaskState::Queued,
            created_at: 1,
            finished_at: None,
            params: Vec::new(),
        };
        s.create_task(task("new")).await.unwrap();
        // Three recipients, no status key: all pending.
        assert_eq!(s.trees.task_statuses.scan_prefix(b"new").count(), 0);
        assert_eq!(
            s.recipient_statuses("new").await.unwrap(),
            vec![RecipientStatus::Pending; 3]
        );
        // Index 3 is past the recipients: ignored.
        s.record_statuses("new", vec![(1, sent(1)), (3, sent(3))])
            .await
            .unwrap();
        assert_eq!(
            s.recipient_statuses("new").await.unwrap(),
            vec![RecipientStatus::Pending, sent(1), RecipientStatus::Pending]
        );
        // The layout before sparse statuses: a key per recipient, no count.
        s.create_task(task("old")).await.unwrap();
        s.trees.task_counts.remove(b"old").unwrap();
        for i in 0..3 {
            s.trees
                .task_statuses
                .insert(
                    status_key("old", i),
                    encode(TASK_STATUSES, &RecipientStatus::Pending).unwrap(),
                )
                .unwrap();
        }
        s.record_statuses("old", vec![(2, sent(2))]).await.unwrap();
        assert_eq!(
            s.recipient_statuses("old").await.unwrap(),
            vec![RecipientStatus::Pending, RecipientStatus::Pending, sent(2)]
        );
        assert!(s.recipient_statuses("none").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn ids_continue_above_the_old_shared_counter() {
        let s = store();
        // A layout from before per-kind counters: one shared `last_id`.
        s.trees
            .send_meta
            .insert(META_LAST_ID, encode(SEND_META, &7i64).unwrap())
            .unwrap();
        let sig = s
            .write_signature(SignatureWrite::Create(Signature {
                id: 0,
                owner: UserId::from_string("u".into()),
                text: "s".into(),
                source: "x".into(),
                pics: Vec::new(),
                audit: AuditStatus::Pending,
                reject_reason: String::new(),
                created_at: 1,
                updated_at: 1,
            }))
            .await
            .unwrap();
        let sig = created(sig);
        let t = s
            .write_template(TemplateWrite::Create(template("u", sig.id)))
            .await
            .unwrap();
        let t = created(t);
        assert_eq!((sig.id, t.id), (8, 8), "no id already handed out is reused");
        let sig2 = s.write_signature(SignatureWrite::Create(sig.clone()));
        let sig2 = created(sig2.await.unwrap());
        assert_eq!(sig2.id, 9);
    }

    /// `template_counts` and `templates_by_signature` agree with the
    /// templates themselves.
    fn assert_indexes_exact(s: &SledStore) {
        let t = &s.trees;
        let mut expected = std::collections::BTreeMap::<i64, u64>::new();
        let mut pairs = Vec::new();
        for entry in t.templates.iter() {
            let (key, raw) = entry.unwrap();
            let tpl: Template = decode(TEMPLATES, &raw).unwrap();
            let id = i64::from_be_bytes(key.as_ref().try_into().unwrap());
            *expected.entry(tpl.sign_id).or_default() += 1;
            pairs.push(by_signature_key(tpl.sign_id, id).to_vec());
        }
        pairs.sort();
        let indexed: Vec<Vec<u8>> = t
            .templates_by_signature
            .iter()
            .map(|e| e.unwrap().0.to_vec())
            .collect();
        assert_eq!(indexed, pairs);
        let counts: std::collections::BTreeMap<i64, u64> = t
            .template_counts
            .iter()
            .map(|e| {
                let (k, v) = e.unwrap();
                (
                    i64::from_be_bytes(k.as_ref().try_into().unwrap()),
                    decode(TEMPLATE_COUNTS, &v).unwrap(),
                )
            })
            .collect();
        assert_eq!(counts, expected);
    }

    #[tokio::test]
    async fn template_counts_follow_creates_moves_and_deletes() {
        let s = store();
        let sig = |owner: &str| Signature {
            id: 0,
            owner: UserId::from_string(owner.into()),
            text: "s".into(),
            source: "app".into(),
            pics: Vec::new(),
            audit: AuditStatus::Pending,
            reject_reason: String::new(),
            created_at: 1,
            updated_at: 1,
        };
        let a = created(
            s.write_signature(SignatureWrite::Create(sig("u1")))
                .await
                .unwrap(),
        );
        let b = created(
            s.write_signature(SignatureWrite::Create(sig("u1")))
                .await
                .unwrap(),
        );
        let t1 = s
            .write_template(TemplateWrite::Create(template("u1", a.id)))
            .await
            .map(created)
            .unwrap();
        let t2 = s
            .write_template(TemplateWrite::Create(template("u1", a.id)))
            .await
            .map(created)
            .unwrap();
        assert_indexes_exact(&s);

        // Moving to a missing signature fails and changes nothing.
        let mut lost = t1.clone();
        lost.sign_id = 9_999;
        let lost = TemplateWrite::Replace {
            old: t1.clone(),
            new: lost,
        };
        assert_eq!(s.write_template(lost).await.unwrap(), WriteOutcome::Stale);
        assert_indexes_exact(&s);

        let mut moved = t1.clone();
        moved.sign_id = b.id;
        moved.owner = UserId::from_string("u2".into());
        let move_it = TemplateWrite::Replace {
            old: t1.clone(),
            new: moved.clone(),
        };
        assert_eq!(
            s.write_template(move_it).await.unwrap(),
            WriteOutcome::Replaced
        );
        assert_indexes_exact(&s);
        assert_eq!(
            s.templates_of(&UserId::from_string("u2".into()))
                .await
                .unwrap(),
            vec![moved.clone()]
        );
        assert_eq!(
            s.templates_of(&UserId::from_string("u1".into()))
                .await
                .unwrap(),
            vec![t2.clone()]
        );

        assert_eq!(
            s.write_signature(SignatureWrite::Delete(a.id))
                .await
                .unwrap(),
            WriteOutcome::InUse
        );
        assert_eq!(
            s.write_template(TemplateWrite::Delete(t2.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        assert_indexes_exact(&s);
        assert_eq!(
            s.write_signature(SignatureWrite::Delete(a.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        assert_eq!(
            s.write_signature(SignatureWrite::Delete(b.id))
                .await
                .unwrap(),
            WriteOutcome::InUse
        );
        assert_eq!(
            s.write_template(TemplateWrite::Delete(moved.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        assert_indexes_exact(&s);
        assert!(s.trees.template_counts.is_empty());
        assert_eq!(
            s.write_signature(SignatureWrite::Delete(b.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        assert!(s.trees.signatures_by_owner.is_empty());
        assert!(s.trees.templates_by_owner.is_empty());
    }

    #[tokio::test]
    async fn statuses_of_uuids_sharing_a_prefix_are_kept_apart() {
        let s = store();
        let task = |uuid: &str, n: usize| SendTask {
            uuid: uuid.into(),
            owner: UserId::from_string("u".into()),
            sign_id: 1,
            temp_id: 2,
            text: "x".into(),
            segments: 1,
            unit_price: 1,
            recipients: (0..n)
                .map(|i| {
                    sms_core::phone::PhoneNumber::parse_cn_mobile(&format!("1390000{i:04}"))
                        .unwrap()
                })
                .collect(),
            state: TaskState::Created,
            created_at: 1,
            finished_at: None,
            params: Vec::new(),
        };
        s.create_task(task("a", 2)).await.unwrap();
        s.create_task(task("a\0\0\0\0\0\0\0\0\0", 3)).await.unwrap();
        assert_eq!(s.recipient_statuses("a").await.unwrap().len(), 2);
        assert_eq!(
            s.recipient_statuses("a\0\0\0\0\0\0\0\0\0")
                .await
                .unwrap()
                .len(),
            3
        );
        // A task may come back to an open state: it keeps its place.
        assert!(s
            .set_task_state("a", TaskState::Created, TaskState::Done, 2)
            .await
            .unwrap());
        assert_eq!(
            s.open_tasks().await.unwrap(),
            vec!["a\0\0\0\0\0\0\0\0\0".to_string()]
        );
        assert!(s
            .set_task_state("a", TaskState::Done, TaskState::Queued, 3)
            .await
            .unwrap());
        assert_eq!(
            s.open_tasks().await.unwrap(),
            vec!["a".to_string(), "a\0\0\0\0\0\0\0\0\0".into()]
        );
        // A corrupt task is a backend error, not a panic.
        s.trees.tasks.insert("bad", &b"{"[..]).unwrap();
        let r = s
            .set_task_state("bad", TaskState::Created, TaskState::Queued, 1)
            .await;
        assert!(
            matches!(r, Err(sms_core::error::StoreError::Backend(_))),
            "{r:?}"
        );
    }
}
