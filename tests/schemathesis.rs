//! The OpenAPI documents (`openapi/*.yaml`) as the platform serves them, and
//! a schemathesis run against the live platform.
//!
//! * `openapi_documents_are_served` always runs: `GET /openapi` lists the
//!   five documents, each is served as `application/yaml`, is exactly the
//!   file in the repository, and documents only routes the server has (and
//!   every route it has).
//! * `schemathesis_finds_no_server_error` runs the schemathesis CLI against
//!   each document on a platform started in-process. It is SKIPPED (with a
//!   notice) unless `SMS_SCHEMATHESIS` names the CLI (a path, or `1` for
//!   `schemathesis` on `PATH`); `.ci/schemathesis.sh` installs it and sets
//!   the variable. Checks: no 5xx (nor dropped connection), and every answer
//!   conforms to the document (schema, content type, status). Examples per
//!   operation: 30, or `SMS_FUZZ_EXAMPLES`; `SMS_SCHEMATHESIS_SEED` fixes the
//!   seed.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestPlatform, ROOT_PASSWORD};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

const DIALECTS: [&str; 5] = ["hub", "telsignup", "account_v4", "pool", "sendapi"];

/// The routes each document must describe (paths as the document spells
/// them; `{x}` is a path parameter).
const ROUTES: [(&str, &[&str]); 5] = [
    (
        "hub",
        &[
            "/signup",
            "/login",
            "/forgot/vcode",
            "/forgot/verify",
            "/ws",
        ],
    ),
    ("telsignup", &["/index.php"]),
    (
        "account_v4",
        &[
            "/api/v4.0/sendsms/{mobile}",
            "/api/v4.0/isregister/{phone}",
            "/api/v4.0/register",
            "/api/v4.0/login",
            "/api/v4.0/verify_code",
            "/api/v4.0/forget_password",
        ],
    ),
    (
        "pool",
        &[
            "/phones",
            "/mobiles/{app}/{n}",
            "/vcodes",
            "/vcodes/{app}",
            "/setsize",
            "/sends/{cid}",
        ],
    ),
    (
        "sendapi",
        &[
            "/v1/signature",
            "/v1/template",
            "/v1/message",
            "/v2/signreview",
            "/v2/tempreview",
            "/v2/charge",
            "/v2/item",
            "/v2/ban",
            "/v2/pool",
            "/v2/reviews",
        ],
    ),
];

/// GET with the response's content type.
async fn get(t: &TestPlatform, path: &str) -> (StatusCode, Option<String>, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::builder()
        .method(Method::GET)
        .uri(t.url(path))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.expect("answered");
    let status = resp.status();
    let ct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, ct, body)
}

/// The path keys under `paths:` (two-space indent, no YAML parser needed).
fn documented_paths(yaml: &str) -> Vec<String> {
    let mut in_paths = false;
    let mut out = Vec::new();
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.is_empty() && !line.starts_with('#') {
            in_paths = line == "paths:";
            continue;
        }
        if in_paths {
            if let Some(rest) = line.strip_prefix("  /") {
                if let Some(path) = rest.strip_suffix(':') {
                    out.push(format!("/{path}"));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn openapi_documents_are_served() {
    let t = TestPlatform::start().await;

    let (status, ct, body) = get(&t, "/openapi").await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.unwrap_or_default().starts_with("application/json"));
    let index: Value = serde_json::from_slice(&body).expect("index is JSON");
    let urls: Vec<&str> = index["documents"]
        .as_array()
        .expect("documents")
        .iter()
        .map(|d| d["url"].as_str().expect("url"))
        .collect();
    let expected: Vec<String> = DIALECTS
        .iter()
        .map(|d| format!("/openapi/{d}.yaml"))
        .collect();
    assert_eq!(urls, expected, "{index}");

    for (dialect, routes) in ROUTES {
        let url = format!("/openapi/{dialect}.yaml");
        let (status, ct, body) = get(&t, &url).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(ct.as_deref(), Some("application/yaml"), "{url}");
        assert!(!body.is_empty(), "{url}");
        let text = std::str::from_utf8(&body).expect("UTF-8");
        assert!(text.starts_with("openapi: 3.0"), "{url}");
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("sms-http-hyper")
            .join("openapi")
            .join(format!("{dialect}.yaml"));
        let on_disk = std::fs::read_to_string(&file).expect("document in the repository");
        assert!(on_disk == text, "{url} differs from {}", file.display());

        let every = sms_http_hyper::SmsService::new(t.core().clone(), Default::default());
        let paths = documented_paths(text);
        let mut want: Vec<String> = routes.iter().map(|s| s.to_string()).collect();
        let mut got = paths.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{dialect}: documented paths");
        for p in &paths {
            let concrete = p.replace(['{', '}'], "");
            assert!(
                p == "/ws" || every.serves_path(&concrete),
                "{dialect}: {p} is documented but not served"
            );
        }
    }

    // GET only; other names are unknown.
    let (status, _) = t
        .raw(Method::POST, "/openapi/hub.yaml", None, Vec::new())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, _) = get(&t, "/openapi/nope.yaml").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    t.stop().await;
}

/// One dialect's schemathesis run.
struct Run {
    dialect: &'static str,
    exit: Option<i32>,
    cases: Option<String>,
    generated: u64,
    seed: Option<String>,
    output: String,
}

/// The line after `Test cases:` in schemathesis' summary, e.g.
/// `409 generated, 409 passed` or `69 generated, 5 found 5 unique failures`.
fn summary_line(output: &str) -> Option<String> {
    let mut lines = output.lines();
    while let Some(l) = lines.next() {
        if l.trim() == "Test cases:" {
            return lines.next().map(|s| s.trim().to_owned());
        }
    }
    None
}

fn first_number(s: &str) -> u64 {
    s.split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|w| w.parse().ok())
        .unwrap_or(0)
}

fn run_schemathesis(
    cli: &std::ffi::OsStr,
    base: &str,
    dialect: &'static str,
    examples: u32,
    work: &Path,
) -> Run {
    let out_path = work.join(format!("{dialect}.out"));
    let out = std::fs::File::create(&out_path).expect("output file");
    let mut cmd = Command::new(cli);
    cmd.arg("run")
        .arg(format!("{base}/openapi/{dialect}.yaml"))
        .arg("--url")
        .arg(base)
        .args([
            "--checks",
            "not_a_server_error,response_schema_conformance,content_type_conformance,status_code_conformance",
        ])
        .arg("--max-examples")
        .arg(examples.to_string())
        .args(["--request-timeout", "20", "--no-color"])
        .args(["--generation-database", "none"])
        .args(["--report", "junit", "--report-dir"])
        .arg(work.join(format!("{dialect}-report")))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("output file"))
        .stderr(out);
    if dialect == "sendapi" {
        cmd.arg("--auth").arg(format!("root:{ROOT_PASSWORD}"));
    }
    if let Ok(seed) = std::env::var("SMS_SCHEMATHESIS_SEED") {
        cmd.arg("--seed").arg(seed);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cli:?}: {e}"));
    // Generous: about a second per example and operation, at least 10 min.
    let limit = Duration::from_secs(600.max(u64::from(examples) * 20));
    let start = Instant::now();
    let exit = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status.code();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let cases = summary_line(&output);
    let seed = output
        .lines()
        .find_map(|l| l.strip_prefix("Seed: "))
        .map(str::to_owned);
    Run {
        dialect,
        exit,
        generated: cases.as_deref().map(first_number).unwrap_or(0),
        cases,
        seed,
        output,
    }
}

#[test]
#[ignore = "needs the schemathesis CLI: run by .ci/schemathesis.sh (part of .ci/run)"]
fn schemathesis_finds_no_server_error() {
    let cli = std::env::var_os("SMS_SCHEMATHESIS")
        .expect("set SMS_SCHEMATHESIS to the schemathesis CLI (or run .ci/schemathesis.sh, which installs it)");
    let cli = if cli == "1" {
        "schemathesis".into()
    } else {
        cli
    };
    let examples: u32 = std::env::var("SMS_FUZZ_EXAMPLES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(30);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let t = rt.block_on(TestPlatform::start());
    let base = format!("http://{}", t.addr);
    let work = tempfile::tempdir().expect("work dir");

    let mut runs = Vec::new();
    for dialect in DIALECTS {
        let run = run_schemathesis(&cli, &base, dialect, examples, work.path());
        eprintln!(
            "schemathesis {:<10} exit {:?}; test cases: {}; seed {}",
            run.dialect,
            run.exit,
            run.cases.as_deref().unwrap_or("(no summary)"),
            run.seed.as_deref().unwrap_or("?"),
        );
        runs.push(run);
    }

    // The platform still serves after all of it.
    let (status, _, _) = rt.block_on(get(&t, "/openapi"));
    assert_eq!(status, StatusCode::OK, "the platform stopped serving");
    rt.block_on(t.stop());

    let total: u64 = runs.iter().map(|r| r.generated).sum();
    eprintln!(
        "schemathesis: {total} test cases over {} documents ({examples} examples per operation)",
        runs.len()
    );
    let failed: Vec<&Run> = runs.iter().filter(|r| r.exit != Some(0)).collect();
    for r in &failed {
        eprintln!(
            "===== schemathesis {} (exit {:?}) =====\n{}",
            r.dialect, r.exit, r.output
        );
    }
    assert!(
        failed.is_empty(),
        "schemathesis found problems in: {:?}",
        failed.iter().map(|r| r.dialect).collect::<Vec<_>>()
    );
}
