//! A request's identity as the access log records it, for `tollgate replay`:
//! each key part a limit or the consumer lookup reads (headers, cookies,
//! query parameters, the API key) as the SHA-256 of its value, and the header
//! exemptions that matched. Values themselves never reach the log; equal
//! values have equal digests, so a replayed limit counts the same keys, and
//! the API key's digest is the one the consumer table holds.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{extract_part, Exemption, KeyError, KeyPart, KeyValue, RequestFacts};

/// What a part was recorded as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PartValue {
    /// The request carried the part twice with different values. (First:
    /// untagged variants are tried in order, and a digest takes any text.)
    Conflicting(ConflictMark),
    /// The SHA-256 of the value, 64 hex digits.
    Digest(String),
}

/// The word a conflicting part is recorded as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictMark {
    Conflicting,
}

/// A request's recorded identity. Parts the request did not carry are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// By the part as a config names it (`header:x-tenant`, `api_key`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parts: BTreeMap<String, PartValue>,
    /// Each header exemption that matched, as `name=pattern`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_exemptions: Vec<String>,
    /// The consumer's id and plan: fields of their own in the log line.
    #[serde(skip)]
    pub consumer: Option<String>,
    #[serde(skip)]
    pub plan: Option<String>,
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
                Ok(KeyValue::Text(text)) => PartValue::Digest(hex_sha256(&text)),
                Ok(_) => continue,
                Err(kind) => match kind(part.clone()) {
                    KeyError::Missing(_) => continue,
                    KeyError::Conflicting(_) => PartValue::Conflicting(ConflictMark::Conflicting),
                },
            };
            recorded.parts.insert(part.to_string(), value);
        }
        for exemption in exemptions {
            if let Exemption::Header { name, pattern, .. } = exemption {
                if exemption.applies(facts) {
                    recorded.header_exemptions.push(format!("{name}={pattern}"));
                }
            }
        }
        recorded
    }

    /// The part's value as replay counts it: its digest stands for it.
    pub(crate) fn value(&self, part: &KeyPart) -> Result<KeyValue<'_>, KeyError> {
        match self.parts.get(&part.to_string()) {
            Some(PartValue::Digest(digest)) => Ok(KeyValue::Text(Cow::Borrowed(digest.as_bytes()))),
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
        match self.parts.get(&KeyPart::ApiKey.to_string()) {
            None => Ok(None),
            Some(PartValue::Conflicting(_)) => Err(KeyError::Conflicting(KeyPart::ApiKey)),
            Some(PartValue::Digest(hex)) => Ok(parse_hex32(hex)),
        }
    }
}

fn hex_sha256(value: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, value);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
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
            KeyValue::Text(Cow::Owned(hex_sha256(b"acme").into_bytes()))
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
