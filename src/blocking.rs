//! Running CPU-heavy password hashing off the async workers.

use std::sync::Arc;

use async_trait::async_trait;
use sms_core::password::{Argon2Hasher, PasswordHasher};

/// An [`Argon2Hasher`] whose work runs on tokio's blocking pool.
#[derive(Debug, Clone)]
pub struct BlockingHasher(Arc<Argon2Hasher>);

impl BlockingHasher {
    /// Wraps `inner`.
    pub fn new(inner: Argon2Hasher) -> Self {
        Self(Arc::new(inner))
    }
}

#[async_trait]
impl PasswordHasher for BlockingHasher {
    async fn hash(&self, password: &str) -> String {
        let (h, p) = (self.0.clone(), password.to_owned());
        match tokio::task::spawn_blocking(move || h.hash_blocking(&p)).await {
            Ok(s) => s,
            // The blocking pool is gone (shutdown): hash inline.
            Err(_) => self.0.hash_blocking(password),
        }
    }

    async fn verify(&self, password: &str, phc: &str) -> bool {
        let (h, p, c) = (self.0.clone(), password.to_owned(), phc.to_owned());
        match tokio::task::spawn_blocking(move || h.verify_blocking(&p, &c)).await {
            Ok(ok) => ok,
            Err(_) => self.0.verify_blocking(password, phc),
        }
    }
}
