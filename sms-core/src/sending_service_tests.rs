use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::clock::ManualClock;
use crate::core::Core;
use crate::gateway::{FailingGateway, RecordingGateway};
use crate::memory::MemoryStore;
use crate::password::Argon2Hasher;
use crate::random::SeededRandom;
use crate::sender::RecordingSender;
use crate::store::{EntryQuery, Stores};

struct Fx {
    core: Core,
    clock: Arc<ManualClock>,
    alice: UserId,
    bob: UserId,
}

async fn fx(gateway: Arc<dyn MessageGateway>, balance: i64) -> Fx {
    let clock = Arc::new(ManualClock::default());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(Arc::new(RecordingSender::new()))
        .clock(clock.clone())
        .random(Arc::new(SeededRandom::new(9)))
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .gateway(gateway)
        .build()
        .expect("test core");
    for name in ["alice", "bob"] {
        core.accounts
            .sign_up_username(name, "secret1")
            .await
            .unwrap();
    }
    if balance > 0 {
        core.billing.charge("alice", balance, None).await.unwrap();
    }
    let id = |n: &str| {
        let core = core.clone();
        let n = n.to_owned();
        async move {
            core.accounts
                .user_by_username(&n)
                .await
                .unwrap()
                .unwrap()
                .id
        }
    };
    Fx {
        alice: id("alice").await,
        bob: id("bob").await,
        core,
        clock,
    }
}

fn sig(text: &str) -> SignatureInput {
    SignatureInput {
        text: text.into(),
        source: "app".into(),
        pics: vec![],
    }
}

fn tpl(sign_id: i64, content: &str) -> TemplateInput {
    TemplateInput {
        sign_id,
        name: "code".into(),
        content: content.into(),
        kind: 1,
        description: "login codes".into(),
    }
}

/// A passed signature and template of alice's.
async fn approved(f: &Fx, content: &str) -> (i64, i64) {
    let s = &f.core.sending;
    let g = s.create_signature(&f.alice, sig("欢聚")).await.unwrap();
    let t = s
        .create_template(&f.alice, tpl(g.id, content))
        .await
        .unwrap();
    s.review_signature(g.id, true, "").await.unwrap();
    s.review_template(t.id, true, "").await.unwrap();
    (g.id, t.id)
}

fn mobiles(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("1390{i:07}")).collect()
}

#[tokio::test]
async fn audit_workflow_and_edit_rules() {
    let f = fx(Arc::new(RecordingGateway::new()), 0).await;
    let s = &f.core.sending;
    let g = s.create_signature(&f.alice, sig("欢聚")).await.unwrap();
    assert_eq!(g.audit, AuditStatus::Pending);
    // A template may be created on a pending signature.
    let t = s
        .create_template(&f.alice, tpl(g.id, "验证码${code}"))
        .await
        .unwrap();
    // Rejected: editable, back to pending with the reason cleared.
    s.review_signature(g.id, false, "资质不全").await.unwrap();
    let list = s.signatures(&f.alice, None).await.unwrap();
    assert_eq!(list.items[0].audit, AuditStatus::Rejected);
    assert_eq!(list.items[0].reject_reason, "资质不全");
    assert!(matches!(
        s.review_signature(g.id, true, "").await,
        Err(CoreError::SignatureNotPending)
    ));
    let edited = s
        .edit_signature(&f.alice, g.id, sig("欢聚2"))
        .await
        .unwrap();
    assert_eq!(
        (edited.audit, edited.reject_reason.as_str()),
        (AuditStatus::Pending, "")
    );
    s.review_signature(g.id, true, "").await.unwrap();
    assert!(matches!(
        s.edit_signature(&f.alice, g.id, sig("x")).await,
        Err(CoreError::SignatureLocked)
    ));
    // Ownership before state.
    assert!(matches!(
        s.edit_signature(&f.bob, g.id, sig("x")).await,
        Err(CoreError::SignatureNotOwned)
    ));
    // Template: same rules.
    s.review_template(t.id, true, "").await.unwrap();
    assert!(matches!(
        s.edit_template(&f.alice, t.id, tpl(g.id, "x")).await,
        Err(CoreError::TemplateLocked)
    ));
    assert!(matches!(
        s.review_template(t.id, false, "").await,
        Err(CoreError::TemplateLocked)
    ));
    // A signature with templates cannot be deleted; without, it can.
    assert!(matches!(
        s.delete_signature(&f.alice, g.id).await,
        Err(CoreError::SignatureInUse)
    ));
    assert!(matches!(
        s.delete_template(&f.bob, g.id, t.id).await,
        Err(CoreError::SignatureNotOwned)
    ));
    s.delete_template(&f.alice, g.id, t.id).await.unwrap();
    s.delete_signature(&f.alice, g.id).await.unwrap();
    assert!(s.signatures(&f.alice, None).await.unwrap().items.is_empty());
}

#[tokio::test]
async fn template_field_rules() {
    let f = fx(Arc::new(RecordingGateway::new()), 0).await;
    let s = &f.core.sending;
    let g = s.create_signature(&f.alice, sig("欢聚")).await.unwrap();
    let mut bad = tpl(g.id, "");
    assert!(matches!(
        s.create_template(&f.alice, bad.clone()).await,
        Err(CoreError::TemplateField)
    ));
    bad.content = "x".repeat(501);
    assert!(matches!(
        s.create_template(&f.alice, bad.clone()).await,
        Err(CoreError::TemplateField)
    ));
    bad.content = "ok".into();
    bad.kind = 4;
    assert!(matches!(
        s.create_template(&f.alice, bad.clone()).await,
        Err(CoreError::TemplateType)
    ));
    bad.kind = 3;
    assert!(matches!(
        s.create_template(&f.bob, bad.clone()).await,
        Err(CoreError::SignatureNotOwned)
    ));
    assert!(s.create_signature(&f.alice, sig("")).await.is_err());
    assert!(s.create_signature(&f.alice, sig("【x】")).await.is_err());
    let other = s.create_signature(&f.bob, sig("bob")).await.unwrap();
    let t = s.create_template(&f.alice, tpl(g.id, "hi")).await.unwrap();
    // A template is not of another user's signature.
    assert!(matches!(
        s.edit_template(&f.alice, t.id, tpl(other.id, "x")).await,
        Err(CoreError::SignatureNotOwned)
    ));
    assert!(matches!(
        s.delete_template(&f.bob, other.id, t.id).await,
        Err(CoreError::TemplateNotOfSignature)
    ));
}

#[tokio::test]
async fn paging() {
    let f = fx(Arc::new(RecordingGateway::new()), 0).await;
    for i in 0..5 {
        f.core
            .sending
            .create_signature(&f.alice, sig(&format!("s{i}")))
            .await
            .unwrap();
    }
    let p = f
        .core
        .sending
        .signatures(
            &f.alice,
            Some(PageRequest {
                page: 2,
                page_size: 2,
            }),
        )
        .await
        .unwrap();
    assert_eq!((p.total, p.page, p.page_size, p.items.len()), (5, 2, 2, 2));
    assert_eq!(p.items[0].text, "s2");
    let all = f.core.sending.signatures(&f.alice, None).await.unwrap();
    assert_eq!((all.total, all.page, all.page_size), (5, 1, 5));
}

#[tokio::test]
async fn send_checks_in_order() {
    let f = fx(Arc::new(RecordingGateway::new()), 5).await;
    let s = &f.core.sending;
    let p = HashMap::new();
    let g = s.create_signature(&f.alice, sig("欢聚")).await.unwrap();
    let t = s.create_template(&f.alice, tpl(g.id, "hi")).await.unwrap();
    let bad_mobiles = vec!["123".to_string()];
    assert!(matches!(
        s.send(&f.bob, g.id, t.id, &bad_mobiles, &p).await,
        Err(CoreError::SignatureNotOwned)
    ));
    assert!(matches!(
        s.send(&f.alice, g.id, 999, &bad_mobiles, &p).await,
        Err(CoreError::TemplateNotOfSignature)
    ));
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &bad_mobiles, &p).await,
        Err(CoreError::SignatureNotPassed)
    ));
    s.review_signature(g.id, true, "").await.unwrap();
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &bad_mobiles, &p).await,
        Err(CoreError::TemplateNotPassed)
    ));
    s.review_template(t.id, true, "").await.unwrap();
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &bad_mobiles, &p).await,
        Err(CoreError::InvalidMobiles)
    ));
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &[], &p).await,
        Err(CoreError::InvalidMobiles)
    ));
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &mobiles(10_001), &p).await,
        Err(CoreError::InvalidMobiles)
    ));
    assert!(matches!(
        s.send(&f.alice, g.id, t.id, &mobiles(6), &p).await,
        Err(CoreError::InsufficientBalance { available: 5 })
    ));
    // Nothing was charged by the refused send; the cancelled task is not open.
    assert_eq!(f.core.billing.balance(&f.alice).await.unwrap().total, 5);
    assert!(f.core.stores.sending.open_tasks().await.unwrap().is_empty());
    s.send(&f.alice, g.id, t.id, &mobiles(5), &p).await.unwrap();
    assert_eq!(f.core.billing.balance(&f.alice).await.unwrap().total, 0);
}

#[tokio::test]
async fn ten_thousand_recipients_with_failures_are_exact() {
    let failing: Vec<PhoneNumber> = mobiles(10_000)
        .iter()
        .step_by(97)
        .map(|m| PhoneNumber::parse_cn_mobile(m).unwrap())
        .collect();
    let n_fail = failing.len() as i64;
    let gw = Arc::new(FailingGateway::new(failing));
    let f = fx(gw.clone(), 100_000).await;
    // 70 characters with the signature: one segment; 71: two.
    let (g, t) = approved(&f, &"字".repeat(66)).await;
    let uuid = f
        .core
        .sending
        .send(&f.alice, g, t, &mobiles(10_000), &HashMap::new())
        .await
        .unwrap();
    let (task, _) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    assert_eq!(task.text.chars().count(), 70);
    assert_eq!(task.segments, 1);
    assert_eq!(
        f.core.billing.balance(&f.alice).await.unwrap().total,
        90_000
    );
    let report = f.core.sending.work_once().await.unwrap();
    assert_eq!(report.sent as i64 + report.failed as i64, 10_000);
    assert_eq!(report.failed as i64, n_fail);
    assert_eq!(report.finished, 1);
    let (task, statuses) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    assert_eq!(task.state, TaskState::Done);
    assert!(statuses.iter().all(|s| *s != RecipientStatus::Pending));
    assert_eq!(gw.accepted().len() as i64, 10_000 - n_fail);
    let b = f.core.billing.balance(&f.alice).await.unwrap();
    assert_eq!(b.total, 90_000 + n_fail, "failures refunded");
    let entries = f
        .core
        .stores
        .ledger
        .entries(&EntryQuery::User(f.alice.clone()))
        .await
        .unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e.request.op.total_delta())
            .sum::<i64>(),
        b.total
    );
    // A second pass does nothing more.
    assert_eq!(
        f.core.sending.work_once().await.unwrap(),
        WorkReport::default()
    );
    assert_eq!(
        f.core.billing.balance(&f.alice).await.unwrap().total,
        b.total
    );
}

#[tokio::test]
async fn placeholders_and_segments_decide_the_cost() {
    let f = fx(Arc::new(RecordingGateway::new()), 100).await;
    let (g, t) = approved(&f, "验证码${code}，${minutes}分钟有效${pad}").await;
    let mut params = HashMap::new();
    params.insert("code".to_string(), "482913".to_string());
    params.insert("minutes".to_string(), "5".to_string());
    params.insert("pad".to_string(), "x".repeat(60));
    let uuid = f
        .core
        .sending
        .send(&f.alice, g, t, &mobiles(3), &params)
        .await
        .unwrap();
    let (task, _) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    assert!(task.text.starts_with("【欢聚】验证码482913，5分钟有效"));
    assert_eq!(task.segments, 2);
    assert_eq!(
        f.core.billing.balance(&f.alice).await.unwrap().total,
        100 - 6
    );
    assert!(matches!(
        f.core.sending.task(&f.bob, &uuid).await,
        Err(CoreError::InvalidParameter(_))
    ));
}

#[tokio::test]
async fn a_task_stuck_in_created_is_reconciled() {
    let f = fx(Arc::new(RecordingGateway::new()), 10).await;
    let now = f.clock.unix();
    let mk = |uuid: &str| SendTask {
        uuid: uuid.into(),
        owner: f.alice.clone(),
        sign_id: 1,
        temp_id: 2,
        text: "【x】y".into(),
        segments: 1,
        unit_price: 1,
        recipients: vec![PhoneNumber::parse_cn_mobile("13900000000").unwrap()],
        state: TaskState::Created,
        created_at: now,
        finished_at: None,
        params: Vec::new(),
    };
    // Charged before the crash, and not charged.
    f.core
        .stores
        .sending
        .create_task(mk("charged"))
        .await
        .unwrap();
    f.core
        .billing
        .apply(
            &f.alice,
            mk("charged").charge_op(),
            crate::ledger::LedgerOp::Debit { amount: 1 },
        )
        .await
        .unwrap();
    f.core
        .stores
        .sending
        .create_task(mk("uncharged"))
        .await
        .unwrap();
    f.core.sending.work_once().await.unwrap();
    assert_eq!(
        f.core
            .stores
            .sending
            .task("charged")
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Created,
        "grace period"
    );
    f.clock.advance(60);
    f.core.sending.work_once().await.unwrap();
    f.core.sending.work_once().await.unwrap();
    assert_eq!(
        f.core
            .stores
            .sending
            .task("charged")
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Done
    );
    assert_eq!(
        f.core
            .stores
            .sending
            .task("uncharged")
            .await
            .unwrap()
            .unwrap()
            .state,
        TaskState::Cancelled
    );
    assert_eq!(f.core.billing.balance(&f.alice).await.unwrap().total, 9);
}

#[tokio::test]
async fn send_params_cannot_forge_a_text_nor_bloat_the_bill() {
    let f = fx(Arc::new(RecordingGateway::new()), 1_000).await;
    let (g, code_t) = approved(&f, "验证码${code}").await;
    let s = &f.core.sending;
    let notice = s
        .create_template(
            &f.alice,
            TemplateInput {
                kind: 2,
                ..tpl(g, "您的订单${a}${b}${c}${d}${e}已发货")
            },
        )
        .await
        .unwrap();
    s.review_template(notice.id, true, "").await.unwrap();
    let alice = f.alice.clone();
    let send = |t: i64, pairs: &[(&str, String)]| {
        let params: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let alice = alice.clone();
        async move { s.send(&alice, g, t, &mobiles(1), &params).await }
    };
    let refused = [
        // The attacker's text from the issue: a second signature and a link.
        "】【中国银行】您的账户已冻结，请登录 http://evil.example 解冻".to_owned(),
        "12\u{0}34".to_owned(),
        "12\u{202E}34".to_owned(),
        "12 34".to_owned(),
        "１２３４".to_owned(),
        "a".repeat(101),
    ];
    for v in &refused {
        assert!(
            matches!(
                send(code_t, &[("code", v.clone())]).await,
                Err(CoreError::SendParams)
            ),
            "{v:?}"
        );
    }
    assert!(send(code_t, &[("code", "Ab12".into())]).await.is_ok());
    assert!(send(code_t, &[("code", "a".repeat(100))]).await.is_ok());
    // Notice templates take any text without brackets, controls or bidi.
    for v in ["【测试】", "x\ny", "\u{2066}x"] {
        assert!(
            matches!(
                send(notice.id, &[("a", v.into())]).await,
                Err(CoreError::SendParams)
            ),
            "{v:?}"
        );
    }
    assert!(send(notice.id, &[("a", "订单 A-1，明天到".into())])
        .await
        .is_ok());
    // Five values of 100 make a rendered text over 500 characters.
    let five: Vec<(&str, String)> = ["a", "b", "c", "d", "e"]
        .into_iter()
        .map(|k| (k, "字".repeat(100)))
        .collect();
    assert!(matches!(
        send(notice.id, &five).await,
        Err(CoreError::SendParams)
    ));
    assert!(send(notice.id, &five[..4]).await.is_ok());
    // Nothing refused was charged: 4 sends of one segment, one of 7.
    let total = f.core.billing.balance(&f.alice).await.unwrap().total;
    assert_eq!(total, 1_000 - 4 - 7);
}

#[tokio::test]
async fn a_number_listed_many_times_is_sent_and_billed_once() {
    let f = fx(Arc::new(RecordingGateway::new()), 100).await;
    let (g, t) = approved(&f, "验证码${code}").await;
    let mut listed = vec!["13900000000".to_owned(); 50];
    listed.push("+86 139-0000-0000".into());
    listed.push("13900000001".into());
    let mut params = HashMap::new();
    params.insert("code".to_string(), "482913".to_string());
    let uuid = f
        .core
        .sending
        .send(&f.alice, g, t, &listed, &params)
        .await
        .unwrap();
    let (task, statuses) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    assert_eq!(task.recipients.len(), 2);
    assert_eq!(statuses.len(), 2);
    assert_eq!(f.core.billing.balance(&f.alice).await.unwrap().total, 98);
}

#[tokio::test]
async fn receipts_finish_recipients_and_every_failure_is_refunded_once() {
    use crate::carrier::{CarrierError, CarrierGateway, DeliveryStatus, Receipt, RecordingCarrier};
    let carrier = Arc::new(RecordingCarrier::new("r"));
    let f = fx(Arc::new(CarrierGateway::new(carrier.clone())), 100).await;
    let (g, t) = approved(&f, "您的包裹${no}已到").await;
    let mut params = HashMap::new();
    params.insert("no".to_string(), "42".to_string());
    let uuid = f
        .core
        .sending
        .send(&f.alice, g, t, &mobiles(3), &params)
        .await
        .unwrap();
    let balance = || async { f.core.billing.balance(&f.alice).await.unwrap().total };
    assert_eq!(balance().await, 97);
    let (task, _) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    // The third recipient's carrier is down: the task stays open.
    carrier.fail_to(
        task.recipients[2].to_string(),
        CarrierError::transient("503", "down"),
    );
    let report = f.core.sending.work_once().await.unwrap();
    assert_eq!((report.sent, report.deferred, report.finished), (2, 1, 0));
    // The carrier got the template, its params and the signature.
    let offered = carrier.offered();
    assert!(offered.iter().all(|m| m.kind
        == crate::carrier::MessageKind::Task {
            template_id: Some(t),
            params: vec![("no".into(), "42".into())],
            signature: Some("欢聚".into()),
        }));
    let (_, statuses) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    let id_of = |s: &RecipientStatus| match s {
        RecipientStatus::Sent {
            gateway_id,
            carrier,
            ..
        } => {
            assert_eq!(carrier.as_deref(), Some("r"));
            gateway_id.clone()
        }
        other => panic!("{other:?}"),
    };
    let receipt = |id: String, key: Option<String>, status| Receipt {
        provider_id: id,
        idempotency_key: key,
        recipient: None,
        status,
        carrier_code: "X".into(),
    };
    // Recipient 0 fails in a receipt matched by the carrier's id, before
    // the task is done; recipient 1 is delivered, matched by its key.
    let failed0 = receipt(id_of(&statuses[0]), None, DeliveryStatus::Failed);
    let out = f.core.sending.apply_receipt("r", &failed0).await.unwrap();
    assert!(
        matches!(out, ReceiptOutcome::Applied { refunded: 1, .. }),
        "{out:?}"
    );
    let delivered1 = receipt(
        "whatever".into(),
        Some(task.idempotency_key(1)),
        DeliveryStatus::Delivered,
    );
    let out = f
        .core
        .sending
        .apply_receipt("r", &delivered1)
        .await
        .unwrap();
    assert!(
        matches!(out, ReceiptOutcome::Applied { refunded: 0, .. }),
        "{out:?}"
    );
    assert_eq!(balance().await, 98);
    // The same id from another carrier, and a code's key, match nothing.
    for (c, r) in [
        ("other", failed0.clone()),
        (
            "r",
            receipt("nope".into(), Some("0a1b2c".into()), DeliveryStatus::Failed),
        ),
    ] {
        assert_eq!(
            f.core.sending.apply_receipt(c, &r).await.unwrap(),
            ReceiptOutcome::Unknown
        );
    }
    // Recipient 2 is then refused at once: refunded when the task ends,
    // and recipient 0 (refunded by its receipt) is not refunded again.
    carrier.fail_to(
        task.recipients[2].to_string(),
        CarrierError::permanent("bad", "number"),
    );
    let report = f.core.sending.work_once().await.unwrap();
    assert_eq!((report.failed, report.finished), (1, 1));
    assert_eq!(balance().await, 99);
    let (done, statuses) = f.core.sending.task(&f.alice, &uuid).await.unwrap();
    assert_eq!(done.state, TaskState::Done);
    let names: Vec<&str> = statuses.iter().map(RecipientStatus::as_str).collect();
    assert_eq!(names, ["failed", "delivered", "failed"]);
    // Replays and late contradictions change nothing.
    for r in [
        failed0.clone(),
        receipt(reported_id(&statuses[0]), None, DeliveryStatus::Delivered),
        delivered1,
    ] {
        let out = f.core.sending.apply_receipt("r", &r).await.unwrap();
        assert!(matches!(out, ReceiptOutcome::Unchanged(_)), "{out:?}");
    }
    let r2 = receipt(
        "x".into(),
        Some(task.idempotency_key(2)),
        DeliveryStatus::Failed,
    );
    assert!(matches!(
        f.core.sending.apply_receipt("r", &r2).await.unwrap(),
        ReceiptOutcome::Unchanged(_)
    ));
    assert_eq!(balance().await, 99);
    let refunds: Vec<String> = f
        .core
        .stores
        .ledger
        .entries(&EntryQuery::User(f.alice.clone()))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.request.op_id)
        .filter(|id| id.starts_with("refund:"))
        .collect();
    assert_eq!(refunds, [task.recipient_refund_op(0), task.refund_op()]);
}

/// The gateway id of a reported status.
fn reported_id(s: &RecipientStatus) -> String {
    match s {
        RecipientStatus::Reported { gateway_id, .. } => gateway_id.clone(),
        other => panic!("{other:?}"),
    }
}
