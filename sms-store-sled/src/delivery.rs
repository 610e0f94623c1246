//! [`SledDeliveryQueue`]: the delivery queue port
//! ([`sms_core::delivery::DeliveryQueue`]) on its own sled database, so a
//! queued code survives a restart or `kill -9`. Each decision is one
//! compare-and-swap of the message's record applying
//! [`QueuedMessage::apply`]; every write is flushed before `Ok`.

use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sms_core::carrier::CarrierMessage;
use sms_core::delivery::{DeliveryQueue, QueueDecision, QueuedMessage};
use sms_core::StoreError;

#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    queued: QueuedMessage,
}

/// The delivery queue on sled.
#[derive(Debug, Clone)]
pub struct SledDeliveryQueue {
    db: sled::Db,
    tree: sled::Tree,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(e)
}

fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(backend)
}

impl SledDeliveryQueue {
    /// Opens (or creates) the queue in directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = crate::open_waiting(path.as_ref()).map_err(backend)?;
        let tree = db.open_tree("delivery").map_err(backend)?;
        Ok(Self { db, tree })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me))
            .await
            .map_err(backend)?
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }
}

#[async_trait]
impl DeliveryQueue for SledDeliveryQueue {
    async fn enqueue(&self, message: CarrierMessage, now: i64) -> Result<bool, StoreError> {
        self.blocking(move |q| {
            let key = message.idempotency_key.clone();
            let record = Record {
                seq: q.db.generate_id().map_err(backend)?,
                queued: QueuedMessage::new(message, now),
            };
            let value = serde_json::to_vec(&record).map_err(backend)?;
            let stored = q
                .tree
                .compare_and_swap(key.as_bytes(), None as Option<&[u8]>, Some(value))
                .map_err(backend)?
                .is_ok();
            if stored {
                q.flush()?;
            }
            Ok(stored)
        })
        .await
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueuedMessage>, StoreError> {
        self.blocking(move |q| {
            let mut due = Vec::new();
            for item in q.tree.iter() {
                let (_, v) = item.map_err(backend)?;
                let r = decode(&v)?;
                if r.queued.is_due(now) {
                    due.push(r);
                }
            }
            due.sort_by_key(|r| r.seq);
            Ok(due.into_iter().take(limit).map(|r| r.queued).collect())
        })
        .await
    }

    async fn decide(&self, key: &str, decision: QueueDecision) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.blocking(move |q| loop {
            let Some(old) = q.tree.get(key.as_bytes()).map_err(backend)? else {
                return Ok(false);
            };
            let r = decode(&old)?;
            let Some(next) = r.queued.apply(decision.clone()) else {
                return Ok(false);
            };
            let value = serde_json::to_vec(&Record {
                seq: r.seq,
                queued: next,
            })
            .map_err(backend)?;
            let swapped = q
                .tree
                .compare_and_swap(key.as_bytes(), Some(&old), Some(value))
                .map_err(backend)?;
            if swapped.is_ok() {
                q.flush()?;
                return Ok(true);
            }
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<QueuedMessage>, StoreError> {
        let key = key.to_string();
        self.blocking(move |q| {
            q.tree
                .get(key.as_bytes())
                .map_err(backend)?
                .map(|v| decode(&v).map(|r| r.queued))
                .transpose()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sms_core::delivery::QueueState;
    use sms_core::sender::Channel;

    fn msg(key: &str) -> CarrierMessage {
        CarrierMessage::new_code(key, Channel::Sms, "13800000000", "x", "1")
    }

    #[tokio::test]
    async fn decisions_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let q = SledDeliveryQueue::open(dir.path()).unwrap();
            assert!(q.enqueue(msg("a"), 10).await.unwrap());
            assert!(!q.enqueue(msg("a"), 11).await.unwrap());
            assert!(q.enqueue(msg("b"), 12).await.unwrap());
            assert!(q
                .decide("a", QueueDecision::Retry { next_at: 50 })
                .await
                .unwrap());
            assert!(q
                .decide("b", QueueDecision::Sent("id-b".into()))
                .await
                .unwrap());
            assert!(!q
                .decide("b", QueueDecision::Failed("x".into()))
                .await
                .unwrap());
        }
        let q = SledDeliveryQueue::open(dir.path()).unwrap();
        assert!(q.due(49, 10).await.unwrap().is_empty());
        let due = q.due(50, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].state,
            QueueState::Queued {
                next_at: 50,
                attempts: 1
            }
        );
        assert_eq!(
            q.get("b").await.unwrap().unwrap().state,
            QueueState::Sent {
                provider_id: "id-b".into()
            }
        );
    }
}
