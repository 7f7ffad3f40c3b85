//! `tollgate replay` against live gateways: 100,000 requests from 300
//! clients of 30 tenants go through a gateway with config A and its access
//! log is replayed. Replayed with A, it reproduces every decision the
//! gateway made (per rule, per limit, per key); replayed with B (every limit
//! halved), it reports the extra refusals, and they are the ones a live
//! gateway with B makes of the same requests sent in the same order.
//!
//! The limits count per 30 days, so nothing refills while the test runs,
//! however slow the machine, and the live B gateway, which sees the requests
//! later than A did, decides as if at A's times. (Per day they did not: a
//! tenant's 1,600 a day refill one every 54 s, and a run slowed to minutes
//! by a busy machine refused otherwise than a quick one.) Each tenant's clients send on one connection in a fixed order,
//! so every key sees its requests in the same order on every run.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::OnceCell;
use tollgate::replay::{self, Counts, Options, Report, Window};

use common::{eventually, forgetful_upstream, Gateway};

const REQUESTS: usize = 100_000;
const CLIENTS: u32 = 300;
const TENANTS: u32 = 30;
/// Connections sending at once; tenant `t` sends on connection `t % SENDERS`.
const SENDERS: u32 = 15;

/// A config with these rates per 30 days: the API's limit per client IP and
/// per tenant, and the batch path's per-IP limit (which an internal header
/// skips).
fn config(per_ip: u32, per_tenant: u32, batch: u32) -> String {
    format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
  trusted_proxies: [\"127.0.0.1/32\"]
access_log: {{ format: json, path: access.log, buffer: 200000 }}
upstreams: {{ api: {{ servers: [\"{{upstream}}\"] }} }}
rules:
  - name: batch
    match: {{ path: \"/batch/**\" }}
    upstream: api
    exempt: [ {{ header: {{ name: x-internal, value: \"batch-*\" }} }} ]
    limits: [ {{ name: per-ip, key: ip, rate: {batch}/30d }} ]
  - name: api
    match: {{ path: \"/**\" }}
    upstream: api
    limits:
      - {{ name: per-ip, key: ip, rate: {per_ip}/30d }}
      - {{ name: per-tenant, key: {{ header: x-tenant }}, rate: {per_tenant}/30d, missing: skip }}
"
    )
}

fn config_a() -> String {
    config(200, 1_600, 20)
}

fn config_b() -> String {
    config(100, 800, 10)
}

/// One request of the traffic.
#[derive(Debug, Clone, Copy)]
struct Sent {
    client: u32,
    /// Sends `x-tenant` (else the tenant limit skips it).
    with_tenant: bool,
    batch: bool,
    /// Sends the header that exempts a batch request.
    internal: bool,
}

impl Sent {
    fn tenant(&self) -> u32 {
        self.client % TENANTS
    }
}

/// The requests of each connection, in order: the same on every run.
fn traffic() -> Vec<Vec<Sent>> {
    let mut state: u64 = 0x5eed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut senders = vec![Vec::new(); SENDERS as usize];
    for _ in 0..REQUESTS {
        let client = next() % CLIENTS;
        let roll = next() % 100;
        let sent = Sent {
            client,
            with_tenant: roll >= 20,
            batch: roll % 10 == 0,
            internal: roll % 20 == 0,
        };
        senders[(sent.tenant() % SENDERS) as usize].push(sent);
    }
    senders
}

/// Sends the traffic through `gw`, each connection's requests one after the
/// other, and waits for its log to hold a line for each; returns the log.
async fn run_traffic(gw: &Gateway) -> String {
    let senders = traffic().into_iter().map(|requests| {
        let url = gw.url("");
        async move {
            let client = common::client();
            for sent in requests {
                let path = if sent.batch {
                    "/batch/run"
                } else {
                    "/v1/items"
                };
                let mut request = client.get(format!("{url}{path}")).header(
                    "x-forwarded-for",
                    format!("10.1.{}.{}", sent.client / 256, sent.client % 256),
                );
                if sent.with_tenant {
                    request = request.header("x-tenant", format!("tenant-{}", sent.tenant()));
                }
                if sent.internal {
                    request = request.header("x-internal", "batch-nightly");
                }
                let status = request.send().await.unwrap().status().as_u16();
                assert!(status == 200 || status == 429, "{status}");
            }
        }
    });
    futures_util::future::join_all(senders).await;
    let log = logged(gw, REQUESTS).await;
    std::fs::read_to_string(&log).unwrap()
}

/// The access log beside `gw`'s config, once it has `lines` lines.
async fn logged(gw: &Gateway, lines: usize) -> PathBuf {
    let log = gw.config_path.parent().unwrap().join("access.log");
    eventually(
        Duration::from_secs(30),
        "a log line for every request",
        || {
            let log = log.clone();
            async move { std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= lines) }
        },
    )
    .await;
    log
}

/// The access log of a live gateway with `config` after the traffic, kept
/// in the target's scratch directory for the tests that read it.
async fn live_log(config: String, name: &str) -> PathBuf {
    common::enough_file_descriptors();
    let upstream = forgetful_upstream().await;
    let gw = Gateway::start(&config, upstream).await;
    let text = run_traffic(&gw).await;
    assert!(
        gw.metrics()
            .await
            .contains("tollgate_access_log_dropped_total 0"),
        "the log dropped lines"
    );
    drop(gw);
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("replay-{}-{name}.log", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

/// The log of config A's gateway, made once for the tests that need it.
async fn log_a() -> &'static Path {
    static LOG: OnceCell<PathBuf> = OnceCell::const_new();
    LOG.get_or_init(|| live_log(config_a(), "a")).await
}

/// Replays `log` through `config` (its addresses are never bound), with
/// every changed key listed as counted.
async fn replay_with(config: &str, log: &Path) -> Report {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("candidate.yaml");
    let [listen, admin, upstream] = [1, 2, 3].map(|port| ([127, 0, 0, 1], port).into());
    std::fs::write(&path, common::render(config, listen, admin, upstream)).unwrap();
    let candidate = tollgate::app::loader().load_file(&path).unwrap();
    let options = Options {
        paths: vec![log.to_path_buf()],
        window: Window {
            since: None,
            until: None,
        },
        show_keys: true,
        top: usize::MAX,
    };
    replay::replay(&candidate, &options, &mut |_| {})
        .await
        .unwrap()
}

/// Refusals per (rule, limit, key as replay shows it), as a log records them.
fn refusals_per_key(log: &Path) -> HashMap<(String, String, String), u64> {
    let mut counts = HashMap::new();
    for line in std::fs::read_to_string(log).unwrap().lines() {
        let line: Value = serde_json::from_str(line).unwrap();
        if line["outcome"] != "limited" {
            continue;
        }
        let limit = line["limit"]["name"].as_str().unwrap().to_string();
        let key = if limit == "per-tenant" {
            format!(
                "{:?}",
                line["identity"]["parts"]["header:x-tenant"]
                    .as_str()
                    .unwrap()
            )
        } else {
            line["client_ip"].as_str().unwrap().to_string()
        };
        let rule = line["rule"].as_str().unwrap().to_string();
        *counts.entry((rule, limit, key)).or_default() += 1;
    }
    counts
}

/// Per (rule, limit): the recorded and the candidate's counts.
fn per_limit(report: &Report) -> HashMap<(String, String), (Counts, Counts)> {
    report
        .limits
        .iter()
        .map(|l| ((l.rule.clone(), l.limit.clone()), (l.recorded, l.candidate)))
        .collect()
}

/// Per-second limits of every rate algorithm, a rule each: whether a request is refused
/// depends on when, to the microsecond, the store decided it.
const BY_THE_SECOND: &str = "
server:
  listen: [\"{listen}\"]
  admin: \"{admin}\"
  threads: 2
  trusted_proxies: [\"127.0.0.1/32\"]
access_log: { format: json, path: access.log }
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - { name: gcra, match: { path: \"/gcra\" }, upstream: api, limits: [{ name: per-ip, key: ip, rate: 2/second, burst: 1 }] }
  - { name: window, match: { path: \"/window\" }, upstream: api, limits: [{ name: per-ip, key: ip, rate: 2/second, algorithm: fixed_window }] }
  - { name: sliding, match: { path: \"/sliding\" }, upstream: api, limits: [{ name: per-ip, key: ip, rate: 3/second, algorithm: sliding_window_counter }] }
  - { name: log, match: { path: \"/log\" }, upstream: api, limits: [{ name: per-ip, key: ip, rate: 3/second, algorithm: sliding_window_log }] }
  - { name: bucket, match: { path: \"/bucket\" }, upstream: api, limits: [{ name: per-ip, key: ip, rate: 2/second, burst: 2, algorithm: token_bucket }] }
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_decides_at_the_recorded_times_to_the_nanosecond() {
    const SENT: usize = 4_000;
    let upstream = forgetful_upstream().await;
    let gw = Gateway::start(BY_THE_SECOND, upstream).await;
    let senders = (0..4u32).map(|sender| {
        let url = gw.url("");
        async move {
            let client = common::client();
            for n in 0..SENT / 4 {
                let ip = format!("10.2.0.{}", sender * 2 + (n % 2) as u32);
                let rule = ["gcra", "window", "sliding", "log", "bucket"][n / 2 % 5];
                let status = client
                    .get(format!("{url}/{rule}"))
                    .header("x-forwarded-for", ip)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16();
                assert!(status == 200 || status == 429, "{status}");
            }
        }
    });
    futures_util::future::join_all(senders).await;
    let log = logged(&gw, SENT).await;
    let report = replay_with(BY_THE_SECOND, &log).await;
    assert_eq!(report.requests, SENT as u64);
    let refused: Vec<u64> = report.limits.iter().map(|l| l.recorded.limited).collect();
    assert!(
        refused.iter().all(|&n| n > 0),
        "a limit refused nothing: {refused:?}"
    );
    for limit in &report.limits {
        assert_eq!(limit.recorded.limited, limit.candidate.limited, "{limit:?}");
    }
    assert_eq!((report.keys_more_limited, report.keys_less_limited), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_log_with_its_own_config_reproduces_every_decision() {
    let log = log_a().await;
    let report = replay_with(&config_a(), log).await;
    assert_eq!(report.requests, REQUESTS as u64);
    assert_eq!(report.bad_lines, 0);
    for rule in &report.rules {
        assert_eq!(rule.recorded, rule.candidate, "rule {:?}", rule.rule);
    }
    for limit in &report.limits {
        assert!(
            limit.recorded.limited > 0,
            "{limit:?} refused nothing: a weak test"
        );
        assert_eq!(limit.recorded, limit.candidate, "{limit:?}");
    }
    assert!(report.rules.iter().any(|r| r.recorded.exempt > 0));
    assert_eq!(
        (report.keys_more_limited, report.keys_less_limited),
        (0, 0),
        "keys decided otherwise: {:?} {:?}",
        report.newly_limited,
        report.no_longer_limited
    );
    assert!(report.route_changes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn halved_limits_refuse_what_a_live_gateway_with_them_refuses() {
    let log = log_a().await;
    let halved = replay_with(&config_b(), log).await;
    let recorded: u64 = halved.limits.iter().map(|l| l.recorded.limited).sum();
    let candidate: u64 = halved.limits.iter().map(|l| l.candidate.limited).sum();
    assert!(
        candidate > recorded,
        "halved limits refuse more: {recorded} -> {candidate}"
    );

    let live_b = live_log(config_b(), "b").await;
    // What the live B gateway did, as its own log says.
    let b_itself = replay_with(&config_b(), &live_b).await;
    for (limit, (recorded, replayed)) in per_limit(&b_itself) {
        assert_eq!(
            recorded, replayed,
            "{limit:?}: B's log replays as B decided"
        );
        assert_eq!(
            per_limit(&halved)[&limit].1,
            recorded,
            "{limit:?}: B over A's log and B live"
        );
    }
    for (rule_a, rule_b) in halved.rules.iter().zip(&b_itself.rules) {
        assert_eq!(rule_a.rule, rule_b.rule);
        assert_eq!(rule_a.candidate, rule_b.recorded, "rule {:?}", rule_a.rule);
    }
    // Per key: A's refusals, changed where replay says B changes them.
    let mut expected = refusals_per_key(log);
    for change in halved.newly_limited.iter().chain(&halved.no_longer_limited) {
        let key = (
            change.rule.clone(),
            change.limit.clone(),
            change.key.clone(),
        );
        assert_eq!(
            expected.get(&key).copied().unwrap_or(0),
            change.recorded_limited,
            "{key:?}"
        );
        expected.insert(key, change.candidate_limited);
    }
    expected.retain(|_, n| *n > 0);
    assert_eq!(expected, refusals_per_key(&live_b));
}

/// Two consumers by API key, on plans `acme_plan` says for acme.
fn with_consumers(acme_plan: &str) -> String {
    format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
access_log: {{ format: json, path: access.log }}
upstreams: {{ api: {{ servers: [\"{{upstream}}\"] }} }}
plans:
  free: {{ limits: [ {{ name: per-consumer, key: consumer, rate: 5/day }} ] }}
  pro: {{ limits: [ {{ name: per-consumer, key: consumer, rate: 20/day }} ] }}
consumers:
  list:
    - {{ id: hobbyist, plan: free, keys: [free-key-1] }}
    - {{ id: acme, plan: {acme_plan}, keys: [pro-key-1] }}
rules:
  - {{ name: api, match: {{ path: \"/**\" }}, upstream: api, plan: true }}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_moved_to_another_plan_is_replayed_under_its_new_limits() {
    let upstream = forgetful_upstream().await;
    let gw = Gateway::start(&with_consumers("pro"), upstream).await;
    let client = common::client();
    let keys = ["free-key-1", "pro-key-1", "no-such-key"];
    for n in 0..90 {
        let status = client
            .get(gw.url("/v1/items"))
            .header("x-api-key", keys[n % 3])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!([200, 401, 429].contains(&status), "{status}");
    }
    let log = logged(&gw, 90).await;
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("pro-key-1"),
        "the log holds a key"
    );

    let same = replay_with(&with_consumers("pro"), &log).await;
    let api = &same.rules[0];
    assert_eq!(api.recorded, api.candidate);
    assert_eq!((api.recorded.limited, api.recorded.refused), (25 + 10, 30));

    let moved = replay_with(&with_consumers("free"), &log).await;
    let refused: HashMap<String, (u64, u64)> = moved
        .limits
        .iter()
        .map(|l| (l.limit.clone(), (l.recorded.limited, l.candidate.limited)))
        .collect();
    assert_eq!(refused["free.per-consumer"], (25, 50));
    assert_eq!(refused["pro.per-consumer"], (10, 0));
    let acme: Vec<_> = moved
        .newly_limited
        .iter()
        .map(|k| (k.key.as_str(), k.limit.as_str()))
        .collect();
    assert_eq!(acme, [("\"acme\"", "free.per-consumer")]);
}
