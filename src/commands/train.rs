//! `vgg train`: resolves the pipeline's dataset, starts or resumes a run, and draws a progress
//! bar per epoch with a one-line summary after each.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use vgg::config::pipeline::Pipeline;
use vgg::config::registry::Registry;
use vgg::data::source::Split;
use vgg::data::store::PreparedSplit;
use vgg::net::session::{Device, SessionSettings};
use vgg::train::metrics::EpochRecord;
use vgg::train::{self, Ending, TrainOptions, TrainProgress};

use super::Common;

/// Train a network with the paper's protocol (Section 3.1).
///
/// The pipeline file says everything: the dataset (from datasets.toml, prepared with `vgg
/// prepare`), the network ([model]), the augmentation ([[train.stages]]), the loader, the
/// optimiser ([optimizer]), the learning-rate schedule ([schedule]) and the run's length,
/// initialisation and checkpoints ([training]); flags override single values.
///
/// The run directory gets last.safetensors (every epoch, every `checkpoint_every` steps and
/// on Ctrl-C), best.safetensors (best validation top-1 error), metrics.jsonl and plots.png.
/// `--resume` continues from last.safetensors exactly where it stopped: same batches, same
/// augmentation, same dropout masks as an uninterrupted run.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  vgg train pipelines/demo.toml\n  vgg train pipelines/vgg-s256.toml --out runs/vgg-a-256 --device cuda\n  vgg train pipelines/vgg-s256.toml --out runs/vgg-a-256 --resume\n  vgg train pipelines/vgg-s256.toml --out runs/diverged --resume --lr 0.001"
)]
pub struct Args {
    /// Pipeline file (pipelines/*.toml).
    pipeline: PathBuf,
    /// Run directory (default: runs/<pipeline name>).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Continue the run in the run directory from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// cpu, cuda (device 0) or cuda:N. CUDA needs the GPU build of ONNX Runtime
    /// (docs/onnxruntime.md).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: String,
    /// Number of epochs (overrides [training] epochs; raising it on --resume extends a run).
    #[arg(long, value_name = "N")]
    epochs: Option<u64>,
    /// Learning rate (overrides [optimizer] lr; with --resume, replaces the schedule's
    /// current rate).
    #[arg(long, value_name = "LR")]
    lr: Option<f32>,
    /// ONNX Runtime intra-op threads (0: one per core).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Use this dataset instead of the pipeline's.
    #[arg(long, value_name = "NAME")]
    dataset: Option<String>,
    /// Skip the validation after each epoch (the plateau schedule then keeps its rate).
    #[arg(long)]
    no_val: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let mut p = Pipeline::load(&a.pipeline)?;
    if let Some(e) = a.epochs {
        anyhow::ensure!(e > 0, "--epochs must be at least 1");
        p.training.epochs = e;
    }
    if let Some(lr) = a.lr {
        anyhow::ensure!(lr.is_finite() && lr > 0.0, "--lr must be a positive number");
        p.optimizer.lr = lr;
    }
    if let Some(t) = a.threads {
        p.training.threads = t;
    }
    let device: Device = a.device.parse().map_err(anyhow::Error::msg)?;
    let name = a.dataset.clone().unwrap_or_else(|| p.dataset.clone());
    let reg = Registry::load(&c.datasets)?;
    let spec = reg.get(&name)?;
    let open = |split: Split| PreparedSplit::open(&spec.shards.join(split.name())).map(Arc::new);
    let train_split = open(Split::Train).with_context(|| {
        format!("dataset `{name}` has no prepared train split (run `vgg prepare {name}`)")
    })?;
    let val = if a.no_val {
        None
    } else {
        match open(Split::Val) {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("note: no validation split ({e}); training without validation");
                None
            }
        }
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&p.name));
    if !a.resume && out.join(train::run::LAST).exists() {
        anyhow::bail!(
            "{} already holds a run: add --resume to continue it, or choose another --out",
            out.display()
        );
    }
    let threads = p.training.threads;
    let opts = TrainOptions {
        pipeline: p,
        train: train_split,
        val,
        out: out.clone(),
        resume: a.resume,
        session: SessionSettings { device, threads },
        stop: crate::CANCEL.clone(),
        lr: if a.resume { a.lr } else { None },
    };
    let mut bars = Bars::new(c.quiet || a.json);
    let summary = train::train(opts, &mut bars)?;
    bars.finish();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        match summary.ending {
            Ending::AlreadyFinished => println!(
                "{}: the run had already finished (raise --epochs to extend a run that ended on its \
                 epoch count)",
                out.display()
            ),
            _ => {
                if let Some(e) = &summary.last_epoch {
                    let val = match (e.val_top1_error, e.val_top5_error) {
                        (Some(a), Some(b)) => format!(
                            "validation top-1 error {:.1}%, top-5 error {:.1}%",
                            100.0 * a,
                            100.0 * b
                        ),
                        _ => "no validation".into(),
                    };
                    println!("after epoch {}: {val}", e.epoch + 1);
                }
                if let Some(b) = summary.state.best_val_top1_error {
                    println!(
                        "best validation top-1 error {:.1}% (epoch {})",
                        100.0 * b,
                        summary.state.best_epoch.map_or(0, |e| e + 1)
                    );
                }
                println!(
                    "checkpoint {}; plots {}",
                    summary.checkpoint.display(),
                    out.join("plots.png").display()
                );
            }
        }
    }
    Ok(if summary.ending == Ending::Interrupted {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// One bar per epoch and a summary line after it.
struct Bars {
    hidden: bool,
    bar: Option<ProgressBar>,
    running: (f64, u64),
}

impl Bars {
    fn new(quiet: bool) -> Self {
        Bars {
            hidden: quiet || !std::io::stderr().is_terminal(),
            bar: None,
            running: (0.0, 0),
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn print(&self, line: &str) {
        match &self.bar {
            Some(b) => b.println(line),
            None => eprintln!("{line}"),
        }
    }
}

impl TrainProgress for Bars {
    fn epoch_start(&mut self, epoch: u64, epochs: u64, batches: u64, first: u64) {
        self.finish();
        self.running = (0.0, 0);
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(batches);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
        bar.set_position(first);
        self.bar = Some(bar);
    }

    fn step(&mut self, batch: u64, loss: f32, top1_error: f64, images_per_sec: f64) {
        self.running.0 += top1_error;
        self.running.1 += 1;
        if let Some(b) = &self.bar {
            b.set_position(batch);
            b.set_message(format!(
                "{images_per_sec:.0} img/s  loss {loss:.3}  top-1 err {:.1}%",
                100.0 * self.running.0 / self.running.1 as f64
            ));
        }
    }

    fn validating(&mut self, images: u64) {
        if let Some(b) = &self.bar {
            b.set_message(format!("validating on {images} images"));
        }
    }

    fn epoch_end(&mut self, r: &EpochRecord) {
        let val = match (r.val_top1_error, r.val_top5_error) {
            (Some(a), Some(b)) => {
                format!("val top-1/top-5 err {:.1}%/{:.1}%", 100.0 * a, 100.0 * b)
            }
            _ => "no validation".into(),
        };
        let line = format!(
            "epoch {:>3}  loss {:.3}  train top-1 err {:.1}%  {val}  lr {:.0e}  {:.0} img/s  {:.0}s",
            r.epoch + 1,
            r.train_loss,
            100.0 * r.train_top1_error,
            r.lr,
            r.images_per_sec,
            r.seconds
        );
        self.print(&line);
        self.finish();
    }

    fn message(&mut self, text: &str) {
        self.print(text);
    }
}
