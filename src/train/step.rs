//! One training-step session whose parameters and momenta never leave ONNX Runtime, and the
//! pieces the data-parallel step ([`super::parallel`]) shares with it.
//!
//! The step graph reads a parameter set and writes the next one. Two sets are allocated once
//! by ONNX Runtime on the session's device, and two I/O bindings alternate between them: the
//! first step reads set 0 and writes set 1, the next reads set 1 and writes set 0. No step
//! copies a weight through the host; only the batch, the labels, the dropout masks and the
//! learning rate go in (host tensors, bound again before every run: a CUDA session copies a
//! host input when it is bound, so a value written after binding would not be seen), and only
//! the loss and two counts come out. Parameters are copied to the host only for a checkpoint.
//!
//! Dropout masks are drawn per sample from `(seed, epoch, record index)`, like the
//! augmentation, so a sample gets the same mask whichever step, replica or micro-batch it
//! lands in.

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::IoBinding;
use ort::session::Session;
use ort::value::Tensor;

use super::TrainError;
use crate::config::model::VggConfig;
use crate::config::model::{parameters, ParamSpec, MOMENTUM};
use crate::data::loader::Batch;
use crate::net::checkpoint::NamedTensor;
use crate::net::graph::vgg::{self as graphs, InputForm, StepOptions, NEXT};
use crate::net::session::{self, Device, SessionSettings};
use crate::util::rng::{Rng, Stream};

/// What one step reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepResult {
    pub loss: f32,
    pub top1_correct: i64,
    pub top5_correct: i64,
}

pub(super) fn ort_err(what: &str) -> impl Fn(ort::Error) -> TrainError + '_ {
    move |source| TrainError::Ort {
        what: what.to_string(),
        source,
    }
}

/// The host-side batch inputs of a step or gradient graph for `n` images, overwritten (and
/// bound again) for every run.
pub(super) struct HostInputs {
    images: Option<Tensor<f32>>,
    pixels: Option<Tensor<u8>>,
    shift: Option<Tensor<f32>>,
    labels: Tensor<i64>,
    masks: [Tensor<f32>; 2],
    n: usize,
    fc: usize,
}

impl HostInputs {
    pub(super) fn new(
        input: InputForm,
        n: usize,
        crop: usize,
        fc: usize,
    ) -> Result<Self, TrainError> {
        let host = Allocator::default();
        let err = ort_err("allocate batch inputs");
        let new_f32 = |shape: Vec<usize>| Tensor::<f32>::new(&host, shape);
        Ok(HostInputs {
            images: match input {
                InputForm::F32Nchw => Some(new_f32(vec![n, 3, crop, crop]).map_err(&err)?),
                InputForm::U8Nhwc => None,
            },
            pixels: match input {
                InputForm::U8Nhwc => {
                    Some(Tensor::<u8>::new(&host, vec![n, crop, crop, 3]).map_err(&err)?)
                }
                InputForm::F32Nchw => None,
            },
            shift: match input {
                InputForm::U8Nhwc => Some(new_f32(vec![n, 3]).map_err(&err)?),
                InputForm::F32Nchw => None,
            },
            labels: Tensor::<i64>::new(&host, vec![n]).map_err(&err)?,
            masks: [
                new_f32(vec![n, fc]).map_err(&err)?,
                new_f32(vec![n, fc]).map_err(&err)?,
            ],
            n,
            fc,
        })
    }

    /// Copies samples `from..from + n` of `batch` and draws their dropout masks.
    pub(super) fn fill(
        &mut self,
        batch: &Batch,
        from: usize,
        seed: u64,
        dropout: f32,
    ) -> Result<(), TrainError> {
        let n = self.n;
        if from + n > batch.len() {
            return Err(TrainError::Mismatch(format!(
                "a batch of {} images for a step that reads images {from}..{}",
                batch.len(),
                from + n
            )));
        }
        match (&mut self.images, &mut self.pixels, &mut self.shift) {
            (Some(images), _, _) => {
                let src = batch.images().ok_or_else(|| {
                    TrainError::Mismatch("the loader gives u8 batches, the step wants f32".into())
                })?;
                let src = src.as_slice().expect("loader batches are contiguous");
                let per = src.len() / batch.len();
                let dst = images.extract_tensor_mut().1;
                dst.copy_from_slice(&src[from * per..(from + n) * per]);
            }
            (None, Some(pixels), Some(shift)) => {
                let (src, sh) = batch.pixels().zip(batch.shift()).ok_or_else(|| {
                    TrainError::Mismatch("the loader gives f32 batches, the step wants u8".into())
                })?;
                let src = src.as_slice().expect("contiguous");
                let per = src.len() / batch.len();
                pixels
                    .extract_tensor_mut()
                    .1
                    .copy_from_slice(&src[from * per..(from + n) * per]);
                let sh = sh.as_slice().expect("contiguous");
                shift
                    .extract_tensor_mut()
                    .1
                    .copy_from_slice(&sh[from * 3..(from + n) * 3]);
            }
            _ => unreachable!("one batch form is allocated"),
        }
        self.labels
            .extract_tensor_mut()
            .1
            .copy_from_slice(&batch.labels()[from..from + n]);
        let records = &batch.indices()[from..from + n];
        let fc = self.fc;
        for (layer, mask) in self.masks.iter_mut().enumerate() {
            let data = mask.extract_tensor_mut().1;
            if dropout == 0.0 {
                data.fill(1.0);
                continue;
            }
            let keep = 1.0 - dropout;
            let scale = 1.0 / keep;
            for (row, &record) in data.chunks_exact_mut(fc).zip(records) {
                let mut rng = Rng::new(
                    seed,
                    Stream::Dropout,
                    batch.epoch,
                    record * 2 + layer as u64,
                );
                for v in row {
                    *v = if rng.next_f32() < keep { scale } else { 0.0 };
                }
            }
        }
        Ok(())
    }

    /// Binds the batch inputs (call after every [`HostInputs::fill`]).
    pub(super) fn bind(&self, binding: &mut IoBinding) -> Result<(), TrainError> {
        let e = ort_err("bind the batch");
        if let Some(t) = &self.images {
            binding.bind_input("images", t).map_err(&e)?;
        }
        if let Some(t) = &self.pixels {
            binding.bind_input("pixels", t).map_err(&e)?;
        }
        if let Some(t) = &self.shift {
            binding.bind_input("shift", t).map_err(&e)?;
        }
        binding.bind_input("labels", &self.labels).map_err(&e)?;
        binding.bind_input("dropout6", &self.masks[0]).map_err(&e)?;
        binding.bind_input("dropout7", &self.masks[1]).map_err(&e)?;
        Ok(())
    }
}

/// A host scalar input, bound again before every run.
pub(super) fn host_scalar(value: f32) -> Result<Tensor<f32>, TrainError> {
    let mut t = Tensor::<f32>::new(&Allocator::default(), Vec::<usize>::new())
        .map_err(ort_err("allocate a scalar"))?;
    t.extract_tensor_mut().1[0] = value;
    Ok(t)
}

/// The loss and hit-count outputs, on the host.
pub(super) struct LossOutputs(Tensor<f32>, Tensor<i64>, Tensor<i64>);

impl LossOutputs {
    pub(super) fn new() -> Result<Self, TrainError> {
        let host = Allocator::default();
        let err = ort_err("allocate outputs");
        Ok(LossOutputs(
            Tensor::<f32>::new(&host, Vec::<usize>::new()).map_err(&err)?,
            Tensor::<i64>::new(&host, Vec::<usize>::new()).map_err(&err)?,
            Tensor::<i64>::new(&host, Vec::<usize>::new()).map_err(&err)?,
        ))
    }

    pub(super) fn bind(&mut self, binding: &mut IoBinding) -> Result<(), TrainError> {
        let e = ort_err("bind outputs");
        binding.bind_output("loss", &mut self.0).map_err(&e)?;
        binding
            .bind_output("top1_correct", &mut self.1)
            .map_err(&e)?;
        binding
            .bind_output("top5_correct", &mut self.2)
            .map_err(&e)?;
        Ok(())
    }

    pub(super) fn read(&self) -> StepResult {
        StepResult {
            loss: self.0.extract_tensor().1[0],
            top1_correct: self.1.extract_tensor().1[0],
            top5_correct: self.2.extract_tensor().1[0],
        }
    }
}

/// The allocator for tensors that live on `device` (ONNX Runtime's own, for `session`).
pub(super) fn device_allocator(session: &Session, device: Device) -> Result<Allocator, TrainError> {
    match device {
        Device::Cpu => Ok(Allocator::default()),
        Device::Cuda(id) => {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA,
                id,
                AllocatorType::Device,
                MemoryType::Default,
            )
            .map_err(ort_err("CUDA memory"))?;
            Allocator::new(session, info).map_err(ort_err("CUDA allocator"))
        }
    }
}

/// Allocates one tensor per shape with `alloc`.
pub(super) fn allocate(
    alloc: &Allocator,
    shapes: &[Vec<usize>],
) -> Result<Vec<Tensor<f32>>, TrainError> {
    shapes
        .iter()
        .map(|s| Tensor::<f32>::new(alloc, s.clone()).map_err(ort_err("allocate parameters")))
        .collect()
}

/// Writes `src` into `dst`, a tensor on `device`.
pub(super) fn upload(dst: &mut Tensor<f32>, src: &[f32], device: Device) -> Result<(), TrainError> {
    if device == Device::Cpu {
        dst.extract_tensor_mut().1.copy_from_slice(src);
        return Ok(());
    }
    let shape: Vec<usize> = dst.shape().iter().map(|&d| d as usize).collect();
    let staged = Tensor::from_array((shape, src.to_vec())).map_err(ort_err("stage parameters"))?;
    staged.copy_into(dst).map_err(ort_err("upload parameters"))
}

/// Reads `t`, a tensor on `device`, into `out`.
pub(super) fn download_into(
    t: &Tensor<f32>,
    out: &mut [f32],
    device: Device,
) -> Result<(), TrainError> {
    if device == Device::Cpu {
        out.copy_from_slice(t.extract_tensor().1);
        return Ok(());
    }
    let shape: Vec<usize> = t.shape().iter().map(|&d| d as usize).collect();
    let mut staged =
        Tensor::<f32>::new(&Allocator::default(), shape).map_err(ort_err("stage parameters"))?;
    t.copy_into(&mut staged)
        .map_err(ort_err("download parameters"))?;
    out.copy_from_slice(staged.extract_tensor().1);
    Ok(())
}

/// Names of the parameters then the momenta, in [`parameters`] order.
pub(super) fn state_names(specs: &[ParamSpec]) -> Vec<String> {
    specs
        .iter()
        .map(|p| p.name.clone())
        .chain(specs.iter().map(|p| format!("{}{MOMENTUM}", p.name)))
        .collect()
}

/// Parameters then momenta as named host tensors, from a set on `device`.
pub(super) fn download_set(
    set: &[Tensor<f32>],
    specs: &[ParamSpec],
    device: Device,
) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), TrainError> {
    let names = state_names(specs);
    let mut out = Vec::with_capacity(set.len());
    for (t, name) in set.iter().zip(names) {
        let spec = &specs[out.len() % specs.len()];
        let shape: Vec<usize> = spec.shape.iter().map(|&d| d as usize).collect();
        let mut data = vec![0f32; spec.numel()];
        download_into(t, &mut data, device)?;
        out.push(NamedTensor { name, shape, data });
    }
    let momenta = out.split_off(specs.len());
    Ok((out, momenta))
}

/// Checks that `params` and `momenta` fit `specs`.
pub(super) fn check_counts(
    specs: &[ParamSpec],
    params: &[NamedTensor],
    momenta: &[NamedTensor],
) -> Result<(), TrainError> {
    if params.len() != specs.len() || momenta.len() != specs.len() {
        return Err(TrainError::Mismatch(format!(
            "{} parameters and {} momenta for a network of {} tensors",
            params.len(),
            momenta.len(),
            specs.len()
        )));
    }
    Ok(())
}

/// Two parameter-and-momentum sets on `device`, set 0 holding `params` then `momenta`.
pub(super) fn state_sets(
    alloc: &Allocator,
    params: &[NamedTensor],
    momenta: &[NamedTensor],
    device: Device,
) -> Result<[Vec<Tensor<f32>>; 2], TrainError> {
    let shapes: Vec<Vec<usize>> = params
        .iter()
        .chain(momenta)
        .map(|t| t.shape.clone())
        .collect();
    let mut sets = [allocate(alloc, &shapes)?, allocate(alloc, &shapes)?];
    for (dst, src) in sets[0].iter_mut().zip(params.iter().chain(momenta)) {
        upload(dst, &src.data, device)?;
    }
    Ok(sets)
}

/// Binds `bindings[k]` to read set `k` and write set `1 - k` (outputs `NAME.next`), tensor `i`
/// of a set under `names[i]`; `more` binds whatever else binding `k` needs.
pub(super) fn bind_alternating(
    bindings: &mut [IoBinding; 2],
    sets: &mut [Vec<Tensor<f32>>; 2],
    names: &[String],
    mut more: impl FnMut(usize, &mut IoBinding) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let e = ort_err("bind");
    let [set0, set1] = sets;
    for (k, binding) in bindings.iter_mut().enumerate() {
        let (read, write) = if k == 0 {
            (&*set0, &mut *set1)
        } else {
            (&*set1, &mut *set0)
        };
        for (name, t) in names.iter().zip(read.iter()) {
            binding.bind_input(name.as_str(), t).map_err(&e)?;
        }
        for (name, t) in names.iter().zip(write.iter_mut()) {
            binding
                .bind_output(format!("{name}{NEXT}"), t)
                .map_err(&e)?;
        }
        more(k, binding)?;
    }
    Ok(())
}

/// A compiled training step with its two parameter sets.
pub struct StepSession {
    session: Session,
    bindings: [IoBinding; 2],
    /// `sets[k]`: parameters then momenta, in [`parameters`] order.
    sets: [Vec<Tensor<f32>>; 2],
    host: HostInputs,
    lr: Tensor<f32>,
    outputs: LossOutputs,
    current: usize,
    specs: Vec<ParamSpec>,
    opts: StepOptions,
    dropout: f32,
    crop: usize,
    device: Device,
}

impl StepSession {
    /// Compiles the step for `config` and uploads `params` and `momenta` (in
    /// [`parameters`] order) to the session's device.
    pub fn new(
        config: &VggConfig,
        opts: &StepOptions,
        dropout: f32,
        params: &[NamedTensor],
        momenta: &[NamedTensor],
        settings: &SessionSettings,
    ) -> Result<Self, TrainError> {
        Self::with_extras(
            config,
            opts,
            dropout,
            params,
            momenta,
            settings,
            &session::Extras::default(),
        )
    }

    /// [`StepSession::new`] with rarer session options (e.g. ONNX Runtime's profiler).
    pub fn with_extras(
        config: &VggConfig,
        opts: &StepOptions,
        dropout: f32,
        params: &[NamedTensor],
        momenta: &[NamedTensor],
        settings: &SessionSettings,
        extras: &session::Extras,
    ) -> Result<Self, TrainError> {
        let specs = parameters(config);
        check_counts(&specs, params, momenta)?;
        let graph = graphs::train_step_graph(config, opts)?;
        let session = session::build_with(&graph, settings, extras)?;
        let alloc = device_allocator(&session, settings.device)?;
        let sets = state_sets(&alloc, params, momenta, settings.device)?;
        let crop = config.input as usize;
        let mut me = StepSession {
            bindings: [
                session.create_binding().map_err(ort_err("binding"))?,
                session.create_binding().map_err(ort_err("binding"))?,
            ],
            session,
            sets,
            host: HostInputs::new(opts.input, opts.batch, crop, config.fc as usize)?,
            lr: host_scalar(0.0)?,
            outputs: LossOutputs::new()?,
            current: 0,
            specs,
            opts: opts.clone(),
            dropout,
            crop,
            device: settings.device,
        };
        me.bind()?;
        Ok(me)
    }

    /// Binding k reads set k and writes set 1 - k.
    fn bind(&mut self) -> Result<(), TrainError> {
        let names = state_names(&self.specs);
        let outputs = &mut self.outputs;
        bind_alternating(&mut self.bindings, &mut self.sets, &names, |_, b| {
            outputs.bind(b)
        })
    }

    /// The step's fixed batch size.
    pub fn batch_size(&self) -> usize {
        self.opts.batch
    }

    /// Runs one SGD step on `batch` (which must be full) at learning rate `lr`; the dropout
    /// masks derive from (`seed`, epoch, record index).
    pub fn step(&mut self, batch: &Batch, lr: f32, seed: u64) -> Result<StepResult, TrainError> {
        let n = self.opts.batch;
        if batch.len() != n {
            return Err(TrainError::Mismatch(format!(
                "a batch of {} images for a step compiled for {n}",
                batch.len()
            )));
        }
        self.host.fill(batch, 0, seed, self.dropout)?;
        self.lr.extract_tensor_mut().1[0] = lr;
        let binding = &mut self.bindings[self.current];
        self.host.bind(binding)?;
        binding
            .bind_input("learning_rate", &self.lr)
            .map_err(ort_err("bind"))?;
        self.session
            .run_binding(binding)
            .map_err(ort_err("training step"))?;
        self.current = 1 - self.current;
        Ok(self.outputs.read())
    }

    /// Copies the current parameters and momenta to the host.
    pub fn download(&self) -> Result<(Vec<NamedTensor>, Vec<NamedTensor>), TrainError> {
        download_set(&self.sets[self.current], &self.specs, self.device)
    }

    /// The current parameters (not the momenta), on the session's device, in
    /// [`parameters`] order: an evaluation session can read them without a copy.
    pub fn params(&self) -> &[Tensor<f32>] {
        &self.sets[self.current][..self.specs.len()]
    }

    /// The crop side the step expects.
    pub fn crop(&self) -> usize {
        self.crop
    }

    /// Ends ONNX Runtime's profiling (a session built with `Extras::profile`) and returns the
    /// profile's path.
    pub fn end_profiling(&mut self) -> Result<String, TrainError> {
        self.session
            .end_profiling()
            .map_err(ort_err("end profiling"))
    }
}
