//! Path normalization and rule matching.
//!
//! The path a rule is matched against is the path the upstream receives: one
//! canonical form, so that `%2e%2e`, `//` or `/./` can never dodge a rule that the
//! plain spelling would hit (ARCHITECTURE.md, promise 4).

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};
use http::Method;

/// Why a request target was refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request target must be an absolute path or an http(s) URL")]
    NotAbsolute,
    #[error("the path contains an invalid percent-escape")]
    BadEscape,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a control character")]
    ControlByte,
    #[error("the path climbs above the root with '..'")]
    EscapesRoot,
    #[error("the request target cannot be forwarded as written")]
    Unforwardable,
}

impl PathError {
    /// Stable machine-readable reason for JSON bodies.
    pub(crate) fn code(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "target_not_absolute",
            PathError::BadEscape => "bad_percent_escape",
            PathError::EncodedSeparator => "encoded_separator",
            PathError::Backslash => "backslash_in_path",
            PathError::ControlByte => "control_byte_in_path",
            PathError::EscapesRoot => "path_escapes_root",
            PathError::Unforwardable => "unforwardable_target",
        }
    }
}

/// A request target split into its parts, straight from the request line's
/// bytes (not from a lossy or re-parsed URI, so what is matched is what was sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target<'a> {
    /// The authority of an absolute-form target (`GET http://host/path`).
    pub(crate) authority: Option<&'a str>,
    pub(crate) path: &'a [u8],
    pub(crate) query: Option<&'a [u8]>,
}

impl<'a> Target<'a> {
    /// Origin form (`/path?query`) or absolute form with an `http`/`https`
    /// scheme. Anything else (`*`, `admin/x`, `x:/y`) is refused: upstreams
    /// disagree on what such targets mean, so they cannot be matched safely.
    pub fn parse(raw: &'a [u8]) -> Result<Self, PathError> {
        let raw = match raw.iter().position(|&b| b == b'#') {
            Some(fragment) => &raw[..fragment],
            None => raw,
        };
        let (authority, rest) = if raw.first() == Some(&b'/') {
            (None, raw)
        } else {
            let after_scheme = strip_prefix_ignore_case(raw, b"http://")
                .or_else(|| strip_prefix_ignore_case(raw, b"https://"))
                .ok_or(PathError::NotAbsolute)?;
            let end = after_scheme
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(after_scheme.len());
            let authority =
                std::str::from_utf8(&after_scheme[..end]).map_err(|_| PathError::NotAbsolute)?;
            if authority.is_empty() {
                return Err(PathError::NotAbsolute);
            }
            (Some(authority), &after_scheme[end..])
        };
        let (path, query) = match rest.iter().position(|&b| b == b'?') {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        let path: &[u8] = if path.is_empty() { b"/" } else { path };
        Ok(Target {
            authority,
            path,
            query,
        })
    }
}

fn strip_prefix_ignore_case<'a>(bytes: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let head = bytes.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &bytes[prefix.len()..])
}

/// Canonical form of a request path (without its query string):
/// percent-encoded unreserved characters are decoded, other escapes get upper-case
/// hex, bytes outside ASCII are escaped, `.` and `..` segments are resolved, and
/// runs of `/` are merged. A trailing slash is kept. Borrowed when the path is
/// already canonical, which is the common case, so normal requests do not
/// allocate here.
pub fn normalize_path(raw: &[u8]) -> Result<Cow<'_, str>, PathError> {
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    scan_bytes(raw)?;
    if is_canonical(raw) {
        // Canonical paths are ASCII, so this never falls through.
        if let Ok(text) = std::str::from_utf8(raw) {
            return Ok(Cow::Borrowed(text));
        }
    }
    let decoded = decode_unreserved(raw)?;
    Ok(Cow::Owned(resolve_segments(&decoded)?))
}

/// Rejects raw bytes that must never reach a route decision.
fn scan_bytes(bytes: &[u8]) -> Result<(), PathError> {
    for &b in bytes {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0..=0x1f | 0x7f => return Err(PathError::ControlByte),
            _ => {}
        }
    }
    Ok(())
}

/// True when normalization would not change the path: no escapes, no empty,
/// `.` or `..` segments, no non-ASCII bytes.
fn is_canonical(bytes: &[u8]) -> bool {
    if bytes.iter().any(|&b| b == b'%' || b >= 0x80) {
        return false;
    }
    let mut segments = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        if segment == b"." || segment == b".." || (segment.is_empty() && !last) {
            return false;
        }
    }
    true
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX_UPPER[usize::from(b >> 4)] as char);
    out.push(HEX_UPPER[usize::from(b & 0xf)] as char);
}

/// Decodes escapes of unreserved characters; keeps (and upper-cases) the rest.
fn decode_unreserved(bytes: &[u8]) -> Result<String, PathError> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_value);
            let lo = bytes.get(i + 2).copied().and_then(hex_value);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadEscape);
            };
            let decoded = (hi << 4) | lo;
            match decoded {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0..=0x1f | 0x7f => return Err(PathError::ControlByte),
                d if is_unreserved(d) => out.push(d as char),
                d => push_escaped(&mut out, d),
            }
            i += 3;
        } else if b >= 0x80 {
            push_escaped(&mut out, b);
            i += 1;
        } else {
            out.push(b as char);
            i += 1;
        }
    }
    Ok(out)
}

/// Resolves `.`/`..` and merges empty segments (RFC 3986 section 5.2.4, plus `//`
/// merging). A path ending in `/`, `/.` or `/..` keeps a trailing slash.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut stack: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path[1..].split('/') {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                stack.pop().ok_or(PathError::EscapesRoot)?;
                trailing_slash = true;
            }
            s => stack.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &stack {
        out.push('/');
        out.push_str(segment);
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// How a rule's path pattern was written, compiled for matching.
///
/// `*` matches within one segment and `**` any number of segments, including
/// none: `/api/**` matches `/api`, `/api/` and `/api/a/b`. A trailing slash
/// never changes which rule matches (`/events` also matches `/events/`), so it
/// cannot be used to slip past a rule into a looser one.
#[derive(Debug, Clone)]
pub struct PathPattern {
    pub(crate) source: String,
    /// Globs that together express the pattern (a trailing `/**` also matches the
    /// parent itself, which globset alone does not).
    globs: Vec<globset::Glob>,
}

impl PathPattern {
    pub fn new(source: &str) -> Result<Self, globset::Error> {
        let mut texts = vec![source.to_string()];
        if let Some(parent) = source.strip_suffix("/**") {
            texts.push(if parent.is_empty() {
                "/".into()
            } else {
                parent.to_string()
            });
            texts.push(format!("{source}/"));
        } else if let Some(bare) = source.strip_suffix('/').filter(|b| !b.is_empty()) {
            texts.push(bare.to_string());
        } else if source != "/" && source != "**" {
            texts.push(format!("{source}/"));
        }
        let globs = texts
            .iter()
            .map(|t| {
                GlobBuilder::new(t)
                    .literal_separator(true)
                    .backslash_escape(true)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PathPattern {
            source: source.to_string(),
            globs,
        })
    }

    /// True for `/**` and `**`: every path matches.
    pub(crate) fn is_catch_all(&self) -> bool {
        matches!(self.source.as_str(), "/**" | "**")
    }
}

/// A host pattern: exact or with `*` wildcards (`*.example.com`), case-insensitive.
#[derive(Debug, Clone)]
pub(crate) struct HostPattern {
    pub(crate) source: String,
    matcher: globset::GlobMatcher,
}

impl HostPattern {
    pub fn new(source: &str) -> Result<Self, globset::Error> {
        let matcher = GlobBuilder::new(source)
            .case_insensitive(true)
            .literal_separator(false)
            .build()?
            .compile_matcher();
        Ok(HostPattern {
            source: source.to_string(),
            matcher,
        })
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        self.matcher.is_match(host)
    }
}

/// Why a request's host (its `Host` header, else its target's authority)
/// was refused with 400: an upstream might read it as a host that a rule
/// would have matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HostError {
    #[error("the request names no host: send a Host header (RFC 9112 §3.2)")]
    Missing,
    #[error("the request carries more than one Host header")]
    Repeated,
    #[error("the host is longer than a DNS name may be (253 characters; 260 with a trailing dot and a port)")]
    TooLong,
    #[error("the host has an empty label (a leading dot, '..', or more than one trailing dot)")]
    EmptyLabel,
    #[error("the host has a character other than a letter, a digit, '-', '_' or '.'")]
    Character,
    #[error("the host's IPv6 literal is not an IPv6 address")]
    IpLiteral,
    #[error("the host's port is not a number from 0 to 65535")]
    Port,
}

impl HostError {
    /// Stable machine-readable reason for JSON bodies.
    pub(crate) fn code(self) -> &'static str {
        match self {
            HostError::Missing => "missing_host",
            HostError::Repeated => "repeated_host",
            HostError::TooLong => "host_too_long",
            HostError::EmptyLabel => "host_empty_label",
            HostError::Character => "host_bad_character",
            HostError::IpLiteral => "host_bad_ip_literal",
            HostError::Port => "host_bad_port",
        }
    }
}

/// A host in the one form host patterns match and the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NormalHost<'a> {
    /// ASCII lower case, without the trailing dot of a fully qualified name;
    /// an IPv6 literal in brackets, in its canonical form. No port.
    pub(crate) name: Cow<'a, str>,
    pub(crate) port: Option<u16>,
    /// The host as received already was `name[:port]`.
    verbatim: bool,
}

impl NormalHost<'_> {
    /// The `Host` the upstream must get instead of the one received, when
    /// they differ, so that it serves the host the rule was chosen for.
    pub(crate) fn rewritten(&self) -> Option<String> {
        (!self.verbatim).then(|| self.to_string())
    }
}

impl fmt::Display for NormalHost<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The longest `Host` taken: a DNS name (253), one trailing dot, a colon
/// and a five-digit port.
pub(crate) const MAX_HOST_BYTES: usize = 253 + 1 + 1 + 5;

/// The canonical form of a `Host` value (or a target's authority):
/// `API.Example.com.:8080` is `api.example.com` port 8080, `[0::1]` is
/// `[::1]`. Anything that is not a DNS-style name, an IPv4 address or a
/// bracketed IPv6 literal, with an optional port, is refused: `a..b`, two
/// trailing dots, user info, percent-escapes, bytes outside ASCII. An empty
/// value stays empty. Borrowed when nothing changes, the common case.
pub(crate) fn normalize_host(raw: &[u8]) -> Result<NormalHost<'_>, HostError> {
    // A name of 253 (RFC 1035), a dot, a colon and a port: a longer one is
    // no host, and would be logged and forwarded whole.
    if raw.len() > MAX_HOST_BYTES {
        return Err(HostError::TooLong);
    }
    let text = std::str::from_utf8(raw).map_err(|_| HostError::Character)?;
    let (name, port_text) = match text.strip_prefix('[') {
        Some(rest) => {
            let close = rest.find(']').ok_or(HostError::IpLiteral)? + 1;
            match &text[close + 1..] {
                "" => (&text[..=close], None),
                after => (
                    &text[..=close],
                    Some(after.strip_prefix(':').ok_or(HostError::IpLiteral)?),
                ),
            }
        }
        // A byte search: `split_once(':')` costs a char searcher per request.
        None => match text.bytes().position(|b| b == b':') {
            Some(colon) => (&text[..colon], Some(&text[colon + 1..])),
            None => (text, None),
        },
    };
    // RFC 3986 allows an empty port ("host:"); it means no port.
    let port = match port_text {
        None | Some("") => None,
        Some(digits) if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(digits.parse::<u16>().map_err(|_| HostError::Port)?)
        }
        Some(_) => return Err(HostError::Port),
    };
    let port_verbatim = match port_text {
        None => true,
        Some(digits) => digits.len() == 1 || !(digits.is_empty() || digits.starts_with('0')),
    };
    let normal = if text.is_empty() {
        Cow::Borrowed(text)
    } else if let Some(literal) = name.strip_prefix('[') {
        let address: std::net::Ipv6Addr = literal
            .trim_end_matches(']')
            .parse()
            .map_err(|_| HostError::IpLiteral)?;
        let canonical = format!("[{address}]");
        if canonical == name {
            Cow::Borrowed(name)
        } else {
            Cow::Owned(canonical)
        }
    } else {
        let trimmed = name.strip_suffix('.').unwrap_or(name);
        if scan_name(trimmed.as_bytes())?.has_upper_case {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    };
    let verbatim = port_verbatim && normal.as_ref() == name;
    Ok(NormalHost {
        name: normal,
        port,
        verbatim,
    })
}

/// What one pass over a DNS-style name found.
struct NameScan {
    has_upper_case: bool,
}

/// Checks a name (without its one allowed trailing dot) in one pass, as it is
/// on every request: letters, digits, `-`, `_` and `.` only (else
/// [`HostError::Character`], whatever else is wrong), and no empty label.
fn scan_name(name: &[u8]) -> Result<NameScan, HostError> {
    let mut has_upper_case = false;
    let mut empty_label = false;
    let mut label_len = 0usize;
    for &b in name {
        match b {
            b'.' => {
                empty_label |= label_len == 0;
                label_len = 0;
                continue;
            }
            b'A'..=b'Z' => has_upper_case = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            _ => return Err(HostError::Character),
        }
        label_len += 1;
    }
    if empty_label || label_len == 0 {
        return Err(HostError::EmptyLabel);
    }
    Ok(NameScan { has_upper_case })
}

/// What a rule requires of a request besides its path.
#[derive(Debug, Clone, Default)]
pub struct RouteConditions {
    /// Empty means any method.
    pub(crate) methods: Vec<Method>,
    pub(crate) host: Option<HostPattern>,
}

impl RouteConditions {
    /// `host` is the [`NormalHost::name`] of the request.
    pub(crate) fn accepts(&self, method: &Method, host: Option<&str>) -> bool {
        let method_ok = self.methods.is_empty() || self.methods.iter().any(|m| m == method);
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(pattern), Some(host)) => pattern.matches(host),
            (Some(_), None) => false,
        };
        method_ok && host_ok
    }
}

/// All rule paths compiled into one matcher; rule order is file order.
#[derive(Debug, Clone)]
pub struct RouteTable {
    set: GlobSet,
    /// For each glob in `set`, the index of the rule it belongs to.
    glob_rule: Vec<usize>,
    conditions: Vec<RouteConditions>,
}

thread_local! {
    /// Reused across requests so matching does not allocate.
    static MATCHES: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

impl RouteTable {
    pub fn new(routes: Vec<(PathPattern, RouteConditions)>) -> Result<Self, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        let mut glob_rule = Vec::new();
        let mut conditions = Vec::with_capacity(routes.len());
        for (index, (pattern, cond)) in routes.into_iter().enumerate() {
            for glob in pattern.globs {
                builder.add(glob);
                glob_rule.push(index);
            }
            conditions.push(cond);
        }
        Ok(RouteTable {
            set: builder.build()?,
            glob_rule,
            conditions,
        })
    }

    /// Every rule with a glob matching the path, whatever its conditions (for
    /// config checks: allocates).
    pub(crate) fn matching_rules(&self, path: &str) -> impl Iterator<Item = usize> + '_ {
        self.set
            .matches(path)
            .into_iter()
            .map(|glob| self.glob_rule[glob])
    }

    /// Index of the first rule (in file order) matching the normalized path,
    /// method and host name (see `normalize_host`).
    pub fn find(&self, path: &str, method: &Method, host: Option<&str>) -> Option<usize> {
        let candidate = Candidate::new(path);
        MATCHES.with(|cell| {
            let mut matches = cell.borrow_mut();
            self.set.matches_candidate_into(&candidate, &mut matches);
            let mut best: Option<usize> = None;
            for &glob in matches.iter() {
                let rule = self.glob_rule[glob];
                if best.is_some_and(|b| b <= rule) {
                    continue;
                }
                if self.conditions[rule].accepts(method, host) {
                    best = Some(rule);
                }
            }
            best
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The one-pass scan answers as the rules read one at a time do.
        #[test]
        fn scanning_a_name_agrees_with_its_rules_checked_one_by_one(
            name in "[a-zA-Z0-9._\\-:@%\u{e9} ]{0,12}"
        ) {
            let bytes = name.as_bytes();
            let expected = if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                Err(HostError::Character)
            } else if name.split('.').any(str::is_empty) {
                Err(HostError::EmptyLabel)
            } else {
                Ok(bytes.iter().any(u8::is_ascii_uppercase))
            };
            let scanned = scan_name(bytes).map(|scan| scan.has_upper_case);
            proptest::prop_assert_eq!(scanned, expected);
        }
    }

    fn norm(p: &str) -> Result<String, PathError> {
        normalize_path(p.as_bytes()).map(|c| c.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for p in ["/", "/events", "/api/v1/items/", "/a.b/c~d"] {
            assert!(
                matches!(normalize_path(p.as_bytes()), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn non_utf8_bytes_are_escaped_not_replaced() {
        assert_eq!(normalize_path(b"/a\xffb").unwrap(), "/a%FFb");
    }

    fn target(raw: &str) -> Result<Target<'_>, PathError> {
        Target::parse(raw.as_bytes())
    }

    #[test]
    fn origin_form_targets_split_path_and_query() {
        let t = target("/a/b?x=1&y").unwrap();
        assert_eq!(
            (t.authority, t.path, t.query),
            (None, &b"/a/b"[..], Some(&b"x=1&y"[..]))
        );
        assert_eq!(target("/a").unwrap().query, None);
    }

    #[test]
    fn absolute_form_targets_yield_their_authority() {
        let t = target("http://api.example.com/billing/x?y=1").unwrap();
        assert_eq!(t.authority, Some("api.example.com"));
        assert_eq!(t.path, b"/billing/x");
        assert_eq!(t.query, Some(&b"y=1"[..]));
        let bare = target("HTTPS://h:8443").unwrap();
        assert_eq!((bare.authority, bare.path), (Some("h:8443"), &b"/"[..]));
    }

    #[test]
    fn other_targets_are_refused() {
        for raw in [
            "*",
            "admin/y",
            "x:/admin",
            "?a=1",
            "ftp://h/x",
            "http:///x",
            "",
        ] {
            assert_eq!(target(raw), Err(PathError::NotAbsolute), "{raw}");
        }
    }

    #[test]
    fn fragments_are_not_part_of_the_path() {
        assert_eq!(target("/a#/../b").unwrap().path, b"/a");
    }

    #[test]
    fn double_slashes_merge() {
        assert_eq!(norm("//events"), Ok("/events".into()));
        assert_eq!(norm("/a//b///c"), Ok("/a/b/c".into()));
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(norm("/./events"), Ok("/events".into()));
        assert_eq!(norm("/a/../b"), Ok("/b".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/a/."), Ok("/a/".into()));
    }

    #[test]
    fn encoded_dots_are_decoded_then_resolved() {
        assert_eq!(norm("/admin/%2e%2e/events"), Ok("/events".into()));
        assert_eq!(norm("/%2E/x"), Ok("/x".into()));
    }

    #[test]
    fn encoded_unreserved_characters_are_decoded() {
        assert_eq!(norm("/%65vents"), Ok("/events".into()));
        assert_eq!(norm("/a%7Eb%5f"), Ok("/a~b_".into()));
    }

    #[test]
    fn other_escapes_are_kept_with_upper_case_hex() {
        assert_eq!(norm("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(norm("/a%3fb"), Ok("/a%3Fb".into()));
    }

    #[test]
    fn non_ascii_bytes_are_escaped() {
        assert_eq!(norm("/caf\u{e9}"), Ok("/caf%C3%A9".into()));
    }

    #[test]
    fn encoded_separators_are_refused() {
        assert_eq!(norm("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(norm("/a%5Cb"), Err(PathError::EncodedSeparator));
    }

    #[test]
    fn raw_backslash_is_refused() {
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn control_bytes_are_refused_raw_or_encoded() {
        assert_eq!(norm("/a%00b"), Err(PathError::ControlByte));
        assert_eq!(norm("/a%0d%0a"), Err(PathError::ControlByte));
        assert_eq!(norm("/a\tb"), Err(PathError::ControlByte));
    }

    #[test]
    fn bad_escapes_are_refused() {
        for p in ["/a%", "/a%2", "/a%zz", "/%g1"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
    }

    #[test]
    fn climbing_above_root_is_refused() {
        assert_eq!(norm("/.."), Err(PathError::EscapesRoot));
        assert_eq!(norm("/a/../../b"), Err(PathError::EscapesRoot));
        assert_eq!(norm("/%2e%2e/etc/passwd"), Err(PathError::EscapesRoot));
    }

    #[test]
    fn relative_paths_are_refused() {
        assert_eq!(norm("events"), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
    }

    fn table(patterns: &[&str]) -> RouteTable {
        RouteTable::new(
            patterns
                .iter()
                .map(|p| (PathPattern::new(p).unwrap(), RouteConditions::default()))
                .collect(),
        )
        .unwrap()
    }

    fn find(t: &RouteTable, path: &str) -> Option<usize> {
        t.find(path, &Method::GET, None)
    }

    #[test]
    fn single_star_matches_one_segment() {
        let t = table(&["/ws/*"]);
        assert_eq!(find(&t, "/ws/vehicles"), Some(0));
        assert_eq!(find(&t, "/ws/a/b"), None);
        assert_eq!(find(&t, "/ws"), None);
    }

    #[test]
    fn double_star_matches_zero_or_more_segments() {
        let t = table(&["/api/**"]);
        for p in ["/api", "/api/", "/api/a", "/api/a/b/c"] {
            assert_eq!(find(&t, p), Some(0), "{p}");
        }
        assert_eq!(find(&t, "/apix"), None);
        assert_eq!(find(&t, "/other"), None);
    }

    #[test]
    fn root_double_star_matches_everything() {
        let t = table(&["/**"]);
        for p in ["/", "/a", "/a/b/"] {
            assert_eq!(find(&t, p), Some(0), "{p}");
        }
    }

    #[test]
    fn double_star_in_the_middle_matches_zero_segments() {
        let t = table(&["/a/**/z"]);
        assert_eq!(find(&t, "/a/z"), Some(0));
        assert_eq!(find(&t, "/a/b/c/z"), Some(0));
    }

    #[test]
    fn a_trailing_slash_does_not_change_the_match() {
        let t = table(&["/events", "/ws/*", "/dir/", "/**"]);
        assert_eq!(find(&t, "/events/"), Some(0));
        assert_eq!(find(&t, "/ws/x/"), Some(1));
        assert_eq!(find(&t, "/dir"), Some(2));
        assert_eq!(find(&t, "/events/x"), Some(3));
    }

    #[test]
    fn first_matching_rule_wins_in_file_order() {
        let t = table(&["/events", "/**", "/events"]);
        assert_eq!(find(&t, "/events"), Some(0));
        assert_eq!(find(&t, "/x"), Some(1));
    }

    #[test]
    fn methods_and_host_narrow_a_rule() {
        let t = RouteTable::new(vec![
            (
                PathPattern::new("/events").unwrap(),
                RouteConditions {
                    methods: vec![Method::POST],
                    host: Some(HostPattern::new("*.example.com").unwrap()),
                },
            ),
            (PathPattern::new("/**").unwrap(), RouteConditions::default()),
        ])
        .unwrap();
        assert_eq!(
            t.find("/events", &Method::POST, Some("api.example.com")),
            Some(0)
        );
        assert_eq!(
            t.find("/events", &Method::GET, Some("api.example.com")),
            Some(1)
        );
        assert_eq!(t.find("/events", &Method::POST, Some("other.org")), Some(1));
        assert_eq!(t.find("/events", &Method::POST, None), Some(1));
    }

    fn host(raw: &str) -> Result<(String, Option<u16>), HostError> {
        normalize_host(raw.as_bytes()).map(|h| (h.name.into_owned(), h.port))
    }

    fn named(name: &str, port: Option<u16>) -> Result<(String, Option<u16>), HostError> {
        Ok((name.to_string(), port))
    }

    #[test]
    fn host_loses_one_trailing_dot() {
        assert_eq!(host("api.example.com."), named("api.example.com", None));
        assert_eq!(host("127.0.0.1."), named("127.0.0.1", None));
    }

    #[test]
    fn host_is_lower_case() {
        assert_eq!(host("API.Example.COM"), named("api.example.com", None));
    }

    #[test]
    fn host_port_is_kept_apart() {
        assert_eq!(
            host("api.example.com:8080"),
            named("api.example.com", Some(8080))
        );
        assert_eq!(
            host("API.example.com.:443"),
            named("api.example.com", Some(443))
        );
        assert_eq!(host("api.example.com:"), named("api.example.com", None));
    }

    #[test]
    fn host_ipv6_literal_is_canonical_with_its_port_apart() {
        assert_eq!(host("[::1]:8080"), named("[::1]", Some(8080)));
        assert_eq!(host("[::1]"), named("[::1]", None));
        assert_eq!(host("[0:0::ABCD]"), named("[::abcd]", None));
    }

    #[test]
    fn host_with_two_trailing_dots_is_refused() {
        assert_eq!(host("api.example.com.."), Err(HostError::EmptyLabel));
        assert_eq!(host("api..example.com"), Err(HostError::EmptyLabel));
        assert_eq!(host(".example.com"), Err(HostError::EmptyLabel));
        assert_eq!(host("."), Err(HostError::EmptyLabel));
        assert_eq!(host(":80"), Err(HostError::EmptyLabel));
    }

    #[test]
    fn host_that_is_not_a_name_or_address_is_refused() {
        assert_eq!(host("user@api.example.com"), Err(HostError::Character));
        assert_eq!(host("api%2eexample.com"), Err(HostError::Character));
        assert_eq!(host("api.example.com:http"), Err(HostError::Port));
        assert_eq!(host("api.example.com:65536"), Err(HostError::Port));
        assert_eq!(host("::1"), Err(HostError::Port));
        assert_eq!(host("[::1"), Err(HostError::IpLiteral));
        assert_eq!(host("[::1]x"), Err(HostError::IpLiteral));
        assert_eq!(host("[example.com]"), Err(HostError::IpLiteral));
        assert_eq!(
            normalize_host(b"api.example.com\xff").map(|h| h.port),
            Err(HostError::Character)
        );
    }

    #[test]
    fn host_is_rewritten_for_the_upstream_only_when_it_changed() {
        let rewritten = |raw: &str| normalize_host(raw.as_bytes()).unwrap().rewritten();
        assert_eq!(rewritten("api.example.com"), None);
        assert_eq!(rewritten("api.example.com:8080"), None);
        assert_eq!(rewritten("[::1]:8080"), None);
        assert_eq!(rewritten(""), None);
        assert_eq!(
            rewritten("API.example.com.:8080").as_deref(),
            Some("api.example.com:8080")
        );
        assert_eq!(
            rewritten("api.example.com:080").as_deref(),
            Some("api.example.com:80")
        );
        assert_eq!(
            rewritten("api.example.com:").as_deref(),
            Some("api.example.com")
        );
    }

    #[test]
    fn no_rule_means_no_match() {
        let t = table(&["/events"]);
        assert_eq!(find(&t, "/nope"), None);
    }
}
