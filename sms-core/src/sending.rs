//! The SMS sending platform's domain: signatures and templates under audit,
//! rendering of `${name}` placeholders, segment counting, and send tasks with
//! a status per recipient.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::carrier::DeliveryStatus;
use crate::ledger::{Amount, LedgerOp, LedgerRequest};
use crate::phone::PhoneNumber;
use crate::user::UserId;

/// Where a signature or template stands in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditStatus {
    /// Waiting for root's review (after creation and after every edit).
    Pending,
    /// Approved: usable for sending; no longer editable.
    Passed,
    /// Refused, with a reason; editable (back to pending).
    Rejected,
}

impl AuditStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Passed => "passed",
            Self::Rejected => "rejected",
        }
    }

    /// True while the owner may edit it (pending or rejected).
    pub fn editable(&self) -> bool {
        !matches!(self, Self::Passed)
    }
}

/// A signature: the `【…】` sender name prefixed to every message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Id (assigned by the store).
    pub id: i64,
    /// Owner.
    pub owner: UserId,
    /// The signature text (without brackets).
    pub text: String,
    /// Where it comes from (company, app, …).
    pub source: String,
    /// Proof documents (URLs).
    pub pics: Vec<String>,
    /// Review state.
    pub audit: AuditStatus,
    /// Why it was rejected ("" otherwise).
    pub reject_reason: String,
    /// Unix s.
    pub created_at: i64,
    /// Unix s.
    pub updated_at: i64,
}

/// Template types of the seed: 1 verification code, 2 notice, 3 marketing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TemplateType {
    /// 1.
    Code,
    /// 2.
    Notice,
    /// 3.
    Marketing,
}

impl TemplateType {
    /// From the wire number.
    pub fn from_number(n: i64) -> Option<Self> {
        Some(match n {
            1 => Self::Code,
            2 => Self::Notice,
            3 => Self::Marketing,
            _ => return None,
        })
    }

    /// The wire number.
    pub fn number(&self) -> i64 {
        match self {
            Self::Code => 1,
            Self::Notice => 2,
            Self::Marketing => 3,
        }
    }
}

/// A message template bound to a signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Template {
    /// Id (assigned by the store).
    pub id: i64,
    /// Owner.
    pub owner: UserId,
    /// The signature it belongs to.
    pub sign_id: i64,
    /// Name.
    pub name: String,
    /// Content, with `${name}` placeholders.
    pub content: String,
    /// Type.
    pub kind: TemplateType,
    /// Why it is needed.
    pub description: String,
    /// Review state.
    pub audit: AuditStatus,
    /// Why it was rejected ("" otherwise).
    pub reject_reason: String,
    /// Unix s.
    pub created_at: i64,
    /// Unix s.
    pub updated_at: i64,
}

/// Fills `${name}` placeholders from `params`; a placeholder without a value
/// stays as written.
pub fn render(content: &str, params: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(content.len());
    let mut rest = content;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match params.get(name) {
                    Some(v) => out.push_str(v),
                    None => {
                        out.push_str("${");
                        out.push_str(name);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Longest value of one `params` entry, in characters.
pub const MAX_PARAM_CHARS: usize = 100;
/// Longest rendered text `【signature】content`, in characters.
pub const MAX_RENDERED_CHARS: usize = 500;

/// True for the characters no `params` value may hold: the signature
/// brackets `【】` (a value could forge a second signature), control
/// characters (NUL, newlines …) and the Unicode bidirectional controls
/// (U+202E and kin, which reorder what the reader sees).
fn forbidden_in_param(c: char) -> bool {
    matches!(
        c,
        '【' | '】'
            | '\u{061C}'
            | '\u{200E}'
            | '\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2066}'..='\u{2069}'
    ) || c.is_control()
}

/// The rules on the values a send fills a template with (`params`): each at
/// most [`MAX_PARAM_CHARS`] characters, none of the signature brackets
/// `【】`, control characters or Unicode bidirectional controls, and, for a
/// verification-code template
/// ([`TemplateType::Code`]), ASCII digits and letters only. A passed template
/// must not become another text through its values.
pub fn check_params(
    kind: TemplateType,
    params: &HashMap<String, String>,
) -> Result<(), crate::error::CoreError> {
    let ok = params.values().all(|v| {
        v.chars().count() <= MAX_PARAM_CHARS
            && !v.chars().any(forbidden_in_param)
            && (kind != TemplateType::Code || v.chars().all(|c| c.is_ascii_alphanumeric()))
    });
    if ok {
        Ok(())
    } else {
        Err(crate::error::CoreError::SendParams)
    }
}

/// The rendered text of a send, `【signature】content` with `params`
/// filled in, after [`check_params`] and the [`MAX_RENDERED_CHARS`] bound.
pub fn render_send(
    signature: &str,
    template: &Template,
    params: &HashMap<String, String>,
) -> Result<String, crate::error::CoreError> {
    check_params(template.kind, params)?;
    let text = full_text(signature, &render(&template.content, params));
    if text.chars().count() > MAX_RENDERED_CHARS {
        return Err(crate::error::CoreError::SendParams);
    }
    Ok(text)
}

/// The full text of a message: `【signature】content`.
pub fn full_text(signature: &str, content: &str) -> String {
    format!("【{signature}】{content}")
}

/// GSM 03.38 basic alphabet (one septet each).
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// GSM 03.38 extension table (two septets each).
const GSM_EXT: &str = "^{}\\[~]|€\u{c}";

/// How a text is encoded and how many segments it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// GSM-7 (else UCS-2).
    pub gsm7: bool,
    /// Length in the encoding's units (septets or UTF-16 units).
    pub units: usize,
    /// Segments: GSM-7 160 single / 153 each concatenated; UCS-2 70 / 67.
    pub count: u32,
}

/// Counts the segments of `text`.
pub fn segments(text: &str) -> Segments {
    let gsm7 = text
        .chars()
        .all(|c| GSM_BASIC.contains(c) || GSM_EXT.contains(c));
    let (units, single, multi) = if gsm7 {
        let units = text
            .chars()
            .map(|c| if GSM_EXT.contains(c) { 2 } else { 1 })
            .sum();
        (units, 160, 153)
    } else {
        (text.encode_utf16().count(), 70, 67)
    };
    let count = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    Segments {
        gsm7,
        units,
        count: count as u32,
    }
}

/// Delivery state of one recipient (carriers.md C3).
///
/// A recipient moves `Pending` → `Sent` (a carrier accepted it) or
/// `Pending` → `Failed` (refused at once; refunded when the task finishes),
/// and from `Pending`, `Sent` or an `unknown` report to a [`Reported`]
/// status by a delivery receipt ([`receipt_transition`]).
///
/// [`Reported`]: RecipientStatus::Reported
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RecipientStatus {
    /// Not yet accepted by the gateway.
    Pending,
    /// Accepted by the gateway.
    Sent {
        /// The gateway's message id.
        gateway_id: String,
        /// Unix s.
        at: i64,
        /// The carrier that accepted it, when the gateway says (receipts
        /// are matched by carrier and id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        carrier: Option<String>,
    },
    /// Refused by the gateway at once (refunded with the task's refund
    /// when the task finishes).
    Failed {
        /// Why.
        reason: String,
        /// Unix s.
        at: i64,
    },
    /// What a delivery receipt said: `delivered`, `failed`, `expired` or
    /// `unknown`. A `failed` or `expired` report was refunded by the same
    /// store call that recorded it (ledger operation
    /// [`SendTask::recipient_refund_op`]).
    Reported {
        /// The normalised status (never `pending` or `sent`).
        delivery: DeliveryStatus,
        /// The carrier's message id.
        gateway_id: String,
        /// The carrier's name.
        carrier: String,
        /// The provider's own status or error code.
        carrier_code: String,
        /// Unix s.
        at: i64,
    },
}

impl RecipientStatus {
    /// The wire name: `pending`, `sent`, `failed`, `delivered`, `expired`
    /// or `unknown`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent { .. } => "sent",
            Self::Failed { .. } => "failed",
            Self::Reported { delivery, .. } => delivery.as_str(),
        }
    }

    /// A `Sent` status without the carrier's name.
    pub fn sent(gateway_id: impl Into<String>, at: i64) -> Self {
        Self::Sent {
            gateway_id: gateway_id.into(),
            at,
            carrier: None,
        }
    }

    /// The carrier's name, once known.
    pub fn carrier(&self) -> Option<&str> {
        match self {
            Self::Sent { carrier, .. } => carrier.as_deref(),
            Self::Reported { carrier, .. } => Some(carrier),
            Self::Pending | Self::Failed { .. } => None,
        }
    }

    /// The provider's own status code, once a receipt told it.
    pub fn carrier_code(&self) -> Option<&str> {
        match self {
            Self::Reported { carrier_code, .. } => Some(carrier_code),
            _ => None,
        }
    }

    /// Whether no receipt changes it any more: refused at once, or a
    /// `delivered`, `failed` or `expired` report.
    pub fn is_final(&self) -> bool {
        match self {
            Self::Failed { .. } => true,
            Self::Reported { delivery, .. } => delivery.is_final(),
            Self::Pending | Self::Sent { .. } => false,
        }
    }
}

/// A delivery receipt for one recipient, as a store applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptUpdate {
    /// The normalised status the receipt reports.
    pub delivery: DeliveryStatus,
    /// The carrier that sent the receipt.
    pub carrier: String,
    /// The carrier's message id.
    pub gateway_id: String,
    /// The provider's own status or error code.
    pub carrier_code: String,
    /// When it was applied (Unix s).
    pub at: i64,
}

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiptOutcome {
    /// The recipient moved to `status`; `refunded` units went back to the
    /// task's owner in the same step (0 when none was due).
    Applied {
        /// The new status.
        status: RecipientStatus,
        /// What was refunded.
        refunded: Amount,
    },
    /// Nothing changed (a repeat, a late receipt after a final status, or
    /// a `sent`/`pending` report); the recipient's status.
    Unchanged(RecipientStatus),
    /// No such task or recipient.
    Unknown,
}

/// The rule of receipts (carriers.md C3), pure: the status recipient
/// `index` of `task` moves to from `current` on `update`, and the refund
/// due with it, or `None` when nothing changes.
///
/// * Only `delivered`, `failed`, `expired` and `unknown` reports move a
///   recipient; `pending` and `sent` reports change nothing.
/// * A final status never changes: the first final report wins, so a
///   `delivered` after `failed` (or the reverse) and a repeated receipt
///   change nothing and refund nothing again. A recipient refused at once
///   (`Failed`) is final too.
/// * From `Pending` (a receipt that overtook the status write), `Sent`
///   or an `unknown` report, the report is recorded; `unknown` over
///   `unknown` changes nothing.
/// * `failed` and `expired` are a final failure: the recipient's share
///   (segments × unit price) is refunded once, under the ledger operation
///   [`SendTask::recipient_refund_op`]. A task of price 0 refunds nothing.
pub fn receipt_transition(
    task: &SendTask,
    index: usize,
    current: &RecipientStatus,
    update: &ReceiptUpdate,
) -> Option<(RecipientStatus, Option<LedgerRequest>)> {
    if index >= task.recipients.len() || current.is_final() {
        return None;
    }
    match update.delivery {
        DeliveryStatus::Pending | DeliveryStatus::Sent => return None,
        DeliveryStatus::Unknown if current.as_str() == "unknown" => return None,
        _ => {}
    }
    let next = RecipientStatus::Reported {
        delivery: update.delivery,
        gateway_id: update.gateway_id.clone(),
        carrier: update.carrier.clone(),
        carrier_code: update.carrier_code.clone(),
        at: update.at,
    };
    let amount = Amount::from(task.segments).saturating_mul(task.unit_price);
    let refund = (matches!(
        update.delivery,
        DeliveryStatus::Failed | DeliveryStatus::Expired
    ) && amount > 0)
        .then(|| LedgerRequest {
            op_id: task.recipient_refund_op(index),
            user: task.owner.clone(),
            op: LedgerOp::Refund { amount },
            at: update.at,
        });
    Some((next, refund))
}

/// Orders a send's `params` as the template's `${name}`s first appear
/// (Tencent's `TemplateParamSet` is positional); names the template does
/// not use are left out, a name used twice appears once.
pub fn template_params(content: &str, params: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = content;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if let Some(v) = params.get(name) {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_string(), v.clone()));
            }
        }
        rest = &after[end + 1..];
    }
    out
}

/// Lifecycle of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created; the charge is being taken.
    Created,
    /// Charged and waiting for (or in) delivery.
    Queued,
    /// Every recipient has a final status; failures refunded.
    Done,
    /// The charge never went through; nothing is sent.
    Cancelled,
}

impl TaskState {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Queued => "queued",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A send task (one `POST /v1/message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTask {
    /// The task's uuid.
    pub uuid: String,
    /// Who sends.
    pub owner: UserId,
    /// Signature used.
    pub sign_id: i64,
    /// Template used.
    pub temp_id: i64,
    /// The rendered full text.
    pub text: String,
    /// Segments per recipient.
    pub segments: u32,
    /// Price per segment.
    pub unit_price: Amount,
    /// Recipients (in request order).
    pub recipients: Vec<PhoneNumber>,
    /// State.
    pub state: TaskState,
    /// Unix s.
    pub created_at: i64,
    /// Unix s, when done.
    pub finished_at: Option<i64>,
    /// The send's `params` in the order the template uses them
    /// ([`template_params`]): template carriers (Aliyun, Tencent) send the
    /// provider template with them instead of the text.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
}

impl SendTask {
    /// The transition of moving the task from `from` to `to` at `at`
    /// (compare-and-set): false, and nothing changed, unless it is in
    /// `from`. Ending it (done, cancelled) records `finished_at`.
    pub fn move_state(&mut self, from: TaskState, to: TaskState, at: i64) -> bool {
        if self.state != from {
            return false;
        }
        self.state = to;
        if matches!(to, TaskState::Done | TaskState::Cancelled) {
            self.finished_at = Some(at);
        }
        true
    }

    /// The cost charged up front: recipients × segments × unit price.
    pub fn cost(&self) -> Amount {
        self.recipients.len() as Amount * Amount::from(self.segments) * self.unit_price
    }

    /// The ledger operation id of the charge.
    pub fn charge_op(&self) -> String {
        format!("send:{}", self.uuid)
    }

    /// The ledger operation id of the refund.
    pub fn refund_op(&self) -> String {
        format!("refund:{}", self.uuid)
    }

    /// The idempotency key of recipient `index`: task uuid + recipient.
    pub fn idempotency_key(&self, index: usize) -> String {
        format!("{}:{}", self.uuid, index)
    }

    /// The task uuid and recipient index of an idempotency key made by
    /// [`idempotency_key`](Self::idempotency_key); `None` for any other
    /// key (a code's).
    pub fn parse_idempotency_key(key: &str) -> Option<(&str, usize)> {
        let (uuid, index) = key.rsplit_once(':')?;
        if uuid.is_empty() || index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((uuid, index.parse().ok()?))
    }

    /// The ledger operation id of recipient `index`'s refund after a
    /// receipt reported it failed or expired (one per recipient, so a
    /// repeated receipt cannot refund twice).
    pub fn recipient_refund_op(&self, index: usize) -> String {
        format!("refund:{}:{}", self.uuid, index)
    }

    /// The signature text of the rendered text (`【signature】…`), if it
    /// starts with one.
    pub fn signature_text(&self) -> Option<&str> {
        let rest = self.text.strip_prefix('【')?;
        let end = rest.find('】')?;
        Some(&rest[..end]).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn render_fills_known_placeholders_only() {
        let mut p = HashMap::new();
        p.insert("code".to_string(), "482913".to_string());
        assert_eq!(
            render("验证码${code}，${x}有效", &p),
            "验证码482913，${x}有效"
        );
        assert_eq!(render("${code}${code}", &p), "482913482913");
        assert_eq!(render("unterminated ${code", &p), "unterminated ${code");
        assert_eq!(render("", &p), "");
    }

    #[test]
    fn segment_boundaries() {
        assert_eq!(segments(&"a".repeat(160)).count, 1);
        assert_eq!(segments(&"a".repeat(161)).count, 2);
        assert_eq!(segments(&"a".repeat(306)).count, 2);
        assert_eq!(segments(&"a".repeat(307)).count, 3);
        assert_eq!(segments(&"€".repeat(80)).units, 160);
        assert_eq!(segments(&"€".repeat(81)).count, 2);
        assert!(!segments("【签名】").gsm7);
        assert_eq!(segments(&"字".repeat(70)).count, 1);
        assert_eq!(segments(&"字".repeat(71)).count, 2);
        assert_eq!(segments(&"字".repeat(134)).count, 2);
        assert_eq!(segments(&"字".repeat(135)).count, 3);
        // An emoji is two UTF-16 units.
        assert_eq!(segments(&"😀".repeat(35)).units, 70);
        assert_eq!(segments(&"😀".repeat(36)).count, 2);
        assert_eq!(segments("").count, 1);
    }

    fn task() -> SendTask {
        SendTask {
            uuid: "u-1".into(),
            owner: UserId::from_string("o".into()),
            sign_id: 1,
            temp_id: 3,
            text: "【欢聚】您的包裹42已到".into(),
            segments: 2,
            unit_price: 5,
            recipients: vec![PhoneNumber::parse_cn_mobile("13900000000").unwrap()],
            state: TaskState::Queued,
            created_at: 0,
            finished_at: None,
            params: Vec::new(),
        }
    }

    fn update(delivery: DeliveryStatus) -> ReceiptUpdate {
        ReceiptUpdate {
            delivery,
            carrier: "tw".into(),
            gateway_id: "SM1".into(),
            carrier_code: "30006".into(),
            at: 9,
        }
    }

    #[test]
    fn receipts_move_to_the_first_final_report_and_refund_failures_once() {
        let t = task();
        let sent = RecipientStatus::sent("SM1", 1);
        let (failed, refund) = receipt_transition(&t, 0, &sent, &update(DeliveryStatus::Failed))
            .expect("a failure moves a sent recipient");
        assert_eq!(failed.as_str(), "failed");
        let refund = refund.expect("a failure is refunded");
        assert_eq!(refund.op, LedgerOp::Refund { amount: 10 });
        assert_eq!(refund.op_id, "refund:u-1:0");
        assert_eq!(refund.user, t.owner);
        // Final: nothing moves it again, a repeat included.
        for d in [DeliveryStatus::Delivered, DeliveryStatus::Failed] {
            assert_eq!(receipt_transition(&t, 0, &failed, &update(d)), None);
        }
        let (delivered, refund) =
            receipt_transition(&t, 0, &sent, &update(DeliveryStatus::Delivered)).unwrap();
        assert_eq!((delivered.as_str(), refund), ("delivered", None));
        assert_eq!(
            receipt_transition(&t, 0, &delivered, &update(DeliveryStatus::Failed)),
            None
        );
        // `sent`/`pending` reports change nothing; `unknown` is not final.
        assert_eq!(
            receipt_transition(&t, 0, &sent, &update(DeliveryStatus::Sent)),
            None
        );
        let (unknown, refund) =
            receipt_transition(&t, 0, &sent, &update(DeliveryStatus::Unknown)).unwrap();
        assert_eq!((unknown.as_str(), refund), ("unknown", None));
        assert_eq!(
            receipt_transition(&t, 0, &unknown, &update(DeliveryStatus::Unknown)),
            None
        );
        let (expired, refund) =
            receipt_transition(&t, 0, &unknown, &update(DeliveryStatus::Expired)).unwrap();
        assert_eq!(expired.as_str(), "expired");
        assert!(refund.is_some(), "an expiry is a final failure");
        // Refused at once: refunded with the task, never by a receipt.
        let refused = RecipientStatus::Failed {
            reason: "x".into(),
            at: 1,
        };
        assert_eq!(
            receipt_transition(&t, 0, &refused, &update(DeliveryStatus::Failed)),
            None
        );
        // No such recipient; a free task refunds nothing.
        assert_eq!(
            receipt_transition(&t, 1, &sent, &update(DeliveryStatus::Failed)),
            None
        );
        let free = SendTask {
            unit_price: 0,
            ..task()
        };
        let (_, refund) =
            receipt_transition(&free, 0, &sent, &update(DeliveryStatus::Failed)).unwrap();
        assert_eq!(refund, None);
    }

    #[test]
    fn keys_params_and_signature() {
        let t = task();
        assert_eq!(
            SendTask::parse_idempotency_key(&t.idempotency_key(7)),
            Some(("u-1", 7))
        );
        for bad in ["", "u-1", ":3", "u-1:", "u-1:x", "0a1b2c3d4e5f"] {
            assert_eq!(SendTask::parse_idempotency_key(bad), None, "{bad}");
        }
        assert_eq!(t.signature_text(), Some("欢聚"));
        let mut p = HashMap::new();
        p.insert("b".to_string(), "2".to_string());
        p.insert("a".to_string(), "1".to_string());
        p.insert("unused".to_string(), "0".to_string());
        assert_eq!(
            template_params("${b} and ${a} then ${b} ${missing}", &p),
            vec![
                ("b".to_string(), "2".to_string()),
                ("a".to_string(), "1".to_string())
            ]
        );
    }

    proptest! {
        #[test]
        fn segments_fit_their_units(s in "\\PC{0,400}") {
            let seg = segments(&s);
            let (single, multi) = if seg.gsm7 { (160, 153) } else { (70, 67) };
            prop_assert!(seg.count >= 1);
            if seg.units <= single {
                prop_assert_eq!(seg.count, 1);
            } else {
                prop_assert!(seg.count as usize * multi >= seg.units);
                prop_assert!((seg.count as usize - 1) * multi < seg.units);
            }
        }

        #[test]
        fn render_without_placeholders_is_identity(s in "[^$]{0,100}") {
            prop_assert_eq!(render(&s, &HashMap::new()), s);
        }
    }
}
