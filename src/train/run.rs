//! The training loop: loader batches into the step session, validation after every epoch, the
//! learning-rate schedule, checkpoints, metrics and plots, resume and clean stops.
//!
//! Run directory:
//! - `last.safetensors`: parameters, momenta and [`TrainState`], written atomically at the end
//!   of every epoch, every `checkpoint_every` steps and on Ctrl-C;
//! - `best.safetensors`: the epoch with the best validation top-1 error so far;
//! - `epoch-start.safetensors`: the start of the epoch in progress; after a non-finite loss,
//!   `last.safetensors` is restored from it and its later save kept as `diverged.safetensors`;
//! - `clock.json`: the wall-clock times of `last.safetensors`' position (not in the
//!   checkpoints, so identical runs write identical checkpoints);
//! - `metrics.jsonl`, `plots.png` and `plots/`: see [`super::metrics`];
//! - `pipeline.toml`: the pipeline file the run was started with.
//!
//! Data parallelism ([`super::parallel`]): several replicas in this process
//! ([`TrainOptions::devices`]) and several processes ([`TrainOptions::group`]) train on one
//! global batch of `batch_size` images; each process loads its share (every `world`-th image
//! of the epoch's order), only rank 0 writes the run directory, validation is split over the
//! processes and its counts summed, and a stop request on any rank stops all of them after
//! the same step. One replica without accumulation runs the fused step graph.
//!
//! Reproducible by construction: the loader's order and augmentation derive from (seed, epoch,
//! sample), the dropout masks from (seed, epoch, batch), initialisation from the seed, and the
//! state saved with the parameters says where in which epoch the run stands; resuming from a
//! checkpoint replays exactly the batches an uninterrupted run would have seen.

use crate::util::progress::{Cancel, Progress};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::metrics::{self, EpochRecord, MetricsLog, Record, StepRecord};
use super::parallel::{CrossProcess, ParallelOptions};
use super::schedule::{Decision, ScheduleState};
use super::TrainError;
use crate::config::model::VggConfig;
use crate::config::pipeline::{OutputKind, Pipeline};
use crate::data::augment;
use crate::data::loader::{Loader, LoaderOptions, Mode};
use crate::data::store::PreparedSplit;
use crate::net::accuracy::TopK;
use crate::net::checkpoint::{Checkpoint, NamedTensor};
use crate::net::graph::vgg::{self as graphs, InputForm, StepOptions};
use crate::net::init;
use crate::net::session::{self, Device, SessionSettings};

/// Where a run stands; saved in every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The epoch in progress (or the next one, when `batch` is 0).
    pub epoch: u64,
    /// The next batch of `epoch` to train on.
    pub batch: u64,
    /// Steps taken so far.
    pub step: u64,
    pub schedule: ScheduleState,
    pub seed: u64,
    pub best_val_top1_error: Option<f64>,
    pub best_epoch: Option<u64>,
    /// Training time so far, over all resumes. Wall-clock time, so not stored in the
    /// checkpoint (two identical runs write identical files): it lives in the run directory's
    /// `clock.json` ([`CLOCK`]).
    #[serde(default)]
    pub elapsed_seconds: f64,
    /// The run ended (epoch count reached, or the schedule's last plateau). Resuming with a
    /// larger epoch count continues a run that ended on its count.
    pub finished: bool,
    pub pipeline: String,
    /// The sums of the epoch in progress so far, so that a resumed epoch reports the same
    /// train loss and error as an uninterrupted one.
    #[serde(default)]
    pub partial: EpochSums,
    /// Data-parallel replicas per process when the state was saved (none: saved before the
    /// count was recorded, when runs on the CPU took one unless told otherwise).
    #[serde(default)]
    pub replicas: Option<usize>,
}

/// Running sums of one epoch's training batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss_sum: f64,
    pub images: u64,
    pub top1_correct: u64,
    pub top5_correct: u64,
    /// Seconds of the epoch spent so far (wall-clock: in `clock.json`, not the checkpoint).
    #[serde(default)]
    pub seconds: f64,
}

/// What a run is asked to do.
pub struct TrainOptions {
    pub pipeline: Pipeline,
    pub train: Arc<PreparedSplit>,
    /// Validation split (centre crop after every epoch); `None` skips validation.
    pub val: Option<Arc<PreparedSplit>>,
    pub out: PathBuf,
    pub resume: bool,
    pub session: SessionSettings,
    /// Cancelled (by a signal handler) to stop after the current step with a checkpoint.
    pub stop: Cancel,
    /// Replaces the learning rate, also when resuming (continue a diverged run at a lower
    /// rate, or fine-tune at a new one).
    pub lr: Option<f32>,
    /// One replica per entry in this process; empty: one on `session.device`.
    pub devices: Vec<Device>,
    /// `devices` came from `--replicas auto`: a resumed CPU run keeps the replica count it ran
    /// with (one for a run saved before the count was recorded), so that it continues with
    /// the same arithmetic; the count is a run's, not a machine's.
    pub keep_replicas: bool,
    /// The other training processes (one per GPU under torchrun or Slurm); `None` alone.
    pub group: Option<Box<dyn CrossProcess>>,
    /// Start from a checkpoint (resume, `init_from`, `finetune_from`) whose stored class list
    /// differs from the training split's: a deliberate remap, labels compared by index.
    pub allow_class_mismatch: bool,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    /// The configured number of epochs ran.
    Epochs,
    /// The plateau after the schedule's last decrease.
    Plateau,
    /// Stopped on request; `last.safetensors` holds the position.
    Interrupted,
    /// Resumed a run that had already finished.
    AlreadyFinished,
}

/// A finished (or stopped) run.
#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub ending: Ending,
    pub state: TrainState,
    pub last_epoch: Option<EpochRecord>,
    pub run_dir: PathBuf,
    pub checkpoint: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// A learning rate as a person writes it: 1e-4, not the float's 1.00000005e-4.
pub fn short_rate(lr: f32) -> String {
    let rounded: f64 = format!("{lr:.5e}").parse().unwrap_or(lr as f64);
    format!("{rounded:e}")
}

/// The line printed for a finished epoch (above the progress bar).
pub fn epoch_line(r: &EpochRecord) -> String {
    let val = match (r.val_top1_error, r.val_top5_error) {
        (Some(a), Some(b)) => {
            format!("val top-1/top-5 err {:.1}%/{:.1}%", 100.0 * a, 100.0 * b)
        }
        _ => "no validation".into(),
    };
    format!(
        "epoch {:>3}  loss {:.3}  train top-1 err {:.1}%  {val}  lr {:.0e}  {:.0} img/s  {:.0}s",
        r.epoch,
        r.train_loss,
        100.0 * r.train_top1_error,
        r.lr,
        r.images_per_sec,
        r.seconds
    )
}

pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";
/// The position at the start of the epoch in progress (or where the run was resumed in its
/// middle): what a non-finite loss restores `last.safetensors` from.
pub const EPOCH_START: &str = "epoch-start.safetensors";
/// The weights of the last save before a non-finite loss, kept when `last.safetensors` is
/// restored from [`EPOCH_START`].
pub const DIVERGED: &str = "diverged.safetensors";
/// The wall-clock times of `last.safetensors`' position (JSON: step, elapsed_seconds,
/// epoch_seconds), kept out of the checkpoint so identical runs write identical checkpoints.
pub const CLOCK: &str = "clock.json";

/// What [`CLOCK`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Clock {
    step: u64,
    elapsed_seconds: f64,
    epoch_seconds: f64,
}

/// The class list (wnids in label order) of a split.
fn wnids(split: &PreparedSplit) -> Vec<String> {
    split
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect()
}

/// Loads a checkpoint to start from and refuses one whose class list differs from the
/// training data's (unless `allow`); `what` says what it is for in the message.
fn load_for(
    path: &Path,
    what: &str,
    o: &TrainOptions,
    progress: Option<&dyn Progress>,
) -> Result<Checkpoint, TrainError> {
    let (ck, info) = Checkpoint::load_with_info(path)?;
    let data = format!("the training split {}", o.train.dir.display());
    let shown = format!("{what} {}", path.display());
    if let Err(e) = crate::net::checkpoint::check_classes(
        &shown,
        info.classes.as_deref(),
        &data,
        &wnids(&o.train),
    ) {
        if !o.allow_class_mismatch {
            return Err(TrainError::Setup(format!(
                "{e}; --allow-class-mismatch starts from it anyway"
            )));
        }
        if let Some(p) = progress {
            p.line(&format!(
                "note: {e}; starting from it anyway (--allow-class-mismatch)"
            ));
        }
    }
    if let Some(p) = progress {
        for note in info.notes(path) {
            p.line(&format!("note: {note}"));
        }
    }
    Ok(ck)
}

/// The network a pipeline trains.
pub fn network(p: &Pipeline) -> Result<VggConfig, TrainError> {
    p.model.clone().ok_or_else(|| {
        TrainError::Setup(format!(
            "{} has no [model] table: say which network to train (e.g. config = \"A\")",
            p.path.display()
        ))
    })
}

/// Parameters and momenta to start from: a checkpoint to resume, to fine-tune from, a
/// pre-initialisation, or a fresh initialisation.
pub fn starting_point(
    o: &TrainOptions,
    config: &VggConfig,
) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>, TrainState), TrainError> {
    starting_point_noting(o, config, None)
}

/// [`starting_point`], with notes (checkpoints without checksums or class lists) as lines.
fn starting_point_noting(
    o: &TrainOptions,
    config: &VggConfig,
    progress: Option<&dyn Progress>,
) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>, TrainState), TrainError> {
    let p = &o.pipeline;
    let last = o.out.join(LAST);
    if o.resume {
        let ck = load_for(&last, "--resume:", o, progress)?;
        if ck.config != *config {
            return Err(TrainError::Setup(format!(
                "{} holds configuration {:?}, the pipeline trains {:?}",
                last.display(),
                ck.config.name,
                config.name
            )));
        }
        let state: TrainState = ck
            .state
            .clone()
            .ok_or_else(|| TrainError::Setup(format!("{} has no trainer state", last.display())))
            .and_then(|s| {
                serde_json::from_value(s).map_err(|e| {
                    TrainError::Setup(format!("{}: trainer state: {e}", last.display()))
                })
            })?;
        let momenta = ck.momenta.clone().ok_or_else(|| {
            TrainError::Setup(format!("{} has no momentum buffers", last.display()))
        })?;
        return Ok((ck.params, momenta, state));
    }
    let t = &p.training;
    let seed = p.loader.seed;
    let params = if let Some(path) = &t.finetune_from {
        let ck = load_for(path, "training.finetune_from", o, progress)?;
        if ck.config.layers() != config.layers() {
            return Err(TrainError::Setup(format!(
                "fine-tuning needs the same network: {} holds {}, the pipeline trains {}",
                path.display(),
                ck.config.name,
                config.name
            )));
        }
        ck.params
    } else {
        let mut params = init::initialise(config, t.init, seed);
        if let Some(path) = &t.init_from {
            let ck = load_for(path, "training.init_from", o, progress)?;
            init::pre_initialise(
                config,
                &mut params,
                &ck.config,
                &ck.params,
                t.init_conv_layers,
            )?;
        }
        params
    };
    let momenta = init::zero_momenta(&params);
    let state = TrainState {
        epoch: 0,
        batch: 0,
        step: 0,
        schedule: ScheduleState::new(p.optimizer.lr),
        seed,
        best_val_top1_error: None,
        best_epoch: None,
        elapsed_seconds: 0.0,
        partial: EpochSums::default(),
        finished: false,
        pipeline: p.name.clone(),
        replicas: None,
    };
    Ok((params, momenta, state))
}

/// The loader settings and step options a pipeline trains with. A step is compiled for one
/// batch size, so the last, short batch of an epoch is dropped (its images come first in
/// another epoch's order).
pub fn step_setup(p: &Pipeline) -> (crate::config::pipeline::LoaderSettings, StepOptions) {
    let mut settings = p.loader.clone();
    settings.drop_last = true;
    let opts = StepOptions {
        batch: settings.batch_size,
        input: match settings.output {
            OutputKind::F32Nchw => InputForm::F32Nchw,
            OutputKind::U8Nhwc => InputForm::U8Nhwc,
        },
        momentum: p.optimizer.momentum,
        weight_decay: p.optimizer.weight_decay,
        decay_biases: p.optimizer.decay_biases,
    };
    (settings, opts)
}

/// The seed of [`sample_records`] for the trainer's validation and `vgg eval --limit` unless
/// told otherwise: both evaluate the same images.
pub const SAMPLE_SEED: u64 = 0;

/// `epoch` coordinate of the random streams that draw [`sample_records`]'s per-class orders
/// (no training epoch reaches it).
const SAMPLE_EPOCH: u64 = u64::MAX;

/// Why [`sample_records`] could not draw its sample.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{}: the split has no images to evaluate", .dir.display())]
    Empty { dir: PathBuf },
    #[error("a limit of 0 images evaluates nothing; give at least 1 (or no limit for all images)")]
    ZeroLimit,
    #[error(transparent)]
    Shard(#[from] crate::data::shard::ShardError),
}

/// The records an evaluation limited to `limit` images reads, in ascending record order: all
/// of them without a limit (or with one at least the split's size); otherwise a fixed sample
/// spread over all classes, drawn from `seed` alone. Each class's records are put in a seeded
/// order, the classes in a seeded order, and rounds take the next record of each class in
/// turn until `limit` are taken, so every class contributes `limit / classes` images (give or
/// take one) while it has them. The trainer's validation (split over ranks: each takes every
/// `world`-th record of this list) and `vgg eval --limit` read the same sample.
///
/// A split without records, or a limit of 0, is an error: an evaluation of no images has no
/// error rate to report.
pub fn sample_records(
    split: &PreparedSplit,
    limit: Option<u64>,
    seed: u64,
) -> Result<Vec<u64>, LimitError> {
    use crate::util::rng::{Rng, Stream};
    let n = split.len();
    if n == 0 {
        return Err(LimitError::Empty {
            dir: split.dir.clone(),
        });
    }
    let limit = match limit {
        Some(0) => return Err(LimitError::ZeroLimit),
        Some(l) if l < n => l as usize,
        _ => return Ok((0..n).collect()),
    };
    let mut by_class: std::collections::BTreeMap<u32, Vec<u64>> = Default::default();
    for g in 0..n {
        by_class.entry(split.record(g)?.label).or_default().push(g);
    }
    let mut classes: Vec<(u32, Vec<u64>)> = by_class.into_iter().collect();
    for (label, records) in classes.iter_mut() {
        Rng::new(seed, Stream::Order, SAMPLE_EPOCH, u64::from(*label)).shuffle(records);
    }
    Rng::new(seed, Stream::Order, SAMPLE_EPOCH, u64::from(u32::MAX) + 1).shuffle(&mut classes);
    let mut out = Vec::with_capacity(limit);
    'rounds: for round in 0.. {
        for (_, records) in &classes {
            if let Some(&g) = records.get(round) {
                out.push(g);
                if out.len() == limit {
                    break 'rounds;
                }
            }
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Writes the step's current parameters, momenta and `state` to each of `paths` (one copy from
/// the device for all of them).
/// with the training split's class list. The wall-clock fields of the state are left out of
/// the files (see [`CLOCK`]); when `paths` holds `last.safetensors`, [`CLOCK`] is written next
/// to it.
fn save(
    paths: &[&Path],
    config: &VggConfig,
    step: &Engine,
    state: &TrainState,
    classes: &[String],
) -> Result<(), TrainError> {
    if paths.is_empty() {
        return Ok(());
    }
    let (params, momenta) = step.download()?;
    let ck = Checkpoint {
        config: config.clone(),
        params,
        momenta: Some(momenta),
        state: Some(stored_state(state)),
    };
    for path in paths {
        ck.save_with_classes(path, Some(classes))?;
        if path.file_name() == Some(LAST.as_ref()) {
            let clock = Clock {
                step: state.step,
                elapsed_seconds: state.elapsed_seconds,
                epoch_seconds: state.partial.seconds,
            };
            let at = path.with_file_name(CLOCK);
            let bytes = serde_json::to_vec(&clock).expect("numbers serialise");
            crate::util::fs::write_atomic(&at, &bytes)
                .map_err(|source| TrainError::Io { path: at, source })?;
        }
    }
    Ok(())
}

/// After a non-finite loss: when `last.safetensors` holds a later position than
/// `epoch-start.safetensors` (a save in mid-epoch, whose weights may already have exploded:
/// finite but past recovery), keeps it as `diverged.safetensors` and restores
/// `last.safetensors` from the epoch's start, so `--resume --lr X` starts from weights taken
/// before the epoch in which the loss ran away.
fn recover_from_epoch_start(
    out: &Path,
    start_step: Option<u64>,
    last_step: Option<u64>,
    at: u64,
    progress: &dyn Progress,
) -> Result<(), TrainError> {
    let (start, last) = (out.join(EPOCH_START), out.join(LAST));
    if !start.exists() || start_step == last_step {
        return Ok(());
    }
    if last.exists() {
        std::fs::rename(&last, out.join(DIVERGED)).map_err(|source| TrainError::Io {
            path: last.clone(),
            source,
        })?;
    }
    link_or_copy(&start, &last)?;
    let _ = std::fs::remove_file(out.join(CLOCK));
    progress.line(&format!(
        "the loss stopped being a number at step {at}: {} now holds the start of the epoch \
         (its last save, possibly already diverged, is kept as {})",
        last.display(),
        out.join(DIVERGED).display()
    ));
    Ok(())
}

/// The state as a checkpoint stores it: without its wall-clock fields.
fn stored_state(state: &TrainState) -> serde_json::Value {
    let mut v = serde_json::to_value(state).expect("state serialises");
    if let Some(o) = v.as_object_mut() {
        o.remove("elapsed_seconds");
        if let Some(p) = o.get_mut("partial").and_then(|p| p.as_object_mut()) {
            p.remove("seconds");
        }
    }
    v
}

/// The wall-clock times of a resumed position: [`CLOCK`] when it describes that step, else
/// the time of the last metrics record at or before it (whole epochs are exact; what a
/// checkpoint in mid-epoch adds to it is lost), else what an older checkpoint's state held.
fn restore_clock(out: &Path, state: &mut TrainState) {
    let clock: Option<Clock> = std::fs::read(out.join(CLOCK))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let Some(c) = clock.filter(|c| c.step == state.step) {
        state.elapsed_seconds = c.elapsed_seconds;
        state.partial.seconds = c.epoch_seconds;
        return;
    }
    if state.elapsed_seconds > 0.0 {
        return; // an older checkpoint, which kept its times itself
    }
    if let Ok(records) = metrics::read_records(&out.join(metrics::FILE_NAME)) {
        if let Some(t) = records
            .iter()
            .filter(|r| r.step() <= state.step)
            .map(|r| match r {
                Record::Step(s) => s.time,
                Record::Epoch(e) => e.time,
            })
            .next_back()
        {
            state.elapsed_seconds = t;
        }
    }
}

/// Makes `to` hold the bytes of `from`, atomically (a hard link renamed over `to`, or a copy
/// where links are not possible).
fn link_or_copy(from: &Path, to: &Path) -> Result<(), TrainError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TrainError::Io { path, source }
    };
    let tmp = to.with_file_name(format!(
        ".{}.link",
        to.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).map_err(io(from))?;
    }
    std::fs::rename(&tmp, to).map_err(io(to))
}

/// What a training process holds in host memory, estimated before anything is allocated, in
/// bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Weights and momenta twice (the step's two alternating sets, which CPU replicas share),
    /// a gradient per replica (two running sums with accumulation) and the host copy the
    /// parameters start from.
    pub parameters: u64,
    /// Every layer's output and its gradient, for one micro-batch per replica.
    pub activations: u64,
    /// The loader's (prefetch + 2) batch buffers.
    pub loader: u64,
}

impl MemoryEstimate {
    /// The estimate for `config` trained with pipeline `p` on `replicas` replicas in a process
    /// that loads `1 / world` of every batch.
    pub fn of(config: &VggConfig, p: &Pipeline, replicas: usize, world: usize) -> Self {
        let f32s = 4u64;
        let params = config.summary().parameters;
        let replicas = replicas.max(1) as u64;
        let per_process = (p.loader.batch_size / world.max(1)).max(1) as u64;
        let micro = (per_process / replicas / p.training.accumulate.max(1) as u64).max(1);
        let input = 3 * (config.input as u64).pow(2);
        let outputs: u64 = input
            + config
                .layers()
                .iter()
                .map(|l| l.output.iter().product::<u64>())
                .sum::<u64>();
        let pixel = match p.loader.output {
            OutputKind::F32Nchw => f32s,
            OutputKind::U8Nhwc => 1,
        };
        // A gradient set per replica, two running sums with accumulation.
        let sums = if p.training.accumulate > 1 { 2 } else { 1 };
        MemoryEstimate {
            parameters: params.saturating_mul(f32s * (5 + replicas * sums)),
            activations: outputs.saturating_mul(micro * replicas * f32s * 2),
            loader: (p.loader.prefetch as u64 + 2).saturating_mul(per_process * input * pixel),
        }
    }

    pub fn total(&self) -> u64 {
        self.parameters
            .saturating_add(self.activations)
            .saturating_add(self.loader)
    }
}

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 0.1 {
        format!("{g:.1} GiB")
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Refuses a run whose estimated host memory ([`MemoryEstimate`]) exceeds what the machine has
/// available, before anything is allocated, instead of an abort inside the allocator. Runs on
/// CUDA devices are not checked: their memory is the GPU's, which ONNX Runtime reports itself.
fn check_memory(o: &TrainOptions, config: &VggConfig, world: usize) -> Result<(), TrainError> {
    let devices = if o.devices.is_empty() {
        vec![o.session.device]
    } else {
        o.devices.clone()
    };
    if devices.iter().any(|d| matches!(d, Device::Cuda(_))) {
        return Ok(());
    }
    let Some(available) = crate::util::machine::available_memory_bytes() else {
        return Ok(());
    };
    let e = MemoryEstimate::of(config, &o.pipeline, devices.len(), world);
    if e.total() <= available {
        return Ok(());
    }
    let p = &o.pipeline;
    Err(TrainError::Setup(format!(
        "{}: training needs about {} of memory, more than the {} this machine has available: \
         parameters, momenta and gradients {} ({} parameters: lower model.fc, model.width or \
         model.classes), activations {} (lower loader.batch_size or raise training.accumulate), \
         loader buffers {} (lower loader.prefetch)",
        p.path.display(),
        gib(e.total()),
        gib(available),
        gib(e.parameters),
        config.summary().parameters,
        gib(e.activations),
        gib(e.loader)
    )))
}

/// Trains as the pipeline says; see the module documentation.
pub fn train(mut o: TrainOptions, progress: &dyn Progress) -> Result<TrainSummary, TrainError> {
    let group = o.group.take();
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world()));
    let writer = rank == 0;
    let p = &o.pipeline;
    let config = network(p)?;
    if p.training.val_limit == Some(0) {
        return Err(TrainError::Setup(format!(
            "{}: training.val_limit = 0 would validate on no images (and report a perfect \
             score); give at least 1, or leave it out to validate on every image",
            p.path.display()
        )));
    }
    if !p.loader.drop_last {
        return Err(TrainError::Setup(format!(
            "{} = false: training cannot keep the last, short batch of an epoch (the step graph \
             is built for one batch size; an image dropped from one epoch most likely falls \
             in a full batch of the next, whose order is shuffled anew); remove the key or set \
             it to true (it applies to training only)",
            p.at_key("loader.drop_last")
        )));
    }
    let empty: Vec<&str> = o
        .train
        .manifest
        .classes
        .iter()
        .filter(|c| c.records == 0)
        .map(|c| c.wnid.as_str())
        .collect();
    if !empty.is_empty() && !o.train.is_empty() {
        return Err(TrainError::Setup(format!(
            "the training split {} has {} class(es) with no images: {}; the network would learn \
             never to predict them: fill or remove these class folders and run `vgg prepare` again",
            o.train.dir.display(),
            empty.len(),
            empty.join(", ")
        )));
    }
    for (what, split) in [("training", Some(&o.train)), ("validation", o.val.as_ref())] {
        let Some(split) = split else { continue };
        if split.is_empty() {
            return Err(TrainError::Setup(format!(
                "the {what} split {} has no images",
                split.dir.display()
            )));
        }
        let n = split.manifest.classes.len();
        if n != config.classes as usize {
            return Err(TrainError::Setup(format!(
                "the {what} split {} has {n} classes, the network {} has {}: set `classes = {n}` in [model]",
                split.dir.display(),
                config.name,
                config.classes
            )));
        }
    }
    check_memory(&o, &config, world)?;
    if writer {
        std::fs::create_dir_all(&o.out).map_err(|e| TrainError::Io {
            path: o.out.clone(),
            source: e,
        })?;
    }
    let (params, momenta, mut state) = starting_point_noting(&o, &config, Some(progress))?;
    if o.resume {
        restore_clock(&o.out, &mut state);
    }
    let classes = wnids(&o.train);
    let mut group = group;
    if let Some(g) = group.as_mut() {
        same_start_everywhere(g.as_mut(), &params, &momenta, &state)?;
    }
    if let Some(lr) = o.lr {
        state.schedule.lr = lr;
    }
    let last_path = o.out.join(LAST);
    let best_path = o.out.join(BEST);
    let start_path = o.out.join(EPOCH_START);
    if o.resume {
        same_run(&o.out.join("pipeline.toml"), p)?;
    }
    if writer {
        // On resume too: the run's copy follows what may change (epochs, lr, ...).
        let text = std::fs::read(&p.path).unwrap_or_default();
        crate::util::fs::write_atomic(&o.out.join("pipeline.toml"), &text).map_err(|e| {
            TrainError::Io {
                path: o.out.join("pipeline.toml"),
                source: e,
            }
        })?;
    }
    let mut log = if writer {
        Some(MetricsLog::open(&o.out, o.resume.then_some(state.step))?)
    } else {
        None
    };
    if state.schedule.stopped || state.epoch >= p.training.epochs {
        return Ok(TrainSummary {
            ending: Ending::AlreadyFinished,
            state,
            last_epoch: None,
            run_dir: o.out.clone(),
            checkpoint: last_path,
            plots: Vec::new(),
        });
    }

    state.finished = false;
    let (mut settings, mut opts) = step_setup(p);
    let batch = opts.batch;
    if !batch.is_multiple_of(world) {
        return Err(TrainError::Setup(format!(
            "a batch of {batch} does not split over {world} processes: choose a batch_size that is a multiple of the process count"
        )));
    }
    // This process's share of every global batch.
    settings.batch_size = batch / world;
    opts.batch = batch / world;
    let mut devices = if o.devices.is_empty() {
        vec![o.session.device]
    } else {
        o.devices.clone()
    };
    if o.resume && o.keep_replicas && devices.iter().all(|d| *d == Device::Cpu) {
        let saved = state.replicas.unwrap_or(1);
        // A damaged count (0, or one whose product overflows) never splits the batch.
        let splits = saved
            .checked_mul(p.training.accumulate.max(1))
            .is_some_and(|parts| parts > 0 && opts.batch.is_multiple_of(parts));
        if saved != devices.len() && splits {
            progress.line(&format!(
                "note: the run continues on the {saved} CPU replica(s) it ran on (--replicas N \
                 to change that)"
            ));
            devices = vec![Device::Cpu; saved];
        }
    }
    state.replicas = Some(devices.len());
    let mut step = Engine::new(
        &config,
        &opts,
        p.optimizer.dropout,
        &params,
        &momenta,
        &ParallelOptions {
            devices: devices.clone(),
            accumulate: p.training.accumulate,
            threads: o.session.threads,
        },
        group,
    )?;
    drop((params, momenta));
    let val_settings = SessionSettings {
        device: devices[0],
        ..o.session
    };
    let mut validator = match &o.val {
        Some(v) => Some(Validator::new(
            &config,
            p,
            v.clone(),
            &val_settings,
            rank,
            world,
        )?),
        None => None,
    };
    let last_only: Vec<&Path> = if writer { vec![&last_path] } else { vec![] };
    let last_and_best: Vec<&Path> = if writer {
        vec![&last_path, &best_path]
    } else {
        vec![]
    };

    let epochs = p.training.epochs;
    let started = Instant::now();
    let elapsed_before = state.elapsed_seconds;
    let elapsed = |st: &Instant| elapsed_before + st.elapsed().as_secs_f64();
    let mut last_epoch = None;
    let mut ending = Ending::Epochs;
    let log_every = p.training.log_every;
    let mut last_save = Instant::now();
    // The steps of the positions `epoch-start.safetensors` and `last.safetensors` hold.
    let (mut start_step, mut last_step) = (None, o.resume.then_some(state.step));
    if writer {
        if o.resume && state.batch == 0 {
            // Resumed at an epoch boundary: the checkpoint is that epoch's start.
            link_or_copy(&last_path, &start_path)?;
            start_step = Some(state.step);
        } else if !o.resume || !start_path.exists() {
            // A fresh run (its initial parameters), or a resume in mid-epoch of a run from
            // before epoch-start checkpoints: the position the run starts from.
            save(&[&start_path], &config, &step, &state, &classes)?;
            start_step = Some(state.step);
        } else {
            start_step = Some(u64::MAX); // kept from before the resume, of this epoch
        }
    }
    'epochs: while state.epoch < epochs {
        let epoch = state.epoch;
        let loader = Loader::new(
            o.train.clone(),
            LoaderOptions {
                start_batch: state.batch as usize,
                rank,
                world,
                ..LoaderOptions::new(settings.clone(), Mode::Train(p.train.clone()), epoch)
            },
        )?;
        let batches = (loader.batches() as u64) + state.batch;
        if batches == 0 {
            return Err(TrainError::Setup(format!(
                "the training split has fewer images than one batch of {batch}"
            )));
        }
        progress.start(
            &format!("epoch {epoch} (epochs 0..{})", epochs.saturating_sub(1)),
            batches,
            state.batch,
        );
        let epoch_start = Instant::now();
        let before = state.partial;
        let (mut loss_sum, mut top, mut images) = (
            before.loss_sum,
            TopK {
                images: before.images,
                top1_correct: before.top1_correct,
                top5_correct: before.top5_correct,
            },
            before.images,
        );
        let sums = |loss_sum: f64, top: &TopK, start: &Instant| EpochSums {
            loss_sum,
            images: top.images,
            top1_correct: top.top1_correct,
            top5_correct: top.top5_correct,
            seconds: before.seconds + start.elapsed().as_secs_f64(),
        };
        let (mut window_t, mut window_images) = (Instant::now(), 0u64);
        for b in loader {
            let b = b?;
            let lr = state.schedule.lr;
            let (r, stop) = step.step(&b, lr, state.seed, o.stop.is_cancelled())?;
            if !r.loss.is_finite() {
                if writer {
                    recover_from_epoch_start(&o.out, start_step, last_step, state.step, progress)?;
                }
                return Err(TrainError::NonFinite {
                    loss: r.loss,
                    epoch,
                    batch: b.number as u64,
                    step: state.step,
                    checkpoint: last_path.exists().then(|| last_path.clone()),
                });
            }
            state.step += 1;
            state.batch = b.number as u64 + 1;
            let n = (b.len() * world) as u64;
            images += n;
            window_images += n;
            loss_sum += r.loss as f64 * n as f64;
            top.images += n;
            top.top1_correct += r.top1_correct as u64;
            top.top5_correct += r.top5_correct as u64;
            let ips = window_images as f64 / window_t.elapsed().as_secs_f64().max(1e-9);
            progress.set_position(state.batch);
            progress.status(&format!(
                "{ips:.0} img/s  loss {:.3}  top-1 err {:.1}%",
                r.loss,
                100.0 * top.top1_error()
            ));
            if let (0, Some(log)) = (state.step % log_every, log.as_mut()) {
                log.append(&Record::Step(StepRecord {
                    step: state.step,
                    epoch,
                    batch: state.batch,
                    loss: r.loss as f64,
                    top1_error: 1.0 - r.top1_correct as f64 / n as f64,
                    top5_error: 1.0 - r.top5_correct as f64 / n as f64,
                    lr: lr as f64,
                    images_per_sec: ips,
                    time: elapsed(&started),
                }))?;
                window_t = Instant::now();
                window_images = 0;
            }
            let every = p.training.checkpoint_every;
            let minutes = p.training.checkpoint_minutes;
            let due = (every > 0 && state.step % every == 0)
                || (minutes > 0.0 && last_save.elapsed().as_secs_f64() >= 60.0 * minutes);
            if due || stop {
                state.partial = sums(loss_sum, &top, &epoch_start);
            }
            if due {
                state.elapsed_seconds = elapsed(&started);
                save(&last_only, &config, &step, &state, &classes)?;
                last_step = Some(state.step);
                last_save = Instant::now();
            }
            if stop {
                state.elapsed_seconds = elapsed(&started);
                save(&last_only, &config, &step, &state, &classes)?;
                progress.line(&format!(
                    "stopped in epoch {} after batch {}: {} holds the position; --resume continues",
                    epoch,
                    state.batch,
                    last_path.display()
                ));
                ending = Ending::Interrupted;
                break 'epochs;
            }
        }
        // The epoch is over.
        let seconds = before.seconds + epoch_start.elapsed().as_secs_f64();
        state.partial = EpochSums::default();
        let (val_top1, val_top5, val_loss) = match validator.as_mut() {
            Some(v) => {
                progress.status(&format!("validating on {} images", v.images()));
                let (t, l) = v.run(&mut step)?;
                (Some(t.top1_error()), Some(t.top5_error()), Some(l))
            }
            None => (None, None, None),
        };
        let lr = state.schedule.lr;
        let decision = state.schedule.after_epoch(&p.schedule, epoch, val_top1);
        let improved = val_top1.is_some_and(|e| state.best_val_top1_error.is_none_or(|b| e < b));
        if improved {
            state.best_val_top1_error = val_top1;
            state.best_epoch = Some(epoch);
        }
        state.epoch += 1;
        state.batch = 0;
        if decision == Decision::Stop || state.epoch >= epochs {
            state.finished = true;
        }
        state.elapsed_seconds = elapsed(&started);
        let record = EpochRecord {
            epoch,
            step: state.step,
            train_loss: loss_sum / images.max(1) as f64,
            train_top1_error: top.top1_error(),
            train_top5_error: top.top5_error(),
            val_top1_error: val_top1,
            val_top5_error: val_top5,
            val_loss,
            lr: lr as f64,
            images_per_sec: images as f64 / seconds.max(1e-9),
            seconds,
            time: state.elapsed_seconds,
        };
        if let Some(log) = log.as_mut() {
            log.append(&Record::Epoch(record.clone()))?;
        }
        if improved {
            save(&last_and_best, &config, &step, &state, &classes)?;
        } else {
            save(&last_only, &config, &step, &state, &classes)?;
        }
        last_step = Some(state.step);
        if writer && state.epoch < epochs && !state.finished {
            // The next epoch starts here.
            link_or_copy(&last_path, &start_path)?;
            start_step = Some(state.step);
        }
        progress.line(&epoch_line(&record));
        progress.finish();
        if let Decision::Decrease { from, to } = decision {
            progress.line(&format!(
                "learning rate {} -> {} (validation top-1 error stopped improving)",
                short_rate(from),
                short_rate(to)
            ));
        }
        if let Some(log) = &log {
            metrics::read_records(log.path()).and_then(|r| metrics::write_plots(&o.out, &r))?;
        }
        last_epoch = Some(record);
        if decision == Decision::Stop {
            ending = Ending::Plateau;
            break;
        }
    }
    let plots = match &log {
        Some(log) => metrics::write_plots(&o.out, &metrics::read_records(log.path())?)?,
        None => Vec::new(),
    };
    Ok(TrainSummary {
        ending,
        state,
        last_epoch,
        run_dir: o.out.clone(),
        checkpoint: last_path,
        plots,
    })
}

/// The settings a resumed run may change; everything else must equal the run's start, or the
/// run would not continue exactly (other images, another order, another network or rule).
pub const RESUMABLE_CHANGES: &str =
    "training.epochs, optimizer.lr (and --lr), training.accumulate, \
     training.threads, training.checkpoint_every, training.checkpoint_minutes, training.log_every, \
     training.sync_timeout, loader.threads, loader.prefetch, the device and replica count";

/// Refuses to resume with a pipeline that breaks exact continuation of the run started with
/// `saved` (the run directory's copy), naming the first key that differs.
fn same_run(saved: &Path, p: &Pipeline) -> Result<(), TrainError> {
    let Ok(text) = std::fs::read_to_string(saved) else {
        return Ok(()); // runs from before the copy existed
    };
    let old = Pipeline::parse(&text, saved)
        .map_err(|e| TrainError::Setup(format!("cannot compare with the run's pipeline: {e}")))?;
    fn j<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }
    let pairs: [(&str, String, String); 14] = [
        ("dataset", j(&old.dataset), j(&p.dataset)),
        (
            "loader.batch_size",
            j(&old.loader.batch_size),
            j(&p.loader.batch_size),
        ),
        ("loader.seed", j(&old.loader.seed), j(&p.loader.seed)),
        ("loader.order", j(&old.loader.order), j(&p.loader.order)),
        (
            "loader.window_shards",
            j(&old.loader.window_shards),
            j(&p.loader.window_shards),
        ),
        ("loader.output", j(&old.loader.output), j(&p.loader.output)),
        ("train.stages", j(&old.train), j(&p.train)),
        ("eval", j(&old.eval), j(&p.eval)),
        ("model", j(&old.model), j(&p.model)),
        (
            "optimizer.momentum",
            j(&old.optimizer.momentum),
            j(&p.optimizer.momentum),
        ),
        (
            "optimizer.weight_decay",
            j(&old.optimizer.weight_decay),
            j(&p.optimizer.weight_decay),
        ),
        (
            "optimizer.decay_biases",
            j(&old.optimizer.decay_biases),
            j(&p.optimizer.decay_biases),
        ),
        (
            "optimizer.dropout",
            j(&old.optimizer.dropout),
            j(&p.optimizer.dropout),
        ),
        ("schedule", j(&old.schedule), j(&p.schedule)),
    ];
    for (key, was, now) in pairs {
        if was != now {
            return Err(TrainError::Setup(format!(
                "--resume: {key} is {now} in {}, but the run started with {was} ({}); a resumed \
                 run continues exactly only with the same settings; these may change: {RESUMABLE_CHANGES}",
                p.path.display(),
                saved.display()
            )));
        }
    }
    if old.training.val_limit != p.training.val_limit {
        return Err(TrainError::Setup(format!(
            "--resume: training.val_limit changed ({:?} -> {:?}): the best epoch and the schedule \
             compare validation errors over the same images",
            old.training.val_limit, p.training.val_limit
        )));
    }
    Ok(())
}

/// Checks that every process starts from the same parameters, momenta and position (each
/// computes its own starting point: the same seed, or the same checkpoint on shared storage).
fn same_start_everywhere(
    g: &mut dyn CrossProcess,
    params: &[NamedTensor],
    momenta: &[NamedTensor],
    state: &TrainState,
) -> Result<(), TrainError> {
    let mut h = 0u32;
    for t in params.iter().chain(momenta) {
        h = crc32c::crc32c_append(h, t.name.as_bytes());
        h = crc32c::crc32c_append(h, bytemuck::cast_slice(&t.data));
    }
    for n in [state.epoch, state.batch, state.step] {
        h = crc32c::crc32c_append(h, &n.to_le_bytes());
    }
    let mine = h.to_le_bytes().to_vec();
    let mut theirs = mine.clone();
    g.broadcast(&mut theirs)?;
    if theirs != mine {
        return Err(TrainError::Setup(format!(
            "rank {} starts from other parameters or another position than rank 0 \
             (epoch {}, batch {}): every rank must see the same run directory and checkpoint",
            g.rank(),
            state.epoch,
            state.batch
        )));
    }
    Ok(())
}

/// Centre-crop validation through the forward graph, reading the step's current parameters
/// where they live (no copy). The images are [`sample_records`]`(val_limit, SAMPLE_SEED)`;
/// this process takes every `world`-th of them from position `rank`.
struct Validator {
    session: ort::session::Session,
    split: Arc<PreparedSplit>,
    pipeline: Pipeline,
    names: Vec<String>,
    classes: usize,
    /// The records all processes validate together.
    sample: usize,
    /// This process's share of them.
    mine: Vec<u64>,
}

impl Validator {
    fn new(
        config: &VggConfig,
        p: &Pipeline,
        split: Arc<PreparedSplit>,
        settings: &SessionSettings,
        rank: usize,
        world: usize,
    ) -> Result<Self, TrainError> {
        let sample = sample_records(&split, p.training.val_limit, SAMPLE_SEED)
            .map_err(|e| TrainError::Setup(format!("validation (training.val_limit): {e}")))?;
        let mine = sample.iter().copied().skip(rank).step_by(world).collect();
        let session = session::build(&graphs::forward_graph(config), settings)?;
        Ok(Validator {
            session,
            split,
            pipeline: p.clone(),
            names: crate::config::model::parameters(config)
                .into_iter()
                .map(|s| s.name)
                .collect(),
            classes: config.classes as usize,
            sample: sample.len(),
            mine,
        })
    }

    /// Images validated by all processes together.
    fn images(&self) -> u64 {
        self.sample as u64
    }

    /// Top-1/top-5 counts and the mean cross-entropy over the validation images.
    fn run(&mut self, step: &mut Engine) -> Result<(TopK, f64), TrainError> {
        use rayon::prelude::*;
        let p = &self.pipeline;
        let crop = step.crop() as u32;
        let mut eval = p.eval.clone();
        eval.crop = Some(crop);
        if eval.scale < crop {
            eval.scale = crop;
        }
        let per = 3 * crop as usize * crop as usize;
        let batch = p.loader.batch_size.max(1);
        let e = |what: &'static str| {
            move |source: ort::Error| TrainError::Ort {
                what: format!("validation {what}"),
                source,
            }
        };
        let mut binding = self.session.create_binding().map_err(e("binding"))?;
        for (name, t) in self.names.iter().zip(step.params()) {
            binding.bind_input(name.as_str(), t).map_err(e("binding"))?;
        }
        let cpu = ort::memory::MemoryInfo::new(
            ort::memory::AllocationDevice::CPU,
            0,
            ort::memory::AllocatorType::Device,
            ort::memory::MemoryType::Default,
        )
        .map_err(e("memory"))?;
        let (mut top, mut loss) = (TopK::default(), 0f64);
        for records in self.mine.chunks(batch) {
            let n = records.len();
            let mut data = vec![0f32; n * per];
            let labels = data
                .par_chunks_mut(per)
                .zip(records.par_iter())
                .map(|(dst, &g)| {
                    augment::with_record(&self.split, g, |rec, scratch| {
                        augment::eval_sample(rec, &eval, scratch, augment::Output::F32Chw(dst))?;
                        Ok(rec.label)
                    })
                })
                .collect::<Result<Vec<u32>, _>>()
                .map_err(|e| TrainError::Loader(e.into()))?;
            let shape = vec![n, 3, crop as usize, crop as usize];
            let x = ort::value::Tensor::from_array((shape, data)).map_err(e("input"))?;
            binding.bind_input("images", &x).map_err(e("input"))?;
            binding
                .bind_output_to_device("logits", &cpu)
                .map_err(e("output"))?;
            let outputs = self.session.run_binding(&binding).map_err(e("run"))?;
            let (_, logits) = outputs["logits"]
                .try_extract_tensor::<f32>()
                .map_err(e("output"))?;
            for (row, &label) in logits.chunks(self.classes).zip(&labels) {
                top.add(row, label as usize);
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                loss += lse - row[label as usize] as f64;
            }
        }
        drop(binding);
        if let Some(g) = step.group() {
            let mut counts = [
                top.images as f64,
                top.top1_correct as f64,
                top.top5_correct as f64,
                loss,
            ];
            g.all_reduce_f64(&mut counts)?;
            top.images = counts[0] as u64;
            top.top1_correct = counts[1] as u64;
            top.top5_correct = counts[2] as u64;
            loss = counts[3];
        }
        Ok((top, loss / top.images.max(1) as f64))
    }
}
