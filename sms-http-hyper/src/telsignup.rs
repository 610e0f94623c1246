//! The `telsignup` dialect (seed 001): `POST /index.php?r=user/<action>` with
//! a JSON body whose `type` must match the action. Responses carry `type`,
//! `success`, `error_no` and `error_msg` exactly as the seed shows, HTTP 200.

use http::Response;
use serde_json::{json, Map, Value};
use sms_core::phone::PhoneNumber;
use sms_core::{Core, CoreError};

use crate::response;
use crate::service::{HttpBody, Incoming};

/// A `telsignup` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `user/sms-validation-request`.
    ValidationRequest,
    /// `user/sms-validation-code`.
    ValidationCode,
    /// `user/register`.
    Register,
}

impl Action {
    fn from_route(r: &str) -> Option<Self> {
        Some(match r {
            "user/sms-validation-request" => Self::ValidationRequest,
            "user/sms-validation-code" => Self::ValidationCode,
            "user/register" => Self::Register,
            _ => return None,
        })
    }

    /// The `type` a request for this action must carry.
    pub fn request_type(self) -> &'static str {
        match self {
            Self::ValidationRequest => "sms_validation_request",
            Self::ValidationCode => "sms_validation_code",
            Self::Register => "register",
        }
    }

    /// The `type` of this action's responses.
    pub fn response_type(self) -> &'static str {
        match self {
            Self::ValidationRequest => "sms_validation_send",
            Self::ValidationCode => "sms_validation_result",
            Self::Register => "register",
        }
    }

    /// The seed's `error_msg` for `error_no` under this action.
    pub fn error_msg(self, error_no: i64) -> &'static str {
        match (self, error_no) {
            (_, 1) => "json decode failed.",
            (_, 2) => "input not valid.",
            (Self::ValidationRequest, 3) => "database error.",
            (Self::ValidationRequest, 4) => "3rd party sms send failed.",
            (Self::ValidationCode, 3) => "validation code invalid.",
            (Self::Register, 3) => "tel not found.",
            (Self::Register, 4) => "token not valid.",
            (Self::Register, 5) => "tel not verified.",
            (_, 7) => "tel or username already registered.",
            _ => "database error.",
        }
    }
}

/// `error_no` for platform failures of an action: the seed's "database
/// error." entry (3 for the request, 6 otherwise).
fn internal_no(action: Action, e: &CoreError) -> i64 {
    tracing::error!(error = %e, "telsignup: internal failure");
    match action {
        Action::ValidationRequest => 3,
        _ => 6,
    }
}

/// The one map from core errors to this dialect's `error_no`, per action.
/// Exhaustive over [`CoreError`]: a new variant does not compile until it is
/// answered here. Pairs no action can meet are the seed's "database error."
/// (logged).
fn failure_no(action: Action, e: CoreError) -> i64 {
    use Action as A;
    use CoreError as E;
    match (action, &e) {
        // Limited, or every carrier of the route refused the code
        // (carriers.md C2): "3rd party sms send failed.".
        (A::ValidationRequest, E::CodeCooldown { .. } | E::RateLimited { .. } | E::Delivery(_)) => {
            4
        }
        (A::ValidationCode, E::CodeInvalid | E::CodeChecksLocked { .. }) => 3,
        (A::Register, E::InvalidPhone) => 3,
        (A::Register, E::NotValidated) => 5,
        (A::Register, E::GrantInvalid) => 4,
        (
            A::Register,
            E::UsernameEmpty
            | E::UsernameLength
            | E::UsernameCharset
            | E::PasswordEmpty
            | E::PasswordLength
            | E::PasswordCharset,
        ) => 2,
        (A::Register, E::UsernameTaken | E::UsernameReserved | E::PhoneTaken) => 7,
        (
            _,
            E::CodeCooldown { .. }
            | E::RateLimited { .. }
            | E::Delivery(_)
            | E::CodeInvalid
            | E::CodeChecksLocked { .. }
            | E::InvalidPhone
            | E::NotValidated
            | E::GrantInvalid
            | E::UsernameEmpty
            | E::UsernameLength
            | E::UsernameCharset
            | E::PasswordEmpty
            | E::PasswordLength
            | E::PasswordCharset
            | E::UsernameTaken
            | E::UsernameReserved
            | E::PhoneTaken
            | E::InvalidEmail
            | E::InvalidName
            | E::InvalidParameter(_)
            | E::EmailTaken
            | E::UserNotFound
            | E::WrongPassword
            | E::AccountLocked { .. }
            | E::Banned
            | E::EmailNotFound
            | E::EmailMismatch
            | E::AlreadyRegistered
            | E::NotRegistered
            | E::TokenInvalid
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
            | E::Overloaded
            | E::NotRoot
            | E::Store(_),
        ) => internal_no(action, &e),
    }
}

fn failure(action: Action, error_no: i64) -> Value {
    json!({
        "type": action.response_type(),
        "success": false,
        "error_no": error_no,
        "error_msg": action.error_msg(error_no),
    })
}

fn success(action: Action, extra: Value) -> Value {
    let mut out = json!({
        "type": action.response_type(),
        "success": true,
        "error_no": 0,
        "error_msg": null,
    });
    if let (Some(o), Value::Object(e)) = (out.as_object_mut(), extra) {
        o.extend(e);
    }
    out
}

/// Serves one `telsignup` request.
pub async fn handle(core: &Core, req: &Incoming) -> Response<HttpBody> {
    let route = req.query.as_deref().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "r")
            .map(|(_, v)| v.into_owned())
    });
    let Some(action) = route.as_deref().and_then(Action::from_route) else {
        // An unknown action is "input not valid" (2).
        return response::ok(&json!({
            "type": "error",
            "success": false,
            "error_no": 2,
            "error_msg": "input not valid.",
        }));
    };
    let body = match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(o)) => o,
        _ => return response::ok(&failure(action, 1)),
    };
    let out = match serve(core, action, &body, req).await {
        Ok(v) => v,
        Err(no) => failure(action, no),
    };
    response::ok(&out)
}

/// A required string field.
fn string<'a>(o: &'a Map<String, Value>, name: &str) -> Result<&'a str, i64> {
    match o.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(2),
    }
}

/// `time`: digits, as a string or a non-negative integer.
fn time_ok(o: &Map<String, Value>) -> bool {
    match o.get("time") {
        Some(Value::String(s)) => {
            !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
        }
        Some(Value::Number(n)) => n.is_u64(),
        _ => false,
    }
}

async fn serve(
    core: &Core,
    action: Action,
    o: &Map<String, Value>,
    req: &Incoming,
) -> Result<Value, i64> {
    if o.get("type").and_then(Value::as_str) != Some(action.request_type()) {
        return Err(2);
    }
    match action {
        Action::ValidationRequest => {
            let tel = string(o, "tel")?;
            if !time_ok(o) {
                return Err(2);
            }
            let phone = PhoneNumber::parse_cn_mobile(tel).map_err(|_| 2)?;
            match core
                .accounts
                .request_signup_code(&phone, req.client_ip)
                .await
            {
                Ok(_) => Ok(success(action, json!({}))),
                Err(e) => Err(failure_no(action, e)),
            }
        }
        Action::ValidationCode => {
            let tel = string(o, "tel")?;
            let code = string(o, "code")?;
            if !time_ok(o) {
                return Err(2);
            }
            let phone = PhoneNumber::parse_cn_mobile(tel).map_err(|_| 2)?;
            match core.accounts.validate_signup_code(&phone, code).await {
                Ok(token) => Ok(success(action, json!({ "token": token.expose() }))),
                Err(e) => Err(failure_no(action, e)),
            }
        }
        Action::Register => {
            // A field of the wrong JSON type is "input not valid" (2) at
            // once; a missing (or null) one is judged in the decisions'
            // order: tel (3), validation (5), token (4), names (2).
            let tel = match o.get("tel") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(2),
            };
            let token = match o.get("token") {
                None | Some(Value::Null) => "",
                Some(Value::String(s)) => s.as_str(),
                Some(_) => return Err(2),
            };
            let (username, password) = match (o.get("username"), o.get("password")) {
                (Some(Value::String(u)), Some(Value::String(p))) => (u.as_str(), p.as_str()),
                (None | Some(Value::String(_)), None | Some(Value::String(_))) => ("", ""),
                _ => return Err(2),
            };
            if o.contains_key("time") && !time_ok(o) {
                return Err(2);
            }
            match core
                .accounts
                .register_with_grant(tel, token, username, password)
                .await
            {
                Ok(r) => Ok(success(
                    action,
                    json!({
                        "token": r.token.expose(),
                        "huanxin_id": r.chat.id,
                        "huanxin_password": r.chat.password,
                    }),
                )),
                Err(e) => Err(failure_no(action, e)),
            }
        }
    }
}
