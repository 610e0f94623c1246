//! Racing writers see exactly one winner; racing leasers, takers and payers
//! never share a number, an entry or a unit of balance.

use std::collections::BTreeSet;
use std::sync::Arc;

use sms_core::error::{StoreError, UniqueField};
use sms_core::identity::Username;
use sms_core::ledger::{LedgerOp, LedgerOutcome, LedgerRequest, Refusal};
use sms_core::phone::PhoneNumber;
use sms_core::pool::{LeaseFilter, LeaseRequest, NumberInfo, ReceivedSms};
use sms_core::sending::{
    AuditStatus, RecipientStatus, SendTask, Signature, TaskState, Template, TemplateType,
};
use sms_core::store::{EntryQuery, SignatureWrite, Stores, TemplateWrite, UserKey, WriteOutcome};
use sms_core::user::{User, UserId};
use sms_store_sled::SledStore;

/// What a create stored.
fn created<T: std::fmt::Debug>(outcome: WriteOutcome<T>) -> T {
    match outcome {
        WriteOutcome::Created(x) => x,
        other => panic!("a create answered {other:?}"),
    }
}

fn user(n: u32, username: &str) -> User {
    User {
        id: UserId::from_string(format!("{n:032x}")),
        username: Some(Username::parse(username).unwrap()),
        phone: None,
        email: None,
        name: None,
        password_hash: format!("hash-{n}"),
        device: None,
        banned: false,
        points: 0,
        created_at: 1_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_tasks_racing_for_one_username() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let stores = store.stores();

    let tasks: Vec<_> = (0..50u32)
        .map(|i| {
            let users = stores.users.clone();
            // Different spellings of one username: uniqueness is by key.
            let name = if i % 2 == 0 { "Racer" } else { "rACER" };
            tokio::spawn(async move { users.create_user(user(i, name)).await })
        })
        .collect();

    let mut ok = 0;
    let mut conflicts = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict(UniqueField::Username)) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e:?}"),
        }
    }
    assert_eq!((ok, conflicts), (1, 49));

    // The winner is the one the index points at, and the only user stored.
    let winner = stores
        .users
        .user(&UserKey::Username(Username::parse("racer").unwrap()))
        .await
        .unwrap()
        .expect("winner stored");
    let mut stored = 0;
    for i in 0..50u32 {
        if let Some(u) = stores
            .users
            .user(&UserKey::Id(UserId::from_string(format!("{i:032x}"))))
            .await
            .unwrap()
        {
            assert_eq!(u.id, winner.id);
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
}

fn number(i: usize) -> NumberInfo {
    NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile(&format!("1380000{i:04}")).unwrap(),
        cid: "dev".into(),
        imsi: format!("imsi-{i}"),
        imei: "imei".into(),
        iccid: "iccid".into(),
        ip: "10.0.0.1".into(),
        area: None,
    }
}

fn lease_req(user: u32, item: &str, lease_id: String, now: i64) -> LeaseRequest {
    LeaseRequest {
        user: UserId::from_string(format!("{user:032x}")),
        item: item.into(),
        lease_ids: vec![lease_id],
        filter: LeaseFilter::default(),
        now,
        until: now + 100,
        hold_id: format!("hold-{user}"),
        price: 5,
        hold: None,
    }
}

async fn stores(dir: &tempfile::TempDir) -> Stores {
    Arc::new(SledStore::open(dir.path()).unwrap()).stores()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_leasers_for_ten_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    let intake = s
        .pool
        .intake((0..10).map(number).collect(), 0)
        .await
        .unwrap();
    assert_eq!(intake.used.len(), 10);

    let tasks: Vec<_> = (0..64u32)
        .map(|i| {
            let pool = s.pool.clone();
            tokio::spawn(async move { pool.lease(lease_req(i, "item", format!("l{i}"), 5)).await })
        })
        .collect();
    let mut leases = Vec::new();
    for t in tasks {
        leases.extend(t.await.unwrap().unwrap().leases());
    }
    assert_eq!(leases.len(), 10);
    let mobiles: BTreeSet<_> = leases.iter().map(|l| l.mobile.clone()).collect();
    assert_eq!(mobiles.len(), 10, "a number was leased twice");

    // Every number points at the one lease that holds it, and every lease is
    // recorded and open.
    for l in &leases {
        let n = s.pool.number(&l.mobile).await.unwrap().unwrap();
        assert_eq!(
            n.lease.as_ref().map(|r| r.lease_id.as_str()),
            Some(l.id.as_str())
        );
        assert_eq!(s.pool.lease_record(&l.id).await.unwrap().as_ref(), Some(l));
    }
    assert_eq!(s.pool.due_leases(105, 100).await.unwrap().len(), 10);
    // The open-lease count is exact: with 10 stored and 10 under unsettled
    // leases, 100 places are available again.
    let more = s
        .pool
        .intake((10..120).map(number).collect(), 6)
        .await
        .unwrap();
    assert_eq!(more.used.len(), 100);
    // Nothing more for "item" at 5: the new numbers are free, the old ones are not.
    let again = s
        .pool
        .lease(lease_req(99, "item", "again".into(), 5))
        .await
        .unwrap()
        .leases();
    assert_eq!(again.len(), 1);
    assert!(!mobiles.contains(&again[0].mobile));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_and_hand_outs_for_one_item_never_share_a_number() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    s.pool
        .intake((0..10).map(number).collect(), 0)
        .await
        .unwrap();
    let mut leasers = Vec::new();
    let mut handers = Vec::new();
    for i in 0..16u32 {
        let pool = s.pool.clone();
        leasers.push(tokio::spawn(async move {
            pool.lease(lease_req(i, "x", format!("l{i}"), 5))
                .await
                .unwrap()
                .leases()
        }));
        let pool = s.pool.clone();
        handers.push(tokio::spawn(async move {
            pool.hand_out("x", 1, 5).await.unwrap()
        }));
    }
    let mut all = Vec::new();
    for t in leasers {
        all.extend(t.await.unwrap().into_iter().map(|l| l.mobile));
    }
    for t in handers {
        all.extend(t.await.unwrap().into_iter().map(|i| i.mobile));
    }
    assert_eq!(all.len(), 10);
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_intakes_never_overfill() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    s.pool.set_pool_size(10).await.unwrap();
    let tasks: Vec<_> = (0..8usize)
        .map(|t| {
            let pool = s.pool.clone();
            tokio::spawn(async move {
                pool.intake((t * 5..t * 5 + 5).map(number).collect(), 0)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        stored += t.await.unwrap().used.len();
    }
    assert_eq!(stored, 10);
    let mut present = 0;
    for i in 0..40 {
        present += s.pool.number(&number(i).mobile).await.unwrap().is_some() as usize;
    }
    assert_eq!(present, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_debits_against_five_hundred() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    let user = UserId::from_string("payer".into());
    let req = |op_id: String, op| LedgerRequest {
        op_id,
        user: user.clone(),
        op,
        at: 1,
    };
    let r = s
        .ledger
        .apply(req("top-up".into(), LedgerOp::Charge { amount: 500 }))
        .await
        .unwrap();
    assert!(matches!(r, LedgerOutcome::Applied(b) if b.total == 500));

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let ledger = s.ledger.clone();
            let r = req(format!("d{i}"), LedgerOp::Debit { amount: 10 });
            tokio::spawn(async move { ledger.apply(r).await.unwrap() })
        })
        .collect();
    let (mut applied, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            LedgerOutcome::Applied(_) => applied += 1,
            LedgerOutcome::Refused(Refusal::Insufficient { available: 0 }) => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!((applied, refused), (50, 50));
    let balance = s.ledger.balance(&user).await.unwrap();
    assert_eq!((balance.total, balance.held), (0, 0));
    let entries = s
        .ledger
        .entries(&EntryQuery::User(user.clone()))
        .await
        .unwrap();
    assert_eq!(entries.len(), 51);
    assert_eq!(entries[0].request.op_id, "top-up");
    let sum: i64 = entries.iter().map(|e| e.request.op.total_delta()).sum();
    assert_eq!(sum, balance.total);
    // Entries are in commit order: each balance_after is the previous one
    // minus the debit.
    for w in entries.windows(2) {
        assert_eq!(
            w[1].balance_after.total,
            w[0].balance_after.total + w[1].request.op.total_delta()
        );
    }
    // Refused operations recorded nothing.
    let mut recorded = 0;
    for i in 0..100 {
        recorded += s
            .ledger
            .entries(&EntryQuery::Op(format!("d{i}")))
            .await
            .unwrap()
            .into_iter()
            .next()
            .is_some() as usize;
    }
    assert_eq!(recorded, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn takers_racing_a_producer_get_each_sms_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    let sms = |i: i64| ReceivedSms {
        mobile: PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
        text: format!("code {i:06}"),
        code: format!("{i:06}"),
        appname: None,
        chanlid: None,
        at: i,
    };
    let producer = {
        let q = s.queues.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                q.push_sms("hot", sms(i)).await.unwrap();
            }
        })
    };
    let takers: Vec<_> = (0..4)
        .map(|_| {
            let q = s.queues.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut idle = 0;
                while idle < 200 {
                    let batch = q.take_sms("hot", 3).await.unwrap();
                    if batch.is_empty() {
                        idle += 1;
                        tokio::task::yield_now().await;
                    } else {
                        idle = 0;
                        got.extend(batch.into_iter().map(|m| m.at));
                    }
                }
                got
            })
        })
        .collect();
    producer.await.unwrap();
    let mut all = Vec::new();
    for t in takers {
        let got = t.await.unwrap();
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "a taker got entries out of order"
        );
        all.extend(got);
    }
    all.extend(
        s.queues
            .take_sms("hot", 1_000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.at),
    );
    all.sort_unstable();
    assert_eq!(all, (0..200).collect::<Vec<_>>(), "each entry exactly once");
}

fn signature(owner: &str) -> Signature {
    Signature {
        id: 0,
        owner: UserId::from_string(owner.into()),
        text: "签名".into(),
        source: "app".into(),
        pics: Vec::new(),
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

fn template(owner: &str, sign_id: i64) -> Template {
    Template {
        id: 0,
        owner: UserId::from_string(owner.into()),
        sign_id,
        name: "t".into(),
        content: "验证码${code}".into(),
        kind: TemplateType::Code,
        description: "d".into(),
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_signature_races_template_creation_without_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;
    for round in 0..20 {
        let owner = format!("owner-{round}");
        let sig = s
            .sending
            .write_signature(SignatureWrite::Create(signature(&owner)))
            .await
            .map(created)
            .unwrap();
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let st = s.sending.clone();
                let owner = owner.clone();
                tokio::spawn(async move {
                    if i % 2 == 0 {
                        (
                            Some(
                                st.write_signature(SignatureWrite::Delete(sig.id))
                                    .await
                                    .unwrap(),
                            ),
                            None,
                        )
                    } else {
                        let create = TemplateWrite::Create(template(&owner, sig.id));
                        match st.write_template(create).await.unwrap() {
                            WriteOutcome::Created(t) => (None, Some(t)),
                            _ => (None, None),
                        }
                    }
                })
            })
            .collect();
        let mut deleted = 0;
        let mut made = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                (Some(WriteOutcome::Deleted), _) => deleted += 1,
                (Some(_), _) => {}
                (None, Some(t)) => made.push(t),
                (None, None) => {}
            }
        }
        made.sort_by_key(|t| t.id);
        let created = made;
        // Whichever committed first decided: a deleted signature got no
        // template, a signature with a template was not deleted.
        assert!(deleted <= 1);
        assert!(
            (deleted == 1) == created.is_empty(),
            "round {round}: deleted {deleted}, created {}",
            created.len()
        );
        let stored = s
            .sending
            .templates_of(&UserId::from_string(owner.clone()))
            .await
            .unwrap();
        assert_eq!(stored, created);
        let sig_exists = s.sending.signature(sig.id).await.unwrap().is_some();
        assert_eq!(sig_exists, !created.is_empty(), "round {round}");
        // The template count is exact: in use until the last one goes.
        for (n, t) in created.iter().enumerate() {
            assert_eq!(
                s.sending
                    .write_signature(SignatureWrite::Delete(sig.id))
                    .await
                    .unwrap(),
                WriteOutcome::InUse,
                "round {round}, {n} of {} deleted",
                created.len()
            );
            assert_eq!(
                s.sending
                    .write_template(TemplateWrite::Delete(t.id))
                    .await
                    .unwrap(),
                WriteOutcome::Deleted
            );
        }
        let expected = if created.is_empty() {
            WriteOutcome::Missing
        } else {
            WriteOutcome::Deleted
        };
        assert_eq!(
            s.sending
                .write_signature(SignatureWrite::Delete(sig.id))
                .await
                .unwrap(),
            expected
        );
    }
}

fn big_task(uuid: &str, recipients: usize) -> SendTask {
    SendTask {
        uuid: uuid.into(),
        owner: UserId::from_string("sender".into()),
        sign_id: 1,
        temp_id: 2,
        text: "【签名】hi".into(),
        segments: 1,
        unit_price: 1,
        recipients: (0..recipients)
            .map(|i| PhoneNumber::parse_cn_mobile(&format!("139{i:08}")).unwrap())
            .collect(),
        state: TaskState::Queued,
        created_at: 5,
        finished_at: None,
        params: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_status_recorders_on_disjoint_ranges_lose_nothing() {
    const RECIPIENTS: usize = 10_000;
    const CHUNK: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let s = stores(&dir).await;

    let started = std::time::Instant::now();
    s.sending
        .create_task(big_task("big", RECIPIENTS))
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("creating a {RECIPIENTS}-recipient task took {took:?}");
    // Generous (debug builds on a loaded machine); one flush for the whole
    // task takes far less.
    assert!(took < std::time::Duration::from_secs(30), "took {took:?}");

    let status = |i: usize| {
        if i.is_multiple_of(7) {
            RecipientStatus::Failed {
                reason: format!("r{i}"),
                at: 9,
            }
        } else {
            RecipientStatus::Sent {
                gateway_id: format!("g{i}"),
                at: 9,
                carrier: None,
            }
        }
    };
    let tasks: Vec<_> = (0..RECIPIENTS / CHUNK)
        .map(|c| {
            let st = s.sending.clone();
            tokio::spawn(async move {
                // Interleaved within the chunk so writers' keys alternate.
                let updates = (c * CHUNK..(c + 1) * CHUNK)
                    .rev()
                    .map(|i| (i, status(i)))
                    .collect();
                st.record_statuses("big", updates).await.unwrap();
            })
        })
        .collect();
    // Meanwhile, writers on the same recipients with other values: each
    // recipient keeps exactly one final status, never reverted to pending.
    let rivals: Vec<_> = (0..4)
        .map(|r| {
            let st = s.sending.clone();
            tokio::spawn(async move {
                let updates = (0..RECIPIENTS)
                    .filter(|i| i % 4 == r && i % 3 == 0)
                    .map(|i| {
                        (
                            i,
                            RecipientStatus::Sent {
                                gateway_id: format!("rival{i}"),
                                at: 10,
                                carrier: None,
                            },
                        )
                    })
                    .collect::<Vec<_>>();
                for chunk in updates.chunks(CHUNK) {
                    st.record_statuses("big", chunk.to_vec()).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks.into_iter().chain(rivals) {
        t.await.unwrap();
    }

    let statuses = s.sending.recipient_statuses("big").await.unwrap();
    assert_eq!(statuses.len(), RECIPIENTS);
    for (i, st) in statuses.iter().enumerate() {
        let rival = RecipientStatus::Sent {
            gateway_id: format!("rival{i}"),
            at: 10,
            carrier: None,
        };
        if i % 3 == 0 {
            assert!(*st == status(i) || *st == rival, "recipient {i}: {st:?}");
        } else {
            assert_eq!(*st, status(i), "recipient {i} lost");
        }
    }
    // Final statuses are never overwritten.
    s.sending
        .record_statuses(
            "big",
            (0..RECIPIENTS)
                .step_by(100)
                .map(|i| (i, RecipientStatus::Pending))
                .chain([(
                    5,
                    RecipientStatus::Sent {
                        gateway_id: "late".into(),
                        at: 11,
                        carrier: None,
                    },
                )])
                .collect(),
        )
        .await
        .unwrap();
    assert_eq!(s.sending.recipient_statuses("big").await.unwrap(), statuses);
}
