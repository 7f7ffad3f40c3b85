//! Decision cost per algorithm: one hot key, and 100,000 keys in rotation;
//! single-threaded and with two threads on one store.
//!
//! cargo bench --bench limits

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::{algorithms, check};
use futures_util::FutureExt;
use tollgate::limit::{Check, Concurrent, Limiter, Limits, MemoryStore, MonotonicClock};
use tollgate::policy::OnError;

const KEYS: u32 = 100_000;
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

/// The call the proxy makes: one hot key through the memory front (the
/// store's own clock, the answer type), not just the table.
fn front(c: &mut Criterion) {
    let mut group = c.benchmark_group("front");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in algorithms() {
        let limits = Limits::memory(MemoryStore::new(1_000_000, None), MonotonicClock::default());
        let hot = [check(limiter, 1)];
        group.bench_function(BenchmarkId::new("hot_key", name), |b| {
            b.iter(|| {
                // The memory front never waits: the future is ready at once.
                black_box(
                    limits
                        .decide(black_box(&hot), OnError::Local)
                        .now_or_never(),
                )
            })
        });
    }
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
    targets = single_thread, front, two_threads
}
criterion_main!(benches);
