//! WebSocket upgrades that passed the limits are proxied here rather than by
//! Pingora's proxy loop, which can tear a tunnel down right after the 101 when
//! the upstream answers before the request's empty body is processed
//! (cloudflare/pingora#946). We connect to the upstream, relay the handshake,
//! and only after a real `101` pump bytes both ways; bytes a client sends after
//! its request are never forwarded before that.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession as Session;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

use crate::limit::{Limits, MonotonicClock};
use crate::metrics::{MessageResult, RuleMetrics};
use crate::websocket::frame::{close_frame, random_mask};
use crate::websocket::{
    header_has_token, notice_frame, ClientFilter, Close, Filtered, MessageGate, MessageVerdict,
    ServerWatch, Step, CLOSE_GOING_AWAY, CLOSE_MESSAGE_TOO_BIG,
};

/// The largest response head we accept from an upstream.
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Client chunks waiting for the upstream to accept them; beyond this the
/// client is not read (backpressure), while the upstream still is.
const TO_UPSTREAM_QUEUE: usize = 8;

/// Removes a non-WebSocket upgrade offer from a request proxied normally.
pub(crate) fn strip_upgrade_offer(request: &mut RequestHeader) {
    request.remove_header(&UPGRADE);
    request.remove_header("http2-settings");
    let kept: Vec<String> = request
        .headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
                && !t.is_empty()
        })
        .map(str::to_string)
        .collect();
    request.remove_header(&CONNECTION);
    if !kept.is_empty() {
        let _ = request.insert_header(CONNECTION, kept.join(", "));
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TunnelError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream failed during the handshake: {0}")]
    Handshake(String),
    #[error("the upstream did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
    #[error("no server of the upstream is healthy")]
    Unavailable,
}

/// The upstream's answer to the upgrade request.
pub(crate) struct Handshake {
    pub(crate) response: ResponseHeader,
    /// Bytes the upstream sent after its response head.
    pub(crate) rest: Bytes,
    pub(crate) upstream: Stream,
}

/// Connects to `peer` (within `connect_timeout`, TLS included), sends
/// `request` and reads the final response head (within `read_timeout`).
pub(crate) async fn handshake(
    connector: &TransportConnector,
    peer: &HttpPeer,
    request: &RequestHeader,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Handshake, TunnelError> {
    let mut upstream = match timeout(connect_timeout, connector.new_stream(peer)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(TunnelError::Connect(e.to_string())),
        Err(_) => {
            return Err(TunnelError::Connect(format!(
                "no connection within {connect_timeout:?}"
            )))
        }
    };
    let exchange = async {
        let io = |e: std::io::Error| TunnelError::Handshake(e.to_string());
        upstream
            .write_all(&serialize_request(request))
            .await
            .map_err(io)?;
        upstream.flush().await.map_err(io)?;
        read_final_response_head(&mut upstream).await
    };
    let (response, rest) = timeout(read_timeout, exchange)
        .await
        .map_err(|_| TunnelError::HandshakeTimeout(read_timeout))??;
    Ok(Handshake {
        response,
        rest,
        upstream,
    })
}

/// The request head as HTTP/1.1 bytes.
fn serialize_request(request: &RequestHeader) -> Vec<u8> {
    let target = request.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &request.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Reads response heads, skipping interim ones (`100`, `103`), until the
/// final answer or a `101`.
async fn read_final_response_head(
    upstream: &mut Stream,
) -> Result<(ResponseHeader, Bytes), TunnelError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(502);
                if (100..200).contains(&status) && status != 101 {
                    buf.advance(len);
                    continue;
                }
                let mut response = ResponseHeader::build(status, Some(parsed.headers.len()))
                    .map_err(|e| TunnelError::Handshake(e.to_string()))?;
                for h in parsed.headers.iter() {
                    response
                        .append_header(h.name.to_string(), h.value)
                        .map_err(|e| TunnelError::Handshake(e.to_string()))?;
                }
                buf.advance(len);
                return Ok((response, buf.freeze()));
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
            Ok(httparse::Status::Partial) => {
                return Err(TunnelError::Handshake("response head too large".into()))
            }
            Err(e) => return Err(TunnelError::Handshake(format!("bad response head: {e}"))),
        }
        let n = upstream
            .read_buf(&mut buf)
            .await
            .map_err(|e| TunnelError::Handshake(e.to_string()))?;
        if n == 0 {
            return Err(TunnelError::Handshake("closed before answering".into()));
        }
    }
}

/// Whether a `101` really switched to WebSocket.
pub(crate) fn switched_to_websocket(response: &ResponseHeader) -> bool {
    response.status.as_u16() == 101 && header_has_token(&response.headers, &UPGRADE, "websocket")
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    ClientClosed,
    UpstreamClosed,
    Idle,
    Failed,
    /// The gateway closed it with this code (a limit, a size, the lifetime,
    /// a protocol error).
    Closed(u16),
}

/// Timeouts of one tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelTimeouts {
    /// Closed when neither side sends anything for this long.
    pub(crate) idle: Duration,
    /// A write to either side may not take longer than this.
    pub(crate) write: Duration,
    /// Closed with 1001 after this long, however busy.
    pub(crate) lifetime: Option<Duration>,
}

/// Frame-level inspection of a tunnel: message limits and sizes, and where
/// the gateway's own frames may go.
pub(crate) struct Inspection<'a> {
    pub(crate) filter: ClientFilter,
    pub(crate) watch: ServerWatch,
    pub(crate) gate: Option<MessageGate>,
    pub(crate) limits: &'a Limits,
    pub(crate) clock: MonotonicClock,
    pub(crate) metrics: &'a RuleMetrics,
}

impl Inspection<'_> {
    /// Filters a piece of the client's stream, deciding each message that
    /// starts in it. Once one is refused, the rest of the piece's messages
    /// are refused with it without asking the store again: a flood of tiny
    /// frames costs one store call per admitted message, not per frame.
    async fn client_piece(&mut self, chunk: Bytes) -> Filtered {
        self.filter.start(chunk);
        let mut refused = None;
        loop {
            match self.filter.step() {
                Step::Done(filtered) => {
                    if let Some(close) = filtered.close {
                        self.metrics
                            .websocket_message(if close.code == CLOSE_MESSAGE_TOO_BIG {
                                MessageResult::TooBig
                            } else {
                                MessageResult::Closed
                            });
                    }
                    return filtered;
                }
                Step::Decide => {
                    let verdict = match (&mut self.gate, refused) {
                        (_, Some(verdict)) => verdict,
                        (Some(gate), None) => {
                            gate.admit(self.limits, self.clock.now(), self.metrics)
                                .await
                        }
                        (None, None) => MessageVerdict::Forward,
                    };
                    match verdict {
                        MessageVerdict::Forward => {
                            self.metrics.websocket_message(MessageResult::Forwarded)
                        }
                        MessageVerdict::Drop { .. } => {
                            self.metrics.websocket_message(MessageResult::Dropped);
                            refused = Some(verdict);
                        }
                        MessageVerdict::Close => {}
                    }
                    self.filter.verdict(verdict);
                }
            }
        }
    }
}

/// How long a closing tunnel waits for the upstream's stream to reach a
/// frame boundary (to put the close frame there) before it just hangs up.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Pumps bytes both ways after a `101` has been written to the client, until
/// the upstream closes (after the client did, or on its own), a write fails
/// or times out, nothing moves for the idle timeout, or the gateway closes
/// the tunnel (message limits, sizes, lifetime, or `stopping` turning true:
/// the gateway shuts down).
///
/// Every tunnel is inspected, limits or not: the gateway's own close frame
/// can only go between frames, so the frames must be followed.
///
/// Client → upstream writes happen in their own task behind a small queue, so
/// the loop keeps reading the upstream while the upstream is slow to accept:
/// neither direction can block the other.
pub(crate) async fn pump(
    session: &mut Session,
    upstream: Stream,
    rest: Bytes,
    limits: TunnelTimeouts,
    mut inspection: Inspection<'_>,
    stopping: watch::Receiver<bool>,
) -> TunnelEnd {
    // The tunnel has its own idle rule; Pingora's per-read timeout (60 s by
    // default) would otherwise close every quiet tunnel.
    session.set_read_timeout(None);
    session.set_write_timeout(Some(limits.write));
    inspection.watch.feed(&rest);
    if !rest.is_empty() && session.write_response_body(rest, false).await.is_err() {
        return TunnelEnd::Failed;
    }
    let (mut from_upstream, to_upstream) = tokio::io::split(upstream);
    let (queue, mut queued) = mpsc::channel::<Bytes>(TO_UPSTREAM_QUEUE);
    let mut writer = tokio::spawn(async move {
        let mut to_upstream = to_upstream;
        while let Some(chunk) = queued.recv().await {
            let write = async {
                to_upstream.write_all(&chunk).await?;
                to_upstream.flush().await
            };
            if !matches!(timeout(limits.write, write).await, Ok(Ok(()))) {
                return false;
            }
        }
        // The client closed (or the gateway did): pass the half-close on;
        // the upstream answers (a WebSocket close) and closes.
        let _ = to_upstream.shutdown().await;
        true
    });
    let end = relay(
        session,
        &mut from_upstream,
        queue,
        limits,
        &mut inspection,
        stopping,
    )
    .await;
    // The queue is gone: the writer sends what it holds (a close frame, say)
    // and half-closes, unless the upstream is stuck.
    if timeout(limits.write.min(CLOSE_GRACE), &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    let _ = session.write_response_body(Bytes::new(), true).await;
    end
}

/// Resolves once a shutdown has begun; never if it cannot tell.
pub(crate) async fn shutdown_begins(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn relay(
    session: &mut Session,
    from_upstream: &mut ReadHalf<Stream>,
    queue: mpsc::Sender<Bytes>,
    limits: TunnelTimeouts,
    inspection: &mut Inspection<'_>,
    mut stopping: watch::Receiver<bool>,
) -> TunnelEnd {
    let mut queue = Some(queue);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    // The idle, lifetime and shutdown waits live across iterations: made
    // anew in every `select!`, each relayed message would register and
    // cancel a timer and a watch. Traffic only moves `last_moved`; the idle
    // timer, when it fires, checks it and sleeps again if something moved.
    let mut last_moved = Instant::now();
    let idle = tokio::time::sleep_until(last_moved + limits.idle);
    let lifetime_ends = async {
        match limits.lifetime {
            Some(lifetime) => tokio::time::sleep(lifetime).await,
            None => std::future::pending().await,
        }
    };
    let shutdown = shutdown_begins(&mut stopping);
    tokio::pin!(idle, lifetime_ends, shutdown);
    let mut notice: Option<Duration> = None;
    let mut closing: Option<(Close, Instant)> = None;
    let mut idled = false;
    loop {
        let room = closing.is_none() && queue.as_ref().is_some_and(|q| q.capacity() > 0);
        let grace_ends = async {
            match &closing {
                Some((_, at)) => tokio::time::sleep_until(*at).await,
                None => std::future::pending().await,
            }
        };
        let slot_frees = async {
            match &queue {
                Some(q) if closing.is_none() => q.reserve().await.map(drop),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            // The writer took a chunk: the client may be read again.
            freed = slot_frees, if !room => {
                if freed.is_err() {
                    return TunnelEnd::Failed; // the writer gave up
                }
            },
            from_client = session.read_request_body(), if room => {
                last_moved = Instant::now();
                match from_client {
                    Ok(Some(chunk)) => {
                        let filtered = inspection.client_piece(chunk).await;
                        if let Some(retry_after) = filtered.notice {
                            notice = Some(retry_after);
                        }
                        if let Some(close) = filtered.close {
                            closing = Some((close, Instant::now() + CLOSE_GRACE));
                        }
                        if let Some(bytes) = filtered.forward {
                            let sent = queue.as_ref().is_some_and(|q| q.try_send(bytes).is_ok());
                            if !sent {
                                return TunnelEnd::Failed; // the writer gave up
                            }
                        }
                    }
                    // Dropping the queue lets the writer half-close the upstream.
                    Ok(None) => queue = None,
                    Err(_) => return TunnelEnd::Failed,
                }
            },
            read = from_upstream.read_buf(&mut buf) => {
                last_moved = Instant::now();
                match read {
                    Ok(0) => return if queue.is_none() { TunnelEnd::ClientClosed } else { TunnelEnd::UpstreamClosed },
                    Ok(_) => {
                        let data = buf.split().freeze();
                        inspection.watch.feed(&data);
                        if session.write_response_body(data, false).await.is_err() {
                            return TunnelEnd::Failed;
                        }
                        buf.reserve(READ_CHUNK);
                    }
                    Err(_) => return TunnelEnd::Failed,
                }
            },
            // Like the two below, it closes with a close frame each way
            // (RFC 6455 §7.1.7), not by dropping the connection.
            () = &mut idle, if closing.is_none() => {
                let due = last_moved + limits.idle;
                if due <= Instant::now() {
                    idled = true;
                    closing = Some((
                        Close { code: CLOSE_GOING_AWAY, reason: "idle timeout" },
                        Instant::now() + CLOSE_GRACE,
                    ));
                } else {
                    idle.as_mut().reset(due);
                }
            },
            // These fire once: `closing` is set then, and they are not
            // polled again.
            () = &mut lifetime_ends, if closing.is_none() => {
                closing = Some((
                    Close { code: CLOSE_GOING_AWAY, reason: "maximum connection lifetime reached" },
                    Instant::now() + CLOSE_GRACE,
                ));
            },
            () = &mut shutdown, if closing.is_none() => {
                closing = Some((
                    Close { code: CLOSE_GOING_AWAY, reason: "server shutting down" },
                    Instant::now() + CLOSE_GRACE,
                ));
            },
            _ = grace_ends => {
                return if idled {
                    TunnelEnd::Idle
                } else {
                    TunnelEnd::Closed(closing.map_or(CLOSE_GOING_AWAY, |(c, _)| c.code))
                };
            },
        }
        let close = closing.map(|(close, _)| close);
        if let Some(end) =
            send_own_frames(session, inspection, queue.as_ref(), &mut notice, close).await
        {
            return if idled { TunnelEnd::Idle } else { end };
        }
    }
}

/// Writes the gateway's own frames where the streams allow them: a pending
/// notice goes to the client between the upstream's messages, a close goes
/// both ways between frames. `Some` ends the tunnel.
async fn send_own_frames(
    session: &mut Session,
    inspection: &Inspection<'_>,
    queue: Option<&mpsc::Sender<Bytes>>,
    notice: &mut Option<Duration>,
    closing: Option<Close>,
) -> Option<TunnelEnd> {
    if let Some(retry_after) = *notice {
        if closing.is_none() && inspection.watch.at_message_boundary() {
            if session
                .write_response_body(Bytes::from(notice_frame(retry_after)), false)
                .await
                .is_err()
            {
                return Some(TunnelEnd::Failed);
            }
            *notice = None;
        }
    }
    let close = closing?;
    // After the upstream's own close frame, nothing more goes to the
    // client: the tunnel just ends.
    if inspection.watch.closed() {
        return Some(TunnelEnd::Closed(close.code));
    }
    if !inspection.watch.at_frame_boundary() {
        return None;
    }
    let to_client = Bytes::from(close_frame(close.code, close.reason, None));
    let _ = session.write_response_body(to_client, false).await;
    // Upstream, a close frame only fits between the frames sent there, and
    // not after the client's own close.
    if let (Some(q), true) = (queue, inspection.filter.may_send_upstream()) {
        let to_upstream = close_frame(close.code, close.reason, Some(random_mask()));
        let _ = timeout(CLOSE_GRACE, q.send(Bytes::from(to_upstream))).await;
    }
    Some(TunnelEnd::Closed(close.code))
}

/// Relays a declined upgrade (any final status but a WebSocket 101) as a
/// plain response, streamed by the upstream's own framing. A body that
/// cannot be relayed whole ends in an error, never in a response that looks
/// complete.
pub(crate) async fn relay_refusal(
    session: &mut Session,
    mut response: ResponseHeader,
    rest: Bytes,
    mut upstream: Stream,
    head_only: bool,
    read_timeout: Duration,
) -> pingora::Result<()> {
    use pingora::{Error, ErrorType};
    session.set_keepalive(None);
    let status = response.status.as_u16();
    if head_only || status == 204 || status == 304 {
        session.write_response_header(Box::new(response)).await?;
        return Ok(());
    }
    let chunked = header_has_token(&response.headers, &TRANSFER_ENCODING, "chunked");
    let length = response
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if chunked {
        // Pingora chunks what we write; we hand it the decoded data.
        response.remove_header(&CONTENT_LENGTH);
    }
    session.write_response_header(Box::new(response)).await?;
    let failed = |why: &str| {
        Error::explain(
            ErrorType::ReadError,
            format!("relaying a declined upgrade: {why}"),
        )
    };
    let mut body = Body {
        upstream: &mut upstream,
        buf: BytesMut::from(&rest[..]),
        read_timeout,
    };
    if chunked {
        while let Some(chunk) = body.next_chunk().await.map_err(|e| failed(&e))? {
            session.write_response_body(chunk, false).await?;
        }
    } else {
        let mut left = length;
        loop {
            if left == Some(0) {
                break;
            }
            let chunk = match body.next_bytes().await.map_err(|e| failed(&e))? {
                Some(chunk) => chunk,
                None if left.is_none() => break, // close-delimited: the end
                None => return Err(failed("the upstream closed early")),
            };
            let chunk = match left {
                Some(n) => {
                    let take = chunk.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    left = Some(n - take as u64);
                    chunk.slice(..take)
                }
                None => chunk,
            };
            session.write_response_body(chunk, false).await?;
        }
    }
    session.write_response_body(Bytes::new(), true).await
}

/// An upstream response body being read, with the bytes already buffered.
struct Body<'a> {
    upstream: &'a mut Stream,
    buf: BytesMut,
    read_timeout: Duration,
}

impl Body<'_> {
    /// Reads more into the buffer; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        match timeout(self.read_timeout, self.upstream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => Ok(n > 0),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no data within {:?}", self.read_timeout)),
        }
    }

    /// The next bytes of a plain body; `None` at the end of the stream.
    async fn next_bytes(&mut self) -> Result<Option<Bytes>, String> {
        if self.buf.is_empty() && !self.fill().await? {
            return Ok(None);
        }
        Ok(Some(self.buf.split().freeze()))
    }

    /// The next chunk of a chunked body; `None` after the last one.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        let line_end = loop {
            if let Some(at) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if self.buf.len() > MAX_HEAD || !self.fill().await? {
                return Err("bad chunk header".into());
            }
        };
        let size_text = std::str::from_utf8(&self.buf[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| "bad chunk size")?;
        self.buf.advance(line_end + 2);
        if size == 0 {
            return Ok(None); // trailers, if any, are not relayed
        }
        let wanted = size.checked_add(2).ok_or("chunk too large")?;
        while self.buf.len() < wanted {
            if !self.fill().await? {
                return Err("the upstream closed inside a chunk".into());
            }
        }
        let chunk = self.buf.split_to(size).freeze();
        self.buf.advance(2);
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::is_websocket_request;
    use http::{HeaderMap, Method};

    #[test]
    fn requests_serialize_as_http11_heads() {
        let mut req = RequestHeader::build("GET", b"/ws/x?id=1", None).unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        let text = String::from_utf8(serialize_request(&req)).unwrap();
        assert_eq!(
            text,
            "GET /ws/x?id=1 HTTP/1.1\r\nupgrade: websocket\r\n\r\n"
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn only_websocket_gets_are_tunnelled() {
        let ws = headers(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert!(is_websocket_request(&Method::GET, &ws));
        assert!(!is_websocket_request(&Method::POST, &ws));
        let h2c = headers(&[
            ("upgrade", "h2c"),
            ("connection", "Upgrade, HTTP2-Settings"),
        ]);
        assert!(!is_websocket_request(&Method::GET, &h2c));
        let no_connection = headers(&[("upgrade", "websocket")]);
        assert!(!is_websocket_request(&Method::GET, &no_connection));
    }

    #[test]
    fn other_upgrade_offers_are_stripped() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        req.insert_header("http2-settings", "AAMAAABkAAQAAP__")
            .unwrap();
        req.insert_header("connection", "Upgrade, HTTP2-Settings, keep-alive")
            .unwrap();
        strip_upgrade_offer(&mut req);
        assert!(req.headers.get("upgrade").is_none());
        assert!(req.headers.get("http2-settings").is_none());
        assert_eq!(req.headers.get("connection").unwrap(), "keep-alive");
    }
}
