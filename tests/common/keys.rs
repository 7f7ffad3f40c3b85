//! Client keys for tests and benches that drive stores directly, without a
//! request. It needs nothing but tollgate, so the benches include this file
//! alone (`#[path]`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use http::HeaderMap;
use tollgate::identity::{ApiKeySources, ClientKey, KeyPart, KeySpec, RequestFacts};

/// A request from `ip` with no headers and no query.
pub fn facts_from(ip: impl Into<IpAddr>) -> RequestFacts<'static> {
    static HEADERS: OnceLock<HeaderMap> = OnceLock::new();
    static SOURCES: OnceLock<ApiKeySources> = OnceLock::new();
    RequestFacts {
        headers: HEADERS.get_or_init(HeaderMap::new),
        query: None,
        client_ip: ip.into(),
        ipv6_prefix: 64,
        api_key: SOURCES.get_or_init(ApiKeySources::default),
        consumer: None,
        token: None,
        recorded: None,
    }
}

/// The `key: ip` key of a request from `ip`.
pub fn ip_key(ip: impl Into<IpAddr>) -> ClientKey<'static> {
    KeySpec(vec![KeyPart::Ip])
        .extract(&facts_from(ip))
        .expect("a request always has a client IP")
}

/// The `key: ip` key of client number `n` (the IPv4 address `n`): as many
/// distinct clients as a test needs.
pub fn client_key(n: u32) -> ClientKey<'static> {
    ip_key(Ipv4Addr::from(n))
}
