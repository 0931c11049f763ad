//! What a user declares, parsed and validated once at the edge, then read by the stages:
//!
//! - [`registry`]: `datasets.toml`, the named datasets, their sources and store policies;
//! - [`pipeline`]: a `pipelines/*.toml` recipe (loader, augmentation, model, optimiser);
//! - [`training`]: its `[optimizer]`, `[schedule]` and `[training]` tables;
//! - [`model`]: the paper's Table 1 configurations as data, and the parameter layout they imply.
//!
//! Nothing here reads images or runs a network; the stages below import these types, never the
//! other way round.

pub mod model;
pub mod pipeline;
pub mod registry;
pub mod training;

use std::path::{Path, PathBuf};

/// A configuration file that could not be read, or whose TOML does not fit its schema (the
/// message is toml's: it names line, column and key).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The text of configuration file `path`; `what` says which kind in errors.
pub(crate) fn read_text(path: &Path, what: &'static str) -> Result<String, FileError> {
    std::fs::read_to_string(path).map_err(|source| FileError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// `text` parsed as TOML into `T`; `path` names the file in errors.
pub(crate) fn parse_toml<T: serde::de::DeserializeOwned>(
    text: &str,
    path: &Path,
) -> Result<T, FileError> {
    toml::from_str(text).map_err(|e| FileError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}
