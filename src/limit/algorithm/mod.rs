//! The algorithms: pure functions of (stored state, now, cost), with no clock
//! reads and no I/O, so that every store (and every test) drives them the same
//! way. [`Limiter`] is a limit's algorithm with its compiled parameters; each
//! algorithm's names live once, in its [`Spec`].

pub(crate) mod concurrent;
pub(crate) mod fixed_window;
pub(crate) mod gcra;
pub(crate) mod leaky_bucket;
pub(crate) mod sliding_counter;
pub(crate) mod sliding_log;
pub(crate) mod token_bucket;

use super::ban::BanMark;
use super::Nanos;
pub use concurrent::Concurrent;
pub(crate) use concurrent::Held;
pub use fixed_window::FixedWindow;
pub(crate) use fixed_window::WindowState;
pub use gcra::Gcra;
pub(crate) use gcra::Tat;
pub use leaky_bucket::LeakyBucket;
pub(crate) use sliding_counter::CounterState;
pub use sliding_counter::SlidingCounter;
pub(crate) use sliding_log::LogState;
pub use sliding_log::SlidingLog;
pub use token_bucket::TokenBucket;
pub(crate) use token_bucket::TokenState;

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
    /// Whether the key's penalty box decided this (see `limit::ban`).
    pub ban: BanMark,
}

impl Decision {
    pub(crate) fn allowed(limit: u64, remaining: u64, reset_after: Nanos) -> Self {
        Decision {
            allowed: true,
            limit,
            remaining,
            reset_after,
            retry_after: 0,
            delay: 0,
            ban: BanMark::None,
        }
    }

    pub(crate) fn denied(
        limit: u64,
        remaining: u64,
        reset_after: Nanos,
        retry_after: Nanos,
    ) -> Self {
        Decision {
            allowed: false,
            limit,
            remaining,
            reset_after,
            retry_after,
            delay: 0,
            ban: BanMark::None,
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

/// A setting of a limit, beside its `rate`, that only some algorithms take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    Burst,
    Debt,
    Delay,
}

impl Setting {
    /// Its key in the config.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Setting::Burst => "burst",
            Setting::Debt => "debt",
            Setting::Delay => "delay",
        }
    }

    /// The algorithms that take it, for people: `gcra, token_bucket and
    /// leaky_bucket`.
    pub(crate) fn taken_by(self) -> String {
        let names: Vec<&str> = ALGORITHMS
            .iter()
            .filter(|spec| spec.takes(self))
            .map(|spec| spec.name)
            .collect();
        match names.split_last() {
            None => String::new(),
            Some((last, [])) => (*last).to_string(),
            Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        }
    }
}

/// An algorithm's names and settings: the config, `check`, the config's error
/// messages and the Redis scripts all read them here, so that no two places
/// can spell an algorithm differently. (Limit ids spell algorithms on their
/// own, on purpose: see `limit::id`.)
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// In the config (`algorithm:`; the concurrency limit is `concurrent:`),
    /// in `check` and in `--explain`.
    pub(crate) name: &'static str,
    /// In `decide.lua` and `refund.lua`.
    pub(crate) lua: &'static str,
    /// The settings beside `rate` it takes.
    pub(crate) settings: &'static [Setting],
}

impl Spec {
    pub(crate) fn takes(&self, setting: Setting) -> bool {
        self.settings.contains(&setting)
    }
}

/// The default: a smooth, exact limit with a burst, in one timestamp.
pub(crate) const GCRA: Spec = Spec {
    name: "gcra",
    lua: "gcra",
    settings: &[Setting::Burst],
};

/// Tokens refilled at the rate, with an optional overdraft (`debt`).
pub(crate) const TOKEN_BUCKET: Spec = Spec {
    name: "token_bucket",
    lua: "token",
    settings: &[Setting::Burst, Setting::Debt],
};

/// nginx's `limit_req`: policing, or shaping with `delay: true`.
pub(crate) const LEAKY_BUCKET: Spec = Spec {
    name: "leaky_bucket",
    lua: "leaky",
    settings: &[Setting::Burst, Setting::Delay],
};

/// A counter per fixed window.
pub(crate) const FIXED_WINDOW: Spec = Spec {
    name: "fixed_window",
    lua: "fixed",
    settings: &[],
};

/// Every counted request, exact over any `period`.
pub(crate) const SLIDING_WINDOW_LOG: Spec = Spec {
    name: "sliding_window_log",
    lua: "log",
    settings: &[],
};

/// The previous window weighted by its overlap, plus the current one.
pub(crate) const SLIDING_WINDOW_COUNTER: Spec = Spec {
    name: "sliding_window_counter",
    lua: "counter",
    settings: &[],
};

/// Requests (or connections) in flight at once.
pub(crate) const CONCURRENT: Spec = Spec {
    name: "concurrent",
    lua: "conc",
    settings: &[],
};

/// Every algorithm, in the order of the README's table.
pub(crate) const ALGORITHMS: [&Spec; 7] = [
    &GCRA,
    &TOKEN_BUCKET,
    &LEAKY_BUCKET,
    &FIXED_WINDOW,
    &SLIDING_WINDOW_LOG,
    &SLIDING_WINDOW_COUNTER,
    &CONCURRENT,
];

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
pub(crate) enum LimitState {
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
    pub(crate) fn decide(
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
    pub(crate) fn ttl(&self, state: &LimitState, now: Nanos) -> Nanos {
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

    /// This algorithm's names and settings.
    pub(crate) fn spec(&self) -> &'static Spec {
        match self {
            Limiter::Gcra(_) => &GCRA,
            Limiter::TokenBucket(_) => &TOKEN_BUCKET,
            Limiter::LeakyBucket(_) => &LEAKY_BUCKET,
            Limiter::FixedWindow(_) => &FIXED_WINDOW,
            Limiter::SlidingLog(_) => &SLIDING_WINDOW_LOG,
            Limiter::SlidingCounter(_) => &SLIDING_WINDOW_COUNTER,
            Limiter::Concurrent(_) => &CONCURRENT,
        }
    }

    /// The name the config uses for this algorithm.
    pub(crate) fn name(&self) -> &'static str {
        self.spec().name
    }

    /// The quota advertised to clients: requests admissible from idle.
    pub(crate) fn quota(&self) -> u64 {
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
    pub(crate) fn holds_permits(&self) -> bool {
        matches!(self, Limiter::Concurrent(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_has_one_config_name_and_one_script_name() {
        for (i, a) in ALGORITHMS.iter().enumerate() {
            for b in &ALGORITHMS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.lua, b.lua);
            }
        }
    }

    #[test]
    fn every_limiter_finds_its_row_in_the_table() {
        let limiters = [
            Limiter::Gcra(Gcra::from_interval(1, 1)),
            Limiter::TokenBucket(TokenBucket::new(1, 1, 0)),
            Limiter::LeakyBucket(LeakyBucket::new(1, 0, false)),
            Limiter::FixedWindow(FixedWindow::new(1, 1)),
            Limiter::SlidingLog(SlidingLog::new(1, 1)),
            Limiter::SlidingCounter(SlidingCounter::new(1, 1)),
            Limiter::Concurrent(Concurrent::new(1)),
        ];
        let specs: Vec<&Spec> = limiters.iter().map(Limiter::spec).collect();
        assert_eq!(specs, ALGORITHMS);
    }

    #[test]
    fn the_config_spells_each_algorithm_as_its_row_does() {
        use crate::schema::input::AlgorithmInput;
        for input in [
            AlgorithmInput::Gcra,
            AlgorithmInput::TokenBucket,
            AlgorithmInput::LeakyBucket,
            AlgorithmInput::FixedWindow,
            AlgorithmInput::SlidingWindowLog,
            AlgorithmInput::SlidingWindowCounter,
        ] {
            let written = serde_json::to_value(input).unwrap_or_default();
            assert_eq!(
                written,
                crate::config::compile::spec_of(input).name,
                "{input:?}"
            );
        }
    }

    #[test]
    fn a_setting_names_the_algorithms_that_take_it() {
        assert_eq!(
            Setting::Burst.taken_by(),
            "gcra, token_bucket and leaky_bucket"
        );
        assert_eq!(Setting::Debt.taken_by(), "token_bucket");
        assert_eq!(Setting::Delay.taken_by(), "leaky_bucket");
    }
}
