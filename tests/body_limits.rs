//! `max_body_bytes` against a live gateway: a body declared too large is
//! refused before anything is spent, one that streams past the limit ends
//! with a 413, and the connection is either reused correctly or closed.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use common::{client, gateway_config, next_answer, raw_json, read_response, Gateway, Upstream};

const RULES: &str = "
rules:
  - name: small
    match: { path: /small }
    upstream: api
    max_body_bytes: 100
    limits: [ { name: per-ip, key: ip, rate: 5/hour, algorithm: fixed_window } ]
  - name: default
    match: { path: /** }
    upstream: api
";

/// Rules with a limit of 100 bytes on `/small`, under a server-wide 1,000.
async fn start(upstream: &Upstream) -> Gateway {
    let yaml = gateway_config("api", RULES).replacen(
        "  threads: 2\n",
        "  threads: 2\n  max_body_bytes: 1000\n",
        1,
    );
    Gateway::start(&yaml, upstream.addr).await
}

#[tokio::test]
async fn a_body_declared_too_large_is_refused_with_413_before_anything_is_spent() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream).await;
    let c = client();
    for _ in 0..3 {
        let answer = c
            .post(gw.url("/small"))
            .body(vec![b'x'; 101])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 413);
        let body: serde_json::Value = answer.json().await.unwrap();
        assert_eq!(body["error"], "body_too_large");
        assert_eq!(body["max_bytes"], 100);
    }
    assert_eq!(upstream.count(), 0);
    // The refusals spent nothing of the rule's limit of 5.
    for _ in 0..5 {
        let answer = c
            .post(gw.url("/small"))
            .body(vec![b'x'; 100])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
}

#[tokio::test]
async fn the_server_wide_limit_applies_to_rules_without_their_own() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream).await;
    let c = client();
    let ok = c
        .post(gw.url("/other"))
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = c
        .post(gw.url("/other"))
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413);
}

/// An upstream that reads each request's whole body before answering, as an
/// API does, and records the largest body it received.
async fn reading_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let largest = Arc::new(AtomicUsize::new(0));
    let record = largest.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let record = record.clone();
        async move {
            record.fetch_max(body.len(), Ordering::SeqCst);
            "read"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, largest)
}

#[tokio::test]
async fn a_chunked_body_that_streams_past_the_limit_ends_with_413_and_never_reaches_the_upstream_whole(
) {
    let (upstream, largest) = reading_upstream().await;
    let yaml = gateway_config("api", RULES).replacen(
        "  threads: 2\n",
        "  threads: 2\n  max_body_bytes: 1000\n",
        1,
    );
    let gw = Gateway::start(&yaml, upstream).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = "POST /small HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        // 4 chunks of 40 bytes: past 100 at the third.
        let chunk = format!("28\r\n{}\r\n", "y".repeat(40));
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let text = next_answer(&mut stream).await;
    // The 413 arrives, or the connection is closed without another answer.
    if !text.is_empty() {
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert_eq!(raw_json(&text)["error"], "body_too_large");
    }
    assert!(
        largest.load(Ordering::SeqCst) <= 100,
        "the upstream read more than the limit"
    );
    // Under the limit, a chunked body goes through whole.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let whole = format!(
        "{head}32\r\n{}\r\n32\r\n{}\r\n0\r\n\r\n",
        "a".repeat(50),
        "b".repeat(50)
    );
    stream.write_all(whole.as_bytes()).await.unwrap();
    let text = next_answer(&mut stream).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(largest.load(Ordering::SeqCst), 100);
}

#[tokio::test]
async fn after_a_413_the_connection_serves_the_next_request_or_is_closed() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream).await;
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let big = format!(
        "POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 150\r\n\r\n{}",
        "z".repeat(150)
    );
    let next = "GET /other HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(big.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut stream).await;
    assert_eq!(status, 413);
    if stream.write_all(next.as_bytes()).await.is_err() {
        return; // closed: fine
    }
    let text = next_answer(&mut stream).await;
    if !text.is_empty() {
        assert!(text.starts_with("HTTP/1.1 200"), "the next request: {text}");
    }
}
