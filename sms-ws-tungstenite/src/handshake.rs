//! The opening handshake (RFC 6455 §4.2): validation of the client's request
//! and the two possible answers, `101 Switching Protocols` or `400` with a
//! JSON `{"message":...}` body.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Why a request is not a valid WebSocket opening handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    Method,
    Version,
    Connection,
    Upgrade,
    WsVersion,
    Key,
}

impl Rejection {
    fn message(self) -> &'static str {
        match self {
            Self::Method => "a WebSocket handshake must be a GET request",
            Self::Version => "a WebSocket handshake needs HTTP/1.1",
            Self::Connection => "missing `Connection: upgrade`",
            Self::Upgrade => "missing `Upgrade: websocket`",
            Self::WsVersion => "`Sec-WebSocket-Version` must be 13",
            Self::Key => "missing or malformed `Sec-WebSocket-Key`",
        }
    }
}

/// True when one of the comma-separated values of header `name` is `token`
/// (ASCII case-insensitive).
fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// A key is the base64 form of 16 bytes: 22 base64 characters and `==`.
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// Checks the handshake and returns the `Sec-WebSocket-Accept` value.
pub(crate) fn check<B>(req: &Request<B>) -> Result<String, Rejection> {
    if req.method() != Method::GET {
        return Err(Rejection::Method);
    }
    if req.version() != Version::HTTP_11 {
        return Err(Rejection::Version);
    }
    let headers = req.headers();
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(Rejection::Connection);
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(Rejection::Upgrade);
    }
    let version_ok = {
        let mut all = headers.get_all(SEC_WEBSOCKET_VERSION).iter();
        matches!((all.next(), all.next()), (Some(v), None) if v.as_bytes().trim_ascii() == b"13")
    };
    if !version_ok {
        return Err(Rejection::WsVersion);
    }
    let key = {
        let mut all = headers.get_all(SEC_WEBSOCKET_KEY).iter();
        match (all.next(), all.next()) {
            (Some(k), None) if valid_key(k.as_bytes().trim_ascii()) => k.as_bytes().trim_ascii(),
            _ => return Err(Rejection::Key),
        }
    };
    Ok(derive_accept_key(key))
}

/// `101 Switching Protocols` with the accept key.
pub(crate) fn switching(accept: &str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(accept) {
        h.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// `400 Bad Request` with `{"message":...}`.
pub(crate) fn rejected(why: Rejection) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "message": why.message() }).to_string();
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = StatusCode::BAD_REQUEST;
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if why == Rejection::WsVersion {
        // RFC 6455 §4.4: name the version we speak.
        h.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> http::request::Builder {
        Request::builder()
            .method(Method::GET)
            .uri("/ws")
            .header(CONNECTION, "keep-alive, Upgrade")
            .header(UPGRADE, "WebSocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
    }

    #[test]
    fn accepts_the_rfc_example() {
        let r = req()
            .header(SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        assert_eq!(check(&r).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejects_each_fault() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let post = req()
            .method(Method::POST)
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap();
        assert_eq!(check(&post), Err(Rejection::Method));
        let h10 = req()
            .version(Version::HTTP_10)
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap();
        assert_eq!(check(&h10), Err(Rejection::Version));
        let no_conn = Request::builder()
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap();
        assert_eq!(check(&no_conn), Err(Rejection::Connection));
        let no_up = Request::builder()
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "h2c")
            .header(SEC_WEBSOCKET_VERSION, "13")
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap();
        assert_eq!(check(&no_up), Err(Rejection::Upgrade));
        let v8 = Request::builder()
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, "websocket")
            .header(SEC_WEBSOCKET_VERSION, "8")
            .header(SEC_WEBSOCKET_KEY, key)
            .body(())
            .unwrap();
        assert_eq!(check(&v8), Err(Rejection::WsVersion));
        assert_eq!(
            rejected(Rejection::WsVersion).headers()[SEC_WEBSOCKET_VERSION],
            "13"
        );
        let no_key = req().body(()).unwrap();
        assert_eq!(check(&no_key), Err(Rejection::Key));
        let bad_key = req().header(SEC_WEBSOCKET_KEY, "short").body(()).unwrap();
        assert_eq!(check(&bad_key), Err(Rejection::Key));
    }
}
