//! `datasets.toml`: the registry of named datasets, validated once when it is read.
//!
//! Every command resolves a dataset name through this file. Unknown keys and impossible values
//! are errors that name the file, the line and the key (serde + toml give the position; values
//! are checked by validating newtypes during deserialisation so they get it too). Relative paths
//! are taken relative to the directory holding the registry file, so a registry works from any
//! working directory.
//!
//! ```toml
//! [datasets.imagenet]
//! source = "imagenet"              # "imagenet" | "folder" | "synthetic"
//! root = "/data/ILSVRC2012"        # holds train/<wnid>/*.JPEG and val/
//! shards = "/fast/shards/imagenet" # default: shards/<name>
//!
//! [datasets.imagenet.store]
//! max_shortest_side = 512          # cap on the shortest side; never upscales
//! encoding = "jpeg"                # "jpeg" | "raw"
//! jpeg_quality = 90                # for re-encoded records
//! passthrough = true               # keep source JPEG bytes when already within the cap
//! shard_size = "1GiB"              # target shard size
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default registry path.
pub const DEFAULT_PATH: &str = "datasets.toml";

/// Why the registry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    File(#[from] super::FileError),
    #[error("{path}: {}dataset `{name}`{}: {message}", line.map(|l| format!("line {l}, ")).unwrap_or_default(), key.as_ref().map(|k| format!(", {k}")).unwrap_or_default())]
    Invalid {
        path: PathBuf,
        /// Where the key (or the dataset's table) is written.
        line: Option<usize>,
        name: String,
        /// The key within `[datasets.NAME]`, when one is to blame.
        key: Option<String>,
        message: String,
    },
    #[error("{path}: no dataset named `{name}` (known: {known})")]
    Unknown {
        path: PathBuf,
        name: String,
        known: String,
    },
}

/// Where a dataset's images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// ILSVRC2012 layout, with the three forms of validation labels.
    Imagenet,
    /// Any class-folder tree: `root/train/<class>/*`, `root/val/<class>/*`.
    Folder,
    /// The generated synthetic-shapes set (see [`crate::data::source::synthetic`]).
    Synthetic,
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Imagenet => "imagenet",
            SourceKind::Folder => "folder",
            SourceKind::Synthetic => "synthetic",
        })
    }
}

/// A cap on the shortest side, in pixels (at least 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct ShortSide(pub u32);

impl TryFrom<u32> for ShortSide {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        if (32..=65_535).contains(&v) {
            Ok(ShortSide(v))
        } else {
            Err(format!("shortest-side cap {v} is outside 32..=65535"))
        }
    }
}

impl From<ShortSide> for u32 {
    fn from(v: ShortSide) -> u32 {
        v.0
    }
}

/// JPEG quality, 1..=100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Quality(pub u8);

impl TryFrom<u8> for Quality {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        if (1..=100).contains(&v) {
            Ok(Quality(v))
        } else {
            Err(format!("JPEG quality {v} is outside 1..=100"))
        }
    }
}

impl From<Quality> for u8 {
    fn from(v: Quality) -> u8 {
        v.0
    }
}

/// A byte count written as an integer or as a string with a unit: "1GiB", "512MiB", "64KiB",
/// "2GB". Must be at least 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ByteSizeRepr", into = "u64")]
pub struct ByteSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum ByteSizeRepr {
    Int(u64),
    Text(String),
}

impl TryFrom<ByteSizeRepr> for ByteSize {
    type Error = String;
    fn try_from(v: ByteSizeRepr) -> Result<Self, String> {
        let n = match v {
            ByteSizeRepr::Int(n) => n,
            ByteSizeRepr::Text(s) => parse_byte_size(&s)?,
        };
        if n < 64 * 1024 {
            return Err(format!("size {n} bytes is below the 64 KiB minimum"));
        }
        Ok(ByteSize(n))
    }
}

impl From<ByteSize> for u64 {
    fn from(v: ByteSize) -> u64 {
        v.0
    }
}

/// Parses "1GiB", "512 MiB", "3GB", "4096".
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like \"1GiB\" or \"512MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    Ok((num * mult as f64).round() as u64)
}

/// How records are stored in shards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorePolicy {
    /// Cap on the shortest side; larger images are downscaled to it, smaller ones never
    /// upscaled. Default 512, the paper's largest training scale S.
    pub max_shortest_side: ShortSide,
    /// `jpeg` or `raw` (decoded RGB8: no decode cost at load time, ~10x the bytes).
    pub encoding: Encoding,
    /// Quality of re-encoded JPEG records.
    pub jpeg_quality: Quality,
    /// Keep the source bytes of an RGB or grayscale JPEG already within the cap.
    pub passthrough: bool,
    /// Target shard size.
    pub shard_size: ByteSize,
    /// Fixed number of source files per shard, instead of deriving it from `shard_size`.
    pub records_per_shard: Option<u32>,
    /// Images with more pixels are refused as decompression bombs. Default 89,478,485, the
    /// threshold Pillow warns at (ILSVRC2012's largest image has about 12 million).
    pub max_pixels: u64,
}

impl Default for StorePolicy {
    fn default() -> Self {
        StorePolicy {
            max_shortest_side: ShortSide(512),
            encoding: Encoding::Jpeg,
            jpeg_quality: Quality(90),
            passthrough: true,
            shard_size: ByteSize(1 << 30),
            records_per_shard: None,
            max_pixels: 89_478_485,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    #[serde(default)]
    datasets: BTreeMap<String, RawDataset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    source: SourceKind,
    root: Option<PathBuf>,
    shards: Option<PathBuf>,
    description: Option<String>,
    val_labels: Option<PathBuf>,
    synsets: Option<PathBuf>,
    #[serde(default)]
    store: StorePolicy,
    synthetic: Option<SyntheticSpec>,
}

/// One validated dataset entry, paths resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetSpec {
    pub name: String,
    pub source: SourceKind,
    /// Directory with `train/` and `val/` (for synthetic: where the images are generated).
    pub root: PathBuf,
    /// Output directory for shards and manifests.
    pub shards: PathBuf,
    pub description: Option<String>,
    /// ImageNet: explicit validation label file (LOC_val_solution.csv or the devkit's
    /// ILSVRC2012_validation_ground_truth.txt); found automatically when absent.
    pub val_labels: Option<PathBuf>,
    /// ImageNet: the devkit's meta.mat or a synset list (one wnid per line in ILSVRC2012_ID
    /// order), needed to read the devkit ground truth.
    pub synsets: Option<PathBuf>,
    pub store: StorePolicy,
    /// Generation settings, for synthetic sources.
    pub synthetic: Option<SyntheticSpec>,
}

/// All datasets of one registry file.
#[derive(Debug, Clone)]
pub struct Registry {
    pub path: PathBuf,
    pub datasets: BTreeMap<String, DatasetSpec>,
}

impl Registry {
    /// Reads and validates a registry file.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = super::read_text(path, "dataset registry")?;
        Self::parse(&text, path)
    }

    /// Parses registry text; `path` names the file in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, RegistryError> {
        let raw: RawRegistry = super::parse_toml(text, path)?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut datasets = BTreeMap::new();
        for (name, d) in raw.datasets {
            let invalid_at = |key: Option<&str>, message: String| RegistryError::Invalid {
                path: path.to_path_buf(),
                line: super::line_of_key(
                    text,
                    &match key {
                        Some(k) => format!("datasets.{name}.{k}"),
                        None => format!("datasets.{name}"),
                    },
                )
                .or_else(|| super::line_of_key(text, &format!("datasets.{name}"))),
                name: name.clone(),
                key: key.map(|k| format!("datasets.{name}.{k}")),
                message,
            };
            let invalid = |message: String| invalid_at(None, message);
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(invalid(
                    "names may use letters, digits, '-', '_' and '.' only".into(),
                ));
            }
            let root = match (d.source, d.root) {
                (_, Some(r)) => base.join(r),
                (SourceKind::Synthetic, None) => base.join("data").join(&name),
                (_, None) => return Err(invalid(format!("source `{}` needs `root`", d.source))),
            };
            let synthetic = match d.source {
                SourceKind::Synthetic => {
                    let spec = d.synthetic.unwrap_or_default();
                    spec.validate().map_err(|e| match &e {
                        crate::data::source::synthetic::SyntheticError::Invalid {
                            field, ..
                        } => invalid_at(Some(&format!("synthetic.{field}")), e.to_string()),
                        _ => invalid(e.to_string()),
                    })?;
                    Some(spec)
                }
                _ if d.synthetic.is_some() => {
                    return Err(invalid(
                        "a [synthetic] table is only valid with source = \"synthetic\"".into(),
                    ))
                }
                _ => None,
            };
            if d.source != SourceKind::Imagenet && (d.val_labels.is_some() || d.synsets.is_some()) {
                return Err(invalid_at(
                    Some(if d.val_labels.is_some() {
                        "val_labels"
                    } else {
                        "synsets"
                    }),
                    "`val_labels` and `synsets` apply to source = \"imagenet\" only".into(),
                ));
            }
            if d.store.records_per_shard == Some(0) {
                return Err(invalid_at(
                    Some("store.records_per_shard"),
                    "store.records_per_shard = 0: a shard holds at least one record (leave it out for the size-based default)".into(),
                ));
            }
            if d.store.max_pixels == 0 {
                return Err(invalid_at(
                    Some("store.max_pixels"),
                    "store.max_pixels = 0 would skip every image: give the largest width x height to decode (default 89478485)".into(),
                ));
            }
            let spec = DatasetSpec {
                shards: base.join(d.shards.unwrap_or_else(|| Path::new("shards").join(&name))),
                root,
                source: d.source,
                description: d.description,
                val_labels: d.val_labels.map(|p| base.join(p)),
                synsets: d.synsets.map(|p| base.join(p)),
                store: d.store,
                synthetic,
                name: name.clone(),
            };
            datasets.insert(name, spec);
        }
        Ok(Registry {
            path: path.to_path_buf(),
            datasets,
        })
    }

    /// Looks a dataset up by name.
    pub fn get(&self, name: &str) -> Result<&DatasetSpec, RegistryError> {
        self.datasets
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                path: self.path.clone(),
                name: name.to_string(),
                known: if self.datasets.is_empty() {
                    "none".into()
                } else {
                    self.datasets.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

/// How a record's bytes are encoded in the store (`[store] encoding`; the shard format's
/// codes are in [`crate::data::shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// A JPEG stream.
    Jpeg = 0,
    /// Decoded RGB8, `height * width * 3` bytes, row-major.
    Raw = 1,
}

/// How to generate the synthetic dataset (the `[synthetic]` table of a registry entry).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticSpec {
    /// Seed of every random choice.
    pub seed: u64,
    /// Number of classes, `1..=SHAPES.len()`; class `i` is shape `SHAPES[i]`.
    pub classes: usize,
    /// Training images per class.
    pub train_per_class: usize,
    /// Validation images per class.
    pub val_per_class: usize,
    /// Smallest shortest side, in pixels.
    pub min_short_side: u32,
    /// Largest shortest side, in pixels.
    pub max_short_side: u32,
    /// JPEG quality, 1..=100.
    pub jpeg_quality: u8,
    /// Paint each class's main object in its own colour (from [`CLASS_COLOURS`](crate::data::source::synthetic::CLASS_COLOURS)), so colour
    /// as well as shape tells the classes apart. Shapes alone, over random colours, are a hard
    /// problem for a small network trained for minutes (it sits at chance for thousands of
    /// steps); with the cue a narrow VGG learns the set on a CPU in minutes, which is what a
    /// demonstration of the whole chain needs.
    pub class_colours: bool,
}

impl Default for SyntheticSpec {
    fn default() -> Self {
        SyntheticSpec {
            seed: 0,
            classes: 10,
            train_per_class: 120,
            val_per_class: 30,
            min_short_side: 160,
            max_short_side: 360,
            jpeg_quality: 90,
            class_colours: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Registry, RegistryError> {
        Registry::parse(s, Path::new("/etc/vgg/datasets.toml"))
    }

    #[test]
    fn full_entry_with_defaults_and_relative_paths() {
        let r = parse(
            r#"
[datasets.imagenet]
source = "imagenet"
root = "/data/ILSVRC2012"

[datasets.imagenet.store]
shard_size = "512MiB"
encoding = "raw"

[datasets.pets]
source = "folder"
root = "pets"
shards = "/fast/pets"
"#,
        )
        .unwrap();
        let i = r.get("imagenet").unwrap();
        assert_eq!(i.root, Path::new("/data/ILSVRC2012"));
        assert_eq!(i.shards, Path::new("/etc/vgg/shards/imagenet"));
        assert_eq!(i.store.shard_size, ByteSize(512 << 20));
        assert_eq!(i.store.encoding, Encoding::Raw);
        assert_eq!(i.store.max_shortest_side, ShortSide(512));
        assert!(i.store.passthrough);
        let p = r.get("pets").unwrap();
        assert_eq!(p.root, Path::new("/etc/vgg/pets"));
        assert_eq!(p.shards, Path::new("/fast/pets"));
        assert!(matches!(r.get("nope"), Err(RegistryError::Unknown { .. })));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[datasets.x]\nsource = \"folder\"\nroot = \"r\"\nshard = \"typo\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("datasets.toml"), "{e}");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("shard"), "{e}");
    }

    #[test]
    fn impossible_values_are_named_with_their_line() {
        let e = parse("[datasets.x]\nsource = \"folder\"\nroot = \"r\"\n[datasets.x.store]\njpeg_quality = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("quality"), "{e}");
        for bad in ["records_per_shard = 0", "max_pixels = 0"] {
            let e = parse(&format!(
                "[datasets.x]\nsource = \"folder\"\nroot = \"r\"\n[datasets.x.store]\n{bad}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(e.contains(bad.split(' ').next().unwrap()), "{e}");
            // Checks made after parsing name the line and the key too.
            let key = format!("datasets.x.store.{}", bad.split(' ').next().unwrap());
            assert!(e.contains(&format!("line 5, dataset `x`, {key}")), "{e}");
        }
        let e =
            parse("[datasets.x]\nsource = \"synthetic\"\n[datasets.x.synthetic]\nclasses = 0\n")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("line 4") && e.contains("datasets.x.synthetic.classes"),
            "{e}"
        );
        let e = parse("[datasets.x]\nsource = \"folder\"\nroot = \"r\"\n[datasets.x.store]\n\nmax_shortest_side = 8\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 6") && e.contains("32"), "{e}");
        let e = parse("[datasets.x]\nsource = \"folder\"\nroot = \"r\"\n[datasets.x.store]\nshard_size = \"12 parsecs\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 5") && e.contains("parsecs"), "{e}");
        let e = parse("[datasets.x]\nsource = \"tfrecord\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("tfrecord"), "{e}");
        let e = parse("[datasets.x]\nsource = \"folder\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `root`"), "{e}");
        let e = parse("[datasets.x]\nsource = \"folder\"\nroot = \"r\"\nroot = \"s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4"), "{e}");
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_byte_size("1.5 MiB").unwrap(), 3 << 19);
        assert_eq!(parse_byte_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_byte_size("4096").unwrap(), 4096);
        assert!(parse_byte_size("GiB").is_err());
        assert!(parse_byte_size("3 bananas").is_err());
    }
}
