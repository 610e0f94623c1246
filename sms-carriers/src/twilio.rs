//! Twilio Messaging: `POST /2010-04-01/Accounts/{sid}/Messages.json` with
//! Basic auth (account SID, auth token), `To`, `From` or
//! `MessagingServiceSid`, `Body` and `StatusCallback`
//! (`public_url` + `/carriers/<name>/receipts?key=<idempotency key>`).

use async_trait::async_trait;
use serde::Deserialize;
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};
use sms_core::sender::Channel;

use crate::config::{TwilioConfig, TwilioFrom};
use crate::http::HttpClient;

/// A Twilio carrier.
#[derive(Debug)]
pub struct Twilio {
    name: String,
    config: TwilioConfig,
    client: HttpClient,
}

#[derive(Deserialize)]
struct Answer {
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

impl Twilio {
    /// A carrier named `name`.
    pub fn new(name: impl Into<String>, config: TwilioConfig, client: HttpClient) -> Self {
        Self {
            name: name.into(),
            config,
            client,
        }
    }

    /// The URL Twilio posts the status callbacks of `key`'s message to
    /// (and signs): the idempotency key rides in the query, so receipts
    /// carry it back.
    pub fn callback_url(&self, key: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("key", key)
            .finish();
        format!(
            "{}/carriers/{}/receipts?{query}",
            self.config.public_url, self.name
        )
    }

    /// The outcome of an answer: 201 with `sid` is accepted; 429 and 5xx
    /// are transient; any other error (21211 invalid `To`, 21610
    /// unsubscribed, 21408 region not enabled …) is permanent.
    pub fn classify(status: u16, body: &[u8]) -> Result<Accepted, CarrierError> {
        let a = serde_json::from_slice::<Answer>(body).ok();
        let code = a
            .as_ref()
            .and_then(|a| a.code.as_ref())
            .map(|c| c.to_string().trim_matches('"').to_string())
            .unwrap_or_else(|| format!("http-{status}"));
        let detail = a
            .as_ref()
            .and_then(|a| a.message.clone())
            .unwrap_or_default();
        match (status, a.and_then(|a| a.sid)) {
            (200..=299, Some(sid)) => Ok(Accepted::new(sid)),
            (429, _) => Err(CarrierError::transient(code, detail)),
            (500.., _) => Err(CarrierError::Transient {
                code,
                detail,
                maybe_sent: true,
            }),
            _ => Err(CarrierError::permanent(code, detail)),
        }
    }
}

#[async_trait]
impl Carrier for Twilio {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        if message.channel != Channel::Sms {
            return Err(CarrierError::Unsupported("twilio sends SMS only".into()));
        }
        let url = format!(
            "{}2010-04-01/Accounts/{}/Messages.json",
            self.config.endpoint, self.config.account_sid
        );
        let mut form = vec![
            ("To", message.to_e164()),
            ("Body", message.text.clone()),
            (
                "StatusCallback",
                self.callback_url(&message.idempotency_key),
            ),
        ];
        match &self.config.from {
            TwilioFrom::Number(n) => form.push(("From", n.clone())),
            TwilioFrom::MessagingService(s) => form.push(("MessagingServiceSid", s.clone())),
        }
        let req = self
            .client
            .inner()
            .post(url)
            .basic_auth(
                &self.config.account_sid,
                Some(self.config.auth_token.expose()),
            )
            .form(&form);
        self.client
            .exchange(
                req,
                self.config.timeout_secs,
                &self.name,
                &message.idempotency_key,
                Self::classify,
            )
            .await
    }
}
