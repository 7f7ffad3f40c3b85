//! `sync: batched`: a gateway reserves `batch` units of a hot key's quota in
//! Redis in one call and admits the next requests from that allowance without
//! a round trip. Reserved units are spent in Redis before any request uses
//! them, so the gateways never admit more than Redis has counted; what
//! batching changes is *when* a unit counts: a request admitted from an
//! allowance counts as of its reservation, at most [`SETTLE_AFTER`] earlier.
//! Units not used by then lapse (giving them back exactly would need the
//! state as of the reservation, which a later call no longer sees). One
//! reservation per key and gateway is in flight at a time and an allowance
//! holds at most one batch, so with G gateways at most `G × batch` units are
//! held (or lapse) at once, and over any window at most `G × batch` more are
//! admitted than in exact mode.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use foldhash::fast::RandomState;

use crate::identity::ClientKey;
use crate::limit::{LimitId, Nanos};

/// How long reserved units may be used; then what is left goes back to Redis.
pub const SETTLE_AFTER: Nanos = 1_000_000_000;
const SHARDS: usize = 16;
/// Keys with an allowance at once, per shard; beyond, requests go exact.
const MAX_PER_SHARD: usize = 4096;

#[derive(Debug)]
struct Allowance {
    units: u64,
    expires: Nanos,
    /// A reservation for this key is in flight: other requests go exact.
    reserving: bool,
}

type Shard = HashMap<[u64; 2], Allowance>;

/// This gateway's allowances, sharded by key.
#[derive(Debug)]
pub struct Allowances {
    shards: Box<[Mutex<Shard>]>,
    hash_lo: RandomState,
    hash_hi: RandomState,
}

impl Default for Allowances {
    fn default() -> Self {
        Allowances {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hash_lo: RandomState::default(),
            hash_hi: RandomState::default(),
        }
    }
}

/// Where a check's allowance lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot([u64; 2]);

impl Allowances {
    pub fn slot(&self, limit: LimitId, key: &ClientKey<'_>) -> Slot {
        let item = (limit, key);
        Slot([self.hash_lo.hash_one(item), self.hash_hi.hash_one(item)])
    }

    fn shard(&self, slot: Slot) -> std::sync::MutexGuard<'_, Shard> {
        // A panic cannot leave an allowance half-written.
        self.shards[(slot.0[1] as usize) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `cost` units at `now`; returns what is left, or `None` when the
    /// allowance is missing, expired or too small (then Redis decides).
    pub fn take(&self, slot: Slot, cost: u64, now: Nanos) -> Option<u64> {
        let mut shard = self.shard(slot);
        let allowance = shard.get_mut(&slot.0)?;
        if allowance.expires <= now || allowance.units < cost {
            return None;
        }
        allowance.units -= cost;
        Some(allowance.units)
    }

    /// Gives back units taken for a request that another limit denied.
    pub fn untake(&self, slot: Slot, cost: u64) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.units += cost;
        }
    }

    /// Claims the right to reserve a batch for `slot`: true for one caller
    /// until [`Self::fill`] or [`Self::unclaim`]; the others decide exactly.
    /// A claim lapses with its allowance, so a lost reply cannot block a key.
    pub fn claim(&self, slot: Slot, now: Nanos) -> bool {
        let mut shard = self.shard(slot);
        let full = shard.len() >= MAX_PER_SHARD;
        match shard.get_mut(&slot.0) {
            Some(a) if a.expires > now && a.reserving => false,
            Some(a) => {
                a.reserving = true;
                a.expires = now + SETTLE_AFTER;
                true
            }
            None if full => false,
            None => {
                shard.insert(
                    slot.0,
                    Allowance {
                        units: 0,
                        expires: now + SETTLE_AFTER,
                        reserving: true,
                    },
                );
                true
            }
        }
    }

    /// Ends a claim whose reservation Redis refused (or never answered).
    pub fn unclaim(&self, slot: Slot) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.reserving = false;
        }
    }

    /// Ends a claim with the units Redis reserved: the allowance holds them
    /// (and nothing older: earlier leftovers lapse) until `now + SETTLE_AFTER`.
    pub fn fill(&self, slot: Slot, units: u64, now: Nanos) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.units = units;
            allowance.expires = now + SETTLE_AFTER;
            allowance.reserving = false;
        }
    }

    /// Drops allowances expired by `now` (their units lapse); returns how
    /// many units lapsed.
    pub fn sweep(&self, now: Nanos) -> u64 {
        let mut lapsed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, allowance| {
                if allowance.expires > now {
                    return true;
                }
                lapsed += allowance.units;
                false
            });
        }
        lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: &Allowances) -> Slot {
        a.slot(LimitId(1), &ClientKey::global())
    }

    #[test]
    fn units_are_taken_until_the_allowance_is_spent() {
        let a = Allowances::default();
        let s = slot(&a);
        assert_eq!(a.take(s, 1, 0), None, "nothing reserved yet");
        assert!(a.claim(s, 0));
        a.fill(s, 3, 0);
        assert_eq!(a.take(s, 1, 10), Some(2));
        assert_eq!(a.take(s, 2, 10), Some(0));
        assert_eq!(a.take(s, 1, 10), None);
    }

    #[test]
    fn one_reservation_per_key_is_in_flight() {
        let a = Allowances::default();
        let s = slot(&a);
        assert!(a.claim(s, 0));
        assert!(!a.claim(s, 1), "the others decide exactly meanwhile");
        a.unclaim(s);
        assert!(a.claim(s, 2));
        a.fill(s, 5, 2);
        assert!(
            a.claim(s, 3),
            "the next batch may be reserved while this one lasts"
        );
    }

    #[test]
    fn a_new_batch_replaces_the_leftovers_of_the_last() {
        let a = Allowances::default();
        let s = slot(&a);
        a.claim(s, 0);
        a.fill(s, 4, 0);
        a.claim(s, 1);
        a.fill(s, 10, 1);
        assert_eq!(a.take(s, 10, 2), Some(0), "at most one batch is held");
        assert_eq!(a.take(s, 1, 2), None);
    }

    #[test]
    fn an_expired_allowance_admits_nothing_and_its_units_lapse() {
        let a = Allowances::default();
        let s = slot(&a);
        a.claim(s, 0);
        a.fill(s, 5, 0);
        a.take(s, 2, 1);
        assert_eq!(a.take(s, 1, SETTLE_AFTER), None);
        assert_eq!(a.sweep(SETTLE_AFTER), 3);
        assert_eq!(a.sweep(SETTLE_AFTER * 2), 0, "swept once");
    }

    #[test]
    fn a_claim_lapses_if_its_reservation_never_ends() {
        let a = Allowances::default();
        let s = slot(&a);
        assert!(a.claim(s, 0));
        assert!(!a.claim(s, SETTLE_AFTER - 1));
        assert!(a.claim(s, SETTLE_AFTER));
    }

    #[test]
    fn units_taken_for_a_denied_request_come_back() {
        let a = Allowances::default();
        let s = slot(&a);
        a.claim(s, 0);
        a.fill(s, 2, 0);
        a.take(s, 2, 1);
        a.untake(s, 2);
        assert_eq!(a.take(s, 2, 1), Some(0));
    }
}
