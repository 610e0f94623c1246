//! The code-receiving platform end to end over HTTP and WebSocket: a device
//! uploads numbers (`pool`), root creates an item and charges a user
//! (`/v2/…`), the user leases a number over the `hub` WebSocket, the device
//! uploads a code, the user gets `PushRecvMsg` and is charged once.

mod common;

use std::time::Duration;

use common::{TestPlatform, Ws};
use http::{Method, StatusCode};
use serde_json::{json, Value};

const ITEM: &str = "com.yy.huanju";

async fn signup(t: &TestPlatform, user: &str) -> String {
    let r = t
        .post_form("/signup", &[("user", user), ("password", "secret1")])
        .await;
    assert_eq!(r["code"], 0, "{r}");
    r["token"].as_str().unwrap().to_owned()
}

async fn setup(t: &TestPlatform, numbers: &[&str], price: i64) {
    let data: Vec<Value> = numbers
        .iter()
        .map(|m| json!({"mobile": m, "cid": "dev-1", "imsi": "i", "imei": "e", "iccid": "c", "ip": "1.2.3.4"}))
        .collect();
    let r = t.post_json("/phones", json!({ "data": data })).await;
    assert_eq!(r["code"], 200, "{r}");
    let r = t
        .root(
            Method::POST,
            "/v2/item",
            json!({"item_id": ITEM, "name": "欢聚", "price": price, "send_price": 1}),
        )
        .await;
    assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
}

async fn charge(t: &TestPlatform, user: &str, n: i64) {
    let r = t
        .root(
            Method::POST,
            "/v2/charge",
            json!({"user": user, "charge": n}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
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

/// Leases `count` numbers; returns the SCMobileNum code and the pushed numbers.
async fn lease(ws: &mut Ws, count: i64) -> (i64, Vec<Value>) {
    let mut skipped = Vec::new();
    let r = ws
        .request(
            json!({"protocol": "CSMobileNum", "itemId": ITEM, "count": count}),
            "SCMobileNum",
            &mut skipped,
        )
        .await;
    let code = r["code"].as_i64().unwrap();
    let mut pushes = Vec::new();
    if code == 0 {
        while pushes.len() < count as usize {
            match ws.try_recv(Duration::from_millis(300)).await {
                Some(v) if v["protocol"] == "PushMobileNum" => pushes.push(v),
                Some(other) => panic!("unexpected {other}"),
                None => break,
            }
        }
    }
    (code, pushes)
}

#[tokio::test]
async fn lease_receive_push_and_charge_once() {
    let t = TestPlatform::start().await;
    setup(&t, &["18250794865"], 10).await;
    let token = signup(&t, "alice").await;
    charge(&t, "alice", 100).await;
    let mut ws = Ws::connect(&t).await;
    let login = ws.login(&token).await;
    assert_eq!(login["code"], 0, "{login}");
    assert_eq!(login["data"]["flag"], 3);
    assert_eq!(
        login["data"]["userInfo"],
        json!({"user": "alice", "email": "", "point": 0, "balance": 100})
    );
    let before = wall_clock_secs();
    let (code, pushes) = lease(&mut ws, 1).await;
    assert_eq!(code, 0);
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0]["mobileNum"], "18250794865");
    let until = pushes[0]["useTimestamp"].as_i64().unwrap();
    assert!(until >= before + 1_200 && until <= wall_clock_secs() + 1_200);
    assert_eq!(balance(&t, "alice").await, (100, 10), "price held");
    // The device uploads two codes for the number.
    for code in ["201708", "【欢聚】验证码 171331"] {
        let r = t
            .post_json("/vcodes", json!({"data": [{"mobile": "18250794865", "vcode": code, "appname": ITEM, "chanlid": "hello"}]}))
            .await;
        assert_eq!(r["code"], 200);
    }
    let first = ws.recv().await;
    assert_eq!(
        first,
        json!({"protocol": "PushRecvMsg", "mobileNum": "18250794865", "msg": "201708"})
    );
    let second = ws.recv().await;
    assert_eq!(second["msg"], "【欢聚】验证码 171331");
    assert_eq!(
        balance(&t, "alice").await,
        (90, 0),
        "charged the price exactly once"
    );
    // The codes are also listed for the app, once.
    let r = t.get(&format!("/vcodes/{ITEM}"), &[]).await;
    assert_eq!(r["data"].as_array().unwrap().len(), 2);
    assert_eq!(r["data"][1]["vcode"], "171331");
    // Send a text from the leased number: queued for the device.
    let mut skipped = Vec::new();
    let r = ws
        .request(json!({"protocol": "CSSendMsg", "itemId": ITEM, "mobileNum": "18250794865", "msg": "hello"}), "SCSendMsg", &mut skipped)
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let r = t.get("/sends/dev-1", &[]).await;
    assert_eq!(r["code"], 200);
    assert_eq!(r["data"][0]["mobile"], "18250794865");
    assert_eq!(r["data"][0]["itemId"], ITEM);
    assert_eq!(r["data"][0]["msg"], "hello");
    assert_eq!(t.get("/sends/dev-1", &[]).await["code"], 208);
    assert_eq!(balance(&t, "alice").await, (89, 0));
    // The number is never handed out again for this app.
    assert_eq!(t.get(&format!("/mobiles/{ITEM}/5"), &[]).await["code"], 208);
}

#[tokio::test]
async fn offline_user_gets_the_push_at_next_login() {
    let t = TestPlatform::start().await;
    setup(&t, &["18250794865"], 10).await;
    let token = signup(&t, "bob").await;
    charge(&t, "bob", 10).await;
    let mut ws = Ws::connect(&t).await;
    assert_eq!(ws.login(&token).await["code"], 0);
    assert_eq!(lease(&mut ws, 1).await.0, 0);
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = t
        .post_json(
            "/vcodes",
            json!({"data": [{"mobile": "18250794865", "vcode": "556677"}]}),
        )
        .await;
    assert_eq!(r["code"], 200);
    let mut ws = Ws::connect(&t).await;
    let login = ws.login(&token).await;
    assert_eq!(login["code"], 0);
    assert_eq!(login["data"]["flag"], 1);
    assert_eq!(
        ws.recv().await,
        json!({"protocol": "PushRecvMsg", "mobileNum": "18250794865", "msg": "556677"})
    );
    drop(ws);
    // Delivered once: the next login brings nothing.
    let mut ws = Ws::connect(&t).await;
    assert_eq!(ws.login(&token).await["code"], 0);
    assert!(ws.try_recv(Duration::from_millis(300)).await.is_none());
    assert_eq!(balance(&t, "bob").await, (0, 0));
}

#[tokio::test]
async fn a_lease_without_sms_releases_its_hold() {
    let t = TestPlatform::start_with(|a| a.lease_secs = 1).await;
    setup(&t, &["18250794865", "17342060825"], 10).await;
    let token = signup(&t, "carol").await;
    charge(&t, "carol", 30).await;
    let mut ws = Ws::connect(&t).await;
    assert_eq!(ws.login(&token).await["code"], 0);
    let (code, pushes) = lease(&mut ws, 2).await;
    assert_eq!((code, pushes.len()), (0, 2));
    assert_eq!(balance(&t, "carol").await, (30, 20));
    // The sweeper settles ended leases every second.
    for _ in 0..100 {
        if balance(&t, "carol").await == (30, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        balance(&t, "carol").await,
        (30, 0),
        "hold released, nothing charged"
    );
    // A code after the end reaches nobody and charges nothing.
    t.post_json(
        "/vcodes",
        json!({"data": [{"mobile": "18250794865", "vcode": "123456"}]}),
    )
    .await;
    assert!(ws.try_recv(Duration::from_millis(300)).await.is_none());
    assert_eq!(balance(&t, "carol").await, (30, 0));
}

#[tokio::test]
async fn concurrent_leases_never_share_a_number_or_overdraw() {
    let t = TestPlatform::start().await;
    let numbers: Vec<String> = (0..10).map(|i| format!("1380000{i:04}")).collect();
    let refs: Vec<&str> = numbers.iter().map(String::as_str).collect();
    setup(&t, &refs, 10).await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let name = format!("user{i}");
        let token = signup(&t, &name).await;
        charge(&t, &name, 15).await;
        let mut ws = Ws::connect(&t).await;
        assert_eq!(ws.login(&token).await["code"], 0);
        tasks.push(tokio::spawn(async move {
            // Two attempts each: the second can never be afforded.
            let a = lease(&mut ws, 1).await;
            let b = lease(&mut ws, 1).await;
            (name, a, b)
        }));
    }
    let mut leased = Vec::new();
    for task in tasks {
        let (name, (c1, p1), (c2, p2)) = task.await.unwrap();
        assert!(matches!(c1, 0 | -7), "{name}: {c1}");
        assert!(matches!(c2, -6 | -7), "{name}: {c2}");
        leased.extend(
            p1.into_iter()
                .chain(p2)
                .map(|p| p["mobileNum"].as_str().unwrap().to_owned()),
        );
        let (total, held) = balance(&t, &name).await;
        assert_eq!(total, 15);
        assert!(held == 0 || held == 10, "{name}: held {held}");
        assert!(total - held >= 0);
    }
    assert_eq!(leased.len(), 10);
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 10, "a number was leased twice");
}

/// Unix seconds now: the server under test runs on the system clock.
#[allow(clippy::disallowed_methods, reason = "the real server's clock")]
fn wall_clock_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
