//! Who is asking: the client IP (ARCHITECTURE.md, promise 5), the key each limit counts
//! against, and whether an exemption lets the request skip its rule's limits.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use http::header::{HeaderName, AUTHORIZATION};
use http::HeaderMap;
use ipnet::IpNet;

use crate::consumer::jwt::Verified;

mod recorded;

pub use recorded::{ConflictMark, PartValue, Recorded};

/// `X-Forwarded-For`, as the gateway reads and writes it.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The most parts a composite key may have; keys live on the stack.
pub(crate) const MAX_KEY_PARTS: usize = 4;

/// Peers whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies(nets)
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `::ffff:a.b.c.d` is the IPv4 client `a.b.c.d`.
pub(crate) fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// How many `X-Forwarded-For` hops are examined at most. Real chains are a
/// few hops long; the cap bounds the work a huge header can cause.
const MAX_FORWARDED_HOPS: usize = 32;

/// The client's IP: the peer itself unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` (all its lines, in order, as raw bytes) is walked from
/// the right and the first hop that is not a trusted proxy wins. A client can
/// append whatever it likes on the left; it cannot change what our trusted
/// proxies appended on the right. An unparsable hop ends the walk at the proxy
/// that reported it.
pub(crate) fn client_ip<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a [u8]>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let peer = canonical_ip(peer);
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = forwarded_for
        .rev()
        .flat_map(|line| line.rsplit(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|hop| !hop.is_empty())
        .take(MAX_FORWARDED_HOPS);
    for hop in hops {
        let Some(ip) = parse_forwarded_hop(hop) else {
            return client;
        };
        client = ip;
        if !trusted.contains(ip) {
            return ip;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`.
fn parse_forwarded_hop(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?;
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return inside
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| canonical_ip(ip.into()));
    }
    let (host, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The address a client is counted under: IPv4 as is, IPv6 by its `/prefix`
/// network, since one IPv6 host usually owns a whole /64.
pub(crate) fn ip_bucket(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = match ipv6_prefix {
                0 => 0,
                p if p >= 128 => u128::MAX,
                p => u128::MAX << (128 - u32::from(p)),
            };
            IpAddr::V6(Ipv6Addr::from(bits & mask))
        }
    }
}

/// Where an API key may come from, tried in order: headers, then
/// `Authorization: Bearer`, then a query parameter.
#[derive(Debug, Clone)]
pub struct ApiKeySources {
    pub(crate) headers: Vec<HeaderName>,
    pub(crate) bearer: bool,
    pub(crate) query_param: Option<String>,
}

impl Default for ApiKeySources {
    fn default() -> Self {
        ApiKeySources {
            headers: vec![HeaderName::from_static("x-api-key")],
            bearer: true,
            query_param: None,
        }
    }
}

/// One component of a limit's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyPart {
    Ip,
    Header(HeaderName),
    ApiKey,
    /// The id of the consumer the request's API key names.
    Consumer,
    Global,
    Cookie(String),
    Query(String),
    /// A claim of the request's verified JWT, by its slot among the claims
    /// the verifier keeps.
    JwtClaim {
        name: String,
        slot: usize,
    },
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyPart::Ip => f.write_str("ip"),
            KeyPart::Header(name) => write!(f, "header:{name}"),
            KeyPart::ApiKey => f.write_str("api_key"),
            KeyPart::Consumer => f.write_str("consumer"),
            KeyPart::Global => f.write_str("global"),
            KeyPart::Cookie(name) => write!(f, "cookie:{name}"),
            KeyPart::Query(name) => write!(f, "query:{name}"),
            KeyPart::JwtClaim { name, .. } => write!(f, "jwt_claim:{name}"),
        }
    }
}

/// What a limit counts against: one part, or several for a composite key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpec(pub Vec<KeyPart>);

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

/// The request facts that keys and exemptions are computed from.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub client_ip: IpAddr,
    pub ipv6_prefix: u8,
    pub api_key: &'a ApiKeySources,
    /// The consumer's id, once its API key or token has been looked up.
    pub consumer: Option<&'a str>,
    /// The verified JWT the consumer came from.
    pub token: Option<&'a Verified>,
    /// Replay: the identity the access log recorded, read instead of the
    /// headers, cookies and query (which the log does not hold).
    pub recorded: Option<&'a Recorded>,
}

/// One extracted key component, borrowed from the request where possible.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum KeyValue<'a> {
    Ip(IpAddr),
    Text(Cow<'a, [u8]>),
    Global,
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Ip(ip) => write!(f, "{ip}"),
            KeyValue::Text(bytes) => write!(f, "{:?}", String::from_utf8_lossy(bytes)),
            KeyValue::Global => f.write_str("*"),
        }
    }
}

/// A limit's key for one request: up to `MAX_KEY_PARTS` values, no heap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey<'a> {
    parts: [Option<KeyValue<'a>>; MAX_KEY_PARTS],
}

impl<'a> ClientKey<'a> {
    pub(crate) fn values(&self) -> impl Iterator<Item = &KeyValue<'a>> {
        self.parts.iter().flatten()
    }

    /// The same key, owning its values (for limits decided after the request,
    /// such as WebSocket message limits).
    pub(crate) fn into_owned(self) -> ClientKey<'static> {
        ClientKey {
            parts: self.parts.map(|part| {
                part.map(|value| match value {
                    KeyValue::Ip(ip) => KeyValue::Ip(ip),
                    KeyValue::Text(text) => KeyValue::Text(Cow::Owned(text.into_owned())),
                    KeyValue::Global => KeyValue::Global,
                })
            }),
        }
    }

    /// The key shared by every request (`key: global`).
    pub fn global() -> ClientKey<'static> {
        ClientKey {
            parts: [Some(KeyValue::Global), None, None, None],
        }
    }

    /// The key of a lone client IP (used by `missing: ip`).
    pub(crate) fn ip(facts: &RequestFacts<'a>) -> Self {
        let mut parts = [None, None, None, None];
        parts[0] = Some(KeyValue::Ip(ip_bucket(facts.client_ip, facts.ipv6_prefix)));
        ClientKey { parts }
    }
}

#[cfg(test)]
impl ClientKey<'static> {
    /// The `key: ip` key of client number `n` (the IPv4 address `n`), for the
    /// stores' unit tests, which cannot reach `tests/common`.
    pub(crate) fn of_client(n: u32) -> Self {
        let ip = std::net::Ipv4Addr::from(n).into();
        ClientKey {
            parts: [Some(KeyValue::Ip(ip)), None, None, None],
        }
    }
}

/// The first 16 bytes of a SHA-256 of a client key's values: how the key
/// is named where the key itself must not appear (Redis key names, the admin
/// endpoints unless `admin_show_keys`). Stable across processes and gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 16]);

impl KeyDigest {
    /// Reads the 32 lowercase or uppercase hex digits `Display` writes.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(KeyDigest(bytes))
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl ClientKey<'_> {
    /// See [`KeyDigest`]. Each value is tagged (and text length-prefixed), so
    /// two different keys cannot feed the hash the same bytes.
    pub fn digest(&self) -> KeyDigest {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for value in self.values() {
            match value {
                KeyValue::Ip(ip) => {
                    ctx.update(b"i");
                    match ip {
                        IpAddr::V4(v4) => ctx.update(&v4.octets()),
                        IpAddr::V6(v6) => ctx.update(&v6.octets()),
                    }
                }
                KeyValue::Text(text) => {
                    ctx.update(b"t");
                    ctx.update(&(text.len() as u64).to_be_bytes());
                    ctx.update(text);
                }
                KeyValue::Global => ctx.update(b"g"),
            }
        }
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&ctx.finish().as_ref()[..16]);
        KeyDigest(digest)
    }
}

impl ClientKey<'static> {
    /// The key of a one-part `spec` from how `Display` shows it (an IP, a
    /// quoted text, `*`), or from the bare text: how the admin names a key.
    /// A key of several parts is named by its digest instead.
    /// An address is counted as the gateway counts clients: `::ffff:a.b.c.d`
    /// as `a.b.c.d`, IPv6 by its `/ipv6_prefix` network.
    pub fn from_shown(spec: &KeySpec, shown: &str, ipv6_prefix: u8) -> Option<Self> {
        let [part] = spec.0.as_slice() else {
            return None;
        };
        let value = match part {
            KeyPart::Ip => KeyValue::Ip(ip_bucket(canonical_ip(shown.parse().ok()?), ipv6_prefix)),
            KeyPart::Global if shown == "*" => KeyValue::Global,
            KeyPart::Global => return None,
            _ => {
                let quoted = shown
                    .strip_prefix('"')
                    .and_then(|s| s.strip_suffix('"'))
                    .filter(|inner| !inner.contains('\\'));
                let text = quoted.unwrap_or(shown);
                KeyValue::Text(Cow::Owned(text.as_bytes().to_vec()))
            }
        };
        Some(ClientKey {
            parts: [Some(value), None, None, None],
        })
    }
}

impl fmt::Display for ClientKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, value) in self.values().enumerate() {
            if i > 0 {
                f.write_str("+")?;
            }
            write!(f, "{value}")?;
        }
        Ok(())
    }
}

/// Why a limit's key could not be taken from the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The request does not carry this part.
    Missing(KeyPart),
    /// The request carries this part more than once with different values
    /// (two `x-api-key` headers, a header and a bearer token that differ, two
    /// bearer tokens, a repeated query parameter). Which one the upstream believes is unknowable,
    /// so the request is refused rather than counted against the wrong bucket.
    Conflicting(KeyPart),
}

impl KeySpec {
    /// Extracts this key from the request, or says which part is missing or
    /// ambiguous.
    pub fn extract<'a>(&self, facts: &RequestFacts<'a>) -> Result<ClientKey<'a>, KeyError> {
        let mut parts: [Option<KeyValue<'a>>; MAX_KEY_PARTS] = [None, None, None, None];
        for (slot, part) in parts.iter_mut().zip(&self.0) {
            *slot = Some(extract_part(part, facts).map_err(|kind| kind(part.clone()))?);
        }
        Ok(ClientKey { parts })
    }

    /// True when every request has this key (so `missing:` never applies).
    pub(crate) fn always_present(&self) -> bool {
        self.0
            .iter()
            .all(|p| matches!(p, KeyPart::Ip | KeyPart::Global))
    }
}

/// The error constructor for a part that cannot be extracted.
type KeyErrorKind = fn(KeyPart) -> KeyError;

fn extract_part<'a>(
    part: &KeyPart,
    facts: &RequestFacts<'a>,
) -> Result<KeyValue<'a>, KeyErrorKind> {
    if let Some(recorded) = facts.recorded {
        if !matches!(part, KeyPart::Ip | KeyPart::Global | KeyPart::Consumer) {
            return recorded.value(part).map_err(|e| match e {
                KeyError::Missing(_) => KeyError::Missing as KeyErrorKind,
                KeyError::Conflicting(_) => KeyError::Conflicting,
            });
        }
    }
    let value = match part {
        KeyPart::Ip => return Ok(KeyValue::Ip(ip_bucket(facts.client_ip, facts.ipv6_prefix))),
        KeyPart::Global => return Ok(KeyValue::Global),
        KeyPart::Header(name) => header_value(facts.headers, name)?.map(Cow::Borrowed),
        KeyPart::ApiKey => api_key(facts)?,
        KeyPart::Consumer => facts.consumer.map(|id| Cow::Borrowed(id.as_bytes())),
        KeyPart::Cookie(name) => cookie_value(facts.headers, name)?.map(Cow::Borrowed),
        KeyPart::Query(name) => query_value(facts.query, name)?,
        KeyPart::JwtClaim { slot, .. } => facts
            .token
            .and_then(|t| t.claim(*slot))
            .map(|v| Cow::Borrowed(v.as_bytes())),
    };
    value.map(KeyValue::Text).ok_or(KeyError::Missing)
}

/// Keeps one value out of several sightings, refusing disagreement.
fn agree<'a>(found: &mut Option<Cow<'a, [u8]>>, value: Cow<'a, [u8]>) -> Result<(), KeyErrorKind> {
    match found {
        Some(existing) if *existing != value => Err(KeyError::Conflicting),
        Some(_) => Ok(()),
        None => {
            *found = Some(value);
            Ok(())
        }
    }
}

/// The header's non-empty value; several lines must agree.
fn header_value<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a [u8]>, KeyErrorKind> {
    let mut found: Option<&[u8]> = None;
    for value in headers.get_all(name).iter().map(|v| v.as_bytes()) {
        if value.is_empty() {
            continue;
        }
        match found {
            Some(existing) if existing != value => return Err(KeyError::Conflicting),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The cookie's non-empty value, from every `Cookie` line; several must agree.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, KeyErrorKind> {
    let mut found: Option<&[u8]> = None;
    let pairs = headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|line| line.as_bytes().split(|&b| b == b';'));
    for pair in pairs {
        let Some(eq) = pair.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii());
        if key != name.as_bytes() || value.is_empty() {
            continue;
        }
        match found {
            Some(existing) if existing != value => return Err(KeyError::Conflicting),
            _ => found = Some(value),
        }
    }
    Ok(found)
}

/// The bearer token, when it has a JWT's shape (three base64url parts);
/// several `Authorization: Bearer` lines must agree.
pub(crate) fn bearer_jwt(headers: &HeaderMap) -> Result<Option<&str>, KeyError> {
    let mut found: Option<&[u8]> = None;
    for token in bearer_tokens(headers) {
        match found {
            Some(existing) if existing != token => {
                return Err(KeyError::Conflicting(KeyPart::ApiKey))
            }
            _ => found = Some(token),
        }
    }
    let jwt_shaped = |t: &&[u8]| {
        t.iter().filter(|&&b| b == b'.').count() == 2
            && t.iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
    };
    Ok(found
        .filter(jwt_shaped)
        .and_then(|t| std::str::from_utf8(t).ok()))
}

/// The API key from every configured source that carries one; they must agree.
pub(crate) fn request_api_key<'a>(
    facts: &RequestFacts<'a>,
) -> Result<Option<Cow<'a, [u8]>>, KeyError> {
    api_key(facts).map_err(|kind| kind(KeyPart::ApiKey))
}

fn api_key<'a>(facts: &RequestFacts<'a>) -> Result<Option<Cow<'a, [u8]>>, KeyErrorKind> {
    let sources = facts.api_key;
    let mut found = None;
    for name in &sources.headers {
        if let Some(value) = header_value(facts.headers, name)? {
            agree(&mut found, Cow::Borrowed(value))?;
        }
    }
    if sources.bearer {
        for token in bearer_tokens(facts.headers) {
            agree(&mut found, Cow::Borrowed(token))?;
        }
    }
    if let (Some(param), Some(query)) = (sources.query_param.as_deref(), facts.query) {
        for value in query_values(query, param) {
            agree(&mut found, value)?;
        }
    }
    Ok(found)
}

/// The token of every `Authorization: Bearer` line, not just the first: an
/// upstream may read another line, so they must all agree.
fn bearer_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(AUTHORIZATION)
        .iter()
        .filter_map(|value| bearer_token(value.as_bytes()))
}

fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The parameter's one value (repeats must agree).
fn query_value<'a>(
    query: Option<&'a str>,
    name: &str,
) -> Result<Option<Cow<'a, [u8]>>, KeyErrorKind> {
    let mut found = None;
    let Some(query) = query else {
        return Ok(None);
    };
    for (k, v) in query.split('&').filter_map(|pair| pair.split_once('=')) {
        if !v.is_empty() && decode_query(k).as_ref() == name.as_bytes() {
            agree(&mut found, decode_query(v))?;
        }
    }
    Ok(found)
}

/// The percent-decoded values of every non-empty `name=` parameter. Decoding
/// matters: `key=abc` and `key=%61bc` are the same key to the upstream, so they
/// must be the same bucket here.
fn query_values<'a>(query: &'a str, name: &'a str) -> impl Iterator<Item = Cow<'a, [u8]>> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(move |(k, v)| decode_query(k).as_ref() == name.as_bytes() && !v.is_empty())
        .map(|(_, v)| decode_query(v))
}

fn decode_query(text: &str) -> Cow<'_, [u8]> {
    let bytes = text.as_bytes();
    if !bytes.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(b) = hex {
                    out.push(b);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// A reason to let a request skip its rule's limits.
#[derive(Debug, Clone)]
pub(crate) enum Exemption {
    /// The client IP is in one of these networks.
    Networks(Vec<IpNet>),
    /// A header's value matches a glob (`internal-*`).
    Header {
        name: HeaderName,
        value: globset::GlobMatcher,
        pattern: String,
    },
}

impl Exemption {
    /// A header exemption needs the header present and every one of its
    /// values matching, so an extra matching line cannot exempt a request whose
    /// other line the upstream may believe.
    pub(crate) fn applies(&self, facts: &RequestFacts<'_>) -> bool {
        match self {
            Exemption::Networks(nets) => nets.iter().any(|n| n.contains(&facts.client_ip)),
            Exemption::Header { pattern, name, .. } if facts.recorded.is_some() => facts
                .recorded
                .is_some_and(|r| r.exempted_by(name.as_str(), pattern)),
            Exemption::Header { name, value, .. } => {
                let mut values = facts.headers.get_all(name).iter().peekable();
                values.peek().is_some()
                    && values.all(|v| v.to_str().is_ok_and(|v| value.is_match(v)))
            }
        }
    }
}

impl fmt::Display for Exemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exemption::Networks(nets) => {
                let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
                write!(f, "ip in [{}]", nets.join(", "))
            }
            Exemption::Header { name, pattern, .. } => {
                write!(f, "header {name} matches {pattern:?}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn lines<'a>(values: &'a [&'a str]) -> impl DoubleEndedIterator<Item = &'a [u8]> {
        values.iter().map(|v| v.as_bytes())
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_forwards() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), lines(&["1.1.1.1"]), &t),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn no_trusted_proxies_means_the_peer_is_the_client() {
        let t = TrustedProxies::default();
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&["1.1.1.1"]), &t),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn trusted_peer_yields_the_rightmost_untrusted_hop() {
        let t = trusted(&["10.0.0.0/8"]);
        let xff = ["6.6.6.6, 198.51.100.7, 10.0.0.5"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&xff), &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn several_forwarded_for_lines_read_as_one_list() {
        let t = trusted(&["10.0.0.0/8"]);
        let xff = ["6.6.6.6", "198.51.100.7", "10.0.0.5"];
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&xff), &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn all_trusted_hops_yield_the_leftmost() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&["10.1.1.1, 10.2.2.2"]), &t),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn garbage_hop_stops_at_the_proxy_that_reported_it() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&["1.2.3.4, bogus, 10.0.0.9"]), &t),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn a_non_utf8_byte_on_the_left_does_not_hide_the_client_on_the_right() {
        let t = trusted(&["10.0.0.0/8"]);
        let line: &[u8] = b"\xff, 198.51.100.7";
        assert_eq!(
            client_ip(ip("10.0.0.1"), [line].into_iter(), &t),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn only_a_bounded_number_of_hops_is_walked() {
        let t = trusted(&["10.0.0.0/8"]);
        let long = vec!["10.0.0.9"; 1000].join(", ");
        let line = format!("198.51.100.7, {long}");
        assert_eq!(
            client_ip(ip("10.0.0.1"), [line.as_bytes()].into_iter(), &t),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn hops_with_ports_parse() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&["198.51.100.7:4711"]), &t),
            ip("198.51.100.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), lines(&["[2001:db8::1]:80"]), &t),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_is_ipv4() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), lines(&["::ffff:198.51.100.7"]), &t),
            ip("198.51.100.7")
        );
        assert_eq!(canonical_ip(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_prefix() {
        assert_eq!(
            ip_bucket(ip("2001:db8:1:2:aaaa::1"), 64),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            ip_bucket(ip("2001:db8:1:2:aaaa::1"), 128),
            ip("2001:db8:1:2:aaaa::1")
        );
        assert_eq!(ip_bucket(ip("192.0.2.1"), 64), ip("192.0.2.1"));
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn facts<'a>(
        headers: &'a HeaderMap,
        query: Option<&'a str>,
        sources: &'a ApiKeySources,
    ) -> RequestFacts<'a> {
        RequestFacts {
            headers,
            query,
            client_ip: ip("192.0.2.1"),
            ipv6_prefix: 64,
            api_key: sources,
            consumer: None,
            token: None,
            recorded: None,
        }
    }

    #[test]
    fn cookie_key_reads_the_named_cookie_from_every_line() {
        let h = headers(&[("cookie", "a=1; session=abc"), ("cookie", "b=2")]);
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::Cookie("session".into())]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)).unwrap(),
            "\"abc\""
        );
    }

    #[test]
    fn two_cookies_of_one_name_that_differ_are_a_conflict() {
        let h = headers(&[("cookie", "session=abc"), ("cookie", "session=xyz")]);
        let sources = ApiKeySources::default();
        let part = KeyPart::Cookie("session".into());
        assert_eq!(
            key_text(&KeySpec(vec![part.clone()]), &facts(&h, None, &sources)),
            Err(KeyError::Conflicting(part))
        );
    }

    #[test]
    fn query_key_is_the_decoded_parameter_and_repeats_must_agree() {
        let h = HeaderMap::new();
        let sources = ApiKeySources::default();
        let part = KeyPart::Query("tenant".into());
        let spec = KeySpec(vec![part.clone()]);
        let one = facts(&h, Some("tenant=%61cme&x=1"), &sources);
        assert_eq!(key_text(&spec, &one).unwrap(), "\"acme\"");
        let two = facts(&h, Some("tenant=acme&tenant=other"), &sources);
        assert_eq!(
            key_text(&spec, &two),
            Err(KeyError::Conflicting(part.clone()))
        );
        let none = facts(&h, Some("x=1"), &sources);
        assert_eq!(key_text(&spec, &none), Err(KeyError::Missing(part)));
    }

    #[test]
    fn consumer_key_is_the_resolved_consumer_and_missing_without_one() {
        let h = HeaderMap::new();
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::Consumer]);
        let mut f = facts(&h, None, &sources);
        assert_eq!(
            key_text(&spec, &f),
            Err(KeyError::Missing(KeyPart::Consumer))
        );
        f.consumer = Some("acme");
        assert_eq!(key_text(&spec, &f).unwrap(), "\"acme\"");
    }

    fn key_text(spec: &KeySpec, f: &RequestFacts<'_>) -> Result<String, KeyError> {
        spec.extract(f).map(|k| k.to_string())
    }

    #[test]
    fn header_key_uses_the_header_value() {
        let h = headers(&[("x-tenant", "acme")]);
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::Header(HeaderName::from_static("x-tenant"))]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Ok("\"acme\"".into())
        );
    }

    #[test]
    fn empty_or_absent_header_is_missing() {
        let h = headers(&[("x-tenant", "")]);
        let sources = ApiKeySources::default();
        let part = KeyPart::Header(HeaderName::from_static("x-tenant"));
        let spec = KeySpec(vec![part.clone()]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Err(KeyError::Missing(part))
        );
    }

    #[test]
    fn api_key_comes_from_header_then_bearer_then_query() {
        let sources = ApiKeySources {
            query_param: Some("api_key".into()),
            ..ApiKeySources::default()
        };
        let spec = KeySpec(vec![KeyPart::ApiKey]);
        let h = headers(&[("x-api-key", "k1")]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Ok("\"k1\"".into())
        );
        let h = headers(&[("authorization", "bearer  b1 ")]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Ok("\"b1\"".into())
        );
        let h = headers(&[]);
        assert_eq!(
            key_text(&spec, &facts(&h, Some("x=1&api_key=q%31"), &sources)),
            Ok("\"q1\"".into())
        );
        assert_eq!(
            key_text(&spec, &facts(&h, Some("x=1"), &sources)),
            Err(KeyError::Missing(KeyPart::ApiKey))
        );
    }

    #[test]
    fn api_key_sources_that_agree_are_one_key() {
        let sources = ApiKeySources {
            query_param: Some("api_key".into()),
            ..ApiKeySources::default()
        };
        let spec = KeySpec(vec![KeyPart::ApiKey]);
        let h = headers(&[("x-api-key", "k1"), ("authorization", "Bearer k1")]);
        assert_eq!(
            key_text(&spec, &facts(&h, Some("api_key=k%31"), &sources)),
            Ok("\"k1\"".into())
        );
    }

    #[test]
    fn api_key_sources_that_disagree_are_a_conflict() {
        let sources = ApiKeySources {
            query_param: Some("api_key".into()),
            ..ApiKeySources::default()
        };
        let spec = KeySpec(vec![KeyPart::ApiKey]);
        let conflict = Err(KeyError::Conflicting(KeyPart::ApiKey));
        let h = headers(&[("x-api-key", "random"), ("authorization", "Bearer real")]);
        assert_eq!(key_text(&spec, &facts(&h, None, &sources)), conflict);
        let h = headers(&[("x-api-key", "a"), ("x-api-key", "b")]);
        assert_eq!(key_text(&spec, &facts(&h, None, &sources)), conflict);
        let h = headers(&[]);
        assert_eq!(
            key_text(
                &spec,
                &facts(&h, Some("api_key=victim&api_key=mine"), &sources)
            ),
            conflict
        );
    }

    #[test]
    fn two_bearer_tokens_that_differ_are_a_conflict() {
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::ApiKey]);
        let h = headers(&[
            ("authorization", "Bearer fresh-random"),
            ("authorization", "Bearer the-real-key"),
        ]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Err(KeyError::Conflicting(KeyPart::ApiKey))
        );
    }

    #[test]
    fn repeated_identical_bearer_tokens_are_one_key() {
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::ApiKey]);
        let h = headers(&[
            ("authorization", "Bearer k1"),
            ("authorization", "bearer k1 "),
        ]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Ok("\"k1\"".into())
        );
    }

    #[test]
    fn composite_key_joins_parts_and_needs_all_of_them() {
        let sources = ApiKeySources::default();
        let spec = KeySpec(vec![KeyPart::Ip, KeyPart::ApiKey]);
        let h = headers(&[("x-api-key", "k")]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Ok("192.0.2.1+\"k\"".into())
        );
        let h = headers(&[]);
        assert_eq!(
            key_text(&spec, &facts(&h, None, &sources)),
            Err(KeyError::Missing(KeyPart::ApiKey))
        );
    }

    #[test]
    fn cidr_exemption_matches_client_ip() {
        let h = headers(&[]);
        let sources = ApiKeySources::default();
        let f = facts(&h, None, &sources);
        assert!(Exemption::Networks(vec!["192.0.2.0/24".parse().unwrap()]).applies(&f));
        assert!(!Exemption::Networks(vec!["10.0.0.0/8".parse().unwrap()]).applies(&f));
    }

    #[test]
    fn header_exemption_matches_value_glob() {
        let sources = ApiKeySources::default();
        let exemption = Exemption::Header {
            name: HeaderName::from_static("x-api-key"),
            value: globset::Glob::new("internal-*").unwrap().compile_matcher(),
            pattern: "internal-*".into(),
        };
        let h = headers(&[("x-api-key", "internal-batch")]);
        assert!(exemption.applies(&facts(&h, None, &sources)));
        let h = headers(&[("x-api-key", "external-internal-x")]);
        assert!(!exemption.applies(&facts(&h, None, &sources)));
        let h = headers(&[("x-api-key", "internal-x"), ("x-api-key", "real-key")]);
        assert!(
            !exemption.applies(&facts(&h, None, &sources)),
            "every value must match"
        );
        let h = headers(&[]);
        assert!(!exemption.applies(&facts(&h, None, &sources)));
    }
}
