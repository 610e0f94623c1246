//! Credentials for the `pool` routes (the seed has none): device tokens for
//! the SIM devices (`POST /phones`, `POST /vcodes`, `GET /sends/<cid>`),
//! each optionally bound to the channels (`cid`s) it may act for; consumer
//! tokens for `GET /mobiles/…` and `GET /vcodes/<app>`; admin tokens (or
//! root's HTTP Basic credentials) for `PUT /setsize`.
//!
//! A token is presented as `Authorization: Bearer <token>` or, for devices
//! that cannot set headers, as a `token` query parameter. A device token does
//! not open consumer routes, nor the reverse.
//!
//! With no device and no consumer token configured, [`PoolAuth::is_open`]:
//! every pool route is open as the seed has it (and `PUT /setsize` too,
//! unless an admin token is set). Once any device or consumer token is
//! configured, every pool route needs its own kind of credential.
//!
//! Tokens are kept only as SHA-256 digests and compared in constant time.

use std::collections::BTreeSet;

use sms_core::pool_service::DeviceScope;
use sms_core::secret::{Token, TokenHash};

use crate::params::Params;
use crate::service::Incoming;

/// A device token and the channels it is bound to (`None`: any).
#[derive(Debug, Clone)]
struct DeviceToken {
    hash: TokenHash,
    channels: Option<BTreeSet<String>>,
}

/// The configured pool credentials. Cheap to clone; `Debug` shows no token.
#[derive(Debug, Clone, Default)]
pub struct PoolAuth {
    devices: Vec<DeviceToken>,
    consumers: Vec<TokenHash>,
    admins: Vec<TokenHash>,
}

/// What a request to a pool route may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolAccess {
    /// Allowed; for device routes, acting for this scope.
    Allowed(DeviceScope),
    /// No credential of the right kind was presented (`401`).
    Refused,
}

fn checked(token: &str) -> Result<TokenHash, String> {
    let t = token.trim();
    if t.len() < 16 || t.len() > 256 || !t.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "a pool token must be 16 to 256 printable ASCII characters without spaces".into(),
        );
    }
    Ok(Token::from_client(t).hash())
}

impl PoolAuth {
    /// Adds a device token, written `TOKEN` (any channel) or
    /// `TOKEN=cid1,cid2` (only those channels).
    pub fn add_device(&mut self, spec: &str) -> Result<(), String> {
        let (token, channels) = match spec.split_once('=') {
            None => (spec, None),
            Some((token, cids)) => {
                let set: BTreeSet<String> = cids
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect();
                if set.is_empty() {
                    return Err("a device token bound with `=` needs at least one cid".into());
                }
                (token, Some(set))
            }
        };
        self.devices.push(DeviceToken {
            hash: checked(token)?,
            channels,
        });
        Ok(())
    }

    /// Adds a consumer token.
    pub fn add_consumer(&mut self, token: &str) -> Result<(), String> {
        self.consumers.push(checked(token)?);
        Ok(())
    }

    /// Adds an admin token (`PUT /setsize`).
    pub fn add_admin(&mut self, token: &str) -> Result<(), String> {
        self.admins.push(checked(token)?);
        Ok(())
    }

    /// Adds the tokens of a token file: one per line, `device TOKEN`,
    /// `device TOKEN=cid1,cid2`, `consumer TOKEN` or `admin TOKEN`; blank
    /// lines and lines starting with `#` are skipped.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kind, value) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("line {}: expected `KIND TOKEN`", i + 1))?;
            let value = value.trim();
            match kind {
                "device" => self.add_device(value),
                "consumer" => self.add_consumer(value),
                "admin" => self.add_admin(value),
                _ => Err("the kind must be device, consumer or admin".into()),
            }
            .map_err(|e| format!("line {}: {e}", i + 1))?;
        }
        Ok(())
    }

    /// True when no device and no consumer token is configured: the pool
    /// routes are open, as the seed has them.
    pub fn is_open(&self) -> bool {
        self.devices.is_empty() && self.consumers.is_empty()
    }

    /// True when no credential of any kind is configured.
    pub fn is_empty(&self) -> bool {
        self.is_open() && self.admins.is_empty()
    }

    /// The token a request presents: `Authorization: Bearer …`, else the
    /// `token` query parameter.
    fn presented(req: &Incoming) -> Option<TokenHash> {
        let header = req
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim().to_owned());
        let token = header.or_else(|| {
            Params::from_parts(req.query.as_deref(), None, b"")
                .text("token")
                .map(str::to_owned)
        })?;
        Some(Token::from_client(&token).hash())
    }

    /// Access of a request to a device route.
    pub fn device(&self, req: &Incoming) -> PoolAccess {
        if self.is_open() {
            return PoolAccess::Allowed(DeviceScope::Any);
        }
        let Some(presented) = Self::presented(req) else {
            return PoolAccess::Refused;
        };
        // Every configured token is compared, so the time does not tell
        // which one matched.
        let mut found = None;
        for d in &self.devices {
            if d.hash == presented && found.is_none() {
                found = Some(match &d.channels {
                    None => DeviceScope::Any,
                    Some(c) => DeviceScope::Channels(c.clone()),
                });
            }
        }
        found.map_or(PoolAccess::Refused, PoolAccess::Allowed)
    }

    /// Access of a request to a consumer route.
    pub fn consumer(&self, req: &Incoming) -> PoolAccess {
        if self.is_open() {
            return PoolAccess::Allowed(DeviceScope::Any);
        }
        Self::matches(&self.consumers, req)
    }

    /// Access of a request to `PUT /setsize` by token (root's HTTP Basic
    /// credentials are checked by the caller): open only when no credential
    /// at all is configured.
    pub fn admin(&self, req: &Incoming) -> PoolAccess {
        if self.is_empty() {
            return PoolAccess::Allowed(DeviceScope::Any);
        }
        Self::matches(&self.admins, req)
    }

    fn matches(list: &[TokenHash], req: &Incoming) -> PoolAccess {
        let Some(presented) = Self::presented(req) else {
            return PoolAccess::Refused;
        };
        let hit = list.iter().fold(false, |hit, h| hit | (*h == presented));
        if hit {
            PoolAccess::Allowed(DeviceScope::Any)
        } else {
            PoolAccess::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, query: Option<&str>) -> Incoming {
        let mut headers = http::HeaderMap::new();
        if let Some(a) = auth {
            headers.insert(http::header::AUTHORIZATION, a.parse().unwrap());
        }
        Incoming {
            query: query.map(str::to_owned),
            content_type: None,
            headers,
            body: bytes::Bytes::new(),
            client_ip: None,
        }
    }

    const DEV: &str = "device-token-0123456789";
    const CON: &str = "consumer-token-0123456789";

    #[test]
    fn tokens_open_their_own_kind_of_route_only() {
        let mut a = PoolAuth::default();
        assert!(a.is_open() && a.is_empty());
        assert_eq!(
            a.device(&req(None, None)),
            PoolAccess::Allowed(DeviceScope::Any)
        );
        a.add_file(&format!(
            "# pool credentials\ndevice {DEV}=dev-1, dev-2\n\nconsumer {CON}\n"
        ))
        .unwrap();
        assert!(!a.is_open());
        let bound = DeviceScope::Channels(["dev-1".into(), "dev-2".into()].into());
        let bearer = format!("Bearer {DEV}");
        assert_eq!(
            a.device(&req(Some(&bearer), None)),
            PoolAccess::Allowed(bound.clone())
        );
        let q = format!("token={DEV}");
        assert_eq!(a.device(&req(None, Some(&q))), PoolAccess::Allowed(bound));
        assert_eq!(a.consumer(&req(Some(&bearer), None)), PoolAccess::Refused);
        assert_eq!(a.device(&req(None, None)), PoolAccess::Refused);
        let c = format!("bearer {CON}");
        assert_eq!(
            a.consumer(&req(Some(&c), None)),
            PoolAccess::Allowed(DeviceScope::Any)
        );
        assert_eq!(a.device(&req(Some(&c), None)), PoolAccess::Refused);
        // Neither opens setsize (no admin token: root only).
        assert_eq!(a.admin(&req(Some(&c), None)), PoolAccess::Refused);
    }

    #[test]
    fn bad_token_specs_are_refused() {
        let mut a = PoolAuth::default();
        assert!(a.add_device("short").is_err());
        assert!(a.add_device(&format!("{DEV}=")).is_err());
        assert!(a.add_file("robot abcdefghijklmnopqrst").is_err());
        assert!(a.add_file("device").is_err());
    }
}
