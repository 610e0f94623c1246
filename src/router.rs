//! The platform's one service: `GET /ws` goes to the `hub` WebSocket,
//! `/console/` to the browser console ([`crate::console`]), `GET /metrics`
//! to the exporter (unless `--metrics-listen` moves it), every other path
//! to the HTTP dialects (decision G1).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use sms_http_hyper::{client_ip_of, HttpBody, SmsService};
use sms_ws_tungstenite::HubWs;

/// Routes between the WebSocket and the HTTP dialects.
#[derive(Debug, Clone)]
pub struct PlatformService {
    http: SmsService,
    ws: HubWs,
    carriers: Option<crate::carriers::Carriers>,
    metrics: bool,
    health: Option<crate::health::Health>,
}

impl PlatformService {
    /// Both front ends over one core.
    pub fn new(http: SmsService, ws: HubWs) -> Self {
        Self {
            http,
            ws,
            carriers: None,
            metrics: false,
            health: None,
        }
    }

    /// Also serves `GET /metrics` (the Prometheus exporter,
    /// [`crate::metrics`]).
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Also serves `GET /livez` and `GET /readyz` ([`crate::health`]).
    pub fn with_health(mut self, health: crate::health::Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Also serves `POST /carriers/<name>/receipts` (carriers.md C3).
    pub fn with_carriers(mut self, carriers: crate::carriers::Carriers) -> Self {
        self.carriers = Some(carriers);
        self
    }
}

impl tower_service::Service<Request<Incoming>> for PlatformService {
    type Response = Response<HttpBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        if let Some(health) = &self.health {
            if crate::health::Health::is_health_path(req.uri().path()) {
                let health = health.clone();
                let http = self.http.clone();
                return Box::pin(async move {
                    match health.answer(req.method(), req.uri().path()).await {
                        Some(resp) => Ok(resp),
                        None => {
                            let resp = sms_http_hyper::service::method_not_allowed("GET");
                            Ok(http.refuse(req, resp).await)
                        }
                    }
                });
            }
        }
        if let Some(carriers) = &self.carriers {
            let name = req
                .uri()
                .path()
                .strip_prefix("/carriers/")
                .and_then(|rest| rest.strip_suffix("/receipts"))
                .map(str::to_string);
            if let Some(name) = name {
                let carriers = carriers.clone();
                return Box::pin(async move { Ok(carriers.receipts(&name, req).await) });
            }
        }
        if crate::console::serves(req.uri().path()) {
            let resp = crate::console::respond(req.method(), req.uri().path(), req.headers());
            let http = self.http.clone();
            return Box::pin(async move { Ok(http.refuse(req, resp).await) });
        }
        if self.metrics && req.uri().path() == "/metrics" {
            let resp = crate::metrics::response(req.method());
            let http = self.http.clone();
            return Box::pin(async move { Ok(http.refuse(req, resp).await) });
        }
        if req.uri().path() == "/ws" {
            if req.method() != http::Method::GET {
                // Read and discard the body like every other refusal, so a
                // client that writes before reading gets its 405.
                let http = self.http.clone();
                let resp = sms_http_hyper::service::method_not_allowed("GET");
                return Box::pin(async move { Ok(http.refuse(req, resp).await) });
            }
            let ip = client_ip_of(&req, &self.http.config().trusted_proxies);
            // The original request: it carries hyper's upgrade handle.
            let resp = self.ws.upgrade(req, ip);
            return Box::pin(async move { Ok(resp) });
        }
        tower_service::Service::call(&mut self.http, req)
    }
}
