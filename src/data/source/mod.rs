//! Sources: where a dataset's images come from, listed in one fixed order.
//!
//! A listing is the contract between a source and the shard writer: the class list (index ->
//! WordNet id -> name) and every source file of a split with its label, sorted by key, so that
//! the same files always get the same position, label and shard whatever machine lists them.
//! Files a source cannot label are listed as skipped with the reason, never dropped silently.

pub mod devkit;
pub mod synthetic;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::registry::{DatasetSpec, SourceKind};

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub const ALL: [Split; 2] = [Split::Train, Split::Val];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassInfo {
    /// The class folder name (a WordNet id for ImageNet).
    pub wnid: String,
    /// A readable name.
    pub name: String,
}

/// One source file to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    /// Path relative to the split directory, '/'-separated: the record's stable name.
    pub key: String,
    pub label: u32,
    pub size: u64,
}

/// A file the source itself had to leave out (e.g. a validation image with no label).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub key: String,
    pub reason: String,
}

/// Everything a split holds, in storage order.
#[derive(Debug, Clone)]
pub struct Listing {
    pub split: Split,
    pub split_dir: PathBuf,
    pub classes: Vec<ClassInfo>,
    pub files: Vec<SourceFile>,
    pub skipped: Vec<Skipped>,
    /// How labels were obtained, for the manifest (e.g. "class folders", "LOC_val_solution.csv").
    pub labels_from: String,
}

/// Why a split could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: split directory not found{hint}")]
    MissingSplit { path: PathBuf, hint: String },
    #[error("{path}: no class folders (expected {path}/<class>/<image files>)")]
    NoClasses { path: PathBuf },
    #[error("{path}: {message}")]
    Labels { path: PathBuf, message: String },
    #[error(transparent)]
    Devkit(#[from] devkit::DevkitError),
    #[error(transparent)]
    Synthetic(#[from] synthetic::SyntheticError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lists a split of a dataset. Synthetic datasets must have been generated first
/// ([`synthetic::generate`]).
pub fn list(spec: &DatasetSpec, split: Split) -> Result<Listing, SourceError> {
    let split_dir = spec.root.join(split.name());
    if !split_dir.is_dir() {
        let hint = if spec.source == SourceKind::Synthetic {
            format!(" (generate it with `vgg generate {}`)", spec.name)
        } else {
            format!(
                " (dataset `{}` has root {})",
                spec.name,
                spec.root.display()
            )
        };
        return Err(SourceError::MissingSplit {
            path: split_dir,
            hint,
        });
    }
    // The class list always comes from train (so val labels share its indices); a val-only
    // tree falls back to val's own folders.
    let train_dir = spec.root.join("train");
    let class_dir = if train_dir.is_dir() {
        &train_dir
    } else {
        &split_dir
    };
    let folders = class_folders(class_dir)?;
    if folders.is_empty() {
        return Err(SourceError::NoClasses {
            path: class_dir.clone(),
        });
    }
    let names = match spec.source {
        SourceKind::Imagenet => imagenet_class_names(spec)?,
        _ => HashMap::new(),
    };
    let classes: Vec<ClassInfo> = folders
        .iter()
        .map(|w| ClassInfo {
            wnid: w.clone(),
            name: names.get(w).cloned().unwrap_or_else(|| display_name(w)),
        })
        .collect();
    let index: HashMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.wnid.as_str(), i as u32))
        .collect();

    let has_subdirs = !class_folders(&split_dir)?.is_empty();
    let (files, skipped, labels_from) = if has_subdirs {
        list_class_folders(&split_dir, &index)?
    } else if spec.source == SourceKind::Imagenet && split == Split::Val {
        list_flat_val(spec, &split_dir, &index)?
    } else {
        return Err(SourceError::NoClasses { path: split_dir });
    };
    Ok(Listing {
        split,
        split_dir,
        classes,
        files,
        skipped,
        labels_from,
    })
}

/// Synthetic class folders are `synthetic-<shape>`; show `<shape>`.
fn display_name(folder: &str) -> String {
    folder
        .strip_prefix("synthetic-")
        .unwrap_or(folder)
        .to_string()
}

/// Sorted names of the visible subdirectories with UTF-8 names (the others are reported by
/// [`strays_in_split`]).
fn class_folders(dir: &Path) -> Result<Vec<String>, SourceError> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !name.starts_with('.') && entry.path().is_dir() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Why an entry of a folder of images is not an image file to read, or `None` when it is one
/// (a regular file, or a link to one).
fn not_a_file(path: &Path) -> Option<String> {
    match std::fs::metadata(path) {
        Err(e) => Some(match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                format!("unreadable-link: a symbolic link that leads nowhere or to itself ({e})")
            }
            _ => format!("unreadable: {e}"),
        }),
        Ok(m) if m.is_dir() => Some(
            "nested-folder: a folder inside a class folder; images are read only directly in \
             <class>/, nested folders are not searched"
                .to_string(),
        ),
        Ok(m) if !m.is_file() => Some("not-a-file: not a regular file".to_string()),
        Ok(_) => None,
    }
}

/// The key of a name that is not UTF-8, for the skipped list: lossy, and marked as such.
fn lossy_key(prefix: &str, name: &std::ffi::OsStr) -> String {
    format!("{prefix}{}", name.to_string_lossy())
}

/// A file found in a folder: name, path, size.
type FileEntry = (String, PathBuf, u64);

/// Sorted visible regular files of a directory, as (name, path, size), and what else is there
/// (dangling links, link loops, nested folders, names that are not UTF-8), as skipped entries
/// keyed `prefix` + name.
fn files_in(dir: &Path, prefix: &str) -> Result<(Vec<FileEntry>, Vec<Skipped>), SourceError> {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let os_name = entry.file_name();
        let path = entry.path();
        let Some(name) = os_name.to_str().map(str::to_string) else {
            skipped.push(Skipped {
                key: lossy_key(prefix, &os_name),
                reason: "name-not-utf8: the file name is not valid UTF-8 (record keys are \
                         UTF-8); rename the file"
                    .to_string(),
            });
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if let Some(reason) = not_a_file(&path) {
            skipped.push(Skipped {
                key: format!("{prefix}{name}"),
                reason,
            });
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        out.push((name, path, meta.len()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, skipped))
}

/// What lies directly in a split folder of class folders besides them: stray files, class
/// folders whose names are not UTF-8, dangling links.
fn strays_in_split(split_dir: &Path) -> Result<Vec<Skipped>, SourceError> {
    let mut skipped = Vec::new();
    for entry in std::fs::read_dir(split_dir).map_err(io_err(split_dir))? {
        let entry = entry.map_err(io_err(split_dir))?;
        let os_name = entry.file_name();
        let path = entry.path();
        let Some(name) = os_name.to_str() else {
            skipped.push(Skipped {
                key: lossy_key("", &os_name),
                reason: "name-not-utf8: the name is not valid UTF-8 (class names and record keys \
                         are UTF-8); rename it"
                    .to_string(),
            });
            continue;
        };
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let reason = match not_a_file(&path) {
            Some(r) => r,
            None => "outside-class-folder: a file directly in the split folder, not in a class \
                     folder <class>/, so it has no label"
                .to_string(),
        };
        skipped.push(Skipped {
            key: name.to_string(),
            reason,
        });
    }
    Ok(skipped)
}

type Listed = (Vec<SourceFile>, Vec<Skipped>, String);

fn list_class_folders(split_dir: &Path, index: &HashMap<&str, u32>) -> Result<Listed, SourceError> {
    let mut files = Vec::new();
    let mut skipped = strays_in_split(split_dir)?;
    for folder in class_folders(split_dir)? {
        let dir = split_dir.join(&folder);
        let (in_folder, odd) = files_in(&dir, &format!("{folder}/"))?;
        skipped.extend(odd);
        let Some(&label) = index.get(folder.as_str()) else {
            for (name, _, _) in in_folder {
                skipped.push(Skipped {
                    key: format!("{folder}/{name}"),
                    reason: format!("class folder `{folder}` is not among the train classes"),
                });
            }
            continue;
        };
        for (name, path, size) in in_folder {
            files.push(SourceFile {
                path,
                key: format!("{folder}/{name}"),
                label,
                size,
            });
        }
    }
    skipped.sort_by(|a, b| a.key.cmp(&b.key));
    Ok((files, skipped, "class folders".into()))
}

const LOC_VAL: &str = "LOC_val_solution.csv";
const DEVKIT_GT: &str = "ILSVRC2012_validation_ground_truth.txt";

/// A flat ImageNet val folder: labels from Kaggle's CSV or the devkit's ground truth.
fn list_flat_val(
    spec: &DatasetSpec,
    split_dir: &Path,
    index: &HashMap<&str, u32>,
) -> Result<Listed, SourceError> {
    let candidates = [
        spec.root.join(LOC_VAL),
        spec.root.join(DEVKIT_GT),
        spec.root.join("ILSVRC2012_devkit_t12/data").join(DEVKIT_GT),
        spec.root.join("data").join(DEVKIT_GT),
    ];
    let label_file = match &spec.val_labels {
        Some(p) => p.clone(),
        None => candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
            SourceError::Labels {
                path: split_dir.to_path_buf(),
                message: format!(
                    "val is a flat folder but no labels were found: put {LOC_VAL} or the devkit's {DEVKIT_GT} (with meta.mat) in {}, or set `val_labels` in the registry",
                    spec.root.display()
                ),
            }
        })?,
    };
    let text = std::fs::read_to_string(&label_file).map_err(io_err(&label_file))?;
    let labels_err = |message: String| SourceError::Labels {
        path: label_file.clone(),
        message,
    };
    // image name stem -> wnid
    let by_stem: HashMap<String, String> =
        if text.trim_start_matches('\u{feff}').starts_with("ImageId") {
            devkit::parse_loc_val_solution(&text)?.into_iter().collect()
        } else {
            let ids = devkit::parse_ground_truth(&text)?;
            let synsets = devkit_synsets(spec, &label_file)?;
            let by_id: HashMap<u32, &str> = synsets
                .iter()
                .map(|s| (s.ilsvrc2012_id, s.wnid.as_str()))
                .collect();
            let mut m = HashMap::with_capacity(ids.len());
            for (i, id) in ids.iter().enumerate() {
                let wnid = by_id.get(id).ok_or_else(|| {
                    labels_err(format!(
                        "line {}: ILSVRC2012_ID {id} is not in the synset list",
                        i + 1
                    ))
                })?;
                let name = devkit::val_image_name(i + 1);
                let stem = name
                    .rsplit_once('.')
                    .map_or(name.as_str(), |(s, _)| s)
                    .to_string();
                m.insert(stem, wnid.to_string());
            }
            m
        };
    let mut files = Vec::new();
    let (in_folder, mut skipped) = files_in(split_dir, "")?;
    for (name, path, size) in in_folder {
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        match by_stem.get(stem) {
            None => skipped.push(Skipped {
                key: name.clone(),
                reason: format!("no label for this file in {}", label_file.display()),
            }),
            Some(wnid) => match index.get(wnid.as_str()) {
                Some(&label) => files.push(SourceFile {
                    path,
                    key: name,
                    label,
                    size,
                }),
                None => {
                    return Err(labels_err(format!(
                        "{name} is labelled {wnid}, which is not among the {} train classes",
                        index.len()
                    )))
                }
            },
        }
    }
    let from = label_file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((files, skipped, from))
}

/// The devkit's id -> wnid table: the registry's `synsets`, or meta.mat beside the ground truth.
fn devkit_synsets(
    spec: &DatasetSpec,
    ground_truth: &Path,
) -> Result<Vec<devkit::DevkitSynset>, SourceError> {
    let beside = ground_truth.with_file_name("meta.mat");
    let path = match &spec.synsets {
        Some(p) => p.clone(),
        None if beside.is_file() => beside,
        None => {
            return Err(SourceError::Labels {
                path: ground_truth.to_path_buf(),
                message: format!(
                    "the devkit's ground truth holds ILSVRC2012_IDs in the devkit's own order (not sorted wnids); mapping them needs the devkit's meta.mat beside it ({}) or `synsets = \"FILE\"` in the registry",
                    beside.display()
                ),
            })
        }
    };
    let bytes = std::fs::read(&path).map_err(io_err(&path))?;
    let synsets = if bytes.starts_with(b"MATLAB") {
        devkit::parse_meta_mat(&bytes)?
    } else {
        devkit::parse_synset_list(&String::from_utf8_lossy(&bytes))?
    };
    Ok(synsets)
}

/// Readable ImageNet class names, from Kaggle's LOC_synset_mapping.txt or the devkit's meta.mat
/// when either is present; empty otherwise (the wnid is shown instead).
fn imagenet_class_names(spec: &DatasetSpec) -> Result<HashMap<String, String>, SourceError> {
    let short = |words: &str| words.split(',').next().unwrap_or(words).trim().to_string();
    let mapping = spec.root.join("LOC_synset_mapping.txt");
    if mapping.is_file() {
        let text = std::fs::read_to_string(&mapping).map_err(io_err(&mapping))?;
        return Ok(devkit::parse_loc_synset_mapping(&text)?
            .into_iter()
            .map(|(w, words)| (w, short(&words)))
            .collect());
    }
    let metas = [
        spec.synsets.clone(),
        Some(spec.root.join("ILSVRC2012_devkit_t12/data/meta.mat")),
        Some(spec.root.join("meta.mat")),
    ];
    for p in metas.into_iter().flatten() {
        if p.is_file() && p.extension().is_some_and(|e| e == "mat") {
            let bytes = std::fs::read(&p).map_err(io_err(&p))?;
            return Ok(devkit::parse_meta_mat(&bytes)?
                .into_iter()
                .map(|s| (s.wnid, short(&s.words)))
                .collect());
        }
    }
    Ok(HashMap::new())
}

/// A stable fingerprint of a listing: class list, keys, sizes and labels (not contents, which
/// would need a full read, and not modification times, which differ between copies).
pub fn fingerprint(listing: &Listing) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in &listing.classes {
        h.update(c.wnid.as_bytes());
        h.update([0]);
    }
    for f in &listing.files {
        h.update(f.key.as_bytes());
        h.update([0]);
        h.update(f.size.to_le_bytes());
        h.update(f.label.to_le_bytes());
    }
    let mut skipped: BTreeMap<&str, &str> = BTreeMap::new();
    for s in &listing.skipped {
        skipped.insert(&s.key, &s.reason);
    }
    for k in skipped.keys() {
        h.update(k.as_bytes());
        h.update([1]);
    }
    format!("sha256:{:x}", h.finalize())
}
