//! Carriers from a parsed `--carriers` file.

use std::collections::BTreeMap;
use std::sync::Arc;

use sms_core::carrier::Carrier;
use sms_core::clock::Clock;
use sms_core::random::RandomSource;

use crate::config::{CarrierSettings, CarriersConfig, OutboxConfig};

/// Makes the `outbox` carrier named by the first argument.
pub type OutboxFactory<'a> = &'a dyn Fn(&str, &OutboxConfig) -> Result<Arc<dyn Carrier>, String>;

/// What the carriers need from the platform.
pub struct Deps<'a> {
    /// Time (signatures, timestamps).
    pub clock: Arc<dyn Clock>,
    /// Randomness (nonces).
    pub random: Arc<dyn RandomSource>,
    /// Makes an `outbox` carrier (the outbox lives in the platform).
    pub outbox: OutboxFactory<'a>,
    /// Where SMPP receipts go.
    #[cfg(feature = "smpp")]
    pub smpp_receipts: Option<tokio::sync::mpsc::UnboundedSender<crate::smpp::SmppReceipt>>,
}

/// A carrier that could not be built (its kind's feature is off, a bad
/// address …). Names the carrier, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("carrier `{name}`: {problem}")]
pub struct BuildError {
    /// The carrier.
    pub name: String,
    /// What went wrong.
    pub problem: String,
}

/// Builds every carrier of `config`, by name, each wrapped in a
/// [`Resilient`](crate::resilient::Resilient) with its delivery policy.
/// SMPP carriers start their connection task: call inside a tokio runtime.
pub fn build(
    config: &CarriersConfig,
    deps: &Deps<'_>,
) -> Result<BTreeMap<String, Arc<dyn Carrier>>, BuildError> {
    let mut out = BTreeMap::new();
    #[cfg(feature = "http")]
    let client = crate::http::HttpClient::new().map_err(|e| BuildError {
        name: "(http)".into(),
        problem: e.to_string(),
    })?;
    for c in &config.carriers {
        let err = |p: String| BuildError {
            name: c.name.clone(),
            problem: p,
        };
        let off = || {
            err(format!(
                "kind `{}` is not compiled in (cargo feature)",
                c.settings.kind()
            ))
        };
        let carrier: Arc<dyn Carrier> = match &c.settings {
            #[cfg(feature = "aliyun")]
            CarrierSettings::Aliyun(a) => Arc::new(crate::aliyun::Aliyun::new(
                &c.name,
                a.clone(),
                client.clone(),
                deps.clock.clone(),
                deps.random.clone(),
            )),
            #[cfg(feature = "tencent")]
            CarrierSettings::Tencent(t) => Arc::new(crate::tencent::Tencent::new(
                &c.name,
                t.clone(),
                client.clone(),
                deps.clock.clone(),
            )),
            #[cfg(feature = "twilio")]
            CarrierSettings::Twilio(t) => Arc::new(crate::twilio::Twilio::new(
                &c.name,
                t.clone(),
                client.clone(),
            )),
            #[cfg(feature = "smpp")]
            CarrierSettings::Smpp(s) => Arc::new(crate::smpp::Smpp::start(
                &c.name,
                s.clone(),
                deps.smpp_receipts.clone(),
            )),
            #[cfg(feature = "smtp")]
            CarrierSettings::Smtp(s) => Arc::new(crate::smtp::Smtp::new(&c.name, s).map_err(err)?),
            CarrierSettings::Outbox(o) => (deps.outbox)(&c.name, o).map_err(err)?,
            #[allow(unreachable_patterns)]
            _ => return Err(off()),
        };
        let carrier: Arc<dyn Carrier> = Arc::new(crate::resilient::Resilient::new(
            carrier,
            c.delivery,
            deps.clock.clone(),
            deps.random.clone(),
        ));
        out.insert(c.name.clone(), carrier);
    }
    Ok(out)
}
