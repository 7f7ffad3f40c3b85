//! The Redis store against a real `redis-server` (ARCHITECTURE.md, promise 3): random
//! traces of (time, client, cost) get the same decisions from the memory store
//! and from the Lua script, for every algorithm, with two limits per request so
//! that "a denied request spends nothing" is compared too; on one Redis, on a
//! Redis Cluster and on a master found through Redis Sentinel.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::keys::ip_key;
use common::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use proptest::prelude::*;
use tollgate::identity::ClientKey;
use tollgate::limit::breaker::BreakerSettings;
use tollgate::limit::store::redis::{Lease, RedisSettings, RedisStore, RedisTarget};
use tollgate::limit::{
    BanMark, BanPolicy, Check, Concurrent, Decision, FixedWindow, Gcra, LeakyBucket, LimitId,
    Limiter, Limits, MemoryStore, MonotonicClock, Nanos, Permit, SlidingCounter, SlidingLog,
    StoreAnswer, SyncMode, TokenBucket,
};
use tollgate::metrics::Metrics;
use tollgate::policy::OnError;

/// A realistic "now" in microseconds since 1970, a multiple of every period
/// used here so that windows line up the same in both stores.
const EPOCH_MICROS: u64 = 1_800_000_000_000_000;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    /// One Redis, a Redis Cluster (where the two limits of a request
    /// usually live in different slots: decided apart, refunded on denial),
    /// and a master found through Sentinel.
    stores: [RedisStore; 3],
    _server: RedisServer,
    _cluster: RedisCluster,
    _sentinel: RedisSentinel,
}

fn settings(target: RedisTarget) -> RedisSettings {
    RedisSettings {
        target,
        prefix: "differential".into(),
        timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        lease: Duration::from_secs(30),
    }
}

/// Shared by every case of this file.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = RedisServer::start();
        let cluster = RedisCluster::start();
        let sentinel = RedisSentinel::start();
        let single = RedisStore::new(settings(RedisTarget::Single(server.url()))).unwrap();
        let clustered = RedisStore::new(settings(RedisTarget::Cluster(cluster.urls()))).unwrap();
        let followed = RedisStore::new(settings(through_sentinel(&sentinel))).unwrap();
        Fixture {
            runtime: tokio::runtime::Runtime::new().unwrap(),
            stores: [single, clustered, followed],
            _server: server,
            _cluster: cluster,
            _sentinel: sentinel,
        }
    })
}

fn through_sentinel(sentinel: &RedisSentinel) -> RedisTarget {
    RedisTarget::Sentinel {
        master: SENTINEL_MASTER.into(),
        nodes: sentinel.sentinel_urls(),
    }
}

/// A fresh limit id per case: Redis keeps the keys of earlier cases.
fn fresh_limit() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(2, Ordering::Relaxed)
}

/// The limit under test per client IP, plus a global fixed window: a request
/// the second denies must not spend from the first, and the reverse.
fn checks(
    limiter: Limiter,
    global: Limiter,
    id: u64,
    client: u8,
    cost: u64,
    ban: Option<BanPolicy>,
) -> Vec<Check<'static>> {
    let per_ip = ip_key([192, 0, 2, client]);
    let everyone = ClientKey::global();
    vec![
        Check {
            limit: LimitId(id),
            limiter,
            key: per_ip,
            cost,
            enforced: true,
            sync: SyncMode::Exact,
            ban,
        },
        Check {
            limit: LimitId(id + 1),
            limiter: global,
            key: everyone,
            cost: 1,
            enforced: true,
            sync: SyncMode::Exact,
            ban: None,
        },
    ]
}

/// Times compared at the script's resolution: whole microseconds, rounded up.
fn micros(nanos: Nanos) -> Nanos {
    if nanos == Nanos::MAX {
        nanos
    } else {
        nanos.div_ceil(1000)
    }
}

fn comparable(d: &Decision) -> (bool, u64, u64, Nanos, Nanos, Nanos, BanMark) {
    (
        d.allowed,
        d.limit,
        d.remaining,
        micros(d.reset_after),
        micros(d.retry_after),
        micros(d.delay),
        d.ban,
    )
}

/// (microseconds to the next request, client, cost). On one Redis a gap
/// ending in 7 steps back in time instead: a clock behind the newest state.
/// A refund on the cluster restores the state as of the refund's time, which
/// is exact only while time moves forward (as Redis's `TIME` does), so the
/// cluster is driven forward only.
type Step = (u64, u8, u64);

fn steps(period_micros: u64) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec((0..period_micros / 2, 0u8..3, 1u64..=3), 1..50)
}

/// Runs the steps through the memory store and each Redis store and
/// compares every decision.
fn same_decisions(limiter: Limiter, steps: &[Step]) -> Result<(), TestCaseError> {
    same_decisions_banning(limiter, None, steps)
}

/// As [`same_decisions`], the per-IP limit with a penalty box. Time only
/// moves forward: a record the memory store forgets at its expiry and Redis
/// keeps (a pinned clock's keys get a real-time margin) would part them on a
/// step back.
fn same_decisions_banning(
    limiter: Limiter,
    ban: Option<BanPolicy>,
    steps: &[Step],
) -> Result<(), TestCaseError> {
    let fx = fixture();
    for (which, store, backwards) in [
        ("redis", &fx.stores[0], true),
        ("cluster", &fx.stores[1], false),
        ("sentinel", &fx.stores[2], true),
    ] {
        let memory = MemoryStore::default();
        let id = fresh_limit();
        let global = Limiter::FixedWindow(FixedWindow::new(40_000_000, 12));
        let mut now = EPOCH_MICROS;
        for (i, &(gap, client, cost)) in steps.iter().enumerate() {
            // Bursts at one instant as well as spread-out requests.
            if backwards && ban.is_none() && gap % 10 == 7 {
                now = (now - gap).max(EPOCH_MICROS);
            } else if gap % 3 != 0 {
                now += gap;
            }
            let checks = checks(limiter, global, id, client, cost, ban);
            let local: Vec<_> = memory
                .decide_now(&checks, now * 1000)
                .decisions
                .iter()
                .map(comparable)
                .collect();
            let shared = fx
                .runtime
                .block_on(store.decide_at(&checks, Some(now)))
                .map_err(|e| TestCaseError::fail(format!("{which}: {e}")))?;
            let shared: Vec<_> = shared.decisions.iter().map(comparable).collect();
            prop_assert_eq!(
                &local,
                &shared,
                "{}: step {} at +{}µs",
                which,
                i,
                now - EPOCH_MICROS
            );
        }
    }
    Ok(())
}

const MICRO: Nanos = 1000;

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_penalty_box_decides_the_same_in_redis(
        s in steps(20_000),
        interval in 1u64..5000,
        after in 1u32..4,
        within in 1u64..10,
        duration in 1u64..10,
        escalate in 1u32..4,
        enforced: bool,
    ) {
        let ms = 1_000 * MICRO;
        let ban = BanPolicy {
            after,
            within: within * ms,
            duration: duration * ms,
            escalate,
            max: 20 * ms,
            enforced,
        };
        same_decisions_banning(Limiter::Gcra(Gcra::from_interval(interval * MICRO, 2)), Some(ban), &s)?;
    }

    #[test]
    fn gcra_decides_the_same_in_redis(s in steps(20_000), interval in 1u64..5000, burst in 1u64..6) {
        same_decisions(Limiter::Gcra(Gcra::from_interval(interval * MICRO, burst)), &s)?;
    }

    #[test]
    fn token_bucket_decides_the_same_in_redis(s in steps(20_000), interval in 1u64..5000, capacity in 1u64..6, debt in 0u64..3) {
        same_decisions(Limiter::TokenBucket(TokenBucket::new(interval * MICRO, capacity, debt)), &s)?;
    }

    #[test]
    fn leaky_bucket_decides_the_same_in_redis(s in steps(20_000), interval in 1u64..5000, burst in 0u64..5, delay: bool) {
        same_decisions(Limiter::LeakyBucket(LeakyBucket::new(interval * MICRO, burst, delay)), &s)?;
    }

    #[test]
    fn fixed_window_decides_the_same_in_redis(s in steps(20_000), period in prop::sample::select(vec![1000u64, 2000, 5000, 10_000]), limit in 1u64..8) {
        same_decisions(Limiter::FixedWindow(FixedWindow::new(period * MICRO, limit)), &s)?;
    }

    #[test]
    fn sliding_window_log_decides_the_same_in_redis(s in steps(20_000), period in 1u64..10_000, limit in 1u64..8) {
        same_decisions(Limiter::SlidingLog(SlidingLog::new(period * MICRO, limit)), &s)?;
    }

    #[test]
    fn sliding_window_counter_decides_the_same_in_redis(s in steps(20_000), period in prop::sample::select(vec![1000u64, 2000, 5000, 10_000]), limit in 1u64..8) {
        same_decisions(Limiter::SlidingCounter(SlidingCounter::new(period * MICRO, limit)), &s)?;
    }

    /// Acquire (true) or release the oldest held permit (false).
    #[test]
    fn concurrency_limits_decide_the_same_in_redis(ops in prop::collection::vec((any::<bool>(), 1u64..3), 1..60), max in 1u64..5) {
        let fx = fixture();
        let memory = MemoryStore::default();
        let id = fresh_limit();
        let limiter = Limiter::Concurrent(Concurrent::new(max));
        let global = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 1_000));
        let mut held: Vec<(Vec<Permit>, Vec<Permit>)> = Vec::new();
        for (step, &(acquire, cost)) in ops.iter().enumerate() {
            if !acquire {
                if !held.is_empty() {
                    let (local, shared) = held.remove(0);
                    memory.release_permits_now(&local);
                    fx.runtime.block_on(fx.stores[0].release(&leases_of(shared))).unwrap();
                }
                continue;
            }
            let checks = checks(limiter, global, id, 1, cost, None);
            let local = memory.decide_now(&checks, EPOCH_MICROS * 1000);
            let shared = fx.runtime.block_on(fx.stores[0].decide_at(&checks, Some(EPOCH_MICROS))).unwrap();
            let l: Vec<_> = local.decisions.iter().map(comparable).collect();
            let s: Vec<_> = shared.decisions.iter().map(comparable).collect();
            prop_assert_eq!(l, s, "step {}", step);
            if local.decisions[0].allowed {
                held.push((local.permits, shared.permits));
            }
        }
    }
}

/// A decision whose caller gives up (a request timed out) still runs once
/// it is under way; the lease it takes is given back, not held by nobody
/// until it expires.
#[test]
fn a_lease_taken_by_a_decision_whose_caller_gave_up_is_given_back() {
    // A store of its own: its connection lives on this test's runtime.
    let store = RedisStore::new(settings(RedisTarget::Single(fixture()._server.url()))).unwrap();
    let (warm_up, abandoned) = (one_seat(fresh_limit()), one_seat(fresh_limit()));
    // One thread: the abandoned decision's task is sent to Redis before the
    // requests after it, on the store's one connection, in order.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // The connection and the script are ready: nothing waits before sending.
        store.decide_at(&warm_up, Some(EPOCH_MICROS)).await.unwrap();
        let given_up = store.decide_at(&abandoned, Some(EPOCH_MICROS));
        // Polled once (its task spawned), then dropped: its caller gave up.
        let answered = futures_util::FutureExt::now_or_never(given_up);
        assert!(answered.is_none(), "Redis answered within one poll");
        tokio::task::yield_now().await;
        // The lease (30 s) would refuse everyone until it expired.
        admitted_within(&store, &abandoned, Duration::from_secs(5))
            .await
            .expect("the lease of the abandoned decision is still held");
    });
}

/// A decision that fails (Redis stopped answering) may still have taken its
/// lease: the script runs once Redis wakes. The store gives it back, so
/// the limit does not refuse everyone until the lease expires.
#[test]
fn a_lease_taken_by_a_decision_that_failed_is_given_back() {
    // A server of its own: it is frozen for a while.
    let server = RedisServer::start();
    let mut frozen = settings(RedisTarget::Single(server.url()));
    frozen.timeout = Duration::from_millis(200);
    let store = RedisStore::new(frozen).unwrap();
    let check = one_seat(fresh_limit());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // The connection and the script are ready; the warm-up's lease goes back.
        let warm_up = store.decide_at(&check, Some(EPOCH_MICROS)).await.unwrap();
        store.release(&leases_of(warm_up.permits)).await.unwrap();
        server.pause();
        // Sent, then unanswered: the decision fails, its script still queued.
        let failed = store.decide_at(&check, Some(EPOCH_MICROS)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.resume();
        assert!(failed.is_err(), "a frozen Redis answered: {failed:?}");
        // The lease (30 s) would refuse everyone until it expired.
        admitted_within(&store, &check, Duration::from_secs(8))
            .await
            .expect("the lease of the failed decision is still held");
    });
}

/// A concurrency limit of one, for one client.
fn one_seat(limit: u64) -> Vec<Check<'static>> {
    vec![Check {
        limit: LimitId(limit),
        limiter: Limiter::Concurrent(Concurrent::new(1)),
        key: ip_key([192, 0, 2, 9]),
        cost: 1,
        enforced: true,
        sync: SyncMode::Exact,
        ban: None,
    }]
}

/// Decides `checks` until they are admitted (`Some`) or `within` has passed.
async fn admitted_within(store: &RedisStore, checks: &[Check<'_>], within: Duration) -> Option<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(answer) = store.decide_at(checks, Some(EPOCH_MICROS)).await {
            if answer.decisions[0].allowed {
                return Some(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn leases_of(permits: Vec<Permit>) -> Vec<Lease> {
    permits
        .into_iter()
        .filter_map(|p| match p {
            Permit::Lease(l) => Some(l),
            Permit::Local { .. } => None,
        })
        .collect()
}

/// On Redis's own clock, every key written lives as long as its state
/// matters — the decision's `reset_after` — and not much longer.
#[test]
fn keys_live_exactly_as_long_as_their_state_matters() {
    let fx = fixture();
    let server = &fx._server;
    for (n, limiter) in [
        Limiter::Gcra(Gcra::from_interval(100_000_000, 10)),
        Limiter::TokenBucket(TokenBucket::new(100_000_000, 10, 2)),
        Limiter::LeakyBucket(LeakyBucket::new(100_000_000, 5, true)),
        Limiter::FixedWindow(FixedWindow::new(60_000_000_000, 10)),
        Limiter::SlidingLog(SlidingLog::new(60_000_000_000, 10)),
        Limiter::SlidingCounter(SlidingCounter::new(60_000_000_000, 10)),
    ]
    .into_iter()
    .enumerate()
    {
        let id = fresh_limit();
        let global = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 1000));
        let mut last = None;
        for _ in 0..3 {
            let decided = fx
                .runtime
                .block_on(fx.stores[0].decide_shared(&checks(limiter, global, id, 9, 1, None)))
                .unwrap();
            last = Some(decided.decisions[0]);
        }
        let reset_ms = last.unwrap().reset_after.div_ceil(1_000_000) as i64;
        let limit_hex = format!("{id:016x}");
        let ttl = server
            .keys_and_ttls()
            .into_iter()
            .find(|(key, _)| key.ends_with(&limit_hex))
            .map(|(_, ttl)| ttl)
            .unwrap_or_else(|| panic!("limiter {n}: no key"));
        assert!(
            ttl > reset_ms - 1000 && ttl <= reset_ms + 1,
            "limiter {n}: ttl {ttl} ms, state matters for {reset_ms} ms"
        );
    }
}

/// `Limits` on a Redis of its own, whose breaker opens at the first failure;
/// returns them with their metrics and a request's checks.
async fn limits_with_an_open_breaker(
    server: &mut RedisServer,
) -> (Limits, Metrics, Vec<Check<'static>>) {
    let metrics = Metrics::new();
    let store = RedisStore::new(settings(RedisTarget::Single(server.url()))).unwrap();
    let breaker = BreakerSettings {
        failures: 1,
        cooldown: Duration::from_millis(50),
    };
    let limits = Limits::redis(
        store,
        breaker,
        MemoryStore::default(),
        MonotonicClock::default(),
        metrics.store.clone(),
    );
    let limiter = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 1000));
    let checks = checks(limiter, limiter, fresh_limit(), 1, 1, None);
    let answer = limits.decide(&checks, OnError::Allow).await;
    assert!(matches!(answer, StoreAnswer::Decided(_)), "{answer:?}");
    server.kill();
    let answer = limits.decide(&checks, OnError::Allow).await;
    assert!(matches!(answer, StoreAnswer::Degraded(..)), "{answer:?}");
    assert_eq!(metrics.store.breaker_state.get(), 1, "the breaker is open");
    (limits, metrics, checks)
}

#[tokio::test]
async fn the_background_probe_closes_the_breaker_once_redis_answers() {
    let mut server = RedisServer::start();
    let (limits, metrics, checks) = limits_with_an_open_breaker(&mut server).await;
    server.restart();
    // No request meanwhile: only the probe can find Redis back.
    tokio::select! {
        _ = limits.keep_probing() => panic!("the probe stopped"),
        _ = common::eventually(Duration::from_secs(10), "the breaker closes", || async {
            metrics.store.breaker_state.get() == 0
        }) => {}
    }
    let answer = limits.decide(&checks, OnError::Allow).await;
    assert!(matches!(answer, StoreAnswer::Decided(_)), "{answer:?}");
}

#[tokio::test]
async fn background_probes_of_a_dead_redis_keep_the_breaker_open_and_count_as_failures() {
    let mut server = RedisServer::start();
    let (limits, metrics, _) = limits_with_an_open_breaker(&mut server).await;
    let failed = || metrics.store.redis_errors.get() + metrics.store.redis_timeouts.get();
    let before = failed();
    tokio::select! {
        _ = limits.keep_probing() => panic!("the probe stopped"),
        _ = common::eventually(Duration::from_secs(10), "two failed probes", || async {
            failed() >= before + 2
        }) => {}
    }
    assert_ne!(metrics.store.breaker_state.get(), 0, "still not closed");
    assert!(
        metrics.store.breaker_opened.get() >= 2,
        "each failed probe reopens it"
    );
}

/// A limit of 3 per hour on a fresh id: whether four requests get exactly
/// three admissions, all decided by Redis.
async fn enforced_exactly(store: &RedisStore) -> bool {
    let limiter = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 3));
    let checks = checks(limiter, limiter, fresh_limit(), 1, 1, None);
    let mut admitted = Vec::new();
    for _ in 0..4 {
        match store.decide_shared(&checks).await {
            Ok(decided) => admitted.push(decided.decisions[0].allowed),
            Err(_) => return false,
        }
    }
    admitted == [true, true, true, false]
}

#[tokio::test]
async fn the_store_follows_the_master_the_sentinels_promote() {
    let mut sentinel = RedisSentinel::start();
    let store = RedisStore::new(RedisSettings {
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(500),
        ..settings(through_sentinel(&sentinel))
    })
    .unwrap();
    assert!(
        enforced_exactly(&store).await,
        "decided on the first master"
    );
    let old = sentinel.kill_master();
    // Down for a second, then an election: the store asks the sentinels
    // again once its connection breaks, and until they name a new master.
    common::eventually(
        Duration::from_secs(30),
        "limits enforced on a new master",
        || enforced_exactly(&store),
    )
    .await;
    let new = sentinel.master();
    assert_ne!(new.port, old, "the sentinels promoted the replica");
    assert!(
        !new.keys_and_ttls().is_empty(),
        "the decisions are in the new master"
    );
}

/// A master demoted under the store's open connection refuses the next
/// write with READONLY: the store asks the sentinels again at once, instead
/// of reconnecting to the same node.
#[tokio::test]
async fn a_read_only_master_sends_the_store_back_to_the_sentinels() {
    let sentinel = RedisSentinel::start();
    let store = RedisStore::new(settings(through_sentinel(&sentinel))).unwrap();
    assert!(
        enforced_exactly(&store).await,
        "decided on the first master"
    );
    let new = sentinel.demote_master_keeping_its_clients();
    let limiter = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 3));
    let refused = store
        .decide_shared(&checks(limiter, limiter, fresh_limit(), 1, 1, None))
        .await
        .expect_err("the demoted master took a write");
    let read_only = ::redis::ErrorKind::Server(::redis::ServerErrorKind::ReadOnly);
    assert_eq!(refused.kind(), read_only, "{refused}");
    assert!(enforced_exactly(&store).await, "decided on the new master");
    let promoted = sentinel.servers.iter().find(|s| s.port == new).unwrap();
    assert!(
        !promoted.keys_and_ttls().is_empty(),
        "the decisions are there"
    );
}

/// A frozen master (SIGSTOP: connections open, no answers) breaks nothing a
/// client could notice, so only a probe that times out gives up on it; the
/// sentinels are then asked until they name the replica they promoted.
#[tokio::test]
async fn the_breaker_probe_leaves_a_frozen_master_for_the_one_the_sentinels_promote() {
    let sentinel = RedisSentinel::start();
    let store = RedisStore::new(RedisSettings {
        timeout: Duration::from_millis(200),
        connect_timeout: Duration::from_millis(200),
        ..settings(through_sentinel(&sentinel))
    })
    .unwrap();
    let metrics = Metrics::new();
    let breaker = BreakerSettings {
        failures: 1,
        cooldown: Duration::from_millis(50),
    };
    let limits = Limits::redis(
        store,
        breaker,
        MemoryStore::default(),
        MonotonicClock::default(),
        metrics.store.clone(),
    );
    let limiter = Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 1000));
    let checks = checks(limiter, limiter, fresh_limit(), 1, 1, None);
    let answer = limits.decide(&checks, OnError::Allow).await;
    assert!(matches!(answer, StoreAnswer::Decided(_)), "{answer:?}");
    let frozen = sentinel.master();
    frozen.pause();
    tokio::select! {
        _ = limits.keep_probing() => panic!("the probe stopped"),
        _ = common::eventually(Duration::from_secs(30), "decided by the promoted replica", || async {
            matches!(limits.decide(&checks, OnError::Allow).await, StoreAnswer::Decided(_))
        }) => {}
    }
    assert_ne!(
        sentinel.master().port,
        frozen.port,
        "the replica was promoted"
    );
    frozen.resume();
}

/// Set for the child process of the test below.
const HOLD_REDIS: &str = "TOLLGATE_TEST_HOLD_REDIS";

/// Not a test of its own: the test process that the next test kills.
#[test]
#[ignore = "the child of a_harness_redis_server_dies_with_its_killed_test_process"]
fn holds_a_redis_server_until_killed() {
    if std::env::var_os(HOLD_REDIS).is_none() {
        return;
    }
    // Held like the shared fixture: never dropped.
    static HELD: OnceLock<RedisServer> = OnceLock::new();
    let server = HELD.get_or_init(RedisServer::start);
    let pid = server.pid().unwrap();
    println!("redis-server pid {pid} port {}", server.port);
    loop {
        std::thread::park();
    }
}

#[test]
fn a_harness_redis_server_dies_with_its_killed_test_process() {
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["holds_a_redis_server_until_killed", "--exact", "--ignored"])
        .arg("--nocapture")
        .env(HOLD_REDIS, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = common::ChildGuard(child);
    let line = BufReader::new(child.0.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("redis-server pid "))
        .expect("the child test process started no redis-server");
    let words: Vec<&str> = line.split(' ').collect();
    let pid: u32 = words[2].parse().unwrap();
    let addr = ([127, 0, 0, 1], words[4].parse::<u16>().unwrap()).into();
    assert!(alive(pid) && common::redis::pong(addr), "{line}");
    // SIGKILL: no destructor, no exit handler runs in the child.
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) || common::redis::pong(addr) {
        assert!(
            Instant::now() < deadline,
            "redis-server {pid} outlived its test process"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // The state follows the command name in parentheses.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}
