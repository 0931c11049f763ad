//! The manifest of a prepared split: which shards make it up, what classes it has, how it was
//! stored and from what. Plain JSON so other tools (Python, jq) can read it without this crate.
//!
//! The manifest holds no timestamps or host names: preparing the same source with the same policy
//! gives a byte-identical manifest, whether on one machine or split over many with `--part`.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::registry::{SourceKind, StorePolicy};
use crate::data::source::{Skipped, Split};

/// `format` value of every manifest.
pub const FORMAT: &str = "vgg-shards";
/// Current manifest version.
pub const FORMAT_VERSION: u32 = 1;
/// File name of a split's manifest.
pub const FILE_NAME: &str = "manifest.json";
/// File name of a split's skipped-file report (tab-separated: key, reason).
pub const SKIPPED_FILE: &str = "skipped.tsv";

/// Where the records came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    pub kind: SourceKind,
    pub root: String,
    pub labels_from: String,
    /// Hash of the class list and of every source file's key, size and label.
    pub fingerprint: String,
    /// Source files listed (stored + skipped).
    pub files: u64,
}

/// One class with its record count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestClass {
    pub index: u32,
    pub wnid: String,
    pub name: String,
    pub records: u64,
}

/// What happened to the stored records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversions {
    /// Source JPEG bytes kept untouched.
    pub passthrough: u64,
    /// Downscaled to the shortest-side cap.
    pub resized: u64,
    /// Decoded and encoded again (resized, converted, or `raw`).
    pub reencoded: u64,
    pub grayscale: u64,
    pub cmyk: u64,
    pub png: u64,
}

impl Conversions {
    pub fn add(&mut self, o: &Conversions) {
        self.passthrough += o.passthrough;
        self.resized += o.resized;
        self.reencoded += o.reencoded;
        self.grayscale += o.grayscale;
        self.cmyk += o.cmyk;
        self.png += o.png;
    }
}

/// One shard of the split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestShard {
    /// File name, relative to the manifest's directory.
    pub file: String,
    pub records: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Range of source-listing positions this shard was made from.
    pub source_start: u64,
    pub source_end: u64,
}

/// A prepared split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    pub tool_version: String,
    pub dataset: String,
    pub split: Split,
    pub source: SourceInfo,
    pub store: StorePolicy,
    pub records_per_shard: u32,
    pub records: u64,
    pub skipped: u64,
    /// Total size of the shard files.
    pub bytes: u64,
    pub conversions: Conversions,
    pub classes: Vec<ManifestClass>,
    pub shards: Vec<ManifestShard>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: manifest format `{format}` version {version} is not supported (this build reads `{FORMAT}` version {FORMAT_VERSION})")]
    Unsupported {
        path: PathBuf,
        format: String,
        version: u32,
    },
}

impl Manifest {
    /// Reads `DIR/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if m.format != FORMAT || m.format_version != FORMAT_VERSION {
            return Err(ManifestError::Unsupported {
                path,
                format: m.format,
                version: m.format_version,
            });
        }
        Ok(m)
    }

    /// The JSON text, as written.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("manifest serialises");
        s.push('\n');
        s
    }
}

/// Renders the skipped-file report.
pub fn skipped_tsv(skipped: &[Skipped]) -> String {
    let mut s = String::from("key\treason\n");
    for k in skipped {
        let clean = |t: &str| t.replace(['\t', '\n', '\r'], " ");
        s.push_str(&format!("{}\t{}\n", clean(&k.key), clean(&k.reason)));
    }
    s
}
