//! Injected randomness: a CSPRNG in production, a seeded generator in tests.

use std::fmt::Debug;
use std::sync::Mutex;

use rand::rngs::{OsRng, StdRng};
use rand::{RngCore, SeedableRng};

/// A source of random bytes.
///
/// # Contract
/// Production implementations must be cryptographically secure: codes, tokens
/// and secrets are drawn from it.
pub trait RandomSource: Debug + Send + Sync + 'static {
    /// Fills `buf` with random bytes.
    fn fill(&self, buf: &mut [u8]);

    /// A uniformly distributed integer in `0..bound` (`bound > 0`), by rejection
    /// sampling so that no value is favoured.
    fn below(&self, bound: u32) -> u32 {
        let bound = bound.max(1);
        let zone = u32::MAX - (u32::MAX % bound);
        loop {
            let mut b = [0u8; 4];
            self.fill(&mut b);
            let v = u32::from_le_bytes(b);
            if v < zone {
                return v % bound;
            }
        }
    }
}

/// The operating system's CSPRNG.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl RandomSource for OsRandom {
    fn fill(&self, buf: &mut [u8]) {
        OsRng.fill_bytes(buf);
    }
}

/// A deterministic generator for tests: the same seed yields the same codes and
/// tokens. Never use it in production.
#[derive(Debug)]
pub struct SeededRandom(Mutex<StdRng>);

impl SeededRandom {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(Mutex::new(StdRng::seed_from_u64(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn fill(&self, buf: &mut [u8]) {
        let mut rng = self.0.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(buf);
    }
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(rng: &dyn RandomSource, n: usize) -> String {
    let mut buf = vec![0u8; n];
    rng.fill(&mut buf);
    hex::encode(buf)
}

/// A string of `digits` random decimal digits (leading zeros kept).
pub fn random_digits(rng: &dyn RandomSource, digits: u32) -> String {
    (0..digits)
        .map(|_| char::from(b'0' + rng.below(10) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_deterministic() {
        let a = SeededRandom::new(7);
        let b = SeededRandom::new(7);
        assert_eq!(random_hex(&a, 16), random_hex(&b, 16));
    }

    #[test]
    fn digits_have_requested_length_and_are_digits() {
        let r = OsRandom;
        for _ in 0..100 {
            let d = random_digits(&r, 6);
            assert_eq!(d.len(), 6);
            assert!(d.bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn below_stays_in_range() {
        let r = SeededRandom::new(1);
        for _ in 0..1000 {
            assert!(r.below(10) < 10);
        }
    }
}
