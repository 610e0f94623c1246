//! # sms-carriers
//!
//! The carriers through which the platform's messages leave: each one
//! implements [`sms_core::carrier::Carrier`].
//!
//! | kind | module | feature |
//! |---|---|---|
//! | Alibaba Cloud SMS (`SendSms`, RPC or V3 signature) | [`aliyun`] | `aliyun` |
//! | Tencent Cloud SMS (`SendSms` 2021-01-11, TC3) | [`tencent`] | `tencent` |
//! | Twilio Messaging (`Messages.json`, `StatusCallback`) | [`twilio`] | `twilio` |
//! | SMPP 3.4 (`bind_transceiver`, `submit_sm`, receipts) | [`smpp`] | `smpp` |
//! | email over SMTP (lettre) | [`smtp`] | `smtp` |
//!
//! Every feature is on by default. The HTTP providers share one client
//! ([`http::HttpClient`]: reqwest, rustls with the webpki roots, timeouts).
//!
//! Always present: [`config`] (the `--carriers` file of carriers.md C1),
//! [`sign`] (the providers' request signatures, pinned by their documented
//! examples), [`receipts`] (every provider's delivery receipts normalised
//! to one status set), [`resilient`] (retries with backoff and jitter, a
//! rate limit and a circuit breaker around each carrier) and [`build`]
//! (carriers from a parsed file).
#![deny(missing_docs)]

pub mod build;
pub mod config;
pub mod receipts;
pub mod resilient;
pub mod sign;

#[cfg(feature = "http")]
pub mod http;

#[cfg(feature = "aliyun")]
pub mod aliyun;
#[cfg(feature = "smpp")]
pub mod segment;
#[cfg(feature = "smpp")]
pub mod smpp;
#[cfg(feature = "smtp")]
pub mod smtp;
#[cfg(feature = "tencent")]
pub mod tencent;
#[cfg(feature = "twilio")]
pub mod twilio;
