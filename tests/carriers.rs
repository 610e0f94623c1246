//! `--carriers` in the platform: a bad file stops the start naming line and
//! key (never a secret); account_v4 codes reach the Aliyun fake (signature
//! verified) and can then be checked; a route fails over from a refusing
//! Tencent fake to Aliyun; `POST /carriers/<name>/receipts` checks tokens and
//! Twilio signatures and answers as each provider expects.

mod common;

#[path = "../sms-carriers/tests/fake/mod.rs"]
mod fake;

use std::sync::Arc;

use common::TestPlatform;
use http::{Method, StatusCode};
use serde_json::json;
use sms_carriers::sign;
use sms_platform::Platform;

/// An Aliyun fake that verifies the RPC signature and accepts.
async fn aliyun_fake() -> fake::Fake {
    fake::start(Arc::new(|s: &fake::Seen| {
        let mut p = s.form();
        let Some(i) = p.iter().position(|(k, _)| k == "Signature") else {
            return (400, json!({"Code":"SignatureDoesNotMatch"}).to_string());
        };
        let (_, sig) = p.remove(i);
        if sign::aliyun_rpc("POST", &p, "ali-secret") != sig {
            return (400, json!({"Code":"SignatureDoesNotMatch"}).to_string());
        }
        (
            200,
            json!({"Code":"OK","Message":"OK","BizId":"biz-1","RequestId":"r"}).to_string(),
        )
    }))
    .await
}

/// A Tencent fake that refuses every number (bad number, permanent).
async fn tencent_refusing() -> fake::Fake {
    fake::start(Arc::new(|_s: &fake::Seen| {
        (200, json!({"Response":{"SendStatusSet":[{"SerialNo":"","PhoneNumber":"","Code":"InvalidParameterValue.IncorrectPhoneNumber","Message":"bad"}],"RequestId":"r"}}).to_string())
    }))
    .await
}

fn file(ali: &str, tc: &str) -> String {
    format!(
        r#"
[[carrier]]
name = "tc"
kind = "tencent"
endpoint = "{tc}"
secret_id = "AKIDtest"
secret_key = "tc-secret"
region = "ap-guangzhou"
sdk_app_id = "1400006666"
sign_name = "腾讯云"
code_template = "1110"
callback_token = "tc-cb-token"

[[carrier]]
name = "ali"
kind = "aliyun"
endpoint = "{ali}"
access_key_id = "LTAIid"
access_key_secret = "ali-secret"
sign_name = "阿里云短信测试"
code_template = "SMS_154950909"
callback_token = "ali-cb-token"

[[carrier]]
name = "tw"
kind = "twilio"
endpoint = "http://127.0.0.1:9/"
account_sid = "AC123"
auth_token = "tw-token"
from = "+15005550006"
public_url = "https://sms.example.com"

[routes]
codes = ["tc", "ali"]
"#
    )
}

#[tokio::test]
async fn bad_file_stops_the_start_naming_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("carriers.toml");
    std::fs::write(
        &path,
        file("http://127.0.0.1:9/", "http://127.0.0.1:9/")
            .replace("kind = \"aliyun\"", "kind = \"alyun\""),
    )
    .unwrap();
    let mut args = common::test_args(dir.path());
    args.carriers = Some(path.clone());
    let e = Platform::new(args).start().await.unwrap_err().to_string();
    assert!(
        e.contains("line 16") && e.contains("carrier[1].kind"),
        "{e}"
    );
    std::fs::write(
        &path,
        file("http://127.0.0.1:9/", "http://127.0.0.1:9/")
            .replace("secret_id = \"AKIDtest\"\n", ""),
    )
    .unwrap();
    let mut args = common::test_args(dir.path());
    args.carriers = Some(path);
    let e = Platform::new(args).start().await.unwrap_err().to_string();
    assert!(
        e.contains("carrier[0].secret_id") && !e.contains("tc-secret"),
        "{e}"
    );
}

#[tokio::test]
async fn codes_fail_over_to_aliyun_and_receipts_are_checked() {
    let ali = aliyun_fake().await;
    let tc = tencent_refusing().await;
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        std::fs::write(&path, file(&ali.url(), &tc.url())).unwrap();
        a.carriers = Some(path);
    })
    .await;
    let phone = "13126939916";
    let r = t
        .post_form(&format!("/api/v4.0/sendsms/{phone}"), &[("expect", "0")])
        .await;
    assert_eq!(r["code"], 200, "{r}");
    // Tencent refused the number; Aliyun accepted, with a valid signature.
    assert_eq!(tc.seen().len(), 1);
    let seen = ali.seen();
    assert_eq!(seen.len(), 1);
    let form = seen[0].form();
    let param = form
        .iter()
        .find(|(k, _)| k == "TemplateParam")
        .unwrap()
        .1
        .clone();
    let code: String = serde_json::from_str::<serde_json::Value>(&param).unwrap()["code"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t.outbox_lines().is_empty(), "routed codes skip the outbox");
    // The code that reached the provider registers the phone.
    let r = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", phone),
                ("name", "Alice"),
                ("password", "secret1"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");

    // Aliyun receipts: the token, else 403; the documented answer.
    let report = json!([{"phone_number":phone,"success":true,"err_code":"DELIVERED","biz_id":"biz-1","out_id":"x"}]).to_string();
    let (s, _) = t
        .raw(
            Method::POST,
            "/carriers/ali/receipts",
            Some("application/json"),
            report.clone().into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = t
        .raw(
            Method::POST,
            "/carriers/ali/receipts?token=wrong",
            Some("application/json"),
            report.clone().into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = t
        .raw(
            Method::POST,
            "/carriers/ali/receipts?token=ali-cb-token",
            Some("application/json"),
            report.into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
        json!({"code":0,"msg":"接收成功"})
    );
    // Tencent.
    let cb = json!([{"mobile":phone,"nationcode":"86","report_status":"FAIL","errmsg":"MI:0013","sid":"s1"}]).to_string();
    let (s, b) = t
        .raw(
            Method::POST,
            "/carriers/tc/receipts?token=tc-cb-token",
            Some("application/json"),
            cb.into_bytes(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&b).unwrap(),
        json!({"result":0,"errmsg":"OK"})
    );
    // Twilio: signed over public_url + path (with or without :443), else 403.
    let body = "MessageSid=SM1&MessageStatus=delivered&To=%2B8613126939916";
    let params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let (s, _) = t
        .raw(
            Method::POST,
            "/carriers/tw/receipts",
            Some("application/x-www-form-urlencoded"),
            body.into(),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for url in [
        "https://sms.example.com/carriers/tw/receipts",
        "https://sms.example.com:443/carriers/tw/receipts",
    ] {
        let sig = sign::twilio("tw-token", url, &params);
        let (s, _) = t
            .raw_with(
                Method::POST,
                "/carriers/tw/receipts",
                &[
                    ("content-type", "application/x-www-form-urlencoded".into()),
                    ("x-twilio-signature", sig),
                ],
                body.into(),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = t
        .raw(Method::POST, "/carriers/nope/receipts", None, Vec::new())
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn every_carrier_refusing_a_code_is_the_dialects_send_failure() {
    let tc = tencent_refusing().await;
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        let f = file("http://127.0.0.1:9/", &tc.url())
            .replace("codes = [\"tc\", \"ali\"]", "codes = [\"tc\"]");
        std::fs::write(&path, f).unwrap();
        a.carriers = Some(path);
    })
    .await;
    let r = t
        .post_form("/api/v4.0/sendsms/13126939916", &[("expect", "0")])
        .await;
    assert_eq!(r["code"], -5, "{r}");
    assert!(r["msg"].is_string());
    assert_eq!(tc.seen().len(), 1);
}

/// A Tencent fake that verifies TC3 and accepts.
async fn tencent_fake() -> fake::Fake {
    fake::start(Arc::new(|s: &fake::Seen| {
        let h = |n: &str| s.header(n).unwrap_or("").to_string();
        let expected = sign::tencent_tc3(
            &sign::Tc3Request {
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
            return (200, json!({"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"bad"},"RequestId":"r"}}).to_string());
        }
        (200, json!({"Response":{"SendStatusSet":[{"SerialNo":"5000:1","PhoneNumber":"+8617012345678","Code":"Ok","Message":"send success"}],"RequestId":"r"}}).to_string())
    }))
    .await
}

#[tokio::test]
async fn telsignup_code_by_prefix_route_reaches_tencent_and_validates() {
    let tc = tencent_fake().await;
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        let f = file("http://127.0.0.1:9/", &tc.url()).replace(
            "codes = [\"tc\", \"ali\"]",
            "codes = [\"ali\"]\n[[routes.prefix]]\nprefix = \"86170\"\ncodes = [\"tc\"]",
        );
        std::fs::write(&path, f).unwrap();
        a.carriers = Some(path);
    })
    .await;
    let tel = "17012345678";
    let r = t
        .post_json(
            "/index.php?r=user/sms-validation-request",
            json!({"type": "sms_validation_request", "tel": tel, "time": "1439280893"}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
    let seen = tc.seen();
    assert_eq!(seen.len(), 1, "the 86170 prefix routes to tencent");
    let body: serde_json::Value = serde_json::from_slice(&seen[0].body).unwrap();
    assert_eq!(body["PhoneNumberSet"], json!(["+8617012345678"]));
    let code = body["TemplateParamSet"][0].as_str().unwrap().to_string();
    let r = t
        .post_json(
            "/index.php?r=user/sms-validation-code",
            json!({"type": "sms_validation_code", "tel": tel, "time": "1439280893", "code": code}),
        )
        .await;
    assert_eq!(r["success"], true, "{r}");
}

/// A Twilio fake answering 503 until the switch is on, then accepting;
/// and a carriers file routing codes to it (no retries inside a request).
async fn twilio_switch() -> (Arc<std::sync::atomic::AtomicBool>, fake::Fake, String) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let up = Arc::new(AtomicBool::new(false));
    let up2 = up.clone();
    let tw = fake::start(Arc::new(move |_s: &fake::Seen| {
        if up2.load(Ordering::SeqCst) {
            (201, json!({"sid": "SM1", "status": "queued"}).to_string())
        } else {
            (
                503,
                json!({"code": 20503, "message": "Service Unavailable"}).to_string(),
            )
        }
    }))
    .await;
    let body = format!(
        "[[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"{}\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\nretries = 0\n\n[routes]\ncodes = [\"tw\"]\n",
        tw.url()
    );
    (up, tw, body)
}

#[tokio::test]
async fn a_code_delayed_by_an_outage_stays_queued_and_is_delivered() {
    let (up, tw, body) = twilio_switch().await;
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        std::fs::write(&path, &body).unwrap();
        a.carriers = Some(path);
    })
    .await;
    let phone = "13126939916";
    // Only delayed: not an error for the client (carriers.md C2).
    let r = t
        .post_form(&format!("/api/v4.0/sendsms/{phone}"), &[("expect", "0")])
        .await;
    assert_eq!(r["code"], 200, "{r}");
    assert_eq!(tw.seen().len(), 1);
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    // The queue's worker offers it again after its backoff (bounded wait).
    let mut body = None;
    for _ in 0..300 {
        if let Some(s) = tw.seen().get(1) {
            body = Some(s.form());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let form = body.expect("the queued code was offered again");
    let text = form.iter().find(|(k, _)| k == "Body").unwrap().1.clone();
    let code: String = text
        .chars()
        .filter(|c| c.is_ascii_digit())
        .take(6)
        .collect();
    let r = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", phone),
                ("name", "Alice"),
                ("password", "secret1"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    // Accepted once: never offered again.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(tw.seen().len(), 2);
}

#[tokio::test]
async fn a_queued_code_survives_a_restart() {
    let (up, tw, body) = twilio_switch().await;
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        std::fs::write(&path, &body).unwrap();
        a.carriers = Some(path);
    })
    .await;
    let r = t
        .post_form("/api/v4.0/sendsms/13126939916", &[("expect", "0")])
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let dir = t.stop_keep_data().await;
    assert_eq!(tw.seen().len(), 1);
    up.store(true, std::sync::atomic::Ordering::SeqCst);
    // A new process on the same data (the queue is on disk).
    let mut args = common::test_args(dir.path());
    args.carriers = Some(dir.path().join("carriers.toml"));
    let mut started = None;
    for _ in 0..50 {
        // The old process's last handles may still hold the data briefly.
        match Platform::new(args.clone()).start().await {
            Ok(p) => {
                started = Some(p);
                break;
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    let running = started.expect("platform restarts");
    for _ in 0..300 {
        if tw.seen().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        tw.seen().len(),
        2,
        "the queued code was offered after the restart"
    );
    running.shutdown().await;
}

/// A Twilio fake that checks the account's Basic auth and accepts.
async fn twilio_fake() -> fake::Fake {
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "AC123:tw-token")
    );
    fake::start(Arc::new(move |s: &fake::Seen| {
        if s.header("authorization") != Some(basic.as_str()) {
            return (401, json!({"code": 20003, "status": 401}).to_string());
        }
        (201, json!({"sid": "SM1", "status": "queued"}).to_string())
    }))
    .await
}

/// The code in the last request a provider's fake accepted: Aliyun's
/// `TemplateParam.code`, Tencent's `TemplateParamSet[0]`, the digits of
/// Twilio's `Body`.
fn code_seen(provider: &str, fake: &fake::Fake) -> String {
    let seen = fake.seen();
    let last = seen.last().expect("the provider got the code");
    match provider {
        "ali" => {
            let p = last.form();
            let param = &p.iter().find(|(k, _)| k == "TemplateParam").unwrap().1;
            serde_json::from_str::<serde_json::Value>(param).unwrap()["code"]
                .as_str()
                .unwrap()
                .to_string()
        }
        "tc" => serde_json::from_slice::<serde_json::Value>(&last.body).unwrap()
            ["TemplateParamSet"][0]
            .as_str()
            .unwrap()
            .to_string(),
        _ => {
            let p = last.form();
            let body = &p.iter().find(|(k, _)| k == "Body").unwrap().1;
            let digits: Vec<&str> = body
                .split(|c: char| !c.is_ascii_digit())
                .filter(|d| d.len() >= 4)
                .collect();
            assert_eq!(digits.len(), 1, "one code in {body:?}");
            digits[0].to_string()
        }
    }
}

/// account_v4 and telsignup codes reach each HTTP provider's fake (Aliyun
/// and Tencent signatures verified by the fake, Twilio's Basic auth), and
/// the code the fake received is then accepted by the dialect. (hub's
/// codes are email only: they go to `routes.email`, SMTP.)
#[tokio::test]
async fn dialect_codes_reach_every_http_provider_and_can_be_checked() {
    for provider in ["ali", "tc", "tw"] {
        let (ali, tc, tw) = (
            aliyun_fake().await,
            tencent_fake().await,
            twilio_fake().await,
        );
        let body = file(&ali.url(), &tc.url())
            .replace(
                "endpoint = \"http://127.0.0.1:9/\"",
                &format!("endpoint = \"{}\"", tw.url()),
            )
            .replace(
                "codes = [\"tc\", \"ali\"]",
                &format!("codes = [\"{provider}\"]"),
            );
        let t = TestPlatform::start_with(|a| {
            let path = a.data.parent().unwrap().join("carriers.toml");
            std::fs::write(&path, &body).unwrap();
            a.carriers = Some(path);
        })
        .await;
        let fake = match provider {
            "ali" => &ali,
            "tc" => &tc,
            _ => &tw,
        };
        // account_v4: sendsms, then register with the code.
        let phone = "13126939916";
        let r = t
            .post_form(&format!("/api/v4.0/sendsms/{phone}"), &[("expect", "0")])
            .await;
        assert_eq!(r["code"], 200, "{provider}: {r}");
        let code = code_seen(provider, fake);
        let r = t
            .post_form(
                "/api/v4.0/register",
                &[
                    ("phone", phone),
                    ("name", "Alice"),
                    ("password", "secret1"),
                    ("code", &code),
                ],
            )
            .await;
        assert_eq!(r["code"], 200, "{provider}: {r}");
        // telsignup: request, then validate with the code.
        let tel = "17012345678";
        let r = t
            .post_json(
                "/index.php?r=user/sms-validation-request",
                json!({"type": "sms_validation_request", "tel": tel, "time": "1439280893"}),
            )
            .await;
        assert_eq!(r["success"], true, "{provider}: {r}");
        assert_eq!(fake.seen().len(), 2, "{provider}: both codes reached it");
        let code = code_seen(provider, fake);
        let r = t
            .post_json(
                "/index.php?r=user/sms-validation-code",
                json!({"type": "sms_validation_code", "tel": tel, "time": "1439280893", "code": code}),
            )
            .await;
        assert_eq!(r["success"], true, "{provider}: {r}");
        for other in [&ali, &tc, &tw] {
            if !std::ptr::eq(other, fake) {
                assert!(other.seen().is_empty(), "{provider}: only its route");
            }
        }
        assert!(
            t.outbox_lines().is_empty(),
            "{provider}: nothing to the outbox"
        );
        t.stop().await;
    }
}

/// hub's codes are email: with `routes.email` to an SMTP carrier, the
/// email binding code and the password-recovery code (`forgot/vcode`)
/// reach a local SMTP server (aiosmtpd, `sms-carriers/tests/smtpd`) and
/// the codes it received bind the address and pass `forgot/verify`.
#[tokio::test]
async fn hub_email_codes_reach_the_smtp_carrier_and_can_be_checked() {
    use tokio::io::AsyncBufReadExt;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sms-carriers/tests/smtpd");
    let has_python = std::process::Command::new("python3")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_python {
        eprintln!("SKIPPED hub_email_codes_reach_the_smtp_carrier_and_can_be_checked: `python3` is not installed");
        return;
    }
    if !dir.join(".venv/bin/python").exists() {
        let ok = std::process::Command::new("bash")
            .arg(dir.join("setup.sh"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "sms-carriers/tests/smtpd/setup.sh failed");
    }
    let mut child = tokio::process::Command::new(dir.join(".venv/bin/python"))
        .arg(dir.join("server.py"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start aiosmtpd");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("server output");
    let port: u16 = first.strip_prefix("LISTENING ").unwrap().parse().unwrap();
    let t = TestPlatform::start_with(|a| {
        let path = a.data.parent().unwrap().join("carriers.toml");
        std::fs::write(
            &path,
            format!(
                "[[carrier]]\nname = \"mail\"\nkind = \"smtp\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"SMS Platform <no-reply@example.com>\"\n\n[routes]\nemail = [\"mail\"]\n"
            ),
        )
        .unwrap();
        a.carriers = Some(path);
        a.code_locale = "en-US".into();
    })
    .await;
    async fn next_code(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    ) -> String {
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("a MAIL line");
        let mail: serde_json::Value =
            serde_json::from_str(line.strip_prefix("MAIL ").unwrap()).unwrap();
        assert_eq!(mail["to"], json!(["mia@example.com"]));
        let data = mail["data"].as_str().unwrap().to_string();
        let after = data.split(" code is ").nth(1).expect("the code text");
        after
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
    }
    assert_eq!(
        t.post_form("/signup", &[("user", "mia"), ("password", "secret1")])
            .await["code"],
        0
    );
    let core = t.core();
    let u = core
        .accounts
        .user_by_username("mia")
        .await
        .unwrap()
        .unwrap();
    core.accounts
        .bind_email_send(&u, "mia@example.com", None)
        .await
        .unwrap();
    let code = next_code(&mut lines).await;
    core.accounts
        .bind_email_check(&u, "mia@example.com", &code)
        .await
        .unwrap();
    let r = t
        .post_form(
            "/forgot/vcode",
            &[("user", "mia"), ("email", "mia@example.com")],
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let code = next_code(&mut lines).await;
    let r = t
        .post_form(
            "/forgot/verify",
            &[
                ("user", "mia"),
                ("email", "mia@example.com"),
                ("verify", &code),
            ],
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(t.outbox_lines().is_empty(), "nothing to the outbox");
    let _ = child.kill().await;
}
