//! Metrics and logs over the real platform: a flow through every dialect
//! (hub HTTP and WebSocket, telsignup, account_v4, pool, sendapi) moves
//! every named metric of `GET /metrics`; `--metrics-listen` moves the
//! exporter off the public port; and with `--log-format json` every stderr
//! line of the platform is a JSON object, the request's line carries the
//! `X-Request-Id` it was sent with, and no secret appears; text logs written
//! to a file have no colour.
//!
//! The log tests re-execute this binary as the platform (the
//! `json_log_child` test, which does nothing unless [`CHILD_ENV`] names a
//! directory), so that its stderr is the platform's alone.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{TestPlatform, Ws, ROOT_PASSWORD};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sms_platform::{Platform, PlatformArgs};

const ITEM: &str = "com.example.metrics";
const PW: &str = "secret1";

/// One sample of the exposition: name and sorted labels.
type Series = (String, BTreeMap<String, String>);

/// A scrape, parsed: every sample line of the text format.
#[derive(Debug, Default)]
struct Scrape(Vec<(Series, f64)>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let mut out = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample: series value");
            let value: f64 = value.parse().expect("sample value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    (name, parse_labels(body))
                }
                None => (series, BTreeMap::new()),
            };
            out.push(((name.to_owned(), labels), value));
        }
        Scrape(out)
    }

    /// The sum over every series of `name` whose labels include `having`;
    /// `None` when no series matches.
    fn sum(&self, name: &str, having: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for ((n, labels), v) in &self.0 {
            if n == name
                && having
                    .iter()
                    .all(|(k, want)| labels.get(*k).map(String::as_str) == Some(*want))
            {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    fn value(&self, name: &str, having: &[(&str, &str)]) -> f64 {
        self.sum(name, having).unwrap_or(0.0)
    }
}

/// `a="x",b="y"` (values without escaped quotes: ours never have any).
fn parse_labels(body: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (k, after) = rest.split_once("=\"").expect("label=\"");
        let end = after.find('"').expect("closing quote");
        out.insert(
            k.trim_start_matches(',').to_owned(),
            after[..end].to_owned(),
        );
        rest = after[end + 1..].trim_start_matches(',');
    }
    out
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `path` on `addr`: status, content type, body.
async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String, String) {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client().request(req).await.expect("answered");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, ct, String::from_utf8(body.to_vec()).unwrap())
}

async fn scrape(addr: SocketAddr) -> (Scrape, String) {
    let (status, ct, body) = get(addr, "/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        ct.starts_with("text/plain; version=0.0.4"),
        "exposition content type: {ct}"
    );
    (Scrape::parse(&body), body)
}

/// Scrapes until `ok` holds (gauges set by the workers' one-second passes);
/// at most 15 s.
async fn scrape_until(addr: SocketAddr, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    for _ in 0..300 {
        let (s, _) = scrape(addr).await;
        if ok(&s) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the metrics never reached the expected state");
}

async fn as_user(
    t: &TestPlatform,
    user: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    t.basic(method, path, Some((user, PW)), body).await
}

/// The carriers file of the flow: codes go to a carrier that is down (a
/// refused connection, so they stay queued and the queue gauge moves),
/// send tasks to an outbox carrier.
fn carriers_file(dir: &Path) -> PathBuf {
    let path = dir.join("carriers.toml");
    std::fs::write(
        &path,
        "[[carrier]]\nname = \"down\"\nkind = \"twilio\"\nendpoint = \"http://127.0.0.1:9\"\naccount_sid = \"AC1\"\nauth_token = \"tok\"\nfrom = \"+15005550006\"\npublic_url = \"https://sms.example.com\"\nretries = 0\n\n[[carrier]]\nname = \"box\"\nkind = \"outbox\"\n\n[routes]\ncodes = [\"down\"]\ntasks = [\"box\"]\n",
    )
    .unwrap();
    path
}

const DEV_CODE: &str = "246810";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_through_every_dialect_moves_every_metric() {
    let t = TestPlatform::start_with(|a| {
        a.carriers = Some(carriers_file(a.data.parent().unwrap()));
        // Codes never reach a carrier here (it is down): a fixed code lets
        // the flow go on.
        a.dev_code = Some(DEV_CODE.into());
    })
    .await;
    let (before, _) = scrape(t.addr).await;

    // hub HTTP
    let r = t
        .post_form("/signup", &[("user", "alice"), ("password", PW)])
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let token = r["token"].as_str().unwrap().to_owned();
    t.post_form("/login", &[("user", "alice"), ("password", PW)])
        .await;

    // account_v4: a code, a refused resend (cooldown), the sign-up.
    let r = t
        .post_form("/api/v4.0/sendsms/13811112222", &[("expect", "0")])
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = t
        .post_form("/api/v4.0/sendsms/13811112222", &[("expect", "0")])
        .await;
    assert_ne!(
        r["code"], 200,
        "a resend within the cooldown is refused: {r}"
    );
    let r = t
        .post_form(
            "/api/v4.0/register",
            &[
                ("phone", "13811112222"),
                ("name", "n"),
                ("password", "pw-secret2"),
                ("code", DEV_CODE),
            ],
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");

    // telsignup
    t.post_json(
        "/index.php?r=user/sms-validation-request",
        json!({"type": "sms_validation_request", "tel": "13900000000", "time": "1"}),
    )
    .await;
    t.post_json(
        "/index.php?r=user/sms-validation-code",
        json!({"type": "sms_validation_code", "tel": "13900000000", "time": "1", "code": DEV_CODE}),
    )
    .await;

    // pool (devices) and root: a number, an item, a top-up.
    let r = t
        .post_json(
            "/phones",
            json!({"data": [{"mobile": "18250794865", "cid": "dev-1", "imsi": "i", "imei": "e", "iccid": "c", "ip": "1.2.3.4"}]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let r = t
        .root(
            Method::POST,
            "/v2/item",
            json!({"item_id": ITEM, "name": "m", "price": 10, "send_price": 1}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let r = t
        .root(
            Method::POST,
            "/v2/charge",
            json!({"user": "alice", "charge": 100}),
        )
        .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);

    // hub WebSocket: a lease, a received code pushed live.
    let mut ws = Ws::connect(&t).await;
    assert_eq!(ws.login(&token).await["code"], 0);
    let mut skipped = Vec::new();
    let r = ws
        .request(
            json!({"protocol": "CSMobileNum", "itemId": ITEM, "count": 1}),
            "SCMobileNum",
            &mut skipped,
        )
        .await;
    assert_eq!(r["code"], 0, "{r}");
    let push = ws.recv_protocol("PushMobileNum", &mut skipped).await;
    assert_eq!(push["mobileNum"], "18250794865");
    let r = t
        .post_json(
            "/vcodes",
            json!({"data": [{"mobile": "18250794865", "vcode": "【m】验证码 171331", "appname": ITEM, "chanlid": "c"}]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
    let push = ws.recv_protocol("PushRecvMsg", &mut skipped).await;
    assert_eq!(push["mobileNum"], "18250794865");
    let r = t.get(&format!("/vcodes/{ITEM}"), &[]).await;
    assert_eq!(r["code"], 200, "{r}");
    // While the session is open, it is counted; the pool gauge shows the
    // lease (the sweeper sets it every second).
    let during = scrape_until(t.addr, |s| {
        s.value("sms_pool_numbers", &[("state", "leased")]) >= 1.0
            && s.value("sms_delivery_queue_depth", &[]) >= 1.0
    })
    .await;
    assert!(
        during.value("sms_ws_sessions", &[]) >= before.value("sms_ws_sessions", &[]) + 1.0,
        "the open session is counted"
    );

    // sendapi: a signature and a template through the audit, a send.
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/signature",
        Some(json!({"signature": "欢聚", "source": "公司", "pics": ["https://x/1.png"]})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let sign = r.1["sign_id"].as_i64().unwrap();
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/template",
        Some(json!({"name": "码", "template": "您的验证码是${code}", "type": 1, "description": "登录", "sign_id": sign})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let tpl = r.1["temp_id"].as_i64().unwrap();
    for (path, key, id) in [
        ("/v2/signreview", "sign_id", sign),
        ("/v2/tempreview", "temp_id", tpl),
    ] {
        let r = t
            .root(
                Method::POST,
                path,
                json!({key: id, "audit_status": "passed", "reject_reason": ""}),
            )
            .await;
        assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    }
    let r = as_user(
        &t,
        "alice",
        Method::POST,
        "/v1/message",
        Some(json!({"sign_id": sign, "temp_id": tpl, "mobiles": ["13900000001"], "params": {"code": "482913"}})),
    )
    .await;
    assert_eq!(r.0, StatusCode::OK, "{}", r.1);
    let uuid = r.1["uuid"].as_str().unwrap().to_owned();
    let mut done = false;
    for _ in 0..300 {
        let r = as_user(
            &t,
            "alice",
            Method::GET,
            &format!("/v1/message?uuid={uuid}"),
            None,
        )
        .await;
        if r.1["status"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(done, "the send task finished");

    let (after, text) = scrape(t.addr).await;
    drop(ws);

    let moved = |name: &str, having: &[(&str, &str)]| {
        let (b, a) = (before.value(name, having), after.value(name, having));
        assert!(a > b, "{name}{having:?} moved: {b} -> {a}");
    };
    let requests = "sms_http_requests_total";
    let durations = "sms_http_request_duration_seconds_count";
    for dialect in [
        "hub",
        "hub_ws",
        "telsignup",
        "account_v4",
        "pool",
        "sendapi",
    ] {
        moved(requests, &[("dialect", dialect)]);
        moved(durations, &[("dialect", dialect)]);
    }
    moved(
        requests,
        &[
            ("dialect", "account_v4"),
            ("route", "/api/v4.0/sendsms/{phone}"),
            ("status", "200"),
        ],
    );
    moved(requests, &[("route", "/vcodes/{app}")]);
    moved("sms_codes_issued_total", &[("purpose", "register")]);
    moved("sms_codes_issued_total", &[("purpose", "signup")]);
    moved(
        "sms_codes_checked_total",
        &[("purpose", "register"), ("outcome", "ok")],
    );
    moved("sms_limit_refusals_total", &[("limit", "code_cooldown")]);
    moved(
        "sms_carrier_messages_total",
        &[("carrier", "down"), ("outcome", "transient")],
    );
    moved(
        "sms_carrier_messages_total",
        &[("carrier", "box"), ("outcome", "accepted")],
    );
    moved(
        "sms_carrier_request_duration_seconds_count",
        &[("carrier", "box")],
    );
    moved(
        "sms_carrier_request_duration_seconds_count",
        &[("carrier", "down")],
    );
    moved("sms_pushes_total", &[("kind", "mobile_num")]);
    moved("sms_pushes_total", &[("kind", "recv_msg")]);
    moved("sms_leases_total", &[("outcome", "leased")]);
    moved(
        "sms_store_operation_duration_seconds_count",
        &[("op", "codes.decide_code")],
    );
    moved(
        "sms_store_operation_duration_seconds_count",
        &[("op", "pool.lease")],
    );
    // Merged port methods keep the label of the method each kind of
    // request had (`UserStore::user` by phone, `SendStore::write_*`).
    for op in [
        "users.user_by_phone",
        "sending.create_signature",
        "sending.create_template",
        "sending.replace_signature",
        "sending.replace_template",
    ] {
        moved("sms_store_operation_duration_seconds_count", &[("op", op)]);
    }
    for kind in ["charge", "hold", "capture", "debit"] {
        moved(
            "sms_ledger_operations_total",
            &[("kind", kind), ("outcome", "applied")],
        );
    }
    // Gauges: the queue holds the codes of the carrier that is down, the
    // pool shows the lease, the session was counted while open.
    assert!(during.value("sms_delivery_queue_depth", &[]) >= 1.0);
    assert!(during.value("sms_pool_numbers", &[("state", "leased")]) >= 1.0);
    assert!(during
        .sum("sms_pool_numbers", &[("state", "free")])
        .is_some());
    // Every named metric is described once, with its type.
    for (name, kind) in [
        ("sms_http_requests_total", "counter"),
        ("sms_http_request_duration_seconds", "histogram"),
        ("sms_codes_issued_total", "counter"),
        ("sms_codes_checked_total", "counter"),
        ("sms_limit_refusals_total", "counter"),
        ("sms_carrier_messages_total", "counter"),
        ("sms_carrier_request_duration_seconds", "histogram"),
        ("sms_delivery_queue_depth", "gauge"),
        ("sms_ws_sessions", "gauge"),
        ("sms_pushes_total", "counter"),
        ("sms_leases_total", "counter"),
        ("sms_pool_numbers", "gauge"),
        ("sms_store_operation_duration_seconds", "histogram"),
        ("sms_ledger_operations_total", "counter"),
    ] {
        let type_line = format!("# TYPE {name} {kind}");
        assert_eq!(text.matches(&type_line).count(), 1, "{type_line}");
        assert_eq!(
            text.matches(&format!("# HELP {name} ")).count(),
            1,
            "{name} described"
        );
    }
    // No phone number, user, token or app in any label.
    for secret in [
        "13811112222",
        "13900000000",
        "18250794865",
        "alice",
        token.as_str(),
        ITEM,
        DEV_CODE,
    ] {
        assert!(!text.contains(secret), "{secret} in the metrics");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_moves_the_exporter_off_the_public_port() {
    let t = TestPlatform::start_with(|a| {
        a.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let metrics = t.metrics_addr().expect("a metrics address");
    assert_ne!(metrics, t.addr);
    let (status, _, _) = get(t.addr, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the public port");
    // One request is counted once (the platform's outer layer observes it,
    // the dialect service does not count it again). No other test of this
    // binary uses this route.
    let route = [("dialect", "hub"), ("route", "/forgot/verify")];
    let (before, _) = scrape(metrics).await;
    let (status, _) = t
        .call(
            Method::POST,
            "/forgot/verify",
            Some("application/x-www-form-urlencoded"),
            b"user=nobody".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (after, _) = scrape(metrics).await;
    assert_eq!(
        after.value("sms_http_requests_total", &route),
        before.value("sms_http_requests_total", &route) + 1.0
    );
    assert_eq!(
        after.value("sms_http_request_duration_seconds_count", &route),
        before.value("sms_http_request_duration_seconds_count", &route) + 1.0
    );
    // Only /metrics there.
    let (status, _, _) = get(metrics, "/signup").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_on_the_main_port_by_default() {
    let t = TestPlatform::start().await;
    assert_eq!(t.metrics_addr(), None);
    let (s, _) = scrape(t.addr).await;
    // The scrape itself is a request like any other, once the next one
    // reads it.
    let (s2, _) = scrape(t.addr).await;
    let route = [("dialect", "platform"), ("route", "/metrics")];
    assert!(
        s2.value("sms_http_requests_total", &route) > s.value("sms_http_requests_total", &route)
    );
    t.stop().await;
}

/// Names the child's directory.
const CHILD_ENV: &str = "SMS_METRICS_JSON_CHILD";
/// The child's `--log-format`.
const CHILD_FORMAT_ENV: &str = "SMS_METRICS_CHILD_FORMAT";

/// Starts the platform as a child process with `--log-format format`, its
/// stderr in `dir/stderr.log`; returns it and its address.
async fn spawn_child(dir: &Path, format: &str) -> (ChildGuard, SocketAddr) {
    let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "json_log_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(CHILD_FORMAT_ENV, format)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("child starts");
    let mut guard = ChildGuard(child);
    for _ in 0..3_000 {
        if let Ok(p) = std::fs::read_to_string(dir.join("port")) {
            let port = p.trim().parse::<u16>().expect("port");
            return (guard, ([127, 0, 0, 1], port).into());
        }
        if let Ok(Some(status)) = guard.0.try_wait() {
            panic!(
                "child exited ({status}): {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the child did not listen within 60 s");
}

/// Asks the child to stop, waits for it, returns its stderr.
async fn stop_child(dir: &Path, guard: &mut ChildGuard) -> String {
    std::fs::write(dir.join("stop"), "").unwrap();
    let mut exited = false;
    for _ in 0..1_500 {
        if guard.0.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(exited, "the child stopped");
    std::fs::read_to_string(dir.join("stderr.log")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_colour_off_a_terminal_and_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guard, addr) = spawn_child(dir.path(), "text").await;
    let req = Request::post(format!("http://{addr}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-request-id", "text-req-7")
        .body(Full::new(Bytes::from("user=nobody&password=pw-secret5")))
        .unwrap();
    let resp = client().request(req).await.expect("answered");
    assert_eq!(resp.headers()["x-request-id"], "text-req-7");
    let text = stop_child(dir.path(), &mut guard).await;
    assert!(!text.contains('\u{1b}'), "no ANSI escapes in a file");
    let line = text
        .lines()
        .find(|l| l.contains("request_id=text-req-7"))
        .expect("the request's line");
    assert!(
        line.contains("route=\"/login\"") || line.contains("route=/login"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    assert!(!text.contains("pw-secret5"), "a password reached the logs");
    assert!(
        text.lines().all(|l| !l.trim_start().starts_with('{')),
        "not JSON"
    );
}

/// The platform as a child process with the `--log-format` of
/// [`CHILD_FORMAT_ENV`] (see the module docs); does nothing in a normal run.
#[test]
fn json_log_child() {
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
        let data = dir.join("data");
        let args = PlatformArgs::try_parse_from_args([
            "platform",
            "--log-format",
            &std::env::var(CHILD_FORMAT_ENV).unwrap_or_else(|_| "json".into()),
            "--listen",
            "127.0.0.1:0",
            "--data",
            data.to_str().unwrap(),
            "--outbox",
            dir.join("outbox.jsonl").to_str().unwrap(),
            "--root-password",
            ROOT_PASSWORD,
            "--argon2-memory-kib",
            "64",
            "--argon2-passes",
            "1",
        ]);
        // Everything the filter lets through, as an operator asking for
        // trace would get it.
        sms_platform::logging::init(args.log_format, Some("trace")).expect("logging");
        let running = Platform::new(args).start().await.expect("platform starts");
        let tmp = dir.join("port.tmp");
        std::fs::write(&tmp, running.addr.port().to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("port")).unwrap();
        // Until the parent asks it to stop.
        while !dir.join("stop").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.shutdown().await;
    });
}

/// `PlatformArgs` from a command line, as the binary parses it.
trait FromArgs {
    fn try_parse_from_args<const N: usize>(args: [&str; N]) -> Self;
}

impl FromArgs for PlatformArgs {
    fn try_parse_from_args<const N: usize>(args: [&str; N]) -> Self {
        <PlatformArgs as clap::Parser>::try_parse_from(args).expect("flags parse")
    }
}

/// Kills and reaps the child when dropped (a failing test leaves none).
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_parse_carry_the_request_id_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (mut guard, addr) = spawn_child(dir.path(), "json").await;
    let http = client();
    let post_form = |path: &str, pairs: &[(&str, &str)], id: Option<&str>| {
        let mut b = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/x-www-form-urlencoded");
        if let Some(id) = id {
            b = b.header("x-request-id", id);
        }
        let req = b.body(Full::new(Bytes::from(common::form(pairs)))).unwrap();
        let http = http.clone();
        async move {
            let resp = http.request(req).await.expect("answered");
            let echoed = resp
                .headers()
                .get("x-request-id")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: Value = serde_json::from_slice(&body).expect("JSON answer");
            (echoed, v)
        }
    };
    const REQ_ID: &str = "req-4f1c-metrics-test";
    let mut secrets = Vec::new();
    let (echoed, r) = post_form(
        "/signup",
        &[("user", "carol"), ("password", "pw-secret9")],
        Some(REQ_ID),
    )
    .await;
    assert_eq!(echoed.as_deref(), Some(REQ_ID), "the client's id is echoed");
    secrets.push(r["token"].as_str().expect("token").to_owned());
    // Without an id (or with a bad one) a new one is made and echoed.
    let (echoed, r) = post_form(
        "/login",
        &[("user", "carol"), ("password", "pw-secret9")],
        None,
    )
    .await;
    let generated = echoed.expect("an id is generated");
    assert_eq!(generated.len(), 32);
    secrets.push(r["token"].as_str().expect("token").to_owned());
    let (echoed, _) = post_form(
        "/login",
        &[("user", "carol"), ("password", "wrong-pw8")],
        Some("bad id with spaces"),
    )
    .await;
    assert_ne!(echoed.as_deref(), Some("bad id with spaces"));
    post_form("/api/v4.0/sendsms/13811112222", &[("expect", "0")], None).await;
    let outbox = std::fs::read_to_string(dir.path().join("outbox.jsonl")).unwrap();
    let line: Value = serde_json::from_str(outbox.lines().last().expect("a code sent")).unwrap();
    let code = line["code"].as_str().unwrap().to_owned();
    secrets.push(code.clone());
    let (_, r) = post_form(
        "/api/v4.0/register",
        &[
            ("phone", "13811112222"),
            ("name", "n"),
            ("password", "pw-secret7"),
            ("code", &code),
        ],
        None,
    )
    .await;
    assert_eq!(r["code"], 200, "{r}");
    secrets.push(r["data"]["token"].as_str().unwrap().to_owned());
    // telsignup: a code and its token.
    let telsignup = |path: &str, body: Value| {
        let req = Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let http = http.clone();
        async move {
            let resp = http.request(req).await.expect("answered");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice::<Value>(&body).expect("JSON answer")
        }
    };
    telsignup(
        "/index.php?r=user/sms-validation-request",
        json!({"type": "sms_validation_request", "tel": "13900000000", "time": "1"}),
    )
    .await;
    let outbox = std::fs::read_to_string(dir.path().join("outbox.jsonl")).unwrap();
    let line: Value = serde_json::from_str(outbox.lines().last().unwrap()).unwrap();
    let code = line["code"].as_str().unwrap().to_owned();
    secrets.push(code.clone());
    let r = telsignup(
        "/index.php?r=user/sms-validation-code",
        json!({"type": "sms_validation_code", "tel": "13900000000", "time": "1", "code": code}),
    )
    .await;
    secrets.push(r["token"].as_str().expect("telsignup token").to_owned());
    // hub WebSocket: the token in a frame, a password change.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut ws, resp) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
            .await
            .expect("websocket handshake");
        assert!(resp.headers().contains_key("x-request-id"));
        for frame in [
            json!({"protocol": "CSLogin", "token": secrets[0], "gps": "0,0"}),
            json!({"protocol": "CSModifyPwd", "token": secrets[0], "password": "new-secret3"}),
        ] {
            ws.send(Message::Text(frame.to_string().into()))
                .await
                .unwrap();
        }
        let mut answered = false;
        while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await
        {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["protocol"] == "SCModifyPwd" {
                    secrets.push(v["token"].as_str().expect("new token").to_owned());
                    answered = true;
                    break;
                }
            }
        }
        assert!(answered, "SCModifyPwd");
    }

    let text = stop_child(dir.path(), &mut guard).await;
    let mut lines = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a stderr line is not JSON ({e}): {line}"));
        let ts = v["timestamp"].as_str().expect("a timestamp");
        chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("timestamp {ts:?} is not RFC 3339: {e}"));
        assert!(v["level"].is_string() && v["target"].is_string(), "{line}");
        lines.push(v);
    }
    assert!(lines.iter().any(|v| v["message"] == "platform listening"));
    let request = lines
        .iter()
        .find(|v| v["request_id"] == REQ_ID)
        .expect("the request's line");
    assert_eq!(request["dialect"], "hub");
    assert_eq!(request["route"], "/signup");
    assert_eq!(request["status"], 200);
    assert!(request["duration_ms"].as_f64().is_some_and(|d| d >= 0.0));
    assert!(lines.iter().any(|v| v["request_id"] == generated.as_str()));
    let sendsms = lines
        .iter()
        .find(|v| v["route"] == "/api/v4.0/sendsms/{phone}")
        .expect("the sendsms line");
    assert_eq!(sendsms["dialect"], "account_v4");
    assert!(lines
        .iter()
        .any(|v| v["dialect"] == "hub_ws" && v["status"] == 101));
    assert!(lines
        .iter()
        .any(|v| v["route"] == "/index.php?r=user/sms-validation-code"));
    for s in &secrets {
        let line = text.lines().find(|l| contains_standalone(l, s));
        assert!(line.is_none(), "a secret reached the logs: {line:?}");
    }
    for pw in ["pw-secret9", "wrong-pw8", "pw-secret7", "new-secret3"] {
        assert!(!text.contains(pw), "a password reached the logs");
    }
    assert!(
        !text.contains("13811112222/"),
        "no raw path with a phone number"
    );
}

/// Whether `needle` occurs in `line` not as part of a longer run of
/// alphanumerics (a six-digit code inside a timestamp or a duration is
/// chance, not a leak).
fn contains_standalone(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}
