//! Who is being limited: the heaviest keys per limit in bounded memory,
//! merged across gateways on one Redis, behind the admin endpoints.

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{client, eventually, get_json, Gateway, Upstream};
use futures_util::StreamExt;
use serde_json::Value;

/// `server` adds `server:` settings (lines indented by two spaces).
fn config(store: &str, server: &str) -> String {
    format!(
        "{}{server}{}{}",
        common::SERVER,
        common::upstreams("api"),
        format_args!(
            "
{store}
rules:
  - name: api
    match: {{ path: /** }}
    upstream: api
    limits:
      - {{ name: per_client, key: {{ header: x-client }}, rate: 10/minute }}
"
        ),
    )
}

/// The resident set of this process (the gateway runs in it), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Sends one request per client id, 64 at a time.
async fn send_all(gw: &Gateway, ids: impl Iterator<Item = String>) {
    let c = client();
    let url = gw.url("/thing");
    futures_util::stream::iter(ids)
        .map(|id| {
            let request = c.get(&url).header("x-client", id);
            async move {
                let status = request.send().await.unwrap().status().as_u16();
                assert!(status == 200 || status == 429, "{status}");
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
}

#[tokio::test]
async fn five_heavy_hitters_in_a_flood_of_100_000_keys_top_the_list_in_bounded_memory() {
    common::enough_file_descriptors();
    let upstream = common::forgetful_upstream().await;
    let server = "  admin_show_keys: true\n";
    let store = "store: { backend: memory, memory: { max_keys: 20000 } }";
    let gw = Gateway::start(&config(store, server), upstream).await;
    // A first flood fills every bounded table (20,000 states, the sketches)
    // and the allocator's pools; what the real flood adds after must be
    // nothing much.
    send_all(&gw, (0..30_000).map(|n| format!("warm-{n}"))).await;
    let before = rss_kib();

    // 100,000 one-off keys; every 50th request is one of 5 heavy hitters.
    let ids = (0..100_000u32).flat_map(|n| {
        let heavy = (n % 50 == 0).then(|| format!("heavy-{}", n / 50 % 5));
        std::iter::once(format!("flood-{n}")).chain(heavy)
    });
    send_all(&gw, ids).await;
    let after = rss_kib();
    eprintln!(
        "RSS before the flood {before} KiB, after {after} KiB ({:+} KiB)",
        after as i64 - before as i64
    );

    let c = client();
    for by in ["refusals", "requests"] {
        let top = get_json(
            &c,
            &gw.admin_url(&format!("/-/limits/api/per_client/top?n=5&by={by}")),
        )
        .await;
        let mut keys: Vec<&str> = top["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["key"].as_str().unwrap())
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "\"heavy-0\"",
                "\"heavy-1\"",
                "\"heavy-2\"",
                "\"heavy-3\"",
                "\"heavy-4\""
            ],
            "by {by}: {top}"
        );
    }
    // The sketches hold at most 2,048 counters a limit and the memory store
    // 20,000 states: the flood's 100,000 keys cannot grow memory with them.
    assert!(
        after.saturating_sub(before) < 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test]
async fn a_key_counted_on_three_gateways_sharing_redis_is_ranked_by_its_total() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let store = format!(
        "store: {{ backend: redis, redis: {{ url: \"{}\", timeout: 5s }}, on_error: deny }}",
        redis.url()
    );
    let yaml = config(&store, "");
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(Gateway::start(&yaml, upstream.addr).await);
    }
    for gw in &gateways {
        send_all(gw, (0..15).map(|_| "shared".to_string())).await;
    }
    let c = client();
    let url = gateways[0].admin_url("/-/limits/api/per_client/top?n=1&by=requests");
    eventually(
        Duration::from_secs(10),
        "the three gateways' counts merged",
        || {
            let (c, url) = (c.clone(), url.clone());
            async move {
                let top = get_json(&c, &url).await;
                top["gateways"] == 3
                    && top["keys"][0]["requests"] == 45
                    && top["keys"][0]["refusals"] == 35
            }
        },
    )
    .await;
    let top = get_json(&c, &url).await;
    assert!(
        top["keys"][0].get("key").is_none(),
        "digests only by default: {top}"
    );
}

async fn admin(gw: &Gateway, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
    let resp = client()
        .request(method, gw.admin_url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test]
async fn the_limit_endpoints_answer_bad_requests_with_json_4xx() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config("", "  admin_token: s3cret\n"), upstream.addr).await;
    let get = reqwest::Method::GET;
    let cases = [
        (get.clone(), "/-/limits/api/per_client/top?n=0", 400),
        (get.clone(), "/-/limits/api/per_client/top?n=lots", 400),
        (get.clone(), "/-/limits/api/per_client/top?by=vibes", 400),
        (get.clone(), "/-/limits/nope/per_client/top", 404),
        (get.clone(), "/-/limits/api/nope/keys/x", 404),
        (get.clone(), "/-/limits/api/per_client/keys/%zz", 400),
        (get.clone(), "/-/limits/api/per_client/elsewhere", 404),
        (reqwest::Method::POST, "/-/limits/api/per_client/top", 405),
        (reqwest::Method::PUT, "/-/limits/api/per_client/keys/x", 405),
        (reqwest::Method::POST, "/-/bans", 405),
    ];
    for (method, path, status) in cases {
        let (got, body) = admin(&gw, method.clone(), path, "s3cret").await;
        assert_eq!(got, status, "{method} {path}: {body}");
        assert!(body["error"].is_string(), "{method} {path}: {body}");
    }
    let (status, body) = admin(&gw, get.clone(), "/-/limits", "wrong").await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = admin(&gw, get, "/-/limits", "s3cret").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["rules"][0]["limits"][0]["limit"], "per_client",
        "{body}"
    );
}

/// A raw non-ASCII byte right after `/-/limits` (clients do send them) is
/// a JSON 404, not a panic of the admin thread.
#[tokio::test]
async fn a_non_ascii_byte_after_the_limits_path_is_a_json_404() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config("", ""), upstream.addr).await;
    let mut stream = tokio::net::TcpStream::connect(gw.admin).await.unwrap();
    stream
        .write_all(b"GET /-/limits\xc3\xa9 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
}

#[tokio::test]
async fn a_key_unknown_to_the_limit_is_a_404_and_a_fresh_one_has_its_whole_quota() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&config("", ""), upstream.addr).await;
    let get = reqwest::Method::GET;
    let unknown = "00112233445566778899aabbccddeeff";
    let (status, body) = admin(
        &gw,
        get.clone(),
        &format!("/-/limits/api/per_client/keys/{unknown}"),
        "",
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("unknown_key")),
        "{body}"
    );
    let (status, body) = admin(&gw, get, "/-/limits/api/per_client/keys/newcomer", "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["remaining"].as_u64(), body["banned"].as_bool()),
        (Some(10), Some(false)),
        "{body}"
    );
}

/// The admin names a client by its address; the gateway counts it by its
/// IPv6 network (or as the IPv4 address a mapped one is).
#[tokio::test]
async fn an_ip_key_named_by_any_address_of_the_client_finds_its_count() {
    let upstream = Upstream::start().await;
    let yaml = format!(
        "{}  trusted_proxies: [\"127.0.0.1/32\"]\n{}rules:\n  - name: api\n    match: {{ path: /** }}\n    upstream: api\n    limits: [{{ name: per-ip, key: ip, rate: 1/minute }}]\n",
        common::SERVER,
        common::upstreams("api"),
    );
    let gw = Gateway::start(&yaml, upstream.addr).await;
    let send = |from: &'static str| {
        client()
            .get(gw.url("/thing"))
            .header("x-forwarded-for", from)
            .send()
    };
    for (client_address, named) in [
        ("2001:db8::1", "2001:db8::1"),
        ("10.1.1.1", "::ffff:10.1.1.1"),
    ] {
        assert_eq!(send(client_address).await.unwrap().status(), 200);
        assert_eq!(send(client_address).await.unwrap().status(), 429);
        let path = format!("/-/limits/api/per-ip/keys/{named}");
        let (status, body) = admin(&gw, reqwest::Method::GET, &path, "").await;
        assert_eq!(
            (status, body["remaining"].as_u64()),
            (200, Some(0)),
            "{body}"
        );
        let (status, body) = admin(&gw, reqwest::Method::DELETE, &path, "").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(send(client_address).await.unwrap().status(), 200, "{named}");
    }
}

/// A relay to Redis that forwards everything until a client sends an
/// `HSET`, then cuts that connection right after forwarding it: a publish
/// interrupted between its commands. Returns the relay's address and how
/// many connections it cut.
async fn relay_cutting_after_hset(
    redis: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The command's name as sent, not the word in a script's text.
    const HSET: &[u8] = b"$4\r\nHSET\r\n";
    let cuts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = cuts.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let Ok(mut server) = tokio::net::TcpStream::connect(redis).await else {
                continue;
            };
            let cuts = counted.clone();
            tokio::spawn(async move {
                let (mut server_read, mut server_write) = server.split();
                let (mut client_read, mut client_write) = client.split();
                let upstream = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = client_read.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || server_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        if buf[..n].windows(HSET.len()).any(|w| w == HSET) {
                            // A FIN, not a reset: Redis runs what it got.
                            let _ = server_write.shutdown().await;
                            cuts.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                };
                let downstream = tokio::io::copy(&mut server_read, &mut client_write);
                tokio::select! {
                    _ = upstream => {}
                    _ = downstream => {}
                }
                let _ = tokio::io::copy(&mut server_read, &mut tokio::io::sink()).await;
            });
        }
    });
    (addr, cuts)
}

#[tokio::test]
async fn a_top_keys_publish_cut_short_leaves_no_key_without_an_expiry() {
    use std::sync::atomic::Ordering;
    let redis = RedisServer::start();
    let redis_addr = redis.url().trim_start_matches("redis://").parse().unwrap();
    let (relay, cuts) = relay_cutting_after_hset(redis_addr).await;
    let upstream = Upstream::start().await;
    let store = format!(
        "store: {{ backend: redis, redis: {{ url: \"redis://{relay}\", timeout: 5s }}, on_error: allow }}"
    );
    let gw = Gateway::start(&config(&store, ""), upstream.addr).await;
    send_all(&gw, (0..5).map(|i| format!("client-{i}"))).await;
    eventually(
        Duration::from_secs(10),
        "a publish of top keys cut after its HSET",
        || {
            let cuts = cuts.clone();
            async move { cuts.load(Ordering::SeqCst) > 0 }
        },
    )
    .await;
    // Redis runs what the relay forwarded a moment after it was cut.
    eventually(Duration::from_secs(10), "a top keys hash in Redis", || {
        let published = redis
            .keys_and_ttls()
            .iter()
            .any(|(key, _)| key.contains(":top:") && !key.ends_with(":gateways"));
        async move { published }
    })
    .await;
    let forever: Vec<_> = redis
        .keys_and_ttls()
        .into_iter()
        .filter(|(_, ttl)| *ttl < 0)
        .collect();
    assert!(forever.is_empty(), "keys without a TTL: {forever:?}");
}

/// A gateway that stopped publishing (restarted, scaled away) leaves the
/// roll of publishers once its copy has long expired: the roll does not grow
/// with every restart.
#[tokio::test]
async fn a_gateway_gone_for_long_leaves_the_roll_of_publishers() {
    let redis = RedisServer::start();
    let upstream = Upstream::start().await;
    let store = format!(
        "store: {{ backend: redis, redis: {{ url: \"{}\" }}, on_error: allow }}",
        redis.url()
    );
    let gw = Gateway::start(&config(&store, ""), upstream.addr).await;
    let roll = || {
        redis
            .keys_and_ttls()
            .into_iter()
            .map(|(key, _)| key)
            .find(|key| key.ends_with(":gateways"))
    };
    send_all(&gw, (0..5).map(|i| format!("client-{i}"))).await;
    eventually(Duration::from_secs(10), "a roll of publishers", || {
        let found = roll().is_some();
        async move { found }
    })
    .await;
    let roll = roll().unwrap();
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let members = |connection: &mut ::redis::Connection| -> Vec<String> {
        ::redis::cmd("ZRANGE")
            .arg(&roll)
            .arg(0)
            .arg(-1)
            .query(connection)
            .unwrap()
    };
    // A gateway that last published at the epoch.
    let _: () = ::redis::cmd("ZADD")
        .arg(&roll)
        .arg(0)
        .arg("long-gone")
        .query(&mut connection)
        .unwrap();
    assert!(members(&mut connection).contains(&"long-gone".to_string()));
    send_all(&gw, (5..10).map(|i| format!("client-{i}"))).await;
    eventually(
        Duration::from_secs(10),
        "the next publish prunes it",
        || {
            let gone = !members(&mut connection).contains(&"long-gone".to_string());
            async move { gone }
        },
    )
    .await;
}
