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
    /// Starts a builder over `stores`; every message goes out through
    /// `sender`.
    pub fn builder(stores: Stores, sender: Arc<dyn CodeSender>) -> CoreBuilder {
        CoreBuilder {
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
}

/// Builds a [`Core`]; every port but the stores and the sender has a
/// production default (system clock, OS CSPRNG, argon2id).
#[derive(Debug)]
pub struct CoreBuilder {
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

    /// The server secret codes are hashed with. Keep it stable across
    /// restarts; without it a random one is drawn and outstanding codes die
    /// with the process.
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

    /// The carrier gateway for send tasks (default: a
    /// [`RecordingGateway`], which delivers nothing — set a real one).
    pub fn gateway(mut self, gateway: Arc<dyn MessageGateway>) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The event hub (default: [`LocalEventHub`], one process).
    pub fn events(mut self, events: Arc<dyn EventHub>) -> Self {
        self.events = Some(events);
        self
    }

    /// Assembles the services.
    pub fn build(self) -> Core {
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
        Core {
            accounts,
            codes,
            billing,
            pool,
            sending,
            events,
            stores: self.stores,
            clock,
            rng,
        }
    }
}
