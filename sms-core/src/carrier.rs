//! The one outgoing port: [`Carrier`]. Every code (SMS or email) and every
//! message of a send task leaves the platform through a carrier — a provider
//! API, an SMPP bind, an SMTP relay or the outbox (G9). Modelled on lettre's
//! `Transport` family: one trait, many implementations, and
//! [`RecordingCarrier`], a stub that records and can be told to fail.
//!
//! [`CarrierSender`] and [`CarrierGateway`] serve the older
//! [`CodeSender`] and [`MessageGateway`] ports from any carrier, and
//! [`FailoverCarrier`] tries the carriers of a route in order.
//!
//! The delivery statuses every carrier's receipts are normalised to
//! (carriers.md C3) are [`DeliveryStatus`]; one receipt is a [`Receipt`].

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::gateway::{DeliveryError, GatewayAccepted, GatewayMessage, MessageGateway};
use crate::sender::{Channel, CodeSender, OutboundMessage, SendError};
use crate::store::Purpose;

/// What a message is, beyond its text: template providers (Aliyun,
/// Tencent) send a registered template with parameters instead of free text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageKind {
    /// A verification code: template carriers use their `code_template`
    /// with this code as its one parameter.
    Code {
        /// The code.
        code: String,
        /// What it is for, if known.
        purpose: Option<Purpose>,
    },
    /// A message of a send task.
    Task {
        /// The sendapi template id (`temp_id`), if the carrier must map it
        /// to a provider template; `None` when only the text is known.
        template_id: Option<i64>,
        /// Template parameters by name, in the order they appear.
        params: Vec<(String, String)>,
        /// The task's signature text, without 【】, if known.
        signature: Option<String>,
    },
}

/// One message for one recipient.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierMessage {
    /// The same key means the same message (task uuid + recipient index,
    /// or the code's own id). Travels where a provider echoes it back
    /// (Aliyun `OutId`, Tencent `SessionContext`).
    pub idempotency_key: String,
    /// SMS or email.
    pub channel: Channel,
    /// The recipient in wire form: an 11-digit mainland mobile, an E.164
    /// number (`+…`) or an email address.
    pub to: String,
    /// The full text.
    pub text: String,
    /// Code or task message.
    pub kind: MessageKind,
}

impl Debug for CarrierMessage {
    /// The text and the code stay out of `Debug` (they reach logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CarrierMessage")
            .field("idempotency_key", &self.idempotency_key)
            .field("channel", &self.channel)
            .field("to", &self.to)
            .field(
                "text",
                &format_args!("<{} chars>", self.text.chars().count()),
            )
            .finish_non_exhaustive()
    }
}

impl CarrierMessage {
    /// A verification code message (SMS to a phone or email to an
    /// address).
    pub fn new_code(
        idempotency_key: impl Into<String>,
        channel: Channel,
        to: impl Into<String>,
        text: impl Into<String>,
        code: impl Into<String>,
    ) -> Self {
        Self {
            idempotency_key: idempotency_key.into(),
            channel,
            to: to.into(),
            text: text.into(),
            kind: MessageKind::Code {
                code: code.into(),
                purpose: None,
            },
        }
    }

    /// The code this message carries, if it is a code.
    pub fn code(&self) -> Option<&str> {
        match &self.kind {
            MessageKind::Code { code, .. } => Some(code),
            MessageKind::Task { .. } => None,
        }
    }

    /// The recipient as E.164 (`+86…` for an 11-digit mainland mobile).
    pub fn to_e164(&self) -> String {
        if self.to.starts_with('+') {
            self.to.clone()
        } else if self.to.len() == 11 && self.to.bytes().all(|b| b.is_ascii_digit()) {
            format!("+86{}", self.to)
        } else {
            format!("+{}", self.to)
        }
    }
}

/// A carrier accepted the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The carrier's own id of the message (SMPP: the first part's id;
    /// receipts are matched by it).
    pub provider_id: String,
    /// Ids of every part when the carrier split the message (SMPP);
    /// empty otherwise.
    pub part_ids: Vec<String>,
    /// The name of the carrier that accepted it, when a route of several
    /// ([`FailoverCarrier`]) says; `None` from a single carrier, whose
    /// name the caller knows.
    pub carrier: Option<String>,
}

impl Accepted {
    /// Accepted as one message with id `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            provider_id: id.into(),
            part_ids: Vec::new(),
            carrier: None,
        }
    }
}

/// Why a carrier did not accept a message. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// Not accepted now (timeout, throttling, 5xx, SMPP throttled or system
    /// error, connection lost): retry later, then try the next carrier.
    /// When `maybe_sent` is true the request may have reached the provider
    /// (a timeout after sending): a repeat may duplicate the message.
    #[error("transient failure ({code}): {detail}")]
    Transient {
        /// The provider's own code, or a local one (`timeout`, `http-503`).
        code: String,
        /// A human explanation.
        detail: String,
        /// The request may have been accepted.
        maybe_sent: bool,
    },
    /// Refused for good (invalid number, template not approved,
    /// insufficient provider balance): the next carrier of the route is
    /// tried at once, never this one again.
    #[error("permanent failure ({code}): {detail}")]
    Permanent {
        /// The provider's own code.
        code: String,
        /// A human explanation.
        detail: String,
    },
    /// This carrier cannot send this kind of message (a task template it
    /// has no mapping for, an email to an SMS carrier): skipped.
    #[error("unsupported: {0}")]
    Unsupported(String),
}

impl CarrierError {
    /// A transient failure known not to have reached the provider.
    pub fn transient(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Transient {
            code: code.into(),
            detail: detail.into(),
            maybe_sent: false,
        }
    }

    /// A permanent failure.
    pub fn permanent(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Permanent {
            code: code.into(),
            detail: detail.into(),
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. })
    }
}

/// Sends messages through one provider.
///
/// # Contract
/// * `Ok(accepted)` means the provider accepted the message and gave it
///   `accepted.provider_id`; the caller never offers the same
///   `idempotency_key` to any carrier again.
/// * `Err(Transient)` means not accepted now; the caller may offer the
///   message again later (with `maybe_sent`, at the risk of a duplicate:
///   no provider drops repeats for us).
/// * `Err(Permanent)` and `Err(Unsupported)` mean this carrier will never
///   accept this message.
/// * Every attempt is signed afresh (nonces, timestamps).
/// * Implementations never log, return or `Debug`-print a secret or the
///   code; errors name the provider's code, not the request.
/// * `send` does not panic on any input and returns within the carrier's
///   configured timeout.
#[async_trait]
pub trait Carrier: Debug + Send + Sync + 'static {
    /// The carrier's name from the configuration (`[a-z0-9_-]{1,32}`).
    fn name(&self) -> &str;

    /// Offers one message.
    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError>;

    /// Offers several messages at once (one provider call where the
    /// provider has a batch API); one outcome per message, in order. The
    /// default sends them one by one.
    async fn send_batch(&self, messages: &[CarrierMessage]) -> Vec<Result<Accepted, CarrierError>> {
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            out.push(self.send(m).await);
        }
        out
    }
}

/// The delivery status of one message, one set for every carrier
/// (carriers.md C3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// No carrier accepted it yet.
    Pending,
    /// A carrier accepted it.
    Sent,
    /// The handset received it.
    Delivered,
    /// It will not be delivered.
    Failed,
    /// Its validity ran out before delivery.
    Expired,
    /// The carrier does not know.
    Unknown,
}

impl DeliveryStatus {
    /// The wire name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }

    /// Whether no later receipt changes it.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Delivered | Self::Failed | Self::Expired)
    }
}

/// One delivery receipt, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The carrier's own id of the message (as in [`Accepted`]).
    pub provider_id: String,
    /// Our idempotency key when the provider echoes it back.
    pub idempotency_key: Option<String>,
    /// The recipient as the provider wrote it, if it did.
    pub recipient: Option<String>,
    /// The normalised status.
    pub status: DeliveryStatus,
    /// The provider's own status or error code.
    pub carrier_code: String,
}

/// Serves [`CodeSender`] from a carrier: codes go out as
/// [`MessageKind::Code`], keyed by channel, address and code.
#[derive(Debug, Clone)]
pub struct CarrierSender {
    carrier: Arc<dyn Carrier>,
}

impl CarrierSender {
    /// Codes through `carrier`.
    pub fn new(carrier: Arc<dyn Carrier>) -> Self {
        Self { carrier }
    }

    /// The carrier message of an outbound code message.
    pub fn message(m: &OutboundMessage) -> CarrierMessage {
        let key = format!(
            "code:{}:{}:{}",
            m.to,
            m.at.timestamp_millis(),
            m.code.as_deref().unwrap_or("")
        );
        // The key must not carry the code itself into logs: hash it.
        let key = {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(key.as_bytes())[..12])
        };
        CarrierMessage {
            idempotency_key: key,
            channel: m.channel,
            to: m.to.clone(),
            text: m.text.clone(),
            kind: match &m.code {
                Some(code) => MessageKind::Code {
                    code: code.clone(),
                    purpose: m.purpose,
                },
                None => MessageKind::Task {
                    template_id: None,
                    params: Vec::new(),
                    signature: None,
                },
            },
        }
    }
}

#[async_trait]
impl CodeSender for CarrierSender {
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError> {
        self.carrier
            .send(&Self::message(message))
            .await
            .map(|_| ())
            .map_err(|e| SendError(e.to_string()))
    }
}

/// Serves [`MessageGateway`] from a carrier: a transient failure is
/// [`DeliveryError::Unavailable`], a permanent or unsupported one
/// [`DeliveryError::Rejected`].
#[derive(Debug, Clone)]
pub struct CarrierGateway {
    carrier: Arc<dyn Carrier>,
}

impl CarrierGateway {
    /// Task messages through `carrier`.
    pub fn new(carrier: Arc<dyn Carrier>) -> Self {
        Self { carrier }
    }

    /// The carrier message of a task message: the text, and the template
    /// id, parameters and signature template carriers send instead.
    pub fn message(m: &GatewayMessage) -> CarrierMessage {
        CarrierMessage {
            idempotency_key: m.idempotency_key.clone(),
            channel: Channel::Sms,
            to: m.to.to_string(),
            text: m.text.clone(),
            kind: MessageKind::Task {
                template_id: m.template_id,
                params: m.params.clone(),
                signature: m.signature.clone(),
            },
        }
    }
}

#[async_trait]
impl MessageGateway for CarrierGateway {
    async fn deliver(&self, message: &GatewayMessage) -> Result<String, DeliveryError> {
        self.deliver_accepted(message).await.map(|a| a.id)
    }

    async fn deliver_accepted(
        &self,
        message: &GatewayMessage,
    ) -> Result<GatewayAccepted, DeliveryError> {
        match self.carrier.send(&Self::message(message)).await {
            Ok(a) => Ok(GatewayAccepted {
                carrier: Some(a.carrier.unwrap_or_else(|| self.carrier.name().to_owned())),
                id: a.provider_id,
            }),
            Err(e @ CarrierError::Transient { .. }) => {
                Err(DeliveryError::Unavailable(e.to_string()))
            }
            Err(e) => Err(DeliveryError::Rejected(e.to_string())),
        }
    }
}

/// The carriers of one route, tried in order: a permanent or unsupported
/// refusal passes to the next carrier at once; a transient one too, after
/// the last carrier the first transient error is returned (so a queue can
/// retry the whole route later). The first acceptance ends the attempt.
#[derive(Debug, Clone)]
pub struct FailoverCarrier {
    name: String,
    carriers: Vec<Arc<dyn Carrier>>,
}

impl FailoverCarrier {
    /// A route named `name` over `carriers`, in order.
    pub fn new(name: impl Into<String>, carriers: Vec<Arc<dyn Carrier>>) -> Self {
        Self {
            name: name.into(),
            carriers,
        }
    }
}

#[async_trait]
impl Carrier for FailoverCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let mut transient = None;
        let mut last = CarrierError::Unsupported(format!("route {} has no carrier", self.name));
        for c in &self.carriers {
            match c.send(message).await {
                Ok(mut a) => {
                    a.carrier.get_or_insert_with(|| c.name().to_owned());
                    return Ok(a);
                }
                Err(e) => {
                    tracing::info!(carrier = c.name(), key = %message.idempotency_key, error = %e, "carrier refused; trying the next");
                    if e.is_transient() && transient.is_none() {
                        transient = Some(e.clone());
                    }
                    last = e;
                }
            }
        }
        Err(transient.unwrap_or(last))
    }
}

/// Records every message it is offered and accepts it, unless told to
/// fail: a queue of failures for the next offers, or a failure per
/// recipient. Ids are `<name>-<n>`.
#[derive(Debug)]
pub struct RecordingCarrier {
    name: String,
    inner: Mutex<RecordingState>,
}

#[derive(Debug, Default)]
struct RecordingState {
    offered: Vec<CarrierMessage>,
    accepted: Vec<(CarrierMessage, String)>,
    next_failures: VecDeque<CarrierError>,
    fail_to: HashMap<String, CarrierError>,
    fail_all: Option<CarrierError>,
}

impl RecordingCarrier {
    /// A carrier named `name` that accepts everything.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            inner: Mutex::new(RecordingState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RecordingState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next offer fails with `error` (queued after earlier ones).
    pub fn fail_next(&self, error: CarrierError) {
        self.state().next_failures.push_back(error);
    }

    /// Every offer to `to` fails with `error`.
    pub fn fail_to(&self, to: impl Into<String>, error: CarrierError) {
        self.state().fail_to.insert(to.into(), error);
    }

    /// Every offer fails with `error` (`None`: back to accepting).
    pub fn fail_all(&self, error: Option<CarrierError>) {
        self.state().fail_all = error;
    }

    /// Every offer so far, failures included, oldest first.
    pub fn offered(&self) -> Vec<CarrierMessage> {
        self.state().offered.clone()
    }

    /// Accepted messages with their ids, oldest first.
    pub fn accepted(&self) -> Vec<(CarrierMessage, String)> {
        self.state().accepted.clone()
    }
}

#[async_trait]
impl Carrier for RecordingCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let mut s = self.state();
        s.offered.push(message.clone());
        if let Some(e) = s.next_failures.pop_front() {
            return Err(e);
        }
        if let Some(e) = s
            .fail_all
            .clone()
            .or_else(|| s.fail_to.get(&message.to).cloned())
        {
            return Err(e);
        }
        let id = format!("{}-{}", self.name, s.accepted.len() + 1);
        s.accepted.push((message.clone(), id.clone()));
        Ok(Accepted::new(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: &str) -> CarrierMessage {
        CarrierMessage::new_code(format!("k-{to}"), Channel::Sms, to, "hello", "123456")
    }

    #[tokio::test]
    async fn recording_carrier_fails_as_told() {
        let c = RecordingCarrier::new("r");
        c.fail_next(CarrierError::transient("throttled", "slow down"));
        c.fail_to(
            "13800000001",
            CarrierError::permanent("bad", "invalid number"),
        );
        assert!(c
            .send(&msg("13800000000"))
            .await
            .unwrap_err()
            .is_transient());
        assert_eq!(
            c.send(&msg("13800000000")).await.unwrap().provider_id,
            "r-1"
        );
        assert!(matches!(
            c.send(&msg("13800000001")).await,
            Err(CarrierError::Permanent { .. })
        ));
        c.fail_all(Some(CarrierError::Unsupported("x".into())));
        assert!(c.send(&msg("13800000000")).await.is_err());
        assert_eq!(c.offered().len(), 4);
        assert_eq!(c.accepted().len(), 1);
    }

    #[tokio::test]
    async fn failover_tries_in_order_and_prefers_transient_error() {
        let a = Arc::new(RecordingCarrier::new("a"));
        let b = Arc::new(RecordingCarrier::new("b"));
        let route = FailoverCarrier::new("codes", vec![a.clone(), b.clone()]);
        a.fail_next(CarrierError::permanent("isv.MOBILE_NUMBER_ILLEGAL", "bad"));
        assert_eq!(route.send(&msg("1")).await.unwrap().provider_id, "b-1");
        a.fail_next(CarrierError::transient("throttled", "t"));
        b.fail_next(CarrierError::permanent("bad", "b"));
        assert!(route.send(&msg("1")).await.unwrap_err().is_transient());
        assert_eq!(b.offered().len(), 2);
    }

    #[tokio::test]
    async fn adapters_map_outcomes() {
        let c = Arc::new(RecordingCarrier::new("r"));
        let gw = CarrierGateway::new(c.clone());
        let to = crate::phone::PhoneNumber::parse_cn_mobile("13800000000").unwrap();
        let m = GatewayMessage::text("t:0", to, "x");
        assert_eq!(gw.deliver(&m).await.unwrap(), "r-1");
        c.fail_next(CarrierError::transient("503", "down"));
        assert!(matches!(
            gw.deliver(&m).await,
            Err(DeliveryError::Unavailable(_))
        ));
        c.fail_next(CarrierError::permanent("bad", "no"));
        assert!(matches!(
            gw.deliver(&m).await,
            Err(DeliveryError::Rejected(_))
        ));
        let s = CarrierSender::new(c.clone());
        let om = OutboundMessage {
            channel: Channel::Sms,
            to: "13800000000".into(),
            text: "code 123456".into(),
            code: Some("123456".into()),
            purpose: None,
            at: chrono::DateTime::from_timestamp(0, 0).unwrap(),
        };
        s.send(&om).await.unwrap();
        let last = c.accepted().pop().unwrap().0;
        assert_eq!(last.code(), Some("123456"));
        assert!(!last.idempotency_key.contains("123456"));
        assert!(!format!("{last:?}").contains("123456"));
    }
}
