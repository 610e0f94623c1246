//! The one HTTPS client every HTTP provider shares: reqwest with rustls
//! (webpki roots), a connect timeout and a whole-request timeout per call.

use std::time::Duration;

use sms_core::carrier::CarrierError;

/// A provider's answer: status and body.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    /// HTTP status.
    pub status: u16,
    /// The body (JSON for every provider here).
    pub body: Vec<u8>,
}

impl HttpAnswer {
    /// A 5xx answer as a transient error.
    pub fn server_error(&self) -> Option<CarrierError> {
        (self.status >= 500).then(|| CarrierError::Transient {
            code: format!("http-{}", self.status),
            detail: "provider server error".into(),
            maybe_sent: true,
        })
    }
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

/// The provider template and its parameters (by name, in order) for a
/// message: a code uses `code_template` with `code`; a task message the
/// template mapped from its sendapi `temp_id`, else the carrier cannot send
/// it ([`CarrierError::Unsupported`]).
#[cfg(any(feature = "aliyun", feature = "tencent"))]
pub fn template_for(
    message: &sms_core::carrier::CarrierMessage,
    code_template: &str,
    task_templates: &std::collections::BTreeMap<String, String>,
) -> Result<(String, Vec<(String, String)>), CarrierError> {
    use sms_core::carrier::MessageKind;
    match &message.kind {
        MessageKind::Code { code, .. } => Ok((
            code_template.to_string(),
            vec![("code".to_string(), code.clone())],
        )),
        MessageKind::Task {
            template_id: Some(id),
            params,
            ..
        } => match task_templates.get(&id.to_string()) {
            Some(t) => Ok((t.clone(), params.clone())),
            None => Err(CarrierError::Unsupported(format!(
                "no provider template for temp_id {id}"
            ))),
        },
        MessageKind::Task { .. } => Err(CarrierError::Unsupported(
            "a template carrier needs the task's template".into(),
        )),
    }
}

/// `host[:port]` of `url` as a client sends it in `Host`.
pub fn host_header(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
