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
//! shard is full, an expired entry near either list's end goes first, then
//! the least recently used probation entry; protected entries are evicted only
//! when probation is empty. A flood of random keys — each seen once — only
//! churns probation, so the state of clients that keep coming back survives
//! it. (A flood that repeats each key is promoted too and can, at a rate of
//! more than about 80 % of `max_keys` distinct keys per return interval of a
//! client, push that client out.) Entries holding concurrency permits are in
//! no list: never evicted, never in the way. Expired state is swept in the
//! background.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use arrayvec::ArrayVec;
use hashbrown::HashTable;
use prometheus::IntCounter;

use super::penalty::{ActiveBan, Penalties};
use crate::identity::ClientKey;
use crate::limit::{
    BanMark, BanRecord, Check, Decision, Decisions, Held, LimitId, LimitState, Limiter, LogState,
    MonotonicClock, Nanos, Permit, Store, StoreError, MAX_CHECKS,
};

/// Share of a shard reserved for protected (returning) keys.
const PROTECTED_SHARE: f64 = 0.8;
/// How far from the LRU end eviction looks for an entry holding no permits.
const EVICTION_SCAN: usize = 16;
const NIL: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment {
    Probation,
    Protected,
    /// Holding concurrency permits: in no LRU list, so never evicted and
    /// never in the way of eviction.
    Pinned,
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

impl Node {
    fn holds_permits(&self) -> bool {
        matches!(self.state, LimitState::Held(h) if h.0 > 0)
    }
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
    pinned: usize,
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
            pinned: 0,
            capacity: capacity.max(1),
            protected_capacity: ((capacity as f64 * PROTECTED_SHARE) as usize).max(1),
        }
    }

    fn len(&self) -> usize {
        self.probation.len + self.protected.len + self.pinned
    }

    fn find(&self, key: [u64; 2]) -> Option<u32> {
        self.table
            .find(key[0], |&i| self.nodes[i as usize].key == key)
            .copied()
    }

    fn list(&mut self, segment: Segment) -> Option<&mut List> {
        match segment {
            Segment::Probation => Some(&mut self.probation),
            Segment::Protected => Some(&mut self.protected),
            Segment::Pinned => None,
        }
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next, segment) = {
            let n = &self.nodes[i as usize];
            (n.prev, n.next, n.segment)
        };
        let Some(list) = self.list(segment) else {
            self.pinned -= 1;
            return;
        };
        if list.head == i {
            list.head = next;
        }
        if list.tail == i {
            list.tail = prev;
        }
        list.len -= 1;
        if prev != NIL {
            self.nodes[prev as usize].next = next;
        }
        if next != NIL {
            self.nodes[next as usize].prev = prev;
        }
    }

    fn push_front(&mut self, i: u32, segment: Segment) {
        let head = match self.list(segment) {
            Some(list) => list.head,
            None => {
                self.pinned += 1;
                NIL
            }
        };
        {
            let n = &mut self.nodes[i as usize];
            n.prev = NIL;
            n.next = head;
            n.segment = segment;
        }
        let Some(list) = self.list(segment) else {
            return;
        };
        list.head = i;
        if list.tail == NIL {
            list.tail = i;
        }
        list.len += 1;
        if head != NIL {
            self.nodes[head as usize].prev = i;
        }
    }

    /// A key was used again: it is promoted (or refreshed) in `protected`;
    /// an overfull protected list demotes its oldest back to probation.
    fn touch(&mut self, i: u32) {
        if self.nodes[i as usize].segment == Segment::Pinned {
            return;
        }
        self.unlink(i);
        self.push_front(i, Segment::Protected);
        if self.protected.len > self.protected_capacity {
            let oldest = self.protected.tail;
            self.unlink(oldest);
            self.push_front(oldest, Segment::Probation);
        }
    }

    /// Keeps a node out of the LRU lists while it holds permits.
    fn place(&mut self, i: u32) {
        let pinned = self.nodes[i as usize].segment == Segment::Pinned;
        let holds = self.nodes[i as usize].holds_permits();
        if holds && !pinned {
            self.unlink(i);
            self.push_front(i, Segment::Pinned);
        } else if !holds && pinned {
            self.unlink(i);
            self.push_front(i, Segment::Probation);
        }
    }

    fn remove(&mut self, i: u32) {
        self.unlink(i);
        let key = self.nodes[i as usize].key;
        if let Ok(entry) = self.table.find_entry(key[0], |&j| j == i) {
            entry.remove();
        }
        self.nodes[i as usize].state = LimitState::Held(Held(0));
        self.free.push(i);
    }

    /// What to evict for room: an expired entry near either list's LRU end
    /// (it is worth nothing), else the least recently used probation entry,
    /// else the least recently used protected one.
    fn eviction_candidate(&self, now: Nanos) -> Option<u32> {
        for list in [&self.probation, &self.protected] {
            let mut i = list.tail;
            for _ in 0..EVICTION_SCAN {
                if i == NIL {
                    break;
                }
                if self.nodes[i as usize].expires_at <= now {
                    return Some(i);
                }
                i = self.nodes[i as usize].prev;
            }
        }
        [self.probation.tail, self.protected.tail]
            .into_iter()
            .find(|&i| i != NIL)
    }

    /// Stores state for a key that has none; evicts one entry when full.
    fn insert(
        &mut self,
        key: [u64; 2],
        limit: u32,
        state: LimitState,
        expires_at: Nanos,
        now: Nanos,
    ) -> bool {
        let evicted = self.len() >= self.capacity && {
            match self.eviction_candidate(now) {
                Some(victim) => {
                    self.remove(victim);
                    true
                }
                None => false, // everything holds permits: exceed briefly
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
                // Grow by half, never past the shard's capacity while within
                // it: a full shard's slots are all in use, none reserved in vain.
                if self.nodes.len() == self.nodes.capacity() {
                    let len = self.nodes.len();
                    let room = self.capacity.saturating_sub(len);
                    let more = if room == 0 {
                        (len / 2).max(16)
                    } else {
                        (len / 2).max(16).min(room)
                    };
                    self.nodes.reserve_exact(more);
                }
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        let nodes = &self.nodes;
        self.table
            .insert_unique(key[0], i, |&j| nodes[j as usize].key[0]);
        let segment = if self.nodes[i as usize].holds_permits() {
            Segment::Pinned
        } else {
            Segment::Probation
        };
        self.push_front(i, segment);
        evicted
    }

    /// Removes every entry `keep` rejects; returns how many.
    fn retain(&mut self, keep: impl Fn(&Node) -> bool) -> usize {
        let doomed: Vec<u32> = self
            .table
            .iter()
            .copied()
            .filter(|&i| !keep(&self.nodes[i as usize]))
            .collect();
        for &i in &doomed {
            self.remove(i);
        }
        doomed.len()
    }

    /// Bytes held: node slots, hash buckets (4-byte index + 1 control byte),
    /// free slots, and the heap of sliding logs.
    fn bytes(&self) -> usize {
        let buckets = (self.table.capacity() * 8 / 7).next_power_of_two();
        let logs: usize = self
            .table
            .iter()
            .map(|&i| match &self.nodes[i as usize].state {
                LimitState::Log(log) => {
                    std::mem::size_of::<LogState>() + log.entries.capacity() * 16
                }
                _ => 0,
            })
            .sum();
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + buckets * (std::mem::size_of::<u32>() + 1)
            + self.free.capacity() * std::mem::size_of::<u32>()
            + logs
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Ban records, by the same entry keys as the limiter state.
    penalties: Penalties,
    /// Read once per decision, after the shards are locked.
    clock: MonotonicClock,
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
            penalties: Penalties::new(count, max_keys),
            clock: MonotonicClock::default(),
            hash_lo: RandomState::default(),
            hash_hi: RandomState::default(),
            evictions: AtomicU64::new(0),
            eviction_counter,
        }
    }

    /// Now on the store's clock.
    pub(crate) fn now(&self) -> Nanos {
        self.clock.now()
    }

    /// Keeps time with `clock`: the one the gateway sweeps with, so that
    /// state expires when its decisions said it would.
    pub(crate) fn with_clock(mut self, clock: MonotonicClock) -> Self {
        self.clock = clock;
        self
    }

    fn entry_key(&self, check: &Check<'_>) -> [u64; 2] {
        self.key_of(check.limit, &check.key)
    }

    fn key_of(&self, limit: LimitId, key: &ClientKey<'_>) -> [u64; 2] {
        let item = (limit, key);
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
    /// Tests and benches drive time this way; the gateway decides on the
    /// store's clock ([`Self::decide_on_clock`]).
    ///
    /// # Panics
    /// If given more than [`MAX_CHECKS`] checks (config validation forbids it).
    pub fn decide_now(&self, checks: &[Check<'_>], now: Nanos) -> Decisions {
        self.decide_with(checks, || now)
    }

    /// Decides all checks on the store's clock, as [`Store::decide`] does,
    /// without a future to await: the memory-only gateway's hot path.
    pub(crate) fn decide_on_clock(&self, checks: &[Check<'_>]) -> Decisions {
        self.decide_with(checks, || self.clock.now())
    }

    /// Like [`Self::decide_now`], reading the clock only once every shard
    /// involved is locked: per key, time then never runs backwards (a thread
    /// preempted between reading the clock and locking would otherwise decide
    /// with a `now` older than the state it finds).
    fn decide_with(&self, checks: &[Check<'_>], clock: impl FnOnce() -> Nanos) -> Decisions {
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
        let now = clock();

        let mut decisions = ArrayVec::new();
        let mut next_states: [Option<LimitState>; MAX_CHECKS] = Default::default();
        let mut denied = false;
        for (i, check) in checks.iter().enumerate() {
            let Some(shard) = guards[slot_of(i)].as_deref_mut() else {
                unreachable!("every shard in use was locked above");
            };
            // (whether the ban refuses, how long it still runs)
            let banned = check.ban.and_then(|ban| {
                let left = self.penalties.banned_for(keys[i], now)?;
                Some((ban.enforced && check.enforced, left))
            });
            if let Some((true, left)) = banned {
                denied = true;
                decisions.push(banned_decision(&check.limiter, left));
                continue;
            }
            let found = shard.find(keys[i]);
            if let Some(at) = found {
                shard.touch(at);
            }
            let current = found
                .map(|at| &shard.nodes[at as usize])
                .filter(|node| node.expires_at > now)
                .map(|node| &node.state);
            let (mut decision, next) = check.limiter.decide(current, now, check.cost);
            if banned.is_some() {
                decision.ban = BanMark::Banned;
            }
            denied |= check.enforced && !decision.allowed;
            if decision.allowed {
                next_states[i] = Some(next);
            }
            decisions.push(decision);
        }
        self.strike_refusals(checks, &keys, &mut decisions, now);
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
                        shard.place(at);
                    }
                    None => {
                        if shard.insert(keys[i], check.limit.0 as u32, state, expires_at, now) {
                            self.count_eviction();
                        }
                    }
                }
                if check.limiter.holds_permits() {
                    permits.push(Permit::Local {
                        key: keys[i],
                        cost: check.cost,
                    });
                }
            }
        }
        Decisions {
            decisions,
            permits,
            at: Some(now),
        }
    }

    /// Counts each limit's refusal (not a ban's) toward its key's ban; a
    /// refusal that starts an enforced ban tells the client how long it is.
    fn strike_refusals(
        &self,
        checks: &[Check<'_>],
        keys: &[[u64; 2]; MAX_CHECKS],
        decisions: &mut [Decision],
        now: Nanos,
    ) {
        for (i, check) in checks.iter().enumerate() {
            let (Some(ban), decision) = (&check.ban, &mut decisions[i]) else {
                continue;
            };
            if decision.allowed || decision.ban != BanMark::None {
                continue;
            }
            let half = check.limit.0 as u32;
            let Some(length) = self.penalties.strike(keys[i], half, &check.key, ban, now) else {
                continue;
            };
            *decision = mark_ban_start(*decision, ban.enforced && check.enforced, length);
        }
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
            let Permit::Local { key, cost } = *permit else {
                continue;
            };
            let mut shard = self.lock(self.shard_of(key));
            let Some(at) = shard.find(key) else {
                continue;
            };
            let node = &mut shard.nodes[at as usize];
            if let LimitState::Held(held) = &mut node.state {
                held.0 = held.0.saturating_sub(cost);
                if held.0 == 0 {
                    shard.remove(at);
                } else {
                    shard.place(at);
                }
            }
        }
    }

    /// Drops state that has expired by `now`, one shard at a time so that no
    /// request waits for more than one shard's sweep.
    pub(crate) fn sweep(&self, now: Nanos) -> usize {
        self.penalties.retain(now, |_| true);
        self.retain(|n| n.expires_at > now)
    }

    /// Drops the state of the `removed` limits. Entries carry half a
    /// fingerprint, so a removed limit whose half equals a `live` one's is
    /// left to expire rather than risk a live limit's counters.
    pub(crate) fn release_limits(&self, removed: &[LimitId], live: &[LimitId]) -> usize {
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
        self.penalties
            .retain(self.clock.now(), |limit| !gone.contains(&limit));
        // Entries holding permits stay: their requests still give them back.
        self.retain(|n| !gone.contains(&n.limit) || n.holds_permits())
    }

    /// The state of `key` under a limit, without spending: what a request of
    /// cost 0 would be told now, and the key's ban record.
    pub(crate) fn peek(
        &self,
        limit: LimitId,
        limiter: &Limiter,
        key: &ClientKey<'_>,
    ) -> (Decision, Option<BanRecord>) {
        let entry = self.key_of(limit, key);
        let shard = self.lock(self.shard_of(entry));
        let now = self.clock.now();
        let current = shard
            .find(entry)
            .map(|at| &shard.nodes[at as usize])
            .filter(|node| node.expires_at > now)
            .map(|node| &node.state);
        let (decision, _) = limiter.decide(current, now, 0);
        drop(shard);
        (decision, self.penalties.record(entry, now))
    }

    /// Forgets `key`'s state and ban under a limit: the next request starts
    /// afresh. Returns whether a ban was running. Held concurrency permits
    /// stay (their requests still give them back).
    pub(crate) fn forget(&self, limit: LimitId, key: &ClientKey<'_>) -> bool {
        let entry = self.key_of(limit, key);
        let now = self.clock.now();
        {
            let mut shard = self.lock(self.shard_of(entry));
            if let Some(at) = shard.find(entry) {
                if !shard.nodes[at as usize].holds_permits() {
                    shard.remove(at);
                }
            }
        }
        self.penalties.lift(entry, now)
    }

    /// The bans of `limit` running now.
    pub(crate) fn active_bans(&self, limit: LimitId) -> Vec<ActiveBan> {
        self.penalties.active(limit.0 as u32, self.clock.now())
    }

    /// Ban records kept (running bans and refusals toward one).
    pub fn ban_records(&self) -> usize {
        self.penalties.len()
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

    /// Bytes the tables use, for sizing: node slots, hash buckets, free
    /// slots, and sliding logs' heap.
    pub fn approx_bytes(&self) -> usize {
        (0..self.shards.len()).map(|s| self.lock(s).bytes()).sum()
    }
}

/// The answer to a request of a banned key: refused until the ban ends.
pub(crate) fn banned_decision(limiter: &Limiter, left: Nanos) -> Decision {
    Decision {
        ban: BanMark::Banned,
        ..Decision::denied(limiter.quota(), 0, left, left)
    }
}

/// A refusal that started a ban of `length`; an enforced one is retried
/// only once the ban ends.
pub(crate) fn mark_ban_start(decision: Decision, enforced: bool, length: Nanos) -> Decision {
    let mut decision = Decision {
        ban: BanMark::Started,
        ..decision
    };
    if enforced {
        decision.retry_after = length;
        decision.reset_after = decision.reset_after.max(length);
        decision.remaining = 0;
    }
    decision
}

/// Index of the first occurrence of `shard` in the sorted prefix: the slot its
/// guard is kept in.
fn shard_slot(order: &[usize; MAX_CHECKS], len: usize, shard: usize) -> usize {
    order[..len].partition_point(|&s| s < shard)
}

impl Store for MemoryStore {
    /// Never fails.
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        Ok(self.decide_on_clock(checks))
    }

    fn release_permits(&self, permits: &[Permit]) {
        self.release_permits_now(permits);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClientKey;
    use crate::limit::{Concurrent, Gcra, LimitId, Limiter, SyncMode};
    use std::sync::Arc;

    const MINUTE: Nanos = 60_000_000_000;

    fn limiter(count: u64) -> Limiter {
        Limiter::Gcra(Gcra::from_interval(MINUTE / count, count))
    }

    fn check(id: u64, limiter: Limiter, client: u32) -> Check<'static> {
        Check {
            limit: LimitId(id),
            limiter,
            key: ClientKey::of_client(client),
            cost: 1,
            enforced: true,
            sync: SyncMode::Exact,
            ban: None,
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
    fn entries_holding_permits_neither_get_evicted_nor_block_eviction() {
        let s = MemoryStore::with_shards(1, 100, None);
        let held: Vec<Decisions> = (0..50)
            .map(|n| s.decide_now(&[check(2, Limiter::Concurrent(Concurrent::new(1)), n)], 0))
            .collect();
        let regular = |n| check(1, limiter(1000), n);
        s.decide_now(&[regular(7)], 0);
        s.decide_now(&[regular(7)], 0);
        for n in 1_000..5_000 {
            s.decide_now(&[regular(n)], 0);
        }
        assert!(s.len() <= 100, "{} entries", s.len());
        assert_eq!(
            s.decide_now(&[regular(7)], 0).decisions[0].remaining,
            997,
            "the returning client survived"
        );
        for d in &held {
            s.release_permits_now(&d.permits);
        }
        assert!(s.len() <= 100 - 50 + 1);
    }

    #[test]
    fn expired_entries_are_evicted_before_live_ones() {
        let s = MemoryStore::with_shards(1, 2, None);
        let short = Limiter::Gcra(Gcra::from_interval(10, 1));
        s.decide_now(&[check(1, short, 1)], 0); // expires at 10
        s.decide_now(&[check(1, limiter(10), 2)], 0);
        s.decide_now(&[check(1, limiter(10), 2)], 0); // protected, live
        s.decide_now(&[check(1, limiter(10), 3)], 100);
        assert_eq!(
            s.decide_now(&[check(1, limiter(10), 2)], 100).decisions[0].remaining,
            7
        );
    }

    #[test]
    fn releasing_a_limit_keeps_entries_that_hold_permits() {
        let s = store();
        let c = Limiter::Concurrent(Concurrent::new(5));
        let taken = s.decide_now(&[check(1, c, 1)], 0);
        assert_eq!(s.release_limits(&[LimitId(1)], &[]), 0);
        s.release_permits_now(&taken.permits);
        assert!(s.is_empty());
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
