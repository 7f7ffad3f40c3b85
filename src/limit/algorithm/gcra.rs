//! GCRA (generic cell rate algorithm): the state is one timestamp, the
//! theoretical arrival time (TAT) of the next request at the sustained rate. A
//! request is admitted when admitting it would not push the TAT more than the
//! burst tolerance ahead of now; it then advances the TAT by one emission interval
//! per unit of cost. Equivalent to a token bucket of `burst` tokens refilled at
//! the rate, with exact integer arithmetic and a single word of state.

use super::{Algorithm, Decision, Nanos};

/// A compiled GCRA limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gcra {
    /// Nanoseconds per unit of quota at the sustained rate.
    pub(crate) interval: Nanos,
    /// Requests admissible at once from an idle state.
    pub(crate) burst: u64,
}

/// Per-key state: the theoretical arrival time of the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tat(pub Nanos);

impl Gcra {
    pub fn from_interval(interval: Nanos, burst: u64) -> Self {
        Gcra {
            interval: interval.max(1),
            burst: burst.max(1),
        }
    }
}

impl Algorithm for Gcra {
    type State = Tat;

    fn ttl(&self, state: &Tat, now: Nanos) -> Nanos {
        state.0.saturating_sub(now)
    }

    /// Decides one request of `cost` units at `now`. A denied request changes
    /// nothing.
    fn decide(&self, state: Option<&Tat>, now: Nanos, cost: u64) -> (Decision, Tat) {
        let tat = state.map_or(now, |s| s.0.max(now));
        let window = self.interval.saturating_mul(self.burst);
        let new_tat = tat.saturating_add(self.interval.saturating_mul(cost));
        // The earliest moment at which the new TAT is within the window.
        let allow_at = new_tat.saturating_sub(window);
        if cost > self.burst || now < allow_at {
            let retry_after = if cost > self.burst {
                Nanos::MAX
            } else {
                allow_at - now
            };
            let decision =
                Decision::denied(self.burst, self.remaining(tat, now), tat - now, retry_after);
            return (decision, Tat(tat));
        }
        let decision = Decision::allowed(self.burst, self.remaining(new_tat, now), new_tat - now);
        (decision, Tat(new_tat))
    }
}

impl Gcra {
    /// Units that could be admitted right now given a TAT.
    fn remaining(&self, tat: Nanos, now: Nanos) -> u64 {
        let used = tat.saturating_sub(now).div_ceil(self.interval);
        self.burst.saturating_sub(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn gcra(count: u64, period_s: u64, burst: u64) -> Gcra {
        Gcra::from_interval(period_s * SECOND / count, burst)
    }

    /// Runs requests at the given times and returns which were admitted.
    fn run(g: &Gcra, times: &[Nanos]) -> Vec<bool> {
        let mut state = None;
        times
            .iter()
            .map(|&t| {
                let (d, s) = g.decide(state.as_ref(), t, 1);
                if d.allowed {
                    state = Some(s);
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn admits_a_full_burst_then_denies() {
        let g = gcra(10, 1, 10);
        let results = run(&g, &[0; 11]);
        assert_eq!(results.iter().filter(|a| **a).count(), 10);
        assert!(!results[10]);
    }

    #[test]
    fn refills_one_unit_per_interval() {
        let g = gcra(10, 1, 10);
        let mut times = vec![0; 10];
        times.push(SECOND / 10 - 1);
        times.push(SECOND / 10);
        assert_eq!(run(&g, &times)[10..], [false, true]);
    }

    #[test]
    fn burst_smaller_than_count_spaces_requests() {
        let g = gcra(100, 1, 1);
        assert_eq!(run(&g, &[0, 1, SECOND / 100]), vec![true, false, true]);
    }

    #[test]
    fn remaining_counts_down_and_never_underflows() {
        let g = gcra(3, 1, 3);
        let mut state = None;
        let mut seen = vec![];
        for _ in 0..5 {
            let (d, s) = g.decide(state.as_ref(), 0, 1);
            if d.allowed {
                state = Some(s);
            }
            seen.push(d.remaining);
        }
        assert_eq!(seen, vec![2, 1, 0, 0, 0]);
    }

    #[test]
    fn retry_after_is_exactly_when_the_next_request_passes() {
        let g = gcra(2, 1, 2);
        let (_, s) = g.decide(None, 0, 1);
        let (_, s) = g.decide(Some(&s), 0, 1);
        let (denied, _) = g.decide(Some(&s), 0, 1);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after, SECOND / 2);
        let (early, _) = g.decide(Some(&s), denied.retry_after - 1, 1);
        assert!(!early.allowed);
        let (ok, _) = g.decide(Some(&s), denied.retry_after, 1);
        assert!(ok.allowed);
    }

    #[test]
    fn reset_is_when_the_bucket_is_full_again() {
        let g = gcra(4, 1, 4);
        let (d, _) = g.decide(None, 0, 1);
        assert_eq!(d.reset_after, SECOND / 4);
    }

    #[test]
    fn denied_request_leaves_state_unchanged() {
        let g = gcra(1, 1, 1);
        let (_, s) = g.decide(None, 0, 1);
        let (d, after) = g.decide(Some(&s), 0, 1);
        assert!(!d.allowed);
        assert_eq!(after, s);
    }

    #[test]
    fn cost_above_burst_is_never_admitted() {
        let g = gcra(5, 1, 5);
        let (d, _) = g.decide(None, 0, 6);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Nanos::MAX);
    }
}
