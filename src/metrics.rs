//! The platform's metrics exporter: the Prometheus recorder behind the
//! `metrics` facade the library crates emit through, rendered at
//! `GET /metrics` (text exposition format 0.0.4) on the main listener, or
//! on `--metrics-listen` alone.
//!
//! The recorder is process-wide (the facade has one global recorder): the
//! first platform started in a process installs it, later ones share it. An
//! embedder that installed its own recorder first keeps it, and the
//! platform's `/metrics` answers 404.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sms_http_hyper::HttpBody;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds (seconds) of every `_seconds` histogram: from a fast
/// in-memory store call to a slow carrier.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's Prometheus handle: installs the recorder on first use
/// (and describes every metric of [`sms_core::metrics::ALL`]). `None` when
/// another recorder was installed first.
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    sms_core::metrics::describe();
                    Some(handle)
                }
                Err(_) => {
                    tracing::warn!("another metrics recorder is installed: /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

/// The answer to `GET /metrics`: the exposition text, or 404 without a
/// recorder of ours; 405 for other methods.
pub fn response(method: &Method) -> Response<HttpBody> {
    let Some(handle) = handle() else {
        return sms_http_hyper::response::message(StatusCode::NOT_FOUND, "not found");
    };
    if method != Method::GET && method != Method::HEAD {
        return sms_http_hyper::service::method_not_allowed("GET, HEAD");
    }
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from(handle.render())
    };
    let mut resp = Response::new(Full::new(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(CONTENT_TYPE),
    );
    resp
}

/// Drains histogram samples into their buckets every few seconds, so that
/// memory stays flat between scrapes. Ends with the returned handle's abort.
pub fn spawn_upkeep() -> Option<tokio::task::JoinHandle<()>> {
    let handle = handle()?.clone();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            handle.run_upkeep();
        }
    }))
}

/// The service of `--metrics-listen`: `/metrics` and nothing else.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsOnly;

impl<B> tower_service::Service<Request<B>> for MetricsOnly
where
    B: Send + 'static,
{
    type Response = Response<HttpBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let resp = if req.uri().path() == "/metrics" {
            response(req.method())
        } else {
            sms_http_hyper::response::message(StatusCode::NOT_FOUND, "not found")
        };
        Box::pin(async move { Ok(resp) })
    }
}
