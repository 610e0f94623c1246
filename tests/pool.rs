//! `pool` (seed 003) and the root-only `/v2/item`, `/v2/ban`, `/v2/charge`
//! over HTTP against the real platform.

mod common;

use common::TestPlatform;
use http::{Method, StatusCode};
use serde_json::{json, Value};

fn entry(mobile: &str) -> Value {
    json!({"mobile": mobile, "cid": "hello", "imsi": "zjgcghsdv", "imei": "56416", "iccid": "s5d45s", "ip": "8.88.888.886"})
}

async fn upload(t: &TestPlatform, data: Value) -> Value {
    t.post_json("/phones", json!({ "data": data })).await
}

async fn set_size(t: &TestPlatform, q: &str) -> Value {
    let (s, v) = t
        .call(Method::PUT, &format!("/setsize?{q}"), None, vec![])
        .await;
    assert_eq!(s, StatusCode::OK);
    v
}

const BAD: &str = "The data that you have submitted is not all correct !";

#[tokio::test]
async fn phones_upload_normalises_and_lists_used() {
    let t = TestPlatform::start().await;
    let r = upload(
        &t,
        json!([entry("18250794865"), entry("+86 173-4206-0825")]),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(r["phonesUsed"], json!(["18250794865", "17342060825"]));
    assert!(r["msg"]
        .as_str()
        .unwrap()
        .starts_with("Thanks for your contribution"));
    // Re-upload: refreshed, listed, not counted.
    let mut e = entry("18250794865");
    e["cid"] = json!("world");
    let r = upload(&t, json!([e])).await;
    assert_eq!(r["phonesUsed"], json!(["18250794865"]));
    let r = t.get("/mobiles/com.yy.huanju/8", &[]).await;
    assert_eq!(r["code"], 200);
    let data = r["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let first = data.iter().find(|d| d["mobile"] == "18250794865").unwrap();
    assert_eq!(first["cid"], "world");
    for k in ["mobile", "cid", "imsi", "imei", "iccid", "ip"] {
        assert!(first[k].is_string(), "{k} in {first}");
    }
    // Never twice for the same app; 208 then.
    let r = t.get("/mobiles/com.yy.huanju/8", &[]).await;
    assert_eq!(r["code"], 208);
    assert!(r["desc"].as_str().unwrap().starts_with("Sorry"));
    // Another app gets them.
    assert_eq!(
        t.get("/mobiles/other.app/1", &[]).await["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn phones_invalid_entry_rejects_everything() {
    let t = TestPlatform::start().await;
    for data in [
        json!([entry("18250794865"), entry("12345")]),
        json!([entry("18250794865"), {"cid": "x"}]),
        json!([entry("18250794865"), {"mobile": 18250794866u64}]),
        json!([entry("18250794865"), {"mobile": "18250794866", "cid": 5}]),
        json!([entry("18250794865"), "18250794866"]),
        json!([]),
        json!("x"),
    ] {
        let r = t.post_json("/phones", json!({ "data": data })).await;
        assert_eq!(r, json!({"code": 400, "desc": BAD}), "{data}");
    }
    for body in [&b"not json"[..], b"{}", b"[]", b"{\"data\":null}"] {
        let (_, r) = t
            .call(
                Method::POST,
                "/phones",
                Some("application/json"),
                body.to_vec(),
            )
            .await;
        assert_eq!(r["code"], 400);
    }
    assert_eq!(
        t.get("/mobiles/app/10", &[]).await["code"],
        208,
        "nothing was stored"
    );
}

#[tokio::test]
async fn pool_size_caps_intake_with_406() {
    let t = TestPlatform::start().await;
    assert_eq!(
        set_size(&t, "newsize=2").await,
        json!({"code": 200, "data": "Update Successfully!"})
    );
    let r = upload(
        &t,
        json!([
            entry("13800000001"),
            entry("13800000002"),
            entry("13800000003")
        ]),
    )
    .await;
    assert_eq!(r["phonesUsed"], json!(["13800000001", "13800000002"]));
    let r = upload(&t, json!([entry("13800000004")])).await;
    assert_eq!(r["code"], 406, "{r}");
    assert!(r["desc"].as_str().unwrap().contains("enough data"));
    assert_eq!(set_size(&t, "newsize=0").await["code"], 200);
    assert_eq!(upload(&t, json!([entry("13800000005")])).await["code"], 406);
    for q in ["newsize=-1", "newsize=abc", "", "newsize=", "newsize=1.5"] {
        assert_eq!(
            set_size(&t, q).await,
            json!({"code": 400, "desc": BAD}),
            "{q}"
        );
    }
    let (s, _) = t
        .call(Method::GET, "/setsize?newsize=3", None, vec![])
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn mobiles_count_rules() {
    let t = TestPlatform::start().await;
    upload(&t, json!([entry("13800000001")])).await;
    for n in ["0", "101", "abc", "-1", "1.5", "+5", "%2B5", "%205"] {
        assert_eq!(
            t.get(&format!("/mobiles/app/{n}"), &[]).await["code"],
            400,
            "{n}"
        );
    }
    assert_eq!(t.get("/mobiles/app/100", &[]).await["code"], 200);
}

#[tokio::test]
async fn vcodes_queue_per_app_once_oldest_first() {
    let t = TestPlatform::start().await;
    // Codes are kept only for numbers in the pool (issue 10).
    upload(&t, json!([entry("18250794865"), entry("17342060825")])).await;
    let r = t
        .post_json(
            "/vcodes",
            json!({"data": [
                {"mobile": "18250794865", "vcode": "201708", "appname": "com.yy.huanju", "chanlid": "hello"},
                {"mobile": "17342060825", "vcode": "【欢聚】验证码171331，5分钟内有效", "appname": "com.yy.huanju", "chanlid": "world"},
                {"mobile": "17342060825", "vcode": "999999"}
            ]}),
        )
        .await;
    assert_eq!(r, json!({"code": 200, "msg": "Save successfully~"}));
    let r = t.get("/vcodes/com.yy.huanju", &[]).await;
    assert_eq!(
        r,
        json!({"code": 200, "data": [
            {"mobile": "18250794865", "vcode": "201708", "appname": "com.yy.huanju", "chanlid": "hello"},
            {"mobile": "17342060825", "vcode": "171331", "appname": "com.yy.huanju", "chanlid": "world"}
        ]})
    );
    assert_eq!(t.get("/vcodes/com.yy.huanju", &[]).await["code"], 208);
    for data in [
        json!([{"mobile": "18250794865"}]),
        json!([{"mobile": "1825079486", "vcode": "1"}]),
        json!([{"mobile": "18250794865", "vcode": 201708}]),
        json!([{"mobile": "18250794865", "vcode": "1", "appname": 3}]),
        json!([]),
    ] {
        let r = t.post_json("/vcodes", json!({ "data": data })).await;
        assert_eq!(r["code"], 400, "{data}");
    }
}

#[tokio::test]
async fn sends_is_208_when_empty() {
    let t = TestPlatform::start().await;
    assert_eq!(t.get("/sends/hello", &[]).await["code"], 208);
}

#[tokio::test]
async fn admin_routes_are_root_only_with_sendapi_errors() {
    let t = TestPlatform::start().await;
    assert_eq!(
        t.post_form("/signup", &[("user", "alice"), ("password", "secret1")])
            .await["code"],
        0
    );
    let item = json!({"item_id": "com.yy.huanju", "name": "欢聚", "price": 10, "send_price": 2});
    for path in ["/v2/item", "/v2/charge", "/v2/ban"] {
        let (s, v) = t.basic(Method::POST, path, None, Some(item.clone())).await;
        assert_eq!(
            (s, v["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("ER:0001")),
            "{path}"
        );
        assert_eq!(v["message"], "auth not pass");
        let (s, v) = t
            .basic(
                Method::POST,
                path,
                Some(("root", "wrong-pass")),
                Some(item.clone()),
            )
            .await;
        assert_eq!(
            (s, v["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("ER:0001"))
        );
        let (s, v) = t
            .basic(
                Method::POST,
                path,
                Some(("alice", "secret1")),
                Some(item.clone()),
            )
            .await;
        assert_eq!(
            (s, v["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("ER:0003")),
            "{path}"
        );
        assert_eq!(v["message"], "please use root user request");
        let (s, v) = t
            .raw_with(
                Method::POST,
                path,
                &[("authorization", basic("root", common::ROOT_PASSWORD))],
                b"nope".to_vec(),
            )
            .await;
        let v: Value = serde_json::from_slice(&v).unwrap();
        assert_eq!(
            (s, v["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("ER:0002"))
        );
    }
    let (s, v) = t.root(Method::POST, "/v2/item", item).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"message": "ok"})));
    let (s, v) = t
        .root(
            Method::POST,
            "/v2/item",
            json!({"item_id": "x", "price": "10", "send_price": 1}),
        )
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0004"))
    );
    let (s, v) = t
        .root(
            Method::POST,
            "/v2/charge",
            json!({"user": "alice", "charge": 100}),
        )
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"message": "ok"})));
    for bad in [
        json!({"user": "nobody", "charge": 1}),
        json!({"user": "alice", "charge": 0}),
        json!({"user": "alice", "charge": "1"}),
        json!({"charge": 1}),
    ] {
        let (s, v) = t.root(Method::POST, "/v2/charge", bad.clone()).await;
        assert_eq!(
            (s, v["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("ER:0004")),
            "{bad}"
        );
    }
    // A retried charge with the same op_id applies once.
    for _ in 0..3 {
        let (s, _) = t
            .root(
                Method::POST,
                "/v2/charge",
                json!({"user": "alice", "charge": 50, "op_id": "topup-1"}),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let alice = t
        .core()
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        t.core().billing.balance(&alice.id).await.unwrap().total,
        150
    );
    let (s, v) = t
        .root(Method::POST, "/v2/ban", json!({"user": "alice"}))
        .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"message": "ok"})));
    assert_eq!(
        t.post_form("/login", &[("user", "alice"), ("password", "secret1")])
            .await["code"],
        -6
    );
    let (s, v) = t
        .root(Method::POST, "/v2/ban", json!({"user": "nobody"}))
        .await;
    assert_eq!(
        (s, v["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("ER:0004"))
    );
}

fn basic(u: &str, p: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
    )
}
