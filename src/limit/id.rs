//! Limit identities. A limit's id names its counters in memory and in Redis
//! keys, so it must stay the same for as long as the limit's definition does —
//! across reloads, restarts, gateways and releases of tollgate. It is therefore
//! a hash of an explicit, versioned text written field by field here, never of
//! a `Debug` or `Display` rendering that a rename would silently change.

use std::fmt::Write as _;
use std::time::Duration;

use super::Limiter;
use crate::identity::{KeyPart, KeySpec};

/// Identifies a limit's counters: a fingerprint of its definition, so that a
/// limit keeps its counters for as long as its definition is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LimitId(pub u64);

/// What a limit's counters mean, beside its rule and name: what changes here
/// starts the limit afresh; what is left out (mode, `missing`, cost, `sync`)
/// keeps its counters.
#[derive(Debug, Clone, Copy)]
pub struct LimitDefinition<'a> {
    /// Only the algorithm is encoded; its parameters follow from the rest.
    pub(crate) limiter: &'a Limiter,
    /// `None` for a concurrency limit.
    pub(crate) rate: Option<(u64, Duration)>,
    /// Requests admissible at once (burst, window count or maximum).
    pub(crate) quota: u64,
    /// As configured: leaving `debt` out and writing it are told apart.
    pub(crate) debt: Option<u64>,
    /// As configured, like `debt`.
    pub(crate) delay: Option<bool>,
    pub(crate) key: &'a KeySpec,
}

/// Bump only on purpose: every id changes with it, so every counter restarts.
const VERSION: &str = "v1";

impl LimitId {
    /// The id of limit `name` of rule `rule`.
    pub(crate) fn encode(rule: &str, name: &str, definition: &LimitDefinition<'_>) -> Self {
        LimitId(fnv1a(canonical(rule, name, definition).as_bytes()))
    }
}

/// The text an id hashes: one field per line, free text length-prefixed so
/// that no choice of names can make two definitions read the same.
fn canonical(rule: &str, name: &str, d: &LimitDefinition<'_>) -> String {
    let mut out = format!("tollgate-limit {VERSION}\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "rule {}", text(rule));
    let _ = writeln!(out, "name {}", text(name));
    let _ = writeln!(out, "algorithm {}", algorithm_name(d.limiter));
    match d.rate {
        Some((count, period)) => {
            let _ = writeln!(out, "rate {count} per {}ns", period.as_nanos());
        }
        None => out.push_str("rate none\n"),
    }
    let _ = writeln!(out, "quota {}", d.quota);
    let _ = writeln!(out, "debt {}", optional(d.debt));
    let _ = writeln!(out, "delay {}", optional(d.delay));
    let _ = write!(out, "key {}", d.key.0.len());
    for part in &d.key.0 {
        out.push(' ');
        out.push_str(&key_part(part));
    }
    out.push('\n');
    out
}

/// The config's names, written out here so that renaming a variant or
/// `Limiter::name` cannot change an id.
fn algorithm_name(limiter: &Limiter) -> &'static str {
    match limiter {
        Limiter::Gcra(_) => "gcra",
        Limiter::TokenBucket(_) => "token_bucket",
        Limiter::LeakyBucket(_) => "leaky_bucket",
        Limiter::FixedWindow(_) => "fixed_window",
        Limiter::SlidingLog(_) => "sliding_window_log",
        Limiter::SlidingCounter(_) => "sliding_window_counter",
        Limiter::Concurrent(_) => "concurrent",
    }
}

/// Not `KeyPart`'s `Display`, which is for people and may change.
fn key_part(part: &KeyPart) -> String {
    match part {
        KeyPart::Ip => "ip".into(),
        KeyPart::ApiKey => "api_key".into(),
        KeyPart::Global => "global".into(),
        // Header names are lower-case tokens; a token may hold `+` or `:`.
        KeyPart::Header(name) => format!("header:{}", text(name.as_str())),
        KeyPart::Consumer => "consumer".into(),
        KeyPart::Cookie(name) => format!("cookie:{}", text(name)),
        KeyPart::Query(name) => format!("query:{}", text(name)),
        KeyPart::JwtClaim { name, .. } => format!("jwt_claim:{}", text(name)),
    }
}

fn text(s: &str) -> String {
    format!("{}:{s}", s.len())
}

fn optional<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "none".into(), |v| v.to_string())
}

/// FNV-1a: stable across builds and processes, unlike `std`'s hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::{Concurrent, Gcra};
    use http::HeaderName;

    const SECOND: Duration = Duration::from_secs(1);

    fn gcra() -> Limiter {
        Limiter::Gcra(Gcra::from_interval(10_000_000, 100))
    }

    fn definition<'a>(limiter: &'a Limiter, key: &'a KeySpec) -> LimitDefinition<'a> {
        LimitDefinition {
            limiter,
            rate: Some((100, SECOND)),
            quota: 100,
            debt: None,
            delay: None,
            key,
        }
    }

    #[test]
    fn the_encoding_names_every_field_explicitly_under_a_version_tag() {
        let limiter = gcra();
        let key = KeySpec(vec![
            KeyPart::Ip,
            KeyPart::Header(HeaderName::from_static("x-tenant")),
        ]);
        assert_eq!(
            canonical("api", "per-ip", &definition(&limiter, &key)),
            "tollgate-limit v1\n\
             rule 3:api\n\
             name 6:per-ip\n\
             algorithm gcra\n\
             rate 100 per 1000000000ns\n\
             quota 100\n\
             debt none\n\
             delay none\n\
             key 2 ip header:8:x-tenant\n"
        );
    }

    #[test]
    fn a_concurrency_limit_is_encoded_without_a_rate() {
        let limiter = Limiter::Concurrent(Concurrent::new(5));
        let key = KeySpec(vec![KeyPart::ApiKey]);
        let d = LimitDefinition {
            rate: None,
            quota: 5,
            ..definition(&limiter, &key)
        };
        assert_eq!(
            canonical("uploads", "in-flight", &d),
            "tollgate-limit v1\n\
             rule 7:uploads\n\
             name 9:in-flight\n\
             algorithm concurrent\n\
             rate none\n\
             quota 5\n\
             debt none\n\
             delay none\n\
             key 1 api_key\n"
        );
    }

    #[test]
    fn names_that_share_their_joined_text_still_get_different_ids() {
        let limiter = gcra();
        let key = KeySpec(vec![KeyPart::Ip]);
        let d = definition(&limiter, &key);
        assert_ne!(
            LimitId::encode("a\nname 1:b", "c", &d),
            LimitId::encode("a", "b\nname 1:c", &d)
        );
        let plus = KeySpec(vec![KeyPart::Header(HeaderName::from_static("x+ip"))]);
        let two = KeySpec(vec![
            KeyPart::Header(HeaderName::from_static("x")),
            KeyPart::Ip,
        ]);
        assert_ne!(
            LimitId::encode("r", "n", &definition(&limiter, &plus)),
            LimitId::encode("r", "n", &definition(&limiter, &two))
        );
    }

    #[test]
    fn fnv1a_of_nothing_is_its_offset_basis() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
