//! Answers the gateway writes itself (400, 401, 404, 429, 502, 504) and the
//! rate-limit headers it adds to upstream answers. Pure functions: they build a
//! header and a body; the glue writes them.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::HeaderValue;
use pingora::http::{IntoCaseHeaderName, ResponseHeader};
use serde_json::json;

use crate::consumer::jwt::TokenError;
use crate::consumer::Unknown;
use crate::identity::KeyPart;
use crate::limit::{BanMark, Decision, Nanos};
use crate::policy::HeaderStyle;
use crate::route::{HostError, PathError};
use crate::snapshot::{Rule, RuleLimit};

// Names as `&'static str`: Pingora copies a `HeaderName` it does not know
// into a new buffer for its case map, per header and per response; a static
// string it keeps as it is. Lower case, as they were always written.
const RATELIMIT_POLICY: &str = "ratelimit-policy";
const RATELIMIT: &str = "ratelimit";
const X_RATELIMIT_LIMIT: &str = "x-ratelimit-limit";
const X_RATELIMIT_REMAINING: &str = "x-ratelimit-remaining";
const X_RATELIMIT_RESET: &str = "x-ratelimit-reset";

/// A complete answer: header and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) header: ResponseHeader,
    pub(crate) body: Bytes,
}

/// Any header this module builds is valid by construction; a failure here would
/// be a bug in this file, not something a client can cause.
fn insert(header: &mut ResponseHeader, name: impl IntoCaseHeaderName, value: HeaderValue) {
    if let Err(e) = header.insert_header(name, value) {
        tracing::error!("cannot set a response header: {e}");
    }
}

fn reply(status: u16, content_type: HeaderValue, body: Vec<u8>) -> Reply {
    let mut header = match ResponseHeader::build(status, Some(6)) {
        Ok(h) => h,
        Err(_) => ResponseHeader::build(500, Some(6))
            .unwrap_or_else(|_| unreachable!("500 is a valid status")),
    };
    insert(&mut header, CONTENT_TYPE, content_type);
    insert(&mut header, CONTENT_LENGTH, HeaderValue::from(body.len()));
    Reply {
        header,
        body: Bytes::from(body),
    }
}

fn json_reply(status: u16, body: serde_json::Value) -> Reply {
    reply(
        status,
        HeaderValue::from_static("application/json"),
        body.to_string().into_bytes(),
    )
}

/// 400 for a path the gateway refuses to route.
pub(crate) fn bad_path(error: PathError) -> Reply {
    json_reply(
        400,
        json!({ "error": "bad_request", "reason": error.code(), "message": error.to_string() }),
    )
}

/// 400 for a host that cannot be normalized (or a repeated `Host`).
pub(crate) fn bad_host(error: HostError) -> Reply {
    json_reply(
        400,
        json!({ "error": "bad_request", "reason": error.code(), "message": error.to_string() }),
    )
}

/// 404 when no rule matches.
pub(crate) fn no_route() -> Reply {
    json_reply(
        404,
        json!({ "error": "no_route", "message": "no rule matches this request" }),
    )
}

/// 401 when a limit with `missing: deny` found no key. RFC 9110 requires a
/// challenge with every 401: it names where the key is expected.
pub(crate) fn missing_key(rule: &Rule, limit: &RuleLimit, part: &KeyPart) -> Reply {
    let mut r = json_reply(
        401,
        json!({
            "error": "missing_key",
            "message": format!("this endpoint needs {}", describe_part(part)),
            "rule": rule.name,
            "limit": limit.name,
            "key": part.to_string(),
        }),
    );
    let challenge = match part {
        KeyPart::Header(name) => format!("ApiKey realm=\"tollgate\", header=\"{name}\""),
        _ => "Bearer realm=\"tollgate\"".to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        insert(&mut r.header, WWW_AUTHENTICATE, value);
    }
    r
}

/// 401 when a rule that limits by consumer cannot tell who the client is:
/// no key (and requests without one have no plan), or a key no consumer has.
pub(crate) fn unknown_consumer(rule: &Rule, why: Unknown) -> Reply {
    let (error, message) = match why {
        Unknown::MissingKey => ("missing_key", "this endpoint needs an API key"),
        Unknown::UnknownKey => ("unknown_key", "the API key is not known"),
    };
    let mut r = json_reply(
        401,
        json!({ "error": error, "message": message, "rule": rule.name }),
    );
    insert(
        &mut r.header,
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate\""),
    );
    r
}

/// 401 for a bearer JWT that does not verify, with the reason (RFC 6750's
/// challenge says so too).
pub(crate) fn invalid_token(rule: &Rule, error: TokenError) -> Reply {
    let reason = error.reason();
    let mut r = json_reply(
        401,
        json!({
            "error": "invalid_token",
            "reason": reason,
            "message": format!("the bearer token is not accepted: {}", reason.replace('_', " ")),
            "rule": rule.name,
        }),
    );
    let challenge = format!(
        "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"{reason}\""
    );
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        insert(&mut r.header, WWW_AUTHENTICATE, value);
    }
    r
}

/// 413 for a request body over the rule's `max_body_bytes`: declared by its
/// `Content-Length`, or found while it streams.
pub(crate) fn too_large(rule: &Rule, max: u64) -> Reply {
    json_reply(
        413,
        json!({
            "error": "body_too_large",
            "message": format!("the request body may be at most {max} bytes"),
            "rule": rule.name,
            "max_bytes": max,
        }),
    )
}

/// A request whose shape (its method, its body's framing) the gateway
/// does not pass on: the client's mistake (400), or a coding the gateway
/// does not implement (501).
pub(crate) fn bad_request_shape(status: u16, reason: &str, message: &str) -> Reply {
    let error = if status == 501 {
        "not_implemented"
    } else {
        "bad_request"
    };
    json_reply(
        status,
        json!({ "error": error, "reason": reason, "message": message }),
    )
}

/// 400 when a limit's cost header holds no valid cost.
pub(crate) fn bad_cost(rule: &Rule, limit: &RuleLimit) -> Reply {
    let (header, max) = match &limit.cost {
        crate::snapshot::Cost::Header { name, max, .. } => (name.to_string(), *max),
        crate::snapshot::Cost::Fixed(n) => (String::new(), *n),
    };
    json_reply(
        400,
        json!({
            "error": "bad_cost",
            "message": format!("the {header} header must be a whole number from 1 to {max}"),
            "rule": rule.name,
            "limit": limit.name,
        }),
    )
}

/// 503 when Redis cannot decide and the rule's `on_error` is `deny`. The
/// breaker's cool-down is the earliest a retry can succeed.
pub(crate) fn store_unavailable(rule: &Rule) -> Reply {
    let mut r = json_reply(
        503,
        json!({
            "error": "limiter_unavailable",
            "message": "the rate limiter's store is unavailable; try again shortly",
            "rule": rule.name,
        }),
    );
    insert(&mut r.header, RETRY_AFTER, HeaderValue::from(1));
    r
}

/// 400 when the request carries a limit's key twice with different values.
/// Without a limit: the API key that names the consumer.
pub(crate) fn conflicting_key(rule: &Rule, limit: Option<&RuleLimit>, part: &KeyPart) -> Reply {
    let mut body = json!({
        "error": "conflicting_key",
        "message": format!("the request carries {} more than once, with different values", describe_part(part)),
        "rule": rule.name,
        "key": part.to_string(),
    });
    if let Some(limit) = limit {
        body["limit"] = limit.name.as_str().into();
    }
    json_reply(400, body)
}

fn describe_part(part: &KeyPart) -> String {
    match part {
        KeyPart::Header(name) => format!("the {name} header"),
        KeyPart::ApiKey => "an API key".into(),
        other => other.to_string(),
    }
}

/// Whole seconds, rounded up, so a client that waits that long is never early.
pub(crate) fn ceil_seconds(ns: Nanos) -> u64 {
    ns.div_ceil(1_000_000_000)
}

/// The answer to a request a limit denied: the rule's status and body (429 and
/// a JSON body by default), `Retry-After`, and the rule's rate-limit headers.
pub(crate) fn limited(
    rule: &Rule,
    limit: &RuleLimit,
    decision: &Decision,
    plan: Option<&str>,
) -> Reply {
    let retry_after = ceil_seconds(decision.retry_after).max(1);
    let mut r = match &rule.deny.body {
        // A ban always says so, whatever the rule's own refusal looks like:
        // the client must learn that waiting for its limit will not do.
        _ if decision.ban != BanMark::None && limit.bans() => {
            let mut body = json!({
                "error": "banned",
                "message": "too many refused requests: banned until retry_after has passed",
                "rule": rule.name,
                "limit": limit.name,
                "retry_after": retry_after,
            });
            if let Some(plan) = plan {
                body["plan"] = plan.into();
            }
            json_reply(429, body)
        }
        None => {
            let mut body = json!({
                "error": "rate_limited",
                "message": "too many requests",
                "rule": rule.name,
                "limit": limit.name,
                "retry_after": retry_after,
            });
            if let Some(plan) = plan {
                body["plan"] = plan.into();
            }
            json_reply(rule.deny.status, body)
        }
        Some(template) => reply(
            rule.deny.status,
            rule.deny.content_type.clone(),
            template
                .replace("{rule}", &rule.name)
                .replace("{limit}", &limit.name)
                .replace("{plan}", plan.unwrap_or(""))
                .replace("{retry_after}", &retry_after.to_string())
                .into_bytes(),
        ),
    };
    insert(&mut r.header, RETRY_AFTER, HeaderValue::from(retry_after));
    add_rate_limit_headers(&mut r.header, rule.headers, limit, decision);
    r
}

/// Adds the headers of `style` describing `limit` after `decision`.
/// For a denial, the reset is when the next request would pass, the same
/// moment `Retry-After` names.
pub(crate) fn add_rate_limit_headers(
    header: &mut ResponseHeader,
    style: HeaderStyle,
    limit: &RuleLimit,
    decision: &Decision,
) {
    let reset = if decision.allowed {
        ceil_seconds(decision.reset_after)
    } else {
        ceil_seconds(decision.retry_after).max(1)
    };
    // A concurrency limit has no quota over time for these fields to describe.
    let Some(policy) = &limit.policy_header else {
        return;
    };
    if style.ietf() {
        insert(header, RATELIMIT_POLICY, policy.clone());
        if let Some(v) = ratelimit_value(&limit.name, decision.remaining, reset) {
            insert(header, RATELIMIT, v);
        }
    }
    if style.legacy() {
        insert(header, X_RATELIMIT_LIMIT, HeaderValue::from(decision.limit));
        insert(
            header,
            X_RATELIMIT_REMAINING,
            HeaderValue::from(decision.remaining),
        );
        insert(header, X_RATELIMIT_RESET, HeaderValue::from(reset));
    }
}

/// `"name";r=remaining;t=reset`, built in one buffer of the right size: it
/// is written on every limited response, and `format!` would grow a string
/// through the formatting machinery.
fn ratelimit_value(name: &str, remaining: u64, reset: u64) -> Option<HeaderValue> {
    let (mut r, mut t) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (r, t) = (r.format(remaining), t.format(reset));
    let mut value = Vec::with_capacity(name.len() + r.len() + t.len() + 8);
    for part in [
        b"\"",
        name.as_bytes(),
        b"\";r=",
        r.as_bytes(),
        b";t=",
        t.as_bytes(),
    ] {
        value.extend_from_slice(part);
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

/// 502 (or 504 for a timeout) when the upstream cannot be reached or fails.
/// 503 at once when no server of the upstream is healthy: nothing was tried.
pub(crate) fn upstream_unavailable(upstream: &str) -> Reply {
    json_reply(
        503,
        json!({
            "error": "no_healthy_server",
            "upstream": upstream,
            "message": "no server of the upstream is healthy",
        }),
    )
}

pub(crate) fn upstream_failure(status: u16, upstream: &str) -> Reply {
    let (error, message) = if status == 504 {
        ("upstream_timeout", "the upstream did not answer in time")
    } else {
        ("upstream_unavailable", "the upstream could not be reached")
    };
    json_reply(
        status,
        json!({ "error": error, "message": message, "upstream": upstream }),
    )
}

/// 408: the request body stopped arriving for `server.body_timeout`.
pub(crate) fn body_timeout(timeout: std::time::Duration) -> Reply {
    json_reply(
        408,
        json!({
            "error": "body_timeout",
            "message": format!(
                "the request body stopped arriving for {}",
                humantime::format_duration(timeout)
            ),
        }),
    )
}

/// 405 for CONNECT: the gateway proxies requests, it opens no tunnels to
/// arbitrary hosts. RFC 9110 §15.5.6: a 405 names the methods allowed.
pub(crate) fn connect_refused() -> Reply {
    let mut reply = json_reply(
        405,
        json!({
            "error": "method_not_allowed",
            "message": "the gateway does not proxy CONNECT",
        }),
    );
    insert(
        &mut reply.header,
        http::header::ALLOW,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH"),
    );
    reply
}

/// 431: a request head over `server.max_header_bytes`.
pub(crate) fn head_too_large(max: usize) -> Reply {
    json_reply(
        431,
        json!({
            "error": "header_too_large",
            "message": format!("the request line and header fields may be at most {max} bytes"),
            "max_bytes": max,
        }),
    )
}

/// Any other failure the proxy reports (e.g. a malformed request Pingora refused).
pub(crate) fn generic_error(status: u16) -> Reply {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error");
    json_reply(status, json!({ "error": "proxy_error", "message": reason }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ratelimit_field_quotes_the_limit_and_gives_remaining_and_reset() {
        let value = ratelimit_value("per-ip", 4, 60).unwrap();
        assert_eq!(value, "\"per-ip\";r=4;t=60");
        let value = ratelimit_value("a", u64::MAX, 0).unwrap();
        assert_eq!(value, "\"a\";r=18446744073709551615;t=0");
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(ceil_seconds(0), 0);
        assert_eq!(ceil_seconds(1), 1);
        assert_eq!(ceil_seconds(1_000_000_000), 1);
        assert_eq!(ceil_seconds(1_000_000_001), 2);
    }

    #[test]
    fn bad_path_is_400_json() {
        let r = bad_path(PathError::EncodedSeparator);
        assert_eq!(r.header.status.as_u16(), 400);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["reason"], "encoded_separator");
    }
}
