//! Who is being limited: the admin endpoints over each limit's top keys, a
//! key's state and its ban.
//!
//! - `GET /-/limits`: every rule and limit, with its requests and refusals
//!   per second over the last minute and its penalty box.
//! - `GET /-/limits/{rule}/{limit}/top?n=20&by=refusals|requests`.
//! - `GET /-/limits/{rule}/{limit}/keys/{key}`: remaining, reset, ban.
//! - `DELETE /-/limits/{rule}/{limit}/keys/{key}`: forget its state, lift
//!   its ban.
//! - `GET /-/bans`: the bans running, over every limit.
//!
//! A key is named by its digest (`identity::KeyDigest`), or as it was counted
//! (`server.admin_show_keys` shows that form); both are accepted.

use std::time::{Duration, SystemTime};

use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{json as reply, Reply};
use crate::identity::{ClientKey, KeyDigest};
use crate::limit::{KeyRef, LimitRef, Nanos, RunningBan, StoreError};
use crate::snapshot::{Rule, RuleLimit, Snapshot};
use crate::state::{rfc3339, Shared};
use crate::top::{By, PER_SHARD, SHARDS, WINDOW};

/// The most keys a top list or a ban list returns.
const MOST: usize = 1_000;

/// Routes `/-/limits…` and `/-/bans`; `None` for other paths.
pub(super) async fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Option<Reply> {
    let rt = shared.snapshot.load();
    if path == "/-/bans" {
        return Some(match *method {
            Method::GET => bans(shared, &rt).await,
            _ => not_allowed("GET"),
        });
    }
    let rest = path.strip_prefix("/-/limits")?;
    // `/-/limitsé`: not this endpoint (and not a char boundary to cut at).
    let rest_segments = rest.strip_prefix('/').or(rest.is_empty().then_some(""))?;
    if rest_segments.is_empty() {
        return Some(match *method {
            Method::GET => reply(StatusCode::OK, overview(shared, &rt).await),
            _ => not_allowed("GET"),
        });
    }
    let segments: Vec<String> = match rest_segments.split('/').map(percent_decode).collect() {
        Some(segments) => segments,
        None => {
            return Some(bad_request(
                "a path segment is not valid percent-encoded UTF-8",
            ))
        }
    };
    let (rule, limit) = match segments.as_slice() {
        [rule, limit, ..] => match find_limit(&rt, rule, limit) {
            Some(found) => found,
            None => {
                return Some(reply(
                    StatusCode::NOT_FOUND,
                    json!({
                        "error": "not_found",
                        "message": format!("no limit {limit:?} in a rule {rule:?}; GET /-/limits lists them"),
                    }),
                ))
            }
        },
        _ => return Some(not_found()),
    };
    Some(match (method, &segments[2..]) {
        (&Method::GET, [top]) if top == "top" => top_keys(shared, &rt, rule, limit, query).await,
        (_, [top]) if top == "top" => not_allowed("GET"),
        (&Method::GET, [keys, key]) if keys == "keys" => {
            key_state(shared, &rt, rule, limit, key).await
        }
        (&Method::DELETE, [keys, key]) if keys == "keys" => {
            forget(shared, &rt, rule, limit, key).await
        }
        (_, [keys, _]) if keys == "keys" => not_allowed("GET, DELETE"),
        _ => not_found(),
    })
}

fn find_limit<'a>(rt: &'a Snapshot, rule: &str, limit: &str) -> Option<(&'a Rule, &'a RuleLimit)> {
    let rule = rt.rules.iter().find(|r| r.name == rule)?;
    let limit = rule.all_limits().find(|l| l.name == limit)?;
    Some((rule, limit))
}

/// Every rule's limits with their rates over the window.
async fn overview(shared: &Shared, rt: &Snapshot) -> Value {
    let now = shared.limits.now();
    let rules: Vec<Value> = rt
        .rules
        .iter()
        .map(|rule| {
            let limits: Vec<Value> = rule
                .all_limits()
                .map(|limit| {
                    let totals = limit.top.totals(now);
                    let per_second = |n: u64| {
                        let span = Duration::from_nanos(totals.span.max(1)).as_secs_f64();
                        (n as f64 / span.max(1.0) * 100.0).round() / 100.0
                    };
                    json!({
                        "limit": limit.name,
                        "describe": limit.describe(),
                        "mode": limit.mode,
                        "ban": limit.ban.map(|b| json!({
                            "after": b.after,
                            "within_seconds": seconds(b.within),
                            "for_seconds": seconds(b.duration),
                            "escalate": b.escalate,
                            "max_seconds": seconds(b.max),
                            "mode": if limit.bans() { "enforce" } else { "shadow" },
                        })),
                        "requests_per_second": per_second(totals.requests),
                        "refusals_per_second": per_second(totals.refusals),
                    })
                })
                .collect();
            json!({ "rule": rule.name, "limits": limits })
        })
        .collect();
    json!({
        "window_seconds": seconds(WINDOW),
        "show_keys": rt.server.admin_show_keys,
        "store": shared.limits.health().await,
        "rules": rules,
    })
}

async fn top_keys(
    shared: &Shared,
    rt: &Snapshot,
    rule: &Rule,
    limit: &RuleLimit,
    query: Option<&str>,
) -> Reply {
    let mut n = 20;
    let mut by = By::Refusals;
    for (name, value) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
    {
        match (name, value) {
            ("n", v) => match v.parse::<usize>() {
                Ok(v) if (1..=MOST).contains(&v) => n = v,
                _ => return bad_request(&format!("n must be a number from 1 to {MOST}")),
            },
            ("by", "refusals") => by = By::Refusals,
            ("by", "requests") => by = By::Requests,
            ("by", _) => return bad_request("by is `refusals` or `requests`"),
            _ => {}
        }
    }
    let now = shared.limits.now();
    let totals = limit.top.totals(now);
    let local = if shared.limits.shared() { MOST } else { n };
    let mut merged: Vec<Merged> = limit
        .top
        .top(by, local, now)
        .into_iter()
        .map(|r| Merged {
            digest: r.key.digest(),
            key: Some(r.key),
            requests: r.requests,
            refusals: r.refusals,
            error: r.error,
        })
        .collect();
    // Other gateways on the same Redis: their counts add up by digest.
    let others = match shared.limits.others_top(limit.id).await {
        Ok(others) => others,
        Err(e) => {
            tracing::debug!("reading other gateways' top keys failed: {e}");
            Vec::new()
        }
    };
    for published in &others {
        for &(digest, requests, refusals) in published {
            match merged.iter_mut().find(|m| m.digest == digest) {
                Some(m) => {
                    m.requests += requests;
                    m.refusals += refusals;
                }
                None => merged.push(Merged {
                    digest,
                    key: limit.top.find(|k| k.digest() == digest),
                    requests,
                    refusals,
                    error: 0,
                }),
            }
        }
    }
    merged.sort_by_key(|m| {
        std::cmp::Reverse(match by {
            By::Refusals => m.refusals,
            By::Requests => m.requests,
        })
    });
    merged.truncate(n);
    let keys: Vec<Value> = merged.iter().map(|m| m.shown(rt)).collect();
    reply(
        StatusCode::OK,
        json!({
            "rule": rule.name,
            "limit": limit.name,
            "by": match by { By::Refusals => "refusals", By::Requests => "requests" },
            "window_seconds": seconds(WINDOW),
            "gateways": 1 + others.len(),
            "requests": totals.requests,
            "refusals": totals.refusals,
            // Space-saving: a count is over by at most its shard's total
            // over the shard's capacity; about this over all shards.
            "error_bound": totals.requests.div_ceil((PER_SHARD * SHARDS) as u64),
            "keys": keys,
        }),
    )
}

/// A key's counts over every gateway that published them.
struct Merged {
    digest: KeyDigest,
    key: Option<ClientKey<'static>>,
    requests: u64,
    refusals: u64,
    error: u64,
}

impl Merged {
    fn shown(&self, rt: &Snapshot) -> Value {
        let mut entry = json!({
            "digest": self.digest.to_string(),
            "requests": self.requests,
            "refusals": self.refusals,
            "error": self.error,
        });
        show_key(rt, &mut entry, self.key.as_ref());
        entry
    }
}

/// How many keys of each ranking a gateway publishes for the others.
const PUBLISHED: usize = 100;

/// Publishes this gateway's top keys of every limit to Redis, where the
/// other gateways' `top` endpoints merge them (run every second by the
/// server's sweeper; nothing to do for the memory store).
pub(crate) async fn share_top_keys(shared: &Shared) {
    if !shared.limits.shared() {
        return;
    }
    let rt = shared.snapshot.load();
    let now = shared.limits.now();
    for limit in rt.rules.iter().flat_map(|r| r.all_limits()) {
        let mut entries: Vec<(KeyDigest, u64, u64)> = Vec::new();
        for by in [By::Refusals, By::Requests] {
            for r in limit.top.top(by, PUBLISHED, now) {
                let digest = r.key.digest();
                if !entries.iter().any(|(d, _, _)| *d == digest) {
                    entries.push((digest, r.requests, r.refusals));
                }
            }
        }
        if let Err(e) = shared.limits.share_top(limit.id, &entries).await {
            tracing::debug!("publishing top keys failed: {e}");
            return;
        }
    }
}

/// The key the admin named: by digest (known from the top keys or the bans
/// this gateway holds, or only as a digest for Redis), or as counted.
fn resolve(
    shared: &Shared,
    limit: &RuleLimit,
    named: &str,
) -> Option<(KeyDigest, Option<ClientKey<'static>>)> {
    if let Some(digest) = KeyDigest::parse(named) {
        let key = limit.top.find(|k| k.digest() == digest).or_else(|| {
            shared
                .limits
                .memory
                .active_bans(limit.id)
                .into_iter()
                .map(|b| b.key)
                .find(|k| k.digest() == digest)
        });
        return Some((digest, key));
    }
    let key = limit.top.find(|k| k.to_string() == named).or_else(|| {
        let ipv6_prefix = shared.snapshot.load().server.ipv6_prefix;
        ClientKey::from_shown(&limit.key, named, ipv6_prefix)
    })?;
    Some((key.digest(), Some(key)))
}

fn key_ref<'a>(digest: KeyDigest, key: &'a Option<ClientKey<'static>>) -> KeyRef<'a> {
    KeyRef {
        digest,
        key: key.as_ref(),
    }
}

fn limit_ref(limit: &RuleLimit) -> LimitRef<'_> {
    LimitRef {
        id: limit.id,
        limiter: &limit.limiter,
        ban: limit.ban,
    }
}

async fn key_state(
    shared: &Shared,
    rt: &Snapshot,
    rule: &Rule,
    limit: &RuleLimit,
    named: &str,
) -> Reply {
    let Some((digest, key)) = resolve(shared, limit, named) else {
        return unknown_key(named);
    };
    let asked = shared
        .limits
        .key_state(limit_ref(limit), key_ref(digest, &key));
    let state = match found(asked.await, named) {
        Ok(state) => state,
        Err(reply) => return *reply,
    };
    let mut body = json!({
        "rule": rule.name,
        "limit": limit.name,
        "digest": digest.to_string(),
        "quota": state.decision.limit,
        "remaining": state.decision.remaining,
        "reset_after_seconds": seconds(state.decision.reset_after),
        "banned": state.banned_for.is_some(),
        "ban_remaining_seconds": state.banned_for.map(seconds),
        "banned_until": state.banned_for.map(until),
        "offences": state.offences,
    });
    show_key(rt, &mut body, key.as_ref());
    reply(StatusCode::OK, body)
}

async fn forget(
    shared: &Shared,
    rt: &Snapshot,
    rule: &Rule,
    limit: &RuleLimit,
    named: &str,
) -> Reply {
    let Some((digest, key)) = resolve(shared, limit, named) else {
        return unknown_key(named);
    };
    let asked = shared
        .limits
        .forget_key(limit_ref(limit), key_ref(digest, &key));
    let lifted = match found(asked.await, named) {
        Ok(lifted) => lifted,
        Err(reply) => return *reply,
    };
    tracing::info!(rule = %rule.name, limit = %limit.name, %digest, lifted, "admin reset a key");
    let mut body = json!({
        "rule": rule.name,
        "limit": limit.name,
        "digest": digest.to_string(),
        "reset": true,
        "ban_lifted": lifted,
    });
    show_key(rt, &mut body, key.as_ref());
    reply(StatusCode::OK, body)
}

/// The bans running on every limit that has a penalty box.
async fn bans(shared: &Shared, rt: &Snapshot) -> Reply {
    let mut listed = Vec::new();
    for rule in &rt.rules {
        for limit in rule.all_limits().filter(|l| l.ban.is_some()) {
            let running = match shared.limits.bans(limit.id, MOST).await {
                Ok(running) => running,
                Err(e) => return store_unavailable(&e.to_string()),
            };
            listed.extend(running.iter().map(|b| ban(rt, rule, limit, b)));
        }
    }
    reply(StatusCode::OK, json!({ "bans": listed }))
}

fn ban(rt: &Snapshot, rule: &Rule, limit: &RuleLimit, b: &RunningBan) -> Value {
    let key = b
        .key
        .clone()
        .or_else(|| limit.top.find(|k| k.digest() == b.digest));
    let mut entry = json!({
        "rule": rule.name,
        "limit": limit.name,
        "digest": b.digest.to_string(),
        "remaining_seconds": seconds(b.left),
        "banned_until": until(b.left),
        "offences": b.offences,
        "mode": if limit.bans() { "enforce" } else { "shadow" },
    });
    show_key(rt, &mut entry, key.as_ref());
    entry
}

/// Adds the key as counted to an answer about it, where the config says to
/// show keys (`null` when this gateway does not know it).
fn show_key(rt: &Snapshot, answer: &mut Value, key: Option<&ClientKey<'static>>) {
    if rt.server.admin_show_keys {
        answer["key"] = key.map(|k| k.to_string()).into();
    }
}

fn seconds(nanos: Nanos) -> f64 {
    (Duration::from_nanos(nanos).as_secs_f64() * 1000.0).round() / 1000.0
}

/// The wall-clock time `left` from now.
fn until(left: Nanos) -> String {
    rfc3339(SystemTime::now() + Duration::from_nanos(left))
}

/// Decodes `%XX` escapes; `None` for a bad escape or bytes that are not UTF-8.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The store's answer about a named key, or the reply saying why there is
/// none: a key it cannot find (404), or a store that did not answer (503).
/// Boxed because a reply is large and this is the rare path.
fn found<T>(answer: Result<Option<T>, StoreError>, named: &str) -> Result<T, Box<Reply>> {
    match answer {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(Box::new(unknown_key(named))),
        Err(e) => Err(Box::new(store_unavailable(&e.to_string()))),
    }
}

fn unknown_key(named: &str) -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        json!({
            "error": "unknown_key",
            "message": format!("{named:?} is neither a key this limit counts nor the digest of one it counted in the last minute"),
        }),
    )
}

fn store_unavailable(why: &str) -> Reply {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        json!({ "error": "store_unavailable", "message": why }),
    )
}

fn bad_request(message: &str) -> Reply {
    reply(
        StatusCode::BAD_REQUEST,
        json!({ "error": "bad_request", "message": message }),
    )
}

fn not_found() -> Reply {
    reply(
        StatusCode::NOT_FOUND,
        json!({
            "error": "not_found",
            "message": "limit endpoints: GET /-/limits, GET /-/limits/{rule}/{limit}/top, GET|DELETE /-/limits/{rule}/{limit}/keys/{key}, GET /-/bans",
        }),
    )
}

fn not_allowed(allow: &'static str) -> Reply {
    super::method_not_allowed(allow)
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_decode_and_bad_ones_are_refused() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
