//! [`PgDeliveryQueue`]: the carriers' delivery queue
//! ([`sms_core::delivery::DeliveryQueue`]) on PostgreSQL, shared by every
//! node. Due messages are claimed with `FOR UPDATE SKIP LOCKED` and a short
//! claim (their `next_at` moves past the claim window in the same
//! statement), so two nodes never offer one message at once; a node that
//! dies holding a claim leaves the message due again when the window ends.

use async_trait::async_trait;
use sms_core::carrier::CarrierMessage;
use sms_core::delivery::{DeliveryQueue, QueueDecision, QueueState, QueuedMessage};
use sms_core::error::StoreError;

use crate::{db, decode, decode_opt, encode, in_tx, PgStore, Result2};

const DELIVERY: &str = "delivery";

/// Seconds a node holds the messages [`DeliveryQueue::due`] handed it
/// before another node may offer them again.
pub const CLAIM_SECS: i64 = 30;

/// The delivery queue on the store's database.
#[derive(Debug, Clone)]
pub struct PgDeliveryQueue {
    store: PgStore,
}

impl PgDeliveryQueue {
    /// The queue in `store`'s database and schema.
    pub fn new(store: PgStore) -> Self {
        Self { store }
    }
}

/// The `next_at` column: when the message is due, `NULL` once it is no
/// longer queued.
fn next_at(q: &QueuedMessage) -> Option<i64> {
    match q.state {
        QueueState::Queued { next_at, .. } => Some(next_at),
        _ => None,
    }
}

#[async_trait]
impl DeliveryQueue for PgDeliveryQueue {
    async fn enqueue(&self, message: CarrierMessage, now: i64) -> Result<bool, StoreError> {
        let q = QueuedMessage::new(message, now);
        let r = sqlx::query(
            "INSERT INTO delivery (key, next_at, body) VALUES ($1, $2, $3) \
             ON CONFLICT (key) DO NOTHING",
        )
        .bind(&q.message.idempotency_key)
        .bind(next_at(&q))
        .bind(encode(DELIVERY, &q)?)
        .execute(self.store.pool())
        .await
        .map_err(db)?;
        Ok(r.rows_affected() > 0)
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        // Claimed: the rows nobody else holds, moved out of the due window
        // for CLAIM_SECS in the same statement (the stored state keeps its
        // own `next_at`; `decide` sets the column again).
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE delivery SET next_at = $1 + $3 WHERE seq IN (SELECT seq FROM delivery \
             WHERE next_at <= $1 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING seq, body",
        )
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(CLAIM_SECS)
        .fetch_all(self.store.pool())
        .await
        .map_err(db)?;
        let mut rows = rows;
        rows.sort_by_key(|(s, _)| *s);
        Ok(rows
            .iter()
            .map(|(_, b)| decode(DELIVERY, b))
            .collect::<Result2<_>>()?)
    }

    async fn decide(&self, key: &str, decision: QueueDecision) -> Result<bool, StoreError> {
        in_tx!(self.store, |tx| {
            async {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM delivery WHERE key = $1 FOR UPDATE")
                        .bind(key)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(q) = decode_opt::<QueuedMessage>(DELIVERY, body)? else {
                    return Ok(false);
                };
                let Some(next) = q.apply(decision.clone()) else {
                    return Ok(false);
                };
                sqlx::query("UPDATE delivery SET next_at = $2, body = $3 WHERE key = $1")
                    .bind(key)
                    .bind(next_at(&next))
                    .bind(encode(DELIVERY, &next)?)
                    .execute(&mut *tx)
                    .await?;
                Ok(true)
            }
            .await
        })
    }

    async fn get(&self, key: &str) -> Result<Option<QueuedMessage>, StoreError> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM delivery WHERE key = $1")
            .bind(key)
            .fetch_optional(self.store.pool())
            .await
            .map_err(db)?;
        Ok(decode_opt(DELIVERY, body)?)
    }
}
