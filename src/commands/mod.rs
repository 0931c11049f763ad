//! The binary's commands for the training and evaluation stages, one file each (binary only:
//! argument structs, progress display and output; the work is in the library).

pub mod eval;
pub mod export;
pub mod train;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use vgg::config::model::VggConfig;
use vgg::config::pipeline::Pipeline;

/// The global options every command sees.
pub struct Common {
    pub datasets: PathBuf,
    pub quiet: bool,
}

/// A network named on the command line: a row of the paper's Table 1 (A, A-LRN, B, C, D, E, or
/// torchvision's names vgg11, vgg13, vgg16, vgg19), or a pipeline file whose [model] table
/// defines it, returned with the pipeline.
pub fn network(arg: &str) -> Result<(VggConfig, Option<Pipeline>)> {
    let alias = match arg.trim().to_ascii_lowercase().trim_start_matches("vgg") {
        "11" => Some("A"),
        "13" => Some("B"),
        "16" => Some("D"),
        "19" => Some("E"),
        _ => None,
    };
    if let Some(name) = alias {
        return Ok((VggConfig::paper(name)?, None));
    }
    let path = Path::new(arg);
    if VggConfig::paper(arg).is_ok() || !path.exists() {
        return Ok((VggConfig::paper(arg)?, None));
    }
    let p = Pipeline::load(path)?;
    let c = p
        .model
        .clone()
        .with_context(|| format!("{arg} has no [model] table"))?;
    Ok((c, Some(p)))
}
