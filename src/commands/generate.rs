//! `vgg generate`: a synthetic dataset's image files (what `vgg prepare` does first when they
//! are missing).

use std::process::ExitCode;

use anyhow::{bail, Result};

use vgg::config::registry::SourceKind;
use vgg::data::source::synthetic;

use super::{bytes, print_json, Common};

/// Generate a synthetic dataset's image files (done by `prepare` when missing).
#[derive(clap::Args)]
pub struct Args {
    /// Dataset name (its source must be "synthetic").
    dataset: String,
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let spec = c.dataset(&a.dataset)?;
    if spec.source != SourceKind::Synthetic {
        bail!(
            "dataset `{}` has source `{}`; only synthetic datasets are generated",
            a.dataset,
            spec.source
        );
    }
    let s = spec.synthetic.clone().unwrap_or_default();
    let summary = synthetic::generate(&s, &spec.root)?;
    if a.json {
        print_json(&summary)?;
    } else if summary.reused {
        println!(
            "{}: already generated ({} images)",
            summary.root.display(),
            summary.images
        );
    } else {
        println!(
            "{}: generated {} images, {}",
            summary.root.display(),
            summary.images,
            bytes(summary.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
