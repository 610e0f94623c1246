//! The JSON wire of `sendapi` (seed 002) and of the root routes that answer
//! in its envelope (wire decisions G3): the `ER:00xx` error table with its
//! HTTP statuses, `{"message":"ok"}`, JSON object bodies and their fields,
//! and Basic authentication of a user or of root. A leaf below both units:
//! it imports no dialect.

use http::{Response, StatusCode};
use serde_json::{json, Map, Value};
use sms_core::user::User;
use sms_core::{Core, CoreError};

use crate::basic_auth;
use crate::response;
use crate::service::{HttpBody, Incoming};

/// One row of the seed's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// `ER:00xx`.
    pub code: &'static str,
    /// The seed's message.
    pub message: &'static str,
}

macro_rules! errors {
    ($($name:ident = $status:literal, $code:literal, $msg:literal;)*) => {
        $(
            #[doc = concat!("`", $code, "` ", $msg)]
            pub const $name: ApiError = ApiError {
                status: match StatusCode::from_u16($status) { Ok(s) => s, Err(_) => StatusCode::BAD_REQUEST },
                code: $code,
                message: $msg,
            };
        )*
    };
}

errors! {
    AUTH = 400, "ER:0001", "auth not pass";
    NOT_JSON = 400, "ER:0002", "post data is not json";
    NOT_ROOT = 400, "ER:0003", "please use root user request";
    PARAMS = 400, "ER:0004", "prams fail";
    EDIT_SIGN = 403, "ER:0011", "edit sign fail";
    DELETE_SIGN = 403, "ER:0012", "delete sign fail";
    SIGN_STATUS = 403, "ER:0013", "sign audit_status fail";
    TEMPLATE_PARAMS = 403, "ER:0021", "template prams fail";
    TEMPLATE_TYPE = 403, "ER:0022", "template type fail";
    SIGN_NOT_OWNED = 403, "ER:0023", "sign id is not belong to user";
    TEMP_NOT_OF_SIGN = 403, "ER:0024", "temp id is not belong to sign";
    EDIT_TEMP = 403, "ER:0025", "edit temp fail, temp status fail.";
    SIGN_NOT_PASSED = 403, "ER:0031", "sign is not passed";
    TEMP_NOT_PASSED = 403, "ER:0032", "temp is not passed";
    INVALID_MOBILE = 403, "ER:0033", "invalidate mobile exist";
    BALANCE = 403, "ER:0034", "balance not enough";
}

impl ApiError {
    /// The error as a response.
    pub fn response(self) -> Response<HttpBody> {
        response::json(
            self.status,
            &json!({"error": self.code, "message": self.message}),
        )
    }
}

/// `200/ok`: `{"message":"ok"}` (decision G3).
pub fn ok() -> Response<HttpBody> {
    response::message(StatusCode::OK, "ok")
}

/// The authenticated user of a request (ER:0001 otherwise).
pub async fn authenticate(core: &Core, req: &Incoming) -> Result<User, ApiError> {
    let (user, password) = basic_auth::credentials(&req.headers).ok_or(AUTH)?;
    auth_answer(
        core.accounts
            .verify_credentials_from(&user, &password, req.client_ip)
            .await,
    )
}

/// The root user of a request (ER:0001, then ER:0003); the rule is the
/// core's ([`sms_core::accounts::Accounts::verify_root_credentials_from`]).
pub async fn authenticate_root(core: &Core, req: &Incoming) -> Result<User, ApiError> {
    let (user, password) = basic_auth::credentials(&req.headers).ok_or(AUTH)?;
    auth_answer(
        core.accounts
            .verify_root_credentials_from(&user, &password, req.client_ip)
            .await,
    )
}

/// The wire answer of a credentials check: ER:0003 for a user who is not
/// root, ER:0001 for every other failure (internal ones logged).
fn auth_answer(result: Result<User, CoreError>) -> Result<User, ApiError> {
    use CoreError as E;
    match result {
        Ok(u) => Ok(u),
        Err(E::NotRoot) => Err(NOT_ROOT),
        // Unknown user, wrong password, locked, banned, the client's
        // failed-password budget spent, hashing at capacity: all "auth not
        // pass", so that none tells an unknown user from a wrong password.
        Err(
            E::UserNotFound
            | E::WrongPassword
            | E::AccountLocked { .. }
            | E::Banned
            | E::RateLimited { .. }
            | E::Overloaded
            | E::UsernameEmpty
            | E::UsernameLength
            | E::UsernameCharset
            | E::UsernameReserved
            | E::PasswordEmpty
            | E::PasswordLength
            | E::PasswordCharset,
        ) => Err(AUTH),
        Err(
            e @ (E::Store(_)
            | E::InvalidPhone
            | E::InvalidEmail
            | E::InvalidName
            | E::InvalidParameter(_)
            | E::UsernameTaken
            | E::PhoneTaken
            | E::EmailTaken
            | E::EmailNotFound
            | E::EmailMismatch
            | E::AlreadyRegistered
            | E::NotRegistered
            | E::CodeCooldown { .. }
            | E::CodeInvalid
            | E::CodeChecksLocked { .. }
            | E::TokenInvalid
            | E::NotValidated
            | E::GrantInvalid
            | E::ItemNotFound
            | E::NumberUnavailable
            | E::NoNumbers
            | E::NotLeased
            | E::InsufficientBalance { .. }
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
            | E::MessageEmpty
            | E::MessageTooLong
            | E::InvalidCount
            | E::SendParams
            | E::OutsideDeviceScope
            | E::Delivery(_)),
        ) => {
            tracing::error!(error = %e, "credentials check failed internally");
            Err(AUTH)
        }
    }
}

/// The JSON object body (ER:0002 otherwise).
pub fn json_object(req: &Incoming) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(NOT_JSON),
    }
}

/// A non-empty string field of at most `max` characters (ER:0004 otherwise).
pub fn string_field<'a>(
    o: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<&'a str, ApiError> {
    match o.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        _ => Err(PARAMS),
    }
}

/// An integer field (ER:0004 otherwise).
pub fn int_field(o: &Map<String, Value>, name: &str) -> Result<i64, ApiError> {
    o.get(name).and_then(Value::as_i64).ok_or(PARAMS)
}
