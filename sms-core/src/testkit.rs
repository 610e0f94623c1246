//! The store conformance kit (feature `testkit`).
//!
//! Every check is a `pub async fn` over [`Stores`]; [`store_conformance_tests!`](crate::store_conformance_tests)
//! expands to one `#[test]` per check for a given constructor, so a backend —
//! ours or an integrator's — proves it keeps every `# Contract` of
//! [`crate::store`] with one line:
//!
//! ```ignore
//! sms_core::store_conformance_tests!(async { my_backend().await.stores() });
//! ```
//!
//! Each check gets a fresh, empty store from the constructor.

use std::future::Future;
use std::sync::Arc;

use crate::code_decision::{
    CheckCode, CheckOutcome, CodeDecision, CodeVerdict, IssueCode, IssueOutcome, PumpChecks,
};
use crate::error::{StoreError, UniqueField};
use crate::events::Push;
use crate::identity::{Email, Username};
use crate::ledger::{LedgerOp, LedgerOutcome, LedgerRequest, Refusal};
use crate::limits::{LimitCheck, LimitDecision, LimitRule};
use crate::phone::PhoneNumber;
use crate::pool::{
    DeviceMessage, HoldTerms, Item, LeaseFilter, LeaseOutcome, LeaseRequest, NumberInfo, Operator,
    ReceivedSms,
};
use crate::pool_service::{DeviceScope, IncomingSms};
use crate::receive::{ReceiveOutcome, ReceiveRefusal, ReceiveRequest};
use crate::secret::{CodeHash, CodeHasher, Token};
use crate::sending::{
    AuditStatus, RecipientStatus, SendTask, Signature, TaskState, Template, TemplateType,
};
use crate::session_decision::OpenSession;
use crate::store::{
    CodeKey, CodeRecord, CodeStore, ConsumeOutcome, Grant, GrantKind, Purpose, RedeemOutcome,
    Session, SessionOrigin, Stores,
};
use crate::store::{
    EntryQuery, LimitMode, RevokeScope, SignatureWrite, TemplateWrite, UserKey, WriteOutcome,
    DEFAULT_POOL_SIZE,
};
use crate::user::{User, UserChange, UserId};

/// Runs a check on a fresh multi-threaded runtime (used by the macro, so
/// that test crates need no runtime of their own).
pub fn run<F: Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("test runtime")
        .block_on(f)
}

/// Every check: (the port it exercises, its name, the contract rule it
/// checks). A failing check names its rule through [`explain`].
pub const CHECKS: &[(&str, &str, &str)] = &[
    ("UserStore", "users_unique_fields", "Username (case-insensitive), phone and email are unique; a conflicting write changes nothing."),
    ("UserStore", "users_lookup_and_update", "Lookups by every index; `update_user` returns the record before the change; email moves free the old address and collide with others."),
    ("UserStore", "users_concurrent_create_one_winner", "Concurrent creates racing for one username, phone or email: exactly one winner each."),
    ("SessionStore", "sessions_lifecycle", "Insert, find by hash only, revoke one, revoke all of a user but one."),
    ("SessionStore", "sessions_first_use_once", "`mark_session_used`: of concurrent callers exactly one sees it unused."),
    ("SessionStore", "sessions_open_caps_oldest_first", "Opening a session keeps at most `max_sessions` live ones per user, evicting expired ones and then the oldest by the store's sequence (all opened in the same second here); a login after an expired session is a renewal; concurrent opens never leave more than the cap."),
    ("SessionStore", "sessions_open_with_sign_up", "A sign-up opens the user's first session in the same atomic step; a taken field fails with a conflict and leaves neither user nor session."),
    ("CodeStore", "codes_cooldown_and_replace", "A new code replaces the old only outside the cooldown; keys are per (address, purpose)."),
    ("CodeStore", "codes_single_use_under_concurrency", "50 concurrent checks of the right code: exactly one succeeds."),
    ("CodeStore", "codes_attempts_and_expiry", "Wrong tries are counted (never lost under concurrency); the code is void after the maximum; expiry is exact."),
    ("CodeStore", "codes_issue_is_one_atomic_decision", "An issue refused by the cooldown counts against no cap; concurrent sends to one address issue exactly one code and count exactly once; the caps and the breaker's count are kept in the limit states [`LimitStore`] reads.  [`LimitStore`]: crate::store::LimitStore"),
    ("CodeStore", "codes_check_is_one_atomic_decision", "Concurrent checks of one address never overrun the failure budget, and a locked check changes nothing; a success is counted on the breaker and stores the grant it carries, in the same step."),
    ("GrantStore", "grants_single_use", "One grant per (kind, phone); consumed exactly once under concurrency; used grants stay readable; token mismatch is told apart."),
    ("LimitStore", "limits_all_or_nothing", "`check` with `LimitMode::Acquire` records on every key only when every check passes; with `LimitMode::Peek` it records nothing."),
    ("LimitStore", "limits_concurrent_never_exceed", "Concurrent `LimitMode::Acquire` checks never get more than `max` hits allowed."),
    ("LimitStore", "limits_lockout_and_reset", "A lockout fires at `max` and lasts its time; `reset` forgets the key."),
    ("PhonePool", "pool_intake_caps_and_refresh", "Intake: capped by the pool size minus available numbers, in order; re-uploads refresh and are listed without counting; `full` when nothing could be taken."),
    ("PhonePool", "pool_lease_exclusive_and_once_per_item", "A number is leased to one user at a time and never handed out twice for one item, by leases and hand-outs alike."),
    ("PhonePool", "pool_concurrent_leases_distinct", "Concurrent leases never get the same number."),
    ("PhonePool", "pool_filters", "Area, operator and custom-number filters."),
    ("PhonePool", "pool_hand_out_after_many", "After many hand-outs and leases for an app, hand-outs and leases still return exactly the numbers never used for it, oldest first: numbers under a live lease are skipped and come back once it ends, new numbers come last, and filtered or single-number leases count as use."),
    ("PhonePool", "pool_concurrent_hand_outs_once", "Concurrent hand-outs and leases for one app, in many small calls, never give one number twice, each call oldest first, until every number was given once."),
    ("PhonePool", "pool_charged_and_settled_once", "Concurrent SMS charge a lease once; `mark_settled` succeeds once; due leases are the ended, unsettled ones; settling frees the place in the pool."),
    ("PhonePool", "pool_receive_is_one_decision", "`receive` is one atomic decision: a batch with an unknown number stores nothing; SMS reach their app's queue with the extracted code; SMS to a live lease reach the lessee's mailbox in order with increasing sequences; the price is captured from the hold once however many SMS arrive concurrently; the mailbox keeps its cap by dropping the oldest entries."),
    ("PhonePool", "pool_lease_holds_atomically", "A lease with its hold is one step with the ledger: `price × wanted` is held, what the numbers not found would cost is released, a balance too small leases nothing and records nothing, and concurrent leases never overdraw."),
    ("ItemStore", "items_put_and_get", "Items are created and replaced by id, and listed by id."),
    ("QueueStore", "queues_fifo_and_take_once", "Queues are FIFO and each entry goes to exactly one taker."),
    ("QueueStore", "mailbox_sequence_and_ack", "Mailbox entries keep increasing sequence numbers and stay until acked."),
    ("QueueStore", "mailbox_pages", "Paging a mailbox after a sequence number never skips nor repeats an entry, and stays within one user's entries."),
    ("QueueStore", "queues_retention", "`QueueStore::purge_before` removes exactly the entries before the bound (mailbox entries of unknown time stay)."),
    ("LedgerStore", "ledger_idempotent_and_exact", "Operation ids apply once; holds, captures and releases move exactly what they say; the total equals the sum of the entries."),
    ("LedgerStore", "ledger_concurrent_never_overdraw", "100 concurrent debits of 10 against 500: exactly 50 apply; concurrent holds never overdraw; retried ids apply once."),
    ("LedgerStore", "ledger_expired_holds", "Holds with an expiry are listed once expired while they still reserve something, earliest first."),
    ("SendStore", "sending_signatures_and_templates", "Ids are fresh and increasing; compare-and-set replaces; a signature with templates is not deleted; templates need their signature; pending ones are listed for review across owners."),
    ("SendStore", "sending_tasks_and_statuses", "Tasks start with every recipient pending; statuses move only from pending; state moves by compare-and-set; open tasks are listed in order."),
    ("SendStore", "sending_receipts_refund_once", "A `Sent` status is found by carrier and gateway id; a receipt moves a recipient by `receipt_transition` (the first final report wins) and refunds a failed or expired recipient in the same step, once: the same failed receipt applied 20 times concurrently refunds exactly once, and the total still equals the sum of the entries."),
];

/// Re-raises a failed check's panic with the port and the contract rule it
/// checks, so the failure says which promise the store broke.
pub fn explain(name: &str, panic: Box<dyn std::any::Any + Send>) -> ! {
    let detail = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    match CHECKS.iter().find(|(_, n, _)| *n == name) {
        Some((port, _, rule)) => panic!(
            "conformance check `{name}` failed: the store breaks the {port} contract: {rule}\n  {detail}"
        ),
        None => panic!("conformance check `{name}` failed: {detail}"),
    }
}

/// Expands to one `#[test]` per conformance check. The argument is an
/// expression evaluating to a future of [`Stores`]; it is evaluated once per
/// test, so each test gets a fresh, empty store. A failure names the port
/// and the contract rule it checks ([`CHECKS`]).
///
/// A backend that implements only some ports borrows the others (from
/// [`crate::memory::MemoryStore`], say) and runs the checks of its own
/// ports: `store_conformance_tests!(items: make())`, with one of `users`,
/// `sessions`, `codes`, `grants`, `limits`, `pool`, `items`, `queues`,
/// `ledger`, `sending` before the colon (`examples/custom_store.rs`).
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::store_conformance_tests!(users: $make);
        $crate::store_conformance_tests!(sessions: $make);
        $crate::store_conformance_tests!(codes: $make);
        $crate::store_conformance_tests!(grants: $make);
        $crate::store_conformance_tests!(limits: $make);
        $crate::store_conformance_tests!(pool: $make);
        $crate::store_conformance_tests!(items: $make);
        $crate::store_conformance_tests!(queues: $make);
        $crate::store_conformance_tests!(ledger: $make);
        $crate::store_conformance_tests!(sending: $make);
    };
    (users: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; users_unique_fields, users_lookup_and_update, users_concurrent_create_one_winner);
    };
    (sessions: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; sessions_lifecycle, sessions_first_use_once, sessions_open_caps_oldest_first, sessions_open_with_sign_up);
    };
    (codes: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; codes_cooldown_and_replace, codes_single_use_under_concurrency, codes_attempts_and_expiry, codes_issue_is_one_atomic_decision, codes_check_is_one_atomic_decision);
    };
    (grants: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; grants_single_use);
    };
    (limits: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; limits_all_or_nothing, limits_concurrent_never_exceed, limits_lockout_and_reset);
    };
    (pool: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; pool_intake_caps_and_refresh, pool_lease_exclusive_and_once_per_item, pool_concurrent_leases_distinct, pool_filters, pool_hand_out_after_many, pool_concurrent_hand_outs_once, pool_charged_and_settled_once, pool_lease_holds_atomically, pool_receive_is_one_decision);
    };
    (items: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; items_put_and_get);
    };
    (queues: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; queues_fifo_and_take_once, mailbox_sequence_and_ack, mailbox_pages, queues_retention);
    };
    (ledger: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; ledger_idempotent_and_exact, ledger_concurrent_never_overdraw, ledger_expired_holds);
    };
    (sending: $make:expr) => {
        $crate::store_conformance_tests!(@each $make; sending_signatures_and_templates, sending_tasks_and_statuses, sending_receipts_refund_once);
    };
    (@each $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let outcome = ::std::panic::catch_unwind(|| {
                    $crate::testkit::run(async {
                        let stores: $crate::store::Stores = $make.await;
                        $crate::testkit::$name(&stores).await;
                    })
                });
                if let Err(panic) = outcome {
                    $crate::testkit::explain(stringify!($name), panic);
                }
            }
        )*
    };
}

fn user(n: u32, username: Option<&str>, phone: Option<&str>, email: Option<&str>) -> User {
    User {
        id: UserId::from_string(format!("{n:032x}")),
        username: username.map(|u| Username::parse(u).expect("valid username")),
        phone: phone.map(|p| PhoneNumber::parse_cn_mobile(p).expect("valid phone")),
        email: email.map(|e| Email::parse(e).expect("valid email")),
        name: None,
        password_hash: format!("hash-{n}"),
        device: None,
        banned: false,
        points: 0,
        created_at: 1_000,
    }
}

fn conflict(r: Result<(), StoreError>) -> Option<UniqueField> {
    match r {
        Err(StoreError::Conflict(f)) => Some(f),
        _ => None,
    }
}

/// Username (case-insensitive), phone and email are unique; a conflicting
/// write changes nothing.
pub async fn users_unique_fields(s: &Stores) {
    let u = &s.users;
    u.create_user(user(1, Some("alice"), Some("13811112222"), Some("a@x.io")))
        .await
        .expect("first create");
    assert_eq!(
        conflict(u.create_user(user(2, Some("ALICE"), None, None)).await),
        Some(UniqueField::Username)
    );
    assert_eq!(
        conflict(
            u.create_user(user(3, Some("bob"), Some("+8613811112222"), None))
                .await
        ),
        Some(UniqueField::Phone)
    );
    assert_eq!(
        conflict(
            u.create_user(user(4, Some("carol"), None, Some("A@X.io")))
                .await
        ),
        Some(UniqueField::Email)
    );
    // Nothing of the failed writes stuck: bob and carol are free.
    assert!(u
        .user(&UserKey::Username(Username::parse("bob").unwrap()))
        .await
        .unwrap()
        .is_none());
    assert!(u
        .user(&UserKey::Id(UserId::from_string(format!("{:032x}", 3))))
        .await
        .unwrap()
        .is_none());
    u.create_user(user(3, Some("bob"), Some("13900000000"), None))
        .await
        .expect("bob free after failed write");
    u.create_user(user(4, Some("carol"), None, Some("c@x.io")))
        .await
        .expect("carol free after failed write");
    assert_eq!(
        conflict(u.create_user(user(1, Some("dave"), None, None)).await),
        Some(UniqueField::Id)
    );
}

/// Lookups by every index; `update_user` returns the record before the
/// change; email moves free the old address and collide with others.
pub async fn users_lookup_and_update(s: &Stores) {
    let u = &s.users;
    let a = user(1, Some("Alice"), Some("13811112222"), None);
    u.create_user(a.clone()).await.unwrap();
    u.create_user(user(2, Some("bob"), None, Some("b@x.io")))
        .await
        .unwrap();
    let by_name = u
        .user(&UserKey::Username(Username::parse("alice").unwrap()))
        .await
        .unwrap();
    assert_eq!(by_name.as_ref().map(|x| &x.id), Some(&a.id));
    assert_eq!(by_name.unwrap().username.unwrap().as_str(), "Alice");
    let by_phone = u
        .user(&UserKey::Phone(
            PhoneNumber::parse_cn_mobile("8613811112222").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(by_phone.map(|x| x.id), Some(a.id.clone()));

    let before = u
        .update_user(
            &a.id,
            UserChange::SetEmail(Some(Email::parse("a@x.io").unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(before.email, None);
    let found = u
        .user(&UserKey::Email(Email::parse("a@x.io").unwrap()))
        .await
        .unwrap();
    assert_eq!(found.map(|x| x.id), Some(a.id.clone()));
    // Taken by bob.
    let taken = u
        .update_user(
            &a.id,
            UserChange::SetEmail(Some(Email::parse("b@x.io").unwrap())),
        )
        .await;
    assert!(matches!(
        taken,
        Err(StoreError::Conflict(UniqueField::Email))
    ));
    assert_eq!(
        u.user(&UserKey::Id(a.id.clone()))
            .await
            .unwrap()
            .unwrap()
            .email,
        Some(Email::parse("a@x.io").unwrap())
    );
    // Move: the old address is free again.
    u.update_user(
        &a.id,
        UserChange::SetEmail(Some(Email::parse("a2@x.io").unwrap())),
    )
    .await
    .unwrap();
    assert!(u
        .user(&UserKey::Email(Email::parse("a@x.io").unwrap()))
        .await
        .unwrap()
        .is_none());

    let before = u
        .update_user(&a.id, UserChange::SetDevice(Some("dev-1".into())))
        .await
        .unwrap();
    assert_eq!(before.device, None);
    let before = u
        .update_user(&a.id, UserChange::SetPassword("new-hash".into()))
        .await
        .unwrap();
    assert_eq!(before.device.as_deref(), Some("dev-1"));
    u.update_user(&a.id, UserChange::SetBanned(true))
        .await
        .unwrap();
    let now = u.user(&UserKey::Id(a.id.clone())).await.unwrap().unwrap();
    assert_eq!(now.password_hash, "new-hash");
    assert!(now.banned);
    assert!(matches!(
        u.update_user(
            &UserId::from_string("nobody".into()),
            UserChange::SetBanned(true)
        )
        .await,
        Err(StoreError::NotFound)
    ));
}

/// Concurrent creates racing for one username, phone or email: exactly one
/// winner each.
pub async fn users_concurrent_create_one_winner(s: &Stores) {
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let users = s.users.clone();
        tasks.push(tokio::spawn(async move {
            let r1 = users
                .create_user(user(i, Some("racer"), None, None))
                .await
                .is_ok();
            let r2 = users
                .create_user(user(100 + i, None, Some("13700000000"), None))
                .await
                .is_ok();
            let r3 = users
                .create_user(user(200 + i, None, None, Some("race@x.io")))
                .await
                .is_ok();
            (r1, r2, r3)
        }));
    }
    let mut wins = (0, 0, 0);
    for t in tasks {
        let (a, b, c) = t.await.expect("task");
        wins.0 += a as u32;
        wins.1 += b as u32;
        wins.2 += c as u32;
    }
    assert_eq!(wins, (1, 1, 1));
}

fn session(token: &str, user_n: u32, issued_at: i64) -> Session {
    Session {
        token_hash: Token::from_client(token).hash(),
        user_id: UserId::from_string(format!("{user_n:032x}")),
        origin: SessionOrigin::Login,
        issued_at,
        expires_at: issued_at + 100,
        first_used_at: None,
        seq: 0,
    }
}

/// Opens `session` under a cap too large to matter.
fn open(session: Session) -> OpenSession {
    OpenSession {
        session,
        new_user: None,
        max_sessions: 1_000,
    }
}

/// Insert, find by hash only, revoke one, revoke all of a user but one.
pub async fn sessions_lifecycle(s: &Stores) {
    let ss = &s.sessions;
    for (t, u) in [("t1", 1), ("t2", 1), ("t3", 1), ("t4", 2)] {
        ss.open_session(open(session(t, u, 10))).await.unwrap();
    }
    let h1 = Token::from_client("t1").hash();
    assert_eq!(
        ss.session(&h1).await.unwrap().unwrap().user_id,
        session("t1", 1, 0).user_id
    );
    assert!(ss
        .session(&Token::from_client("nope").hash())
        .await
        .unwrap()
        .is_none());
    assert_eq!(ss.revoke(RevokeScope::Session(h1)).await.unwrap(), 1);
    assert_eq!(ss.revoke(RevokeScope::Session(h1)).await.unwrap(), 0);
    assert!(ss.session(&h1).await.unwrap().is_none());
    let u1 = session("x", 1, 0).user_id;
    assert_eq!(ss.user_sessions(&u1).await.unwrap().len(), 2);
    let keep = Token::from_client("t3").hash();
    assert_eq!(
        ss.revoke(RevokeScope::User {
            user_id: u1.clone(),
            keep: Some(keep),
        })
        .await
        .unwrap(),
        1
    );
    assert!(ss
        .session(&Token::from_client("t2").hash())
        .await
        .unwrap()
        .is_none());
    assert!(ss.session(&keep).await.unwrap().is_some());
    assert_eq!(
        ss.revoke(RevokeScope::User {
            user_id: u1.clone(),
            keep: None,
        })
        .await
        .unwrap(),
        1
    );
    assert!(ss.user_sessions(&u1).await.unwrap().is_empty());
    // The other user's session is untouched.
    assert!(ss
        .session(&Token::from_client("t4").hash())
        .await
        .unwrap()
        .is_some());
}

/// Opening a session keeps at most `max_sessions` live ones per user,
/// evicting expired ones and then the oldest by the store's sequence (all
/// opened in the same second here); a login after an expired session is a
/// renewal; concurrent opens never leave more than the cap.
pub async fn sessions_open_caps_oldest_first(s: &Stores) {
    let ss = &s.sessions;
    let capped = |token: &str, at: i64, max| OpenSession {
        session: session(token, 1, at),
        new_user: None,
        max_sessions: max,
    };
    let mut seqs = Vec::new();
    for i in 0..5 {
        let stored = ss
            .open_session(capped(&format!("c{i}"), 10, 3))
            .await
            .unwrap();
        assert_eq!(stored.origin, SessionOrigin::Login);
        seqs.push(stored.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let u1 = session("x", 1, 0).user_id;
    let mut left: Vec<_> = ss.user_sessions(&u1).await.unwrap();
    left.sort_by_key(|s| s.seq);
    let hashes: Vec<_> = left.iter().map(|s| s.token_hash).collect();
    assert_eq!(
        hashes,
        ["c2", "c3", "c4"].map(|t| Token::from_client(t).hash()),
        "the two oldest went first"
    );
    // All expired by 110: the next login is a renewal and sweeps them.
    let renewed = ss.open_session(capped("late", 110, 3)).await.unwrap();
    assert_eq!(renewed.origin, SessionOrigin::Renewal);
    assert_eq!(ss.user_sessions(&u1).await.unwrap().len(), 1);
    // Concurrent opens for one user: never more than the cap left.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let ss = s.sessions.clone();
        let req = capped(&format!("p{i}"), 150, 4);
        tasks.push(tokio::spawn(
            async move { ss.open_session(req).await.unwrap() },
        ));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ss.user_sessions(&u1).await.unwrap().len(), 4);
}

/// Whether the session of `token` is stored.
async fn has_session(s: &Stores, token: &str) -> bool {
    s.sessions
        .session(&Token::from_client(token).hash())
        .await
        .unwrap()
        .is_some()
}

/// A sign-up opens the user's first session in the same atomic step; a
/// taken field fails with a conflict and leaves neither user nor session.
pub async fn sessions_open_with_sign_up(s: &Stores) {
    let alice = user(1, Some("alice"), None, None);
    let first = OpenSession {
        session: Session {
            origin: SessionOrigin::Signup,
            ..session("a", 1, 10)
        },
        new_user: Some(alice.clone()),
        max_sessions: 50,
    };
    let stored = s.sessions.open_session(first).await.unwrap();
    assert_eq!(stored.origin, SessionOrigin::Signup);
    assert_eq!(
        s.users.user(&UserKey::Id(alice.id.clone())).await.unwrap(),
        Some(alice.clone())
    );
    assert!(has_session(s, "a").await);
    let clash = OpenSession {
        session: session("b", 2, 10),
        new_user: Some(user(2, Some("ALICE"), None, None)),
        max_sessions: 50,
    };
    assert!(matches!(
        s.sessions.open_session(clash).await,
        Err(StoreError::Conflict(UniqueField::Username))
    ));
    assert!(!has_session(s, "b").await);
    assert_eq!(
        s.users
            .user(&UserKey::Id(user(2, None, None, None).id))
            .await
            .unwrap(),
        None
    );
    // Concurrent sign-ups racing for one phone: one user, one session.
    let mut tasks = Vec::new();
    for i in 0..16u32 {
        let ss = s.sessions.clone();
        let req = OpenSession {
            session: session(&format!("r{i}"), 100 + i, 10),
            new_user: Some(user(100 + i, None, Some("13811112222"), None)),
            max_sessions: 50,
        };
        tasks.push(tokio::spawn(async move { ss.open_session(req).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(StoreError::Conflict(UniqueField::Phone)) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(won, 1);
}

/// `mark_session_used`: of concurrent callers exactly one sees it unused.
pub async fn sessions_first_use_once(s: &Stores) {
    s.sessions
        .open_session(open(session("tok", 1, 10)))
        .await
        .unwrap();
    let h = Token::from_client("tok").hash();
    let mut tasks = Vec::new();
    for i in 0..32 {
        let ss = s.sessions.clone();
        tasks.push(tokio::spawn(async move {
            ss.mark_session_used(&h, 20 + i).await.unwrap()
        }));
    }
    let mut firsts = 0;
    for t in tasks {
        let before = t.await.unwrap().expect("session exists");
        if before.first_used_at.is_none() {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 1);
    let now = s.sessions.session(&h).await.unwrap().unwrap();
    assert!(now.first_used_at.is_some());
    assert!(s
        .sessions
        .mark_session_used(&Token::from_client("none").hash(), 1)
        .await
        .unwrap()
        .is_none());
}

fn code_record(hasher: &CodeHasher, code: &str, issued_at: i64) -> CodeRecord {
    let key = CodeKey {
        address: "+8613811112222".into(),
        purpose: Purpose::Register,
    };
    CodeRecord {
        hash: hasher.hash(&key.flat(), code),
        key,
        issued_at,
        expires_at: issued_at + 300,
        attempts: 0,
        used: false,
    }
}

/// A bare issue of `record` (no caps, no breaker).
async fn replace(
    c: &Arc<dyn CodeStore>,
    record: CodeRecord,
    cooldown_secs: i64,
) -> Result<IssueOutcome, StoreError> {
    match c
        .decide_code(CodeDecision::Issue(IssueCode {
            record,
            cooldown_secs,
            caps: Vec::new(),
            pump: None,
        }))
        .await?
    {
        CodeVerdict::Issue(o) => Ok(o),
        other => panic!("an issue answered {other:?}"),
    }
}

/// A check under a failure budget too large to matter.
async fn redeem(
    c: &Arc<dyn CodeStore>,
    key: &CodeKey,
    presented: &CodeHash,
    now: i64,
    max_attempts: u32,
) -> Result<RedeemOutcome, StoreError> {
    match c
        .decide_code(CodeDecision::Check(CheckCode {
            key: key.clone(),
            presented: *presented,
            now,
            max_attempts,
            failures: LimitCheck::new("kit:fail", LimitRule::per(1_000, 86_400)),
            pump_ok: None,
            grant: None,
        }))
        .await?
    {
        CodeVerdict::Check(CheckOutcome::Presented(o)) => Ok(o),
        other => panic!("a check answered {other:?}"),
    }
}

/// A new code replaces the old only outside the cooldown; keys are
/// per (address, purpose).
pub async fn codes_cooldown_and_replace(s: &Stores) {
    let h = CodeHasher::new([7; 32]);
    let c = &s.codes;
    assert_eq!(
        replace(c, code_record(&h, "111111", 100), 60)
            .await
            .unwrap(),
        IssueOutcome::Issued
    );
    assert_eq!(
        replace(c, code_record(&h, "222222", 159), 60)
            .await
            .unwrap(),
        IssueOutcome::Cooldown { retry_at: 160 }
    );
    let key = code_record(&h, "", 0).key;
    assert_eq!(
        c.code(&key).await.unwrap().unwrap().hash,
        h.hash(&key.flat(), "111111")
    );
    assert_eq!(
        replace(c, code_record(&h, "333333", 160), 60)
            .await
            .unwrap(),
        IssueOutcome::Issued
    );
    assert_eq!(
        c.code(&key).await.unwrap().unwrap().hash,
        h.hash(&key.flat(), "333333")
    );
    // Another purpose is another key.
    let mut other = code_record(&h, "444444", 161);
    other.key.purpose = Purpose::Reset;
    assert_eq!(replace(c, other, 60).await.unwrap(), IssueOutcome::Issued);

    // Concurrent replaces within one cooldown: at most one stores.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let codes = s.codes.clone();
        let rec = code_record(&h, &format!("{:06}", i), 1_000);
        tasks.push(tokio::spawn(async move {
            replace(&codes, rec, 60).await.unwrap()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap() == IssueOutcome::Issued {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
}

/// 50 concurrent checks of the right code: exactly one succeeds.
pub async fn codes_single_use_under_concurrency(s: &Stores) {
    let h = CodeHasher::new([7; 32]);
    let rec = code_record(&h, "123456", 100);
    let key = rec.key.clone();
    replace(&s.codes, rec, 60).await.unwrap();
    let right = h.hash(&key.flat(), "123456");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let codes = s.codes.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            redeem(&codes, &key, &right, 150, 5).await.unwrap()
        }));
    }
    let mut redeemed = 0;
    for t in tasks {
        match t.await.unwrap() {
            RedeemOutcome::Redeemed => redeemed += 1,
            RedeemOutcome::Used => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(redeemed, 1);
}

/// Wrong tries are counted (never lost under concurrency); the code is void
/// after the maximum; expiry is exact.
pub async fn codes_attempts_and_expiry(s: &Stores) {
    let h = CodeHasher::new([7; 32]);
    let rec = code_record(&h, "123456", 100);
    let key = rec.key.clone();
    replace(&s.codes, rec, 60).await.unwrap();
    let wrong = h.hash(&key.flat(), "000000");
    let right = h.hash(&key.flat(), "123456");
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let codes = s.codes.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            redeem(&codes, &key, &wrong, 150, 5).await.unwrap()
        }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), RedeemOutcome::Mismatch { .. }));
    }
    assert_eq!(s.codes.code(&key).await.unwrap().unwrap().attempts, 5);
    assert_eq!(
        redeem(&s.codes, &key, &right, 150, 5).await.unwrap(),
        RedeemOutcome::Exhausted
    );

    let rec = code_record(&h, "654321", 1_000);
    replace(&s.codes, rec, 60).await.unwrap();
    let right = h.hash(&key.flat(), "654321");
    assert_eq!(
        redeem(&s.codes, &key, &right, 1_300, 5).await.unwrap(),
        RedeemOutcome::Expired
    );
    let mut missing = key.clone();
    missing.address = "+8613900000000".into();
    assert_eq!(
        redeem(&s.codes, &missing, &right, 1_000, 5).await.unwrap(),
        RedeemOutcome::Missing
    );
}

fn capped_issue(h: &CodeHasher, address: &str, code: &str, at: i64) -> CodeDecision {
    let mut record = code_record(h, code, at);
    record.key.address = address.into();
    record.hash = h.hash(&record.key.flat(), code);
    CodeDecision::Issue(IssueCode {
        record,
        cooldown_secs: 60,
        caps: vec![
            LimitCheck::new(format!("kit:addr:{address}"), LimitRule::per(5, 3_600)),
            LimitCheck::new("kit:ip:10.0.0.1", LimitRule::per(3, 3_600)),
        ],
        pump: Some(PumpChecks {
            trip: LimitCheck::new("kit:trip", LimitRule::per(1, 3_600).with_lockout(3_600)),
            sent: LimitCheck::new("kit:sent", LimitRule::per(1_000, 3_600)),
            ok: LimitCheck::new("kit:ok", LimitRule::per(1, 3_600)),
        }),
    })
}

/// Whether the limit store would allow a hit on `check` at `now`.
async fn allows(s: &Stores, check: &LimitCheck, now: i64) -> bool {
    s.limits
        .check(std::slice::from_ref(check), now, LimitMode::Peek)
        .await
        .unwrap()
        .is_allowed()
}

/// An issue refused by the cooldown counts against no cap; concurrent sends
/// to one address issue exactly one code and count exactly once; the caps
/// and the breaker's count are kept in the limit states [`LimitStore`]
/// reads.
///
/// [`LimitStore`]: crate::store::LimitStore
pub async fn codes_issue_is_one_atomic_decision(s: &Stores) {
    let h = CodeHasher::new([7; 32]);
    let ip = LimitCheck::new("kit:ip:10.0.0.1", LimitRule::per(3, 3_600));
    let sent = LimitCheck::new("kit:sent", LimitRule::per(1, 3_600));
    // 16 concurrent sends to one address: one code, one hit on each cap.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let codes = s.codes.clone();
        let d = capped_issue(&h, "+8613800000001", &format!("{i:06}"), 100);
        tasks.push(tokio::spawn(
            async move { codes.decide_code(d).await.unwrap() },
        ));
    }
    let mut issued = 0;
    for t in tasks {
        match t.await.unwrap() {
            CodeVerdict::Issue(IssueOutcome::Issued) => issued += 1,
            CodeVerdict::Issue(IssueOutcome::Cooldown { retry_at: 160 }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(issued, 1);
    // The per-IP cap (3) saw exactly one send (the 15 refused by the
    // cooldown counted nothing); so did the address cap and the breaker.
    let sent2 = LimitCheck::new("kit:sent", LimitRule::per(2, 3_600));
    assert!(!allows(s, &sent, 100).await);
    assert!(allows(s, &sent2, 100).await);
    let addr1 = LimitCheck::new("kit:addr:+8613800000001", LimitRule::per(1, 3_600));
    let addr2 = LimitCheck::new("kit:addr:+8613800000001", LimitRule::per(2, 3_600));
    assert!(!allows(s, &addr1, 100).await);
    assert!(allows(s, &addr2, 100).await);
    let ip_two_more = [ip.clone()];
    for _ in 0..2 {
        assert!(s
            .limits
            .check(&ip_two_more, 101, LimitMode::Acquire)
            .await
            .unwrap()
            .is_allowed());
    }
    assert_eq!(
        s.limits
            .check(&ip_two_more, 101, LimitMode::Peek)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 0,
            retry_at: 3_700
        }
    );
    // The IP cap is now spent: a send to a fresh address is refused and
    // counts nothing, not even on its own address.
    assert_eq!(
        s.codes
            .decide_code(capped_issue(&h, "+8613800000002", "1", 102))
            .await
            .unwrap(),
        CodeVerdict::Issue(IssueOutcome::Limited { retry_at: 3_700 })
    );
    let addr3 = LimitCheck::new("kit:addr:+8613800000002", LimitRule::per(1, 3_600));
    assert!(allows(s, &addr3, 102).await);
    let mut key = code_record(&h, "", 0).key;
    key.address = "+8613800000002".into();
    assert_eq!(s.codes.code(&key).await.unwrap(), None);
}

/// Concurrent checks of one address never overrun the failure budget, and
/// a locked check changes nothing; a success is counted on the breaker and
/// stores the grant it carries, in the same step.
pub async fn codes_check_is_one_atomic_decision(s: &Stores) {
    let h = CodeHasher::new([7; 32]);
    let rec = code_record(&h, "123456", 100);
    let key = rec.key.clone();
    replace(&s.codes, rec, 60).await.unwrap();
    let fail = LimitCheck::new("kit:fail:one", LimitRule::per(3, 86_400));
    let ok = LimitCheck::new("kit:ok:one", LimitRule::per(1, 3_600));
    let check = |code: &str, max_attempts| {
        CodeDecision::Check(CheckCode {
            key: key.clone(),
            presented: h.hash(&key.flat(), code),
            now: 150,
            max_attempts,
            failures: fail.clone(),
            pump_ok: Some(ok.clone()),
            grant: None,
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let codes = s.codes.clone();
        let d = check("000000", 100);
        tasks.push(tokio::spawn(
            async move { codes.decide_code(d).await.unwrap() },
        ));
    }
    let mut presented = 0;
    for t in tasks {
        match t.await.unwrap() {
            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Mismatch { .. })) => {
                presented += 1
            }
            CodeVerdict::Check(CheckOutcome::Locked { retry_at }) => {
                assert_eq!(retry_at, 150 + 86_400)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(presented, 3);
    assert_eq!(s.codes.code(&key).await.unwrap().unwrap().attempts, 3);
    // Locked: even the right code is not evaluated, and nothing changes.
    assert!(matches!(
        s.codes.decide_code(check("123456", 100)).await.unwrap(),
        CodeVerdict::Check(CheckOutcome::Locked { .. })
    ));
    let rec = s.codes.code(&key).await.unwrap().unwrap();
    assert_eq!((rec.attempts, rec.used), (3, false));
    assert!(allows(s, &ok, 150).await);
    // Another address's budget is its own; its success counts on the breaker.
    let mut other = code_record(&h, "654321", 100);
    other.key.address = "+8613800000009".into();
    other.hash = h.hash(&other.key.flat(), "654321");
    let other_key = other.key.clone();
    replace(&s.codes, other, 60).await.unwrap();
    // A success also stores the grant it carries; a failure does not.
    let phone = PhoneNumber::parse_cn_mobile("13800000009").expect("valid phone");
    let permit = Grant {
        kind: GrantKind::PasswordReset,
        phone: phone.clone(),
        token_hash: None,
        issued_at: 150,
        expires_at: 750,
        used: false,
    };
    let granting = |code: &str| {
        CodeDecision::Check(CheckCode {
            key: other_key.clone(),
            presented: h.hash(&other_key.flat(), code),
            now: 150,
            max_attempts: 5,
            failures: LimitCheck::new("kit:fail:two", LimitRule::per(3, 86_400)),
            pump_ok: Some(ok.clone()),
            grant: Some(permit.clone()),
        })
    };
    assert!(matches!(
        s.codes.decide_code(granting("000000")).await.unwrap(),
        CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Mismatch { .. }))
    ));
    assert_eq!(
        s.grants
            .grant(GrantKind::PasswordReset, &phone)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.codes.decide_code(granting("654321")).await.unwrap(),
        CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
    );
    assert_eq!(
        s.grants
            .grant(GrantKind::PasswordReset, &phone)
            .await
            .unwrap(),
        Some(permit)
    );
    assert!(!allows(s, &ok, 150).await);
    // The one failure, not the success, counted on its budget.
    let two = LimitCheck::new("kit:fail:two", LimitRule::per(2, 86_400));
    assert!(allows(s, &two, 150).await);
    let one = LimitCheck::new("kit:fail:two", LimitRule::per(1, 86_400));
    assert!(!allows(s, &one, 150).await);
}

/// One grant per (kind, phone); consumed exactly once under concurrency;
/// used grants stay readable; token mismatch is told apart.
pub async fn grants_single_use(s: &Stores) {
    let phone = PhoneNumber::parse_cn_mobile("13811112222").unwrap();
    let tok = Token::from_client("grant-token").hash();
    let g = Grant {
        kind: GrantKind::Registration,
        phone: phone.clone(),
        token_hash: Some(tok),
        issued_at: 100,
        expires_at: 200,
        used: false,
    };
    assert_eq!(
        s.grants
            .consume_grant(GrantKind::Registration, &phone, Some(tok), 150)
            .await
            .unwrap(),
        ConsumeOutcome::Missing
    );
    s.grants.put_grant(g.clone()).await.unwrap();
    assert_eq!(
        s.grants
            .consume_grant(
                GrantKind::Registration,
                &phone,
                Some(Token::from_client("x").hash()),
                150
            )
            .await
            .unwrap(),
        ConsumeOutcome::Mismatch
    );
    // Another kind for the same phone is separate.
    assert_eq!(
        s.grants
            .consume_grant(GrantKind::PasswordReset, &phone, None, 150)
            .await
            .unwrap(),
        ConsumeOutcome::Missing
    );
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let grants = s.grants.clone();
        let phone = phone.clone();
        tasks.push(tokio::spawn(async move {
            grants
                .consume_grant(GrantKind::Registration, &phone, Some(tok), 150)
                .await
                .unwrap()
        }));
    }
    let mut consumed = 0;
    for t in tasks {
        match t.await.unwrap() {
            ConsumeOutcome::Consumed => consumed += 1,
            ConsumeOutcome::Used => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(consumed, 1);
    assert!(
        s.grants
            .grant(GrantKind::Registration, &phone)
            .await
            .unwrap()
            .unwrap()
            .used
    );
    // Replacing makes a fresh grant; expiry is exact.
    s.grants.put_grant(g).await.unwrap();
    assert_eq!(
        s.grants
            .consume_grant(GrantKind::Registration, &phone, Some(tok), 200)
            .await
            .unwrap(),
        ConsumeOutcome::Expired
    );
}

/// `check` with `LimitMode::Acquire` records on every key only when every
/// check passes; with `LimitMode::Peek` it records nothing.
pub async fn limits_all_or_nothing(s: &Stores) {
    let l = &s.limits;
    let a = LimitCheck::new("a", LimitRule::per(2, 100));
    let b = LimitCheck::new("b", LimitRule::per(1, 100));
    assert_eq!(
        l.check(&[a.clone(), b.clone()], 10, LimitMode::Acquire)
            .await
            .unwrap(),
        LimitDecision::Allowed
    );
    // b is full: nothing recorded on a either.
    assert_eq!(
        l.check(&[a.clone(), b.clone()], 20, LimitMode::Acquire)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 1,
            retry_at: 110
        }
    );
    assert_eq!(
        l.check(std::slice::from_ref(&a), 30, LimitMode::Acquire)
            .await
            .unwrap(),
        LimitDecision::Allowed
    );
    assert_eq!(
        l.check(std::slice::from_ref(&a), 40, LimitMode::Peek)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 0,
            retry_at: 110
        }
    );
    // Window slides.
    assert_eq!(
        l.check(std::slice::from_ref(&a), 110, LimitMode::Peek)
            .await
            .unwrap(),
        LimitDecision::Allowed
    );
    for _ in 0..5 {
        assert_eq!(
            l.check(std::slice::from_ref(&b), 110, LimitMode::Peek)
                .await
                .unwrap(),
            LimitDecision::Allowed
        );
    }
    assert_eq!(
        l.check(std::slice::from_ref(&b), 110, LimitMode::Acquire)
            .await
            .unwrap(),
        LimitDecision::Allowed
    );
}

/// Concurrent `LimitMode::Acquire` checks never get more than `max` hits
/// allowed.
pub async fn limits_concurrent_never_exceed(s: &Stores) {
    let check = LimitCheck::new("hot", LimitRule::per(10, 1_000));
    let mut tasks = Vec::new();
    for _ in 0..60 {
        let l = s.limits.clone();
        let c = check.clone();
        tasks.push(tokio::spawn(async move {
            l.check(&[c], 5, LimitMode::Acquire).await.unwrap()
        }));
    }
    let mut allowed = 0;
    for t in tasks {
        if t.await.unwrap().is_allowed() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 10);
    // Concurrent unconditional records are never lost.
    let counted = LimitCheck::new("counted", LimitRule::per(20, 1_000));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let l = s.limits.clone();
        let c = counted.clone();
        tasks.push(tokio::spawn(async move { l.record(&c, 5).await.unwrap() }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!s
        .limits
        .check(&[counted], 5, LimitMode::Peek)
        .await
        .unwrap()
        .is_allowed());
}

/// A lockout fires at `max` and lasts its time; `reset` forgets the key.
pub async fn limits_lockout_and_reset(s: &Stores) {
    let c = LimitCheck::new("login", LimitRule::per(3, 900).with_lockout(900));
    for t in [1, 2, 3] {
        s.limits.record(&c, t).await.unwrap();
    }
    assert_eq!(
        s.limits
            .check(std::slice::from_ref(&c), 500, LimitMode::Peek)
            .await
            .unwrap(),
        LimitDecision::Denied {
            index: 0,
            retry_at: 903
        }
    );
    assert!(allows(s, &c, 903).await);
    s.limits.record(&c, 1_000).await.unwrap();
    s.limits.reset("login").await.unwrap();
    s.limits.record(&c, 1_001).await.unwrap();
    s.limits.record(&c, 1_002).await.unwrap();
    assert!(allows(s, &c, 1_003).await);
}

fn info(mobile: &str, cid: &str, area: Option<&str>) -> NumberInfo {
    NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile(mobile).expect("valid phone"),
        cid: cid.into(),
        imsi: format!("imsi-{mobile}"),
        imei: "imei".into(),
        iccid: "iccid".into(),
        ip: "10.0.0.1".into(),
        area: area.map(str::to_owned),
    }
}

fn numbers(n: usize) -> Vec<NumberInfo> {
    (0..n)
        .map(|i| info(&format!("1380000{:04}", i), "dev", None))
        .collect()
}

fn lease_req(user: u32, item: &str, ids: &[&str], now: i64, filter: LeaseFilter) -> LeaseRequest {
    LeaseRequest {
        user: UserId::from_string(format!("{user:032x}")),
        item: item.into(),
        lease_ids: ids.iter().map(|s| s.to_string()).collect(),
        filter,
        now,
        until: now + 100,
        hold_id: format!("hold-{user}-{now}"),
        price: 5,
        hold: None,
    }
}

/// Intake: capped by the pool size minus available numbers, in order;
/// re-uploads refresh and are listed without counting; `full` when nothing
/// could be taken.
pub async fn pool_intake_caps_and_refresh(s: &Stores) {
    let p = &s.pool;
    let empty = p.pool_stats().await.unwrap();
    assert_eq!(
        (empty.size, empty.numbers, empty.open_leases),
        (DEFAULT_POOL_SIZE, 0, 0)
    );
    p.set_pool_size(3).await.unwrap();
    assert_eq!(p.pool_stats().await.unwrap().size, 3);
    let first = p.intake(numbers(5), 10).await.unwrap();
    let stats = p.pool_stats().await.unwrap();
    assert_eq!(
        (stats.numbers, stats.open_leases, stats.available()),
        (3, 0, 3)
    );
    let all: Vec<PhoneNumber> = numbers(5).into_iter().map(|i| i.mobile).collect();
    assert_eq!(first.used, all[..3].to_vec());
    assert!(!first.full);
    let again = p.intake(numbers(5)[3..].to_vec(), 11).await.unwrap();
    assert!(again.used.is_empty());
    assert!(again.full);
    // A known number refreshes its metadata and is "used"; it does not count.
    let mut refreshed = numbers(1)[0].clone();
    refreshed.cid = "other-device".into();
    refreshed.area = Some("北京".into());
    let r = p
        .intake(vec![refreshed.clone(), numbers(5)[4].clone()], 12)
        .await
        .unwrap();
    assert_eq!(r.used, vec![refreshed.mobile.clone()]);
    assert!(!r.full);
    let n = p.number(&refreshed.mobile).await.unwrap().unwrap();
    assert_eq!(n.info.cid, "other-device");
    assert_eq!(n.info.area.as_deref(), Some("北京"));
    assert_eq!(n.added_at, 10);
    assert_eq!(n.operator, Operator::Cmcc);
    assert!(p.number(&all[4]).await.unwrap().is_none());
    // Leased numbers are not available: leasing one frees a place.
    let leased = p
        .lease(lease_req(1, "app", &["l1"], 20, LeaseFilter::default()))
        .await
        .unwrap()
        .leases();
    assert_eq!(leased.len(), 1);
    let r = p.intake(vec![numbers(5)[4].clone()], 21).await.unwrap();
    assert_eq!(r.used, vec![all[4].clone()]);
    p.set_pool_size(0).await.unwrap();
    let r = p
        .intake(vec![info("13900000000", "d", None)], 22)
        .await
        .unwrap();
    assert!(r.full && r.used.is_empty());
}

/// A number is leased to one user at a time and never handed out twice for
/// one item, by leases and hand-outs alike.
pub async fn pool_lease_exclusive_and_once_per_item(s: &Stores) {
    let p = &s.pool;
    p.intake(numbers(5), 0).await.unwrap();
    let a = p
        .lease(lease_req(1, "A", &["a1", "a2"], 10, LeaseFilter::default()))
        .await
        .unwrap()
        .leases();
    assert_eq!(a.len(), 2);
    assert_ne!(a[0].mobile, a[1].mobile);
    assert_eq!(a[0].until, 110);
    assert_eq!(a[0].hold_id, "hold-1-10");
    assert!(!a[0].charged && !a[0].settled);
    // Another user, another item: only the 3 free numbers.
    let b = p
        .lease(lease_req(
            2,
            "B",
            &["b1", "b2", "b3", "b4", "b5"],
            20,
            LeaseFilter::default(),
        ))
        .await
        .unwrap()
        .leases();
    assert_eq!(b.len(), 3);
    for l in &b {
        assert!(a.iter().all(|x| x.mobile != l.mobile));
    }
    // A store that keeps counts (for the pool gauge) keeps them exact.
    // The counts behind root's view and the pool gauge stay exact.
    let stats = p.pool_stats().await.unwrap();
    assert_eq!((stats.numbers, stats.open_leases), (5, 5));
    let n = p.number(&a[0].mobile).await.unwrap().unwrap();
    assert_eq!(n.lease.as_ref().map(|l| l.lease_id.as_str()), Some("a1"));
    assert!(!n.is_free(50) && n.is_free(110));
    // Hand-outs skip leased numbers.
    assert!(p.hand_out("C", 10, 50).await.unwrap().is_empty());
    // After the leases end: item A never gets A's numbers again, but may get B's.
    let again = p
        .lease(lease_req(
            3,
            "A",
            &["x1", "x2", "x3", "x4", "x5"],
            200,
            LeaseFilter::default(),
        ))
        .await
        .unwrap()
        .leases();
    assert_eq!(again.len(), 3);
    for l in &again {
        assert!(a.iter().all(|x| x.mobile != l.mobile));
    }
    // Hand-outs count as use for an app, and leases for the item count for hand-outs.
    let h = p.hand_out("B", 10, 400).await.unwrap();
    assert_eq!(h.len(), 2, "B leased 3 of 5 already");
    assert!(p.hand_out("B", 10, 400).await.unwrap().is_empty());
    let h = p.hand_out("D", 2, 400).await.unwrap();
    assert_eq!(h.len(), 2);
    assert_eq!(p.hand_out("D", 10, 400).await.unwrap().len(), 3);
    assert_eq!(p.lease_record("a1").await.unwrap().unwrap().user, a[0].user);
    assert!(p.lease_record("nope").await.unwrap().is_none());
}

/// Concurrent leases never get the same number.
pub async fn pool_concurrent_leases_distinct(s: &Stores) {
    s.pool.intake(numbers(10), 0).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let p = s.pool.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("c{i}");
            p.lease(lease_req(
                i,
                "item",
                &[id.as_str()],
                5,
                LeaseFilter::default(),
            ))
            .await
            .unwrap()
            .leases()
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.extend(t.await.unwrap());
    }
    assert_eq!(got.len(), 10);
    let mut mobiles: Vec<_> = got.iter().map(|l| l.mobile.clone()).collect();
    mobiles.sort();
    mobiles.dedup();
    assert_eq!(mobiles.len(), 10);
    // Concurrent hand-outs for one app: each number once.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = s.pool.clone();
        tasks.push(tokio::spawn(async move {
            p.hand_out("app", 3, 1_000).await.unwrap()
        }));
    }
    let mut handed = Vec::new();
    for t in tasks {
        handed.extend(t.await.unwrap().into_iter().map(|i| i.mobile));
    }
    assert_eq!(handed.len(), 10);
    handed.sort();
    handed.dedup();
    assert_eq!(handed.len(), 10);
}

/// Area, operator and custom-number filters.
pub async fn pool_filters(s: &Stores) {
    let p = &s.pool;
    p.intake(
        vec![
            info("13800000001", "d", Some("北京")),
            info("13000000002", "d", Some("上海")),
            info("13300000003", "d", None),
        ],
        0,
    )
    .await
    .unwrap();
    let f = LeaseFilter {
        operator: Some(Operator::Unicom),
        ..Default::default()
    };
    let l = p
        .lease(lease_req(1, "i", &["1", "2"], 1, f))
        .await
        .unwrap()
        .leases();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].mobile.to_string(), "13000000002");
    let f = LeaseFilter {
        area: Some("北京".into()),
        ..Default::default()
    };
    let l = p
        .lease(lease_req(1, "i", &["3"], 1, f))
        .await
        .unwrap()
        .leases();
    assert_eq!(l[0].mobile.to_string(), "13800000001");
    let f = LeaseFilter {
        custom: Some(PhoneNumber::parse_cn_mobile("13300000003").unwrap()),
        ..Default::default()
    };
    let l = p
        .lease(lease_req(1, "j", &["4", "5"], 1, f.clone()))
        .await
        .unwrap()
        .leases();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].mobile.to_string(), "13300000003");
    assert!(p
        .lease(lease_req(2, "k", &["6"], 2, f))
        .await
        .unwrap()
        .leases()
        .is_empty());
}

/// The `i`th number of [`pool_hand_out_after_many`] and the checks after
/// it: every tenth in area 北京.
fn nth(i: usize) -> NumberInfo {
    let area = i.is_multiple_of(10).then_some("北京");
    info(&format!("1390000{i:04}"), "dev", area)
}

fn nths(range: impl IntoIterator<Item = usize>) -> Vec<PhoneNumber> {
    range.into_iter().map(|i| nth(i).mobile).collect()
}

fn mobiles(infos: Vec<NumberInfo>) -> Vec<PhoneNumber> {
    infos.into_iter().map(|i| i.mobile).collect()
}

fn leased(outcome: LeaseOutcome) -> Vec<PhoneNumber> {
    outcome.leases().into_iter().map(|l| l.mobile).collect()
}

/// After many hand-outs and leases for an app, hand-outs and leases still
/// return exactly the numbers never used for it, oldest first: numbers
/// under a live lease are skipped and come back once it ends, new numbers
/// come last, and filtered or single-number leases count as use.
pub async fn pool_hand_out_after_many(s: &Stores) {
    let p = &s.pool;
    p.set_pool_size(1_000).await.unwrap();
    p.intake((0..300).map(nth).collect(), 0).await.unwrap();
    let beijing = LeaseFilter {
        area: Some("北京".into()),
        ..Default::default()
    };
    let one = |i: usize| LeaseFilter {
        custom: Some(nth(i).mobile),
        ..Default::default()
    };
    // X leases two numbers of 北京 (0 and 10) and number 200, Z number 150;
    // all four leases last until 101.
    let l = p
        .lease(lease_req(1, "X", &["x1", "x2"], 1, beijing.clone()))
        .await
        .unwrap();
    assert_eq!(leased(l), nths([0, 10]));
    let l = p
        .lease(lease_req(1, "X", &["x3"], 1, one(200)))
        .await
        .unwrap();
    assert_eq!(leased(l), nths([200]));
    let l = p
        .lease(lease_req(2, "Z", &["z1"], 1, one(150)))
        .await
        .unwrap();
    assert_eq!(leased(l), nths([150]));
    // X's hand-outs skip what X leased; Y's skip the live leases.
    let h = p.hand_out("X", 100, 1).await.unwrap();
    assert_eq!(mobiles(h), nths((1..=101).filter(|&i| i != 10)));
    let h = p.hand_out("Y", 3, 1).await.unwrap();
    assert_eq!(mobiles(h), nths([1, 2, 3]));
    // Many small hand-outs for X: each the next numbers, oldest first.
    let mut expected = nths((102..300).filter(|&i| i != 150 && i != 200)).into_iter();
    for round in 0.. {
        let h = mobiles(p.hand_out("X", 7, 2).await.unwrap());
        let want: Vec<PhoneNumber> = expected.by_ref().take(7).collect();
        assert_eq!(h, want, "hand-out {round} for X");
        if h.is_empty() {
            break;
        }
    }
    // Nothing left for X: no lease, filtered or not.
    assert!(leased(
        p.lease(lease_req(1, "X", &["x4"], 2, LeaseFilter::default()))
            .await
            .unwrap()
    )
    .is_empty());
    assert!(leased(
        p.lease(lease_req(1, "X", &["x5"], 2, beijing.clone()))
            .await
            .unwrap()
    )
    .is_empty());
    // Once Z's lease ended, its number is X's; X's own never come back.
    let h = p.hand_out("X", 100, 200).await.unwrap();
    assert_eq!(mobiles(h), nths([150]));
    assert!(p.hand_out("X", 100, 200).await.unwrap().is_empty());
    // Z gets the oldest numbers it never had, 150 not among them.
    let h = p.hand_out("Z", 3, 200).await.unwrap();
    assert_eq!(mobiles(h), nths([0, 1, 2]));
    // New numbers come after every older one, and only they are left for X.
    p.intake((300..305).map(nth).collect(), 300).await.unwrap();
    let h = p.hand_out("X", 100, 300).await.unwrap();
    assert_eq!(mobiles(h), nths(300..305));
    // X leases by area after all that: only new 北京 numbers.
    p.intake((305..325).map(nth).collect(), 301).await.unwrap();
    let l = p
        .lease(lease_req(1, "X", &["x6", "x7", "x8"], 302, beijing))
        .await
        .unwrap();
    assert_eq!(leased(l), nths([310, 320]));
    let h = p.hand_out("X", 100, 302).await.unwrap();
    assert_eq!(
        mobiles(h),
        nths((305..325).filter(|&i| i != 310 && i != 320))
    );
    // An app that never had any gets them all, oldest first.
    let h = p.hand_out("W", 100, 302).await.unwrap();
    assert_eq!(mobiles(h), nths(0..100));
    let h = p.hand_out("W", 100, 302).await.unwrap();
    assert_eq!(mobiles(h), nths(100..200));
}

/// Concurrent hand-outs and leases for one app, in many small calls, never
/// give one number twice, each call oldest first, until every number was
/// given once.
pub async fn pool_concurrent_hand_outs_once(s: &Stores) {
    const N: usize = 150;
    s.pool.set_pool_size(1_000).await.unwrap();
    s.pool.intake((0..N).map(nth).collect(), 0).await.unwrap();
    let order: Vec<PhoneNumber> = nths(0..N);
    let position = move |m: &PhoneNumber| order.iter().position(|o| o == m);
    let mut tasks = Vec::new();
    for t in 0..12u32 {
        let p = s.pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for call in 0u32.. {
                let batch = if t % 3 == 0 {
                    // A lease of two for the app: counts as its use.
                    let ids = [format!("l{t}-{call}a"), format!("l{t}-{call}b")];
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    leased(
                        p.lease(lease_req(t, "app", &ids, 10, LeaseFilter::default()))
                            .await
                            .unwrap(),
                    )
                } else {
                    mobiles(p.hand_out("app", (t % 4 + 1) as usize, 10).await.unwrap())
                };
                if batch.is_empty() {
                    break;
                }
                got.push(batch);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        for batch in t.await.unwrap() {
            let at: Vec<usize> = batch
                .iter()
                .map(|m| position(m).expect("a pool number"))
                .collect();
            assert!(
                at.windows(2).all(|w| w[0] < w[1]),
                "one call, oldest first: {at:?}"
            );
            all.extend(batch);
        }
    }
    assert_eq!(all.len(), N, "every number given once");
    all.sort();
    all.dedup();
    assert_eq!(all.len(), N, "no number given twice");
    assert!(s.pool.hand_out("app", 10, 10).await.unwrap().is_empty());
    // The leases still hold some: another app gets the rest, oldest first.
    let free = mobiles(s.pool.hand_out("other", N, 10).await.unwrap());
    let leased_then: Vec<PhoneNumber> = nths(0..N)
        .into_iter()
        .filter(|m| !free.contains(m))
        .collect();
    let later = mobiles(s.pool.hand_out("other", N, 1_000).await.unwrap());
    assert_eq!(
        later, leased_then,
        "leased numbers come back to other apps, oldest first"
    );
}

/// Not part of [`store_conformance_tests!`](crate::store_conformance_tests)
/// (it needs the same store twice): what hand-outs and leases left behind
/// survives closing and reopening the store. `open` opens the same store
/// each time it is called; the first handle is dropped before the second
/// is opened. A store with nothing to reopen passes the same handle twice.
///
/// After the reopen, hand-outs for an app return exactly the numbers it
/// never had, oldest first, and new numbers after them.
pub async fn pool_hand_outs_survive_reopen<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Stores>,
{
    {
        let s = open().await;
        let p = &s.pool;
        p.set_pool_size(1_000).await.unwrap();
        p.intake((0..60).map(nth).collect(), 0).await.unwrap();
        let h = p.hand_out("X", 20, 1).await.unwrap();
        assert_eq!(mobiles(h), nths(0..20));
        let one = LeaseFilter {
            custom: Some(nth(30).mobile),
            ..Default::default()
        };
        let l = p.lease(lease_req(1, "X", &["r1"], 1, one)).await.unwrap();
        assert_eq!(leased(l), nths([30]));
        let l = p
            .lease(lease_req(1, "X", &["r2", "r3"], 1, LeaseFilter::default()))
            .await
            .unwrap();
        assert_eq!(leased(l), nths([20, 21]));
        let h = p.hand_out("Y", 5, 1).await.unwrap();
        assert_eq!(mobiles(h), nths(0..5));
    }
    let s = open().await;
    let p = &s.pool;
    let h = p.hand_out("X", 100, 200).await.unwrap();
    assert_eq!(mobiles(h), nths((22..60).filter(|&i| i != 30)));
    assert!(p.hand_out("X", 100, 200).await.unwrap().is_empty());
    p.intake((60..63).map(nth).collect(), 201).await.unwrap();
    let h = p.hand_out("X", 100, 202).await.unwrap();
    assert_eq!(mobiles(h), nths(60..63));
    let h = p.hand_out("Y", 3, 202).await.unwrap();
    assert_eq!(mobiles(h), nths([5, 6, 7]));
}

/// Concurrent SMS charge a lease once; `mark_settled` succeeds once; due
/// leases are the ended, unsettled ones; settling frees the place in the
/// pool.
pub async fn pool_charged_and_settled_once(s: &Stores) {
    let p = &s.pool;
    p.set_pool_size(2).await.unwrap();
    p.intake(numbers(2), 0).await.unwrap();
    let l = p
        .lease(lease_req(1, "i", &["z1", "z2"], 10, LeaseFilter::default()))
        .await
        .unwrap()
        .leases();
    assert_eq!(l.len(), 2);
    // 16 concurrent SMS to z1's number: the lease is charged, once.
    let mobile = p.lease_record("z1").await.unwrap().unwrap().mobile;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let p = s.pool.clone();
        let req = receive_req(vec![incoming(&mobile, &format!("code {i}"), None)], 20, 100);
        tasks.push(tokio::spawn(async move { p.receive(req).await.unwrap() }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), ReceiveOutcome::Received(_)));
    }
    assert!(p.lease_record("z1").await.unwrap().unwrap().charged);
    assert!(!p.lease_record("z2").await.unwrap().unwrap().charged);
    assert!(p.due_leases(109, 10).await.unwrap().is_empty());
    let due = p.due_leases(110, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(p.due_leases(110, 1).await.unwrap().len(), 1);
    // Both numbers are under unsettled leases: a new one fits in the pool of 2.
    let r = p
        .intake(vec![info("13900000009", "d", None)], 111)
        .await
        .unwrap();
    assert_eq!(r.used.len(), 1);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let p = s.pool.clone();
        tasks.push(tokio::spawn(
            async move { p.mark_settled("z2").await.unwrap() },
        ));
    }
    let mut trues = 0;
    for t in tasks {
        trues += t.await.unwrap() as u32;
    }
    assert_eq!(trues, 1);
    let due = p.due_leases(500, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|l| l.id.as_str()).collect::<Vec<_>>(),
        vec!["z1"]
    );
    assert!(p.lease_record("z2").await.unwrap().unwrap().settled);
    assert!(!p.mark_settled("nope").await.unwrap());
    // z2 settled: 3 stored, 1 unsettled lease → 2 available, the pool of 2 is full.
    let r = p
        .intake(vec![info("13900000010", "d", None)], 501)
        .await
        .unwrap();
    assert!(r.full);
}

/// Items are created and replaced by id, and listed by id.
pub async fn items_put_and_get(s: &Stores) {
    let mut item = Item {
        id: "com.yy.huanju".into(),
        name: "欢聚".into(),
        price: 10,
        send_price: 2,
        code_pattern: None,
    };
    assert!(s.items.item(&item.id).await.unwrap().is_none());
    s.items.put_item(item.clone()).await.unwrap();
    assert_eq!(s.items.item(&item.id).await.unwrap(), Some(item.clone()));
    item.price = 12;
    item.code_pattern = Some(r"(\d{6})".into());
    s.items.put_item(item.clone()).await.unwrap();
    assert_eq!(s.items.item(&item.id).await.unwrap(), Some(item.clone()));
    let mut first = item.clone();
    first.id = "a.first".into();
    s.items.put_item(first.clone()).await.unwrap();
    assert_eq!(s.items.items().await.unwrap(), vec![first, item]);
}

fn sms(i: usize) -> ReceivedSms {
    ReceivedSms {
        mobile: PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
        text: format!("code {i:06}"),
        code: format!("{i:06}"),
        appname: Some("app".into()),
        chanlid: None,
        at: i as i64,
    }
}

/// Queues are FIFO and each entry goes to exactly one taker.
pub async fn queues_fifo_and_take_once(s: &Stores) {
    let q = &s.queues;
    for i in 0..5 {
        q.push_sms("app", sms(i)).await.unwrap();
    }
    q.push_sms("other", sms(99)).await.unwrap();
    let first = q.take_sms("app", 2).await.unwrap();
    assert_eq!(first, vec![sms(0), sms(1)]);
    let rest = q.take_sms("app", 10).await.unwrap();
    assert_eq!(rest, vec![sms(2), sms(3), sms(4)]);
    assert!(q.take_sms("app", 10).await.unwrap().is_empty());
    assert_eq!(q.take_sms("other", 10).await.unwrap(), vec![sms(99)]);
    for i in 0..50 {
        q.push_sms("hot", sms(i)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let q = s.queues.clone();
        tasks.push(tokio::spawn(
            async move { q.take_sms("hot", 7).await.unwrap() },
        ));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap().into_iter().map(|m| m.at));
    }
    let got = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), got, "an entry went to two takers");
    let left = q.take_sms("hot", 100).await.unwrap().len();
    assert_eq!(got + left, 50);
    let m = |i: i64| DeviceMessage {
        mobile: PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
        item_id: "app".into(),
        msg: format!("m{i}"),
        at: i,
    };
    q.push_device_message("cid-1", m(1)).await.unwrap();
    q.push_device_message("cid-1", m(2)).await.unwrap();
    q.push_device_message("cid-2", m(3)).await.unwrap();
    assert_eq!(
        q.take_device_messages("cid-1", 10).await.unwrap(),
        vec![m(1), m(2)]
    );
    assert!(q
        .take_device_messages("cid-1", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        q.take_device_messages("cid-2", 10).await.unwrap(),
        vec![m(3)]
    );
}

/// [`QueueStore::purge_before`](crate::store::QueueStore::purge_before)
/// removes exactly the entries before the bound (mailbox entries of unknown
/// time stay).
pub async fn queues_retention(s: &Stores) {
    let q = &s.queues;
    for i in 0..6 {
        q.push_sms(if i % 2 == 0 { "a" } else { "b" }, sms(i))
            .await
            .unwrap();
    }
    let m = |i: i64| DeviceMessage {
        mobile: PhoneNumber::parse_cn_mobile("13800000000").unwrap(),
        item_id: "app".into(),
        msg: format!("m{i}"),
        at: i,
    };
    for i in 0..4 {
        q.push_device_message("cid", m(i)).await.unwrap();
    }
    let u = UserId::from_string("retention".into());
    let push = |at: i64| Push::RecvMsg {
        mobile: "13800000000".into(),
        msg: format!("p{at}"),
        at,
    };
    for at in [1, 0, 2, 3, 4] {
        q.mailbox_push(&u, push(at)).await.unwrap();
    }
    let left = || async {
        q.mailbox(&u, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, p)| p)
            .collect::<Vec<Push>>()
    };
    let purged = q.purge_before(3).await.unwrap();
    assert_eq!(
        (purged.sms, purged.device_messages, purged.mailbox),
        (3, 3, 2)
    );
    assert_eq!(q.take_sms("a", 10).await.unwrap(), vec![sms(4)]);
    assert_eq!(q.take_sms("b", 10).await.unwrap(), vec![sms(3), sms(5)]);
    assert_eq!(q.take_device_messages("cid", 10).await.unwrap(), vec![m(3)]);
    assert_eq!(left().await, vec![push(0), push(3), push(4)]);
    assert_eq!(q.purge_before(3).await.unwrap(), Default::default());
}

/// Mailbox entries keep increasing sequence numbers and stay until acked.
pub async fn mailbox_sequence_and_ack(s: &Stores) {
    let q = &s.queues;
    let u = UserId::from_string("u1".into());
    let v = UserId::from_string("u2".into());
    let push = |m: &str| Push::RecvMsg {
        mobile: "13800000000".into(),
        msg: m.into(),
        at: 0,
    };
    let a = q.mailbox_push(&u, push("a")).await.unwrap();
    let b = q.mailbox_push(&u, push("b")).await.unwrap();
    let c = q.mailbox_push(&v, push("c")).await.unwrap();
    assert!(a < b && b < c);
    assert_eq!(
        q.mailbox(&u, None, usize::MAX).await.unwrap(),
        vec![(a, push("a")), (b, push("b"))]
    );
    q.mailbox_ack(&u, a).await.unwrap();
    q.mailbox_ack(&u, 12345).await.unwrap();
    assert_eq!(
        q.mailbox(&u, None, usize::MAX).await.unwrap(),
        vec![(b, push("b"))]
    );
    assert_eq!(
        q.mailbox(&v, None, usize::MAX).await.unwrap(),
        vec![(c, push("c"))]
    );
}

/// Paging a mailbox after a sequence number never skips nor repeats an
/// entry, and stays within one user's entries.
pub async fn mailbox_pages(s: &Stores) {
    let q = &s.queues;
    let u = UserId::from_string("pager".into());
    // A user whose id extends this one's must not leak into its pages.
    let other = UserId::from_string("pager2".into());
    let push = |i: usize| Push::RecvMsg {
        mobile: "13800000000".into(),
        msg: format!("m{i}"),
        at: 0,
    };
    let mut seqs = Vec::new();
    for i in 0..7 {
        seqs.push(q.mailbox_push(&u, push(i)).await.unwrap());
        q.mailbox_push(&other, push(100 + i)).await.unwrap();
    }
    q.mailbox_ack(&u, seqs[3]).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = q.mailbox(&u, after, 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        seen.extend(page);
    }
    let expected: Vec<(u64, Push)> = (0..7)
        .filter(|&i| i != 3)
        .map(|i| (seqs[i], push(i)))
        .collect();
    assert_eq!(seen, expected);
    assert!(q.mailbox(&u, Some(u64::MAX), 10).await.unwrap().is_empty());
    assert!(q.mailbox(&u, None, 0).await.unwrap().is_empty());
    assert_eq!(
        q.mailbox(&u, Some(seqs[5]), 10).await.unwrap(),
        vec![(seqs[6], push(6))]
    );
}

fn lreq(op_id: &str, user: &str, op: LedgerOp) -> LedgerRequest {
    LedgerRequest {
        op_id: op_id.into(),
        user: UserId::from_string(user.into()),
        op,
        at: 1,
    }
}

fn incoming(mobile: &PhoneNumber, text: &str, app: Option<&str>) -> IncomingSms {
    IncomingSms {
        mobile: mobile.clone(),
        text: text.into(),
        appname: app.map(str::to_owned),
        chanlid: None,
    }
}

fn receive_req(batch: Vec<IncomingSms>, now: i64, mailbox_cap: usize) -> ReceiveRequest {
    ReceiveRequest {
        scope: DeviceScope::Any,
        batch,
        now,
        mailbox_cap,
    }
}

/// `receive` is one atomic decision: a batch with an unknown number stores
/// nothing; SMS reach their app's queue with the extracted code; SMS to a
/// live lease reach the lessee's mailbox in order with increasing sequences;
/// the price is captured from the hold once however many SMS arrive
/// concurrently; the mailbox keeps its cap by dropping the oldest entries.
pub async fn pool_receive_is_one_decision(s: &Stores) {
    let payer = UserId::from_string(format!("{:032x}", 7));
    s.ledger
        .apply(lreq("top", payer.as_str(), LedgerOp::Charge { amount: 50 }))
        .await
        .unwrap();
    s.pool.intake(numbers(2), 0).await.unwrap();
    s.items
        .put_item(Item {
            id: "app".into(),
            name: "App".into(),
            price: 10,
            send_price: 1,
            code_pattern: Some(r"code is (\d{4})".into()),
        })
        .await
        .unwrap();
    let mut req = lease_req(7, "app", &["r1"], 10, LeaseFilter::default());
    req.price = 10;
    req.hold = Some(HoldTerms {
        expires_at: Some(500),
    });
    let leased = s.pool.lease(req).await.unwrap().leases();
    assert_eq!(leased.len(), 1);
    let mobile = leased[0].mobile.clone();
    let stranger = PhoneNumber::parse_cn_mobile("13911119999").unwrap();
    // One unknown number refuses the batch: nothing queued, nothing pushed.
    let refused = s
        .pool
        .receive(receive_req(
            vec![
                incoming(&mobile, "your code is 1234", Some("app")),
                incoming(&stranger, "x", None),
            ],
            20,
            100,
        ))
        .await
        .unwrap();
    assert_eq!(
        refused,
        ReceiveOutcome::Refused(ReceiveRefusal::UnknownNumber)
    );
    assert!(s.queues.take_sms("app", 10).await.unwrap().is_empty());
    assert!(s.queues.mailbox(&payer, None, 10).await.unwrap().is_empty());
    assert!(!s.pool.lease_record("r1").await.unwrap().unwrap().charged);
    // Accepted: queued with the item's pattern, pushed to the lessee.
    let ReceiveOutcome::Received(done) = s
        .pool
        .receive(receive_req(
            vec![
                incoming(&mobile, "your code is 1234", Some("app")),
                incoming(&mobile, "second", None),
            ],
            20,
            100,
        ))
        .await
        .unwrap()
    else {
        panic!("a batch of pool numbers must be received");
    };
    let queued = s.queues.take_sms("app", 10).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].code, "1234");
    assert_eq!(done.pushed.len(), 2);
    assert!(
        done.pushed[0].1 < done.pushed[1].1,
        "sequences increase in batch order"
    );
    let held = s.queues.mailbox(&payer, None, 10).await.unwrap();
    assert_eq!(
        held.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        done.pushed
            .iter()
            .map(|(_, seq, _)| *seq)
            .collect::<Vec<_>>()
    );
    // Captured once: 10 of 50 gone, nothing held; again under concurrency.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let p = s.pool.clone();
        let req = receive_req(vec![incoming(&mobile, &format!("more {i}"), None)], 21, 100);
        tasks.push(tokio::spawn(async move { p.receive(req).await.unwrap() }));
    }
    for t in tasks {
        assert!(matches!(t.await.unwrap(), ReceiveOutcome::Received(_)));
    }
    let b = s.ledger.balance(&payer).await.unwrap();
    assert_eq!((b.total, b.held), (40, 0));
    assert!(s.pool.lease_record("r1").await.unwrap().unwrap().charged);
    let captures = s
        .ledger
        .entries(&EntryQuery::User(payer.clone()))
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.request.op, LedgerOp::Capture { .. }))
        .count();
    assert_eq!(captures, 1);
    // 10 entries held; a cap of 4 keeps the newest 4 after one more.
    assert_eq!(s.queues.mailbox(&payer, None, 100).await.unwrap().len(), 10);
    let ReceiveOutcome::Received(done) = s
        .pool
        .receive(receive_req(vec![incoming(&mobile, "last", None)], 22, 4))
        .await
        .unwrap()
    else {
        panic!("received");
    };
    assert_eq!(done.dropped, vec![(payer.clone(), 7)]);
    let left = s.queues.mailbox(&payer, None, 100).await.unwrap();
    assert_eq!(left.len(), 4);
    assert_eq!(left.last().map(|(seq, _)| *seq), Some(done.pushed[0].1));
}

/// A lease with its hold is one step with the ledger: `price × wanted` is
/// held, what the numbers not found would cost is released, a balance too
/// small leases nothing and records nothing, and concurrent leases never
/// overdraw.
pub async fn pool_lease_holds_atomically(s: &Stores) {
    let payer = |n: u32| UserId::from_string(format!("{n:032x}"));
    let held = |n: u32, ids: &[&str], now: i64| {
        let mut r = lease_req(n, "app", ids, now, LeaseFilter::default());
        r.price = 10;
        r.hold = Some(HoldTerms {
            expires_at: Some(now + 500),
        });
        r
    };
    s.ledger
        .apply(lreq(
            "top",
            &payer(1).to_string(),
            LedgerOp::Charge { amount: 25 },
        ))
        .await
        .unwrap();
    s.pool.intake(numbers(3), 0).await.unwrap();
    // Two wanted, two found: 20 held.
    let got = s
        .pool
        .lease(held(1, &["a", "b"], 10))
        .await
        .unwrap()
        .leases();
    assert_eq!(got.len(), 2);
    let b = s.ledger.balance(&payer(1)).await.unwrap();
    assert_eq!((b.total, b.held), (25, 20));
    // Two more cannot be held: nothing leased, nothing recorded.
    let entries = s
        .ledger
        .entries(&EntryQuery::User(payer(1)))
        .await
        .unwrap()
        .len();
    assert_eq!(
        s.pool.lease(held(1, &["c", "d"], 11)).await.unwrap(),
        LeaseOutcome::Refused(Refusal::Insufficient { available: 5 })
    );
    assert_eq!(
        s.ledger
            .entries(&EntryQuery::User(payer(1)))
            .await
            .unwrap()
            .len(),
        entries
    );
    assert!(s.pool.lease_record("c").await.unwrap().is_none());
    // Two wanted, one left: 20 held, then 10 released.
    s.ledger
        .apply(lreq(
            "top2",
            &payer(1).to_string(),
            LedgerOp::Charge { amount: 20 },
        ))
        .await
        .unwrap();
    let got = s
        .pool
        .lease(held(1, &["e", "f"], 12))
        .await
        .unwrap()
        .leases();
    assert_eq!(got.len(), 1);
    let b = s.ledger.balance(&payer(1)).await.unwrap();
    assert_eq!((b.total, b.held), (45, 30));
    let hold = s.ledger.hold("hold-1-12").await.unwrap().unwrap();
    assert_eq!(hold.remaining, 10);
    // Concurrent leases of one user never hold more than the balance.
    s.ledger
        .apply(lreq(
            "top3",
            &payer(2).to_string(),
            LedgerOp::Charge { amount: 30 },
        ))
        .await
        .unwrap();
    s.pool.intake(numbers(20)[3..].to_vec(), 20).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let p = s.pool.clone();
        let mut r = held(2, &[format!("p{i}").as_str()], 20 + i);
        r.hold_id = format!("hold-2-{i}");
        tasks.push(tokio::spawn(async move { p.lease(r).await.unwrap() }));
    }
    let mut leased = 0;
    for t in tasks {
        match t.await.unwrap() {
            LeaseOutcome::Leased(l) => leased += l.len(),
            LeaseOutcome::Refused(Refusal::Insufficient { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(leased, 3);
    let b = s.ledger.balance(&payer(2)).await.unwrap();
    assert_eq!((b.total, b.held), (30, 30));
}

/// Operation ids apply once; holds, captures and releases move exactly what
/// they say; the total equals the sum of the entries.
pub async fn ledger_idempotent_and_exact(s: &Stores) {
    let l = &s.ledger;
    let u = UserId::from_string("payer".into());
    assert_eq!(l.balance(&u).await.unwrap().total, 0);
    let r = l
        .apply(lreq("c1", "payer", LedgerOp::Charge { amount: 100 }))
        .await
        .unwrap();
    assert!(matches!(r, LedgerOutcome::Applied(b) if b.total == 100));
    let r = l
        .apply(lreq("c1", "payer", LedgerOp::Charge { amount: 100 }))
        .await
        .unwrap();
    assert!(matches!(r, LedgerOutcome::Duplicate(b) if b.total == 100));
    let r = l
        .apply(lreq(
            "h1",
            "payer",
            LedgerOp::Hold {
                amount: 60,
                expires_at: None,
            },
        ))
        .await
        .unwrap();
    assert!(matches!(r, LedgerOutcome::Applied(b) if b.held == 60 && b.available() == 40));
    let r = l
        .apply(lreq("d1", "payer", LedgerOp::Debit { amount: 41 }))
        .await
        .unwrap();
    assert_eq!(
        r,
        LedgerOutcome::Refused(Refusal::Insufficient { available: 40 })
    );
    assert!(
        l.entries(&EntryQuery::Op("d1".into()))
            .await
            .unwrap()
            .is_empty(),
        "refusals record nothing"
    );
    let cap = |id: &str, amount| {
        lreq(
            id,
            "payer",
            LedgerOp::Capture {
                hold_id: "h1".into(),
                amount,
            },
        )
    };
    let rel = |id: &str, amount| {
        lreq(
            id,
            "payer",
            LedgerOp::Release {
                hold_id: "h1".into(),
                amount,
            },
        )
    };
    assert!(
        matches!(l.apply(cap("x1", 20)).await.unwrap(), LedgerOutcome::Applied(b) if b.total == 80 && b.held == 40)
    );
    assert!(matches!(
        l.apply(cap("x1", 20)).await.unwrap(),
        LedgerOutcome::Duplicate(_)
    ));
    assert_eq!(
        l.apply(rel("r1", 41)).await.unwrap(),
        LedgerOutcome::Refused(Refusal::BadHold)
    );
    assert!(
        matches!(l.apply(rel("r1", 40)).await.unwrap(), LedgerOutcome::Applied(b) if b.total == 80 && b.held == 0)
    );
    assert_eq!(l.hold("h1").await.unwrap().unwrap().remaining, 0);
    let other = lreq(
        "r2",
        "thief",
        LedgerOp::Release {
            hold_id: "h1".into(),
            amount: 1,
        },
    );
    assert_eq!(
        l.apply(other).await.unwrap(),
        LedgerOutcome::Refused(Refusal::BadHold)
    );
    assert!(matches!(
        l.apply(lreq("d2", "payer", LedgerOp::Debit { amount: 30 }))
            .await
            .unwrap(),
        LedgerOutcome::Applied(_)
    ));
    assert!(matches!(
        l.apply(lreq("f1", "payer", LedgerOp::Refund { amount: 5 })).await.unwrap(),
        LedgerOutcome::Applied(b) if b.total == 55
    ));
    let entries = l.entries(&EntryQuery::User(u.clone())).await.unwrap();
    let ids: Vec<_> = entries.iter().map(|e| e.request.op_id.as_str()).collect();
    assert_eq!(ids, vec!["c1", "h1", "x1", "r1", "d2", "f1"]);
    let sum: i64 = entries.iter().map(|e| e.request.op.total_delta()).sum();
    assert_eq!(sum, l.balance(&u).await.unwrap().total);
    let x1 = l.entries(&EntryQuery::Op("x1".into())).await.unwrap();
    assert_eq!(x1.len(), 1, "one entry per operation id");
    assert_eq!(x1[0].balance_after.total, 80);
}

/// 100 concurrent debits of 10 against 500: exactly 50 apply; concurrent
/// holds never overdraw; retried ids apply once.
pub async fn ledger_concurrent_never_overdraw(s: &Stores) {
    let u = UserId::from_string("busy".into());
    s.ledger
        .apply(lreq("top-up", "busy", LedgerOp::Charge { amount: 500 }))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..100 {
        let l = s.ledger.clone();
        tasks.push(tokio::spawn(async move {
            l.apply(lreq(
                &format!("d{i}"),
                "busy",
                LedgerOp::Debit { amount: 10 },
            ))
            .await
            .unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), LedgerOutcome::Applied(_)) {
            applied += 1;
        }
    }
    assert_eq!(applied, 50);
    let b = s.ledger.balance(&u).await.unwrap();
    assert_eq!((b.total, b.held), (0, 0));
    // Holds and retries of one id, concurrently.
    s.ledger
        .apply(lreq("top-up-2", "busy", LedgerOp::Charge { amount: 100 }))
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let l = s.ledger.clone();
        let id = format!("h{}", i % 20);
        tasks.push(tokio::spawn(async move {
            l.apply(lreq(
                &id,
                "busy",
                LedgerOp::Hold {
                    amount: 7,
                    expires_at: None,
                },
            ))
            .await
            .unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), LedgerOutcome::Applied(_)) {
            applied += 1;
        }
    }
    assert_eq!(applied, 14, "100 / 7 = 14 holds fit");
    let b = s.ledger.balance(&u).await.unwrap();
    assert_eq!((b.total, b.held), (100, 98));
    let entries = s
        .ledger
        .entries(&EntryQuery::User(u.clone()))
        .await
        .unwrap();
    let sum: i64 = entries.iter().map(|e| e.request.op.total_delta()).sum();
    assert_eq!(sum, b.total);
}

fn signature(owner: &str) -> Signature {
    Signature {
        id: 0,
        owner: UserId::from_string(owner.into()),
        text: "签名".into(),
        source: "app".into(),
        pics: vec!["https://x/1.png".into()],
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

fn template(owner: &str, sign_id: i64) -> Template {
    Template {
        id: 0,
        owner: UserId::from_string(owner.into()),
        sign_id,
        name: "t".into(),
        content: "验证码${code}".into(),
        kind: TemplateType::Code,
        description: "d".into(),
        audit: AuditStatus::Pending,
        reject_reason: String::new(),
        created_at: 1,
        updated_at: 1,
    }
}

/// A signature created through [`SignatureWrite::Create`], as stored.
async fn create_signature(st: &Arc<dyn crate::store::SendStore>, sig: Signature) -> Signature {
    match st
        .write_signature(SignatureWrite::Create(sig))
        .await
        .unwrap()
    {
        WriteOutcome::Created(sig) => sig,
        other => panic!("a create answered {other:?}"),
    }
}

/// Ids are fresh and increasing; compare-and-set replaces; a signature with
/// templates is not deleted; templates need their signature.
pub async fn sending_signatures_and_templates(s: &Stores) {
    let st = &s.sending;
    let a = create_signature(st, signature("u1")).await;
    let b = create_signature(st, signature("u2")).await;
    assert_eq!((a.id, b.id), (1, 2), "signatures count from 1");
    assert_eq!(st.signature(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(st.signatures_of(&a.owner).await.unwrap(), vec![a.clone()]);
    let mut passed = a.clone();
    passed.audit = AuditStatus::Passed;
    let replace = |old: &Signature, new: &Signature| SignatureWrite::Replace {
        old: old.clone(),
        new: new.clone(),
    };
    assert_eq!(
        st.write_signature(replace(&a, &passed)).await.unwrap(),
        WriteOutcome::Replaced
    );
    assert_eq!(
        st.write_signature(replace(&a, &a)).await.unwrap(),
        WriteOutcome::Stale,
        "stale CAS must fail"
    );
    assert_eq!(st.signature(a.id).await.unwrap(), Some(passed.clone()));
    let WriteOutcome::Created(t) = st
        .write_template(TemplateWrite::Create(template("u1", a.id)))
        .await
        .unwrap()
    else {
        panic!("a template on an existing signature is created");
    };
    assert_eq!(t.id, 1, "templates count on their own, from 1");
    assert_eq!(
        st.write_template(TemplateWrite::Create(template("u1", 9_999)))
            .await
            .unwrap(),
        WriteOutcome::Missing
    );
    assert_eq!(st.templates_of(&t.owner).await.unwrap(), vec![t.clone()]);
    // Waiting for review, across owners: b (a passed) and t, lowest id first.
    let (sigs, temps) = st.pending_reviews(10).await.unwrap();
    assert_eq!(sigs.iter().map(|x| x.id).collect::<Vec<_>>(), vec![b.id]);
    assert_eq!(temps.iter().map(|x| x.id).collect::<Vec<_>>(), vec![t.id]);
    assert_eq!(st.pending_reviews(0).await.unwrap(), (vec![], vec![]));
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(a.id))
            .await
            .unwrap(),
        WriteOutcome::InUse
    );
    let mut t2 = t.clone();
    t2.audit = AuditStatus::Rejected;
    t2.reject_reason = "no".into();
    let replace = |old: &Template, new: &Template| TemplateWrite::Replace {
        old: old.clone(),
        new: new.clone(),
    };
    assert_eq!(
        st.write_template(replace(&t, &t2)).await.unwrap(),
        WriteOutcome::Replaced
    );
    assert_eq!(
        st.write_template(replace(&t, &t)).await.unwrap(),
        WriteOutcome::Stale
    );
    // A template does not move to a signature that does not exist.
    let mut lost = t2.clone();
    lost.sign_id = 9_999;
    assert_eq!(
        st.write_template(replace(&t2, &lost)).await.unwrap(),
        WriteOutcome::Stale
    );
    assert_eq!(st.template(t.id).await.unwrap(), Some(t2));
    assert_eq!(
        st.write_template(TemplateWrite::Delete(t.id))
            .await
            .unwrap(),
        WriteOutcome::Deleted
    );
    assert_eq!(
        st.write_template(TemplateWrite::Delete(t.id))
            .await
            .unwrap(),
        WriteOutcome::Missing
    );
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(a.id))
            .await
            .unwrap(),
        WriteOutcome::Deleted
    );
    assert_eq!(
        st.write_signature(SignatureWrite::Delete(a.id))
            .await
            .unwrap(),
        WriteOutcome::Missing
    );
    assert!(st.signature(a.id).await.unwrap().is_none());
    // A new id is never a reused one.
    let c = create_signature(st, signature("u1")).await;
    assert!(c.id > t.id);
    // Racing deletes and template creations never leave an orphan.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let st = s.sending.clone();
        let id = c.id;
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                st.write_signature(SignatureWrite::Delete(id))
                    .await
                    .unwrap();
            } else {
                st.write_template(TemplateWrite::Create(template("u1", id)))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let orphans = st
        .templates_of(&c.owner)
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.sign_id == c.id)
        .count();
    let sig_exists = st.signature(c.id).await.unwrap().is_some();
    assert!(
        sig_exists || orphans == 0,
        "templates left on a deleted signature"
    );
}

/// Tasks start with every recipient pending; statuses move only from
/// pending; state moves by compare-and-set; open tasks are listed in order.
pub async fn sending_tasks_and_statuses(s: &Stores) {
    let st = &s.sending;
    let recipients: Vec<PhoneNumber> = (0..1_000)
        .map(|i| PhoneNumber::parse_cn_mobile(&format!("1390000{i:04}")).unwrap())
        .collect();
    let task = |uuid: &str| SendTask {
        uuid: uuid.into(),
        owner: UserId::from_string("u1".into()),
        sign_id: 1,
        temp_id: 2,
        text: "【签名】hi".into(),
        segments: 1,
        unit_price: 1,
        recipients: recipients.clone(),
        state: TaskState::Created,
        created_at: 5,
        finished_at: None,
        params: Vec::new(),
    };
    st.create_task(task("t-1")).await.unwrap();
    st.create_task(task("t-2")).await.unwrap();
    assert!(st.create_task(task("t-1")).await.is_err(), "uuid is unique");
    assert_eq!(st.task("t-1").await.unwrap(), Some(task("t-1")));
    let statuses = st.recipient_statuses("t-1").await.unwrap();
    assert_eq!(statuses.len(), 1_000);
    assert!(statuses.iter().all(|x| *x == RecipientStatus::Pending));
    assert_eq!(
        st.open_tasks().await.unwrap(),
        vec!["t-1".to_string(), "t-2".to_string()]
    );
    assert!(st
        .set_task_state("t-1", TaskState::Created, TaskState::Queued, 6)
        .await
        .unwrap());
    assert!(!st
        .set_task_state("t-1", TaskState::Created, TaskState::Cancelled, 6)
        .await
        .unwrap());
    let sent = |n: usize| RecipientStatus::Sent {
        gateway_id: format!("g{n}"),
        at: 7,
        carrier: None,
    };
    let failed = RecipientStatus::Failed {
        reason: "no".into(),
        at: 7,
    };
    st.record_statuses("t-1", (0..999).map(|i| (i, sent(i))).collect())
        .await
        .unwrap();
    st.record_statuses(
        "t-1",
        vec![
            (0, failed.clone()),
            (999, failed.clone()),
            (5_000, failed.clone()),
        ],
    )
    .await
    .unwrap();
    let statuses = st.recipient_statuses("t-1").await.unwrap();
    assert_eq!(statuses[0], sent(0), "a final status is never overwritten");
    assert_eq!(statuses[998], sent(998));
    assert_eq!(statuses[999], failed);
    assert!(st
        .set_task_state("t-1", TaskState::Queued, TaskState::Done, 8)
        .await
        .unwrap());
    let done = st.task("t-1").await.unwrap().unwrap();
    assert_eq!((done.state, done.finished_at), (TaskState::Done, Some(8)));
    assert_eq!(st.open_tasks().await.unwrap(), vec!["t-2".to_string()]);
    assert!(st.recipient_statuses("none").await.unwrap().is_empty());
}

/// A `Sent` status is found by carrier and gateway id; a receipt moves a
/// recipient by [`receipt_transition`](crate::sending::receipt_transition)
/// and refunds a final failure in the same step, exactly once, under
/// concurrency too.
pub async fn sending_receipts_refund_once(s: &Stores) {
    use crate::carrier::DeliveryStatus;
    use crate::sending::{ReceiptOutcome, ReceiptUpdate};
    let st = &s.sending;
    let owner = UserId::from_string("u-r".into());
    s.ledger
        .apply(lreq("c-r", "u-r", LedgerOp::Charge { amount: 100 }))
        .await
        .unwrap();
    let recipients: Vec<PhoneNumber> = (0..4)
        .map(|i| PhoneNumber::parse_cn_mobile(&format!("1390000{i:04}")).unwrap())
        .collect();
    st.create_task(SendTask {
        uuid: "t-r".into(),
        owner: owner.clone(),
        sign_id: 1,
        temp_id: 2,
        text: "【签名】hi".into(),
        segments: 2,
        unit_price: 3,
        recipients,
        state: TaskState::Queued,
        created_at: 5,
        finished_at: None,
        params: vec![("no".into(), "42".into())],
    })
    .await
    .unwrap();
    assert_eq!(
        st.task("t-r").await.unwrap().unwrap().params,
        vec![("no".to_string(), "42".to_string())],
        "params are kept"
    );
    st.record_statuses(
        "t-r",
        vec![
            (
                0,
                RecipientStatus::Sent {
                    gateway_id: "g0".into(),
                    at: 6,
                    carrier: Some("tw".into()),
                },
            ),
            (1, RecipientStatus::sent("g1", 6)),
            (
                2,
                RecipientStatus::Failed {
                    reason: "refused".into(),
                    at: 6,
                },
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        st.recipient_by_gateway_id("tw", "g0").await.unwrap(),
        Some(("t-r".to_string(), 0))
    );
    assert_eq!(
        st.recipient_by_gateway_id("", "g1").await.unwrap(),
        Some(("t-r".to_string(), 1))
    );
    assert_eq!(st.recipient_by_gateway_id("sm", "g0").await.unwrap(), None);
    let receipt = |delivery, id: &str| ReceiptUpdate {
        delivery,
        carrier: "tw".into(),
        gateway_id: id.into(),
        carrier_code: "c".into(),
        at: 9,
    };
    let balance = || async { s.ledger.balance(&owner).await.unwrap().total };
    // Delivered, then a contradicting failure: the first final report wins.
    let r = st
        .apply_receipt("t-r", 0, receipt(DeliveryStatus::Delivered, "g0"))
        .await
        .unwrap();
    assert!(
        matches!(&r, ReceiptOutcome::Applied { status, refunded: 0 } if status.as_str() == "delivered"),
        "{r:?}"
    );
    let r = st
        .apply_receipt("t-r", 0, receipt(DeliveryStatus::Failed, "g0"))
        .await
        .unwrap();
    assert!(matches!(r, ReceiptOutcome::Unchanged(_)), "{r:?}");
    assert_eq!(
        balance().await,
        100,
        "a delivered recipient is not refunded"
    );
    // The same failed receipt, 20 times at once: one refund of 2 × 3.
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let st = st.clone();
        let u = receipt(DeliveryStatus::Failed, "g1");
        tasks.push(tokio::spawn(async move {
            st.apply_receipt("t-r", 1, u).await.unwrap()
        }));
    }
    let mut refunds = 0;
    for t in tasks {
        match t.await.unwrap() {
            ReceiptOutcome::Applied { refunded, .. } => {
                assert_eq!(refunded, 6);
                refunds += 1;
            }
            ReceiptOutcome::Unchanged(st) => assert_eq!(st.as_str(), "failed"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refunds, 1, "the same failed receipt refunds once");
    assert_eq!(balance().await, 106);
    assert!(s
        .ledger
        .entries(&EntryQuery::Op("refund:t-r:1".into()))
        .await
        .unwrap()
        .into_iter()
        .next()
        .is_some());
    // Refused at once: final already, refunded with the task, not here.
    let r = st
        .apply_receipt("t-r", 2, receipt(DeliveryStatus::Failed, "x"))
        .await
        .unwrap();
    assert!(matches!(r, ReceiptOutcome::Unchanged(_)), "{r:?}");
    // A receipt that overtook the status write: recorded, and the late
    // `Sent` does not overwrite it; an expiry then refunds.
    let r = st
        .apply_receipt("t-r", 3, receipt(DeliveryStatus::Unknown, "g3"))
        .await
        .unwrap();
    assert!(
        matches!(r, ReceiptOutcome::Applied { refunded: 0, .. }),
        "{r:?}"
    );
    let r = st
        .apply_receipt("t-r", 3, receipt(DeliveryStatus::Sent, "g3"))
        .await
        .unwrap();
    assert!(matches!(r, ReceiptOutcome::Unchanged(_)), "{r:?}");
    st.record_statuses("t-r", vec![(3, RecipientStatus::sent("g3", 9))])
        .await
        .unwrap();
    assert_eq!(
        st.recipient_statuses("t-r").await.unwrap()[3].as_str(),
        "unknown"
    );
    let r = st
        .apply_receipt("t-r", 3, receipt(DeliveryStatus::Expired, "g3"))
        .await
        .unwrap();
    assert!(
        matches!(r, ReceiptOutcome::Applied { refunded: 6, .. }),
        "{r:?}"
    );
    assert_eq!(balance().await, 112);
    let statuses: Vec<&str> = st
        .recipient_statuses("t-r")
        .await
        .unwrap()
        .iter()
        .map(RecipientStatus::as_str)
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    assert_eq!(statuses, ["delivered", "failed", "failed", "expired"]);
    let all = st.recipient_statuses("t-r").await.unwrap();
    assert_eq!(all[1].carrier(), Some("tw"));
    assert_eq!(all[1].carrier_code(), Some("c"));
    // Unknown tasks and recipients.
    for (uuid, i) in [("none", 0), ("t-r", 99)] {
        let r = st
            .apply_receipt(uuid, i, receipt(DeliveryStatus::Failed, "g"))
            .await
            .unwrap();
        assert_eq!(r, ReceiptOutcome::Unknown);
    }
    let entries = s
        .ledger
        .entries(&EntryQuery::User(owner.clone()))
        .await
        .unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| e.request.op.total_delta())
            .sum::<i64>(),
        balance().await,
        "the total is the sum of the entries"
    );
    assert_eq!(entries.len(), 3, "one charge, two refunds");
}

/// Holds with an expiry are listed once expired while they still reserve
/// something, earliest first.
pub async fn ledger_expired_holds(s: &Stores) {
    let l = &s.ledger;
    l.apply(lreq("c", "u", LedgerOp::Charge { amount: 100 }))
        .await
        .unwrap();
    for (id, exp) in [
        ("h-late", Some(50)),
        ("h-early", Some(20)),
        ("h-never", None),
    ] {
        l.apply(lreq(
            id,
            "u",
            LedgerOp::Hold {
                amount: 10,
                expires_at: exp,
            },
        ))
        .await
        .unwrap();
    }
    assert!(l.expired_holds(19, 10).await.unwrap().is_empty());
    let ids = |v: Vec<crate::ledger::Hold>| v.into_iter().map(|h| h.hold_id).collect::<Vec<_>>();
    assert_eq!(ids(l.expired_holds(20, 10).await.unwrap()), vec!["h-early"]);
    assert_eq!(
        ids(l.expired_holds(1_000, 10).await.unwrap()),
        vec!["h-early", "h-late"]
    );
    assert_eq!(
        ids(l.expired_holds(1_000, 1).await.unwrap()),
        vec!["h-early"]
    );
    assert_eq!(
        l.hold("h-early").await.unwrap().unwrap().expires_at,
        Some(20)
    );
    // Fully released holds are no longer listed.
    l.apply(lreq(
        "r",
        "u",
        LedgerOp::Release {
            hold_id: "h-early".into(),
            amount: 10,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        ids(l.expired_holds(1_000, 10).await.unwrap()),
        vec!["h-late"]
    );
    // Partly captured ones still are.
    l.apply(lreq(
        "x",
        "u",
        LedgerOp::Capture {
            hold_id: "h-late".into(),
            amount: 4,
        },
    ))
    .await
    .unwrap();
    let left = l.expired_holds(1_000, 10).await.unwrap();
    assert_eq!((left.len(), left[0].remaining), (1, 6));
}

#[cfg(test)]
mod explain_tests {
    #[test]
    fn a_failed_check_names_its_port_and_contract_rule() {
        let panic = std::panic::catch_unwind(|| panic!("left: 0 right: 5")).unwrap_err();
        let again = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            super::explain("ledger_concurrent_never_overdraw", panic)
        }))
        .unwrap_err();
        let text = again.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("LedgerStore contract"), "{text}");
        assert!(text.contains("exactly 50 apply"), "{text}");
        assert!(text.contains("left: 0 right: 5"), "{text}");
        let names: Vec<_> = super::CHECKS.iter().map(|c| c.1).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "every check listed once");
    }
}
