//! # sms-store-sled
//!
//! A [sled](https://docs.rs/sled/0.34)-backed implementation of every storage
//! port of [`sms_core::store`]: [`UserStore`], [`SessionStore`],
//! [`CodeStore`], [`GrantStore`], [`LimitStore`], [`PhonePool`],
//! [`ItemStore`], [`QueueStore`], [`LedgerStore`] and [`SendStore`], all
//! served by one [`SledStore`].
//!
//! ## Overview
//!
//! * **Same semantics as the reference.** Every method behaves like
//!   [`sms_core::memory::MemoryStore`]; the state transitions themselves
//!   ([`CodeRecord::redeem`], [`Grant::consume`],
//!   [`sms_core::limits::evaluate`], [`LimitState::record`],
//!   [`sms_core::ledger::transition`], [`LeaseFilter::matches`]) are called
//!   from `sms-core`, never re-implemented. The crate passes the conformance
//!   kit (`sms_core::testkit`).
//! * **Atomicity.** Changes touching several keys (a user and its unique
//!   indexes, a session and its per-user index, a lease and its number, a
//!   ledger entry and its balance and hold) and every read-modify-write
//!   (codes, grants, `first_used_at`, limits, pool counters, balances) run in
//!   one sled transaction; unique-field collisions abort the transaction with
//!   [`StoreError::Conflict`], leaving nothing behind.
//! * **Optimistic claims.** sled transactions cannot iterate, so operations
//!   that pick records by a condition (leasing and handing out numbers,
//!   taking queue entries) scan for candidates outside, then claim them in one
//!   transaction that re-checks the condition for each; a candidate lost to a
//!   concurrent caller makes the claim start over. Concurrent callers never
//!   get the same number or queue entry.
//! * **Durability, with group commit.** Every write method returns `Ok` only
//!   once its write is flushed and fsynced, so a caller told "ok" keeps its
//!   data across a crash or `kill -9`. Writes are queued to one writer
//!   thread, which applies what is queued, flushes once for the batch, then
//!   answers every caller of the batch: concurrent writers share one sync.
//!   A call whose decision changed nothing answers without waiting for a
//!   sync.
//! * **No blocking of async workers.** Reads run on Tokio's blocking pool
//!   via [`tokio::task::spawn_blocking`]; writes and flushes on the writer
//!   thread.
//! * **No panics on bad data.** A record that fails to decode is reported as
//!   [`StoreError::Backend`].
//!
//! ## Layout
//!
//! One sled tree per record kind, values as JSON:
//!
//! | tree                | key                                   | value          |
//! |---------------------|---------------------------------------|----------------|
//! | `users`             | user id                               | [`User`]       |
//! | `users_by_username` | [`Username::key`] (lowercased)        | user id        |
//! | `users_by_phone`    | E.164 phone                           | user id        |
//! | `users_by_email`    | normalised email                      | user id        |
//! | `sessions`          | the 32 raw bytes of the [`TokenHash`] | [`Session`]    |
//! | `sessions_by_user`  | user id, `0x00`, the 32 hash bytes    | empty          |
//! | `codes`             | [`CodeKey::flat`]                     | [`CodeRecord`] |
//! | `grants`            | kind, `\|`, E.164 phone                | [`Grant`]      |
//! | `limits`            | the limit key                         | [`LimitState`] |
//! | `pool_meta`         | `size`, `numbers`, `open_leases`      | JSON number    |
//! | `pool_numbers`      | E.164 phone                           | [`PoolNumber`] |
//! | `pool_order`        | big-endian upload sequence            | E.164 phone    |
//! | `pool_runs`         | app length (big-endian u32), app, big-endian last sequence of the run | big-endian first sequence ([`UsedRun`](sms_core::pool::UsedRun)) |
//! | `leases`            | lease id                              | [`Lease`]      |
//! | `leases_open`       | end (sortable big-endian), lease id   | empty          |
//! | `items`             | item id                               | [`Item`]       |
//! | `sms_queue`         | app, `0x00`, big-endian sequence      | [`ReceivedSms`] |
//! | `device_queue`      | channel id, `0x00`, big-endian sequence | [`DeviceMessage`] |
//! | `mailbox`           | user id, `0x00`, big-endian sequence  | [`Push`]       |
//! | `balances`          | user id                               | [`Balance`]    |
//! | `holds`             | hold id                               | [`Hold`]       |
//! | `ledger_entries`    | operation id                          | [`LedgerEntry`] |
//! | `ledger_by_user`    | user id, `0x00`, big-endian sequence  | operation id   |
//! | `holds_expiring`    | expiry (order-preserving i64), hold id | empty         |
//! | `signatures`        | big-endian id                         | [`Signature`]  |
//! | `signatures_by_owner` | owner id, `0x00`, big-endian id     | empty          |
//! | `templates`         | big-endian id                         | [`Template`]   |
//! | `templates_by_owner` | owner id, `0x00`, big-endian id      | empty          |
//! | `templates_by_signature` | big-endian signature id, big-endian template id | empty |
//! | `template_counts`   | big-endian signature id               | JSON number    |
//! | `send_meta`         | `last_id`                             | JSON number    |
//! | `tasks`             | task uuid                             | [`SendTask`]   |
//! | `task_statuses`     | task uuid, `0x00`, big-endian recipient index | [`RecipientStatus`] |
//! | `task_seq`          | task uuid                             | big-endian creation sequence |
//! | `tasks_open`        | big-endian creation sequence          | task uuid      |
//! | `task_gateway_ids`  | carrier name, `0x00`, gateway id      | task uuid, `0x00`, big-endian recipient index |
//! | `task_counts`       | task uuid                             | big-endian recipient count (tasks whose statuses are kept sparse) |
//!
//! Sequences come from [`sled::Db::generate_id`], which never repeats or goes
//! back, across restarts included; they are drawn inside the transaction that
//! writes the key, so key order is commit order. `pool_meta` holds the number
//! count and the count of unsettled leases, updated in the same transactions
//! as intake, leasing and settling, so the intake's capacity check is exact.
//! `leases_open` lists the unsettled leases by end, so
//! [`PhonePool::due_leases`] reads only those that are due.
//! `template_counts` counts each signature's templates in the same
//! transactions as template changes, so deleting a signature and creating a
//! template on it are atomic with respect to each other; `tasks_open` lists
//! the tasks in `Created` or `Queued` by creation, kept in the transactions
//! that create tasks and change their state.
//!
//! ## Usage
//!
//! ```
//! use std::sync::Arc;
//! use sms_core::limits::{LimitCheck, LimitDecision, LimitRule};
//! use sms_core::store::LimitMode;
//! use sms_store_sled::SledStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let check = LimitCheck::new("sms:+8613811112222", LimitRule::per(1, 60));
//!
//! let stores = Arc::new(SledStore::open(dir.path())?).stores();
//! let first = stores
//!     .limits
//!     .check(std::slice::from_ref(&check), 100, LimitMode::Acquire)
//!     .await?;
//! assert_eq!(first, LimitDecision::Allowed);
//! drop(stores);
//!
//! // Reopened, the store remembers the hit.
//! let stores = Arc::new(SledStore::open(dir.path())?).stores();
//! let again = stores.limits.check(&[check], 110, LimitMode::Acquire).await?;
//! assert!(!again.is_allowed());
//! # Ok(())
//! # }
//! ```
//!
//! [`User`]: sms_core::user::User
//! [`Username::key`]: sms_core::identity::Username::key
//! [`LeaseFilter::matches`]: sms_core::pool::LeaseFilter::matches
//! [`PoolNumber`]: sms_core::pool::PoolNumber
//! [`Lease`]: sms_core::pool::Lease
//! [`Item`]: sms_core::pool::Item
//! [`ReceivedSms`]: sms_core::pool::ReceivedSms
//! [`DeviceMessage`]: sms_core::pool::DeviceMessage
//! [`Push`]: sms_core::events::Push
//! [`Balance`]: sms_core::ledger::Balance
//! [`Hold`]: sms_core::ledger::Hold
//! [`LedgerEntry`]: sms_core::ledger::LedgerEntry
//! [`Signature`]: sms_core::sending::Signature
//! [`Template`]: sms_core::sending::Template
//! [`SendTask`]: sms_core::sending::SendTask
//! [`RecipientStatus`]: sms_core::sending::RecipientStatus
#![deny(missing_docs)]

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sled::transaction::{
    abort, ConflictableTransactionError, ConflictableTransactionResult, TransactionError,
    TransactionalTree,
};
use sled::Transactional;

use sms_core::code_decision::{CodeDecision, CodeState, CodeVerdict};
use sms_core::error::{StoreError, UniqueField};
use sms_core::identity::Username;
use sms_core::limits::{evaluate, LimitCheck, LimitDecision, LimitState};
use sms_core::phone::PhoneNumber;
use sms_core::secret::TokenHash;
use sms_core::session_decision::OpenSession;
use sms_core::store::{
    CodeKey, CodeRecord, CodeStore, ConsumeOutcome, Grant, GrantKind, GrantStore, LimitMode,
    LimitStore, RevokeScope, Session, SessionStore, StoreResult, Stores, UserKey, UserStore,
};
#[cfg(doc)]
use sms_core::store::{ItemStore, LedgerStore, PhonePool, QueueStore, SendStore};
use sms_core::user::{User, UserChange, UserId};

mod ledger;
mod pool;
mod queues;
mod sending;

pub mod delivery;

/// The key of the layout version, in sled's default tree.
const SCHEMA_KEY: &[u8] = b"sms-store-sled/schema";
/// The layout version this crate writes and reads.
const SCHEMA_VERSION: &[u8] = b"1";

/// How many times a lookup through the email index is retried when the user
/// it found no longer holds the address (a concurrent `update_user`).
const INDEX_RETRIES: usize = 16;

/// How long [`SledStore::open`] waits for a directory lock held elsewhere.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether sled refused to open because the directory's lock file is held.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

/// The private error of this crate; converted into [`StoreError`] at the
/// port boundary.
#[derive(Debug, thiserror::Error)]
enum Error {
    /// sled failed (I/O, corruption it detected itself, …).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value does not decode.
    #[error("corrupt record in tree `{tree}`: {source}")]
    Corrupt {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// A stored key or id is not what the layout says.
    #[error("corrupt entry in tree `{tree}`: {what}")]
    Malformed {
        tree: &'static str,
        what: &'static str,
    },
    /// A record does not encode.
    #[error("cannot encode record for tree `{tree}`: {source}")]
    Encode {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The database holds another layout version.
    #[error("unsupported store layout version {0:?}")]
    Schema(String),
    /// The blocking task running the sled call failed.
    #[error("blocking store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    /// The writer thread could not start, or failed a write without
    /// answering.
    #[error("sled writer: {0}")]
    Writer(String),
    /// A unique field is taken.
    #[error("unique constraint on {0:?}")]
    Conflict(UniqueField),
    /// The record to change does not exist.
    #[error("record not found")]
    NotFound,
    /// An optimistic claim lost a candidate to a concurrent caller; the
    /// claim starts over (never reaches a caller).
    #[error("lost a race for a candidate")]
    Raced,
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Conflict(field) => StoreError::Conflict(field),
            Error::NotFound => StoreError::NotFound,
            other => StoreError::backend(other),
        }
    }
}

impl From<TransactionError<Error>> for Error {
    fn from(e: TransactionError<Error>) -> Self {
        match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => Error::Sled(e),
        }
    }
}

/// Result inside a transaction closure.
type TxResult<T> = ConflictableTransactionResult<T, Error>;

/// Turns a crate error into a transaction abort.
fn tx<T>(r: Result<T, Error>) -> TxResult<T> {
    r.map_err(ConflictableTransactionError::Abort)
}

fn encode<T: Serialize>(tree: &'static str, value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|source| Error::Encode { tree, source })
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::Corrupt { tree, source })
}

fn decode_opt<T: DeserializeOwned>(
    tree: &'static str,
    bytes: Option<sled::IVec>,
) -> Result<Option<T>, Error> {
    bytes.map(|b| decode(tree, &b)).transpose()
}

fn decode_id(tree: &'static str, bytes: &[u8]) -> Result<UserId, Error> {
    std::str::from_utf8(bytes)
        .map(|s| UserId::from_string(s.to_owned()))
        .map_err(|_| Error::Malformed {
            tree,
            what: "user id is not UTF-8",
        })
}

// Tree names; also used in error messages.
const USERS: &str = "users";
const BY_USERNAME: &str = "users_by_username";
const BY_PHONE: &str = "users_by_phone";
const BY_EMAIL: &str = "users_by_email";
const SESSIONS: &str = "sessions";
const SESSIONS_BY_USER: &str = "sessions_by_user";
const CODES: &str = "codes";
const GRANTS: &str = "grants";
const LIMITS: &str = "limits";
const POOL_META: &str = "pool_meta";
const POOL_NUMBERS: &str = "pool_numbers";
const POOL_ORDER: &str = "pool_order";
const POOL_RUNS: &str = "pool_runs";
const LEASES: &str = "leases";
const LEASES_OPEN: &str = "leases_open";
const ITEMS: &str = "items";
const SMS_QUEUE: &str = "sms_queue";
const DEVICE_QUEUE: &str = "device_queue";
const MAILBOX: &str = "mailbox";
const BALANCES: &str = "balances";
const HOLDS: &str = "holds";
const LEDGER_ENTRIES: &str = "ledger_entries";
const LEDGER_BY_USER: &str = "ledger_by_user";
const HOLDS_EXPIRING: &str = "holds_expiring";
const SIGNATURES: &str = "signatures";
const SIGNATURES_BY_OWNER: &str = "signatures_by_owner";
const TEMPLATES: &str = "templates";
const TEMPLATES_BY_OWNER: &str = "templates_by_owner";
const TEMPLATES_BY_SIGNATURE: &str = "templates_by_signature";
const TEMPLATE_COUNTS: &str = "template_counts";
const SEND_META: &str = "send_meta";
const TASKS: &str = "tasks";
const TASK_STATUSES: &str = "task_statuses";
const TASK_SEQ: &str = "task_seq";
const TASKS_OPEN: &str = "tasks_open";
const TASK_GATEWAY_IDS: &str = "task_gateway_ids";
const TASK_COUNTS: &str = "task_counts";

/// How many times an optimistic claim starts over after losing a candidate
/// before it settles for what it can still claim.
const CLAIM_RETRIES: usize = 64;

/// The key of a user's entries in `sessions_by_user`: id, then a 0 byte.
fn user_prefix(user_id: &UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(user_id.as_str().len() + 33);
    k.extend_from_slice(user_id.as_str().as_bytes());
    k.push(0);
    k
}

/// The `sessions_by_user` key of one session.
fn session_index_key(user_id: &UserId, hash: &TokenHash) -> Vec<u8> {
    let mut k = user_prefix(user_id);
    k.extend_from_slice(&hash.0);
    k
}

/// `owner`, a 0 byte, then `seq` big-endian: keys of per-owner sequences
/// (queues, mailboxes, ledger entries), in sequence order within an owner.
fn seq_key(owner: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 9);
    k.extend_from_slice(owner);
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// What the writer thread runs for one write call: the write itself, which
/// answers whether it changed anything and how to deliver the call's answer
/// once the batch it belongs to is durable.
type Job = Box<dyn FnOnce(&Trees) -> (bool, Reply) + Send>;

/// Delivers one call's answer, given the outcome of its batch's flush.
type Reply = Box<dyn FnOnce(Result<(), sled::Error>) + Send>;

/// Most writes applied before one flush.
const MAX_BATCH: usize = 256;

/// The single writer (group commit): every write call is queued to one
/// thread, which applies the queued writes one after another, flushes once
/// for the whole batch, and only then answers their callers.
///
/// sled 0.34 serialises transactions against a running flush (its
/// concurrency-control lock is taken for writing by a transaction and for
/// reading through the whole flush), so writers calling `flush` themselves
/// wait for each other's syncs; one thread doing both never waits on itself,
/// and a batch of N writes costs one sync.
fn writer_loop(trees: Arc<Trees>, jobs: std::sync::mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut waiting: Vec<Reply> = Vec::new();
        let mut next = Some(first);
        let mut applied = 0;
        while let Some(job) = next.take() {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&trees)));
            match outcome {
                // Nothing to make durable: answer at once.
                Ok((false, reply)) => reply(Ok(())),
                Ok((true, reply)) => waiting.push(reply),
                // The job's answer channel is dropped with it: its caller
                // gets an error; the writer carries on.
                Err(_) => tracing::error!("sled writer: a write panicked"),
            }
            applied += 1;
            if applied < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if waiting.is_empty() {
            continue;
        }
        let flushed = trees.db.flush().map(drop);
        for reply in waiting {
            reply(flushed.clone());
        }
    }
}

/// The prefix of an owner's [`seq_key`]s.
fn seq_prefix(owner: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.len() + 9);
    k.extend_from_slice(owner);
    k.push(0);
    k
}

/// The sequence of a key found under `prefix`, or `None` when the key belongs
/// to another owner whose name merely starts with this one's (only keys of
/// exactly `prefix` + 8 bytes are this owner's).
fn seq_of(prefix: &[u8], key: &[u8]) -> Option<u64> {
    let rest = key.get(prefix.len()..)?;
    <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes)
}

/// `owner`'s entries (key, value) in `tree`, oldest first, at most `max`.
fn seq_entries(
    tree: &sled::Tree,
    owner: &[u8],
    max: usize,
) -> Result<Vec<(sled::IVec, sled::IVec)>, Error> {
    Ok(seq_entries_after(tree, owner, None, max)?
        .into_iter()
        .map(|(_, key, value)| (key, value))
        .collect())
}

/// `owner`'s entries (sequence, key, value) with a sequence above `after`
/// (all when `None`), oldest first, at most `max`.
fn seq_entries_after(
    tree: &sled::Tree,
    owner: &[u8],
    after: Option<u64>,
    max: usize,
) -> Result<Vec<(u64, sled::IVec, sled::IVec)>, Error> {
    let prefix = seq_prefix(owner);
    // Keys are owner, 0, big-endian sequence: the entries above `after`
    // start right after its key.
    let start = match after {
        None => prefix.clone(),
        Some(seq) => match seq.checked_add(1) {
            Some(next) => seq_key(owner, next),
            None => return Ok(Vec::new()),
        },
    };
    let mut out = Vec::new();
    for entry in tree.range(start..) {
        if out.len() >= max {
            break;
        }
        let (key, value) = entry?;
        if !key.starts_with(&prefix) {
            break;
        }
        if let Some(seq) = seq_of(&prefix, &key) {
            out.push((seq, key, value));
        }
    }
    Ok(out)
}

fn grant_key(kind: GrantKind, phone: &PhoneNumber) -> Vec<u8> {
    let kind = match kind {
        GrantKind::Registration => "registration",
        GrantKind::PasswordReset => "password_reset",
    };
    format!("{kind}|{}", phone.as_e164()).into_bytes()
}

/// The database and its trees; cheap to clone into blocking tasks.
#[derive(Debug)]
struct Trees {
    db: sled::Db,
    users: sled::Tree,
    by_username: sled::Tree,
    by_phone: sled::Tree,
    by_email: sled::Tree,
    sessions: sled::Tree,
    sessions_by_user: sled::Tree,
    codes: sled::Tree,
    grants: sled::Tree,
    limits: sled::Tree,
    pool_meta: sled::Tree,
    pool_numbers: sled::Tree,
    pool_order: sled::Tree,
    pool_runs: sled::Tree,
    leases: sled::Tree,
    leases_open: sled::Tree,
    items: sled::Tree,
    sms_queue: sled::Tree,
    device_queue: sled::Tree,
    mailbox: sled::Tree,
    balances: sled::Tree,
    holds: sled::Tree,
    ledger_entries: sled::Tree,
    ledger_by_user: sled::Tree,
    holds_expiring: sled::Tree,
    signatures: sled::Tree,
    signatures_by_owner: sled::Tree,
    templates: sled::Tree,
    templates_by_owner: sled::Tree,
    templates_by_signature: sled::Tree,
    template_counts: sled::Tree,
    send_meta: sled::Tree,
    tasks: sled::Tree,
    task_statuses: sled::Tree,
    task_seq: sled::Tree,
    tasks_open: sled::Tree,
    task_gateway_ids: sled::Tree,
    task_counts: sled::Tree,
}

impl Trees {
    fn open(db: sled::Db) -> Result<Self, Error> {
        match db.get(SCHEMA_KEY)? {
            None => {
                db.insert(SCHEMA_KEY, SCHEMA_VERSION)?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION => {}
            Some(v) => return Err(Error::Schema(String::from_utf8_lossy(&v).into_owned())),
        }
        Ok(Self {
            users: db.open_tree(USERS)?,
            by_username: db.open_tree(BY_USERNAME)?,
            by_phone: db.open_tree(BY_PHONE)?,
            by_email: db.open_tree(BY_EMAIL)?,
            sessions: db.open_tree(SESSIONS)?,
            sessions_by_user: db.open_tree(SESSIONS_BY_USER)?,
            codes: db.open_tree(CODES)?,
            grants: db.open_tree(GRANTS)?,
            limits: db.open_tree(LIMITS)?,
            pool_meta: db.open_tree(POOL_META)?,
            pool_numbers: db.open_tree(POOL_NUMBERS)?,
            pool_order: db.open_tree(POOL_ORDER)?,
            pool_runs: db.open_tree(POOL_RUNS)?,
            leases: db.open_tree(LEASES)?,
            leases_open: db.open_tree(LEASES_OPEN)?,
            items: db.open_tree(ITEMS)?,
            sms_queue: db.open_tree(SMS_QUEUE)?,
            device_queue: db.open_tree(DEVICE_QUEUE)?,
            mailbox: db.open_tree(MAILBOX)?,
            balances: db.open_tree(BALANCES)?,
            holds: db.open_tree(HOLDS)?,
            ledger_entries: db.open_tree(LEDGER_ENTRIES)?,
            ledger_by_user: db.open_tree(LEDGER_BY_USER)?,
            holds_expiring: db.open_tree(HOLDS_EXPIRING)?,
            signatures: db.open_tree(SIGNATURES)?,
            signatures_by_owner: db.open_tree(SIGNATURES_BY_OWNER)?,
            templates: db.open_tree(TEMPLATES)?,
            templates_by_owner: db.open_tree(TEMPLATES_BY_OWNER)?,
            templates_by_signature: db.open_tree(TEMPLATES_BY_SIGNATURE)?,
            template_counts: db.open_tree(TEMPLATE_COUNTS)?,
            send_meta: db.open_tree(SEND_META)?,
            tasks: db.open_tree(TASKS)?,
            task_statuses: db.open_tree(TASK_STATUSES)?,
            task_seq: db.open_tree(TASK_SEQ)?,
            tasks_open: db.open_tree(TASKS_OPEN)?,
            task_gateway_ids: db.open_tree(TASK_GATEWAY_IDS)?,
            task_counts: db.open_tree(TASK_COUNTS)?,
            db,
        })
    }

    fn user(&self, id: &UserId) -> Result<Option<User>, Error> {
        decode_opt(USERS, self.users.get(id.as_str().as_bytes())?)
    }

    /// The user an index entry points at, provided it still holds the
    /// indexed value (`holds`); retried when a concurrent update moved it.
    fn user_by_index(
        &self,
        index: &sled::Tree,
        index_name: &'static str,
        key: &[u8],
        holds: impl Fn(&User) -> bool,
    ) -> Result<Option<User>, Error> {
        for _ in 0..INDEX_RETRIES {
            let Some(id) = index.get(key)? else {
                return Ok(None);
            };
            let Some(user) = self.user(&decode_id(index_name, &id)?)? else {
                return Ok(None);
            };
            if holds(&user) {
                return Ok(Some(user));
            }
        }
        Ok(None)
    }

    fn session(&self, hash: &TokenHash) -> Result<Option<Session>, Error> {
        decode_opt(SESSIONS, self.sessions.get(hash.0)?)
    }

    /// Hashes of the sessions `sessions_by_user` lists for `user_id`.
    fn indexed_sessions(&self, user_id: &UserId) -> Result<Vec<TokenHash>, Error> {
        let prefix = user_prefix(user_id);
        let mut out = Vec::new();
        for entry in self.sessions_by_user.scan_prefix(&prefix) {
            let (key, _) = entry?;
            // A longer id containing a 0 byte could share the prefix; such
            // keys do not end in exactly 32 bytes after it.
            if let Ok(hash) = <[u8; 32]>::try_from(&key[prefix.len()..]) {
                out.push(TokenHash(hash));
            }
        }
        Ok(out)
    }

    /// Every session of `user_id`.
    fn user_sessions(&self, user_id: &UserId) -> Result<Vec<Session>, Error> {
        let mut out = Vec::new();
        for hash in self.indexed_sessions(user_id)? {
            if let Some(s) = self.session(&hash)? {
                if s.user_id == *user_id {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    fn limit_state(&self, key: &str) -> Result<LimitState, Error> {
        Ok(decode_opt(LIMITS, self.limits.get(key.as_bytes())?)?.unwrap_or_default())
    }
}

/// A user about to be created: its record and unique keys, encoded.
struct NewUser {
    id: Vec<u8>,
    record: Vec<u8>,
    unique: [(Option<String>, UniqueField); 3],
}

impl NewUser {
    fn prepare(user: &User) -> Result<Self, Error> {
        Ok(Self {
            id: user.id.as_str().as_bytes().to_vec(),
            record: encode(USERS, user)?,
            unique: [
                (
                    user.username.as_ref().map(Username::key),
                    UniqueField::Username,
                ),
                (
                    user.phone.as_ref().map(|p| p.as_e164().to_owned()),
                    UniqueField::Phone,
                ),
                (
                    user.email.as_ref().map(|e| e.as_str().to_owned()),
                    UniqueField::Email,
                ),
            ],
        })
    }

    /// Inserts the user and its index entries, aborting with
    /// [`Error::Conflict`] if the id or a unique field is taken. The trees:
    /// users, then the username, phone and email indexes.
    fn create(
        &self,
        [users, by_username, by_phone, by_email]: [&TransactionalTree; 4],
    ) -> TxResult<()> {
        if users.get(&self.id)?.is_some() {
            return abort(Error::Conflict(UniqueField::Id));
        }
        let indexes = [by_username, by_phone, by_email];
        for (index, (key, field)) in indexes.iter().zip(&self.unique) {
            if let Some(key) = key {
                if index.get(key.as_bytes())?.is_some() {
                    return abort(Error::Conflict(*field));
                }
            }
        }
        for (index, (key, _)) in indexes.iter().zip(&self.unique) {
            if let Some(key) = key {
                index.insert(key.as_bytes(), self.id.as_slice())?;
            }
        }
        users.insert(self.id.as_slice(), self.record.as_slice())?;
        Ok(())
    }
}

fn tx_limit_state(t: &TransactionalTree, key: &str) -> TxResult<LimitState> {
    Ok(tx(decode_opt(LIMITS, t.get(key.as_bytes())?))?.unwrap_or_default())
}

fn tx_put_limit_state(t: &TransactionalTree, key: &str, state: &LimitState) -> TxResult<()> {
    t.insert(key.as_bytes(), tx(encode(LIMITS, state))?)?;
    Ok(())
}

/// Opens the sled database in `path`, waiting up to [`LOCK_WAIT`] for a lock
/// that a handle dropped a moment ago (in this process or a finished one)
/// still holds from one of sled's background threads.
pub(crate) fn open_waiting(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::open(path) {
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Every store port of `sms-core`, backed by one sled database.
///
/// Cheap to share: hold it in an [`Arc`] and hand it out with
/// [`SledStore::stores`]. See the [crate docs](crate) for the tree layout and
/// the durability guarantees.
#[derive(Debug)]
pub struct SledStore {
    trees: Arc<Trees>,
    /// The queue of the writer thread ([`writer_loop`]); the thread ends
    /// when the store is dropped.
    writer: std::sync::mpsc::Sender<Job>,
}

impl SledStore {
    /// Opens (creating if needed) the database in the directory `path`.
    ///
    /// sled locks the directory while any handle to it lives, and a store
    /// dropped a moment ago may still hold the lock from one of sled's
    /// background threads; so a lock held by someone else is waited for, up
    /// to [`LOCK_WAIT`], before giving up.
    ///
    /// Fails with [`StoreError::Backend`] if sled cannot open it (for
    /// instance because another process still holds it after that wait) or
    /// it holds another layout version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::from_db(open_waiting(path.as_ref()).map_err(|e| StoreError::from(Error::from(e)))?)
    }

    /// Uses an already opened sled database (e.g. one built with a custom
    /// [`sled::Config`]); opens the trees this store needs.
    pub fn from_db(db: sled::Db) -> Result<Self, StoreError> {
        let trees = Arc::new(Trees::open(db)?);
        let (writer, jobs) = std::sync::mpsc::channel();
        let for_writer = Arc::clone(&trees);
        std::thread::Builder::new()
            .name("sms-sled-writer".into())
            .spawn(move || writer_loop(for_writer, jobs))
            .map_err(|e| StoreError::backend(Error::Writer(e.to_string())))?;
        Ok(Self { trees, writer })
    }

    /// The underlying sled database.
    pub fn db(&self) -> &sled::Db {
        &self.trees.db
    }

    /// Every store port served by this store, for
    /// [`sms_core::Core::builder`].
    pub fn stores(self: Arc<Self>) -> Stores {
        Stores::from_single(self)
    }

    /// Runs `f` on the blocking pool (inline when called outside a Tokio
    /// runtime).
    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, Error> + Send + 'static,
    {
        let trees = Arc::clone(&self.trees);
        let result = if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::spawn_blocking(move || f(&trees))
                .await
                .unwrap_or_else(|e| Err(Error::Join(e)))
        } else {
            f(&trees)
        };
        result.map_err(report)
    }

    /// Runs the write `f` on the writer thread, and returns once it is
    /// durable (its batch flushed).
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<T, Error> + Send + 'static,
    {
        self.write_if(move |t| Ok((f(t)?, true))).await
    }

    /// Like [`write`](Self::write) for a call that may change nothing: `f`
    /// tells whether it wrote, and only then does the answer wait for the
    /// flush.
    async fn write_if<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Trees) -> Result<(T, bool), Error> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Result<T, Error>>();
        let job: Job = Box::new(move |trees| match f(trees) {
            Ok((out, wrote)) => {
                let reply: Reply = Box::new(move |flushed| {
                    let _ = tx.send(flushed.map(|()| out).map_err(Error::Sled));
                });
                (wrote, reply)
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                (false, Box::new(|_| {}))
            }
        });
        if self.writer.send(job).is_err() {
            return Err(report(Error::Writer("the writer thread is gone".into())));
        }
        let answer = if tokio::runtime::Handle::try_current().is_ok() {
            rx.await
        } else {
            rx.blocking_recv()
        };
        answer
            .unwrap_or_else(|_| Err(Error::Writer("a write failed without an answer".into())))
            .map_err(report)
    }
}

/// Logs a failed call and converts its error for the port.
fn report(e: Error) -> StoreError {
    if matches!(e, Error::Conflict(_) | Error::NotFound) {
        tracing::debug!(error = %e, "sled store call refused");
    } else {
        tracing::error!(error = %e, "sled store call failed");
    }
    e.into()
}

#[async_trait]
impl UserStore for SledStore {
    async fn create_user(&self, user: User) -> StoreResult<()> {
        self.write(move |t| {
            let new = NewUser::prepare(&user)?;
            (&t.users, &t.by_username, &t.by_phone, &t.by_email).transaction(
                |(users, by_username, by_phone, by_email)| {
                    new.create([users, by_username, by_phone, by_email])
                },
            )?;
            Ok(())
        })
        .await
    }

    async fn user(&self, key: &UserKey) -> StoreResult<Option<User>> {
        let key = key.clone();
        self.run(move |t| match &key {
            UserKey::Id(id) => t.user(id),
            UserKey::Username(username) => {
                let key = username.key();
                t.user_by_index(&t.by_username, BY_USERNAME, key.as_bytes(), |u| {
                    u.username.as_ref().is_some_and(|n| n.key() == key)
                })
            }
            UserKey::Phone(phone) => {
                t.user_by_index(&t.by_phone, BY_PHONE, phone.as_e164().as_bytes(), |u| {
                    u.phone.as_ref() == Some(phone)
                })
            }
            UserKey::Email(email) => {
                t.user_by_index(&t.by_email, BY_EMAIL, email.as_str().as_bytes(), |u| {
                    u.email.as_ref() == Some(email)
                })
            }
        })
        .await
    }

    async fn update_user(&self, id: &UserId, change: UserChange) -> StoreResult<User> {
        let id = id.clone();
        self.write(move |t| {
            let key = id.as_str().as_bytes();
            let before = (&t.users, &t.by_email).transaction(|(users, by_email)| {
                let Some(raw) = users.get(key)? else {
                    return abort(Error::NotFound);
                };
                let before: User = tx(decode(USERS, &raw))?;
                let mut after = before.clone();
                change.apply(&mut after);
                if after.email != before.email {
                    if let Some(e) = &after.email {
                        if let Some(owner) = by_email.get(e.as_str().as_bytes())? {
                            if &owner[..] != key {
                                return abort(Error::Conflict(UniqueField::Email));
                            }
                        }
                        by_email.insert(e.as_str().as_bytes(), key)?;
                    }
                    if let Some(old) = &before.email {
                        if by_email.get(old.as_str().as_bytes())?.as_deref() == Some(key) {
                            by_email.remove(old.as_str().as_bytes())?;
                        }
                    }
                }
                users.insert(key, tx(encode(USERS, &after))?)?;
                Ok(before)
            })?;
            Ok(before)
        })
        .await
    }
}

#[async_trait]
impl SessionStore for SledStore {
    async fn open_session(&self, request: OpenSession) -> StoreResult<Session> {
        self.write(move |t| {
            // Every write runs on the writer thread, so the user's sessions
            // listed here cannot change before the transaction below.
            let user_id = &request.session.user_id;
            let existing = t.user_sessions(user_id)?;
            let seq = t.db.generate_id()?;
            let admission = request.apply(&existing, seq);
            let new_user = request
                .new_user
                .as_ref()
                .map(NewUser::prepare)
                .transpose()?;
            let session = &admission.session;
            let record = encode(SESSIONS, session)?;
            let hash = session.token_hash;
            let index_key = session_index_key(user_id, &hash);
            (
                &t.users,
                &t.by_username,
                &t.by_phone,
                &t.by_email,
                &t.sessions,
                &t.sessions_by_user,
            )
                .transaction(
                    |(users, by_username, by_phone, by_email, sessions, by_user)| {
                        if let Some(new) = &new_user {
                            new.create([users, by_username, by_phone, by_email])?;
                        }
                        for old in &admission.evict {
                            sessions.remove(&old.0[..])?;
                            by_user.remove(session_index_key(user_id, old))?;
                        }
                        // Replacing a session of another user: drop its old
                        // index entry.
                        if let Some(raw) = sessions.get(hash.0)? {
                            let old: Session = tx(decode(SESSIONS, &raw))?;
                            if old.user_id != *user_id {
                                by_user.remove(session_index_key(&old.user_id, &hash))?;
                            }
                        }
                        sessions.insert(&hash.0[..], record.as_slice())?;
                        by_user.insert(index_key.as_slice(), &b""[..])?;
                        Ok(())
                    },
                )?;
            Ok(admission.session)
        })
        .await
    }

    async fn session(&self, token_hash: &TokenHash) -> StoreResult<Option<Session>> {
        let hash = *token_hash;
        self.run(move |t| t.session(&hash)).await
    }

    async fn mark_session_used(
        &self,
        token_hash: &TokenHash,
        now: i64,
    ) -> StoreResult<Option<Session>> {
        let hash = *token_hash;
        self.write(move |t| {
            let before = t.sessions.transaction(|sessions| {
                let Some(raw) = sessions.get(hash.0)? else {
                    return Ok(None);
                };
                let before: Session = tx(decode(SESSIONS, &raw))?;
                if before.first_used_at.is_none() {
                    let mut after = before.clone();
                    after.first_used_at = Some(now);
                    sessions.insert(&hash.0[..], tx(encode(SESSIONS, &after))?)?;
                }
                Ok(Some(before))
            })?;
            Ok(before)
        })
        .await
    }

    async fn revoke(&self, scope: RevokeScope) -> StoreResult<usize> {
        match scope {
            RevokeScope::Session(hash) => self.revoke_session(hash).await,
            RevokeScope::User { user_id, keep } => self.revoke_user_sessions(user_id, keep).await,
        }
    }

    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        let user_id = user_id.clone();
        self.run(move |t| t.user_sessions(&user_id)).await
    }
}

impl SledStore {
    /// [`RevokeScope::Session`]: deletes one session and its index entry.
    async fn revoke_session(&self, hash: TokenHash) -> StoreResult<usize> {
        self.write(move |t| {
            let existed =
                (&t.sessions, &t.sessions_by_user).transaction(|(sessions, by_user)| {
                    let Some(raw) = sessions.remove(&hash.0[..])? else {
                        return Ok(0);
                    };
                    let old: Session = tx(decode(SESSIONS, &raw))?;
                    by_user.remove(session_index_key(&old.user_id, &hash))?;
                    Ok(1)
                })?;
            Ok(existed)
        })
        .await
    }

    /// [`RevokeScope::User`]: deletes every session of `user_id` but `keep`.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        keep: Option<TokenHash>,
    ) -> StoreResult<usize> {
        self.write(move |t| {
            // sled transactions cannot iterate: list the candidates first,
            // then delete them in one transaction that re-checks each.
            let hashes: Vec<TokenHash> = t
                .indexed_sessions(&user_id)?
                .into_iter()
                .filter(|h| Some(*h) != keep)
                .collect();
            if hashes.is_empty() {
                return Ok(0);
            }
            let revoked =
                (&t.sessions, &t.sessions_by_user).transaction(|(sessions, by_user)| {
                    let mut revoked = 0;
                    for hash in &hashes {
                        by_user.remove(session_index_key(&user_id, hash))?;
                        let Some(raw) = sessions.get(hash.0)? else {
                            continue;
                        };
                        let session: Session = tx(decode(SESSIONS, &raw))?;
                        if session.user_id == user_id {
                            sessions.remove(&hash.0[..])?;
                            revoked += 1;
                        }
                    }
                    Ok(revoked)
                })?;
            Ok(revoked)
        })
        .await
    }
}

#[async_trait]
impl CodeStore for SledStore {
    async fn decide_code(&self, decision: CodeDecision) -> StoreResult<CodeVerdict> {
        self.write_if(move |t| {
            let key = decision.key().flat().into_bytes();
            let limit_keys = decision.limit_keys();
            let trees = (&t.codes, &t.limits, &t.grants);
            let (verdict, changed) = trees.transaction(|(codes, limits, grants)| {
                let before = CodeState {
                    code: tx(decode_opt(CODES, codes.get(&key)?))?,
                    limits: limit_keys
                        .iter()
                        .map(|k| tx_limit_state(limits, k))
                        .collect::<TxResult<Vec<_>>>()?,
                    grant: None,
                };
                let mut state = before.clone();
                let verdict = decision.apply(&mut state);
                let mut changed = false;
                if let Some(grant) = &state.grant {
                    changed = true;
                    let key = grant_key(grant.kind, &grant.phone);
                    grants.insert(key, tx(encode(GRANTS, grant))?)?;
                }
                if state.code != before.code {
                    changed = true;
                    match &state.code {
                        Some(code) => {
                            codes.insert(key.as_slice(), tx(encode(CODES, code))?)?;
                        }
                        None => {
                            codes.remove(key.as_slice())?;
                        }
                    }
                }
                for ((k, new), old) in limit_keys.iter().zip(&state.limits).zip(&before.limits) {
                    if new != old {
                        changed = true;
                        tx_put_limit_state(limits, k, new)?;
                    }
                }
                Ok((verdict, changed))
            })?;
            Ok((verdict, changed))
        })
        .await
    }

    async fn code(&self, key: &CodeKey) -> StoreResult<Option<CodeRecord>> {
        let key = key.flat();
        self.run(move |t| decode_opt(CODES, t.codes.get(key.as_bytes())?))
            .await
    }
}

#[async_trait]
impl GrantStore for SledStore {
    async fn put_grant(&self, grant: Grant) -> StoreResult<()> {
        self.write(move |t| {
            let key = grant_key(grant.kind, &grant.phone);
            t.grants.insert(key, encode(GRANTS, &grant)?)?;
            Ok(())
        })
        .await
    }

    async fn grant(&self, kind: GrantKind, phone: &PhoneNumber) -> StoreResult<Option<Grant>> {
        let key = grant_key(kind, phone);
        self.run(move |t| decode_opt(GRANTS, t.grants.get(key)?))
            .await
    }

    async fn consume_grant(
        &self,
        kind: GrantKind,
        phone: &PhoneNumber,
        presented: Option<TokenHash>,
        now: i64,
    ) -> StoreResult<ConsumeOutcome> {
        let key = grant_key(kind, phone);
        self.write(move |t| {
            let outcome = t.grants.transaction(|grants| {
                let Some(raw) = grants.get(&key)? else {
                    return Ok(ConsumeOutcome::Missing);
                };
                let mut grant: Grant = tx(decode(GRANTS, &raw))?;
                let outcome = grant.consume(presented.as_ref(), now);
                if outcome == ConsumeOutcome::Consumed {
                    grants.insert(key.as_slice(), tx(encode(GRANTS, &grant))?)?;
                }
                Ok(outcome)
            })?;
            Ok(outcome)
        })
        .await
    }
}

#[async_trait]
impl LimitStore for SledStore {
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: LimitMode,
    ) -> StoreResult<LimitDecision> {
        let checks = checks.to_vec();
        if mode == LimitMode::Peek {
            return self
                .run(move |t| {
                    let states = checks
                        .iter()
                        .map(|c| t.limit_state(&c.key))
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok(evaluate(&states, &checks, now))
                })
                .await;
        }
        self.write(move |t| {
            let decision = t.limits.transaction(|limits| {
                // Read every state before writing any (as the reference does,
                // so a key named twice gets one hit).
                let states = checks
                    .iter()
                    .map(|c| tx_limit_state(limits, &c.key))
                    .collect::<TxResult<Vec<_>>>()?;
                let decision = evaluate(&states, &checks, now);
                if decision.is_allowed() {
                    for (mut state, check) in states.into_iter().zip(&checks) {
                        state.record(&check.rule, now);
                        tx_put_limit_state(limits, &check.key, &state)?;
                    }
                }
                Ok(decision)
            })?;
            Ok(decision)
        })
        .await
    }

    async fn record(&self, check: &LimitCheck, now: i64) -> StoreResult<()> {
        let check = check.clone();
        self.write(move |t| {
            t.limits.transaction(|limits| {
                let mut state = tx_limit_state(limits, &check.key)?;
                state.record(&check.rule, now);
                tx_put_limit_state(limits, &check.key, &state)
            })?;
            Ok(())
        })
        .await
    }

    async fn reset(&self, key: &str) -> StoreResult<()> {
        let key = key.to_owned();
        self.write(move |t| {
            t.limits.remove(key.as_bytes())?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SledStore {
        let db = sled::Config::new().temporary(true).open().unwrap();
        SledStore::from_db(db).unwrap()
    }

    #[tokio::test]
    async fn corrupt_records_are_backend_errors() {
        let s = store();
        s.db()
            .open_tree(USERS)
            .unwrap()
            .insert("bad", &b"{not json"[..])
            .unwrap();
        let r = s
            .user(&UserKey::Id(UserId::from_string("bad".into())))
            .await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
        let r = s
            .update_user(
                &UserId::from_string("bad".into()),
                UserChange::SetBanned(true),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");

        s.db()
            .open_tree(LIMITS)
            .unwrap()
            .insert("k", &b"[]"[..])
            .unwrap();
        let check = LimitCheck::new("k", sms_core::limits::LimitRule::per(1, 10));
        let r = s.check(&[check], 1, LimitMode::Acquire).await;
        assert!(matches!(r, Err(StoreError::Backend(_))), "{r:?}");
    }

    #[test]
    fn open_waits_for_a_lock_released_late() {
        let dir = tempfile::tempdir().unwrap();
        let first = SledStore::open(dir.path()).unwrap();
        // Held elsewhere (here: by a handle another thread keeps a while).
        let holder = first.db().clone();
        drop(first);
        let released = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(holder);
        });
        let second = SledStore::open(dir.path());
        assert!(second.is_ok(), "{:?}", second.err());
        released.join().unwrap();
    }

    #[test]
    fn works_outside_a_runtime() {
        let s = store();
        let check = LimitCheck::new("k", sms_core::limits::LimitRule::per(1, 10));
        let fut = s.check(std::slice::from_ref(&check), 1, LimitMode::Acquire);
        // A minimal executor: the future completes without a Tokio runtime.
        let decision = futures_lite_block_on(fut).unwrap();
        assert!(decision.is_allowed());
    }

    /// Polls a future that never waits on a waker to completion.
    fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut f = std::pin::pin!(f);
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }

    #[test]
    fn other_schema_version_is_refused() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        db.insert(SCHEMA_KEY, &b"99"[..]).unwrap();
        assert!(matches!(
            SledStore::from_db(db),
            Err(StoreError::Backend(_))
        ));
    }
}
