//! sendapi tasks through `--carriers`: a Twilio fake that is down at first
//! (5xx) loses nothing — the recipients stay pending and are delivered when
//! it recovers; with SMPP first in the route, a task reaches the npm SMSC
//! (`sms-carriers/tests/smsc`); a task split between the SMSC and the
//! Twilio fake ends `delivered` or `failed` from their receipts (SMPP
//! `deliver_sm`, Twilio's signed status callback) with exactly one refund
//! per failed recipient, and replayed receipts change nothing.

mod common;

#[path = "../sms-carriers/tests/fake/mod.rs"]
mod fake;
#[path = "../sms-carriers/tests/smsc/install.rs"]
mod smsc_install;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::TestPlatform;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sms_core::store::EntryQuery;

const PW: &str = "secret1";

async fn user(
    t: &TestPlatform,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.basic(method, path, Some(("alice", PW)), body).await
}

/// alice, an approved signature and template, and a balance; the task's
/// uuid after posting it to `mobiles`.
async fn post_task(t: &TestPlatform, mobiles: &[&str]) -> String {
    assert_eq!(
        t.post_form("/signup", &[("user", "alice"), ("password", PW)])
            .await["code"],
        0
    );
    let (_, s) = user(
        t,
        Method::POST,
        "/v1/signature",
        Some(json!({"signature": "欢聚", "source": "公司", "pics": ["https://x/1.png"]})),
    )
    .await;
    let sign_id = s["sign_id"].as_i64().unwrap();
    let (_, tp) = user(t, Method::POST, "/v1/template", Some(json!({"name": "通知", "template": "您的包裹${no}已到", "type": 1, "description": "d", "sign_id": sign_id}))).await;
    let temp_id = tp["temp_id"].as_i64().unwrap();
    for (path, key, id) in [
        ("/v2/signreview", "sign_id", sign_id),
        ("/v2/tempreview", "temp_id", temp_id),
    ] {
        assert_eq!(
            t.root(
                Method::POST,
                path,
                json!({key: id, "audit_status": "passed"})
            )
            .await
            .0,
            StatusCode::OK
        );
    }
    assert_eq!(
        t.root(
            Method::POST,
            "/v2/charge",
            json!({"user": "alice", "charge": 100})
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, r) = user(t, Method::POST, "/v1/message", Some(json!({"sign_id": sign_id, "temp_id": temp_id, "mobiles": mobiles, "params": {"no": "42"}}))).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    r["uuid"].as_str().unwrap().to_string()
}

async fn task(t: &TestPlatform, uuid: &str) -> Value {
    user(t, Method::GET, &format!("/v1/message?uuid={uuid}"), None)
        .await
        .1
}

/// Polls until the task is done (bounded; not a timing assertion).
async fn done(t: &TestPlatform, uuid: &str) -> Value {
    for _ in 0..600 {
        let r = task(t, uuid).await;
        if r["status"] == "done" {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {uuid} not done");
}

fn carriers_file(dir: &std::path::Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("carriers.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[tokio::test]
async fn a_twilio_outage_loses_no_task_message() {
    let up = Arc::new(AtomicBool::new(false));
    let up2 = up.clone();
    let tw = fake::start(Arc::new(move |s: &fake::Seen| {
        if !up2.load(Ordering::SeqCst) {
            return (
                503,
                json!({"code": 20503, "message": "Service Unavailable", "status": 503}).to_string(),
            );
        }
        let to = s
            .form()
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .unwrap_or_default();
        (
            201,
            json!({"sid": format!("SM{}", to.trim_start_matches('+')), "status": "queued"})
                .to_string(),
        )
    }))
    .await;
    let url = tw.url();
    let t = TestPlatform::start_with(|a| {
        let body = format!(
            "[[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"{url}\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\nretries = 0\n\n[routes]\ntasks = [\"tw\"]\n"
        );
        a.carriers = Some(carriers_file(a.data.parent().unwrap(), &body));
    })
    .await;
    let uuid = post_task(&t, &["13900000001", "13900000002"]).await;
    // While Twilio is down the task is offered and stays open.
    for _ in 0..600 {
        if tw.seen().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tw.seen().len() >= 2, "offered while down");
    assert_ne!(task(&t, &uuid).await["status"], "done");
    up.store(true, Ordering::SeqCst);
    let r = done(&t, &uuid).await;
    assert!(t.outbox_lines().is_empty(), "routed tasks skip the outbox");
    let delivered: Vec<(String, String)> = tw
        .seen()
        .iter()
        .filter_map(|s| {
            let f = s.form();
            let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            Some((get("To")?, get("Body")?))
        })
        .collect();
    for to in ["+8613900000001", "+8613900000002"] {
        assert!(
            delivered.contains(&(to.to_string(), "【欢聚】您的包裹42已到".to_string())),
            "{delivered:?}"
        );
    }
    assert_eq!(r["status"], "done", "{r}");
}

/// The npm SMSC (`sms-carriers/tests/smsc`), installed by `npm ci` if
/// needed: the child, its output lines and its port; `None` without
/// Node.js (the test then says it skipped).
async fn smsc(
    test: &str,
) -> Option<(
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    u16,
)> {
    let have_node = std::process::Command::new("node")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_node {
        eprintln!("SKIPPED {test}: `node` is not installed");
        return None;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sms-carriers/tests/smsc");
    smsc_install::install_smsc(&dir);
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("node")
        .args(["smsc.js", "0"])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let port: u16 = first.strip_prefix("LISTENING ").unwrap().parse().unwrap();
    Some((child, lines, port))
}

#[tokio::test]
async fn a_task_reaches_the_smpp_peer() {
    let Some((_child, mut lines, port)) = smsc("a_task_reaches_the_smpp_peer").await else {
        return;
    };
    let t = TestPlatform::start_with(|a| {
        let body = format!(
            "[[carrier]]\nname = \"smsc\"\nkind = \"smpp\"\nhost = \"127.0.0.1\"\nport = {port}\nsystem_id = \"sys\"\npassword = \"pw\"\nsource_addr = \"10690000\"\n\n[routes]\ntasks = [\"smsc\"]\n"
        );
        a.carriers = Some(carriers_file(a.data.parent().unwrap(), &body));
    })
    .await;
    let uuid = post_task(&t, &["13900000000"]).await;
    let r = done(&t, &uuid).await;
    assert_eq!(r["status"], "done", "{r}");
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if line.starts_with("MESSAGE ") {
            assert_eq!(line, "MESSAGE 8613900000000 8 \"【欢聚】您的包裹42已到\"");
            break;
        }
    }
}

/// Polls until no recipient of the task is `sent` any more (bounded; not
/// a timing assertion).
async fn reported(t: &TestPlatform, uuid: &str) -> Value {
    for _ in 0..600 {
        let r = task(t, uuid).await;
        if r["status"] == "done" && r["sent"] == 0 && r["pending"] == 0 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {uuid}: receipts not applied: {}", task(t, uuid).await);
}

/// alice's ledger entries.
async fn alice_entries(t: &TestPlatform) -> Vec<sms_core::ledger::LedgerEntry> {
    let u = t
        .core()
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap();
    t.core()
        .stores
        .ledger
        .entries(&EntryQuery::User(u.id.clone()))
        .await
        .unwrap()
}

/// Twilio's status callback for the message Twilio's fake saw for `to`:
/// posted to the `StatusCallback` the platform gave, signed as Twilio signs
/// it; the answer's status.
async fn twilio_callback(
    t: &TestPlatform,
    seen: &[fake::Seen],
    to: &str,
    status: &str,
    error: Option<&str>,
) -> StatusCode {
    let form = seen
        .iter()
        .map(fake::Seen::form)
        .find(|f| f.iter().any(|(k, v)| k == "To" && v == to))
        .unwrap_or_else(|| panic!("Twilio never saw {to}"));
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let callback = get("StatusCallback");
    let path = callback
        .strip_prefix("https://sms.example.com")
        .expect("StatusCallback on public_url")
        .to_string();
    let mut params = vec![
        ("MessageSid".to_string(), format!("SM{}", &to[1..])),
        ("MessageStatus".to_string(), status.to_string()),
        ("To".to_string(), to.to_string()),
        ("AccountSid".to_string(), "AC1".to_string()),
    ];
    if let Some(e) = error {
        params.push(("ErrorCode".to_string(), e.to_string()));
    }
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish();
    let sig = sms_carriers::sign::twilio("tok", &callback, &params);
    t.raw_with(
        Method::POST,
        &path,
        &[
            ("content-type", "application/x-www-form-urlencoded".into()),
            ("x-twilio-signature", sig),
        ],
        body.into_bytes(),
    )
    .await
    .0
}

#[tokio::test]
async fn task_recipients_end_delivered_or_failed_from_receipts_with_one_refund_each() {
    let test = "task_recipients_end_delivered_or_failed_from_receipts_with_one_refund_each";
    let Some((_child, mut lines, port)) = smsc(test).await else {
        return;
    };
    // Twilio's fake checks the account's Basic auth and accepts.
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "AC1:tok")
    );
    let tw = fake::start(Arc::new(move |s: &fake::Seen| {
        if s.header("authorization") != Some(basic.as_str()) {
            return (401, json!({"code": 20003, "status": 401}).to_string());
        }
        let to = s
            .form()
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .unwrap_or_default();
        (
            201,
            json!({"sid": format!("SM{}", to.trim_start_matches('+')), "status": "queued"})
                .to_string(),
        )
    }))
    .await;
    let url = tw.url();
    // 139… through the SMSC, 137… through Twilio (a prefix route).
    let t = TestPlatform::start_with(|a| {
        let body = format!(
            r#"
[[carrier]]
name = "smsc"
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "sys"
password = "pw"
source_addr = "10690000"

[[carrier]]
name = "tw"
kind = "twilio"
endpoint = "{url}"
account_sid = "AC1"
auth_token = "tok"
from = "+15005550006"
public_url = "https://sms.example.com"

[routes]
tasks = ["smsc"]

[[routes.prefix]]
prefix = "86137"
tasks = ["tw"]
"#
        );
        a.carriers = Some(carriers_file(a.data.parent().unwrap(), &body));
    })
    .await;
    // The SMSC reports a destination ending in 1 undelivered.
    let mobiles = ["13900000000", "13900000001", "13700000000", "13700000001"];
    let uuid = post_task(&t, &mobiles).await;
    let charged = alice_entries(&t).await;
    assert_eq!(
        charged.last().unwrap().balance_after.total,
        100 - 4,
        "4 recipients × 1 segment charged"
    );
    done(&t, &uuid).await;
    // Both messages reached the SMPP peer.
    let mut smpp_seen = Vec::new();
    while smpp_seen.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(m) = line.strip_prefix("MESSAGE ") {
            smpp_seen.push(m.to_string());
        }
    }
    smpp_seen.sort();
    assert_eq!(
        smpp_seen,
        [
            "8613900000000 8 \"【欢聚】您的包裹42已到\"",
            "8613900000001 8 \"【欢聚】您的包裹42已到\""
        ]
    );
    // Both reached Twilio's fake, with their status callbacks.
    let seen = tw.seen();
    assert_eq!(seen.len(), 2, "one request per Twilio recipient");
    for to in ["+8613700000000", "+8613700000001"] {
        assert_eq!(
            twilio_callback(
                &t,
                &seen,
                to,
                if to.ends_with('1') {
                    "undelivered"
                } else {
                    "delivered"
                },
                to.ends_with('1').then_some("30003"),
            )
            .await,
            StatusCode::OK
        );
    }
    // An unsigned callback is refused and changes nothing.
    let (s, _) = t
        .raw(
            Method::POST,
            "/carriers/tw/receipts",
            Some("application/x-www-form-urlencoded"),
            b"MessageSid=SM8613700000000&MessageStatus=failed".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let r = reported(&t, &uuid).await;
    let by_mobile = |m: &str| -> Value {
        r["recipients"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["mobile"] == m)
            .cloned()
            .unwrap()
    };
    for (m, status, carrier, code) in [
        ("13900000000", "delivered", "smsc", "DELIVRD"),
        ("13900000001", "failed", "smsc", "UNDELIV/034"),
        ("13700000000", "delivered", "tw", "delivered"),
        ("13700000001", "failed", "tw", "30003"),
    ] {
        let x = by_mobile(m);
        assert_eq!(x["status"], status, "{m}: {x}");
        assert_eq!(x["carrier"], carrier, "{m}: {x}");
        assert_eq!(x["carrier_code"], code, "{m}: {x}");
    }
    assert_eq!(
        (r["delivered"].as_i64(), r["failed"].as_i64()),
        (Some(2), Some(2)),
        "{r}"
    );
    // Exactly one refund per failed recipient (1 segment × 1 unit each).
    let entries = alice_entries(&t).await;
    let refunds: Vec<(String, i64)> = entries
        .iter()
        .filter(|e| e.request.op_id.starts_with("refund:"))
        .map(|e| (e.request.op_id.clone(), e.request.op.total_delta()))
        .collect();
    let index = |m: &str| mobiles.iter().position(|x| *x == m).unwrap();
    let mut expected = vec![
        (format!("refund:{uuid}:{}", index("13900000001")), 1),
        (format!("refund:{uuid}:{}", index("13700000001")), 1),
    ];
    let mut got = refunds.clone();
    got.sort();
    expected.sort();
    assert_eq!(got, expected);
    let balance = entries.last().unwrap().balance_after.total;
    assert_eq!(balance, 100 - 4 + 2);
    // Replays change nothing: Twilio's callbacks again (a contradicting
    // `delivered` for the failed one included; each answered once applied)
    // and the SMSC's receipts through the core.
    for (to, status, error) in [
        ("+8613700000001", "undelivered", Some("30003")),
        ("+8613700000001", "delivered", None),
        ("+8613700000000", "failed", Some("30008")),
    ] {
        assert_eq!(
            twilio_callback(&t, &seen, to, status, error).await,
            StatusCode::OK
        );
    }
    let owner = t
        .core()
        .accounts
        .user_by_username("alice")
        .await
        .unwrap()
        .unwrap();
    let (_, statuses) = t.core().sending.task(&owner.id, &uuid).await.unwrap();
    for i in [index("13900000000"), index("13900000001")] {
        let sms_core::sending::RecipientStatus::Reported { gateway_id, .. } = &statuses[i] else {
            panic!("{:?}", statuses[i]);
        };
        for status in [
            sms_core::carrier::DeliveryStatus::Failed,
            sms_core::carrier::DeliveryStatus::Delivered,
        ] {
            let receipt = sms_core::carrier::Receipt {
                provider_id: gateway_id.clone(),
                idempotency_key: None,
                recipient: None,
                status,
                carrier_code: "UNDELIV/034".into(),
            };
            let out = t
                .core()
                .sending
                .apply_receipt("smsc", &receipt)
                .await
                .unwrap();
            assert!(
                matches!(out, sms_core::sending::ReceiptOutcome::Unchanged(_)),
                "{out:?}"
            );
        }
    }
    // A callback is answered once applied, so the replays above are in.
    let r2 = reported(&t, &uuid).await;
    assert_eq!(
        r2["recipients"], r["recipients"],
        "replays change no status"
    );
    let after = alice_entries(&t).await;
    assert_eq!(after.len(), entries.len(), "replays refund nothing");
    assert_eq!(after.last().unwrap().balance_after.total, balance);
}

/// An Aliyun fake that verifies the RPC signature of every request and
/// accepts with a `BizId` per number.
async fn aliyun_fake() -> fake::Fake {
    fake::start(Arc::new(|s: &fake::Seen| {
        let mut p = s.form();
        let Some(i) = p.iter().position(|(k, _)| k == "Signature") else {
            return (400, json!({"Code": "SignatureDoesNotMatch"}).to_string());
        };
        let (_, sig) = p.remove(i);
        if sms_carriers::sign::aliyun_rpc("POST", &p, "ali-secret") != sig {
            return (400, json!({"Code": "SignatureDoesNotMatch"}).to_string());
        }
        let phone = p
            .iter()
            .find(|(k, _)| k == "PhoneNumbers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        (
            200,
            json!({"Code": "OK", "Message": "OK", "BizId": format!("biz-{phone}"), "RequestId": "r"})
                .to_string(),
        )
    }))
    .await
}

/// A Tencent fake that verifies the TC3 signature of every request and
/// accepts with a `SerialNo`.
async fn tencent_fake() -> fake::Fake {
    fake::start(Arc::new(|s: &fake::Seen| {
        let h = |n: &str| s.header(n).unwrap_or("").to_string();
        let expected = sms_carriers::sign::tencent_tc3(
            &sms_carriers::sign::Tc3Request {
                service: "sms",
                timestamp: h("x-tc-timestamp").parse().unwrap_or(0),
                headers: &[
                    ("content-type", &h("content-type")),
                    ("host", &h("host")),
                    ("x-tc-action", &h("x-tc-action")),
                ],
                payload: &s.body,
            },
            "AKIDtest",
            "tc-secret",
        );
        if h("authorization") != expected {
            return (200, json!({"Response": {"Error": {"Code": "AuthFailure.SignatureFailure", "Message": "bad"}, "RequestId": "r"}}).to_string());
        }
        let body: Value = serde_json::from_slice(&s.body).unwrap_or_default();
        let to = body["PhoneNumberSet"][0].as_str().unwrap_or("").to_string();
        (200, json!({"Response": {"SendStatusSet": [{"SerialNo": format!("sn-{to}"), "PhoneNumber": to, "Code": "Ok", "Message": "send success"}], "RequestId": "r"}}).to_string())
    }))
    .await
}

#[tokio::test]
async fn task_messages_go_through_aliyun_and_tencent_templates_and_their_receipts() {
    let (ali, tc) = (aliyun_fake().await, tencent_fake().await);
    let (ali_url, tc_url) = (ali.url(), tc.url());
    // The fresh store's first template is temp_id 1: mapped for both.
    let t = TestPlatform::start_with(|a| {
        let body = format!(
            r#"
[[carrier]]
name = "ali"
kind = "aliyun"
endpoint = "{ali_url}"
access_key_id = "LTAIid"
access_key_secret = "ali-secret"
sign_name = "阿里云短信测试"
code_template = "SMS_154950909"
task_templates = {{ "1" = "SMS_2000001" }}
callback_token = "ali-cb-token"

[[carrier]]
name = "tc"
kind = "tencent"
endpoint = "{tc_url}"
secret_id = "AKIDtest"
secret_key = "tc-secret"
region = "ap-guangzhou"
sdk_app_id = "1400006666"
sign_name = "腾讯云"
code_template = "1110"
task_templates = {{ "1" = "2000001" }}
callback_token = "tc-cb-token"

[routes]
tasks = ["ali"]

[[routes.prefix]]
prefix = "86137"
tasks = ["tc"]
"#
        );
        a.carriers = Some(carriers_file(a.data.parent().unwrap(), &body));
    })
    .await;
    let uuid = post_task(&t, &["13900000000", "13700000000"]).await;
    let r = done(&t, &uuid).await;
    assert_eq!(r["temp_id"], 1, "{r}");
    assert_eq!(r["sent"], 2, "{r}");
    // Aliyun: the mapped template, the task's own signature, params by
    // name, the idempotency key as OutId.
    let seen = ali.seen();
    assert_eq!(seen.len(), 1, "one signed SendSms");
    let form = seen[0].form();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("Action"), "SendSms");
    assert_eq!(get("PhoneNumbers"), "13900000000");
    assert_eq!(get("TemplateCode"), "SMS_2000001");
    assert_eq!(get("SignName"), "欢聚");
    assert_eq!(
        serde_json::from_str::<Value>(&get("TemplateParam")).unwrap(),
        json!({"no": "42"})
    );
    let ali_key = get("OutId");
    assert_eq!(ali_key, format!("{uuid}:0"));
    // Tencent: positional params, the key as SessionContext.
    let seen = tc.seen();
    assert_eq!(seen.len(), 1, "one signed SendSms");
    let body: Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["PhoneNumberSet"], json!(["+8613700000000"]));
    assert_eq!(body["TemplateId"], "2000001");
    assert_eq!(body["TemplateParamSet"], json!(["42"]));
    assert_eq!(body["SignName"], "欢聚");
    assert_eq!(body["SessionContext"], format!("{uuid}:1"));
    // Their receipts, matched by the echoed key: Aliyun delivered, Tencent
    // failed (refunded once, even when pushed twice).
    let report = json!([{"phone_number": "13900000000", "success": true, "err_code": "DELIVERED", "biz_id": "biz-13900000000", "out_id": ali_key}]).to_string();
    let (s, _) = t
        .raw(
            Method::POST,
            "/carriers/ali/receipts?token=ali-cb-token",
            Some("application/json"),
            report.into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let cb = json!([{"mobile": "13700000000", "nationcode": "86", "report_status": "FAIL", "errmsg": "MI:0013", "sid": "sn-+8613700000000", "ext": format!("{uuid}:1")}]).to_string();
    for _ in 0..2 {
        let (s, _) = t
            .raw(
                Method::POST,
                "/carriers/tc/receipts?token=tc-cb-token",
                Some("application/json"),
                cb.clone().into_bytes(),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let r = reported(&t, &uuid).await;
    let statuses: Vec<(&str, &str, &str)> = r["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["status"].as_str().unwrap(),
                x["carrier"].as_str().unwrap(),
                x["carrier_code"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("delivered", "ali", "DELIVERED"),
            ("failed", "tc", "MI:0013")
        ]
    );
    let entries = alice_entries(&t).await;
    let refunds: Vec<&str> = entries
        .iter()
        .map(|e| e.request.op_id.as_str())
        .filter(|id| id.starts_with("refund:"))
        .collect();
    assert_eq!(refunds, [format!("refund:{uuid}:1")]);
    assert_eq!(entries.last().unwrap().balance_after.total, 100 - 2 + 1);
}

#[tokio::test]
async fn task_messages_queued_during_an_outage_survive_a_restart() {
    let up = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (up2, accepted2) = (up.clone(), accepted.clone());
    let tw = fake::start(Arc::new(move |s: &fake::Seen| {
        if !up2.load(Ordering::SeqCst) {
            return (503, json!({"code": 20503, "status": 503}).to_string());
        }
        let to = s
            .form()
            .into_iter()
            .find(|(k, _)| k == "To")
            .map(|(_, v)| v)
            .unwrap_or_default();
        accepted2.lock().unwrap().push(to.clone());
        (
            201,
            json!({"sid": format!("SM{}", to.trim_start_matches('+')), "status": "queued"})
                .to_string(),
        )
    }))
    .await;
    let url = tw.url();
    let mut t = TestPlatform::start_with(|a| {
        let body = format!(
            "[[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"{url}\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\nretries = 0\n\n[routes]\ntasks = [\"tw\"]\n"
        );
        a.carriers = Some(carriers_file(a.data.parent().unwrap(), &body));
    })
    .await;
    // Accepted means stored: the task and its pending recipients are on
    // disk before the uuid is answered.
    let uuid = post_task(&t, &["13900000001", "13900000002"]).await;
    for _ in 0..600 {
        if tw.seen().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tw.seen().len() >= 2, "offered while down");
    t.restart().await;
    let r = task(&t, &uuid).await;
    assert_eq!(
        (r["status"].as_str(), r["pending"].as_i64()),
        (Some("queued"), Some(2)),
        "{r}"
    );
    up.store(true, Ordering::SeqCst);
    let r = done(&t, &uuid).await;
    assert_eq!(r["sent"], 2, "{r}");
    let mut got = accepted.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        ["+8613900000001", "+8613900000002"],
        "each message accepted once, after the restart"
    );
}
