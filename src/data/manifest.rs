//! The manifest of a prepared split: which shards make it up, what classes it has, how it was
//! stored and from what. Plain JSON so other tools (Python, jq) can read it without this crate.
//!
//! The manifest holds no timestamps or host names: preparing the same source with the same policy
//! gives a byte-identical manifest, whether on one machine or split over many with `--part`.
//!
//! Integrity: the manifest carries `checksum`, the SHA-256 of its canonical content (the compact
//! JSON of every other field, in declaration order, with `checksum` empty), checked whenever it is
//! read; each shard entry records the shard's size, record count and header CRC (the CRC-32C of
//! the header, index, keys and metadata, which covers every record's own CRC), checked against
//! the shard when a store is opened ([`crate::data::store::PreparedSplit::open`]).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::registry::{SourceKind, StorePolicy};
use crate::data::source::{Skipped, Split};

/// `format` value of every manifest.
pub const FORMAT: &str = "vgg-shards";
/// Current manifest version.
/// Version 2 added `checksum`, the shards' `header_crc` and the refusal of a foreign store.
pub const FORMAT_VERSION: u32 = 2;
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
    /// The shard header's CRC-32C (`header_crc`), which covers the index and so every record's
    /// CRC: the shard file this manifest was assembled from, and no other.
    pub header_crc: u32,
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
    /// `sha256:HEX` of the canonical content ([`Manifest::content_checksum`]); filled in by
    /// [`Manifest::to_json`], checked by [`Manifest::read`].
    #[serde(default)]
    pub checksum: String,
}

/// The fields read before the rest, so an older manifest is named as such.
#[derive(Deserialize)]
struct FormatOnly {
    format: String,
    format_version: u32,
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
    #[error("{path}: manifest format `{format}` version {version} is not supported (this build reads `{FORMAT}` version {FORMAT_VERSION}); re-run `vgg prepare DATASET` to rebuild the store")]
    Unsupported {
        path: PathBuf,
        format: String,
        version: u32,
    },
    #[error("{path}: manifest checksum mismatch (stored `{stored}`, content hashes to `{computed}`): the manifest was edited or damaged; re-run `vgg prepare DATASET` to rebuild it")]
    Checksum {
        path: PathBuf,
        stored: String,
        computed: String,
    },
}

impl Manifest {
    /// Reads `DIR/manifest.json` and checks its format version and its checksum.
    pub fn read(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(FILE_NAME);
        let text = fs::read_to_string(&path).map_err(|source| ManifestError::Io {
            path: path.clone(),
            source,
        })?;
        let parse = |e: serde_json::Error| ManifestError::Parse {
            path: path.clone(),
            message: e.to_string(),
        };
        let f: FormatOnly = serde_json::from_str(&text).map_err(parse)?;
        if f.format != FORMAT || f.format_version != FORMAT_VERSION {
            return Err(ManifestError::Unsupported {
                path,
                format: f.format,
                version: f.format_version,
            });
        }
        let m: Manifest = serde_json::from_str(&text).map_err(parse)?;
        let computed = m.content_checksum();
        if m.checksum != computed {
            return Err(ManifestError::Checksum {
                path,
                stored: m.checksum,
                computed,
            });
        }
        Ok(m)
    }

    /// `sha256:HEX` of the canonical content: the compact JSON of the manifest with `checksum`
    /// empty.
    pub fn content_checksum(&self) -> String {
        let mut m = self.clone();
        m.checksum.clear();
        let canonical = serde_json::to_vec(&m).expect("manifest serialises");
        let digest = Sha256::digest(&canonical);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// The JSON text as written, with its checksum filled in.
    pub fn to_json(&self) -> String {
        let mut m = self.clone();
        m.checksum = self.content_checksum();
        let mut s = serde_json::to_string_pretty(&m).expect("manifest serialises");
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
