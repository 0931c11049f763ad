//! `vgg train`: resolves the pipeline's dataset, starts or resumes a run, and draws a progress
//! bar per epoch with a one-line summary after each.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use std::time::Duration;
use vgg::data::source::Split;

use sha2::{Digest, Sha256};
use vgg::config::pipeline::Pipeline;
use vgg::data::store::PreparedSplit;
use vgg::dist::{Fingerprint, Group, Launch};
use vgg::net::session::{Device, Devices, SessionSettings};
use vgg::train::parallel::{CrossProcess, Replicas};
use vgg::train::{self, Ending, TrainOptions};

use super::progress::CANCEL;
use super::{print_json, Common};

/// Train a network with the paper's protocol (Section 3.1).
///
/// The pipeline file says everything: the dataset (from datasets.toml, prepared with `vgg
/// prepare`), the network ([model]), the augmentation ([[train.stages]]), the loader, the
/// optimiser ([optimizer]), the learning-rate schedule ([schedule]) and the run's length,
/// initialisation and checkpoints ([training]); flags override single values.
///
/// The run directory gets last.safetensors (every epoch, every `checkpoint_every` steps and
/// on Ctrl-C), best.safetensors (best validation top-1 error), metrics.jsonl, and plots.png
/// with plots.svg (each chart also alone under plots/).
/// `--resume` continues from last.safetensors exactly where it stopped: same batches, same
/// augmentation, same dropout masks as an uninterrupted run. epoch-start.safetensors holds the
/// start of the epoch in progress; when the loss becomes NaN or infinite the run stops,
/// restores last.safetensors from it (keeping the last save as diverged.safetensors), and
/// `--resume --lr X` with a lower rate continues from there.
///
/// Epochs are numbered from 0 (the first epoch is epoch 0) everywhere: on the console, in
/// metrics.jsonl, in the checkpoints' state and in `vgg preview --epoch`.
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
    /// cpu, cuda (device 0), cuda:N, or several GPUs cuda:0,1,2,3 (one data-parallel
    /// replica each, gradients summed with NCCL). CUDA needs the GPU build of ONNX Runtime
    /// (docs/onnxruntime.md). Under torchrun or Slurm (one process per GPU), `cuda` means the
    /// process's local GPU (LOCAL_RANK / SLURM_LOCALID).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: Devices,
    /// Data-parallel replicas in this process: with `--device cpu`, N CPU replicas (the
    /// cores shared among them); with `--device cuda`, GPUs 0..N-1; with `--device cuda:K`,
    /// N replicas on that one GPU (gradients summed through the host). Every global batch is
    /// split evenly over all replicas of all processes. `auto`: two CPU replicas for networks
    /// up to 16 M parameters whose batch splits into 2 x accumulate micro-batches (their small
    /// operators are split poorly by ONNX Runtime's threads; the demo network trains 1.3-1.6x
    /// faster on two cores so, and as fast on one), one replica for larger networks, on GPUs
    /// and under a launcher; a resumed run keeps the count it ran with. The results depend on the replica
    /// count (to float rounding: one replica runs the fused step, several the split one), not
    /// on the thread count.
    #[arg(long, value_name = "N|auto", default_value = "auto")]
    replicas: Replicas,
    /// Micro-batches per replica and step (overrides [training] accumulate): gradients of
    /// batch_size / (replicas x K) images at a time, summed before the one update; the same
    /// step with less activation memory.
    #[arg(long, value_name = "K")]
    accumulate: Option<usize>,
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
    /// Start from a checkpoint (--resume, init_from, finetune_from) whose stored class list
    /// differs from the training split's: a deliberate remap, labels taken by index. Without
    /// it such a checkpoint is refused, naming the first difference.
    #[arg(long)]
    allow_class_mismatch: bool,
    /// Print the final summary as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(c: &Common, a: &Args) -> Result<ExitCode> {
    let d = c.pipeline_data(&a.pipeline, a.dataset.as_deref())?;
    let (mut p, name, train_split) = (d.pipeline, d.dataset, d.train);
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
    if let Some(k) = a.accumulate {
        anyhow::ensure!(
            k > 0 && p.loader.batch_size.is_multiple_of(k),
            "--accumulate {k} does not split the batch of {} evenly",
            p.loader.batch_size
        );
        p.training.accumulate = k;
    }
    let launch = Launch::from_env()?;
    let mut device = a.device.clone();
    if let (Some(l), [Device::Cuda(0)], false) = (&launch, device.list.as_slice(), device.indexed) {
        // One process per GPU: `cuda` is this process's local GPU.
        device.list = vec![Device::Cuda(l.local_rank as i32)];
        device.indexed = true;
    }
    // Under a launcher every process must agree on its replica count: `auto` is 1 there.
    let replicas = match (a.replicas, &launch) {
        (Replicas::Auto, Some(_)) => Replicas::Count(1),
        (r, _) => r,
    };
    let world = launch.as_ref().map_or(1, |l| l.world);
    let devices = super::replica_devices(&device, replicas, &p, p.training.accumulate, world)?;
    let cpu_auto = replicas == Replicas::Auto && device.list == [Device::Cpu];
    // A resumed run keeps its count (the trainer says so when it differs).
    if cpu_auto && devices.len() > 1 && !a.resume && !c.quiet && !a.json {
        eprintln!(
            "note: {} CPU replicas, each on its share of every batch (--replicas auto for a \
             network this small; --replicas 1 for one)",
            devices.len()
        );
    }
    let val = if a.no_val {
        None
    } else {
        match c.open_split(&name, Split::Val) {
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
    let trimmed = out.display().to_string();
    let trimmed = trimmed.trim_end_matches('/');
    if Path::new(trimmed).exists() && !Path::new(trimmed).is_dir() {
        anyhow::bail!(
            "--out {trimmed} is a file; a run folder is expected (vgg train writes its checkpoints, metrics.jsonl and plots into it)"
        );
    }
    if !a.resume && out.join(train::run::LAST).exists() {
        anyhow::bail!(
            "{} already holds a run: add --resume to continue it, or choose another --out",
            out.display()
        );
    }
    if a.resume && !out.join(train::run::LAST).exists() {
        anyhow::bail!(
            "{}: no run to resume (no {}); leave out --resume to start one",
            out.display(),
            train::run::LAST
        );
    }
    // One writer per run directory: rank 0 (the others write nothing there).
    let _lock = if launch.as_ref().is_none_or(|l| l.rank == 0) {
        Some(vgg::util::lock::FolderLock::acquire(&out, "vgg train")?)
    } else {
        None
    };
    let threads = p.training.threads;
    let group = match &launch {
        Some(l) => {
            let fingerprint = fingerprint(&p, &train_split, devices.len(), a.resume)?;
            if !c.quiet {
                eprintln!(
                    "rank {} of {} ({:?}): waiting for the others at {} (up to {} s)",
                    l.rank,
                    l.world,
                    l.launcher,
                    l.address(),
                    p.training.sync_timeout
                );
            }
            let g = Group::connect(
                l,
                &fingerprint,
                Duration::from_secs(p.training.sync_timeout),
            )?;
            Some(Box::new(g) as Box<dyn CrossProcess>)
        }
        None => None,
    };
    let rank = launch.as_ref().map_or(0, |l| l.rank);
    let opts = TrainOptions {
        pipeline: p,
        train: train_split,
        val,
        out: out.clone(),
        resume: a.resume,
        session: SessionSettings {
            device: devices[0],
            threads,
        },
        stop: CANCEL.clone(),
        lr: if a.resume { a.lr } else { None },
        keep_replicas: cpu_auto,
        devices,
        group,
        allow_class_mismatch: a.allow_class_mismatch,
    };
    // Only rank 0 draws progress and prints the summary.
    let quiet_rank = rank != 0;
    let summary = if quiet_rank {
        train::train(opts, &vgg::util::progress::Silent)?
    } else {
        train::train(opts, &c.bars(a.json))?
    };
    if quiet_rank {
    } else if a.json {
        print_json(&summary)?;
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
                    println!("after epoch {}: {val}", e.epoch);
                }
                if let Some(b) = summary.state.best_val_top1_error {
                    println!(
                        "best validation top-1 error {:.1}% (epoch {})",
                        100.0 * b,
                        summary.state.best_epoch.unwrap_or(0)
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
        ExitCode::from(super::progress::interrupted_code())
    } else {
        ExitCode::SUCCESS
    })
}

/// What every process of one job must share: the program, the pipeline as loaded (with the
/// command line's overrides), the training data, the replicas per process and whether the run
/// resumes. Rank 0 refuses a process whose fingerprint differs, naming the item.
fn fingerprint(
    p: &Pipeline,
    train: &PreparedSplit,
    replicas: usize,
    resume: bool,
) -> Result<Fingerprint> {
    let hex = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    let exe = std::env::current_exe()
        .and_then(std::fs::read)
        .unwrap_or_default();
    let pipeline = serde_json::to_vec(&(
        &p.dataset,
        &p.loader,
        &p.train,
        &p.model,
        &p.optimizer,
        &p.schedule,
        &p.training,
    ))?;
    let manifest = serde_json::to_vec(&train.manifest)?;
    Ok(Fingerprint::new()
        .with(
            "program",
            format!("vgg {} {}", env!("CARGO_PKG_VERSION"), hex(&exe)),
        )
        .with("pipeline", hex(&pipeline))
        .with("training split", hex(&manifest))
        .with("replicas per process", replicas.to_string())
        .with("resume", resume.to_string()))
}
