//! The VGG graphs as a whole, through ONNX Runtime: the training step's gradients against finite
//! differences, the SGD update against its formula, the two batch forms agreeing, overfitting
//! one batch, the dense graph agreeing with the forward graph, and (when Python's `onnx` is
//! installed) the ONNX checker accepting what is written.

use std::collections::HashMap;

use ort::value::Tensor;
use vgg::config::model::{parameters, ParamKind, MOMENTUM};
use vgg::config::model::{Conv, VggConfig, ALEXNET_LRN};
use vgg::net::graph::vgg::{self as graphs, InputForm, StepOptions, NEXT};
use vgg::net::session::{self, SessionSettings};
use vgg::util::rng::{Rng, Stream};

use crate::gradients::{run, T};

/// Two blocks (a 3x3 conv with LRN, then a 3x3 and a 1x1 conv), FC 16, 5 classes, 8x8 input.
pub fn tiny(lrn: bool) -> VggConfig {
    let c = |kernel, channels| Conv { kernel, channels };
    VggConfig {
        name: "tiny".into(),
        blocks: vec![vec![c(3, 4)], vec![c(3, 6), c(1, 6)]],
        lrn: lrn.then_some(ALEXNET_LRN),
        fc: 16,
        classes: 5,
        input: 8,
        in_channels: 3,
    }
}

/// Glorot-uniform weights, small random biases (so bias gradients are exercised off zero).
fn params(config: &VggConfig, seed: u64) -> Vec<T> {
    parameters(config)
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut rng = Rng::new(seed, Stream::Init, 0, i as u64);
            let a = (6.0 / (p.fan_in + p.fan_out) as f64).sqrt();
            let a = if p.kind == ParamKind::Bias { 0.1 } else { a };
            let data = (0..p.numel()).map(|_| rng.uniform(-a, a) as f32).collect();
            T::new(&p.name, &p.shape, data)
        })
        .collect()
}

fn momenta(params: &[T], seed: u64) -> Vec<T> {
    params
        .iter()
        .map(|p| {
            let mut t = T::random(&format!("{}{MOMENTUM}", p.name), &p.shape, seed, 0.0);
            t.data.iter_mut().for_each(|v| *v *= 0.01);
            t
        })
        .collect()
}

fn zeros_like(params: &[T]) -> Vec<T> {
    params
        .iter()
        .map(|p| {
            T::new(
                &format!("{}{MOMENTUM}", p.name),
                &p.shape,
                vec![0.0; p.data.len()],
            )
        })
        .collect()
}

struct Batch {
    images: T,
    labels: Vec<i64>,
    masks: [T; 2],
}

/// Images in [-scale, scale).
fn batch(config: &VggConfig, n: usize, seed: u64, dropout: bool, scale: f32) -> Batch {
    let s = config.input as i64;
    let mut images = T::random("images", &[n as i64, 3, s, s], seed, 0.0);
    images.data.iter_mut().for_each(|v| *v *= scale);
    let mut rng = Rng::new(seed, Stream::Dropout, 0, 0);
    let mask = |name: &str, rng: &mut Rng| {
        let fc = config.fc as i64;
        let data = (0..n as i64 * fc)
            .map(|_| {
                if !dropout || rng.bernoulli(0.5) {
                    if dropout {
                        2.0
                    } else {
                        1.0
                    }
                } else {
                    0.0
                }
            })
            .collect();
        T::new(name, &[n as i64, fc], data)
    };
    Batch {
        images,
        labels: (0..n as i64).map(|i| i % config.classes as i64).collect(),
        masks: [mask("dropout6", &mut rng), mask("dropout7", &mut rng)],
    }
}

/// Runs one step and returns its outputs.
fn step(
    s: &mut ort::session::Session,
    params: &[T],
    momenta: &[T],
    b: &Batch,
    lr: f32,
) -> HashMap<String, Vec<f32>> {
    let mut inputs: Vec<T> = params.to_vec();
    inputs.extend(momenta.iter().cloned());
    inputs.push(b.images.clone());
    inputs.extend(b.masks.iter().cloned());
    let n = b.labels.len();
    let extra = vec![
        (
            "labels".to_string(),
            Tensor::from_array(([n], b.labels.clone()))
                .unwrap()
                .into_dyn(),
        ),
        (
            "learning_rate".to_string(),
            Tensor::from_array((Vec::<usize>::new(), vec![lr]))
                .unwrap()
                .into_dyn(),
        ),
    ];
    run(s, &inputs, extra)
}

fn single_thread() -> SessionSettings {
    SessionSettings {
        threads: 1,
        ..Default::default()
    }
}

#[test]
fn training_step_gradients_match_finite_differences() {
    let config = tiny(true);
    let opts = StepOptions {
        batch: 4,
        momentum: 0.0,
        weight_decay: 0.0,
        ..Default::default()
    };
    let g = graphs::train_step_graph(&config, &opts).unwrap();
    let mut s = session::build(&g, &single_thread()).unwrap();
    let p = params(&config, 1);
    let b = batch(&config, 4, 2, true, 1.0);
    // v = 0, lr = 1, momentum 0, no decay: v' = -gradient.
    let out = step(&mut s, &p, &zeros_like(&p), &b, 1.0);
    let loss = |s: &mut ort::session::Session, p: &[T]| -> f64 {
        step(s, p, &zeros_like(p), &b, 0.0)["loss"][0] as f64
    };
    // Central differences at two steps: where they disagree, the step crossed a ReLU or
    // max-pool kink and the point is skipped; everywhere else they must match the graph.
    let numeric = |s: &mut ort::session::Session, i: usize, e: usize, eps: f32| -> f64 {
        let (mut plus, mut minus) = (p.clone(), p.clone());
        plus[i].data[e] += eps;
        minus[i].data[e] -= eps;
        (loss(s, &plus) - loss(s, &minus)) / (2.0 * eps as f64)
    };
    let (mut checked, mut kinks) = (0, 0);
    for (i, t) in p.iter().enumerate() {
        let grad: Vec<f32> = out[&format!("{}{MOMENTUM}{NEXT}", t.name)]
            .iter()
            .map(|v| -v)
            .collect();
        let scale = grad.iter().fold(0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{} gets no gradient", t.name);
        // A few random entries among those the batch reaches (dropout and ReLU zero many).
        let live: Vec<usize> = (0..grad.len())
            .filter(|&e| grad[e].abs() > 1e-3 * scale)
            .collect();
        let mut rng = Rng::new(5, Stream::Synthetic, i as u64, 0);
        for _ in 0..3 {
            let e = live[rng.below(live.len() as u64) as usize];
            let (n1, n2) = (numeric(&mut s, i, e, 1e-3), numeric(&mut s, i, e, 5e-4));
            if (n1 - n2).abs() > 1e-3 * scale as f64 + 1e-3 * n1.abs() {
                kinks += 1;
                continue;
            }
            let err = (n1 - grad[e] as f64).abs();
            assert!(
                err <= 5e-3 * scale as f64 + 5e-3 * n1.abs(),
                "d loss / d {}[{e}]: analytic {} numeric {n1} (largest {scale})",
                t.name,
                grad[e]
            );
            checked += 1;
        }
    }
    assert!(
        kinks * 5 <= checked,
        "{kinks} of {} samples sat on a kink: the check lost its power",
        checked + kinks
    );
}

#[test]
fn sgd_update_follows_the_formula() {
    let config = tiny(false);
    let plain = StepOptions {
        batch: 4,
        momentum: 0.0,
        weight_decay: 0.0,
        ..Default::default()
    };
    let paper = StepOptions {
        batch: 4,
        ..Default::default()
    };
    assert_eq!(
        (paper.momentum, paper.weight_decay, paper.decay_biases),
        (0.9, 5e-4, false)
    );
    let p = params(&config, 3);
    let v = momenta(&p, 4);
    let b = batch(&config, 4, 5, true, 50.0);
    let mut s0 = session::build(
        &graphs::train_step_graph(&config, &plain).unwrap(),
        &single_thread(),
    )
    .unwrap();
    let grads = step(&mut s0, &p, &zeros_like(&p), &b, 1.0);
    let mut s1 = session::build(
        &graphs::train_step_graph(&config, &paper).unwrap(),
        &single_thread(),
    )
    .unwrap();
    let lr = 0.01f32;
    let out = step(&mut s1, &p, &v, &b, lr);
    assert_eq!(
        out["loss"], grads["loss"],
        "the loss does not depend on the update settings"
    );
    for ((w, v), spec) in p.iter().zip(&v).zip(parameters(&config)) {
        let g = &grads[&format!("{}{MOMENTUM}{NEXT}", w.name)];
        let v_next = &out[&format!("{}{MOMENTUM}{NEXT}", w.name)];
        let w_next = &out[&format!("{}{NEXT}", w.name)];
        let wd = if spec.kind == ParamKind::Weight {
            5e-4
        } else {
            0.0
        };
        for e in 0..w.data.len() {
            let grad = -g[e];
            let want_v = 0.9 * v.data[e] - lr * (grad + wd * w.data[e]);
            assert!(
                (v_next[e] - want_v).abs() <= 1e-6 + 1e-5 * want_v.abs(),
                "{}[{e}]",
                w.name
            );
            let want_w = w.data[e] + v_next[e];
            assert!(
                (w_next[e] - want_w).abs() <= 1e-7 + 1e-6 * want_w.abs(),
                "{}[{e}]",
                w.name
            );
        }
    }
}

#[test]
fn uint8_batches_give_the_same_step_as_float_batches() {
    let config = tiny(false);
    let n = 2;
    let f32_opts = StepOptions {
        batch: n,
        ..Default::default()
    };
    let u8_opts = StepOptions {
        input: InputForm::U8Nhwc,
        ..f32_opts.clone()
    };
    let s = config.input as usize;
    let mut rng = Rng::new(9, Stream::Synthetic, 0, 0);
    let pixels: Vec<u8> = (0..n * s * s * 3).map(|_| rng.below(256) as u8).collect();
    let shift: Vec<f32> = (0..n * 3)
        .map(|i| [-123.68, -116.779, -103.939][i % 3] + i as f32 * 0.25)
        .collect();
    // The same batch as float NCHW: pixel + shift.
    let mut images = vec![0f32; n * 3 * s * s];
    for i in 0..n {
        for y in 0..s {
            for x in 0..s {
                for c in 0..3 {
                    images[((i * 3 + c) * s + y) * s + x] =
                        pixels[((i * s + y) * s + x) * 3 + c] as f32 + shift[i * 3 + c];
                }
            }
        }
    }
    let mut b = batch(&config, n, 1, true, 50.0);
    b.images = T::new("images", &[n as i64, 3, s as i64, s as i64], images);
    let p = params(&config, 2);
    let v = momenta(&p, 3);
    let mut sf = session::build(
        &graphs::train_step_graph(&config, &f32_opts).unwrap(),
        &single_thread(),
    )
    .unwrap();
    let want = step(&mut sf, &p, &v, &b, 0.01);

    let mut su = session::build(
        &graphs::train_step_graph(&config, &u8_opts).unwrap(),
        &single_thread(),
    )
    .unwrap();
    let mut inputs: Vec<T> = p.clone();
    inputs.extend(v.iter().cloned());
    inputs.extend(b.masks.iter().cloned());
    inputs.push(T::new("shift", &[n as i64, 3], shift));
    let extra = vec![
        (
            "pixels".to_string(),
            Tensor::from_array(([n, s, s, 3], pixels))
                .unwrap()
                .into_dyn(),
        ),
        (
            "labels".to_string(),
            Tensor::from_array(([n], b.labels.clone()))
                .unwrap()
                .into_dyn(),
        ),
        (
            "learning_rate".to_string(),
            Tensor::from_array((Vec::<usize>::new(), vec![0.01f32]))
                .unwrap()
                .into_dyn(),
        ),
    ];
    let got = run(&mut su, &inputs, extra);
    assert!(
        (got["loss"][0] - want["loss"][0]).abs() < 1e-5,
        "{} vs {}",
        got["loss"][0],
        want["loss"][0]
    );
    let name = format!("conv1_1.weight{NEXT}");
    for (a, b) in got[&name].iter().zip(&want[&name]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

#[test]
fn a_few_steps_overfit_one_batch() {
    let config = tiny(false);
    let n = 8;
    let opts = StepOptions {
        batch: n,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut s = session::build(
        &graphs::train_step_graph(&config, &opts).unwrap(),
        &single_thread(),
    )
    .unwrap();
    let mut p = params(&config, 11);
    let mut v = zeros_like(&p);
    let b = batch(&config, n, 12, false, 1.0);
    let mut first = None;
    let mut last = HashMap::new();
    for _ in 0..60 {
        last = step(&mut s, &p, &v, &b, 0.05);
        first.get_or_insert(last["loss"][0]);
        for t in p.iter_mut() {
            t.data = last[&format!("{}{NEXT}", t.name)].clone();
        }
        for t in v.iter_mut() {
            t.data = last[&format!("{}{NEXT}", t.name)].clone();
        }
    }
    let (first, loss) = (first.unwrap(), last["loss"][0]);
    assert!(
        first > 1.0,
        "a fresh network's loss is near ln(5) = 1.61, got {first}"
    );
    assert!(
        loss < 0.05,
        "60 steps on one batch should drive the loss near zero: {first} -> {loss}"
    );
    assert_eq!(last["top1_correct"][0], n as f32);
    assert_eq!(last["top5_correct"][0], n as f32);
}

#[test]
fn dense_evaluation_agrees_with_the_forward_graph() {
    let config = tiny(true);
    let p = params(&config, 21);
    let mut fwd = session::build(&graphs::forward_graph(&config), &single_thread()).unwrap();
    let mut dense = session::build(&graphs::dense_graph(&config), &single_thread()).unwrap();
    let mut images = T::random("images", &[2, 3, 8, 8], 22, 0.0);
    images.data.iter_mut().for_each(|v| *v *= 50.0);
    let mut inputs = p.clone();
    inputs.push(images);
    let a = run(&mut fwd, &inputs, vec![]);
    let b = run(&mut dense, &inputs, vec![]);
    assert_eq!(a["probabilities"].len(), 2 * 5);
    for (x, y) in a["probabilities"].iter().zip(&b["probabilities"]) {
        assert!((x - y).abs() < 1e-5, "forward {x} vs dense {y}");
    }
    for (x, y) in a["logits"].iter().zip(&b["scores"]) {
        assert!((x - y).abs() < 1e-4, "forward {x} vs dense {y}");
    }
    // A larger, non-square image: a 2x3 score map, averaged, then soft-maxed.
    inputs.pop();
    inputs.push(T::random("images", &[1, 3, 12, 16], 23, 0.0));
    let c = run(&mut dense, &inputs, vec![]);
    let probs = &c["probabilities"];
    assert_eq!(probs.len(), 5);
    assert!((probs.iter().sum::<f32>() - 1.0).abs() < 1e-5);
}

#[test]
fn paper_graphs_load_in_onnx_runtime() {
    // The full-size D graphs are built and accepted by ONNX Runtime (no weights are needed to
    // build a session: parameters are inputs).
    let d = VggConfig::paper("D").unwrap();
    for g in [graphs::forward_graph(&d), graphs::dense_graph(&d)] {
        let s = session::build(&g, &single_thread()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.inputs().len(), 1 + 32);
    }
    let step = graphs::train_step_graph(
        &d,
        &StepOptions {
            batch: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let s = session::build(&step, &single_thread()).unwrap();
    assert_eq!(s.outputs().len(), 2 * 32 + 3);
}

#[test]
fn onnx_checker_accepts_the_graphs_when_python_onnx_is_installed() {
    let python = std::env::var("VGG_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_onnx = std::process::Command::new(&python)
        .args(["-c", "import onnx"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !has_onnx {
        eprintln!("SKIPPED: {python} has no `onnx` module (pip install onnx to run this check)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = tiny(true);
    let graphs = [
        ("forward", graphs::forward_graph(&config)),
        ("dense", graphs::dense_graph(&config)),
        (
            "step",
            graphs::train_step_graph(
                &config,
                &StepOptions {
                    batch: 2,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
    ];
    for (name, g) in graphs {
        let path = dir.path().join(format!("{name}.onnx"));
        std::fs::write(&path, g.encode()).unwrap();
        let out = std::process::Command::new(&python)
            .args([
                "-c",
                "import onnx, sys; m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)",
            ])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The step graph's results, recorded in `tests/fixtures/step-pin.safetensors` from the graph
/// as first written (before any of its formulations were changed for speed): a reformulated
/// backward pass or update must give the same parameters, momenta, loss and hit counts after
/// three steps, to float rounding. Two networks (with LRN, and without, where a ReLU feeds a
/// max-pool directly), dropout, momentum, weight decay, and two flat images whose pooling
/// windows tie. `VGG_WRITE_STEP_PIN=1` rewrites the file (only ever from a reviewed graph).
#[test]
fn step_results_match_the_pinned_graph() {
    use vgg::net::checkpoint::{read_tensors, write_tensors, NamedTensor};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/step-pin.safetensors");
    let mut got: Vec<NamedTensor> = Vec::new();
    for lrn in [true, false] {
        let config = tiny(lrn);
        let n = 6;
        let opts = StepOptions {
            batch: n,
            ..Default::default()
        };
        let mut s = session::build(
            &graphs::train_step_graph(&config, &opts).unwrap(),
            &single_thread(),
        )
        .unwrap();
        let mut p = params(&config, 31);
        let mut v = momenta(&p, 32);
        let mut b = batch(&config, n, 33, true, 2.0);
        // Images 0 and 1 flat (one value per channel): every pooling window ties.
        let plane = (config.input * config.input) as usize;
        for i in 0..2 {
            for c in 0..3 {
                let at = (i * 3 + c) * plane;
                let value = b.images.data[at];
                b.images.data[at..at + plane].fill(value);
            }
        }
        let tag = if lrn { "lrn" } else { "plain" };
        for k in 0..3 {
            let out = step(&mut s, &p, &v, &b, 0.05);
            for key in ["loss", "top1_correct", "top5_correct"] {
                got.push(NamedTensor {
                    name: format!("{tag}/{k}/{key}"),
                    shape: vec![1],
                    data: out[key].clone(),
                });
            }
            for t in p.iter_mut().chain(v.iter_mut()) {
                t.data = out[&format!("{}{NEXT}", t.name)].clone();
            }
        }
        for t in p.iter().chain(v.iter()) {
            got.push(NamedTensor {
                name: format!("{tag}/{}", t.name),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                data: t.data.clone(),
            });
        }
    }
    if std::env::var_os("VGG_WRITE_STEP_PIN").is_some() {
        write_tensors(&path, &got, HashMap::new()).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let (want, _) = read_tensors(&path).unwrap();
    let want: HashMap<&str, &NamedTensor> = want.iter().map(|t| (t.name.as_str(), t)).collect();
    assert_eq!(want.len(), got.len(), "the pinned file has other tensors");
    for g in &got {
        let w = want[g.name.as_str()];
        assert_eq!(w.shape, g.shape, "{}", g.name);
        let scale = w.data.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = w
            .data
            .iter()
            .zip(&g.data)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            worst <= 1e-5 * scale + 1e-8,
            "{}: differs from the pinned step by {worst} (largest value {scale})",
            g.name
        );
    }
}
