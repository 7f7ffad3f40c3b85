//! What a failing shared store means, in two layers. [`Guarded`] puts a
//! circuit breaker in front of a store's calls, so a dead Redis costs one
//! timeout per cool-down rather than one per request; [`Failover`] answers
//! for a primary that failed (or was not asked) as `on_error` says, from a
//! fallback for `on_error: local`. The breaker guards each call to the store
//! itself, below batching: a request served from an allowance asks nothing,
//! so it neither waits for the breaker nor counts as a probe.

use std::time::Duration;

use crate::limit::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::limit::{Check, Decisions, MonotonicClock, Permit, Store, StoreError};
use crate::metrics::StoreMetrics;
use crate::policy::OnError;

/// How often the background probe looks at a closed breaker at most: a
/// cool-down of a millisecond need not wake it a thousand times a second.
const MIN_PROBE_POLL: Duration = Duration::from_millis(10);

/// A store behind a circuit breaker. Its calls, failures and breaker state
/// are the `tollgate_redis_*` metrics: Redis is the store it guards.
pub(crate) struct Guarded<S> {
    inner: S,
    breaker: Breaker,
    /// What a background probe may take: the decision timeout, so that a
    /// store too slow for decisions keeps the breaker open.
    probe_timeout: Duration,
    clock: MonotonicClock,
    metrics: StoreMetrics,
}

impl<S: Store> Guarded<S> {
    pub(crate) fn new(
        inner: S,
        breaker: BreakerSettings,
        probe_timeout: Duration,
        clock: MonotonicClock,
        metrics: StoreMetrics,
    ) -> Self {
        Guarded {
            inner,
            breaker: Breaker::new(breaker),
            probe_timeout,
            clock,
            metrics,
        }
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Probes the store while the breaker is open, until dropped. Requests
    /// only probe when they come; this closes the breaker as soon as the
    /// store answers a ping, whatever the traffic. It claims each cool-down's
    /// probe as a request would, so there is still at most one probe per
    /// cool-down.
    pub(crate) async fn keep_probing(&self) {
        let poll = self.breaker.cooldown().max(MIN_PROBE_POLL);
        loop {
            let wait = match self.breaker.probe_due_in(self.clock.now()) {
                // Closed: look again within a cool-down of its opening.
                None => poll,
                Some(wait) if !wait.is_zero() => wait,
                Some(_) => {
                    self.probe().await;
                    self.breaker
                        .probe_due_in(self.clock.now())
                        .unwrap_or(poll)
                        .max(Duration::from_millis(1))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One background probe.
    async fn probe(&self) {
        if !self.breaker.admit(self.clock.now()) {
            // A request took this cool-down's probe.
            return;
        }
        match self.inner.ping(self.probe_timeout).await {
            Ok(()) => {
                let was_open = self.breaker.state() != BreakerState::Closed;
                self.succeeded();
                if was_open {
                    tracing::info!("redis answers again: circuit breaker closed");
                }
            }
            Err(failure) => {
                // Debug only: an idle gateway would otherwise log every
                // cool-down for as long as Redis is down.
                tracing::debug!("background probe of redis failed: {failure}");
                self.failed(&failure);
            }
        }
    }

    fn succeeded(&self) {
        self.breaker.succeeded();
        self.show_breaker();
    }

    /// Counts a failed call and tells the breaker; true when this call
    /// opened it (or reopened it after a probe).
    fn failed(&self, failure: &StoreError) -> bool {
        match failure {
            StoreError::Timeout => self.metrics.redis_timeouts.inc(),
            StoreError::Unavailable(_) => self.metrics.redis_errors.inc(),
            // Another breaker's refusal: not this store's failure.
            StoreError::BreakerOpen => return false,
        }
        let opened = self.breaker.failed(self.clock.now());
        if opened {
            self.metrics.breaker_opened.inc();
        }
        self.show_breaker();
        opened
    }

    fn show_breaker(&self) {
        let state = self.breaker.state() as i64;
        if self.metrics.breaker_state.get() != state {
            self.metrics.breaker_state.set(state);
        }
    }
}

impl<S: Store> Store for Guarded<S> {
    /// Fails at once with [`StoreError::BreakerOpen`] while the breaker
    /// keeps the store from being asked.
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        if !self.breaker.admit(self.clock.now()) {
            return Err(StoreError::BreakerOpen);
        }
        let failure = match self.inner.decide(checks).await {
            Ok(decided) => {
                self.succeeded();
                return Ok(decided);
            }
            Err(failure) => failure,
        };
        if let StoreError::Unavailable(e) = &failure {
            tracing::warn!("redis limiter call failed: {e}");
        }
        if self.failed(&failure) {
            tracing::warn!("redis failing: circuit breaker open, on_error applies");
        }
        Err(failure)
    }

    fn release_permits(&self, permits: &[Permit]) {
        self.inner.release_permits(permits);
    }

    /// Asks the store itself, whatever the breaker says.
    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.inner.ping(timeout).await
    }
}

/// What the gateway's store said about a request.
#[derive(Debug)]
pub enum StoreAnswer {
    /// Decided by the configured store.
    Decided(Decisions),
    /// The shared store failed (or its breaker is open): this is what
    /// `on_error` says, with the fallback's decisions for `on_error: local`.
    Degraded(OnError, Option<Decisions>),
}

/// A primary store and the fallback `on_error: local` decides with. Not a
/// [`Store`] itself: its answer says more than decisions (whether the primary
/// failed, and what `on_error` made of it), and it never fails.
pub(crate) struct Failover<P, F> {
    primary: P,
    fallback: F,
}

impl<P: Store, F: Store> Failover<P, F> {
    pub(crate) fn new(primary: P, fallback: F) -> Self {
        Failover { primary, fallback }
    }

    pub(crate) fn primary(&self) -> &P {
        &self.primary
    }

    /// Decides `checks` with the primary; `on_error` (the rule's, else the
    /// store's) says what its failure means. A fallback that fails too (the
    /// memory store never does) decides nothing: the request goes through
    /// unlimited, as with `on_error: allow`.
    pub(crate) async fn decide(&self, checks: &[Check<'_>], on_error: OnError) -> StoreAnswer {
        if let Ok(decided) = self.primary.decide(checks).await {
            return StoreAnswer::Decided(decided);
        }
        let local = match on_error {
            OnError::Local => self.fallback.decide(checks).await.ok(),
            OnError::Allow | OnError::Deny => None,
        };
        StoreAnswer::Degraded(on_error, local)
    }

    /// Gives permits back to whichever of the two took them.
    pub(crate) fn release_permits(&self, permits: &[Permit]) {
        self.primary.release_permits(permits);
        self.fallback.release_permits(permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClientKey;
    use crate::limit::{FixedWindow, LimitId, Limiter, MemoryStore, SyncMode};
    use crate::metrics::Metrics;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A store that is down: every call fails, and is counted.
    #[derive(Default)]
    struct Down {
        calls: AtomicUsize,
    }

    impl Store for Down {
        async fn decide(&self, _: &[Check<'_>]) -> Result<Decisions, StoreError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            Err(StoreError::Unavailable("down".into()))
        }

        fn release_permits(&self, _: &[Permit]) {}
    }

    fn checks() -> [Check<'static>; 1] {
        [Check {
            limit: LimitId(1),
            limiter: Limiter::FixedWindow(FixedWindow::new(3_600_000_000_000, 10)),
            key: ClientKey::global(),
            cost: 1,
            enforced: true,
            sync: SyncMode::Exact,
            ban: None,
        }]
    }

    fn guarded(down: Arc<Down>, metrics: &Metrics) -> Guarded<Arc<Down>> {
        let breaker = BreakerSettings {
            failures: 2,
            cooldown: Duration::from_secs(3600),
        };
        let clock = MonotonicClock::default();
        Guarded::new(down, breaker, Duration::ZERO, clock, metrics.store.clone())
    }

    #[tokio::test]
    async fn an_open_breaker_keeps_the_store_from_being_asked() {
        let down = Arc::new(Down::default());
        let metrics = Metrics::new();
        let store = guarded(down.clone(), &metrics);
        for _ in 0..5 {
            assert!(store.decide(&checks()).await.is_err());
        }
        assert_eq!(down.calls.load(Ordering::Relaxed), 2, "opened after two");
        assert_eq!(store.breaker_state(), BreakerState::Open);
        assert_eq!(metrics.store.redis_errors.get(), 2);
        assert_eq!(metrics.store.breaker_opened.get(), 1);
    }

    #[tokio::test]
    async fn each_on_error_policy_gets_its_answer_from_a_failed_primary() {
        let failover = Failover::new(Down::default(), MemoryStore::default());
        let local = failover.decide(&checks(), OnError::Local).await;
        assert!(
            matches!(&local, StoreAnswer::Degraded(OnError::Local, Some(d)) if d.decisions[0].allowed),
            "{local:?}"
        );
        for on_error in [OnError::Allow, OnError::Deny] {
            let answer = failover.decide(&checks(), on_error).await;
            assert!(
                matches!(answer, StoreAnswer::Degraded(mode, None) if mode == on_error),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_primary_that_answers_decides() {
        let failover = Failover::new(MemoryStore::default(), Down::default());
        let answer = failover.decide(&checks(), OnError::Deny).await;
        assert!(matches!(answer, StoreAnswer::Decided(_)), "{answer:?}");
    }
}
