//! A `hub` client in Rust: log in over the WebSocket, lease a number, and
//! receive the SMS a SIM device uploads for it.
//!
//! ```sh
//! cargo run --example hub_client                                   # starts its own platform
//! cargo run --example hub_client -- http://127.0.0.1:8080 change-me-now   # or uses yours (root password)
//! ```
//!
//! Without arguments it starts a platform in-process (a temporary data
//! directory, loopback, a free port), plays every part — root, the SIM
//! device, the user — prints the frames and exits. Pointed at a running
//! platform it needs root's password (to create the item and top up the
//! user) and the pool routes open (or set `SMS_DEVICE_TOKEN`).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sms_platform::{Platform, PlatformArgs};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Http {
    base: String,
    root_password: String,
    device_token: Option<String>,
}

impl Http {
    async fn call(
        &self,
        path: &str,
        body: Value,
        auth: Option<(&str, &str)>,
    ) -> Result<Value, Error> {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        if let Some((user, pw)) = auth {
            use base64::Engine;
            let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
            req = req.header("authorization", format!("Basic {basic}"));
        }
        if let (Some(t), true) = (&self.device_token, auth.is_none()) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = client
            .request(req.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let bytes = resp.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&bytes)?)
    }

    async fn root(&self, path: &str, body: Value) -> Result<Value, Error> {
        self.call(path, body, Some(("root", &self.root_password)))
            .await
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame with this `protocol`, printing every frame received.
async fn next(ws: &mut Ws, protocol: &str) -> Result<Value, Error> {
    let wait = async {
        loop {
            let Message::Text(t) = ws.next().await.ok_or("connection closed")?? else {
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str())?;
            println!("← {v}");
            if v["protocol"] == protocol {
                return Ok::<Value, Error>(v);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| format!("no {protocol} within 10 s"))?
}

async fn send(ws: &mut Ws, v: Value) -> Result<(), Error> {
    println!("→ {v}");
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mut _platform = None;
    let _dir;
    let http = match (args.next(), args.next()) {
        (Some(base), Some(root_password)) => Http {
            base: base.trim_end_matches('/').to_owned(),
            root_password,
            device_token: std::env::var("SMS_DEVICE_TOKEN").ok(),
        },
        _ => {
            let dir = tempfile::tempdir()?;
            let mut a = PlatformArgs::for_data_dir(dir.path().join("data"));
            a.listen = "127.0.0.1:0".parse()?;
            a.root_password = Some("hub-client-root".into());
            a.outbox = Some(dir.path().join("outbox.jsonl"));
            let running = Platform::new(a).start().await?;
            let base = format!("http://{}", running.addr);
            println!("started a platform at {base}");
            _platform = Some(running);
            _dir = dir;
            Http {
                base,
                root_password: "hub-client-root".into(),
                device_token: None,
            }
        }
    };

    // The user signs up (hub HTTP); root creates the app and tops the user up.
    let user = format!("client_{}", std::process::id() % 100_000);
    let signup = http
        .call(
            "/signup",
            json!({"user": user, "password": "secret1"}),
            None,
        )
        .await?;
    let token = signup["token"]
        .as_str()
        .ok_or(format!("sign-up failed: {signup}"))?
        .to_owned();
    let item = "com.example.app";
    http.root(
        "/v2/item",
        json!({"item_id": item, "name": "Example", "price": 10, "send_price": 1}),
    )
    .await?;
    http.root("/v2/charge", json!({"user": user, "charge": 100}))
        .await?;
    // A SIM device offers its number to the pool.
    let mobile = format!("1825079{:04}", std::process::id() % 10_000);
    let phones = json!({"data": [{"mobile": mobile, "cid": "device-1", "imsi": "i", "imei": "e", "iccid": "c", "ip": "127.0.0.1"}]});
    let up = http.call("/phones", phones, None).await?;
    println!("device uploaded {mobile}: {up}");

    // The user, over the WebSocket.
    let ws_url = format!("{}/ws", http.base.replacen("http", "ws", 1));
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await?;
    send(
        &mut ws,
        json!({"protocol": "CSLogin", "token": token, "gps": ""}),
    )
    .await?;
    let login = next(&mut ws, "SCLogin").await?;
    if login["code"] != 0 {
        return Err(format!("login refused: {login}").into());
    }
    send(
        &mut ws,
        json!({"protocol": "CSMobileNum", "itemId": item, "count": 1, "customNum": mobile}),
    )
    .await?;
    let leased = next(&mut ws, "SCMobileNum").await?;
    if leased["code"] != 0 {
        return Err(format!("lease refused: {leased}").into());
    }
    let pushed = next(&mut ws, "PushMobileNum").await?;
    let number = pushed["mobileNum"].as_str().ok_or("no number")?.to_owned();

    // The device receives the app's SMS on that number and uploads it.
    let sms =
        json!({"data": [{"mobile": number, "vcode": "您的验证码是 482913", "appname": item}]});
    http.call("/vcodes", sms, None).await?;
    let got = next(&mut ws, "PushRecvMsg").await?;
    if got["mobileNum"] != number.as_str() {
        return Err(format!("the SMS went to another number: {got}").into());
    }
    println!("hub_client: received the SMS for {number}");
    ws.close(None).await?;
    if let Some(p) = _platform.take() {
        p.shutdown().await;
    }
    Ok(())
}
