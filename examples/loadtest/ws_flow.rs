//! Flow (f): the `hub` WebSocket with many logged-in sessions, beside a bare
//! tokio-tungstenite server in the same run.
//!
//! Each server runs in a child process of this harness (the harness starts
//! itself with `--serve-ws-child platform|baseline`), so its resident memory
//! is its own: the figure per session is the growth of the child's `VmRSS`
//! from before the first connection to when all are logged in, over their
//! number.
//!
//! * platform: sled in a temporary directory, production argon2, root set
//!   up, `127.0.0.1` trusted as a proxy (each request and handshake carries
//!   its own `X-Forwarded-For`, so per-IP limits see many clients). Users of
//!   50 sessions each (the per-user cap) sign up and log in over hub HTTP;
//!   every session logs in over `/ws` (`CSLogin`); the first session of each
//!   user leases one number. Then, with every session connected, a device
//!   uploads one code per user (`POST /vcodes`, a few at a time) and the
//!   time to `PushRecvMsg` on every session of that user is measured. Last,
//!   the platform is told to stop: the time until every session has its
//!   `PushKickout` is "kick all".
//! * baseline: a bare tokio-tungstenite server (4 KiB read and write
//!   buffers) that keeps each connection and, when told to stop, sends one
//!   text frame to every connection; the time until every client has it is
//!   the bare broadcast.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::SinkExt;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Sessions per user: the platform's per-user cap.
const PER_USER: usize = 50;
/// The app every lease is for.
const ITEM: &str = "com.load.ws";
/// Root's password in the child platform.
const ROOT_PW: &str = "ws-load-root";
/// Connections opened at once.
const CONNECT_AT_ONCE: usize = 256;
/// Code uploads in flight at once during the push measurement.
const UPLOADS_AT_ONCE: usize = 4;
/// Longest any step may take before the flow gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(300);

/// The figures of one run of flow (f).
#[derive(Debug, Clone, serde::Serialize)]
pub struct WsFigures {
    /// Logged-in sessions held at once.
    pub sessions: usize,
    /// Platform child RSS growth per logged-in session, KiB.
    pub platform_kib_per_session: f64,
    /// Bare tokio-tungstenite child RSS growth per connection, KiB.
    pub baseline_kib_per_connection: f64,
    /// Upload → `PushRecvMsg` on every session of the user, ms.
    pub push_p50_ms: f64,
    /// Same, 99th percentile, ms.
    pub push_p99_ms: f64,
    /// Upload → `PushRecvMsg` on the user's first session, p50 ms.
    pub push_first_p50_ms: f64,
    /// Uploads measured.
    pub push_samples: usize,
    /// Stop → every session has `PushKickout`, ms.
    pub kick_all_ms: f64,
    /// Stop → every bare client has the broadcast frame, ms.
    pub baseline_broadcast_ms: f64,
    /// Time to open and log in every session, s.
    pub login_all_secs: f64,
}

impl WsFigures {
    /// The figures as a table.
    pub fn table(&self) -> String {
        format!(
            "flow (f): hub WebSocket, {} logged-in sessions ({} users × {})\n\
             | figure | platform | bare tokio-tungstenite | ratio |\n\
             |---|---:|---:|---:|\n\
             | RSS per idle session, KiB | {:.1} | {:.1} | {:.2}× |\n\
             | kick all out / broadcast to all, ms | {:.1} | {:.1} | {:.2}× |\n\
             | upload → PushRecvMsg on all of a user's sessions, p50 / p99 ms | {:.2} / {:.2} | | |\n\
             | upload → PushRecvMsg on the first session, p50 ms | {:.2} | | |\n\
             | open + log in all sessions, s | {:.1} | | |\n\
             ({} uploads measured)\n",
            self.sessions,
            self.sessions / PER_USER,
            PER_USER,
            self.platform_kib_per_session,
            self.baseline_kib_per_connection,
            self.platform_kib_per_session / self.baseline_kib_per_connection.max(0.001),
            self.kick_all_ms,
            self.baseline_broadcast_ms,
            self.kick_all_ms / self.baseline_broadcast_ms.max(0.001),
            self.push_p50_ms,
            self.push_p99_ms,
            self.push_first_p50_ms,
            self.login_all_secs,
            self.push_samples,
        )
    }
}

// ----- the children ----------------------------------------------------------

/// Runs a child server (`platform` or `baseline`) until a line `STOP` on
/// stdin; prints `LISTENING <addr>` first. Called from `main` when the
/// harness is started with `--serve-ws-child`.
pub fn serve_child(kind: &str, sessions: usize) -> std::process::ExitCode {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        match kind {
            "platform" => serve_platform(sessions).await,
            "baseline" => serve_baseline().await,
            other => {
                eprintln!("unknown child {other}");
                return std::process::ExitCode::FAILURE;
            }
        }
        std::process::ExitCode::SUCCESS
    })
}

async fn stop_line() {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if line.trim() == "STOP" {
            return;
        }
    }
}

async fn serve_platform(sessions: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = sms_platform::PlatformArgs::for_data_dir(dir.path().join("data"));
    a.listen = "127.0.0.1:0".parse().expect("addr");
    a.outbox = Some(dir.path().join("outbox.jsonl"));
    a.root_password = Some(ROOT_PW.into());
    a.trusted_proxies = vec!["127.0.0.1".into()];
    a.max_connections = sessions + 1_000;
    let running = sms_platform::Platform::new(a)
        .start()
        .await
        .expect("platform starts");
    println!("LISTENING {}", running.addr);
    stop_line().await;
    running.shutdown().await;
    println!("STOPPED");
}

async fn serve_baseline() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    println!("LISTENING {}", listener.local_addr().expect("addr"));
    let (tx, _) = tokio::sync::broadcast::channel::<Arc<str>>(4);
    let accept_tx = tx.clone();
    let accept = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let mut rx = accept_tx.subscribe();
            tokio::spawn(async move {
                let mut config = WebSocketConfig::default();
                config.read_buffer_size = 4096;
                config.write_buffer_size = 4096;
                let Ok(ws) =
                    tokio_tungstenite::accept_async_with_config(stream, Some(config)).await
                else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                loop {
                    tokio::select! {
                        m = rx.recv() => {
                            let Ok(text) = m else { return };
                            let _ = sink.send(Message::text(text.to_string())).await;
                            let _ = sink.close().await;
                            return;
                        }
                        frame = stream.next() => {
                            if !matches!(frame, Some(Ok(_))) {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    stop_line().await;
    let _ = tx.send(Arc::from(r#"{"protocol":"PushKickout","state":1}"#));
    println!("STOPPED");
    // Let the frames go out before the process ends.
    tokio::time::sleep(Duration::from_secs(5)).await;
    accept.abort();
}

/// A child process and its stdout lines.
struct Child {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    addr: String,
}

impl Child {
    async fn start(kind: &str, sessions: usize) -> Child {
        let exe = std::env::current_exe().expect("own path");
        let mut child = tokio::process::Command::new(exe)
            .args([
                "--serve-ws-child",
                kind,
                "--ws-sessions",
                &sessions.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the child server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the child starts in time")
            .expect("child output")
            .expect("a first line");
        let addr = first
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected child output: {first}"))
            .to_owned();
        Child { child, lines, addr }
    }

    fn rss_kib(&self) -> f64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(f64::NAN)
    }

    async fn stop(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"STOP\n").await.expect("tell the child");
        stdin.flush().await.expect("flush");
    }

    async fn wait_stopped(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                if line == "STOPPED" {
                    break;
                }
            }
        })
        .await;
        let _ = self.child.kill().await;
    }
}

// ----- the client side -------------------------------------------------------

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn call(
    http: &HttpClient,
    base: &str,
    method: http::Method,
    path: &str,
    body: Value,
    basic: Option<(&str, &str)>,
    from: usize,
) -> Value {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .header("x-forwarded-for", super::fresh_ip(from as u64));
    if let Some((u, p)) = basic {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req = req.header("authorization", format!("Basic {b}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let resp = tokio::time::timeout(Duration::from_secs(60), http.request(req))
        .await
        .expect("answered in time")
        .expect("answered");
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// What a session reports to the harness.
#[derive(Debug)]
enum Report {
    /// Logged in (and, for a user's first session, leased its number).
    Ready,
    /// A `PushRecvMsg` for this number arrived.
    Pushed(String, Instant),
    /// `PushKickout` (or the close) arrived.
    Kicked(Instant),
    /// Something failed.
    Failed(String),
}

async fn ws_connect(
    addr: &str,
    from: usize,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>>
{
    let stream = TcpStream::connect(addr).await?;
    let mut req = format!("ws://{addr}/ws").into_client_request()?;
    req.headers_mut()
        .insert("x-forwarded-for", super::fresh_ip(from as u64).parse()?);
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 4096;
    config.write_buffer_size = 4096;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// One platform session: log in, maybe lease, then report pushes and the
/// kickout.
async fn platform_session(
    addr: String,
    from: usize,
    token: String,
    lease: Option<String>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let fail = |r: &mpsc::UnboundedSender<Report>, e: String| {
        let _ = r.send(Report::Failed(e));
    };
    let mut ws = match ws_connect(&addr, from).await {
        Ok(ws) => ws,
        Err(e) => return fail(&reports, format!("connect: {e}")),
    };
    let login = json!({"protocol": "CSLogin", "token": token, "gps": ""});
    if ws.send(Message::text(login.to_string())).await.is_err() {
        return fail(&reports, "send CSLogin".into());
    }
    let mut want = "SCLogin";
    let mut leased = lease.is_none();
    loop {
        let Some(Ok(frame)) = ws.next().await else {
            let _ = reports.send(Report::Kicked(Instant::now()));
            return;
        };
        let Message::Text(text) = frame else {
            if frame.is_close() {
                let _ = reports.send(Report::Kicked(Instant::now()));
                return;
            }
            continue;
        };
        let at = Instant::now();
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        match v["protocol"].as_str().unwrap_or("") {
            "PushRecvMsg" => {
                let mobile = v["mobileNum"].as_str().unwrap_or("").to_owned();
                let _ = reports.send(Report::Pushed(mobile, at));
            }
            "PushKickout" => {
                let _ = reports.send(Report::Kicked(at));
                return;
            }
            p if p == want => {
                if v["code"] != 0 {
                    return fail(&reports, format!("{want}: {v}"));
                }
                if !leased {
                    leased = true;
                    want = "SCMobileNum";
                    let m = lease.clone().unwrap_or_default();
                    let req = json!({"protocol": "CSMobileNum", "itemId": ITEM, "count": 1, "customNum": m});
                    if ws.send(Message::text(req.to_string())).await.is_err() {
                        return fail(&reports, "send CSMobileNum".into());
                    }
                } else {
                    want = "";
                    let _ = reports.send(Report::Ready);
                }
            }
            _ => {}
        }
    }
}

/// One bare client: connect, report ready, report the broadcast frame.
async fn baseline_client(addr: String, from: usize, reports: mpsc::UnboundedSender<Report>) {
    let mut ws = match ws_connect(&addr, from).await {
        Ok(ws) => ws,
        Err(e) => {
            let _ = reports.send(Report::Failed(format!("connect: {e}")));
            return;
        }
    };
    let _ = reports.send(Report::Ready);
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_))) | None | Some(Err(_)) => {
                let _ = reports.send(Report::Kicked(Instant::now()));
                return;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Waits for `n` reports of `Ready`; panics on a failure.
async fn await_ready(rx: &mut mpsc::UnboundedReceiver<Report>, n: usize) {
    let mut ready = 0;
    let wait = async {
        while ready < n {
            match rx.recv().await {
                Some(Report::Ready) => ready += 1,
                Some(Report::Failed(e)) => panic!("a session failed: {e}"),
                Some(_) => {}
                None => panic!("every session ended"),
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .expect("every session ready in time");
}

/// Waits for `n` kickouts; the instant of the last.
async fn await_kicked(rx: &mut mpsc::UnboundedReceiver<Report>, n: usize) -> Instant {
    let mut kicked = 0;
    let mut last = Instant::now();
    let wait = async {
        while kicked < n {
            match rx.recv().await {
                Some(Report::Kicked(at)) => {
                    kicked += 1;
                    last = at;
                }
                Some(_) => {}
                None => break,
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, wait)
        .await
        .expect("every session kicked in time");
    assert_eq!(kicked, n, "every session must be kicked out");
    last
}

/// Runs flow (f) with `sessions` sessions (rounded down to whole users).
pub async fn run(sessions: usize) -> WsFigures {
    let users = (sessions / PER_USER).max(1);
    let sessions = users * PER_USER;

    // --- the platform -------------------------------------------------------
    let platform = Child::start("platform", sessions).await;
    let base = format!("http://{}", platform.addr);
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let root = Some(("root", ROOT_PW));
    use http::Method as M;
    let item = json!({"item_id": ITEM, "name": "Load", "price": 1, "send_price": 1});
    assert_eq!(
        call(&http, &base, M::POST, "/v2/item", item, root, 0).await["message"],
        "ok"
    );
    let size = (users + 10).to_string();
    let sized = call(
        &http,
        &base,
        M::PUT,
        &format!("/setsize?newsize={size}"),
        json!({}),
        root,
        0,
    )
    .await;
    assert_eq!(sized["code"], 200, "{sized}");
    let mobiles: Vec<String> = (0..users).map(|u| format!("1390{:07}", u)).collect();
    for chunk in mobiles.chunks(100) {
        let data: Vec<Value> = chunk
            .iter()
            .map(|m| json!({"mobile": m, "cid": "load", "imsi": "i", "imei": "e", "iccid": "c", "ip": "127.0.0.1"}))
            .collect();
        let up = call(
            &http,
            &base,
            M::POST,
            "/phones",
            json!({"data": data}),
            None,
            0,
        )
        .await;
        assert_eq!(up["code"], 200, "{up}");
    }
    // Users, their balance, and 50 tokens each (sign-up + 49 logins).
    let mut tokens: Vec<(usize, String)> = Vec::with_capacity(sessions);
    {
        let mut jobs = FuturesUnordered::new();
        let mut next = 0usize;
        let total = sessions;
        while next < total || !jobs.is_empty() {
            while next < total && jobs.len() < 64 {
                let (u, k) = (next / PER_USER, next % PER_USER);
                let (http, base) = (http.clone(), base.clone());
                jobs.push(async move {
                    let name = format!("wsload{u}");
                    let from = u * PER_USER + k + 1;
                    let path = if k == 0 { "/signup" } else { "/login" };
                    if k > 0 {
                        // Logins wait for their user's sign-up.
                        for _ in 0..600 {
                            let v = call(
                                &http,
                                &base,
                                M::POST,
                                path,
                                json!({"user": name, "password": "secret1"}),
                                None,
                                from,
                            )
                            .await;
                            if v["code"] == 0 {
                                return (u, v["token"].as_str().unwrap_or_default().to_owned());
                            }
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        panic!("login of {name} never succeeded");
                    }
                    let v = call(
                        &http,
                        &base,
                        M::POST,
                        path,
                        json!({"user": name, "password": "secret1"}),
                        None,
                        from,
                    )
                    .await;
                    assert_eq!(v["code"], 0, "sign-up {name}: {v}");
                    let charged = call(
                        &http,
                        &base,
                        M::POST,
                        "/v2/charge",
                        json!({"user": name, "charge": 1000}),
                        Some(("root", ROOT_PW)),
                        from,
                    )
                    .await;
                    assert_eq!(charged["message"], "ok", "{charged}");
                    (u, v["token"].as_str().unwrap_or_default().to_owned())
                });
                next += 1;
            }
            if let Some(t) = jobs.next().await {
                tokens.push(t);
            }
        }
    }
    tokens.sort_by_key(|(u, _)| *u);

    // Every session connects and logs in; the first of each user leases.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let rss_before = platform.rss_kib();
    let started = Instant::now();
    let mut first_of = vec![true; users];
    let mut launched = 0usize;
    for (i, (u, token)) in tokens.into_iter().enumerate() {
        let lease = std::mem::take(&mut first_of[u]).then(|| mobiles[u].clone());
        tokio::spawn(platform_session(
            platform.addr.clone(),
            100_000 + i,
            token,
            lease,
            tx.clone(),
        ));
        launched += 1;
        if launched.is_multiple_of(CONNECT_AT_ONCE) {
            // Let the batch in before the next (a gentle ramp).
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    await_ready(&mut rx, sessions).await;
    let login_all_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = platform.rss_kib();

    // Pushes while all are connected: one code per user, a few at a time.
    let mut all_ms = Vec::with_capacity(users);
    let mut first_ms = Vec::with_capacity(users);
    let mut pending: HashMap<String, (Instant, usize, Option<Instant>)> = HashMap::new();
    let mut queue = mobiles.iter().cloned();
    let mut in_flight = 0usize;
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        while in_flight < UPLOADS_AT_ONCE {
            let Some(m) = queue.next() else { break };
            let body =
                json!({"data": [{"mobile": m, "vcode": "您的验证码是 482913", "appname": ITEM}]});
            pending.insert(m.clone(), (Instant::now(), 0, None));
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let v = call(&http, &base, M::POST, "/vcodes", body, None, 1).await;
                assert_eq!(v["code"], 200, "{v}");
            });
            in_flight += 1;
        }
        if in_flight == 0 || Instant::now() > deadline {
            break;
        }
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(Report::Pushed(m, at))) => {
                if let Some(p) = pending.get_mut(&m) {
                    p.1 += 1;
                    p.2.get_or_insert(at);
                    if p.1 == PER_USER {
                        all_ms.push((at - p.0).as_secs_f64() * 1e3);
                        first_ms.push((p.2.unwrap_or(at) - p.0).as_secs_f64() * 1e3);
                        pending.remove(&m);
                        in_flight -= 1;
                    }
                }
            }
            Ok(Some(Report::Failed(e))) => panic!("a session failed: {e}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => panic!("pushes stopped arriving ({} pending)", pending.len()),
        }
    }
    all_ms.sort_by(f64::total_cmp);
    first_ms.sort_by(f64::total_cmp);

    // Kick all out: the platform stops.
    let mut platform = platform;
    let stop_at = Instant::now();
    platform.stop().await;
    let last = await_kicked(&mut rx, sessions).await;
    let kick_all_ms = (last - stop_at).as_secs_f64() * 1e3;
    platform.wait_stopped().await;
    drop(tx);

    // --- the bare baseline --------------------------------------------------
    let mut baseline = Child::start("baseline", sessions).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let before = baseline.rss_kib();
    for i in 0..sessions {
        tokio::spawn(baseline_client(baseline.addr.clone(), i, tx.clone()));
        if (i + 1).is_multiple_of(CONNECT_AT_ONCE) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    await_ready(&mut rx, sessions).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = baseline.rss_kib();
    let stop_at = Instant::now();
    baseline.stop().await;
    let last = await_kicked(&mut rx, sessions).await;
    let baseline_broadcast_ms = (last - stop_at).as_secs_f64() * 1e3;
    baseline.wait_stopped().await;

    WsFigures {
        sessions,
        platform_kib_per_session: (rss_after - rss_before) / sessions as f64,
        baseline_kib_per_connection: (after - before) / sessions as f64,
        push_p50_ms: super::percentile(&all_ms, 50.0),
        push_p99_ms: super::percentile(&all_ms, 99.0),
        push_first_p50_ms: super::percentile(&first_ms, 50.0),
        push_samples: all_ms.len(),
        kick_all_ms,
        baseline_broadcast_ms,
        login_all_secs,
    }
}
