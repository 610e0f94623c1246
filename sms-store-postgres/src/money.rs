//! [`LedgerStore`] and [`SendStore`].

use async_trait::async_trait;
use sqlx::PgConnection;

use sms_core::error::{StoreError, UniqueField};
use sms_core::ledger::{
    transition, Balance, Hold, LedgerEntry, LedgerOp, LedgerOutcome, LedgerRequest,
};
use sms_core::sending::{
    receipt_transition, AuditStatus, ReceiptOutcome, ReceiptUpdate, RecipientStatus, SendTask,
    Signature, TaskState, Template,
};
use sms_core::store::{
    EntryQuery, LedgerStore, SendStore, SignatureWrite, StoreResult, TemplateWrite, WriteOutcome,
};
use sms_core::user::UserId;

use crate::{db, decode, decode_all, decode_opt, encode, in_tx, lock_keys, PgStore, Result2};

const BALANCES: &str = "balances";
const HOLDS: &str = "holds";
const ENTRIES: &str = "ledger_entries";
const SIGNATURES: &str = "signatures";
const TEMPLATES: &str = "templates";
const TASKS: &str = "tasks";

/// The advisory lock of a user's balance, holds and entries.
pub(crate) fn balance_lock(user: &UserId) -> String {
    format!("balance:{}", user.as_str())
}

async fn load_balance(conn: &mut PgConnection, user: &UserId) -> Result2<Balance> {
    let body: Option<String> = sqlx::query_scalar("SELECT body FROM balances WHERE user_id = $1")
        .bind(user.as_str())
        .fetch_optional(conn)
        .await?;
    Ok(decode_opt(BALANCES, body)?.unwrap_or_default())
}

/// Applies [`transition`] for `request` with its balance, hold and entry.
/// The caller holds [`balance_lock`] of the request's user.
pub(crate) async fn apply_ledger(
    conn: &mut PgConnection,
    request: &LedgerRequest,
) -> Result2<LedgerOutcome> {
    let balance = load_balance(conn, &request.user).await?;
    let seen: Option<i64> = sqlx::query_scalar("SELECT seq FROM ledger_entries WHERE op_id = $1")
        .bind(&request.op_id)
        .fetch_optional(&mut *conn)
        .await?;
    if seen.is_some() {
        return Ok(LedgerOutcome::Duplicate(balance));
    }
    let hold: Option<Hold> = match request.op.hold_id() {
        Some(h) => decode_opt(
            HOLDS,
            sqlx::query_scalar("SELECT body FROM holds WHERE hold_id = $1 FOR UPDATE")
                .bind(h)
                .fetch_optional(&mut *conn)
                .await?,
        )?,
        None => None,
    };
    let (after, hold) = match transition(balance, hold.as_ref(), request) {
        Err(r) => return Ok(LedgerOutcome::Refused(r)),
        Ok(v) => v,
    };
    if let Some(h) = hold {
        sqlx::query(
            "INSERT INTO holds (hold_id, remaining, expires_at, body) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (hold_id) DO UPDATE SET remaining = $2, expires_at = $3, body = $4",
        )
        .bind(&h.hold_id)
        .bind(h.remaining)
        .bind(h.expires_at)
        .bind(encode(HOLDS, &h)?)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO balances (user_id, body) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET body = $2",
    )
    .bind(request.user.as_str())
    .bind(encode(BALANCES, &after)?)
    .execute(&mut *conn)
    .await?;
    let entry = LedgerEntry {
        request: request.clone(),
        balance_after: after,
    };
    sqlx::query("INSERT INTO ledger_entries (op_id, user_id, body) VALUES ($1, $2, $3)")
        .bind(&request.op_id)
        .bind(request.user.as_str())
        .bind(encode(ENTRIES, &entry)?)
        .execute(&mut *conn)
        .await?;
    Ok(LedgerOutcome::Applied(after))
}

#[async_trait]
impl LedgerStore for PgStore {
    async fn apply(&self, request: LedgerRequest) -> StoreResult<LedgerOutcome> {
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, vec![balance_lock(&request.user)]).await?;
                apply_ledger(&mut tx, &request).await
            }
            .await
        })
    }

    async fn balance(&self, user: &UserId) -> StoreResult<Balance> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(load_balance(&mut conn, user).await?)
    }

    async fn entries(&self, query: &EntryQuery) -> StoreResult<Vec<LedgerEntry>> {
        let rows: Vec<String> = match query {
            EntryQuery::Op(op_id) => {
                sqlx::query_scalar("SELECT body FROM ledger_entries WHERE op_id = $1")
                    .bind(op_id)
                    .fetch_all(&self.pool)
                    .await
            }
            EntryQuery::User(user) => {
                sqlx::query_scalar(
                    "SELECT body FROM ledger_entries WHERE user_id = $1 ORDER BY seq",
                )
                .bind(user.as_str())
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(db)?;
        Ok(decode_all(ENTRIES, &rows)?)
    }

    async fn hold(&self, hold_id: &str) -> StoreResult<Option<Hold>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM holds WHERE hold_id = $1")
            .bind(hold_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(HOLDS, body)?)
    }

    async fn expired_holds(&self, now: i64, limit: usize) -> StoreResult<Vec<Hold>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM holds WHERE remaining > 0 AND expires_at <= $1 \
             ORDER BY expires_at, hold_id LIMIT $2",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(decode_all(HOLDS, &rows)?)
    }
}

fn is_open(state: TaskState) -> bool {
    matches!(state, TaskState::Created | TaskState::Queued)
}

async fn lock_task(conn: &mut PgConnection, uuid: &str) -> Result2<Option<(SendTask, String)>> {
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT body, statuses FROM tasks WHERE uuid = $1 FOR UPDATE")
            .bind(uuid)
            .fetch_optional(conn)
            .await?;
    row.map(|(b, s)| Ok((decode(TASKS, &b)?, s))).transpose()
}

impl PgStore {
    /// [`SignatureWrite::Create`].
    async fn create_signature(&self, sig: Signature) -> StoreResult<WriteOutcome<Signature>> {
        in_tx!(self, |tx| {
            async {
                let id: i64 = sqlx::query_scalar("SELECT nextval('signatures_id_seq')")
                    .fetch_one(&mut *tx)
                    .await?;
                let mut sig = sig.clone();
                sig.id = id;
                sqlx::query("INSERT INTO signatures (id, owner, body) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(sig.owner.as_str())
                    .bind(encode(SIGNATURES, &sig)?)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteOutcome::Created(sig))
            }
            .await
        })
    }

    /// [`SignatureWrite::Replace`].
    async fn replace_signature(
        &self,
        old: &Signature,
        new: Signature,
    ) -> StoreResult<WriteOutcome<Signature>> {
        in_tx!(self, |tx| {
            async {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM signatures WHERE id = $1 FOR UPDATE")
                        .bind(old.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let cur: Option<Signature> = decode_opt(SIGNATURES, body)?;
                if cur.as_ref() != Some(old) {
                    return Ok(WriteOutcome::Stale);
                }
                sqlx::query("UPDATE signatures SET owner = $2, body = $3 WHERE id = $1")
                    .bind(old.id)
                    .bind(new.owner.as_str())
                    .bind(encode(SIGNATURES, &new)?)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteOutcome::Replaced)
            }
            .await
        })
    }

    /// [`SignatureWrite::Delete`].
    async fn delete_signature(&self, id: i64) -> StoreResult<WriteOutcome<Signature>> {
        in_tx!(self, |tx| {
            async {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM signatures WHERE id = $1 FOR UPDATE")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_none() {
                    return Ok(WriteOutcome::Missing);
                }
                let used: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM templates WHERE sign_id = $1 LIMIT 1")
                        .bind(id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if used.is_some() {
                    return Ok(WriteOutcome::InUse);
                }
                sqlx::query("DELETE FROM signatures WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                Ok(WriteOutcome::Deleted)
            }
            .await
        })
    }

    /// [`TemplateWrite::Create`].
    async fn create_template(&self, template: Template) -> StoreResult<WriteOutcome<Template>> {
        in_tx!(self, |tx| {
            async {
                // The signature's row lock orders this against its deletion.
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM signatures WHERE id = $1 FOR SHARE")
                        .bind(template.sign_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if found.is_none() {
                    return Ok(WriteOutcome::Missing);
                }
                let id: i64 = sqlx::query_scalar("SELECT nextval('templates_id_seq')")
                    .fetch_one(&mut *tx)
                    .await?;
                let mut t = template.clone();
                t.id = id;
                sqlx::query(
                    "INSERT INTO templates (id, sign_id, owner, body) VALUES ($1, $2, $3, $4)",
                )
                .bind(id)
                .bind(t.sign_id)
                .bind(t.owner.as_str())
                .bind(encode(TEMPLATES, &t)?)
                .execute(&mut *tx)
                .await?;
                Ok(WriteOutcome::Created(t))
            }
            .await
        })
    }

    /// [`TemplateWrite::Replace`].
    async fn replace_template(
        &self,
        old: &Template,
        new: Template,
    ) -> StoreResult<WriteOutcome<Template>> {
        in_tx!(self, |tx| {
            async {
                let sign: Option<i64> =
                    sqlx::query_scalar("SELECT id FROM signatures WHERE id = $1 FOR SHARE")
                        .bind(new.sign_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM templates WHERE id = $1 FOR UPDATE")
                        .bind(old.id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let cur: Option<Template> = decode_opt(TEMPLATES, body)?;
                if cur.as_ref() != Some(old) || sign.is_none() {
                    return Ok(WriteOutcome::Stale);
                }
                sqlx::query(
                    "UPDATE templates SET sign_id = $2, owner = $3, body = $4 WHERE id = $1",
                )
                .bind(old.id)
                .bind(new.sign_id)
                .bind(new.owner.as_str())
                .bind(encode(TEMPLATES, &new)?)
                .execute(&mut *tx)
                .await?;
                Ok(WriteOutcome::Replaced)
            }
            .await
        })
    }

    /// [`TemplateWrite::Delete`].
    async fn delete_template(&self, id: i64) -> StoreResult<WriteOutcome<Template>> {
        let r = sqlx::query("DELETE FROM templates WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(if r.rows_affected() > 0 {
            WriteOutcome::Deleted
        } else {
            WriteOutcome::Missing
        })
    }
}

#[async_trait]
impl SendStore for PgStore {
    async fn write_signature(&self, write: SignatureWrite) -> StoreResult<WriteOutcome<Signature>> {
        match write {
            SignatureWrite::Create(sig) => self.create_signature(sig).await,
            SignatureWrite::Replace { old, new } => self.replace_signature(&old, new).await,
            SignatureWrite::Delete(id) => self.delete_signature(id).await,
        }
    }

    async fn signature(&self, id: i64) -> StoreResult<Option<Signature>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM signatures WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(SIGNATURES, body)?)
    }

    async fn signatures_of(&self, owner: &UserId) -> StoreResult<Vec<Signature>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body FROM signatures WHERE owner = $1 ORDER BY id")
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(decode_all(SIGNATURES, &rows)?)
    }

    async fn write_template(&self, write: TemplateWrite) -> StoreResult<WriteOutcome<Template>> {
        match write {
            TemplateWrite::Create(template) => self.create_template(template).await,
            TemplateWrite::Replace { old, new } => self.replace_template(&old, new).await,
            TemplateWrite::Delete(id) => self.delete_template(id).await,
        }
    }

    async fn template(&self, id: i64) -> StoreResult<Option<Template>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM templates WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(TEMPLATES, body)?)
    }

    async fn templates_of(&self, owner: &UserId) -> StoreResult<Vec<Template>> {
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT body FROM templates WHERE owner = $1 ORDER BY id")
                .bind(owner.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(db)?;
        Ok(decode_all(TEMPLATES, &rows)?)
    }

    async fn create_task(&self, task: SendTask) -> StoreResult<()> {
        let statuses = vec![RecipientStatus::Pending; task.recipients.len()];
        let r = in_tx!(self, |tx| {
            async {
                sqlx::query(
                    "INSERT INTO tasks (uuid, open, body, statuses) VALUES ($1, $2, $3, $4)",
                )
                .bind(&task.uuid)
                .bind(is_open(task.state))
                .bind(encode(TASKS, &task)?)
                .bind(encode(TASKS, &statuses)?)
                .execute(&mut *tx)
                .await?;
                Ok(())
            }
            .await
        });
        match r {
            Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(UniqueField::Id)),
            other => other,
        }
    }

    async fn task(&self, uuid: &str) -> StoreResult<Option<SendTask>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM tasks WHERE uuid = $1")
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(TASKS, body)?)
    }

    async fn set_task_state(
        &self,
        uuid: &str,
        from: TaskState,
        to: TaskState,
        at: i64,
    ) -> StoreResult<bool> {
        in_tx!(self, |tx| {
            async {
                let Some((mut task, _)) = lock_task(&mut tx, uuid).await? else {
                    return Ok(false);
                };
                if !task.move_state(from, to, at) {
                    return Ok(false);
                }
                sqlx::query("UPDATE tasks SET open = $2, body = $3 WHERE uuid = $1")
                    .bind(uuid)
                    .bind(is_open(task.state))
                    .bind(encode(TASKS, &task)?)
                    .execute(&mut *tx)
                    .await?;
                Ok(true)
            }
            .await
        })
    }

    async fn recipient_statuses(&self, uuid: &str) -> StoreResult<Vec<RecipientStatus>> {
        let body: Option<String> = sqlx::query_scalar("SELECT statuses FROM tasks WHERE uuid = $1")
            .bind(uuid)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(TASKS, body)?.unwrap_or_default())
    }

    async fn record_statuses(
        &self,
        uuid: &str,
        updates: Vec<(usize, RecipientStatus)>,
    ) -> StoreResult<()> {
        in_tx!(self, |tx| {
            async {
                let Some((_, statuses)) = lock_task(&mut tx, uuid).await? else {
                    return Ok(());
                };
                let mut v: Vec<RecipientStatus> = decode(TASKS, &statuses)?;
                let before = v.clone();
                for (i, st) in &updates {
                    if let Some(slot) = v.get_mut(*i) {
                        if *slot == RecipientStatus::Pending {
                            *slot = st.clone();
                            // Receipts find the recipient by its gateway id,
                            // written in the same step as the status.
                            if let RecipientStatus::Sent {
                                gateway_id,
                                carrier,
                                ..
                            } = st
                            {
                                sqlx::query(
                                    "INSERT INTO task_gateway_ids (carrier, gateway_id, uuid, idx) \
                                     VALUES ($1, $2, $3, $4) ON CONFLICT (carrier, gateway_id) \
                                     DO UPDATE SET uuid = $3, idx = $4",
                                )
                                .bind(carrier.clone().unwrap_or_default())
                                .bind(gateway_id)
                                .bind(uuid)
                                .bind(i64::try_from(*i).unwrap_or(i64::MAX))
                                .execute(&mut *tx)
                                .await?;
                            }
                        }
                    }
                }
                if v != before {
                    // Also the heartbeat of this node's claim on the task.
                    sqlx::query(
                        "UPDATE tasks SET statuses = $2, claimed_until = CASE WHEN claimed_by = $3 \
                         THEN extract(epoch FROM now())::bigint + $4 ELSE claimed_until END WHERE uuid = $1",
                    )
                    .bind(uuid)
                    .bind(encode(TASKS, &v)?)
                    .bind(&self.node)
                    .bind(self.claim_secs)
                    .execute(&mut *tx)
                    .await?;
                }
                Ok(())
            }
            .await
        })
    }

    async fn pending_reviews(&self, max: usize) -> StoreResult<(Vec<Signature>, Vec<Template>)> {
        // Root's occasional view: every signature and template decoded.
        let sigs: Vec<String> = sqlx::query_scalar("SELECT body FROM signatures ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let temps: Vec<String> = sqlx::query_scalar("SELECT body FROM templates ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        let out_s = decode_all::<Signature>(SIGNATURES, &sigs)?
            .into_iter()
            .filter(|s| s.audit == AuditStatus::Pending)
            .take(max)
            .collect();
        let out_t = decode_all::<Template>(TEMPLATES, &temps)?
            .into_iter()
            .filter(|t| t.audit == AuditStatus::Pending)
            .take(max)
            .collect();
        Ok((out_s, out_t))
    }

    async fn recipient_by_gateway_id(
        &self,
        carrier: &str,
        gateway_id: &str,
    ) -> StoreResult<Option<(String, usize)>> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT uuid, idx FROM task_gateway_ids WHERE carrier = $1 AND gateway_id = $2",
        )
        .bind(carrier)
        .bind(gateway_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(row.map(|(u, i)| (u, usize::try_from(i).unwrap_or(usize::MAX))))
    }

    async fn apply_receipt(
        &self,
        uuid: &str,
        index: usize,
        update: ReceiptUpdate,
    ) -> StoreResult<ReceiptOutcome> {
        in_tx!(self, |tx| {
            async {
                let Some((task, statuses)) = lock_task(&mut tx, uuid).await? else {
                    return Ok(ReceiptOutcome::Unknown);
                };
                let mut v: Vec<RecipientStatus> = decode(TASKS, &statuses)?;
                let Some(current) = v.get(index).cloned() else {
                    return Ok(ReceiptOutcome::Unknown);
                };
                let Some((next, refund)) = receipt_transition(&task, index, &current, &update)
                else {
                    return Ok(ReceiptOutcome::Unchanged(current));
                };
                let mut refunded = 0;
                if let Some(request) = refund {
                    lock_keys(&mut tx, vec![balance_lock(&request.user)]).await?;
                    let amount = match &request.op {
                        LedgerOp::Refund { amount } => *amount,
                        _ => 0,
                    };
                    // In the same transaction: the status and the refund
                    // move together.
                    if let LedgerOutcome::Applied(_) = apply_ledger(&mut tx, &request).await? {
                        refunded = amount;
                    }
                }
                if let Some(slot) = v.get_mut(index) {
                    *slot = next.clone();
                }
                sqlx::query("UPDATE tasks SET statuses = $2 WHERE uuid = $1")
                    .bind(uuid)
                    .bind(encode(TASKS, &v)?)
                    .execute(&mut *tx)
                    .await?;
                Ok(ReceiptOutcome::Applied {
                    status: next,
                    refunded,
                })
            }
            .await
        })
    }

    async fn open_tasks(&self) -> StoreResult<Vec<String>> {
        // Shared among nodes: the open tasks no other node holds a live
        // claim on are claimed by this one (`SKIP LOCKED`: a task another
        // node is claiming right now is left to it) for `claim_secs`; the
        // worker's next call, and every recorded batch, renews the claim
        // (the heartbeat). A node that dies stops renewing, and its tasks
        // go to whoever asks after the claim ran out.
        let mut rows: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE tasks SET claimed_by = $1, claimed_until = extract(epoch FROM now())::bigint + $2 \
             WHERE seq IN (SELECT seq FROM tasks WHERE open AND (claimed_by IS NULL OR claimed_by = $1 \
             OR claimed_until < extract(epoch FROM now())::bigint) ORDER BY seq FOR UPDATE SKIP LOCKED) \
             RETURNING seq, uuid",
        )
        .bind(&self.node)
        .bind(self.claim_secs)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.sort_by_key(|(seq, _)| *seq);
        Ok(rows.into_iter().map(|(_, uuid)| uuid).collect())
    }
}
