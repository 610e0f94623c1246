//! `hub` HTTP part (seed 000) over HTTP against the real platform.

mod common;

use common::{wrong, TestPlatform};
use serde_json::{json, Value};
use sms_core::secret::Token;
use sms_core::CoreError;

async fn signup(t: &TestPlatform, user: &str, password: &str) -> Value {
    t.post_form("/signup", &[("user", user), ("password", password)])
        .await
}

async fn login(t: &TestPlatform, user: &str, password: &str) -> Value {
    t.post_form("/login", &[("user", user), ("password", password)])
        .await
}

#[tokio::test]
async fn signup_success_in_every_parameter_source() {
    let t = TestPlatform::start().await;
    let r = signup(&t, "alice", "secret1").await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["token"].as_str().unwrap();
    assert!(token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    // JSON body.
    let r = t
        .post_json("/signup", json!({"user": "bob_2", "password": "secret1"}))
        .await;
    assert_eq!(r["code"], 0);
    // Query string on a POST.
    let (_, r) = t
        .call(
            http::Method::POST,
            "/signup?user=carol&password=secret1",
            None,
            vec![],
        )
        .await;
    assert_eq!(r["code"], 0);
    // A body value wins over a query value.
    let (_, r) = t
        .call(
            http::Method::POST,
            "/signup?user=x&password=secret1",
            Some("application/x-www-form-urlencoded"),
            b"user=dave".to_vec(),
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    assert_eq!(login(&t, "dave", "secret1").await["code"], 0);
}

#[tokio::test]
async fn signup_error_codes() {
    let t = TestPlatform::start().await;
    let cases: &[(&str, &str, i64)] = &[
        ("ab", "secret1", -1),
        (&"a".repeat(21), "secret1", -1),
        ("", "secret1", -2),
        ("ab c", "secret1", -3),
        ("名字名字", "secret1", -3),
        ("bad-name", "secret1", -3),
        ("erin", "12345", -4),
        ("erin", &"p".repeat(33), -4),
        ("erin", "", -5),
        ("erin", "abc def", -6),
        ("erin", "pässword", -6),
    ];
    for (user, pw, code) in cases {
        let r = signup(&t, user, pw).await;
        assert_eq!(r["code"], *code, "{user:?} {pw:?}: {r}");
        assert!(r.get("token").is_none(), "no token on failure: {r}");
    }
    assert_eq!(signup(&t, "erin", "p".repeat(32).as_str()).await["code"], 0);
    // Extension -7: taken, case-insensitively; root is reserved.
    assert_eq!(signup(&t, "ERIN", "secret1").await["code"], -7);
    assert_eq!(signup(&t, "root", "secret1").await["code"], -7);
}

#[tokio::test]
async fn login_codes_and_lockout() {
    let t = TestPlatform::start().await;
    assert_eq!(signup(&t, "frank", "secret1").await["code"], 0);
    let r = login(&t, "frank", "secret1").await;
    assert_eq!(r["code"], 0);
    assert!(r["token"].is_string());
    assert_eq!(login(&t, "nobody", "secret1").await["code"], -1);
    assert_eq!(login(&t, "", "secret1").await["code"], -2);
    assert_eq!(login(&t, "frank", "").await["code"], -3);
    for _ in 0..5 {
        assert_eq!(login(&t, "frank", "wrong-pw").await["code"], -4);
    }
    // Extension -5: locked, even with the right password.
    assert_eq!(login(&t, "frank", "secret1").await["code"], -5);
    // Root logs in with the configured password.
    assert_eq!(login(&t, "root", common::ROOT_PASSWORD).await["code"], 0);
}

#[tokio::test]
async fn login_of_banned_user_is_minus_6() {
    let t = TestPlatform::start().await;
    assert_eq!(signup(&t, "gina", "secret1").await["code"], 0);
    t.core().accounts.set_banned("gina", true).await.unwrap();
    assert_eq!(login(&t, "gina", "secret1").await["code"], -6);
}

/// Binds an email to a user the way `hub`'s WebSocket does (through the
/// core's email binding, code from the outbox).
async fn bind_email(t: &TestPlatform, user: &str, email: &str) {
    let core = t.core();
    let u = core.accounts.user_by_username(user).await.unwrap().unwrap();
    core.accounts
        .bind_email_send(&u, email, None)
        .await
        .unwrap();
    let code = t.last_code(email);
    core.accounts
        .bind_email_check(&u, email, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn forgot_vcode_codes_and_cooldown() {
    let t = TestPlatform::start().await;
    assert_eq!(signup(&t, "hank", "secret1").await["code"], 0);
    assert_eq!(signup(&t, "ivy", "secret1").await["code"], 0);
    bind_email(&t, "hank", "hank@example.com").await;
    bind_email(&t, "ivy", "ivy@example.com").await;
    let v = |u: &'static str, e: &'static str| {
        let t = &t;
        async move {
            t.post_form("/forgot/vcode", &[("user", u), ("email", e)])
                .await
        }
    };
    assert_eq!(v("", "hank@example.com").await["code"], -2);
    assert_eq!(v("hank", "").await["code"], -4);
    assert_eq!(v("nobody", "hank@example.com").await["code"], -1);
    assert_eq!(v("hank", "nobody@example.com").await["code"], -3);
    assert_eq!(v("hank", "ivy@example.com").await["code"], -5);
    let before = wall_clock_secs();
    let r = v("hank", "hank@example.com").await;
    assert_eq!(r["code"], 0, "{r}");
    let again = r["againTimestamp"].as_i64().unwrap();
    assert!(
        again >= before + 59 && again <= wall_clock_secs() + 61,
        "{again}"
    );
    let m = t.outbox_lines().pop().unwrap();
    assert_eq!(m["channel"], "email");
    assert_eq!(m["to"], "hank@example.com");
    assert_eq!(m["purpose"], "reset");
    // Extension -6 within the cooldown, with when to come back; case of the email does not matter.
    let r = t
        .post_form(
            "/forgot/vcode",
            &[("user", "hank"), ("email", "HANK@example.com")],
        )
        .await;
    assert_eq!(r["code"], -6);
    assert_eq!(r["againTimestamp"].as_i64().unwrap(), again);
}

#[tokio::test]
async fn forgot_verify_codes_and_revocation() {
    let t = TestPlatform::start().await;
    let first = signup(&t, "jack", "secret1").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(signup(&t, "kate", "secret1").await["code"], 0);
    bind_email(&t, "jack", "jack@example.com").await;
    bind_email(&t, "kate", "kate@example.com").await;
    let r = t
        .post_form(
            "/forgot/vcode",
            &[("user", "jack"), ("email", "jack@example.com")],
        )
        .await;
    assert_eq!(r["code"], 0);
    let code = t.last_code("jack@example.com");
    let f = |u: &'static str, e: &'static str, c: String| {
        let t = &t;
        async move {
            t.post_form(
                "/forgot/verify",
                &[("user", u), ("email", e), ("verify", &c)],
            )
            .await
        }
    };
    assert_eq!(f("", "jack@example.com", code.clone()).await["code"], -2);
    assert_eq!(f("jack", "", code.clone()).await["code"], -4);
    assert_eq!(
        f("nobody", "jack@example.com", code.clone()).await["code"],
        -1
    );
    assert_eq!(f("jack", "no@example.com", code.clone()).await["code"], -3);
    assert_eq!(
        f("jack", "kate@example.com", code.clone()).await["code"],
        -5
    );
    assert_eq!(
        f("jack", "jack@example.com", wrong(&code)).await["code"],
        -6
    );
    let r = f("jack", "jack@example.com", code.clone()).await;
    assert_eq!(r["code"], 0, "{r}");
    let new_token = r["token"].as_str().unwrap();
    // Single use.
    assert_eq!(
        f("jack", "jack@example.com", code.clone()).await["code"],
        -6
    );
    // Earlier sessions are revoked; the new one works.
    let accounts = &t.core().accounts;
    assert!(matches!(
        accounts.authenticate(&Token::from_client(&first)).await,
        Err(CoreError::TokenInvalid)
    ));
    assert!(accounts
        .authenticate(&Token::from_client(new_token))
        .await
        .is_ok());
}

#[tokio::test]
async fn recovery_code_void_after_five_wrong_tries() {
    let t = TestPlatform::start().await;
    assert_eq!(signup(&t, "liam", "secret1").await["code"], 0);
    bind_email(&t, "liam", "liam@example.com").await;
    t.post_form(
        "/forgot/vcode",
        &[("user", "liam"), ("email", "liam@example.com")],
    )
    .await;
    let code = t.last_code("liam@example.com");
    for _ in 0..5 {
        let r = t
            .post_form(
                "/forgot/verify",
                &[
                    ("user", "liam"),
                    ("email", "liam@example.com"),
                    ("verify", &wrong(&code)),
                ],
            )
            .await;
        assert_eq!(r["code"], -6);
    }
    let r = t
        .post_form(
            "/forgot/verify",
            &[
                ("user", "liam"),
                ("email", "liam@example.com"),
                ("verify", &code),
            ],
        )
        .await;
    assert_eq!(r["code"], -6, "void after 5 wrong tries");
}

#[tokio::test]
async fn accounts_survive_a_restart() {
    let mut t = TestPlatform::start().await;
    let token = signup(&t, "mona", "secret1").await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    t.restart().await;
    assert_eq!(login(&t, "mona", "secret1").await["code"], 0);
    assert_eq!(signup(&t, "mona", "secret1").await["code"], -7);
    assert!(t
        .core()
        .accounts
        .authenticate(&Token::from_client(&token))
        .await
        .is_ok());
}

/// Unix seconds now: the server under test runs on the system clock.
#[allow(clippy::disallowed_methods, reason = "the real server's clock")]
fn wall_clock_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
