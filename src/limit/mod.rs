//! Rate-limit decisions: algorithms are pure functions of (state, now, quota,
//! cost); stores hold the state and decide all the limits of a request together,
//! so a request denied by one limit spends nothing from the others.

pub mod gcra;
pub mod memory;

use std::future::Future;
use std::time::Instant;

use crate::identity::ClientKey;
pub use gcra::{Gcra, GcraState};
pub use memory::MemoryStore;

/// Nanoseconds on the limiter's clock. Only differences matter.
pub type Nanos = u64;

/// What a limit says about one request, with what the response headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota advertised to clients (requests admissible from idle).
    pub limit: u64,
    /// Requests still admissible right now after this one.
    pub remaining: u64,
    /// Time until the quota is fully available again.
    pub reset_after: Nanos,
    /// Time until a denied request would be admitted (0 when allowed;
    /// `Nanos::MAX` when it never will be).
    pub retry_after: Nanos,
}

/// A limit's algorithm with its compiled parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limiter {
    Gcra(Gcra),
}

/// Per-key state of any algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitState {
    Gcra(GcraState),
}

impl Limiter {
    /// Decides a request against `state`. The returned state is to be stored only
    /// if the whole request is admitted.
    pub fn decide(
        &self,
        state: Option<&LimitState>,
        now: Nanos,
        cost: u64,
    ) -> (Decision, LimitState) {
        match self {
            Limiter::Gcra(g) => {
                let current = state.map(|LimitState::Gcra(s)| *s);
                let (decision, next) = g.decide(current, now, cost);
                (decision, LimitState::Gcra(next))
            }
        }
    }

    /// How long `state` must be kept from `now` before it is equivalent to none.
    pub fn ttl(&self, state: &LimitState, now: Nanos) -> Nanos {
        match (self, state) {
            (Limiter::Gcra(g), LimitState::Gcra(s)) => g.ttl(s, now),
        }
    }
}

/// Identifies a limit's counters: a fingerprint of its definition, so that a
/// limit keeps its counters for as long as its definition is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitId(pub u64);

impl LimitId {
    /// FNV-1a over the canonical text of the definition: stable across builds and
    /// processes, unlike `std`'s hasher.
    pub fn of(definition: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in definition.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        LimitId(hash)
    }
}

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
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
}

/// Where limiter state lives. `decide` is atomic over all `checks`: either every
/// check that was admitted is recorded, or — when any enforced check denies —
/// nothing is recorded at all.
pub trait Store: Send + Sync {
    fn decide(
        &self,
        checks: &[Check<'_>],
        now: Nanos,
    ) -> impl Future<Output = Result<Vec<Decision>, StoreError>> + Send;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_ids_are_stable_and_distinct() {
        assert_eq!(LimitId::of("a"), LimitId::of("a"));
        assert_ne!(LimitId::of("a"), LimitId::of("b"));
        assert_eq!(LimitId::of(""), LimitId(0xcbf2_9ce4_8422_2325));
    }
}
