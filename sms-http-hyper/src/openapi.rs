//! The OpenAPI 3.0 documents of the HTTP dialects, kept in the repository's
//! `openapi/` directory and embedded at build time: `GET /openapi/<dialect>.yaml`
//! serves one (`application/yaml`), `GET /openapi` a JSON index of all five.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use crate::response;
use crate::service::HttpBody;

/// A dialect's document: its name and the YAML text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The dialect (`hub`, `telsignup`, `account_v4`, `pool`, `sendapi`).
    pub dialect: &'static str,
    /// The OpenAPI 3.0 document, YAML.
    pub yaml: &'static str,
}

/// Every dialect's document, in the README's order.
pub const SPECS: [Spec; 5] = [
    Spec {
        dialect: "hub",
        yaml: include_str!("../openapi/hub.yaml"),
    },
    Spec {
        dialect: "telsignup",
        yaml: include_str!("../openapi/telsignup.yaml"),
    },
    Spec {
        dialect: "account_v4",
        yaml: include_str!("../openapi/account_v4.yaml"),
    },
    Spec {
        dialect: "pool",
        yaml: include_str!("../openapi/pool.yaml"),
    },
    Spec {
        dialect: "sendapi",
        yaml: include_str!("../openapi/sendapi.yaml"),
    },
];

/// What a `/openapi…` path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// `GET /openapi`: the JSON index.
    Index,
    /// `GET /openapi/<dialect>.yaml`: one document (an index into [`SPECS`]).
    Dialect(usize),
}

impl Document {
    /// The document at `path`, if it is one.
    pub fn from_path(path: &str) -> Option<Self> {
        if path == "/openapi" {
            return Some(Self::Index);
        }
        let name = path.strip_prefix("/openapi/")?.strip_suffix(".yaml")?;
        SPECS
            .iter()
            .position(|s| s.dialect == name)
            .map(Self::Dialect)
    }
}

/// The URL path of a dialect's document.
pub fn url(spec: &Spec) -> String {
    format!("/openapi/{}.yaml", spec.dialect)
}

/// Serves one document or the index.
pub fn handle(doc: Document) -> Response<HttpBody> {
    match doc {
        Document::Index => {
            let documents: Vec<_> = SPECS
                .iter()
                .map(|s| json!({ "dialect": s.dialect, "url": url(s) }))
                .collect();
            response::ok(&json!({ "openapi": "3.0.3", "documents": documents }))
        }
        Document::Dialect(i) => {
            let Some(spec) = SPECS.get(i) else {
                return response::message(StatusCode::NOT_FOUND, "not found");
            };
            let mut resp = Response::new(Full::new(Bytes::from_static(spec.yaml.as_bytes())));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/yaml"),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(Document::from_path("/openapi"), Some(Document::Index));
        assert_eq!(
            Document::from_path("/openapi/sendapi.yaml"),
            Some(Document::Dialect(4))
        );
        assert_eq!(Document::from_path("/openapi/"), None);
        assert_eq!(Document::from_path("/openapi/nope.yaml"), None);
        assert_eq!(Document::from_path("/openapi/hub.yml"), None);
    }

    #[test]
    fn documents_are_openapi_3_0() {
        for s in SPECS {
            assert!(s.yaml.starts_with("openapi: 3.0"), "{}", s.dialect);
        }
    }
}
