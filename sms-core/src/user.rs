//! The account record shared by every dialect (decision G8).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::identity::{DisplayName, Email, Username};
use crate::phone::PhoneNumber;
use crate::random::{random_hex, RandomSource};

/// A user's id: 128 random bits as 32 lowercase hex characters (the form
/// `account_v4` shows as `user_id`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// A fresh random id.
    pub fn generate(rng: &dyn RandomSource) -> Self {
        Self(random_hex(rng, 16))
    }

    /// Wraps a stored id.
    pub fn from_string(s: String) -> Self {
        Self(s)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One account. A user has at least one of username and phone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id.
    pub id: UserId,
    /// Unique, case-insensitive.
    pub username: Option<Username>,
    /// Unique (E.164).
    pub phone: Option<PhoneNumber>,
    /// Unique (lowercased); bound through `hub`'s email binding.
    pub email: Option<Email>,
    /// Display name (`account_v4`).
    pub name: Option<DisplayName>,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// The device of the last login or registration (`account_v4`).
    pub device: Option<String>,
    /// Banned accounts cannot log in.
    pub banned: bool,
    /// Loyalty points shown by `hub` (`point`).
    pub points: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// One change to a user, applied atomically by [`crate::store::UserStore::update_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserChange {
    /// Replace the password hash.
    SetPassword(String),
    /// Bind (or unbind) the email; unique.
    SetEmail(Option<Email>),
    /// Record the current device.
    SetDevice(Option<String>),
    /// Ban or unban.
    SetBanned(bool),
}

impl UserChange {
    /// Applies the change to a record in memory (backends call this inside
    /// their transaction and then maintain their indexes).
    pub fn apply(&self, user: &mut User) {
        match self {
            Self::SetPassword(h) => user.password_hash = h.clone(),
            Self::SetEmail(e) => user.email = e.clone(),
            Self::SetDevice(d) => user.device = d.clone(),
            Self::SetBanned(b) => user.banned = *b,
        }
    }
}
