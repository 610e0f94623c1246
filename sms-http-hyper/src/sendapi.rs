//! The `sendapi` dialect (seed 002): HTTP Basic auth on every route, errors
//! as `{"error":"ER:00xx","message":…}` with the HTTP statuses of the seed's
//! table, and the root-only `/v2/…` routes. This module holds the auth, the
//! error table and the administrative routes shared with `hub`
//! (`/v2/charge`, `/v2/item`, `/v2/ban`).

use base64::Engine;
use http::{HeaderMap, Response, StatusCode};
use serde_json::{json, Map, Value};
use sms_core::pool::Item;
use sms_core::user::User;
use sms_core::{Core, CoreError};

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

/// The credentials of an `Authorization: Basic …` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || rest.len() > 1024 {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// The authenticated user of a request (ER:0001 otherwise).
pub async fn authenticate(core: &Core, req: &Incoming) -> Result<User, ApiError> {
    let (user, password) = basic_credentials(&req.headers).ok_or(AUTH)?;
    auth_answer(
        core.accounts
            .verify_credentials_from(&user, &password, req.client_ip)
            .await,
    )
}

/// The root user of a request (ER:0001, then ER:0003); the rule is the
/// core's ([`sms_core::accounts::Accounts::verify_root_credentials_from`]).
pub async fn authenticate_root(core: &Core, req: &Incoming) -> Result<User, ApiError> {
    let (user, password) = basic_credentials(&req.headers).ok_or(AUTH)?;
    auth_answer(
        core.accounts
            .verify_root_credentials_from(&user, &password, req.client_ip)
            .await,
    )
}

/// The wire answer of a credentials check: ER:0003 for a user who is not
/// root, ER:0001 for every other failure (internal ones logged).
fn auth_answer(result: Result<User, CoreError>) -> Result<User, ApiError> {
    match result {
        Ok(u) => Ok(u),
        Err(CoreError::NotRoot) => Err(NOT_ROOT),
        Err(e) if e.is_internal() => {
            tracing::error!(error = %e, "sendapi: auth failed internally");
            Err(AUTH)
        }
        Err(_) => Err(AUTH),
    }
}

/// The JSON object body (ER:0002 otherwise).
pub fn json_object(req: &Incoming) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(&req.body) {
        Ok(Value::Object(o)) => Ok(o),
        _ => Err(NOT_JSON),
    }
}

fn string_field<'a>(
    o: &'a Map<String, Value>,
    name: &str,
    max: usize,
) -> Result<&'a str, ApiError> {
    match o.get(name) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max => Ok(s),
        _ => Err(PARAMS),
    }
}

fn int_field(o: &Map<String, Value>, name: &str) -> Result<i64, ApiError> {
    o.get(name).and_then(Value::as_i64).ok_or(PARAMS)
}

/// An administrative route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// `POST /v2/charge {"user","charge"}` (optional `op_id` makes a retry safe).
    Charge,
    /// `POST /v2/item {"item_id","name","price","send_price"}` (optional
    /// `code_pattern`).
    Item,
    /// `POST /v2/ban {"user"}` (optional `banned`: false lifts a ban).
    Ban,
}

impl Admin {
    /// The route at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v2/charge" => Self::Charge,
            "/v2/item" => Self::Item,
            "/v2/ban" => Self::Ban,
            _ => return None,
        })
    }

    /// True for the route the `sendapi` seed itself defines (`/v2/charge`);
    /// the others are the platform's root extensions.
    pub fn is_sendapi_route(&self) -> bool {
        matches!(self, Self::Charge)
    }
}

/// Serves one administrative request.
pub async fn handle_admin(core: &Core, route: Admin, req: &Incoming) -> Response<HttpBody> {
    match admin(core, route, req).await {
        Ok(()) => ok(),
        Err(e) => e.response(),
    }
}

async fn admin(core: &Core, route: Admin, req: &Incoming) -> Result<(), ApiError> {
    authenticate_root(core, req).await?;
    let o = json_object(req)?;
    let internal = |e: CoreError| {
        tracing::error!(error = %e, "admin: internal failure");
        PARAMS
    };
    match route {
        Admin::Charge => {
            let user = string_field(&o, "user", 64)?;
            let amount = int_field(&o, "charge")?;
            if amount <= 0 {
                return Err(PARAMS);
            }
            let op_id = match o.get("op_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
                _ => return Err(PARAMS),
            };
            match core.billing.charge(user, amount, op_id).await {
                Ok(_) => Ok(()),
                Err(CoreError::UserNotFound | CoreError::InvalidParameter(_)) => Err(PARAMS),
                Err(e) => Err(internal(e)),
            }
        }
        Admin::Item => {
            let id = string_field(&o, "item_id", sms_core::pool::MAX_ITEM_ID_LEN)?;
            let name = match o.get("name") {
                None | Some(Value::Null) => id.to_owned(),
                Some(Value::String(s)) if s.chars().count() <= 128 => s.clone(),
                _ => return Err(PARAMS),
            };
            let price = int_field(&o, "price")?;
            let send_price = int_field(&o, "send_price")?;
            let code_pattern = match o.get("code_pattern") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                _ => return Err(PARAMS),
            };
            let item = Item {
                id: id.to_owned(),
                name,
                price,
                send_price,
                code_pattern,
            };
            match core.pool.put_item(item).await {
                Ok(()) => Ok(()),
                Err(CoreError::InvalidParameter(_)) => Err(PARAMS),
                Err(e) => Err(internal(e)),
            }
        }
        Admin::Ban => {
            let user = string_field(&o, "user", 64)?;
            let banned = match o.get("banned") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                _ => return Err(PARAMS),
            };
            match core.accounts.set_banned(user, banned).await {
                Ok(_) => Ok(()),
                // Unknown, or root (which nobody may ban).
                Err(CoreError::UserNotFound | CoreError::NotRoot) => Err(PARAMS),
                Err(e) => Err(internal(e)),
            }
        }
    }
}

// ----- v1 routes and reviews ------------------------------------------------

/// A `sendapi` route (besides the administrative ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/v1/signature` (POST create, GET list, PUT edit, DELETE).
    Signature,
    /// `/v1/template` (POST create, GET list, PUT edit, DELETE).
    Template,
    /// `/v1/message` (POST send, GET task status by `uuid`).
    Message,
    /// `POST /v2/signreview`.
    SignReview,
    /// `POST /v2/tempreview`.
    TempReview,
}

impl Route {
    /// The route at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v1/signature" => Self::Signature,
            "/v1/template" => Self::Template,
            "/v1/message" => Self::Message,
            "/v2/signreview" => Self::SignReview,
            "/v2/tempreview" => Self::TempReview,
            _ => return None,
        })
    }

    /// The methods the route takes, as an `Allow` header value.
    pub fn allowed(&self) -> &'static str {
        match self {
            Self::Signature | Self::Template => "GET, POST, PUT, DELETE",
            Self::Message => "GET, POST",
            Self::SignReview | Self::TempReview => "POST",
        }
    }
}

fn map_core(e: CoreError) -> ApiError {
    match e {
        CoreError::SignatureNotOwned => SIGN_NOT_OWNED,
        CoreError::TemplateNotOfSignature => TEMP_NOT_OF_SIGN,
        CoreError::SignatureLocked => EDIT_SIGN,
        CoreError::SignatureInUse => DELETE_SIGN,
        CoreError::SignatureNotPending => SIGN_STATUS,
        CoreError::TemplateLocked => EDIT_TEMP,
        CoreError::TemplateField | CoreError::SendParams => TEMPLATE_PARAMS,
        CoreError::TemplateType => TEMPLATE_TYPE,
        CoreError::SignatureNotPassed => SIGN_NOT_PASSED,
        CoreError::TemplateNotPassed => TEMP_NOT_PASSED,
        CoreError::InvalidMobiles => INVALID_MOBILE,
        CoreError::InsufficientBalance { .. } => BALANCE,
        CoreError::InvalidParameter(_) => PARAMS,
        other => {
            tracing::error!(error = %other, "sendapi: internal failure");
            PARAMS
        }
    }
}

/// An id: a JSON integer or a string of digits (lists show ids as strings).
fn id_field(o: &Map<String, Value>, name: &str) -> Result<i64, ApiError> {
    match o.get(name) {
        Some(Value::Number(n)) => n.as_i64().filter(|v| *v > 0).ok_or(PARAMS),
        Some(Value::String(s))
            if !s.is_empty() && s.len() <= 18 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().map_err(|_| PARAMS)
        }
        _ => Err(PARAMS),
    }
}

/// A text field of a template: missing or wrong type reads as empty, which
/// the core refuses with ER:0021.
fn template_text(o: &Map<String, Value>, name: &str) -> String {
    match o.get(name) {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

fn signature_input(
    o: &Map<String, Value>,
) -> Result<sms_core::sending_service::SignatureInput, ApiError> {
    let text = string_field(o, "signature", 1_000)?.to_owned();
    let source = string_field(o, "source", 1_000)?.to_owned();
    let pics = match o.get("pics") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or(PARAMS))
            .collect::<Result<_, _>>()?,
        _ => return Err(PARAMS),
    };
    Ok(sms_core::sending_service::SignatureInput { text, source, pics })
}

fn template_input(
    o: &Map<String, Value>,
) -> Result<sms_core::sending_service::TemplateInput, ApiError> {
    let sign_id = id_field(o, "sign_id")?;
    let kind = match o.get("type") {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    };
    Ok(sms_core::sending_service::TemplateInput {
        sign_id,
        name: template_text(o, "name"),
        content: template_text(o, "template"),
        kind,
        description: template_text(o, "description"),
    })
}

fn page_request(
    req: &Incoming,
) -> Result<Option<sms_core::sending_service::PageRequest>, ApiError> {
    let p = crate::params::Params::from_parts(req.query.as_deref(), None, b"");
    let num = |name| match p.text(name) {
        None => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(v) if (1..=10_000).contains(&v) => Ok(Some(v)),
            _ => Err(PARAMS),
        },
    };
    match (num("page")?, num("page_size")?) {
        (None, None) => Ok(None),
        (page, size) => Ok(Some(sms_core::sending_service::PageRequest {
            page: page.unwrap_or(1),
            page_size: size.unwrap_or(20),
        })),
    }
}

/// A list answer: `items` with the page's `total`, `page` and `page_size`.
fn list_response<T>(
    page: &sms_core::sending_service::Page<T>,
    items: Vec<Value>,
) -> Response<HttpBody> {
    response::ok(&json!({
        "items": items,
        "total": page.total,
        "page": page.page,
        "page_size": page.page_size,
    }))
}

/// The review decision of a `/v2/signreview` or `/v2/tempreview` body.
/// A missing `audit_status` is a parameter fault (ER:0004); any other value
/// than passed/rejected is `bad_status`: the seed's ER:0013 ("签名状态错误")
/// for signatures, ER:0004 for templates (wire decisions).
fn review(o: &Map<String, Value>, bad_status: ApiError) -> Result<(bool, String), ApiError> {
    let passed = match o.get("audit_status") {
        None | Some(Value::Null) => return Err(PARAMS),
        Some(Value::String(s)) if s == "passed" => true,
        Some(Value::String(s)) if s == "rejected" => false,
        Some(_) => return Err(bad_status),
    };
    let reason = match o.get("reject_reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.chars().count() <= 500 => s.clone(),
        _ => return Err(PARAMS),
    };
    Ok((passed, reason))
}

/// Serves one `sendapi` request.
pub async fn handle(
    core: &Core,
    route: Route,
    method: &http::Method,
    req: &Incoming,
) -> Response<HttpBody> {
    match serve(core, route, method, req).await {
        Ok(resp) => resp,
        Err(e) => e.response(),
    }
}

async fn serve(
    core: &Core,
    route: Route,
    method: &http::Method,
    req: &Incoming,
) -> Result<Response<HttpBody>, ApiError> {
    use http::Method as M;
    let s = &core.sending;
    match route {
        Route::SignReview | Route::TempReview => {
            authenticate_root(core, req).await?;
            let o = json_object(req)?;
            let bad_status = if route == Route::SignReview {
                SIGN_STATUS
            } else {
                PARAMS
            };
            let (passed, reason) = review(&o, bad_status)?;
            let r = if route == Route::SignReview {
                s.review_signature(id_field(&o, "sign_id")?, passed, &reason)
                    .await
            } else {
                s.review_template(id_field(&o, "temp_id")?, passed, &reason)
                    .await
            };
            r.map_err(map_core)?;
            Ok(ok())
        }
        Route::Signature => {
            let user = authenticate(core, req).await?;
            if *method == M::GET {
                let page = s
                    .signatures(&user.id, page_request(req)?)
                    .await
                    .map_err(map_core)?;
                let items: Vec<Value> = page
                    .items
                    .iter()
                    .map(|g| {
                        json!({
                            "id": g.id.to_string(),
                            "signature": g.text,
                            "source": g.source,
                            "pics": g.pics,
                            "audit_status": g.audit.as_str(),
                            "reject_reason": g.reject_reason,
                            "created_at": g.created_at,
                            "updated_at": g.updated_at,
                        })
                    })
                    .collect();
                return Ok(list_response(&page, items));
            }
            let o = json_object(req)?;
            match *method {
                M::POST => {
                    let sig = s
                        .create_signature(&user.id, signature_input(&o)?)
                        .await
                        .map_err(map_core)?;
                    Ok(response::ok(&json!({"sign_id": sig.id})))
                }
                M::PUT => {
                    let id = id_field(&o, "sign_id")?;
                    let sig = s
                        .edit_signature(&user.id, id, signature_input(&o)?)
                        .await
                        .map_err(map_core)?;
                    Ok(response::ok(&json!({"sign_id": sig.id})))
                }
                _ => {
                    s.delete_signature(&user.id, id_field(&o, "sign_id")?)
                        .await
                        .map_err(map_core)?;
                    Ok(ok())
                }
            }
        }
        Route::Template => {
            let user = authenticate(core, req).await?;
            if *method == M::GET {
                let page = s
                    .templates(&user.id, page_request(req)?)
                    .await
                    .map_err(map_core)?;
                let items: Vec<Value> = page
                    .items
                    .iter()
                    .map(|t| {
                        json!({
                            "id": t.id.to_string(),
                            "name": t.name,
                            "audit_status": t.audit.as_str(),
                            "reject_reason": t.reject_reason,
                            "type": t.kind.number(),
                            "sign_id": t.sign_id.to_string(),
                            "template": t.content,
                            "description": t.description,
                            "created_at": t.created_at.to_string(),
                            "updated_at": t.updated_at.to_string(),
                        })
                    })
                    .collect();
                return Ok(list_response(&page, items));
            }
            let o = json_object(req)?;
            match *method {
                M::POST => {
                    let t = s
                        .create_template(&user.id, template_input(&o)?)
                        .await
                        .map_err(map_core)?;
                    Ok(response::ok(&json!({"temp_id": t.id})))
                }
                M::PUT => {
                    let temp_id = id_field(&o, "temp_id")?;
                    let t = s
                        .edit_template(&user.id, temp_id, template_input(&o)?)
                        .await
                        .map_err(map_core)?;
                    Ok(response::ok(&json!({"temp_id": t.id})))
                }
                _ => {
                    let sign_id = id_field(&o, "sign_id")?;
                    let temp_id = id_field(&o, "temp_id")?;
                    s.delete_template(&user.id, sign_id, temp_id)
                        .await
                        .map_err(map_core)?;
                    Ok(ok())
                }
            }
        }
        Route::Message => {
            let user = authenticate(core, req).await?;
            if *method == M::GET {
                let p = crate::params::Params::from_parts(req.query.as_deref(), None, b"");
                let uuid = p.text("uuid").ok_or(PARAMS)?;
                let (task, statuses) = s.task(&user.id, uuid).await.map_err(map_core)?;
                let count = |name: &str| statuses.iter().filter(|st| st.as_str() == name).count();
                let recipients: Vec<Value> = task
                    .recipients
                    .iter()
                    .zip(&statuses)
                    .map(|(m, st)| {
                        let mut v = json!({"mobile": m.to_string(), "status": st.as_str()});
                        if let sms_core::sending::RecipientStatus::Failed { reason, .. } = st {
                            v["reason"] = json!(reason);
                        }
                        // carriers.md C3: the carrier and its code once known.
                        if let Some(c) = st.carrier() {
                            v["carrier"] = json!(c);
                        }
                        if let Some(c) = st.carrier_code() {
                            v["carrier_code"] = json!(c);
                        }
                        v
                    })
                    .collect();
                return Ok(response::ok(&json!({
                    "uuid": task.uuid,
                    "status": task.state.as_str(),
                    "sign_id": task.sign_id,
                    "temp_id": task.temp_id,
                    "text": task.text,
                    "segments": task.segments,
                    "cost": task.cost(),
                    "created_at": task.created_at,
                    "finished_at": task.finished_at,
                    "total": statuses.len(),
                    "sent": count("sent"),
                    "delivered": count("delivered"),
                    "failed": count("failed"),
                    "pending": count("pending"),
                    "recipients": recipients,
                })));
            }
            let o = json_object(req)?;
            let sign_id = id_field(&o, "sign_id")?;
            let temp_id = id_field(&o, "temp_id")?;
            let mobiles: Vec<String> = match o.get("mobiles") {
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        // A non-string entry is an invalid mobile (ER:0033 in its turn).
                        _ => String::new(),
                    })
                    .collect(),
                _ => return Err(PARAMS),
            };
            let params = match o.get("params") {
                None | Some(Value::Null) => std::collections::HashMap::new(),
                Some(Value::Object(m)) => m
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k.clone(), s.clone())),
                        Value::Number(n) => Ok((k.clone(), n.to_string())),
                        _ => Err(PARAMS),
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(PARAMS),
            };
            let uuid = s
                .send(&user.id, sign_id, temp_id, &mobiles, &params)
                .await
                .map_err(map_core)?;
            Ok(response::ok(&json!({"uuid": uuid})))
        }
    }
}
