//! [`serve`]: accept loop with hyper-util's auto builder (HTTP/1 and HTTP/2,
//! upgrades enabled for the WebSocket), a header-read timeout on a real
//! timer, a cap on concurrent connections, and graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming as HyperBody;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::client_addr::ClientAddr;
use crate::idle::IdleTimeout;
use crate::service::HttpBody;

/// Connection-level settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A client must send a request's headers within this time (slowloris).
    pub header_read_timeout: Duration,
    /// A connection whose reads stay pending this long is closed
    /// (keep-alive idle, stalled bodies, silent WebSocket peers). Keep it
    /// above the WebSocket ping interval.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the accept queue.
    pub max_connections: usize,
    /// How long graceful shutdown waits for open connections.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `service` on `listener` until `shutdown` resolves, then stops
/// accepting and waits up to [`ServerConfig::shutdown_grace`] for open
/// connections to finish. Each request carries a [`ClientAddr`] extension.
pub async fn serve<S, F>(listener: TcpListener, service: S, config: ServerConfig, shutdown: F)
where
    S: tower_service::Service<
            Request<HyperBody>,
            Response = Response<HttpBody>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    F: Future<Output = ()>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let stream = IdleTimeout::new(stream, config.header_read_timeout, config.idle_timeout);
        let svc = service.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<HyperBody>| {
            req.extensions_mut().insert(ClientAddr(peer));
            let mut svc = svc.clone();
            tower_service::Service::call(&mut svc, req)
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), hyper_svc)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(config.shutdown_grace) => {
            tracing::warn!("shutdown grace elapsed; closing remaining connections");
        }
    }
}
