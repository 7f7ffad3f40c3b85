//! The access log: one line per request (and one per WebSocket session, at
//! its end), as JSON or a short text form, to stdout or a file.
//!
//! A request never waits for the log: its line goes into a bounded queue
//! that one thread writes out, in chunks (at most `FLUSH_AFTER` late); when
//! the queue is full the line is dropped and counted. The file is opened for appending and reopened on request
//! (SIGUSR1, after logrotate moved it). Lines carry no secrets: the path
//! without its query (where API keys may travel), the consumer's id rather
//! than its key or token.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::IntCounter;
use serde::Serialize;

use crate::identity::Recorded;
use crate::policy::AccessLogFormat;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LogTarget {
    Stdout,
    File(PathBuf),
}

/// The deciding limit of a request and what it said.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Verdict<'a> {
    pub(crate) name: &'a str,
    pub(crate) allowed: bool,
    pub(crate) remaining: u64,
}

/// One request as the log tells it. Its `Serialize` defines the JSON line:
/// the gateway writes the line with `json`, which the tests hold equal to it.
#[derive(Debug, Serialize)]
pub(crate) struct Entry<'a> {
    #[serde(serialize_with = "rfc3339")]
    pub(crate) time: SystemTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) request_id: Option<&'a str>,
    pub(crate) client_ip: IpAddr,
    pub(crate) method: &'a str,
    /// The `Host` header (or the target's authority) as received.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) host: Option<&'a str>,
    /// Normalized, without the query.
    pub(crate) path: std::borrow::Cow<'a, str>,
    pub(crate) protocol: &'static str,
    pub(crate) tls: bool,
    pub(crate) status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rule: Option<&'a str>,
    pub(crate) outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<Verdict<'a>>,
    /// The limiter clock's `now` the store decided at, to the nanosecond:
    /// what `tollgate replay` decides at again.
    #[serde(
        serialize_with = "optional_rfc3339_nanos",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) decided_at: Option<SystemTime>,
    /// Digests of the identity the rules read (JSON only; see
    /// `identity::Recorded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) identity: Option<Recorded>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) consumer: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) plan: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) server: Option<SocketAddr>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    #[serde(serialize_with = "millis")]
    pub(crate) duration_ms: Duration,
    #[serde(
        serialize_with = "optional_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) upstream_ms: Option<Duration>,
    #[serde(
        serialize_with = "optional_millis",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) limiter_ms: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<&'a str>,
    /// The line closes a WebSocket session (its duration is the session's).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) websocket: bool,
    /// What went wrong, for a request that failed after admission.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<&'a str>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

fn optional_rfc3339_nanos<S: serde::Serializer>(
    at: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.collect_str(&humantime::format_rfc3339_nanos(*at)),
        None => s.serialize_none(),
    }
}

fn as_millis(d: Duration) -> f64 {
    // Three decimals: microseconds are the log's resolution.
    (d.as_secs_f64() * 1_000_000.0).round() / 1_000.0
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(as_millis(*d))
}

fn optional_millis<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(as_millis(*d)),
        None => s.serialize_none(),
    }
}

impl Entry<'_> {
    /// The line in `format`, without its newline; `None` when the log is off.
    pub(crate) fn line(&self, format: AccessLogFormat) -> Option<String> {
        match format {
            AccessLogFormat::Off => None,
            AccessLogFormat::Json => Some(self.json()),
            AccessLogFormat::Text => Some(self.text()),
        }
    }

    /// The JSON line, written by hand: byte for byte what `Serialize` above
    /// gives (the tests hold the two equal), at about half the cost on the
    /// request's thread. serde_json escapes every key and formats times and
    /// addresses through `fmt`; here the keys are literals, and a string is
    /// copied whole unless it holds a byte to escape (BENCHMARKS.md).
    fn json(&self) -> String {
        let mut out = JsonLine(String::with_capacity(JSON_LINE_CAPACITY));
        out.0.push_str("{\"time\":\"");
        out.time(self.time, Precision::Millis);
        out.0.push('"');
        if let Some(id) = self.request_id {
            out.string_field(key!("request_id"), id);
        }
        out.key(key!("client_ip"));
        out.0.push('"');
        out.ip(self.client_ip);
        out.0.push('"');
        out.string_field(key!("method"), self.method);
        if let Some(host) = self.host {
            out.string_field(key!("host"), host);
        }
        out.string_field(key!("path"), &self.path);
        out.string_field(key!("protocol"), self.protocol);
        out.key(key!("tls"));
        out.bool(self.tls);
        out.key(key!("status"));
        out.integer(self.status);
        if let Some(rule) = self.rule {
            out.string_field(key!("rule"), rule);
        }
        out.string_field(key!("outcome"), self.outcome);
        if let Some(limit) = &self.limit {
            out.key(key!("limit"));
            out.0.push_str("{\"name\":");
            out.string(limit.name);
            out.0.push_str(",\"allowed\":");
            out.bool(limit.allowed);
            out.0.push_str(",\"remaining\":");
            out.integer(limit.remaining);
            out.0.push('}');
        }
        if let Some(at) = self.decided_at {
            out.key(key!("decided_at"));
            out.0.push('"');
            out.time(at, Precision::Nanos);
            out.0.push('"');
        }
        if let Some(identity) = &self.identity {
            // Only when rules read headers, cookies or keys: serde's.
            if let Ok(json) = serde_json::to_string(identity) {
                out.key(key!("identity"));
                out.0.push_str(&json);
            }
        }
        for (key, value) in [
            (key!("consumer"), self.consumer),
            (key!("plan"), self.plan),
            (key!("upstream"), self.upstream),
        ] {
            if let Some(value) = value {
                out.string_field(key, value);
            }
        }
        if let Some(server) = self.server {
            out.key(key!("server"));
            out.0.push('"');
            out.socket(server);
            out.0.push('"');
        }
        out.key(key!("bytes_in"));
        out.integer(self.bytes_in);
        out.key(key!("bytes_out"));
        out.integer(self.bytes_out);
        out.key(key!("duration_ms"));
        out.millis(self.duration_ms);
        if let Some(upstream) = self.upstream_ms {
            out.key(key!("upstream_ms"));
            out.millis(upstream);
        }
        if let Some(limiter) = self.limiter_ms {
            out.key(key!("limiter_ms"));
            out.millis(limiter);
        }
        if let Some(trace) = self.trace_id {
            out.string_field(key!("trace_id"), trace);
        }
        if self.websocket {
            out.key(key!("websocket"));
            out.bool(true);
        }
        if let Some(error) = self.error {
            out.string_field(key!("error"), error);
        }
        out.0.push('}');
        out.0
    }

    /// `time ip "METHOD path PROTO" status bytes_out ms rule=.. outcome=..`,
    /// then what is known of limit, consumer, upstream server and id. What a
    /// client chose (the path, a token's consumer id, a request id) is
    /// escaped: a quote, a space in a field or a line break of theirs would
    /// forge fields or whole lines.
    fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut line = format!(
            "{} {} \"{} {} {}\" {} {} {:.3}ms rule={} outcome={}",
            humantime::format_rfc3339_millis(self.time),
            self.client_ip,
            self.method,
            escaped(&self.path),
            self.protocol,
            self.status,
            self.bytes_out,
            as_millis(self.duration_ms),
            self.rule.unwrap_or("-"),
            self.outcome,
        );
        if let Some(limit) = &self.limit {
            let _ = write!(line, " limit={}", limit.name);
        }
        if let Some(consumer) = self.consumer {
            let _ = write!(line, " consumer={}", escaped(consumer));
        }
        if let Some(server) = self.server {
            let _ = write!(line, " upstream={server}");
        }
        if self.websocket {
            line.push_str(" websocket");
        }
        if let Some(id) = self.request_id {
            let _ = write!(line, " id={}", escaped(id));
        }
        line
    }
}

/// Room for a typical JSON line, so that writing one does not grow it.
const JSON_LINE_CAPACITY: usize = 512;

/// A JSON object being written; every field but the first (`time`) is
/// preceded by a comma.
struct JsonLine(String);

/// `,"name":` for a key of the line, as one literal: keys need no escaping.
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}
use key;

#[derive(Clone, Copy)]
enum Precision {
    Millis,
    Nanos,
}

impl JsonLine {
    /// `key` is `key!(name)`.
    fn key(&mut self, key: &str) {
        self.0.push_str(key);
    }

    fn string_field(&mut self, key: &str, value: &str) {
        self.key(key);
        self.string(value);
    }

    /// A JSON string, escaped as serde_json escapes: `"` and `\\`, and the
    /// control characters below 0x20 (`\\n`-style where JSON has a short
    /// form, `\\u00XX` else).
    fn string(&mut self, value: &str) {
        self.0.push('"');
        let mut rest = value;
        while let Some(at) = rest
            .bytes()
            .position(|b| b < 0x20 || b == b'"' || b == b'\\')
        {
            self.0.push_str(&rest[..at]);
            let byte = rest.as_bytes()[at];
            match byte {
                b'"' => self.0.push_str("\\\""),
                b'\\' => self.0.push_str("\\\\"),
                b'\n' => self.0.push_str("\\n"),
                b'\r' => self.0.push_str("\\r"),
                b'\t' => self.0.push_str("\\t"),
                0x08 => self.0.push_str("\\b"),
                0x0c => self.0.push_str("\\f"),
                _ => {
                    self.0.push_str("\\u00");
                    self.0.push(char::from(HEX[usize::from(byte >> 4)]));
                    self.0.push(char::from(HEX[usize::from(byte & 0xf)]));
                }
            }
            // The byte escaped is ASCII: the rest starts on a char boundary.
            rest = &rest[at + 1..];
        }
        self.0.push_str(rest);
        self.0.push('"');
    }

    fn integer(&mut self, n: impl itoa::Integer) {
        self.0.push_str(itoa::Buffer::new().format(n));
    }

    fn bool(&mut self, b: bool) {
        self.0.push_str(if b { "true" } else { "false" });
    }

    /// Milliseconds to the microsecond, as serde_json writes `as_millis`'s
    /// number: its shortest form (`3.0`, `1.5`, `0.012`), which for a whole
    /// number of microseconds is the decimal without trailing zeros.
    fn millis(&mut self, d: Duration) {
        // Rounded as `as_millis` rounds.
        let micros = (d.as_secs_f64() * 1_000_000.0).round() as u64;
        self.integer(micros / 1000);
        self.0.push('.');
        let (mut fraction, mut width) = (micros % 1000, 3);
        if fraction == 0 {
            self.0.push('0');
            return;
        }
        while fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        self.digits(fraction, width);
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push('.');
                    }
                    self.integer(octet);
                }
            }
            // Rarer, and its shortening rules are std's to keep.
            IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(self.0, "{v6}");
            }
        }
    }

    fn socket(&mut self, addr: SocketAddr) {
        match addr {
            SocketAddr::V4(v4) => {
                self.ip(IpAddr::V4(*v4.ip()));
                self.0.push(':');
                self.integer(v4.port());
            }
            SocketAddr::V6(v6) => {
                use std::fmt::Write as _;
                let _ = write!(self.0, "{v6}");
            }
        }
    }

    /// RFC 3339 in UTC, as humantime writes it (`2023-11-14T22:13:20.123Z`).
    /// A clock before 1970 or past the year 9999 (RFC 3339's four digits) is
    /// written as the nearest time the format holds.
    fn time(&mut self, at: SystemTime, precision: Precision) {
        let since_epoch = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .min(LAST_RFC3339_TIME);
        let secs = since_epoch.as_secs();
        let (year, month, day) = civil(secs / 86_400);
        self.digits(year, 4);
        self.0.push('-');
        self.digits(month, 2);
        self.0.push('-');
        self.digits(day, 2);
        self.0.push('T');
        self.digits(secs % 86_400 / 3600, 2);
        self.0.push(':');
        self.digits(secs % 3600 / 60, 2);
        self.0.push(':');
        self.digits(secs % 60, 2);
        self.0.push('.');
        let nanos = u64::from(since_epoch.subsec_nanos());
        match precision {
            Precision::Millis => self.digits(nanos / 1_000_000, 3),
            Precision::Nanos => self.digits(nanos, 9),
        }
        self.0.push('Z');
    }

    /// `n` in exactly `width` decimal digits (`n` is below 10^width).
    fn digits(&mut self, mut n: u64, width: usize) {
        let mut digits = [b'0'; 9];
        let width = width.min(digits.len());
        for digit in digits[..width].iter_mut().rev() {
            *digit += (n % 10) as u8;
            n /= 10;
        }
        self.0
            .extend(digits[..width].iter().map(|&d| char::from(d)));
    }
}

/// 9999-12-31T23:59:59.999999999Z, after 1970-01-01.
const LAST_RFC3339_TIME: Duration = Duration::new(253_402_300_799, 999_999_999);

/// The date `(year, month, day)` `days` after 1970-01-01, by Howard
/// Hinnant's `civil_from_days`.
fn civil(days: u64) -> (u64, u64, u64) {
    let shifted = days + 719_468; // days since 0000-03-01
    let era = shifted / 146_097;
    let day_of_era = shifted % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March is 0
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    (year_of_era + era * 400 + u64::from(month <= 2), month, day)
}

/// `text` as one space-free token of the text format: quotes, backslashes,
/// control characters and spaces escaped (`\"`, `\\`, `\n`, `\u{20}`).
fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if text
        .chars()
        .all(|c| !c.is_control() && !matches!(c, '"' | '\\' | ' '))
    {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            ' ' => out.push_str("\\u{20}"),
            c => out.extend(c.escape_debug()),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The writer of the log: a bounded queue and the thread that empties it.
#[derive(Debug)]
pub(crate) struct AccessLog {
    queue: SyncSender<String>,
    reopen: Arc<AtomicBool>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Opens `target` (a file: for appending, created if missing) and starts
    /// the writing thread; at most `buffer` lines wait for it.
    pub(crate) fn start(target: LogTarget, buffer: usize, dropped: IntCounter) -> io::Result<Self> {
        let mut sink = Sink::open(target)?;
        let (queue, lines) = sync_channel(buffer);
        let reopen = Arc::new(AtomicBool::new(false));
        let asked = reopen.clone();
        std::thread::Builder::new()
            .name("tollgate access log".into())
            .spawn(move || sink.run(&lines, &asked))?;
        Ok(AccessLog {
            queue,
            reopen,
            dropped,
        })
    }

    /// Queues a line; drops it (and counts it) when the queue is full.
    pub(crate) fn write(&self, line: String) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.queue.try_send(line)
        {
            self.dropped.inc();
        }
    }

    /// Reopens the file before the next line (after logrotate moved it).
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

/// Lines are written in chunks, not one by one: a flush (a write call)
/// happens when the buffer is full or the queue has been quiet this long.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// How long the writer lets lines gather after a batch; the queue
/// (`access_log.buffer` lines) must hold what comes in meanwhile.
const GATHER: Duration = Duration::from_millis(1);
const WRITE_BUFFER: usize = 64 * 1024;

struct Sink {
    target: LogTarget,
    out: io::BufWriter<Box<dyn Write + Send>>,
}

impl Sink {
    fn open(target: LogTarget) -> io::Result<Self> {
        let out = Self::writer(&target)?;
        Ok(Sink { target, out })
    }

    fn writer(target: &LogTarget) -> io::Result<io::BufWriter<Box<dyn Write + Send>>> {
        let sink: Box<dyn Write + Send> = match target {
            LogTarget::Stdout => Box::new(io::stdout()),
            LogTarget::File(path) => Box::new(append(path)?),
        };
        Ok(io::BufWriter::with_capacity(WRITE_BUFFER, sink))
    }

    fn run(&mut self, lines: &Receiver<String>, reopen: &AtomicBool) {
        let mut last_flush = Instant::now();
        loop {
            let written = match lines.recv_timeout(FLUSH_AFTER) {
                Ok(line) => {
                    if reopen.swap(false, Ordering::Relaxed) {
                        self.reopen();
                    }
                    let mut written = self.write(&line);
                    while let Ok(line) = lines.try_recv() {
                        written = written.and_then(|()| self.write(&line));
                    }
                    if last_flush.elapsed() >= FLUSH_AFTER {
                        last_flush = Instant::now();
                        written = written.and_then(|()| self.out.flush());
                    }
                    // Lines queued while this thread sleeps wake nobody:
                    // under load one wake-up writes a millisecond's lines
                    // instead of one each (two context switches a line).
                    std::thread::sleep(GATHER);
                    written
                }
                Err(RecvTimeoutError::Timeout) => {
                    last_flush = Instant::now();
                    self.out.flush()
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.out.flush();
                    return;
                }
            };
            if let Err(e) = written {
                tracing::warn!("the access log cannot be written: {e}");
            }
        }
    }

    fn write(&mut self, line: &str) -> io::Result<()> {
        self.out
            .write_all(line.as_bytes())
            .and_then(|()| self.out.write_all(b"\n"))
    }

    fn reopen(&mut self) {
        let LogTarget::File(path) = &self.target else {
            return;
        };
        let _ = self.out.flush();
        match Self::writer(&self.target) {
            Ok(out) => self.out = out,
            Err(e) => tracing::warn!(
                "cannot reopen the access log {}: {e}; writing on to the old file",
                path.display()
            ),
        }
    }
}

fn append(path: &std::path::Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Request ids: unique in this process and across restarts (a random
/// start), cheap to make.
#[derive(Debug)]
pub(crate) struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        let random = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        let prefix = match random {
            Ok(()) => u64::from_le_bytes(seed),
            // No system randomness: the start time still tells runs apart.
            Err(_) => SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        RequestIds {
            prefix,
            next: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// A new id: 32 lower-case hex digits.
    pub(crate) fn next(&self) -> [u8; 32] {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        for (i, byte) in self
            .prefix
            .to_be_bytes()
            .into_iter()
            .chain(n.to_be_bytes())
            .enumerate()
        {
            id[2 * i] = HEX[usize::from(byte >> 4)];
            id[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        id
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`),
/// when the header is well formed.
pub(crate) fn trace_id(traceparent: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let mut parts = text.split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (hex(version, 2)
        && hex(trace, 32)
        && hex(parent, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

/// Whether a client's `X-Request-Id` can be kept: short, visible ASCII.
pub(crate) fn usable_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len()) && value.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            request_id: Some("abc"),
            client_ip: IpAddr::from([192, 0, 2, 1]),
            method: "GET",
            host: Some("api.example.com"),
            path: "/v1/orders".into(),
            protocol: "HTTP/1.1",
            tls: false,
            status: 429,
            rule: Some("api"),
            outcome: "limited",
            limit: Some(Verdict {
                name: "per-ip",
                allowed: false,
                remaining: 0,
            }),
            decided_at: Some(
                SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_122_999_999),
            ),
            identity: None,
            consumer: Some("acme"),
            plan: Some("gold"),
            upstream: None,
            server: None,
            bytes_in: 0,
            bytes_out: 80,
            duration_ms: Duration::from_micros(1234),
            upstream_ms: None,
            limiter_ms: Some(Duration::from_micros(12)),
            trace_id: None,
            websocket: false,
            error: None,
        }
    }

    #[test]
    fn a_json_line_has_the_request_s_fields_and_leaves_out_what_is_unknown() {
        let line = entry().line(AccessLogFormat::Json).unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["status"], 429);
        assert_eq!(value["limit"]["name"], "per-ip");
        assert_eq!(value["duration_ms"], 1.234);
        assert_eq!(value["limiter_ms"], 0.012);
        assert!(value.get("upstream").is_none());
        assert!(value.get("websocket").is_none());
    }

    #[test]
    fn the_written_json_line_is_serde_s() {
        let line = entry().line(AccessLogFormat::Json).unwrap();
        assert_eq!(line, serde_json::to_string(&entry()).unwrap());
    }

    #[test]
    fn times_are_written_as_humantime_writes_them() {
        for secs in [
            0,
            951_782_400,     // 2000-02-29
            4_107_542_400,   // 2100-02-28 + 1: no leap day in 2100
            1_700_000_000,   // 2023-11-14T22:13:20
            253_402_300_799, // 9999-12-31T23:59:59
        ] {
            let at = SystemTime::UNIX_EPOCH + Duration::new(secs, 999_999_999);
            for (precision, reference) in [
                (
                    Precision::Millis,
                    humantime::format_rfc3339_millis(at).to_string(),
                ),
                (
                    Precision::Nanos,
                    humantime::format_rfc3339_nanos(at).to_string(),
                ),
            ] {
                let mut line = JsonLine(String::new());
                line.time(at, precision);
                assert_eq!(line.0, reference);
            }
        }
    }

    #[test]
    fn milliseconds_are_written_as_serde_json_writes_them() {
        for nanos in [
            0,
            499,
            500,
            1_000,
            10_000,
            12_345,
            1_000_000,
            1_500_000,
            999_999_499,
            3e12 as u64,
        ] {
            let d = Duration::from_nanos(nanos);
            let mut line = JsonLine(String::new());
            line.millis(d);
            assert_eq!(
                line.0,
                serde_json::to_string(&as_millis(d)).unwrap(),
                "{nanos} ns"
            );
        }
    }

    #[test]
    fn a_clock_outside_rfc_3339_is_written_as_the_nearest_time_it_holds() {
        let mut line = JsonLine(String::new());
        line.time(
            SystemTime::UNIX_EPOCH - Duration::from_secs(1),
            Precision::Millis,
        );
        line.0.push(' ');
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        line.time(far, Precision::Nanos);
        assert_eq!(
            line.0,
            "1970-01-01T00:00:00.000Z 9999-12-31T23:59:59.999999999Z"
        );
    }

    mod written_like_serde {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            // Every char, control characters and quotes included.
            proptest::collection::vec(any::<char>(), 0..12)
                .prop_map(|chars| chars.into_iter().collect())
        }

        fn time() -> impl Strategy<Value = SystemTime> {
            // Up to the end of 9999, as far as humantime writes.
            (0u64..253_402_300_800, 0u32..1_000_000_000)
                .prop_map(|(secs, nanos)| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
        }

        fn millis() -> impl Strategy<Value = Duration> {
            // Up to 115 days, to the nanosecond.
            (0u64..10_000_000_000_000_000).prop_map(Duration::from_nanos)
        }

        proptest! {
            #[test]
            fn any_entry(
                (time, decided_at, strings, optional) in (
                    time(),
                    proptest::option::of(time()),
                    proptest::collection::vec(text(), 13),
                    proptest::collection::vec(any::<bool>(), 11),
                ),
                (client_ip, server, status, bytes_in, bytes_out, remaining) in (
                    any::<IpAddr>(),
                    any::<SocketAddr>(),
                    any::<u16>(),
                    any::<u64>(),
                    any::<u64>(),
                    any::<u64>(),
                ),
                (tls, allowed, websocket, duration, upstream_ms, limiter_ms) in (
                    any::<bool>(),
                    any::<bool>(),
                    any::<bool>(),
                    millis(),
                    millis(),
                    millis(),
                ),
            ) {
                let s = |i: usize| strings[i].as_str();
                let some = |i: usize| optional[i];
                let entry = Entry {
                    time,
                    request_id: some(0).then(|| s(0)),
                    client_ip,
                    method: s(1),
                    host: some(1).then(|| s(2)),
                    path: s(3).into(),
                    protocol: "HTTP/1.1",
                    tls,
                    status,
                    rule: some(2).then(|| s(4)),
                    outcome: "allowed",
                    limit: some(3).then(|| Verdict { name: s(5), allowed, remaining }),
                    decided_at,
                    identity: None,
                    consumer: some(4).then(|| s(6)),
                    plan: some(5).then(|| s(7)),
                    upstream: some(6).then(|| s(8)),
                    server: some(7).then_some(server),
                    bytes_in,
                    bytes_out,
                    duration_ms: duration,
                    upstream_ms: some(8).then_some(upstream_ms),
                    limiter_ms: some(9).then_some(limiter_ms),
                    trace_id: some(10).then(|| s(9)),
                    websocket,
                    error: some(10).then(|| s(10)),
                };
                prop_assert_eq!(entry.json(), serde_json::to_string(&entry).unwrap());
            }
        }
    }

    #[test]
    fn a_text_line_is_one_short_line() {
        let line = entry().line(AccessLogFormat::Text).unwrap();
        assert_eq!(
            line,
            "2023-11-14T22:13:20.123Z 192.0.2.1 \"GET /v1/orders HTTP/1.1\" 429 80 1.234ms rule=api outcome=limited limit=per-ip consumer=acme id=abc"
        );
    }

    #[test]
    fn what_a_client_chose_cannot_forge_a_text_line_or_field() {
        let forged = "eve\n2026-01-01T00:00:00.000Z 10.9.9.9 \"DELETE /admin HTTP/1.1\" 200";
        let entry = Entry {
            path: "/a\"b".into(),
            consumer: Some(forged),
            request_id: Some("x y"),
            ..entry()
        };
        let line = entry.line(AccessLogFormat::Text).unwrap();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("\"GET /a\\\"b HTTP/1.1\""), "{line}");
        assert!(line.contains(" consumer=eve\\n2026"), "{line}");
        assert!(line.ends_with(" id=x\\u{20}y"), "{line}");
    }

    #[test]
    fn the_log_off_writes_nothing() {
        assert_eq!(entry().line(AccessLogFormat::Off), None);
    }

    #[test]
    fn request_ids_are_distinct_hex() {
        let ids = RequestIds::default();
        let (a, b) = (ids.next(), ids.next());
        assert_ne!(a, b);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn a_well_formed_traceparent_gives_its_trace_id() {
        let header = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(header), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(b"00-xyz-00f067aa0ba902b7-01"), None);
        let zero = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id(zero), None);
    }

    #[test]
    fn a_client_request_id_must_be_short_visible_ascii() {
        assert!(usable_request_id(b"req-42"));
        assert!(!usable_request_id(b""));
        assert!(!usable_request_id(b"a b"));
        assert!(!usable_request_id(&[b'x'; 200]));
    }

    #[test]
    fn a_reopened_file_gets_the_lines_after_the_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        let log = AccessLog::start(LogTarget::File(path.clone()), 16, dropped).unwrap();
        log.write("first".into());
        let rotated = dir.path().join("access.log.1");
        wait_for(&path, "first\n");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        log.write("second".into());
        wait_for(&path, "second\n");
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "first\n");
    }

    #[test]
    fn lines_beyond_the_buffer_are_dropped_and_counted() {
        let dropped = IntCounter::new("dropped", "dropped").unwrap();
        // A queue of one that nobody empties: the thread is not started.
        let (queue, _lines) = sync_channel(1);
        let log = AccessLog {
            queue,
            reopen: Arc::default(),
            dropped: dropped.clone(),
        };
        log.write("kept".into());
        log.write("dropped".into());
        assert_eq!(dropped.get(), 1);
    }

    fn wait_for(path: &std::path::Path, content: &str) {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::read_to_string(path).unwrap_or_default() != content {
            assert!(std::time::Instant::now() < until, "{content:?} not written");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
