#![allow(missing_docs)]
//! Criterion benches for the core's rules and the stores behind them.
//!
//! `cargo bench --bench core` (add `-- --quick` for a short run).

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use sms_core::limits::{LimitCheck, LimitRule};
use sms_core::prelude::*;
use sms_core::store::LimitMode;
use sms_core::store::{LimitStore, Stores};
use sms_store_sled::SledStore;

fn phone(c: &mut Criterion) {
    c.bench_function("phone/parse_cn_mobile", |b| {
        b.iter(|| PhoneNumber::parse_cn_mobile(std::hint::black_box("+86 138-1111-2222")))
    });
    c.bench_function("token/generate+hash", |b| {
        b.iter(|| Token::generate(&OsRandom).hash())
    });
}

fn core_over(stores: Stores, clock: Arc<ManualClock>) -> Core {
    Core::test_builder(stores)
        .sender(Arc::new(RecordingSender::new()))
        .clock(clock)
        .password_hasher(Arc::new(Argon2Hasher::fast_insecure_for_tests()))
        .build()
        .expect("test core")
}

/// Send then check one code, on a fresh phone each time (no cooldown hit).
fn code_cycle(c: &mut Criterion, name: &str, stores: Stores) {
    // One core: the figure is pairs per second of one thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let clock = Arc::new(ManualClock::default());
    let sender = Arc::new(RecordingSender::new());
    let core = Core::test_builder(stores)
        .sender(sender.clone())
        .clock(clock.clone())
        .code_policy(CodePolicy {
            fixed_code: Some("123456".into()),
            ..CodePolicy::default()
        })
        .build()
        .expect("test core");
    let mut n: u64 = 0;
    c.bench_function(&format!("codes/send+check/{name}"), |b| {
        b.iter(|| {
            n += 1;
            let phone = PhoneNumber::parse_cn_mobile(&format!("1{:010}", n)).expect("phone");
            let addr = CodeAddress::Phone(phone);
            rt.block_on(async {
                core.codes
                    .send(&addr, Purpose::Register, None)
                    .await
                    .expect("send");
                core.codes
                    .check(&addr, Purpose::Register, "123456")
                    .await
                    .expect("check");
            })
        })
    });
}

fn codes(c: &mut Criterion) {
    code_cycle(
        c,
        "memory",
        Stores::from_single(Arc::new(MemoryStore::new())),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = Arc::new(SledStore::open(dir.path()).expect("sled"));
    code_cycle(c, "sled", sled.stores());
}

fn limits(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let store = MemoryStore::new();
    let checks = [
        LimitCheck::new("a", LimitRule::per(2_000, 86_400)),
        LimitCheck::new("b", LimitRule::per(300, 3_600)),
    ];
    let mut now = 0;
    c.bench_function("limits/acquire/memory", |b| {
        b.iter(|| {
            now += 100;
            rt.block_on(store.check(&checks, now, LimitMode::Acquire))
                .expect("acquire")
        })
    });
}

fn accounts(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let clock = Arc::new(ManualClock::default());
    let core = core_over(Stores::from_single(Arc::new(MemoryStore::new())), clock);
    let token = rt
        .block_on(core.accounts.sign_up_username("bencher", "secret1"))
        .expect("signup");
    c.bench_function("accounts/authenticate/memory", |b| {
        b.iter(|| {
            rt.block_on(core.accounts.authenticate(&token))
                .expect("auth")
        })
    });
    let mut n = 0u64;
    c.bench_function("accounts/sign_up_username/memory(cheap argon2)", |b| {
        b.iter_batched(
            || {
                n += 1;
                format!("user{n}")
            },
            |name| {
                rt.block_on(core.accounts.sign_up_username(&name, "secret1"))
                    .expect("signup")
            },
            BatchSize::SmallInput,
        )
    });
}

fn argon2_default(c: &mut Criterion) {
    let h = Argon2Hasher::new(Arc::new(OsRandom));
    let phc = h.hash_blocking("secret1");
    let mut g = c.benchmark_group("argon2id/default-params");
    g.sample_size(10);
    g.bench_function("verify", |b| b.iter(|| h.verify_blocking("secret1", &phc)));
    g.finish();
}

criterion_group!(benches, phone, codes, limits, accounts, argon2_default);
criterion_main!(benches);
