//! Assembly: [`Core`] wires the services to their ports.

use std::sync::Arc;

use crate::accounts::{AccountPolicy, Accounts};
use crate::billing::Billing;
use crate::clock::{Clock, SystemClock};
use crate::codes::{CodePolicy, CodeService};
use crate::events::{EventHub, LocalEventHub};
use crate::gateway::{MessageGateway, RecordingGateway};
use crate::password::{Argon2Hasher, PasswordHasher};
use crate::pool_service::{PoolPolicy, PoolService};
use crate::provision::{ChatProvisioner, RandomProvisioner};
use crate::random::{OsRandom, RandomSource};
use crate::secret::CodeHasher;
use crate::sender::CodeSender;
use crate::sending_service::{SendPolicy, SendService};
use crate::store::Stores;

/// The core's services, sharing one set of ports.
#[derive(Debug, Clone)]
pub struct Core {
    /// Accounts and sessions.
    pub accounts: Arc<Accounts>,
    /// Verification codes.
    pub codes: Arc<CodeService>,
    /// Balances and the ledger.
    pub billing: Arc<Billing>,
    /// Number pool, leases, received SMS.
    pub pool: Arc<PoolService>,
    /// Signatures, templates and send tasks.
    pub sending: Arc<SendService>,
    /// Events for live sessions.
    pub events: Arc<dyn EventHub>,
    /// The stores.
    pub stores: Stores,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The random source.
    pub rng: Arc<dyn RandomSource>,
}

impl Core {
    /// Starts a builder over `stores`; every code goes out through `sender`.
    ///
    /// A production core also needs a stable code secret
    /// ([`CoreBuilder::code_secret`], e.g. parsed by [`crate::secret::parse_code_secret`]
    /// from a file or the environment)
    /// and a carrier for send tasks ([`CoreBuilder::gateway`]):
    /// [`CoreBuilder::build`] fails without them rather than fall back to a
    /// per-process secret (codes dying on restart, unverifiable by another
    /// node) or a gateway that delivers nothing.
    pub fn builder(stores: Stores, sender: Arc<dyn CodeSender>) -> CoreBuilder {
        CoreBuilder {
            test: false,
            stores,
            sender,
            clock: None,
            rng: None,
            hasher: None,
            provisioner: None,
            code_secret: None,
            code_policy: CodePolicy::default(),
            account_policy: AccountPolicy::default(),
            pool_policy: PoolPolicy::default(),
            send_policy: SendPolicy::default(),
            events: None,
            gateway: None,
        }
    }

    /// A builder for tests and examples, never for production: it records
    /// outgoing codes in a [`crate::sender::RecordingSender`] (replace it with
    /// [`CoreBuilder::sender`]), draws a random code secret per process and
    /// sends tasks to a [`RecordingGateway`] that delivers nothing, unless
    /// told otherwise. Its [`CoreBuilder::build`] never fails.
    pub fn test_builder(stores: Stores) -> CoreBuilder {
        let mut b = Self::builder(stores, Arc::new(crate::sender::RecordingSender::new()));
        b.test = true;
        b
    }
}

/// Why a [`CoreBuilder`] could not build: a production core lacks what it
/// must not do without.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No code secret: codes would be hashed under a per-process random key,
    /// die on restart and be uncheckable by another node.
    #[error("no code secret: set CoreBuilder::code_secret (parse one with sms_core::secret::parse_code_secret), or use Core::test_builder in tests")]
    MissingCodeSecret,
    /// No carrier for send tasks: tasks would end "done" and be charged
    /// while nothing is delivered.
    #[error(
        "no carrier for send tasks: set CoreBuilder::gateway, or use Core::test_builder in tests"
    )]
    MissingGateway,
}

/// Builds a [`Core`]; every port but the stores and the sender has a
/// production default (system clock, OS CSPRNG, argon2id).
#[derive(Debug)]
pub struct CoreBuilder {
    test: bool,
    stores: Stores,
    sender: Arc<dyn CodeSender>,
    clock: Option<Arc<dyn Clock>>,
    rng: Option<Arc<dyn RandomSource>>,
    hasher: Option<Arc<dyn PasswordHasher>>,
    provisioner: Option<Arc<dyn ChatProvisioner>>,
    code_secret: Option<[u8; 32]>,
    code_policy: CodePolicy,
    account_policy: AccountPolicy,
    pool_policy: PoolPolicy,
    send_policy: SendPolicy,
    events: Option<Arc<dyn EventHub>>,
    gateway: Option<Arc<dyn MessageGateway>>,
}

impl CoreBuilder {
    /// The clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The random source (default [`OsRandom`]).
    pub fn random(mut self, rng: Arc<dyn RandomSource>) -> Self {
        self.rng = Some(rng);
        self
    }

    /// The password hasher (default argon2id, [`Argon2Hasher::new`]).
    pub fn password_hasher(mut self, hasher: Arc<dyn PasswordHasher>) -> Self {
        self.hasher = Some(hasher);
        self
    }

    /// The chat provisioner (default [`RandomProvisioner`]).
    pub fn provisioner(mut self, p: Arc<dyn ChatProvisioner>) -> Self {
        self.provisioner = Some(p);
        self
    }

    /// Where codes go (replaces the builder's sender).
    pub fn sender(mut self, sender: Arc<dyn CodeSender>) -> Self {
        self.sender = sender;
        self
    }

    /// The server secret codes are hashed with. Keep it stable across
    /// restarts and share it between the nodes of one deployment; required
    /// by [`Core::builder`].
    pub fn code_secret(mut self, secret: [u8; 32]) -> Self {
        self.code_secret = Some(secret);
        self
    }

    /// Code rules (default: decision G7).
    pub fn code_policy(mut self, policy: CodePolicy) -> Self {
        self.code_policy = policy;
        self
    }

    /// Account rules (default: decision G8).
    pub fn account_policy(mut self, policy: AccountPolicy) -> Self {
        self.account_policy = policy;
        self
    }

    /// Pool rules (default: the `hub` and `pool` decisions).
    pub fn pool_policy(mut self, policy: PoolPolicy) -> Self {
        self.pool_policy = policy;
        self
    }

    /// Sending rules (default: the `sendapi` decisions).
    pub fn send_policy(mut self, policy: SendPolicy) -> Self {
        self.send_policy = policy;
        self
    }

    /// The carrier gateway for send tasks; required by [`Core::builder`]
    /// ([`Core::test_builder`] defaults to a [`RecordingGateway`], which
    /// delivers nothing).
    pub fn gateway(mut self, gateway: Arc<dyn MessageGateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The event hub (default: [`LocalEventHub`], one process).
    pub fn events(mut self, events: Arc<dyn EventHub>) -> Self {
        self.events = Some(events);
        self
    }

    /// Assembles the services; fails when a production builder lacks its
    /// code secret or carrier ([`BuildError`]).
    pub fn build(self) -> Result<Core, BuildError> {
        if !self.test {
            if self.code_secret.is_none() {
                return Err(BuildError::MissingCodeSecret);
            }
            if self.gateway.is_none() {
                return Err(BuildError::MissingGateway);
            }
        }
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let rng = self.rng.unwrap_or_else(|| Arc::new(OsRandom));
        let hasher = self
            .hasher
            .unwrap_or_else(|| Arc::new(Argon2Hasher::new(Arc::new(OsRandom))));
        let provisioner = self
            .provisioner
            .unwrap_or_else(|| Arc::new(RandomProvisioner::new(rng.clone())));
        let code_hasher = match self.code_secret {
            Some(k) => CodeHasher::new(k),
            None => CodeHasher::random(rng.as_ref()),
        };
        let codes = Arc::new(CodeService::new(
            self.stores.clone(),
            self.sender,
            clock.clone(),
            rng.clone(),
            code_hasher,
            self.code_policy,
        ));
        let events = self
            .events
            .unwrap_or_else(|| Arc::new(LocalEventHub::new()));
        let accounts = Arc::new(Accounts::new(
            self.stores.clone(),
            codes.clone(),
            hasher,
            provisioner,
            events.clone(),
            clock.clone(),
            rng.clone(),
            self.account_policy,
        ));
        let billing = Arc::new(Billing::new(
            self.stores.clone(),
            clock.clone(),
            rng.clone(),
        ));
        let pool = Arc::new(PoolService::new(
            self.stores.clone(),
            billing.clone(),
            events.clone(),
            clock.clone(),
            rng.clone(),
            self.pool_policy,
        ));
        let gateway = self
            .gateway
            .unwrap_or_else(|| Arc::new(RecordingGateway::new()));
        let sending = Arc::new(SendService::new(
            self.stores.clone(),
            billing.clone(),
            gateway,
            clock.clone(),
            rng.clone(),
            self.send_policy,
        ));
        Ok(Core {
            accounts,
            codes,
            billing,
            pool,
            sending,
            events,
            stores: self.stores,
            clock,
            rng,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryStore;
    use crate::sender::RecordingSender;

    fn stores() -> Stores {
        Stores::from_single(Arc::new(MemoryStore::new()))
    }

    #[test]
    fn a_production_core_needs_a_secret_and_a_carrier() {
        let sender = Arc::new(RecordingSender::new());
        let err = Core::builder(stores(), sender.clone())
            .gateway(Arc::new(RecordingGateway::new()))
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::MissingCodeSecret);
        let err = Core::builder(stores(), sender.clone())
            .code_secret([7; 32])
            .build()
            .unwrap_err();
        assert_eq!(err, BuildError::MissingGateway);
        assert!(Core::builder(stores(), sender)
            .code_secret([7; 32])
            .gateway(Arc::new(RecordingGateway::new()))
            .build()
            .is_ok());
        assert!(Core::test_builder(stores()).build().is_ok());
    }
}
