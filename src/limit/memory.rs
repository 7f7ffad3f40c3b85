//! The in-process store: limiter state in sharded hash maps.
//!
//! Entries are keyed by a 128-bit keyed hash of (limit, client key), so a tracked
//! key costs the same few dozen bytes whatever the client sent, and no request
//! allocates a key. The hash key is random per process, so clients cannot aim
//! collisions. A request locks only the shards its keys live in, always in
//! ascending order, which makes multi-limit decisions atomic without a global lock.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Check, Decision, LimitId, LimitState, Nanos, Store, StoreError};

/// The most limits one request can be decided against (a config limit per rule).
pub const MAX_CHECKS: usize = 8;

struct Entry {
    /// Which limit the state belongs to, so a limit's state can be released
    /// when a reload removes or changes it.
    limit: LimitId,
    state: LimitState,
    expires_at: Nanos,
}

/// The map key is already a uniform random hash; hashing it again is waste.
#[derive(Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n >> 64) as u64 ^ n as u64;
    }
}

type Shard = HashMap<u128, Entry, BuildHasherDefault<PrehashedHasher>>;

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hash_lo: RandomState,
    hash_hi: RandomState,
}

impl Default for MemoryStore {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards((cpus * 16).next_power_of_two())
    }
}

impl MemoryStore {
    pub fn with_shards(count: usize) -> Self {
        let count = count.max(1).next_power_of_two();
        MemoryStore {
            shards: (0..count).map(|_| Mutex::new(Shard::default())).collect(),
            hash_lo: RandomState::new(),
            hash_hi: RandomState::new(),
        }
    }

    fn entry_key(&self, check: &Check<'_>) -> u128 {
        let item = (check.limit, &check.key);
        let lo = self.hash_lo.hash_one(item);
        let hi = self.hash_hi.hash_one(item);
        (u128::from(hi) << 64) | u128::from(lo)
    }

    fn shard_of(&self, key: u128) -> usize {
        (key as usize) & (self.shards.len() - 1)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave an entry half-written (each
        // insert is one operation), so the data is still good.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides all checks at `now`; see [`Store`] for the atomicity promise.
    ///
    /// # Panics
    /// If given more than [`MAX_CHECKS`] checks (config validation forbids it).
    pub fn decide_now(&self, checks: &[Check<'_>], now: Nanos) -> Vec<Decision> {
        assert!(
            checks.len() <= MAX_CHECKS,
            "too many limits for one request"
        );
        let mut keys = [0u128; MAX_CHECKS];
        let mut shards = [usize::MAX; MAX_CHECKS];
        for (i, check) in checks.iter().enumerate() {
            keys[i] = self.entry_key(check);
            shards[i] = self.shard_of(keys[i]);
        }
        let mut order = shards;
        order[..checks.len()].sort_unstable();
        let mut guards: [Option<MutexGuard<'_, Shard>>; MAX_CHECKS] = Default::default();
        let mut previous = usize::MAX;
        for &shard in &order[..checks.len()] {
            if shard != previous {
                guards[shard_slot(&order, checks.len(), shard)] = Some(self.lock(shard));
                previous = shard;
            }
        }

        let mut decisions = Vec::with_capacity(checks.len());
        let mut next_states = [None; MAX_CHECKS];
        let mut denied = false;
        for (i, check) in checks.iter().enumerate() {
            let slot = shard_slot(&order, checks.len(), shards[i]);
            let Some(map) = guards[slot].as_deref() else {
                unreachable!("every shard in use was locked above");
            };
            let current = map
                .get(&keys[i])
                .filter(|e| e.expires_at > now)
                .map(|e| &e.state);
            let (decision, next) = check.limiter.decide(current, now, check.cost);
            denied |= check.enforced && !decision.allowed;
            if decision.allowed {
                next_states[i] = Some(next);
            }
            decisions.push(decision);
        }
        if !denied {
            for (i, check) in checks.iter().enumerate() {
                if let Some(state) = next_states[i] {
                    let slot = shard_slot(&order, checks.len(), shards[i]);
                    if let Some(map) = guards[slot].as_deref_mut() {
                        let expires_at = now.saturating_add(check.limiter.ttl(&state, now));
                        map.insert(
                            keys[i],
                            Entry {
                                limit: check.limit,
                                state,
                                expires_at,
                            },
                        );
                    }
                }
            }
        }
        decisions
    }

    /// Drops state that has expired by `now`, one shard at a time so that no
    /// request waits for more than one shard's sweep.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.retain(|e| e.expires_at > now)
    }

    /// Drops the state of every limit `keep` says no longer exists.
    pub fn release(&self, keep: impl Fn(LimitId) -> bool) -> usize {
        self.retain(|e| keep(e.limit))
    }

    fn retain(&self, keep: impl Fn(&Entry) -> bool) -> usize {
        let mut removed = 0;
        for shard in 0..self.shards.len() {
            let mut map = self.lock(shard);
            let before = map.len();
            map.retain(|_, e| keep(e));
            removed += before - map.len();
        }
        removed
    }

    /// Number of tracked (limit, key) states.
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Index of the first occurrence of `shard` in the sorted prefix: the slot its
/// guard is kept in.
fn shard_slot(order: &[usize; MAX_CHECKS], len: usize, shard: usize) -> usize {
    order[..len].partition_point(|&s| s < shard)
}

impl Store for MemoryStore {
    async fn decide(&self, checks: &[Check<'_>], now: Nanos) -> Result<Vec<Decision>, StoreError> {
        Ok(self.decide_now(checks, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::Rate;
    use crate::identity::{ApiKeySources, KeyPart, KeySpec, RequestFacts};
    use crate::limit::{Gcra, LimitId, Limiter};
    use http::HeaderMap;
    use std::sync::Arc;
    use std::time::Duration;

    fn limiter(count: u64) -> Limiter {
        Limiter::Gcra(Gcra::new(
            Rate {
                count,
                period: Duration::from_secs(60),
            },
            count,
        ))
    }

    fn check<'a>(id: u64, count: u64, key: crate::identity::ClientKey<'a>) -> Check<'a> {
        Check {
            limit: LimitId(id),
            limiter: limiter(count),
            key,
            cost: 1,
            enforced: true,
        }
    }

    fn global_key() -> crate::identity::ClientKey<'static> {
        static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        static SOURCES: std::sync::OnceLock<ApiKeySources> = std::sync::OnceLock::new();
        let facts = RequestFacts {
            headers: HEADERS.get_or_init(HeaderMap::new),
            query: None,
            client_ip: "192.0.2.1".parse().unwrap(),
            ipv6_prefix: 64,
            api_key: SOURCES.get_or_init(ApiKeySources::default),
        };
        KeySpec(vec![KeyPart::Global]).extract(&facts).unwrap()
    }

    #[test]
    fn a_denial_by_one_limit_spends_nothing_from_the_others() {
        let store = MemoryStore::with_shards(4);
        let roomy = || check(1, 10, global_key());
        let tight = || check(2, 1, global_key());
        assert!(store
            .decide_now(&[roomy(), tight()], 0)
            .iter()
            .all(|d| d.allowed));
        let second = store.decide_now(&[roomy(), tight()], 0);
        assert!(second[0].allowed && !second[1].allowed);
        // The roomy limit still has 9 left: the denied request took nothing.
        let alone = store.decide_now(&[roomy()], 0);
        assert_eq!(alone[0].remaining, 8);
    }

    #[test]
    fn shadow_denial_does_not_block_spending() {
        let store = MemoryStore::with_shards(4);
        let mut shadow = check(2, 1, global_key());
        shadow.enforced = false;
        store.decide_now(&[check(1, 10, global_key()), shadow.clone()], 0);
        let d = store.decide_now(&[check(1, 10, global_key()), shadow], 0);
        assert!(!d[1].allowed);
        assert_eq!(d[0].remaining, 8);
    }

    #[test]
    fn distinct_limits_do_not_share_state() {
        let store = MemoryStore::with_shards(4);
        store.decide_now(&[check(1, 1, global_key())], 0);
        assert!(store.decide_now(&[check(2, 1, global_key())], 0)[0].allowed);
    }

    #[test]
    fn sweep_drops_expired_state_only() {
        let store = MemoryStore::with_shards(4);
        store.decide_now(&[check(1, 60, global_key())], 0);
        assert_eq!(store.len(), 1);
        assert_eq!(store.sweep(500_000_000), 0);
        assert_eq!(store.sweep(2_000_000_000), 1);
        assert!(store.is_empty());
    }

    #[test]
    fn release_drops_only_the_named_limits_state() {
        let store = MemoryStore::with_shards(4);
        store.decide_now(&[check(1, 10, global_key()), check(2, 10, global_key())], 0);
        assert_eq!(store.release(|id| id != LimitId(1)), 1);
        assert_eq!(
            store.decide_now(&[check(1, 10, global_key())], 0)[0].remaining,
            9
        );
        assert_eq!(
            store.decide_now(&[check(2, 10, global_key())], 0)[0].remaining,
            8
        );
    }

    #[test]
    fn concurrent_requests_admit_exactly_the_quota() {
        let store = Arc::new(MemoryStore::with_shards(2));
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let d = store.decide_now(
                            &[check(1, 1000, global_key()), check(2, 100, global_key())],
                            0,
                        );
                        if d.iter().all(|d| d.allowed) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 100);
        assert_eq!(
            store.decide_now(&[check(1, 1000, global_key())], 0)[0].remaining,
            899
        );
    }
}
