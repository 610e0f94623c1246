//! The smallest use of the core: issue a verification code and check it,
//! with the in-memory store and a carrier that records what it would send.
//! No server, no disk.
//!
//! ```sh
//! cargo run --example minimal_otp
//! ```

use std::sync::Arc;

use sms_core::prelude::*;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Where codes go: a recorder here; an SMS carrier (or the outbox) in
    // production.
    let carrier = Arc::new(RecordingSender::new());
    let core = Core::test_builder(Stores::from_single(Arc::new(MemoryStore::new())))
        .sender(carrier.clone())
        .build()?;

    // Any spelling of the number is normalised before any rule applies.
    let phone = PhoneNumber::parse_cn_mobile("+86 138-1111-2222")?;
    let to = CodeAddress::Phone(phone);
    let client_ip = Some("203.0.113.7".parse()?);
    let issued = core.codes.send(&to, Purpose::Register, client_ip).await?;
    let sent = carrier.messages().pop().ok_or("nothing was sent")?;
    println!("sent to {}: {:?}", sent.to, sent.text);

    // A wrong code counts against the address; the right one works once.
    let code = sent.code.clone().ok_or("no code in the message")?;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let refused = core.codes.check(&to, Purpose::Register, wrong).await;
    assert!(
        matches!(refused, Err(CoreError::CodeInvalid)),
        "{refused:?}"
    );
    core.codes.check(&to, Purpose::Register, &code).await?;
    println!("checked: the code is used up");
    let again = core.codes.check(&to, Purpose::Register, &code).await;
    assert!(matches!(again, Err(CoreError::CodeInvalid)), "{again:?}");

    // A second send within the cooldown is refused, with the time to wait.
    match core.codes.send(&to, Purpose::Register, client_ip).await {
        Err(CoreError::CodeCooldown { retry_at }) => {
            assert_eq!(retry_at, issued.again_at);
            println!("resend refused until {retry_at} (cooldown)");
        }
        other => return Err(format!("expected the cooldown, got {other:?}").into()),
    }
    println!("minimal_otp: done");
    Ok(())
}
