//! The access log's side of the proxy: what a request's context keeps for
//! its line, the request id, and the line built at the request's end.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::ServerSession as Session;
use pingora::Error;

use super::{over_tls, peer_ip, Gateway, RequestCtx, UNKNOWN_ADDRESS};
use crate::access_log;
use crate::admission::{Admitted, Refusal};
use crate::identity::{self, Recorded, X_FORWARDED_FOR};
use crate::limit::Nanos;
use crate::metrics::Outcome;
use crate::pipeline;
use crate::policy::AccessLogFormat;
use crate::snapshot::Snapshot;

/// What the access log tells of a request's admission.
pub(super) struct LogFacts {
    pub(super) outcome: Outcome,
    /// The deciding limit (index in the request's limits) and whether it
    /// allowed the request, with what remained.
    pub(super) limit: Option<(usize, bool, u64)>,
    pub(super) plan: Option<usize>,
    pub(super) consumer: Option<Arc<str>>,
    pub(super) limiter: std::time::Duration,
    pub(super) decided_at: Option<Nanos>,
}

impl LogFacts {
    /// Boxed: the context of a request without a log line stays small.
    pub(super) fn of_refusal(refusal: &mut Refusal, started: Option<Instant>) -> Box<Self> {
        Box::new(LogFacts {
            outcome: refusal.outcome,
            limit: refusal.limit.map(|i| (i, false, 0)),
            plan: refusal.plan,
            consumer: refusal.consumer.take(),
            limiter: started.map(|s| s.elapsed()).unwrap_or_default(),
            decided_at: refusal.decided_at,
        })
    }

    pub(super) fn of_admitted(admitted: &Admitted, started: Option<Instant>) -> Box<Self> {
        Box::new(LogFacts {
            outcome: admitted.outcome,
            limit: admitted.headline.map(|(i, d)| (i, d.allowed, d.remaining)),
            plan: admitted.plan,
            consumer: admitted.consumer.clone(),
            limiter: started.map(|s| s.elapsed()).unwrap_or_default(),
            decided_at: admitted.decided_at,
        })
    }
}

const X_REQUEST_ID: &str = "x-request-id";
/// Built once: a name looked up as text is parsed on every lookup.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Sets `X-Request-Id` on a request or response head, when the request has
/// an id (the access log is on).
pub(super) fn add_request_id<H: HeaderSink>(head: &mut H, id: Option<&HeaderValue>) {
    if let Some(id) = id {
        head.set(X_REQUEST_ID, id.clone());
    }
}

/// A request or response head a header can be set on.
pub(super) trait HeaderSink {
    fn set(&mut self, name: &'static str, value: HeaderValue);
}

impl HeaderSink for RequestHeader {
    fn set(&mut self, name: &'static str, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl HeaderSink for ResponseHeader {
    fn set(&mut self, name: &'static str, value: HeaderValue) {
        let _ = self.insert_header(name, value);
    }
}

impl Gateway {
    /// The request's id: a trusted proxy's `X-Request-Id`, else a new one.
    pub(super) fn request_id(
        &self,
        rt: &Snapshot,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> HeaderValue {
        let given = headers
            .get(X_REQUEST_ID)
            .filter(|v| access_log::usable_request_id(v.as_bytes()));
        match given {
            Some(id) if rt.server.trusted_proxies.contains(peer.to_canonical()) => id.clone(),
            _ => {
                HeaderValue::from_bytes(&self.shared.request_ids.next()).unwrap_or(UNKNOWN_ADDRESS)
            }
        }
    }
}

/// The access log's line for a request that has ended.
pub(super) fn log_entry<'a>(
    session: &'a Session,
    e: Option<&'a Error>,
    ctx: &'a RequestCtx,
    rt: &'a Snapshot,
    facts: &'a LogFacts,
) -> access_log::Entry<'a> {
    let req = session.req_header();
    let rule = ctx.rule.map(|i| rt.rule(i));
    let upstream = rule
        .filter(|_| facts_forwarded(facts))
        .map(|r| rt.upstream_of(r));
    let limit = match (rule, facts.limit) {
        (Some(rule), Some((i, allowed, remaining))) => {
            rule.limits_for(facts.plan)
                .get(i)
                .map(|l| access_log::Verdict {
                    name: l.name.as_str(),
                    allowed,
                    remaining,
                })
        }
        _ => None,
    };
    let status = session.response_written().map_or(0, |r| r.status.as_u16());
    let client_ip = identity::client_ip(
        peer_ip(session),
        req.headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.as_bytes()),
        &rt.server.trusted_proxies,
    );
    access_log::Entry {
        time: std::time::SystemTime::now(),
        request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
        client_ip,
        // Too long to be a method or a host, they were refused: a log line
        // never carries them whole.
        method: Some(req.method.as_str())
            .filter(|m| m.len() <= crate::admission::MAX_METHOD_BYTES)
            .unwrap_or("-"),
        host: req
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .filter(|h| h.len() <= crate::route::MAX_HOST_BYTES),
        path: log_path(req.raw_path()),
        protocol: match req.version {
            http::Version::HTTP_10 => "HTTP/1.0",
            http::Version::HTTP_2 => "HTTP/2",
            _ => "HTTP/1.1",
        },
        tls: over_tls(session),
        status,
        rule: rule.map(|r| r.name.as_str()),
        outcome: facts.outcome.label(),
        limit,
        decided_at: facts
            .decided_at
            .map(|at| UNIX_EPOCH + std::time::Duration::from_nanos(at)),
        identity: recorded_identity(rt, req, client_ip),
        consumer: facts.consumer.as_deref(),
        plan: facts.plan.map(|p| rt.plans[p].name.as_str()),
        upstream: upstream.map(|u| u.name.as_str()),
        server: upstream.and_then(|u| ctx.server.map(|i| u.servers[i])),
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        duration_ms: ctx.started.map(|s| s.elapsed()).unwrap_or_default(),
        upstream_ms: ctx.upstream_time,
        limiter_ms: Some(facts.limiter),
        trace_id: req
            .headers
            .get(TRACEPARENT)
            .and_then(|v| access_log::trace_id(v.as_bytes())),
        websocket: ctx.tunnel_open,
        error: e.map(|e| e.etype().as_str()),
    }
}

/// What replay needs of the request's identity, in a JSON log (the text
/// form has no room for it); `None` when no rule reads any.
fn recorded_identity(rt: &Snapshot, req: &RequestHeader, client_ip: IpAddr) -> Option<Recorded> {
    if rt.access_log.format != AccessLogFormat::Json || rt.recording.is_empty() {
        return None;
    }
    let facts = pipeline::facts_of(rt, &req.headers, req.uri.query(), client_ip);
    let recorded = Recorded::of(&rt.recording.parts, &rt.recording.header_exemptions, &facts);
    (recorded != Recorded::default()).then_some(recorded)
}

/// Whether admission sent the request on (it has an upstream).
fn facts_forwarded(facts: &LogFacts) -> bool {
    matches!(
        facts.outcome,
        Outcome::Allowed | Outcome::Exempt | Outcome::ShadowLimited | Outcome::StoreError
    )
}

/// The path as the log shows it: normalized as routing saw it, without the
/// query (where keys travel); `-` for a path that does not normalize (the
/// request was refused with 400).
fn log_path(raw: &[u8]) -> std::borrow::Cow<'_, str> {
    let path = raw.split(|&b| b == b'?').next().unwrap_or_default();
    crate::route::normalize_path(path).unwrap_or(std::borrow::Cow::Borrowed("-"))
}
