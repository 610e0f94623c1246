//! No secret reaches a log line, an error or `Debug` output: every
//! provider is driven through its failures with a subscriber that keeps
//! every log line (debug level), and the carriers themselves are printed.

mod fake;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::json;
use sms_carriers::config;
use sms_core::carrier::{CarrierMessage, MessageKind};
use sms_core::clock::ManualClock;
use sms_core::random::SeededRandom;
use sms_core::sender::Channel;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const SECRETS: [&str; 5] = [
    "ali-SECRET-1",
    "tc-SECRET-2",
    "tw-SECRET-3",
    "cb-SECRET-4",
    "482913",
];

#[tokio::test]
async fn failures_log_no_secret() {
    let out = Captured::default();
    let sink = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Every request fails: 400 with an echo of the body, as a careless
    // provider might; then a 503.
    let f = fake::start(Arc::new(|s: &fake::Seen| {
        let echo = String::from_utf8_lossy(&s.body).into_owned();
        if s.body.len().is_multiple_of(2) {
            (
                400,
                json!({"Code": "isv.X", "Message": "bad", "code": 21211, "message": "bad"})
                    .to_string(),
            )
        } else {
            (503, echo)
        }
    }))
    .await;
    let url = f.url();
    let file = format!(
        "[[carrier]]\nname = \"ali\"\nkind = \"aliyun\"\nendpoint = \"{url}\"\naccess_key_id = \"id\"\naccess_key_secret = \"ali-SECRET-1\"\nsign_name = \"s\"\ncode_template = \"T\"\ncallback_token = \"cb-SECRET-4\"\n\n\
         [[carrier]]\nname = \"tc\"\nkind = \"tencent\"\nendpoint = \"{url}\"\nsecret_id = \"id\"\nsecret_key = \"tc-SECRET-2\"\nregion = \"r\"\nsdk_app_id = \"1\"\nsign_name = \"s\"\ncode_template = \"T\"\n\n\
         [[carrier]]\nname = \"tw\"\nkind = \"twilio\"\nendpoint = \"{url}\"\naccount_sid = \"AC1\"\nauth_token = \"tw-SECRET-3\"\nfrom = \"+1\"\npublic_url = \"https://x\"\n"
    );
    let cfg = config::parse(&file).unwrap();
    let carriers = sms_carriers::build::build(
        &cfg,
        &sms_carriers::build::Deps {
            clock: Arc::new(ManualClock::at(1_700_000_000)),
            random: Arc::new(SeededRandom::new(1)),
            outbox: &|_, _| Err("none".into()),
            smpp_receipts: None,
        },
    )
    .unwrap();
    let m = CarrierMessage {
        idempotency_key: "k1".into(),
        channel: Channel::Sms,
        to: "13800000000".into(),
        text: "Your code is 482913".into(),
        kind: MessageKind::Code {
            code: "482913".into(),
            purpose: None,
        },
    };
    let mut printed = format!("{cfg:?}");
    for c in carriers.values() {
        let e = c.send(&m).await.unwrap_err();
        printed.push_str(&format!("{e} {e:?} {c:?} {m:?}"));
    }
    let logs = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("refused"), "the failures were logged: {logs}");
    for s in SECRETS {
        assert!(!logs.contains(s), "{s} in logs");
        assert!(!printed.contains(s), "{s} in errors or Debug");
    }
}
