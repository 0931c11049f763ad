//! `vgg weights`: converts between torchvision's VGG `state_dict` (as a safetensors file) and
//! this project's checkpoints, so published weights can be evaluated with the paper's protocols
//! and networks trained here can be loaded into PyTorch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use vgg::config::model::VggConfig;
use vgg::net::checkpoint::{self, Checkpoint};

use super::Common;

/// What `vgg weights --help` and `vgg weights from-torchvision --help` say about torchvision's
/// files (after the options, so the struct's doc comment stays the one-line summary).
macro_rules! torchvision_help {
    () => {
        "\
torchvision's vgg11(), vgg13(), vgg16() and vgg19() are the paper's configurations A, B, D
and E (11, 13, 16 and 19 weight layers). Their state_dicts come as pickled .pt files; save
one as safetensors first, in Python:

    import torchvision, safetensors.torch
    model = torchvision.models.vgg16(weights=\"IMAGENET1K_V1\")
    safetensors.torch.save_file(model.state_dict(), \"vgg16.safetensors\")

The batch-norm variants (vgg11_bn() ... vgg19_bn()) are refused: they are not the paper's
networks and have layers this project does not build."
    };
}

/// Examples of `vgg weights from-torchvision`.
macro_rules! from_torchvision_examples {
    () => {
        "\
Examples:
  vgg weights from-torchvision vgg16.safetensors --config D --out vgg16.ck.safetensors
  vgg weights from-torchvision vgg19.safetensors --config vgg19 --out e.safetensors
  vgg weights from-torchvision tiny.safetensors --config pipelines/demo.toml \\
      --out tiny.ck.safetensors"
    };
}

/// Convert weights between torchvision's VGG state_dict and this project's checkpoints.
#[derive(clap::Args)]
#[command(after_long_help = torchvision_help!())]
pub struct Args {
    #[command(subcommand)]
    what: WeightsCommand,
}

#[derive(clap::Subcommand)]
enum WeightsCommand {
    /// Read a torchvision VGG state_dict (safetensors) and write a checkpoint.
    ///
    /// Tensor names `features.N.weight` and `classifier.{0,3,6}.*` are mapped onto conv1_1 ..
    /// fc8 for the configuration given; every tensor must be there with its expected shape, and
    /// no other tensor may be. Float16, bfloat16 and float64 tensors are converted to float32.
    /// The checkpoint has no momentum buffers and no trainer state: evaluate it with `vgg
    /// eval`, or start a training run from it.
    #[command(
        after_long_help = concat!(torchvision_help!(), "\n\n", from_torchvision_examples!()),
        after_help = from_torchvision_examples!()
    )]
    FromTorchvision {
        /// The state_dict saved with `safetensors.torch.save_file`.
        file: PathBuf,
        /// The network: A, B, D, E (torchvision's vgg11, vgg13, vgg16, vgg19; those names and
        /// 11, 13, 16, 19 work too), A-LRN or C, or a pipeline file whose [model] table
        /// defines it.
        #[arg(long, value_name = "CONFIG")]
        config: String,
        /// Number of classes (default: the pipeline's, or the rows of classifier.6.weight in
        /// FILE).
        #[arg(long, value_name = "N")]
        classes: Option<u32>,
        /// The checkpoint to write.
        #[arg(long, value_name = "CHECKPOINT")]
        out: PathBuf,
        /// Print the summary as JSON (out, config, classes, parameters, tensors).
        #[arg(long)]
        json: bool,
    },
    /// Write a checkpoint's parameters under torchvision's state_dict names (safetensors).
    ///
    /// Load it in Python with `model.load_state_dict(safetensors.torch.load_file(FILE))`; for
    /// the paper's configurations with 1000 classes, `model` is `torchvision.models.vgg11()`
    /// (A), `vgg13()` (B), `vgg16()` (D) or `vgg19()` (E).
    #[command(
        after_help = "Example:\n  vgg weights to-torchvision runs/vgg-d/best.safetensors --out vgg16-mine.safetensors"
    )]
    ToTorchvision {
        /// A checkpoint (from `vgg train` or `vgg weights from-torchvision`).
        checkpoint: PathBuf,
        /// The safetensors file to write.
        #[arg(long, value_name = "FILE.safetensors")]
        out: PathBuf,
        /// Print the summary as JSON (out, config, classes, parameters, tensors).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(_c: &Common, a: &Args) -> Result<ExitCode> {
    match &a.what {
        WeightsCommand::FromTorchvision {
            file,
            config,
            classes,
            out,
            json,
        } => {
            refuse_same_file(&[file], out)?;
            let (tensors, _) = checkpoint::read_tensors(file)?;
            let (mut c, from_pipeline) = resolve_config(config)?;
            match classes {
                Some(n) => {
                    anyhow::ensure!(*n >= 2, "--classes must be at least 2");
                    c.classes = *n;
                }
                // A paper configuration's 1000 is only a default: follow the file's head.
                None if !from_pipeline => {
                    if let Some(t) = tensors.iter().find(|t| t.name == "classifier.6.weight") {
                        if let Some(&rows) = t.shape.first().filter(|&&r| r >= 2) {
                            c.classes = u32::try_from(rows).context("too many classes")?;
                        }
                    }
                }
                None => {}
            }
            let params = checkpoint::from_torchvision(&c, &tensors).with_context(|| {
                format!("{} is not a state_dict of VGG {}", file.display(), c.name)
            })?;
            let ck = Checkpoint {
                config: c,
                params,
                momenta: None,
                state: None,
            };
            create_parent(out)?;
            ck.save(out)?;
            report(
                out,
                &ck,
                tensors.len(),
                *json,
                &format!("from {}", file.display()),
            )
        }
        WeightsCommand::ToTorchvision {
            checkpoint: path,
            out,
            json,
        } => {
            refuse_same_file(&[path], out)?;
            let ck = Checkpoint::load(path)?;
            let tensors = checkpoint::to_torchvision(&ck);
            let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
            create_parent(out)?;
            checkpoint::write_tensors(out, &tensors, metadata)?;
            if !json {
                let c = &ck.config;
                let paper = ["A", "B", "D", "E"].contains(&c.name.as_str())
                    && c.classes == 1000
                    && c.input == 224;
                if c.lrn.is_some() {
                    eprintln!(
                        "note: network {} has an LRN layer, which torchvision's VGG lacks; the \
                         `features` indices count it as one module",
                        c.name
                    );
                } else if !paper {
                    eprintln!(
                        "note: network {} is not one of torchvision's vgg11/13/16/19 with 1000 \
                         classes at 224 pixels; build a matching torchvision `VGG` to load it",
                        c.name
                    );
                }
            }
            report(
                out,
                &ck,
                tensors.len(),
                *json,
                &format!("from {}", path.display()),
            )
        }
    }
}

/// A configuration by name (the paper's, or torchvision's model names) or from a pipeline
/// file's [model] table; the flag says which.
fn resolve_config(config: &str) -> Result<(VggConfig, bool)> {
    let lower = config.trim().to_ascii_lowercase();
    if lower.ends_with("_bn") || lower.ends_with("-bn") {
        bail!(
            "`{config}` is a batch-norm VGG; batch-norm variants are not the paper's networks \
             and cannot be converted"
        );
    }
    let (c, pipeline) = super::network(config)?;
    Ok((c, pipeline.is_some()))
}

/// Refuses an output that is the same file as one of the inputs (also through symlinks,
/// hard links or another spelling of the path): writing it would replace the input.
pub(super) fn refuse_same_file(inputs: &[&Path], out: &Path) -> Result<()> {
    for input in inputs {
        if same_file(input, out) {
            bail!(
                "--out {} is the input {} itself: writing it would replace the input; choose \
                 another output file",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

/// Whether `out` names the file `input` names: the same (device, inode) when both exist.
/// An output that does not exist yet is where it would be created: its path made absolute,
/// `.` and `..` resolved (the folders `create_parent` makes are plain ones), and its longest
/// existing ancestor canonicalised (symlinks followed), compared with the canonical input.
fn same_file(input: &Path, out: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    use std::path::Component;
    let Ok(inp) = std::fs::metadata(input) else {
        return false; // a missing input is reported by the read
    };
    if let Ok(o) = std::fs::metadata(out) {
        return (inp.dev(), inp.ino()) == (o.dev(), o.ino());
    }
    let (Ok(input), Ok(cwd)) = (input.canonicalize(), std::env::current_dir()) else {
        return false;
    };
    let mut target = PathBuf::new();
    for c in cwd.join(out).components() {
        match c {
            Component::ParentDir => {
                target.pop();
            }
            Component::CurDir => {}
            other => target.push(other),
        }
    }
    let mut rest = Vec::new();
    while !target.exists() {
        match target.file_name() {
            Some(name) => rest.push(name.to_owned()),
            None => return false,
        }
        target.pop();
    }
    let Ok(mut resolved) = target.canonicalize() else {
        return false;
    };
    resolved.extend(rest.iter().rev());
    resolved == input
}

fn create_parent(out: &Path) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// `vgg weights ... --json`.
#[derive(serde::Serialize)]
struct WeightsJson<'a> {
    out: String,
    config: &'a str,
    classes: u32,
    input: u32,
    parameters: usize,
    tensors: usize,
}

fn report(out: &Path, ck: &Checkpoint, tensors: usize, json: bool, from: &str) -> Result<ExitCode> {
    let c = &ck.config;
    let parameters: usize = ck.params.iter().map(|t| t.data.len()).sum();
    if json {
        super::print_json(&WeightsJson {
            out: out.display().to_string(),
            config: &c.name,
            classes: c.classes,
            input: c.input,
            parameters,
            tensors,
        })?;
    } else {
        println!(
            "{}: VGG {} ({} classes, input {}), {} tensors, {} parameters, {from}",
            out.display(),
            c.name,
            c.classes,
            c.input,
            tensors,
            parameters
        );
    }
    Ok(ExitCode::SUCCESS)
}
