//! The `hub` WebSocket protocol end to end: a real hyper server on a free
//! port serving `GET /ws` through `HubWs::upgrade`, over a core on the
//! in-memory store, and tokio-tungstenite clients.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{json, Value};
use sms_core::events::{Event, Push};
use sms_core::pool::{Item, NumberInfo};
use sms_core::pool_service;
use sms_core::prelude::*;
use sms_ws_tungstenite::{HubWs, WsConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{client_async, WebSocketStream};

const NOW: i64 = 1_700_000_000;
const PASSWORD: &str = "s3cret-pw";
const ITEM: &str = "com.yy.huanju";
const CID: &str = "dev-1";
const WAIT: Duration = Duration::from_secs(5);

struct Env {
    core: Core,
    outbox: Arc<RecordingSender>,
    clock: Arc<ManualClock>,
    hub: HubWs,
    addr: SocketAddr,
}

type Ws = WebSocketStream<TcpStream>;

async fn start() -> Env {
    start_with(WsConfig::default()).await
}

async fn start_with(config: WsConfig) -> Env {
    let store = Arc::new(MemoryStore::new());
    let outbox = Arc::new(RecordingSender::new());
    let clock = Arc::new(ManualClock::at(NOW));
    let core = Core::test_builder(Stores::from_single(store))
        .sender(outbox.clone())
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .clock(clock.clone())
        .build()
        .expect("test core");
    let hub = HubWs::new(core.clone(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_hub = hub.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                return;
            };
            let hub = server_hub.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<Incoming>| {
                    let hub = hub.clone();
                    async move {
                        Ok::<_, Infallible>(if req.uri().path() == "/ws" {
                            hub.upgrade(req, Some(peer.ip()))
                        } else {
                            let mut res = http::Response::new(Full::new(Bytes::from_static(
                                br#"{"message":"not found"}"#,
                            )));
                            *res.status_mut() = http::StatusCode::NOT_FOUND;
                            res
                        })
                    }
                });
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Env {
        core,
        outbox,
        clock,
        hub,
        addr,
    }
}

impl Env {
    async fn connect(&self) -> Ws {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (ws, res) = client_async(format!("ws://{}/ws", self.addr), stream)
            .await
            .unwrap();
        assert_eq!(res.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        ws
    }

    async fn sign_up(&self, name: &str) -> String {
        let t = self
            .core
            .accounts
            .sign_up_username(name, PASSWORD)
            .await
            .unwrap();
        t.expose().to_owned()
    }

    async fn log_in(&self, name: &str, password: &str) -> String {
        let t = self
            .core
            .accounts
            .login_username(name, password)
            .await
            .unwrap();
        t.expose().to_owned()
    }

    async fn user_id(&self, name: &str) -> UserId {
        self.core
            .accounts
            .user_by_username(name)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    /// A connection logged in as a freshly signed-up `name`.
    async fn session(&self, name: &str) -> Ws {
        let token = self.sign_up(name).await;
        let mut ws = self.connect().await;
        let r = login(&mut ws, &token).await;
        assert_eq!(r["code"], 0, "{r}");
        ws
    }

    async fn put_item(&self, id: &str, price: i64, send_price: i64) {
        self.core
            .pool
            .put_item(Item {
                id: id.into(),
                name: id.into(),
                price,
                send_price,
                code_pattern: None,
            })
            .await
            .unwrap();
    }

    async fn numbers(&self, list: &[(&str, &str)]) {
        let entries = list
            .iter()
            .map(|(m, area)| NumberInfo {
                mobile: PhoneNumber::parse_cn_mobile(m).unwrap(),
                cid: CID.into(),
                imsi: format!("imsi-{m}"),
                imei: "imei".into(),
                iccid: format!("iccid-{m}"),
                ip: "10.0.0.1".into(),
                area: Some((*area).into()),
            })
            .collect();
        self.core.pool.upload_numbers(entries).await.unwrap();
    }

    async fn sms(&self, mobile: &str, text: &str) {
        self.core
            .pool
            .receive(vec![pool_service::IncomingSms {
                mobile: PhoneNumber::parse_cn_mobile(mobile).unwrap(),
                text: text.into(),
                appname: Some(ITEM.into()),
                chanlid: None,
            }])
            .await
            .unwrap();
    }

    /// alice, who leased a number of a free item and went offline:
    /// (her token, her id, the number).
    async fn offline_lessee(&self) -> (String, UserId, String) {
        self.put_item(ITEM, 0, 0).await;
        self.numbers(&[("13811110001", "beijing")]).await;
        let token = self.sign_up("alice").await;
        let alice = self.user_id("alice").await;
        let mut ws = self.connect().await;
        assert_eq!(code(&login(&mut ws, &token).await), 0);
        let number = lease(&mut ws, 1).await.remove(0);
        ws.close(None).await.unwrap();
        expect_closed(&mut ws).await;
        timeout(WAIT, self.hub.closed()).await.unwrap();
        (token, alice, number)
    }

    async fn wait_mailbox_empty(&self, user: &UserId) {
        for _ in 0..250 {
            if self.core.pool.mailbox(user).await.unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mailbox was never acknowledged");
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame as JSON (pings skipped).
async fn recv(ws: &mut Ws) -> Value {
    loop {
        match timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => return serde_json::from_str(t.as_str()).unwrap(),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

async fn request(ws: &mut Ws, v: Value) -> Value {
    send(ws, v).await;
    recv(ws).await
}

async fn login(ws: &mut Ws, token: &str) -> Value {
    let r = request(
        ws,
        json!({"protocol":"CSLogin","token":token,"gps":"39.9,116.4"}),
    )
    .await;
    assert_eq!(r["protocol"], "SCLogin");
    r
}

/// Reads until the server ends the connection; text frames are not expected.
/// Returns the code of the server's close frame, if one came.
async fn expect_closed(ws: &mut Ws) -> Option<CloseCode> {
    let mut close = None;
    loop {
        match timeout(WAIT, ws.next()).await {
            Ok(None) | Ok(Some(Err(_))) => return close,
            Ok(Some(Ok(Message::Close(frame)))) => close = frame.map(|f| f.code),
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected the connection to close, got {other:?}"),
        }
    }
}

fn code(v: &Value) -> i64 {
    v["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no code in {v}"))
}

async fn mobile_num(ws: &mut Ws, v: Value) -> i64 {
    let r = request(ws, v).await;
    assert_eq!(r["protocol"], "SCMobileNum", "{r}");
    code(&r)
}

async fn send_msg(ws: &mut Ws, mobile: &str, msg: Value) -> i64 {
    let r = request(
        ws,
        json!({"protocol":"CSSendMsg","itemId":ITEM,"mobileNum":mobile,"msg":msg}),
    )
    .await;
    assert_eq!(r["protocol"], "SCSendMsg", "{r}");
    code(&r)
}

/// Leases `n` numbers of `ITEM`; returns them.
async fn lease(ws: &mut Ws, n: u32) -> Vec<String> {
    let c = mobile_num(
        ws,
        json!({"protocol":"CSMobileNum","itemId":ITEM,"count":n}),
    )
    .await;
    assert_eq!(c, 0);
    let mut out = Vec::new();
    for _ in 0..n {
        let p = recv(ws).await;
        assert_eq!(p["protocol"], "PushMobileNum", "{p}");
        out.push(p["mobileNum"].as_str().unwrap().to_owned());
    }
    out
}

// ----- frames ----------------------------------------------------------------

#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_stays_open() {
    let env = start().await;
    let token = env.sign_up("alice").await;
    let mut ws = env.connect().await;

    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let r = recv(&mut ws).await;
    assert_eq!(r["protocol"], "SCError");
    assert_eq!(code(&r), -102);
    assert!(r["msg"].is_string());

    for garbage in ["garbage", "[1,2]", "\"CSLogin\"", "42", "{\"protocol\":"] {
        ws.send(Message::text(garbage)).await.unwrap();
        let r = recv(&mut ws).await;
        assert_eq!(
            (r["protocol"].as_str(), code(&r)),
            (Some("SCError"), -102),
            "{garbage}"
        );
    }
    for unknown in [
        json!({}),
        json!({"protocol": 7}),
        json!({"protocol": null}),
        json!({"protocol": "CSHello"}),
        json!({"protocol": "SCLogin", "code": 0}),
    ] {
        let r = request(&mut ws, unknown.clone()).await;
        assert_eq!(
            (r["protocol"].as_str(), code(&r)),
            (Some("SCError"), -101),
            "{unknown}"
        );
    }
    for early in [
        json!({"protocol":"CSLogout"}),
        json!({"protocol":"CSModifyPwd","token":token,"password":"n3w-secret"}),
        json!({"protocol":"CSMobileNum","itemId":ITEM,"count":1}),
        json!({"protocol":"CSSendMsg","itemId":ITEM,"mobileNum":"13811110001","msg":"x"}),
        json!({"protocol":"CSBindEmailGetVCode","email":"a@example.com"}),
        json!({"protocol":"CSBindEmailCheckVCode","email":"a@example.com","vCode":"123456"}),
    ] {
        let r = request(&mut ws, early.clone()).await;
        assert_eq!(
            (r["protocol"].as_str(), code(&r)),
            (Some("SCError"), -100),
            "{early}"
        );
    }
    // Still open, and logging in works.
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    // -101 and -102 apply after login too.
    let r = request(&mut ws, json!({"protocol":"CSNope"})).await;
    assert_eq!(code(&r), -101);
}

#[tokio::test]
async fn more_than_twenty_bad_frames_a_minute_close_the_connection() {
    let env = start().await;
    let mut ws = env.connect().await;
    for _ in 0..20 {
        ws.send(Message::text("nope")).await.unwrap();
        assert_eq!(code(&recv(&mut ws).await), -102);
    }
    // Twenty are tolerated: the connection still answers.
    assert_eq!(code(&login(&mut ws, "bad-token").await), -1);
    ws.send(Message::text("{}")).await.unwrap();
    assert_eq!(code(&recv(&mut ws).await), -101);
    assert_eq!(expect_closed(&mut ws).await, Some(CloseCode::Policy));
}

#[tokio::test]
async fn oversized_message_closes_the_connection() {
    let env = start().await;
    let mut ws = env.connect().await;
    let big = format!(
        "{{\"protocol\":\"CSLogin\",\"token\":\"{}\"}}",
        "a".repeat(70 * 1024)
    );
    // The write may already fail if the server has closed.
    let _ = ws.send(Message::text(big)).await;
    assert_eq!(expect_closed(&mut ws).await, Some(CloseCode::Size));
}

// ----- handshake ---------------------------------------------------------------

/// Sends a raw HTTP request and returns the response head and body.
async fn raw_http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = timeout(WAIT, s.read(&mut chunk)).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let body = &text[end + 4..];
            if body.len() >= len {
                return (head, body.to_owned());
            }
        }
        if n == 0 {
            panic!("connection closed early: {}", String::from_utf8_lossy(&buf));
        }
    }
}

#[tokio::test]
async fn invalid_handshakes_get_400_json() {
    let env = start().await;
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n".to_owned(),
        format!("POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}Content-Length: 0\r\n\r\n"),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"),
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{key}\r\n"),
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n".to_owned(),
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n".to_owned(),
    ];
    for req in cases {
        let (head, body) = raw_http(env.addr, &req).await;
        assert!(head.starts_with("HTTP/1.1 400"), "{req:?} → {head}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v["message"].is_string(), "{body}");
        if req.contains("Version: 8") {
            assert!(head
                .to_ascii_lowercase()
                .contains("sec-websocket-version: 13"));
        }
    }
    // A valid one switches protocols with the RFC's accept key.
    let (head, _) = raw_http(
        env.addr,
        &format!("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{key}\r\n"),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
}

// ----- login and logout ----------------------------------------------------------

#[tokio::test]
async fn login_flags_and_user_info() {
    let env = start().await;
    let signup = env.sign_up("alice").await;
    env.core.billing.charge("alice", 50, None).await.unwrap();

    let mut ws = env.connect().await;
    let r = login(&mut ws, &signup).await;
    assert_eq!(
        r,
        json!({"protocol":"SCLogin","code":0,"data":{
            "userInfo":{"user":"alice","email":"","point":0,"balance":50},
            "flag":3}})
    );
    // The same sign-up token again: a normal login.
    let mut ws2 = env.connect().await;
    assert_eq!(login(&mut ws2, &signup).await["data"]["flag"], 1);

    // A login token is a normal login, first use or not.
    let t = env.log_in("alice", PASSWORD).await;
    let mut ws3 = env.connect().await;
    assert_eq!(login(&mut ws3, &t).await["data"]["flag"], 1);

    // Bad, missing and empty tokens: -1, without data.
    for bad in [json!("no-such-token"), json!(""), json!(null), json!(12)] {
        let r = request(&mut ws3, json!({"protocol":"CSLogin","token":bad})).await;
        assert_eq!(r, json!({"protocol":"SCLogin","code":-1}), "{bad}");
    }
    let r = request(&mut ws3, json!({"protocol":"CSLogin"})).await;
    assert_eq!(code(&r), -1);

    // Every session expires; the next login is a renewal: flag 2 once.
    env.clock.advance(8 * 86_400);
    let mut ws4 = env.connect().await;
    assert_eq!(code(&login(&mut ws4, &t).await), -1, "expired");
    let renewed = env.log_in("alice", PASSWORD).await;
    assert_eq!(login(&mut ws4, &renewed).await["data"]["flag"], 2);
    let mut ws5 = env.connect().await;
    assert_eq!(login(&mut ws5, &renewed).await["data"]["flag"], 1);
}

#[tokio::test]
async fn logout_revokes_the_token_and_keeps_the_connection() {
    let env = start().await;
    let token = env.sign_up("alice").await;
    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    let r = request(&mut ws, json!({"protocol":"CSLogout"})).await;
    assert_eq!(r, json!({"protocol":"SCLogout","code":0}));
    // Logged out, still connected.
    let r = request(
        &mut ws,
        json!({"protocol":"CSMobileNum","itemId":ITEM,"count":1}),
    )
    .await;
    assert_eq!(code(&r), -100);
    assert_eq!(code(&login(&mut ws, &token).await), -1);
    let mut other = env.connect().await;
    assert_eq!(code(&login(&mut other, &token).await), -1);
}

// ----- password ---------------------------------------------------------------------

#[tokio::test]
async fn modify_password_kicks_out_the_other_sessions() {
    let env = start().await;
    let t_a = env.sign_up("alice").await;
    let t_b = env.log_in("alice", PASSWORD).await;
    let t_bob = env.sign_up("bob").await;
    let mut a = env.connect().await;
    let mut b = env.connect().await;
    assert_eq!(code(&login(&mut a, &t_a).await), 0);
    assert_eq!(code(&login(&mut b, &t_b).await), 0);

    let modify =
        |token: &str, pw: Value| json!({"protocol":"CSModifyPwd","token":token,"password":pw});
    for (req, want) in [
        (modify("bogus", json!("n3w-secret")), -1),
        (modify(&t_bob, json!("n3w-secret")), -1),
        (modify(&t_a, json!("abc")), -2),
        (modify(&t_a, json!("x".repeat(33))), -2),
        (modify(&t_a, json!("")), -3),
        (modify(&t_a, json!(null)), -3),
        (modify(&t_a, json!("has space1")), -4),
        (modify(&t_a, json!("pässwörd1")), -4),
    ] {
        let r = request(&mut a, req.clone()).await;
        assert_eq!(r, json!({"protocol":"SCModifyPwd","code":want}), "{req}");
    }

    let r = request(&mut a, modify(&t_a, json!("n3w-secret"))).await;
    assert_eq!(code(&r), 0, "{r}");
    let new = r["token"].as_str().unwrap().to_owned();
    assert!(!new.is_empty() && new != t_a);

    // The other session is kicked out with state 2, without a token.
    assert_eq!(
        recv(&mut b).await,
        json!({"protocol":"PushKickout","state":2})
    );
    assert_eq!(expect_closed(&mut b).await, Some(CloseCode::Normal));

    // This session keeps working and got no kickout.
    let r = mobile_num(
        &mut a,
        json!({"protocol":"CSMobileNum","itemId":"no.such","count":1}),
    )
    .await;
    assert_eq!(r, -1);

    // Old tokens are dead; the new one logs in with flag 4 once.
    let mut c = env.connect().await;
    assert_eq!(code(&login(&mut c, &t_a).await), -1);
    assert_eq!(code(&login(&mut c, &t_b).await), -1);
    assert_eq!(login(&mut c, &new).await["data"]["flag"], 4);
    let mut d = env.connect().await;
    assert_eq!(login(&mut d, &new).await["data"]["flag"], 1);
    assert!(env
        .core
        .accounts
        .login_username("alice", "n3w-secret")
        .await
        .is_ok());

    // Logging out of the session that changed the password revokes the new
    // token.
    let r = request(&mut a, json!({"protocol":"CSLogout"})).await;
    assert_eq!(code(&r), 0);
    let mut e = env.connect().await;
    assert_eq!(code(&login(&mut e, &new).await), -1);
}

// ----- ban and shutdown -------------------------------------------------------------------

#[tokio::test]
async fn ban_kicks_out_with_state_3() {
    let env = start().await;
    let token = env.sign_up("alice").await;
    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    env.core.accounts.set_banned("alice", true).await.unwrap();
    assert_eq!(
        recv(&mut ws).await,
        json!({"protocol":"PushKickout","state":3})
    );
    assert_eq!(expect_closed(&mut ws).await, Some(CloseCode::Normal));
    let mut again = env.connect().await;
    assert_eq!(code(&login(&mut again, &token).await), -1);
}

#[tokio::test]
async fn shutdown_kicks_out_every_session_with_state_1() {
    let env = start().await;
    let mut logged_in = env.session("alice").await;
    let mut anonymous = env.connect().await;
    assert_eq!(env.hub.live_sessions(), 2);
    env.hub.shutdown();
    assert!(env.hub.is_shut_down());
    for ws in [&mut logged_in, &mut anonymous] {
        assert_eq!(recv(ws).await, json!({"protocol":"PushKickout","state":1}));
        assert_eq!(expect_closed(ws).await, Some(CloseCode::Away));
    }
    timeout(WAIT, env.hub.closed()).await.unwrap();
    assert_eq!(env.hub.live_sessions(), 0);
    // A connection after the shutdown is told at once.
    let mut late = env.connect().await;
    assert_eq!(
        recv(&mut late).await,
        json!({"protocol":"PushKickout","state":1})
    );
    expect_closed(&mut late).await;
}

#[tokio::test]
async fn idle_connections_are_pinged_and_closed() {
    let env = start_with(WsConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(700),
        ..WsConfig::default()
    })
    .await;
    let mut active = env.connect().await;
    let mut idle = env.connect().await;
    // The active client reads (tungstenite answers each ping with a pong).
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        if let Ok(m) = timeout(Duration::from_millis(50), active.next()).await {
            match m {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(pings >= 3, "pings: {pings}");
    // It is still served.
    assert_eq!(code(&login(&mut active, "x").await), -1);
    // The idle one, which never answered a ping, was closed.
    assert_eq!(expect_closed(&mut idle).await, Some(CloseCode::Away));
}

// ----- email binding ------------------------------------------------------------------------

#[tokio::test]
async fn bind_email() {
    let env = start().await;
    let mut alice = env.session("alice").await;
    let mut bob = env.session("bob").await;
    let get = |email: &str| json!({"protocol":"CSBindEmailGetVCode","email":email});
    let check = |email: &str, code: &str| json!({"protocol":"CSBindEmailCheckVCode","email":email,"vCode":code});

    assert_eq!(
        request(&mut alice, get("not-an-email")).await,
        json!({"protocol":"SCBindEmailGetVCode","code":-1})
    );
    assert_eq!(
        request(&mut alice, check("not-an-email", "123456")).await,
        json!({"protocol":"SCBindEmailCheckVCode","code":-1})
    );
    assert_eq!(
        request(&mut alice, get("alice@example.com")).await,
        json!({"protocol":"SCBindEmailGetVCode","code":0,"againTimestamp":NOW + 60})
    );
    // Within the cooldown: -4 with the time a new request is allowed.
    assert_eq!(
        request(&mut alice, get("alice@example.com")).await,
        json!({"protocol":"SCBindEmailGetVCode","code":-4,"againTimestamp":NOW + 60})
    );
    let sent = env.outbox.messages();
    let last = sent.last().unwrap();
    assert_eq!(last.channel, Channel::Email);
    assert_eq!(last.to, "alice@example.com");
    let vcode = env.outbox.last_code_to("alice@example.com").unwrap();
    let wrong = if vcode == "000000" {
        "111111"
    } else {
        "000000"
    };
    assert_eq!(
        code(&request(&mut alice, check("alice@example.com", wrong)).await),
        -2
    );
    assert_eq!(
        request(&mut alice, check("alice@example.com", &vcode)).await,
        json!({"protocol":"SCBindEmailCheckVCode","code":0})
    );
    // Bound: the email shows at the next login, and bob cannot have it.
    let t = env.log_in("alice", PASSWORD).await;
    let mut again = env.connect().await;
    assert_eq!(
        login(&mut again, &t).await["data"]["userInfo"]["email"],
        "alice@example.com"
    );
    assert_eq!(
        request(&mut bob, get("alice@example.com")).await,
        json!({"protocol":"SCBindEmailGetVCode","code":-3})
    );
    assert_eq!(
        code(&request(&mut bob, check("alice@example.com", &vcode)).await),
        -3
    );
}

// ----- numbers ----------------------------------------------------------------------------------

#[tokio::test]
async fn mobile_num_codes_and_pushes() {
    let env = start().await;
    env.put_item(ITEM, 10, 1).await;
    env.put_item("free.app", 0, 0).await;
    env.numbers(&[
        ("13811110001", "beijing"),
        ("13811110002", "beijing"),
        ("13311110003", "shanghai"),
    ])
    .await;
    let mut ws = env.session("alice").await;
    env.core.billing.charge("alice", 100, None).await.unwrap();
    let alice = env.user_id("alice").await;

    let req = |extra: Value| {
        let mut v = json!({"protocol":"CSMobileNum","itemId":ITEM,"count":1});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let cases = [
        (json!({"itemId":"no.such.app"}), -1),
        (json!({"itemId":null}), -1),
        (json!({"itemId":7}), -1),
        (json!({"count":0}), -2),
        (json!({"count":21}), -2),
        (json!({"count":"x"}), -2),
        (json!({"count":1.5}), -2),
        (json!({"count":-1}), -2),
        (json!({"count":null}), -2),
        (json!({"area":""}), -3),
        (json!({"area":"a".repeat(33)}), -3),
        (json!({"area":5}), -3),
        (json!({"operator":"xyz"}), -4),
        (json!({"operator":5}), -4),
        (json!({"customNum":"12345"}), -5),
        (json!({"customNum":"13999999999"}), -5),
        (json!({"count":20}), -6),
        (json!({"area":"nowhere"}), -7),
    ];
    for (extra, want) in cases {
        let v = req(extra.clone());
        let r = request(&mut ws, v).await;
        assert_eq!(r, json!({"protocol":"SCMobileNum","code":want}), "{extra}");
    }
    // Nothing was held by the failures.
    let b = env.core.billing.balance(&alice).await.unwrap();
    assert_eq!(b.available(), 100);

    // Two numbers (count as a digit string, with filters).
    let r = request(
        &mut ws,
        req(json!({"count":"2","area":"beijing","operator":"移动"})),
    )
    .await;
    assert_eq!(r, json!({"protocol":"SCMobileNum","code":0}));
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = recv(&mut ws).await;
        assert_eq!(p["protocol"], "PushMobileNum");
        assert_eq!(p["useTimestamp"], NOW + 20 * 60);
        got.push(p["mobileNum"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["13811110001", "13811110002"]);
    assert_eq!(
        env.core.billing.balance(&alice).await.unwrap().available(),
        80
    );

    // A custom number (as a JSON number), then the same one again.
    assert_eq!(
        mobile_num(&mut ws, req(json!({"customNum":13311110003u64}))).await,
        0
    );
    let p = recv(&mut ws).await;
    assert_eq!(p["mobileNum"], "13311110003");
    assert_eq!(
        mobile_num(&mut ws, req(json!({"customNum":"13311110003"}))).await,
        -5
    );
    // The pool is exhausted.
    assert_eq!(mobile_num(&mut ws, req(json!({}))).await, -7);
    // Every number is leased now, whatever the item.
    assert_eq!(
        mobile_num(
            &mut ws,
            json!({"protocol":"CSMobileNum","itemId":"free.app","count":1})
        )
        .await,
        -7,
        "every number is leased"
    );
}

#[tokio::test]
async fn send_msg_codes() {
    let env = start().await;
    env.put_item(ITEM, 10, 1).await;
    env.put_item("other.app", 10, 1).await;
    env.numbers(&[("13811110001", "beijing"), ("13811110002", "beijing")])
        .await;
    let mut ws = env.session("alice").await;
    env.core.billing.charge("alice", 12, None).await.unwrap();
    let leased = lease(&mut ws, 1).await.remove(0);
    let not_leased = if leased == "13811110001" {
        "13811110002"
    } else {
        "13811110001"
    };

    let r = request(
        &mut ws,
        json!({"protocol":"CSSendMsg","itemId":"no.such","mobileNum":leased,"msg":"hi"}),
    )
    .await;
    assert_eq!(r, json!({"protocol":"SCSendMsg","code":-1}));
    assert_eq!(send_msg(&mut ws, not_leased, json!("hi")).await, -2);
    assert_eq!(send_msg(&mut ws, "garbage", json!("hi")).await, -2);
    let r = request(
        &mut ws,
        json!({"protocol":"CSSendMsg","itemId":"other.app","mobileNum":leased,"msg":"hi"}),
    )
    .await;
    assert_eq!(code(&r), -2, "leased for another item");
    assert_eq!(
        send_msg(&mut ws, &leased, json!("短".repeat(501))).await,
        -3
    );
    assert_eq!(send_msg(&mut ws, &leased, json!("")).await, -4);
    assert_eq!(send_msg(&mut ws, &leased, json!(null)).await, -4);

    assert_eq!(send_msg(&mut ws, &leased, json!("短".repeat(500))).await, 0);
    assert_eq!(send_msg(&mut ws, &leased, json!("hello")).await, 0);
    let queued = env.core.pool.take_device_messages(CID, 10).await.unwrap();
    assert_eq!(queued.len(), 2);
    assert_eq!(queued[1].msg, "hello");
    assert_eq!(queued[1].mobile.display_form(), leased);
    assert_eq!(queued[1].item_id, ITEM);
    // 12 - 10 held - 2 sends: nothing left.
    assert_eq!(send_msg(&mut ws, &leased, json!("again")).await, -5);
}

// ----- received SMS ------------------------------------------------------------------------

#[tokio::test]
async fn recv_msg_is_pushed_live_and_charged_once() {
    let env = start().await;
    env.put_item(ITEM, 10, 1).await;
    env.numbers(&[("13811110001", "beijing")]).await;
    let mut ws = env.session("alice").await;
    let mut second = env.connect().await;
    let t = env.log_in("alice", PASSWORD).await;
    assert_eq!(code(&login(&mut second, &t).await), 0);
    env.core.billing.charge("alice", 100, None).await.unwrap();
    let alice = env.user_id("alice").await;
    let number = lease(&mut ws, 1).await.remove(0);

    env.sms(&number, "【欢聚】验证码482913").await;
    env.sms(&number, "【欢聚】验证码777111").await;
    for session in [&mut ws, &mut second] {
        assert_eq!(
            recv(session).await,
            json!({"protocol":"PushRecvMsg","mobileNum":number,"msg":"【欢聚】验证码482913"})
        );
        assert_eq!(
            recv(session).await,
            json!({"protocol":"PushRecvMsg","mobileNum":number,"msg":"【欢聚】验证码777111"})
        );
    }
    env.wait_mailbox_empty(&alice).await;
    let b = env.core.billing.balance(&alice).await.unwrap();
    assert_eq!(
        (b.total, b.held, b.available()),
        (90, 0, 90),
        "price taken once"
    );
}

#[tokio::test]
async fn recv_msg_waits_in_the_mailbox_while_offline() {
    let env = start().await;
    env.put_item(ITEM, 10, 1).await;
    env.numbers(&[("13811110001", "beijing")]).await;
    let token = env.sign_up("alice").await;
    env.core.billing.charge("alice", 100, None).await.unwrap();
    let alice = env.user_id("alice").await;
    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    let number = lease(&mut ws, 1).await.remove(0);
    ws.close(None).await.unwrap();
    assert_eq!(expect_closed(&mut ws).await, None);
    timeout(WAIT, env.hub.closed()).await.unwrap();

    env.sms(&number, "code 4321").await;
    env.sms(&number, "code 8765").await;
    assert_eq!(env.core.pool.mailbox(&alice).await.unwrap().len(), 2);

    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    for text in ["code 4321", "code 8765"] {
        assert_eq!(
            recv(&mut ws).await,
            json!({"protocol":"PushRecvMsg","mobileNum":number,"msg":text})
        );
    }
    // Delivered once: the next frame answers the next request.
    let r = mobile_num(
        &mut ws,
        json!({"protocol":"CSMobileNum","itemId":"no.such","count":1}),
    )
    .await;
    assert_eq!(r, -1);
    env.wait_mailbox_empty(&alice).await;
    // And a later SMS arrives live.
    env.sms(&number, "code 1111").await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"protocol":"PushRecvMsg","mobileNum":number,"msg":"code 1111"})
    );
    env.wait_mailbox_empty(&alice).await;
}

#[tokio::test]
async fn live_events_already_read_from_the_mailbox_are_not_sent_twice() {
    let env = start().await;
    let (token, alice, number) = env.offline_lessee().await;
    env.sms(&number, "first").await;
    let (seq, push) = env.core.pool.mailbox(&alice).await.unwrap().remove(0);

    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    // The same entry arrives again as a live event (as when an SMS lands
    // between subscribing and reading the mailbox), then a new one.
    env.core.events.publish(&alice, Event::Push { seq, push });
    env.core.events.publish(
        &alice,
        Event::Push {
            seq: seq + 1000,
            push: Push::RecvMsg {
                mobile: number.clone(),
                msg: "second".into(),
                at: 0,
            },
        },
    );
    assert_eq!(recv(&mut ws).await["msg"], "first");
    assert_eq!(recv(&mut ws).await["msg"], "second");
    let r = mobile_num(
        &mut ws,
        json!({"protocol":"CSMobileNum","itemId":"no.such","count":1}),
    )
    .await;
    assert_eq!(r, -1, "no duplicate before the answer");
}

#[tokio::test]
async fn a_long_mailbox_is_paged_in_order_with_live_pushes_after_it() {
    // Pages of 64 (the smallest queue): 150 waiting pushes take three reads.
    let env = start_with(WsConfig {
        outbound_queue: 64,
        ..WsConfig::default()
    })
    .await;
    let (token, alice, number) = env.offline_lessee().await;
    for i in 0..150 {
        env.sms(&number, &format!("offline {i}")).await;
    }

    let mut ws = env.connect().await;
    assert_eq!(code(&login(&mut ws, &token).await), 0);
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(recv(&mut ws).await["msg"].as_str().unwrap().to_owned());
    }
    // SMS landing while the backlog is being paged: they are in the
    // mailbox too, and must come once, after the older ones.
    for i in 0..5 {
        env.sms(&number, &format!("live {i}")).await;
    }
    for _ in 10..155 {
        got.push(recv(&mut ws).await["msg"].as_str().unwrap().to_owned());
    }
    let expected: Vec<String> = (0..150)
        .map(|i| format!("offline {i}"))
        .chain((0..5).map(|i| format!("live {i}")))
        .collect();
    assert_eq!(got, expected);
    let r = mobile_num(
        &mut ws,
        json!({"protocol":"CSMobileNum","itemId":"no.such","count":1}),
    )
    .await;
    assert_eq!(r, -1, "no duplicate before the answer");
    env.wait_mailbox_empty(&alice).await;
    // Then live as usual.
    env.sms(&number, "after").await;
    assert_eq!(recv(&mut ws).await["msg"], "after");
}

#[tokio::test]
async fn a_session_dropped_by_the_event_hub_is_closed() {
    let env = start_with(WsConfig {
        event_queue: 1,
        ..WsConfig::default()
    })
    .await;
    let mut ws = env.session("alice").await;
    let alice = env.user_id("alice").await;
    // A burst the session cannot take in time: the hub drops it.
    for seq in 1..=5 {
        env.core.events.publish(
            &alice,
            Event::Push {
                seq,
                push: Push::RecvMsg {
                    mobile: "13811110001".into(),
                    msg: format!("m{seq}"),
                    at: 0,
                },
            },
        );
    }
    assert_eq!(recv(&mut ws).await["msg"], "m1");
    assert_eq!(expect_closed(&mut ws).await, Some(CloseCode::Again));
}

#[tokio::test]
async fn wrong_field_types_never_break_the_session() {
    let env = start().await;
    env.put_item(ITEM, 0, 0).await;
    let mut ws = env.session("alice").await;
    let odd = [
        json!(null),
        json!(true),
        json!(-3),
        json!(1e300),
        json!([1]),
        json!({"a":1}),
        json!(""),
    ];
    let requests = [
        ("CSModifyPwd", vec!["token", "password"]),
        (
            "CSMobileNum",
            vec!["itemId", "count", "area", "operator", "customNum"],
        ),
        ("CSSendMsg", vec!["itemId", "mobileNum", "msg"]),
        ("CSBindEmailGetVCode", vec!["email"]),
        ("CSBindEmailCheckVCode", vec!["email", "vCode"]),
    ];
    for (name, fields) in requests {
        for v in &odd {
            let mut req = json!({"protocol": name});
            for f in &fields {
                req[*f] = v.clone();
            }
            let r = request(&mut ws, req.clone()).await;
            assert_eq!(r["protocol"], name.replacen("CS", "SC", 1), "{req}");
            assert!(code(&r) < 0, "{req} → {r}");
        }
    }
    // Still logged in and served.
    let r = mobile_num(
        &mut ws,
        json!({"protocol":"CSMobileNum","itemId":ITEM,"count":1}),
    )
    .await;
    assert_eq!(r, -7);
}
