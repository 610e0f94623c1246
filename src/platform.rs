//! Assembling and running the platform.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sms_core::accounts::AccountPolicy;
use sms_core::codes::CodePolicy;
use sms_core::gateway::MessageGateway;
use sms_core::password::Argon2Hasher;
use sms_core::pool_service::PoolPolicy;
use sms_core::random::{OsRandom, RandomSource};
use sms_core::sender::CodeSender;
use sms_core::Core;
use sms_http_hyper::{client_addr, HttpConfig, PoolAuth, ServerConfig, SmsService, TrustedProxies};
use sms_store_sled::SledStore;
use sms_ws_tungstenite::{HubWs, WsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::blocking::BlockingHasher;
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

/// The pool credentials of the flags (tokens never reach the logs).
fn pool_auth(a: &PlatformArgs) -> Result<PoolAuth, PlatformError> {
    let mut auth = PoolAuth::default();
    let bad = |what: &str, e: String| PlatformError::Config(format!("{what}: {e}"));
    for t in &a.device_tokens {
        auth.add_device(t).map_err(|e| bad("--device-token", e))?;
    }
    for t in &a.consumer_tokens {
        auth.add_consumer(t)
            .map_err(|e| bad("--consumer-token", e))?;
    }
    for t in &a.admin_tokens {
        auth.add_admin(t).map_err(|e| bad("--admin-token", e))?;
    }
    if let Some(path) = &a.pool_token_file {
        let text = std::fs::read_to_string(path)?;
        auth.add_file(&text)
            .map_err(|e| bad(&path.display().to_string(), e))?;
    }
    if auth.is_open() && !a.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %a.listen,
            "the pool routes (/phones, /vcodes, /mobiles, /sends, /setsize) are open to anyone who can reach this address: set --device-token and --consumer-token"
        );
    }
    Ok(auth)
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
        let pool_auth = pool_auth(&a)?;
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
        let sender: Arc<dyn CodeSender> = outbox.clone();
        let hasher = BlockingHasher::new(Argon2Hasher::with_params(
            rng.clone(),
            a.argon2_memory_kib,
            a.argon2_passes,
        ));
        let core = Core::builder(store.stores(), sender)
            .random(rng)
            .password_hasher(Arc::new(hasher))
            .code_secret(secret)
            .gateway(custom_gateway.unwrap_or_else(|| Arc::new(OutboxGateway::new(outbox))))
            .pool_policy(PoolPolicy {
                lease_secs: a.lease_secs.max(1),
                hold_grace_secs: a.hold_grace_secs.max(0),
                retention_secs: a.retention_hours.saturating_mul(3_600),
                ..PoolPolicy::default()
            })
            .code_policy(CodePolicy {
                fixed_code: a.dev_code.clone(),
                ipv6_prefix_len: a.ipv6_prefix_len,
                ..CodePolicy::default()
            })
            .account_policy(AccountPolicy {
                ipv6_prefix_len: a.ipv6_prefix_len,
                ..AccountPolicy::default()
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
                pool_auth,
                ..HttpConfig::default()
            },
        );
        let ws = HubWs::new(core.clone(), WsConfig::default());
        let service = PlatformService::new(http, ws.clone());
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
