//! A prepared split as a whole: its manifest and its memory-mapped shards, plus the two
//! read-side commands, `vgg inspect` (what is in it) and `vgg verify` (is every byte right).
//!
//! A directory given to these is either one split (it holds `manifest.json`) or a dataset's
//! shard directory holding one folder per split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use crate::config::registry::{DatasetSpec, SourceKind};
use crate::data::imaging;
use crate::data::manifest::{self, Conversions, Manifest, ManifestClass, ManifestError};
use crate::data::shard::{Encoding, RecordRef, ShardError, ShardReader};
use crate::data::source::Split;
use crate::util::progress::{Cancel, Progress};

/// Why a prepared split could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{dir}: no manifest.json here or in its subfolders; prepare the dataset with `vgg prepare NAME`")]
    NotPrepared { dir: PathBuf },
    #[error("{path}: holds {found} records, the manifest says {expected}")]
    CountMismatch {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    /// A shard is not the one the manifest was assembled from, or the manifest contradicts
    /// itself.
    #[error(
        "{path}: {reason}; the store is damaged or was edited, re-run `vgg prepare` to rebuild it"
    )]
    Inconsistent { path: PathBuf, reason: String },
    /// The store belongs to another dataset than the one named.
    #[error("{dir}: holds the store of dataset `{found}`{why}, not of `{expected}`: two datasets share this shard folder; give one of them its own `shards` in the registry")]
    OtherDataset {
        dir: PathBuf,
        found: String,
        why: String,
        expected: String,
    },
    #[error("cannot start worker threads: {0}")]
    Threads(String),
    #[error("interrupted after checking {records} records; nothing was changed")]
    Interrupted { records: u64 },
}

/// An opened, validated split.
pub struct PreparedSplit {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub shards: Vec<ShardReader>,
    /// `offsets[k]` is the global index of shard k's first record; the last entry is the total.
    offsets: Vec<u64>,
    /// Whether [`PreparedSplit::record`] checks each record's CRC-32C.
    record_checks: bool,
}

impl PreparedSplit {
    /// Opens the split in `dir`: reads the manifest (checking its checksum), maps and validates
    /// every shard, and checks each shard against its manifest entry (size, record count, header
    /// CRC) and the manifest's totals against its shards and classes. Record bytes are checked
    /// as they are read ([`PreparedSplit::record`]); `verify` reads them all.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let manifest = Manifest::read(dir)?;
        let manifest_path = dir.join(manifest::FILE_NAME);
        let inconsistent = |reason: String| StoreError::Inconsistent {
            path: manifest_path.clone(),
            reason,
        };
        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut offsets = vec![0u64];
        for s in &manifest.shards {
            let path = dir.join(&s.file);
            let r = ShardReader::open(&path)?;
            if r.len() as u64 != s.records {
                return Err(StoreError::CountMismatch {
                    path,
                    found: r.len() as u64,
                    expected: s.records,
                });
            }
            if let Some(reason) = shard_differs(&r, s) {
                return Err(StoreError::Inconsistent { path, reason });
            }
            offsets.push(offsets.last().unwrap() + s.records);
            shards.push(r);
        }
        let total = *offsets.last().unwrap();
        if total != manifest.records {
            return Err(inconsistent(format!(
                "the shards listed hold {total} records, the manifest says {}",
                manifest.records
            )));
        }
        let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
        if bytes != manifest.bytes {
            return Err(inconsistent(format!(
                "the shards listed hold {bytes} bytes, the manifest says {}",
                manifest.bytes
            )));
        }
        let per_class: u64 = manifest.classes.iter().map(|c| c.records).sum();
        if per_class != manifest.records {
            return Err(inconsistent(format!(
                "the class counts add up to {per_class} records, the manifest says {}",
                manifest.records
            )));
        }
        if let Some((i, c)) = manifest
            .classes
            .iter()
            .enumerate()
            .find(|(i, c)| c.index as usize != *i)
        {
            return Err(inconsistent(format!(
                "class `{}` is listed at position {i} with index {}",
                c.wnid, c.index
            )));
        }
        Ok(PreparedSplit {
            dir: dir.to_path_buf(),
            manifest,
            shards,
            offsets,
            record_checks: true,
        })
    }

    /// [`PreparedSplit::open`], but [`PreparedSplit::record`] skips the records' CRC check: only
    /// for measuring what the check costs (`vgg bench loader`).
    pub fn open_without_record_checks(dir: &Path) -> Result<Self, StoreError> {
        let mut s = Self::open(dir)?;
        s.record_checks = false;
        Ok(s)
    }

    /// Refuses a store made for another dataset than `spec` (another name or source kind, or,
    /// where both folders exist, another source root).
    pub fn check_dataset(&self, spec: &DatasetSpec) -> Result<(), StoreError> {
        let m = &self.manifest;
        check_owner(&self.dir, &m.dataset, m.source.kind, &m.source.root, spec)
    }

    /// Total number of records.
    pub fn len(&self) -> u64 {
        *self.offsets.last().unwrap()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `global` (numbered across the split's shards in manifest order); a damaged index
    /// entry is an error naming its shard and record.
    ///
    /// # Panics
    ///
    /// If `global >= self.len()`.
    /// The record's bytes are checked against its CRC-32C: a damaged record is
    /// [`ShardError::RecordChecksum`], naming the shard, the record and its key.
    pub fn record(&self, global: u64) -> Result<RecordRef<'_>, ShardError> {
        let (k, i) = self.locate(global);
        if self.record_checks {
            self.shards[k].check_record(i)
        } else {
            self.shards[k].record(i)
        }
    }

    /// The shard file holding record `global`.
    pub fn shard_path(&self, global: u64) -> &Path {
        self.shards[self.locate(global).0].path()
    }

    /// (shard, record within shard) of a global record index.
    ///
    /// # Panics
    ///
    /// If `global >= self.len()`.
    pub fn locate(&self, global: u64) -> (usize, usize) {
        assert!(global < self.len(), "record {global} out of range");
        let k = self.offsets.partition_point(|&o| o <= global) - 1;
        (k, (global - self.offsets[k]) as usize)
    }
}

/// Why shard `r` is not the one manifest entry `s` describes, if it is not.
fn shard_differs(r: &ShardReader, s: &manifest::ManifestShard) -> Option<String> {
    let h = r.header();
    if h.file_len != s.bytes {
        return Some(format!(
            "shard is {} bytes, the manifest says {}",
            h.file_len, s.bytes
        ));
    }
    if h.header_crc != s.header_crc {
        return Some(format!(
            "shard header CRC {:#010x}, the manifest says {:#010x}: not the shard the manifest was made from",
            h.header_crc, s.header_crc
        ));
    }
    None
}

/// Refuses the store in `dir`, made for `dataset` from a `kind` source at `root`, when `spec` is
/// another dataset: another name, another source kind, or (where both folders exist) another
/// source root.
pub fn check_owner(
    dir: &Path,
    dataset: &str,
    kind: SourceKind,
    root: &str,
    spec: &DatasetSpec,
) -> Result<(), StoreError> {
    let other = |why: String| StoreError::OtherDataset {
        dir: dir.to_path_buf(),
        found: dataset.to_string(),
        why,
        expected: spec.name.clone(),
    };
    if dataset != spec.name {
        return Err(other(String::new()));
    }
    if kind != spec.source {
        return Err(other(format!(
            " (a {kind} source; this one is {})",
            spec.source
        )));
    }
    let stored = Path::new(root);
    if let (Ok(a), Ok(b)) = (stored.canonicalize(), spec.root.canonicalize()) {
        if a != b {
            return Err(other(format!(
                " (made from {}; this one reads {})",
                a.display(),
                b.display()
            )));
        }
    }
    Ok(())
}

/// The split directories under `dir`.
/// Checks that every split under `dir` was prepared for dataset `spec` (its name, source kind
/// and root, as its manifest records them): a store copied or linked under another dataset's
/// shard folder is refused, as [`PreparedSplit::check_dataset`] does for one split.
pub fn check_owner_of_splits(dir: &Path, spec: &DatasetSpec) -> Result<(), StoreError> {
    for d in find_splits(dir)? {
        let m = Manifest::read(&d)?;
        check_owner(&d, &m.dataset, m.source.kind, &m.source.root, spec)?;
    }
    Ok(())
}

pub fn find_splits(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    if dir.join(manifest::FILE_NAME).is_file() {
        return Ok(vec![dir.to_path_buf()]);
    }
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    let hidden = p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'));
                    !hidden && p.join(manifest::FILE_NAME).is_file()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    if out.is_empty() {
        return Err(StoreError::NotPrepared {
            dir: dir.to_path_buf(),
        });
    }
    Ok(out)
}

/// Summary statistics of a quantity.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
}

impl Stats {
    fn of(values: impl Iterator<Item = u64>) -> Stats {
        let (mut min, mut max, mut sum, mut n) = (u64::MAX, 0u64, 0u128, 0u64);
        for v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v as u128;
            n += 1;
        }
        if n == 0 {
            return Stats::default();
        }
        Stats {
            min,
            mean: sum as f64 / n as f64,
            max,
        }
    }
}

/// What `vgg inspect` reports for one split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSummary {
    pub dir: PathBuf,
    pub dataset: String,
    pub split: Split,
    pub records: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub encodings: BTreeMap<String, u64>,
    pub shortest_side: Stats,
    pub width: Stats,
    pub height: Stats,
    pub record_bytes: Stats,
    pub conversions: Conversions,
    /// Skipped files counted by reason kind (`truncated`, `not-an-image`, ...).
    pub skipped_by_reason: BTreeMap<String, u64>,
    pub classes: Vec<ManifestClass>,
    pub shards: Vec<manifest::ManifestShard>,
    pub store: crate::config::registry::StorePolicy,
    pub source_fingerprint: String,
}

/// What `vgg inspect --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    pub records: u64,
    pub classes: usize,
    pub shards: usize,
    pub bytes: u64,
    pub skipped: u64,
    pub splits: Vec<SplitSummary>,
}

/// Inspects every split under `dir`.
pub fn inspect(dir: &Path) -> Result<InspectReport, StoreError> {
    let mut splits = Vec::new();
    for d in find_splits(dir)? {
        let s = PreparedSplit::open(&d)?;
        let mut encodings = BTreeMap::new();
        let mut dims = Vec::with_capacity(s.len() as usize);
        for shard in &s.shards {
            for rec in shard.records() {
                let rec = rec?;
                let name = match rec.encoding {
                    Encoding::Jpeg => "jpeg",
                    Encoding::Raw => "raw",
                };
                *encodings.entry(name.to_string()).or_insert(0u64) += 1;
                dims.push((rec.width as u64, rec.height as u64, rec.bytes.len() as u64));
            }
        }
        let mut skipped_by_reason = BTreeMap::new();
        if let Ok(text) = std::fs::read_to_string(d.join(manifest::SKIPPED_FILE)) {
            for line in text.lines().skip(1) {
                let reason = line.split_once('\t').map_or("", |(_, r)| r);
                let kind = reason.split_once(':').map_or(reason, |(k, _)| k);
                let kind = if kind.contains(' ') {
                    "unlabelled"
                } else {
                    kind
                };
                *skipped_by_reason.entry(kind.to_string()).or_insert(0u64) += 1;
            }
        }
        let m = &s.manifest;
        splits.push(SplitSummary {
            dir: d.clone(),
            dataset: m.dataset.clone(),
            split: m.split,
            records: s.len(),
            skipped: m.skipped,
            bytes: m.bytes,
            encodings,
            shortest_side: Stats::of(dims.iter().map(|d| d.0.min(d.1))),
            width: Stats::of(dims.iter().map(|d| d.0)),
            height: Stats::of(dims.iter().map(|d| d.1)),
            record_bytes: Stats::of(dims.iter().map(|d| d.2)),
            conversions: m.conversions.clone(),
            skipped_by_reason,
            classes: m.classes.clone(),
            shards: m.shards.clone(),
            store: m.store.clone(),
            source_fingerprint: m.source.fingerprint.clone(),
        });
    }
    Ok(InspectReport {
        records: splits.iter().map(|s| s.records).sum(),
        classes: splits.iter().map(|s| s.classes.len()).max().unwrap_or(0),
        shards: splits.iter().map(|s| s.shards.len()).sum(),
        bytes: splits.iter().map(|s| s.bytes).sum(),
        skipped: splits.iter().map(|s| s.skipped).sum(),
        splits,
    })
}

/// One problem `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyFailure {
    pub shard: PathBuf,
    /// Record number within the shard, when the problem is one record.
    pub record: Option<usize>,
    pub key: Option<String>,
    pub reason: String,
}

/// What `vgg verify` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub shards: usize,
    pub records: u64,
    pub bytes: u64,
    pub failures: Vec<VerifyFailure>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Checks every shard under `dir`: the manifest's shard list and sizes, every header, every
/// record checksum, and that every record decodes to the size its index row states.
/// Each split is a `progress` phase counted in records; `cancel` stops it between shards
/// ([`StoreError::Interrupted`]).
pub fn verify(
    dir: &Path,
    threads: Option<usize>,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<VerifyReport, StoreError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()
        .map_err(|e| StoreError::Threads(e.to_string()))?;
    let mut report = VerifyReport {
        shards: 0,
        records: 0,
        bytes: 0,
        failures: Vec::new(),
    };
    for d in find_splits(dir)? {
        let m = Manifest::read(&d)?;
        let total: u64 = m.shards.iter().map(|s| s.records).sum();
        let done = AtomicU64::new(0);
        let mut counted = vec![0u64; m.classes.len()];
        let mut records_seen = 0u64;
        progress.start(&format!("verify {}", m.split), total, 0);
        for s in &m.shards {
            if cancel.is_cancelled() {
                progress.finish();
                return Err(StoreError::Interrupted {
                    records: report.records,
                });
            }
            let path = d.join(&s.file);
            report.shards += 1;
            let r = match ShardReader::open(&path) {
                Ok(r) => r,
                Err(e) => {
                    report.failures.push(VerifyFailure {
                        shard: path,
                        record: None,
                        key: None,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let mismatch = if r.len() as u64 != s.records {
                Some(format!(
                    "shard has {} records, the manifest says {}",
                    r.len(),
                    s.records
                ))
            } else {
                shard_differs(&r, s)
            };
            if let Some(reason) = mismatch {
                report.failures.push(VerifyFailure {
                    shard: path.clone(),
                    record: None,
                    key: None,
                    reason,
                });
            }
            let expect = Expect {
                encoding: m.store.encoding,
                wnids: m.classes.iter().map(|c| c.wnid.clone()).collect(),
            };
            let (failures, labels): (Vec<VerifyFailure>, Vec<u32>) = pool.install(|| {
                (0..r.len())
                    .into_par_iter()
                    .map(|i| {
                        let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                        if n.is_multiple_of(256) || n == total {
                            progress.set_position(n);
                        }
                        let label = r.record(i).map_or(u32::MAX, |x| x.label);
                        let failure =
                            check_one(&r, i, &expect)
                                .err()
                                .map(|(key, reason)| VerifyFailure {
                                    shard: path.clone(),
                                    record: Some(i),
                                    key,
                                    reason,
                                });
                        (failure, label)
                    })
                    .fold(
                        || (Vec::new(), Vec::new()),
                        |(mut f, mut l), (failure, label)| {
                            f.extend(failure);
                            l.push(label);
                            (f, l)
                        },
                    )
                    .reduce(
                        || (Vec::new(), Vec::new()),
                        |(mut f, mut l), (f2, l2)| {
                            f.extend(f2);
                            l.extend(l2);
                            (f, l)
                        },
                    )
            });
            for l in labels {
                if let Some(c) = counted.get_mut(l as usize) {
                    *c += 1;
                }
            }
            report.failures.extend(failures);
            report.records += r.len() as u64;
            report.bytes += r.header().file_len;
            records_seen += r.len() as u64;
        }
        progress.finish();
        let manifest_path = d.join(manifest::FILE_NAME);
        let mut whole = |reason: String| {
            report.failures.push(VerifyFailure {
                shard: manifest_path.clone(),
                record: None,
                key: None,
                reason,
            })
        };
        if records_seen != m.records {
            whole(format!(
                "the shards listed hold {records_seen} records, the manifest says {}",
                m.records
            ));
        }
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        if bytes != m.bytes {
            whole(format!(
                "the shards listed hold {bytes} bytes, the manifest says {}",
                m.bytes
            ));
        }
        for (i, c) in m.classes.iter().enumerate() {
            if c.index as usize != i || c.records != counted[i] {
                whole(format!(
                    "class `{}` (index {} at position {i}): the manifest says {} records, the shards hold {} with label {i}",
                    c.wnid, c.index, c.records, counted[i]
                ));
            }
        }
    }
    Ok(report)
}

/// What every record of a split must be.
struct Expect {
    encoding: Encoding,
    /// Class wnids by label.
    wnids: Vec<String>,
}

fn check_one(r: &ShardReader, i: usize, expect: &Expect) -> Result<(), (Option<String>, String)> {
    let rec = r.check_record(i).map_err(|e| {
        let key = r.record(i).ok().map(|x| x.key.to_string());
        (key, e.to_string())
    })?;
    let key = Some(rec.key.to_string());
    if rec.encoding != expect.encoding {
        return Err((
            key,
            format!(
                "stored as {:?}, the manifest's store policy says {:?}",
                rec.encoding, expect.encoding
            ),
        ));
    }
    let Some(wnid) = expect.wnids.get(rec.label as usize) else {
        return Err((
            key,
            format!(
                "label {} but the manifest lists {} classes",
                rec.label,
                expect.wnids.len()
            ),
        ));
    };
    // A key in a class folder names its class: the folder is the class's wnid.
    if let Some((folder, _)) = rec.key.split_once('/') {
        if folder != wnid {
            return Err((
                key,
                format!(
                    "in folder `{folder}` with label {}, which the manifest says is class `{wnid}`",
                    rec.label
                ),
            ));
        }
    }
    match rec.encoding {
        Encoding::Raw => {
            let want = rec.width as u64 * rec.height as u64 * 3;
            if rec.bytes.len() as u64 != want {
                return Err((
                    key,
                    format!(
                        "raw record holds {} bytes, {}x{}x3 = {want} expected",
                        rec.bytes.len(),
                        rec.width,
                        rec.height
                    ),
                ));
            }
        }
        Encoding::Jpeg => {
            let d = imaging::decode_rgb8(rec.bytes, u64::MAX)
                .map_err(|e| (key.clone(), format!("does not decode: {e}")))?;
            if (d.width, d.height) != (rec.width, rec.height) {
                return Err((
                    key,
                    format!(
                        "decodes to {}x{}, the index says {}x{}",
                        d.width, d.height, rec.width, rec.height
                    ),
                ));
            }
        }
    }
    Ok(())
}
