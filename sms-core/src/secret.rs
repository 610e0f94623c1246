//! Secrets: bearer tokens and verification codes, and their at-rest hashes.
//!
//! Tokens are 128 random bits shown to the client once and stored only as
//! their SHA-256 ([`TokenHash`]). Codes have little entropy, so they are
//! stored as an HMAC-SHA-256 under a server secret ([`CodeHasher`]), bound to
//! the address and purpose they were issued for. Every comparison of hashes
//! is constant-time ([`subtle`]).

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::random::{random_hex, RandomSource};

/// Random bytes in a token: 128 bits.
pub const TOKEN_BYTES: usize = 16;

/// A bearer token in clear, as handed to a client. `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// A fresh random token (32 lowercase hex characters).
    pub fn generate(rng: &dyn RandomSource) -> Self {
        Self(random_hex(rng, TOKEN_BYTES))
    }

    /// Wraps a token presented by a client (not validated: an unknown token
    /// simply matches nothing).
    pub fn from_client(s: &str) -> Self {
        Self(s.to_owned())
    }

    /// The clear token, for the response that hands it out.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The at-rest form.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

/// SHA-256 of a token: the only form stored.
#[derive(Clone, Copy, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenHash(#[serde(with = "hex32")] pub [u8; 32]);

impl TokenHash {
    /// Lowercase hex, for keys.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::hash::Hash for TokenHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// HMAC of a verification code bound to its address and purpose.
#[derive(Clone, Copy, Eq, Serialize, Deserialize)]
pub struct CodeHash(#[serde(with = "hex32")] pub [u8; 32]);

impl PartialEq for CodeHash {
    /// Constant-time.
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for CodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHash(***)")
    }
}

/// Hashes codes under a server secret.
#[derive(Clone)]
pub struct CodeHasher {
    key: [u8; 32],
}

impl CodeHasher {
    /// A hasher keyed with `key`. Keep the key stable across restarts, or
    /// outstanding codes stop matching.
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A hasher with a random key (codes do not survive a restart).
    pub fn random(rng: &dyn RandomSource) -> Self {
        let mut key = [0u8; 32];
        rng.fill(&mut key);
        Self { key }
    }

    /// `HMAC-SHA-256(key, scope || 0 || code)`; `scope` names address and
    /// purpose so a code is valid only where it was issued.
    pub fn hash(&self, scope: &str, code: &str) -> CodeHash {
        // HMAC accepts keys of any length; new_from_slice cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(scope.as_bytes());
        mac.update(&[0]);
        mac.update(code.as_bytes());
        CodeHash(mac.finalize().into_bytes().into())
    }
}

/// Why a code secret's text was refused (the text itself is never echoed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a code secret is 64 hexadecimal digits (32 bytes), e.g. from `openssl rand -hex 32`")]
pub struct SecretFormatError;

/// Parses a code secret written as 64 hexadecimal digits (surrounding
/// whitespace ignored): the form a secret file or environment variable holds.
/// Reading the file or variable is the caller's (the core does no I/O).
pub fn parse_code_secret(text: &str) -> Result<[u8; 32], SecretFormatError> {
    let mut key = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut key).map_err(|_| SecretFormatError)?;
    Ok(key)
}

impl fmt::Debug for CodeHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeHasher(***)")
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    #[test]
    fn token_is_128_bits_hex_and_hash_is_stable() {
        let rng = SeededRandom::new(3);
        let t = Token::generate(&rng);
        assert_eq!(t.expose().len(), 32);
        assert_eq!(t.hash(), Token::from_client(t.expose()).hash());
        assert_eq!(format!("{t:?}"), "Token(***)");
    }

    #[test]
    fn code_hash_is_bound_to_scope_and_key() {
        let a = CodeHasher::new([1; 32]);
        let b = CodeHasher::new([2; 32]);
        assert_eq!(a.hash("s", "123456"), a.hash("s", "123456"));
        assert_ne!(a.hash("s", "123456"), a.hash("t", "123456"));
        assert_ne!(a.hash("s", "123456"), b.hash("s", "123456"));
        assert_ne!(a.hash("s", "123456"), a.hash("s", "123457"));
    }

    #[test]
    fn code_secrets_parse_from_hex_only() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_code_secret(&format!(" {hex64}\n")), Ok([0xab; 32]));
        assert_eq!(parse_code_secret("abc"), Err(SecretFormatError));
        assert_eq!(parse_code_secret(&"zz".repeat(32)), Err(SecretFormatError));
        assert!(!SecretFormatError.to_string().contains("zz"));
    }

    #[test]
    fn hashes_round_trip_through_serde() {
        let h = Token::from_client("x").hash();
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(serde_json::from_str::<TokenHash>(&j).unwrap(), h);
    }
}
