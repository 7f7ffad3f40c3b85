//! Exact under concurrency (DESIGN promise 1): 1,000 simultaneous requests
//! through the real gateway against a limit of 100 admit exactly what the
//! algorithm allows — for every algorithm. Rates are per hour so that nothing
//! refills while the test runs: the answer is exactly 100.

mod common;

use common::{client, eventually, fire_and_hold, Gateway, Upstream};
use futures_util::future::join_all;

const REQUESTS: usize = 1_000;

fn config(limit: &str, path: &str) -> String {
    format!(
        "
server: {{ listen: [\"{{listen}}\"], admin: \"{{admin}}\", threads: 2 }}
upstreams: {{ api: {{ servers: [\"{{upstream}}\"] }} }}
rules:
  - name: api
    match: {{ path: \"{path}\" }}
    upstream: api
    limits: [{limit}]
"
    )
}

/// Fires all requests at once and counts the answers.
async fn fire(gw: &Gateway, path: &str) -> (usize, usize) {
    let c = client();
    let answers = join_all((0..REQUESTS).map(|_| c.get(gw.url(path)).send())).await;
    let statuses: Vec<u16> = answers
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, REQUESTS, "only 200 and 429 expected");
    (ok, limited)
}

#[tokio::test]
async fn every_rate_algorithm_admits_exactly_its_quota_under_concurrency() {
    common::enough_file_descriptors();
    let upstream = Upstream::start().await;
    for algorithm in [
        "gcra",
        "token_bucket",
        "leaky_bucket, burst: 99", // nginx's burst: 99 beyond the one served
        "fixed_window",
        "sliding_window_log",
        "sliding_window_counter",
    ] {
        let limit = format!("{{ name: l, key: global, rate: 100/hour, algorithm: {algorithm} }}");
        let gw = Gateway::start(&config(&limit, "/**"), upstream.addr).await;
        assert_eq!(fire(&gw, "/x").await, (100, 900), "{algorithm}");
    }
}

#[tokio::test]
async fn a_concurrency_limit_admits_exactly_its_maximum_at_once() {
    common::enough_file_descriptors();
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &config("{ name: l, key: global, concurrent: 100 }", "/hold"),
        upstream.addr,
    )
    .await;
    let statuses = fire_and_hold(&upstream, REQUESTS, |_| gw.url("/hold")).await;
    assert_eq!(upstream.count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 900);
    // Every permit came back (each as its request's context goes).
    eventually(
        std::time::Duration::from_secs(10),
        "no permit left",
        || async { gw.metrics().await.contains("tollgate_tracked_keys 0") },
    )
    .await;
}
