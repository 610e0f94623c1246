//! The root routes (`POST /v2/charge`, `/v2/item`, `/v2/ban`): Basic auth as
//! root, JSON bodies, answers in the `sendapi` envelope (wire decisions
//! G3). `/v2/charge` is the `sendapi` seed's own; `/v2/item` and `/v2/ban`
//! are the platform's root extensions for the pool and for accounts. The
//! rules (who is root, who may be banned, what a charge does) are the
//! core's; this module reads bodies and maps errors.

use http::Response;
use serde_json::Value;
use sms_core::pool::Item;
use sms_core::{Core, CoreError};

use crate::json_api::{
    authenticate_root, int_field, json_object, ok, string_field, ApiError, PARAMS,
};
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
pub async fn handle(core: &Core, route: Admin, req: &Incoming) -> Response<HttpBody> {
    match admin(core, route, req).await {
        Ok(()) => ok(),
        Err(e) => e.response(),
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
