//! Assembling and running the platform.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sms_core::clock::SystemClock;
use sms_core::codes::CodePolicy;
use sms_core::gateway::MessageGateway;
use sms_core::password::Argon2Hasher;
use sms_core::pool_service::PoolPolicy;
use sms_core::random::{OsRandom, RandomSource};
use sms_core::sender::CodeSender;
use sms_core::Core;
use sms_http_hyper::{client_addr, HttpConfig, ServerConfig, SmsService, TrustedProxies};
use sms_store_sled::SledStore;
use sms_ws_tungstenite::{HubWs, WsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::blocking::BlockingHasher;
use crate::carriers::{Carriers, ReceiptEvent};
use crate::config::PlatformArgs;
use crate::outbox::{OutboxGateway, OutboxSender};
use crate::router::PlatformService;
use crate::workers::BackgroundWorkers;

/// Why the platform could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A flag has a bad value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory or outbox could not be opened.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] sms_core::StoreError),
    /// The core refused the setup (e.g. a root password outside the rules).
    #[error("core: {0}")]
    Core(#[from] sms_core::CoreError),
}

/// The platform, configured but not yet listening.
#[derive(Debug)]
pub struct Platform {
    args: PlatformArgs,
    gateway: Option<Arc<dyn MessageGateway>>,
}

/// A running platform.
#[derive(Debug)]
pub struct RunningPlatform {
    /// The address it listens on.
    pub addr: SocketAddr,
    core: Core,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningPlatform {
    /// The core the server runs on (for embedders' own tools and tests).
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// Graceful shutdown: stop accepting, let open connections finish.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Loads the code-hashing secret from `dir/code-secret`, creating it on first
/// start, so that codes survive a restart.
fn code_secret(dir: &Path, rng: &dyn RandomSource) -> Result<[u8; 32], PlatformError> {
    let path = dir.join("code-secret");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key)
            .map_err(|_| PlatformError::Config(format!("{} is corrupt", path.display())))?;
        return Ok(key);
    }
    let mut key = [0u8; 32];
    rng.fill(&mut key);
    let tmp = dir.join("code-secret.tmp");
    std::fs::write(&tmp, hex::encode(key))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(key)
}

impl Platform {
    /// A platform with these settings.
    pub fn new(args: PlatformArgs) -> Self {
        Self {
            args,
            gateway: None,
        }
    }

    /// Sends tasks through `gateway` instead of the outbox (a real carrier,
    /// or a test double).
    pub fn with_gateway(mut self, gateway: Arc<dyn MessageGateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// Opens the store, sets up root, binds the listener and starts serving.
    pub async fn start(self) -> Result<RunningPlatform, PlatformError> {
        let a = self.args;
        let custom_gateway = self.gateway;
        if let Some(code) = &a.dev_code {
            if code.is_empty() || code.len() > 8 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PlatformError::Config(
                    "--dev-code must be 1 to 8 digits".into(),
                ));
            }
            tracing::warn!(
                "!!! --dev-code is set: EVERY verification code is {code}. Development only; never run this in production. !!!"
            );
        }
        let mut nets = Vec::new();
        for p in &a.trusted_proxies {
            nets.push(client_addr::parse_net(p.trim()).map_err(PlatformError::Config)?);
        }
        std::fs::create_dir_all(&a.data)?;
        let rng: Arc<dyn RandomSource> = Arc::new(OsRandom);
        let secret = code_secret(&a.data, rng.as_ref())?;
        let store = Arc::new(SledStore::open(a.data.join("db"))?);
        let outbox = Arc::new(match &a.outbox {
            Some(path) => OutboxSender::file(path).await?,
            None => OutboxSender::stdout(),
        });
        let carriers = match &a.carriers {
            Some(path) => {
                let queue = Arc::new(sms_store_sled::delivery::SledDeliveryQueue::open(
                    a.data.join("delivery"),
                )?);
                let (c, receipts) = Carriers::load(
                    path,
                    Arc::new(SystemClock),
                    rng.clone(),
                    outbox.clone(),
                    queue,
                )
                .await
                .map_err(|e| PlatformError::Config(e.to_string()))?;
                tokio::spawn(log_receipts(receipts));
                Some(c)
            }
            None => None,
        };
        let sender: Arc<dyn CodeSender> = match &carriers {
            Some(c) => c.sender(),
            None => outbox.clone(),
        };
        let default_gateway: Arc<dyn MessageGateway> = match &carriers {
            Some(c) => c.gateway(),
            None => Arc::new(OutboxGateway::new(outbox)),
        };
        let hasher = BlockingHasher::new(Argon2Hasher::with_params(
            rng.clone(),
            a.argon2_memory_kib,
            a.argon2_passes,
        ));
        let core = Core::builder(store.stores(), sender)
            .random(rng)
            .password_hasher(Arc::new(hasher))
            .code_secret(secret)
            .gateway(custom_gateway.unwrap_or(default_gateway))
            .pool_policy(PoolPolicy {
                lease_secs: a.lease_secs.max(1),
                hold_grace_secs: a.hold_grace_secs.max(0),
                ..PoolPolicy::default()
            })
            .code_policy(CodePolicy {
                fixed_code: a.dev_code.clone(),
                ..CodePolicy::default()
            })
            .build();
        match &a.root_password {
            Some(pw) => {
                core.accounts.ensure_root(pw).await?;
                tracing::info!("root account ready");
            }
            None => tracing::warn!("no --root-password: the root account is not set up"),
        }
        let http = SmsService::new(
            core.clone(),
            HttpConfig {
                body_limit: a.body_limit,
                trusted_proxies: TrustedProxies::new(nets),
                body_timeout: Duration::from_secs(a.body_timeout_secs.max(1)),
                ..HttpConfig::default()
            },
        );
        let ws = HubWs::new(core.clone(), WsConfig::default());
        let mut service = PlatformService::new(http, ws.clone());
        if let Some(c) = carriers {
            service = service.with_carriers(c);
        }
        let listener = TcpListener::bind(a.listen).await?;
        let addr = listener.local_addr()?;
        let server_config = ServerConfig {
            header_read_timeout: Duration::from_secs(a.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
            max_connections: a.max_connections,
            ..ServerConfig::default()
        };
        let (tx, rx) = oneshot::channel::<()>();
        let workers = BackgroundWorkers::spawn(core.clone());
        let task = tokio::spawn(async move {
            let ws_for_stop = ws.clone();
            sms_http_hyper::serve(listener, service, server_config, async move {
                let _ = rx.await;
                // WebSocket sessions are not tracked by hyper's graceful
                // shutdown: tell them (PushKickout state 1) and close them.
                ws_for_stop.shutdown();
            })
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.closed()).await;
            workers.stop().await;
        });
        tracing::info!(%addr, "platform listening");
        Ok(RunningPlatform {
            addr,
            core,
            shutdown: Some(tx),
            task,
        })
    }
}

/// Receipts are logged; applying them to send-task recipients (statuses,
/// refunds) is the delivery queue's work, not done yet.
async fn log_receipts(mut rx: tokio::sync::mpsc::UnboundedReceiver<ReceiptEvent>) {
    while let Some((carrier, r)) = rx.recv().await {
        tracing::info!(%carrier, id = %r.provider_id, key = ?r.idempotency_key, status = r.status.as_str(), code = %r.carrier_code, "delivery receipt");
    }
}
