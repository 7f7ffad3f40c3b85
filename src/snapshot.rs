//! The compiled, immutable snapshot a request is served with. Built from the
//! config file by `config::compile`; swapped whole, never edited in place.

use std::any::Any;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;

use crate::access_log::LogTarget;
use crate::consumer::{Consumers, Plan};
use crate::health::{self, ActiveSettings, Nanos, PassiveSettings, ServerHealth};
use crate::identity::{ApiKeySources, Exemption, KeyPart, KeySpec, TrustedProxies};
use crate::limit::algorithm::Setting;
use crate::limit::breaker::BreakerSettings;
use crate::limit::store::redis::RedisSettings;
use crate::limit::{BanMark, BanPolicy, Decision, LimitId, Limiter, SyncMode};
use crate::metrics::{BanMode, DecisionResult, LimitMetrics, Metrics, RuleMetrics};
use crate::policy::units::Rate;
use crate::policy::{
    AccessLogFormat, Alpn, HeaderStyle, Http1Path, MissingPolicy, Mode, OnError, OnLimit,
    TlsVersion,
};
use crate::route::{PathPattern, RouteConditions, RouteTable};
use crate::schema::{ConfigSource, Problem};
use crate::tls::CertPair;
use crate::top::TopKeys;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::Backend;

/// Limits inside a rule's WebSocket connections.
#[derive(Debug, Clone, Default)]
pub(crate) struct WebSocketPolicy {
    pub(crate) messages: Option<MessageLimit>,
    pub(crate) max_message_bytes: Option<u64>,
    pub(crate) on_limit: OnLimit,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
}

#[derive(Debug, Clone)]
pub(crate) struct MessageLimit {
    pub(crate) limit: RuleLimit,
    /// Counted per connection, in the tunnel itself (no store involved).
    pub(crate) per_connection: bool,
}

#[derive(Debug)]
pub struct Snapshot {
    pub server: ServerSettings,
    pub(crate) store: StoreSettings,
    /// What the parts beside the gateway made of their sections, in the
    /// order the binary added them (see `config::part`).
    pub(crate) parts: Vec<CompiledPart>,
    pub(crate) routes: RouteTable,
    /// In file order; `routes` yields indices into this.
    pub rules: Vec<Rule>,
    /// In name order; consumers and rules' plan limits index into this.
    pub plans: Vec<Plan>,
    /// The key table, when consumers are configured.
    pub consumers: Option<Consumers>,
    pub(crate) upstreams: Vec<Upstream>,
    pub(crate) access_log: AccessLogSettings,
    /// What of a request's identity the access log records for replay.
    pub(crate) recording: Recording,
    /// Non-fatal findings of the compile (e.g. unreachable rules).
    pub warnings: Vec<Problem>,
    pub(crate) source: ConfigSource,
}

#[derive(Debug, Clone)]
pub(crate) struct StoreSettings {
    /// How long the state of a limit removed by a reload is kept, in case a
    /// later reload brings the limit back.
    pub(crate) release_after: Duration,
    /// Most states the memory store holds.
    pub(crate) max_keys: usize,
    /// Present when `backend: redis`.
    pub(crate) redis: Option<RedisBackend>,
    /// What requests get while Redis fails; rules may override it.
    pub(crate) on_error: OnError,
}

/// The shared store and the breaker in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisBackend {
    pub(crate) redis: RedisSettings,
    pub(crate) breaker: BreakerSettings,
}

/// The parts of a request's identity that some rule reads and the access
/// log must record for `tollgate replay` to read them back: the header,
/// cookie, query and API key parts of every limit's key (the API key too
/// when consumers are configured), and every header exemption.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recording {
    pub(crate) parts: Vec<KeyPart>,
    pub(crate) header_exemptions: Vec<Exemption>,
}

impl Recording {
    pub(crate) fn of(rules: &[Rule], consumers: Option<&Consumers>) -> Self {
        let mut recording = Recording::default();
        if consumers.is_some() {
            recording.parts.push(KeyPart::ApiKey);
        }
        for rule in rules {
            for part in rule.all_limits().flat_map(|l| &l.key.0) {
                let kind_recorded = matches!(
                    part,
                    KeyPart::Header(_) | KeyPart::Cookie(_) | KeyPart::Query(_) | KeyPart::ApiKey
                );
                if kind_recorded && !recording.parts.contains(part) {
                    recording.parts.push(part.clone());
                }
            }
            for exemption in &rule.exemptions {
                if let Exemption::Header { name, pattern, .. } = exemption {
                    let known = recording.header_exemptions.iter().any(|e| {
                        matches!(e, Exemption::Header { name: n, pattern: p, .. } if n == name && p == pattern)
                    });
                    if !known {
                        recording.header_exemptions.push(exemption.clone());
                    }
                }
            }
        }
        recording
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.parts.is_empty() && self.header_exemptions.is_empty()
    }
}

/// The access log's settings: the format follows the config, the target and
/// buffer are fixed at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccessLogSettings {
    pub(crate) format: AccessLogFormat,
    pub(crate) target: LogTarget,
    pub(crate) buffer: usize,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub admin: String,
    pub(crate) admin_token: Option<String>,
    pub(crate) watch: bool,
    pub(crate) threads: usize,
    pub(crate) work_stealing: bool,
    pub(crate) http1_path: Http1Path,
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) ipv6_prefix: u8,
    pub(crate) api_key: ApiKeySources,
    /// From a request's first byte to the end of its headers.
    pub(crate) header_timeout: Duration,
    /// The longest a request body may stop arriving, between two reads.
    pub(crate) body_timeout: Duration,
    /// Before a connection's first request and between keep-alive requests.
    pub(crate) idle_timeout: Duration,
    /// Open connections per client IP (network, for IPv6); `None`: no cap.
    pub(crate) max_connections_per_ip: Option<u32>,
    /// After SIGTERM, the time requests in flight get to finish.
    pub(crate) grace_period: Duration,
    /// The largest request head admission lets through (`admission::head_bytes`).
    pub(crate) max_header_bytes: usize,
    /// The listeners that terminate TLS.
    pub(crate) tls: Vec<TlsListener>,
    /// From a TLS connection's accept to the end of its handshake.
    pub(crate) handshake_timeout: Duration,
    /// `/readyz` answers 503 while an upstream has no healthy server.
    pub(crate) ready_needs_upstreams: bool,
    /// The admin endpoints show limit keys as counted, not as digests.
    pub(crate) admin_show_keys: bool,
}

/// A listener that terminates TLS. Its address, versions, ALPN and
/// redirects are bound at start; its certificates follow the config.
#[derive(Debug, Clone)]
pub(crate) struct TlsListener {
    pub(crate) listen: String,
    pub(crate) addr: SocketAddr,
    pub(crate) certs: Vec<CertPair>,
    pub(crate) min_version: TlsVersion,
    pub(crate) alpn: Vec<Alpn>,
    /// Plain-HTTP addresses that redirect to this listener.
    pub(crate) redirect_from: Vec<SocketAddr>,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub(crate) pattern: PathPattern,
    pub(crate) conditions: RouteConditions,
    /// Index into `Snapshot::upstreams`.
    pub(crate) upstream: usize,
    pub(crate) limits: Vec<RuleLimit>,
    /// For a rule that applies plans: per plan (same order as
    /// `Snapshot::plans`), the rule's own limits followed by the plan's, so a
    /// request's limits are one list decided in one step.
    pub(crate) plan_limits: Option<Vec<Vec<RuleLimit>>>,
    /// The request's consumer must be known: the rule applies plans, or a
    /// limit is keyed by `consumer`.
    pub(crate) needs_consumer: bool,
    pub(crate) exemptions: Vec<Exemption>,
    pub(crate) headers: HeaderStyle,
    pub(crate) deny: DenyResponse,
    /// Overrides `store.on_error`.
    pub(crate) on_error: Option<OnError>,
    pub(crate) websocket: WebSocketPolicy,
    /// The largest request body; `None`: no limit.
    pub(crate) max_body_bytes: Option<u64>,
    pub(crate) metrics: RuleMetrics,
}

#[derive(Debug, Clone)]
pub struct RuleLimit {
    pub id: LimitId,
    pub(crate) name: String,
    pub(crate) key: KeySpec,
    pub(crate) missing: MissingPolicy,
    pub(crate) mode: Mode,
    /// `None` for a concurrency limit.
    pub(crate) rate: Option<Rate>,
    /// Requests admissible at once (a bucket's burst, a window's count, the
    /// concurrency maximum).
    pub(crate) burst: u64,
    pub(crate) cost: Cost,
    pub(crate) limiter: Limiter,
    /// How its decisions meet a shared store (the config's `sync:`).
    pub(crate) sync: SyncMode,
    /// The penalty box of its keys (the config's `ban:`).
    pub(crate) ban: Option<BanPolicy>,
    /// Pre-rendered `RateLimit-Policy` item, e.g. `"per-ip";q=100;w=1`; `None`
    /// for a concurrency limit, which the fields cannot describe.
    pub(crate) policy_header: Option<HeaderValue>,
    pub(crate) metrics: LimitMetrics,
    /// Its heaviest keys; carried across reloads by rule and limit name
    /// (`Snapshot::carry_top_keys`).
    pub(crate) top: Arc<TopKeys>,
}

impl Rule {
    /// The request limits, then the WebSocket message limit if any: every
    /// limit with counters and metrics of its own.
    pub fn all_limits(&self) -> impl Iterator<Item = &RuleLimit> {
        let own = self.limits.len();
        let from_plans = self
            .plan_limits
            .iter()
            .flatten()
            .flat_map(move |limits| &limits[own..]);
        let messages = self.websocket.messages.as_ref().map(|m| &m.limit);
        self.limits.iter().chain(from_plans).chain(messages)
    }

    /// The plans its requests are counted under: every plan, for a rule that
    /// tells consumers apart.
    pub(crate) fn plan_labels<'p>(&self, plans: &'p [&'p str]) -> &'p [&'p str] {
        if self.needs_consumer {
            plans
        } else {
            &[]
        }
    }

    /// A consumer on an exempt plan skips every limit of a rule that applies
    /// plans.
    pub(crate) fn exempt_by_plan(&self, plan: Option<usize>, plans: &[Plan]) -> bool {
        self.plan_limits.is_some() && plan.is_some_and(|p| plans[p].exempt)
    }

    /// The limits a request on `plan` gets (the rule's own without a plan, or
    /// on a rule that applies none).
    pub(crate) fn limits_for(&self, plan: Option<usize>) -> &[RuleLimit] {
        match (&self.plan_limits, plan) {
            (Some(by_plan), Some(plan)) => &by_plan[plan],
            _ => &self.limits,
        }
    }
}

impl RuleLimit {
    /// Counts one of this limit's decisions (a shadow limit's denial apart).
    pub(crate) fn record(&self, decision: &Decision) {
        self.metrics.record(match (decision.allowed, self.mode) {
            (true, _) => DecisionResult::Allowed,
            (false, Mode::Enforce) => DecisionResult::Denied,
            (false, Mode::Shadow) => DecisionResult::ShadowDenied,
        });
        let mode = if self.bans() {
            BanMode::Enforce
        } else {
            BanMode::Shadow
        };
        match decision.ban {
            BanMark::None => {}
            BanMark::Banned => self.metrics.ban_refused(mode),
            BanMark::Started => self.metrics.ban_started(mode),
        }
    }

    /// Whether its penalty box refuses requests (not only counts them).
    pub(crate) fn bans(&self) -> bool {
        self.mode == Mode::Enforce && self.ban.is_some_and(|b| b.enforced)
    }

    /// `gcra 100/1s burst 100`, `fixed_window 10/1m`, `concurrent 5`.
    pub(crate) fn describe(&self) -> String {
        let name = self.limiter.name();
        match self.rate {
            None => format!("{name} {}", self.burst),
            Some(rate) if self.limiter.spec().takes(Setting::Burst) => {
                format!("{name} {rate} burst {}", self.burst)
            }
            Some(rate) => format!("{name} {rate}"),
        }
    }
}

/// What one request costs a limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cost {
    Fixed(u64),
    /// Read from a header (a batch endpoint's item count); `default` when the
    /// header is absent; a value above `max`, zero or not a number is refused.
    Header {
        name: http::HeaderName,
        max: u64,
        default: u64,
    },
}

impl Cost {
    /// The cost of a request, or `None` when its header holds no valid cost.
    /// A header sent twice is one list (RFC 9110 §5.3), as invalid as
    /// `1, 5` on one line: read by its first line, it would charge the least.
    pub(crate) fn of(&self, headers: &http::HeaderMap) -> Option<u64> {
        match self {
            Cost::Fixed(n) => Some(*n),
            Cost::Header { name, max, default } => {
                let mut values = headers.get_all(name).iter();
                match (values.next(), values.next()) {
                    (None, _) => Some(*default),
                    (Some(v), None) => v
                        .to_str()
                        .ok()
                        .and_then(|t| t.trim().parse::<u64>().ok())
                        .filter(|n| (1..=*max).contains(n)),
                    (Some(_), Some(_)) => None,
                }
            }
        }
    }
}

/// How a denied request is answered.
#[derive(Debug, Clone)]
pub(crate) struct DenyResponse {
    pub(crate) status: u16,
    /// `None` means the standard JSON body.
    pub(crate) body: Option<String>,
    pub(crate) content_type: HeaderValue,
}

impl Default for DenyResponse {
    fn default() -> Self {
        DenyResponse {
            status: 429,
            body: None,
            content_type: HeaderValue::from_static("application/json"),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) name: String,
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) tls: bool,
    pub(crate) sni: String,
    pub(crate) verify_cert: bool,
    pub(crate) host_header: Option<HeaderValue>,
    pub(crate) connect_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) write_timeout: Duration,
    /// Read timeout of upgraded (WebSocket) connections.
    pub(crate) tunnel_idle_timeout: Duration,
    /// Round-robin position, in `schedule`.
    pub(crate) next: AtomicUsize,
    /// The Pingora peer of each server (same order), built once per
    /// snapshot: a request clones one instead of building it.
    pub(crate) peers: Vec<HttpPeer>,
    /// Each server's weight (same order as `servers`).
    pub(crate) weights: Vec<u32>,
    /// Server indices in the order requests visit them, by weight.
    pub(crate) schedule: Vec<usize>,
    /// Each server's health, shared with the snapshots before and after
    /// this one that have the same server in the same upstream.
    pub(crate) health: Vec<Arc<ServerHealth>>,
    pub(crate) active: Option<ActiveCheck>,
    pub(crate) passive: Option<PassiveSettings>,
}

/// An upstream's active health check: its settings and Pingora's probe.
pub(crate) struct ActiveCheck {
    pub(crate) settings: ActiveSettings,
    pub(crate) probe: Box<dyn HealthCheck + Send + Sync>,
}

impl std::fmt::Debug for ActiveCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveCheck")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ActiveCheck {
    /// Pingora's HTTP or TCP check for `upstream`'s servers.
    fn new(settings: ActiveSettings, upstream: &Upstream) -> Self {
        let probe: Box<dyn HealthCheck + Send + Sync> = match &settings.path {
            Some(path) => {
                let host = upstream
                    .host_header
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or(&upstream.sni)
                    .to_string();
                let mut check = HttpHealthCheck::new(&host, upstream.tls);
                check.peer_template.sni = upstream.sni.clone();
                let options = &mut check.peer_template.options;
                options.connection_timeout = Some(settings.timeout);
                options.total_connection_timeout = Some(settings.timeout);
                options.read_timeout = Some(settings.timeout);
                options.verify_cert = upstream.verify_cert;
                options.verify_hostname = upstream.verify_cert;
                if let Ok(uri) = path.parse() {
                    check.req.set_uri(uri);
                }
                Box::new(check)
            }
            None => {
                let mut check = if upstream.tls {
                    TcpHealthCheck::new_tls(&upstream.sni)
                } else {
                    TcpHealthCheck::new()
                };
                let options = &mut check.peer_template.options;
                options.connection_timeout = Some(settings.timeout);
                options.total_connection_timeout = Some(settings.timeout);
                options.verify_cert = upstream.verify_cert;
                options.verify_hostname = upstream.verify_cert;
                check
            }
        };
        ActiveCheck { settings, probe }
    }

    /// Runs one check of `server`, bounded by the check's timeout.
    pub(crate) async fn passes(&self, server: SocketAddr) -> bool {
        let backend = Backend {
            addr: pingora::protocols::l4::socket::SocketAddr::Inet(server),
            weight: 1,
            ext: Default::default(),
        };
        let check = tokio::time::timeout(self.settings.timeout, self.probe.check(&backend));
        matches!(check.await, Ok(Ok(())))
    }
}

impl Upstream {
    /// Builds the peers of the servers, their visiting order and the
    /// active check from the upstream's settings.
    pub(crate) fn with_peers(mut self, active: Option<ActiveSettings>) -> Self {
        self.peers = self.servers.iter().map(|&s| self.peer_of(s)).collect();
        self.schedule = health::schedule(&self.weights);
        self.health = self.servers.iter().map(|_| Arc::default()).collect();
        self.active = active.map(|settings| ActiveCheck::new(settings, &self));
        self
    }

    /// Takes the health of the servers `old` had too.
    pub(crate) fn inherit_health(&mut self, old: &Upstream) {
        let checked = self.active.is_some();
        for (server, health) in self.servers.iter().zip(&mut self.health) {
            if let Some(i) = old.servers.iter().position(|s| s == server) {
                old.health[i].carried(checked);
                *health = old.health[i].clone();
            }
        }
    }

    /// The server to try next at `now`: the next turn of the weighted
    /// round robin, if its server is available and not in `tried`. The turn
    /// of a server that is out goes to the servers left, in turn and by
    /// their weights (not all to its neighbour in the order). `None` when no
    /// server is left.
    pub(crate) fn pick(&self, tried: &[usize], now: Nanos) -> Option<usize> {
        let len = self.schedule.len();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let server = self.schedule[turn % len];
        if self.usable(server, tried, now) {
            return Some(server);
        }
        let usable = |i: &usize| self.usable(*i, tried, now);
        let left = self.schedule.iter().filter(|i| usable(i)).count();
        if left == 0 {
            return None;
        }
        let mut others = self.schedule.iter().copied().filter(usable);
        others
            .nth((turn / len) % left)
            // Health changed meanwhile: any server left.
            .or_else(|| (0..self.servers.len()).find(usable))
    }

    fn usable(&self, server: usize, tried: &[usize], now: Nanos) -> bool {
        !tried.contains(&server) && self.health[server].available(now)
    }

    /// Whether a server not in `tried` may get a request at `now`.
    pub(crate) fn any_left(&self, tried: &[usize], now: Nanos) -> bool {
        (0..self.servers.len()).any(|i| self.usable(i, tried, now))
    }

    fn peer_of(&self, server: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(server, self.tls, self.sni.clone());
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        // TCP and TLS together: a server that accepts and then stalls the
        // TLS handshake must not hold a request for ever.
        options.total_connection_timeout = Some(self.connect_timeout);
        options.write_timeout = Some(self.write_timeout);
        // Tunnels keep their own idle time (see `proxy::tunnel::pump`).
        options.read_timeout = Some(self.read_timeout);
        options.verify_cert = self.verify_cert;
        options.verify_hostname = self.verify_cert;
        peer
    }

    /// The peer of server `index`.
    pub(crate) fn peer(&self, index: usize) -> HttpPeer {
        self.peers[index % self.peers.len()].clone()
    }
}

/// The settings a part runs with, held in the snapshot without the core
/// knowing their type. Two are equal when they have the same type and value.
#[derive(Debug, Clone)]
pub(crate) struct PartSettings(Arc<dyn Erased>);

impl PartSettings {
    pub fn new<T: Any + Debug + PartialEq + Send + Sync>(settings: T) -> Self {
        PartSettings(Arc::new(settings))
    }

    /// The settings, if they are a `T`.
    pub(crate) fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl PartialEq for PartSettings {
    fn eq(&self, other: &Self) -> bool {
        self.0.same(&*other.0)
    }
}

impl Eq for PartSettings {}

/// Settings of any type, compared by value.
trait Erased: Any + Debug + Send + Sync {
    fn same(&self, other: &dyn Erased) -> bool;
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + Debug + PartialEq + Send + Sync> Erased for T {
    fn same(&self, other: &dyn Erased) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// What a part beside the gateway made of its section of the file (see
/// `config::part`), kept in the snapshot.
#[derive(Debug, Clone)]
pub(crate) struct CompiledPart {
    pub(crate) name: &'static str,
    /// The section as read, defaults filled in and secrets redacted, for
    /// `GET /-/config` (`null` when absent).
    pub(crate) shown: serde_json::Value,
    pub(crate) settings: Option<PartSettings>,
}

impl Snapshot {
    /// Points the snapshot's metric handles at the gateway's registry. Done
    /// once, where a snapshot is swapped in (`Shared::new` at start, and a
    /// reload's apply): a compiled snapshot counts into nothing a gateway
    /// exposes, so a rejected file leaves no series.
    pub(crate) fn bind_metrics(&mut self, metrics: &Metrics) {
        let plans: Vec<&str> = self.plans.iter().map(|p| p.name.as_str()).collect();
        for rule in &mut self.rules {
            rule.metrics = metrics.rule(&rule.name, rule.plan_labels(&plans));
            let messages = rule.websocket.messages.as_mut().map(|m| &mut m.limit);
            let from_plans = rule.plan_limits.iter_mut().flatten().flatten();
            for limit in rule.limits.iter_mut().chain(from_plans).chain(messages) {
                limit.metrics = metrics.limit(&rule.name, &limit.name);
            }
        }
    }

    /// Hands each limit the top keys its namesake in `old` counted, so a
    /// reload does not blank who is being limited; new limits start afresh.
    pub(crate) fn carry_top_keys(&mut self, old: Option<&Snapshot>) {
        for rule in &mut self.rules {
            let before = old.and_then(|o| o.rules.iter().find(|r| r.name == rule.name));
            let messages = rule.websocket.messages.as_mut().map(|m| &mut m.limit);
            let from_plans = rule.plan_limits.iter_mut().flatten().flatten();
            for limit in rule.limits.iter_mut().chain(from_plans).chain(messages) {
                if let Some(kept) = before
                    .and_then(|r| r.all_limits().find(|l| l.name == limit.name))
                    .map(|l| l.top.clone())
                {
                    limit.top = kept;
                }
            }
        }
    }

    /// The settings of the part `name`, if it runs and they are a `T`.
    pub(crate) fn part<T: Any>(&self, name: &str) -> Option<&T> {
        self.parts
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.settings.as_ref()?.get())
    }

    /// What a rule's requests get while Redis fails.
    pub(crate) fn on_error(&self, rule: &Rule) -> OnError {
        rule.on_error.unwrap_or(self.store.on_error)
    }

    pub(crate) fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    pub(crate) fn upstream_of(&self, rule: &Rule) -> &Upstream {
        &self.upstreams[rule.upstream]
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::PartSettings;
    use crate::metrics::{DecisionResult, Metrics, Outcome};

    const YAML: &str = "
upstreams: { api: { servers: [\"127.0.0.1:9\"] } }
rules:
  - name: all
    match: { path: \"/**\" }
    upstream: api
    limits: [{ name: per-ip, key: ip, rate: 1/second }]
";

    fn exposed(metrics: &Metrics) -> String {
        String::from_utf8(metrics.encode()).unwrap()
    }

    #[test]
    fn part_settings_are_equal_when_their_type_and_value_are() {
        let a = PartSettings::new(1u32);
        assert_eq!(a, PartSettings::new(1u32));
        assert_ne!(a, PartSettings::new(2u32));
        assert_ne!(a, PartSettings::new(1u64));
        assert_eq!(a.get::<u32>(), Some(&1));
        assert_eq!(a.get::<u64>(), None);
    }

    fn three_servers() -> super::Snapshot {
        let yaml = "upstreams: { api: { servers: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"], passive: { failures: 1, eject_for: 1h } } }\nrules: [{ name: all, match: { path: \"/**\" }, upstream: api }]\n";
        crate::config::load_str(yaml, std::path::Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn the_turns_of_a_server_that_is_out_are_shared_by_the_others() {
        let rt = three_servers();
        let api = &rt.upstreams[0];
        api.health[0].connect_failed(0, api.passive.as_ref());
        let mut count = [0; 3];
        for _ in 0..300 {
            count[api.pick(&[], 1).unwrap()] += 1;
        }
        assert_eq!(count, [0, 150, 150]);
    }

    #[test]
    fn a_retry_never_picks_a_server_already_tried() {
        let rt = three_servers();
        let api = &rt.upstreams[0];
        for _ in 0..10 {
            let picked = api.pick(&[0, 2], 0);
            assert_eq!(picked, Some(1));
        }
        assert_eq!(api.pick(&[0, 1, 2], 0), None);
    }

    #[test]
    fn a_compiled_snapshot_counts_into_the_registry_only_once_bound() {
        let mut rt = crate::config::load_str(YAML, Path::new("t.yaml")).unwrap();
        let metrics = Metrics::new();
        rt.rules[0].metrics.record(Outcome::Allowed, None);
        rt.rules[0].limits[0]
            .metrics
            .record(DecisionResult::Allowed);
        assert!(!exposed(&metrics).contains("rule=\"all\""));

        rt.bind_metrics(&metrics);
        rt.rules[0].metrics.record(Outcome::Allowed, None);
        rt.rules[0].limits[0]
            .metrics
            .record(DecisionResult::Allowed);
        let text = exposed(&metrics);
        assert!(
            text.contains(r#"tollgate_requests_total{outcome="allowed",plan="",rule="all"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tollgate_decisions_total{limit="per-ip",result="allowed",rule="all"} 1"#
            ),
            "{text}"
        );
    }
}
