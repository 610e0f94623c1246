//! Things that must not happen twice, raced over the real platform's HTTP
//! and WebSocket interfaces.

mod common;

use std::sync::Arc;

use common::{TestPlatform, Ws};
use http::{Method, StatusCode};
use serde_json::json;

async fn signup(t: &TestPlatform, user: &str) -> String {
    let r = t
        .post_form("/signup", &[("user", user), ("password", "secret1")])
        .await;
    assert_eq!(r["code"], 0, "{r}");
    r["token"].as_str().unwrap().to_owned()
}

async fn balance(t: &TestPlatform, user: &str) -> (i64, i64) {
    let u = t
        .core()
        .accounts
        .user_by_username(user)
        .await
        .unwrap()
        .unwrap();
    let b = t.core().billing.balance(&u.id).await.unwrap();
    (b.total, b.held)
}

#[tokio::test]
async fn hundred_sends_of_ten_against_five_hundred_exactly_fifty_succeed() {
    let t = Arc::new(TestPlatform::start().await);
    signup(&t, "alice").await;
    let auth = Some(("alice", "secret1"));
    let (_, s) = t
        .basic(
            Method::POST,
            "/v1/signature",
            auth,
            Some(json!({"signature": "欢聚", "source": "app"})),
        )
        .await;
    let sign_id = s["sign_id"].as_i64().unwrap();
    let (_, tp) = t
        .basic(
            Method::POST,
            "/v1/template",
            auth,
            Some(json!({"name": "n", "template": "hello", "type": 2, "description": "d", "sign_id": sign_id})),
        )
        .await;
    let temp_id = tp["temp_id"].as_i64().unwrap();
    t.root(
        Method::POST,
        "/v2/signreview",
        json!({"sign_id": sign_id, "audit_status": "passed"}),
    )
    .await;
    t.root(
        Method::POST,
        "/v2/tempreview",
        json!({"temp_id": temp_id, "audit_status": "passed"}),
    )
    .await;
    t.root(
        Method::POST,
        "/v2/charge",
        json!({"user": "alice", "charge": 500}),
    )
    .await;
    let mobiles: Vec<String> = (0..10).map(|i| format!("1390000{i:04}")).collect();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let t = t.clone();
        let body = json!({"sign_id": sign_id, "temp_id": temp_id, "mobiles": mobiles});
        tasks.push(tokio::spawn(async move {
            t.basic(
                Method::POST,
                "/v1/message",
                Some(("alice", "secret1")),
                Some(body),
            )
            .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (status, v) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::FORBIDDEN if v["error"] == "ER:0034" => refused += 1,
            other => panic!("{other} {v}"),
        }
    }
    assert_eq!((ok, refused), (50, 50));
    let (total, held) = balance(&t, "alice").await;
    assert_eq!((total, held), (0, 0));
}

#[tokio::test]
async fn hundred_users_one_number_one_lease_nobody_else_charged() {
    let t = Arc::new(TestPlatform::start().await);
    let r = t
        .post_json(
            "/phones",
            json!({"data": [{"mobile": "18250794865", "cid": "d"}]}),
        )
        .await;
    assert_eq!(r["code"], 200);
    t.root(
        Method::POST,
        "/v2/item",
        json!({"item_id": "app", "name": "App", "price": 10, "send_price": 1}),
    )
    .await;
    let mut sockets = Vec::new();
    for i in 0..100 {
        let name = format!("u{i:03}");
        let token = signup(&t, &name).await;
        t.root(
            Method::POST,
            "/v2/charge",
            json!({"user": name, "charge": 10}),
        )
        .await;
        let mut ws = Ws::connect(&t).await;
        assert_eq!(ws.login(&token).await["code"], 0);
        sockets.push((name, ws));
    }
    let mut tasks = Vec::new();
    for (name, mut ws) in sockets {
        tasks.push(tokio::spawn(async move {
            let mut skipped = Vec::new();
            let r = ws
                .request(
                    json!({"protocol": "CSMobileNum", "itemId": "app", "count": 1}),
                    "SCMobileNum",
                    &mut skipped,
                )
                .await;
            (name, r["code"].as_i64().unwrap(), ws)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (name, code, _ws) = task.await.unwrap();
        match code {
            0 => winners.push(name),
            -7 => {}
            other => panic!("{name}: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    for i in 0..100 {
        let name = format!("u{i:03}");
        let (total, held) = balance(&t, &name).await;
        assert_eq!(total, 10, "{name} charged");
        assert_eq!(held, if winners.contains(&name) { 10 } else { 0 }, "{name}");
    }
}

#[tokio::test]
async fn fifty_concurrent_checks_of_the_right_code_one_success() {
    let t = Arc::new(TestPlatform::start().await);
    let r = t
        .post_form("/api/v4.0/sendsms/13811112222", &[("expect", "0")])
        .await;
    assert_eq!(r["code"], 200);
    let code = t.last_code("13811112222");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let t = t.clone();
        let code = code.clone();
        tasks.push(tokio::spawn(async move {
            let r = t
                .post_form(
                    "/api/v4.0/register",
                    &[
                        ("phone", "13811112222"),
                        ("name", "n"),
                        ("password", "secret1"),
                        ("device_identifier", &format!("d{i}")),
                        ("code", &code),
                    ],
                )
                .await;
            r["code"].as_i64().unwrap()
        }));
    }
    let mut codes = Vec::new();
    for task in tasks {
        codes.push(task.await.unwrap());
    }
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 1, "{codes:?}");
    assert!(
        codes.iter().all(|&c| matches!(c, 200 | -1 | -2 | -4)),
        "{codes:?}"
    );
}

#[tokio::test]
async fn a_retried_charge_applies_once() {
    let t = Arc::new(TestPlatform::start().await);
    signup(&t, "bob").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            t.root(
                Method::POST,
                "/v2/charge",
                json!({"user": "bob", "charge": 70, "op_id": "order-42"}),
            )
            .await
            .0
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(balance(&t, "bob").await, (70, 0));
}
