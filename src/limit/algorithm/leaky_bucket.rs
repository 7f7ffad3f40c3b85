//! Leaky bucket as nginx `limit_req` has it: the bucket drains one request
//! every `period / count` and holds the request being served plus `burst`
//! more (nginx's `burst`, default 0). Policing (the default, nginx's
//! `nodelay`) admits those `burst + 1` at once and refuses overflow —
//! exactly what GCRA with a burst of `burst + 1` admits. Shaping
//! (`delay: true`, nginx without `nodelay`) holds the excess until its turn
//! at the drain rate; only requests beyond the bucket are refused. The state
//! is the time the bucket has drained.

use super::gcra::{Gcra, Tat};
use super::{Algorithm, Decision, Nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeakyBucket {
    pub(crate) interval: Nanos,
    /// Requests the bucket holds: the one served plus nginx's `burst`.
    pub(crate) capacity: u64,
    /// Shape (delay excess requests) rather than police.
    pub(crate) delay: bool,
}

impl LeakyBucket {
    /// `burst` as nginx means it: requests beyond the one being served.
    pub fn new(interval: Nanos, burst: u64, delay: bool) -> Self {
        LeakyBucket {
            interval: interval.max(1),
            capacity: burst.saturating_add(1),
            delay,
        }
    }
}

impl Algorithm for LeakyBucket {
    type State = Tat;

    fn decide(&self, state: Option<&Tat>, now: Nanos, cost: u64) -> (Decision, Tat) {
        if !self.delay {
            return Gcra::from_interval(self.interval, self.capacity).decide(state, now, cost);
        }
        // Shaping: the request is served when the bucket has drained to it.
        let tat = state.map_or(now, |s| s.0.max(now));
        let wait = tat - now;
        let new_tat = tat.saturating_add(self.interval.saturating_mul(cost));
        let queue = self
            .interval
            .saturating_mul(self.capacity.saturating_sub(cost));
        let in_bucket = |until: Nanos| until.saturating_sub(now).div_ceil(self.interval);
        if cost > self.capacity || wait > queue {
            let retry_after = if cost > self.capacity {
                Nanos::MAX
            } else {
                wait - queue
            };
            let remaining = self.capacity.saturating_sub(in_bucket(tat));
            return (
                Decision::denied(self.capacity, remaining, tat - now, retry_after),
                Tat(tat),
            );
        }
        let remaining = self.capacity.saturating_sub(in_bucket(new_tat));
        let mut decision = Decision::allowed(self.capacity, remaining, new_tat - now);
        decision.delay = wait;
        (decision, Tat(new_tat))
    }

    fn ttl(&self, state: &Tat, now: Nanos) -> Nanos {
        state.0.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    #[test]
    fn shaping_delays_excess_requests_to_the_drain_rate_then_refuses() {
        let b = LeakyBucket::new(100 * MS, 2, true);
        let mut state = None;
        let mut outcome = Vec::new();
        for _ in 0..5 {
            let (d, s) = b.decide(state.as_ref(), 0, 1);
            if d.allowed {
                state = Some(s);
            }
            outcome.push((d.allowed, d.delay));
        }
        assert_eq!(
            outcome,
            vec![
                (true, 0),
                (true, 100 * MS),
                (true, 200 * MS),
                (false, 0),
                (false, 0)
            ]
        );
    }

    #[test]
    fn policing_refuses_instead_of_delaying() {
        let b = LeakyBucket::new(100 * MS, 1, false);
        let (first, s) = b.decide(None, 0, 1);
        let (second, s) = b.decide(Some(&s), 0, 1);
        let (third, _) = b.decide(Some(&s), 0, 1);
        assert!(first.allowed && second.allowed && !third.allowed);
        assert_eq!((first.delay, second.delay), (0, 0));
    }

    #[test]
    fn a_refused_shaped_request_learns_when_a_slot_opens() {
        let b = LeakyBucket::new(100 * MS, 1, true);
        let (_, s) = b.decide(None, 0, 1);
        let (_, s) = b.decide(Some(&s), 0, 1);
        let (refused, _) = b.decide(Some(&s), 0, 1);
        assert_eq!(refused.retry_after, 100 * MS);
        assert!(b.decide(Some(&s), 100 * MS, 1).0.allowed);
    }
}
