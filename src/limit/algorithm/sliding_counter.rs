//! Sliding window counter: counts per fixed window, and estimates the last
//! `period` as the current window's count plus the previous window's count
//! weighted by how much of it still overlaps. Constant memory; exact when
//! traffic is spread evenly. Its error: if the previous window's requests
//! were bunched at its end, up to twice `count` can be admitted within one
//! period. The estimate is compared exactly (integer cross-multiplication).

use super::{Algorithm, Decision, Nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlidingCounter {
    pub(crate) period: Nanos,
    pub(crate) limit: u64,
}

/// Counts of the window starting at `start` and of the one before it
/// (32 bits suffice: a window's count is at most the limit, at most 10⁹).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterState {
    pub(crate) start: Nanos,
    pub(crate) previous: u32,
    pub(crate) current: u32,
}

impl SlidingCounter {
    pub fn new(period: Nanos, limit: u64) -> Self {
        SlidingCounter {
            period: period.max(1),
            limit: limit.max(1),
        }
    }

    /// The counts as of the window containing `now`.
    fn roll(&self, state: Option<&CounterState>, now: Nanos) -> CounterState {
        let start = now - now % self.period;
        match state {
            Some(s) if s.start == start => *s,
            Some(s) if s.start + self.period == start => CounterState {
                start,
                previous: s.current,
                current: 0,
            },
            _ => CounterState {
                start,
                previous: 0,
                current: 0,
            },
        }
    }

    /// Whether `previous` weighted by the overlap left at `elapsed`, plus
    /// `current`, is within the limit: prev·(P−e)/P + cur ≤ L, multiplied out.
    fn fits(&self, previous: u64, current: u64, elapsed: Nanos) -> bool {
        let p = u128::from(self.period);
        u128::from(previous) * (p - u128::from(elapsed)) + u128::from(current) * p
            <= u128::from(self.limit) * p
    }

    /// Requests still admissible now: ⌊(L·P − prev·(P−e)) / P⌋ − cur.
    fn remaining(&self, previous: u64, current: u64, elapsed: Nanos) -> u64 {
        let p = u128::from(self.period);
        let room = (u128::from(self.limit) * p)
            .saturating_sub(u128::from(previous) * (p - u128::from(elapsed)));
        ((room / p) as u64).saturating_sub(current)
    }

    /// The earliest elapsed time in a window at which `previous` weighted,
    /// plus `current`, fits; `None` if not within that window.
    fn fits_from(&self, previous: u64, current: u64) -> Option<Nanos> {
        if current > self.limit {
            return None;
        }
        if previous == 0 {
            return Some(0);
        }
        // prev·(P−e) ≤ (L−cur)·P  ⇔  e ≥ P − ⌊(L−cur)·P / prev⌋
        let p = u128::from(self.period);
        let allowance = u128::from(self.limit - current) * p / u128::from(previous);
        let elapsed = p.saturating_sub(allowance);
        (elapsed < p).then_some(elapsed as Nanos)
    }
}

impl Algorithm for SlidingCounter {
    type State = CounterState;

    fn decide(
        &self,
        state: Option<&CounterState>,
        now: Nanos,
        cost: u64,
    ) -> (Decision, CounterState) {
        // Time never runs backwards for a key: an older `now` is the stored
        // window's start.
        let now = state.map_or(now, |s| now.max(s.start));
        let s = self.roll(state, now);
        let (previous, current) = (u64::from(s.previous), u64::from(s.current));
        let elapsed = now - s.start;
        let reset_after = match (current, previous) {
            (c, _) if c > 0 => s.start + 2 * self.period - now,
            (_, p) if p > 0 => s.start + self.period - now,
            _ => 0,
        };
        let after = current.saturating_add(cost);
        if cost <= self.limit && self.fits(previous, after, elapsed) {
            // `after` is at most the limit (≤ 10⁹), so it fits in 32 bits.
            let next = CounterState {
                current: u32::try_from(after).unwrap_or(u32::MAX),
                ..s
            };
            let remaining = self.remaining(previous, after, elapsed);
            let reset_after = s.start + 2 * self.period - now;
            return (Decision::allowed(self.limit, remaining, reset_after), next);
        }
        let retry_after = if cost > self.limit {
            Nanos::MAX
        } else if let Some(e) = self.fits_from(previous, after).filter(|&e| e > elapsed) {
            e - elapsed
        } else {
            // In the next window this one's count becomes the weighted one;
            // if even that is too much, the window after starts empty.
            match self.fits_from(current, cost) {
                Some(e) => s.start + self.period + e - now,
                None => s.start + 2 * self.period - now,
            }
        };
        let remaining = self.remaining(previous, current, elapsed);
        (
            Decision::denied(self.limit, remaining, reset_after, retry_after),
            s,
        )
    }

    fn ttl(&self, state: &CounterState, now: Nanos) -> Nanos {
        (state.start + 2 * self.period).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_window_weighs_by_its_overlap() {
        let c = SlidingCounter::new(1000, 10);
        let mut s = CounterState {
            start: 0,
            previous: 0,
            current: 10,
        };
        // Halfway into the next window the previous 10 weigh 5.
        let (d, next) = c.decide(Some(&s), 1500, 5);
        assert!(d.allowed);
        s = next;
        assert!(!c.decide(Some(&s), 1500, 1).0.allowed);
    }

    #[test]
    fn retry_after_is_when_the_weight_has_fallen_enough() {
        let c = SlidingCounter::new(1000, 10);
        let s = CounterState {
            start: 1000,
            previous: 10,
            current: 0,
        };
        // At e=0 all 10 weigh; one more fits once 10·(1000−e)/1000 ≤ 9: e ≥ 100.
        let (d, _) = c.decide(Some(&s), 1000, 1);
        assert_eq!(d.retry_after, 100);
        assert!(!c.decide(Some(&s), 1099, 1).0.allowed);
        assert!(c.decide(Some(&s), 1100, 1).0.allowed);
    }
}
