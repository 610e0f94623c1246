//! The browser console at `/console/`: plain HTML, CSS and ES modules
//! (`src/console/`), embedded in the binary with `include_bytes!`, no build
//! step. The page speaks only the public dialects (hub HTTP and WebSocket,
//! sendapi, the root extensions, pool), exactly as an outside client would.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles,
//! fetches and the WebSocket to this host only; no inline code, no frames,
//! no form posts), `nosniff`, `no-referrer`, and `Cache-Control: no-cache`
//! with a strong `ETag` (the names are not versioned, so a browser asks
//! again every time and gets `304` while the binary is the same).
//! `GET /console` redirects to `/console/`.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use sms_http_hyper::HttpBody;

/// The console's path prefix.
pub const PREFIX: &str = "/console";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $ct:expr) => {
        Asset {
            path: $path,
            content_type: $ct,
            body: include_bytes!(concat!("console/", $file)),
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("/console/", "index.html", HTML),
    asset!("/console/index.html", "index.html", HTML),
    asset!("/console/style.css", "style.css", CSS),
    asset!("/console/app.js", "app.js", JS),
    asset!("/console/api.js", "api.js", JS),
    asset!("/console/i18n.js", "i18n.js", JS),
    asset!("/console/sms.js", "sms.js", JS),
    asset!("/console/favicon.svg", "favicon.svg", "image/svg+xml"),
];

/// True for the paths the console answers (`/console` and below).
pub fn serves(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// The console's answer to a request for `path` (one of [`serves`]):
/// the file, `304`, the redirect of `/console`, `404` or `405`.
pub fn respond(method: &Method, path: &str, headers: &HeaderMap) -> Response<HttpBody> {
    if *method != Method::GET && *method != Method::HEAD {
        let mut resp = sms_http_hyper::service::method_not_allowed("GET, HEAD");
        secure(&mut resp, headers);
        return resp;
    }
    if path == PREFIX {
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console/"));
        secure(&mut resp, headers);
        return resp;
    }
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        let mut resp = sms_http_hyper::response::message(StatusCode::NOT_FOUND, "not found");
        secure(&mut resp, headers);
        return resp;
    };
    let etag = etag(asset.body);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Full::new(Bytes::from_static(asset.body)));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    if let Ok(v) = HeaderValue::from_str(&etag) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    secure(&mut resp, headers);
    resp
}

/// The security headers of every console answer.
fn secure(resp: &mut Response<HttpBody>, req_headers: &HeaderMap) {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_security_policy(req_headers)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
}

/// Everything from this origin only. `connect-src` names the WebSocket of
/// the requested host explicitly (older browsers do not count `ws:` as
/// `'self'`), but only for a `Host` made of host-name characters, so a
/// forged header cannot add a directive.
pub fn content_security_policy(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        });
    let connect = match host {
        Some(h) => format!("'self' ws://{h} wss://{h}"),
        None => "'self'".to_owned(),
    };
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src {connect}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// A strong validator: FNV-1a over the bytes (the files change only with
/// the binary).
fn etag(body: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("\"{h:016x}-{}\"", body.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, headers: &[(&str, &str)]) -> Response<HttpBody> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        respond(&Method::GET, path, &h)
    }

    #[test]
    fn every_asset_has_its_type_and_the_policy() {
        for a in ASSETS {
            let r = get(a.path, &[("host", "127.0.0.1:8080")]);
            assert_eq!(r.status(), StatusCode::OK, "{}", a.path);
            assert_eq!(r.headers()[header::CONTENT_TYPE], a.content_type);
            let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap();
            assert!(csp.contains("script-src 'self';"), "{csp}");
            assert!(
                csp.contains("connect-src 'self' ws://127.0.0.1:8080 wss://127.0.0.1:8080;"),
                "{csp}"
            );
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        }
    }

    #[test]
    fn a_forged_host_adds_no_directive() {
        let r = get("/console/", &[("host", "evil; script-src *")]);
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self';"), "{csp}");
        assert!(!csp.contains('*'), "{csp}");
    }

    #[test]
    fn etag_answers_not_modified() {
        let r = get("/console/app.js", &[]);
        let tag = r.headers()[header::ETAG].to_str().unwrap().to_owned();
        let again = get("/console/app.js", &[("if-none-match", &tag)]);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        let other = get("/console/app.js", &[("if-none-match", "\"x\"")]);
        assert_eq!(other.status(), StatusCode::OK);
    }

    #[test]
    fn redirect_not_found_and_method() {
        let r = get("/console", &[]);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.headers()[header::LOCATION], "/console/");
        assert_eq!(
            get("/console/../Cargo.toml", &[]).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(get("/console/nope.js", &[]).status(), StatusCode::NOT_FOUND);
        let r = respond(&Method::POST, "/console/", &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(serves("/console") && serves("/console/x") && !serves("/consoles"));
    }
}
