//! The platform's default sender (decision G9): one JSON line per message,
//! to stdout or appended to a file.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde_json::json;
use sms_core::carrier::{Accepted, Carrier, CarrierError, CarrierMessage, MessageKind};
use sms_core::gateway::{DeliveryError, GatewayMessage, MessageGateway};
use sms_core::sender::{Channel, CodeSender, OutboundMessage, SendError};
use tokio::io::AsyncWriteExt;

/// Where outbox lines go.
#[derive(Debug)]
enum Target {
    Stdout,
    File(PathBuf, Box<OutboxFile>),
}

/// A line to append and whom to tell once it is on disk.
type Append = (Vec<u8>, tokio::sync::oneshot::Sender<std::io::Result<()>>);

/// An outbox file whose lines share their disk syncs (group commit): one
/// thread appends every queued line with one write, syncs once, then
/// answers all of them. The thread ends when the sender is dropped.
#[derive(Debug)]
struct OutboxFile {
    queue: std::sync::mpsc::Sender<Append>,
}

/// Most lines appended before one sync.
const MAX_BATCH: usize = 1_024;

impl OutboxFile {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path)?;
        let (queue, lines) = std::sync::mpsc::channel::<Append>();
        std::thread::Builder::new()
            .name("sms-outbox".into())
            .spawn(move || {
                use std::io::Write;
                while let Ok(first) = lines.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match lines.try_recv() {
                            Ok(next) => batch.push(next),
                            Err(_) => break,
                        }
                    }
                    let bytes: Vec<u8> =
                        batch.iter().flat_map(|(l, _)| l.iter().copied()).collect();
                    let result = file.write_all(&bytes).and_then(|()| file.sync_data());
                    for (_, reply) in batch {
                        let _ = reply.send(match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        });
                    }
                }
            })?;
        Ok(Self { queue })
    }

    /// Appends `line` and returns once it is on disk.
    async fn append(&self, line: Vec<u8>) -> std::io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let gone = || std::io::Error::other("the outbox writer is gone");
        self.queue.send((line, tx)).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
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

    /// Lines appended to `path` (created if missing, readable by its owner
    /// only: mode 0600 on Unix, since it holds codes); each line is on disk
    /// before the send is acknowledged, and concurrent sends share their
    /// syncs.
    pub async fn file(path: &Path) -> std::io::Result<Self> {
        let path = path.to_owned();
        let file = tokio::task::spawn_blocking({
            let path = path.clone();
            move || OutboxFile::open(&path)
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Self {
            target: Target::File(path, Box::new(file)),
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
                .append(line.into_bytes())
                .await
                .map_err(|e| SendError(format!("{}: {e}", path.display()))),
        }
    }
}

#[async_trait]
impl CodeSender for OutboxSender {
    async fn send(&self, message: &OutboundMessage) -> Result<(), SendError> {
        // Without a carriers file the outbox is the carrier: counted as
        // `carrier="outbox"`.
        let start = std::time::Instant::now();
        let r = self.write_line(Self::line(message)).await;
        let outcome = if r.is_ok() { "accepted" } else { "transient" };
        sms_core::metrics::carrier_offered("outbox", outcome, start.elapsed());
        r
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
        let start = std::time::Instant::now();
        let r = self.outbox.write_line(v.to_string()).await;
        let outcome = if r.is_ok() { "accepted" } else { "transient" };
        sms_core::metrics::carrier_offered("outbox", outcome, start.elapsed());
        r.map_err(|e| DeliveryError::Unavailable(e.0))?;
        Ok(m.idempotency_key.clone())
    }
}

/// The wall-clock time a gateway line is written (the carrier's side of the
/// world, outside the core's injected clock).
#[allow(clippy::disallowed_methods, reason = "the outbox is the real world")]
fn written_at() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

/// The outbox as a [`Carrier`] (carriers.md C1, `kind = "outbox"`): code
/// messages become the G9 line, task messages the line with `id`, so the
/// outbox is one carrier among the others of a route.
#[derive(Debug)]
pub struct OutboxCarrier {
    name: String,
    outbox: std::sync::Arc<OutboxSender>,
}

impl OutboxCarrier {
    /// A carrier named `name` writing to `outbox`.
    pub fn new(name: impl Into<String>, outbox: std::sync::Arc<OutboxSender>) -> Self {
        Self {
            name: name.into(),
            outbox,
        }
    }
}

#[async_trait]
impl Carrier for OutboxCarrier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, m: &CarrierMessage) -> Result<Accepted, CarrierError> {
        let (code, purpose) = match &m.kind {
            MessageKind::Code { code, purpose } => (Some(code.clone()), *purpose),
            MessageKind::Task { .. } => (None, None),
        };
        let msg = OutboundMessage {
            channel: m.channel,
            to: m.to.clone(),
            text: m.text.clone(),
            code,
            purpose,
            at: written_at(),
        };
        let mut v: serde_json::Value = serde_json::from_str(&OutboxSender::line(&msg))
            .map_err(|e| CarrierError::transient("outbox", e.to_string()))?;
        if msg.code.is_none() {
            v["id"] = json!(m.idempotency_key);
        }
        self.outbox
            .write_line(v.to_string())
            .await
            .map_err(|e| CarrierError::transient("outbox", e.0))?;
        Ok(Accepted::new(m.idempotency_key.clone()))
    }
}
