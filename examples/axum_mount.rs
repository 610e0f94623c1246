//! Mounting ONE dialect in an axum app of your own: `account_v4` under
//! `/auth`, the `hub` WebSocket at `/ws`, beside the app's own `/health`.
//! Nothing else of the platform is exposed: the pool's device routes, the
//! root routes and the other dialects answer 404.
//!
//! ```sh
//! cargo run --example axum_mount
//! ```
//!
//! It starts the app on a free port, calls itself (sign-up by SMS code,
//! login over the WebSocket, the 404s), prints what it saw and exits; any
//! surprise ends it with an error. `tests/embedding.rs` runs the same code.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sms_core::prelude::*;
use sms_http_hyper::{
    client_ip_of, ClientAddr, ClientIpLayer, Dialect, HttpConfig, SmsService, TrustedProxies,
};
use sms_ws_tungstenite::{HubWs, WsConfig};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The application: its own `/health`, `account_v4` under `/auth` (axum's
/// `nest_service` strips the prefix, so `/auth/api/v4.0/login` reaches the
/// dialect as `/api/v4.0/login`) and the `hub` WebSocket at `/ws`.
pub fn app(core: Core) -> Router {
    let auth =
        SmsService::with_dialects(core.clone(), HttpConfig::default(), &[Dialect::AccountV4]);
    let hub = HubWs::new(core, WsConfig::default());
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/ws",
            get(move |req: Request| {
                let hub = hub.clone();
                async move {
                    let ip = client_ip_of(&req, &TrustedProxies::default());
                    hub.upgrade(req, ip).into_response()
                }
            }),
        )
        .nest_service("/auth", auth)
        // Layers run bottom-up: the TCP peer first, then the client's
        // address resolved once for every route (list your load balancers
        // in `TrustedProxies`).
        .layer(ClientIpLayer::new(TrustedProxies::default()))
        .layer(middleware::from_fn(peer))
}

async fn peer(
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    req.extensions_mut().insert(ClientAddr(addr));
    next.run(req).await
}

/// Serves [`app`] on a free loopback port.
pub async fn start(core: Core) -> Result<SocketAddr, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = app(core).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("server stopped: {e}");
        }
    });
    Ok(addr)
}

/// One request; returns the status and the body.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    form: &str,
) -> Result<(u16, String), Error> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form.to_owned())))?;
    let resp = client.request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn expect(what: &str, ok: bool, detail: impl std::fmt::Display) -> Result<(), Error> {
    if ok {
        println!("ok   {what}");
        Ok(())
    } else {
        Err(format!("FAIL {what}: {detail}").into())
    }
}

/// Calls the app at `addr` as a client would; `codes` is where the core
/// sends its SMS (a recorder here, a carrier in production).
pub async fn demo(addr: SocketAddr, codes: &RecordingSender) -> Result<(), Error> {
    let (status, body) = call(addr, "GET", "/health", "").await?;
    expect("the app's own route", status == 200 && body == "ok", &body)?;

    let phone = "13811112222";
    let (_, body) = call(
        addr,
        "POST",
        &format!("/auth/api/v4.0/sendsms/{phone}?expect=0"),
        "",
    )
    .await?;
    let v: Value = serde_json::from_str(&body)?;
    expect("account_v4 sendsms under /auth", v["code"] == 200, &body)?;
    let code = codes.last_code_to(phone).ok_or("no code was sent")?;
    let form = format!("phone={phone}&name=Bob&password=secret1&code={code}");
    let (_, body) = call(addr, "POST", "/auth/api/v4.0/register", &form).await?;
    let v: Value = serde_json::from_str(&body)?;
    let token = v["data"]["token"]
        .as_str()
        .ok_or(format!("no token in {body}"))?
        .to_owned();
    expect("account_v4 register with the code", v["code"] == 200, &body)?;

    for (method, path) in [
        ("POST", "/auth/phones"), // pool device routes
        ("POST", "/auth/vcodes"),
        ("GET", "/auth/mobiles/com.app/1"), // pool consumer routes
        ("POST", "/auth/v2/item"),          // root routes
        ("POST", "/auth/v2/charge"),
        ("POST", "/auth/signup"),                    // hub HTTP
        ("POST", "/auth/index.php?r=user/register"), // telsignup
        ("GET", "/auth/v1/signature"),               // sendapi
        ("GET", "/auth/openapi"),
        ("POST", "/api/v4.0/login"), // the dialect is only under /auth
        ("POST", "/phones"),
    ] {
        let (status, _) = call(addr, method, path, "").await?;
        expect(
            &format!("{method} {path} is not exposed (404)"),
            status == 404,
            status,
        )?;
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    let login = json!({"protocol": "CSLogin", "token": token, "gps": ""});
    ws.send(Message::text(login.to_string())).await?;
    let reply = loop {
        match ws.next().await.ok_or("socket closed")?? {
            Message::Text(t) => break serde_json::from_str::<Value>(t.as_str())?,
            _ => continue,
        }
    };
    expect(
        "the account_v4 token logs in on the hub WebSocket",
        reply["protocol"] == "SCLogin" && reply["code"] == 0,
        &reply,
    )?;
    ws.close(None).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let codes = Arc::new(RecordingSender::new());
    // An example over the in-memory store: a test builder (random code
    // secret, a carrier that records). Production uses `Core::builder` with
    // a stable secret and a real carrier.
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(codes.clone())
        .build()?;
    let addr = start(core).await?;
    println!("listening on {addr}");
    demo(addr, &codes).await?;
    println!("axum_mount: all checks passed");
    Ok(())
}
