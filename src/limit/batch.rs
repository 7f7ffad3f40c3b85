//! `sync: batched`: a gateway reserves `batch` units of a hot key's quota in
//! Redis in one call and admits the next requests from that allowance without
//! a round trip. Reserved units are spent in Redis before any request uses
//! them, so with G gateways no more than the quota is ever admitted for what
//! Redis has seen; what batching changes is *when* a unit counts: a request
//! admitted from an allowance counts as of its reservation, up to
//! [`SETTLE_AFTER`] earlier. Over any window that lets through at most
//! `G × batch` requests more than exact mode (units reserved just before a
//! refill or window boundary, used just after), and holds back at most
//! `G × batch` (allowances unused elsewhere) until they are given back.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use foldhash::fast::RandomState;

use super::redis::Reservation;
use super::{Check, LimitId, Nanos};
use crate::identity::ClientKey;

/// How long reserved units may be used; then what is left goes back to Redis.
pub const SETTLE_AFTER: Nanos = 1_000_000_000;
const SHARDS: usize = 16;
/// Keys with an allowance at once, per shard; beyond, requests go exact.
const MAX_PER_SHARD: usize = 4096;

#[derive(Debug)]
struct Allowance {
    units: u64,
    expires: Nanos,
    reservation: Reservation,
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

    /// Adds units just reserved in Redis. Returns units to give back to Redis
    /// at once: the leftovers of an allowance that expired unsettled, or the
    /// new units when the table is full.
    pub fn add(
        &self,
        slot: Slot,
        units: u64,
        now: Nanos,
        reservation: Reservation,
    ) -> Option<(Reservation, u64)> {
        let mut shard = self.shard(slot);
        let full = shard.len() >= MAX_PER_SHARD;
        match shard.get_mut(&slot.0) {
            Some(allowance) if allowance.expires > now => {
                allowance.units += units;
                return None;
            }
            None if full => return Some((reservation, units)),
            _ => {}
        }
        let fresh = Allowance {
            units,
            expires: now + SETTLE_AFTER,
            reservation,
        };
        shard
            .insert(slot.0, fresh)
            .filter(|stale| stale.units > 0)
            .map(|stale| (stale.reservation, stale.units))
    }

    /// Removes allowances expired by `now`; returns the unused units to give
    /// back to Redis.
    pub fn settle(&self, now: Nanos) -> Vec<(Reservation, u64)> {
        let mut due = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.retain(|_, allowance| {
                if allowance.expires > now {
                    return true;
                }
                if allowance.units > 0 {
                    due.push((allowance.reservation.clone(), allowance.units));
                }
                false
            });
        }
        due
    }
}

/// Whether a check of a request can be batched: it has a batch and the
/// request's cost fits in one.
pub fn batched(check: &Check<'_>, batch: u64) -> bool {
    batch > 0 && check.cost <= batch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::redis::Reservation;

    fn reservation() -> Reservation {
        Reservation::for_tests("k")
    }

    fn slot(a: &Allowances) -> Slot {
        a.slot(LimitId(1), &ClientKey::global())
    }

    #[test]
    fn units_are_taken_until_the_allowance_is_spent() {
        let a = Allowances::default();
        let s = slot(&a);
        assert_eq!(a.take(s, 1, 0), None, "nothing reserved yet");
        assert!(a.add(s, 3, 0, reservation()).is_none());
        assert_eq!(a.take(s, 1, 10), Some(2));
        assert_eq!(a.take(s, 2, 10), Some(0));
        assert_eq!(a.take(s, 1, 10), None);
    }

    #[test]
    fn an_expired_allowance_admits_nothing_and_settles_its_leftovers() {
        let a = Allowances::default();
        let s = slot(&a);
        a.add(s, 5, 0, reservation());
        a.take(s, 2, 1);
        assert_eq!(a.take(s, 1, SETTLE_AFTER), None);
        let due = a.settle(SETTLE_AFTER);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 3);
        assert!(a.settle(SETTLE_AFTER * 2).is_empty(), "settled once");
    }

    #[test]
    fn a_new_reservation_returns_an_expired_allowances_leftovers() {
        let a = Allowances::default();
        let s = slot(&a);
        a.add(s, 4, 0, reservation());
        let stale = a.add(s, 10, SETTLE_AFTER + 1, reservation());
        assert_eq!(stale.map(|(_, units)| units), Some(4));
        assert_eq!(a.take(s, 10, SETTLE_AFTER + 2), Some(0));
    }

    #[test]
    fn units_taken_for_a_denied_request_come_back() {
        let a = Allowances::default();
        let s = slot(&a);
        a.add(s, 2, 0, reservation());
        a.take(s, 2, 1);
        a.untake(s, 2);
        assert_eq!(a.take(s, 2, 1), Some(0));
    }
}
