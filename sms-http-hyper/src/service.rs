//! [`SmsService`]: routing, body limits and client addresses, in front of the
//! dialect modules.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures_util::FutureExt;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use sms_core::Core;

use crate::client_addr::{client_ip_of, TrustedProxies};
use crate::response;
use crate::{account_v4, admin, hub, openapi, pool, sendapi, telsignup};

/// The response body of every route.
pub type HttpBody = Full<Bytes>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Settings of the HTTP front end.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Largest request body accepted; larger answers 413 (default 1 MiB, G4).
    pub body_limit: usize,
    /// Proxies whose `X-Forwarded-For` is believed (G11; none by default).
    pub trusted_proxies: TrustedProxies,
    /// The whole body must arrive within this time, else 408 (default 30 s).
    pub body_timeout: std::time::Duration,
    /// A body that is refused (over `body_limit`, or sent to a route that
    /// does not exist) is still read and thrown away up to this many bytes
    /// (default 16 MiB), so that a client that writes its whole body before
    /// reading gets the answer instead of a reset connection. Larger bodies,
    /// and requests that asked `Expect: 100-continue`, get the answer at once
    /// and the connection is closed.
    pub discard_limit: u64,
    /// Credentials of the `pool` routes (none by default: open, as the
    /// seed has them).
    pub pool_auth: crate::PoolAuth,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_limit: 1024 * 1024,
            trusted_proxies: TrustedProxies::default(),
            body_timeout: std::time::Duration::from_secs(30),
            discard_limit: 16 * 1024 * 1024,
            pool_auth: crate::PoolAuth::default(),
        }
    }
}

/// A unit of routes an embedder can mount alone (see
/// [`SmsService::with_dialects`]). Each seed's dialect is one unit; the pool's
/// device-facing routes and the root administration routes are units of
/// their own, so that mounting a dialect never exposes them by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dialect {
    /// `hub` HTTP: `POST /signup`, `/login`, `/forgot/vcode`, `/forgot/verify`.
    Hub,
    /// `telsignup`: `POST /index.php?r=user/…`.
    Telsignup,
    /// `account_v4`: `/api/v4.0/…`.
    AccountV4,
    /// `sendapi`: `/v1/signature`, `/v1/template`, `/v1/message`, and the
    /// seed's root reviews `/v2/signreview`, `/v2/tempreview`, `/v2/charge`.
    SendApi,
    /// `pool`, the consumer side: `GET /mobiles/<app>/<n>`,
    /// `GET /vcodes/<app>`, and `PUT /setsize`.
    Pool,
    /// `pool`, the SIM-device side: `POST /phones`, `POST /vcodes`,
    /// `GET /sends/<cid>`.
    PoolDevices,
    /// Root administration beyond the seeds: `POST /v2/item`, `/v2/ban`.
    Admin,
    /// The OpenAPI documents: `GET /openapi`, `/openapi/<dialect>.yaml`.
    OpenApi,
}

impl Dialect {
    /// Every unit: what [`SmsService::new`] serves.
    pub const ALL: [Dialect; 8] = [
        Self::Hub,
        Self::Telsignup,
        Self::AccountV4,
        Self::SendApi,
        Self::Pool,
        Self::PoolDevices,
        Self::Admin,
        Self::OpenApi,
    ];
}

/// The dialect and endpoint a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Hub(hub::Endpoint),
    Telsignup,
    AccountV4(account_v4::Endpoint, Option<String>),
    Pool(pool::Endpoint),
    Admin(admin::Admin),
    SendApi(sendapi::Route),
    OpenApi(openapi::Document),
}

impl Route {
    fn find(path: &str) -> Option<Self> {
        if let Some(d) = openapi::Document::from_path(path) {
            return Some(Self::OpenApi(d));
        }
        if let Some(e) = hub::Endpoint::from_path(path) {
            return Some(Self::Hub(e));
        }
        if path == "/index.php" {
            return Some(Self::Telsignup);
        }
        if let Some(r) = sendapi::Route::from_path(path) {
            return Some(Self::SendApi(r));
        }
        if let Some(a) = admin::Admin::from_path(path) {
            return Some(Self::Admin(a));
        }
        if let Some(e) = pool::Endpoint::from_path(path) {
            return Some(Self::Pool(e));
        }
        account_v4::Endpoint::from_path(path).map(|(e, seg)| Self::AccountV4(e, seg))
    }

    /// The methods the route takes, as an `Allow` header value.
    fn allowed(&self) -> &'static str {
        match self {
            Self::Hub(_) | Self::Telsignup => "POST",
            Self::Admin(a) => a.allowed(),
            Self::AccountV4(..) => "GET, POST",
            Self::Pool(e) => match e.method() {
                Method::GET => "GET",
                Method::PUT => "PUT",
                _ => "POST",
            },
            Self::SendApi(r) => r.allowed(),
            Self::OpenApi(_) => "GET",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        self.allowed().split(", ").any(|m| m == method.as_str())
    }

    /// The unit the route belongs to.
    fn dialect(&self) -> Dialect {
        match self {
            Self::Hub(_) => Dialect::Hub,
            Self::Telsignup => Dialect::Telsignup,
            Self::AccountV4(..) => Dialect::AccountV4,
            Self::Pool(e) if e.is_device_route() => Dialect::PoolDevices,
            Self::Pool(_) => Dialect::Pool,
            Self::Admin(a) if a.is_sendapi_route() => Dialect::SendApi,
            Self::Admin(_) => Dialect::Admin,
            Self::SendApi(_) => Dialect::SendApi,
            Self::OpenApi(_) => Dialect::OpenApi,
        }
    }
}

/// A request after routing and body collection, as the dialects see it.
#[derive(Debug)]
pub struct Incoming {
    /// The query string, if any.
    pub query: Option<String>,
    /// The `Content-Type` header, if readable.
    pub content_type: Option<String>,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The whole body (within the limit).
    pub body: Bytes,
    /// The client's address (G11), when known.
    pub client_ip: Option<IpAddr>,
}

/// The HTTP front end as a tower service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SmsService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    core: Core,
    config: HttpConfig,
    dialects: Vec<Dialect>,
}

impl SmsService {
    /// A service over `core` serving every dialect ([`Dialect::ALL`]).
    pub fn new(core: Core, config: HttpConfig) -> Self {
        Self::with_dialects(core, config, &Dialect::ALL)
    }

    /// A service over `core` serving only `dialects`; every other path
    /// answers 404. Mount it under a prefix with axum's `nest_service`
    /// (which strips the prefix) or in front of your own routes:
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use sms_core::prelude::*;
    /// use sms_http_hyper::{Dialect, HttpConfig, SmsService};
    /// # let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new()))).build().unwrap();
    /// // Only account_v4: /api/v4.0/… — no pool, root or other dialect routes.
    /// let auth = SmsService::with_dialects(core, HttpConfig::default(), &[Dialect::AccountV4]);
    /// ```
    pub fn with_dialects(core: Core, config: HttpConfig, dialects: &[Dialect]) -> Self {
        Self {
            inner: Arc::new(Inner {
                core,
                config,
                dialects: dialects.to_vec(),
            }),
        }
    }

    /// The units this service serves.
    pub fn dialects(&self) -> &[Dialect] {
        &self.inner.dialects
    }

    fn route(&self, path: &str) -> Option<Route> {
        Route::find(path).filter(|r| self.inner.dialects.contains(&r.dialect()))
    }

    /// The core behind the service.
    pub fn core(&self) -> &Core {
        &self.inner.core
    }

    /// The settings.
    pub fn config(&self) -> &HttpConfig {
        &self.inner.config
    }

    /// True when this service answers `path` (so a router in front can send
    /// everything else elsewhere).
    pub fn serves_path(&self, path: &str) -> bool {
        self.route(path).is_some()
    }

    /// Handles one request. Never fails; never answers 5xx for anything a
    /// client can send.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<HttpBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let Some(route) = self.route(&path) else {
            let resp = response::message(StatusCode::NOT_FOUND, "not found");
            return self.refuse(req, resp).await;
        };
        if !route.allows(req.method()) {
            return self.refuse(req, method_not_allowed(route.allowed())).await;
        }
        let client_ip = client_ip_of(&req, &self.inner.config.trusted_proxies);
        let query = req.uri().query().map(str::to_owned);
        let content_type = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (parts, body) = req.into_parts();
        let config = &self.inner.config;
        let too_large = || response::message(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
        if declared_length(&parts.headers).is_some_and(|n| n > config.body_limit as u64)
            && refuse_unread(&parts.headers, config.discard_limit)
        {
            // Refuse before reading (and before any `100 Continue`).
            return closing(too_large());
        }
        let read = read_body(body, config.body_limit, config.discard_limit);
        let body = match tokio::time::timeout(config.body_timeout, read).await {
            Ok(BodyRead::Complete(b)) => b,
            Ok(BodyRead::TooLarge { drained: true }) => return too_large(),
            Ok(BodyRead::TooLarge { drained: false }) => return closing(too_large()),
            Ok(BodyRead::Unreadable) => {
                return closing(response::message(
                    StatusCode::BAD_REQUEST,
                    "unreadable body",
                ))
            }
            Err(_) => {
                return closing(response::message(
                    StatusCode::REQUEST_TIMEOUT,
                    "body too slow",
                ))
            }
        };
        let incoming = Incoming {
            query,
            content_type,
            headers: parts.headers,
            body,
            client_ip,
        };
        let core = &self.inner.core;
        match route {
            Route::Hub(e) => hub::handle(core, e, &incoming).await,
            Route::Telsignup => telsignup::handle(core, &incoming).await,
            Route::AccountV4(e, seg) => account_v4::handle(core, e, seg, &incoming).await,
            Route::Pool(e) => pool::handle(core, &config.pool_auth, e, &incoming).await,
            Route::Admin(a) => admin::handle(core, a, &method, &incoming).await,
            Route::SendApi(r) => sendapi::handle(core, r, &method, &incoming).await,
            Route::OpenApi(d) => openapi::handle(d),
        }
    }

    /// Answers `resp` to a request whose body is not wanted, after reading
    /// and discarding that body (see [`HttpConfig::discard_limit`]), so a
    /// client that writes its whole body before reading gets the answer
    /// instead of a reset. Front ends that route beside this service (the
    /// platform's `/ws`) use it for their own refusals.
    pub async fn refuse<B>(&self, req: Request<B>, resp: Response<HttpBody>) -> Response<HttpBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let config = &self.inner.config;
        let (parts, body) = req.into_parts();
        if body.is_end_stream() {
            return resp;
        }
        if refuse_unread(&parts.headers, config.discard_limit) {
            return closing(resp);
        }
        let read = read_body(body, 0, config.discard_limit);
        match tokio::time::timeout(config.body_timeout, read).await {
            Ok(BodyRead::Complete(_) | BodyRead::TooLarge { drained: true }) => resp,
            _ => closing(resp),
        }
    }
}

/// The body length the client declared, if it did.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether a body that is not wanted should be refused without reading it:
/// the client waits for `100 Continue` before sending it, or declared more
/// than is worth reading just to throw away.
fn refuse_unread(headers: &http::HeaderMap, discard_limit: u64) -> bool {
    let expects_continue = headers
        .get(http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("100-continue"));
    expects_continue || declared_length(headers).is_some_and(|n| n > discard_limit)
}

/// How reading a request body ended.
#[derive(Debug)]
enum BodyRead {
    /// The whole body, within the limit.
    Complete(Bytes),
    /// Over the limit; `drained` when the rest was read and thrown away to
    /// its end (the connection can serve another request).
    TooLarge {
        /// The body was read to its end.
        drained: bool,
    },
    /// The body broke off (a bad chunk, a reset).
    Unreadable,
}

/// Reads a body, keeping at most `limit` bytes; past that, reads on and
/// discards up to `discard_limit` bytes in all.
async fn read_body<B>(body: B, limit: usize, discard_limit: u64) -> BodyRead
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut kept = bytes::BytesMut::new();
    let mut seen: u64 = 0;
    let mut over = false;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return if over {
                BodyRead::TooLarge { drained: false }
            } else {
                BodyRead::Unreadable
            };
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        seen = seen.saturating_add(data.remaining() as u64);
        if seen > limit as u64 && !over {
            over = true;
            kept = bytes::BytesMut::new();
        }
        if !over {
            kept.put(data);
        } else if seen > discard_limit {
            return BodyRead::TooLarge { drained: false };
        }
    }
    if over {
        BodyRead::TooLarge { drained: true }
    } else {
        BodyRead::Complete(kept.freeze())
    }
}

/// `405` with the `Allow` header RFC 9110 asks for.
pub fn method_not_allowed(allow: &'static str) -> Response<HttpBody> {
    let mut resp = response::message(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    resp.headers_mut()
        .insert(http::header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// Marks a response as the last on its connection (the request body was not
/// read to its end).
fn closing(mut resp: Response<HttpBody>) -> Response<HttpBody> {
    resp.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    resp
}

impl<B> tower_service::Service<Request<B>> for SmsService
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<HttpBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        // Metrics, request id and access log (unless an outer layer does).
        crate::metrics::observed(req, |req| async move {
            // A safety net: a bug must cost one response, never the
            // connection or the process.
            match AssertUnwindSafe(this.handle(req)).catch_unwind().await {
                Ok(resp) => Ok(resp),
                Err(_) => {
                    tracing::error!("request handler panicked");
                    Ok(response::message(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error",
                    ))
                }
            }
        })
    }
}
