//! Issue 10, item 1: credentials on the pool routes over the real platform.

mod common;

use common::{TestPlatform, ROOT_PASSWORD};
use http::Method;
use serde_json::{json, Value};

const DEV1: &str = "device-one-token-0123456789";
const DEV2: &str = "device-two-token-0123456789";
const ANY_DEV: &str = "device-any-token-0123456789";
const CONSUMER: &str = "consumer-token-0123456789";
const ADMIN: &str = "admin-token-0123456789abc";

async fn with_tokens() -> TestPlatform {
    TestPlatform::start_with(|a| {
        a.device_tokens = vec![
            format!("{DEV1}=dev-1"),
            format!("{DEV2}=dev-2"),
            ANY_DEV.into(),
        ];
        a.consumer_tokens = vec![CONSUMER.into()];
        a.admin_tokens = vec![ADMIN.into()];
    })
    .await
}

/// A pool call with an optional bearer token; the body's JSON.
async fn call(
    t: &TestPlatform,
    method: Method,
    path: &str,
    bearer: Option<&str>,
    body: Value,
) -> Value {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(b) = bearer {
        headers.push(("authorization", format!("Bearer {b}")));
    }
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    let (status, bytes) = t.raw_with(method, path, &headers, body).await;
    assert_eq!(status, 200, "{path}");
    serde_json::from_slice(&bytes).unwrap()
}

fn phones(mobile: &str, cid: &str) -> Value {
    json!({"data": [{"mobile": mobile, "cid": cid, "imsi": "i", "imei": "e", "iccid": "c", "ip": "1.2.3.4"}]})
}

fn vcodes(mobile: &str) -> Value {
    json!({"data": [{"mobile": mobile, "vcode": "201708", "appname": "com.yy.huanju"}]})
}

#[tokio::test]
async fn with_tokens_every_pool_route_refuses_anonymous_calls_and_accepts_the_right_token() {
    let t = with_tokens().await;
    // Anonymous, and with the other kind's token: 401 in the pool envelope.
    let routes: [(Method, &str, Value, &str, &str); 6] = [
        (
            Method::POST,
            "/phones",
            phones("18250794865", "dev-1"),
            DEV1,
            CONSUMER,
        ),
        (
            Method::POST,
            "/vcodes",
            vcodes("18250794865"),
            DEV1,
            CONSUMER,
        ),
        (Method::GET, "/sends/dev-1", Value::Null, DEV1, CONSUMER),
        (
            Method::GET,
            "/mobiles/com.yy.huanju/1",
            Value::Null,
            CONSUMER,
            DEV1,
        ),
        (
            Method::GET,
            "/vcodes/com.yy.huanju",
            Value::Null,
            CONSUMER,
            ANY_DEV,
        ),
        (
            Method::PUT,
            "/setsize?newsize=50",
            Value::Null,
            ADMIN,
            CONSUMER,
        ),
    ];
    for (m, path, body, _, wrong) in &routes {
        for bearer in [None, Some(*wrong), Some("not-a-token-at-all-000000")] {
            let r = call(&t, m.clone(), path, bearer, body.clone()).await;
            assert_eq!(r["code"], 401, "{m} {path} with {bearer:?}: {r}");
        }
    }
    // Nothing was stored by the refused calls.
    assert_eq!(t.core().pool.size().await.unwrap(), 100);
    // The right token, as a header or as the `token` query parameter.
    for (m, path, body, right, _) in &routes {
        let r = call(&t, m.clone(), path, Some(right), body.clone()).await;
        assert!(
            [200, 208].contains(&r["code"].as_i64().unwrap()),
            "{m} {path}: {r}"
        );
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = call(
            &t,
            m.clone(),
            &format!("{path}{sep}token={right}"),
            None,
            body.clone(),
        )
        .await;
        assert!(
            [200, 208].contains(&r["code"].as_i64().unwrap()),
            "{m} {path}?token: {r}"
        );
    }
    assert_eq!(t.core().pool.size().await.unwrap(), 50);
    // Root's HTTP Basic credentials open setsize too; another user's do not.
    let (_, r) = t
        .basic(
            Method::PUT,
            "/setsize?newsize=60",
            Some(("root", ROOT_PASSWORD)),
            None,
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let (_, r) = t
        .basic(
            Method::PUT,
            "/setsize?newsize=0",
            Some(("root", "wrong-password")),
            None,
        )
        .await;
    assert_eq!(r["code"], 401, "{r}");
    assert_eq!(t.core().pool.size().await.unwrap(), 60);
}

#[tokio::test]
async fn a_device_token_bound_to_one_cid_cannot_take_another_devices_number() {
    let t = with_tokens().await;
    let r = call(
        &t,
        Method::POST,
        "/phones",
        Some(DEV1),
        phones("18250794865", "dev-1"),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    // Device 2 can neither re-upload it under its own cid, nor under dev-1's.
    for cid in ["dev-2", "dev-1"] {
        let r = call(
            &t,
            Method::POST,
            "/phones",
            Some(DEV2),
            phones("18250794865", cid),
        )
        .await;
        assert_eq!(r["code"], 403, "{cid}: {r}");
    }
    let number = t
        .core()
        .stores
        .pool
        .number(&sms_core::phone::PhoneNumber::parse_cn_mobile("18250794865").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(number.info.cid, "dev-1");
    // Nor upload codes for it, nor read dev-1's texts.
    let r = call(
        &t,
        Method::POST,
        "/vcodes",
        Some(DEV2),
        vcodes("18250794865"),
    )
    .await;
    assert_eq!(r["code"], 403, "{r}");
    let r = call(&t, Method::GET, "/sends/dev-1", Some(DEV2), Value::Null).await;
    assert_eq!(r["code"], 403, "{r}");
    // Its own device can.
    let r = call(
        &t,
        Method::POST,
        "/vcodes",
        Some(DEV1),
        vcodes("18250794865"),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = call(&t, Method::GET, "/sends/dev-1", Some(DEV1), Value::Null).await;
    assert_eq!(r["code"], 208, "{r}");
}

#[tokio::test]
async fn codes_for_numbers_not_in_the_pool_are_refused() {
    // Without tokens (the seed's open routes) as with them.
    let t = TestPlatform::start().await;
    let r = call(&t, Method::POST, "/vcodes", None, vcodes("18250794865")).await;
    assert_eq!(r["code"], 400, "{r}");
    let r = call(&t, Method::GET, "/vcodes/com.yy.huanju", None, Value::Null).await;
    assert_eq!(r["code"], 208, "nothing was stored: {r}");
    let r = call(
        &t,
        Method::POST,
        "/phones",
        None,
        phones("18250794865", "dev-1"),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = call(&t, Method::POST, "/vcodes", None, vcodes("18250794865")).await;
    assert_eq!(r["code"], 200, "{r}");
}
