//! Verification codes (decision G7): issue and check per (address, purpose)
//! with expiry, attempts, resend cooldown, hourly and daily caps per address
//! and per client IP, and a cap on failed checks per address.

use std::net::IpAddr;
use std::sync::Arc;

use crate::clock::Clock;
use crate::error::CoreError;
use crate::identity::Email;
use crate::limits::{ip_limit_key, LimitCheck, LimitDecision, LimitRule, DEFAULT_IPV6_PREFIX_LEN};
use crate::phone::PhoneNumber;
use crate::random::{random_digits, RandomSource};
use crate::secret::CodeHasher;
use crate::sender::{Channel, CodeSender, OutboundMessage};
pub use crate::store::Purpose;
use crate::store::{CodeKey, CodeRecord, RedeemOutcome, ReplaceOutcome, Stores};

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

    fn pump_checks(&self, prefix: &str) -> [LimitCheck; 3] {
        let p = &self.policy;
        let needed =
            (u64::from(p.pump_min_sends) * u64::from(p.pump_min_success_pct)).div_ceil(100);
        [
            LimitCheck::new(
                format!("pump:trip:{prefix}"),
                LimitRule::per(1, p.pump_trip_secs).with_lockout(p.pump_trip_secs),
            ),
            LimitCheck::new(
                format!("pump:sent:{prefix}"),
                LimitRule::per(p.pump_min_sends, p.pump_window_secs),
            ),
            LimitCheck::new(
                format!("pump:ok:{prefix}"),
                LimitRule::per(needed.max(1) as u32, p.pump_window_secs),
            ),
        ]
    }

    /// The breaker for `prefix` is open (sends refused) until the returned
    /// time, if it is.
    async fn pump_open_until(&self, prefix: &str, now: i64) -> Result<Option<i64>, CoreError> {
        let [trip, _, _] = self.pump_checks(prefix);
        Ok(
            match self
                .stores
                .limits
                .peek(std::slice::from_ref(&trip), now)
                .await?
            {
                LimitDecision::Denied { retry_at, .. } => Some(retry_at),
                LimitDecision::Allowed => None,
            },
        )
    }

    /// Counts a send to `prefix`; trips the breaker when the prefix had a
    /// burst of sends with few successful checks. Returns true if it tripped.
    async fn pump_count_send(&self, prefix: &str, now: i64) -> Result<bool, CoreError> {
        let [trip, sent, ok] = self.pump_checks(prefix);
        let limits = &self.stores.limits;
        limits.record(&sent, now).await?;
        let burst = !limits
            .peek(std::slice::from_ref(&sent), now)
            .await?
            .is_allowed();
        let confirmed = !limits
            .peek(std::slice::from_ref(&ok), now)
            .await?
            .is_allowed();
        if burst && !confirmed {
            limits.record(&trip, now).await?;
            tracing::warn!(prefix, "SMS-pumping breaker tripped");
            return Ok(true);
        }
        Ok(false)
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
    pub async fn send(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
        client_ip: Option<IpAddr>,
    ) -> Result<Issued, CoreError> {
        if let Some(retry_at) = self.cooldown_until(address, purpose).await? {
            return Err(CoreError::CodeCooldown { retry_at });
        }
        let now = self.clock.unix();
        let prefix = self.pump_prefix(address);
        if let Some(prefix) = &prefix {
            if let Some(retry_at) = self.pump_open_until(prefix, now).await? {
                return Err(CoreError::RateLimited { retry_at });
            }
        }
        if let LimitDecision::Denied { retry_at, .. } = self
            .stores
            .limits
            .acquire(&self.send_checks(address, client_ip), now)
            .await?
        {
            return Err(CoreError::RateLimited { retry_at });
        }
        if let Some(prefix) = &prefix {
            if self.pump_count_send(prefix, now).await? {
                return Err(CoreError::RateLimited {
                    retry_at: now.saturating_add(self.policy.pump_trip_secs),
                });
            }
        }
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
        if let ReplaceOutcome::Cooldown { retry_at } = self
            .stores
            .codes
            .replace_code(record, self.policy.cooldown_secs)
            .await?
        {
            return Err(CoreError::CodeCooldown { retry_at });
        }
        let message = OutboundMessage {
            channel: address.channel(),
            to: address.wire(),
            text: message_text(purpose, &code, self.policy.ttl_secs),
            code: Some(code),
            purpose: Some(purpose),
            at: self.clock.now(),
        };
        self.sender
            .send(&message)
            .await
            .map_err(|e| CoreError::Delivery(e.0))?;
        tracing::info!(purpose = purpose.as_str(), channel = ?address.channel(), "verification code issued");
        Ok(Issued {
            issued_at: now,
            expires_at,
            again_at: now.saturating_add(self.policy.cooldown_secs),
        })
    }

    /// Checks a presented code. On success the code is used up. Every failure
    /// counts against the address; past the cap, checks are refused with
    /// [`CoreError::CodeChecksLocked`] until the window passes.
    pub async fn check(
        &self,
        address: &CodeAddress,
        purpose: Purpose,
        presented: &str,
    ) -> Result<(), CoreError> {
        let now = self.clock.unix();
        let fail = self.failed_check(address);
        // Count the check as failed up front (atomically, so concurrent
        // guesses cannot overrun the cap) and take it back on success.
        if let LimitDecision::Denied { retry_at, .. } = self
            .stores
            .limits
            .acquire(std::slice::from_ref(&fail), now)
            .await?
        {
            return Err(CoreError::CodeChecksLocked { retry_at });
        }
        let key = CodeKey {
            address: address.key().to_owned(),
            purpose,
        };
        // Bound the work on hostile input; an over-long code is simply wrong.
        let presented = if presented.len() > 64 { "" } else { presented };
        let hash = self.hasher.hash(&key.flat(), presented);
        let outcome = self
            .stores
            .codes
            .redeem_code(&key, &hash, now, self.policy.max_attempts)
            .await?;
        if outcome == RedeemOutcome::Redeemed {
            self.stores.limits.unrecord(&fail, now).await?;
            if let Some(prefix) = self.pump_prefix(address) {
                let [_, _, ok] = self.pump_checks(&prefix);
                self.stores.limits.record(&ok, now).await?;
            }
            return Ok(());
        }
        Err(CoreError::CodeInvalid)
    }
}

fn message_text(purpose: Purpose, code: &str, ttl_secs: i64) -> String {
    let what = match purpose {
        Purpose::Signup | Purpose::Register => "注册",
        Purpose::Reset => "找回密码",
        Purpose::BindEmail => "绑定邮箱",
    };
    format!(
        "您的{what}验证码是 {code}，{} 分钟内有效，请勿泄露给他人。",
        ttl_secs / 60
    )
}

#[cfg(test)]
#[path = "codes_tests.rs"]
mod tests;
