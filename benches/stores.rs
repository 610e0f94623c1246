#![allow(missing_docs)]
//! Criterion benches of the hot store operations, on the memory store and on
//! the sled store (in a temporary directory; every sled write is flushed to
//! disk before it returns), plus concurrent ledger writes.
//!
//! `cargo bench --bench stores` (add `-- --quick` for a short run). With
//! `SMS_BENCH_DATABASE_URL` set, `pool/hand_out(1) after 20,000 handed out`
//! also runs on PostgreSQL (a fresh schema, dropped at the end).
//!
//! Each call goes through the store port as the core makes it (`Arc<dyn …>`
//! from [`Stores`], on a multi-thread Tokio runtime, so sled work runs on the
//! blocking pool as in the server).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sms_core::code_decision::{
    CheckCode, CheckOutcome, CodeDecision, CodeVerdict, IssueCode, IssueOutcome,
};
use sms_core::identity::Username;
use sms_core::ledger::{LedgerOp, LedgerOutcome, LedgerRequest};
use sms_core::limits::{LimitCheck, LimitRule};
use sms_core::phone::PhoneNumber;
use sms_core::pool::{LeaseFilter, LeaseRequest, NumberInfo, ReceivedSms};
use sms_core::prelude::*;
use sms_core::secret::CodeHasher;
use sms_core::store::{CodeKey, CodeRecord, Purpose, RedeemOutcome};
use sms_core::store::{LimitMode, UserKey};
use sms_store_sled::SledStore;
use tokio::runtime::Runtime;

/// A store and, for sled, the directory it lives in (removed on drop, after
/// the store).
struct Backend {
    stores: Stores,
    _dir: Option<tempfile::TempDir>,
}

#[derive(Clone, Copy)]
enum Kind {
    Memory,
    Sled,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::Memory, Kind::Sled];

    fn name(self) -> &'static str {
        match self {
            Kind::Memory => "memory",
            Kind::Sled => "sled",
        }
    }

    fn open(self) -> Backend {
        match self {
            Kind::Memory => Backend {
                stores: Stores::from_single(Arc::new(MemoryStore::new())),
                _dir: None,
            },
            Kind::Sled => {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Arc::new(SledStore::open(dir.path()).expect("sled"));
                Backend {
                    stores: store.stores(),
                    _dir: Some(dir),
                }
            }
        }
    }
}

/// A unique number for ids, keys and names.
fn next() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn user_named(name: &str) -> User {
    User {
        id: UserId::generate(&OsRandom),
        username: Some(Username::parse(name).expect("username")),
        phone: None,
        email: None,
        name: None,
        // The store does not look at it; a realistic length.
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1${}", "x".repeat(66)),
        device: None,
        banned: false,
        points: 0,
        created_at: 1_700_000_000,
    }
}

fn runtime() -> Runtime {
    Runtime::new().expect("runtime")
}

fn users(c: &mut Criterion) {
    let rt = runtime();
    for kind in Kind::ALL {
        let b = kind.open();
        let mut g = c.benchmark_group("users");
        g.bench_function(format!("create_user/{}", kind.name()), |bench| {
            bench.iter_batched(
                || user_named(&format!("user{}", next())),
                |u| rt.block_on(b.stores.users.create_user(u)).expect("create"),
                BatchSize::SmallInput,
            )
        });
        let name = format!("find{}", next());
        rt.block_on(b.stores.users.create_user(user_named(&name)))
            .expect("create");
        let key = Username::parse(&name).expect("username");
        g.bench_function(format!("user_by_username/{}", kind.name()), |bench| {
            bench.iter(|| {
                rt.block_on(b.stores.users.user(&UserKey::Username(key.clone())))
                    .expect("lookup")
                    .expect("found")
            })
        });
        g.finish();
    }
}

fn codes(c: &mut Criterion) {
    let rt = runtime();
    let hasher = CodeHasher::new([7; 32]);
    for kind in Kind::ALL {
        let b = kind.open();
        let key = CodeKey {
            address: "+8613811112222".into(),
            purpose: Purpose::Register,
        };
        let hash = hasher.hash(&key.flat(), "482913");
        let mut now = 1_700_000_000;
        c.bench_function(
            &format!("codes/decide_code issue+check/{}", kind.name()),
            |bench| {
                bench.iter(|| {
                    now += 1;
                    let record = CodeRecord {
                        key: key.clone(),
                        hash,
                        issued_at: now,
                        expires_at: now + 300,
                        attempts: 0,
                        used: false,
                    };
                    rt.block_on(async {
                        let issue = CodeDecision::Issue(IssueCode {
                            record,
                            cooldown_secs: 0,
                            caps: vec![],
                            pump: None,
                        });
                        let stored = b.stores.codes.decide_code(issue).await;
                        assert_eq!(
                            stored.expect("issue"),
                            CodeVerdict::Issue(IssueOutcome::Issued)
                        );
                        let check = CodeDecision::Check(CheckCode {
                            key: key.clone(),
                            presented: hash,
                            now,
                            max_attempts: 5,
                            failures: LimitCheck::new("bench:fail", LimitRule::per(20, 86_400)),
                            pump_ok: None,
                            grant: None,
                        });
                        let r = b.stores.codes.decide_code(check).await;
                        assert_eq!(
                            r.expect("check"),
                            CodeVerdict::Check(CheckOutcome::Presented(RedeemOutcome::Redeemed))
                        );
                    })
                })
            },
        );
    }
}

fn limits(c: &mut Criterion) {
    let rt = runtime();
    for kind in Kind::ALL {
        let b = kind.open();
        // As a probe from a new client IP: two rules on fresh keys.
        c.bench_function(
            &format!("limits/acquire(2 checks, new key)/{}", kind.name()),
            |bench| {
                bench.iter_batched(
                    || {
                        let n = next();
                        [
                            LimitCheck::new(format!("probe:m:{n}"), LimitRule::per(30, 60)),
                            LimitCheck::new(format!("probe:d:{n}"), LimitRule::per(1_000, 86_400)),
                        ]
                    },
                    |checks| {
                        rt.block_on(b.stores.limits.check(
                            &checks,
                            1_700_000_000,
                            LimitMode::Acquire,
                        ))
                        .expect("acquire")
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
}

fn charge(user: &UserId, amount: i64) -> LedgerRequest {
    LedgerRequest {
        op_id: format!("op{}", next()),
        user: user.clone(),
        op: LedgerOp::Charge { amount },
        at: 1_700_000_000,
    }
}

fn ledger(c: &mut Criterion) {
    let rt = runtime();
    for kind in Kind::ALL {
        let b = kind.open();
        let user = UserId::generate(&OsRandom);
        let mut g = c.benchmark_group("ledger");
        g.bench_function(format!("apply_charge/{}", kind.name()), |bench| {
            bench.iter_batched(
                || charge(&user, 10),
                |req| {
                    let out = rt.block_on(b.stores.ledger.apply(req)).expect("apply");
                    assert!(matches!(out, LedgerOutcome::Applied(_)));
                },
                BatchSize::SmallInput,
            )
        });
        rt.block_on(b.stores.ledger.apply(charge(&user, 1_000_000_000_000)))
            .expect("top up");
        g.bench_function(format!("apply_debit/{}", kind.name()), |bench| {
            bench.iter_batched(
                || LedgerRequest {
                    op_id: format!("op{}", next()),
                    user: user.clone(),
                    op: LedgerOp::Debit { amount: 1 },
                    at: 1_700_000_000,
                },
                |req| {
                    let out = rt.block_on(b.stores.ledger.apply(req)).expect("apply");
                    assert!(matches!(out, LedgerOutcome::Applied(_)));
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();
    }
}

/// Leasing never hands a number out twice for one item, and the number
/// remembers every item it served; so each lease is for a new item, starts
/// after the previous one ended, and every [`LEASES_PER_POOL`] leases the
/// pool is a fresh store with one number (set up outside the timing). The
/// measured call is one `lease` of one number from a one-number pool.
const LEASES_PER_POOL: u64 = 64;

fn pool(c: &mut Criterion) {
    let rt = runtime();
    let user = UserId::generate(&OsRandom);
    let number = NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile("18250794865").expect("phone"),
        cid: "dev-1".into(),
        imsi: "460001234567890".into(),
        imei: "861234567890123".into(),
        iccid: "89860012345678901234".into(),
        ip: "10.0.0.1".into(),
        area: None,
    };
    for kind in Kind::ALL {
        let fresh = || {
            let b = kind.open();
            rt.block_on(b.stores.pool.intake(vec![number.clone()], 1_000))
                .expect("intake");
            b
        };
        c.bench_function(&format!("pool/lease(1 number)/{}", kind.name()), |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut current = fresh();
                for i in 0..iters {
                    let k = i % LEASES_PER_POOL;
                    if k == 0 && i > 0 {
                        current = fresh();
                    }
                    let now = 2_000 + 2 * k as i64;
                    let req = LeaseRequest {
                        user: user.clone(),
                        item: format!("app{k}"),
                        lease_ids: vec![format!("lease{}", next())],
                        filter: LeaseFilter::default(),
                        now,
                        until: now + 1,
                        hold_id: format!("hold{}", next()),
                        price: 1,
                        hold: None,
                    };
                    let t = Instant::now();
                    let got = rt
                        .block_on(current.stores.pool.lease(req))
                        .expect("lease")
                        .leases();
                    total += t.elapsed();
                    assert_eq!(got.len(), 1);
                }
                total
            })
        });
    }
}

/// Numbers in the pool of [`pool_hand_out_after_many`], every one already
/// handed out for the benched app.
const HANDED_OUT: u64 = 20_000;

/// `GET /mobiles/<app>/1` after the app has had every number of a pool of
/// [`HANDED_OUT`]: each measured call hands out the one number just added
/// (its upload is outside the timing), so the store has to find it past
/// the [`HANDED_OUT`] numbers the app already had.
fn pool_hand_out_after_many(c: &mut Criterion) {
    let rt = runtime();
    let info = |n: u64| NumberInfo {
        mobile: PhoneNumber::parse_cn_mobile(&format!("15{n:09}")).expect("phone"),
        cid: "dev-1".into(),
        imsi: "460001234567890".into(),
        imei: "861234567890123".into(),
        iccid: "89860012345678901234".into(),
        ip: "10.0.0.1".into(),
        area: None,
    };
    // PostgreSQL too when `SMS_BENCH_DATABASE_URL` names a database (a
    // fresh schema, dropped at the end).
    let pg = std::env::var("SMS_BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .map(|url| {
            let options = sms_store_postgres::PgOptions::new(url)
                .schema(format!("bench_pool_{}", std::process::id()));
            let store = rt
                .block_on(sms_store_postgres::PgStore::connect(&options))
                .expect("PostgreSQL");
            Arc::new(store)
        });
    let mut backends: Vec<(&str, Backend)> =
        Kind::ALL.iter().map(|k| (k.name(), k.open())).collect();
    if let Some(store) = &pg {
        let stores = store.clone().stores();
        backends.push(("postgres", Backend { stores, _dir: None }));
    }
    for (name, b) in backends {
        let pool = b.stores.pool.clone();
        rt.block_on(async {
            pool.set_pool_size(u32::MAX).await.expect("size");
            for chunk in (0..HANDED_OUT).collect::<Vec<_>>().chunks(1_000) {
                pool.intake(chunk.iter().map(|&n| info(n)).collect(), 1_000)
                    .await
                    .expect("intake");
            }
            let mut left = HANDED_OUT;
            while left > 0 {
                let got = pool.hand_out("bench", 100, 2_000).await.expect("hand out");
                assert!(!got.is_empty());
                left -= got.len() as u64;
            }
        });
        let mut added = HANDED_OUT;
        c.bench_function(
            &format!("pool/hand_out(1) after 20,000 handed out/{name}"),
            |bench| {
                bench.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let fresh = info(added);
                        added += 1;
                        rt.block_on(pool.intake(vec![fresh.clone()], 1_000))
                            .expect("intake");
                        let t = Instant::now();
                        let got = rt
                            .block_on(pool.hand_out("bench", 1, 2_000))
                            .expect("hand out");
                        total += t.elapsed();
                        assert_eq!(got.len(), 1);
                        assert_eq!(got[0].mobile, fresh.mobile);
                    }
                    total
                })
            },
        );
    }
    if let Some(store) = pg {
        rt.block_on(store.drop_schema())
            .expect("drop the bench schema");
    }
}

fn queues(c: &mut Criterion) {
    let rt = runtime();
    let mobile = PhoneNumber::parse_cn_mobile("18250794865").expect("phone");
    for kind in Kind::ALL {
        let b = kind.open();
        c.bench_function(
            &format!("queues/push_sms+take_sms/{}", kind.name()),
            |bench| {
                bench.iter(|| {
                    let sms = ReceivedSms {
                        mobile: mobile.clone(),
                        text: "Your code is 201708".into(),
                        code: "201708".into(),
                        appname: Some("com.example.app".into()),
                        chanlid: None,
                        at: 1_700_000_000,
                    };
                    rt.block_on(async {
                        b.stores
                            .queues
                            .push_sms("com.example.app", sms)
                            .await
                            .expect("push");
                        let got = b
                            .stores
                            .queues
                            .take_sms("com.example.app", 10)
                            .await
                            .expect("take");
                        assert_eq!(got.len(), 1);
                    })
                })
            },
        );
    }
}

/// Writers that arrive together: 32 `apply` Charge tasks (one user each)
/// spawned at once, awaited together; one iteration is all 32.
const CONCURRENT_WRITERS: usize = 32;

fn concurrent(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("ledger/apply_charge x32 concurrent");
    g.throughput(Throughput::Elements(CONCURRENT_WRITERS as u64));
    for kind in Kind::ALL {
        let b = kind.open();
        let users: Vec<UserId> = (0..CONCURRENT_WRITERS)
            .map(|_| UserId::generate(&OsRandom))
            .collect();
        g.bench_function(kind.name(), |bench| {
            bench.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = users
                        .iter()
                        .map(|u| {
                            let ledger = b.stores.ledger.clone();
                            let req = charge(u, 10);
                            tokio::spawn(async move { ledger.apply(req).await })
                        })
                        .collect();
                    for t in tasks {
                        let out = t.await.expect("task").expect("apply");
                        assert!(matches!(out, LedgerOutcome::Applied(_)));
                    }
                })
            })
        });
    }
    g.finish();

    // The same for queue appends to one app's queue (`POST /vcodes` under
    // load): 32 `push_sms` at once.
    let mut g = c.benchmark_group("queues/push_sms x32 concurrent (one app)");
    g.throughput(Throughput::Elements(CONCURRENT_WRITERS as u64));
    let mobile = PhoneNumber::parse_cn_mobile("18250794865").expect("phone");
    for kind in Kind::ALL {
        let b = kind.open();
        g.bench_function(kind.name(), |bench| {
            bench.iter(|| {
                rt.block_on(async {
                    let tasks: Vec<_> = (0..CONCURRENT_WRITERS)
                        .map(|_| {
                            let queues = b.stores.queues.clone();
                            let sms = ReceivedSms {
                                mobile: mobile.clone(),
                                text: "Your code is 201708".into(),
                                code: "201708".into(),
                                appname: Some("com.example.app".into()),
                                chanlid: None,
                                at: 1_700_000_000,
                            };
                            tokio::spawn(
                                async move { queues.push_sms("com.example.app", sms).await },
                            )
                        })
                        .collect();
                    for t in tasks {
                        t.await.expect("task").expect("push");
                    }
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = users, codes, limits, ledger, pool, pool_hand_out_after_many, queues, concurrent
}
criterion_main!(benches);
