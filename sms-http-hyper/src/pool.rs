//! The `pool` dialect (seed 003): SIM devices upload numbers and received
//! codes, consumers pull numbers and codes. `POST /phones`,
//! `GET /mobiles/<app>/<n>`, `POST /vcodes`, `GET /vcodes/<app>`,
//! `PUT /setsize?newsize=N`, and the extension `GET /sends/<cid>` (texts
//! users send from leased numbers, for the device to deliver). The result is
//! in the body's `code` (200, 208, 400, 406, 500), HTTP 200 (decision G4).
//!
//! Credentials ([`PoolAuth`], an extension: the seed has none): a call
//! without the right kind of token answers `{"code":401,"desc":…}`, a device
//! token bound to channels used for a number or channel outside them
//! `{"code":403,"desc":…}`, both with HTTP 200 like every pool answer.

use http::Response;
use serde_json::{json, Map, Value};
use sms_core::phone::PhoneNumber;
use sms_core::pool::NumberInfo;
use sms_core::pool_service::{DeviceScope, IncomingSms};
use sms_core::{Core, CoreError};

use crate::basic_auth;
use crate::params::Params;
use crate::pool_auth::{PoolAccess, PoolAuth};
use crate::response;
use crate::service::{HttpBody, Incoming};

/// Most entries accepted in one upload.
pub const MAX_ENTRIES: usize = 1_000;
/// Longest metadata string (cid, imsi, imei, iccid, ip, appname, chanlid).
pub const MAX_FIELD_LEN: usize = 128;
/// Longest uploaded SMS text (`vcode`).
pub const MAX_TEXT_LEN: usize = 2_000;
/// Most entries returned by one `GET /vcodes/<app>` or `GET /sends/<cid>`.
pub const MAX_TAKE: usize = 1_000;

/// A `pool` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /phones`.
    Phones,
    /// `GET /mobiles/<app>/<n>`.
    Mobiles(String, String),
    /// `POST /vcodes`.
    UploadCodes,
    /// `GET /vcodes/<app>`.
    Codes(String),
    /// `PUT /setsize`.
    SetSize,
    /// `GET /sends/<cid>`.
    Sends(String),
}

impl Endpoint {
    /// The endpoint at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let dec = |s: &str| crate::params::percent_decode(s);
        Some(match segs.as_slice() {
            ["phones"] => Self::Phones,
            ["mobiles", app, n] => Self::Mobiles(dec(app), dec(n)),
            ["vcodes"] => Self::UploadCodes,
            ["vcodes", app] => Self::Codes(dec(app)),
            ["setsize"] => Self::SetSize,
            ["sends", cid] => Self::Sends(dec(cid)),
            _ => return None,
        })
    }

    /// True for the routes SIM devices call (`POST /phones`,
    /// `POST /vcodes`, `GET /sends/<cid>`), false for the consumer's.
    pub fn is_device_route(&self) -> bool {
        matches!(self, Self::Phones | Self::UploadCodes | Self::Sends(_))
    }

    /// The method this endpoint takes.
    pub fn method(&self) -> http::Method {
        match self {
            Self::Phones | Self::UploadCodes => http::Method::POST,
            Self::SetSize => http::Method::PUT,
            Self::Mobiles(..) | Self::Codes(_) | Self::Sends(_) => http::Method::GET,
        }
    }
}

fn bad() -> Value {
    json!({"code": 400, "desc": "The data that you have submitted is not all correct !"})
}

fn none() -> Value {
    json!({"code": 208, "desc": "Sorry, there is no data that you need currently! Please try again later~"})
}

/// `code` of a call without the credential its route needs.
pub const UNAUTHORIZED: i64 = 401;
/// `code` of a device token used beyond the channels it is bound to.
pub const FORBIDDEN: i64 = 403;

fn unauthorized() -> Value {
    json!({"code": UNAUTHORIZED, "desc": "A valid token is required for this route."})
}

fn forbidden() -> Value {
    json!({"code": FORBIDDEN, "desc": "This token does not cover that device channel."})
}

fn busy(e: &CoreError) -> Value {
    tracing::error!(error = %e, "pool: internal failure");
    json!({"code": 500, "desc": "The server is busy, please try again later."})
}

/// The one map from core errors to this dialect's answers. Exhaustive over
/// [`CoreError`]: a new variant does not compile until it is answered here.
fn failure(e: CoreError) -> Value {
    use CoreError as E;
    match e {
        E::InvalidParameter(_) | E::InvalidPhone => bad(),
        E::OutsideDeviceScope => forbidden(),
        e @ (E::InvalidEmail
        | E::UsernameEmpty
        | E::UsernameLength
        | E::UsernameCharset
        | E::UsernameReserved
        | E::PasswordEmpty
        | E::PasswordLength
        | E::PasswordCharset
        | E::InvalidName
        | E::UsernameTaken
        | E::PhoneTaken
        | E::EmailTaken
        | E::UserNotFound
        | E::WrongPassword
        | E::AccountLocked { .. }
        | E::Banned
        | E::EmailNotFound
        | E::EmailMismatch
        | E::AlreadyRegistered
        | E::NotRegistered
        | E::CodeCooldown { .. }
        | E::RateLimited { .. }
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
        | E::Overloaded
        | E::Delivery(_)
        | E::NotRoot
        | E::Store(_)) => busy(&e),
    }
}

/// Serves one `pool` request, after checking its credential.
pub async fn handle(
    core: &Core,
    auth: &PoolAuth,
    endpoint: Endpoint,
    req: &Incoming,
) -> Response<HttpBody> {
    let access = match &endpoint {
        Endpoint::Phones | Endpoint::UploadCodes | Endpoint::Sends(_) => auth.device(req),
        Endpoint::Mobiles(..) | Endpoint::Codes(_) => auth.consumer(req),
        Endpoint::SetSize => match auth.admin(req) {
            PoolAccess::Refused => match basic_auth::credentials(&req.headers) {
                Some((user, password)) => match core
                    .accounts
                    .verify_root_credentials_from(&user, &password, req.client_ip)
                    .await
                {
                    Ok(_) => PoolAccess::Allowed(DeviceScope::Any),
                    Err(_) => PoolAccess::Refused,
                },
                None => PoolAccess::Refused,
            },
            other => other,
        },
    };
    let PoolAccess::Allowed(scope) = access else {
        return response::ok(&unauthorized());
    };
    let body = match endpoint {
        Endpoint::Phones => phones(core, &scope, req).await,
        Endpoint::Mobiles(app, n) => mobiles(core, &app, &n).await,
        Endpoint::UploadCodes => upload_codes(core, &scope, req).await,
        Endpoint::Codes(app) => codes(core, &app).await,
        Endpoint::SetSize => set_size(core, req).await,
        Endpoint::Sends(cid) => sends(core, &scope, &cid).await,
    };
    response::ok(&body)
}

/// The `data` array of an upload: a non-empty array of objects, at most
/// [`MAX_ENTRIES`].
fn entries(body: &[u8]) -> Option<Vec<Map<String, Value>>> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let Some(Value::Array(items)) = o.remove("data") else {
        return None;
    };
    if items.is_empty() || items.len() > MAX_ENTRIES {
        return None;
    }
    items
        .into_iter()
        .map(|v| match v {
            Value::Object(m) => Some(m),
            _ => None,
        })
        .collect()
}

/// An optional string field: absent or null → `Some("")`/None as asked; a
/// wrong type or an over-long value → Err.
fn opt_str(m: &Map<String, Value>, name: &str, max: usize) -> Result<Option<String>, ()> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        _ => Err(()),
    }
}

fn mobile(m: &Map<String, Value>) -> Result<PhoneNumber, ()> {
    match m.get("mobile") {
        Some(Value::String(s)) => PhoneNumber::parse_cn_mobile(s).map_err(|_| ()),
        _ => Err(()),
    }
}

fn number_info(m: &Map<String, Value>) -> Result<NumberInfo, ()> {
    let s = |name| opt_str(m, name, MAX_FIELD_LEN).map(Option::unwrap_or_default);
    let area = opt_str(m, "area", 32)?.filter(|a| !a.is_empty());
    Ok(NumberInfo {
        mobile: mobile(m)?,
        cid: s("cid")?,
        imsi: s("imsi")?,
        imei: s("imei")?,
        iccid: s("iccid")?,
        ip: s("ip")?,
        area,
    })
}

async fn phones(core: &Core, scope: &DeviceScope, req: &Incoming) -> Value {
    let Some(items) = entries(&req.body) else {
        return bad();
    };
    let Ok(infos) = items.iter().map(number_info).collect::<Result<Vec<_>, _>>() else {
        return bad();
    };
    match core.pool.upload_numbers_for(scope, infos).await {
        Ok(intake) if intake.full => json!({
            "code": 406,
            "desc": "Thanks for your contribution. However, as we have enough data to be used, thus we don not need your data just now. Please devote your data later~",
        }),
        Ok(intake) => json!({
            "code": 200,
            "msg": "Thanks for your contribution. And as follows, we have used some datas that you provided, please offer their verify codes later.",
            "phonesUsed": intake.used.iter().map(ToString::to_string).collect::<Vec<_>>(),
        }),
        Err(e) => failure(e),
    }
}

fn info_json(i: &NumberInfo) -> Value {
    let mut v = json!({
        "mobile": i.mobile.to_string(),
        "cid": i.cid,
        "imsi": i.imsi,
        "imei": i.imei,
        "iccid": i.iccid,
        "ip": i.ip,
    });
    if let (Some(area), Some(o)) = (&i.area, v.as_object_mut()) {
        o.insert("area".into(), json!(area));
    }
    v
}

async fn mobiles(core: &Core, app: &str, n: &str) -> Value {
    // How many may be asked for at once is the core's rule (`hand_out`).
    let Some(n) = digits_u32(n) else {
        return bad();
    };
    match core.pool.hand_out(app, n).await {
        Ok(list) if list.is_empty() => none(),
        Ok(list) => json!({"code": 200, "data": list.iter().map(info_json).collect::<Vec<_>>()}),
        Err(e) => failure(e),
    }
}

async fn upload_codes(core: &Core, scope: &DeviceScope, req: &Incoming) -> Value {
    let Some(items) = entries(&req.body) else {
        return bad();
    };
    let parse = |m: &Map<String, Value>| -> Result<IncomingSms, ()> {
        let text = match m.get("vcode") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= MAX_TEXT_LEN => {
                s.clone()
            }
            _ => return Err(()),
        };
        let appname = opt_str(m, "appname", MAX_FIELD_LEN)?.filter(|a| !a.is_empty());
        Ok(IncomingSms {
            mobile: mobile(m)?,
            text,
            appname,
            chanlid: opt_str(m, "chanlid", MAX_FIELD_LEN)?,
        })
    };
    let Ok(batch) = items.iter().map(parse).collect::<Result<Vec<_>, _>>() else {
        return bad();
    };
    match core.pool.receive_for(scope, batch).await {
        Ok(()) => json!({"code": 200, "msg": "Save successfully~"}),
        Err(e) => failure(e),
    }
}

async fn codes(core: &Core, app: &str) -> Value {
    match core.pool.take_codes(app, MAX_TAKE).await {
        Ok(list) if list.is_empty() => none(),
        Ok(list) => json!({
            "code": 200,
            "data": list.iter().map(|s| json!({
                "mobile": s.mobile.to_string(),
                "vcode": s.code,
                "appname": s.appname.as_deref().unwrap_or(app),
                "chanlid": s.chanlid.as_deref().unwrap_or(""),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => failure(e),
    }
}

async fn set_size(core: &Core, req: &Incoming) -> Value {
    let p = Params::from_parts(req.query.as_deref(), req.content_type.as_deref(), &req.body);
    let size = p.text("newsize").map(str::trim).and_then(digits_u32);
    let Some(size) = size else {
        return bad();
    };
    match core.pool.set_size(size).await {
        Ok(()) => json!({"code": 200, "data": "Update Successfully!"}),
        Err(e) => failure(e),
    }
}

async fn sends(core: &Core, scope: &DeviceScope, cid: &str) -> Value {
    if cid.is_empty() {
        return bad();
    }
    match core
        .pool
        .take_device_messages_for(scope, cid, MAX_TAKE)
        .await
    {
        Ok(list) if list.is_empty() => none(),
        Ok(list) => json!({
            "code": 200,
            "data": list.iter().map(|m| json!({
                "mobile": m.mobile.to_string(),
                "itemId": m.item_id,
                "msg": m.msg,
                "at": m.at,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => failure(e),
    }
}

/// A count written as 1 to 9 ASCII digits (`str::parse` alone would also
/// take a leading `+`).
fn digits_u32(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
