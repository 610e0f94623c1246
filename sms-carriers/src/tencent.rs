//! Tencent Cloud SMS: `SendSms` (API version 2021-01-11) signed with
//! TC3-HMAC-SHA256 (scope service `sms` whatever the endpoint; signed
//! headers `content-type;host;x-tc-action`, values lowercased). The
//! idempotency key travels as `SessionContext`. Per-number results come in
//! `SendStatusSet[].Code` with HTTP 200.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};
use sms_core::clock::Clock;

use crate::config::TencentConfig;
use crate::http::{host_header, template_for, HttpClient};
use crate::sign;

/// The API version of `SendSms`.
pub const VERSION: &str = "2021-01-11";

/// A Tencent Cloud carrier.
#[derive(Debug)]
pub struct Tencent {
    name: String,
    config: TencentConfig,
    client: HttpClient,
    clock: Arc<dyn Clock>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Response")]
    response: Response,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Response {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    send_status_set: Vec<SendStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ApiError {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendStatus {
    #[serde(default)]
    serial_no: String,
    code: String,
    #[serde(default)]
    message: String,
}

/// Whether a Tencent error code is worth retrying later.
fn is_transient(code: &str) -> bool {
    code.starts_with("RequestLimitExceeded")
        || code.starts_with("InternalError")
        || code.starts_with("ResourceUnavailable")
        || code == "LimitExceeded.PhoneNumberThirtySecondLimit"
        || code == "LimitExceeded.PhoneNumberOneHourLimit"
}

impl Tencent {
    /// A carrier named `name`.
    pub fn new(
        name: impl Into<String>,
        config: TencentConfig,
        client: HttpClient,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name: name.into(),
            config,
            client,
            clock,
        }
    }

    fn body(&self, message: &CarrierMessage) -> Result<Vec<u8>, CarrierError> {
        let t = template_for(message, &self.config.templates)?;
        let values: Vec<String> = t.params.into_iter().map(|(_, v)| v).collect();
        Ok(json!({
            "PhoneNumberSet": [message.to_e164()],
            "SmsSdkAppId": self.config.sdk_app_id,
            "SignName": t.sign_name,
            "TemplateId": t.template,
            "TemplateParamSet": values,
            "SessionContext": message.idempotency_key,
        })
        .to_string()
        .into_bytes())
    }

    /// The outcome of an answer.
    pub fn classify(status: u16, body: &[u8]) -> Result<Accepted, CarrierError> {
        let parsed = serde_json::from_slice::<Envelope>(body)
            .ok()
            .filter(|_| status < 500);
        let Some(env) = parsed else {
            return Err(CarrierError::Transient {
                code: format!("http-{status}"),
                detail: "unreadable answer".into(),
                maybe_sent: status >= 500,
            });
        };
        if let Some(e) = env.response.error {
            return Err(if is_transient(&e.code) {
                CarrierError::transient(e.code, e.message)
            } else {
                CarrierError::permanent(e.code, e.message)
            });
        }
        match env.response.send_status_set.into_iter().next() {
            Some(s) if s.code == "Ok" => Ok(Accepted::new(s.serial_no)),
            Some(s) if is_transient(&s.code) => Err(CarrierError::transient(s.code, s.message)),
            Some(s) => Err(CarrierError::permanent(s.code, s.message)),
            None => Err(CarrierError::Transient {
                code: "empty".into(),
                detail: "no SendStatusSet".into(),
                maybe_sent: true,
            }),
        }
    }
}

#[async_trait]
impl Carrier for Tencent {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let body = self.body(message)?;
        let url = reqwest::Url::parse(&self.config.endpoint)
            .map_err(|_| CarrierError::permanent("config", "bad endpoint"))?;
        let host = host_header(&url);
        let timestamp = self.clock.unix();
        let content_type = "application/json; charset=utf-8";
        let auth = sign::tencent_tc3(
            &sign::Tc3Request {
                service: "sms",
                timestamp,
                headers: &[
                    ("content-type", content_type),
                    ("host", &host),
                    ("x-tc-action", "SendSms"),
                ],
                payload: &body,
            },
            &self.config.secret_id,
            self.config.secret_key.expose(),
        );
        let req = self
            .client
            .inner()
            .post(url)
            .header("authorization", auth)
            .header("content-type", content_type)
            .header("x-tc-action", "SendSms")
            .header("x-tc-timestamp", timestamp.to_string())
            .header("x-tc-version", VERSION)
            .header("x-tc-region", &self.config.region)
            .body(body);
        self.client
            .exchange(
                req,
                self.config.templates.timeout_secs,
                &self.name,
                &message.idempotency_key,
                Self::classify,
            )
            .await
    }
}
