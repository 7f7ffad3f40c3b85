//! Bounded state (ARCHITECTURE.md, promise 6): a flood of distinct keys cannot grow the
//! store past `max_keys`, nor evict a client that keeps coming back.

mod common;

use common::keys::client_key;
use tollgate::limit::{Check, Gcra, LimitId, Limiter, MemoryStore, SyncMode};

const CAPACITY: usize = 100_000;
const FLOOD: u32 = 1_000_000;
const HOUR: u64 = 3_600_000_000_000;

#[test]
fn a_million_random_keys_stay_within_max_keys_and_spare_an_active_client() {
    let store = MemoryStore::new(CAPACITY, None);
    // 1000 per hour: nothing refills during the test, so state is all there is.
    let limiter = Limiter::Gcra(Gcra::from_interval(HOUR / 1000, 1000));
    let check = |client: u32| Check {
        limit: LimitId(1),
        limiter,
        key: client_key(client),
        cost: 1,
        enforced: true,
        sync: SyncMode::Exact,
        ban: None,
    };
    let active = u32::MAX;
    let mut active_requests = 0;
    for n in 0..FLOOD {
        store.decide_now(&[check(n)], u64::from(n));
        // The active client: a request every thousand flood keys.
        if n % 1_000 == 0 {
            assert!(store.decide_now(&[check(active)], u64::from(n)).decisions[0].allowed);
            active_requests += 1;
        }
    }
    assert_eq!(active_requests, 1_000);
    // Its state survived: the quota is spent, so the next request is refused.
    assert!(
        !store
            .decide_now(&[check(active)], u64::from(FLOOD))
            .decisions[0]
            .allowed
    );

    let held = store.len();
    assert!(
        held <= CAPACITY + 64,
        "{held} states for a cap of {CAPACITY}"
    );
    assert!(store.evictions() >= u64::from(FLOOD) - CAPACITY as u64);
    let bytes = store.approx_bytes();
    let per_key = bytes / held;
    println!("{held} keys in {bytes} bytes: {per_key} bytes per key");
    assert!(bytes < CAPACITY * 160, "{bytes} bytes for {held} keys");
}
