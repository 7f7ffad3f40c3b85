//! Input → runtime snapshot. Every check runs even after an earlier one failed,
//! so one `tollgate check` lists every problem in the file at once.

use std::collections::{HashMap, HashSet};
use std::fmt::Display;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderValue, Method};
use ipnet::IpNet;

mod edge;

use super::locate::SourceMap;
use super::part::NamedSection;
use super::{ConfigSource, Problem, Severity};
use jsonwebtoken::Algorithm;

use crate::consumer::jwt::{JwtSettings, JwtVerifier, Keys};
use crate::consumer::{self, Consumer, Consumers, Plan};
use crate::identity::{ApiKeySources, Exemption, KeyPart, KeySpec, TrustedProxies, MAX_KEY_PARTS};
use crate::limit::algorithm::sliding_log::MAX_LOG_LIMIT;
use crate::limit::algorithm::{self, Setting, Spec};
use crate::limit::breaker::BreakerSettings;
use crate::limit::store::redis::{exact_in_lua, redact_url, RedisSettings, RedisTarget};
use crate::limit::{
    BanPolicy, Concurrent, FixedWindow, Gcra, LeakyBucket, LimitDefinition, LimitId, Limiter,
    Nanos, SlidingCounter, SlidingLog, SyncMode, TokenBucket, MAX_CHECKS,
};
use crate::metrics::{LimitMetrics, RuleMetrics};
use crate::policy::units::{self, Rate, MAX_RATE_COUNT};
use crate::policy::{MissingPolicy, Mode};
use crate::route::{HostPattern, PathPattern, RouteConditions, RouteTable};
use crate::schema::input::{
    AlgorithmInput, BanInput, ConfigInput, ConsumerInput, ConsumersFileInput, ConsumersInput,
    CostInput, DenyInput, ExemptInput, JwtAlgorithmInput, JwtInput, JwtKeysInput, KeyInput,
    KeyPartInput, LimitInput, PlanInput, PlanSelectInput, RedisStoreInput, RuleInput,
    SecretEnvInput, SentinelInput, ServerInput, StoreBackend, StoreInput, SyncInput, UpstreamInput,
    WebSocketInput,
};
use crate::snapshot::{
    CompiledPart, Cost, DenyResponse, MessageLimit, Recording, RedisBackend, Rule, RuleLimit,
    ServerSettings, Snapshot, StoreSettings, Upstream, WebSocketPolicy,
};
use crate::top::TopKeys;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_RELEASE_AFTER: Duration = Duration::from_secs(60);
/// Ample for any client on a slow link to send its headers; a client that
/// dribbles them to hold a connection open is cut off early.
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `client_body_timeout` and Pingora's own read timeout.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Envoy's 60 KiB, rounded up: room for large cookies and tokens, far below
/// the 1 MiB Pingora reads before it gives up on a head.
const DEFAULT_MAX_HEADER_BYTES: u64 = 64 * 1024;
/// Pingora refuses a longer head itself (400) before tollgate sees it.
const MAX_HEADER_BYTES: u64 = 1_048_575;
/// Pingora's own keep-alive time: long enough for a client's connection pool
/// to reuse a connection between requests, short enough that connections
/// opened and left idle cannot pile up. (Behind a load balancer, set it above
/// the balancer's idle timeout, so that the balancer closes first.)
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// What the README has always promised in-flight requests at SIGTERM.
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Weights beyond this would make the visiting order needlessly long.
const MAX_WEIGHT: u32 = 100;
/// As long as a header deadline: a handshake is a few round trips.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_KEYS: usize = 1_000_000;
/// Units a `sync: batched` limit reserves per Redis call.
const DEFAULT_BATCH: u64 = 10;
const MAX_NAME_LEN: usize = 64;

const KNOWN_METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
    Method::OPTIONS,
    Method::TRACE,
    Method::PATCH,
];

struct Compiler<'a> {
    source: &'a SourceMap,
    problems: Vec<Problem>,
    /// The JWT claims limits are keyed by (`key: { jwt_claim: NAME }`), in
    /// the order the verifier keeps them.
    jwt_claims: Vec<String>,
    /// Whether bearer JWTs are configured.
    jwt: bool,
}

impl<'a> Compiler<'a> {
    fn new(source: &'a SourceMap) -> Self {
        Compiler {
            source,
            problems: Vec::new(),
            jwt_claims: Vec::new(),
            jwt: false,
        }
    }
}

impl Compiler<'_> {
    fn report(&mut self, severity: Severity, path: String, message: impl Display) {
        let position = self.source.position_of(&path);
        self.problems.push(Problem {
            severity,
            file: None,
            path,
            line: position.line,
            column: position.column,
            message: super::shorten(message.to_string()),
        });
    }

    fn error(&mut self, path: impl Into<String>, message: impl Display) {
        self.report(Severity::Error, path.into(), message);
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Display) {
        self.report(Severity::Warning, path.into(), message);
    }

    /// Runs a fallible conversion, reporting its error at `path`.
    fn check<T, E: Display>(&mut self, path: impl Into<String>, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.error(path, e)).ok()
    }

    fn name(&mut self, path: String, name: &str, what: &str) {
        if name.is_empty() {
            self.error(path, format!("{what} name must not be empty"));
        } else if name.len() > MAX_NAME_LEN {
            // Not quoted: a name of megabytes would come back in every message.
            self.error(
                path,
                format!(
                    "{what} name is {} bytes long: at most {MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . :",
                    name.len()
                ),
            );
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            self.error(
                path,
                format!("{what} name {name:?} must be at most {MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . :"),
            );
        }
    }
}

/// Where a part beside the gateway reports the problems of its section
/// (see `config::part`), located and listed with the core's own.
pub(crate) struct Report<'c, 'a>(&'c mut Compiler<'a>);

impl Report<'_, '_> {
    /// An error at `path`, the YAML path of a key in the part's section.
    pub(crate) fn error(&mut self, path: impl Into<String>, message: impl Display) {
        self.0.error(path, message);
    }

    /// Runs a fallible conversion, reporting its error at `path`.
    pub fn check<T, E: Display>(
        &mut self,
        path: impl Into<String>,
        result: Result<T, E>,
    ) -> Option<T> {
        self.0.check(path, result)
    }
}

/// Compiles a parsed config, with the sections parts beside the gateway
/// parsed from it. On success the runtime carries the warnings; on failure
/// every problem (errors and warnings) is returned.
pub(crate) fn compile(
    origin: ConfigSource,
    source: &SourceMap,
    sections: &[NamedSection],
) -> Result<Snapshot, Vec<Problem>> {
    let input = &origin.input;
    let mut c = Compiler::new(source);
    c.jwt_claims = jwt_claims_used(input);
    c.jwt = input
        .consumers
        .as_ref()
        .is_some_and(|given| given.jwt.is_some());
    let server = compile_server(&mut c, &input.server);
    let store = compile_store(&mut c, &input.store);
    let mut upstream_index = HashMap::new();
    let mut upstreams = Vec::new();
    // `None`: defined, but it did not compile (its problems are reported;
    // a rule naming it adds none).
    for (name, upstream) in &input.upstreams {
        let compiled = compile_upstream(&mut c, name, upstream).map(|u| {
            upstreams.push(u);
            upstreams.len() - 1
        });
        upstream_index.insert(name.as_str(), compiled);
    }
    if input.rules.is_empty() {
        c.error(
            "rules",
            "no rules are defined: a gateway needs at least one rule (a catch-all is `match: { path: \"/**\" }`)",
        );
    }
    let plans = compile_plans(&mut c, &input.plans);
    let mut other_files = Vec::new();
    let consumers = input.consumers.as_ref().map(|given| {
        compile_consumers(&mut c, given, &origin.file, &plans.plans, &mut other_files)
    });
    let tls = edge::compile_tls(&mut c, &input.server, &origin.file, &mut other_files);
    let server = server.map(|server| ServerSettings { tls, ..server });
    let access_log = edge::compile_access_log(&mut c, &input.access_log, &origin.file);
    let rules = compile_rules(&mut c, input, &upstream_index, &plans, consumers.is_some());
    let limit_lists = rules
        .iter()
        .enumerate()
        .map(|(i, rule)| (format!("rules[{i}].limits"), &rule.limits[..]))
        .chain(plans.limit_lists());
    for (base, limits) in limit_lists {
        if store.redis.is_some() {
            check_redis_limits(&mut c, &base, limits);
        } else {
            check_memory_limits(&mut c, &base, limits);
        }
    }
    let parts = sections
        .iter()
        .map(|(name, section)| CompiledPart {
            name,
            shown: section.shown(),
            settings: section.compile(input, &mut Report(&mut c)),
        })
        .collect();
    let routes = RouteTable::new(
        rules
            .iter()
            .map(|r| (r.pattern.clone(), r.conditions.clone()))
            .collect(),
    );
    // Each glob compiles on its own (its rule's errors name it); together
    // they can still pass the matcher's size bound.
    let routes = c.check(
        "rules",
        routes.map_err(|e| {
            format!(
                "the path patterns of the {} rules are too large to match together ({e}): \
                 use fewer rules, or fewer alternatives ({{a,b}}) and character classes per pattern",
                rules.len()
            )
        }),
    );
    if let Some(routes) = routes.as_ref().filter(|_| rules.len() == input.rules.len()) {
        warn_shadowed(&mut c, &rules, routes);
    }

    let has_errors = c.problems.iter().any(|p| p.severity == Severity::Error);
    let mut origin = origin;
    if let Some(given) = origin.input.consumers.as_mut() {
        digest_listed_keys(&mut given.list);
    }
    if !other_files.is_empty() {
        // The version of the config covers the files it names (consumers,
        // JWKS): an edit of any is a new one.
        let digests: Vec<&str> = other_files.iter().map(|(_, d)| d.as_str()).collect();
        let all = format!("{}+{}", origin.sha256, digests.join("+"));
        origin.sha256 = super::sha256_hex(all.as_bytes());
        origin.other_files = other_files.into_iter().map(|(path, _)| path).collect();
    }
    match (server, routes) {
        (Some(server), Some(routes)) if !has_errors => Ok(Snapshot {
            recording: Recording::of(&rules, consumers.as_ref().and_then(Option::as_ref)),
            server,
            store,
            parts,
            routes,
            rules,
            plans: plans.plans,
            consumers: consumers.flatten(),
            upstreams,
            access_log,
            warnings: c.problems,
            source: origin,
        }),
        _ => Err(c.problems),
    }
}

fn compile_server(c: &mut Compiler<'_>, s: &ServerInput) -> Option<ServerSettings> {
    if s.listen.is_empty() && s.tls.is_empty() {
        c.error(
            "server.listen",
            "at least one listen address is needed (in server.listen or server.tls)",
        );
    }
    edge::check_listeners_apart(c, s);
    let threads = s
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if !(1..=1024).contains(&threads) {
        c.error("server.threads", "threads must be between 1 and 1024");
    }
    if s.admin_token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        c.error(
            "server.admin_token",
            "an empty token would let anyone in: remove the key to run the admin API without one",
        );
    }
    let mut trusted = Vec::new();
    for (i, net) in s.trusted_proxies.iter().enumerate() {
        if let Some(n) = c.check(format!("server.trusted_proxies[{i}]"), parse_network(net)) {
            if n.prefix_len() == 0 {
                c.warn(
                    format!("server.trusted_proxies[{i}]"),
                    "every peer is trusted: any client can choose its own IP with X-Forwarded-For",
                );
            }
            trusted.push(n);
        }
    }
    if !(1..=128).contains(&s.ipv6_prefix) {
        c.error(
            "server.ipv6_prefix",
            "ipv6_prefix must be between 1 and 128",
        );
    }
    let mut headers = Vec::new();
    for (i, h) in s.api_key.headers.iter().enumerate() {
        if let Some(name) = c.check(format!("server.api_key.headers[{i}]"), parse_header_name(h)) {
            headers.push(name);
        }
    }
    if s.api_key.query.as_deref() == Some("") {
        c.error(
            "server.api_key.query",
            "the query parameter name must not be empty",
        );
    }
    let one_ms = Duration::from_millis(1);
    let header_timeout = bounded_duration(
        c,
        "server.header_timeout",
        s.header_timeout.as_deref(),
        DEFAULT_HEADER_TIMEOUT,
        one_ms..=MAX_CONNECTION_TIMEOUT,
    );
    let body_timeout = bounded_duration(
        c,
        "server.body_timeout",
        s.body_timeout.as_deref(),
        DEFAULT_BODY_TIMEOUT,
        one_ms..=MAX_CONNECTION_TIMEOUT,
    );
    let idle_timeout = bounded_duration(
        c,
        "server.idle_timeout",
        s.idle_timeout.as_deref(),
        DEFAULT_IDLE_TIMEOUT,
        one_ms..=MAX_CONNECTION_TIMEOUT,
    );
    let grace_period = bounded_duration(
        c,
        "server.grace_period",
        s.grace_period.as_deref(),
        DEFAULT_GRACE_PERIOD,
        Duration::ZERO..=MAX_CONNECTION_TIMEOUT,
    );
    if grace_period.subsec_nanos() != 0 {
        c.error(
            "server.grace_period",
            "must be whole seconds (Pingora counts the grace period in seconds)",
        );
    }
    if s.max_connections_per_ip == Some(0) {
        c.error(
            "server.max_connections_per_ip",
            "must be at least 1 (omit it for no cap)",
        );
    }
    let max_header_bytes = s.max_header_bytes.unwrap_or(DEFAULT_MAX_HEADER_BYTES);
    if !(1024..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
        c.error(
            "server.max_header_bytes",
            format!(
                "must be between 1024 and {MAX_HEADER_BYTES} (Pingora refuses longer heads itself)"
            ),
        );
    }
    let handshake_timeout = bounded_duration(
        c,
        "server.handshake_timeout",
        s.handshake_timeout.as_deref(),
        DEFAULT_HANDSHAKE_TIMEOUT,
        one_ms..=MAX_CONNECTION_TIMEOUT,
    );
    Some(ServerSettings {
        listen: s.listen.clone(),
        admin: s.admin.clone(),
        admin_token: s.admin_token.clone(),
        admin_show_keys: s.admin_show_keys,
        watch: s.watch,
        threads,
        work_stealing: s.work_stealing.unwrap_or(threads > 1),
        http1_path: s.http1_path,
        trusted_proxies: TrustedProxies::new(trusted),
        ipv6_prefix: s.ipv6_prefix,
        api_key: ApiKeySources {
            headers,
            bearer: s.api_key.bearer,
            query_param: s.api_key.query.clone(),
        },
        header_timeout,
        body_timeout,
        idle_timeout,
        max_connections_per_ip: s.max_connections_per_ip,
        grace_period,
        max_header_bytes: max_header_bytes as usize,
        tls: Vec::new(),
        handshake_timeout,
        ready_needs_upstreams: s.readyz.require_healthy_upstreams,
    })
}

/// A duration setting within `range`, or `default` when absent; problems are
/// reported at `path`.
fn bounded_duration(
    c: &mut Compiler<'_>,
    path: &str,
    text: Option<&str>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Duration {
    let Some(text) = text else { return default };
    let Some(value) = c.check(path, units::parse_duration(text)) else {
        return default;
    };
    if !range.contains(&value) {
        c.error(
            path,
            format!("must be between {:?} and {:?}", range.start(), range.end()),
        );
    }
    value
}

/// Whether two listeners' IPs would take the same port.
pub(crate) fn overlaps(a: IpAddr, b: IpAddr) -> bool {
    a == b || a.is_unspecified() || b.is_unspecified()
}

pub(crate) fn parse_listen(addr: &str) -> Result<SocketAddr, String> {
    addr.parse().map_err(|_| {
        format!("{addr:?} is not an IP:port listen address (e.g. 0.0.0.0:8080 or [::]:8080)")
    })
}

fn parse_network(text: &str) -> Result<IpNet, String> {
    if let Ok(net) = text.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    text.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("{text:?} is not an IP address or CIDR (e.g. 10.0.0.0/8)"))
}

/// A cookie's or query parameter's name: a non-empty token.
fn parse_token(name: &str, what: &str) -> Result<String, String> {
    let token = |c: char| c.is_ascii_graphic() && !matches!(c, '=' | ';' | ',' | '"' | '&');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.chars().all(token) {
        return Err(format!(
            "{what} name {:?} must be 1 to {MAX_NAME_LEN} visible characters without = ; , \" &",
            name.chars().take(MAX_NAME_LEN).collect::<String>()
        ));
    }
    Ok(name.to_string())
}

fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{name:?} is not a valid header name"))
}

fn compile_upstream(c: &mut Compiler<'_>, name: &str, u: &UpstreamInput) -> Option<Upstream> {
    let base = format!("upstreams.{name}");
    c.name(base.clone(), name, "upstream");
    if u.servers.is_empty() {
        c.error(
            format!("{base}.servers"),
            "an upstream needs at least one server",
        );
    }
    let mut servers = Vec::new();
    let mut weights = Vec::new();
    for (i, server) in u.servers.iter().enumerate() {
        if !(1..=MAX_WEIGHT).contains(&server.weight()) {
            c.error(
                format!("{base}.servers[{i}].weight"),
                format!("a weight is from 1 to {MAX_WEIGHT}"),
            );
        }
        let resolved = resolve(server.address());
        if let Some(addrs) = c.check(format!("{base}.servers[{i}]"), resolved) {
            for addr in addrs {
                if !servers.contains(&addr) {
                    servers.push(addr);
                    weights.push(server.weight().clamp(1, MAX_WEIGHT));
                }
            }
        }
    }
    let active = u.health.as_ref().map(|h| edge::compile_health(c, &base, h));
    let passive = u
        .passive
        .as_ref()
        .map(|p| edge::compile_passive(c, &base, p));
    let timeout = |c: &mut Compiler<'_>, field: &str, value: &Option<String>, default: Duration| {
        match value {
            None => default,
            Some(text) => match units::parse_duration(text) {
                Ok(d) if !d.is_zero() => d,
                Ok(_) => {
                    c.error(
                        format!("{base}.{field}"),
                        "a timeout must be longer than zero",
                    );
                    default
                }
                Err(e) => {
                    c.error(format!("{base}.{field}"), e);
                    default
                }
            },
        }
    };
    let connect_timeout = timeout(
        c,
        "connect_timeout",
        &u.connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
    );
    let read_timeout = timeout(c, "read_timeout", &u.read_timeout, DEFAULT_READ_TIMEOUT);
    let write_timeout = timeout(c, "write_timeout", &u.write_timeout, DEFAULT_WRITE_TIMEOUT);
    let tunnel_idle_timeout = timeout(
        c,
        "tunnel_idle_timeout",
        &u.tunnel_idle_timeout,
        DEFAULT_TUNNEL_IDLE_TIMEOUT,
    );
    let host_header = match &u.host_header {
        None => None,
        Some(h) => c.check(
            format!("{base}.host_header"),
            HeaderValue::from_str(h).map_err(|_| format!("{h:?} is not a valid Host header")),
        ),
    };
    let sni = u
        .sni
        .clone()
        .or_else(|| {
            u.servers
                .first()
                .map(|s| host_part(s.address()).to_string())
        })
        .unwrap_or_default();
    if u.tls && sni.parse::<IpAddr>().is_ok() && u.verify_cert {
        c.warn(
            format!("{base}.sni"),
            "TLS to an IP address without `sni:` will fail certificate verification for most servers",
        );
    }
    (!servers.is_empty()).then(|| {
        Upstream {
            name: name.to_string(),
            servers,
            tls: u.tls,
            sni,
            verify_cert: u.verify_cert,
            host_header,
            connect_timeout,
            read_timeout,
            write_timeout,
            tunnel_idle_timeout,
            next: Default::default(),
            peers: Vec::new(),
            weights,
            schedule: Vec::new(),
            health: Vec::new(),
            active: None,
            passive,
        }
        .with_peers(active)
    })
}

/// `host:port` → addresses. Names are resolved when the config is loaded; a
/// reload resolves them again.
fn resolve(server: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(addr) = server.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !server.contains(':') {
        return Err(format!("{server:?} needs a port (host:port)"));
    }
    server
        .to_socket_addrs()
        .map(|addrs| addrs.collect::<Vec<_>>())
        .map_err(|e| format!("cannot resolve {server:?}: {e}"))
        .and_then(|addrs| {
            if addrs.is_empty() {
                Err(format!("{server:?} resolves to no address"))
            } else {
                Ok(addrs)
            }
        })
}

fn host_part(server: &str) -> &str {
    match server.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => server,
    }
}

fn compile_store(c: &mut Compiler<'_>, input: &StoreInput) -> StoreSettings {
    let store = StoreSettings {
        release_after: match &input.release_after {
            None => DEFAULT_RELEASE_AFTER,
            Some(text) => c
                .check("store.release_after", units::parse_duration(text))
                .unwrap_or(DEFAULT_RELEASE_AFTER),
        },
        max_keys: input.memory.max_keys.unwrap_or(DEFAULT_MAX_KEYS),
        redis: None,
        on_error: input.on_error.unwrap_or_default(),
    };
    if !(1..=1_000_000_000).contains(&store.max_keys) {
        c.error(
            "store.memory.max_keys",
            "max_keys must be between 1 and 1000000000",
        );
    }
    let redis = match (input.backend, &input.redis) {
        (StoreBackend::Memory, _) => return store,
        (StoreBackend::Redis, None) => {
            c.error(
                "store.backend",
                "backend: redis needs a store.redis section with a url (or urls for a cluster, or sentinel)",
            );
            return store;
        }
        (StoreBackend::Redis, Some(redis)) => redis,
    };
    let target = compile_redis_target(c, redis);
    let prefix = redis.prefix.clone().unwrap_or_else(|| "tollgate".into());
    if prefix.is_empty() || prefix.contains(['{', '}']) || prefix.len() > MAX_NAME_LEN {
        c.error(
            "store.redis.prefix",
            format!("the prefix must be 1 to {MAX_NAME_LEN} characters without braces (Redis Cluster reads braces as a hash tag)"),
        );
    }
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let timeout = bounded_duration(
        c,
        "store.redis.timeout",
        redis.timeout.as_deref(),
        ms(25),
        ms(1)..=secs(10),
    );
    let connect_timeout = bounded_duration(
        c,
        "store.redis.connect_timeout",
        redis.connect_timeout.as_deref(),
        secs(1),
        ms(1)..=secs(60),
    );
    let lease = bounded_duration(
        c,
        "store.redis.lease",
        redis.lease.as_deref(),
        secs(30),
        secs(1)..=secs(86_400),
    );
    let cooldown = bounded_duration(
        c,
        "store.redis.breaker.cooldown",
        redis.breaker.cooldown.as_deref(),
        ms(250),
        ms(1)..=secs(600),
    );
    let failures = redis.breaker.failures.unwrap_or(3);
    if failures == 0 {
        c.error("store.redis.breaker.failures", "must be at least 1");
    }
    StoreSettings {
        redis: target.map(|target| RedisBackend {
            redis: RedisSettings {
                target,
                prefix,
                timeout,
                connect_timeout,
                lease,
            },
            breaker: BreakerSettings { failures, cooldown },
        }),
        ..store
    }
}

/// One Redis, a cluster's nodes or the sentinels of a master: exactly one of
/// them, every URL one the client accepts.
fn compile_redis_target(c: &mut Compiler<'_>, redis: &RedisStoreInput) -> Option<RedisTarget> {
    let given: Vec<&str> = [
        ("url", redis.url.is_some()),
        ("urls", redis.urls.is_some()),
        ("sentinel", redis.sentinel.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    const TOPOLOGIES: &str =
        "url (one Redis), urls (Redis Cluster nodes) or sentinel (a master found through Redis Sentinel)";
    let target = match (&redis.url, &redis.urls, &redis.sentinel) {
        _ if given.len() > 1 => {
            c.error(
                "store.redis",
                format!(
                    "{} given: give one of {TOPOLOGIES}, {}",
                    given.join(" and "),
                    if given.len() == 2 {
                        "not both"
                    } else {
                        "not all three"
                    }
                ),
            );
            None
        }
        (Some(url), _, _) => Some(RedisTarget::Single(url.clone())),
        (_, Some(urls), _) if !urls.is_empty() => Some(RedisTarget::Cluster(urls.clone())),
        (_, Some(_), _) => {
            c.error("store.redis.urls", "a cluster needs at least one node URL");
            None
        }
        (_, _, Some(sentinel)) => compile_sentinel(c, sentinel),
        (None, None, None) => {
            c.error("store.redis", format!("give {TOPOLOGIES}"));
            None
        }
    };
    let single = redis.url.iter().map(|u| ("store.redis.url".to_string(), u));
    let nodes = redis.urls.iter().flatten().enumerate();
    let nodes = nodes.map(|(i, u)| (format!("store.redis.urls[{i}]"), u));
    let sentinels = redis
        .sentinel
        .iter()
        .flat_map(|s| s.nodes.iter())
        .enumerate();
    let sentinels = sentinels.map(|(i, u)| (format!("store.redis.sentinel.nodes[{i}]"), u));
    for (path, url) in single.chain(nodes).chain(sentinels) {
        if let Err(e) = redis::Client::open(url.as_str()) {
            c.error(
                path,
                format!("{:?} is not a Redis URL: {e}", redact_url(url)),
            );
        }
    }
    target
}

/// The master's name and its sentinels (their URLs are checked with the
/// other Redis URLs).
fn compile_sentinel(c: &mut Compiler<'_>, sentinel: &SentinelInput) -> Option<RedisTarget> {
    let mut ok = true;
    if sentinel.master.is_empty() || sentinel.master.contains(char::is_whitespace) {
        c.error(
            "store.redis.sentinel.master",
            "the master's name (as in `sentinel monitor NAME`) must be non-empty, without spaces",
        );
        ok = false;
    }
    if sentinel.nodes.is_empty() {
        c.error(
            "store.redis.sentinel.nodes",
            "list at least one sentinel URL (every sentinel, ideally: they are asked in turn)",
        );
        ok = false;
    }
    ok.then(|| RedisTarget::Sentinel {
        master: sentinel.master.clone(),
        nodes: sentinel.nodes.clone(),
    })
}

/// `sync: batched` reserves quota in Redis: it means nothing in memory.
fn check_memory_limits(c: &mut Compiler<'_>, base: &str, limits: &[RuleLimit]) {
    for (j, limit) in limits.iter().enumerate() {
        if limit.sync != SyncMode::Exact {
            c.error(
                format!("{base}[{j}].sync"),
                "`sync: batched` needs store.backend: redis (in memory every decision is exact and local)",
            );
        }
    }
}

/// Redis scripts compute with Lua's doubles: a limit whose numbers could
/// exceed 2^53 microseconds would be decided inexactly there.
fn check_redis_limits(c: &mut Compiler<'_>, base: &str, limits: &[RuleLimit]) {
    for (j, limit) in limits.iter().enumerate() {
        if !exact_in_lua(&limit.limiter) {
            c.error(
                format!("{base}[{j}].rate"),
                format!(
                    "{} with this rate and burst needs numbers beyond 2^53 microseconds, which the Redis store cannot decide exactly: use a shorter period or a smaller limit",
                    limit.limiter.name()
                ),
            );
        }
    }
}

/// The plans, in name order, with each plan's limits compiled once: a plan's
/// limit is one budget per key across every rule that applies it.
struct CompiledPlans {
    plans: Vec<Plan>,
    limits: Vec<Vec<RuleLimit>>,
}

impl CompiledPlans {
    /// Each plan's limits with the YAML path of their list.
    fn limit_lists(&self) -> impl Iterator<Item = (String, &[RuleLimit])> {
        self.plans
            .iter()
            .zip(&self.limits)
            .map(|(plan, limits)| (format!("plans.{}.limits", plan.name), &limits[..]))
    }
}

/// The scope plan limits' identities are encoded under: not a valid rule
/// name, so a plan's counters never meet a rule's.
fn plan_scope(plan: &str) -> String {
    format!("plan/{plan}")
}

fn compile_plans(
    c: &mut Compiler<'_>,
    input: &std::collections::BTreeMap<String, PlanInput>,
) -> CompiledPlans {
    let mut compiled = CompiledPlans {
        plans: Vec::new(),
        limits: Vec::new(),
    };
    for (name, plan) in input {
        let base = format!("plans.{name}");
        c.name(base.clone(), name, "plan");
        if plan.exempt && !plan.limits.is_empty() {
            c.warn(
                format!("{base}.exempt"),
                "an exempt plan's limits never apply",
            );
        }
        let mut names = HashSet::new();
        let mut limits = Vec::new();
        for (i, l) in plan.limits.iter().enumerate() {
            let path = format!("{base}.limits[{i}]");
            if let Some(limit) = compile_limit(c, &path, &plan_scope(name), l) {
                if !names.insert(limit.name.clone()) {
                    c.error(
                        format!("{path}.name"),
                        format!("duplicate limit name {:?} in plan {name:?}", limit.name),
                    );
                }
                limits.push(limit);
            }
        }
        compiled.plans.push(Plan {
            name: name.clone(),
            exempt: plan.exempt,
        });
        compiled.limits.push(limits);
    }
    compiled
}

/// Which of each plan's limits a rule applies; `None` when it applies none.
fn select_plan_limits(
    c: &mut Compiler<'_>,
    base: &str,
    select: Option<&PlanSelectInput>,
    plans: &CompiledPlans,
    consumers_configured: bool,
) -> Option<Vec<Vec<RuleLimit>>> {
    let names = match select? {
        PlanSelectInput::All(false) => return None,
        PlanSelectInput::All(true) => None,
        PlanSelectInput::Named(names) => Some(names),
    };
    let path = format!("{base}.plan");
    if !consumers_configured {
        c.error(
            &path,
            "a rule that applies plans needs `consumers:` (who is on which plan)",
        );
    }
    if plans.plans.is_empty() {
        c.error(&path, "no plans are defined (`plans:`)");
    }
    for (i, name) in names.into_iter().flatten().enumerate() {
        if !plans.limits.iter().flatten().any(|l| &l.name == name) {
            c.error(
                format!("{path}[{i}]"),
                format!("no plan has a limit named {name:?}"),
            );
        }
    }
    let chosen = |limit: &&RuleLimit| names.is_none_or(|names| names.contains(&limit.name));
    Some(
        plans
            .plans
            .iter()
            .zip(&plans.limits)
            .map(|(plan, limits)| {
                limits
                    .iter()
                    .filter(chosen)
                    .map(|limit| in_plan(&plan.name, limit))
                    .collect()
            })
            .collect(),
    )
}

/// A plan's limit as a rule applies it, named `PLAN.LIMIT`: two plans' limits
/// of one name stay apart in the headers, the metrics and a reload's record
/// of kept counters. Its identity keeps the plan's scope and written name.
fn in_plan(plan: &str, limit: &RuleLimit) -> RuleLimit {
    let name = format!("{plan}.{}", limit.name);
    RuleLimit {
        policy_header: limit
            .rate
            .map(|rate| policy_header(&name, &limit.limiter, rate, limit.burst)),
        name,
        ..limit.clone()
    }
}

/// The key table. Problems in a consumers file are located in that file.
fn compile_consumers(
    c: &mut Compiler<'_>,
    input: &ConsumersInput,
    config_file: &std::path::Path,
    plans: &[Plan],
    other_files: &mut Vec<(std::path::PathBuf, String)>,
) -> Option<Consumers> {
    let beside_config = |file: &str| {
        config_file
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .join(file)
    };
    let plan_index = |name: &str| plans.iter().position(|p| p.name == name);
    let anonymous = input.anonymous.as_deref().and_then(|name| {
        let found = plan_index(name);
        if found.is_none() {
            c.error("consumers.anonymous", unknown_plan(name, plans));
        }
        found
    });
    let forward = |c: &mut Compiler<'_>, field: &str, name: Option<&String>| {
        name.and_then(|n| c.check(format!("consumers.forward.{field}"), parse_header_name(n)))
    };
    let forward_id = forward(c, "id", input.forward.id.as_ref());
    let forward_plan = forward(c, "plan", input.forward.plan.as_ref());
    if forward_id.is_some() && forward_id == forward_plan {
        c.error(
            "consumers.forward",
            "the consumer's id and plan need two different headers",
        );
    }
    let mut table = Consumers {
        anonymous,
        forward_id,
        forward_plan,
        ..Consumers::default()
    };
    let listed = !input.list.is_empty();
    match (&input.file, listed) {
        (Some(_), true) => {
            c.error(
                "consumers",
                "consumers come from `file:` or `list:`, not both",
            );
            return None;
        }
        (None, _) => {
            add_consumers(c, &mut table, &input.list, "consumers.list", plans);
        }
        (Some(file), false) => {
            let path = beside_config(file);
            let problems = read_consumers_file(&path, &mut table, plans, other_files);
            let failed = !problems.is_empty();
            c.problems.extend(problems);
            if failed {
                return None;
            }
        }
    }
    if let Some(jwt) = &input.jwt {
        table.jwt = Some(compile_jwt(c, jwt, plans, &beside_config, other_files)?);
    }
    Some(table)
}

/// Every `jwt_claim` a limit is keyed by, once each, in file order.
fn jwt_claims_used(input: &ConfigInput) -> Vec<String> {
    let rule_limits = input.rules.iter().flat_map(|r| {
        let messages = r.websocket.as_ref().and_then(|w| w.messages.as_ref());
        r.limits.iter().chain(messages)
    });
    let plan_limits = input.plans.values().flat_map(|p| &p.limits);
    let mut claims: Vec<String> = Vec::new();
    for limit in rule_limits.chain(plan_limits) {
        for part in limit.key.parts() {
            if let KeyPartInput::JwtClaim(name) = part {
                if !claims.contains(name) {
                    claims.push(name.clone());
                }
            }
        }
    }
    claims
}

/// The JWT verifier: its keys (a JWKS file, located problems in it, or a
/// secret from the environment), algorithms, claims and plans.
fn compile_jwt(
    c: &mut Compiler<'_>,
    input: &JwtInput,
    plans: &[Plan],
    beside_config: &dyn Fn(&str) -> std::path::PathBuf,
    other_files: &mut Vec<(std::path::PathBuf, String)>,
) -> Option<JwtVerifier> {
    let base = "consumers.jwt";
    let keys = match &input.keys {
        JwtKeysInput::Secret(SecretEnvInput { secret_env }) => {
            let secret = std::env::var(secret_env).ok().filter(|s| !s.is_empty());
            if secret.is_none() {
                c.error(
                    format!("{base}.keys.secret_env"),
                    format!("the environment variable {secret_env} is not set (or empty)"),
                );
            }
            secret.map(|s| Keys::secret(s.as_bytes()))
        }
        JwtKeysInput::File(file) => {
            let path = beside_config(file);
            match read_jwks(&path, other_files) {
                Ok(keys) => Some(keys),
                Err(problem) => {
                    c.problems.push(*problem);
                    None
                }
            }
        }
    };
    if input.algorithms.is_empty() {
        c.error(format!("{base}.algorithms"), "list at least one algorithm");
    }
    let leeway = match &input.leeway {
        None => DEFAULT_JWT_LEEWAY,
        Some(text) => c
            .check(format!("{base}.leeway"), units::parse_duration(text))
            .unwrap_or(DEFAULT_JWT_LEEWAY),
    };
    let plan_index = |name: &str| plans.iter().position(|p| p.name == name);
    let default_plan = input.default_plan.as_deref().and_then(|name| {
        let found = plan_index(name);
        if found.is_none() {
            c.error(format!("{base}.default_plan"), unknown_plan(name, plans));
        }
        found
    });
    if input.plan_claim.is_none() && input.default_plan.is_none() {
        c.error(
            base,
            "name the plan: a `plan_claim`, a `default_plan`, or both",
        );
    }
    let settings = JwtSettings {
        keys: keys?,
        algorithms: input.algorithms.iter().map(|&a| jwt_algorithm(a)).collect(),
        issuer: input.issuer.clone(),
        audience: input.audience.clone(),
        leeway: leeway.as_secs(),
        consumer_claim: input.consumer_claim.clone().unwrap_or_else(|| "sub".into()),
        plan_claim: input.plan_claim.clone(),
        plans: plans
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.clone(), i))
            .collect(),
        default_plan,
        kept_claims: c.jwt_claims.clone(),
    };
    let verifier = JwtVerifier::new(settings);
    c.check(format!("{base}.algorithms"), verifier)
}

const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

fn jwt_algorithm(input: JwtAlgorithmInput) -> Algorithm {
    match input {
        JwtAlgorithmInput::RS256 => Algorithm::RS256,
        JwtAlgorithmInput::RS384 => Algorithm::RS384,
        JwtAlgorithmInput::RS512 => Algorithm::RS512,
        JwtAlgorithmInput::PS256 => Algorithm::PS256,
        JwtAlgorithmInput::PS384 => Algorithm::PS384,
        JwtAlgorithmInput::PS512 => Algorithm::PS512,
        JwtAlgorithmInput::ES256 => Algorithm::ES256,
        JwtAlgorithmInput::ES384 => Algorithm::ES384,
        JwtAlgorithmInput::EdDSA => Algorithm::EdDSA,
        JwtAlgorithmInput::HS256 => Algorithm::HS256,
        JwtAlgorithmInput::HS384 => Algorithm::HS384,
        JwtAlgorithmInput::HS512 => Algorithm::HS512,
    }
}

/// Reads a JWKS file; a problem is located in it.
fn read_jwks(
    path: &std::path::Path,
    other_files: &mut Vec<(std::path::PathBuf, String)>,
) -> Result<Keys, Box<Problem>> {
    let in_file = |line: usize, column: usize, message: String| {
        Box::new(Problem {
            severity: Severity::Error,
            file: Some(path.to_path_buf()),
            path: String::new(),
            line: u32::try_from(line).unwrap_or(u32::MAX),
            column: u32::try_from(column).unwrap_or(u32::MAX),
            message: super::shorten(message),
        })
    };
    let text = super::read_file(path).map_err(|e| {
        let message = e.problems.into_iter().next().map(|p| p.message);
        in_file(1, 1, message.unwrap_or_default())
    })?;
    other_files.push((path.to_path_buf(), super::sha256_hex(text.as_bytes())));
    let set = serde_json::from_str(&text).map_err(|e| {
        let message = super::strip_location(&e.to_string());
        in_file(
            e.line(),
            e.column(),
            format!("not a JWKS document: {message}"),
        )
    })?;
    Keys::from_set(set).map_err(|message| in_file(1, 1, message))
}

/// Reads the consumers file into `table`; its problems, located in it.
fn read_consumers_file(
    path: &std::path::Path,
    table: &mut Consumers,
    plans: &[Plan],
    other_files: &mut Vec<(std::path::PathBuf, String)>,
) -> Vec<Problem> {
    let in_file = |mut problems: Vec<Problem>| {
        for p in &mut problems {
            p.file = Some(path.to_path_buf());
        }
        problems
    };
    let text = match super::read_file(path) {
        Ok(text) => text,
        Err(e) => return in_file(e.problems),
    };
    other_files.push((path.to_path_buf(), super::sha256_hex(text.as_bytes())));
    let source = SourceMap::build(&text);
    let parsed = super::parse::<ConsumersFileInput>(&text, &source);
    let input = match parsed {
        Ok(input) => input,
        Err(mut problem) => {
            // A shape error may quote a value, and a value may be a key.
            problem.message = redact_quoted(&problem.message);
            return in_file(vec![problem]);
        }
    };
    let mut c = Compiler::new(&source);
    add_consumers(&mut c, table, &input.consumers, "consumers", plans);
    in_file(c.problems)
}

/// Adds consumers to the table: each id once, each key once across all.
fn add_consumers(
    c: &mut Compiler<'_>,
    table: &mut Consumers,
    consumers: &[ConsumerInput],
    base: &str,
    plans: &[Plan],
) {
    let mut ids = HashMap::new();
    for (i, consumer) in consumers.iter().enumerate() {
        let path = format!("{base}[{i}]");
        c.name(format!("{path}.id"), &consumer.id, "consumer");
        if let Some(first) = ids.insert(consumer.id.as_str(), i) {
            c.error(
                format!("{path}.id"),
                format!(
                    "consumer {:?} is also {base}[{first}]: each consumer once, with all its keys",
                    consumer.id
                ),
            );
        }
        let plan = plans.iter().position(|p| p.name == consumer.plan);
        if plan.is_none() {
            c.error(format!("{path}.plan"), unknown_plan(&consumer.plan, plans));
        }
        if consumer.keys.is_empty() {
            c.error(format!("{path}.keys"), "a consumer needs at least one key");
        }
        let index = table.list.len();
        for (j, written) in consumer.keys.iter().enumerate() {
            let key_path = format!("{path}.keys[{j}]");
            let Some(digest) = c.check(&key_path, consumer::digest_of_written(written)) else {
                continue;
            };
            if let Some(&other) = table.by_key.get(&digest) {
                let holder = &table.list[other].id;
                let message = if **holder == *consumer.id {
                    format!("this key is listed twice for consumer {holder:?}")
                } else {
                    format!("this key is also consumer {holder:?}'s: a key names one consumer")
                };
                c.error(&key_path, message);
                continue;
            }
            table.by_key.insert(digest, index);
        }
        table.list.push(Consumer {
            id: Arc::from(consumer.id.as_str()),
            plan: plan.unwrap_or(0),
        });
    }
}

fn unknown_plan(name: &str, plans: &[Plan]) -> String {
    let known: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
    format!(
        "plan {name:?} is not defined (defined: {})",
        list_or_none(known)
    )
}

/// A message with every double-quoted value replaced.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('"');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('"');
        out.push_str(if i % 2 == 0 { "<redacted>" } else { part });
    }
    out
}

/// Keys listed in the config itself are kept only as digests (they are shown
/// in `GET /-/config`); a key that is not valid is left out.
fn digest_listed_keys(list: &mut [ConsumerInput]) {
    for consumer in list {
        for key in &mut consumer.keys {
            *key = consumer::digest_of_written(key)
                .map(|d| consumer::written_digest(&d))
                .unwrap_or_else(|_| "<invalid>".into());
        }
    }
}

fn compile_rules(
    c: &mut Compiler<'_>,
    input: &ConfigInput,
    upstreams: &HashMap<&str, Option<usize>>,
    plans: &CompiledPlans,
    consumers_configured: bool,
) -> Vec<Rule> {
    let mut seen_names = HashSet::new();
    let mut rules: Vec<Rule> = Vec::new();
    for (i, r) in input.rules.iter().enumerate() {
        let base = format!("rules[{i}]");
        c.name(format!("{base}.name"), &r.name, "rule");
        if !seen_names.insert(r.name.as_str()) {
            c.error(
                format!("{base}.name"),
                format!("duplicate rule name {:?}", r.name),
            );
        }
        let rule = compile_rule(c, &base, r, &input.server, upstreams);
        if let Some(mut rule) = rule {
            rule.plan_limits =
                select_plan_limits(c, &base, r.plan.as_ref(), plans, consumers_configured).map(
                    |by_plan| {
                        by_plan
                            .into_iter()
                            .map(|plan| rule.limits.iter().cloned().chain(plan).collect())
                            .collect()
                    },
                );
            check_plan_limits(c, &base, &rule);
            let keyed_by =
                |part: fn(&KeyPart) -> bool| rule.limits.iter().any(|l| l.key.0.iter().any(part));
            let keyed_by_consumer =
                keyed_by(|p| matches!(p, KeyPart::Consumer | KeyPart::JwtClaim { .. }));
            // A `jwt_claim` key without `consumers.jwt` has its own problem.
            if keyed_by(|p| matches!(p, KeyPart::Consumer)) && !consumers_configured {
                c.error(
                    format!("{base}.limits"),
                    "`key: consumer` needs `consumers:` (who is on which plan)",
                );
            }
            rule.needs_consumer = rule.plan_limits.is_some() || keyed_by_consumer;
            rules.push(rule);
        }
    }
    rules
}

/// A request's limits, the rule's own and its plan's, are decided in one
/// step: at most `MAX_CHECKS`, each name once (names label the headers and
/// the metrics).
fn check_plan_limits(c: &mut Compiler<'_>, base: &str, rule: &Rule) {
    for limits in rule.plan_limits.iter().flatten() {
        if limits.len() > MAX_CHECKS {
            c.error(
                format!("{base}.plan"),
                format!(
                    "with a plan's limits this rule would have {} limits; a request may have at most {MAX_CHECKS}",
                    limits.len()
                ),
            );
            return;
        }
        let own = &limits[..rule.limits.len()];
        if let Some(clash) = limits[rule.limits.len()..]
            .iter()
            .find(|l| own.iter().any(|o| o.name == l.name))
        {
            c.error(
                format!("{base}.plan"),
                format!(
                    "the rule and a plan both have a limit named {:?}; name them apart",
                    clash.name
                ),
            );
            return;
        }
    }
}

/// Warns of rules that can never match: an earlier rule without a method or
/// host condition takes every request they would (it is a catch-all, has the
/// same pattern, or is a glob covering a literal path). Linear in the number of
/// rules (the route table answers for literal paths), so 10,000 rules load fast.
fn warn_shadowed(c: &mut Compiler<'_>, rules: &[Rule], routes: &RouteTable) {
    let unconditional = |r: &Rule| r.conditions.methods.is_empty() && r.conditions.host.is_none();
    let mut catch_all: Option<&Rule> = None;
    let mut by_pattern: HashMap<&str, &Rule> = HashMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let pattern = rule.pattern.source.as_str();
        let literal = !pattern.contains(['*', '?', '[', '{']);
        let earlier = catch_all
            .or_else(|| by_pattern.get(pattern).copied())
            .or_else(|| {
                let covering = literal.then(|| {
                    routes
                        .matching_rules(pattern)
                        .filter(|&j| j < i && unconditional(&rules[j]))
                        .min()
                });
                covering.flatten().map(|j| &rules[j])
            });
        if let Some(earlier) = earlier {
            c.warn(
                format!("rules[{i}].match.path"),
                format!(
                    "rule {:?} can never match: the earlier rule {:?} takes every request it would",
                    rule.name, earlier.name
                ),
            );
        }
        if unconditional(rule) {
            if rule.pattern.is_catch_all() {
                catch_all.get_or_insert(rule);
            }
            by_pattern.entry(pattern).or_insert(rule);
        }
    }
}

/// A host pattern in the form requests' hosts are matched in (see
/// `route::normalize_host`): one trailing dot dropped, no port.
fn compile_host_pattern(c: &mut Compiler<'_>, path: &str, pattern: &str) -> Option<HostPattern> {
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    if pattern.contains(':') {
        c.error(
            path,
            format!("{pattern:?}: a host pattern matches the name only, without a port (requests are matched on their host name, whatever the port)"),
        );
        return None;
    }
    c.check(path, HostPattern::new(pattern))
}

/// An algorithm's row in the table of names and settings.
pub(crate) fn spec_of(algorithm: AlgorithmInput) -> &'static Spec {
    match algorithm {
        AlgorithmInput::Gcra => &algorithm::GCRA,
        AlgorithmInput::TokenBucket => &algorithm::TOKEN_BUCKET,
        AlgorithmInput::LeakyBucket => &algorithm::LEAKY_BUCKET,
        AlgorithmInput::FixedWindow => &algorithm::FIXED_WINDOW,
        AlgorithmInput::SlidingWindowLog => &algorithm::SLIDING_WINDOW_LOG,
        AlgorithmInput::SlidingWindowCounter => &algorithm::SLIDING_WINDOW_COUNTER,
    }
}

fn compile_rule(
    c: &mut Compiler<'_>,
    base: &str,
    r: &RuleInput,
    server: &ServerInput,
    upstreams: &HashMap<&str, Option<usize>>,
) -> Option<Rule> {
    let pattern = compile_path_pattern(c, &format!("{base}.match.path"), &r.matches.path);
    let mut methods = Vec::new();
    for (i, m) in r.matches.methods.iter().enumerate() {
        let upper = m.to_ascii_uppercase();
        match KNOWN_METHODS.iter().find(|k| k.as_str() == upper) {
            Some(method) if !methods.contains(method) => methods.push(method.clone()),
            Some(_) => c.warn(format!("{base}.match.methods[{i}]"), format!("method {m} is listed twice")),
            None => c.error(
                format!("{base}.match.methods[{i}]"),
                format!("unknown method {m:?}: use GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH"),
            ),
        }
    }
    let host = r
        .matches
        .host
        .as_deref()
        .and_then(|h| compile_host_pattern(c, &format!("{base}.match.host"), h));
    let upstream = upstreams.get(r.upstream.as_str()).copied();
    if upstream.is_none() {
        let known: Vec<&str> = upstreams.keys().copied().collect();
        c.error(
            format!("{base}.upstream"),
            format!(
                "upstream {:?} is not defined (defined: {})",
                r.upstream,
                list_or_none(known)
            ),
        );
    }
    if r.limits.len() > MAX_CHECKS {
        c.error(
            format!("{base}.limits"),
            format!("a rule may have at most {MAX_CHECKS} limits"),
        );
    }
    let mut limit_names = HashSet::new();
    let mut limits = Vec::new();
    for (i, l) in r.limits.iter().enumerate() {
        let path = format!("{base}.limits[{i}]");
        if let Some(limit) = compile_limit(c, &path, &r.name, l) {
            if !limit_names.insert(limit.name.clone()) {
                c.error(
                    format!("{path}.name"),
                    format!(
                        "duplicate limit name {:?} in rule {:?}; name the limits apart",
                        limit.name, r.name
                    ),
                );
            }
            limits.push(limit);
        }
    }
    let exemptions = r
        .exempt
        .iter()
        .enumerate()
        .filter_map(|(i, e)| compile_exemption(c, &format!("{base}.exempt[{i}]"), e))
        .collect();
    let deny = compile_deny(c, &format!("{base}.deny"), r.deny.as_ref());
    let websocket = match &r.websocket {
        Some(w) => compile_websocket(c, &format!("{base}.websocket"), &r.name, w, &limit_names),
        None => WebSocketPolicy::default(),
    };
    Some(Rule {
        name: r.name.clone(),
        pattern: pattern?,
        conditions: RouteConditions { methods, host },
        upstream: upstream??,
        limits,
        plan_limits: None,
        needs_consumer: false,
        exemptions,
        headers: r.headers.unwrap_or(server.headers),
        deny,
        on_error: r.on_error,
        websocket,
        max_body_bytes: r.max_body_bytes.or(server.max_body_bytes),
        metrics: RuleMetrics::unbound(),
    })
}

fn compile_websocket(
    c: &mut Compiler<'_>,
    path: &str,
    rule: &str,
    w: &WebSocketInput,
    request_limits: &HashSet<String>,
) -> WebSocketPolicy {
    let duration = |c: &mut Compiler<'_>, field: &str, text: &Option<String>| {
        let text = text.as_ref()?;
        let d = c.check(format!("{path}.{field}"), units::parse_duration(text))?;
        if d.is_zero() {
            c.error(format!("{path}.{field}"), "must be longer than 0s");
            return None;
        }
        Some(d)
    };
    let idle_timeout = duration(c, "idle_timeout", &w.idle_timeout);
    let max_lifetime = duration(c, "max_lifetime", &w.max_lifetime);
    if w.max_message_bytes == Some(0) {
        c.error(
            format!("{path}.max_message_bytes"),
            "must be at least 1 (omit it for no maximum)",
        );
    }
    let messages = w.messages.as_ref().and_then(|l| {
        let path = format!("{path}.messages");
        if l.delay == Some(true) {
            c.error(
                format!("{path}.delay"),
                "a message limit cannot delay messages: it drops them or closes",
            );
        }
        if l.sync == Some(SyncInput::Batched) {
            c.error(
                format!("{path}.sync"),
                "message limits are decided exactly; `sync: batched` applies to request limits",
            );
        }
        if l.concurrent.is_some() || l.cost.is_some() {
            c.error(
                &path,
                "a message limit takes a `rate:` (each message costs 1); `concurrent:` and `cost:` apply to requests",
            );
            return None;
        }
        if l.ban.is_some() {
            c.error(
                format!("{path}.ban"),
                "bans apply to request limits; a message limit drops messages or closes",
            );
        }
        let per_connection = l.key == KeyInput::One(KeyPartInput::Connection);
        let mut input = l.clone();
        if per_connection {
            // Counted in the tunnel: the key only names the limit.
            input.key = KeyInput::One(KeyPartInput::Global);
            input.name = Some(l.name.clone().unwrap_or_else(|| "per-connection".into()));
        }
        let limit = compile_limit(c, &path, rule, &input)?;
        if request_limits.contains(&limit.name) {
            c.error(
                format!("{path}.name"),
                format!("{:?} names a request limit of this rule too; name the message limit apart", limit.name),
            );
        }
        Some(MessageLimit {
            limit,
            per_connection,
        })
    });
    WebSocketPolicy {
        messages,
        max_message_bytes: w.max_message_bytes,
        on_limit: w.on_limit.unwrap_or_default(),
        idle_timeout,
        max_lifetime,
    }
}

fn list_or_none(mut names: Vec<&str>) -> String {
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn compile_path_pattern(c: &mut Compiler<'_>, path: &str, pattern: &str) -> Option<PathPattern> {
    if pattern != "**" && !pattern.starts_with('/') {
        c.error(
            path,
            format!("path pattern {pattern:?} must start with '/'"),
        );
        return None;
    }
    // Requests are matched after normalization, so the pattern's literal parts
    // must already be in normal form (no //, . or .., no needless escapes).
    let literal = pattern.replace("**", "x").replace(['*', '?'], "x");
    if crate::route::normalize_path(literal.as_bytes()).map_or(true, |n| n != literal) {
        c.error(
            path,
            format!(
                "path pattern {pattern:?} is not a normalized path (no //, . or .. segments, \
                 escapes only where needed, upper-case hex); it would never match"
            ),
        );
        return None;
    }
    c.check(
        path,
        PathPattern::new(pattern).map_err(|e| format!("bad glob {pattern:?}: {}", e.kind())),
    )
}

/// A limit's key: its parts, each at most once.
fn compile_key(c: &mut Compiler<'_>, path: &str, l: &LimitInput) -> KeySpec {
    let parts = l.key.parts();
    if parts.is_empty() {
        c.error(format!("{path}.key"), "a key needs at least one part");
    }
    if parts.len() > MAX_KEY_PARTS {
        c.error(
            format!("{path}.key"),
            format!("a composite key may have at most {MAX_KEY_PARTS} parts"),
        );
    }
    let mut key = Vec::new();
    for part in parts {
        let compiled = match part {
            KeyPartInput::Ip => Some(KeyPart::Ip),
            KeyPartInput::ApiKey => Some(KeyPart::ApiKey),
            KeyPartInput::Global => Some(KeyPart::Global),
            KeyPartInput::Connection => {
                c.error(
                    format!("{path}.key"),
                    "the `connection` key applies to websocket.messages only, on its own",
                );
                None
            }
            KeyPartInput::Header(name) => c
                .check(format!("{path}.key"), parse_header_name(name))
                .map(KeyPart::Header),
            KeyPartInput::Consumer => Some(KeyPart::Consumer),
            KeyPartInput::Cookie(name) => c
                .check(format!("{path}.key"), parse_token(name, "cookie"))
                .map(KeyPart::Cookie),
            KeyPartInput::Query(name) => c
                .check(format!("{path}.key"), parse_token(name, "query parameter"))
                .map(KeyPart::Query),
            KeyPartInput::JwtClaim(name) => {
                if !c.jwt {
                    c.error(
                        format!("{path}.key"),
                        "`jwt_claim` needs consumers.jwt (the tokens it is read from)",
                    );
                }
                let slot = c.jwt_claims.iter().position(|claim| claim == name);
                slot.map(|slot| KeyPart::JwtClaim {
                    name: name.clone(),
                    slot,
                })
            }
        };
        if let Some(k) = compiled {
            if key.contains(&k) {
                c.error(
                    format!("{path}.key"),
                    format!("key part {k} is listed twice"),
                );
            }
            key.push(k);
        }
    }
    KeySpec(key)
}

/// A `concurrent:` limit: a maximum of requests in flight, with none of the
/// rate settings.
fn compile_concurrent(
    c: &mut Compiler<'_>,
    path: &str,
    l: &LimitInput,
    max: u64,
) -> Option<Limiter> {
    let mut extra = |field: &str, present: bool| {
        if present {
            c.error(
                format!("{path}.{field}"),
                format!("`{field}` does not apply to a `concurrent:` limit"),
            );
        }
    };
    extra("algorithm", l.algorithm.is_some());
    extra("burst", l.burst.is_some());
    extra("debt", l.debt.is_some());
    extra("delay", l.delay.is_some());
    if max == 0 || max > MAX_RATE_COUNT {
        c.error(
            format!("{path}.concurrent"),
            format!("concurrent must be between 1 and {MAX_RATE_COUNT}"),
        );
        return None;
    }
    Some(Limiter::Concurrent(Concurrent::new(max)))
}

/// A limit's `ban:`. A batched limit decides most requests from an
/// allowance this gateway holds, so its refusals would miss the shared
/// record: the two do not go together.
fn compile_ban(
    c: &mut Compiler<'_>,
    path: &str,
    b: &BanInput,
    l: &LimitInput,
) -> Option<BanPolicy> {
    let path = format!("{path}.ban");
    if l.sync == Some(SyncInput::Batched) {
        c.error(
            &path,
            "a batched limit cannot ban: its refusals are decided from a local allowance (use `sync: exact`)",
        );
    }
    if !(1..=1_000_000).contains(&b.after) {
        c.error(format!("{path}.after"), "must be from 1 to 1000000");
    }
    let day = Duration::from_secs(86_400);
    let within = bounded_duration(
        c,
        &format!("{path}.within"),
        b.within.as_deref(),
        Duration::from_secs(60),
        Duration::from_millis(1)..=day,
    );
    let duration = bounded_duration(
        c,
        &format!("{path}.for"),
        Some(&b.duration),
        Duration::from_secs(600),
        Duration::from_millis(1)..=day * 365,
    );
    let max = bounded_duration(
        c,
        &format!("{path}.max"),
        b.max.as_deref(),
        day.max(duration),
        Duration::from_millis(1)..=day * 365,
    );
    if max < duration {
        c.error(
            format!("{path}.max"),
            format!("the longest ban ({max:?}) is shorter than the first ({duration:?})"),
        );
    }
    let escalate = b.escalate.unwrap_or(1);
    if !(1..=1000).contains(&escalate) {
        c.error(format!("{path}.escalate"), "must be from 1 to 1000");
    }
    Some(BanPolicy {
        after: b.after.max(1),
        within: within.as_nanos() as Nanos,
        duration: duration.as_nanos() as Nanos,
        escalate: escalate.max(1),
        max: max.as_nanos() as Nanos,
        enforced: b.mode.unwrap_or(l.mode) == Mode::Enforce,
    })
}

/// How a limit meets a shared store: exact, or batched with a batch that
/// fits the limit beside the dearest request (`dearest`, of a limit of `most`).
fn compile_sync(
    c: &mut Compiler<'_>,
    path: &str,
    l: &LimitInput,
    limiter: &Limiter,
    dearest: u64,
    most: u64,
) -> SyncMode {
    let batch = match (l.sync.unwrap_or_default(), l.batch) {
        (SyncInput::Exact, None) => None,
        (SyncInput::Exact, Some(_)) => {
            c.error(
                format!("{path}.batch"),
                "`batch` applies to `sync: batched` only",
            );
            None
        }
        (SyncInput::Batched, _) if limiter.holds_permits() => {
            c.error(
                format!("{path}.sync"),
                "a concurrency limit cannot be batched: every permit is a lease",
            );
            None
        }
        (SyncInput::Batched, _) if l.delay == Some(true) => {
            c.error(
                format!("{path}.sync"),
                "a shaping leaky bucket cannot be batched: requests from a batch are not delayed",
            );
            None
        }
        (SyncInput::Batched, batch) => {
            let batch = batch.unwrap_or(DEFAULT_BATCH);
            // A reservation is the request's cost plus a batch; it must fit.
            if batch < 2 || batch.saturating_add(dearest) > most {
                c.error(
                    format!("{path}.batch"),
                    format!(
                        "a batch must be at least 2, and with the largest cost ({dearest}) fit the limit ({most})"
                    ),
                );
            }
            Some(batch)
        }
    };
    SyncMode::of_batch(batch)
}

fn compile_limit(
    c: &mut Compiler<'_>,
    path: &str,
    rule: &str,
    l: &LimitInput,
) -> Option<RuleLimit> {
    let key = compile_key(c, path, l);
    let name = l.name.clone().unwrap_or_else(|| default_limit_name(&key));
    if l.name.is_some() {
        c.name(format!("{path}.name"), &name, "limit");
    }
    if l.missing.is_some() && key.always_present() {
        c.warn(
            format!("{path}.missing"),
            format!("key {key} is always present, so `missing` never applies"),
        );
    }
    let cost = compile_cost(c, path, l.cost.as_ref());
    let (limiter, rate, quota) = match (&l.rate, l.concurrent) {
        (Some(_), Some(_)) | (None, None) => {
            c.error(
                path,
                "a limit has either `rate:` or `concurrent:`, exactly one",
            );
            return None;
        }
        (None, Some(max)) => {
            let limiter = compile_concurrent(c, path, l, max)?;
            (limiter, None, max)
        }
        (Some(text), None) => {
            let rate = c.check(format!("{path}.rate"), units::parse_rate(text))?;
            let algorithm = l.algorithm.unwrap_or_default();
            let (limiter, quota) = compile_rate_limit(c, path, l, algorithm, rate)?;
            (limiter, Some(rate), quota)
        }
    };
    let cost = cost?;
    // A request costing more than the limit can ever hold would never pass.
    let most = quota.saturating_add(l.debt.unwrap_or(0));
    let dearest = match &cost {
        Cost::Fixed(n) => *n,
        Cost::Header { max, .. } => *max,
    };
    if dearest > most {
        c.error(
            format!("{path}.cost"),
            format!("a cost of up to {dearest} can never fit a limit of {most}"),
        );
        return None;
    }
    let sync = compile_sync(c, path, l, &limiter, dearest, most);
    let ban = l.ban.as_ref().and_then(|b| compile_ban(c, path, b, l));
    Some(RuleLimit {
        id: LimitId::encode(
            rule,
            &name,
            &LimitDefinition {
                limiter: &limiter,
                rate: rate.map(|r| (r.count, r.period)),
                quota,
                debt: l.debt,
                delay: l.delay,
                key: &key,
            },
        ),
        sync,
        ban,
        policy_header: rate.map(|r| policy_header(&name, &limiter, r, quota)),
        metrics: LimitMetrics::unbound(),
        top: Arc::new(TopKeys::new(0)),
        name,
        key,
        missing: l.missing.unwrap_or(MissingPolicy::Deny),
        mode: l.mode,
        rate,
        burst: quota,
        cost,
        limiter,
    })
}

/// A rate limit's algorithm and its quota (burst, or the window's count).
fn compile_rate_limit(
    c: &mut Compiler<'_>,
    path: &str,
    l: &LimitInput,
    algorithm: AlgorithmInput,
    rate: Rate,
) -> Option<(Limiter, u64)> {
    let interval = rate.emission_interval_ns();
    let period = rate.period.as_nanos() as u64;
    let spec = spec_of(algorithm);
    let bucket = spec.takes(Setting::Burst);
    let settings = [
        (Setting::Burst, l.burst.is_some()),
        (Setting::Debt, l.debt.is_some()),
        (Setting::Delay, l.delay.is_some()),
    ];
    for (setting, given) in settings {
        if given && !spec.takes(setting) {
            let key = setting.key();
            c.error(
                format!("{path}.{key}"),
                format!("`{key}` applies to {} only", setting.taken_by()),
            );
        }
    }
    // A leaky bucket's burst is nginx's: requests beyond the one being
    // served, 0 by default. The others count the requests admissible at once.
    let leaky = algorithm == AlgorithmInput::LeakyBucket;
    let default_burst = if leaky { 0 } else { rate.count };
    let burst = match l.burst {
        Some(0) if !leaky => {
            c.error(format!("{path}.burst"), "burst must be at least 1");
            return None;
        }
        Some(b) if b > MAX_RATE_COUNT => {
            c.error(
                format!("{path}.burst"),
                format!("a burst of {b} is absurd (at most {MAX_RATE_COUNT})"),
            );
            return None;
        }
        Some(b) => b,
        None => default_burst,
    };
    let too_long =
        |units: u64| u128::from(interval) * u128::from(units) > units::MAX_RATE_PERIOD.as_nanos();
    // Requests admissible at once.
    let capacity = if leaky { burst + 1 } else { burst };
    if bucket && too_long(capacity) {
        c.error(
            format!("{path}.burst"),
            format!("a burst of {burst} at {rate} takes longer than 31 days to refill"),
        );
        return None;
    }
    let debt = l.debt.unwrap_or(0);
    if too_long(debt) {
        c.error(
            format!("{path}.debt"),
            format!("a debt of {debt} at {rate} takes longer than 31 days to repay"),
        );
        return None;
    }
    Some(match algorithm {
        AlgorithmInput::Gcra => (Limiter::Gcra(Gcra::from_interval(interval, burst)), burst),
        AlgorithmInput::TokenBucket => (
            Limiter::TokenBucket(TokenBucket::new(interval, burst, debt)),
            burst,
        ),
        AlgorithmInput::LeakyBucket => (
            Limiter::LeakyBucket(LeakyBucket::new(interval, burst, l.delay.unwrap_or(false))),
            capacity,
        ),
        AlgorithmInput::FixedWindow => (
            Limiter::FixedWindow(FixedWindow::new(period, rate.count)),
            rate.count,
        ),
        AlgorithmInput::SlidingWindowCounter => (
            Limiter::SlidingCounter(SlidingCounter::new(period, rate.count)),
            rate.count,
        ),
        AlgorithmInput::SlidingWindowLog => {
            if rate.count > MAX_LOG_LIMIT {
                c.error(
                    format!("{path}.rate"),
                    format!("sliding_window_log keeps every counted request: at most {MAX_LOG_LIMIT} per window"),
                );
                return None;
            }
            (
                Limiter::SlidingLog(SlidingLog::new(period, rate.count)),
                rate.count,
            )
        }
    })
}

fn compile_cost(c: &mut Compiler<'_>, path: &str, cost: Option<&CostInput>) -> Option<Cost> {
    match cost {
        None => Some(Cost::Fixed(1)),
        Some(CostInput::Fixed(0)) => {
            c.error(format!("{path}.cost"), "a cost must be at least 1");
            None
        }
        Some(CostInput::Fixed(n)) => Some(Cost::Fixed(*n)),
        Some(CostInput::Header(h)) => {
            let header = c.check(format!("{path}.cost.header"), parse_header_name(&h.header));
            if h.max == 0 || h.default == 0 || h.default > h.max {
                c.error(format!("{path}.cost"), "a cost needs 1 <= default <= max");
                return None;
            }
            Some(Cost::Header {
                name: header?,
                max: h.max,
                default: h.default,
            })
        }
    }
}

/// `ip`, `api_key`, `header-x-tenant`, `ip+api_key`: unique enough that two
/// unnamed limits of one rule rarely collide, and stable under reordering.
fn default_limit_name(key: &KeySpec) -> String {
    key.0
        .iter()
        .map(|p| match p {
            KeyPart::Header(h) => format!("header-{h}"),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join("+")
}

/// The `RateLimit-Policy` item: for a bucket, `quota` (its burst) per the time
/// the sustained rate needs to refill it; for a window, its count per period;
/// in whole seconds, at least 1. Limit names are plain tokens (checked above,
/// or derived from header names), so the value is valid.
fn policy_header(name: &str, limiter: &Limiter, rate: Rate, quota: u64) -> HeaderValue {
    let window_ns = match limiter {
        Limiter::FixedWindow(_) | Limiter::SlidingLog(_) | Limiter::SlidingCounter(_) => {
            rate.period.as_nanos()
        }
        _ => u128::from(rate.emission_interval_ns()) * u128::from(quota),
    };
    // The field counts whole seconds: a faster limit is stated per second.
    let (quota, window) = if window_ns < 1_000_000_000 {
        (u128::from(quota) * 1_000_000_000 / window_ns.max(1), 1)
    } else {
        (u128::from(quota), window_ns.div_ceil(1_000_000_000))
    };
    HeaderValue::from_str(&format!("\"{name}\";q={quota};w={window}"))
        .unwrap_or_else(|_| HeaderValue::from_static("\"limit\""))
}

fn compile_exemption(c: &mut Compiler<'_>, path: &str, e: &ExemptInput) -> Option<Exemption> {
    match e {
        ExemptInput::Ip(nets) => {
            let mut parsed = Vec::new();
            for (i, n) in nets.iter().enumerate() {
                if let Some(net) = c.check(format!("{path}.ip[{i}]"), parse_network(n)) {
                    parsed.push(net);
                }
            }
            Some(Exemption::Networks(parsed))
        }
        ExemptInput::Header(h) => {
            let name = c.check(format!("{path}.header.name"), parse_header_name(&h.name));
            let value = c.check(
                format!("{path}.header.value"),
                // The value is often a secret: the message must not repeat it.
                globset::Glob::new(&h.value)
                    .map_err(|e| format!("bad glob in the exemption value: {}", e.kind())),
            );
            Some(Exemption::Header {
                name: name?,
                value: value?.compile_matcher(),
                pattern: h.value.clone(),
            })
        }
    }
}

fn compile_deny(c: &mut Compiler<'_>, path: &str, d: Option<&DenyInput>) -> DenyResponse {
    let mut deny = DenyResponse::default();
    let Some(d) = d else { return deny };
    if let Some(status) = d.status {
        if (400..=599).contains(&status) {
            deny.status = status;
        } else {
            c.error(
                format!("{path}.status"),
                format!("status {status} is not a 4xx or 5xx code"),
            );
        }
    }
    deny.body.clone_from(&d.body);
    if let Some(ct) = &d.content_type {
        if let Some(v) = c.check(
            format!("{path}.content_type"),
            HeaderValue::from_str(ct).map_err(|_| format!("{ct:?} is not a valid content type")),
        ) {
            deny.content_type = v;
        }
    } else if let Some(body) = &d.body {
        if !body.trim_start().starts_with(['{', '[']) {
            deny.content_type = HeaderValue::from_static("text/plain; charset=utf-8");
        }
    }
    deny
}
