//! Every dialect through `SmsService` as a tower service over `MemoryStore`,
//! without a socket: a request in, a response out (`oneshot` style). The
//! TCP suites of the platform keep hostile input and crashes; these pin each
//! dialect's wire answers, including how core errors map to its codes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use sms_core::prelude::*;
use sms_core::sender::RecordingSender;
use sms_http_hyper::{ClientAddr, Dialect, HttpConfig, SmsService};
use tower_service::Service;

const ROOT_PW: &str = "rootpass1";

struct Harness {
    service: SmsService,
    sender: Arc<RecordingSender>,
}

async fn harness(dialects: &[Dialect]) -> Harness {
    let sender = Arc::new(RecordingSender::new());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(sender.clone())
        .password_hasher(Arc::new(
            sms_core::password::Argon2Hasher::fast_insecure_for_tests(),
        ))
        .build()
        .expect("test builder");
    core.accounts.ensure_root(ROOT_PW).await.expect("root");
    Harness {
        service: SmsService::with_dialects(core, HttpConfig::default(), dialects),
        sender,
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

impl Harness {
    /// One request through `Service::call`, the client at 198.51.100.7.
    async fn call(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, String)],
        body: impl Into<Bytes>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let mut req = req.body(Full::new(body.into())).expect("request");
        let peer: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        req.extensions_mut().insert(ClientAddr(peer));
        let mut service = self.service.clone();
        let resp = service.call(req).await.expect("infallible");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, value)
    }

    async fn form(&self, path: &str, form: &[(&str, &str)]) -> Value {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let ct = ("content-type", "application/x-www-form-urlencoded".into());
        let (status, v) = self.call(Method::POST, path, &[ct], body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    }

    async fn json(
        &self,
        method: Method,
        path: &str,
        auth: Option<String>,
        body: Value,
    ) -> (StatusCode, Value) {
        let mut h = vec![("content-type", "application/json".to_string())];
        if let Some(a) = auth {
            h.push(("authorization", a));
        }
        self.call(method, path, &h, body.to_string()).await
    }

    fn last_code(&self) -> String {
        self.sender
            .messages()
            .last()
            .and_then(|m| m.code.clone())
            .expect("a code was sent")
    }
}

#[tokio::test]
async fn hub_signup_login_and_its_codes() {
    let h = harness(&[Dialect::Hub]).await;
    let ok = h
        .form("/signup", &[("user", "alice"), ("password", "secret1")])
        .await;
    assert_eq!(ok["code"], 0);
    assert!(ok["token"].as_str().is_some_and(|t| !t.is_empty()));
    // Taken, empty user, empty password: -7, -2, -5.
    assert_eq!(
        h.form("/signup", &[("user", "alice"), ("password", "secret1")])
            .await["code"],
        -7
    );
    assert_eq!(
        h.form("/signup", &[("user", ""), ("password", "secret1")])
            .await["code"],
        -2
    );
    assert_eq!(
        h.form("/signup", &[("user", "bob"), ("password", "")])
            .await["code"],
        -5
    );
    // Login: unknown user -1, wrong password -4, right one 0.
    assert_eq!(
        h.form("/login", &[("user", "nobody"), ("password", "secret1")])
            .await["code"],
        -1
    );
    assert_eq!(
        h.form("/login", &[("user", "alice"), ("password", "wrong12")])
            .await["code"],
        -4
    );
    assert_eq!(
        h.form("/login", &[("user", "alice"), ("password", "secret1")])
            .await["code"],
        0
    );
    // Recovery for a user without an email: -3.
    assert_eq!(
        h.form(
            "/forgot/vcode",
            &[("user", "alice"), ("email", "a@example.com")]
        )
        .await["code"],
        -3
    );
}

#[tokio::test]
async fn telsignup_request_validate_register() {
    let h = harness(&[Dialect::Telsignup]).await;
    let path = "/index.php?r=user/sms-validation-request";
    let (_, v) = h
        .json(
            Method::POST,
            path,
            None,
            json!({"type": "sms_validation_request", "tel": "13811112222", "time": "1"}),
        )
        .await;
    assert_eq!(v["success"], true, "{v}");
    assert_eq!(v["type"], "sms_validation_send");
    let code = h.last_code();
    let path = "/index.php?r=user/sms-validation-code";
    let (_, bad) = h
        .json(
            Method::POST,
            path,
            None,
            json!({"type": "sms_validation_code", "tel": "13811112222", "code": "x", "time": "1"}),
        )
        .await;
    assert_eq!(
        (bad["error_no"].clone(), bad["error_msg"].clone()),
        (json!(3), json!("validation code invalid."))
    );
    let (_, v) = h
        .json(
            Method::POST,
            path,
            None,
            json!({"type": "sms_validation_code", "tel": "13811112222", "code": code, "time": "1"}),
        )
        .await;
    assert_eq!(v["success"], true, "{v}");
    let token = v["token"].as_str().expect("token").to_owned();
    let path = "/index.php?r=user/register";
    let body = json!({"type": "register", "tel": "13811112222", "token": token, "username": "carol", "password": "secret1"});
    let (_, v) = h.json(Method::POST, path, None, body.clone()).await;
    assert_eq!(v["success"], true, "{v}");
    // The grant is spent: a second register is refused (not a 5xx).
    let (status, v) = h.json(Method::POST, path, None, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["success"], false);
    // Not JSON: 1; a bad JSON type: 2.
    let (_, v) = h.call(Method::POST, path, &[], "{").await;
    assert_eq!(v["error_no"], 1);
    let (_, v) = h
        .json(
            Method::POST,
            path,
            None,
            json!({"type": "register", "tel": 5}),
        )
        .await;
    assert_eq!(v["error_no"], 2);
}

#[tokio::test]
async fn account_v4_sendsms_register_login() {
    let h = harness(&[Dialect::AccountV4]).await;
    let (_, v) = h
        .call(
            Method::GET,
            "/api/v4.0/sendsms/13911112222?expect=0",
            &[],
            "",
        )
        .await;
    assert_eq!(v["code"], 200, "{v}");
    // The cooldown is -4 with its reason.
    let (_, v) = h
        .call(
            Method::GET,
            "/api/v4.0/sendsms/13911112222?expect=0",
            &[],
            "",
        )
        .await;
    assert_eq!(v["code"], -4, "{v}");
    let code = h.last_code();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let form = |c: &str| {
        vec![
            ("phone", "13911112222".to_string()),
            ("name", "Dan".into()),
            ("password", "secret1".into()),
            ("code", c.to_string()),
        ]
    };
    let enc = |f: Vec<(&str, String)>| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(f)
            .finish()
    };
    let ct = || {
        vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        )]
    };
    let (_, v) = h
        .call(Method::POST, "/api/v4.0/register", &ct(), enc(form(wrong)))
        .await;
    assert_eq!(v["code"], -2, "{v}");
    let (_, v) = h
        .call(Method::POST, "/api/v4.0/register", &ct(), enc(form(&code)))
        .await;
    assert_eq!(v["code"], 200, "{v}");
    assert!(v["data"]["token"].as_str().is_some());
    let login = |pw: &str| {
        enc(vec![
            ("phone", "13911112222".into()),
            ("password", pw.to_string()),
        ])
    };
    let (_, v) = h
        .call(Method::POST, "/api/v4.0/login", &ct(), login("nope123"))
        .await;
    assert_eq!(
        (v["code"].clone(), v["msg"].clone()),
        (json!(-1), json!("手机号或密码错误"))
    );
    let (_, v) = h
        .call(Method::POST, "/api/v4.0/login", &ct(), login("secret1"))
        .await;
    assert_eq!(v["code"], 200, "{v}");
    let (_, v) = h
        .call(
            Method::GET,
            "/api/v4.0/isregister/13911112222?expect=1",
            &[],
            "",
        )
        .await;
    assert_eq!(v["code"], 200, "{v}");
}

#[tokio::test]
async fn sendapi_and_root_routes_answer_in_the_er_envelope() {
    let h = harness(&[Dialect::Hub, Dialect::SendApi, Dialect::Admin]).await;
    assert_eq!(
        h.form("/signup", &[("user", "erin"), ("password", "secret1")])
            .await["code"],
        0
    );
    let erin = || Some(basic("erin", "secret1"));
    let root = || Some(basic("root", ROOT_PW));
    // No credentials: ER:0001 (400); a user on a root route: ER:0003.
    let (s, v) = h.json(Method::GET, "/v1/signature", None, json!({})).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0001"))
    );
    let (s, v) = h
        .json(
            Method::POST,
            "/v2/charge",
            erin(),
            json!({"user": "erin", "charge": 5}),
        )
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0003"))
    );
    // Root charges; a bad amount and an unknown user are ER:0004.
    let (s, v) = h
        .json(
            Method::POST,
            "/v2/charge",
            root(),
            json!({"user": "erin", "charge": 500}),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"message": "ok"})));
    let (_, v) = h
        .json(
            Method::POST,
            "/v2/charge",
            root(),
            json!({"user": "erin", "charge": -1}),
        )
        .await;
    assert_eq!(v["error"], "ER:0004");
    let (_, v) = h
        .json(
            Method::POST,
            "/v2/charge",
            root(),
            json!({"user": "ghost", "charge": 1}),
        )
        .await;
    assert_eq!(v["error"], "ER:0004");
    // Root cannot be banned (the core's rule): ER:0004.
    let (_, v) = h
        .json(Method::POST, "/v2/ban", root(), json!({"user": "root"}))
        .await;
    assert_eq!(v["error"], "ER:0004");
    // A signature, reviewed with a bad status: ER:0013; passed: ok.
    let (s, v) = h
        .json(
            Method::POST,
            "/v1/signature",
            erin(),
            json!({"signature": "欢聚", "source": "公司", "pics": []}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let sign_id = v["sign_id"].as_i64().expect("sign_id");
    let (s, v) = h
        .json(
            Method::POST,
            "/v2/signreview",
            root(),
            json!({"sign_id": sign_id, "audit_status": "maybe"}),
        )
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::FORBIDDEN, json!("ER:0013"))
    );
    // A template on an unapproved signature, then a send: ER:0031.
    let (_, v) = h
        .json(Method::POST, "/v1/template", erin(), json!({"name": "n", "template": "您的包裹${no}已到", "type": 1, "description": "d", "sign_id": sign_id}))
        .await;
    let temp_id = v["temp_id"].as_i64().expect("temp_id");
    let (s, v) = h
        .json(Method::POST, "/v1/message", erin(), json!({"sign_id": sign_id, "temp_id": temp_id, "mobiles": ["13811112222"], "params": {"no": "A1"}}))
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::FORBIDDEN, json!("ER:0031"))
    );
    // Root's views: the pending signature and template, the items, the pool.
    let (s, v) = h.json(Method::GET, "/v2/reviews", root(), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["signatures"][0]["sign_id"], sign_id);
    assert_eq!(v["templates"][0]["temp_id"], temp_id);
    assert_eq!(v["templates"][0]["template"], "您的包裹${no}已到");
    let (s, v) = h.json(Method::GET, "/v2/reviews", erin(), json!({})).await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0003"))
    );
    let item = json!({"item_id": "com.example", "name": "Ex", "price": 3, "send_price": 1});
    let (s, _) = h.json(Method::POST, "/v2/item", root(), item).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = h.json(Method::GET, "/v2/item", root(), json!({})).await;
    assert_eq!(
        v["items"],
        json!([{"item_id": "com.example", "name": "Ex", "price": 3, "send_price": 1, "code_pattern": null}])
    );
    let (_, v) = h.json(Method::GET, "/v2/pool", root(), json!({})).await;
    assert_eq!(
        v,
        json!({"size": 100, "numbers": 0, "leased": 0, "available": 0})
    );
    let (s, _) = h.json(Method::POST, "/v2/pool", root(), json!({})).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    // Not JSON: ER:0002.
    let (s, v) = h
        .call(
            Method::POST,
            "/v1/signature",
            &[("authorization", basic("erin", "secret1"))],
            "{",
        )
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0002"))
    );
}

#[tokio::test]
async fn pool_routes_without_tokens_in_dev_shape() {
    let h = harness(&[Dialect::Pool, Dialect::PoolDevices]).await;
    let phones = json!({"data": [{"mobile": "13700001111", "cid": "c1", "imsi": "i", "imei": "e", "iccid": "c", "ip": "10.0.0.1"}]});
    let (s, v) = h.json(Method::POST, "/phones", None, phones).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["code"], 200, "{v}");
    assert_eq!(v["phonesUsed"], json!(["13700001111"]), "{v}");
    let (_, v) = h.call(Method::GET, "/mobiles/tg/1", &[], "").await;
    assert_eq!(v["code"], 200, "{v}");
    // A malformed upload is the seed's 400 answer, in a 200.
    let (s, v) = h.call(Method::POST, "/phones", &[], "not json").await;
    assert_eq!((s, v["code"].clone()), (StatusCode::OK, json!(400)));
    // Nothing to take: 208.
    let (_, v) = h.call(Method::GET, "/vcodes/tg", &[], "").await;
    assert_eq!(v["code"], 208, "{v}");
}

#[tokio::test]
async fn a_service_with_one_dialect_answers_404_for_the_others() {
    let h = harness(&[Dialect::AccountV4]).await;
    for path in [
        "/signup",
        "/v1/signature",
        "/v2/charge",
        "/phones",
        "/openapi.json",
    ] {
        let (s, _) = h.call(Method::POST, path, &[], "").await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{path}");
    }
    let (s, _) = h
        .call(
            Method::GET,
            "/api/v4.0/isregister/13911112222?expect=0",
            &[],
            "",
        )
        .await;
    assert_eq!(s, StatusCode::OK);
}
