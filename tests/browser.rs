//! The live map page in a real headless Chromium, through the gateway, read
//! over the DevTools protocol.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, eventually, Gateway};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Cdp =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A headless Chromium with its DevTools endpoint on a free port.
struct Chromium {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Self {
        let installed = Command::new("chromium")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "chromium is not installed: `apt-get install chromium` (bash .ci/run installs it)"
        );
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1280,800",
            ])
            // Port 0: Chromium picks a free port and writes it to DevToolsActivePort.
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let active = profile.path().join("DevToolsActivePort");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let port = loop {
            let announced = std::fs::read_to_string(&active).ok();
            if let Some(port) =
                announced.and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
            {
                break port;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Chromium {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens `url` in a new tab and returns its DevTools connection.
    async fn open(&self, url: &str) -> Page {
        let base = format!("http://127.0.0.1:{}", self.port);
        eventually(
            Duration::from_secs(30),
            "Chromium's DevTools answer",
            || async {
                client()
                    .get(format!("{base}/json/version"))
                    .send()
                    .await
                    .is_ok()
            },
        )
        .await;
        let target: Value = client()
            .put(format!("{base}/json/new?{url}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ws_url = target["webSocketDebuggerUrl"].as_str().unwrap().to_string();
        let (cdp, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
        Page { cdp, next_id: 1 }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Page {
    cdp: Cdp,
    next_id: u64,
}

/// What the map page shows: its connection state and the listed vehicles.
const MAP_SHOWN: &str = "({\
    state: document.getElementById('status').dataset.state, \
    status: document.getElementById('status').textContent, \
    vehicles: [...document.querySelectorAll('#vehicles li')].map(li => li.dataset.id), \
    count: document.getElementById('count').textContent, \
    eps: document.getElementById('eps').textContent, \
    list: document.getElementById('vehicles').textContent })";

impl Page {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.cdp
            .send(Message::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.cdp.next())
                .await
                .expect("DevTools did not answer")
                .unwrap()
                .unwrap();
            if let Message::Text(text) = message {
                let reply: Value = serde_json::from_str(&text).unwrap();
                if reply["id"] == id {
                    return reply["result"].clone();
                }
            }
        }
    }

    /// Polls what the map page shows until `expected` holds.
    async fn wait_for(&mut self, what: &str, expected: impl Fn(&Value) -> bool) -> Value {
        self.wait_until(what, MAP_SHOWN, expected).await
    }

    /// The value of a JavaScript expression in the page, as JSON.
    async fn eval(&mut self, expression: &str) -> Value {
        let wrapped = format!("JSON.stringify({expression})");
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": wrapped, "returnByValue": true }),
            )
            .await;
        result["result"]["value"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null)
    }

    /// Polls `expression` until `expected` holds, failing after 30 s.
    async fn wait_until(
        &mut self,
        what: &str,
        expression: &str,
        expected: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.eval(expression).await;
            if expected(&value) {
                return value;
            }
            assert!(
                std::time::Instant::now() < until,
                "{what}: the page shows {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves what the page looks like as a PNG.
    async fn screenshot(&mut self, path: &std::path::Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let data = shot["data"].as_str().expect("a screenshot");
        let png = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
        eprintln!("screenshot saved: {}", path.display());
    }

    /// What the map page shows.
    async fn shown(&mut self) -> Value {
        self.eval(MAP_SHOWN).await
    }
}

/// A gateway in front of its demo upstream, with `rules` before the
/// catch-all one.
async fn start(rules: &str) -> Gateway {
    common::demo_gateway(rules, "").await
}

async fn post_position(gw: &Gateway, id: &str) {
    let event = json!({ "id": id, "lat": 48.85, "lon": 2.35, "speed": 55.5 });
    let resp = client()
        .post(gw.url("/events"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
}

/// One Chromium for every scenario: browsers are heavy for a 2-core machine.
#[tokio::test]
async fn the_map_page_and_the_dashboard_in_a_real_browser() {
    let chromium = Chromium::start();
    shows_vehicles_posted_through_the_gateway(&chromium).await;
    says_when_the_gateway_refuses_its_websocket(&chromium).await;
    says_when_the_connection_drops(&chromium).await;
    the_dashboard_charts_move_under_load_and_lifts_a_ban(&chromium).await;
}

/// Where the dashboard's screenshot goes: the build directory, never the
/// repository.
fn screenshot_path() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("screenshots").join("dashboard-under-load.png")
}

/// Traffic for the dashboard until `stop`: seven well-behaved clients (each
/// well under its 10/s), and `pest` (while `pest` is set) sending a third of
/// the requests, about 16/s, into a ban.
fn load(gw: &Gateway, stop: Arc<AtomicBool>, pest: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    let url = gw.url("/vehicles");
    tokio::spawn(async move {
        let c = client();
        // Bounded: at most a minute, however the test goes.
        for round in 0..3_000u32 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let who = if round % 3 == 0 && pest.load(Ordering::Relaxed) {
                "pest".to_string()
            } else {
                format!("client-{}", round % 7)
            };
            let _ = c.get(&url).header("x-client", who).send().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

async fn the_dashboard_charts_move_under_load_and_lifts_a_ban(chromium: &Chromium) {
    let rules = "  - name: api
    match: { path: /vehicles }
    upstream: demo
    limits:
      - name: per_client
        key: { header: x-client }
        rate: 10/s
        ban: { after: 5, within: 1m, for: 10m }";
    let demo_addr: std::net::SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
    let yaml = format!(
        "{}  admin_token: s3cret\n  admin_show_keys: true\n{}rules:\n{rules}\ndemo: {{ enabled: true, listen: \"{{upstream}}\" }}\n",
        common::SERVER,
        common::upstreams("demo"),
    );
    let gw = Gateway::start(&yaml, demo_addr).await;
    common::wait_listening(demo_addr).await;
    let (stop, pest) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(true)),
    );
    let traffic = load(&gw, stop.clone(), pest.clone());

    // Navigated to over DevTools: a `#fragment` in `/json/new?URL` would be
    // taken for the DevTools URL's own and dropped.
    let mut page = chromium.open("about:blank").await;
    page.call(
        "Page.navigate",
        json!({ "url": gw.admin_url("/#token=s3cret") }),
    )
    .await;
    page.wait_until(
        "the dashboard goes live",
        "document.getElementById('status').dataset.state",
        |state| state == "live",
    )
    .await;
    page.wait_until(
        "the chart of rule api shows allowed and limited requests per second",
        "(window.tollgateDashboard.samples.api || [])",
        |samples| {
            let samples = samples.as_array().cloned().unwrap_or_default();
            let moving = |field: &str| {
                samples
                    .iter()
                    .any(|s| s[field].as_f64().unwrap_or(0.0) > 0.0)
            };
            moving("allowed") && moving("limited")
        },
    )
    .await;
    let banned = page
        .wait_until(
            "the pest's ban is listed",
            "[...document.querySelectorAll('#bans tr[data-digest]')].map(tr => tr.textContent)",
            |rows| {
                rows.as_array()
                    .is_some_and(|r| r.iter().any(|t| t.as_str().unwrap_or("").contains("pest")))
            },
        )
        .await;
    page.wait_until(
        "the pest tops the limited keys",
        "[...document.querySelectorAll('[data-limit=\"api/per_client\"] tr[data-digest]')].map(tr => tr.textContent)",
        |rows| rows.as_array().is_some_and(|r| r.first().and_then(Value::as_str).is_some_and(|t| t.contains("pest"))),
    )
    .await;
    // Ten seconds of traffic in the charts before the picture is taken.
    page.wait_until(
        "ten seconds of samples",
        "(window.tollgateDashboard.samples.api || []).length",
        |n| n.as_u64().is_some_and(|n| n >= 10),
    )
    .await;
    page.screenshot(&screenshot_path()).await;

    // The pest stops; the ban is lifted from the page.
    pest.store(false, Ordering::Relaxed);
    let clicked = page
        .eval("(() => { const row = [...document.querySelectorAll('#bans tr[data-digest]')].find(tr => tr.textContent.includes('pest')); const b = row && row.querySelector('button.lift'); if (b) b.click(); return !!b; })()")
        .await;
    assert_eq!(clicked, Value::Bool(true), "a Lift button: {banned}");
    page.wait_until(
        "the lifted ban leaves the list",
        "document.querySelectorAll('#bans tr[data-digest]').length",
        |n| n == 0,
    )
    .await;
    let state: Value = client()
        .get(gw.admin_url("/-/limits/api/per_client/keys/pest"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["banned"], false, "{state}");
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}

async fn shows_vehicles_posted_through_the_gateway(chromium: &Chromium) {
    let gw = start("").await;
    let mut page = chromium.open(&gw.url("/")).await;
    page.wait_for("the page goes live", |shown| shown["state"] == "live")
        .await;
    // Keep posting until the page lists the vehicle (events sent before the
    // socket subscribed would be missed, like a real late joiner).
    let mut shown = Value::Null;
    for _ in 0..100 {
        post_position(&gw, "map-test-1").await;
        shown = page.shown().await;
        let listed = shown["vehicles"]
            .as_array()
            .is_some_and(|v| v.iter().any(|id| id == "map-test-1"));
        if listed && shown["eps"].as_str().is_some_and(|e| e != "0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shown["vehicles"], json!(["map-test-1"]), "{shown}");
    assert_eq!(shown["count"], "1", "{shown}");
    assert!(
        shown["list"].as_str().unwrap().contains("55.5 km/h"),
        "the speed is shown: {shown}"
    );
    assert_ne!(shown["eps"], "0", "events per second are counted: {shown}");
}

async fn says_when_the_gateway_refuses_its_websocket(chromium: &Chromium) {
    let gw = start("  - { name: stream, match: { path: \"/ws/*\" }, upstream: demo, limits: [{ key: ip, rate: 1/minute }] }")
        .await;
    let mut first = chromium.open(&gw.url("/")).await;
    first
        .wait_for("the first page goes live", |shown| shown["state"] == "live")
        .await;
    let mut second = chromium.open(&gw.url("/")).await;
    second
        .wait_for("the second page reports the 429", |shown| {
            shown["state"] == "limited"
                && shown["status"].as_str().is_some_and(|s| s.contains("429"))
        })
        .await;
}

async fn says_when_the_connection_drops(chromium: &Chromium) {
    let gw = start("").await;
    let mut page = chromium.open(&gw.url("/")).await;
    page.wait_for("the page goes live", |shown| shown["state"] == "live")
        .await;
    drop(gw);
    page.wait_for("the page reports the loss", |shown| {
        shown["state"] == "lost"
    })
    .await;
}
