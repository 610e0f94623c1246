//! The `--carriers` file in the platform (carriers.md): carriers built from
//! it, codes and send tasks routed through them with in-order failover,
//! and `POST /carriers/<name>/receipts`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use sms_carriers::config::{CarrierSettings, CarriersConfig, Routes};
use sms_carriers::receipts;
use sms_core::carrier::{Carrier, CarrierGateway, FailoverCarrier, Receipt};
use sms_core::clock::Clock;
use sms_core::delivery::{Delivery, DeliveryQueue, QueuePolicy, QueuedSender};
use sms_core::gateway::{DeliveryError, GatewayAccepted, GatewayMessage, MessageGateway};
use sms_core::metrics::MeteredCarrier;
use sms_core::random::RandomSource;
use sms_core::sender::{Channel, CodeSender};
use sms_http_hyper::HttpBody;
use tokio::sync::mpsc;

use crate::outbox::{OutboxCarrier, OutboxSender};

/// A receipt as the platform gets it: the carrier's name, the receipt and,
/// for one that came over HTTP, where to say it was applied (the callback
/// is answered after that, so a provider whose receipt could not be stored
/// is not told it was taken).
pub type ReceiptEvent = (String, Receipt, Option<tokio::sync::oneshot::Sender<bool>>);

/// The carriers of a `--carriers` file, ready to route.
#[derive(Debug, Clone)]
pub struct Carriers {
    config: Arc<CarriersConfig>,
    by_name: Arc<BTreeMap<String, Arc<dyn Carrier>>>,
    fallback: Arc<dyn Carrier>,
    receipts: mpsc::UnboundedSender<ReceiptEvent>,
    codes: Arc<Delivery>,
    _stop: Arc<tokio::sync::watch::Sender<()>>,
}

/// Why a `--carriers` file was refused (names a line and key, or a
/// carrier; never a secret).
#[derive(Debug, thiserror::Error)]
pub enum CarriersError {
    /// The file could not be read.
    #[error("--carriers {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is wrong.
    #[error(transparent)]
    Config(#[from] sms_carriers::config::ConfigError),
    /// A carrier could not be built.
    #[error(transparent)]
    Build(#[from] sms_carriers::build::BuildError),
}

impl Carriers {
    /// Reads and builds `path`; `outbox` serves `kind = "outbox"` carriers
    /// without a `path` and every purpose without a route; codes wait in
    /// `queue` until a carrier accepts them. Receipts (HTTP and SMPP) are
    /// sent to the returned receiver.
    pub async fn load(
        path: &Path,
        clock: Arc<dyn Clock>,
        random: Arc<dyn RandomSource>,
        outbox: Arc<OutboxSender>,
        queue: Arc<dyn DeliveryQueue>,
    ) -> Result<(Self, mpsc::UnboundedReceiver<ReceiptEvent>), CarriersError> {
        let src = tokio::fs::read_to_string(path)
            .await
            .map_err(|error| CarriersError::Read {
                path: path.display().to_string(),
                error,
            })?;
        let config = sms_carriers::config::parse(&src)?;
        let mut files = BTreeMap::new();
        for c in &config.carriers {
            if let CarrierSettings::Outbox(o) = &c.settings {
                let sender = match &o.path {
                    Some(p) => Arc::new(OutboxSender::file(Path::new(p)).await.map_err(|e| {
                        sms_carriers::build::BuildError {
                            name: c.name.clone(),
                            problem: format!("outbox {p}: {e}"),
                        }
                    })?),
                    None => outbox.clone(),
                };
                files.insert(c.name.clone(), sender);
            }
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (smpp_tx, mut smpp_rx) = mpsc::unbounded_channel::<sms_carriers::smpp::SmppReceipt>();
        let make_outbox = |name: &str, _: &sms_carriers::config::OutboxConfig| {
            files
                .get(name)
                .map(|s| Arc::new(OutboxCarrier::new(name, s.clone())) as Arc<dyn Carrier>)
                .ok_or_else(|| "outbox not opened".to_string())
        };
        let by_name = sms_carriers::build::build(
            &config,
            &sms_carriers::build::Deps {
                clock: clock.clone(),
                random: random.clone(),
                outbox: &make_outbox,
                smpp_receipts: Some(smpp_tx),
            },
        )?;
        // Each carrier's offers are counted and timed under its own name,
        // below the failover of its route.
        let by_name: BTreeMap<String, Arc<dyn Carrier>> = by_name
            .into_iter()
            .map(|(name, c)| (name, MeteredCarrier::wrap(c)))
            .collect();
        let forward = tx.clone();
        tokio::spawn(async move {
            while let Some(r) = smpp_rx.recv().await {
                if forward.send((r.carrier, r.receipt, None)).is_err() {
                    return;
                }
            }
        });
        for (purpose, route) in [
            ("codes", &config.routes.codes),
            ("tasks", &config.routes.tasks),
            ("email", &config.routes.email),
        ] {
            match route {
                Some(r) => tracing::info!(purpose, route = ?r, "carrier route"),
                None => tracing::info!(purpose, "no carrier route: the outbox (G9)"),
            }
        }
        let config = Arc::new(config);
        let by_name = Arc::new(by_name);
        let fallback: Arc<dyn Carrier> =
            MeteredCarrier::wrap(Arc::new(OutboxCarrier::new("outbox", outbox)));
        let (c, b, f) = (config.clone(), by_name.clone(), fallback.clone());
        let codes = Delivery::new(
            queue,
            Arc::new(move |m: &sms_core::carrier::CarrierMessage| {
                route_of(&c.routes, &b, &f, m.channel, &m.to, false)
            }),
            clock,
            random,
            QueuePolicy::default(),
        );
        let codes = Arc::new(codes);
        // The worker ends with the last handle on these carriers.
        let (stop, mut stopped) = tokio::sync::watch::channel(());
        let worker = Arc::downgrade(&codes);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
                let Some(d) = worker.upgrade() else { return };
                if let Err(e) = d.work_once(100).await {
                    tracing::error!(error = %e, "delivery queue");
                }
            }
        });
        Ok((
            Self {
                config,
                by_name,
                fallback,
                receipts: tx,
                codes,
                _stop: Arc::new(stop),
            },
            rx,
        ))
    }

    /// The routes of the file.
    pub fn routes(&self) -> &Routes {
        &self.config.routes
    }

    /// The carrier route for a message.
    fn route(&self, channel: Channel, to: &str, tasks: bool) -> Arc<dyn Carrier> {
        route_of(
            &self.config.routes,
            &self.by_name,
            &self.fallback,
            channel,
            to,
            tasks,
        )
    }

    /// Codes through the delivery queue and their routes: accepted or only
    /// delayed is `Ok` (a delayed code stays queued and is offered again),
    /// refused by every carrier is the dialect's send failure.
    pub fn sender(&self) -> Arc<dyn CodeSender> {
        Arc::new(QueuedSender::new((*self.codes).clone()))
    }

    /// Send-task messages through their routes.
    pub fn gateway(&self) -> Arc<dyn MessageGateway> {
        Arc::new(RoutedGateway(self.clone()))
    }

    /// Answers `POST /carriers/<name>/receipts`: checks the token (Aliyun,
    /// Tencent) or the `X-Twilio-Signature` (Twilio), else 403; parses the
    /// provider's receipts; hands them on; answers as the provider expects.
    pub async fn receipts(&self, name: &str, req: Request<Incoming>) -> Response<HttpBody> {
        let Some(carrier) = self.config.carriers.iter().find(|c| c.name == name) else {
            return plain(StatusCode::NOT_FOUND, "");
        };
        if req.method() != http::Method::POST {
            return sms_http_hyper::service::method_not_allowed("POST");
        }
        let query = req.uri().query().unwrap_or("").to_string();
        let path = req.uri().path().to_string();
        let signature = req
            .headers()
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Limited::new(req.into_body(), 1024 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, ""),
        };
        let token_ok = |expected: &Option<sms_carriers::config::Secret>| {
            let given = form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v.into_owned());
            match (expected, given) {
                (Some(e), Some(g)) => {
                    sms_carriers::sign::ct_eq(e.expose().as_bytes(), g.as_bytes())
                }
                _ => false,
            }
        };
        let (parsed, answer) = match &carrier.settings {
            CarrierSettings::Aliyun(a) => {
                if !token_ok(&a.templates.callback_token) {
                    return plain(StatusCode::FORBIDDEN, "");
                }
                (receipts::aliyun(&body), receipts::ALIYUN_ANSWER)
            }
            CarrierSettings::Tencent(t) => {
                if !token_ok(&t.templates.callback_token) {
                    return plain(StatusCode::FORBIDDEN, "");
                }
                (receipts::tencent(&body), receipts::TENCENT_ANSWER)
            }
            CarrierSettings::Twilio(t) => {
                let url = if query.is_empty() {
                    format!("{}{path}", t.public_url)
                } else {
                    format!("{}{path}?{query}", t.public_url)
                };
                let r = receipts::twilio(t.auth_token.expose(), &url, signature.as_deref(), &body);
                if matches!(r, Err(receipts::ReceiptError::Unauthenticated)) {
                    return plain(StatusCode::FORBIDDEN, "");
                }
                (r, "")
            }
            _ => return plain(StatusCode::NOT_FOUND, ""),
        };
        match parsed {
            Ok(list) => {
                for r in list {
                    tracing::info!(carrier = name, id = %r.provider_id, status = r.status.as_str(), code = %r.carrier_code, "receipt");
                    let (done, applied) = tokio::sync::oneshot::channel();
                    if self
                        .receipts
                        .send((name.to_string(), r, Some(done)))
                        .is_err()
                    {
                        return plain(StatusCode::SERVICE_UNAVAILABLE, "");
                    }
                    // Answered once applied (or given up on): a store
                    // failure is a 500, which the provider retries.
                    match tokio::time::timeout(std::time::Duration::from_secs(10), applied).await {
                        Ok(Ok(true)) => {}
                        _ => return plain(StatusCode::INTERNAL_SERVER_ERROR, ""),
                    }
                }
                let mut resp = plain(StatusCode::OK, answer);
                if !answer.is_empty() {
                    resp.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/json"),
                    );
                }
                resp
            }
            Err(e) => {
                tracing::warn!(carrier = name, error = %e, "malformed receipt");
                plain(StatusCode::BAD_REQUEST, "")
            }
        }
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<HttpBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// The carrier route for a message: failover over the named carriers, or
/// the outbox when the purpose has no route.
fn route_of(
    routes: &Routes,
    by_name: &BTreeMap<String, Arc<dyn Carrier>>,
    fallback: &Arc<dyn Carrier>,
    channel: Channel,
    to: &str,
    tasks: bool,
) -> Arc<dyn Carrier> {
    let names = match channel {
        Channel::Email => routes.email.as_deref(),
        Channel::Sms => routes.for_sms(to, tasks),
    };
    match names {
        None => fallback.clone(),
        Some(names) => Arc::new(FailoverCarrier::new(
            names.join(","),
            names
                .iter()
                .filter_map(|n| by_name.get(n).cloned())
                .collect(),
        )),
    }
}

/// [`MessageGateway`] over the routes.
#[derive(Debug)]
struct RoutedGateway(Carriers);

#[async_trait]
impl MessageGateway for RoutedGateway {
    async fn deliver(&self, message: &GatewayMessage) -> Result<String, DeliveryError> {
        self.deliver_accepted(message).await.map(|a| a.id)
    }

    /// Says which carrier of the route accepted the message, so its
    /// receipts find the recipient.
    async fn deliver_accepted(
        &self,
        message: &GatewayMessage,
    ) -> Result<GatewayAccepted, DeliveryError> {
        let route = self.0.route(Channel::Sms, &message.to.to_string(), true);
        CarrierGateway::new(route).deliver_accepted(message).await
    }
}
