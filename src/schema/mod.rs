//! The config file as written: its serde shape (`input`), where a loaded
//! file came from, and the problems found in it. Below both the loader
//! (`config`) and the snapshot it compiles (`runtime`).

pub(crate) mod input;

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::Serialize;

pub use input::ConfigInput;

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
    /// The file the problem is in, when it is not the config file itself
    /// (the consumers file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// YAML path such as `rules[1].limits[0].rate` (empty for the document).
    pub path: String,
    pub line: u32,
    pub column: u32,
    pub message: String,
}

impl Problem {
    /// The file to name before the problem: its own, else `config`.
    pub fn file_or<'a>(&'a self, config: &'a std::path::Path) -> &'a std::path::Path {
        self.file.as_deref().unwrap_or(config)
    }
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

/// Where a runtime snapshot came from, for `GET /-/config` and reload diffs.
#[derive(Debug, Clone)]
pub(crate) struct ConfigSource {
    pub(crate) file: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub(crate) sha256: String,
    pub(crate) input: ConfigInput,
    /// 1 for the config the process started with, +1 per successful reload.
    pub(crate) generation: u64,
    pub(crate) loaded_at: SystemTime,
    /// The other files it names and was compiled with (consumers, JWKS),
    /// watched like it.
    pub(crate) other_files: Vec<PathBuf>,
}
