//! Validated identity values: usernames, passwords, emails and display names
//! (decision G8).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::CoreError;

/// The administrator's username; it cannot be signed up.
pub const ROOT_USERNAME: &str = "root";

/// A username: 3–20 ASCII letters, digits or `_`. Uniqueness is
/// case-insensitive ([`Username::key`]); the spelling given at sign-up is kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Username(String);

impl Username {
    /// Shortest accepted username.
    pub const MIN_LEN: usize = 3;
    /// Longest accepted username.
    pub const MAX_LEN: usize = 20;

    /// Validates a username; checks, in order: empty, length, characters.
    pub fn parse(input: &str) -> Result<Self, CoreError> {
        if input.is_empty() {
            return Err(CoreError::UsernameEmpty);
        }
        let len = input.chars().count();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(CoreError::UsernameLength);
        }
        if !input
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(CoreError::UsernameCharset);
        }
        Ok(Self(input.to_owned()))
    }

    /// The username as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The uniqueness key: the lowercased username.
    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }

    /// True for the administrator account `root` (any case).
    pub fn is_root(&self) -> bool {
        self.0.eq_ignore_ascii_case(ROOT_USERNAME)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Length rules for passwords; the characters are always printable ASCII
/// without spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min: usize,
    /// Most characters.
    pub max: usize,
}

impl PasswordPolicy {
    /// 6–32 characters: every dialect but `account_v4` (decision G8).
    pub const STANDARD: Self = Self { min: 6, max: 32 };
    /// 6–14 characters: what the `account_v4` seed says.
    pub const SHORT: Self = Self { min: 6, max: 14 };
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self::STANDARD
    }
}

/// A password that passed a [`PasswordPolicy`]. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Validates a password; checks, in order: empty, length, characters.
    pub fn parse(input: &str, policy: PasswordPolicy) -> Result<Self, CoreError> {
        if input.is_empty() {
            return Err(CoreError::PasswordEmpty);
        }
        let len = input.chars().count();
        if len < policy.min || len > policy.max {
            return Err(CoreError::PasswordLength);
        }
        if !input.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CoreError::PasswordCharset);
        }
        Ok(Self(input.to_owned()))
    }

    /// The clear password, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// An email address, trimmed and lowercased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Longest accepted address (RFC 5321 path limit).
    pub const MAX_LEN: usize = 254;

    /// Validates an address: one `@`, a non-empty local part, a domain with a
    /// dot, no whitespace or control characters, at most 254 bytes.
    pub fn parse(input: &str) -> Result<Self, CoreError> {
        let s = input.trim();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(CoreError::InvalidEmail);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(CoreError::InvalidEmail);
        }
        let (local, domain) = s.split_once('@').ok_or(CoreError::InvalidEmail)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(CoreError::InvalidEmail);
        }
        Ok(Self(s.to_lowercase()))
    }

    /// The normalised address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name (`account_v4`'s `name`): 1–64 characters, no control
/// characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    /// Longest accepted name, in characters.
    pub const MAX_LEN: usize = 64;

    /// Validates a display name.
    pub fn parse(input: &str) -> Result<Self, CoreError> {
        let s = input.trim();
        if s.is_empty() || s.chars().count() > Self::MAX_LEN || s.chars().any(char::is_control) {
            return Err(CoreError::InvalidName);
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_rules_in_order() {
        assert!(matches!(Username::parse(""), Err(CoreError::UsernameEmpty)));
        assert!(matches!(
            Username::parse("ab"),
            Err(CoreError::UsernameLength)
        ));
        assert!(matches!(
            Username::parse(&"a".repeat(21)),
            Err(CoreError::UsernameLength)
        ));
        assert!(matches!(
            Username::parse("ab c"),
            Err(CoreError::UsernameCharset)
        ));
        assert!(matches!(
            Username::parse("名字名字"),
            Err(CoreError::UsernameCharset)
        ));
        assert_eq!(Username::parse("Alice_1").unwrap().key(), "alice_1");
        assert!(Username::parse("ROOT").unwrap().is_root());
    }

    #[test]
    fn password_rules() {
        let p = PasswordPolicy::STANDARD;
        assert!(matches!(
            Password::parse("", p),
            Err(CoreError::PasswordEmpty)
        ));
        assert!(matches!(
            Password::parse("12345", p),
            Err(CoreError::PasswordLength)
        ));
        assert!(matches!(
            Password::parse(&"x".repeat(33), p),
            Err(CoreError::PasswordLength)
        ));
        assert!(matches!(
            Password::parse("abc def", p),
            Err(CoreError::PasswordCharset)
        ));
        assert!(matches!(
            Password::parse("abcdé1", p),
            Err(CoreError::PasswordCharset)
        ));
        assert!(Password::parse(&"x".repeat(32), p).is_ok());
        assert!(matches!(
            Password::parse(&"x".repeat(15), PasswordPolicy::SHORT),
            Err(CoreError::PasswordLength)
        ));
        assert_eq!(
            format!("{:?}", Password::parse("secret1", p).unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn email_rules() {
        assert_eq!(
            Email::parse(" A@Example.COM ").unwrap().as_str(),
            "a@example.com"
        );
        for bad in [
            "", "a", "a@b", "@b.c", "a@b..c", "a b@c.d", "a@b@c.d", "a@.b.c", "a@b.c.",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_name_rules() {
        assert!(DisplayName::parse("  ").is_err());
        assert!(DisplayName::parse("a\u{7}").is_err());
        assert_eq!(DisplayName::parse(" 于连林 ").unwrap().as_str(), "于连林");
    }
}
