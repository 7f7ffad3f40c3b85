//! The request's steps on a client session (`Gateway`'s methods), run either
//! by Pingora's proxy (the `ProxyHttp` impl below: one call per hook) or by
//! the fast HTTP/1 loop (`fast`): glue that runs the `pipeline` steps in
//! order and writes what they decide. No policy lives here.

mod access;
mod affinity;
pub(crate) mod connection;
pub(crate) mod edge;
mod fast;
pub(crate) mod tunnel;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::header::{HeaderName, CONTENT_LENGTH, HOST, UPGRADE};
use http::{HeaderValue, Version};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::protocols::http::ServerSession;
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::admission::{self, Admission, Admitted, RequestHead};
use crate::consumer::Consumers;
use crate::identity::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::metrics::Outcome;
use crate::policy::AccessLogFormat;
use crate::respond::{self, Reply};
use crate::snapshot::{Rule, Snapshot, Upstream};
use crate::state::Shared;
use crate::websocket::{is_websocket_request, ClientFilter, MessageGate, ServerWatch};
use access::{add_request_id, log_entry, LogFacts};
use tunnel::TunnelError;

const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

// The headers the gateway sets, named as `&'static str`: Pingora copies a
// `HeaderName` it does not know into a new buffer for its case map, on every
// request; a static string it keeps as it is.
const X_FORWARDED_FOR_NAME: &str = "x-forwarded-for";
const X_FORWARDED_PROTO_NAME: &str = "x-forwarded-proto";
const X_REAL_IP_NAME: &str = "x-real-ip";

const HTTP_SCHEME: HeaderValue = HeaderValue::from_static("http");
const HTTPS_SCHEME: HeaderValue = HeaderValue::from_static("https");

/// Whether the client's connection is TLS (for `X-Forwarded-Proto`).
fn over_tls(session: &ServerSession) -> bool {
    session
        .digest()
        .is_some_and(|digest| digest.ssl_digest.is_some())
}

/// An address as a header value, in its canonical text form. IPv4 is written
/// by hand: through `Display` it cost a quarter of the forwarding headers.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).unwrap_or(UNKNOWN_ADDRESS);
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&text[..len]).unwrap_or(UNKNOWN_ADDRESS)
}

/// Never used in practice: an address's text is always a valid value.
const UNKNOWN_ADDRESS: HeaderValue = HeaderValue::from_static("unknown");

/// Forwarding headers only a trusted proxy may set.
const UNTRUSTED_FORWARDING_HEADERS: [HeaderName; 4] = [
    HeaderName::from_static("forwarded"),
    X_REAL_IP,
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
];

/// The proxy application.
pub(crate) struct Gateway {
    shared: Arc<Shared>,
    /// Opens the connections of the tunnels we own (see `tunnel`).
    connector: TransportConnector,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Self {
        Gateway {
            shared,
            connector: TransportConnector::new(None),
        }
    }

    /// Counts a request's outcome once, under its rule (and its consumer's
    /// plan) or as unrouted.
    fn count(&self, rt: &Snapshot, rule: Option<usize>, outcome: Outcome, plan: Option<usize>) {
        match rule {
            Some(i) => {
                let rule = rt.rule(i);
                rule.metrics.record(outcome, plan);
                if outcome == Outcome::ShadowLimited {
                    tracing::debug!(rule = %rule.name, "a shadow limit would have denied this request");
                }
            }
            None => self.shared.metrics.unrouted().record(outcome, None),
        }
    }
}

/// Rewrites a request for the upstream: the normalized target, `Host`, and
/// the forwarding headers.
fn prepare_upstream_request(
    request: &mut RequestHeader,
    admitted: &mut Admitted,
    (peer, tls): (IpAddr, bool),
    rt: &Snapshot,
) -> Result<()> {
    let host_header = rt.upstream_of(rt.rule(admitted.rule)).host_header.as_ref();
    // Cloned, not taken: a retry prepares the request again.
    if let Some(uri) = &admitted.forward_uri {
        request.set_uri(uri.clone());
    }
    if let Some(host) = &admitted.forward_host {
        request.insert_header(HOST, host.clone())?;
    }
    let peer = peer.to_canonical();
    let peer_value = ip_header_value(peer);
    // A trusted proxy's chain is extended; anyone else's is replaced, and
    // their other forwarding headers dropped, so the upstream never sees
    // a chain a client made up.
    if admitted.peer_trusted {
        let mut chain = Vec::new();
        for line in request.headers.get_all(X_FORWARDED_FOR) {
            chain.extend_from_slice(line.as_bytes());
            chain.extend_from_slice(b", ");
        }
        chain.extend_from_slice(peer_value.as_bytes());
        request.insert_header(X_FORWARDED_FOR_NAME, chain)?;
    } else {
        for name in UNTRUSTED_FORWARDING_HEADERS {
            request.remove_header(&name);
        }
        request.insert_header(X_FORWARDED_FOR_NAME, peer_value.clone())?;
    }
    if !(admitted.peer_trusted && request.headers.contains_key(X_FORWARDED_PROTO)) {
        let scheme = if tls { HTTPS_SCHEME } else { HTTP_SCHEME };
        request.insert_header(X_FORWARDED_PROTO_NAME, scheme)?;
    }
    let real_ip = if admitted.client_ip == peer {
        peer_value
    } else {
        ip_header_value(admitted.client_ip)
    };
    request.insert_header(X_REAL_IP_NAME, real_ip)?;
    if let Some(host) = host_header {
        request.insert_header(HOST, host.clone())?;
    }
    // RFC 9110 §8.6: a list of equal lengths (admission refused any other)
    // goes upstream as the one number it is.
    let mut lengths = request.headers.get_all(CONTENT_LENGTH).iter();
    if let (Some(first), more) = (lengths.next(), lengths.next()) {
        if more.is_some() || first.as_bytes().contains(&b',') {
            if let Ok(Some(length)) = admission::content_length(&request.headers) {
                request.insert_header(CONTENT_LENGTH, length)?;
            }
        }
    }
    if let Some(consumers) = &rt.consumers {
        forward_consumer(request, admitted, consumers, rt)?;
    }
    Ok(())
}

/// Tells the upstream who the consumer is, in the headers the config names;
/// a client's own copies of those headers never reach it.
fn forward_consumer(
    request: &mut RequestHeader,
    admitted: &Admitted,
    consumers: &Consumers,
    rt: &Snapshot,
) -> Result<()> {
    let id = admitted.consumer.as_deref();
    let plan = admitted.plan.map(|p| rt.plans[p].name.as_str());
    for (name, value) in [(&consumers.forward_id, id), (&consumers.forward_plan, plan)] {
        let Some(name) = name else { continue };
        request.remove_header(name);
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
            request.insert_header(name.clone(), value)?;
        }
    }
    Ok(())
}

/// Per-request state carried between Pingora's hooks.
#[derive(Default)]
pub(crate) struct RequestCtx {
    /// The one snapshot this request is served with.
    snapshot: Option<Arc<Snapshot>>,
    /// The matched rule, also for requests the gateway answered itself.
    rule: Option<usize>,
    /// What admission decided, for a request that goes upstream.
    admitted: Option<Admitted>,
    /// The server of the current attempt, and those whose connect failed.
    server: Option<usize>,
    tried: Vec<usize>,
    /// Whether a connection to the upstream was made (later errors are the
    /// upstream's; earlier ones were counted as connect failures).
    connected: bool,
    started: Option<Instant>,
    upstream_started: Option<Instant>,
    /// The request became a WebSocket (or other upgraded) tunnel.
    tunnel_open: bool,
    /// Body bytes read from the client so far, against `max_body_bytes`.
    body_bytes: u64,
    /// With the access log on: the request's id (sent upstream and back)
    /// and what admission decided, kept for the log line.
    request_id: Option<HeaderValue>,
    log: Option<Box<LogFacts>>,
    /// From the first upstream attempt to the upstream's response head.
    upstream_time: Option<std::time::Duration>,
    /// The status a failure was answered with (0: none, or the client left).
    failure_status: u16,
}

/// A switched connection, ready to relay.
struct TunnelStart {
    gate: Option<MessageGate>,
    stream: pingora::protocols::Stream,
    /// Bytes the upstream sent after its 101.
    rest: bytes::Bytes,
    /// The 101 named extensions (which may set the frames' RSV bits).
    extensions: bool,
}

/// The request as error and debug lines name it: method, path and host,
/// each cut short, and never the query, where API keys travel.
pub(super) fn request_summary(session: &ServerSession) -> String {
    const MAX: usize = 256;
    let req = session.req_header();
    let path = req.uri.path();
    let host = req
        .headers
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()))
        .unwrap_or_default();
    let cut = |text: &str| -> String { text.chars().take(MAX).collect() };
    format!(
        "{} {}, Host: {}",
        cut(req.method.as_str()),
        cut(path),
        cut(&host)
    )
}

fn peer_ip(session: &ServerSession) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

impl Gateway {
    /// Proxies an admitted upgrade request through a tunnel we own.
    async fn tunnel(&self, session: &mut ServerSession, ctx: &mut RequestCtx) -> Result<()> {
        // The tunnel owns the admission (and its permits) for its whole life.
        let Some((rt, mut admitted)) = ctx.snapshot.clone().zip(ctx.admitted.take()) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "tunnel without an admitted request",
            ));
        };
        let rule = rt.rule(admitted.rule);
        let upstream = rt.upstream_of(rule);
        let mut request = session.req_header().clone();
        if rule.websocket.max_message_bytes.is_some() {
            // Compressed messages (permessage-deflate) would pass a size cap
            // counted on the wire and inflate past it upstream.
            request.remove_header("sec-websocket-extensions");
        }
        let client = (peer_ip(session), over_tls(session));
        add_request_id(&mut request, ctx.request_id.as_ref());
        prepare_upstream_request(&mut request, &mut admitted, client, &rt)?;
        let started = Instant::now();
        let handshake = match self.connect_upgrade(upstream, &request).await {
            Ok((server, handshake)) => {
                ctx.server = Some(server);
                handshake
            }
            Err(failure) => {
                tracing::warn!(upstream = %upstream.name, "upgrade failed: {failure}");
                let reply = match failure {
                    TunnelError::Unavailable => respond::upstream_unavailable(&upstream.name),
                    TunnelError::HandshakeTimeout(_) => {
                        respond::upstream_failure(504, &upstream.name)
                    }
                    _ => respond::upstream_failure(502, &upstream.name),
                };
                return write_reply(session, reply).await;
            }
        };
        rule.metrics.observe_upstream(started.elapsed());
        let tunnel::Handshake {
            mut response,
            rest,
            upstream: stream,
        } = handshake;
        if let Some((limit, decision)) = admitted.headline {
            respond::add_rate_limit_headers(
                &mut response,
                rule.headers,
                &rule.limits_for(admitted.plan)[limit],
                &decision,
            );
        }
        if !tunnel::switched_to_websocket(&response) {
            if response.status.as_u16() == 101 {
                // A switch to something we did not ask for is not relayed.
                self.shared.metrics.upstream_error(&upstream.name);
                return write_reply(session, respond::upstream_failure(502, &upstream.name)).await;
            }
            let head_only = session.req_header().method == http::Method::HEAD;
            return tunnel::relay_refusal(
                session,
                response,
                rest,
                stream,
                head_only,
                upstream.read_timeout,
            )
            .await;
        }
        if let Some(started) = ctx.started {
            rule.metrics.observe_request(started.elapsed());
        }
        add_request_id(&mut response, ctx.request_id.as_ref());
        rule.metrics.websockets().inc();
        ctx.tunnel_open = true;
        let extensions = response
            .headers
            .contains_key(http::header::SEC_WEBSOCKET_EXTENSIONS);
        session.write_response_header(Box::new(response)).await?;
        let gate = message_gate(&rt, rule, &mut admitted);
        let tunnel = TunnelStart {
            gate,
            stream,
            rest,
            extensions,
        };
        self.pump_tunnel(session, rule, upstream, tunnel).await;
        Ok(())
    }

    /// Relays the switched connection both ways under the rule's WebSocket
    /// policy until either side ends it, a deadline passes, or the gateway
    /// stops.
    async fn pump_tunnel(
        &self,
        session: &mut ServerSession,
        rule: &Rule,
        upstream: &Upstream,
        start: TunnelStart,
    ) {
        let TunnelStart {
            gate,
            stream,
            rest,
            extensions,
        } = start;
        let policy = &rule.websocket;
        let inspection = tunnel::Inspection {
            filter: ClientFilter::new(policy.max_message_bytes).with_extensions(extensions),
            watch: ServerWatch::default(),
            gate,
            limits: &self.shared.limits,
            clock: self.shared.clock.clone(),
            metrics: &rule.metrics,
        };
        let timeouts = tunnel::TunnelTimeouts {
            idle: policy.idle_timeout.unwrap_or(upstream.tunnel_idle_timeout),
            write: upstream.write_timeout,
            lifetime: policy.max_lifetime,
        };
        let stopping = self.shared.stopping.subscribe();
        let end = tunnel::pump(session, stream, rest, timeouts, inspection, stopping).await;
        tracing::debug!(rule = %rule.name, ?end, "tunnel closed");
    }

    /// Sends the upgrade request to the upstream's servers in turn: like the
    /// proxy path, a refused connection tries the next available server; any
    /// other failure is the answer. Returns the server that answered.
    async fn connect_upgrade(
        &self,
        upstream: &Upstream,
        request: &RequestHeader,
    ) -> std::result::Result<(usize, tunnel::Handshake), TunnelError> {
        let mut failure = TunnelError::Unavailable;
        let mut tried = Vec::new();
        while let Some(server) = upstream.pick(&tried, self.shared.clock.now()) {
            tried.push(server);
            let peer = upstream.peer(server);
            let attempt = tunnel::handshake(
                &self.connector,
                &peer,
                request,
                upstream.connect_timeout,
                upstream.read_timeout,
            )
            .await;
            match attempt {
                Ok(handshake) => {
                    upstream.health[server].connected();
                    return Ok((server, handshake));
                }
                Err(e) => {
                    self.shared.metrics.upstream_error(&upstream.name);
                    let retry = matches!(e, TunnelError::Connect(_));
                    if retry {
                        note_connect_failure(upstream, server, self.shared.clock.now());
                    }
                    failure = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(failure)
    }
}

/// Counts a failed connect against `server`'s passive ejection.
fn note_connect_failure(upstream: &Upstream, server: usize, now: u64) {
    if upstream.health[server].connect_failed(now, upstream.passive.as_ref()) {
        tracing::warn!(
            upstream = %upstream.name,
            server = %upstream.servers[server],
            "server ejected after consecutive failed connects"
        );
    }
}

/// The message limit of a tunnel: one budget per connection, or the shared
/// one of the request's message key; none for an exempt request.
fn message_gate(rt: &Snapshot, rule: &Rule, admitted: &mut Admitted) -> Option<MessageGate> {
    let policy = &rule.websocket;
    match policy.messages.as_ref().filter(|_| !admitted.exempt()) {
        Some(m) if m.per_connection => Some(MessageGate::per_connection(
            m.limit.clone(),
            policy.on_limit,
        )),
        Some(m) => admitted.message_key.take().map(|key| {
            MessageGate::shared(m.limit.clone(), policy.on_limit, key, rt.on_error(rule))
        }),
        None => None,
    }
}

/// An HTTP/1.1 WebSocket handshake without a body: the requests we tunnel.
fn wants_websocket(session: &mut ServerSession) -> bool {
    let req = session.req_header();
    !session.is_http2()
        && is_websocket_request(&req.method, &req.headers)
        && session.is_body_empty()
}

async fn write_reply(session: &mut ServerSession, reply: Reply) -> Result<()> {
    // Never leave an unread request body on a connection that will be reused.
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(reply.header))
        .await?;
    session.write_response_body(reply.body, true).await
}

fn snapshot(ctx: &RequestCtx) -> Result<(&Snapshot, usize)> {
    match (&ctx.snapshot, ctx.rule) {
        (Some(rt), Some(rule)) => Ok((rt, rule)),
        _ => Err(Error::explain(
            ErrorType::InternalError,
            "request reached the upstream phase without a rule",
        )),
    }
}

/// The request's steps as plain methods on the client's session, so that
/// Pingora's proxy (the hooks below) and the fast loop (`fast`) run the same
/// code in the same order.
impl Gateway {
    /// Admission, and the answers the gateway gives itself (refusals,
    /// tunnels). `true`: the request has been answered.
    pub(super) async fn admit(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        ctx.started = Some(Instant::now());
        // RFC 9110 §7.8: an HTTP/1.0 request's Upgrade is ignored, by
        // admission, the tunnel and the upstream alike.
        if session.req_header().version < Version::HTTP_11
            && session.req_header().headers.contains_key(UPGRADE)
        {
            session.req_header_mut().remove_header(&UPGRADE);
        }
        // What follows a CONNECT on the connection is a tunnel's bytes, not
        // a next request.
        if session.req_header().method == http::Method::CONNECT {
            session.set_keepalive(None);
        }
        let rt = self.shared.snapshot.load_full();
        let peer = peer_ip(session);
        let req = session.req_header();
        let head = RequestHead {
            method: &req.method,
            raw_target: req.raw_path(),
            headers: &req.headers,
            uri_authority: req.uri.authority().map(|a| a.as_str()),
            peer,
            recorded: None,
            host_required: true,
        };
        let logging = rt.access_log.format != AccessLogFormat::Off;
        let admission = admission::admit(&rt, &head, &self.shared.limits).await;
        if logging {
            ctx.request_id = Some(self.request_id(&rt, peer, &req.headers));
        }
        let admitted = match admission {
            Admission::Reply(mut refusal) => {
                self.count(&rt, refusal.rule, refusal.outcome, refusal.plan);
                if logging {
                    ctx.log = Some(LogFacts::of_refusal(&mut refusal, ctx.started));
                    add_request_id(&mut refusal.reply.header, ctx.request_id.as_ref());
                }
                ctx.rule = refusal.rule;
                ctx.snapshot = Some(rt);
                Box::pin(write_reply(session, refusal.reply)).await?;
                return Ok(true);
            }
            Admission::Forward(admitted) => admitted,
        };
        self.count(&rt, Some(admitted.rule), admitted.outcome, admitted.plan);
        if logging {
            ctx.log = Some(LogFacts::of_admitted(&admitted, ctx.started));
        }
        let delay = admitted.delay;
        ctx.rule = Some(admitted.rule);
        ctx.admitted = Some(admitted);
        ctx.snapshot = Some(rt);
        // The rare paths' futures are boxed: Pingora moves this hook's whole
        // future into a box on every request, so whatever it holds inline
        // (a timer, a tunnel's state) is copied for every request.
        if !delay.is_zero() {
            // Shaping: the request waits its turn, holding no worker thread.
            Box::pin(tokio::time::sleep(delay)).await;
        }
        if wants_websocket(session) {
            Box::pin(self.tunnel(session, ctx)).await?;
            return Ok(true);
        }
        // Pingora's read timeout of the request body (HTTP/1; h2 has none,
        // and an upstream's timeout waiting for the body answers for it).
        if let Some(rt) = &ctx.snapshot {
            session.set_read_timeout(Some(rt.server.body_timeout));
        }
        Ok(false)
    }

    /// The server for the next attempt: a retry after a failed connect
    /// moves on to another one.
    pub(super) fn pick_peer(&self, ctx: &mut RequestCtx) -> Result<HttpPeer> {
        let (rt, rule) = snapshot(ctx)?;
        let upstream = rt.upstream_of(rt.rule(rule));
        // WebSocket upgrades never get here (they are tunnelled); other
        // upgrade offers are stripped and proxied as plain requests.
        let picked = upstream
            .pick(&ctx.tried, self.shared.clock.now())
            .map(|server| (server, upstream.peer(server)));
        let Some((server, peer)) = picked else {
            // No server is healthy (or, rarely, none is left to retry).
            let status = if ctx.tried.is_empty() { 503 } else { 502 };
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "no healthy server of the upstream is left",
            ));
        };
        ctx.server = Some(server);
        ctx.upstream_started.get_or_insert_with(Instant::now);
        Ok(peer)
    }

    /// The request as the upstream gets it: the normalized target and
    /// `Host`, forwarding and consumer headers, the request id.
    pub(super) fn prepare_request(
        &self,
        session: &ServerSession,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(rt) = ctx.snapshot.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request reached the upstream without a snapshot",
            ));
        };
        // Only WebSocket upgrades are tunnelled (by us); any other upgrade
        // offer (h2c above all) would open a tunnel past routing and limits.
        if session.is_upgrade_req() {
            tunnel::strip_upgrade_offer(upstream_request);
        }
        let Some(admitted) = ctx.admitted.as_mut() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request reached the upstream without an admission",
            ));
        };
        let client = (peer_ip(session), over_tls(session));
        add_request_id(upstream_request, ctx.request_id.as_ref());
        prepare_upstream_request(upstream_request, admitted, client, &rt)
    }

    /// A body that streams past the rule's `max_body_bytes` (one without a
    /// `Content-Length`, or one longer than it said) ends the request with a
    /// 413; declared sizes were refused before anything was spent.
    pub(super) fn count_body(chunk: &[u8], ctx: &mut RequestCtx) -> Result<()> {
        ctx.body_bytes += chunk.len() as u64;
        let max = snapshot(ctx)
            .ok()
            .and_then(|(rt, rule)| rt.rule(rule).max_body_bytes);
        if max.is_some_and(|max| ctx.body_bytes > max) {
            return Err(Error::explain(
                ErrorType::HTTPStatus(413),
                "the request body exceeds max_body_bytes",
            ));
        }
        Ok(())
    }

    /// A connection to the request's server is open (new or pooled).
    pub(super) fn connected(ctx: &mut RequestCtx) {
        ctx.connected = true;
        if let (Ok((rt, rule)), Some(server)) = (snapshot(ctx), ctx.server) {
            rt.upstream_of(rt.rule(rule)).health[server].connected();
        }
    }

    /// The upstream's response head is in: its latency is measured, once,
    /// at the final head (not at a 100 or 103 before it).
    pub(super) fn response_arrived(head: &ResponseHeader, ctx: &mut RequestCtx) {
        if head.status.is_informational() {
            return;
        }
        if let (Some(started), Ok((rt, rule))) = (ctx.upstream_started, snapshot(ctx)) {
            let elapsed = started.elapsed();
            rt.rule(rule).metrics.observe_upstream(elapsed);
            ctx.upstream_time = Some(elapsed);
        }
    }

    /// The final response as the client gets it: the request id and the
    /// rule's `RateLimit` fields (a 100 or 103 before it gets neither).
    pub(super) fn prepare_response(upstream_response: &mut ResponseHeader, ctx: &RequestCtx) {
        if upstream_response.status.is_informational() {
            return;
        }
        add_request_id(upstream_response, ctx.request_id.as_ref());
        let Some(admitted) = &ctx.admitted else {
            return;
        };
        if let (Some((limit, decision)), Ok((rt, rule))) = (admitted.headline, snapshot(ctx)) {
            let rule = rt.rule(rule);
            respond::add_rate_limit_headers(
                upstream_response,
                rule.headers,
                &rule.limits_for(admitted.plan)[limit],
                &decision,
            );
        }
    }

    /// The request has ended, answered or not: its log line and metrics.
    pub(super) async fn finish(
        &self,
        session: &mut ServerSession,
        e: Option<&Error>,
        ctx: &mut RequestCtx,
    ) {
        connection::request_done(session).await;
        let Some(rt) = &ctx.snapshot else { return };
        if let Some(facts) = &ctx.log {
            let format = rt.access_log.format;
            if let Some(line) = log_entry(session, e, ctx, rt, facts).line(format) {
                self.shared.access_log.write(line);
            }
        }
        let (metrics, rule_name) = match ctx.rule {
            Some(rule) => (&rt.rule(rule).metrics, Some(&rt.rule(rule).name)),
            None => (self.shared.metrics.unrouted(), None),
        };
        if !ctx.tunnel_open {
            if let Some(started) = ctx.started {
                metrics.observe_request(started.elapsed());
            }
            return;
        }
        metrics.websockets().dec();
        // A tunnel can outlive its rule: once the rule's last one closes, its
        // gauge goes too.
        if let Some(name) = rule_name {
            if !self
                .shared
                .snapshot
                .load()
                .rules
                .iter()
                .any(|r| &r.name == name)
            {
                self.shared.metrics.forget_idle_websockets(name);
            }
        }
    }

    /// A connect to the request's server failed: counted against the
    /// server, and retried on another while any is left.
    pub(super) fn connect_failed(&self, ctx: &mut RequestCtx, mut e: Box<Error>) -> Box<Error> {
        let Some(server) = ctx.server else { return e };
        ctx.tried.push(server);
        if let Ok((rt, rule)) = snapshot(ctx) {
            let upstream = rt.upstream_of(rt.rule(rule));
            self.shared.metrics.upstream_error(&upstream.name);
            let now = self.shared.clock.now();
            note_connect_failure(upstream, server, now);
            // Try each of the upstream's available servers once.
            if upstream.any_left(&ctx.tried, now) {
                e.set_retry(true);
            }
        }
        e
    }

    /// Answers a request that could not be proxied, if the client is still
    /// there; returns the status (0: none was sent).
    pub(super) async fn answer_failure(
        &self,
        session: &mut ServerSession,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> u16 {
        let code = failure_status(e, session.is_body_done());
        ctx.failure_status = code;
        // Connect failures were counted as they happened; a 408 is the
        // client's.
        if let (true, ErrorSource::Upstream, true, Ok((rt, rule))) =
            (ctx.connected, e.esource(), code != 408, snapshot(ctx))
        {
            self.shared
                .metrics
                .upstream_error(&rt.upstream_of(rt.rule(rule)).name);
        }
        if code > 0 {
            let reply = match snapshot(ctx) {
                Ok((rt, rule)) if matches!(code, 502 | 504) => {
                    respond::upstream_failure(code, &rt.upstream_of(rt.rule(rule)).name)
                }
                Ok((rt, rule)) if code == 503 && !ctx.connected => {
                    respond::upstream_unavailable(&rt.upstream_of(rt.rule(rule)).name)
                }
                Ok((rt, rule)) if code == 413 => {
                    let rule = rt.rule(rule);
                    respond::too_large(rule, rule.max_body_bytes.unwrap_or_default())
                }
                Ok((rt, _)) if code == 408 => respond::body_timeout(rt.server.body_timeout),
                _ => respond::generic_error(code),
            };
            let mut reply = reply;
            add_request_id(&mut reply.header, ctx.request_id.as_ref());
            if let Err(write_error) = session.write_error_response(reply.header, reply.body).await {
                tracing::debug!("could not send the error response: {write_error}");
            }
        }
        code
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// None: Pingora's default installs a response-compression module that
    /// it leaves switched off, and every request would still build and call
    /// it. The gateway passes bodies through as the upstream sent them.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        connection::head_received(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.admit(session.as_downstream_mut(), ctx).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.pick_peer(ctx).map(Box::new)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.prepare_request(session.as_downstream(), upstream_request, ctx)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        match body {
            Some(chunk) => Gateway::count_body(chunk, ctx),
            None => Ok(()),
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Gateway::connected(ctx);
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Gateway::response_arrived(upstream_response, ctx);
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        Gateway::prepare_response(upstream_response, ctx);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        self.finish(session.as_downstream_mut(), e, ctx).await;
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, e)
    }

    /// As on the fast path: a client that left, sent a broken body or
    /// stopped sending is worth a debug line, not Pingora's error line.
    fn suppress_error_log(&self, session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        let clients = *e.esource() == ErrorSource::Downstream || ctx.failure_status == 408;
        if clients {
            tracing::debug!(
                "could not proxy {}: {e}",
                request_summary(session.as_downstream())
            );
        }
        clients
    }

    fn request_summary(&self, session: &Session, _ctx: &RequestCtx) -> String {
        request_summary(session.as_downstream())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = self
            .answer_failure(session.as_downstream_mut(), e, ctx)
            .await;
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// The status for a failed proxy attempt; 0 when the client is already gone.
/// An upstream that timed out waiting for a request body the client stopped
/// sending is the client's doing (408), not the upstream's (504).
fn failure_status(e: &Error, request_body_done: bool) -> u16 {
    let source = e.esource();
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ReadTimedout if *source == ErrorSource::Downstream => 408,
        ErrorType::ReadTimedout if *source == ErrorSource::Upstream && !request_body_done => 408,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *source == ErrorSource::Upstream =>
        {
            504
        }
        _ => match e.esource() {
            ErrorSource::Upstream => 502,
            ErrorSource::Downstream => match e.etype() {
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                _ => 400,
            },
            ErrorSource::Internal | ErrorSource::Unset => 500,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn an_ipv4_header_value_is_the_address_as_displayed(octets: [u8; 4]) {
            let ip = IpAddr::V4(Ipv4Addr::from(octets));
            prop_assert_eq!(ip_header_value(ip), ip.to_string());
        }

        #[test]
        fn an_ipv6_header_value_is_the_address_as_displayed(segments: [u16; 8]) {
            let ip = IpAddr::V6(Ipv6Addr::from(segments));
            prop_assert_eq!(ip_header_value(ip), ip.to_string());
        }
    }
}
