//! Every Prometheus metric of the demo upstream, defined here and nowhere
//! else (the gateway's own are in the core's `metrics` module, which knows
//! nothing of the demo). They are registered in the gateway's registry only
//! when the demo runs, so the admin listener's `/metrics` shows them beside
//! the gateway's, under the registry's `tollgate_` prefix. Their labels come
//! from fixed values, never from what a client sends.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// The demo upstream's counters.
#[derive(Debug, Clone)]
pub struct DemoMetrics {
    accepted: IntCounter,
    rejected: IntCounter,
    clients: IntGauge,
    sent: IntCounter,
    dropped: IntCounter,
}

/// Counts a WebSocket client for as long as it lives.
pub(crate) struct ClientGuard(IntGauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl DemoMetrics {
    /// Defines the demo's metrics in `registry`. Fails only when they are
    /// registered there already (one demo per gateway).
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let events = IntCounterVec::new(
            Opts::new(
                "demo_events_total",
                "Vehicle events the demo upstream accepted or rejected",
            ),
            &["result"],
        )?;
        registry.register(Box::new(events.clone()))?;
        let clients = IntGauge::new(
            "demo_websocket_clients",
            "WebSocket clients of the demo upstream",
        )?;
        registry.register(Box::new(clients.clone()))?;
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(DemoMetrics {
            accepted: events.with_label_values(&["accepted"]),
            rejected: events.with_label_values(&["rejected"]),
            clients,
            sent: counter(
                "demo_messages_sent_total",
                "Messages sent to demo WebSocket clients",
            )?,
            dropped: counter(
                "demo_messages_dropped_total",
                "Messages slow demo WebSocket clients lost (oldest first)",
            )?,
        })
    }

    pub(crate) fn accepted(&self, events: usize) {
        self.accepted.inc_by(events as u64);
    }

    pub(crate) fn rejected(&self, events: usize) {
        self.rejected.inc_by(events as u64);
    }

    pub(crate) fn client_connected(&self) -> ClientGuard {
        self.clients.inc();
        ClientGuard(self.clients.clone())
    }

    pub(crate) fn sent(&self, messages: u64) {
        self.sent.inc_by(messages);
    }

    pub(crate) fn dropped(&self, messages: u64) {
        self.dropped.inc_by(messages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_metrics_appear_in_the_registry_they_are_registered_in() {
        let registry = Registry::new_custom(Some("tollgate".into()), None).unwrap();
        let metrics = DemoMetrics::register(&registry).unwrap();
        metrics.accepted(2);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|family| family.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "tollgate_demo_events_total",
                "tollgate_demo_messages_dropped_total",
                "tollgate_demo_messages_sent_total",
                "tollgate_demo_websocket_clients",
            ]
        );
    }

    #[test]
    fn a_registry_takes_the_demo_metrics_once() {
        let registry = Registry::new();
        assert!(DemoMetrics::register(&registry).is_ok());
        assert!(DemoMetrics::register(&registry).is_err());
    }
}
