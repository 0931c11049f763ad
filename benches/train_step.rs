//! Training-step throughput on the CPU, beside its baseline from the same run: the forward graph
//! alone (inference) on the same batch, so `step / forward` is a ratio that survives a noisy
//! machine (PyTorch's forward + backward + SGD is typically ~3x its forward).
//!
//! Default: the demo network (`pipelines/demo.toml`: configuration A at width 0.125, 10 classes,
//! 64x64 input) at batch 32, float32 NCHW input, random data, 2 then 1 intra-op threads. Per
//! thread count:
//!
//! 1. the forward graph and the training step, alternately (so load from elsewhere on a shared
//!    machine hits both alike): 3 warm-up rounds, then `--steps` timed rounds. The forward graph
//!    is timed by its `session.run`; each step's `NAME.next` and `NAME.momentum.next` outputs are
//!    copied to the host and fed back as the next step's parameters and momenta (ms/step and
//!    images/s include that copy; `run` is the step's `session.run` alone). Medians.
//! 2. a second step session with ONNX Runtime's profiler on: 1 + 5 steps, the first dropped;
//!    the node time of the rest is split by the node-name prefixes the graph builder writes
//!    (`forward/`, `backward/`, `update/`; nodes the optimiser adds, e.g. layout reorders, have
//!    none and count as `other`), and summed per op type.
//!
//! Run: `cargo bench --bench train_step` (add `-- --json` for one JSON object on stdout; its
//! top-level figures are those of the first `--threads` count, `rows` has every count).
//! Options: `--steps N` (20), `--batch N` (32), `--threads 2,1`, `--config NAME` (a row of the
//! paper's Table 1; A), `--width W` (0.125), `--input S` (64), `--classes C` (10),
//! `--profile-steps N` (5), `--json`. The PyTorch peer is `benches/peers/torch_train_step.py`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Instant;

use ort::session::builder::GraphOptimizationLevel;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, Tensor};
use serde::Serialize;
use vgg::config::model::VggConfig;
use vgg::config::model::{parameters, ParamSpec, MOMENTUM};
use vgg::config::training::Init;
use vgg::net::graph::vgg::{self as graphs, StepOptions, NEXT};
use vgg::net::init::initialise;
use vgg::net::session::{self, SessionSettings};
use vgg::util::machine::{machine, Machine};
use vgg::util::rng::{Rng, Stream};

const WARMUP: usize = 3;

struct Args {
    steps: usize,
    batch: usize,
    threads: Vec<usize>,
    config: String,
    width: f64,
    input: u32,
    classes: u32,
    profile_steps: usize,
    json: bool,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "train_step: {msg}\noptions: --steps N --batch N --threads 2,1 --config NAME --width W \
         --input S --classes C --profile-steps N --json"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        steps: 20,
        batch: 32,
        threads: vec![2, 1],
        config: "A".into(),
        width: 0.125,
        input: 64,
        classes: 10,
        profile_steps: 5,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
            v.parse()
                .unwrap_or_else(|_| usage(&format!("{flag}: `{v}` is not a number")))
        }
        match flag.as_str() {
            "--steps" => a.steps = num(&flag, value()),
            "--batch" => a.batch = num(&flag, value()),
            "--threads" => {
                a.threads = value()
                    .split(',')
                    .map(|t| num(&flag, t.to_string()))
                    .collect()
            }
            "--config" => a.config = value(),
            "--width" => a.width = num(&flag, value()),
            "--input" => a.input = num(&flag, value()),
            "--classes" => a.classes = num(&flag, value()),
            "--profile-steps" => a.profile_steps = num(&flag, value()),
            "--json" => a.json = true,
            // `cargo bench` passes `--bench`; a name filter may follow it.
            "--bench" => {}
            other if !other.starts_with('-') => {}
            other => usage(&format!("unknown option {other}")),
        }
    }
    if a.steps == 0 || a.batch == 0 || a.threads.is_empty() || a.threads.contains(&0) {
        usage("--steps, --batch and every --threads count must be at least 1");
    }
    a
}

fn network(a: &Args) -> VggConfig {
    let mut t = toml::Table::new();
    t.insert("config".into(), a.config.clone().into());
    t.insert("width".into(), a.width.into());
    t.insert("classes".into(), (a.classes as i64).into());
    t.insert("input".into(), (a.input as i64).into());
    VggConfig::from_table(&t).unwrap_or_else(|e| usage(&e.to_string()))
}

fn f32_value(shape: &[usize], data: Vec<f32>) -> DynValue {
    Tensor::from_array((shape.to_vec(), data))
        .expect("a tensor")
        .into_dyn()
}

fn shape_of(p: &ParamSpec) -> Vec<usize> {
    p.shape.iter().map(|&d| d as usize).collect()
}

/// The inputs that stay fixed across steps: images, labels, dropout masks, learning rate.
struct Batch {
    images: DynValue,
    labels: DynValue,
    dropout6: DynValue,
    dropout7: DynValue,
    learning_rate: DynValue,
}

fn random_batch(config: &VggConfig, n: usize) -> Batch {
    let s = config.input as usize;
    let mut rng = Rng::new(7, Stream::Synthetic, 0, 0);
    // Mean-subtracted pixels on the 0-255 scale: roughly N(0, 50).
    let images = (0..n * 3 * s * s)
        .map(|_| (rng.normal() * 50.0) as f32)
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|_| rng.below(config.classes as u64) as i64)
        .collect();
    let fc = config.fc as usize;
    let mut mask = || -> DynValue {
        let m = (0..n * fc)
            .map(|_| if rng.bernoulli(0.5) { 2.0 } else { 0.0 })
            .collect();
        f32_value(&[n, fc], m)
    };
    Batch {
        images: f32_value(&[n, 3, s, s], images),
        labels: Tensor::from_array(([n], labels)).unwrap().into_dyn(),
        dropout6: mask(),
        dropout7: mask(),
        learning_rate: f32_value(&[], vec![0.01]),
    }
}

/// Parameters and momenta as host vectors, in [`parameters`] order.
struct State {
    specs: Vec<ParamSpec>,
    params: Vec<Vec<f32>>,
    momenta: Vec<Vec<f32>>,
}

impl State {
    fn new(config: &VggConfig) -> State {
        // Glorot keeps activations O(1) through the depth (no denormals to slow the CPU).
        let params: Vec<Vec<f32>> = initialise(config, Init::Glorot, 1)
            .into_iter()
            .map(|t| t.data)
            .collect();
        let momenta = params.iter().map(|p| vec![0.0; p.len()]).collect();
        State {
            specs: parameters(config),
            params,
            momenta,
        }
    }

    /// The step's inputs: parameters and momenta copied into new tensors, the batch by reference.
    fn inputs<'v>(&self, b: &'v Batch) -> Vec<(Cow<'static, str>, SessionInputValue<'v>)> {
        let mut v: Vec<(Cow<'static, str>, SessionInputValue<'v>)> = Vec::new();
        for (i, p) in self.specs.iter().enumerate() {
            let shape = shape_of(p);
            v.push((
                p.name.clone().into(),
                f32_value(&shape, self.params[i].clone()).into(),
            ));
            v.push((
                format!("{}{MOMENTUM}", p.name).into(),
                f32_value(&shape, self.momenta[i].clone()).into(),
            ));
        }
        v.push(("images".into(), (&b.images).into()));
        v.push(("labels".into(), (&b.labels).into()));
        v.push(("dropout6".into(), (&b.dropout6).into()));
        v.push(("dropout7".into(), (&b.dropout7).into()));
        v.push(("learning_rate".into(), (&b.learning_rate).into()));
        v
    }

    /// Copies the step's updated parameters and momenta back to the host; returns the loss.
    fn absorb(&mut self, out: &ort::session::SessionOutputs<'_>) -> f32 {
        for (i, p) in self.specs.iter().enumerate() {
            let w = &out[format!("{}{NEXT}", p.name).as_str()];
            self.params[i].copy_from_slice(w.try_extract_tensor::<f32>().unwrap().1);
            let m = &out[format!("{}{MOMENTUM}{NEXT}", p.name).as_str()];
            self.momenta[i].copy_from_slice(m.try_extract_tensor::<f32>().unwrap().1);
        }
        out["loss"].try_extract_tensor::<f32>().unwrap().1[0]
    }
}

/// One timed training step: (wall seconds including the host copies, session.run seconds, loss).
fn step(s: &mut Session, state: &mut State, b: &Batch) -> (f64, f64, f32) {
    let t0 = Instant::now();
    let inputs = state.inputs(b);
    let t1 = Instant::now();
    let out = s.run(inputs).expect("the training step runs");
    let run = t1.elapsed().as_secs_f64();
    let loss = state.absorb(&out);
    drop(out);
    (t0.elapsed().as_secs_f64(), run, loss)
}

/// The forward graph's session with its parameters, fed by reference on every run.
struct Forward {
    session: Session,
    params: Vec<(String, DynValue)>,
}

impl Forward {
    fn new(config: &VggConfig, state: &State, threads: usize) -> Forward {
        let g = graphs::forward_graph(config);
        let session = session::build(&g, &settings(threads)).expect("the forward graph builds");
        let params = state
            .specs
            .iter()
            .zip(&state.params)
            .map(|(p, d)| (p.name.clone(), f32_value(&shape_of(p), d.clone())))
            .collect();
        Forward { session, params }
    }

    /// Seconds of one `session.run` on `b`.
    fn run(&mut self, b: &Batch) -> f64 {
        let mut inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = self
            .params
            .iter()
            .map(|(n, v)| (Cow::from(n.as_str()), v.into()))
            .collect();
        inputs.push(("images".into(), (&b.images).into()));
        let t = Instant::now();
        let out = self.session.run(inputs).expect("the forward graph runs");
        let secs = t.elapsed().as_secs_f64();
        drop(out);
        secs
    }
}

fn settings(threads: usize) -> SessionSettings {
    SessionSettings {
        threads,
        ..Default::default()
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Serialize)]
struct OpTime {
    op: String,
    ms: f64,
    /// Of all node time in the profiled steps.
    share: f64,
}

/// Per-step node time from ONNX Runtime's profiler, in milliseconds.
#[derive(Debug, Clone, Serialize)]
struct Profile {
    steps: usize,
    forward_ms: f64,
    backward_ms: f64,
    update_ms: f64,
    /// Nodes without a phase prefix (layout reorders and other nodes the optimiser adds).
    other_ms: f64,
    /// Sum of all node kernel times.
    node_ms: f64,
    /// Wall time of a profiled `session.run` (`model_run` events).
    run_ms: f64,
    top_ops: Vec<OpTime>,
}

/// A step session built like [`session::build`]'s CPU sessions, with the profiler on.
fn profiled_session(
    env: &ort::environment::Environment,
    g: &vgg::net::graph::ir::Graph,
    threads: usize,
    prefix: &std::path::Path,
) -> Result<Session, String> {
    let e = |e: ort::Error<_>| e.to_string();
    Session::builder(env)
        .map_err(|e| e.to_string())?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(e)?
        .with_intra_threads(threads)
        .map_err(e)?
        .with_profiling(prefix)
        .map_err(e)?
        .commit_from_memory(&g.encode())
        .map_err(|e| e.to_string())
}

fn profile(config: &VggConfig, opts: &StepOptions, threads: usize, steps: usize) -> Profile {
    let dir = tempfile::tempdir().unwrap();
    let env = vgg::net::runtime::init().unwrap_or_else(|e| panic!("{e}"));
    let g = graphs::train_step_graph(config, opts).expect("the step graph differentiates");
    let mut s = profiled_session(&env, &g, threads, &dir.path().join("step"))
        .unwrap_or_else(|e| panic!("profiled session: {e}"));
    let mut state = State::new(config);
    let b = random_batch(config, opts.batch);
    for _ in 0..1 + steps {
        step(&mut s, &mut state, &b);
    }
    let path = s.end_profiling().expect("the profile is written");
    let text = std::fs::read_to_string(&path).expect("the profile reads");
    let events: Vec<serde_json::Value> = serde_json::from_str(&text).expect("the profile parses");
    let num = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(0.0);
    // Drop the first run: its events start before the first model_run ends.
    let mut runs: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e["cat"] == "Session" && e["name"] == "model_run")
        .map(|e| (num(e, "ts"), num(e, "dur")))
        .collect();
    runs.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let cutoff = runs.first().map_or(0.0, |r| r.0 + r.1);
    let kept = runs.len().saturating_sub(1).max(1) as f64;
    let run_ms = runs.iter().skip(1).map(|r| r.1).sum::<f64>() / 1e3 / kept;
    let (mut fwd, mut bwd, mut upd, mut other) = (0.0, 0.0, 0.0, 0.0);
    let mut by_op: HashMap<String, f64> = HashMap::new();
    for e in &events {
        let name = e["name"].as_str().unwrap_or("");
        if e["cat"] != "Node" || !name.ends_with("_kernel_time") || num(e, "ts") < cutoff {
            continue;
        }
        let us = num(e, "dur");
        let slot = if name.starts_with("forward/") {
            &mut fwd
        } else if name.starts_with("backward/") {
            &mut bwd
        } else if name.starts_with("update/") {
            &mut upd
        } else {
            &mut other
        };
        *slot += us;
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        *by_op.entry(op).or_default() += us;
    }
    let ms = |us: f64| us / 1e3 / kept;
    let node = fwd + bwd + upd + other;
    let mut top: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, us)| OpTime {
            op,
            ms: ms(us),
            share: us / node,
        })
        .collect();
    top.sort_by(|a, b| b.ms.partial_cmp(&a.ms).unwrap());
    top.truncate(12);
    Profile {
        steps: kept as usize,
        forward_ms: ms(fwd),
        backward_ms: ms(bwd),
        update_ms: ms(upd),
        other_ms: ms(other),
        node_ms: ms(node),
        run_ms,
        top_ops: top,
    }
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    threads: usize,
    images_per_sec: f64,
    /// Median wall time of a step, host copies of parameters and momenta included.
    ms_per_step: f64,
    /// Median `session.run` time of a step.
    run_ms_per_step: f64,
    /// Median forward-graph `session.run` time on the same batch.
    forward_only_ms: f64,
    /// `run_ms_per_step / forward_only_ms`.
    ratio_step_to_forward: f64,
    first_loss: f32,
    last_loss: f32,
    profile: Profile,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    images_per_sec: f64,
    ms_per_step: f64,
    run_ms_per_step: f64,
    forward_ms: f64,
    backward_ms: f64,
    update_ms: f64,
    other_ms: f64,
    forward_only_ms: f64,
    ratio_step_to_forward: f64,
    top_ops: Vec<OpTime>,
    machine: Machine,
    onnxruntime: String,
    config: VggConfig,
    parameters: usize,
    gflops_per_image_forward: f64,
    batch: usize,
    threads: usize,
    steps: usize,
    warmup_steps: usize,
    rows: Vec<Row>,
}

fn measure(config: &VggConfig, a: &Args, threads: usize) -> Row {
    let opts = StepOptions {
        batch: a.batch,
        ..Default::default()
    };
    let b = random_batch(config, a.batch);
    let mut state = State::new(config);
    let mut fwd = Forward::new(config, &state, threads);
    let g = graphs::train_step_graph(config, &opts).expect("the step graph differentiates");
    let mut s = session::build(&g, &settings(threads)).expect("the step graph builds");
    // Forward runs and steps alternate, so load from elsewhere on the machine hits both alike.
    let (mut walls, mut runs, mut fwds, mut losses) = (vec![], vec![], vec![], vec![]);
    for i in 0..WARMUP + a.steps {
        let f = fwd.run(&b);
        let (wall, run, loss) = step(&mut s, &mut state, &b);
        if i >= WARMUP {
            fwds.push(f);
            walls.push(wall);
            runs.push(run);
            losses.push(loss);
        }
    }
    let fwd = median(&mut fwds);
    drop(s);
    let prof = profile(config, &opts, threads, a.profile_steps.max(1));
    let wall = median(&mut walls);
    let run = median(&mut runs);
    Row {
        threads,
        images_per_sec: a.batch as f64 / wall,
        ms_per_step: wall * 1e3,
        run_ms_per_step: run * 1e3,
        forward_only_ms: fwd * 1e3,
        ratio_step_to_forward: run / fwd,
        first_loss: losses[0],
        last_loss: *losses.last().unwrap(),
        profile: prof,
    }
}

fn print_row(r: &Row) {
    println!(
        "{:>7} {:>9.1} {:>9.2} {:>9.2} {:>10.2} {:>9.2}   loss {:.3} -> {:.3}",
        r.threads,
        r.images_per_sec,
        r.ms_per_step,
        r.run_ms_per_step,
        r.forward_only_ms,
        r.ratio_step_to_forward,
        r.first_loss,
        r.last_loss
    );
}

fn print_profile(r: &Row) {
    let p = &r.profile;
    println!(
        "\n## profile at {} threads ({} steps): node time per step, {:.2} ms of a {:.2} ms run",
        r.threads, p.steps, p.node_ms, p.run_ms
    );
    for (what, ms) in [
        ("forward", p.forward_ms),
        ("backward", p.backward_ms),
        ("update", p.update_ms),
        ("other", p.other_ms),
    ] {
        println!("  {what:<9} {ms:>8.2} ms {:>5.1}%", 100.0 * ms / p.node_ms);
    }
    println!(
        "  backward / forward: {:.2}x; top op types:",
        p.backward_ms / p.forward_ms
    );
    for o in &p.top_ops {
        println!("  {:<16} {:>8.2} ms {:>5.1}%", o.op, o.ms, 100.0 * o.share);
    }
}

fn main() {
    let a = parse_args();
    let config = network(&a);
    let info = match vgg::net::runtime::info() {
        Ok(i) => i,
        Err(e) => {
            eprintln!("train_step: {e}");
            std::process::exit(1)
        }
    };
    let m = machine();
    let summary = config.summary();
    let nparams: usize = parameters(&config).iter().map(|p| p.numel()).sum();
    if !a.json {
        println!(
            "# training-step benchmark\nmachine: {} ({} cores, {})\nonnx runtime: {}",
            m.cpu, m.cores, m.os, info.version
        );
        println!(
            "network: {} ({} weight layers, {:.2} M parameters, {:.3} GFLOP/image forward), \
             input {}, {} classes\nbatch {} float32 NCHW (random), {} timed steps after {WARMUP} \
             warm-up, SGD momentum 0.9, weight decay 5e-4",
            config.name,
            summary.weight_layers,
            nparams as f64 / 1e6,
            summary.flops as f64 / 1e9,
            config.input,
            config.classes,
            a.batch,
            a.steps,
        );
        println!(
            "\n{:>7} {:>9} {:>9} {:>9} {:>10} {:>9}",
            "threads", "images/s", "ms/step", "run ms", "fwd-only", "step/fwd"
        );
    }
    let mut rows = Vec::new();
    for &t in &a.threads {
        let r = measure(&config, &a, t);
        if !a.json {
            print_row(&r);
        }
        rows.push(r);
    }
    if !a.json {
        for r in &rows {
            print_profile(r);
        }
        println!(
            "\nms/step: one step's wall time with the host copies of parameters and momenta;\n\
             run ms: session.run alone; fwd-only: the forward graph's session.run on the same \
             batch;\nstep/fwd = run ms / fwd-only. Medians of the timed steps."
        );
        return;
    }
    let top = rows[0].clone();
    let report = Report {
        images_per_sec: top.images_per_sec,
        ms_per_step: top.ms_per_step,
        run_ms_per_step: top.run_ms_per_step,
        forward_ms: top.profile.forward_ms,
        backward_ms: top.profile.backward_ms,
        update_ms: top.profile.update_ms,
        other_ms: top.profile.other_ms,
        forward_only_ms: top.forward_only_ms,
        ratio_step_to_forward: top.ratio_step_to_forward,
        top_ops: top.profile.top_ops.clone(),
        machine: m,
        onnxruntime: info.version,
        config: config.clone(),
        parameters: nparams,
        gflops_per_image_forward: summary.flops as f64 / 1e9,
        batch: a.batch,
        threads: top.threads,
        steps: a.steps,
        warmup_steps: WARMUP,
        rows,
    };
    println!("{}", serde_json::to_string(&report).unwrap());
}
