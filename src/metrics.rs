//! Every Prometheus metric of the gateway, defined here and nowhere else.
//!
//! Label values come only from the config (rule, limit and upstream names) and
//! from fixed enums, never from anything a client sends, so a flood of random
//! paths or keys cannot grow the number of series.

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Limited,
    Exempt,
    ShadowLimited,
    MissingKey,
    NoRoute,
    BadRequest,
    StoreError,
}

impl Outcome {
    pub const ALL: [Outcome; 8] = [
        Outcome::Allowed,
        Outcome::Limited,
        Outcome::Exempt,
        Outcome::ShadowLimited,
        Outcome::MissingKey,
        Outcome::NoRoute,
        Outcome::BadRequest,
        Outcome::StoreError,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Limited => "limited",
            Outcome::Exempt => "exempt",
            Outcome::ShadowLimited => "shadow_limited",
            Outcome::MissingKey => "missing_key",
            Outcome::NoRoute => "no_route",
            Outcome::BadRequest => "bad_request",
            Outcome::StoreError => "store_error",
        }
    }
}

/// Counters of one rule, resolved once at config compile time so the request
/// path never looks a label set up.
#[derive(Debug, Clone)]
pub struct RuleMetrics {
    by_outcome: [IntCounter; Outcome::ALL.len()],
}

impl RuleMetrics {
    pub fn record(&self, outcome: Outcome) {
        self.by_outcome[outcome as usize].inc();
    }
}

/// The gateway's registry. One per gateway (not process-global) so that several
/// gateways in one test process do not see each other's counts.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
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

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("tollgate".into()), None).unwrap_or_else(|_| Registry::new());
        let requests = IntCounterVec::new(
            Opts::new(
                "requests_total",
                "Requests by matched rule and how the gateway handled them",
            ),
            &["rule", "outcome"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition is valid: {e}"));
        // Registration only fails for duplicate names, which this module rules out.
        let _ = registry.register(Box::new(requests.clone()));
        let unrouted = Self::rule_metrics_of(&requests, "");
        Metrics {
            registry,
            requests,
            unrouted,
        }
    }

    fn rule_metrics_of(requests: &IntCounterVec, rule: &str) -> RuleMetrics {
        RuleMetrics {
            by_outcome: Outcome::ALL.map(|o| requests.with_label_values(&[rule, o.label()])),
        }
    }

    /// Counters for a rule named in the config.
    pub fn rule(&self, name: &str) -> RuleMetrics {
        Self::rule_metrics_of(&self.requests, name)
    }

    /// Counters for requests that never reached a rule (`rule=""`).
    pub fn unrouted(&self) -> &RuleMetrics {
        &self.unrouted
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Vec<u8> {
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
    fn outcome_indices_match_their_position() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(*o as usize, i);
        }
    }

    #[test]
    fn recorded_outcomes_appear_in_the_exposition() {
        let m = Metrics::new();
        m.rule("api").record(Outcome::Limited);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(
            text.contains(r#"tollgate_requests_total{outcome="limited",rule="api"} 1"#),
            "{text}"
        );
    }
}
