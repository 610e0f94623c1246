//! Email through SMTP with lettre: STARTTLS (587), TLS (465) or, for a
//! loopback relay only, plain. Codes for hub password recovery and email
//! binding.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage};
use sms_core::sender::Channel;

use crate::config::{SmtpConfig, SmtpTls};

/// An SMTP carrier.
pub struct Smtp {
    name: String,
    from: lettre::message::Mailbox,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp")
            .field("name", &self.name)
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl Smtp {
    /// A carrier named `name`; fails on a bad `from` or relay name.
    pub fn new(name: impl Into<String>, config: &SmtpConfig) -> Result<Self, String> {
        let from = config
            .from
            .parse()
            .map_err(|_| "`from` is not a mailbox".to_string())?;
        let builder = match config.tls {
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&config.host)
                .map_err(|e| e.to_string())?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&config.host)
                .map_err(|e| e.to_string())?,
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host),
        };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_secs(config.timeout_secs.max(1))));
        if let (Some(u), Some(p)) = (&config.username, &config.password) {
            builder = builder.credentials(Credentials::new(u.clone(), p.expose().to_string()));
        }
        Ok(Self {
            name: name.into(),
            from,
            transport: builder.build(),
        })
    }
}

#[async_trait]
impl Carrier for Smtp {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, message: &CarrierMessage) -> Result<Accepted, CarrierError> {
        if message.channel != Channel::Email {
            return Err(CarrierError::Unsupported("smtp sends email only".into()));
        }
        let to = message
            .to
            .parse()
            .map_err(|_| CarrierError::permanent("bad-address", "recipient is not a mailbox"))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Verification code")
            .header(ContentType::TEXT_PLAIN)
            .body(message.text.clone())
            .map_err(|e| CarrierError::permanent("build", e.to_string()))?;
        match self.transport.send(email).await {
            Ok(resp) => Ok(Accepted::new(
                resp.message().next().unwrap_or("250").to_string(),
            )),
            Err(e) if e.is_permanent() => Err(CarrierError::permanent(
                e.status()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "5xx".into()),
                "relay refused the message",
            )),
            Err(e) => Err(CarrierError::Transient {
                code: e
                    .status()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "smtp-io".into()),
                detail: "relay unavailable".into(),
                maybe_sent: e.is_timeout(),
            }),
        }
    }
}
