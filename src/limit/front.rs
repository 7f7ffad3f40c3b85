//! The store as the gateway uses it: built once at start from the config's
//! `store:`, as the memory store alone or as Redis (timed, behind a breaker,
//! batched where limits say so) failing over to memory.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::AbortHandle;

use super::breaker::{BreakerSettings, BreakerState};
use super::store::redis::RedisStore;
use super::store::{Batching, Failover, Guarded, StoreAnswer, Timed};
use super::{
    BanPolicy, Check, Decision, LimitId, Limiter, MemoryStore, MonotonicClock, Nanos, Permit,
    Store, StoreError,
};
use crate::identity::{ClientKey, KeyDigest};
use crate::metrics::StoreMetrics;
use crate::policy::OnError;

/// Redis with its layers, failing over to memory.
type RedisWithFailover = Failover<Batching<Guarded<Timed<RedisStore>>>, Timed<Arc<MemoryStore>>>;

enum Front {
    /// Called directly and not timed: a decision takes well under a
    /// microsecond, which a latency histogram cannot tell apart, and two
    /// clock reads per request would cost more than it (decisions are
    /// counted per limit instead).
    Memory { memory: Arc<MemoryStore> },
    Redis {
        store: Box<RedisWithFailover>,
        /// The store at the bottom, for lease renewals.
        redis: RedisStore,
    },
}

/// The limiter store as the proxy sees it.
pub struct Limits {
    /// Always present: the store itself, or the fallback of `on_error: local`;
    /// sweeps and reloads reach it here.
    pub(crate) memory: Arc<MemoryStore>,
    front: Arc<Front>,
}

/// Health of the store, for `/readyz`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreHealth {
    pub(crate) backend: &'static str,
    /// Whether the shared store answers (always true for memory).
    pub(crate) healthy: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) breaker: Option<&'static str>,
}

impl Limits {
    /// The memory store alone. `clock` is the gateway's limiter clock: the
    /// store decides on it, and the gateway sweeps with it.
    pub fn memory(memory: MemoryStore, clock: MonotonicClock) -> Self {
        let memory = Arc::new(memory.with_clock(clock));
        let front = Front::Memory {
            memory: memory.clone(),
        };
        Limits {
            memory,
            front: Arc::new(front),
        }
    }

    /// Redis in front, `memory` for `on_error: local`; the breaker and the
    /// batched allowances keep time with `clock` too.
    pub fn redis(
        redis: RedisStore,
        breaker: BreakerSettings,
        memory: MemoryStore,
        clock: MonotonicClock,
        metrics: StoreMetrics,
    ) -> Self {
        let memory = Arc::new(memory.with_clock(clock.clone()));
        let timeout = redis.settings().timeout;
        let timed = Timed::new(redis.clone(), metrics.redis_duration.clone());
        let fallback = Timed::new(memory.clone(), metrics.memory_duration.clone());
        let guarded = Guarded::new(timed, breaker, timeout, clock.clone(), metrics);
        let store = Failover::new(Batching::new(guarded, clock), fallback);
        Limits {
            memory,
            front: Arc::new(Front::Redis {
                store: Box::new(store),
                redis,
            }),
        }
    }

    /// Whether a circuit breaker stands in front of a shared store.
    pub(crate) fn has_breaker(&self) -> bool {
        matches!(*self.front, Front::Redis { .. })
    }

    /// Decides `checks`; `on_error` (the rule's, else the store's) applies
    /// when Redis cannot.
    pub async fn decide(&self, checks: &[Check<'_>], on_error: OnError) -> StoreAnswer {
        match &*self.front {
            Front::Memory { memory } => StoreAnswer::Decided(memory.decide_on_clock(checks)),
            // Boxed: the shared store's future is kilobytes (the batching
            // state, the Redis call), and unboxed it would size this future,
            // and every future awaiting it, for the memory store too. A
            // shared decision allocates anyway.
            Front::Redis { store, .. } => Box::pin(store.decide(checks, on_error)).await,
        }
    }

    /// Drops expired `sync: batched` allowances; their unused units lapse.
    pub(crate) fn settle(&self) {
        if let Front::Redis { store, .. } = &*self.front {
            let lapsed = store.primary().settle();
            if lapsed > 0 {
                tracing::debug!(lapsed, "unused batched units lapsed");
            }
        }
    }

    /// Probes Redis while its breaker is open, until dropped (see
    /// [`Guarded::keep_probing`]). Returns at once without Redis.
    pub async fn keep_probing(&self) {
        if let Front::Redis { store, .. } = &*self.front {
            store.primary().inner().keep_probing().await;
        }
    }

    /// Holds `permits` until the returned guard drops; Redis leases are
    /// renewed meanwhile, so a long-lived connection keeps its permit and a
    /// crashed gateway's expire.
    pub(crate) fn hold(&self, permits: Vec<Permit>) -> HeldPermits {
        let renewal = match &*self.front {
            Front::Redis { redis, .. } => redis.keep_renewed(&permits),
            Front::Memory { .. } => None,
        };
        HeldPermits {
            front: self.front.clone(),
            permits,
            renewal,
        }
    }

    /// Health for `/readyz`: a PING within the timeout, and decisions not
    /// failing (the breaker closed). A Redis that answers PING but refuses
    /// every script (out of memory, a read-only replica) is down for the
    /// gateway's purpose.
    pub(crate) async fn health(&self) -> StoreHealth {
        let Front::Redis { store, redis } = &*self.front else {
            return StoreHealth {
                backend: "memory",
                healthy: true,
                breaker: None,
            };
        };
        let guarded = store.primary().inner();
        let timeout = redis.settings().timeout.max(Duration::from_millis(250));
        let breaker = guarded.breaker_state();
        StoreHealth {
            backend: "redis",
            healthy: breaker == BreakerState::Closed && guarded.ping(timeout).await.is_ok(),
            breaker: Some(breaker.label()),
        }
    }
}

/// How long a gateway's published top keys count for the others: a few of
/// its publishing intervals, so a gateway that stops drops out soon.
const TOP_FRESH: Duration = Duration::from_secs(5);

/// One key's state under one limit, as the admin shows it.
#[derive(Debug, Clone, Copy)]
pub struct KeyState {
    /// What a request of cost 0 would be told now.
    pub decision: Decision,
    pub banned_for: Option<Nanos>,
    pub offences: u32,
}

/// A ban running now.
#[derive(Debug, Clone)]
pub struct RunningBan {
    pub digest: KeyDigest,
    /// The key itself, where this gateway knows it (the memory store keeps
    /// it; Redis holds digests only).
    pub key: Option<ClientKey<'static>>,
    pub left: Nanos,
    pub offences: u32,
}

/// A limit as the admin endpoints address it.
#[derive(Debug, Clone, Copy)]
pub struct LimitRef<'a> {
    pub id: LimitId,
    pub limiter: &'a Limiter,
    pub ban: Option<BanPolicy>,
}

/// A key as the admin endpoints name it: always its digest, and the key
/// itself when it is known (from the request, or the top keys).
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub digest: KeyDigest,
    pub key: Option<&'a ClientKey<'static>>,
}

impl Limits {
    /// The limiter clock's now, for what keeps time beside the store.
    pub(crate) fn now(&self) -> Nanos {
        self.memory.now()
    }

    /// The key's state without spending anything; `None` when the memory
    /// store is asked by digest alone (it keys state by the key itself).
    pub(crate) async fn key_state(
        &self,
        limit: LimitRef<'_>,
        key: KeyRef<'_>,
    ) -> Result<Option<KeyState>, StoreError> {
        match &*self.front {
            Front::Memory { memory } => Ok(key.key.map(|k| {
                let (decision, record) = memory.peek(limit.id, limit.limiter, k);
                let now = memory.now();
                KeyState {
                    decision,
                    banned_for: record.and_then(|r| r.banned_for(now)),
                    offences: record.map_or(0, |r| r.offences),
                }
            })),
            Front::Redis { redis, .. } => {
                let (decision, left, offences) = redis
                    .peek(limit.id.0, limit.limiter, limit.ban, &key.digest)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(Some(KeyState {
                    decision,
                    banned_for: (left > 0).then_some(left),
                    offences,
                }))
            }
        }
    }

    /// Forgets the key's state and lifts its ban; whether a ban was running
    /// (`None`: see [`Self::key_state`]).
    pub(crate) async fn forget_key(
        &self,
        limit: LimitRef<'_>,
        key: KeyRef<'_>,
    ) -> Result<Option<bool>, StoreError> {
        match &*self.front {
            Front::Memory { memory } => Ok(key.key.map(|k| memory.forget(limit.id, k))),
            Front::Redis { redis, .. } => {
                // A ban earned while Redis was away lives in the fallback.
                let local = key.key.is_some_and(|k| self.memory.forget(limit.id, k));
                let shared = redis
                    .forget(limit.id.0, &key.digest)
                    .await
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
                Ok(Some(local || shared))
            }
        }
    }

    /// Publishes this gateway's top keys of a limit where other gateways can
    /// merge them (Redis); nothing to do for the memory store.
    pub(crate) async fn share_top(
        &self,
        limit: LimitId,
        entries: &[(KeyDigest, u64, u64)],
    ) -> Result<(), StoreError> {
        let Front::Redis { redis, .. } = &*self.front else {
            return Ok(());
        };
        redis
            .publish_top(limit.0, entries, TOP_FRESH)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The top keys of a limit the other gateways on the same Redis
    /// published lately; none for the memory store.
    pub(crate) async fn others_top(
        &self,
        limit: LimitId,
    ) -> Result<Vec<Vec<(KeyDigest, u64, u64)>>, StoreError> {
        let Front::Redis { redis, .. } = &*self.front else {
            return Ok(Vec::new());
        };
        redis
            .others_top(limit.0, TOP_FRESH)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Whether the limiter state is shared with other gateways.
    pub(crate) fn shared(&self) -> bool {
        matches!(*self.front, Front::Redis { .. })
    }

    /// The limit's bans running now: at most `most` from Redis.
    pub(crate) async fn bans(
        &self,
        limit: LimitId,
        most: usize,
    ) -> Result<Vec<RunningBan>, StoreError> {
        let local = self
            .memory
            .active_bans(limit)
            .into_iter()
            .map(|b| RunningBan {
                digest: b.key.digest(),
                left: b.record.banned_for(self.now()).unwrap_or(0),
                offences: b.record.offences,
                key: Some(b.key),
            });
        let Front::Redis { redis, .. } = &*self.front else {
            return Ok(local.collect());
        };
        let mut bans: Vec<RunningBan> = local.collect();
        let shared = redis
            .active_bans(limit.0, most)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        for ban in shared {
            if bans.iter().any(|b| b.digest == ban.digest) {
                continue;
            }
            bans.push(RunningBan {
                digest: ban.digest,
                key: None,
                left: ban.left,
                offences: ban.offences,
            });
        }
        Ok(bans)
    }
}

/// Concurrency permits of one request or connection; given back on drop, so
/// no exit path can leak one.
pub struct HeldPermits {
    front: Arc<Front>,
    permits: Vec<Permit>,
    renewal: Option<AbortHandle>,
}

impl Drop for HeldPermits {
    fn drop(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
        match &*self.front {
            Front::Memory { memory, .. } => memory.release_permits_now(&self.permits),
            Front::Redis { store, .. } => store.release_permits(&self.permits),
        }
    }
}
