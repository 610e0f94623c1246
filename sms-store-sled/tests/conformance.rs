//! The `sms-core` store conformance kit, run against [`SledStore`].

use std::sync::Arc;

use sms_store_sled::SledStore;

/// A fresh store in its own temporary directory. sled's `temporary` mode
/// deletes the files when the store is dropped at the end of the check; the
/// `TempDir` guard is leaked so it cannot delete the directory under sled.
async fn fresh() -> sms_core::store::Stores {
    let dir: &'static tempfile::TempDir =
        Box::leak(Box::new(tempfile::tempdir().expect("temp dir")));
    let db = sled::Config::new()
        .path(dir.path().join("db"))
        .temporary(true)
        .open()
        .expect("open sled");
    Arc::new(SledStore::from_db(db).expect("store")).stores()
}

sms_core::store_conformance_tests!(fresh());
