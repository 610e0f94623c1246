//! `sendapi` (seed 002) over HTTP against the real platform: every route,
//! the error table in the decisions' check order, the audit rules, a
//! 10,000-recipient send with injected failures, and a restart mid-task.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestPlatform;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sms_core::gateway::{
    DeliveryError, FailingGateway, GatewayMessage, MessageGateway, RecordingGateway,
};
use sms_core::phone::PhoneNumber;
use sms_core::store::EntryQuery;

const PW: &str = "secret1";

async fn as_user(
    t: &TestPlatform,
    user: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.basic(method, path, Some((user, PW)), body).await
}

async fn signup(t: &TestPlatform, user: &str) {
    assert_eq!(
        t.post_form("/signup", &[("user", user), ("password", PW)])
            .await["code"],
        0
    );
}

fn err(r: &(StatusCode, Value), status: u16, code: &str) {
    assert_eq!(
        (r.0.as_u16(), r.1["error"].as_str().unwrap_or("")),
        (status, code),
        "{}",
        r.1
    );
    assert!(r.1["message"].is_string());
}

async fn create_sig(t: &TestPlatform, user: &str, text: &str) -> i64 {
    let r = as_user(
        t,
        user,
        Method::POST,
        "/v1/signature",
        Some(json!({"signature": text, "source": "公司", "pics": ["https://x/1.png"]})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    r.1["sign_id"].as_i64().unwrap()
}

async fn create_tpl(t: &TestPlatform, user: &str, sign_id: i64, content: &str) -> i64 {
    let r = as_user(
        t,
        user,
        Method::POST,
        "/v1/template",
        Some(json!({"name": "验证码", "template": content, "type": 1, "description": "登录", "sign_id": sign_id})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    r.1["temp_id"].as_i64().unwrap()
}

async fn review(
    t: &TestPlatform,
    path: &str,
    key: &str,
    id: i64,
    status: &str,
) -> (StatusCode, Value) {
    t.root(
        Method::POST,
        path,
        json!({key: id, "audit_status": status, "reject_reason": "资质不全"}),
    )
    .await
}

async fn approved(t: &TestPlatform, user: &str, content: &str) -> (i64, i64) {
    let s = create_sig(t, user, "欢聚").await;
    let tp = create_tpl(t, user, s, content).await;
    assert_eq!(
        review(t, "/v2/signreview", "sign_id", s, "passed").await.0,
        StatusCode::OK
    );
    assert_eq!(
        review(t, "/v2/tempreview", "temp_id", tp, "passed").await.0,
        StatusCode::OK
    );
    (s, tp)
}

async fn charge(t: &TestPlatform, user: &str, n: i64) {
    let r = t
        .root(
            Method::POST,
            "/v2/charge",
            json!({"user": user, "charge": n}),
        )
        .await;
    assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
}

fn mobiles(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("1390{i:07}")).collect()
}

async fn balance(t: &TestPlatform, user: &str) -> i64 {
    let u = t
        .core()
        .accounts
        .user_by_username(user)
        .await
        .unwrap()
        .unwrap();
    t.core().billing.balance(&u.id).await.unwrap().total
}

/// Polls the task until it is done (bounded).
async fn wait_done(t: &TestPlatform, user: &str, uuid: &str) -> Value {
    for _ in 0..1_200 {
        let r = as_user(
            t,
            user,
            Method::GET,
            &format!("/v1/message?uuid={uuid}"),
            None,
        )
        .await;
        assert_eq!(r.0, StatusCode::OK, "{}", r.1);
        if r.1["status"] == "done" {
            return r.1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {uuid} not done in time");
}

#[tokio::test]
async fn auth_and_json_errors() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    for (m, p) in [
        (Method::GET, "/v1/signature"),
        (Method::POST, "/v1/template"),
        (Method::POST, "/v1/message"),
        (Method::POST, "/v2/signreview"),
    ] {
        err(
            &t.basic(m.clone(), p, None, Some(json!({}))).await,
            400,
            "ER:0001",
        );
        err(
            &t.basic(m.clone(), p, Some(("alice", "wrong-pw")), Some(json!({})))
                .await,
            400,
            "ER:0001",
        );
    }
    let (s, b) = t
        .raw_with(
            Method::POST,
            "/v1/signature",
            &[
                ("authorization", basic("alice", PW)),
                ("content-type", "application/json".into()),
            ],
            b"{not json".to_vec(),
        )
        .await;
    err(&(s, serde_json::from_slice(&b).unwrap()), 400, "ER:0002");
    err(
        &as_user(
            &t,
            "alice",
            Method::POST,
            "/v2/signreview",
            Some(json!({"sign_id": 1, "audit_status": "passed"})),
        )
        .await,
        400,
        "ER:0003",
    );
    err(
        &as_user(
            &t,
            "alice",
            Method::POST,
            "/v2/tempreview",
            Some(json!({"temp_id": 1, "audit_status": "passed"})),
        )
        .await,
        400,
        "ER:0003",
    );
}

#[tokio::test]
async fn signatures_crud_and_audit_rules() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    signup(&t, "bob").await;
    let id = create_sig(&t, "alice", "欢聚").await;
    let r = as_user(&t, "alice", Method::GET, "/v1/signature", None).await;
    assert_eq!(r.1["total"], 1);
    let item = &r.1["items"][0];
    assert_eq!(item["id"], id.to_string());
    assert_eq!(item["signature"], "欢聚");
    assert_eq!(item["source"], "公司");
    assert_eq!(item["audit_status"], "pending");
    assert_eq!(item["reject_reason"], "");
    assert!(item["created_at"].is_i64() && item["updated_at"].is_i64());
    // Bob sees none of it and cannot touch it (ownership first).
    assert_eq!(
        as_user(&t, "bob", Method::GET, "/v1/signature", None)
            .await
            .1["total"],
        0
    );
    let edit = json!({"sign_id": id, "signature": "改", "source": "s"});
    err(
        &as_user(&t, "bob", Method::PUT, "/v1/signature", Some(edit.clone())).await,
        403,
        "ER:0023",
    );
    err(
        &as_user(
            &t,
            "bob",
            Method::DELETE,
            "/v1/signature",
            Some(json!({"sign_id": id})),
        )
        .await,
        403,
        "ER:0023",
    );
    // Rejected → editable → pending.
    assert_eq!(
        review(&t, "/v2/signreview", "sign_id", id, "rejected")
            .await
            .0,
        StatusCode::OK
    );
    let r = as_user(&t, "alice", Method::GET, "/v1/signature", None).await;
    assert_eq!(
        (
            r.1["items"][0]["audit_status"].clone(),
            r.1["items"][0]["reject_reason"].clone()
        ),
        (json!("rejected"), json!("资质不全"))
    );
    err(
        &review(&t, "/v2/signreview", "sign_id", id, "passed").await,
        403,
        "ER:0013",
    );
    let r = as_user(
        &t,
        "alice",
        Method::PUT,
        "/v1/signature",
        Some(edit.clone()),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, json!({"sign_id": id})));
    assert_eq!(
        as_user(&t, "alice", Method::GET, "/v1/signature", None)
            .await
            .1["items"][0]["audit_status"],
        "pending"
    );
    // The seed's ER:0013 is "签名状态错误", and the request's
    // `audit_status` is the 签名状态 it means.
    err(
        &review(&t, "/v2/signreview", "sign_id", id, "maybe").await,
        403,
        "ER:0013",
    );
    assert_eq!(
        review(&t, "/v2/signreview", "sign_id", id, "passed")
            .await
            .0,
        StatusCode::OK
    );
    // Passed: not editable.
    err(
        &as_user(&t, "alice", Method::PUT, "/v1/signature", Some(edit)).await,
        403,
        "ER:0011",
    );
    // With a template it cannot be deleted.
    let tp = create_tpl(&t, "alice", id, "hi").await;
    err(
        &as_user(
            &t,
            "alice",
            Method::DELETE,
            "/v1/signature",
            Some(json!({"sign_id": id})),
        )
        .await,
        403,
        "ER:0012",
    );
    let r = as_user(
        &t,
        "alice",
        Method::DELETE,
        "/v1/template",
        Some(json!({"sign_id": id, "temp_id": tp})),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
    let r = as_user(
        &t,
        "alice",
        Method::DELETE,
        "/v1/signature",
        Some(json!({"sign_id": id.to_string()})),
    )
    .await;
    assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
    // Parameter faults.
    err(
        &as_user(
            &t,
            "alice",
            Method::POST,
            "/v1/signature",
            Some(json!({"source": "s"})),
        )
        .await,
        400,
        "ER:0004",
    );
    err(
        &as_user(
            &t,
            "alice",
            Method::POST,
            "/v1/signature",
            Some(json!({"signature": "x", "source": "s", "pics": "p"})),
        )
        .await,
        400,
        "ER:0004",
    );
    err(
        &as_user(
            &t,
            "alice",
            Method::PUT,
            "/v1/signature",
            Some(json!({"signature": "x", "source": "s"})),
        )
        .await,
        400,
        "ER:0004",
    );
}

#[tokio::test]
async fn templates_crud_and_error_codes() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    signup(&t, "bob").await;
    let s = create_sig(&t, "alice", "欢聚").await;
    let bob_sig = create_sig(&t, "bob", "鲍勃").await;
    // Created on a pending signature.
    let tp = create_tpl(&t, "alice", s, "验证码${code}").await;
    let r = as_user(&t, "alice", Method::GET, "/v1/template", None).await;
    let item = &r.1["items"][0];
    assert_eq!(item["id"], tp.to_string());
    assert_eq!(item["sign_id"], s.to_string());
    assert_eq!(item["type"], 1);
    assert_eq!(item["template"], "验证码${code}");
    assert_eq!(item["audit_status"], "pending");
    assert!(item["created_at"].is_string() && item["updated_at"].is_string());
    for (body, code) in [
        (
            json!({"template": "x", "type": 1, "description": "d", "sign_id": s}),
            "ER:0021",
        ),
        (
            json!({"name": "", "template": "x", "type": 1, "description": "d", "sign_id": s}),
            "ER:0021",
        ),
        (
            json!({"name": "n", "template": "x".repeat(501), "type": 1, "description": "d", "sign_id": s}),
            "ER:0021",
        ),
        (
            json!({"name": "n", "template": "x", "type": 1, "sign_id": s}),
            "ER:0021",
        ),
        (
            json!({"name": "n", "template": "x", "type": 4, "description": "d", "sign_id": s}),
            "ER:0022",
        ),
        (
            json!({"name": "n", "template": "x", "type": "2", "description": "d", "sign_id": bob_sig}),
            "ER:0023",
        ),
        (
            json!({"name": "n", "template": "x", "type": 1, "description": "d"}),
            "ER:0004",
        ),
    ] {
        let r = as_user(
            &t,
            "alice",
            Method::POST,
            "/v1/template",
            Some(body.clone()),
        )
        .await;
        let status = if code == "ER:0004" { 400 } else { 403 };
        err(&r, status, code);
    }
    let edit = |temp_id: i64, sign_id: i64| json!({"name": "n2", "template": "新${code}", "type": 2, "description": "d", "sign_id": sign_id, "temp_id": temp_id});
    err(
        &as_user(
            &t,
            "bob",
            Method::PUT,
            "/v1/template",
            Some(edit(tp, bob_sig)),
        )
        .await,
        403,
        "ER:0024",
    );
    err(
        &as_user(
            &t,
            "alice",
            Method::PUT,
            "/v1/template",
            Some(edit(9_999, s)),
        )
        .await,
        403,
        "ER:0024",
    );
    err(
        &as_user(
            &t,
            "alice",
            Method::DELETE,
            "/v1/template",
            Some(json!({"sign_id": s, "temp_id": 9_999})),
        )
        .await,
        403,
        "ER:0024",
    );
    err(
        &as_user(
            &t,
            "bob",
            Method::DELETE,
            "/v1/template",
            Some(json!({"sign_id": s, "temp_id": tp})),
        )
        .await,
        403,
        "ER:0023",
    );
    assert_eq!(
        as_user(&t, "alice", Method::PUT, "/v1/template", Some(edit(tp, s))).await,
        (StatusCode::OK, json!({"temp_id": tp}))
    );
    err(
        &review(&t, "/v2/tempreview", "temp_id", tp, "nope").await,
        400,
        "ER:0004",
    );
    assert_eq!(
        review(&t, "/v2/tempreview", "temp_id", tp, "passed")
            .await
            .0,
        StatusCode::OK
    );
    err(
        &as_user(&t, "alice", Method::PUT, "/v1/template", Some(edit(tp, s))).await,
        403,
        "ER:0025",
    );
}

#[tokio::test]
async fn message_checks_in_order_then_sends() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    signup(&t, "bob").await;
    let s = create_sig(&t, "alice", "欢聚").await;
    let tp = create_tpl(&t, "alice", s, "您的验证码是${code}").await;
    let other_tp = create_tpl(&t, "alice", create_sig(&t, "alice", "别的").await, "x").await;
    let send = |sign: Value, temp: Value, mobiles: Value| json!({"sign_id": sign, "temp_id": temp, "mobiles": mobiles, "params": {"code": "482913"}});
    let bad = json!(["123"]);
    let post = |body: Value| {
        let t = &t;
        async move { as_user(t, "alice", Method::POST, "/v1/message", Some(body)).await }
    };
    err(
        &post(json!({"temp_id": tp, "mobiles": bad})).await,
        400,
        "ER:0004",
    );
    err(
        &post(send(json!(s), json!(tp), json!("13900000000"))).await,
        400,
        "ER:0004",
    );
    err(
        &as_user(
            &t,
            "bob",
            Method::POST,
            "/v1/message",
            Some(send(json!(s), json!(tp), bad.clone())),
        )
        .await,
        403,
        "ER:0023",
    );
    err(
        &post(send(json!(s), json!(other_tp), bad.clone())).await,
        403,
        "ER:0024",
    );
    err(
        &post(send(json!(s), json!(tp), bad.clone())).await,
        403,
        "ER:0031",
    );
    review(&t, "/v2/signreview", "sign_id", s, "passed").await;
    err(
        &post(send(json!(s), json!(tp), bad.clone())).await,
        403,
        "ER:0032",
    );
    review(&t, "/v2/tempreview", "temp_id", tp, "passed").await;
    err(
        &post(send(json!(s), json!(tp), bad.clone())).await,
        403,
        "ER:0033",
    );
    err(
        &post(send(json!(s), json!(tp), json!([]))).await,
        403,
        "ER:0033",
    );
    err(
        &post(send(json!(s), json!(tp), json!(["13900000000", 5]))).await,
        403,
        "ER:0033",
    );
    err(
        &post(send(json!(s), json!(tp), json!(mobiles(10_001)))).await,
        403,
        "ER:0033",
    );
    err(
        &post(send(json!(s), json!(tp), json!(["13900000000"]))).await,
        403,
        "ER:0034",
    );
    assert_eq!(
        post(send(json!(s), json!(tp), json!(["13900000000"])))
            .await
            .1["message"],
        "balance not enough"
    );
    charge(&t, "alice", 10).await;
    let r = post(send(
        json!(s),
        json!(tp),
        json!(["13900000000", "+86 139-0000-0001"]),
    ))
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let uuid = r.1["uuid"].as_str().unwrap().to_owned();
    assert_eq!(uuid.len(), 36);
    let done = wait_done(&t, "alice", &uuid).await;
    assert_eq!(done["text"], "【欢聚】您的验证码是482913");
    assert_eq!(
        (
            done["total"].clone(),
            done["sent"].clone(),
            done["failed"].clone()
        ),
        (json!(2), json!(2), json!(0))
    );
    assert_eq!(
        done["recipients"][1],
        json!({"mobile": "13900000001", "status": "sent"})
    );
    assert_eq!(balance(&t, "alice").await, 8);
    // The outbox carries each message with its idempotency key.
    let lines: Vec<Value> = t
        .outbox_lines()
        .into_iter()
        .filter(|l| l["id"].is_string())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["channel"], "sms");
    assert_eq!(lines[0]["text"], "【欢聚】您的验证码是482913");
    // Another user cannot read the task.
    err(
        &as_user(
            &t,
            "bob",
            Method::GET,
            &format!("/v1/message?uuid={uuid}"),
            None,
        )
        .await,
        400,
        "ER:0004",
    );
}

#[tokio::test]
async fn lists_page_on_request() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    for i in 0..5 {
        create_sig(&t, "alice", &format!("签名{i}")).await;
    }
    let r = as_user(
        &t,
        "alice",
        Method::GET,
        "/v1/signature?page=2&page_size=2",
        None,
    )
    .await;
    assert_eq!(
        (
            r.1["total"].clone(),
            r.1["page"].clone(),
            r.1["page_size"].clone()
        ),
        (json!(5), json!(2), json!(2))
    );
    assert_eq!(r.1["items"][0]["signature"], "签名2");
    let r = as_user(&t, "alice", Method::GET, "/v1/signature", None).await;
    assert_eq!(r.1["items"].as_array().unwrap().len(), 5);
    err(
        &as_user(&t, "alice", Method::GET, "/v1/signature?page=0", None).await,
        400,
        "ER:0004",
    );
}

#[tokio::test]
async fn ten_thousand_recipients_with_injected_failures() {
    let all = mobiles(10_000);
    let failing: Vec<PhoneNumber> = all
        .iter()
        .step_by(50)
        .map(|m| PhoneNumber::parse_cn_mobile(m).unwrap())
        .collect();
    let n_fail = failing.len() as i64;
    let gw = Arc::new(FailingGateway::new(failing));
    let t = TestPlatform::start_with_gateway(gw.clone()).await;
    signup(&t, "alice").await;
    charge(&t, "alice", 25_000).await;
    // 71 characters with the signature: two segments each.
    let (s, tp) = approved(&t, "alice", &"字".repeat(67)).await;
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/message",
        Some(json!({"sign_id": s, "temp_id": tp, "mobiles": all})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let uuid = r.1["uuid"].as_str().unwrap().to_owned();
    assert_eq!(balance(&t, "alice").await, 25_000 - 20_000);
    let done = wait_done(&t, "alice", &uuid).await;
    assert_eq!(done["segments"], 2);
    assert_eq!(done["total"], 10_000);
    assert_eq!(done["failed"].as_i64().unwrap(), n_fail);
    assert_eq!(done["sent"].as_i64().unwrap(), 10_000 - n_fail);
    assert_eq!(done["pending"], 0);
    let recipients = done["recipients"].as_array().unwrap();
    assert_eq!(recipients.len(), 10_000);
    assert_eq!(recipients[0]["status"], "failed");
    assert!(recipients[0]["reason"].is_string());
    assert_eq!(recipients[1]["status"], "sent");
    assert_eq!(gw.accepted().len() as i64, 10_000 - n_fail);
    assert_eq!(
        balance(&t, "alice").await,
        5_000 + 2 * n_fail,
        "failures refunded"
    );
    let u = t
        .core()
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap();
    let entries = t
        .core()
        .stores
        .ledger
        .entries(&EntryQuery::User(u.id.clone()))
        .await
        .unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e.request.op.total_delta())
            .sum::<i64>(),
        balance(&t, "alice").await
    );
}

/// Accepts the first `limit` messages, then never answers (a carrier that
/// hangs), so the task is caught mid-flight.
#[derive(Debug)]
struct StallingGateway {
    inner: RecordingGateway,
    limit: usize,
}

#[async_trait::async_trait]
impl MessageGateway for StallingGateway {
    async fn deliver(&self, m: &GatewayMessage) -> Result<String, DeliveryError> {
        if self.inner.offers() >= self.limit {
            std::future::pending::<()>().await;
        }
        self.inner.deliver(m).await
    }
}

#[tokio::test]
async fn restart_mid_task_finishes_without_dropping_a_recipient() {
    let first = Arc::new(StallingGateway {
        inner: RecordingGateway::new(),
        limit: 3_210,
    });
    let mut t = TestPlatform::start_with_gateway(first.clone()).await;
    signup(&t, "alice").await;
    charge(&t, "alice", 10_000).await;
    let (s, tp) = approved(&t, "alice", "hello").await;
    let all = mobiles(10_000);
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/message",
        Some(json!({"sign_id": s, "temp_id": tp, "mobiles": all})),
    )
    .await;
    let uuid = r.1["uuid"].as_str().unwrap().to_owned();
    // Wait until the carrier stalls mid-task.
    for _ in 0..600 {
        if first.inner.offers() >= 3_210 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(first.inner.offers() >= 3_210);
    let r = as_user(
        &t,
        "alice",
        Method::GET,
        &format!("/v1/message?uuid={uuid}"),
        None,
    )
    .await;
    assert_eq!(r.1["status"], "queued");
    let pending_before = r.1["pending"].as_i64().unwrap();
    assert!(
        pending_before > 0 && pending_before < 10_000,
        "{pending_before}"
    );
    let second = Arc::new(RecordingGateway::new());
    t.restart_with_gateway(Some(second.clone())).await;
    let done = wait_done(&t, "alice", &uuid).await;
    assert_eq!(
        (
            done["sent"].clone(),
            done["pending"].clone(),
            done["failed"].clone()
        ),
        (json!(10_000), json!(0), json!(0))
    );
    // Every recipient was accepted by one gateway or the other; a repeat is
    // only a message accepted before the crash whose status was not written.
    let mut keys: Vec<String> = first
        .inner
        .accepted()
        .into_iter()
        .chain(second.accepted())
        .map(|m| m.idempotency_key)
        .collect();
    let offered = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10_000, "no recipient dropped");
    let repeats = offered - keys.len();
    let recorded_before = 10_000 - pending_before as usize;
    assert!(
        repeats <= 3_210 - recorded_before,
        "repeats {repeats} beyond the unrecorded window"
    );
    assert_eq!(
        balance(&t, "alice").await,
        0,
        "charged once, nothing refunded"
    );
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}

#[tokio::test]
async fn params_that_would_forge_a_text_are_er_0021_and_a_repeated_number_is_sent_once() {
    let t = TestPlatform::start().await;
    signup(&t, "alice").await;
    charge(&t, "alice", 100).await;
    let (s, tp) = approved(&t, "alice", "验证码${code}").await;
    let send = |code: Value, mobiles: Value| json!({"sign_id": s, "temp_id": tp, "mobiles": mobiles, "params": {"code": code}});
    for bad in [
        json!("】【中国银行】您的账户已冻结，请登录 http://evil.example 解冻"),
        json!("12\u{0}34"),
        json!("12\u{202E}34"),
        json!("x".repeat(5_000)),
    ] {
        let r = as_user(
            &t,
            "alice",
            Method::POST,
            "/v1/message",
            Some(send(bad.clone(), json!(["13900000000"]))),
        )
        .await;
        err(&r, 403, "ER:0021");
    }
    assert_eq!(balance(&t, "alice").await, 100, "nothing refused is billed");
    let mut many = vec![json!("13900000000"); 50];
    many.push(json!("+86 139 0000 0000"));
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/message",
        Some(send(json!("482913"), json!(many))),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let done = wait_done(&t, "alice", r.1["uuid"].as_str().unwrap()).await;
    assert_eq!(done["total"], 1, "{done}");
    assert_eq!(balance(&t, "alice").await, 99);
}
