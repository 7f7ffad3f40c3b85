//! Every algorithm against a reference model: the simplest, obviously correct
//! implementation, which replays the whole history of admitted requests for
//! each decision. Random event sequences (proptest, fake clock) must get the
//! same answers from both; `retry_after` must be exactly the first moment a
//! request would be admitted.

mod common;

use proptest::prelude::*;
use tollgate::limit::{
    Algorithm, Concurrent, Decision, FixedWindow, Gcra, LeakyBucket, Nanos, SlidingCounter,
    SlidingLog, TokenBucket,
};

/// (time, cost) of a request.
type Event = (Nanos, u64);

/// Decides a sequence of events with some algorithm.
type Run = dyn Fn(&[Event]) -> Vec<Decision>;

/// The reference answers for a sequence of events.
type Model = Box<dyn Fn(&[Event]) -> Vec<bool>>;

/// Random requests: times non-decreasing over a few periods, costs 1–3.
fn events(period: Nanos) -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0..period / 3, 1u64..=3), 1..60).prop_map(|steps| {
        let mut t = 0;
        steps
            .into_iter()
            .map(|(gap, cost)| {
                // Many requests at the same instant, some spread out.
                if gap % 3 != 0 {
                    t += gap;
                }
                (t, cost)
            })
            .collect()
    })
}

/// Runs an algorithm over events, storing state only when admitted, and checks
/// each denial's `retry_after` against the algorithm itself.
fn run<A: Algorithm>(alg: &A, events: &[Event]) -> Vec<bool>
where
    A::State: Clone,
{
    let mut state: Option<A::State> = None;
    let mut out = Vec::new();
    for &(t, cost) in events {
        let (d, next) = alg.decide(state.as_ref(), t, cost);
        check_retry_after(alg, state.as_ref(), t, cost, &d);
        if d.allowed {
            state = Some(next);
        }
        out.push(d.allowed);
    }
    out
}

/// A denied request is admitted at exactly `now + retry_after`, not a
/// nanosecond earlier (with nothing else happening meanwhile).
fn check_retry_after<A: Algorithm>(
    alg: &A,
    state: Option<&A::State>,
    now: Nanos,
    cost: u64,
    d: &Decision,
) {
    if d.allowed || d.retry_after == Nanos::MAX {
        return;
    }
    assert!(d.retry_after > 0, "a denial must wait");
    let at = now + d.retry_after;
    assert!(
        alg.decide(state, at, cost).0.allowed,
        "not admitted at now + retry_after"
    );
    assert!(
        !alg.decide(state, at - 1, cost).0.allowed,
        "admitted before retry_after"
    );
}

/// Token bucket by replay: the level is recomputed from the full history.
fn bucket_model(interval: Nanos, burst: u64, debt: u64, events: &[Event]) -> Vec<bool> {
    let full = (burst * interval) as i128;
    let floor = -((debt * interval) as i128);
    let mut admitted: Vec<Event> = Vec::new();
    let mut out = Vec::new();
    for &(t, cost) in events {
        let mut level = full;
        let mut last = 0;
        for &(at, c) in &admitted {
            level = (level + (at - last) as i128).min(full) - (c * interval) as i128;
            last = at;
        }
        level = (level + (t - last) as i128).min(full);
        // A negative balance admits nothing until repaid.
        let ok = cost <= burst + debt && level >= 0 && level - (cost * interval) as i128 >= floor;
        if ok {
            admitted.push((t, cost));
        }
        out.push(ok);
    }
    out
}

fn fixed_window_model(period: Nanos, limit: u64, events: &[Event]) -> Vec<bool> {
    let mut admitted: Vec<Event> = Vec::new();
    events
        .iter()
        .map(|&(t, cost)| {
            let used: u64 = admitted
                .iter()
                .filter(|(at, _)| at / period == t / period)
                .map(|(_, c)| c)
                .sum();
            let ok = used + cost <= limit;
            if ok {
                admitted.push((t, cost));
            }
            ok
        })
        .collect()
}

fn sliding_log_model(period: Nanos, limit: u64, events: &[Event]) -> Vec<bool> {
    let mut admitted: Vec<Event> = Vec::new();
    events
        .iter()
        .map(|&(t, cost)| {
            let used: u64 = admitted
                .iter()
                .filter(|(at, _)| at + period > t)
                .map(|(_, c)| c)
                .sum();
            let ok = used + cost <= limit;
            if ok {
                admitted.push((t, cost));
            }
            ok
        })
        .collect()
}

fn sliding_counter_model(period: Nanos, limit: u64, events: &[Event]) -> Vec<bool> {
    let mut admitted: Vec<Event> = Vec::new();
    events
        .iter()
        .map(|&(t, cost)| {
            let window = t / period;
            let count = |w: u64| -> u128 {
                admitted
                    .iter()
                    .filter(|(at, _)| at / period == w)
                    .map(|(_, c)| u128::from(*c))
                    .sum()
            };
            let previous = if window == 0 { 0 } else { count(window - 1) };
            let current = count(window);
            let elapsed = u128::from(t - window * period);
            let p = u128::from(period);
            let ok = cost <= limit
                && previous * (p - elapsed) + (current + u128::from(cost)) * p
                    <= u128::from(limit) * p;
            if ok {
                admitted.push((t, cost));
            }
            ok
        })
        .collect()
}

const PERIOD: Nanos = 1_000_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn gcra_agrees_with_the_token_bucket_model(evs in events(PERIOD), count in 1u64..8, burst in 1u64..8) {
        let interval = PERIOD / count;
        prop_assert_eq!(run(&Gcra::from_interval(interval, burst), &evs), bucket_model(interval, burst, 0, &evs));
    }

    #[test]
    fn token_bucket_agrees_with_its_model(evs in events(PERIOD), count in 1u64..8, burst in 1u64..8, debt in 0u64..4) {
        let interval = PERIOD / count;
        let bucket = TokenBucket::new(interval, burst, debt);
        prop_assert_eq!(run(&bucket, &evs), bucket_model(interval, burst, debt, &evs));
    }

    #[test]
    fn token_bucket_debt_never_exceeds_its_bound(evs in events(PERIOD), burst in 1u64..8, debt in 0u64..4) {
        let interval = PERIOD / 4;
        let bucket = TokenBucket::new(interval, burst, debt);
        let mut state = None;
        for (t, cost) in evs {
            let (d, next) = bucket.decide(state.as_ref(), t, cost);
            if d.allowed {
                prop_assert!(next.level >= -((debt * interval) as i64), "level {} below the debt", next.level);
                prop_assert!(d.remaining <= burst);
                state = Some(next);
            }
        }
    }

    #[test]
    fn leaky_bucket_policing_agrees_with_the_token_bucket_model(evs in events(PERIOD), count in 1u64..8, burst in 1u64..8) {
        let interval = PERIOD / count;
                // nginx's burst: requests beyond the one served.
        let bucket = LeakyBucket::new(interval, burst - 1, false);
        prop_assert_eq!(run(&bucket, &evs), bucket_model(interval, burst, 0, &evs));
    }

    #[test]
    fn leaky_bucket_shaping_serves_at_the_drain_rate(evs in events(PERIOD), count in 1u64..8, burst in 1u64..8) {
        let interval = PERIOD / count;
                let bucket = LeakyBucket::new(interval, burst - 1, true);
        let mut state = None;
        let mut served: Vec<(Nanos, u64)> = Vec::new();
        for (t, cost) in evs {
            let (d, next) = bucket.decide(state.as_ref(), t, cost);
            check_retry_after(&bucket, state.as_ref(), t, cost, &d);
            if d.allowed {
                prop_assert!(d.delay <= interval * burst, "waits at most the bucket's depth");
                served.push((t + d.delay, cost));
                state = Some(next);
            }
        }
        // Requests leave the bucket no faster than the drain rate.
        for pair in served.windows(2) {
            let ((a, cost_a), (b, _)) = (pair[0], pair[1]);
            prop_assert!(b >= a + interval * cost_a, "served {} then {} too close", a, b);
        }
    }

    #[test]
    fn fixed_window_agrees_with_its_model(evs in events(PERIOD), limit in 1u64..10) {
        prop_assert_eq!(run(&FixedWindow::new(PERIOD, limit), &evs), fixed_window_model(PERIOD, limit, &evs));
    }

    #[test]
    fn sliding_log_agrees_with_its_model(evs in events(PERIOD), limit in 1u64..10) {
        prop_assert_eq!(run(&SlidingLog::new(PERIOD, limit), &evs), sliding_log_model(PERIOD, limit, &evs));
    }

    #[test]
    fn sliding_counter_agrees_with_its_model(evs in events(PERIOD), limit in 1u64..10) {
        prop_assert_eq!(run(&SlidingCounter::new(PERIOD, limit), &evs), sliding_counter_model(PERIOD, limit, &evs));
    }

    #[test]
    fn an_older_now_is_decided_as_the_newest_time_the_key_has_seen(
        evs in events(PERIOD),
        jitter in prop::collection::vec(0u64..PERIOD / 2, 60),
        limit in 1u64..10,
    ) {
        // Times that sometimes run backwards (a request decided late)…
        let late: Vec<Event> = evs.iter().zip(&jitter).map(|(&(t, c), &j)| (t.saturating_sub(j % 3 * j), c)).collect();
        let interval = PERIOD / limit;
        let cases: [(&str, Box<Run>, Model); 4] = [
            ("fixed", Box::new(move |e| decisions(&FixedWindow::new(PERIOD, limit), e)), Box::new(move |e| fixed_window_model(PERIOD, limit, e))),
            ("log", Box::new(move |e| decisions(&SlidingLog::new(PERIOD, limit), e)), Box::new(move |e| sliding_log_model(PERIOD, limit, e))),
            ("counter", Box::new(move |e| decisions(&SlidingCounter::new(PERIOD, limit), e)), Box::new(move |e| sliding_counter_model(PERIOD, limit, e))),
            ("tokens", Box::new(move |e| decisions(&TokenBucket::new(interval, limit, 0), e)), Box::new(move |e| bucket_model(interval, limit, 0, e))),
        ];
        for (name, real, model) in cases {
            // …are decided as if at the latest time of an admitted request.
            let got: Vec<bool> = real(&late).iter().map(|d| d.allowed).collect();
            let mut effective: Vec<Event> = Vec::new();
            let mut newest = 0;
            for (i, &(t, c)) in late.iter().enumerate() {
                effective.push((t.max(newest), c));
                if model(&effective)[i] {
                    newest = newest.max(t);
                }
                                if name == "counter" {
                    // The counter keeps only its window's start, so a late
                    // time inside the window weighs the previous window more:
                    // stricter, never looser.
                    prop_assert!(!got[i] || model(&effective)[i], "{} over-admitted at event {}", name, i);
                    if got[i] != model(&effective)[i] {
                        // From here on the histories differ; stop comparing.
                        break;
                    }
                } else {
                    prop_assert_eq!(model(&effective)[i], got[i], "{} at event {}", name, i);
                }
            }
        }
    }

    #[test]
    fn remaining_never_exceeds_the_quota(evs in events(PERIOD), limit in 1u64..10) {
        let windows: [(&str, Box<Run>); 3] = [
            ("fixed", Box::new(move |e| decisions(&FixedWindow::new(PERIOD, limit), e))),
            ("log", Box::new(move |e| decisions(&SlidingLog::new(PERIOD, limit), e))),
            ("counter", Box::new(move |e| decisions(&SlidingCounter::new(PERIOD, limit), e))),
        ];
        for (name, decide) in windows {
            for d in decide(&evs) {
                prop_assert!(d.remaining <= limit, "{}: remaining {} over {}", name, d.remaining, limit);
                prop_assert_eq!(d.limit, limit);
            }
        }
    }

    #[test]
    fn concurrency_permits_always_return_to_zero(ops in prop::collection::vec((any::<bool>(), 1u64..3), 1..80), max in 1u64..6) {
        use tollgate::limit::Limiter;
        let store = tollgate::limit::MemoryStore::with_shards(2, 1000, None);
        let limiter = Limiter::Concurrent(Concurrent::new(max));
        let mut held = Vec::new();
        let mut model = 0u64;
        for (acquire, cost) in ops {
            if acquire || held.is_empty() {
                let decided = store.decide_now(&[common_check(limiter, cost)], 0);
                let ok = model + cost <= max;
                prop_assert_eq!(decided.decisions[0].allowed, ok);
                if ok {
                    model += cost;
                    held.push((decided.permits, cost));
                }
            } else {
                let (permits, cost) = held.remove(0);
                store.release_permits_now(&permits);
                model -= cost;
            }
        }
        for (permits, _) in held.drain(..) {
            store.release_permits_now(&permits);
        }
        prop_assert_eq!(store.len(), 0, "every permit given back");
    }
}

fn decisions<A: Algorithm>(alg: &A, events: &[Event]) -> Vec<Decision> {
    let mut state: Option<A::State> = None;
    events
        .iter()
        .map(|&(t, cost)| {
            let (d, next) = alg.decide(state.as_ref(), t, cost);
            if d.allowed {
                state = Some(next);
            }
            d
        })
        .collect()
}

/// A check of one fixed client against `limiter`.
fn common_check(limiter: tollgate::limit::Limiter, cost: u64) -> tollgate::limit::Check<'static> {
    tollgate::limit::Check {
        limit: tollgate::limit::LimitId(1),
        limiter,
        key: common::keys::ip_key([192, 0, 2, 1]),
        cost,
        enforced: true,
        sync: tollgate::limit::SyncMode::Exact,
        ban: None,
    }
}

/// The README's table: `rate: 10/minute`, a client sending every 100 ms from
/// 0:50 to 1:10 (the window boundary at 1:00).
#[test]
fn burst_behaviour_at_a_window_boundary_matches_the_readme() {
    const SECOND: Nanos = 1_000_000_000;
    const MINUTE: Nanos = 60 * SECOND;
    let interval = MINUTE / 10;
    let times: Vec<Event> = (0..=200)
        .map(|i| (50 * SECOND + i * SECOND / 10, 1))
        .collect();
    let admitted = |outcome: Vec<bool>| outcome.into_iter().filter(|a| *a).count();
    assert_eq!(
        admitted(run(&Gcra::from_interval(interval, 10), &times)),
        13
    );
    assert_eq!(
        admitted(run(&TokenBucket::new(interval, 10, 0), &times)),
        13
    );
    assert_eq!(
        admitted(run(&LeakyBucket::new(interval, 0, false), &times)),
        4
    );
    assert_eq!(admitted(run(&FixedWindow::new(MINUTE, 10), &times)), 20);
    assert_eq!(admitted(run(&SlidingLog::new(MINUTE, 10), &times)), 10);
    assert_eq!(admitted(run(&SlidingCounter::new(MINUTE, 10), &times)), 11);
}
