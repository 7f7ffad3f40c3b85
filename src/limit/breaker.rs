//! A lock-free circuit breaker: after `failures` consecutive failures a
//! store is not asked again until a cool-down has passed, then by one probe
//! at a time. A dead Redis then costs one timeout per cool-down, not one per
//! request. Time is passed in, so tests drive it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use super::Nanos;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failures: u32,
    /// How long it stays open before one request probes the store again.
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum BreakerState {
    Closed = 0,
    Open = 1,
    /// Open, with one probe in flight.
    HalfOpen = 2,
}

impl BreakerState {
    pub(crate) fn label(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// A lock-free circuit breaker. Time is passed in, so tests drive it.
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    failures: AtomicU32,
    /// When it opened, or when the last probe started.
    since: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(settings: BreakerSettings) -> Self {
        Breaker {
            settings,
            state: AtomicU8::new(BreakerState::Closed as u8),
            failures: AtomicU32::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// How long it stays open before the next probe.
    pub(crate) fn cooldown(&self) -> Duration {
        self.settings.cooldown
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may try the store at `now`. While open, one request per
    /// cool-down is let through as the probe; a probe that never reports (its
    /// client went away) is replaced after another cool-down.
    pub(crate) fn admit(&self, now: Nanos) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state == BreakerState::Closed as u8 {
            return true;
        }
        let since = self.since.load(Ordering::Acquire);
        if now.saturating_sub(since) < self.settings.cooldown.as_nanos() as Nanos {
            return false;
        }
        // Claim this cool-down's probe; only one caller can move `since`.
        if self
            .since
            .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return false;
        }
        // Half-open only if still open: a success may have closed it since
        // (then this request simply goes to the store).
        let _ = self.state.compare_exchange(
            state,
            BreakerState::HalfOpen as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        true
    }

    /// How long after `now` the next probe may start; `None` while closed.
    pub(crate) fn probe_due_in(&self, now: Nanos) -> Option<Duration> {
        if self.state() == BreakerState::Closed {
            return None;
        }
        let since = self.since.load(Ordering::Acquire);
        let due = since.saturating_add(self.settings.cooldown.as_nanos() as Nanos);
        Some(Duration::from_nanos(due.saturating_sub(now)))
    }

    /// Records a successful call: the breaker closes.
    pub(crate) fn succeeded(&self) {
        // Loads first: the hot path must not write a shared cache line.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state() != BreakerState::Closed {
            self.state
                .store(BreakerState::Closed as u8, Ordering::Release);
        }
    }

    /// Records a failed call at `now`; returns true when this call opened
    /// the breaker (exactly one of several racing failures does).
    pub(crate) fn failed(&self, now: Nanos) -> bool {
        let state = self.state();
        if state != BreakerState::Closed {
            // A failed probe (or a call that started before it opened).
            self.since.store(now, Ordering::Release);
            self.state
                .store(BreakerState::Open as u8, Ordering::Release);
            return state == BreakerState::HalfOpen;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures < self.settings.failures {
            return false;
        }
        self.since.store(now, Ordering::Release);
        let opened = self
            .state
            .compare_exchange(
                BreakerState::Closed as u8,
                BreakerState::Open as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if opened {
            self.failures.store(0, Ordering::Relaxed);
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn breaker() -> Breaker {
        Breaker::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_millis(100),
        })
    }

    #[test]
    fn opens_after_the_configured_consecutive_failures() {
        let b = breaker();
        assert!(!b.failed(0));
        assert!(!b.failed(0));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.failed(0));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit(50 * MS));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = breaker();
        b.failed(0);
        b.failed(0);
        b.succeeded();
        b.failed(0);
        b.failed(0);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn lets_one_probe_through_after_the_cooldown() {
        let b = breaker();
        (0..3).for_each(|_| {
            b.failed(0);
        });
        assert!(b.admit(100 * MS));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(!b.admit(101 * MS), "one probe at a time");
    }

    #[test]
    fn a_successful_probe_closes_it() {
        let b = breaker();
        (0..3).for_each(|_| {
            b.failed(0);
        });
        assert!(b.admit(100 * MS));
        b.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit(101 * MS));
    }

    #[test]
    fn a_failed_probe_reopens_it_for_another_cooldown() {
        let b = breaker();
        (0..3).for_each(|_| {
            b.failed(0);
        });
        assert!(b.admit(100 * MS));
        b.failed(110 * MS);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.admit(150 * MS));
        assert!(b.admit(210 * MS));
    }

    #[test]
    fn racing_callers_leave_it_closed_after_redis_recovers() {
        let b = std::sync::Arc::new(breaker());
        let opened = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let (b, opened) = (&b, &opened);
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        let now = (i * 4 + t) * MS / 10;
                        if b.admit(now) {
                            // Runs of 50 successes and 100 failures per thread.
                            if (i / 50 + t).is_multiple_of(3) {
                                b.succeeded();
                            } else if b.failed(now) {
                                opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        assert!(opened.load(std::sync::atomic::Ordering::Relaxed) > 0);
        // Redis is back: the next probe's success closes it for everyone.
        let later = 10_000 * 4 * MS;
        assert!(b.admit(later));
        b.succeeded();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit(later + 1));
    }

    #[test]
    fn only_one_of_racing_failures_reports_the_opening() {
        let b = std::sync::Arc::new(Breaker::new(BreakerSettings {
            failures: 1,
            cooldown: Duration::from_secs(60),
        }));
        let opened = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let (b, opened) = (&b, &opened);
                s.spawn(move || {
                    if b.failed(0) {
                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(opened.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn the_next_probe_is_due_a_cooldown_after_the_last_one_started() {
        let b = breaker();
        assert_eq!(b.probe_due_in(0), None, "closed: nothing to probe");
        (0..3).for_each(|_| {
            b.failed(10 * MS);
        });
        assert_eq!(b.probe_due_in(40 * MS), Some(Duration::from_millis(70)));
        assert_eq!(b.probe_due_in(150 * MS), Some(Duration::ZERO));
        assert!(b.admit(150 * MS));
        assert_eq!(b.probe_due_in(150 * MS), Some(Duration::from_millis(100)));
        b.succeeded();
        assert_eq!(b.probe_due_in(160 * MS), None);
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let b = breaker();
        (0..3).for_each(|_| {
            b.failed(0);
        });
        assert!(b.admit(100 * MS));
        assert!(!b.admit(150 * MS));
        assert!(b.admit(200 * MS));
    }
}
