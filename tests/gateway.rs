//! End-to-end behaviour of the gateway core: a real gateway in this process in
//! front of a recording upstream, driven over real sockets.

mod common;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use common::{
    client, client_from, header_of, raw_json, raw_request, statuses, upstreams, Gateway, Upstream,
    SERVER,
};

fn config(rest: &str) -> String {
    format!("{SERVER}{rest}")
}

/// Config with one upstream `api` and one catch-all rule `api`, whose other
/// settings (limits, exemptions…) are `rule` (YAML lines indented by four).
fn api_rule(rule: &str) -> String {
    format!(
        "
{}rules:
  - name: api
    match: {{ path: /** }}
    upstream: api
{}",
        upstreams("api"),
        rule.trim_start_matches('\n')
    )
}

async fn start(rest: &str) -> (Upstream, Gateway) {
    start_with("", rest).await
}

/// Starts with extra `server:` settings (indented YAML lines).
async fn start_with(server: &str, rest: &str) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&format!("{SERVER}{server}{rest}"), upstream.addr).await;
    (upstream, gateway)
}

#[tokio::test]
async fn limit_reached_answers_429_with_retry_after_and_ratelimit_headers() {
    let (upstream, gw) = start(&api_rule(
        "    limits: [{ name: per-ip, key: ip, rate: 3/minute }]
",
    ))
    .await;
    let c = client();
    let started = std::time::Instant::now();
    assert_eq!(statuses(&c, &gw.url("/x"), 3).await, vec![200, 200, 200]);
    let denied = c.get(gw.url("/x")).send().await.unwrap();
    assert_eq!(denied.status(), 429);
    // 3/minute refills one request every 20 s; rounding is always up, so the
    // answer is 20 unless the four requests themselves took a second or more.
    let retry_after: u64 = header_of(&denied, "retry-after").unwrap().parse().unwrap();
    assert!(
        retry_after == 20 || started.elapsed().as_secs() >= 1,
        "retry-after {retry_after}"
    );
    assert_eq!(
        header_of(&denied, "ratelimit-policy").unwrap(),
        "\"per-ip\";q=3;w=60"
    );
    assert_eq!(
        header_of(&denied, "ratelimit").unwrap(),
        format!("\"per-ip\";r=0;t={retry_after}")
    );
    assert_eq!(
        header_of(&denied, "content-type").unwrap(),
        "application/json"
    );
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["rule"], "api");
    assert_eq!(body["limit"], "per-ip");
    assert_eq!(body["retry_after"], retry_after);
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn allowed_responses_report_the_most_constrained_limit() {
    let (_upstream, gw) = start_with(
        "  headers: both\n",
        &api_rule(
            "    limits:
      - { name: roomy, key: ip, rate: 100/minute }
      - { name: tight, key: global, rate: 5/minute }
",
        ),
    )
    .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header_of(&resp, "ratelimit-policy").unwrap(),
        "\"tight\";q=5;w=60"
    );
    assert_eq!(header_of(&resp, "ratelimit").unwrap(), "\"tight\";r=4;t=12");
    assert_eq!(header_of(&resp, "x-ratelimit-limit").unwrap(), "5");
    assert_eq!(header_of(&resp, "x-ratelimit-remaining").unwrap(), "4");
    assert_eq!(header_of(&resp, "x-ratelimit-reset").unwrap(), "12");
}

#[tokio::test]
async fn header_style_none_sends_no_ratelimit_headers() {
    let (_upstream, gw) = start(&api_rule(
        "    headers: none
    limits: [{ key: ip, rate: 1/minute }]
",
    ))
    .await;
    let c = client();
    let ok = c.get(gw.url("/")).send().await.unwrap();
    let denied = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(denied.status(), 429);
    for resp in [&ok, &denied] {
        assert!(header_of(resp, "ratelimit").is_none());
        assert!(header_of(resp, "x-ratelimit-limit").is_none());
    }
    assert!(header_of(&denied, "retry-after").is_some());
}

#[tokio::test]
async fn a_request_denied_by_a_later_limit_spends_nothing_from_earlier_ones() {
    let (_upstream, gw) = start(&api_rule(
        "    limits:
      - { name: per-ip, key: ip, rate: 5/minute }
      - { name: per-tenant, key: { header: x-tenant }, rate: 2/minute }
",
    ))
    .await;
    let c = client();
    let send = |tenant: &'static str| c.get(gw.url("/")).header("x-tenant", tenant).send();
    let mut results = Vec::new();
    for _ in 0..5 {
        results.push(send("a").await.unwrap().status().as_u16());
    }
    // Tenant a: 2 admitted, 3 denied by per-tenant. per-ip has spent only 2.
    assert_eq!(results, vec![200, 200, 429, 429, 429]);
    let mut results = Vec::new();
    for _ in 0..4 {
        let resp = send("b").await.unwrap();
        results.push((
            resp.status().as_u16(),
            resp.json::<serde_json::Value>().await.ok(),
        ));
    }
    assert_eq!(results[0].0, 200);
    assert_eq!(results[1].0, 200);
    // Third request of tenant b: per-ip still had 1 left, per-tenant denies.
    assert_eq!(results[2].0, 429);
    assert_eq!(results[2].1.as_ref().unwrap()["limit"], "per-tenant");
    let last = send("c").await.unwrap();
    assert_eq!(
        last.status(),
        200,
        "per-ip must still have had its fifth request"
    );
    let over = send("d").await.unwrap();
    assert_eq!(
        over.json::<serde_json::Value>().await.unwrap()["limit"],
        "per-ip"
    );
}

#[tokio::test]
async fn exempt_networks_skip_the_limits() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ key: ip, rate: 1/minute }]
    exempt: [{ ip: [\"127.0.0.2/32\"] }]
",
    ))
    .await;
    let exempt = client_from("127.0.0.2");
    assert_eq!(statuses(&exempt, &gw.url("/"), 5).await, vec![200; 5]);
    let other = client_from("127.0.0.3");
    assert_eq!(statuses(&other, &gw.url("/"), 2).await, vec![200, 429]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_requests_total{outcome=\"exempt\",plan=\"\",rule=\"api\"} 5"),
        "{metrics}"
    );
}

#[tokio::test]
async fn exempt_header_glob_skips_the_limits() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ key: ip, rate: 1/minute }]
    exempt: [{ header: { name: x-api-key, value: \"internal-*\" } }]
",
    ))
    .await;
    let c = client();
    for _ in 0..4 {
        let resp = c
            .get(gw.url("/"))
            .header("x-api-key", "internal-batch")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let outsider = |key: &'static str| c.get(gw.url("/")).header("x-api-key", key).send();
    assert_eq!(outsider("external-1").await.unwrap().status(), 200);
    assert_eq!(outsider("xinternal-1").await.unwrap().status(), 429);
}

#[tokio::test]
async fn forged_forwarded_for_from_an_untrusted_peer_keeps_its_own_bucket() {
    let (upstream, gw) = start_with(
        "  trusted_proxies: [\"127.0.0.2/32\"]\n",
        &api_rule(
            "    limits: [{ key: ip, rate: 2/minute }]
",
        ),
    )
    .await;
    let attacker = client_from("127.0.0.3");
    let mut results = Vec::new();
    for i in 0..4 {
        let forged = format!("198.51.100.{i}");
        let resp = attacker
            .get(gw.url("/"))
            .header("x-forwarded-for", forged)
            .send()
            .await
            .unwrap();
        results.push(resp.status().as_u16());
    }
    assert_eq!(results, vec![200, 200, 429, 429]);
    // The upstream is told the real peer, not the forged chain.
    assert_eq!(
        upstream.seen()[0].header("x-forwarded-for").unwrap(),
        "127.0.0.3"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_limited() {
    let (upstream, gw) = start_with(
        "  trusted_proxies: [\"127.0.0.2/32\"]\n",
        &api_rule(
            "    limits: [{ key: ip, rate: 2/minute }]
",
        ),
    )
    .await;
    let proxy = client_from("127.0.0.2");
    let via = |chain: &'static str| {
        proxy
            .get(gw.url("/"))
            .header("x-forwarded-for", chain)
            .send()
    };
    // Each real client gets its own bucket; what a client puts on the left of
    // the chain does not matter.
    for _ in 0..2 {
        assert_eq!(via("6.6.6.6, 198.51.100.1").await.unwrap().status(), 200);
    }
    assert_eq!(via("7.7.7.7, 198.51.100.1").await.unwrap().status(), 429);
    assert_eq!(via("198.51.100.2").await.unwrap().status(), 200);
    // The chain is extended with the proxy's address.
    assert_eq!(
        upstream.last().header("x-forwarded-for").unwrap(),
        "198.51.100.2, 127.0.0.2"
    );
    assert_eq!(upstream.last().header("x-forwarded-proto").unwrap(), "http");
}

const ROUTES: &str = "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: one
    match: { path: \"/one/*\" }
    upstream: api
    limits: [{ name: one, key: ip, rate: 1000/minute }]
  - name: deep
    match: { path: \"/deep/**\" }
    upstream: api
    limits: [{ name: deep, key: ip, rate: 1000/minute }]
  - name: admin
    match: { path: \"/admin/**\" }
    upstream: api
    limits: [{ name: admin, key: ip, rate: 1000/minute }]
";

/// The name of the limit (named after its rule) that answered, or "404".
async fn matched_limit(gw: &Gateway, path: &str) -> Option<String> {
    let resp = client().get(gw.url(path)).send().await.unwrap();
    if resp.status() == 404 {
        return Some("404".into());
    }
    header_of(&resp, "ratelimit-policy").map(|p| p.split('"').nth(1).unwrap().to_string())
}

#[tokio::test]
async fn single_star_matches_exactly_one_segment() {
    let (_upstream, gw) = start(ROUTES).await;
    assert_eq!(matched_limit(&gw, "/one/a").await.as_deref(), Some("one"));
    assert_eq!(matched_limit(&gw, "/one/a/b").await.as_deref(), Some("404"));
    assert_eq!(matched_limit(&gw, "/one").await.as_deref(), Some("404"));
}

#[tokio::test]
async fn double_star_matches_zero_or_more_segments() {
    let (_upstream, gw) = start(ROUTES).await;
    for path in ["/deep", "/deep/", "/deep/a", "/deep/a/b/c"] {
        assert_eq!(
            matched_limit(&gw, path).await.as_deref(),
            Some("deep"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn no_matching_rule_is_a_404_json() {
    let (upstream, gw) = start(ROUTES).await;
    let resp = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_route");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn the_normalized_path_is_matched_and_forwarded_with_the_query() {
    let (upstream, gw) = start(ROUTES).await;
    let cases = [
        ("//deep//a", "/deep/a"),
        ("/deep/./a", "/deep/a"),
        ("/one/../deep/b", "/deep/b"),
        ("/one/%2e%2e/admin/x", "/admin/x"),
        ("/deep/%61%62", "/deep/ab"),
    ];
    for (sent, forwarded) in cases {
        let (status, _) = raw_request(gw.addr, &format!("{sent}?q=%2F&x=1")).await;
        assert_eq!(status, 200, "{sent}");
        let seen = upstream.last();
        assert_eq!(seen.path, forwarded, "{sent}");
        assert_eq!(seen.query.as_deref(), Some("q=%2F&x=1"), "{sent}");
    }
    // The decoded `..` put the request under /admin, so the admin rule applied.
    let (_, answer) = raw_request(gw.addr, "/one/%2e%2e/admin/x").await;
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("ratelimit-policy: \"admin\""),
        "{answer}"
    );
}

#[tokio::test]
async fn paths_that_cannot_be_routed_safely_are_400_json() {
    let (upstream, gw) = start(ROUTES).await;
    let cases = [
        ("/deep/a%2Fb", "encoded_separator"),
        ("/deep/a%5cb", "encoded_separator"),
        ("/deep/%zz", "bad_percent_escape"),
        ("/deep/a%", "bad_percent_escape"),
        ("/deep/%00", "control_byte_in_path"),
        ("/%2e%2e/deep", "path_escapes_root"),
        ("/deep/../../etc", "path_escapes_root"),
    ];
    for (path, reason) in cases {
        let (status, answer) = raw_request(gw.addr, path).await;
        assert_eq!(status, 400, "{path}: {answer}");
        let body = raw_json(&answer);
        assert_eq!(body["error"], "bad_request", "{path}");
        assert_eq!(body["reason"], reason, "{path}");
    }
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_dead_upstream_is_a_prompt_502_json() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let gw = Gateway::start(
        &config(
            "
upstreams: { gone: { servers: [\"{upstream}\"], connect_timeout: 1s } }
rules:
  - name: api
    match: { path: /** }
    upstream: gone
",
        ),
        dead,
    )
    .await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    assert_eq!(body["upstream"], "gone");
}

const TLS_UPSTREAM: &str = "
upstreams:
  secure: { servers: [\"{upstream}\"], tls: true, sni: upstream.test, verify_cert: VERIFY }
rules:
  - name: api
    match: { path: /** }
    upstream: secure
";

#[tokio::test]
async fn tls_upstreams_are_reached_with_the_configured_sni() {
    let tls = common::TlsUpstream::start().await;
    let gw = Gateway::start(&config(&TLS_UPSTREAM.replace("VERIFY", "false")), tls.addr).await;
    let resp = client().get(gw.url("/x/./y")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "upstream.test /x/y");
}

#[tokio::test]
async fn tls_upstreams_with_untrusted_certificates_are_refused() {
    let tls = common::TlsUpstream::start().await;
    let gw = Gateway::start(&config(&TLS_UPSTREAM.replace("VERIFY", "true")), tls.addr).await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}

/// A gateway whose one upstream pools two live servers and a dead one.
async fn start_pool_with_a_dead_server() -> (Upstream, Upstream, Gateway) {
    let a = Upstream::start().await;
    let b = Upstream::start().await;
    let dead = common::free_port();
    let rest = format!(
        "
upstreams: {{ pool: {{ servers: [\"{}\", \"127.0.0.1:{dead}\", \"{}\"] }} }}
rules:
  - name: api
    match: {{ path: /** }}
    upstream: pool
",
        a.addr, b.addr
    );
    let gw = Gateway::start(&config(&rest), a.addr).await;
    (a, b, gw)
}

#[tokio::test]
async fn requests_round_robin_over_an_upstreams_servers_and_skip_dead_ones() {
    let (a, b, gw) = start_pool_with_a_dead_server().await;
    assert_eq!(statuses(&client(), &gw.url("/"), 6).await, vec![200; 6]);
    assert!(
        a.count() >= 2 && b.count() >= 2,
        "a {} b {}",
        a.count(),
        b.count()
    );
}

#[tokio::test]
async fn an_upgrade_over_the_limit_gets_429_and_never_reaches_the_upstream() {
    let (upstream, gw) = start(
        "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: stream
    match: { path: \"/ws/*\" }
    upstream: api
    limits: [{ name: upgrades, key: ip, rate: 1/minute }]
",
    )
    .await;
    // Only the handshake is asserted here: messages through the tunnel are the
    // WebSocket issue's subject (Pingora #946 can drop a tunnel after its 101).
    let (_ws, response) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    let refused = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap_err();
    match refused {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 429);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    assert_eq!(upstream.count(), 1);
}

const MISSING: &str = "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: deny
    match: { path: /deny }
    upstream: api
    limits: [{ name: per-tenant, key: { header: x-tenant }, rate: 1/minute, missing: deny }]
  - name: skip
    match: { path: /skip }
    upstream: api
    limits: [{ name: per-tenant, key: { header: x-tenant }, rate: 1/minute, missing: skip }]
  - name: ip
    match: { path: /ip }
    upstream: api
    limits: [{ name: per-tenant, key: { header: x-tenant }, rate: 1/minute, missing: ip }]
";

#[tokio::test]
async fn missing_deny_answers_401_naming_the_key() {
    let (upstream, gw) = start(MISSING).await;
    let resp = client().get(gw.url("/deny")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "missing_key");
    assert_eq!(body["key"], "header:x-tenant");
    assert_eq!(body["limit"], "per-tenant");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn missing_skip_lets_keyless_requests_through_unlimited() {
    let (_upstream, gw) = start(MISSING).await;
    assert_eq!(
        statuses(&client(), &gw.url("/skip"), 3).await,
        vec![200, 200, 200]
    );
}

#[tokio::test]
async fn missing_ip_counts_keyless_requests_by_client_ip() {
    let (_upstream, gw) = start(MISSING).await;
    let c = client();
    assert_eq!(statuses(&c, &gw.url("/ip"), 2).await, vec![200, 429]);
    // A request with the header has its own bucket.
    let tenant = c
        .get(gw.url("/ip"))
        .header("x-tenant", "t")
        .send()
        .await
        .unwrap();
    assert_eq!(tenant.status(), 200);
}

#[tokio::test]
async fn shadow_limits_count_but_never_deny() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ key: ip, rate: 1/minute, mode: shadow }]
",
    ))
    .await;
    let c = client();
    assert_eq!(statuses(&c, &gw.url("/"), 3).await, vec![200, 200, 200]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_requests_total{outcome=\"shadow_limited\",plan=\"\",rule=\"api\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_rule_can_replace_the_status_and_body_of_its_denials() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ name: slow, key: ip, rate: 1/minute }]
    deny: { status: 503, body: '{\"busy\": \"{rule}/{limit}\", \"wait\": {retry_after}}' }
",
    ))
    .await;
    let c = client();
    c.get(gw.url("/")).send().await.unwrap();
    let resp = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header_of(&resp, "content-type").unwrap(),
        "application/json"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["busy"], "api/slow");
    assert_eq!(body["wait"], 60);
}

#[tokio::test]
async fn the_admin_listener_serves_health_and_metrics() {
    let (_upstream, gw) = start(ROUTES).await;
    let c = client();
    c.get(gw.url("/nowhere")).send().await.unwrap();
    c.get(gw.url("/deep/x")).send().await.unwrap();
    let health = c.get(gw.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_requests_total{outcome=\"no_route\",plan=\"\",rule=\"\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tollgate_requests_total{outcome=\"allowed\",plan=\"\",rule=\"deep\"} 1"),
        "{metrics}"
    );
    // The admin endpoints are not on the public listener.
    let public = c.get(gw.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn h2c_clients_are_served_and_limited() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ key: ip, rate: 1/minute }]
",
    ))
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let first = h2.get(gw.url("/")).send().await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(first.status(), 200);
    assert_eq!(h2.get(gw.url("/")).send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn an_h2c_request_head_over_max_header_bytes_is_431() {
    let (upstream, gw) = start_with("  max_header_bytes: 4096\n", ROUTES).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2
        .get(gw.url("/deep/a"))
        .header("cookie", "c".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 431);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "header_too_large");
    assert!(upstream.seen().is_empty(), "the upstream got the request");
}

#[tokio::test]
async fn h2c_requests_are_normalized_like_http1() {
    let (upstream, gw) = start(ROUTES).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let resp = h2.get(gw.url("/deep/%61b?x=%2F")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.last().path, "/deep/ab");
    assert_eq!(upstream.last().query.as_deref(), Some("x=%2F"));
}

#[tokio::test]
async fn a_raw_backslash_in_the_path_is_400() {
    let (upstream, gw) = start(ROUTES).await;
    let (status, answer) = raw_request(gw.addr, "/deep/a\\..\\admin").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(raw_json(&answer)["reason"], "backslash_in_path");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn targets_that_are_not_absolute_paths_are_400() {
    let (upstream, gw) = start(ROUTES).await;
    for target in ["admin/x", "x:/admin/x", "*"] {
        let (status, answer) = raw_request(gw.addr, target).await;
        assert_eq!(status, 400, "{target}: {answer}");
        assert_eq!(
            raw_json(&answer)["reason"],
            "target_not_absolute",
            "{target}"
        );
    }
    // A foreign scheme whose authority disagrees with Host never gets past
    // Pingora's request parser (which answers 400 without a body).
    let (status, _) = raw_request(gw.addr, "ftp://h/admin/x").await;
    assert_eq!(status, 400);
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn absolute_form_targets_route_by_their_authority_and_are_forwarded_in_origin_form() {
    let (upstream, gw) = start(
        "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: billing
    match: { path: \"/billing/**\", host: api.example.com }
    upstream: api
    limits: [{ name: billing, key: ip, rate: 1/minute }]
  - name: rest
    match: { path: /** }
    upstream: api
",
    )
    .await;
    let request =
        b"GET http://api.example.com/billing/./x?q=1 HTTP/1.1\r\nConnection: close\r\n\r\n";
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.path, "/billing/x");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    assert_eq!(seen.header("host").as_deref(), Some("api.example.com"));
    // The host rule applied: its limit now denies the same request.
    let (status, _) = common::raw_exchange("127.0.0.1", gw.addr, request).await;
    assert_eq!(status, 429);
}

const HOST_RULES: &str = "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: billing
    match: { path: \"/**\", host: api.example.com }
    upstream: api
    limits: [{ name: billing, key: ip, rate: 1/minute }]
  - name: rest
    match: { path: /** }
    upstream: api
";

/// A raw GET / with exactly these header lines.
fn get_with(headers: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\n{headers}Connection: close\r\n\r\n").into_bytes()
}

#[tokio::test]
async fn a_host_with_a_trailing_dot_is_limited_by_its_host_rule() {
    let (_upstream, gw) = start(HOST_RULES).await;
    let plain = get_with("Host: api.example.com\r\n");
    let dotted = get_with("Host: api.example.com.\r\n");
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, &plain).await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, &dotted).await;
    assert_eq!(status, 429, "{answer}");
    assert_eq!(raw_json(&answer)["rule"], "billing");
}

#[tokio::test]
async fn the_upstream_receives_the_normalized_host() {
    let (upstream, gw) = start(HOST_RULES).await;
    let request = get_with("Host: API.Example.com.:8080\r\n");
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, &request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        upstream.last().header("host").as_deref(),
        Some("api.example.com:8080")
    );
}

#[tokio::test]
async fn a_host_with_two_trailing_dots_is_refused_with_400() {
    let (upstream, gw) = start(HOST_RULES).await;
    let request = get_with("Host: api.example.com..\r\n");
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, &request).await;
    assert_eq!(status, 400, "{answer}");
    let body = raw_json(&answer);
    assert_eq!(body["error"], "bad_request");
    assert_eq!(body["reason"], "host_empty_label");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn an_h2c_authority_is_normalized_like_a_host() {
    let (upstream, gw) = start(HOST_RULES).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("api.example.com.", gw.addr)
        .build()
        .unwrap();
    let url = format!("http://API.example.com.:{}/", gw.addr.port());
    let first = h2.get(&url).send().await.unwrap();
    assert_eq!(first.version(), reqwest::Version::HTTP_2);
    assert_eq!(first.status(), 200);
    assert_eq!(
        upstream.last().header("host"),
        Some(format!("api.example.com:{}", gw.addr.port()))
    );
    assert_eq!(h2.get(&url).send().await.unwrap().status(), 429);
}

#[tokio::test]
async fn methods_and_host_select_the_rule() {
    let (_upstream, gw) = start(
        "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: writes
    match: { path: /items, methods: [POST], host: \"*.example.com\" }
    upstream: api
    limits: [{ name: writes, key: ip, rate: 100/minute }]
  - name: rest
    match: { path: /** }
    upstream: api
    limits: [{ name: rest, key: ip, rate: 100/minute }]
",
    )
    .await;
    let c = client();
    let policy = |resp: &reqwest::Response| header_of(resp, "ratelimit-policy").unwrap();
    let post = c
        .post(gw.url("/items"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert!(policy(&post).starts_with("\"writes\""));
    let get = c
        .get(gw.url("/items"))
        .header("host", "api.example.com")
        .send()
        .await
        .unwrap();
    assert!(policy(&get).starts_with("\"rest\""));
    let other_host = c
        .post(gw.url("/items"))
        .header("host", "example.org")
        .send()
        .await
        .unwrap();
    assert!(policy(&other_host).starts_with("\"rest\""));
}

#[tokio::test]
async fn a_non_utf8_forwarded_for_cannot_hide_the_client_behind_its_proxy() {
    let (upstream, gw) = start_with(
        "  trusted_proxies: [\"127.0.0.2/32\"]\n",
        &api_rule(
            "    exempt: [{ ip: [\"127.0.0.0/8\"] }]
    limits: [{ key: ip, rate: 1/minute }]
",
        ),
    )
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: \xff, 198.51.100.7\r\nConnection: close\r\n\r\n";
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(common::raw_exchange("127.0.0.2", gw.addr, request).await.0);
    }
    // Not exempt as the proxy's address: limited as 198.51.100.7.
    assert_eq!(statuses, vec![200, 429]);
    assert_eq!(
        upstream.last().header("x-real-ip").as_deref(),
        Some("198.51.100.7")
    );
}

#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_dropped_and_from_trusted_kept() {
    let (upstream, gw) = start_with("  trusted_proxies: [\"127.0.0.2/32\"]\n", &api_rule("")).await;
    let send = |from: &'static str| {
        client_from(from)
            .get(gw.url("/"))
            .header("x-forwarded-proto", "https")
            .header("x-real-ip", "6.6.6.6")
            .header("forwarded", "for=6.6.6.6")
            .send()
    };
    send("127.0.0.3").await.unwrap();
    let untrusted = upstream.last();
    assert_eq!(
        untrusted.header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(untrusted.header("x-real-ip").as_deref(), Some("127.0.0.3"));
    assert_eq!(untrusted.header("forwarded"), None);
    send("127.0.0.2").await.unwrap();
    let trusted = upstream.last();
    assert_eq!(
        trusted.header("x-forwarded-proto").as_deref(),
        Some("https")
    );
    assert_eq!(trusted.header("forwarded").as_deref(), Some("for=6.6.6.6"));
}

#[tokio::test]
async fn conflicting_api_keys_are_refused_with_400() {
    let (upstream, gw) = start(&api_rule(
        "    limits: [{ name: per-key, key: api_key, rate: 10/minute }]
",
    ))
    .await;
    let resp = client()
        .get(gw.url("/"))
        .header("x-api-key", "fresh-random-key")
        .header("authorization", "Bearer the-real-key")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "conflicting_key");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn two_different_bearer_tokens_are_refused_with_400() {
    let (upstream, gw) = start(&api_rule(
        "    limits: [{ name: per-key, key: api_key, rate: 10/minute }]
",
    ))
    .await;
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer fresh-random-key\r\nAuthorization: Bearer the-real-key\r\nConnection: close\r\n\r\n";
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, request).await;
    assert_eq!(status, 400, "{answer}");
    let body = raw_json(&answer);
    assert_eq!(body["error"], "conflicting_key");
    assert_eq!(body["rule"], "api");
    assert_eq!(body["limit"], "per-key");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_shadow_limit_with_a_missing_key_lets_the_request_through() {
    let (_upstream, gw) = start(&api_rule(
        "    limits: [{ key: { header: x-tenant }, rate: 1/minute, mode: shadow }]
",
    ))
    .await;
    let c = client();
    assert_eq!(c.get(gw.url("/")).send().await.unwrap().status(), 200);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(
            "tollgate_requests_total{outcome=\"shadow_limited\",plan=\"\",rule=\"api\"} 1"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_missing_key_401_carries_a_challenge() {
    let (_upstream, gw) = start(MISSING).await;
    let resp = client().get(gw.url("/deny")).send().await.unwrap();
    assert_eq!(
        header_of(&resp, "www-authenticate").as_deref(),
        Some("ApiKey realm=\"tollgate\", header=\"x-tenant\"")
    );
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_a_504_json() {
    let (silent, _task) = common::silent_upstream().await;
    let gw = Gateway::start(
        &config(
            "
upstreams: { slow: { servers: [\"{upstream}\"], read_timeout: 300ms, tunnel_idle_timeout: 300ms } }
rules:
  - name: api
    match: { path: /** }
    upstream: slow
",
        ),
        silent,
    )
    .await;
    let c = client();
    let resp = c.get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
    // An Upgrade header does not buy a request an unbounded wait.
    let upgrade = c
        .get(gw.url("/"))
        .header("connection", "upgrade")
        .header("upgrade", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(upgrade.status(), 504);
}

#[tokio::test]
async fn concurrent_requests_skip_a_dead_server_in_the_pool() {
    let (_a, _b, gw) = start_pool_with_a_dead_server().await;
    let c = client();
    let requests = (0..60).map(|_| c.get(gw.url("/")).send());
    let results = futures_util::future::join_all(requests).await;
    let statuses: Vec<u16> = results
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    assert_eq!(statuses, vec![200; 60]);
}

#[tokio::test]
async fn websocket_sessions_through_the_gateway_are_not_dropped_after_the_101() {
    let (_upstream, gw) = start(
        "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: stream
    match: { path: \"/ws/*\" }
    upstream: api
",
    )
    .await;
    // Pingora's own proxy loop drops 0.2–1.4 % of such sessions (#946).
    for i in 0..300 {
        let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
            .await
            .unwrap();
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = ws
            .next()
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("session {i}: {e}"));
        assert_eq!(echoed, Message::text(text));
        ws.close(None).await.unwrap();
    }
}

#[tokio::test]
async fn an_upgrade_the_upstream_declines_is_relayed_as_a_plain_response() {
    let (upstream, gw) = start(ROUTES).await;
    let request =
        b"GET /deep/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, request).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(raw_json(&answer)["path"], "/deep/x");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("ratelimit-policy: \"deep\""),
        "{answer}"
    );
    assert_eq!(upstream.count(), 1);
}

const STREAM: &str = "
upstreams: { api: { servers: [\"{upstream}\"], tunnel_idle_timeout: 1s } }
rules:
  - name: stream
    match: { path: \"/**\" }
    upstream: api
";

#[tokio::test]
async fn a_quiet_tunnel_lives_until_its_idle_timeout() {
    let (_upstream, gw) = start(STREAM).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    ws.send(Message::text("still open")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still open")
    );
    tokio::time::sleep(std::time::Duration::from_millis(1600)).await;
    let after = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        !matches!(after, Some(Ok(Message::Text(_)))),
        "the idle tunnel was closed: {after:?}"
    );
}

#[tokio::test]
async fn a_tunnel_closed_for_idleness_gets_a_1001_close_frame() {
    let (_upstream, gw) = start(STREAM).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
        .await
        .expect("closed within the idle timeout and a margin");
    match first {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1001);
            assert_eq!(frame.reason.as_str(), "idle timeout");
        }
        other => panic!("no close frame: {other:?}"),
    }
}

#[tokio::test]
async fn a_tunnel_in_use_outlives_its_idle_timeout() {
    let (_upstream, gw) = start(STREAM).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    // A message every 400 ms for 2 s: never 1 s (the idle timeout) quiet.
    for i in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        assert!(
            matches!(&echoed, Some(Ok(Message::Text(t))) if t.as_str() == text),
            "message {i} after {} ms: {echoed:?}",
            (i + 1) * 400
        );
    }
}

#[tokio::test]
async fn large_messages_flow_both_ways_at_once_without_stalling() {
    let (_upstream, gw) = start(STREAM).await;
    let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let messages: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 64 * 1024]).collect();
    let sent = messages.clone();
    let writer = tokio::spawn(async move {
        for m in sent {
            sink.send(Message::binary(m)).await.unwrap();
        }
        sink
    });
    for expected in &messages {
        let got = tokio::time::timeout(std::time::Duration::from_secs(20), stream.next())
            .await
            .expect("the tunnel stalled")
            .unwrap()
            .unwrap();
        assert_eq!(
            got.into_data().as_ref(),
            expected.as_slice(),
            "every byte comes back"
        );
    }
    let _sink = writer.await.unwrap();
}

#[tokio::test]
async fn an_h2c_upgrade_offer_is_stripped_and_proxied_as_a_plain_request() {
    let (upstream, gw) = start(ROUTES).await;
    let request = b"GET /deep/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n";
    let (status, answer) = common::raw_response(gw.addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let seen = upstream.last();
    assert_eq!(seen.header("upgrade"), None);
    assert_eq!(seen.header("http2-settings"), None);
}

#[tokio::test]
async fn a_declined_websocket_upgrade_with_a_chunked_body_is_relayed_whole() {
    let (_upstream, gw) = start(STREAM).await;
    let request = b"GET /chunked HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (status, answer) = common::raw_exchange("127.0.0.1", gw.addr, request).await;
    assert_eq!(status, 200, "{answer}");
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    // Re-chunked by the gateway: strip the chunk framing to compare.
    let text: String = body
        .split("\r\n")
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, part)| part)
        .collect();
    assert_eq!(text, "first part, second part, last part");
}

/// A failed request's warning names it without its query, where API keys
/// travel (on both request paths).
#[tokio::test]
async fn a_proxy_failure_is_logged_without_the_query_and_its_api_key() {
    for path in ["fast", "pingora"] {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        let log = dir.path().join("stderr.log");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let admin: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        // Nothing listens there: every request fails with a 502.
        let closed: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let yaml = format!(
            "{}  http1_path: {path}\n  api_key: {{ query: api_key }}\n{}rules:\n  - {{ name: all, match: {{ path: \"/**\" }}, upstream: api }}\n",
            common::SERVER,
            common::upstreams("api")
        );
        std::fs::write(&config, common::render(&yaml, addr, admin, closed)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        common::wait_listening(addr).await;
        let answer = client()
            .get(format!(
                "http://{addr}/search?q=x&api_key=s3cr3t-live-key-1"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 502, "{path}");
        // The line is written after the answer.
        common::eventually(
            std::time::Duration::from_secs(5),
            "the failure is logged",
            || {
                let logged = std::fs::read_to_string(&log).is_ok_and(|t| t.contains("GET /search"));
                async move { logged }
            },
        )
        .await;
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("s3cr3t-live-key-1"), "{path}: {text}");
    }
}
