//! Loading the config file: read → parse (serde types in `input`) → compile into
//! the runtime snapshot (`compile`), collecting every problem with its line,
//! column and YAML path. Nothing here touches a running gateway; a caller swaps
//! the result in only when it is whole.

pub mod compile;
pub mod input;
pub mod locate;
pub mod units;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::metrics::Metrics;
use crate::runtime::Runtime;
pub use input::ConfigInput;
pub use locate::{Position, SourceMap};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

/// One thing wrong (or suspicious) in a config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    /// YAML path such as `rules[1].limits[0].rate` (empty for the document).
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(
            f,
            "{}:{}: {severity}: {path}: {}",
            self.line, self.column, self.message
        )
    }
}

/// A config file that cannot be used, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
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
            write!(f, "\n  {}:{problem}", self.file.display())?;
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
                path: path.to_string(),
                line: 1,
                column: 1,
                message,
            }],
        }
    }
}

/// Where a runtime snapshot came from, for `GET /-/config` and reload diffs.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub file: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub input: ConfigInput,
    /// 1 for the config the process started with, +1 per successful reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
}

/// Hex SHA-256 of config text: identifies a file version in `/-/config` and
/// lets a reload of unchanged bytes be skipped.
pub fn sha256_hex(text: &[u8]) -> String {
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

/// Reads a config file.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(path, "", format!("cannot read the file: {e}")))
}

/// Reads, parses and compiles a config file.
pub fn load_file(path: &Path, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    load_str(&read_file(path)?, path, metrics)
}

/// Parses and compiles config text; `file` is only used in messages. The
/// runtime is generation 1, loaded now; a reload renumbers it.
pub fn load_str(text: &str, file: &Path, metrics: &Metrics) -> Result<Runtime, ConfigError> {
    let source = SourceMap::build(text);
    let input = parse(text, &source).map_err(|problem| ConfigError {
        file: file.to_path_buf(),
        problems: vec![problem],
    })?;
    let origin = ConfigSource {
        file: file.to_path_buf(),
        sha256: sha256_hex(text.as_bytes()),
        input,
        generation: 1,
        loaded_at: SystemTime::now(),
    };
    compile::compile(origin, &source, metrics).map_err(|problems| ConfigError {
        file: file.to_path_buf(),
        problems,
    })
}

/// Deserializes the YAML. Its shape errors (syntax, unknown or missing fields,
/// wrong types) stop at the first one, as serde does; the YAML path is recovered
/// from the error's position.
fn parse(text: &str, source: &SourceMap) -> Result<ConfigInput, Problem> {
    if text.trim().is_empty() {
        return Ok(ConfigInput::default());
    }
    serde_saphyr::from_str::<ConfigInput>(text).map_err(|error| {
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
            path: source.path_at(position).unwrap_or_default().to_string(),
            line: position.line,
            column: position.column,
            message: strip_location(&error.without_snippet().to_string()),
        }
    })
}

/// serde-saphyr appends " at line N column M" (we report the position
/// ourselves) and, for duplicate keys, advice meant for programmers.
fn strip_location(message: &str) -> String {
    let message = message
        .rfind(" at line ")
        .map_or(message, |cut| &message[..cut]);
    let message = message
        .find(", set DuplicateKeyPolicy")
        .map_or(message, |cut| &message[..cut]);
    message.to_string()
}
