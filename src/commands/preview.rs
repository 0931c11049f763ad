//! `vgg preview`: a contact sheet of augmented training samples (what the network sees).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};

use vgg::data::preview::training_tiles;
use vgg::report::contact_sheet::{self, SheetOptions};

use super::Common;

/// Write a contact sheet of augmented training samples (what the network sees).
///
/// Samples are the first COUNT of epoch E in the pipeline's order, augmented exactly as in
/// training (same seed, same per-sample randomness), then de-normalised back to viewable
/// colour (the PCA lighting shift stays visible) and captioned with their class names.
#[derive(clap::Args)]
pub struct Args {
    /// Pipeline file (pipelines/*.toml).
    pipeline: PathBuf,
    /// Output PNG file.
    #[arg(long, value_name = "FILE.png")]
    out: PathBuf,
    /// Number of augmented samples to draw (at least 1).
    #[arg(long, default_value_t = 32, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    count: u64,
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Epoch to draw from (0 is the first; at most 1000000).
    #[arg(long, default_value_t = 0, value_name = "E", value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    epoch: u64,
    /// Use this dataset instead of the pipeline's.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    #[arg(long, default_value_t = 8)]
    columns: u32,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let d = c.pipeline_data(&a.pipeline, a.dataset.as_deref())?;
    let (p, name) = (&d.pipeline, &d.dataset);
    let tiles = training_tiles(p, d.train.clone(), a.count as usize, a.epoch, a.threads)?;
    anyhow::ensure!(!tiles.is_empty(), "the train split of `{name}` is empty");
    let opts = SheetOptions {
        columns: a.columns,
        font_scale: if p.train.crop >= 160 { 2 } else { 1 },
        ..Default::default()
    };
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    contact_sheet::write_png(&a.out, &tiles, &opts)?;
    println!(
        "{}: {} augmented samples of {name} (epoch {}, pipeline {})",
        a.out.display(),
        tiles.len(),
        a.epoch,
        p.name
    );
    Ok(ExitCode::SUCCESS)
}
