//! Request metrics, request ids and the access log line.
//!
//! For every request: `sms_http_requests_total{dialect,route,status}` and
//! `sms_http_request_duration_seconds{dialect,route}` through the
//! [`metrics`] facade (the names live in [`sms_core::metrics`]); one log
//! line (target `sms_http_hyper::access`, level `info`) with the request id,
//! dialect, route, status and duration; and the request id echoed in the
//! response's `X-Request-Id`. The id is the client's `X-Request-Id` when it
//! is sane ([`request_id_from`]), else a new random one.
//!
//! Labels never carry a raw path: [`route_label`] maps a path to its
//! template (`/api/v4.0/sendsms/{phone}`), and anything unknown to
//! `route="unmatched"`, so the label sets stay small and no phone number,
//! app or token reaches them.
//!
//! [`SmsService`](crate::SmsService) observes its own requests. A server
//! that routes beside it (the platform's `/ws` and `/metrics`) puts
//! [`ObserveLayer`] outermost instead: the layer marks each request with its
//! [`RequestId`] and the service then leaves it to the layer, so nothing is
//! counted twice.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use sms_core::metrics::{HTTP_REQUESTS, HTTP_REQUEST_DURATION};

/// The request id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The longest client request id taken as is.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of one request, in the request's extensions once observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// The labels of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLabel {
    /// `hub`, `hub_ws`, `telsignup`, `account_v4`, `sendapi`, `pool`,
    /// `openapi`, `platform`, or `none` for a path no dialect serves.
    pub dialect: &'static str,
    /// The route template (`/mobiles/{app}/{n}`), or `unmatched`.
    pub route: &'static str,
}

const UNMATCHED: RouteLabel = RouteLabel {
    dialect: "none",
    route: "unmatched",
};

/// Maps a request to its dialect and route template. Only fixed strings
/// come out: a path with a phone number, an app, a channel or anything else
/// a client chose maps to the template, and an unknown path to `unmatched`.
/// `query` matters only for `telsignup`, whose action is its `r` parameter.
pub fn route_label(path: &str, query: Option<&str>) -> RouteLabel {
    let l = |dialect, route| RouteLabel { dialect, route };
    let segs: Vec<&str> = match path.strip_prefix('/') {
        Some(rest) => rest.split('/').collect(),
        None => return UNMATCHED,
    };
    let filled = |s: &&str| !s.is_empty();
    match segs.as_slice() {
        ["signup"] => l("hub", "/signup"),
        ["login"] => l("hub", "/login"),
        ["forgot", "vcode"] => l("hub", "/forgot/vcode"),
        ["forgot", "verify"] => l("hub", "/forgot/verify"),
        ["ws"] => l("hub_ws", "/ws"),
        ["index.php"] => l("telsignup", telsignup_route(query)),
        ["api", "v4.0", "sendsms", p] if filled(p) => l("account_v4", "/api/v4.0/sendsms/{phone}"),
        ["api", "v4.0", "isregister", p] if filled(p) => {
            l("account_v4", "/api/v4.0/isregister/{phone}")
        }
        ["api", "v4.0", "register"] => l("account_v4", "/api/v4.0/register"),
        ["api", "v4.0", "login"] => l("account_v4", "/api/v4.0/login"),
        ["api", "v4.0", "verify_code"] => l("account_v4", "/api/v4.0/verify_code"),
        ["api", "v4.0", "forget_password"] => l("account_v4", "/api/v4.0/forget_password"),
        ["v1", "signature"] => l("sendapi", "/v1/signature"),
        ["v1", "template"] => l("sendapi", "/v1/template"),
        ["v1", "message"] => l("sendapi", "/v1/message"),
        ["v2", "signreview"] => l("sendapi", "/v2/signreview"),
        ["v2", "tempreview"] => l("sendapi", "/v2/tempreview"),
        ["v2", "charge"] => l("sendapi", "/v2/charge"),
        ["v2", "item"] => l("sendapi", "/v2/item"),
        ["v2", "ban"] => l("sendapi", "/v2/ban"),
        ["v2", "pool"] => l("sendapi", "/v2/pool"),
        ["v2", "reviews"] => l("sendapi", "/v2/reviews"),
        ["phones"] => l("pool", "/phones"),
        ["mobiles", a, n] if filled(a) && filled(n) => l("pool", "/mobiles/{app}/{n}"),
        ["vcodes"] => l("pool", "/vcodes"),
        ["vcodes", a] if filled(a) => l("pool", "/vcodes/{app}"),
        ["setsize"] => l("pool", "/setsize"),
        ["sends", c] if filled(c) => l("pool", "/sends/{cid}"),
        ["openapi"] => l("openapi", "/openapi"),
        ["openapi", d] if d.ends_with(".yaml") => l("openapi", "/openapi/{dialect}.yaml"),
        ["metrics"] => l("platform", "/metrics"),
        ["carriers", c, "receipts"] if filled(c) => l("platform", "/carriers/{name}/receipts"),
        ["console", ..] => l("console", "/console/{path}"),
        _ => UNMATCHED,
    }
}

/// The `telsignup` route of an `r` parameter.
fn telsignup_route(query: Option<&str>) -> &'static str {
    let r = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "r")
            .map(|(_, v)| v.into_owned())
    });
    match r.as_deref() {
        Some("user/sms-validation-request") => "/index.php?r=user/sms-validation-request",
        Some("user/sms-validation-code") => "/index.php?r=user/sms-validation-code",
        Some("user/register") => "/index.php?r=user/register",
        _ => "/index.php",
    }
}

/// The client's request id, when it is sane: 1 to
/// [`MAX_REQUEST_ID_LEN`] visible ASCII characters (no spaces or controls).
pub fn request_id_from(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(REQUEST_ID_HEADER)?.as_bytes();
    let sane =
        !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN && v.iter().all(|b| b.is_ascii_graphic());
    sane.then(|| String::from_utf8_lossy(v).into_owned())
}

/// A new request id: 32 random hex digits.
pub fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The boxed future of an observed request.
pub type ObservedFuture<RB> =
    Pin<Box<dyn Future<Output = Result<Response<RB>, Infallible>> + Send>>;

/// Observes `req` (metrics, log line, `X-Request-Id`) around `handle`,
/// unless an outer [`ObserveLayer`] already does.
pub(crate) fn observed<B, RB, F, Fut>(mut req: Request<B>, handle: F) -> ObservedFuture<RB>
where
    F: FnOnce(Request<B>) -> Fut,
    Fut: Future<Output = Result<Response<RB>, Infallible>> + Send + 'static,
{
    if req.extensions().get::<RequestId>().is_some() {
        return Box::pin(handle(req));
    }
    let id = request_id_from(req.headers()).unwrap_or_else(new_request_id);
    req.extensions_mut().insert(RequestId(id.clone()));
    let label = route_label(req.uri().path(), req.uri().query());
    let method = req.method().clone();
    let start = Instant::now();
    let fut = handle(req);
    Box::pin(async move {
        let Ok(mut resp) = fut.await;
        let took = start.elapsed();
        let status = resp.status().as_u16();
        metrics::counter!(
            HTTP_REQUESTS,
            "dialect" => label.dialect,
            "route" => label.route,
            "status" => status.to_string()
        )
        .increment(1);
        metrics::histogram!(
            HTTP_REQUEST_DURATION,
            "dialect" => label.dialect,
            "route" => label.route
        )
        .record(took);
        tracing::info!(
            target: "sms_http_hyper::access",
            request_id = %id,
            method = %method,
            dialect = label.dialect,
            route = label.route,
            status,
            duration_ms = took.as_secs_f64() * 1000.0,
            "request"
        );
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        Ok(resp)
    })
}

/// A tower layer that observes every request of the service it wraps (see
/// the [module docs](self)). Put it outermost, so one observation covers
/// the whole server.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The service [`ObserveLayer`] makes.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<Request<B>> for Observe<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Infallible;
    type Future = ObservedFuture<RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        observed(req, |req| self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn label(_method: Method, path: &str, query: Option<&str>) -> (&'static str, &'static str) {
        let l = route_label(path, query);
        (l.dialect, l.route)
    }

    #[test]
    fn paths_with_values_map_to_their_templates() {
        let cases = [
            (
                Method::POST,
                "/api/v4.0/sendsms/13811112222",
                None,
                ("account_v4", "/api/v4.0/sendsms/{phone}"),
            ),
            (
                Method::GET,
                "/api/v4.0/isregister/%2B8613811112222",
                None,
                ("account_v4", "/api/v4.0/isregister/{phone}"),
            ),
            (
                Method::GET,
                "/mobiles/wechat/5",
                None,
                ("pool", "/mobiles/{app}/{n}"),
            ),
            (
                Method::GET,
                "/vcodes/wechat",
                None,
                ("pool", "/vcodes/{app}"),
            ),
            (Method::POST, "/vcodes", None, ("pool", "/vcodes")),
            (Method::GET, "/sends/chan-7", None, ("pool", "/sends/{cid}")),
            (Method::POST, "/signup", None, ("hub", "/signup")),
            (Method::GET, "/ws", None, ("hub_ws", "/ws")),
            (
                Method::POST,
                "/index.php",
                Some("r=user%2Fsms-validation-code&x=1"),
                ("telsignup", "/index.php?r=user/sms-validation-code"),
            ),
            (
                Method::POST,
                "/index.php",
                Some("r=13811112222"),
                ("telsignup", "/index.php"),
            ),
            (
                Method::DELETE,
                "/v1/template",
                Some("id=9"),
                ("sendapi", "/v1/template"),
            ),
            (
                Method::POST,
                "/carriers/aliyun-1/receipts",
                None,
                ("platform", "/carriers/{name}/receipts"),
            ),
            (
                Method::GET,
                "/openapi/hub.yaml",
                None,
                ("openapi", "/openapi/{dialect}.yaml"),
            ),
        ];
        for (m, path, q, want) in cases {
            assert_eq!(label(m, path, q), want, "{path}");
        }
    }

    #[test]
    fn unknown_paths_are_one_label() {
        for path in [
            "/13811112222",
            "/api/v4.0/sendsms/",
            "/api/v4.0/sendsms/138/1",
            "/mobiles/app",
            "/tokens/abcdef0123456789",
            "",
            "relative",
        ] {
            assert_eq!(
                label(Method::GET, path, None),
                ("none", "unmatched"),
                "{path}"
            );
        }
    }

    #[test]
    fn request_ids_are_taken_only_when_sane() {
        let mut h = http::HeaderMap::new();
        assert_eq!(request_id_from(&h), None);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123_X.y"));
        assert_eq!(request_id_from(&h).as_deref(), Some("abc-123_X.y"));
        for bad in ["", "with space", "tab\there"] {
            h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(bad).unwrap());
            assert_eq!(request_id_from(&h), None, "{bad:?}");
        }
        h.insert(
            REQUEST_ID_HEADER,
            HeaderValue::from_bytes("ü".as_bytes()).unwrap(),
        );
        assert_eq!(request_id_from(&h), None);
        let long = "a".repeat(MAX_REQUEST_ID_LEN + 1);
        h.insert(REQUEST_ID_HEADER, HeaderValue::from_str(&long).unwrap());
        assert_eq!(request_id_from(&h), None);
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(id, new_request_id());
    }

    #[tokio::test]
    async fn the_id_is_echoed_and_an_outer_layer_is_not_doubled() {
        use tower_service::Service;
        let inner = tower_service_fn(|req: Request<()>| {
            assert!(req.extensions().get::<RequestId>().is_some());
            Response::new(())
        });
        let mut svc = tower_layer::Layer::layer(&ObserveLayer, inner);
        let req = Request::builder()
            .uri("/signup")
            .header(REQUEST_ID_HEADER, "client-id-1")
            .body(())
            .unwrap();
        let Ok(resp) = svc.call(req).await;
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], "client-id-1");
        // Already observed: passed through untouched (no second header).
        let mut req = Request::builder().uri("/signup").body(()).unwrap();
        req.extensions_mut().insert(RequestId("outer".into()));
        let Ok(resp) = svc.call(req).await;
        assert!(resp.headers().get(REQUEST_ID_HEADER).is_none());
        let req = Request::builder().uri("/signup").body(()).unwrap();
        let Ok(resp) = svc.call(req).await;
        let id = resp.headers()[REQUEST_ID_HEADER].to_str().unwrap();
        assert_eq!(id.len(), 32);
    }

    /// A service from a function (tests only).
    fn tower_service_fn<F>(f: F) -> FnService<F> {
        FnService(f)
    }

    #[derive(Clone)]
    struct FnService<F>(F);

    impl<F> tower_service::Service<Request<()>> for FnService<F>
    where
        F: FnMut(Request<()>) -> Response<()>,
    {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: Request<()>) -> Self::Future {
            std::future::ready(Ok((self.0)(req)))
        }
    }
}
