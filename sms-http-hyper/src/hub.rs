//! The `hub` dialect's HTTP part (seed 000): `POST /signup`, `POST /login`,
//! `POST /forgot/vcode`, `POST /forgot/verify`. Parameters as G2; the result
//! is in the body's `code` (0 success, negative failure), HTTP 200.

use http::Response;
use serde_json::{json, Value};
use sms_core::{Core, CoreError};

use crate::params::{Field, Params};
use crate::response;
use crate::service::{HttpBody, Incoming};

/// `code` for failures of the platform itself (store or delivery), which the
/// seed does not name.
pub const INTERNAL: i64 = -99;

/// `forgot/verify` extension: too many failed recovery attempts from this
/// client (the per-IP probe budget is spent), whatever the user.
pub const RECOVERY_TOO_FREQUENT: i64 = -7;

/// `forgot/vcode` and `forgot/verify` extension: the user is banned and
/// cannot recover the account.
pub const RECOVERY_BANNED: i64 = -8;

/// A `hub` HTTP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /signup`.
    Signup,
    /// `POST /login`.
    Login,
    /// `POST /forgot/vcode`.
    ForgotVcode,
    /// `POST /forgot/verify`.
    ForgotVerify,
}

impl Endpoint {
    /// The endpoint at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/signup" => Self::Signup,
            "/login" => Self::Login,
            "/forgot/vcode" => Self::ForgotVcode,
            "/forgot/verify" => Self::ForgotVerify,
            _ => return None,
        })
    }
}

fn code(c: i64) -> Value {
    json!({ "code": c })
}

fn internal(e: &CoreError) -> Value {
    tracing::error!(error = %e, "hub: internal failure");
    code(INTERNAL)
}

/// Serves one `hub` request.
pub async fn handle(core: &Core, endpoint: Endpoint, req: &Incoming) -> Response<HttpBody> {
    let p = Params::from_parts(req.query.as_deref(), req.content_type.as_deref(), &req.body);
    let body = match endpoint {
        Endpoint::Signup => signup(core, &p).await,
        Endpoint::Login => login(core, &p, req).await,
        Endpoint::ForgotVcode => forgot_vcode(core, &p, req).await,
        Endpoint::ForgotVerify => forgot_verify(core, &p, req).await,
    };
    response::ok(&body)
}

/// A text field where a wrong JSON type reads as a value no rule accepts.
fn raw<'a>(p: &'a Params, name: &str) -> &'a str {
    match p.field(name) {
        Field::Missing => "",
        Field::Text(s) => s,
        Field::Invalid => "\u{0}",
    }
}

async fn signup(core: &Core, p: &Params) -> Value {
    match core
        .accounts
        .sign_up_username(raw(p, "user"), raw(p, "password"))
        .await
    {
        Ok(token) => json!({ "code": 0, "token": token.expose() }),
        Err(e) => code(match e {
            CoreError::UsernameLength => -1,
            CoreError::UsernameEmpty => -2,
            CoreError::UsernameCharset => -3,
            CoreError::PasswordLength => -4,
            CoreError::PasswordEmpty => -5,
            CoreError::PasswordCharset => -6,
            CoreError::UsernameTaken | CoreError::UsernameReserved => -7,
            other => return internal(&other),
        }),
    }
}

async fn login(core: &Core, p: &Params, req: &Incoming) -> Value {
    let (user, password) = (raw(p, "user"), raw(p, "password"));
    if user.is_empty() {
        return code(-2);
    }
    if password.is_empty() {
        return code(-3);
    }
    match core
        .accounts
        .login_username_from(user, password, req.client_ip)
        .await
    {
        Ok(token) => json!({ "code": 0, "token": token.expose() }),
        Err(e) => code(match e {
            CoreError::UserNotFound => -1,
            CoreError::WrongPassword => -4,
            // Locked account, the client's probe or failed-password budget
            // spent, or too many password checks at once: "too many
            // attempts".
            CoreError::AccountLocked { .. }
            | CoreError::RateLimited { .. }
            | CoreError::Overloaded => -5,
            CoreError::Banned => -6,
            other => return internal(&other),
        }),
    }
}

/// The checks both recovery steps share: empty user (-2), empty email (-4);
/// the core then answers unknown user (-1), unknown email (-3), mismatch (-5).
fn recovery_fields(p: &Params) -> Result<(&str, &str), Value> {
    let (user, email) = (raw(p, "user"), raw(p, "email"));
    if user.is_empty() {
        return Err(code(-2));
    }
    if email.is_empty() {
        return Err(code(-4));
    }
    Ok((user, email))
}

fn recovery_error(e: CoreError) -> Result<i64, CoreError> {
    Ok(match e {
        CoreError::UserNotFound => -1,
        CoreError::EmailNotFound => -3,
        CoreError::EmailMismatch => -5,
        CoreError::Banned => RECOVERY_BANNED,
        other => return Err(other),
    })
}

async fn forgot_vcode(core: &Core, p: &Params, req: &Incoming) -> Value {
    let (user, email) = match recovery_fields(p) {
        Ok(f) => f,
        Err(v) => return v,
    };
    match core
        .accounts
        .request_recovery_code(user, email, req.client_ip)
        .await
    {
        Ok(issued) => json!({ "code": 0, "againTimestamp": issued.again_at }),
        Err(CoreError::CodeCooldown { retry_at } | CoreError::RateLimited { retry_at }) => {
            json!({ "code": -6, "againTimestamp": retry_at })
        }
        // carriers.md C2: every carrier of the route refused the code.
        Err(CoreError::Delivery(_)) => code(-7),
        Err(e) => match recovery_error(e) {
            Ok(c) => code(c),
            Err(other) => internal(&other),
        },
    }
}

async fn forgot_verify(core: &Core, p: &Params, req: &Incoming) -> Value {
    let (user, email) = match recovery_fields(p) {
        Ok(f) => f,
        Err(v) => return v,
    };
    match core
        .accounts
        .recover_with_code_from(user, email, raw(p, "verify"), req.client_ip)
        .await
    {
        Ok(token) => json!({ "code": 0, "token": token.expose() }),
        Err(CoreError::CodeInvalid | CoreError::CodeChecksLocked { .. }) => code(-6),
        Err(CoreError::RateLimited { .. }) => code(RECOVERY_TOO_FREQUENT),
        Err(e) => match recovery_error(e) {
            Ok(c) => code(c),
            Err(other) => internal(&other),
        },
    }
}
