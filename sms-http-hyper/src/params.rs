//! Request parameters of the form-style dialects (decision G2): the query
//! string, an `application/x-www-form-urlencoded` body, or a JSON object
//! body; a body value wins over a query value.

use std::collections::HashMap;

use serde_json::Value;

/// One parameter as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// A scalar, as text (JSON numbers and booleans in their JSON spelling).
    Text(String),
    /// Present with an unusable type (a JSON object or array).
    Invalid,
}

/// A parameter looked up by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field<'a> {
    /// Absent, JSON `null`, or the empty string.
    Missing,
    /// A non-empty value.
    Text(&'a str),
    /// Present with an unusable type.
    Invalid,
}

/// The merged parameters of a request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(HashMap<String, Param>);

impl Params {
    /// Merges the query string and the body. The body is read as JSON when
    /// the content type says so or it starts with `{`, else as a form. A body
    /// that is neither contributes nothing.
    pub fn from_parts(query: Option<&str>, content_type: Option<&str>, body: &[u8]) -> Self {
        let mut map = HashMap::new();
        if let Some(q) = query {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.insert(k.into_owned(), Param::Text(v.into_owned()));
            }
        }
        let trimmed = body.trim_ascii_start();
        let is_json = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"))
            || trimmed.starts_with(b"{");
        if is_json {
            if let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) {
                for (k, v) in obj {
                    let p = match v {
                        Value::Null => continue,
                        Value::String(s) => Param::Text(s),
                        Value::Number(n) => Param::Text(n.to_string()),
                        Value::Bool(b) => Param::Text(b.to_string()),
                        Value::Array(_) | Value::Object(_) => Param::Invalid,
                    };
                    map.insert(k, p);
                }
            }
        } else if !body.is_empty() {
            for (k, v) in form_urlencoded::parse(body) {
                map.insert(k.into_owned(), Param::Text(v.into_owned()));
            }
        }
        Self(map)
    }

    /// Sets a parameter (path segments use this).
    pub fn set(&mut self, name: &str, value: String) {
        self.0.insert(name.to_owned(), Param::Text(value));
    }

    /// The parameter `name`.
    pub fn field(&self, name: &str) -> Field<'_> {
        match self.0.get(name) {
            None => Field::Missing,
            Some(Param::Invalid) => Field::Invalid,
            Some(Param::Text(s)) if s.is_empty() => Field::Missing,
            Some(Param::Text(s)) => Field::Text(s),
        }
    }

    /// The parameter as text; an invalid type reads as `None`.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.field(name) {
            Field::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// Decodes `%XX` escapes of a path segment, keeping `+` as is (unlike a
/// form body) and malformed escapes as written; invalid UTF-8 is replaced.
pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_wins_over_query() {
        let p = Params::from_parts(
            Some("user=q&x=1"),
            Some("application/x-www-form-urlencoded"),
            b"user=b",
        );
        assert_eq!(p.text("user"), Some("b"));
        assert_eq!(p.text("x"), Some("1"));
    }

    #[test]
    fn json_body_types() {
        let p = Params::from_parts(None, None, br#"{"a":"s","n":1,"o":{},"z":null,"e":""}"#);
        assert_eq!(p.field("a"), Field::Text("s"));
        assert_eq!(p.field("n"), Field::Text("1"));
        assert_eq!(p.field("o"), Field::Invalid);
        assert_eq!(p.field("z"), Field::Missing);
        assert_eq!(p.field("e"), Field::Missing);
    }

    #[test]
    fn garbage_body_contributes_nothing() {
        let p = Params::from_parts(Some("a=1"), Some("application/json"), b"{not json");
        assert_eq!(p.text("a"), Some("1"));
        let p = Params::from_parts(None, None, &[0xff, 0xfe, b'=', 0x00]);
        assert_eq!(p.text("a"), None);
    }
}
