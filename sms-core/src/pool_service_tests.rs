use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::core::Core;
use crate::events::{Event, Push};
use crate::ledger::LedgerOp;
use crate::memory::MemoryStore;
use crate::password::Argon2Hasher;
use crate::pool::{Item, LeaseFilter, NumberInfo, Operator};
use crate::random::SeededRandom;
use crate::sender::RecordingSender;
use crate::store::Stores;

struct Fx {
    core: Core,
    clock: Arc<ManualClock>,
    user: UserId,
}

fn info(m: &str, cid: &str) -> NumberInfo {
    NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile(m).unwrap(),
        cid: cid.into(),
        imsi: String::new(),
        imei: String::new(),
        iccid: String::new(),
        ip: String::new(),
        area: None,
    }
}

async fn fx(balance: i64, numbers: &[&str]) -> Fx {
    let clock = Arc::new(ManualClock::default());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(Arc::new(RecordingSender::new()))
        .clock(clock.clone())
        .random(Arc::new(SeededRandom::new(5)))
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .build()
        .expect("test core");
    core.accounts
        .sign_up_username("alice", "secret1")
        .await
        .unwrap();
    let user = core
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap()
        .id;
    if balance > 0 {
        core.billing.charge("alice", balance, None).await.unwrap();
    }
    core.pool
        .put_item(Item {
            id: "app".into(),
            name: "App".into(),
            price: 10,
            send_price: 3,
            code_pattern: None,
        })
        .await
        .unwrap();
    core.pool
        .upload_numbers(numbers.iter().map(|m| info(m, "dev-1")).collect())
        .await
        .unwrap();
    Fx { core, clock, user }
}

fn sms(m: &str, text: &str, app: Option<&str>) -> IncomingSms {
    IncomingSms {
        mobile: PhoneNumber::parse_cn_mobile(m).unwrap(),
        text: text.into(),
        appname: app.map(str::to_owned),
        chanlid: None,
    }
}

#[tokio::test]
async fn lease_holds_price_and_releases_what_was_not_leased() {
    let f = fx(100, &["13800000001", "13800000002"]).await;
    let leases = f
        .core
        .pool
        .lease(&f.user, "app", 5, LeaseFilter::default())
        .await
        .unwrap();
    assert_eq!(leases.len(), 2);
    assert_eq!(leases[0].until - leases[0].started_at, 1_200);
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held, b.available()), (100, 20, 80));
}

#[tokio::test]
async fn lease_errors_in_order() {
    let f = fx(15, &["13800000001", "13800000002"]).await;
    let p = &f.core.pool;
    assert!(matches!(
        p.lease(&f.user, "nope", 1, LeaseFilter::default()).await,
        Err(CoreError::ItemNotFound)
    ));
    assert!(matches!(
        p.lease(&f.user, "app", 0, LeaseFilter::default()).await,
        Err(CoreError::InvalidCount)
    ));
    assert!(matches!(
        p.lease(&f.user, "app", 21, LeaseFilter::default()).await,
        Err(CoreError::InvalidCount)
    ));
    let custom = LeaseFilter {
        custom: Some(PhoneNumber::parse_cn_mobile("13900000000").unwrap()),
        ..Default::default()
    };
    assert!(matches!(
        p.lease(&f.user, "app", 1, custom).await,
        Err(CoreError::NumberUnavailable)
    ));
    assert!(matches!(
        p.lease(&f.user, "app", 2, LeaseFilter::default()).await,
        Err(CoreError::InsufficientBalance { available: 15 })
    ));
    let telecom = LeaseFilter {
        operator: Some(Operator::Telecom),
        ..Default::default()
    };
    assert!(matches!(
        p.lease(&f.user, "app", 1, telecom).await,
        Err(CoreError::NoNumbers)
    ));
    // Nothing stayed held by the failures.
    assert_eq!(f.core.billing.balance(&f.user).await.unwrap().held, 0);
}

#[tokio::test]
async fn first_sms_charges_once_and_pushes_every_sms() {
    let f = fx(100, &["13800000001"]).await;
    let mut events = f.core.events.subscribe(&f.user, 16);
    f.core
        .pool
        .lease(&f.user, "app", 1, LeaseFilter::default())
        .await
        .unwrap();
    f.core
        .pool
        .receive(vec![sms("13800000001", "验证码 123456", Some("app"))])
        .await
        .unwrap();
    f.core
        .pool
        .receive(vec![sms("+8613800000001", "验证码 654321", None)])
        .await
        .unwrap();
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (90, 0), "charged exactly once");
    let mailbox = f.core.pool.mailbox(&f.user).await.unwrap();
    assert_eq!(mailbox.len(), 2);
    assert_eq!(
        mailbox[0].1,
        Push::RecvMsg {
            mobile: "13800000001".into(),
            msg: "验证码 123456".into(),
            at: f.clock.unix(),
        }
    );
    for _ in 0..2 {
        assert!(matches!(events.recv().await, Some(Event::Push { .. })));
    }
    // An SMS for another app does not reach the lessee.
    f.core
        .pool
        .receive(vec![sms("13800000001", "111111", Some("other"))])
        .await
        .unwrap();
    assert_eq!(f.core.pool.mailbox(&f.user).await.unwrap().len(), 2);
    // But it is queued for that app, code extracted.
    let q = f.core.pool.take_codes("app", 10).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].code, "123456");
    // Settling a charged lease releases nothing.
    f.clock.advance(1_200);
    assert_eq!(f.core.pool.settle_due(10).await.unwrap(), 1);
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (90, 0));
}

#[tokio::test]
async fn ended_lease_without_sms_releases_exactly_once() {
    let f = fx(100, &["13800000001", "13800000002"]).await;
    f.core
        .pool
        .lease(&f.user, "app", 2, LeaseFilter::default())
        .await
        .unwrap();
    f.clock.advance(1_199);
    assert_eq!(f.core.pool.settle_due(10).await.unwrap(), 0);
    f.clock.advance(1);
    // SMS after the end does not reach the old lessee nor charge.
    f.core
        .pool
        .receive(vec![sms("13800000001", "123456", None)])
        .await
        .unwrap();
    assert_eq!(f.core.pool.settle_due(10).await.unwrap(), 2);
    assert_eq!(f.core.pool.settle_due(10).await.unwrap(), 0);
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (100, 0));
    assert!(f.core.pool.mailbox(&f.user).await.unwrap().is_empty());
    // The same item never gets these numbers again.
    assert!(matches!(
        f.core
            .pool
            .lease(&f.user, "app", 1, LeaseFilter::default())
            .await,
        Err(CoreError::NoNumbers)
    ));
}

#[tokio::test]
async fn send_from_leased_number_is_queued_for_its_device() {
    let f = fx(100, &["13800000001"]).await;
    let p = &f.core.pool;
    assert!(matches!(
        p.send_from(&f.user, "nope", "13800000001", "hi").await,
        Err(CoreError::ItemNotFound)
    ));
    assert!(matches!(
        p.send_from(&f.user, "app", "13800000001", "hi").await,
        Err(CoreError::NotLeased)
    ));
    p.lease(&f.user, "app", 1, LeaseFilter::default())
        .await
        .unwrap();
    assert!(matches!(
        p.send_from(&f.user, "app", "13800000001", "").await,
        Err(CoreError::MessageEmpty)
    ));
    let long = "字".repeat(501);
    assert!(matches!(
        p.send_from(&f.user, "app", "13800000001", &long).await,
        Err(CoreError::MessageTooLong)
    ));
    p.send_from(&f.user, "app", "13800000001", &"字".repeat(500))
        .await
        .unwrap();
    let queued = p.take_device_messages("dev-1", 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].item_id, "app");
    assert!(p
        .take_device_messages("dev-1", 10)
        .await
        .unwrap()
        .is_empty());
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (97, 10));
    // Balance: 97 - 10 held = 87 available; send_price 3 → 29 sends fit.
    for _ in 0..29 {
        p.send_from(&f.user, "app", "13800000001", "x")
            .await
            .unwrap();
    }
    assert!(matches!(
        p.send_from(&f.user, "app", "13800000001", "x").await,
        Err(CoreError::InsufficientBalance { .. })
    ));
}

#[tokio::test]
async fn concurrent_leases_of_one_number_charge_one_user() {
    let f = fx(0, &["13800000001"]).await;
    let mut users = Vec::new();
    for i in 0..20 {
        let name = format!("user{i}");
        f.core
            .accounts
            .sign_up_username(&name, "secret1")
            .await
            .unwrap();
        f.core.billing.charge(&name, 10, None).await.unwrap();
        users.push(
            f.core
                .accounts
                .user_by_username(&name)
                .await
                .unwrap()
                .unwrap()
                .id,
        );
    }
    let mut tasks = Vec::new();
    for u in users.clone() {
        let pool = f.core.pool.clone();
        tasks.push(tokio::spawn(async move {
            pool.lease(&u, "app", 1, LeaseFilter::default()).await
        }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(l) => won += l.len(),
            Err(CoreError::NoNumbers) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    let mut held = 0;
    for u in &users {
        let b = f.core.billing.balance(u).await.unwrap();
        assert_eq!(b.total, 10, "nobody is charged by a lease");
        held += b.held;
    }
    assert_eq!(held, 10, "only the winner's price is held");
}

#[tokio::test]
async fn hand_out_bounds() {
    let f = fx(0, &["13800000001"]).await;
    assert!(f.core.pool.hand_out("app", 0).await.is_err());
    assert!(f.core.pool.hand_out("app", 101).await.is_err());
    assert!(f.core.pool.hand_out("", 1).await.is_err());
    assert_eq!(f.core.pool.hand_out("app", 100).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_hold_orphaned_by_a_crash_is_released_when_it_expires() {
    let f = fx(100, &["13800000001"]).await;
    // What a crash between holding and leasing leaves behind.
    let until = f.clock.unix() + 1_200 + 120;
    f.core
        .billing
        .apply(
            &f.user,
            "lease:orphan".into(),
            LedgerOp::Hold {
                amount: 30,
                expires_at: Some(until),
            },
        )
        .await
        .unwrap();
    // A normal lease beside it.
    f.core
        .pool
        .lease(&f.user, "app", 1, LeaseFilter::default())
        .await
        .unwrap();
    assert_eq!(f.core.billing.balance(&f.user).await.unwrap().held, 40);
    f.clock.advance(1_200);
    f.core.pool.settle_due(10).await.unwrap();
    assert_eq!(
        f.core.billing.balance(&f.user).await.unwrap().held,
        30,
        "the lease settled, the orphan waits"
    );
    f.clock.advance(120);
    f.core.pool.settle_due(10).await.unwrap();
    f.core.pool.settle_due(10).await.unwrap();
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (100, 0));
}

#[tokio::test]
async fn settling_after_the_hold_expired_is_harmless() {
    let f = fx(100, &["13800000001"]).await;
    f.core
        .pool
        .lease(&f.user, "app", 1, LeaseFilter::default())
        .await
        .unwrap();
    // The sweeper was down past the hold's expiry: the hold is released by
    // expiry first, then the lease settles without a second release.
    f.clock.advance(5_000);
    let holds = f
        .core
        .stores
        .ledger
        .expired_holds(f.clock.unix(), 10)
        .await
        .unwrap();
    assert_eq!(holds.len(), 1);
    f.core
        .billing
        .apply(
            &f.user,
            format!("expire:{}", holds[0].hold_id),
            LedgerOp::Release {
                hold_id: holds[0].hold_id.clone(),
                amount: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(f.core.pool.settle_due(10).await.unwrap(), 1);
    let b = f.core.billing.balance(&f.user).await.unwrap();
    assert_eq!((b.total, b.held), (100, 0));
}

#[tokio::test]
async fn mailboxes_are_capped_oldest_first_and_everything_queued_has_a_retention() {
    let f = fx(100, &["13800000001"]).await;
    let p = &f.core.pool;
    p.lease(&f.user, "app", 1, LeaseFilter::default())
        .await
        .unwrap();
    let cap = p.policy().mailbox_cap;
    for i in 0..cap + 3 {
        p.receive(vec![sms("13800000001", &format!("m{i}"), None)])
            .await
            .unwrap();
    }
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = p.mailbox_page(&f.user, after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.0);
        all.extend(page);
    }
    assert_eq!(all.len(), cap);
    assert!(matches!(&all[0].1, Push::RecvMsg { msg, .. } if msg == "m3"));
    // A code for the app and a text for the device wait, then age out.
    p.receive(vec![sms("13800000001", "123456", Some("app"))])
        .await
        .unwrap();
    p.send_from(&f.user, "app", "13800000001", "hi")
        .await
        .unwrap();
    f.clock.advance(p.policy().retention_secs);
    assert_eq!(p.purge_expired().await.unwrap(), Default::default());
    f.clock.advance(1);
    let purged = p.purge_expired().await.unwrap();
    assert_eq!(
        (purged.sms, purged.device_messages, purged.mailbox),
        (1, 1, cap as u64)
    );
    assert!(p.take_codes("app", 10).await.unwrap().is_empty());
    assert!(p
        .take_device_messages("dev-1", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(p.mailbox(&f.user).await.unwrap().is_empty());
}

#[tokio::test]
async fn codes_for_numbers_not_in_the_pool_and_other_devices_numbers_are_refused() {
    let f = fx(0, &["13800000001"]).await;
    let p = &f.core.pool;
    assert!(matches!(
        p.receive(vec![sms("13800000009", "123456", Some("app"))])
            .await,
        Err(CoreError::InvalidParameter("mobile"))
    ));
    let dev2 = DeviceScope::Channels(["dev-2".to_owned()].into());
    assert!(matches!(
        p.receive_for(&dev2, vec![sms("13800000001", "123456", Some("app"))])
            .await,
        Err(CoreError::OutsideDeviceScope)
    ));
    assert!(matches!(
        p.upload_numbers_for(&dev2, vec![info("13800000001", "dev-2")])
            .await,
        Err(CoreError::OutsideDeviceScope)
    ));
    assert!(matches!(
        p.take_device_messages_for(&dev2, "dev-1", 10).await,
        Err(CoreError::OutsideDeviceScope)
    ));
    assert!(
        p.take_codes("app", 10).await.unwrap().is_empty(),
        "nothing stored"
    );
    p.upload_numbers_for(&dev2, vec![info("13800000002", "dev-2")])
        .await
        .unwrap();
    p.receive_for(&dev2, vec![sms("13800000002", "123456", Some("app"))])
        .await
        .unwrap();
}
