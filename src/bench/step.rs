//! `vgg bench train-step`: the training step alone, as the trainer runs it (the compiled step
//! session with its inputs and outputs bound on the device, parameters and momenta never
//! copied to the host), on a random batch, beside its peer: the same step in PyTorch
//! (`benches/peers/torch_train_step.py`), run by this command in the same run on the same
//! machine, so the figure that matters is the ratio of the two.
//!
//! Phases (forward, backward, update) come from a second session with ONNX Runtime's profiler
//! on: node time split by the node-name prefixes the graph builder writes (`forward/`,
//! `backward/`, `update/`; nodes the optimiser adds count as `other`). The peer splits its wall
//! time into forward + loss, `backward()` and `optimizer.step()`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use super::BenchError;
use crate::config::model::VggConfig;
use crate::config::training::Init;
use crate::data::loader::Batch;
use crate::net::checkpoint::NamedTensor;
use crate::net::graph::vgg::StepOptions;
use crate::net::init::{initialise, zero_momenta};
use crate::net::session::Device;
use crate::net::session::{Extras, SessionSettings};
use crate::train::engine::Engine;
use crate::train::parallel::{ParallelOptions, Replicas};
use crate::train::step::StepSession;
use crate::train::TrainError;
use crate::util::machine::{machine, Machine};
use crate::util::progress::Cancel;
use crate::util::rng::{Rng, Stream};

/// Untimed steps before the timed ones.
pub const WARMUP: usize = 3;
/// The peer's learning rate, used on both sides (the step's cost does not depend on it).
const LR: f32 = 0.01;

/// What to measure.
#[derive(Debug, Clone)]
pub struct StepBenchOptions {
    pub config: VggConfig,
    /// The row of the paper's Table 1 and the width multiplier `config` was built from, for
    /// the peer's command line.
    pub table_row: String,
    pub width: f64,
    pub batch: usize,
    /// Intra-op thread counts, one row each (for all replicas together).
    pub threads: Vec<usize>,
    /// CPU replicas, each on its share of the batch and of the threads, their gradients summed
    /// in the host (the data-parallel step `vgg train --replicas N` runs); 1: the fused step;
    /// `auto`: what `vgg train` picks.
    pub replicas: Replicas,
    /// Timed steps per measurement.
    pub steps: usize,
    /// Profiled steps (after one dropped) for the phase split; 0 skips the profile.
    pub profile_steps: usize,
    /// Measurements of each side per thread count, alternating (medians are reported).
    pub rounds: usize,
    pub peer: Option<Peer>,
}

/// How to run the PyTorch peer.
#[derive(Debug, Clone)]
pub struct Peer {
    pub python: PathBuf,
    pub script: PathBuf,
}

impl Peer {
    /// The script in this source tree: `benches/peers/torch_train_step.py` under the current
    /// directory, else under the tree this program was built from.
    pub fn default_script() -> PathBuf {
        let rel = Path::new("benches/peers/torch_train_step.py");
        if rel.is_file() {
            return rel.to_path_buf();
        }
        Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
    }
}

/// Node time per step, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    pub forward_ms: f64,
    pub backward_ms: f64,
    pub update_ms: f64,
    /// vgg: nodes without a phase prefix (added by ONNX Runtime's optimiser); peer: none.
    pub other_ms: f64,
}

/// One op type's node time per step.
#[derive(Debug, Clone, Serialize)]
pub struct OpTime {
    pub op: String,
    pub ms: f64,
    /// Of all node time in the profiled steps.
    pub share: f64,
}

/// vgg's figures at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct VggFigures {
    /// Median wall time of `StepSession::step` (batch inputs written and bound, the run).
    pub ms_per_step: f64,
    pub images_per_sec: f64,
    pub phases: Phases,
    /// Median wall time of a profiled run (the profiler adds a few percent).
    pub profiled_run_ms: f64,
    pub top_ops: Vec<OpTime>,
    pub first_loss: f32,
    pub last_loss: f32,
}

/// The PyTorch peer's figures at one thread count.
#[derive(Debug, Clone, Serialize)]
pub struct PeerFigures {
    pub ms_per_step: f64,
    pub images_per_sec: f64,
    pub phases: Phases,
    pub torch: String,
}

/// One thread count.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchRow {
    pub threads: usize,
    /// 1: the fused step; more: that many CPU replicas (phases are then the fused step's).
    pub replicas: usize,
    pub vgg: VggFigures,
    pub peer: Option<PeerFigures>,
    /// `vgg.ms_per_step / peer.ms_per_step` (below 1: vgg is faster).
    pub ratio: Option<f64>,
}

/// `vgg bench train-step` output; the top-level figures are the first thread count's.
#[derive(Debug, Clone, Serialize)]
pub struct StepBenchReport {
    pub machine: Machine,
    pub network: String,
    pub parameters: u64,
    pub gflops_per_image_forward: f64,
    pub batch: usize,
    /// The first row's replicas.
    pub replicas: usize,
    pub steps: usize,
    pub rounds: usize,
    pub vgg_ms_per_step: f64,
    pub peer_ms_per_step: Option<f64>,
    pub ratio: Option<f64>,
    pub phases: Phases,
    pub peer_phases: Option<Phases>,
    /// Why the peer did not run, when it was asked for and could not.
    pub peer_error: Option<String>,
    pub rows: Vec<StepBenchRow>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// A random float32 NCHW batch (values ~ N(0, 50), like mean-subtracted pixels).
fn random_batch(config: &VggConfig, n: usize) -> Batch {
    let s = config.input as usize;
    let mut rng = Rng::new(0, Stream::Synthetic, 0, 0);
    let images = (0..n * 3 * s * s)
        .map(|_| (rng.normal() * 50.0) as f32)
        .collect();
    let labels = (0..n as i64).map(|i| i % config.classes as i64).collect();
    Batch::from_images(images, s, labels)
}

fn step_session(
    o: &StepBenchOptions,
    threads: usize,
    extras: &Extras,
) -> Result<StepSession, TrainError> {
    let (params, momenta) = initial_state(o);
    let settings = SessionSettings {
        threads,
        ..Default::default()
    };
    StepSession::with_extras(
        &o.config,
        &step_options(o),
        0.5,
        &params,
        &momenta,
        &settings,
        extras,
    )
}

/// The replicas `o` times, as `vgg train` picks them.
fn replicas(o: &StepBenchOptions) -> usize {
    o.replicas.resolve(&o.config, true, o.batch, 1)
}

/// The step `o` times, as the trainer chooses it: the fused step session for one replica, the
/// data-parallel step for more.
fn engine(o: &StepBenchOptions, threads: usize) -> Result<Engine, TrainError> {
    let (params, momenta) = initial_state(o);
    let parallel = ParallelOptions {
        devices: vec![Device::Cpu; replicas(o)],
        accumulate: 1,
        threads,
    };
    Engine::new(
        &o.config,
        &step_options(o),
        0.5,
        &params,
        &momenta,
        &parallel,
        None,
    )
}

/// The parameters both step forms start from (seeded He initialisation) and zero momenta.
fn initial_state(o: &StepBenchOptions) -> (Vec<NamedTensor>, Vec<NamedTensor>) {
    let params = initialise(&o.config, Init::Kaiming, 0);
    let momenta = zero_momenta(&params);
    (params, momenta)
}

fn step_options(o: &StepBenchOptions) -> StepOptions {
    StepOptions {
        batch: o.batch,
        ..Default::default()
    }
}

/// Times `o.steps` steps after [`WARMUP`]: per-step medians and the first and last loss.
fn time_steps(
    s: &mut Engine,
    b: &Batch,
    steps: usize,
    cancel: &Cancel,
) -> Result<(f64, f32, f32), BenchError> {
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..WARMUP {
        first.get_or_insert(s.step(b, LR, 0, false)?.0.loss);
    }
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        if cancel.is_cancelled() {
            return Err(BenchError::Interrupted);
        }
        let t = Instant::now();
        last = s.step(b, LR, 0, false)?.0.loss;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(times), first.unwrap_or(last), last))
}

/// The phase split from a profiled step session: 1 + `steps` runs, the first dropped.
fn profile(
    o: &StepBenchOptions,
    threads: usize,
    b: &Batch,
) -> Result<(Phases, f64, Vec<OpTime>), BenchError> {
    // Removed when dropped, on every return (a failed step included).
    let dir = tempfile::Builder::new()
        .prefix("vgg-step-profile-")
        .tempdir()
        .map_err(|e| BenchError::Profile(e.to_string()))?;
    let extras = Extras {
        profile: Some(dir.path().join("step")),
        ..Default::default()
    };
    let mut s = step_session(o, threads, &extras)?;
    for _ in 0..1 + o.profile_steps {
        s.step(b, LR, 0)?;
    }
    let path = s.end_profiling()?;
    let text = std::fs::read_to_string(&path);
    drop(dir);
    let text = text.map_err(|e| BenchError::Profile(format!("{path}: {e}")))?;
    let events: Vec<serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| BenchError::Profile(format!("{path}: {e}")))?;
    Ok(split_profile(&events, 12))
}

/// Splits ONNX Runtime's profile events by phase and op type, per run, dropping the first
/// run (its events start before the first `model_run` ends). Returns the phases, the mean
/// run time and the `top` op types.
fn split_profile(events: &[serde_json::Value], top: usize) -> (Phases, f64, Vec<OpTime>) {
    let num = |e: &serde_json::Value, k: &str| e[k].as_f64().unwrap_or(0.0);
    let mut runs: Vec<(f64, f64)> = events
        .iter()
        .filter(|e| e["cat"] == "Session" && e["name"] == "model_run")
        .map(|e| (num(e, "ts"), num(e, "dur")))
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let cutoff = runs.first().map_or(0.0, |r| r.0 + r.1);
    let kept = runs.len().saturating_sub(1).max(1) as f64;
    let run_ms = runs.iter().skip(1).map(|r| r.1).sum::<f64>() / 1e3 / kept;
    let mut phases = [0.0f64; 4];
    let mut by_op: HashMap<String, f64> = HashMap::new();
    for e in events {
        let name = e["name"].as_str().unwrap_or("");
        if e["cat"] != "Node" || !name.ends_with("_kernel_time") || num(e, "ts") < cutoff {
            continue;
        }
        let us = num(e, "dur");
        let slot = ["forward/", "backward/", "update/"]
            .iter()
            .position(|p| name.starts_with(p))
            .unwrap_or(3);
        phases[slot] += us;
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        *by_op.entry(op).or_default() += us;
    }
    let ms = |us: f64| us / 1e3 / kept;
    let node: f64 = phases.iter().sum();
    let mut ops: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, us)| OpTime {
            op,
            ms: ms(us),
            share: if node > 0.0 { us / node } else { 0.0 },
        })
        .collect();
    ops.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    ops.truncate(top);
    let phases = Phases {
        forward_ms: ms(phases[0]),
        backward_ms: ms(phases[1]),
        update_ms: ms(phases[2]),
        other_ms: ms(phases[3]),
    };
    (phases, run_ms, ops)
}

/// Runs the PyTorch peer once at `threads`; the error says what is missing and how to
/// install it.
pub fn run_peer(peer: &Peer, o: &StepBenchOptions, threads: usize) -> Result<PeerFigures, String> {
    let c = &o.config;
    let install = "install PyTorch for the peer: `python3 -m venv /tmp/peer-venv && \
                   /tmp/peer-venv/bin/pip install torch`, then pass \
                   `--python /tmp/peer-venv/bin/python` (see benches/peers/README.md)";
    let out = Command::new(&peer.python)
        .arg(&peer.script)
        .args(["--config", &o.table_row])
        .args(["--width", &o.width.to_string()])
        .args(["--input", &c.input.to_string()])
        .args(["--classes", &c.classes.to_string()])
        .args(["--batch", &o.batch.to_string()])
        .args(["--steps", &o.steps.to_string()])
        .args(["--threads", &threads.to_string()])
        .arg("--json")
        .output()
        .map_err(|e| format!("could not run {}: {e}; {install}", peer.python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "{} {} exited with {}: {last}; {install}",
            peer.python.display(),
            peer.script.display(),
            out.status
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("the peer's output is not JSON ({e})"))?;
    let f = |k: &str| {
        v[k].as_f64()
            .ok_or_else(|| format!("the peer's JSON has no number `{k}`"))
    };
    Ok(PeerFigures {
        ms_per_step: f("ms_per_step")?,
        images_per_sec: f("images_per_sec")?,
        phases: Phases {
            forward_ms: f("forward_ms")?,
            backward_ms: f("backward_ms")?,
            update_ms: f("update_ms")?,
            other_ms: 0.0,
        },
        torch: v["machine"]["torch"].as_str().unwrap_or("?").to_string(),
    })
}

/// Measures every thread count of `o` (see [`StepBenchReport`]); `progress` hears each
/// finished measurement.
pub fn step_bench(
    o: &StepBenchOptions,
    cancel: &Cancel,
    mut progress: impl FnMut(&str),
) -> Result<StepBenchReport, BenchError> {
    let summary = o.config.summary();
    let b = random_batch(&o.config, o.batch);
    let mut rows = Vec::new();
    let mut peer_error = None;
    for &threads in &o.threads {
        let mut vgg_ms = Vec::new();
        let mut peer_runs: Vec<PeerFigures> = Vec::new();
        let mut losses = (0.0, 0.0);
        for _ in 0..o.rounds.max(1) {
            let mut s = engine(o, threads)?;
            let (ms, first, last) = time_steps(&mut s, &b, o.steps, cancel)?;
            drop(s);
            progress(&format!("vgg, {threads} thread(s): {ms:.1} ms/step"));
            vgg_ms.push(ms);
            losses = (first, last);
            if let (Some(peer), None) = (&o.peer, &peer_error) {
                match run_peer(peer, o, threads) {
                    Ok(p) => {
                        progress(&format!(
                            "PyTorch, {threads} thread(s): {:.1} ms/step",
                            p.ms_per_step
                        ));
                        peer_runs.push(p);
                    }
                    Err(e) => peer_error = Some(e),
                }
            }
            if cancel.is_cancelled() {
                return Err(BenchError::Interrupted);
            }
        }
        let (phases, profiled_run_ms, top_ops) = if o.profile_steps > 0 {
            profile(o, threads, &b)?
        } else {
            (Phases::default(), 0.0, Vec::new())
        };
        let ms = median(vgg_ms);
        let peer = (!peer_runs.is_empty()).then(|| {
            let mid = median(peer_runs.iter().map(|p| p.ms_per_step).collect());
            // The run whose time is nearest the median, with its phases.
            let mut best = peer_runs[0].clone();
            for p in &peer_runs {
                if (p.ms_per_step - mid).abs() < (best.ms_per_step - mid).abs() {
                    best = p.clone();
                }
            }
            PeerFigures {
                ms_per_step: mid,
                images_per_sec: o.batch as f64 / mid * 1e3,
                ..best
            }
        });
        rows.push(StepBenchRow {
            threads,
            replicas: replicas(o),
            ratio: peer.as_ref().map(|p| ms / p.ms_per_step),
            vgg: VggFigures {
                ms_per_step: ms,
                images_per_sec: o.batch as f64 / ms * 1e3,
                phases,
                profiled_run_ms,
                top_ops,
                first_loss: losses.0,
                last_loss: losses.1,
            },
            peer,
        });
    }
    let top = &rows[0];
    Ok(StepBenchReport {
        machine: machine(),
        network: format!(
            "{} x {} at {} px, {} classes",
            o.table_row, o.width, o.config.input, o.config.classes
        ),
        parameters: summary.parameters,
        gflops_per_image_forward: summary.flops as f64 / 1e9,
        batch: o.batch,
        replicas: top.replicas,
        steps: o.steps,
        rounds: o.rounds.max(1),
        vgg_ms_per_step: top.vgg.ms_per_step,
        peer_ms_per_step: top.peer.as_ref().map(|p| p.ms_per_step),
        ratio: top.ratio,
        phases: top.vgg.phases.clone(),
        peer_phases: top.peer.as_ref().map(|p| p.phases.clone()),
        peer_error,
        rows: rows.clone(),
    })
}
