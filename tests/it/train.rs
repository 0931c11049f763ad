//! `vgg train` end to end on a small generated dataset: learning well below chance, exact
//! resume, a diverging run stopping with its checkpoint intact, Ctrl-C, and the paper's
//! pre-initialisation of a deeper network from A.

use std::path::Path;
use std::sync::Arc;

use vgg::config::pipeline::Pipeline;
use vgg::config::registry::Registry;
use vgg::data::prepare::PrepareOptions;
use vgg::data::source::Split;
use vgg::data::store::PreparedSplit;
use vgg::net::checkpoint::Checkpoint;
use vgg::net::session::SessionSettings;
use vgg::train::{self, Ending, TrainError, TrainOptions};
use vgg::util::progress::{Cancel, Silent};

use crate::prepare::run;

/// 4 shape classes in their own colours, 100 training and 25 validation images each, short
/// sides 40-64.
pub(crate) fn dataset(dir: &Path) -> (Arc<PreparedSplit>, Arc<PreparedSplit>) {
    std::fs::write(
        dir.join("datasets.toml"),
        format!("[datasets.shapes]\nsource = \"synthetic\"\n[datasets.shapes.synthetic]\nclasses = 4\n\
         train_per_class = {}\nval_per_class = 25\nclass_colours = true\nmin_short_side = 40\nmax_short_side = 64\n\
         [datasets.shapes.store]\nmax_shortest_side = 64\n",
        100
    ))
    .unwrap();
    let reg = Registry::load(&dir.join("datasets.toml")).unwrap();
    let spec = reg.get("shapes").unwrap();
    run(
        spec,
        &PrepareOptions {
            splits: vec![Split::Train, Split::Val],
            ..Default::default()
        },
    );
    let open = |s: &str| Arc::new(PreparedSplit::open(&spec.shards.join(s)).unwrap());
    (open("train"), open("val"))
}

/// A 1/16-width VGG-A at 32x32 with a 4-class head.
pub(crate) fn pipeline(dir: &Path, extra: &str) -> Pipeline {
    let text = format!(
        "dataset = \"shapes\"\n[model]\n{}\nclasses = 4\n\
         [loader]\nbatch_size = 16\nprefetch = 2\nthreads = 1\nseed = 3\n\
         [[train.stages]]\nkind = \"decode\"\n[[train.stages]]\nkind = \"scale_jitter\"\nmin = 36\nmax = 48\n\
         [[train.stages]]\nkind = \"random_crop\"\nsize = 32\n[[train.stages]]\nkind = \"flip\"\n\
         [[train.stages]]\nkind = \"pca_lighting\"\n[[train.stages]]\nkind = \"normalize\"\n\
         [eval]\nscale = 40\ncrop = 32\n{extra}",
        "config = \"A\"\nwidth = 0.0625"
    );
    let path = dir.join("p.toml");
    std::fs::write(&path, &text).unwrap();
    Pipeline::load(&path).unwrap()
}

pub(crate) fn options(
    p: Pipeline,
    data: &(Arc<PreparedSplit>, Arc<PreparedSplit>),
    out: &Path,
) -> TrainOptions {
    TrainOptions {
        pipeline: p,
        train: data.0.clone(),
        val: Some(data.1.clone()),
        out: out.to_path_buf(),
        resume: false,
        session: SessionSettings {
            threads: 1,
            ..Default::default()
        },
        stop: Cancel::new(),
        lr: None,
        devices: Vec::new(),
        keep_replicas: false,
        group: None,
        allow_class_mismatch: false,
    }
}

/// A recipe that learns this set in seconds: He initialisation, no dropout, lr 1e-3.
const FAST: &str = "[optimizer]\nlr = 0.001\ndropout = 0.0\n[schedule]\nkind = \"constant\"\n\
                    [training]\ninit = { kind = \"kaiming\" }\nlog_every = 2\n";

#[test]
fn a_short_run_learns_well_below_chance_and_writes_its_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 15\n"));
    let s = train::train(options(p, &data, &out), &Silent).unwrap();
    assert_eq!(s.ending, Ending::Epochs);
    let e = s.last_epoch.unwrap();
    let val = e.val_top1_error.unwrap();
    assert!(val < 0.5, "validation top-1 error {val} (chance is 0.75)");
    assert!(
        e.train_loss < 1.1,
        "train loss {} (ln 4 = 1.39 at chance)",
        e.train_loss
    );
    for f in [
        "last.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "plots.png",
        "pipeline.toml",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let records = vgg::train::metrics::read_records(&out.join("metrics.jsonl")).unwrap();
    let epochs = records
        .iter()
        .filter(|r| matches!(r, vgg::train::metrics::Record::Epoch(_)))
        .count();
    assert_eq!(epochs, 15);
    let ck = Checkpoint::load(&out.join("last.safetensors")).unwrap();
    assert_eq!(ck.state.unwrap()["finished"], true);
}

#[test]
fn two_epochs_straight_equal_one_epoch_resume_one_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    // Dropout on, a step schedule that changes the rate at the epoch boundary, and a
    // checkpoint mid-epoch: all of it must survive the resume.
    let extra = "[optimizer]\nlr = 0.02\n[schedule]\nkind = \"step\"\nevery = 1\nfactor = 0.5\n\
                 [training]\ninit = { kind = \"glorot\" }\ncheckpoint_every = 5\n";
    let straight = dir.path().join("straight");
    let p = pipeline(dir.path(), &format!("{extra}epochs = 2\n"));
    train::train(options(p, &data, &straight), &Silent).unwrap();

    let resumed = dir.path().join("resumed");
    let p = pipeline(dir.path(), &format!("{extra}epochs = 1\n"));
    let first = train::train(options(p, &data, &resumed), &Silent).unwrap();
    assert!(first.state.finished);
    // Raise the epoch count and resume: the second epoch continues the same run.
    let p = pipeline(dir.path(), &format!("{extra}epochs = 2\n"));
    let mut o = options(p, &data, &resumed);
    o.resume = true;
    train::train(o, &Silent).unwrap();

    // And from the middle of an epoch: stopped after its first step, then resumed.
    let mid = dir.path().join("mid");
    let p = pipeline(dir.path(), &format!("{extra}epochs = 2\n"));
    let o = options(p.clone(), &data, &mid);
    o.stop.cancel();
    assert_eq!(
        train::train(o, &Silent).unwrap().ending,
        Ending::Interrupted
    );
    let mut o = options(p, &data, &mid);
    o.resume = true;
    train::train(o, &Silent).unwrap();

    let a = Checkpoint::load(&straight.join("last.safetensors")).unwrap();
    for run in [&resumed, &mid] {
        let b = Checkpoint::load(&run.join("last.safetensors")).unwrap();
        assert_eq!(
            a.params,
            b.params,
            "parameters differ after resume ({})",
            run.display()
        );
        assert_eq!(
            a.momenta,
            b.momenta,
            "momenta differ after resume ({})",
            run.display()
        );
        assert_eq!(a.state.as_ref().unwrap()["step"], b.state.unwrap()["step"]);
    }
    // metrics.jsonl has one record per logged step, however the run was cut.
    let steps = |dir: &Path| {
        vgg::train::metrics::read_records(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|r| r.step())
            .collect::<Vec<_>>()
    };
    assert_eq!(steps(&straight), steps(&mid));
    // And the epochs' train loss and errors cover the whole epoch, however it was cut.
    let epochs = |dir: &Path| {
        vgg::train::metrics::read_records(&dir.join("metrics.jsonl"))
            .unwrap()
            .into_iter()
            .filter_map(|r| match r {
                vgg::train::metrics::Record::Epoch(e) => {
                    Some((e.train_loss, e.train_top1_error, e.train_top5_error))
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(epochs(&straight).len(), 2);
    assert_eq!(epochs(&straight), epochs(&mid));
}

#[test]
fn resuming_with_settings_that_break_exact_continuation_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 2\n"));
    let o = options(p, &data, &out);
    o.stop.cancel();
    train::train(o, &Silent).unwrap();
    let before = std::fs::read(out.join("last.safetensors")).unwrap();
    // The batch halved: the position in the epoch would mean other images.
    let text = std::fs::read_to_string(dir.path().join("p.toml")).unwrap();
    std::fs::write(
        dir.path().join("p.toml"),
        text.replace("batch_size = 16", "batch_size = 8"),
    )
    .unwrap();
    let mut o = options(
        Pipeline::load(&dir.path().join("p.toml")).unwrap(),
        &data,
        &out,
    );
    o.resume = true;
    let err = train::train(o, &Silent).unwrap_err().to_string();
    assert!(err.contains("loader.batch_size"), "{err}");
    assert!(
        err.contains("training.epochs"),
        "the message lists what may change: {err}"
    );
    assert_eq!(std::fs::read(out.join("last.safetensors")).unwrap(), before);
    // More epochs and another learning rate are fine.
    std::fs::write(
        dir.path().join("p.toml"),
        text.replace("epochs = 2", "epochs = 3")
            .replace("lr = 0.001", "lr = 0.0005"),
    )
    .unwrap();
    let mut o = options(
        Pipeline::load(&dir.path().join("p.toml")).unwrap(),
        &data,
        &out,
    );
    o.resume = true;
    o.stop.cancel();
    assert_eq!(
        train::train(o, &Silent).unwrap().ending,
        Ending::Interrupted
    );
}

#[test]
fn a_diverging_run_stops_and_leaves_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 2\n"));
    let mut o = options(p.clone(), &data, &out);
    o.pipeline.training.epochs = 1;
    train::train(o, &Silent).unwrap();
    let good = std::fs::read(out.join("last.safetensors")).unwrap();

    let mut o = options(p, &data, &out);
    o.resume = true;
    o.lr = Some(1e12);
    let err = train::train(o, &Silent).unwrap_err();
    match &err {
        TrainError::NonFinite { checkpoint, .. } => {
            assert_eq!(
                checkpoint.as_deref(),
                Some(out.join("last.safetensors").as_path())
            )
        }
        other => panic!("expected a non-finite loss, got {other}"),
    }
    assert!(err.to_string().contains("last good checkpoint"), "{err}");
    assert_eq!(
        std::fs::read(out.join("last.safetensors")).unwrap(),
        good,
        "the checkpoint changed"
    );
}

#[test]
fn a_stop_request_writes_a_checkpoint_at_the_current_batch() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 3\n"));
    let o = options(p, &data, &out);
    // Requested before the first step: the run stops after one step.
    o.stop.cancel();
    let s = train::train(o, &Silent).unwrap();
    assert_eq!(s.ending, Ending::Interrupted);
    let ck = Checkpoint::load(&out.join("last.safetensors")).unwrap();
    let st = ck.state.unwrap();
    assert_eq!(
        (
            st["epoch"].as_u64(),
            st["batch"].as_u64(),
            st["step"].as_u64()
        ),
        (Some(0), Some(1), Some(1))
    );
}

#[test]
fn a_checkpoint_of_a_pre_initialises_the_matching_layers_of_d() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("a");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 1\n"));
    train::train(options(p, &data, &out), &Silent).unwrap();
    let a = Checkpoint::load(&out.join("last.safetensors")).unwrap();

    let text = std::fs::read_to_string(dir.path().join("p.toml"))
        .unwrap()
        .replace("config = \"A\"", "config = \"D\"")
        .replace(
            "epochs = 1",
            &format!("epochs = 1\ninit_from = {:?}", out.join("last.safetensors")),
        );
    let path = dir.path().join("d.toml");
    std::fs::write(&path, text).unwrap();
    let d = Pipeline::load(&path).unwrap();
    let config = d.model.clone().unwrap();
    let o = options(d, &data, &dir.path().join("d"));
    let (params, momenta, _) = train::run::starting_point(&o, &config).unwrap();
    assert!(momenta.iter().all(|m| m.data.iter().all(|&v| v == 0.0)));
    let copied = [
        ("conv1_1", "conv1_1"),
        ("conv2_1", "conv2_1"),
        ("conv3_1", "conv3_1"),
        ("conv3_2", "conv3_2"),
        ("fc6", "fc6"),
        ("fc7", "fc7"),
        ("fc8", "fc8"),
    ];
    for t in &params {
        let layer = t.name.split('.').next().unwrap();
        let from_a = copied.iter().any(|(_, to)| *to == layer);
        let a_t = a.param(&t.name);
        if from_a {
            assert_eq!(Some(t), a_t, "{} was not copied from A", t.name);
        } else if let Some(a_t) = a_t {
            assert_ne!(t.data, a_t.data, "{} should be freshly initialised", t.name);
        }
    }
}

#[test]
fn the_bound_step_session_equals_plain_runs_of_the_step_graph() {
    use vgg::config::model::MOMENTUM;
    use vgg::data::loader::{Loader, LoaderOptions, Mode};
    use vgg::net::graph::vgg::{self as graphs, StepOptions, NEXT};
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let p = pipeline(
        dir.path(),
        "[optimizer]\ndropout = 0.5\n[training]\ninit = { kind = \"glorot\" }\n",
    );
    let config = p.model.clone().unwrap();
    let params = vgg::net::init::initialise(&config, vgg::config::training::Init::Glorot, 1);
    let momenta = vgg::net::init::zero_momenta(&params);
    let opts = StepOptions {
        batch: 16,
        ..Default::default()
    };
    let settings = SessionSettings {
        threads: 1,
        ..Default::default()
    };
    let mut bound =
        vgg::train::step::StepSession::new(&config, &opts, 0.5, &params, &momenta, &settings)
            .unwrap();
    let mut plain = vgg::net::session::build(
        &graphs::train_step_graph(&config, &opts).unwrap(),
        &settings,
    )
    .unwrap();
    let mut state: Vec<crate::gradients::T> = params
        .iter()
        .chain(&momenta)
        .map(|t| {
            crate::gradients::T::new(
                &t.name,
                &t.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(),
                t.data.clone(),
            )
        })
        .collect();
    let mut s = p.loader.clone();
    s.drop_last = true;
    let loader = Loader::new(
        data.0.clone(),
        LoaderOptions {
            settings: s,
            mode: Mode::Train(p.train.clone()),
            epoch: 0,
            epochs: 1,
            rank: 0,
            world: 1,
            uneven: false,
            start_batch: 0,
        },
    )
    .unwrap();
    for b in loader.take(3) {
        let b = b.unwrap();
        let r = bound.step(&b, 0.01, 7).unwrap();
        // The same step by hand: masks as the session draws them, per sample from its record.
        let masks: Vec<crate::gradients::T> = (0..2u64)
            .map(|i| {
                let mut data = Vec::new();
                for &record in b.indices() {
                    let mut rng = vgg::util::rng::Rng::new(
                        7,
                        vgg::util::rng::Stream::Dropout,
                        b.epoch,
                        record * 2 + i,
                    );
                    data.extend((0..config.fc as usize).map(|_| {
                        if rng.next_f32() < 0.5 {
                            2.0f32
                        } else {
                            0.0
                        }
                    }));
                }
                crate::gradients::T::new(
                    &format!("dropout{}", 6 + i),
                    &[16, config.fc as i64],
                    data,
                )
            })
            .collect();
        let mut inputs = state.clone();
        inputs.extend(masks);
        inputs.push(crate::gradients::T::new(
            "images",
            &[16, 3, 32, 32],
            b.images().unwrap().iter().copied().collect(),
        ));
        let extra = vec![
            (
                "labels".to_string(),
                ort::value::Tensor::from_array(([16usize], b.labels().to_vec()))
                    .unwrap()
                    .into_dyn(),
            ),
            (
                "learning_rate".to_string(),
                ort::value::Tensor::from_array((Vec::<usize>::new(), vec![0.01f32]))
                    .unwrap()
                    .into_dyn(),
            ),
        ];
        let out = crate::gradients::run(&mut plain, &inputs, extra);
        assert_eq!(out["loss"][0], r.loss, "batch {}", b.number);
        for t in state.iter_mut() {
            t.data = out[&format!("{}{NEXT}", t.name)].clone();
        }
    }
    let (p2, m2) = bound.download().unwrap();
    for (t, s) in p2.iter().chain(&m2).zip(&state) {
        assert_eq!(t.data, s.data, "{}", t.name);
    }
    let _ = MOMENTUM;
}

#[test]
fn cuda_without_a_cuda_runtime_is_one_clear_error() {
    let info = vgg::net::runtime::info().unwrap();
    if info.providers.iter().any(|p| p == "CUDAExecutionProvider") {
        eprintln!("SKIPPED: this ONNX Runtime has the CUDA provider");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 1\n"));
    let mut o = options(p, &data, &dir.path().join("run"));
    o.session.device = vgg::net::session::Device::Cuda(0);
    let err = train::train(o, &Silent).unwrap_err().to_string();
    assert!(
        err.contains("no CUDA execution provider") && err.contains("onnxruntime-gpu"),
        "{err}"
    );
}

#[test]
fn a_network_whose_class_count_differs_from_the_data_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let mut p = pipeline(dir.path(), &format!("{FAST}epochs = 1\n"));
    p.model.as_mut().unwrap().classes = 10;
    let out = dir.path().join("run");
    let err = train::train(options(p, &data, &out), &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4 classes") && err.contains("classes = 4"),
        "{err}"
    );
    assert!(!out.exists(), "nothing is written for a refused run");
}

/// Slurm and Kubernetes preempt with SIGTERM (Slurm's `--signal` warns with SIGUSR1): `vgg
/// train` handles both like Ctrl-C, writing its checkpoint and exiting with 128 + the signal.
#[test]
fn sigterm_and_sigusr1_stop_vgg_train_with_a_checkpoint() {
    for (sig, code) in [(libc::SIGTERM, 143), (libc::SIGUSR1, 128 + libc::SIGUSR1)] {
        let dir = tempfile::tempdir().unwrap();
        dataset(dir.path());
        pipeline(dir.path(), &format!("{FAST}epochs = 1000\n"));
        let out = dir.path().join("run");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
            .args([
                "train",
                "p.toml",
                "--out",
                "run",
                "--no-val",
                "--threads",
                "1",
            ])
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The run directory's pipeline.toml is written once the handler is installed and the
        // session is being built: a signal from then on must stop the run cleanly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !out.join("pipeline.toml").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the run never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("the run did not stop after signal {sig}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(code), "signal {sig}: {err}");
        assert!(err.contains("finishing cleanly"), "{err}");
        let ck = Checkpoint::load(&out.join("last.safetensors")).unwrap();
        let st = ck.state.unwrap();
        assert_eq!(st["epoch"].as_u64(), Some(0), "{st}");
        assert!(st["step"].as_u64().unwrap() >= 1, "{st}");
    }
}

#[test]
fn val_limit_zero_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    // Refused when the pipeline loads ...
    pipeline(dir.path(), &format!("{FAST}epochs = 1\n"));
    let path = dir.path().join("p.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}val_limit = 0\n")).unwrap();
    let err = Pipeline::load(&path).unwrap_err().to_string();
    assert!(
        err.contains("training.val_limit") && err.contains("no images"),
        "{err}"
    );
    // ... and by the trainer, for a pipeline built in code.
    let mut p = Pipeline::parse(&text, &path).unwrap();
    p.training.val_limit = Some(0);
    let err = train::train(options(p, &data, &out), &Silent)
        .unwrap_err()
        .to_string();
    assert!(err.contains("val_limit = 0"), "{err}");
    assert!(!out.exists(), "nothing is written for a refused run");
}

#[test]
fn a_limited_sample_spreads_over_the_classes_and_is_fixed() {
    use vgg::train::run::{sample_records, LimitError};
    let dir = tempfile::tempdir().unwrap();
    let (_, val) = dataset(dir.path());
    // 4 classes x 25, stored class by class: the first 8 records are all of class 0.
    let labels = |s: &[u64]| {
        let mut n = [0; 4];
        for &g in s {
            n[val.record(g).unwrap().label as usize] += 1;
        }
        n
    };
    let a = sample_records(&val, Some(8), 0).unwrap();
    assert_eq!(labels(&a), [2, 2, 2, 2]);
    assert!(a.windows(2).all(|w| w[0] < w[1]), "{a:?}");
    assert_eq!(sample_records(&val, Some(8), 0).unwrap(), a);
    assert_ne!(sample_records(&val, Some(8), 1).unwrap(), a);
    let b = sample_records(&val, Some(10), 0).unwrap();
    assert!(
        labels(&b).iter().all(|&n| n == 2 || n == 3),
        "{:?}",
        labels(&b)
    );
    assert_eq!(
        sample_records(&val, Some(1000), 0).unwrap(),
        (0..100).collect::<Vec<_>>()
    );
    assert!(matches!(
        sample_records(&val, Some(0), 0),
        Err(LimitError::ZeroLimit)
    ));
}

#[test]
fn two_identical_runs_write_byte_identical_checkpoints_with_their_class_list() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let extra = format!("{FAST}epochs = 2\ncheckpoint_every = 3\nval_limit = 20\n");
    let runs = ["one", "two"].map(|r| dir.path().join(r));
    for out in &runs {
        let p = pipeline(dir.path(), &extra);
        train::train(options(p, &data, out), &Silent).unwrap();
    }
    for f in [
        "last.safetensors",
        "best.safetensors",
        "epoch-start.safetensors",
    ] {
        let a = std::fs::read(runs[0].join(f)).unwrap();
        assert!(
            a == std::fs::read(runs[1].join(f)).unwrap(),
            "{f} differs between identical runs"
        );
    }
    let (ck, info) = Checkpoint::load_with_info(&runs[0].join("last.safetensors")).unwrap();
    let wnids: Vec<String> = data
        .0
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    assert_eq!(info.classes, Some(wnids));
    assert!(info.checksummed);
    assert!(ck.state.unwrap().get("elapsed_seconds").is_none());
}

#[test]
fn a_checkpoint_of_other_classes_is_refused_unless_the_remap_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    let p = pipeline(dir.path(), &format!("{FAST}epochs = 2\n"));
    let mut o = options(p.clone(), &data, &out);
    o.pipeline.training.epochs = 1;
    train::train(o, &Silent).unwrap();
    // The same network, saved as if trained on classes in another order.
    let last = out.join("last.safetensors");
    let ck = Checkpoint::load(&last).unwrap();
    let mut wnids: Vec<String> = data
        .0
        .manifest
        .classes
        .iter()
        .map(|c| c.wnid.clone())
        .collect();
    wnids.swap(1, 2);
    ck.save_with_classes(&last, Some(&wnids)).unwrap();
    let mut o = options(p.clone(), &data, &out);
    o.resume = true;
    let err = train::train(o, &Silent).unwrap_err().to_string();
    assert!(
        err.contains("label 1 is") && err.contains("--allow-class-mismatch"),
        "{err}"
    );
    // init_from refuses it too.
    let text = std::fs::read_to_string(dir.path().join("p.toml"))
        .unwrap()
        .replace("epochs = 2", &format!("epochs = 1\ninit_from = {last:?}"));
    std::fs::write(dir.path().join("init.toml"), text).unwrap();
    let init = Pipeline::load(&dir.path().join("init.toml")).unwrap();
    let err = train::train(options(init, &data, &dir.path().join("b")), &Silent)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("training.init_from") && err.contains("label 1 is"),
        "{err}"
    );
    let mut o = options(p, &data, &out);
    o.resume = true;
    o.allow_class_mismatch = true;
    train::train(o, &Silent).unwrap();
}

#[test]
fn a_loss_that_runs_away_in_mid_epoch_leaves_a_checkpoint_that_trains_on_at_a_lower_rate() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("run");
    // A checkpoint after every step: the last one before the NaN holds exploded weights.
    let extra = "[optimizer]\nlr = 0.01\ndropout = 0.0\n[schedule]\nkind = \"constant\"\n\
                 [training]\ninit = { kind = \"kaiming\" }\nlog_every = 1\ncheckpoint_every = 1\n\
                 epochs = 1\nval_limit = 20\n";
    let p = pipeline(dir.path(), extra);
    let err = train::train(options(p.clone(), &data, &out), &Silent).unwrap_err();
    let TrainError::NonFinite {
        step, checkpoint, ..
    } = &err
    else {
        panic!("expected a non-finite loss, got {err}");
    };
    assert!(
        *step > 1,
        "diverged at step {step}: no mid-epoch checkpoint to test"
    );
    assert_eq!(
        checkpoint.as_deref(),
        Some(out.join("last.safetensors").as_path())
    );
    let diverged = Checkpoint::load(&out.join("diverged.safetensors")).unwrap();
    assert_eq!(diverged.state.unwrap()["step"].as_u64(), Some(*step));
    let last = Checkpoint::load(&out.join("last.safetensors")).unwrap();
    assert_eq!(last.state.unwrap()["step"].as_u64(), Some(0));
    // --resume --lr ten times lower trains the epoch with a finite loss.
    let mut o = options(p, &data, &out);
    o.resume = true;
    o.lr = Some(0.001);
    let s = train::train(o, &Silent).unwrap();
    assert_eq!(s.ending, Ending::Epochs);
    assert!(s.last_epoch.unwrap().train_loss.is_finite());
}

#[test]
fn a_second_vgg_train_in_a_busy_run_directory_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    dataset(dir.path());
    pipeline(dir.path(), &format!("{FAST}epochs = 1000\n"));
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"));
        c.args([
            "train",
            "p.toml",
            "--out",
            "run",
            "--no-val",
            "--threads",
            "1",
        ])
        .args(extra)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
        c
    };
    let mut first = train(&[]).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !out.join("last.safetensors").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never checkpointed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let second = train(&["--resume"]).output().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    first.wait().unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("in use by process") && err.contains(&first.id().to_string()),
        "{err}"
    );
    // The first run released the folder when it stopped: resuming now works.
    let again = train(&["--resume", "--epochs", "1"]).output().unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // And --resume where there is no run says so instead of starting one.
    let none = std::process::Command::new(env!("CARGO_BIN_EXE_vgg"))
        .args(["train", "p.toml", "--out", "nowhere", "--resume"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&none.stderr).contains("no run to resume"));
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn learning_rates_print_as_written() {
    use vgg::train::run::short_rate;
    assert_eq!(short_rate(1e-3 * 0.1), "1e-4");
    assert_eq!(short_rate(0.01), "1e-2");
    assert_eq!(short_rate(2.5e-3), "2.5e-3");
}
