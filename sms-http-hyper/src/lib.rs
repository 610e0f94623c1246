//! # sms-http-hyper
//!
//! The HTTP front end of the SMS platform on hyper 1.x: the `hub`,
//! `telsignup`, `account_v4`, `sendapi` and `pool` dialects and the root
//! routes over one [`sms_core::Core`].
//!
//! * [`SmsService`] is a `tower_service::Service<http::Request<B>>` for any
//!   body `B` (`Error = Infallible`, `Clone + Send + Sync`): mount it in axum
//!   with `nest_service`/`fallback_service`, or in raw hyper through
//!   `hyper_util::service::TowerToHyperService`.
//! * [`serve`] runs it on a listener with hyper-util's auto (HTTP/1 + HTTP/2)
//!   builder, a header-read timeout, a connection cap and graceful shutdown.
//!
//! Each dialect lives in its own module ([`hub`], [`telsignup`],
//! [`account_v4`], [`sendapi`], [`pool`]; the root routes in [`admin`])
//! holding its wire shapes and the one exhaustive `match` that maps
//! [`sms_core::CoreError`] to its seed's codes. Below them, importing no
//! dialect: [`params`], [`response`], [`basic_auth`], [`json_api`].
//!
//! ## Usage
//!
//! ```no_run
//! use std::sync::Arc;
//! use sms_core::prelude::*;
//! use sms_http_hyper::{serve, HttpConfig, ServerConfig, SmsService};
//!
//! # async fn run() -> std::io::Result<()> {
//! # let (secret, carrier) = ([7u8; 32], Arc::new(RecordingGateway::new()));
//! let core = Core::builder(
//!     Stores::from_single(Arc::new(MemoryStore::new())),
//!     Arc::new(RecordingSender::new()),
//! )
//! .code_secret(secret) // stable across restarts, shared by every node
//! .gateway(carrier) // where send tasks go
//! .build()
//! .expect("secret and carrier given");
//! let service = SmsService::new(core, HttpConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! serve(listener, service, ServerConfig::default(), std::future::pending()).await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod account_v4;
pub mod admin;
pub mod basic_auth;
pub mod client_addr;
pub mod hub;
pub mod idle;
pub mod json_api;
pub mod metrics;
pub mod openapi;
pub mod params;
pub mod pool;
pub mod pool_auth;
pub mod response;
pub mod sendapi;
pub mod server;
pub mod service;
pub mod telsignup;

pub use client_addr::{client_ip_of, ClientAddr, ClientIp, ClientIpLayer, TrustedProxies};
pub use metrics::{ObserveLayer, RequestId};
pub use pool_auth::PoolAuth;
pub use server::{serve, ServerConfig};
pub use service::{Dialect, HttpBody, HttpConfig, SmsService};
