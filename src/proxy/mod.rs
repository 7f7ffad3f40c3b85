//! The Pingora `ProxyHttp` impl: glue that runs the `pipeline` steps in order
//! and writes what they decide. No policy lives here.

pub mod respond;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HOST;
use http::Uri;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::identity::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use crate::limit::{Decision, MemoryStore, MonotonicClock, Store};
use crate::metrics::{Metrics, Outcome};
use crate::pipeline::{self, Incoming, Plan, Unrouted};
use crate::runtime::Runtime;
use respond::Reply;

/// State shared by the proxy, the admin listener and background tasks. The
/// store and metrics outlive any one config snapshot.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub store: MemoryStore,
    pub metrics: Metrics,
    pub clock: MonotonicClock,
}

impl Shared {
    pub fn new(runtime: Runtime, metrics: Metrics) -> Self {
        Shared {
            runtime: ArcSwap::from_pointee(runtime),
            store: MemoryStore::default(),
            metrics,
            clock: MonotonicClock::default(),
        }
    }
}

/// The proxy application.
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Self {
        Gateway { shared }
    }
}

/// Per-request state carried between Pingora's hooks.
#[derive(Default)]
pub struct RequestCtx {
    /// The one snapshot this request is served with.
    runtime: Option<Arc<Runtime>>,
    rule: Option<usize>,
    /// Set when normalization changed the path.
    forward_uri: Option<Uri>,
    peer_trusted: bool,
    /// The limit and decision the response headers report.
    headline: Option<(usize, Decision)>,
    connect_failures: usize,
}

fn peer_ip(session: &Session) -> IpAddr {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip())
}

fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

impl Gateway {
    /// Runs the pipeline for one request. `Some(reply)` answers the request
    /// here; `None` sends it upstream.
    async fn admit(
        &self,
        rt: &Runtime,
        req: &RequestHeader,
        peer: IpAddr,
        ctx: &mut RequestCtx,
    ) -> Option<Reply> {
        let unrouted = self.shared.metrics.unrouted();
        let incoming = Incoming {
            method: &req.method,
            path: req.uri.path(),
            query: req.uri.query(),
            host: host_of(req),
            headers: &req.headers,
            peer,
        };
        let routed = match pipeline::route(rt, &incoming) {
            Ok(r) => r,
            Err(Unrouted::BadPath(e)) => {
                unrouted.record(Outcome::BadRequest);
                return Some(respond::bad_path(e));
            }
            Err(Unrouted::NoRoute) => {
                unrouted.record(Outcome::NoRoute);
                return Some(respond::no_route());
            }
        };
        let rule = rt.rule(routed.rule);
        ctx.rule = Some(routed.rule);
        if routed.path != incoming.path {
            let forward = match incoming.query {
                Some(q) => format!("{}?{q}", routed.path),
                None => routed.path.to_string(),
            };
            match forward.parse::<Uri>() {
                Ok(uri) => ctx.forward_uri = Some(uri),
                Err(_) => {
                    rule.metrics.record(Outcome::BadRequest);
                    return Some(respond::bad_path(crate::route::PathError::BadEscape));
                }
            }
        }
        ctx.peer_trusted = rt.server.trusted_proxies.contains(peer.to_canonical());
        let client_ip = pipeline::client_ip(rt, &incoming);
        let facts = pipeline::facts(rt, &incoming, client_ip);
        let (limits, checks) = match pipeline::plan(rule, &facts) {
            Plan::Exempt(_) => {
                rule.metrics.record(Outcome::Exempt);
                return None;
            }
            Plan::MissingKey { limit, part } => {
                rule.metrics.record(Outcome::MissingKey);
                return Some(respond::missing_key(rule, &rule.limits[limit], &part));
            }
            Plan::Decide { limits, checks } => (limits, checks),
        };
        if checks.is_empty() {
            rule.metrics.record(Outcome::Allowed);
            return None;
        }
        let decisions = match self
            .shared
            .store
            .decide(&checks, self.shared.clock.now())
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(rule = %rule.name, "limiter store failed, letting the request through: {e}");
                rule.metrics.record(Outcome::StoreError);
                return None;
            }
        };
        let decided: Vec<(usize, Decision)> = limits.into_iter().zip(decisions).collect();
        let verdict = pipeline::judge(rule, &decided);
        rule.metrics.record(verdict.outcome);
        if verdict.outcome == Outcome::ShadowLimited {
            tracing::info!(rule = %rule.name, "a shadow limit would have denied this request");
        }
        match verdict.headline {
            Some((i, decision)) if verdict.denied() => {
                Some(respond::limited(rule, &rule.limits[i], &decision))
            }
            headline => {
                ctx.headline = headline;
                None
            }
        }
    }
}

async fn write_reply(session: &mut Session, reply: Reply) -> Result<()> {
    // Never leave an unread request body on a connection that will be reused.
    if !session.is_body_empty() {
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(reply.header), false)
        .await?;
    session.write_response_body(Some(reply.body), true).await
}

fn snapshot(ctx: &RequestCtx) -> Result<(&Runtime, usize)> {
    match (&ctx.runtime, ctx.rule) {
        (Some(rt), Some(rule)) => Ok((rt, rule)),
        _ => Err(Error::explain(
            ErrorType::InternalError,
            "request reached the upstream phase without a rule",
        )),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let rt = self.shared.runtime.load_full();
        let peer = peer_ip(session);
        let reply = self.admit(&rt, session.req_header(), peer, ctx).await;
        ctx.runtime = Some(rt);
        match reply {
            Some(reply) => {
                write_reply(session, reply).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (rt, rule) = snapshot(ctx)?;
        let upstream = rt.upstream_of(rt.rule(rule));
        let mut peer = HttpPeer::new(upstream.next_server(), upstream.tls, upstream.sni.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(upstream.connect_timeout);
        options.write_timeout = Some(upstream.write_timeout);
        // A WebSocket may be quiet for long stretches; only plain requests get
        // a read deadline.
        if !session.is_upgrade_req() {
            options.read_timeout = Some(upstream.read_timeout);
        }
        options.verify_cert = upstream.verify_cert;
        options.verify_hostname = upstream.verify_cert;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(uri) = ctx.forward_uri.take() {
            upstream_request.set_uri(uri);
        }
        let peer = peer_ip(session).to_canonical().to_string();
        // A trusted proxy's chain is extended; anyone else's is replaced, so the
        // upstream never sees a chain a client made up.
        let forwarded_for = if ctx.peer_trusted {
            let earlier: Vec<&str> = upstream_request
                .headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if earlier.is_empty() {
                peer
            } else {
                format!("{}, {peer}", earlier.join(", "))
            }
        } else {
            peer
        };
        upstream_request.insert_header(X_FORWARDED_FOR, forwarded_for)?;
        if !(ctx.peer_trusted && upstream_request.headers.contains_key(X_FORWARDED_PROTO)) {
            upstream_request.insert_header(X_FORWARDED_PROTO, "http")?;
        }
        let (rt, rule) = snapshot(ctx)?;
        if let Some(host) = &rt.upstream_of(rt.rule(rule)).host_header {
            upstream_request.insert_header(HOST, host.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (Some((limit, decision)), Ok((rt, rule))) = (ctx.headline, snapshot(ctx)) {
            let rule = rt.rule(rule);
            respond::add_rate_limit_headers(
                upstream_response,
                rule.headers,
                &rule.limits[limit],
                &decision,
            );
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.connect_failures += 1;
        // Try the upstream's other servers once each before giving up.
        if let Ok((rt, rule)) = snapshot(ctx) {
            if ctx.connect_failures < rt.upstream_of(rt.rule(rule)).servers.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = failure_status(e);
        if code > 0 {
            let reply = match snapshot(ctx) {
                Ok((rt, rule)) if matches!(code, 502 | 504) => {
                    respond::upstream_failure(code, &rt.upstream_of(rt.rule(rule)).name)
                }
                _ => respond::generic_error(code),
            };
            if let Err(write_error) = session
                .write_error_response(reply.header, Bytes::clone(&reply.body))
                .await
            {
                tracing::debug!("could not send the error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

/// The status for a failed proxy attempt; 0 when the client is already gone.
fn failure_status(e: &Error) -> u16 {
    match e.etype() {
        ErrorType::HTTPStatus(code) => *code,
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout
            if *e.esource() == ErrorSource::Upstream =>
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
