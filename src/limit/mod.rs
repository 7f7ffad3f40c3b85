//! Rate-limit decisions. Three parts, each importing only the ones above it:
//!
//! - [`algorithm`]: the algorithms as pure functions of (state, now, cost),
//!   and the one table of their names.
//! - [`store`]: where state lives. Every store decides all the checks of one
//!   request together, so a request denied by one limit spends nothing from
//!   the others: memory, Redis, and wrappers that compose them (batching over
//!   a store, a store behind a [`breaker`], failover to a fallback).
//! - [`Limits`]: the composition the gateway uses, built once from the config.

pub(crate) mod algorithm;
pub mod ban;
pub mod breaker;
mod front;
mod id;
pub mod store;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrayvec::ArrayVec;

use crate::identity::ClientKey;
pub use algorithm::{
    Algorithm, Concurrent, Decision, FixedWindow, Gcra, LeakyBucket, Limiter, SlidingCounter,
    SlidingLog, TokenBucket,
};
pub(crate) use algorithm::{Held, LimitState, LogState};
pub use ban::{BanMark, BanPolicy, BanRecord};
pub use front::{HeldPermits, KeyRef, KeyState, LimitRef, Limits, RunningBan, StoreHealth};
pub use id::{LimitDefinition, LimitId};
pub use store::memory::MemoryStore;
pub use store::StoreAnswer;

/// Nanoseconds on the limiter's clock. Only differences matter.
pub type Nanos = u64;

/// The most limits one request can be decided against (a config limit per
/// rule): decisions of one request live on the stack.
pub(crate) const MAX_CHECKS: usize = 8;

/// One limit to decide for one request.
#[derive(Debug, Clone)]
pub struct Check<'a> {
    pub limit: LimitId,
    pub limiter: Limiter,
    pub key: ClientKey<'a>,
    pub cost: u64,
    /// Shadow limits are decided and reported but never deny, so their denial
    /// must not block the others from being spent.
    pub enforced: bool,
    /// How the check meets a shared store; only batching reads it.
    pub sync: SyncMode,
    /// The limit's penalty box, if it has one.
    pub ban: Option<BanPolicy>,
}

/// How a limit's decisions meet a shared store (the config's `sync:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every decision is the store's.
    #[default]
    Exact,
    /// Decisions come from an allowance this gateway reserves in the store,
    /// this many units per reservation (see `store::batch`).
    Batched(u64),
}

impl SyncMode {
    /// `sync: batched` with `batch` units, or exact for `None`.
    pub(crate) fn of_batch(batch: Option<u64>) -> Self {
        batch.map_or(SyncMode::Exact, SyncMode::Batched)
    }

    /// The batch a request of `cost` can be admitted from: its limit is
    /// batched and the cost fits in one batch.
    pub(crate) fn batch_for(self, cost: u64) -> Option<u64> {
        match self {
            SyncMode::Batched(batch) if batch > 0 && cost <= batch => Some(batch),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("limiter store did not answer in time")]
    Timeout,
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
    /// The breaker in front of the store is open: it was not asked.
    #[error("limiter store not asked: its circuit breaker is open")]
    BreakerOpen,
}

/// What a store decided for one request.
#[derive(Debug, Default)]
pub struct Decisions {
    /// One per check, in order (no heap: a rule has at most 8 limits).
    pub decisions: ArrayVec<Decision, MAX_CHECKS>,
    /// Concurrency permits taken; give them back with [`Store::release_permits`]
    /// when the request (or connection) ends.
    pub permits: Vec<Permit>,
    /// The `now` the memory store decided at: what the access log records for
    /// replay. `None` when Redis decided, on its own clock.
    pub at: Option<Nanos>,
}

/// A held concurrency permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Permit {
    /// In this process's memory store.
    Local { key: [u64; 2], cost: u64 },
    /// A lease in Redis, which expires unless renewed.
    Lease(store::redis::Lease),
}

/// Where limiter state lives. `decide` is atomic over all `checks`: either every
/// check that was admitted is recorded, or — when any enforced check denies —
/// nothing is recorded at all.
///
/// Time is each store's own: the memory store reads its clock after taking
/// its locks, so that each key sees time move forward; Redis reads `TIME`, so
/// that every gateway sharing it shares its clock.
pub(crate) trait Store: Send + Sync {
    fn decide(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Decisions, StoreError>> + Send;

    /// Gives permits back; permits another store took are not this one's.
    fn release_permits(&self, permits: &[Permit]);

    /// Whether the store answers within `timeout`, for probes and `/readyz`.
    /// A store in this process always does.
    fn ping(&self, timeout: Duration) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = timeout;
        async { Ok(()) }
    }
}

/// The limiter's time source: nanoseconds since the Unix epoch, read from a
/// monotonic clock anchored once on the wall clock, so that fixed windows
/// start on the wall clock's seconds and minutes (as Redis's do) and the
/// access log can record a decision's exact `now`, which `tollgate replay`
/// decides at again. Replay sets the time by hand ([`Self::manual`]); tests
/// of the algorithms pass `now` explicitly.
#[derive(Debug, Clone)]
pub struct MonotonicClock {
    origin: Instant,
    /// The wall clock at `origin`.
    epoch: Nanos,
    /// Set by hand instead of read (replay).
    manual: Option<Arc<AtomicU64>>,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        let epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as Nanos);
        MonotonicClock {
            origin: Instant::now(),
            epoch,
            manual: None,
        }
    }
}

impl MonotonicClock {
    /// A clock that reads what `time` was last set to.
    pub(crate) fn manual(time: Arc<AtomicU64>) -> Self {
        MonotonicClock {
            manual: Some(time),
            ..MonotonicClock::default()
        }
    }

    pub(crate) fn now(&self) -> Nanos {
        match &self.manual {
            None => self.epoch + self.origin.elapsed().as_nanos() as Nanos,
            Some(time) => time.load(Ordering::Relaxed),
        }
    }
}
