//! The [`MessageGateway`] port: the carrier connection that delivers one
//! message of a send task and reports the outcome; and two test doubles,
//! [`RecordingGateway`] and [`FailingGateway`].

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::phone::PhoneNumber;

/// One message for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayMessage {
    /// Task uuid + recipient index: the same key means the same message, so
    /// a gateway can drop a repeat (a task resumed after a crash may offer a
    /// message again when the crash fell between acceptance and the status
    /// write).
    pub idempotency_key: String,
    /// The recipient.
    pub to: PhoneNumber,
    /// The full text (`【signature】content`).
    pub text: String,
    /// The sendapi template id (`temp_id`): template carriers (Aliyun,
    /// Tencent) map it to a provider template (carriers.md C1).
    pub template_id: Option<i64>,
    /// The template parameters by name, in the order the template uses
    /// them.
    pub params: Vec<(String, String)>,
    /// The task's signature text, without 【】.
    pub signature: Option<String>,
}

impl GatewayMessage {
    /// A message of free text only (no template to map).
    pub fn text(
        idempotency_key: impl Into<String>,
        to: PhoneNumber,
        text: impl Into<String>,
    ) -> Self {
        Self {
            idempotency_key: idempotency_key.into(),
            to,
            text: text.into(),
            template_id: None,
            params: Vec::new(),
            signature: None,
        }
    }
}

/// A message a gateway accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAccepted {
    /// The carrier's id of the message (receipts are matched by it).
    pub id: String,
    /// The name of the carrier that accepted it, when the gateway knows.
    pub carrier: Option<String>,
}

/// Why a message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Permanently refused (invalid number, blocked …): the recipient fails
    /// and is refunded.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Not accepted now (carrier down, throttled): offered again later.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Delivers messages to a carrier.
///
/// # Contract
/// `Ok(id)` means the carrier accepted the message. Implementations should
/// drop a message whose `idempotency_key` they already accepted and answer
/// `Ok` with the first id.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait MessageGateway: Debug + Send + Sync + 'static {
    /// Offers one message.
    async fn deliver(&self, message: &GatewayMessage) -> Result<String, DeliveryError>;

    /// Offers one message and says which carrier accepted it (receipts are
    /// matched by carrier and id). The default is [`deliver`](Self::deliver)
    /// without a carrier name.
    async fn deliver_accepted(
        &self,
        message: &GatewayMessage,
    ) -> Result<GatewayAccepted, DeliveryError> {
        self.deliver(message)
            .await
            .map(|id| GatewayAccepted { id, carrier: None })
    }
}

/// Accepts everything, keeps one copy per idempotency key, and counts
/// offers (repeats included).
#[derive(Debug, Default)]
pub struct RecordingGateway {
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    accepted: HashMap<String, GatewayMessage>,
    order: Vec<String>,
    offers: usize,
}

impl RecordingGateway {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepted messages, one per key, in acceptance order.
    pub fn accepted(&self) -> Vec<GatewayMessage> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.order
            .iter()
            .filter_map(|k| g.accepted.get(k).cloned())
            .collect()
    }

    /// Offers received, repeats included.
    pub fn offers(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).offers
    }
}

#[async_trait]
impl MessageGateway for RecordingGateway {
    async fn deliver(&self, message: &GatewayMessage) -> Result<String, DeliveryError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.offers += 1;
        if !g.accepted.contains_key(&message.idempotency_key) {
            g.order.push(message.idempotency_key.clone());
            g.accepted
                .insert(message.idempotency_key.clone(), message.clone());
        }
        Ok(format!("gw-{}", message.idempotency_key))
    }
}

/// A [`RecordingGateway`] that rejects chosen recipients.
#[derive(Debug, Default)]
pub struct FailingGateway {
    fail: HashSet<PhoneNumber>,
    inner: RecordingGateway,
}

impl FailingGateway {
    /// Rejects every message to a number in `fail`.
    pub fn new(fail: impl IntoIterator<Item = PhoneNumber>) -> Self {
        Self {
            fail: fail.into_iter().collect(),
            inner: RecordingGateway::new(),
        }
    }

    /// Accepted messages.
    pub fn accepted(&self) -> Vec<GatewayMessage> {
        self.inner.accepted()
    }

    /// Offers received (rejected ones included).
    pub fn offers(&self) -> usize {
        self.inner.offers()
    }
}

#[async_trait]
impl MessageGateway for FailingGateway {
    async fn deliver(&self, message: &GatewayMessage) -> Result<String, DeliveryError> {
        if self.fail.contains(&message.to) {
            let mut g = self.inner.inner.lock().unwrap_or_else(|p| p.into_inner());
            g.offers += 1;
            return Err(DeliveryError::Rejected("number refused by carrier".into()));
        }
        self.inner.deliver(message).await
    }
}
