//! Decision cost per algorithm: one hot key, and 100,000 keys in rotation;
//! single-threaded and with two threads on one store.
//!
//! cargo bench --bench limits

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::HeaderMap;
use tollgate::identity::{ApiKeySources, ClientKey, KeyPart, KeySpec, RequestFacts};
use tollgate::limit::{
    Check, Concurrent, FixedWindow, Gcra, LeakyBucket, LimitId, Limiter, MemoryStore,
    SlidingCounter, SlidingLog, TokenBucket,
};

const KEYS: u32 = 100_000;
/// A rate no benchmark exhausts: decisions stay on the "allowed" path.
const PERIOD: u64 = 3_600_000_000_000;
const COUNT: u64 = 1_000_000_000;

fn algorithms() -> Vec<(&'static str, Limiter)> {
    let interval = PERIOD / COUNT;
    vec![
        ("gcra", Limiter::Gcra(Gcra::from_interval(interval, COUNT))),
        (
            "token_bucket",
            Limiter::TokenBucket(TokenBucket::new(interval, COUNT, 0)),
        ),
        (
            "leaky_bucket",
            Limiter::LeakyBucket(LeakyBucket::new(interval, COUNT, false)),
        ),
        (
            "fixed_window",
            Limiter::FixedWindow(FixedWindow::new(PERIOD, COUNT)),
        ),
        // The log keeps every request: a realistic limit, not a billion.
        (
            "sliding_window_log",
            Limiter::SlidingLog(SlidingLog::new(1_000_000, 100)),
        ),
        (
            "sliding_window_counter",
            Limiter::SlidingCounter(SlidingCounter::new(PERIOD, COUNT)),
        ),
    ]
}

fn key(n: u32) -> ClientKey<'static> {
    static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    static SOURCES: std::sync::OnceLock<ApiKeySources> = std::sync::OnceLock::new();
    let facts = RequestFacts {
        headers: HEADERS.get_or_init(HeaderMap::new),
        query: None,
        client_ip: std::net::Ipv4Addr::from(n).into(),
        ipv6_prefix: 64,
        api_key: SOURCES.get_or_init(ApiKeySources::default),
    };
    KeySpec(vec![KeyPart::Ip])
        .extract(&facts)
        .unwrap_or_else(|_| unreachable!())
}

fn check(limiter: Limiter, client: u32) -> Check<'static> {
    Check {
        limit: LimitId(7),
        limiter,
        key: key(client),
        cost: 1,
        enforced: true,
    }
}

fn single_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in algorithms() {
        let store = MemoryStore::new(1_000_000, None);
        let hot = [check(limiter, 1)];
        let mut now = 0u64;
        group.bench_function(BenchmarkId::new("hot_key", name), |b| {
            b.iter(|| {
                now += 10_000;
                black_box(store.decide_now(black_box(&hot), now))
            })
        });
        let store = MemoryStore::new(1_000_000, None);
        let checks: Vec<[Check<'static>; 1]> = (0..KEYS).map(|n| [check(limiter, n)]).collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("100k_keys", name), |b| {
            b.iter(|| {
                i = (i + 1) % checks.len();
                now += 10_000;
                black_box(store.decide_now(&checks[i], now))
            })
        });
    }
    let store = MemoryStore::new(1_000_000, None);
    let concurrent = Limiter::Concurrent(Concurrent::new(u64::MAX / 2));
    let hot = [check(concurrent, 1)];
    group.bench_function(
        BenchmarkId::new("hot_key", "concurrent (take + give back)"),
        |b| {
            b.iter(|| {
                let decided = store.decide_now(black_box(&hot), 0);
                store.release_permits_now(&decided.permits);
            })
        },
    );
    group.finish();
}

/// Two threads deciding on one store: per decision, wall time over both.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("decision_2_threads");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in algorithms() {
        for (label, keys) in [("hot_key", 1u32), ("100k_keys", KEYS)] {
            let store = MemoryStore::new(1_000_000, None);
            let checks: Vec<[Check<'static>; 1]> = (0..keys).map(|n| [check(limiter, n)]).collect();
            group.bench_function(BenchmarkId::new(label, name), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(2);
                    let started = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..2u64 {
                            let (store, checks) = (&store, &checks);
                            s.spawn(move || {
                                for i in 0..per_thread {
                                    let c = &checks[((i * 2 + t) as usize) % checks.len()];
                                    black_box(store.decide_now(c, (i + 1) * 10_000));
                                }
                            });
                        }
                    });
                    // Both threads' decisions count: time per decision.
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_thread * 2) as f64)
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = single_thread, two_threads
}
criterion_main!(benches);
