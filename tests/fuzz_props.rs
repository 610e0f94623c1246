//! Property-based fuzzing of every decoder, against the real platform where
//! the decoder sits behind a server (decision G4: nothing a client sends may
//! produce a 5xx, a panic or a dropped connection).
//!
//! * HTTP: arbitrary bytes, strings, forms and JSON values (a recursive
//!   strategy) as bodies, with arbitrary query strings, path segments,
//!   content types and `Authorization` headers, to every route of every
//!   dialect (and to random paths and methods). The answer is never 5xx and
//!   is always JSON: the dialect's code field (`hub` `code`, `telsignup`
//!   `error_no`, `account_v4` `code`, `pool` `code`, `sendapi` `error`) with
//!   a documented value — never the platform-failure codes (-99, -500, 500,
//!   "database error.") — or 404/405/413 with `message`.
//! * WebSocket: arbitrary text, JSON and binary frames to `/ws`, logged in or
//!   not: each frame gets exactly its expected answer (`SCError`
//!   -100/-101/-102 or the request's `SC…` answer with a documented code),
//!   and the connection stays open below the bad-frame limit.
//! * Pure decoders: phone normalisation, template rendering and segment
//!   counting, request parameters, Basic credentials, path decoding.
//!
//! Each property runs 64 cases (under 30 s for the file); set
//! `SMS_FUZZ_CASES=N` for a longer run. One platform (over a sled directory
//! under Cargo's target tmp dir) serves every property of the process.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{json, Map, Value};
use sms_core::phone::PhoneNumber;
use sms_core::sending::{render, segments};
use sms_http_hyper::params::{Field, Params};
use sms_platform::{Platform, RunningPlatform};
use tokio_tungstenite::tungstenite::Message;

// ----- configuration ---------------------------------------------------------

/// Cases per property: 64, or `SMS_FUZZ_CASES`.
fn cases() -> u32 {
    std::env::var("SMS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(64)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Regression files would land in the source tree; a failure prints
        // its minimal input instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Pure properties are cheap: four times the cases.
fn pure_config() -> ProptestConfig {
    ProptestConfig {
        cases: cases().saturating_mul(4),
        ..config()
    }
}

const WS_USER: &str = "ws_fuzzer";
const WS_PASSWORD: &str = "ws-fuzz-pass-1";

// ----- the shared platform ---------------------------------------------------

/// One platform and one runtime for the whole test binary, shared by every
/// property (and every case) through [`env`].
struct Env {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    _running: RunningPlatform,
    _dir: tempfile::TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        remove_stale_dirs(root);
        let dir = tempfile::Builder::new()
            .prefix("fuzz_props-")
            .tempdir_in(root)
            .expect("temp dir");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let args = common::test_args(dir.path());
        let running = rt
            .block_on(Platform::new(args).start())
            .expect("platform starts");
        let addr = running.addr;
        let client = rt.block_on(async { Client::builder(TokioExecutor::new()).build_http() });
        let env = Env {
            rt,
            addr,
            client,
            _running: running,
            _dir: dir,
        };
        let body = json!({"user": WS_USER, "password": WS_PASSWORD}).to_string();
        let (status, v) = env
            .rt
            .block_on(env.send(
                Method::POST,
                "/signup",
                &[("content-type", "application/json".into())],
                body.into_bytes(),
            ))
            .expect("signup answered");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_of(&v)["code"], 0, "signup of the WebSocket user");
        env
    })
}

/// The statics are never dropped: directories of earlier runs (older than
/// an hour) are removed here instead.
fn remove_stale_dirs(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e.file_name().to_string_lossy().starts_with("fuzz_props-")
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(3600));
        if stale {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Env {
    /// One request; status and body, or why there was no answer.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path_and_query));
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request not built (a bug of the test): {e}"))?;
        let answer = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("no answer (connection dropped?): {e:?}"))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("body cut off: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(Duration::from_secs(20), answer)
            .await
            .map_err(|_| "no answer within 20 s".to_owned())?
    }

    /// A fresh session token of the WebSocket user.
    async fn ws_token(&self) -> String {
        let body = json!({"user": WS_USER, "password": WS_PASSWORD}).to_string();
        let (status, v) = self
            .send(
                Method::POST,
                "/login",
                &[("content-type", "application/json".into())],
                body.into_bytes(),
            )
            .await
            .expect("login answered");
        assert_eq!(status, StatusCode::OK);
        let v = json_of(&v);
        v["token"]
            .as_str()
            .unwrap_or_else(|| panic!("login of the WebSocket user: {v}"))
            .to_owned()
    }
}

fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

// ----- routes ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Hub,
    Telsignup,
    AccountV4,
    Pool,
    /// `sendapi` and the root extensions (`/v2/item`, `/v2/ban`).
    SendApi,
}

/// A route: its dialect, methods, and path with `{}` for each segment.
#[derive(Debug, Clone, Copy)]
struct Route {
    dialect: Dialect,
    methods: &'static [&'static str],
    path: &'static str,
}

const fn r(dialect: Dialect, methods: &'static [&'static str], path: &'static str) -> Route {
    Route {
        dialect,
        methods,
        path,
    }
}

const POST: &[&str] = &["POST"];
const GET: &[&str] = &["GET"];
const PUT: &[&str] = &["PUT"];
const GET_POST: &[&str] = &["GET", "POST"];
const CRUD: &[&str] = &["POST", "GET", "PUT", "DELETE"];

/// Every HTTP route of every dialect.
const ROUTES: &[Route] = &[
    r(Dialect::Hub, POST, "/signup"),
    r(Dialect::Hub, POST, "/login"),
    r(Dialect::Hub, POST, "/forgot/vcode"),
    r(Dialect::Hub, POST, "/forgot/verify"),
    r(Dialect::Telsignup, POST, "/index.php"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/sendsms/{}"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/isregister/{}"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/register"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/login"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/verify_code"),
    r(Dialect::AccountV4, GET_POST, "/api/v4.0/forget_password"),
    r(Dialect::Pool, POST, "/phones"),
    r(Dialect::Pool, GET, "/mobiles/{}/{}"),
    r(Dialect::Pool, POST, "/vcodes"),
    r(Dialect::Pool, GET, "/vcodes/{}"),
    r(Dialect::Pool, PUT, "/setsize"),
    r(Dialect::Pool, GET, "/sends/{}"),
    r(Dialect::SendApi, CRUD, "/v1/signature"),
    r(Dialect::SendApi, CRUD, "/v1/template"),
    r(Dialect::SendApi, &["POST", "GET"], "/v1/message"),
    r(Dialect::SendApi, POST, "/v2/signreview"),
    r(Dialect::SendApi, POST, "/v2/tempreview"),
    r(Dialect::SendApi, POST, "/v2/charge"),
    r(Dialect::SendApi, POST, "/v2/item"),
    r(Dialect::SendApi, POST, "/v2/ban"),
];

/// Methods tried besides the route's own (HEAD has no body to check).
const OTHER_METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// Parameter and field names of every dialect, so that generated queries,
/// forms and objects reach past "missing field".
const FIELDS: &[&str] = &[
    "user",
    "password",
    "email",
    "verify",
    "r",
    "type",
    "tel",
    "time",
    "code",
    "token",
    "username",
    "phone",
    "mobile",
    "name",
    "expect",
    "device_identifier",
    "data",
    "cid",
    "imsi",
    "imei",
    "iccid",
    "ip",
    "area",
    "vcode",
    "appname",
    "chanlid",
    "newsize",
    "signature",
    "source",
    "pics",
    "sign_id",
    "temp_id",
    "template",
    "description",
    "mobiles",
    "params",
    "audit_status",
    "reject_reason",
    "charge",
    "op_id",
    "item_id",
    "price",
    "send_price",
    "code_pattern",
    "banned",
    "uuid",
    "page",
    "page_size",
    "protocol",
];

/// Values that mean something to some decoder.
const VALUES: &[&str] = &[
    "13811112222",
    "+86 138-1111-2222",
    "008613811112222",
    "8613811112222",
    "１3811112222",
    "alice",
    "root",
    "secret1",
    "123456",
    "0",
    "1",
    "-1",
    "99999999999999999999",
    "1439280893",
    "user/sms-validation-request",
    "user/sms-validation-code",
    "user/register",
    "sms_validation_request",
    "sms_validation_code",
    "register",
    "passed",
    "rejected",
    "pending",
    "com.yy.huanju",
    "a@b.c",
    "${code}",
    "【x】",
    "%zz",
    "\u{0}",
    "",
];

/// The `telsignup` actions.
const R_ACTIONS: &[&str] = &[
    "user/sms-validation-request",
    "user/sms-validation-code",
    "user/register",
];

// ----- strategies ------------------------------------------------------------

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => any::<String>(),
    ]
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(VALUES).prop_map(str::to_owned),
        2 => "[+0-9 \\-]{0,20}",
        2 => "\\PC{0,40}",
        2 => any::<String>(),
        1 => "[a-z_]{3,20}",
    ]
}

/// Arbitrary JSON, nested up to 4 levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-3i64..25).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        text_value().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A JSON body: mostly an object of known fields, sometimes any value.
fn json_body() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::collection::btree_map(field_name(), json_value(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        1 => json_value(),
    ]
}

fn form(pairs: &[(String, String)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// A body of arbitrary bytes, text, form or JSON.
fn any_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        any::<String>().prop_map(String::into_bytes),
        prop::collection::vec((field_name(), text_value()), 0..6)
            .prop_map(|p| form(&p).into_bytes()),
        json_body().prop_map(|v| v.to_string().into_bytes()),
        // JSON cut short, or with junk after it.
        (json_body(), any::<usize>()).prop_map(|(v, cut)| {
            let s = v.to_string().into_bytes();
            let at = if s.is_empty() { 0 } else { cut % s.len() };
            s[..at].to_vec()
        }),
        (json_body(), "\\PC{1,8}").prop_map(|(v, junk)| format!("{v}{junk}").into_bytes()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("application/json; charset=utf-8".to_owned())),
        Just(Some("application/x-www-form-urlencoded".to_owned())),
        Just(Some("text/plain".to_owned())),
        Just(Some("multipart/form-data; boundary=x".to_owned())),
        Just(Some("APPLICATION/JSON".to_owned())),
        "[ -~]{0,40}".prop_map(Some),
    ]
}

/// A query string: pairs of known or arbitrary names and values, or raw
/// characters (malformed percent escapes included).
fn query() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        prop::collection::vec((field_name(), text_value()), 0..6).prop_map(|p| Some(form(&p))),
        proptest::sample::select(R_ACTIONS).prop_map(|a| Some(format!("r={a}"))),
        "[A-Za-z0-9%&=+._~!$'()*,;:@/?\\-]{0,40}".prop_map(Some),
    ]
}

/// A path segment, percent-encoded from any text or raw URL characters.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| form_urlencoded::byte_serialize(s.as_bytes()).collect()),
        proptest::sample::select(VALUES)
            .prop_map(|s| form_urlencoded::byte_serialize(s.as_bytes()).collect()),
        "[A-Za-z0-9%+._~!$'()*,;:@=&\\-]{0,20}",
        (0u32..200).prop_map(|n| n.to_string()),
    ]
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Root,
    Raw(String),
    Basic(Vec<u8>),
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        2 => Just(Auth::None),
        3 => Just(Auth::Root),
        1 => "[ -~]{0,60}".prop_map(Auth::Raw),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(Auth::Basic),
    ]
}

impl Auth {
    fn header(&self) -> Option<String> {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Self::None => None,
            Self::Root => Some(format!(
                "Basic {}",
                b64(format!("root:{}", common::ROOT_PASSWORD).as_bytes())
            )),
            Self::Raw(s) => Some(s.clone()),
            Self::Basic(b) => Some(format!("Basic {}", b64(b))),
        }
    }
}

/// One HTTP request to a route (or to a random path).
#[derive(Debug, Clone)]
struct HttpCase {
    route: Option<Route>,
    method: String,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    auth: Auth,
    body: Vec<u8>,
}

impl HttpCase {
    fn uri(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

fn fill(path: &str, segs: &[String]) -> String {
    let mut out = String::new();
    let mut segs = segs.iter();
    let mut parts = path.split("{}").peekable();
    while let Some(p) = parts.next() {
        out.push_str(p);
        if parts.peek().is_some() {
            out.push_str(segs.next().map(String::as_str).unwrap_or("x"));
        }
    }
    out
}

fn http_case(body: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = HttpCase> {
    let routed = (
        proptest::sample::select(ROUTES),
        any::<proptest::sample::Index>(),
        prop::bool::weighted(0.1),
        proptest::sample::select(OTHER_METHODS),
        prop::collection::vec(segment(), 2),
    )
        .prop_map(|(route, i, other, m, segs)| {
            let method = if other {
                m
            } else {
                route.methods[i.index(route.methods.len())]
            };
            (Some(route), method.to_owned(), fill(route.path, &segs))
        });
    let random_path = (
        proptest::sample::select(OTHER_METHODS),
        prop::collection::vec(segment(), 0..4),
    )
        .prop_map(|(m, segs)| (None, m.to_owned(), format!("/{}", segs.join("/"))));
    let target = prop_oneof![9 => routed, 1 => random_path];
    (target, query(), content_type(), auth(), body).prop_map(
        |((route, method, path), query, content_type, auth, body)| HttpCase {
            route,
            method,
            path,
            query,
            content_type,
            auth,
            body,
        },
    )
}

// ----- the HTTP oracle -------------------------------------------------------

fn int_field(v: &Value, name: &str) -> Result<i64, TestCaseError> {
    v[name]
        .as_i64()
        .ok_or_else(|| TestCaseError::fail(format!("`{name}` is not an integer: {v}")))
}

/// Checks one answer against the dialect's contract.
fn check_answer(case: &HttpCase, status: StatusCode, body: &[u8]) -> Result<(), TestCaseError> {
    let ctx = || {
        format!(
            "{} {} ct={:?} auth={:?} body={:?} → {} {:?}",
            case.method,
            case.uri(),
            case.content_type,
            case.auth,
            String::from_utf8_lossy(&case.body),
            status,
            String::from_utf8_lossy(body)
        )
    };
    prop_assert!(!status.is_server_error(), "5xx: {}", ctx());
    if status == StatusCode::OK && case.path.starts_with("/openapi") {
        // A random path that hit a served document (YAML, not JSON).
        prop_assert!(body.starts_with(b"openapi: 3.0"), "{}", ctx());
        return Ok(());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| TestCaseError::fail(format!("not JSON: {}", ctx())))?;
    prop_assert!(v.is_object(), "not a JSON object: {}", ctx());
    let outside = [
        StatusCode::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED,
        StatusCode::PAYLOAD_TOO_LARGE,
    ];
    let Some(route) = case.route else {
        // A random path: unknown (404), or a route after all.
        prop_assert!(status.is_success() || status.is_client_error(), "{}", ctx());
        return Ok(());
    };
    if !route.methods.contains(&case.method.as_str()) {
        prop_assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{}", ctx());
    }
    if outside.contains(&status) {
        prop_assert!(v["message"].is_string(), "{}", ctx());
        return Ok(());
    }
    match route.dialect {
        Dialect::Hub => {
            prop_assert_eq!(status, StatusCode::OK, "{}", ctx());
            let code = int_field(&v, "code")?;
            prop_assert!((-7..=0).contains(&code), "hub code {}: {}", code, ctx());
        }
        Dialect::AccountV4 => {
            prop_assert_eq!(status, StatusCode::OK, "{}", ctx());
            let code = int_field(&v, "code")?;
            prop_assert!(
                [200, -1, -2, -3, -4].contains(&code),
                "account_v4 code {}: {}",
                code,
                ctx()
            );
            prop_assert!(v["msg"].is_string(), "{}", ctx());
        }
        Dialect::Pool => {
            prop_assert_eq!(status, StatusCode::OK, "{}", ctx());
            let code = int_field(&v, "code")?;
            prop_assert!(
                [200, 208, 400, 406].contains(&code),
                "pool code {}: {}",
                code,
                ctx()
            );
        }
        Dialect::Telsignup => {
            prop_assert_eq!(status, StatusCode::OK, "{}", ctx());
            let no = int_field(&v, "error_no")?;
            prop_assert!((0..=7).contains(&no), "error_no {}: {}", no, ctx());
            prop_assert!(v["success"].is_boolean(), "{}", ctx());
            prop_assert!(v["type"].is_string(), "{}", ctx());
            prop_assert_eq!(v["success"].as_bool(), Some(no == 0), "{}", ctx());
            prop_assert!(
                v["error_msg"] != "database error.",
                "platform failure: {}",
                ctx()
            );
        }
        Dialect::SendApi => {
            if status == StatusCode::OK {
                return Ok(());
            }
            prop_assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::FORBIDDEN,
                "{}",
                ctx()
            );
            let err = v["error"].as_str().unwrap_or("");
            prop_assert!(err.starts_with("ER:00"), "{}", ctx());
            prop_assert!(v["message"].is_string(), "{}", ctx());
            let table_400 = ["ER:0001", "ER:0002", "ER:0003", "ER:0004"];
            prop_assert_eq!(
                status == StatusCode::BAD_REQUEST,
                table_400.contains(&err),
                "status does not match the error table: {}",
                ctx()
            );
        }
    }
    Ok(())
}

fn run_http(case: &HttpCase) -> Result<(), TestCaseError> {
    let env = env();
    let mut headers = Vec::new();
    if let Some(ct) = &case.content_type {
        headers.push(("content-type", ct.clone()));
    }
    if let Some(a) = case.auth.header() {
        headers.push(("authorization", a));
    }
    let method = Method::from_bytes(case.method.as_bytes()).expect("method");
    let (status, body) = env
        .rt
        .block_on(env.send(method, &case.uri(), &headers, case.body.clone()))
        .map_err(|e| TestCaseError::fail(format!("{}: {e}", case.uri())))?;
    check_answer(case, status, &body)
}

// ----- near-valid requests ---------------------------------------------------

/// The fields a route reads.
fn route_fields(path: &str) -> &'static [&'static str] {
    match path {
        "/signup" | "/login" => &["user", "password"],
        "/forgot/vcode" => &["user", "email"],
        "/forgot/verify" => &["user", "email", "verify"],
        "/index.php" => &[
            "type", "tel", "time", "code", "token", "username", "password",
        ],
        "/api/v4.0/sendsms/{}" | "/api/v4.0/isregister/{}" => &["expect", "mobile", "phone"],
        "/api/v4.0/register" => &["phone", "name", "password", "device_identifier", "code"],
        "/api/v4.0/login" => &["phone", "password", "device_identifier"],
        "/api/v4.0/verify_code" => &["phone", "code"],
        "/api/v4.0/forget_password" => &["phone", "password"],
        "/phones" | "/vcodes" => &["data"],
        "/setsize" => &["newsize"],
        "/v1/signature" => &[
            "signature",
            "source",
            "pics",
            "sign_id",
            "page",
            "page_size",
        ],
        "/v1/template" => &[
            "name",
            "template",
            "type",
            "description",
            "sign_id",
            "temp_id",
            "page",
            "page_size",
        ],
        "/v1/message" => &["sign_id", "temp_id", "mobiles", "params", "uuid"],
        "/v2/signreview" => &["sign_id", "audit_status", "reject_reason"],
        "/v2/tempreview" => &["temp_id", "audit_status", "reject_reason"],
        "/v2/charge" => &["user", "charge", "op_id"],
        "/v2/item" => &["item_id", "name", "price", "send_price", "code_pattern"],
        "/v2/ban" => &["user", "banned"],
        _ => &[],
    }
}

/// The fields of a `pool` upload entry (numbers and codes together: each
/// route ignores the other's).
const POOL_ENTRY: &[&str] = &[
    "mobile", "cid", "imsi", "imei", "iccid", "ip", "area", "vcode", "appname", "chanlid",
];

/// A value a decoder might accept for `field`.
fn plausible(field: &'static str) -> BoxedStrategy<Value> {
    let s = |re: &'static str| re.prop_map(Value::String).boxed();
    match field {
        "tel" | "phone" | "mobile" => phone_like().prop_map(Value::String).boxed(),
        "mobiles" => prop::collection::vec(phone_like().prop_map(Value::String), 0..4)
            .prop_map(Value::Array)
            .boxed(),
        "data" => {
            prop::collection::vec(near_valid_object(POOL_ENTRY).prop_map(Value::Object), 0..4)
                .prop_map(Value::Array)
                .boxed()
        }
        "sign_id" | "temp_id" => prop_oneof![
            (0i64..12).prop_map(Value::from),
            (0u32..12).prop_map(|n| Value::String(n.to_string())),
        ]
        .boxed(),
        "type" => proptest::sample::select(vec![
            json!("sms_validation_request"),
            json!("sms_validation_code"),
            json!("register"),
            json!(1),
            json!(2),
            json!(3),
            json!("2"),
        ])
        .boxed(),
        "time" => prop_oneof![
            s("[0-9]{1,12}"),
            (0u64..2_000_000_000).prop_map(Value::from)
        ]
        .boxed(),
        "password" => s("[!-~]{4,16}"),
        "user" | "username" | "name" => s("[A-Za-z0-9_]{2,22}"),
        "email" => s("[a-z]{1,5}@[a-z]{1,5}\\.[a-z]{2,3}"),
        "code" | "verify" | "vcode" => s("[0-9]{4,8}"),
        "audit_status" => {
            proptest::sample::select(vec![json!("passed"), json!("rejected"), json!("pending")])
                .boxed()
        }
        "charge" | "price" | "send_price" | "newsize" | "page" | "page_size" => {
            (-5i64..300).prop_map(Value::from).boxed()
        }
        "banned" => any::<bool>().prop_map(Value::Bool).boxed(),
        "expect" => {
            proptest::sample::select(vec![json!("0"), json!("1"), json!(0), json!(2)]).boxed()
        }
        "params" => prop::collection::btree_map("code|[a-z]{1,4}", text_value(), 0..3)
            .prop_map(|m| json!(m))
            .boxed(),
        "pics" => prop::collection::vec(text_value().prop_map(Value::String), 0..3)
            .prop_map(Value::Array)
            .boxed(),
        _ => text_value().prop_map(Value::String).boxed(),
    }
}

/// An object with each of `fields` mostly present, mostly plausible.
fn near_valid_object(fields: &'static [&'static str]) -> BoxedStrategy<Map<String, Value>> {
    let per_field: Vec<_> = fields
        .iter()
        .map(|f| {
            let f: &'static str = f;
            proptest::option::weighted(0.85, prop_oneof![4 => plausible(f), 1 => json_value()])
                .prop_map(move |v| v.map(|v| (f.to_owned(), v)))
        })
        .collect();
    per_field
        .prop_map(|kvs| kvs.into_iter().flatten().collect::<Map<_, _>>())
        .boxed()
}

/// A form of an object: scalars as text, the rest as JSON.
fn form_of(o: &Map<String, Value>) -> String {
    let pairs: Vec<(String, String)> = o
        .iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k.clone(), text)
        })
        .collect();
    form(&pairs)
}

/// A request close to what each route expects: its own method (mostly), its
/// fields with plausible values, the right content type, root credentials
/// for `sendapi`, and for `telsignup` an action and matching `type`.
fn near_valid_case() -> impl Strategy<Value = HttpCase> {
    proptest::sample::select(ROUTES).prop_flat_map(|route| {
        (
            Just(route),
            any::<proptest::sample::Index>(),
            prop::collection::vec(
                prop_oneof![
                    phone_like().prop_map(|p| {
                        form_urlencoded::byte_serialize(p.as_bytes()).collect::<String>()
                    }),
                    segment()
                ],
                2,
            ),
            near_valid_object(route_fields(route.path)),
            near_valid_object(route_fields(route.path)),
            0u8..10,
            proptest::sample::select(R_ACTIONS),
            prop_oneof![4 => Just(Auth::Root), 1 => auth()],
        )
            .prop_map(|(route, i, segs, mut body, query, dice, action, auth)| {
                let method = route.methods[i.index(route.methods.len())];
                let form_capable = matches!(route.dialect, Dialect::Hub | Dialect::AccountV4);
                let mut q = match dice % 3 {
                    0 => None,
                    _ => Some(form_of(&query)).filter(|q| !q.is_empty()),
                };
                if route.dialect == Dialect::Telsignup {
                    q = Some(format!("r={action}"));
                    if dice < 8 {
                        let ty = action.trim_start_matches("user/").replace('-', "_");
                        body.insert("type".into(), Value::String(ty));
                    }
                }
                let (content_type, bytes) = if form_capable && dice >= 6 {
                    (
                        "application/x-www-form-urlencoded",
                        form_of(&body).into_bytes(),
                    )
                } else {
                    (
                        "application/json",
                        Value::Object(body).to_string().into_bytes(),
                    )
                };
                HttpCase {
                    route: Some(route),
                    method: method.to_owned(),
                    path: fill(route.path, &segs),
                    query: q,
                    content_type: Some(content_type.to_owned()),
                    auth,
                    body: if method == "GET" { Vec::new() } else { bytes },
                }
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Requests close to valid, to reach past the first checks.
    #[test]
    fn http_near_valid(case in near_valid_case()) {
        run_http(&case)?;
    }

    /// Arbitrary bytes, text, forms and JSON with random content types,
    /// queries, segments, methods and credentials, to every route.
    #[test]
    fn http_arbitrary_requests(case in http_case(any_body().boxed())) {
        run_http(&case)?;
    }

    /// Arbitrary JSON values (recursive) as `application/json` bodies.
    #[test]
    fn http_arbitrary_json(
        mut case in http_case(json_body().prop_map(|v| v.to_string().into_bytes()).boxed())
    ) {
        case.content_type = Some("application/json".into());
        run_http(&case)?;
    }
}

// ----- WebSocket -------------------------------------------------------------

type WsStream = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const WS_REQUESTS: &[&str] = &[
    "CSLogin",
    "CSLogout",
    "CSModifyPwd",
    "CSMobileNum",
    "CSSendMsg",
    "CSBindEmailGetVCode",
    "CSBindEmailCheckVCode",
];

const WS_FIELDS: &[&str] = &[
    "token",
    "gps",
    "password",
    "itemId",
    "count",
    "area",
    "operator",
    "customNum",
    "mobileNum",
    "msg",
    "email",
    "vCode",
];

#[derive(Debug, Clone)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

fn ws_object() -> impl Strategy<Value = Value> {
    let protocol = prop_oneof![
        4 => proptest::sample::select(WS_REQUESTS).prop_map(|s| Some(json!(s))),
        1 => proptest::sample::select(vec!["SCLogin", "cslogin", "", "PushKickout"])
            .prop_map(|s| Some(json!(s))),
        1 => json_value().prop_map(Some),
        1 => Just(None),
    ];
    let fields = prop::collection::btree_map(
        prop_oneof![
            3 => proptest::sample::select(WS_FIELDS).prop_map(str::to_owned),
            1 => "\\PC{0,10}",
        ],
        json_value(),
        0..6,
    );
    (protocol, fields).prop_map(|(p, f): (Option<Value>, BTreeMap<String, Value>)| {
        let mut m: Map<String, Value> = f.into_iter().collect();
        if let Some(p) = p {
            m.insert("protocol".into(), p);
        }
        Value::Object(m)
    })
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        3 => ws_object().prop_map(|v| Frame::Text(v.to_string())),
        1 => any::<String>().prop_map(Frame::Text),
        1 => json_value().prop_map(|v| Frame::Text(v.to_string())),
        1 => prop::collection::vec(any::<u8>(), 0..256).prop_map(Frame::Binary),
    ]
}

/// What a frame must be answered with, given the login state.
#[derive(Debug, PartialEq)]
enum Expect {
    /// `SCError` with this code.
    Error(i64),
    /// The request's answer, with a code from this set.
    Answer(&'static str, &'static [i64]),
}

fn expect(frame: &Frame, logged_in: bool) -> Expect {
    let text = match frame {
        Frame::Binary(_) => return Expect::Error(-102),
        Frame::Text(t) => t,
    };
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(o)) => o,
        _ => return Expect::Error(-102),
    };
    let name = match obj.get("protocol") {
        Some(Value::String(s)) if WS_REQUESTS.contains(&s.as_str()) => s.as_str(),
        _ => return Expect::Error(-101),
    };
    match name {
        // A generated token is never valid.
        "CSLogin" => Expect::Answer("SCLogin", &[-1]),
        _ if !logged_in => Expect::Error(-100),
        "CSLogout" => Expect::Answer("SCLogout", &[0]),
        "CSModifyPwd" => Expect::Answer("SCModifyPwd", &[-1, -2, -3, -4]),
        "CSMobileNum" => Expect::Answer("SCMobileNum", &[0, -1, -2, -3, -4, -5, -6, -7]),
        "CSSendMsg" => Expect::Answer("SCSendMsg", &[0, -1, -2, -3, -4, -5]),
        "CSBindEmailGetVCode" => Expect::Answer("SCBindEmailGetVCode", &[0, -1, -3, -4]),
        _ => Expect::Answer("SCBindEmailCheckVCode", &[0, -1, -2, -3]),
    }
}

async fn ws_connect(addr: SocketAddr) -> Result<WsStream, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (stream, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(stream)
}

/// The next JSON frame that is not a push, within 10 s.
async fn ws_answer(ws: &mut WsStream) -> Result<Value, String> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?;
        match next {
            None => return Err("connection closed".into()),
            Some(Err(e)) => return Err(format!("connection failed: {e}")),
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .map_err(|_| format!("answer is not JSON: {t}"))?;
                let p = v["protocol"].as_str().unwrap_or("");
                if p == "PushKickout" {
                    return Err(format!("kicked out: {v}"));
                }
                if !p.starts_with("Push") {
                    return Ok(v);
                }
            }
            Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
            Some(Ok(_)) => continue,
        }
    }
}

async fn ws_send(ws: &mut WsStream, frame: &Frame) -> Result<(), String> {
    let msg = match frame {
        Frame::Text(t) => Message::Text(t.clone().into()),
        Frame::Binary(b) => Message::Binary(b.clone().into()),
    };
    ws.send(msg).await.map_err(|e| format!("send: {e}"))
}

async fn ws_case(login: bool, frames: &[Frame]) -> Result<(), String> {
    let env = env();
    let mut ws = ws_connect(env.addr).await?;
    let mut logged_in = false;
    if login {
        let token = env.ws_token().await;
        ws_send(
            &mut ws,
            &Frame::Text(json!({"protocol": "CSLogin", "token": token, "gps": ""}).to_string()),
        )
        .await?;
        let v = ws_answer(&mut ws).await?;
        if v["protocol"] != "SCLogin" || v["code"] != 0 {
            return Err(format!("login failed: {v}"));
        }
        logged_in = true;
    }
    for (i, f) in frames.iter().enumerate() {
        let want = expect(f, logged_in);
        ws_send(&mut ws, f).await?;
        let got = ws_answer(&mut ws)
            .await
            .map_err(|e| format!("frame {i} {f:?}: {e}"))?;
        let code = got["code"].as_i64();
        let ok = match &want {
            Expect::Error(c) => got["protocol"] == "SCError" && code == Some(*c),
            Expect::Answer(name, codes) => {
                got["protocol"] == *name && code.is_some_and(|c| codes.contains(&c))
            }
        };
        if !ok {
            return Err(format!(
                "frame {i} {f:?} (logged in: {logged_in}): expected {want:?}, got {got}"
            ));
        }
        if want == Expect::Answer("SCLogout", &[0]) {
            logged_in = false;
        }
    }
    // Still open: a known request is answered.
    ws_send(
        &mut ws,
        &Frame::Text(json!({"protocol": "CSBindEmailGetVCode", "email": "x"}).to_string()),
    )
    .await?;
    let got = ws_answer(&mut ws)
        .await
        .map_err(|e| format!("after the frames: {e}"))?;
    let fine = if logged_in {
        got["protocol"] == "SCBindEmailGetVCode" && got["code"] == -1
    } else {
        got["protocol"] == "SCError" && got["code"] == -100
    };
    if !fine {
        return Err(format!("after the frames: {got}"));
    }
    let _ = ws.close(None).await;
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Fewer than 20 arbitrary frames, logged in or not: each answered as
    /// expected, and the connection stays open.
    #[test]
    fn ws_arbitrary_frames(login in any::<bool>(), frames in prop::collection::vec(frame(), 1..20)) {
        let r = env().rt.block_on(ws_case(login, &frames));
        prop_assert!(r.is_ok(), "{}", r.unwrap_err());
    }
}

/// The bad-frame limit itself: 20 bad frames are answered and the connection
/// stays open; the 21st within the minute closes it.
#[test]
fn ws_bad_frame_limit() {
    let env = env();
    env.rt.block_on(async {
        let mut ws = ws_connect(env.addr).await.expect("connect");
        for i in 0..20 {
            let f = if i % 2 == 0 {
                Frame::Binary(vec![i as u8])
            } else {
                Frame::Text("{}".into())
            };
            ws_send(&mut ws, &f).await.expect("send");
            let v = ws_answer(&mut ws).await.expect("answered");
            assert_eq!(v["protocol"], "SCError", "{v}");
        }
        ws_send(&mut ws, &Frame::Text("[]".into()))
            .await
            .expect("send");
        // The 21st is answered, then the connection closes.
        let v = ws_answer(&mut ws).await.expect("answered");
        assert_eq!(v["code"], -102, "{v}");
        assert!(
            ws_answer(&mut ws).await.is_err(),
            "closed after 21 bad frames"
        );
    });
}

// ----- pure decoders ---------------------------------------------------------

fn phone_like() -> impl Strategy<Value = String> {
    let prefix = proptest::sample::select(vec!["", "+86", "0086", "86", "+", "+1", "086"]);
    let digits = "1[0-9]{10}";
    let seps = prop::collection::vec((0usize..16, proptest::sample::select(vec![" ", "-"])), 0..4);
    (prefix, digits, seps).prop_map(|(p, d, seps)| {
        let mut s = format!("{p}{d}");
        for (at, sep) in seps {
            let at = at.min(s.len());
            s.insert_str(at, sep);
        }
        s
    })
}

/// Template text rich in placeholders, braces and dollars.
fn template_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("${".to_owned()),
            Just("}".to_owned()),
            Just("$".to_owned()),
            Just("{".to_owned()),
            Just("${code}".to_owned()),
            "[a-z]{1,4}",
            "\\PC{0,4}",
            any::<String>(),
        ],
        0..12,
    )
    .prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(pure_config())]

    /// Never panics; an accepted number prints as 11 digits starting with 1,
    /// its E.164 form is `+86` and those digits, and it parses back to itself.
    #[test]
    fn phone_parse_arbitrary(input in prop_oneof![any::<String>(), "[+0-9 \\-]{0,24}", phone_like()]) {
        if let Ok(p) = PhoneNumber::parse_cn_mobile(&input) {
            let s = p.to_string();
            prop_assert_eq!(s.len(), 11, "{:?} → {}", input, s);
            prop_assert!(s.starts_with('1') && s.bytes().all(|b| b.is_ascii_digit()), "{:?} → {}", input, s);
            prop_assert_eq!(p.as_e164(), format!("+86{s}"));
            prop_assert_eq!(PhoneNumber::parse_cn_mobile(&s).ok(), Some(p));
        }
    }

    /// Every G5 spelling of a mobile (prefix, spaces, dashes) is accepted as
    /// the same number.
    #[test]
    fn phone_spellings_normalise(d in "1[0-9]{10}", p in proptest::sample::select(vec!["", "+86", "0086", "86", "+86 ", "0086-"]),
                                 seps in prop::collection::vec((0usize..11, proptest::sample::select(vec![" ", "-"])), 0..3)) {
        let mut spaced = d.clone();
        for (at, sep) in seps.iter().rev() {
            spaced.insert_str((*at).min(spaced.len()), sep);
        }
        let input = format!("{p}{spaced}");
        let parsed = PhoneNumber::parse_cn_mobile(&input);
        prop_assert!(parsed.is_ok(), "{:?} refused", input);
        prop_assert_eq!(parsed.unwrap().to_string(), d);
    }

    /// Rendering never panics; without values it is the identity, and so it
    /// is on any text without `${`.
    #[test]
    fn render_arbitrary(content in template_text(),
                        params in prop::collection::hash_map("\\PC{0,6}|code", "\\PC{0,10}", 0..4)) {
        let out = render(&content, &params);
        prop_assert_eq!(render(&content, &HashMap::new()), content.clone());
        if !content.contains("${") {
            prop_assert_eq!(out, content);
        }
    }

    /// Segment counting never panics and is consistent.
    #[test]
    fn segments_arbitrary(text in prop_oneof![any::<String>(), "[ -~]{0,400}", "\\PC{0,200}"]) {
        let s = segments(&text);
        prop_assert!(s.count >= 1);
        let (single, multi) = if s.gsm7 { (160, 153) } else { (70, 67) };
        if s.gsm7 {
            prop_assert!(s.units >= text.chars().count());
        } else {
            prop_assert_eq!(s.units, text.encode_utf16().count());
        }
        prop_assert_eq!(s.count == 1, s.units <= single);
        let capacity = if s.count == 1 { single } else { s.count as usize * multi };
        prop_assert!(capacity >= s.units);
        prop_assert!(s.count == 1 || (s.count as usize - 1) * multi < s.units, "not the fewest segments");
    }

    /// The G2 parameter decoder never panics, and a body value wins over a
    /// query value.
    #[test]
    fn params_arbitrary(query in proptest::option::of(any::<String>()),
                        ct in proptest::option::of("[ -~]{0,30}"),
                        body in prop::collection::vec(any::<u8>(), 0..256),
                        key in "[a-z]{1,8}", qv in "[a-z0-9]{1,8}", bv in "[a-z0-9]{1,8}") {
        let _ = Params::from_parts(query.as_deref(), ct.as_deref(), &body);
        let q = format!("{key}={qv}");
        let form_body = format!("{key}={bv}");
        let p = Params::from_parts(Some(&q), Some("application/x-www-form-urlencoded"), form_body.as_bytes());
        prop_assert_eq!(p.field(&key), Field::Text(&bv));
        let json_body = json!({ key.clone(): bv.clone() }).to_string();
        let p = Params::from_parts(Some(&q), Some("application/json"), json_body.as_bytes());
        prop_assert_eq!(p.field(&key), Field::Text(&bv));
    }

    /// Basic credentials: never panics; round-trips a user without `:`.
    #[test]
    fn basic_credentials_arbitrary(raw in "[ -~]{0,80}", user in "[^:]{0,20}", pass in "\\PC{0,20}") {
        use base64::Engine;
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(&raw) {
            h.insert(http::header::AUTHORIZATION, v);
            let _ = sms_http_hyper::basic_auth::credentials(&h);
        }
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        h.insert(http::header::AUTHORIZATION, http::HeaderValue::from_str(&format!("Basic {token}")).unwrap());
        prop_assert_eq!(sms_http_hyper::basic_auth::credentials(&h), Some((user, pass)));
    }

    /// Path decoders never panic; decoding is the identity without `%`.
    #[test]
    fn path_decoders_arbitrary(path in prop_oneof![any::<String>(), "(/[A-Za-z0-9%.+_-]{0,12}){0,5}"]) {
        let _ = sms_http_hyper::pool::Endpoint::from_path(&path);
        let _ = sms_http_hyper::account_v4::Endpoint::from_path(&path);
        let _ = sms_http_hyper::hub::Endpoint::from_path(&path);
        let _ = sms_http_hyper::openapi::Document::from_path(&path);
        let decoded = sms_http_hyper::params::percent_decode(&path);
        if !path.contains('%') {
            prop_assert_eq!(decoded, path);
        }
    }
}
