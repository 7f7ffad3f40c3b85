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
use std::time::Duration;

use arrayvec::ArrayVec;
use foldhash::fast::RandomState;

use crate::identity::ClientKey;
use crate::limit::{
    Check, Decision, Decisions, LimitId, MonotonicClock, Nanos, Permit, Store, StoreError,
    MAX_CHECKS,
};

/// How long reserved units may be used; then what is left goes back to Redis.
pub(crate) const SETTLE_AFTER: Nanos = 1_000_000_000;
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
pub(crate) struct Allowances {
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
pub(crate) struct Slot([u64; 2]);

impl Allowances {
    pub(crate) fn slot(&self, limit: LimitId, key: &ClientKey<'_>) -> Slot {
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
    pub(crate) fn take(&self, slot: Slot, cost: u64, now: Nanos) -> Option<u64> {
        let mut shard = self.shard(slot);
        let allowance = shard.get_mut(&slot.0)?;
        if allowance.expires <= now || allowance.units < cost {
            return None;
        }
        allowance.units -= cost;
        Some(allowance.units)
    }

    /// Gives back units taken for a request that another limit denied.
    pub(crate) fn untake(&self, slot: Slot, cost: u64) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.units += cost;
        }
    }

    /// Claims the right to reserve a batch for `slot`: true for one caller
    /// until [`Self::fill`] or [`Self::unclaim`]; the others decide exactly.
    /// A claim lapses with its allowance, so a lost reply cannot block a key.
    pub(crate) fn claim(&self, slot: Slot, now: Nanos) -> bool {
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
    pub(crate) fn unclaim(&self, slot: Slot) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.reserving = false;
        }
    }

    /// Ends a claim with the units Redis reserved: the allowance holds them
    /// (and nothing older: earlier leftovers lapse) until `now + SETTLE_AFTER`.
    pub(crate) fn fill(&self, slot: Slot, units: u64, now: Nanos) {
        if let Some(allowance) = self.shard(slot).get_mut(&slot.0) {
            allowance.units = units;
            allowance.expires = now + SETTLE_AFTER;
            allowance.reserving = false;
        }
    }

    /// Drops allowances expired by `now` (their units lapse); returns how
    /// many units lapsed.
    pub(crate) fn sweep(&self, now: Nanos) -> u64 {
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

/// `sync: batched` over a store: batched checks are admitted from this
/// gateway's allowances where they can and reserve the next batch with the
/// store where they cannot; every other check goes to the store as it is.
pub(crate) struct Batching<S> {
    inner: S,
    allowances: Allowances,
    clock: MonotonicClock,
}

/// Per check of a request: the allowance it was admitted from and the units
/// left there, or `None` when the store decides it.
type Taken = [Option<(Slot, u64)>];

/// The checks of a request the store decides.
struct Asked<'a> {
    /// Where each asked check sits in the request.
    at: ArrayVec<usize, MAX_CHECKS>,
    checks: ArrayVec<Check<'a>, MAX_CHECKS>,
    /// The allowance an asked check reserves a batch for, having claimed it,
    /// and the batch (included in its cost).
    claims: ArrayVec<Option<(Slot, u64)>, MAX_CHECKS>,
}

impl<S> Batching<S> {
    pub(crate) fn new(inner: S, clock: MonotonicClock) -> Self {
        Batching {
            inner,
            allowances: Allowances::default(),
            clock,
        }
    }

    pub(crate) fn inner(&self) -> &S {
        &self.inner
    }

    /// Drops expired allowances; returns the units that lapsed unused.
    pub(crate) fn settle(&self) -> u64 {
        self.allowances.sweep(self.clock.now())
    }

    /// Admits what it can from this gateway's allowances.
    fn take(&self, checks: &[Check<'_>], now: Nanos) -> ArrayVec<Option<(Slot, u64)>, MAX_CHECKS> {
        checks
            .iter()
            .map(|check| {
                check.sync.batch_for(check.cost)?;
                let slot = self.allowances.slot(check.limit, &check.key);
                let left = self.allowances.take(slot, check.cost, now)?;
                Some((slot, left))
            })
            .collect()
    }

    /// Gives back what [`Self::take`] took, for a request that is not admitted.
    fn untake(&self, checks: &[Check<'_>], taken: &Taken) {
        for (check, taken) in checks.iter().zip(taken) {
            if let Some((slot, _)) = taken {
                self.allowances.untake(*slot, check.cost);
            }
        }
    }

    /// The checks left for the store. A batched one whose key has no
    /// reservation in flight here claims one and asks for its cost plus a
    /// batch; the others are decided exactly.
    fn ask<'a>(&self, checks: &[Check<'a>], taken: &Taken, now: Nanos) -> Asked<'a> {
        let mut asked = Asked {
            at: ArrayVec::new(),
            checks: ArrayVec::new(),
            claims: ArrayVec::new(),
        };
        for (i, check) in checks.iter().enumerate() {
            if taken[i].is_some() {
                continue;
            }
            let mut check = check.clone();
            let slot = self.allowances.slot(check.limit, &check.key);
            let claim = check
                .sync
                .batch_for(check.cost)
                .filter(|_| self.allowances.claim(slot, now));
            if let Some(batch) = claim {
                check.cost += batch;
            }
            asked.at.push(i);
            asked.claims.push(claim.map(|batch| (slot, batch)));
            asked.checks.push(check);
        }
        asked
    }

    fn unclaim(&self, asked: &Asked<'_>) {
        for (slot, _) in asked.claims.iter().flatten() {
            self.allowances.unclaim(*slot);
        }
    }

    /// Asks for the checks alone: their reservations are given up.
    fn drop_reservations(&self, checks: &[Check<'_>], asked: &mut Asked<'_>) {
        self.unclaim(asked);
        for (check, &i) in asked.checks.iter_mut().zip(&asked.at) {
            check.cost = checks[i].cost;
        }
        asked.claims.fill(None);
    }

    /// After the store admitted the request: each reservation it granted
    /// fills its allowance, and the client may spend the batch too.
    fn fill(&self, asked: &Asked<'_>, answered: &mut Decisions, now: Nanos) {
        for (k, claim) in asked.claims.iter().enumerate() {
            let Some((slot, batch)) = *claim else {
                continue;
            };
            match answered.decisions.get_mut(k) {
                Some(d) if d.allowed => {
                    self.allowances.fill(slot, batch, now);
                    d.remaining += batch;
                }
                // A refused reservation (a shadow limit's) spent nothing.
                _ => self.allowances.unclaim(slot),
            }
        }
    }
}

fn refused(decision: &Decision, check: &Check<'_>) -> bool {
    check.enforced && !decision.allowed
}

/// Whether to ask again without reservations: only a reservation was refused,
/// and each refused one still has room for its request alone.
fn only_a_reservation_refused(
    checks: &[Check<'_>],
    asked: &Asked<'_>,
    answered: &Decisions,
) -> bool {
    let answers = || {
        answered
            .decisions
            .iter()
            .zip(&asked.checks)
            .zip(&asked.claims)
            .zip(&asked.at)
    };
    let mut any = false;
    for (((d, c), claim), &i) in answers() {
        if !refused(d, c) {
            continue;
        }
        if claim.is_none() || d.remaining < checks[i].cost {
            return false;
        }
        any = true;
    }
    any
}

/// The decisions in the order of the checks: from the allowances, or the
/// store's.
fn merge(checks: &[Check<'_>], taken: &Taken, answered: Decisions) -> Decisions {
    let mut from_store = answered.decisions.into_iter();
    let decisions = checks
        .iter()
        .zip(taken)
        .map(|(check, taken)| match taken {
            Some((_, left)) => Decision::allowed(check.limiter.quota(), *left, 0),
            None => from_store
                .next()
                .unwrap_or_else(|| Decision::allowed(check.limiter.quota(), 0, 0)),
        })
        .collect();
    Decisions {
        decisions,
        permits: answered.permits,
        at: answered.at,
    }
}

impl<S: Store> Store for Batching<S> {
    async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
        if checks.iter().all(|c| c.sync.batch_for(c.cost).is_none()) {
            return self.inner.decide(checks).await;
        }
        let now = self.clock.now();
        let taken = self.take(checks, now);
        let mut asked = self.ask(checks, &taken, now);
        let mut answered = match self.decide_asked(&asked).await {
            Ok(answered) => answered,
            Err(e) => {
                self.untake(checks, &taken);
                self.unclaim(&asked);
                return Err(e);
            }
        };
        if only_a_reservation_refused(checks, &asked, &answered) {
            self.drop_reservations(checks, &mut asked);
            answered = match self.decide_asked(&asked).await {
                Ok(answered) => answered,
                Err(e) => {
                    self.untake(checks, &taken);
                    return Err(e);
                }
            };
        }
        let denied = answered
            .decisions
            .iter()
            .zip(&asked.checks)
            .any(|(d, c)| refused(d, c));
        if denied {
            self.untake(checks, &taken);
            self.unclaim(&asked);
        } else {
            self.fill(&asked, &mut answered, now);
        }
        Ok(merge(checks, &taken, answered))
    }

    fn release_permits(&self, permits: &[Permit]) {
        self.inner.release_permits(permits);
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        self.inner.ping(timeout).await
    }
}

impl<S: Store> Batching<S> {
    async fn decide_asked(&self, asked: &Asked<'_>) -> Result<Decisions, StoreError> {
        if asked.checks.is_empty() {
            return Ok(Decisions::default());
        }
        self.inner.decide(&asked.checks).await
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

    /// Batching over the memory store: what a shared store sees, in process.
    mod over_a_store {
        use super::*;
        use crate::limit::{FixedWindow, Limiter, MemoryStore, SyncMode};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;

        const HOUR: Nanos = 3_600_000_000_000;
        const BATCHED: SyncMode = SyncMode::Batched(10);

        fn check(id: u64, limit: u64, sync: SyncMode) -> Check<'static> {
            Check {
                limit: LimitId(id),
                limiter: Limiter::FixedWindow(FixedWindow::new(HOUR, limit)),
                key: ClientKey::global(),
                cost: 1,
                enforced: true,
                sync,
                ban: None,
            }
        }

        /// The memory store, which can be taken down.
        struct Flaky {
            memory: MemoryStore,
            down: AtomicBool,
        }

        impl Store for Arc<Flaky> {
            async fn decide(&self, checks: &[Check<'_>]) -> Result<Decisions, StoreError> {
                if self.down.load(Ordering::Relaxed) {
                    return Err(StoreError::Unavailable("down".into()));
                }
                self.memory.decide(checks).await
            }

            fn release_permits(&self, _: &[Permit]) {}
        }

        fn batching() -> (Batching<Arc<Flaky>>, Arc<Flaky>) {
            let clock = MonotonicClock::default();
            let store = Arc::new(Flaky {
                memory: MemoryStore::default().with_clock(clock.clone()),
                down: AtomicBool::new(false),
            });
            (Batching::new(store.clone(), clock), store)
        }

        /// Units the store has counted against limit `id` of `limit`.
        fn counted(store: &Flaky, id: u64, limit: u64) -> u64 {
            let asked = store
                .memory
                .decide_now(&[check(id, limit, SyncMode::Exact)], 0);
            limit - 1 - asked.decisions[0].remaining
        }

        async fn allowed(b: &Batching<Arc<Flaky>>, checks: &[Check<'_>]) -> Vec<bool> {
            let decided = b.decide(checks).await.unwrap_or_default();
            decided.decisions.iter().map(|d| d.allowed).collect()
        }

        #[tokio::test]
        async fn a_reservation_spends_a_batch_in_the_store_and_the_requests_after_it_nothing() {
            let (b, store) = batching();
            let first = b
                .decide(&[check(1, 100, BATCHED)])
                .await
                .unwrap_or_default();
            assert_eq!(
                first.decisions[0].remaining, 99,
                "the batch is the client's too"
            );
            for _ in 0..10 {
                assert_eq!(allowed(&b, &[check(1, 100, BATCHED)]).await, [true]);
            }
            assert_eq!(counted(&store, 1, 100), 11);
        }

        #[tokio::test]
        async fn units_taken_for_a_request_another_limit_denies_come_back() {
            let (b, _) = batching();
            let both = [check(1, 100, BATCHED), check(2, 1, SyncMode::Exact)];
            assert_eq!(allowed(&b, &both).await, [true, true]);
            assert_eq!(allowed(&b, &both).await, [true, false]);
            let alone = b
                .decide(&[check(1, 100, BATCHED)])
                .await
                .unwrap_or_default();
            assert_eq!(alone.decisions[0].remaining, 9, "10 reserved, 1 spent");
        }

        #[tokio::test]
        async fn a_request_a_whole_batch_no_longer_fits_is_decided_exactly() {
            let (b, store) = batching();
            for n in 0..12 {
                assert_eq!(allowed(&b, &[check(1, 12, BATCHED)]).await, [true], "{n}");
            }
            assert_eq!(allowed(&b, &[check(1, 12, BATCHED)]).await, [false]);
            // Asked against a limit one larger: this one is full.
            assert_eq!(counted(&store, 1, 13), 12);
        }

        #[tokio::test]
        async fn a_reservation_the_store_failed_leaves_no_claim_behind() {
            let (b, store) = batching();
            store.down.store(true, Ordering::Relaxed);
            assert!(b.decide(&[check(1, 100, BATCHED)]).await.is_err());
            store.down.store(false, Ordering::Relaxed);
            assert_eq!(allowed(&b, &[check(1, 100, BATCHED)]).await, [true]);
            assert_eq!(counted(&store, 1, 100), 11, "the next request reserved");
        }

        #[tokio::test]
        async fn exact_checks_go_to_the_store_as_they_are() {
            let (b, store) = batching();
            for _ in 0..3 {
                assert_eq!(allowed(&b, &[check(1, 100, SyncMode::Exact)]).await, [true]);
            }
            assert_eq!(counted(&store, 1, 100), 3);
        }
    }
}
