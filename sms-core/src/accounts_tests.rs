//! Unit tests of the account rules (decision G8 and the `hub`, `telsignup`
//! and `account_v4` sections of the wire decisions) over the in-memory store,
//! a manual clock and a seeded random source.

use super::*;

use std::net::Ipv4Addr;

use crate::clock::ManualClock;
use crate::codes::CodePolicy;
use crate::core::Core;
use crate::memory::MemoryStore;
use crate::password::Argon2Hasher;
use crate::random::SeededRandom;
use crate::sender::{Channel, RecordingSender};
use crate::store::{CodeKey, UserKey};

const WEEK: i64 = 7 * 86_400;

/// `assert_err!(expr, Pattern)` / `assert_err!(expr, Pattern if guard)`.
macro_rules! assert_err {
    ($e:expr, $p:pat $(if $g:expr)? $(,)?) => {
        match $e {
            Err($p) $(if $g)? => {}
            other => panic!(
                "expected Err({}), got {:?}",
                stringify!($p $(if $g)?),
                other
            ),
        }
    };
}

struct Fx {
    core: Core,
    outbox: Arc<RecordingSender>,
    clock: Arc<ManualClock>,
}

fn build(
    code_policy: CodePolicy,
    account_policy: AccountPolicy,
    hasher: Arc<dyn PasswordHasher>,
) -> Fx {
    let outbox = Arc::new(RecordingSender::new());
    let clock = Arc::new(ManualClock::default());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(outbox.clone())
        .clock(clock.clone())
        .random(Arc::new(SeededRandom::new(1)))
        .password_hasher(hasher)
        .code_policy(code_policy)
        .account_policy(account_policy)
        .build()
        .expect("test core");
    Fx {
        core,
        outbox,
        clock,
    }
}

fn fixture_with(account_policy: AccountPolicy) -> Fx {
    build(
        CodePolicy::default(),
        account_policy,
        Arc::new(Argon2Hasher::fast_insecure_for_tests()),
    )
}

fn fixture() -> Fx {
    fixture_with(AccountPolicy::default())
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse_cn_mobile(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn short_pw(s: &str) -> Password {
    Password::parse(s, PasswordPolicy::SHORT).unwrap()
}

fn name(s: &str) -> DisplayName {
    DisplayName::parse(s).unwrap()
}

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)))
}

impl Fx {
    fn acc(&self) -> &Accounts {
        &self.core.accounts
    }

    fn now(&self) -> i64 {
        self.clock.unix()
    }

    fn last_code(&self, to: &str) -> String {
        self.outbox
            .last_code_to(to)
            .unwrap_or_else(|| panic!("no code was sent to {to}"))
    }

    fn sent_count(&self) -> usize {
        self.outbox.messages().len()
    }

    async fn sign_up(&self, username: &str, password: &str) -> Token {
        self.acc()
            .sign_up_username(username, password)
            .await
            .unwrap()
    }

    async fn user_of(&self, token: &Token) -> User {
        self.acc().authenticate(token).await.unwrap().0
    }

    async fn origin_of(&self, token: &Token) -> SessionOrigin {
        self.acc().authenticate(token).await.unwrap().1.origin
    }

    async fn login(&self, username: &str, password: &str) -> Token {
        self.acc().login_username(username, password).await.unwrap()
    }

    /// `account_v4` sign-up: sendsms (expect 0), then register.
    async fn register_phone(
        &self,
        tel: &str,
        password: &str,
        device: Option<&str>,
    ) -> LoginOutcome {
        let p = phone(tel);
        self.acc().send_phone_code(&p, false, None).await.unwrap();
        let code = self.last_code(&p.to_string());
        self.acc()
            .register_phone(&p, name("于连林"), short_pw(password), device, &code)
            .await
            .unwrap()
    }

    /// `telsignup` validation: a registration token for `tel`.
    async fn validate(&self, tel: &str) -> Token {
        let p = phone(tel);
        self.acc().request_signup_code(&p, None).await.unwrap();
        let code = self.last_code(&p.to_string());
        self.acc().validate_signup_code(&p, &code).await.unwrap()
    }

    /// `hub` email binding, both steps.
    async fn bind_email(&self, user: &User, email: &str) -> User {
        self.acc().bind_email_send(user, email, None).await.unwrap();
        let to = Email::parse(email).unwrap().to_string();
        let code = self.last_code(&to);
        self.acc()
            .bind_email_check(user, email, &code)
            .await
            .unwrap()
    }

    /// `account_v4` reset: sendsms (expect 1), then verify_code.
    async fn grant_reset_permit(&self, tel: &str) {
        let p = phone(tel);
        self.acc().send_phone_code(&p, true, None).await.unwrap();
        let code = self.last_code(&p.to_string());
        self.acc().verify_reset_code(&p, &code).await.unwrap();
    }

    /// Signs up `alice` (password `s3cret-pw`) with `alice@example.com`
    /// bound.
    async fn alice_with_email(&self) -> Token {
        let token = self.sign_up("alice", "s3cret-pw").await;
        self.bind_email(&self.user_of(&token).await, "alice@example.com")
            .await;
        token
    }

    /// Bans the phone user of `tel` (the store's change, as `/v2/ban` names
    /// users by username).
    async fn ban_phone_user(&self, tel: &str) {
        let users = &self.core.stores.users;
        let user = users
            .user(&UserKey::Phone(phone(tel)))
            .await
            .unwrap()
            .unwrap();
        users
            .update_user(&user.id, UserChange::SetBanned(true))
            .await
            .unwrap();
    }

    async fn fail_logins(&self, username: &str, n: usize) {
        for _ in 0..n {
            assert_err!(
                self.acc().login_username(username, "wrong-password").await,
                CoreError::WrongPassword
            );
        }
    }
}

// ----- policy ------------------------------------------------------------

#[test]
fn default_policy_is_g8() {
    let p = AccountPolicy::default();
    assert_eq!(p.session_ttl_secs, WEEK);
    assert_eq!(p.login_failures_max, 5);
    assert_eq!(p.login_failures_window_secs, 900);
    assert_eq!(p.login_lockout_secs, 900);
    assert_eq!(p.registration_grant_ttl_secs, 1_800);
    assert_eq!(p.reset_permit_ttl_secs, 600);
    assert_eq!(p.probes_per_ip_minute, 30);
    assert_eq!(p.probes_per_ip_day, 1_000);
    assert_eq!(fixture().acc().policy(), &p);
}

// ----- hub sign-up ---------------------------------------------------------

#[tokio::test]
async fn sign_up_checks_username_then_password_then_taken() {
    let fx = fixture();
    let acc = fx.acc();
    // Username first: even an empty password is not looked at.
    assert_err!(acc.sign_up_username("", "").await, CoreError::UsernameEmpty);
    assert_err!(
        acc.sign_up_username("ab", "").await,
        CoreError::UsernameLength
    );
    assert_err!(
        acc.sign_up_username(&"a".repeat(21), "").await,
        CoreError::UsernameLength
    );
    assert_err!(
        acc.sign_up_username("ab c", "").await,
        CoreError::UsernameCharset
    );
    assert_err!(
        acc.sign_up_username("al-ice", "").await,
        CoreError::UsernameCharset
    );
    assert_err!(
        acc.sign_up_username("名字名字", "").await,
        CoreError::UsernameCharset
    );
    // Then the password.
    assert_err!(
        acc.sign_up_username("alice", "").await,
        CoreError::PasswordEmpty
    );
    assert_err!(
        acc.sign_up_username("alice", "12345").await,
        CoreError::PasswordLength
    );
    assert_err!(
        acc.sign_up_username("alice", &"x".repeat(33)).await,
        CoreError::PasswordLength
    );
    assert_err!(
        acc.sign_up_username("alice", "abc def").await,
        CoreError::PasswordCharset
    );
    assert_err!(
        acc.sign_up_username("alice", "abcdé1").await,
        CoreError::PasswordCharset
    );
    // Rules come before the reserved name …
    assert_err!(
        acc.sign_up_username("root", "12345").await,
        CoreError::PasswordLength
    );
    // … which is taken, in any case.
    assert_err!(
        acc.sign_up_username("root", "good-pass").await,
        CoreError::UsernameTaken
    );
    assert_err!(
        acc.sign_up_username("RoOt", "good-pass").await,
        CoreError::UsernameTaken
    );
    // Nothing was created by the refusals.
    assert!(acc.user_by_username("alice").await.unwrap().is_none());
    assert!(acc.user_by_username("root").await.unwrap().is_none());
    // Boundaries are accepted.
    acc.sign_up_username("abc", "123456").await.unwrap();
    acc.sign_up_username(&"b".repeat(20), &"y".repeat(32))
        .await
        .unwrap();
    acc.sign_up_username("A_1", "!\"#$%&'()*+,-./~")
        .await
        .unwrap();
}

#[tokio::test]
async fn sign_up_username_taken_case_insensitively_after_rules() {
    let fx = fixture();
    let t = fx.sign_up("Alice", "s3cret-pw").await;
    assert_eq!(fx.user_of(&t).await.username.unwrap().as_str(), "Alice");
    assert_err!(
        fx.acc().sign_up_username("alice", "other-pw").await,
        CoreError::UsernameTaken
    );
    assert_err!(
        fx.acc().sign_up_username("ALICE", "other-pw").await,
        CoreError::UsernameTaken
    );
    // Password rules still come first for a taken name.
    assert_err!(
        fx.acc().sign_up_username("ALICE", "123").await,
        CoreError::PasswordLength
    );
    // Login is case-insensitive on the name too.
    fx.login("aLiCe", "s3cret-pw").await;
}

#[tokio::test]
async fn sign_up_returns_a_week_long_signup_session_and_hashes_the_password() {
    let fx = fixture();
    let t0 = fx.now();
    let token = fx.sign_up("alice", "s3cret-pw").await;
    assert_eq!(token.expose().len(), 32);
    assert!(token.expose().bytes().all(|b| b.is_ascii_hexdigit()));
    let (user, session) = fx.acc().authenticate(&token).await.unwrap();
    assert_eq!(session.origin, SessionOrigin::Signup);
    assert_eq!(session.issued_at, t0);
    assert_eq!(session.expires_at, t0 + WEEK);
    assert_eq!(session.user_id, user.id);
    assert_eq!(session.token_hash, token.hash());
    assert!(user.password_hash.starts_with("$argon2id$"));
    assert!(!user.password_hash.contains("s3cret-pw"));
    assert_eq!(user.created_at, t0);
    assert!(!user.banned);
    assert_eq!(user.phone, None);
    assert_eq!(user.email, None);
}

#[tokio::test]
async fn root_is_reserved_and_ensure_root_sets_its_password() {
    let fx = fixture();
    fx.acc().ensure_root("root-pass-1").await.unwrap();
    assert_err!(
        fx.acc().sign_up_username("root", "whatever1").await,
        CoreError::UsernameTaken
    );
    fx.login("root", "root-pass-1").await;
    fx.acc().ensure_root("root-pass-2").await.unwrap();
    assert_err!(
        fx.acc().login_username("root", "root-pass-1").await,
        CoreError::WrongPassword
    );
    fx.login("root", "root-pass-2").await;
    fx.acc()
        .verify_credentials("root", "root-pass-2")
        .await
        .unwrap();
}

// ----- hub login and lockout ---------------------------------------------------

#[tokio::test]
async fn login_username_errors_and_success() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    assert_err!(
        fx.acc().login_username("bob", "s3cret-pw").await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc().login_username("a b", "s3cret-pw").await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc().login_username("", "").await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pX").await,
        CoreError::WrongPassword
    );
    assert_err!(
        fx.acc().login_username("alice", "").await,
        CoreError::WrongPassword
    );
    let t = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&t).await, SessionOrigin::Login);
    assert_eq!(fx.user_of(&t).await.username.unwrap().as_str(), "alice");
}

#[tokio::test]
async fn five_failures_lock_the_account_for_fifteen_minutes() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    fx.sign_up("bob", "s3cret-pw").await;
    let t0 = fx.now();
    for _ in 0..5 {
        fx.fail_logins("alice", 1).await;
        fx.clock.advance(10);
    }
    let fifth = t0 + 40;
    // Locked even with the right password; wrong ones say locked too.
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pw").await,
        CoreError::AccountLocked { until } if until == fifth + 900
    );
    assert_err!(
        fx.acc().login_username("alice", "nope-nope").await,
        CoreError::AccountLocked { until } if until == fifth + 900
    );
    assert_err!(
        fx.acc().verify_credentials("alice", "s3cret-pw").await,
        CoreError::AccountLocked { .. }
    );
    // Per account: bob is not locked.
    fx.login("bob", "s3cret-pw").await;
    // Still locked one second before the end, and attempts do not extend it.
    fx.clock.set(fifth + 899);
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pw").await,
        CoreError::AccountLocked { until } if until == fifth + 900
    );
    fx.clock.set(fifth + 900);
    let t = fx.login("alice", "s3cret-pw").await;
    fx.acc().authenticate(&t).await.unwrap();
}

#[tokio::test]
async fn failures_must_fall_within_fifteen_minutes_to_lock() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    fx.sign_up("bob", "s3cret-pw").await;

    // Four at t0 and one 900 s later: the first four left the window.
    fx.fail_logins("alice", 4).await;
    fx.clock.advance(900);
    fx.fail_logins("alice", 1).await;
    fx.login("alice", "s3cret-pw").await;

    // Four at t1 and one 899 s later: five within the window.
    let t1 = fx.now();
    fx.fail_logins("bob", 4).await;
    fx.clock.advance(899);
    fx.fail_logins("bob", 1).await;
    assert_err!(
        fx.acc().login_username("bob", "s3cret-pw").await,
        CoreError::AccountLocked { until } if until == t1 + 899 + 900
    );
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_count() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    fx.fail_logins("alice", 4).await;
    fx.login("alice", "s3cret-pw").await;
    fx.fail_logins("alice", 4).await;
    fx.login("alice", "s3cret-pw").await;
    // And the count starts from zero: five more are needed to lock.
    fx.fail_logins("alice", 5).await;
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pw").await,
        CoreError::AccountLocked { .. }
    );
}

#[tokio::test]
async fn lockout_is_shared_by_username_and_phone_logins() {
    let fx = fixture();
    let grant = fx.validate("13811112222").await;
    fx.acc()
        .register_with_grant("13811112222", grant.expose(), "carol", "s3cret-pw")
        .await
        .unwrap();
    let p = phone("13811112222");
    fx.fail_logins("carol", 3).await;
    for _ in 0..2 {
        assert_err!(
            fx.acc().login_phone(&p, "wrong-pw", None).await,
            CoreError::WrongPassword
        );
    }
    assert_err!(
        fx.acc().login_phone(&p, "s3cret-pw", None).await,
        CoreError::AccountLocked { .. }
    );
    assert_err!(
        fx.acc().login_username("carol", "s3cret-pw").await,
        CoreError::AccountLocked { .. }
    );
}

#[tokio::test]
async fn verify_credentials_checks_user_and_password() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    assert_err!(
        fx.acc().verify_credentials("nobody", "s3cret-pw").await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc().verify_credentials("alice", "wrong-pw").await,
        CoreError::WrongPassword
    );
    let u = fx
        .acc()
        .verify_credentials("ALICE", "s3cret-pw")
        .await
        .unwrap();
    assert_eq!(u.username.unwrap().as_str(), "alice");
}

/// A hasher that yields to the scheduler before verifying, as any hasher run
/// off the I/O threads (`spawn_blocking`) does.
#[derive(Debug)]
struct YieldingHasher(Argon2Hasher);

#[async_trait::async_trait]
impl PasswordHasher for YieldingHasher {
    async fn hash(&self, password: &str) -> String {
        self.0.hash_blocking(password)
    }

    async fn verify(&self, password: &str, phc: &str) -> bool {
        tokio::task::yield_now().await;
        self.0.verify_blocking(password, phc)
    }
}

#[tokio::test]
async fn concurrent_wrong_passwords_get_at_most_five_guesses() {
    let fx = build(
        CodePolicy::default(),
        AccountPolicy::default(),
        Arc::new(YieldingHasher(Argon2Hasher::fast_insecure_for_tests())),
    );
    fx.sign_up("alice", "s3cret-pw").await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let acc = fx.core.accounts.clone();
        tasks.push(tokio::spawn(async move {
            acc.login_username("alice", &format!("guess-{i}")).await
        }));
    }
    let mut verified = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(CoreError::WrongPassword) => verified += 1,
            Err(CoreError::AccountLocked { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        verified <= 5,
        "{verified} concurrent guesses were verified against the password; G8 allows 5"
    );
}

// ----- bans ----------------------------------------------------------------

#[tokio::test]
async fn banned_user_cannot_log_in_and_loses_sessions() {
    let fx = fixture();
    let t1 = fx.sign_up("alice", "s3cret-pw").await;
    let t2 = fx.login("alice", "s3cret-pw").await;
    let bob = fx.sign_up("bob", "s3cret-pw").await;
    let user = fx.acc().set_banned("ALICE", true).await.unwrap();
    assert_eq!(user.username.as_ref().unwrap().as_str(), "alice");
    // Every session of alice is gone, bob's is not.
    assert_err!(fx.acc().authenticate(&t1).await, CoreError::TokenInvalid);
    assert_err!(fx.acc().authenticate(&t2).await, CoreError::TokenInvalid);
    assert!(fx
        .core
        .stores
        .sessions
        .user_sessions(&user.id)
        .await
        .unwrap()
        .is_empty());
    fx.acc().authenticate(&bob).await.unwrap();
    assert!(fx.acc().user(&user.id).await.unwrap().unwrap().banned);
    // The password is checked first; then the ban.
    assert_err!(
        fx.acc().login_username("alice", "wrong-pw").await,
        CoreError::WrongPassword
    );
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pw").await,
        CoreError::Banned
    );
    assert_err!(
        fx.acc().verify_credentials("alice", "s3cret-pw").await,
        CoreError::Banned
    );
    // Unbanned: logins work again.
    fx.acc().set_banned("alice", false).await.unwrap();
    fx.login("alice", "s3cret-pw").await;
}

#[tokio::test]
async fn only_root_passes_the_root_check_and_root_cannot_be_banned() {
    let fx = fixture();
    fx.acc().ensure_root("root-pass-1").await.unwrap();
    fx.sign_up("alice", "s3cret-pw").await;
    let ip = Some("203.0.113.9".parse().unwrap());
    let root = fx
        .acc()
        .verify_root_credentials_from("ROOT", "root-pass-1", ip)
        .await
        .unwrap();
    assert!(root.username.unwrap().is_root());
    assert_err!(
        fx.acc()
            .verify_root_credentials_from("alice", "s3cret-pw", ip)
            .await,
        CoreError::NotRoot
    );
    assert_err!(
        fx.acc()
            .verify_root_credentials_from("root", "wrong-pass", ip)
            .await,
        CoreError::WrongPassword
    );
    assert_err!(fx.acc().set_banned("Root", true).await, CoreError::NotRoot);
    fx.acc()
        .verify_root_credentials_from("root", "root-pass-1", ip)
        .await
        .unwrap();
}

#[tokio::test]
async fn set_banned_unknown_user() {
    let fx = fixture();
    assert_err!(
        fx.acc().set_banned("nobody", true).await,
        CoreError::UserNotFound
    );
    assert_err!(fx.acc().set_banned("", true).await, CoreError::UserNotFound);
}

#[tokio::test]
async fn authenticate_refuses_a_banned_user_with_a_live_session() {
    let fx = fixture();
    let t = fx.sign_up("alice", "s3cret-pw").await;
    let user = fx.user_of(&t).await;
    // Banned behind the service's back: the session is still stored.
    fx.core
        .stores
        .users
        .update_user(&user.id, UserChange::SetBanned(true))
        .await
        .unwrap();
    assert_err!(fx.acc().authenticate(&t).await, CoreError::Banned);
    assert_err!(fx.acc().open_session(&t).await, CoreError::Banned);
}

#[tokio::test]
async fn banned_phone_user_cannot_log_in() {
    let fx = fixture();
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    fx.ban_phone_user("13811112222").await;
    assert_err!(
        fx.acc()
            .login_phone(&phone("13811112222"), "s3cret-pw", None)
            .await,
        CoreError::Banned
    );
}

// ----- sessions ------------------------------------------------------------

#[tokio::test]
async fn session_cap_evicts_oldest_first_even_within_one_second() {
    // The clock never moves: every session has the same `issued_at`, so only
    // the order in which they were opened can tell the oldest.
    let fx = fixture();
    let mut tokens = vec![fx.sign_up("alice", "s3cret-pw").await];
    for _ in 1..50 {
        tokens.push(fx.login("alice", "s3cret-pw").await);
    }
    // 50 sessions, the sign-up token included: all live.
    for t in &tokens {
        fx.acc().authenticate(t).await.unwrap();
    }
    // Each further login evicts exactly the oldest one left.
    for oldest in 0..20 {
        tokens.push(fx.login("alice", "s3cret-pw").await);
        assert_err!(
            fx.acc().authenticate(&tokens[oldest]).await,
            CoreError::TokenInvalid
        );
        for t in &tokens[oldest + 1..] {
            fx.acc().authenticate(t).await.unwrap();
        }
    }
}

#[tokio::test]
async fn sessions_expire_after_seven_days_and_the_next_login_is_a_renewal() {
    let fx = fixture();
    let t0 = fx.now();
    let s = fx.sign_up("alice", "s3cret-pw").await;
    fx.clock.set(t0 + WEEK - 1);
    fx.acc().authenticate(&s).await.unwrap();
    fx.clock.set(t0 + WEEK);
    assert_err!(fx.acc().authenticate(&s).await, CoreError::TokenInvalid);
    assert_err!(fx.acc().open_session(&s).await, CoreError::TokenInvalid);
    assert_err!(
        fx.acc().change_password(&s, "new-pass-1").await,
        CoreError::TokenInvalid
    );

    let renewed = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&renewed).await, SessionOrigin::Renewal);
    // The expired session was swept.
    let user = fx.user_of(&renewed).await;
    let left = fx
        .core
        .stores
        .sessions
        .user_sessions(&user.id)
        .await
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].token_hash, renewed.hash());
    // The next login follows a live session: a plain login.
    let again = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&again).await, SessionOrigin::Login);
}

#[tokio::test]
async fn renewal_only_when_the_latest_session_expired() {
    let fx = fixture();
    let t0 = fx.now();
    fx.sign_up("alice", "s3cret-pw").await;
    fx.clock.set(t0 + 86_400);
    let l1 = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&l1).await, SessionOrigin::Login);
    // The sign-up session expired, but the latest one (l1) is live.
    fx.clock.set(t0 + WEEK);
    let l2 = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&l2).await, SessionOrigin::Login);
    fx.acc().authenticate(&l1).await.unwrap();
    // Everything expired.
    fx.clock.set(t0 + 2 * WEEK);
    let l3 = fx.login("alice", "s3cret-pw").await;
    assert_eq!(fx.origin_of(&l3).await, SessionOrigin::Renewal);
}

#[tokio::test]
async fn session_ttl_is_configurable() {
    let fx = fixture_with(AccountPolicy {
        session_ttl_secs: 60,
        ..AccountPolicy::default()
    });
    let t = fx.sign_up("alice", "s3cret-pw").await;
    fx.clock.advance(59);
    fx.acc().authenticate(&t).await.unwrap();
    fx.clock.advance(1);
    assert_err!(fx.acc().authenticate(&t).await, CoreError::TokenInvalid);
}

#[tokio::test]
async fn unknown_tokens_are_invalid() {
    let fx = fixture();
    fx.sign_up("alice", "s3cret-pw").await;
    for t in ["", "00000000000000000000000000000000", "garbage"] {
        let t = Token::from_client(t);
        assert_err!(fx.acc().authenticate(&t).await, CoreError::TokenInvalid);
        assert_err!(fx.acc().open_session(&t).await, CoreError::TokenInvalid);
    }
}

#[tokio::test]
async fn logout_revokes_only_that_token() {
    let fx = fixture();
    let t1 = fx.sign_up("alice", "s3cret-pw").await;
    let t2 = fx.login("alice", "s3cret-pw").await;
    fx.acc().logout(&t1).await.unwrap();
    assert_err!(fx.acc().authenticate(&t1).await, CoreError::TokenInvalid);
    assert_err!(fx.acc().open_session(&t1).await, CoreError::TokenInvalid);
    fx.acc().authenticate(&t2).await.unwrap();
    // Logging out twice, or an unknown token, is harmless.
    fx.acc().logout(&t1).await.unwrap();
    fx.acc().logout(&Token::from_client("nope")).await.unwrap();
    // A token presented by the client in clear finds its session.
    let same = Token::from_client(t2.expose());
    fx.acc().logout(&same).await.unwrap();
    assert_err!(fx.acc().authenticate(&t2).await, CoreError::TokenInvalid);
}

#[tokio::test]
async fn change_password_revokes_every_older_token_and_returns_a_new_one() {
    let fx = fixture();
    let t1 = fx.sign_up("alice", "old-pass-1").await;
    let t2 = fx.login("alice", "old-pass-1").await;
    let bob = fx.sign_up("bob", "bobs-pass").await;
    let t3 = fx.acc().change_password(&t1, "new-pass-1").await.unwrap();
    assert_ne!(t3.expose(), t1.expose());
    assert_err!(fx.acc().authenticate(&t1).await, CoreError::TokenInvalid);
    assert_err!(fx.acc().authenticate(&t2).await, CoreError::TokenInvalid);
    assert_eq!(fx.origin_of(&t3).await, SessionOrigin::PasswordChange);
    let opened = fx.acc().open_session(&t3).await.unwrap();
    assert!(opened.first_use);
    assert_eq!(opened.session.origin, SessionOrigin::PasswordChange);
    // Other users keep their sessions.
    fx.acc().authenticate(&bob).await.unwrap();
    // Old password refused, new one accepted.
    assert_err!(
        fx.acc().login_username("alice", "old-pass-1").await,
        CoreError::WrongPassword
    );
    fx.login("alice", "new-pass-1").await;
}

#[tokio::test]
async fn change_password_checks_token_then_rules_and_changes_nothing_on_error() {
    let fx = fixture();
    let t = fx.sign_up("alice", "old-pass-1").await;
    assert_err!(
        fx.acc().change_password(&Token::from_client("x"), "").await,
        CoreError::TokenInvalid
    );
    assert_err!(
        fx.acc().change_password(&t, "").await,
        CoreError::PasswordEmpty
    );
    assert_err!(
        fx.acc().change_password(&t, "12345").await,
        CoreError::PasswordLength
    );
    assert_err!(
        fx.acc().change_password(&t, "with space").await,
        CoreError::PasswordCharset
    );
    fx.acc().authenticate(&t).await.unwrap();
    fx.login("alice", "old-pass-1").await;
}

#[tokio::test]
async fn change_password_releases_a_lockout() {
    let fx = fixture();
    let t = fx.sign_up("alice", "old-pass-1").await;
    fx.fail_logins("alice", 5).await;
    assert_err!(
        fx.acc().login_username("alice", "old-pass-1").await,
        CoreError::AccountLocked { .. }
    );
    fx.acc().change_password(&t, "new-pass-1").await.unwrap();
    fx.login("alice", "new-pass-1").await;
}

#[tokio::test]
async fn open_session_reports_first_use_once() {
    let fx = fixture();
    let t0 = fx.now();
    let t = fx.sign_up("alice", "s3cret-pw").await;
    let first = fx.acc().open_session(&t).await.unwrap();
    assert!(first.first_use);
    assert_eq!(first.session.first_used_at, None);
    assert_eq!(first.session.origin, SessionOrigin::Signup);
    assert_eq!(first.user.username.as_ref().unwrap().as_str(), "alice");
    fx.clock.advance(30);
    let second = fx.acc().open_session(&t).await.unwrap();
    assert!(!second.first_use);
    assert_eq!(second.session.first_used_at, Some(t0));
    let third = fx.acc().open_session(&t).await.unwrap();
    assert!(!third.first_use);
    assert_eq!(third.session.first_used_at, Some(t0));
    // Another token of the same user has its own first use.
    let l = fx.login("alice", "s3cret-pw").await;
    let opened = fx.acc().open_session(&l).await.unwrap();
    assert!(opened.first_use);
    assert_eq!(opened.session.origin, SessionOrigin::Login);
}

// ----- account_v4 ----------------------------------------------------------

#[tokio::test]
async fn send_phone_code_checks_the_expectation() {
    let fx = fixture();
    let p = phone("13811112222");
    assert_err!(
        fx.acc().send_phone_code(&p, true, None).await,
        CoreError::NotRegistered
    );
    assert_eq!(fx.sent_count(), 0);
    let t0 = fx.now();
    let issued = fx.acc().send_phone_code(&p, false, None).await.unwrap();
    assert_eq!(issued.again_at, t0 + 60);
    let m = fx.outbox.messages().pop().unwrap();
    assert_eq!(m.purpose, Some(Purpose::Register));
    assert_eq!(m.channel, Channel::Sms);
    assert_eq!(m.to, "13811112222");
    // With the expectation met, the cooldown applies.
    assert_err!(
        fx.acc().send_phone_code(&p, false, None).await,
        CoreError::CodeCooldown { retry_at } if retry_at == t0 + 60
    );
}

#[tokio::test]
async fn send_phone_code_expectation_comes_before_the_cooldown() {
    let fx = fixture();
    let p = phone("13811112222");
    // Registered within the cooldown of its register code …
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    assert!(fx
        .core
        .codes
        .cooldown_until(&CodeAddress::Phone(p.clone()), Purpose::Register)
        .await
        .unwrap()
        .is_some());
    // … answers AlreadyRegistered, not CodeCooldown.
    assert_err!(
        fx.acc().send_phone_code(&p, false, None).await,
        CoreError::AlreadyRegistered
    );
    // A reset code goes out for the registered phone.
    fx.acc().send_phone_code(&p, true, None).await.unwrap();
    let m = fx.outbox.messages().pop().unwrap();
    assert_eq!(m.purpose, Some(Purpose::Reset));
    assert_eq!(m.to, "13811112222");

    // An unregistered phone within a reset cooldown answers NotRegistered.
    let q = phone("13900001111");
    fx.core
        .codes
        .send(&CodeAddress::Phone(q.clone()), Purpose::Reset, None)
        .await
        .unwrap();
    assert_err!(
        fx.acc().send_phone_code(&q, true, None).await,
        CoreError::NotRegistered
    );
}

#[tokio::test]
async fn send_phone_code_expectation_comes_before_the_caps() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    // Exhaust the phone's hourly cap with reset codes.
    for _ in 0..4 {
        fx.clock.advance(60);
        fx.acc().send_phone_code(&p, true, None).await.unwrap();
    }
    fx.clock.advance(60);
    assert_err!(
        fx.acc().send_phone_code(&p, true, None).await,
        CoreError::RateLimited { .. }
    );
    assert_err!(
        fx.acc().send_phone_code(&p, false, None).await,
        CoreError::AlreadyRegistered
    );
}

#[tokio::test]
async fn register_phone_checks_taken_before_the_code() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    // A fresh register code for the same phone, sent past the cooldown.
    fx.clock.advance(60);
    let addr = CodeAddress::Phone(p.clone());
    fx.core
        .codes
        .send(&addr, Purpose::Register, None)
        .await
        .unwrap();
    let code = fx.last_code("13811112222");
    assert_err!(
        fx.acc()
            .register_phone(&p, name("x"), short_pw("other-pw"), None, "000000")
            .await,
        CoreError::PhoneTaken
    );
    // The code was not even looked at.
    let key = CodeKey {
        address: p.as_e164().to_owned(),
        purpose: Purpose::Register,
    };
    let rec = fx.core.stores.codes.code(&key).await.unwrap().unwrap();
    assert_eq!(rec.attempts, 0);
    assert!(!rec.used);
    assert_err!(
        fx.acc()
            .register_phone(&p, name("x"), short_pw("other-pw"), None, &code)
            .await,
        CoreError::PhoneTaken
    );
}

#[tokio::test]
async fn register_phone_with_a_wrong_code_creates_nothing() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.acc().send_phone_code(&p, false, None).await.unwrap();
    let code = fx.last_code("13811112222");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_err!(
        fx.acc()
            .register_phone(&p, name("x"), short_pw("s3cret-pw"), None, wrong)
            .await,
        CoreError::CodeInvalid
    );
    assert!(!fx.acc().probe_registered(&p, None).await.unwrap());
    // A code of another purpose does not register either.
    fx.core
        .codes
        .send(&CodeAddress::Phone(p.clone()), Purpose::Signup, None)
        .await
        .unwrap();
    let signup_code = fx.last_code("13811112222");
    if signup_code != code {
        assert_err!(
            fx.acc()
                .register_phone(&p, name("x"), short_pw("s3cret-pw"), None, &signup_code)
                .await,
            CoreError::CodeInvalid
        );
    }
    // The right code still works.
    fx.acc()
        .register_phone(&p, name("x"), short_pw("s3cret-pw"), None, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn register_phone_creates_the_account_and_a_signup_session() {
    let fx = fixture();
    let t0 = fx.now();
    let p = phone("+86 138-1111-2222");
    fx.acc().send_phone_code(&p, false, None).await.unwrap();
    let code = fx.last_code("13811112222");
    let out = fx
        .acc()
        .register_phone(
            &p,
            name(" 于连林 "),
            short_pw("s3cret-pw"),
            Some("dev-A"),
            &code,
        )
        .await
        .unwrap();
    assert!(!out.change_device);
    assert_eq!(out.user.phone.as_ref().unwrap().to_string(), "13811112222");
    assert_eq!(out.user.name.as_ref().unwrap().as_str(), "于连林");
    assert_eq!(out.user.username, None);
    assert_eq!(out.user.device.as_deref(), Some("dev-A"));
    assert_eq!(out.user.created_at, t0);
    let (user, session) = fx.acc().authenticate(&out.token).await.unwrap();
    assert_eq!(user.id, out.user.id);
    assert_eq!(session.origin, SessionOrigin::Signup);
    // Every spelling finds it.
    for s in ["13811112222", "008613811112222", "+8613811112222"] {
        assert!(
            fx.acc().probe_registered(&phone(s), None).await.unwrap(),
            "{s}"
        );
    }
    // The code is used up.
    let q = phone("13811112222");
    assert_err!(
        fx.acc()
            .register_phone(&q, name("x"), short_pw("s3cret-pw"), None, &code)
            .await,
        CoreError::PhoneTaken
    );
}

#[tokio::test]
async fn login_phone_reports_device_changes() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "s3cret-pw", Some("dev-A"))
        .await;
    let same = fx
        .acc()
        .login_phone(&p, "s3cret-pw", Some("dev-A"))
        .await
        .unwrap();
    assert!(!same.change_device);
    assert_eq!(fx.origin_of(&same.token).await, SessionOrigin::Login);
    let other = fx
        .acc()
        .login_phone(&p, "s3cret-pw", Some("dev-B"))
        .await
        .unwrap();
    assert!(other.change_device);
    let again = fx
        .acc()
        .login_phone(&p, "s3cret-pw", Some("dev-B"))
        .await
        .unwrap();
    assert!(!again.change_device);
    let back = fx
        .acc()
        .login_phone(&p, "s3cret-pw", Some("dev-A"))
        .await
        .unwrap();
    assert!(back.change_device);
    let stored = fx.acc().user(&back.user.id).await.unwrap().unwrap();
    assert_eq!(stored.device.as_deref(), Some("dev-A"));
    // Each login returns a working, distinct token.
    for t in [&same.token, &other.token, &again.token, &back.token] {
        fx.acc().authenticate(t).await.unwrap();
    }
}

#[tokio::test]
async fn login_phone_unknown_phone_and_wrong_password_look_alike() {
    let fx = fixture();
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    assert_err!(
        fx.acc()
            .login_phone(&phone("13900001111"), "s3cret-pw", None)
            .await,
        CoreError::WrongPassword
    );
    assert_err!(
        fx.acc()
            .login_phone(&phone("13811112222"), "wrong-pw", None)
            .await,
        CoreError::WrongPassword
    );
    // Other spellings of the number log in.
    fx.acc()
        .login_phone(&phone("0086 138 1111 2222"), "s3cret-pw", None)
        .await
        .unwrap();
}

#[tokio::test]
async fn login_phone_locks_after_five_failures() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    let t0 = fx.now();
    for _ in 0..5 {
        assert_err!(
            fx.acc().login_phone(&p, "wrong-pw", None).await,
            CoreError::WrongPassword
        );
    }
    assert_err!(
        fx.acc().login_phone(&p, "s3cret-pw", None).await,
        CoreError::AccountLocked { until } if until == t0 + 900
    );
    fx.clock.advance(900);
    fx.acc().login_phone(&p, "s3cret-pw", None).await.unwrap();
}

#[tokio::test]
async fn reset_with_permit_flow() {
    let fx = fixture();
    let p = phone("13811112222");
    let reg = fx
        .register_phone("13811112222", "old-pass1", Some("dev-A"))
        .await;
    let login = fx.acc().login_phone(&p, "old-pass1", None).await.unwrap();

    // No permit yet.
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&p, short_pw("new-pass1"))
            .await,
        CoreError::NotValidated
    );
    fx.acc().send_phone_code(&p, true, None).await.unwrap();
    let code = fx.last_code("13811112222");
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_err!(
        fx.acc().verify_reset_code(&p, wrong).await,
        CoreError::CodeInvalid
    );
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&p, short_pw("new-pass1"))
            .await,
        CoreError::NotValidated
    );

    let t1 = fx.now();
    fx.acc().verify_reset_code(&p, &code).await.unwrap();
    let grant = fx
        .core
        .stores
        .grants
        .grant(GrantKind::PasswordReset, &p)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.expires_at, t1 + 600);
    assert!(!grant.used);
    // The code is used up.
    assert_err!(
        fx.acc().verify_reset_code(&p, &code).await,
        CoreError::CodeInvalid
    );

    fx.acc()
        .reset_password_with_permit(&p, short_pw("new-pass1"))
        .await
        .unwrap();
    // Every token is revoked.
    assert_err!(
        fx.acc().authenticate(&reg.token).await,
        CoreError::TokenInvalid
    );
    assert_err!(
        fx.acc().authenticate(&login.token).await,
        CoreError::TokenInvalid
    );
    // Old password refused, new accepted.
    assert_err!(
        fx.acc().login_phone(&p, "old-pass1", None).await,
        CoreError::WrongPassword
    );
    let after = fx.acc().login_phone(&p, "new-pass1", None).await.unwrap();
    fx.acc().authenticate(&after.token).await.unwrap();
    // The permit was single use.
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&p, short_pw("third-pw1"))
            .await,
        CoreError::GrantInvalid
    );
    fx.acc().login_phone(&p, "new-pass1", None).await.unwrap();
}

#[tokio::test]
async fn reset_permit_expires_after_ten_minutes() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "old-pass1", None).await;
    fx.grant_reset_permit("13811112222").await;
    fx.clock.advance(600);
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&p, short_pw("new-pass1"))
            .await,
        CoreError::GrantInvalid
    );
    fx.acc().login_phone(&p, "old-pass1", None).await.unwrap();

    fx.grant_reset_permit("13811112222").await;
    fx.clock.advance(599);
    fx.acc()
        .reset_password_with_permit(&p, short_pw("new-pass1"))
        .await
        .unwrap();
    fx.acc().login_phone(&p, "new-pass1", None).await.unwrap();
}

#[tokio::test]
async fn reset_permit_is_bound_to_its_phone() {
    let fx = fixture();
    fx.register_phone("13811112222", "pass-a-1", None).await;
    fx.register_phone("13900001111", "pass-b-1", None).await;
    fx.grant_reset_permit("13811112222").await;
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&phone("13900001111"), short_pw("new-pass1"))
            .await,
        CoreError::NotValidated
    );
    // An unregistered phone has nothing to reset.
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&phone("13700000000"), short_pw("new-pass1"))
            .await,
        CoreError::NotValidated
    );
    // The right phone's permit is intact.
    fx.acc()
        .reset_password_with_permit(&phone("+86 138 1111 2222"), short_pw("new-pass1"))
        .await
        .unwrap();
}

#[tokio::test]
async fn verify_reset_code_needs_a_reset_code() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.acc().send_phone_code(&p, false, None).await.unwrap();
    let register_code = fx.last_code("13811112222");
    assert_err!(
        fx.acc().verify_reset_code(&p, &register_code).await,
        CoreError::CodeInvalid
    );
    assert!(fx
        .core
        .stores
        .grants
        .grant(GrantKind::PasswordReset, &p)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn reset_releases_a_lockout() {
    let fx = fixture();
    let p = phone("13811112222");
    fx.register_phone("13811112222", "old-pass1", None).await;
    for _ in 0..5 {
        assert_err!(
            fx.acc().login_phone(&p, "wrong-pw", None).await,
            CoreError::WrongPassword
        );
    }
    assert_err!(
        fx.acc().login_phone(&p, "old-pass1", None).await,
        CoreError::AccountLocked { .. }
    );
    fx.grant_reset_permit("13811112222").await;
    fx.acc()
        .reset_password_with_permit(&p, short_pw("new-pass1"))
        .await
        .unwrap();
    fx.acc().login_phone(&p, "new-pass1", None).await.unwrap();
}

#[tokio::test]
async fn probe_registered_is_rate_limited_per_ip() {
    let fx = fixture_with(AccountPolicy {
        probes_per_ip_minute: 3,
        ..AccountPolicy::default()
    });
    fx.register_phone("13811112222", "s3cret-pw", None).await;
    let t0 = fx.now();
    let p = phone("13811112222");
    let q = phone("13900001111");
    assert!(fx.acc().probe_registered(&p, ip(1)).await.unwrap());
    assert!(!fx.acc().probe_registered(&q, ip(1)).await.unwrap());
    assert!(fx.acc().probe_registered(&p, ip(1)).await.unwrap());
    assert_err!(
        fx.acc().probe_registered(&q, ip(1)).await,
        CoreError::RateLimited { retry_at } if retry_at == t0 + 60
    );
    // A sendsms refusal (it would tell that p is registered) is a probe:
    // refused by the limit instead.
    assert_err!(
        fx.acc().send_phone_code(&p, false, ip(1)).await,
        CoreError::RateLimited { retry_at } if retry_at == t0 + 60
    );
    // A send is governed by the code caps (G7), not the probe limit.
    fx.acc().send_phone_code(&q, false, ip(1)).await.unwrap();
    // Other clients, and callers without a known address, are not limited.
    assert!(fx.acc().probe_registered(&p, ip(2)).await.unwrap());
    for _ in 0..10 {
        assert!(fx.acc().probe_registered(&p, None).await.unwrap());
    }
    fx.clock.advance(59);
    assert_err!(
        fx.acc().probe_registered(&q, ip(1)).await,
        CoreError::RateLimited { .. }
    );
    fx.clock.advance(1);
    assert!(!fx.acc().probe_registered(&q, ip(1)).await.unwrap());
}

#[tokio::test]
async fn probe_registered_daily_cap() {
    let fx = fixture_with(AccountPolicy {
        probes_per_ip_minute: 100,
        probes_per_ip_day: 4,
        ..AccountPolicy::default()
    });
    let t0 = fx.now();
    let p = phone("13811112222");
    for i in 0..4 {
        fx.clock.set(t0 + i * 600);
        assert!(!fx.acc().probe_registered(&p, ip(1)).await.unwrap());
    }
    fx.clock.set(t0 + 3_600);
    assert_err!(
        fx.acc().probe_registered(&p, ip(1)).await,
        CoreError::RateLimited { retry_at } if retry_at == t0 + 86_400
    );
    fx.clock.set(t0 + 86_400);
    assert!(!fx.acc().probe_registered(&p, ip(1)).await.unwrap());
}

// ----- telsignup -------------------------------------------------------------

#[tokio::test]
async fn signup_code_and_validation_give_a_registration_token() {
    let fx = fixture();
    let p = phone("13811112222");
    let t0 = fx.now();
    let issued = fx.acc().request_signup_code(&p, ip(1)).await.unwrap();
    assert_eq!(issued.issued_at, t0);
    let m = fx.outbox.messages().pop().unwrap();
    assert_eq!(m.purpose, Some(Purpose::Signup));
    assert_eq!(m.channel, Channel::Sms);
    assert_eq!(m.to, "13811112222");
    let code = m.code.unwrap();
    // Cooldown on a second request.
    assert_err!(
        fx.acc().request_signup_code(&p, ip(1)).await,
        CoreError::CodeCooldown { retry_at } if retry_at == t0 + 60
    );
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_err!(
        fx.acc().validate_signup_code(&p, wrong).await,
        CoreError::CodeInvalid
    );
    let token = fx.acc().validate_signup_code(&p, &code).await.unwrap();
    assert_eq!(token.expose().len(), 32);
    let grant = fx
        .core
        .stores
        .grants
        .grant(GrantKind::Registration, &p)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.token_hash, Some(token.hash()));
    assert_eq!(grant.expires_at, t0 + 1_800);
    assert!(!grant.used);
    // The code is single use.
    assert_err!(
        fx.acc().validate_signup_code(&p, &code).await,
        CoreError::CodeInvalid
    );
}

#[tokio::test]
async fn register_with_grant_checks_phone_first() {
    let fx = fixture();
    for bad in [
        "",
        "12345",
        "１3811112222",
        "23811112222",
        "+1 4155550100",
        "138.1111.2222",
    ] {
        assert_err!(
            fx.acc().register_with_grant(bad, "", "", "").await,
            CoreError::InvalidPhone
        );
    }
}

#[tokio::test]
async fn register_with_grant_never_validated() {
    let fx = fixture();
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", "whatever", "", "")
            .await,
        CoreError::NotValidated
    );
    // A code requested but never validated is still no validation.
    fx.acc()
        .request_signup_code(&phone("13811112222"), None)
        .await
        .unwrap();
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", "whatever", "bob", "s3cret-pw")
            .await,
        CoreError::NotValidated
    );
    // Another phone's validation does not count.
    fx.validate("13900001111").await;
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", "whatever", "bob", "s3cret-pw")
            .await,
        CoreError::NotValidated
    );
}

#[tokio::test]
async fn register_with_grant_checks_the_token_before_the_username() {
    let fx = fixture();
    let a = fx.validate("13811112222").await;
    let b = fx.validate("13900001111").await;
    // Wrong, empty, or another phone's token: GrantInvalid even with bad
    // username and password.
    for t in ["0123456789abcdef0123456789abcdef", "", b.expose()] {
        assert_err!(
            fx.acc().register_with_grant("13811112222", t, "", "").await,
            CoreError::GrantInvalid
        );
    }
    // The grant survived those attempts.
    let reg = fx
        .acc()
        .register_with_grant("138-1111-2222", a.expose(), "alice", "s3cret-pw")
        .await
        .unwrap();
    assert_eq!(reg.chat.id, "13811112222");
}

#[tokio::test]
async fn register_with_grant_checks_username_and_password_rules_without_consuming() {
    let fx = fixture();
    let t = fx.validate("13811112222").await;
    let tel = "13811112222";
    let tok = t.expose();
    let acc = fx.acc();
    assert_err!(
        acc.register_with_grant(tel, tok, "", "").await,
        CoreError::UsernameEmpty
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "ab", "").await,
        CoreError::UsernameLength
    );
    assert_err!(
        acc.register_with_grant(tel, tok, &"a".repeat(21), "").await,
        CoreError::UsernameLength
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "bad name", "").await,
        CoreError::UsernameCharset
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "bob", "").await,
        CoreError::PasswordEmpty
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "bob", "12345").await,
        CoreError::PasswordLength
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "bob", &"p".repeat(33))
            .await,
        CoreError::PasswordLength
    );
    assert_err!(
        acc.register_with_grant(tel, tok, "bob", "pass word").await,
        CoreError::PasswordCharset
    );
    // The standard policy (up to 32), not account_v4's 14.
    acc.register_with_grant(tel, tok, "bob", &"p".repeat(32))
        .await
        .unwrap();
}

#[tokio::test]
async fn register_with_grant_username_taken_then_phone_taken() {
    let fx = fixture();
    fx.sign_up("Alice", "s3cret-pw").await;
    let t = fx.validate("13811112222").await;
    let tel = "13811112222";
    assert_err!(
        fx.acc()
            .register_with_grant(tel, t.expose(), "alice", "s3cret-pw")
            .await,
        CoreError::UsernameTaken
    );
    assert_err!(
        fx.acc()
            .register_with_grant(tel, t.expose(), "root", "s3cret-pw")
            .await,
        CoreError::UsernameTaken
    );
    assert_err!(
        fx.acc()
            .register_with_grant(tel, t.expose(), "ROOT", "s3cret-pw")
            .await,
        CoreError::UsernameTaken
    );
    // Still unconsumed.
    fx.acc()
        .register_with_grant(tel, t.expose(), "bob", "s3cret-pw")
        .await
        .unwrap();

    // A phone already registered through account_v4.
    fx.register_phone("13900001111", "s3cret-pw", None).await;
    let t2 = fx.validate("13900001111").await;
    assert_err!(
        fx.acc()
            .register_with_grant("13900001111", t2.expose(), "carol", "s3cret-pw")
            .await,
        CoreError::PhoneTaken
    );
    // A taken username is reported before a taken phone.
    assert_err!(
        fx.acc()
            .register_with_grant("13900001111", t2.expose(), "bob", "s3cret-pw")
            .await,
        CoreError::UsernameTaken
    );
}

#[tokio::test]
async fn registration_token_expires_after_thirty_minutes() {
    let fx = fixture();
    let a = fx.validate("13811112222").await;
    let b = fx.validate("13900001111").await;
    fx.clock.advance(1_799);
    fx.acc()
        .register_with_grant("13811112222", a.expose(), "alice", "s3cret-pw")
        .await
        .unwrap();
    fx.clock.advance(1);
    // Expired comes before the username rules.
    assert_err!(
        fx.acc()
            .register_with_grant("13900001111", b.expose(), "", "")
            .await,
        CoreError::GrantInvalid
    );
    assert_err!(
        fx.acc()
            .register_with_grant("13900001111", b.expose(), "bob", "s3cret-pw")
            .await,
        CoreError::GrantInvalid
    );
}

#[tokio::test]
async fn registration_token_is_single_use() {
    let fx = fixture();
    let t = fx.validate("13811112222").await;
    fx.acc()
        .register_with_grant("13811112222", t.expose(), "alice", "s3cret-pw")
        .await
        .unwrap();
    // Reused: GrantInvalid, before the phone (or the name) is found taken.
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", t.expose(), "bob", "s3cret-pw")
            .await,
        CoreError::GrantInvalid
    );
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", t.expose(), "alice", "s3cret-pw")
            .await,
        CoreError::GrantInvalid
    );
}

#[tokio::test]
async fn a_new_validation_replaces_the_registration_token() {
    let fx = fixture();
    let first = fx.validate("13811112222").await;
    fx.clock.advance(60);
    let second = fx.validate("13811112222").await;
    assert_ne!(first.expose(), second.expose());
    assert_err!(
        fx.acc()
            .register_with_grant("13811112222", first.expose(), "alice", "s3cret-pw")
            .await,
        CoreError::GrantInvalid
    );
    fx.acc()
        .register_with_grant("13811112222", second.expose(), "alice", "s3cret-pw")
        .await
        .unwrap();
}

#[tokio::test]
async fn register_with_grant_success() {
    let fx = fixture();
    let t = fx.validate("13811112222").await;
    let reg = fx
        .acc()
        .register_with_grant("+86 138-1111-2222", t.expose(), "Bob_1", "s3cret-pw")
        .await
        .unwrap();
    assert_eq!(reg.chat.id, "13811112222");
    assert_eq!(reg.chat.password.len(), 32);
    assert!(reg.chat.password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(reg.user.username.as_ref().unwrap().as_str(), "Bob_1");
    assert_eq!(reg.user.phone.as_ref().unwrap().as_e164(), "+8613811112222");
    let (user, session) = fx.acc().authenticate(&reg.token).await.unwrap();
    assert_eq!(user.id, reg.user.id);
    assert_eq!(session.origin, SessionOrigin::Signup);
    // Both ways of logging in work with the password.
    fx.login("bob_1", "s3cret-pw").await;
    fx.acc()
        .login_phone(&phone("13811112222"), "s3cret-pw", None)
        .await
        .unwrap();
    let grant = fx
        .core
        .stores
        .grants
        .grant(GrantKind::Registration, &phone("13811112222"))
        .await
        .unwrap()
        .unwrap();
    assert!(grant.used);
}

// ----- hub recovery ------------------------------------------------------------

#[tokio::test]
async fn recovery_request_errors_in_order() {
    let fx = fixture();
    let a = fx.sign_up("alice", "s3cret-pw").await;
    let b = fx.sign_up("bob", "s3cret-pw").await;
    fx.sign_up("carol", "s3cret-pw").await;
    let alice = fx
        .bind_email(&fx.user_of(&a).await, "alice@example.com")
        .await;
    assert_eq!(alice.email.as_ref().unwrap().as_str(), "alice@example.com");
    fx.bind_email(&fx.user_of(&b).await, "bob@example.com")
        .await;
    let sent = fx.sent_count();

    assert_err!(
        fx.acc()
            .request_recovery_code("nobody", "alice@example.com", None)
            .await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc()
            .request_recovery_code("", "alice@example.com", None)
            .await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc()
            .request_recovery_code("carol", "carol@example.com", None)
            .await,
        CoreError::EmailNotFound
    );
    assert_err!(
        fx.acc()
            .request_recovery_code("alice", "not-an-email", None)
            .await,
        CoreError::EmailNotFound
    );
    assert_err!(
        fx.acc()
            .request_recovery_code("alice", "bob@example.com", None)
            .await,
        CoreError::EmailMismatch
    );
    assert_eq!(
        fx.sent_count(),
        sent,
        "no code went out for refused requests"
    );

    let t0 = fx.now();
    let issued = fx
        .acc()
        .request_recovery_code("ALICE", " Alice@Example.COM ", None)
        .await
        .unwrap();
    assert_eq!(issued.again_at, t0 + 60);
    let m = fx.outbox.messages().pop().unwrap();
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.to, "alice@example.com");
    assert_eq!(m.purpose, Some(Purpose::Reset));
    assert_err!(
        fx.acc()
            .request_recovery_code("alice", "alice@example.com", None)
            .await,
        CoreError::CodeCooldown { retry_at } if retry_at == t0 + 60
    );
}

#[tokio::test]
async fn recover_with_code_revokes_sessions_and_returns_a_working_token() {
    let fx = fixture();
    let a1 = fx.sign_up("alice", "s3cret-pw").await;
    let a2 = fx.login("alice", "s3cret-pw").await;
    let b = fx.sign_up("bob", "s3cret-pw").await;
    fx.bind_email(&fx.user_of(&a1).await, "alice@example.com")
        .await;
    fx.bind_email(&fx.user_of(&b).await, "bob@example.com")
        .await;
    fx.acc()
        .request_recovery_code("alice", "alice@example.com", None)
        .await
        .unwrap();
    let code = fx.last_code("alice@example.com");
    let wrong = if code == "000000" { "111111" } else { "000000" };

    assert_err!(
        fx.acc()
            .recover_with_code("alice", "alice@example.com", wrong)
            .await,
        CoreError::CodeInvalid
    );
    fx.acc().authenticate(&a1).await.unwrap();
    assert_err!(
        fx.acc()
            .recover_with_code("nobody", "alice@example.com", &code)
            .await,
        CoreError::UserNotFound
    );
    assert_err!(
        fx.acc()
            .recover_with_code("alice", "bob@example.com", &code)
            .await,
        CoreError::EmailMismatch
    );

    let r = fx
        .acc()
        .recover_with_code("alice", "alice@example.com", &code)
        .await
        .unwrap();
    assert_err!(fx.acc().authenticate(&a1).await, CoreError::TokenInvalid);
    assert_err!(fx.acc().authenticate(&a2).await, CoreError::TokenInvalid);
    let (user, session) = fx.acc().authenticate(&r).await.unwrap();
    assert_eq!(user.username.unwrap().as_str(), "alice");
    assert_eq!(session.origin, SessionOrigin::Recovery);
    fx.acc().authenticate(&b).await.unwrap();
    // The code is single use.
    assert_err!(
        fx.acc()
            .recover_with_code("alice", "alice@example.com", &code)
            .await,
        CoreError::CodeInvalid
    );
}

#[tokio::test]
async fn recovery_releases_a_lockout() {
    let fx = fixture();
    let a = fx.sign_up("alice", "s3cret-pw").await;
    fx.bind_email(&fx.user_of(&a).await, "alice@example.com")
        .await;
    fx.fail_logins("alice", 5).await;
    assert_err!(
        fx.acc().login_username("alice", "s3cret-pw").await,
        CoreError::AccountLocked { .. }
    );
    fx.acc()
        .request_recovery_code("alice", "alice@example.com", None)
        .await
        .unwrap();
    let code = fx.last_code("alice@example.com");
    fx.acc()
        .recover_with_code("alice", "alice@example.com", &code)
        .await
        .unwrap();
    fx.login("alice", "s3cret-pw").await;
}

// ----- hub email binding ---------------------------------------------------------

#[tokio::test]
async fn bind_email_sends_a_code_by_email_and_binds_on_check() {
    let fx = fixture();
    let t = fx.sign_up("alice", "s3cret-pw").await;
    let user = fx.user_of(&t).await;
    fx.acc()
        .bind_email_send(&user, "Alice@Example.com", ip(1))
        .await
        .unwrap();
    let m = fx.outbox.messages().pop().unwrap();
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.to, "alice@example.com");
    assert_eq!(m.purpose, Some(Purpose::BindEmail));
    let code = m.code.unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    assert_err!(
        fx.acc()
            .bind_email_check(&user, "alice@example.com", wrong)
            .await,
        CoreError::CodeInvalid
    );
    assert_eq!(fx.acc().user(&user.id).await.unwrap().unwrap().email, None);
    let bound = fx
        .acc()
        .bind_email_check(&user, "ALICE@example.com", &code)
        .await
        .unwrap();
    assert_eq!(bound.email.as_ref().unwrap().as_str(), "alice@example.com");
    let stored = fx.acc().user(&user.id).await.unwrap().unwrap();
    assert_eq!(stored.email, bound.email);
    let by_email = fx
        .core
        .stores
        .users
        .user(&UserKey::Email(Email::parse("alice@example.com").unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_email.id, user.id);
}

#[tokio::test]
async fn bind_email_rejects_invalid_addresses() {
    let fx = fixture();
    let t = fx.sign_up("alice", "s3cret-pw").await;
    let user = fx.user_of(&t).await;
    for bad in ["", "alice", "a@b", "a b@c.d"] {
        assert_err!(
            fx.acc().bind_email_send(&user, bad, None).await,
            CoreError::InvalidEmail
        );
        assert_err!(
            fx.acc().bind_email_check(&user, bad, "123456").await,
            CoreError::InvalidEmail
        );
    }
    assert_eq!(fx.sent_count(), 0);
}

#[tokio::test]
async fn bind_email_taken_is_checked_before_the_cooldown() {
    let fx = fixture();
    let alice = fx.user_of(&fx.sign_up("alice", "s3cret-pw").await).await;
    let bob = fx.user_of(&fx.sign_up("bob", "s3cret-pw").await).await;
    fx.acc()
        .bind_email_send(&alice, "shared@example.com", None)
        .await
        .unwrap();
    fx.clock.advance(60);
    // Bob binds it first; his send starts a new cooldown for the address.
    fx.bind_email(&bob, "shared@example.com").await;
    fx.clock.advance(1);
    let sent = fx.sent_count();
    assert_err!(
        fx.acc()
            .bind_email_send(&alice, "shared@example.com", None)
            .await,
        CoreError::EmailTaken
    );
    assert_err!(
        fx.acc()
            .bind_email_send(&alice, "SHARED@example.com", None)
            .await,
        CoreError::EmailTaken
    );
    assert_err!(
        fx.acc()
            .bind_email_check(&alice, "shared@example.com", "123456")
            .await,
        CoreError::EmailTaken
    );
    assert_eq!(fx.sent_count(), sent);
    assert_eq!(fx.acc().user(&alice.id).await.unwrap().unwrap().email, None);
    // The owner may ask again; then it is the cooldown that answers.
    assert_err!(
        fx.acc()
            .bind_email_send(&bob, "shared@example.com", None)
            .await,
        CoreError::CodeCooldown { .. }
    );
}

#[tokio::test]
async fn bind_email_taken_is_checked_before_the_caps() {
    let fx = fixture();
    let alice = fx.user_of(&fx.sign_up("alice", "s3cret-pw").await).await;
    let bob = fx.user_of(&fx.sign_up("bob", "s3cret-pw").await).await;
    fx.bind_email(&bob, "shared@example.com").await;
    // Use up the address's hourly cap (bob's send was the first of five).
    for _ in 0..4 {
        fx.clock.advance(60);
        fx.acc()
            .bind_email_send(&bob, "shared@example.com", None)
            .await
            .unwrap();
    }
    fx.clock.advance(60);
    assert_err!(
        fx.acc()
            .bind_email_send(&bob, "shared@example.com", None)
            .await,
        CoreError::RateLimited { .. }
    );
    assert_err!(
        fx.acc()
            .bind_email_send(&alice, "shared@example.com", None)
            .await,
        CoreError::EmailTaken
    );
}

#[tokio::test]
async fn live_sessions_per_user_are_capped_oldest_first() {
    let fx = build(
        CodePolicy::default(),
        AccountPolicy {
            max_sessions_per_user: 3,
            ..AccountPolicy::default()
        },
        Arc::new(Argon2Hasher::fast_insecure_for_tests()),
    );
    let first = fx.sign_up("alice", "s3cret-pw").await;
    let mut tokens = vec![first];
    for _ in 0..4 {
        fx.clock.advance(1);
        tokens.push(fx.acc().login_username("alice", "s3cret-pw").await.unwrap());
    }
    let live: Vec<bool> = {
        let mut v = Vec::new();
        for t in &tokens {
            v.push(fx.acc().authenticate(t).await.is_ok());
        }
        v
    };
    assert_eq!(live, vec![false, false, true, true, true]);
}

// ----- issue 10: per-IP keys, probes, password hashing, banned recovery ---

fn v6(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[tokio::test]
async fn per_ip_limits_key_ipv6_by_prefix_and_mapped_ipv4_by_ipv4() {
    let fx = build(
        CodePolicy {
            per_ip_hour: 3,
            ..CodePolicy::default()
        },
        AccountPolicy::default(),
        Arc::new(Argon2Hasher::fast_insecure_for_tests()),
    );
    // The probe budget (30 a minute): 30 addresses of one /64 share it.
    let p = phone("13900000000");
    for i in 0..30 {
        let a = v6(&format!("2001:db8:1:2::{:x}", i + 1));
        fx.acc().probe_registered(&p, a).await.unwrap();
    }
    assert_err!(
        fx.acc()
            .probe_registered(&p, v6("2001:db8:1:2:ffff::9"))
            .await,
        CoreError::RateLimited { .. }
    );
    // Another /64 has its own.
    fx.acc()
        .probe_registered(&p, v6("2001:db8:1:3::1"))
        .await
        .unwrap();
    // An IPv4 address and its IPv4-mapped spelling are one client.
    for i in 0..30 {
        let a = if i % 2 == 0 {
            "10.77.0.1"
        } else {
            "::ffff:10.77.0.1"
        };
        fx.acc().probe_registered(&p, v6(a)).await.unwrap();
    }
    assert_err!(
        fx.acc().probe_registered(&p, v6("::ffff:10.77.0.1")).await,
        CoreError::RateLimited { .. }
    );
    assert_err!(
        fx.acc().probe_registered(&p, v6("10.77.0.1")).await,
        CoreError::RateLimited { .. }
    );
    // The G7 per-IP caps (3 an hour here) key the same way.
    for i in 0..3 {
        let to = phone(&format!("1370000000{i}"));
        fx.acc()
            .request_signup_code(&to, v6(&format!("2001:db8:9:9::{}", i + 1)))
            .await
            .unwrap();
    }
    assert_err!(
        fx.acc()
            .request_signup_code(&phone("13700000009"), v6("2001:db8:9:9:1:2:3:4"))
            .await,
        CoreError::RateLimited { .. }
    );
}

#[tokio::test]
async fn hub_login_failures_are_probes_and_answer_rate_limited_past_the_budget() {
    // What is counted here is the client, not the account: keep the
    // per-account lockout out of the way.
    let fx = fixture_with(AccountPolicy {
        login_failures_max: 100,
        ..AccountPolicy::default()
    });
    fx.sign_up("alice", "s3cret-pw").await;
    let acc = fx.acc();
    // 30 revealing answers (unknown user, wrong password) a minute.
    for i in 0..15 {
        assert_err!(
            acc.login_username_from(&format!("ghost{i}"), "whatever1", ip(7))
                .await,
            CoreError::UserNotFound
        );
        assert_err!(
            acc.login_username_from("alice", &format!("wrong-{i}"), ip(7))
                .await,
            CoreError::WrongPassword
        );
    }
    // Past the budget both look alike, whatever the user.
    assert_err!(
        acc.login_username_from("ghost99", "whatever1", ip(7)).await,
        CoreError::RateLimited { .. }
    );
    assert_err!(
        acc.login_username_from("alice", "wrong-again", ip(7)).await,
        CoreError::RateLimited { .. }
    );
    // The right password still logs in; another client is not affected.
    acc.login_username_from("alice", "s3cret-pw", ip(7))
        .await
        .unwrap();
    assert_err!(
        acc.login_username_from("ghost99", "whatever1", ip(8)).await,
        CoreError::UserNotFound
    );
}

#[tokio::test]
async fn hub_recovery_failures_are_probes_and_answer_rate_limited_past_the_budget() {
    let fx = fixture();
    fx.alice_with_email().await;
    let acc = fx.acc();
    for i in 0..10 {
        assert_err!(
            acc.recover_with_code_from(&format!("ghost{i}"), "a@example.com", "123456", ip(3))
                .await,
            CoreError::UserNotFound
        );
        assert_err!(
            acc.recover_with_code_from("alice", &format!("x{i}@example.com"), "123456", ip(3))
                .await,
            CoreError::EmailNotFound
        );
        assert_err!(
            acc.recover_with_code_from("alice", "alice@example.com", "000000", ip(3))
                .await,
            CoreError::CodeInvalid
        );
    }
    for (user, email) in [
        ("ghost", "a@example.com"),
        ("alice", "nobody@example.com"),
        ("alice", "alice@example.com"),
    ] {
        assert_err!(
            acc.recover_with_code_from(user, email, "000000", ip(3))
                .await,
            CoreError::RateLimited { .. }
        );
    }
}

/// Counts password verifications; with `gate`, each waits for a permit.
#[derive(Debug)]
struct CountingHasher {
    inner: Argon2Hasher,
    verifies: std::sync::atomic::AtomicUsize,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl CountingHasher {
    fn new(gate: Option<Arc<tokio::sync::Semaphore>>) -> Arc<Self> {
        Arc::new(Self {
            inner: Argon2Hasher::fast_insecure_for_tests(),
            verifies: Default::default(),
            gate,
        })
    }

    fn verifies(&self) -> usize {
        self.verifies.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl PasswordHasher for CountingHasher {
    async fn hash(&self, password: &str) -> String {
        self.inner.hash_blocking(password)
    }

    async fn verify(&self, password: &str, phc: &str) -> bool {
        self.verifies
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(g) = &self.gate {
            let _p = g.acquire().await;
        }
        self.inner.verify_blocking(password, phc)
    }
}

#[tokio::test]
async fn unknown_users_and_wrong_passwords_do_the_same_work() {
    let hasher = CountingHasher::new(None);
    let fx = build(
        CodePolicy::default(),
        AccountPolicy::default(),
        hasher.clone(),
    );
    fx.sign_up("alice", "s3cret-pw").await;
    let before = hasher.verifies();
    let _ = fx
        .acc()
        .login_username_from("ghost", "pw-123456", ip(1))
        .await;
    let unknown = hasher.verifies() - before;
    let _ = fx
        .acc()
        .login_username_from("alice", "pw-123456", ip(1))
        .await;
    let wrong = hasher.verifies() - before - unknown;
    assert_eq!((unknown, wrong), (1, 1), "one argon2 verification each");
}

#[tokio::test]
async fn failed_password_checks_per_ip_are_budgeted_before_hashing() {
    let hasher = CountingHasher::new(None);
    let fx = build(
        CodePolicy::default(),
        AccountPolicy {
            failed_passwords_per_ip_hour: 3,
            ..AccountPolicy::default()
        },
        hasher.clone(),
    );
    fx.sign_up("alice", "s3cret-pw").await;
    let acc = fx.acc();
    for i in 0..3 {
        assert_err!(
            acc.verify_credentials_from(&format!("ghost{i}"), "pw-123456", v6("2001:db8::1"))
                .await,
            CoreError::UserNotFound
        );
    }
    let spent = hasher.verifies();
    // The same /64 is refused without hashing, even with the right password…
    for (u, pw) in [("ghost", "pw-123456"), ("alice", "s3cret-pw")] {
        assert_err!(
            acc.verify_credentials_from(u, pw, v6("2001:db8::2")).await,
            CoreError::RateLimited { .. }
        );
    }
    assert_err!(
        acc.login_phone_from(&phone("13900000000"), "pw-123456", None, v6("2001:db8::3"))
            .await,
        CoreError::RateLimited { .. }
    );
    assert_eq!(hasher.verifies(), spent);
    // …another client is served, and the budget frees up after an hour.
    acc.verify_credentials_from("alice", "s3cret-pw", ip(1))
        .await
        .unwrap();
    fx.clock.advance(3_600);
    acc.verify_credentials_from("alice", "s3cret-pw", v6("2001:db8::2"))
        .await
        .unwrap();
}

#[tokio::test]
async fn password_checks_beyond_the_running_and_waiting_cap_are_refused_at_once() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let hasher = CountingHasher::new(Some(gate.clone()));
    let fx = build(
        CodePolicy::default(),
        AccountPolicy {
            max_concurrent_password_checks: 1,
            max_waiting_password_checks: 1,
            verified_cache_secs: 0,
            ..AccountPolicy::default()
        },
        hasher.clone(),
    );
    fx.sign_up("alice", "s3cret-pw").await;
    let spawn = |user: &'static str| {
        let acc = fx.core.accounts.clone();
        tokio::spawn(async move { acc.verify_credentials_from(user, "pw-123456", None).await })
    };
    // One check runs (held inside the hasher), one waits for its turn.
    let running = spawn("ghost1");
    while hasher.verifies() < 1 {
        tokio::task::yield_now().await;
    }
    let waiting = spawn("ghost2");
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    // A third is refused at once, whoever it is for.
    assert_err!(
        fx.acc()
            .verify_credentials_from("alice", "s3cret-pw", None)
            .await,
        CoreError::Overloaded
    );
    gate.add_permits(2);
    assert_err!(running.await.unwrap(), CoreError::UserNotFound);
    assert_err!(waiting.await.unwrap(), CoreError::UserNotFound);
    gate.add_permits(1);
    fx.acc()
        .verify_credentials_from("alice", "s3cret-pw", None)
        .await
        .unwrap();
}

#[tokio::test]
async fn banned_users_cannot_recover_their_account() {
    let fx = fixture();
    fx.alice_with_email().await;
    fx.acc()
        .request_recovery_code("alice", "alice@example.com", None)
        .await
        .unwrap();
    let code = fx.last_code("alice@example.com");
    fx.acc().set_banned("alice", true).await.unwrap();
    assert_err!(
        fx.acc()
            .recover_with_code_from("alice", "alice@example.com", &code, ip(1))
            .await,
        CoreError::Banned
    );
    assert_err!(
        fx.acc()
            .request_recovery_code("alice", "alice@example.com", None)
            .await,
        CoreError::Banned
    );
    // account_v4: a permit granted before the ban does not reset.
    fx.register_phone("13811112222", "secret1", None).await;
    fx.grant_reset_permit("13811112222").await;
    fx.ban_phone_user("13811112222").await;
    assert_err!(
        fx.acc()
            .reset_password_with_permit(&phone("13811112222"), short_pw("newpass1"))
            .await,
        CoreError::Banned
    );
}
