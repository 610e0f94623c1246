//! Embedded migrations: a list of SQL scripts applied in order, each once,
//! recorded in `schema_version`. Nodes starting at once apply them under an
//! advisory lock, so exactly one applies each.

use sqlx::PgPool;

use crate::{Error, Result2};

/// The migrations, in order; never edit one that has shipped, add another.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "initial", INITIAL),
    (2, "task gateway ids", GATEWAY_IDS),
    (3, "pool used runs", POOL_RUNS),
];

/// Per app, runs of numbers (by `pool_numbers.seq`) all used for it
/// (`sms_core::pool::UsedRun`), so hand-outs and leases jump over them.
/// Empty after the upgrade: the first sweeps for each app rebuild them.
const POOL_RUNS: &str = r#"
CREATE TABLE pool_runs (
    app text NOT NULL,
    last_seq bigint NOT NULL,
    first_seq bigint NOT NULL,
    PRIMARY KEY (app, last_seq)
);
"#;

/// Receipts find their recipient by (carrier, provider message id).
const GATEWAY_IDS: &str = r#"
CREATE TABLE task_gateway_ids (
    carrier text NOT NULL,
    gateway_id text NOT NULL,
    uuid text NOT NULL,
    idx bigint NOT NULL,
    PRIMARY KEY (carrier, gateway_id)
);
"#;

const INITIAL: &str = r#"
CREATE TABLE users (
    id text PRIMARY KEY,
    username text CONSTRAINT users_username_key UNIQUE,
    phone text CONSTRAINT users_phone_key UNIQUE,
    email text CONSTRAINT users_email_key UNIQUE,
    body text NOT NULL
);
CREATE SEQUENCE session_seq;
CREATE TABLE sessions (
    token_hash text PRIMARY KEY,
    user_id text NOT NULL,
    body text NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE TABLE codes (
    key text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE grants (
    key text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE limits (
    key text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE pool_meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
INSERT INTO pool_meta (key, value) VALUES ('lock', 0);
CREATE TABLE pool_numbers (
    seq bigserial PRIMARY KEY,
    phone text NOT NULL UNIQUE,
    body text NOT NULL
);
CREATE TABLE leases (
    id text PRIMARY KEY,
    until bigint NOT NULL,
    settled boolean NOT NULL,
    body text NOT NULL
);
CREATE INDEX leases_open ON leases (until, id) WHERE NOT settled;
CREATE TABLE items (
    id text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE sms_queue (
    seq bigserial PRIMARY KEY,
    app text NOT NULL,
    at bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX sms_queue_app ON sms_queue (app, seq);
CREATE TABLE device_queue (
    seq bigserial PRIMARY KEY,
    cid text NOT NULL,
    at bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX device_queue_cid ON device_queue (cid, seq);
CREATE SEQUENCE mailbox_seq;
CREATE TABLE mailbox (
    user_id text NOT NULL,
    seq bigint NOT NULL,
    at bigint NOT NULL,
    body text NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE TABLE balances (
    user_id text PRIMARY KEY,
    body text NOT NULL
);
CREATE TABLE holds (
    hold_id text PRIMARY KEY,
    remaining bigint NOT NULL,
    expires_at bigint,
    body text NOT NULL
);
CREATE INDEX holds_expiring ON holds (expires_at, hold_id) WHERE remaining > 0;
CREATE TABLE ledger_entries (
    seq bigserial PRIMARY KEY,
    op_id text NOT NULL UNIQUE,
    user_id text NOT NULL,
    body text NOT NULL
);
CREATE INDEX ledger_entries_user ON ledger_entries (user_id, seq);
CREATE TABLE signatures (
    id bigserial PRIMARY KEY,
    owner text NOT NULL,
    body text NOT NULL
);
CREATE TABLE templates (
    id bigserial PRIMARY KEY,
    sign_id bigint NOT NULL,
    owner text NOT NULL,
    body text NOT NULL
);
CREATE INDEX templates_sign ON templates (sign_id);
CREATE TABLE tasks (
    seq bigserial PRIMARY KEY,
    uuid text NOT NULL UNIQUE,
    open boolean NOT NULL,
    body text NOT NULL,
    statuses text NOT NULL,
    claimed_by text,
    claimed_until bigint
);
CREATE INDEX tasks_open ON tasks (seq) WHERE open;
CREATE TABLE delivery (
    seq bigserial PRIMARY KEY,
    key text NOT NULL UNIQUE,
    next_at bigint,
    body text NOT NULL
);
CREATE INDEX delivery_due ON delivery (next_at, seq) WHERE next_at IS NOT NULL;
CREATE TABLE events (
    id bigserial PRIMARY KEY,
    node text NOT NULL,
    user_id text NOT NULL,
    at_ms bigint NOT NULL,
    body text NOT NULL
);
CREATE INDEX events_at ON events (at_ms);
"#;

/// Creates `schema` if missing and applies the migrations it lacks.
pub(crate) async fn migrate(pool: &PgPool, schema: &str) -> Result2<()> {
    let mut tx = pool.begin().await?;
    // One migrator at a time across nodes (the lock ends with the
    // transaction).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('sms-migrate:' || $1, 0))")
        .bind(schema)
        .execute(&mut *tx)
        .await?;
    // The name was checked to be letters, digits and `_` only.
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_version \
         (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await?;
    let current: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM schema_version")
        .fetch_one(&mut *tx)
        .await?;
    let current = current.unwrap_or(0);
    if let Some((latest, _, _)) = MIGRATIONS.last() {
        if current > *latest {
            return Err(Error::Config(format!(
                "the database schema is at version {current}, newer than this build knows ({latest}): upgrade this node"
            )));
        }
    }
    for (version, name, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO schema_version (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tracing::info!(version, name, "database migration applied");
    }
    tx.commit().await?;
    Ok(())
}
