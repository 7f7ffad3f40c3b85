//! Stores, and stores that wrap stores. The gateway's is one of
//!
//! - `Timed<MemoryStore>`: everything in this process;
//! - `Failover<Batching<Guarded<Timed<RedisStore>>>, Timed<MemoryStore>>`:
//!   Redis (timed, behind a circuit breaker, with `sync: batched` allowances
//!   in front), failing over to memory as `on_error` says.
//!
//! Each layer does one thing and passes the rest through, so each can be
//! tested over any other store (batching over memory, say).

pub(crate) mod batch;
pub(crate) mod failover;
pub(crate) mod memory;
pub(crate) mod penalty;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use prometheus::Histogram;

use super::{Check, Decisions, Permit, Store, StoreError};
pub(crate) use batch::Batching;
pub use failover::StoreAnswer;
pub(crate) use failover::{Failover, Guarded};

impl<S: Store> Store for Arc<S> {
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        (**self).decide(checks).await
    }

    fn release_permits(&self, permits: &[Permit]) {
        (**self).release_permits(permits);
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        (**self).ping(timeout).await
    }
}

/// A store whose decisions are timed into a histogram. Failed calls are not
/// observed: their time is the timeout's, not the store's.
pub(crate) struct Timed<S> {
    inner: S,
    duration: Histogram,
}

impl<S> Timed<S> {
    pub(crate) fn new(inner: S, duration: Histogram) -> Self {
        Timed { inner, duration }
    }
}

impl<S: Store> Store for Timed<S> {
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        let timer = self.duration.start_timer();
        let decided = self.inner.decide(checks).await;
        match decided {
            Ok(_) => timer.observe_duration(),
            Err(_) => {
                timer.stop_and_discard();
            }
        }
        decided
    }

    fn release_permits(&self, permits: &[Permit]) {
        self.inner.release_permits(permits);
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.inner.ping(timeout).await
    }
}
