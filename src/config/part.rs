//! Parts of the program beside the gateway, each configured by a top-level
//! section of the config file that the core's schema keeps opaque. The binary
//! adds them (see `app`); the core never names one. Whenever a file is loaded
//! (`check`, the start, a reload) each part parses its section out of the
//! file's text and checks it, reporting problems located like the core's own,
//! so a bad section refuses the whole file and a changed one is reported as
//! needing a restart.

use serde::de::DeserializeOwned;

use super::compile::Report;
use super::locate::SourceMap;
use crate::schema::{ConfigInput, Problem};
use crate::snapshot::PartSettings;

/// A part beside the gateway with a section of the config file.
pub(crate) trait Part: Send + Sync {
    /// The section's top-level key; it also names the part in
    /// `restart_required` and in `GET /-/config`.
    fn name(&self) -> &'static str;

    /// Parses the part's section out of `file`. A problem here is one of the
    /// file's shape and, like the core's own, stops loading.
    fn parse(&self, file: &FileText<'_>) -> Result<Box<dyn Section>, Problem>;
}

/// A part's section, parsed.
pub(crate) trait Section {
    /// Checks the section against the rest of the file, reporting problems
    /// to `report`. Returns what the part runs with, or `None` when it does
    /// not run (the section is absent or turned off, or has errors).
    fn compile(&self, input: &ConfigInput, report: &mut Report<'_, '_>) -> Option<PartSettings>;

    /// The section as read, defaults filled in and secrets redacted, for
    /// `GET /-/config` (`null` when absent).
    fn shown(&self) -> serde_json::Value;
}

/// A part's name with its parsed section.
pub(crate) type NamedSection = (&'static str, Box<dyn Section>);

/// The text of a config file being loaded, for a part to parse its section.
pub(crate) struct FileText<'a> {
    pub(super) text: &'a str,
    pub(super) source: &'a SourceMap,
    pub(super) input: Option<&'a ConfigInput>,
}

impl FileText<'_> {
    /// The file as the core parsed it; `None` when that failed, and a part
    /// is asked only whether its section has a problem earlier in the file.
    pub(crate) fn input(&self) -> Option<&ConfigInput> {
        self.input
    }

    /// Deserializes the whole file as `T` (which ignores the keys it does
    /// not own) with the core's limits, locating a shape problem like the
    /// core's own.
    pub(crate) fn deserialize<T: DeserializeOwned>(&self) -> Result<T, Problem> {
        super::parse(self.text, self.source)
    }
}
