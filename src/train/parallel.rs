//! The data-parallel training step of the paper's Section 3.3: every batch split over several
//! replicas (devices in this process, and processes), each replica's gradients computed in
//! parallel, summed, and the same update applied everywhere, "so the result is exactly the
//! same as when training on a single GPU" (to float rounding); and gradient accumulation,
//! which splits each replica's share into K micro-batches run one after the other, so a
//! device that cannot hold the paper's batch of 256 still trains with it.
//!
//! Per replica: a gradient session (the gradient graph of one micro-batch; with K > 1 it adds
//! into a running sum on the device, two sums alternating as in the step's parameter sets),
//! and an update session (the update graph), over two parameter-and-momentum sets like
//! [`super::step::StepSession`]. CPU replicas share one memory: all read the first replica's
//! sets, and it alone updates them (one copy of the state, one update per step); they run
//! side by side on at most the run's thread count, taking turns when it is lower.
//!
//! Which images a replica gets: the process's batch is cut into `replicas x K` consecutive
//! micro-batches, replica `r` taking micro-batches `r*K..(r+1)*K`.
//! Each image's augmentation and dropout mask derive from its record index, so the global batch
//! is the same whatever the split, and the device count may change on resume.
//!
//! Summation order is fixed, so every replica and process gets the same bits: replicas in
//! order within a process, then processes in rank order ([`crate::dist`]'s all-reduce). CPU
//! replicas sum in host memory (into replica 0's buffer, which its update then reads); CUDA
//! replicas on one device sum through the host; CUDA replicas on distinct devices (in this
//! process and in the others) use NCCL: the gradients are summed in place in the buffers the
//! gradient session wrote, on the stream ONNX Runtime computes on (handed to its CUDA provider
//! as the user compute stream), so they never go through the host. **The NCCL path has not
//! run on a GPU**; the host paths are tested on the CPU, and `scripts/gpu-check.sh` checks the
//! one-device cases where a GPU is at hand.

use std::time::Instant;

use ort::session::{IoBinding, Session};
use ort::value::Tensor;

use super::step::{
    allocate, bind_alternating, check_counts, device_allocator, download_into, download_set,
    host_scalar, ort_err, state_names, state_sets, upload, HostInputs, LossOutputs, StepResult,
};
use super::TrainError;
use crate::config::model::{parameters, ParamSpec, VggConfig};
use crate::data::loader::Batch;
use crate::dist::nccl::{self, Nccl};
use crate::net::checkpoint::NamedTensor;
use crate::net::graph::vgg::{self as graphs, StepOptions, GRAD, NEXT};
use crate::net::session::{self, Device, Extras, SessionSettings};

/// Sums across processes: the host all-reduce of a process group (one per process, rank order).
pub trait CrossProcess: Send {
    /// This process's rank and the number of processes.
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `data` with its sum over all processes, identical bits on every rank.
    fn all_reduce_f32(&mut self, data: &mut [f32]) -> Result<(), TrainError>;
    fn all_reduce_f64(&mut self, data: &mut [f64]) -> Result<(), TrainError>;
    /// Rank 0's `bytes` on every rank.
    fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<(), TrainError>;
}

/// The TCP process group of [`crate::dist`] (rendezvous through rank 0, sums in rank order).
impl CrossProcess for crate::dist::Group {
    fn rank(&self) -> usize {
        crate::dist::Group::rank(self)
    }
    fn world(&self) -> usize {
        crate::dist::Group::world(self)
    }
    fn all_reduce_f32(&mut self, data: &mut [f32]) -> Result<(), TrainError> {
        Ok(self.all_reduce_sum_f32(data)?)
    }
    fn all_reduce_f64(&mut self, data: &mut [f64]) -> Result<(), TrainError> {
        Ok(self.all_reduce_sum_f64(data)?)
    }
    fn broadcast(&mut self, bytes: &mut Vec<u8>) -> Result<(), TrainError> {
        Ok(crate::dist::Group::broadcast(self, bytes)?)
    }
}

/// How the step is split.
#[derive(Debug, Clone, PartialEq)]
pub struct ParallelOptions {
    /// One replica per entry (a device may repeat).
    pub devices: Vec<Device>,
    /// Micro-batches per replica and step.
    pub accumulate: usize,
    /// Intra-op threads for all CPU replicas together (0: one per core).
    pub threads: usize,
}

/// Networks up to this many parameters get [`AUTO_CPU_REPLICAS`] from [`Replicas::Auto`]:
/// each CPU replica holds its own gradients and sessions, and the host sums them every step,
/// which costs little for small networks and more than it gains for large ones, whose big
/// operators ONNX Runtime's threads split well (VGG-16 at a batch of 4 on two cores: 5.3 s
/// per step against 4.8-5.2 s fused, 8.1 GB resident against 4.6 GB).
pub const AUTO_CPU_REPLICAS_MAX_PARAMETERS: u64 = 16_000_000;

/// The CPU replicas [`Replicas::Auto`] gives a small network, whatever the machine: two
/// one-thread replicas on two cores run the demo network's step 1.6-1.8x faster than one
/// two-thread fused step (ONNX Runtime's intra-op threads barely split its small operators),
/// and with one thread they take turns as fast as the fused step (0.90-1.15x in five paired
/// runs, median 1.01); four were no faster than two on two cores (more cores were not at
/// hand). A count fixed by the run, not by the machine, keeps the results the same bits at
/// every thread count and core count.
pub const AUTO_CPU_REPLICAS: usize = 2;

/// How many data-parallel replicas a process runs: a count, or `auto`, which on the CPU gives
/// small networks [`AUTO_CPU_REPLICAS`] and other runs one. One replica runs the fused step;
/// a split step equals it to float rounding (its bits depend on the replica count, never on
/// the thread count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    Auto,
    Count(usize),
}

impl std::str::FromStr for Replicas {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(Replicas::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Replicas::Count(n)),
            _ => Err("give a replica count of at least 1, or auto".into()),
        }
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Replicas::Auto => f.write_str("auto"),
            Replicas::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Replicas {
    /// The replica count for `config` at a per-process `batch` split into `accumulate`
    /// micro-batches per replica. `Auto` is [`AUTO_CPU_REPLICAS`] on the CPU for a network of
    /// at most [`AUTO_CPU_REPLICAS_MAX_PARAMETERS`] whose batch they split evenly, and 1
    /// otherwise.
    pub fn resolve(
        self,
        config: &VggConfig,
        on_cpu: bool,
        batch: usize,
        accumulate: usize,
    ) -> usize {
        match self {
            Replicas::Count(n) => n,
            Replicas::Auto => {
                let small = config.summary().parameters <= AUTO_CPU_REPLICAS_MAX_PARAMETERS;
                let splits = batch.is_multiple_of(AUTO_CPU_REPLICAS * accumulate.max(1));
                if on_cpu && small && splits {
                    AUTO_CPU_REPLICAS
                } else {
                    1
                }
            }
        }
    }
}

struct Replica {
    device: Device,
    grad: Session,
    /// The update session and its bindings (`[p]` reads set `p`, writes set `1 - p`); none for
    /// a CPU replica after the first, which reads the first one's sets and leaves the update
    /// to it (one host memory: one copy of the state, one update per step).
    update: Option<(Session, [IoBinding; 2])>,
    /// `grad_bindings[p * sums + a]`: reads parameter set `p` (and running sum `a`).
    grad_bindings: Vec<IoBinding>,
    /// Parameters and momenta, twice; empty when the first replica's are read.
    sets: [Vec<Tensor<f32>>; 2],
    /// One gradient set, or two alternating running sums when accumulating.
    grads: Vec<Vec<Tensor<f32>>>,
    host: HostInputs,
    keep: Tensor<f32>,
    lr: Tensor<f32>,
    scale: Tensor<f32>,
    outputs: LossOutputs,
    current: usize,
}

/// The data-parallel step.
pub struct ParallelStep {
    replicas: Vec<Replica>,
    k: usize,
    micro: usize,
    specs: Vec<ParamSpec>,
    dropout: f32,
    crop: usize,
    /// The set holding a step's final gradient sum.
    last: usize,
    group: Option<Box<dyn CrossProcess>>,
    /// Host staging for replicas not on the CPU.
    staging: Vec<Vec<f32>>,
    /// One communicator per replica when the replicas are distinct CUDA devices.
    nccl: Vec<Nccl>,
    /// Replicas that run at once: all of them, except that CPU replicas never run on more
    /// threads than the run was given (two replicas with one thread run one after the other).
    concurrent: usize,
    /// Seconds spent summing gradients (local and across processes) since creation.
    pub reduce_seconds: f64,
}

impl ParallelStep {
    /// Compiles the gradient graph on every device and the update graph, with `params` and
    /// `momenta` uploaded, on each one that owns a set (every GPU replica; the first CPU
    /// replica, whose set the other CPU replicas read). `opts.batch` is this process's share of the global batch; it must
    /// split into `devices.len() x accumulate` equal micro-batches.
    pub fn new(
        config: &VggConfig,
        opts: &StepOptions,
        dropout: f32,
        params: &[NamedTensor],
        momenta: &[NamedTensor],
        parallel: &ParallelOptions,
        group: Option<Box<dyn CrossProcess>>,
    ) -> Result<Self, TrainError> {
        let specs = parameters(config);
        check_counts(&specs, params, momenta)?;
        let r = parallel.devices.len();
        let k = parallel.accumulate;
        if r == 0 || k == 0 || !opts.batch.is_multiple_of(r * k) || opts.batch < r * k {
            return Err(TrainError::Setup(format!(
                "a batch of {} does not split into {r} replica(s) x {k} micro-batch(es) of equal size",
                opts.batch
            )));
        }
        let micro = opts.batch / (r * k);
        let micro_opts = StepOptions {
            batch: micro,
            ..opts.clone()
        };
        let mut group = group;
        let nccl = nccl_for(&parallel.devices, group.as_deref_mut())?;
        let grad_graph = graphs::gradient_graph(config, &micro_opts, k > 1)?;
        let update_graph = graphs::update_graph(config, opts);
        let cpu_replicas = parallel
            .devices
            .iter()
            .filter(|d| **d == Device::Cpu)
            .count();
        let threads = if parallel.threads > 0 {
            parallel.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        };
        let per_cpu = (threads / cpu_replicas.max(1)).max(1);
        let all_cpu = cpu_replicas == r;
        let concurrent = if all_cpu { threads.clamp(1, r) } else { r };
        let crop = config.input as usize;
        let sums = if k > 1 { 2 } else { 1 };
        let shapes: Vec<Vec<usize>> = params.iter().map(|t| t.shape.clone()).collect();
        let mut replicas = Vec::with_capacity(r);
        for (i, &device) in parallel.devices.iter().enumerate() {
            let settings = SessionSettings {
                device,
                threads: if device == Device::Cpu { per_cpu } else { 0 },
            };
            // The one update of CPU replicas that share a set runs alone: on all the threads.
            let update_settings = SessionSettings {
                threads: if all_cpu && r > 1 {
                    threads
                } else {
                    settings.threads
                },
                ..settings
            };
            let extras = Extras {
                cuda_stream: nccl.get(i).map(|c| c.stream_ptr()),
                ..Default::default()
            };
            // Several CPU replicas share the cores: none spins for the others' time. The update
            // runs briefly between gradient runs: it never spins.
            let grad_extras = Extras {
                no_spinning: cpu_replicas > 1,
                ..extras.clone()
            };
            let update_extras = Extras {
                no_spinning: true,
                ..extras
            };
            let shares = all_cpu && i > 0;
            let grad = session::build_with(&grad_graph, &settings, &grad_extras)?;
            let alloc = device_allocator(&grad, device)?;
            let b = |s: &Session| s.create_binding().map_err(ort_err("binding"));
            let (update, sets) = if shares {
                (None, Default::default())
            } else {
                let u = session::build_with(&update_graph, &update_settings, &update_extras)?;
                let bindings = [b(&u)?, b(&u)?];
                (
                    Some((u, bindings)),
                    state_sets(&alloc, params, momenta, device)?,
                )
            };
            let mut grads = Vec::with_capacity(sums);
            for _ in 0..sums {
                let mut set = allocate(&alloc, &shapes)?;
                // A running sum is multiplied by 0 to start: it must hold finite values.
                for (t, s) in set.iter_mut().zip(&specs) {
                    upload(t, &vec![0.0; s.numel()], device)?;
                }
                grads.push(set);
            }
            replicas.push(Replica {
                device,
                grad_bindings: (0..2 * sums).map(|_| b(&grad)).collect::<Result<_, _>>()?,
                grad,
                update,
                sets,
                grads,
                host: HostInputs::new(opts.input, micro, crop, config.fc as usize)?,
                keep: host_scalar(0.0)?,
                lr: host_scalar(0.0)?,
                scale: host_scalar(1.0)?,
                outputs: LossOutputs::new()?,
                current: 0,
            });
        }
        let last = if k > 1 { k % 2 } else { 0 };
        let staging = if parallel.devices.iter().any(|d| *d != Device::Cpu) {
            specs.iter().map(|s| vec![0f32; s.numel()]).collect()
        } else {
            Vec::new()
        };
        let mut me = ParallelStep {
            replicas,
            k,
            micro,
            specs,
            dropout,
            crop,
            last,
            group,
            staging,
            nccl,
            reduce_seconds: 0.0,
            concurrent,
        };
        me.bind()?;
        Ok(me)
    }

    fn bind(&mut self) -> Result<(), TrainError> {
        let names: Vec<String> = self.specs.iter().map(|p| p.name.clone()).collect();
        let state = state_names(&self.specs);
        let e = ort_err("bind");
        let sums = self.replicas[0].grads.len();
        let last = self.last;
        let (first, rest) = self.replicas.split_at_mut(1);
        let first = &mut first[0];
        for rep in std::iter::once(&mut *first).chain(rest.iter_mut()) {
            let Replica {
                grad_bindings,
                update,
                sets,
                grads,
                outputs,
                ..
            } = rep;
            let Some((_, update_bindings)) = update else {
                continue; // bound below, to the first replica's sets
            };
            bind_gradients(grad_bindings, sets, grads, outputs, &names, sums)?;
            // Each update reads its replica's final sum (on the CPU, replica 0's holds the
            // total: the host reduction writes there).
            let grads = &*grads;
            bind_alternating(update_bindings, sets, &state, |_, binding| {
                for (name, t) in names.iter().zip(&grads[last]) {
                    binding.bind_input(format!("{name}{GRAD}"), t).map_err(&e)?;
                }
                Ok(())
            })?;
        }
        for rep in rest.iter_mut().filter(|r| r.update.is_none()) {
            let Replica {
                grad_bindings,
                grads,
                outputs,
                ..
            } = rep;
            bind_gradients(grad_bindings, &first.sets, grads, outputs, &names, sums)?;
        }
        Ok(())
    }

    /// Images per step in this process.
    pub fn batch_size(&self) -> usize {
        self.replicas.len() * self.k * self.micro
    }

    /// Replicas in this process.
    pub fn replicas(&self) -> usize {
        self.replicas.len()
    }

    /// One SGD step on `batch` (this process's share of the global batch, full).
    pub fn step(&mut self, batch: &Batch, lr: f32, seed: u64) -> Result<StepResult, TrainError> {
        Ok(self.step_and_vote(batch, lr, seed, false)?.0)
    }

    /// The process group, if any.
    pub fn group(&mut self) -> Option<&mut Box<dyn CrossProcess>> {
        self.group.as_mut()
    }

    /// [`ParallelStep::step`], also telling the other processes whether this one was asked to
    /// stop; returns whether any was (so that all stop after the same step).
    pub fn step_and_vote(
        &mut self,
        batch: &Batch,
        lr: f32,
        seed: u64,
        stop: bool,
    ) -> Result<(StepResult, bool), TrainError> {
        let n = self.batch_size();
        if batch.len() != n {
            return Err(TrainError::Mismatch(format!(
                "a batch of {} images for a step of {n}",
                batch.len()
            )));
        }
        let (k, micro, dropout) = (self.k, self.micro, self.dropout);
        let sums = self.replicas[0].grads.len();
        // Gradients, replicas in parallel, micro-batches one after the other.
        let results = each_replica(&mut self.replicas, self.concurrent, |i, rep| {
            rep.gradients(batch, i, k, micro, sums, seed, dropout)
        });
        let mut totals = [0f64, 0.0, 0.0, if stop { 1.0 } else { 0.0 }];
        for r in results {
            let (loss, t1, t5) = r?;
            totals[0] += loss;
            totals[1] += t1 as f64;
            totals[2] += t5 as f64;
        }
        let started = Instant::now();
        self.reduce()?;
        let mut world = 1;
        if let Some(g) = self.group.as_mut() {
            g.all_reduce_f64(&mut totals)?;
            world = g.world();
        }
        self.reduce_seconds += started.elapsed().as_secs_f64();
        let parts = (world * self.replicas.len() * k) as f32;
        // Either every replica owns its set and updates it, or (CPU replicas) the first alone.
        if self.replicas.iter().all(|r| r.update.is_some()) {
            let updates = each_replica(&mut self.replicas, self.concurrent, |_, rep| {
                rep.apply(lr, 1.0 / parts)
            });
            for u in updates {
                u?;
            }
        } else {
            self.replicas[0].apply(lr, 1.0 / parts)?;
        }
        // Replicas that read the first one's sets follow its alternation, whatever happened.
        let current = self.replicas[0].current;
        for rep in self.replicas.iter_mut().filter(|r| r.update.is_none()) {
            rep.current = current;
        }
        let images = (world * n) as f64;
        let result = StepResult {
            loss: (totals[0] / images) as f32,
            top1_correct: totals[1] as i64,
            top5_correct: totals[2] as i64,
        };
        Ok((result, totals[3] > 0.0))
    }

    /// Sums the replicas' final gradient sums into every replica's (or, on the CPU, into
    /// replica 0's, which its update reads), then across processes.
    fn reduce(&mut self) -> Result<(), TrainError> {
        let last = self.last;
        let all_cpu = self.replicas.iter().all(|r| r.device == Device::Cpu);
        if all_cpu {
            let (first, rest) = self.replicas.split_at_mut(1);
            for t in 0..self.specs.len() {
                let acc = first[0].grads[last][t].extract_tensor_mut().1;
                for rep in rest.iter() {
                    let x = rep.grads[last][t].extract_tensor().1;
                    crate::dist::accumulate(acc, x);
                }
                if let Some(g) = self.group.as_mut() {
                    g.all_reduce_f32(acc)?;
                }
            }
            return Ok(());
        }
        if self.replicas.len() == 1 && self.group.is_none() {
            return Ok(());
        }
        if !self.nccl.is_empty() {
            // In place on every device, all tensors in one NCCL group, queued on the streams
            // the gradient sessions computed on and the update sessions will read from.
            nccl::group_start()?;
            let mut result = Ok(());
            'all: for (rep, comm) in self.replicas.iter_mut().zip(&self.nccl) {
                for t in rep.grads[last].iter_mut() {
                    let count = t.shape().iter().product::<i64>() as usize;
                    let ptr = t.data_ptr_mut() as *mut f32;
                    // SAFETY: `t` is an ONNX Runtime allocation of `count` f32 on the
                    // communicator's device, alive as long as the replica; every rank and
                    // replica makes the same calls in the same order.
                    if let Err(e) = unsafe { comm.all_reduce_sum_f32_in_place(ptr, count) } {
                        result = Err(e);
                        break 'all;
                    }
                }
            }
            nccl::group_end()?;
            return result.map_err(TrainError::from);
        }
        // Through the host: download in replica order, sum, reduce across processes, upload.
        let mut part = Vec::new();
        for t in 0..self.specs.len() {
            let acc = &mut self.staging[t];
            for (i, rep) in self.replicas.iter().enumerate() {
                if i == 0 {
                    download_into(&rep.grads[last][t], acc, rep.device)?;
                } else {
                    part.resize(acc.len(), 0.0);
                    download_into(&rep.grads[last][t], &mut part, rep.device)?;
                    crate::dist::accumulate(acc, &part);
                }
            }
            if let Some(g) = self.group.as_mut() {
                g.all_reduce_f32(acc)?;
            }
            for rep in &mut self.replicas {
                upload(&mut rep.grads[last][t], acc, rep.device)?;
            }
        }
        Ok(())
    }

    /// Copies the current parameters and momenta (replica 0's) to the host.
    pub fn download(&self) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), TrainError> {
        let r = &self.replicas[0];
        download_set(&r.sets[r.current], &self.specs, r.device)
    }

    /// Replica 0's current parameters, on its device (for validation).
    pub fn params(&self) -> &[Tensor<f32>] {
        let r = &self.replicas[0];
        &r.sets[r.current][..self.specs.len()]
    }

    /// A CRC-32C of every replica's current parameters and momenta, in replica order; they
    /// are equal while the replicas are in step.
    pub fn checksums(&self) -> Result<Vec<u32>, TrainError> {
        let mut out = Vec::new();
        for r in &self.replicas {
            let mut h = 0u32;
            let mut buf = Vec::new();
            let sets = if r.update.is_some() {
                &r.sets
            } else {
                &self.replicas[0].sets
            };
            for t in &sets[r.current] {
                buf.resize(t.shape().iter().product::<i64>() as usize, 0.0);
                download_into(t, &mut buf, r.device)?;
                h = crc32c::crc32c_append(h, bytemuck::cast_slice(&buf));
            }
            out.push(h);
        }
        Ok(out)
    }

    /// The crop side the step expects.
    pub fn crop(&self) -> usize {
        self.crop
    }
}

/// Binds a replica's gradient runs: `grad_bindings[p * sums + a]` reads parameter set
/// `sets[p]` (and running sum `a`) and writes the next sum.
fn bind_gradients(
    grad_bindings: &mut [IoBinding],
    sets: &[Vec<Tensor<f32>>; 2],
    grads: &mut [Vec<Tensor<f32>>],
    outputs: &mut LossOutputs,
    names: &[String],
    sums: usize,
) -> Result<(), TrainError> {
    let e = ort_err("bind");
    for p in 0..2 {
        for a in 0..sums {
            let binding = &mut grad_bindings[p * sums + a];
            for (name, t) in names.iter().zip(&sets[p]) {
                binding.bind_input(name.as_str(), t).map_err(&e)?;
            }
            let write = if sums == 1 {
                0
            } else {
                for (name, t) in names.iter().zip(&grads[a]) {
                    binding.bind_input(format!("{name}{GRAD}"), t).map_err(&e)?;
                }
                1 - a
            };
            for (name, t) in names.iter().zip(grads[write].iter_mut()) {
                binding
                    .bind_output(format!("{name}{GRAD}{NEXT}"), t)
                    .map_err(&e)?;
            }
            outputs.bind(binding)?;
        }
    }
    Ok(())
}

/// `f(index, replica)` for every replica, at most `limit` at once (the first of each group on
/// the calling thread), the results in replica order.
fn each_replica<T: Send>(
    replicas: &mut [Replica],
    limit: usize,
    f: impl Fn(usize, &mut Replica) -> T + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(replicas.len());
    for (g, group) in replicas.chunks_mut(limit.max(1)).enumerate() {
        let base = g * limit.max(1);
        std::thread::scope(|s| {
            let f = &f;
            let mut reps = group.iter_mut().enumerate();
            let (_, first) = reps.next().expect("a group has a replica");
            let handles: Vec<_> = reps
                .map(|(j, rep)| s.spawn(move || f(base + j, rep)))
                .collect();
            out.push(f(base, first));
            out.extend(
                handles
                    .into_iter()
                    .map(|h| h.join().expect("replica thread")),
            );
        });
    }
    out
}

impl Replica {
    /// Runs this replica's K micro-batches; returns (loss summed over images, top-1, top-5).
    #[allow(clippy::too_many_arguments)]
    fn gradients(
        &mut self,
        batch: &Batch,
        index: usize,
        k: usize,
        micro: usize,
        sums: usize,
        seed: u64,
        dropout: f32,
    ) -> Result<(f64, i64, i64), TrainError> {
        let (mut loss, mut t1, mut t5) = (0f64, 0i64, 0i64);
        for j in 0..k {
            self.host
                .fill(batch, (index * k + j) * micro, seed, dropout)?;
            let binding = &mut self.grad_bindings[self.current * sums + j % sums];
            self.host.bind(binding)?;
            if sums > 1 {
                self.keep.extract_tensor_mut().1[0] = if j == 0 { 0.0 } else { 1.0 };
                binding
                    .bind_input("keep", &self.keep)
                    .map_err(ort_err("bind"))?;
            }
            self.grad
                .run_binding(binding)
                .map_err(ort_err("gradient step"))?;
            let r = self.outputs.read();
            loss += r.loss as f64 * micro as f64;
            t1 += r.top1_correct;
            t5 += r.top5_correct;
        }
        Ok((loss, t1, t5))
    }

    /// The update from the summed gradients, `scale` making them the batch mean (nothing for a
    /// replica that reads the first one's sets, which follows the first one's alternation).
    fn apply(&mut self, lr: f32, scale: f32) -> Result<(), TrainError> {
        let Some((update, bindings)) = &mut self.update else {
            return Ok(());
        };
        self.lr.extract_tensor_mut().1[0] = lr;
        self.scale.extract_tensor_mut().1[0] = scale;
        let binding = &mut bindings[self.current];
        let e = ort_err("bind");
        binding.bind_input("learning_rate", &self.lr).map_err(&e)?;
        binding.bind_input("grad_scale", &self.scale).map_err(&e)?;
        update
            .run_binding(binding)
            .map_err(ort_err("update step"))?;
        self.current = 1 - self.current;
        Ok(())
    }
}

/// NCCL communicators for `devices` when they are distinct CUDA devices and there is
/// something to sum (several replicas or processes); none otherwise (the host sums).
/// Ranks: process `p` of `P` with `R` replicas holds NCCL ranks `p*R .. (p+1)*R` of `P*R`.
fn nccl_for(
    devices: &[Device],
    group: Option<&mut (dyn CrossProcess + 'static)>,
) -> Result<Vec<Nccl>, TrainError> {
    let ids: Vec<usize> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Cuda(i) => Some(*i as usize),
            Device::Cpu => None,
        })
        .collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if ids.len() != devices.len() || distinct.len() != ids.len() {
        return Ok(Vec::new());
    }
    let r = ids.len();
    match group {
        None if r == 1 => Ok(Vec::new()),
        None => Ok(Nccl::for_devices(&ids)?),
        Some(g) => {
            let (rank, world) = (g.rank(), g.world());
            let mut id = if rank == 0 {
                nccl::unique_id()?.to_vec()
            } else {
                Vec::new()
            };
            g.broadcast(&mut id)?;
            let id: [u8; nccl::UNIQUE_ID_BYTES] = id.try_into().map_err(|_| {
                TrainError::Setup("rank 0 sent an NCCL id of the wrong size".into())
            })?;
            nccl::group_start()?;
            let comms: Result<Vec<Nccl>, _> = ids
                .iter()
                .enumerate()
                .map(|(i, &d)| Nccl::init(d, rank * r + i, world * r, &id))
                .collect();
            nccl::group_end()?;
            Ok(comms?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(width: f64, input: i64) -> VggConfig {
        let mut t = toml::Table::new();
        t.insert("config".into(), "A".into());
        t.insert("width".into(), width.into());
        t.insert("classes".into(), 10i64.into());
        t.insert("input".into(), input.into());
        VggConfig::from_table(&t).unwrap()
    }

    #[test]
    fn replica_counts_parse() {
        assert_eq!("auto".parse::<Replicas>(), Ok(Replicas::Auto));
        assert_eq!("3".parse::<Replicas>(), Ok(Replicas::Count(3)));
        for bad in ["0", "-1", "two", ""] {
            let e = bad.parse::<Replicas>().unwrap_err();
            assert!(e.contains("or auto"), "{bad}: {e}");
        }
        assert_eq!(Replicas::Auto.to_string(), "auto");
        assert_eq!(Replicas::Count(4).to_string(), "4");
    }

    #[test]
    fn auto_gives_small_networks_on_the_cpu_two_replicas_whatever_the_machine() {
        let demo = network(0.125, 64);
        assert_eq!(
            Replicas::Auto.resolve(&demo, true, 32, 1),
            AUTO_CPU_REPLICAS
        );
        assert_eq!(Replicas::Auto.resolve(&demo, true, 32, 4), 2);
        // Not on a GPU, nor for a batch the two cannot split evenly.
        assert_eq!(Replicas::Auto.resolve(&demo, false, 32, 1), 1);
        assert_eq!(Replicas::Auto.resolve(&demo, true, 33, 1), 1);
        assert_eq!(Replicas::Auto.resolve(&demo, true, 32, 3), 1);
        // VGG-A at full width (133 M parameters) keeps the fused step.
        let full = network(1.0, 224);
        assert!(full.summary().parameters > AUTO_CPU_REPLICAS_MAX_PARAMETERS);
        assert_eq!(Replicas::Auto.resolve(&full, true, 32, 1), 1);
        // A count is taken as given.
        assert_eq!(Replicas::Count(3).resolve(&full, false, 32, 1), 3);
    }
}
