//! Every Prometheus metric of the gateway, defined here and nowhere else.
//! (Parts beside the gateway register their own in the same registry.)
//!
//! Label values come only from the config (rule, limit and upstream names) and
//! from fixed enums, never from anything a client sends, so a flood of random
//! paths or keys cannot grow the number of series.

use std::sync::OnceLock;
use std::time::Duration;

use crate::policy::OnError;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// How a request ended, from the gateway's point of view. Read back from
/// the access log by replay: the names are the labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Outcome {
    Allowed,
    Limited,
    Exempt,
    ShadowLimited,
    MissingKey,
    /// An API key no consumer has.
    UnknownKey,
    /// A bearer JWT that does not verify.
    InvalidToken,
    /// A request body over the rule's `max_body_bytes`.
    TooLarge,
    NoRoute,
    BadRequest,
    StoreError,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 11] = [
        Outcome::Allowed,
        Outcome::Limited,
        Outcome::Exempt,
        Outcome::ShadowLimited,
        Outcome::MissingKey,
        Outcome::UnknownKey,
        Outcome::InvalidToken,
        Outcome::TooLarge,
        Outcome::NoRoute,
        Outcome::BadRequest,
        Outcome::StoreError,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::Exempt => "exempt",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::MissingKey => "missing_key",
            Outcome::UnknownKey => "unknown_key",
            Outcome::InvalidToken => "invalid_token",
            Outcome::TooLarge => "too_large",
            Outcome::NoRoute => "no_route",
            Outcome::BadRequest => "bad_request",
            Outcome::StoreError => "store_error",
        }
    }
}

/// What one limit said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecisionResult {
    Allowed,
    Denied,
    /// A shadow limit that would have denied.
    ShadowDenied,
}

impl DecisionResult {
    pub(crate) const ALL: [DecisionResult; 3] = [
        DecisionResult::Allowed,
        DecisionResult::Denied,
        DecisionResult::ShadowDenied,
    ];

    fn label(self) -> &'static str {
        match self {
            DecisionResult::Allowed => "allowed",
            DecisionResult::Denied => "denied",
            DecisionResult::ShadowDenied => "shadow_denied",
        }
    }
}

/// What happened to a client WebSocket message under a rule's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageResult {
    Forwarded,
    /// Over the message limit, dropped (`on_limit: drop`).
    Dropped,
    /// Over the message limit, the connection closed (`on_limit: close`).
    Closed,
    /// Over `max_message_bytes`: the connection closed.
    TooBig,
}

impl MessageResult {
    pub(crate) const ALL: [MessageResult; 4] = [
        MessageResult::Forwarded,
        MessageResult::Dropped,
        MessageResult::Closed,
        MessageResult::TooBig,
    ];

    fn label(self) -> &'static str {
        match self {
            MessageResult::Forwarded => "forwarded",
            MessageResult::Dropped => "dropped",
            MessageResult::Closed => "closed",
            MessageResult::TooBig => "too_big",
        }
    }
}

/// How a config reload attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReloadResult {
    Success,
    Failure,
}

impl ReloadResult {
    fn label(self) -> &'static str {
        match self {
            ReloadResult::Success => "success",
            ReloadResult::Failure => "failure",
        }
    }
}

/// Why the gateway closed a client connection itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionClose {
    /// The request's headers did not arrive within `server.header_timeout`.
    HeaderTimeout,
    /// No request began within `server.idle_timeout`.
    IdleTimeout,
    /// The client IP already had `server.max_connections_per_ip` open.
    PerIpLimit,
    /// A TLS handshake did not finish within `server.handshake_timeout`.
    HandshakeTimeout,
    /// A TLS handshake failed (no common version or cipher, not TLS at all).
    HandshakeFailed,
}

impl ConnectionClose {
    pub(crate) const ALL: [ConnectionClose; 5] = [
        ConnectionClose::HeaderTimeout,
        ConnectionClose::IdleTimeout,
        ConnectionClose::PerIpLimit,
        ConnectionClose::HandshakeTimeout,
        ConnectionClose::HandshakeFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            ConnectionClose::HeaderTimeout => "header_timeout",
            ConnectionClose::IdleTimeout => "idle_timeout",
            ConnectionClose::PerIpLimit => "max_connections_per_ip",
            ConnectionClose::HandshakeTimeout => "handshake_timeout",
            ConnectionClose::HandshakeFailed => "handshake_failed",
        }
    }
}

/// Connections the gateway closed itself, by reason; cloned into each
/// connection so that closing one looks nothing up.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionMetrics {
    closed: [IntCounter; ConnectionClose::ALL.len()],
}

impl ConnectionMetrics {
    pub(crate) fn closed(&self, why: ConnectionClose) {
        self.closed[why as usize].inc();
    }
}

/// Counters of one rule, resolved once when its snapshot is bound to the
/// gateway's registry (`Snapshot::bind_metrics`), so the request path never
/// looks a label set up.
#[derive(Debug, Clone)]
pub(crate) struct RuleMetrics {
    /// Requests without a plan (`plan=""`).
    by_outcome: [IntCounter; Outcome::ALL.len()],
    /// Per plan (snapshot order), for a rule that tells consumers apart.
    by_plan: Vec<[IntCounter; Outcome::ALL.len()]>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    websockets: IntGauge,
    degraded: [IntCounter; OnError::ALL.len()],
    websocket_messages: [IntCounter; MessageResult::ALL.len()],
}

impl RuleMetrics {
    /// Handles that count into no registry a gateway exposes: what a compiled
    /// snapshot holds until it is bound, as it is swapped in. Compiling a
    /// config thus touches no registry, and a snapshot that is never served
    /// (`check`, a rejected reload) leaves no series behind.
    pub(crate) fn unbound() -> Self {
        unbound().0.clone()
    }

    /// Counts a client WebSocket message of a rule with message limits.
    pub(crate) fn websocket_message(&self, result: MessageResult) {
        self.websocket_messages[result as usize].inc();
    }

    /// Counts a request decided under `on_error` because Redis failed.
    pub(crate) fn degraded(&self, on_error: OnError) {
        self.degraded[on_error as usize].inc();
    }

    /// Counts a request's outcome, under its consumer's plan if it has one.
    pub(crate) fn record(&self, outcome: Outcome, plan: Option<usize>) {
        let counters = plan
            .and_then(|p| self.by_plan.get(p))
            .unwrap_or(&self.by_outcome);
        counters[outcome as usize].inc();
    }

    /// Requests so far by outcome (over every plan), for the dashboard.
    pub(crate) fn totals(&self) -> [(Outcome, u64); Outcome::ALL.len()] {
        Outcome::ALL.map(|outcome| {
            let plans = self.by_plan.iter().map(|p| p[outcome as usize].get());
            (
                outcome,
                self.by_outcome[outcome as usize].get() + plans.sum::<u64>(),
            )
        })
    }

    pub(crate) fn observe_request(&self, took: Duration) {
        self.request_duration.observe(took.as_secs_f64());
    }

    pub(crate) fn observe_upstream(&self, took: Duration) {
        self.upstream_duration.observe(took.as_secs_f64());
    }

    /// Open WebSocket (upgraded) connections of the rule.
    pub(crate) fn websockets(&self) -> &IntGauge {
        &self.websockets
    }
}

/// Decision counters of one limit, and its penalty box's.
#[derive(Debug, Clone)]
pub struct LimitMetrics {
    by_result: [IntCounter; DecisionResult::ALL.len()],
    /// Bans started, by `BanMode`.
    bans: [IntCounter; 2],
    /// Requests a running ban refused (in shadow: would have), by `BanMode`.
    ban_refusals: [IntCounter; 2],
}

/// Whether a ban refuses requests or is only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BanMode {
    Enforce,
    Shadow,
}

impl BanMode {
    const ALL: [BanMode; 2] = [BanMode::Enforce, BanMode::Shadow];

    fn label(self) -> &'static str {
        match self {
            BanMode::Enforce => "enforce",
            BanMode::Shadow => "shadow",
        }
    }
}

impl LimitMetrics {
    /// See [`RuleMetrics::unbound`].
    pub(crate) fn unbound() -> Self {
        unbound().1.clone()
    }

    pub(crate) fn record(&self, result: DecisionResult) {
        self.by_result[result as usize].inc();
    }

    pub(crate) fn ban_started(&self, mode: BanMode) {
        self.bans[mode as usize].inc();
    }

    pub(crate) fn ban_refused(&self, mode: BanMode) {
        self.ban_refusals[mode as usize].inc();
    }
}

/// The metric families a rule's handles are taken from.
struct RuleFamilies<'a> {
    requests: &'a IntCounterVec,
    request_duration: &'a HistogramVec,
    upstream_duration: &'a HistogramVec,
    websockets: &'a IntGaugeVec,
    degraded: &'a IntCounterVec,
    websocket_messages: &'a IntCounterVec,
}

impl RuleFamilies<'_> {
    /// The handles of `rule`, its requests also per plan of `plans`.
    fn bind(&self, rule: &str, plans: &[&str]) -> RuleMetrics {
        let outcomes = |plan: &str| {
            Outcome::ALL.map(|o| self.requests.with_label_values(&[rule, o.label(), plan]))
        };
        RuleMetrics {
            by_outcome: outcomes(""),
            by_plan: plans.iter().map(|plan| outcomes(plan)).collect(),
            request_duration: self.request_duration.with_label_values(&[rule]),
            upstream_duration: self.upstream_duration.with_label_values(&[rule]),
            websockets: self.websockets.with_label_values(&[rule]),
            degraded: OnError::ALL.map(|o| self.degraded.with_label_values(&[rule, o.label()])),
            websocket_messages: MessageResult::ALL.map(|m| {
                self.websocket_messages
                    .with_label_values(&[rule, m.label()])
            }),
        }
    }
}

/// One set of unbound handles, cloned into every compiled rule and limit: a
/// registry of their own that nobody gathers, made once per process.
fn unbound() -> &'static (RuleMetrics, LimitMetrics) {
    static UNBOUND: OnceLock<(RuleMetrics, LimitMetrics)> = OnceLock::new();
    UNBOUND.get_or_init(|| {
        let scratch = Metrics::new();
        (scratch.rule("", &[]), scratch.limit("", ""))
    })
}

/// The limiter store's health: Redis latency and failures, the circuit
/// breaker, and the decisions taken without the shared store.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    pub(crate) memory_duration: Histogram,
    pub(crate) redis_duration: Histogram,
    pub redis_timeouts: IntCounter,
    pub redis_errors: IntCounter,
    /// 0 closed, 1 open, 2 half-open (probing).
    pub breaker_state: IntGauge,
    pub breaker_opened: IntCounter,
}

/// The gateway's registry. One per gateway (not process-global) so that several
/// gateways in one test process do not see each other's counts.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    decisions: IntCounterVec,
    bans: IntCounterVec,
    ban_refusals: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    /// 1 while a server may get requests (healthy and not ejected), else 0.
    upstream_server_healthy: IntGaugeVec,
    /// Access log lines dropped because the writer fell behind.
    pub(crate) access_log_dropped: IntCounter,
    reloads: IntCounterVec,
    websockets: IntGaugeVec,
    degraded: IntCounterVec,
    websocket_messages: IntCounterVec,
    pub(crate) config_generation: IntGauge,
    pub(crate) last_reload_success: IntGauge,
    pub(crate) tracked_keys: IntGauge,
    pub(crate) store_evictions: IntCounter,
    pub store: StoreMetrics,
    pub(crate) connections: ConnectionMetrics,
    /// Requests that matched no rule or were refused before routing.
    unrouted: RuleMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency buckets from 100 µs to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Limiter decisions are fast; buckets from 1 µs to 100 ms.
const DECISION_BUCKETS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001,
    0.0025, 0.005, 0.01, 0.025, 0.1,
];

/// Registers a collector; names are unique by construction in this module.
fn register<C: Collector + Clone + 'static>(registry: &Registry, collector: C) -> C {
    if let Err(e) = registry.register(Box::new(collector.clone())) {
        unreachable!("metric definitions in this module are unique and valid: {e}");
    }
    collector
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
    register(registry, vec)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let vec = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
    register(registry, vec)
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help)
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
    register(registry, g)
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tollgate".into()), None).unwrap_or_else(|_| Registry::new());
        let r = &registry;
        let requests = counter_vec(
            r,
            "requests_total",
            "Requests by matched rule and how the gateway handled them",
            &["rule", "outcome", "plan"],
        );
        let decisions = counter_vec(
            r,
            "decisions_total",
            "Limit decisions by rule, limit and result",
            &["rule", "limit", "result"],
        );
        let bans = counter_vec(
            r,
            "bans_total",
            "Bans started by rule, limit and mode (shadow: bans that would have started)",
            &["rule", "limit", "mode"],
        );
        let ban_refusals = counter_vec(
            r,
            "ban_refusals_total",
            "Requests refused by a running ban, by rule, limit and mode (shadow: would have been)",
            &["rule", "limit", "mode"],
        );
        let request_duration = histogram_vec(
            r,
            "request_duration_seconds",
            "Time from the request's arrival to the end of its response, by rule",
            &["rule"],
            SECONDS_BUCKETS,
        );
        let upstream_duration = histogram_vec(
            r,
            "upstream_duration_seconds",
            "Time from choosing an upstream server to receiving its response header, by rule",
            &["rule"],
            SECONDS_BUCKETS,
        );
        let decision_duration = histogram_vec(
            r,
            "limiter_decision_duration_seconds",
            "Time to decide all limits of a request, by store",
            &["store"],
            DECISION_BUCKETS,
        );
        let upstream_errors = counter_vec(
            r,
            "upstream_errors_total",
            "Failed attempts to reach or read an upstream",
            &["upstream"],
        );
        let reloads = counter_vec(
            r,
            "config_reloads_total",
            "Config reload attempts by result",
            &["result"],
        );
        let access_log_dropped = register(
            r,
            IntCounter::new(
                "access_log_dropped_total",
                "Access log lines dropped because the writer fell behind",
            )
            .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}")),
        );
        let upstream_server_healthy = IntGaugeVec::new(
            Opts::new(
                "upstream_server_healthy",
                "1 while an upstream server gets requests (healthy, not ejected), else 0",
            ),
            &["upstream", "server"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        let upstream_server_healthy = register(r, upstream_server_healthy);
        let websockets = IntGaugeVec::new(
            Opts::new(
                "websocket_connections",
                "Open WebSocket connections by rule",
            ),
            &["rule"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        let websockets = register(r, websockets);
        let config_generation = gauge(
            r,
            "config_generation",
            "Generation of the running config (1 at start)",
        );
        let last_reload_success = gauge(
            r,
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load",
        );
        let tracked_keys = gauge(r, "tracked_keys", "Limiter states held in memory");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)
                .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
            register(r, c)
        };
        let store_evictions = counter(
            "store_evictions_total",
            "Limiter states evicted to stay within store.memory.max_keys",
        );
        let websocket_messages = counter_vec(
            r,
            "websocket_messages_total",
            "Client WebSocket messages by rule and result",
            &["rule", "result"],
        );
        let degraded = counter_vec(
            r,
            "degraded_decisions_total",
            "Requests decided under on_error because Redis failed, by rule and on_error",
            &["rule", "on_error"],
        );
        let redis_errors = counter_vec(
            r,
            "redis_errors_total",
            "Redis calls of the limiter that failed, by reason (timeout, error)",
            &["reason"],
        );
        let store = StoreMetrics {
            memory_duration: decision_duration.with_label_values(&["memory"]),
            redis_duration: decision_duration.with_label_values(&["redis"]),
            redis_timeouts: redis_errors.with_label_values(&["timeout"]),
            redis_errors: redis_errors.with_label_values(&["error"]),
            breaker_state: gauge(
                r,
                "redis_breaker_state",
                "Circuit breaker in front of Redis: 0 closed, 1 open, 2 half-open",
            ),
            breaker_opened: counter(
                "redis_breaker_opened_total",
                "Times the circuit breaker in front of Redis opened",
            ),
        };
        let connections_closed = counter_vec(
            r,
            "connections_closed_total",
            "Client connections the gateway closed itself, by reason",
            &["reason"],
        );
        let connections = ConnectionMetrics {
            closed: ConnectionClose::ALL
                .map(|c| connections_closed.with_label_values(&[c.label()])),
        };
        let unrouted = RuleFamilies {
            requests: &requests,
            request_duration: &request_duration,
            upstream_duration: &upstream_duration,
            websockets: &websockets,
            degraded: &degraded,
            websocket_messages: &websocket_messages,
        }
        .bind("", &[]);
        Metrics {
            registry,
            requests,
            decisions,
            bans,
            ban_refusals,
            request_duration,
            upstream_duration,
            upstream_errors,
            upstream_server_healthy,
            access_log_dropped,
            reloads,
            websockets,
            degraded,
            websocket_messages,
            config_generation,
            last_reload_success,
            tracked_keys,
            store_evictions,
            store,
            connections,
            unrouted,
        }
    }

    /// Handles for a rule named in the config, with its requests counted per
    /// plan of `plans` (none for a rule that does not tell consumers apart).
    pub(crate) fn rule(&self, name: &str, plans: &[&str]) -> RuleMetrics {
        RuleFamilies {
            requests: &self.requests,
            request_duration: &self.request_duration,
            upstream_duration: &self.upstream_duration,
            websockets: &self.websockets,
            degraded: &self.degraded,
            websocket_messages: &self.websocket_messages,
        }
        .bind(name, plans)
    }

    /// Handles for a limit named in the config.
    pub fn limit(&self, rule: &str, limit: &str) -> LimitMetrics {
        LimitMetrics {
            by_result: DecisionResult::ALL
                .map(|r| self.decisions.with_label_values(&[rule, limit, r.label()])),
            bans: BanMode::ALL.map(|m| self.bans.with_label_values(&[rule, limit, m.label()])),
            ban_refusals: BanMode::ALL.map(|m| {
                self.ban_refusals
                    .with_label_values(&[rule, limit, m.label()])
            }),
        }
    }

    pub(crate) fn upstream_error(&self, upstream: &str) {
        self.upstream_errors.with_label_values(&[upstream]).inc();
    }

    pub(crate) fn reload(&self, result: ReloadResult) {
        self.reloads.with_label_values(&[result.label()]).inc();
    }

    /// Drops the series of a rule that left the config, so removed names do
    /// not linger in the exposition. Open WebSockets of the rule keep theirs.
    /// Its requests under plans are forgotten with the plans (`forget_plan`).
    pub(crate) fn forget_rule(&self, rule: &str, limits: &[&str]) {
        self.forget_plan(rule, "");
        let _ = self.request_duration.remove_label_values(&[rule]);
        let _ = self.upstream_duration.remove_label_values(&[rule]);
        for on_error in OnError::ALL {
            let _ = self.degraded.remove_label_values(&[rule, on_error.label()]);
        }
        for result in MessageResult::ALL {
            let _ = self
                .websocket_messages
                .remove_label_values(&[rule, result.label()]);
        }
        self.forget_idle_websockets(rule);
        for limit in limits {
            self.forget_limit(rule, limit);
        }
    }

    /// Drops the decision series of a limit that left the config.
    pub(crate) fn forget_limit(&self, rule: &str, limit: &str) {
        for result in DecisionResult::ALL {
            let _ = self
                .decisions
                .remove_label_values(&[rule, limit, result.label()]);
        }
        for mode in BanMode::ALL {
            let _ = self.bans.remove_label_values(&[rule, limit, mode.label()]);
            let _ = self
                .ban_refusals
                .remove_label_values(&[rule, limit, mode.label()]);
        }
    }

    /// Drops the error series of an upstream that left the config.
    pub(crate) fn forget_upstream(&self, upstream: &str) {
        let _ = self.upstream_errors.remove_label_values(&[upstream]);
    }

    /// Sets whether an upstream's server (its address from the config) gets
    /// requests.
    pub(crate) fn server_health(&self, upstream: &str, server: &str, available: bool) {
        self.upstream_server_healthy
            .with_label_values(&[upstream, server])
            .set(i64::from(available));
    }

    /// Drops the health series of a server that left its upstream.
    pub(crate) fn forget_server(&self, upstream: &str, server: &str) {
        let _ = self
            .upstream_server_healthy
            .remove_label_values(&[upstream, server]);
    }

    /// Drops the WebSocket gauge of a rule that left the config once its last
    /// connection has closed.
    pub(crate) fn forget_idle_websockets(&self, rule: &str) {
        if self.websockets.with_label_values(&[rule]).get() == 0 {
            let _ = self.websockets.remove_label_values(&[rule]);
        }
    }

    /// Counters for requests that never reached a rule (`rule=""`).
    /// Drops a rule's request counts under a plan it no longer has.
    pub(crate) fn forget_plan(&self, rule: &str, plan: &str) {
        for outcome in Outcome::ALL {
            let _ = self
                .requests
                .remove_label_values(&[rule, outcome.label(), plan]);
        }
    }

    pub(crate) fn unrouted(&self) -> &RuleMetrics {
        &self.unrouted
    }

    /// The registry `/metrics` encodes, for parts beside the gateway that
    /// define metrics of their own (each in one place of its own).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_and_result_indices_match_their_position() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
        for (i, r) in DecisionResult::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        for (i, c) in ConnectionClose::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode()).unwrap()
    }

    #[test]
    fn recorded_outcomes_appear_in_the_exposition() {
        let m = Metrics::new();
        m.rule("api", &["pro"]).record(Outcome::Limited, None);
        m.rule("api", &["pro"]).record(Outcome::Allowed, Some(0));
        m.limit("api", "per-ip").record(DecisionResult::Denied);
        let text = text(&m);
        assert!(
            text.contains(r#"tollgate_requests_total{outcome="limited",plan="",rule="api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_requests_total{outcome="allowed",plan="pro",rule="api"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tollgate_decisions_total{limit="per-ip",result="denied",rule="api"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn forgotten_rules_leave_the_exposition() {
        let m = Metrics::new();
        m.rule("gone", &["pro"]).record(Outcome::Allowed, Some(0));
        m.limit("gone", "l").record(DecisionResult::Allowed);
        m.forget_rule("gone", &["l"]);
        m.forget_plan("gone", "pro");
        let text = text(&m);
        assert!(!text.contains("rule=\"gone\""), "{text}");
    }
}
