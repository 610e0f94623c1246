//! Every `sms-core` storage port on PostgreSQL, so several platform nodes
//! serve one user base: [`PgStore`] (users, sessions, codes, grants, limits,
//! the pool, items, queues, the ledger, sending), [`PgDeliveryQueue`] (the
//! carriers' delivery queue) and [`PgEventHub`] (events across nodes with
//! `LISTEN`/`NOTIFY`).
//!
//! # Overview
//!
//! Records are stored as JSON text beside the columns their lookups,
//! uniqueness and ordering need. Each decision is one transaction: the store
//! takes the locks of the keys it touches (row locks, or transaction-scoped
//! advisory locks for keys that may have no row yet, always in one global
//! order), loads the small state the decision reads, applies the core's pure
//! transition ([`sms_core::code_decision::CodeDecision::apply`],
//! [`sms_core::ledger::transition`], [`sms_core::pool::PoolNumber::lease_to`],
//! …) and commits. No business rule lives in SQL. Serialisation failures
//! and deadlocks are retried a bounded number of times.
//!
//! Queries are built at run time (`sqlx::query`), so building needs no
//! database. The schema is created by embedded migrations when the store
//! connects ([`PgStore::connect`]); several nodes starting at once apply
//! them once (under an advisory lock).
//!
//! # Usage
//!
//! ```no_run
//! # async fn demo() -> Result<(), sms_core::StoreError> {
//! use std::sync::Arc;
//! use sms_store_postgres::{PgOptions, PgStore};
//!
//! let store = PgStore::connect(
//!     &PgOptions::new("postgres://sms@127.0.0.1:5432/sms").schema("sms"),
//! )
//! .await?;
//! let stores = Arc::new(store).stores();
//! # let _ = stores; Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sms_core::error::{StoreError, UniqueField};
use sms_core::store::Stores;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

mod accounts;
pub mod delivery;
pub mod events;
mod money;
mod pool;
mod schema;

pub use delivery::PgDeliveryQueue;
pub use events::PgEventHub;

/// How many times a transaction that failed on a serialisation failure or
/// a deadlock is run again before the error is returned.
pub const MAX_RETRIES: u32 = 8;

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    url: String,
    schema: String,
    max_connections: u32,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    claim_secs: i64,
}

impl fmt::Debug for PgOptions {
    // The URL may carry a password: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("claim_secs", &self.claim_secs)
            .finish()
    }
}

/// A schema name used unquoted in `search_path` and quoted in DDL: both
/// spell the same name only in lowercase.
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `scheme://user@host/db` with any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "***".into();
    };
    let (auth, host) = match rest.rsplit_once('@') {
        Some((a, h)) => (Some(a), h),
        None => (None, rest),
    };
    let host = host.split('?').next().unwrap_or_default();
    match auth {
        Some(a) => {
            let user = a.split(':').next().unwrap_or_default();
            if a.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                format!("{scheme}://{user}@{host}")
            }
        }
        None => format!("{scheme}://{host}"),
    }
}

impl PgOptions {
    /// A `postgres://USER[:PASSWORD]@HOST:PORT/DB` URL, schema `public`,
    /// 16 connections, 5 s to acquire one, 10 s per statement.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "public".into(),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            claim_secs: 30,
        }
    }

    /// How long a node's claim on a send task lasts without a heartbeat
    /// (default 30 s): after a node dies, its tasks wait this long before
    /// another node takes them over.
    pub fn claim_secs(mut self, secs: u32) -> Self {
        self.claim_secs = i64::from(secs.max(1));
        self
    }

    /// Puts every table in `schema` (created if missing): one deployment,
    /// or one test, per schema. 1–63 of lowercase ASCII letters, digits and
    /// `_` (anything else is refused at connect).
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The pool's size.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long a call waits for a free connection.
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.acquire_timeout = d;
        self
    }

    /// The server-side `statement_timeout`.
    pub fn statement_timeout(mut self, d: Duration) -> Self {
        self.statement_timeout = d;
        self
    }

    /// The schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    fn connect_options(&self) -> Result<PgConnectOptions, StoreError> {
        if !valid_schema(&self.schema) {
            return Err(StoreError::backend(Error::Config(
                "schema: 1-63 of lowercase letters, digits and _".into(),
            )));
        }
        let opts = PgConnectOptions::from_str(&self.url).map_err(|_| {
            StoreError::backend(Error::Config(format!(
                "cannot parse the database URL {}",
                redact_url(&self.url)
            )))
        })?;
        let ms = self.statement_timeout.as_millis().max(1);
        Ok(opts.options([
            ("search_path", self.schema.as_str()),
            ("statement_timeout", &ms.to_string()),
        ]))
    }

    async fn pool(&self) -> Result<PgPool, StoreError> {
        PgPoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.acquire_timeout)
            .connect_with(self.connect_options()?)
            .await
            .map_err(|e| StoreError::backend(Error::from(e)))
    }
}

/// Every store port of [`sms_core::store`] on PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    schema: String,
    /// This store's name among the nodes (claims on send tasks).
    node: String,
    claim_secs: i64,
}

impl PgStore {
    /// Connects, creates the schema if missing and applies the embedded
    /// migrations.
    pub async fn connect(options: &PgOptions) -> Result<Self, StoreError> {
        let pool = options.pool().await?;
        schema::migrate(&pool, &options.schema)
            .await
            .map_err(StoreError::from)?;
        let node: String = sqlx::query_scalar("SELECT gen_random_uuid()::text")
            .fetch_one(&pool)
            .await
            .map_err(db)?;
        Ok(Self {
            pool,
            schema: options.schema.clone(),
            node,
            claim_secs: options.claim_secs,
        })
    }

    /// Shorthand for [`connect`](Self::connect) with a URL and a schema.
    pub async fn connect_url(url: &str, schema: &str) -> Result<Self, StoreError> {
        Self::connect(&PgOptions::new(url).schema(schema)).await
    }

    /// Every port of this store as [`Stores`].
    pub fn stores(self: Arc<Self>) -> Stores {
        Stores::from_single(self)
    }

    /// The connection pool (for the delivery queue and the event hub on the
    /// same database).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This store's node name (random per connect): whose claims it holds.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// A trivial query: whether the database answers (readiness probes).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| Error::from(e).into())
    }

    /// Drops this store's schema with every table in it (for tests and
    /// throw-away deployments; the store is unusable afterwards). Refuses
    /// the `public` schema.
    pub async fn drop_schema(&self) -> Result<(), StoreError> {
        if self.schema == "public" {
            return Err(StoreError::backend(Error::Config(
                "the public schema is not dropped".into(),
            )));
        }
        // The name was checked to be letters, digits and `_` only.
        sqlx::query(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ))
        .execute(&self.pool)
        .await
        .map(|_| ())
        .map_err(db)
    }

    /// Renews this node's claims on open send tasks now (the heartbeat that
    /// [`spawn_heartbeat`](Self::spawn_heartbeat) repeats); returns how many.
    pub async fn renew_claims(&self) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE tasks SET claimed_until = extract(epoch FROM now())::bigint + $2 \
             WHERE claimed_by = $1 AND open",
        )
        .bind(&self.node)
        .bind(self.claim_secs)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(db)
    }

    /// Renews this node's claims every third of the claim's length while
    /// the returned task runs (abort it, or let the runtime end, to stop):
    /// a live node keeps its send tasks however long one batch takes, a dead
    /// one stops renewing and its tasks are taken over.
    pub fn spawn_heartbeat(&self) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        let every = Duration::from_secs(u64::try_from(self.claim_secs / 3).unwrap_or(1).max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = store.renew_claims().await {
                    tracing::warn!(error = %e, "send-task claim heartbeat failed");
                }
            }
        })
    }

    /// Gives up this node's claims on send tasks (a graceful shutdown), so
    /// another node takes them over at once; returns how many.
    pub async fn release_claims(&self) -> Result<u64, StoreError> {
        sqlx::query(
            "UPDATE tasks SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = $1",
        )
        .bind(&self.node)
        .execute(&self.pool)
        .await
        .map(|r| r.rows_affected())
        .map_err(db)
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Failures inside this crate, converted into [`StoreError`] at the port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored record does not decode ({0}): {1}")]
    Codec(&'static str, serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(StoreError),
}

impl Error {
    /// A serialisation failure or a deadlock: the transaction may be run
    /// again.
    fn retryable(&self) -> bool {
        matches!(self, Error::Db(sqlx::Error::Database(d))
            if matches!(d.code().as_deref(), Some("40001" | "40P01")))
    }
}

impl From<Error> for StoreError {
    fn from(e: Error) -> Self {
        match e {
            Error::Store(s) => s,
            Error::Db(sqlx::Error::Database(d)) if d.code().as_deref() == Some("23505") => {
                StoreError::Conflict(unique_field(d.constraint().unwrap_or_default()))
            }
            other => StoreError::backend(other),
        }
    }
}

/// The field a unique constraint guards (constraints are named
/// `<table>_<field>_key` by the migrations).
fn unique_field(constraint: &str) -> UniqueField {
    if constraint.contains("username") {
        UniqueField::Username
    } else if constraint.contains("phone") {
        UniqueField::Phone
    } else if constraint.contains("email") {
        UniqueField::Email
    } else {
        UniqueField::Id
    }
}

pub(crate) type Result2<T> = Result<T, Error>;

pub(crate) fn encode<T: Serialize>(what: &'static str, v: &T) -> Result2<String> {
    serde_json::to_string(v).map_err(|e| Error::Codec(what, e))
}

pub(crate) fn decode<T: DeserializeOwned>(what: &'static str, s: &str) -> Result2<T> {
    serde_json::from_str(s).map_err(|e| Error::Codec(what, e))
}

/// Every row's body decoded, in order.
pub(crate) fn decode_all<T: DeserializeOwned>(
    what: &'static str,
    rows: &[String],
) -> Result2<Vec<T>> {
    rows.iter().map(|s| decode(what, s)).collect()
}

pub(crate) fn decode_opt<T: DeserializeOwned>(
    what: &'static str,
    s: Option<String>,
) -> Result2<Option<T>> {
    s.map(|s| decode(what, &s)).transpose()
}

pub(crate) fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Takes transaction-scoped advisory locks on `keys` (each prefixed by its
/// namespace), in one global order (by hash), so concurrent decisions over
/// overlapping keys serialise and never deadlock. For keys that may have no
/// row yet (limit states, a user's sessions, a mailbox).
pub(crate) async fn lock_keys(conn: &mut sqlx::PgConnection, keys: Vec<String>) -> Result2<()> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM \
         (SELECT DISTINCT hashtextextended(k, 0) AS h FROM unnest($1::text[]) AS k ORDER BY h) AS s",
    )
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `$body` (an expression of type `Result2<T>` using the transaction
/// `$tx`) in a transaction, committing on `Ok`, again on a serialisation
/// failure or deadlock (at most [`MAX_RETRIES`] times); evaluates to
/// `StoreResult<T>`.
macro_rules! in_tx {
    ($store:expr, |$tx:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let outcome: $crate::Result2<_> = async {
                let mut $tx = $store.begin().await?;
                let v: $crate::Result2<_> = { $body };
                let v = v?;
                $tx.commit().await?;
                Ok(v)
            }
            .await;
            match outcome {
                Err(e) if e.retryable() && attempt < $crate::MAX_RETRIES => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(u64::from(attempt) * 3))
                        .await;
                }
                other => break other.map_err(sms_core::error::StoreError::from),
            }
        }
    }};
}
pub(crate) use in_tx;

impl PgStore {
    pub(crate) async fn begin(&self) -> Result2<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// A query error as a [`StoreError`].
pub(crate) fn db(e: sqlx::Error) -> StoreError {
    Error::from(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_parameters() {
        assert_eq!(
            redact_url("postgres://sms:hunter2@db:5432/sms?sslmode=disable"),
            "postgres://sms:***@db:5432/sms"
        );
        assert_eq!(
            redact_url("postgres://sms@db:5432/sms"),
            "postgres://sms@db:5432/sms"
        );
        assert_eq!(redact_url("postgres://db/sms"), "postgres://db/sms");
        assert_eq!(redact_url("hunter2"), "***");
        let debug = format!("{:?}", PgOptions::new("postgres://u:hunter2@h/d"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn schema_names_are_checked_before_any_connection() {
        for bad in ["", "Sms", "a-b", "a b", "x\"y", &"a".repeat(64)] {
            assert!(!valid_schema(bad), "{bad:?}");
            assert!(PgOptions::new("postgres://u@h/d")
                .schema(bad)
                .connect_options()
                .is_err());
        }
        for good in ["public", "sms_1", "t_conf_0a1b"] {
            assert!(valid_schema(good), "{good:?}");
        }
    }

    #[test]
    fn unique_violations_name_their_field() {
        assert_eq!(unique_field("users_username_key"), UniqueField::Username);
        assert_eq!(unique_field("users_phone_key"), UniqueField::Phone);
        assert_eq!(unique_field("users_email_key"), UniqueField::Email);
        assert_eq!(unique_field("users_pkey"), UniqueField::Id);
    }
}
