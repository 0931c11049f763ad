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

/// The line (1-based) where dotted `key` (`optimizer.lr`, `training.init.std`, `train.stages[2]`)
/// is written in TOML `text`, for errors found after parsing; `None` when the file does not set
/// it (a default) or the key has a form this does not follow.
pub(crate) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = doc.span();
    let mut value: Option<&DeValue> = None;
    let mut table: &DeTable = doc.get_ref();
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((n, rest)) => (n, Some(rest.trim_end_matches(']').parse::<usize>().ok()?)),
            None => (segment, None),
        };
        if let Some(DeValue::Table(t)) = value {
            table = t;
        } else if value.is_some() {
            return None;
        }
        let (_, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == name)?;
        span = v.span();
        value = Some(v.get_ref());
        if let Some(i) = index {
            let DeValue::Array(a) = v.get_ref() else {
                return None;
            };
            let item = a.get(i)?;
            span = item.span();
            value = Some(item.get_ref());
        }
    }
    Some(text[..span.start.min(text.len())].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_found_on_their_lines() {
        let text = "a = 1\n[optimizer]\n\nlr = -1\n[training]\ninit = { kind = \"normal\", std = 0 }\n[[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"flip\"\n";
        assert_eq!(super::line_of_key(text, "optimizer.lr"), Some(4));
        assert_eq!(super::line_of_key(text, "training.init.std"), Some(6));
        assert_eq!(super::line_of_key(text, "train.stages[1].kind"), Some(10));
        assert_eq!(super::line_of_key(text, "optimizer.momentum"), None);
    }
}
