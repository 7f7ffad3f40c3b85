//! Whether an upstream's server should get traffic: the verdict of active
//! checks (so many passes in a row to come back, so many failures to go),
//! and passive ejection after consecutive failed connects. Plain state and
//! functions of `now`; the checks themselves are Pingora's
//! (`pingora::lb::health_check`), run by the server's background service.
//!
//! A server's state is shared by every snapshot that has the server in the
//! same upstream, so a reload neither forgets an ejection nor resets a
//! check's count.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds on the gateway's monotonic clock.
pub(crate) type Nanos = u64;

/// How an upstream's servers are checked (the `health:` of an upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ActiveSettings {
    /// `Some`: an HTTP GET of this path must answer 200; `None`: a TCP
    /// connect (with TLS, a handshake too) must succeed.
    pub(crate) path: Option<String>,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Passes in a row that bring an unhealthy server back.
    pub(crate) healthy: u32,
    /// Failures in a row that take a healthy server out.
    pub(crate) unhealthy: u32,
}

/// Passive ejection: so many failed connects in a row take a server out
/// for `eject_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PassiveSettings {
    pub(crate) failures: u32,
    pub(crate) eject_for: Duration,
}

/// One server's health.
#[derive(Debug)]
pub(crate) struct ServerHealth {
    /// The active checks' verdict (true until they say otherwise).
    up: AtomicBool,
    /// Consecutive check results that disagree with `up`.
    streak: AtomicU32,
    /// Consecutive failed connects of requests.
    connect_failures: AtomicU32,
    /// Not before this instant (ejected until then).
    ejected_until: AtomicU64,
    /// When the next active check is due.
    next_check: AtomicU64,
    /// A check is running: the next waits for it (a slow server is not
    /// probed again while it has not answered, and results stay in order).
    checking: AtomicBool,
}

impl Default for ServerHealth {
    fn default() -> Self {
        ServerHealth {
            up: AtomicBool::new(true),
            streak: AtomicU32::new(0),
            connect_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            next_check: AtomicU64::new(0),
            checking: AtomicBool::new(false),
        }
    }
}

fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl ServerHealth {
    /// Whether the server may get a request at `now`.
    pub(crate) fn available(&self, now: Nanos) -> bool {
        self.up.load(Ordering::Relaxed) && now >= self.ejected_until.load(Ordering::Relaxed)
    }

    /// Records one active check's result; returns the new verdict when it
    /// changed.
    pub(crate) fn record_check(&self, passed: bool, settings: &ActiveSettings) -> Option<bool> {
        self.checking.store(false, Ordering::Relaxed);
        let up = self.up.load(Ordering::Relaxed);
        if passed == up {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if passed {
            settings.healthy
        } else {
            settings.unhealthy
        };
        if streak < needed {
            return None;
        }
        self.streak.store(0, Ordering::Relaxed);
        self.up.store(passed, Ordering::Relaxed);
        if passed {
            // Back by the checks: an ejection from before does not linger.
            self.ejected_until.store(0, Ordering::Relaxed);
            self.connect_failures.store(0, Ordering::Relaxed);
        }
        Some(passed)
    }

    /// A request could not connect; returns whether that ejected the server.
    pub(crate) fn connect_failed(&self, now: Nanos, passive: Option<&PassiveSettings>) -> bool {
        let Some(passive) = passive else { return false };
        let failures = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < passive.failures {
            return false;
        }
        self.connect_failures.store(0, Ordering::Relaxed);
        self.ejected_until.store(
            now.saturating_add(nanos(passive.eject_for)),
            Ordering::Relaxed,
        );
        true
    }

    /// A request connected: the failures before it were not in a row.
    pub(crate) fn connected(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            self.connect_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Whether an active check is due at `now` and none is running; if so,
    /// the caller runs it (and must record its result) and the next one is
    /// scheduled `interval` later.
    pub(crate) fn claim_check(&self, now: Nanos, interval: Duration) -> bool {
        let due = self.next_check.load(Ordering::Relaxed);
        if now < due || self.checking.swap(true, Ordering::Relaxed) {
            return false;
        }
        self.next_check
            .store(now.saturating_add(nanos(interval)), Ordering::Relaxed);
        true
    }

    /// The state a reload hands to the next snapshot: without active checks
    /// there, nothing would ever bring a server the checks took out back, so
    /// their verdict goes; the next check is due at once (the interval may
    /// have changed). An ejection stays until it ends.
    pub(crate) fn carried(&self, checked: bool) -> &Self {
        if !checked {
            self.up.store(true, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
        }
        self.next_check.store(0, Ordering::Relaxed);
        self
    }
}

/// The order requests visit an upstream's servers in: each server index
/// as often as its weight, spread out (a server of weight 3 among weight-1
/// servers does not get three requests in a row).
pub(crate) fn schedule(weights: &[u32]) -> Vec<usize> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let mut credit: Vec<i64> = vec![0; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    // Smooth weighted round robin (as nginx's): each turn every server
    // gains its weight, the richest is chosen and pays the total.
    for _ in 0..total {
        for (c, &w) in credit.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = credit
            .iter()
            .enumerate()
            .max_by_key(|&(i, &c)| (c, std::cmp::Reverse(i)))
        else {
            break;
        };
        credit[best] -= total as i64;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn active(healthy: u32, unhealthy: u32) -> ActiveSettings {
        ActiveSettings {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy,
            unhealthy,
        }
    }

    #[test]
    fn a_server_is_available_until_told_otherwise() {
        assert!(ServerHealth::default().available(0));
    }

    #[test]
    fn a_server_goes_down_after_unhealthy_failed_checks_in_a_row() {
        let health = ServerHealth::default();
        let settings = active(2, 3);
        assert_eq!(health.record_check(false, &settings), None);
        assert_eq!(health.record_check(false, &settings), None);
        assert!(health.available(0));
        assert_eq!(health.record_check(false, &settings), Some(false));
        assert!(!health.available(0));
    }

    #[test]
    fn a_pass_between_failures_restarts_the_count() {
        let health = ServerHealth::default();
        let settings = active(2, 2);
        health.record_check(false, &settings);
        health.record_check(true, &settings);
        assert_eq!(health.record_check(false, &settings), None);
        assert!(health.available(0));
    }

    #[test]
    fn a_down_server_comes_back_after_healthy_passes_in_a_row() {
        let health = ServerHealth::default();
        let settings = active(2, 1);
        health.record_check(false, &settings);
        assert_eq!(health.record_check(true, &settings), None);
        assert_eq!(health.record_check(true, &settings), Some(true));
        assert!(health.available(0));
    }

    #[test]
    fn consecutive_connect_failures_eject_a_server_for_a_while() {
        let health = ServerHealth::default();
        let passive = PassiveSettings {
            failures: 2,
            eject_for: Duration::from_secs(10),
        };
        assert!(!health.connect_failed(0, Some(&passive)));
        assert!(health.connect_failed(SECOND, Some(&passive)));
        assert!(!health.available(5 * SECOND));
        assert!(health.available(11 * SECOND));
    }

    #[test]
    fn a_connect_between_failures_restarts_the_count() {
        let health = ServerHealth::default();
        let passive = PassiveSettings {
            failures: 2,
            eject_for: Duration::from_secs(10),
        };
        health.connect_failed(0, Some(&passive));
        health.connected();
        assert!(!health.connect_failed(0, Some(&passive)));
        assert!(health.available(0));
    }

    #[test]
    fn without_passive_settings_failed_connects_eject_nothing() {
        let health = ServerHealth::default();
        for _ in 0..100 {
            assert!(!health.connect_failed(0, None));
        }
        assert!(health.available(0));
    }

    #[test]
    fn a_check_is_claimed_once_per_interval() {
        let health = ServerHealth::default();
        let interval = Duration::from_secs(1);
        assert!(health.claim_check(0, interval));
        health.record_check(true, &active(1, 1));
        assert!(!health.claim_check(SECOND / 2, interval));
        assert!(health.claim_check(SECOND, interval));
    }

    #[test]
    fn no_check_starts_while_one_is_running() {
        let health = ServerHealth::default();
        let interval = Duration::from_secs(1);
        assert!(health.claim_check(0, interval));
        assert!(!health.claim_check(5 * SECOND, interval));
        health.record_check(false, &active(1, 1));
        assert!(health.claim_check(5 * SECOND, interval));
    }

    #[test]
    fn a_server_the_checks_took_out_is_back_when_a_reload_removes_the_checks() {
        let health = ServerHealth::default();
        health.record_check(false, &active(1, 1));
        assert!(!health.available(0));
        assert!(!health.carried(true).available(0));
        assert!(health.carried(false).available(0));
    }

    #[test]
    fn the_schedule_visits_each_server_as_often_as_its_weight_spread_out() {
        let order = schedule(&[3, 1, 1]);
        assert_eq!(order.len(), 5);
        assert_eq!(order.iter().filter(|&&i| i == 0).count(), 3);
        assert_eq!(order, vec![0, 1, 0, 2, 0]);
    }

    #[test]
    fn equal_weights_are_plain_round_robin() {
        assert_eq!(schedule(&[1, 1, 1]), vec![0, 1, 2]);
    }
}
