//! Algorithm options through the real gateway: costs, shaping, concurrency.

mod common;

use std::time::{Duration, Instant};

use common::{client, eventually, gateway_config, header_of, Gateway, Upstream};
use futures_util::future::join_all;

fn config(limits: &str) -> String {
    gateway_config(
        "api",
        &format!(
            "
rules:
  - name: api
    match: {{ path: \"/**\" }}
    upstream: api
    limits: [{limits}]
"
        ),
    )
}

async fn start(limits: &str) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(limits), upstream.addr).await;
    (upstream, gw)
}

#[tokio::test]
async fn a_cost_header_charges_several_units_within_its_cap() {
    let (_upstream, gw) =
        start("{ name: items, key: global, rate: 10/hour, cost: { header: x-items, max: 5 } }")
            .await;
    let c = client();
    let send = |items: &'static str| c.get(gw.url("/batch")).header("x-items", items).send();
    let first = send("5").await.unwrap();
    assert_eq!(
        header_of(&first, "ratelimit").unwrap(),
        "\"items\";r=5;t=1800"
    );
    assert_eq!(send("4").await.unwrap().status(), 200);
    assert_eq!(send("2").await.unwrap().status(), 429, "only 1 unit left");
    assert_eq!(
        c.get(gw.url("/")).send().await.unwrap().status(),
        200,
        "no header: costs the default, 1"
    );
    for bad in ["0", "6", "lots"] {
        let resp = send(bad).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "bad_cost");
    }
}

#[tokio::test]
async fn a_cost_header_sent_twice_is_refused_not_charged_by_its_first_line() {
    let (upstream, gw) =
        start("{ name: items, key: global, rate: 10/hour, cost: { header: x-items, max: 5 } }")
            .await;
    let resp = client()
        .get(gw.url("/batch"))
        .header("x-items", "1")
        .header("x-items", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_cost");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_shaping_leaky_bucket_delays_excess_requests_instead_of_refusing_them() {
    let (_upstream, gw) =
        start("{ name: shaped, key: global, rate: 2/second, algorithm: leaky_bucket, burst: 2, delay: true }").await;
    let c = client();
    let started = Instant::now();
    let answers = join_all((0..5).map(|_| {
        let request = c.get(gw.url("/")).send();
        async move {
            let status = request.await.unwrap().status().as_u16();
            (status, started.elapsed())
        }
    }))
    .await;
    let mut served: Vec<Duration> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, t)| *t)
        .collect();
    served.sort();
    // One served at once and nginx's burst of 2 queued: 3 (unless the client
    // took over half a second to send five requests).
    assert_eq!(served.len(), 3, "three fit the bucket: {answers:?}");
    assert_eq!(answers.iter().filter(|(s, _)| *s == 429).count(), 2);
    // The third waited two drain intervals (a lower bound: it cannot be early).
    assert!(served[2] >= Duration::from_millis(1000), "{served:?}");
}

#[tokio::test]
async fn a_concurrency_permit_is_freed_when_its_request_ends() {
    let (upstream, gw) = start("{ name: one-at-a-time, key: global, concurrent: 1 }").await;
    let c = client();
    let held = tokio::spawn(c.get(gw.url("/hold")).send());
    eventually(
        Duration::from_secs(10),
        "the first request is held",
        || async { upstream.count() == 1 },
    )
    .await;
    let refused = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(header_of(&refused, "retry-after").unwrap(), "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["limit"], "one-at-a-time");
    upstream.release_holds();
    assert_eq!(held.await.unwrap().unwrap().status(), 200);
    // The permit is given back when the request's context goes, just after
    // its response.
    eventually(Duration::from_secs(10), "the permit comes back", || async {
        c.get(gw.url("/")).send().await.unwrap().status() == 200
    })
    .await;
}

#[tokio::test]
async fn a_concurrency_permit_is_freed_when_the_client_walks_away() {
    let (upstream, gw) = start("{ name: one-at-a-time, key: global, concurrent: 1 }").await;
    let abandoned = tokio::spawn(client().get(gw.url("/hold")).send());
    eventually(Duration::from_secs(10), "the request is held", || async {
        upstream.count() == 1
    })
    .await;
    abandoned.abort();
    let _ = abandoned.await;
    // The upstream is still holding the request: only the client's leaving
    // can free the permit.
    eventually(Duration::from_secs(10), "the permit comes back", || async {
        client().get(gw.url("/")).send().await.unwrap().status() == 200
    })
    .await;
    upstream.release_holds();
}

#[tokio::test]
async fn a_websocket_holds_its_permit_until_the_tunnel_closes() {
    let (_upstream, gw) = start("{ name: one-socket, key: ip, concurrent: 1 }").await;
    let url = format!("ws://{}/ws/echo", gw.addr);
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let second = tokio_tungstenite::connect_async(&url).await;
    match second {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("expected a 429, got {:?}", other.map(|(_, r)| r.status())),
    }
    first.close(None).await.unwrap();
    drop(first);
    eventually(
        Duration::from_secs(10),
        "the closed tunnel's permit comes back",
        || async { tokio_tungstenite::connect_async(&url).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn a_failed_upstream_request_gives_its_permit_back() {
    let dead: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let gw = Gateway::start(
        &config("{ name: one-at-a-time, key: global, concurrent: 1 }"),
        dead,
    )
    .await;
    let c = client();
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 502);
    eventually(
        Duration::from_secs(10),
        "the failed request's permit comes back",
        || async { gw.metrics().await.contains("tollgate_tracked_keys 0") },
    )
    .await;
    assert_eq!(
        c.get(gw.url("/")).send().await.unwrap().status(),
        502,
        "not 429"
    );
}
