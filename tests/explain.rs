//! `tollgate check --explain` and a live gateway give the same answer to the
//! same request: each case of one table goes through both, and the status
//! explain predicts is the one the gateway answers.

mod common;

use std::path::Path;

use common::{client_from, upstreams, Gateway, Upstream, SERVER};
use tollgate::check::{explain, Hypothetical};
use tollgate::config::load_str;

/// The gateway's config: [`RULES`], the file watcher off.
fn config() -> String {
    format!("{SERVER}  watch: false\n{}{RULES}", upstreams("api"))
}

const RULES: &str = r#"
rules:
  - name: shadow-key
    match: { path: /shadow }
    upstream: api
    limits: [{ name: by-key, key: api_key, rate: 5/s, mode: shadow }]
  - name: deny-key
    match: { path: /deny }
    upstream: api
    limits: [{ name: by-key, key: api_key, rate: 5/s }]
  - name: skip-key
    match: { path: /skip }
    upstream: api
    limits: [{ name: by-key, key: api_key, rate: 5/s, missing: skip }]
  - name: ip-fallback
    match: { path: /fallback }
    upstream: api
    limits: [{ name: by-key, key: api_key, rate: 5/s, missing: ip }]
  - name: costly
    match: { path: /cost }
    upstream: api
    limits: [{ name: items, key: ip, rate: 5/s, cost: { header: x-items, max: 5 } }]
  - name: exempt-local
    match: { path: /exempt }
    upstream: api
    exempt: [{ ip: ["127.0.0.2/32"] }]
    limits: [{ name: by-key, key: api_key, rate: 5/s }]
  - name: posts
    match: { path: /posts, methods: [POST] }
    upstream: api
  - name: hosted
    match: { path: /**, host: api.example.com }
    upstream: api
    limits: [{ name: by-key, key: api_key, rate: 5/s }]
"#;

/// One request: method and path, headers, and the peer it comes from.
struct Case {
    request: &'static str,
    headers: &'static [&'static str],
    peer: &'static str,
    /// What both must answer (200: the upstream's answer to a proxied request).
    status: u16,
}

const fn case(
    request: &'static str,
    headers: &'static [&'static str],
    peer: &'static str,
    status: u16,
) -> Case {
    Case {
        request,
        headers,
        peer,
        status,
    }
}

const CASES: &[Case] = &[
    // The defect this table was written for: a shadow limit without its key
    // only counts; the request goes through.
    case("GET /shadow", &[], "127.0.0.1", 200),
    case("GET /deny", &[], "127.0.0.1", 401),
    case("GET /deny", &["x-api-key: k1"], "127.0.0.1", 200),
    case(
        "GET /deny",
        &["x-api-key: a", "x-api-key: b"],
        "127.0.0.1",
        400,
    ),
    case(
        "GET /deny",
        &["authorization: Bearer a", "authorization: Bearer b"],
        "127.0.0.1",
        400,
    ),
    case("GET /skip", &[], "127.0.0.1", 200),
    case("GET /fallback", &[], "127.0.0.1", 200),
    case("GET /cost", &["x-items: 3"], "127.0.0.1", 200),
    case("GET /cost", &["x-items: 6"], "127.0.0.1", 400),
    case("GET /cost", &["x-items: many"], "127.0.0.1", 400),
    case("GET /exempt", &[], "127.0.0.2", 200),
    case("GET /exempt", &[], "127.0.0.3", 401),
    case("POST /posts", &[], "127.0.0.1", 200),
    case("GET /posts", &[], "127.0.0.1", 404),
    case(
        "GET /elsewhere",
        &["host: API.example.com."],
        "127.0.0.1",
        401,
    ),
    case(
        "GET /elsewhere",
        &["host: api.example.com.."],
        "127.0.0.1",
        400,
    ),
    case("GET /a/%2Fb", &[], "127.0.0.1", 400),
];

/// The status `--explain` predicts: the refusal's, or 200 from the upstream.
fn predicted_status(explanation: &str) -> u16 {
    let result = explanation
        .lines()
        .find_map(|l| l.strip_prefix("result       "))
        .unwrap_or_else(|| panic!("no result line in {explanation}"));
    if result.starts_with("proxied") {
        return 200;
    }
    result
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {result:?}"))
}

async fn live_status(gw: &Gateway, case: &Case) -> u16 {
    let (method, path) = case.request.split_once(' ').unwrap();
    let mut request = client_from(case.peer).request(method.parse().unwrap(), gw.url(path));
    for header in case.headers {
        let (name, value) = header.split_once(':').unwrap();
        request = request.header(name.trim(), value.trim());
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn explain_predicts_what_a_live_gateway_answers() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(), upstream.addr).await;
    let rt = load_str(&gw.render(&config(), upstream.addr), Path::new("t.yaml")).unwrap();
    let mut disagreements = Vec::new();
    for case in CASES {
        let headers: Vec<String> = case.headers.iter().map(|h| h.to_string()).collect();
        let hypothetical =
            Hypothetical::parse(case.request, &headers, case.peer.parse().unwrap()).unwrap();
        let explanation = explain(&rt, &hypothetical).await;
        let predicted = predicted_status(&explanation);
        let live = live_status(&gw, case).await;
        if (predicted, live) != (case.status, case.status) {
            disagreements.push(format!(
                "{} {:?} from {}: expected {}, explain {predicted}, gateway {live}\n{explanation}",
                case.request, case.headers, case.peer, case.status
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n"));
}
