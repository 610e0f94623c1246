//! `account_v4` (seed 004) over HTTP against the real platform.

mod common;

use common::{wrong, TestPlatform};
use http::Method;
use serde_json::{json, Value};

const P: &str = "13126939916";

async fn send(t: &TestPlatform, phone: &str, expect: &str) -> Value {
    t.post_form(&format!("/api/v4.0/sendsms/{phone}"), &[("expect", expect)])
        .await
}

async fn register(t: &TestPlatform, phone: &str, password: &str, device: &str) -> Value {
    let r = send(t, phone, "0").await;
    assert_eq!(r["code"], 200, "{r}");
    let code = t.last_code(phone);
    t.post_form(
        "/api/v4.0/register",
        &[
            ("phone", phone),
            ("name", "于连林"),
            ("password", password),
            ("device_identifier", device),
            ("code", &code),
        ],
    )
    .await
}

#[tokio::test]
async fn sendsms_answers_200_and_writes_outbox() {
    let t = TestPlatform::start().await;
    let r = t
        .get(&format!("/api/v4.0/sendsms/{P}"), &[("expect", "0")])
        .await;
    assert_eq!(r, json!({"code": 200, "msg": "发送成功"}));
    let lines = t.outbox_lines();
    assert_eq!(lines.len(), 1);
    let m = &lines[0];
    assert_eq!(m["channel"], "sms");
    assert_eq!(m["to"], P);
    assert_eq!(m["purpose"], "register");
    let code = m["code"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    assert!(m["text"].as_str().unwrap().contains(code));
    assert!(chrono::DateTime::parse_from_rfc3339(m["at"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn sendsms_expectation_then_cooldown_and_invalid_params() {
    let t = TestPlatform::start().await;
    // expect=1 for an unregistered phone: -1 (before any cooldown).
    let r = send(&t, P, "1").await;
    assert_eq!(r["code"], -1);
    assert!(r["msg"].is_string());
    assert_eq!(send(&t, P, "0").await["code"], 200);
    // Within the cooldown: -4.
    let r = send(&t, P, "0").await;
    assert_eq!(r["code"], -4, "{r}");
    // The same number in another spelling shares the cooldown.
    let r = send(&t, "%2B86%20131-2693-9916", "0").await;
    assert_eq!(r["code"], -4, "{r}");
    // Invalid phone / expect: -3.
    assert_eq!(send(&t, "12345", "0").await["code"], -3);
    assert_eq!(send(&t, "１3126939916", "0").await["code"], -3);
    assert_eq!(send(&t, P, "2").await["code"], -3);
    // expect defaults to 0.
    let r = t.post_form("/api/v4.0/sendsms/13900000001", &[]).await;
    assert_eq!(r["code"], 200);
    // Registered phone with expect=0: -1 before cooldown.
    register(&t, "13900000002", "123456", "d1").await;
    assert_eq!(send(&t, "13900000002", "0").await["code"], -1);
}

#[tokio::test]
async fn isregister_both_expectations() {
    let t = TestPlatform::start().await;
    let path = format!("/api/v4.0/isregister/{P}");
    let r = t.get(&path, &[("expect", "0")]).await;
    assert_eq!(r["code"], 200);
    assert_eq!(r["data"], "");
    let r = t.get(&path, &[("expect", "1")]).await;
    assert_eq!(r["code"], -1);
    assert!(r["msg"].is_string());
    let reg = register(&t, P, "123456", "dev").await;
    assert_eq!(reg["code"], 200, "{reg}");
    assert_eq!(t.get(&path, &[]).await["code"], -1);
    assert_eq!(t.get(&path, &[("expect", "1")]).await["code"], 200);
    assert_eq!(t.get("/api/v4.0/isregister/abc", &[]).await["code"], -3);
    assert_eq!(t.get(&path, &[("expect", "x")]).await["code"], -3);
}

#[tokio::test]
async fn register_success_shape_and_errors_in_order() {
    let t = TestPlatform::start().await;
    // Wrong code: -2.
    assert_eq!(send(&t, P, "0").await["code"], 200);
    let code = t.last_code(P);
    let bad = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", P),
                ("name", "n"),
                ("password", "123456"),
                ("device_identifier", "d"),
                ("code", &wrong(&code)),
            ],
        )
        .await;
    assert_eq!(bad["code"], -2, "{bad}");
    // Parameter faults: -3.
    for (phone, name, pw) in [
        ("123", "n", "123456"),
        (P, "", "123456"),
        (P, "n", "12345"),
        (P, "n", "123456789012345"),
    ] {
        let r = t
            .post_form(
                "/api/v4.0/register",
                &[
                    ("phone", phone),
                    ("name", name),
                    ("password", pw),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(r["code"], -3, "{phone} {name} {pw}: {r}");
    }
    // JSON body works too (G2).
    let r = t
        .post_json(
            "/api/v4.0/register",
            json!({"phone": P, "name": "于连林", "password": "123456", "device_identifier": "uuid", "code": code}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["msg"], "注册成功");
    let d = &r["data"];
    assert_eq!(d["change_device"], false);
    assert_eq!(d["enterprise_id"], -1);
    assert_eq!(d["name"], "于连林");
    assert!(d["token"].as_str().unwrap().len() >= 32);
    assert_eq!(d["user_id"].as_str().unwrap().len(), 32);
    assert!(d.get("pemissions").is_some());
    assert_eq!(d["apply"], json!({}));
    // The code is single use, and "already registered" (-1) comes before the code (-2).
    let again = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", P),
                ("name", "n"),
                ("password", "123456"),
                ("code", "000000"),
            ],
        )
        .await;
    assert_eq!(again["code"], -1);
    // A normalised spelling is the same account.
    let again = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", "+86 131 2693 9916"),
                ("name", "n"),
                ("password", "123456"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(again["code"], -1);
}

#[tokio::test]
async fn code_void_after_five_wrong_tries() {
    let t = TestPlatform::start().await;
    send(&t, P, "0").await;
    let code = t.last_code(P);
    for _ in 0..5 {
        let r = t
            .post_form(
                "/api/v4.0/register",
                &[
                    ("phone", P),
                    ("name", "n"),
                    ("password", "123456"),
                    ("code", &wrong(&code)),
                ],
            )
            .await;
        assert_eq!(r["code"], -2);
    }
    let r = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", P),
                ("name", "n"),
                ("password", "123456"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(
        r["code"], -2,
        "the right code is void after 5 wrong tries: {r}"
    );
}

#[tokio::test]
async fn login_device_tracking_and_errors() {
    let t = TestPlatform::start().await;
    assert_eq!(register(&t, P, "pass123", "phone-A").await["code"], 200);
    let login = |pw: &'static str, dev: &'static str| {
        let t = &t;
        async move {
            t.post_form(
                "/api/v4.0/login",
                &[("phone", P), ("password", pw), ("device_identifier", dev)],
            )
            .await
        }
    };
    let r = login("pass123", "phone-A").await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["msg"], "登录成功");
    assert_eq!(r["data"]["change_device"], false);
    assert_eq!(r["data"]["enterprise_id"], -1);
    assert_eq!(r["data"]["name"], "于连林");
    assert!(r["data"]["apply"].is_object());
    let r = login("pass123", "phone-B").await;
    assert_eq!(r["data"]["change_device"], true);
    let r = login("pass123", "phone-B").await;
    assert_eq!(r["data"]["change_device"], false);
    // GET works too.
    let r = t
        .get(
            "/api/v4.0/login",
            &[
                ("phone", "8613126939916"),
                ("password", "pass123"),
                ("device_identifier", "phone-B"),
            ],
        )
        .await;
    assert_eq!(r["code"], 200);
    // Wrong password and unknown phone: -1 alike.
    assert_eq!(login("wrong!!", "phone-B").await["code"], -1);
    let r = t
        .post_form(
            "/api/v4.0/login",
            &[("phone", "13700000000"), ("password", "pass123")],
        )
        .await;
    assert_eq!(r["code"], -1);
    assert_eq!(
        t.post_form("/api/v4.0/login", &[("phone", "x"), ("password", "p")])
            .await["code"],
        -3
    );
}

#[tokio::test]
async fn login_locks_after_five_failures() {
    let t = TestPlatform::start().await;
    register(&t, P, "pass123", "d").await;
    for _ in 0..4 {
        let r = t
            .post_form("/api/v4.0/login", &[("phone", P), ("password", "bad-pw")])
            .await;
        assert_eq!(r["code"], -1);
    }
    let r = t
        .post_form("/api/v4.0/login", &[("phone", P), ("password", "bad-pw")])
        .await;
    assert_eq!(r["code"], -1);
    // Locked now: even the right password gets -4.
    let r = t
        .post_form("/api/v4.0/login", &[("phone", P), ("password", "pass123")])
        .await;
    assert_eq!(r["code"], -4, "{r}");
}

#[tokio::test]
async fn reset_flow_needs_permit_and_revokes() {
    let t = TestPlatform::start().await;
    let reg = register(&t, P, "old-pass", "d").await;
    assert_eq!(reg["code"], 200);
    // Without a permit: -1.
    let r = t
        .post_form(
            "/api/v4.0/forget_password",
            &[("phone", P), ("password", "new-pass")],
        )
        .await;
    assert_eq!(r["code"], -1);
    // Reset code, wrong then right.
    assert_eq!(send(&t, P, "1").await["code"], 200);
    let lines = t.outbox_lines();
    assert_eq!(lines.last().unwrap()["purpose"], "reset");
    let code = t.last_code(P);
    let r = t
        .get(
            "/api/v4.0/verify_code",
            &[("phone", P), ("code", &wrong(&code))],
        )
        .await;
    assert_eq!(r["code"], -1);
    let r = t
        .get("/api/v4.0/verify_code", &[("phone", P), ("code", &code)])
        .await;
    assert_eq!(r, json!({"code": 200, "data": "", "msg": "验证码正确"}));
    // Single use of the code.
    assert_eq!(
        t.get("/api/v4.0/verify_code", &[("phone", P), ("code", &code)])
            .await["code"],
        -1
    );
    // Password rules: -3.
    let r = t
        .post_form(
            "/api/v4.0/forget_password",
            &[("phone", P), ("password", "12345")],
        )
        .await;
    assert_eq!(r["code"], -3);
    let r = t
        .get(
            "/api/v4.0/forget_password",
            &[("phone", P), ("password", "new-pass")],
        )
        .await;
    assert_eq!(r, json!({"code": 200, "data": "", "msg": "修改成功"}));
    // The permit was single use.
    let r = t
        .post_form(
            "/api/v4.0/forget_password",
            &[("phone", P), ("password", "other-pass")],
        )
        .await;
    assert_eq!(r["code"], -1);
    // Old password refused, new accepted.
    assert_eq!(
        t.post_form("/api/v4.0/login", &[("phone", P), ("password", "old-pass")])
            .await["code"],
        -1
    );
    assert_eq!(
        t.post_form("/api/v4.0/login", &[("phone", P), ("password", "new-pass")])
            .await["code"],
        200
    );
}

#[tokio::test]
async fn tokens_revoked_after_reset() {
    let t = TestPlatform::start().await;
    let reg = register(&t, P, "old-pass", "d").await;
    let first = reg["data"]["token"].as_str().unwrap().to_owned();
    let login = t
        .post_form("/api/v4.0/login", &[("phone", P), ("password", "old-pass")])
        .await;
    let second = login["data"]["token"].as_str().unwrap().to_owned();
    assert_eq!(send(&t, P, "1").await["code"], 200);
    let code = t.last_code(P);
    assert_eq!(
        t.get("/api/v4.0/verify_code", &[("phone", P), ("code", &code)])
            .await["code"],
        200
    );
    assert_eq!(
        t.post_form(
            "/api/v4.0/forget_password",
            &[("phone", P), ("password", "new-pass")]
        )
        .await["code"],
        200
    );
    let fresh = t
        .post_form("/api/v4.0/login", &[("phone", P), ("password", "new-pass")])
        .await;
    let third = fresh["data"]["token"].as_str().unwrap().to_owned();
    // Stop the server and look at what it left on disk.
    let dir = t.stop_keep_data().await;
    let store = sms_store_sled::SledStore::open(dir.path().join("data").join("db")).unwrap();
    use sms_core::store::SessionStore;
    for old in [&first, &second] {
        let h = sms_core::secret::Token::from_client(old).hash();
        assert!(
            store.session(&h).await.unwrap().is_none(),
            "token before reset still stored"
        );
    }
    let h = sms_core::secret::Token::from_client(&third).hash();
    assert!(
        store.session(&h).await.unwrap().is_some(),
        "token after reset is live"
    );
}

#[tokio::test]
async fn wrong_methods_and_unknown_routes() {
    let t = TestPlatform::start().await;
    let (s, v) = t
        .call(Method::DELETE, "/api/v4.0/login", None, vec![])
        .await;
    assert_eq!(s, 405, "{v}");
    let (s, _) = t.call(Method::GET, "/api/v4.0/nope", None, vec![]).await;
    assert_eq!(s, 404);
    let (s, _) = t
        .call(Method::GET, "/api/v4.0/sendsms/1/2", None, vec![])
        .await;
    assert_eq!(s, 404);
}
