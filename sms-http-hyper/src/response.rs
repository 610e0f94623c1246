//! Building JSON responses.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::service::HttpBody;

/// A JSON response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<HttpBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// `200` with a JSON body: every dialect but `sendapi` carries its result in
/// the body (decision G4).
pub fn ok<T: Serialize>(value: &T) -> Response<HttpBody> {
    json(StatusCode::OK, value)
}

/// `{"message": …}` with `status`.
pub fn message(status: StatusCode, text: &str) -> Response<HttpBody> {
    json(status, &serde_json::json!({ "message": text }))
}
