//! Email codes through lettre to a local SMTP server the test starts
//! (aiosmtpd in `tests/smtpd/.venv`, set up by `tests/smtpd/setup.sh` when
//! missing). Skipped, saying so, only when `python3` is absent.

#![cfg(feature = "smtp")]

use std::path::PathBuf;
use std::process::Stdio;

use sms_carriers::config::{SmtpConfig, SmtpTls};
use sms_carriers::smtp::Smtp;
use sms_core::carrier::{Carrier, CarrierError, CarrierMessage, MessageKind};
use sms_core::sender::Channel;
use tokio::io::{AsyncBufReadExt, BufReader};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smtpd")
}

fn email(to: &str) -> CarrierMessage {
    CarrierMessage {
        idempotency_key: "code-1".into(),
        channel: Channel::Email,
        to: to.into(),
        text: "Your verification code is 482913".into(),
        kind: MessageKind::Code {
            code: "482913".into(),
            purpose: None,
        },
    }
}

#[tokio::test]
async fn email_code_reaches_a_local_smtp_server() {
    let has_python = std::process::Command::new("python3")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_python {
        eprintln!("SKIPPED smtp_email: `python3` is not installed (the SMTP server is aiosmtpd)");
        return;
    }
    if !dir().join(".venv/bin/python").exists() {
        let ok = std::process::Command::new("bash")
            .arg(dir().join("setup.sh"))
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "tests/smtpd/setup.sh failed");
    }
    let mut child = tokio::process::Command::new(dir().join(".venv/bin/python"))
        .arg(dir().join("server.py"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start aiosmtpd");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("server output");
    let port: u16 = first
        .strip_prefix("LISTENING ")
        .expect(&first)
        .parse()
        .unwrap();

    let smtp = Smtp::new(
        "mail",
        &SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "SMS Platform <no-reply@example.com>".into(),
            timeout_secs: 10,
        },
    )
    .unwrap();
    smtp.send(&email("alice@example.com")).await.unwrap();
    let line = lines.next_line().await.unwrap().expect("a MAIL line");
    let mail: serde_json::Value =
        serde_json::from_str(line.strip_prefix("MAIL ").unwrap()).unwrap();
    assert_eq!(mail["from"], "no-reply@example.com");
    assert_eq!(mail["to"], serde_json::json!(["alice@example.com"]));
    assert!(mail["data"]
        .as_str()
        .unwrap()
        .contains("Your verification code is 482913"));

    // A refused recipient is permanent; an SMS is not for this carrier.
    assert!(matches!(
        smtp.send(&email("nobody@example.com")).await,
        Err(CarrierError::Permanent { .. })
    ));
    let mut sms = email("13800000000");
    sms.channel = Channel::Sms;
    assert!(matches!(
        smtp.send(&sms).await,
        Err(CarrierError::Unsupported(_))
    ));
    let _ = child.kill().await;
}

#[test]
fn tls_modes_build() {
    for tls in [SmtpTls::StartTls, SmtpTls::Tls] {
        let c = SmtpConfig {
            host: "smtp.example.com".into(),
            port: 587,
            tls,
            username: Some("u".into()),
            password: Some(sms_carriers::config::Secret::new("hunter2")),
            from: "no-reply@example.com".into(),
            timeout_secs: 10,
        };
        let s = Smtp::new("mail", &c).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
