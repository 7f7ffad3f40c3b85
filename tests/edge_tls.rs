//! The TLS listeners against a live gateway, with a CA made at run time:
//! SNI picks the certificate, a renewed certificate is served without a
//! restart (and a broken one is refused, keeping the old), HTTP/2 by ALPN
//! applies limits per stream, plain HTTP can be redirected, and the
//! handshake has a deadline.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

use common::pki::{presented, Issued, Pki};
use common::{
    eventually, free_port, get_json, raw_json, read_response, wait_listening, Gateway, Upstream,
};

/// A gateway with two TLS listeners: `main` (certificates for api.test and
/// www.test, both protocols, a redirect from plain HTTP) and `strict` (TLS
/// 1.3 only, HTTP/1.1 only).
struct Edge {
    gateway: Gateway,
    main: SocketAddr,
    strict: SocketAddr,
    redirect: SocketAddr,
}

const RULES: &str = "
upstreams: { api: { servers: [\"{upstream}\"] } }
rules:
  - name: limited
    match: { path: /limited }
    upstream: api
    limits: [ { name: hundred, key: ip, rate: 100/hour, algorithm: fixed_window } ]
  - name: all
    match: { path: /** }
    upstream: api
";

async fn start(pki: &Pki, upstream: &Upstream) -> (Edge, Issued) {
    let ip = [127, 0, 0, 1];
    let main: SocketAddr = (ip, free_port()).into();
    let strict: SocketAddr = (ip, free_port()).into();
    let redirect: SocketAddr = (ip, free_port()).into();
    let api = pki.issue(&["api.test"]);
    let www = pki.issue(&["www.test", "*.www.test"]);
    let yaml = format!(
        "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
  handshake_timeout: 300ms
  idle_timeout: 2s
  tls:
    - listen: \"{main}\"
      certs:
        - {{ cert: certs/api.crt, key: certs/api.key }}
        - {{ cert: certs/www.crt, key: certs/www.key }}
      redirect_from: [\"{redirect}\"]
    - listen: \"{strict}\"
      certs: [ {{ cert: certs/api.crt, key: certs/api.key }} ]
      min_version: \"1.3\"
      alpn: [http/1.1]
{RULES}"
    );
    let files = [
        ("certs/api.crt", api.cert_pem.as_str()),
        ("certs/api.key", api.key_pem.as_str()),
        ("certs/www.crt", www.cert_pem.as_str()),
        ("certs/www.key", www.key_pem.as_str()),
    ];
    let gateway = Gateway::start_with_files(&yaml, upstream.addr, &files).await;
    for addr in [main, strict, redirect] {
        wait_listening(addr).await;
    }
    let edge = Edge {
        gateway,
        main,
        strict,
        redirect,
    };
    (edge, api)
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One HTTP/1.1 GET on an open connection.
async fn get(stream: &mut Tls, host: &str, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

fn alpn_of(stream: &Tls) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

#[tokio::test]
async fn sni_picks_the_certificate_that_covers_the_name() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, api) = start(&pki, &upstream).await;
    let stream = pki
        .connect(edge.main, "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&stream), api.der);
    // The client verified the chain for each name: a wildcard covers one label.
    let www = pki
        .connect(edge.main, "www.test", &[b"http/1.1"])
        .await
        .unwrap();
    let sub = pki
        .connect(edge.main, "a.www.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&www), presented(&sub));
    assert_ne!(presented(&www), api.der);
}

#[tokio::test]
async fn a_request_over_tls_reaches_the_upstream_as_https() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let mut stream = pki
        .connect(edge.main, "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    let (status, _) = get(&mut stream, "api.test", "/orders").await;
    assert_eq!(status, 200);
    assert_eq!(
        upstream.last().header("x-forwarded-proto").as_deref(),
        Some("https")
    );
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_served_without_dropping_open_connections() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, old) = start(&pki, &upstream).await;
    let mut open = pki
        .connect(edge.main, "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(get(&mut open, "api.test", "/before").await.0, 200);

    let renewed = pki.issue(&["api.test"]);
    let changed_at = Instant::now();
    edge.gateway.write_beside("certs/api.key", &renewed.key_pem);
    edge.gateway
        .write_beside("certs/api.crt", &renewed.cert_pem);
    eventually(
        Duration::from_secs(10),
        "the renewed certificate is served",
        || async {
            let fresh = pki
                .connect(edge.main, "api.test", &[b"http/1.1"])
                .await
                .unwrap();
            presented(&fresh) == renewed.der
        },
    )
    .await;
    println!(
        "renewed certificate served {:?} after the write",
        changed_at.elapsed()
    );
    assert_ne!(renewed.der, old.der);
    // The connection made with the old certificate still works.
    assert_eq!(get(&mut open, "api.test", "/after").await.0, 200);
}

#[tokio::test]
async fn a_broken_pair_on_disk_keeps_the_old_certificate_and_is_reported() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, old) = start(&pki, &upstream).await;
    let other = pki.issue(&["api.test"]);
    edge.gateway.write_beside("certs/api.key", &other.key_pem);
    let admin = common::client();
    let config_url = edge.gateway.admin_url("/-/config");
    // The watcher may reload while the key is half written (refused too:
    // "no PEM private key"); the reload after the write names the mismatch.
    eventually(
        Duration::from_secs(10),
        "the failed reload is reported",
        || async {
            let last = &get_json(&admin, &config_url).await["last_reload"];
            last["result"] == "failure"
                && last["problems"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("does not belong"))
        },
    )
    .await;
    let config = get_json(&admin, &config_url).await;
    let problem = &config["last_reload"]["problems"][0];
    assert_eq!(problem["path"], "server.tls[0].certs[0]", "{config}");
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("does not belong"),
        "{problem}"
    );
    assert!(problem["line"].as_u64().unwrap() > 0);
    let fresh = pki
        .connect(edge.main, "api.test", &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(presented(&fresh), old.der);
}

#[tokio::test]
async fn h2_by_alpn_decides_each_stream_a_thousand_streams_against_a_limit_of_100_admit_100() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let stream = pki
        .connect(edge.main, "api.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn_of(&stream).as_deref(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(connection);
    // A first, unlimited request: once it is answered the client knows the
    // server's stream limit, and waits for a free stream beyond it.
    let warm_up = http::Request::get("https://api.test/warm-up")
        .body(())
        .unwrap();
    let (response, _) = client
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(warm_up, true)
        .unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let requests = (0..1000).map(|_| {
        let client = client.clone();
        async move {
            let mut client = client.ready().await.unwrap();
            let request = http::Request::get("https://api.test/limited")
                .body(())
                .unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            response.await.unwrap().status().as_u16()
        }
    });
    let statuses = futures_util::future::join_all(requests).await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((admitted, limited), (100, 900), "{statuses:?}");
    assert_eq!(upstream.count(), 1 + 100);
    driver.abort();
}

#[tokio::test]
async fn a_listener_that_offers_only_http1_does_not_negotiate_h2() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let mut stream = pki
        .connect(edge.strict, "api.test", &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn_of(&stream).as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(get(&mut stream, "api.test", "/x").await.0, 200);
}

#[tokio::test]
async fn a_listener_with_min_version_1_3_refuses_a_tls_1_2_client() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let tls12 = pki.client_config(&[b"http/1.1"], &[&rustls::version::TLS12]);
    assert!(pki
        .connect_with(edge.strict, "api.test", tls12.clone())
        .await
        .is_err());
    // The main listener still accepts TLS 1.2.
    assert!(pki.connect_with(edge.main, "api.test", tls12).await.is_ok());
}

#[tokio::test]
async fn plain_http_on_a_redirect_address_is_sent_to_the_tls_listener() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let request =
        b"POST /v1/orders?page=2 HTTP/1.1\r\nHost: API.test:80\r\nContent-Length: 0\r\n\r\n";
    let (status, answer) = common::raw_response(edge.redirect, request).await;
    assert_eq!(status, 308, "{answer}");
    let location = format!("https://api.test:{}/v1/orders?page=2", edge.main.port());
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("location: {location}")),
        "{answer}"
    );
    assert_eq!(raw_json(&answer)["error"], "https_required");
    assert_eq!(upstream.count(), 0);
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_handshake_is_closed_at_the_deadline() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let mut silent = tokio::net::TcpStream::connect(edge.main).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the gateway kept a silent TLS client open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let metrics = edge.gateway.metrics().await;
    assert!(
        metrics.contains("tollgate_connections_closed_total{reason=\"handshake_timeout\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_h2_client_that_sends_nothing_after_its_handshake_is_closed_after_idle_timeout() {
    let (pki, upstream) = (Pki::new(), Upstream::start().await);
    let (edge, _) = start(&pki, &upstream).await;
    let mut silent = pki.connect(edge.main, "api.test", &[b"h2"]).await.unwrap();
    assert_eq!(alpn_of(&silent).as_deref(), Some(&b"h2"[..]));
    // The server speaks first (its SETTINGS); then the connection must end.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut seen))
        .await
        .expect("the gateway kept a silent h2 client open")
        .ok();
    let metrics = edge.gateway.metrics().await;
    assert!(
        metrics.contains("tollgate_connections_closed_total{reason=\"idle_timeout\"} 1"),
        "{metrics}"
    );
}
