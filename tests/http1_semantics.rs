//! HTTP/1.1 semantics through the gateway, on both request paths
//! (`server.http1_path: pingora` and `fast`): every case below runs once per
//! path, so a new request loop only ships if it passes what Pingora's does.
//!
//! Upstreams are scripted over raw TCP (every byte of framing is the test's
//! choice) and clients are raw sockets that frame responses as RFC 9112 says.
//! Every read is bounded by [`DEADLINE`]: a hang fails instead of stalling.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{eventually, Gateway, Upstream};

/// How long any one step may take before the test fails rather than hangs.
const DEADLINE: Duration = Duration::from_secs(5);

/// Runs each `async fn case(path: &str)` against both request paths, as the
/// tests `case::pingora` and `case::fast`.
macro_rules! on_both_paths {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test]
            async fn pingora() {
                super::$case("pingora").await
            }

            #[tokio::test]
            async fn fast() {
                super::$case("fast").await
            }
        }
    )+};
}

on_both_paths!(
    a_content_length_request_body_reaches_the_upstream_byte_for_byte,
    a_content_length_response_reaches_the_client_intact,
    a_chunked_request_body_reaches_the_upstream_intact,
    a_chunked_response_reaches_the_client_intact,
    a_close_delimited_response_reaches_the_client_whole_and_parsable,
    bodies_of_several_mebibytes_stream_through_intact_both_ways,
    an_early_413_reaches_a_client_still_sending_its_body,
    a_client_that_gives_up_has_its_upstream_connection_closed,
    expect_100_continue_gets_a_100_then_the_final_response,
    early_hints_before_a_200_leave_the_final_response_intact,
    early_hints_never_reach_an_http_1_0_client_except_in_pingora,
    a_response_coded_before_chunked_keeps_its_codings,
    a_head_response_carries_no_body_and_the_connection_stays_usable,
    a_204_carries_no_body_and_the_connection_stays_usable,
    a_304_carries_no_body_and_the_connection_stays_usable,
    requests_succeed_with_their_routed_target_when_the_upstream_quietly_closes_pooled_connections,
    pipelined_requests_are_answered_in_order_and_forwarded_once,
    a_keep_alive_client_is_served_over_pooled_upstream_connections,
    a_post_after_the_upstream_closed_its_idle_connection_goes_on_a_fresh_one,
    an_upstream_connection_a_quiet_client_used_serves_other_clients,
    an_upstream_connection_a_departed_client_used_serves_other_clients,
    an_upstream_connection_left_for_another_server_serves_other_clients,
    an_upstream_that_says_close_in_a_second_connection_line_gets_no_more_requests_except_in_pingora,
    an_upstream_connection_a_client_used_before_its_tunnel_serves_other_clients,
    hop_by_hop_request_headers_never_reach_the_upstream,
    end_to_end_response_headers_are_relayed_and_hop_by_hop_ones_stay_behind_except_in_pingora,
    a_request_with_both_content_length_and_chunked_smuggles_nothing,
    a_request_with_two_content_lengths_smuggles_nothing,
    a_request_with_an_invalid_chunk_size_smuggles_nothing,
    a_request_that_names_no_host_is_refused_before_any_rule,
    a_connect_request_is_refused_with_405_json_naming_the_allowed_methods,
    a_method_in_lower_case_is_refused_rather_than_routed_past_method_rules,
    a_host_or_method_longer_than_any_real_one_is_refused,
    a_request_head_over_max_header_bytes_is_refused_with_431_and_one_within_it_served,
    a_transfer_coding_other_than_chunked_is_refused_with_501,
    a_repeated_content_length_goes_upstream_as_one,
    an_upstream_that_never_answers_is_a_504_json,
    a_client_that_sends_half_a_head_is_closed_after_the_header_timeout,
    a_client_that_stops_sending_its_body_is_answered_408_and_the_upstream_is_not_blamed,
    the_third_request_over_a_limit_of_two_is_429_with_ratelimit_headers,
    an_http_1_0_client_without_keep_alive_gets_its_answer_and_the_connection_closes,
    a_chunked_answer_reaches_an_http_1_0_client_decoded_except_in_pingora,
    an_http_1_0_upgrade_offer_is_ignored_and_the_request_served_plainly,
    a_request_in_flight_at_a_graceful_shutdown_completes,
);

// ---------------------------------------------------------------------------
// 1. Content-Length bodies

async fn a_content_length_request_body_reaches_the_upstream_byte_for_byte(path: &str) {
    let upstream = Scripted::answering(|_| ok("stored")).await;
    let gw = gateway(path, upstream.addr).await;
    // Every byte value, CR and LF included, over several reads.
    let body = pattern(200_000, 1);
    let answer = Client::connect(gw.addr)
        .await
        .exchange(post("/upload", &body))
        .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let received = upstream.only_request();
    assert_eq!(received.head.content_length(), Some(body.len()));
    assert!(received.body == body, "the body changed on its way");
}

async fn a_content_length_response_reaches_the_client_intact(path: &str) {
    let body = pattern(200_000, 2);
    let sent = body.clone();
    let upstream = Scripted::answering(move |_| ok(&sent)).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client.exchange(get("/download")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(answer.body == body, "the body changed on its way");
    // Framed exactly: the connection carries the next exchange.
    assert_eq!(client.exchange(get("/again")).await.status(), 200);
}

// ---------------------------------------------------------------------------
// 2. Chunked bodies

async fn a_chunked_request_body_reaches_the_upstream_intact(path: &str) {
    let upstream = Scripted::answering(|_| ok("stored")).await;
    let gw = gateway(path, upstream.addr).await;
    let parts = [
        pattern(1, 3),
        pattern(4096, 4),
        pattern(7, 5),
        pattern(70_000, 6),
    ];
    // Upper- and lower-case hex sizes, and a chunk extension to be ignored.
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, part) in parts.iter().enumerate() {
        let size = match i {
            1 => format!("{:X};name=value", part.len()),
            _ => format!("{:x}", part.len()),
        };
        request.extend_from_slice(format!("{size}\r\n").as_bytes());
        request.extend_from_slice(part);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = Client::connect(gw.addr).await.exchange(request).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(
        upstream.only_request().body == parts.concat(),
        "the decoded body changed on its way"
    );
}

async fn a_chunked_response_reaches_the_client_intact(path: &str) {
    let parts = [
        pattern(5, 7),
        pattern(65_536, 8),
        pattern(1, 9),
        pattern(9_999, 10),
    ];
    let sent = parts.clone();
    let upstream = Scripted::answering(move |_| chunked(&sent)).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client.exchange(get("/stream")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(answer.body == parts.concat(), "the body changed on its way");
    assert_eq!(client.exchange(get("/again")).await.status(), 200);
}

// ---------------------------------------------------------------------------
// 3. A response delimited by the upstream closing its connection

async fn a_close_delimited_response_reaches_the_client_whole_and_parsable(path: &str) {
    let body = pattern(150_000, 11);
    let sent = body.clone();
    let upstream = Scripted::start(move |mut conn| {
        let sent = sent.clone();
        async move {
            if conn.request().await.is_some() {
                let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n";
                conn.write([&head[..], &sent].concat()).await;
            }
            // Dropped: the end of the body is the end of the connection.
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    // The client frames the answer by what it says: chunked, a length, or
    // the connection closing.
    let answer = client.exchange(get("/until-close")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(answer.body == body, "the body changed on its way");
}

// ---------------------------------------------------------------------------
// 4. Large bodies

async fn bodies_of_several_mebibytes_stream_through_intact_both_ways(path: &str) {
    let response = pattern(5 << 20, 12);
    let sent = response.clone();
    let upstream = Scripted::answering(move |_| {
        let parts: Vec<Vec<u8>> = sent.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
        chunked(&parts)
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let request = pattern(4 << 20, 13);
    let answer = Client::connect(gw.addr)
        .await
        .exchange(post("/big", &request))
        .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(
        upstream.only_request().body == request,
        "the request body changed"
    );
    assert_eq!(answer.body.len(), response.len());
    assert!(answer.body == response, "the response body changed");
}

// ---------------------------------------------------------------------------
// 5. Full duplex: an answer before the request body is over

async fn an_early_413_reaches_a_client_still_sending_its_body(path: &str) {
    let refusal = br#"{"error":"too big"}"#;
    let upstream = Scripted::start(move |mut conn| async move {
        let Some(head) = conn.request_head().await else {
            return;
        };
        if head.target() == "/upload" {
            // Refuses on seeing the head, then drains what keeps coming
            // until the gateway closes (a lingering close, as servers do).
            let answer = response("413 Payload Too Large", "Connection: close\r\n", refusal);
            conn.write(answer).await;
            conn.until_closed().await;
        } else if conn.body_of(&head).await.is_some() {
            conn.write(ok("served")).await;
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    // 8 MiB announced, 1 MiB sent: the rest waits for the answer, so only a
    // gateway that relays the response while the body streams answers.
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        8 << 20
    );
    client.send(head).await;
    client.send(pattern(1 << 20, 14)).await;
    let answer = client.response("POST").await;
    assert_eq!(answer.status(), 413, "{answer:?}");
    assert_eq!(answer.body, refusal);
    drop(client);
    let answer = Client::connect(gw.addr).await.exchange(get("/after")).await;
    assert_eq!(answer.status(), 200, "the gateway still serves: {answer:?}");
}

// ---------------------------------------------------------------------------
// 6. A client that gives up

async fn a_client_that_gives_up_has_its_upstream_connection_closed(path: &str) {
    let upstream = Scripted::start(|mut conn| async move {
        while let Some(request) = conn.request().await {
            if request.head.target() == "/hold" {
                // Never answers; notes when the gateway lets go.
                conn.until_closed().await;
                return;
            }
            conn.write(ok("served")).await;
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(get("/hold")).await;
    eventually(DEADLINE, "the request reaches the upstream", || async {
        upstream.heads().len() == 1
    })
    .await;
    drop(client);
    eventually(
        DEADLINE,
        "the gateway closes its upstream connection",
        || async { upstream.closed_by_gateway() == 1 },
    )
    .await;
    let answer = Client::connect(gw.addr).await.exchange(get("/after")).await;
    assert_eq!(answer.status(), 200, "the gateway still serves: {answer:?}");
}

// ---------------------------------------------------------------------------
// 7. Informational responses

async fn expect_100_continue_gets_a_100_then_the_final_response(path: &str) {
    let upstream = Scripted::start(|mut conn| async move {
        let Some(head) = conn.request_head().await else {
            return;
        };
        if head.tokens("expect").iter().any(|t| t == "100-continue") {
            conn.write("HTTP/1.1 100 Continue\r\n\r\n").await;
        }
        if let Some(body) = conn.body_of(&head).await {
            conn.write(ok([&b"got: "[..], &body].concat())).await;
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let body = b"hello, upstream";
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.send(head).await;
    // The body is only sent once the 100 arrives (from the gateway itself or
    // relayed from the upstream).
    let interim = client.next("POST").await.expect("closed instead of a 100");
    assert_eq!(interim.status(), 100, "{interim:?}");
    client.send(body).await;
    let answer = client.response("POST").await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.text(), "got: hello, upstream");
}

/// An upstream that sends `103 Early Hints` before each `200` ("the page").
async fn hinting_upstream() -> Scripted {
    Scripted::answering(|_| {
        let hints = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n";
        [&hints[..], &ok("the page")].concat()
    })
    .await
}

async fn early_hints_before_a_200_leave_the_final_response_intact(path: &str) {
    let upstream = hinting_upstream().await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(get("/page")).await;
    // The 103 may be relayed or dropped; anything relayed must be framed.
    let mut interim = Vec::new();
    let answer = loop {
        let message = client.next("GET").await.expect("closed before the 200");
        if message.status() >= 200 {
            break message;
        }
        interim.push(message.status());
    };
    assert!(interim.iter().all(|s| *s == 103), "{interim:?}");
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.text(), "the page");
    assert_eq!(client.exchange(get("/again")).await.text(), "the page");
}

async fn early_hints_never_reach_an_http_1_0_client_except_in_pingora(path: &str) {
    let upstream = hinting_upstream().await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client.send("GET /page HTTP/1.0\r\nHost: t\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&client.rest().await).into_owned();
    // RFC 9110 15.2: no 1xx to an HTTP/1.0 client, which would take it for
    // the answer. The fast loop holds it back; Pingora 0.9's proxy relays
    // it (a known Pingora bug).
    assert_eq!(
        answer.starts_with("HTTP/1.1 103"),
        path == "pingora",
        "{answer}"
    );
    assert!(answer.ends_with("the page"), "{answer}");
}

async fn a_response_coded_before_chunked_keeps_its_codings(path: &str) {
    // `gzip, chunked`: the chunks frame the body, the gzip coding is the
    // client's to undo (RFC 9112 6.1); neither may be lost on the way.
    const CODED: &[u8] = b"\x1f\x8b not really gzip";
    let upstream = Scripted::answering(|_| {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        let chunk = format!("{:x}\r\n", CODED.len());
        [&head[..], chunk.as_bytes(), CODED, b"\r\n0\r\n\r\n"].concat()
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client
        .send("GET /coded HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    let raw = client.rest().await;
    let split = find(&raw, b"\r\n\r\n").expect("a response head") + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    assert!(
        head.contains("transfer-encoding: gzip, chunked\r\n"),
        "{head}"
    );
    assert_eq!(dechunk(&raw[split..]).as_deref(), Some(CODED), "{head}");
}

/// The content of a complete chunked body (no trailers), or `None` if it
/// is not one.
fn dechunk(mut wire: &[u8]) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    loop {
        let line_end = find(wire, b"\r\n")?;
        let size = std::str::from_utf8(&wire[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        wire = &wire[line_end + 2..];
        if size == 0 {
            return (wire == b"\r\n").then_some(content);
        }
        content.extend_from_slice(wire.get(..size)?);
        wire = wire.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

// ---------------------------------------------------------------------------
// 8. Responses that never have a body

async fn a_head_response_carries_no_body_and_the_connection_stays_usable(path: &str) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 42\r\n\r\n";
    no_body_then_usable(path, "HEAD /thing HTTP/1.1\r\nHost: t\r\n\r\n", head, 200).await;
}

async fn a_204_carries_no_body_and_the_connection_stays_usable(path: &str) {
    // RFC 9112 6.3: a 204 ends at its head, whatever Content-Length says.
    let head = "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n";
    no_body_then_usable(path, "DELETE /thing HTTP/1.1\r\nHost: t\r\n\r\n", head, 204).await;
}

async fn a_304_carries_no_body_and_the_connection_stays_usable(path: &str) {
    let head = "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 42\r\n\r\n";
    let request = "GET /thing HTTP/1.1\r\nHost: t\r\nIf-None-Match: \"v1\"\r\n\r\n";
    no_body_then_usable(path, request, head, 304).await;
}

/// `request` is answered by the upstream with the bodiless `upstream_head`;
/// the client gets `status` with no body, and then a second request on the
/// same connection is answered (a stray body byte would corrupt it).
async fn no_body_then_usable(path: &str, request: &str, upstream_head: &'static str, status: u16) {
    let upstream = Scripted::answering(move |r| match r.head.target() {
        "/after" => ok("after"),
        _ => upstream_head.as_bytes().to_vec(),
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client.exchange(request).await;
    assert_eq!(answer.status(), status, "{answer:?}");
    assert!(answer.body.is_empty(), "{answer:?}");
    let next = client.exchange(get("/after")).await;
    assert_eq!(next.status(), 200, "{next:?}");
    assert_eq!(next.text(), "after");
}

// ---------------------------------------------------------------------------
// 9. Pooled upstream connections that went stale

async fn requests_succeed_with_their_routed_target_when_the_upstream_quietly_closes_pooled_connections(
    path: &str,
) {
    // Answers one request per connection, says nothing of closing, and
    // closes: every other connection at once, the others only when the next
    // request arrives (as when a keep-alive timeout fires just as the
    // gateway reuses the connection), so that request is never answered.
    let upstream = Scripted::start(|mut conn| async move {
        if let Some(request) = conn.request().await {
            conn.write(ok(request.head.target())).await;
            if conn.index % 2 == 1 {
                conn.until_more_arrives().await;
            }
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let n = 30;
    for i in 0..n {
        // Routed as `/item/{i}`, which a retry must send too: the target
        // the client wrote never reaches the upstream.
        let answer = client.exchange(get(&format!("/item//{i}"))).await;
        assert_eq!(answer.status(), 200, "request {i}: {answer:?}");
        assert_eq!(answer.text(), format!("/item/{i}"));
    }
    let expected: Vec<String> = (0..n).map(|i| format!("/item/{i}")).collect();
    assert_eq!(upstream.targets(), expected, "each request served once");
}

// ---------------------------------------------------------------------------
// 10. Pipelining

async fn pipelined_requests_are_answered_in_order_and_forwarded_once(path: &str) {
    let upstream =
        Scripted::answering(|r| ok([r.head.target().as_bytes(), b":", &r.body].concat())).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client
        .send(concat!(
            "GET /first HTTP/1.1\r\nHost: t\r\n\r\n",
            "POST /second HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
            "GET /third HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /fourth HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        ))
        .await;
    let mut bodies = Vec::new();
    for method in ["GET", "POST", "GET", "GET"] {
        let answer = client.response(method).await;
        assert_eq!(answer.status(), 200, "{answer:?}");
        bodies.push(answer.text());
    }
    assert_eq!(bodies, ["/first:", "/second:abc", "/third:", "/fourth:"]);
    assert_eq!(client.rest().await, b"", "nothing after the last answer");
    assert_eq!(
        upstream.targets(),
        ["/first", "/second", "/third", "/fourth"]
    );
}

// ---------------------------------------------------------------------------
// 11. Keep-alive and the upstream pool

async fn a_keep_alive_client_is_served_over_pooled_upstream_connections(path: &str) {
    let upstream = Scripted::answering(|r| ok(r.head.target())).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let n = 20;
    for i in 0..n {
        let target = format!("/n/{i}");
        let answer = client.exchange(get(&target)).await;
        assert_eq!(answer.status(), 200, "request {i}: {answer:?}");
        assert_eq!(answer.text(), target);
    }
    assert_eq!(upstream.targets().len(), n);
    assert!(
        upstream.connections() < n,
        "{} upstream connections for {n} requests",
        upstream.connections()
    );
}

async fn a_post_after_the_upstream_closed_its_idle_connection_goes_on_a_fresh_one(path: &str) {
    // Answers one request per connection without saying it will close,
    // then closes, as an upstream whose keep-alive timeout fires does. A
    // POST is not retried, so it must not be sent on the closed connection.
    let closed = Arc::new(AtomicUsize::new(0));
    let count = closed.clone();
    let upstream = Scripted::start(move |mut conn| {
        let count = count.clone();
        async move {
            if let Some(request) = conn.request().await {
                conn.write(ok(request.head.target())).await;
            }
            drop(conn);
            count.fetch_add(1, Ordering::SeqCst);
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.exchange(get("/first")).await.status(), 200);
    eventually(DEADLINE, "the upstream closes its connection", || {
        let closed = closed.load(Ordering::SeqCst);
        async move { closed == 1 }
    })
    .await;
    let answer = client.exchange(post("/second", b"once")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(upstream.targets(), ["/first", "/second"]);
    assert_eq!(upstream.connections(), 2);
}

async fn an_upstream_connection_a_quiet_client_used_serves_other_clients(path: &str) {
    let upstream = Scripted::answering(|r| ok(r.head.target())).await;
    let gw = gateway(path, upstream.addr).await;
    let mut quiet = Client::connect(gw.addr).await;
    assert_eq!(quiet.exchange(get("/quiet")).await.status(), 200);
    // Longer than a client connection keeps its upstream connection for
    // its next request (the fast loop's 50 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut other = Client::connect(gw.addr).await;
    assert_eq!(other.exchange(get("/other")).await.status(), 200);
    assert_eq!(upstream.connections(), 1, "the other client got its own");
}

async fn an_upstream_connection_a_departed_client_used_serves_other_clients(path: &str) {
    let upstream = Scripted::answering(|r| ok(r.head.target())).await;
    let gw = gateway(path, upstream.addr).await;
    let mut departed = Client::connect(gw.addr).await;
    assert_eq!(departed.exchange(get("/departed")).await.status(), 200);
    drop(departed);
    // A client that comes after finds the connection once the gateway has
    // seen the departure: each one asks, and leaves, until one is served
    // without a new upstream connection (a connection a departed client
    // held and the gateway closed would make every one open another).
    eventually(
        DEADLINE,
        "a new client served over a connection a departed one used",
        || {
            let addr = gw.addr;
            let upstream = &upstream;
            async move {
                let before = upstream.connections();
                let mut client = Client::connect(addr).await;
                assert_eq!(client.exchange(get("/next")).await.status(), 200);
                upstream.connections() == before
            }
        },
    )
    .await;
}

async fn an_upstream_connection_left_for_another_server_serves_other_clients(path: &str) {
    let (first, second) = (
        Scripted::answering(|r| ok(r.head.target())).await,
        Scripted::answering(|r| ok(r.head.target())).await,
    );
    // One upstream of two servers, taken in turn.
    let yaml = Config::default().render(path).replace(
        "[\"{upstream}\"]",
        &format!("[\"{{upstream}}\", \"{}\"]", second.addr),
    );
    let gw = Gateway::start(&yaml, first.addr).await;
    assert_runs_on(gw.admin, path).await;
    let mut client = Client::connect(gw.addr).await;
    // One request to each server: the connection to the one it left stays
    // open for others.
    assert_eq!(client.exchange(get("/one")).await.status(), 200);
    assert_eq!(client.exchange(get("/two")).await.status(), 200);
    let mut other = Client::connect(gw.addr).await;
    assert_eq!(other.exchange(get("/three")).await.status(), 200);
    assert_eq!(
        first.connections() + second.connections(),
        2,
        "the server the first client left got a new connection"
    );
}

async fn an_upstream_that_says_close_in_a_second_connection_line_gets_no_more_requests_except_in_pingora(
    path: &str,
) {
    // `Connection: keep-alive` then `Connection: close` is one list (RFC
    // 9110 §5.3): the upstream closes. This one leaves its socket open, so a
    // request sent on it anyway would be answered there.
    let upstream = Scripted::answering(|r| {
        let body = r.head.target();
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.exchange(get("/first")).await.status(), 200);
    assert_eq!(client.exchange(get("/second")).await.status(), 200);
    // Pingora 0.9 reads only the first `Connection` line (its proxy reuses
    // the connection); the fast loop reads them all.
    let expected = if path == "pingora" { 1 } else { 2 };
    assert_eq!(upstream.connections(), expected, "upstream connections");
}

async fn an_upstream_connection_a_client_used_before_its_tunnel_serves_other_clients(path: &str) {
    let upstream = Scripted::start(|mut conn| async move {
        while let Some(request) = conn.request().await {
            if !request.head.has("upgrade") {
                conn.write(ok(request.head.target())).await;
                continue;
            }
            conn.write(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
            .await;
            conn.until_closed().await;
            return;
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    assert_eq!(client.exchange(get("/plain")).await.status(), 200);
    client
        .send(
            "GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
    let switched = client.next("GET").await.expect("an answer to the upgrade");
    assert_eq!(switched.status(), 101, "{switched:?}");
    // The tunnel is open; another client's request finds the connection
    // the first client's plain request used.
    let mut other = Client::connect(gw.addr).await;
    assert_eq!(other.exchange(get("/other")).await.status(), 200);
    assert_eq!(upstream.connections(), 2, "the plain one and the tunnel's");
}

// ---------------------------------------------------------------------------
// 12. Hop-by-hop headers

async fn hop_by_hop_request_headers_never_reach_the_upstream(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    let request = concat!(
        "GET /hop HTTP/1.1\r\n",
        "Host: t\r\n",
        "Connection: keep-alive, X-Secret, Upgrade, HTTP2-Settings\r\n",
        "X-Secret: for the gateway only\r\n",
        "Keep-Alive: timeout=5\r\n",
        "Proxy-Connection: keep-alive\r\n",
        "TE: trailers\r\n",
        "Upgrade: h2c\r\n",
        "HTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "X-End-To-End: kept\r\n",
        "\r\n",
    );
    let answer = Client::connect(gw.addr).await.exchange(request).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    let seen = upstream.only_request().head;
    for name in [
        "x-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "http2-settings",
    ] {
        assert!(!seen.has(name), "{name} reached the upstream: {seen:?}");
    }
    let connection = seen.tokens("connection");
    assert!(
        connection.iter().all(|t| t == "keep-alive" || t == "close"),
        "the upstream's Connection names the client's options: {seen:?}"
    );
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
}

async fn end_to_end_response_headers_are_relayed_and_hop_by_hop_ones_stay_behind_except_in_pingora(
    path: &str,
) {
    let upstream = Scripted::answering(|_| {
        let headers = concat!(
            "Connection: X-Internal\r\n",
            "X-Internal: upstream only\r\n",
            "Keep-Alive: timeout=5\r\n",
            "X-End-To-End: kept\r\n",
        );
        response("200 OK", headers, b"ok")
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let answer = Client::connect(gw.addr).await.exchange(get("/hop")).await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.head.header("x-end-to-end"), Some("kept"));
    // The gateway's own Connection field replaces the upstream's.
    let connection = answer.head.tokens("connection");
    assert!(
        connection.iter().all(|t| t == "keep-alive" || t == "close"),
        "{answer:?}"
    );
    // RFC 9110 7.6.1: a proxy removes the fields that describe the
    // upstream's connection (those its Connection field names, Keep-Alive)
    // from responses too. The fast loop does; Pingora 0.9's proxy strips
    // them from requests only and relays them (a known Pingora bug).
    let leaked = (path == "pingora").then_some(());
    assert_eq!(
        answer.head.header("x-internal"),
        leaked.map(|()| "upstream only"),
        "{answer:?}"
    );
    assert_eq!(
        answer.head.header("keep-alive"),
        leaked.map(|()| "timeout=5"),
        "{answer:?}"
    );
}

/// The path is read per connection: a reload moves new connections to it,
/// and a connection already open stays where it began. (Told apart by the
/// upstream's `Keep-Alive` field, which only Pingora's proxy relays.)
#[tokio::test]
async fn a_reload_moves_new_connections_to_the_other_path() {
    let upstream =
        Scripted::answering(|_| response("200 OK", "Keep-Alive: timeout=5\r\n", b"ok")).await;
    let gw = gateway("pingora", upstream.addr).await;
    let mut before = Client::connect(gw.addr).await;
    let relayed = |answer: &Answer| answer.head.header("keep-alive").is_some();
    assert!(relayed(&before.exchange(get("/a")).await));

    gw.rewrite(&Config::default().render("fast"), upstream.addr);
    let reloaded = common::client()
        .post(gw.admin_url("/-/reload"))
        .send()
        .await
        .expect("the admin listener answers");
    assert_eq!(reloaded.status(), 200);
    let summary: serde_json::Value = reloaded.json().await.expect("a JSON summary");
    assert_eq!(
        summary["summary"]["restart_required"],
        serde_json::json!([])
    );
    assert_runs_on(gw.admin, "fast").await;

    let mut after = Client::connect(gw.addr).await;
    assert!(!relayed(&after.exchange(get("/b")).await));
    assert!(relayed(&before.exchange(get("/c")).await));
}

// ---------------------------------------------------------------------------
// 13. Request smuggling

/// A request line hidden inside the attacking requests' bodies.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

async fn a_request_with_both_content_length_and_chunked_smuggles_nothing(path: &str) {
    // Read by Transfer-Encoding, the body ends at `0`, and SMUGGLED is a
    // request of its own; read by Content-Length, it is part of the body.
    let request = format!(
        "POST /outer HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
        5 + SMUGGLED.len()
    );
    nothing_smuggled(path, request).await;
}

async fn a_request_with_two_content_lengths_smuggles_nothing(path: &str) {
    let request = format!(
        "POST /outer HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
        SMUGGLED.len()
    );
    nothing_smuggled(path, request).await;
}

async fn a_request_with_an_invalid_chunk_size_smuggles_nothing(path: &str) {
    let request = format!(
        "POST /outer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{SMUGGLED}\r\n0\r\n\r\n{SMUGGLED}"
    );
    nothing_smuggled(path, request).await;
}

/// Without a host, a request would be routed past every rule that matches
/// on one (RFC 9112 §3.2: an HTTP/1.1 request without `Host` gets 400).
async fn a_request_that_names_no_host_is_refused_before_any_rule(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    for request in [
        "GET /x HTTP/1.1\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: \r\n\r\n",
        "GET /x HTTP/1.0\r\n\r\n",
    ] {
        let answer = Client::connect(gw.addr).await.exchange(request).await;
        assert_eq!(answer.status(), 400, "{request:?}: {answer:?}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["reason"], "missing_host", "{request:?}");
    }
    assert!(upstream.heads().is_empty());
}

async fn a_connect_request_is_refused_with_405_json_naming_the_allowed_methods(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client
        .exchange("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n")
        .await;
    assert_eq!(answer.status(), 405, "{answer:?}");
    let allow = answer.head.header("allow").unwrap_or_default();
    assert!(
        allow.contains("GET") && !allow.contains("CONNECT"),
        "{answer:?}"
    );
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"], "method_not_allowed");
    // What a client sends next would be a tunnel's bytes: not read as a
    // request.
    assert_eq!(client.rest().await, b"", "closed after the refusal");
    assert!(upstream.heads().is_empty());
}

/// `post` matches no `methods: [POST]` rule, yet an upstream that reads
/// methods without case would serve it as a POST.
async fn a_method_in_lower_case_is_refused_rather_than_routed_past_method_rules(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    let answer = Client::connect(gw.addr)
        .await
        .exchange("post /x HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        .await;
    assert_eq!(answer.status(), 400, "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["reason"], "lowercase_method");
    assert!(upstream.heads().is_empty());
}

/// No DNS name is longer than 253 characters and no registered method than
/// 17: longer ones would only be forwarded and logged whole.
async fn a_host_or_method_longer_than_any_real_one_is_refused(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    let long_host = format!(
        "GET /x HTTP/1.1\r\nHost: {}.example\r\n\r\n",
        "a".repeat(300)
    );
    let long_method = format!("{} /x HTTP/1.1\r\nHost: t\r\n\r\n", "X".repeat(40));
    for (request, reason) in [
        (long_host, "host_too_long"),
        (long_method, "method_too_long"),
    ] {
        let answer = Client::connect(gw.addr).await.exchange(&request).await;
        assert_eq!(answer.status(), 400, "{reason}: {answer:?}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body["reason"], reason);
    }
    assert!(upstream.heads().is_empty());
}

async fn a_request_head_over_max_header_bytes_is_refused_with_431_and_one_within_it_served(
    path: &str,
) {
    let upstream = Scripted::answering(|r| ok(r.head.target())).await;
    let config = Config {
        server: "  max_header_bytes: 4096\n",
        ..Config::default()
    };
    let gw = config.start(path, upstream.addr).await;
    let with_cookie = |bytes: usize| {
        format!(
            "GET /{bytes} HTTP/1.1\r\nHost: t\r\nCookie: {}\r\n\r\n",
            "c".repeat(bytes)
        )
    };
    let within = Client::connect(gw.addr)
        .await
        .exchange(&with_cookie(3500))
        .await;
    assert_eq!(within.status(), 200, "{within:?}");
    let over = Client::connect(gw.addr)
        .await
        .exchange(&with_cookie(5000))
        .await;
    assert_eq!(over.status(), 431, "{over:?}");
    let body: serde_json::Value = serde_json::from_slice(&over.body).unwrap();
    assert_eq!(body["error"], "header_too_large");
    assert_eq!(body["max_bytes"], 4096);
    let targets: Vec<String> = upstream
        .heads()
        .iter()
        .map(|h| h.target().to_string())
        .collect();
    assert_eq!(
        targets,
        ["/3500"],
        "only the head within the cap went upstream"
    );
}

/// Decoded by chunked alone, the body would reach the upstream with its
/// other codings lost (RFC 9112 §6.1: 501 for a coding not understood).
async fn a_transfer_coding_other_than_chunked_is_refused_with_501(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    let request = "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n";
    let answer = Client::connect(gw.addr).await.exchange(request).await;
    assert_eq!(answer.status(), 501, "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"], "not_implemented");
    assert_eq!(body["reason"], "unsupported_transfer_coding");
    assert!(upstream.heads().is_empty());
}

/// RFC 9110 §8.6: a list of equal lengths is read as the one number, and a
/// proxy passes it on as one.
async fn a_repeated_content_length_goes_upstream_as_one(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let gw = gateway(path, upstream.addr).await;
    for lengths in [
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
    ] {
        let request = format!("POST /x HTTP/1.1\r\nHost: t\r\n{lengths}\r\nhello");
        let answer = Client::connect(gw.addr).await.exchange(request).await;
        assert_eq!(answer.status(), 200, "{lengths:?}: {answer:?}");
    }
    for received in upstream.requests() {
        let lengths: Vec<&(String, String)> = received
            .head
            .fields
            .iter()
            .filter(|(name, _)| name == "content-length")
            .collect();
        assert_eq!(lengths, [&("content-length".to_string(), "5".to_string())]);
        assert_eq!(received.body, b"hello");
    }
    assert_eq!(upstream.requests().len(), 2);
}

/// Sends an ambiguously framed `request` hiding [`SMUGGLED`] and checks the
/// defence: the upstream never sees the hidden request nor more than one
/// request, nor a request framed two ways; the client gets at most one
/// answer, a 4xx unless the outer request went through, and then the
/// connection is closed.
async fn nothing_smuggled(path: &str, request: String) {
    let upstream = Scripted::answering(|r| ok(r.head.target())).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(request).await;
    let mut answers = Vec::new();
    while let Some(answer) = client.next("POST").await {
        answers.push(answer);
    }
    let heads = upstream.heads();
    let targets: Vec<&str> = heads.iter().map(Head::target).collect();
    assert!(!targets.contains(&"/smuggled"), "smuggled: {targets:?}");
    assert!(heads.len() <= 1, "several upstream requests: {targets:?}");
    for head in &heads {
        assert!(
            !(head.has("content-length") && head.has("transfer-encoding")),
            "forwarded with two framings: {head:?}"
        );
    }
    assert!(answers.len() <= 1, "several answers: {answers:?}");
    if let Some(answer) = answers.first() {
        let status = answer.status();
        assert!(
            (400..500).contains(&status) || (status == 200 && heads.len() == 1),
            "{answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// 14. Timeouts

async fn an_upstream_that_never_answers_is_a_504_json(path: &str) {
    let (silent, _task) = common::silent_upstream().await;
    let config = Config {
        upstream: ", read_timeout: 300ms",
        ..Config::default()
    };
    let gw = config.start(path, silent).await;
    let answer = Client::connect(gw.addr).await.exchange(get("/slow")).await;
    assert_eq!(answer.status(), 504, "{answer:?}");
    assert_eq!(answer.head.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"], "upstream_timeout");
}

async fn a_client_that_sends_half_a_head_is_closed_after_the_header_timeout(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let config = Config {
        server: "  header_timeout: 1s\n",
        ..Config::default()
    };
    let gw = config.start(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client
        .send("GET /half HTTP/1.1\r\nHost: t\r\nX-Waiting: for")
        .await;
    let said = String::from_utf8_lossy(&client.rest().await).into_owned();
    // Closed, maybe after a 408 or another 4xx.
    assert!(said.is_empty() || said.starts_with("HTTP/1.1 4"), "{said}");
    assert!(upstream.heads().is_empty());
}

async fn a_client_that_stops_sending_its_body_is_answered_408_and_the_upstream_is_not_blamed(
    path: &str,
) {
    // The upstream waits for the whole body, as most do.
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let config = Config {
        server: "  body_timeout: 300ms\n",
        // Shorter than the client's: the upstream's silence while the body
        // is still to come is not the upstream's failure.
        upstream: ", read_timeout: 200ms",
        ..Config::default()
    };
    let gw = config.start(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client
        .send("POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nhel")
        .await;
    let answer = client.response("POST").await;
    assert_eq!(answer.status(), 408, "{answer:?}");
    let body: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(body["error"], "body_timeout");
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("tollgate_upstream_errors_total{upstream=\"api\"} 1"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------
// 15. Limits

async fn the_third_request_over_a_limit_of_two_is_429_with_ratelimit_headers(path: &str) {
    let upstream = Scripted::answering(|_| ok("ok")).await;
    let config = Config {
        rule: "    limits: [{ name: per-ip, key: ip, rate: 2/minute }]\n",
        ..Config::default()
    };
    let gw = config.start(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    for remaining in [1, 0] {
        let answer = client.exchange(get("/limited")).await;
        assert_eq!(answer.status(), 200, "{answer:?}");
        assert_eq!(
            answer.head.header("ratelimit-policy"),
            Some("\"per-ip\";q=2;w=60")
        );
        let ratelimit = answer.head.header("ratelimit").unwrap_or_default();
        assert!(
            ratelimit.starts_with(&format!("\"per-ip\";r={remaining};t=")),
            "{answer:?}"
        );
    }
    let denied = client.exchange(get("/limited")).await;
    assert_eq!(denied.status(), 429, "{denied:?}");
    let retry_after: u64 = denied.head.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry_after), "{denied:?}");
    assert_eq!(
        denied.head.header("ratelimit-policy"),
        Some("\"per-ip\";q=2;w=60")
    );
    assert_eq!(
        denied.head.header("ratelimit"),
        Some(format!("\"per-ip\";r=0;t={retry_after}").as_str())
    );
    let body: serde_json::Value = serde_json::from_slice(&denied.body).unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["limit"], "per-ip");
    assert_eq!(upstream.heads().len(), 2);
}

// ---------------------------------------------------------------------------
// 16. HTTP/1.0

async fn an_http_1_0_client_without_keep_alive_gets_its_answer_and_the_connection_closes(
    path: &str,
) {
    let upstream = Scripted::answering(|_| ok("hello from upstream")).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client
        .exchange("GET /old HTTP/1.0\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(!answer.head.is_chunked(), "{answer:?}");
    assert_eq!(answer.text(), "hello from upstream");
    assert_eq!(client.rest().await, b"", "closed after the answer");
}

/// RFC 9110 §7.8: a server ignores `Upgrade` in an HTTP/1.0 request (and
/// RFC 6455 needs HTTP/1.1): no tunnel, no upgrade offer upstream.
async fn an_http_1_0_upgrade_offer_is_ignored_and_the_request_served_plainly(path: &str) {
    let upstream = Scripted::answering(|_| ok("plain")).await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client
        .exchange(
            "GET /ws HTTP/1.0\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.text(), "plain");
    let forwarded = upstream.only_request();
    assert!(!forwarded.head.has("upgrade"), "{forwarded:?}");
}

async fn a_chunked_answer_reaches_an_http_1_0_client_decoded_except_in_pingora(path: &str) {
    // Chunked when the gateway's request says HTTP/1.1 (a proxy sends its
    // own version, RFC 9110 2.5); else, as to an HTTP/1.0 client, delimited
    // by closing.
    let upstream = Scripted::start(|mut conn| async move {
        while let Some(request) = conn.request().await {
            if request.head.start.ends_with("HTTP/1.1") {
                let parts = [b"hello from ".to_vec(), b"upstream".to_vec()];
                conn.write(chunked(&parts)).await;
            } else {
                conn.write("HTTP/1.0 200 OK\r\n\r\nhello from upstream")
                    .await;
                return;
            }
        }
    })
    .await;
    let gw = gateway(path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    let answer = client
        .exchange("GET /old HTTP/1.0\r\nHost: t\r\n\r\n")
        .await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert_eq!(answer.text(), "hello from upstream");
    assert_eq!(client.rest().await, b"", "closed after the answer");
    // RFC 9112 6.1: a server must not send Transfer-Encoding unless the
    // request says HTTP/1.1. The fast loop sends the decoded body delimited
    // by closing; Pingora 0.9's proxy relays it chunked to the HTTP/1.0
    // client, which cannot decode it (a known Pingora bug).
    assert_eq!(answer.head.is_chunked(), path == "pingora", "{answer:?}");
}

// ---------------------------------------------------------------------------
// 17. Graceful shutdown

async fn a_request_in_flight_at_a_graceful_shutdown_completes(path: &str) {
    let upstream = Upstream::start().await;
    let config = Config {
        server: "  grace_period: 1s\n",
        ..Config::default()
    };
    let mut gw = Terminable::start(&config, path, upstream.addr).await;
    let mut client = Client::connect(gw.addr).await;
    client.send(get("/hold")).await;
    eventually(DEADLINE, "the request is upstream", || async {
        upstream.count() == 1
    })
    .await;
    let stopped = gw.terminate();
    eventually(DEADLINE, "the listener closes", || async {
        TcpStream::connect(gw.addr).await.is_err()
    })
    .await;
    upstream.release_holds();
    let answer = client.response("GET").await;
    assert_eq!(answer.status(), 200, "{answer:?}");
    assert!(answer.text().contains("/hold"), "{answer:?}");
    // Then the connection closes (Pingora closes it at once, though its
    // answer said `Connection: keep-alive`).
    assert_eq!(client.rest().await, b"", "closed after the answer");
    within("the gateway exits after its grace period", stopped)
        .await
        .unwrap();
}

// ===========================================================================
// The gateway

/// The test config: `server.http1_path` set to the path under test, one
/// upstream `api` and one catch-all rule `api`. `server` adds indented lines
/// to `server:`, `upstream` settings to the upstream's mapping (`, key:
/// value`), `rule` indented lines to the rule.
#[derive(Default)]
struct Config<'a> {
    server: &'a str,
    upstream: &'a str,
    rule: &'a str,
}

impl Config<'_> {
    fn render(&self, path: &str) -> String {
        let Config {
            server,
            upstream,
            rule,
        } = self;
        format!(
            "
server:
  listen: [\"{{listen}}\"]
  admin: \"{{admin}}\"
  threads: 2
  http1_path: {path}
{server}upstreams: {{ api: {{ servers: [\"{{upstream}}\"]{upstream} }} }}
rules:
  - name: api
    match: {{ path: \"/**\" }}
    upstream: api
{rule}"
        )
    }

    async fn start(&self, path: &str, upstream: SocketAddr) -> Gateway {
        let gw = Gateway::start(&self.render(path), upstream).await;
        assert_runs_on(gw.admin, path).await;
        gw
    }
}

/// Fails unless the gateway whose admin listener is `admin` has
/// `server.http1_path: path` in effect, so each case runs where it says.
async fn assert_runs_on(admin: SocketAddr, path: &str) {
    let url = format!("http://{admin}/-/config");
    let config = common::get_json(&common::client(), &url).await;
    assert_eq!(config["config"]["server"]["http1_path"], path, "{config}");
}

/// A gateway on `path` with the plain config, in front of `upstream`.
async fn gateway(path: &str, upstream: SocketAddr) -> Gateway {
    Config::default().start(path, upstream).await
}

/// A gateway in this process that stops as the binary does at SIGTERM:
/// listeners close at once, requests in flight get `server.grace_period`.
/// (`Gateway` stops at once, as at SIGINT.)
struct Terminable {
    addr: SocketAddr,
    signal: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

/// Pingora's shutdown trigger, pulled by [`Terminable::terminate`].
struct Terminate(Arc<tokio::sync::Notify>);

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Terminate {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        self.0.notified().await;
        pingora::server::ShutdownSignal::GracefulTerminate
    }
}

impl Terminable {
    /// Starts a gateway serving `yaml` (`config` rendered for `path`) in
    /// front of `upstream`.
    async fn start(config: &Config<'_>, path: &str, upstream: SocketAddr) -> Self {
        let yaml = config.render(path);
        let addr: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], common::free_port()).into();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, common::render(&yaml, addr, admin, upstream)).unwrap();
        let shared = tollgate::app::load_shared(&config_path).unwrap();
        let options = tollgate::server::ProcessOptions {
            grace_period_seconds: None, // the config's
            handle_sighup: false,
            owns_process: false,
        };
        let server = tollgate::app::build_server(shared, options);
        let signal = Arc::new(tokio::sync::Notify::new());
        let shutdown_signal = Box::new(Terminate(signal.clone()));
        let thread = std::thread::spawn(move || {
            server.run(pingora::server::RunArgs { shutdown_signal });
        });
        common::wait_listening(addr).await;
        common::wait_listening(admin).await;
        assert_runs_on(admin, path).await;
        Terminable {
            addr,
            signal,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// Starts the graceful shutdown; the future ends when the server has.
    fn terminate(&mut self) -> tokio::task::JoinHandle<()> {
        self.signal.notify_one();
        let thread = self.thread.take();
        tokio::task::spawn_blocking(move || {
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        })
    }
}

impl Drop for Terminable {
    fn drop(&mut self) {
        // A test that failed early: the gateway stops, unwaited for.
        self.signal.notify_one();
    }
}

// ===========================================================================
// HTTP/1.x on the wire

/// `f`, failing the test if it takes longer than [`DEADLINE`].
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"))
}

/// A message head: the start line and the header fields (names in lower
/// case, values trimmed), in order.
#[derive(Clone)]
struct Head {
    start: String,
    fields: Vec<(String, String)>,
}

impl std::fmt::Debug for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.start)?;
        for (name, value) in &self.fields {
            write!(f, " | {name}: {value}")?;
        }
        Ok(())
    }
}

impl Head {
    fn parse(raw: &[u8]) -> Head {
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.split("\r\n");
        let start = lines.next().unwrap_or_default().to_string();
        let fields = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        Head { start, fields }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    /// The comma-separated tokens of every `name` field, in lower case.
    fn tokens(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .flat_map(|(_, v)| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// A request's target.
    fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or_default()
    }

    /// A response's status (0 if the start line has none).
    fn status(&self) -> u16 {
        self.target().parse().unwrap_or(0)
    }

    fn is_chunked(&self) -> bool {
        self.tokens("transfer-encoding").last().map(String::as_str) == Some("chunked")
    }

    fn content_length(&self) -> Option<usize> {
        self.header("content-length").and_then(|v| v.parse().ok())
    }
}

/// How a message's body ends (RFC 9112 6.3).
#[derive(Debug, Clone, Copy)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    UntilClose,
}

fn request_framing(head: &Head) -> Framing {
    match (head.is_chunked(), head.content_length()) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::None,
    }
}

fn response_framing(head: &Head, method: &str) -> Framing {
    let status = head.status();
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    match (head.is_chunked(), head.content_length()) {
        (true, _) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) => Framing::UntilClose,
    }
}

/// One end of a TCP connection and what has been read but not yet parsed.
struct Wire {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Wire {
    fn new(stream: TcpStream) -> Self {
        Wire {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more; false at the end of the stream (or a reset).
    async fn fill(&mut self) -> bool {
        self.buf.reserve(64 * 1024);
        matches!(self.stream.read_buf(&mut self.buf).await, Ok(n) if n > 0)
    }

    /// The next head; `None` if the stream ends first.
    async fn head(&mut self) -> Option<Head> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 4).collect();
                return Some(Head::parse(&raw[..end]));
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> Option<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buf.drain(..n).collect())
    }

    /// A line, without its CRLF.
    async fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(end) = find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..end + 2).take(end).collect();
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// The decoded content of a chunked body; `None` if it is malformed or
    /// cut short.
    async fn chunked(&mut self) -> Option<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let line = String::from_utf8_lossy(&line).into_owned();
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).ok()?;
            if size == 0 {
                // The trailer section ends with an empty line.
                while !self.line().await?.is_empty() {}
                return Some(body);
            }
            body.extend(self.exact(size).await?);
            if !self.line().await?.is_empty() {
                return None;
            }
        }
    }

    async fn body(&mut self, framing: Framing) -> Option<Vec<u8>> {
        match framing {
            Framing::None => Some(Vec::new()),
            Framing::Length(n) => self.exact(n).await,
            Framing::Chunked => self.chunked().await,
            Framing::UntilClose => {
                while self.fill().await {}
                Some(std::mem::take(&mut self.buf))
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response as the client framed it.
struct Answer {
    head: Head,
    body: Vec<u8>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        write!(f, "{:?} || {} bytes: {body:?}", self.head, self.body.len())
    }
}

impl Answer {
    fn status(&self) -> u16 {
        self.head.status()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection to the gateway, speaking raw HTTP/1.x.
struct Client {
    wire: Wire,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = within("connecting", TcpStream::connect(addr)).await;
        Client {
            wire: Wire::new(stream.expect("the gateway accepts")),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within("sending", self.wire.stream.write_all(bytes.as_ref()))
            .await
            .expect("the gateway takes the request");
    }

    /// The next message (1xx included) answering a `method` request; `None`
    /// if the gateway closes the connection first.
    async fn next(&mut self, method: &str) -> Option<Answer> {
        let wire = &mut self.wire;
        within("the gateway's next answer", async move {
            let head = wire.head().await?;
            let framing = response_framing(&head, method);
            let body = wire.body(framing).await;
            let body = body.unwrap_or_else(|| panic!("{framing:?} body cut short: {head:?}"));
            Some(Answer { head, body })
        })
        .await
    }

    /// The final response to a `method` request, past any 1xx.
    async fn response(&mut self, method: &str) -> Answer {
        loop {
            let answer = self.next(method).await.expect("closed before an answer");
            if answer.status() >= 200 {
                return answer;
            }
        }
    }

    /// Sends `request` and reads its final response.
    async fn exchange(&mut self, request: impl AsRef<[u8]>) -> Answer {
        let request = request.as_ref();
        let method = String::from_utf8_lossy(request)
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        self.send(request).await;
        self.response(&method).await
    }

    /// Waits until the gateway closes the connection, and returns what it
    /// sent meanwhile.
    async fn rest(&mut self) -> Vec<u8> {
        let wire = &mut self.wire;
        within("the gateway closes the connection", async move {
            while wire.fill().await {}
        })
        .await;
        std::mem::take(&mut self.wire.buf)
    }
}

fn get(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n")
}

fn post(target: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

/// `len` bytes of every value, CR and LF among them, differing by `seed`.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// A response with `status` ("200 OK"), extra `headers` (CRLF-terminated
/// lines) and `body`, framed by Content-Length.
fn response(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    [head.as_bytes(), body].concat()
}

fn ok(body: impl AsRef<[u8]>) -> Vec<u8> {
    response("200 OK", "", body.as_ref())
}

/// A 200 whose body is `parts`, one chunk each.
fn chunked(parts: &[Vec<u8>]) -> Vec<u8> {
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in parts {
        out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ===========================================================================
// Scripted upstreams

/// What the upstream received of one request: its head and decoded body.
#[derive(Debug, Clone)]
struct Received {
    head: Head,
    body: Vec<u8>,
}

/// What a scripted upstream saw, across its connections.
#[derive(Default)]
struct Record {
    connections: AtomicUsize,
    /// Request heads as they arrived, bodies read or not.
    heads: Mutex<Vec<Head>>,
    /// Whole requests, once their bodies were read.
    requests: Mutex<Vec<Received>>,
    /// Connections the gateway closed while [`UpstreamConn::until_closed`]
    /// waited.
    closed_by_gateway: AtomicUsize,
}

/// An upstream on a free loopback port whose every connection is served by
/// a script.
struct Scripted {
    addr: SocketAddr,
    record: Arc<Record>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// Serves each connection with `serve`.
    async fn start<F, Fut>(serve: F) -> Self
    where
        F: Fn(UpstreamConn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let record = Arc::new(Record::default());
        let shared = record.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let index = shared.connections.fetch_add(1, Ordering::SeqCst);
                let conn = UpstreamConn {
                    index,
                    wire: Wire::new(stream),
                    record: shared.clone(),
                };
                tokio::spawn(serve(conn));
            }
        });
        Scripted { addr, record, task }
    }

    /// Answers every request, on connections kept alive, with `answer`.
    async fn answering<F>(answer: F) -> Self
    where
        F: Fn(&Received) -> Vec<u8> + Send + Sync + 'static,
    {
        let answer = Arc::new(answer);
        Self::start(move |mut conn| {
            let answer = answer.clone();
            async move {
                while let Some(request) = conn.request().await {
                    if !conn.write(answer(&request)).await {
                        return;
                    }
                }
            }
        })
        .await
    }

    fn heads(&self) -> Vec<Head> {
        self.record.heads.lock().unwrap().clone()
    }

    fn requests(&self) -> Vec<Received> {
        self.record.requests.lock().unwrap().clone()
    }

    /// The one request the upstream received.
    fn only_request(&self) -> Received {
        let mut requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        requests.remove(0)
    }

    /// The targets of the requests received, in order.
    fn targets(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| r.head.target().to_string())
            .collect()
    }

    fn connections(&self) -> usize {
        self.record.connections.load(Ordering::SeqCst)
    }

    fn closed_by_gateway(&self) -> usize {
        self.record.closed_by_gateway.load(Ordering::SeqCst)
    }
}

/// The upstream's end of one connection from the gateway.
struct UpstreamConn {
    /// The connection's place among the upstream's, from 0.
    index: usize,
    wire: Wire,
    record: Arc<Record>,
}

impl UpstreamConn {
    /// The next request's head, its body left unread.
    async fn request_head(&mut self) -> Option<Head> {
        let head = self.wire.head().await?;
        self.record.heads.lock().unwrap().push(head.clone());
        Some(head)
    }

    /// The body of the request whose head is `head`.
    async fn body_of(&mut self, head: &Head) -> Option<Vec<u8>> {
        let body = self.wire.body(request_framing(head)).await?;
        let received = Received {
            head: head.clone(),
            body: body.clone(),
        };
        self.record.requests.lock().unwrap().push(received);
        Some(body)
    }

    /// The next whole request; `None` when the gateway closes the
    /// connection (or breaks the framing).
    async fn request(&mut self) -> Option<Received> {
        let head = self.request_head().await?;
        let body = self.body_of(&head).await?;
        Some(Received { head, body })
    }

    async fn write(&mut self, bytes: impl AsRef<[u8]>) -> bool {
        self.wire.stream.write_all(bytes.as_ref()).await.is_ok()
    }

    /// Waits until the gateway sends more (or closes), leaving it unread.
    async fn until_more_arrives(&mut self) {
        self.wire.fill().await;
    }

    /// Reads (and drops) whatever comes until the gateway closes.
    async fn until_closed(&mut self) {
        while self.wire.fill().await {
            self.wire.buf.clear();
        }
        self.record.closed_by_gateway.fetch_add(1, Ordering::SeqCst);
    }
}
