//! The `sendapi` dialect (seed 002): signatures, templates, send tasks and
//! their audit (`/v1/signature`, `/v1/template`, `/v1/message`,
//! `/v2/signreview`, `/v2/tempreview`). HTTP Basic auth on every route,
//! errors as `{"error":"ER:00xx","message":…}` with the HTTP statuses of the
//! seed's table ([`crate::json_api`]). The root's `/v2/charge` lives with
//! the other root routes in [`crate::admin`].

use http::Response;
use serde_json::{json, Map, Value};
use sms_core::{Core, CoreError};

pub use crate::json_api::ApiError;
use crate::json_api::{
    authenticate, authenticate_root, json_object, ok, string_field, BALANCE, DELETE_SIGN,
    EDIT_SIGN, EDIT_TEMP, INVALID_MOBILE, PARAMS, SIGN_NOT_OWNED, SIGN_NOT_PASSED, SIGN_STATUS,
    TEMPLATE_PARAMS, TEMPLATE_TYPE, TEMP_NOT_OF_SIGN, TEMP_NOT_PASSED,
};
use crate::response;
use crate::service::{HttpBody, Incoming};

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

/// The one map from core errors to this dialect's table. Exhaustive: a new
/// [`CoreError`] variant does not compile until it is answered here.
fn map_core(e: CoreError) -> ApiError {
    use CoreError as E;
    match e {
        E::SignatureNotOwned => SIGN_NOT_OWNED,
        E::TemplateNotOfSignature => TEMP_NOT_OF_SIGN,
        E::SignatureLocked => EDIT_SIGN,
        E::SignatureInUse => DELETE_SIGN,
        E::SignatureNotPending => SIGN_STATUS,
        E::TemplateLocked => EDIT_TEMP,
        E::TemplateField | E::SendParams => TEMPLATE_PARAMS,
        E::TemplateType => TEMPLATE_TYPE,
        E::SignatureNotPassed => SIGN_NOT_PASSED,
        E::TemplateNotPassed => TEMP_NOT_PASSED,
        E::InvalidMobiles | E::InvalidPhone => INVALID_MOBILE,
        E::InsufficientBalance { .. } => BALANCE,
        E::InvalidParameter(_) | E::InvalidCount | E::MessageEmpty | E::MessageTooLong => PARAMS,
        e @ (E::Store(_)
        | E::InvalidEmail
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
        | E::OutsideDeviceScope
        | E::Overloaded
        | E::Delivery(_)
        | E::NotRoot) => {
            tracing::error!(error = %e, "sendapi: internal failure");
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
