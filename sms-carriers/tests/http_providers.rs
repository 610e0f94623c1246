//! The HTTP providers against fakes on 127.0.0.1 that verify every
//! request's signature (with the signers pinned by the providers'
//! documented examples) and answer as each provider documents: success,
//! throttling, a bad number, a 5xx.

mod fake;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::json;
use sms_carriers::config::{self, CarrierSettings};
use sms_carriers::sign;
use sms_core::carrier::{Carrier, CarrierError, CarrierMessage, MessageKind};
use sms_core::clock::ManualClock;
use sms_core::random::SeededRandom;
use sms_core::sender::Channel;

const OK: &str = "13800000000";
const THROTTLED: &str = "13800000001";
const BAD: &str = "13800000002";
const DOWN: &str = "13800000003";

fn code(to: &str, key: &str) -> CarrierMessage {
    CarrierMessage {
        idempotency_key: key.into(),
        channel: Channel::Sms,
        to: to.into(),
        text: "Your code is 482913".into(),
        kind: MessageKind::Code {
            code: "482913".into(),
            purpose: None,
        },
    }
}

fn task(to: &str, key: &str, temp_id: Option<i64>) -> CarrierMessage {
    CarrierMessage {
        idempotency_key: key.into(),
        channel: Channel::Sms,
        to: to.into(),
        text: "【Shop】Your parcel 42 is here".into(),
        kind: MessageKind::Task {
            template_id: temp_id,
            params: vec![("parcel".into(), "42".into())],
            signature: Some("Shop".into()),
        },
    }
}

fn build(toml: &str) -> Arc<dyn Carrier> {
    let cfg = config::parse(toml).unwrap();
    let carriers = sms_carriers::build::build(
        &cfg,
        &sms_carriers::build::Deps {
            clock: Arc::new(ManualClock::at(1_700_000_000)),
            random: Arc::new(SeededRandom::new(7)),
            outbox: &|_, _| Err("no outbox here".into()),
            smpp_receipts: None,
        },
    )
    .unwrap();
    let name = &cfg.carriers[0].name;
    match &cfg.carriers[0].settings {
        CarrierSettings::Aliyun(_) | CarrierSettings::Tencent(_) | CarrierSettings::Twilio(_) => {}
        other => panic!("{other:?}"),
    }
    carriers[name].clone()
}

/// Asserts the four documented outcomes for one carrier.
async fn four_outcomes(c: &dyn Carrier) {
    let ok = c.send(&code(OK, "k-ok")).await.unwrap();
    assert!(!ok.provider_id.is_empty());
    let e = c.send(&code(THROTTLED, "k-thr")).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
    let e = c.send(&code(BAD, "k-bad")).await.unwrap_err();
    assert!(matches!(e, CarrierError::Permanent { .. }), "{e}");
    let e = c.send(&code(DOWN, "k-down")).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

fn aliyun_answer(phone: &str) -> (u16, String) {
    match phone {
        THROTTLED => (200, json!({"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发分钟级流控Permits:1","RequestId":"r"}).to_string()),
        BAD => (200, json!({"Code":"isv.MOBILE_NUMBER_ILLEGAL","Message":"非法手机号","RequestId":"r"}).to_string()),
        DOWN => (503, json!({"Code":"ServiceUnavailable","Message":"The request has failed due to a temporary failure of the server.","RequestId":"r"}).to_string()),
        _ => (200, json!({"Code":"OK","Message":"OK","BizId":"900619746936498440^0","RequestId":"F655A8D5-B967-440B-8683-DAD6FF8DE990"}).to_string()),
    }
}

/// The form of an Aliyun RPC request whose signature (under `ali-secret`)
/// holds, without `Signature`.
fn rpc_params(s: &fake::Seen) -> Option<Vec<(String, String)>> {
    let mut p = s.form();
    let i = p.iter().position(|(k, _)| k == "Signature")?;
    let (_, sig) = p.remove(i);
    (sign::aliyun_rpc("POST", &p, "ali-secret") == sig).then_some(p)
}

fn sig_mismatch() -> (u16, String) {
    (400, json!({"Code":"SignatureDoesNotMatch","Message":"Specified signature is not matched with our calculation."}).to_string())
}

#[tokio::test]
async fn aliyun_rpc_signed_and_mapped() {
    let nonces = Arc::new(Mutex::new(HashSet::new()));
    let n2 = nonces.clone();
    let f = fake::start(Arc::new(move |s: &fake::Seen| {
        let Some(p) = rpc_params(s) else {
            return sig_mismatch();
        };
        let get = |k: &str| {
            p.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        if !n2.lock().unwrap().insert(get("SignatureNonce")) {
            return (
                400,
                json!({"Code":"SignatureNonceUsed","Message":"used"}).to_string(),
            );
        }
        assert_eq!(get("Action"), "SendSms");
        assert_eq!(get("AccessKeyId"), "LTAIid");
        assert_eq!(get("Timestamp"), "2023-11-14T22:13:20Z");
        aliyun_answer(&get("PhoneNumbers"))
    }))
    .await;
    let c = build(&format!(
        "[[carrier]]\nname = \"ali\"\nkind = \"aliyun\"\nendpoint = \"{}\"\naccess_key_id = \"LTAIid\"\naccess_key_secret = \"ali-secret\"\nsign_name = \"阿里云短信测试\"\ncode_template = \"SMS_154950909\"\ntask_templates = {{ \"3\" = \"SMS_2000001\" }}\n",
        f.url()
    ));
    four_outcomes(c.as_ref()).await;
    // A retry is signed afresh: a new nonce, accepted.
    c.send(&code(OK, "k-ok")).await.unwrap();
    let seen = f.seen();
    let first = seen[0].form();
    let get = |k: &str| {
        first
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("TemplateCode"), "SMS_154950909");
    assert_eq!(get("TemplateParam"), r#"{"code":"482913"}"#);
    assert_eq!(get("OutId"), "k-ok");
    assert_eq!(get("SignName"), "阿里云短信测试");
    // A task uses its mapped template, its own params and its signature.
    c.send(&task(OK, "t:0", Some(3))).await.unwrap();
    let last = f.seen().pop().unwrap().form();
    let get = |k: &str| {
        last.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(
        (get("TemplateCode").as_str(), get("SignName").as_str()),
        ("SMS_2000001", "Shop")
    );
    assert_eq!(get("TemplateParam"), r#"{"parcel":"42"}"#);
    // Without a mapping the carrier skips the task.
    assert!(matches!(
        c.send(&task(OK, "t:1", Some(9))).await,
        Err(CarrierError::Unsupported(_))
    ));
    assert!(matches!(
        c.send(&task(OK, "t:2", None)).await,
        Err(CarrierError::Unsupported(_))
    ));
    // Throttling and the 5xx were retried twice each (the default
    // `retries`), every attempt with a fresh nonce: 1 + 3 + 1 + 3 + 1 + 1.
    assert_eq!(nonces.lock().unwrap().len(), 10);
}

#[tokio::test]
async fn aliyun_v3_signed_and_mapped() {
    let f = fake::start(Arc::new(|s: &fake::Seen| {
        let Some(auth) = s.header("authorization") else {
            return sig_mismatch();
        };
        let Some(rest) = auth.strip_prefix("ACS3-HMAC-SHA256 ") else {
            return sig_mismatch();
        };
        let field = |name: &str| {
            rest.split(',')
                .find_map(|kv| kv.trim().strip_prefix(name))
                .unwrap_or("")
                .to_string()
        };
        let signed = field("SignedHeaders=");
        let headers: Vec<(String, String)> = signed
            .split(';')
            .map(|h| (h.to_string(), s.header(h).unwrap_or("").to_string()))
            .collect();
        let payload = sign::sha256_hex(&s.body);
        if s.header("x-acs-content-sha256") != Some(payload.as_str())
            || field("Credential=") != "LTAIid"
        {
            return sig_mismatch();
        }
        let query = s.query_pairs();
        let (list, sig) = sign::aliyun_v3(
            &sign::AliyunV3Request {
                method: &s.method,
                path: &s.path,
                query: &query,
                headers: &headers,
                payload_sha256: &payload,
            },
            "ali-secret",
        );
        if list != signed || sig != field("Signature=") || !signed.contains("x-acs-signature-nonce")
        {
            return sig_mismatch();
        }
        assert_eq!(s.header("x-acs-action"), Some("SendSms"));
        let phone = query
            .iter()
            .find(|(k, _)| k == "PhoneNumbers")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        aliyun_answer(&phone)
    }))
    .await;
    let c = build(&format!(
        "[[carrier]]\nname = \"ali3\"\nkind = \"aliyun\"\nsignature = \"v3\"\nendpoint = \"{}\"\naccess_key_id = \"LTAIid\"\naccess_key_secret = \"ali-secret\"\nsign_name = \"阿里云短信测试\"\ncode_template = \"SMS_154950909\"\n",
        f.url()
    ));
    four_outcomes(c.as_ref()).await;
    // Transient outcomes are retried twice (the default `retries`).
    assert_eq!(f.seen().len(), 8);
}

#[tokio::test]
async fn tencent_tc3_signed_and_mapped() {
    let f = fake::start(Arc::new(|s: &fake::Seen| {
        let err = |code: &str, msg: &str| {
            (200, json!({"Response":{"Error":{"Code":code,"Message":msg},"RequestId":"r"}}).to_string())
        };
        let ts: i64 = s.header("x-tc-timestamp").and_then(|t| t.parse().ok()).unwrap_or(0);
        let ct = s.header("content-type").unwrap_or("");
        let host = s.header("host").unwrap_or("");
        let action = s.header("x-tc-action").unwrap_or("");
        let expected = sign::tencent_tc3(
            &sign::Tc3Request {
                service: "sms",
                timestamp: ts,
                headers: &[("content-type", ct), ("host", host), ("x-tc-action", action)],
                payload: &s.body,
            },
            "AKIDtest",
            "tc-secret",
        );
        if s.header("authorization") != Some(expected.as_str()) {
            return err("AuthFailure.SignatureFailure", "The provided credentials could not be validated.");
        }
        assert_eq!(s.header("x-tc-version"), Some("2021-01-11"));
        assert_eq!(s.header("x-tc-region"), Some("ap-guangzhou"));
        let body: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(body["SmsSdkAppId"], "1400006666");
        assert_eq!(body["TemplateParamSet"], json!(["482913"]));
        let phone = body["PhoneNumberSet"][0].as_str().unwrap_or("").to_string();
        let ctx = body["SessionContext"].clone();
        let status = |code: &str, msg: &str| {
            (200, json!({"Response":{"SendStatusSet":[{"SerialNo":"5000:1045710669157053657849499619","PhoneNumber":phone,"Fee":1,"SessionContext":ctx,"Code":code,"Message":msg,"IsoCode":"CN"}],"RequestId":"a0aabda6"}}).to_string())
        };
        match phone.trim_start_matches("+86") {
            THROTTLED => err("RequestLimitExceeded", "请求的次数超过了频率限制。"),
            BAD => status("InvalidParameterValue.IncorrectPhoneNumber", "手机号格式错误"),
            DOWN => (502, "<html>bad gateway</html>".into()),
            _ => status("Ok", "send success"),
        }
    }))
    .await;
    let c = build(&format!(
        "[[carrier]]\nname = \"tc\"\nkind = \"tencent\"\nendpoint = \"{}\"\nsecret_id = \"AKIDtest\"\nsecret_key = \"tc-secret\"\nregion = \"ap-guangzhou\"\nsdk_app_id = \"1400006666\"\nsign_name = \"腾讯云\"\ncode_template = \"1110\"\n",
        f.url()
    ));
    four_outcomes(c.as_ref()).await;
    let a = c.send(&code(OK, "k-ok2")).await.unwrap();
    assert_eq!(a.provider_id, "5000:1045710669157053657849499619");
    let body: serde_json::Value = serde_json::from_slice(&f.seen()[0].body).unwrap();
    assert_eq!(body["PhoneNumberSet"], json!(["+8613800000000"]));
    assert_eq!(body["SessionContext"], "k-ok");
    assert_eq!(body["TemplateId"], "1110");
}

#[tokio::test]
async fn twilio_basic_auth_status_callback_and_mapping() {
    use base64::Engine as _;
    let f = fake::start(Arc::new(|s: &fake::Seen| {
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("AC123:tw-token")
        );
        if s.header("authorization") != Some(want.as_str()) {
            return (401, json!({"code":20003,"message":"Authenticate","status":401}).to_string());
        }
        assert_eq!(s.path, "/2010-04-01/Accounts/AC123/Messages.json");
        let form = s.form();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
        assert!(get("StatusCallback").starts_with("https://sms.example.com/carriers/tw/receipts?key="));
        assert_eq!(get("From"), "+15005550006");
        match get("To").trim_start_matches("+86") {
            THROTTLED => (429, json!({"code":20429,"message":"Too Many Requests","status":429}).to_string()),
            BAD => (400, json!({"code":21211,"message":"The 'To' number is not a valid phone number.","more_info":"https://www.twilio.com/docs/errors/21211","status":400}).to_string()),
            DOWN => (500, json!({"code":20500,"message":"Internal Server Error","status":500}).to_string()),
            _ => (201, json!({"sid":"SM1f0e8ae6ade43cb3c0ce4525424e404f","status":"queued","to":get("To"),"body":get("Body")}).to_string()),
        }
    }))
    .await;
    let c = build(&format!(
        "[[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"{}\"\naccount_sid = \"AC123\"\nauth_token = \"tw-token\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\n",
        f.url()
    ));
    four_outcomes(c.as_ref()).await;
    // Twilio sends task text as is (no template needed).
    let a = c.send(&task(OK, "t:0", None)).await.unwrap();
    assert_eq!(a.provider_id, "SM1f0e8ae6ade43cb3c0ce4525424e404f");
    let form = f.seen().pop().unwrap().form();
    assert!(form.contains(&("Body".into(), "【Shop】Your parcel 42 is here".into())));
    assert!(form.contains(&("To".into(), "+8613800000000".into())));
}

#[tokio::test]
async fn unreachable_provider_is_transient_and_not_sent() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let c = build(&format!(
        "[[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"http://127.0.0.1:{port}/\"\naccount_sid = \"AC123\"\nauth_token = \"tw-token\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\n",
    ));
    match c.send(&code(OK, "k")).await {
        Err(CarrierError::Transient {
            maybe_sent, detail, ..
        }) => {
            assert!(!maybe_sent);
            assert!(!detail.contains("tw-token"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn aliyun_send_batch_sms_for_one_template() {
    let f = fake::start(Arc::new(|s: &fake::Seen| {
        if rpc_params(s).is_none() {
            return sig_mismatch();
        }
        (
            200,
            json!({"Code":"OK","Message":"OK","BizId":"batch-1","RequestId":"r"}).to_string(),
        )
    }))
    .await;
    let c = build(&format!(
        "[[carrier]]\nname = \"ali\"\nkind = \"aliyun\"\nendpoint = \"{}\"\naccess_key_id = \"LTAIid\"\naccess_key_secret = \"ali-secret\"\nsign_name = \"阿里云短信测试\"\ncode_template = \"SMS_154950909\"\ntask_templates = {{ \"3\" = \"SMS_2000001\" }}\n",
        f.url()
    ));
    let batch = [
        task(OK, "t:0", Some(3)),
        task("+8613800000009", "t:1", Some(3)),
    ];
    let out = c.send_batch(&batch).await;
    assert!(
        out.iter()
            .all(|r| r.as_ref().is_ok_and(|a| a.provider_id == "batch-1")),
        "{out:?}"
    );
    let seen = f.seen();
    assert_eq!(seen.len(), 1, "one SendBatchSms");
    let form = seen[0].form();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("Action"), "SendBatchSms");
    assert_eq!(get("PhoneNumberJson"), r#"["13800000000","13800000009"]"#);
    assert_eq!(get("SignNameJson"), r#"["Shop","Shop"]"#);
    assert_eq!(
        get("TemplateParamJson"),
        r#"[{"parcel":"42"},{"parcel":"42"}]"#
    );
    // Mixed templates fall back to one SendSms each.
    let mixed = [task(OK, "t:2", Some(3)), code(OK, "c:1")];
    assert_eq!(c.send_batch(&mixed).await.len(), 2);
    assert_eq!(f.seen().len(), 3);
}
