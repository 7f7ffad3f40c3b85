//! Who is being limited: per limit, the heaviest keys by requests and by
//! refusals over the last minute, in bounded memory.
//!
//! Each limit keeps a space-saving sketch (Metwally et al.) per kind and per
//! half-minute, in `SHARDS` shards chosen by the key's hash, so a request
//! locks one small shard and never a global lock. The window is the current
//! half-minute and the one before it.
//!
//! **Error bound.** A shard tracks `PER_SHARD` keys. A key's count is exact
//! while it stays tracked, and overestimated by at most `N / PER_SHARD`
//! (N: the shard's count in that half-minute; the sketch reports this
//! `error` per key), and every key counted more than `N / PER_SHARD` times is
//! tracked. Keys spread over the shards by hash, so with N total the bound
//! is about `N / (SHARDS × PER_SHARD)` = N / 512.
//!
//! **Bounded memory.** At most `SHARDS × PER_SHARD` keys per kind and
//! half-minute: 2,048 counters a limit, each holding its key (a short copy
//! of what was counted); about 200 KiB a limit with keys of a few dozen
//! bytes, whatever the traffic.

use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::identity::ClientKey;

/// Nanoseconds on the limiter's clock (as `limit::Nanos`, a layer above).
type Nanos = u64;

/// Shards per sketch: a request locks one.
pub const SHARDS: usize = 8;
/// Keys tracked per shard, kind and half-window.
pub const PER_SHARD: usize = 64;
/// The window the counts cover.
pub const WINDOW: Nanos = 60_000_000_000;
const HALF: Nanos = WINDOW / 2;

/// Which count a ranking is by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    Requests,
    Refusals,
}

/// One counted key.
struct Counter {
    hash: u64,
    key: ClientKey<'static>,
    count: u64,
    /// How much of `count` may belong to keys it replaced.
    error: u64,
}

/// A space-saving sketch of `PER_SHARD` counters.
#[derive(Default)]
struct Sketch {
    counters: Vec<Counter>,
    /// Indices into `counters` by key hash.
    index: HashTable<u32>,
    total: u64,
}

impl Sketch {
    fn add(&mut self, hash: u64, key: &ClientKey<'_>) {
        self.total += 1;
        let counters = &self.counters;
        if let Some(&at) = self
            .index
            .find(hash, |&i| counters[i as usize].hash == hash)
        {
            self.counters[at as usize].count += 1;
            return;
        }
        if self.counters.len() < PER_SHARD {
            let at = self.counters.len() as u32;
            self.counters.push(Counter {
                hash,
                key: key.clone().into_owned(),
                count: 1,
                error: 0,
            });
            let counters = &self.counters;
            self.index
                .insert_unique(hash, at, |&i| counters[i as usize].hash);
            return;
        }
        // Full: the least counted key makes way, and the newcomer inherits
        // its count as possible error.
        let Some((at, _)) = self
            .counters
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.count)
        else {
            return;
        };
        let old = self.counters[at].hash;
        if let Ok(entry) = self
            .index
            .find_entry(old, |&i| self.counters[i as usize].hash == old)
        {
            entry.remove();
        }
        let victim = &mut self.counters[at];
        victim.error = victim.count;
        victim.count += 1;
        victim.hash = hash;
        victim.key = key.clone().into_owned();
        let counters = &self.counters;
        self.index
            .insert_unique(hash, at as u32, |&i| counters[i as usize].hash);
    }

    fn count_of(&self, hash: u64) -> Option<&Counter> {
        self.index
            .find(hash, |&i| self.counters[i as usize].hash == hash)
            .map(|&i| &self.counters[i as usize])
    }
}

/// One shard: both kinds, for the current and the previous half-window.
#[derive(Default)]
struct Shard {
    /// The half-window `current` counts (now / HALF).
    epoch: u64,
    current: [Sketch; 2],
    previous: [Sketch; 2],
}

impl Shard {
    /// Moves the window on to `epoch`.
    fn turn(&mut self, epoch: u64) {
        if epoch == self.epoch {
            return;
        }
        let current = std::mem::take(&mut self.current);
        self.previous = if epoch == self.epoch + 1 {
            current
        } else {
            Default::default()
        };
        self.epoch = epoch;
    }
}

/// A ranked key over the window.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub key: ClientKey<'static>,
    pub requests: u64,
    pub refusals: u64,
    /// The most the ranked count may be over (see the module's doc).
    pub error: u64,
}

/// Totals over the window, for rates.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub requests: u64,
    pub refusals: u64,
    /// How long the window has been counting (up to `WINDOW`).
    pub span: Nanos,
}

/// A limit's top keys.
pub struct TopKeys {
    shards: [Mutex<Shard>; SHARDS],
    hasher: RandomState,
    /// When counting started, so that a young window's rate is not diluted.
    started: Nanos,
}

impl TopKeys {
    pub fn new(now: Nanos) -> Self {
        TopKeys {
            shards: Default::default(),
            hasher: RandomState::default(),
            started: now,
        }
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // Each change completes before the next: a panic cannot leave a
        // sketch half-written.
        self.shards[shard]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a request of `key` at `now`, and its refusal if it was refused.
    pub fn record(&self, key: &ClientKey<'_>, refused: bool, now: Nanos) {
        let hash = self.hasher.hash_one(key);
        let mut shard = self.lock((hash >> 58) as usize % SHARDS);
        shard.turn(now / HALF);
        shard.current[By::Requests as usize].add(hash, key);
        if refused {
            shard.current[By::Refusals as usize].add(hash, key);
        }
    }

    /// The `n` heaviest keys by `by` over the window at `now`.
    pub fn top(&self, by: By, n: usize, now: Nanos) -> Vec<Ranked> {
        let mut ranked = Vec::new();
        for s in 0..SHARDS {
            let mut shard = self.lock(s);
            shard.turn(now / HALF);
            let shard = &*shard;
            let mut seen: Vec<u64> = Vec::new();
            for sketch in [&shard.current[by as usize], &shard.previous[by as usize]] {
                for counter in &sketch.counters {
                    if seen.contains(&counter.hash) {
                        continue;
                    }
                    seen.push(counter.hash);
                    ranked.push(rank(shard, counter));
                }
            }
        }
        ranked.sort_by(|a, b| {
            let count = |r: &Ranked| match by {
                By::Requests => r.requests,
                By::Refusals => r.refusals,
            };
            count(b).cmp(&count(a))
        });
        ranked.truncate(n);
        ranked
    }

    /// Requests and refusals over the window at `now`.
    pub fn totals(&self, now: Nanos) -> Totals {
        let mut totals = Totals {
            span: now.saturating_sub(self.started).min(WINDOW),
            ..Totals::default()
        };
        for s in 0..SHARDS {
            let mut shard = self.lock(s);
            shard.turn(now / HALF);
            for half in [&shard.current, &shard.previous] {
                totals.requests += half[By::Requests as usize].total;
                totals.refusals += half[By::Refusals as usize].total;
            }
        }
        // The window is the current half and the whole previous one.
        let into_half = now % HALF;
        totals.span = totals.span.min(HALF + into_half);
        totals
    }

    /// A key counted in the window whose `matches` is true (the admin finds
    /// keys by digest or by how they are shown).
    pub fn find(
        &self,
        matches: impl Fn(&ClientKey<'static>) -> bool,
    ) -> Option<ClientKey<'static>> {
        for s in 0..SHARDS {
            let shard = self.lock(s);
            for half in [&shard.current, &shard.previous] {
                for sketch in half {
                    if let Some(c) = sketch.counters.iter().find(|c| matches(&c.key)) {
                        return Some(c.key.clone());
                    }
                }
            }
        }
        None
    }
}

/// A key's counts over both halves of its shard's window.
fn rank(shard: &Shard, counter: &Counter) -> Ranked {
    let mut ranked = Ranked {
        key: counter.key.clone(),
        requests: 0,
        refusals: 0,
        error: 0,
    };
    for half in [&shard.current, &shard.previous] {
        if let Some(c) = half[By::Requests as usize].count_of(counter.hash) {
            ranked.requests += c.count;
            ranked.error += c.error;
        }
        if let Some(c) = half[By::Refusals as usize].count_of(counter.hash) {
            ranked.refusals += c.count;
        }
    }
    ranked
}

impl std::fmt::Debug for TopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopKeys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn heavy_hitters_rank_first_among_a_flood_of_one_off_keys() {
        let top = TopKeys::new(0);
        for n in 0..20_000u32 {
            top.record(&ClientKey::of_client(1_000_000 + n), false, SECOND);
            if n % 10 == 0 {
                for heavy in 1..=5 {
                    top.record(&ClientKey::of_client(heavy), true, SECOND);
                }
            }
        }
        let ranked = top.top(By::Refusals, 5, SECOND);
        let mut heavy: Vec<ClientKey<'static>> = ranked.into_iter().map(|r| r.key).collect();
        heavy.sort_by_key(|k| k.to_string());
        let expected: Vec<ClientKey<'static>> = (1..=5).map(ClientKey::of_client).collect();
        assert_eq!(heavy, expected);
        let by_requests = top.top(By::Requests, 5, SECOND);
        assert!(by_requests
            .iter()
            .all(|r| r.requests >= 2_000 && r.refusals == 2_000));
    }

    #[test]
    fn counts_leave_the_window_after_a_minute() {
        let top = TopKeys::new(0);
        top.record(&ClientKey::of_client(1), true, SECOND);
        assert_eq!(top.top(By::Refusals, 1, 40 * SECOND)[0].refusals, 1);
        assert!(top.top(By::Refusals, 1, 61 * SECOND).is_empty());
        assert_eq!(top.totals(61 * SECOND).requests, 0);
    }

    #[test]
    fn a_sketch_never_tracks_more_than_its_capacity() {
        let top = TopKeys::new(0);
        for n in 0..100_000u32 {
            top.record(&ClientKey::of_client(n), true, SECOND);
        }
        let tracked: usize = (0..SHARDS)
            .map(|s| top.lock(s).current[0].counters.len())
            .sum();
        assert!(tracked <= SHARDS * PER_SHARD, "{tracked}");
        assert_eq!(top.totals(SECOND).refusals, 100_000);
    }
}
