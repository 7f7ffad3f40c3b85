//! Concurrency: at most `max` requests (or open connections) per key at once.
//! A permit is taken when the request is admitted and given back when it ends,
//! however it ends (see the stores' `release`). No time involved.

use super::{Algorithm, Decision, Nanos};

/// How long a client refused for concurrency is told to wait: the moment a
/// permit frees up cannot be known.
pub(crate) const CONCURRENCY_RETRY: Nanos = 1_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Concurrent {
    pub(crate) max: u64,
}

/// Permits held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held(pub u64);

impl Concurrent {
    pub fn new(max: u64) -> Self {
        Concurrent { max: max.max(1) }
    }
}

impl Algorithm for Concurrent {
    type State = Held;

    fn decide(&self, state: Option<&Held>, _now: Nanos, cost: u64) -> (Decision, Held) {
        let held = state.map_or(0, |h| h.0);
        let after = held.saturating_add(cost);
        if after > self.max {
            let retry = if cost > self.max {
                Nanos::MAX
            } else {
                CONCURRENCY_RETRY
            };
            return (
                Decision::denied(self.max, self.max.saturating_sub(held), 0, retry),
                Held(held),
            );
        }
        (
            Decision::allowed(self.max, self.max - after, 0),
            Held(after),
        )
    }

    /// Held permits never expire: they are given back.
    fn ttl(&self, state: &Held, _now: Nanos) -> Nanos {
        if state.0 == 0 {
            0
        } else {
            Nanos::MAX
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_max_at_once() {
        let c = Concurrent::new(2);
        let (a, s) = c.decide(None, 0, 1);
        let (b, s) = c.decide(Some(&s), 0, 1);
        let (refused, _) = c.decide(Some(&s), 0, 1);
        assert!(a.allowed && b.allowed && !refused.allowed);
        assert_eq!(refused.retry_after, CONCURRENCY_RETRY);
    }
}
