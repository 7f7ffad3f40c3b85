//! The in-process store: limiter state in sharded, bounded tables.
//!
//! Entries are keyed by a 128-bit keyed hash of (limit, client key) — two
//! foldhash passes with independent random seeds — so a tracked key costs the
//! same few dozen bytes whatever the client sent, and no request allocates a
//! key. The seeds are random per process, so clients cannot aim collisions. A request locks only the shards its keys live in,
//! always in ascending order, which makes multi-limit decisions atomic without
//! a global lock.
//!
//! **Bounded, and flood-proof.** Each shard holds at most its share of
//! `max_keys`, in two LRU lists (segmented LRU): a key seen for the first time
//! enters *probation*; a key used again is promoted to *protected*. When a
//! shard is full, the least recently used probation entry is evicted first;
//! protected entries are evicted only when probation is empty. A flood of
//! random keys — each seen once — only churns probation, so the state of
//! clients that keep coming back survives it. Entries holding concurrency
//! permits are never evicted. Expired state is swept in the background.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use arrayvec::ArrayVec;
use hashbrown::HashTable;
use prometheus::IntCounter;

use super::{Check, Decided, LimitId, LimitState, Nanos, Permit, Store, StoreError};

/// The most limits one request can be decided against (a config limit per rule).
pub const MAX_CHECKS: usize = 8;
/// Share of a shard reserved for protected (returning) keys.
const PROTECTED_SHARE: f64 = 0.8;
/// How far from the LRU end eviction looks for an entry holding no permits.
const EVICTION_SCAN: usize = 16;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Probation,
    Protected,
}

struct Node {
    /// The entry key; `u64` halves keep the node 8-byte aligned.
    key: [u64; 2],
    /// Which limit the state belongs to (the low half of its fingerprint),
    /// so a limit's state can be released when a reload removes or changes
    /// it. Half is enough: a clash only delays a release until expiry.
    limit: u32,
    state: LimitState,
    expires_at: Nanos,
    prev: u32,
    next: u32,
    segment: Segment,
}

/// A doubly-linked LRU list threaded through the nodes; head = most recent.
#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl Default for List {
    fn default() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }
}

struct Shard {
    table: HashTable<u32>,
    nodes: Vec<Node>,
    /// Slots of removed nodes, reused before the vector grows.
    free: Vec<u32>,
    probation: List,
    protected: List,
    capacity: usize,
    protected_capacity: usize,
}

impl Shard {
    fn new(capacity: usize) -> Self {
        Shard {
            table: HashTable::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            probation: List::default(),
            protected: List::default(),
            capacity: capacity.max(1),
            protected_capacity: ((capacity as f64 * PROTECTED_SHARE) as usize).max(1),
        }
    }

    fn len(&self) -> usize {
        self.probation.len + self.protected.len
    }

    fn find(&self, key: [u64; 2]) -> Option<u32> {
        self.table
            .find(key[0], |&i| self.nodes[i as usize].key == key)
            .copied()
    }

    fn list(&mut self, segment: Segment) -> &mut List {
        match segment {
            Segment::Probation => &mut self.probation,
            Segment::Protected => &mut self.protected,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, segment) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.segment)
        };
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
        let list = self.list(segment);
        if list.head == i {
            list.head = next;
        }
        if list.tail == i {
            list.tail = prev;
        }
        list.len -= 1;
    }

    fn push_front(&mut self, i: u32, segment: Segment) {
        let head = self.list(segment).head;
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = head;
            n.segment = segment;
        }
        if head != NIL {
            self.nodes[head as usize].prev = i;
        }
        let list = self.list(segment);
        list.head = i;
        if list.tail == NIL {
            list.tail = i;
        }
        list.len += 1;
    }

    /// A key was used again: it is promoted (or refreshed) in `protected`;
    /// an overfull protected list demotes its oldest back to probation.
    fn touch(&mut self, i: u32) {
        self.unlink(i);
        self.push_front(i, Segment::Protected);
        if self.protected.len > self.protected_capacity {
            let oldest = self.protected.tail;
            self.unlink(oldest);
            self.push_front(oldest, Segment::Probation);
        }
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let key = self.nodes[i as usize].key;
        if let Ok(entry) = self.table.find_entry(key[0], |&j| j == i) {
            entry.remove();
        }
        self.nodes[i as usize].state = LimitState::Held(super::Held(0));
        self.free.push(i);
    }

    /// The least recently used entry that holds no permit, probation first.
    fn eviction_candidate(&self) -> Option<u32> {
        for list in [&self.probation, &self.protected] {
            let mut i = list.tail;
            for _ in 0..EVICTION_SCAN {
                if i == NIL {
                    break;
                }
                let n = &self.nodes[i as usize];
                if !matches!(n.state, LimitState::Held(h) if h.0 > 0) {
                    return Some(i);
                }
                i = n.prev;
            }
        }
        None
    }

    /// Stores state for a key that has none; evicts one entry when full.
    fn insert(&mut self, key: [u64; 2], limit: u32, state: LimitState, expires_at: Nanos) -> bool {
        let evicted = self.len() >= self.capacity && {
            match self.eviction_candidate() {
                Some(victim) => {
                    self.remove(victim);
                    true
                }
                None => false, // every candidate holds permits: exceed briefly
            }
        };
        let node = Node {
            key,
            limit,
            state,
            expires_at,
            prev: NIL,
            next: NIL,
            segment: Segment::Probation,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                // Grow by half, never past the shard's capacity: a full
                // shard's slots are all in use, none reserved in vain.
                if self.nodes.len() == self.nodes.capacity() {
                    let len = self.nodes.len();
                    let more = (len / 2)
                        .max(16)
                        .min(self.capacity.saturating_sub(len).max(1));
                    self.nodes.reserve_exact(more);
                }
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(key[0], i, |&j| nodes[j as usize].key[0]);
        self.push_front(i, Segment::Probation);
        evicted
    }

    /// Removes every entry `keep` rejects; returns how many.
    fn retain(&mut self, keep: impl Fn(&Node) -> bool) -> usize {
        let doomed: Vec<u32> = [self.probation, self.protected]
            .iter()
            .flat_map(|list| {
                let mut out = Vec::new();
                let mut i = list.head;
                while i != NIL {
                    if !keep(&self.nodes[i as usize]) {
                        out.push(i);
                    }
                    i = self.nodes[i as usize].next;
                }
                out
            })
            .collect();
        for &i in &doomed {
            self.remove(i);
        }
        doomed.len()
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hash_lo: RandomState,
    hash_hi: RandomState,
    evictions: AtomicU64,
    eviction_counter: Option<IntCounter>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(1_000_000, None)
    }
}

impl MemoryStore {
    /// A store of at most about `max_keys` states (each shard holds its share).
    pub fn new(max_keys: usize, eviction_counter: Option<IntCounter>) -> Self {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (cpus * 16)
            .next_power_of_two()
            .min(max_keys.max(1).next_power_of_two());
        Self::with_shards(shards, max_keys, eviction_counter)
    }

    pub fn with_shards(
        count: usize,
        max_keys: usize,
        eviction_counter: Option<IntCounter>,
    ) -> Self {
        let count = count.max(1).next_power_of_two();
        let per_shard = max_keys.div_ceil(count);
        MemoryStore {
            shards: (0..count)
                .map(|_| Mutex::new(Shard::new(per_shard)))
                .collect(),
            hash_lo: RandomState::default(),
            hash_hi: RandomState::default(),
            evictions: AtomicU64::new(0),
            eviction_counter,
        }
    }

    fn entry_key(&self, check: &Check<'_>) -> [u64; 2] {
        let item = (check.limit, &check.key);
        [self.hash_lo.hash_one(item), self.hash_hi.hash_one(item)]
    }

    fn shard_of(&self, key: [u64; 2]) -> usize {
        (key[1] as usize) & (self.shards.len() - 1)
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while holding a shard cannot leave an entry half-written
        // (each change completes before the next), so the data is still good.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides all checks at `now`; see [`Store`] for the atomicity promise.
    ///
    /// # Panics
    /// If given more than [`MAX_CHECKS`] checks (config validation forbids it).
    pub fn decide_now(&self, checks: &[Check<'_>], now: Nanos) -> Decided {
        assert!(
            checks.len() <= MAX_CHECKS,
            "too many limits for one request"
        );
        let n = checks.len();
        let mut keys = [[0u64; 2]; MAX_CHECKS];
        let mut shards = [usize::MAX; MAX_CHECKS];
        for (i, check) in checks.iter().enumerate() {
            keys[i] = self.entry_key(check);
            shards[i] = self.shard_of(keys[i]);
        }
        let mut order = shards;
        order[..n].sort_unstable();
        let mut guards: [Option<MutexGuard<'_, Shard>>; MAX_CHECKS] = Default::default();
        let mut previous = usize::MAX;
        for &shard in &order[..n] {
            if shard != previous {
                guards[shard_slot(&order, n, shard)] = Some(self.lock(shard));
                previous = shard;
            }
        }
        let slot_of = |i: usize| shard_slot(&order, n, shards[i]);

        let mut decisions = ArrayVec::new();
        let mut next_states: [Option<LimitState>; MAX_CHECKS] = Default::default();
        let mut denied = false;
        for (i, check) in checks.iter().enumerate() {
            let Some(shard) = guards[slot_of(i)].as_deref_mut() else {
                unreachable!("every shard in use was locked above");
            };
            let found = shard.find(keys[i]);
            if let Some(at) = found {
                shard.touch(at);
            }
            let current = found
                .map(|at| &shard.nodes[at as usize])
                .filter(|node| node.expires_at > now)
                .map(|node| &node.state);
            let (decision, next) = check.limiter.decide(current, now, check.cost);
            denied |= check.enforced && !decision.allowed;
            if decision.allowed {
                next_states[i] = Some(next);
            }
            decisions.push(decision);
        }
        let mut permits = Vec::new();
        if !denied {
            for (i, check) in checks.iter().enumerate() {
                let Some(state) = next_states[i].take() else {
                    continue;
                };
                let Some(shard) = guards[slot_of(i)].as_deref_mut() else {
                    continue;
                };
                let expires_at = now.saturating_add(check.limiter.ttl(&state, now));
                match shard.find(keys[i]) {
                    Some(at) => {
                        let node = &mut shard.nodes[at as usize];
                        node.state = state;
                        node.expires_at = expires_at;
                    }
                    None => {
                        if shard.insert(keys[i], check.limit.0 as u32, state, expires_at) {
                            self.count_eviction();
                        }
                    }
                }
                if check.limiter.holds_permits() {
                    permits.push(Permit {
                        key: keys[i],
                        cost: check.cost,
                    });
                }
            }
        }
        Decided { decisions, permits }
    }

    fn count_eviction(&self) {
        self.evictions.fetch_add(1, Ordering::Relaxed);
        if let Some(counter) = &self.eviction_counter {
            counter.inc();
        }
    }

    /// Gives concurrency permits back; an entry with none left is removed.
    pub fn release_permits_now(&self, permits: &[Permit]) {
        for permit in permits {
            let mut shard = self.lock(self.shard_of(permit.key));
            let Some(at) = shard.find(permit.key) else {
                continue;
            };
            let node = &mut shard.nodes[at as usize];
            if let LimitState::Held(held) = &mut node.state {
                held.0 = held.0.saturating_sub(permit.cost);
                if held.0 == 0 {
                    shard.remove(at);
                }
            }
        }
    }

    /// Drops state that has expired by `now`, one shard at a time so that no
    /// request waits for more than one shard's sweep.
    pub fn sweep(&self, now: Nanos) -> usize {
        self.retain(|n| n.expires_at > now)
    }

    /// Drops the state of the `removed` limits. Entries carry half a
    /// fingerprint, so a removed limit whose half equals a `live` one's is
    /// left to expire rather than risk a live limit's counters.
    pub fn release_limits(&self, removed: &[LimitId], live: &[LimitId]) -> usize {
        let half = |id: &LimitId| id.0 as u32;
        let live: std::collections::HashSet<u32> = live.iter().map(half).collect();
        let gone: std::collections::HashSet<u32> = removed
            .iter()
            .map(half)
            .filter(|h| !live.contains(h))
            .collect();
        if gone.is_empty() {
            return 0;
        }
        self.retain(|n| !gone.contains(&n.limit))
    }

    fn retain(&self, keep: impl Fn(&Node) -> bool) -> usize {
        (0..self.shards.len())
            .map(|s| self.lock(s).retain(&keep))
            .sum()
    }

    /// Number of tracked (limit, key) states.
    pub fn len(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries evicted to stay within `max_keys`.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Bytes the tables use (node slots and hash buckets), for sizing.
    pub fn approx_bytes(&self) -> usize {
        (0..self.shards.len())
            .map(|s| {
                let shard = self.lock(s);
                shard.nodes.capacity() * std::mem::size_of::<Node>()
                    + shard.table.capacity() * (std::mem::size_of::<u32>() + 1)
                    + shard.free.capacity() * std::mem::size_of::<u32>()
            })
            .sum()
    }
}

/// Index of the first occurrence of `shard` in the sorted prefix: the slot its
/// guard is kept in.
fn shard_slot(order: &[usize; MAX_CHECKS], len: usize, shard: usize) -> usize {
    order[..len].partition_point(|&s| s < shard)
}

impl Store for MemoryStore {
    async fn decide(&self, checks: &[Check<'_>], now: Nanos) -> Result<Decided, StoreError> {
        Ok(self.decide_now(checks, now))
    }

    fn release_permits(&self, permits: &[Permit]) {
        self.release_permits_now(permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ApiKeySources, ClientKey, KeyPart, KeySpec, RequestFacts};
    use crate::limit::{Concurrent, Gcra, LimitId, Limiter};
    use http::HeaderMap;
    use std::sync::Arc;

    const MINUTE: Nanos = 60_000_000_000;

    fn limiter(count: u64) -> Limiter {
        Limiter::Gcra(Gcra::from_interval(MINUTE / count, count))
    }

    fn key(n: u32) -> ClientKey<'static> {
        static HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
        static SOURCES: std::sync::OnceLock<ApiKeySources> = std::sync::OnceLock::new();
        let facts = RequestFacts {
            headers: HEADERS.get_or_init(HeaderMap::new),
            query: None,
            client_ip: std::net::Ipv4Addr::from(n).into(),
            ipv6_prefix: 64,
            api_key: SOURCES.get_or_init(ApiKeySources::default),
        };
        KeySpec(vec![KeyPart::Ip]).extract(&facts).unwrap()
    }

    fn check(id: u64, limiter: Limiter, client: u32) -> Check<'static> {
        Check {
            limit: LimitId(id),
            limiter,
            key: key(client),
            cost: 1,
            enforced: true,
        }
    }

    fn store() -> MemoryStore {
        MemoryStore::with_shards(4, 1_000, None)
    }

    fn allowed(store: &MemoryStore, checks: &[Check<'_>], now: Nanos) -> Vec<bool> {
        store
            .decide_now(checks, now)
            .decisions
            .iter()
            .map(|d| d.allowed)
            .collect()
    }

    #[test]
    fn a_tracked_state_fits_in_64_bytes() {
        assert!(
            std::mem::size_of::<Node>() <= 64,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn a_denial_by_one_limit_spends_nothing_from_the_others() {
        let s = store();
        let roomy = || check(1, limiter(10), 1);
        let tight = || check(2, limiter(1), 1);
        assert_eq!(allowed(&s, &[roomy(), tight()], 0), vec![true, true]);
        assert_eq!(allowed(&s, &[roomy(), tight()], 0), vec![true, false]);
        // The roomy limit still has 9 left: the denied request took nothing.
        assert_eq!(s.decide_now(&[roomy()], 0).decisions[0].remaining, 8);
    }

    #[test]
    fn shadow_denial_does_not_block_spending() {
        let s = store();
        let mut shadow = check(2, limiter(1), 1);
        shadow.enforced = false;
        s.decide_now(&[check(1, limiter(10), 1), shadow.clone()], 0);
        let d = s
            .decide_now(&[check(1, limiter(10), 1), shadow], 0)
            .decisions;
        assert!(!d[1].allowed);
        assert_eq!(d[0].remaining, 8);
    }

    #[test]
    fn distinct_limits_do_not_share_state() {
        let s = store();
        s.decide_now(&[check(1, limiter(1), 1)], 0);
        assert_eq!(allowed(&s, &[check(2, limiter(1), 1)], 0), vec![true]);
    }

    #[test]
    fn sweep_drops_expired_state_only() {
        let s = store();
        s.decide_now(&[check(1, limiter(60), 1)], 0);
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(500_000_000), 0);
        assert_eq!(s.sweep(2_000_000_000), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn release_drops_only_the_named_limits_state() {
        let s = store();
        s.decide_now(&[check(1, limiter(10), 1), check(2, limiter(10), 1)], 0);
        assert_eq!(s.release_limits(&[LimitId(1)], &[LimitId(2)]), 1);
        assert_eq!(
            s.decide_now(&[check(1, limiter(10), 1)], 0).decisions[0].remaining,
            9
        );
        assert_eq!(
            s.decide_now(&[check(2, limiter(10), 1)], 0).decisions[0].remaining,
            8
        );
    }

    #[test]
    fn concurrency_permits_are_given_back() {
        let s = store();
        let c = || check(1, Limiter::Concurrent(Concurrent::new(2)), 1);
        let first = s.decide_now(&[c()], 0);
        let second = s.decide_now(&[c()], 0);
        assert_eq!(allowed(&s, &[c()], 0), vec![false]);
        s.release_permits_now(&first.permits);
        assert!(s.decide_now(&[c()], 0).decisions[0].allowed);
        s.release_permits_now(&second.permits);
        assert_eq!(s.len(), 1, "one permit still held");
    }

    #[test]
    fn a_full_store_evicts_one_shot_keys_before_returning_ones() {
        let s = MemoryStore::with_shards(1, 100, None);
        let regular = |n| check(1, limiter(1000), n);
        // A returning client: seen twice, so protected.
        s.decide_now(&[regular(7)], 0);
        s.decide_now(&[regular(7)], 0);
        for n in 1_000..11_000 {
            s.decide_now(&[regular(n)], 0);
        }
        assert!(s.len() <= 100);
        assert!(s.evictions() >= 10_000 - 100);
        // Its state survived the flood: 2 of 1000 used.
        assert_eq!(s.decide_now(&[regular(7)], 0).decisions[0].remaining, 997);
    }

    #[test]
    fn concurrent_requests_admit_exactly_the_quota() {
        let s = Arc::new(MemoryStore::with_shards(2, 1_000, None));
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..100 {
                        let d = s.decide_now(
                            &[check(1, limiter(1000), 1), check(2, limiter(100), 1)],
                            0,
                        );
                        if d.decisions.iter().all(|d| d.allowed) {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 100);
        assert_eq!(
            s.decide_now(&[check(1, limiter(1000), 1)], 0).decisions[0].remaining,
            899
        );
    }
}
