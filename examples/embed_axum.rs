//! Embedding the SMS front ends in an axum server of your own.
//!
//! ```sh
//! cargo run --example embed_axum        # listens on 127.0.0.1:8090
//! curl localhost:8090/health            # the embedder's own route
//! curl -XPOST localhost:8090/signup -d user=alice -d password=secret1
//! ```
//!
//! Every dialect of the platform is served as axum's fallback, the `hub`
//! WebSocket at `GET /ws`, beside the application's own routes. The core
//! here runs over the in-memory store with outgoing messages printed as
//! outbox lines (decision G9); swap in `sms_store_sled::SledStore` (or your
//! own backend) and your carrier's `CodeSender`/`MessageGateway` for real use.
//! `tests/embedding.rs` drives this very file.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sms_core::prelude::*;
use sms_http_hyper::{
    client_ip_of, ClientAddr, ClientIpLayer, HttpConfig, SmsService, TrustedProxies,
};
use sms_platform::outbox::{OutboxGateway, OutboxSender};
use sms_platform::secrets::{load_code_secret, SecretError, SecretSources};
use sms_platform::BackgroundWorkers;
use sms_ws_tungstenite::{HubWs, WsConfig};

/// The application: its own `/health`, the `hub` WebSocket at `/ws`, and
/// every SMS dialect as the fallback. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that per-IP
/// limits see the client's address. Call [`HubWs::shutdown`] on the returned
/// handle when stopping, so that live sessions get `PushKickout` state 1.
pub fn app(core: Core) -> (Router, HubWs) {
    let sms = SmsService::new(core.clone(), HttpConfig::default());
    let hub = HubWs::new(core, WsConfig::default());
    let ws = hub.clone();
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/ws",
            get(move |req: Request| {
                let ws = ws.clone();
                async move {
                    // Resolved once by the ClientIpLayer below (trusted
                    // proxies included), as for the HTTP dialects.
                    let ip = client_ip_of(&req, &TrustedProxies::default());
                    // The request as axum got it still carries hyper's
                    // upgrade handle.
                    ws.upgrade(req, ip).into_response()
                }
            }),
        )
        .fallback_service(sms)
        // Layers run bottom-up: the peer first, then its resolution (add
        // your proxies to `TrustedProxies` when behind a load balancer).
        .layer(ClientIpLayer::new(TrustedProxies::default()))
        .layer(middleware::from_fn(client_addr));
    (router, hub)
}

/// Hands the TCP peer to the SMS front ends (they key per-IP limits on it;
/// without it those limits are not applied).
async fn client_addr(
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(ClientAddr(peer));
    next.run(req).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(sms_platform::logging::filter(None))
        .init();
    let outbox = Arc::new(OutboxSender::stdout());
    // The in-memory store dies with the process, and so may the code secret
    // when SMS_CODE_SECRET is unset; over a durable store, load a stable one.
    let sources = SecretSources {
        value: std::env::var("SMS_CODE_SECRET").ok(),
        ..Default::default()
    };
    let secret = match load_code_secret(&sources, &OsRandom) {
        Ok(secret) => secret,
        Err(SecretError::Missing) => {
            let mut key = [0u8; 32];
            OsRandom.fill(&mut key);
            key
        }
        Err(e) => return Err(e.into()),
    };
    let core = Core::builder(
        Stores::from_single(Arc::new(MemoryStore::new())),
        outbox.clone(),
    )
    .password_hasher(Arc::new(Argon2Hasher::new(Arc::new(OsRandom))))
    .gateway(Arc::new(OutboxGateway::new(outbox)))
    .code_secret(secret)
    .build()?;
    // Send tasks and lease expiry need these, once per process.
    let workers = BackgroundWorkers::spawn(core.clone());
    let (router, hub) = app(core);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8090").await?;
    tracing::info!(addr = %listener.local_addr()?, "embedded SMS platform listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        sms_platform::signals::shutdown_signal().await;
        hub.shutdown();
    })
    .await?;
    workers.stop().await;
    Ok(())
}
