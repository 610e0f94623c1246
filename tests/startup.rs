//! What an operator sees when the platform cannot start: every error names
//! the path or address involved and what to do, and a second platform on one
//! data directory is refused at once.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sms_platform::{Platform, PlatformArgs, PlatformError};

const CHILD_ENV: &str = "SMS_STARTUP_TEST_CHILD_DIR";

fn args(data: PathBuf) -> PlatformArgs {
    let mut a = PlatformArgs::for_data_dir(data);
    a.listen = "127.0.0.1:0".parse().unwrap();
    a.argon2_memory_kib = 64;
    a.argon2_passes = 1;
    a
}

/// Not a test on its own: the platform process the lock test runs beside
/// itself (it does nothing unless started by that test).
#[test]
fn child_platform() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = PathBuf::from(dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let running = Platform::new(args(dir.join("data")))
            .start()
            .await
            .expect("child platform starts");
        std::fs::write(dir.join("ready"), running.addr.to_string()).unwrap();
        running.wait().await;
    });
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_second_platform_on_one_data_directory_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Kill(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_platform", "--test-threads=1"])
            .env(CHILD_ENV, dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("ready").exists() {
        assert!(child.0.try_wait().unwrap().is_none(), "child exited");
        assert!(Instant::now() < deadline, "child did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = dir.path().join("data");
    let err = Platform::new(args(data.clone()))
        .start()
        .await
        .expect_err("the directory is in use");
    assert!(matches!(err, PlatformError::DataDirInUse { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&data.display().to_string()), "{text}");
    assert!(
        text.contains(&format!("pid {}", child.0.id())),
        "names the process: {text}"
    );
    assert!(text.contains("--data"), "says what to do: {text}");
    // Once the holder is gone (even by SIGKILL), the directory is free.
    drop(child);
    let running = Platform::new(args(data)).start().await.expect("free again");
    running.shutdown().await;
}

#[tokio::test]
async fn an_address_in_use_is_named_with_the_flag_to_change() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut a = args(dir.path().join("data"));
    a.listen = addr.into();
    let err = Platform::new(a).start().await.expect_err("in use");
    let text = err.to_string();
    assert!(matches!(err, PlatformError::Listen { .. }), "{err:?}");
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("--listen"), "{text}");
}

#[tokio::test]
async fn a_data_path_that_is_a_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = Platform::new(args(file.clone()))
        .start()
        .await
        .expect_err("a file is no data directory");
    let text = err.to_string();
    assert!(matches!(err, PlatformError::DataDir { .. }), "{err:?}");
    assert!(text.contains(&file.display().to_string()), "{text}");
    assert!(text.contains("--data"), "{text}");
}

#[tokio::test]
async fn listen_takes_a_host_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args(dir.path().join("data"));
    a.listen = "localhost:0".parse().unwrap();
    let running = Platform::new(a).start().await.expect("localhost resolves");
    assert!(running.addr.ip().is_loopback());
    running.shutdown().await;
}
