//! The CUDA path on a GPU: the forward, dense and training-step graphs on `Device::Cuda(0)` agree
//! with the CPU (a narrow VGG-A and VGG-16), every compute node of the graphs the trainer and the
//! evaluator run is placed in the CUDA provider, the device-resident step follows the CPU's,
//! replicas and micro-batches on one GPU equal the fused step, and NCCL's all-reduce works on a
//! tensor ONNX Runtime allocated on the GPU.
//!
//! These run only with `VGG_TEST_CUDA=1` and `ORT_DYLIB_PATH` pointing at the GPU build of ONNX
//! Runtime, with the CUDA 13, cuDNN 9 and NCCL libraries on `LD_LIBRARY_PATH`
//! (`scripts/gpu-check.sh` sets all of it up). Otherwise each says that it skipped and returns.
//! Every test prints what it measured on lines starting with `measured:`.

use crate::parallel::{batches, relative_difference};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use vgg::config::model::{parameters, VggConfig, MOMENTUM};
use vgg::config::training::Init;

use vgg::dist::nccl::{self, Nccl};
use vgg::net::checkpoint::NamedTensor;
use vgg::net::graph::ir::{Dim, ElemType, Graph};
use vgg::net::graph::vgg::{self as graphs, InputForm, StepOptions, GRAD, NEXT};
use vgg::net::session::{self, Device, Extras, SessionSettings};
use vgg::train::parallel::{ParallelOptions, ParallelStep};
use vgg::train::step::{StepResult, StepSession};
use vgg::util::rng::{Rng, Stream};

use crate::train::{dataset, pipeline};

/// Whether the CUDA tests were asked for; says so when they were not.
fn cuda_requested(test: &str) -> bool {
    if std::env::var("VGG_TEST_CUDA").as_deref() == Ok("1") {
        return true;
    }
    // Straight to stderr in one write, so the line shows whole under the test harness's output
    // capture too.
    let line = format!(
        "gpu::{test}: skipped: set VGG_TEST_CUDA=1 (and ORT_DYLIB_PATH to the GPU build) to run\n"
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    false
}

/// CPU against CUDA with TF32 off: the largest difference of a tensor relative to its largest
/// magnitude on the CPU, for the logits, the dense scores and the updated parameters.
const OUTPUT_TOLERANCE: f64 = 1e-3;
/// The same for the loss (a mean over the batch).
const LOSS_TOLERANCE: f64 = 1e-4;
/// The same for the updates themselves (`NAME.momentum.next` from zero momenta, i.e.
/// `-lr (g + 5e-4 w)`): gradients sum many products in a different order on each provider.
const UPDATE_TOLERANCE: f64 = 1e-2;

/// A 1/4-width VGG-A at 64x64 with a 10-class head (the demo's network at twice its width).
const SMALL_A: &str = "config = \"A\"\nwidth = 0.25\ninput = 64\nclasses = 10";

fn model(table: &str) -> VggConfig {
    VggConfig::from_table(&table.parse::<toml::Table>().unwrap()).unwrap()
}

fn cuda_settings() -> SessionSettings {
    SessionSettings {
        device: Device::Cuda(0),
        threads: 0,
    }
}

fn cuda_session(graph: &Graph, extras: &Extras) -> Session {
    session::build_with(graph, &cuda_settings(), extras)
        .unwrap_or_else(|e| panic!("{} on cuda:0: {e}", graph.name))
}

fn cpu_session(graph: &Graph) -> Session {
    session::build(graph, &SessionSettings::default()).unwrap()
}

fn exact() -> Extras {
    Extras {
        no_tf32: true,
        ..Default::default()
    }
}

/// A host input of a graph.
enum Data {
    F32(Vec<f32>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

struct Input {
    name: String,
    shape: Vec<usize>,
    data: Data,
}

impl Input {
    fn value(&self) -> DynValue {
        let shape = self.shape.clone();
        match &self.data {
            Data::F32(v) => Tensor::from_array((shape, v.clone())).unwrap().into_dyn(),
            Data::U8(v) => Tensor::from_array((shape, v.clone())).unwrap().into_dyn(),
            Data::I64(v) => Tensor::from_array((shape, v.clone())).unwrap().into_dyn(),
        }
    }
}

/// A value for every input of `graph`: `params` by name, zero momenta (so a step's
/// `NAME.momentum.next` is its update), small random gradient sums, random images (the
/// mean-subtracted 0-255 scale) or pixels and shifts, random labels, 0-or-2 dropout masks, and
/// fixed scalars. Named dimensions: `batch` is `batch`, any other (height, width) is `side`.
fn inputs_for(
    graph: &Graph,
    config: &VggConfig,
    params: &[NamedTensor],
    batch: usize,
    side: usize,
    seed: u64,
) -> Vec<Input> {
    let by_name: HashMap<&str, &NamedTensor> =
        params.iter().map(|p| (p.name.as_str(), p)).collect();
    graph
        .inputs
        .iter()
        .enumerate()
        .map(|(i, vi)| {
            let shape: Vec<usize> = vi
                .dims
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n as usize,
                    Dim::Named(n) if n == "batch" => batch,
                    Dim::Named(_) => side,
                })
                .collect();
            let n: usize = shape.iter().product();
            let mut rng = Rng::new(seed, Stream::Synthetic, 0, i as u64);
            let mut uniform =
                |a: f64| -> Vec<f32> { (0..n).map(|_| rng.uniform(-a, a) as f32).collect() };
            let name = vi.name.as_str();
            let data = match (vi.elem, name) {
                (ElemType::F32, _) if by_name.contains_key(name) => {
                    Data::F32(by_name[name].data.clone())
                }
                (ElemType::F32, _) if name.ends_with(MOMENTUM) => Data::F32(vec![0.0; n]),
                (ElemType::F32, _) if name.ends_with(GRAD) => Data::F32(uniform(1e-2)),
                (ElemType::F32, "images" | "shift") => Data::F32(uniform(60.0)),
                (ElemType::U8, "pixels") => {
                    let mut rng = Rng::new(seed, Stream::Synthetic, 1, i as u64);
                    Data::U8((0..n).map(|_| rng.below(256) as u8).collect())
                }
                (ElemType::I64, "labels") => {
                    let mut rng = Rng::new(seed, Stream::Synthetic, 2, i as u64);
                    Data::I64(
                        (0..n)
                            .map(|_| rng.below(config.classes as u64) as i64)
                            .collect(),
                    )
                }
                (ElemType::F32, "dropout6" | "dropout7") => {
                    let mut rng = Rng::new(seed, Stream::Dropout, 0, i as u64);
                    Data::F32(
                        (0..n)
                            .map(|_| if rng.bernoulli(0.5) { 2.0 } else { 0.0 })
                            .collect(),
                    )
                }
                (ElemType::F32, "learning_rate") => Data::F32(vec![0.01]),
                (ElemType::F32, "grad_scale") => Data::F32(vec![0.5]),
                (ElemType::F32, "keep") => Data::F32(vec![1.0]),
                (elem, _) => panic!("no test value for input {name} ({elem:?})"),
            };
            Input {
                name: vi.name.clone(),
                shape,
                data,
            }
        })
        .collect()
}

/// Runs `session` on host inputs; every float or integer output as f64, on the host.
fn run(session: &mut Session, inputs: &[Input]) -> HashMap<String, Vec<f64>> {
    let values: Vec<(String, DynValue)> =
        inputs.iter().map(|i| (i.name.clone(), i.value())).collect();
    let outputs = session.run(values).unwrap();
    let mut out = HashMap::new();
    for (name, v) in outputs.iter() {
        let data: Vec<f64> = if let Ok((_, d)) = v.try_extract_tensor::<f32>() {
            d.iter().map(|&x| x as f64).collect()
        } else if let Ok((_, d)) = v.try_extract_tensor::<i64>() {
            d.iter().map(|&x| x as f64).collect()
        } else {
            panic!("output {name} is neither float32 nor int64 on the host")
        };
        out.insert(name.to_string(), data);
    }
    out
}

/// max |a - b| / max |b| (0 when both are all zeros; NaN anywhere gives NaN or infinity, which
/// fails every `<=` check).
fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    if a.iter().chain(b).any(|v| !v.is_finite()) {
        return f64::NAN;
    }
    let scale = b.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs()));
    if diff == 0.0 {
        0.0
    } else {
        diff / scale
    }
}

fn max_abs(a: &[f64]) -> f64 {
    a.iter().fold(0f64, |m, v| m.max(v.abs()))
}

/// The worst [`relative`] difference over the outputs `names`, and which output it is.
fn worst(
    gpu: &HashMap<String, Vec<f64>>,
    cpu: &HashMap<String, Vec<f64>>,
    names: &[String],
) -> (f64, String) {
    let mut out = (0f64, names.first().cloned().unwrap_or_default());
    for name in names {
        let d = relative(&gpu[name], &cpu[name]);
        if d.is_nan() || d > out.0 {
            out = (d, name.clone());
            if d.is_nan() {
                break;
            }
        }
    }
    out
}

/// Forward, dense and one training step of `config` on the CPU and on cuda:0 (TF32 off), with
/// the same parameters, batch, labels and dropout masks.
fn graphs_agree(what: &str, config: &VggConfig, batch: usize, dense_side: usize) {
    let params = vgg::net::init::initialise(config, Init::Kaiming, 11);
    let side = config.input as usize;
    let check = |label: &str, d: f64, tol: f64, detail: String| {
        println!(
            "measured: {what} {label}: max|diff|/max|cpu| = {d:.2e} (tolerance {tol:.0e}){detail}"
        );
        assert!(
            d <= tol,
            "{what} {label}: CUDA differs from the CPU by {d:e} relative (tolerance {tol:e}){detail}"
        );
    };

    // Forward.
    let g = graphs::forward_graph(config);
    let inputs = inputs_for(&g, config, &params, batch, side, 1);
    let cpu = run(&mut cpu_session(&g), &inputs);
    let gpu = run(&mut cuda_session(&g, &exact()), &inputs);
    let scale = max_abs(&cpu["logits"]);
    assert!(scale > 0.0, "{what}: the CPU's logits are all zero");
    check(
        "forward logits",
        relative(&gpu["logits"], &cpu["logits"]),
        OUTPUT_TOLERANCE,
        format!(", max|logit| {scale:.3}"),
    );
    check(
        "forward probabilities",
        relative(&gpu["probabilities"], &cpu["probabilities"]),
        OUTPUT_TOLERANCE,
        String::new(),
    );

    // Dense evaluation on a larger image.
    let g = graphs::dense_graph(config);
    let inputs = inputs_for(&g, config, &params, batch, dense_side, 2);
    let cpu = run(&mut cpu_session(&g), &inputs);
    let gpu = run(&mut cuda_session(&g, &exact()), &inputs);
    check(
        &format!("dense scores at {dense_side}x{dense_side}"),
        relative(&gpu["scores"], &cpu["scores"]),
        OUTPUT_TOLERANCE,
        String::new(),
    );

    // One training step.
    let opts = StepOptions {
        batch,
        ..Default::default()
    };
    let g = graphs::train_step_graph(config, &opts).unwrap();
    let inputs = inputs_for(&g, config, &params, batch, side, 3);
    let cpu = run(&mut cpu_session(&g), &inputs);
    let gpu = run(&mut cuda_session(&g, &exact()), &inputs);
    check(
        "step loss",
        relative(&gpu["loss"], &cpu["loss"]),
        LOSS_TOLERANCE,
        format!(
            ", loss {:.4} (cpu) {:.4} (cuda), top-1 hits {} / {}",
            cpu["loss"][0], gpu["loss"][0], cpu["top1_correct"][0], gpu["top1_correct"][0]
        ),
    );
    let specs = parameters(config);
    let next: Vec<String> = specs.iter().map(|p| format!("{}{NEXT}", p.name)).collect();
    let updates: Vec<String> = specs
        .iter()
        .map(|p| format!("{}{MOMENTUM}{NEXT}", p.name))
        .collect();
    let (d, name) = worst(&gpu, &cpu, &next);
    check(
        "step updated parameters",
        d,
        OUTPUT_TOLERANCE,
        format!(" (worst: {name})"),
    );
    let (d, name) = worst(&gpu, &cpu, &updates);
    check(
        "step updates (lr x gradient)",
        d,
        UPDATE_TOLERANCE,
        format!(" (worst: {name})"),
    );
    // The step moved the parameters (the comparison is not between two untouched copies).
    let moved = updates
        .iter()
        .map(|n| max_abs(&cpu[n]))
        .fold(0f64, f64::max);
    assert!(moved > 0.0, "{what}: the step changed no parameter");
}

#[test]
fn graphs_of_a_narrow_vgg_a_agree_with_the_cpu() {
    if !cuda_requested("graphs_of_a_narrow_vgg_a_agree_with_the_cpu") {
        return;
    }
    graphs_agree("A x0.25 at 64", &model(SMALL_A), 8, 96);
}

#[test]
fn graphs_of_vgg16_agree_with_the_cpu() {
    if !cuda_requested("graphs_of_vgg16_agree_with_the_cpu") {
        return;
    }
    // D as in the paper: 224x224, 1000 classes; batch 2 keeps the CPU side short.
    graphs_agree("VGG-16 (D) at 224", &VggConfig::paper("D").unwrap(), 2, 256);
}

/// What ONNX Runtime's profile says about where the kernels of one run went.
#[derive(Default)]
struct Placement {
    /// (op, node) of each kernel the CUDA provider ran.
    on_cuda: BTreeSet<(String, String)>,
    /// (op, node) of each kernel run by another provider, with that provider.
    elsewhere: BTreeMap<(String, String), String>,
    /// (op, node) of the copies ONNX Runtime inserted between providers.
    memcpy: BTreeSet<(String, String)>,
    ops: BTreeMap<String, usize>,
}

fn placement(profile: &Path) -> Placement {
    let text =
        std::fs::read_to_string(profile).unwrap_or_else(|e| panic!("{}: {e}", profile.display()));
    let events: Vec<serde_json::Value> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON array: {e}", profile.display()));
    let mut p = Placement::default();
    for e in &events {
        if e["cat"] != "Node" {
            continue;
        }
        // A node's kernel event names its provider; its fence events do not.
        let Some(provider) = e["args"]["provider"].as_str() else {
            continue;
        };
        let op = e["args"]["op_name"].as_str().unwrap_or("?").to_string();
        let node = e["name"]
            .as_str()
            .unwrap_or("?")
            .trim_end_matches("_kernel_time")
            .to_string();
        *p.ops.entry(op.clone()).or_default() += 1;
        if op.starts_with("Memcpy") {
            p.memcpy.insert((op.clone(), node.clone()));
        }
        if provider == "CUDAExecutionProvider" {
            p.on_cuda.insert((op, node));
        } else {
            p.elsewhere.insert((op, node), provider.to_string());
        }
    }
    p
}

#[test]
fn every_compute_node_of_the_graphs_runs_on_cuda() {
    if !cuda_requested("every_compute_node_of_the_graphs_runs_on_cuda") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let a = model(SMALL_A);
    let lrn = model("config = \"A-LRN\"\nwidth = 0.25\ninput = 64\nclasses = 10");
    let opts = StepOptions {
        batch: 8,
        ..Default::default()
    };
    let u8_opts = StepOptions {
        input: InputForm::U8Nhwc,
        ..opts.clone()
    };
    let cases: Vec<(&str, &VggConfig, Graph, usize)> = vec![
        ("step", &a, graphs::train_step_graph(&a, &opts).unwrap(), 64),
        (
            "step, uint8 NHWC input",
            &a,
            graphs::train_step_graph(&a, &u8_opts).unwrap(),
            64,
        ),
        (
            "step, A-LRN",
            &lrn,
            graphs::train_step_graph(&lrn, &opts).unwrap(),
            64,
        ),
        (
            "gradient, accumulating",
            &a,
            graphs::gradient_graph(&a, &opts, true).unwrap(),
            64,
        ),
        ("update", &a, graphs::update_graph(&a, &opts), 64),
        ("forward", &a, graphs::forward_graph(&a), 64),
        ("dense", &a, graphs::dense_graph(&a), 96),
    ];
    let mut offenders = Vec::new();
    let mut by_op: BTreeMap<String, usize> = BTreeMap::new();
    let mut no_cuda_kernel = false;
    let mut saw_conv = false;
    for (i, (what, config, graph, side)) in cases.iter().enumerate() {
        let params = vgg::net::init::initialise(config, Init::Kaiming, 5);
        let extras = Extras {
            profile: Some(dir.path().join(format!("profile-{i}"))),
            ..Default::default()
        };
        let mut s = cuda_session(graph, &extras);
        let inputs = inputs_for(graph, config, &params, opts.batch, *side, 7);
        // Twice: the first run also tunes cuDNN; both are profiled.
        run(&mut s, &inputs);
        run(&mut s, &inputs);
        let file = s.end_profiling().unwrap();
        let p = placement(Path::new(&file));
        saw_conv |= p.ops.keys().any(|op| op.contains("Conv"));
        let memcpy: Vec<String> = p.memcpy.iter().map(|(o, n)| format!("{o} {n}")).collect();
        println!(
            "measured: {what} graph ({}): {} nodes on CUDA, {} elsewhere, {} Memcpy nodes{}",
            graph.name,
            p.on_cuda.len(),
            p.elsewhere.len(),
            p.memcpy.len(),
            if memcpy.is_empty() {
                String::new()
            } else {
                format!(" ({})", memcpy.join(", "))
            }
        );
        for ((op, node), provider) in p.elsewhere {
            *by_op.entry(format!("{op} on {provider}")).or_default() += 1;
            offenders.push(format!("{what}: {op} `{node}` on {provider}"));
        }
        no_cuda_kernel |= p.on_cuda.is_empty();
    }
    const SHOWN: usize = 40;
    assert!(
        offenders.is_empty(),
        "{} node(s) not on the CUDA provider ({}):\n  {}{}",
        offenders.len(),
        by_op
            .iter()
            .map(|(op, n)| format!("{op} x{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        offenders[..offenders.len().min(SHOWN)].join("\n  "),
        if offenders.len() > SHOWN {
            format!("\n  ... and {} more", offenders.len() - SHOWN)
        } else {
            String::new()
        }
    );
    assert!(!no_cuda_kernel, "a profile lists no kernel on CUDA");
    assert!(
        saw_conv,
        "no convolution kernel in any profile: the profiles are not what this test reads"
    );
}

type Run = (Vec<StepResult>, Vec<NamedTensor>, Vec<NamedTensor>);

#[test]
fn replicas_and_micro_batches_on_one_gpu_equal_the_fused_step() {
    if !cuda_requested("replicas_and_micro_batches_on_one_gpu_equal_the_fused_step") {
        return;
    }
    // TF32 stays at the CUDA provider's default here, as in training: the trainer's sessions
    // are built that way. Parameters are compared to 1e-4 of their largest magnitude (as on the
    // CPU); the momenta (the accumulated updates themselves) to 1e-2, since convolutions of
    // different batch sizes may take different cuDNN algorithms, which round differently.
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let p = pipeline(dir.path(), "");
    let config = p.model.clone().unwrap();
    let params = vgg::net::init::initialise(&config, Init::Glorot, 1);
    let momenta = vgg::net::init::zero_momenta(&params);
    let batch = 24;
    let opts = StepOptions {
        batch,
        weight_decay: 5e-4,
        ..Default::default()
    };
    let dropout = 0.5;
    let bs = batches(&p, &data.0, batch, 3);
    let lrs = [0.01f32, 0.02, 0.005];
    let fused = |device: Device| -> Run {
        let settings = SessionSettings { device, threads: 0 };
        let mut s =
            StepSession::new(&config, &opts, dropout, &params, &momenta, &settings).unwrap();
        let results = bs
            .iter()
            .zip(&lrs)
            .map(|(b, &lr)| s.step(b, lr, 7).unwrap())
            .collect();
        let (p, m) = s.download().unwrap();
        (results, p, m)
    };
    let (cpu_results, cpu_p, cpu_m) = fused(Device::Cpu);
    let (want, want_p, want_m) = fused(Device::Cuda(0));
    assert!(
        relative_difference(&want_p, &params) > 1e-4,
        "three steps did not move the parameters"
    );

    // The device-resident step (two parameter sets on the GPU, bindings alternating) against
    // the CPU's over the same three steps.
    let dp = relative_difference(&want_p, &cpu_p);
    let dm = relative_difference(&want_m, &cpu_m);
    let losses = |r: &[StepResult]| r.iter().map(|r| r.loss).collect::<Vec<_>>();
    println!(
        "measured: fused step cuda:0 vs cpu over 3 steps: parameters {dp:.2e}, momenta {dm:.2e} \
         (tolerances 1e-3, 5e-2); losses {:?} vs {:?}",
        losses(&want),
        losses(&cpu_results)
    );
    assert!(
        dp <= 1e-3 && dm <= 5e-2,
        "the CUDA step left the CPU's: parameters {dp:e}, momenta {dm:e}"
    );

    for (replicas, accumulate) in [(2, 1), (1, 2), (2, 2)] {
        let what = format!("{replicas} replica(s) x {accumulate} micro-batch(es) on cuda:0");
        let mut par = ParallelStep::new(
            &config,
            &opts,
            dropout,
            &params,
            &momenta,
            &ParallelOptions {
                devices: vec![Device::Cuda(0); replicas],
                accumulate,
                threads: 0,
            },
            None,
        )
        .unwrap();
        let mut worst_loss = 0f64;
        for ((b, &lr), w) in bs.iter().zip(&lrs).zip(&want) {
            let r = par.step(b, lr, 7).unwrap();
            let d = ((r.loss - w.loss) / w.loss).abs() as f64;
            worst_loss = worst_loss.max(if d.is_nan() { f64::INFINITY } else { d });
        }
        let (got_p, got_m) = par.download().unwrap();
        let dp = relative_difference(&got_p, &want_p);
        let dm = relative_difference(&got_m, &want_m);
        let sums = par.checksums().unwrap();
        println!(
            "measured: {what} vs the fused step over 3 steps: loss {worst_loss:.2e}, \
             parameters {dp:.2e}, momenta {dm:.2e} (tolerances 1e-3, 1e-4, 1e-2); replica \
             checksums {sums:x?}"
        );
        assert!(worst_loss <= 1e-3, "{what}: loss differs by {worst_loss:e}");
        assert!(
            dp <= 1e-4 && dm <= 1e-2,
            "{what}: parameters {dp:e}, momenta {dm:e}"
        );
        assert_eq!(sums.len(), replicas);
        assert!(
            sums.iter().all(|s| *s == sums[0]),
            "{what}: replicas differ: {sums:x?}"
        );
    }
}

#[test]
fn nccl_all_reduce_over_a_world_of_one_keeps_the_values() {
    if !cuda_requested("nccl_all_reduce_over_a_world_of_one_keeps_the_values") {
        return;
    }
    let info = nccl::library_info().unwrap_or_else(|e| panic!("NCCL: {e}"));
    println!("measured: NCCL {} from {}", info.version, info.library);
    // A CUDA session, for ONNX Runtime's allocator on the GPU.
    let config = model(SMALL_A);
    let s = cuda_session(&graphs::forward_graph(&config), &Extras::default());
    let mem = MemoryInfo::new(
        AllocationDevice::CUDA,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )
    .unwrap();
    let alloc = Allocator::new(&s, mem).unwrap();
    // An odd length, so no chunk of the reduction is a round size.
    let n = (1 << 20) + 3;
    let values: Vec<f32> = (0..n).map(|i| (i % 1013) as f32 * 0.25 - 100.0).collect();
    let upload = |t: &mut Tensor<f32>| {
        Tensor::from_array((vec![n], values.clone()))
            .unwrap()
            .copy_into(t)
            .unwrap();
    };
    let download = |t: &Tensor<f32>| -> Vec<f32> {
        let mut host = Tensor::<f32>::new(&Allocator::default(), vec![n]).unwrap();
        t.copy_into(&mut host).unwrap();
        host.extract_tensor().1.to_vec()
    };
    let mut on_gpu = Tensor::<f32>::new(&alloc, vec![n]).unwrap();
    assert_eq!(
        on_gpu.memory_info().allocation_device(),
        AllocationDevice::CUDA,
        "the tensor is not in GPU memory"
    );
    upload(&mut on_gpu);

    // One process, rank 0 of 1, through a unique id as a multi-process run does.
    let id = nccl::unique_id().unwrap();
    let comm = Nccl::init(0, 0, 1, &id).unwrap();
    assert_eq!((comm.rank(), comm.world(), comm.device()), (0, 1, 0));
    assert!(!comm.stream_ptr().is_null());
    // SAFETY: `on_gpu` holds n f32 on GPU 0 and outlives the synchronize below.
    unsafe {
        comm.all_reduce_sum_f32_in_place(on_gpu.data_ptr_mut().cast::<f32>(), n)
            .unwrap()
    };
    comm.synchronize().unwrap();
    let after = download(&on_gpu);
    let changed = after
        .iter()
        .zip(&values)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    println!("measured: ncclAllReduce over 1 rank, {n} floats: {changed} changed");
    assert_eq!(changed, 0, "a sum over one rank changed {changed} values");

    // As the data-parallel step does on distinct GPUs: a session computing on NCCL's stream
    // writes into a tensor on the GPU, and the all-reduce is queued after it on that stream.
    let g = graphs::forward_graph(&config);
    let params = vgg::net::init::initialise(&config, Init::Kaiming, 3);
    let inputs = inputs_for(&g, &config, &params, 4, config.input as usize, 9);
    let cpu = run(&mut cpu_session(&g), &inputs);
    let on_stream = Extras {
        cuda_stream: Some(comm.stream_ptr()),
        no_tf32: true,
        ..Default::default()
    };
    let mut s2 = cuda_session(&g, &on_stream);
    let mem = MemoryInfo::new(
        AllocationDevice::CUDA,
        0,
        AllocatorType::Device,
        MemoryType::Default,
    )
    .unwrap();
    let alloc2 = Allocator::new(&s2, mem).unwrap();
    let classes = config.classes as usize;
    let mut logits = Tensor::<f32>::new(&alloc2, vec![4, classes]).unwrap();
    let feeds: Vec<(String, DynValue)> =
        inputs.iter().map(|i| (i.name.clone(), i.value())).collect();
    let mut binding = s2.create_binding().unwrap();
    for (name, v) in &feeds {
        binding.bind_input(name.as_str(), v).unwrap();
    }
    binding.bind_output("logits", &mut logits).unwrap();
    s2.run_binding(&binding).unwrap();
    // SAFETY: `logits` holds 4 x classes f32 on GPU 0 and outlives the synchronize below.
    unsafe {
        comm.all_reduce_sum_f32_in_place(logits.data_ptr_mut().cast::<f32>(), 4 * classes)
            .unwrap()
    };
    comm.synchronize().unwrap();
    let mut host = Tensor::<f32>::new(&Allocator::default(), vec![4, classes]).unwrap();
    logits.copy_into(&mut host).unwrap();
    let got: Vec<f64> = host.extract_tensor().1.iter().map(|&x| x as f64).collect();
    let d = relative(&got, &cpu["logits"]);
    println!(
        "measured: forward on NCCL's stream, then ncclAllReduce over 1 rank: logits vs cpu \
         {d:.2e} (tolerance {OUTPUT_TOLERANCE:.0e})"
    );
    assert!(
        d <= OUTPUT_TOLERANCE,
        "logits computed on NCCL's stream and all-reduced differ from the CPU's by {d:e}"
    );
    drop(binding);
    drop(s2);
    drop(comm);

    // The in-process form (one communicator per listed GPU), inside a group.
    let comms = Nccl::for_devices(&[0]).unwrap();
    upload(&mut on_gpu);
    nccl::group_start().unwrap();
    for c in &comms {
        // SAFETY: as above.
        unsafe {
            c.all_reduce_sum_f32_in_place(on_gpu.data_ptr_mut().cast::<f32>(), n)
                .unwrap()
        };
    }
    nccl::group_end().unwrap();
    for c in &comms {
        c.synchronize().unwrap();
    }
    assert_eq!(
        download(&on_gpu),
        values,
        "a grouped sum over one device changed the values"
    );
}
