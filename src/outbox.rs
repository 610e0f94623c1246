//! The platform's default sender (decision G9): one JSON line per message,
//! to stdout or appended to a file.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;
use sms_core::gateway::{DeliveryError, GatewayMessage, MessageGateway};
use sms_core::sender::{Channel, CodeSender, OutboundMessage, SendError};
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Where outbox lines go.
#[derive(Debug)]
enum Target {
    Stdout,
    File(PathBuf, Box<OutboxFile>),
}

/// An outbox file whose lines share their disk syncs (group commit).
#[derive(Debug)]
struct OutboxFile {
    /// Appends; holds the count of lines written (to the OS) so far.
    append: Mutex<(tokio::fs::File, u64)>,
    /// Syncs, one at a time, through a second handle of the same file;
    /// holds the count of lines known to be on disk.
    sync: Mutex<(tokio::fs::File, u64)>,
}

impl OutboxFile {
    /// Appends `line` and returns once it is on disk. Writers waiting
    /// together share one `fdatasync`: the sync that runs after a line was
    /// written covers every line written before it started.
    async fn append(&self, line: &[u8]) -> std::io::Result<()> {
        let ticket = {
            let mut a = self.append.lock().await;
            a.0.write_all(line).await?;
            a.0.flush().await?;
            a.1 += 1;
            a.1
        };
        let mut s = self.sync.lock().await;
        if s.1 >= ticket {
            return Ok(());
        }
        // Every line counted now was written before this sync starts.
        let covered = self.append.lock().await.1;
        s.0.sync_data().await?;
        s.1 = covered;
        Ok(())
    }
}

/// Writes every message as a JSON line:
/// `{"channel","to","text","code","purpose","at"}`.
#[derive(Debug)]
pub struct OutboxSender {
    target: Target,
}

impl OutboxSender {
    /// Lines to stdout.
    pub fn stdout() -> Self {
        Self {
            target: Target::Stdout,
        }
    }

    /// Lines appended to `path` (created if missing); each line is on disk
    /// before the send is acknowledged, and concurrent sends share their
    /// syncs.
    pub async fn file(path: &Path) -> std::io::Result<Self> {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let syncer = f.try_clone().await?;
        Ok(Self {
            target: Target::File(
                path.to_owned(),
                Box::new(OutboxFile {
                    append: Mutex::new((f, 0)),
                    sync: Mutex::new((syncer, 0)),
                }),
            ),
        })
    }

    /// The JSON line of a message (without the newline).
    pub fn line(m: &OutboundMessage) -> String {
        json!({
            "channel": m.channel,
            "to": m.to,
            "text": m.text,
            "code": m.code,
            "purpose": m.purpose,
            "at": m.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
        .to_string()
    }
}

impl OutboxSender {
    async fn write_line(&self, mut line: String) -> Result<(), SendError> {
        line.push('\n');
        match &self.target {
            Target::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(line.as_bytes())
                    .await
                    .map_err(|e| SendError(e.to_string()))?;
                out.flush().await.map_err(|e| SendError(e.to_string()))
            }
            Target::File(path, f) => f
                .append(line.as_bytes())
                .await
                .map_err(|e| SendError(format!("{}: {e}", path.display()))),
        }
    }
}

#[async_trait]
impl CodeSender for OutboxSender {
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError> {
        self.write_line(Self::line(message)).await
    }
}

/// The platform's carrier for send tasks: each message becomes an outbox
/// line (channel `sms`, no code or purpose) with its idempotency key as
/// `id`, so a consumer of the outbox can drop a repeat.
#[derive(Debug)]
pub struct OutboxGateway {
    outbox: std::sync::Arc<OutboxSender>,
}

impl OutboxGateway {
    /// A gateway writing to `outbox`.
    pub fn new(outbox: std::sync::Arc<OutboxSender>) -> Self {
        Self { outbox }
    }
}

#[async_trait]
impl MessageGateway for OutboxGateway {
    async fn deliver(&self, m: &GatewayMessage) -> Result<String, DeliveryError> {
        let msg = OutboundMessage {
            channel: Channel::Sms,
            to: m.to.to_string(),
            text: m.text.clone(),
            code: None,
            purpose: None,
            at: written_at(),
        };
        let mut v: serde_json::Value = serde_json::from_str(&OutboxSender::line(&msg))
            .map_err(|e| DeliveryError::Unavailable(e.to_string()))?;
        v["id"] = json!(m.idempotency_key);
        self.outbox
            .write_line(v.to_string())
            .await
            .map_err(|e| DeliveryError::Unavailable(e.0))?;
        Ok(m.idempotency_key.clone())
    }
}

/// The wall-clock time a gateway line is written (the carrier's side of the
/// world, outside the core's injected clock).
#[allow(clippy::disallowed_methods, reason = "the outbox is the real world")]
fn written_at() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
