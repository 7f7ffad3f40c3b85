//! What the benches share: the algorithms at a rate no run exhausts, and
//! client keys and checks by number.

#[path = "../../tests/common/keys.rs"]
#[allow(dead_code)]
mod keys;

use tollgate::limit::{
    Check, FixedWindow, Gcra, LeakyBucket, LimitId, Limiter, SlidingCounter, SlidingLog, SyncMode,
    TokenBucket,
};

/// A rate no benchmark exhausts: decisions stay on the "allowed" path.
pub const PERIOD: u64 = 3_600_000_000_000;
pub const COUNT: u64 = 1_000_000_000;

pub fn algorithms() -> Vec<(&'static str, Limiter)> {
    let interval = PERIOD / COUNT;
    vec![
        ("gcra", Limiter::Gcra(Gcra::from_interval(interval, COUNT))),
        (
            "token_bucket",
            Limiter::TokenBucket(TokenBucket::new(interval, COUNT, 0)),
        ),
        (
            "leaky_bucket",
            Limiter::LeakyBucket(LeakyBucket::new(interval, COUNT, false)),
        ),
        (
            "fixed_window",
            Limiter::FixedWindow(FixedWindow::new(PERIOD, COUNT)),
        ),
        // The log keeps every request: a realistic limit, not a billion.
        (
            "sliding_window_log",
            Limiter::SlidingLog(SlidingLog::new(1_000_000, 100)),
        ),
        (
            "sliding_window_counter",
            Limiter::SlidingCounter(SlidingCounter::new(PERIOD, COUNT)),
        ),
    ]
}

pub fn check(limiter: Limiter, client: u32) -> Check<'static> {
    Check {
        limit: LimitId(7),
        limiter,
        key: keys::client_key(client),
        cost: 1,
        enforced: true,
        sync: SyncMode::Exact,
        ban: None,
    }
}
