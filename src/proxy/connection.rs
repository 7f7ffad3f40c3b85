//! Client connections, before and between requests: the deadlines Pingora
//! does not keep, the per-IP connection cap, and HTTP/1.1 pipelining.
//!
//! Pingora bounds each read of a request head on its own (60 s), waits for
//! the first bytes of a connection without any bound (its h2c check peeks 24
//! bytes before anything else), and waits for the next request of a
//! keep-alive connection for ever (it turns its keep-alive timeout off once a
//! request asks for keep-alive, as every HTTP/1.1 request does by default).
//! Its proxy reads the request head itself, inside `process_new_http`, so the
//! head cannot be read ahead of it under a deadline of ours. Instead every
//! accepted stream is wrapped in a [`TimedStream`] that fails reads once a
//! deadline passes, and the stream is told where the connection stands:
//!
//! - accepted, or the previous request answered ([`request_done`], from the
//!   proxy's last hook): the next request's first byte must come within
//!   `idle_timeout`;
//! - first byte read: the rest of the head must come within `header_timeout`
//!   of it (for a pipelined request whose start is already buffered: of the
//!   first byte read after it);
//! - head parsed ([`head_received`], from the proxy's first hook): no
//!   deadline, the request's own timeouts apply.
//!
//! On a TLS listener the handshake comes first, under `handshake_timeout`
//! from the accept; the deadlines above then apply to what it decrypts.
//!
//! An HTTP/2 connection (h2c, or h2 chosen by ALPN) has no deadline once its
//! preface has arrived (for ALPN: once the handshake chose it);
//! Pingora's `h2_idle_timeout` closes it when it has had no stream open for
//! `idle_timeout`.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::connectors::ConnectorOptions;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::edge::{self, Role, Roles};
use super::fast::FastLoop;
use super::Gateway;
use crate::identity::ip_bucket;
use crate::metrics::{ConnectionClose, ConnectionMetrics};
use crate::policy::Http1Path;
use crate::state::Shared;

/// What an HTTP/2 client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The public listeners' application: admits a connection (or closes it at
/// once over the per-IP cap), wraps its stream in a [`TimedStream`] and hands
/// it to the fast HTTP/1 loop (`server.http1_path: fast`, HTTP/1 only) or to
/// Pingora's HTTP handling (HTTP/2, or `http1_path: pingora`).
pub(crate) struct Front {
    proxy: Arc<HttpProxy<Gateway>>,
    /// Plain HTTP/1 requests with `server.http1_path: fast`.
    fast: FastLoop,
    shared: Arc<Shared>,
    open: Arc<OpenPerIp>,
    /// Taken at start, like HTTP/2's idle timeout, which Pingora fixes then.
    idle_timeout: Duration,
    /// The listeners that terminate TLS or redirect to one.
    roles: Roles,
}

impl Front {
    pub fn new(
        shared: Arc<Shared>,
        mut proxy: HttpProxy<Gateway>,
        upstreams: ConnectorOptions,
        roles: Roles,
    ) -> Self {
        let idle_timeout = shared.snapshot.load().server.idle_timeout;
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h2_idle_timeout = Some(idle_timeout);
        // CONNECT reaches admission, which refuses it in JSON with `Allow`
        // (Pingora's own refusal is an empty 405); nothing is tunnelled.
        options.allow_connect_method_proxying = true;
        proxy.server_options = Some(options);
        Front {
            proxy: Arc::new(proxy),
            fast: FastLoop::new(Gateway::new(shared.clone()), upstreams),
            shared,
            open: Arc::default(),
            idle_timeout,
            roles,
        }
    }
}

#[async_trait]
impl ServerApp for Front {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (header_timeout, handshake_timeout, http1_path, _place) = {
            let rt = self.shared.snapshot.load();
            let server = &rt.server;
            let peer = stream
                .get_socket_digest()
                .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
            let place = match (server.max_connections_per_ip, peer) {
                (Some(cap), Some(ip)) if !server.trusted_proxies.contains(ip.to_canonical()) => {
                    let client = ip_bucket(ip.to_canonical(), server.ipv6_prefix);
                    match OpenPerIp::take(&self.open, client, cap) {
                        Some(place) => Some(place),
                        None => {
                            self.shared
                                .metrics
                                .connections
                                .closed(ConnectionClose::PerIpLimit);
                            return None;
                        }
                    }
                }
                _ => None,
            };
            (
                server.header_timeout,
                server.handshake_timeout,
                server.http1_path,
                place,
            )
        };
        let timeouts = Timeouts {
            header: header_timeout,
            idle: self.idle_timeout,
        };
        let metrics = self.shared.metrics.connections.clone();
        let role = self.roles.of_stream(&stream);
        let stream = match role {
            Some(Role::Tls(acceptor)) => {
                edge::handshake(acceptor, stream, handshake_timeout, &metrics).await?
            }
            _ => stream,
        };
        let mut stream: Stream = Box::new(TimedStream::new(stream, timeouts, metrics));
        if let Some(Role::Redirect(redirect)) = role {
            return redirect.process_new(stream, shutdown).await;
        }
        if http1_path == Http1Path::Fast && speaks_http1(&mut stream).await? {
            return self.fast.serve(stream, shutdown).await;
        }
        // Pingora's HTTP handling serves the connection to its end (the h2c
        // check, then every request) and never hands the stream back.
        self.proxy.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        // The listeners are closed: a shutdown has begun. Tunnels close with
        // 1001 rather than being cut when the grace period ends.
        self.shared.stopping.send_replace(true);
        ServerApp::cleanup(self.proxy.as_ref()).await;
    }
}

/// Tells a request's connection that its head is in: the header deadline no
/// longer applies. Also lets Pingora answer requests a client sends before
/// reading the previous answer, in order (RFC 9112 §9.3.2): without it,
/// Pingora answers the first with `Connection: keep-alive` and then closes,
/// dropping the rest. Called from the proxy's first hook; for HTTP/2 only the
/// latter (a no-op there).
///
/// These are hooks rather than a wrapper around Pingora's per-request
/// handling: a wrapper moved each request's whole session once more (BENCHMARKS.md).
pub(crate) fn head_received(session: &mut ServerSession) {
    session.set_pipelining_enabled(true);
    if let Some(stream) = timed(session) {
        stream.tell(Signal::HeadReceived);
    }
}

/// Tells a request's connection that the request is answered: the wait for
/// the next one, under `idle_timeout`, begins. What is left of the request's
/// body (an upstream may answer before reading it all) is read first, as
/// Pingora would before reusing the connection, within the idle timeout; a
/// body that does not end in time ends the connection instead. Called from the
/// proxy's last hook.
pub(crate) async fn request_done(session: &mut ServerSession) {
    let ServerSession::H1(h1) = &*session else {
        return;
    };
    // A connection that ends here (upgraded, `Connection: close`, shutting
    // down) waits for nothing.
    if !h1.will_keepalive() {
        return;
    }
    let Some(idle) = timed(session).map(|stream| stream.timeouts.idle) else {
        return;
    };
    if !session.is_body_done() {
        // Boxed: inline, the timer and the body read would size the proxy's
        // last hook, whose future Pingora moves on every request.
        let drained = Box::pin(tokio::time::timeout(idle, session.drain_request_body())).await;
        if !matches!(drained, Ok(Ok(()))) {
            session.set_keepalive(None);
            return;
        }
    }
    if let Some(stream) = timed(session) {
        stream.tell(Signal::AwaitRequest);
    }
}

/// Whether a connection speaks HTTP/1: not HTTP/2 by ALPN, nor (in
/// cleartext) by its preface. `None`: it closed before telling.
async fn speaks_http1(stream: &mut Stream) -> Option<bool> {
    if stream.get_ssl_digest().is_some() {
        return Some(!matches!(stream.selected_alpn_proto(), Some(ALPN::H2)));
    }
    let mut preface = [0u8; H2_PREFACE.len()];
    stream.try_peek(&mut preface).await.ok()?;
    Some(preface != H2_PREFACE)
}

fn timed(session: &ServerSession) -> Option<&TimedStream> {
    session.stream()?.as_any().downcast_ref::<TimedStream>()
}

/// Open connections per client (an IPv4 address or an IPv6 network).
#[derive(Debug, Default)]
struct OpenPerIp(Mutex<HashMap<IpAddr, u32>>);

impl OpenPerIp {
    /// A place for one more connection of `client`, or `None` at the cap.
    fn take(table: &Arc<Self>, client: IpAddr, cap: u32) -> Option<Place> {
        let mut open = table.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(client).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(Place {
            table: table.clone(),
            client,
        })
    }
}

/// One connection counted against its client's cap, until it closes.
#[derive(Debug)]
struct Place {
    table: Arc<OpenPerIp>,
    client: IpAddr,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Timeouts {
    header: Duration,
    idle: Duration,
}

/// Where a connection stands, as far as its deadlines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for a request's first byte.
    Idle = 0,
    /// A request head has begun and is not complete yet.
    Head = 1,
    /// A request is being served, or the connection speaks HTTP/2.
    Open = 2,
    /// A deadline passed: every read fails.
    Expired = 3,
}

impl Phase {
    fn of(value: u8) -> Phase {
        match value {
            0 => Phase::Idle,
            1 => Phase::Head,
            2 => Phase::Open,
            _ => Phase::Expired,
        }
    }
}

/// What the HTTP layer tells a stream it does not own any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// A new request is awaited on this connection.
    AwaitRequest,
    /// The request's head has been parsed.
    HeadReceived,
}

/// A client stream whose reads fail once the connection's deadline passes:
/// `idle_timeout` for a request's first byte, then `header_timeout` for the
/// rest of its head. Bytes peeked for the h2c check are read again.
///
/// The phase and deadline are atomics because the HTTP layer changes them
/// through a shared reference (the stream is inside Pingora's session then);
/// the session's task is the only one that touches them.
pub(crate) struct TimedStream {
    inner: Stream,
    /// Bytes the h2c check took, served again before the socket is read.
    replay: BytesMut,
    timeouts: Timeouts,
    phase: AtomicU8,
    /// The deadline, in nanoseconds after `since`.
    deadline: AtomicU64,
    since: Instant,
    /// Made on the first wait, and moved to the deadline on later ones.
    timer: Option<Pin<Box<Sleep>>>,
    /// HTTP/2 chosen by ALPN: preface bytes still to come before the
    /// connection has no deadline of ours (until then, as a request head).
    preface_left: usize,
    metrics: ConnectionMetrics,
}

impl TimedStream {
    fn new(inner: Stream, timeouts: Timeouts, metrics: ConnectionMetrics) -> Self {
        // HTTP/2 chosen by ALPN has no heads of ours to wait for once its
        // preface is in; until then it is awaited like a request (h2c is told
        // apart later, by its preface).
        let h2 = matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        let stream = TimedStream {
            inner,
            replay: BytesMut::new(),
            timeouts,
            phase: AtomicU8::new(Phase::Idle as u8),
            deadline: AtomicU64::new(0),
            since: Instant::now(),
            timer: None,
            metrics,
            preface_left: if h2 { H2_PREFACE.len() } else { 0 },
        };
        stream.enter(Phase::Idle, timeouts.idle);
        stream
    }

    /// A stream without deadlines, for a TLS handshake (which runs under a
    /// deadline of its own) to run over: Pingora's acceptor takes a stream
    /// type, not the boxed one a listener hands over.
    pub(crate) fn untimed(inner: Stream, metrics: ConnectionMetrics) -> Self {
        let stream = TimedStream::new(inner, Timeouts::default(), metrics);
        stream.phase.store(Phase::Open as u8, Ordering::Release);
        stream
    }

    fn phase(&self) -> Phase {
        Phase::of(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase`, with a deadline `within` from now.
    fn enter(&self, phase: Phase, within: Duration) {
        let at = self.since.elapsed().saturating_add(within);
        let nanos = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        self.deadline.store(nanos, Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
    }

    fn tell(&self, signal: Signal) {
        match (signal, self.phase()) {
            (Signal::AwaitRequest, Phase::Open) => self.enter(Phase::Idle, self.timeouts.idle),
            (Signal::HeadReceived, Phase::Idle | Phase::Head) => {
                self.phase.store(Phase::Open as u8, Ordering::Release)
            }
            // The first request of a connection is awaited from its start;
            // an HTTP/2 connection has no heads of ours.
            _ => {}
        }
    }

    /// With the socket pending: fails the read if the deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let why = match self.phase() {
            Phase::Idle => ConnectionClose::IdleTimeout,
            Phase::Head => ConnectionClose::HeaderTimeout,
            Phase::Open => return Poll::Pending,
            Phase::Expired => return Poll::Ready(Err(expired())),
        };
        let nanos = Duration::from_nanos(self.deadline.load(Ordering::Acquire));
        let Some(deadline) = self.since.checked_add(nanos) else {
            return Poll::Pending; // past any time this process will see
        };
        // Moving a registered timer takes a lock in the timer wheel, and a
        // keep-alive connection moves its deadline at every request. So the
        // timer is only moved earlier; one that fires early (before a later
        // deadline) is moved then, once per idle period rather than per request.
        let timer = match &mut self.timer {
            Some(timer) => {
                if timer.deadline() > deadline {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if timer.deadline() < deadline => timer.as_mut().reset(deadline),
                Poll::Ready(()) => {
                    self.phase.store(Phase::Expired as u8, Ordering::Release);
                    self.metrics.closed(why);
                    return Poll::Ready(Err(expired()));
                }
            }
        }
    }
}

fn expired() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not send a request in time",
    )
}

impl fmt::Debug for TimedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for TimedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        if this.phase() == Phase::Expired {
            return Poll::Ready(Err(expired()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read > 0 && this.phase() == Phase::Idle {
                    this.enter(Phase::Head, this.timeouts.header);
                }
                if this.preface_left > 0 {
                    this.preface_left = this.preface_left.saturating_sub(read);
                    if this.preface_left == 0 {
                        this.phase.store(Phase::Open as u8, Ordering::Release);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl AsyncWrite for TimedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Pingora peeks only for its h2c check. This peek reads (under the
/// deadlines) until `buf` is full or the bytes cannot be an HTTP/2 preface,
/// so a short HTTP/1 request is not held waiting for bytes that never come;
/// what is not filled stays as it was. Everything read is read again.
#[async_trait]
impl Peek for TimedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut peeked = std::mem::take(&mut self.replay);
        while peeked.len() < buf.len() && H2_PREFACE.starts_with(&peeked) {
            // `self.read_buf` would serve the replay: it is taken above.
            if self.read_buf(&mut peeked).await? == 0 {
                break;
            }
        }
        if peeked.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = peeked.len().min(buf.len());
        buf[..n].copy_from_slice(&peeked[..n]);
        if peeked.starts_with(H2_PREFACE) {
            self.phase.store(Phase::Open as u8, Ordering::Release);
        }
        self.replay = peeked;
        Ok(true)
    }
}

#[async_trait]
impl Shutdown for TimedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for TimedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for TimedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for TimedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for TimedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for TimedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}
