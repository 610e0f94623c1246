//! Load harness: the platform's HTTP front end measured beside a bare hyper
//! server, in one process and one run, so the ratios are comparable.
//!
//! ```text
//! cargo run --release --example loadtest -- [--secs 3] [--concurrency 32] [--json] [--postgres URL]
//! ```
//!
//! Two servers run on a runtime of their own, on `127.0.0.1:0`:
//!
//! * a bare hyper 1.x server (hyper-util's auto builder, `service_fn`
//!   answering a fixed small JSON body): the baseline;
//! * the platform itself ([`sms_platform::Platform`]), over a sled directory
//!   in a temporary directory, with the production argon2 parameters, root
//!   set up, `127.0.0.1` as trusted proxy, and one account per load
//!   connection created before anything is measured.
//!
//! * with `--postgres URL` (env `SMS_LOADTEST_DATABASE_URL`), the platform on
//!   PostgreSQL too: one node on a fresh schema, and three nodes sharing
//!   another (scenario (a) only; connections spread over the three); the
//!   schemas are dropped at the end.
//!
//! A closed-loop load generator on a second runtime then drives each
//! scenario: `--concurrency` HTTP/1.1 keep-alive connections (hyper's
//! client connection over a plain `TcpStream`), each sending its next request
//! as soon as the previous answer is read, for a short warm-up and then
//! `--secs` seconds. Every request has a timeout, and the run ends by itself.
//! Answers that arrive in the measured window count: throughput is their
//! number over the window, latency is per request. A request still in flight
//! at the end is awaited but not counted, so no work spills into the next
//! scenario.
//!
//! The table goes to stdout; with `--json` it goes to stderr and a JSON
//! object to stdout.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use clap::Parser;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sms_core::gateway::RecordingGateway;
use sms_core::ledger::LedgerOp;
use sms_core::memory::MemoryStore;
use sms_core::sending_service::{SignatureInput, TemplateInput};
use sms_core::store::Stores;
use sms_platform::{Platform, PlatformArgs};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

#[path = "loadtest/ws_flow.rs"]
mod ws_flow;

/// Password of every load account (and of root).
const PASSWORD: &str = "secret1";
/// Longest a single request (or connect) may take before it counts as an
/// error and the connection is replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Most requests one connection sends in one scenario (a bound besides time).
const MAX_REQUESTS_PER_CONNECTION: u64 = 5_000_000;
/// The code every issued code is (`--dev-code` of the load platforms).
const DEV_CODE: &str = "246810";
/// The baseline's answer.
const BASELINE_BODY: &str = r#"{"code":200,"msg":"ok"}"#;

/// `cargo run --release --example loadtest -- --help`.
#[derive(Debug, Parser)]
#[command(
    name = "loadtest",
    about = "Platform throughput beside a bare hyper baseline"
)]
struct Args {
    /// Measured seconds per scenario.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Keep-alive connections per scenario (closed loop: one request in
    /// flight per connection).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Unmeasured warm-up per scenario, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Print the table to stderr and a JSON object to stdout.
    #[arg(long)]
    json: bool,
    /// Only scenarios whose name contains one of these (comma-separated);
    /// the baseline always runs. `f-ws` is flow (f), the WebSocket one.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Logged-in WebSocket sessions of flow (f) (whole users of 50).
    #[arg(long, default_value_t = 10_000)]
    ws_sessions: usize,
    /// Internal: run a child server of flow (f) (`platform` or `baseline`).
    #[arg(long, hide = true)]
    serve_ws_child: Option<String>,
    /// Also run (a) on PostgreSQL: one node, and three nodes on one database
    /// (connections spread over them), each setup in a fresh schema of this
    /// database (`postgres://USER@HOST:PORT/DB`). Env
    /// `SMS_LOADTEST_DATABASE_URL`.
    #[arg(long, env = "SMS_LOADTEST_DATABASE_URL", hide_env_values = true)]
    postgres: Option<String>,
}

/// Which platform a scenario runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The bare hyper baseline.
    Baseline,
    /// The platform over sled.
    Sled,
    /// The platform over the in-memory store.
    Memory,
    /// One node on PostgreSQL (`--postgres`).
    Postgres1,
    /// Three nodes on one PostgreSQL database (`--postgres`).
    Postgres3,
}

/// What a scenario sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Baseline,
    NotFound,
    IsRegisterOneIp,
    IsRegisterManyIps,
    PoolCodesEmpty,
    PoolUploadCode,
    HubLogin,
    HubLoginUnknown,
    SendapiSignatures,
    SendapiUnknown,
    /// (a) telsignup send + check of a fresh number, one client address per
    /// request (even requests send, odd ones check the same number).
    SendCheck,
    /// (b) account_v4 sendsms to a fresh number, one client address each.
    SendSms,
    /// (c) pool: upload a fresh phone (even), fetch one mobile (odd).
    PoolFlow,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    what: &'static str,
    kind: Kind,
    /// Which platform answers.
    target: Target,
    /// A successful answer's body contains this (empty: every answer).
    ok: &'static str,
}

impl Scenario {
    const fn new(name: &'static str, what: &'static str, kind: Kind) -> Self {
        Self {
            name,
            what,
            kind,
            target: if matches!(kind, Kind::Baseline) {
                Target::Baseline
            } else {
                Target::Sled
            },
            ok: "",
        }
    }

    const fn ok(mut self, ok: &'static str) -> Self {
        self.ok = ok;
        self
    }

    const fn memory(self) -> Self {
        self.on(Target::Memory)
    }

    const fn on(mut self, target: Target) -> Self {
        self.target = target;
        self
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario::new(
        "baseline",
        "bare hyper GET / (fixed JSON)",
        Kind::Baseline,
    ),
    Scenario::new(
        "404",
        "platform GET /nope (routing only)",
        Kind::NotFound,
    ),
    Scenario::new(
        "isregister-1ip",
        "GET /api/v4.0/isregister/<phone>, one client IP (probe limit answers -4)",
        Kind::IsRegisterOneIp,
    ),
    Scenario::new(
        "isregister-xff",
        "same, X-Forwarded-For new per request (limit write+flush, user lookup)",
        Kind::IsRegisterManyIps,
    ),
    Scenario::new(
        "vcodes-get-empty",
        "pool GET /vcodes/<app>, empty queue (208)",
        Kind::PoolCodesEmpty,
    ),
    Scenario::new(
        "vcodes-post",
        "pool POST /vcodes, 1 SMS (queue write+flush)",
        Kind::PoolUploadCode,
    ),
    Scenario::new(
        "a-send-check",
        "(a) telsignup sms-validation-request then sms-validation-code, fresh number, own X-Forwarded-For per request (--dev-code); ok = success:true",
        Kind::SendCheck,
    )
    .ok("\"success\":true"),
    Scenario::new(
        "a-send-check-mem",
        "(a) on the in-memory store",
        Kind::SendCheck,
    )
    .ok("\"success\":true")
    .memory(),
    Scenario::new(
        "a-send-check-pg1",
        "(a) on PostgreSQL, one node (--postgres)",
        Kind::SendCheck,
    )
    .ok("\"success\":true")
    .on(Target::Postgres1),
    Scenario::new(
        "a-send-check-pg3",
        "(a) on PostgreSQL, three nodes on one database, connections spread over them (--postgres)",
        Kind::SendCheck,
    )
    .ok("\"success\":true")
    .on(Target::Postgres3),
    Scenario::new(
        "b-sendsms",
        "(b) account_v4 POST sendsms/<fresh number>?expect=0, own X-Forwarded-For per request; ok = code 200",
        Kind::SendSms,
    )
    .ok("\"code\":200"),
    Scenario::new(
        "b-sendsms-mem",
        "(b) on the in-memory store",
        Kind::SendSms,
    )
    .ok("\"code\":200")
    .memory(),
    Scenario::new(
        "c-pool",
        "(c) pool POST /phones of one fresh number, then GET /mobiles/<app>/1; ok = code 200",
        Kind::PoolFlow,
    )
    .ok("\"code\":200"),
    Scenario::new(
        "c-pool-mem",
        "(c) on the in-memory store",
        Kind::PoolFlow,
    )
    .ok("\"code\":200")
    .memory(),
    Scenario::new(
        "hub-login",
        "hub POST /login, own account per connection (verified-credentials cache warm after the first; session write)",
        Kind::HubLogin,
    ),
    Scenario::new(
        "hub-login-unknown",
        "hub POST /login, unknown user (-1 after a dummy argon2id verify: the uncached cost)",
        Kind::HubLoginUnknown,
    ),
    Scenario::new(
        "sendapi-signature",
        "sendapi GET /v1/signature, Basic auth, own account (verified-credentials cache warm)",
        Kind::SendapiSignatures,
    ),
    Scenario::new(
        "sendapi-unknown",
        "sendapi GET /v1/signature, Basic auth of an unknown user (ER:0001 after a dummy argon2id verify)",
        Kind::SendapiUnknown,
    ),
];

/// The end of the run: the baseline once more, to see drift on a shared
/// machine.
const BASELINE_AGAIN: Scenario = Scenario::new(
    "baseline-again",
    "bare hyper GET / again (drift check)",
    Kind::Baseline,
);

fn username(conn: usize) -> String {
    format!("load{conn:05}")
}

/// A username no account has.
fn unknown_user(conn: usize, i: u64) -> String {
    format!("nobody{conn}x{i}")
}

/// A unique number for request `i` of connection `conn` (9 digits).
fn serial(conn: usize, i: u64) -> u64 {
    (conn as u64 % 1_000) * 1_000_000 + i % 1_000_000
}

/// A fresh mainland mobile for `n`: the digits of `n` reversed, so that
/// consecutive numbers fall under different 7-digit prefixes (the SMS-pumping
/// breaker counts sends per prefix).
fn fresh_phone(n: u64) -> String {
    let digits: String = format!("{n:09}").chars().rev().collect();
    format!("13{digits}")
}

/// A client address of its own for `n`.
fn fresh_ip(n: u64) -> String {
    format!("10.{}.{}.{}", (n >> 16) % 256, (n >> 8) % 256, n % 256)
}

/// The `i`-th request of connection `conn`.
fn request(kind: Kind, addr: SocketAddr, conn: usize, i: u64) -> Request<Full<Bytes>> {
    let b = Request::builder().header(header::HOST, addr.to_string());
    // Unregistered numbers, distinct per connection.
    let phone = || format!("139{:08}", (conn as u64 % 100) * 1_000_000 + i % 1_000_000);
    let empty = Full::new(Bytes::new());
    let built = match kind {
        Kind::Baseline => b.uri("/").body(empty),
        Kind::NotFound => b.uri("/nope").body(empty),
        Kind::IsRegisterOneIp => b
            .uri(format!("/api/v4.0/isregister/{}", phone()))
            .body(empty),
        Kind::IsRegisterManyIps => b
            .uri(format!("/api/v4.0/isregister/{}", phone()))
            .header(
                "x-forwarded-for",
                format!("10.{}.{}.{}", conn % 256, (i >> 8) % 256, i % 256),
            )
            .body(empty),
        Kind::PoolCodesEmpty => b.uri("/vcodes/bench.empty").body(empty),
        Kind::SendCheck => {
            let n = serial(conn, i / 2);
            let (action, kind) = if i.is_multiple_of(2) {
                ("sms-validation-request", "sms_validation_request")
            } else {
                ("sms-validation-code", "sms_validation_code")
            };
            let body = json!({"type": kind, "tel": fresh_phone(n), "time": "1439280893", "code": DEV_CODE});
            b.method(Method::POST)
                .uri(format!("/index.php?r=user/{action}"))
                .header("x-forwarded-for", fresh_ip(serial(conn, i)))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
        }
        Kind::SendSms => {
            let n = serial(conn, i) + 500_000_000;
            b.method(Method::POST)
                .uri(format!("/api/v4.0/sendsms/{}?expect=0", fresh_phone(n)))
                .header("x-forwarded-for", fresh_ip(n))
                .body(empty)
        }
        Kind::PoolFlow => {
            if i.is_multiple_of(2) {
                let n = serial(conn, i / 2);
                let body = json!({"data": [{
                    "mobile": format!("15{n:09}"),
                    "cid": format!("dev-{conn}"),
                    "imsi": "i", "imei": "e", "iccid": "c", "ip": "10.0.0.1",
                }]});
                b.method(Method::POST)
                    .uri("/phones")
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
            } else {
                b.uri(format!("/mobiles/bench.c{conn}/1")).body(empty)
            }
        }
        Kind::PoolUploadCode => {
            let body = json!({"data": [{
                "mobile": format!("182{:08}", conn),
                "vcode": format!("Your code is {:06}", i % 1_000_000),
                "appname": "bench.upload",
            }]});
            b.method(Method::POST)
                .uri("/vcodes")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
        }
        Kind::HubLogin | Kind::HubLoginUnknown => {
            let user = match kind {
                Kind::HubLogin => username(conn),
                _ => unknown_user(conn, i),
            };
            // Each request from its own client address: the per-IP budget of
            // failed password checks must not turn the measured verify
            // into a refusal.
            b.method(Method::POST)
                .uri("/login")
                .header("x-forwarded-for", fresh_ip(serial(conn, i)))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(format!(
                    "user={user}&password={PASSWORD}"
                ))))
        }
        Kind::SendapiSignatures | Kind::SendapiUnknown => {
            let user = match kind {
                Kind::SendapiSignatures => username(conn),
                _ => unknown_user(conn, i),
            };
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{PASSWORD}"));
            b.uri("/v1/signature")
                .header("x-forwarded-for", fresh_ip(serial(conn, i)))
                .header(header::AUTHORIZATION, format!("Basic {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(empty)
        }
    };
    built.expect("valid request")
}

/// A label for an answer: status and the body's `code` (or sendapi's
/// `error`), so refusals are told apart from successes.
fn label(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let field = ["\"code\":", "\"error\":"].iter().find_map(|k| {
        let at = text.find(k)? + k.len();
        let rest = text[at..].trim_start();
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim().trim_matches('"').to_owned())
    });
    match field {
        Some(f) => format!("{} code={f}", status.as_u16()),
        None => status.as_u16().to_string(),
    }
}

#[derive(Debug, Default)]
struct ConnStats {
    /// Latency in microseconds of each measured request.
    latencies_us: Vec<u32>,
    /// Measured answers by label.
    labels: BTreeMap<String, u64>,
    /// Measured successful answers (the scenario's `ok`).
    ok: u64,
    /// Measured answers per second of the window.
    per_second: Vec<u64>,
    /// Failed requests or connects (timeouts, resets).
    errors: u64,
    /// Connections opened.
    connects: u64,
    /// The first measured answer's body, for the report.
    sample: Option<String>,
}

/// One closed-loop connection: requests back to back until `end` (or the
/// per-connection cap); those answered between `measure_from` and `end` are
/// recorded.
async fn drive(
    kind: Kind,
    ok: &'static str,
    addr: SocketAddr,
    conn: usize,
    measure_from: Instant,
    end: Instant,
) -> ConnStats {
    let mut st = ConnStats::default();
    let mut i: u64 = 0;
    'reconnect: while Instant::now() < end && i < MAX_REQUESTS_PER_CONNECTION {
        let stream = match tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                st.errors += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) =
            match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
                Ok(x) => x,
                Err(_) => {
                    st.errors += 1;
                    continue;
                }
            };
        let driver = tokio::spawn(connection);
        st.connects += 1;
        while Instant::now() < end && i < MAX_REQUESTS_PER_CONNECTION {
            let req = request(kind, addr, conn, i);
            i += 1;
            let started = Instant::now();
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                sender.ready().await?;
                let resp = sender.send_request(req).await?;
                let status = resp.status();
                let body = resp.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            })
            .await;
            let done = Instant::now();
            match answer {
                Ok(Ok((status, body))) => {
                    // Answers that arrive inside the measured window count;
                    // one still in flight at `end` is awaited (so its work
                    // does not spill into the next scenario) but not counted.
                    if done >= measure_from && done <= end {
                        let us = done.duration_since(started).as_micros();
                        st.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                        *st.labels.entry(label(status, &body)).or_default() += 1;
                        if ok.is_empty() || contains(&body, ok.as_bytes()) {
                            st.ok += 1;
                        }
                        let sec = done.duration_since(measure_from).as_secs() as usize;
                        if st.per_second.len() <= sec {
                            st.per_second.resize(sec + 1, 0);
                        }
                        st.per_second[sec] += 1;
                        if st.sample.is_none() {
                            st.sample =
                                Some(String::from_utf8_lossy(&body).chars().take(160).collect());
                        }
                    }
                }
                _ => {
                    st.errors += 1;
                    driver.abort();
                    continue 'reconnect;
                }
            }
        }
        driver.abort();
    }
    st
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[derive(Debug)]
struct Outcome {
    scenario: Scenario,
    requests: u64,
    window: Duration,
    rps: f64,
    /// Successful answers per second.
    ok_rps: f64,
    p50_us: u32,
    p99_us: u32,
    max_us: u32,
    errors: u64,
    connects: u64,
    labels: BTreeMap<String, u64>,
    per_second: Vec<u64>,
    sample: String,
}

/// The nearest-rank `p`th percentile (`p` in percent) of `sorted`; the
/// default (0) when empty.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn run_scenario(
    scenario: Scenario,
    addrs: Vec<SocketAddr>,
    concurrency: usize,
    warmup: Duration,
    secs: Duration,
) -> Outcome {
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + secs;
    let tasks: Vec<_> = (0..concurrency)
        .map(|c| {
            tokio::spawn(drive(
                scenario.kind,
                scenario.ok,
                addrs[c % addrs.len()],
                c,
                measure_from,
                end,
            ))
        })
        .collect();
    let mut all = Vec::new();
    let mut labels = BTreeMap::new();
    let mut per_second = vec![0u64; secs.as_secs() as usize];
    let (mut errors, mut connects, mut ok) = (0, 0, 0);
    let mut sample = None;
    for t in tasks {
        // Every request is bounded by REQUEST_TIMEOUT, so this ends.
        let Ok(st) = t.await else {
            errors += 1;
            continue;
        };
        all.extend_from_slice(&st.latencies_us);
        for (k, v) in st.labels {
            *labels.entry(k).or_insert(0) += v;
        }
        for (i, n) in st.per_second.iter().enumerate() {
            if let Some(slot) = per_second.get_mut(i) {
                *slot += n;
            }
        }
        errors += st.errors;
        connects += st.connects;
        ok += st.ok;
        sample = sample.or(st.sample);
    }
    all.sort_unstable();
    let window = secs;
    let requests = all.len() as u64;
    Outcome {
        scenario,
        requests,
        window,
        rps: requests as f64 / window.as_secs_f64(),
        ok_rps: ok as f64 / window.as_secs_f64(),
        p50_us: percentile(&all, 50.0),
        p99_us: percentile(&all, 99.0),
        max_us: all.last().copied().unwrap_or(0),
        errors,
        connects,
        labels,
        per_second,
        sample: sample.unwrap_or_default(),
    }
}

/// The bare hyper server: accept loop on `listener`, every answer the same.
async fn baseline_server(listener: TcpListener) {
    let builder = Arc::new(hyper_util::server::conn::auto::Builder::new(
        TokioExecutor::new(),
    ));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from_static(BASELINE_BODY.as_bytes())))
                        .expect("valid response"),
                )
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}

fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

fn table(outcomes: &[Outcome], baseline_rps: f64) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<18} {:>10} {:>11} {:>11} {:>9} {:>9} {:>9} {:>8} {:>6}  answers\n",
        "scenario",
        "requests",
        "req/s",
        "ok/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ok x base",
        "errors"
    ));
    for o in outcomes {
        let answers: Vec<String> = o.labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        s.push_str(&format!(
            "{:<18} {:>10} {:>11.1} {:>11.1} {:>9} {:>9} {:>9} {:>8.4} {:>6}  {}\n",
            o.scenario.name,
            o.requests,
            o.rps,
            o.ok_rps,
            ms(o.p50_us),
            ms(o.p99_us),
            ms(o.max_us),
            o.ok_rps / baseline_rps,
            o.errors,
            answers.join(", ")
        ));
    }
    s
}

/// Recipients of the bulk send (e).
const BULK_RECIPIENTS: usize = 10_000;

/// (e): a sendapi send of [`BULK_RECIPIENTS`] recipients by load account 0:
/// the time to accept it (one HTTP round trip), then the time until the
/// task is done, drained to a gateway that only records.
async fn bulk_send(core: sms_core::Core, addr: SocketAddr) -> String {
    let user = core
        .accounts
        .user_by_username(&username(0))
        .await
        .ok()
        .flatten()
        .expect("load account 0");
    let sig = core
        .sending
        .create_signature(
            &user.id,
            SignatureInput {
                text: "欢聚".into(),
                source: "app".into(),
                pics: Vec::new(),
            },
        )
        .await
        .expect("signature");
    let temp = core
        .sending
        .create_template(
            &user.id,
            TemplateInput {
                sign_id: sig.id,
                name: "code".into(),
                content: "验证码${code}".into(),
                kind: 1,
                description: "load".into(),
            },
        )
        .await
        .expect("template");
    core.sending
        .review_signature(sig.id, true, "")
        .await
        .expect("signature review");
    core.sending
        .review_template(temp.id, true, "")
        .await
        .expect("template review");
    core.billing
        .apply(
            &user.id,
            "load-bulk-top-up".into(),
            LedgerOp::Charge {
                amount: 1_000_000_000,
            },
        )
        .await
        .expect("top-up");
    let mobiles: Vec<String> = (0..BULK_RECIPIENTS as u64)
        .map(|n| format!("177{n:08}"))
        .collect();
    let body = json!({"sign_id": sig.id, "temp_id": temp.id, "mobiles": mobiles, "params": {"code": "482913"}});
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{PASSWORD}", username(0)));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/message")
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Basic {token}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("valid request");
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let driver = tokio::spawn(conn);
    // Warm the verified-credentials cache (one argon2id verify), as a
    // client that sends in bulk has long done.
    let warm = Request::builder()
        .uri("/v1/signature")
        .header(header::HOST, addr.to_string())
        .header(header::AUTHORIZATION, format!("Basic {token}"))
        .body(Full::new(Bytes::new()))
        .expect("valid request");
    let warmed = sender.send_request(warm).await.expect("answer");
    let _ = warmed.into_body().collect().await;
    sender.ready().await.expect("connection ready");
    let t0 = Instant::now();
    let resp = sender.send_request(req).await.expect("answer");
    let status = resp.status();
    let answer = resp.into_body().collect().await.expect("body").to_bytes();
    let accepted = t0.elapsed();
    driver.abort();
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    let Some(uuid) = v["uuid"].as_str().map(str::to_owned) else {
        return format!(
            "e-bulk-send: not accepted: {status} {}",
            String::from_utf8_lossy(&answer)
        );
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // The task record alone: reading every recipient's status each
        // poll would take CPU from the drain being measured.
        let done = matches!(
            core.stores.sending.task(&uuid).await,
            Ok(Some(t)) if t.state == sms_core::sending::TaskState::Done
        );
        if done || Instant::now() > deadline {
            let drained = t0.elapsed() - accepted;
            return format!(
                "e-bulk-send: {BULK_RECIPIENTS} recipients accepted in {:.1} ms; {} in {:.2} s after that = {:.0} messages/s",
                accepted.as_secs_f64() * 1000.0,
                if done { "drained" } else { "NOT drained" },
                drained.as_secs_f64(),
                BULK_RECIPIENTS as f64 / drained.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The PostgreSQL platforms of `--postgres`: one node on a fresh schema,
/// then three nodes on another (the first of them sets up root), each with
/// the settings of the sled platform and one shared code secret; with the
/// schemas' tag.
async fn postgres_nodes(
    url: &str,
    dir: &std::path::Path,
) -> Result<(String, Vec<sms_platform::RunningPlatform>), sms_platform::PlatformError> {
    use sms_core::random::RandomSource;
    let mut tag = [0u8; 6];
    sms_core::random::OsRandom.fill(&mut tag);
    let tag = hex::encode(tag);
    let mut secret = [0u8; 32];
    sms_core::random::OsRandom.fill(&mut secret);
    let mut nodes = Vec::new();
    for (i, schema) in [
        format!("loadtest_{tag}_1"),
        format!("loadtest_{tag}_3"),
        format!("loadtest_{tag}_3"),
        format!("loadtest_{tag}_3"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = PlatformArgs::for_data_dir(dir.join(format!("pg-data-{i}")));
        a.listen = "127.0.0.1:0".parse().expect("addr");
        a.outbox = Some(dir.join(format!("pg-outbox-{i}.jsonl")));
        a.root_password = Some(PASSWORD.into());
        a.trusted_proxies = vec!["127.0.0.1".into()];
        a.dev_code = Some(DEV_CODE.into());
        a.store = Some(url.to_owned());
        a.store_schema = schema;
        a.code_secret = Some(hex::encode(secret));
        let node = Platform::new(a)
            .with_gateway(Arc::new(RecordingGateway::new()))
            .start()
            .await?;
        nodes.push(node);
    }
    eprintln!(
        "PostgreSQL: one node on schema loadtest_{tag}_1, three on loadtest_{tag}_3 (dropped at the end)"
    );
    Ok((tag, nodes))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(kind) = &args.serve_ws_child {
        return ws_flow::serve_child(kind, args.ws_sessions);
    }
    if args.secs == 0 || args.concurrency == 0 || args.concurrency > 10_000 {
        eprintln!("--secs and --concurrency must be positive (concurrency at most 10000)");
        return std::process::ExitCode::FAILURE;
    }
    // Servers on one runtime, the load generator on another: both share the
    // machine's cores, as a separate client process would.
    let servers = Runtime::new().expect("server runtime");
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime");
    let dir = tempfile::tempdir().expect("temp dir");

    let (baseline_addr, platform, memory) = servers.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let baseline_addr = listener.local_addr().expect("addr");
        tokio::spawn(baseline_server(listener));

        let mut a = PlatformArgs::for_data_dir(dir.path().join("data"));
        a.listen = "127.0.0.1:0".parse().expect("addr");
        a.outbox = Some(dir.path().join("outbox.jsonl"));
        a.root_password = Some(PASSWORD.into());
        a.trusted_proxies = vec!["127.0.0.1".into()];
        a.dev_code = Some(DEV_CODE.into());
        // argon2: the production defaults of the flags, untouched.
        let mut mem_args = a.clone();
        mem_args.data = dir.path().join("mem-data");
        mem_args.outbox = Some(dir.path().join("mem-outbox.jsonl"));
        let running = Platform::new(a)
            .with_gateway(Arc::new(RecordingGateway::new()))
            .start()
            .await
            .expect("platform starts");
        let memory = Platform::new(mem_args)
            .with_stores(Stores::from_single(Arc::new(MemoryStore::new())))
            .start()
            .await
            .expect("in-memory platform starts");
        for p in [&running, &memory] {
            p.core()
                .stores
                .pool
                .set_pool_size(u32::MAX)
                .await
                .expect("pool size");
        }
        let t0 = Instant::now();
        for c in 0..args.concurrency {
            running
                .core()
                .accounts
                .sign_up_username(&username(c), PASSWORD)
                .await
                .expect("load account");
        }
        eprintln!(
            "setup: {} accounts (argon2id production parameters) in {:.2} s",
            args.concurrency,
            t0.elapsed().as_secs_f64()
        );
        (baseline_addr, running, memory)
    });
    let mut pg_tag = None;
    let postgres: Vec<sms_platform::RunningPlatform> = match &args.postgres {
        Some(url) => match servers.block_on(postgres_nodes(url, dir.path())) {
            Ok((tag, nodes)) => {
                pg_tag = Some(tag);
                nodes
            }
            Err(e) => {
                eprintln!("--postgres: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => Vec::new(),
    };
    let platform_addr = platform.addr;
    let memory_addr = memory.addr;
    eprintln!(
        "baseline on {baseline_addr}, platform on {platform_addr}; {} connections, {} s per scenario (+{} ms warm-up)",
        args.concurrency, args.secs, args.warmup_ms
    );

    let wanted = |s: &Scenario| {
        let on_postgres = matches!(s.target, Target::Postgres1 | Target::Postgres3);
        if on_postgres && postgres.is_empty() {
            return false;
        }
        s.kind == Kind::Baseline
            || args.only.is_empty()
            || args.only.iter().any(|o| s.name.contains(o.as_str()))
    };
    if postgres.is_empty() {
        eprintln!("(the PostgreSQL scenarios need --postgres URL: skipped)");
    }
    let mut outcomes = Vec::new();
    for s in SCENARIOS
        .iter()
        .chain(std::iter::once(&BASELINE_AGAIN))
        .filter(|s| wanted(s))
    {
        let addrs = match s.target {
            Target::Baseline => vec![baseline_addr],
            Target::Memory => vec![memory_addr],
            Target::Sled => vec![platform_addr],
            Target::Postgres1 => vec![postgres[0].addr],
            Target::Postgres3 => postgres[1..].iter().map(|p| p.addr).collect(),
        };
        let o = clients.block_on(run_scenario(
            *s,
            addrs,
            args.concurrency,
            Duration::from_millis(args.warmup_ms),
            Duration::from_secs(args.secs),
        ));
        eprintln!(
            "  {:<18} {:>10.1} req/s  p50 {} ms  p99 {} ms  ({} errors)",
            s.name,
            o.rps,
            ms(o.p50_us),
            ms(o.p99_us),
            o.errors
        );
        outcomes.push(o);
    }
    let bulk = (args.only.is_empty()
        || args.only.iter().any(|o| "e-bulk-send".contains(o.as_str())))
    .then(|| {
        let core = platform.core().clone();
        let bulk = clients.block_on(bulk_send(core, platform_addr));
        eprintln!("  {bulk}");
        bulk
    });
    servers.block_on(async {
        let _ = tokio::time::timeout(Duration::from_secs(15), platform.shutdown()).await;
        let _ = tokio::time::timeout(Duration::from_secs(15), memory.shutdown()).await;
        for p in postgres {
            let _ = tokio::time::timeout(Duration::from_secs(15), p.shutdown()).await;
        }
        if let (Some(url), Some(tag)) = (&args.postgres, &pg_tag) {
            for n in [1, 3] {
                let schema = format!("loadtest_{tag}_{n}");
                match sms_store_postgres::PgStore::connect_url(url, &schema).await {
                    Ok(s) => {
                        if let Err(e) = s.drop_schema().await {
                            eprintln!("could not drop schema {schema}: {e}");
                        }
                        s.close().await;
                    }
                    Err(e) => eprintln!("could not drop schema {schema}: {e}"),
                }
            }
        }
    });
    let ws = (args.only.is_empty() || args.only.iter().any(|o| "f-ws".contains(o.as_str()))).then(
        || {
            let figures = clients.block_on(ws_flow::run(args.ws_sessions));
            eprint!("{}", figures.table());
            figures
        },
    );
    clients.shutdown_background();
    servers.shutdown_background();

    let baselines: Vec<f64> = outcomes
        .iter()
        .filter(|o| o.scenario.kind == Kind::Baseline)
        .map(|o| o.rps)
        .collect();
    let baseline_rps = baselines.iter().sum::<f64>() / baselines.len().max(1) as f64;
    let text = table(&outcomes, baseline_rps);
    let note = format!(
        "ok x base = successful answers/s over the mean of the baseline runs ({baseline_rps:.1} req/s); {} connections, {} s measured per scenario",
        args.concurrency, args.secs
    );
    if args.json {
        eprint!("{text}");
        eprintln!("{note}");
        let scenarios: Vec<Value> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "name": o.scenario.name,
                    "what": o.scenario.what,
                    "requests": o.requests,
                    "window_secs": o.window.as_secs_f64(),
                    "rps": o.rps,
                    "p50_ms": f64::from(o.p50_us) / 1000.0,
                    "p99_ms": f64::from(o.p99_us) / 1000.0,
                    "max_ms": f64::from(o.max_us) / 1000.0,
                    "ok_rps": o.ok_rps,
                    "ok_ratio_to_baseline": o.ok_rps / baseline_rps,
                    "errors": o.errors,
                    "connections_opened": o.connects,
                    "answers": o.labels,
                    "per_second": o.per_second,
                    "sample_body": o.sample,
                })
            })
            .collect();
        let report = json!({
            "concurrency": args.concurrency,
            "secs_per_scenario": args.secs,
            "warmup_ms": args.warmup_ms,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "baseline_rps": baseline_rps,
            "scenarios": scenarios,
            "bulk_send": bulk,
            "ws_flow": ws,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("JSON report")
        );
    } else {
        print!("{text}");
        println!("{note}");
        if let Some(b) = &bulk {
            println!("{b}");
        }
        if let Some(w) = &ws {
            print!("{}", w.table());
        }
        println!("answers per second of the window, and what each scenario does:");
        for o in &outcomes {
            println!(
                "  {:<18} {:?}  {}",
                o.scenario.name, o.per_second, o.scenario.what
            );
        }
    }
    std::process::ExitCode::SUCCESS
}
