//! Storage ports. Each trait is object-safe, held as `Arc<dyn …>`, and says in
//! its `# Contract` what a backend must guarantee; the conformance kit
//! (`sms_core::testkit`, feature `testkit`) checks exactly that.
//!
//! The records' state transitions ([`CodeRecord::redeem`],
//! [`Grant::consume`], [`crate::limits::LimitState::record`]) are pure
//! functions of this crate: a backend loads the record, calls the
//! transition, and stores the result in one atomic step.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::code_decision::{CodeDecision, CodeVerdict};
use crate::error::StoreError;
use crate::events::Push;
use crate::identity::{Email, Username};
use crate::ledger::{Balance, Hold, LedgerEntry, LedgerOutcome, LedgerRequest};
use crate::limits::{LimitCheck, LimitDecision};
use crate::phone::PhoneNumber;
use crate::pool::{
    DeviceMessage, Intake, Item, Lease, LeaseOutcome, LeaseRequest, NumberInfo, PoolNumber,
    PoolStats, ReceivedSms,
};
use crate::receive::{ReceiveOutcome, ReceiveRequest};
use crate::secret::{CodeHash, TokenHash};
use crate::sending::{
    ReceiptOutcome, ReceiptUpdate, RecipientStatus, SendTask, Signature, TaskState, Template,
};
use crate::session_decision::OpenSession;
use crate::user::{User, UserChange, UserId};

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// A unique key a user is found by ([`UserStore::user`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserKey {
    /// The user's id.
    Id(UserId),
    /// The username, compared by [`Username::key`] (case-insensitive).
    Username(Username),
    /// The phone.
    Phone(PhoneNumber),
    /// The email.
    Email(Email),
}

/// Accounts and their unique indexes.
///
/// # Contract
/// * Username (by [`Username::key`]), phone and email are each unique across
///   all users; a write that would break that fails with
///   [`StoreError::Conflict`] naming the field, and changes nothing.
/// * [`user`](Self::user) finds a user by any of its unique keys (id,
///   username, phone, email) and by nothing else.
/// * [`create_user`](Self::create_user) and
///   [`update_user`](Self::update_user) are atomic: concurrent callers racing
///   for one username, phone or email see exactly one winner.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait UserStore: Debug + Send + Sync + 'static {
    /// Inserts a new user.
    async fn create_user(&self, user: User) -> StoreResult<()>;
    /// The user with this id, username (case-insensitive), phone or email.
    async fn user(&self, key: &UserKey) -> StoreResult<Option<User>>;
    /// Applies `change` atomically and returns the record as it was before.
    /// [`StoreError::NotFound`] if there is no such user.
    async fn update_user(&self, id: &UserId, change: UserChange) -> StoreResult<User>;
}

/// How a session token came to be; drives `hub`'s login `flag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOrigin {
    /// Issued at sign-up.
    Signup,
    /// Issued by a login.
    Login,
    /// Issued by a login after the user's previous session had expired.
    Renewal,
    /// Issued by a password change.
    PasswordChange,
    /// Issued by an account recovery (`hub` forgot/verify).
    Recovery,
}

/// A session, keyed by the hash of its bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 of the token.
    pub token_hash: TokenHash,
    /// Whose session.
    pub user_id: UserId,
    /// How it was issued.
    pub origin: SessionOrigin,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the session is invalid from this instant.
    pub expires_at: i64,
    /// When it was first used to open a (WebSocket) session.
    pub first_used_at: Option<i64>,
    /// Assigned by the store when the session is opened: larger than that
    /// of every session opened before it (the per-user cap evicts by it).
    /// Sessions stored before it existed read as 0.
    #[serde(default)]
    pub seq: u64,
}

/// Which sessions [`SessionStore::revoke`] deletes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeScope {
    /// The one session with this token hash.
    Session(TokenHash),
    /// Every session of a user, except `keep`.
    User {
        /// Whose sessions.
        user_id: UserId,
        /// The session to spare, if any.
        keep: Option<TokenHash>,
    },
}

/// Session tokens.
///
/// # Contract
/// * [`open_session`](Self::open_session) loads every session of the user,
///   applies [`OpenSession::apply`] with a sequence number larger than that
///   of every session opened before, and commits in one atomic step: the
///   new user (if any, with [`UserStore`]'s uniqueness: a taken field fails
///   with [`StoreError::Conflict`] and changes nothing), the new session,
///   and the revocation of the sessions it evicts. Concurrent opens for one
///   user never leave more than `max_sessions` live sessions.
/// * Sessions are found only by the hash of their token.
/// * [`mark_session_used`](Self::mark_session_used) sets `first_used_at` once:
///   of concurrent callers exactly one sees the session before it was set.
/// * After [`revoke`](Self::revoke) returns, the sessions it revoked are
///   not returned by any call.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SessionStore: Debug + Send + Sync + 'static {
    /// Opens a session, with its sign-up if any (see the contract); returns
    /// the session as stored.
    async fn open_session(&self, request: OpenSession) -> StoreResult<Session>;
    /// The session with this token hash, expired or not.
    async fn session(&self, token_hash: &TokenHash) -> StoreResult<Option<Session>>;
    /// Sets `first_used_at = now` if unset; returns the session as it was
    /// before, or `None` if there is no such session.
    async fn mark_session_used(
        &self,
        token_hash: &TokenHash,
        now: i64,
    ) -> StoreResult<Option<Session>>;
    /// Deletes the sessions `scope` names; returns how many existed (0 or
    /// 1 for [`RevokeScope::Session`]).
    async fn revoke(&self, scope: RevokeScope) -> StoreResult<usize>;
    /// Every session of a user, any order.
    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>>;
}

/// What a code proves: the purpose it was issued for (decision G9 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// `telsignup` validation.
    Signup,
    /// `account_v4` sign-up.
    Register,
    /// Password recovery (`account_v4`, `hub`).
    Reset,
    /// `hub` email binding.
    BindEmail,
    /// A purpose of the embedder's own (login, 2FA, change of phone, …),
    /// under the same rules and limits as the built-in ones.
    Custom(CustomPurpose),
}

impl Purpose {
    /// The purposes the dialects use.
    pub const BUILT_IN: [Purpose; 4] = [Self::Signup, Self::Register, Self::Reset, Self::BindEmail];

    /// A purpose of the embedder's own: 1–24 of `a-z`, `0-9`, `_`, and not
    /// one of the built-in names.
    pub fn custom(name: &str) -> Result<Self, crate::error::CoreError> {
        CustomPurpose::new(name).map(Self::Custom)
    }

    /// The wire name (`signup`, `register`, `reset`, `bind_email`, or the
    /// custom name).
    pub fn as_str(&self) -> &str {
        match self {
            Self::Signup => "signup",
            Self::Register => "register",
            Self::Reset => "reset",
            Self::BindEmail => "bind_email",
            Self::Custom(c) => c.as_str(),
        }
    }
}

/// The name of an embedder's own code purpose (see [`Purpose::custom`]);
/// small and `Copy` like the built-in purposes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CustomPurpose {
    len: u8,
    bytes: [u8; CustomPurpose::MAX_LEN],
}

impl CustomPurpose {
    /// The longest name.
    pub const MAX_LEN: usize = 24;

    fn new(name: &str) -> Result<Self, crate::error::CoreError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !Purpose::BUILT_IN.iter().any(|p| p.as_str() == name);
        if !ok {
            return Err(crate::error::CoreError::InvalidParameter(
                "a custom purpose is 1-24 of a-z, 0-9, _ and not a built-in name",
            ));
        }
        let mut bytes = [0u8; Self::MAX_LEN];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Ok(Self {
            len: name.len() as u8,
            bytes,
        })
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Built only from ASCII in `new`.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Debug for CustomPurpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl Serialize for CustomPurpose {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CustomPurpose {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

/// Identifies the one live code per (address, purpose).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CodeKey {
    /// The normalised address (E.164 phone or lowercased email).
    pub address: String,
    /// What it is for.
    pub purpose: Purpose,
}

impl CodeKey {
    /// A flat key for backends: `purpose|address`.
    pub fn flat(&self) -> String {
        format!("{}|{}", self.purpose.as_str(), self.address)
    }
}

/// A stored verification code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeRecord {
    /// Address and purpose.
    pub key: CodeKey,
    /// HMAC of the code.
    pub hash: CodeHash,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; invalid from this instant.
    pub expires_at: i64,
    /// Wrong tries so far.
    pub attempts: u32,
    /// Redeemed already.
    pub used: bool,
}

/// The outcome of presenting a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeemOutcome {
    /// Matched; the code is now used.
    Redeemed,
    /// Wrong; `attempts_left` tries remain.
    Mismatch {
        /// Tries left before the code is void.
        attempts_left: u32,
    },
    /// No code for this key.
    Missing,
    /// Past its expiry.
    Expired,
    /// Void after too many wrong tries.
    Exhausted,
    /// Already redeemed.
    Used,
}

impl CodeRecord {
    /// The transition of presenting `presented` at `now`: marks the record
    /// used on a match, counts a wrong try otherwise. Comparison is
    /// constant-time.
    pub fn redeem(&mut self, presented: &CodeHash, now: i64, max_attempts: u32) -> RedeemOutcome {
        if self.used {
            return RedeemOutcome::Used;
        }
        if now >= self.expires_at {
            return RedeemOutcome::Expired;
        }
        if self.attempts >= max_attempts {
            return RedeemOutcome::Exhausted;
        }
        if self.hash == *presented {
            self.used = true;
            RedeemOutcome::Redeemed
        } else {
            self.attempts += 1;
            RedeemOutcome::Mismatch {
                attempts_left: max_attempts.saturating_sub(self.attempts),
            }
        }
    }
}

/// Verification codes, one live code per [`CodeKey`], and the limit states
/// their decisions touch.
///
/// # Contract
/// * [`decide_code`](Self::decide_code) loads the code record of
///   [`CodeDecision::key`] and the limit states of
///   [`CodeDecision::limit_keys`] (the same states
///   [`LimitStore`] reads and writes), applies [`CodeDecision::apply`], and
///   stores what changed, all in one atomic step: of concurrent issues within
///   one cooldown at most one stores a code, a refused issue counts against
///   no cap, of concurrent checks presenting the right code exactly one gets
///   [`RedeemOutcome::Redeemed`], and no wrong try or failure is lost. A
///   grant the transition sets ([`crate::code_decision::CodeState::grant`])
///   is stored (as [`GrantStore::put_grant`] would) in the same step.
/// * A decision that changes nothing writes nothing.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait CodeStore: Debug + Send + Sync + 'static {
    /// Applies one decision on codes (see the contract).
    async fn decide_code(&self, decision: CodeDecision) -> StoreResult<CodeVerdict>;
    /// The current code record of `key`.
    async fn code(&self, key: &CodeKey) -> StoreResult<Option<CodeRecord>>;
}

/// What a grant permits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// `telsignup`: register this phone (token-bound).
    Registration,
    /// `account_v4`: reset this phone's password.
    PasswordReset,
}

/// A single-use permission earned by checking a code, one per (kind, phone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// What it permits.
    pub kind: GrantKind,
    /// For which phone.
    pub phone: PhoneNumber,
    /// The token that must be presented, if any.
    pub token_hash: Option<TokenHash>,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; invalid from this instant.
    pub expires_at: i64,
    /// Consumed already.
    pub used: bool,
}

/// The outcome of consuming a grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// Consumed now.
    Consumed,
    /// No grant was ever issued for this (kind, phone).
    Missing,
    /// The presented token does not match.
    Mismatch,
    /// Past its expiry.
    Expired,
    /// Consumed before.
    Used,
}

impl Grant {
    /// The transition of consuming with `presented` at `now`.
    pub fn consume(&mut self, presented: Option<&TokenHash>, now: i64) -> ConsumeOutcome {
        if let Some(expected) = &self.token_hash {
            match presented {
                Some(p) if p == expected => {}
                _ => return ConsumeOutcome::Mismatch,
            }
        }
        if self.used {
            return ConsumeOutcome::Used;
        }
        if now >= self.expires_at {
            return ConsumeOutcome::Expired;
        }
        self.used = true;
        ConsumeOutcome::Consumed
    }
}

/// Registration grants and reset permits.
///
/// # Contract
/// * One grant per (kind, phone): [`put_grant`](Self::put_grant) replaces.
/// * [`consume_grant`](Self::consume_grant) applies [`Grant::consume`]
///   atomically: of concurrent callers exactly one gets
///   [`ConsumeOutcome::Consumed`].
/// * Used and expired grants stay readable (so "never validated" can be told
///   from "validated, token stale").
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait GrantStore: Debug + Send + Sync + 'static {
    /// Stores a grant, replacing the previous one of its (kind, phone).
    async fn put_grant(&self, grant: Grant) -> StoreResult<()>;
    /// The grant of (kind, phone).
    async fn grant(&self, kind: GrantKind, phone: &PhoneNumber) -> StoreResult<Option<Grant>>;
    /// Consumes the grant of (kind, phone).
    async fn consume_grant(
        &self,
        kind: GrantKind,
        phone: &PhoneNumber,
        presented: Option<TokenHash>,
        now: i64,
    ) -> StoreResult<ConsumeOutcome>;
}

/// What [`LimitStore::check`] does besides evaluating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// Check-and-record, all or nothing: a hit on every key only if every
    /// check passes.
    Acquire,
    /// Check only; records nothing.
    Peek,
}

/// State of the keyed-limit engine ([`crate::limits`]).
///
/// # Contract
/// * [`check`](Self::check) evaluates every check with
///   [`crate::limits::evaluate`]; with [`LimitMode::Acquire`] it records,
///   only if all pass, a hit on every key, all in one atomic step:
///   concurrent callers never get more hits allowed than a rule's `max`.
///   With [`LimitMode::Peek`] it records nothing.
/// * [`record`](Self::record) records a hit unconditionally
///   ([`crate::limits::LimitState::record`]).
/// * [`reset`](Self::reset) forgets a key.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LimitStore: Debug + Send + Sync + 'static {
    /// Evaluates `checks` at `now`, recording as `mode` says (see the
    /// contract).
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: LimitMode,
    ) -> StoreResult<LimitDecision>;
    /// Record a hit.
    async fn record(&self, check: &LimitCheck, now: i64) -> StoreResult<()>;
    /// Forget a key.
    async fn reset(&self, key: &str) -> StoreResult<()>;
}

/// Pool size when none was set (`/setsize`).
pub const DEFAULT_POOL_SIZE: u32 = 100;

/// The pool of phone numbers and their leases.
///
/// # Contract
/// * [`intake`](Self::intake) is atomic: of the entries, numbers already in
///   the pool refresh their metadata and are listed in `used` without counting
///   against the size; new numbers are taken, in order, while the count of
///   available numbers (stored minus those under an unsettled lease) is below
///   the pool size; `full` is true when no entry was taken for that reason.
/// * A number is leased to at most one user at a time, and never handed out
///   (by [`hand_out`](Self::hand_out) or [`lease`](Self::lease)) twice for
///   the same item/app: concurrent callers never get the same number.
/// * [`lease`](Self::lease) is one atomic step with the ledger: it applies
///   [`LeaseRequest::hold_request`] (as [`LedgerStore::apply`] would; a
///   refusal leases nothing and changes nothing), claims the numbers, and
///   applies [`LeaseRequest::release_request`] for those not found.
/// * [`receive`](Self::receive) is one atomic decision (see there): a
///   lease's price is captured once, however many SMS reach it.
/// * [`mark_settled`](Self::mark_settled) returns true exactly once per
///   lease.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait PhonePool: Debug + Send + Sync + 'static {
    /// The pool size ([`DEFAULT_POOL_SIZE`] until set), the numbers stored
    /// and the unsettled leases, as of one moment.
    async fn pool_stats(&self) -> StoreResult<PoolStats>;
    /// Sets the pool size.
    async fn set_pool_size(&self, size: u32) -> StoreResult<()>;
    /// Takes numbers from a device (see the contract).
    async fn intake(&self, entries: Vec<NumberInfo>, now: i64) -> StoreResult<Intake>;
    /// The number, if in the pool.
    async fn number(&self, mobile: &PhoneNumber) -> StoreResult<Option<PoolNumber>>;
    /// Up to `n` numbers free at `now` and never handed out for `app`, marked
    /// as handed out for it.
    async fn hand_out(&self, app: &str, n: usize, now: i64) -> StoreResult<Vec<NumberInfo>>;
    /// Leases up to `req.lease_ids.len()` numbers eligible under
    /// [`LeaseRequest::eligible`], with the request's hold (see the
    /// contract).
    async fn lease(&self, req: LeaseRequest) -> StoreResult<LeaseOutcome>;
    /// A lease by id.
    async fn lease_record(&self, id: &str) -> StoreResult<Option<Lease>>;
    /// Receives a device's upload of SMS as one decision: loads, for each
    /// SMS, the number, the lease it names, the items of the SMS's app and
    /// of the lease, and the lessee's mailbox size ([`ReceiveState`]);
    /// applies [`ReceiveRequest::decide`]; commits the [`ReceiveEffects`]
    /// in one atomic, durable write (app queues, ledger captures, leases
    /// marked charged, mailbox entries appended with fresh sequences, the
    /// oldest beyond the cap dropped). A refused batch changes nothing.
    ///
    /// # Contract
    /// All of an accepted batch is durable on `Ok(Received)`, or none of
    /// it; a lease's price is captured at most once however many SMS and
    /// concurrent calls reach it; the sequences returned are those the
    /// mailbox holds the entries under, increasing in batch order.
    ///
    /// [`ReceiveState`]: crate::receive::ReceiveState
    /// [`ReceiveEffects`]: crate::receive::ReceiveEffects
    async fn receive(&self, req: ReceiveRequest) -> StoreResult<ReceiveOutcome>;
    /// Up to `limit` leases ended at `now` and not yet settled.
    async fn due_leases(&self, now: i64, limit: usize) -> StoreResult<Vec<Lease>>;
    /// Marks a lease settled; true only for the call that did.
    async fn mark_settled(&self, id: &str) -> StoreResult<bool>;
}

/// Items (apps) and their prices.
///
/// # Contract
/// `put_item` creates or replaces by id; durable on `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait ItemStore: Debug + Send + Sync + 'static {
    /// Creates or updates an item.
    async fn put_item(&self, item: Item) -> StoreResult<()>;
    /// The item with this id.
    async fn item(&self, id: &str) -> StoreResult<Option<Item>>;
    /// Every item, by id.
    async fn items(&self) -> StoreResult<Vec<Item>>;
}

/// Queues: received SMS per app, texts for devices per channel, and each
/// user's mailbox of pushes.
///
/// # Contract
/// * Each queue is first in, first out; a `take_*` removes what it returns,
///   and of concurrent takers each entry goes to exactly one.
/// * Mailbox sequence numbers increase (a later push has a larger number
///   than every earlier one of the same user); an entry stays until
///   acknowledged; a page after a sequence number holds exactly the entries
///   above it, so paging never skips nor repeats one.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait QueueStore: Debug + Send + Sync + 'static {
    /// Queues an SMS for `GET /vcodes/<app>`.
    async fn push_sms(&self, app: &str, sms: ReceivedSms) -> StoreResult<()>;
    /// Takes up to `max` queued SMS of `app`, oldest first.
    async fn take_sms(&self, app: &str, max: usize) -> StoreResult<Vec<ReceivedSms>>;
    /// Queues a text for the device on channel `cid`.
    async fn push_device_message(&self, cid: &str, message: DeviceMessage) -> StoreResult<()>;
    /// Takes up to `max` texts for channel `cid`, oldest first.
    async fn take_device_messages(&self, cid: &str, max: usize) -> StoreResult<Vec<DeviceMessage>>;
    /// Appends to a user's mailbox; returns the entry's sequence number.
    async fn mailbox_push(&self, user: &UserId, push: Push) -> StoreResult<u64>;
    /// The user's unacknowledged entries with a sequence number above
    /// `after` (all, when `None`), oldest first, at most `max`.
    async fn mailbox(
        &self,
        user: &UserId,
        after: Option<u64>,
        max: usize,
    ) -> StoreResult<Vec<(u64, Push)>>;
    /// Removes one entry.
    async fn mailbox_ack(&self, user: &UserId, seq: u64) -> StoreResult<()>;
    /// Retention: removes every queued SMS and device text whose `at` is
    /// before `before` (Unix s), and every mailbox entry whose
    /// [`Push::at`] is known (not 0) and before it.
    ///
    /// # Contract
    /// Removes exactly those entries (later ones, and mailbox entries of
    /// unknown time, stay, in their order); returns how many of each kind
    /// it removed; durable on `Ok`. An entry a concurrent taker removed is
    /// not counted.
    async fn purge_before(&self, before: i64) -> StoreResult<Purged>;
}

/// What [`QueueStore::purge_before`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Queued SMS (`GET /vcodes/<app>`).
    pub sms: u64,
    /// Texts for devices (`GET /sends/<cid>`).
    pub device_messages: u64,
    /// Mailbox entries.
    pub mailbox: u64,
}

/// Which entries [`LedgerStore::entries`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryQuery {
    /// The entry recorded for this operation id, if any.
    Op(String),
    /// Every entry of this user, oldest first.
    User(UserId),
}

/// The balance ledger ([`crate::ledger`]).
///
/// # Contract
/// * [`apply`](Self::apply) applies [`crate::ledger::transition`] atomically
///   with the balance, the hold it names and the entry it records: an
///   operation id applies at most once ([`LedgerOutcome::Duplicate`] after
///   that), concurrent operations never overdraw, and a balance's `total`
///   always equals the sum of its entries' `total_delta`.
/// * Refused operations record nothing.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait LedgerStore: Debug + Send + Sync + 'static {
    /// Applies one movement.
    async fn apply(&self, request: LedgerRequest) -> StoreResult<LedgerOutcome>;
    /// The user's balance (zero if none).
    async fn balance(&self, user: &UserId) -> StoreResult<Balance>;
    /// The entries `query` names: the one recorded for an operation id
    /// (none or one), or every entry of a user, oldest first.
    async fn entries(&self, query: &EntryQuery) -> StoreResult<Vec<LedgerEntry>>;
    /// A hold by id.
    async fn hold(&self, hold_id: &str) -> StoreResult<Option<Hold>>;
    /// Up to `limit` holds that still reserve something and whose
    /// `expires_at` is at or before `now`, earliest first.
    async fn expired_holds(&self, now: i64, limit: usize) -> StoreResult<Vec<Hold>>;
}

/// A write of a signature ([`SendStore::write_signature`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureWrite {
    /// Stores a new signature with a fresh id (the given id is ignored):
    /// [`WriteOutcome::Created`].
    Create(Signature),
    /// Compare-and-set: writes `new` only if the stored record equals `old`
    /// ([`WriteOutcome::Replaced`], else [`WriteOutcome::Stale`]).
    Replace {
        /// The record as the caller read it.
        old: Signature,
        /// The record to store under `old.id`.
        new: Signature,
    },
    /// Deletes a signature that has no templates: [`WriteOutcome::Deleted`],
    /// [`WriteOutcome::Missing`] or [`WriteOutcome::InUse`].
    Delete(i64),
}

/// A write of a template ([`SendStore::write_template`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateWrite {
    /// Stores a new template with a fresh id (the given id is ignored), if
    /// its signature exists: [`WriteOutcome::Created`], else
    /// [`WriteOutcome::Missing`].
    Create(Template),
    /// Compare-and-set: writes `new` only if the stored record equals `old`
    /// and `new`'s signature exists ([`WriteOutcome::Replaced`], else
    /// [`WriteOutcome::Stale`]).
    Replace {
        /// The record as the caller read it.
        old: Template,
        /// The record to store under `old.id`.
        new: Template,
    },
    /// Deletes a template: [`WriteOutcome::Deleted`] or
    /// [`WriteOutcome::Missing`].
    Delete(i64),
}

/// What a [`SignatureWrite`] or [`TemplateWrite`] did; each write names
/// the outcomes it can have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome<T> {
    /// Created, as stored (with its fresh id).
    Created(T),
    /// Replaced.
    Replaced,
    /// Not replaced: the stored record was not `old` (or, for a template,
    /// `new`'s signature does not exist). Nothing written.
    Stale,
    /// Deleted.
    Deleted,
    /// No such record to delete, or no signature to create a template on.
    /// Nothing written.
    Missing,
    /// A signature that still has templates: not deleted.
    InUse,
}

/// Signatures, templates and send tasks.
///
/// # Contract
/// * Ids are assigned by the store, increasing, never reused; signatures and
///   templates count separately (each from 1 in a fresh store, as tables
///   with their own auto-increment would).
/// * [`write_signature`](Self::write_signature) and
///   [`write_template`](Self::write_template) are each one atomic step.
///   A `Replace` writes only if the stored record equals `old`
///   (compare-and-set): of concurrent writers from one state, one wins.
/// * [`SignatureWrite::Delete`] and [`TemplateWrite::Create`] (and a
///   [`TemplateWrite::Replace`] moving a template to another signature) are
///   atomic with respect to each other: a signature with templates is never
///   deleted, and a template is never created on (or moved to) a deleted
///   signature.
/// * A task's recipients start `Pending`; [`record_statuses`](Self::record_statuses)
///   only moves `Pending` to a final status (never overwrites a final one).
///   A `Sent` status it writes is found again by
///   [`recipient_by_gateway_id`](Self::recipient_by_gateway_id) with its
///   carrier (`""` without one) and gateway id, durably, written in the
///   same step.
/// * [`apply_receipt`](Self::apply_receipt) applies
///   [`receipt_transition`](crate::sending::receipt_transition) to the
///   recipient's stored status and, when it says a refund is due, applies
///   that refund through the ledger
///   ([`transition`](crate::ledger::transition), recorded as a
///   [`LedgerStore`] entry) in the same atomic step: the same receipt
///   applied twice, or concurrently, moves the status once and refunds
///   once.
/// * Writes are durable when the call returns `Ok`.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait SendStore: Debug + Send + Sync + 'static {
    /// Creates, replaces (compare-and-set) or deletes a signature (see
    /// [`SignatureWrite`] for the outcomes of each).
    async fn write_signature(&self, write: SignatureWrite) -> StoreResult<WriteOutcome<Signature>>;
    /// A signature by id.
    async fn signature(&self, id: i64) -> StoreResult<Option<Signature>>;
    /// The owner's signatures, by id.
    async fn signatures_of(&self, owner: &UserId) -> StoreResult<Vec<Signature>>;
    /// Creates, replaces (compare-and-set) or deletes a template (see
    /// [`TemplateWrite`] for the outcomes of each).
    async fn write_template(&self, write: TemplateWrite) -> StoreResult<WriteOutcome<Template>>;
    /// A template by id.
    async fn template(&self, id: i64) -> StoreResult<Option<Template>>;
    /// The owner's templates, by id.
    async fn templates_of(&self, owner: &UserId) -> StoreResult<Vec<Template>>;
    /// Stores a new task, every recipient `Pending`.
    async fn create_task(&self, task: SendTask) -> StoreResult<()>;
    /// A task by uuid.
    async fn task(&self, uuid: &str) -> StoreResult<Option<SendTask>>;
    /// Moves a task from `from` to `to` (compare-and-set); true if it did.
    async fn set_task_state(
        &self,
        uuid: &str,
        from: TaskState,
        to: TaskState,
        at: i64,
    ) -> StoreResult<bool>;
    /// Recipient statuses, in recipient order.
    async fn recipient_statuses(&self, uuid: &str) -> StoreResult<Vec<RecipientStatus>>;
    /// Records final statuses by recipient index (see the contract).
    async fn record_statuses(
        &self,
        uuid: &str,
        updates: Vec<(usize, RecipientStatus)>,
    ) -> StoreResult<()>;
    /// Uuids of tasks in `Created` or `Queued`, oldest first.
    async fn open_tasks(&self) -> StoreResult<Vec<String>>;
    /// Signatures and templates waiting for review (`Pending`), of every
    /// owner, lowest id first, at most `max` of each.
    async fn pending_reviews(&self, max: usize) -> StoreResult<(Vec<Signature>, Vec<Template>)>;
    /// The task uuid and recipient index whose `Sent` status carries this
    /// carrier (`""` when the status names none) and gateway id.
    async fn recipient_by_gateway_id(
        &self,
        carrier: &str,
        gateway_id: &str,
    ) -> StoreResult<Option<(String, usize)>>;
    /// Applies a delivery receipt to recipient `index` of task `uuid`,
    /// with its refund, atomically (see the contract).
    async fn apply_receipt(
        &self,
        uuid: &str,
        index: usize,
        update: ReceiptUpdate,
    ) -> StoreResult<ReceiptOutcome>;
}

/// Every store the core needs, as shared trait objects.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Accounts.
    pub users: Arc<dyn UserStore>,
    /// Session tokens.
    pub sessions: Arc<dyn SessionStore>,
    /// Verification codes.
    pub codes: Arc<dyn CodeStore>,
    /// Grants and permits.
    pub grants: Arc<dyn GrantStore>,
    /// Keyed limits.
    pub limits: Arc<dyn LimitStore>,
    /// Phone-number pool and leases.
    pub pool: Arc<dyn PhonePool>,
    /// Items.
    pub items: Arc<dyn ItemStore>,
    /// Queues and mailboxes.
    pub queues: Arc<dyn QueueStore>,
    /// Balance ledger.
    pub ledger: Arc<dyn LedgerStore>,
    /// Signatures, templates, send tasks.
    pub sending: Arc<dyn SendStore>,
}

impl Stores {
    /// Every store port served by one backend value.
    pub fn from_single<S>(store: Arc<S>) -> Self
    where
        S: UserStore
            + SessionStore
            + CodeStore
            + GrantStore
            + LimitStore
            + PhonePool
            + ItemStore
            + QueueStore
            + LedgerStore
            + SendStore,
    {
        Self {
            users: store.clone(),
            sessions: store.clone(),
            codes: store.clone(),
            grants: store.clone(),
            limits: store.clone(),
            pool: store.clone(),
            items: store.clone(),
            queues: store.clone(),
            ledger: store.clone(),
            sending: store,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::CodeHasher;

    fn record(h: CodeHash) -> CodeRecord {
        CodeRecord {
            key: CodeKey {
                address: "+8613811112222".into(),
                purpose: Purpose::Register,
            },
            hash: h,
            issued_at: 0,
            expires_at: 300,
            attempts: 0,
            used: false,
        }
    }

    #[test]
    fn code_void_after_max_wrong_tries_even_with_right_code() {
        let hasher = CodeHasher::new([9; 32]);
        let right = hasher.hash("s", "111111");
        let wrong = hasher.hash("s", "222222");
        let mut r = record(right);
        for left in (0..5).rev() {
            assert_eq!(
                r.redeem(&wrong, 1, 5),
                RedeemOutcome::Mismatch {
                    attempts_left: left
                }
            );
        }
        assert_eq!(r.redeem(&right, 1, 5), RedeemOutcome::Exhausted);
    }

    #[test]
    fn code_single_use_and_expiry() {
        let h = CodeHasher::new([9; 32]).hash("s", "111111");
        let mut r = record(h);
        assert_eq!(r.redeem(&h, 299, 5), RedeemOutcome::Redeemed);
        assert_eq!(r.redeem(&h, 299, 5), RedeemOutcome::Used);
        let mut r = record(h);
        assert_eq!(r.redeem(&h, 300, 5), RedeemOutcome::Expired);
    }

    #[test]
    fn grant_checks_token_then_state() {
        let t = crate::secret::Token::from_client("abc").hash();
        let other = crate::secret::Token::from_client("abd").hash();
        let mut g = Grant {
            kind: GrantKind::Registration,
            phone: PhoneNumber::parse_cn_mobile("13811112222").unwrap(),
            token_hash: Some(t),
            issued_at: 0,
            expires_at: 10,
            used: false,
        };
        assert_eq!(g.consume(None, 1), ConsumeOutcome::Mismatch);
        assert_eq!(g.consume(Some(&other), 1), ConsumeOutcome::Mismatch);
        assert_eq!(g.consume(Some(&t), 1), ConsumeOutcome::Consumed);
        assert_eq!(g.consume(Some(&t), 1), ConsumeOutcome::Used);
    }
}
