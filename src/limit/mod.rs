//! Rate-limit decisions: algorithms are pure functions of (state, now, quota,
//! cost); stores hold the state and decide all the limits of a request together,
//! so a request denied by one limit spends nothing from the others.

pub mod batch;
pub mod concurrent;
pub mod failover;
pub mod fixed_window;
pub mod gcra;
mod id;
pub mod leaky_bucket;
pub mod memory;
pub mod redis;
pub mod sliding_counter;
pub mod sliding_log;
pub mod token_bucket;

use std::future::Future;

use arrayvec::ArrayVec;
use std::time::Instant;

use crate::identity::ClientKey;
pub use concurrent::{Concurrent, Held};
pub use fixed_window::{FixedWindow, WindowState};
pub use gcra::{Gcra, Tat};
pub use id::{LimitDefinition, LimitId};
pub use leaky_bucket::LeakyBucket;
pub use memory::MemoryStore;
pub use sliding_counter::{CounterState, SlidingCounter};
pub use sliding_log::{LogState, SlidingLog};
pub use token_bucket::{TokenBucket, TokenState};

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
    /// How long an admitted request waits before it is served (a shaping
    /// leaky bucket); 0 otherwise.
    pub delay: Nanos,
}

impl Decision {
    pub fn allowed(limit: u64, remaining: u64, reset_after: Nanos) -> Self {
        Decision {
            allowed: true,
            limit,
            remaining,
            reset_after,
            retry_after: 0,
            delay: 0,
        }
    }

    pub fn denied(limit: u64, remaining: u64, reset_after: Nanos, retry_after: Nanos) -> Self {
        Decision {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after,
            delay: 0,
        }
    }
}

/// The interface every algorithm implements: a pure function of the stored
/// state, the time and the request's cost. No clock reads, no I/O.
pub trait Algorithm {
    type State;

    /// Decides `cost` units at `now`. The returned state is the one to store
    /// if the request is admitted; a denied request stores nothing.
    fn decide(&self, state: Option<&Self::State>, now: Nanos, cost: u64)
        -> (Decision, Self::State);

    /// How long from `now` the state still matters (after that it is the same
    /// as no state).
    fn ttl(&self, state: &Self::State, now: Nanos) -> Nanos;
}

/// A limit's algorithm with its compiled parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limiter {
    Gcra(Gcra),
    TokenBucket(TokenBucket),
    LeakyBucket(LeakyBucket),
    FixedWindow(FixedWindow),
    SlidingLog(SlidingLog),
    SlidingCounter(SlidingCounter),
    Concurrent(Concurrent),
}

/// Per-key state of any algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitState {
    /// GCRA and the leaky bucket.
    Tat(Tat),
    Tokens(TokenState),
    Window(WindowState),
    Log(Box<LogState>),
    Counter(CounterState),
    Held(Held),
}

/// Runs one algorithm on a `LimitState`, treating another algorithm's state
/// (which cannot happen: state is keyed by limit) as none.
macro_rules! dispatch {
    ($alg:expr, $state:expr, $now:expr, $cost:expr, $variant:ident, $wrap:expr) => {{
        let current = match $state {
            Some(LimitState::$variant(s)) => Some(s),
            _ => None,
        };
        let (decision, next) = $alg.decide(current, $now, $cost);
        (decision, $wrap(next))
    }};
}

impl Limiter {
    /// Decides a request against `state`. The returned state is to be stored
    /// only if the whole request is admitted.
    pub fn decide(
        &self,
        state: Option<&LimitState>,
        now: Nanos,
        cost: u64,
    ) -> (Decision, LimitState) {
        match self {
            Limiter::Gcra(a) => dispatch!(a, state, now, cost, Tat, LimitState::Tat),
            Limiter::LeakyBucket(a) => dispatch!(a, state, now, cost, Tat, LimitState::Tat),
            Limiter::TokenBucket(a) => dispatch!(a, state, now, cost, Tokens, LimitState::Tokens),
            Limiter::FixedWindow(a) => dispatch!(a, state, now, cost, Window, LimitState::Window),
            Limiter::SlidingLog(a) => {
                let current = match state {
                    Some(LimitState::Log(s)) => Some(&**s),
                    _ => None,
                };
                let (decision, next) = a.decide(current, now, cost);
                (decision, LimitState::Log(Box::new(next)))
            }
            Limiter::SlidingCounter(a) => {
                dispatch!(a, state, now, cost, Counter, LimitState::Counter)
            }
            Limiter::Concurrent(a) => dispatch!(a, state, now, cost, Held, LimitState::Held),
        }
    }

    /// How long `state` must be kept from `now` before it is equivalent to none.
    pub fn ttl(&self, state: &LimitState, now: Nanos) -> Nanos {
        match (self, state) {
            (Limiter::Gcra(a), LimitState::Tat(s)) => a.ttl(s, now),
            (Limiter::LeakyBucket(a), LimitState::Tat(s)) => a.ttl(s, now),
            (Limiter::TokenBucket(a), LimitState::Tokens(s)) => a.ttl(s, now),
            (Limiter::FixedWindow(a), LimitState::Window(s)) => a.ttl(s, now),
            (Limiter::SlidingLog(a), LimitState::Log(s)) => a.ttl(s, now),
            (Limiter::SlidingCounter(a), LimitState::Counter(s)) => a.ttl(s, now),
            (Limiter::Concurrent(a), LimitState::Held(s)) => a.ttl(s, now),
            _ => 0,
        }
    }

    /// The name the config uses for this algorithm.
    pub fn name(&self) -> &'static str {
        match self {
            Limiter::Gcra(_) => "gcra",
            Limiter::TokenBucket(_) => "token_bucket",
            Limiter::LeakyBucket(_) => "leaky_bucket",
            Limiter::FixedWindow(_) => "fixed_window",
            Limiter::SlidingLog(_) => "sliding_window_log",
            Limiter::SlidingCounter(_) => "sliding_window_counter",
            Limiter::Concurrent(_) => "concurrent",
        }
    }

    /// The quota advertised to clients: requests admissible from idle.
    pub fn quota(&self) -> u64 {
        match self {
            Limiter::Gcra(a) => a.burst,
            Limiter::TokenBucket(a) => a.capacity,
            Limiter::LeakyBucket(a) => a.capacity,
            Limiter::FixedWindow(a) => a.limit,
            Limiter::SlidingLog(a) => a.limit,
            Limiter::SlidingCounter(a) => a.limit,
            Limiter::Concurrent(a) => a.max,
        }
    }

    /// Whether admitted requests hold a permit until they end.
    pub fn holds_permits(&self) -> bool {
        matches!(self, Limiter::Concurrent(_))
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
    #[error("limiter store did not answer in time")]
    Timeout,
    #[error("limiter store unavailable: {0}")]
    Unavailable(String),
}

/// What a store decided for one request.
#[derive(Debug, Default)]
pub struct Decided {
    /// One per check, in order (no heap: a rule has at most 8 limits).
    pub decisions: ArrayVec<Decision, { memory::MAX_CHECKS }>,
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
    Lease(redis::Lease),
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
    ) -> impl Future<Output = Result<Decided, StoreError>> + Send;

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
