//! The wire shapes of the `hub` WebSocket protocol (seed 000 and the `hub`
//! wire decisions): message names, frame classification, field readers,
//! response builders and the mapping of [`CoreError`] to each message's codes
//! (one `match` per message).

use serde_json::{json, Map, Value};
use sms_core::CoreError;

/// `code` of every `S…` answer whose request failed inside the platform
/// (store or delivery failure), which the seed does not name.
pub const INTERNAL: i64 = -99;
/// `SCError` code: a known request other than `CSLogin` before a successful
/// `CSLogin`.
pub const NOT_LOGGED_IN: i64 = -100;
/// `SCError` code: a JSON object without a string `protocol`, or with an
/// unknown one.
pub const UNKNOWN_PROTOCOL: i64 = -101;
/// `SCError` code: a frame that is not a JSON object (binary frames
/// included).
pub const NOT_AN_OBJECT: i64 = -102;

/// A client request the protocol knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Login,
    Logout,
    ModifyPwd,
    MobileNum,
    SendMsg,
    BindEmailGetVCode,
    BindEmailCheckVCode,
}

impl Request {
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "CSLogin" => Self::Login,
            "CSLogout" => Self::Logout,
            "CSModifyPwd" => Self::ModifyPwd,
            "CSMobileNum" => Self::MobileNum,
            "CSSendMsg" => Self::SendMsg,
            "CSBindEmailGetVCode" => Self::BindEmailGetVCode,
            "CSBindEmailCheckVCode" => Self::BindEmailCheckVCode,
            _ => return None,
        })
    }

    /// The name of the answer.
    pub(crate) fn answer(self) -> &'static str {
        match self {
            Self::Login => "SCLogin",
            Self::Logout => "SCLogout",
            Self::ModifyPwd => "SCModifyPwd",
            Self::MobileNum => "SCMobileNum",
            Self::SendMsg => "SCSendMsg",
            Self::BindEmailGetVCode => "SCBindEmailGetVCode",
            Self::BindEmailCheckVCode => "SCBindEmailCheckVCode",
        }
    }
}

/// What a text frame is.
#[derive(Debug)]
pub(crate) enum Classified {
    /// A known request and its fields.
    Request(Request, Map<String, Value>),
    /// A frame answered with `SCError` and this code.
    Bad(i64),
}

/// Classifies a text frame. Never panics; every fault is `-101` or `-102`.
pub(crate) fn classify(text: &str) -> Classified {
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        _ => return Classified::Bad(NOT_AN_OBJECT),
    };
    let req = match obj.get("protocol") {
        Some(Value::String(name)) => Request::from_name(name),
        _ => None,
    };
    match req {
        Some(r) => Classified::Request(r, obj),
        None => Classified::Bad(UNKNOWN_PROTOCOL),
    }
}

/// A field read as text: strings as they are, integers in decimal (for
/// clients that send numbers as JSON numbers), anything else (missing, null,
/// other types) as `None`.
pub(crate) fn text_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<TextField<'a>> {
    match obj.get(key)? {
        Value::String(s) => Some(TextField::Borrowed(s)),
        Value::Number(n) if n.is_u64() => Some(TextField::Owned(n.to_string())),
        _ => None,
    }
}

/// A text field, borrowed or rendered from a number.
#[derive(Debug)]
pub(crate) enum TextField<'a> {
    Borrowed(&'a str),
    Owned(String),
}

impl TextField<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Borrowed(s) => s,
            Self::Owned(s) => s,
        }
    }
}

/// A string field; missing or of another type reads as `""`.
pub(crate) fn str_or_empty<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    match obj.get(key) {
        Some(Value::String(s)) => s,
        _ => "",
    }
}

/// An optional field: `None` when missing or `null`.
pub(crate) fn optional<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

/// `count` of `CSMobileNum`: a JSON integer or a string of digits that fits
/// a `u32` (its range is the core's `PoolService::check_lease_count`).
pub(crate) fn parse_count(v: Option<&Value>) -> Option<u32> {
    match v? {
        Value::Number(n) => u32::try_from(n.as_u64()?).ok(),
        Value::String(s)
            if !s.is_empty() && s.len() <= 10 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse::<u32>().ok()
        }
        _ => None,
    }
}

/// Longest `area` of `CSMobileNum`, in characters.
pub(crate) const MAX_AREA_CHARS: usize = 32;

// ----- answers --------------------------------------------------------------

/// `{"protocol":name,"code":code}`.
pub(crate) fn answer(req: Request, code: i64) -> Value {
    json!({ "protocol": req.answer(), "code": code })
}

/// `SCError`.
pub(crate) fn error(code: i64) -> Value {
    let msg = match code {
        NOT_LOGGED_IN => "log in first (CSLogin)",
        UNKNOWN_PROTOCOL => "missing or unknown protocol",
        _ => "a frame must be a JSON object",
    };
    json!({ "protocol": "SCError", "code": code, "msg": msg })
}

/// `PushKickout`.
pub(crate) fn kickout(state: u8) -> Value {
    json!({ "protocol": "PushKickout", "state": state })
}

/// `PushMobileNum`.
pub(crate) fn push_mobile(mobile: &str, until: i64) -> Value {
    json!({ "protocol": "PushMobileNum", "mobileNum": mobile, "useTimestamp": until })
}

/// `PushRecvMsg`.
pub(crate) fn push_recv(mobile: &str, msg: &str) -> Value {
    json!({ "protocol": "PushRecvMsg", "mobileNum": mobile, "msg": msg })
}

// ----- error mapping (one match per message) --------------------------------

fn internal(req: Request, e: &CoreError) -> i64 {
    tracing::error!(request = req.answer(), error = %e, code = e.code(), "hub ws: internal failure");
    INTERNAL
}

/// The one map from core errors to this protocol's `code`s, per request,
/// with the time a new request is allowed where the answer carries one.
/// Exhaustive over [`CoreError`]: a new variant does not compile until it is
/// answered here. Pairs no request can meet are the platform's failure
/// ([`INTERNAL`], logged).
///
/// * `SCLogin`: -1 token invalid, expired, revoked or banned.
/// * `SCModifyPwd`: -1 token, -2 length, -3 empty, -4 characters.
/// * `SCMobileNum`: -1 item, -2 count, -5 custom number, -6 balance, -7
///   none (-3 area and -4 operator are found before the core is asked).
/// * `SCSendMsg`: -1 item, -2 number not leased, -3 too long, -4 empty,
///   -5 balance.
/// * `SCBindEmailGetVCode`: -1 format, -3 bound to another user, -4
///   cooldown or caps (with the retry time), -5 every carrier refused
///   (carriers.md C2).
/// * `SCBindEmailCheckVCode`: -1 format, -2 wrong code, -3 bound to another
///   user.
pub(crate) fn failure(req: Request, e: &CoreError) -> (i64, Option<i64>) {
    use CoreError as E;
    use Request as R;
    let c = match (req, e) {
        (R::Login | R::ModifyPwd, E::TokenInvalid | E::Banned | E::UserNotFound) => -1,
        (R::ModifyPwd, E::PasswordLength) => -2,
        (R::ModifyPwd, E::PasswordEmpty) => -3,
        (R::ModifyPwd, E::PasswordCharset) => -4,
        (R::MobileNum | R::SendMsg, E::ItemNotFound | E::InvalidParameter("item")) => -1,
        (R::MobileNum, E::InvalidCount) => -2,
        (R::MobileNum, E::NumberUnavailable | E::InvalidPhone) => -5,
        (R::MobileNum, E::InsufficientBalance { .. }) => -6,
        (R::MobileNum, E::NoNumbers) => -7,
        (R::SendMsg, E::NotLeased | E::InvalidPhone) => -2,
        (R::SendMsg, E::MessageTooLong) => -3,
        (R::SendMsg, E::MessageEmpty) => -4,
        (R::SendMsg, E::InsufficientBalance { .. }) => -5,
        (R::BindEmailGetVCode | R::BindEmailCheckVCode, E::InvalidEmail) => -1,
        (R::BindEmailGetVCode | R::BindEmailCheckVCode, E::EmailTaken) => -3,
        (R::BindEmailGetVCode, E::CodeCooldown { retry_at } | E::RateLimited { retry_at }) => {
            return (-4, Some(*retry_at));
        }
        (R::BindEmailGetVCode, E::Delivery(_)) => -5,
        (R::BindEmailCheckVCode, E::CodeInvalid | E::CodeChecksLocked { .. }) => -2,
        (
            _,
            E::TokenInvalid
            | E::Banned
            | E::UserNotFound
            | E::PasswordLength
            | E::PasswordEmpty
            | E::PasswordCharset
            | E::ItemNotFound
            | E::InvalidParameter(_)
            | E::InvalidCount
            | E::NumberUnavailable
            | E::InvalidPhone
            | E::InsufficientBalance { .. }
            | E::NoNumbers
            | E::NotLeased
            | E::MessageTooLong
            | E::MessageEmpty
            | E::InvalidEmail
            | E::EmailTaken
            | E::CodeCooldown { .. }
            | E::RateLimited { .. }
            | E::Delivery(_)
            | E::CodeInvalid
            | E::CodeChecksLocked { .. }
            | E::UsernameEmpty
            | E::UsernameLength
            | E::UsernameCharset
            | E::UsernameReserved
            | E::InvalidName
            | E::UsernameTaken
            | E::PhoneTaken
            | E::WrongPassword
            | E::AccountLocked { .. }
            | E::EmailNotFound
            | E::EmailMismatch
            | E::AlreadyRegistered
            | E::NotRegistered
            | E::NotValidated
            | E::GrantInvalid
            | E::SignatureNotOwned
            | E::TemplateNotOfSignature
            | E::SignatureLocked
            | E::TemplateLocked
            | E::SignatureInUse
            | E::SignatureNotPending
            | E::SignatureNotPassed
            | E::TemplateNotPassed
            | E::InvalidMobiles
            | E::TemplateField
            | E::TemplateType
            | E::SendParams
            | E::OutsideDeviceScope
            | E::Overloaded
            | E::NotRoot
            | E::Store(_),
        ) => internal(req, e),
    };
    (c, None)
}

/// [`failure`]'s `code` alone, for requests whose answer has no retry time.
pub(crate) fn failure_code(req: Request, e: &CoreError) -> i64 {
    failure(req, e).0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(text: &str) -> Option<i64> {
        match classify(text) {
            Classified::Bad(c) => Some(c),
            Classified::Request(..) => None,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(bad("garbage"), Some(NOT_AN_OBJECT));
        assert_eq!(bad("[1,2]"), Some(NOT_AN_OBJECT));
        assert_eq!(bad("\"CSLogin\""), Some(NOT_AN_OBJECT));
        assert_eq!(bad(""), Some(NOT_AN_OBJECT));
        assert_eq!(bad("{}"), Some(UNKNOWN_PROTOCOL));
        assert_eq!(bad(r#"{"protocol":1}"#), Some(UNKNOWN_PROTOCOL));
        assert_eq!(bad(r#"{"protocol":"SCLogin"}"#), Some(UNKNOWN_PROTOCOL));
        assert_eq!(bad(r#"{"protocol":"CSLogin"}"#), None);
        let deep = "[".repeat(10_000);
        assert_eq!(bad(&deep), Some(NOT_AN_OBJECT));
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count(Some(&json!(1))), Some(1));
        assert_eq!(parse_count(Some(&json!("20"))), Some(20));
        assert_eq!(parse_count(Some(&json!(0))), Some(0));
        assert_eq!(parse_count(Some(&json!(21))), Some(21));
        assert_eq!(parse_count(Some(&json!(1.5))), None);
        assert_eq!(parse_count(Some(&json!(-1))), None);
        assert_eq!(parse_count(Some(&json!(""))), None);
        assert_eq!(parse_count(Some(&json!(" 2"))), None);
        assert_eq!(parse_count(Some(&json!("99999999999999999999"))), None);
        assert_eq!(parse_count(Some(&json!(null))), None);
        assert_eq!(parse_count(None), None);
    }
}
