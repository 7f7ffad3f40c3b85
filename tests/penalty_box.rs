//! The penalty box: a key a limit keeps refusing is refused outright for a
//! while, longer on a repeat offence, freed by the admin; in memory, and in
//! Redis for every gateway at once.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{client, gateway_config, Gateway, Upstream};
use serde_json::Value;

/// One request a second per client, refused three times → banned for 1.5 s
/// (3 s on the next offence).
fn config(store: &str, ban: &str) -> String {
    gateway_config(
        "api",
        &format!(
            "
{store}
rules:
  - name: api
    match: {{ path: /** }}
    upstream: api
    exempt: [{{ header: {{ name: x-internal, value: yes }} }}]
    limits:
      - name: per_client
        key: {{ header: x-client }}
        rate: 1/s
        burst: 1
        ban: {{ {ban} }}
"
        ),
    )
}

const BAN: &str = "after: 2, within: 1m, for: 1500ms, escalate: 2, max: 1m";

async fn send(gw: &Gateway, client_id: &str) -> (u16, Option<u64>, Value) {
    let resp = client()
        .get(gw.url("/thing"))
        .header("x-client", client_id)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    (status, retry, body)
}

fn error_of(answer: &(u16, Option<u64>, Value)) -> &str {
    answer.2["error"].as_str().unwrap_or("")
}

/// Spends the client's one request and refuses it `after` (2) times: the
/// second refusal starts the ban.
async fn earn_a_ban(gw: &Gateway, client_id: &str) -> (u16, Option<u64>, Value) {
    send(gw, client_id).await;
    let first = send(gw, client_id).await;
    assert_eq!(error_of(&first), "rate_limited", "{first:?}");
    send(gw, client_id).await
}

/// Asserts the value of a ban metric of the limit `api/per_client`.
async fn assert_ban_metric(gw: &Gateway, name: &str, mode: &str, value: u64) {
    let metrics = gw.metrics().await;
    let line =
        format!("tollgate_{name}{{limit=\"per_client\",mode=\"{mode}\",rule=\"api\"}} {value}");
    assert!(metrics.contains(&line), "no {line} in {metrics}");
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = client()
        .request(method, gw.admin_url(path))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_client_that_keeps_sending_is_banned_longer_each_time_and_freed_by_delete() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config("", BAN), upstream.addr).await;

    let banned = earn_a_ban(&gw, "pest").await;
    assert_eq!((banned.0, error_of(&banned)), (429, "banned"), "{banned:?}");
    assert_eq!(banned.1, Some(2), "Retry-After covers the 1.5 s ban");

    // The limit refills after a second; the ban still holds.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let still = send(&gw, "pest").await;
    assert_eq!((still.0, error_of(&still)), (429, "banned"), "{still:?}");
    assert_eq!(
        send(&gw, "bystander").await.0,
        200,
        "other keys are not banned"
    );

    // Served again once the ban ends.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(send(&gw, "pest").await.0, 200);

    // A repeat offence: twice as long.
    let again = send(&gw, "pest").await;
    assert_eq!(error_of(&again), "rate_limited", "{again:?}");
    let repeat = send(&gw, "pest").await;
    assert_eq!((repeat.0, error_of(&repeat)), (429, "banned"), "{repeat:?}");
    assert_eq!(repeat.1, Some(3), "the second ban lasts 3 s");

    let (status, state) = admin(
        &gw,
        reqwest::Method::GET,
        "/-/limits/api/per_client/keys/pest",
    )
    .await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["banned"], true, "{state}");
    assert_eq!(state["offences"], 2, "{state}");

    let (status, lifted) = admin(
        &gw,
        reqwest::Method::DELETE,
        "/-/limits/api/per_client/keys/pest",
    )
    .await;
    assert_eq!(
        (status, &lifted["ban_lifted"]),
        (200, &Value::Bool(true)),
        "{lifted}"
    );
    assert_eq!(
        send(&gw, "pest").await.0,
        200,
        "freed, and its limit reset too"
    );

    assert_ban_metric(&gw, "bans_total", "enforce", 2).await;
    assert_ban_metric(&gw, "ban_refusals_total", "enforce", 1).await;
}

#[tokio::test]
async fn an_exemption_wins_over_a_ban() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config("", BAN), upstream.addr).await;
    assert_eq!(error_of(&earn_a_ban(&gw, "pest").await), "banned");
    let exempt = client()
        .get(gw.url("/thing"))
        .header("x-client", "pest")
        .header("x-internal", "yes")
        .send()
        .await
        .unwrap();
    assert_eq!(exempt.status(), 200);
}

#[tokio::test]
async fn a_shadow_ban_counts_what_it_would_have_refused_and_refuses_nothing() {
    let upstream = Upstream::start().await;
    let ban = format!("{BAN}, mode: shadow");
    let gw = Gateway::start(&config("", &ban), upstream.addr).await;
    let started = earn_a_ban(&gw, "pest").await;
    assert_eq!(error_of(&started), "rate_limited", "{started:?}");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        send(&gw, "pest").await.0,
        200,
        "the limit refilled; no ban refuses"
    );
    assert_ban_metric(&gw, "bans_total", "shadow", 1).await;
    assert_ban_metric(&gw, "ban_refusals_total", "shadow", 1).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_requests_total{outcome=\"shadow_limited\",plan=\"\",rule=\"api\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_ban_earned_through_one_gateway_is_enforced_by_all_three_on_one_redis() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let store = format!(
        "store: {{ backend: redis, redis: {{ url: \"{}\", timeout: 5s }}, on_error: deny }}",
        redis.url()
    );
    let yaml = config(
        &store,
        "after: 2, within: 1m, for: 1m, escalate: 2, max: 1h",
    );
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateway::start(&yaml, upstream.addr).await);
    }
    let banned = earn_a_ban(&gateways[0], "pest").await;
    assert_eq!(error_of(&banned), "banned", "{banned:?}");
    for gw in &gateways[1..] {
        let answer = send(gw, "pest").await;
        assert_eq!((answer.0, error_of(&answer)), (429, "banned"), "{answer:?}");
        assert!(answer.1.is_some_and(|s| s > 50), "{answer:?}");
    }

    // Every gateway lists it; one lifts it for all.
    let (status, listed) = admin(&gateways[2], reqwest::Method::GET, "/-/bans").await;
    assert_eq!(status, 200, "{listed}");
    let bans = listed["bans"].as_array().unwrap();
    assert_eq!(bans.len(), 1, "{listed}");
    let digest = bans[0]["digest"].as_str().unwrap().to_string();
    assert!(
        bans[0].get("key").is_none(),
        "keys are shown only as digests: {listed}"
    );
    let (status, lifted) = admin(
        &gateways[1],
        reqwest::Method::DELETE,
        &format!("/-/limits/api/per_client/keys/{digest}"),
    )
    .await;
    assert_eq!(
        (status, &lifted["ban_lifted"]),
        (200, &Value::Bool(true)),
        "{lifted}"
    );
    assert_eq!(
        send(&gateways[0], "pest").await.0,
        200,
        "freed, its limit reset"
    );
    let (_, listed) = admin(&gateways[0], reqwest::Method::GET, "/-/bans").await;
    assert_eq!(listed["bans"].as_array().map(Vec::len), Some(0), "{listed}");
}
