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

/// The one map from core errors to this dialect's `code`s, per endpoint.
/// Exhaustive over [`CoreError`]: a new variant does not compile until it is
/// answered here. Pairs no endpoint can meet are the platform's failure
/// ([`INTERNAL`], logged).
fn failure(endpoint: Endpoint, e: CoreError) -> Value {
    use CoreError as E;
    use Endpoint as P;
    let c = match (endpoint, &e) {
        (P::Signup, E::UsernameLength) => -1,
        (P::Signup, E::UsernameEmpty) => -2,
        (P::Signup, E::UsernameCharset) => -3,
        (P::Signup, E::PasswordLength) => -4,
        (P::Signup, E::PasswordEmpty) => -5,
        (P::Signup, E::PasswordCharset) => -6,
        (P::Signup, E::UsernameTaken | E::UsernameReserved) => -7,
        (P::Login, E::UserNotFound) => -1,
        (P::Login, E::WrongPassword) => -4,
        // Locked account, the client's probe or failed-password budget
        // spent, or too many password checks at once: "too many attempts".
        (P::Login, E::AccountLocked { .. } | E::RateLimited { .. } | E::Overloaded) => -5,
        (P::Login, E::Banned) => -6,
        (P::ForgotVcode, E::CodeCooldown { retry_at } | E::RateLimited { retry_at }) => {
            return json!({ "code": -6, "againTimestamp": retry_at });
        }
        // carriers.md C2: every carrier of the route refused the code.
        (P::ForgotVcode, E::Delivery(_)) => -7,
        (P::ForgotVerify, E::CodeInvalid | E::CodeChecksLocked { .. }) => -6,
        (P::ForgotVerify, E::RateLimited { .. }) => RECOVERY_TOO_FREQUENT,
        // Both recovery steps: unknown user, unknown email, mismatch, banned.
        (P::ForgotVcode | P::ForgotVerify, E::UserNotFound) => -1,
        (P::ForgotVcode | P::ForgotVerify, E::EmailNotFound) => -3,
        (P::ForgotVcode | P::ForgotVerify, E::EmailMismatch) => -5,
        (P::ForgotVcode | P::ForgotVerify, E::Banned) => RECOVERY_BANNED,
        (
            _,
            E::UsernameLength
            | E::UsernameEmpty
            | E::UsernameCharset
            | E::PasswordLength
            | E::PasswordEmpty
            | E::PasswordCharset
            | E::UsernameTaken
            | E::UsernameReserved
            | E::UserNotFound
            | E::WrongPassword
            | E::AccountLocked { .. }
            | E::RateLimited { .. }
            | E::Overloaded
            | E::Banned
            | E::CodeCooldown { .. }
            | E::Delivery(_)
            | E::EmailNotFound
            | E::EmailMismatch
            | E::CodeInvalid
            | E::CodeChecksLocked { .. }
            | E::InvalidPhone
            | E::InvalidEmail
            | E::InvalidName
            | E::InvalidParameter(_)
            | E::PhoneTaken
            | E::EmailTaken
            | E::AlreadyRegistered
            | E::NotRegistered
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
            | E::NotRoot
            | E::Store(_),
        ) => return internal(&e),
    };
    code(c)
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
        Err(e) => failure(Endpoint::Signup, e),
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
        Err(e) => failure(Endpoint::Login, e),
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
        Err(e) => failure(Endpoint::ForgotVcode, e),
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
        Err(e) => failure(Endpoint::ForgotVerify, e),
    }
}
