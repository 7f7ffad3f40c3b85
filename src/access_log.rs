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

/// One request as the log tells it.
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
            AccessLogFormat::Json => serde_json::to_string(self).ok(),
            AccessLogFormat::Text => Some(self.text()),
        }
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
                    let written = self
                        .out
                        .write_all(line.as_bytes())
                        .and_then(|()| self.out.write_all(b"\n"));
                    if last_flush.elapsed() >= FLUSH_AFTER {
                        last_flush = Instant::now();
                        written.and_then(|()| self.out.flush())
                    } else {
                        written
                    }
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
