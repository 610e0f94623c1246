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

/// The kit's reopen check: a second store connects to the schema the first
/// one wrote (the first one's connections closed before).
#[test]
fn pool_hand_outs_survive_reopen() {
    sms_core::testkit::run(async {
        let Some(url) = common::database_url("pool_hand_outs_survive_reopen on PostgreSQL") else {
            return;
        };
        let options = sms_store_postgres::PgOptions::new(url)
            .schema(common::fresh_schema("reopen"))
            .max_connections(4);
        sms_core::testkit::pool_hand_outs_survive_reopen(|| {
            let options = options.clone();
            async move {
                Arc::new(
                    sms_store_postgres::PgStore::connect(&options)
                        .await
                        .expect("connect to the test database"),
                )
                .stores()
            }
        })
        .await;
    });
}
