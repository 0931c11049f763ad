//! The binary's commands, one file each: argument structs (clap), the resolve step that turns
//! raw arguments into the library's objects, progress display and output. The work is in the
//! library.
//!
//! Arguments come in two steps, as in ripgrep: clap parses and type-checks each value
//! (`--device cuda:1` is a [`Device`](vgg::net::session::Device) by then), then [`Common`]
//! resolves names against the world: the registry file, a dataset's prepared splits, a
//! network named by its Table 1 row, torchvision name or pipeline file. Each resolution exists
//! once here, with one wording for its errors.

pub mod bench;
pub mod datasets;
pub mod eval;
pub mod export;
pub mod generate;
pub mod inspect;
pub mod model;
pub mod prepare;
pub mod preview;
pub mod progress;
pub mod runtime;
pub mod train;
pub mod verify;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use vgg::config::model::VggConfig;
use vgg::config::pipeline::Pipeline;
use vgg::config::registry::SourceKind;
use vgg::config::registry::{DatasetSpec, Registry};
use vgg::data::manifest::ManifestError;
use vgg::data::source::Split;
use vgg::data::store::{PreparedSplit, StoreError};
use vgg::net::session::{Device, Devices};
use vgg::train::parallel::Replicas;

use progress::Bars;

/// The global options every command sees, and the resolve step over them.
pub struct Common {
    /// The dataset registry file (`--datasets`).
    pub datasets: PathBuf,
    /// No progress bars (`--quiet`).
    pub quiet: bool,
}

impl Common {
    /// The registry file, parsed and validated.
    pub fn registry(&self) -> Result<Registry> {
        Ok(Registry::load(&self.datasets)?)
    }

    /// The registry entry of dataset `name`.
    pub fn dataset(&self, name: &str) -> Result<DatasetSpec> {
        Ok(self.registry()?.get(name)?.clone())
    }

    /// The prepared `split` of dataset `name`, opened and checked; the one place that says how
    /// to prepare it when it is not.
    pub fn open_split(&self, name: &str, split: Split) -> Result<Arc<PreparedSplit>> {
        let spec = self.dataset(name)?;
        let dir = spec.shards.join(split.name());
        let s = match PreparedSplit::open(&dir) {
            Ok(s) => s,
            Err(e) if not_prepared(&e) => {
                let source_dir = spec.root.join(split.name());
                if spec.source != SourceKind::Synthetic && !spec.root.is_dir() {
                    anyhow::bail!(
                        "the {split} split of dataset `{name}` is not prepared, and the dataset's root {} does not exist: set `root` in {} to the folder holding train/ and val/, then run `vgg prepare {name}`",
                        spec.root.display(),
                        self.datasets.display()
                    );
                }
                if spec.source != SourceKind::Synthetic && !source_dir.is_dir() {
                    anyhow::bail!(
                        "dataset `{name}` has no {split} split: its source {} has no {split}/ folder",
                        spec.root.display()
                    );
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "the {split} split of dataset `{name}` is not prepared (run `vgg prepare {name} --split {split}`)"
                )));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "the {split} split of dataset `{name}` cannot be read (`vgg prepare {name} --split {split}` redoes damaged shards and keeps whole ones; `vgg verify {name}` lists every problem)"
                )))
            }
        };
        s.check_dataset(&spec)?;
        Ok(Arc::new(s))
    }

    /// A pipeline file and the prepared train split of its dataset (or of `dataset`, which
    /// replaces the pipeline's), with the dataset's name: what every command that runs a
    /// pipeline's loader starts from.
    pub fn pipeline_data(&self, pipeline: &Path, dataset: Option<&str>) -> Result<PipelineData> {
        let pipeline = Pipeline::load(pipeline)?;
        let dataset = pipeline_dataset(&pipeline, dataset)?;
        let train = self.open_split(&dataset, Split::Train)?;
        Ok(PipelineData {
            pipeline,
            dataset,
            train,
        })
    }

    /// A shard folder given as a path, or a dataset name whose shard folder is meant. A bare
    /// name that the registry knows means the dataset, even when a folder of that name is in
    /// the current directory (a note says so; `./NAME` means the folder).
    pub fn shard_dir(&self, target: &str) -> Result<PathBuf> {
        let p = Path::new(target);
        let bare = !target.contains(std::path::MAIN_SEPARATOR) && !target.starts_with('.');
        if bare {
            if let Ok(spec) = self.registry().and_then(|r| Ok(r.get(target)?.clone())) {
                if p.exists() && !self.quiet {
                    eprintln!(
                        "note: `{target}` is a dataset in {}; using its shards {} (write ./{target} for the folder here)",
                        self.registry()?.path.display(),
                        spec.shards.display()
                    );
                }
                return Ok(spec.shards);
            }
        }
        if p.exists() {
            return Ok(p.to_path_buf());
        }
        let reg = self.registry().with_context(|| {
            format!("`{target}` is not a folder, and the registry could not be read to look it up as a dataset")
        })?;
        Ok(reg.get(target)?.shards.clone())
    }

    /// Progress bars, hidden with `--quiet` or when the output is JSON.
    pub fn bars(&self, json: bool) -> Bars {
        Bars::new(self.quiet || json)
    }
}

/// The dataset a pipeline runs on: `--dataset` when given, else its `dataset =` key.
pub fn pipeline_dataset(p: &Pipeline, dataset: Option<&str>) -> Result<String> {
    match dataset {
        Some(d) => Ok(d.to_string()),
        None if p.dataset.is_empty() => anyhow::bail!(
            "{} has no `dataset = \"NAME\"` key and no --dataset NAME was given: name the registry dataset in one of them",
            p.path.display()
        ),
        None => Ok(p.dataset.clone()),
    }
}

/// Whether opening a split failed because it was never prepared (no manifest), not because it
/// is damaged.
fn not_prepared(e: &StoreError) -> bool {
    match e {
        StoreError::NotPrepared { .. } => true,
        StoreError::Manifest(ManifestError::Io { source, .. }) => {
            source.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

/// A pipeline resolved with its data ([`Common::pipeline_data`]).
pub struct PipelineData {
    pub pipeline: Pipeline,
    /// The dataset's name in the registry.
    pub dataset: String,
    /// Its prepared train split.
    pub train: Arc<PreparedSplit>,
}

/// A split named on the command line.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Val,
    /// Every split the dataset has.
    All,
}

impl SplitArg {
    /// The splits meant: one, or all (an empty list).
    pub fn splits(self) -> Vec<Split> {
        match self {
            SplitArg::Train => vec![Split::Train],
            SplitArg::Val => vec![Split::Val],
            SplitArg::All => Vec::new(),
        }
    }

    /// The one split meant, for commands whose `--split` offers only train and val.
    ///
    /// # Panics
    ///
    /// On `All` (such a command's value parser does not offer it).
    pub fn one(self) -> Split {
        match self {
            SplitArg::Train => Split::Train,
            SplitArg::Val => Split::Val,
            SplitArg::All => panic!("--split all reached a command that takes one split"),
        }
    }
}

/// A network named on the command line: a row of the paper's Table 1 (A, A-LRN, B, C, D, E, or
/// torchvision's names vgg11, vgg13, vgg16, vgg19, or just 11, 13, 16, 19), or a pipeline file
/// whose [model] table defines it, returned with the pipeline.
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

/// The devices of a run's `--replicas` on `device` for pipeline `p` with `accumulate`
/// micro-batches per replica in each of `world` processes ([`Replicas::resolve`]: `auto`
/// gives small networks two CPU replicas). A count that cannot split the batch is refused
/// here, before a run directory is touched.
pub fn replica_devices(
    device: &Devices,
    replicas: Replicas,
    p: &Pipeline,
    accumulate: usize,
    world: usize,
) -> Result<Vec<Device>> {
    let batch = p.loader.batch_size / world.max(1);
    let n = match &p.model {
        Some(config) => replicas.resolve(config, device.list == [Device::Cpu], batch, accumulate),
        None => match replicas {
            Replicas::Count(n) => n,
            Replicas::Auto => 1,
        },
    };
    let k = accumulate.max(1);
    anyhow::ensure!(
        n <= batch && batch.is_multiple_of(n * k),
        "--replicas {n}: a batch of {batch} images{} does not split into {n} replica(s) x {k} \
         micro-batch(es) of equal size",
        if world > 1 { " per process" } else { "" }
    );
    device.replicas(n).map_err(anyhow::Error::msg)
}

/// Prints `value` as pretty JSON on stdout (the `--json` output of every command).
pub fn print_json(value: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A byte count for people: `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
