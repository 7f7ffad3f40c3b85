//! What the benches share: the algorithms at a rate no run exhausts, and
//! client keys and checks by number.

use http::HeaderMap;
use tollgate::identity::{ApiKeySources, ClientKey, KeyPart, KeySpec, RequestFacts};
use tollgate::limit::{
    Check, FixedWindow, Gcra, LeakyBucket, LimitId, Limiter, SlidingCounter, SlidingLog,
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

pub fn key(n: u32) -> ClientKey<'static> {
    static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    static SOURCES: std::sync::OnceLock<ApiKeySources> = std::sync::OnceLock::new();
    let facts = RequestFacts {
        headers: HEADERS.get_or_init(HeaderMap::new),
        query: None,
        client_ip: std::net::Ipv4Addr::from(n).into(),
        ipv6_prefix: 64,
        api_key: SOURCES.get_or_init(ApiKeySources::default),
    };
    KeySpec(vec![KeyPart::Ip])
        .extract(&facts)
        .unwrap_or_else(|_| unreachable!())
}

pub fn check(limiter: Limiter, client: u32) -> Check<'static> {
    Check {
        limit: LimitId(7),
        limiter,
        key: key(client),
        cost: 1,
        enforced: true,
    }
}
