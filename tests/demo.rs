//! The built-in demo upstream, driven through a real gateway: event
//! validation, the vehicle API, WebSocket fan-out and the Redis bus.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::{client, eventually, get_json, ChildGuard, Gateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A gateway whose demo upstream is enabled with `demo` settings (a YAML
/// mapping body) and which routes everything to it.
async fn start(demo: &str) -> Gateway {
    common::demo_gateway("", demo).await
}

async fn post(gw: &Gateway, path: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(gw.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn event(id: &str, n: f64) -> Value {
    json!({ "id": id, "lat": 52.5 + n / 1000.0, "lon": 13.4, "speed": 30.0 })
}

async fn watch(gw: &Gateway, query: &str) -> Socket {
    let (ws, resp) = tokio_tungstenite::connect_async(gw.ws_url(&format!("/ws/vehicles{query}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// The next JSON text message, within a bound.
async fn next_json(ws: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message within 10 s")
            .expect("the socket closed")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Waits until the demo's WebSocket clients have subscribed to the fan-out.
async fn wait_clients(gw: &Gateway, n: usize) {
    let line = format!("tollgate_demo_websocket_clients {n}");
    eventually(
        Duration::from_secs(10),
        "the clients are connected",
        || async { gw.metrics().await.contains(&line) },
    )
    .await;
}

#[tokio::test]
async fn posted_events_arrive_at_every_websocket_client() {
    let gw = start("bus: memory").await;
    let mut a = watch(&gw, "").await;
    let mut b = watch(&gw, "").await;
    wait_clients(&gw, 2).await;
    assert_eq!(
        post(&gw, "/events", event("bus-7", 1.0)).await,
        (202, json!({ "status": "received" }))
    );
    for ws in [&mut a, &mut b] {
        let got = next_json(ws).await;
        assert_eq!(got["id"], "bus-7");
        assert_eq!(got["speed"], 30.0);
        assert!(got["ts"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn the_id_filter_streams_one_vehicle() {
    let gw = start("bus: memory").await;
    let mut only = watch(&gw, "?id=wanted").await;
    wait_clients(&gw, 1).await;
    post(&gw, "/events", event("other", 1.0)).await;
    post(&gw, "/events", event("wanted", 2.0)).await;
    assert_eq!(next_json(&mut only).await["id"], "wanted");
}

#[tokio::test]
async fn the_vehicle_api_returns_the_latest_positions() {
    let gw = start("bus: memory").await;
    post(&gw, "/events", event("a", 1.0)).await;
    post(&gw, "/events", event("a", 2.0)).await;
    post(&gw, "/events", event("b", 3.0)).await;
    let all = get_json(&client(), &gw.url("/vehicles")).await;
    let ids: Vec<&str> = all["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["a", "b"]);
    let a = get_json(&client(), &gw.url("/vehicles/a")).await;
    assert_eq!(a["lat"], 52.502);
    let missing = client().get(gw.url("/vehicles/zzz")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn every_validation_error_class_has_its_status() {
    let gw = start("bus: memory").await;
    let c = client();
    let (status, body) = post(
        &gw,
        "/events",
        json!({ "id": "", "lat": 91, "lon": 0, "speed": 401, "ts": "noon" }),
    )
    .await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["id", "lat", "speed", "ts"]);
    let wrong_type = c
        .post(gw.url("/events"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    let huge = format!("{{\"id\": \"{}\"}}", "x".repeat(17 * 1024));
    let too_big = c
        .post(gw.url("/events"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(too_big.status(), 413);
    let malformed = c
        .post(gw.url("/events"))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    for resp in [wrong_type, too_big, malformed] {
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}

/// An upstream that closes a connection after its answer must say so: a
/// proxy that keeps the connection sends the client's next request into the
/// close, and a POST, which it may not retry, fails with 502.
#[tokio::test]
async fn a_body_refused_unread_closes_the_connection_and_says_so() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_gw, demo) = common::demo_gateway_and_address("", "").await;
    for (content_type, status) in [("application/json", 413), ("text/plain", 415)] {
        let mut stream = tokio::net::TcpStream::connect(demo).await.unwrap();
        let head = format!(
            "POST /events HTTP/1.1\r\nHost: demo\r\nContent-Type: {content_type}\r\n\
             Content-Length: 1000000\r\n\r\n{{\"id\": \""
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read_to_end =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        assert!(
            read_to_end.is_ok(),
            "{content_type}: still open after 10 s: {answer}"
        );
        assert!(
            answer.starts_with(&format!("http/1.1 {status} ")),
            "{content_type}: {answer}"
        );
        let head = answer.split("\r\n\r\n").next().unwrap_or_default();
        assert!(
            head.lines().any(|l| l.trim() == "connection: close"),
            "{content_type}: no `Connection: close` in {head}"
        );
    }
}

#[tokio::test]
async fn a_batch_is_accepted_or_refused_as_a_whole() {
    let gw = start("bus: memory").await;
    let good: Vec<Value> = (0..500)
        .map(|i| event(&format!("v{i}"), i as f64))
        .collect();
    assert_eq!(
        post(&gw, "/events/batch", Value::Array(good)).await,
        (202, json!({ "status": "received", "count": 500 }))
    );
    let mut one_bad: Vec<Value> = (0..3).map(|i| event(&format!("w{i}"), 0.0)).collect();
    one_bad[1]["lon"] = json!(200);
    let (status, body) = post(&gw, "/events/batch", Value::Array(one_bad)).await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "[1].lon");
    let missing = client().get(gw.url("/vehicles/w0")).send().await.unwrap();
    assert_eq!(missing.status(), 404, "nothing of a refused batch is kept");
    let too_many: Vec<Value> = (0..501).map(|i| event(&format!("x{i}"), 0.0)).collect();
    assert_eq!(
        post(&gw, "/events/batch", Value::Array(too_many)).await.0,
        422
    );
}

/// Posts `batches` batches of 500 events, the last one ending with `marker`.
async fn flood(gw: &Gateway, batches: usize, marker: &str) {
    for b in 0..batches {
        post(
            gw,
            "/events/batch",
            batch(b, (b + 1 == batches).then_some(marker)),
        )
        .await;
    }
}

/// Batch `b`: 500 events of 50 vehicles, optionally ending with `last`.
fn batch(b: usize, last: Option<&str>) -> Value {
    let mut events: Vec<Value> = (0..500)
        .map(|i| event(&format!("{:0>60}", (b * 500 + i) % 50), i as f64))
        .collect();
    if let Some(id) = last {
        events[499] = event(id, 0.0);
    }
    Value::Array(events)
}

/// A WebSocket client with a tiny receive buffer that never reads: it stops
/// accepting data after a few kilobytes.
async fn stalled_client(gw: &Gateway) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(gw.addr).await.unwrap();
    let url = gw.ws_url("/ws/vehicles");
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

fn dropped_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_demo_messages_dropped_total "))
        .unwrap()
        .parse()
        .unwrap()
}

/// Enough data (each event ~170 bytes) to fill every socket buffer between
/// the demo and a client that does not read (Linux lets them grow to MBs).
const BATCHES: usize = 150;

#[tokio::test]
async fn a_client_that_never_reads_does_not_delay_a_fast_client() {
    let gw = start("bus: memory, client_queue: 1024").await;
    let _stalled = stalled_client(&gw).await;
    let mut fast = watch(&gw, "").await;
    wait_clients(&gw, 2).await;
    // Batch by batch: the fast client sees each batch whole (nothing dropped
    // for it) while the stalled one falls further behind.
    let mut received = 0usize;
    for b in 0..BATCHES {
        let marker = format!("end-of-{b}");
        assert_eq!(
            post(&gw, "/events/batch", batch(b, Some(&marker))).await.0,
            202
        );
        loop {
            let got = next_json(&mut fast).await;
            assert_ne!(got["type"], "lagged", "the fast client lost events");
            received += 1;
            if got["id"] == marker.as_str() {
                break;
            }
        }
    }
    assert_eq!(received, BATCHES * 500, "the fast client got every event");
    assert!(
        dropped_total(&gw.metrics().await) > 0,
        "the stalled client never fell behind, so the test proved nothing"
    );
}

#[tokio::test]
async fn a_slow_client_loses_its_oldest_messages_and_is_told_how_many() {
    let gw = start("bus: memory, client_queue: 16").await;
    let mut slow = watch(&gw, "").await;
    wait_clients(&gw, 1).await;
    flood(&gw, 60, "the-end").await;
    let mut dropped = 0u64;
    loop {
        let got = next_json(&mut slow).await;
        if got["type"] == "lagged" {
            dropped += got["dropped"].as_u64().unwrap();
        }
        if got["id"] == "the-end" {
            break;
        }
    }
    assert!(dropped > 0, "the client was never told of a loss");
    assert_eq!(dropped_total(&gw.metrics().await), dropped);
}

#[tokio::test]
async fn clients_are_removed_however_they_leave() {
    let gw = start("bus: memory").await;
    let mut polite = watch(&gw, "").await;
    let rude = watch(&gw, "").await;
    wait_clients(&gw, 2).await;
    polite.close(None).await.unwrap();
    drop(rude); // no close frame: the TCP connection just goes away
    wait_clients(&gw, 0).await;
    // Publishing with nobody listening is fine.
    assert_eq!(post(&gw, "/events", event("lonely", 0.0)).await.0, 202);
}

#[tokio::test]
async fn the_map_page_is_served_through_the_gateway() {
    let gw = start("bus: memory").await;
    let resp = client().get(gw.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = resp.text().await.unwrap();
    assert!(page.contains("/ws/vehicles") && page.contains("<canvas"));
    assert!(
        !page.contains("https://"),
        "the page must not load anything from elsewhere"
    );
}

async fn demo_subscribed(gw: &Gateway) -> bool {
    match client().get(gw.url("/healthz")).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .is_ok_and(|v| v["subscribed"] == true),
        Err(_) => false,
    }
}

#[tokio::test]
async fn two_instances_share_events_over_redis_and_recover_after_a_restart() {
    let mut redis = RedisServer::start();
    let settings = format!(
        "bus: redis, redis: {{ url: \"{}\", channel: \"test-vehicles\" }}",
        redis.url()
    );
    let a = start(&settings).await;
    let b = start(&settings).await;
    for gw in [&a, &b] {
        eventually(Duration::from_secs(10), "the bus subscribes", || {
            demo_subscribed(gw)
        })
        .await;
    }
    let mut watcher = watch(&b, "").await;
    wait_clients(&b, 1).await;
    assert_eq!(post(&a, "/events", event("crossing", 1.0)).await.0, 202);
    assert_eq!(next_json(&mut watcher).await["id"], "crossing");
    // B's own state learned of it too.
    let seen = client()
        .get(b.url("/vehicles/crossing"))
        .send()
        .await
        .unwrap();
    assert_eq!(seen.status(), 200);

    redis.kill();
    eventually(Duration::from_secs(10), "B notices the loss", || async {
        !demo_subscribed(&b).await
    })
    .await;
    assert_eq!(
        post(&a, "/events", event("lost", 0.0)).await.0,
        503,
        "no bus, no acceptance"
    );
    redis.restart();
    for gw in [&a, &b] {
        eventually(Duration::from_secs(10), "the bus resubscribes", || {
            demo_subscribed(gw)
        })
        .await;
    }
    eventually(
        Duration::from_secs(10),
        "publishing works again",
        || async { post(&a, "/events", event("after", 2.0)).await.0 == 202 },
    )
    .await;
    assert_eq!(next_json(&mut watcher).await["id"], "after");
}

#[tokio::test]
async fn a_websocket_client_can_send_and_close_cleanly() {
    let gw = start("bus: memory").await;
    let mut ws = watch(&gw, "").await;
    ws.send(Message::text("hello")).await.unwrap();
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    wait_clients(&gw, 0).await;
}

/// The close frame the demo sends after `message`, within a bound: not a
/// connection dropped without one.
async fn close_answering(ws: &mut Socket, message: Message) -> Option<CloseFrame> {
    ws.send(message).await.unwrap();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no answer within 10 s")
            .expect("the socket ended without a close frame");
        match next.expect("the connection failed without a close frame") {
            Message::Close(frame) => return frame,
            _ => continue,
        }
    }
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close_frame() {
    let gw = start("bus: memory").await;
    let mut ws = watch(&gw, "").await;
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    };
    let answer = close_answering(&mut ws, Message::Close(Some(frame))).await;
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Normal));
}

#[tokio::test]
async fn a_message_over_the_demo_cap_is_closed_with_1009() {
    let gw = start("bus: memory").await;
    let mut ws = watch(&gw, "").await;
    let answer = close_answering(&mut ws, Message::text("x".repeat(5000))).await;
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Size));
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_is_closed_with_1007() {
    let gw = start("bus: memory").await;
    let mut ws = watch(&gw, "").await;
    let not_utf8 = Frame::message(vec![0xff, 0xfe], OpCode::Data(Data::Text), true);
    let answer = close_answering(&mut ws, Message::Frame(not_utf8)).await;
    assert_eq!(answer.map(|f| f.code), Some(CloseCode::Invalid));
}

/// A `GET /ws/vehicles` offering an upgrade with these handshake fields.
async fn offer_upgrade(gw: &Gateway, version: &str, key: &str) -> reqwest::Response {
    client()
        .get(gw.url("/ws/vehicles"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", version)
        .header("sec-websocket-key", key)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unsupported_websocket_version_is_told_the_one_spoken() {
    let gw = start("bus: memory").await;
    let resp = offer_upgrade(&gw, "8", "dGhlIHNhbXBsZSBub25jZQ==").await;
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unsupported_websocket_version");
}

#[tokio::test]
async fn a_websocket_key_that_is_not_a_16_byte_nonce_is_refused() {
    let gw = start("bus: memory").await;
    let resp = offer_upgrade(&gw, "13", "abc").await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_upgrade");
}

#[tokio::test]
async fn the_demo_answers_its_client_errors_in_json() {
    let gw = start("bus: memory").await;
    let c = client();
    let wrong_method = c.delete(gw.url("/vehicles")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    let bad_id = c.get(gw.url("/vehicles/%FF")).send().await.unwrap();
    assert_eq!(bad_id.status(), 400);
    let twice = c
        .get(gw.url("/ws/vehicles?id=a&id=b"))
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), 400);
    let not_upgrade = c.get(gw.url("/ws/vehicles")).send().await.unwrap();
    assert!(not_upgrade.status().is_client_error());
    for resp in [wrong_method, bad_id, twice, not_upgrade] {
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}

/// A `tollgate run` process (the real binary) whose demo upstream uses the
/// Redis bus at `redis_url`, routing everything to it.
struct Process {
    addr: SocketAddr,
    admin: SocketAddr,
    child: ChildGuard,
    dir: tempfile::TempDir,
}

impl Process {
    fn start(redis_url: &str) -> Self {
        let port = || -> SocketAddr { ([127, 0, 0, 1], common::free_port()).into() };
        let (addr, admin, demo) = (port(), port(), port());
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        let yaml = format!(
            "
server: {{ listen: [\"{addr}\"], admin: \"{admin}\", threads: 1, watch: false }}
upstreams: {{ demo: {{ servers: [\"{demo}\"] }} }}
rules:
  - {{ name: all, match: {{ path: \"/**\" }}, upstream: demo }}
demo:
  enabled: true
  listen: \"{demo}\"
  bus: redis
  redis: {{ url: \"{redis_url}\", channel: \"binary-vehicles\" }}
"
        );
        std::fs::write(&config, yaml).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["run", "-c"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Process {
            addr,
            admin,
            child: ChildGuard(child),
            dir,
        }
    }

    /// Polls the demo's `/healthz` through the gateway until its bus is
    /// subscribed, failing at once (with the process's stderr) if it exits.
    async fn wait_subscribed(&mut self) {
        let url = format!("http://{}/healthz", self.addr);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                let stderr = std::fs::read_to_string(self.dir.path().join("stderr"));
                panic!("tollgate exited ({status}) before serving: {stderr:?}");
            }
            if let Ok(resp) = client().get(&url).send().await {
                let health: Value = resp.json().await.unwrap_or(Value::Null);
                if health["bus"] == "redis" && health["subscribed"] == true {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the demo bus did not subscribe within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn the_binary_with_a_redis_bus_carries_events_between_two_instances() {
    let redis = RedisServer::start();
    let mut a = Process::start(&redis.url());
    let mut b = Process::start(&redis.url());
    a.wait_subscribed().await;
    b.wait_subscribed().await;
    let (mut watcher, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws/vehicles", b.addr))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    eventually(
        Duration::from_secs(10),
        "B's client is connected",
        || async {
            let metrics = client()
                .get(format!("http://{}/metrics", b.admin))
                .send()
                .await;
            match metrics {
                Ok(r) => r
                    .text()
                    .await
                    .is_ok_and(|t| t.contains("tollgate_demo_websocket_clients 1")),
                Err(_) => false,
            }
        },
    )
    .await;
    let posted = client()
        .post(format!("http://{}/events", a.addr))
        .json(&event("via-redis", 1.0))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    assert_eq!(next_json(&mut watcher).await["id"], "via-redis");
}

/// `tollgate check` (the real binary) on `yaml`: its exit code and report,
/// with the file shown as `demo.yaml`.
fn check(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("demo.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).replace(&file.display().to_string(), "demo.yaml");
    (out.status.code().unwrap_or(-1), report)
}

/// A file around a `demo:` section; nothing binds these addresses.
const CHECKED: &str = "
server: { listen: [\"127.0.0.1:1\"], admin: \"127.0.0.1:2\" }
upstreams: { demo: { servers: [\"127.0.0.1:3\"] } }
rules:
  - { name: all, match: { path: \"/**\" }, upstream: demo }
";

#[test]
fn check_locates_every_problem_of_the_demo_section() {
    let yaml = format!(
        "{}demo:
  listen: \"127.0.0.1:1\"
  bus: redis
  redis: {{ url: \"http://user:hunter2@example\", channel: \"\" }}
  client_queue: 0
",
        CHECKED.trim_start()
    );
    let (code, report) = check(&yaml);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report,
        "\
demo.yaml:6:3: error: demo.listen: the demo upstream needs its own address, not the gateway's or the admin's
demo.yaml:9:3: error: demo.client_queue: client_queue must be between 1 and 65536
demo.yaml:8:12: error: demo.redis.url: \"http://<redacted>@example\" is not a Redis URL: Redis URL did not parse - InvalidClientConfig
demo.yaml:8:48: error: demo.redis.channel: the channel name must not be empty
demo.yaml: 4 error(s); the file was not accepted
"
    );
}

#[test]
fn a_misspelled_demo_key_is_refused_at_its_line_like_any_other() {
    // The demo section comes first, so its problem is the first of the
    // file's shape, and the one reported (the misspelled rule key is not).
    let yaml = format!(
        "demo:\n  enabled: true\n  bogus: 1\n{}",
        CHECKED
            .trim_start()
            .replace("upstream: demo }", "upstream: demo, misspelled: 1 }")
    );
    let (code, report) = check(&yaml);
    assert_eq!(code, 1, "{report}");
    assert_eq!(
        report,
        "\
demo.yaml:3:3: error: demo.bogus: unknown field `bogus`, expected one of enabled, listen, bus, redis, client_queue
demo.yaml: 1 error(s); the file was not accepted
"
    );
}

/// Rewrites the running config of `gw`, replacing `from` by `to`.
fn edit_config(gw: &Gateway, from: &str, to: &str) {
    let text = std::fs::read_to_string(&gw.config_path).unwrap();
    assert!(text.contains(from), "{from} not in {text}");
    std::fs::write(&gw.config_path, text.replace(from, to)).unwrap();
}

async fn post_reload(gw: &Gateway) -> (u16, Value) {
    let resp = client()
        .post(gw.admin_url("/-/reload"))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn a_changed_demo_section_is_reported_as_needing_a_restart() {
    let gw = start("client_queue: 1024").await;
    edit_config(&gw, "client_queue: 1024", "client_queue: 16");
    // The watcher may apply the edit first: the answer then shows its summary.
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["summary"]["restart_required"], json!(["demo"]));
}

#[tokio::test]
async fn a_reload_with_a_bad_demo_section_keeps_the_running_config() {
    let gw = start("client_queue: 1024").await;
    edit_config(&gw, "client_queue: 1024", "client_queue: 0");
    let (code, body) = post_reload(&gw).await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["problems"][0]["path"], "demo.client_queue");
    let config = get_json(&client(), &gw.admin_url("/-/config")).await;
    assert_eq!(config["generation"], 1);
}

#[tokio::test]
async fn the_config_endpoint_shows_the_demo_section_with_its_defaults_and_no_password() {
    let gw = start("redis: { url: \"redis://user:hunter2@127.0.0.1:1\" }").await;
    let config = get_json(&client(), &gw.admin_url("/-/config")).await;
    let demo = &config["config"]["demo"];
    assert_eq!(demo["client_queue"], 1024, "{demo}");
    assert_eq!(demo["bus"], "memory", "{demo}");
    assert_eq!(demo["redis"]["channel"], "tollgate:vehicles", "{demo}");
    assert_eq!(demo["redis"]["url"], "redis://<redacted>@127.0.0.1:1");
    assert!(!config.to_string().contains("hunter2"), "{config}");
}

#[tokio::test]
async fn a_gateway_without_the_demo_exposes_no_demo_metrics() {
    let upstream = common::Upstream::start().await;
    let rest = "rules: [{ name: all, match: { path: \"/**\" }, upstream: api }]\n";
    let gw = Gateway::start(&common::gateway_config("api", rest), upstream.addr).await;
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("tollgate_config_generation 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("tollgate_demo_"), "{metrics}");
}
