//! Rate-limit decisions: algorithms are pure functions of (state, now, quota,
//! cost); stores hold the state and decide all the limits of a request together,
//! so a request denied by one limit spends nothing from the others.
//!
//! - [`algorithm`]: the algorithms, with no clock and no I/O.
//! - [`store`]: where state lives: memory, Redis, batching, failover.
//! - [`breaker`]: the circuit breaker in front of Redis.

pub mod algorithm;
pub mod breaker;
mod id;
pub mod store;

use std::future::Future;

use arrayvec::ArrayVec;
use std::time::Instant;

use crate::identity::ClientKey;
pub use algorithm::{
    Algorithm, Concurrent, CounterState, Decision, FixedWindow, Gcra, Held, LeakyBucket,
    LimitState, Limiter, LogState, SlidingCounter, SlidingLog, Tat, TokenBucket, TokenState,
    WindowState,
};
pub use id::{LimitDefinition, LimitId};
pub use store::failover::{HeldPermits, Limits, StoreAnswer, StoreHealth};
pub use store::memory::MemoryStore;

/// Nanoseconds on the limiter's clock. Only differences matter.
pub type Nanos = u64;

/// The most limits one request can be decided against (a config limit per
/// rule): decisions of one request live on the stack.
pub const MAX_CHECKS: usize = 8;

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
    pub fn of_batch(batch: Option<u64>) -> Self {
        batch.map_or(SyncMode::Exact, SyncMode::Batched)
    }

    /// The batch a request of `cost` can be admitted from: its limit is
    /// batched and the cost fits in one batch.
    pub fn batch_for(self, cost: u64) -> Option<u64> {
        match self {
            SyncMode::Batched(batch) if batch > 0 && cost <= batch => Some(batch),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("limiter store did not answer in time")]
    Timeout,
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
}

/// What a store decided for one request.
#[derive(Debug, Default)]
pub struct Decisions {
    /// One per check, in order (no heap: a rule has at most 8 limits).
    pub decisions: ArrayVec<Decision, MAX_CHECKS>,
    /// Concurrency permits taken; give them back with [`Store::release_permits`]
    /// when the request (or connection) ends.
    pub permits: Vec<Permit>,
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
pub trait Store: Send + Sync {
    /// `clock` gives the decision's time; a store reads it as late as it can
    /// (after taking its locks) so that each key sees time move forward.
    fn decide(
        &self,
        checks: &[Check<'_>],
        clock: &(dyn Fn() -> Nanos + Sync),
    ) -> impl Future<Output = Result<Decisions, StoreError>> + Send;

    /// Gives permits back.
    fn release_permits(&self, permits: &[Permit]);
}

/// The limiter's time source. Production uses a monotonic clock; tests pass
/// `now` explicitly.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl MonotonicClock {
    pub fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }
}
