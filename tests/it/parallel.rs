//! Data-parallel training and gradient accumulation on the CPU: the step split over replicas
//! and micro-batches equals one step on the whole batch (to float rounding), replicas stay
//! identical, and a run stopped with 2 replicas resumes on 1 to the uninterrupted result.

use std::path::Path;
use std::sync::Arc;

use vgg::config::pipeline::Pipeline;
use vgg::data::loader::{Batch, Loader, LoaderOptions, Mode};
use vgg::data::store::PreparedSplit;
use vgg::net::checkpoint::{Checkpoint, NamedTensor};
use vgg::net::graph::vgg::StepOptions;
use vgg::net::session::{Device, SessionSettings};
use vgg::train::parallel::{ParallelOptions, ParallelStep};
use vgg::train::step::StepSession;
use vgg::train::{self, Ending};
use vgg::util::progress::Silent;

use crate::train::{dataset, options, pipeline};

/// The largest difference between two tensor lists relative to the largest magnitude, per
/// tensor, over all tensors (NaN when a value is not finite).
pub(crate) fn relative_difference(a: &[NamedTensor], b: &[NamedTensor]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f64;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.name, y.name);
        if x.data.iter().chain(&y.data).any(|v| !v.is_finite()) {
            return f64::NAN; // fails every `<` comparison
        }
        let scale = y.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
        let diff = x
            .data
            .iter()
            .zip(&y.data)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs())) as f64;
        worst = worst.max(diff / scale);
    }
    worst
}

pub(crate) fn batches(
    p: &Pipeline,
    split: &Arc<PreparedSplit>,
    batch: usize,
    n: usize,
) -> Vec<Batch> {
    let mut s = p.loader.clone();
    s.drop_last = true;
    s.batch_size = batch;
    s.prefetch = n + 1;
    let loader = Loader::new(
        split.clone(),
        LoaderOptions::new(s, Mode::Train(p.train.clone()), 0),
    )
    .unwrap();
    loader.take(n).map(|b| b.unwrap()).collect()
}

#[test]
fn micro_batches_and_replicas_equal_one_step_on_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let p = pipeline(dir.path(), "");
    let config = p.model.clone().unwrap();
    let params = vgg::net::init::initialise(&config, vgg::config::training::Init::Glorot, 1);
    let momenta = vgg::net::init::zero_momenta(&params);
    let batch = 24;
    let opts = StepOptions {
        batch,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let settings = SessionSettings {
        threads: 1,
        ..Default::default()
    };
    // Dropout on: the masks must follow the samples into their micro-batches.
    let dropout = 0.5;
    let bs = batches(&p, &data.0, batch, 3);
    let lrs = [0.01f32, 0.02, 0.005];
    let mut fused =
        StepSession::new(&config, &opts, dropout, &params, &momenta, &settings).unwrap();
    let mut losses = Vec::new();
    for (b, &lr) in bs.iter().zip(&lrs) {
        losses.push(fused.step(b, lr, 7).unwrap());
    }
    let (want_p, want_m) = fused.download().unwrap();
    for (replicas, accumulate) in [(1, 2), (1, 4), (2, 1), (3, 1), (2, 3)] {
        let mut par = ParallelStep::new(
            &config,
            &opts,
            dropout,
            &params,
            &momenta,
            &ParallelOptions {
                devices: vec![Device::Cpu; replicas],
                accumulate,
                threads: replicas,
            },
            None,
        )
        .unwrap();
        for ((b, &lr), want) in bs.iter().zip(&lrs).zip(&losses) {
            let r = par.step(b, lr, 7).unwrap();
            assert_eq!(
                (r.top1_correct, r.top5_correct),
                (want.top1_correct, want.top5_correct),
                "{replicas} x {accumulate}"
            );
            assert!(
                ((r.loss - want.loss) / want.loss).abs() < 1e-5,
                "{replicas} x {accumulate}: loss {} vs {}",
                r.loss,
                want.loss
            );
        }
        let (got_p, got_m) = par.download().unwrap();
        let dp = relative_difference(&got_p, &want_p);
        let dm = relative_difference(&got_m, &want_m);
        assert!(
            dp < 1e-5 && dm < 1e-5,
            "{replicas} x {accumulate}: parameters {dp:e}, momenta {dm:e}"
        );
        // The parameters moved (the comparison is not between two untouched copies).
        assert!(relative_difference(&got_p, &params) > 1e-4);
        let sums = par.checksums().unwrap();
        assert_eq!(sums.len(), replicas);
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "replicas differ: {sums:x?}"
        );
    }
    // A split that does not divide the batch is refused before any work.
    let err = ParallelStep::new(
        &config,
        &opts,
        dropout,
        &params,
        &momenta,
        &ParallelOptions {
            devices: vec![Device::Cpu; 5],
            accumulate: 1,
            threads: 1,
        },
        None,
    )
    .err()
    .expect("5 replicas cannot split 24 images");
    assert!(err.to_string().contains("5 replica"), "{err}");
}

/// With fewer threads than replicas the CPU replicas take turns instead of running at once
/// (`--threads 1` uses one core): the same bits as when they run side by side, on one or two
/// intra-op threads each.
#[test]
fn cpu_replicas_on_fewer_threads_take_turns_and_give_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let p = pipeline(dir.path(), "");
    let config = p.model.clone().unwrap();
    let params = vgg::net::init::initialise(&config, vgg::config::training::Init::Glorot, 3);
    let momenta = vgg::net::init::zero_momenta(&params);
    let opts = StepOptions {
        batch: 8,
        ..Default::default()
    };
    let bs = batches(&p, &data.0, 8, 2);
    let run = |threads: usize| {
        let mut step = ParallelStep::new(
            &config,
            &opts,
            0.5,
            &params,
            &momenta,
            &ParallelOptions {
                devices: vec![Device::Cpu; 2],
                accumulate: 1,
                threads,
            },
            None,
        )
        .unwrap();
        let losses: Vec<f32> = bs
            .iter()
            .map(|b| step.step(b, 0.01, 5).unwrap().loss)
            .collect();
        (
            losses,
            step.checksums().unwrap(),
            step.download().unwrap().0,
        )
    };
    let one = run(1);
    // Side by side on one thread each, and on two intra-op threads each.
    for threads in [2, 4] {
        let other = run(threads);
        assert!(
            one.1 == other.1 && one.0 == other.0,
            "turns {:x?} {:?}, {threads} threads {:x?} {:?}",
            one.1,
            one.0,
            other.1,
            other.0
        );
    }
    assert!(relative_difference(&one.2, &params) > 1e-4, "nothing moved");
}

#[test]
fn a_run_stopped_with_two_replicas_resumes_on_one_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let extra = "[optimizer]\nlr = 0.02\n[schedule]\nkind = \"step\"\nevery = 1\nfactor = 0.5\n\
                 [training]\ninit = { kind = \"glorot\" }\nepochs = 2\nlog_every = 5\n";
    let p = pipeline(dir.path(), extra);
    let straight = dir.path().join("straight");
    train::train(options(p.clone(), &data, &straight), &Silent).unwrap();

    // Two replicas of two micro-batches each, stopped after the first step ...
    let split = dir.path().join("split");
    let mut o = options(p.clone(), &data, &split);
    o.devices = vec![Device::Cpu; 2];
    o.pipeline.training.accumulate = 2;
    o.stop.cancel();
    assert_eq!(
        train::train(o, &Silent).unwrap().ending,
        Ending::Interrupted
    );
    // ... resumed on one replica without accumulation (the fused step).
    let mut o = options(p, &data, &split);
    o.resume = true;
    train::train(o, &Silent).unwrap();

    let load = |d: &Path| Checkpoint::load(&d.join("last.safetensors")).unwrap();
    let (a, b) = (load(&straight), load(&split));
    let d = relative_difference(&b.params, &a.params);
    assert!(d < 1e-4, "parameters differ by {d:e} after 2 epochs");
    assert_eq!(a.state.unwrap()["step"], b.state.unwrap()["step"]);
    let epochs = |d: &Path| {
        vgg::train::metrics::read_records(&d.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                vgg::train::metrics::Record::Epoch(e) => Some(e.val_top1_error),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(epochs(&straight), epochs(&split));
}
