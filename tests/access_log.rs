//! The access log against a live gateway: every outcome (allowed, limited,
//! exempt, 401, 404, 502, a WebSocket session) writes one line that parses
//! as JSON; request ids go upstream and back; `traceparent` passes through;
//! no API key reaches the log.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

use common::{client, client_from, eventually, free_port, header_of, Gateway, Upstream};

const SECRET: &str = "sk-live-do-not-log-me";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config(dead: SocketAddr) -> String {
    format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
access_log: {{ format: json, path: logs/access.log }}
upstreams:
  api: {{ servers: [\"{{upstream}}\"] }}
  dead: {{ servers: [\"{dead}\"] }}
rules:
  - name: open
    match: {{ path: /ok }}
    upstream: api
    limits: [ {{ name: per-ip, key: ip, rate: 1000/hour }} ]
  - name: tight
    match: {{ path: /limited }}
    upstream: api
    limits: [ {{ name: one, key: ip, rate: 1/hour, algorithm: fixed_window }} ]
    exempt: [ {{ ip: [\"127.0.0.2/32\"] }} ]
  - name: keyed
    match: {{ path: /keyed }}
    upstream: api
    limits: [ {{ name: per-key, key: api_key, rate: 10/hour, missing: deny }} ]
  - name: broken
    match: {{ path: /dead }}
    upstream: dead
  - name: sockets
    match: {{ path: \"/ws/**\" }}
    upstream: api
"
    )
}

/// The log's lines, each parsed as JSON, once there are `n`.
async fn lines(gw: &Gateway, n: usize) -> Vec<Value> {
    let path = gw.config_path.parent().unwrap().join("logs/access.log");
    eventually(
        Duration::from_secs(10),
        "the access log has every line",
        || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .map(|t| t.lines().count() >= n)
                    .unwrap_or(false)
            }
        },
    )
    .await;
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains(SECRET), "a key reached the log: {text}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn find<'a>(lines: &'a [Value], path: &str, status: u64) -> &'a Value {
    lines
        .iter()
        .find(|l| l["path"] == path && l["status"] == status)
        .unwrap_or_else(|| panic!("no line for {path} {status}: {lines:#?}"))
}

#[tokio::test]
async fn every_outcome_writes_one_json_line() {
    let upstream = Upstream::start().await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gw = Gateway::start_with_files(&config(dead), upstream.addr, &[("logs/.keep", "")]).await;
    let c = client();
    let get = |path: &str| c.get(gw.url(path)).header("x-api-key", SECRET).send();
    assert_eq!(
        get(&format!("/ok?api_key={SECRET}"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(get("/limited").await.unwrap().status(), 200);
    assert_eq!(get("/limited").await.unwrap().status(), 429);
    let exempt = client_from("127.0.0.2")
        .get(gw.url("/limited"))
        .send()
        .await;
    assert_eq!(exempt.unwrap().status(), 200);
    let missing = c.get(gw.url("/keyed")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(get("/nowhere").await.unwrap().status(), 404);
    assert_eq!(get("/dead").await.unwrap().status(), 502);
    let (mut ws, _) = tokio_tungstenite::connect_async(gw.ws_url("/ws/echo"))
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert!(ws.next().await.unwrap().unwrap().is_text());
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    let lines = lines(&gw, 8).await;
    assert_eq!(lines.len(), 8, "{lines:#?}");
    let ok = find(&lines, "/ok", 200);
    assert_eq!(ok["outcome"], "allowed");
    assert_eq!(ok["rule"], "open");
    assert_eq!(ok["upstream"], "api");
    assert_eq!(ok["server"], upstream.addr.to_string());
    assert_eq!(ok["limit"]["name"], "per-ip");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["method"], "GET");
    assert!(ok["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(ok["upstream_ms"].as_f64().is_some());
    assert!(ok["limiter_ms"].as_f64().is_some());
    let limited = find(&lines, "/limited", 429);
    assert_eq!(limited["outcome"], "limited");
    assert_eq!(limited["limit"]["name"], "one");
    assert_eq!(limited["limit"]["allowed"], false);
    assert!(limited.get("upstream").is_none());
    let exempt = lines
        .iter()
        .find(|l| l["outcome"] == "exempt")
        .expect("an exempt line");
    assert_eq!(exempt["client_ip"], "127.0.0.2");
    assert_eq!(find(&lines, "/keyed", 401)["outcome"], "missing_key");
    assert_eq!(find(&lines, "/nowhere", 404)["outcome"], "no_route");
    let failed = find(&lines, "/dead", 502);
    assert_eq!(failed["upstream"], "dead");
    assert!(failed["error"].is_string(), "{failed}");
    let session = find(&lines, "/ws/echo", 101);
    assert_eq!(session["websocket"], true);
    for line in &lines {
        assert!(line["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn the_request_id_goes_upstream_and_back_and_traceparent_passes_through() {
    let upstream = Upstream::start().await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let gw = Gateway::start_with_files(&config(dead), upstream.addr, &[("logs/.keep", "")]).await;
    let answer = client()
        .get(gw.url("/ok"))
        .header("traceparent", TRACEPARENT)
        .header("x-request-id", "chosen-by-the-client")
        .send()
        .await
        .unwrap();
    let id = header_of(&answer, "x-request-id").expect("the answer carries the request id");
    // The client is no trusted proxy: its id is replaced.
    assert_ne!(id, "chosen-by-the-client");
    let seen = upstream.last();
    assert_eq!(seen.header("x-request-id"), Some(id.clone()));
    assert_eq!(seen.header("traceparent").as_deref(), Some(TRACEPARENT));
    let lines = lines(&gw, 1).await;
    assert_eq!(lines[0]["request_id"], id);
    assert_eq!(lines[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
}

#[tokio::test]
async fn the_client_ip_is_the_one_trusted_proxies_vouch_for() {
    let upstream = Upstream::start().await;
    let dead: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let yaml = config(dead).replace(
        "  threads: 2\n",
        "  threads: 2\n  trusted_proxies: [\"127.0.0.3/32\"]\n",
    );
    let gw = Gateway::start_with_files(&yaml, upstream.addr, &[("logs/.keep", "")]).await;
    let answer = client_from("127.0.0.3")
        .get(gw.url("/ok"))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(lines(&gw, 1).await[0]["client_ip"], "203.0.113.9");
}
