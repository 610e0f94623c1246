//! Password hashing: the [`PasswordHasher`] port and its argon2id
//! implementation (decision G8).

use std::fmt::Debug;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;

use crate::random::RandomSource;

/// Hashes and verifies passwords.
///
/// # Contract
/// `hash` returns a self-describing string (PHC format); `verify` is
/// constant-time in the password and returns false for malformed hashes.
/// Hashing is CPU-heavy: async front ends should run it off their I/O
/// threads (see the `spawn_blocking` wrapper in `sms-http-hyper`).
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Debug + Send + Sync + 'static {
    /// The PHC string of `password`.
    async fn hash(&self, password: &str) -> String;
    /// True if `password` matches `phc`.
    async fn verify(&self, password: &str, phc: &str) -> bool;
}

/// argon2id with a random salt per password.
#[derive(Debug, Clone)]
pub struct Argon2Hasher {
    params: Params,
    rng: std::sync::Arc<dyn RandomSource>,
}

impl Argon2Hasher {
    /// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane).
    pub fn new(rng: std::sync::Arc<dyn RandomSource>) -> Self {
        Self {
            params: Params::new(19 * 1024, 2, 1, None).unwrap_or_default(),
            rng,
        }
    }

    /// argon2id with the given memory (KiB) and passes.
    pub fn with_params(rng: std::sync::Arc<dyn RandomSource>, m_kib: u32, t: u32) -> Self {
        Self {
            params: Params::new(m_kib, t, 1, None).unwrap_or_default(),
            rng,
        }
    }

    /// Minimal cost, for test suites only: still argon2id, but cheap.
    pub fn fast_insecure_for_tests() -> Self {
        Self::with_params(std::sync::Arc::new(crate::random::OsRandom), 64, 1)
    }

    fn argon(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Synchronous hash (for callers that manage their own threads).
    pub fn hash_blocking(&self, password: &str) -> String {
        let mut salt = [0u8; 16];
        self.rng.fill(&mut salt);
        let salt = SaltString::encode_b64(&salt).unwrap_or_else(|_| unreachable!("16-byte salt"));
        match self.argon().hash_password(password.as_bytes(), &salt) {
            Ok(h) => h.to_string(),
            // Only reachable with absurd parameters; yields a hash nothing verifies.
            Err(_) => String::from("$invalid"),
        }
    }

    /// Synchronous verify.
    pub fn verify_blocking(&self, password: &str, phc: &str) -> bool {
        match PasswordHash::new(phc) {
            Ok(parsed) => self
                .argon()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> String {
        self.hash_blocking(password)
    }

    async fn verify(&self, password: &str, phc: &str) -> bool {
        self.verify_blocking(password, phc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = Argon2Hasher::fast_insecure_for_tests();
        let phc = h.hash_blocking("s3cret!");
        assert!(phc.starts_with("$argon2id$"));
        assert!(h.verify_blocking("s3cret!", &phc));
        assert!(!h.verify_blocking("s3cret?", &phc));
        assert!(!h.verify_blocking("s3cret!", "garbage"));
        // salts differ
        assert_ne!(phc, h.hash_blocking("s3cret!"));
    }
}
