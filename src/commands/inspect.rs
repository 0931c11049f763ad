//! `vgg inspect`: what a prepared dataset holds (counts per class, sizes, encodings, shards).

use std::process::ExitCode;

use anyhow::Result;

use vgg::data::store::{self, InspectReport};

use super::{bytes, print_json, Common};

/// Show what a prepared dataset holds: counts per class, sizes, encodings, shards.
///
/// JSON keys: records, classes, shards, bytes, skipped, splits[...].
#[derive(clap::Args)]
pub struct Args {
    /// A shard directory (a split's, or a dataset's with one folder per split), or a
    /// dataset name from the registry.
    target: String,
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let report = store::inspect(&c.shard_dir(&a.target)?)?;
    if a.json {
        print_json(&report)?;
    } else {
        print_inspect(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// A `k v, k v` list of a count map.
fn counts<'a>(items: impl IntoIterator<Item = (&'a String, &'a u64)>) -> String {
    items
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_inspect(report: &InspectReport) {
    const SHOW: usize = 20;
    for s in &report.splits {
        println!("{} / {}  ({})", s.dataset, s.split, s.dir.display());
        println!(
            "  records {}  skipped {}  shards {}  size {}  encodings {}",
            s.records,
            s.skipped,
            s.shards.len(),
            bytes(s.bytes),
            counts(&s.encodings)
        );
        println!(
            "  shortest side min/mean/max {}/{:.0}/{}  width {:.0} mean  height {:.0} mean  record {} mean",
            s.shortest_side.min,
            s.shortest_side.mean,
            s.shortest_side.max,
            s.width.mean,
            s.height.mean,
            bytes(s.record_bytes.mean as u64)
        );
        let c = &s.conversions;
        println!(
            "  stored as-is {}  re-encoded {}  resized {}  from grayscale {}  from CMYK {}  from PNG {}",
            c.passthrough, c.reencoded, c.resized, c.grayscale, c.cmyk, c.png
        );
        if !s.skipped_by_reason.is_empty() {
            println!("  skipped by reason: {}", counts(&s.skipped_by_reason));
        }
        println!("  classes ({}):", s.classes.len());
        let wnid_w = s.classes.iter().map(|c| c.wnid.len()).max().unwrap_or(0);
        let name_w = s
            .classes
            .iter()
            .map(|c| c.name.len())
            .max()
            .unwrap_or(0)
            .min(40);
        for c in s.classes.iter().take(SHOW) {
            println!(
                "    {:>4}  {:<wnid_w$}  {:<name_w$}  {:>8}",
                c.index, c.wnid, c.name, c.records
            );
        }
        if s.classes.len() > SHOW {
            let min = s.classes.iter().map(|c| c.records).min().unwrap_or(0);
            let max = s.classes.iter().map(|c| c.records).max().unwrap_or(0);
            println!(
                "    ... {} more (records per class {min}..{max}; --json for all)",
                s.classes.len() - SHOW
            );
        }
        println!("  shards:");
        for sh in s.shards.iter().take(SHOW) {
            println!(
                "    {:<24} {:>8} records  {:>10}",
                sh.file,
                sh.records,
                bytes(sh.bytes)
            );
        }
        if s.shards.len() > SHOW {
            println!("    ... {} more", s.shards.len() - SHOW);
        }
    }
    println!(
        "total: {} records, {} classes, {} shards, {}, {} skipped",
        report.records,
        report.classes,
        report.shards,
        bytes(report.bytes),
        report.skipped
    );
}
