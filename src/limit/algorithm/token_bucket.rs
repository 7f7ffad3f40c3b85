//! Token bucket: holds up to `burst` tokens and gains one every `period / count`;
//! a request takes `cost` tokens or is refused. With `debt: N`, a client whose
//! balance is not negative may overdraw it by up to N tokens; while the
//! balance is negative nothing more is admitted — the debt is paid back (by
//! refill) first. Without debt it admits exactly what GCRA admits.
//! Levels are kept in nanoseconds of refill time, so all arithmetic is exact.

use super::{Algorithm, Decision, Nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenBucket {
    pub(crate) interval: Nanos,
    pub(crate) capacity: u64,
    pub(crate) debt: u64,
}

/// The level (in ns of refill; negative when in debt) at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenState {
    pub level: i64,
    pub(crate) at: Nanos,
}

impl TokenBucket {
    pub fn new(interval: Nanos, capacity: u64, debt: u64) -> Self {
        TokenBucket {
            interval: interval.max(1),
            capacity: capacity.max(1),
            debt,
        }
    }

    fn full(&self) -> i64 {
        (self.capacity as i64).saturating_mul(self.interval as i64)
    }

    fn level_at(&self, state: Option<&TokenState>, now: Nanos) -> i64 {
        match state {
            None => self.full(),
            Some(s) => {
                let refill = now.saturating_sub(s.at).min(i64::MAX as u64) as i64;
                s.level.saturating_add(refill).min(self.full())
            }
        }
    }

    /// Whole tokens available at `level` (never negative).
    fn tokens(&self, level: i64) -> u64 {
        (level.max(0) as u64) / self.interval
    }
}

impl Algorithm for TokenBucket {
    type State = TokenState;

    fn decide(&self, state: Option<&TokenState>, now: Nanos, cost: u64) -> (Decision, TokenState) {
        // An older `now` than the stored one must not be credited twice.
        let now = state.map_or(now, |s| now.max(s.at));
        let level = self.level_at(state, now);
        let need = (cost as i64).saturating_mul(self.interval as i64);
        let floor = -(self.debt as i64).saturating_mul(self.interval as i64);
        let after = level.saturating_sub(need);
        let full = self.full();
        // Borrowing starts only from a balance that is not in debt: a client
        // in debt pays it back before anything more is admitted.
        if cost > self.capacity + self.debt || level < 0 || after < floor {
            let retry_after = if cost > self.capacity + self.debt {
                Nanos::MAX
            } else {
                // Until the balance is back to max(0, what this cost needs).
                let target = need.saturating_add(floor).max(0);
                (target - level) as Nanos
            };
            let decision = Decision::denied(
                self.capacity,
                self.tokens(level),
                (full - level) as Nanos,
                retry_after,
            );
            return (decision, TokenState { level, at: now });
        }
        let decision =
            Decision::allowed(self.capacity, self.tokens(after), (full - after) as Nanos);
        (
            decision,
            TokenState {
                level: after,
                at: now,
            },
        )
    }

    fn ttl(&self, state: &TokenState, now: Nanos) -> Nanos {
        let full_at = state
            .at
            .saturating_add((self.full() - state.level).max(0) as Nanos);
        full_at.saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn run(b: &TokenBucket, times: &[Nanos]) -> Vec<bool> {
        let mut state = None;
        times
            .iter()
            .map(|&t| {
                let (d, s) = b.decide(state.as_ref(), t, 1);
                if d.allowed {
                    state = Some(s);
                }
                d.allowed
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_its_capacity_then_refills() {
        let b = TokenBucket::new(100 * MS, 3, 0);
        assert_eq!(
            run(&b, &[0, 0, 0, 0, 100 * MS]),
            vec![true, true, true, false, true]
        );
    }

    #[test]
    fn debt_lends_tokens_that_must_be_paid_back_first() {
        let b = TokenBucket::new(100 * MS, 2, 2);
        // Two tokens, then one borrowed from a zero balance; in debt, nothing more.
        assert_eq!(
            run(&b, &[0, 0, 0, 0, 0]),
            vec![true, true, true, false, false]
        );
        let mut state = None;
        for _ in 0..3 {
            state = Some(b.decide(state.as_ref(), 0, 1).1);
        }
        let (denied, _) = b.decide(state.as_ref(), 0, 1);
        // At -1 token the debt is repaid after one interval.
        assert_eq!(denied.retry_after, 100 * MS);
        assert_eq!(denied.remaining, 0);
        assert!(!b.decide(state.as_ref(), 100 * MS - 1, 1).0.allowed);
        assert!(b.decide(state.as_ref(), 100 * MS, 1).0.allowed);
    }

    #[test]
    fn a_positive_balance_may_overdraw_by_up_to_the_debt() {
        let b = TokenBucket::new(100 * MS, 4, 3);
        // One token left, a request of cost 4 overdraws by 3: allowed.
        let (_, s) = b.decide(None, 0, 3);
        assert!(b.decide(Some(&s), 0, 4).0.allowed);
        assert!(
            !b.decide(Some(&s), 0, 5).0.allowed,
            "overdrawing by 4 is more than the debt"
        );
    }

    #[test]
    fn a_cost_above_capacity_and_debt_is_never_admitted() {
        let b = TokenBucket::new(MS, 2, 1);
        assert_eq!(b.decide(None, 0, 4).0.retry_after, Nanos::MAX);
    }
}
