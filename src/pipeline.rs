//! The request pipeline (ARCHITECTURE.md, "A request's path") as plain functions over plain data:
//! normalize → route → identify → plan the limit checks → judge the decisions.
//! The Pingora glue in `proxy` calls these in order; tests call them directly.

use std::borrow::Cow;
use std::net::IpAddr;

use arrayvec::ArrayVec;
use http::header::HOST;
use http::{HeaderMap, Method};

use crate::identity::{self, ClientKey, KeyError, RequestFacts, X_FORWARDED_FOR};
use crate::limit::{BanMark, Check, Decision, MAX_CHECKS};
use crate::metrics::Outcome;
use crate::policy::{MissingPolicy, Mode};
use crate::route::{normalize_host, normalize_path, HostError, NormalHost, PathError, Target};
use crate::snapshot::{Rule, RuleLimit, Snapshot};

/// The parts of an incoming request the pipeline looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Incoming<'a> {
    pub(crate) method: &'a Method,
    /// The request target as received.
    pub(crate) target: Target<'a>,
    /// `Host` header, else the target's or the URI's authority, as received.
    pub(crate) host: Option<&'a [u8]>,
    pub(crate) headers: &'a HeaderMap,
    /// The TCP peer.
    pub(crate) peer: IpAddr,
}

/// A request that matched a rule.
#[derive(Debug, Clone)]
pub(crate) struct Routed<'a> {
    pub(crate) rule: usize,
    /// The normalized path: matched, and forwarded upstream.
    pub(crate) path: Cow<'a, str>,
    /// The normalized host: matched, and forwarded upstream.
    pub(crate) host: Option<NormalHost<'a>>,
}

/// Why a request never reached a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrouted {
    BadPath(PathError),
    BadHost(HostError),
    NoRoute,
}

/// Steps 2–3: normalize the path and the host and find the first matching
/// rule. A repeated `Host` is refused: the upstream may read another line
/// than the one matched (Pingora's parser refuses it before the proxy runs;
/// this keeps `check --explain` saying so too).
pub fn route<'a>(rt: &Snapshot, req: &Incoming<'a>) -> Result<Routed<'a>, Unrouted> {
    let path = normalize_path(req.target.path).map_err(Unrouted::BadPath)?;
    if req.headers.get_all(HOST).iter().nth(1).is_some() {
        return Err(Unrouted::BadHost(HostError::Repeated));
    }
    let host = req
        .host
        .map(normalize_host)
        .transpose()
        .map_err(Unrouted::BadHost)?;
    let rule = rt
        .routes
        .find(&path, req.method, host.as_ref().map(|h| h.name.as_ref()))
        .ok_or(Unrouted::NoRoute)?;
    Ok(Routed { rule, path, host })
}

/// The client IP (ARCHITECTURE.md, promise 5).
pub(crate) fn client_ip(rt: &Snapshot, req: &Incoming<'_>) -> IpAddr {
    let forwarded = req
        .headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .map(|v| v.as_bytes());
    identity::client_ip(req.peer, forwarded, &rt.server.trusted_proxies)
}

/// Step 4: the facts keys and exemptions are computed from.
pub(crate) fn facts<'a>(
    rt: &'a Snapshot,
    req: &Incoming<'a>,
    client_ip: IpAddr,
) -> RequestFacts<'a> {
    let query = req.target.query.and_then(|q| std::str::from_utf8(q).ok());
    facts_of(rt, req.headers, query, client_ip)
}

/// The facts of a request known by its headers and query.
pub(crate) fn facts_of<'a>(
    rt: &'a Snapshot,
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    client_ip: IpAddr,
) -> RequestFacts<'a> {
    RequestFacts {
        headers,
        query,
        client_ip,
        ipv6_prefix: rt.server.ipv6_prefix,
        api_key: &rt.server.api_key,
        consumer: None,
        token: None,
        recorded: None,
    }
}

/// What must be decided for a routed request.
#[derive(Debug)]
// `Decide` carries its checks inline: the plan lives on the stack for one
// request, and boxing it would allocate per request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Plan<'a> {
    /// An exemption fired: no limits apply.
    Exempt,
    /// An enforced limit could not take its key from the request: it is
    /// missing (with `missing: deny`) or ambiguous.
    Refuse { limit: usize, error: KeyError },
    /// An enforced limit's cost header held no valid cost.
    BadCost { limit: usize },
    /// These checks; `limits[i]` is the index in the rule of `checks[i]`'s limit.
    Decide {
        limits: ArrayVec<usize, MAX_CHECKS>,
        checks: ArrayVec<Check<'a>, MAX_CHECKS>,
        /// A shadow limit would have refused the request for its key.
        shadow_refusal: bool,
    },
}

/// A limit's key in this request, under its `missing:` policy: `Ok(None)`
/// when the policy skips the limit, `Err` when the request cannot be counted.
pub(crate) fn limit_key<'a>(
    limit: &RuleLimit,
    facts: &RequestFacts<'a>,
) -> Result<Option<ClientKey<'a>>, KeyError> {
    match (limit.key.extract(facts), limit.missing) {
        (Ok(key), _) => Ok(Some(key)),
        (Err(KeyError::Missing(_)), MissingPolicy::Skip) => Ok(None),
        (Err(KeyError::Missing(_)), MissingPolicy::Ip) => Ok(Some(ClientKey::ip(facts))),
        (Err(error), _) => Err(error),
    }
}

/// Step 4: exemptions first, then one check per limit of `limits` (the
/// rule's, and its plan's for a consumer) whose key is present (or
/// whose `missing:` policy says what to count instead). A shadow limit never
/// refuses: where it would have, the request is only marked.
pub(crate) fn plan<'a>(rule: &Rule, limits: &[RuleLimit], facts: &RequestFacts<'a>) -> Plan<'a> {
    if rule.exemptions.iter().any(|e| e.applies(facts)) {
        return Plan::Exempt;
    }
    // No heap per request: a rule has at most MAX_CHECKS limits (the config
    // check refuses more).
    let mut indices = ArrayVec::new();
    let mut checks = ArrayVec::new();
    let mut shadow_refusal = false;
    for (i, limit) in limits.iter().enumerate().take(MAX_CHECKS) {
        let enforced = limit.mode == Mode::Enforce;
        let key = match limit_key(limit, facts) {
            Ok(Some(key)) => key,
            Ok(None) => continue,
            Err(error) if enforced => return Plan::Refuse { limit: i, error },
            Err(_) => {
                shadow_refusal = true;
                continue;
            }
        };
        let Some(cost) = limit.cost.of(facts.headers) else {
            if enforced {
                return Plan::BadCost { limit: i };
            }
            shadow_refusal = true;
            continue;
        };
        indices.push(i);
        checks.push(Check {
            limit: limit.id,
            limiter: limit.limiter,
            key,
            cost,
            enforced,
            sync: limit.sync,
            ban: limit.ban,
        });
    }
    Plan::Decide {
        limits: indices,
        checks,
        shadow_refusal,
    }
}

/// The judgement on a decided request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    pub(crate) outcome: Outcome,
    /// The limit (index in the rule) whose state the response headers report:
    /// the denying limit for a denial, the most constrained one otherwise.
    pub(crate) headline: Option<(usize, Decision)>,
}

impl Judgement {
    pub(crate) fn denied(&self) -> bool {
        self.outcome == Outcome::Limited
    }
}

/// Step 5: judge the store's decisions. A denial by any enforced limit denies
/// (reporting the one that frees up last); a denial by a shadow limit (or a
/// shadow refusal from `plan`) only marks the request; otherwise the enforced
/// limit with the least headroom is reported.
pub(crate) fn judge(
    limits: &[RuleLimit],
    decided: &[(usize, Decision)],
    shadow_refusal: bool,
) -> Judgement {
    let enforced = |(i, _): &&(usize, Decision)| limits[*i].mode == Mode::Enforce;
    let denial = decided
        .iter()
        .filter(enforced)
        .filter(|(_, d)| !d.allowed)
        .max_by_key(|(_, d)| d.retry_after);
    if let Some(&headline) = denial {
        return Judgement {
            outcome: Outcome::Limited,
            headline: Some(headline),
        };
    }
    // An admitted request a shadow ban would have refused counts as shadow
    // limited too.
    let shadow_denied = shadow_refusal
        || decided.iter().any(|(i, d)| {
            (limits[*i].mode == Mode::Shadow && !d.allowed)
                || (d.allowed && d.ban == BanMark::Banned)
        });
    // Concurrency limits have no quota over time to put in the headers.
    let headline = decided
        .iter()
        .filter(enforced)
        .filter(|(i, _)| limits[*i].policy_header.is_some())
        .min_by_key(|(_, d)| (d.remaining, std::cmp::Reverse(d.reset_after)))
        .copied();
    Judgement {
        outcome: if shadow_denied {
            Outcome::ShadowLimited
        } else {
            Outcome::Allowed
        },
        headline,
    }
}

/// How long an admitted request waits for a shaping leaky bucket: the longest
/// wait among its enforced limits.
pub(crate) fn shaping_delay(
    limits: &[RuleLimit],
    decided: &[(usize, Decision)],
) -> std::time::Duration {
    let wait = decided
        .iter()
        .filter(|(i, d)| d.allowed && limits[*i].mode == Mode::Enforce)
        .map(|(_, d)| d.delay)
        .max()
        .unwrap_or(0);
    std::time::Duration::from_nanos(wait)
}
