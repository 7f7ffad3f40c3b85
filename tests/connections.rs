//! Downstream connection handling: deadlines for request headers and idle
//! connections, the per-IP connection cap, and pipelined requests, against a
//! real gateway over raw sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::{client, client_from, eventually, raw_exchange, read_response, Gateway, Upstream};

/// One catch-all rule to the upstream, and `server` settings (indented YAML
/// lines) added to the listeners.
fn config(server: &str) -> String {
    format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
{server}
upstreams: {{ api: {{ servers: [\"{{upstream}}\"] }} }}
rules:
  - name: api
    match: {{ path: \"/api/**\" }}
    upstream: api
"
    )
}

async fn start(server: &str) -> (Upstream, Gateway) {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&config(server), upstream.addr).await;
    (upstream, gateway)
}

/// A connection from `from` (a loopback address).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(addr).await.unwrap()
}

/// Whether the gateway closes `stream` (end of stream or reset) before
/// `guard` passes; a hang guard only, so that a failure does not stall.
async fn closed_by_gateway(stream: &mut TcpStream, guard: Duration) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(guard, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {} // an answer; keep reading until the close
        }
    }
}

/// The value of a counter line of the Prometheus text, 0 if absent.
/// Asserts how many connections the gateway closed for `reason`.
async fn assert_closed(gw: &Gateway, reason: &str, expected: u64) {
    let metrics = gw.metrics().await;
    let series = format!("tollgate_connections_closed_total{{reason=\"{reason}\"}}");
    let closed = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(closed, expected, "{metrics}");
}

/// What became of a client that sends its request head one byte at a time.
#[derive(Debug, PartialEq, Eq)]
enum Dribble {
    /// The gateway closed the connection before the head was complete.
    Closed,
    /// The whole head went out and the connection was still open.
    Sent,
}

/// Sends a request head a byte every 100 ms (about 6 s in all), watching
/// for the gateway closing the connection meanwhile.
async fn dribble(addr: SocketAddr) -> Dribble {
    let request = b"GET /api/slow-client HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaa\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 256];
    for byte in request.iter() {
        if stream.write_all(&[*byte]).await.is_err() {
            return Dribble::Closed;
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Dribble::Closed,
                Ok(_) => return Dribble::Sent, // answered before the head was whole
            },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    Dribble::Sent
}

#[tokio::test]
async fn slow_header_senders_are_closed_at_the_deadline_while_other_clients_are_served() {
    common::enough_file_descriptors();
    let (_upstream, gw) = start("  header_timeout: 1s").await;
    let slow: Vec<_> = (0..200).map(|_| tokio::spawn(dribble(gw.addr))).collect();
    let c = client();
    for i in 0..20 {
        let status = c.get(gw.url(&format!("/api/normal/{i}"))).send().await;
        assert_eq!(
            status.unwrap().status(),
            200,
            "request {i} during the attack"
        );
    }
    for (i, task) in slow.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), Dribble::Closed, "slow client {i}");
    }
    assert_closed(&gw, "header_timeout", 200).await;
}

#[tokio::test]
async fn a_connection_that_never_sends_a_byte_is_closed_after_the_idle_timeout() {
    let (_upstream, gw) = start("  idle_timeout: 1s").await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    assert!(closed_by_gateway(&mut silent, Duration::from_secs(15)).await);
    assert_closed(&gw, "idle_timeout", 1).await;
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_after_the_idle_timeout_between_requests() {
    let (_upstream, gw) = start("  idle_timeout: 1s").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    for i in 0..2 {
        let request = format!("GET /api/{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, answer) = read_response(&mut stream).await;
        assert_eq!(status, 200, "{answer}");
    }
    assert!(closed_by_gateway(&mut stream, Duration::from_secs(15)).await);
    assert_closed(&gw, "idle_timeout", 1).await;
}

#[tokio::test]
async fn the_header_deadline_does_not_cut_the_wait_for_the_next_request() {
    let (_upstream, gw) = start("  header_timeout: 1s\n  idle_timeout: 30s").await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    // Answered by the gateway itself (no rule), then by the upstream, each
    // after a wait longer than the header timeout.
    for (i, path) in ["/nowhere", "/api/x", "/api/y"].into_iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let (status, answer) = read_response(&mut stream).await;
        assert_ne!(status, 0, "{answer}");
    }
}

/// Opens a keep-alive connection from `from` and has one request answered
/// on it, so the gateway has surely taken it.
async fn served_connection(from: &str, addr: SocketAddr) -> TcpStream {
    let mut stream = connect_from(from, addr).await;
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let (status, answer) = read_response(&mut stream).await;
    assert_eq!(status, 200, "{answer}");
    stream
}

#[tokio::test]
async fn connections_over_the_per_ip_cap_are_closed_at_once() {
    let (_upstream, gw) = start("  max_connections_per_ip: 2").await;
    let first = served_connection("127.0.0.2", gw.addr).await;
    let _second = served_connection("127.0.0.2", gw.addr).await;
    let mut third = connect_from("127.0.0.2", gw.addr).await;
    let _ = third
        .write_all(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), third.read_to_end(&mut answer))
        .await
        .expect("the connection over the cap was not closed");
    assert!(answer.is_empty(), "{:?}", String::from_utf8_lossy(&answer));
    // Other clients are not affected.
    let other = client_from("127.0.0.3").get(gw.url("/api/y")).send().await;
    assert_eq!(other.unwrap().status(), 200);
    assert_closed(&gw, "max_connections_per_ip", 1).await;
    // A closed connection frees its place.
    drop(first);
    let c = client_from("127.0.0.2");
    eventually(Duration::from_secs(10), "a place is free again", || async {
        c.get(gw.url("/api/z")).send().await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn a_trusted_proxy_is_not_held_to_the_per_ip_cap() {
    let (_upstream, gw) =
        start("  max_connections_per_ip: 1\n  trusted_proxies: [\"127.0.0.4/32\"]").await;
    let _first = served_connection("127.0.0.4", gw.addr).await;
    let _second = served_connection("127.0.0.4", gw.addr).await;
}

async fn reload(gw: &Gateway, server: &str, upstream: &Upstream) -> serde_json::Value {
    gw.rewrite(&config(server), upstream.addr);
    let answer = client()
        .post(gw.admin_url("/-/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

#[tokio::test]
async fn a_reload_applies_the_per_ip_cap_to_new_connections() {
    let (upstream, gw) = start("").await;
    let body = reload(&gw, "  max_connections_per_ip: 1", &upstream).await;
    assert_eq!(body["summary"]["restart_required"], serde_json::json!([]));
    let _first = served_connection("127.0.0.5", gw.addr).await;
    let mut second = connect_from("127.0.0.5", gw.addr).await;
    assert!(closed_by_gateway(&mut second, Duration::from_secs(10)).await);
}

#[tokio::test]
async fn a_reload_applies_a_new_max_header_bytes_to_the_next_request() {
    let (upstream, gw) = start("").await;
    let with_cookie = || {
        client()
            .get(gw.url("/api/x"))
            .header("cookie", "c".repeat(5000))
            .send()
    };
    assert_eq!(with_cookie().await.unwrap().status(), 200);
    let body = reload(&gw, "  max_header_bytes: 4096", &upstream).await;
    assert_eq!(body["summary"]["restart_required"], serde_json::json!([]));
    assert_eq!(with_cookie().await.unwrap().status(), 431);
}

#[tokio::test]
async fn a_changed_idle_timeout_or_grace_period_needs_a_restart() {
    let (upstream, gw) = start("").await;
    let changed = "  header_timeout: 2s\n  idle_timeout: 5s\n  grace_period: 3s";
    let body = reload(&gw, changed, &upstream).await;
    assert_eq!(
        body["summary"]["restart_required"],
        serde_json::json!(["server.idle_timeout", "server.grace_period"])
    );
}

/// The status lines of a stream of responses, in order (a response starts
/// right after the previous body, without a line break).
fn status_lines(answer: &str) -> Vec<&str> {
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(at, _)| {
            let line = &answer[at..];
            &line[..line.find("\r\n").unwrap_or(line.len())]
        })
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let (upstream, gw) = start("").await;
    let requests = concat!(
        "GET /api/first HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /api/second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
        "GET /elsewhere HTTP/1.1\r\nHost: t\r\n\r\n",
        "GET /api/fourth HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let (_, answer) = raw_exchange("127.0.0.1", gw.addr, requests.as_bytes()).await;
    assert_eq!(
        status_lines(&answer),
        [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 200 OK",
            "HTTP/1.1 404 Not Found",
            "HTTP/1.1 200 OK"
        ],
        "{answer}"
    );
    let first = answer.find("/api/first").expect(&answer);
    let second = answer.find("/api/second").expect(&answer);
    let fourth = answer.find("/api/fourth").expect(&answer);
    assert!(first < second && second < fourth, "{answer}");
    let seen: Vec<_> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(seen, ["/api/first", "/api/second", "/api/fourth"]);
}
