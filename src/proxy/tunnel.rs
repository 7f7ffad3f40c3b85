//! Upgrade requests (WebSocket) that passed the limits are proxied here rather
//! than by Pingora's proxy loop, which can tear a tunnel down right after the
//! 101 when the upstream answers before the request's empty body is processed
//! (cloudflare/pingora#946). We connect to the upstream, relay the handshake,
//! and only after a real `101` pump bytes both ways; bytes a client sends after
//! its request are never forwarded before that.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest response head we accept from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// The largest non-101 answer to an upgrade request we relay.
const MAX_REFUSAL_BODY: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("cannot connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream failed during the handshake: {0}")]
    Handshake(String),
    #[error("the upstream did not answer the handshake within {0:?}")]
    HandshakeTimeout(Duration),
}

/// The upstream's answer to the upgrade request.
pub struct Handshake {
    pub response: ResponseHeader,
    /// Bytes the upstream sent after its response head.
    pub rest: Bytes,
    pub upstream: Stream,
}

/// Connects to `peer`, sends `request` (already prepared for the upstream) and
/// reads the response head.
pub async fn handshake(
    connector: &TransportConnector,
    peer: &HttpPeer,
    request: &RequestHeader,
    timeout: Duration,
) -> Result<Handshake, TunnelError> {
    let mut upstream = connector
        .new_stream(peer)
        .await
        .map_err(|e| TunnelError::Connect(e.to_string()))?;
    let exchange = async {
        upstream
            .write_all(&serialize_request(request))
            .await
            .map_err(|e| TunnelError::Handshake(e.to_string()))?;
        upstream
            .flush()
            .await
            .map_err(|e| TunnelError::Handshake(e.to_string()))?;
        read_response_head(&mut upstream).await
    };
    let (response, rest) = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| TunnelError::HandshakeTimeout(timeout))??;
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

async fn read_response_head(upstream: &mut Stream) -> Result<(ResponseHeader, Bytes), TunnelError> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut parsed = httparse::Response::new(&mut headers);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let status = parsed.code.unwrap_or(502);
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
                return Err(TunnelError::Handshake("response head too large".into()));
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

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelEnd {
    ClientClosed,
    UpstreamClosed,
    Idle,
    Failed,
}

/// Pumps bytes both ways after a `101` has been written to the client, until
/// the upstream closes, the client closes (its half is then shut on the
/// upstream, which answers and closes), or nothing moves for `idle`.
pub async fn pump(
    session: &mut Session,
    mut upstream: Stream,
    rest: Bytes,
    idle: Duration,
) -> TunnelEnd {
    if !rest.is_empty()
        && session
            .write_response_body(Some(rest), false)
            .await
            .is_err()
    {
        return TunnelEnd::Failed;
    }
    let mut client_open = true;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        tokio::select! {
            from_client = session.read_request_body(), if client_open => match from_client {
                Ok(Some(bytes)) => {
                    if upstream.write_all(&bytes).await.is_err() || upstream.flush().await.is_err() {
                        return end(session, TunnelEnd::Failed).await;
                    }
                }
                Ok(None) | Err(_) => {
                    client_open = false;
                    let _ = upstream.shutdown().await;
                }
            },
            from_upstream = upstream.read_buf(&mut buf) => match from_upstream {
                Ok(0) => {
                    return end(session, if client_open { TunnelEnd::UpstreamClosed } else { TunnelEnd::ClientClosed }).await;
                }
                Ok(_) => {
                    let chunk = buf.split().freeze();
                    if session.write_response_body(Some(chunk), false).await.is_err() {
                        return TunnelEnd::Failed;
                    }
                    if buf.capacity() < READ_CHUNK {
                        buf.reserve(READ_CHUNK);
                    }
                }
                Err(_) => return end(session, TunnelEnd::Failed).await,
            },
            _ = tokio::time::sleep(idle) => return end(session, TunnelEnd::Idle).await,
        }
    }
}

async fn end(session: &mut Session, how: TunnelEnd) -> TunnelEnd {
    let _ = session.write_response_body(None, true).await;
    how
}

/// Relays a refused upgrade (any status but 101) as a plain response with a
/// definite length, reading the upstream body by its own framing.
pub async fn relay_refusal(
    session: &mut Session,
    mut response: ResponseHeader,
    rest: Bytes,
    mut upstream: Stream,
    head_only: bool,
) -> pingora::Result<()> {
    let status = response.status.as_u16();
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Bytes::new()
    } else {
        read_body(&mut upstream, &response, rest)
            .await
            .unwrap_or_default()
    };
    response.remove_header(&TRANSFER_ENCODING);
    response.insert_header(CONTENT_LENGTH, body.len())?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Reads a response body by Content-Length, chunked encoding, or until close.
async fn read_body(upstream: &mut Stream, response: &ResponseHeader, rest: Bytes) -> Option<Bytes> {
    let mut buf = BytesMut::from(&rest[..]);
    let chunked = response
        .headers
        .get(TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(upstream, buf).await;
    }
    let length = response
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let wanted = length.unwrap_or(MAX_REFUSAL_BODY).min(MAX_REFUSAL_BODY);
    while buf.len() < wanted {
        match upstream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    buf.truncate(wanted);
    Some(buf.freeze())
}

async fn read_chunked(upstream: &mut Stream, mut buf: BytesMut) -> Option<Bytes> {
    let mut body = BytesMut::new();
    loop {
        let line_end = loop {
            if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                break at;
            }
            if buf.len() > MAX_HEAD || upstream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.advance(line_end + 2);
        if size == 0 {
            return Some(body.freeze());
        }
        if body.len() + size > MAX_REFUSAL_BODY {
            return None;
        }
        while buf.len() < size + 2 {
            if upstream.read_buf(&mut buf).await.ok()? == 0 {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
