//! Several gateways sharing one Redis (or one Redis Cluster, or a master found
//! through Redis Sentinel) hold one limit together (ARCHITECTURE.md, promise 1),
//! and a Redis that dies or hangs is a decision, not an accident (promise 8).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::redis::{RedisCluster, RedisSentinel, RedisServer, SENTINEL_MASTER};
use common::{
    client, client_from, eventually, fire, fire_and_hold, gateway_config, get_json, statuses,
    Gateway, Upstream, RATE_ALGORITHMS,
};

const REQUESTS: usize = 1_000;

/// A generous timeout: under a thousand simultaneous requests on two cores a
/// decision may wait; a failure would show as a 503 and fail the count.
fn shared_config(redis: &str, limit: &str, path: &str) -> String {
    gateway_config(
        "api",
        &format!(
            "
store:
  backend: redis
  redis: {{ {redis}, timeout: 5s }}
  on_error: deny
rules:
  - name: api
    match: {{ path: \"{path}\" }}
    upstream: api
    limits: [{limit}]
"
        ),
    )
}

async fn gateways(config: &str, upstream: &Upstream) -> Vec<Gateway> {
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(Gateway::start(config, upstream.addr).await);
    }
    out
}

/// URLs as a YAML flow sequence.
fn yaml_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn assert_every_key_expires(server: &RedisServer) {
    let keys = server.keys_and_ttls();
    assert!(!keys.is_empty(), "the run left no state at all");
    let forever: Vec<_> = keys.iter().filter(|(_, ttl)| *ttl < 0).collect();
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
}

#[tokio::test]
async fn three_gateways_sharing_redis_admit_exactly_the_quota() {
    common::enough_file_descriptors();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    for algorithm in RATE_ALGORITHMS {
        let limit = format!("{{ name: l, key: global, rate: 100/hour, algorithm: {algorithm} }}");
        let url = format!(
            "url: \"{}\", prefix: \"{}\"",
            redis.url(),
            algorithm.replace([',', ':', ' '], "")
        );
        let gws = gateways(&shared_config(&url, &limit, "/**"), &upstream).await;
        assert_eq!(fire(&gws, REQUESTS, "/x").await, (100, 900), "{algorithm}");
    }
    assert_every_key_expires(&redis);
}

#[tokio::test]
async fn three_gateways_on_a_redis_cluster_admit_exactly_the_quota() {
    common::enough_file_descriptors();
    let cluster = RedisCluster::start();
    let upstream = Upstream::start().await;
    let urls = yaml_list(&cluster.urls());
    for algorithm in RATE_ALGORITHMS {
        // Two limits with different keys: their slots differ, so the request
        // is decided slot by slot, and the per-IP spend of the 900 requests
        // the global limit denies is refunded.
        let limit = format!(
            "{{ name: l, key: global, rate: 100/hour, algorithm: {algorithm} }}, {{ name: per-ip, key: ip, rate: 5000/hour, algorithm: fixed_window }}"
        );
        let prefix = format!("c{}", algorithm.replace([',', ':', ' '], ""));
        let url = format!("urls: {urls}, prefix: \"{prefix}\"");
        let gws = gateways(&shared_config(&url, &limit, "/**"), &upstream).await;
        assert_eq!(fire(&gws, REQUESTS, "/x").await, (100, 900), "{algorithm}");
        let per_ip: Vec<i64> = cluster
            .nodes
            .iter()
            .flat_map(|node| node.fixed_window_counts(&prefix))
            .collect();
        assert!(
            per_ip.contains(&100),
            "{algorithm}: per-IP counts {per_ip:?}"
        );
        assert!(
            per_ip.iter().all(|&c| c == 100),
            "{algorithm}: per-IP counts {per_ip:?}"
        );
    }
    let mut keys = 0;
    for node in &cluster.nodes {
        let found = node.keys_and_ttls();
        keys += found.len();
        let forever: Vec<_> = found.into_iter().filter(|(_, ttl)| *ttl < 0).collect();
        assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
    }
    assert!(keys > 0, "the run left no state at all");
}

#[tokio::test]
async fn three_gateways_sharing_redis_through_sentinel_admit_exactly_the_quota() {
    common::enough_file_descriptors();
    let sentinel = RedisSentinel::start();
    let upstream = Upstream::start().await;
    let nodes = yaml_list(&sentinel.sentinel_urls());
    for algorithm in RATE_ALGORITHMS {
        let limit = format!("{{ name: l, key: global, rate: 100/hour, algorithm: {algorithm} }}");
        let redis = format!(
            "sentinel: {{ master: {SENTINEL_MASTER}, nodes: {nodes} }}, prefix: \"s{}\"",
            algorithm.replace([',', ':', ' '], "")
        );
        let gws = gateways(&shared_config(&redis, &limit, "/**"), &upstream).await;
        assert_eq!(fire(&gws, REQUESTS, "/x").await, (100, 900), "{algorithm}");
    }
    assert_every_key_expires(sentinel.master());
}

/// Rules on a master found through Sentinel: a light limit for a steady
/// load (on_error: allow), and a tight one per tenant (on_error: deny, so
/// only Redis can answer 429).
const THROUGH_SENTINEL: &str = "
store:
  backend: redis
  redis:
    sentinel: { master: MASTER, nodes: NODES }
    timeout: 250ms
    connect_timeout: 250ms
    breaker: { failures: 3, cooldown: 100ms }
  on_error: allow
rules:
  - name: load
    match: { path: /load }
    upstream: api
    limits: [{ name: l, key: ip, rate: 1000000/hour }]
  - name: tenant
    match: { path: /tenant }
    upstream: api
    on_error: deny
    limits: [{ name: l, key: { header: x-tenant }, rate: 5/hour }]
";

/// Seven requests of `tenant` through the gateways in turn.
async fn tenant_statuses(c: &reqwest::Client, gws: &[Gateway], tenant: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for i in 0..7 {
        let sent = c
            .get(gws[i % gws.len()].url("/tenant"))
            .header("x-tenant", tenant)
            .send()
            .await;
        out.push(sent.map_or(0, |r| r.status().as_u16()));
    }
    out
}

/// The master crashes (SIGKILL) in the middle of a steady load through three
/// gateways. Meanwhile `on_error` decides (allow: every load request passes);
/// once the sentinels have promoted the replica the gateways follow it: a
/// new tenant's 5/hour is enforced exactly across them, which only Redis can
/// do (a failing Redis answers 503 here), and every gateway is ready again.
#[tokio::test]
async fn gateways_follow_the_replica_sentinel_promotes_when_the_master_dies_under_load() {
    let mut sentinel = RedisSentinel::start();
    let upstream = Upstream::start().await;
    let config = gateway_config(
        "api",
        &THROUGH_SENTINEL
            .replace("MASTER", SENTINEL_MASTER)
            .replace("NODES", &yaml_list(&sentinel.sentinel_urls())),
    );
    let gws = gateways(&config, &upstream).await;
    let c = client();
    assert_eq!(
        tenant_statuses(&c, &gws, "before").await,
        [200, 200, 200, 200, 200, 429, 429]
    );

    // 400 requests, one every 10 ms; the master dies after the 100th.
    let answered = AtomicUsize::new(0);
    let load = async {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let mut statuses = Vec::new();
        for i in 0..400 {
            tick.tick().await;
            let sent = c.get(gws[i % 3].url("/load")).send().await;
            statuses.push(sent.map_or(0, |r| r.status().as_u16()));
            answered.fetch_add(1, Ordering::Relaxed);
        }
        statuses
    };
    let failover = async {
        eventually(Duration::from_secs(10), "the load under way", || async {
            answered.load(Ordering::Relaxed) >= 100
        })
        .await;
        let old = sentinel.kill_master();
        let killed = Instant::now();
        let mut tenant = 0;
        eventually(
            Duration::from_secs(30),
            "limits decided by the new master",
            || {
                tenant += 1;
                let (c, gws) = (&c, &gws);
                async move {
                    tenant_statuses(c, gws, &format!("after-{tenant}")).await
                        == [200, 200, 200, 200, 200, 429, 429]
                }
            },
        )
        .await;
        eprintln!(
            "limits decided by Redis again {:?} after the master died",
            killed.elapsed()
        );
        old
    };
    let (statuses, old) = tokio::join!(load, failover);

    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(passed, statuses.len(), "on_error: allow: {statuses:?}");
    assert_ne!(sentinel.master().port, old, "the replica was promoted");
    for gw in &gws {
        eventually(Duration::from_secs(10), "the store healthy", || async {
            let ready = get_json(&c, &gw.admin_url("/readyz")).await;
            ready["status"] == "ready" && ready["store"]["healthy"] == true
        })
        .await;
    }
    let degraded = "tollgate_degraded_decisions_total{on_error=\"allow\",rule=\"load\"}";
    let during: f64 = futures_util::future::join_all(gws.iter().map(|gw| gw.metrics()))
        .await
        .iter()
        .map(|m| metric(m, degraded))
        .sum();
    eprintln!("{during} load requests decided by on_error during the failover");
}

/// `tollgate run` starts while Redis is down (limiting locally meanwhile)
/// and shares its limits through Redis once it is up.
#[tokio::test]
async fn the_binary_starts_while_redis_is_down_and_uses_it_once_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let config = failover(&redis.url());
    std::fs::write(&path, common::render(&config, addr, admin, upstream.addr)).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "error")
        .spawn()
        .unwrap();
    let _process = common::ChildGuard(child);
    common::wait_listening(addr).await;
    common::wait_listening(admin).await;
    let c = client_from("127.0.0.5");
    let url = format!("http://{addr}/busy");
    assert_eq!(statuses(&c, &url, 3).await, [200; 3]);
    let ready = get_json(&c, &format!("http://{admin}/readyz")).await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    redis.restart();
    eventually(Duration::from_secs(5), "decisions in Redis", || async {
        let _ = c.get(&url).send().await;
        !redis.keys_and_ttls().is_empty()
    })
    .await;
}

#[tokio::test]
async fn three_gateways_share_a_concurrency_limit_through_leases() {
    common::enough_file_descriptors();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let config = shared_config(
        &format!("url: \"{}\"", redis.url()),
        "{ name: l, key: global, concurrent: 100 }",
        "/hold",
    );
    let gws = gateways(&config, &upstream).await;
    let answers = fire_and_hold(&upstream, REQUESTS, |i| gws[i % 3].url("/hold")).await;
    assert_eq!(upstream.count(), 100);
    assert_eq!(answers.iter().filter(|s| **s == 200).count(), 100);
    assert_eq!(answers.iter().filter(|s| **s == 429).count(), 900);
    // Every lease is given back: the set empties and is deleted (what the
    // gateways publish of their top keys lives beside it, and expires).
    eventually(Duration::from_secs(10), "every lease released", || async {
        redis
            .keys_and_ttls()
            .iter()
            .all(|(key, _)| key.contains(":top:"))
    })
    .await;
}

/// Rules with each `on_error`, on the Redis at `redis_url` behind a breaker.
fn failover(redis_url: &str) -> String {
    gateway_config("api", &FAILOVER.replace("REDIS", redis_url))
}

const FAILOVER: &str = "
store:
  backend: redis
  redis: { url: \"REDIS\", timeout: 25ms, breaker: { failures: 3, cooldown: 200ms } }
  on_error: local
rules:
  - name: open
    match: { path: /allow }
    upstream: api
    on_error: allow
    limits: [{ name: l, key: ip, rate: 3/hour }]
  - name: closed
    match: { path: /deny }
    upstream: api
    on_error: deny
    limits: [{ name: l, key: ip, rate: 3/hour }]
  - name: local
    match: { path: /local }
    upstream: api
    limits: [{ name: l, key: ip, rate: 3/hour }]
  - name: busy
    match: { path: /busy }
    upstream: api
    on_error: allow
    limits: [{ name: l, key: ip, rate: 1000000/hour }]
";

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_dead_redis_gets_each_on_error_policy_and_opens_the_breaker() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&failover(&redis.url()), upstream.addr).await;
    let c = client_from("127.0.0.2");
    assert_eq!(
        statuses(&c, &gw.url("/local"), 4).await,
        [200, 200, 200, 429]
    );

    redis.kill();
    // allow: unlimited meanwhile.
    assert_eq!(statuses(&c, &gw.url("/allow"), 6).await, [200; 6]);
    // deny: 503 with a JSON body naming the rule.
    let refused = c.get(gw.url("/deny")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "limiter_unavailable");
    assert_eq!(body["rule"], "closed");
    // local: this gateway's own limit, which has not seen the shared spend.
    assert_eq!(
        statuses(&c, &gw.url("/local"), 4).await,
        [200, 200, 200, 429]
    );

    let metrics = gw.metrics().await;
    assert!(
        metric(&metrics, "tollgate_redis_breaker_opened_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "tollgate_redis_breaker_state"), 1.0);
    assert_eq!(
        metric(
            &metrics,
            "tollgate_degraded_decisions_total{on_error=\"allow\",rule=\"open\"}"
        ),
        6.0
    );
    assert_eq!(
        metric(
            &metrics,
            "tollgate_degraded_decisions_total{on_error=\"local\",rule=\"local\"}"
        ),
        4.0
    );
    let ready = c.get(gw.admin_url("/readyz")).send().await.unwrap();
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["store"]["healthy"], false);
}

#[tokio::test]
async fn redis_back_means_shared_limits_again_within_a_second() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&failover(&redis.url()), upstream.addr).await;
    let c = client_from("127.0.0.3");
    assert_eq!(statuses(&c, &gw.url("/local"), 1).await, [200]);
    redis.kill();
    statuses(&c, &gw.url("/local"), 5).await;
    redis.restart();
    // Redis restarted empty: a request decided there leaves its key (beside
    // the breaker's probe, a write that expires at once).
    let back = Instant::now();
    eventually(Duration::from_secs(1), "limits shared again", || async {
        let _ = c.get(gw.url("/local")).send().await;
        redis
            .keys_and_ttls()
            .iter()
            .filter(|(key, _)| !key.contains(":probe:"))
            .count()
            == 1
    })
    .await;
    eprintln!(
        "shared limits again {:?} after Redis answered",
        back.elapsed()
    );
}

/// A Redis that answers PING but refuses every write (out of memory with
/// noeviction, a read-only replica) decides nothing: the breaker stays open
/// and `/readyz` says the store is down.
#[tokio::test]
async fn a_redis_that_refuses_every_write_is_not_healthy() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&failover(&redis.url()), upstream.addr).await;
    let c = client_from("127.0.0.5");
    assert_eq!(statuses(&c, &gw.url("/local"), 1).await, [200]);
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    for (setting, value) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let _: () = ::redis::cmd("CONFIG")
            .arg("SET")
            .arg(setting)
            .arg(value)
            .query(&mut connection)
            .unwrap();
    }
    statuses(&c, &gw.url("/local"), 5).await;
    // Past several cool-downs: the background probe must not close it.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let ready = get_json(&c, &gw.admin_url("/readyz")).await;
    assert_eq!(ready["store"]["healthy"], false, "{ready}");
    assert_ne!(ready["store"]["breaker"], "closed", "{ready}");
}

/// The breaker is probed in the background: once Redis is back, shared limits
/// return without a request having to probe (and be decided degraded first).
#[tokio::test]
async fn an_idle_gateway_closes_the_breaker_once_redis_is_back() {
    let mut redis = RedisServer::start();
    let upstream = Upstream::start().await;
    // A generous timeout: what is tested is the breaker, not a slow machine.
    let config = failover(&redis.url()).replace("timeout: 25ms", "timeout: 500ms");
    let gw = Gateway::start(&config, upstream.addr).await;
    let c = client_from("127.0.0.6");
    let url = gw.url("/busy");
    assert_eq!(statuses(&c, &url, 1).await, [200]);
    redis.kill();
    eventually(Duration::from_secs(5), "the breaker opens", || async {
        let _ = c.get(&url).send().await;
        metric(&gw.metrics().await, "tollgate_redis_breaker_state") == 1.0
    })
    .await;
    redis.restart();
    // Not a wait for readiness: the gateway is left idle, so nothing but the
    // background probe can find Redis back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let degraded = "tollgate_degraded_decisions_total{on_error=\"allow\",rule=\"busy\"}";
    let before = metric(&gw.metrics().await, degraded);
    for _ in 0..8 {
        assert_eq!(statuses(&c, &url, 1).await, [200]);
    }
    let metrics = gw.metrics().await;
    assert_eq!(metric(&metrics, degraded), before, "{metrics}");
    assert_eq!(metric(&metrics, "tollgate_redis_breaker_state"), 0.0);
}

/// A hung Redis (SIGSTOP: connections open, no answers) is the costly case:
/// every call waits for the timeout until the breaker opens. Prints the
/// latencies (speed is measured, not asserted) and checks what bounds them:
/// with the breaker open, only one probe per cool-down waits for Redis.
#[tokio::test]
async fn a_hung_redis_costs_one_timeout_per_cooldown_once_the_breaker_opens() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&failover(&redis.url()), upstream.addr).await;
    let c = client_from("127.0.0.4");
    let baseline = latencies(&c, &gw.url("/busy"), 100).await;
    redis.pause();
    let started = Instant::now();
    let hung = latencies(&c, &gw.url("/busy"), 300).await;
    let elapsed = started.elapsed();
    redis.resume();
    let metrics = gw.metrics().await;
    let timeouts = metric(&metrics, "tollgate_redis_errors_total{reason=\"timeout\"}");
    // 3 failures open it; then at most one probe per 200 ms cool-down.
    let bound = 3.0 + (elapsed.as_millis() as f64 / 200.0).ceil() + 1.0;
    assert!(
        timeouts >= 3.0 && timeouts <= bound,
        "{timeouts} timeouts in {elapsed:?} (bound {bound})"
    );
    eprintln!(
        "p99 with Redis up {:?}, hung {:?}: added {:?} (timeout 25ms)",
        p99(&baseline),
        p99(&hung),
        p99(&hung).saturating_sub(p99(&baseline))
    );
}

async fn latencies(c: &reqwest::Client, url: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let status = c.get(url).send().await.unwrap().status();
        assert_eq!(status, 200);
        out.push(t.elapsed());
    }
    out
}

fn p99(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// `sync: batched`: every admitted request was reserved in Redis first, so
/// three gateways never admit more than the quota; what they may hold back is
/// at most one batch each.
#[tokio::test]
async fn batched_gateways_never_admit_more_than_the_quota() {
    common::enough_file_descriptors();
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let config = shared_config(
        &format!("url: \"{}\"", redis.url()),
        "{ name: l, key: global, rate: 100/hour, sync: batched, batch: 10 }",
        "/**",
    );
    let gws = gateways(&config, &upstream).await;
    let (admitted, _) = fire(&gws, REQUESTS, "/x").await;
    assert!(
        (100 - 3 * 10..=100).contains(&admitted),
        "{admitted} admitted of 100"
    );
    assert_every_key_expires(&redis);
}

/// A gateway holds at most one batch of a key: what it reserved but did not
/// use is unavailable to the others (until it lapses with the window), and
/// never more than that.
#[tokio::test]
async fn a_gateway_holds_back_at_most_one_batch() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let config = shared_config(
        &format!("url: \"{}\"", redis.url()),
        "{ name: l, key: global, rate: 20/hour, sync: batched, batch: 10 }",
        "/**",
    );
    let first = Gateway::start(&config, upstream.addr).await;
    let second = Gateway::start(&config, upstream.addr).await;
    let c = client();
    // One request through the first reserves 1 + 10 of the 20.
    assert_eq!(statuses(&c, &first.url("/x"), 1).await, [200]);
    let ok = |s: Vec<u16>| s.iter().filter(|s| **s == 200).count();
    // The second gets the other 9 (reserving while a batch fits, then exactly).
    assert_eq!(ok(statuses(&c, &second.url("/x"), 15).await), 9);
    // The first still has its 10.
    assert_eq!(ok(statuses(&c, &first.url("/x"), 15).await), 10);
}
