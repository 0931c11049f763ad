//! `vgg prepare`: a dataset's source files into shards, in parallel, resumably, and splittable
//! over machines.
//!
//! The plan is a pure function of the source listing and the store policy: shard `k` of a split
//! always holds source positions `[k*R, (k+1)*R)` (R records per shard, fixed in the policy or
//! derived from the target shard size and the mean source file size). That is what makes the
//! three promises cheap to keep:
//! - resume: a shard already on disk whose header carries this plan's hash is kept;
//! - `--part I/N`: part I writes a contiguous block of shards, disjoint from the other parts;
//! - merge: the manifest is assembled from the shard files themselves, so the parts' union is
//!   byte-identical to a single-machine run.

use crate::util::progress::{Cancel, Progress};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::registry::{DatasetSpec, SourceKind, StorePolicy};
use crate::data::imaging::{self, DecodeError, SourceColor};
use crate::data::manifest::{
    self, Conversions, Manifest, ManifestClass, ManifestShard, SourceInfo, FORMAT, FORMAT_VERSION,
};
use crate::data::shard::{self, Encoding, RecordFlags, ShardError, ShardReader, ShardWriter};
use crate::data::source::{self, synthetic, Listing, Skipped, SourceError, SourceFile, Split};
use crate::data::store::{self, StoreError};

/// Records decoded in parallel before being appended in order.
const CHUNK: usize = 128;

/// Which part of the work this run does: part `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Part {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Part {
    type Err = String;
    /// Parses "I/N" with 0 <= I < N.
    fn from_str(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not I/N (e.g. 0/8)"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("bad part index in `{s}`"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("bad part count in `{s}`"))?;
        if count == 0 || index >= count {
            return Err(format!("part `{s}`: need 0 <= I < N"));
        }
        Ok(Part { index, count })
    }
}

/// Options of one prepare run.
#[derive(Debug, Clone, Default)]
pub struct PrepareOptions {
    /// Splits to prepare; empty means every split the source has.
    pub splits: Vec<Split>,
    pub part: Option<Part>,
    /// Worker threads (default: all cores).
    pub threads: Option<usize>,
    /// Only assemble the manifest from shards the parts wrote.
    pub merge: bool,
}

/// The outcome for one split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitReport {
    pub split: Split,
    pub part: Option<Part>,
    pub shards_planned: usize,
    pub shards_written: usize,
    pub shards_kept: usize,
    /// Source files handled by this run (not counting kept shards).
    pub processed: u64,
    pub records: u64,
    pub skipped: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub images_per_second: f64,
    /// Set when the split is complete and its manifest written.
    pub manifest: Option<PathBuf>,
    /// Classes (folder names) with no stored record: recorded with 0 records in the manifest;
    /// a training split with any is refused by `vgg train`.
    pub empty_classes: Vec<String>,
}

/// Why preparing failed.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: reading source file failed: {source} (stopping rather than leaving it out)")]
    SourceRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("interrupted: {written} shard(s) of {split} finished and kept; re-run the same command to resume")]
    Interrupted { split: Split, written: usize },
    #[error("{split}: cannot merge, {missing} of {planned} shards are missing or from another plan (first: {first}); are parts still running?")]
    Incomplete {
        split: Split,
        missing: usize,
        planned: usize,
        first: String,
    },
    #[error("{}", no_splits(root))]
    NoSplits { root: PathBuf },
    #[error("cannot start worker threads: {0}")]
    Threads(String),
}

/// Why a dataset root offers nothing to prepare: it does not exist, is not a folder, or holds
/// neither `train/` nor `val/`.
fn no_splits(root: &Path) -> String {
    if !root.exists() {
        format!(
            "the dataset's root {} does not exist (set `root` in the registry to the folder holding train/ and val/)",
            root.display()
        )
    } else if !root.is_dir() {
        format!(
            "the dataset's root {} is a file, not a folder holding train/ and val/",
            root.display()
        )
    } else {
        format!(
            "no splits to prepare under {} (expected train/ or val/)",
            root.display()
        )
    }
}

/// The deterministic plan of one split.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    pub records_per_shard: u32,
    pub shards: Vec<ShardPlan>,
}

/// One planned shard.
#[derive(Debug, Clone)]
pub struct ShardPlan {
    pub number: usize,
    pub start: usize,
    pub end: usize,
    pub file: String,
    pub hash: u64,
}

/// Per-shard facts stored in the shard's metadata block.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct ShardMeta {
    dataset: String,
    split: Option<Split>,
    shard: usize,
    source_start: usize,
    source_end: usize,
    skipped: Vec<Skipped>,
    conversions: Conversions,
}

/// Records per shard for a listing under a policy.
pub fn records_per_shard(policy: &StorePolicy, files: &[SourceFile]) -> u32 {
    if let Some(n) = policy.records_per_shard {
        return n.max(1);
    }
    let estimate = match policy.encoding {
        // A raw record at the cap with a 4:3 aspect ratio.
        Encoding::Raw => {
            let s = policy.max_shortest_side.0 as u64;
            s * s * 4 / 3 * 3
        }
        Encoding::Jpeg => {
            let total: u64 = files.iter().map(|f| f.size).sum();
            (total / files.len().max(1) as u64).max(1)
        }
    };
    (policy.shard_size.0 / estimate).clamp(1, u32::MAX as u64) as u32
}

/// Builds the plan for a listing.
pub fn plan(spec: &DatasetSpec, listing: &Listing) -> Plan {
    let dir = spec.shards.join(listing.split.name());
    let r = records_per_shard(&spec.store, &listing.files) as usize;
    let n = listing.files.len().div_ceil(r).max(1);
    let policy = serde_json::to_string(&spec.store).expect("policy serialises");
    let shards = (0..n)
        .map(|k| {
            let (start, end) = (k * r, ((k + 1) * r).min(listing.files.len()));
            let mut h = Sha256::new();
            h.update(policy.as_bytes());
            h.update(spec.name.as_bytes());
            h.update(listing.split.name().as_bytes());
            h.update((k as u64).to_le_bytes());
            for f in &listing.files[start..end] {
                h.update(f.key.as_bytes());
                h.update([0]);
                h.update(f.size.to_le_bytes());
                h.update(f.label.to_le_bytes());
            }
            let digest = h.finalize();
            ShardPlan {
                number: k,
                start,
                end,
                file: format!("{}-{k:05}.{}", listing.split.name(), shard::EXTENSION),
                hash: u64::from_le_bytes(digest[..8].try_into().unwrap()),
            }
        })
        .collect();
    Plan {
        dir,
        records_per_shard: r as u32,
        shards,
    }
}

/// The shards of `plan` that part `part` writes: a contiguous block.
pub fn part_range(planned: usize, part: Option<Part>) -> std::ops::Range<usize> {
    match part {
        None => 0..planned,
        Some(p) => {
            let (i, n) = (p.index as usize, p.count as usize);
            planned * i / n..planned * (i + 1) / n
        }
    }
}

/// Prepares the requested splits of a dataset.
pub fn prepare(
    spec: &DatasetSpec,
    opts: &PrepareOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Vec<SplitReport>, PrepareError> {
    if spec.source == SourceKind::Synthetic && !opts.merge {
        let s = spec.synthetic.clone().unwrap_or_default();
        synthetic::generate(&s, &spec.root).map_err(SourceError::from)?;
    }
    let splits: Vec<Split> = if opts.splits.is_empty() {
        Split::ALL
            .into_iter()
            .filter(|s| spec.root.join(s.name()).is_dir())
            .collect()
    } else {
        opts.splits.clone()
    };
    if splits.is_empty() {
        return Err(PrepareError::NoSplits {
            root: spec.root.clone(),
        });
    }
    let threads = opts.threads.unwrap_or(0);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("prepare-{i}"))
        .build()
        .map_err(|e| PrepareError::Threads(e.to_string()))?;
    let mut reports = Vec::new();
    for split in splits {
        let listing = source::list(spec, split)?;
        let report = pool.install(|| prepare_split(spec, &listing, opts, progress, cancel))?;
        reports.push(report);
    }
    Ok(reports)
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> PrepareError + '_ {
    move |source| PrepareError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Whether `dir` holds shard `sp` of this plan, whole: its header carries the plan's hash and
/// every record matches its CRC-32C (this reads the shard). A damaged shard is logged and redone.
fn intact(dir: &Path, sp: &ShardPlan) -> bool {
    let path = dir.join(&sp.file);
    let Ok(r) = ShardReader::open(&path) else {
        return false;
    };
    if r.header().plan_hash != sp.hash {
        return false;
    }
    match r.check_all() {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "damaged shard; writing it again");
            false
        }
    }
}

/// The sibling folder where a replacement of the store in `live` is built, then swapped in.
pub fn staging_dir(live: &Path) -> PathBuf {
    let name = live
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    live.with_file_name(format!(".{name}.next"))
}

/// The identity fields of a manifest, read leniently (an older or damaged manifest still names
/// its dataset).
#[derive(Deserialize)]
struct Owner {
    dataset: String,
    source: OwnerSource,
}

#[derive(Deserialize)]
struct OwnerSource {
    kind: SourceKind,
    root: String,
}

/// Refuses to write into `dir` when it holds another dataset's store: its manifest, or failing
/// that its shards, name another dataset.
fn check_folder_owner(spec: &DatasetSpec, dir: &Path) -> Result<(), PrepareError> {
    let text = std::fs::read_to_string(dir.join(manifest::FILE_NAME));
    if let Some(o) = text
        .ok()
        .and_then(|t| serde_json::from_str::<Owner>(&t).ok())
    {
        store::check_owner(dir, &o.dataset, o.source.kind, &o.source.root, spec)?;
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != shard::EXTENSION) {
            continue;
        }
        let Ok(r) = ShardReader::open(&path) else {
            continue;
        };
        if let Ok(meta) = serde_json::from_slice::<ShardMeta>(r.meta()) {
            if meta.dataset != spec.name {
                return Err(StoreError::OtherDataset {
                    dir: dir.to_path_buf(),
                    found: meta.dataset,
                    why: format!(" (shard {})", path.display()),
                    expected: spec.name.clone(),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// Puts the intact shard `file` of the live store into the staging folder: a hard link (the
/// bytes are immutable), or a copy where links are not possible.
fn adopt(live: &Path, work: &Path, file: &str) -> Result<(), PrepareError> {
    let (from, to) = (live.join(file), work.join(file));
    let _ = std::fs::remove_file(&to);
    if std::fs::hard_link(&from, &to).is_ok() {
        return Ok(());
    }
    let tmp = crate::util::fs::temp_path(&to);
    std::fs::copy(&from, &tmp).map_err(io_at(&tmp))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_at(&tmp))?;
    std::fs::rename(&tmp, &to).map_err(io_at(&to))
}

/// Swaps the finished store in `stage` with the one in `live` in one atomic step (Linux
/// `renameat2(RENAME_EXCHANGE)`), then removes the old one. Where the exchange is not supported,
/// two renames; a crash between them leaves no `live` folder, which the next run repairs.
fn commit(stage: &Path, live: &Path) -> Result<(), PrepareError> {
    crate::util::fs::sync_dir(stage);
    if !exchange(stage, live) {
        let old = live.with_file_name(format!(
            "{}.old",
            stage.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&old);
        std::fs::rename(live, &old).map_err(io_at(live))?;
        std::fs::rename(stage, live).map_err(io_at(live))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Some(parent) = live.parent() {
        crate::util::fs::sync_dir(parent);
    }
    // `stage` now holds the old store.
    let _ = std::fs::remove_dir_all(stage);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let (Ok(a), Ok(b)) = (
        std::ffi::CString::new(a.as_os_str().as_bytes()),
        std::ffi::CString::new(b.as_os_str().as_bytes()),
    ) else {
        return false;
    };
    // SAFETY: two valid NUL-terminated paths; the call reads them and touches no other memory.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> bool {
    false
}

fn prepare_split(
    spec: &DatasetSpec,
    listing: &Listing,
    opts: &PrepareOptions,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<SplitReport, PrepareError> {
    let started = Instant::now();
    let plan = plan(spec, listing);
    let live = plan.dir.clone();
    let stage = staging_dir(&live);
    // A crash between the two renames of the fallback commit leaves only the new store.
    if !live.exists() && stage.join(manifest::FILE_NAME).is_file() {
        std::fs::rename(&stage, &live).map_err(io_at(&live))?;
    }
    check_folder_owner(spec, &live)?;
    let mine = part_range(plan.shards.len(), opts.part);
    let n = plan.shards.len();
    // good[k]: shard k of this plan is whole in `work` (checked or written by this run).
    let mut good = vec![false; n];
    // A committed store is never changed in place: a replacement is built beside it and swapped
    // in whole. Only when it already holds every shard of this plan (and no replacement is under
    // way) is its manifest simply written again.
    let work = if !live.join(manifest::FILE_NAME).is_file() {
        live.clone()
    } else {
        let whole_run = opts.part.is_none();
        let all_live: Vec<bool> = if whole_run && !stage.exists() {
            plan.shards.par_iter().map(|sp| intact(&live, sp)).collect()
        } else {
            Vec::new()
        };
        if !all_live.is_empty() && all_live.iter().all(|&ok| ok) {
            good.iter_mut().for_each(|g| *g = true);
            live.clone()
        } else {
            check_folder_owner(spec, &stage)?;
            std::fs::create_dir_all(&stage).map_err(io_at(&stage))?;
            sweep_temporaries(&stage)?;
            let range = if opts.merge { 0..n } else { mine.clone() };
            let in_stage: Vec<bool> = plan.shards[range.clone()]
                .par_iter()
                .map(|sp| intact(&stage, sp))
                .collect();
            for (k, ok) in range.zip(in_stage) {
                let sp = &plan.shards[k];
                if ok {
                    good[k] = true;
                } else if all_live
                    .get(k)
                    .copied()
                    .unwrap_or_else(|| intact(&live, sp))
                {
                    adopt(&live, &stage, &sp.file)?;
                    good[k] = true;
                }
            }
            stage.clone()
        }
    };
    std::fs::create_dir_all(&work).map_err(io_at(&work))?;
    let mut report = SplitReport {
        split: listing.split,
        part: opts.part,
        shards_planned: plan.shards.len(),
        shards_written: 0,
        shards_kept: 0,
        processed: 0,
        records: 0,
        skipped: 0,
        bytes: 0,
        seconds: 0.0,
        images_per_second: 0.0,
        manifest: None,
        empty_classes: Vec::new(),
    };
    if !opts.merge {
        sweep_temporaries(&work)?;
        let checked: Vec<bool> = plan.shards[mine.clone()]
            .par_iter()
            .map(|sp| good[sp.number] || intact(&work, sp))
            .collect();
        let todo: Vec<&ShardPlan> = plan.shards[mine.clone()]
            .iter()
            .zip(&checked)
            .filter(|(_, &ok)| !ok)
            .map(|(sp, _)| sp)
            .collect();
        for k in mine.clone() {
            good[k] = true; // kept, or written below (or the run stops)
        }
        let total: u64 = plan.shards[mine.clone()]
            .iter()
            .map(|s| (s.end - s.start) as u64)
            .sum();
        let todo_records: u64 = todo.iter().map(|s| (s.end - s.start) as u64).sum();
        report.shards_kept = mine.len() - todo.len();
        progress.start(listing.split.name(), total, total - todo_records);
        for sp in todo {
            if cancel.is_cancelled() {
                progress.finish();
                return Err(PrepareError::Interrupted {
                    split: listing.split,
                    written: report.shards_written,
                });
            }
            let written = write_shard(spec, listing, &work, sp, progress, cancel)?;
            match written {
                Some(n) => {
                    report.shards_written += 1;
                    report.processed += n;
                }
                None => {
                    progress.finish();
                    return Err(PrepareError::Interrupted {
                        split: listing.split,
                        written: report.shards_written,
                    });
                }
            }
        }
        progress.finish();
    }
    // Shards of other parts (or all of them, for `--merge`) are checked here.
    let unknown: Vec<usize> = (0..n).filter(|&k| !good[k]).collect();
    let found: Vec<bool> = unknown
        .par_iter()
        .map(|&k| intact(&work, &plan.shards[k]))
        .collect();
    for (&k, ok) in unknown.iter().zip(found) {
        good[k] = ok;
    }
    let missing: Vec<&ShardPlan> = plan.shards.iter().filter(|sp| !good[sp.number]).collect();
    // Assemble the manifest when every planned shard is there (always, for a whole run; for a
    // part, only if it happens to be the last to finish; `--merge` insists). A replacement built
    // beside a committed store is swapped in by a whole run or `--merge`, never by one part.
    let may_commit = work == live || opts.part.is_none();
    if missing.is_empty() && may_commit {
        let m = assemble(spec, listing, &plan, &work)?;
        if work != live {
            commit(&work, &live)?;
        }
        report.records = m.records;
        report.skipped = m.skipped;
        report.bytes = m.bytes;
        report.empty_classes = m
            .classes
            .iter()
            .filter(|c| c.records == 0)
            .map(|c| c.wnid.clone())
            .collect();
        report.manifest = Some(live.join(manifest::FILE_NAME));
    } else if opts.merge || opts.part.is_none() {
        return Err(PrepareError::Incomplete {
            split: listing.split,
            missing: missing.len(),
            planned: plan.shards.len(),
            first: missing[0].file.clone(),
        });
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.images_per_second = report.processed as f64 / report.seconds.max(1e-9);
    Ok(report)
}

/// Removes temporary files an interrupted run left behind.
fn sweep_temporaries(dir: &Path) -> Result<(), PrepareError> {
    for entry in std::fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// A record ready to append.
struct Prepared {
    payload: Vec<u8>,
    width: u32,
    height: u32,
    encoding: Encoding,
    flags: RecordFlags,
}

/// Decodes, checks, converts and encodes one source file; `Ok(Err(reason))` means skip it.
fn prepare_record(
    file: &SourceFile,
    policy: &StorePolicy,
) -> Result<Result<Prepared, String>, PrepareError> {
    let bytes = match std::fs::read(&file.path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err("file disappeared after listing".into()))
        }
        Err(source) => {
            return Err(PrepareError::SourceRead {
                path: file.path.clone(),
                source,
            })
        }
    };
    Ok(convert(bytes, policy).map_err(|e| format!("{}: {e}", e.kind())))
}

/// The store policy applied to one file's bytes.
fn convert(bytes: Vec<u8>, policy: &StorePolicy) -> Result<Prepared, DecodeError> {
    let decoded = imaging::decode_rgb8(&bytes, policy.max_pixels)?;
    let mut flags = 0u8;
    match decoded.color {
        SourceColor::Gray => flags |= RecordFlags::GRAY_SOURCE,
        SourceColor::Cmyk => flags |= RecordFlags::CMYK_SOURCE,
        _ => {}
    }
    if decoded.format == image::ImageFormat::Png {
        flags |= RecordFlags::PNG_SOURCE;
    }
    let cap = policy.max_shortest_side.0;
    let short = decoded.width.min(decoded.height);
    let keep = policy.passthrough
        && policy.encoding == Encoding::Jpeg
        && decoded.format == image::ImageFormat::Jpeg
        && matches!(decoded.color, SourceColor::Rgb | SourceColor::Gray)
        && short <= cap;
    if keep {
        return Ok(Prepared {
            payload: bytes,
            width: decoded.width,
            height: decoded.height,
            encoding: Encoding::Jpeg,
            flags: RecordFlags(flags | RecordFlags::PASSTHROUGH),
        });
    }
    let (mut w, mut h, mut rgb) = (decoded.width, decoded.height, decoded.rgb);
    if short > cap {
        let (nw, nh) = imaging::scaled_size(w, h, cap);
        rgb = imaging::resize_rgb8(&rgb, w, h, nw, nh, fast_image_resize::FilterType::Lanczos3);
        (w, h) = (nw, nh);
        flags |= RecordFlags::RESIZED;
    }
    let payload = match policy.encoding {
        Encoding::Raw => rgb,
        Encoding::Jpeg => {
            imaging::encode_jpeg(&rgb, w, h, policy.jpeg_quality.0).map_err(DecodeError::Corrupt)?
        }
    };
    Ok(Prepared {
        payload,
        width: w,
        height: h,
        encoding: policy.encoding,
        flags: RecordFlags(flags),
    })
}

/// Writes one shard. Returns the number of source files handled, or `None` if cancelled (the
/// partial shard is discarded).
fn write_shard(
    spec: &DatasetSpec,
    listing: &Listing,
    dir: &Path,
    sp: &ShardPlan,
    progress: &dyn Progress,
    cancel: &Cancel,
) -> Result<Option<u64>, PrepareError> {
    let path = dir.join(&sp.file);
    let mut writer = ShardWriter::create(&path, sp.hash)?;
    let mut meta = ShardMeta {
        dataset: spec.name.clone(),
        split: Some(listing.split),
        shard: sp.number,
        source_start: sp.start,
        source_end: sp.end,
        ..Default::default()
    };
    let files = &listing.files[sp.start..sp.end];
    for (c, chunk) in files.chunks(CHUNK).enumerate() {
        if cancel.is_cancelled() {
            return Ok(None); // the writer's Drop removes the temporary file
        }
        let results: Vec<Result<Result<Prepared, String>, PrepareError>> = chunk
            .par_iter()
            .map(|f| prepare_record(f, &spec.store))
            .collect();
        for (j, (file, result)) in chunk.iter().zip(results).enumerate() {
            let source_index = (sp.start + c * CHUNK + j) as u32;
            match result? {
                Ok(p) => {
                    let conv = &mut meta.conversions;
                    let f = p.flags;
                    if f.has(RecordFlags::PASSTHROUGH) {
                        conv.passthrough += 1;
                    } else {
                        conv.reencoded += 1;
                    }
                    conv.resized += f.has(RecordFlags::RESIZED) as u64;
                    conv.grayscale += f.has(RecordFlags::GRAY_SOURCE) as u64;
                    conv.cmyk += f.has(RecordFlags::CMYK_SOURCE) as u64;
                    conv.png += f.has(RecordFlags::PNG_SOURCE) as u64;
                    writer.append(
                        &file.key,
                        &p.payload,
                        file.label,
                        p.width,
                        p.height,
                        p.encoding,
                        p.flags,
                        source_index,
                    )?;
                }
                Err(reason) => {
                    tracing::warn!(file = %file.path.display(), %reason, "skipped");
                    meta.skipped.push(Skipped {
                        key: file.key.clone(),
                        reason,
                    });
                }
            }
        }
        progress.advance(chunk.len() as u64);
    }
    let meta_json = serde_json::to_vec(&meta).expect("shard meta serialises");
    writer.finish(&meta_json)?;
    Ok(Some(files.len() as u64))
}

/// Builds and writes the manifest and skipped report from the listing and the shard files.
fn assemble(
    spec: &DatasetSpec,
    listing: &Listing,
    plan: &Plan,
    dir: &Path,
) -> Result<Manifest, PrepareError> {
    let mut shards = Vec::with_capacity(plan.shards.len());
    let mut counts = vec![0u64; listing.classes.len()];
    let mut skipped = listing.skipped.clone();
    let mut conversions = Conversions::default();
    let mut bytes = 0u64;
    for sp in &plan.shards {
        let path = dir.join(&sp.file);
        let r = ShardReader::open(&path)?;
        let meta: ShardMeta =
            serde_json::from_slice(r.meta()).map_err(|e| ShardError::Incomplete {
                path: path.clone(),
                reason: format!("metadata is not valid JSON: {e}"),
            })?;
        for rec in r.records() {
            let rec = rec?;
            if let Some(c) = counts.get_mut(rec.label as usize) {
                *c += 1;
            }
        }
        skipped.extend(meta.skipped);
        conversions.add(&meta.conversions);
        bytes += r.header().file_len;
        shards.push(ManifestShard {
            file: sp.file.clone(),
            records: r.len() as u64,
            bytes: r.header().file_len,
            source_start: sp.start as u64,
            source_end: sp.end as u64,
            header_crc: r.header().header_crc,
        });
    }
    let records = shards.iter().map(|s| s.records).sum();
    let m = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        dataset: spec.name.clone(),
        split: listing.split,
        source: SourceInfo {
            kind: spec.source,
            root: spec.root.display().to_string(),
            labels_from: listing.labels_from.clone(),
            fingerprint: source::fingerprint(listing),
            files: (listing.files.len() + listing.skipped.len()) as u64,
        },
        store: spec.store.clone(),
        records_per_shard: plan.records_per_shard,
        records,
        skipped: skipped.len() as u64,
        bytes,
        conversions,
        classes: listing
            .classes
            .iter()
            .enumerate()
            .map(|(i, c)| ManifestClass {
                index: i as u32,
                wnid: c.wnid.clone(),
                name: c.name.clone(),
                records: counts[i],
            })
            .collect(),
        shards,
        checksum: String::new(),
    };
    let m = Manifest {
        checksum: m.content_checksum(),
        ..m
    };
    let skipped_path = dir.join(manifest::SKIPPED_FILE);
    crate::util::fs::write_atomic(&skipped_path, manifest::skipped_tsv(&skipped).as_bytes())
        .map_err(io_at(&skipped_path))?;
    let manifest_path = dir.join(manifest::FILE_NAME);
    crate::util::fs::write_atomic(&manifest_path, m.to_json().as_bytes())
        .map_err(io_at(&manifest_path))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_tile_the_shards() {
        for planned in [1usize, 2, 7, 100, 131] {
            for n in 1..=9u32 {
                let mut covered = Vec::new();
                for i in 0..n {
                    covered.extend(part_range(planned, Some(Part { index: i, count: n })));
                }
                assert_eq!(covered, (0..planned).collect::<Vec<_>>(), "{planned} / {n}");
            }
        }
        assert!("3/3".parse::<Part>().is_err());
        assert!("1/0".parse::<Part>().is_err());
        assert_eq!("2/8".parse::<Part>().unwrap(), Part { index: 2, count: 8 });
    }
}
