//! What `tollgate check` prints: a summary of a valid config, and `--explain`,
//! which runs one hypothetical request through the proxy's own admission step
//! and says what would happen to it.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue, Method};

use crate::admission::{self, Admission, RequestHead, Unidentified};
use crate::consumer::Unknown;
use crate::identity::KeyError;
use crate::limit::store::redis::{redact_url, RedisTarget};
use crate::limit::{Limits, MemoryStore, MonotonicClock};
use crate::metrics::Outcome;
use crate::pipeline::{self, Incoming, Unrouted};
use crate::policy::{MissingPolicy, Mode, OnLimit};
use crate::route::Target;
use crate::snapshot::Snapshot;

fn redacted_list(urls: &[String]) -> String {
    urls.iter()
        .map(|u| redact_url(u))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A table of rules (in match order), their limits, and the upstreams.
pub fn summary(rt: &Snapshot) -> String {
    let mut out = String::new();
    let _ = match &rt.store.redis {
        None => writeln!(out, "store: memory (max_keys {})", rt.store.max_keys),
        Some(backend) => writeln!(
            out,
            "store: redis {} prefix {:?} timeout {:?} on_error {}",
            match &backend.redis.target {
                RedisTarget::Single(url) => redact_url(url),
                RedisTarget::Cluster(urls) => format!("cluster [{}]", redacted_list(urls)),
                RedisTarget::Sentinel { master, nodes } => {
                    format!("master {master:?} by sentinel [{}]", redacted_list(nodes))
                }
            },
            backend.redis.prefix,
            backend.redis.timeout,
            rt.store.on_error.label()
        ),
    };
    let _ = writeln!(out, "rules (first match wins):");
    for (i, rule) in rt.rules.iter().enumerate() {
        let methods = if rule.conditions.methods.is_empty() {
            "any".to_string()
        } else {
            rule.conditions
                .methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        };
        let host = rule
            .conditions
            .host
            .as_ref()
            .map_or(String::new(), |h| format!(" host {}", h.source));
        let _ = writeln!(
            out,
            "  {}. {:<20} {:<24} methods {}{} -> {}",
            i + 1,
            rule.name,
            rule.pattern.source,
            methods,
            host,
            rt.upstream_of(rule).name
        );
        if let Some(on_error) = rule.on_error {
            let _ = writeln!(out, "       on_error {}", on_error.label());
        }
        if rule.plan_limits.is_some() {
            let _ = writeln!(out, "       plan  the consumer's plan limits apply too");
        }
        for limit in &rule.limits {
            let _ = writeln!(
                out,
                "       limit {:<16} {} key {}{}{}",
                limit.name,
                limit.describe(),
                limit.key,
                if limit.key.always_present() {
                    String::new()
                } else {
                    format!(" missing {}", missing_name(limit.missing))
                },
                if limit.mode == Mode::Shadow {
                    " (shadow)"
                } else {
                    ""
                }
            );
            if let Some(ban) = &limit.ban {
                let _ = writeln!(
                    out,
                    "             ban after {} refusals within {:?}: {:?}, x{} per repeat, at most {:?}{}",
                    ban.after,
                    Duration::from_nanos(ban.within),
                    Duration::from_nanos(ban.duration),
                    ban.escalate,
                    Duration::from_nanos(ban.max),
                    if limit.bans() { "" } else { " (shadow)" },
                );
            }
        }
        let ws = &rule.websocket;
        if let Some(m) = &ws.messages {
            let key = if m.per_connection {
                "connection".to_string()
            } else {
                m.limit.key.to_string()
            };
            let _ = writeln!(
                out,
                "       websocket messages {} key {key} on_limit {}",
                m.limit.describe(),
                match ws.on_limit {
                    OnLimit::Drop => "drop",
                    OnLimit::Close => "close",
                }
            );
        }
        if let Some(max) = ws.max_message_bytes {
            let _ = writeln!(out, "       websocket max_message_bytes {max}");
        }
        if let Some(lifetime) = ws.max_lifetime {
            let _ = writeln!(out, "       websocket max_lifetime {lifetime:?}");
        }
        for exemption in &rule.exemptions {
            let _ = writeln!(out, "       exempt {exemption}");
        }
    }
    let _ = writeln!(out, "upstreams:");
    for u in &rt.upstreams {
        let servers: Vec<String> = u
            .servers
            .iter()
            .zip(&u.weights)
            .map(|(s, w)| match w {
                1 => s.to_string(),
                w => format!("{s} (weight {w})"),
            })
            .collect();
        let _ = writeln!(
            out,
            "  {:<20} {}{}",
            u.name,
            servers.join(", "),
            if u.tls {
                format!(" (tls, sni {})", u.sni)
            } else {
                String::new()
            }
        );
        if let Some(active) = &u.active {
            let s = &active.settings;
            let probe = match &s.path {
                Some(path) => format!("GET {path}"),
                None => "TCP connect".to_string(),
            };
            let _ = writeln!(
                out,
                "       health {probe} every {:?} (timeout {:?}), up after {}, down after {}",
                s.interval, s.timeout, s.healthy, s.unhealthy
            );
        }
        if let Some(p) = &u.passive {
            let _ = writeln!(
                out,
                "       passive: {} failed connects eject for {:?}",
                p.failures, p.eject_for
            );
        }
    }
    for t in &rt.server.tls {
        let _ = writeln!(
            out,
            "tls {}: {} certificate(s), from TLS {}, alpn {}",
            t.listen,
            t.certs.len(),
            match t.min_version {
                crate::policy::TlsVersion::Tls12 => "1.2",
                crate::policy::TlsVersion::Tls13 => "1.3",
            },
            t.alpn
                .iter()
                .map(|a| match a {
                    crate::policy::Alpn::H2 => "h2",
                    crate::policy::Alpn::Http11 => "http/1.1",
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let format = match rt.access_log.format {
        crate::policy::AccessLogFormat::Off => None,
        crate::policy::AccessLogFormat::Json => Some("json"),
        crate::policy::AccessLogFormat::Text => Some("text"),
    };
    if let Some(format) = format {
        let target = match &rt.access_log.target {
            crate::access_log::LogTarget::Stdout => "stdout".to_string(),
            crate::access_log::LogTarget::File(path) => path.display().to_string(),
        };
        let _ = writeln!(out, "access log: {format} to {target}");
    }
    out
}

fn missing_name(policy: MissingPolicy) -> &'static str {
    match policy {
        MissingPolicy::Deny => "deny",
        MissingPolicy::Skip => "skip",
        MissingPolicy::Ip => "ip",
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("--explain takes \"METHOD /path[?query]\", e.g. 'POST /events'")]
    RequestSyntax,
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("--header takes \"name: value\", got {0:?}")]
    Header(String),
}

/// A hypothetical request for `--explain`.
#[derive(Debug, Clone)]
pub struct Hypothetical {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Option<String>,
    pub(crate) headers: HeaderMap,
    /// The connecting peer.
    pub(crate) ip: IpAddr,
}

/// `--api-key KEY` as a header line, in the first place `server.api_key`
/// looks: its first header, else `Authorization: Bearer`.
pub fn api_key_header(rt: &Snapshot, key: &str) -> String {
    match rt.server.api_key.headers.first() {
        Some(name) => format!("{name}: {key}"),
        None => format!("authorization: Bearer {key}"),
    }
}

impl Hypothetical {
    pub fn parse(request: &str, headers: &[String], ip: IpAddr) -> Result<Self, ExplainError> {
        let (method, target) = request
            .trim()
            .split_once(char::is_whitespace)
            .ok_or(ExplainError::RequestSyntax)?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| ExplainError::Method(method.into()))?;
        let target = target.trim();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (target.to_string(), None),
        };
        let mut map = HeaderMap::new();
        for h in headers {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| ExplainError::Header(h.clone()))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ExplainError::Header(h.clone()))?;
            let value =
                HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
            map.append(name, value);
        }
        Ok(Hypothetical {
            method,
            path,
            query,
            headers: map,
            ip,
        })
    }
}

/// Says which rule a request matches, the path forwarded upstream, the client
/// IP, whether an exemption fires and the key each limit would count against;
/// then what the gateway would do with it as the first request it sees. The
/// result comes from `admission::admit`, the function the proxy calls, run
/// against a scratch in-memory store.
pub async fn explain(rt: &Snapshot, req: &Hypothetical) -> String {
    let mut raw_target = req.path.clone().into_bytes();
    if let Some(query) = &req.query {
        raw_target.push(b'?');
        raw_target.extend_from_slice(query.as_bytes());
    }
    let head = RequestHead {
        method: &req.method,
        raw_target: &raw_target,
        headers: &req.headers,
        uri_authority: None,
        peer: req.ip,
        recorded: None,
        host_required: false,
    };
    let scratch = Limits::memory(
        MemoryStore::new(SCRATCH_KEYS, None),
        MonotonicClock::default(),
    );
    let admission = admission::admit(rt, &head, &scratch).await;
    let mut out = format!("request      {} {}\n", req.method, req.path);
    // A request refused for its shape (a lower-case method, a head over
    // `max_header_bytes`) never reaches a rule: naming one would mislead.
    let refused_before_routing = matches!(
        &admission,
        Admission::Reply(r) if r.rule.is_none() && r.outcome != Outcome::NoRoute
    );
    if !refused_before_routing {
        describe(rt, req, &head, &mut out);
    }
    let _ = writeln!(out, "result       {}", result_of(rt, &admission));
    out
}

/// Keys the scratch store of `--explain` holds: one request's worth.
const SCRATCH_KEYS: usize = 64;

/// The request's way through routing and identification, for people.
fn describe(rt: &Snapshot, req: &Hypothetical, head: &RequestHead<'_>, out: &mut String) {
    let Ok(target) = Target::parse(head.raw_target) else {
        return;
    };
    let incoming = Incoming {
        method: &req.method,
        target,
        // As admission reads it: `Host`, else an absolute-form target's.
        host: admission::host_of(head, &target),
        headers: &req.headers,
        peer: req.ip,
    };
    let routed = match pipeline::route(rt, &incoming) {
        Ok(r) => r,
        Err(Unrouted::NoRoute) => {
            if let Ok(path) = crate::route::normalize_path(target.path) {
                let _ = writeln!(out, "normalized   {path}");
            }
            return;
        }
        Err(_) => return,
    };
    let rule = rt.rule(routed.rule);
    let upstream = rt.upstream_of(rule);
    let _ = writeln!(out, "normalized   {} (forwarded upstream)", routed.path);
    if let Some(host) = &routed.host {
        let forwarded = match &upstream.host_header {
            Some(h) => format!(
                "the upstream gets Host {}",
                String::from_utf8_lossy(h.as_bytes())
            ),
            None => "forwarded upstream".into(),
        };
        let _ = writeln!(out, "host         {host} (matched; {forwarded})");
    }
    let _ = writeln!(
        out,
        "rule         {} (rule {} of {}, path {})",
        rule.name,
        routed.rule + 1,
        rt.rules.len(),
        rule.pattern.source
    );
    let _ = writeln!(out, "upstream     {}", upstream.name);
    let client_ip = pipeline::client_ip(rt, &incoming);
    let _ = writeln!(
        out,
        "client ip    {client_ip}{}",
        if client_ip == req.ip.to_canonical() {
            ""
        } else {
            " (from X-Forwarded-For via a trusted proxy)"
        }
    );
    let facts = pipeline::facts(rt, &incoming, client_ip);
    let who = rt
        .consumers
        .as_ref()
        .filter(|_| rule.needs_consumer)
        .map(|consumers| admission::identify(consumers, &rt.plans, &facts));
    if let Some(who) = &who {
        let line = match who {
            Ok(who) => {
                let plan_name = &rt.plans[who.plan()].name;
                match who.id() {
                    Some(id) => format!("{id} (plan {plan_name})"),
                    None => format!("anonymous: no API key (plan {plan_name})"),
                }
            }
            Err(Unidentified::Nobody(Unknown::MissingKey)) => {
                "none: no API key, and no plan for that".into()
            }
            Err(Unidentified::Nobody(Unknown::UnknownKey)) => {
                "none: the API key is not known".into()
            }
            Err(Unidentified::ConflictingKeys) => "none: two different API keys".into(),
            Err(Unidentified::BadToken(e)) => {
                format!("none: the token is refused ({})", e.reason())
            }
        };
        let _ = writeln!(out, "consumer     {line}");
    }
    let who = who.as_ref().and_then(|w| w.as_ref().ok());
    let plan = who.map(|w| w.plan());
    let facts = admission::with_consumer(facts, who);
    if let Some(exemption) = rule.exemptions.iter().find(|e| e.applies(&facts)) {
        let _ = writeln!(out, "exemption    {exemption}: no limits apply");
        return;
    }
    let _ = writeln!(out, "exemption    none fires");
    if let Some(p) = plan.filter(|_| rule.exempt_by_plan(plan, &rt.plans)) {
        let _ = writeln!(
            out,
            "plan         {} is exempt: no limits apply",
            rt.plans[p].name
        );
        return;
    }
    let limits = rule.limits_for(plan);
    if limits.is_empty() {
        let _ = writeln!(out, "limits       none");
    }
    for limit in limits {
        let what = match (pipeline::limit_key(limit, &facts), limit.missing) {
            (Ok(Some(key)), MissingPolicy::Ip) if limit.key.extract(&facts).is_err() => {
                format!("key {} missing -> counted by ip = {key}", limit.key)
            }
            (Ok(Some(key)), _) => format!("key {} = {key}", limit.key),
            (Ok(None), _) => format!("key {} missing -> limit skipped", limit.key),
            (Err(KeyError::Conflicting(part)), _) => {
                format!(
                    "key {} ambiguous: {part} twice, with different values",
                    limit.key
                )
            }
            (Err(KeyError::Missing(part)), _) => {
                format!("key {} missing: the request has no {part}", limit.key)
            }
        };
        let _ = writeln!(
            out,
            "limit        {} {}{}: {what}",
            limit.name,
            limit.describe(),
            if limit.mode == Mode::Shadow {
                " (shadow)"
            } else {
                ""
            }
        );
    }
}

/// What the gateway does with the request, from its admission.
fn result_of(rt: &Snapshot, admission: &Admission) -> String {
    match admission {
        Admission::Reply(refusal) => {
            let status = refusal.reply.header.status;
            let body: serde_json::Value =
                serde_json::from_slice(&refusal.reply.body).unwrap_or_default();
            let error = body["error"].as_str().unwrap_or_default();
            match body["message"].as_str().or(body["reason"].as_str()) {
                Some(message) => format!("{} {error}: {message}", status.as_u16()),
                None => format!("{} {error}", status.as_u16()),
            }
        }
        Admission::Forward(admitted) => {
            let why = match admitted.outcome {
                Outcome::Exempt => "exempt",
                Outcome::ShadowLimited => "a shadow limit would have refused it",
                Outcome::StoreError => "the store failed and on_error lets it through",
                _ => "the limits above have room",
            };
            let headline = admitted.headline.map_or(String::new(), |(i, d)| {
                let limit = &rt.rule(admitted.rule).limits_for(admitted.plan)[i];
                format!("; {} has {} left", limit.name, d.remaining)
            });
            format!("proxied ({why}{headline})")
        }
    }
}
