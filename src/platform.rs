//! Assembling and running the platform.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sms_core::accounts::AccountPolicy;
use sms_core::clock::SystemClock;
use sms_core::codes::CodePolicy;
use sms_core::gateway::MessageGateway;
use sms_core::messages::CodeMessages;
use sms_core::password::Argon2Hasher;
use sms_core::pool_service::PoolPolicy;
use sms_core::random::{OsRandom, RandomSource};
use sms_core::sender::CodeSender;
use sms_core::sending::ReceiptOutcome;
use sms_core::store::Stores;
use sms_core::Core;
use sms_http_hyper::{
    client_addr, ClientIpLayer, HttpConfig, ObserveLayer, PoolAuth, ServerConfig, SmsService,
    TrustedProxies,
};
use sms_store_postgres::{PgEventHub, PgOptions, PgStore};
use sms_store_sled::SledStore;
use sms_ws_tungstenite::{HubWs, WsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::carriers::{Carriers, ReceiptEvent};
use crate::config::PlatformArgs;
use crate::health::Health;
use crate::outbox::{OutboxGateway, OutboxSender};
use crate::router::PlatformService;
use crate::secrets::{load_code_secret, SecretError, SecretSources};
use crate::workers::BackgroundWorkers;

/// Why the platform could not start. Each message names the path or
/// address involved and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    /// A flag has a bad value.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The data directory (or a file in it) could not be used.
    #[error("cannot use data directory {path}: {source}; pass a writable directory with --data (env SMS_DATA)")]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// Another platform process holds the data directory.
    #[error("data directory {path} is in use by another platform process{holder}; stop that process, or give this one its own --data (env SMS_DATA)")]
    DataDirInUse {
        /// The directory.
        path: PathBuf,
        /// ` (pid N)` when the holder wrote its process id.
        holder: String,
    },
    /// The store in the data directory could not be opened.
    #[error("cannot open the store in {path}: {source}")]
    Store {
        /// The store's directory.
        path: PathBuf,
        /// The failure.
        source: sms_core::StoreError,
    },
    /// The outbox file could not be opened.
    #[error("cannot open the outbox file {path}: {source}; pass a writable file with --outbox (env SMS_OUTBOX), or none for stdout")]
    Outbox {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The listen address could not be resolved or bound.
    #[error("cannot listen on {addr}: {source}; is another server using it? choose another with --listen (env SMS_LISTEN)")]
    Listen {
        /// The address as given.
        addr: String,
        /// The failure.
        source: std::io::Error,
    },
    /// The code secret could not be loaded.
    #[error("{0}")]
    Secret(#[from] crate::secrets::SecretError),
    /// The core could not be assembled.
    #[error("core: {0}")]
    Build(#[from] sms_core::core::BuildError),
    /// The core refused the setup (e.g. a root password outside the rules).
    #[error("core: {0}")]
    Core(#[from] sms_core::CoreError),
    /// The PostgreSQL store could not be reached or set up.
    #[error("cannot use the PostgreSQL store {url}: {source}; check --store (env SMS_STORE) and that the server is reachable")]
    Database {
        /// The URL, any password replaced by `***`.
        url: String,
        /// The failure.
        source: sms_core::StoreError,
    },
    /// The store failed while setting up (e.g. creating root).
    #[error("store: {0}")]
    StoreOp(#[from] sms_core::StoreError),
}

/// An exclusive lock on a data directory (`DIR/LOCK`, an OS file lock that
/// the kernel drops when the process dies, `kill -9` included), so a second
/// platform on the same directory is refused at once instead of waiting on
/// the store's own lock.
#[derive(Debug)]
struct DataDirLock {
    _file: std::fs::File,
}

impl DataDirLock {
    fn acquire(dir: &Path) -> Result<Option<Self>, PlatformError> {
        use std::io::{Read, Seek, Write};
        let path = dir.join("LOCK");
        let data_err = |source| PlatformError::DataDir {
            path: path.clone(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(data_err)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(data_err)?;
                file.rewind().map_err(data_err)?;
                write!(file, "{}", std::process::id()).map_err(data_err)?;
                Ok(Some(Self { _file: file }))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = text.trim().parse::<u32>().ok();
                if pid == Some(std::process::id()) {
                    // This process restarts a platform it still holds (an
                    // embedder's or a test's): the store waits for its own
                    // release.
                    return Ok(None);
                }
                Err(PlatformError::DataDirInUse {
                    path: dir.to_owned(),
                    holder: pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                })
            }
            Err(std::fs::TryLockError::Error(e)) => Err(data_err(e)),
        }
    }
}

/// The platform, configured but not yet listening.
#[derive(Debug)]
pub struct Platform {
    args: PlatformArgs,
    gateway: Option<Arc<dyn MessageGateway>>,
    stores: Option<Stores>,
}

/// A running platform.
#[derive(Debug)]
pub struct RunningPlatform {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The address of `--metrics-listen`, when set (then `/metrics` is
    /// served there only).
    pub metrics_addr: Option<SocketAddr>,
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
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(&path.display().to_string(), e.to_string()))?;
        auth.add_file(&text)
            .map_err(|e| bad(&path.display().to_string(), e))?;
    }
    Ok(auth)
}

impl Platform {
    /// A platform with these settings.
    pub fn new(args: PlatformArgs) -> Self {
        Self {
            args,
            gateway: None,
            stores: None,
        }
    }

    /// Serves from `stores` instead of the sled database in the data
    /// directory (the code-hashing secret still lives there): e.g. the
    /// in-memory store, to measure what durability costs.
    pub fn with_stores(mut self, stores: Stores) -> Self {
        self.stores = Some(stores);
        self
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
        let custom_stores = self.stores;
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
        let pool_open = pool_auth.is_open();
        let mut nets = Vec::new();
        for p in &a.trusted_proxies {
            nets.push(client_addr::parse_net(p.trim()).map_err(PlatformError::Config)?);
        }
        let rng: Arc<dyn RandomSource> = Arc::new(OsRandom);
        // The Prometheus recorder behind the library crates' metrics
        // (process-wide: installed by the first platform of the process).
        let _ = crate::metrics::handle();
        let postgres = match &a.store {
            Some(url) => Some(open_postgres(&a, url, rng.as_ref()).await?),
            None => None,
        };
        let (secret, dir_lock, stores) = match &postgres {
            Some(pg) => {
                let stores = custom_stores.unwrap_or_else(|| Arc::new(pg.store.clone()).stores());
                (pg.secret, None, stores)
            }
            None => {
                std::fs::create_dir_all(&a.data).map_err(|source| PlatformError::DataDir {
                    path: a.data.clone(),
                    source,
                })?;
                let dir_lock = DataDirLock::acquire(&a.data)?;
                let secret = load_code_secret(
                    &SecretSources {
                        value: a.code_secret.clone(),
                        file: a.code_secret_file.clone(),
                        generated_file: Some(a.data.join("code-secret")),
                    },
                    rng.as_ref(),
                )?;
                let stores = match custom_stores {
                    Some(s) => s,
                    None => {
                        let db_path = a.data.join("db");
                        Arc::new(SledStore::open(&db_path).map_err(|source| {
                            PlatformError::Store {
                                path: db_path.clone(),
                                source,
                            }
                        })?)
                        .stores()
                    }
                };
                (secret, Some(dir_lock), stores)
            }
        };
        // Every store call timed, every ledger movement counted.
        let stores = stores.metered();
        let outbox = Arc::new(match &a.outbox {
            Some(path) => {
                OutboxSender::file(path)
                    .await
                    .map_err(|source| PlatformError::Outbox {
                        path: path.clone(),
                        source,
                    })?
            }
            None => OutboxSender::stdout(),
        });
        let mut receipts = None;
        let carriers = match &a.carriers {
            Some(path) => {
                let queue: Arc<dyn sms_core::delivery::DeliveryQueue> = match &postgres {
                    Some(pg) => {
                        Arc::new(sms_store_postgres::PgDeliveryQueue::new(pg.store.clone()))
                    }
                    None => Arc::new(sms_store_sled::delivery::SledDeliveryQueue::open(
                        a.data.join("delivery"),
                    )?),
                };
                let (c, rx) = Carriers::load(
                    path,
                    Arc::new(SystemClock),
                    rng.clone(),
                    outbox.clone(),
                    queue,
                )
                .await
                .map_err(|e| PlatformError::Config(e.to_string()))?;
                receipts = Some(rx);
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
        // argon2id runs on its own threads, never on the async workers.
        let hasher = Argon2Hasher::with_params(rng.clone(), a.argon2_memory_kib, a.argon2_passes);
        let mut builder = Core::builder(stores, sender);
        if let Some(pg) = &postgres {
            builder = builder.events(Arc::new(pg.events.clone()));
        }
        let core = builder
            .random(rng)
            .password_hasher(Arc::new(hasher))
            .code_secret(secret)
            .gateway(custom_gateway.unwrap_or(default_gateway))
            .pool_policy(PoolPolicy {
                lease_secs: a.lease_secs.max(1),
                hold_grace_secs: a.hold_grace_secs.max(0),
                retention_secs: a.retention_hours.saturating_mul(3_600),
                ..PoolPolicy::default()
            })
            .code_policy(CodePolicy {
                fixed_code: a.dev_code.clone(),
                ipv6_prefix_len: a.ipv6_prefix_len,
                messages: CodeMessages::for_locale(&a.code_locale).ok_or_else(|| {
                    PlatformError::Config(format!(
                        "--code-locale {:?}: the shipped locales are zh-CN and en-US",
                        a.code_locale
                    ))
                })?,
                ..CodePolicy::default()
            })
            .account_policy(AccountPolicy {
                ipv6_prefix_len: a.ipv6_prefix_len,
                ..AccountPolicy::default()
            })
            .build()?;
        // Stopped with the server: it holds the core (and so the store),
        // and the carriers it listens to are held by the core's gateway.
        let (receipts_stop, receipts_stopped) = tokio::sync::watch::channel(false);
        let receipts_task =
            receipts.map(|rx| tokio::spawn(apply_receipts(core.clone(), rx, receipts_stopped)));
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
                trusted_proxies: TrustedProxies::new(nets.clone()),
                body_timeout: Duration::from_secs(a.body_timeout_secs.max(1)),
                pool_auth,
                ..HttpConfig::default()
            },
        );
        let ws = HubWs::new(core.clone(), WsConfig::default());
        let health = Health::new(core.stores.clone());
        let mut platform = PlatformService::new(http, ws.clone()).with_health(health.clone());
        if let Some(c) = carriers {
            platform = platform.with_carriers(c);
        }
        if a.metrics_listen.is_none() {
            platform = platform.with_metrics();
        }
        // The client's address is resolved once per request, here, for the
        // HTTP dialects and the WebSocket alike; outermost, every request is
        // counted, timed, logged and given its X-Request-Id.
        let service = tower_layer::Layer::layer(
            &ObserveLayer,
            tower_layer::Layer::layer(&ClientIpLayer::new(TrustedProxies::new(nets)), platform),
        );
        let listen_err = |source| PlatformError::Listen {
            addr: a.listen.to_string(),
            source,
        };
        let listener = TcpListener::bind(a.listen.as_str())
            .await
            .map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        if pool_open && !addr.ip().is_loopback() {
            tracing::warn!(
                listen = %addr,
                "the pool routes (/phones, /vcodes, /mobiles, /sends, /setsize) are open to anyone who can reach this address: set --device-token and --consumer-token"
            );
        }
        let server_config = ServerConfig {
            header_read_timeout: Duration::from_secs(a.header_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(a.idle_timeout_secs.max(1)),
            max_connections: a.max_connections,
            ..ServerConfig::default()
        };
        let metrics_listener = match &a.metrics_listen {
            Some(m) => {
                let metrics_err = |source| PlatformError::Listen {
                    addr: m.to_string(),
                    source,
                };
                let l = TcpListener::bind(m.as_str()).await.map_err(metrics_err)?;
                let addr = l.local_addr().map_err(metrics_err)?;
                Some((l, addr))
            }
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().map(|(_, addr)| *addr);
        let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
        let metrics_task = metrics_listener.map(|(l, addr)| {
            tracing::info!(%addr, "metrics listening (GET /metrics)");
            let mut stopped = metrics_stopped;
            let config = ServerConfig {
                header_read_timeout: server_config.header_read_timeout,
                idle_timeout: server_config.idle_timeout,
                max_connections: 64,
                ..ServerConfig::default()
            };
            tokio::spawn(sms_http_hyper::serve(
                l,
                tower_layer::Layer::layer(&ObserveLayer, crate::metrics::MetricsOnly),
                config,
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            ))
        });
        let upkeep = crate::metrics::spawn_upkeep();
        let (tx, rx) = oneshot::channel::<()>();
        let postgres_for_stop = postgres;
        let workers = BackgroundWorkers::spawn(core.clone());
        health.set_workers(workers.health());
        let task = tokio::spawn(async move {
            let ws_for_stop = ws.clone();
            sms_http_hyper::serve(listener, service, server_config, async move {
                let _ = rx.await;
                // Load balancers stop sending new requests first.
                health.shutting_down();
                let _ = metrics_stop.send(true);
                // WebSocket sessions are not tracked by hyper's graceful
                // shutdown: tell them (PushKickout state 1) and close them.
                ws_for_stop.shutdown();
            })
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.closed()).await;
            workers.stop().await;
            let _ = receipts_stop.send(true);
            if let Some(t) = receipts_task {
                let _ = t.await;
            }
            if let Some(t) = metrics_task {
                let _ = t.await;
            }
            if let Some(u) = upkeep {
                u.abort();
            }
            if let Some(pg) = postgres_for_stop {
                pg.heartbeat.abort();
                // The send tasks this node held go to the others at once.
                if let Err(e) = pg.store.release_claims().await {
                    tracing::warn!(error = %e, "could not release the send-task claims");
                }
                pg.events.stop();
                pg.store.close().await;
            }
            // Held until the server has stopped; the kernel drops it if
            // the process dies first.
            drop(dir_lock);
        });
        tracing::info!(%addr, "platform listening");
        Ok(RunningPlatform {
            addr,
            metrics_addr,
            core,
            shutdown: Some(tx),
            task,
        })
    }
}

/// A node's PostgreSQL side: the store, its event hub and the code secret.
struct Postgres {
    store: PgStore,
    events: PgEventHub,
    secret: [u8; 32],
    /// Keeps this node's send-task claims alive.
    heartbeat: JoinHandle<()>,
}

/// Connects to the `--store` database. The code secret must come from the
/// flag or the environment: a PostgreSQL deployment has several nodes, and
/// a secret generated on one machine would not be the others'.
async fn open_postgres(
    a: &PlatformArgs,
    url: &str,
    rng: &dyn RandomSource,
) -> Result<Postgres, PlatformError> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(PlatformError::Config(format!(
            "--store {}: expected postgres://USER@HOST:PORT/DB",
            sms_store_postgres::redact_url(url)
        )));
    }
    let secret = load_code_secret(
        &SecretSources {
            value: a.code_secret.clone(),
            file: a.code_secret_file.clone(),
            generated_file: None,
        },
        rng,
    )
    .map_err(|e| match e {
        SecretError::Missing => PlatformError::Config(
            "a PostgreSQL node needs the code-hashing secret every node of the deployment shares: \
             pass --code-secret-file FILE (env SMS_CODE_SECRET_FILE) or set SMS_CODE_SECRET \
             (64 hex digits, e.g. `openssl rand -hex 32`); a secret generated per machine \
             would differ between nodes"
                .into(),
        ),
        other => PlatformError::Secret(other),
    })?;
    let db_err = |source| PlatformError::Database {
        url: sms_store_postgres::redact_url(url),
        source,
    };
    let store = PgStore::connect(
        &PgOptions::new(url)
            .schema(a.store_schema.clone())
            .max_connections(a.store_connections)
            .claim_secs(a.store_claim_secs),
    )
    .await
    .map_err(db_err)?;
    let events = PgEventHub::start(store.clone(), store.node().to_owned())
        .await
        .map_err(db_err)?;
    tracing::info!(
        store = %sms_store_postgres::redact_url(url),
        schema = %a.store_schema,
        node = %events.node(),
        "PostgreSQL store ready"
    );
    let heartbeat = store.spawn_heartbeat();
    Ok(Postgres {
        store,
        events,
        secret,
        heartbeat,
    })
}

/// How often a receipt that matched no recipient is tried again, and the
/// first delay (doubling): a receipt can overtake the write of its
/// recipient's `Sent` status (an SMSC answering `deliver_sm` at once).
const RECEIPT_RETRIES: u32 = 5;
const RECEIPT_RETRY_FIRST: Duration = Duration::from_secs(1);

/// Applies every receipt (HTTP callbacks and SMPP `deliver_sm`) to the
/// sendapi recipient it belongs to: its status and, for a final failure,
/// its refund, in one store call ([`sms_core::sending_service::SendService::apply_receipt`]).
/// A receipt that matches no recipient is tried again a few times (it may
/// have overtaken its `Sent` status), then logged and dropped (a code's
/// receipt, or a message of another system: carriers.md C3).
async fn apply_receipts(
    core: Core,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ReceiptEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let (retry_tx, mut retry_rx) =
        tokio::sync::mpsc::unbounded_channel::<(String, sms_core::carrier::Receipt, u32)>();
    loop {
        let (carrier, r, tries, done) = tokio::select! {
            biased;
            _ = stop.changed() => return,
            next = rx.recv() => match next {
                Some((c, r, done)) => (c, r, 0, done),
                None => return,
            },
            Some((c, r, tries)) = retry_rx.recv() => (c, r, tries, None),
        };
        let outcome = core.sending.apply_receipt(&carrier, &r).await;
        if let Some(done) = done {
            // Taken: applied, unchanged, or kept for a later try.
            let _ = done.send(outcome.is_ok());
        }
        match outcome {
            Ok(ReceiptOutcome::Applied { status, refunded }) => {
                tracing::info!(%carrier, id = %r.provider_id, status = status.as_str(), code = %r.carrier_code, refunded, "receipt applied");
            }
            Ok(ReceiptOutcome::Unchanged(status)) => {
                tracing::debug!(%carrier, id = %r.provider_id, status = status.as_str(), report = r.status.as_str(), "receipt changes nothing");
            }
            Ok(ReceiptOutcome::Unknown) | Err(_) if tries < RECEIPT_RETRIES => {
                if let Err(e) = &outcome {
                    tracing::warn!(%carrier, id = %r.provider_id, error = %e, "receipt not applied; trying again");
                }
                let tx = retry_tx.clone();
                let delay = RECEIPT_RETRY_FIRST.saturating_mul(1 << tries);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send((carrier, r, tries + 1));
                });
            }
            Ok(ReceiptOutcome::Unknown) => {
                tracing::info!(%carrier, id = %r.provider_id, key = ?r.idempotency_key, status = r.status.as_str(), code = %r.carrier_code, "receipt for no known task message");
            }
            Err(e) => {
                tracing::error!(%carrier, id = %r.provider_id, error = %e, "receipt dropped");
            }
        }
    }
}
