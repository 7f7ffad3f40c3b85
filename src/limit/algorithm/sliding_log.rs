//! Sliding window log: exact. Keeps the time (and cost) of every admitted
//! request of the last `period`; a request is admitted when those plus its own
//! cost stay within `count`. A denied request is never recorded, so retrying
//! does not make the wait longer. Costs memory per counted request, so its
//! limit is capped (see `MAX_LOG_LIMIT`).

use std::collections::VecDeque;

use super::{Algorithm, Decision, Nanos};

/// The largest `count` a sliding log may have: each counted request is kept.
pub(crate) const MAX_LOG_LIMIT: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlidingLog {
    pub(crate) period: Nanos,
    pub(crate) limit: u64,
}

/// Admitted requests, oldest first: (time, cost).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogState {
    pub(crate) entries: VecDeque<(Nanos, u32)>,
}

impl SlidingLog {
    pub fn new(period: Nanos, limit: u64) -> Self {
        SlidingLog {
            period: period.max(1),
            limit: limit.clamp(1, MAX_LOG_LIMIT),
        }
    }

    /// Whether an entry made at `at` still counts at `now`.
    fn counts(&self, at: Nanos, now: Nanos) -> bool {
        at.saturating_add(self.period) > now
    }
}

impl Algorithm for SlidingLog {
    type State = LogState;

    fn decide(&self, state: Option<&LogState>, now: Nanos, cost: u64) -> (Decision, LogState) {
        let mut log = state.cloned().unwrap_or_default();
        // Entries stay in time order even if `now` is older than the newest.
        let now = log.entries.back().map_or(now, |&(at, _)| now.max(at));
        while log
            .entries
            .front()
            .is_some_and(|&(at, _)| !self.counts(at, now))
        {
            log.entries.pop_front();
        }
        let used: u64 = log.entries.iter().map(|&(_, c)| u64::from(c)).sum();
        let newest = log.entries.back().map(|&(at, _)| at);
        let reset_after = newest.map_or(0, |at| at + self.period - now);
        if used.saturating_add(cost) > self.limit {
            // The wait ends when enough of the oldest entries have aged out.
            let mut to_free = used.saturating_add(cost) - self.limit;
            let mut retry_after = Nanos::MAX;
            if cost <= self.limit {
                for &(at, c) in &log.entries {
                    to_free = to_free.saturating_sub(u64::from(c));
                    if to_free == 0 {
                        retry_after = at + self.period - now;
                        break;
                    }
                }
            }
            let decision = Decision::denied(
                self.limit,
                self.limit.saturating_sub(used),
                reset_after,
                retry_after,
            );
            return (decision, log);
        }
        log.entries
            .push_back((now, u32::try_from(cost).unwrap_or(u32::MAX)));
        let decision = Decision::allowed(self.limit, self.limit - used - cost, self.period);
        (decision, log)
    }

    fn ttl(&self, state: &LogState, now: Nanos) -> Nanos {
        state
            .entries
            .back()
            .map_or(0, |&(at, _)| (at + self.period).saturating_sub(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_count_requests_in_any_period() {
        let l = SlidingLog::new(1000, 2);
        let mut state = None;
        let mut seen = Vec::new();
        for t in [0, 600, 999, 1000, 1300, 1599, 1600] {
            let (d, s) = l.decide(state.as_ref(), t, 1);
            if d.allowed {
                state = Some(s);
            }
            seen.push(d.allowed);
        }
        // 0 and 600 fill it; 0 ages out at 1000; 600 at 1600.
        assert_eq!(seen, vec![true, true, false, true, false, false, true]);
    }

    #[test]
    fn retry_after_is_when_the_oldest_needed_entry_ages_out() {
        let l = SlidingLog::new(1000, 2);
        let (_, s) = l.decide(None, 100, 1);
        let (_, s) = l.decide(Some(&s), 400, 1);
        let (denied, _) = l.decide(Some(&s), 500, 1);
        assert_eq!(denied.retry_after, 600);
        assert!(!l.decide(Some(&s), 1099, 1).0.allowed);
        assert!(l.decide(Some(&s), 1100, 1).0.allowed);
    }
}
