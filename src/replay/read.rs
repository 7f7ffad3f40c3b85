//! Reading access logs for replay: JSON lines from files or stdin, gzip or
//! not, each line parsed into a [`Request`] or reported with its file and
//! line number and skipped.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use serde::Deserialize;

use crate::identity::Recorded;
use crate::limit::Nanos;
use crate::metrics::Outcome;

/// A log line that could not be read, and where it was.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BadLine {
    pub file: String,
    pub line: u64,
    pub error: String,
}

/// One logged request, as replay needs it.
#[derive(Debug)]
pub(crate) struct Request {
    /// When the store decided (the log's `decided_at`), else when the request
    /// started (`time` minus `duration_ms`): replay's order and its `now`.
    pub(crate) at: Nanos,
    /// When it ended: a concurrency permit is held until then.
    pub(crate) end: Nanos,
    pub(crate) client_ip: IpAddr,
    pub(crate) method: Method,
    pub(crate) host: Option<Arc<str>>,
    pub(crate) path: Box<str>,
    pub(crate) rule: Option<Arc<str>>,
    pub(crate) outcome: Outcome,
    pub(crate) status: u16,
    /// The deciding limit's name, for a limited request.
    pub(crate) limit: Option<Arc<str>>,
    /// The recorded identity, with the consumer and plan the line names.
    pub(crate) identity: Recorded,
}

/// A line of the JSON access log (fields replay does not use are ignored).
#[derive(Deserialize)]
struct LogLine<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(borrow, default)]
    decided_at: Option<Cow<'a, str>>,
    client_ip: IpAddr,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
    outcome: Outcome,
    status: u16,
    #[serde(borrow, default)]
    limit: Option<LoggedLimit<'a>>,
    #[serde(borrow, default)]
    consumer: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    plan: Option<Cow<'a, str>>,
    duration_ms: f64,
    #[serde(default)]
    identity: Option<Recorded>,
}

#[derive(Deserialize)]
struct LoggedLimit<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// The lines read so far, with what could not be read.
#[derive(Debug, Default)]
pub(crate) struct Log {
    pub(crate) requests: Vec<Request>,
    pub(crate) bad_lines: Vec<BadLine>,
    pub(crate) bad_count: u64,
    /// Lines outside `--since`/`--until`.
    pub(crate) skipped: u64,
    /// Every identity part and header exemption some line records.
    pub(crate) seen: BTreeSet<String>,
    names: HashMap<Box<str>, Arc<str>>,
}

/// At most this many bad lines are kept for the report (all are counted).
const KEPT_BAD_LINES: usize = 20;

/// The window of `--since` and `--until`, on the limiter clock.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

impl Window {
    fn contains(&self, at: Nanos) -> bool {
        self.since.is_none_or(|s| at >= nanos(s)) && self.until.is_none_or(|u| at < nanos(u))
    }
}

/// Nanoseconds since the epoch, 0 before it, `Nanos::MAX` past what it holds.
fn nanos(at: SystemTime) -> Nanos {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| Nanos::try_from(d.as_nanos()).unwrap_or(Nanos::MAX))
}

/// 2200-01-01: later times are not a log's (and the limiter's arithmetic
/// saturates near the end of `Nanos`).
const LATEST: Nanos = 7_258_118_400 * 1_000_000_000;

impl Log {
    /// Reads every line of `path` (`-`: stdin; gzip is recognised by its
    /// magic bytes). `progress` is called every million lines.
    pub(crate) fn read_file(
        &mut self,
        path: &Path,
        window: Window,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<()> {
        let name = path.display().to_string();
        let raw: Box<dyn Read> = if path == Path::new("-") {
            Box::new(io::stdin().lock())
        } else {
            Box::new(File::open(path)?)
        };
        let mut reader = BufReader::with_capacity(1 << 16, raw);
        let gzip = reader.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        let mut reader: Box<dyn BufRead> = if gzip {
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::bufread::MultiGzDecoder::new(reader),
            ))
        } else {
            Box::new(reader)
        };
        let mut buffer = Vec::with_capacity(1024);
        let mut number = 0u64;
        loop {
            buffer.clear();
            let read = reader.read_until(b'\n', &mut buffer);
            match read {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => {
                    self.bad(&name, number + 1, format!("cannot read on: {e}"));
                    return Ok(());
                }
            }
            number += 1;
            if number.is_multiple_of(1_000_000) {
                progress(number);
            }
            let text = buffer.trim_ascii();
            if text.is_empty() {
                continue;
            }
            match self.parse(text) {
                Ok(request) if window.contains(request.at) => self.requests.push(request),
                Ok(_) => self.skipped += 1,
                Err(error) => self.bad(&name, number, error),
            }
        }
    }

    fn bad(&mut self, file: &str, line: u64, error: String) {
        self.bad_count += 1;
        if self.bad_lines.len() < KEPT_BAD_LINES {
            self.bad_lines.push(BadLine {
                file: file.to_string(),
                line,
                error,
            });
        }
    }

    fn parse(&mut self, text: &[u8]) -> Result<Request, String> {
        let line: LogLine<'_> = serde_json::from_slice(text).map_err(|e| e.to_string())?;
        let time = parse_time(&line.time).ok_or("`time` is not an RFC 3339 time before 2200")?;
        if !line.duration_ms.is_finite() || line.duration_ms < 0.0 {
            return Err("`duration_ms` is not a duration".into());
        }
        let duration = (line.duration_ms * 1_000_000.0) as Nanos;
        if duration > time {
            return Err("`duration_ms` is longer than the time since 1970".into());
        }
        let started = time - duration;
        let at = match &line.decided_at {
            Some(at) => parse_time(at).ok_or("`decided_at` is not an RFC 3339 time before 2200")?,
            None => started,
        };
        let method = Method::from_bytes(line.method.as_bytes()).map_err(|e| e.to_string())?;
        let mut identity = line.identity.unwrap_or_default();
        let names = identity.parts.iter().map(|(name, _)| name);
        for part in names.chain(&identity.header_exemptions) {
            if !self.seen.contains(&**part) {
                self.seen.insert(part.to_string());
            }
        }
        identity.consumer = line.consumer.map(|c| c.into());
        identity.plan = line.plan.map(|p| p.into());
        Ok(Request {
            at,
            end: started.saturating_add(duration).max(at),
            client_ip: line.client_ip,
            method,
            host: line.host.map(|h| self.name(&h)),
            path: line.path.into(),
            rule: line.rule.map(|r| self.name(&r)),
            outcome: line.outcome,
            status: line.status,
            limit: line.limit.map(|l| self.name(&l.name)),
            identity,
        })
    }

    /// One shared copy of each name (rules, limits, hosts repeat on every line).
    fn name(&mut self, text: &str) -> Arc<str> {
        if let Some(name) = self.names.get(text) {
            return name.clone();
        }
        let name: Arc<str> = text.into();
        self.names.insert(text.into(), name.clone());
        name
    }
}

/// An RFC 3339 time as nanoseconds since the epoch, up to [`LATEST`].
fn parse_time(text: &str) -> Option<Nanos> {
    humantime::parse_rfc3339(text)
        .ok()
        .map(nanos)
        .filter(|&at| at <= LATEST)
}

/// `--since`/`--until`: an RFC 3339 time with any offset, or a date and
/// time without zone (read as UTC).
pub fn parse_window_time(text: &str) -> Result<SystemTime, String> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(SystemTime::from(at));
    }
    humantime::parse_rfc3339_weak(text).map_err(|e| format!("{text:?}: {e}"))
}

/// A duration since the epoch as the report prints it.
pub(crate) fn format_time(at: Nanos) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(at)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_time_may_carry_any_offset() {
        let utc = parse_window_time("2026-12-03T14:47:33Z").unwrap();
        assert_eq!(parse_window_time("2026-12-03T16:47:33+02:00"), Ok(utc));
        assert_eq!(parse_window_time("2026-12-03T09:47:33-05:00"), Ok(utc));
        assert_eq!(parse_window_time("2026-12-03 14:47:33"), Ok(utc));
        assert!(parse_window_time("yesterday").is_err());
    }
}
