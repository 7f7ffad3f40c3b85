//! The fast HTTP/1.1 loop (`server.http1_path: fast`): one loop per client
//! connection that reads each request with Pingora's HTTP/1 session, runs the
//! gateway's steps (the same `Gateway` methods Pingora's proxy hooks call,
//! in the same order), and relays the request through Pingora's HTTP/1
//! connector and connection pool.
//!
//! What it leaves out is pingora-proxy's per-request machinery, which a
//! gateway without a cache or subrequests never uses but pays for on every
//! request: the proxy `Session` with its cache and module contexts, a dozen
//! boxed hook futures, and two channels joined across two futures to stream
//! between client and upstream. Here one `select!` does that streaming.
//!
//! What it keeps is Pingora's HTTP/1 code on both sides: request parsing
//! and validation, body framing both ways (Content-Length, chunked,
//! close-delimited), keep-alive and pipelining, the upstream pool, its
//! timeouts and TLS. What it owns is the proxy's part, each piece a mirror
//! of pingora-proxy 0.9's: the request hygiene (`sanitize_request`), the
//! response's framing for the client (`frame_response`; it and
//! `relay_response` keep three rules Pingora's proxy breaks: see there),
//! the duplex relay with client-abort detection, and retries. HTTP/2 (h2c and ALPN) stays with Pingora's proxy
//! (see `connection::Front`); `tests/http1_semantics.rs` holds both paths to
//! one suite.

use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderName, Method, Version};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::ConnectorOptions;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::{HttpTask, ServerSession};
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::upstreams::peer::Peer;
use pingora::{Error, ErrorType, Result};

use super::affinity::{self, Held, Upstreams};
use super::{connection, tunnel, Gateway, RequestCtx};
use crate::respond::{self, Reply};

/// Attempts per request, as in Pingora's proxy: a failed connect moves on
/// to the next server, a stale pooled connection to a fresh one.
const MAX_ATTEMPTS: usize = 16;

/// How long an idle client connection is kept (Pingora's default, in
/// seconds); the gateway's own `idle_timeout` closes it sooner
/// (`connection::TimedStream`).
const KEEPALIVE_SECONDS: u64 = 60;

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// The hop-by-hop fields (RFC 9110 §7.6.1) no upstream gets from a client.
const HOP_BY_HOP: [HeaderName; 10] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    TRANSFER_ENCODING,
    CONNECTION,
    UPGRADE,
    HTTP2_SETTINGS,
];

/// The fields of a response that describe the upstream's connection. Its
/// `Connection` field is replaced by the client connection's own, and its
/// `Transfer-Encoding` is the body's framing, kept for the client's side to
/// frame by.
const RESPONSE_HOP_BY_HOP: [HeaderName; 5] = [
    KEEP_ALIVE,
    PROXY_CONNECTION,
    http::header::TE,
    http::header::TRAILER,
    UPGRADE,
];

/// Fields an upstream's `Connection` header may name but not take away: the
/// body's framing.
const FRAMING: [HeaderName; 3] = [CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION];

/// Fields a `Connection` header may not nominate for removal: the
/// forwarding headers the gateway vouches for, and `Host`.
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// A `Connection` header with this many nominations or more is refused (a
/// bound on the work a client can ask for; Pingora's proxy has the same).
const MAX_NOMINATIONS: usize = 10;

/// The fast loop's state: the gateway's steps and the upstream connections.
pub(crate) struct FastLoop {
    gateway: Gateway,
    upstreams: Upstreams,
}

/// How one attempt at the upstream ended: whether the client connection
/// may serve another request, whether the upstream one may be pooled, and
/// the error, if any.
struct Exchange {
    client_reusable: bool,
    upstream_reusable: bool,
    /// The request's head could not be written: the upstream never took the
    /// request.
    head_unsent: bool,
    error: Option<Box<Error>>,
}

impl Exchange {
    fn failed(error: Box<Error>, upstream_reusable: bool) -> Self {
        Exchange {
            client_reusable: false,
            upstream_reusable,
            head_unsent: false,
            error: Some(error),
        }
    }
}

/// What decides whether a failed attempt goes again.
#[derive(Debug, Clone, Copy)]
struct Attempted {
    /// On a connection that served requests before (pooled or kept).
    reused: bool,
    head_unsent: bool,
    idempotent: bool,
    /// The request body can be sent again in full.
    body_whole: bool,
}

/// Only a failure of a connection that served before is worth another try
/// (it may have been closed while idle), and only with the whole request
/// at hand. A request the upstream may have acted on goes again only when
/// its method is idempotent; one whose head could not be written, whatever
/// its method: an upstream that resets a kept connection before the next
/// head (hyper does, after an answer that left a body unread) never saw it.
fn retry_failed_attempt(e: &mut Error, attempted: Attempted) {
    if !attempted.body_whole {
        e.set_retry(false);
    } else if attempted.head_unsent && attempted.reused {
        e.set_retry(true);
    } else if !attempted.idempotent {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(attempted.reused);
    }
}

impl FastLoop {
    /// `upstreams`: the pool's size and bind addresses, as Pingora's proxy
    /// has them from the server's configuration.
    pub(crate) fn new(gateway: Gateway, upstreams: ConnectorOptions) -> Self {
        FastLoop {
            gateway,
            upstreams: Upstreams::new(upstreams),
        }
    }

    /// Serves an HTTP/1 connection's requests until it ends.
    pub(crate) async fn serve(&self, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let mut held = None;
        self.serve_requests(stream, shutdown, &mut held).await;
        self.upstreams.release(held);
        None
    }

    /// The connection's requests, one after another; `held` is the upstream
    /// connection kept between them.
    async fn serve_requests<'a>(
        &'a self,
        stream: Stream,
        shutdown: &ShutdownWatch,
        held: &mut Option<Held<'a>>,
    ) {
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(keepalive(shutdown));
        loop {
            if !self.read_request(&mut session, shutdown, held).await {
                return;
            }
            connection::head_received(&mut session);
            let mut ctx = RequestCtx::default();
            let reuse = self.serve_request(&mut session, &mut ctx, held).await;
            if !reuse {
                return;
            }
            let settings = HttpPersistentSettings::for_session(&session);
            let reusable = match session.finish().await {
                Ok(Some(reusable)) => reusable,
                _ => return,
            };
            let (stream, settings) =
                ReusedHttpStream::from_reusable_stream(reusable, settings).consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
        }
    }

    /// Reads the next request head: `false` when the connection ends
    /// instead (closed, malformed, or a shutdown began).
    async fn read_request<'a>(
        &'a self,
        session: &mut ServerSession,
        shutdown: &ShutdownWatch,
        held: &mut Option<Held<'a>>,
    ) -> bool {
        let mut stopping = shutdown.clone();
        let read = {
            let mut request = std::pin::pin!(session.read_request());
            loop {
                let until = held.as_ref().map(Held::until);
                tokio::select! {
                    // A request already buffered is served before a shutdown
                    // ends the connection.
                    biased;
                    read = &mut request => break read,
                    () = tunnel::shutdown_begins(&mut stopping) => return false,
                    () = affinity::hold_ends(until) => self.upstreams.release(held.take()),
                }
            }
        };
        let refusal = match read {
            // A CONNECT too: admission refuses it, logged like any request.
            Ok(true) => return true,
            Ok(false) => None,
            Err(e) if matches!(e.etype(), ErrorType::InvalidHTTPHeader) => {
                Some(respond::generic_error(400))
            }
            Err(_) => None,
        };
        if let Some(Reply { header, body }) = refusal {
            let _ = session.write_error_response(header, body).await;
        }
        session.shutdown().await;
        false
    }

    /// One request, from admission to its log line. `true`: the client
    /// connection may serve the next request.
    async fn serve_request<'a>(
        &'a self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        held: &mut Option<Held<'a>>,
    ) -> bool {
        // A tunnel keeps the client connection for as long as it lives: the
        // upstream connection kept for a next request is given back first.
        if session.is_upgrade_req() {
            self.upstreams.release(held.take());
        }
        match self.gateway.admit(session, ctx).await {
            Ok(true) => {
                self.gateway.finish(session, None, ctx).await;
                return true;
            }
            Ok(false) => {}
            Err(e) => {
                self.gateway.answer_failure(session, &e, ctx).await;
                self.gateway.finish(session, Some(&e), ctx).await;
                return false;
            }
        }
        let (reuse, error) = self.proxy(session, ctx, held).await;
        if let Some(e) = &error {
            let status = self.gateway.answer_failure(session, e, ctx).await;
            // The upstream's or the gateway's failures are worth a warning;
            // a client that left or sent too much is not.
            if status >= 500 {
                tracing::warn!(
                    status,
                    "could not proxy {}: {e}",
                    super::request_summary(session)
                );
            } else {
                tracing::debug!(
                    status,
                    "could not proxy {}: {e}",
                    super::request_summary(session)
                );
            }
        }
        self.gateway.finish(session, error.as_deref(), ctx).await;
        reuse
    }

    /// Sends the request upstream until an attempt succeeds or fails for
    /// good.
    async fn proxy<'a>(
        &'a self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        held: &mut Option<Held<'a>>,
    ) -> (bool, Option<Box<Error>>) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (reuse, error) = self.attempt(session, ctx, held).await;
            match error {
                Some(e) if e.retry() && attempts < MAX_ATTEMPTS => {
                    tracing::debug!(
                        attempts,
                        "retrying {}: {e}",
                        super::request_summary(session)
                    );
                }
                error => return (reuse, error),
            }
        }
    }

    /// One attempt: a server, a connection to it (the one the client
    /// connection kept, a pooled one or a new one), the exchange.
    async fn attempt<'a>(
        &'a self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        held: &mut Option<Held<'a>>,
    ) -> (bool, Option<Box<Error>>) {
        let peer = match self.gateway.pick_peer(ctx) {
            Ok(peer) => peer,
            Err(e) => return (false, Some(e)),
        };
        let key = peer.reuse_hash();
        let (mut upstream, reused) = match self.upstreams.connect(held, &peer, key).await {
            Ok(connection) => connection,
            Err(mut e) => {
                e.as_up();
                return (false, Some(self.gateway.connect_failed(ctx, e).into_up()));
            }
        };
        Gateway::connected(ctx);
        let exchange = self.exchange(session, &mut upstream, &peer, ctx).await;
        if exchange.upstream_reusable && !upstream_will_close(&upstream) {
            self.upstreams.keep(held, upstream, &peer, key).await;
        }
        let error = exchange.error.map(|mut e| {
            let attempted = Attempted {
                reused,
                head_unsent: exchange.head_unsent,
                idempotent: session.req_header().method.is_idempotent(),
                body_whole: !session.retry_buffer_truncated(),
            };
            retry_failed_attempt(&mut e, attempted);
            e
        });
        (exchange.client_reusable, error)
    }

    /// Sends the request head, then relays both bodies at once: the
    /// client's to the upstream and the upstream's response to the client,
    /// so an upstream may answer before it has read the whole request, and a
    /// client that goes away ends the exchange at once.
    async fn exchange(
        &self,
        session: &mut ServerSession,
        upstream: &mut UpstreamSession,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
    ) -> Exchange {
        upstream.read_timeout = peer.options.read_timeout;
        upstream.write_timeout = peer.options.write_timeout;
        let mut request = session.req_header().clone();
        request.set_version(Version::HTTP_11);
        if let Err(e) = sanitize_request(&mut request) {
            return Exchange::failed(e.into_down(), true);
        }
        if let Err(e) = self.gateway.prepare_request(session, &mut request, ctx) {
            return Exchange::failed(e, true);
        }
        if let Err(e) = frame_request(&mut request, session.is_body_empty()) {
            return Exchange::failed(e, true);
        }
        if let Err(e) = upstream.write_request_header(Box::new(request)).await {
            let head_unsent = matches!(e.etype(), ErrorType::WriteError | ErrorType::WriteTimedout);
            return Exchange {
                head_unsent,
                ..Exchange::failed(e.into_up(), false)
            };
        }
        session.enable_retry_buffering();
        let mut request_done = session.is_body_done();
        // A retry sends again what the client already sent.
        let resend = session.get_retry_buffer();
        let mut response_done = false;
        let mut upstream_reusable = true;
        let mut send_error = None;
        if resend.is_some() || request_done {
            if let Err(e) = send_body(upstream, resend.as_deref(), request_done).await {
                // As below: the upstream may still have answered.
                tracing::debug!("sending the request body upstream failed: {e}");
                upstream_reusable = false;
                send_error = Some(e);
                request_done = true;
            }
        }
        while !request_done || !response_done {
            // An upstream waits for a request body the client is still
            // sending: its read timeout starts once the request is whole,
            // and until then `server.body_timeout` bounds the client.
            upstream.read_timeout = peer.options.read_timeout.filter(|_| request_done);
            tokio::select! {
                task = upstream.read_response_task(), if !response_done => {
                    let task = match task {
                        Ok(task) => task,
                        // The response's framing is lost: the connection too.
                        Err(e) => return Exchange::failed(send_error.unwrap_or(e).into_up(), false),
                    };
                    match relay_response(session, task, ctx).await {
                        Ok(done) => response_done = done,
                        Err(e) => return Exchange::failed(e, false),
                    }
                }
                // With the request sent, this only waits for the client to
                // go away (or to pipeline its next request, kept for later).
                body = session.read_body_or_idle(request_done) => {
                    let body = match body {
                        Ok(body) => body,
                        Err(e) => return Exchange::failed(e.into_down(), false),
                    };
                    if let Some(chunk) = &body {
                        if let Err(e) = Gateway::count_body(chunk, ctx) {
                            return Exchange::failed(e, false);
                        }
                    }
                    let done = session.is_body_done();
                    if request_done {
                        continue;
                    }
                    if let Err(e) = send_body(upstream, body.as_deref(), done).await {
                        // An upstream that stopped reading may still have
                        // answered; its connection is spent either way.
                        tracing::debug!("sending the request body upstream failed: {e}");
                        upstream_reusable = false;
                        send_error = Some(e);
                        request_done = true;
                        continue;
                    }
                    request_done = done;
                }
            }
        }
        Exchange {
            client_reusable: true,
            upstream_reusable,
            head_unsent: false,
            error: None,
        }
    }
}

/// Pingora's keep-alive setting for a new client connection.
fn keepalive(shutdown: &ShutdownWatch) -> Option<u64> {
    if *shutdown.borrow() {
        None
    } else {
        Some(KEEPALIVE_SECONDS)
    }
}

/// Writes a piece of the request body upstream, and its end once `done`.
async fn send_body(upstream: &mut UpstreamSession, chunk: Option<&[u8]>, done: bool) -> Result<()> {
    if let Some(chunk) = chunk.filter(|c| !c.is_empty()) {
        upstream.write_body(chunk).await.map_err(Error::into_up)?;
    }
    if done {
        upstream.finish_body().await.map_err(Error::into_up)?;
    }
    Ok(())
}

/// Passes one piece of the upstream's response to the client: `true` once
/// the response is complete.
async fn relay_response(
    session: &mut ServerSession,
    task: HttpTask,
    ctx: &mut RequestCtx,
) -> Result<bool> {
    let down = |e: Box<Error>| e.into_down();
    match task {
        HttpTask::Header(mut header, end) => {
            if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
                // No upgrade was offered (the hygiene strips it).
                return Error::e_explain(
                    ErrorType::InvalidHTTPHeader,
                    "the upstream switched protocols unasked",
                )
                .map_err(Error::into_up);
            }
            if header.status.is_informational() {
                // 100 Continue, 103 Early Hints: passed on as they come, but
                // not to an HTTP/1.0 client, which would take one for the
                // answer (RFC 9110 §15.2).
                if session.req_header().version >= Version::HTTP_11 {
                    session.write_response_header(header).await.map_err(down)?;
                }
                return Ok(false);
            }
            Gateway::response_arrived(&header, ctx);
            frame_response(session, &mut header, end)?;
            Gateway::prepare_response(&mut header, ctx);
            session.write_response_header(header).await.map_err(down)?;
            if end {
                session.finish_body().await.map_err(down)?;
            }
            Ok(end)
        }
        HttpTask::Body(data, end) => {
            session
                .write_response_body(data.unwrap_or_default(), end)
                .await
                .map_err(down)?;
            Ok(end)
        }
        // HTTP/1 trailers are not relayed (nor by Pingora's proxy).
        HttpTask::Trailer(_) | HttpTask::Done => {
            session.finish_body().await.map_err(down)?;
            Ok(true)
        }
        HttpTask::UpgradedBody(..) => Error::e_explain(
            ErrorType::InternalError,
            "an upgraded body on a connection that was not upgraded",
        ),
        HttpTask::Failed(e) => Err(e),
    }
}

/// The request hygiene of pingora-proxy's HTTP/1 path: the fields a
/// `Connection` header nominates and the standard hop-by-hop fields are
/// dropped, and so is any upgrade offer (WebSocket upgrades are tunnelled
/// before a request gets here). A `Connection` header that nominates a
/// protected field, or a malformed or excessive one, is refused.
fn sanitize_request(request: &mut RequestHeader) -> Result<()> {
    let invalid = |why: &'static str| Error::e_explain(ErrorType::InvalidHTTPHeader, why);
    let mut nominated: Vec<HeaderName> = Vec::new();
    for (count, token) in connection_tokens(&request.headers).enumerate() {
        if count + 1 >= MAX_NOMINATIONS {
            return invalid("too many Connection header nominations");
        }
        if !token.iter().all(|byte| is_tchar(*byte)) {
            return invalid("invalid token nominated by the Connection header");
        }
        if is_connection_option(token) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(token) else {
            return invalid("invalid token nominated by the Connection header");
        };
        if PROTECTED.contains(&name.as_str()) {
            return invalid("protected header cannot be nominated by the Connection header");
        }
        nominated.push(name);
    }
    let hop_by_hop = present(&request.headers, &HOP_BY_HOP);
    for name in nominated.iter().chain(fields_in(hop_by_hop, &HOP_BY_HOP)) {
        request.remove_header(name);
    }
    Ok(())
}

/// The tokens of a message's `Connection` fields.
fn connection_tokens(headers: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Whether the upstream's answer said it closes the connection: `close` in
/// any `Connection` line (RFC 9110 §7.6.1). Pingora's keep-alive check reads
/// only the first line, and would send the next request on a connection the
/// upstream is closing.
fn upstream_will_close(upstream: &UpstreamSession) -> bool {
    upstream.resp_header().is_some_and(|header| {
        connection_tokens(&header.headers).any(|token| token.eq_ignore_ascii_case(b"close"))
    })
}

/// `close` and `keep-alive`: options of the connection, not names of fields
/// to drop beyond the standard ones (so the usual `Connection` header costs
/// no allocation).
fn is_connection_option(token: &[u8]) -> bool {
    token.eq_ignore_ascii_case(b"close") || token.eq_ignore_ascii_case(b"keep-alive")
}

/// Which of `fields` (at most 16) a message carries, as a bit set: one pass
/// over its names rather than a lookup, in two maps, per field.
fn present(headers: &http::HeaderMap, fields: &[HeaderName]) -> u16 {
    headers.keys().fold(0, |set, name| {
        match fields.iter().position(|field| field == name) {
            Some(i) => set | 1 << i,
            None => set,
        }
    })
}

/// The fields of `set` (from [`present`]).
fn fields_in(set: u16, fields: &[HeaderName]) -> impl Iterator<Item = &HeaderName> {
    fields
        .iter()
        .enumerate()
        .filter(move |(i, _)| set & 1 << i != 0)
        .map(|(_, field)| field)
}

/// The response head as the client's connection needs it. The fields that
/// describe the upstream's connection (those its `Connection` header names,
/// `Keep-Alive` and the like) stay behind (RFC 9110 §7.6.1; Pingora's proxy
/// relays them). A body the upstream delimits by closing its connection
/// goes to an HTTP/1.1 client chunked, so the client's connection lives on
/// (as in Pingora's proxy); an HTTP/1.0 client, which cannot read chunked
/// (RFC 9112 §6.1; Pingora's proxy sends it anyway), gets the body
/// delimited by the end of its connection.
fn frame_response(
    session: &mut ServerSession,
    header: &mut ResponseHeader,
    end: bool,
) -> Result<()> {
    let nominated: Vec<HeaderName> = connection_tokens(&header.headers)
        .filter(|token| !is_connection_option(token))
        .filter_map(|token| HeaderName::from_bytes(token).ok())
        .filter(|name| !FRAMING.contains(name))
        .collect();
    let hop_by_hop = present(&header.headers, &RESPONSE_HOP_BY_HOP);
    for name in nominated
        .iter()
        .chain(fields_in(hop_by_hop, &RESPONSE_HOP_BY_HOP))
    {
        header.remove_header(name);
    }
    let request = session.req_header();
    let http10_client = request.version < Version::HTTP_11;
    let no_body = request.method == Method::HEAD || matches!(header.status.as_u16(), 204 | 304);
    let coded = header.headers.contains_key(TRANSFER_ENCODING);
    let length = header.headers.contains_key(CONTENT_LENGTH);
    if http10_client && coded {
        // The body (chunks decoded on the way in) ends with the connection.
        header.remove_header(&TRANSFER_ENCODING);
    }
    if no_body || end {
        return Ok(());
    }
    if http10_client {
        if coded || !length {
            session.set_keepalive(None);
        }
    } else if coded {
        // A transfer coding that does not end in chunked is delimited by
        // the connection's end (RFC 9112 §6.3), relayed as it is.
        if !final_coding_is_chunked(&header.headers) {
            session.set_keepalive(None);
        }
    } else if !length {
        header.set_version(Version::HTTP_11);
        header.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// Whether a message's last transfer coding is chunked (RFC 9112 §6.3: only
/// then does its framing end the body).
fn final_coding_is_chunked(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|value| value.as_bytes().rsplit(|byte| *byte == b',').next())
        .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A request with a body but no framing of its own (its chunked framing was
/// hop-by-hop) goes upstream chunked.
fn frame_request(request: &mut RequestHeader, body_empty: bool) -> Result<()> {
    if !body_empty
        && !request.headers.contains_key(CONTENT_LENGTH)
        && !request.headers.contains_key(TRANSFER_ENCODING)
    {
        request.insert_header(TRANSFER_ENCODING, "chunked")?;
    }
    Ok(())
}

/// An HTTP token character (RFC 9110 §5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `retry_failed_attempt`'s answer for an error of `etype` with
    /// Pingora's `retry` mark.
    fn retried(etype: ErrorType, retry: pingora::RetryType, attempted: Attempted) -> bool {
        let mut e = Error::new(etype);
        e.retry = retry;
        retry_failed_attempt(&mut e, attempted);
        e.retry()
    }

    const POST_ON_A_KEPT_CONNECTION: Attempted = Attempted {
        reused: true,
        head_unsent: false,
        idempotent: false,
        body_whole: true,
    };

    #[test]
    fn a_head_a_kept_connection_did_not_take_goes_again_whatever_the_method() {
        let unsent = Attempted {
            head_unsent: true,
            ..POST_ON_A_KEPT_CONNECTION
        };
        let decided = pingora::RetryType::Decided(false);
        assert!(retried(ErrorType::WriteError, decided, unsent));
        let get = Attempted {
            idempotent: true,
            ..unsent
        };
        assert!(retried(ErrorType::WriteError, decided, get));
    }

    #[test]
    fn a_head_a_new_connection_did_not_take_does_not_go_again() {
        let unsent = Attempted {
            reused: false,
            head_unsent: true,
            ..POST_ON_A_KEPT_CONNECTION
        };
        assert!(!retried(
            ErrorType::WriteError,
            pingora::RetryType::ReusedOnly,
            unsent
        ));
    }

    #[test]
    fn a_request_the_upstream_may_have_acted_on_goes_again_only_if_idempotent() {
        let reused_only = pingora::RetryType::ReusedOnly;
        let post = POST_ON_A_KEPT_CONNECTION;
        assert!(!retried(ErrorType::ConnectionClosed, reused_only, post));
        let get = Attempted {
            idempotent: true,
            ..post
        };
        assert!(retried(ErrorType::ConnectionClosed, reused_only, get));
        let fresh_get = Attempted {
            reused: false,
            ..get
        };
        assert!(!retried(
            ErrorType::ConnectionClosed,
            reused_only,
            fresh_get
        ));
    }

    #[test]
    fn a_request_whose_body_is_no_longer_whole_never_goes_again() {
        let truncated = Attempted {
            head_unsent: true,
            idempotent: true,
            body_whole: false,
            ..POST_ON_A_KEPT_CONNECTION
        };
        assert!(!retried(
            ErrorType::WriteError,
            pingora::RetryType::Decided(true),
            truncated
        ));
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut request = RequestHeader::build("GET", b"/", None).unwrap();
        for (name, value) in headers {
            request.append_header(name.to_string(), *value).unwrap();
        }
        request
    }

    #[test]
    fn hop_by_hop_and_nominated_fields_never_reach_the_upstream() {
        let mut r = request(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAAA"),
            ("proxy-connection", "keep-alive"),
            ("x-kept", "1"),
        ]);
        sanitize_request(&mut r).unwrap();
        let names: Vec<_> = r.headers.keys().map(|n| n.as_str().to_string()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn a_connection_header_may_not_nominate_a_forwarding_field() {
        let mut r = request(&[("connection", "close, X-Forwarded-For")]);
        assert!(sanitize_request(&mut r).is_err());
    }

    #[test]
    fn a_malformed_nomination_is_refused() {
        let mut r = request(&[("connection", "\"x-quoted\"")]);
        assert!(sanitize_request(&mut r).is_err());
    }

    #[test]
    fn endless_nominations_are_refused() {
        let many = ["x-a"; MAX_NOMINATIONS].join(",");
        let mut r = request(&[("connection", many.as_str())]);
        assert!(sanitize_request(&mut r).is_err());
    }

    #[test]
    fn a_body_without_framing_goes_upstream_chunked() {
        let mut r = request(&[]);
        frame_request(&mut r, false).unwrap();
        assert_eq!(r.headers["transfer-encoding"], "chunked");
    }

    #[test]
    fn a_body_with_a_length_keeps_it() {
        let mut r = request(&[("content-length", "3")]);
        frame_request(&mut r, false).unwrap();
        assert!(!r.headers.contains_key("transfer-encoding"));
    }
}
