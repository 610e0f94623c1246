//! Health for load balancers (`/livez`, `/readyz`) and the start of a
//! PostgreSQL node: refused without the deployment's shared code secret,
//! ready when its store answers. The PostgreSQL cases need
//! `SMS_TEST_DATABASE_URL`; without it they pass and say they were skipped.

mod common;

use std::sync::Arc;

use common::{test_args, TestPlatform};
use http::{Method, StatusCode};
use sms_core::memory::MemoryStore;
use sms_core::store::Stores;
use sms_core::store::UserKey;
use sms_core::Core;
use sms_platform::health::Health;
use sms_platform::{BackgroundWorkers, Platform, PlatformError};

const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn database_url(test: &str) -> Option<String> {
    match std::env::var("SMS_TEST_DATABASE_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "SKIPPED {test}: SMS_TEST_DATABASE_URL is not set (e.g. postgres://postgres@127.0.0.1:5432/test); it needs PostgreSQL");
            }
            None
        }
    }
}

fn fresh_schema() -> String {
    use sms_core::random::RandomSource;
    let mut tag = [0u8; 6];
    sms_core::random::OsRandom.fill(&mut tag);
    format!("t_health_{}", hex::encode(tag))
}

#[tokio::test]
async fn livez_and_readyz_on_the_sled_platform() {
    let t = TestPlatform::start().await;
    for path in ["/livez", "/readyz"] {
        let (s, _) = t.raw(Method::GET, path, None, vec![]).await;
        assert_eq!(s, StatusCode::OK, "{path}");
        let (s, _) = t.raw(Method::HEAD, path, None, vec![]).await;
        assert_eq!(s, StatusCode::OK, "HEAD {path}");
        let (s, _) = t.raw(Method::POST, path, None, vec![]).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "POST {path}");
    }
}

#[tokio::test]
async fn readyz_needs_running_workers_and_is_503_while_shutting_down() {
    let stores = Stores::from_single(Arc::new(MemoryStore::new()));
    let core = Core::test_builder(stores.clone()).build().unwrap();
    let health = Health::new(stores);
    assert_eq!(health.ready().await, Err("background workers not running"));
    let workers = BackgroundWorkers::spawn(core);
    health.set_workers(workers.health());
    assert_eq!(health.ready().await, Ok(()));
    let answer = health.answer(&Method::GET, "/readyz").await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let stopped = workers.health();
    workers.stop().await;
    assert!(!stopped.running());
    assert_eq!(health.ready().await, Err("background workers not running"));
    health.shutting_down();
    assert_eq!(health.ready().await, Err("shutting down"));
    let answer = health.answer(&Method::GET, "/readyz").await.unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The process still answers.
    let answer = health.answer(&Method::GET, "/livez").await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_postgres_node_without_the_shared_code_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = test_args(dir.path());
    // Never contacted: the secret is checked first.
    a.store = Some("postgres://nobody@127.0.0.1:1/none".into());
    a.code_secret = None;
    a.code_secret_file = None;
    let err = Platform::new(a).start().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PlatformError::Config(_)), "{text}");
    assert!(text.contains("--code-secret-file"), "{text}");
    assert!(text.contains("SMS_CODE_SECRET"), "{text}");
    assert!(
        !dir.path().join("data").join("code-secret").exists(),
        "no per-machine secret generated for a PostgreSQL node"
    );
}

#[tokio::test]
async fn a_store_url_that_is_not_postgres_is_refused_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = test_args(dir.path());
    a.store = Some("mysql://u:hunter2@db/x".into());
    a.code_secret = Some(SECRET.into());
    let text = Platform::new(a).start().await.unwrap_err().to_string();
    assert!(text.contains("postgres://USER@HOST:PORT/DB"), "{text}");
    assert!(!text.contains("hunter2"), "password in the error: {text}");
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = test_args(dir.path());
    // Port 1 on loopback: refused at once.
    a.store = Some("postgres://sms:hunter2@127.0.0.1:1/sms".into());
    a.code_secret = Some(SECRET.into());
    let err = Platform::new(a).start().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, PlatformError::Database { .. }), "{text}");
    assert!(
        text.contains("postgres://sms:***@127.0.0.1:1/sms"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "password in the error: {text}");
}

#[tokio::test]
async fn a_postgres_node_serves_and_is_ready() {
    let Some(url) = database_url("a_postgres_node_serves_and_is_ready") else {
        return;
    };
    let schema = fresh_schema();
    let t = TestPlatform::start_with(|a| {
        a.store = Some(url.clone());
        a.store_schema = schema.clone();
        a.code_secret = Some(SECRET.into());
    })
    .await;
    let (s, body) = t.raw(Method::GET, "/readyz", None, vec![]).await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"ready"[..]));
    let r = t
        .post_form("/signup", &[("user", "alice"), ("password", "secret1")])
        .await;
    assert_eq!(r["code"], 0, "{r}");
    assert!(
        !t.dir.path().join("data").exists(),
        "a PostgreSQL node keeps nothing in --data"
    );
    // The same user, straight from the database.
    let store = sms_store_postgres::PgStore::connect_url(&url, &schema)
        .await
        .unwrap();
    let stores = Arc::new(store.clone()).stores();
    let alice = stores
        .users
        .user(&UserKey::Username(
            sms_core::identity::Username::parse("alice").unwrap(),
        ))
        .await
        .unwrap();
    assert!(alice.is_some());
    // A store that no longer answers makes a node unready.
    let health = Health::new(stores);
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .build()
        .unwrap();
    let workers = BackgroundWorkers::spawn(core);
    health.set_workers(workers.health());
    assert_eq!(health.ready().await, Ok(()));
    store.close().await;
    assert_eq!(health.ready().await, Err("store unreachable"));
    workers.stop().await;
    t.stop().await;
    sms_store_postgres::PgStore::connect_url(&url, &schema)
        .await
        .unwrap()
        .drop_schema()
        .await
        .unwrap();
}
