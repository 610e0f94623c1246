//! Alibaba Cloud SMS: `SendSms` (API version 2017-05-25) signed with the
//! RPC signature (HMAC-SHA1) or V3 (`ACS3-HMAC-SHA256`). Every attempt is
//! signed afresh with a new `SignatureNonce` (Aliyun rejects a reused one).
//! The idempotency key travels as `OutId` and comes back in receipts.

use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};
use sms_core::clock::Clock;
use sms_core::random::{random_hex, RandomSource};

use crate::config::{AliyunConfig, AliyunSignature};
use crate::http::{host_header, template_for, HttpClient};
use crate::sign;

/// The API version of `SendSms`.
pub const VERSION: &str = "2017-05-25";

/// An Aliyun carrier.
#[derive(Debug)]
pub struct Aliyun {
    name: String,
    config: AliyunConfig,
    client: HttpClient,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    biz_id: Option<String>,
}

/// Aliyun codes that are worth retrying later.
const TRANSIENT: &[&str] = &[
    "isv.BUSINESS_LIMIT_CONTROL",
    "Throttling",
    "Throttling.User",
    "Throttling.Api",
    "ServiceUnavailable",
    "InternalError",
    "isp.SYSTEM_ERROR",
    "isp.GATEWAY_ERROR",
    "SignatureNonceUsed",
];

impl Aliyun {
    /// A carrier named `name`.
    pub fn new(
        name: impl Into<String>,
        config: AliyunConfig,
        client: HttpClient,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
    ) -> Self {
        Self {
            name: name.into(),
            config,
            client,
            clock,
            random,
        }
    }

    /// The business parameters of `SendSms` for `message`.
    fn business_params(
        &self,
        message: &CarrierMessage,
    ) -> Result<Vec<(String, String)>, CarrierError> {
        let t = template_for(message, &self.config.templates)?;
        let param: serde_json::Map<String, serde_json::Value> = t
            .params
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect();
        let to = message.to.strip_prefix("+86").unwrap_or(&message.to);
        Ok(vec![
            (
                "PhoneNumbers".into(),
                to.trim_start_matches('+').to_string(),
            ),
            ("SignName".into(), t.sign_name),
            ("TemplateCode".into(), t.template),
            (
                "TemplateParam".into(),
                serde_json::Value::Object(param).to_string(),
            ),
            ("OutId".into(), message.idempotency_key.clone()),
        ])
    }

    /// The business parameters of one `SendBatchSms` for `messages`, if
    /// they share one template (at most 100 numbers, the provider's limit).
    fn batch_params(&self, messages: &[CarrierMessage]) -> Option<Vec<(String, String)>> {
        if messages.len() < 2 || messages.len() > 100 {
            return None;
        }
        let mut template = None;
        let (mut phones, mut signs, mut params) = (Vec::new(), Vec::new(), Vec::new());
        for m in messages {
            let t = template_for(m, &self.config.templates).ok()?;
            if template.get_or_insert_with(|| t.template.clone()) != &t.template {
                return None;
            }
            let to = m.to.strip_prefix("+86").unwrap_or(&m.to);
            phones.push(to.trim_start_matches('+').to_string());
            signs.push(t.sign_name);
            let p: serde_json::Map<String, serde_json::Value> = t
                .params
                .into_iter()
                .map(|(k, v)| (k, serde_json::Value::String(v)))
                .collect();
            params.push(serde_json::Value::Object(p));
        }
        Some(vec![
            (
                "PhoneNumberJson".into(),
                serde_json::Value::from(phones).to_string(),
            ),
            (
                "SignNameJson".into(),
                serde_json::Value::from(signs).to_string(),
            ),
            ("TemplateCode".into(), template?),
            (
                "TemplateParamJson".into(),
                serde_json::Value::from(params).to_string(),
            ),
        ])
    }

    fn request(
        &self,
        action: &str,
        business: Vec<(String, String)>,
    ) -> Result<reqwest::RequestBuilder, CarrierError> {
        let url = reqwest::Url::parse(&self.config.endpoint)
            .map_err(|_| CarrierError::permanent("config", "bad endpoint"))?;
        let nonce = random_hex(self.random.as_ref(), 16);
        let now = self.clock.now();
        let secret = self.config.access_key_secret.expose();
        match self.config.signature {
            AliyunSignature::Rpc => {
                let mut params = business;
                for (k, v) in [
                    ("AccessKeyId", self.config.access_key_id.as_str()),
                    ("Action", action),
                    ("Format", "JSON"),
                    ("RegionId", "cn-hangzhou"),
                    ("SignatureMethod", "HMAC-SHA1"),
                    ("SignatureVersion", "1.0"),
                    ("Version", VERSION),
                ] {
                    params.push((k.into(), v.into()));
                }
                params.push(("SignatureNonce".into(), nonce));
                params.push((
                    "Timestamp".into(),
                    now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ));
                let signature = sign::aliyun_rpc("POST", &params, secret);
                params.push(("Signature".into(), signature));
                let body = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(params.iter())
                    .finish();
                Ok(self
                    .client
                    .inner()
                    .post(url)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body))
            }
            AliyunSignature::V3 => {
                let payload = sign::sha256_hex(b"");
                let headers = vec![
                    ("host".to_string(), host_header(&url)),
                    ("x-acs-action".to_string(), action.to_string()),
                    ("x-acs-content-sha256".to_string(), payload.clone()),
                    (
                        "x-acs-date".to_string(),
                        now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    ),
                    ("x-acs-signature-nonce".to_string(), nonce),
                    ("x-acs-version".to_string(), VERSION.to_string()),
                ];
                let (signed, sig) = sign::aliyun_v3(
                    &sign::AliyunV3Request {
                        method: "POST",
                        path: url.path(),
                        query: &business,
                        headers: &headers,
                        payload_sha256: &payload,
                    },
                    secret,
                );
                let mut url = url;
                url.set_query(Some(&sign::aliyun_canonical_query(&business)));
                let mut req = self.client.inner().post(url);
                for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
                    req = req.header(k, v);
                }
                Ok(req.header(
                    "authorization",
                    format!(
                        "ACS3-HMAC-SHA256 Credential={},SignedHeaders={signed},Signature={sig}",
                        self.config.access_key_id
                    ),
                ))
            }
        }
    }

    /// The outcome of an answer.
    pub fn classify(status: u16, body: &[u8]) -> Result<Accepted, CarrierError> {
        let Ok(a) = serde_json::from_slice::<Answer>(body) else {
            return Err(if status >= 500 || status == 429 {
                CarrierError::Transient {
                    code: format!("http-{status}"),
                    detail: "provider error".into(),
                    maybe_sent: status >= 500,
                }
            } else {
                CarrierError::permanent(format!("http-{status}"), "unreadable answer")
            });
        };
        match (a.code.as_str(), a.biz_id) {
            ("OK", Some(id)) => Ok(Accepted::new(id)),
            (c, _) if TRANSIENT.contains(&c) || status >= 500 => Err(CarrierError::Transient {
                code: a.code.clone(),
                detail: a.message,
                maybe_sent: false,
            }),
            _ => Err(CarrierError::permanent(a.code, a.message)),
        }
    }
}

#[async_trait]
impl Carrier for Aliyun {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let req = self.request("SendSms", self.business_params(message)?)?;
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

    /// Messages sharing one template go out in one `SendBatchSms` (each
    /// gets the batch's `BizId`; receipts tell recipients apart by
    /// number); any other set is sent one by one.
    async fn send_batch(&self, messages: &[CarrierMessage]) -> Vec<Result<Accepted, CarrierError>> {
        let Some(business) = self.batch_params(messages) else {
            let mut out = Vec::with_capacity(messages.len());
            for m in messages {
                out.push(self.send(m).await);
            }
            return out;
        };
        let outcome = match self.request("SendBatchSms", business) {
            Ok(req) => {
                self.client
                    .exchange(
                        req,
                        self.config.templates.timeout_secs,
                        &self.name,
                        &messages[0].idempotency_key,
                        Self::classify,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        vec![outcome; messages.len()]
    }
}
