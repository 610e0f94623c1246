//! The front ends mounted in an embedder's own axum server
//! (`examples/embed_axum.rs`, compiled here as it is): the embedder's routes
//! and every dialect share one listener, the WebSocket upgrades through axum,
//! and per-IP limits see the client's address.

#[allow(dead_code)]
#[path = "../examples/embed_axum.rs"]
mod embed_axum;

#[allow(dead_code)]
#[path = "../examples/axum_mount.rs"]
mod axum_mount;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sms_core::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

struct Embedded {
    addr: SocketAddr,
    sender: Arc<RecordingSender>,
}

async fn start() -> Embedded {
    let sender = Arc::new(RecordingSender::new());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(sender.clone())
        .build()
        .expect("test core");
    let (router, _hub) = embed_axum::app(core);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    Embedded { addr, sender }
}

/// One HTTP/1.1 exchange on its own connection: (status, body).
async fn exchange(addr: SocketAddr, method: &str, path: &str, form: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

async fn json_of(addr: SocketAddr, method: &str, path: &str, form: &str) -> Value {
    let (status, body) = exchange(addr, method, path, form).await;
    assert_eq!(status, 200, "{method} {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

#[tokio::test]
async fn embedder_routes_and_every_dialect_share_one_listener() {
    let e = start().await;
    assert_eq!(
        exchange(e.addr, "GET", "/health", "").await,
        (200, "ok".to_owned())
    );
    // hub
    let r = json_of(e.addr, "POST", "/signup", "user=alice&password=secret1").await;
    assert_eq!(r["code"], 0, "{r}");
    // account_v4, codes through the embedder's sender
    let r = json_of(e.addr, "POST", "/api/v4.0/sendsms/13811112222", "expect=0").await;
    assert_eq!(r["code"], 200, "{r}");
    let code = e
        .sender
        .last_code_to("13811112222")
        .expect("a code was sent");
    let r = json_of(
        e.addr,
        "POST",
        "/api/v4.0/register",
        &format!("phone=13811112222&name=A&password=secret1&code={code}"),
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    // pool
    let r = json_of(e.addr, "GET", "/mobiles/com.app/1", "").await;
    assert_eq!(r["code"], 208, "{r}");
    // The platform's own answers for what it does not serve.
    assert_eq!(exchange(e.addr, "GET", "/nowhere", "").await.0, 404);
    assert_eq!(exchange(e.addr, "GET", "/signup", "").await.0, 405);
}

#[tokio::test]
async fn per_ip_limits_see_the_client_through_the_embedding() {
    let e = start().await;
    let mut codes = Vec::new();
    for i in 0..31 {
        let r = json_of(
            e.addr,
            "GET",
            &format!("/api/v4.0/isregister/1390000{i:04}"),
            "",
        )
        .await;
        codes.push(r["code"].as_i64().unwrap());
    }
    assert!(codes[..30].iter().all(|&c| c == 200), "{codes:?}");
    assert_eq!(codes[30], -4, "the 31st probe from one address is refused");
}

#[tokio::test]
async fn the_hub_websocket_upgrades_through_axum() {
    let e = start().await;
    let r = json_of(e.addr, "POST", "/signup", "user=bob&password=secret1").await;
    let token = r["token"].as_str().unwrap().to_owned();
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", e.addr))
        .await
        .expect("upgrade");
    ws.send(Message::text(
        json!({"protocol": "CSLogin", "token": token, "gps": ""}).to_string(),
    ))
    .await
    .unwrap();
    let answer = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("an answer")
            .expect("open")
            .unwrap();
        if let Message::Text(t) = m {
            break serde_json::from_str::<Value>(&t).unwrap();
        }
    };
    assert_eq!(answer["protocol"], "SCLogin");
    assert_eq!(answer["code"], 0);
    assert_eq!(answer["data"]["userInfo"]["user"], "bob");
}

#[tokio::test]
async fn one_dialect_under_a_prefix_exposes_nothing_else() {
    // examples/axum_mount.rs: account_v4 alone under /auth in axum; the
    // pool, root and other dialects' routes answer 404 there.
    let codes = Arc::new(RecordingSender::new());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(codes.clone())
        .build()
        .expect("test core");
    let addr = axum_mount::start(core).await.unwrap();
    if let Err(e) = axum_mount::demo(addr, &codes).await {
        panic!("{e}");
    }
}
