//! [`QueueStore`]: first-in-first-out queues per app (`sms_queue`) and per
//! device channel (`device_queue`), and each user's mailbox (`mailbox`), all
//! keyed by owner, a 0 byte and a big-endian sequence.

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;

use sms_core::events::Push;
use sms_core::pool::{DeviceMessage, ReceivedSms};
use sms_core::store::{Purged, QueueStore, StoreResult};
use sms_core::user::UserId;

use crate::{
    decode, encode, seq_entries, seq_entries_after, seq_key, tx, Error, SledStore, TxResult,
    CLAIM_RETRIES, DEVICE_QUEUE, MAILBOX, SMS_QUEUE,
};

/// Appends `value` to `owner`'s sequence in `tree`; returns its sequence.
///
/// The sequence is drawn inside the transaction that writes the key, and
/// sled runs transactions one at a time, so sequences are committed in
/// increasing order: a reader never sees a later entry before an earlier one.
fn append<T: Serialize>(
    tree: &sled::Tree,
    name: &'static str,
    owner: &[u8],
    value: &T,
) -> Result<u64, Error> {
    let encoded = encode(name, value)?;
    Ok(tree.transaction(|t| tx_append(t, owner, &encoded))?)
}

/// [`append`] inside a caller's transaction, of a value already encoded:
/// draws the sequence (from 1, never 0) and writes the key.
pub(crate) fn tx_append(
    tree: &sled::transaction::TransactionalTree,
    owner: &[u8],
    encoded: &[u8],
) -> TxResult<u64> {
    let seq = tree.generate_id()? + 1;
    tree.insert(seq_key(owner, seq), encoded)?;
    Ok(seq)
}

/// Removes and returns up to `max` of `owner`'s oldest entries in `tree`.
///
/// The oldest keys are listed, then removed in one transaction that returns
/// only the entries it found (and so removed): an entry taken by a concurrent
/// caller in between is not returned, and the list is read again for the
/// places it leaves. A value that does not decode aborts the removal.
fn take<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    owner: &[u8],
    max: usize,
) -> Result<Vec<T>, Error> {
    let mut out = Vec::new();
    for _ in 0..CLAIM_RETRIES {
        let need = max - out.len();
        if need == 0 {
            break;
        }
        let keys: Vec<sled::IVec> = seq_entries(tree, owner, need)?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        if keys.is_empty() {
            break;
        }
        let taken = tree.transaction(|t| {
            let mut taken = Vec::with_capacity(keys.len());
            for key in &keys {
                if let Some(raw) = t.remove(key)? {
                    taken.push(tx(decode::<T>(name, &raw))?);
                }
            }
            Ok(taken)
        })?;
        let lost = taken.len() < keys.len();
        out.extend(taken);
        if !lost {
            break;
        }
    }
    Ok(out)
}

#[async_trait]
impl QueueStore for SledStore {
    async fn push_sms(&self, app: &str, sms: ReceivedSms) -> StoreResult<()> {
        let app = app.to_owned();
        self.write(move |t| {
            append(&t.sms_queue, SMS_QUEUE, app.as_bytes(), &sms)?;
            Ok(())
        })
        .await
    }

    async fn take_sms(&self, app: &str, max: usize) -> StoreResult<Vec<ReceivedSms>> {
        let app = app.to_owned();
        self.write(move |t| take(&t.sms_queue, SMS_QUEUE, app.as_bytes(), max))
            .await
    }

    async fn push_device_message(&self, cid: &str, message: DeviceMessage) -> StoreResult<()> {
        let cid = cid.to_owned();
        self.write(move |t| {
            append(&t.device_queue, DEVICE_QUEUE, cid.as_bytes(), &message)?;
            Ok(())
        })
        .await
    }

    async fn take_device_messages(&self, cid: &str, max: usize) -> StoreResult<Vec<DeviceMessage>> {
        let cid = cid.to_owned();
        self.write(move |t| take(&t.device_queue, DEVICE_QUEUE, cid.as_bytes(), max))
            .await
    }

    async fn mailbox_push(&self, user: &UserId, push: Push) -> StoreResult<u64> {
        let user = user.clone();
        self.write(move |t| append(&t.mailbox, MAILBOX, user.as_str().as_bytes(), &push))
            .await
    }

    async fn mailbox(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> StoreResult<Vec<(u64, Push)>> {
        let user = user.clone();
        self.run(move |t| {
            seq_entries_after(&t.mailbox, user.as_str().as_bytes(), after, max)?
                .into_iter()
                .map(|(seq, _, value)| Ok((seq, decode(MAILBOX, &value)?)))
                .collect()
        })
        .await
    }

    async fn mailbox_ack(&self, user: &UserId, seq: u64) -> StoreResult<()> {
        let key = seq_key(user.as_str().as_bytes(), seq);
        self.write(move |t| {
            t.mailbox.remove(key)?;
            Ok(())
        })
        .await
    }

    async fn purge_before(&self, before: i64) -> StoreResult<Purged> {
        self.write(move |t| {
            Ok(Purged {
                sms: purge::<ReceivedSms>(&t.sms_queue, SMS_QUEUE, |m| m.at < before)?,
                device_messages: purge::<DeviceMessage>(&t.device_queue, DEVICE_QUEUE, |m| {
                    m.at < before
                })?,
                mailbox: purge::<Push>(&t.mailbox, MAILBOX, |p| p.at() != 0 && p.at() < before)?,
            })
        })
        .await
    }
}

/// Removes every entry of `tree` that decodes and is `old`; how many.
/// (Each removal is a single-key operation, so a concurrent taker gets an
/// entry or this does, never both.)
fn purge<T: DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
    old: impl Fn(&T) -> bool,
) -> Result<u64, Error> {
    let mut n = 0;
    for entry in tree.iter() {
        let (key, value) = entry?;
        if old(&decode::<T>(name, &value)?) && tree.remove(key)?.is_some() {
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SledStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        SledStore::from_db(db).unwrap()
    }

    fn push(m: &str) -> Push {
        Push::RecvMsg {
            mobile: "13800000000".into(),
            msg: m.into(),
            at: 0,
        }
    }

    /// An owner whose name starts with another's, 0 byte included, never sees
    /// the other's entries.
    #[tokio::test]
    async fn owners_sharing_a_prefix_are_kept_apart() {
        let s = store();
        let short = UserId::from_string("a".into());
        let long = UserId::from_string("a\0\0\0\0\0\0\0\0\u{1}".into());
        let p1 = s.mailbox_push(&short, push("short")).await.unwrap();
        let p2 = s.mailbox_push(&long, push("long")).await.unwrap();
        assert_eq!(
            s.mailbox(&short, None, 10).await.unwrap(),
            vec![(p1, push("short"))]
        );
        assert_eq!(
            s.mailbox(&long, None, 10).await.unwrap(),
            vec![(p2, push("long"))]
        );
        let sms = |t: &str| ReceivedSms {
            mobile: sms_core::phone::PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
            text: t.into(),
            code: t.into(),
            appname: None,
            chanlid: None,
            at: 0,
        };
        s.push_sms("app", sms("1")).await.unwrap();
        s.push_sms("app\0x", sms("2")).await.unwrap();
        assert_eq!(s.take_sms("app", 10).await.unwrap(), vec![sms("1")]);
        assert_eq!(s.take_sms("app\0x", 10).await.unwrap(), vec![sms("2")]);
    }

    #[tokio::test]
    async fn a_corrupt_entry_is_not_taken() {
        let s = store();
        let m = |i: i64| DeviceMessage {
            mobile: sms_core::phone::PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
            item_id: "i".into(),
            msg: format!("m{i}"),
            at: i,
        };
        s.push_device_message("c", m(1)).await.unwrap();
        s.trees
            .device_queue
            .insert(seq_key(b"c", u64::MAX), &b"{"[..])
            .unwrap();
        let r = s.take_device_messages("c", 10).await;
        assert!(
            matches!(r, Err(sms_core::error::StoreError::Backend(_))),
            "{r:?}"
        );
        // The failed take removed nothing.
        assert_eq!(s.take_device_messages("c", 1).await.unwrap(), vec![m(1)]);
    }
}
