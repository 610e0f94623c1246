//! sendapi tasks through `--carriers`: a Twilio fake that is down at first
//! (5xx) loses nothing — the recipients stay pending and are delivered when
//! it recovers; with SMPP first in the route, a task reaches the npm SMSC
//! (`sms-carriers/tests/smsc`).

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

#[tokio::test]
async fn a_task_reaches_the_smpp_peer() {
    let have_node = std::process::Command::new("node")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_node {
        eprintln!("SKIPPED a_task_reaches_the_smpp_peer: `node` is not installed");
        return;
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
