//! The compiled, immutable snapshot a request is served with. Built from the
//! config file by `config::compile`; swapped whole, never edited in place.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;

use crate::demo::DemoSettings;
use crate::identity::{ApiKeySources, Exemption, KeySpec, TrustedProxies};
use crate::limit::algorithm::Setting;
use crate::limit::breaker::BreakerSettings;
use crate::limit::store::redis::RedisSettings;
use crate::limit::{Decision, LimitId, Limiter};
use crate::metrics::{DecisionResult, LimitMetrics, Metrics, RuleMetrics};
use crate::policy::units::Rate;
use crate::policy::{HeaderStyle, MissingPolicy, Mode, OnError, OnLimit};
use crate::route::{PathPattern, RouteConditions, RouteTable};
use crate::schema::{ConfigSource, Problem};

/// Limits inside a rule's WebSocket connections.
#[derive(Debug, Clone, Default)]
pub struct WebSocketPolicy {
    pub messages: Option<MessageLimit>,
    pub max_message_bytes: Option<u64>,
    pub on_limit: OnLimit,
    pub idle_timeout: Option<Duration>,
    pub max_lifetime: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct MessageLimit {
    pub limit: RuleLimit,
    /// Counted per connection, in the tunnel itself (no store involved).
    pub per_connection: bool,
}

#[derive(Debug)]
pub struct Runtime {
    pub server: ServerSettings,
    pub store: StoreSettings,
    /// The built-in demo upstream, when enabled.
    pub demo: Option<DemoSettings>,
    pub routes: RouteTable,
    /// In file order; `routes` yields indices into this.
    pub rules: Vec<Rule>,
    pub upstreams: Vec<Upstream>,
    /// Non-fatal findings of the compile (e.g. unreachable rules).
    pub warnings: Vec<Problem>,
    pub source: ConfigSource,
}

#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// How long the state of a limit removed by a reload is kept, in case a
    /// later reload brings the limit back.
    pub release_after: Duration,
    /// Most states the memory store holds.
    pub max_keys: usize,
    /// Present when `backend: redis`.
    pub redis: Option<RedisBackend>,
    /// What requests get while Redis fails; rules may override it.
    pub on_error: OnError,
}

/// The shared store and the breaker in front of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisBackend {
    pub redis: RedisSettings,
    pub breaker: BreakerSettings,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<String>,
    pub admin: String,
    pub admin_token: Option<String>,
    pub watch: bool,
    pub threads: usize,
    pub work_stealing: bool,
    pub trusted_proxies: TrustedProxies,
    pub ipv6_prefix: u8,
    pub api_key: ApiKeySources,
    /// From a request's first byte to the end of its headers.
    pub header_timeout: Duration,
    /// Before a connection's first request and between keep-alive requests.
    pub idle_timeout: Duration,
    /// Open connections per client IP (network, for IPv6); `None`: no cap.
    pub max_connections_per_ip: Option<u32>,
    /// After SIGTERM, the time requests in flight get to finish.
    pub grace_period: Duration,
}

#[derive(Debug)]
pub struct Rule {
    pub name: String,
    pub pattern: PathPattern,
    pub conditions: RouteConditions,
    /// Index into `Runtime::upstreams`.
    pub upstream: usize,
    pub limits: Vec<RuleLimit>,
    pub exemptions: Vec<Exemption>,
    pub headers: HeaderStyle,
    pub deny: DenyResponse,
    /// Overrides `store.on_error`.
    pub on_error: Option<OnError>,
    pub websocket: WebSocketPolicy,
    pub metrics: RuleMetrics,
}

#[derive(Debug, Clone)]
pub struct RuleLimit {
    pub id: LimitId,
    pub name: String,
    pub key: KeySpec,
    pub missing: MissingPolicy,
    pub mode: Mode,
    /// `None` for a concurrency limit.
    pub rate: Option<Rate>,
    /// Requests admissible at once (a bucket's burst, a window's count, the
    /// concurrency maximum).
    pub burst: u64,
    pub cost: Cost,
    pub limiter: Limiter,
    /// `sync: batched`: units reserved in Redis per call (`None`: exact).
    pub batch: Option<u64>,
    /// Pre-rendered `RateLimit-Policy` item, e.g. `"per-ip";q=100;w=1`; `None`
    /// for a concurrency limit, which the fields cannot describe.
    pub policy_header: Option<HeaderValue>,
    pub metrics: LimitMetrics,
}

impl Rule {
    /// The request limits, then the WebSocket message limit if any: every
    /// limit with counters and metrics of its own.
    pub fn all_limits(&self) -> impl Iterator<Item = &RuleLimit> {
        let messages = self.websocket.messages.as_ref().map(|m| &m.limit);
        self.limits.iter().chain(messages)
    }
}

impl RuleLimit {
    /// Counts one of this limit's decisions (a shadow limit's denial apart).
    pub fn record(&self, decision: &Decision) {
        self.metrics.record(match (decision.allowed, self.mode) {
            (true, _) => DecisionResult::Allowed,
            (false, Mode::Enforce) => DecisionResult::Denied,
            (false, Mode::Shadow) => DecisionResult::ShadowDenied,
        });
    }

    /// `gcra 100/1s burst 100`, `fixed_window 10/1m`, `concurrent 5`.
    pub fn describe(&self) -> String {
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
pub enum Cost {
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
    pub fn of(&self, headers: &http::HeaderMap) -> Option<u64> {
        match self {
            Cost::Fixed(n) => Some(*n),
            Cost::Header { name, max, default } => match headers.get(name) {
                None => Some(*default),
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    .filter(|n| (1..=*max).contains(n)),
            },
        }
    }
}

/// How a denied request is answered.
#[derive(Debug, Clone)]
pub struct DenyResponse {
    pub status: u16,
    /// `None` means the standard JSON body.
    pub body: Option<String>,
    pub content_type: HeaderValue,
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
pub struct Upstream {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    pub tls: bool,
    pub sni: String,
    pub verify_cert: bool,
    pub host_header: Option<HeaderValue>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// Read timeout of upgraded (WebSocket) connections.
    pub tunnel_idle_timeout: Duration,
    /// Round-robin position.
    pub(crate) next: AtomicUsize,
}

impl Upstream {
    /// Where the next request starts in round-robin order.
    pub fn round_robin_start(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The server at round-robin position `index`.
    pub fn server(&self, index: usize) -> SocketAddr {
        self.servers[index % self.servers.len()]
    }
}

impl Runtime {
    /// Points the snapshot's metric handles at `metrics` (a reload compiles
    /// against a scratch registry so that a rejected file leaves no series).
    pub fn bind_metrics(&mut self, metrics: &Metrics) {
        for rule in &mut self.rules {
            rule.metrics = metrics.rule(&rule.name);
            let messages = rule.websocket.messages.as_mut().map(|m| &mut m.limit);
            for limit in rule.limits.iter_mut().chain(messages) {
                limit.metrics = metrics.limit(&rule.name, &limit.name);
            }
        }
    }

    /// What a rule's requests get while Redis fails.
    pub fn on_error(&self, rule: &Rule) -> OnError {
        rule.on_error.unwrap_or(self.store.on_error)
    }

    pub fn rule(&self, index: usize) -> &Rule {
        &self.rules[index]
    }

    pub fn upstream_of(&self, rule: &Rule) -> &Upstream {
        &self.upstreams[rule.upstream]
    }
}
