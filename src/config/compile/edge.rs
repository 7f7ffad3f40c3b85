//! The settings of the gateway's edge: its listeners (plain, TLS, redirects),
//! the certificates it serves, and how it tells a healthy upstream server.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{bounded_duration, overlaps, parse_listen, Compiler};
use crate::access_log::LogTarget;
use crate::health::{ActiveSettings, PassiveSettings};
use crate::schema::input::{
    AccessLogInput, HealthInput, PassiveInput, ServerInput, TlsListenerInput,
};
use crate::snapshot::AccessLogSettings;
use crate::snapshot::TlsListener;
use crate::tls;

/// Every address the gateway listens on, with its YAML path, in file order.
fn listener_addresses(s: &ServerInput) -> Vec<(String, &str)> {
    let mut all: Vec<(String, &str)> = s
        .listen
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("server.listen[{i}]"), a.as_str()))
        .collect();
    for (i, t) in s.tls.iter().enumerate() {
        all.push((format!("server.tls[{i}].listen"), t.listen.as_str()));
        for (j, a) in t.redirect_from.iter().enumerate() {
            all.push((format!("server.tls[{i}].redirect_from[{j}]"), a.as_str()));
        }
    }
    all.push(("server.admin".to_string(), s.admin.as_str()));
    all
}

/// Each listen address parses, and no two listeners would take the same
/// port (Pingora would fail to bind at start, or worse, one would shadow
/// the other).
pub(super) fn check_listeners_apart(c: &mut Compiler<'_>, s: &ServerInput) {
    let mut seen: Vec<(String, SocketAddr)> = Vec::new();
    for (path, text) in listener_addresses(s) {
        let Some(addr) = c.check(path.clone(), parse_listen(text)) else {
            continue;
        };
        let clash = seen
            .iter()
            .find(|(_, a)| a.port() == addr.port() && overlaps(a.ip(), addr.ip()));
        if let Some((other, _)) = clash {
            let message = if path == "server.admin" {
                "the admin listener must not share an address with the public listener".to_string()
            } else {
                format!("{text} is also {other}: each listener needs an address of its own")
            };
            c.error(path.clone(), message);
        }
        seen.push((path, addr));
    }
}

/// The TLS listeners, with their certificates read and checked; the files
/// read are added to `other_files` (the config's version covers them, and
/// the watcher reloads when they change).
pub(super) fn compile_tls(
    c: &mut Compiler<'_>,
    s: &ServerInput,
    config_file: &Path,
    other_files: &mut Vec<(PathBuf, String)>,
) -> Vec<TlsListener> {
    let beside_config = |file: &str| config_file.parent().unwrap_or(Path::new(".")).join(file);
    let mut listeners = Vec::new();
    for (i, input) in s.tls.iter().enumerate() {
        let base = format!("server.tls[{i}]");
        if let Some(listener) = compile_listener(c, &base, input, &beside_config, other_files) {
            listeners.push(listener);
        }
    }
    listeners
}

fn compile_listener(
    c: &mut Compiler<'_>,
    base: &str,
    input: &TlsListenerInput,
    beside_config: &dyn Fn(&str) -> PathBuf,
    other_files: &mut Vec<(PathBuf, String)>,
) -> Option<TlsListener> {
    if input.certs.is_empty() {
        c.error(
            format!("{base}.certs"),
            "a TLS listener needs at least one certificate",
        );
    }
    if input.alpn.is_empty() {
        c.error(
            format!("{base}.alpn"),
            "offer at least one protocol (h2, http/1.1)",
        );
    }
    let mut certs = Vec::new();
    for (j, pair) in input.certs.iter().enumerate() {
        let path = format!("{base}.certs[{j}]");
        let cert = read_pem(
            c,
            &format!("{path}.cert"),
            &beside_config(&pair.cert),
            other_files,
        );
        let key = read_pem(
            c,
            &format!("{path}.key"),
            &beside_config(&pair.key),
            other_files,
        );
        let (Some(cert), Some(key)) = (cert, key) else {
            continue;
        };
        let loaded = tls::load_pair(cert.as_bytes(), key.as_bytes())
            .map_err(|e| format!("{} with {}: {e}", pair.cert, pair.key));
        certs.extend(c.check(path, loaded));
    }
    let addr = parse_listen(&input.listen).ok()?;
    let redirect_from = input
        .redirect_from
        .iter()
        .filter_map(|a| parse_listen(a).ok())
        .collect();
    (certs.len() == input.certs.len() && !certs.is_empty()).then(|| TlsListener {
        listen: input.listen.clone(),
        addr,
        certs,
        min_version: input.min_version,
        alpn: input.alpn.clone(),
        redirect_from,
    })
}

/// A PEM file's text, its digest recorded; a problem is reported at `path`.
fn read_pem(
    c: &mut Compiler<'_>,
    path: &str,
    file: &Path,
    other_files: &mut Vec<(PathBuf, String)>,
) -> Option<String> {
    let read = crate::config::read_file(file).map_err(|e| {
        let why = e.problems.into_iter().next().map(|p| p.message);
        format!("{}: {}", file.display(), why.unwrap_or_default())
    });
    let text = c.check(path, read)?;
    other_files.push((
        file.to_path_buf(),
        crate::config::sha256_hex(text.as_bytes()),
    ));
    Some(text)
}

const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_EJECT_FOR: Duration = Duration::from_secs(10);
/// The most results in a row a verdict may wait for.
const MAX_STREAK: u32 = 100;

/// An upstream's `health:`.
pub(super) fn compile_health(c: &mut Compiler<'_>, base: &str, h: &HealthInput) -> ActiveSettings {
    let path = h.path.clone();
    if let Some(p) = &path {
        if !p.starts_with('/') || p.parse::<http::Uri>().is_err() {
            c.error(
                format!("{base}.health.path"),
                format!("{p:?} is not a request path (it starts with /)"),
            );
        }
    }
    let interval = bounded_duration(
        c,
        &format!("{base}.health.interval"),
        h.interval.as_deref(),
        DEFAULT_CHECK_INTERVAL,
        Duration::from_millis(10)..=Duration::from_secs(3600),
    );
    let timeout = bounded_duration(
        c,
        &format!("{base}.health.timeout"),
        h.timeout.as_deref(),
        DEFAULT_CHECK_TIMEOUT,
        Duration::from_millis(1)..=Duration::from_secs(60),
    );
    let healthy = streak(c, &format!("{base}.health.healthy"), h.healthy, 2);
    let unhealthy = streak(c, &format!("{base}.health.unhealthy"), h.unhealthy, 3);
    ActiveSettings {
        path,
        interval,
        timeout,
        healthy,
        unhealthy,
    }
}

/// An upstream's `passive:`.
pub(super) fn compile_passive(
    c: &mut Compiler<'_>,
    base: &str,
    p: &PassiveInput,
) -> PassiveSettings {
    let failures = streak(c, &format!("{base}.passive.failures"), p.failures, 3);
    let eject_for = bounded_duration(
        c,
        &format!("{base}.passive.eject_for"),
        p.eject_for.as_deref(),
        DEFAULT_EJECT_FOR,
        Duration::from_millis(1)..=Duration::from_secs(3600),
    );
    PassiveSettings {
        failures,
        eject_for,
    }
}

/// Results in a row a verdict waits for: from 1 to `MAX_STREAK`.
fn streak(c: &mut Compiler<'_>, path: &str, value: Option<u32>, default: u32) -> u32 {
    let value = value.unwrap_or(default);
    if !(1..=MAX_STREAK).contains(&value) {
        c.error(path, format!("must be from 1 to {MAX_STREAK}"));
    }
    value.clamp(1, MAX_STREAK)
}

const DEFAULT_LOG_BUFFER: usize = 8192;
const MAX_LOG_BUFFER: usize = 1_000_000;

/// The `access_log:` section: a file must be in a directory that exists.
pub(super) fn compile_access_log(
    c: &mut Compiler<'_>,
    input: &AccessLogInput,
    config_file: &Path,
) -> AccessLogSettings {
    let target = match input.path.as_deref() {
        None | Some("stdout") => LogTarget::Stdout,
        Some("") => {
            c.error("access_log.path", "a file path, or `stdout`");
            LogTarget::Stdout
        }
        Some(file) => {
            let path = config_file.parent().unwrap_or(Path::new(".")).join(file);
            let dir = path.parent().unwrap_or(Path::new("."));
            if !dir.as_os_str().is_empty() && !dir.is_dir() {
                c.error(
                    "access_log.path",
                    format!("{} is not a directory", dir.display()),
                );
            } else if path.is_dir() {
                // `run` would fail opening it; `check` says so first.
                c.error(
                    "access_log.path",
                    format!("{} is a directory, not a file", path.display()),
                );
            }
            LogTarget::File(path)
        }
    };
    let buffer = input.buffer.unwrap_or(DEFAULT_LOG_BUFFER);
    if !(1..=MAX_LOG_BUFFER).contains(&buffer) {
        c.error(
            "access_log.buffer",
            format!("must be from 1 to {MAX_LOG_BUFFER} lines"),
        );
    }
    AccessLogSettings {
        format: input.format,
        target,
        buffer: buffer.clamp(1, MAX_LOG_BUFFER),
    }
}
