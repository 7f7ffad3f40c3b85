//! Hot reload, the admin API and metrics hygiene, against a real gateway.

mod common;

use std::collections::HashSet;
use std::process::{Child, Command};
use std::time::Duration;

use common::{client, eventually, header_of, upstreams, Gateway, Upstream, SERVER};
use serde_json::Value;

/// A config with the file watcher on or off, and these rules.
fn config(watch: bool, rules: &str) -> String {
    format!(
        "{SERVER}  watch: {watch}\n{}rules:\n{rules}",
        upstreams("api")
    )
}

const RULE_A: &str = "
  - name: a
    match: { path: /a }
    upstream: api
";

const RULE_B: &str = "
  - name: b
    match: { path: /b }
    upstream: api
";

async fn status(gw: &Gateway, path: &str) -> u16 {
    client()
        .get(gw.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn admin_json(gw: &Gateway, method: reqwest::Method, path: &str) -> (u16, Value) {
    let resp = client()
        .request(method, gw.admin_url(path))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn post_reload(gw: &Gateway) -> (u16, Value) {
    admin_json(gw, reqwest::Method::POST, "/-/reload").await
}

/// The file watcher must pick an edit up within a second.
const PICKUP: Duration = Duration::from_secs(1);

#[tokio::test]
async fn editing_the_file_in_place_serves_the_new_rule_within_a_second() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    assert_eq!(status(&gw, "/b").await, 404);
    gw.rewrite(&config(true, &format!("{RULE_A}{RULE_B}")), upstream.addr);
    eventually(PICKUP, "the new rule serves", || async {
        status(&gw, "/b").await == 200
    })
    .await;
}

#[tokio::test]
async fn a_file_renamed_into_place_serves_the_new_rule_within_a_second() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    let staged = gw.config_path.with_extension("yaml.new");
    std::fs::write(&staged, gw.render(&config(true, RULE_B), upstream.addr)).unwrap();
    std::fs::rename(&staged, &gw.config_path).unwrap();
    eventually(PICKUP, "the renamed file serves", || async {
        status(&gw, "/b").await == 200
    })
    .await;
    assert_eq!(status(&gw, "/a").await, 404);
}

#[tokio::test]
async fn a_broken_edit_keeps_the_old_rules_and_is_reported() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    let broken = config(
        true,
        &format!("{RULE_A}  - name: b\n    match: {{ path: /b }}\n    upstream: nowhere\n"),
    );
    gw.rewrite(&broken, upstream.addr);
    eventually(PICKUP, "the failure is reported", || async {
        let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
        config["last_reload"]["result"] == "failure"
    })
    .await;
    assert_eq!(status(&gw, "/a").await, 200);
    assert_eq!(status(&gw, "/b").await, 404);
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    let problem = &config["last_reload"]["problems"][0];
    assert_eq!(problem["path"], "rules[1].upstream");
    assert_eq!(problem["line"], 15);
    assert_eq!(config["generation"], 1);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_half_written_file_changes_nothing() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let full = gw.render(&config(false, &format!("{RULE_A}{RULE_B}")), upstream.addr);
    std::fs::write(&gw.config_path, &full[..full.len() - 20]).unwrap();
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(status(&gw, "/a").await, 200);
    std::fs::write(&gw.config_path, &full).unwrap();
    let (code, _) = post_reload(&gw).await;
    assert_eq!(code, 200);
    assert_eq!(status(&gw, "/b").await, 200);
}

#[tokio::test]
async fn a_slow_writer_is_read_only_once_it_closes_the_file() {
    use std::io::Write;
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    let full = gw.render(&config(true, RULE_B), upstream.addr);
    let mut file = std::fs::File::create(&gw.config_path).unwrap();
    file.write_all(&full.as_bytes()[..full.len() / 2]).unwrap();
    file.flush().unwrap();
    // A writer pausing mid-file (a slow copy): the truncated file stays unread.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status(&gw, "/a").await, 200);
    file.write_all(&full.as_bytes()[full.len() / 2..]).unwrap();
    drop(file);
    eventually(PICKUP, "the complete file serves", || async {
        status(&gw, "/b").await == 200
    })
    .await;
    let metrics = gw.metrics().await;
    assert!(!metrics.contains("result=\"failure\""), "{metrics}");
}

#[tokio::test]
async fn an_emptied_file_is_refused_on_reload() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    std::fs::write(&gw.config_path, "").unwrap();
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["problems"][0]["message"]
        .as_str()
        .unwrap()
        .contains("empty"));
    assert_eq!(status(&gw, "/a").await, 200);
}

/// What `tollgate check` prints for a file holding `text`.
fn check_output(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn last_reload_message(gw: &Gateway) -> Option<String> {
    let (_, config) = admin_json(gw, reqwest::Method::GET, "/-/config").await;
    config["last_reload"]["problems"][0]["message"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test]
async fn a_file_of_only_comments_is_refused_alike_by_the_watcher_post_reload_and_check() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    let comments = "# all rules removed for now\n";
    std::fs::write(&gw.config_path, comments).unwrap();
    eventually(
        Duration::from_secs(5),
        "the watcher refuses the file",
        || async { last_reload_message(&gw).await.is_some() },
    )
    .await;
    let from_watcher = last_reload_message(&gw).await.unwrap();
    assert!(from_watcher.contains("the file is empty"), "{from_watcher}");
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["problems"][0]["message"], from_watcher.as_str());
    assert!(check_output(comments).contains(&from_watcher));
    assert_eq!(status(&gw, "/a").await, 200);
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(
        config["watching"], true,
        "the server section was not reset: {config}"
    );
}

#[tokio::test]
async fn a_file_without_rules_is_refused_and_the_old_rules_keep_serving() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let (code, body) = post_reload_of(&gw, &config(false, ""), upstream.addr).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["problems"][0]["path"], "rules");
    assert_eq!(status(&gw, "/a").await, 200);
}

async fn post_reload_of(gw: &Gateway, yaml: &str, upstream: std::net::SocketAddr) -> (u16, Value) {
    gw.rewrite(yaml, upstream);
    post_reload(gw).await
}

#[tokio::test]
async fn reverting_a_broken_edit_clears_the_reported_failure() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let original = std::fs::read_to_string(&gw.config_path).unwrap();
    std::fs::write(&gw.config_path, "rules: [").unwrap();
    assert_eq!(post_reload(&gw).await.0, 422);
    std::fs::write(&gw.config_path, original).unwrap();
    assert_eq!(post_reload(&gw).await.0, 200);
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(config["last_reload"]["result"], "reverted");
}

#[tokio::test]
async fn post_reload_after_the_watcher_applied_an_edit_still_shows_what_changed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(true, RULE_A), upstream.addr).await;
    gw.rewrite(&config(true, RULE_B), upstream.addr);
    eventually(PICKUP, "the watcher applies the edit", || async {
        status(&gw, "/b").await == 200
    })
    .await;
    let (code, body) = post_reload(&gw).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("unchanged")));
    assert_eq!(body["summary"]["rules"]["added"], serde_json::json!(["b"]));
}

#[tokio::test]
async fn post_reload_answers_a_summary_of_what_changed() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    gw.rewrite(&config(false, RULE_B), upstream.addr);
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "reloaded");
    let summary = &body["summary"];
    assert_eq!(summary["generation"], 2);
    assert_eq!(summary["rules"]["added"], serde_json::json!(["b"]));
    assert_eq!(summary["rules"]["removed"], serde_json::json!(["a"]));
    assert_eq!(status(&gw, "/b").await, 200);
    let (code, body) = post_reload(&gw).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("unchanged")));
}

#[tokio::test]
async fn a_failed_admin_reload_answers_422_with_every_problem() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let bad = config(
        false,
        "
  - name: x
    match: { path: /x, methods: [FETCH] }
    upstream: nowhere
",
    );
    gw.rewrite(&bad, upstream.addr);
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    let paths: Vec<&str> = body["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec!["rules[0].match.methods[0]", "rules[0].upstream"]
    );
    assert_eq!(status(&gw, "/a").await, 200);
}

#[tokio::test]
async fn readyz_says_edits_are_not_followed_when_watch_is_off() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    common::wait_watching(gw.admin).await;
    let (_, ready) = admin_json(&gw, reqwest::Method::GET, "/readyz").await;
    assert_eq!(ready["watching"], false, "{ready}");
    assert_eq!(ready["signals"], true, "{ready}");
}

/// A FIFO would hold the reader until something writes to it, and with it
/// the reload lock: every later reload would hang.
#[tokio::test]
async fn a_fifo_in_place_of_the_file_is_refused_and_later_reloads_still_work() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    std::fs::remove_file(&gw.config_path).unwrap();
    let made = Command::new("mkfifo")
        .arg(&gw.config_path)
        .status()
        .unwrap();
    assert!(made.success());
    let (code, body) = tokio::time::timeout(Duration::from_secs(10), post_reload(&gw))
        .await
        .expect("a reload of a FIFO answers at once");
    assert_eq!(code, 422, "{body}");
    assert!(body.to_string().contains("not a regular file"), "{body}");
    std::fs::remove_file(&gw.config_path).unwrap();
    gw.rewrite(&config(false, RULE_B), upstream.addr);
    let (code, body) = tokio::time::timeout(Duration::from_secs(10), post_reload(&gw))
        .await
        .expect("the next reload answers");
    assert_eq!(code, 200, "{body}");
    assert_eq!(status(&gw, "/b").await, 200);
}

const COUNTED: &str = "
  - name: other
    match: { path: /other }
    upstream: api
  - name: counted
    match: { path: /counted }
    upstream: api
    limits: [{ name: per-ip, key: ip, rate: RATE }]
";

fn counted(rate: &str, other_path: &str) -> String {
    config(
        false,
        &COUNTED.replace("RATE", rate).replace("/other", other_path),
    )
}

/// The `r` (remaining) of the `RateLimit` header.
async fn remaining(gw: &Gateway) -> (u16, Option<u64>) {
    let resp = client().get(gw.url("/counted")).send().await.unwrap();
    let r = header_of(&resp, "ratelimit").and_then(|v| {
        v.split(';')
            .find_map(|p| p.strip_prefix("r="))
            .and_then(|r| r.parse().ok())
    });
    (resp.status().as_u16(), r)
}

#[tokio::test]
async fn a_limit_keeps_its_count_through_a_reload_that_reorders_and_edits_other_rules() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&counted("10/minute", "/other"), upstream.addr).await;
    for _ in 0..8 {
        remaining(&gw).await;
    }
    assert_eq!(remaining(&gw).await, (200, Some(1)), "9 of 10 used");
    // Rules reordered, the other rule edited.
    let reordered = config(
        false,
        "
  - name: counted
    match: { path: /counted }
    upstream: api
    limits: [{ name: per-ip, key: ip, rate: 10/minute }]
  - name: other
    match: { path: /elsewhere }
    upstream: api
",
    );
    gw.rewrite(&reordered, upstream.addr);
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["summary"]["limits"]["kept"],
        serde_json::json!(["counted/per-ip"])
    );
    assert_eq!(
        body["summary"]["rules"]["changed"],
        serde_json::json!(["other"])
    );
    assert_eq!(
        remaining(&gw).await,
        (200, Some(0)),
        "the tenth request, still counted"
    );
    assert_eq!(remaining(&gw).await.0, 429);
}

#[tokio::test]
async fn a_changed_limit_starts_fresh() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&counted("3/minute", "/other"), upstream.addr).await;
    for _ in 0..3 {
        remaining(&gw).await;
    }
    assert_eq!(remaining(&gw).await.0, 429);
    gw.rewrite(&counted("5/minute", "/other"), upstream.addr);
    let (_, body) = post_reload(&gw).await;
    assert_eq!(
        body["summary"]["limits"]["reset"],
        serde_json::json!(["counted/per-ip"])
    );
    assert_eq!(remaining(&gw).await, (200, Some(4)));
}

/// With `store.release_after` set short for the test.
fn release_quickly(yaml: &str) -> String {
    yaml.replace("upstreams:", "store: { release_after: 200ms }\nupstreams:")
}

#[tokio::test]
async fn a_removed_limits_state_is_released() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(
        &release_quickly(&counted("3/minute", "/other")),
        upstream.addr,
    )
    .await;
    remaining(&gw).await;
    let tracked = || async {
        let metrics = gw.metrics().await;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_tracked_keys "))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(tracked().await.as_deref(), Some("1"));
    gw.rewrite(&release_quickly(&config(false, RULE_A)), upstream.addr);
    post_reload(&gw).await;
    eventually(Duration::from_secs(5), "the state is released", || async {
        tracked().await.as_deref() == Some("0")
    })
    .await;
}

#[tokio::test]
async fn a_limit_removed_and_restored_before_its_release_keeps_its_count() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&counted("3/minute", "/other"), upstream.addr).await;
    for _ in 0..2 {
        remaining(&gw).await;
    }
    gw.rewrite(&config(false, RULE_A), upstream.addr);
    assert_eq!(post_reload(&gw).await.0, 200);
    gw.rewrite(&counted("3/minute", "/other"), upstream.addr);
    let (_, body) = post_reload(&gw).await;
    assert_eq!(
        body["summary"]["limits"]["added"],
        serde_json::json!(["counted/per-ip"])
    );
    assert_eq!(
        remaining(&gw).await,
        (200, Some(0)),
        "the third request of three"
    );
}

#[tokio::test]
async fn restart_only_settings_are_reported_and_the_rest_is_applied() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let moved = config(false, &format!("{RULE_A}{RULE_B}")).replace("threads: 2", "threads: 3");
    let moved = gw
        .render(&moved, upstream.addr)
        .replace(&gw.addr.to_string(), "127.0.0.1:1");
    std::fs::write(&gw.config_path, moved).unwrap();
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["summary"]["restart_required"],
        serde_json::json!(["server.listen", "server.threads"])
    );
    // Still serving on the old address, with the new rule.
    assert_eq!(status(&gw, "/b").await, 200);
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(
        config["restart_required"],
        serde_json::json!(["server.listen", "server.threads"])
    );
}

#[tokio::test]
async fn an_in_flight_request_finishes_on_the_snapshot_it_started_with() {
    let upstream = Upstream::start().await;
    let slow = "
  - name: slow
    match: { path: /slow }
    upstream: api
    limits: [{ name: old-limit, key: ip, rate: 100/minute }]
";
    let gw = Gateway::start(&config(false, slow), upstream.addr).await;
    let in_flight = tokio::spawn({
        let url = gw.url("/slow");
        async move {
            let resp = client().get(url).send().await.unwrap();
            (resp.status().as_u16(), header_of(&resp, "ratelimit-policy"))
        }
    });
    eventually(
        Duration::from_secs(5),
        "the request reaches the upstream",
        || async { upstream.count() == 1 },
    )
    .await;
    gw.rewrite(&config(false, RULE_A), upstream.addr);
    let (code, _) = post_reload(&gw).await;
    assert_eq!(code, 200);
    assert_eq!(
        status(&gw, "/slow").await,
        404,
        "the new config no longer routes it"
    );
    // The response is still written with the old snapshot's rule and limit.
    let (status, policy) = in_flight.await.unwrap();
    assert_eq!(status, 200);
    assert!(policy.is_some_and(|p| p.starts_with("\"old-limit\"")));
}

#[tokio::test]
async fn an_open_websocket_survives_a_reload_that_removes_its_rule() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let upstream = Upstream::start().await;
    let stream = "
  - name: stream
    match: { path: \"/ws/*\" }
    upstream: api
";
    let gw = Gateway::start(&config(false, stream), upstream.addr).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", gw.addr))
        .await
        .unwrap();
    gw.rewrite(&config(false, RULE_A), upstream.addr);
    assert_eq!(post_reload(&gw).await.0, 200);
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    assert!(gw
        .metrics()
        .await
        .contains("tollgate_websocket_connections{rule=\"stream\"} 1"));
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws/echo", gw.addr)).await;
    assert!(refused.is_err(), "the rule is gone for new connections");
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    eventually(
        Duration::from_secs(5),
        "the closed tunnel's gauge is gone",
        || async { !gw.metrics().await.contains("rule=\"stream\"") },
    )
    .await;
}

#[tokio::test]
async fn traffic_through_fifty_reloads_sees_only_the_intended_answers() {
    let upstream = Upstream::start().await;
    let limited = "
  - name: limited
    match: { path: /x }
    upstream: api
    limits: [{ name: per-ip, key: ip, rate: 200/second }]
";
    let gw = Gateway::start(&config(false, limited), upstream.addr).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (gw.url("/x"), stop.clone());
        clients.push(tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            // Bounded: stops when the reloads are done, or after 20 000 requests.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && seen.len() < 5_000 {
                seen.push(match c.get(&url).send().await {
                    Ok(resp) => resp.status().as_u16(),
                    Err(_) => 0,
                });
            }
            seen
        }));
    }
    for i in 0..50 {
        let extra =
            format!("  - {{ name: extra{i}, match: {{ path: /extra{i} }}, upstream: api }}\n");
        gw.rewrite(&config(false, &format!("{limited}{extra}")), upstream.addr);
        let (code, body) = post_reload(&gw).await;
        assert_eq!(code, 200, "reload {i}: {body}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    let unexpected: Vec<&u16> = all.iter().filter(|s| !matches!(s, 200 | 429)).collect();
    assert!(unexpected.is_empty(), "unexpected answers: {unexpected:?}");
    assert!(all.len() >= 50, "the clients barely ran: {}", all.len());
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(config["generation"], 51);
}

#[tokio::test]
async fn metrics_labels_never_come_from_clients() {
    let upstream = Upstream::start().await;
    let rules = "
  - name: keyed
    match: { path: \"/k/**\" }
    upstream: api
    limits:
      - { name: per-key, key: api_key, rate: 2/minute, missing: skip }
      - { name: per-ip, key: ip, rate: 3/minute }
      - { name: per-tenant, key: { header: x-tenant }, rate: 1/minute, missing: deny }
";
    let yaml = config(true, rules).replace(
        "threads: 2",
        "threads: 2\n  trusted_proxies: [\"127.0.0.1/32\"]",
    );
    let gw = Gateway::start(&yaml, upstream.addr).await;
    let c = client();
    let mut planted = Vec::new();
    for i in 0..150u32 {
        let token = format!("zq{:08x}", i.wrapping_mul(2_654_435_761));
        let ip = format!("198.{}.{}.{}", i % 200, (i * 7) % 250, (i * 13) % 250);
        let path = match i % 5 {
            0 => format!("/k/{token}"),
            1 => format!("/nowhere/{token}"),
            2 => format!("/k/{token}%2F"),
            _ => format!("/k/x?api_key={token}"),
        };
        let _ = c
            .get(gw.url(&path))
            .header("x-forwarded-for", &ip)
            .header("x-api-key", &token)
            .header("x-tenant", &token)
            .send()
            .await
            .unwrap();
        planted.push(token);
        planted.push(ip);
    }
    let metrics = gw.metrics().await;
    for value in &planted {
        assert!(
            !metrics.contains(value.as_str()),
            "client data {value} in the metrics"
        );
    }
    let allowed: HashSet<&str> = [
        "",
        "keyed",
        "per-key",
        "per-ip",
        "per-tenant",
        "api",
        "memory",
        "allowed",
        "limited",
        "exempt",
        "shadow_limited",
        "missing_key",
        "unknown_key",
        "invalid_token",
        "too_large",
        "no_route",
        "bad_request",
        "store_error",
        "denied",
        "shadow_denied",
        "success",
        "failure",
        "redis",
        "timeout",
        "error",
        "allow",
        "deny",
        "local",
        "forwarded",
        "dropped",
        "closed",
        "too_big",
        "header_timeout",
        "idle_timeout",
        "max_connections_per_ip",
        "handshake_timeout",
        "handshake_failed",
        "enforce",
        "shadow",
        "+Inf",
    ]
    .into_iter()
    .collect();
    // The one server of the config, as the config names it.
    let server = upstream.addr.to_string();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some(labels) = line
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
        else {
            continue;
        };
        for pair in labels.0.split(',') {
            let (name, value) = pair.split_once('=').unwrap();
            let value = value.trim_matches('"');
            let ok = allowed.contains(value)
                || (name == "le" && value.parse::<f64>().is_ok())
                || (name == "server" && value == server);
            assert!(ok, "label {name}={value:?} in {line}");
        }
    }
}

#[tokio::test]
async fn the_admin_token_guards_everything_but_the_probes() {
    let upstream = Upstream::start().await;
    let yaml = config(false, RULE_A).replace("threads: 2", "threads: 2\n  admin_token: s3cret");
    let gw = Gateway::start(&yaml, upstream.addr).await;
    let c = client();
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            c.get(gw.admin_url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    // The dashboard page holds no data: it asks for the token.
    assert_eq!(c.get(gw.admin_url("/")).send().await.unwrap().status(), 200);
    let events = c.get(gw.admin_url("/-/events")).send().await.unwrap();
    assert_eq!(events.status(), 401, "the live stream");
    for path in ["/metrics", "/-/config", "/-/limits", "/-/bans", "/-/stats"] {
        let denied = c.get(gw.admin_url(path)).send().await.unwrap();
        assert_eq!(denied.status(), 401, "{path}");
        let wrong = c
            .get(gw.admin_url(path))
            .bearer_auth("s3creT")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let ok = c
            .get(gw.admin_url(path))
            .bearer_auth("s3cret")
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{path}");
    }
    let reload = c.post(gw.admin_url("/-/reload")).send().await.unwrap();
    assert_eq!(reload.status(), 401);
    let config = c
        .get(gw.admin_url("/-/config"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!config.contains("s3cret"), "{config}");
}

#[tokio::test]
async fn readyz_and_config_describe_the_running_config() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config(false, RULE_A), upstream.addr).await;
    let (code, ready) = admin_json(&gw, reqwest::Method::GET, "/readyz").await;
    assert_eq!((code, &ready["status"]), (200, &Value::from("ready")));
    let (_, config) = admin_json(&gw, reqwest::Method::GET, "/-/config").await;
    assert_eq!(config["generation"], 1);
    assert_eq!(config["sha256"].as_str().unwrap().len(), 64);
    assert!(config["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(config["config"]["rules"][0]["name"], "a");
    assert!(config["last_reload"].is_null());
}

/// `tollgate run` as a child process: SIGHUP reaches only it.
struct Process {
    child: Child,
    addr: std::net::SocketAddr,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// `tollgate run -c path`, serving on `addr` once this returns.
    async fn run(path: &std::path::Path, addr: std::net::SocketAddr) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "-c"])
            .arg(path)
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let process = Process { child, addr };
        common::wait_listening(addr).await;
        process
    }

    /// The status of a GET of `path`.
    async fn status(&self, path: &str) -> u16 {
        client()
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[tokio::test]
async fn sighup_reloads_the_config() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    std::fs::write(
        &path,
        common::render(&config(false, RULE_A), addr, admin, upstream.addr),
    )
    .unwrap();
    let process = Process::run(&path, addr).await;
    common::wait_listening(admin).await;
    let get = |p: &'static str| process.status(p);
    assert_eq!(get("/b").await, 404);
    // The reloader listens for SIGHUP before it reports `watching`; a signal
    // sent earlier would only be absorbed by the start-up guard.
    common::wait_watching(admin).await;
    std::fs::write(
        &path,
        common::render(&config(false, RULE_B), addr, admin, upstream.addr),
    )
    .unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(Duration::from_secs(5), "SIGHUP reloads", || async {
        get("/b").await == 200
    })
    .await;
    // The process survived the signal (Pingora alone would have died of it).
    assert_eq!(get("/a").await, 404);
}

/// `mv conf conf.old; mv conf.new conf`: the watch followed the old
/// directory, and edits in the new one went unseen.
#[tokio::test]
async fn edits_are_followed_after_the_config_directory_is_swapped() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let path = conf.join("config.yaml");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let render = |rules: &str| common::render(&config(true, rules), addr, admin, upstream.addr);
    std::fs::write(&path, render(RULE_A)).unwrap();
    let process = Process::run(&path, addr).await;
    common::wait_watching(admin).await;
    let get = |p: &'static str| process.status(p);
    let fresh = dir.path().join("conf.new");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(fresh.join("config.yaml"), render(RULE_B)).unwrap();
    std::fs::rename(&conf, dir.path().join("conf.old")).unwrap();
    std::fs::rename(&fresh, &conf).unwrap();
    eventually(Duration::from_secs(5), "the swap is applied", || async {
        get("/b").await == 200
    })
    .await;
    // Edited in place in the directory swapped in.
    let both = format!("{RULE_A}{RULE_B}");
    std::fs::write(&path, render(&both)).unwrap();
    eventually(
        Duration::from_secs(5),
        "the edit after the swap is applied",
        || async { get("/a").await == 200 },
    )
    .await;
}

#[tokio::test]
async fn a_redis_password_appears_in_no_reload_answer_config_page_check_output_or_log() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    let log = dir.path().join("stderr.log");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let render = |yaml: &str| common::render(yaml, addr, admin, upstream.addr);
    std::fs::write(&path, render(&config(false, RULE_A))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["run", "-c"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let process = Process { child, addr };
    common::wait_listening(process.addr).await;
    common::wait_listening(admin).await;
    common::wait_watching(admin).await;
    let leaky = render(&format!(
        "{}\nstore:\n  backend: redis\n  redis: {{ url: \"redis://app:hunter2-secret@127.0.0.1:notaport/0\" }}\n",
        config(false, RULE_A)
    ));
    std::fs::write(&path, &leaky).unwrap();
    let admin_text = |method: reqwest::Method, p: &'static str| async move {
        client()
            .request(method, format!("http://{admin}{p}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let reload_answer = admin_text(reqwest::Method::POST, "/-/reload").await;
    assert!(reload_answer.contains("not a Redis URL"), "{reload_answer}");
    let config_page = admin_text(reqwest::Method::GET, "/-/config").await;
    let hup = Command::new("kill")
        .args(["-HUP", &process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    eventually(
        Duration::from_secs(5),
        "SIGHUP's failure is logged",
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            text.matches("config reload failed").count() >= 2
        },
    )
    .await;
    drop(process);
    let logged = std::fs::read_to_string(&log).unwrap();
    let checked = check_output(&leaky);
    for (what, text) in [
        ("POST /-/reload", &reload_answer),
        ("GET /-/config", &config_page),
        ("the log", &logged),
        ("check", &checked),
    ] {
        assert!(
            !text.contains("hunter2"),
            "{what} shows the password: {text}"
        );
    }
}
