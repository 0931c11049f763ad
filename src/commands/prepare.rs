//! `vgg prepare`: a registry dataset's image files into shards and a manifest per split.

use std::process::ExitCode;

use anyhow::Result;

use vgg::data::manifest::SKIPPED_FILE;
use vgg::data::prepare::{self, Part, PrepareOptions, SplitReport};

use super::progress::CANCEL;
use super::{bytes, print_json, Common, SplitArg};

/// Store a dataset's images into memory-mapped shards with a manifest.
///
/// Decode-checks every file, converts grayscale/CMYK/PNG to RGB, downscales images whose
/// shortest side exceeds the store cap, keeps source JPEG bytes untouched when they are
/// already within it, and writes shards of about `shard_size` bytes. Files that cannot be
/// used (truncated, corrupt, empty, not images, decompression bombs) are skipped and listed
/// in skipped.tsv beside the manifest. Re-running after an interruption keeps finished
/// shards and redoes the rest.
#[derive(clap::Args)]
#[command(
    after_help = "Splitting over machines: run `--part I/N` for I = 0..N-1 (e.g. a Slurm array or an\nindexed Kubernetes job) into the same shard directory, then once `--merge`. The merged result\nis byte-identical to a single-machine run."
)]
pub struct Args {
    /// Dataset name from the registry.
    dataset: String,
    #[arg(long, value_enum, default_value = "all")]
    split: SplitArg,
    /// Prepare only part I of N (0-based), a deterministic disjoint slice of the shards.
    #[arg(long, value_name = "I/N")]
    part: Option<Part>,
    /// Worker threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Only assemble the manifest from the shards the parts wrote.
    #[arg(long, conflicts_with = "part")]
    merge: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let spec = c.dataset(&a.dataset)?;
    let opts = PrepareOptions {
        splits: a.split.splits(),
        part: a.part,
        threads: a.threads,
        merge: a.merge,
    };
    // One prepare of a whole dataset at a time (parts of one, run with --part on several
    // machines, write disjoint shards and are not locked).
    let _lock = match a.part {
        None => Some(vgg::util::lock::FolderLock::acquire(
            &spec.shards,
            "vgg prepare",
        )?),
        Some(_) => None,
    };
    let reports = prepare::prepare(&spec, &opts, &c.bars(a.json), &CANCEL)?;
    if a.json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            print_report(r, &a.dataset);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(r: &SplitReport, dataset: &str) {
    let part = r
        .part
        .map(|p| format!(" (part {}/{})", p.index, p.count))
        .unwrap_or_default();
    println!(
        "{}{part}: {} shards planned, {} written, {} kept from an earlier run; {} source files processed at {:.1} images/s",
        r.split, r.shards_planned, r.shards_written, r.shards_kept, r.processed, r.images_per_second
    );
    match &r.manifest {
        Some(m) => {
            println!(
                "{}: {} records, {} skipped, {}; manifest {}",
                r.split,
                r.records,
                r.skipped,
                bytes(r.bytes),
                m.display()
            );
            if !r.empty_classes.is_empty() {
                eprintln!(
                    "warning: {}: {} class(es) have no images: {}; a network trained on this split would learn them never to occur (`vgg train` refuses it): fill or remove these folders and prepare again",
                    r.split,
                    r.empty_classes.len(),
                    r.empty_classes.join(", ")
                );
            }
            if r.skipped > 0 {
                println!(
                    "{}: skipped files and reasons: {}",
                    r.split,
                    m.with_file_name(SKIPPED_FILE).display()
                );
            }
        }
        None => println!(
            "{}: other parts still missing; when all parts are done run `vgg prepare {dataset} --split {} --merge`",
            r.split, r.split
        ),
    }
}
