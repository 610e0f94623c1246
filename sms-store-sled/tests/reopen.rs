//! Everything written survives closing and reopening the database, and a
//! write acknowledged with `Ok` survives `kill -9` of the process.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use sms_core::code_decision::{
    CheckCode, CheckOutcome, CodeDecision, CodeVerdict, IssueCode, IssueOutcome,
};
use sms_core::error::{StoreError, UniqueField};
use sms_core::events::Push;
use sms_core::identity::{Email, Username};
use sms_core::ledger::{Balance, LedgerOp, LedgerOutcome, LedgerRequest};
use sms_core::limits::{LimitCheck, LimitDecision, LimitRule};
use sms_core::phone::PhoneNumber;
use sms_core::pool::{DeviceMessage, Item, LeaseFilter, LeaseRequest, NumberInfo, ReceivedSms};
use sms_core::pool_service::{DeviceScope, IncomingSms};
use sms_core::receive::{ReceiveOutcome, ReceiveRequest};
use sms_core::secret::{CodeHasher, Token};
use sms_core::sending::{
    AuditStatus, RecipientStatus, SendTask, Signature, TaskState, Template, TemplateType,
};
use sms_core::session_decision::OpenSession;
use sms_core::store::{
    CodeKey, CodeRecord, ConsumeOutcome, EntryQuery, Grant, GrantKind, LimitMode, Purpose,
    RedeemOutcome, RevokeScope, Session, SessionOrigin, SignatureWrite, Stores, TemplateWrite,
    UserKey, WriteOutcome,
};
use sms_core::user::{User, UserChange, UserId};
use sms_store_sled::SledStore;

/// What a create stored.
fn created<T: std::fmt::Debug>(outcome: WriteOutcome<T>) -> T {
    match outcome {
        WriteOutcome::Created(x) => x,
        other => panic!("a create answered {other:?}"),
    }
}

/// A check of `key` with its failure budget under `reopen:fail`.
fn check(key: &CodeKey, presented: sms_core::secret::CodeHash, now: i64) -> CodeDecision {
    CodeDecision::Check(CheckCode {
        key: key.clone(),
        presented,
        now,
        max_attempts: 5,
        failures: LimitCheck::new("reopen:fail", LimitRule::per(20, 86_400)),
        pump_ok: None,
        grant: None,
    })
}

fn id(n: u32) -> UserId {
    UserId::from_string(format!("{n:032x}"))
}

fn user(n: u32, username: &str, phone: Option<&str>, email: Option<&str>) -> User {
    User {
        id: id(n),
        username: Some(Username::parse(username).unwrap()),
        phone: phone.map(|p| PhoneNumber::parse_cn_mobile(p).unwrap()),
        email: email.map(|e| Email::parse(e).unwrap()),
        name: None,
        password_hash: format!("hash-{n}"),
        device: None,
        banned: false,
        points: 0,
        created_at: 1_000,
    }
}

fn session(token: &str, user_n: u32) -> Session {
    Session {
        token_hash: Token::from_client(token).hash(),
        user_id: id(user_n),
        origin: SessionOrigin::Login,
        issued_at: 10,
        expires_at: 110,
        first_used_at: None,
        seq: 0,
    }
}

fn code_key() -> CodeKey {
    CodeKey {
        address: "+8613811112222".into(),
        purpose: Purpose::Register,
    }
}

fn open(path: &std::path::Path) -> Stores {
    Arc::new(SledStore::open(path).expect("open")).stores()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let hasher = CodeHasher::new([3; 32]);
    let phone = PhoneNumber::parse_cn_mobile("13811112222").unwrap();
    let grant_token = Token::from_client("grant").hash();
    let login = LimitCheck::new("login:alice", LimitRule::per(3, 900).with_lockout(900));
    let sends = LimitCheck::new("send:+8613811112222", LimitRule::per(2, 3_600));

    {
        let s = open(dir.path());
        s.users
            .create_user(user(1, "Alice", Some("13811112222"), Some("a@x.io")))
            .await
            .unwrap();
        s.users
            .create_user(user(2, "bob", Some("13900000000"), None))
            .await
            .unwrap();
        s.users
            .update_user(
                &id(2),
                UserChange::SetEmail(Some(Email::parse("b@x.io").unwrap())),
            )
            .await
            .unwrap();
        s.users
            .update_user(
                &id(1),
                UserChange::SetEmail(Some(Email::parse("a2@x.io").unwrap())),
            )
            .await
            .unwrap();

        for (t, u) in [("s1", 1), ("s2", 1), ("s3", 1), ("s4", 2)] {
            s.sessions
                .open_session(OpenSession {
                    session: session(t, u),
                    new_user: None,
                    max_sessions: 50,
                })
                .await
                .unwrap();
        }
        s.sessions
            .mark_session_used(&Token::from_client("s1").hash(), 20)
            .await
            .unwrap();
        let revoked = s
            .sessions
            .revoke(RevokeScope::Session(Token::from_client("s2").hash()))
            .await
            .unwrap();
        assert_eq!(revoked, 1);

        let key = code_key();
        let record = CodeRecord {
            hash: hasher.hash(&key.flat(), "123456"),
            key: key.clone(),
            issued_at: 100,
            expires_at: 400,
            attempts: 0,
            used: false,
        };
        assert_eq!(
            s.codes
                .decide_code(CodeDecision::Issue(IssueCode {
                    record,
                    cooldown_secs: 60,
                    caps: vec![],
                    pump: None,
                }))
                .await
                .unwrap(),
            CodeVerdict::Issue(IssueOutcome::Issued)
        );
        let wrong = hasher.hash(&key.flat(), "000000");
        assert!(matches!(
            s.codes.decide_code(check(&key, wrong, 150)).await.unwrap(),
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Mismatch {
                attempts_left: 4
            }))
        ));

        s.grants
            .put_grant(Grant {
                kind: GrantKind::Registration,
                phone: phone.clone(),
                token_hash: Some(grant_token),
                issued_at: 100,
                expires_at: 200,
                used: false,
            })
            .await
            .unwrap();
        s.grants
            .put_grant(Grant {
                kind: GrantKind::PasswordReset,
                phone: phone.clone(),
                token_hash: None,
                issued_at: 100,
                expires_at: 200,
                used: false,
            })
            .await
            .unwrap();
        assert_eq!(
            s.grants
                .consume_grant(GrantKind::PasswordReset, &phone, None, 150)
                .await
                .unwrap(),
            ConsumeOutcome::Consumed
        );

        for t in [1, 2, 3] {
            s.limits.record(&login, t).await.unwrap();
        }
        assert!(s
            .limits
            .check(std::slice::from_ref(&sends), 10, LimitMode::Acquire)
            .await
            .unwrap()
            .is_allowed());
        assert!(s
            .limits
            .check(std::slice::from_ref(&sends), 20, LimitMode::Acquire)
            .await
            .unwrap()
            .is_allowed());
        // Every handle to the database is dropped here.
    }

    let s = open(dir.path());

    // Users and every index.
    let alice = s
        .users
        .user(&UserKey::Username(Username::parse("alice").unwrap()))
        .await
        .unwrap()
        .expect("alice");
    assert_eq!(alice.id, id(1));
    assert_eq!(alice.username.as_ref().unwrap().as_str(), "Alice");
    assert_eq!(alice.email, Some(Email::parse("a2@x.io").unwrap()));
    assert_eq!(
        s.users
            .user(&UserKey::Phone(phone.clone()))
            .await
            .unwrap()
            .map(|u| u.id),
        Some(id(1))
    );
    assert_eq!(
        s.users
            .user(&UserKey::Email(Email::parse("a2@x.io").unwrap()))
            .await
            .unwrap()
            .map(|u| u.id),
        Some(id(1))
    );
    assert!(s
        .users
        .user(&UserKey::Email(Email::parse("a@x.io").unwrap()))
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        s.users
            .user(&UserKey::Email(Email::parse("b@x.io").unwrap()))
            .await
            .unwrap()
            .map(|u| u.id),
        Some(id(2))
    );

    // The unique indexes still hold.
    let dup = |n, name, phone, email| s.users.create_user(user(n, name, phone, email));
    assert!(matches!(
        dup(3, "ALICE", None, None).await,
        Err(StoreError::Conflict(UniqueField::Username))
    ));
    assert!(matches!(
        dup(3, "carol", Some("+8613811112222"), None).await,
        Err(StoreError::Conflict(UniqueField::Phone))
    ));
    assert!(matches!(
        dup(3, "carol", None, Some("B@x.io")).await,
        Err(StoreError::Conflict(UniqueField::Email))
    ));
    assert!(matches!(
        dup(1, "carol", None, None).await,
        Err(StoreError::Conflict(UniqueField::Id))
    ));
    assert!(matches!(
        s.users
            .update_user(
                &id(2),
                UserChange::SetEmail(Some(Email::parse("a2@x.io").unwrap()))
            )
            .await,
        Err(StoreError::Conflict(UniqueField::Email))
    ));
    // The address alice gave up is free.
    dup(3, "carol", None, Some("a@x.io")).await.unwrap();

    // Sessions and the per-user index.
    let s1 = s
        .sessions
        .session(&Token::from_client("s1").hash())
        .await
        .unwrap()
        .expect("s1");
    assert_eq!(s1.first_used_at, Some(20));
    assert!(s
        .sessions
        .session(&Token::from_client("s2").hash())
        .await
        .unwrap()
        .is_none());
    let mut mine: Vec<_> = s
        .sessions
        .user_sessions(&id(1))
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.token_hash)
        .collect();
    mine.sort();
    let mut expected = vec![
        Token::from_client("s1").hash(),
        Token::from_client("s3").hash(),
    ];
    expected.sort();
    assert_eq!(mine, expected);
    assert_eq!(
        s.sessions
            .revoke(RevokeScope::User {
                user_id: id(1),
                keep: Some(Token::from_client("s3").hash()),
            })
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.sessions.user_sessions(&id(2)).await.unwrap().len(), 1);
    // The session sequence keeps increasing across the reopen.
    let before = s.sessions.user_sessions(&id(2)).await.unwrap()[0].seq;
    let after = s
        .sessions
        .open_session(OpenSession {
            session: session("s5", 2),
            new_user: None,
            max_sessions: 50,
        })
        .await
        .unwrap()
        .seq;
    assert!(after > before, "{after} after {before}");

    // Codes keep their attempts.
    let key = code_key();
    let code = s.codes.code(&key).await.unwrap().expect("code");
    assert_eq!(code.attempts, 1);
    assert_eq!(
        s.codes
            .decide_code(check(&key, hasher.hash(&key.flat(), "123456"), 160))
            .await
            .unwrap(),
        CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
    );
    // The failed check of the first run is still counted.
    let fail = LimitCheck::new("reopen:fail", LimitRule::per(1, 86_400));
    assert!(!s
        .limits
        .check(&[fail], 160, LimitMode::Peek)
        .await
        .unwrap()
        .is_allowed());

    // Grants keep their state.
    let reset = s
        .grants
        .grant(GrantKind::PasswordReset, &phone)
        .await
        .unwrap()
        .expect("reset grant");
    assert!(reset.used);
    assert_eq!(
        s.grants
            .consume_grant(GrantKind::Registration, &phone, Some(grant_token), 150)
            .await
            .unwrap(),
        ConsumeOutcome::Consumed
    );

    // Limits keep their hits and lockouts.
    assert_eq!(
        s.limits
            .check(std::slice::from_ref(&login), 500, LimitMode::Peek)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 0,
            retry_at: 903
        }
    );
    assert_eq!(
        s.limits
            .check(std::slice::from_ref(&sends), 30, LimitMode::Acquire)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 0,
            retry_at: 3_610
        }
    );
}

fn number(mobile: &str, area: Option<&str>) -> NumberInfo {
    NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile(mobile).unwrap(),
        cid: "dev-1".into(),
        imsi: format!("imsi-{mobile}"),
        imei: "imei".into(),
        iccid: "iccid".into(),
        ip: "10.0.0.1".into(),
        area: area.map(str::to_owned),
    }
}

fn lease_req(item: &str, ids: &[&str], now: i64) -> LeaseRequest {
    LeaseRequest {
        user: id(7),
        item: item.into(),
        lease_ids: ids.iter().map(|s| s.to_string()).collect(),
        filter: LeaseFilter::default(),
        now,
        until: now + 100,
        hold_id: format!("hold-{now}"),
        price: 5,
        hold: None,
    }
}

fn sms(i: i64) -> ReceivedSms {
    ReceivedSms {
        mobile: PhoneNumber::parse_cn_mobile("13800000001").unwrap(),
        text: format!("code {i:06}"),
        code: format!("{i:06}"),
        appname: Some("app".into()),
        chanlid: Some("dev-1".into()),
        at: i,
    }
}

fn device_message(i: i64) -> DeviceMessage {
    DeviceMessage {
        mobile: PhoneNumber::parse_cn_mobile("13800000001").unwrap(),
        item_id: "app".into(),
        msg: format!("m{i}"),
        at: i,
    }
}

fn recv(msg: &str) -> Push {
    Push::RecvMsg {
        mobile: "13800000001".into(),
        msg: msg.into(),
        at: 0,
    }
}

fn ledger_req(op_id: &str, op: LedgerOp) -> LedgerRequest {
    LedgerRequest {
        op_id: op_id.into(),
        user: id(7),
        op,
        at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_queues_and_ledger_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let phones: Vec<PhoneNumber> = ["13800000001", "13000000002", "13300000003"]
        .iter()
        .map(|p| PhoneNumber::parse_cn_mobile(p).unwrap())
        .collect();
    let item = Item {
        id: "com.yy.huanju".into(),
        name: "欢聚".into(),
        price: 10,
        send_price: 2,
        code_pattern: Some(r"(\d{6})".into()),
    };
    let (b_seq, c_seq) = {
        let s = open(dir.path());
        s.pool.set_pool_size(5).await.unwrap();
        let intake = s
            .pool
            .intake(
                vec![
                    number("13800000001", Some("北京")),
                    number("13000000002", None),
                    number("13300000003", None),
                ],
                1,
            )
            .await
            .unwrap();
        assert_eq!(intake.used, phones);
        let leases = s
            .pool
            .lease(lease_req("app", &["l1", "l2"], 10))
            .await
            .unwrap()
            .leases();
        assert_eq!(
            leases.iter().map(|l| &l.mobile).collect::<Vec<_>>(),
            vec![&phones[0], &phones[1]]
        );
        // An SMS to l1's number charges it (one receive decision).
        let got = s
            .pool
            .receive(ReceiveRequest {
                scope: DeviceScope::Any,
                batch: vec![IncomingSms {
                    mobile: phones[0].clone(),
                    text: "123456".into(),
                    appname: None,
                    chanlid: None,
                }],
                now: 20,
                mailbox_cap: 1000,
            })
            .await
            .unwrap();
        let ReceiveOutcome::Received(done) = got else {
            panic!("{got:?}");
        };
        // Its push is acknowledged (the mailbox checks below are of b, c).
        for (user, seq, _) in done.pushed {
            s.queues.mailbox_ack(&user, seq).await.unwrap();
        }
        assert!(s.pool.mark_settled("l2").await.unwrap());
        let handed = s.pool.hand_out("other-app", 1, 10).await.unwrap();
        assert_eq!(handed.len(), 1);
        assert_eq!(handed[0].mobile, phones[2]);

        s.items.put_item(item.clone()).await.unwrap();

        for i in 0..3 {
            s.queues.push_sms("app", sms(i)).await.unwrap();
        }
        assert_eq!(s.queues.take_sms("app", 1).await.unwrap(), vec![sms(0)]);
        for i in 0..2 {
            s.queues
                .push_device_message("dev-1", device_message(i))
                .await
                .unwrap();
        }
        let a = s.queues.mailbox_push(&id(7), recv("a")).await.unwrap();
        let b = s.queues.mailbox_push(&id(7), recv("b")).await.unwrap();
        let c = s.queues.mailbox_push(&id(7), recv("c")).await.unwrap();
        assert!(a < b && b < c);
        s.queues.mailbox_ack(&id(7), a).await.unwrap();

        for (op_id, op) in [
            ("c1", LedgerOp::Charge { amount: 100 }),
            (
                "h1",
                LedgerOp::Hold {
                    amount: 30,
                    expires_at: None,
                },
            ),
            (
                "x1",
                LedgerOp::Capture {
                    hold_id: "h1".into(),
                    amount: 10,
                },
            ),
            ("d1", LedgerOp::Debit { amount: 5 }),
        ] {
            let r = s.ledger.apply(ledger_req(op_id, op)).await.unwrap();
            assert!(matches!(r, LedgerOutcome::Applied(_)), "{op_id}: {r:?}");
        }
        (b, c)
        // Every handle to the database is dropped here.
    };

    let s = open(dir.path());

    // Numbers, their leases and uses.
    assert_eq!(s.pool.pool_stats().await.unwrap().size, 5);
    let n0 = s.pool.number(&phones[0]).await.unwrap().expect("number 0");
    assert_eq!(n0.info.area.as_deref(), Some("北京"));
    assert_eq!(n0.added_at, 1);
    assert_eq!(n0.lease.as_ref().map(|l| l.lease_id.as_str()), Some("l1"));
    assert!(n0.used_for.contains("app"));
    let n2 = s.pool.number(&phones[2]).await.unwrap().expect("number 2");
    assert!(n2.used_for.contains("other-app") && n2.lease.is_none());
    let l1 = s.pool.lease_record("l1").await.unwrap().expect("l1");
    assert!(l1.charged && !l1.settled);
    assert_eq!((l1.until, l1.hold_id.as_str()), (110, "hold-10"));
    assert!(s.pool.lease_record("l2").await.unwrap().unwrap().settled);
    assert!(!s.pool.mark_settled("l2").await.unwrap());
    // The index of unsettled leases: only l1 is due.
    let due = s.pool.due_leases(110, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        vec!["l1"]
    );
    // The counters: 3 stored, 1 unsettled lease → 2 available of 5, so
    // exactly 3 of 4 new numbers fit.
    let more = ["13800000004", "13800000005", "13800000006", "13800000007"];
    let intake = s
        .pool
        .intake(more.iter().map(|m| number(m, None)).collect(), 50)
        .await
        .unwrap();
    assert_eq!(intake.used.len(), 3);
    assert!(!intake.full);
    // Upload order continues across the reopen.
    let leases = s
        .pool
        .lease(lease_req(
            "fresh",
            &["f1", "f2", "f3", "f4", "f5", "f6", "f7"],
            200,
        ))
        .await
        .unwrap()
        .leases();
    let expected: Vec<PhoneNumber> = phones
        .iter()
        .cloned()
        .chain(
            more[..3]
                .iter()
                .map(|m| PhoneNumber::parse_cn_mobile(m).unwrap()),
        )
        .collect();
    assert_eq!(
        leases.into_iter().map(|l| l.mobile).collect::<Vec<_>>(),
        expected
    );
    // Never again for "app": the two numbers it leased are skipped.
    let again = s
        .pool
        .lease(lease_req("app", &["a1"], 400))
        .await
        .unwrap()
        .leases();
    assert_eq!(again[0].mobile, phones[2]);

    // Items.
    assert_eq!(s.items.item(&item.id).await.unwrap(), Some(item));

    // Queues keep their entries and order.
    s.queues.push_sms("app", sms(3)).await.unwrap();
    assert_eq!(
        s.queues.take_sms("app", 10).await.unwrap(),
        vec![sms(1), sms(2), sms(3)]
    );
    assert_eq!(
        s.queues.take_device_messages("dev-1", 10).await.unwrap(),
        vec![device_message(0), device_message(1)]
    );
    assert_eq!(
        s.queues.mailbox(&id(7), None, usize::MAX).await.unwrap(),
        vec![(b_seq, recv("b")), (c_seq, recv("c"))]
    );
    let d = s.queues.mailbox_push(&id(7), recv("d")).await.unwrap();
    assert!(d > c_seq, "sequence numbers keep increasing across reopen");
    assert_eq!(
        s.queues
            .mailbox(&id(7), None, usize::MAX)
            .await
            .unwrap()
            .len(),
        3
    );

    // Ledger balances, holds and entries.
    let balance = s.ledger.balance(&id(7)).await.unwrap();
    assert_eq!((balance.total, balance.held), (85, 20));
    assert_eq!(s.ledger.hold("h1").await.unwrap().unwrap().remaining, 20);
    let entries = s.ledger.entries(&EntryQuery::User(id(7))).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e.request.op_id.as_str())
            .collect::<Vec<_>>(),
        vec!["c1", "h1", "x1", "d1"]
    );
    assert_eq!(
        s.ledger
            .entries(&EntryQuery::Op("x1".into()))
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap()
            .balance_after,
        Balance {
            total: 90,
            held: 20
        }
    );
    assert!(matches!(
        s.ledger
            .apply(ledger_req("c1", LedgerOp::Charge { amount: 100 }))
            .await
            .unwrap(),
        LedgerOutcome::Duplicate(b) if b == balance
    ));
    let r = s
        .ledger
        .apply(ledger_req(
            "r1",
            LedgerOp::Release {
                hold_id: "h1".into(),
                amount: 20,
            },
        ))
        .await
        .unwrap();
    assert_eq!(r, LedgerOutcome::Applied(Balance { total: 85, held: 0 }));
}

fn signature(owner: u32, text: &str) -> Signature {
    Signature {
        id: 0,
        owner: id(owner),
        text: text.into(),
        source: "app".into(),
        pics: vec!["https://x/1.png".into()],
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

fn template(owner: u32, sign_id: i64, name: &str) -> Template {
    Template {
        id: 0,
        owner: id(owner),
        sign_id,
        name: name.into(),
        content: "验证码${code}".into(),
        kind: TemplateType::Code,
        description: "d".into(),
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

fn send_task(uuid: &str, recipients: usize) -> SendTask {
    SendTask {
        uuid: uuid.into(),
        owner: id(1),
        sign_id: 1,
        temp_id: 2,
        text: "【签名】hi".into(),
        segments: 1,
        unit_price: 3,
        recipients: (0..recipients)
            .map(|i| PhoneNumber::parse_cn_mobile(&format!("1390000{i:04}")).unwrap())
            .collect(),
        state: TaskState::Created,
        created_at: 5,
        finished_at: None,
        params: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_templates_and_tasks_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let sent = |n: usize| RecipientStatus::Sent {
        gateway_id: format!("g{n}"),
        at: 7,
        carrier: None,
    };
    let failed = RecipientStatus::Failed {
        reason: "no".into(),
        at: 7,
    };

    let (a, b, t1, t2, last_sign_id, last_temp_id);
    {
        let s = open(dir.path());
        let st = &s.sending;
        a = st
            .write_signature(SignatureWrite::Create(signature(1, "甲")))
            .await
            .map(created)
            .unwrap();
        let doomed = st
            .write_signature(SignatureWrite::Create(signature(1, "乙")))
            .await
            .map(created)
            .unwrap();
        b = st
            .write_signature(SignatureWrite::Create(signature(2, "丙")))
            .await
            .map(created)
            .unwrap();
        let mut passed = a.clone();
        passed.audit = AuditStatus::Passed;
        assert_eq!(
            st.write_signature(SignatureWrite::Replace {
                old: a.clone(),
                new: passed,
            })
            .await
            .unwrap(),
            WriteOutcome::Replaced
        );
        t1 = st
            .write_template(TemplateWrite::Create(template(1, a.id, "one")))
            .await
            .map(created)
            .unwrap();
        let moved = st
            .write_template(TemplateWrite::Create(template(1, a.id, "two")))
            .await
            .map(created)
            .unwrap();
        // Moved to signature b and to owner 2: a keeps one template.
        let mut t = moved.clone();
        t.sign_id = b.id;
        t.owner = id(2);
        assert_eq!(
            st.write_template(TemplateWrite::Replace {
                old: moved.clone(),
                new: t.clone(),
            })
            .await
            .unwrap(),
            WriteOutcome::Replaced
        );
        t2 = t;
        let gone = st
            .write_template(TemplateWrite::Create(template(1, doomed.id, "gone")))
            .await
            .map(created)
            .unwrap();
        assert_eq!(
            st.write_template(TemplateWrite::Delete(gone.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        assert_eq!(
            st.write_signature(SignatureWrite::Delete(doomed.id))
                .await
                .unwrap(),
            WriteOutcome::Deleted
        );
        last_sign_id = doomed.id;
        last_temp_id = gone.id;

        for uuid in ["t-1", "t-2", "t-3", "t-4"] {
            st.create_task(send_task(uuid, 300)).await.unwrap();
        }
        assert!(st
            .set_task_state("t-1", TaskState::Created, TaskState::Queued, 6)
            .await
            .unwrap());
        assert!(st
            .set_task_state("t-2", TaskState::Created, TaskState::Cancelled, 6)
            .await
            .unwrap());
        st.record_statuses("t-1", (0..100).map(|i| (i, sent(i))).collect())
            .await
            .unwrap();
        st.record_statuses("t-1", vec![(299, failed.clone())])
            .await
            .unwrap();
    }

    let s = open(dir.path());
    let st = &s.sending;
    let mut passed = a.clone();
    passed.audit = AuditStatus::Passed;
    assert_eq!(st.signature(a.id).await.unwrap(), Some(passed.clone()));
    assert_eq!(st.signatures_of(&id(1)).await.unwrap(), vec![passed]);
    assert_eq!(st.signatures_of(&id(2)).await.unwrap(), vec![b.clone()]);
    assert_eq!(st.templates_of(&id(1)).await.unwrap(), vec![t1.clone()]);
    assert_eq!(st.templates_of(&id(2)).await.unwrap(), vec![t2.clone()]);
    assert_eq!(st.template(t2.id).await.unwrap(), Some(t2.clone()));
    assert!(st.template(last_temp_id).await.unwrap().is_none());
    // The per-signature template counts survived: both signatures are in use
    // until their templates go.
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(a.id))
            .await
            .unwrap(),
        WriteOutcome::InUse
    );
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(b.id))
            .await
            .unwrap(),
        WriteOutcome::InUse
    );
    assert_eq!(
        st.write_template(TemplateWrite::Delete(t2.id))
            .await
            .unwrap(),
        WriteOutcome::Deleted
    );
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(b.id))
            .await
            .unwrap(),
        WriteOutcome::Deleted
    );
    assert!(st.signatures_of(&id(2)).await.unwrap().is_empty());
    // Ids keep increasing after the reopen.
    let c = st
        .write_signature(SignatureWrite::Create(signature(1, "丁")))
        .await
        .map(created)
        .unwrap();
    assert!(c.id > last_sign_id, "id {} reused after reopen", c.id);
    let t3 = st
        .write_template(TemplateWrite::Create(template(1, c.id, "three")))
        .await
        .map(created)
        .unwrap();
    assert!(t3.id > last_temp_id, "id {} reused after reopen", t3.id);

    // Tasks, statuses and the open list.
    let mut t1_task = send_task("t-1", 300);
    t1_task.state = TaskState::Queued;
    assert_eq!(st.task("t-1").await.unwrap(), Some(t1_task));
    let cancelled = st.task("t-2").await.unwrap().unwrap();
    assert_eq!(
        (cancelled.state, cancelled.finished_at),
        (TaskState::Cancelled, Some(6))
    );
    let statuses = st.recipient_statuses("t-1").await.unwrap();
    assert_eq!(statuses.len(), 300);
    assert_eq!(statuses[0], sent(0));
    assert_eq!(statuses[99], sent(99));
    assert_eq!(statuses[100], RecipientStatus::Pending);
    assert_eq!(statuses[299], failed);
    assert!(st
        .recipient_statuses("t-3")
        .await
        .unwrap()
        .iter()
        .all(|x| *x == RecipientStatus::Pending));
    assert_eq!(
        st.open_tasks().await.unwrap(),
        vec!["t-1".to_string(), "t-3".into(), "t-4".into()]
    );
    assert!(matches!(
        st.create_task(send_task("t-2", 1)).await,
        Err(StoreError::Conflict(UniqueField::Id))
    ));
    // Tasks created after the reopen come after the older ones.
    st.create_task(send_task("t-0", 1)).await.unwrap();
    assert!(st
        .set_task_state("t-3", TaskState::Created, TaskState::Queued, 9)
        .await
        .unwrap());
    assert!(st
        .set_task_state("t-1", TaskState::Queued, TaskState::Done, 9)
        .await
        .unwrap());
    assert_eq!(
        st.open_tasks().await.unwrap(),
        vec!["t-3".to_string(), "t-4".into(), "t-0".into()]
    );
}

/// The environment variable that turns [`crash_child`] into the writer.
const CHILD_DIR: &str = "SMS_STORE_SLED_CRASH_DIR";

/// The writer half of [`acknowledged_writes_survive_kill_9`]: writes users
/// forever, printing `ack N` after each `Ok`. A no-op in a normal test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let s = open(std::path::Path::new(&dir));
    let mut out = std::io::stdout().lock();
    for n in 0u32.. {
        s.users
            .create_user(user(n, &format!("user{n}"), None, None))
            .await
            .unwrap();
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("ack ") {
            let n: u32 = n.parse().unwrap();
            acked = Some(n);
            if n >= 40 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let last = acked.expect("the child acknowledged writes");
    assert!(last >= 40, "child stopped early at {last}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = open(dir.path());
        for n in 0..=last {
            let name = Username::parse(&format!("user{n}")).unwrap();
            let u = s
                .users
                .user(&UserKey::Username(name.clone()))
                .await
                .unwrap();
            assert_eq!(u.map(|u| u.id), Some(id(n)), "acknowledged user{n} lost");
        }
    });
}

/// A `Sent` status's carrier message id still finds its recipient after a
/// reopen (an SMPP receipt that comes after a restart), and the receipt's
/// status and refund, applied after the reopen, are there after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_ids_and_receipts_survive_reopen() {
    use sms_core::carrier::DeliveryStatus;
    use sms_core::sending::{ReceiptOutcome, ReceiptUpdate};
    let dir = tempfile::tempdir().unwrap();
    {
        let s = open(dir.path());
        s.sending.create_task(send_task("t-g", 2)).await.unwrap();
        s.sending
            .record_statuses(
                "t-g",
                vec![(
                    1,
                    RecipientStatus::Sent {
                        gateway_id: "1001".into(),
                        at: 7,
                        carrier: Some("smsc".into()),
                    },
                )],
            )
            .await
            .unwrap();
    }
    {
        let s = open(dir.path());
        assert_eq!(
            s.sending
                .recipient_by_gateway_id("smsc", "1001")
                .await
                .unwrap(),
            Some(("t-g".to_string(), 1))
        );
        let out = s
            .sending
            .apply_receipt(
                "t-g",
                1,
                ReceiptUpdate {
                    delivery: DeliveryStatus::Failed,
                    carrier: "smsc".into(),
                    gateway_id: "1001".into(),
                    carrier_code: "UNDELIV/034".into(),
                    at: 9,
                },
            )
            .await
            .unwrap();
        assert!(
            matches!(out, ReceiptOutcome::Applied { refunded: 3, .. }),
            "{out:?}"
        );
    }
    let s = open(dir.path());
    assert_eq!(
        s.sending.recipient_statuses("t-g").await.unwrap()[1].as_str(),
        "failed"
    );
    assert_eq!(s.ledger.balance(&id(1)).await.unwrap().total, 3);
    assert!(s
        .ledger
        .entries(&EntryQuery::Op("refund:t-g:1".into()))
        .await
        .unwrap()
        .into_iter()
        .next()
        .is_some());
}

/// The conformance kit's reopen check of hand-outs: the numbers each app
/// had, and the runs that let hand-outs jump over them, survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_hand_outs_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    sms_core::testkit::pool_hand_outs_survive_reopen(|| {
        let path = path.clone();
        async move { open(&path) }
    })
    .await;
}
