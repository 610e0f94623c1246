//! Which address is the client's (decision G11): the TCP peer, unless the
//! peer is a trusted proxy; then the rightmost `X-Forwarded-For` address that
//! is not itself a trusted proxy.

//!
//! The resolution happens in one place, [`TrustedProxies::client_ip`],
//! applied to each request by [`ClientIpLayer`] (a tower layer: the platform,
//! raw hyper and axum use the same one) and read back by every front end with
//! [`client_ip_of`].

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request};
use ipnet::IpNet;

/// The TCP peer of a request, inserted as a request extension by [`crate::serve`]
/// (embedders mounting [`crate::SmsService`] elsewhere insert it themselves,
/// e.g. from axum's `ConnectInfo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// The client's address after the trusted proxies were applied (decision
/// G11): a request extension inserted by [`ClientIpLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client's address of `req`: the [`ClientIp`] a [`ClientIpLayer`]
/// resolved, or else the [`ClientAddr`] peer resolved through `proxies`.
/// `None` when the request carries neither; then per-IP limits cannot apply,
/// and the first such request logs a warning saying how to fix it.
pub fn client_ip_of<B>(req: &Request<B>, proxies: &TrustedProxies) -> Option<IpAddr> {
    if let Some(ClientIp(ip)) = req.extensions().get::<ClientIp>() {
        return Some(*ip);
    }
    if let Some(ClientAddr(peer)) = req.extensions().get::<ClientAddr>() {
        return Some(proxies.client_ip(peer.ip(), req.headers()));
    }
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a request reached the SMS front ends without ClientAddr or ClientIp: per-IP limits \
             (code caps, probe budgets) do not apply to it; serve through sms_http_hyper::serve, \
             or insert ClientAddr (the TCP peer) and add ClientIpLayer"
        );
    }
    None
}

/// A tower layer that resolves each request's client address once (from its
/// [`ClientAddr`] and the trusted proxies) and inserts it as [`ClientIp`].
///
/// ```
/// use sms_http_hyper::{ClientIpLayer, TrustedProxies};
/// use tower_layer::Layer;
/// # let service = tower_service_fn();
/// # fn tower_service_fn() -> impl Clone { () }
/// let proxies = TrustedProxies::parse_list("10.0.0.0/8").unwrap();
/// let layered = ClientIpLayer::new(proxies).layer(service);
/// # let _ = layered;
/// ```
#[derive(Debug, Clone, Default)]
pub struct ClientIpLayer {
    proxies: Arc<TrustedProxies>,
}

impl ClientIpLayer {
    /// Resolves through these proxies.
    pub fn new(proxies: TrustedProxies) -> Self {
        Self {
            proxies: Arc::new(proxies),
        }
    }
}

impl<S> tower_layer::Layer<S> for ClientIpLayer {
    type Service = ClientIpService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientIpService {
            inner,
            proxies: self.proxies.clone(),
        }
    }
}

/// The service [`ClientIpLayer`] makes.
#[derive(Debug, Clone)]
pub struct ClientIpService<S> {
    inner: S,
    proxies: Arc<TrustedProxies>,
}

impl<S, B> tower_service::Service<Request<B>> for ClientIpService<S>
where
    S: tower_service::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if req.extensions().get::<ClientIp>().is_none() {
            if let Some(ClientAddr(peer)) = req.extensions().get::<ClientAddr>().copied() {
                let ip = self.proxies.client_ip(peer.ip(), req.headers());
                req.extensions_mut().insert(ClientIp(ip));
            }
        }
        self.inner.call(req)
    }
}

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
    fn the_layer_resolves_once_for_every_front_end() {
        use tower_layer::Layer;
        use tower_service::Service;
        #[derive(Clone)]
        struct Echo;
        impl Service<Request<()>> for Echo {
            type Response = Option<IpAddr>;
            type Error = std::convert::Infallible;
            type Future = std::future::Ready<Result<Option<IpAddr>, Self::Error>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, req: Request<()>) -> Self::Future {
                // A front end that trusts nobody still sees the resolved address.
                std::future::ready(Ok(client_ip_of(&req, &TrustedProxies::default())))
            }
        }
        let mut svc =
            ClientIpLayer::new(TrustedProxies::parse_list("127.0.0.1").unwrap()).layer(Echo);
        let mut req = Request::new(());
        req.headers_mut()
            .insert("x-forwarded-for", "5.5.5.5".parse().unwrap());
        req.extensions_mut()
            .insert(ClientAddr("127.0.0.1:9".parse().unwrap()));
        let got = futures_util::FutureExt::now_or_never(svc.call(req))
            .unwrap()
            .unwrap();
        assert_eq!(got, Some("5.5.5.5".parse().unwrap()));
        // Without the layer, the peer is resolved through the given proxies.
        let mut req = Request::new(());
        req.extensions_mut()
            .insert(ClientAddr("127.0.0.1:9".parse().unwrap()));
        req.headers_mut()
            .insert("x-forwarded-for", "5.5.5.5".parse().unwrap());
        assert_eq!(
            client_ip_of(&req, &TrustedProxies::default()),
            Some("127.0.0.1".parse().unwrap())
        );
        assert_eq!(
            client_ip_of(&Request::new(()), &TrustedProxies::default()),
            None
        );
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
