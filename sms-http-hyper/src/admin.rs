//! The root routes (`POST /v2/charge`, `/v2/item`, `/v2/ban`): Basic auth as
//! root, JSON bodies, answers in the `sendapi` envelope (wire decisions
//! G3). `/v2/charge` is the `sendapi` seed's own; `/v2/item` and `/v2/ban`
//! are the platform's root extensions for the pool and for accounts. The
//! rules (who is root, who may be banned, what a charge does) are the
//! core's; this module reads bodies and maps errors.

use http::Response;
use serde_json::{json, Value};
use sms_core::pool::Item;
use sms_core::{Core, CoreError};

use crate::json_api::{
    authenticate_root, int_field, json_object, ok, string_field, ApiError, PARAMS,
};
use crate::response;
use crate::service::{HttpBody, Incoming};

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
    /// `GET /v2/pool`: the pool at a glance (`size`, `numbers`, `leased`,
    /// `available`).
    Pool,
    /// `GET /v2/reviews`: signatures and templates waiting for review, of
    /// every user, oldest first (at most [`MAX_REVIEWS`] of each).
    Reviews,
}

/// Most signatures (and most templates) `GET /v2/reviews` lists.
pub const MAX_REVIEWS: usize = 200;

impl Admin {
    /// The route at `path`.
    pub fn from_path(path: &str) -> Option<Self> {
        Some(match path {
            "/v2/charge" => Self::Charge,
            "/v2/item" => Self::Item,
            "/v2/ban" => Self::Ban,
            "/v2/pool" => Self::Pool,
            "/v2/reviews" => Self::Reviews,
            _ => return None,
        })
    }

    /// The methods the route takes, as an `Allow` header value: `GET` reads
    /// (`/v2/item` lists the items), `POST` changes.
    pub fn allowed(&self) -> &'static str {
        match self {
            Self::Charge | Self::Ban => "POST",
            Self::Item => "GET, POST",
            Self::Pool | Self::Reviews => "GET",
        }
    }

    /// True for the route the `sendapi` seed itself defines (`/v2/charge`);
    /// the others are the platform's root extensions.
    pub fn is_sendapi_route(&self) -> bool {
        matches!(self, Self::Charge)
    }
}

/// Serves one administrative request.
pub async fn handle(
    core: &Core,
    route: Admin,
    method: &http::Method,
    req: &Incoming,
) -> Response<HttpBody> {
    let answer = if *method == http::Method::GET {
        view(core, route, req).await.map(|v| response::ok(&v))
    } else {
        admin(core, route, req).await.map(|()| ok())
    };
    answer.unwrap_or_else(ApiError::response)
}

/// Root's read-only views (`GET`).
async fn view(core: &Core, route: Admin, req: &Incoming) -> Result<Value, ApiError> {
    authenticate_root(core, req).await?;
    match route {
        Admin::Item => {
            let items = core.pool.items().await.map_err(failure)?;
            let items: Vec<Value> = items
                .iter()
                .map(|i| {
                    json!({
                        "item_id": i.id,
                        "name": i.name,
                        "price": i.price,
                        "send_price": i.send_price,
                        "code_pattern": i.code_pattern,
                    })
                })
                .collect();
            Ok(json!({ "items": items }))
        }
        Admin::Pool => {
            let s = core.pool.stats().await.map_err(failure)?;
            Ok(json!({
                "size": s.size,
                "numbers": s.numbers,
                "leased": s.open_leases,
                "available": s.available(),
            }))
        }
        Admin::Reviews => {
            let (sigs, temps) = core
                .sending
                .pending_reviews(MAX_REVIEWS)
                .await
                .map_err(failure)?;
            let sigs: Vec<Value> = sigs
                .iter()
                .map(|g| {
                    json!({
                        "sign_id": g.id,
                        "user_id": g.owner.as_str(),
                        "signature": g.text,
                        "source": g.source,
                        "pics": g.pics,
                        "created_at": g.created_at,
                    })
                })
                .collect();
            let temps: Vec<Value> = temps
                .iter()
                .map(|t| {
                    json!({
                        "temp_id": t.id,
                        "user_id": t.owner.as_str(),
                        "sign_id": t.sign_id,
                        "name": t.name,
                        "type": t.kind.number(),
                        "template": t.content,
                        "description": t.description,
                        "created_at": t.created_at,
                    })
                })
                .collect();
            Ok(json!({ "signatures": sigs, "templates": temps }))
        }
        // Routes that only change (their `Allow` is POST).
        Admin::Charge | Admin::Ban => Err(PARAMS),
    }
}

async fn admin(core: &Core, route: Admin, req: &Incoming) -> Result<(), ApiError> {
    authenticate_root(core, req).await?;
    let o = json_object(req)?;
    match route {
        Admin::Charge => {
            let user = string_field(&o, "user", 64)?;
            // A positive amount is the core's rule (`Billing::charge`).
            let amount = int_field(&o, "charge")?;
            let op_id = match o.get("op_id") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Some(s.clone()),
                _ => return Err(PARAMS),
            };
            core.billing
                .charge(user, amount, op_id)
                .await
                .map(drop)
                .map_err(failure)
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
            core.pool.put_item(item).await.map_err(failure)
        }
        // Read-only views (their `Allow` is GET).
        Admin::Pool | Admin::Reviews => Err(PARAMS),
        Admin::Ban => {
            let user = string_field(&o, "user", 64)?;
            let banned = match o.get("banned") {
                None | Some(Value::Null) => true,
                Some(Value::Bool(b)) => *b,
                _ => return Err(PARAMS),
            };
            core.accounts
                .set_banned(user, banned)
                .await
                .map(drop)
                .map_err(failure)
        }
    }
}

/// The one map from core errors to the root routes' answers. Exhaustive: a
/// new [`CoreError`] variant does not compile until it is answered here.
fn failure(e: CoreError) -> ApiError {
    use CoreError as E;
    match e {
        // Unknown user; root itself (whom nobody may ban); a bad amount,
        // item or pattern.
        E::UserNotFound | E::NotRoot | E::InvalidParameter(_) | E::ItemNotFound => PARAMS,
        e @ (E::Store(_)
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
        | E::UsernameTaken
        | E::PhoneTaken
        | E::EmailTaken
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
        | E::Delivery(_)) => {
            tracing::error!(error = %e, "admin: internal failure");
            PARAMS
        }
    }
}
