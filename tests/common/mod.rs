//! Test harness: a recording upstream on a free port and a real gateway started
//! in-process in front of it. Nothing here sleeps for readiness: listeners are
//! polled with a deadline.

#![allow(dead_code)]

pub mod keys;
pub mod pki;
pub mod redis;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tempfile::TempDir;
use tollgate::app::{self, load_shared};
use tollgate::server::Running;

/// A port nobody listens on right now, outside the kernel's ephemeral range
/// (so outgoing connections cannot take it meanwhile) and spread by process id
/// and a counter so that parallel tests and test binaries do not collide.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 10_000;
        let port = 10_000 + (base - 10_000 + offset * 7) % 22_000;
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Sends `n` requests at once (request `i` to `url(i)`) to routes the
/// upstream holds (`/hold`): the admitted ones wait there, the rest are
/// refused at once. Only when every request has been decided are the held
/// ones let go. Returns every status.
pub async fn fire_and_hold(
    upstream: &Upstream,
    n: usize,
    url: impl Fn(usize) -> String,
) -> Vec<u16> {
    let c = client();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let requests: Vec<_> = (0..n)
        .map(|i| {
            let (request, answered) = (c.get(url(i)).send(), answered.clone());
            tokio::spawn(async move {
                let status = request.await.unwrap().status().as_u16();
                answered.fetch_add(1, Ordering::SeqCst);
                status
            })
        })
        .collect();
    eventually(Duration::from_secs(60), "every request decided", || async {
        upstream.count() + answered.load(Ordering::SeqCst) >= n
    })
    .await;
    upstream.release_holds();
    let mut statuses = Vec::with_capacity(n);
    for r in requests {
        statuses.push(r.await.unwrap());
    }
    statuses
}

/// A thousand simultaneous requests hold about 2,200 sockets in this process.
pub fn enough_file_descriptors() {
    let got = rlimit::increase_nofile_limit(8192).unwrap_or(0);
    assert!(
        got >= 4096,
        "raise the open-file limit (ulimit -n) to at least 4096, it is {got}"
    );
}

/// A child process killed when the test ends, however it ends.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until something accepts connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listens on {addr} after 20s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.join(", "))
    }
}

/// An upstream that records every request and answers 200 (after 400 ms for
/// `/slow...`, once released for `/hold`, with a chunked body for
/// `/chunked`), or upgrades `/ws/...` requests to an echoing WebSocket.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests to `/hold` wait until this turns true.
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener)
    }

    /// Starts on `addr` (to bring a stopped upstream back where it was).
    pub async fn start_on(addr: SocketAddr) -> Self {
        Self::serve(tokio::net::TcpListener::bind(addr).await.unwrap())
    }

    fn serve(listener: tokio::net::TcpListener) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let (release, released) = tokio::sync::watch::channel(false);
        let app = Router::new().fallback(move |req: Request| {
            let (recorder, released) = (recorder.clone(), released.clone());
            async move { handle(req, recorder, released).await }
        });
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Upstream {
            addr,
            seen,
            release,
            task,
        }
    }

    /// Stops listening (connections already open keep being served), and
    /// returns once the port is free.
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }

    /// Lets every request waiting on `/hold` (and any later one) through.
    pub fn release_holds(&self) {
        let _ = self.release.send(true);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream saw no request")
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request,
    recorder: Arc<Mutex<Vec<Seen>>>,
    mut released: tokio::sync::watch::Receiver<bool>,
) -> Response {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        headers,
    };
    recorder.lock().unwrap().push(seen.clone());
    if seen.path == "/hold" {
        let _ = released.wait_for(|go| *go).await;
    }
    if seen.path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    if seen.path == "/chunked" {
        let parts = ["first part, ", "second part, ", "last part"].map(Ok::<_, std::io::Error>);
        let body = axum::body::Body::from_stream(futures_util::stream::iter(parts));
        return ([("content-type", "text/plain")], body).into_response();
    }
    if seen.path.starts_with("/ws/") {
        let (mut parts, _body) = req.into_parts();
        return match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade.on_upgrade(echo).into_response(),
            Err(rejection) => rejection.into_response(),
        };
    }
    let body = serde_json::json!({ "path": seen.path, "query": seen.query });
    ([("content-type", "application/json")], body.to_string()).into_response()
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        if matches!(message, Message::Close(_)) || socket.send(message).await.is_err() {
            break;
        }
    }
}

/// An HTTPS upstream with a self-signed `upstream.test` certificate made at
/// run time. It answers every request with `"<sni> <path>"`, so a test sees
/// which server name the gateway sent.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// The `upstream.test` certificate, for TLS upstreams.
fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let made = rcgen::generate_simple_self_signed(vec!["upstream.test".to_string()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![made.cert.der().clone()], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl TlsUpstream {
    /// Serves every TLS connection (with the `upstream.test` certificate)
    /// with `serve`.
    async fn serve<F, Fut>(serve: F) -> Self
    where
        F: Fn(TlsStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let acceptor = tls_acceptor();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = Arc::new(serve);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, serve) = (acceptor.clone(), serve.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls).await;
                    }
                });
            }
        });
        TlsUpstream { addr, task }
    }

    /// A WebSocket echo server behind TLS (a `wss://` upstream).
    pub async fn start_websocket() -> Self {
        Self::serve(|tls| async move {
            use futures_util::{SinkExt, StreamExt};
            let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                if message.is_close() || ws.send(message).await.is_err() {
                    break;
                }
            }
        })
        .await
    }

    /// Answers every request with `<SNI> <path>` and closes.
    pub async fn start() -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        Self::serve(|tls| async move {
            let sni = tls.get_ref().1.server_name().unwrap_or("-").to_string();
            let mut stream = BufReader::new(tls);
            let mut request_line = String::new();
            if stream.read_line(&mut request_line).await.is_err() {
                return;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or("-")
                .to_string();
            let mut line = String::new();
            while stream.read_line(&mut line).await.is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = format!("{sni} {path}");
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.get_mut().write_all(answer.as_bytes()).await;
            let _ = stream.get_mut().shutdown().await;
        })
        .await
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that accepts connections and never answers.
pub async fn silent_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (addr, task)
}

/// The `server:` block a test config starts with: the listeners whose
/// `{listen}` and `{admin}` `Gateway::start` fills in, and two worker threads.
/// Further `server:` settings may follow as lines indented by two spaces.
pub const SERVER: &str = "
server:
  listen: [\"{listen}\"]
  admin: \"{admin}\"
  threads: 2
";

/// An upstream that answers 200 and keeps nothing ([`Upstream`] records
/// every request: too much memory for a flood).
pub async fn forgetful_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `upstreams:` with the test's one upstream (`{upstream}`), named `name`.
pub fn upstreams(name: &str) -> String {
    format!("upstreams: {{ {name}: {{ servers: [\"{{upstream}}\"] }} }}\n")
}

/// A config template: [`SERVER`], the one upstream `name`, then `rest`
/// (top-level YAML: `rules:`, `store:`, ...).
pub fn gateway_config(name: &str, rest: &str) -> String {
    format!("{SERVER}{}{rest}", upstreams(name))
}

/// A gateway in front of its own built-in demo upstream, with `rules` (YAML
/// list items, maybe none) and then a catch-all rule routing to the demo;
/// `demo` adds settings to the `demo:` mapping (`key: value, ...`, maybe none).
pub async fn demo_gateway(rules: &str, demo: &str) -> Gateway {
    demo_gateway_and_address(rules, demo).await.0
}

/// `demo_gateway`, and the address the demo upstream listens on (to talk
/// to it without the gateway between).
pub async fn demo_gateway_and_address(rules: &str, demo: &str) -> (Gateway, SocketAddr) {
    let demo_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let settings = if demo.is_empty() {
        String::new()
    } else {
        format!(", {demo}")
    };
    let rest = format!(
        "
rules:
{rules}
  - {{ name: all, match: {{ path: \"/**\" }}, upstream: demo }}
demo: {{ enabled: true, listen: \"{{upstream}}\"{settings} }}
"
    );
    let gw = Gateway::start(&gateway_config("demo", &rest), demo_addr).await;
    wait_listening(demo_addr).await;
    (gw, demo_addr)
}

/// Every rate algorithm as a limit's `algorithm:` value, each admitting 100
/// requests at once from idle at `rate: 100/...`.
pub const RATE_ALGORITHMS: [&str; 6] = [
    "gcra",
    "token_bucket",
    "leaky_bucket, burst: 99", // nginx's burst: 99 beyond the one served
    "fixed_window",
    "sliding_window_log",
    "sliding_window_counter",
];

/// Sends `n` GETs of `path` at once, round-robin over `gateways`, and counts
/// the 200s and the 429s (nothing else may come back).
pub async fn fire(gateways: &[Gateway], n: usize, path: &str) -> (usize, usize) {
    let c = client();
    let answers = futures_util::future::join_all(
        (0..n).map(|i| c.get(gateways[i % gateways.len()].url(path)).send()),
    )
    .await;
    let statuses: Vec<u16> = answers
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(ok + limited, n, "only 200 and 429 expected: {statuses:?}");
    (ok, limited)
}

/// GETs `url` and parses the answer as JSON.
pub async fn get_json(client: &reqwest::Client, url: &str) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Fills `{listen}`, `{admin}` and `{upstream}` into a config template.
pub fn render(yaml: &str, listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    yaml.replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string())
        .replace("{upstream}", &upstream.to_string())
}

/// Polls `check` every 10 ms until it holds, failing after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + deadline;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the gateway whose admin listener is `admin` has its reloader
/// up: it listens for SIGHUP and SIGUSR1, and watches the config file if
/// `server.watch` says so (`/readyz` says `signals`).
pub async fn wait_watching(admin: SocketAddr) {
    let url = format!("http://{admin}/readyz");
    eventually(
        Duration::from_secs(20),
        "the config watcher starts",
        || async {
            match client().get(&url).send().await {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["signals"] == true),
                Err(_) => false,
            }
        },
    )
    .await;
}

/// A gateway running in this process with a config written to a temp dir.
pub struct Gateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: std::path::PathBuf,
    running: Option<Running>,
    _dir: TempDir,
}

impl Gateway {
    /// Starts a gateway whose config is `yaml` with `{listen}`, `{admin}` and
    /// `{upstream}` replaced by the free ports chosen here and `upstream`.
    pub async fn start(yaml: &str, upstream: SocketAddr) -> Self {
        Self::start_with_files(yaml, upstream, &[]).await
    }

    /// Like [`Gateway::start`], with `files` (name, content) written beside
    /// the config first.
    pub async fn start_with_files(
        yaml: &str,
        upstream: SocketAddr,
        files: &[(&str, &str)],
    ) -> Self {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let text = render(yaml, addr, admin, upstream);
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(path, content).unwrap();
        }
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, text).unwrap();
        let shared =
            load_shared(&config_path).unwrap_or_else(|e| panic!("test config is invalid: {e}"));
        let running = app::start(shared);
        wait_listening(addr).await;
        wait_listening(admin).await;
        // Edits are only seen once the file watcher is up.
        wait_watching(admin).await;
        Gateway {
            addr,
            admin,
            config_path,
            running: Some(running),
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces a file beside the config (such as the consumers file).
    pub fn write_beside(&self, name: &str, content: &str) {
        let dir = self.config_path.parent().unwrap();
        std::fs::write(dir.join(name), content).unwrap();
    }

    /// Replaces the config file's content in place.
    pub fn rewrite(&self, yaml: &str, upstream: SocketAddr) {
        std::fs::write(&self.config_path, self.render(yaml, upstream)).unwrap();
    }

    /// The config text with this gateway's ports and `upstream` filled in.
    pub fn render(&self, yaml: &str, upstream: SocketAddr) -> String {
        render(yaml, self.addr, self.admin, upstream)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// The admin listener's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.admin_text("/metrics").await
    }

    /// The text an admin endpoint answers.
    pub async fn admin_text(&self, path: &str) -> String {
        client()
            .get(self.admin_url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.stop();
        }
    }
}

/// A client with a bounded timeout (a hang fails the test instead of stalling it).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client whose connections come from a given loopback address, so tests can
/// act as distinct peers (Linux routes all of 127.0.0.0/8 to loopback).
pub fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// Sends a raw HTTP/1.1 GET and returns the status and the whole answer.
/// For request targets no HTTP client library would send as written.
pub async fn raw_request(addr: SocketAddr, target: &str) -> (u16, String) {
    let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    raw_exchange("127.0.0.1", addr, request.as_bytes()).await
}

/// Sends raw request bytes from a given loopback address (the request should
/// say `Connection: close`) and returns the status and the whole answer.
pub async fn raw_exchange(from: &str, addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the gateway did not close the connection")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// Sends raw request bytes and reads one response framed by Content-Length
/// (for connections the gateway keeps open).
pub async fn raw_response(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Whether `answer` holds a whole response head and its Content-Length body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// What the connection says next: one response framed by Content-Length, or
/// what came before the gateway closed it (maybe nothing).
pub async fn next_answer<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    while !complete(&answer) {
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("the gateway neither answered nor closed within 10 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Reads one response framed by Content-Length from a connection that stays
/// open, and returns the status and the whole answer.
pub async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> (u16, String) {
    let text = next_answer(stream).await;
    assert!(
        complete(text.as_bytes()),
        "closed before a complete response: {text:?}"
    );
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The JSON body of a raw answer.
pub fn raw_json(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {answer:?}"))
}

pub fn header_of(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

/// Sends `n` GETs and returns their statuses.
pub async fn statuses(client: &reqwest::Client, url: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(client.get(url).send().await.unwrap().status().as_u16());
    }
    out
}
