//! The algorithms: pure functions of (stored state, now, cost), with no clock
//! reads and no I/O, so that every store (and every test) drives them the same
//! way. [`Limiter`] is a limit's algorithm with its compiled parameters.

pub mod concurrent;
pub mod fixed_window;
pub mod gcra;
pub mod leaky_bucket;
pub mod sliding_counter;
pub mod sliding_log;
pub mod token_bucket;

use super::Nanos;
pub use concurrent::{Concurrent, Held};
pub use fixed_window::{FixedWindow, WindowState};
pub use gcra::{Gcra, Tat};
pub use leaky_bucket::LeakyBucket;
pub use sliding_counter::{CounterState, SlidingCounter};
pub use sliding_log::{LogState, SlidingLog};
pub use token_bucket::{TokenBucket, TokenState};

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
