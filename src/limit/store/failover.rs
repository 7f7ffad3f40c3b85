//! The limiter store the proxy talks to: the memory store, or Redis behind a
//! timeout and a circuit breaker with `on_error` deciding what a failure means
//! (DESIGN promise 8). A dead Redis costs one timeout per breaker cool-down,
//! not one per request.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::AbortHandle;

use arrayvec::ArrayVec;

use crate::policy::OnError;

use super::batch::{Allowances, Slot};
use super::redis::RedisStore;
use crate::limit::breaker::{Breaker, BreakerSettings, BreakerState};
use crate::limit::{
    Check, Decision, Decisions, MemoryStore, MonotonicClock, Permit, Store, StoreError, SyncMode,
    MAX_CHECKS,
};
use crate::metrics::StoreMetrics;

/// How often the background probe looks at a closed breaker at most: a
/// cool-down of a millisecond need not wake it a thousand times a second.
const MIN_PROBE_POLL: Duration = Duration::from_millis(10);

/// Redis with its breaker and this gateway's batched allowances.
struct Shared {
    redis: RedisStore,
    breaker: Breaker,
    /// `sync: batched` units this gateway holds.
    allowances: Allowances,
}

/// What the store said about a request.
#[derive(Debug)]
pub enum StoreAnswer {
    /// Decided by the configured store.
    Decided(Decisions),
    /// Redis failed (or the breaker is open); this is what `on_error` says.
    Degraded(OnError, Option<Decisions>),
}

/// The limiter store as the proxy sees it.
pub struct Limits {
    /// Always present: the store itself, or the fallback of `on_error: local`.
    pub memory: Arc<MemoryStore>,
    shared: Option<Arc<Shared>>,
    clock: MonotonicClock,
    metrics: StoreMetrics,
}

/// Health of the store, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    pub backend: &'static str,
    /// Whether the shared store answers (always true for memory).
    pub healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<&'static str>,
}

impl Limits {
    pub fn memory(memory: MemoryStore, clock: MonotonicClock, metrics: StoreMetrics) -> Self {
        Limits {
            memory: Arc::new(memory),
            shared: None,
            clock,
            metrics,
        }
    }

    /// Redis in front, `memory` for `on_error: local`.
    pub fn redis(
        redis: RedisStore,
        breaker: BreakerSettings,
        memory: MemoryStore,
        clock: MonotonicClock,
        metrics: StoreMetrics,
    ) -> Self {
        Limits {
            memory: Arc::new(memory),
            shared: Some(Arc::new(Shared {
                redis,
                breaker: Breaker::new(breaker),
                allowances: Allowances::default(),
            })),
            clock,
            metrics,
        }
    }

    /// Whether a circuit breaker stands in front of a shared store.
    pub fn has_breaker(&self) -> bool {
        self.shared.is_some()
    }

    /// Decides `checks`; `on_error` (the rule's, else the store's) applies
    /// when Redis cannot. Checks with `sync: batched` are admitted from this
    /// gateway's allowances where they can (see `store::batch`).
    pub async fn decide(&self, checks: &[Check<'_>], on_error: OnError) -> StoreAnswer {
        let Some(shared) = &self.shared else {
            return StoreAnswer::Decided(self.decide_locally(checks));
        };
        let batch_of = |i: usize| match checks[i].sync {
            SyncMode::Batched(batch) => batch,
            SyncMode::Exact => 0,
        };
        if checks.iter().all(|c| c.sync.batch_for(c.cost).is_none()) {
            return self.ask_redis(shared, checks, on_error).await;
        }
        let now = self.clock.now();
        // From this gateway's allowances first.
        let mut local: ArrayVec<Option<(Slot, u64)>, MAX_CHECKS> = ArrayVec::new();
        for check in checks {
            let taken = check.sync.batch_for(check.cost).and_then(|_| {
                let slot = shared.allowances.slot(check.limit, &check.key);
                shared
                    .allowances
                    .take(slot, check.cost, now)
                    .map(|left| (slot, left))
            });
            local.push(taken);
        }
        let untake = |local: &[Option<(Slot, u64)>]| {
            for (i, taken) in local.iter().enumerate() {
                if let Some((slot, _)) = taken {
                    shared.allowances.untake(*slot, checks[i].cost);
                }
            }
        };
        // The rest from Redis; a batched check whose key has no reservation in
        // flight here reserves a batch with it, the others go exact.
        let rest: ArrayVec<usize, MAX_CHECKS> =
            (0..checks.len()).filter(|&i| local[i].is_none()).collect();
        let mut ask: ArrayVec<Check<'_>, MAX_CHECKS> = ArrayVec::new();
        let mut claims: ArrayVec<Option<Slot>, MAX_CHECKS> = ArrayVec::new();
        for &i in &rest {
            let mut check = checks[i].clone();
            let slot = shared.allowances.slot(check.limit, &check.key);
            let claimed =
                check.sync.batch_for(check.cost).is_some() && shared.allowances.claim(slot, now);
            if claimed {
                check.cost += batch_of(i);
            }
            claims.push(claimed.then_some(slot));
            ask.push(check);
        }
        let unclaim = |claims: &[Option<Slot>]| {
            for slot in claims.iter().flatten() {
                shared.allowances.unclaim(*slot);
            }
        };
        let mut answered = if ask.is_empty() {
            Decisions::default()
        } else {
            match self.ask_redis(shared, &ask, on_error).await {
                StoreAnswer::Decided(d) => d,
                StoreAnswer::Degraded(..) => {
                    untake(&local);
                    unclaim(&claims);
                    return self.degrade(on_error, checks);
                }
            }
        };
        let refused = |d: &Decision, c: &Check<'_>| c.enforced && !d.allowed;
        // Retry without reservations only when just a reservation was
        // refused and the request alone still fits.
        let pairs = || answered.decisions.iter().zip(&ask).zip(&claims);
        let exact_refused = pairs().any(|((d, c), claim)| claim.is_none() && refused(d, c));
        let retry = !exact_refused
            && pairs().any(|((d, c), claim)| claim.is_some() && refused(d, c))
            && pairs().zip(&rest).all(|(((d, c), claim), &i)| {
                claim.is_none() || !refused(d, c) || d.remaining >= checks[i].cost
            });
        let mut reserved = true;
        if retry {
            unclaim(&claims);
            for (check, &i) in ask.iter_mut().zip(&rest) {
                check.cost = checks[i].cost;
            }
            answered = match self.ask_redis(shared, &ask, on_error).await {
                StoreAnswer::Decided(d) => d,
                StoreAnswer::Degraded(..) => {
                    untake(&local);
                    return self.degrade(on_error, checks);
                }
            };
            reserved = false;
        }
        let request_denied = answered
            .decisions
            .iter()
            .zip(&ask)
            .any(|(d, c)| refused(d, c));
        if request_denied {
            untake(&local);
            if reserved {
                unclaim(&claims);
            }
        } else if reserved {
            for (k, &i) in rest.iter().enumerate() {
                let Some(slot) = claims[k] else { continue };
                match answered.decisions.get_mut(k) {
                    // The batch is this gateway's to spend: the client may too.
                    Some(d) if d.allowed => {
                        shared.allowances.fill(slot, batch_of(i), now);
                        d.remaining += batch_of(i);
                    }
                    // A refused reservation (a shadow limit's) spent nothing.
                    _ => shared.allowances.unclaim(slot),
                }
            }
        }
        // Put the decisions back in the order of the checks.
        let mut redis_decisions = answered.decisions.into_iter();
        let mut decisions = ArrayVec::new();
        for (i, check) in checks.iter().enumerate() {
            let decision = match local[i] {
                Some((_, left)) => Decision::allowed(check.limiter.quota(), left, 0),
                None => match redis_decisions.next() {
                    Some(d) => d,
                    None => Decision::allowed(check.limiter.quota(), 0, 0),
                },
            };
            decisions.push(decision);
        }
        StoreAnswer::Decided(Decisions {
            decisions,
            permits: answered.permits,
        })
    }

    /// Drops expired `sync: batched` allowances; their unused units lapse.
    pub fn settle(&self) {
        if let Some(shared) = &self.shared {
            let lapsed = shared.allowances.sweep(self.clock.now());
            if lapsed > 0 {
                tracing::debug!(lapsed, "unused batched units lapsed");
            }
        }
    }

    /// One call to Redis behind the breaker and the timeout.
    async fn ask_redis(
        &self,
        shared: &Shared,
        checks: &[Check<'_>],
        on_error: OnError,
    ) -> StoreAnswer {
        if !shared.breaker.admit(self.clock.now()) {
            return self.degrade(on_error, checks);
        }
        let timer = self.metrics.redis_duration.start_timer();
        let failure = match shared.redis.decide(checks, &|| 0).await {
            Ok(decided) => {
                timer.observe_duration();
                shared.breaker.succeeded();
                self.show_breaker(shared);
                return StoreAnswer::Decided(decided);
            }
            Err(e) => e,
        };
        timer.stop_and_discard();
        if let StoreError::Unavailable(e) = &failure {
            tracing::warn!("redis limiter call failed: {e}");
        }
        if self.fail(shared, &failure) {
            tracing::warn!("redis failing: circuit breaker open, on_error applies");
        }
        self.degrade(on_error, checks)
    }

    /// Probes Redis while the breaker is open, until dropped. Requests only
    /// probe when they come; this closes the breaker as soon as Redis answers
    /// a PING, whatever the traffic. It claims each cool-down's probe as a
    /// request would, so there is still at most one probe per cool-down.
    /// Returns at once without Redis.
    pub async fn keep_probing(&self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let poll = shared.breaker.cooldown().max(MIN_PROBE_POLL);
        loop {
            let wait = match shared.breaker.probe_due_in(self.clock.now()) {
                // Closed: look again within a cool-down of its opening.
                None => poll,
                Some(wait) if !wait.is_zero() => wait,
                Some(_) => {
                    self.probe(shared).await;
                    shared
                        .breaker
                        .probe_due_in(self.clock.now())
                        .unwrap_or(poll)
                        .max(Duration::from_millis(1))
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One background probe: a PING bounded by the decision timeout, so a
    /// Redis too slow for decisions keeps the breaker open.
    async fn probe(&self, shared: &Shared) {
        if !shared.breaker.admit(self.clock.now()) {
            // A request took this cool-down's probe.
            return;
        }
        let timeout = shared.redis.settings().timeout;
        let failure = match tokio::time::timeout(timeout, shared.redis.ping()).await {
            Ok(Ok(())) => {
                let was_open = shared.breaker.state() != BreakerState::Closed;
                shared.breaker.succeeded();
                self.show_breaker(shared);
                if was_open {
                    tracing::info!("redis answers again: circuit breaker closed");
                }
                return;
            }
            Ok(Err(e)) if e.is_timeout() => StoreError::Timeout,
            Ok(Err(e)) => StoreError::Unavailable(e.to_string()),
            Err(_) => StoreError::Timeout,
        };
        // Debug only: an idle gateway would otherwise log every cool-down
        // for as long as Redis is down.
        tracing::debug!("background probe of redis failed: {failure}");
        self.fail(shared, &failure);
    }

    /// Counts a failed Redis call and tells the breaker; true when this call
    /// opened it (or reopened it after a probe).
    fn fail(&self, shared: &Shared, failure: &StoreError) -> bool {
        match failure {
            StoreError::Timeout => self.metrics.redis_timeouts.inc(),
            StoreError::Unavailable(_) => self.metrics.redis_errors.inc(),
        }
        let opened = shared.breaker.failed(self.clock.now());
        if opened {
            self.metrics.breaker_opened.inc();
        }
        self.show_breaker(shared);
        opened
    }

    fn show_breaker(&self, shared: &Shared) {
        let state = shared.breaker.state() as i64;
        if self.metrics.breaker_state.get() != state {
            self.metrics.breaker_state.set(state);
        }
    }

    fn degrade(&self, on_error: OnError, checks: &[Check<'_>]) -> StoreAnswer {
        let local = (on_error == OnError::Local).then(|| self.decide_locally(checks));
        StoreAnswer::Degraded(on_error, local)
    }

    fn decide_locally(&self, checks: &[Check<'_>]) -> Decisions {
        let timer = self.metrics.memory_duration.start_timer();
        let clock = self.clock;
        let decided = self.memory.decide_with(checks, || clock.now());
        timer.observe_duration();
        decided
    }

    /// Holds `permits` until the returned guard drops; Redis leases are
    /// renewed meanwhile, so a long-lived connection keeps its permit and a
    /// crashed gateway's expire.
    pub fn hold(&self, permits: Vec<Permit>) -> HeldPermits {
        let redis = self.shared.as_ref().map(|shared| shared.redis.clone());
        let renewal = redis.as_ref().and_then(|r| r.keep_renewed(&permits));
        HeldPermits {
            memory: self.memory.clone(),
            redis,
            permits,
            renewal,
        }
    }

    /// Health for `/readyz`: a PING within the timeout.
    pub async fn health(&self) -> StoreHealth {
        let Some(shared) = &self.shared else {
            return StoreHealth {
                backend: "memory",
                healthy: true,
                breaker: None,
            };
        };
        let timeout = shared
            .redis
            .settings()
            .timeout
            .max(Duration::from_millis(250));
        let healthy = matches!(
            tokio::time::timeout(timeout, shared.redis.ping()).await,
            Ok(Ok(()))
        );
        StoreHealth {
            backend: "redis",
            healthy,
            breaker: Some(shared.breaker.state().label()),
        }
    }
}

/// Concurrency permits of one request or connection; given back on drop, so
/// no exit path can leak one.
pub struct HeldPermits {
    memory: Arc<MemoryStore>,
    redis: Option<RedisStore>,
    permits: Vec<Permit>,
    renewal: Option<AbortHandle>,
}

impl Drop for HeldPermits {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        self.memory.release_permits(&self.permits);
        if let Some(redis) = &self.redis {
            redis.release_permits(&self.permits);
        }
    }
}
