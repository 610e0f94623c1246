//! The outgoing side: the [`CodeSender`] port through which every code (SMS or
//! email) leaves the core (decision G9), and [`RecordingSender`], a test
//! double that keeps what was sent.

use std::fmt::Debug;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::store::Purpose;

/// How a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Text message to a phone.
    Sms,
    /// Email.
    Email,
}

/// One message leaving the platform; serialises to the outbox line of G9.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundMessage {
    /// SMS or email.
    pub channel: Channel,
    /// The address in wire form (11-digit mobile, or email).
    pub to: String,
    /// The full text.
    pub text: String,
    /// The code it carries, if any.
    pub code: Option<String>,
    /// What the code is for, if any.
    pub purpose: Option<Purpose>,
    /// When it was handed to the sender (RFC 3339 on the wire).
    pub at: DateTime<Utc>,
}

/// Why a message could not be handed over.
#[derive(Debug, thiserror::Error)]
#[error("send failed: {0}")]
pub struct SendError(pub String);

/// Delivers codes to people.
///
/// # Contract
/// `Ok` means the message was accepted for delivery (written to the outbox,
/// queued at the carrier). Implementations must not log the code.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CodeSender: Debug + Send + Sync + 'static {
    /// Hands one message over.
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError>;
}

/// Keeps every message in memory; for tests of the core and of embedders'
/// own code.
#[derive(Debug, Default)]
pub struct RecordingSender {
    sent: Mutex<Vec<OutboundMessage>>,
}

impl RecordingSender {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent so far, oldest first.
    pub fn messages(&self) -> Vec<OutboundMessage> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The code of the newest message to `to`, if any.
    pub fn last_code_to(&self, to: &str) -> Option<String> {
        self.messages()
            .into_iter()
            .rev()
            .find(|m| m.to == to)
            .and_then(|m| m.code)
    }
}

#[async_trait]
impl CodeSender for RecordingSender {
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(message.clone());
        Ok(())
    }
}
