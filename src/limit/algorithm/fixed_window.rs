//! Fixed window: at most `count` per window of `period`, windows aligned to
//! multiples of the period on the limiter's clock. Simple and cheap, but a
//! client can send `count` at the end of one window and `count` more at the
//! start of the next: up to twice the rate across a boundary.

use super::{Algorithm, Decision, Nanos};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedWindow {
    pub(crate) period: Nanos,
    pub(crate) limit: u64,
}

/// The count of the window that starts at `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    pub(crate) start: Nanos,
    pub(crate) count: u64,
}

impl FixedWindow {
    pub fn new(period: Nanos, limit: u64) -> Self {
        FixedWindow {
            period: period.max(1),
            limit: limit.max(1),
        }
    }
}

impl Algorithm for FixedWindow {
    type State = WindowState;

    fn decide(
        &self,
        state: Option<&WindowState>,
        now: Nanos,
        cost: u64,
    ) -> (Decision, WindowState) {
        // A request decided with a time older than the stored window's start
        // belongs to that window, not to an earlier (empty) one.
        let now = state.map_or(now, |s| now.max(s.start));
        let start = now - now % self.period;
        let count = state.filter(|s| s.start == start).map_or(0, |s| s.count);
        let ends_in = start + self.period - now;
        let after = count.saturating_add(cost);
        if after > self.limit {
            let retry_after = if cost > self.limit {
                Nanos::MAX
            } else {
                ends_in
            };
            let decision = Decision::denied(
                self.limit,
                self.limit.saturating_sub(count),
                ends_in,
                retry_after,
            );
            return (decision, WindowState { start, count });
        }
        let decision = Decision::allowed(self.limit, self.limit - after, ends_in);
        (
            decision,
            WindowState {
                start,
                count: after,
            },
        )
    }

    fn ttl(&self, state: &WindowState, now: Nanos) -> Nanos {
        (state.start + self.period).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_reset_at_the_window_boundary() {
        let w = FixedWindow::new(1000, 2);
        let mut state = None;
        let mut seen = Vec::new();
        for t in [0, 10, 20, 999, 1000, 1001, 1002] {
            let (d, s) = w.decide(state.as_ref(), t, 1);
            if d.allowed {
                state = Some(s);
            }
            seen.push(d.allowed);
        }
        assert_eq!(seen, vec![true, true, false, false, true, true, false]);
    }

    #[test]
    fn a_denial_waits_for_the_next_window() {
        let w = FixedWindow::new(1000, 1);
        let (_, s) = w.decide(None, 250, 1);
        assert_eq!(w.decide(Some(&s), 300, 1).0.retry_after, 700);
    }
}
