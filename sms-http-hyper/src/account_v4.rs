//! The `account_v4` dialect (seed 004): `/api/v4.0/…`, GET or POST,
//! parameters as G2. `code` is always a JSON integer: 200 success, -1 the
//! seed's failure, -2 wrong code at registration, and the extensions -3
//! invalid parameter and -4 too frequent or locked, each with a `msg`.

use http::Response;
use serde_json::{json, Value};
use sms_core::identity::{DisplayName, Password, PasswordPolicy};
use sms_core::phone::PhoneNumber;
use sms_core::{Core, CoreError};

use crate::params::{Field, Params};
use crate::response;
use crate::service::{HttpBody, Incoming};

/// `code` for failures of the platform itself, which the seed does not name.
pub const INTERNAL: i64 = -500;

/// An `account_v4` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/api/v4.0/sendsms/<mobile>`.
    SendSms,
    /// `/api/v4.0/isregister/<phone>`.
    IsRegister,
    /// `/api/v4.0/register`.
    Register,
    /// `/api/v4.0/login`.
    Login,
    /// `/api/v4.0/verify_code`.
    VerifyCode,
    /// `/api/v4.0/forget_password`.
    ForgetPassword,
}

const PREFIX: &str = "/api/v4.0/";

impl Endpoint {
    /// The endpoint at `path`, with its path segment (the phone) if it has
    /// one, percent-decoded.
    pub fn from_path(path: &str) -> Option<(Self, Option<String>)> {
        let rest = path.strip_prefix(PREFIX)?;
        let (name, seg) = match rest.split_once('/') {
            Some((n, s)) => (n, Some(s)),
            None => (rest, None),
        };
        let decode = crate::params::percent_decode;
        Some(match (name, seg) {
            ("sendsms", Some(s)) if !s.contains('/') => (Self::SendSms, Some(decode(s))),
            ("isregister", Some(s)) if !s.contains('/') => (Self::IsRegister, Some(decode(s))),
            ("register", None) => (Self::Register, None),
            ("login", None) => (Self::Login, None),
            ("verify_code", None) => (Self::VerifyCode, None),
            ("forget_password", None) => (Self::ForgetPassword, None),
            _ => return None,
        })
    }
}

fn reply(code: i64, msg: &str) -> Value {
    json!({ "code": code, "data": "", "msg": msg })
}

fn invalid(what: &str) -> Value {
    reply(-3, &format!("参数错误: {what}"))
}

/// The one map from core errors to this dialect's answers, per endpoint.
/// Exhaustive over [`CoreError`]: a new variant does not compile until it is
/// answered here. Pairs no endpoint can meet are the platform's failure
/// ([`INTERNAL`], logged).
fn failure(endpoint: Endpoint, e: CoreError) -> Value {
    use CoreError as E;
    use Endpoint as P;
    match (endpoint, &e) {
        (P::SendSms, E::AlreadyRegistered) => reply(-1, "手机号已经被注册"),
        (P::SendSms, E::NotRegistered) => reply(-1, "手机号未注册"),
        // carriers.md C2: every carrier of the route refused the code.
        (P::SendSms, E::Delivery(_)) => reply(-5, "短信发送失败"),
        (P::Register, E::PhoneTaken) => reply(-1, "手机号已经被注册"),
        (P::Register, E::CodeInvalid) => reply(-2, "验证码错误"),
        (P::Login, E::WrongPassword | E::UserNotFound) => reply(-1, "手机号或密码错误"),
        (P::VerifyCode, E::CodeInvalid) => reply(-1, "验证码不正确"),
        (P::ForgetPassword, E::NotValidated | E::GrantInvalid) => reply(-1, "请先验证验证码"),
        // Limits and lockouts, on every endpoint: -4 with the reason.
        (_, E::CodeCooldown { .. } | E::RateLimited { .. }) => {
            reply(-4, "请求过于频繁，请稍后再试")
        }
        (_, E::AccountLocked { .. }) => reply(-4, "登录失败次数过多，账号暂时锁定"),
        (_, E::CodeChecksLocked { .. }) => reply(-4, "验证失败次数过多，请稍后再试"),
        (_, E::Banned) => reply(-4, "账号已被封禁"),
        (_, E::Overloaded) => reply(-4, "服务器繁忙，请稍后再试"),
        (
            _,
            E::AlreadyRegistered
            | E::NotRegistered
            | E::Delivery(_)
            | E::PhoneTaken
            | E::CodeInvalid
            | E::WrongPassword
            | E::UserNotFound
            | E::NotValidated
            | E::GrantInvalid
            | E::InvalidPhone
            | E::InvalidEmail
            | E::UsernameEmpty
            | E::UsernameLength
            | E::UsernameCharset
            | E::UsernameReserved
            | E::PasswordEmpty
            | E::PasswordLength
            | E::PasswordCharset
            | E::InvalidName
            | E::InvalidParameter(_)
            | E::UsernameTaken
            | E::EmailTaken
            | E::EmailNotFound
            | E::EmailMismatch
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
            | E::NotRoot
            | E::Store(_),
        ) => internal(&e),
    }
}

fn internal(e: &CoreError) -> Value {
    tracing::error!(error = %e, "account_v4: internal failure");
    reply(INTERNAL, "服务器繁忙，请稍后再试")
}

/// Serves one `account_v4` request.
pub async fn handle(
    core: &Core,
    endpoint: Endpoint,
    segment: Option<String>,
    req: &Incoming,
) -> Response<HttpBody> {
    let mut p = Params::from_parts(req.query.as_deref(), req.content_type.as_deref(), &req.body);
    if let Some(seg) = segment {
        let name = match endpoint {
            Endpoint::SendSms => "mobile",
            _ => "phone",
        };
        p.set(name, seg);
    }
    let body = match endpoint {
        Endpoint::SendSms => send_sms(core, &p, req).await,
        Endpoint::IsRegister => is_register(core, &p, req).await,
        Endpoint::Register => register(core, &p).await,
        Endpoint::Login => login(core, &p, req).await,
        Endpoint::VerifyCode => verify_code(core, &p).await,
        Endpoint::ForgetPassword => forget_password(core, &p).await,
    };
    response::ok(&body)
}

fn phone(p: &Params, name: &str) -> Result<PhoneNumber, Value> {
    p.text(name)
        .and_then(|s| PhoneNumber::parse_cn_mobile(s).ok())
        .ok_or_else(|| invalid("手机号格式错误"))
}

/// `expect`: 0 (default) or 1.
fn expect(p: &Params) -> Result<bool, Value> {
    match p.field("expect") {
        Field::Missing => Ok(false),
        Field::Text("0") => Ok(false),
        Field::Text("1") => Ok(true),
        _ => Err(invalid("expect 只能为 0 或 1")),
    }
}

fn password(p: &Params) -> Result<Password, Value> {
    let raw = match p.field("password") {
        Field::Text(s) => s,
        _ => "",
    };
    Password::parse(raw, PasswordPolicy::SHORT).map_err(|_| invalid("密码须为 6-14 位可见字符"))
}

macro_rules! tri {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(v) => return v,
        }
    };
}

async fn send_sms(core: &Core, p: &Params, req: &Incoming) -> Value {
    let phone = tri!(phone(p, "mobile"));
    let expect = tri!(expect(p));
    match core
        .accounts
        .send_phone_code(&phone, expect, req.client_ip)
        .await
    {
        Ok(_) => json!({ "code": 200, "msg": "发送成功" }),
        Err(e) => failure(Endpoint::SendSms, e),
    }
}

async fn is_register(core: &Core, p: &Params, req: &Incoming) -> Value {
    let phone = tri!(phone(p, "phone"));
    let expect = tri!(expect(p));
    match core.accounts.probe_registered(&phone, req.client_ip).await {
        Ok(registered) => match (expect, registered) {
            (false, false) => reply(200, "手机号未注册"),
            (true, true) => reply(200, "手机号已注册"),
            (false, true) => reply(-1, "手机号已经被注册"),
            (true, false) => reply(-1, "手机号未注册"),
        },
        Err(e) => failure(Endpoint::IsRegister, e),
    }
}

fn session_data(core_user: &sms_core::user::User, token: &str, change_device: bool) -> Value {
    json!({
        "change_device": change_device,
        "enterprise_id": -1,
        "token": token,
        "user_id": core_user.id.as_str(),
        "name": core_user.name.as_ref().map(|n| n.as_str()).unwrap_or(""),
        "pemissions": [],
        "apply": {},
    })
}

async fn register(core: &Core, p: &Params) -> Value {
    let phone = tri!(phone(p, "phone"));
    let name = tri!(p
        .text("name")
        .and_then(|n| DisplayName::parse(n).ok())
        .ok_or_else(|| invalid("姓名不能为空")));
    let password = tri!(password(p));
    let device = p.text("device_identifier");
    let code = p.text("code").unwrap_or("");
    match core
        .accounts
        .register_phone(&phone, name, password, device, code)
        .await
    {
        Ok(out) => json!({
            "code": 200,
            "data": session_data(&out.user, out.token.expose(), out.change_device),
            "msg": "注册成功",
        }),
        Err(e) => failure(Endpoint::Register, e),
    }
}

async fn login(core: &Core, p: &Params, req: &Incoming) -> Value {
    let phone = tri!(phone(p, "phone"));
    let password = p.text("password").unwrap_or("");
    let device = p.text("device_identifier");
    match core
        .accounts
        .login_phone_from(&phone, password, device, req.client_ip)
        .await
    {
        Ok(out) => json!({
            "code": 200,
            "data": session_data(&out.user, out.token.expose(), out.change_device),
            "msg": "登录成功",
        }),
        Err(e) => failure(Endpoint::Login, e),
    }
}

async fn verify_code(core: &Core, p: &Params) -> Value {
    let phone = tri!(phone(p, "phone"));
    let code = p.text("code").unwrap_or("");
    match core.accounts.verify_reset_code(&phone, code).await {
        Ok(()) => reply(200, "验证码正确"),
        Err(e) => failure(Endpoint::VerifyCode, e),
    }
}

async fn forget_password(core: &Core, p: &Params) -> Value {
    let phone = tri!(phone(p, "phone"));
    let password = tri!(password(p));
    match core
        .accounts
        .reset_password_with_permit(&phone, password)
        .await
    {
        Ok(()) => reply(200, "修改成功"),
        Err(e) => failure(Endpoint::ForgetPassword, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_segments() {
        assert_eq!(
            Endpoint::from_path("/api/v4.0/sendsms/%2B8613811112222"),
            Some((Endpoint::SendSms, Some("+8613811112222".into())))
        );
        assert_eq!(Endpoint::from_path("/api/v4.0/sendsms/a/b"), None);
        assert_eq!(
            Endpoint::from_path("/api/v4.0/login"),
            Some((Endpoint::Login, None))
        );
        assert_eq!(Endpoint::from_path("/api/v4.0/login/x"), None);
        assert_eq!(crate::params::percent_decode("%zz%4"), "%zz%4");
        assert_eq!(crate::params::percent_decode("a%20b"), "a b");
    }
}
