//! The SMPP client against an independent SMSC: the npm package `smpp`
//! (`tests/smsc/`, installed with `npm ci` when `node_modules` is missing).
//! Binds, sends a long UCS-2 message to two numbers and receives one
//! `delivered` and one `failed` (UNDELIV) receipt, matched by the message
//! ids of `submit_sm_resp`. Skipped, saying so, only when `node` is absent.

#![cfg(feature = "smpp")]

use std::path::PathBuf;

#[path = "smsc/install.rs"]
mod smsc_install;
use std::process::Stdio;
use std::time::Duration;

use sms_carriers::config::{Secret, SmppConfig};
use sms_carriers::smpp::Smpp;
use sms_core::carrier::{Carrier, CarrierMessage, DeliveryStatus, MessageKind};
use sms_core::sender::Channel;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

fn have(cmd: &str) -> bool {
    std::process::Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn smsc_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/smsc")
}

/// Installs the SMSC's npm dependencies when missing.
fn install() {
    smsc_install::install_smsc(&smsc_dir());
}

fn message(to: &str, key: &str, text: &str) -> CarrierMessage {
    CarrierMessage {
        idempotency_key: key.into(),
        channel: Channel::Sms,
        to: to.into(),
        text: text.into(),
        kind: MessageKind::Task {
            template_id: None,
            params: Vec::new(),
            signature: None,
        },
    }
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

/// Starts the SMSC on `port` (0: any); its process, output and port.
async fn smsc(port: u16) -> (tokio::process::Child, Lines, u16) {
    install();
    let mut child = Command::new("node")
        .arg("smsc.js")
        .arg(port.to_string())
        .current_dir(smsc_dir())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the SMSC");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("SMSC output");
    let port: u16 = first
        .strip_prefix("LISTENING ")
        .expect(&first)
        .parse()
        .unwrap();
    (child, lines, port)
}

/// Reads SMSC lines until one equals `want`.
async fn until(lines: &mut Lines, want: &str) {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("SMSC line")
            .unwrap()
            .expect("SMSC still running");
        if line == want {
            return;
        }
    }
}

fn config(port: u16) -> SmppConfig {
    SmppConfig {
        host: "127.0.0.1".into(),
        port,
        system_id: "sys".into(),
        password: Secret::new("pw"),
        system_type: String::new(),
        source_addr: "10690000".into(),
        window: 2,
        enquire_link_secs: 30,
        response_timeout_secs: 20,
        reconnect_secs: 1,
    }
}

#[tokio::test]
async fn enquire_link_and_reconnect_after_the_smsc_restarts() {
    if !have("node") {
        eprintln!("SKIPPED smpp_smsc: `node` is not installed (the SMSC runs on Node.js)");
        return;
    }
    let (mut child, mut lines, port) = smsc(0).await;
    let smpp = Smpp::start(
        "smsc",
        SmppConfig {
            enquire_link_secs: 1,
            ..config(port)
        },
        None,
    );
    until(&mut lines, "BOUND").await;
    until(&mut lines, "ENQUIRE_LINK").await;
    child.kill().await.unwrap();
    let (_child, mut lines, _) = smsc(port).await;
    // The client binds again by itself (backoff from 1 s).
    until(&mut lines, "BOUND").await;
    let mut sent = None;
    for _ in 0..30 {
        match smpp
            .send(&message("13800000000", "t:0", "hello again"))
            .await
        {
            Ok(a) => {
                sent = Some(a);
                break;
            }
            // Sent on the old connection before its loss was noticed.
            Err(e) => assert!(e.is_transient(), "{e}"),
        }
    }
    assert!(sent.is_some(), "no send after the reconnect");
    until(&mut lines, "MESSAGE 8613800000000 0 \"hello again\"").await;
}

#[tokio::test]
async fn long_ucs2_message_to_two_numbers_with_receipts() {
    if !have("node") {
        eprintln!("SKIPPED smpp_smsc: `node` is not installed (the SMSC runs on Node.js)");
        return;
    }
    let (mut child, mut lines, port) = smsc(0).await;

    let (tx, mut receipts) = tokio::sync::mpsc::unbounded_channel();
    let smpp = Smpp::start("smsc", config(port), Some(tx));
    assert!(smpp.wait_bound(Duration::from_secs(30)).await, "no bind");

    let text = format!("【测试】{}", "您好，这是一条很长的短信😀。".repeat(12));
    assert!(text.encode_utf16().count() > 134);
    let delivered = smpp
        .send(&message("13800000000", "t:0", &text))
        .await
        .unwrap();
    let failed = smpp
        .send(&message("+8613800000001", "t:1", &text))
        .await
        .unwrap();
    let parts = sms_core::sending::segments(&text).count as usize;
    assert!(parts >= 3);
    assert_eq!(delivered.part_ids.len(), parts);
    assert_eq!(failed.part_ids.len(), parts);

    // The SMSC reassembled both messages from their UCS-2 parts.
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("SMSC line")
            .unwrap()
            .expect("SMSC still running");
        if let Some(rest) = line.strip_prefix("MESSAGE ") {
            let mut it = rest.splitn(3, ' ');
            let dest = it.next().unwrap().to_string();
            let dc = it.next().unwrap().to_string();
            let body: String = serde_json::from_str(it.next().unwrap()).unwrap();
            got.push((dest, dc, body));
        }
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("8613800000000".to_string(), "8".to_string(), text.clone()),
            ("8613800000001".to_string(), "8".to_string(), text.clone()),
        ]
    );

    // One receipt per message (parts aggregated), matched by message id.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = tokio::time::timeout(Duration::from_secs(30), receipts.recv())
            .await
            .expect("receipt")
            .expect("receipt channel open");
        assert_eq!(r.carrier, "smsc");
        seen.push(r.receipt);
    }
    seen.sort_by_key(|r| r.status != DeliveryStatus::Delivered);
    assert_eq!(seen[0].provider_id, delivered.provider_id);
    assert_eq!(seen[0].status, DeliveryStatus::Delivered);
    assert_eq!(seen[1].provider_id, failed.provider_id);
    assert_eq!(seen[1].status, DeliveryStatus::Failed);
    assert_eq!(seen[1].carrier_code, "UNDELIV/034");
    drop(smpp);
    let _ = child.kill().await;
}
