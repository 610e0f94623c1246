//! Unit tests of the verification-code rules (decision G7) over the
//! in-memory store, a manual clock and a seeded random source.

use super::*;

use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};

use crate::clock::ManualClock;
use crate::core::Core;
use crate::limits::LimitDecision;
use crate::memory::MemoryStore;
use crate::password::Argon2Hasher;
use crate::random::SeededRandom;
use crate::sender::RecordingSender;

const PHONE: &str = "13811112222";
const PHONE_E164: &str = "+8613811112222";

struct Fx {
    core: Core,
    outbox: Arc<RecordingSender>,
    clock: Arc<ManualClock>,
}

impl Fx {
    fn now(&self) -> i64 {
        self.clock.unix()
    }

    fn codes(&self) -> &CodeService {
        &self.core.codes
    }

    fn sent(&self) -> Vec<OutboundMessage> {
        self.outbox.messages()
    }

    fn last_code(&self, to: &str) -> String {
        self.outbox
            .last_code_to(to)
            .unwrap_or_else(|| panic!("no code was sent to {to}"))
    }

    async fn send_phone(&self, purpose: Purpose) -> Result<Issued, CoreError> {
        self.codes().send(&phone_addr(PHONE), purpose, None).await
    }

    async fn check_phone(&self, purpose: Purpose, code: &str) -> Result<(), CoreError> {
        self.codes().check(&phone_addr(PHONE), purpose, code).await
    }
}

fn fixture_with(policy: CodePolicy, secret: Option<[u8; 32]>) -> Fx {
    fixture_over(
        Stores::from_single(Arc::new(MemoryStore::new())),
        policy,
        secret,
    )
}

fn fixture_over(stores: Stores, policy: CodePolicy, secret: Option<[u8; 32]>) -> Fx {
    let outbox = Arc::new(RecordingSender::new());
    let clock = Arc::new(ManualClock::default());
    let mut builder = Core::test_builder(stores)
        .sender(outbox.clone())
        .clock(clock.clone())
        .random(Arc::new(SeededRandom::new(1)))
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .code_policy(policy);
    if let Some(k) = secret {
        builder = builder.code_secret(k);
    }
    Fx {
        core: builder.build().expect("test core"),
        outbox,
        clock,
    }
}

fn fixture() -> Fx {
    fixture_with(CodePolicy::default(), None)
}

fn phone(s: &str) -> PhoneNumber {
    PhoneNumber::parse_cn_mobile(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn phone_addr(s: &str) -> CodeAddress {
    CodeAddress::Phone(phone(s))
}

fn email_addr(s: &str) -> CodeAddress {
    CodeAddress::Email(Email::parse(s).unwrap())
}

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
}

/// A different mainland mobile for each `i`.
fn nth_phone(i: u32) -> String {
    format!("1390000{i:04}")
}

/// A code that is certainly not `code` (same length, all digits).
fn other_code(code: &str) -> String {
    code.bytes()
        .map(|b| char::from(b'0' + (b - b'0' + 1) % 10))
        .collect()
}

#[track_caller]
fn assert_cooldown(r: Result<Issued, CoreError>, expected_retry_at: i64) {
    match r {
        Err(CoreError::CodeCooldown { retry_at }) => assert_eq!(retry_at, expected_retry_at),
        other => panic!("expected CodeCooldown{{retry_at: {expected_retry_at}}}, got {other:?}"),
    }
}

#[track_caller]
fn assert_rate_limited(r: Result<Issued, CoreError>, expected_retry_at: i64) {
    match r {
        Err(CoreError::RateLimited { retry_at }) => assert_eq!(retry_at, expected_retry_at),
        other => panic!("expected RateLimited{{retry_at: {expected_retry_at}}}, got {other:?}"),
    }
}

#[track_caller]
fn assert_code_invalid(r: Result<(), CoreError>) {
    assert!(
        matches!(r, Err(CoreError::CodeInvalid)),
        "expected CodeInvalid, got {r:?}"
    );
}

#[track_caller]
fn assert_checks_locked(r: Result<(), CoreError>, expected_retry_at: i64) {
    match r {
        Err(CoreError::CodeChecksLocked { retry_at }) => assert_eq!(retry_at, expected_retry_at),
        other => {
            panic!("expected CodeChecksLocked{{retry_at: {expected_retry_at}}}, got {other:?}")
        }
    }
}

// ----- policy ------------------------------------------------------------

#[test]
fn default_policy_is_g7() {
    let p = CodePolicy::default();
    assert_eq!(p.digits, 6);
    assert_eq!(p.ttl_secs, 300);
    assert_eq!(p.max_attempts, 5);
    assert_eq!(p.cooldown_secs, 60);
    assert_eq!(p.per_address_hour, 5);
    assert_eq!(p.per_address_day, 10);
    assert_eq!(p.per_ip_hour, 300);
    assert_eq!(p.per_ip_day, 2_000);
    assert_eq!(p.failed_checks_max, 20);
    assert_eq!(p.failed_checks_window_secs, 86_400);
    assert_eq!(p.fixed_code, None);
    // One client IP alone can never trip the SMS-pumping breaker: its
    // hourly cap comes first.
    assert_eq!(p.pump_min_sends, 500);
    assert!(p.pump_min_sends > p.per_ip_hour);
    // The builder's default is this policy.
    assert_eq!(fixture().codes().policy(), &p);
}

#[test]
fn code_address_forms() {
    let p = phone_addr("+86 138-1111-2222");
    assert_eq!(p.key(), PHONE_E164);
    assert_eq!(p.wire(), PHONE);
    assert_eq!(p.channel(), Channel::Sms);
    let e = email_addr(" Alice@Example.COM ");
    assert_eq!(e.key(), "alice@example.com");
    assert_eq!(e.wire(), "alice@example.com");
    assert_eq!(e.channel(), Channel::Email);
}

// ----- issuing -------------------------------------------------------------

#[tokio::test]
async fn code_is_six_digits_sent_by_sms_with_purpose_and_national_to() {
    let fx = fixture();
    let t0 = fx.now();
    let issued = fx.send_phone(Purpose::Register).await.unwrap();
    assert_eq!(
        issued,
        Issued {
            issued_at: t0,
            expires_at: t0 + 300,
            again_at: t0 + 60,
        }
    );
    let sent = fx.sent();
    assert_eq!(sent.len(), 1);
    let m = &sent[0];
    assert_eq!(m.channel, Channel::Sms);
    assert_eq!(m.to, PHONE, "the wire form is the 11-digit mobile");
    assert_eq!(m.purpose, Some(Purpose::Register));
    assert_eq!(m.at, fx.clock.now());
    let code = m.code.clone().unwrap();
    assert_eq!(code.len(), 6);
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    assert!(m.text.contains(&code), "text carries the code: {}", m.text);
    assert!(m.text.contains("5 分钟"), "text says 5 minutes: {}", m.text);
}

#[tokio::test]
async fn every_code_is_six_digits() {
    let fx = fixture();
    // 25 numbers of one prefix: far below the SMS-pumping burst.
    for i in 0..25 {
        fx.codes()
            .send(&phone_addr(&nth_phone(i)), Purpose::Signup, None)
            .await
            .unwrap();
    }
    let sent = fx.sent();
    assert_eq!(sent.len(), 25);
    for m in &sent {
        let c = m.code.as_deref().unwrap();
        assert_eq!(c.len(), 6, "{c}");
        assert!(c.bytes().all(|b| b.is_ascii_digit()), "{c}");
    }
    // Random, not constant.
    let first = sent[0].code.clone();
    assert!(sent.iter().any(|m| m.code != first));
}

#[tokio::test]
async fn email_codes_go_by_email_to_the_lowercased_address() {
    let fx = fixture();
    let addr = email_addr("Bob@Example.com");
    fx.codes()
        .send(&addr, Purpose::BindEmail, None)
        .await
        .unwrap();
    let m = &fx.sent()[0];
    assert_eq!(m.channel, Channel::Email);
    assert_eq!(m.to, "bob@example.com");
    assert_eq!(m.purpose, Some(Purpose::BindEmail));
    let code = m.code.clone().unwrap();
    assert_eq!(code.len(), 6);
    fx.codes()
        .check(&email_addr("BOB@example.COM"), Purpose::BindEmail, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn each_purpose_is_carried_in_the_message() {
    let fx = fixture();
    for p in [
        Purpose::Signup,
        Purpose::Register,
        Purpose::Reset,
        Purpose::BindEmail,
    ] {
        fx.send_phone(p).await.unwrap();
        assert_eq!(fx.sent().last().unwrap().purpose, Some(p));
    }
}

// ----- checking ------------------------------------------------------------

#[tokio::test]
async fn code_valid_until_just_before_five_minutes() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    fx.clock.advance(299);
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

#[tokio::test]
async fn code_invalid_at_five_minutes() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    fx.clock.advance(300);
    assert_code_invalid(fx.check_phone(Purpose::Register, &code).await);
}

#[tokio::test]
async fn code_is_single_use() {
    let fx = fixture();
    fx.send_phone(Purpose::Reset).await.unwrap();
    let code = fx.last_code(PHONE);
    fx.check_phone(Purpose::Reset, &code).await.unwrap();
    assert_code_invalid(fx.check_phone(Purpose::Reset, &code).await);
}

#[tokio::test]
async fn code_void_after_five_wrong_tries_even_for_the_right_code() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    let wrong = other_code(&code);
    for _ in 0..5 {
        assert_code_invalid(fx.check_phone(Purpose::Register, &wrong).await);
    }
    assert_code_invalid(fx.check_phone(Purpose::Register, &code).await);
}

#[tokio::test]
async fn four_wrong_tries_still_leave_the_right_code_valid() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    let wrong = other_code(&code);
    for _ in 0..4 {
        assert_code_invalid(fx.check_phone(Purpose::Register, &wrong).await);
    }
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

#[tokio::test]
async fn code_is_bound_to_its_purpose_and_address() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    assert_code_invalid(fx.check_phone(Purpose::Reset, &code).await);
    assert_code_invalid(
        fx.codes()
            .check(&phone_addr("13900001111"), Purpose::Register, &code)
            .await,
    );
    // Those misses did not consume it.
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

#[tokio::test]
async fn check_without_any_code_is_invalid() {
    let fx = fixture();
    assert_code_invalid(fx.check_phone(Purpose::Register, "123456").await);
    assert_code_invalid(fx.check_phone(Purpose::Register, "").await);
}

#[tokio::test]
async fn overlong_or_garbage_presented_code_is_just_wrong() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    let long = format!("{code}{}", "9".repeat(10_000));
    assert_code_invalid(fx.check_phone(Purpose::Register, &long).await);
    assert_code_invalid(fx.check_phone(Purpose::Register, "１２３４５６").await);
    assert_code_invalid(fx.check_phone(Purpose::Register, &format!(" {code}")).await);
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

#[tokio::test]
async fn a_new_send_replaces_the_old_code() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let old = fx.last_code(PHONE);
    fx.clock.advance(60);
    fx.send_phone(Purpose::Register).await.unwrap();
    let new = fx.last_code(PHONE);
    assert_ne!(
        old, new,
        "the seeded source drew the same code twice; pick another seed"
    );
    assert_code_invalid(fx.check_phone(Purpose::Register, &old).await);
    fx.check_phone(Purpose::Register, &new).await.unwrap();
}

#[tokio::test]
async fn a_new_send_restarts_expiry_and_attempts() {
    let fx = fixture();
    fx.send_phone(Purpose::Register).await.unwrap();
    let old = fx.last_code(PHONE);
    for _ in 0..5 {
        assert_code_invalid(fx.check_phone(Purpose::Register, &other_code(&old)).await);
    }
    fx.clock.advance(250);
    fx.send_phone(Purpose::Register).await.unwrap();
    let new = fx.last_code(PHONE);
    fx.clock.advance(299);
    fx.check_phone(Purpose::Register, &new).await.unwrap();
}

// ----- cooldown --------------------------------------------------------------

#[tokio::test]
async fn resend_cooldown_is_sixty_seconds_per_address_and_purpose() {
    let fx = fixture();
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    assert_eq!(
        fx.codes()
            .cooldown_until(&phone_addr(PHONE), Purpose::Register)
            .await
            .unwrap(),
        Some(t0 + 60)
    );
    assert_cooldown(fx.send_phone(Purpose::Register).await, t0 + 60);
    fx.clock.advance(59);
    assert_cooldown(fx.send_phone(Purpose::Register).await, t0 + 60);

    // Another purpose, or another address, is not blocked.
    fx.send_phone(Purpose::Reset).await.unwrap();
    fx.codes()
        .send(&phone_addr("13900001111"), Purpose::Register, None)
        .await
        .unwrap();
    // Refused sends sent nothing.
    assert_eq!(fx.sent().len(), 3);

    fx.clock.advance(1);
    assert_eq!(
        fx.codes()
            .cooldown_until(&phone_addr(PHONE), Purpose::Register)
            .await
            .unwrap(),
        None
    );
    let again = fx.send_phone(Purpose::Register).await.unwrap();
    assert_eq!(again.issued_at, t0 + 60);
    assert_eq!(again.again_at, t0 + 120);
}

#[tokio::test]
async fn cooldown_without_any_code_is_none() {
    let fx = fixture();
    assert_eq!(
        fx.codes()
            .cooldown_until(&phone_addr(PHONE), Purpose::Signup)
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn cooldown_holds_even_after_the_code_was_used() {
    let fx = fixture();
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    fx.check_phone(Purpose::Register, &fx.last_code(PHONE))
        .await
        .unwrap();
    fx.clock.advance(30);
    assert_cooldown(fx.send_phone(Purpose::Register).await, t0 + 60);
}

#[tokio::test]
async fn refused_sends_within_cooldown_do_not_count_against_caps() {
    let fx = fixture();
    // Many refused attempts within each cooldown, five real sends.
    for _ in 0..5 {
        fx.send_phone(Purpose::Register).await.unwrap();
        for _ in 0..10 {
            assert!(matches!(
                fx.send_phone(Purpose::Register).await,
                Err(CoreError::CodeCooldown { .. })
            ));
        }
        fx.clock.advance(60);
    }
    assert_eq!(fx.sent().len(), 5);
}

// ----- caps per address --------------------------------------------------------

#[tokio::test]
async fn five_sends_per_address_per_hour() {
    let fx = fixture();
    let t0 = fx.now();
    for _ in 0..5 {
        fx.send_phone(Purpose::Register).await.unwrap();
        fx.clock.advance(60);
    }
    // t0 + 300: past the cooldown, but the hourly cap is reached.
    assert_rate_limited(fx.send_phone(Purpose::Register).await, t0 + 3_600);
    // The cap is per address, across purposes.
    assert_rate_limited(fx.send_phone(Purpose::Reset).await, t0 + 3_600);
    // Another address is unaffected.
    fx.codes()
        .send(&phone_addr("13900001111"), Purpose::Register, None)
        .await
        .unwrap();
    assert_eq!(fx.sent().len(), 6);

    fx.clock.set(t0 + 3_599);
    assert_rate_limited(fx.send_phone(Purpose::Register).await, t0 + 3_600);
    fx.clock.set(t0 + 3_600);
    fx.send_phone(Purpose::Register).await.unwrap();
}

#[tokio::test]
async fn rate_limited_send_keeps_the_previous_code_valid() {
    let fx = fixture();
    for _ in 0..5 {
        fx.send_phone(Purpose::Register).await.unwrap();
        fx.clock.advance(60);
    }
    let code = fx.last_code(PHONE);
    // Now 60 s after the fifth send: out of its cooldown, within its ttl.
    assert!(matches!(
        fx.send_phone(Purpose::Register).await,
        Err(CoreError::RateLimited { .. })
    ));
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

#[tokio::test]
async fn ten_sends_per_address_per_day() {
    let fx = fixture();
    let t0 = fx.now();
    // Five in the first hour …
    for i in 0..5 {
        fx.clock.set(t0 + i * 60);
        fx.send_phone(Purpose::Register).await.unwrap();
    }
    // … five in the second.
    for i in 0..5 {
        fx.clock.set(t0 + 3_600 + i * 60);
        fx.send_phone(Purpose::Register).await.unwrap();
    }
    // The hourly window has room again at t0 + 7,200 (only four of the last
    // hour's sends remain in it), but the daily cap is reached.
    fx.clock.set(t0 + 7_200);
    assert_rate_limited(fx.send_phone(Purpose::Register).await, t0 + 86_400);
    fx.clock.set(t0 + 86_399);
    assert_rate_limited(fx.send_phone(Purpose::Register).await, t0 + 86_400);
    fx.clock.set(t0 + 86_400);
    fx.send_phone(Purpose::Register).await.unwrap();
    assert_eq!(fx.sent().len(), 11);
}

#[tokio::test]
async fn both_caps_exhausted_report_the_later_retry_at() {
    let fx = fixture_with(
        CodePolicy {
            per_address_hour: 2,
            per_address_day: 2,
            ..CodePolicy::default()
        },
        None,
    );
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    fx.clock.advance(60);
    fx.send_phone(Purpose::Register).await.unwrap();
    fx.clock.advance(60);
    assert_rate_limited(fx.send_phone(Purpose::Register).await, t0 + 86_400);
}

// ----- caps per client IP --------------------------------------------------------

#[tokio::test]
async fn per_ip_hourly_cap() {
    let fx = fixture_with(
        CodePolicy {
            per_ip_hour: 3,
            ..CodePolicy::default()
        },
        None,
    );
    let t0 = fx.now();
    let codes = fx.codes();
    for i in 0..3 {
        codes
            .send(&phone_addr(&nth_phone(i)), Purpose::Signup, ip(1))
            .await
            .unwrap();
    }
    assert_rate_limited(
        codes
            .send(&phone_addr(&nth_phone(3)), Purpose::Signup, ip(1))
            .await,
        t0 + 3_600,
    );
    // Another client, or no known client, is not limited.
    codes
        .send(&phone_addr(&nth_phone(3)), Purpose::Signup, ip(2))
        .await
        .unwrap();
    codes
        .send(&phone_addr(&nth_phone(4)), Purpose::Signup, None)
        .await
        .unwrap();
    fx.clock.set(t0 + 3_599);
    assert_rate_limited(
        codes
            .send(&phone_addr(&nth_phone(5)), Purpose::Signup, ip(1))
            .await,
        t0 + 3_600,
    );
    fx.clock.set(t0 + 3_600);
    codes
        .send(&phone_addr(&nth_phone(5)), Purpose::Signup, ip(1))
        .await
        .unwrap();
    assert_eq!(fx.sent().len(), 6);
}

#[tokio::test]
async fn per_ip_daily_cap() {
    let fx = fixture_with(
        CodePolicy {
            per_ip_hour: 100,
            per_ip_day: 4,
            ..CodePolicy::default()
        },
        None,
    );
    let t0 = fx.now();
    let v6: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
    for i in 0..4 {
        fx.clock.set(t0 + i64::from(i) * 3_600);
        fx.codes()
            .send(&phone_addr(&nth_phone(i)), Purpose::Register, v6)
            .await
            .unwrap();
    }
    fx.clock.set(t0 + 5 * 3_600);
    assert_rate_limited(
        fx.codes()
            .send(&phone_addr(&nth_phone(9)), Purpose::Register, v6)
            .await,
        t0 + 86_400,
    );
    fx.clock.set(t0 + 86_400);
    fx.codes()
        .send(&phone_addr(&nth_phone(9)), Purpose::Register, v6)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_send_refused_by_the_ip_cap_charges_nothing_to_the_address() {
    let fx = fixture_with(
        CodePolicy {
            per_address_hour: 1,
            per_ip_hour: 1,
            ..CodePolicy::default()
        },
        None,
    );
    let a = phone_addr(&nth_phone(1));
    let b = phone_addr(&nth_phone(2));
    fx.codes().send(&a, Purpose::Register, ip(1)).await.unwrap();
    assert!(matches!(
        fx.codes().send(&b, Purpose::Register, ip(1)).await,
        Err(CoreError::RateLimited { .. })
    ));
    // b was neither charged (its hourly cap is 1) nor put in cooldown.
    fx.codes().send(&b, Purpose::Register, ip(2)).await.unwrap();
    assert_eq!(fx.sent().len(), 2);
}

// ----- failed checks per address ------------------------------------------------

#[tokio::test]
async fn twenty_failed_checks_lock_the_address_until_the_window_passes() {
    let fx = fixture();
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    let first = fx.last_code(PHONE);
    // Twenty failures: the first five are wrong tries, the rest hit a void code.
    for i in 0..20 {
        assert_code_invalid(fx.check_phone(Purpose::Register, &other_code(&first)).await);
        if i == 9 {
            fx.clock.advance(10);
        }
    }
    // A new code does not reset the count: the right new code is refused.
    fx.clock.advance(60);
    fx.send_phone(Purpose::Register).await.unwrap();
    let second = fx.last_code(PHONE);
    assert_checks_locked(
        fx.check_phone(Purpose::Register, &second).await,
        t0 + 86_400,
    );
    // Across purposes too.
    fx.send_phone(Purpose::Reset).await.unwrap();
    let reset = fx.last_code(PHONE);
    assert_checks_locked(fx.check_phone(Purpose::Reset, &reset).await, t0 + 86_400);
    // Refused checks neither count nor consume the code: still locked with the
    // same retry time right before the window passes.
    fx.clock.set(t0 + 86_399);
    assert_checks_locked(
        fx.check_phone(Purpose::Register, "000000").await,
        t0 + 86_400,
    );
    // The first ten failures left the window; checks work again.
    fx.clock.set(t0 + 86_400);
    fx.send_phone(Purpose::Register).await.unwrap();
    let third = fx.last_code(PHONE);
    fx.check_phone(Purpose::Register, &third).await.unwrap();
}

#[tokio::test]
async fn nineteen_failed_checks_do_not_lock() {
    let fx = fixture();
    for _ in 0..19 {
        assert_code_invalid(fx.check_phone(Purpose::Register, "000000").await);
    }
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    fx.check_phone(Purpose::Register, &code).await.unwrap();
    // The successful check does not reset the count: one more failure makes
    // twenty, and then checks are refused.
    let t_fail = fx.now();
    assert_code_invalid(fx.check_phone(Purpose::Register, "000000").await);
    assert!(matches!(
        fx.check_phone(Purpose::Register, "000000").await,
        Err(CoreError::CodeChecksLocked { retry_at }) if retry_at == t_fail + 86_400
    ));
}

#[tokio::test]
async fn failed_check_lock_is_per_address() {
    let fx = fixture();
    for _ in 0..20 {
        assert_code_invalid(fx.check_phone(Purpose::Register, "000000").await);
    }
    assert!(matches!(
        fx.check_phone(Purpose::Register, "000000").await,
        Err(CoreError::CodeChecksLocked { .. })
    ));
    let other = phone_addr("13900001111");
    fx.codes()
        .send(&other, Purpose::Register, None)
        .await
        .unwrap();
    let code = fx.last_code("13900001111");
    fx.codes()
        .check(&other, Purpose::Register, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_check_cap_is_configurable() {
    let fx = fixture_with(
        CodePolicy {
            failed_checks_max: 2,
            failed_checks_window_secs: 100,
            ..CodePolicy::default()
        },
        None,
    );
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    assert_code_invalid(fx.check_phone(Purpose::Register, "x").await);
    assert_code_invalid(fx.check_phone(Purpose::Register, "y").await);
    assert_checks_locked(fx.check_phone(Purpose::Register, &code).await, t0 + 100);
    fx.clock.advance(100);
    // The window passed; the code (valid 300 s, two wrong tries) still works.
    fx.check_phone(Purpose::Register, &code).await.unwrap();
}

// ----- phone spellings ----------------------------------------------------------

#[tokio::test]
async fn every_phone_spelling_shares_one_code_and_one_cooldown() {
    let fx = fixture();
    let t0 = fx.now();
    let spellings = ["+86 138-1111-2222", "008613811112222", "13811112222"];
    fx.codes()
        .send(&phone_addr(spellings[0]), Purpose::Register, None)
        .await
        .unwrap();
    assert_eq!(fx.sent()[0].to, PHONE);
    for s in &spellings {
        assert_cooldown(
            fx.codes()
                .send(&phone_addr(s), Purpose::Register, None)
                .await,
            t0 + 60,
        );
    }
    let code = fx.last_code(PHONE);
    fx.codes()
        .check(&phone_addr(spellings[1]), Purpose::Register, &code)
        .await
        .unwrap();
    // Used up for every spelling.
    for s in &spellings {
        assert_code_invalid(
            fx.codes()
                .check(&phone_addr(s), Purpose::Register, &code)
                .await,
        );
    }
    // Stored under the E.164 key.
    let key = CodeKey {
        address: PHONE_E164.into(),
        purpose: Purpose::Register,
    };
    assert!(fx.core.stores.codes.code(&key).await.unwrap().is_some());
}

#[tokio::test]
async fn every_phone_spelling_shares_the_caps() {
    let fx = fixture();
    let t0 = fx.now();
    let spellings = [
        "+86 138-1111-2222",
        "008613811112222",
        "13811112222",
        "8613811112222",
        "138 1111 2222",
    ];
    for s in &spellings {
        fx.codes()
            .send(&phone_addr(s), Purpose::Register, None)
            .await
            .unwrap();
        fx.clock.advance(60);
    }
    assert_rate_limited(
        fx.codes()
            .send(&phone_addr("+8613811112222"), Purpose::Register, None)
            .await,
        t0 + 3_600,
    );
    assert!(fx.sent().iter().all(|m| m.to == PHONE));
}

// ----- development code -----------------------------------------------------------

#[tokio::test]
async fn fixed_code_makes_every_code_that_value() {
    let fx = fixture_with(
        CodePolicy {
            fixed_code: Some("123456".into()),
            ..CodePolicy::default()
        },
        None,
    );
    for i in 0..3 {
        let addr = phone_addr(&nth_phone(i));
        fx.codes()
            .send(&addr, Purpose::Register, None)
            .await
            .unwrap();
        fx.codes().send(&addr, Purpose::Reset, None).await.unwrap();
    }
    fx.codes()
        .send(&email_addr("a@b.cn"), Purpose::BindEmail, None)
        .await
        .unwrap();
    let sent = fx.sent();
    assert_eq!(sent.len(), 7);
    assert!(sent.iter().all(|m| m.code.as_deref() == Some("123456")));
    // And the fixed code checks like any other: right once, then used.
    let addr = phone_addr(&nth_phone(0));
    assert_code_invalid(fx.codes().check(&addr, Purpose::Register, "654321").await);
    fx.codes()
        .check(&addr, Purpose::Register, "123456")
        .await
        .unwrap();
    assert_code_invalid(fx.codes().check(&addr, Purpose::Register, "123456").await);
}

// ----- at rest ------------------------------------------------------------------

#[tokio::test]
async fn codes_are_stored_as_keyed_hashes_not_in_clear() {
    let secret = [7u8; 32];
    let fx = fixture_with(CodePolicy::default(), Some(secret));
    let t0 = fx.now();
    fx.send_phone(Purpose::Register).await.unwrap();
    let code = fx.last_code(PHONE);
    let key = CodeKey {
        address: PHONE_E164.into(),
        purpose: Purpose::Register,
    };
    let rec = fx.core.stores.codes.code(&key).await.unwrap().unwrap();
    assert_eq!(rec.key, key);
    assert_eq!(rec.issued_at, t0);
    assert_eq!(rec.expires_at, t0 + 300);
    assert_eq!(rec.attempts, 0);
    assert!(!rec.used);

    let h = rec.hash.0;
    // No plain encoding of the code.
    let mut padded = [0u8; 32];
    padded[..6].copy_from_slice(code.as_bytes());
    assert_ne!(h, padded);
    assert!(
        !h.windows(6).any(|w| w == code.as_bytes()),
        "clear code bytes in hash"
    );
    let n: u32 = code.parse().unwrap();
    assert!(!h
        .windows(4)
        .any(|w| w == n.to_be_bytes() || w == n.to_le_bytes()));
    assert_ne!(h, <[u8; 32]>::from(Sha256::digest(code.as_bytes())));
    assert_ne!(
        h,
        <[u8; 32]>::from(Sha256::digest(format!("{}\0{code}", key.flat()).as_bytes()))
    );
    // Nothing in the serialised record or its Debug form shows the code.
    let json = serde_json::to_string(&rec).unwrap();
    assert!(!json.contains(&code), "{json}");
    assert!(!format!("{rec:?}").contains(&code));

    // It is the HMAC under the server secret, bound to address and purpose.
    assert_eq!(rec.hash, CodeHasher::new(secret).hash(&key.flat(), &code));
    assert_ne!(
        rec.hash,
        CodeHasher::new([8u8; 32]).hash(&key.flat(), &code)
    );
    assert_ne!(
        rec.hash,
        CodeHasher::new(secret).hash("reset|+8613811112222", &code)
    );
}

#[tokio::test]
async fn wrong_tries_and_use_are_recorded_on_the_stored_code() {
    let fx = fixture();
    fx.send_phone(Purpose::Reset).await.unwrap();
    let code = fx.last_code(PHONE);
    let key = CodeKey {
        address: PHONE_E164.into(),
        purpose: Purpose::Reset,
    };
    assert_code_invalid(fx.check_phone(Purpose::Reset, &other_code(&code)).await);
    assert_code_invalid(fx.check_phone(Purpose::Reset, &other_code(&code)).await);
    let rec = fx.core.stores.codes.code(&key).await.unwrap().unwrap();
    assert_eq!(rec.attempts, 2);
    assert!(!rec.used);
    fx.check_phone(Purpose::Reset, &code).await.unwrap();
    let rec = fx.core.stores.codes.code(&key).await.unwrap().unwrap();
    assert!(rec.used);
}

// ----- concurrency ------------------------------------------------------------

/// The in-memory limits behind a yield before every call, as a backend that
/// runs its work off the I/O threads (the sled store's `spawn_blocking`)
/// behaves. Each call on its own is still atomic.
#[derive(Debug)]
struct YieldingLimits(Arc<MemoryStore>);

#[async_trait::async_trait]
impl crate::store::LimitStore for YieldingLimits {
    async fn check(
        &self,
        checks: &[LimitCheck],
        now: i64,
        mode: crate::store::LimitMode,
    ) -> crate::store::StoreResult<LimitDecision> {
        tokio::task::yield_now().await;
        self.0.check(checks, now, mode).await
    }

    async fn record(&self, check: &LimitCheck, now: i64) -> crate::store::StoreResult<()> {
        tokio::task::yield_now().await;
        self.0.record(check, now).await
    }

    async fn reset(&self, key: &str) -> crate::store::StoreResult<()> {
        tokio::task::yield_now().await;
        self.0.reset(key).await
    }
}

/// The in-memory codes behind a yield before every call, like
/// [`YieldingLimits`].
#[derive(Debug)]
struct YieldingCodes(Arc<MemoryStore>);

#[async_trait::async_trait]
impl crate::store::CodeStore for YieldingCodes {
    async fn decide_code(
        &self,
        decision: crate::code_decision::CodeDecision,
    ) -> crate::store::StoreResult<crate::code_decision::CodeVerdict> {
        tokio::task::yield_now().await;
        self.0.decide_code(decision).await
    }

    async fn code(&self, key: &CodeKey) -> crate::store::StoreResult<Option<CodeRecord>> {
        tokio::task::yield_now().await;
        self.0.code(key).await
    }
}

fn yielding_fixture() -> Fx {
    let mem = Arc::new(MemoryStore::new());
    let mut stores = Stores::from_single(mem.clone());
    stores.limits = Arc::new(YieldingLimits(mem.clone()));
    stores.codes = Arc::new(YieldingCodes(mem));
    fixture_over(stores, CodePolicy::default(), None)
}

#[tokio::test]
async fn yielding_limits_keep_the_sequential_rules() {
    // The wrapper itself is sound: sequential use behaves as in memory.
    let fx = yielding_fixture();
    for _ in 0..20 {
        assert_code_invalid(fx.check_phone(Purpose::Register, "000000").await);
    }
    assert!(matches!(
        fx.check_phone(Purpose::Register, "000000").await,
        Err(CoreError::CodeChecksLocked { .. })
    ));
}

#[tokio::test]
async fn concurrent_failed_checks_never_exceed_twenty() {
    let fx = yielding_fixture();
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let codes = fx.core.codes.clone();
        tasks.push(tokio::spawn(async move {
            codes
                .check(&phone_addr(PHONE), Purpose::Register, "000000")
                .await
        }));
    }
    let mut evaluated = 0;
    for t in tasks {
        match t.await.unwrap() {
            Err(CoreError::CodeInvalid) => evaluated += 1,
            Err(CoreError::CodeChecksLocked { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        evaluated <= 20,
        "{evaluated} concurrent failed checks were evaluated; G7 allows 20"
    );
}

// ----- SMS-pumping breaker ----------------------------------------------------

fn pumping_fixture() -> (Core, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(Arc::new(RecordingSender::new()))
        .clock(clock.clone())
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .code_policy(CodePolicy {
            fixed_code: Some("123456".into()),
            // A smaller burst than the default, to keep the tests short.
            pump_min_sends: 30,
            ..CodePolicy::default()
        })
        .build()
        .expect("test core");
    (core, clock)
}

fn addr_in_prefix(prefix: &str, n: u32) -> CodeAddress {
    CodeAddress::Phone(PhoneNumber::parse_cn_mobile(&format!("{prefix}{n:04}")).unwrap())
}

#[tokio::test]
async fn pumping_burst_without_checks_trips_the_prefix_breaker() {
    let (core, clock) = pumping_fixture();
    // 29 sends to distinct numbers of one prefix: each number is within its
    // own caps, so only the breaker can stop this.
    for n in 0..29 {
        core.codes
            .send(&addr_in_prefix("1381111", n), Purpose::Register, None)
            .await
            .unwrap();
    }
    // The 30th send completes the burst with no successful check: tripped.
    let r = core
        .codes
        .send(&addr_in_prefix("1381111", 29), Purpose::Register, None)
        .await;
    assert!(matches!(r, Err(CoreError::RateLimited { .. })), "{r:?}");
    let r = core
        .codes
        .send(&addr_in_prefix("1381111", 30), Purpose::Register, None)
        .await;
    assert!(
        matches!(r, Err(CoreError::RateLimited { retry_at }) if retry_at == clock.unix() + 3_600)
    );
    // Other prefixes are unaffected.
    core.codes
        .send(&addr_in_prefix("1381112", 0), Purpose::Register, None)
        .await
        .unwrap();
    // The breaker closes after its time.
    clock.advance(3_600);
    core.codes
        .send(&addr_in_prefix("1381111", 31), Purpose::Register, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn pumping_breaker_spares_prefixes_whose_codes_are_used() {
    let (core, _clock) = pumping_fixture();
    for n in 0..40 {
        let a = addr_in_prefix("1391111", n);
        core.codes.send(&a, Purpose::Register, None).await.unwrap();
        if n % 5 == 0 {
            core.codes
                .check(&a, Purpose::Register, "123456")
                .await
                .unwrap();
        }
    }
}

// ----- delivery failures (mockall, feature `mock`) ---------------------------

#[cfg(feature = "mock")]
#[tokio::test]
async fn a_sender_failure_is_a_delivery_error_and_counts_against_the_cooldown() {
    use crate::sender::{MockCodeSender, SendError};
    let mut sender = MockCodeSender::new();
    sender.expect_send().times(1).returning(|m| {
        assert_eq!(m.to, "13811112222");
        Err(SendError("carrier down".into()))
    });
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(Arc::new(sender))
        .clock(Arc::new(ManualClock::default()))
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .build()
        .expect("test core");
    let addr = CodeAddress::Phone(PhoneNumber::parse_cn_mobile("13811112222").unwrap());
    let r = core.codes.send(&addr, Purpose::Register, None).await;
    assert!(
        matches!(r, Err(CoreError::Delivery(ref m)) if m == "carrier down"),
        "{r:?}"
    );
    assert!(CoreError::Delivery(String::new()).is_internal());
    // The attempt still counts against the resend cooldown (no free retries
    // that would let a caller hammer the carrier).
    assert!(matches!(
        core.codes.send(&addr, Purpose::Register, None).await,
        Err(CoreError::CodeCooldown { .. })
    ));
}

#[tokio::test]
async fn custom_purposes_get_codes_under_the_same_rules_and_their_own_text() {
    let sender = Arc::new(RecordingSender::new());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(sender.clone())
        .clock(Arc::new(ManualClock::default()))
        .code_policy(CodePolicy {
            messages: crate::messages::CodeMessages::en_us()
                .with_custom("login", "Login code {code}"),
            ..CodePolicy::default()
        })
        .build()
        .expect("test core");
    let to = CodeAddress::Phone(PhoneNumber::parse_cn_mobile("13811112222").unwrap());
    let login = Purpose::custom("login").unwrap();
    core.codes.send(&to, login, None).await.unwrap();
    let m = sender.messages().pop().unwrap();
    let code = m.code.clone().unwrap();
    assert_eq!(m.text, format!("Login code {code}"));
    // Its own cooldown, and its code proves nothing for another purpose.
    assert!(matches!(
        core.codes.send(&to, login, None).await,
        Err(CoreError::CodeCooldown { .. })
    ));
    assert!(core
        .codes
        .check(&to, Purpose::Register, &code)
        .await
        .is_err());
    core.codes.check(&to, login, &code).await.unwrap();
    // The per-address caps count every purpose together (5 an hour).
    for name in ["a2fa", "b2fa", "c2fa", "d2fa"] {
        core.codes
            .send(&to, Purpose::custom(name).unwrap(), None)
            .await
            .unwrap();
    }
    assert!(matches!(
        core.codes
            .send(&to, Purpose::custom("e2fa").unwrap(), None)
            .await,
        Err(CoreError::RateLimited { .. })
    ));
    assert!(Purpose::custom("reset").is_err());
    assert!(Purpose::custom("Login").is_err());
}
