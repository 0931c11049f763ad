//! The training loop: loader batches into the step session, validation after every epoch, the
//! learning-rate schedule, checkpoints, metrics and plots, resume and clean stops.
//!
//! Run directory:
//! - `last.safetensors`: parameters, momenta and [`TrainState`], written atomically at the end
//!   of every epoch, every `checkpoint_every` steps and on Ctrl-C;
//! - `best.safetensors`: the epoch with the best validation top-1 error so far;
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
    /// Training time so far, over all resumes.
    pub elapsed_seconds: f64,
    /// The run ended (epoch count reached, or the schedule's last plateau). Resuming with a
    /// larger epoch count continues a run that ended on its count.
    pub finished: bool,
    pub pipeline: String,
    /// The sums of the epoch in progress so far, so that a resumed epoch reports the same
    /// train loss and error as an uninterrupted one.
    #[serde(default)]
    pub partial: EpochSums,
}

/// Running sums of one epoch's training batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    pub loss_sum: f64,
    pub images: u64,
    pub top1_correct: u64,
    pub top5_correct: u64,
    /// Seconds of the epoch spent so far.
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
    /// The other training processes (one per GPU under torchrun or Slurm); `None` alone.
    pub group: Option<Box<dyn CrossProcess>>,
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
        r.epoch + 1,
        r.train_loss,
        100.0 * r.train_top1_error,
        r.lr,
        r.images_per_sec,
        r.seconds
    )
}

pub const LAST: &str = "last.safetensors";
pub const BEST: &str = "best.safetensors";

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
    let p = &o.pipeline;
    let last = o.out.join(LAST);
    if o.resume {
        let ck = Checkpoint::load(&last)?;
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
        let ck = Checkpoint::load(path)?;
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
            let ck = Checkpoint::load(path)?;
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

/// Writes the step's current parameters, momenta and `state` to each of `paths` (one copy from
/// the device for all of them).
fn save(
    paths: &[&Path],
    config: &VggConfig,
    step: &Engine,
    state: &TrainState,
) -> Result<(), TrainError> {
    if paths.is_empty() {
        return Ok(());
    }
    let (params, momenta) = step.download()?;
    let ck = Checkpoint {
        config: config.clone(),
        params,
        momenta: Some(momenta),
        state: Some(serde_json::to_value(state).expect("state serialises")),
    };
    for path in paths {
        ck.save(path)?;
    }
    Ok(())
}

/// Trains as the pipeline says; see the module documentation.
pub fn train(mut o: TrainOptions, progress: &dyn Progress) -> Result<TrainSummary, TrainError> {
    let group = o.group.take();
    let (rank, world) = group.as_ref().map_or((0, 1), |g| (g.rank(), g.world()));
    let writer = rank == 0;
    let p = &o.pipeline;
    let config = network(p)?;
    for (what, split) in [("training", Some(&o.train)), ("validation", o.val.as_ref())] {
        let Some(split) = split else { continue };
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
    if writer {
        std::fs::create_dir_all(&o.out).map_err(|e| TrainError::Io {
            path: o.out.clone(),
            source: e,
        })?;
    }
    let (params, momenta, mut state) = starting_point(&o, &config)?;
    let mut group = group;
    if let Some(g) = group.as_mut() {
        same_start_everywhere(g.as_mut(), &params, &momenta, &state)?;
    }
    if let Some(lr) = o.lr {
        state.schedule.lr = lr;
    }
    let last_path = o.out.join(LAST);
    let best_path = o.out.join(BEST);
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
    let devices = if o.devices.is_empty() {
        vec![o.session.device]
    } else {
        o.devices.clone()
    };
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
            &format!("epoch {}/{epochs}", epoch + 1),
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
                save(&last_only, &config, &step, &state)?;
                last_save = Instant::now();
            }
            if stop {
                state.elapsed_seconds = elapsed(&started);
                save(&last_only, &config, &step, &state)?;
                progress.line(&format!(
                    "stopped in epoch {} after batch {}: {} holds the position; --resume continues",
                    epoch + 1,
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
            save(&last_and_best, &config, &step, &state)?;
        } else {
            save(&last_only, &config, &step, &state)?;
        }
        progress.line(&epoch_line(&record));
        progress.finish();
        if let Decision::Decrease { from, to } = decision {
            progress.line(&format!(
                "learning rate {from:e} -> {to:e} (validation top-1 error stopped improving)"
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
    let mut h = super::parallel::Fnv::default();
    for t in params.iter().chain(momenta) {
        h.write(t.name.as_bytes());
        h.write(bytemuck::cast_slice(&t.data));
    }
    h.write(&state.epoch.to_le_bytes());
    h.write(&state.batch.to_le_bytes());
    h.write(&state.step.to_le_bytes());
    let mine = h.0.to_le_bytes().to_vec();
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
/// where they live (no copy).
struct Validator {
    session: ort::session::Session,
    split: Arc<PreparedSplit>,
    pipeline: Pipeline,
    names: Vec<String>,
    classes: usize,
    rank: usize,
    world: usize,
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
            rank,
            world,
        })
    }

    /// Images validated by all processes together.
    fn images(&self) -> u64 {
        let n = self.split.len();
        self.pipeline.training.val_limit.map_or(n, |l| l.min(n))
    }

    /// Images this process validates: its every-`world`-th share of the first [`Self::images`].
    fn share(&self) -> u64 {
        let (limit, w, r) = (self.images(), self.world as u64, self.rank as u64);
        (limit + w - 1 - r) / w
    }

    /// Top-1/top-5 counts and the mean cross-entropy over the validation images.
    fn run(&mut self, step: &mut Engine) -> Result<(TopK, f64), TrainError> {
        let p = &self.pipeline;
        let crop = step.crop() as u32;
        let mut eval = p.eval.clone();
        eval.crop = Some(crop);
        if eval.scale < crop {
            eval.scale = crop;
        }
        let mut settings = p.loader.clone();
        settings.output = OutputKind::F32Nchw;
        settings.order = crate::config::pipeline::Order::Sequential;
        settings.drop_last = false;
        let loader = Loader::new(
            self.split.clone(),
            LoaderOptions {
                rank: self.rank,
                world: self.world,
                uneven: true,
                ..LoaderOptions::new(settings, Mode::Eval(eval), 0)
            },
        )?;
        let limit = self.share();
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
        let (mut top, mut loss, mut seen) = (TopK::default(), 0f64, 0u64);
        for b in loader {
            if seen >= limit {
                break;
            }
            let b = b?;
            let images = b.images().expect("f32 batches");
            let n = (b.len() as u64).min(limit - seen) as usize;
            let shape = vec![n, images.shape()[1], images.shape()[2], images.shape()[3]];
            let data = images.as_slice().expect("contiguous")[..n * shape[1] * shape[2] * shape[3]]
                .to_vec();
            let x = ort::value::Tensor::from_array((shape, data)).map_err(e("input"))?;
            binding.bind_input("images", &x).map_err(e("input"))?;
            binding
                .bind_output_to_device("logits", &cpu)
                .map_err(e("output"))?;
            let outputs = self.session.run_binding(&binding).map_err(e("run"))?;
            let (_, logits) = outputs["logits"]
                .try_extract_tensor::<f32>()
                .map_err(e("output"))?;
            for (row, &label) in logits.chunks(self.classes).zip(b.labels()).take(n) {
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
            seen += n as u64;
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
