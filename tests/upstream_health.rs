//! Upstream health against a live gateway: active checks take a dead server
//! out (no request fails meanwhile) and bring it back, passive ejection
//! after failed connects, weights, the fast 503 when no server is left, and
//! a `/readyz` that can require healthy upstreams.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{client, eventually, free_port, Gateway, Upstream};

/// A config with the one upstream `api` whose `servers:` and further
/// settings are `servers` (YAML flow items) and `extra` (`key: value, ...`).
fn config(servers: &str, extra: &str, server_extra: &str) -> String {
    format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
{server_extra}
upstreams:
  api: {{ servers: [{servers}]{extra} }}
rules:
  - {{ name: all, match: {{ path: \"/**\" }}, upstream: api }}
"
    )
}

fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Waits until the gateway's gauge says `server` gets requests (or not).
async fn until_health(gw: &Gateway, server: SocketAddr, healthy: bool) {
    let line = format!(
        "tollgate_upstream_server_healthy{{server=\"{server}\",upstream=\"api\"}} {}",
        u8::from(healthy)
    );
    eventually(Duration::from_secs(10), &line.clone(), || {
        let line = line.clone();
        async move { gw.metrics().await.contains(&line) }
    })
    .await;
}

/// Sends `n` requests, 10 at a time, and returns the statuses that were not 200.
async fn failures(gw: &Gateway, n: usize) -> Vec<u16> {
    let c = client();
    let mut bad = Vec::new();
    for _ in 0..n / 10 {
        let batch = (0..10).map(|_| c.get(gw.url("/orders")).send());
        for answer in futures_util::future::join_all(batch).await {
            let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
            if status != 200 {
                bad.push(status);
            }
        }
    }
    bad
}

const ACTIVE: &str =
    ", health: { path: /healthz, interval: 50ms, timeout: 500ms, healthy: 2, unhealthy: 2 }";

#[tokio::test]
async fn a_killed_server_is_taken_out_without_failed_requests_and_comes_back() {
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let mut c = Upstream::start().await;
    let killed = c.addr;
    let gw = Gateway::start(
        &config(&quoted(&[a.addr, b.addr, killed]), ACTIVE, ""),
        a.addr,
    )
    .await;
    until_health(&gw, killed, true).await;
    c.stop().await;
    until_health(&gw, killed, false).await;
    assert_eq!(failures(&gw, 300).await, Vec::<u16>::new());

    let revived = Upstream::start_on(killed).await;
    until_health(&gw, killed, true).await;
    assert!(failures(&gw, 30).await.is_empty());
    assert!(
        revived.count() > 0,
        "the recovered server gets requests again"
    );
}

#[tokio::test]
async fn when_no_server_is_healthy_the_answer_is_a_fast_503_naming_the_upstream() {
    let mut only = Upstream::start().await;
    let addr = only.addr;
    let tcp_check = ", health: { interval: 50ms, timeout: 500ms, healthy: 1, unhealthy: 1 }";
    let gw = Gateway::start(&config(&quoted(&[addr]), tcp_check, ""), addr).await;
    until_health(&gw, addr, true).await;
    only.stop().await;
    until_health(&gw, addr, false).await;
    let answer = client().get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(answer.status(), 503);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "no_healthy_server");
    assert_eq!(body["upstream"], "api");
}

#[tokio::test]
async fn readyz_can_require_a_healthy_server_in_every_upstream() {
    let mut only = Upstream::start().await;
    let addr = only.addr;
    let tcp_check = ", health: { interval: 50ms, timeout: 500ms, healthy: 1, unhealthy: 1 }";
    let readyz = "  readyz: { require_healthy_upstreams: true }";
    let gw = Gateway::start(&config(&quoted(&[addr]), tcp_check, readyz), addr).await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    only.stop().await;
    until_health(&gw, addr, false).await;
    let ready = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["upstreams_down"], serde_json::json!(["api"]));
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_ejected_after_the_passive_threshold() {
    let good = Upstream::start().await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let passive = ", passive: { failures: 1, eject_for: 1h }";
    let gw = Gateway::start(&config(&quoted(&[dead, good.addr]), passive, ""), good.addr).await;
    // Each request that meets the dead server is retried on the good one.
    let c = client();
    for _ in 0..4 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    until_health(&gw, dead, false).await;
    let errors = |metrics: String| {
        metrics
            .lines()
            .find(|l| l.starts_with("tollgate_upstream_errors_total{upstream=\"api\"}"))
            .map(str::to_string)
    };
    let before = errors(gw.metrics().await);
    assert!(before.is_some());
    assert!(failures(&gw, 20).await.is_empty());
    assert_eq!(
        errors(gw.metrics().await),
        before,
        "the ejected server was tried again"
    );
}

#[tokio::test]
async fn servers_get_requests_in_proportion_to_their_weights() {
    let (heavy, light) = (Upstream::start().await, Upstream::start().await);
    let servers = format!(
        "{{ address: \"{}\", weight: 3 }}, \"{}\"",
        heavy.addr, light.addr
    );
    let gw = Gateway::start(&config(&servers, "", ""), heavy.addr).await;
    let c = client();
    for _ in 0..40 {
        assert_eq!(c.get(gw.url("/x")).send().await.unwrap().status(), 200);
    }
    assert_eq!((heavy.count(), light.count()), (30, 10));
}
