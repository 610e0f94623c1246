//! # sms-ws-tungstenite
//!
//! The `hub` WebSocket protocol (seed 000, `GET /ws`) over [`sms_core`], on
//! tokio-tungstenite, sharing the HTTP server's port.
//!
//! ## Overview
//!
//! * [`HubWs`] is the whole front end: cheap to clone, it validates the
//!   opening handshake ([`HubWs::upgrade`]), answers `101` at once and serves
//!   the upgraded connection in a task of its own; [`HubWs::shutdown`] kicks
//!   every live session out (`PushKickout` state 1) for a graceful stop.
//! * [`WsConfig`] holds the limits and timers: message and frame size, small
//!   per-connection buffers, a bounded outbound queue, ping interval, idle
//!   timeout, bad-frame limit.
//! * [`protocol`] holds the wire shapes and the mapping of
//!   [`sms_core::CoreError`] to each message's codes.
//!
//! Each connection is one task with one select loop over the socket (reads
//! and writes driven together), the user's event subscription
//! ([`sms_core::events::EventHub`]), a ping timer, an idle deadline and the
//! shutdown signal. Received SMS wait in the user's mailbox
//! ([`sms_core::pool_service::PoolService::mailbox`]) and are acknowledged
//! only once the frame carrying them has been flushed to the socket, so a
//! push is never lost to a dropped connection (it may, rarely, arrive twice).
//!
//! ## Frame format
//!
//! Every frame is a text frame holding one JSON object whose `protocol`
//! field names the message; its other fields are the message's parameters as
//! the seed names them:
//!
//! ```text
//! → {"protocol":"CSLogin","token":"9f2c…","gps":"…"}
//! ← {"protocol":"SCLogin","code":0,"data":{"userInfo":{"user":"alice","email":"","point":0,"balance":0},"flag":3}}
//! → {"protocol":"CSMobileNum","itemId":"com.yy.huanju","count":2}
//! ← {"protocol":"SCMobileNum","code":0}
//! ← {"protocol":"PushMobileNum","mobileNum":"13811112222","useTimestamp":1700001200}
//! ← {"protocol":"PushMobileNum","mobileNum":"13811113333","useTimestamp":1700001200}
//! ← {"protocol":"PushRecvMsg","mobileNum":"13811112222","msg":"【欢聚】验证码482913"}
//! ```
//!
//! | client → server | answer | codes |
//! |---|---|---|
//! | `CSLogin {token, gps}` | `SCLogin {code, data:{userInfo:{user,email,point,balance}, flag}}` | -1 token invalid or expired; `flag` 1 normal, 2 renewed after expiry, 3 first use of a sign-up token, 4 first use of a password-change token |
//! | `CSLogout {}` | `SCLogout {code}` | 0; the token is revoked, the connection stays open, logged out |
//! | `CSModifyPwd {token, password}` | `SCModifyPwd {code, token}` | -1 token, -2 length, -3 empty, -4 characters; every other session of the user gets `PushKickout` 2 |
//! | `CSMobileNum {itemId, count, area?, operator?, customNum?}` | `SCMobileNum {code}`, then `PushMobileNum {mobileNum, useTimestamp}` per number | -1 item, -2 count (1–20), -3 area, -4 operator, -5 custom number, -6 balance, -7 no number |
//! | `CSSendMsg {itemId, mobileNum, msg}` | `SCSendMsg {code}` | -1 item, -2 number not leased, -3 longer than 500, -4 empty, -5 balance |
//! | `CSBindEmailGetVCode {email}` | `SCBindEmailGetVCode {code, againTimestamp}` | -1 format, -3 bound to another user, -4 too soon (with `againTimestamp`) |
//! | `CSBindEmailCheckVCode {email, vCode}` | `SCBindEmailCheckVCode {code}` | -1 format, -2 wrong code, -3 bound to another user |
//!
//! Pushes: `PushRecvMsg {mobileNum, msg}` for every SMS reaching a number
//! the user leases (waiting in the mailbox while the user is offline);
//! `PushKickout {state}` before the server closes a session: 1 shutdown, 2
//! password changed elsewhere, 3 banned.
//!
//! Faults: `{"protocol":"SCError","code":C,"msg":"…"}` with C =
//! [`protocol::NOT_LOGGED_IN`] (-100, a request before `CSLogin`),
//! [`protocol::UNKNOWN_PROTOCOL`] (-101, no string `protocol` or an unknown
//! one) or [`protocol::NOT_AN_OBJECT`] (-102, not a JSON object, binary
//! frames included). The connection stays open; more than
//! [`WsConfig::bad_frame_limit`] frames answered -101/-102 within
//! [`WsConfig::bad_frame_window`] close it (close code 1008). A failure of
//! the platform itself answers the request's `S…` message with code
//! [`protocol::INTERNAL`] (-99) and is logged.
//!
//! Details the seed leaves open:
//!
//! * Optional fields (`area`, `operator`, `customNum`) that are `null` count
//!   as absent. `customNum`, `mobileNum` and `vCode` may also be sent as JSON
//!   integers; `count` as an integer or a string of digits.
//! * A `CSLogin` on a connection that is already logged in replaces the login
//!   when it succeeds and leaves it in place when it fails.
//! * `CSModifyPwd` accepts only a token of the session's own user (else -1).
//!   The session that changed the password stays open and from then on
//!   stands for the new token (a later `CSLogout` revokes that one).
//! * A push is acknowledged in the mailbox only after its frame was flushed;
//!   a user's sessions each get every push. After a login the mailbox is
//!   read a page (one outbound queue's worth) at a time, oldest first, so a
//!   long-offline user's backlog never sits in memory whole; SMS landing
//!   meanwhile come after it, once.
//!
//! ## Usage
//!
//! Mount [`HubWs::upgrade`] at `GET /ws` of a hyper server that serves
//! connections with upgrades:
//!
//! ```no_run
//! use std::convert::Infallible;
//! use std::sync::Arc;
//!
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper::service::service_fn;
//! use hyper_util::rt::{TokioExecutor, TokioIo};
//! use hyper_util::server::conn::auto::Builder;
//! use sms_core::prelude::*;
//! use sms_ws_tungstenite::{HubWs, WsConfig};
//!
//! # #[tokio::main] async fn main() -> std::io::Result<()> {
//! # let (secret, carrier) = ([7u8; 32], Arc::new(RecordingGateway::new()));
//! let core = Core::builder(
//!     Stores::from_single(Arc::new(MemoryStore::new())),
//!     Arc::new(RecordingSender::new()),
//! )
//! .code_secret(secret) // stable across restarts, shared by every node
//! .gateway(carrier) // where send tasks go
//! .build()
//! .expect("secret and carrier given");
//! let hub = HubWs::new(core, WsConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! loop {
//!     let (stream, peer) = listener.accept().await?;
//!     let hub = hub.clone();
//!     tokio::spawn(async move {
//!         let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
//!             let hub = hub.clone();
//!             async move {
//!                 Ok::<_, Infallible>(if req.uri().path() == "/ws" {
//!                     hub.upgrade(req, Some(peer.ip()))
//!                 } else {
//!                     let mut res = http::Response::new(Full::new(Bytes::from_static(b"{}")));
//!                     *res.status_mut() = http::StatusCode::NOT_FOUND;
//!                     res
//!                 })
//!             }
//!         });
//!         let _ = Builder::new(TokioExecutor::new())
//!             .serve_connection_with_upgrades(TokioIo::new(stream), svc)
//!             .await;
//!     });
//! }
//! # }
//! ```
#![deny(missing_docs)]

mod config;
mod handshake;
pub mod protocol;
mod session;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sms_core::Core;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub use crate::config::{WsConfig, MIN_OUTBOUND_QUEUE};

/// What every connection shares.
#[derive(Debug)]
struct Shared {
    core: Core,
    config: WsConfig,
    /// `true` once [`HubWs::shutdown`] was called.
    shutdown: watch::Sender<bool>,
    /// Live connections (upgraded or being upgraded).
    live: watch::Sender<usize>,
    /// Mailbox entries acknowledged lately (see `session::ack`).
    recent_acks: Mutex<session::RecentAcks>,
}

impl Shared {
    fn recent_acks(&self) -> MutexGuard<'_, session::RecentAcks> {
        self.recent_acks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `hub` WebSocket front end: handshake, sessions, shutdown. Clones share
/// the same sessions.
#[derive(Debug, Clone)]
pub struct HubWs {
    shared: Arc<Shared>,
}

impl HubWs {
    /// A front end over `core` with these limits.
    pub fn new(core: Core, config: WsConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                core,
                config,
                shutdown: watch::Sender::new(false),
                live: watch::Sender::new(0),
                recent_acks: Mutex::default(),
            }),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &WsConfig {
        &self.shared.config
    }

    /// Answers a WebSocket opening handshake.
    ///
    /// `req` must be the request exactly as hyper handed it to the service
    /// (it carries the connection's upgrade handle), on a connection served
    /// with upgrades enabled (`serve_connection_with_upgrades`). A request
    /// that is not a valid handshake (not `GET` over HTTP/1.1, no
    /// `Connection: upgrade`, no `Upgrade: websocket`, `Sec-WebSocket-Version`
    /// not 13, no well-formed `Sec-WebSocket-Key`) gets `400` with
    /// `{"message":...}`. Otherwise the answer is `101 Switching Protocols`
    /// at once, and a spawned task serves the session once hyper hands over
    /// the upgraded connection. `client_ip` is the client's address (for the
    /// per-IP caps of email codes).
    ///
    /// Must be called within a Tokio runtime. The path is not checked: route
    /// `GET /ws` here.
    pub fn upgrade<B>(
        &self,
        mut req: http::Request<B>,
        client_ip: Option<IpAddr>,
    ) -> http::Response<Full<Bytes>> {
        let accept = match handshake::check(&req) {
            Ok(a) => a,
            Err(why) => return handshake::rejected(why),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        drop(req);
        let guard = session::LiveGuard::new(self.shared.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(shared.config.websocket_config()),
                    )
                    .await;
                    // A task of its own, sized for the session alone (not
                    // for the upgrade's state beside it).
                    tokio::spawn(session::run(shared, ws, client_ip, guard));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "hub ws: upgrade failed");
                    drop(guard);
                }
            }
        });
        handshake::switching(&accept)
    }

    /// Graceful shutdown: every live session gets
    /// `{"protocol":"PushKickout","state":1}` and is closed; a connection
    /// upgraded afterwards gets the same at once. Returns immediately; await
    /// [`closed`](Self::closed) to know when the sessions are gone.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// True once [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        *self.shared.shutdown.borrow()
    }

    /// Connections currently open (including handshakes answered whose
    /// upgrade is still in flight).
    pub fn live_sessions(&self) -> usize {
        *self.shared.live.borrow()
    }

    /// Resolves when no connection is open (at once if none is). Each closing
    /// connection takes at most [`WsConfig::close_timeout`] after its last
    /// frame; pair with a timeout of your own for connections whose upgrade
    /// never completes.
    pub async fn closed(&self) {
        let mut rx = self.shared.live.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}
