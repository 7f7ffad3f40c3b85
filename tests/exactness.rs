//! Exact under concurrency (ARCHITECTURE.md, promise 1): 1,000 simultaneous requests
//! through the real gateway against a limit of 100 admit exactly what the
//! algorithm allows — for every algorithm. Rates are per hour so that nothing
//! refills while the test runs: the answer is exactly 100.

mod common;

use common::{eventually, fire, fire_and_hold, gateway_config, Gateway, Upstream};

const REQUESTS: usize = 1_000;

fn config(limit: &str, path: &str) -> String {
    gateway_config(
        "api",
        &format!(
            "
rules:
  - name: api
    match: {{ path: \"{path}\" }}
    upstream: api
    limits: [{limit}]
"
        ),
    )
}

#[tokio::test]
async fn every_rate_algorithm_admits_exactly_its_quota_under_concurrency() {
    common::enough_file_descriptors();
    let upstream = Upstream::start().await;
    for algorithm in common::RATE_ALGORITHMS {
        let limit = format!("{{ name: l, key: global, rate: 100/hour, algorithm: {algorithm} }}");
        let gw = Gateway::start(&config(&limit, "/**"), upstream.addr).await;
        assert_eq!(
            fire(std::slice::from_ref(&gw), REQUESTS, "/x").await,
            (100, 900),
            "{algorithm}"
        );
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
