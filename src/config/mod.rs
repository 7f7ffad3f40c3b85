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

/// A compiled config and the text it came from.
#[derive(Debug)]
pub struct Loaded {
    pub runtime: Runtime,
    pub input: ConfigInput,
    pub text: String,
}

/// Reads, parses and compiles a config file.
pub fn load_file(path: &Path, metrics: &Metrics) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::single(path, "", format!("cannot read the file: {e}")))?;
    load_str(&text, path, metrics)
}

/// Parses and compiles config text; `file` is only used in messages.
pub fn load_str(text: &str, file: &Path, metrics: &Metrics) -> Result<Loaded, ConfigError> {
    let source = SourceMap::build(text);
    let input = parse(text, &source).map_err(|problem| ConfigError {
        file: file.to_path_buf(),
        problems: vec![problem],
    })?;
    let runtime = compile::compile(&input, &source, metrics).map_err(|problems| ConfigError {
        file: file.to_path_buf(),
        problems,
    })?;
    Ok(Loaded {
        runtime,
        input,
        text: text.to_string(),
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
