//! SIGTERM (what docker, systemd and Kubernetes send) stops the platform as
//! gracefully as Ctrl-C: live `hub` sessions get `PushKickout` state 1.
//! Alone in its own test binary, since it signals its own process.

mod common;

use std::time::Duration;

use common::{TestPlatform, Ws};
use serde_json::json;

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_graceful_shutdown() {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed first: from here on SIGTERM no longer kills the process.
    let _keep = signal(SignalKind::terminate()).unwrap();
    let t = TestPlatform::start().await;
    let r = t
        .post_form("/signup", &[("user", "alice"), ("password", "secret1")])
        .await;
    let mut ws = Ws::connect(&t).await;
    assert_eq!(ws.login(r["token"].as_str().unwrap()).await["code"], 0);

    let mut waiter = tokio::spawn(sms_platform::signals::shutdown_signal());
    // The waiter registers when first polled: signal until it has heard.
    let name = loop {
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), &mut waiter).await {
            break r.unwrap();
        }
    };
    assert_eq!(name, "SIGTERM");
    // What the platform's main does next.
    let stopping = tokio::spawn(t.stop());
    assert_eq!(
        ws.recv().await,
        json!({"protocol": "PushKickout", "state": 1})
    );
    drop(ws);
    stopping.await.unwrap();
}
