//! What `tollgate check` prints: a summary of a valid config, and `--explain`,
//! which walks one hypothetical request through the same pipeline functions
//! the proxy uses and says what would happen to it.

use std::fmt::Write as _;
use std::net::IpAddr;

use http::header::{HeaderName, HOST};
use http::{HeaderMap, HeaderValue, Method};

use crate::identity::KeyError;
use crate::limit::redis::{redact_url, RedisTarget};
use crate::pipeline::{self, Incoming, Unrouted};
use crate::route::Target;
use crate::runtime::{MissingPolicy, Mode, OnLimit, Runtime};

/// A table of rules (in match order), their limits, and the upstreams.
pub fn summary(rt: &Runtime) -> String {
    let mut out = String::new();
    let _ = match &rt.store.redis {
        None => writeln!(out, "store: memory (max_keys {})", rt.store.max_keys),
        Some(backend) => writeln!(
            out,
            "store: redis {} prefix {:?} timeout {:?} on_error {}",
            match &backend.redis.target {
                RedisTarget::Single(url) => redact_url(url),
                RedisTarget::Cluster(urls) => format!(
                    "cluster [{}]",
                    urls.iter()
                        .map(|u| redact_url(u))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
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
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
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
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The connecting peer.
    pub ip: IpAddr,
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
/// IP, whether an exemption fires, and the key each limit would count against.
pub fn explain(rt: &Runtime, req: &Hypothetical) -> String {
    let mut out = String::new();
    let target = Target {
        authority: None,
        path: req.path.as_bytes(),
        query: req.query.as_deref().map(str::as_bytes),
    };
    let incoming = Incoming {
        method: &req.method,
        target,
        host: req.headers.get(HOST).map(|h| h.as_bytes()),
        headers: &req.headers,
        peer: req.ip,
    };
    let _ = writeln!(out, "request      {} {}", req.method, req.path);
    let routed = match pipeline::route(rt, &incoming) {
        Ok(r) => r,
        Err(Unrouted::BadPath(e)) => {
            let _ = writeln!(out, "result       400 Bad Request: {e}");
            return out;
        }
        Err(Unrouted::BadHost(e)) => {
            let _ = writeln!(out, "result       400 Bad Request: {e}");
            return out;
        }
        Err(Unrouted::NoRoute) => {
            let _ = writeln!(
                out,
                "normalized   {}",
                crate::route::normalize_path(req.path.as_bytes()).unwrap_or_default()
            );
            let _ = writeln!(out, "result       404: no rule matches");
            return out;
        }
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
    if let Some(exemption) = rule.exemptions.iter().find(|e| e.applies(&facts)) {
        let _ = writeln!(out, "exemption    {exemption}: no limits apply");
        let _ = writeln!(out, "result       proxied, exempt");
        return out;
    }
    let _ = writeln!(out, "exemption    none fires");
    if rule.limits.is_empty() {
        let _ = writeln!(out, "limits       none");
    }
    let mut denied = None;
    for limit in &rule.limits {
        let what = match (limit.key.extract(&facts), limit.missing) {
            (Ok(key), _) => format!("key {} = {key}", limit.key),
            (Err(KeyError::Conflicting(part)), _) => {
                denied.get_or_insert_with(|| {
                    format!("400: the request carries {part} twice, with different values")
                });
                format!("key {} ambiguous -> refused (400)", limit.key)
            }
            (Err(KeyError::Missing(part)), MissingPolicy::Deny) => {
                denied.get_or_insert_with(|| format!("401: the request has no {part}"));
                format!("key {} missing -> deny (401)", limit.key)
            }
            (Err(_), MissingPolicy::Skip) => format!("key {} missing -> limit skipped", limit.key),
            (Err(_), MissingPolicy::Ip) => {
                format!(
                    "key {} missing -> counted by ip = {}",
                    limit.key,
                    crate::identity::ip_bucket(client_ip, rt.server.ipv6_prefix)
                )
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
    let _ = writeln!(
        out,
        "result       {}",
        denied.unwrap_or_else(|| "proxied if the limits above have room".into())
    );
    out
}
