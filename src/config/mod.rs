//! Loading the config file: read → parse (serde types in `schema`) → compile into
//! the runtime snapshot (`compile`), collecting every problem with its line,
//! column and YAML path. Nothing here touches a running gateway; a caller swaps
//! the result in only when it is whole.

pub(crate) mod compile;
pub(crate) mod locate;
pub(crate) mod part;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::de::DeserializeOwned;

use crate::schema::{ConfigInput, ConfigSource, Problem, Severity};
use crate::snapshot::Snapshot;
pub(crate) use locate::{Position, SourceMap};
pub(crate) use part::{FileText, NamedSection, Part, Section};

/// A config file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub(crate) file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        write!(f, "{}: {errors} error(s)", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  {}:{problem}", problem.file_or(&self.file).display())?;
        }
        Ok(())
    }
}

impl ConfigError {
    fn single(file: &Path, path: &str, message: String) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                severity: Severity::Error,
                file: None,
                path: path.to_string(),
                line: 1,
                column: 1,
                message,
            }],
        }
    }
}

/// Hex SHA-256 of config text: identifies a file version in `/-/config` and
/// lets a reload of unchanged bytes be skipped.
pub(crate) fn sha256_hex(text: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = ring::digest::digest(&ring::digest::SHA256, text);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// The largest config file read: far above 10,000 rules (about 2 MB), far
/// below what would strain memory.
pub(crate) const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// YAML nodes (scalars, sequences, mappings) a file may hold: 10,000 rules of
/// a few limits each take about 400,000.
pub(crate) const MAX_YAML_NODES: usize = 4_000_000;
/// Problem messages longer than this are cut, so a huge value in the file is
/// never echoed back whole.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Reads a config file (or a file it names: consumers, JWKS, certificates).
/// Only a regular file is read, and never past the bound: a FIFO would hold
/// the reader (and every reload after it) until something writes to it, and
/// a device such as /dev/zero, whose size reads 0, never ends.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    let cannot =
        |e: std::io::Error| ConfigError::single(path, "", format!("cannot read the file: {e}"));
    let too_big = |size: u64| {
        ConfigError::single(
            path,
            "",
            format!("the file is {size} bytes: a config file may hold at most {MAX_FILE_BYTES}"),
        )
    };
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        let what = if meta.is_dir() {
            "a directory"
        } else {
            "not a regular file (a device, FIFO or socket)"
        };
        return Err(ConfigError::single(
            path,
            "",
            format!("cannot read the file: it is {what}"),
        ));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big(meta.len()));
    }
    let mut text = String::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    // It grew while it was read.
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big(text.len() as u64));
    }
    Ok(text)
}

/// Reads, parses and compiles a config file, with the core alone: the
/// sections of parts beside the gateway are accepted unread.
pub fn load_file(path: &Path) -> Result<Snapshot, ConfigError> {
    Loader::default().load_file(path)
}

/// Parses and compiles config text with the core alone; see [`Loader::load_str`].
pub fn load_str(text: &str, file: &Path) -> Result<Snapshot, ConfigError> {
    Loader::default().load_str(text, file)
}

/// Loads config files with the parts beside the gateway that the binary adds
/// (see `part`), each reading and checking its own section.
#[derive(Default)]
pub struct Loader {
    parts: Vec<Box<dyn Part>>,
}

impl Loader {
    pub(crate) fn new(parts: Vec<Box<dyn Part>>) -> Self {
        Loader { parts }
    }

    /// Reads, parses and compiles a config file.
    pub fn load_file(&self, path: &Path) -> Result<Snapshot, ConfigError> {
        self.load_str(&read_file(path)?, path)
    }

    /// Parses and compiles config text; `file` is only used in messages. The
    /// runtime is generation 1, loaded now; a reload renumbers it. Its metric
    /// handles are unbound until it is swapped in (see `Snapshot::bind_metrics`).
    pub fn load_str(&self, text: &str, file: &Path) -> Result<Snapshot, ConfigError> {
        let refuse = |problems: Vec<Problem>| ConfigError {
            file: file.to_path_buf(),
            problems: redact_secrets(problems, text),
        };
        if is_empty_yaml(text) {
            return Err(refuse(vec![Problem {
                severity: Severity::Error,
                file: None,
                path: String::new(),
                line: 1,
                column: 1,
                message: "the file is empty (nothing but blank lines and comments): a gateway needs at least one rule".into(),
            }]));
        }
        let source = SourceMap::build(text);
        let file_text = |input| FileText {
            text,
            source: &source,
            input,
        };
        let input = match parse::<ConfigInput>(text, &source) {
            Ok(input) => input,
            Err(problem) => {
                // A shape problem stops loading; the first in the file is
                // reported, whether it is in the core's sections or a part's.
                let first = match self.parse_parts(&file_text(None)) {
                    Err(earlier) if position(&earlier) < position(&problem) => earlier,
                    _ => problem,
                };
                return Err(refuse(vec![first]));
            }
        };
        let sections = self
            .parse_parts(&file_text(Some(&input)))
            .map_err(|problem| refuse(vec![problem]))?;
        let origin = ConfigSource {
            file: file.to_path_buf(),
            sha256: sha256_hex(text.as_bytes()),
            input,
            generation: 1,
            loaded_at: SystemTime::now(),
            other_files: Vec::new(),
        };
        compile::compile(origin, &source, &sections).map_err(refuse)
    }

    /// Every part's section, or the first shape problem among them.
    fn parse_parts(&self, file: &FileText<'_>) -> Result<Vec<NamedSection>, Problem> {
        let mut sections = Vec::with_capacity(self.parts.len());
        let mut problems = Vec::new();
        for part in &self.parts {
            match part.parse(file) {
                Ok(section) => sections.push((part.name(), section)),
                Err(problem) => problems.push(problem),
            }
        }
        match problems.into_iter().min_by_key(position) {
            Some(first) => Err(first),
            None => Ok(sections),
        }
    }
}

fn position(problem: &Problem) -> (u32, u32) {
    (problem.line, problem.column)
}

/// True for text that holds no YAML node: blank lines, comments and document
/// markers only. Such a file is refused rather than read as "no rules".
fn is_empty_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

/// Cuts a message to `MAX_MESSAGE_BYTES` (at a character boundary).
pub(crate) fn shorten(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let total = message.len();
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str(&format!("… (cut: {total} bytes in all)"));
    }
    message
}

/// Secrets written in the file: the passwords of URLs (`scheme://user:pass@`,
/// a password holding `/` too, and `?pass=` / `?password=`) and the admin
/// token. Found by scanning the text, so they are known even when the YAML
/// does not parse.
fn secrets_in(text: &str) -> Vec<&str> {
    let mut secrets = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        rest = &rest[at + 3..];
        let url_end = rest
            .find(|c: char| matches!(c, ',' | ']' | '}' | '"' | '\'') || c.is_whitespace())
            .unwrap_or(rest.len());
        let url = &rest[..url_end];
        let (before_query, query) = url.split_once(['?', '#']).unwrap_or((url, ""));
        if let Some(userinfo_end) = before_query.rfind('@') {
            let userinfo = &rest[..userinfo_end];
            let password = userinfo.split_once(':').map_or(userinfo, |(_, p)| p);
            secrets.extend([userinfo, password].into_iter().filter(|s| !s.is_empty()));
        }
        secrets
            .extend(crate::limit::store::redis::query_passwords(query).filter(|s| !s.is_empty()));
    }
    for line in text.lines() {
        if let Some(value) = line.trim_start().strip_prefix("admin_token:") {
            let value = value.split(" #").next().unwrap_or_default().trim();
            let value = value.trim_matches(|c| c == '"' || c == '\'' || c == '}' || c == ',');
            if !value.is_empty() {
                secrets.push(value);
            }
        }
    }
    // Longest first, so a password inside a longer secret is not left half shown.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

/// Replaces every secret of the file in the problems' messages: they are
/// printed by `check`, logged, returned by `POST /-/reload` and kept for
/// `GET /-/config`.
fn redact_secrets(mut problems: Vec<Problem>, text: &str) -> Vec<Problem> {
    let secrets = secrets_in(text);
    for problem in &mut problems {
        for secret in &secrets {
            if problem.message.contains(secret) {
                problem.message = problem.message.replace(secret, "<redacted>");
            }
        }
        problem.message = shorten(std::mem::take(&mut problem.message));
    }
    problems
}

/// Deserializes the YAML. Its shape errors (syntax, unknown or missing fields,
/// wrong types) stop at the first one, as serde does; the YAML path is recovered
/// from the error's position.
fn parse<T: DeserializeOwned>(text: &str, source: &SourceMap) -> Result<T, Problem> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_nodes: MAX_YAML_NODES,
            max_events: 2 * MAX_YAML_NODES,
        },
    };
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|error| {
        let position = error
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| Position {
                line: l.line() as u32,
                column: l.column() as u32,
            })
            .unwrap_or(Position { line: 1, column: 1 });
        Problem {
            severity: Severity::Error,
            file: None,
            path: source.path_at(position).unwrap_or_default().to_string(),
            line: position.line,
            column: position.column,
            message: strip_location(&error.without_snippet().to_string()),
        }
    })
}

/// serde-saphyr appends " at line N column M" (we report the position
/// ourselves) and, for duplicate keys and empty values, advice meant for
/// programmers.
fn strip_location(message: &str) -> String {
    let message = message
        .rfind(" at line ")
        .map_or(message, |cut| &message[..cut]);
    let message = message
        .find(", set DuplicateKeyPolicy")
        .map_or(message, |cut| &message[..cut]);
    let message = message
        .find("; use Option<")
        .map_or(message, |cut| &message[..cut]);
    // `name:` with nothing after it.
    match message.strip_prefix("cannot deserialize null into ") {
        Some(expected) => format!("a value is missing here (expected a {expected})"),
        None => message.to_string(),
    }
}
