//! Crash test: nothing the platform acknowledged is lost under `kill -9`.
//!
//! The test re-executes its own binary as the server (the `child_server`
//! test, which does nothing unless [`CHILD_ENV`] names a directory), drives
//! a mixed concurrent load against it from several tokio tasks, SIGKILLs it
//! at a random moment, and starts it again on the same data, many times:
//!
//! * hub sign-ups (`POST /signup`),
//! * root top-ups (`POST /v2/charge` with `op_id`s, some of them retried,
//!   across crashes too),
//! * number uploads (`POST /phones`),
//! * leases over the hub WebSocket (`CSMobileNum`),
//! * verification codes (`account_v4` `sendsms`),
//! * send tasks (`sendapi` `POST /v1/message`).
//!
//! A write counts as acknowledged only when its whole success answer was
//! read. After the last crash the server is started once more and every
//! acknowledged write is checked through the API (logins, codes that still
//! register, charges that retry as no-ops, send tasks that finish), then the
//! server is killed and the sled store is opened directly to check the
//! ledger (every acknowledged charge once, every balance the sum of its
//! entries, held = what its holds reserve, nothing negative, and nothing
//! held any more once every lease has settled and every hold expired, holds
//! orphaned by a kill mid-`CSMobileNum` included), the pool (every
//! acknowledged number present, every acknowledged lease recorded, no number
//! under two leases at once nor twice for an item, every lease settled, the
//! pool counters exact) and the send tasks (done, charged, every recipient
//! final and in the outbox).
//!
//! `SMS_CRASH_ITERATIONS` (default 15) sets the number of crashes,
//! `SMS_CRASH_SEED` the seed of the random delays and choices (the timing of
//! the kills still varies from run to run). Run with `--nocapture` to see
//! the figures; the child's log is `child.log` in the temporary directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sms_core::identity::Username;
use sms_core::ledger::{Hold, LedgerOp};
use sms_core::phone::PhoneNumber;
use sms_core::pool::{Lease, PoolNumber};
use sms_core::sending::{RecipientStatus, TaskState};
use sms_core::store::{EntryQuery, UserKey};
use sms_core::user::UserId;
use sms_platform::{Platform, PlatformArgs};
use tokio_tungstenite::tungstenite::Message;

/// Set (to the test directory) only in the child process.
const CHILD_ENV: &str = "SMS_CRASH_CHILD_DIR";
/// Lease length in the child: short, so leases end and settle during the
/// test and numbers come back for other items.
const LEASE_SECS: i64 = 2;
/// What a lease hold still reserves this long after the lease's end is
/// released (holds orphaned by a crash): short, so the test sees it.
const HOLD_GRACE_SECS: i64 = 1;
const ROOT_PASSWORD: &str = "crash-root-pw1";
const PW: &str = "secret1";
const ITEMS: [&str; 3] = ["com.crash.a", "com.crash.b", "com.crash.c"];
const CUSTOMERS: usize = 3;
const SENDERS: usize = 2;
const SETUP_CHARGE: i64 = 1_000_000;

// ---------------------------------------------------------------------------
// The child: the platform on 127.0.0.1:0, its port in a file.

/// The server process. Does nothing unless started by the crash test.
#[test]
fn child_server() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .try_init();
        let data = dir.join("data");
        let mut args = PlatformArgs::for_data_dir(data.clone());
        args.listen = "127.0.0.1:0".parse().unwrap();
        args.root_password = Some(ROOT_PASSWORD.into());
        args.outbox = Some(data.join("outbox.jsonl"));
        args.argon2_memory_kib = 64;
        args.argon2_passes = 1;
        args.lease_secs = LEASE_SECS;
        args.hold_grace_secs = HOLD_GRACE_SECS;
        args.dev_code = None;
        // The load comes from 127.0.0.1 with a different X-Forwarded-For per
        // code request, so the per-IP caps do not get in the way.
        args.trusted_proxies = vec!["127.0.0.1".into()];
        let running = Platform::new(args)
            .start()
            .await
            .expect("child platform starts");
        let tmp = dir.join("port.tmp");
        std::fs::write(&tmp, running.addr.port().to_string()).expect("port file");
        std::fs::rename(&tmp, dir.join("port")).expect("port file");
        running.wait().await;
        std::future::pending::<()>().await;
    });
}

/// The child process; killed (SIGKILL) and reaped when dropped, whatever
/// happens to the test.
struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// SIGKILL and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the server on `dir` and waits for its port.
async fn start_child(dir: &Path) -> (ChildGuard, Api) {
    let port_file = dir.join("port");
    let _ = std::fs::remove_file(&port_file);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("child.log"))
        .expect("child log");
    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_server", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("child log"))
        .stderr(log)
        .spawn()
        .expect("child starts");
    let mut guard = ChildGuard { child };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            if let Ok(port) = text.trim().parse::<u16>() {
                return (guard, Api::new(port));
            }
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!(
                "child exited before listening ({status}); log:\n{}",
                std::fs::read_to_string(dir.join("child.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "child did not listen within 60 s; log:\n{}",
            std::fs::read_to_string(dir.join("child.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Clients.

/// HTTP to one child. Any transport failure, timeout or non-JSON answer is
/// an `Err`: such a request is not acknowledged.
#[derive(Clone)]
struct Api {
    port: u16,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(port: u16) -> Self {
        Self {
            port,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Value), String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port));
        for (k, v) in headers {
            b = b.header(*k, v);
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|_| format!("{path}: non-JSON answer {status}: {bytes:?}"))?;
            Ok((status, v))
        };
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .map_err(|_| format!("{path}: timeout"))?
    }

    /// A form POST (hub, account_v4); HTTP 200 expected.
    async fn form(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> Result<Value, String> {
        let body = {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in pairs {
                s.append_pair(k, v);
            }
            s.finish()
        };
        let mut h = vec![(
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        )];
        h.extend(headers.iter().cloned());
        let (status, v) = self
            .request(Method::POST, path, &h, body.into_bytes())
            .await?;
        if status != StatusCode::OK {
            return Err(format!("{path}: HTTP {status} {v}"));
        }
        Ok(v)
    }

    /// A JSON request with optional HTTP Basic auth (sendapi style).
    async fn json(
        &self,
        method: Method,
        path: &str,
        auth: Option<(&str, &str)>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), String> {
        let mut h = vec![("content-type", "application/json".to_owned())];
        if let Some((u, p)) = auth {
            use base64::Engine;
            let t = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            h.push(("authorization", format!("Basic {t}")));
        }
        let body = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        self.request(method, path, &h, body).await
    }

    async fn root(&self, path: &str, body: Value) -> Result<(StatusCode, Value), String> {
        self.json(
            Method::POST,
            path,
            Some(("root", ROOT_PASSWORD)),
            Some(body),
        )
        .await
    }
}

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn ws_connect(port: u16) -> Result<WsStream, String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .map_err(|_| "ws connect timeout".to_owned())?
}

async fn ws_send(ws: &mut WsStream, v: Value) -> Result<(), String> {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .map_err(|e| e.to_string())
}

/// The next JSON text frame within `wait` (`Ok(None)` on timeout); `Err`
/// when the connection is gone.
async fn ws_next(ws: &mut WsStream, wait: Duration) -> Result<Option<Value>, String> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => return Err("closed".into()),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(m))) => m,
        };
        match next {
            Message::Text(t) => {
                return serde_json::from_str(t.as_str())
                    .map(Some)
                    .map_err(|e| e.to_string())
            }
            Message::Close(_) => return Err("closed".into()),
            _ => continue,
        }
    }
}

// ---------------------------------------------------------------------------
// What the server acknowledged.

#[derive(Debug, Clone)]
struct LeaseAck {
    user: String,
    mobile: String,
    item: String,
    until: i64,
}

#[derive(Debug, Clone)]
struct TaskAck {
    uuid: String,
    owner: String,
    recipients: Vec<String>,
}

#[derive(Debug, Default)]
struct Record {
    /// Acknowledged sign-ups (password [`PW`]).
    signups: Vec<String>,
    /// Every charge op_id ever sent: user, amount.
    charge_attempts: BTreeMap<String, (String, i64)>,
    charge_attempt_ids: Vec<String>,
    /// Acknowledged charge op_ids: user, amount.
    charges: BTreeMap<String, (String, i64)>,
    /// Acknowledged charge answers (retries included).
    charge_answers: u64,
    /// Acknowledged answers to a retried op_id.
    charge_retry_answers: u64,
    /// Acknowledged uploaded numbers.
    numbers: BTreeSet<String>,
    /// Acknowledged leases.
    leases: Vec<LeaseAck>,
    /// Phones with an acknowledged `sendsms`.
    codes: Vec<String>,
    /// Acknowledged send tasks.
    tasks: Vec<TaskAck>,
    /// Answers that were neither success nor an expected refusal, by kind.
    unexpected: BTreeMap<String, u64>,
    /// Requests that failed in transport (the crash), by kind.
    failed: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone)]
struct Sender {
    user: String,
    sign_id: i64,
    temp_id: i64,
}

#[derive(Debug)]
struct Shared {
    rec: Mutex<Record>,
    seq: AtomicU64,
    customers: Vec<(String, String)>,
    senders: Vec<Sender>,
}

impl Shared {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, kind: &'static str) {
        *self.rec().failed.entry(kind).or_default() += 1;
    }

    fn unexpected(&self, kind: &str, answer: &Value) {
        let key = format!("{kind}: {answer}");
        *self.rec().unexpected.entry(key).or_default() += 1;
    }
}

/// One iteration's load, against one child.
struct Load {
    shared: Arc<Shared>,
    api: Api,
    iteration: usize,
    stop: AtomicBool,
}

impl Load {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

async fn pause(rng: &mut StdRng) {
    tokio::time::sleep(Duration::from_millis(rng.gen_range(0..15))).await;
}

async fn signups(load: Arc<Load>, mut rng: StdRng) {
    while !load.stopped() {
        let user = format!("k{}u{}", load.iteration, load.shared.next());
        match load
            .api
            .form("/signup", &[("user", &user), ("password", PW)], &[])
            .await
        {
            Ok(v) if v["code"] == 0 && v["token"].is_string() => {
                load.shared.rec().signups.push(user)
            }
            Ok(v) => load.shared.unexpected("signup", &v),
            Err(_) => load.shared.failed("signup"),
        }
        pause(&mut rng).await;
    }
}

async fn charges(load: Arc<Load>, mut rng: StdRng) {
    let users: Vec<String> = load
        .shared
        .customers
        .iter()
        .map(|c| c.0.clone())
        .chain(load.shared.senders.iter().map(|s| s.user.clone()))
        .collect();
    while !load.stopped() {
        // A third of the charges retry an op_id sent before (in this run or
        // before a crash, acknowledged or not): it must apply at most once.
        let retry = {
            let rec = load.shared.rec();
            if !rec.charge_attempt_ids.is_empty() && rng.gen_bool(0.33) {
                let id =
                    rec.charge_attempt_ids[rng.gen_range(0..rec.charge_attempt_ids.len())].clone();
                let (user, amount) = rec.charge_attempts[&id].clone();
                Some((id, user, amount))
            } else {
                None
            }
        };
        let is_retry = retry.is_some();
        let (op_id, user, amount) = retry.unwrap_or_else(|| {
            let id = format!("op-{}-{}", load.iteration, load.shared.next());
            let user = users[rng.gen_range(0..users.len())].clone();
            let amount = rng.gen_range(1..=100);
            let mut rec = load.shared.rec();
            rec.charge_attempts
                .insert(id.clone(), (user.clone(), amount));
            rec.charge_attempt_ids.push(id.clone());
            (id, user, amount)
        });
        match load
            .api
            .root(
                "/v2/charge",
                json!({"user": user, "charge": amount, "op_id": op_id}),
            )
            .await
        {
            Ok((StatusCode::OK, v)) if v == json!({"message": "ok"}) => {
                let mut rec = load.shared.rec();
                rec.charges.insert(op_id, (user, amount));
                rec.charge_answers += 1;
                if is_retry {
                    rec.charge_retry_answers += 1;
                }
            }
            Ok((_, v)) => load.shared.unexpected("charge", &v),
            Err(_) => load.shared.failed("charge"),
        }
        pause(&mut rng).await;
    }
}

fn pool_entry(mobile: &str) -> Value {
    json!({"mobile": mobile, "cid": "crash-dev", "imsi": "i", "imei": "e", "iccid": "c", "ip": "10.0.0.1"})
}

async fn phones(load: Arc<Load>, mut rng: StdRng) {
    while !load.stopped() {
        let n = rng.gen_range(1..=3);
        let mobiles: Vec<String> = (0..n)
            .map(|_| format!("139{:08}", load.shared.next()))
            .collect();
        let data: Vec<Value> = mobiles.iter().map(|m| pool_entry(m)).collect();
        match load
            .api
            .json(Method::POST, "/phones", None, Some(json!({ "data": data })))
            .await
        {
            Ok((StatusCode::OK, v)) if v["code"] == 200 => {
                let used: Vec<String> = v["phonesUsed"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                if used != mobiles {
                    load.shared.unexpected("phones", &v);
                }
                load.shared.rec().numbers.extend(used);
            }
            Ok((_, v)) => load.shared.unexpected("phones", &v),
            Err(_) => load.shared.failed("phones"),
        }
        pause(&mut rng).await;
    }
}

/// Leases numbers over one WebSocket as customer `idx`. Every
/// `PushMobileNum` is a lease the server acknowledged; a session answers its
/// requests in order, so a push belongs to the last `SCMobileNum` 0 before it.
async fn leases(load: Arc<Load>, mut rng: StdRng, idx: usize) {
    let (user, token) = load.shared.customers[idx].clone();
    let Ok(mut ws) = ws_connect(load.api.port).await else {
        load.shared.failed("lease");
        return;
    };
    if ws_send(
        &mut ws,
        json!({"protocol": "CSLogin", "token": token, "gps": "0,0"}),
    )
    .await
    .is_err()
    {
        load.shared.failed("lease");
        return;
    }
    match ws_next(&mut ws, Duration::from_secs(20)).await {
        Ok(Some(v)) if v["protocol"] == "SCLogin" && v["code"] == 0 => {}
        Ok(Some(v)) => {
            load.shared.unexpected("CSLogin", &v);
            return;
        }
        _ => {
            load.shared.failed("lease");
            return;
        }
    }
    let mut current: Option<String> = None;
    let record = |load: &Load, current: &Option<String>, v: &Value| {
        let (Some(item), Some(mobile), Some(until)) = (
            current.clone(),
            v["mobileNum"].as_str(),
            v["useTimestamp"].as_i64(),
        ) else {
            load.shared.unexpected("PushMobileNum", v);
            return;
        };
        load.shared.rec().leases.push(LeaseAck {
            user: user.clone(),
            mobile: mobile.to_owned(),
            item,
            until,
        });
    };
    'outer: while !load.stopped() {
        let item = ITEMS[rng.gen_range(0..ITEMS.len())].to_owned();
        let count = rng.gen_range(1..=3);
        if ws_send(
            &mut ws,
            json!({"protocol": "CSMobileNum", "itemId": item, "count": count}),
        )
        .await
        .is_err()
        {
            load.shared.failed("lease");
            break;
        }
        let code = loop {
            match ws_next(&mut ws, Duration::from_secs(20)).await {
                Ok(Some(v)) if v["protocol"] == "PushMobileNum" => record(&load, &current, &v),
                Ok(Some(v)) if v["protocol"] == "SCMobileNum" => {
                    break v["code"].as_i64().unwrap_or(i64::MIN)
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    load.shared.failed("lease");
                    break 'outer;
                }
            }
        };
        match code {
            0 => {
                current = Some(item);
                let mut got = 0;
                while got < count {
                    match ws_next(&mut ws, Duration::from_millis(300)).await {
                        Ok(Some(v)) if v["protocol"] == "PushMobileNum" => {
                            record(&load, &current, &v);
                            got += 1;
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'outer,
                    }
                }
            }
            // No number free for this item right now.
            -7 => {}
            c => load.shared.unexpected("CSMobileNum", &json!(c)),
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..40))).await;
    }
}

async fn codes(load: Arc<Load>, mut rng: StdRng) {
    while !load.stopped() {
        let n = load.shared.next();
        // Spread over 7-digit prefixes: the SMS-pumping breaker counts
        // codes per prefix.
        let phone = format!("135{:04}{:04}", n % 10_000, (n / 10_000) % 10_000);
        let ip = format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255);
        match load
            .api
            .form(
                &format!("/api/v4.0/sendsms/{phone}?expect=0"),
                &[],
                &[("x-forwarded-for", ip)],
            )
            .await
        {
            Ok(v) if v["code"] == 200 => load.shared.rec().codes.push(phone),
            Ok(v) => load.shared.unexpected("sendsms", &v),
            Err(_) => load.shared.failed("sendsms"),
        }
        pause(&mut rng).await;
    }
}

async fn sends(load: Arc<Load>, mut rng: StdRng) {
    while !load.stopped() {
        let s = load.shared.senders[rng.gen_range(0..load.shared.senders.len())].clone();
        let k = rng.gen_range(1..=4);
        let mobiles: Vec<String> = (0..k)
            .map(|_| format!("137{:08}", rng.gen_range(0..100_000_000u64)))
            .collect();
        let body = json!({"sign_id": s.sign_id, "temp_id": s.temp_id, "mobiles": mobiles, "params": {"code": "123456"}});
        match load
            .api
            .json(Method::POST, "/v1/message", Some((&s.user, PW)), Some(body))
            .await
        {
            Ok((StatusCode::OK, v)) if v["uuid"].is_string() => {
                load.shared.rec().tasks.push(TaskAck {
                    uuid: v["uuid"].as_str().unwrap().to_owned(),
                    owner: s.user.clone(),
                    recipients: mobiles,
                })
            }
            Ok((_, v)) => load.shared.unexpected("send", &v),
            Err(_) => load.shared.failed("send"),
        }
        pause(&mut rng).await;
    }
}

// ---------------------------------------------------------------------------
// Setup (one child run, not interrupted).

async fn setup(api: &Api) -> (Vec<(String, String)>, Vec<Sender>, Record) {
    let mut rec = Record::default();
    let (s, v) = api
        .request(Method::PUT, "/setsize?newsize=1000000", &[], vec![])
        .await
        .expect("setsize");
    assert_eq!((s, &v["code"]), (StatusCode::OK, &json!(200)), "{v}");
    for item in ITEMS {
        let r = api
            .root(
                "/v2/item",
                json!({"item_id": item, "name": "崩溃", "price": 1, "send_price": 1}),
            )
            .await
            .expect("item");
        assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
    }
    let signup = |name: String| async move {
        let v = api
            .form("/signup", &[("user", &name), ("password", PW)], &[])
            .await
            .expect("signup");
        assert_eq!(v["code"], 0, "{v}");
        (name, v["token"].as_str().unwrap().to_owned())
    };
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        customers.push(signup(format!("cust{i}")).await);
    }
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (user, _) = signup(format!("sender{i}")).await;
        let auth = Some((user.as_str(), PW));
        let (s, v) = api
            .json(
                Method::POST,
                "/v1/signature",
                auth,
                Some(json!({"signature": format!("崩溃{i}"), "source": "app"})),
            )
            .await
            .expect("signature");
        assert_eq!(s, StatusCode::OK, "{v}");
        let sign_id = v["sign_id"].as_i64().unwrap();
        let (s, v) = api
            .json(
                Method::POST,
                "/v1/template",
                auth,
                Some(json!({"name": "code", "template": "验证码${code}", "type": 1, "description": "login", "sign_id": sign_id})),
            )
            .await
            .expect("template");
        assert_eq!(s, StatusCode::OK, "{v}");
        let temp_id = v["temp_id"].as_i64().unwrap();
        for (path, key, id) in [
            ("/v2/signreview", "sign_id", sign_id),
            ("/v2/tempreview", "temp_id", temp_id),
        ] {
            let r = api
                .root(path, json!({key: id, "audit_status": "passed"}))
                .await
                .expect("review");
            assert_eq!(r.0, StatusCode::OK, "{}", r.1);
        }
        senders.push(Sender {
            user,
            sign_id,
            temp_id,
        });
    }
    let users: Vec<String> = customers
        .iter()
        .map(|c| c.0.clone())
        .chain(senders.iter().map(|s| s.user.clone()))
        .collect();
    for user in users {
        let op = format!("setup-{user}");
        let r = api
            .root(
                "/v2/charge",
                json!({"user": user, "charge": SETUP_CHARGE, "op_id": op}),
            )
            .await
            .expect("charge");
        assert_eq!(r, (StatusCode::OK, json!({"message": "ok"})));
        rec.charge_attempts
            .insert(op.clone(), (user.clone(), SETUP_CHARGE));
        rec.charges.insert(op, (user, SETUP_CHARGE));
        rec.charge_answers += 1;
    }
    rec.signups.extend(customers.iter().map(|c| c.0.clone()));
    rec.signups.extend(senders.iter().map(|s| s.user.clone()));
    (customers, senders, rec)
}

// ---------------------------------------------------------------------------
// Checks through the API.

async fn login_ok(api: &Api, user: &str) {
    let v = api
        .form("/login", &[("user", user), ("password", PW)], &[])
        .await
        .unwrap_or_else(|e| panic!("login {user}: {e}"));
    assert_eq!(
        v["code"], 0,
        "acknowledged sign-up {user} cannot log in: {v}"
    );
}

async fn task_answer(api: &Api, t: &TaskAck) -> Value {
    let (s, v) = api
        .json(
            Method::GET,
            &format!("/v1/message?uuid={}", t.uuid),
            Some((&t.owner, PW)),
            None,
        )
        .await
        .unwrap_or_else(|e| panic!("task {}: {e}", t.uuid));
    assert_eq!(
        s,
        StatusCode::OK,
        "acknowledged send task {} is unknown: {v}",
        t.uuid
    );
    v
}

/// Outbox lines (unparseable ones, a line cut by the kill, are counted).
fn outbox(dir: &Path) -> (Vec<Value>, usize) {
    let text = std::fs::read_to_string(dir.join("data").join("outbox.jsonl")).unwrap_or_default();
    let mut bad = 0;
    let mut lines = Vec::new();
    for l in text.lines() {
        match serde_json::from_str::<Value>(l) {
            Ok(v) => lines.push(v),
            Err(_) => bad += 1,
        }
    }
    (lines, bad)
}

#[allow(
    clippy::disallowed_methods,
    reason = "the child server runs on the system clock"
)]
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---------------------------------------------------------------------------
// The test.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_write() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let started = Instant::now();
    let iterations: usize = std::env::var("SMS_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("SMS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5);
    println!("crash test: {iterations} iterations, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();

    // Setup, then the first crash.
    let (mut child, api) = start_child(&dir).await;
    let (customers, senders, rec) = setup(&api).await;
    child.kill();
    let shared = Arc::new(Shared {
        rec: Mutex::new(rec),
        seq: AtomicU64::new(0),
        customers,
        senders,
    });

    let mut last_kill = unix_now();
    let mut kills = vec![last_kill];
    let mut checked_signups = 0;
    let mut checked_tasks = 0;
    for iteration in 1..=iterations {
        let (mut child, api) = start_child(&dir).await;
        // What the previous runs acknowledged is there after the restart.
        let (new_users, new_tasks) = {
            let rec = shared.rec();
            (
                rec.signups[checked_signups..].to_vec(),
                rec.tasks[checked_tasks..].to_vec(),
            )
        };
        for u in &new_users {
            login_ok(&api, u).await;
        }
        for t in &new_tasks {
            task_answer(&api, t).await;
        }
        checked_signups += new_users.len();
        checked_tasks += new_tasks.len();

        let load = Arc::new(Load {
            shared: shared.clone(),
            api: api.clone(),
            iteration,
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        let mut sub = || StdRng::seed_from_u64(rng.gen());
        for _ in 0..2 {
            handles.push(tokio::spawn(signups(load.clone(), sub())));
            handles.push(tokio::spawn(charges(load.clone(), sub())));
        }
        handles.push(tokio::spawn(phones(load.clone(), sub())));
        for idx in 0..CUSTOMERS.min(2) {
            handles.push(tokio::spawn(leases(load.clone(), sub(), idx)));
        }
        handles.push(tokio::spawn(codes(load.clone(), sub())));
        handles.push(tokio::spawn(sends(load.clone(), sub())));
        let delay = rng.gen_range(150..=700);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        child.kill();
        last_kill = unix_now();
        kills.push(last_kill);
        load.stop.store(true, Ordering::Relaxed);
        for h in handles {
            match tokio::time::timeout(Duration::from_secs(30), h).await {
                Ok(r) => r.expect("load task panicked"),
                Err(_) => panic!("a load task did not stop after the kill"),
            }
        }
        drop(child);
    }

    // Last start: check everything through the API.
    let (mut child, api) = start_child(&dir).await;
    let rec = std::mem::take(&mut *shared.rec());
    for u in &rec.signups {
        login_ok(&api, u).await;
    }
    // Every acknowledged op_id retried once more: answered ok, applied never
    // again (checked in the store below).
    for (op, (user, amount)) in &rec.charges {
        let r = api
            .root(
                "/v2/charge",
                json!({"user": user, "charge": amount, "op_id": op}),
            )
            .await
            .expect("charge retry");
        assert_eq!(
            r,
            (StatusCode::OK, json!({"message": "ok"})),
            "retry of {op}"
        );
    }
    // Every acknowledged code is in the outbox and still registers.
    let (lines, bad_lines) = outbox(&dir);
    let mut last_code: HashMap<&str, &str> = HashMap::new();
    for l in &lines {
        if let (Some(to), Some(code), Some("register")) =
            (l["to"].as_str(), l["code"].as_str(), l["purpose"].as_str())
        {
            last_code.insert(to, code);
        }
    }
    for (i, phone) in rec.codes.iter().enumerate() {
        let code = last_code
            .get(phone.as_str())
            .unwrap_or_else(|| panic!("acknowledged code to {phone} is not in the outbox"));
        let v = api
            .form(
                "/api/v4.0/register",
                &[
                    ("phone", phone),
                    ("name", "崩溃"),
                    ("password", "pass123"),
                    ("device_identifier", "crash"),
                    ("code", code),
                ],
                &[("x-forwarded-for", format!("10.255.{}.{}", i / 256, i % 256))],
            )
            .await
            .expect("register");
        assert_eq!(
            v["code"], 200,
            "acknowledged code to {phone} does not register: {v}"
        );
    }
    // Every acknowledged send task finishes, every recipient final.
    let deadline = Instant::now() + Duration::from_secs(60);
    for t in &rec.tasks {
        loop {
            let v = task_answer(&api, t).await;
            if v["status"] == "done" {
                assert_eq!(v["pending"], 0, "{v}");
                assert_eq!(v["total"], t.recipients.len(), "{v}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "acknowledged task {} is not done after restart: {v}",
                t.uuid
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Let every lease end and the sweeper settle it, and every hold expire.
    let settle_at = last_kill + LEASE_SECS + HOLD_GRACE_SECS + 3;
    while unix_now() < settle_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.kill();
    drop(child);

    // The store itself.
    let store = Arc::new(sms_store_sled::SledStore::open(dir.join("data").join("db")).unwrap());
    let db = store.db().clone();
    let stores = store.clone().stores();
    let user_id = |name: String| {
        let users = stores.users.clone();
        async move {
            users
                .user(&UserKey::Username(Username::parse(&name).unwrap()))
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged user {name} missing from the store"))
                .id
        }
    };
    for u in &rec.signups {
        user_id(u.clone()).await;
    }

    // Ledger: each acknowledged op_id applied, once, as sent.
    for (op, (user, amount)) in &rec.charges {
        let e = stores
            .ledger
            .entries(&EntryQuery::Op(format!("charge:{op}")))
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("acknowledged charge {op} missing from the ledger"));
        assert_eq!(e.request.user, user_id(user.clone()).await, "{op}");
        assert_eq!(e.request.op, LedgerOp::Charge { amount: *amount }, "{op}");
    }
    // Every balance is the sum of its entries; holds are what they reserve.
    let mut holds_by_user: HashMap<UserId, i64> = HashMap::new();
    let mut stuck_holds = Vec::new();
    for kv in db.open_tree("holds").unwrap().iter() {
        let (_, v) = kv.unwrap();
        let h: Hold = serde_json::from_slice(&v).unwrap();
        assert!(h.remaining >= 0, "{h:?}");
        *holds_by_user.entry(h.user.clone()).or_default() += h.remaining;
        if h.remaining > 0 {
            stuck_holds.push(h);
        }
    }
    let mut balances_checked = 0;
    let mut expired_releases = 0;
    for kv in db.open_tree("balances").unwrap().iter() {
        let (k, _) = kv.unwrap();
        let user = UserId::from_string(String::from_utf8(k.to_vec()).unwrap());
        let b = stores.ledger.balance(&user).await.unwrap();
        let entries = stores
            .ledger
            .entries(&EntryQuery::User(user.clone()))
            .await
            .unwrap();
        let sum: i64 = entries.iter().map(|e| e.request.op.total_delta()).sum();
        assert_eq!(b.total, sum, "{user:?}: total is not the sum of entries");
        assert!(
            b.held >= 0 && b.available() >= 0,
            "{user:?}: negative {b:?}"
        );
        assert_eq!(
            b.held,
            holds_by_user.get(&user).copied().unwrap_or(0),
            "{user:?}: held is not what its holds reserve"
        );
        let mut seen = BTreeSet::new();
        for e in &entries {
            assert!(seen.insert(e.request.op_id.clone()), "entry twice: {e:?}");
            if e.request.op_id.starts_with("expire:") {
                expired_releases += 1;
            }
            if let Some(op) = e.request.op_id.strip_prefix("charge:") {
                let (name, amount) = rec
                    .charge_attempts
                    .get(op)
                    .unwrap_or_else(|| panic!("charge nobody sent: {e:?}"));
                assert_eq!(e.request.op, LedgerOp::Charge { amount: *amount });
                assert_eq!(user, user_id(name.clone()).await);
            }
        }
        balances_checked += 1;
    }

    // Pool: acknowledged numbers present; leases recorded, never two at once.
    for m in &rec.numbers {
        let p = PhoneNumber::parse_cn_mobile(m).unwrap();
        assert!(
            stores.pool.number(&p).await.unwrap().is_some(),
            "acknowledged number {m} missing from the pool"
        );
    }
    let mut all_leases: Vec<Lease> = Vec::new();
    for kv in db.open_tree("leases").unwrap().iter() {
        let (_, v) = kv.unwrap();
        all_leases.push(serde_json::from_slice(&v).unwrap());
    }
    for a in &rec.leases {
        let user = user_id(a.user.clone()).await;
        let p = PhoneNumber::parse_cn_mobile(&a.mobile).unwrap();
        assert!(
            all_leases
                .iter()
                .any(|l| l.mobile == p && l.user == user && l.item == a.item && l.until == a.until),
            "acknowledged lease missing: {a:?}"
        );
    }
    let mut by_mobile: BTreeMap<String, Vec<&Lease>> = BTreeMap::new();
    for l in &all_leases {
        by_mobile.entry(l.mobile.to_string()).or_default().push(l);
        assert!(l.settled, "lease not settled long after its end: {l:?}");
        if !l.charged && l.price > 0 {
            let r = stores
                .ledger
                .entries(&EntryQuery::Op(format!("release:{}", l.id)))
                .await
                .unwrap()
                .into_iter()
                .next();
            assert!(r.is_some(), "settled lease never released: {l:?}");
        }
    }
    for (mobile, ls) in &mut by_mobile {
        ls.sort_by_key(|l| (l.started_at, l.until));
        for w in ls.windows(2) {
            assert!(
                w[0].until <= w[1].started_at,
                "{mobile} leased twice at once: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
        let items: BTreeSet<&str> = ls.iter().map(|l| l.item.as_str()).collect();
        assert_eq!(items.len(), ls.len(), "{mobile} leased twice for an item");
    }
    let mut numbers = 0u64;
    for kv in db.open_tree("pool_numbers").unwrap().iter() {
        let (_, v) = kv.unwrap();
        let n: PoolNumber = serde_json::from_slice(&v).unwrap();
        numbers += 1;
        let ls = by_mobile
            .get(&n.info.mobile.to_string())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let items: BTreeSet<&str> = ls.iter().map(|l| l.item.as_str()).collect();
        let used: BTreeSet<&str> = n.used_for.iter().map(String::as_str).collect();
        assert_eq!(items, used, "{n:?}: used_for is not its leases' items");
        if let Some(r) = &n.lease {
            assert!(
                ls.iter().any(|l| l.id == r.lease_id
                    && l.user == r.user
                    && l.item == r.item
                    && l.until == r.until),
                "{n:?}: its lease is not on record"
            );
        }
    }
    let meta = db.open_tree("pool_meta").unwrap();
    let counter = |k: &str| -> u64 {
        meta.get(k)
            .unwrap()
            .map(|v| serde_json::from_slice(&v).unwrap())
            .unwrap_or(0)
    };
    assert_eq!(counter("numbers"), numbers, "pool number count");
    assert_eq!(
        counter("open_leases"),
        all_leases.iter().filter(|l| !l.settled).count() as u64,
        "open lease count"
    );

    // Send tasks: done, every recipient final, each message in the outbox.
    let (lines, _) = outbox(&dir);
    let sent_ids: BTreeSet<&str> = lines.iter().filter_map(|l| l["id"].as_str()).collect();
    let mut recipients = 0;
    for t in &rec.tasks {
        let task = stores
            .sending
            .task(&t.uuid)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged task {} missing", t.uuid));
        assert_eq!(task.owner, user_id(t.owner.clone()).await);
        let want: Vec<PhoneNumber> = t
            .recipients
            .iter()
            .map(|m| PhoneNumber::parse_cn_mobile(m).unwrap())
            .collect();
        assert_eq!(task.recipients, want, "{}", t.uuid);
        assert_eq!(task.state, TaskState::Done, "{}", t.uuid);
        let statuses = stores.sending.recipient_statuses(&t.uuid).await.unwrap();
        assert_eq!(statuses.len(), want.len(), "{}", t.uuid);
        for (i, s) in statuses.iter().enumerate() {
            assert!(
                !matches!(s, RecipientStatus::Pending),
                "{} recipient {i} still pending",
                t.uuid
            );
            assert!(
                sent_ids.contains(task.idempotency_key(i).as_str()),
                "{} recipient {i} never reached the outbox",
                t.uuid
            );
            recipients += 1;
        }
        let charge = stores
            .ledger
            .entries(&EntryQuery::Op(task.charge_op()))
            .await
            .unwrap()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("acknowledged task {} never charged", t.uuid));
        assert_eq!(
            charge.request.op,
            LedgerOp::Debit {
                amount: task.cost()
            }
        );
    }

    // Figures.
    let leases_by_item = rec.leases.iter().fold(BTreeMap::new(), |mut m, l| {
        *m.entry(l.item.as_str()).or_insert(0) += 1;
        m
    });
    println!(
        "crash test: {iterations} kills in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "  sign-ups acknowledged and verified: {}",
        rec.signups.len()
    );
    println!(
        "  charges: {} distinct op_ids verified ({} acknowledged answers, {} of them to retries; {} op_ids sent)",
        rec.charges.len(),
        rec.charge_answers,
        rec.charge_retry_answers,
        rec.charge_attempts.len()
    );
    println!("  numbers uploaded and verified: {}", rec.numbers.len());
    println!(
        "  leases verified: {} {leases_by_item:?} ({} lease records, {} numbers in the pool)",
        rec.leases.len(),
        all_leases.len(),
        numbers
    );
    println!("  codes verified (outbox + register): {}", rec.codes.len());
    println!(
        "  send tasks verified done: {} ({recipients} recipients)",
        rec.tasks.len()
    );
    println!("  balances checked: {balances_checked}");
    println!("  requests cut by the kills: {:?}", rec.failed);
    println!("  outbox lines that are not JSON: {bad_lines}");
    if !rec.unexpected.is_empty() {
        println!("  unexpected answers: {:#?}", rec.unexpected);
    }
    println!("  lease holds orphaned by a kill, released on expiry: {expired_releases}");
    println!(
        "  holds still reserving after every lease settled and every hold expired: {}",
        stuck_holds.len()
    );
    for h in &stuck_holds {
        let ls = all_leases.iter().filter(|l| l.hold_id == h.hold_id).count();
        let at = stores
            .ledger
            .entries(&EntryQuery::Op(h.hold_id.clone()))
            .await
            .unwrap()
            .into_iter()
            .next()
            .map(|e| e.request.at);
        let unused = stores
            .ledger
            .entries(&EntryQuery::Op(format!("{}:unused", h.hold_id)))
            .await
            .unwrap()
            .into_iter()
            .next()
            .is_some();
        let near_kill = at.is_some_and(|at| kills.iter().any(|k| (k - at).abs() <= 1));
        println!(
            "    {} remaining {} ({ls} leases, unused released: {unused}, held at {at:?}, within 1 s of a kill: {near_kill})",
            h.hold_id, h.remaining
        );
    }
    assert!(rec.signups.len() > CUSTOMERS + SENDERS, "no sign-up load");
    assert!(rec.charges.len() > CUSTOMERS + SENDERS, "no charge load");
    assert!(rec.charge_retry_answers > 0, "no retried charge");
    assert!(!rec.numbers.is_empty(), "no number load");
    assert!(!rec.leases.is_empty(), "no lease load");
    assert!(!rec.codes.is_empty(), "no code load");
    assert!(!rec.tasks.is_empty(), "no send load");
    // A lease's price is held before the number is leased (PoolService::lease:
    // LedgerOp::Hold, then PhonePool::lease, then the release of the unused
    // part). A kill in between leaves a hold that no lease refers to; only
    // its expiry releases it. Once every lease has ended and settled and
    // every hold has expired, nothing may still be held.
    assert!(
        stuck_holds.is_empty(),
        "{} lease holds still reserve money after every lease ended and settled \
         and every hold expired (listed above): a crash inside CSMobileNum leaks the hold",
        stuck_holds.len()
    );
}
