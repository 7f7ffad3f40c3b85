//! `tollgate replay`: what a candidate config would have done to the traffic
//! an access log recorded. The log's requests go, in the order the store
//! decided them, through the candidate's routing, identity, exemptions, plans
//! and limits ([`admission::admit`], the gateway's own step) against an
//! in-memory store whose clock is set to each request's recorded time: no
//! network, no Redis, no wall clock. The report sets what the log says
//! happened beside what the candidate would have done.

mod read;
mod report;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header::HOST;
use http::{HeaderMap, HeaderValue};

use crate::admission::{self, Admission, RequestHead};
use crate::identity::{ClientKey, Exemption, RequestFacts};
use crate::limit::{HeldPermits, Limits, MemoryStore, MonotonicClock, Nanos};
use crate::metrics::Outcome;
use crate::pipeline;
use crate::snapshot::{RuleLimit, Snapshot};

pub use read::{parse_window_time, BadLine, Window};
use read::{Log, Request};
pub use report::{Counts, Report};
use report::{Tally, Verdict};

/// What to replay and how to report it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Access logs (`-`: stdin), gzip or not.
    pub paths: Vec<PathBuf>,
    pub window: Window,
    /// Show keys as counted (client IPs, consumer ids; header values are in
    /// the log only as digests) instead of their digests.
    pub show_keys: bool,
    /// How many keys to list each way.
    pub top: usize,
}

/// Why a replay could not run at all (a bad line is reported, not this).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// How often, in replayed time, the store drops expired state (as the
/// gateway's sweeper does), so `max_keys` bounds it the same way.
const SWEEP_EVERY: Nanos = 10_000_000_000;

/// Replays `options.paths` through `candidate`; `progress` gets a line now
/// and then for stderr. A batch job: it reads the files as it goes,
/// blocking, and decides on the caller's runtime without yielding.
pub async fn replay(
    candidate: &Snapshot,
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Result<Report, ReplayError> {
    let mut log = Log::default();
    for path in &options.paths {
        let mut tell = |n: u64| progress(&format!("{}: {n} lines read", path.display()));
        log.read_file(path, options.window, &mut tell)
            .map_err(|source| ReplayError::Read {
                path: path.display().to_string(),
                source,
            })?;
    }
    // Stable: requests decided at the same nanosecond keep the log's order.
    log.requests.sort_by_key(|r| r.at);
    let mut tally = run(candidate, &log.requests, options, progress).await;
    tally.bad_lines = log.bad_count;
    tally.bad_line_examples = std::mem::take(&mut log.bad_lines);
    tally.outside_window = log.skipped;
    let mut report = tally.report(options);
    report.unrecorded = unrecorded(candidate, &log.seen);
    Ok(report)
}

/// Permits held until their request's recorded end.
#[derive(Default)]
struct Held {
    ends: BinaryHeap<Reverse<(Nanos, u64)>>,
    permits: HashMap<u64, HeldPermits>,
    next: u64,
}

impl Held {
    fn hold(&mut self, until: Nanos, permits: HeldPermits) {
        self.next += 1;
        self.ends.push(Reverse((until, self.next)));
        self.permits.insert(self.next, permits);
    }

    /// Gives back every permit whose request had ended by `now`.
    fn release_until(&mut self, now: Nanos) {
        while let Some(Reverse((end, id))) = self.ends.peek().copied() {
            if end > now {
                break;
            }
            self.ends.pop();
            self.permits.remove(&id);
        }
    }
}

async fn run(
    rt: &Snapshot,
    requests: &[Request],
    options: &Options,
    progress: &mut dyn FnMut(&str),
) -> Tally {
    let time = Arc::new(AtomicU64::new(0));
    // Redis keeps every key until its TTL: bounding replay's store by the
    // memory fallback's `max_keys` would evict state Redis kept.
    let max_keys = match rt.store.redis {
        Some(_) => u32::MAX as usize,
        None => rt.store.max_keys,
    };
    let limits = Limits::memory(
        MemoryStore::new(max_keys, None),
        MonotonicClock::manual(time.clone()),
    );
    let mut tally = Tally::new(rt, options.show_keys);
    let mut held = Held::default();
    let mut headers = HeaderMap::new();
    let mut last_sweep = requests.first().map_or(0, |r| r.at);
    for (n, request) in requests.iter().enumerate() {
        if n > 0 && n.is_multiple_of(1_000_000) {
            progress(&format!("{n} of {} requests replayed", requests.len()));
        }
        time.store(request.at, Ordering::Relaxed);
        held.release_until(request.at);
        if request.at.saturating_sub(last_sweep) >= SWEEP_EVERY {
            limits.memory.sweep(request.at);
            last_sweep = request.at;
        }
        headers.clear();
        if let Some(host) = request.host.as_deref() {
            if let Ok(value) = HeaderValue::from_str(host) {
                headers.insert(HOST, value);
            }
        }
        let head = RequestHead {
            method: &request.method,
            raw_target: request.path.as_bytes(),
            headers: &headers,
            uri_authority: None,
            peer: request.client_ip,
            recorded: Some(&request.identity),
            host_required: false,
        };
        let recorded = recorded_verdict(request);
        tally.recorded(request, recorded, recorded_key(rt, request));
        // Refused for its shape before any rule (no host, its framing, its
        // method, a head over `max_header_bytes`): no config routes it, and
        // what made it so (a missing Host, its Transfer-Encoding, its size)
        // is not in the log.
        if matches!(request.outcome, Outcome::BadRequest | Outcome::TooLarge)
            && request.rule.is_none()
        {
            tally.candidate(request, (None, None), Verdict::Refused, None);
            continue;
        }
        match admission::admit(rt, &head, &limits).await {
            Admission::Reply(refusal) => {
                let verdict = match refusal.outcome {
                    Outcome::Limited => Verdict::Limited,
                    _ => Verdict::Refused,
                };
                let limit = refusal.rule.zip(refusal.limit).map(|(r, i)| {
                    let limit = &rt.rule(r).limits_for(refusal.plan)[i];
                    (i, limit, key_of(rt, request, limit))
                });
                tally.candidate(request, (refusal.rule, refusal.plan), verdict, limit);
            }
            Admission::Forward(mut admitted) => {
                let verdict = match admitted.outcome {
                    Outcome::Exempt => Verdict::Exempt,
                    _ => Verdict::Admitted,
                };
                if let Some(permits) = admitted.permits.take() {
                    held.hold(request.end, permits);
                }
                tally.candidate(request, (Some(admitted.rule), admitted.plan), verdict, None);
            }
        }
    }
    tally
}

/// What the candidate reads of a request's identity that no line records:
/// replay counts every request as without it.
fn unrecorded(rt: &Snapshot, seen: &BTreeSet<String>) -> Vec<String> {
    let parts = rt.recording.parts.iter().map(ToString::to_string);
    let exemptions = rt
        .recording
        .header_exemptions
        .iter()
        .filter_map(|e| match e {
            Exemption::Header { name, pattern, .. } => Some(format!("{name}={pattern}")),
            Exemption::Networks(_) => None,
        });
    parts
        .chain(exemptions)
        .filter(|p| !seen.contains(p))
        .collect()
}

/// What the log says became of a request.
fn recorded_verdict(request: &Request) -> Verdict {
    match request.outcome {
        Outcome::Limited => Verdict::Limited,
        Outcome::Exempt => Verdict::Exempt,
        Outcome::Allowed | Outcome::ShadowLimited => Verdict::Admitted,
        // `on_error: allow` let it through; `deny` answered 503.
        Outcome::StoreError if request.status != 503 => Verdict::Admitted,
        _ => Verdict::Refused,
    }
}

/// The key, as the candidate's limit of the same name counts it, of a
/// request the log says that limit refused.
fn recorded_key<'a>(rt: &'a Snapshot, request: &'a Request) -> Option<ClientKey<'a>> {
    let rule = rt
        .rules
        .iter()
        .find(|r| Some(&*r.name) == request.rule.as_deref())?;
    let name = request.limit.as_deref()?;
    let limit = rule.all_limits().find(|l| l.name == name)?;
    key_of(rt, request, limit)
}

/// The key `limit` counts `request` under (`None`: a part is missing).
fn key_of<'a>(rt: &'a Snapshot, request: &'a Request, limit: &RuleLimit) -> Option<ClientKey<'a>> {
    static NO_HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    let headers = NO_HEADERS.get_or_init(HeaderMap::new);
    let facts = RequestFacts {
        consumer: request.identity.consumer.as_deref(),
        recorded: Some(&request.identity),
        ..pipeline::facts_of(rt, headers, None, request.client_ip)
    };
    pipeline::limit_key(limit, &facts).ok()?
}
