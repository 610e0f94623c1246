//! The `sms-core` store conformance kit, run against [`PgStore`] on the
//! database of `SMS_TEST_DATABASE_URL`, each check in its own schema.
//! Without the variable every check passes at once and says it was skipped.

use std::sync::Arc;

use sms_core::memory::MemoryStore;
use sms_core::store::Stores;

mod common;

/// A fresh store; when the database is not configured, an in-memory one
/// stands in (the check then proves nothing about PostgreSQL, and the line
/// on stderr says so).
async fn fresh(test: &str) -> Stores {
    match common::database_url(test) {
        Some(url) => Arc::new(common::fresh_store(&url, "conf").await).stores(),
        None => Stores::from_single(Arc::new(MemoryStore::new())),
    }
}

sms_core::store_conformance_tests!(fresh(
    "the conformance kit on PostgreSQL (every check ran on the in-memory store instead)"
));
