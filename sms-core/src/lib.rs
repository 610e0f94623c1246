//! # sms-core
//!
//! Domain types, ports and business rules for the SMS side of user accounts:
//! verification codes, phone and username accounts, registration grants and
//! password-reset permits. This crate performs no network or disk I/O; storage,
//! delivery of messages, time and randomness all reach it through ports
//! (object-safe async traits held as `Arc<dyn …>`), so every rule can be tested
//! with an in-memory store, a [`clock::ManualClock`] and a seeded random source.
//!
//! ## Overview
//!
//! * [`phone`], [`identity`]: validated values — phone numbers (E.164-capable,
//!   with the mainland-China normalisation), usernames, passwords, emails.
//! * [`secret`]: tokens and codes, and how they are hashed at rest.
//! * [`store`]: the storage ports, each with a written `# Contract`; [`memory`]
//!   serves them all in memory; `testkit` (feature `testkit`) is the
//!   conformance kit every backend runs.
//! * [`limits`]: the keyed-limit engine behind every cap, cooldown, lockout
//!   and the SMS-pumping breaker.
//! * [`codes`], [`accounts`]: verification codes and accounts.
//! * [`pool`], [`pool_service`], [`events`]: the code-receiving platform —
//!   numbers, leases, received SMS, pushes to live sessions.
//! * [`ledger`], [`billing`]: balances moved only by idempotent ledger
//!   operations.
//! * [`sending`], [`sending_service`], [`gateway`]: signatures, templates,
//!   audit, send tasks and the carrier port.
//! * [`carrier`]: the one outgoing port, [`carrier::Carrier`], which serves
//!   [`sender::CodeSender`] and [`gateway::MessageGateway`]; delivery statuses
//!   and receipts; [`delivery`]: the delivery queue (store port, memory
//!   implementation, retries with backoff) that codes go through.
//! * [`sender`]: the [`sender::CodeSender`] port for outgoing codes.
//! * [`Core`] wires all services to one set of ports.
//!
//! ## Usage
//!
//! ```
//! use std::sync::Arc;
//! use sms_core::prelude::*;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Arc::new(MemoryStore::new());
//! let outbox = Arc::new(RecordingSender::new());
//! // `Core::builder` in production: it also needs a stable code secret and
//! // a carrier, and refuses to build without them.
//! let core = Core::test_builder(Stores::from_single(store))
//!     .sender(outbox.clone())
//!     .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
//!     .build()
//!     .expect("a test builder always builds");
//! let token = core
//!     .accounts
//!     .sign_up_username("alice", "s3cret-pw")
//!     .await
//!     .unwrap();
//! let (user, _session) = core.accounts.authenticate(&token).await.unwrap();
//! assert_eq!(user.username.unwrap().as_str(), "alice");
//! # }
//! ```
//!
//! ## Implementing a custom store
//!
//! Implement the traits of [`store`] for your backend, keeping each
//! method's `# Contract`, then prove it with the conformance kit:
//!
//! ```ignore
//! sms_core::store_conformance_tests!(async { my_backend::Store::open_temp().await.into_stores() });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod accounts;
pub mod billing;
pub mod carrier;
pub mod clock;
pub mod code_decision;
pub mod codes;
pub mod core;
mod credentials;
pub mod delivery;
pub mod error;
pub mod events;
pub mod gateway;
pub mod identity;
pub mod ledger;
pub mod limits;
pub mod memory;
pub mod messages;
pub mod metered;
pub mod metrics;
pub mod password;
pub mod phone;
pub mod pool;
pub mod pool_service;
pub mod provision;
pub mod random;
pub mod receive;
pub mod secret;
pub mod sender;
pub mod sending;
pub mod sending_service;
pub mod session_decision;
pub mod store;
#[cfg(feature = "testkit")]
#[cfg_attr(docsrs, doc(cfg(feature = "testkit")))]
pub mod testkit;
pub mod user;

pub use crate::core::{BuildError, Core, CoreBuilder};
pub use error::{CoreError, StoreError};

/// The names most embedders need, in one import.
pub mod prelude {
    pub use crate::accounts::{AccountPolicy, Accounts, LoginOutcome, SessionOrigin};
    pub use crate::clock::{Clock, ManualClock, SystemClock};
    pub use crate::codes::{CodeAddress, CodePolicy, CodeService, Purpose};
    pub use crate::core::{BuildError, Core, CoreBuilder};
    pub use crate::error::{CoreError, StoreError};
    pub use crate::gateway::{MessageGateway, RecordingGateway};
    pub use crate::identity::{Email, Password, PasswordPolicy, Username};
    pub use crate::memory::MemoryStore;
    pub use crate::password::{Argon2Hasher, PasswordHasher};
    pub use crate::phone::PhoneNumber;
    pub use crate::random::{OsRandom, RandomSource, SeededRandom};
    pub use crate::secret::Token;
    pub use crate::sender::{Channel, CodeSender, OutboundMessage, RecordingSender};
    pub use crate::store::Stores;
    pub use crate::user::{User, UserId};
}
