//! `vgg model export`: writes a configuration's forward, dense-evaluation or training-step graph
//! as a standard `.onnx` file (for ONNX Runtime elsewhere, Netron, or the `onnx` checker).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use vgg::net::checkpoint::Checkpoint;
use vgg::net::graph::vgg::{self as graphs, InputForm, StepOptions};

use super::Common;

/// Write the forward, dense-evaluation or training-step graph as an ONNX file.
///
/// Without flags: the forward graph at the training input size (`images` [batch, 3, S, S] ->
/// `logits`, `probabilities`). --dense: the dense-evaluation graph (FC layers as convolutions,
/// any input at least S; outputs the spatially averaged `scores` and their soft-max).
/// --train-step: one SGD step (forward, backward and update as one graph of standard
/// operators; inputs and outputs are documented in the file's doc strings and the README).
///
/// Parameters are graph inputs named `conv1_1.weight` ... `fc8.bias` (torchvision layout), so
/// one set of weights serves every graph; --weights embeds a checkpoint's values instead.
/// The files use ONNX opset 17, IR version 8.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vgg model export D --out vgg16.onnx\n  vgg model export D --dense --weights runs/d/best.safetensors --out vgg16-dense.onnx\n  vgg model export pipelines/demo.toml --train-step --out demo-step.onnx"
)]
pub struct Args {
    /// A, A-LRN, B, C, D, E, or a pipeline file with a [model] table.
    config: String,
    /// Output file.
    #[arg(long, value_name = "FILE.onnx")]
    out: PathBuf,
    /// The dense-evaluation graph.
    #[arg(long, conflicts_with = "train_step")]
    dense: bool,
    /// The training-step graph.
    #[arg(long)]
    train_step: bool,
    /// Embed this checkpoint's parameters (forward and dense graphs).
    #[arg(long, value_name = "CHECKPOINT", conflicts_with = "train_step")]
    weights: Option<PathBuf>,
    /// Number of classes (default: 1000, or the pipeline's).
    #[arg(long, value_name = "N")]
    classes: Option<u32>,
    /// Batch size of the training step (default: the pipeline's, else 256).
    #[arg(long, value_name = "N")]
    batch: Option<usize>,
    /// The training step takes uint8 NHWC crops plus a per-image RGB shift instead of float32.
    #[arg(long)]
    uint8: bool,
}

pub fn run(_c: &Common, a: &Args) -> Result<ExitCode> {
    let (mut config, pipeline) = super::network(&a.config)?;
    if let Some(n) = a.classes {
        config.classes = n;
    }
    let mut graph = if a.train_step {
        let mut opts = StepOptions::default();
        if let Some(p) = &pipeline {
            opts.batch = p.loader.batch_size;
            opts.momentum = p.optimizer.momentum;
            opts.weight_decay = p.optimizer.weight_decay;
            opts.decay_biases = p.optimizer.decay_biases;
        }
        if let Some(b) = a.batch {
            opts.batch = b;
        }
        if a.uint8 {
            opts.input = InputForm::U8Nhwc;
        }
        graphs::train_step_graph(&config, &opts)?
    } else if a.dense {
        graphs::dense_graph(&config)
    } else {
        graphs::forward_graph(&config)
    };
    if let Some(path) = &a.weights {
        super::weights::refuse_same_file(&[path], &a.out)?;
        let ck = Checkpoint::load(path)?;
        if ck.config.layers() != config.layers() {
            bail!(
                "{} holds configuration {} ({} classes), not {} ({} classes)",
                path.display(),
                ck.config.name,
                ck.config.classes,
                config.name,
                config.classes
            );
        }
        for t in ck.params {
            let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
            graph.freeze(&t.name, &dims, t.data);
        }
    }
    let bytes = graph.encode();
    vgg::util::fs::write_atomic(&a.out, &bytes)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    println!(
        "{}: {} graph of {} ({} nodes, {:.1} MiB)",
        a.out.display(),
        if a.train_step {
            "training-step"
        } else if a.dense {
            "dense-evaluation"
        } else {
            "forward"
        },
        config.name,
        graph.nodes.len(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    Ok(ExitCode::SUCCESS)
}
