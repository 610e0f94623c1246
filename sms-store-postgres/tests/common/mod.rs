//! Shared by the PostgreSQL test suites: the database URL from
//! `SMS_TEST_DATABASE_URL`, and a fresh schema per test.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use sms_store_postgres::{PgOptions, PgStore};

/// The variable the suites read.
pub const VAR: &str = "SMS_TEST_DATABASE_URL";

/// The database URL, or `None` (and a line on stderr naming the skipped
/// test and why) when the variable is unset.
pub fn database_url(test: &str) -> Option<String> {
    match std::env::var(VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            skipped(test);
            None
        }
    }
}

/// A schema name no other test of any run uses.
pub fn fresh_schema(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    use sms_core::random::RandomSource;
    let mut tag = [0u8; 6];
    sms_core::random::OsRandom.fill(&mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("t_{prefix}_{tag}_{n}")
}

/// A store on a fresh schema of the test database.
pub async fn fresh_store(url: &str, prefix: &str) -> PgStore {
    PgStore::connect(
        &PgOptions::new(url)
            .schema(fresh_schema(prefix))
            .max_connections(8),
    )
    .await
    .expect("connect to the test database")
}

/// Says once per name, on the real stderr (not the test harness's
/// captured output, so a plain `cargo test` shows it), that `test` was
/// skipped.
fn skipped(test: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if said.iter().any(|t| t == test) {
        return;
    }
    said.push(test.to_owned());
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {VAR} is not set (e.g. postgres://postgres@127.0.0.1:5432/test); it needs PostgreSQL"
    );
}
