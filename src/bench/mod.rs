//! Throughput measurements that always carry their baseline: `vgg bench loader` times the full
//! augmentation pipeline and, in the same run on the same records and threads, plain decoding,
//! so the figure that matters is a ratio that survives a noisy shared machine.

pub mod step;

use crate::train::engine::Engine;
use crate::train::parallel::ParallelOptions;
use std::sync::Arc;
use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::config::pipeline::Pipeline;
use crate::data::augment;
use crate::data::loader::{epoch_order, Loader, LoaderError, LoaderOptions, Mode};
use crate::data::store::PreparedSplit;
use crate::util::machine::{machine, peak_rss_bytes, Machine};
use crate::util::progress::Cancel;

/// Why a benchmark could not run to the end.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
    #[error(transparent)]
    Store(#[from] crate::data::store::StoreError),
    #[error("interrupted before the measurements were complete; nothing was reported")]
    Interrupted,
    #[error("reading ONNX Runtime's profile: {0}")]
    Profile(String),
}

/// One row of the thread-scaling table.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderRow {
    pub threads: usize,
    pub images_per_sec: f64,
    pub images_per_sec_per_core: f64,
    pub decode_only_images_per_sec: f64,
    pub ratio_to_decode: f64,
    /// The full pipeline with the records' CRC-32C check turned off, in the same run.
    pub images_per_sec_without_crc: f64,
    /// `images_per_sec / images_per_sec_without_crc`: what the check costs (1.0: nothing).
    pub crc_ratio: f64,
}

/// `vgg bench loader` output. The top-level figures are those of the largest thread count.
#[derive(Debug, Clone, Serialize)]
pub struct LoaderReport {
    pub machine: Machine,
    pub pipeline: String,
    pub dataset: String,
    pub records: u64,
    pub batch_size: usize,
    pub batches: usize,
    pub output: crate::config::pipeline::OutputKind,
    pub images_per_sec: f64,
    pub images_per_sec_per_core: f64,
    pub decode_only_images_per_sec: f64,
    pub ratio_to_decode: f64,
    /// With the records' CRC check over without it, at the largest thread count.
    pub crc_ratio: f64,
    /// images/s at the largest thread count over images/s at one thread.
    pub scaling: f64,
    /// Bytes of batch buffers the loader holds, and this process's peak RSS.
    pub loader_buffer_bytes: usize,
    pub peak_rss_bytes: Option<u64>,
    pub rows: Vec<LoaderRow>,
}

/// Times plain decoding of `records` (global indices) with `threads` workers.
fn decode_rate(split: &PreparedSplit, records: &[u64], threads: usize) -> Result<f64, LoaderError> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| LoaderError::Threads(e.to_string()))?;
    let t = Instant::now();
    pool.install(|| {
        records.par_iter().try_for_each(|&g| {
            augment::with_record(split, g, |rec, scratch| {
                augment::decode_record(rec, scratch).map(|_| ())
            })
            .map_err(LoaderError::from)
        })
    })?;
    Ok(records.len() as f64 / t.elapsed().as_secs_f64())
}

/// Times `batches` batches of the full pipeline (after one warm-up batch) with `threads`
/// workers, over as many epochs as that takes (one loader, so buffers and threads stay warm as
/// in a training run). Returns (images/s, buffer bytes).
fn pipeline_rate(
    split: &Arc<PreparedSplit>,
    pipeline: &Pipeline,
    threads: usize,
    batches: usize,
) -> Result<(f64, usize), LoaderError> {
    let mut settings = pipeline.loader.clone();
    settings.threads = threads;
    let per_epoch = if settings.drop_last {
        split.len() as usize / settings.batch_size
    } else {
        (split.len() as usize).div_ceil(settings.batch_size)
    };
    if per_epoch == 0 {
        return Err(LoaderError::Options(format!(
            "the split has fewer records ({}) than one batch ({})",
            split.len(),
            settings.batch_size
        )));
    }
    let loader = Loader::new(
        split.clone(),
        LoaderOptions {
            epochs: (batches + 1).div_ceil(per_epoch) as u64,
            ..LoaderOptions::new(settings, Mode::Train(pipeline.train.clone()), 0)
        },
    )?;
    let bytes = loader.buffer_bytes();
    let mut images = 0usize;
    let mut started = None;
    for batch in loader.take(batches + 1) {
        let batch = batch?;
        match started {
            None => started = Some(std::time::Instant::now()), // the warm-up batch
            Some(_) => images += batch.len(),
        }
    }
    let secs = started.expect("at least one batch").elapsed().as_secs_f64();
    Ok((images as f64 / secs, bytes))
}

/// Runs the loader benchmark over `threads` (e.g. 1..=cores).
pub fn loader_bench(
    split: Arc<PreparedSplit>,
    pipeline: &Pipeline,
    dataset: &str,
    threads: &[usize],
    batches: usize,
    cancel: &Cancel,
    mut on_row: impl FnMut(&LoaderRow),
) -> Result<LoaderReport, BenchError> {
    let lengths: Vec<u64> = split.shards.iter().map(|r| r.len() as u64).collect();
    let s = &pipeline.loader;
    let mut records = epoch_order(&lengths, s.order, s.window_shards, s.seed, 0, 0, 1, false);
    records.truncate((batches * s.batch_size).max(1));
    // The same store with the per-record CRC check off: its cost, measured beside it.
    let unchecked = Arc::new(PreparedSplit::open_without_record_checks(&split.dir)?);
    let mut rows = Vec::new();
    let mut buffer_bytes = 0;
    for &t in threads {
        if cancel.is_cancelled() {
            return Err(BenchError::Interrupted);
        }
        let decode = decode_rate(&split, &records, t)?;
        let (full, bytes) = pipeline_rate(&split, pipeline, t, batches)?;
        let (no_crc, _) = pipeline_rate(&unchecked, pipeline, t, batches)?;
        buffer_bytes = bytes;
        let row = LoaderRow {
            threads: t,
            images_per_sec: full,
            images_per_sec_per_core: full / t as f64,
            decode_only_images_per_sec: decode,
            ratio_to_decode: full / decode,
            images_per_sec_without_crc: no_crc,
            crc_ratio: full / no_crc,
        };
        on_row(&row);
        rows.push(row);
    }
    let last = rows
        .last()
        .cloned()
        .ok_or_else(|| LoaderError::Options("no thread counts".into()))?;
    let first = &rows[0];
    Ok(LoaderReport {
        machine: machine(),
        pipeline: pipeline.name.clone(),
        dataset: dataset.to_string(),
        records: split.len(),
        batch_size: s.batch_size,
        batches,
        output: s.output,
        images_per_sec: last.images_per_sec,
        images_per_sec_per_core: last.images_per_sec_per_core,
        decode_only_images_per_sec: last.decode_only_images_per_sec,
        ratio_to_decode: last.ratio_to_decode,
        crc_ratio: last.crc_ratio,
        scaling: last.images_per_sec / first.images_per_sec,
        loader_buffer_bytes: buffer_bytes,
        peak_rss_bytes: peak_rss_bytes(),
        rows,
    })
}

/// `vgg bench train`: whole training loop vs the step alone vs the loader alone.
#[derive(Debug, Clone, Serialize)]
pub struct TrainBenchReport {
    pub machine: Machine,
    pub pipeline: String,
    pub config: String,
    pub batch: usize,
    pub steps: usize,
    /// Loader + step, as `vgg train` runs them (the loader prefetches while a step runs).
    pub loop_images_per_sec: f64,
    /// The step alone, on one batch already in memory.
    pub step_images_per_sec: f64,
    /// The loader alone, draining batches as fast as it makes them.
    pub loader_images_per_sec: f64,
    /// `loader` or `step`: the slower of the two.
    pub limited_by: String,
    /// Loop throughput over the slower part's throughput (1.0: no overhead from running both).
    pub efficiency: f64,
    /// Data-parallel replicas and micro-batches per replica.
    pub replicas: usize,
    pub accumulate: usize,
    /// Share of the step-alone time spent summing gradients across replicas (0 for the fused
    /// step).
    pub reduce_share: f64,
    /// With replicas or accumulation: the fused step of one replica on the first device, in the
    /// same run, and the split step's throughput over it.
    pub one_replica_step_images_per_sec: Option<f64>,
    pub ratio_to_one_replica: Option<f64>,
}

/// Times `steps` training steps three ways on the pipeline's network (see [`TrainBenchReport`]).
pub fn train_bench(
    p: &Pipeline,
    split: Arc<PreparedSplit>,
    parallel: &ParallelOptions,
    steps: usize,
    cancel: &Cancel,
) -> Result<TrainBenchReport, BenchError> {
    let config = crate::train::run::network(p)?;
    let (settings, opts) = crate::train::run::step_setup(p);
    let batch = opts.batch;
    let params = crate::net::init::initialise(
        &config,
        crate::config::training::Init::Kaiming,
        settings.seed,
    );
    let momenta = crate::net::init::zero_momenta(&params);
    let mut step = Engine::new(
        &config,
        &opts,
        p.optimizer.dropout,
        &params,
        &momenta,
        parallel,
        None,
    )?;
    let loader = |epoch: u64| {
        Loader::new(
            split.clone(),
            LoaderOptions {
                epochs: 1000,
                ..LoaderOptions::new(settings.clone(), Mode::Train(p.train.clone()), epoch)
            },
        )
    };
    // A small learning rate keeps the numbers finite over many steps on one batch.
    let lr = 1e-4;
    let seed = settings.seed;
    // Loop: loader and step together, after two warm-up steps.
    let mut it = loader(0)?;
    for _ in 0..2 {
        let b = it.next().expect("the loader runs for many epochs")?;
        step.step(&b, lr, seed, false)?;
    }
    let t = Instant::now();
    for _ in 0..steps {
        let b = it.next().expect("the loader runs for many epochs")?;
        step.step(&b, lr, seed, false)?;
    }
    let loop_ips = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    if cancel.is_cancelled() {
        return Err(BenchError::Interrupted);
    }
    // Step alone, on one batch.
    let b = it.next().expect("the loader runs for many epochs")?;
    drop(it);
    step.step(&b, lr, seed, false)?;
    let reduce_before = step.reduce_seconds();
    let t = Instant::now();
    for _ in 0..steps {
        step.step(&b, lr, seed, false)?;
    }
    let step_seconds = t.elapsed().as_secs_f64();
    let step_ips = (steps * batch) as f64 / step_seconds;
    let reduce_share = (step.reduce_seconds() - reduce_before) / step_seconds;
    drop(step);
    // The baseline: one replica, no accumulation, on the first device.
    let one = if parallel.devices.len() > 1 || parallel.accumulate > 1 {
        let mut fused = Engine::new(
            &config,
            &opts,
            p.optimizer.dropout,
            &params,
            &momenta,
            &ParallelOptions {
                devices: vec![parallel.devices[0]],
                accumulate: 1,
                threads: parallel.threads,
            },
            None,
        )?;
        fused.step(&b, lr, seed, false)?;
        let t = Instant::now();
        for _ in 0..steps {
            fused.step(&b, lr, seed, false)?;
        }
        Some((steps * batch) as f64 / t.elapsed().as_secs_f64())
    } else {
        None
    };
    drop((params, momenta));
    drop(b);
    if cancel.is_cancelled() {
        return Err(BenchError::Interrupted);
    }
    // Loader alone.
    let mut it = loader(1)?;
    it.next().expect("the loader runs for many epochs")?;
    let t = Instant::now();
    for _ in 0..steps {
        it.next().expect("the loader runs for many epochs")?;
    }
    let loader_ips = (steps * batch) as f64 / t.elapsed().as_secs_f64();
    let (limited_by, slower) = if loader_ips < step_ips {
        ("loader", loader_ips)
    } else {
        ("step", step_ips)
    };
    Ok(TrainBenchReport {
        machine: machine(),
        pipeline: p.name.clone(),
        config: config.name.clone(),
        batch,
        steps,
        loop_images_per_sec: loop_ips,
        step_images_per_sec: step_ips,
        loader_images_per_sec: loader_ips,
        limited_by: limited_by.into(),
        efficiency: loop_ips / slower,
        replicas: parallel.devices.len(),
        accumulate: parallel.accumulate,
        reduce_share,
        one_replica_step_images_per_sec: one,
        ratio_to_one_replica: one.map(|o| step_ips / o),
    })
}
