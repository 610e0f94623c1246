//! Errors of the core: one domain enum with a stable machine code per variant,
//! and the storage error every store port returns.
//!
//! Front ends map [`CoreError`] variants to their own wire codes in one `match`
//! of their own; the core knows nothing of dialects.

use std::error::Error as StdError;

use thiserror::Error;

/// Which unique field a write collided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueField {
    /// The username (compared case-insensitively).
    Username,
    /// The phone number (E.164).
    Phone,
    /// The email address (lowercased).
    Email,
    /// The record's own id.
    Id,
}

/// A failure of a storage backend.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A unique field already belongs to another record.
    #[error("unique constraint on {0:?}")]
    Conflict(UniqueField),
    /// The record to change does not exist.
    #[error("record not found")]
    NotFound,
    /// The backend failed (I/O, corruption, connection …).
    #[error("storage backend failed: {0}")]
    Backend(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(e: impl StdError + Send + Sync + 'static) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// Every way a core operation can fail, each with a stable [`code`](Self::code).
///
/// Deliberately *not* `#[non_exhaustive]`: each front end maps these to its
/// own wire codes in one exhaustive `match`, so a new variant is a compile
/// error in every dialect until someone decides what that dialect answers
/// (rather than a silent "internal error"). Adding a variant is therefore a
/// breaking change, released as such.
#[derive(Debug, Error)]
pub enum CoreError {
    /// The phone number is not valid (decision G5).
    #[error("invalid phone number")]
    InvalidPhone,
    /// The email address is not valid.
    #[error("invalid email address")]
    InvalidEmail,
    /// The username is empty.
    #[error("username is empty")]
    UsernameEmpty,
    /// The username is shorter or longer than allowed.
    #[error("username length out of range")]
    UsernameLength,
    /// The username holds characters other than ASCII letters, digits and `_`.
    #[error("username has forbidden characters")]
    UsernameCharset,
    /// The username is reserved (`root`).
    #[error("username is reserved")]
    UsernameReserved,
    /// The password is empty.
    #[error("password is empty")]
    PasswordEmpty,
    /// The password is shorter or longer than the policy allows.
    #[error("password length out of range")]
    PasswordLength,
    /// The password holds spaces or non-printable / non-ASCII characters.
    #[error("password has forbidden characters")]
    PasswordCharset,
    /// A display name is empty or too long.
    #[error("invalid name")]
    InvalidName,
    /// A parameter is malformed (the message says which).
    #[error("invalid parameter: {0}")]
    InvalidParameter(&'static str),
    /// The username already belongs to an account.
    #[error("username already registered")]
    UsernameTaken,
    /// The phone number already belongs to an account.
    #[error("phone already registered")]
    PhoneTaken,
    /// The email address already belongs to another account.
    #[error("email bound to another account")]
    EmailTaken,
    /// No account matches.
    #[error("no such user")]
    UserNotFound,
    /// The password does not match.
    #[error("wrong password")]
    WrongPassword,
    /// Too many failed logins; the account is locked until `until` (Unix s).
    #[error("account locked until {until}")]
    AccountLocked {
        /// When logins are accepted again.
        until: i64,
    },
    /// The account is banned.
    #[error("account banned")]
    Banned,
    /// No account has this email address.
    #[error("email not found")]
    EmailNotFound,
    /// The email does not belong to the named user.
    #[error("email does not match the user")]
    EmailMismatch,
    /// The phone is registered, against the caller's expectation.
    #[error("phone already registered")]
    AlreadyRegistered,
    /// The phone is not registered, against the caller's expectation.
    #[error("phone not registered")]
    NotRegistered,
    /// A new code was asked for within the resend cooldown.
    #[error("code requested too soon; retry at {retry_at}")]
    CodeCooldown {
        /// When a new code may be requested (Unix s).
        retry_at: i64,
    },
    /// An hourly or daily cap (per address, per client IP, per prefix) is
    /// exhausted.
    #[error("rate limited; retry at {retry_at}")]
    RateLimited {
        /// When the limit allows another request (Unix s).
        retry_at: i64,
    },
    /// The code is wrong, expired, used, or void after too many tries.
    #[error("verification code invalid")]
    CodeInvalid,
    /// Checks for this address are refused after too many failures.
    #[error("code checks locked until {retry_at}")]
    CodeChecksLocked {
        /// When checks are accepted again (Unix s).
        retry_at: i64,
    },
    /// The session token is unknown, expired or revoked.
    #[error("token invalid or expired")]
    TokenInvalid,
    /// The phone never completed a validation (no grant was ever issued).
    #[error("no successful validation for this phone")]
    NotValidated,
    /// A grant exists but the presented token does not match it, or it is
    /// expired or used.
    #[error("grant token invalid")]
    GrantInvalid,
    /// No item (app) with this id.
    #[error("no such item")]
    ItemNotFound,
    /// The asked-for number is not in the pool or not available for the item.
    #[error("number not available")]
    NumberUnavailable,
    /// No number is available for the item and filters.
    #[error("no number available")]
    NoNumbers,
    /// The number is not leased by this user for this item.
    #[error("number not leased by this user for this item")]
    NotLeased,
    /// The balance does not cover the amount.
    #[error("insufficient balance: {available} available")]
    InsufficientBalance {
        /// What was available.
        available: i64,
    },
    /// The signature does not exist or belongs to another user.
    #[error("signature not owned")]
    SignatureNotOwned,
    /// The template does not exist, belongs to another user, or is not of this signature.
    #[error("template not of signature")]
    TemplateNotOfSignature,
    /// A passed signature cannot be edited.
    #[error("signature not editable")]
    SignatureLocked,
    /// A passed template cannot be edited, or a review found it not pending.
    #[error("template status does not allow this")]
    TemplateLocked,
    /// The signature still has templates.
    #[error("signature has templates")]
    SignatureInUse,
    /// A review found the signature not pending.
    #[error("signature not pending")]
    SignatureNotPending,
    /// The signature has not passed review.
    #[error("signature not passed")]
    SignatureNotPassed,
    /// The template has not passed review.
    #[error("template not passed")]
    TemplateNotPassed,
    /// A recipient is invalid, or there are none or too many.
    #[error("invalid mobiles")]
    InvalidMobiles,
    /// A template's name, content or description is missing, empty or too long.
    #[error("template field invalid")]
    TemplateField,
    /// A template type other than 1, 2 or 3.
    #[error("template type invalid")]
    TemplateType,
    /// A text to send is empty.
    #[error("message empty")]
    MessageEmpty,
    /// A text to send is longer than allowed.
    #[error("message too long")]
    MessageTooLong,
    /// A count of numbers is out of range.
    #[error("count out of range")]
    InvalidCount,
    /// A `params` value of a send is refused: too long, a rendered text too
    /// long, a forbidden character (`【】`, control, bidi), or not digits and
    /// letters for a verification-code template
    /// ([`crate::sending::check_params`]).
    #[error("send parameter refused")]
    SendParams,
    /// A device credential bound to some channels (`cid`s) was used for a
    /// number or channel outside them.
    #[error("outside the device's channels")]
    OutsideDeviceScope,
    /// Too many password checks are running or waiting; try again shortly.
    #[error("password checks at capacity")]
    Overloaded,
    /// The message could not be delivered by the sender.
    #[error("delivery failed: {0}")]
    Delivery(String),
    /// The call needs the administrator account `root` (decision G8), or
    /// would act on root where nobody may (banning it).
    #[error("only the administrator may do this, and not to itself")]
    NotRoot,
    /// The storage backend failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CoreError {
    /// A stable machine code for this error, for logs and generic clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidPhone => "invalid_phone",
            Self::InvalidEmail => "invalid_email",
            Self::UsernameEmpty => "username_empty",
            Self::UsernameLength => "username_length",
            Self::UsernameCharset => "username_charset",
            Self::UsernameReserved => "username_reserved",
            Self::PasswordEmpty => "password_empty",
            Self::PasswordLength => "password_length",
            Self::PasswordCharset => "password_charset",
            Self::InvalidName => "invalid_name",
            Self::InvalidParameter(_) => "invalid_parameter",
            Self::UsernameTaken => "username_taken",
            Self::PhoneTaken => "phone_taken",
            Self::EmailTaken => "email_taken",
            Self::UserNotFound => "user_not_found",
            Self::WrongPassword => "wrong_password",
            Self::AccountLocked { .. } => "account_locked",
            Self::Banned => "banned",
            Self::EmailNotFound => "email_not_found",
            Self::EmailMismatch => "email_mismatch",
            Self::AlreadyRegistered => "already_registered",
            Self::NotRegistered => "not_registered",
            Self::CodeCooldown { .. } => "code_cooldown",
            Self::RateLimited { .. } => "rate_limited",
            Self::CodeInvalid => "code_invalid",
            Self::CodeChecksLocked { .. } => "code_checks_locked",
            Self::TokenInvalid => "token_invalid",
            Self::NotValidated => "not_validated",
            Self::GrantInvalid => "grant_invalid",
            Self::ItemNotFound => "item_not_found",
            Self::NumberUnavailable => "number_unavailable",
            Self::NoNumbers => "no_numbers",
            Self::NotLeased => "not_leased",
            Self::InsufficientBalance { .. } => "insufficient_balance",
            Self::SignatureNotOwned => "signature_not_owned",
            Self::TemplateNotOfSignature => "template_not_of_signature",
            Self::SignatureLocked => "signature_locked",
            Self::TemplateLocked => "template_locked",
            Self::SignatureInUse => "signature_in_use",
            Self::SignatureNotPending => "signature_not_pending",
            Self::SignatureNotPassed => "signature_not_passed",
            Self::TemplateNotPassed => "template_not_passed",
            Self::InvalidMobiles => "invalid_mobiles",
            Self::TemplateField => "template_field",
            Self::TemplateType => "template_type",
            Self::MessageEmpty => "message_empty",
            Self::MessageTooLong => "message_too_long",
            Self::InvalidCount => "invalid_count",
            Self::SendParams => "send_params",
            Self::Overloaded => "overloaded",
            Self::OutsideDeviceScope => "outside_device_scope",
            Self::Delivery(_) => "delivery_failed",
            Self::NotRoot => "not_root",
            Self::Store(_) => "store_failed",
        }
    }

    /// True for failures of the platform itself rather than of the request.
    pub fn is_internal(&self) -> bool {
        matches!(self, Self::Store(_) | Self::Delivery(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct() {
        let all = [
            CoreError::InvalidPhone,
            CoreError::InvalidEmail,
            CoreError::UsernameEmpty,
            CoreError::UsernameLength,
            CoreError::UsernameCharset,
            CoreError::UsernameReserved,
            CoreError::PasswordEmpty,
            CoreError::PasswordLength,
            CoreError::PasswordCharset,
            CoreError::InvalidName,
            CoreError::InvalidParameter("x"),
            CoreError::NotRoot,
            CoreError::UsernameTaken,
            CoreError::PhoneTaken,
            CoreError::EmailTaken,
            CoreError::UserNotFound,
            CoreError::WrongPassword,
            CoreError::AccountLocked { until: 0 },
            CoreError::Banned,
            CoreError::EmailNotFound,
            CoreError::EmailMismatch,
            CoreError::AlreadyRegistered,
            CoreError::NotRegistered,
            CoreError::CodeCooldown { retry_at: 0 },
            CoreError::RateLimited { retry_at: 0 },
            CoreError::CodeInvalid,
            CoreError::CodeChecksLocked { retry_at: 0 },
            CoreError::TokenInvalid,
            CoreError::NotValidated,
            CoreError::GrantInvalid,
            CoreError::ItemNotFound,
            CoreError::NumberUnavailable,
            CoreError::NoNumbers,
            CoreError::NotLeased,
            CoreError::InsufficientBalance { available: 0 },
            CoreError::SignatureNotOwned,
            CoreError::TemplateNotOfSignature,
            CoreError::SignatureLocked,
            CoreError::TemplateLocked,
            CoreError::SignatureInUse,
            CoreError::SignatureNotPending,
            CoreError::SignatureNotPassed,
            CoreError::TemplateNotPassed,
            CoreError::InvalidMobiles,
            CoreError::TemplateField,
            CoreError::TemplateType,
            CoreError::MessageEmpty,
            CoreError::MessageTooLong,
            CoreError::InvalidCount,
            CoreError::SendParams,
            CoreError::Overloaded,
            CoreError::OutsideDeviceScope,
            CoreError::Delivery(String::new()),
            CoreError::Store(StoreError::NotFound),
        ];
        let mut codes: Vec<_> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
    }
}
