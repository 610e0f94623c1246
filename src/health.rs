//! Health for load balancers: `GET /livez` answers 200 whenever the
//! process answers; `GET /readyz` answers 200 when the store answers a
//! trivial query (within 2 s) and the background workers run, 503 otherwise
//! and from the moment a shutdown starts (so a balancer stops sending new
//! requests before connections close).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use sms_core::store::Stores;
use sms_http_hyper::HttpBody;

use crate::workers::WorkersHealth;

/// How long `/readyz` waits for the store.
pub const STORE_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The readiness of one platform process (cheap to clone).
#[derive(Debug, Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    stores: Stores,
    stopping: AtomicBool,
    workers: Mutex<Option<WorkersHealth>>,
}

impl Health {
    /// Readiness over `stores`; not ready until [`set_workers`](Self::set_workers).
    pub fn new(stores: Stores) -> Self {
        Self {
            inner: Arc::new(Inner {
                stores,
                stopping: AtomicBool::new(false),
                workers: Mutex::new(None),
            }),
        }
    }

    /// The background workers whose running `/readyz` reports.
    pub fn set_workers(&self, workers: WorkersHealth) {
        *self.inner.workers.lock().unwrap_or_else(|p| p.into_inner()) = Some(workers);
    }

    /// From now on `/readyz` answers 503.
    pub fn shutting_down(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
    }

    /// `Ok` when ready; otherwise why not.
    pub async fn ready(&self) -> Result<(), &'static str> {
        if self.inner.stopping.load(Ordering::SeqCst) {
            return Err("shutting down");
        }
        let running = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(WorkersHealth::running);
        if !running {
            return Err("background workers not running");
        }
        // A trivial read through the store port (one query on PostgreSQL).
        match tokio::time::timeout(STORE_PROBE_TIMEOUT, self.inner.stores.pool.pool_stats()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) | Err(_) => Err("store unreachable"),
        }
    }

    /// The answer to `path` if it is a health route (`GET` or `HEAD`).
    pub async fn answer(&self, method: &Method, path: &str) -> Option<Response<HttpBody>> {
        if method != Method::GET && method != Method::HEAD {
            return None;
        }
        match path {
            "/livez" => Some(reply(StatusCode::OK, "ok")),
            "/readyz" => Some(match self.ready().await {
                Ok(()) => reply(StatusCode::OK, "ready"),
                Err(why) => reply(StatusCode::SERVICE_UNAVAILABLE, why),
            }),
            _ => None,
        }
    }

    /// Whether `path` is a health route.
    pub fn is_health_path(path: &str) -> bool {
        path == "/livez" || path == "/readyz"
    }
}

fn reply(status: StatusCode, text: &'static str) -> Response<HttpBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}
