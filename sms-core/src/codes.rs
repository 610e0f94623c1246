//! Verification codes (decision G7): issue and check per (address, purpose)
//! with expiry, attempts, resend cooldown, hourly and daily caps per address
//! and per client IP, and a cap on failed checks per address.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::Clock;
use crate::code_decision::{
    CheckCode, CheckOutcome, CodeDecision, CodeVerdict, IssueCode, IssueOutcome, PumpChecks,
};
use crate::error::CoreError;
use crate::error::StoreError;
use crate::identity::Email;
use crate::limits::{ip_limit_key, LimitCheck, LimitRule, DEFAULT_IPV6_PREFIX_LEN};
use crate::metrics::{self, Limit};
use crate::phone::PhoneNumber;
use crate::random::{random_digits, RandomSource};
use crate::secret::CodeHasher;
use crate::sender::{Channel, CodeSender, OutboundMessage};
pub use crate::store::Purpose;
use crate::store::{CodeKey, CodeRecord, Grant, RedeemOutcome, Stores};

/// Where a code goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeAddress {
    /// By SMS.
    Phone(PhoneNumber),
    /// By email.
    Email(Email),
}

impl CodeAddress {
    /// The normalised key form (E.164 or lowercased email).
    pub fn key(&self) -> &str {
        match self {
            Self::Phone(p) => p.as_e164(),
            Self::Email(e) => e.as_str(),
        }
    }

    /// The form written in the outbox's `to`.
    pub fn wire(&self) -> String {
        match self {
            Self::Phone(p) => p.to_string(),
            Self::Email(e) => e.to_string(),
        }
    }

    /// The channel it travels on.
    pub fn channel(&self) -> Channel {
        match self {
            Self::Phone(_) => Channel::Sms,
            Self::Email(_) => Channel::Email,
        }
    }
}

/// The rules of G7; every number is configuration with these defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodePolicy {
    /// Digits in a code (6).
    pub digits: u32,
    /// Validity (300 s).
    pub ttl_secs: i64,
    /// Wrong tries before a code is void (5).
    pub max_attempts: u32,
    /// Resend cooldown per (address, purpose) (60 s).
    pub cooldown_secs: i64,
    /// Sends per address per hour (5).
    pub per_address_hour: u32,
    /// Sends per address per day (10).
    pub per_address_day: u32,
    /// Sends per client IP per hour (300).
    pub per_ip_hour: u32,
    /// Sends per client IP per day (2,000).
    pub per_ip_day: u32,
    /// Failed checks per address before checks are refused (20) …
    pub failed_checks_max: u32,
    /// … within this window (24 h).
    pub failed_checks_window_secs: i64,
    /// SMS-pumping breaker: numbers sharing this many leading national
    /// digits are one prefix (7: `1381111…`).
    pub pump_prefix_digits: usize,
    /// … within this window (1 h) …
    pub pump_window_secs: i64,
    /// … once this many codes went to one prefix (500: above what one client
    /// IP may send in that hour, 300, so the breaker never stands in for the
    /// per-IP caps and trips only on traffic spread over many addresses,
    /// which those caps cannot stop) …
    pub pump_min_sends: u32,
    /// … while fewer than this share of them (percent, 10) were checked
    /// successfully …
    pub pump_min_success_pct: u32,
    /// … sends to the prefix are refused for this long (1 h).
    pub pump_trip_secs: i64,
    /// Development only: every code is this value (`--dev-code`).
    pub fixed_code: Option<String>,
    /// The texts of code messages (zh-CN by default; en-US ships).
    pub messages: crate::messages::CodeMessages,
    /// IPv6 clients are counted by their network of this many bits (64);
    /// see [`ip_limit_key`].
    pub ipv6_prefix_len: u8,
}

impl Default for CodePolicy {
    fn default() -> Self {
        Self {
            digits: 6,
            ttl_secs: 300,
            max_attempts: 5,
            cooldown_secs: 60,
            per_address_hour: 5,
            per_address_day: 10,
            per_ip_hour: 300,
            per_ip_day: 2_000,
            failed_checks_max: 20,
            failed_checks_window_secs: 86_400,
            pump_prefix_digits: 7,
            pump_window_secs: 3_600,
            pump_min_sends: 500,
            pump_min_success_pct: 10,
            pump_trip_secs: 3_600,
            fixed_code: None,
            messages: crate::messages::CodeMessages::default(),
            ipv6_prefix_len: DEFAULT_IPV6_PREFIX_LEN,
        }
    }
}

/// A code was issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    /// When (Unix s).
    pub issued_at: i64,
    /// Valid until (Unix s).
    pub expires_at: i64,
    /// When a new code may be requested (Unix s): `againTimestamp`.
    pub again_at: i64,
}

/// Issues and checks codes.
#[derive(Debug, Clone)]
pub struct CodeService {
    stores: Stores,
    sender: Arc<dyn CodeSender>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    hasher: CodeHasher,
    policy: CodePolicy,
}

impl CodeService {
    /// A code service over the given ports.
    pub fn new(
        stores: Stores,
        sender: Arc<dyn CodeSender>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        hasher: CodeHasher,
        policy: CodePolicy,
    ) -> Self {
        Self {
            stores,
            sender,
            clock,
            rng,
            hasher,
            policy,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &CodePolicy {
        &self.policy
    }

    fn send_checks(&self, address: &CodeAddress, ip: Option<IpAddr>) -> Vec<LimitCheck> {
        let p = &self.policy;
        let a = address.key();
        let mut checks = vec![
            LimitCheck::new(
                format!("code:addr:h:{a}"),
                LimitRule::per(p.per_address_hour, 3_600),
            ),
            LimitCheck::new(
                format!("code:addr:d:{a}"),
                LimitRule::per(p.per_address_day, 86_400),
            ),
        ];
        if let Some(ip) = ip {
            let ip = ip_limit_key(ip, p.ipv6_prefix_len);
            checks.push(LimitCheck::new(
                format!("code:ip:h:{ip}"),
                LimitRule::per(p.per_ip_hour, 3_600),
            ));
            checks.push(LimitCheck::new(
                format!("code:ip:d:{ip}"),
                LimitRule::per(p.per_ip_day, 86_400),
            ));
        }
        checks
    }

    /// The SMS-pumping prefix of an address (phones only).
    fn pump_prefix(&self, address: &CodeAddress) -> Option<String> {
        match address {
            CodeAddress::Phone(p) => {
                let digits = p.cn_national().unwrap_or(p.as_e164());
                let n = self.policy.pump_prefix_digits.min(digits.len());
                Some(digits[..n].to_owned())
            }
            CodeAddress::Email(_) => None,
        }
    }

    fn pump_checks(&self, prefix: &str) -> PumpChecks {
        let p = &self.policy;
        PumpChecks {
            trip: LimitCheck::new(
                format!("pump:trip:{prefix}"),
                LimitRule::per(1, p.pump_trip_secs).with_lockout(p.pump_trip_secs),
            ),
            sent: LimitCheck::new(
                format!("pump:sent:{prefix}"),
                LimitRule::per(p.pump_min_sends, p.pump_window_secs),
            ),
            ok: self.pump_ok_check(prefix),
        }
    }

    /// The breaker's count of successful checks in the prefix (all a check
    /// needs of the breaker).
    fn pump_ok_check(&self, prefix: &str) -> LimitCheck {
        let p = &self.policy;
        let needed =
            (u64::from(p.pump_min_sends) * u64::from(p.pump_min_success_pct)).div_ceil(100);
        LimitCheck::new(
            format!("pump:ok:{prefix}"),
            LimitRule::per(needed.max(1) as u32, p.pump_window_secs),
        )
    }

    fn failed_check(&self, address: &CodeAddress) -> LimitCheck {
        LimitCheck::new(
            format!("code:fail:{}", address.key()),
            LimitRule::per(
                self.policy.failed_checks_max,
                self.policy.failed_checks_window_secs,
            ),
        )
    }

    /// When a new code for (address, purpose) may be sent, if the cooldown
    /// is running.
    pub async fn cooldown_until(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
    ) -> Result<Option<i64>, CoreError> {
        let key = CodeKey {
            address: address.key().to_owned(),
            purpose,
        };
        let now = self.clock.unix();
        Ok(self
            .stores
            .codes
            .code(&key)
            .await?
            .map(|r| r.issued_at.saturating_add(self.policy.cooldown_secs))
            .filter(|&until| until > now))
    }

    /// Issues a new code and hands it to the sender. Checks, in order: the
    /// resend cooldown ([`CoreError::CodeCooldown`]), the SMS-pumping breaker
    /// of the number's prefix, then the caps per address and per client IP
    /// ([`CoreError::RateLimited`] for both). A burst of sends to one prefix
    /// with few successful checks trips the breaker for
    /// [`CodePolicy::pump_trip_secs`].
    ///
    /// All of it is one store call ([`CodeDecision::Issue`]): a refused send
    /// counts against no cap, and of concurrent sends to one address one
    /// issues a code.
    pub async fn send(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        let now = self.clock.unix();
        let code = match &self.policy.fixed_code {
            Some(c) => c.clone(),
            None => random_digits(self.rng.as_ref(), self.policy.digits),
        };
        let key = CodeKey {
            address: address.key().to_owned(),
            purpose,
        };
        let record = CodeRecord {
            hash: self.hasher.hash(&key.flat(), &code),
            key,
            issued_at: now,
            expires_at: now.saturating_add(self.policy.ttl_secs),
            attempts: 0,
            used: false,
        };
        let expires_at = record.expires_at;
        let decision = CodeDecision::Issue(IssueCode {
            record,
            cooldown_secs: self.policy.cooldown_secs,
            caps: self.send_checks(address, client_ip),
            pump: self.pump_prefix(address).map(|p| self.pump_checks(&p)),
        });
        match self.stores.codes.decide_code(decision).await? {
            CodeVerdict::Issue(IssueOutcome::Issued) => {}
            CodeVerdict::Issue(IssueOutcome::Cooldown { retry_at }) => {
                metrics::limit_refused(Limit::CodeCooldown);
                return Err(CoreError::CodeCooldown { retry_at });
            }
            CodeVerdict::Issue(IssueOutcome::Limited { retry_at }) => {
                metrics::limit_refused(Limit::CodeSendCap);
                return Err(CoreError::RateLimited { retry_at });
            }
            CodeVerdict::Issue(IssueOutcome::Tripped { retry_at }) => {
                metrics::limit_refused(Limit::PumpBreaker);
                tracing::warn!(
                    prefix = self.pump_prefix(address).as_deref(),
                    "SMS-pumping breaker tripped"
                );
                return Err(CoreError::RateLimited { retry_at });
            }
            CodeVerdict::Check(_) => return Err(mismatched_verdict()),
        }
        let message = OutboundMessage {
            channel: address.channel(),
            to: address.wire(),
            text: self
                .policy
                .messages
                .render(purpose, &code, self.policy.ttl_secs / 60),
            code: Some(code),
            purpose: Some(purpose),
            at: self.clock.now(),
        };
        self.sender
            .send(&message)
            .await
            .map_err(|e| CoreError::Delivery(e.0))?;
        tracing::info!(purpose = purpose.as_str(), channel = ?address.channel(), "verification code issued");
        ::metrics::counter!(metrics::CODES_ISSUED, "purpose" => purpose.as_str().to_owned())
            .increment(1);
        Ok(Issued {
            issued_at: now,
            expires_at,
            again_at: now.saturating_add(self.policy.cooldown_secs),
        })
    }

    /// Checks a presented code. On success the code is used up. Every failure
    /// counts against the address; past the cap, checks are refused with
    /// [`CoreError::CodeChecksLocked`] until the window passes.
    ///
    /// One store call ([`CodeDecision::Check`]): concurrent guesses cannot
    /// overrun the cap.
    pub async fn check(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
        presented: &str,
    ) -> Result<(), CoreError> {
        self.check_granting(address, purpose, presented, None).await
    }

    /// Like [`check`](Self::check); a success also stores `grant`, in the
    /// same store call.
    pub async fn check_granting(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
        presented: &str,
        grant: Option<Grant>,
    ) -> Result<(), CoreError> {
        let now = self.clock.unix();
        let key = CodeKey {
            address: address.key().to_owned(),
            purpose,
        };
        // Bound the work on hostile input; an over-long code is simply wrong.
        let presented = if presented.len() > 64 { "" } else { presented };
        let decision = CodeDecision::Check(CheckCode {
            presented: self.hasher.hash(&key.flat(), presented),
            key,
            now,
            max_attempts: self.policy.max_attempts,
            failures: self.failed_check(address),
            pump_ok: self.pump_prefix(address).map(|p| self.pump_ok_check(&p)),
            grant,
        });
        let (outcome, result) = match self.stores.codes.decide_code(decision).await? {
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed)) => ("ok", Ok(())),
            CodeVerdict::Check(CheckOutcome::Locked { retry_at }) => {
                metrics::limit_refused(Limit::CodeCheckLock);
                ("locked", Err(CoreError::CodeChecksLocked { retry_at }))
            }
            CodeVerdict::Check(CheckOutcome::Presented(_)) => {
                ("invalid", Err(CoreError::CodeInvalid))
            }
            CodeVerdict::Issue(_) => return Err(mismatched_verdict()),
        };
        ::metrics::counter!(
            metrics::CODES_CHECKED,
            "purpose" => purpose.as_str().to_owned(),
            "outcome" => outcome
        )
        .increment(1);
        result
    }
}

/// A store answered a decision with the verdict of another kind.
fn mismatched_verdict() -> CoreError {
    CoreError::Store(StoreError::backend(MismatchedVerdict))
}

#[derive(Debug, thiserror::Error)]
#[error("the store answered a code decision with a verdict of another kind")]
struct MismatchedVerdict;

#[cfg(test)]
#[path = "codes_tests.rs"]
mod tests;
