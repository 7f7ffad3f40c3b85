//! The Redis store's cost per decision, next to the memory store's: one
//! decision at a time (the latency a request adds) and 64 in flight over the
//! one multiplexed connection (the throughput one gateway gets).
//!
//! Starts its own `redis-server` on a free loopback port.
//!
//! cargo bench --bench redis_store

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

mod common;
use common::{algorithms, check};
use futures_util::future::join_all;
use tollgate::limit::store::redis::{RedisSettings, RedisStore, RedisTarget};
use tollgate::limit::{Check, Limiter, MemoryStore};

const IN_FLIGHT: u64 = 64;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Server, String) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"));
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("redis-server is not installed ({e}): `apt-get install redis-server`")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    (Server(child), format!("redis://127.0.0.1:{port}"))
}

fn checks(limiter: Limiter, clients: u32) -> Vec<[Check<'static>; 1]> {
    (0..clients).map(|n| [check(limiter, n)]).collect()
}

fn redis_vs_memory(c: &mut Criterion) {
    let (_server, url) = start_redis();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("no runtime: {e}"));
    let store = runtime.block_on(async {
        RedisStore::new(RedisSettings {
            target: RedisTarget::Single(url),
            prefix: "bench".into(),
            timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(30),
        })
        .unwrap_or_else(|e| panic!("{e}"))
    });
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    for (name, limiter) in algorithms() {
        let checks = checks(limiter, 10_000);
        let memory = MemoryStore::new(1_000_000, None);
        let mut i = 0usize;
        let mut now = 0u64;
        group.bench_function(BenchmarkId::new("memory", name), |b| {
            b.iter(|| {
                i = (i + 1) % checks.len();
                now += 10_000;
                black_box(memory.decide_now(&checks[i], now))
            })
        });
        group.bench_function(BenchmarkId::new("redis_one_at_a_time", name), |b| {
            b.iter(|| {
                i = (i + 1) % checks.len();
                runtime.block_on(store.decide_shared(&checks[i]))
            })
        });
        group.bench_function(
            BenchmarkId::new(format!("redis_{IN_FLIGHT}_in_flight"), name),
            |b| {
                b.iter_custom(|iters| {
                    let per_task = iters.div_ceil(IN_FLIGHT);
                    let started = Instant::now();
                    runtime.block_on(join_all((0..IN_FLIGHT).map(|t| {
                        let (store, checks) = (&store, &checks);
                        async move {
                            for n in 0..per_task {
                                let c = &checks[((n * IN_FLIGHT + t) as usize) % checks.len()];
                                black_box(store.decide_shared(c).await.ok());
                            }
                        }
                    })));
                    started
                        .elapsed()
                        .mul_f64(iters as f64 / (per_task * IN_FLIGHT) as f64)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, redis_vs_memory);
criterion_main!(benches);
