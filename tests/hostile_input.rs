//! Hostile input to the HTTP dialects (`hub`, `telsignup`, `account_v4`)
//! against the real platform: bodies that are not JSON, JSON that is not an
//! object, invalid UTF-8, wrong JSON types, missing fields, huge strings,
//! control characters and odd Unicode, unknown routes and wrong methods, a
//! concurrent burst, and raw-TCP abuse. Every case gets its dialect's
//! documented error (decisions G2, G4, G5, G8 and the dialect sections) —
//! never a 5xx, a panic or a dropped connection — and the server keeps
//! serving afterwards.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{form, TestPlatform};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const JSON_CT: Option<&str> = Some("application/json");
const FORM_CT: Option<&str> = Some("application/x-www-form-urlencoded");
/// Every content type a hostile body is tried with.
const CONTENT_TYPES: [Option<&str>; 4] =
    [JSON_CT, FORM_CT, None, Some("text/plain; charset=utf-8")];
/// The body limit of decision G4.
const LIMIT: usize = 1024 * 1024;
/// A "huge" string: well under the body limit, far over every field rule.
const HUGE: usize = 500 * 1024;
const TEL: &str = "13811112222";
const HUB: [&str; 4] = ["/signup", "/login", "/forgot/vcode", "/forgot/verify"];
/// The `account_v4` endpoints whose phone comes from the parameters.
const V4_PARAM_ROUTES: [&str; 4] = [
    "/api/v4.0/register",
    "/api/v4.0/login",
    "/api/v4.0/verify_code",
    "/api/v4.0/forget_password",
];

// ----- helpers ---------------------------------------------------------------

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A username nobody has used yet (3–20 ASCII letters, digits, `_`).
fn fresh(prefix: &str) -> String {
    format!("{prefix}_{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// POST whose answer must be HTTP 200 with a JSON body (the harness already
/// refuses non-JSON answers and 5xx).
async fn post(t: &TestPlatform, path: &str, ct: Option<&str>, body: impl Into<Vec<u8>>) -> Value {
    let (s, v) = t.call(Method::POST, path, ct, body.into()).await;
    assert_eq!(s, StatusCode::OK, "POST {path}: {v}");
    v
}

/// The integer `code` of a `hub` or `account_v4` answer.
fn code_of(v: &Value) -> i64 {
    v["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("`code` is not an integer: {v}"))
}

/// POST a JSON value; the answer's `code`.
async fn code_json(t: &TestPlatform, path: &str, body: &Value) -> i64 {
    code_of(&post(t, path, JSON_CT, body.to_string()).await)
}

/// POST raw bytes with a content type; the answer's `code`.
async fn code_raw(t: &TestPlatform, path: &str, ct: Option<&str>, body: &[u8]) -> i64 {
    code_of(&post(t, path, ct, body.to_vec()).await)
}

async fn signup(t: &TestPlatform, user: &str, password: &str) -> i64 {
    code_json(t, "/signup", &json!({"user": user, "password": password})).await
}

/// The server still serves: a fresh `hub` sign-up succeeds.
async fn assert_alive(t: &TestPlatform) {
    let user = fresh("alive");
    let v = post(
        t,
        "/signup",
        JSON_CT,
        json!({"user": user, "password": "secret-123"}).to_string(),
    )
    .await;
    assert_eq!(v["code"], 0, "a normal sign-up no longer succeeds: {v}");
    assert!(v["token"].as_str().is_some_and(|s| !s.is_empty()), "{v}");
}

/// A `telsignup` action.
#[derive(Clone, Copy)]
struct Act {
    route: &'static str,
    req_type: &'static str,
    resp_type: &'static str,
}

const ACTS: [Act; 3] = [
    Act {
        route: "sms-validation-request",
        req_type: "sms_validation_request",
        resp_type: "sms_validation_send",
    },
    Act {
        route: "sms-validation-code",
        req_type: "sms_validation_code",
        resp_type: "sms_validation_result",
    },
    Act {
        route: "register",
        req_type: "register",
        resp_type: "register",
    },
];
const REGISTER: Act = ACTS[2];

fn tel_path(route: &str) -> String {
    format!("/index.php?r=user/{route}")
}

/// The seed's `error_msg` for `no` in responses of type `resp_type`.
fn tel_msg(resp_type: &str, no: i64) -> &'static str {
    match (resp_type, no) {
        (_, 1) => "json decode failed.",
        (_, 2) => "input not valid.",
        ("register", 3) => "tel not found.",
        ("register", 4) => "token not valid.",
        ("register", 5) => "tel not verified.",
        ("sms_validation_result", 3) => "validation code invalid.",
        other => panic!("no message for {other:?}"),
    }
}

/// The exact failure body of the seed.
fn tel_failure(resp_type: &str, no: i64) -> Value {
    json!({"type": resp_type, "success": false, "error_no": no, "error_msg": tel_msg(resp_type, no)})
}

async fn tel_raw(t: &TestPlatform, act: Act, ct: Option<&str>, body: &[u8]) -> Value {
    post(t, &tel_path(act.route), ct, body.to_vec()).await
}

async fn tel_json(t: &TestPlatform, act: Act, body: &Value) -> Value {
    tel_raw(t, act, JSON_CT, body.to_string().as_bytes()).await
}

/// A well-formed request body for the action (register: for a tel that has
/// no validation, so it answers 5).
fn tel_base(act: Act) -> Value {
    match act.route {
        "sms-validation-request" => {
            json!({"type": act.req_type, "tel": TEL, "time": "1439280893"})
        }
        "sms-validation-code" => {
            json!({"type": act.req_type, "tel": TEL, "time": "1439280893", "code": "123456"})
        }
        _ => json!({"type": act.req_type, "tel": TEL, "token": "0123456789abcdef",
                    "username": "zly", "password": "123456a"}),
    }
}

fn with(base: &Value, field: &str, value: Value) -> Value {
    let mut v = base.clone();
    v[field] = value;
    v
}

fn without(base: &Value, field: &str) -> Value {
    let mut v = base.clone();
    v.as_object_mut().unwrap().remove(field);
    v
}

/// JSON values of every wrong type for a string field.
fn wrong_types() -> Vec<Value> {
    vec![
        json!(1),
        json!(1.5),
        json!(-7),
        json!(true),
        json!(false),
        Value::Null,
        json!([]),
        json!({}),
        json!(["13811112222"]),
        json!({"a": "13811112222"}),
    ]
}

/// Arrays and objects: values no text field can take (scalars read as
/// their JSON spelling, null as absent).
fn structured_types() -> Vec<Value> {
    vec![
        json!([]),
        json!({}),
        json!(["x"]),
        json!({"a": "b"}),
        json!([[[]]]),
    ]
}

/// 100,000 nested arrays: must not overflow a stack (serde_json refuses
/// nesting beyond 128).
fn deep_nesting() -> Vec<u8> {
    "[".repeat(100_000).into_bytes()
}

/// Bodies that are not a usable JSON object, labelled.
fn garbage_bodies() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("text", b"not json at all".to_vec()),
        (
            "truncated object",
            br#"{"user":"alice","password":"#.to_vec(),
        ),
        ("lone brace", b"{".to_vec()),
        ("xml", b"<user>alice</user>".to_vec()),
        (
            "object with trailing garbage",
            br#"{"user":"alice","password":"secret12"} trailing"#.to_vec(),
        ),
        ("array", br#"["alice","secret12"]"#.to_vec()),
        (
            "array of object",
            br#"[{"user":"alice","password":"secret12"}]"#.to_vec(),
        ),
        ("string", br#""alice""#.to_vec()),
        ("number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("true", b"true".to_vec()),
        ("invalid utf-8", vec![0xff, 0xfe, 0xfd, b'{', 0x80, 0xc3]),
        (
            "invalid utf-8 inside a JSON string",
            b"{\"user\":\"\xff\xfe\xfd\",\"password\":\"secret12\"}".to_vec(),
        ),
        (
            "lone surrogate escape",
            br#"{"user":"\ud800abc","password":"secret12"}"#.to_vec(),
        ),
        (
            "number out of range",
            br#"{"user":1e400,"password":"secret12"}"#.to_vec(),
        ),
        ("NUL bytes", vec![0u8; 64]),
        ("deep nesting", deep_nesting()),
        (
            "deep nesting in a field",
            [br#"{"user":"#.as_slice(), &deep_nesting()].concat(),
        ),
        ("empty", Vec::new()),
        ("whitespace", b"  \r\n\t ".to_vec()),
    ]
}

// ----- raw TCP -----------------------------------------------------------------

/// What came back on a raw connection.
#[derive(Debug)]
struct RawReply {
    bytes: Vec<u8>,
    /// The server closed (or reset) the connection within the wait.
    closed: bool,
}

impl RawReply {
    /// The status of the first response, if one came.
    fn status(&self) -> Option<u16> {
        let head = std::str::from_utf8(self.bytes.get(..12)?).ok()?;
        let rest = head
            .strip_prefix("HTTP/1.1 ")
            .or_else(|| head.strip_prefix("HTTP/1.0 "))?;
        rest.get(..3)?.parse().ok()
    }

    /// Every status line in the bytes (pipelined answers).
    fn statuses(&self) -> Vec<u16> {
        let text = String::from_utf8_lossy(&self.bytes);
        text.match_indices("HTTP/1.1 ")
            .filter_map(|(i, m)| text.get(i + m.len()..i + m.len() + 3)?.parse().ok())
            .collect()
    }

    /// The body of the first response, as JSON.
    fn json(&self) -> Option<Value> {
        let at = self.bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        serde_json::from_slice(&self.bytes[at + 4..]).ok()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes[..self.bytes.len().min(300)]).into_owned()
    }
}

/// Reads until the server closes or `wait` passes.
async fn read_reply(s: &mut TcpStream, wait: Duration) -> RawReply {
    let deadline = Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return RawReply {
                    bytes,
                    closed: false,
                }
            }
            Ok(Ok(0) | Err(_)) => {
                return RawReply {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
        }
    }
}

/// Writes `data` on a fresh connection (optionally half-closing), then
/// reads what comes back within `wait`.
async fn exchange(addr: SocketAddr, data: &[u8], half_close: bool, wait: Duration) -> RawReply {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything: a failed
    // write is not a failure by itself.
    let _ = s.write_all(data).await;
    if half_close {
        let _ = s.shutdown().await;
    }
    read_reply(&mut s, wait).await
}

/// Writes `data` on a fresh connection and drops it at once.
async fn hit_and_run(addr: SocketAddr, data: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let _ = s.write_all(data).await;
    drop(s);
}

/// A complete HTTP/1.1 request that closes after the answer.
fn http_request(method: &str, path: &str, ct: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

const WAIT: Duration = Duration::from_secs(5);

// ----- bodies that are not JSON objects ----------------------------------------

#[tokio::test]
async fn hub_ignores_unusable_bodies_and_reports_missing_user() {
    let t = TestPlatform::start().await;
    for (label, body) in garbage_bodies() {
        for ct in CONTENT_TYPES {
            for path in HUB {
                // Nothing usable arrives, so the user is empty: -2 on every
                // endpoint (signup, login, and both recovery steps).
                let c = code_raw(&t, path, ct, &body).await;
                assert_eq!(c, -2, "{path} {label} ({ct:?})");
            }
        }
    }
    // A form body under a JSON content type is read as JSON: nothing usable.
    let c = code_raw(&t, "/signup", JSON_CT, b"user=alice&password=secret12").await;
    assert_eq!(c, -2);
    // Invalid UTF-8 in a form body decodes lossily and breaks the charset.
    let c = code_raw(
        &t,
        "/signup",
        FORM_CT,
        b"user=\xff\xfe\xfd&password=secret12",
    )
    .await;
    assert_eq!(c, -3);
    let c = code_raw(
        &t,
        "/signup",
        FORM_CT,
        b"user=good_name&password=\xff\xfesecret",
    )
    .await;
    assert_eq!(c, -6);
    // The same through the query string, percent-encoded.
    let c = code_raw(&t, "/signup?user=%FF%FE%FD&password=secret12", None, b"").await;
    assert_eq!(c, -3);
    let c = code_raw(&t, "/login?user=%FF%FE%FD&password=secret12", None, b"").await;
    assert_eq!(c, -1);
    assert_alive(&t).await;
}

#[tokio::test]
async fn telsignup_answers_json_decode_failed_with_its_type() {
    let t = TestPlatform::start().await;
    for (label, body) in garbage_bodies() {
        for ct in CONTENT_TYPES {
            for act in ACTS {
                let v = tel_raw(&t, act, ct, &body).await;
                assert_eq!(
                    v,
                    tel_failure(act.resp_type, 1),
                    "{} {label} ({ct:?})",
                    act.route
                );
            }
        }
    }
    // A form body, even a complete one, is not JSON.
    let v = tel_raw(
        &t,
        ACTS[0],
        FORM_CT,
        form(&[
            ("type", "sms_validation_request"),
            ("tel", TEL),
            ("time", "1"),
        ])
        .as_bytes(),
    )
    .await;
    assert_eq!(v, tel_failure("sms_validation_send", 1));
    // Nothing was sent.
    assert!(t.outbox_lines().is_empty());
    assert_alive(&t).await;
}

#[tokio::test]
async fn account_v4_ignores_unusable_bodies() {
    let t = TestPlatform::start().await;
    for (label, body) in garbage_bodies() {
        for ct in CONTENT_TYPES {
            for path in V4_PARAM_ROUTES {
                // No phone arrives: -3 invalid parameter.
                assert_eq!(
                    code_raw(&t, path, ct, &body).await,
                    -3,
                    "{path} {label} ({ct:?})"
                );
            }
            // Phone in the path but invalid: -3 whatever the body.
            let c = code_raw(&t, "/api/v4.0/sendsms/not-a-phone", ct, &body).await;
            assert_eq!(c, -3, "sendsms {label} ({ct:?})");
        }
        // A valid phone in the path and `expect` in the query: the garbage
        // body adds nothing, the request is answered on its merits (an
        // unregistered phone with expect=1 is -1). One probe per body, well
        // under the 30-a-minute probe limit.
        let c = code_raw(
            &t,
            &format!("/api/v4.0/isregister/{TEL}?expect=1"),
            JSON_CT,
            &body,
        )
        .await;
        assert_eq!(c, -1, "isregister {label}");
    }
    for (label, body) in garbage_bodies().into_iter().take(5) {
        let c = code_raw(
            &t,
            &format!("/api/v4.0/sendsms/{TEL}?expect=1"),
            FORM_CT,
            &body,
        )
        .await;
        assert_eq!(c, -1, "sendsms {label}");
    }
    // Invalid UTF-8 through the query string or the path.
    let c = code_raw(
        &t,
        "/api/v4.0/login?phone=%FF%FE&password=123456",
        None,
        b"",
    )
    .await;
    assert_eq!(c, -3);
    let c = code_raw(&t, "/api/v4.0/sendsms/%FF%FE%FD", None, b"").await;
    assert_eq!(c, -3);
    let c = code_raw(&t, "/api/v4.0/isregister/%00%00", None, b"").await;
    assert_eq!(c, -3);
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

// ----- wrong JSON types ----------------------------------------------------------

#[tokio::test]
async fn hub_wrong_json_types_get_validation_codes() {
    let t = TestPlatform::start().await;
    // signup, `user` of a type that cannot be a name: a username error
    // (length / empty / charset), never success.
    for bad in structured_types() {
        let c = code_json(&t, "/signup", &json!({"user": bad, "password": "secret12"})).await;
        assert!((-3..=-1).contains(&c), "signup user={bad}: {c}");
    }
    // `password` likewise: a password error (length / empty / charset).
    for bad in structured_types() {
        let body = json!({"user": fresh("pw"), "password": bad});
        let c = code_json(&t, "/signup", &body).await;
        assert!((-6..=-4).contains(&c), "signup password={bad}: {c}");
    }
    // null reads as absent.
    let c = code_json(
        &t,
        "/signup",
        &json!({"user": null, "password": "secret12"}),
    )
    .await;
    assert_eq!(c, -2);
    let c = code_json(
        &t,
        "/signup",
        &json!({"user": fresh("n"), "password": null}),
    )
    .await;
    assert_eq!(c, -5);
    // Scalars read in their JSON spelling, as a form would send them, and
    // then face the ordinary rules.
    for (user, expected) in [
        (json!(12), -1),
        (json!(-5), -1),
        (json!(1.5), -3),
        (json!(-12345), -3),
        (json!(1e10), -3),
    ] {
        let c = code_json(
            &t,
            "/signup",
            &json!({"user": user, "password": "secret12"}),
        )
        .await;
        assert_eq!(c, expected, "signup user={user}");
    }
    for (pw, expected) in [(json!(12), -4), (json!(true), -4), (json!(false), -4)] {
        let c = code_json(&t, "/signup", &json!({"user": fresh("s"), "password": pw})).await;
        assert_eq!(c, expected, "signup password={pw}");
    }

    // login: a victim, and never more than 4 failures per account (the 5th
    // would lock it, decision G8).
    let victims = [fresh("victim"), fresh("victim")];
    for v in &victims {
        assert_eq!(signup(&t, v, "secret12").await, 0);
    }
    for bad in structured_types() {
        // A non-string names nobody.
        let c = code_json(&t, "/login", &json!({"user": bad, "password": "secret12"})).await;
        assert_eq!(c, -1, "login user={bad}");
    }
    for (i, bad) in structured_types().into_iter().take(4).enumerate() {
        let user = &victims[i / 2];
        let c = code_json(&t, "/login", &json!({"user": user, "password": bad})).await;
        assert_eq!(c, -4, "login password={bad}");
    }
    assert_eq!(
        code_json(&t, "/login", &json!({"user": null, "password": "x"})).await,
        -2
    );
    assert_eq!(
        code_json(
            &t,
            "/login",
            &json!({"user": &victims[0], "password": null})
        )
        .await,
        -3
    );
    // The victims still log in.
    for v in &victims {
        assert_eq!(
            code_json(&t, "/login", &json!({"user": v, "password": "secret12"})).await,
            0
        );
    }

    assert_alive(&t).await;
}

/// Recovery with fields of the wrong JSON type. Each answer that tells
/// whether a user or email exists counts against the client's probe budget
/// (30 a minute, issue 10), so each part runs on its own platform.
#[tokio::test]
async fn hub_recovery_wrong_json_types_get_validation_codes() {
    // Recovery: user (-1 unknown / -2 empty), then email (-3 / -4).
    for path in ["/forgot/vcode", "/forgot/verify"] {
        let t = TestPlatform::start().await;
        let victims = [fresh("victim")];
        assert_eq!(signup(&t, &victims[0], "secret12").await, 0);
        for bad in structured_types() {
            let body = json!({"user": bad, "email": "v@example.com", "verify": "123456"});
            assert_eq!(code_json(&t, path, &body).await, -1, "{path} user={bad}");
            let body = json!({"user": &victims[0], "email": bad, "verify": "123456"});
            assert_eq!(code_json(&t, path, &body).await, -3, "{path} email={bad}");
        }
        let body = json!({"user": null, "email": "v@example.com"});
        assert_eq!(code_json(&t, path, &body).await, -2, "{path}");
        let body = json!({"user": &victims[0], "email": null});
        assert_eq!(code_json(&t, path, &body).await, -4, "{path}");
        let body = json!({"user": &victims[0], "email": 12});
        assert_eq!(code_json(&t, path, &body).await, -3, "{path}");
    }
    let t = TestPlatform::start().await;
    let victims = [fresh("victim")];
    assert_eq!(signup(&t, &victims[0], "secret12").await, 0);
    for bad in wrong_types() {
        // No email is bound to the victim, so that answer comes first.
        let body = json!({"user": &victims[0], "email": "v@example.com", "verify": bad});
        assert_eq!(
            code_json(&t, "/forgot/verify", &body).await,
            -3,
            "verify={bad}"
        );
    }
    assert_alive(&t).await;
}

#[tokio::test]
async fn telsignup_wrong_json_types_are_input_not_valid() {
    let t = TestPlatform::start().await;
    for act in ACTS {
        let base = tel_base(act);
        let mut fields: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        if act.route == "register" {
            // `time` is optional for register, but must be digits if present.
            fields.push("time".into());
        }
        for field in &fields {
            for bad in wrong_types() {
                // `time` may be a non-negative integer.
                if field == "time" && bad.is_u64() {
                    continue;
                }
                let expected = match (act.route, field.as_str()) {
                    // A null tel reads as missing: "tel not found." (3).
                    ("register", "tel") if bad.is_null() => 3,
                    // A null token reads as missing; this tel has no
                    // validation, which is checked first (5).
                    ("register", "token") if bad.is_null() => 5,
                    _ => 2,
                };
                let v = tel_json(&t, act, &with(&base, field, bad.clone())).await;
                assert_eq!(
                    v,
                    tel_failure(act.resp_type, expected),
                    "{} {field}={bad}",
                    act.route
                );
            }
        }
    }
    // `time`: digits only, as a string or a non-negative integer.
    for act in &ACTS[..2] {
        let base = tel_base(*act);
        for bad in [
            json!(""),
            json!("12a"),
            json!(" 123"),
            json!("-1"),
            json!("1.5"),
            json!("１２３"),
            json!("123\u{0}"),
            json!("1".repeat(21)),
            json!(1e30),
            json!(-1),
            json!(18_446_744_073_709_551_616.0),
        ] {
            let v = tel_json(&t, *act, &with(&base, "time", bad.clone())).await;
            assert_eq!(v, tel_failure(act.resp_type, 2), "{} time={bad}", act.route);
        }
    }
    let v = tel_json(
        &t,
        REGISTER,
        &with(&tel_base(REGISTER), "time", json!("soon")),
    )
    .await;
    assert_eq!(v, tel_failure("register", 2));
    // `code` of the right type but never issued: "validation code invalid."
    let v = tel_json(
        &t,
        ACTS[1],
        &with(&tel_base(ACTS[1]), "code", json!("000000")),
    )
    .await;
    assert_eq!(v, tel_failure("sms_validation_result", 3));
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

#[tokio::test]
async fn account_v4_wrong_json_types_are_invalid_parameter() {
    let t = TestPlatform::start().await;
    // register: a well-formed request with a code never issued answers -2;
    // each faulty field must answer -3 before that.
    // Failed code checks count per phone (20 a day, G7), so each round
    // uses its own phone.
    let reg0 = json!({"phone": TEL, "name": "于连林", "password": "123456",
                     "device_identifier": "d", "code": "000000"});
    assert_eq!(code_json(&t, "/api/v4.0/register", &reg0).await, -2);
    for (i, bad) in wrong_types().into_iter().enumerate() {
        let reg = with(&reg0, "phone", json!(format!("1390000{i:04}")));
        let c = code_json(&t, "/api/v4.0/register", &with(&reg, "phone", bad.clone())).await;
        assert_eq!(c, -3, "register phone={bad}");
        let c = code_json(
            &t,
            "/api/v4.0/register",
            &with(&reg, "password", bad.clone()),
        )
        .await;
        assert_eq!(c, -3, "register password={bad}");
        // A scalar name reads as text (a valid name); null, arrays and
        // objects are no name.
        let expected = if bad.is_null() || bad.is_array() || bad.is_object() {
            -3
        } else {
            -2
        };
        let c = code_json(&t, "/api/v4.0/register", &with(&reg, "name", bad.clone())).await;
        assert_eq!(c, expected, "register name={bad}");
        // A faulty device or code is no device / a wrong code.
        let c = code_json(
            &t,
            "/api/v4.0/register",
            &with(&reg, "device_identifier", bad.clone()),
        )
        .await;
        assert_eq!(c, -2, "register device_identifier={bad}");
        let c = code_json(&t, "/api/v4.0/register", &with(&reg, "code", bad.clone())).await;
        assert_eq!(c, -2, "register code={bad}");
    }
    // login: phone -3; a faulty password is the seed's -1 (login does not
    // judge password rules, it only compares).
    let login = json!({"phone": TEL, "password": "123456", "device_identifier": "d"});
    for bad in wrong_types() {
        let c = code_json(&t, "/api/v4.0/login", &with(&login, "phone", bad.clone())).await;
        assert_eq!(c, -3, "login phone={bad}");
        let c = code_json(
            &t,
            "/api/v4.0/login",
            &with(&login, "password", bad.clone()),
        )
        .await;
        assert_eq!(c, -1, "login password={bad}");
    }
    // verify_code: phone -3, a faulty code is wrong (-1).
    let verify = json!({"phone": "13700000001", "code": "123456"});
    for bad in wrong_types() {
        let c = code_json(
            &t,
            "/api/v4.0/verify_code",
            &with(&verify, "phone", bad.clone()),
        )
        .await;
        assert_eq!(c, -3, "verify_code phone={bad}");
        let c = code_json(
            &t,
            "/api/v4.0/verify_code",
            &with(&verify, "code", bad.clone()),
        )
        .await;
        assert_eq!(c, -1, "verify_code code={bad}");
    }
    // forget_password: phone and password -3.
    let reset = json!({"phone": TEL, "password": "123456"});
    for bad in wrong_types() {
        for field in ["phone", "password"] {
            let c = code_json(
                &t,
                "/api/v4.0/forget_password",
                &with(&reset, field, bad.clone()),
            )
            .await;
            assert_eq!(c, -3, "forget_password {field}={bad}");
        }
    }
    // expect: only 0 or 1 (checked before any probe is counted).
    for path in [
        format!("/api/v4.0/sendsms/{TEL}"),
        format!("/api/v4.0/isregister/{TEL}"),
    ] {
        for bad in [
            json!(1.5),
            json!(-1),
            json!(2),
            json!(true),
            json!(false),
            json!([]),
            json!({}),
            json!(["1"]),
            json!({"a": 1}),
            json!("01"),
            json!(" 1"),
            json!("yes"),
            json!("１"),
        ] {
            let c = code_json(&t, &path, &json!({"expect": bad})).await;
            assert_eq!(c, -3, "{path} expect={bad}");
        }
        // A phone in the body does not replace the one in the path.
        let c = code_json(
            &t,
            &path,
            &json!({"expect": "x", "mobile": TEL, "phone": TEL}),
        )
        .await;
        assert_eq!(c, -3);
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

// ----- missing fields -------------------------------------------------------------

#[tokio::test]
async fn missing_fields_get_the_documented_codes() {
    let t = TestPlatform::start().await;
    // hub signup: -2 user empty, -5 password empty (user first).
    for (body, expected) in [
        (json!({}), -2),
        (json!({"password": "secret12"}), -2),
        (json!({"user": "", "password": ""}), -2),
        (json!({"user": fresh("m")}), -5),
        (json!({"user": fresh("m"), "password": ""}), -5),
    ] {
        assert_eq!(
            code_json(&t, "/signup", &body).await,
            expected,
            "signup {body}"
        );
    }
    // The same through a form, the query string, and no body at all.
    assert_eq!(
        code_raw(&t, "/signup", FORM_CT, b"password=secret12").await,
        -2
    );
    assert_eq!(
        code_raw(&t, "/signup", FORM_CT, b"user=abc&password=").await,
        -5
    );
    assert_eq!(code_raw(&t, "/signup?user=abc", None, b"").await, -5);
    assert_eq!(
        code_raw(&t, "/signup?user=&password=", FORM_CT, b"user=").await,
        -2
    );
    assert_eq!(code_raw(&t, "/signup", None, b"").await, -2);
    // login: -2 user empty, -3 password empty.
    for (body, expected) in [
        (json!({}), -2),
        (json!({"password": "secret12"}), -2),
        (json!({"user": "alice"}), -3),
        (json!({"user": "alice", "password": ""}), -3),
    ] {
        assert_eq!(
            code_json(&t, "/login", &body).await,
            expected,
            "login {body}"
        );
    }
    // recovery: -2 user empty, -4 email empty.
    for path in ["/forgot/vcode", "/forgot/verify"] {
        for (body, expected) in [
            (json!({}), -2),
            (json!({"email": "a@example.com"}), -2),
            (json!({"user": "alice"}), -4),
            (json!({"user": "alice", "email": ""}), -4),
        ] {
            assert_eq!(code_json(&t, path, &body).await, expected, "{path} {body}");
        }
    }
    // account_v4: every missing required field is -3.
    let reg = json!({"phone": TEL, "name": "n", "password": "123456", "code": "000000"});
    for field in ["phone", "name", "password"] {
        let c = code_json(&t, "/api/v4.0/register", &without(&reg, field)).await;
        assert_eq!(c, -3, "register without {field}");
    }
    for path in V4_PARAM_ROUTES {
        assert_eq!(code_json(&t, path, &json!({})).await, -3, "{path}");
        assert_eq!(code_raw(&t, path, None, b"").await, -3, "{path}");
    }
    let c = code_json(&t, "/api/v4.0/forget_password", &json!({"phone": TEL})).await;
    assert_eq!(c, -3);
    // An empty path segment is a missing phone.
    assert_eq!(code_raw(&t, "/api/v4.0/sendsms/", None, b"").await, -3);
    assert_eq!(code_raw(&t, "/api/v4.0/isregister/", None, b"").await, -3);
    // telsignup: any missing field is 2, except register's order: tel (3),
    // then the validation (5) before the token and the names.
    for act in ACTS {
        let base = tel_base(act);
        for field in base.as_object().unwrap().keys() {
            let expected = match (act.route, field.as_str()) {
                ("register", "tel") => 3,
                ("register", "token" | "username" | "password") => 5,
                _ => 2,
            };
            let v = tel_json(&t, act, &without(&base, field)).await;
            assert_eq!(
                v,
                tel_failure(act.resp_type, expected),
                "{} without {field}",
                act.route
            );
        }
        let v = tel_json(&t, act, &json!({})).await;
        assert_eq!(v, tel_failure(act.resp_type, 2), "{} with {{}}", act.route);
        for (field, empty) in [("tel", ""), ("time", ""), ("type", "")] {
            if !base.as_object().unwrap().contains_key(field) {
                continue;
            }
            let expected = if act.route == "register" && field == "tel" {
                3
            } else {
                2
            };
            let v = tel_json(&t, act, &with(&base, field, json!(empty))).await;
            assert_eq!(
                v,
                tel_failure(act.resp_type, expected),
                "{} {field}=\"\"",
                act.route
            );
        }
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

#[tokio::test]
async fn telsignup_register_checks_fields_after_validation_without_burning_the_token() {
    let t = TestPlatform::start().await;
    let r = tel_json(&t, ACTS[0], &tel_base(ACTS[0])).await;
    assert_eq!(r["success"], true, "{r}");
    let code = t.last_code(TEL);
    let r = tel_json(&t, ACTS[1], &with(&tel_base(ACTS[1]), "code", json!(code))).await;
    assert_eq!(r["success"], true, "{r}");
    let token = r["token"].as_str().unwrap().to_owned();
    let base = json!({"type": "register", "tel": TEL, "token": token,
                      "username": "zly_ok", "password": "123456a"});
    // Missing token after a validation: 4.
    for body in [
        without(&base, "token"),
        with(&base, "token", Value::Null),
        with(&base, "token", json!("")),
        with(&base, "token", json!("x".repeat(HUGE))),
        with(&base, "token", json!(format!("{token}\u{0}"))),
    ] {
        assert_eq!(
            tel_json(&t, REGISTER, &body).await,
            tel_failure("register", 4)
        );
    }
    // Missing or hostile names: 2.
    let huge = "a".repeat(HUGE);
    let bad_names = [
        "",
        "ab",
        "a\u{0}b",
        "abc\n",
        "a\tbc",
        "\u{7f}abc",
        "😀😀😀",
        "ab😀",
        "\u{202E}abc",
        "abc\u{200F}",
        "ａｂｃ",
        "абв",
        "a b",
        "root",
        &huge,
    ];
    for name in bad_names {
        let expected = if name == "root" { 7 } else { 2 };
        let v = tel_json(&t, REGISTER, &with(&base, "username", json!(name))).await;
        assert_eq!(v["error_no"], expected, "username {name:?}: {v}");
    }
    let bad_passwords = [
        "",
        "12345",
        "secret\u{0}x",
        "secret\n1",
        "pass word",
        "pässword",
        "😀😀😀😀😀😀",
        "secret\u{200F}",
        "１２３４５６",
        &huge,
    ];
    for pw in bad_passwords {
        let v = tel_json(&t, REGISTER, &with(&base, "password", json!(pw))).await;
        assert_eq!(v, tel_failure("register", 2), "password {pw:?}");
    }
    for field in ["username", "password"] {
        let v = tel_json(&t, REGISTER, &without(&base, field)).await;
        assert_eq!(v, tel_failure("register", 2), "without {field}");
        for bad in wrong_types() {
            let v = tel_json(&t, REGISTER, &with(&base, field, bad.clone())).await;
            assert_eq!(v, tel_failure("register", 2), "{field}={bad}");
        }
    }
    // None of that used the token up.
    let v = tel_json(&t, REGISTER, &base).await;
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["huanxin_id"], TEL);
    assert_alive(&t).await;
}

// ----- huge strings and the body limit --------------------------------------------------

/// Asserts `f` answered within a generous bound for a debug build.
async fn quick<F: std::future::Future<Output = T>, T>(what: &str, f: F) -> T {
    let start = Instant::now();
    let out = f.await;
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{what} took {took:?}");
    out
}

#[tokio::test]
async fn huge_strings_get_validation_errors_quickly() {
    let t = TestPlatform::start().await;
    let huge = "a".repeat(HUGE);
    let huge_digits = "1".repeat(HUGE);
    let victim = fresh("big");
    assert_eq!(signup(&t, &victim, "secret12").await, 0);
    // hub.
    let cases = [
        ("/signup", json!({"user": huge, "password": "secret12"}), -1),
        ("/signup", json!({"user": fresh("b"), "password": huge}), -4),
        (
            "/signup",
            json!({"user": "😀".repeat(HUGE / 4), "password": "secret12"}),
            -1,
        ),
        ("/login", json!({"user": huge, "password": "secret12"}), -1),
        ("/login", json!({"user": victim, "password": huge}), -4),
        (
            "/forgot/vcode",
            json!({"user": huge, "email": "a@example.com"}),
            -1,
        ),
        ("/forgot/vcode", json!({"user": victim, "email": huge}), -3),
        (
            "/forgot/verify",
            json!({"user": victim, "email": "a@example.com", "verify": huge}),
            -3,
        ),
    ];
    for (path, body, expected) in &cases {
        let c = quick(path, code_json(&t, path, body)).await;
        assert_eq!(c, *expected, "{path}");
    }
    // A huge form body and a huge unknown field.
    let body = form(&[("user", &huge), ("password", "secret12")]);
    assert_eq!(
        quick("form", code_raw(&t, "/signup", FORM_CT, body.as_bytes())).await,
        -1
    );
    let body = json!({"user": fresh("k"), "password": "secret12", "junk": huge});
    assert_eq!(quick("junk", code_json(&t, "/signup", &body)).await, 0);
    // 40,000 distinct keys.
    let many: serde_json::Map<String, Value> =
        (0..40_000).map(|i| (format!("k{i}"), json!("v"))).collect();
    let c = quick("many keys", code_json(&t, "/signup", &Value::Object(many))).await;
    assert_eq!(c, -2);
    // account_v4.
    let v4_cases = [
        (
            "/api/v4.0/register",
            json!({"phone": huge_digits, "name": "n", "password": "123456"}),
            -3,
        ),
        (
            "/api/v4.0/register",
            json!({"phone": TEL, "name": huge, "password": "123456"}),
            -3,
        ),
        (
            "/api/v4.0/register",
            json!({"phone": TEL, "name": "n", "password": huge}),
            -3,
        ),
        (
            "/api/v4.0/login",
            json!({"phone": huge, "password": "123456"}),
            -3,
        ),
        (
            "/api/v4.0/login",
            json!({"phone": TEL, "password": huge}),
            -1,
        ),
        (
            "/api/v4.0/verify_code",
            json!({"phone": TEL, "code": huge_digits}),
            -1,
        ),
        (
            "/api/v4.0/forget_password",
            json!({"phone": TEL, "password": huge}),
            -3,
        ),
        (
            &format!("/api/v4.0/sendsms/{TEL}"),
            json!({"expect": huge_digits}),
            -3,
        ),
    ];
    for (path, body, expected) in &v4_cases {
        let c = quick(path, code_json(&t, path, body)).await;
        assert_eq!(c, *expected, "{path}");
    }
    // A 50 KiB phone in the path (URIs are capped by the 64 KiB header buffer).
    let long = "1".repeat(50 * 1024);
    let c = quick(
        "path",
        code_raw(&t, &format!("/api/v4.0/sendsms/{long}"), None, b""),
    )
    .await;
    assert_eq!(c, -3);
    // telsignup.
    let req = tel_base(ACTS[0]);
    for (act, body, expected) in [
        (ACTS[0], with(&req, "tel", json!(huge_digits)), 2),
        (ACTS[0], with(&req, "time", json!(huge_digits)), 2),
        (ACTS[0], with(&req, "type", json!(huge)), 2),
        (
            ACTS[1],
            with(&tel_base(ACTS[1]), "code", json!(huge_digits)),
            3,
        ),
        (
            REGISTER,
            with(&tel_base(REGISTER), "tel", json!(huge_digits)),
            3,
        ),
        (
            REGISTER,
            with(&tel_base(REGISTER), "username", json!(huge)),
            5,
        ),
    ] {
        let v = quick(act.route, tel_json(&t, act, &body)).await;
        assert_eq!(v, tel_failure(act.resp_type, expected), "{}", act.route);
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

/// Reads one response (headers and a `Content-Length` body) from a
/// connection that stays open.
async fn read_one(s: &mut TcpStream) -> RawReply {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..at]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if bytes.len() >= at + 4 + len {
                return RawReply {
                    bytes,
                    closed: false,
                };
            }
        }
        match tokio::time::timeout(WAIT, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            _ => {
                return RawReply {
                    bytes,
                    closed: true,
                }
            }
        }
    }
}

#[tokio::test]
async fn refused_bodies_written_whole_before_reading_get_their_answer() {
    // Clients such as Python's http.client write the whole body before they
    // read: the answer must reach them, not a reset connection.
    let t = TestPlatform::start().await;
    let cases: [(&str, usize, u16); 4] = [
        ("/signup", 4 * LIMIT, 413),
        ("/api/v4.0/login", LIMIT + 1, 413),
        ("/no/such/route", 2 * LIMIT, 404),
        // The WebSocket route beside the HTTP dialects refuses the same way.
        ("/ws", 2 * LIMIT, 405),
    ];
    for (path, size, status) in cases {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        // The server reads (and throws away) the body: the write completes.
        tokio::time::timeout(WAIT, s.write_all(&vec![b'a'; size]))
            .await
            .expect("the server reads the body")
            .expect("the connection is not reset");
        let r = read_one(&mut s).await;
        assert_eq!(r.status(), Some(status), "{path}: {}", r.text());
        // The body was read to its end: the connection serves on.
        s.write_all(b"GET /mobiles/com.app/1 HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let r = read_one(&mut s).await;
        assert_eq!(r.status(), Some(200), "{path}: {}", r.text());
        assert_eq!(r.json().unwrap()["code"], 208);
    }
}

#[tokio::test]
async fn oversized_bodies_announced_with_expect_or_beyond_the_discard_limit_are_refused_unread() {
    let t = TestPlatform::start().await;
    // `Expect: 100-continue`: 413 at once, no `100 Continue`, nothing read.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let head = format!(
        "POST /signup HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        2 * LIMIT
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let r = read_reply(&mut s, WAIT).await;
    assert_eq!(r.statuses(), vec![413], "{}", r.text());
    assert!(r.closed);
    // Far beyond what is worth reading: 413 at once, connection closed.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(b"POST /signup HTTP/1.1\r\nHost: test\r\nContent-Length: 107374182400\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, WAIT).await;
    assert_eq!(r.statuses(), vec![413], "{}", r.text());
    assert!(r.closed);
    assert_alive(&t).await;
}

#[tokio::test]
async fn bodies_over_one_mib_answer_413_and_one_mib_is_fine() {
    let t = TestPlatform::start().await;
    let over = vec![b'a'; LIMIT + 1];
    let paths = [
        "/signup".to_owned(),
        "/login".to_owned(),
        "/forgot/vcode".to_owned(),
        "/forgot/verify".to_owned(),
        tel_path("sms-validation-request"),
        tel_path("register"),
        tel_path("nope"),
        format!("/api/v4.0/sendsms/{TEL}"),
        "/api/v4.0/register".to_owned(),
        "/api/v4.0/login".to_owned(),
    ];
    for path in &paths {
        for ct in [JSON_CT, FORM_CT] {
            let (s, v) = t.call(Method::POST, path, ct, over.clone()).await;
            assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {v}");
            assert_eq!(v, json!({"message": "payload too large"}));
        }
    }
    // GET with a body is served by account_v4 too: same limit.
    let (s, _) = t
        .call(Method::GET, "/api/v4.0/login", JSON_CT, over.clone())
        .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    // Exactly at the limit: served (JSON padded with trailing whitespace).
    let pad = |v: Value| {
        let mut b = v.to_string().into_bytes();
        b.resize(LIMIT, b' ');
        b
    };
    let user = fresh("limit");
    let c = code_raw(
        &t,
        "/signup",
        JSON_CT,
        &pad(json!({"user": user, "password": "secret12"})),
    )
    .await;
    assert_eq!(c, 0);
    let v = tel_raw(&t, ACTS[0], JSON_CT, &pad(tel_base(ACTS[0]))).await;
    assert_eq!(v["success"], true, "{v}");
    let c = code_raw(
        &t,
        "/api/v4.0/login",
        JSON_CT,
        &pad(json!({"phone": TEL, "password": "123456"})),
    )
    .await;
    assert_eq!(c, -1);
    // Over the limit by raw TCP with a lying chunked body: still 413.
    let mut req = b"POST /signup HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(b"10000\r\n");
        req.extend(std::iter::repeat_n(b'a', 0x10000));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = exchange(t.addr, &req, false, WAIT).await;
    assert_eq!(r.status(), Some(413), "{}", r.text());
    assert_alive(&t).await;
}

// ----- control characters, odd Unicode, full-width digits ---------------------------------

#[tokio::test]
async fn control_characters_and_odd_unicode_are_rejected() {
    let t = TestPlatform::start().await;
    // hub usernames: charset (-3); too many characters counted as chars (-1).
    let bad_users = [
        "ab\u{0}c",
        "\u{0}\u{0}\u{0}",
        "abc\n",
        "a\tbc",
        "abc\r",
        "\u{7f}abc",
        "\u{1b}[31m",
        "😀😀😀",
        "ab😀",
        "\u{202E}abc",
        "abc\u{200F}",
        "\u{200B}abc",
        "ａｂｃ",
        "абв",
        "a b",
        " abc",
        "abc ",
        "a-b-c",
        "a.b",
        "a'--",
        "<script>",
        "ab\u{FEFF}",
        "ab\u{FFFD}",
    ];
    for user in bad_users {
        let c = signup(&t, user, "secret12").await;
        assert_eq!(c, -3, "signup user {user:?}");
        // Through a form body too (%00 and friends).
        let c = code_raw(
            &t,
            "/signup",
            FORM_CT,
            form(&[("user", user), ("password", "secret12")]).as_bytes(),
        )
        .await;
        assert_eq!(c, -3, "signup (form) user {user:?}");
    }
    for user in ["😀".repeat(21), "\u{0}".repeat(2), "a\u{0}".repeat(11)] {
        assert_eq!(
            signup(&t, &user, "secret12").await,
            -1,
            "signup user {user:?}"
        );
    }
    // hub passwords: charset (-6); too many characters (-4).
    let bad_passwords = [
        "secret\u{0}x",
        "\u{0}\u{0}\u{0}\u{0}\u{0}\u{0}",
        "secret\n1",
        "secret\t1",
        "pass word",
        "pässword",
        "😀😀😀😀😀😀",
        "secret\u{200F}",
        "\u{202E}secret",
        "\u{7f}secret",
        "１２３４５６",
        "secret\u{FEFF}",
    ];
    for pw in bad_passwords {
        assert_eq!(
            signup(&t, &fresh("c"), pw).await,
            -6,
            "signup password {pw:?}"
        );
    }
    assert_eq!(signup(&t, &fresh("c"), &"😀".repeat(33)).await, -4);
    // login with such names names nobody; a victim's password with a NUL
    // is simply wrong.
    let victim = fresh("ctl");
    assert_eq!(signup(&t, &victim, "secret12").await, 0);
    for user in ["ab\u{0}c", "😀😀😀", "\u{202E}abc"] {
        let c = code_json(&t, "/login", &json!({"user": user, "password": "secret12"})).await;
        assert_eq!(c, -1, "login user {user:?}");
    }
    let c = code_json(
        &t,
        "/login",
        &json!({"user": victim, "password": "secret12\u{0}"}),
    )
    .await;
    assert_eq!(c, -4);
    // A NUL appended to the real name is another (invalid) name.
    let c = code_json(
        &t,
        "/login",
        &json!({"user": format!("{victim}\u{0}"), "password": "secret12"}),
    )
    .await;
    assert_eq!(c, -1);
    let c = code_json(
        &t,
        "/forgot/vcode",
        &json!({"user": "ab\u{0}c", "email": "a@example.com"}),
    )
    .await;
    assert_eq!(c, -1);
    let c = code_json(
        &t,
        "/forgot/vcode",
        &json!({"user": victim, "email": "a\u{0}@example.com"}),
    )
    .await;
    assert_eq!(c, -3);

    // Phones (G5): only ASCII digits after normalisation.
    let bad_phones = [
        "138\u{0}11112222",
        "13811112222\u{0}",
        "１３８１１１１２２２２",
        "1３811112222",
        "١٣٨١١١١٢٢٢٢",
        "۱۳۸۱۱۱۱۲۲۲۲",
        "13811112222\u{200F}",
        "\u{202E}13811112222",
        "13811112222\n",
        "138\t11112222",
        "\u{FEFF}13811112222",
        "😀",
        "+86+13811112222",
        "++8613811112222",
        "138111122220",
        "1381111222",
        "23811112222",
        "13811112222 \u{3000}",
    ];
    for phone in bad_phones {
        for (path, body) in [
            (
                "/api/v4.0/register",
                json!({"phone": phone, "name": "n", "password": "123456", "code": "000000"}),
            ),
            (
                "/api/v4.0/login",
                json!({"phone": phone, "password": "123456"}),
            ),
            (
                "/api/v4.0/verify_code",
                json!({"phone": phone, "code": "123456"}),
            ),
            (
                "/api/v4.0/forget_password",
                json!({"phone": phone, "password": "123456"}),
            ),
        ] {
            assert_eq!(
                code_json(&t, path, &body).await,
                -3,
                "{path} phone {phone:?}"
            );
        }
        // In the path, percent-encoded.
        let enc: String = form(&[("x", phone)])
            .trim_start_matches("x=")
            .replace('+', "%20");
        for route in ["sendsms", "isregister"] {
            let c = code_raw(&t, &format!("/api/v4.0/{route}/{enc}"), None, b"").await;
            assert_eq!(c, -3, "{route} phone {phone:?}");
        }
        // telsignup: 2 for the request and the code, 3 for register.
        for act in ACTS {
            let expected = if act.route == "register" { 3 } else { 2 };
            let v = tel_json(&t, act, &with(&tel_base(act), "tel", json!(phone))).await;
            assert_eq!(
                v,
                tel_failure(act.resp_type, expected),
                "{} tel {phone:?}",
                act.route
            );
        }
    }
    // account_v4 passwords and names.
    for pw in [
        "12345\u{0}",
        "密码密码密码",
        "pass word",
        "123456\n",
        "１２３４５６",
        "\u{202E}123456",
    ] {
        let body = json!({"phone": TEL, "name": "n", "password": pw, "code": "000000"});
        assert_eq!(
            code_json(&t, "/api/v4.0/register", &body).await,
            -3,
            "password {pw:?}"
        );
        let body = json!({"phone": TEL, "password": pw});
        assert_eq!(
            code_json(&t, "/api/v4.0/forget_password", &body).await,
            -3,
            "password {pw:?}"
        );
    }
    for name in ["na\u{0}me", "\n", "   ", "\u{7}", "a\u{1b}b"] {
        let body = json!({"phone": TEL, "name": name, "password": "123456", "code": "000000"});
        assert_eq!(
            code_json(&t, "/api/v4.0/register", &body).await,
            -3,
            "name {name:?}"
        );
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

// ----- telsignup routing --------------------------------------------------------------

#[tokio::test]
async fn telsignup_routing_faults_are_input_not_valid() {
    let t = TestPlatform::start().await;
    let generic =
        json!({"type": "error", "success": false, "error_no": 2, "error_msg": "input not valid."});
    let body = tel_base(ACTS[0]).to_string();
    for path in [
        "/index.php",
        "/index.php?",
        "/index.php?r=",
        "/index.php?r=user/nope",
        "/index.php?r=user/",
        "/index.php?r=user",
        "/index.php?r=USER/SMS-VALIDATION-REQUEST",
        "/index.php?r=user/sms-validation-request/",
        "/index.php?r=user/sms-validation-request%00",
        "/index.php?r=%FF%FE",
        "/index.php?r=../../etc/passwd",
        "/index.php?route=user/sms-validation-request",
        "/index.php?R=user/sms-validation-request",
    ] {
        let v = post(&t, path, JSON_CT, body.clone()).await;
        assert_eq!(v, generic, "{path}");
        // The action is judged before the body.
        let v = post(&t, path, JSON_CT, b"not json".to_vec()).await;
        assert_eq!(v, generic, "{path} (garbage body)");
    }
    // The first `r` decides; a percent-encoded `r` is decoded.
    let v = post(
        &t,
        "/index.php?r=user/nope&r=user/sms-validation-request",
        JSON_CT,
        body.clone(),
    )
    .await;
    assert_eq!(v, generic);
    let v = post(
        &t,
        "/index.php?r=user%2Fregister",
        JSON_CT,
        json!({"type": "sms_validation_request"}).to_string(),
    )
    .await;
    assert_eq!(v, tel_failure("register", 2));
    // A `type` that does not match the action: 2, with the action's type.
    for act in ACTS {
        for ty in ACTS
            .iter()
            .map(|a| a.req_type)
            .filter(|t| *t != act.req_type)
            .chain([
                "",
                " register",
                "REGISTER",
                "sms_validation_request\u{0}",
                "sms_validation_send",
                "sms_validation_result",
            ])
        {
            if ty == act.req_type {
                continue;
            }
            let v = tel_json(&t, act, &with(&tel_base(act), "type", json!(ty))).await;
            assert_eq!(
                v,
                tel_failure(act.resp_type, 2),
                "{} type {ty:?}",
                act.route
            );
        }
        let v = tel_json(&t, act, &without(&tel_base(act), "type")).await;
        assert_eq!(
            v,
            tel_failure(act.resp_type, 2),
            "{} without type",
            act.route
        );
    }
    // `time` missing or not digits: 2.
    for act in &ACTS[..2] {
        let v = tel_json(&t, *act, &without(&tel_base(*act), "time")).await;
        assert_eq!(v, tel_failure(act.resp_type, 2));
        let v = tel_json(&t, *act, &with(&tel_base(*act), "time", json!("now"))).await;
        assert_eq!(v, tel_failure(act.resp_type, 2));
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

// ----- unknown routes and wrong methods ----------------------------------------------------

#[tokio::test]
async fn unknown_routes_404_and_wrong_methods_405() {
    let t = TestPlatform::start().await;
    let not_found = json!({"message": "not found"});
    for path in [
        "/nope",
        "/signup/",
        "/signup/x",
        "/SIGNUP",
        "/Login",
        "/signup.php",
        "/forgot",
        "/forgot/",
        "/forgot/vcode/x",
        "/forgot/VCODE",
        "/index.php/x",
        "/index.PHP",
        "/api/v4.0",
        "/api/v4.0/",
        "/api/v4.0/nope",
        "/api/v4.0/sendsms",
        "/api/v4.0/sendsms/13811112222/x",
        "/api/v4.0/isregister/a/b",
        "/api/v4.0/login/",
        "/api/v4.0/login/x",
        "/api/v4.0//login",
        "/api/v4.1/login",
        "/api/V4.0/login",
        "/signup%00",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/%FF%FE",
    ] {
        for method in [Method::GET, Method::POST] {
            let (s, v) = t.call(method.clone(), path, JSON_CT, b"{}".to_vec()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
            assert_eq!(v, not_found, "{method} {path}");
        }
    }
    let not_allowed = json!({"message": "method not allowed"});
    let foo = Method::from_bytes(b"FOO").unwrap();
    let mut cases: Vec<(Method, String)> = Vec::new();
    for path in HUB
        .iter()
        .map(|p| p.to_string())
        .chain([tel_path("register"), "/index.php".into()])
    {
        for m in [
            Method::GET,
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            foo.clone(),
        ] {
            cases.push((m, path.clone()));
        }
    }
    for path in [
        format!("/api/v4.0/sendsms/{TEL}"),
        format!("/api/v4.0/isregister/{TEL}"),
        "/api/v4.0/register".into(),
        "/api/v4.0/login".into(),
        "/api/v4.0/verify_code".into(),
        "/api/v4.0/forget_password".into(),
    ] {
        for m in [
            Method::PUT,
            Method::DELETE,
            Method::PATCH,
            Method::OPTIONS,
            foo.clone(),
        ] {
            cases.push((m, path.clone()));
        }
    }
    for (m, path) in cases {
        let (s, v) = t.call(m.clone(), &path, JSON_CT, b"{}".to_vec()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{m} {path}: {v}");
        assert_eq!(v, not_allowed, "{m} {path}");
    }
    // HEAD has no body but the status still says 405.
    for path in ["/signup", "/index.php?r=user/register", "/api/v4.0/login"] {
        let (s, body) = t.raw(Method::HEAD, path, None, Vec::new()).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "HEAD {path}");
        assert!(body.is_empty());
    }
    // Nothing was sent by any of it.
    assert!(t.outbox_lines().is_empty());
    assert_alive(&t).await;
}

// ----- a concurrent burst ---------------------------------------------------------------------

/// One hostile request of the burst and what it must get.
#[derive(Clone)]
struct Hostile {
    method: Method,
    path: String,
    ct: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// (`code` or `error_no`, value) the JSON answer must carry.
    field: Option<(&'static str, i64)>,
}

fn hostile(
    method: Method,
    path: &str,
    ct: Option<&'static str>,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: Option<(&'static str, i64)>,
) -> Hostile {
    Hostile {
        method,
        path: path.to_owned(),
        ct,
        body: body.into(),
        status,
        field,
    }
}

fn catalogue() -> Vec<Hostile> {
    let huge = "a".repeat(HUGE);
    let post = Method::POST;
    let reg = tel_path("register");
    let req = tel_path("sms-validation-request");
    vec![
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            "not json",
            200,
            Some(("code", -2)),
        ),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            deep_nesting(),
            200,
            Some(("code", -2)),
        ),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            json!({"user": {}, "password": "secret12"}).to_string(),
            200,
            Some(("code", -1)),
        ),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            json!({"user": "ab\u{0}c", "password": "secret12"}).to_string(),
            200,
            Some(("code", -3)),
        ),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            json!({"user": "good_name", "password": "pass\u{0}word"}).to_string(),
            200,
            Some(("code", -6)),
        ),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            json!({"user": huge, "password": "secret12"}).to_string(),
            200,
            Some(("code", -1)),
        ),
        hostile(
            post.clone(),
            "/signup",
            FORM_CT,
            b"user=\xff\xfe\xfd&password=secret12".to_vec(),
            200,
            Some(("code", -3)),
        ),
        hostile(
            post.clone(),
            "/login",
            None,
            vec![0u8; 100],
            200,
            Some(("code", -2)),
        ),
        hostile(
            post.clone(),
            "/login",
            JSON_CT,
            json!({"user": "nobody_here", "password": "x"}).to_string(),
            200,
            Some(("code", -1)),
        ),
        hostile(
            post.clone(),
            "/forgot/vcode",
            JSON_CT,
            json!({"user": "abc"}).to_string(),
            200,
            Some(("code", -4)),
        ),
        hostile(
            post.clone(),
            "/forgot/verify",
            JSON_CT,
            "[1,2,3]",
            200,
            Some(("code", -2)),
        ),
        hostile(post.clone(), &req, JSON_CT, "{", 200, Some(("error_no", 1))),
        hostile(
            post.clone(),
            &req,
            JSON_CT,
            deep_nesting(),
            200,
            Some(("error_no", 1)),
        ),
        hostile(
            post.clone(),
            &req,
            JSON_CT,
            json!({"type": "register", "tel": TEL, "time": "1"}).to_string(),
            200,
            Some(("error_no", 2)),
        ),
        hostile(
            post.clone(),
            &req,
            JSON_CT,
            json!({"type": "sms_validation_request", "tel": "１３８１１１１２２２２", "time": "1"})
                .to_string(),
            200,
            Some(("error_no", 2)),
        ),
        hostile(
            post.clone(),
            &reg,
            JSON_CT,
            json!({"type": "register", "tel": 13_811_112_222_u64}).to_string(),
            200,
            Some(("error_no", 2)),
        ),
        hostile(
            post.clone(),
            "/index.php?r=user/nope",
            JSON_CT,
            "{}",
            200,
            Some(("error_no", 2)),
        ),
        hostile(
            post.clone(),
            "/index.php",
            None,
            vec![0xff; 10],
            200,
            Some(("error_no", 2)),
        ),
        hostile(
            post.clone(),
            "/api/v4.0/login",
            JSON_CT,
            json!({"phone": [], "password": "123456"}).to_string(),
            200,
            Some(("code", -3)),
        ),
        hostile(
            post.clone(),
            "/api/v4.0/register",
            FORM_CT,
            b"phone=138%0011112222&name=n&password=123456".to_vec(),
            200,
            Some(("code", -3)),
        ),
        hostile(
            Method::GET,
            "/api/v4.0/sendsms/%EF%BC%911381111222",
            None,
            "",
            200,
            Some(("code", -3)),
        ),
        hostile(
            Method::GET,
            &format!("/api/v4.0/isregister/{TEL}?expect=7"),
            None,
            "",
            200,
            Some(("code", -3)),
        ),
        hostile(
            post.clone(),
            "/api/v4.0/forget_password",
            JSON_CT,
            json!({"phone": TEL, "password": huge}).to_string(),
            200,
            Some(("code", -3)),
        ),
        hostile(
            post.clone(),
            "/api/v4.0/verify_code",
            None,
            vec![0xc3, 0x28],
            200,
            Some(("code", -3)),
        ),
        hostile(Method::GET, "/nope", None, "", 404, None),
        hostile(
            post.clone(),
            "/api/v4.0/sendsms/1/2",
            JSON_CT,
            "{}",
            404,
            None,
        ),
        hostile(Method::GET, "/signup", None, "", 405, None),
        hostile(Method::DELETE, "/api/v4.0/login", None, "", 405, None),
        hostile(Method::PUT, &reg, JSON_CT, "{}", 405, None),
        hostile(
            post.clone(),
            "/signup",
            JSON_CT,
            vec![b'x'; LIMIT + 1],
            413,
            None,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_300_hostile_requests_then_normal_service() {
    const TASKS: usize = 6;
    const PER_TASK: usize = 50;
    let t = Arc::new(TestPlatform::start().await);
    let cat = Arc::new(catalogue());
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let (t, cat) = (t.clone(), cat.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<(String, u16, Option<Value>)> = Vec::new();
            for i in 0..PER_TASK {
                let h = &cat[(task * 7 + i) % cat.len()];
                let (s, body) = t.raw(h.method.clone(), &h.path, h.ct, h.body.clone()).await;
                let v = serde_json::from_slice::<Value>(&body).ok();
                seen.push((format!("{} {}", h.method, h.path), s.as_u16(), v.clone()));
                assert!(!s.is_server_error(), "{} {}: {s}", h.method, h.path);
                assert_eq!(s.as_u16(), h.status, "{} {}: {v:?}", h.method, h.path);
                let v = v.unwrap_or_else(|| panic!("{} {}: non-JSON answer", h.method, h.path));
                if let Some((field, want)) = h.field {
                    assert_eq!(v[field], want, "{} {}: {v}", h.method, h.path);
                }
            }
            seen
        }));
    }
    // Meanwhile, raw garbage connections.
    let addr = t.addr;
    let raw = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..20u8 {
            let junk: Vec<u8> = (0..512u32)
                .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
                .collect();
            statuses.push(exchange(addr, &junk, false, WAIT).await.status());
        }
        statuses
    });
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    let mut total = 0;
    for task in tasks {
        let seen = task
            .await
            .expect("a burst task failed (panic or dropped connection)");
        for (_, status, _) in seen {
            *counts.entry(status).or_default() += 1;
            total += 1;
        }
    }
    let raw_statuses = raw.await.expect("raw garbage task");
    eprintln!("burst outcomes by status: {counts:?}; raw garbage: {raw_statuses:?}");
    assert_eq!(total, TASKS * PER_TASK);
    assert_eq!(
        counts.range(500..).map(|(_, n)| n).sum::<usize>(),
        0,
        "5xx in {counts:?}"
    );
    for s in raw_statuses {
        assert_eq!(s, Some(400), "raw garbage answer");
    }
    assert!(t.outbox_lines().is_empty(), "nothing may be sent");
    assert_alive(&t).await;
}

// ----- raw TCP abuse -----------------------------------------------------------------------

#[tokio::test]
async fn raw_garbage_instead_of_http_gets_400() {
    let t = TestPlatform::start().await;
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("binary", b"\x00\x01\x02\x03garbage\r\n\r\n".to_vec()),
        ("4 KiB junk", junk),
        ("no request line", b"HELLO\r\n\r\n".to_vec()),
        ("bare method", b"GET\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /signup\r\n\r\n".to_vec()),
        (
            "HTTP/9.9",
            b"GET /signup HTTP/9.9\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "HTTP/2.0 as text",
            b"POST /signup HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "TLS hello",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        ),
        (
            "bad header line",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n".to_vec(),
        ),
        (
            "NUL in header",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec(),
        ),
        (
            "non-ASCII path",
            b"GET /api/v4.0/isregister/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        (
            "bad Content-Length",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec(),
        ),
        (
            "negative Content-Length",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(),
        ),
        (
            "overflowing Content-Length",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n"
                .to_vec(),
        ),
        (
            "two Content-Lengths",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
                .to_vec(),
        ),
        (
            "unknown Transfer-Encoding",
            b"POST /signup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc".to_vec(),
        ),
    ];
    for (label, data) in cases {
        let r = exchange(t.addr, &data, false, WAIT).await;
        assert_eq!(r.status(), Some(400), "{label}: {}", r.text());
        assert!(
            r.closed,
            "{label}: the server keeps a broken connection open"
        );
    }
    // A broken chunked body reaches the service: 400 with a JSON message.
    let r = exchange(
        t.addr,
        b"POST /signup HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
        false,
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(400), "{}", r.text());
    assert_eq!(r.json(), Some(json!({"message": "unreadable body"})));
    // Content-Length and chunked together: chunked wins, nothing smuggled.
    let r = exchange(
        t.addr,
        b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        false,
        WAIT,
    )
    .await;
    assert_eq!(r.statuses(), vec![200], "{}", r.text());
    assert_eq!(r.json(), Some(json!({"code": -2})));
    // A valid request pipelined with garbage: the first is answered, then 400.
    let pipelined = [
        b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}".as_slice(),
        b"\x00\x01garbage\r\n\r\n",
    ]
    .concat();
    let r = exchange(t.addr, &pipelined, false, WAIT).await;
    assert_eq!(r.statuses(), vec![200, 400], "{}", r.text());
    // HTTP/1.0 without Host is still served.
    let r = exchange(t.addr, b"GET /nope HTTP/1.0\r\n\r\n", false, WAIT).await;
    assert_eq!(r.status(), Some(404), "{}", r.text());
    // HTTP/2 preface followed by garbage: the server ends that connection.
    let r = exchange(
        t.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        false,
        WAIT,
    )
    .await;
    assert!(r.closed, "an h2 connection with garbage frames stays open");
    assert_alive(&t).await;
}

#[tokio::test]
async fn absurd_headers_get_431() {
    let t = TestPlatform::start().await;
    let big_value = format!(
        "POST /signup HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(100 * 1024)
    );
    let big_name = format!(
        "GET /signup HTTP/1.1\r\nHost: x\r\n{}: v\r\n\r\n",
        "N".repeat(100 * 1024)
    );
    let big_uri = format!(
        "GET /api/v4.0/sendsms/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "1".repeat(100 * 1024)
    );
    let big_query = format!(
        "POST /signup?user={} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("POST /signup HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    for (label, data) in [
        ("100 KiB header value", big_value),
        ("100 KiB header name", big_name),
        ("100 KiB request line", big_uri),
        ("100 KiB query", big_query),
        ("200 headers", many),
    ] {
        let r = exchange(t.addr, data.as_bytes(), false, WAIT).await;
        assert_eq!(r.status(), Some(431), "{label}: {}", r.text());
    }
    assert_alive(&t).await;
}

#[tokio::test]
async fn truncated_requests_then_close_change_nothing() {
    let t = TestPlatform::start().await;
    let user = fresh("trunc");
    let full = http_request(
        "POST",
        "/signup",
        "application/json",
        json!({"user": user, "password": "secret12"})
            .to_string()
            .as_bytes(),
    );
    // Every proper prefix of a valid sign-up, sent and abandoned.
    let cuts: Vec<usize> = (1..full.len()).step_by(7).chain([full.len() - 1]).collect();
    for cut in cuts {
        hit_and_run(t.addr, &full[..cut]).await;
    }
    // Content-Length 10 but 3 bytes, then close: abandoned...
    let short = b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"u";
    hit_and_run(t.addr, short).await;
    // ...or half-closed, waiting for an answer: a 400, never a 5xx.
    let r = exchange(t.addr, short, true, WAIT).await;
    assert!(r.closed);
    if !r.bytes.is_empty() {
        assert_eq!(r.status(), Some(400), "{}", r.text());
        assert_eq!(r.json(), Some(json!({"message": "unreadable body"})));
    }
    // Same on the other dialects.
    for path in [tel_path("register"), "/api/v4.0/login".into()] {
        let data = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
        let r = exchange(t.addr, data.as_bytes(), true, WAIT).await;
        assert!(r.closed);
        if !r.bytes.is_empty() {
            assert_eq!(r.status(), Some(400), "{path}: {}", r.text());
        }
    }
    // None of the partial sign-ups happened: the name is still free.
    assert_eq!(signup(&t, &user, "secret12").await, 0);
    // And the complete request over raw TCP works.
    let other = fresh("whole");
    let r = exchange(
        t.addr,
        &http_request(
            "POST",
            "/signup",
            "application/json",
            json!({"user": other, "password": "secret12"})
                .to_string()
                .as_bytes(),
        ),
        false,
        WAIT,
    )
    .await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(r.json().unwrap()["code"], 0);
    assert_alive(&t).await;
}

#[tokio::test]
async fn http2_prior_knowledge_gets_the_same_answers() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let t = TestPlatform::start().await;
    let stream = TcpStream::connect(t.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let addr = t.addr;
    async fn ask(
        send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
        addr: SocketAddr,
        path: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let req = http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.expect("h2 answer");
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice::<Value>(&body).expect("JSON"),
        )
    }
    let (s, v) = ask(&mut send, addr, "/signup", b"not json".to_vec()).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"code": -2})));
    let (s, v) = ask(&mut send, addr, &tel_path("register"), b"[]".to_vec()).await;
    assert_eq!((s, v), (StatusCode::OK, tel_failure("register", 1)));
    let (s, v) = ask(&mut send, addr, "/signup", vec![b'a'; LIMIT + 1]).await;
    assert_eq!(
        (s, v),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"message": "payload too large"})
        )
    );
    let (s, v) = ask(&mut send, addr, "/nope", Vec::new()).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let user = fresh("h2");
    let (s, v) = ask(
        &mut send,
        addr,
        "/signup",
        json!({"user": user, "password": "secret12"})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["code"], 0, "{v}");
    assert_alive(&t).await;
}

// ----- slow clients ------------------------------------------------------------------------

#[tokio::test]
async fn slow_headers_are_cut_off_by_the_header_timeout() {
    let t = TestPlatform::start_with(|a| a.header_timeout_secs = 1).await;
    // Half a header, then silence.
    let r = exchange(
        t.addr,
        b"POST /signup HTTP/1.1\r\nHost: x\r\n",
        false,
        Duration::from_secs(4),
    )
    .await;
    assert!(r.closed, "a stalled header is not cut off");
    assert!(r.status().is_none_or(|s| s < 500), "{}", r.text());
    // A header dripped one byte at a time.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    let drip = b"POST /signup HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let start = Instant::now();
    let mut cut = false;
    for b in drip {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(150), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 5")),
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    // The loop gives up after 4 s: `cut` means the server cut it first.
    assert!(
        cut,
        "a dripped header is not cut off after {:?}",
        start.elapsed()
    );
    // An idle keep-alive connection after a full answer is closed too.
    let mut s = TcpStream::connect(t.addr).await.unwrap();
    s.write_all(b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    let r = read_reply(&mut s, Duration::from_secs(4)).await;
    assert_eq!(r.status(), Some(200), "{}", r.text());
    assert_eq!(r.json(), Some(json!({"code": -2})));
    assert!(r.closed, "an idle keep-alive connection is never closed");
    assert_alive(&t).await;
}

/// Opens `n` connections that send `data` and then hold still; checks that
/// the server closes each within a few seconds and that, with the connection
/// cap at `n`, a normal request still gets through.
async fn held_connections_are_closed(t: &TestPlatform, n: usize, data: &'static [u8]) {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(t.addr).await.unwrap();
        if !data.is_empty() {
            s.write_all(data).await.unwrap();
        }
        held.push(s);
    }
    let mut waits = Vec::new();
    for mut s in held {
        // Each task hands its socket back, so that it stays open (unless
        // the server closed it) until every check below is done.
        waits.push(tokio::spawn(async move {
            let closed = read_reply(&mut s, Duration::from_secs(4)).await.closed;
            (closed, s)
        }));
    }
    // While they are held (and the cap is reached), a normal client.
    let served = tokio::time::timeout(Duration::from_secs(5), assert_alive(t))
        .await
        .is_ok();
    let mut open = 0;
    let mut sockets = Vec::new();
    for w in waits {
        let (closed, s) = w.await.unwrap();
        if !closed {
            open += 1;
        }
        sockets.push(s);
    }
    drop(sockets);
    assert!(
        open == 0 && served,
        "{open} of {n} connections sending {:?} were still open after 4 s (header timeout 1 s); \
         with the connection cap at {n}, a normal sign-up was {}served within 5 s",
        String::from_utf8_lossy(data),
        if served { "" } else { "NOT " }
    );
    // Once they are gone, service goes on.
    assert_alive(t).await;
}

#[tokio::test]
async fn silent_connections_are_closed_and_cannot_exhaust_the_server() {
    let t = TestPlatform::start_with(|a| {
        a.header_timeout_secs = 1;
        a.max_connections = 4;
    })
    .await;
    held_connections_are_closed(&t, 4, b"").await;
    held_connections_are_closed(&t, 4, b"PRI * HTTP/2.0\r\n").await;
}

#[tokio::test]
async fn stalled_bodies_are_closed_and_cannot_exhaust_the_server() {
    // A stalled body is cut by the idle timeout (no bytes) and the body
    // timeout (too slow overall); both short here.
    let t = TestPlatform::start_with(|a| {
        a.header_timeout_secs = 1;
        a.idle_timeout_secs = 1;
        a.body_timeout_secs = 2;
        a.max_connections = 4;
    })
    .await;
    held_connections_are_closed(
        &t,
        4,
        b"POST /signup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{\"u",
    )
    .await;
}
