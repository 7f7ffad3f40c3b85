//! A request's identity as the access log records it, for `tollgate replay`:
//! each key part a limit or the consumer lookup reads (headers, cookies,
//! query parameters, the API key) as the SHA-256 of its value, and the header
//! exemptions that matched. Values themselves never reach the log; equal
//! values have equal digests, so a replayed limit counts the same keys, and
//! the API key's digest is the one the consumer table holds.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{extract_part, Exemption, KeyError, KeyPart, KeyValue, RequestFacts};

/// What a part was recorded as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PartValue {
    /// The request carried the part twice with different values. (First:
    /// untagged variants are tried in order, and a digest takes any text.)
    Conflicting(ConflictMark),
    /// The SHA-256 of the value.
    Digest(HexDigest),
}

/// The word a conflicting part is recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictMark {
    Conflicting,
}

/// A SHA-256 as 64 lowercase hex digits, inline: replay holds one per part
/// of every request it sorts, and the digits are the key value it counts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; 64]);

impl HexDigest {
    fn of(value: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        // The consumer table's digest, so an API key's reads back as its key.
        let digest = crate::consumer::digest(value);
        let mut out = [0u8; 64];
        for (pair, byte) in out.chunks_mut(2).zip(&digest) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0xf)];
        }
        HexDigest(out)
    }

    fn as_str(&self) -> &str {
        // Only hex digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The 32 bytes written as these digits.
    fn bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(self.0.chunks(2)) {
            let digit = |d: u8| (d as char).to_digit(16).unwrap_or(0) as u8;
            *byte = digit(pair[0]) << 4 | digit(pair[1]);
        }
        out
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for HexDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for HexDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Digits;
        impl Visitor<'_> for Digits {
            type Value = HexDigest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 as 64 hex digits")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<HexDigest, E> {
                let bytes = text.as_bytes();
                if bytes.len() != 64 || !bytes.iter().all(u8::is_ascii_hexdigit) {
                    return Err(E::invalid_value(de::Unexpected::Str(text), &self));
                }
                let mut out = [0u8; 64];
                out.copy_from_slice(&text.to_ascii_lowercase().into_bytes());
                Ok(HexDigest(out))
            }
        }
        d.deserialize_str(Digits)
    }
}

/// A request's recorded identity. Parts the request did not carry are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// By the part as a config names it (`header:x-tenant`, `api_key`); a
    /// JSON object in the log, a short list here.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "as_map")]
    pub parts: Vec<(Box<str>, PartValue)>,
    /// Each header exemption that matched, as `name=pattern`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_exemptions: Vec<Box<str>>,
    /// The consumer's id and plan: fields of their own in the log line.
    #[serde(skip)]
    pub consumer: Option<Box<str>>,
    #[serde(skip)]
    pub plan: Option<Box<str>>,
}

/// `parts` as a JSON object.
mod as_map {
    use super::*;

    type Parts = Vec<(Box<str>, PartValue)>;

    pub(super) fn serialize<S: Serializer>(parts: &Parts, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(parts.iter().map(|(name, value)| (name, value)))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Parts, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Parts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of recorded parts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
                let mut parts = Vec::new();
                while let Some(entry) = map.next_entry::<Box<str>, PartValue>()? {
                    parts.push(entry);
                }
                parts.shrink_to_fit();
                Ok(parts)
            }
        }
        d.deserialize_map(Entries)
    }
}

/// Whether `part` is written as `text` (`header:x-tenant`), without
/// writing it anywhere.
fn names(part: &KeyPart, text: &str) -> bool {
    struct Compare<'a> {
        rest: &'a str,
        same: bool,
    }
    impl fmt::Write for Compare<'_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            match self.rest.strip_prefix(s) {
                Some(rest) => self.rest = rest,
                None => self.same = false,
            }
            Ok(())
        }
    }
    let mut compare = Compare {
        rest: text,
        same: true,
    };
    let _ = fmt::Write::write_fmt(&mut compare, format_args!("{part}"));
    compare.same && compare.rest.is_empty()
}

impl Recorded {
    /// Records `parts` and `exemptions` of a request (the snapshot's lists of
    /// what any rule reads; a JWT claim cannot be recorded: the log is written
    /// without the verified token).
    pub(crate) fn of(
        parts: &[KeyPart],
        exemptions: &[Exemption],
        facts: &RequestFacts<'_>,
    ) -> Self {
        let mut recorded = Recorded::default();
        for part in parts {
            let value = match extract_part(part, facts) {
                Ok(KeyValue::Text(text)) => PartValue::Digest(HexDigest::of(&text)),
                Ok(_) => continue,
                Err(kind) => match kind(part.clone()) {
                    KeyError::Missing(_) => continue,
                    KeyError::Conflicting(_) => PartValue::Conflicting(ConflictMark::Conflicting),
                },
            };
            recorded.parts.push((part.to_string().into(), value));
        }
        for exemption in exemptions {
            if let Exemption::Header { name, pattern, .. } = exemption {
                if exemption.applies(facts) {
                    recorded
                        .header_exemptions
                        .push(format!("{name}={pattern}").into());
                }
            }
        }
        recorded
    }

    fn part(&self, part: &KeyPart) -> Option<&PartValue> {
        self.parts
            .iter()
            .find(|(name, _)| names(part, name))
            .map(|(_, value)| value)
    }

    /// The part's value as replay counts it: its digest stands for it.
    pub(crate) fn value(&self, part: &KeyPart) -> Result<KeyValue<'_>, KeyError> {
        match self.part(part) {
            Some(PartValue::Digest(digest)) => Ok(KeyValue::Text(Cow::Borrowed(&digest.0))),
            Some(PartValue::Conflicting(_)) => Err(KeyError::Conflicting(part.clone())),
            None => Err(KeyError::Missing(part.clone())),
        }
    }

    /// Whether the header exemption `name=pattern` matched the request.
    pub(crate) fn exempted_by(&self, name: &str, pattern: &str) -> bool {
        self.header_exemptions
            .iter()
            .any(|e| e.split_once('=') == Some((name, pattern)))
    }

    /// The SHA-256 of the request's API key, as the consumer table holds it.
    pub(crate) fn api_key_digest(&self) -> Result<Option<[u8; 32]>, KeyError> {
        match self.part(&KeyPart::ApiKey) {
            None => Ok(None),
            Some(PartValue::Conflicting(_)) => Err(KeyError::Conflicting(KeyPart::ApiKey)),
            Some(PartValue::Digest(digest)) => Ok(Some(digest.bytes())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ApiKeySources;
    use http::{HeaderMap, HeaderName, HeaderValue};

    fn facts<'a>(headers: &'a HeaderMap, sources: &'a ApiKeySources) -> RequestFacts<'a> {
        RequestFacts {
            headers,
            query: Some("page=2"),
            client_ip: "192.0.2.1".parse().unwrap(),
            ipv6_prefix: 64,
            api_key: sources,
            consumer: None,
            token: None,
            recorded: None,
        }
    }

    fn tenant() -> KeyPart {
        KeyPart::Header(HeaderName::from_static("x-tenant"))
    }

    #[test]
    fn a_recorded_part_reads_back_as_its_digest_and_never_as_its_value() {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static("acme"));
        let sources = ApiKeySources::default();
        let recorded = Recorded::of(&[tenant()], &[], &facts(&headers, &sources));
        let line = serde_json::to_string(&recorded).unwrap();
        assert!(!line.contains("acme"), "{line}");
        let replayed = recorded.value(&tenant()).unwrap();
        assert_eq!(
            replayed,
            KeyValue::Text(Cow::Owned(
                HexDigest::of(b"acme").as_str().as_bytes().to_vec()
            ))
        );
    }

    #[test]
    fn a_part_the_request_lacked_replays_as_missing_and_a_repeated_one_as_conflicting() {
        let mut headers = HeaderMap::new();
        headers.append("x-tenant", HeaderValue::from_static("a"));
        headers.append("x-tenant", HeaderValue::from_static("b"));
        let sources = ApiKeySources::default();
        let cookie = KeyPart::Cookie("session".into());
        let recorded = Recorded::of(&[tenant(), cookie.clone()], &[], &facts(&headers, &sources));
        assert_eq!(
            recorded.value(&tenant()),
            Err(KeyError::Conflicting(tenant()))
        );
        assert_eq!(recorded.value(&cookie), Err(KeyError::Missing(cookie)));
        let back: Recorded =
            serde_json::from_str(&serde_json::to_string(&recorded).unwrap()).unwrap();
        assert_eq!(back, recorded);
    }

    #[test]
    fn the_api_key_is_recorded_as_the_digest_the_consumer_table_holds() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("free-key-1"));
        let sources = ApiKeySources::default();
        let recorded = Recorded::of(&[KeyPart::ApiKey], &[], &facts(&headers, &sources));
        assert_eq!(
            recorded.api_key_digest(),
            Ok(Some(crate::consumer::digest(b"free-key-1")))
        );
    }

    #[test]
    fn a_matching_header_exemption_is_recorded_by_name_and_pattern() {
        let mut headers = HeaderMap::new();
        headers.insert("x-internal", HeaderValue::from_static("internal-batch"));
        let exemption = Exemption::Header {
            name: HeaderName::from_static("x-internal"),
            value: globset::Glob::new("internal-*").unwrap().compile_matcher(),
            pattern: "internal-*".into(),
        };
        let sources = ApiKeySources::default();
        let recorded = Recorded::of(&[], &[exemption], &facts(&headers, &sources));
        assert!(recorded.exempted_by("x-internal", "internal-*"));
        assert!(!recorded.exempted_by("x-internal", "ops-*"));
    }
}
