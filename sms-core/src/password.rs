//! Password hashing: the [`PasswordHasher`] port and its argon2id
//! implementation (decision G8).

use std::fmt::Debug;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;

use crate::random::RandomSource;

/// Hashes and verifies passwords.
///
/// # Contract
/// `hash` returns a self-describing string (PHC format); `verify` is
/// constant-time in the password and returns false for malformed hashes.
/// Hashing is CPU-heavy: an implementation must not run it on the caller's
/// async worker thread ([`Argon2Hasher`] runs it on its own threads).
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

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads: one per core, shared by every [`Argon2Hasher`] of
/// the process, so password work never runs on an async worker and never
/// takes more than the machine's cores (callers queue; how many may queue is
/// the caller's policy, see the core's hashing gate).
fn hashing_pool() -> &'static Mutex<mpsc::Sender<Job>> {
    static POOL: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let rx = rx.clone();
            let _ = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    match job {
                        // A panicking job loses its answer, not the thread.
                        Ok(job) => {
                            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                        }
                        Err(_) => return,
                    }
                });
        }
        Mutex::new(tx)
    })
}

/// Runs `work` on the hashing threads (inline if they cannot take it);
/// `None` only if `work` panicked.
async fn off_the_workers<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(work());
    });
    let refused = match hashing_pool().lock() {
        Ok(pool) => pool.send(job).err().map(|mpsc::SendError(job)| job),
        Err(_) => Some(job),
    };
    if let Some(job) = refused {
        job();
    }
    rx.await.ok()
}

#[async_trait]
impl PasswordHasher for Argon2Hasher {
    async fn hash(&self, password: &str) -> String {
        let (me, password) = (self.clone(), password.to_owned());
        off_the_workers(move || me.hash_blocking(&password))
            .await
            // Only if argon2 panicked: a hash nothing verifies.
            .unwrap_or_else(|| String::from("$invalid"))
    }

    async fn verify(&self, password: &str, phc: &str) -> bool {
        let (me, password, phc) = (self.clone(), password.to_owned(), phc.to_owned());
        off_the_workers(move || me.verify_blocking(&password, &phc))
            .await
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn hashing_runs_off_the_calling_thread() {
        let here = std::thread::current().id();
        let there = off_the_workers(|| std::thread::current().id())
            .await
            .unwrap();
        assert_ne!(here, there);
        let h = Argon2Hasher::fast_insecure_for_tests();
        let phc = h.hash("s3cret!").await;
        assert!(h.verify("s3cret!", &phc).await);
        assert!(!h.verify("s3cret?", &phc).await);
    }

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
