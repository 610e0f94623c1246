//! [`UserStore`], [`SessionStore`], [`CodeStore`], [`GrantStore`] and
//! [`LimitStore`].

use async_trait::async_trait;
use sqlx::PgConnection;

use sms_core::code_decision::{CodeDecision, CodeState, CodeVerdict};
use sms_core::error::StoreError;
use sms_core::limits::{evaluate, LimitCheck, LimitDecision, LimitState};
use sms_core::phone::PhoneNumber;
use sms_core::secret::TokenHash;
use sms_core::session_decision::OpenSession;
use sms_core::store::{
    CodeKey, CodeRecord, CodeStore, ConsumeOutcome, Grant, GrantKind, GrantStore, LimitMode,
    LimitStore, RevokeScope, Session, SessionStore, StoreResult, UserKey, UserStore,
};
use sms_core::user::{User, UserChange, UserId};

use crate::{
    db, decode, decode_all, decode_opt, encode, in_tx, lock_keys, to_u64, Error, PgStore, Result2,
};

const USERS: &str = "users";
const SESSIONS: &str = "sessions";
const CODES: &str = "codes";
const GRANTS: &str = "grants";
const LIMITS: &str = "limits";

fn user_lock(id: &UserId) -> String {
    format!("user:{}", id.as_str())
}

fn limit_lock(key: &str) -> String {
    format!("limit:{key}")
}

fn grant_key(kind: GrantKind, phone: &PhoneNumber) -> String {
    let kind = match kind {
        GrantKind::Registration => "registration",
        GrantKind::PasswordReset => "password_reset",
    };
    format!("{kind}|{}", phone.as_e164())
}

async fn insert_user(conn: &mut PgConnection, user: &User) -> Result2<()> {
    sqlx::query("INSERT INTO users (id, username, phone, email, body) VALUES ($1, $2, $3, $4, $5)")
        .bind(user.id.as_str())
        .bind(user.username.as_ref().map(|u| u.key()))
        .bind(user.phone.as_ref().map(|p| p.as_e164().to_owned()))
        .bind(user.email.as_ref().map(|e| e.as_str().to_owned()))
        .bind(encode(USERS, user)?)
        .execute(conn)
        .await?;
    Ok(())
}

async fn user_where(store: &PgStore, column: &str, value: &str) -> StoreResult<Option<User>> {
    // `column` is one of this module's constants, never input.
    let body: Option<String> =
        sqlx::query_scalar(&format!("SELECT body FROM users WHERE {column} = $1"))
            .bind(value)
            .fetch_optional(&store.pool)
            .await
            .map_err(db)?;
    Ok(decode_opt(USERS, body)?)
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(&self, user: User) -> StoreResult<()> {
        in_tx!(self, |tx| insert_user(&mut tx, &user).await)
    }

    async fn user(&self, key: &UserKey) -> StoreResult<Option<User>> {
        match key {
            UserKey::Id(id) => user_where(self, "id", id.as_str()).await,
            UserKey::Username(username) => user_where(self, "username", &username.key()).await,
            UserKey::Phone(phone) => user_where(self, "phone", phone.as_e164()).await,
            UserKey::Email(email) => user_where(self, "email", email.as_str()).await,
        }
    }

    async fn update_user(&self, id: &UserId, change: UserChange) -> StoreResult<User> {
        in_tx!(self, |tx| {
            async {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM users WHERE id = $1 FOR UPDATE")
                        .bind(id.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                let before: User = match body {
                    Some(b) => decode(USERS, &b)?,
                    None => return Err(Error::Store(StoreError::NotFound)),
                };
                let mut after = before.clone();
                change.apply(&mut after);
                sqlx::query(
                    "UPDATE users SET username = $2, phone = $3, email = $4, body = $5 WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(after.username.as_ref().map(|u| u.key()))
                .bind(after.phone.as_ref().map(|p| p.as_e164().to_owned()))
                .bind(after.email.as_ref().map(|e| e.as_str().to_owned()))
                .bind(encode(USERS, &after)?)
                .execute(&mut *tx)
                .await?;
                Ok(before)
            }
            .await
        })
    }
}

async fn sessions_of(conn: &mut PgConnection, user: &UserId) -> Result2<Vec<Session>> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT body FROM sessions WHERE user_id = $1")
        .bind(user.as_str())
        .fetch_all(conn)
        .await?;
    decode_all(SESSIONS, &rows)
}

#[async_trait]
impl SessionStore for PgStore {
    async fn open_session(&self, request: OpenSession) -> StoreResult<Session> {
        in_tx!(self, |tx| {
            async {
                let user_id = &request.session.user_id;
                lock_keys(&mut tx, vec![user_lock(user_id)]).await?;
                if let Some(user) = &request.new_user {
                    insert_user(&mut tx, user).await?;
                }
                let existing = sessions_of(&mut tx, user_id).await?;
                let seq: i64 = sqlx::query_scalar("SELECT nextval('session_seq')")
                    .fetch_one(&mut *tx)
                    .await?;
                let admission = request.apply(&existing, to_u64(seq));
                let evict: Vec<String> = admission.evict.iter().map(|h| h.to_hex()).collect();
                sqlx::query("DELETE FROM sessions WHERE token_hash = ANY($1)")
                    .bind(evict)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO sessions (token_hash, user_id, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (token_hash) DO UPDATE SET user_id = $2, body = $3",
                )
                .bind(admission.session.token_hash.to_hex())
                .bind(user_id.as_str())
                .bind(encode(SESSIONS, &admission.session)?)
                .execute(&mut *tx)
                .await?;
                Ok(admission.session)
            }
            .await
        })
    }

    async fn session(&self, token_hash: &TokenHash) -> StoreResult<Option<Session>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM sessions WHERE token_hash = $1")
                .bind(token_hash.to_hex())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(decode_opt(SESSIONS, body)?)
    }

    async fn mark_session_used(
        &self,
        token_hash: &TokenHash,
        now: i64,
    ) -> StoreResult<Option<Session>> {
        in_tx!(self, |tx| {
            async {
                let body: Option<String> = sqlx::query_scalar(
                    "SELECT body FROM sessions WHERE token_hash = $1 FOR UPDATE",
                )
                .bind(token_hash.to_hex())
                .fetch_optional(&mut *tx)
                .await?;
                let Some(before) = decode_opt::<Session>(SESSIONS, body)? else {
                    return Ok(None);
                };
                if before.first_used_at.is_none() {
                    let mut after = before.clone();
                    after.first_used_at = Some(now);
                    sqlx::query("UPDATE sessions SET body = $2 WHERE token_hash = $1")
                        .bind(token_hash.to_hex())
                        .bind(encode(SESSIONS, &after)?)
                        .execute(&mut *tx)
                        .await?;
                }
                Ok(Some(before))
            }
            .await
        })
    }

    async fn revoke(&self, scope: RevokeScope) -> StoreResult<usize> {
        let query = match scope {
            RevokeScope::Session(hash) => {
                sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(hash.to_hex())
            }
            RevokeScope::User { user_id, keep } => {
                let keep = keep.map(|k| k.to_hex()).unwrap_or_default();
                sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_hash <> $2")
                    .bind(user_id.as_str().to_owned())
                    .bind(keep)
            }
        };
        let r = query.execute(&self.pool).await.map_err(db)?;
        Ok(usize::try_from(r.rows_affected()).unwrap_or(usize::MAX))
    }

    async fn user_sessions(&self, user_id: &UserId) -> StoreResult<Vec<Session>> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        Ok(sessions_of(&mut conn, user_id).await?)
    }
}

/// The limit states of `keys` (default when absent), in order.
async fn load_limits(conn: &mut PgConnection, keys: &[&str]) -> Result2<Vec<LimitState>> {
    let owned: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT key, body FROM limits WHERE key = ANY($1)")
            .bind(&owned)
            .fetch_all(&mut *conn)
            .await?;
    let mut found = std::collections::HashMap::new();
    for (k, b) in rows {
        found.insert(k, decode::<LimitState>(LIMITS, &b)?);
    }
    Ok(keys
        .iter()
        .map(|k| found.get(*k).cloned().unwrap_or_default())
        .collect())
}

/// Writes the limit states that differ from `before`, in one statement.
async fn store_limits(
    conn: &mut PgConnection,
    keys: &[&str],
    before: &[LimitState],
    after: &[LimitState],
) -> Result2<()> {
    // A key named twice: the last position wins (as the decision documents).
    let mut last = std::collections::HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        last.insert(*k, i);
    }
    let mut changed_keys = Vec::new();
    let mut bodies = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        if last.get(k) != Some(&i) {
            continue;
        }
        let (Some(b), Some(a)) = (before.get(i), after.get(i)) else {
            continue;
        };
        if a == b {
            continue;
        }
        changed_keys.push((*k).to_owned());
        bodies.push(encode(LIMITS, a)?);
    }
    if changed_keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO limits (key, body) SELECT * FROM unnest($1::text[], $2::text[]) \
         ON CONFLICT (key) DO UPDATE SET body = excluded.body",
    )
    .bind(changed_keys)
    .bind(bodies)
    .execute(conn)
    .await?;
    Ok(())
}

async fn put_limit(conn: &mut PgConnection, key: &str, state: &LimitState) -> Result2<()> {
    sqlx::query(
        "INSERT INTO limits (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = $2",
    )
    .bind(key)
    .bind(encode(LIMITS, state)?)
    .execute(conn)
    .await?;
    Ok(())
}

async fn put_grant(conn: &mut PgConnection, grant: &Grant) -> Result2<()> {
    sqlx::query(
        "INSERT INTO grants (key, body) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET body = $2",
    )
    .bind(grant_key(grant.kind, &grant.phone))
    .bind(encode(GRANTS, grant)?)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl CodeStore for PgStore {
    async fn decide_code(&self, decision: CodeDecision) -> StoreResult<CodeVerdict> {
        in_tx!(self, |tx| {
            async {
                let keys = decision.limit_keys();
                let flat = decision.key().flat();
                let mut locks: Vec<String> = keys.iter().map(|k| limit_lock(k)).collect();
                locks.push(format!("code:{flat}"));
                lock_keys(&mut tx, locks).await?;
                let code: Option<String> =
                    sqlx::query_scalar("SELECT body FROM codes WHERE key = $1")
                        .bind(&flat)
                        .fetch_optional(&mut *tx)
                        .await?;
                let code: Option<CodeRecord> = decode_opt(CODES, code)?;
                let limits = load_limits(&mut tx, &keys).await?;
                let mut state = CodeState {
                    code: code.clone(),
                    limits: limits.clone(),
                    grant: None,
                };
                let verdict = decision.apply(&mut state);
                if let Some(grant) = &state.grant {
                    put_grant(&mut tx, grant).await?;
                }
                if state.code != code {
                    match &state.code {
                        Some(c) => {
                            sqlx::query(
                                "INSERT INTO codes (key, body) VALUES ($1, $2) \
                                 ON CONFLICT (key) DO UPDATE SET body = $2",
                            )
                            .bind(&flat)
                            .bind(encode(CODES, c)?)
                            .execute(&mut *tx)
                            .await?;
                        }
                        None => {
                            sqlx::query("DELETE FROM codes WHERE key = $1")
                                .bind(&flat)
                                .execute(&mut *tx)
                                .await?;
                        }
                    }
                }
                store_limits(&mut tx, &keys, &limits, &state.limits).await?;
                Ok(verdict)
            }
            .await
        })
    }

    async fn code(&self, key: &CodeKey) -> StoreResult<Option<CodeRecord>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM codes WHERE key = $1")
            .bind(key.flat())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(CODES, body)?)
    }
}

#[async_trait]
impl GrantStore for PgStore {
    async fn put_grant(&self, grant: Grant) -> StoreResult<()> {
        in_tx!(self, |tx| put_grant(&mut tx, &grant).await)
    }

    async fn grant(&self, kind: GrantKind, phone: &PhoneNumber) -> StoreResult<Option<Grant>> {
        let body: Option<String> = sqlx::query_scalar("SELECT body FROM grants WHERE key = $1")
            .bind(grant_key(kind, phone))
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(decode_opt(GRANTS, body)?)
    }

    async fn consume_grant(
        &self,
        kind: GrantKind,
        phone: &PhoneNumber,
        presented: Option<TokenHash>,
        now: i64,
    ) -> StoreResult<ConsumeOutcome> {
        in_tx!(self, |tx| {
            async {
                let body: Option<String> =
                    sqlx::query_scalar("SELECT body FROM grants WHERE key = $1 FOR UPDATE")
                        .bind(grant_key(kind, phone))
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some(mut grant) = decode_opt::<Grant>(GRANTS, body)? else {
                    return Ok(ConsumeOutcome::Missing);
                };
                let before = grant.clone();
                let outcome = grant.consume(presented.as_ref(), now);
                if grant != before {
                    put_grant(&mut tx, &grant).await?;
                }
                Ok(outcome)
            }
            .await
        })
    }
}

#[async_trait]
impl LimitStore for PgStore {
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: LimitMode,
    ) -> StoreResult<LimitDecision> {
        if mode == LimitMode::Peek {
            let mut conn = self.pool.acquire().await.map_err(db)?;
            let keys: Vec<&str> = checks.iter().map(|c| c.key.as_str()).collect();
            let states = load_limits(&mut conn, &keys).await?;
            return Ok(evaluate(&states, checks, now));
        }
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, checks.iter().map(|c| limit_lock(&c.key)).collect()).await?;
                let keys: Vec<&str> = checks.iter().map(|c| c.key.as_str()).collect();
                let states = load_limits(&mut tx, &keys).await?;
                let decision = evaluate(&states, checks, now);
                if decision.is_allowed() {
                    let mut after = states.clone();
                    for (s, c) in after.iter_mut().zip(checks) {
                        s.record(&c.rule, now);
                    }
                    store_limits(&mut tx, &keys, &states, &after).await?;
                }
                Ok(decision)
            }
            .await
        })
    }

    async fn record(&self, check: &LimitCheck, now: i64) -> StoreResult<()> {
        in_tx!(self, |tx| {
            async {
                lock_keys(&mut tx, vec![limit_lock(&check.key)]).await?;
                let mut states = load_limits(&mut tx, &[check.key.as_str()]).await?;
                let mut state = states.pop().unwrap_or_default();
                state.record(&check.rule, now);
                put_limit(&mut tx, &check.key, &state).await
            }
            .await
        })
    }

    async fn reset(&self, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM limits WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }
}
