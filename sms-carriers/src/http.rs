//! The one HTTPS client every HTTP provider shares: reqwest with rustls
//! (webpki roots), a connect timeout and a whole-request timeout per call.

use std::time::Duration;

use sms_core::carrier::{Accepted, CarrierError};

/// A provider's answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON for every provider here).
    pub body: Vec<u8>,
}

/// The shared client; cheap to clone.
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

impl HttpClient {
    /// A client with a 5-second connect timeout.
    pub fn new() -> Result<Self, CarrierError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("sms-platform/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CarrierError::transient("http-client", e.to_string()))?;
        Ok(Self { client })
    }

    /// Sends `req` (timeout `timeout_secs`) for carrier `carrier`'s message
    /// `key` and turns the answer into an outcome with `classify`; logs a
    /// refusal (the key and the provider's code, nothing else).
    pub async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
        timeout_secs: u64,
        carrier: &str,
        key: &str,
        classify: fn(u16, &[u8]) -> Result<Accepted, CarrierError>,
    ) -> Result<Accepted, CarrierError> {
        let answer = self
            .execute(req, Duration::from_secs(timeout_secs.max(1)))
            .await?;
        let outcome = classify(answer.status, &answer.body);
        if let Err(e) = &outcome {
            tracing::info!(carrier, key, error = %e, "provider refused");
        }
        outcome
    }

    /// The underlying reqwest client.
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `req` with `timeout` and reads the whole answer. A failure to
    /// connect is transient and not sent; a timeout or a broken answer is
    /// transient and maybe sent.
    pub async fn execute(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<HttpAnswer, CarrierError> {
        let classify = |e: reqwest::Error| {
            let code = if e.is_timeout() { "timeout" } else { "http-io" };
            let maybe_sent = !e.is_connect();
            CarrierError::Transient {
                code: code.into(),
                // Without the URL: errors name no host, header or body.
                detail: e.without_url().to_string(),
                maybe_sent,
            }
        };
        let resp = req.timeout(timeout).send().await.map_err(classify)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(classify)?.to_vec();
        Ok(HttpAnswer { status, body })
    }
}

/// A template provider's message: template, parameters by name (in
/// order) and sign name.
#[cfg(any(feature = "aliyun", feature = "tencent"))]
#[derive(Debug, Clone)]
pub struct TemplateMessage {
    /// The provider template.
    pub template: String,
    /// Its parameters by name, in order.
    pub params: Vec<(String, String)>,
    /// `SignName`: a task's own signature, else the carrier's.
    pub sign_name: String,
}

/// The template message of `message`: a code uses `code_template` with
/// `code`; a task message the template mapped from its sendapi `temp_id`,
/// else the carrier cannot send it ([`CarrierError::Unsupported`]), nor
/// anything but SMS.
#[cfg(any(feature = "aliyun", feature = "tencent"))]
pub fn template_for(
    message: &sms_core::carrier::CarrierMessage,
    settings: &crate::config::TemplateSettings,
) -> Result<TemplateMessage, CarrierError> {
    use sms_core::carrier::MessageKind;
    if message.channel != sms_core::sender::Channel::Sms {
        return Err(CarrierError::Unsupported(
            "a template carrier sends SMS only".into(),
        ));
    }
    let (template, params) = match &message.kind {
        MessageKind::Code { code, .. } => (
            settings.code_template.clone(),
            vec![("code".to_string(), code.clone())],
        ),
        MessageKind::Task {
            template_id: Some(id),
            params,
            ..
        } => match settings.task_templates.get(&id.to_string()) {
            Some(t) => (t.clone(), params.clone()),
            None => {
                return Err(CarrierError::Unsupported(format!(
                    "no provider template for temp_id {id}"
                )))
            }
        },
        MessageKind::Task { .. } => {
            return Err(CarrierError::Unsupported(
                "a template carrier needs the task's template".into(),
            ))
        }
    };
    let sign_name = match &message.kind {
        MessageKind::Task {
            signature: Some(s), ..
        } => s.clone(),
        _ => settings.sign_name.clone(),
    };
    Ok(TemplateMessage {
        template,
        params,
        sign_name,
    })
}

/// `host[:port]` of `url` as a client sends it in `Host`.
pub fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
