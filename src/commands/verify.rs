//! `vgg verify`: every checksum of a prepared dataset, and that every record decodes.

use std::process::ExitCode;

use anyhow::Result;

use vgg::data::store;

use super::progress::CANCEL;
use super::{bytes, print_json, Common};

/// Check every checksum and that every record decodes; exits 1 naming shard and record.
#[derive(clap::Args)]
pub struct Args {
    /// A shard directory or a dataset name.
    target: String,
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let dir = c.shard_dir(&a.target)?;
    // Given a dataset's name, the store must be that dataset's (not one copied there).
    if let Ok(spec) = c.dataset(&a.target) {
        if spec.shards == dir {
            store::check_owner_of_splits(&dir, &spec)?;
        }
    }
    let report = store::verify(&dir, a.threads, &c.bars(a.json), &CANCEL)?;
    if a.json {
        print_json(&report)?;
    } else {
        for f in &report.failures {
            match (f.record, &f.key) {
                (Some(i), Some(k)) => {
                    eprintln!("FAIL {} record {i} ({k}): {}", f.shard.display(), f.reason)
                }
                (Some(i), None) => {
                    eprintln!("FAIL {} record {i}: {}", f.shard.display(), f.reason)
                }
                _ => eprintln!("FAIL {}: {}", f.shard.display(), f.reason),
            }
        }
        println!(
            "{}: {} shards, {} records, {}: {}",
            dir.display(),
            report.shards,
            report.records,
            bytes(report.bytes),
            if report.ok() {
                "all checksums match and every record decodes".to_string()
            } else {
                format!("{} problem(s)", report.failures.len())
            }
        );
    }
    Ok(if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
