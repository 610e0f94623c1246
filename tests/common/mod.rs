//! Test harness: starts the real platform on a free port over a fresh sled
//! directory, and speaks HTTP to it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sms_core::gateway::MessageGateway;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sms_platform::{Platform, PlatformArgs, RunningPlatform};

pub const ROOT_PASSWORD: &str = "root-pass-123";

pub struct TestPlatform {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub outbox: PathBuf,
    running: Option<RunningPlatform>,
    /// The `--carriers` file, kept across restarts.
    carriers: Option<PathBuf>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// Arguments for a test platform: a free port, cheap argon2 (the production
/// default is set by the flags' defaults), an outbox file.
pub fn test_args(dir: &std::path::Path) -> PlatformArgs {
    let mut a = PlatformArgs::for_data_dir(dir.join("data"));
    a.listen = "127.0.0.1:0".parse().unwrap();
    a.outbox = Some(dir.join("outbox.jsonl"));
    a.root_password = Some(ROOT_PASSWORD.into());
    a.argon2_memory_kib = 64;
    a.argon2_passes = 1;
    a
}

impl TestPlatform {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(f: impl FnOnce(&mut PlatformArgs)) -> Self {
        Self::start_full(f, None).await
    }

    /// With a custom carrier gateway for send tasks.
    pub async fn start_with_gateway(gateway: Arc<dyn MessageGateway>) -> Self {
        Self::start_full(|_| {}, Some(gateway)).await
    }

    async fn start_full(
        f: impl FnOnce(&mut PlatformArgs),
        gateway: Option<Arc<dyn MessageGateway>>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut args = test_args(dir.path());
        f(&mut args);
        let outbox = args.outbox.clone().unwrap();
        let carriers = args.carriers.clone();
        let mut platform = Platform::new(args);
        if let Some(g) = gateway {
            platform = platform.with_gateway(g);
        }
        let running = platform.start().await.expect("platform starts");
        Self {
            addr: running.addr,
            dir,
            outbox,
            running: Some(running),
            carriers,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client of a platform another process runs at `addr`, whose outbox
    /// is `outbox` (no server of its own: `core`, `restart` and `stop` do
    /// not apply).
    pub fn attach(addr: SocketAddr, outbox: PathBuf) -> Self {
        Self {
            addr,
            dir: tempfile::tempdir().unwrap(),
            outbox,
            running: None,
            carriers: None,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// Stops the server and starts it again on the same data.
    pub async fn restart(&mut self) {
        self.restart_with_gateway(None).await
    }

    /// Stops the server (cancelling background work mid-flight) and starts
    /// it again on the same data, optionally with another gateway.
    pub async fn restart_with_gateway(&mut self, gateway: Option<Arc<dyn MessageGateway>>) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        let mut args = test_args(self.dir.path());
        args.listen = self.addr.into();
        args.carriers = self.carriers.clone();
        let mut platform = Platform::new(args);
        if let Some(g) = gateway {
            platform = platform.with_gateway(g);
        }
        let running = platform.start().await.expect("platform restarts");
        self.addr = running.addr;
        self.running = Some(running);
    }

    /// The `--metrics-listen` address, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.running.as_ref().expect("running").metrics_addr
    }

    /// The core behind the running server.
    pub fn core(&self) -> &sms_core::Core {
        self.running.as_ref().expect("running").core()
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// Any request; returns status and body bytes.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let headers: Vec<(&str, String)> = content_type
            .map(|ct| vec![("content-type", ct.to_owned())])
            .unwrap_or_default();
        self.raw_with(method, path, &headers, body).await
    }

    /// Any request with headers; returns status and body bytes.
    pub async fn raw_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> (StatusCode, Bytes) {
        let mut b = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let resp = self
            .client
            .request(b.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .expect("request answered");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    /// A request whose answer must be JSON; returns status and value.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let (status, body) = self.raw(method, path, content_type, body).await;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: non-JSON answer {status}: {body:?}"));
        assert!(!status.is_server_error(), "{path}: {status} {v}");
        (status, v)
    }

    /// A JSON request with HTTP Basic auth (sendapi style); status and body.
    pub async fn basic(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some((u, p)) = auth {
            use base64::Engine;
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            headers.push(("authorization", format!("Basic {token}")));
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let (status, bytes) = self.raw_with(method, path, &headers, body).await;
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| panic!("{path}: non-JSON answer {status}: {bytes:?}"));
        assert!(!status.is_server_error(), "{path}: {status} {v}");
        (status, v)
    }

    /// As root.
    pub async fn root(&self, method: Method, path: &str, body: Value) -> (StatusCode, Value) {
        self.basic(method, path, Some(("root", ROOT_PASSWORD)), Some(body))
            .await
    }

    pub async fn post_json(&self, path: &str, body: Value) -> Value {
        let (s, v) = self
            .call(
                Method::POST,
                path,
                Some("application/json"),
                body.to_string().into_bytes(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v
    }

    pub async fn post_form(&self, path: &str, pairs: &[(&str, &str)]) -> Value {
        let body = form(pairs);
        let (s, v) = self
            .call(
                Method::POST,
                path,
                Some("application/x-www-form-urlencoded"),
                body.into_bytes(),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{path}: {v}");
        v
    }

    pub async fn get(&self, path: &str, pairs: &[(&str, &str)]) -> Value {
        let q = form(pairs);
        let full = if q.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{q}")
        };
        let (s, v) = self.call(Method::GET, &full, None, Vec::new()).await;
        assert_eq!(s, StatusCode::OK, "{full}: {v}");
        v
    }

    /// Every outbox line so far.
    pub fn outbox_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.outbox)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("outbox line is JSON"))
            .collect()
    }

    /// The code of the newest outbox message to `to`.
    pub fn last_code(&self, to: &str) -> String {
        self.outbox_lines()
            .into_iter()
            .rev()
            .find(|m| m["to"] == to)
            .and_then(|m| m["code"].as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("no code sent to {to}"))
    }

    /// Stops the server and hands back its directory (data and outbox).
    pub async fn stop_keep_data(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A code other than `code` (same length).
pub fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                char::from(c as u8 + 1)
            }
        })
        .collect()
}

/// A WebSocket client of the platform's `/ws`.
pub struct Ws {
    stream: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

impl Ws {
    pub async fn connect(t: &TestPlatform) -> Self {
        let tcp = tokio::net::TcpStream::connect(t.addr).await.unwrap();
        let (stream, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", t.addr), tcp)
            .await
            .expect("websocket handshake");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        Self { stream }
    }

    pub async fn send(&mut self, v: Value) {
        use futures_util::SinkExt;
        self.stream
            .send(tokio_tungstenite::tungstenite::Message::Text(
                v.to_string().into(),
            ))
            .await
            .unwrap();
    }

    /// The next JSON frame (pings are skipped), within 10 s.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(std::time::Duration::from_secs(10))
            .await
            .expect("a frame within 10 s")
    }

    /// The next JSON frame within `wait`, or None.
    pub async fn try_recv(&mut self, wait: std::time::Duration) -> Option<Value> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()??;
            match next.ok()? {
                Message::Text(t) => {
                    return Some(serde_json::from_str(t.as_str()).expect("JSON frame"))
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    /// The next frame whose `protocol` is `name`; frames before it are
    /// collected into `skipped`.
    pub async fn recv_protocol(&mut self, name: &str, skipped: &mut Vec<Value>) -> Value {
        loop {
            let v = self.recv().await;
            if v["protocol"] == name {
                return v;
            }
            skipped.push(v);
        }
    }

    /// Sends a request and returns its response (pushes before it are
    /// collected into `skipped`).
    pub async fn request(&mut self, v: Value, response: &str, skipped: &mut Vec<Value>) -> Value {
        self.send(v).await;
        self.recv_protocol(response, skipped).await
    }

    /// CSLogin; returns SCLogin.
    pub async fn login(&mut self, token: &str) -> Value {
        let mut skipped = Vec::new();
        let r = self
            .request(
                serde_json::json!({"protocol": "CSLogin", "token": token, "gps": "0,0"}),
                "SCLogin",
                &mut skipped,
            )
            .await;
        assert!(skipped.is_empty(), "{skipped:?}");
        r
    }
}
