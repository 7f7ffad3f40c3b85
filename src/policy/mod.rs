//! The policy vocabulary: the small enums and units a config file chooses
//! from, shared by the config's serde types, the compiled snapshot, the
//! limiter stores and the metrics. A leaf: it imports nothing of the crate.

pub(crate) mod units;

use serde::{Deserialize, Serialize};

/// Which rate-limit response headers to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers-10).
    #[default]
    Ietf,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
    Legacy,
    Both,
    None,
}

impl HeaderStyle {
    pub(crate) fn ietf(self) -> bool {
        matches!(self, HeaderStyle::Ietf | HeaderStyle::Both)
    }
    pub(crate) fn legacy(self) -> bool {
        matches!(self, HeaderStyle::Legacy | HeaderStyle::Both)
    }
}

/// What a limit does when the request lacks its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MissingPolicy {
    /// Answer 401 naming the missing key.
    Deny,
    /// Do not apply this limit to the request.
    Skip,
    /// Count the request against the client IP instead.
    Ip,
}

/// What a WebSocket message over its limit gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnLimit {
    /// The message is dropped and the client told, in a text frame,
    /// `{"type":"rate_limited","retry_after_ms":N}`.
    #[default]
    Drop,
    /// The connection is closed with 1008 (policy violation).
    Close,
}

/// Whether a limit denies or only reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Mode {
    #[default]
    Enforce,
    /// Count and log what would be denied, but let the request through.
    Shadow,
}

/// What a request gets when the shared store cannot decide it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let it through unlimited.
    Allow,
    /// Refuse it with 503.
    Deny,
    /// Decide with this gateway's memory store: per-gateway limits meanwhile.
    #[default]
    Local,
}

impl OnError {
    pub(crate) const ALL: [OnError; 3] = [OnError::Allow, OnError::Deny, OnError::Local];

    pub(crate) fn label(self) -> &'static str {
        match self {
            OnError::Allow => "allow",
            OnError::Deny => "deny",
            OnError::Local => "local",
        }
    }
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum TlsVersion {
    #[default]
    #[serde(rename = "1.2", alias = "tls1.2")]
    Tls12,
    #[serde(rename = "1.3", alias = "tls1.3")]
    Tls13,
}

/// An application protocol a TLS listener offers by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum Alpn {
    #[serde(rename = "h2")]
    H2,
    #[serde(rename = "http/1.1")]
    Http11,
}

/// Which loop serves HTTP/1.1 requests, WebSocket upgrades included (their
/// tunnel is tollgate's own on either); HTTP/2 always goes through
/// Pingora's proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Http1Path {
    /// Pingora's proxy and its per-request phases.
    Pingora,
    /// tollgate's own request loop on Pingora's sessions and connection pool.
    #[default]
    Fast,
}

/// How the access log writes a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AccessLogFormat {
    #[default]
    Off,
    /// One JSON object per line.
    Json,
    /// One short line per request, for people.
    Text,
}
