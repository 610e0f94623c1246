//! Which address is the client's (decision G11): the TCP peer, unless the
//! peer is a trusted proxy; then the rightmost `X-Forwarded-For` address that
//! is not itself a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

/// The TCP peer of a request, inserted as a request extension by [`crate::serve`]
/// (embedders mounting [`crate::SmsService`] elsewhere insert it themselves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Trust these networks.
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    /// Parses a comma-separated list of CIDRs or addresses (`SMS_TRUSTED_PROXIES`).
    pub fn parse_list(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            nets.push(parse_net(part)?);
        }
        Ok(Self(nets))
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            match hop.parse::<IpAddr>() {
                Ok(ip) if self.trusts(ip) => client = ip,
                Ok(ip) => return ip,
                // A malformed entry: stop at the last trustworthy hop.
                Err(_) => return client,
            }
        }
        client
    }
}

/// Parses one CIDR (`10.0.0.0/8`) or a single address.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("not a CIDR or address: {s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let t = TrustedProxies::default();
        let peer: IpAddr = "1.2.3.4".parse().unwrap();
        assert_eq!(t.client_ip(peer, &headers("9.9.9.9")), peer);
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = TrustedProxies::parse_list("10.0.0.0/8, 127.0.0.1").unwrap();
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            t.client_ip(peer, &headers("6.6.6.6, 5.5.5.5, 10.1.1.1")),
            "5.5.5.5".parse::<IpAddr>().unwrap()
        );
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
        assert_eq!(t.client_ip(peer, &headers("garbage")), peer);
    }
}
