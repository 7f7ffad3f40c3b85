//! Consumers and plans: who a client is, from the API key or the verified
//! JWT (`jwt`) it presents, and which plan its requests are limited by. Keys
//! are held only as SHA-256 digests: a memory dump, a log line or `/-/config`
//! never shows one in clear.

pub mod jwt;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use http::HeaderName;

use jwt::{JwtVerifier, Verified};

/// The SHA-256 digest of an API key.
pub(crate) type KeyDigest = [u8; 32];

/// How a digest is written in a consumers file: `sha256:` and 64 hex digits.
pub(crate) const DIGEST_PREFIX: &str = "sha256:";

pub(crate) fn digest(key: &[u8]) -> KeyDigest {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, key).as_ref());
    out
}

/// A key as written in a consumers file: a digest (`sha256:…`) or the key
/// itself, which is digested at once.
pub(crate) fn digest_of_written(text: &str) -> Result<KeyDigest, String> {
    let Some(hex) = text.strip_prefix(DIGEST_PREFIX) else {
        if text.is_empty() {
            return Err("an API key cannot be empty".into());
        }
        return Ok(digest(text.as_bytes()));
    };
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return Err(format!(
            "a digest is `{DIGEST_PREFIX}` and 64 hex digits; this one has {} characters after the prefix",
            bytes.len()
        ));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(bytes.chunks(2)) {
        let pair = std::str::from_utf8(pair).map_err(|_| "a digest is hex digits".to_string())?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| "a digest is hex digits".to_string())?;
    }
    Ok(out)
}

/// The digest as written in a consumers file.
pub(crate) fn written_digest(digest: &KeyDigest) -> String {
    digest.iter().fold(
        String::with_capacity(DIGEST_PREFIX.len() + 64),
        |mut out, b| {
            if out.is_empty() {
                out.push_str(DIGEST_PREFIX);
            }
            let _ = write!(out, "{b:02x}");
            out
        },
    )
}

/// A plan consumers are on. Its limits live in the rules that apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    /// Its consumers skip the limits of every rule that applies plans.
    pub exempt: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    /// Shared with the requests that forward it upstream.
    pub id: Arc<str>,
    /// Index into the snapshot's plans.
    pub plan: usize,
}

/// The key table, compiled from the config (and its consumers file).
#[derive(Debug, Default)]
pub struct Consumers {
    pub(crate) by_key: HashMap<KeyDigest, usize>,
    pub(crate) list: Vec<Consumer>,
    /// The plan of requests that present no key; `None`: they are refused.
    pub(crate) anonymous: Option<usize>,
    /// Headers that carry the consumer's id and plan upstream.
    pub(crate) forward_id: Option<HeaderName>,
    pub(crate) forward_plan: Option<HeaderName>,
    /// Verifies bearer JWTs, when configured.
    pub(crate) jwt: Option<JwtVerifier>,
}

/// Who sent a request, as far as plans go.
#[derive(Debug, Clone)]
pub(crate) enum Who<'a> {
    Consumer(&'a Consumer),
    /// A verified JWT.
    Token(Arc<Verified>),
    /// No key, and the config gives such requests a plan.
    Anonymous {
        plan: usize,
    },
}

impl Who<'_> {
    pub(crate) fn plan(&self) -> usize {
        match self {
            Who::Consumer(c) => c.plan,
            Who::Token(t) => t.plan,
            Who::Anonymous { plan } => *plan,
        }
    }

    pub(crate) fn id(&self) -> Option<&Arc<str>> {
        match self {
            Who::Consumer(c) => Some(&c.id),
            Who::Token(t) => Some(&t.id),
            Who::Anonymous { .. } => None,
        }
    }

    /// The verified token, for `key: { jwt_claim: NAME }`.
    pub(crate) fn token(&self) -> Option<&Verified> {
        match self {
            Who::Token(t) => Some(t),
            _ => None,
        }
    }
}

/// Why a request has no consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unknown {
    /// No key, and requests without one have no plan.
    MissingKey,
    /// A key no consumer has.
    UnknownKey,
}

impl Consumers {
    /// The consumer an API key names (the gateway's lookup: one SHA-256 and
    /// one probe).
    pub fn lookup(&self, key: &[u8]) -> Option<&Consumer> {
        self.by_key.get(&digest(key)).map(|&i| &self.list[i])
    }

    /// The consumer whose key has this SHA-256 (replay knows no key).
    pub(crate) fn by_digest(&self, digest: &KeyDigest) -> Option<&Consumer> {
        self.by_key.get(digest).map(|&i| &self.list[i])
    }

    /// The JWT verifier, when JWTs are configured.
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// The consumer `key` names, or the anonymous plan when there is no key.
    pub(crate) fn resolve(&self, key: Option<&[u8]>) -> Result<Who<'_>, Unknown> {
        match key {
            None => self
                .anonymous
                .map(|plan| Who::Anonymous { plan })
                .ok_or(Unknown::MissingKey),
            Some(key) => self
                .lookup(key)
                .map(Who::Consumer)
                .ok_or(Unknown::UnknownKey),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_digest_reads_back_as_the_same_digest() {
        let d = digest(b"free-key-1");
        assert_eq!(digest_of_written(&written_digest(&d)), Ok(d));
    }

    #[test]
    fn a_key_in_clear_is_digested() {
        assert_eq!(digest_of_written("free-key-1"), Ok(digest(b"free-key-1")));
    }

    #[test]
    fn a_malformed_digest_is_refused() {
        assert!(digest_of_written("sha256:abc").is_err());
        assert!(digest_of_written(&format!("sha256:{}", "zz".repeat(32))).is_err());
        assert!(digest_of_written("").is_err());
    }

    #[test]
    fn the_digest_of_a_known_key_is_its_sha256() {
        assert_eq!(
            written_digest(&digest(b"abc")),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    fn table() -> Consumers {
        Consumers {
            by_key: HashMap::from([(digest(b"k1"), 0)]),
            list: vec![Consumer {
                id: "acme".into(),
                plan: 1,
            }],
            ..Consumers::default()
        }
    }

    #[test]
    fn a_known_key_names_its_consumer() {
        let t = table();
        let who = t.resolve(Some(b"k1")).ok();
        assert_eq!(
            who.and_then(|w| w.id().map(|id| id.to_string())).as_deref(),
            Some("acme")
        );
    }

    #[test]
    fn an_unknown_key_is_unknown() {
        assert_eq!(
            table().resolve(Some(b"k2")).err(),
            Some(Unknown::UnknownKey)
        );
    }

    #[test]
    fn no_key_is_refused_unless_anonymous_requests_have_a_plan() {
        let mut t = table();
        assert_eq!(t.resolve(None).err(), Some(Unknown::MissingKey));
        t.anonymous = Some(0);
        assert_eq!(t.resolve(None).map(|w| w.plan()).ok(), Some(0));
    }
}
