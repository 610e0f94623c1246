//! What several nodes share through one database: the delivery queue
//! (claimed, decided once), send tasks (claimed per node, taken over after
//! a claim runs out), and events (across hubs, with the mailbox as the
//! truth). Needs `SMS_TEST_DATABASE_URL`; without it each test passes and
//! says it was skipped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sms_core::carrier::CarrierMessage;
use sms_core::delivery::{DeliveryQueue, QueueDecision, QueueState};
use sms_core::events::{Event, EventHub, KickoutReason, Push, Subscription};
use sms_core::sender::Channel;
use sms_core::sending::{SendTask, TaskState};
use sms_core::store::EntryQuery;
use sms_core::store::{QueueStore, SendStore};
use sms_core::user::UserId;
use sms_store_postgres::{PgDeliveryQueue, PgEventHub, PgOptions, PgStore};

fn msg(key: &str) -> CarrierMessage {
    CarrierMessage::new_code(key, Channel::Sms, "13800000000", "x", "1")
}

/// Two "nodes": two stores (each its own pool and node name) on one schema.
async fn two_nodes(url: &str, prefix: &str, claim_secs: u32) -> (PgStore, PgStore) {
    let schema = common::fresh_schema(prefix);
    let options = PgOptions::new(url)
        .schema(schema)
        .max_connections(4)
        .claim_secs(claim_secs);
    let a = PgStore::connect(&options).await.expect("node a");
    let b = PgStore::connect(&options).await.expect("node b");
    assert_ne!(a.node(), b.node());
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_queue_is_claimed_and_decided_once() {
    let Some(url) = common::database_url("delivery_queue_is_claimed_and_decided_once") else {
        return;
    };
    let (a, b) = two_nodes(&url, "dq", 30).await;
    let (qa, qb) = (PgDeliveryQueue::new(a), PgDeliveryQueue::new(b));
    assert!(qa.enqueue(msg("k1"), 10).await.unwrap());
    assert!(!qb.enqueue(msg("k1"), 11).await.unwrap(), "known key");
    assert!(qb.enqueue(msg("k2"), 12).await.unwrap());
    // Node a claims both; node b, asking at once, gets neither.
    let due = qa.due(20, 10).await.unwrap();
    let keys: Vec<&str> = due
        .iter()
        .map(|q| q.message.idempotency_key.as_str())
        .collect();
    assert_eq!(keys, ["k1", "k2"], "oldest first");
    assert!(qb.due(20, 10).await.unwrap().is_empty(), "claimed by a");
    // Decided once, whoever races.
    assert!(qb
        .decide("k1", QueueDecision::Sent("p1".into()))
        .await
        .unwrap());
    assert!(!qa
        .decide("k1", QueueDecision::Failed("x".into()))
        .await
        .unwrap());
    assert!(qa
        .decide("k2", QueueDecision::Retry { next_at: 40 })
        .await
        .unwrap());
    assert_eq!(
        qa.get("k1").await.unwrap().unwrap().state,
        QueueState::Sent {
            provider_id: "p1".into()
        }
    );
    // A retry is due again at its time, for any node; an unanswered claim
    // runs out after CLAIM_SECS.
    assert!(qb.due(39, 10).await.unwrap().is_empty());
    let due = qb.due(40, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(
        due[0].state,
        QueueState::Queued {
            next_at: 40,
            attempts: 1
        }
    );
    assert!(qa
        .due(40 + sms_store_postgres::delivery::CLAIM_SECS - 1, 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        qa.due(40 + sms_store_postgres::delivery::CLAIM_SECS, 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

fn task(uuid: &str) -> SendTask {
    SendTask {
        uuid: uuid.into(),
        owner: UserId::from_string("u1".into()),
        sign_id: 1,
        temp_id: 1,
        recipients: vec![sms_core::phone::PhoneNumber::parse_cn_mobile("13800000000").unwrap()],
        text: "【x】y".into(),
        segments: 1,
        unit_price: 1,
        state: TaskState::Queued,
        created_at: 1,
        finished_at: None,
        params: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_tasks_are_claimed_per_node_and_taken_over() {
    let Some(url) = common::database_url("send_tasks_are_claimed_per_node_and_taken_over") else {
        return;
    };
    let (a, b) = two_nodes(&url, "tasks", 1).await;
    a.create_task(task("t1")).await.unwrap();
    a.create_task(task("t2")).await.unwrap();
    assert_eq!(a.open_tasks().await.unwrap(), ["t1", "t2"]);
    assert!(b.open_tasks().await.unwrap().is_empty(), "a holds both");
    // a renews its claim by asking again (its heartbeat)…
    assert_eq!(a.open_tasks().await.unwrap(), ["t1", "t2"]);
    // …and a finished task is nobody's.
    assert!(a
        .set_task_state("t1", TaskState::Queued, TaskState::Done, 5)
        .await
        .unwrap());
    // The heartbeat renews only a's open claims.
    assert_eq!(a.renew_claims().await.unwrap(), 1);
    assert_eq!(b.renew_claims().await.unwrap(), 0);
    // a stops (dies): after its claim runs out, b takes the open task over.
    let mut took = Vec::new();
    for _ in 0..40 {
        took = b.open_tasks().await.unwrap();
        if !took.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(took, ["t2"]);
    assert!(a.open_tasks().await.unwrap().is_empty(), "now b's");
    // A node shutting down gracefully gives its claims up at once.
    a.create_task(task("t3")).await.unwrap();
    assert_eq!(b.open_tasks().await.unwrap(), ["t2", "t3"]);
    assert_eq!(b.release_claims().await.unwrap(), 2);
    assert_eq!(a.open_tasks().await.unwrap(), ["t2", "t3"]);
}

fn push(msg: &str) -> Push {
    Push::RecvMsg {
        mobile: "13800000000".into(),
        msg: msg.into(),
        at: 1,
    }
}

async fn next(rx: &mut Subscription) -> Event {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("an event within 10 s")
        .expect("subscribed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_hubs_and_the_mailbox_is_the_truth() {
    let Some(url) = common::database_url("events_cross_hubs_and_the_mailbox_is_the_truth") else {
        return;
    };
    let (a, b) = two_nodes(&url, "events", 30).await;
    let hub_a = PgEventHub::start(a.clone(), a.node().to_owned())
        .await
        .unwrap();
    let hub_b = PgEventHub::start(b.clone(), b.node().to_owned())
        .await
        .unwrap();
    let user = UserId::from_string("u1".into());
    let mut on_a = hub_a.subscribe(&user, 16);
    let mut on_b = hub_b.subscribe(&user, 16);
    // A push published on b reaches the sessions on both nodes, once each.
    let seq = b.mailbox_push(&user, push("111111")).await.unwrap();
    hub_b.publish(
        &user,
        Event::Push {
            seq,
            push: push("111111"),
        },
    );
    assert_eq!(
        next(&mut on_b).await,
        Event::Push {
            seq,
            push: push("111111")
        }
    );
    assert_eq!(
        next(&mut on_a).await,
        Event::Push {
            seq,
            push: push("111111")
        }
    );
    // An event too long for a notification's payload still arrives (its
    // notification carries only its id; the row is read from the table).
    let long = "验".repeat(2_000);
    let seq = a.mailbox_push(&user, push(&long)).await.unwrap();
    hub_a.publish(
        &user,
        Event::Push {
            seq,
            push: push(&long),
        },
    );
    assert_eq!(
        next(&mut on_a).await,
        Event::Push {
            seq,
            push: push(&long)
        }
    );
    assert_eq!(
        next(&mut on_b).await,
        Event::Push {
            seq,
            push: push(&long)
        }
    );
    // A kickout published on a reaches b.
    hub_a.publish(
        &user,
        Event::Kickout {
            reason: KickoutReason::Banned,
            spare: None,
        },
    );
    assert!(matches!(
        next(&mut on_a).await,
        Event::Kickout {
            reason: KickoutReason::Banned,
            ..
        }
    ));
    assert!(matches!(
        next(&mut on_b).await,
        Event::Kickout {
            reason: KickoutReason::Banned,
            ..
        }
    ));
    // A push whose notification never came (stored, never published: as if
    // it was lost while a listener reconnected) is read from the mailbox.
    let lost = a.mailbox_push(&user, push("222222")).await.unwrap();
    hub_b.catch_up().await;
    assert_eq!(
        next(&mut on_b).await,
        Event::Push {
            seq: lost,
            push: push("222222")
        }
    );
    // Read again, it is not handed over twice.
    hub_b.catch_up().await;
    hub_b.publish(
        &user,
        Event::Kickout {
            reason: KickoutReason::Shutdown,
            spare: None,
        },
    );
    assert!(matches!(
        next(&mut on_b).await,
        Event::Kickout {
            reason: KickoutReason::Shutdown,
            ..
        }
    ));
    hub_a.stop();
    hub_b.stop();
}

/// A core of one "node" on `store`, on a manual clock.
fn node_core(store: PgStore, clock: Arc<sms_core::clock::ManualClock>) -> sms_core::Core {
    sms_core::Core::test_builder(Arc::new(store).stores())
        .clock(clock)
        .password_hasher(Arc::new(
            sms_core::password::Argon2Hasher::fast_insecure_for_tests(),
        ))
        .build()
        .expect("test core")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ended_leases_are_settled_once_whichever_nodes_sweep() {
    let Some(url) = common::database_url("ended_leases_are_settled_once_whichever_nodes_sweep")
    else {
        return;
    };
    let (a, b) = two_nodes(&url, "settle", 30).await;
    let clock = Arc::new(sms_core::clock::ManualClock::default());
    clock.set(1_000);
    let (node_a, node_b) = (node_core(a, clock.clone()), node_core(b, clock.clone()));
    node_a
        .accounts
        .sign_up_username("alice", "secret1")
        .await
        .unwrap();
    let alice = node_a
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap()
        .id;
    node_a.billing.charge("alice", 100, None).await.unwrap();
    node_b
        .pool
        .put_item(sms_core::pool::Item {
            id: "app".into(),
            name: "App".into(),
            price: 10,
            send_price: 1,
            code_pattern: None,
        })
        .await
        .unwrap();
    let numbers: Vec<sms_core::pool::NumberInfo> = (0..4)
        .map(|i| sms_core::pool::NumberInfo {
            mobile: sms_core::phone::PhoneNumber::parse_cn_mobile(&format!("1380000{i:04}"))
                .unwrap(),
            cid: "dev".into(),
            imsi: String::new(),
            imei: String::new(),
            iccid: String::new(),
            ip: String::new(),
            area: None,
        })
        .collect();
    node_a.pool.upload_numbers(numbers).await.unwrap();
    let leases = node_b
        .pool
        .lease(&alice, "app", 4, Default::default())
        .await
        .unwrap();
    assert_eq!(leases.len(), 4);
    let b_before = node_a.billing.balance(&alice).await.unwrap();
    assert_eq!((b_before.total, b_before.held), (100, 40));
    // Every lease ends; both nodes' sweepers run at once, several times.
    clock.advance(100_000);
    let sweeps: Vec<_> = (0..6)
        .map(|i| {
            let core = if i % 2 == 0 {
                node_a.clone()
            } else {
                node_b.clone()
            };
            tokio::spawn(async move { core.pool.settle_due(100).await.unwrap() })
        })
        .collect();
    for s in sweeps {
        s.await.unwrap();
    }
    let after = node_a.billing.balance(&alice).await.unwrap();
    assert_eq!(
        (after.total, after.held),
        (100, 0),
        "every hold released once"
    );
    let entries = node_b
        .stores
        .ledger
        .entries(&EntryQuery::User(alice.clone()))
        .await
        .unwrap();
    for l in &leases {
        let releases = entries
            .iter()
            .filter(|e| e.request.op_id == format!("release:{}", l.id))
            .count();
        assert_eq!(releases, 1, "lease {} released exactly once", l.id);
        assert!(
            node_a
                .stores
                .pool
                .lease_record(&l.id)
                .await
                .unwrap()
                .unwrap()
                .settled
        );
    }
    assert!(node_b
        .stores
        .pool
        .due_leases(i64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
}
