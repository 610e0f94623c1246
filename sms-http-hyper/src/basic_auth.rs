//! HTTP Basic credentials (RFC 7617), read once for every unit that takes
//! them: `sendapi`, the root routes and the pool's `PUT /setsize`. A leaf
//! module: it knows headers, not users; checking the credentials is the
//! core's ([`sms_core::accounts::Accounts::verify_credentials_from`]).

use base64::Engine;
use http::HeaderMap;

/// Longest encoded credentials read; anything longer is no credentials.
const MAX_ENCODED: usize = 1024;

/// The user and password of an `Authorization: Basic …` header, or `None`
/// when the header is missing, of another scheme, too long or not
/// base64 of UTF-8 `user:password`.
pub fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || rest.len() > MAX_ENCODED {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn reads_user_and_password_and_refuses_everything_else() {
        // "alice:pa:ss" — the password may hold colons.
        assert_eq!(
            credentials(&headers("Basic YWxpY2U6cGE6c3M=")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(
            credentials(&headers("basic YWxpY2U6cGE6c3M=")),
            Some(("alice".into(), "pa:ss".into()))
        );
        assert_eq!(credentials(&HeaderMap::new()), None);
        assert_eq!(credentials(&headers("Bearer abc")), None);
        assert_eq!(credentials(&headers("Basic !!!")), None);
        // "alice" without a colon.
        assert_eq!(credentials(&headers("Basic YWxpY2U=")), None);
        let long = format!("Basic {}", "A".repeat(MAX_ENCODED + 4));
        assert_eq!(credentials(&headers(&long)), None);
    }
}
