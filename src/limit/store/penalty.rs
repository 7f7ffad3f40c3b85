//! The memory store's penalty box: ban records by (limit, key), in sharded
//! tables beside the limiter state (a ban outlives the state it was earned
//! on: a limit refills long before a ban ends).
//!
//! **Bounded.** Each shard holds at most its share of the store's
//! `max_keys`. A full shard first drops an expired record near where it
//! looks, then a record with no ban running; a running ban is dropped only
//! when nothing else is in reach, so a flood of one-off refusals cannot
//! lift bans. Records carry the banned key itself only while a ban runs
//! (the admin lists bans by key), so the flood costs a few dozen bytes a
//! record.

use std::sync::{Mutex, MutexGuard, PoisonError};

use hashbrown::HashMap;

use crate::identity::ClientKey;
use crate::limit::{BanPolicy, BanRecord, Nanos};

/// How many records a full shard looks at to choose one to drop.
const EVICTION_SCAN: usize = 16;

struct Entry {
    record: BanRecord,
    expires_at: Nanos,
    /// The low half of the limit's identity (see `MemoryStore::release_limits`).
    limit: u32,
    /// The key, kept from the refusal that started a ban.
    key: Option<Box<ClientKey<'static>>>,
}

struct Shard {
    entries: HashMap<[u64; 2], Entry, foldhash::fast::FixedState>,
    capacity: usize,
}

/// A ban running at the time it was listed.
#[derive(Debug, Clone)]
pub struct ActiveBan {
    pub key: ClientKey<'static>,
    pub record: BanRecord,
}

pub(crate) struct Penalties {
    shards: Box<[Mutex<Shard>]>,
}

impl Penalties {
    pub(crate) fn new(shards: usize, max_records: usize) -> Self {
        let per_shard = max_records.div_ceil(shards).max(1);
        Penalties {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::default(),
                        capacity: per_shard,
                    })
                })
                .collect(),
        }
    }

    fn lock(&self, key: [u64; 2]) -> MutexGuard<'_, Shard> {
        // Every change to a record completes before the next: a panic
        // elsewhere cannot leave one half-written.
        self.shards[(key[0] as usize) & (self.shards.len() - 1)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// How much longer the key is banned at `now`, if it is.
    pub(crate) fn banned_for(&self, key: [u64; 2], now: Nanos) -> Option<Nanos> {
        self.lock(key).entries.get(&key)?.record.banned_for(now)
    }

    /// Counts a refusal of `client` under `limit`; returns the length of the
    /// ban it starts.
    pub(crate) fn strike(
        &self,
        key: [u64; 2],
        limit: u32,
        client: &ClientKey<'_>,
        policy: &BanPolicy,
        now: Nanos,
    ) -> Option<Nanos> {
        let mut shard = self.lock(key);
        if !shard.entries.contains_key(&key) && shard.entries.len() >= shard.capacity {
            shard.evict_one(now);
        }
        let entry = shard.entries.entry(key).or_insert_with(|| Entry {
            record: BanRecord::default(),
            expires_at: 0,
            limit,
            key: None,
        });
        if entry.expires_at <= now {
            entry.record = BanRecord::default();
        }
        let started = entry.record.strike(policy, now);
        entry.expires_at = entry.record.expires_at(policy);
        if started.is_some() {
            entry.key = Some(Box::new(client.clone().into_owned()));
        }
        started
    }

    /// The key's record, while it matters.
    pub(crate) fn record(&self, key: [u64; 2], now: Nanos) -> Option<BanRecord> {
        let shard = self.lock(key);
        let entry = shard.entries.get(&key)?;
        (entry.expires_at > now).then_some(entry.record)
    }

    /// Forgets the key's record (lifting its ban); whether it had one running.
    pub(crate) fn lift(&self, key: [u64; 2], now: Nanos) -> bool {
        self.lock(key)
            .entries
            .remove(&key)
            .is_some_and(|e| e.record.banned_for(now).is_some())
    }

    /// The bans of `limit` running at `now`.
    pub(crate) fn active(&self, limit: u32, now: Nanos) -> Vec<ActiveBan> {
        let mut bans = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for entry in shard.entries.values() {
                if entry.limit != limit || entry.record.banned_for(now).is_none() {
                    continue;
                }
                if let Some(key) = &entry.key {
                    bans.push(ActiveBan {
                        key: (**key).clone(),
                        record: entry.record,
                    });
                }
            }
        }
        bans
    }

    /// Drops records that no longer matter at `now`, or whose limit `keep`
    /// rejects; returns how many.
    pub(crate) fn retain(&self, now: Nanos, keep: impl Fn(u32) -> bool) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
                let before = shard.entries.len();
                shard
                    .entries
                    .retain(|_, e| e.expires_at > now && keep(e.limit));
                before - shard.entries.len()
            })
            .sum()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }
}

impl Shard {
    /// Makes room for one record (see the module's doc).
    fn evict_one(&mut self, now: Nanos) {
        let mut candidate = None;
        for (key, entry) in self.entries.iter().take(EVICTION_SCAN) {
            if entry.expires_at <= now {
                candidate = Some(*key);
                break;
            }
            if candidate.is_none() && entry.record.banned_for(now).is_none() {
                candidate = Some(*key);
            }
        }
        let victim = candidate.or_else(|| self.entries.keys().next().copied());
        if let Some(key) = victim {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    fn policy() -> BanPolicy {
        BanPolicy {
            after: 2,
            ..crate::limit::ban::example_policy()
        }
    }

    #[test]
    fn a_full_table_keeps_running_bans_over_one_off_refusals() {
        let table = Penalties::new(1, 4);
        let banned = ClientKey::of_client(1);
        table.strike([1, 0], 7, &banned, &policy(), SECOND);
        assert!(table
            .strike([1, 0], 7, &banned, &policy(), SECOND)
            .is_some());
        for n in 2..1_000u64 {
            table.strike(
                [n, 0],
                7,
                &ClientKey::of_client(n as u32),
                &policy(),
                SECOND,
            );
        }
        assert!(table.len() <= 4);
        assert!(table.banned_for([1, 0], 2 * SECOND).is_some());
        assert_eq!(table.active(7, 2 * SECOND)[0].key, banned);
    }

    #[test]
    fn lifting_a_ban_forgets_its_offences() {
        let table = Penalties::new(1, 4);
        let key = ClientKey::of_client(1);
        table.strike([1, 0], 7, &key, &policy(), SECOND);
        table.strike([1, 0], 7, &key, &policy(), SECOND);
        assert!(table.lift([1, 0], 2 * SECOND));
        assert_eq!(table.banned_for([1, 0], 2 * SECOND), None);
        table.strike([1, 0], 7, &key, &policy(), 3 * SECOND);
        assert_eq!(
            table.strike([1, 0], 7, &key, &policy(), 3 * SECOND),
            Some(600 * SECOND),
            "a first offence again"
        );
    }
}
