//! The browser console (`/console/`) end to end in headless Chromium: starts
//! the real platform on a free port (with a pool device token, as an
//! operator would run it) and runs `node --test` in `tests/browser/`
//! (playwright-core driving Debian's `chromium`) against it. The flows and
//! their assertions are in `tests/browser/console.test.mjs`; screenshots go
//! to `<target dir>/browser-artifacts/`.
//!
//! Needs `chromium` and `tests/browser/node_modules` (`bash
//! tests/browser/setup.sh` installs both). Without them the test fails under
//! `CI=true` and is skipped with a message otherwise.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{TestPlatform, ROOT_PASSWORD};

const DEVICE_TOKEN: &str = "device-token-browser-e2e";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// Where the screenshots go: `<target dir>/browser-artifacts`.
fn artifacts_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser-artifacts")
}

fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM_PATH") {
        return Some(PathBuf::from(p)).filter(|p| p.exists());
    }
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// What is missing to run the browser tests, if anything.
fn missing() -> Vec<String> {
    let mut m = Vec::new();
    if chromium().is_none() {
        m.push("chromium (/usr/bin/chromium or $CHROMIUM_PATH)".to_owned());
    }
    if !browser_dir()
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        m.push("tests/browser/node_modules (npm ci)".to_owned());
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        m.push("node (20 or newer)".to_owned());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_flows_in_headless_chromium() {
    let missing = missing();
    if !missing.is_empty() {
        let msg = format!(
            "browser tests need {}: run `bash tests/browser/setup.sh`",
            missing.join(", ")
        );
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{msg}");
        }
        eprintln!("SKIPPED console_flows_in_headless_chromium: {msg}");
        return;
    }
    let t = TestPlatform::start_with(|a| a.device_tokens = vec![DEVICE_TOKEN.to_owned()]).await;
    let artifacts = artifacts_dir();
    std::fs::create_dir_all(&artifacts).expect("artifacts directory");
    let mut cmd = tokio::process::Command::new("node");
    cmd.args(["--test", "--test-concurrency=1", "console.test.mjs"])
        .current_dir(browser_dir())
        .env("CONSOLE_URL", format!("http://{}", t.addr))
        .env("ROOT_PASSWORD", ROOT_PASSWORD)
        .env("DEVICE_TOKEN", DEVICE_TOKEN)
        .env("ARTIFACTS_DIR", &artifacts)
        .env("CHROMIUM_PATH", chromium().expect("checked above"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    // A guard against a hung browser, not a timing assertion.
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("node --test finishes within 5 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "node --test failed: {}", out.status);
    assert!(
        stdout.contains("# fail 0") && !stdout.contains("# pass 0"),
        "node --test ran its tests: {stdout}"
    );
    for name in ["console-desktop.png", "console-phone.png"] {
        let p = artifacts.join(name);
        assert!(p.exists(), "screenshot {} saved", p.display());
        println!("screenshot artifact: {}", p.display());
    }
    t.stop().await;
}

/// The route itself, without a browser: the platform serves the embedded
/// files with their types and policy, `/console` redirects, other methods
/// are refused, and the dialects around it are untouched.
#[tokio::test]
async fn the_platform_serves_the_console() {
    use http::{Method, StatusCode};
    let t = TestPlatform::start().await;
    let (status, body) = t.raw(Method::GET, "/console/", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    let html = String::from_utf8_lossy(&body);
    assert!(html.contains(r#"<script type="module" src="app.js"></script>"#));
    for (path, ty) in [
        ("/console/app.js", "text/javascript"),
        ("/console/api.js", "text/javascript"),
        ("/console/i18n.js", "text/javascript"),
        ("/console/sms.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/favicon.svg", "image/svg+xml"),
    ] {
        let resp = get_with_headers(&t, path).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        let ct = resp.headers()["content-type"].to_str().unwrap();
        assert!(ct.starts_with(ty), "{path}: {ct}");
        let csp = resp.headers()["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'none'; script-src 'self';"),
            "{csp}"
        );
        assert!(
            csp.contains(&format!("ws://{}", t.addr)),
            "the WebSocket of this host: {csp}"
        );
    }
    let (status, body) = t.raw(Method::HEAD, "/console/", None, Vec::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty(), "HEAD answers headers only");
    let bare = get_with_headers(&t, "/console").await;
    assert_eq!(bare.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers()["location"], "/console/");
    let (status, _) = t
        .raw(Method::POST, "/console/", None, b"x=1".to_vec())
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, _) = t.raw(Method::GET, "/console/nope", None, Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The dialects answer as before.
    let (status, _) = t.raw(Method::GET, "/consoles", None, Vec::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = t
        .post_form("/signup", &[("user", "carol"), ("password", "secret1")])
        .await;
    assert_eq!(r["code"], 0, "{r}");
    t.stop().await;
}

/// A GET with its headers (the harness's `raw` keeps only the body).
async fn get_with_headers(t: &TestPlatform, path: &str) -> http::Response<hyper::body::Incoming> {
    use http_body_util::Full;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let req = http::Request::get(t.url(path))
        .header("host", t.addr.to_string())
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    client.request(req).await.expect("answered")
}
