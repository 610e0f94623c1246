//! Accounts (decision G8): sign-up by username or by phone, login by either,
//! sessions and their revocation, password change and reset, registration
//! grants (`telsignup`), reset permits (`account_v4`), recovery by email
//! (`hub`), email binding, device tracking and bans.
//!
//! Checks run in the order the dialects need (each method documents its
//! order); front ends only parse their wire format and map errors.

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use crate::clock::Clock;
use crate::codes::{CodeAddress, CodeService, Issued};
use crate::credentials::{AccountLocks, HashGate, VerifiedCache};
use crate::error::{CoreError, StoreError, UniqueField};
use crate::events::{Event, EventHub, KickoutReason};
use crate::identity::{DisplayName, Email, Password, PasswordPolicy, Username, ROOT_USERNAME};
use crate::limits::{ip_limit_key, LimitCheck, LimitDecision, LimitRule, DEFAULT_IPV6_PREFIX_LEN};
use crate::password::PasswordHasher;
use crate::phone::PhoneNumber;
use crate::provision::{ChatCredentials, ChatProvisioner};
use crate::random::RandomSource;
use crate::secret::{Token, TokenHash};
use crate::session_decision::OpenSession;
pub use crate::store::SessionOrigin;
use crate::store::{
    ConsumeOutcome, Grant, GrantKind, LimitMode, Purpose, RevokeScope, Session, Stores, UserKey,
};
use crate::user::{User, UserChange, UserId};

/// Account rules; every number is configuration with these defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountPolicy {
    /// Session lifetime (7 days).
    pub session_ttl_secs: i64,
    /// Failed logins per account before a lockout (5) …
    pub login_failures_max: u32,
    /// … within this window (15 min) …
    pub login_failures_window_secs: i64,
    /// … lock for this long (15 min).
    pub login_lockout_secs: i64,
    /// `telsignup` registration token lifetime (30 min).
    pub registration_grant_ttl_secs: i64,
    /// `account_v4` reset permit lifetime (10 min).
    pub reset_permit_ttl_secs: i64,
    /// Registration probes (`isregister`, `sendsms`) per client IP per minute (30).
    pub probes_per_ip_minute: u32,
    /// Registration probes per client IP per day (1,000).
    pub probes_per_ip_day: u32,
    /// How long a verified (account, password) pair is accepted without
    /// argon2 (300 s; 0 disables the cache).
    pub verified_cache_secs: i64,
    /// Live sessions kept per user; a login beyond it revokes the oldest
    /// (50).
    pub max_sessions_per_user: usize,
    /// IPv6 clients are counted by their network of this many bits (64);
    /// see [`ip_limit_key`].
    pub ipv6_prefix_len: u8,
    /// Failed password checks (logins, HTTP Basic auth) per client IP per
    /// hour (100); once spent, password checks from that client are refused
    /// before any hashing until the window frees up.
    pub failed_passwords_per_ip_hour: u32,
    /// Password checks (argon2) running at once for unauthenticated
    /// requests (4) …
    pub max_concurrent_password_checks: usize,
    /// … and waiting for a turn (32): a check beyond both is refused at once
    /// ([`CoreError::Overloaded`]) instead of queueing behind the others.
    pub max_waiting_password_checks: usize,
}

impl Default for AccountPolicy {
    fn default() -> Self {
        Self {
            session_ttl_secs: 7 * 86_400,
            login_failures_max: 5,
            login_failures_window_secs: 900,
            login_lockout_secs: 900,
            registration_grant_ttl_secs: 1_800,
            reset_permit_ttl_secs: 600,
            probes_per_ip_minute: 30,
            probes_per_ip_day: 1_000,
            verified_cache_secs: 300,
            max_sessions_per_user: 50,
            ipv6_prefix_len: DEFAULT_IPV6_PREFIX_LEN,
            failed_passwords_per_ip_hour: 100,
            max_concurrent_password_checks: 4,
            max_waiting_password_checks: 32,
        }
    }
}

/// A store conflict on a unique field, as the error a caller sees.
fn unique_error(e: StoreError) -> CoreError {
    match e {
        StoreError::Conflict(UniqueField::Username) => CoreError::UsernameTaken,
        StoreError::Conflict(UniqueField::Phone) => CoreError::PhoneTaken,
        StoreError::Conflict(UniqueField::Email) => CoreError::EmailTaken,
        other => CoreError::Store(other),
    }
}

/// A successful login or registration.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The account.
    pub user: User,
    /// A new session token.
    pub token: Token,
    /// The device differs from the one of the previous login or
    /// registration.
    pub change_device: bool,
}

/// A successful `telsignup` registration.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The account.
    pub user: User,
    /// A new session token.
    pub token: Token,
    /// Chat credentials from the provisioner.
    pub chat: ChatCredentials,
}

/// A session being opened (WebSocket login).
#[derive(Debug, Clone)]
pub struct OpenedSession {
    /// The account.
    pub user: User,
    /// The session as it was before this use.
    pub session: Session,
    /// This is the first use of the token.
    pub first_use: bool,
}

/// The account service.
#[derive(Debug, Clone)]
pub struct Accounts {
    stores: Stores,
    codes: Arc<CodeService>,
    hasher: Arc<dyn PasswordHasher>,
    provisioner: Arc<dyn ChatProvisioner>,
    events: Arc<dyn EventHub>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    policy: AccountPolicy,
    /// A lazily computed hash, verified against on logins for unknown
    /// accounts so that they cost as much as real ones.
    dummy_hash: Arc<OnceLock<String>>,
    account_locks: Arc<AccountLocks>,
    verified: Arc<VerifiedCache>,
    hash_gate: Arc<HashGate>,
}

impl Accounts {
    /// An account service over the given ports (normally built by
    /// [`crate::Core::builder`]).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: Stores,
        codes: Arc<CodeService>,
        hasher: Arc<dyn PasswordHasher>,
        provisioner: Arc<dyn ChatProvisioner>,
        events: Arc<dyn EventHub>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        policy: AccountPolicy,
    ) -> Self {
        let verified = Arc::new(VerifiedCache::new(rng.as_ref(), policy.verified_cache_secs));
        Self {
            stores,
            codes,
            hasher,
            provisioner,
            events,
            clock,
            rng,
            dummy_hash: Arc::default(),
            account_locks: Arc::new(AccountLocks::new()),
            verified,
            hash_gate: Arc::new(HashGate::new(
                policy.max_concurrent_password_checks,
                policy.max_waiting_password_checks,
            )),
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &AccountPolicy {
        &self.policy
    }

    // ----- sessions -------------------------------------------------------

    /// Opens a session for `user_id` (one store call: the per-user cap, and
    /// a login told from a renewal, decided by [`OpenSession::apply`]).
    async fn issue_session(
        &self,
        user_id: &UserId,
        origin: SessionOrigin,
    ) -> Result<Token, CoreError> {
        self.open_new_session(user_id, origin, None).await
    }

    /// Creates `user` and opens its first session, in one atomic store call.
    async fn sign_up(&self, user: User) -> Result<Token, CoreError> {
        let id = user.id.clone();
        self.open_new_session(&id, SessionOrigin::Signup, Some(user))
            .await
    }

    async fn open_new_session(
        &self,
        user_id: &UserId,
        origin: SessionOrigin,
        new_user: Option<User>,
    ) -> Result<Token, CoreError> {
        let token = Token::generate(self.rng.as_ref());
        let now = self.clock.unix();
        let request = OpenSession {
            session: Session {
                token_hash: token.hash(),
                user_id: user_id.clone(),
                origin,
                issued_at: now,
                expires_at: now.saturating_add(self.policy.session_ttl_secs),
                first_used_at: None,
                seq: 0,
            },
            new_user,
            max_sessions: self.policy.max_sessions_per_user,
        };
        self.stores
            .sessions
            .open_session(request)
            .await
            .map_err(unique_error)?;
        Ok(token)
    }

    /// The live session and its user: [`CoreError::TokenInvalid`] if the token
    /// is unknown, expired or revoked, [`CoreError::Banned`] for banned users.
    pub async fn authenticate(&self, token: &Token) -> Result<(User, Session), CoreError> {
        let session = self
            .stores
            .sessions
            .session(&token.hash())
            .await?
            .ok_or(CoreError::TokenInvalid)?;
        if session.expires_at <= self.clock.unix() {
            return Err(CoreError::TokenInvalid);
        }
        let user = self
            .stores
            .users
            .user(&UserKey::Id(session.user_id.clone()))
            .await?
            .ok_or(CoreError::TokenInvalid)?;
        if user.banned {
            return Err(CoreError::Banned);
        }
        Ok((user, session))
    }

    /// Like [`authenticate`](Self::authenticate), and marks the token used,
    /// telling whether this was its first use (for `hub`'s login `flag`).
    pub async fn open_session(&self, token: &Token) -> Result<OpenedSession, CoreError> {
        let (user, _) = self.authenticate(token).await?;
        let session = self
            .stores
            .sessions
            .mark_session_used(&token.hash(), self.clock.unix())
            .await?
            .ok_or(CoreError::TokenInvalid)?;
        Ok(OpenedSession {
            user,
            first_use: session.first_used_at.is_none(),
            session,
        })
    }

    /// Revokes this token.
    pub async fn logout(&self, token: &Token) -> Result<(), CoreError> {
        self.stores
            .sessions
            .revoke(RevokeScope::Session(token.hash()))
            .await?;
        Ok(())
    }

    // ----- passwords and logins -------------------------------------------

    /// Verifies `password` against `phc` under the hashing gate
    /// ([`CoreError::Overloaded`] when too many checks run and wait).
    async fn gated_verify(&self, password: &str, phc: &str) -> Result<bool, CoreError> {
        let _turn = self.hash_gate.enter().await?;
        Ok(self.hasher.verify(password, phc).await)
    }

    /// The work of a password check for an account that does not exist, so
    /// that it costs as much as a real one.
    async fn verify_dummy(&self, password: &str) -> Result<(), CoreError> {
        let dummy = match self.dummy_hash.get() {
            Some(h) => h.clone(),
            None => {
                let h = self.hasher.hash("dummy-password").await;
                self.dummy_hash.get_or_init(|| h).clone()
            }
        };
        self.gated_verify(password, &dummy).await?;
        Ok(())
    }

    /// The per-IP budget of failed password checks of `ip`.
    fn password_failures_check(&self, ip: IpAddr) -> LimitCheck {
        LimitCheck::new(
            format!(
                "pwfail:ip:{}",
                ip_limit_key(ip, self.policy.ipv6_prefix_len)
            ),
            LimitRule::per(self.policy.failed_passwords_per_ip_hour, 3_600),
        )
    }

    /// Runs an unauthenticated password check `check` for a client: refused
    /// before any hashing ([`CoreError::RateLimited`]) once the client's
    /// budget of failed checks is spent; a failure
    /// ([`CoreError::UserNotFound`], [`CoreError::WrongPassword`]) is
    /// counted against that budget.
    async fn client_password_check<T, F>(
        &self,
        client_ip: Option<IpAddr>,
        check: F,
    ) -> Result<T, CoreError>
    where
        F: std::future::Future<Output = Result<T, CoreError>>,
    {
        let budget = client_ip.map(|ip| self.password_failures_check(ip));
        if let Some(b) = &budget {
            if let LimitDecision::Denied { retry_at, .. } = self
                .stores
                .limits
                .check(std::slice::from_ref(b), self.clock.unix(), LimitMode::Peek)
                .await?
            {
                crate::metrics::limit_refused(crate::metrics::Limit::PasswordBudget);
                return Err(CoreError::RateLimited { retry_at });
            }
        }
        match check.await {
            Err(e @ (CoreError::UserNotFound | CoreError::WrongPassword)) => {
                if let Some(b) = &budget {
                    self.stores.limits.record(b, self.clock.unix()).await?;
                }
                Err(e)
            }
            other => other,
        }
    }

    fn login_check(&self, user: &UserId) -> LimitCheck {
        LimitCheck::new(
            format!("login:fail:{user}"),
            LimitRule::per(
                self.policy.login_failures_max,
                self.policy.login_failures_window_secs,
            )
            .with_lockout(self.policy.login_lockout_secs),
        )
    }

    /// Checks a password for an existing user, with lockout, then the ban.
    ///
    /// Verifications of one account are serialised within the process, so
    /// concurrent guesses are counted one by one: at most
    /// [`AccountPolicy::login_failures_max`] wrong passwords are ever
    /// evaluated before the lockout. A recently verified (account, password)
    /// pair is accepted from a short-lived cache without argon2 — it still
    /// honours a lockout, a ban and a password change.
    async fn check_password(&self, user: &User, password: &str) -> Result<(), CoreError> {
        let check = self.login_check(&user.id);
        let locked = |s: &Self| {
            let check = check.clone();
            let limits = s.stores.limits.clone();
            let now = s.clock.unix();
            async move {
                match limits
                    .check(std::slice::from_ref(&check), now, LimitMode::Peek)
                    .await?
                {
                    LimitDecision::Denied { retry_at, .. } => {
                        crate::metrics::limit_refused(crate::metrics::Limit::LoginLockout);
                        Err(CoreError::AccountLocked { until: retry_at })
                    }
                    LimitDecision::Allowed => Ok(()),
                }
            }
        };
        let cached = |s: &Self| {
            s.verified
                .hit(&user.id, password, &user.password_hash, s.clock.unix())
        };
        // Whether this call ran argon2 itself (and so checked the lock and
        // then cleared it); a cached success still has to honour a lock.
        let mut verified_here = false;
        if !cached(self) {
            let _one_at_a_time = self.account_locks.of(&user.id).lock().await;
            if !cached(self) {
                locked(self).await?;
                if !self.gated_verify(password, &user.password_hash).await? {
                    let now = self.clock.unix();
                    self.verified.invalidate(&user.id, now);
                    self.stores.limits.record(&check, now).await?;
                    return Err(CoreError::WrongPassword);
                }
                self.stores.limits.reset(&check.key).await?;
                self.verified
                    .insert(&user.id, password, &user.password_hash, self.clock.unix());
                verified_here = true;
            }
        }
        if !verified_here {
            locked(self).await?;
        }
        if user.banned {
            return Err(CoreError::Banned);
        }
        Ok(())
    }

    async fn set_device(&self, user: &User, device: Option<&str>) -> Result<bool, CoreError> {
        let device = device.map(str::to_owned);
        if user.device == device {
            return Ok(false);
        }
        let before = self
            .stores
            .users
            .update_user(&user.id, UserChange::SetDevice(device.clone()))
            .await?;
        Ok(before.device != device)
    }

    /// Username sign-up (`hub`). Checks, in order: username rules, password
    /// rules ([`PasswordPolicy::STANDARD`]), reserved or taken
    /// ([`CoreError::UsernameTaken`]).
    pub async fn sign_up_username(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Token, CoreError> {
        let username = Username::parse(username)?;
        let password = Password::parse(password, PasswordPolicy::STANDARD)?;
        if username.is_root() {
            return Err(CoreError::UsernameTaken);
        }
        if self
            .stores
            .users
            .user(&UserKey::Username(username.clone()))
            .await?
            .is_some()
        {
            return Err(CoreError::UsernameTaken);
        }
        let user = self
            .new_user(Some(username), None, None, &password, None)
            .await;
        self.sign_up(user).await
    }

    async fn new_user(
        &self,
        username: Option<Username>,
        phone: Option<PhoneNumber>,
        name: Option<DisplayName>,
        password: &Password,
        device: Option<&str>,
    ) -> User {
        User {
            id: UserId::generate(self.rng.as_ref()),
            username,
            phone,
            email: None,
            name,
            password_hash: self.hasher.hash(password.expose()).await,
            device: device.map(str::to_owned),
            banned: false,
            points: 0,
            created_at: self.clock.unix(),
        }
    }

    async fn create(&self, user: User) -> Result<(), CoreError> {
        self.stores
            .users
            .create_user(user)
            .await
            .map_err(unique_error)
    }

    /// Username login (`hub`) without a client address: no per-IP budget
    /// applies ([`login_username_from`](Self::login_username_from)).
    pub async fn login_username(&self, username: &str, password: &str) -> Result<Token, CoreError> {
        self.login_username_from(username, password, None).await
    }

    /// Username login (`hub`) from `client_ip`. Unknown username →
    /// [`CoreError::UserNotFound`] after the same work as a wrong password;
    /// then lockout, password, ban. Both failures tell whether the user
    /// exists, so they count against the client's probe budget (and its
    /// budget of failed password checks): once either is spent, a failure
    /// answers [`CoreError::RateLimited`], whatever the user.
    pub async fn login_username_from(
        &self,
        username: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Token, CoreError> {
        let check =
            self.client_password_check(client_ip, self.username_password(username, password));
        let user = self.probed(client_ip, check).await?;
        self.issue_session(&user.id, SessionOrigin::Login).await
    }

    /// The user named `username` whose password is `password`:
    /// [`CoreError::UserNotFound`] after a dummy check, else
    /// [`check_password`](Self::check_password).
    async fn username_password(&self, username: &str, password: &str) -> Result<User, CoreError> {
        let user = match Username::parse(username) {
            Ok(u) => self.stores.users.user(&UserKey::Username(u)).await?,
            Err(_) => None,
        };
        let Some(user) = user else {
            self.verify_dummy(password).await?;
            return Err(CoreError::UserNotFound);
        };
        self.check_password(&user, password).await?;
        Ok(user)
    }

    /// Phone login (`account_v4`) without a client address: no per-IP
    /// budget applies ([`login_phone_from`](Self::login_phone_from)).
    pub async fn login_phone(
        &self,
        phone: &PhoneNumber,
        password: &str,
        device: Option<&str>,
    ) -> Result<LoginOutcome, CoreError> {
        self.login_phone_from(phone, password, device, None).await
    }

    /// Phone login (`account_v4`) from `client_ip`: unknown phone and wrong
    /// password both answer [`CoreError::WrongPassword`] after the same
    /// work, counted against the client's budget of failed password checks
    /// ([`CoreError::RateLimited`] once spent); records the device.
    pub async fn login_phone_from(
        &self,
        phone: &PhoneNumber,
        password: &str,
        device: Option<&str>,
        client_ip: Option<IpAddr>,
    ) -> Result<LoginOutcome, CoreError> {
        let user = self
            .client_password_check(client_ip, async {
                let Some(user) = self
                    .stores
                    .users
                    .user(&UserKey::Phone(phone.clone()))
                    .await?
                else {
                    self.verify_dummy(password).await?;
                    return Err(CoreError::WrongPassword);
                };
                self.check_password(&user, password).await?;
                Ok(user)
            })
            .await?;
        let change_device = self.set_device(&user, device).await?;
        let token = self.issue_session(&user.id, SessionOrigin::Login).await?;
        Ok(LoginOutcome {
            user,
            token,
            change_device,
        })
    }

    /// Changes the password of the token's user (`hub` `CSModifyPwd`):
    /// every session of the user is revoked and a new token is returned.
    pub async fn change_password(
        &self,
        token: &Token,
        new_password: &str,
    ) -> Result<Token, CoreError> {
        let (user, _) = self.authenticate(token).await?;
        let password = Password::parse(new_password, PasswordPolicy::STANDARD)?;
        self.replace_password(&user, &password).await?;
        let new = self
            .issue_session(&user.id, SessionOrigin::PasswordChange)
            .await?;
        // Every other live session of the user is closed (hub PushKickout 2).
        self.kick_out(&user.id, Some(token.hash()));
        Ok(new)
    }

    async fn replace_password(&self, user: &User, password: &Password) -> Result<(), CoreError> {
        let hash = self.hasher.hash(password.expose()).await;
        self.stores
            .users
            .update_user(&user.id, UserChange::SetPassword(hash))
            .await?;
        self.stores
            .sessions
            .revoke(RevokeScope::User {
                user_id: user.id.clone(),
                keep: None,
            })
            .await?;
        self.stores
            .limits
            .reset(&self.login_check(&user.id).key)
            .await?;
        Ok(())
    }

    /// Creates or updates the administrator `root` with this password.
    pub async fn ensure_root(&self, password: &str) -> Result<User, CoreError> {
        let password = Password::parse(password, PasswordPolicy::STANDARD)?;
        let name = Username::parse(ROOT_USERNAME)?;
        if let Some(root) = self
            .stores
            .users
            .user(&UserKey::Username(name.clone()))
            .await?
        {
            if !self
                .hasher
                .verify(password.expose(), &root.password_hash)
                .await
            {
                self.replace_password(&root, &password).await?;
            }
            return Ok(root);
        }
        let user = self.new_user(Some(name), None, None, &password, None).await;
        self.create(user.clone()).await?;
        Ok(user)
    }

    /// Checks a username and password (HTTP Basic auth of `sendapi`)
    /// without a client address
    /// ([`verify_credentials_from`](Self::verify_credentials_from)).
    pub async fn verify_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<User, CoreError> {
        self.verify_credentials_from(username, password, None).await
    }

    /// Checks a username and password (HTTP Basic auth of `sendapi`) from
    /// `client_ip`; failures count against the client's budget of failed
    /// password checks ([`CoreError::RateLimited`] once spent, before any
    /// hashing).
    pub async fn verify_credentials_from(
        &self,
        username: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<User, CoreError> {
        self.client_password_check(client_ip, self.username_password(username, password))
            .await
    }

    /// [`verify_credentials_from`](Self::verify_credentials_from), then the
    /// administrator rule: anyone but `root` is [`CoreError::NotRoot`].
    pub async fn verify_root_credentials_from(
        &self,
        username: &str,
        password: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<User, CoreError> {
        let user = self
            .verify_credentials_from(username, password, client_ip)
            .await?;
        if user.username.as_ref().is_some_and(Username::is_root) {
            Ok(user)
        } else {
            Err(CoreError::NotRoot)
        }
    }

    /// Bans or unbans a user by username; a ban revokes every session.
    /// `root` can never be banned ([`CoreError::NotRoot`]).
    pub async fn set_banned(&self, username: &str, banned: bool) -> Result<User, CoreError> {
        let name = Username::parse(username).map_err(|_| CoreError::UserNotFound)?;
        if name.is_root() {
            return Err(CoreError::NotRoot);
        }
        let user = self
            .stores
            .users
            .user(&UserKey::Username(name.clone()))
            .await?
            .ok_or(CoreError::UserNotFound)?;
        let mut user = self
            .stores
            .users
            .update_user(&user.id, UserChange::SetBanned(banned))
            .await?;
        user.banned = banned;
        if banned {
            self.stores
                .sessions
                .revoke(RevokeScope::User {
                    user_id: user.id.clone(),
                    keep: None,
                })
                .await?;
            self.events.publish(
                &user.id,
                Event::Kickout {
                    reason: KickoutReason::Banned,
                    spare: None,
                },
            );
        }
        Ok(user)
    }

    // ----- phone accounts (account_v4) -----------------------------------

    fn probe_checks(ip: IpAddr, p: &AccountPolicy) -> [LimitCheck; 2] {
        let ip = ip_limit_key(ip, p.ipv6_prefix_len);
        [
            LimitCheck::new(
                format!("probe:m:{ip}"),
                LimitRule::per(p.probes_per_ip_minute, 60),
            ),
            LimitCheck::new(
                format!("probe:d:{ip}"),
                LimitRule::per(p.probes_per_ip_day, 86_400),
            ),
        ]
    }

    async fn count_probe(&self, ip: Option<IpAddr>) -> Result<(), CoreError> {
        if let Some(ip) = ip {
            let checks = Self::probe_checks(ip, &self.policy);
            if let LimitDecision::Denied { retry_at, .. } = self
                .stores
                .limits
                .check(&checks, self.clock.unix(), LimitMode::Acquire)
                .await?
            {
                crate::metrics::limit_refused(crate::metrics::Limit::Probe);
                return Err(CoreError::RateLimited { retry_at });
            }
        }
        Ok(())
    }

    /// Whether a phone is registered, counted against the client's probe
    /// limit so numbers cannot be enumerated at speed.
    pub async fn probe_registered(
        &self,
        phone: &PhoneNumber,
        client_ip: Option<IpAddr>,
    ) -> Result<bool, CoreError> {
        self.count_probe(client_ip).await?;
        Ok(self
            .stores
            .users
            .user(&UserKey::Phone(phone.clone()))
            .await?
            .is_some())
    }

    /// `account_v4` `sendsms`: checks the expectation
    /// ([`CoreError::AlreadyRegistered`] / [`CoreError::NotRegistered`]),
    /// then sends a `register` (expect 0) or `reset` (expect 1) code under
    /// the code caps (G7).
    ///
    /// A refusal tells whether the phone is registered, so it is counted
    /// against the client's probe limit like `isregister`; once that is
    /// spent, refusals answer [`CoreError::RateLimited`] instead. A send
    /// reveals as much, but costs the client one of its G7 sends per IP.
    pub async fn send_phone_code(
        &self,
        phone: &PhoneNumber,
        expect_registered: bool,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        let registered = self
            .stores
            .users
            .user(&UserKey::Phone(phone.clone()))
            .await?
            .is_some();
        if expect_registered != registered {
            self.count_probe(client_ip).await?;
            return Err(if registered {
                CoreError::AlreadyRegistered
            } else {
                CoreError::NotRegistered
            });
        }
        let purpose = if expect_registered {
            Purpose::Reset
        } else {
            Purpose::Register
        };
        self.codes
            .send(&CodeAddress::Phone(phone.clone()), purpose, client_ip)
            .await
    }

    /// `account_v4` `register`: already registered
    /// ([`CoreError::PhoneTaken`]) before the code ([`CoreError::CodeInvalid`]).
    pub async fn register_phone(
        &self,
        phone: &PhoneNumber,
        name: DisplayName,
        password: Password,
        device: Option<&str>,
        code: &str,
    ) -> Result<LoginOutcome, CoreError> {
        if self
            .stores
            .users
            .user(&UserKey::Phone(phone.clone()))
            .await?
            .is_some()
        {
            return Err(CoreError::PhoneTaken);
        }
        self.codes
            .check(&CodeAddress::Phone(phone.clone()), Purpose::Register, code)
            .await?;
        let user = self
            .new_user(None, Some(phone.clone()), Some(name), &password, device)
            .await;
        let token = self.sign_up(user.clone()).await?;
        Ok(LoginOutcome {
            user,
            token,
            change_device: false,
        })
    }

    /// `account_v4` `verify_code`: checks a `reset` code and grants a
    /// single-use reset permit for the phone.
    pub async fn verify_reset_code(
        &self,
        phone: &PhoneNumber,
        code: &str,
    ) -> Result<(), CoreError> {
        let now = self.clock.unix();
        let permit = Grant {
            kind: GrantKind::PasswordReset,
            phone: phone.clone(),
            token_hash: None,
            issued_at: now,
            expires_at: now.saturating_add(self.policy.reset_permit_ttl_secs),
            used: false,
        };
        self.codes
            .check_granting(
                &CodeAddress::Phone(phone.clone()),
                Purpose::Reset,
                code,
                Some(permit),
            )
            .await?;
        Ok(())
    }

    /// `account_v4` `forget_password`: refuses a banned user
    /// ([`CoreError::Banned`]), consumes the reset permit
    /// ([`CoreError::GrantInvalid`] / [`CoreError::NotValidated`] without
    /// one), sets the password and revokes every session of the user.
    pub async fn reset_password_with_permit(
        &self,
        phone: &PhoneNumber,
        password: Password,
    ) -> Result<(), CoreError> {
        let user = self
            .stores
            .users
            .user(&UserKey::Phone(phone.clone()))
            .await?
            .ok_or(CoreError::NotValidated)?;
        // A banned user cannot take the account back by recovery; the
        // permit stays unused.
        if user.banned {
            return Err(CoreError::Banned);
        }
        let outcome = self
            .stores
            .grants
            .consume_grant(GrantKind::PasswordReset, phone, None, self.clock.unix())
            .await?;
        grant_result(outcome)?;
        self.replace_password(&user, &password).await?;
        // A session opened by whoever made the reset necessary must not
        // outlive it.
        self.kick_out(&user.id, None);
        Ok(())
    }

    /// Closes the user's live sessions after a password change or reset
    /// (`hub` `PushKickout` state 2), except the one logged in with `spare`.
    fn kick_out(&self, user: &UserId, spare: Option<TokenHash>) {
        self.events.publish(
            user,
            Event::Kickout {
                reason: KickoutReason::PasswordChanged,
                spare,
            },
        );
    }

    // ----- telsignup ------------------------------------------------------

    /// `telsignup` `sms-validation-request`: a `signup` code.
    pub async fn request_signup_code(
        &self,
        phone: &PhoneNumber,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        self.codes
            .send(
                &CodeAddress::Phone(phone.clone()),
                Purpose::Signup,
                client_ip,
            )
            .await
    }

    /// `telsignup` `sms-validation-code`: checks the code and returns a
    /// registration token bound to the phone (single use, 30 minutes).
    pub async fn validate_signup_code(
        &self,
        phone: &PhoneNumber,
        code: &str,
    ) -> Result<Token, CoreError> {
        let token = Token::generate(self.rng.as_ref());
        let now = self.clock.unix();
        let grant = Grant {
            kind: GrantKind::Registration,
            phone: phone.clone(),
            token_hash: Some(token.hash()),
            issued_at: now,
            expires_at: now.saturating_add(self.policy.registration_grant_ttl_secs),
            used: false,
        };
        self.codes
            .check_granting(
                &CodeAddress::Phone(phone.clone()),
                Purpose::Signup,
                code,
                Some(grant),
            )
            .await?;
        Ok(token)
    }

    /// `telsignup` `register`. Checks, in order: phone
    /// ([`CoreError::InvalidPhone`]), a validation ever made for it
    /// ([`CoreError::NotValidated`]), the token ([`CoreError::GrantInvalid`]),
    /// username and password rules, then taken ([`CoreError::UsernameTaken`],
    /// [`CoreError::PhoneTaken`]). The grant is consumed only when everything
    /// else passed.
    pub async fn register_with_grant(
        &self,
        phone: &str,
        token: &str,
        username: &str,
        password: &str,
    ) -> Result<Registered, CoreError> {
        let phone = PhoneNumber::parse_cn_mobile(phone)?;
        let now = self.clock.unix();
        let grant = self
            .stores
            .grants
            .grant(GrantKind::Registration, &phone)
            .await?
            .ok_or(CoreError::NotValidated)?;
        let presented = Token::from_client(token).hash();
        let mut probe = grant.clone();
        grant_result(probe.consume(Some(&presented), now))?;
        let username = Username::parse(username)?;
        let password = Password::parse(password, PasswordPolicy::STANDARD)?;
        if username.is_root()
            || self
                .stores
                .users
                .user(&UserKey::Username(username.clone()))
                .await?
                .is_some()
        {
            return Err(CoreError::UsernameTaken);
        }
        if self
            .stores
            .users
            .user(&UserKey::Phone(phone.clone()))
            .await?
            .is_some()
        {
            return Err(CoreError::PhoneTaken);
        }
        let outcome = self
            .stores
            .grants
            .consume_grant(GrantKind::Registration, &phone, Some(presented), now)
            .await?;
        grant_result(outcome)?;
        let user = self
            .new_user(Some(username), Some(phone.clone()), None, &password, None)
            .await;
        let token = self.sign_up(user.clone()).await?;
        let chat = self.provisioner.provision(&phone).await?;
        Ok(Registered { user, token, chat })
    }

    // ----- hub recovery and email binding -----------------------------------

    /// Finds the user for a recovery request. Order: unknown username
    /// ([`CoreError::UserNotFound`]), email bound to nobody
    /// ([`CoreError::EmailNotFound`]), bound to someone else
    /// ([`CoreError::EmailMismatch`]).
    async fn recovery_user(&self, username: &str, email: &str) -> Result<(User, Email), CoreError> {
        let user = match Username::parse(username) {
            Ok(u) => self.stores.users.user(&UserKey::Username(u)).await?,
            Err(_) => None,
        }
        .ok_or(CoreError::UserNotFound)?;
        let email = Email::parse(email).map_err(|_| CoreError::EmailNotFound)?;
        let owner = self
            .stores
            .users
            .user(&UserKey::Email(email.clone()))
            .await?
            .ok_or(CoreError::EmailNotFound)?;
        if owner.id != user.id {
            return Err(CoreError::EmailMismatch);
        }
        Ok((user, email))
    }

    /// `hub` forgot/vcode: sends a `reset` code by email
    /// ([`CoreError::Banned`] for a banned user, after the recovery checks).
    pub async fn request_recovery_code(
        &self,
        username: &str,
        email: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        let (user, email) = self
            .probed(client_ip, self.recovery_user(username, email))
            .await?;
        if user.banned {
            return Err(CoreError::Banned);
        }
        self.codes
            .send(&CodeAddress::Email(email), Purpose::Reset, client_ip)
            .await
    }

    /// `hub` forgot/verify without a client address
    /// ([`recover_with_code_from`](Self::recover_with_code_from)).
    pub async fn recover_with_code(
        &self,
        username: &str,
        email: &str,
        code: &str,
    ) -> Result<Token, CoreError> {
        self.recover_with_code_from(username, email, code, None)
            .await
    }

    /// `hub` forgot/verify from `client_ip`: checks the code; on success
    /// every earlier session of the user is revoked and a new session token
    /// is returned. A banned user gets [`CoreError::Banned`] (after the
    /// recovery checks, before the code, which stays unused). The failures
    /// (unknown user or email, mismatch, wrong code) tell what exists, so
    /// they count against the client's probe budget; once it is spent they
    /// answer [`CoreError::RateLimited`], whatever the user.
    pub async fn recover_with_code_from(
        &self,
        username: &str,
        email: &str,
        code: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Token, CoreError> {
        let user = self
            .probed(client_ip, async {
                let (user, email) = self.recovery_user(username, email).await?;
                if user.banned {
                    return Err(CoreError::Banned);
                }
                self.codes
                    .check(&CodeAddress::Email(email), Purpose::Reset, code)
                    .await?;
                Ok(user)
            })
            .await?;
        self.stores
            .sessions
            .revoke(RevokeScope::User {
                user_id: user.id.clone(),
                keep: None,
            })
            .await?;
        self.stores
            .limits
            .reset(&self.login_check(&user.id).key)
            .await?;
        self.kick_out(&user.id, None);
        self.issue_session(&user.id, SessionOrigin::Recovery).await
    }

    /// Runs `step`; a failure that tells whether a user or email exists (or
    /// whether a code was right) is counted against the client's probe
    /// budget, and answers [`CoreError::RateLimited`] once it is spent.
    async fn probed<T, F>(&self, client_ip: Option<IpAddr>, step: F) -> Result<T, CoreError>
    where
        F: std::future::Future<Output = Result<T, CoreError>>,
    {
        match step.await {
            Err(
                e @ (CoreError::UserNotFound
                | CoreError::WrongPassword
                | CoreError::EmailNotFound
                | CoreError::EmailMismatch
                | CoreError::CodeInvalid),
            ) => {
                self.count_probe(client_ip).await?;
                Err(e)
            }
            other => other,
        }
    }

    async fn email_free_for(&self, user: &User, email: &Email) -> Result<(), CoreError> {
        match self
            .stores
            .users
            .user(&UserKey::Email(email.clone()))
            .await?
        {
            Some(owner) if owner.id != user.id => Err(CoreError::EmailTaken),
            _ => Ok(()),
        }
    }

    /// `hub` `CSBindEmailGetVCode`: email bound to another user
    /// ([`CoreError::EmailTaken`]) is checked before cooldown and caps.
    pub async fn bind_email_send(
        &self,
        user: &User,
        email: &str,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        let email = Email::parse(email)?;
        self.email_free_for(user, &email).await?;
        self.codes
            .send(&CodeAddress::Email(email), Purpose::BindEmail, client_ip)
            .await
    }

    /// `hub` `CSBindEmailCheckVCode`: checks the code and binds the email.
    pub async fn bind_email_check(
        &self,
        user: &User,
        email: &str,
        code: &str,
    ) -> Result<User, CoreError> {
        let email = Email::parse(email)?;
        self.email_free_for(user, &email).await?;
        self.codes
            .check(&CodeAddress::Email(email.clone()), Purpose::BindEmail, code)
            .await?;
        let mut user = self
            .stores
            .users
            .update_user(&user.id, UserChange::SetEmail(Some(email.clone())))
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => CoreError::EmailTaken,
                other => CoreError::Store(other),
            })?;
        user.email = Some(email);
        Ok(user)
    }

    /// The user with this id.
    pub async fn user(&self, id: &UserId) -> Result<Option<User>, CoreError> {
        Ok(self.stores.users.user(&UserKey::Id(id.clone())).await?)
    }

    /// The user with this username.
    pub async fn user_by_username(&self, username: &str) -> Result<Option<User>, CoreError> {
        match Username::parse(username) {
            Ok(u) => Ok(self.stores.users.user(&UserKey::Username(u)).await?),
            Err(_) => Ok(None),
        }
    }
}

fn grant_result(outcome: ConsumeOutcome) -> Result<(), CoreError> {
    match outcome {
        ConsumeOutcome::Consumed => Ok(()),
        ConsumeOutcome::Missing => Err(CoreError::NotValidated),
        ConsumeOutcome::Mismatch | ConsumeOutcome::Expired | ConsumeOutcome::Used => {
            Err(CoreError::GrantInvalid)
        }
    }
}

#[cfg(test)]
#[path = "accounts_tests.rs"]
mod tests;
