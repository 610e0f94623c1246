//! `telsignup` (seed 001) over HTTP against the real platform.

mod common;

use common::{wrong, TestPlatform};
use serde_json::{json, Value};

const TEL: &str = "13811112222";

async fn action(t: &TestPlatform, action: &str, body: Value) -> Value {
    t.post_json(&format!("/index.php?r=user/{action}"), body)
        .await
}

async fn request(t: &TestPlatform, tel: &str) -> Value {
    action(
        t,
        "sms-validation-request",
        json!({"type": "sms_validation_request", "tel": tel, "time": "1439280893"}),
    )
    .await
}

async fn validate(t: &TestPlatform, tel: &str, code: &str) -> Value {
    action(
        t,
        "sms-validation-code",
        json!({"type": "sms_validation_code", "tel": tel, "time": "1439280893", "code": code}),
    )
    .await
}

async fn register(
    t: &TestPlatform,
    tel: &str,
    token: &str,
    username: &str,
    password: &str,
) -> Value {
    action(
        t,
        "register",
        json!({"type": "register", "tel": tel, "token": token, "username": username, "password": password}),
    )
    .await
}

fn failure(v: &Value, ty: &str, no: i64, msg: &str) {
    assert_eq!(
        v,
        &json!({"type": ty, "success": false, "error_no": no, "error_msg": msg}),
        "{v}"
    );
}

/// Validation for `tel`; returns the registration token.
async fn validated(t: &TestPlatform, tel: &str) -> String {
    let r = request(t, tel).await;
    assert_eq!(r["success"], true, "{r}");
    let code = t.last_code(
        &sms_core::phone::PhoneNumber::parse_cn_mobile(tel)
            .unwrap()
            .to_string(),
    );
    let r = validate(t, tel, &code).await;
    assert_eq!(r["success"], true, "{r}");
    r["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn full_flow_with_exact_shapes() {
    let t = TestPlatform::start().await;
    let r = request(&t, TEL).await;
    assert_eq!(
        r,
        json!({"type": "sms_validation_send", "success": true, "error_no": 0, "error_msg": null})
    );
    let m = t.outbox_lines().pop().unwrap();
    assert_eq!(m["purpose"], "signup");
    assert_eq!(m["channel"], "sms");
    let code = t.last_code(TEL);
    let r = validate(&t, TEL, &code).await;
    assert_eq!(r["type"], "sms_validation_result");
    assert_eq!(r["success"], true);
    assert_eq!(r["error_no"], 0);
    assert_eq!(r["error_msg"], Value::Null);
    let token = r["token"].as_str().unwrap();
    assert!(token.len() >= 32);
    let r = register(&t, TEL, token, "zly", "123456a").await;
    assert_eq!(r["type"], "register");
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["error_no"], 0);
    assert_eq!(r["error_msg"], Value::Null);
    assert_eq!(r["huanxin_id"], TEL);
    assert!(!r["huanxin_password"].as_str().unwrap().is_empty());
    assert!(r["token"].as_str().unwrap().len() >= 32);
    // The account is shared: hub login with the username works.
    let l = t
        .post_form("/login", &[("user", "zly"), ("password", "123456a")])
        .await;
    assert_eq!(l["code"], 0);
}

#[tokio::test]
async fn request_errors_and_cooldown() {
    let t = TestPlatform::start().await;
    assert_eq!(request(&t, TEL).await["success"], true);
    failure(
        &request(&t, TEL).await,
        "sms_validation_send",
        4,
        "3rd party sms send failed.",
    );
    // Another spelling of the same number shares the cooldown.
    failure(
        &request(&t, "+86 138-1111-2222").await,
        "sms_validation_send",
        4,
        "3rd party sms send failed.",
    );
    failure(
        &request(&t, "1381111222").await,
        "sms_validation_send",
        2,
        "input not valid.",
    );
    // time: required, digits, string or number.
    let r = action(
        &t,
        "sms-validation-request",
        json!({"type": "sms_validation_request", "tel": "13900000000"}),
    )
    .await;
    failure(&r, "sms_validation_send", 2, "input not valid.");
    let r = action(
        &t,
        "sms-validation-request",
        json!({"type": "sms_validation_request", "tel": "13900000000", "time": "12a"}),
    )
    .await;
    failure(&r, "sms_validation_send", 2, "input not valid.");
    let r = action(
        &t,
        "sms-validation-request",
        json!({"type": "sms_validation_request", "tel": "13900000000", "time": 1439280893}),
    )
    .await;
    assert_eq!(r["success"], true, "{r}");
    // type must match the action.
    let r = action(
        &t,
        "sms-validation-request",
        json!({"type": "register", "tel": "13900000001", "time": "1"}),
    )
    .await;
    failure(&r, "sms_validation_send", 2, "input not valid.");
    // Not JSON: 1.
    let (_, r) = t
        .call(
            http::Method::POST,
            "/index.php?r=user/sms-validation-request",
            Some("application/json"),
            b"{nope".to_vec(),
        )
        .await;
    failure(&r, "sms_validation_send", 1, "json decode failed.");
}

#[tokio::test]
async fn validation_code_errors() {
    let t = TestPlatform::start().await;
    request(&t, TEL).await;
    let code = t.last_code(TEL);
    failure(
        &validate(&t, TEL, &wrong(&code)).await,
        "sms_validation_result",
        3,
        "validation code invalid.",
    );
    let r = action(
        &t,
        "sms-validation-code",
        json!({"type": "sms_validation_code", "tel": TEL, "time": "1"}),
    )
    .await;
    failure(&r, "sms_validation_result", 2, "input not valid.");
    let r = action(
        &t,
        "sms-validation-code",
        json!({"type": "sms_validation_code", "tel": TEL, "time": "1", "code": 123456}),
    )
    .await;
    failure(&r, "sms_validation_result", 2, "input not valid.");
    // Four more wrong tries void the code (5 in all).
    for _ in 0..4 {
        assert_eq!(validate(&t, TEL, &wrong(&code)).await["error_no"], 3);
    }
    failure(
        &validate(&t, TEL, &code).await,
        "sms_validation_result",
        3,
        "validation code invalid.",
    );
}

#[tokio::test]
async fn register_errors_in_order() {
    let t = TestPlatform::start().await;
    // 3: tel invalid, before anything else.
    failure(
        &register(&t, "123", "x", "", "").await,
        "register",
        3,
        "tel not found.",
    );
    // 5: never validated.
    failure(
        &register(&t, TEL, "whatever", "zly", "123456a").await,
        "register",
        5,
        "tel not verified.",
    );
    let token = validated(&t, TEL).await;
    let other = validated(&t, "13900000000").await;
    // 4: missing, unknown, or another tel's token.
    failure(
        &register(&t, TEL, "", "zly", "123456a").await,
        "register",
        4,
        "token not valid.",
    );
    failure(
        &register(&t, TEL, "deadbeef", "zly", "123456a").await,
        "register",
        4,
        "token not valid.",
    );
    failure(
        &register(&t, TEL, &other, "zly", "123456a").await,
        "register",
        4,
        "token not valid.",
    );
    // 2: username or password outside G8 (after the token check).
    failure(
        &register(&t, TEL, &token, "z", "123456a").await,
        "register",
        2,
        "input not valid.",
    );
    failure(
        &register(&t, TEL, &token, "zly", "123").await,
        "register",
        2,
        "input not valid.",
    );
    failure(
        &register(&t, TEL, &token, "zly", "has space").await,
        "register",
        2,
        "input not valid.",
    );
    // 7: username taken (by the other phone's account).
    let r = register(&t, "13900000000", &other, "zly", "123456a").await;
    assert_eq!(r["success"], true, "{r}");
    failure(
        &register(&t, TEL, &token, "ZLY", "123456a").await,
        "register",
        7,
        "tel or username already registered.",
    );
    // The token survived the failed attempts and works once.
    let r = register(&t, TEL, &token, "zly2", "123456a").await;
    assert_eq!(r["success"], true, "{r}");
    failure(
        &register(&t, TEL, &token, "zly3", "123456a").await,
        "register",
        4,
        "token not valid.",
    );
    // Spellings are normalised: validated as +86…, registered as 0086…,
    // known to account_v4 by its 11 digits.
    let token = validated(&t, "+86 137 0000 0003").await;
    let r = register(&t, "008613700000003", &token, "zly4", "123456a").await;
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["huanxin_id"], "13700000003");
    let r = t
        .get("/api/v4.0/isregister/13700000003", &[("expect", "1")])
        .await;
    assert_eq!(r["code"], 200, "{r}");
}

#[tokio::test]
async fn unknown_action_and_wrong_type() {
    let t = TestPlatform::start().await;
    let r = action(&t, "nope", json!({"type": "nope"})).await;
    assert_eq!(r["success"], false);
    assert_eq!(r["error_no"], 2);
    let (_, r) = t
        .call(
            http::Method::POST,
            "/index.php",
            Some("application/json"),
            b"{}".to_vec(),
        )
        .await;
    assert_eq!(r["error_no"], 2);
    let r = action(
        &t,
        "register",
        json!({"type": "sms_validation_code", "tel": TEL}),
    )
    .await;
    failure(&r, "register", 2, "input not valid.");
}
