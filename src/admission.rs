//! The admission step: everything the gateway decides about a request before
//! it goes upstream, as one function over plain data. The proxy calls
//! [`admit`] with the live store; `tollgate check --explain` calls it with a
//! scratch store, so the two can never disagree about what happens to a
//! request.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arrayvec::ArrayVec;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, Uri};

use crate::consumer::jwt::{self, TokenError};
use crate::consumer::{Consumers, Plan as ConsumerPlan, Unknown, Who};
use crate::identity::{self, ClientKey, KeyError, KeyPart, Recorded, RequestFacts};
use crate::limit::{Decision, Decisions, HeldPermits, Limits, Nanos, StoreAnswer, MAX_CHECKS};
use crate::metrics::Outcome;
use crate::pipeline::{self, Incoming, Plan, Routed, Unrouted};
use crate::policy::Mode;
use crate::policy::OnError;
use crate::respond::{self, Reply};
use crate::route::{HostError, PathError, Target};
use crate::snapshot::{Rule, RuleLimit, Snapshot};
use crate::websocket::is_websocket_request;

/// The longest method taken (the longest registered one has 17 characters).
pub(crate) const MAX_METHOD_BYTES: usize = 32;

/// The parts of a request head admission reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub(crate) method: &'a Method,
    /// The request target exactly as received.
    pub(crate) raw_target: &'a [u8],
    pub(crate) headers: &'a HeaderMap,
    /// The URI's authority (HTTP/2 `:authority`), when there is one.
    pub(crate) uri_authority: Option<&'a str>,
    /// The TCP peer.
    pub(crate) peer: IpAddr,
    /// Replay: the identity the access log recorded for the request.
    pub(crate) recorded: Option<&'a Recorded>,
    /// A live request must name its host (RFC 9112 §3.2: `Host`, or an
    /// absolute-form target; h2's `:authority`): routed as if it had none, it
    /// would slip past every rule that matches on a host. A hypothetical
    /// (`check --explain`) or logged (`replay`) request may leave it out.
    pub(crate) host_required: bool,
}

/// What admission decided.
// `Forward` carries its decision inline: admission runs once per request and
// boxing it would allocate every time.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Admission {
    /// The gateway answers the request itself.
    Reply(Refusal),
    /// The request goes upstream.
    Forward(Admitted),
}

/// A request the gateway answers itself.
#[derive(Debug)]
pub(crate) struct Refusal {
    /// The matched rule (index in the snapshot), if routing got that far.
    pub(crate) rule: Option<usize>,
    /// What the answer counts as in `tollgate_requests_total`.
    pub(crate) outcome: Outcome,
    pub(crate) reply: Reply,
    /// The consumer's plan, when it was known before the refusal.
    pub(crate) plan: Option<usize>,
    /// For a limited request: the deciding limit (index in the request's
    /// limits) and the consumer, for the access log.
    pub(crate) limit: Option<usize>,
    pub(crate) consumer: Option<Arc<str>>,
    /// When the store decided (limiter clock), for the access log.
    pub(crate) decided_at: Option<Nanos>,
}

/// A request admitted upstream, with what the later phases need.
pub(crate) struct Admitted {
    pub(crate) rule: usize,
    /// `Allowed`, `Exempt`, `ShadowLimited`, or `StoreError` when the store
    /// failed and `on_error: allow` let it through.
    pub(crate) outcome: Outcome,
    /// The limit (index in the rule) and decision the response headers report.
    pub(crate) headline: Option<(usize, Decision)>,
    /// How long a shaping leaky bucket holds the request before it goes on.
    pub(crate) delay: Duration,
    /// Concurrency permits, given back when the request ends, however it ends.
    pub(crate) permits: Option<HeldPermits>,
    /// The key of the rule's WebSocket message limit, taken from the upgrade
    /// request (`None`: per connection, exempt, or no message limit).
    pub(crate) message_key: Option<ClientKey<'static>>,
    /// Set when the upstream must get a different target than the client sent.
    pub(crate) forward_uri: Option<Uri>,
    /// Host for an absolute-form request that came without a `Host` header.
    pub(crate) forward_host: Option<HeaderValue>,
    pub(crate) client_ip: IpAddr,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub(crate) peer_trusted: bool,
    /// The consumer's plan (index in the snapshot), on a rule that needs to
    /// know the consumer: the request's limits are `rule.limits_for(plan)`.
    pub(crate) plan: Option<usize>,
    /// The consumer's id; `None` for an anonymous request.
    pub(crate) consumer: Option<Arc<str>>,
    /// When the store decided (limiter clock), for the access log.
    pub(crate) decided_at: Option<Nanos>,
}

impl Admitted {
    /// An exemption applied: no limits, inside a WebSocket tunnel either.
    pub(crate) fn exempt(&self) -> bool {
        self.outcome == Outcome::Exempt
    }
}

fn refuse(rule: Option<usize>, outcome: Outcome, reply: Reply) -> Admission {
    refuse_on(None, rule, outcome, reply)
}

/// A refusal of a request whose consumer's plan is known.
fn refuse_on(
    plan: Option<usize>,
    rule: Option<usize>,
    outcome: Outcome,
    reply: Reply,
) -> Admission {
    Admission::Reply(Refusal {
        rule,
        outcome,
        reply,
        plan,
        limit: None,
        consumer: None,
        decided_at: None,
    })
}

/// The size of a request's head as HTTP/1.1 writes it (request line, each
/// field as `name: value` and its line end, the blank line), whichever
/// protocol brought it; the same for every path, `check --explain` included.
fn head_bytes(head: &RequestHead<'_>) -> usize {
    const LINE_ENDS: usize = " HTTP/1.1\r\n".len() + "\r\n".len();
    let fields: usize = head
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len())
        .sum();
    head.method.as_str().len() + 1 + head.raw_target.len() + LINE_ENDS + fields
}

/// Routes, identifies and decides one request against one snapshot. The
/// limits' own metrics (decisions per limit, degraded decisions) are counted
/// here; the request's outcome is the caller's to count, once.
pub(crate) async fn admit(rt: &Snapshot, head: &RequestHead<'_>, limits: &Limits) -> Admission {
    if *head.method == Method::CONNECT {
        return refuse(None, Outcome::BadRequest, respond::connect_refused());
    }
    // `post` is not `POST` (RFC 9110 §9.1) and matches no `methods: [POST]`,
    // but frameworks that read methods without case would serve it as one:
    // a way past a method's limits. nginx refuses it too.
    if head.method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        let reply = respond::bad_request_shape(
            400,
            "lowercase_method",
            "methods are case-sensitive: send them in upper case (RFC 9110 §9.1)",
        );
        return refuse(None, Outcome::BadRequest, reply);
    }
    // Registered methods are at most 17 characters; a longer token would
    // only be logged and forwarded whole.
    if head.method.as_str().len() > MAX_METHOD_BYTES {
        let reply =
            respond::bad_request_shape(400, "method_too_long", "a method is at most 32 characters");
        return refuse(None, Outcome::BadRequest, reply);
    }
    // A head up to Pingora's 1 MiB would reach the upstream whole, and be
    // held and logged; edge proxies cap it far lower (nginx 32 KiB, Envoy 60).
    if head_bytes(head) > rt.server.max_header_bytes {
        let reply = respond::head_too_large(rt.server.max_header_bytes);
        return refuse(None, Outcome::TooLarge, reply);
    }
    let target = match Target::parse(head.raw_target) {
        Ok(t) => t,
        Err(e) => return refuse(None, Outcome::BadRequest, respond::bad_path(e)),
    };
    if let Some(refusal) = framing_refusal(head.headers) {
        return refuse(None, Outcome::BadRequest, refusal);
    }
    let host = host_of(head, &target);
    if head.host_required && host.is_none_or(<[u8]>::is_empty) {
        return refuse(
            None,
            Outcome::BadRequest,
            respond::bad_host(HostError::Missing),
        );
    }
    let incoming = Incoming {
        method: head.method,
        target,
        host,
        headers: head.headers,
        peer: head.peer,
    };
    let routed = match pipeline::route(rt, &incoming) {
        Ok(r) => r,
        Err(Unrouted::BadPath(e)) => {
            return refuse(None, Outcome::BadRequest, respond::bad_path(e))
        }
        Err(Unrouted::BadHost(e)) => {
            return refuse(None, Outcome::BadRequest, respond::bad_host(e))
        }
        Err(Unrouted::NoRoute) => return refuse(None, Outcome::NoRoute, respond::no_route()),
    };
    let index = routed.rule;
    let rule = rt.rule(index);
    // A body declared too large is refused before anything is spent on it.
    if let Some(max) = rule.max_body_bytes {
        if content_length(head.headers).is_ok_and(|n| n.is_some_and(|n| n > max)) {
            return refuse(
                Some(index),
                Outcome::TooLarge,
                respond::too_large(rule, max),
            );
        }
    }
    let client_ip = pipeline::client_ip(rt, &incoming);
    let facts = RequestFacts {
        recorded: head.recorded,
        ..pipeline::facts(rt, &incoming, client_ip)
    };
    let who = match rt.consumers.as_ref().filter(|_| rule.needs_consumer) {
        Some(consumers) => match identify(consumers, &rt.plans, &facts) {
            Ok(who) => Some(who),
            Err(why) => {
                let (outcome, reply) = refuse_unidentified(rule, why);
                return refuse(Some(index), outcome, reply);
            }
        },
        None => None,
    };
    let facts = with_consumer(facts, who.as_ref());
    let plan = who.as_ref().map(|w| w.plan());
    let limits_of_request = rule.limits_for(plan);
    let mut message_key = None;
    // The message limit's key is checked before the request's limits spend
    // anything, so a refused upgrade costs nothing.
    if rule.websocket.messages.is_some()
        && is_websocket_request(head.method, head.headers)
        && !rule.exemptions.iter().any(|e| e.applies(&facts))
    {
        match websocket_message_key(rule, &facts) {
            Ok(key) => message_key = key,
            Err((limit, error)) => {
                let (outcome, reply) = refuse_key(rule, limit, error);
                return refuse_on(plan, Some(index), outcome, reply);
            }
        }
    }
    let mut admitted = Admitted {
        rule: index,
        outcome: Outcome::Allowed,
        headline: None,
        delay: Duration::ZERO,
        permits: None,
        message_key,
        forward_uri: None,
        forward_host: None,
        client_ip,
        peer_trusted: rt.server.trusted_proxies.contains(head.peer.to_canonical()),
        plan,
        consumer: who.as_ref().and_then(|w| w.id().cloned()),
        decided_at: None,
    };
    let planned = if rule.exempt_by_plan(plan, &rt.plans) {
        Plan::Exempt
    } else {
        pipeline::plan(rule, limits_of_request, &facts)
    };
    admitted.outcome = match planned {
        Plan::Exempt => Outcome::Exempt,
        Plan::BadCost { limit } => {
            let reply = respond::bad_cost(rule, &limits_of_request[limit]);
            return refuse_on(plan, Some(index), Outcome::BadRequest, reply);
        }
        Plan::Refuse { limit, error } => {
            let (outcome, reply) = refuse_key(rule, &limits_of_request[limit], error);
            return refuse_on(plan, Some(index), outcome, reply);
        }
        Plan::Decide {
            limits: indices,
            checks,
            shadow_refusal,
        } => {
            let on_error = rt.on_error(rule);
            let answer = if checks.is_empty() {
                StoreAnswer::Decided(Decisions::default())
            } else {
                limits.decide(&checks, on_error).await
            };
            let decided = match answer {
                StoreAnswer::Decided(decided) => Some(decided),
                StoreAnswer::Degraded(mode, local) => {
                    rule.metrics.degraded(mode);
                    if mode == OnError::Deny {
                        let reply = respond::store_unavailable(rule);
                        return refuse_on(plan, Some(index), Outcome::StoreError, reply);
                    }
                    local
                }
            };
            let Some(Decisions {
                decisions,
                permits,
                at,
            }) = decided
            else {
                // `on_error: allow`: through, unlimited.
                return forward(admitted, Outcome::StoreError, &target, &routed, head);
            };
            let decided: ArrayVec<(usize, Decision), MAX_CHECKS> =
                indices.into_iter().zip(decisions).collect();
            let now = at.unwrap_or_else(|| limits.now());
            admitted.decided_at = Some(now);
            for ((i, d), check) in decided.iter().zip(&checks) {
                let limit = &limits_of_request[*i];
                limit.record(d);
                limit.top.record(&check.key, !d.allowed, now);
            }
            let judgement = pipeline::judge(limits_of_request, &decided, shadow_refusal);
            if let (true, Some((i, decision))) = (judgement.denied(), judgement.headline) {
                let plan_name = plan.map(|p| rt.plans[p].name.as_str());
                let reply = respond::limited(rule, &limits_of_request[i], &decision, plan_name);
                return Admission::Reply(Refusal {
                    rule: Some(index),
                    outcome: Outcome::Limited,
                    reply,
                    plan,
                    limit: Some(i),
                    consumer: admitted.consumer.take(),
                    decided_at: admitted.decided_at,
                });
            }
            admitted.headline = judgement.headline;
            admitted.delay = pipeline::shaping_delay(limits_of_request, &decided);
            if !permits.is_empty() {
                admitted.permits = Some(limits.hold(permits));
            }
            judgement.outcome
        }
    };
    let outcome = admitted.outcome;
    forward(admitted, outcome, &target, &routed, head)
}

/// Sets what the upstream gets; a path that cannot be forwarded is refused.
fn forward(
    mut admitted: Admitted,
    outcome: Outcome,
    target: &Target<'_>,
    routed: &Routed<'_>,
    head: &RequestHead<'_>,
) -> Admission {
    admitted.outcome = outcome;
    match forward_uri(target, &routed.path) {
        Ok(uri) => admitted.forward_uri = uri,
        Err(e) => {
            let reply = respond::bad_path(e);
            return refuse_on(
                admitted.plan,
                Some(admitted.rule),
                Outcome::BadRequest,
                reply,
            );
        }
    }
    // The upstream is told the host the rule was chosen for: the target's
    // authority when there was no `Host` (the target goes upstream in origin
    // form), the normalized host when it differs from the one sent.
    if let Some(host) = &routed.host {
        let forward = if head.headers.contains_key(HOST) || target.authority.is_none() {
            host.rewritten()
        } else {
            Some(host.to_string())
        };
        admitted.forward_host = forward.and_then(|h| HeaderValue::from_str(&h).ok());
    }
    Admission::Forward(admitted)
}

/// The body length a request declares: one number, or a list of equal ones
/// (on one line or several), which RFC 9110 §8.6 lets a recipient read as
/// that one number. `Err` for anything else.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for line in headers.get_all(CONTENT_LENGTH) {
        for part in line.as_bytes().split(|b| *b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
                return Err(());
            }
            let n = std::str::from_utf8(part)
                .ok()
                .and_then(|digits| digits.parse::<u64>().ok())
                .ok_or(())?;
            if length.is_some_and(|seen| seen != n) {
                return Err(());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// A request the gateway cannot pass on as framed: a transfer coding other
/// than chunked (RFC 9112 §6.1: 501; decoded by chunked alone, its other
/// codings would be lost on the way), chunked applied twice, or lengths
/// that disagree.
fn framing_refusal(headers: &HeaderMap) -> Option<Reply> {
    let mut codings = headers
        .get_all(TRANSFER_ENCODING)
        .iter()
        .flat_map(|line| line.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|coding| !coding.is_empty());
    let chunked = |coding: &[u8]| coding.eq_ignore_ascii_case(b"chunked");
    match (codings.next(), codings.next()) {
        (None, _) => {}
        (Some(only), None) if chunked(only) => {}
        (Some(first), Some(second)) if chunked(first) && chunked(second) => {
            return Some(respond::bad_request_shape(
                400,
                "chunked_twice",
                "chunked may be applied to a body only once (RFC 9112 §7)",
            ))
        }
        _ => {
            return Some(respond::bad_request_shape(
                501,
                "unsupported_transfer_coding",
                "the gateway takes request bodies as Transfer-Encoding: chunked or with a Content-Length",
            ))
        }
    }
    match content_length(headers) {
        Ok(_) => None,
        Err(()) => Some(respond::bad_request_shape(
            400,
            "bad_content_length",
            "Content-Length must be one number (or a list of the same number)",
        )),
    }
}

/// `Host` header, else the authority of an absolute-form target, else the
/// URI's (h2 `:authority`). A `Host` that is not text is still the host (and
/// refused when normalized), never skipped for the next source.
pub(crate) fn host_of<'a>(head: &RequestHead<'a>, target: &Target<'a>) -> Option<&'a [u8]> {
    head.headers
        .get(HOST)
        .map(|h| h.as_bytes())
        .or(target.authority.map(str::as_bytes))
        .or(head.uri_authority.map(str::as_bytes))
}

/// The origin-form target the upstream gets, when it differs from what the
/// client sent: the normalized path and the query exactly as received.
fn forward_uri(target: &Target<'_>, path: &str) -> Result<Option<Uri>, PathError> {
    if target.authority.is_none() && target.path == path.as_bytes() {
        return Ok(None);
    }
    let mut forward = Vec::with_capacity(path.len() + target.query.map_or(0, |q| q.len() + 1));
    forward.extend_from_slice(path.as_bytes());
    if let Some(query) = target.query {
        forward.push(b'?');
        forward.extend_from_slice(query);
    }
    Uri::from_maybe_shared(Bytes::from(forward))
        .map(Some)
        .map_err(|_| PathError::Unforwardable)
}

/// The key of a rule's shared WebSocket message limit, under the limit's
/// `missing:` policy; `Err` refuses the upgrade.
fn websocket_message_key<'r>(
    rule: &'r Rule,
    facts: &RequestFacts<'_>,
) -> Result<Option<ClientKey<'static>>, (&'r RuleLimit, KeyError)> {
    let Some(messages) = rule
        .websocket
        .messages
        .as_ref()
        .filter(|m| !m.per_connection)
    else {
        return Ok(None);
    };
    let limit = &messages.limit;
    match pipeline::limit_key(limit, facts) {
        Ok(key) => Ok(key.map(ClientKey::into_owned)),
        // A shadow limit never refuses: without a key it just counts nothing.
        Err(_) if limit.mode == Mode::Shadow => Ok(None),
        Err(error) => Err((limit, error)),
    }
}

/// Why a request that needs a consumer has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unidentified {
    /// Two API keys (or bearer tokens) that differ.
    ConflictingKeys,
    Nobody(Unknown),
    BadToken(TokenError),
}

/// Who the request's bearer JWT or API key names (`check --explain` asks
/// too). With JWTs configured, a bearer token shaped like one is verified as
/// one; anything else is an API key.
pub(crate) fn identify<'c>(
    consumers: &'c Consumers,
    plans: &[ConsumerPlan],
    facts: &RequestFacts<'_>,
) -> Result<Who<'c>, Unidentified> {
    if let Some(recorded) = facts.recorded {
        return identify_recorded(consumers, plans, recorded);
    }
    if let Some(verifier) = &consumers.jwt {
        let token =
            identity::bearer_jwt(facts.headers).map_err(|_| Unidentified::ConflictingKeys)?;
        if let Some(token) = token {
            // An API key beside the token names another consumer: counted
            // as the token's while an upstream that reads the key serves
            // the key's, a client would pick its bucket.
            let key =
                identity::request_api_key(facts).map_err(|_| Unidentified::ConflictingKeys)?;
            if key.is_some_and(|key| *key != *token.as_bytes()) {
                return Err(Unidentified::ConflictingKeys);
            }
            return verifier
                .verify(token, jwt::unix_now())
                .map(Who::Token)
                .map_err(Unidentified::BadToken);
        }
    }
    let key = identity::request_api_key(facts).map_err(|_| Unidentified::ConflictingKeys)?;
    consumers
        .resolve(key.as_deref())
        .map_err(Unidentified::Nobody)
}

/// Replay's lookup: the consumer whose key has the recorded digest; else,
/// with JWTs on, the consumer and plan the log names (the token itself is
/// not in the log); else the anonymous plan, or nobody.
fn identify_recorded<'c>(
    consumers: &'c Consumers,
    plans: &[ConsumerPlan],
    recorded: &Recorded,
) -> Result<Who<'c>, Unidentified> {
    let key = recorded
        .api_key_digest()
        .map_err(|_| Unidentified::ConflictingKeys)?;
    if let Some(consumer) = key.and_then(|digest| consumers.by_digest(&digest)) {
        return Ok(Who::Consumer(consumer));
    }
    if consumers.jwt.is_some() {
        let plan = recorded
            .plan
            .as_deref()
            .and_then(|name| plans.iter().position(|p| p.name == name));
        if let (Some(id), Some(plan)) = (recorded.consumer.as_deref(), plan) {
            return Ok(Who::Token(Arc::new(jwt::Verified::recorded(id, plan))));
        }
    }
    match key {
        Some(_) => Err(Unidentified::Nobody(Unknown::UnknownKey)),
        None => consumers.resolve(None).map_err(Unidentified::Nobody),
    }
}

/// The answer to a request whose consumer cannot be told: 401 without a known
/// key, 400 for two keys that differ.
fn refuse_unidentified(rule: &Rule, why: Unidentified) -> (Outcome, Reply) {
    match why {
        Unidentified::ConflictingKeys => (
            Outcome::BadRequest,
            respond::conflicting_key(rule, None, &KeyPart::ApiKey),
        ),
        Unidentified::Nobody(unknown) => {
            let outcome = match unknown {
                Unknown::MissingKey => Outcome::MissingKey,
                Unknown::UnknownKey => Outcome::UnknownKey,
            };
            (outcome, respond::unknown_consumer(rule, unknown))
        }
        Unidentified::BadToken(error) => {
            (Outcome::InvalidToken, respond::invalid_token(rule, error))
        }
    }
}

/// The request's facts with the consumer it was found to be.
pub(crate) fn with_consumer<'a>(
    facts: RequestFacts<'a>,
    who: Option<&'a Who<'_>>,
) -> RequestFacts<'a> {
    RequestFacts {
        consumer: who.and_then(|w| w.id()).map(|id| &**id),
        token: who.and_then(|w| w.token()),
        ..facts
    }
}

/// The answer to a request a limit cannot take its key from.
fn refuse_key(rule: &Rule, limit: &RuleLimit, error: KeyError) -> (Outcome, Reply) {
    match error {
        KeyError::Missing(part) => (
            Outcome::MissingKey,
            respond::missing_key(rule, limit, &part),
        ),
        KeyError::Conflicting(part) => (
            Outcome::BadRequest,
            respond::conflicting_key(rule, Some(limit), &part),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(lines: &[&str]) -> Result<Option<u64>, ()> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CONTENT_LENGTH, HeaderValue::from_str(line).unwrap());
        }
        content_length(&headers)
    }

    #[test]
    fn a_list_of_equal_lengths_is_that_length() {
        assert_eq!(lengths(&[]), Ok(None));
        assert_eq!(lengths(&["5"]), Ok(Some(5)));
        assert_eq!(lengths(&["5, 5"]), Ok(Some(5)));
        assert_eq!(lengths(&["5", " 5 "]), Ok(Some(5)));
    }

    #[test]
    fn lengths_that_disagree_or_are_not_numbers_are_refused() {
        for bad in [
            &["5, 6"][..],
            &["5", "6"],
            &["+5"],
            &["5,"],
            &[""],
            &["0x5"],
        ] {
            assert_eq!(lengths(bad), Err(()), "{bad:?}");
        }
    }
}
